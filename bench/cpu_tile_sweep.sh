#!/usr/bin/env bash
# Relinks the `attn` tool once per variant of the AVX-512 kernels (the ATTN_SWEEP_* macros of
# src/cpu/tile_traits.h, attention_fused_kernels.cc and attention_backward_kernels.cc: tile sizes, one stage left
# out) into build-sweep-cpu/NAME/attn, from an existing Makefile-generator build in build/ (only the AVX-512
# kernel objects are recompiled; the AVX512_BF16 dot kernel keeps the built tile sizes). Then times them side by
# side with bench/cpu_sweep.py, unless --build-only:
#   bench/cpu_tile_sweep.sh [--avx2] [--build-only] 'base:' 'pv4x4:-DATTN_SWEEP_PV_ROWS=4 -DATTN_SWEEP_PV_VECS=4' ...
# --avx2 recompiles the AVX2 kernels instead (their tile sizes are the ATTN_SWEEP_AVX2_* macros; the stage-skipping
# macros apply to either) and times them under ATTN_SIMD=avx2, so that an AVX-512 machine runs them too.
# Variants are compared on one machine; a variant that leaves a stage out (ATTN_SWEEP_SKIP) computes wrong
# results and only says what that stage costs.
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0 target=avx512
while [ $# -gt 0 ]; do
  case $1 in
    --avx2) target=avx2; shift ;;
    --build-only) build_only=1; shift ;;
    -*) echo "cpu_tile_sweep.sh: unknown option $1 (options: --avx2, --build-only; then NAME:FLAGS variants)" >&2; exit 2 ;;
    *) break ;;
  esac
done
out=$PWD/build-sweep-cpu
flags=(-O3 -DNDEBUG -fPIC -std=c++20 -fopenmp -Iinclude -Ibuild/include -Isrc -w)
if [ $target = avx2 ]; then  # CMakeLists.txt's ATTN_FLAGS_avx2 and ATTN_FLAGS_avx512
  flags+=(-mavx2 -mfma -mf16c); sources=(attention_fused_kernels attention_backward_kernels attention_decode_kernels
                                         fma_peak_kernels attention_lowp_kernels)
else
  flags+=(-mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma -mavx2)
  sources=(attention_fused_kernels attention_backward_kernels attention_decode_kernels fma_peak_kernels
           attention_lowp_kernels bf16:attention_lowp_kernels bf16:attention_lowp_backward_kernels)
fi
link_txt=build/CMakeFiles/attn.dir/link.txt
[ -f $link_txt ] || { echo "no $link_txt: build attn in build/ with CMake's Makefile generator first" >&2; exit 1; }
link=$(cat $link_txt)
[[ $link == *" -o attn "* ]] || { echo "$link_txt has no ' -o attn ': cannot relink" >&2; exit 1; }
args=()
for v in "$@"; do
  name=${v%%:*}; vflags=${v#*:}
  rm -rf "${out:?}/$name"; mkdir -p "$out/$name"
  objs=(); pids=()
  for src in "${sources[@]}"; do
    t=$target extra=()
    if [[ $src == bf16:* ]]; then src=${src#bf16:}; t=avx512bf16; extra=(-mavx512bf16); fi
    # shellcheck disable=SC2086
    c++ "${flags[@]}" "${extra[@]}" -DATTN_TARGET=$t $vflags -c src/cpu/$src.cc -o "$out/$name/$t-$src.o" &
    pids+=($!)
    objs+=("$out/$name/$t-$src.o")
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "$name: a kernel failed to compile" >&2; exit 1; }; done
  # the variant's objects first: the linker then never takes the archive's members for these kernels
  (cd build && eval "${link/ -o attn / ${objs[*]} -o $out/$name/attn }")
  [ -x "$out/$name/attn" ] || { echo "$name: the relink made no $out/$name/attn" >&2; exit 1; }
  args+=("$name=$out/$name/attn")
  echo "built $out/$name/attn ($vflags)"
done
if [ $target = avx2 ]; then export ATTN_SIMD=avx2; fi  # (an AVX-512 machine would otherwise run its AVX-512 kernels)
[ $build_only = 1 ] || python3 bench/cpu_sweep.py "${args[@]}"

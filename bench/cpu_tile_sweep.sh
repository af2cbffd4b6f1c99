#!/usr/bin/env bash
# Relinks the `attn` tool once per variant of the AVX-512 fused kernels (the ATTN_SWEEP_* macros of
# src/cpu/tile_traits.h, tile_kernels.h and attention_fused_kernels.cc: tile sizes, loop orders, one stage left
# out) into build-sweep-cpu/NAME/attn, from an existing build in build/ (only the four AVX-512 kernel objects are
# recompiled). Then times them side by side with bench/cpu_sweep.py, unless --build-only:
#   bench/cpu_tile_sweep.sh [--build-only] 'base:' 'pv6x4:-DATTN_SWEEP_PV_ROWS=6' ...
# Variants are compared on one machine; a variant that leaves a stage out (ATTN_SWEEP_SKIP) computes wrong
# results and only says what that stage costs.
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
if [ "${1:-}" = --build-only ]; then build_only=1; shift; fi
out=$PWD/build-sweep-cpu
flags=(-O3 -DNDEBUG -std=c++20 -fopenmp -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma -mavx2
       -DATTN_TARGET=avx512 -Iinclude -Ibuild/include -Isrc -w)
link=$(cat build/CMakeFiles/attn.dir/link.txt)
args=()
for v in "$@"; do
  name=${v%%:*}; vflags=${v#*:}
  mkdir -p "$out/$name"
  objs=()
  for src in attention_fused_kernels attention_backward_kernels attention_decode_kernels fma_peak_kernels; do
    # shellcheck disable=SC2086
    c++ "${flags[@]}" $vflags -c src/cpu/$src.cc -o "$out/$name/$src.o" &
    objs+=("$out/$name/$src.o")
  done
  wait
  # the variant's objects first: the linker then never takes the archive's AVX-512 kernel members
  (cd build && ${link/ -o attn / ${objs[*]} -o $out/$name/attn })
  args+=("$name=$out/$name/attn")
  echo "built $out/$name/attn ($vflags)"
done
[ $build_only = 1 ] || python3 bench/cpu_sweep.py "${args[@]}"

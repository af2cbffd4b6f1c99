#!/usr/bin/env bash
# The CPU figures of a device session (the lent GPU machine's host: a 16-core Intel Xeon with AVX-512, AVX512_BF16
# and AMX, PyTorch installed, no network, 15 minutes of device time for everything) in one prepared run of about
# 9½ minutes (each step capped). Two halves:
#
#   bench/device_cpu_check.sh --prepare      here, after building build/ (CMake's Makefile generator): builds the
#                                            stage-left-out variants of the AVX-512 kernel (bench/cpu_tile_sweep.sh)
#                                            and packs them with their libraries into .bundle/cpu.txz (the bundle
#                                            folder is in .git/info/exclude; carry the file)
#   bench/device_cpu_check.sh --run OUT      there (device `run`, carry [".bundle/cpu.txz"], OUT "$OUT"): unpacks, then
#     1. attn bench peak, 1 and all threads; the OpenBLAS kernel family (attn bench train's "blas")
#     2. the forward's P·V tile (session 16: 8 × 2, measured only on Zen 5) against 4 × 4 (pv4x4), and 64-key tiles
#        (bk64: a D 128 key or value tile of 32 KB stays in the L1, where session 9 suspected the L2), the variants
#        side by side, pinned (bench/cpu_sweep.py)
#     3. bench/sdpa_grid.py --quick against PyTorch, 1 and all threads
#     4. bench/compare_pytorch_backward.py, 1 and all threads (fp32 forward + backward)
#     5. attn bench sdpa --backward --dtype f32 | bf16 (the bfloat16 backward on vdpbf16ps), 1 and all threads
#     6. the long-sequence thresholds (session 15, measured only on 2-core Zen 5 VMs), all threads, against the build:
#        the backward's key-block spans everywhere (spanall) and nowhere with the forward's long tasks off too
#        (nolong); the forward's long tasks from 1 MB of K and V (long1m)
#     7. the backward's update tile 8 × 2 (upd8x2; −1% to +2% on Zen 5) against 4 × 4, 1 and all threads
#   Each step's log lands in OUT (8 files at most come back); a step that fails does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
variants=(base: 'pv4x4:-DATTN_SWEEP_PV_ROWS=4 -DATTN_SWEEP_PV_VECS=4' 'bk64:-DATTN_SWEEP_BK=64'
          'upd8x2:-DATTN_SWEEP_UPDATE_ROWS=8 -DATTN_SWEEP_UPDATE_VECS=2'
          'spanall:-DATTN_SWEEP_BWD_SPAN_FROM_KB=0' 'long1m:-DATTN_SWEEP_LONG_KV_KB=1024'
          'nolong:-DATTN_SWEEP_BQ_LONG=64 -DATTN_SWEEP_BWD_SPAN=1')
stages=(base pv4x4 bk64)

if [ "${1:-}" = --prepare ]; then
  set -e
  bench/cpu_tile_sweep.sh --build-only "${variants[@]}"
  tmp=$(mktemp -d)
  for v in "${variants[@]}"; do cp "build-sweep-cpu/${v%%:*}/attn" "$tmp/attn_${v%%:*}"; done
  mkdir -p .bundle
  ../shared/tools/device-bundle.sh .bundle/cpu.txz "$tmp"/attn_*
  rm -rf "$tmp"
  exit 0
fi
[ "${1:-}" = --run ] && [ -n "${2:-}" ] || { echo "usage: $0 --prepare | --run OUT_DIR" >&2; exit 2; }
out=$2
mkdir -p "$out"
tar -C .bundle -xJf .bundle/cpu.txz || exit 1
run=$PWD/.bundle/bundle/run
wrapper=$PWD/.bundle/attn
printf '#!/usr/bin/env bash\nexec %s attn_base "$@"\n' "$run" >"$wrapper" && chmod +x "$wrapper"
cores=$(nproc)
pin=$((cores > 4 ? 3 : cores - 1))  # the one-thread runs' CPU (not CPU 0, where the system's interrupts land)
step() { echo "== $* ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"; }

{
  step "peak"
  lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200
  "$wrapper" bench peak --threads "$cores"
  # the linear layers' GEMM kernels (attn/blas.h): OpenBLAS's family, from the processor or OPENBLAS_CORETYPE
  echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
  "$wrapper" bench train --steps 2 --warmup 1 --repeat 1 --json | tail -1
  step "forward P·V tile and key tile"
  sweep=()
  for v in "${stages[@]}"; do sweep+=("$v=$run attn_$v"); done
  timeout 90 python3 bench/cpu_sweep.py "${sweep[@]}" --pin "$pin" --rounds 3 --repeat 3 \
    --shape 1:2:4096:128 --shape 1:8:1024:128:causal --shape 0:16:4096:128 --shape 0:16:1024:128:causal
} >"$out/peak_and_stages.log" 2>&1
step "sdpa grid" >"$out/grid.log"
timeout 200 python3 bench/sdpa_grid.py --attn "$wrapper" --quick --no-small --threads 1 "$cores" --pin "$pin" \
  >>"$out/grid.log" 2>&1
step "forward + backward against PyTorch" >"$out/backward.log"
timeout 130 python3 bench/compare_pytorch_backward.py --attn "$wrapper" --threads 1 "$cores" --rounds 1 --repeat 2 \
  --lengths 1024 --dims 64 128 >>"$out/backward.log" 2>&1
{
  step "bf16 backward"
  for t in 1 "$cores"; do
    for d in 64 128; do
      for dt in f32 bf16; do
        timeout 60 "$wrapper" bench sdpa --heads 8 --q-len 2048 --head-dim "$d" --threads "$t" --backward --dtype "$dt" \
          --repeat 3
      done
    done
  done
} >"$out/bf16_backward.log" 2>&1
{
  step "long-sequence thresholds"
  backward=() forward=()
  for v in base spanall nolong; do backward+=("$v=$run attn_$v"); done
  for v in base long1m nolong; do forward+=("$v=$run attn_$v"); done
  timeout 60 python3 bench/cpu_sweep.py "${backward[@]}" --rounds 3 --repeat 1 \
    --shape 0:16:2048:64:backward --shape 0:4:8192:128:backward --shape 0:1:16384:128:backward
  timeout 45 python3 bench/cpu_sweep.py "${forward[@]}" --rounds 3 --repeat 1 \
    --shape 0:16:4096:64 --shape 0:16:4096:128 --shape 0:8:16384:128
  step "backward update tile"
  timeout 40 python3 bench/cpu_sweep.py "base=$run attn_base" "upd8x2=$run attn_upd8x2" --pin "$pin" --rounds 3 \
    --repeat 1 --shape 1:4:2048:128:backward --shape 0:16:2048:64:backward --shape 0:16:2048:128:backward
} >"$out/thresholds.log" 2>&1
tail -n 3 "$out"/*.log

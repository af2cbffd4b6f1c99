#!/usr/bin/env bash
# The CPU figures of a device session (the lent GPU machine's host: a 16-core Intel Xeon with AVX-512, AVX512_BF16
# and AMX, PyTorch installed, no network, 15 minutes of device time for everything) in prepared runs, each step
# capped. Two halves:
#
#   bench/device_cpu_check.sh --prepare      here, after building build/ (CMake's Makefile generator): builds the
#                                            variants of the AVX-512 kernel (bench/cpu_tile_sweep.sh) and packs them,
#                                            with perf and objdump where this machine has them, with their libraries
#                                            into .bundle/cpu.txz (~40 MB; the bundle folder is in .git/info/exclude;
#                                            carry the file)
#   bench/device_cpu_check.sh --run OUT [STEP...]   there (device `run`, carry [".bundle/cpu.txz"], OUT "$OUT"):
#                                            unpacks, then runs the steps named (default: all, about 10 minutes, more
#                                            than one call allows with the start: split them over two calls, e.g.
#                                            `perf order stages grid` (~6 min) and `backward bf16 thresholds` (~4 min))
#     perf        the Xeon's counters where the machine lets perf read them (session 9 had no profiler there): clock
#                 under AVX-512 load (cycles against task-clock), L1 and LLC misses, TopdownL1, and perf record of the
#                 1-thread forward (cycles and L1 misses by function, the two product loops annotated)
#     stages      attn bench peak, 1 and all threads; the OpenBLAS kernel family (attn bench train's "blas"); the
#                 forward's P·V tile (session 16: 8 × 2, measured only on Zen 5) against 4 × 4 (pv4x4), and 64-key
#                 tiles (bk64: a D 128 key or value tile of 32 KB stays in the L1, where session 9 suspected the L2),
#                 the variants side by side, pinned (bench/cpu_sweep.py)
#     order       the backward's task order (session 17: the costliest key chunks first) against the order before
#                 (pairorder: pair by pair), all threads, causal, where a thread's last chunk could be a costly one
#                 (16 threads, H 8: modelled at 67% of the threads' time busy, against 100%); then, 1 thread, the
#                 forward with each task's K and V from the L3 (stride: consecutive tasks from different heads), as every
#                 task reads them at 16 threads (Zen 5: ±1% at L 1024; a loss on the Xeon points at its L3); then, all
#                 threads, OMP_WAIT_POLICY passive (as bench/sdpa_grid.py runs both sides) against active (spinning
#                 threads between calls and at the barriers): what waking the threads costs a call there
#     grid        bench/sdpa_grid.py --quick against PyTorch, 1 and all threads
#     backward    bench/compare_pytorch_backward.py, 1 and all threads (fp32 forward + backward)
#     bf16        attn bench sdpa --backward --dtype f32 | bf16 (the bfloat16 backward on vdpbf16ps), 1 and all threads
#     thresholds  the long-sequence thresholds (session 15, measured only on 2-core Zen 5 VMs), all threads, against
#                 the build: the backward's key-block spans everywhere (spanall) and nowhere with the forward's long
#                 tasks off too (nolong); the forward's long tasks from 1 MB of K and V (long1m); then the backward's
#                 update tile 8 × 2 (upd8x2; −1% to +2% on Zen 5) against 4 × 4, 1 and all threads
#   Each step's log lands in OUT as STEP.log (8 files at most come back); a step that fails does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
variants=(base: 'pv4x4:-DATTN_SWEEP_PV_ROWS=4 -DATTN_SWEEP_PV_VECS=4' 'bk64:-DATTN_SWEEP_BK=64'
          'upd8x2:-DATTN_SWEEP_UPDATE_ROWS=8 -DATTN_SWEEP_UPDATE_VECS=2'
          'spanall:-DATTN_SWEEP_BWD_SPAN_FROM_KB=0' 'long1m:-DATTN_SWEEP_LONG_KV_KB=1024'
          'nolong:-DATTN_SWEEP_BQ_LONG=64 -DATTN_SWEEP_BWD_SPAN=1' 'pairorder:-DATTN_SWEEP_BWD_PAIR_ORDER=1'
          'stride:-DATTN_SWEEP_TASK_STRIDE=1')
stages=(base pv4x4 bk64)

if [ "${1:-}" = --prepare ]; then
  set -e
  bench/cpu_tile_sweep.sh --build-only "${variants[@]}"
  tmp=$(mktemp -d)
  for v in "${variants[@]}"; do cp "build-sweep-cpu/${v%%:*}/attn" "$tmp/attn_${v%%:*}"; done
  tools=()  # perf and objdump (perf annotate's disassembler), run there through the bundle's loader
  for t in perf objdump; do command -v $t >/dev/null && tools+=("$(command -v $t)"); done
  [ ${#tools[@]} = 2 ] || echo "no perf or objdump here (Debian: linux-perf, binutils): the perf step will say so" >&2
  mkdir -p .bundle
  ../shared/tools/device-bundle.sh .bundle/cpu.txz "$tmp"/attn_* "${tools[@]}"
  rm -rf "$tmp"
  exit 0
fi
[ "${1:-}" = --run ] && [ -n "${2:-}" ] || { echo "usage: $0 --prepare | --run OUT_DIR [STEP...]" >&2; exit 2; }
out=$2
shift 2
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(perf order stages grid backward bf16 thresholds)
mkdir -p "$out"
tar -C .bundle -xJf .bundle/cpu.txz || exit 1
run=$PWD/.bundle/bundle/run
wrapper=$PWD/.bundle/attn
printf '#!/usr/bin/env bash\nexec %s attn_base "$@"\n' "$run" >"$wrapper" && chmod +x "$wrapper"
objdump=$PWD/.bundle/objdump
printf '#!/usr/bin/env bash\nexec %s objdump "$@"\n' "$run" >"$objdump" && chmod +x "$objdump"
cores=$(nproc)
pin=$((cores > 4 ? 3 : cores - 1))  # the one-thread runs' CPU (not CPU 0, where the system's interrupts land)
step() { echo "== $* ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"; }

# perf (about 1 minute): every command is allowed to fail (no counters in a VM, perf_event_paranoid, seccomp).
# `attn bench sdpa --no-peak` leaves out its 0.2 s FMA-peak measurement, so the counts are the calls' (and the random
# inputs' set-up, a few percent).
step_perf() {
  step "perf"
  [ -x .bundle/bundle/perf ] || { echo "no perf in the bundle"; return; }
  local perf=("$run" perf) tmp
  tmp=$(mktemp -d)
  echo "perf_event_paranoid $(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null)"
  local fwd=(bench sdpa --no-peak --heads 8 --q-len 4096 --head-dim 128 --repeat 3)
  local causal=(bench sdpa --no-peak --heads 8 --q-len 1024 --head-dim 128 --causal --repeat 60)
  local events=task-clock,cycles,ref-cycles,instructions,L1-dcache-loads,L1-dcache-load-misses,LLC-loads,LLC-load-misses
  for t in 1 "$cores"; do
    for shape in fwd causal; do
      local args=("${fwd[@]}")
      [ $shape = fwd ] || args=("${causal[@]}")
      echo "-- perf stat, $shape, $t thread(s): ${args[*]}"
      timeout 30 taskset -c "$([ "$t" = 1 ] && echo "$pin" || echo "0-$((cores - 1))")" "${perf[@]}" stat -e "$events" \
        -- "$wrapper" "${args[@]}" --threads "$t" 2>&1 | grep -v '^$'
    done
  done
  echo "-- perf stat -M TopdownL1, fwd, 1 thread"
  timeout 30 taskset -c "$pin" "${perf[@]}" stat -M TopdownL1 -- "$wrapper" "${fwd[@]}" --threads 1 2>&1 | grep -v '^$'
  echo "-- perf record, fwd, 1 thread (cycles and L1 misses; cpu-clock where there are no counters)"
  timeout 40 taskset -c "$pin" "${perf[@]}" record -q -e cycles -e L1-dcache-load-misses -o "$tmp/perf.data" \
    -- "$wrapper" "${fwd[@]}" --threads 1 >/dev/null 2>&1 ||
    timeout 40 taskset -c "$pin" "${perf[@]}" record -q -e cpu-clock -o "$tmp/perf.data" \
      -- "$wrapper" "${fwd[@]}" --threads 1 >/dev/null 2>&1
  timeout 30 "${perf[@]}" report -i "$tmp/perf.data" --stdio --sort symbol >"$tmp/report.txt" 2>/dev/null
  grep -v '^$' "$tmp/report.txt" | awk '/^# Samples|^# Event count/ {print; next} /^#/ {next} $1+0 >= 0.3' |
    cut -c1-160
  local pattern sym
  for pattern in 'gemm_abt_tile<8, 2>' 'rank_update<8, 2>'; do  # the names as this perf prints them (clones too)
    sym=$(grep -F "$pattern" "$tmp/report.txt" | head -n 1 | sed 's/.*\[\.\] //; s/  .*$//')
    [ -n "$sym" ] || { echo "-- no $pattern in the report"; continue; }
    echo "-- perf annotate $sym (lines at ≥ 0.5% of its samples)"
    timeout 30 "${perf[@]}" annotate -i "$tmp/perf.data" --objdump="$objdump" --stdio -s "$sym" 2>/dev/null |
      awk '/Percent|Samples|of event/ || $1+0 >= 0.5' | head -n 90
  done
  for shape in fwd causal; do  # at all threads: the share in OpenMP's waits (libgomp) against the kernels
    local args=("${fwd[@]}")
    [ $shape = fwd ] || args=("${causal[@]}")
    echo "-- perf record, $shape, $cores threads"
    timeout 40 "${perf[@]}" record -q -e cycles -o "$tmp/all.data" -- "$wrapper" "${args[@]}" --threads "$cores" \
      >/dev/null 2>&1 ||
      timeout 40 "${perf[@]}" record -q -e cpu-clock -o "$tmp/all.data" -- "$wrapper" "${args[@]}" --threads "$cores" \
        >/dev/null 2>&1
    timeout 30 "${perf[@]}" report -i "$tmp/all.data" --stdio --sort dso,symbol 2>/dev/null | grep -v '^$' |
      awk '/^# Samples/ {print; next} /^#/ {next} $1+0 >= 0.5' | cut -c1-160
  done
  rm -rf "$tmp"
}

step_stages() {
  step "peak"
  lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200
  "$wrapper" bench peak --threads "$cores"
  # the linear layers' GEMM kernels (attn/blas.h): OpenBLAS's family, from the processor or OPENBLAS_CORETYPE
  echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
  "$wrapper" bench train --steps 2 --warmup 1 --repeat 1 --json | tail -1
  step "forward P·V tile and key tile"
  local sweep=()
  for v in "${stages[@]}"; do sweep+=("$v=$run attn_$v"); done
  timeout 90 python3 bench/cpu_sweep.py "${sweep[@]}" --pin "$pin" --rounds 3 --repeat 3 \
    --shape 1:2:4096:128 --shape 1:8:1024:128:causal --shape 0:16:4096:128 --shape 0:16:1024:128:causal
}

step_order() {
  step "backward task order"
  timeout 60 python3 bench/cpu_sweep.py "base=$run attn_base" "pairorder=$run attn_pairorder" --rounds 3 --repeat 3 \
    --shape 0:8:1024:64:causal:backward --shape 0:8:1024:128:causal:backward --shape 0:16:2048:128:causal:backward \
    --shape 0:8:1024:128:causal:backward:dtype=bf16 --shape 0:8:1024:128:backward
  step "forward tasks with K and V from the L3"
  timeout 50 python3 bench/cpu_sweep.py "base=$run attn_base" "stride=$run attn_stride" --pin "$pin" --rounds 3 \
    --repeat 3 --shape 1:8:1024:128 --shape 1:8:1024:64 --shape 1:8:1024:128:causal
  step "OpenMP wait policy"
  timeout 60 python3 bench/cpu_sweep.py "active=env OMP_WAIT_POLICY=active $run attn_base" \
    "passive=env OMP_WAIT_POLICY=passive $run attn_base" --rounds 3 --repeat 5 --shape 0:8:1024:64:causal \
    --shape 0:8:1024:128 --shape 0:8:1024:64:causal:backward --shape 0:16:4096:64
}

step_grid() {
  step "sdpa grid"
  timeout 200 python3 bench/sdpa_grid.py --attn "$wrapper" --quick --no-small --threads 1 "$cores" --pin "$pin"
}

step_backward() {
  step "forward + backward against PyTorch"
  timeout 130 python3 bench/compare_pytorch_backward.py --attn "$wrapper" --threads 1 "$cores" --rounds 1 --repeat 2 \
    --lengths 1024 --dims 64 128
}

step_bf16() {
  step "bf16 backward"
  for t in 1 "$cores"; do
    for d in 64 128; do
      for dt in f32 bf16; do
        timeout 60 "$wrapper" bench sdpa --heads 8 --q-len 2048 --head-dim "$d" --threads "$t" --backward --dtype "$dt" \
          --repeat 3
      done
    done
  done
}

step_thresholds() {
  step "long-sequence thresholds"
  local backward=() forward=()
  for v in base spanall nolong; do backward+=("$v=$run attn_$v"); done
  for v in base long1m nolong; do forward+=("$v=$run attn_$v"); done
  timeout 60 python3 bench/cpu_sweep.py "${backward[@]}" --rounds 3 --repeat 1 \
    --shape 0:16:2048:64:backward --shape 0:4:8192:128:backward --shape 0:1:16384:128:backward
  timeout 45 python3 bench/cpu_sweep.py "${forward[@]}" --rounds 3 --repeat 1 \
    --shape 0:16:4096:64 --shape 0:16:4096:128 --shape 0:8:16384:128
  step "backward update tile"
  timeout 40 python3 bench/cpu_sweep.py "base=$run attn_base" "upd8x2=$run attn_upd8x2" --pin "$pin" --rounds 3 \
    --repeat 1 --shape 1:4:2048:128:backward --shape 0:16:2048:64:backward --shape 0:16:2048:128:backward
}

# A call runs for at most 600 s: a step that would start in its last 60 s (ATTN_DEVICE_SECONDS, default 570, minus 60)
# is skipped, so that the logs of those before come back whole.
deadline=${ATTN_DEVICE_SECONDS:-570}
for s in "${steps[@]}"; do
  if [ "$SECONDS" -gt $((deadline - 60)) ]; then
    echo "skipped $s: ${SECONDS} s gone of ${deadline}" | tee "$out/$s.log"
    continue
  fi
  declare -F "step_$s" >/dev/null ||
    { echo "no step '$s' (perf order stages grid backward bf16 thresholds)" >&2; continue; }
  "step_$s" >"$out/$s.log" 2>&1
  tail -n 3 "$out/$s.log"
done

#!/usr/bin/env bash
# Builds libattn_cuda once per tile-size variant (the ATTN_FWD*/ATTN_BWD* macros of src/cuda/flash_*.cu, sm_90
# only) and times them side by side with PyTorch (bench/cuda_sweep.py). Run on a GPU machine:
#   bench/cuda_tile_sweep.sh 'name:-DMACRO=V -DMACRO=V' ...
set -euo pipefail
cd "$(dirname "$0")/.."
out=build-sweep
mkdir -p $out
args=()
for v in "$@"; do
  name=${v%%:*}
  flags=${v#*:}
  mkdir -p $out/$name
  # shellcheck disable=SC2086
  nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC -cudart static -gencode arch=compute_90,code=sm_90 -lineinfo \
    -Isrc -Iinclude $flags src/cuda/flash_fwd.cu src/cuda/flash_bwd.cu src/cuda/attention_cuda.cc \
    -o $out/$name/libattn_cuda.so -Xptxas -v >$out/$name/ptxas.log 2>&1 &
done
wait
for v in "$@"; do
  name=${v%%:*}
  if [ ! -f $out/$name/libattn_cuda.so ]; then
    echo "$name: build failed"; grep -m3 error $out/$name/ptxas.log; continue
  fi
  args+=("$name=$out/$name/libattn_cuda.so")
  echo "$name: $(grep -A2 'flash_fwd_kernelI13__nv_bfloat16Li128' $out/$name/ptxas.log | grep -oE 'Used [0-9]+ registers|[0-9]+ bytes spill stores' | tr '\n' ' ')"
done
PYTHONUNBUFFERED=1 python3 bench/cuda_sweep.py "${args[@]}"

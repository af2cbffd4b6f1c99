#!/usr/bin/env bash
# Runs every test: builds (installing what is missing), then the GoogleTest suite through CTest.
#   scripts/test.sh
# ATTN_FUZZ_SECONDS=N also fuzzes each file reader for N seconds (fuzz/run.sh) and fails on a find.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
if [ "${ATTN_FUZZ_SECONDS:-0}" -gt 0 ]; then
  fuzz/run.sh "$ATTN_FUZZ_SECONDS"
fi

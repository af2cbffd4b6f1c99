#!/usr/bin/env bash
# Fuzzes the .npy and .safetensors readers with libFuzzer (Debian's clang) for a bounded time.
#   fuzz/run.sh [SECONDS_PER_TARGET]      (default 60)
# Any input that crashes, hangs or exhausts memory is copied to tests/fuzz_regressions/<reader>/,
# where tests/fuzz_regressions_test.cc replays it in every test run; the script then exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
need=""
command -v clang++ >/dev/null || need="clang"
compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null ||
  need="$need libclang-rt-dev"
if [ -n "$need" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $need >/dev/null
fi
out=build-fuzz
mkdir -p "$out"
sources="src/tensor.cc src/io/file.cc src/io/npy.cc src/io/safetensors.cc"
# One reader per core, side by side (each builds, then fuzzes for SECONDS): the two had run one after the other.
fuzz_reader() {
  local reader=$1
  clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iinclude -Isrc fuzz/fuzz_$reader.cc $sources -o "$out/fuzz_$reader"
  local corpus="$out/corpus_$reader"
  # this run's finds only (an earlier run's artifact had been reported again after its fix)
  rm -rf "$out/artifacts_$reader"
  mkdir -p "$corpus" "$out/artifacts_$reader"
  cp tests/fixtures/*.$reader "$corpus/" 2>/dev/null || true
  echo "fuzzing the $reader reader for ${seconds}s"
  # -rss_limit_mb: a header that makes the reader allocate what the file does not back is a bug
  "$out/fuzz_$reader" "$corpus" -max_total_time="$seconds" -rss_limit_mb=512 -timeout=10 \
    -artifact_prefix="$out/artifacts_$reader/" -print_final_stats=1 2>"$out/log_$reader.txt" || true
}
fuzz_reader npy & npy_job=$!
fuzz_reader safetensors & safetensors_job=$!
wait $npy_job
wait $safetensors_job
found=0
for reader in npy safetensors; do
  echo "$reader:"
  tail -n 12 "$out/log_$reader.txt" | grep -E 'stat::number_of_executed_units|Done|ERROR' || true
  # a fuzzer that ended without its final "Done N runs" (a start-up failure, a bad flag) did not fuzz: a failure too
  # (its exit status is not the test: a find exits non-zero, and the artifact below says what it was)
  if ! grep -q '^Done [0-9]* runs' "$out/log_$reader.txt" && ! compgen -G "$out/artifacts_$reader/*" >/dev/null; then
    tail -n 20 "$out/log_$reader.txt"
    echo "the $reader fuzzer did not run to its end (log: $out/log_$reader.txt)"
    found=1
  fi
  for f in "$out/artifacts_$reader"/*; do
    [ -e "$f" ] || continue
    mkdir -p tests/fuzz_regressions/$reader
    cp "$f" tests/fuzz_regressions/$reader/
    echo "FOUND: $f (kept in tests/fuzz_regressions/$reader/)"
    found=1
  done
done
exit $found

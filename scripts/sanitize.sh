#!/usr/bin/env bash
# Builds the library, the attn tool and the GoogleTest suite with AddressSanitizer and UndefinedBehaviorSanitizer
# into build-sanitize/ and runs the whole CTest suite there: every kernel path on the shared case list (odd sizes,
# every mask, every compiled instruction set), the backwards, the 16-bit kernels, the file readers and the CLI, with
# any out-of-bounds access, use after free, leak or undefined operation failing the run. (The numeric tests alone
# cannot see a read past a buffer whose value is then multiplied by a zero weight.)
#   scripts/sanitize.sh          (~7 minutes on 2 cores, 5 of them compiling; .ci/run calls it)
# It needs scripts/setup.sh's packages and the MiniLM model it installs into build/pydeps; it runs setup.sh first
# when build/ has no attn tool. MPI is left out (Open MPI's own allocations are not ours to check).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/attn ] && [ -d build/pydeps ] || scripts/setup.sh
out=build-sanitize
mkdir -p "$out"
# -g1: line tables only, which is all a sanitizer's stack trace prints (file:line); a quarter less compile time than -g
# ATTN_NO_VECTOR_CLONES: the ops layer's element loops are compiled once, for the baseline x86-64 (src/ops/clones.h),
# so this run checks the copy the main build's loader never picks on an AVX2 or AVX-512 machine.
flags="-O1 -g1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -DATTN_NO_VECTOR_CLONES"
# (the Debug type's own flags emptied: its -g came after ours and won, so -g1 had never applied)
launcher="-DCMAKE_CXX_COMPILER_LAUNCHER="
command -v ccache >/dev/null && launcher="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
cmake -S . -B "$out" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" $launcher \
  -DCMAKE_CXX_FLAGS_DEBUG= -DCMAKE_C_FLAGS_DEBUG= \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DATTN_BUILD_BENCH=OFF -DATTN_WITH_MPI=OFF >"$out/configure.log" 2>&1 || { cat "$out/configure.log"; exit 1; }
cmake --build "$out" -j"$(nproc)" >"$out/build.log" 2>&1 || { tail -n 60 "$out/build.log"; exit 1; }
ln -sfn "$PWD/build/pydeps" "$out/pydeps"  # the tests read the MiniLM model below their build directory
# halt_on_error: the first report fails its test; detect_leaks: a leak is a failure too; allocator_may_return_null:
# an allocation too large for the machine throws std::bad_alloc, as without ASan. The caller's options come last
# (e.g. detect_leaks=0 where LeakSanitizer cannot run).
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}
# Left out: the checks with no C++ of ours to instrument (format, layering) and the browser's page test (Chromium
# dominates it; attn viz itself runs here in the CLI tests). The heaviest tests take fewer random cases and sentences
# under AddressSanitizer (tests/test_util.h, small_test_volume), and those that run each case through many
# configurations run it through a share of them, offset by a hash of the case (test::config_sampled): every configuration is still reached.
ctest --test-dir "$out" --output-on-failure -j"$(nproc)" -E '^(browser|format|layering|layering_self_test)$' 2>&1 |
  tee "$out/ctest.log"
echo "sanitizers: $(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2 tests, \1 failed/p' \
  "$out/ctest.log") under AddressSanitizer and UndefinedBehaviorSanitizer"

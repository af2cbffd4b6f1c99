#!/usr/bin/env bash
# Runs every test:
#   1. builds (installing what is missing) and runs the GoogleTest suite through CTest;
#   2. installs the library and builds examples/ against it out of tree (CMake and pkg-config);
#   3. builds the Python wheel (`python -m build --wheel`), installs it into build/venv with PyTorch and runs
#      pytest (attn.torch's tests included; tests/gpu too, which say they are skipped without a GPU), then the
#      README's Python quick-start exactly as written.
#   scripts/test.sh
# ATTN_FUZZ_SECONDS=N also fuzzes each file reader for N seconds (fuzz/run.sh) and fails on a find.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" 2>&1 | tee build/ctest.log
ctest_passed=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2 \1/p' build/ctest.log |
  awk '{print $1 - $2}')
scripts/check_install.sh

# Python: a venv with the module built from this tree (needs python3-dev and python3-venv on Debian).
if ! python3 -c 'import sysconfig, os, venv; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
    2>/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-dev python3-venv python3-pip >/dev/null
fi
if [ ! -x build/venv/bin/python ]; then
  python3 -m venv build/venv 2>/dev/null || {  # Debian: venv needs python3-venv
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3-venv python3-dev >/dev/null
    rm -rf build/venv && python3 -m venv build/venv; }
fi
build/venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The wheel is built as a Python user would (python -m build --wheel), in this venv without build isolation so that
# it reuses build/python-* from run to run, and the tests run against that installed wheel. ml_dtypes: bfloat16 NumPy
# arrays; PyTorch: attn.torch's tests. Pinned (scripts/requirements-test.txt): pip puts a venv's other versions back to
# the pins, and leaves one that has them as it is.
build/venv/bin/python -m pip install -q -r scripts/requirements-test.txt
# the tests that need them skip without them (importorskip): a torch or ml_dtypes that installs but does not import
# would have let pytest pass with those tests skipped
build/venv/bin/python -c 'import torch, ml_dtypes, numpy' ||
  { echo "test.sh: torch, ml_dtypes or numpy does not import in build/venv" >&2; exit 1; }
rm -rf build/dist
# Through ccache where setup.sh installed it: the library's objects then come from the main build's cache, if the
# compiler is called by the same name (ccache hashes it: the wheel's CMake would pick g++ where the main build has c++).
wheel_env=()
if command -v ccache >/dev/null; then
  wheel_env=(CMAKE_CXX_COMPILER_LAUNCHER=ccache)
  main_cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:FILEPATH=//p' build/CMakeCache.txt)
  if [ -n "$main_cxx" ]; then wheel_env+=(CXX="$main_cxx"); fi
fi
env "${wheel_env[@]}" build/venv/bin/python -m build --wheel --no-isolation --outdir build/dist . >build/wheel.log 2>&1 ||
  { cat build/wheel.log; exit 1; }
build/venv/bin/python -m pip install -q --force-reinstall --no-deps build/dist/attn-*.whl
build/venv/bin/python -m pytest -q -rs tests/python tests/gpu 2>&1 | tee build/pytest.log
pytest_passed=$(grep -oE '[0-9]+ passed' build/pytest.log | tail -1 | grep -oE '[0-9]+')
sed -n '/^```python/,/^```/p' README.md | sed '1d;$d' > build/readme_quickstart.py
[ -s build/readme_quickstart.py ] || { echo "test.sh: README.md has no \`\`\`python quick-start block" >&2; exit 1; }
build/venv/bin/python build/readme_quickstart.py   # from the repository root, as a reader would
echo "README Python quick-start ran"

if [ "${ATTN_FUZZ_SECONDS:-0}" -gt 0 ]; then
  fuzz/run.sh "$ATTN_FUZZ_SECONDS"
fi
# every step above stops the script on a failure (set -e, pipefail), so reaching here means none failed
echo "summary: $((ctest_passed + pytest_passed)) passed, 0 failed"

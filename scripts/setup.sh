#!/usr/bin/env bash
# Installs what attn needs on a Debian machine (apt), then configures and builds it into build/.
#   scripts/setup.sh            -> build/attn, build/tests/attn_tests
set -euo pipefail
cd "$(dirname "$0")/.."
packages="cmake g++ make pkg-config libopenblas-dev libopenblas-openmp-dev nlohmann-json3-dev libcli11-dev libgtest-dev libbenchmark-dev libpng-dev chromium fonts-wqy-zenhei"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"

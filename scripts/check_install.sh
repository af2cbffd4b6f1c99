#!/usr/bin/env bash
# Installs attn into a scratch prefix and builds examples/ against it, out of tree, the way a user's
# project would: with CMake (find_package(attn)) and with pkg-config. Runs every example.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="$PWD/build/install"
rm -rf "$prefix" build/examples build/examples-pc
cmake --install build --prefix "$prefix" >/dev/null
"$prefix/bin/attn" --version
cmake -S examples -B build/examples -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build build/examples -j"$(nproc)"
for e in attention attention_static self_attention multi_head_self_attention cross_attention masked_self_attention \
    translate; do
  build/examples/$e >/dev/null || { echo "example $e failed"; exit 1; }
done
mkdir -p build/examples-pc
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
g++ -Wall -Wextra -Werror -pedantic examples/attention.cc -o build/examples-pc/attention \
  $(pkg-config --cflags --libs attn)
build/examples-pc/attention >/dev/null
"$prefix/bin/attn" translate "three hundred twelve" | grep -qx "三百一十二"
echo "install check: the installed attn translates; 7 CMake examples and 1 pkg-config example built" \
  "against $prefix and ran"

#!/usr/bin/env bash
# Checks that every C++ file follows .clang-format (Debian's clang-format); --fix rewrites them.
#   scripts/check_format.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
# The tree is formatted by clang-format 14 (Debian 12's): other majors reflow code under the same .clang-format, so
# elsewhere (Debian 13 has 19) PyPI's build of 14.0.6 (the same formatter, pip-installed into build/) checks it; with
# neither, the check is skipped (exit 77, which CTest reports as skipped), not failed.
major() { "$1" --version 2>/dev/null | sed -n 's/.*clang-format version \([0-9]*\).*/\1/p'; }
cf=clang-format
if [ "$(major clang-format)" != 14 ]; then
  cf=build/clang-format-14/clang_format/data/bin/clang-format
  if [ ! -x "$cf" ]; then
    echo "check_format: clang-format here is version '$(major clang-format)', not 14: installing PyPI's 14.0.6 into build/"
    python3 -m pip install -q --no-deps --target build/clang-format-14 clang-format==14.0.6 >/dev/null 2>&1 ||
      python3 -m pip install -q --no-deps --break-system-packages --target build/clang-format-14 \
        clang-format==14.0.6 >/dev/null 2>&1 || true
  fi
  [ -x "$cf" ] || {
    echo "check_format: skipped: needs clang-format 14 (Debian 12's, or pip's clang-format==14.0.6)"
    exit 77
  }
fi
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cpp' '*.cu' '*.cuh' 2>/dev/null | grep -v '^tests/fixtures/' ||
                     find include src tools python tests bench examples fuzz -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh')
if [ "${1:-}" = "--fix" ]; then
  "$cf" -i "${files[@]}"
  exit 0
fi
if ! "$cf" --dry-run --Werror "${files[@]}" 2>/tmp/check_format.$$; then
  grep -E '^[^ ].*(warning|error):' /tmp/check_format.$$ | cut -d: -f1 | sort -u | sed 's/^/not formatted: /'
  rm -f /tmp/check_format.$$
  echo "check_format: run scripts/check_format.sh --fix"
  exit 1
fi
rm -f /tmp/check_format.$$
echo "check_format: ${#files[@]} files follow .clang-format"

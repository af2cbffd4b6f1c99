#!/usr/bin/env bash
# Checks that every C++ file follows .clang-format (Debian's clang-format); --fix rewrites them.
#   scripts/check_format.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || {
  echo "check_format: clang-format is not installed (scripts/setup.sh installs it)"
  exit 1
}
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cpp' '*.cu' '*.cuh' 2>/dev/null | grep -v '^tests/fixtures/' ||
                     find include src tools python tests bench examples fuzz -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh')
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/check_format.$$; then
  grep -E '^[^ ].*(warning|error):' /tmp/check_format.$$ | cut -d: -f1 | sort -u | sed 's/^/not formatted: /'
  rm -f /tmp/check_format.$$
  echo "check_format: run scripts/check_format.sh --fix"
  exit 1
fi
rm -f /tmp/check_format.$$
echo "check_format: ${#files[@]} files follow .clang-format"

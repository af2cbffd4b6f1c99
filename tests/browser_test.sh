#!/usr/bin/env bash
# The attention pages in a real browser (Debian's chromium, headless): every map is drawn, the page
# logs no error, a long input (2000 tokens) renders within the time budget; screenshots are saved.
#   tests/browser_test.sh ATTN_BINARY OUT_DIR MINILM_DIR
set -euo pipefail
attn=$1
out=$2
minilm=$3
mkdir -p "$out"
out=$(cd "$out" && pwd)  # file:// URLs need an absolute path
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium is not installed (scripts/setup.sh installs it)"; exit 1; }
run_browser() { timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars "$@" 2>/dev/null; }
check() {  # page, minimum number of maps
  local page=$1 min=$2 status maps drawn errors
  status=$(run_browser --virtual-time-budget=20000 --dump-dom "file://$page" | grep -o '<div id="status"[^>]*>' || true)
  maps=$(echo "$status" | sed -n 's/.*data-maps="\([0-9]*\)".*/\1/p')
  drawn=$(echo "$status" | sed -n 's/.*data-drawn="\([0-9]*\)".*/\1/p')
  errors=$(echo "$status" | sed -n 's/.*data-errors="\([0-9]*\)".*/\1/p')
  echo "$(basename "$page"): maps=$maps drawn=$drawn errors=$errors"
  [ -n "$maps" ] && [ "$maps" -ge "$min" ] && [ "$drawn" = "$maps" ] && [ "$errors" = "0" ] ||
    { echo "FAIL: $page"; exit 1; }
  run_browser --window-size=1400,1600 --screenshot="$page.png" "file://$page" >/dev/null
  [ -s "$page.png" ] || { echo "FAIL: no screenshot of $page"; exit 1; }
}
"$attn" viz "one million two hundred thirty four thousand five hundred sixty seven" --out "$out/viz.html" \
  --png "$out/cross.png" >/dev/null
"$attn" explain --html "$out/explain.html" >/dev/null
"$attn" viz --random-map 2000 --out "$out/long.html"
check "$out/viz.html" 45     # 3 encoder + 3 + 3 decoder layers, 4 heads + average each
check "$out/explain.html" 10
"$attn" viz --model "$minilm" "Attention lets every token look at every other token." \
  --out "$out/minilm.html" >/dev/null
check "$out/minilm.html" 78   # 6 layers x (12 heads + average)
start=$(date +%s)
check "$out/long.html" 2
echo "long page: $(( $(date +%s) - start )) s"
echo "browser test passed; screenshots in $out"

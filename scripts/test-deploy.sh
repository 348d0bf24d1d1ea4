#!/usr/bin/env bash
# The deployment artifacts (docs/DEPLOY.md), tested. Usage: ./scripts/test-deploy.sh [--manifests]
#
# 1. deploy/kubernetes/: every manifest validated offline and strictly (core kinds with
#    kubernetes-validate, KEDA's ScaledObject against its vendored CRD schema, a kind neither
#    knows fails), and the pieces fit together (deploy/check-manifests.py).
# 2. deploy/systemd/: `systemd-analyze verify` of the unit (where systemd-analyze exists).
# 3. The container image: scripts/container.sh test (builds it with podman and runs its worker
#    against a nats-server: /healthz, a session's tasks, SIGTERM drain, the conformance kit).
#    Needs podman and, where podman cannot run containers, root (chroot, mount).
#    --manifests stops after 1 and 2.
#
# Uses the release binary at $CARGO_TARGET_DIR/release/a3s-code (scripts/test.sh builds it;
# otherwise `cargo build --release --locked -p a3s-code-cli`) and $A3S_TEST_NATS_URL when set.
# Python tools (pinned) go to a venv of the build directory; the session check uses dist/'s
# wheel of this version when there is one (scripts/package.sh), or $A3S_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

step() { printf '\n--> %s\n' "$*"; }
t0=$SECONDS

bin="$CARGO_TARGET_DIR/release/a3s-code"
[ -x "$bin" ] || { echo "no $bin: cargo build --release --locked -p a3s-code-cli" >&2; exit 1; }
version="$("$bin" --version | awk '{print $2}')"

# The validators, pinned (kubernetes-validate bundles the Kubernetes schemas it checks against).
pins=(kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)
venv="$CARGO_TARGET_DIR/deploy-venv"
if [ "$(cat "$venv/pins" 2>/dev/null)" != "${pins[*]}" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" >"$venv/pins"
fi

step "Kubernetes manifests: deploy/check-manifests.py (kubernetes-validate --strict, KEDA's CRD schema, fit)"
"$venv/bin/python" deploy/check-manifests.py --worker-help "$bin"

step "systemd unit: systemd-analyze verify"
if command -v systemd-analyze >/dev/null 2>&1; then
  unit_dir="$(mktemp -d)"
  # An instance of the template, with the binary under test in place of /usr/local/bin's.
  sed "s|/usr/local/bin/a3s-code|$bin|" deploy/systemd/a3s-code-worker@.service \
    >"$unit_dir/a3s-code-worker@pool.service"
  out="$(systemd-analyze verify "$unit_dir/a3s-code-worker@pool.service" 2>&1)" || { echo "$out" >&2; exit 1; }
  rm -rf "$unit_dir"
  [ -z "$out" ] || { echo "$out" >&2; exit 1; }
  echo "a3s-code-worker@.service: verified"
else
  echo "skipped: no systemd-analyze here (apt-get install systemd)"
fi

[ "${1:-}" = --manifests ] && { echo "deploy checks passed ($((SECONDS - t0)) s)"; exit 0; }

step "Container image: scripts/container.sh test"
if [ -z "${A3S_PYTHON:-}" ]; then
  wheels=(dist/a3s_code-"$version"-*.whl)
  if [ -f "${wheels[0]}" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "${wheels[0]}"
    export A3S_PYTHON="$venv/bin/python"
  fi
fi
./scripts/container.sh test --binary "$bin"

echo "deploy checks passed ($((SECONDS - t0)) s)"

#!/usr/bin/env bash
# The Python package's tests, run against the release artifacts in dist/ (./scripts/package.sh
# builds them; this script runs `./scripts/package.sh python` first when they are missing).
# Usage: ./scripts/test-python.sh
#
# 1. A fresh venv (in $CARGO_TARGET_DIR/py-venv), the test tools from PyPI (the wheel's `test`
#    extra: pytest, pytest-asyncio, mypy, nats-py), then the wheel from dist/ as a user without
#    Rust installs it: `pip install --no-index --only-binary :all: --find-links dist a3s-code`,
#    with CARGO unset and no cargo or rustc on PATH (checked).
# 2. In that environment, against the installed wheel: the spec's Python sample
#    (examples/spec/python), the stubs against the module (mypy.stubtest), mypy over the sample
#    and the tests, and pytest (bindings-python/tests).
# 3. The sdist builds into a working wheel: pip builds it (with Rust) in another fresh venv,
#    sharing $CARGO_TARGET_DIR and package.sh's toolchain, so that only the workspace's own crates
#    compile again; the wheel installs, imports and answers one call.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

version="$(./scripts/package.sh check-version)"
# The wheel and the sdist that package.sh built (it removes older ones): their file names spell
# the version as PEP 440 does (1.2.0rc1 for the crate's 1.2.0-rc.1).
wheel="$(ls dist/a3s_code-*-cp39-abi3-manylinux*_x86_64.whl 2>/dev/null || true)"
sdist="$(ls dist/a3s_code-*.tar.gz 2>/dev/null || true)"
if [ -z "$wheel" ] || [ -z "$sdist" ]; then
  step "Python: no wheel or sdist in dist/: ./scripts/package.sh python"
  ./scripts/package.sh python
  wheel="$(ls dist/a3s_code-*-cp39-abi3-manylinux*_x86_64.whl)"
  sdist="$(ls dist/a3s_code-*.tar.gz)"
fi

fresh_venv() {
  rm -rf "$1"
  if ! "$PYTHON" -m venv "$1"; then
    echo "'$PYTHON -m venv' failed: install Python 3.9+ with venv support (Debian: python3-venv)" >&2
    exit 1
  fi
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
}

step "Python: a fresh venv with the test tools (from PyPI)"
venv="$CARGO_TARGET_DIR/py-venv"
fresh_venv "$venv"
py="$venv/bin/python"
# The `test` extra, as the wheel's METADATA states it.
mapfile -t test_deps < <("$py" - "$wheel" <<'EOF'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
for line in wheel.read(meta).decode().splitlines():
    if line.startswith("Requires-Dist:") and "extra == 'test'" in line:
        print(line.split(":", 1)[1].split(";", 1)[0].strip())
EOF
)
"$py" -m pip install --quiet --disable-pip-version-check "${test_deps[@]}"

# Everything below runs as on a machine without Rust.
no_rust_path="$(./scripts/package.sh no-rust-path)"
(
  export PATH="$no_rust_path"
  unset CARGO RUSTC RUSTUP_TOOLCHAIN PIP_FIND_LINKS
  if command -v cargo >/dev/null 2>&1 || command -v rustc >/dev/null 2>&1; then
    echo "cargo or rustc is still on PATH ($PATH)" >&2
    exit 1
  fi

  step "Python: pip install --no-index --only-binary :all: --find-links dist a3s-code (no cargo on PATH)"
  SECONDS=0
  "$py" -m pip install --disable-pip-version-check --no-index --only-binary :all: --find-links dist a3s-code
  echo "(installed in ${SECONDS}s)"
  # The tests must exercise the installed wheel (this one), not the source tree.
  "$py" - "$version" "$(basename "$wheel")" <<'EOF'
import sys, importlib.metadata, a3s_code
assert "site-packages" in a3s_code.__file__, a3s_code.__file__
assert a3s_code.__version__ == sys.argv[1], a3s_code.__version__
assert importlib.metadata.version("a3s-code") == sys.argv[2].split("-")[1], importlib.metadata.version("a3s-code")
EOF

  step "Python: the spec's sample (examples/spec/python), as a user runs it"
  (cd examples/spec && "$py" python/spec_sample.py | tail -3)

  step "Python: stubtest, mypy, pytest (against the installed wheel)"
  "$py" -m mypy.stubtest a3s_code._native
  "$py" -m mypy examples/spec/python bindings-python/tests
  "$py" -m pytest
)

step "Python: the sdist builds into a working wheel (fresh venv, Rust, shared target dir)"
sdist_venv="$CARGO_TARGET_DIR/sdist-venv"
fresh_venv "$sdist_venv"
built="$(mktemp -d)"
trap 'rm -rf "$built"' EXIT
mkdir "$built/src" "$built/wheel"
tar -xzf "$sdist" -C "$built/src"
# Cargo fingerprints a workspace's crates by paths relative to it, so it would take the crates
# package.sh compiled from this clone as up to date: files newer than those make it compile the
# sdist's own.
find "$built/src" -type f -exec touch {} +
(
  # The release builds' linker and C compiler (zig, glibc 2.17) and target, so the dependencies
  # built by package.sh are reused; pip's isolated build takes maturin from PyPI.
  eval "$(./scripts/package.sh toolchain-env)"
  export MATURIN_PEP517_ARGS="--target x86_64-unknown-linux-gnu"
  SECONDS=0
  "$sdist_venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps \
    -w "$built/wheel" "$built"/src/*/
  echo "(built $(basename "$built"/wheel/*.whl) in ${SECONDS}s)"
)
"$sdist_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index "$built"/wheel/*.whl
(cd "$built" && "$sdist_venv/bin/python" - "$version" <<'EOF'
import asyncio, os, sys, a3s_code
assert "site-packages" in a3s_code.__file__ and a3s_code.__version__ == sys.argv[1]
with open("hello.txt", "w") as f:
    f.write("hello from the sdist\n")
with open("agent.hcl", "w") as f:
    f.write("")
session = a3s_code.Agent.create("agent.hcl").session(os.getcwd())
out = asyncio.run(session.tool("read", {"path": "hello.txt"}))
assert out.success and "hello from the sdist" in out.result["content"], out
print("the wheel built from the sdist works:", a3s_code.__version__)
EOF
)

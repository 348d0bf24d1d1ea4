#!/usr/bin/env bash
# The Python package's tests. Usage: ./scripts/test-python.sh
#
# Builds and installs a3s_code the way a user does (`pip install .`: maturin builds the wheel)
# into a fresh virtual environment, then checks the stubs against the built module
# (mypy.stubtest), type-checks the spec sample and the tests (mypy), and runs pytest.
# The venv lives in $CARGO_TARGET_DIR/py-venv (rebuilt on every run); the wheel's Rust build
# reuses $CARGO_TARGET_DIR, so a second run only recompiles what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PYTHON="${PYTHON:-python3}"
venv="$CARGO_TARGET_DIR/py-venv"

rm -rf "$venv"
mkdir -p "$CARGO_TARGET_DIR"
if ! "$PYTHON" -m venv "$venv"; then
  echo "'$PYTHON -m venv' failed: install Python 3.9+ with venv support (Debian: python3-venv)" >&2
  exit 1
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet ".[test]"   # builds the wheel from this checkout
# The tests must exercise the installed wheel, not a development build in the source tree.
"$py" -c 'import a3s_code, sys; sys.exit(0 if "site-packages" in a3s_code.__file__ else a3s_code.__file__)'

"$py" -m mypy.stubtest a3s_code._native
"$py" -m mypy examples/spec/python bindings-python/tests
"$py" -m pytest

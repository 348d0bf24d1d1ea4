"""The conformance kit (`a3s-code conformance`) against workers of another language: the foreign
worker (examples/foreign-worker, written from docs/protocol.md) passes every mandatory rule, and
deliberately broken copies of it (tests/conformance/broken_worker.py) each fail exactly the rule
they break — the kit can fail."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Set

import pytest

from test_nats import nats_url  # noqa: F401  (the fixture: $A3S_TEST_NATS_URL or a nats-server of its own)

REPO = pathlib.Path(__file__).resolve().parents[2]
FOREIGN = REPO / "examples" / "foreign-worker" / "worker.py"
BROKEN = REPO / "tests" / "conformance" / "broken_worker.py"


def kit_binary() -> str:
    """`$A3S_CODE_BIN`, else the a3s-code a cargo build of this checkout left."""
    given = os.environ.get("A3S_CODE_BIN")
    if given:
        return given
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "a3s-code"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("a3s-code")
    if found:
        return found
    raise RuntimeError("no a3s-code binary: build it (cargo build -p a3s-code-cli) or set A3S_CODE_BIN")


def start_kit(url: str, *worker: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [kit_binary(), "conformance", "--json", "--nats", url, "--", *worker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, A3S_LOG="error"),
    )


def report(kit: "subprocess.Popen[str]") -> Dict[str, Any]:
    out, err = kit.communicate(timeout=300)
    try:
        data: Dict[str, Any] = json.loads(out)
    except ValueError:
        raise AssertionError(f"no JSON report:\n{out}\n{err}") from None
    return data


def failed_mandatory(data: Dict[str, Any]) -> Set[str]:
    return {r["rule"] for r in data["rules"] if r["mandatory"] and r["status"] != "passed"}


def test_the_foreign_worker_conforms(nats_url: str) -> None:  # noqa: F811
    data = report(start_kit(nats_url, sys.executable, str(FOREIGN)))
    rules: List[Dict[str, Any]] = data["rules"]
    assert failed_mandatory(data) == set(), json.dumps(rules, indent=2)
    assert data["conforming"] is True
    # What it does not serve is reported as not applicable, with the reason; nothing fails.
    assert all(r["status"] != "failed" for r in rules), json.dumps(rules, indent=2)


@pytest.mark.parametrize(
    "fault, rule",
    [
        ("ack-before-result", "result-stored-before-ack"),
        ("wrong-attempt", "attempt-numbers"),
        ("no-lease-renewal", "lease-renewal"),
        ("answers-twice", "one-result-per-delivery"),
    ],
)
def test_a_broken_worker_fails_exactly_its_rule(nats_url: str, fault: str, rule: str) -> None:  # noqa: F811
    kit = start_kit(nats_url, sys.executable, str(BROKEN), fault)
    data = report(kit)
    assert kit.returncode == 1, data
    assert data["conforming"] is False
    assert failed_mandatory(data) == {rule}, json.dumps(data["rules"], indent=2)

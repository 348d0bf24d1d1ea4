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
    built = [p for p in (target / "release" / "a3s-code", target / "debug" / "a3s-code") if p.is_file()]
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))  # the latest build
    found = shutil.which("a3s-code")
    if found:
        return found
    raise RuntimeError("no a3s-code binary: build it (cargo build -p a3s-code-cli) or set A3S_CODE_BIN")


def start_kit(url: str, logs: pathlib.Path, *worker: str) -> "subprocess.Popen[str]":
    # The workers' output goes to pytest's temporary folder (a failing kit run keeps it).
    return subprocess.Popen(
        [kit_binary(), "conformance", "--json", "--nats", url, "--logs", str(logs), "--", *worker],
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


def test_the_foreign_worker_conforms(nats_url: str, tmp_path: pathlib.Path) -> None:  # noqa: F811
    data = report(start_kit(nats_url, tmp_path, sys.executable, str(FOREIGN)))
    rules: List[Dict[str, Any]] = data["rules"]
    assert failed_mandatory(data) == set(), json.dumps(rules, indent=2)
    assert data["conforming"] is True
    # What it does not serve is reported as not applicable, with the reason; nothing fails.
    assert all(r["status"] != "failed" for r in rules), json.dumps(rules, indent=2)


# Each broken copy and the rule it must fail, and no other mandatory one.
BROKEN_RULES = {
    "ack-before-result": "result-stored-before-ack",
    "wrong-attempt": "attempt-numbers",
    "no-lease-renewal": "lease-renewal",
    "answers-twice": "one-result-per-delivery",
}


def test_each_broken_worker_fails_exactly_its_rule(nats_url: str, tmp_path: pathlib.Path) -> None:  # noqa: F811
    # The four runs at once (each kit uses prefixes of its own): about one run's time.
    kits = {
        fault: start_kit(nats_url, tmp_path / fault, sys.executable, str(BROKEN), fault)
        for fault in BROKEN_RULES
    }
    for fault, kit in kits.items():
        data = report(kit)
        assert kit.returncode == 1, (fault, data)
        assert data["conforming"] is False, fault
        assert failed_mandatory(data) == {BROKEN_RULES[fault]}, (fault, json.dumps(data["rules"], indent=2))

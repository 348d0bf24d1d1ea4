"""The built-in tools' language-neutral fixtures (tests/fixtures/tools/, format in its README)
against the foreign worker's tools (examples/foreign-worker/tools.py), called directly: no NATS,
no a3s_code. core/tests/tools_fixtures.rs runs the same files against the Rust tools.

Alone, without the a3s_code package that conftest.py imports:
    python -m pytest --noconftest bindings-python/tests/test_tool_fixtures.py
"""

import base64
import importlib.util
import json
import os
import pathlib
import subprocess
import threading
from typing import Any, Dict, Iterator, List, Optional

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "tools"
TOOLS_PY = REPO / "examples" / "foreign-worker" / "tools.py"
RUNNER = "foreign-worker"  # this runner's name in a case's "skip" object


def load_tools() -> Any:
    spec = importlib.util.spec_from_file_location("foreign_worker_tools", TOOLS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tools = load_tools()


def all_cases() -> Iterator[Any]:
    for tool in tools.BUILTIN_TOOLS:
        for case in json.loads((FIXTURES / f"{tool}.json").read_text()):
            reason = (case.get("skip") or {}).get(RUNNER)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            yield pytest.param(tool, case, id=f"{tool}: {case['name']}", marks=marks)


class Dirs:
    """The workspace root (`<tmp>/ws`) and a sibling outside it (`<tmp>/outside`), both canonical."""

    def __init__(self, tmp: pathlib.Path) -> None:
        (tmp / "ws").mkdir()
        (tmp / "outside").mkdir()
        self.root = os.path.realpath(tmp / "ws")
        self.outside = os.path.realpath(tmp / "outside")

    def subst(self, v: Any) -> Any:
        """`v` with `{root}` and `{outside}` replaced in every string."""
        if isinstance(v, str):
            return v.replace("{root}", self.root).replace("{outside}", self.outside)
        if isinstance(v, list):
            return [self.subst(i) for i in v]
        if isinstance(v, dict):
            return {k: self.subst(i) for k, i in v.items()}
        return v


def content_bytes(v: Any) -> bytes:
    """A content value: a string, {"base64": ...}, {"repeat": s, "times": n}, or a list of those."""
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, list):
        return b"".join(content_bytes(part) for part in v)
    if "base64" in v:
        return base64.b64decode(v["base64"])
    return str(v["repeat"]).encode() * int(v["times"])


def build(dirs: Dirs, spec: Dict[str, Any]) -> None:
    for base, files in ((dirs.root, spec.get("files") or {}), (dirs.outside, spec.get("outside") or {})):
        for path, content in files.items():
            full = os.path.join(base, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(content_bytes(content))
    for d in spec.get("dirs") or []:
        os.makedirs(os.path.join(dirs.root, d), exist_ok=True)
    for link, target in (spec.get("symlinks") or {}).items():
        full = os.path.join(dirs.root, link)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        os.symlink(dirs.subst(target), full)
    for fifo in spec.get("fifos") or []:
        os.mkfifo(os.path.join(dirs.root, fifo))


def snapshot(top: str) -> Dict[str, bytes]:
    """Every entry below `top` with its content (files) or target (links), for "nothing changed"."""
    out: Dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            if os.path.islink(full):
                out[rel] = os.fsencode(os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = b"<dir>"
            else:
                with open(full, "rb") as f:
                    out[rel] = f.read()
    return out


def check_outcome(expect: Dict[str, Any], got: Dict[str, Any]) -> None:
    success, result, error = got["success"], got["result"], got["error"]
    if "error_code" in expect:
        assert result == {"error_code": expect["error_code"]}, got
        want_success = False
    elif "result" in expect:
        assert result == expect["result"], got
        want_success = expect.get("success", True)
    else:
        subset = expect["result_subset"]
        assert {k: result.get(k) for k in subset} == subset, got
        want_success = expect.get("success", True)
    assert success is want_success, got
    if want_success:
        assert error is None, got
    else:
        assert isinstance(error, str) and expect.get("error_contains", "") in error, got


def check_file(dirs: Dirs, path: str, want: Any) -> None:
    full = os.path.join(dirs.root, path)
    if want is None:
        assert not os.path.lexists(full), f"{path} should not exist"
    elif isinstance(want, dict) and "symlink" in want:
        assert os.path.islink(full), f"{path}: not a symlink"
        assert os.readlink(full) == want["symlink"], path
    else:
        assert os.path.isfile(full) and not os.path.islink(full), f"{path}: not a regular file"
        with open(full, "rb") as f:
            assert f.read() == content_bytes(want), path


@pytest.mark.parametrize("tool,case", list(all_cases()))
def test_tool_fixture(tool: str, case: Dict[str, Any], tmp_path: pathlib.Path) -> None:
    dirs = Dirs(tmp_path)
    build(dirs, case.get("workspace") or {})
    outside_before = snapshot(dirs.outside)
    options = case.get("options") or {}
    kwargs: Dict[str, Any] = {"allow_bash": bool(options.get("allow_bash", False))}
    for key in ("max_file_bytes", "max_output_bytes"):
        if key in options:
            kwargs[key] = options[key]
    ws = tools.Workspace(dirs.root, **kwargs)
    try:
        got = tools.run_tool(ws, case.get("tool", tool), dirs.subst(case["args"]))
    finally:
        ws.close()
    check_outcome(dirs.subst(case["expect"]), got)
    for path, want in (case.get("files_after") or {}).items():
        check_file(dirs, path, dirs.subst(want))
    assert snapshot(dirs.outside) == outside_before, "the directory outside the workspace changed"


def test_every_builtin_tool_has_a_fixture_file() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(tools.BUILTIN_TOOLS)


def test_no_process_outlives_a_bash_call(tmp_path: pathlib.Path) -> None:
    """A command's descendants, detached from its process group too, end with the call."""
    ws = tools.Workspace(str(tmp_path), allow_bash=True)
    command = ("setsid sh -c 'echo $$ > s.pid; exec sleep 60' >/dev/null 2>&1 </dev/null &\n"
               "while [ ! -s s.pid ]; do sleep 0.01; done; echo started")
    got = tools.run_tool(ws, "bash", {"command": command, "timeout_ms": 20_000})
    ws.close()
    assert got["success"] and got["result"]["stdout"] == "started\n", got
    pid = int((tmp_path / "s.pid").read_text())
    ended = subprocess.run(["sh", "-c", f"for i in $(seq 200); do kill -0 {pid} 2>/dev/null || exit 0; "
                                        "sleep 0.01; done; exit 1"]).returncode == 0
    zombie: Optional[List[str]] = None
    if not ended and os.path.exists(f"/proc/{pid}/stat"):
        zombie = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert ended or (zombie is not None and zombie[0] == "Z"), f"process {pid} outlived the call"


def test_a_stop_request_ends_a_running_command(tmp_path: pathlib.Path) -> None:
    """What the worker does when the session cancels a task or its deadline passes."""
    ws = tools.Workspace(str(tmp_path), allow_bash=True)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    got = tools.run_tool(ws, "bash", {"command": "sleep 30"}, stop)
    ws.close()
    assert not got["success"] and got["result"]["exit_code"] is None, got

"""The foreign worker (examples/foreign-worker) serves every built-in tool over NATS, bash only
when allowed, and answers a command it does not know with UnknownTool. The tools' semantics
themselves are checked case by case in test_tool_fixtures.py."""

import asyncio
import os
import pathlib
import subprocess
import sys
import uuid
from typing import Any, AsyncIterator, Dict

import pytest

from test_nats import FOREIGN_WORKER, nats_session, nats_url  # noqa: F401  (nats_url: the fixture)

from a3s_code import Agent, AgentSession, ExternalTaskResult, SessionLane


async def run(session: AgentSession, command: str, payload: Dict[str, Any]) -> ExternalTaskResult:
    handle = await session.submit(SessionLane.QUERY, command, payload)
    return await asyncio.wait_for(handle.result(), 30)


@pytest.fixture(params=[False, True], ids=["bash-off", "bash-on"])
def allow_bash(request: Any) -> bool:
    return bool(request.param)


@pytest.fixture
async def served(agent: Agent, tmp_path: pathlib.Path, nats_url: str,  # noqa: F811
                 allow_bash: bool) -> AsyncIterator[AgentSession]:
    """A session on `tmp_path` whose Query lane the foreign worker serves."""
    prefix = "py" + uuid.uuid4().hex[:10]
    session = await nats_session(agent, tmp_path, nats_url, prefix)
    env = dict(os.environ, A3S_ALLOW_BASH="1" if allow_bash else "")
    worker = subprocess.Popen(
        [sys.executable, str(FOREIGN_WORKER), "--nats", nats_url, "--prefix", prefix,
         "--session-id", session.id, "--workspace", str(tmp_path)],
        stderr=subprocess.PIPE, env=env)
    try:
        yield session
    finally:
        worker.terminate()
        worker.communicate(timeout=10)
        await session.close()


async def test_the_foreign_worker_serves_every_builtin_tool(served: AgentSession, tmp_path: pathlib.Path,
                                                            allow_bash: bool) -> None:
    session = served
    write = await run(session, "write", {"path": "src/app.py", "content": "x = 1\nprint(x)\n"})
    assert (write.success, write.result) == (True, {"bytes_written": 15}), write.error
    assert (tmp_path / "src" / "app.py").read_text() == "x = 1\nprint(x)\n"
    edit = await run(session, "edit", {"path": "src/app.py", "old_string": "x = 1", "new_string": "x = 10"})
    assert (edit.success, edit.result) == (True, {"replacements": 1}), edit.error
    again = await run(session, "edit", {"path": "src/app.py", "old_string": "x = 1", "new_string": "x = 10"})
    assert again.result == {"replacements": 0, "already_applied": True}
    read = await run(session, "read", {"path": "src/app.py", "offset": 2})
    assert read.result == {"content": "print(x)\n", "total_lines": 2, "start_line": 2, "end_line": 2,
                           "truncated": False}
    grep = await run(session, "grep", {"pattern": "x = \\d+", "glob": "*.py"})
    assert grep.result == {"matches": [{"path": "src/app.py", "line": 1, "text": "x = 10"}], "truncated": False}
    glob = await run(session, "glob", {"pattern": "**/*.py"})
    assert glob.result == {"paths": ["src/app.py"], "truncated": False}
    ls = await run(session, "ls", {"path": "src"})
    assert ls.result == {"entries": [{"name": "app.py", "kind": "file", "size": 16}]}
    escape = await run(session, "write", {"path": "../outside.txt", "content": "x"})
    assert (escape.success, escape.result) == (False, {"error_code": "PathEscapesWorkspace"})
    assert not (tmp_path.parent / "outside.txt").exists()
    unknown = await run(session, "teleport", {"to": "mars"})
    assert (unknown.success, unknown.result) == (False, {"error_code": "UnknownTool"})
    assert unknown.error is not None and "teleport" in unknown.error

    bash = await run(session, "bash", {"command": "echo hi > ran.txt; echo out; exit 3"})
    if allow_bash:
        assert not bash.success and bash.error == "command exited with code 3"
        assert bash.result == {"stdout": "out\n", "stderr": "", "exit_code": 3, "timed_out": False,
                               "truncated": False}
        assert (tmp_path / "ran.txt").exists()
    else:
        assert (bash.success, bash.result) == (False, {"error_code": "ToolFailed"})
        assert bash.error is not None and "bash is disabled" in bash.error
        assert not (tmp_path / "ran.txt").exists()


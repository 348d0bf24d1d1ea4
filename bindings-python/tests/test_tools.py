"""Built-in tools from Python workers: execute_builtin, session.tool and the core Worker."""

import asyncio
import os
import pathlib
import sys

import pytest

from a3s_code import (
    Agent,
    ExternalTask,
    InvalidConfigError,
    LaneHandlerConfig,
    SessionLane,
    ShutDownError,
    TaskHandlerMode,
    Worker,
    execute_builtin,
)

from conftest import SessionFactory


def task(command: str, payload: dict, timeout_ms: int = 10_000) -> ExternalTask:
    return ExternalTask("t-1", "s-1", SessionLane.QUERY, command, payload, timeout_ms)


async def test_execute_builtin_runs_a_tool_on_a_real_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("one\ntwo\nthree\n")
    out = await execute_builtin(task("read", {"path": "notes.txt", "offset": 2}), str(tmp_path))
    assert out.success and out.error is None
    assert out.result["content"] == "two\nthree\n"
    assert out.result["total_lines"] == 3
    grep = await execute_builtin(task("grep", {"pattern": "^t"}), tmp_path)
    assert [m["text"] for m in grep.result["matches"]] == ["two", "three"]
    bash = await execute_builtin(
        task("bash", {"command": "echo hi; exit 3"}), str(tmp_path), allow_bash=True
    )
    assert not bash.success and bash.result["exit_code"] == 3 and bash.result["stdout"] == "hi\n"


async def test_execute_builtin_runs_no_command_unless_bash_is_allowed(tmp_path: pathlib.Path) -> None:
    refused = await execute_builtin(task("bash", {"command": "touch ran"}), tmp_path)
    assert not refused.success and refused.result["error_code"] == "ToolFailed"
    assert "bash is disabled" in (refused.error or "")
    assert not (tmp_path / "ran").exists()


async def test_a_file_over_max_file_bytes_is_a_typed_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "big.txt").write_text("x" * (17 << 20))
    edit = await execute_builtin(
        task("edit", {"path": "big.txt", "old_string": "x", "new_string": "y"}), tmp_path
    )
    assert not edit.success and edit.result["error_code"] == "FileTooLarge"


async def test_execute_builtin_reports_tool_errors_without_raising(tmp_path: pathlib.Path) -> None:
    (tmp_path / "inside").mkdir()
    escape = await execute_builtin(task("read", {"path": "../outside.txt"}), str(tmp_path / "inside"))
    assert not escape.success
    assert escape.result["error_code"] == "PathEscapesWorkspace"
    assert escape.error is not None and "escapes the workspace" in escape.error
    absolute = await execute_builtin(task("read", {"path": "/etc/passwd"}), str(tmp_path))
    assert absolute.result["error_code"] == "PathEscapesWorkspace"
    missing = await execute_builtin(task("read", {"path": "missing.txt"}), str(tmp_path))
    assert (missing.success, missing.result["error_code"]) == (False, "ToolFailed")
    unknown = await execute_builtin(task("teleport", {}), str(tmp_path))
    assert unknown.result["error_code"] == "UnknownTool"
    bad = await execute_builtin(task("read", {"path": 5}), str(tmp_path))
    assert bad.result["error_code"] == "InvalidPayload"
    expired = task("ls", {}, timeout_ms=1)
    await asyncio.sleep(0.01)  # let the 1 ms deadline pass
    late = await execute_builtin(expired, str(tmp_path))
    assert late.result == {"error_code": "TaskTimedOut"}
    with pytest.raises(InvalidConfigError):
        await execute_builtin(task("ls", {}), str(tmp_path / "no-such-dir"))


async def test_a_python_worker_runs_builtin_tools_for_session_tool(make_session: SessionFactory, tmp_path: pathlib.Path) -> None:
    session = await make_session()
    (tmp_path / "hello.txt").write_text("hello\n")

    async def worker() -> None:
        while True:
            try:
                tasks = await session.pending_external_tasks(limit=16, wait_ms=500)
            except ShutDownError:
                return
            results = await asyncio.gather(*[execute_builtin(t, session.workspace) for t in tasks])
            await session.complete_external_tasks([(t.task_id, r) for t, r in zip(tasks, results)])

    running = asyncio.create_task(worker())
    read = await session.tool("read", {"path": "hello.txt"})
    assert read.success and read.result["content"] == "hello\n"
    escape = await session.tool("read", {"path": "../../etc/passwd"})
    assert not escape.success and escape.result["error_code"] == "PathEscapesWorkspace"
    ls = await session.tool("ls", {})
    assert "hello.txt" in [e["name"] for e in ls.result["entries"]]
    await session.close()
    await running


async def test_the_core_worker_serves_a_session(make_session: SessionFactory, tmp_path: pathlib.Path) -> None:
    session = await make_session()
    (tmp_path / "a.txt").write_text("A\n")
    worker = Worker(session, tmp_path, concurrency=4, poll_wait=0.2)
    results = await asyncio.gather(*[session.tool("read", {"path": "a.txt"}) for _ in range(10)])
    assert all(r.result["content"] == "A\n" for r in results)
    stats = await worker.shutdown()
    assert (stats.claimed, stats.succeeded, stats.failed, stats.busy) == (10, 10, 0, 0)
    with pytest.raises(ShutDownError):
        worker.stats()
    with pytest.raises(ShutDownError):
        await worker.shutdown()


async def test_internal_lanes_run_tools_in_process(agent: Agent, tmp_path: pathlib.Path) -> None:
    (tmp_path / "x.txt").write_text("x\n")
    session = agent.session(str(tmp_path))
    assert session.lane_handler(SessionLane.QUERY).mode == TaskHandlerMode.INTERNAL
    out = await session.tool("read", {"path": "x.txt"})
    assert out.success and out.result["content"] == "x\n"
    session.set_lane_handler(SessionLane.QUERY, LaneHandlerConfig(mode=TaskHandlerMode.INTERNAL, timeout_ms=1_000))
    await session.close()


def test_agent_config_errors(tmp_path: pathlib.Path) -> None:
    from a3s_code import ConfigFileError

    with pytest.raises(ConfigFileError) as missing:
        Agent.create(tmp_path / "nope.hcl")
    assert missing.value.code == "ConfigFile"
    bad = tmp_path / "bad.hcl"
    bad.write_text('queue {\n  lane_handlers {\n    fast = "external"\n  }\n}\n')
    with pytest.raises(ConfigFileError, match="bad.hcl"):
        Agent.create(str(bad))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_use_after_fork_raises_a_clear_error(agent: Agent, tmp_path: pathlib.Path) -> None:
    agent.session(tmp_path).set_lane_handler(SessionLane.QUERY, LaneHandlerConfig())  # runtime started
    pid = os.fork()
    if pid == 0:  # the child: a3s_code must refuse, not hang
        code = 3
        try:
            Agent.create(tmp_path / "agent.hcl")
        except RuntimeError as e:
            code = 0 if "fork" in str(e) else 2
        except BaseException:
            code = 4
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0

"""The public surface against tests/fixtures/v1/api.json and errors.json."""

import asyncio
import datetime
import inspect
import re
from typing import Any, Dict, List, Tuple

import pytest

import a3s_code
from a3s_code import (
    A3sError,
    ExternalTask,
    ExternalTaskResult,
    LaneHandlerConfig,
    RetryPolicy,
    RetryStrategy,
    SessionLane,
    SessionQueueConfig,
    TaskHandlerMode,
)

from conftest import SessionFactory, load_fixture

API = load_fixture("api.json")
ERRORS = load_fixture("errors.json")


def python_name(entry: Dict[str, Any]) -> str:
    # "pending_external_tasks(limit, wait)" names the method and its optional arguments.
    name: str = entry["python"]
    return re.sub(r"\(.*\)$", "", name)


def test_every_error_code_has_its_class() -> None:
    assert ERRORS["root"]["python"] == "A3sError"
    assert issubclass(A3sError, Exception)
    for entry in ERRORS["errors"]:
        cls = getattr(a3s_code, entry["python"])
        assert issubclass(cls, A3sError), entry
        assert cls.code == entry["code"], entry
        assert cls.__module__ == "a3s_code"
        err = cls(entry["sample_message"])
        assert str(err) == entry["sample_message"]
        assert err.code == entry["code"]
        # Older names are the same class object: `except ToolError` still catches.
        for alias in entry.get("python_aliases", []):
            assert getattr(a3s_code, alias) is cls, alias
    assert len({e["python"] for e in ERRORS["errors"]}) == len(ERRORS["errors"])
    aliases = {e["code"]: e.get("python_aliases") for e in ERRORS["errors"]}
    assert aliases["ToolFailed"] == ["ToolError"] and aliases["ModelFailed"] == ["ModelError"]
    assert a3s_code.ToolError is a3s_code.ToolFailedError
    assert a3s_code.ModelError is a3s_code.ModelFailedError


def test_remote_session_is_a_deprecated_name_of_worker_client() -> None:
    with pytest.warns(DeprecationWarning, match="WorkerClient"):
        old = a3s_code.RemoteSession
    assert old is a3s_code.WorkerClient
    with pytest.warns(DeprecationWarning):
        from a3s_code import RemoteSession
    assert RemoteSession is a3s_code.WorkerClient
    assert "RemoteSession" not in a3s_code.__all__ and "WorkerClient" in a3s_code.__all__
    with pytest.raises(AttributeError):
        getattr(a3s_code, "NoSuchThing")


def keywords(fn: Any) -> List[str]:
    """The names a callable accepts (from its native text signature), `self`/`cls` left out."""
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


def test_option_sets_accept_exactly_the_core_names() -> None:
    # api.json's `options` are the core's FIELDS: a field added in the core fails here until
    # the Python constructor takes it.
    options = API["options"]
    assert keywords(a3s_code.SessionQueueConfig) == options["SessionQueueConfig"]
    assert keywords(a3s_code.RetryPolicy) == options["RetryPolicy"]
    assert keywords(a3s_code.NatsConfig) == options["NatsConfig"]
    assert keywords(a3s_code.SessionOptions) == options["SessionOptions"]
    for cls in (a3s_code.AgentSession, a3s_code.WorkerClient):
        # `wait` (seconds) is the deprecated spelling of `wait_ms`.
        names = keywords(cls.pending_external_tasks)
        assert [n for n in names if n != "wait"] == options["ClaimOptions"], cls
    # Every option set is checked above.
    assert set(options) - {"note"} == {
        "SessionQueueConfig", "RetryPolicy", "NatsConfig", "ClaimOptions", "SessionOptions"}


async def test_claim_arguments(make_session: SessionFactory) -> None:
    session = await make_session()
    assert await session.pending_external_tasks() == []
    assert await session.pending_external_tasks(limit=1, wait_ms=0) == []
    handle = await session.submit(SessionLane.QUERY, "noop", {})
    with pytest.warns(DeprecationWarning, match="wait_ms"):
        got = await session.pending_external_tasks(limit=1, wait=0.01)
    assert [t.task_id for t in got] == [handle.task_id]
    with pytest.raises(a3s_code.InvalidConfigError, match="not both"):
        await session.pending_external_tasks(wait=1.0, wait_ms=1_000)
    with pytest.raises(ValueError, match="wait"), pytest.warns(DeprecationWarning):
        await session.pending_external_tasks(wait=-1.0)
    await session.close()
    with pytest.raises(a3s_code.ShutDownError):
        await session.pending_external_tasks(wait_ms=10)


async def test_api_names_and_async_flags(agent: a3s_code.Agent, tmp_path: Any) -> None:
    session = agent.session(tmp_path)  # every lane Internal: tool() and submit() run here
    watched = agent.session(tmp_path)  # for AdminClient (`session` is closed by then)
    task = ExternalTask("t1", session.id, SessionLane.QUERY, "ls", {}, 5_000)
    # The sync ones return plain values, not awaitables.
    assert a3s_code.Agent.create.__name__ == "create"
    assert isinstance(agent.session(".", None), a3s_code.AgentSession)
    assert session.set_lane_handler(SessionLane.EXECUTE, LaneHandlerConfig()) is None  # type: ignore[func-returns-value]
    assert isinstance(session.events(), a3s_code.EventStream)
    assert task.is_timed_out() is False
    assert 0 < task.remaining_ms() <= 5_000
    objects = {"Agent": agent, "AgentSession": session, "ExternalTask": task}
    calls: Dict[str, Tuple[Any, ...]] = {
        # (arguments) per Python name, for the async ones: each must return an awaitable.
        "broker_ready": (),  # no broker: returns at once
        "pending_external_tasks": (),
        "complete_external_task": ("nope", ExternalTaskResult(success=True)),
        "complete_external_tasks": ([],),
        "abandon_external_task": ("nope", "why"),
        "queue_stats": (),
        "queue_metrics": (),
        "dead_letters": (),
        "tasks": ("finished",),
        "tool": ("ls", {}),
        "submit": (SessionLane.EXECUTE, "ls", {}),
        "cancel": ("nope",),
        "retry_dead_letter": ("nope",),
        "delete_dead_letter": ("nope",),
        "pause_lane": (SessionLane.EXECUTE,),
        "resume_lane": (SessionLane.EXECUTE,),
        "send": ("hello",),  # no model configured: raises InvalidConfigError when awaited
        "close": (),
    }
    checked = 0
    for cls_name, entries in API["classes"].items():
        for entry in entries:
            name = python_name(entry)
            is_async = entry["async"]["python"]
            if cls_name == "functions":
                fn = getattr(a3s_code, name)
                assert is_async
                awaitable = fn(task, ".")
                assert inspect.iscoroutine(awaitable)
                assert isinstance(await awaitable, ExternalTaskResult)
                checked += 1
                continue
            cls = getattr(a3s_code, cls_name)
            assert hasattr(cls, name), f"{cls_name}.{name}"
            if cls_name == "WorkerClient":
                # Its instances need NATS (test_nats.py); connect itself is a coroutine.
                if name == "connect":
                    assert is_async
                    awaitable = cls.connect("nats://127.0.0.1:1", "abc123")
                    assert inspect.iscoroutine(awaitable)
                    with pytest.raises(a3s_code.BrokerUnavailableError):
                        await awaitable
                checked += 1
                continue
            if cls_name == "AdminClient":
                # In process (local) every call works without NATS; connect is a coroutine.
                admin = a3s_code.AdminClient.local()
                admin_calls: Dict[str, Tuple[Any, ...]] = {
                    "sessions": (),
                    "session": (watched.id,),
                    "tasks": (watched.id, "finished"),
                    "dead_letters": (watched.id,),
                    "act": (watched.id, {"action": "resume", "lane": "query"}),
                    "processes": (),
                    "fleet_demand": (),
                }
                if name == "local":
                    assert not is_async and isinstance(admin, a3s_code.AdminClient)
                elif name == "connect":
                    assert is_async
                    awaitable = cls.connect(a3s_code.NatsConfig("nats://127.0.0.1:1"))
                    assert inspect.iscoroutine(awaitable)
                    with pytest.raises(a3s_code.BrokerUnavailableError):
                        await awaitable
                elif name == "workers":
                    assert not is_async and admin.workers() == []
                else:
                    awaitable = getattr(admin, name)(*admin_calls[name])
                    assert inspect.iscoroutine(awaitable) and is_async, f"AdminClient.{name} must be async"
                    await awaitable
                checked += 1
                continue
            if name == "id":
                assert isinstance(session.id, str) and session.id
                checked += 1
                continue
            if not is_async:
                continue
            method = getattr(objects[cls_name], name)
            awaitable = method(*calls[name])
            assert inspect.iscoroutine(awaitable), f"{cls_name}.{name} must be async"
            try:
                await awaitable
            except A3sError:
                pass  # the unknown task ids above
            checked += 1
    assert checked >= 12


def test_fields_and_enums() -> None:
    task = ExternalTask("t1", "s1", SessionLane.QUERY, "read", {"path": "a"}, 1_000)
    for _rust, py, _node in API["fields"]["ExternalTask"]:
        assert hasattr(task, py)
    result = ExternalTaskResult(success=True, result={"a": 1}, error=None)
    for _rust, py, _node in API["fields"]["ExternalTaskResult"]:
        assert hasattr(result, py)
    for _rust, py, _node in API["fields"]["QueueStats"]:
        assert hasattr(a3s_code.QueueStats, py)
    for _rust, py, _node in API["fields"]["QueueMetrics"]:
        assert hasattr(a3s_code.QueueMetrics, py)
    for enum_name, spec in API["enums"].items():
        cls = getattr(a3s_code, enum_name)
        members = [getattr(cls, m) for m in spec["python"]]
        assert [int(m) for m in members] == list(range(len(members)))
        assert len(set(members)) == len(members)
        assert repr(members[0]) == f"{enum_name}.{spec['python'][0]}"


def test_config_defaults_come_from_the_core() -> None:
    cfg = SessionQueueConfig()
    assert (
        cfg.control_max_concurrency,
        cfg.query_max_concurrency,
        cfg.execute_max_concurrency,
        cfg.generate_max_concurrency,
    ) == (2, 4, 2, 1)
    assert (cfg.max_pending, cfg.dlq_max_size, cfg.default_timeout_ms) == (100_000, 1_000, 60_000)
    assert (cfg.enable_metrics, cfg.enable_dlq, cfg.enable_alerts) == (False, False, False)
    assert (cfg.queue_depth_alert_threshold, cfg.latency_alert_threshold_ms) == (1_000, 30_000)
    assert cfg.retry_policy == RetryPolicy()
    assert cfg.retry_policy.strategy == RetryStrategy.EXPONENTIAL  # lost attempts are retried by default
    assert cfg.lane_handlers == {}
    handler = LaneHandlerConfig()
    assert (handler.mode, handler.timeout_ms) == (TaskHandlerMode.INTERNAL, 60_000)

    cfg = SessionQueueConfig(
        query_max_concurrency=20,
        execute_max_concurrency=5,
        enable_metrics=True,
        enable_dlq=True,
        retry_policy=RetryPolicy(strategy=RetryStrategy.EXPONENTIAL, max_retries=2),
        lane_handlers={SessionLane.EXECUTE: LaneHandlerConfig(mode=TaskHandlerMode.HYBRID, timeout_ms=5)},
    )
    assert (cfg.query_max_concurrency, cfg.execute_max_concurrency, cfg.control_max_concurrency) == (20, 5, 2)
    assert cfg.retry_policy.max_attempts() == 3
    assert cfg.retry_policy.delay_before_retry(2) == datetime.timedelta(milliseconds=200)
    assert cfg.lane_handlers[SessionLane.EXECUTE].mode == TaskHandlerMode.HYBRID
    assert "query_max_concurrency=20" in repr(cfg)
    cfg.validate()
    with pytest.raises(a3s_code.InvalidConfigError, match="query_max_concurrency"):
        SessionQueueConfig(query_max_concurrency=0).validate()


def test_bad_argument_types_raise_type_or_value_errors() -> None:
    with pytest.raises(TypeError):
        SessionQueueConfig(query_max_concurrency="20")  # type: ignore[arg-type]
    with pytest.raises((TypeError, OverflowError)):
        SessionQueueConfig(query_max_concurrency=-1)
    with pytest.raises(TypeError):
        SessionQueueConfig(20)  # type: ignore[misc]
    with pytest.raises(TypeError):
        LaneHandlerConfig(mode="external")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lane_handlers"):
        SessionQueueConfig(lane_handlers={"query": LaneHandlerConfig()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        ExternalTask("t", "s", "query", "read", {}, 1)  # type: ignore[arg-type]


def test_json_conversion_keeps_keys_and_refuses_non_json() -> None:
    payload = {"camelCase": 1, "snake_case": [1, 2.5, "x", None, True, {"nested-Key": {}}], "t": (1, 2)}
    task = ExternalTask("t", "s", SessionLane.QUERY, "x", payload, 1_000)
    assert task.payload == {**payload, "t": [1, 2]}
    assert list(task.payload) == ["camelCase", "snake_case", "t"]
    assert ExternalTaskResult(success=True, result={"big": 2**63, "neg": -(2**63)}).result == {
        "big": 2**63,
        "neg": -(2**63),
    }
    assert ExternalTaskResult(success=True).result is None
    for bad in ({1, 2}, {"s": {1}}, {"o": object()}, {"b": b"bytes"}):
        with pytest.raises(TypeError, match="not JSON"):
            ExternalTaskResult(success=True, result=bad)
    with pytest.raises(TypeError, match="keys must be str"):
        ExternalTaskResult(success=True, result={1: "one"})
    with pytest.raises(ValueError, match="valid JSON number"):
        ExternalTaskResult(success=True, result={"x": float("nan")})
    with pytest.raises(ValueError, match="64 bits"):
        ExternalTaskResult(success=True, result=2**64)
    deep: Any = []
    for _ in range(1_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        ExternalTaskResult(success=True, result=deep)


def test_result_equality_and_repr() -> None:
    a = ExternalTaskResult(success=False, result={}, error="boom")
    assert a == ExternalTaskResult(False, {}, "boom")
    assert a != ExternalTaskResult(success=True, result={})
    assert repr(a) == 'ExternalTaskResult(success=False, result={}, error="boom")'
    assert a.error == "boom" and a.success is False and a.result == {}


def test_async_methods_return_coroutines_that_run_in_any_loop(agent: a3s_code.Agent, tmp_path: Any) -> None:
    session = agent.session(tmp_path)
    stats = session.queue_stats()  # outside any loop: the call starts the work
    assert inspect.iscoroutine(stats)
    assert asyncio.run(stats).pending_count == 0
    # A call still waiting (a long poll) too, and in a second loop: the runtime is process-wide.
    assert asyncio.run(session.pending_external_tasks(limit=1, wait_ms=10)) == []
    with pytest.raises(a3s_code.TaskNotFoundError):
        asyncio.run(session.cancel("nope"))
    asyncio.run(session.close())
    assert session.is_closed()


def test_version() -> None:
    assert re.match(r"^\d+\.\d+\.\d+", a3s_code.__version__)


async def test_coroutines_work_with_asyncio(make_session: SessionFactory) -> None:
    session = await make_session()
    ready = session.queue_stats()  # the outcome is known at once
    assert inspect.iscoroutine(ready) and (await ready).pending_count == 0
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        await ready
    pending = asyncio.create_task(session.pending_external_tasks(limit=1, wait_ms=5_000))
    await asyncio.sleep(0.01)
    assert not pending.done()
    handle = await asyncio.ensure_future(session.submit(SessionLane.QUERY, "noop", {}))
    assert [t.task_id for t in await pending] == [handle.task_id]
    stats, metrics = await asyncio.gather(session.queue_stats(), session.queue_metrics())
    assert stats.external_count == 1 and metrics is not None
    assert (await asyncio.wait_for(session.dead_letters(), 1)) == []
    with pytest.raises(a3s_code.TaskNotFoundError):
        await session.complete_external_task("nope", ExternalTaskResult(success=True))
    # Cancelling a waiting call drops it: a cancelled long poll claims nothing.
    poll = asyncio.create_task(session.pending_external_tasks(limit=1, wait_ms=30_000))
    await asyncio.sleep(0.01)
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    second = await session.submit(SessionLane.QUERY, "noop", {})
    assert [t.task_id for t in await session.pending_external_tasks(limit=1, wait_ms=5_000)] == [second.task_id]

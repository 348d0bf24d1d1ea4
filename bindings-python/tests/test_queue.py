"""Claim and completion semantics, timeouts, the DLQ, stats, metrics and events."""

import asyncio
import datetime
from typing import Any, Dict, List, Set

import pytest

from a3s_code import (
    A3sError,
    AgentSession,
    ExternalTask,
    ExternalTaskResult,
    LaneHandlerConfig,
    RetryPolicy,
    RetryStrategy,
    SessionLane,
    ShutDownError,
    TaskAlreadyCompletedError,
    TaskCancelledError,
    TaskHandlerMode,
    TaskNotFoundError,
    TaskTimedOutError,
    InvalidConfigError,
    InvalidPayloadError,
    QueueFullError,
    UnknownToolError,
)

from conftest import SessionFactory

OK = ExternalTaskResult(success=True, result={"ok": True}, error=None)


async def test_several_workers_never_get_a_task_twice(make_session: SessionFactory) -> None:
    session = await make_session(query_max_concurrency=64)
    seen: List[str] = []
    done = asyncio.Event()
    total = 300

    async def worker(batch: int) -> None:
        while not done.is_set():
            try:
                tasks = await session.pending_external_tasks(limit=batch, wait_ms=50)
            except ShutDownError:
                return
            seen.extend(t.task_id for t in tasks)
            outcomes = await session.complete_external_tasks(
                [(t.task_id, ExternalTaskResult(success=True, result={"i": t.payload["i"]})) for t in tasks]
            )
            assert outcomes == [None] * len(tasks)

    workers = [asyncio.create_task(worker(b)) for b in (1, 7, 32, 256)]
    handles = [await session.submit(SessionLane.QUERY, "noop", {"i": i}) for i in range(total)]
    results = [await h.result() for h in handles]
    done.set()
    await asyncio.gather(*workers)

    assert [r.result["i"] for r in results] == list(range(total))
    assert len(seen) == total and len(set(seen)) == total
    assert {h.task_id for h in handles} == set(seen)
    metrics = await session.queue_metrics()
    assert metrics is not None
    assert (metrics.total_processed, metrics.total_failed, metrics.success_rate) == (total, 0, 1.0)
    assert metrics.total_rejected_completions == 0


async def test_the_spec_poll_without_arguments_claims_everything(make_session: SessionFactory) -> None:
    session = await make_session(query_max_concurrency=8)
    assert await session.pending_external_tasks() == []
    handles = [await session.submit(SessionLane.QUERY, "read", {"path": f"f{i}"}) for i in range(12)]
    await asyncio.sleep(0)
    first = await session.pending_external_tasks()
    assert len(first) == 8  # the lane's concurrency: the rest wait for a slot
    assert await session.pending_external_tasks() == []
    t = first[0]
    assert (t.session_id, t.lane, t.command_type, t.attempt, t.timeout_ms) == (
        session.id, SessionLane.QUERY, "read", 1, 30_000)
    assert t.payload == {"path": "f0"} and t.task_id == handles[0].task_id
    assert not t.is_timed_out() and 29_000 < t.remaining_ms() <= 30_000
    assert t.created_at > 1_600_000_000_000  # epoch milliseconds
    stats = await session.queue_stats()
    assert (stats.pending_count, stats.active_count, stats.external_count) == (4, 8, 8)
    lane = stats.per_lane[SessionLane.QUERY]
    assert (lane.pending_count, lane.claimed_count, lane.max_concurrency, lane.mode) == (
        4, 8, 8, TaskHandlerMode.EXTERNAL)
    assert set(stats.per_lane) == {SessionLane.CONTROL, SessionLane.QUERY, SessionLane.EXECUTE, SessionLane.GENERATE}

    for task in first:
        await session.complete_external_task(task.task_id, OK)
    rest = await session.pending_external_tasks(limit=100, wait_ms=1_000)
    assert len(rest) == 4
    for task in rest:
        await session.complete_external_task(task.task_id, OK)
    assert all([(await h.result()).success for h in handles])
    stats = await session.queue_stats()
    assert (stats.pending_count, stats.active_count, stats.external_count) == (0, 0, 0)


async def test_limit_and_long_poll(make_session: SessionFactory) -> None:
    session = await make_session()
    for i in range(3):
        await session.submit(SessionLane.QUERY, "noop", {"i": i})
    got = await session.pending_external_tasks(limit=2)
    assert [t.payload["i"] for t in got] == [0, 1]
    # A long poll returns as soon as a task arrives.
    waiter = asyncio.ensure_future(session.pending_external_tasks(limit=5, wait_ms=10_000))
    rest = await waiter
    assert [t.payload["i"] for t in rest] == [2]
    waiter = asyncio.ensure_future(session.pending_external_tasks(limit=5, wait_ms=10_000))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    handle = await session.submit(SessionLane.QUERY, "noop", {"i": 3})
    tasks = await asyncio.wait_for(waiter, 5)
    assert [t.task_id for t in tasks] == [handle.task_id]
    with pytest.raises(OverflowError):
        await session.pending_external_tasks(wait_ms=-1)


async def test_a_cancelled_long_poll_claims_nothing(make_session: SessionFactory) -> None:
    session = await make_session()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(session.pending_external_tasks(limit=10, wait_ms=30_000), 0.05)
    handle = await session.submit(SessionLane.QUERY, "noop", {})
    tasks = await session.pending_external_tasks(limit=10, wait_ms=5_000)
    assert [t.task_id for t in tasks] == [handle.task_id]


async def test_completion_errors(make_session: SessionFactory) -> None:
    session = await make_session()
    with pytest.raises(TaskNotFoundError) as unknown:
        await session.complete_external_task("no-such-task", OK)
    assert unknown.value.code == "TaskNotFound" and "no-such-task" in str(unknown.value)

    handle = await session.submit(SessionLane.QUERY, "noop", {})
    [task] = await session.pending_external_tasks(limit=1, wait_ms=5_000)
    await session.complete_external_task(task.task_id, OK)
    with pytest.raises(TaskAlreadyCompletedError) as again:
        await session.complete_external_task(task.task_id, ExternalTaskResult(success=False))
    assert again.value.code == "TaskAlreadyCompleted"
    assert await handle.result() == OK
    assert await handle.result() == OK  # the outcome can be awaited again

    # A batch reports one outcome per result, in order, without raising.
    h2 = await session.submit(SessionLane.QUERY, "noop", {})
    [t2] = await session.pending_external_tasks(limit=1, wait_ms=5_000)
    outcomes = await session.complete_external_tasks(
        [(t2.task_id, OK), (task.task_id, OK), ("nope", OK), (t2.task_id, OK)]
    )
    assert outcomes[0] is None
    assert [type(o) for o in outcomes[1:]] == [TaskAlreadyCompletedError, TaskNotFoundError, TaskAlreadyCompletedError]
    assert all(isinstance(o, A3sError) for o in outcomes[1:])
    assert (await h2.result()).success
    metrics = await session.queue_metrics()
    assert metrics is not None and metrics.total_rejected_completions == 3  # unknown ids are not counted

    # Malformed batches are refused whole, before anything is completed.
    for bad in ([("id",)], [("id", {"success": True})], [(1, OK)], ["id"], 5):
        with pytest.raises(TypeError):
            await session.complete_external_tasks(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await session.complete_external_task("id", {"success": True})  # type: ignore[arg-type]


async def test_a_late_completion_raises_and_the_task_is_dead_lettered(make_session: SessionFactory) -> None:
    session = await make_session(timeout_ms=200, enable_dlq=True)
    handle = await session.submit(SessionLane.QUERY, "read", {"path": "slow.txt"})
    [task] = await session.pending_external_tasks(limit=1, wait_ms=5_000)
    assert task.timeout_ms == 200
    with pytest.raises(TaskTimedOutError) as raised:
        await handle.result()  # the deadline passes: the submitter learns first
    assert raised.value.code == "TaskTimedOut" and "200 ms" in str(raised.value)
    assert task.is_timed_out() and task.remaining_ms() == 0
    with pytest.raises(TaskTimedOutError):
        await session.complete_external_task(task.task_id, OK)

    [letter] = await session.dead_letters()
    assert (letter.task_id, letter.lane, letter.command_type, letter.payload) == (
        task.task_id, SessionLane.QUERY, "read", {"path": "slow.txt"})
    assert (letter.error_code, letter.attempts) == ("TaskTimedOut", 1)
    assert "timed out" in letter.error and letter.dead_lettered_at > 0
    metrics = await session.queue_metrics()
    assert metrics is not None
    assert (metrics.total_processed, metrics.total_timed_out, metrics.total_dead_lettered, metrics.dlq_depth) == (1, 1, 1, 1)
    assert metrics.success_rate == 0.0
    assert metrics.per_lane[SessionLane.QUERY].total_timed_out == 1


async def test_abandon_and_retry(make_session: SessionFactory) -> None:
    session = await make_session(
        enable_dlq=True,
        retry_policy=RetryPolicy(strategy=RetryStrategy.FIXED, max_retries=1, initial_delay_ms=1),
    )
    handle = await session.submit(SessionLane.QUERY, "noop", {"x": 1})
    [first] = await session.pending_external_tasks(limit=1, wait_ms=5_000)
    await session.abandon_external_task(first.task_id, "worker going away")
    [second] = await session.pending_external_tasks(limit=1, wait_ms=5_000)
    assert (second.task_id, second.attempt) == (first.task_id, 2)
    await session.abandon_external_task(second.task_id, "again")
    with pytest.raises(A3sError) as raised:
        await handle.result()
    assert raised.value.code == "RetriesExhausted"
    [letter] = await session.dead_letters()
    assert (letter.error_code, letter.attempts) == ("RetriesExhausted", 2)
    metrics = await session.queue_metrics()
    assert metrics is not None and (metrics.total_retried, metrics.total_failed) == (1, 1)


async def test_failed_results_stats_and_latency(make_session: SessionFactory) -> None:
    session = await make_session(query_max_concurrency=10)
    handles = [await session.submit(SessionLane.QUERY, "noop", {"i": i}) for i in range(10)]
    tasks = await session.pending_external_tasks()
    await asyncio.sleep(0.02)  # some latency to measure
    await session.complete_external_tasks(
        [(t.task_id, ExternalTaskResult(success=t.payload["i"] < 7, result={}, error=None)) for t in tasks]
    )
    outcomes = [await h.result() for h in handles]
    assert [o.success for o in outcomes] == [True] * 7 + [False] * 3
    m = await session.queue_metrics()
    assert m is not None
    assert (m.total_processed, m.total_failed, m.total_timed_out) == (10, 3, 0)
    assert m.success_rate == pytest.approx(0.7)
    for latency in (m.avg_latency, m.p50_latency, m.p95_latency, m.p99_latency):
        assert isinstance(latency, datetime.timedelta)
        assert datetime.timedelta(milliseconds=15) < latency < datetime.timedelta(seconds=5)
    assert m.p50_latency <= m.p95_latency <= m.p99_latency
    query = m.per_lane[SessionLane.QUERY]
    assert (query.total_processed, query.total_failed) == (10, 3)
    assert m.per_lane[SessionLane.EXECUTE].total_processed == 0
    assert "QueueMetrics(total_processed=10" in repr(m)


async def test_metrics_are_none_unless_enabled(make_session: SessionFactory) -> None:
    session = await make_session(enable_metrics=False)
    assert await session.queue_metrics() is None
    assert await session.dead_letters() == []


async def test_cancel_submit_errors_and_close(make_session: SessionFactory) -> None:
    session = await make_session(max_pending=2, query_max_concurrency=1)
    running = await session.submit(SessionLane.QUERY, "noop", {})
    queued = await session.submit(SessionLane.QUERY, "noop", {})
    await session.submit(SessionLane.QUERY, "noop", {})
    with pytest.raises(QueueFullError):
        await session.submit(SessionLane.QUERY, "noop", {})
    await queued.cancel()
    with pytest.raises(TaskCancelledError):
        await queued.result()
    await session.cancel(running.task_id)
    with pytest.raises(TaskCancelledError):
        await running.result()
    with pytest.raises(TaskNotFoundError):
        await session.cancel("nope")
    with pytest.raises(InvalidPayloadError):
        await session.submit(SessionLane.QUERY, "noop", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(UnknownToolError):
        await session.tool("teleport", {})
    with pytest.raises(InvalidConfigError):
        session.set_lane_handler(SessionLane.QUERY, LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=0))

    claimed = await session.submit(SessionLane.QUERY, "noop", {})
    assert len(await session.pending_external_tasks(limit=1, wait_ms=5_000)) == 1
    pending = await session.submit(SessionLane.QUERY, "noop", {})  # waits for the lane's one slot
    poller = asyncio.ensure_future(session.pending_external_tasks(limit=1, wait_ms=30_000))
    await asyncio.sleep(0.01)
    assert not poller.done()
    await session.close()
    assert session.is_closed()
    for handle in (claimed, pending):
        with pytest.raises(ShutDownError):
            await handle.result()
    with pytest.raises(ShutDownError):
        await poller
    assert await session.pending_external_tasks() == []
    with pytest.raises(ShutDownError):
        await session.submit(SessionLane.QUERY, "noop", {})
    with pytest.raises(ShutDownError):
        session.set_lane_handler(SessionLane.QUERY, LaneHandlerConfig())
    await session.close()  # idempotent


async def test_events(make_session: SessionFactory) -> None:
    session = await make_session()
    events = session.events()
    handle = await session.submit(SessionLane.QUERY, "noop", {"k": "v"})
    [task] = await session.pending_external_tasks(limit=1, wait_ms=5_000)
    await session.complete_external_task(task.task_id, ExternalTaskResult(success=True, result={}))
    await handle.result()

    async def until_completed() -> List[Dict[str, Any]]:
        seen = []
        async for event in events:
            seen.append(event)
            if event["type"] == "completed":
                return seen
        return seen

    seen = await asyncio.wait_for(until_completed(), 5)
    assert [e["type"] for e in seen] == ["submitted", "started", "completed"]
    assert all(e["task_id"] == handle.task_id for e in seen)
    assert seen[0] == {"type": "submitted", "task_id": handle.task_id, "lane": "query", "command_type": "noop"}
    assert seen[1]["mode"] == "external" and seen[1]["attempt"] == 1
    assert isinstance(seen[2]["latency_ms"], int)

    # The iterator ends when the session closes.
    await session.close()
    rest = [e async for e in events]
    assert all(isinstance(e, dict) for e in rest)


async def test_hybrid_lane_runs_builtin_tools_internally(make_session: SessionFactory, tmp_path: Any) -> None:
    session = await make_session()
    (tmp_path / "a.txt").write_text("alpha\n")
    session.set_lane_handler(SessionLane.EXECUTE, LaneHandlerConfig(mode=TaskHandlerMode.HYBRID, timeout_ms=5_000))
    assert session.lane_handler(SessionLane.EXECUTE) == LaneHandlerConfig(mode=TaskHandlerMode.HYBRID, timeout_ms=5_000)
    events = session.events()
    out = await session.tool("write", {"path": "b.txt", "content": "beta\n"})
    assert out.success and out.result["bytes_written"] == 5
    assert (tmp_path / "b.txt").read_text() == "beta\n"
    kinds: Set[str] = set()
    while "completed" not in kinds:
        kinds.add((await asyncio.wait_for(events.__anext__(), 5))["type"])
    assert {"submitted", "started", "completed"} <= kinds


async def test_many_sessions_and_concurrent_tools(make_session: SessionFactory) -> None:
    sessions: List[AgentSession] = [await make_session() for _ in range(3)]
    assert len({s.id for s in sessions}) == 3

    async def serve(s: AgentSession) -> None:
        while True:
            try:
                tasks = await s.pending_external_tasks(limit=64, wait_ms=500)
            except ShutDownError:
                return
            await s.complete_external_tasks(
                [(t.task_id, ExternalTaskResult(success=True, result={"sid": t.session_id})) for t in tasks]
            )

    servers = [asyncio.create_task(serve(s)) for s in sessions]
    results = await asyncio.gather(*[s.tool("read", {"path": "x"}) for s in sessions for _ in range(20)])
    assert [r.result["sid"] for r in results] == [s.id for s in sessions for _ in range(20)]
    for s in sessions:
        await s.close()
    await asyncio.gather(*servers)


def test_external_task_is_built_locally() -> None:
    task = ExternalTask("local-1", "s", SessionLane.EXECUTE, "bash", {"command": "true"}, 10_000)
    assert (task.task_id, task.lane, task.attempt) == ("local-1", SessionLane.EXECUTE, 1)
    assert "ExternalTask(task_id=\"local-1\"" in repr(task)


async def test_workers_in_other_threads_and_loops(make_session: SessionFactory) -> None:
    """Workers in other threads, each with its own event loop, long-poll the same session: a
    waiting call holds neither the GIL nor any loop, so everyone makes progress."""
    import threading

    session = await make_session(query_max_concurrency=32)
    claimed: List[str] = []
    lock = threading.Lock()

    async def worker() -> None:
        while True:
            try:
                tasks = await session.pending_external_tasks(limit=8, wait_ms=200)
            except ShutDownError:
                return
            with lock:
                claimed.extend(t.task_id for t in tasks)
            await session.complete_external_tasks([(t.task_id, OK) for t in tasks])

    threads = [threading.Thread(target=asyncio.run, args=(worker(),)) for _ in range(3)]
    for t in threads:
        t.start()
    handles = [await session.submit(SessionLane.QUERY, "noop", {"i": i}) for i in range(200)]
    results = await asyncio.gather(*[h.result() for h in handles])
    assert all(r == OK for r in results)
    await session.close()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert sorted(claimed) == sorted(h.task_id for h in handles)


async def test_a_paused_lane_hands_out_nothing_until_resumed(make_session: SessionFactory) -> None:
    session = await make_session(query_max_concurrency=2)
    await session.pause_lane(SessionLane.QUERY)
    await session.pause_lane(SessionLane.QUERY)  # idempotent
    handle = await session.submit(SessionLane.QUERY, "read", {"path": "f"})
    assert await session.pending_external_tasks(limit=8, wait_ms=100) == []
    lane = (await session.queue_stats()).per_lane[SessionLane.QUERY]
    assert lane.paused and lane.pending_count == 1
    await session.resume_lane(SessionLane.QUERY)
    [task] = await session.pending_external_tasks(limit=8, wait_ms=1_000)
    await session.complete_external_task(task.task_id, OK)
    assert (await handle.result()).success
    assert not (await session.queue_stats()).per_lane[SessionLane.QUERY].paused
    with pytest.raises(InvalidConfigError, match="Control"):
        await session.pause_lane(SessionLane.CONTROL)



async def test_a_dead_letter_is_retried_as_a_new_task_or_deleted(make_session: SessionFactory) -> None:
    session = await make_session(timeout_ms=100, enable_dlq=True)
    ids = []
    for path in ("a", "b"):
        handle = await session.submit(SessionLane.QUERY, "read", {"path": path})
        with pytest.raises(TaskTimedOutError):
            await handle.result()
        ids.append(handle.task_id)
    retry = await session.retry_dead_letter(ids[0])
    assert retry.task_id != ids[0]
    assert [letter.task_id for letter in await session.dead_letters()] == [ids[1]]
    [task] = await session.pending_external_tasks(limit=1, wait_ms=1_000)
    assert (task.task_id, task.payload) == (retry.task_id, {"path": "a"})
    await session.complete_external_task(task.task_id, OK)
    assert (await retry.result()).success
    finished = await session.tasks("finished")
    assert finished["tasks"][0]["task_id"] == retry.task_id
    assert finished["tasks"][0]["retry_of"] == ids[0]
    assert finished["tasks"][0]["outcome"] == "completed"
    assert [t["outcome"] for t in finished["tasks"][1:]] == ["timed_out", "timed_out"]
    page = await session.tasks("finished", limit=1)
    assert len(page["tasks"]) == 1
    rest = await session.tasks("finished", cursor=page["next"], limit=50)
    assert [t["task_id"] for t in rest["tasks"]] == [ids[1], ids[0]] and "next" not in rest
    assert (await session.tasks("pending"))["tasks"] == []
    with pytest.raises(InvalidConfigError):
        await session.tasks("running")  # type: ignore[arg-type]
    await session.delete_dead_letter(ids[1])
    assert await session.dead_letters() == []
    with pytest.raises(TaskNotFoundError):
        await session.delete_dead_letter(ids[1])
    with pytest.raises(TaskNotFoundError):
        await session.retry_dead_letter("nope")

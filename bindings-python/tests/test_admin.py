"""The admin API from Python: AdminClient.local() over this process's sessions, and
AdminClient.connect(...) over a NATS deployment (the session and the client in one process here,
as they would be in two)."""

import asyncio
import pathlib
import uuid
from typing import Any, Dict, List

import pytest

from a3s_code import (
    AdminClient,
    ExternalTask,
    ExternalTaskResult,
    Agent,
    InvalidConfigError,
    InvalidPayloadError,
    LaneHandlerConfig,
    NatsConfig,
    SessionLane,
    SessionNotFoundError,
    SessionOptions,
    SessionQueueConfig,
    TaskHandlerMode,
    TaskNotFoundError,
    WorkerClient,
)

from test_nats import nats_url  # noqa: F401  (the fixture: $A3S_TEST_NATS_URL or a nats-server of its own)

EXTERNAL = SessionQueueConfig(
    enable_dlq=True,
    enable_metrics=True,
    lane_handlers={SessionLane.QUERY: LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=30_000)},
)

async def test_local_sessions_tasks_and_actions(agent: Agent, tmp_path: pathlib.Path) -> None:
    session = agent.session(tmp_path, SessionOptions(queue_config=EXTERNAL))
    admin = AdminClient.local()
    page = await admin.sessions(limit=1000)
    assert session.id in [s["session_id"] for s in page["sessions"]]
    await admin.act(session.id, {"action": "pause", "lane": "query"}, actor="pytest")
    view = await admin.session(session.id)
    assert [lane["paused"] for lane in view["lanes"] if lane["lane"] == "query"] == [True]
    handle = await session.submit(SessionLane.QUERY, "read", {"path": "a"})
    pending = await admin.tasks(session.id, "pending")
    assert [t["task_id"] for t in pending["tasks"]] == [handle.task_id]
    assert pending["tasks"][0]["payload"] == {"path": "a"}
    await admin.act(session.id, {"action": "cancel", "task_id": handle.task_id})
    finished = await admin.tasks(session.id, "finished")
    assert finished["tasks"][0]["outcome"] == "cancelled"
    with pytest.raises(InvalidConfigError):
        await admin.act(session.id, {"action": "pause", "lane": "control"})
    with pytest.raises(InvalidPayloadError):
        await admin.act(session.id, {"action": "explode"})
    with pytest.raises(TaskNotFoundError):
        await admin.act(session.id, {"action": "retry_dead_letter", "task_id": "nope"})
    with pytest.raises(InvalidConfigError):
        await admin.tasks(session.id, "running")  # type: ignore[arg-type]
    assert (await admin.dead_letters(session.id))["source"] == "session"
    assert await admin.processes() == [] and admin.workers() == []
    await session.close()
    with pytest.raises(SessionNotFoundError):
        await admin.session(session.id)

async def test_over_nats(agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:  # noqa: F811
    prefix = "pa" + uuid.uuid4().hex[:10]
    config = NatsConfig(nats_url, prefix=prefix)
    session = agent.session(tmp_path, SessionOptions(queue_config=EXTERNAL, nats=config))
    await session.broker_ready(10.0)
    admin = await AdminClient.connect(config)
    processes = await admin.processes()
    assert [(p["tenant"], p["sessions"]) for p in processes] == [("default", 1)]
    page = await admin.sessions()
    assert [s["session_id"] for s in page["sessions"]] == [session.id]
    await admin.act(session.id, {"action": "pause", "lane": "query"}, actor="pytest")
    handles = [await session.submit(SessionLane.QUERY, "read", {"path": str(i)}) for i in range(2)]
    demand = await admin.fleet_demand()
    assert {"tenant": "default", "lane": "query", "labels": "", "slots": 2} in demand
    await admin.act(session.id, {"action": "resume", "lane": "query"})
    worker = await WorkerClient.connect(nats_url, session.id, config=config, worker_id="py-admin")
    tasks: List[ExternalTask] = []
    while len(tasks) < 2:
        tasks += await worker.pending_external_tasks(limit=2 - len(tasks), wait_ms=10_000)
    held: Dict[str, Any] = {}
    for _ in range(100):  # the taken notice is on its way
        held = {t["task_id"]: t.get("worker_id") for t in (await admin.tasks(session.id, "in_flight"))["tasks"]}
        if all(held.get(t.task_id) == "py-admin" for t in tasks):
            break
        await asyncio.sleep(0.05)
    assert all(held.get(t.task_id) == "py-admin" for t in tasks), held
    for t in tasks:
        await worker.complete_external_task(t.task_id, ExternalTaskResult(success=True, result={"content": ""}))
    for h in handles:
        await h.result()
    await worker.close()
    await session.close()
    with pytest.raises(SessionNotFoundError):
        await admin.session(session.id)

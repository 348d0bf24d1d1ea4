"""Wire protocol versions meet: the foreign worker of today (examples/foreign-worker, protocol v2)
waits for sessions and streams that are not there yet, and the frozen protocol v1 worker
(tests/fixtures/v1/foreign-worker-v1.py) neither hangs on nor takes v2 work."""

import asyncio
import json
import pathlib
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

import nats
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

from test_nats import nats_url  # noqa: F401  (the fixture: $A3S_TEST_NATS_URL or a nats-server of its own)

from a3s_code import (
    Agent,
    AgentSession,
    LaneHandlerConfig,
    NatsConfig,
    SessionLane,
    SessionOptions,
    SessionQueueConfig,
    TaskHandlerMode,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER_V2 = REPO / "examples" / "foreign-worker" / "worker.py"
WORKER_V1 = REPO / "tests" / "fixtures" / "v1" / "foreign-worker-v1.py"
TASK_V2 = REPO / "tests" / "fixtures" / "v2" / "wire" / "task_envelope.json"


async def nats_session(agent: Agent, workspace: pathlib.Path, url: str, prefix: str,
                       session_id: Optional[str] = None) -> AgentSession:
    cfg = SessionQueueConfig(
        enable_metrics=True,
        lane_handlers={SessionLane.QUERY: LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=30_000)},
    )
    session = agent.session(workspace, SessionOptions(queue_config=cfg, session_id=session_id,
                                                      nats=NatsConfig(url, prefix=prefix)))
    await session.broker_ready(10.0)
    return session


def spawn(script: pathlib.Path, nats_url: str, prefix: str, session_id: str, workspace: pathlib.Path,
          *extra: str) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [sys.executable, str(script), "--nats", nats_url, "--prefix", prefix, "--session-id", session_id,
         "--workspace", str(workspace), *extra],
        stderr=subprocess.PIPE,
    )


def stop(worker: "subprocess.Popen[bytes]") -> str:
    if worker.poll() is None:
        worker.terminate()
    _, err = worker.communicate(timeout=15)
    return err.decode()


async def test_a_pool_worker_waits_for_the_tenant_stream_then_serves_it(
        agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    (tmp_path / "hello.txt").write_text("hello\n")
    prefix = "py" + uuid.uuid4().hex[:10]
    # Started before any session of the tenant: no stream, no consumer yet. It must wait.
    worker = spawn(WORKER_V2, nats_url, prefix, "*", tmp_path, "--tenant", "default", "--worker-id", "pool-1")
    session = None
    try:
        nc = await nats.connect(nats_url)
        presence: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()

        async def on_presence(msg: Any) -> None:
            await presence.put(json.loads(msg.data))

        await nc.subscribe(f"{prefix}.presence.default.pool-1", cb=on_presence)
        first = await asyncio.wait_for(presence.get(), 15)
        assert first["state"] == "waiting", first
        assert worker.poll() is None, "the pool worker exited while the stream did not exist"
        session = await nats_session(agent, tmp_path, nats_url, prefix)
        reads = await asyncio.wait_for(
            asyncio.gather(*(session.tool("read", {"path": "hello.txt"}) for _ in range(5))), 30)
        assert all(r.success and r.result["content"] == "hello\n" for r in reads)
        # It announces itself, serving the tenant's pool.
        deadline = time.monotonic() + 12
        while True:
            seen = await asyncio.wait_for(presence.get(), max(deadline - time.monotonic(), 0.01))
            assert seen["v"] == 2 and seen["worker_id"] == "pool-1" and seen["lanes"] == ["query"]
            if seen["state"] == "serving":
                assert seen["tenant"] == "default" and "session" not in seen and seen["interval_s"] == 5
                break
        # An envelope whose tenant is not its subject's is refused with a reason, the worker goes on.
        js = nc.jetstream()
        forged = json.loads(TASK_V2.read_text())
        forged.update(session_id=session.id, tenant="acme")
        await js.publish(f"{prefix}.task.default.query._", json.dumps(forged).encode())
        await nc.close()
        after = await asyncio.wait_for(session.tool("read", {"path": "hello.txt"}), 30)
        assert after.success
    finally:
        err = stop(worker)
        if session is not None:
            await session.close()
    assert "waiting for stream" in err and "does not match subject" in err, err


async def test_a_session_worker_attaches_once_the_session_opens(
        agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    (tmp_path / "hello.txt").write_text("hello\n")
    prefix = "py" + uuid.uuid4().hex[:10]
    session_id = str(uuid.uuid4())
    worker = spawn(WORKER_V2, nats_url, prefix, session_id, tmp_path)
    session = None
    try:
        # The session is not open: nobody answers the attach request; the worker says it waits.
        nc = await nats.connect(nats_url)
        sub = await nc.subscribe(f"{prefix}.presence.>")
        first = json.loads((await sub.next_msg(timeout=15)).data)
        await nc.close()
        assert first["state"] == "waiting", first
        assert worker.poll() is None, "the session's worker exited while the session was not open"
        session = await nats_session(agent, tmp_path, nats_url, prefix, session_id=session_id)
        read = await asyncio.wait_for(session.tool("read", {"path": "hello.txt"}), 30)
        assert read.success and read.result["content"] == "hello\n"
    finally:
        err = stop(worker)
        if session is not None:
            await session.close()
    assert err.count("waiting for session") == 1 and "attached to session" in err, err


async def test_the_v1_worker_fails_loudly_on_a_v2_session_and_leaves_its_task(
        agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    (tmp_path / "hello.txt").write_text("hello\n")
    prefix = "py" + uuid.uuid4().hex[:10]
    session = await nats_session(agent, tmp_path, nats_url, prefix)
    workers: List["subprocess.Popen[bytes]"] = []
    try:
        pending = asyncio.get_running_loop().create_task(session.tool("read", {"path": "hello.txt"}))
        # Published: it waits in the tenant's pool.
        nc = await nats.connect(nats_url)
        deadline = time.monotonic() + 10
        while (await nc.jetstream().stream_info(f"{prefix.upper()}_TASKS_default")).state.messages < 1:
            assert time.monotonic() < deadline, "the task was never published"
            await asyncio.sleep(0.05)
        await nc.close()
        v1 = spawn(WORKER_V1, nats_url, prefix, session.id, tmp_path)
        workers.append(v1)
        try:
            code = await asyncio.wait_for(asyncio.to_thread(v1.wait), 20)
        except asyncio.TimeoutError:
            raise AssertionError(f"the v1 worker hung on a v2 session: {stop(v1)}")
        err = stop(v1)
        assert code != 0 and "stream not found" in err, err  # it looks for the v1 stream <SP>_TASKS
        assert not pending.done(), "the v1 worker took a v2 task"
        # The task is still there for a v2 worker.
        workers.append(spawn(WORKER_V2, nats_url, prefix, session.id, tmp_path))
        read = await asyncio.wait_for(pending, 30)
        assert read.success and read.result["content"] == "hello\n"
    finally:
        for w in workers:
            stop(w)
        await session.close()


async def test_the_v1_worker_refuses_a_v2_task_envelope(tmp_path: pathlib.Path, nats_url: str) -> None:
    """Where a v1 worker reads (a v1-shaped stream, subject and consumer, made here), a v2 envelope
    is refused with a logged reason and terminated, never run nor redelivered."""
    prefix = "py" + uuid.uuid4().hex[:10]
    sp = prefix.upper()
    session_id = str(uuid.uuid4())
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=f"{sp}_TASKS", subjects=[f"{prefix}.task.>"],
                                     retention=RetentionPolicy.WORK_QUEUE))
    durable = f"t_{session_id}_query__"
    await js.add_consumer(f"{sp}_TASKS", ConsumerConfig(
        durable_name=durable, filter_subject=f"{prefix}.task.{session_id}.query._", ack_wait=2.0, max_deliver=4))
    v1 = spawn(WORKER_V1, nats_url, prefix, session_id, tmp_path)
    try:
        envelope = json.loads(TASK_V2.read_text())
        envelope.update(session_id=session_id, tenant="default", command_type="upper", payload={"text": "x"})
        await js.publish(f"{prefix}.task.{session_id}.query._", json.dumps(envelope).encode())
        deadline = time.monotonic() + 20
        while True:
            info = await js.consumer_info(f"{sp}_TASKS", durable)
            if info.delivered.consumer_seq >= 1 and info.num_ack_pending == 0 and info.num_pending == 0:
                break
            assert time.monotonic() < deadline, f"the v1 worker did not settle the v2 task: {info}"
            await asyncio.sleep(0.1)
        # Settled (nothing pending, nothing awaiting its ack) after one delivery: terminated, so
        # it cannot come back.
        assert info.delivered.consumer_seq == 1 and info.num_redelivered == 0, info
        assert v1.poll() is None, "the v1 worker died on a v2 envelope"
    finally:
        err = stop(v1)
        await js.delete_stream(f"{sp}_TASKS")
        await nc.close()
    assert "unsupported protocol version 2" in err, err

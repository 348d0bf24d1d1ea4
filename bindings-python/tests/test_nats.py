"""Over NATS JetStream: a session in this process, workers elsewhere. The foreign worker
(examples/foreign-worker, plain nats-py, written from docs/protocol.md) and the binding's own
WorkerClient both serve it."""

import asyncio
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Iterator

import nats
import pytest

from a3s_code import (
    Agent,
    AgentSession,
    ExternalTaskResult,
    InvalidConfigError,
    LaneHandlerConfig,
    NatsConfig,
    PayloadTooLargeError,
    SessionLane,
    SessionOptions,
    SessionQueueConfig,
    TaskHandlerMode,
    WorkerClient,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
FOREIGN_WORKER = REPO / "examples" / "foreign-worker" / "worker.py"


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    """$A3S_TEST_NATS_URL, else a nats-server -js of our own on a free port."""
    url = os.environ.get("A3S_TEST_NATS_URL")
    if url:
        yield url
        return
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tempfile.mkdtemp()
    conf = os.path.join(store, "server.conf")
    with open(conf, "w") as f:  # stream reservations of many test prefixes must fit
        f.write("jetstream {\n  max_file_store: 1TB\n}\n")
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", os.path.join(store, "js"),
                             "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    proc.kill()
    proc.wait()
    shutil.rmtree(store, ignore_errors=True)


async def nats_session(agent: Agent, workspace: pathlib.Path, url: str, prefix: str) -> AgentSession:
    cfg = SessionQueueConfig(
        enable_metrics=True,
        lane_handlers={SessionLane.QUERY: LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=30_000)},
    )
    session = agent.session(workspace, SessionOptions(queue_config=cfg, nats=NatsConfig(url, prefix=prefix)))
    await session.broker_ready(10.0)
    return session


def foreign_worker(nats_url: str, prefix: str, session: AgentSession, workspace: pathlib.Path) -> "subprocess.Popen[bytes]":
    """The foreign worker (examples/foreign-worker) serving `session`, its stderr captured."""
    return subprocess.Popen(
        [sys.executable, str(FOREIGN_WORKER), "--nats", nats_url, "--prefix", prefix,
         "--session-id", session.id, "--workspace", str(workspace)],
        stderr=subprocess.PIPE,
    )


async def test_the_foreign_worker_serves_a_session(agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    (tmp_path / "hello.txt").write_text("hello from a foreign worker\n")
    prefix = "py" + uuid.uuid4().hex[:10]
    session = await nats_session(agent, tmp_path, nats_url, prefix)
    worker = foreign_worker(nats_url, prefix, session, tmp_path)
    try:
        reads = await asyncio.wait_for(
            asyncio.gather(*(session.tool("read", {"path": "hello.txt"}) for _ in range(20))), 30)
        assert all(r.success and r.result["content"] == "hello from a foreign worker\n" for r in reads)
        # A custom command, and a tool error reported as a result.
        handle = await session.submit(SessionLane.QUERY, "upper", {"text": "abc"})
        assert (await asyncio.wait_for(handle.result(), 30)).result == {"text": "ABC"}
        escape = await asyncio.wait_for(session.tool("read", {"path": "../../etc/passwd"}), 30)
        assert not escape.success and escape.result["error_code"] == "PathEscapesWorkspace"
        # Garbage on a task subject is dropped with a logged reason; the worker goes on.
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        # v2: the worker attached to the session, so its query tasks wait in the session's own
        # consumer, on `<P>.task.<tenant>.<lane>.<route>.<session>`.
        subject = f"{prefix}.task.default.query._.{session.id}"
        await js.publish(subject, b"not json")
        await js.publish(subject, json.dumps({"v": 9}).encode())
        await nc.close()
        after = await asyncio.wait_for(session.tool("read", {"path": "hello.txt"}), 30)
        assert after.success
        metrics = await session.queue_metrics()
        assert metrics is not None and metrics.total_processed == 23
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=10)
        await session.close()
    assert b"malformed" in err and b"unsupported protocol version 9" in err, err.decode()


async def test_the_foreign_worker_moves_large_payloads_and_results_by_reference(
        agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    big = "x" * (2 << 20) + "\n"  # over the server's 1 MiB max_payload
    (tmp_path / "big.txt").write_text(big)
    prefix = "py" + uuid.uuid4().hex[:10]
    session = await nats_session(agent, tmp_path, nats_url, prefix)
    worker = foreign_worker(nats_url, prefix, session, tmp_path)
    try:
        # A large result (the file's content) comes back through the object store...
        read = await asyncio.wait_for(session.tool("read", {"path": "big.txt"}), 30)
        assert read.success and read.result["content"] == big
        # ...and a large payload goes out through it, its large result comes back the same way.
        text = "abc" * 600_000
        handle = await session.submit(SessionLane.QUERY, "upper", {"text": text})
        upper = await asyncio.wait_for(handle.result(), 30)
        assert upper.success and upper.result == {"text": text.upper()}
    finally:
        worker.terminate()
        worker.communicate(timeout=10)
        await session.close()


async def test_a_python_worker_client_works_the_spec_loop(agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    prefix = "py" + uuid.uuid4().hex[:10]
    session = await nats_session(agent, tmp_path, nats_url, prefix)
    remote = await WorkerClient.connect(nats_url, session.id, config=NatsConfig(nats_url, prefix=prefix),
                                        lanes=[SessionLane.QUERY])

    async def worker_loop() -> None:
        # The spec's worker of one session, ending with it.
        while not remote.is_session_closed:
            tasks = await remote.pending_external_tasks(limit=16, wait_ms=1_000)
            await remote.complete_external_tasks(
                [(t.task_id, ExternalTaskResult(success=True, result={"content": t.payload["path"]})) for t in tasks])

    loop = asyncio.get_running_loop().create_task(worker_loop())
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(session.tool("read", {"path": f"f{i}"}) for i in range(30))), 30)
        assert [r.result["content"] for r in results] == [f"f{i}" for i in range(30)]
        assert remote.worker_id
        # Without arguments: what is waiting now, at once (nothing is).
        assert await remote.pending_external_tasks() == []
        # The one claim implementation: the same argument rules as AgentSession's.
        with pytest.raises(InvalidConfigError, match="not both"):
            await remote.pending_external_tasks(wait=0.1, wait_ms=100)
        with pytest.warns(DeprecationWarning, match="wait_ms"):
            assert await remote.pending_external_tasks(limit=1, wait=0.01) == []
        # The session closes: its worker hears it, and the loop ends by itself.
        assert remote.is_session_closed is False
        await session.close()
        await asyncio.wait_for(remote.session_closed(), 10)
        assert remote.is_session_closed is True
        await asyncio.wait_for(loop, 10)
    finally:
        loop.cancel()
        await remote.close()
        await session.close()


async def test_nats_config_limits_are_checked_and_max_object_bytes_caps_submit(
        agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    prefix = "py" + uuid.uuid4().hex[:10]
    config = NatsConfig(nats_url, prefix=prefix, max_object_bytes=1_000, replicas=1, duplicate_window_ms=5_000)
    assert (config.max_object_bytes, config.replicas, config.duplicate_window_ms) == (1_000, 1, 5_000)
    assert NatsConfig(nats_url).duplicate_window_ms == 20_000
    cfg = SessionQueueConfig(
        lane_handlers={SessionLane.QUERY: LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=30_000)})
    session = agent.session(tmp_path, SessionOptions(queue_config=cfg, nats=config))
    await session.broker_ready(10.0)
    with pytest.raises(PayloadTooLargeError):
        await session.submit(SessionLane.QUERY, "upper", {"text": "x" * 2_000})
    await session.close()
    with pytest.raises(InvalidConfigError):
        NatsConfig(nats_url, replicas=0)
    with pytest.raises(InvalidConfigError):
        NatsConfig(nats_url, replicas=6)
    with pytest.raises(InvalidConfigError):
        NatsConfig(nats_url, duplicate_window_ms=0)
    # The credential and TLS rules are the core's (NatsOptions::into_config).
    with pytest.raises(InvalidConfigError, match="one of"):
        NatsConfig(nats_url, token="t", nkey="n")
    with pytest.raises(InvalidConfigError, match="without user"):
        NatsConfig(nats_url, password="p")
    with pytest.raises(InvalidConfigError, match="without tls_cert"):
        NatsConfig(nats_url, tls_key="/k.pem")
    with pytest.raises(InvalidConfigError):
        NatsConfig("")


async def test_a_tenant_session_round_trips_through_a_pool_worker_of_its_tenant(
        agent: Agent, tmp_path: pathlib.Path, nats_url: str) -> None:
    prefix = "py" + uuid.uuid4().hex[:10]
    config = NatsConfig(nats_url, prefix=prefix, inbox_prefix="_INBOX_T")
    assert config.inbox_prefix == "_INBOX_T"
    assert NatsConfig(nats_url).inbox_prefix == "_INBOX"
    # A pool worker of the tenant connects before any session exists: it waits for work.
    worker = await WorkerClient.connect(nats_url, "*", config=config, tenant="acme", lanes=[SessionLane.QUERY])
    other = await WorkerClient.connect(nats_url, "*", config=config, tenant="globex", lanes=[SessionLane.QUERY])
    assert worker.state == "waiting"
    cfg = SessionQueueConfig(
        lane_handlers={SessionLane.QUERY: LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=30_000)})
    options = SessionOptions(queue_config=cfg, nats=config, tenant="acme", tenant_weight=3.0, tenant_max_in_flight=8)
    assert (options.tenant, options.tenant_weight, options.tenant_max_in_flight) == ("acme", 3.0, 8)
    session = agent.session(tmp_path, options)
    try:
        await session.broker_ready(10.0)
        handle = await session.submit(SessionLane.QUERY, "read", {"path": "t.txt"})
        tasks = []
        for _ in range(30):
            tasks = await worker.pending_external_tasks(limit=1, wait_ms=1_000)
            if tasks:
                break
        assert [t.task_id for t in tasks] == [handle.task_id]
        assert worker.state == "serving"
        # Another tenant's pool worker never sees it.
        assert await other.pending_external_tasks() == []
        await worker.complete_external_task(tasks[0].task_id, ExternalTaskResult(success=True, result={"ok": "acme"}))
        result = await asyncio.wait_for(handle.result(), 30)
        assert result.success and result.result == {"ok": "acme"}
    finally:
        await session.close()
        await worker.close()
        await other.close()
    assert worker.state == "draining"


def test_bad_tenant_options_raise_invalid_config_error() -> None:
    for bad in ("a.b", "a b", "_sys", "", "x" * 65):
        with pytest.raises(InvalidConfigError, match="tenant"):
            SessionOptions(tenant=bad)
    for weight in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidConfigError, match="weight"):
            SessionOptions(tenant="acme", tenant_weight=weight)
    with pytest.raises(InvalidConfigError, match="max_in_flight"):
        SessionOptions(tenant="acme", tenant_max_in_flight=0)
    # Without a name, a weight or a cap applies to the default tenant.
    assert SessionOptions(tenant_weight=2.0).tenant == "default"
    assert SessionOptions(tenant_max_in_flight=4).tenant_max_in_flight == 4
    assert SessionOptions().tenant is None
    with pytest.raises(InvalidConfigError):
        NatsConfig("nats://127.0.0.1:4222", inbox_prefix="bad prefix")

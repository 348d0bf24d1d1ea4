"""A session's tasks, served by a pool worker started from an image (scripts/container.sh test).

The worker (SESSION_ID='*', lanes query and execute, its /healthz and /metrics at --worker) was
started before any session existed and answers `ok waiting`. Each mode opens a session over NATS
with External Query and Execute lanes.

`serve` checks that:

- the worker serves the session without being told about it: the first task completes within
  seconds of the session opening (workers wait for work; scaling from zero relies on it);
- its /healthz now says `ok serving`;
- the built-in tools run confined to the image's workspace, as uid 65534 (a written file is
  owned by 65534; `../` is refused);
- the session's /metrics carries `a3s_lane_worker_slots_needed{lane="execute"}`, the gauge the
  autoscaling examples in deploy/kubernetes/autoscaling/ query.

`drain --pid PID` (an image with a shell) sends the worker SIGTERM while a 2 s bash task runs and
checks that the task still completes, that /healthz stays 200 `ok draining` (liveness keeps the
pod) and that /readyz answers 503 `not ready draining` (readiness takes it out) meanwhile.
"""

import argparse
import asyncio
import os
import pathlib
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request

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

GAUGE = "a3s_lane_worker_slots_needed"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


def busy_slots(metrics: str) -> float:
    """`a3s_worker_busy_slots{worker="..."} N` of a worker's /metrics."""
    for line in metrics.splitlines():
        if line.startswith("a3s_worker_busy_slots{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no a3s_worker_busy_slots on the worker's /metrics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_session(tmp: str, args: argparse.Namespace, metrics: str) -> AgentSession:
    config = pathlib.Path(tmp, "agent.hcl")
    config.write_text("queue {\n  enable_metrics = true\n}\n")
    queue = SessionQueueConfig(
        enable_metrics=True,
        lane_handlers={lane: LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=30_000)
                       for lane in (SessionLane.QUERY, SessionLane.EXECUTE)},
    )
    return Agent.create(config).session(
        tmp, SessionOptions(queue, nats=NatsConfig(args.nats, prefix=args.prefix), metrics_addr=metrics))


async def serve(args: argparse.Namespace) -> str:
    workspace = pathlib.Path(args.workspace)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = f"127.0.0.1:{free_port()}"
        opened = time.monotonic()
        session = open_session(tmp, args, metrics)
        try:
            await session.broker_ready(10.0)
            first = await asyncio.wait_for(session.tool("read", {"path": "hello.txt"}), 30)
            first_s = time.monotonic() - opened
            assert first.success and first.result["content"] == "hello from the workspace\n", first.result
            # Workers take work within a second of a session opening; allow for a loaded CI machine.
            assert first_s < 5, f"the first task took {first_s:.1f}s after the session opened"

            health = get(args.worker + "/healthz")
            assert health == (200, "ok serving"), health

            reads = await asyncio.wait_for(
                asyncio.gather(*(session.tool("read", {"path": "hello.txt"}) for _ in range(20))), 30)
            assert all(r.success for r in reads)
            wrote = await asyncio.wait_for(
                session.tool("write", {"path": "written-by-worker.txt", "content": "x\n"}), 30)
            assert wrote.success, wrote.result
            owner = os.stat(workspace / "written-by-worker.txt").st_uid
            assert owner == 65534, f"the worker wrote as uid {owner}, not 65534"
            escape = await asyncio.wait_for(session.tool("read", {"path": "../../etc/passwd"}), 30)
            assert not escape.success and escape.result["error_code"] == "PathEscapesWorkspace", escape.result

            _, text = get(f"http://{metrics}/metrics")
            gauge = [line for line in text.splitlines() if line.startswith(GAUGE + "{")]
            assert any('lane="execute"' in line for line in gauge), f"no {GAUGE}{{lane=\"execute\"}} on /metrics"
        finally:
            await session.close()
    return (f"first task served {first_s:.2f}s after the session opened; /healthz 200 'ok serving'; "
            f"22 tasks; files written as uid 65534, '../' refused; the session's /metrics has "
            f"{GAUGE}{{lane=\"execute\"}}")


async def drain(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        session = open_session(tmp, args, f"127.0.0.1:{free_port()}")
        try:
            await session.broker_ready(10.0)
            handle = await session.submit(SessionLane.EXECUTE, "bash", {"command": "sleep 2; echo done"})
            # Running once the worker holds a busy slot.
            deadline = time.monotonic() + 15
            while busy_slots(get(args.worker + "/metrics")[1]) < 1:
                assert time.monotonic() < deadline, "the bash task never started"
                await asyncio.sleep(0.05)
            os.kill(args.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while (health := get(args.worker + "/healthz"))[1] != "ok draining":
                assert time.monotonic() < deadline, f"/healthz never said draining: {health}"
                await asyncio.sleep(0.02)
            # Healthy (not restarted) but not ready (no new work) while it drains.
            ready = get(args.worker + "/readyz")
            assert ready == (503, "not ready draining"), f"/readyz while draining: {ready}"
            result = await asyncio.wait_for(handle.result(), 30)
            assert result.success and result.result["stdout"] == "done\n", result.result
        finally:
            await session.close()
    return (f"SIGTERM during a 2 s bash task: it completed (stdout 'done'); /healthz meanwhile "
            f"answered {health[0]} '{health[1]}', /readyz {ready[0]} '{ready[1]}'")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "drain"])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--worker", required=True, help="the worker's metrics base URL, http://host:port")
    ap.add_argument("--workspace", help="serve: the worker's workspace, as this host sees it")
    ap.add_argument("--pid", type=int, help="drain: the worker's process id")
    args = ap.parse_args()
    print(asyncio.run(serve(args) if args.mode == "serve" else drain(args)))


if __name__ == "__main__":
    main()

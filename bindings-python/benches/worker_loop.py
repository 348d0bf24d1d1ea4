"""The Python worker loop beside the Rust one, in one run.

A Python worker (the spec's loop, with batch polling: `pending_external_tasks(limit=256,
wait=0.1)` and one `complete_external_tasks` call per batch) completes TASKS no-op tasks that
Python submits concurrently on an External Query lane, as `core/benches/worker_loop.rs` does in
Rust; then it runs that Rust bench (`cargo bench`) and prints the ratio. Both run ROUNDS times,
interleaved, and the best and median rates of each are compared (the machine is shared: the
best run is the one least disturbed).

    python bindings-python/benches/worker_loop.py [TASKS [ROUNDS]]    # default 100000 3

Set A3S_BENCH_SKIP_RUST=1 to run the Python loop only.
"""

import asyncio
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from a3s_code import (
    Agent,
    AgentSession,
    ExternalTaskResult,
    LaneHandlerConfig,
    SessionLane,
    SessionOptions,
    SessionQueueConfig,
    ShutDownError,
    TaskHandlerMode,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


async def worker_loop(session: AgentSession) -> None:
    while True:
        try:
            tasks = await session.pending_external_tasks(limit=256, wait=0.1)
        except ShutDownError:
            return
        if not tasks:
            continue
        results = [(t.task_id, ExternalTaskResult(success=True, result={}, error=None)) for t in tasks]
        for outcome in await session.complete_external_tasks(results):
            if outcome is not None:
                raise outcome


async def python_loop(tasks: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = pathlib.Path(tmp) / "agent.hcl"
        config.write_text("")
        agent = Agent.create(config)
    queue = SessionQueueConfig(
        query_max_concurrency=1024,
        max_pending=tasks + 1,
        lane_handlers={
            SessionLane.QUERY: LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL, timeout_ms=600_000)
        },
    )
    session = agent.session(".", SessionOptions(queue_config=queue))
    worker = asyncio.create_task(worker_loop(session))
    start = time.perf_counter()
    handles = [await session.submit(SessionLane.QUERY, "noop", {"i": i}) for i in range(tasks)]
    for handle in handles:
        result = await handle.result()
        assert result.success
    secs = time.perf_counter() - start
    await session.close()
    await worker
    rate = tasks / secs
    print(f"python worker loop: {tasks} tasks in {secs:.3f} s = {rate:.0f} tasks/s", flush=True)
    return rate


def rust_loop(tasks: int) -> float:
    cmd = ["cargo", "bench", "-q", "-p", "a3s-code-core", "--bench", "worker_loop", "--", str(tasks)]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("rust worker loop:"))
    print(line, flush=True)
    match = re.search(r"= (\d+) tasks/s", line)
    assert match, line
    return float(match.group(1))


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    skip_rust = bool(os.environ.get("A3S_BENCH_SKIP_RUST"))
    py, rust = [], []
    for _ in range(rounds):
        py.append(asyncio.run(python_loop(tasks)))
        if not skip_rust:
            rust.append(rust_loop(tasks))
    print(f"python: best {max(py):.0f} tasks/s, median {statistics.median(py):.0f} tasks/s")
    if skip_rust:
        return
    print(f"rust:   best {max(rust):.0f} tasks/s, median {statistics.median(rust):.0f} tasks/s")
    print(
        f"python / rust: {max(py) / max(rust) * 100:.0f}% best to best, "
        f"{statistics.median(py) / statistics.median(rust) * 100:.0f}% median to median "
        "(target: at least 30%)"
    )


if __name__ == "__main__":
    main()

"""The spec's Python samples (multi-machine-distribution), as written.

Only the imports they leave out were added, plus `main()`, which drives them: it starts the
spec's `worker_loop` as an asyncio task, routes tool calls through `session.tool(...)`, checks
that the worker completed them, and prints the queue's stats and metrics.

Run from `examples/spec` (the samples load `agent.hcl` and read paths relative to `.`):
`python python/spec_sample.py`.
"""

# ----- Step 1: Configure Session (as written) ---------------------------------------------------
from a3s_code import Agent, SessionOptions, SessionQueueConfig
from a3s_code import SessionLane, LaneHandlerConfig, TaskHandlerMode
agent = Agent.create("agent.hcl")
# Configure queue
queue_config = SessionQueueConfig(
query_max_concurrency=20,
execute_max_concurrency=5,
enable_metrics=True,
enable_dlq=True
)
session = agent.session(".", SessionOptions(
queue_config=queue_config
))
# Configure Query lane for external processing
session.set_lane_handler(
SessionLane.QUERY,
LaneHandlerConfig(
mode=TaskHandlerMode.EXTERNAL,
timeout_ms=120_000
)
)

# ----- Step 2: Implement Worker (as written) ----------------------------------------------------
import asyncio
from a3s_code import AgentSession, ExternalTaskResult
async def worker_loop(session: AgentSession):
    """Worker loop - can run on multiple machines"""
    while True:
        # Poll for pending tasks
        tasks = await session.pending_external_tasks()
        if not tasks:
            await asyncio.sleep(0.1)
            continue
        # Process tasks in parallel
        await asyncio.gather(*[
            process_task(session, task) for task in tasks
        ])
async def process_task(session: AgentSession, task):
    """Process a single task"""
    result = await execute_task(task)
    await session.complete_external_task(task.task_id, result)
async def execute_task(task):
    """Execute task based on command type"""
    if task.command_type == "read":
        path = task.payload["path"]
        try:
            with open(path, 'r') as f:
                content = f.read()
            return ExternalTaskResult(
                success=True,
                result={"content": content},
                error=None
            )
        except Exception as e:
            return ExternalTaskResult(
                success=False,
                result={},
                error=str(e)
            )
    elif task.command_type == "bash":
        command = task.payload["command"]
        try:
            proc = await asyncio.create_subprocess_shell(
                command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE
            )
            stdout, stderr = await proc.communicate()
            return ExternalTaskResult(
                success=proc.returncode == 0,
                result={
                    "stdout": stdout.decode(),
                    "stderr": stderr.decode(),
                    "exit_code": proc.returncode
                },
                error=None
            )
        except Exception as e:
            return ExternalTaskResult(
                success=False,
                result={},
                error=str(e)
            )
    else:
        return ExternalTaskResult(
            success=False,
            result={},
            error=f"Unknown command type: {task.command_type}"
        )


# ----- The driver -------------------------------------------------------------------------------
HELLO = "hello from the spec example\nsecond line\n"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"spec sample FAILED: {message}")


async def drive() -> None:
    worker = asyncio.create_task(worker_loop(session))

    # Tool calls routed to the Query lane are completed by the spec's worker loop.
    read = await session.tool("read", {"path": "data/hello.txt"})
    check(read.success, f"read failed: {read.error}")
    check(read.result["content"] == HELLO, f"unexpected {read!r}")
    print(f"read via the spec worker: {read.result['content']!r}")

    missing = await session.tool("read", {"path": "data/missing.txt"})
    check(not missing.success and missing.error is not None, "a failed read is reported, not raised")
    print(f"missing file reported by the worker: {missing.error}")

    # Several at once: the worker claims them in one poll and runs them in parallel.
    many = await asyncio.gather(
        *[session.tool("read", {"path": "data/hello.txt"}) for _ in range(10)]
    )
    check(all(r.success and r.result["content"] == HELLO for r in many), "10 parallel reads")

    # The worker's other branches, through tasks submitted on the External Query lane.
    bash = await (await session.submit(SessionLane.QUERY, "bash", {"command": "echo from bash"})).result()
    check(bash.success and bash.result["stdout"] == "from bash\n", f"unexpected {bash!r}")
    print(f"bash via the spec worker: {bash.result['stdout']!r}")
    odd = await (await session.submit(SessionLane.QUERY, "teleport", {})).result()
    check(not odd.success and odd.error == "Unknown command type: teleport", f"unexpected {odd!r}")
    print(f"unknown command reported by the worker: {odd.error}")

    # ----- Monitor Queue Metrics / Check Queue Stats / Monitor Task Latency ----------------------
    stats = await session.queue_stats()
    print(f"Pending: {stats.pending_count}, Active: {stats.active_count}, External: {stats.external_count}")
    metrics = await session.queue_metrics()
    if metrics is not None:
        print(f"Total processed: {metrics.total_processed}")
        print(f"Success rate: {metrics.success_rate * 100:.2f}%")
    print("Queue Stats:")
    print(f" Pending: {stats.pending_count}")
    print(f" Active: {stats.active_count}")
    print(f" External: {stats.external_count}")
    print(f" Per lane: {stats.per_lane}")
    if metrics is not None:
        print(f"Average latency: {metrics.avg_latency}")
        print(f"P95 latency: {metrics.p95_latency}")
        print(f"P99 latency: {metrics.p99_latency}")

    check(metrics is not None, "metrics are enabled")
    assert metrics is not None
    check(metrics.total_processed == 14, f"14 tasks went through the queue, got {metrics.total_processed}")
    check(metrics.total_failed == 2, f"2 failed results, got {metrics.total_failed}")
    check(stats.pending_count == 0 and stats.active_count == 0, f"queue drained: {stats}")
    check(await session.dead_letters() == [], "no dead letters")

    worker.cancel()
    await session.close()
    print("spec sample OK")


def main() -> None:
    asyncio.run(drive())


if __name__ == "__main__":
    main()

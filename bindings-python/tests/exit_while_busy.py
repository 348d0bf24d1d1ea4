"""Exits while calls are finishing on a3s_code's runtime: long polls that keep timing out, in a
daemon thread's event loop and in the main thread's, some still running at exit.

Run by test_exit.py; prints "ok" and exits 0 when the interpreter shut down cleanly.
"""

import asyncio
import pathlib
import sys
import tempfile
import threading

from a3s_code import Agent, LaneHandlerConfig, SessionLane, TaskHandlerMode

workspace = pathlib.Path(tempfile.mkdtemp())
(workspace / "agent.hcl").write_text("queue {\n}\n")
session = Agent.create(workspace / "agent.hcl").session(workspace)
session.set_lane_handler(SessionLane.QUERY, LaneHandlerConfig(mode=TaskHandlerMode.EXTERNAL))


async def poll(rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.gather(*[session.pending_external_tasks(wait_ms=1) for _ in range(8)])


def poll_in_background() -> None:
    try:
        asyncio.run(poll(sys.maxsize))
    except RuntimeError as e:  # the interpreter is exiting: the runtime refuses new calls
        assert "exits" in str(e), e


async def main() -> None:
    await poll(50)
    # Still running when the loop closes and the interpreter exits.
    for _ in range(8):
        asyncio.ensure_future(session.pending_external_tasks(wait_ms=1))
    await asyncio.sleep(0.001)


threading.Thread(target=poll_in_background, daemon=True).start()
asyncio.run(main())
print("ok")

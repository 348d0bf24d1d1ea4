#!/usr/bin/env python3
"""The foreign worker (examples/foreign-worker/worker.py) with one deliberate fault, for the
conformance kit's own tests: each fault must fail exactly the kit's matching rule.

    python broken_worker.py <fault>     # then as the foreign worker (environment, flags)

Faults:
    ack-before-result   acknowledges a task before publishing its result
    wrong-attempt       reports every result with the attempt number plus one
    no-lease-renewal    never sends +WPI
    answers-twice       publishes every result twice
"""

import asyncio
import contextvars
import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parents[2]
FOREIGN = ROOT / "examples" / "foreign-worker"
FAULTS = {"ack-before-result", "wrong-attempt", "no-lease-renewal", "answers-twice"}

if len(sys.argv) < 2 or sys.argv[1] not in FAULTS:
    raise SystemExit(f"usage: broken_worker.py <{'|'.join(sorted(FAULTS))}> [worker flags]")
FAULT = sys.argv.pop(1)

sys.path.insert(0, str(FOREIGN))
spec = importlib.util.spec_from_file_location("foreign_worker", FOREIGN / "worker.py")
assert spec is not None and spec.loader is not None
fw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fw)

# The delivery being handled, for the report that answers it.
current: "contextvars.ContextVar[Any]" = contextvars.ContextVar("delivery")


class Broken(fw.Worker):  # type: ignore[name-defined,misc]
    async def handle_inner(self, msg: Any) -> None:
        current.set(msg)
        await super().handle_inner(msg)

    async def report(self, env: Dict[str, Any], attempt: int, kind: str, result: Dict[str, Any]) -> None:
        if kind == "result" and FAULT == "ack-before-result":
            await current.get().ack()
        if kind == "result" and FAULT == "wrong-attempt":
            attempt += 1
        await super().report(env, attempt, kind, result)
        if kind == "result" and FAULT == "answers-twice":
            await super().report(env, attempt, kind, result)


if FAULT == "no-lease-renewal":
    from nats.aio.msg import Msg

    async def never(self: Any) -> None:
        return None

    Msg.in_progress = never  # type: ignore[method-assign]

fw.Worker = Broken
asyncio.run(fw.main())

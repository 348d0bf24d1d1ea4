#!/usr/bin/env python3
"""A worker for a3s-code sessions written from docs/protocol.md alone, with a plain NATS client
(nats-py): no a3s bindings, no Rust.

    pip install nats-py
    python worker.py --nats nats://127.0.0.1:4222 --session-id <id> --workspace DIR

It serves the `read` and `ls` built-in tools (confined to the workspace) and a custom `upper`
command, takes the highest-priority lane first, renews its lease while a task runs, reports
exhausted deliveries, stops a task the session cancels, and moves payloads and results too
large for a message through the object store.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any, Dict, Optional, Set, Tuple

import nats
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import ObjectNotFoundError

LANES = ["control", "query", "execute", "generate"]  # priority order (protocol.md §1)


def log(*args: Any) -> None:
    print("foreign-worker:", *args, file=sys.stderr, flush=True)


class Workspace:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve(self, path: str) -> str:
        full = os.path.realpath(os.path.join(self.root, path))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise PermissionError(f"path {path!r} escapes the workspace")
        return full


def run_tool(ws: Workspace, command: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Runs one command; returns the `result` object of the result envelope (protocol.md §3.2)."""
    try:
        if command == "read":
            with open(ws.resolve(payload["path"]), encoding="utf-8") as f:
                content = f.read()
            lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
            return {"success": True, "error": None, "result": {
                "content": content, "total_lines": lines, "start_line": 1, "end_line": lines, "truncated": False}}
        if command == "ls":
            root = ws.resolve(payload.get("path") or ".")
            entries = []
            for name in sorted(os.listdir(root)):
                p = os.path.join(root, name)
                kind = "symlink" if os.path.islink(p) else "dir" if os.path.isdir(p) else "file"
                entries.append({"name": name, "kind": kind, "size": os.path.getsize(p) if kind == "file" else 0})
            return {"success": True, "error": None, "result": {"entries": entries}}
        if command == "upper":
            return {"success": True, "error": None, "result": {"text": str(payload["text"]).upper()}}
        return {"success": False, "result": {"error_code": "UnknownTool"}, "error": f"Unknown command type: {command}"}
    except PermissionError as e:
        return {"success": False, "result": {"error_code": "PathEscapesWorkspace"}, "error": str(e)}
    except (KeyError, TypeError) as e:
        return {"success": False, "result": {"error_code": "InvalidPayload"}, "error": f"bad payload: {e}"}
    except OSError as e:
        return {"success": False, "result": {"error_code": "ToolFailed"}, "error": str(e)}


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = args.prefix
        self.session = args.session_id
        self.stream = args.prefix.upper().replace("-", "_") + "_TASKS"
        self.ws = Workspace(args.workspace)
        self.lanes = [lane for lane in LANES if lane in args.lanes.split(",")]
        self.bell = asyncio.Event()
        self.cancelled: Set[str] = set()
        self.running: Dict[str, "asyncio.Task[None]"] = {}
        self.slots = asyncio.Semaphore(args.concurrency)
        self.stopping = False
        self.bucket = args.prefix.upper().replace("-", "_") + "_PAYLOADS"  # protocol.md §3.5

    async def start(self) -> None:
        self.nc = await nats.connect(self.args.nats, name=f"foreign-worker {self.args.worker_id}")
        self.js = self.nc.jetstream()
        self.subs = {}
        for lane in self.lanes:
            durable = f"t_{self.session}_{lane}__"
            self.subs[lane] = await self.js.pull_subscribe_bind(durable=durable, stream=self.stream)
        info = await self.subs[self.lanes[0]].consumer_info()
        self.lease = float(info.config.ack_wait or 10.0)
        # Envelopes larger than this carry their result by reference (protocol.md §3.5).
        self.inline_limit = max(self.nc.max_payload - 8192, 8192)
        await self.nc.subscribe(f"{self.prefix}.ready.{self.session}", cb=self.on_doorbell)
        await self.nc.subscribe(f"{self.prefix}.cancel.{self.session}", cb=self.on_cancel)
        log(f"serving session {self.session} lanes {','.join(self.lanes)}, lease {self.lease}s")

    async def on_doorbell(self, msg: Msg) -> None:
        self.bell.set()

    async def on_cancel(self, msg: Msg) -> None:
        try:
            notice = json.loads(msg.data)
        except ValueError:
            return
        if notice.get("v") != 1:
            return
        task_id = notice.get("task_id")
        self.cancelled.add(task_id)
        running = self.running.get(task_id)
        if running:
            running.cancel()

    async def run(self) -> None:
        while not self.stopping:
            got = False
            for lane in self.lanes:  # highest priority first
                free = self.slots._value  # slots not in use
                if free == 0:
                    break
                try:
                    msgs = await self.subs[lane].fetch(batch=free, timeout=0.05)
                except (NatsTimeout, asyncio.TimeoutError):  # nats-py raises either when nothing came
                    continue
                except Exception as e:  # NATS unavailable: never let it take the worker down
                    log(f"fetching tasks failed ({e!r}); retrying")
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self.slots.acquire()
                    asyncio.get_running_loop().create_task(self.handle(msg))
                    got = True
                if got:
                    break
            if not got:
                self.bell.clear()
                try:
                    await asyncio.wait_for(self.bell.wait(), 1.0)  # poll now and then anyway
                except asyncio.TimeoutError:
                    pass

    async def handle(self, msg: Msg) -> None:
        try:
            await self.handle_inner(msg)
        except Exception as e:  # never let one task take the worker down
            log(f"error handling a task: {e!r}")
        finally:
            self.slots.release()

    async def handle_inner(self, msg: Msg) -> None:
        try:
            env = json.loads(msg.data)
            if not isinstance(env, dict):
                raise ValueError("not an object")
        except ValueError as e:
            log(f"dropping a malformed task message: {e}")
            await msg.term()
            return
        if env.get("v") != 1:
            log(f"dropping a task of unsupported protocol version {env.get('v')!r}")
            await msg.term()
            return
        try:
            task_id, session_id = env["task_id"], env["session_id"]
            command, payload = env["command_type"], env["payload"]
            max_attempts, remaining_ms = int(env["max_attempts"]), int(env["remaining_ms"])
        except (KeyError, TypeError, ValueError) as e:
            log(f"dropping a task message without {e}")
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        if attempt > max_attempts:
            await msg.term()
            await self.report(task_id, session_id, attempt, "exhausted", {
                "success": False, "result": {}, "error": f"{attempt - 1} attempts were lost"})
            return
        if env.get("payload_ref") is not None:
            readable, payload = await self.read_payload(msg, env["payload_ref"], task_id, session_id, attempt)
            if not readable:
                return
        at_most_once = env.get("delivery") == "at_most_once"
        if at_most_once:
            await msg.ack_sync()
        deadline = time.monotonic() + remaining_ms / 1000  # my own clock, from receipt
        if time.monotonic() >= deadline or task_id in self.cancelled:
            return

        async def renew_lease() -> None:
            while True:
                await asyncio.sleep(self.lease / 3)
                await msg.in_progress()

        lease = None if at_most_once else asyncio.get_running_loop().create_task(renew_lease())
        work = asyncio.get_running_loop().create_task(asyncio.to_thread(run_tool, self.ws, command, payload))
        self.running[task_id] = work
        try:
            result = await asyncio.wait_for(work, max(deadline - time.monotonic(), 0.001))
        except (asyncio.CancelledError, asyncio.TimeoutError):
            if not at_most_once:
                await msg.ack()  # cancelled or expired: the session no longer wants it
            return
        finally:
            self.running.pop(task_id, None)
            if lease:
                lease.cancel()
        await self.report(task_id, session_id, attempt, "result", result)
        if not at_most_once:
            await msg.ack()  # only once the result is stored (protocol.md §2.5)

    async def read_payload(self, msg: Msg, ref: Any, task_id: str, session_id: str, attempt: int) -> Tuple[bool, Any]:
        """(True, the payload) of a task sent by reference (protocol.md §3.5), or (False, None) when the
        task was given back (NATS unavailable: -NAK) or failed (missing, wrong size, not JSON, too large)."""
        await msg.in_progress()  # reading may take a while: start from a fresh lease
        try:
            if not isinstance(ref, dict) or ref.get("bucket") != self.bucket:
                raise ValueError(f"payload_ref {ref!r} is not in bucket {self.bucket}")
            size = int(ref["size"])
            if size > self.args.max_object_bytes:
                await self.report(task_id, session_id, attempt, "result", {
                    "success": False, "result": {"error_code": "PayloadTooLarge"},
                    "error": f"payload of {size} bytes is over the limit of {self.args.max_object_bytes}"})
                await msg.term()  # only once the failure is stored
                return False, None
            obj = await (await self.js.object_store(self.bucket)).get(str(ref["name"]))
            data = obj.data or b""
            if len(data) != size:
                raise ValueError(f"object {ref['name']} has {len(data)} bytes, not {size}")
            return True, json.loads(data)
        except (ObjectNotFoundError, ValueError, KeyError, TypeError) as e:
            log(f"task {task_id}: unreadable payload: {e}")
            await self.report(task_id, session_id, attempt, "result", {
                "success": False, "result": {"error_code": "InvalidPayload"}, "error": f"unreadable payload: {e}"})
            await msg.term()  # only once the failure is stored
            return False, None
        except Exception as e:  # NATS unavailable: give it back
            log(f"task {task_id}: cannot read its payload now ({e!r}); giving it back")
            await msg.nak(delay=1)
            return False, None

    async def report(self, task_id: str, session_id: str, attempt: int, kind: str, result: Dict[str, Any]) -> None:
        envelope: Dict[str, Any] = {"v": 1, "kind": kind, "task_id": task_id, "session_id": session_id,
                                    "attempt": attempt, "worker_id": self.args.worker_id, "result": result}
        data = json.dumps(envelope).encode()
        if len(data) > self.inline_limit:
            # Too large for a message: the result goes to the object store, by reference (§3.5).
            value = json.dumps(result.get("result")).encode()
            if len(value) > self.args.max_object_bytes:
                envelope["result"] = {"success": False, "result": {"error_code": "PayloadTooLarge"},
                                      "error": f"result of {len(value)} bytes is over the limit of "
                                               f"{self.args.max_object_bytes}"}
            else:
                name = f"{session_id}/{task_id}/result/{attempt}"
                await (await self.js.object_store(self.bucket)).put(name, value)
                envelope["result"] = dict(result, result=None)
                envelope["result_ref"] = {"bucket": self.bucket, "name": name, "size": len(value)}
            data = json.dumps(envelope).encode()
        await self.js.publish(f"{self.prefix}.result.{session_id}", data,
                              headers={"Nats-Msg-Id": f"{task_id}:{attempt}"})


async def main(argv: Optional[list] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nats", default=os.environ.get("A3S_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--session-id", default=os.environ.get("SESSION_ID"), required="SESSION_ID" not in os.environ)
    p.add_argument("--prefix", default="a3s")
    p.add_argument("--lanes", default="query")
    p.add_argument("--workspace", default=".")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--worker-id", default=f"py-{os.getpid()}")
    p.add_argument("--max-object-bytes", type=int, default=64 << 20,
                   help="largest payload or result to move through the object store")
    w = Worker(p.parse_args(argv))
    await w.start()
    loop = asyncio.get_running_loop()
    def stop() -> None:
        w.stopping = True
        w.bell.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await w.run()
    await w.nc.close()


if __name__ == "__main__":
    asyncio.run(main())

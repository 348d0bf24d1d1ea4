#!/usr/bin/env python3
"""A worker for a3s-code sessions written from docs/protocol.md alone (wire protocol v2), with a
plain NATS client (nats-py): no a3s bindings, no Rust.

    pip install nats-py
    # a worker of one session: attaches to it, then serves that session's own consumers
    python worker.py --nats nats://127.0.0.1:4222 --session-id <id> --workspace DIR
    # a pool worker of a tenant: serves every session of the tenant
    python worker.py --nats nats://127.0.0.1:4222 --session-id '*' --tenant acme --workspace DIR

It serves the built-in tools `read`, `write`, `edit`, `grep`, `glob` and `ls` (tools.py, beside
this file: confined to the workspace, with the semantics of the Rust tools), `bash` only with
--allow-bash or A3S_ALLOW_BASH=1, and a custom `upper` command; any other command is answered
with an UnknownTool failure. `session.tool()` sends write, edit and bash to the execute lane:
serve it with --lanes query,execute. It takes the highest-priority lane first, renews its lease
while a task runs, reports exhausted deliveries, stops a task the session cancels, moves
payloads and results too large for a message through the tenant's object store, and announces
itself (presence) every 5 s. It never exits because a session or stream is not there yet: it
waits (and says so once). README.md says what it does differently from `a3s-code worker`.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import nats
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError, ObjectNotFoundError

from tools import Workspace
from tools import run_tool as run_builtin

PROTOCOL = 2
VERSION = "0.2.0"
LANES = ["control", "query", "execute", "generate"]  # priority order (protocol.md §1)
ANY_ROUTE = "_"  # the route of tasks without required labels
POOL = "*"  # --session-id '*': a pool worker of --tenant
PRESENCE_INTERVAL_S = 5
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def log(*args: Any) -> None:
    print("foreign-worker:", *args, file=sys.stderr, flush=True)


def is_token(s: Any) -> bool:
    return isinstance(s, str) and TOKEN.match(s) is not None


def is_tenant(s: Any) -> bool:
    return is_token(s) and not s.startswith("_")


def run_tool(ws: Workspace, command: str, payload: Any, stop: Optional[threading.Event] = None) -> Dict[str, Any]:
    """Runs one command; returns the `result` object of the result envelope (protocol.md §3.2).
    Setting `stop` ends a running `bash` command and everything it started."""
    if command == "upper":
        try:
            return {"success": True, "error": None, "result": {"text": str(payload["text"]).upper()}}
        except (KeyError, TypeError) as e:
            return {"success": False, "result": {"error_code": "InvalidPayload"}, "error": f"bad payload: {e}"}
    return run_builtin(ws, command, payload, stop)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = args.prefix
        self.sp = args.prefix.upper().replace("-", "_")  # stream prefix
        self.worker_id = args.worker_id
        self.session: Optional[str] = None if args.session_id == POOL else args.session_id
        # A pool worker serves --tenant; a session's worker learns its tenant when it attaches.
        self.tenant: Optional[str] = args.tenant if self.session is None else None
        try:
            self.ws = Workspace(args.workspace, allow_bash=args.allow_bash, max_file_bytes=args.max_file_bytes)
        except (ValueError, OSError) as e:
            raise SystemExit(f"--workspace {args.workspace!r}: {e}")
        self.lanes = [lane for lane in LANES if lane in args.lanes.split(",")]
        self.bell = asyncio.Event()
        self.cancelled: Set[Tuple[str, str]] = set()  # (session_id, task_id)
        self.running: Dict[Tuple[str, str], "asyncio.Task[Any]"] = {}
        self.slots = asyncio.Semaphore(args.concurrency)
        self.busy = 0
        self.state = "waiting"
        self.stopping = False
        self.lease = 10.0

    @property
    def stream(self) -> str:
        return f"{self.sp}_TASKS_{self.tenant}"

    @property
    def bucket(self) -> str:
        return f"{self.sp}_OBJ_{self.tenant}"

    def durable(self, lane: str) -> str:
        if self.session is None:
            return f"pool_{lane}_{ANY_ROUTE}"
        return f"s_{self.session}_{lane}_{ANY_ROUTE}"

    async def start(self) -> None:
        if not self.lanes:
            raise SystemExit(f"--lanes {self.args.lanes!r} names none of {','.join(LANES)}")
        if self.session is not None and not is_token(self.session):
            raise SystemExit(f"--session-id {self.session!r} is not a session id (or '*')")
        if self.tenant is not None and not is_tenant(self.tenant):
            raise SystemExit(f"--tenant {self.tenant!r} is not a tenant name")
        if not is_token(self.worker_id):
            raise SystemExit(f"--worker-id {self.worker_id!r} must be letters, digits, '-' or '_'")
        self.nc = await nats.connect(self.args.nats, name=f"foreign-worker {self.worker_id}",
                                     max_reconnect_attempts=-1)
        self.js = self.nc.jetstream()
        # Envelopes larger than this carry their result by reference (protocol.md §3.5).
        self.inline_limit = max(self.nc.max_payload - 8192, 8192)
        self.presence = asyncio.get_running_loop().create_task(self.announce())
        if self.session is not None:
            await self.attach()
        await self.nc.subscribe(f"{self.prefix}.ready.{self.tenant}", cb=self.on_doorbell)
        await self.nc.subscribe(f"{self.prefix}.cancel.{self.tenant}", cb=self.on_cancel)
        await self.bind()
        if self.stopping:
            return
        self.set_state("serving")
        what = f"session {self.session}" if self.session else f"the pool of tenant {self.tenant}"
        log(f"serving {what} (stream {self.stream}) lanes {','.join(self.lanes)}, lease {self.lease}s")

    async def attach(self) -> None:
        """Asks the session to send our lanes' tasks to its own consumers (protocol.md: attach);
        retries every second until the session answers (it may not be open yet)."""
        request = json.dumps({"v": PROTOCOL, "worker_id": self.worker_id, "lanes": self.lanes}).encode()
        waited = False
        while not self.stopping:
            started = time.monotonic()
            reason = None
            try:
                reply = json.loads((await self.nc.request(f"{self.prefix}.attach.{self.session}",
                                                          request, timeout=1.0)).data)
                if not isinstance(reply, dict) or reply.get("v") != PROTOCOL:
                    reason = f"an attach reply of unsupported protocol version {reply.get('v') if isinstance(reply, dict) else None!r}"
                elif reply.get("error") is not None:
                    reason = f"the session refused: {reply['error']}"
                elif not is_tenant(reply.get("tenant")) or not isinstance(reply.get("lease_ms"), int):
                    reason = f"a malformed attach reply {reply!r}"
                else:
                    self.tenant, self.lease = reply["tenant"], max(reply["lease_ms"], 1) / 1000
                    log(f"attached to session {self.session} (tenant {self.tenant})")
                    return
            except (NoRespondersError, NatsTimeout, asyncio.TimeoutError):
                reason = "no answer (not open yet?)"
            except ValueError as e:
                reason = f"a malformed attach reply ({e})"
            except Exception as e:  # NATS unavailable: wait for it
                reason = f"{e!r}"
            if not waited:
                log(f"waiting for session {self.session} to answer an attach request: {reason}; retrying every 1s")
                waited = True
            await asyncio.sleep(max(1.0 - (time.monotonic() - started), 0.0))

    async def bind(self) -> None:
        """Binds to our lanes' consumers, waiting until the stream and the consumers exist."""
        waited = False
        while not self.stopping:
            try:
                subs = {}
                for lane in self.lanes:
                    info = await self.js.consumer_info(self.stream, self.durable(lane))
                    if self.session is None:  # a session's worker was told its lease by the session
                        self.lease = float(info.config.ack_wait or 10.0)
                    subs[lane] = await self.js.pull_subscribe_bind(durable=self.durable(lane), stream=self.stream)
                self.subs = subs
                return
            except NotFoundError as e:
                reason = f"not there yet ({e.description or e})"
            except Exception as e:  # NATS unavailable: wait for it
                reason = f"{e!r}"
            if not waited:
                log(f"waiting for stream {self.stream} and consumers "
                    f"{','.join(self.durable(l) for l in self.lanes)}: {reason}; retrying every 1s")
                waited = True
            await asyncio.sleep(1.0)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            asyncio.get_running_loop().create_task(self.publish_presence())

    async def publish_presence(self) -> None:
        body: Dict[str, Any] = {"v": PROTOCOL, "worker_id": self.worker_id, "lanes": self.lanes,
                                "slots": self.args.concurrency, "busy": self.busy, "version": VERSION,
                                "state": self.state, "interval_s": PRESENCE_INTERVAL_S}
        if self.tenant is not None:
            body["tenant"] = self.tenant
        if self.session is not None:
            body["session"] = self.session
        try:
            await self.nc.publish(f"{self.prefix}.presence.{self.tenant or '_'}.{self.worker_id}",
                                  json.dumps(body).encode())
        except Exception as e:  # presence is best effort
            log(f"publishing presence failed ({e!r})")

    async def announce(self) -> None:
        while True:
            await self.publish_presence()
            await asyncio.sleep(PRESENCE_INTERVAL_S)

    async def on_doorbell(self, msg: Msg) -> None:
        self.bell.set()

    async def on_cancel(self, msg: Msg) -> None:
        try:
            notice = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(notice, dict) or notice.get("v") != PROTOCOL:
            return
        key = (notice.get("session_id"), notice.get("task_id"))
        if not isinstance(key[0], str) or not isinstance(key[1], str):
            return
        if self.session is not None and key[0] != self.session:
            return
        self.cancelled.add(key)  # type: ignore[arg-type]
        running = self.running.get(key)  # type: ignore[arg-type]
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
        self.busy += 1
        try:
            await self.handle_inner(msg)
        except Exception as e:  # never let one task take the worker down
            log(f"error handling a task: {e!r}")
        finally:
            self.busy -= 1
            self.slots.release()

    def subject_mismatch(self, subject: str, tenant: str, session_id: str) -> Optional[str]:
        """Why a task's subject (`P.task.<T>.<lane>.<route>[.<S>]`) does not fit its envelope."""
        tokens = subject.split(".")
        if len(tokens) not in (5, 6) or tokens[1] != "task":
            return f"unexpected task subject {subject!r}"
        if tokens[2] != tenant or tenant != self.tenant:
            return f"envelope tenant {tenant!r} does not match subject {subject!r} (serving tenant {self.tenant!r})"
        if len(tokens) == 6 and tokens[5] != session_id:
            return f"envelope session {session_id!r} does not match subject {subject!r}"
        if self.session is not None and session_id != self.session:
            return f"envelope session {session_id!r} is not the session {self.session!r} this worker serves"
        return None

    async def handle_inner(self, msg: Msg) -> None:
        try:
            env = json.loads(msg.data)
            if not isinstance(env, dict):
                raise ValueError("not an object")
        except ValueError as e:
            log(f"dropping a malformed task message: {e}")
            await msg.term()
            return
        if env.get("v") != PROTOCOL:
            log(f"dropping a task of unsupported protocol version {env.get('v')!r} (this worker speaks {PROTOCOL})")
            await msg.term()
            return
        try:
            task_id, session_id = str(env["task_id"]), str(env["session_id"])
            tenant, hub = env["tenant"], env["hub"]
            command, payload = env["command_type"], env["payload"]
            max_attempts, remaining_ms = int(env["max_attempts"]), int(env["remaining_ms"])
        except (KeyError, TypeError, ValueError) as e:
            log(f"dropping a task message without {e}")
            await msg.term()
            return
        if not is_tenant(tenant) or not is_token(hub) or not is_token(session_id):
            log(f"dropping task {task_id}: tenant {tenant!r}, hub {hub!r} or session {session_id!r} is not a subject token")
            await msg.term()
            return
        mismatch = self.subject_mismatch(msg.subject, tenant, session_id)
        if mismatch:
            log(f"dropping task {task_id}: {mismatch}")
            await msg.term()
            return
        key = (session_id, task_id)
        attempt = msg.metadata.num_delivered
        if attempt > max_attempts:
            # The outcome is stored first, then the message ended (protocol.md §4): the other
            # order loses the outcome if this worker dies in between.
            await self.report(env, attempt, "exhausted", {
                "success": False, "result": {}, "error": f"{attempt - 1} attempts were lost"})
            await msg.term()
            return
        if env.get("payload_ref") is not None:
            readable, payload = await self.read_payload(msg, env, attempt)
            if not readable:
                return
        at_most_once = env.get("delivery") == "at_most_once"
        if at_most_once:
            await msg.ack_sync()
        deadline = time.monotonic() + remaining_ms / 1000  # my own clock, from receipt
        if key in self.cancelled:
            if not at_most_once:
                await msg.ack()  # cancelled before it ran: no result (protocol.md §5.2)
            return
        if time.monotonic() >= deadline:
            if not at_most_once:
                await msg.term()  # late: not run, no result (protocol.md §5.3)
            return

        # Who holds the task, for the session's admin API (a SHOULD, protocol.md §13.4; core
        # NATS, best effort).
        taken = {"v": PROTOCOL, "worker_id": self.worker_id, "tasks": [{"task_id": task_id, "attempt": attempt}]}
        try:
            await self.nc.publish(f"{self.prefix}.taken.{tenant}.{hub}.{session_id}", json.dumps(taken).encode())
        except Exception as e:  # noqa: BLE001 - best effort, like presence
            log(f"publishing a taken notice failed ({e!r})")

        async def renew_lease() -> None:
            while True:
                await asyncio.sleep(self.lease / 3)
                await msg.in_progress()

        lease = None if at_most_once else asyncio.get_running_loop().create_task(renew_lease())
        stop = threading.Event()  # ends a running bash command: the thread itself cannot be cancelled
        work = asyncio.get_running_loop().create_task(asyncio.to_thread(run_tool, self.ws, command, payload, stop))
        self.running[key] = work
        try:
            result = await asyncio.wait_for(work, max(deadline - time.monotonic(), 0.001))
        except (asyncio.CancelledError, asyncio.TimeoutError):
            stop.set()
            if not at_most_once:
                await msg.ack()  # cancelled or expired: the session no longer wants it
            return
        finally:
            self.running.pop(key, None)
            if lease:
                lease.cancel()
        await self.report(env, attempt, "result", result)
        if not at_most_once:
            await msg.ack()  # only once the result is stored (protocol.md §2.5)

    async def read_payload(self, msg: Msg, env: Dict[str, Any], attempt: int) -> Tuple[bool, Any]:
        """(True, the payload) of a task sent by reference (protocol.md §3.5), or (False, None) when the
        task was given back (NATS unavailable: -NAK) or failed (missing, wrong size, not JSON, too large)."""
        ref, task_id, session_id = env["payload_ref"], env["task_id"], env["session_id"]
        bucket, name = f"{self.sp}_OBJ_{env['tenant']}", f"{session_id}/{task_id}/payload"
        await msg.in_progress()  # reading may take a while: start from a fresh lease
        try:
            if not isinstance(ref, dict) or ref.get("bucket") != bucket or ref.get("name") != name:
                raise ValueError(f"payload_ref {ref!r} is not object {name} of bucket {bucket}")
            size = int(ref["size"])
            if size > self.args.max_object_bytes:
                await self.report(env, attempt, "result", {
                    "success": False, "result": {"error_code": "PayloadTooLarge"},
                    "error": f"payload of {size} bytes is over the limit of {self.args.max_object_bytes}"})
                await msg.term()  # only once the failure is stored
                return False, None
            obj = await (await self.js.object_store(bucket)).get(name)
            data = obj.data or b""
            if len(data) != size:
                raise ValueError(f"object {name} has {len(data)} bytes, not {size}")
            return True, json.loads(data)
        except (ObjectNotFoundError, ValueError, KeyError, TypeError) as e:
            log(f"task {task_id}: unreadable payload: {e}")
            await self.report(env, attempt, "result", {
                "success": False, "result": {"error_code": "InvalidPayload"}, "error": f"unreadable payload: {e}"})
            await msg.term()  # only once the failure is stored
            return False, None
        except Exception as e:  # NATS unavailable: give it back
            log(f"task {task_id}: cannot read its payload now ({e!r}); giving it back")
            await msg.nak(delay=1)
            return False, None

    async def report(self, env: Dict[str, Any], attempt: int, kind: str, result: Dict[str, Any]) -> None:
        """Publishes a result to the hub hosting the task's session (`P.result.<T>.<H>.<S>`)."""
        task_id, session_id, tenant, hub = env["task_id"], env["session_id"], env["tenant"], env["hub"]
        envelope: Dict[str, Any] = {"v": PROTOCOL, "kind": kind, "task_id": task_id, "session_id": session_id,
                                    "attempt": attempt, "worker_id": self.worker_id, "result": result}
        data = json.dumps(envelope).encode()
        if len(data) > self.inline_limit:
            # Too large for a message: the result goes to the tenant's object store, by reference (§3.5).
            value = json.dumps(result.get("result")).encode()
            if len(value) > self.args.max_object_bytes:
                envelope["result"] = {"success": False, "result": {"error_code": "PayloadTooLarge"},
                                      "error": f"result of {len(value)} bytes is over the limit of "
                                               f"{self.args.max_object_bytes}"}
            else:
                bucket, name = f"{self.sp}_OBJ_{tenant}", f"{session_id}/{task_id}/result/{attempt}"
                await (await self.js.object_store(bucket)).put(name, value)
                envelope["result"] = dict(result, result=None)
                envelope["result_ref"] = {"bucket": bucket, "name": name, "size": len(value)}
            data = json.dumps(envelope).encode()
        await self.js.publish(f"{self.prefix}.result.{tenant}.{hub}.{session_id}", data,
                              headers={"Nats-Msg-Id": f"{task_id}:{attempt}"})


async def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", default=os.environ.get("A3S_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--session-id", default=os.environ.get("SESSION_ID"), required="SESSION_ID" not in os.environ,
                   help="the session to serve (this worker attaches to it), or '*' for the pool of --tenant")
    p.add_argument("--tenant", default=os.environ.get("A3S_TENANT", "default"),
                   help="the tenant whose pool a --session-id '*' worker serves (a session's worker learns it)")
    p.add_argument("--prefix", default=os.environ.get("A3S_NATS_PREFIX", "a3s"))
    p.add_argument("--lanes", default=os.environ.get("A3S_LANES", "query"))
    p.add_argument("--workspace", default=os.environ.get("A3S_WORKSPACE", "."))
    p.add_argument("--allow-bash", action="store_true", default=os.environ.get("A3S_ALLOW_BASH", "") not in ("", "0"),
                   help="run `bash` tasks (off by default; also A3S_ALLOW_BASH=1)")
    p.add_argument("--max-file-bytes", type=int, default=int(os.environ.get("A3S_MAX_FILE_BYTES", 16 << 20)),
                   help="the most of one file a tool holds in memory (`edit`, a `read` window)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--worker-id", default=os.environ.get("A3S_WORKER_ID", f"py-{os.getpid()}"))
    p.add_argument("--max-object-bytes", type=int, default=64 << 20,
                   help="largest payload or result to move through the object store")
    w = Worker(p.parse_args(argv))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        w.stopping = True
        w.bell.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await w.start()
    if not w.stopping:
        await w.run()
    w.set_state("draining")
    drain_until = time.monotonic() + 5.0
    while w.busy and time.monotonic() < drain_until:  # let running tasks finish and report
        await asyncio.sleep(0.05)
    await asyncio.sleep(0)  # the draining presence goes out
    await w.nc.flush()
    await w.nc.close()


if __name__ == "__main__":
    asyncio.run(main())

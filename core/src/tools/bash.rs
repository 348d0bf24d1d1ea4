//! `bash {command, timeout_ms?}` → `{stdout, stderr, exit_code, timed_out, truncated}`.
//!
//! Runs `sh -c command` in the workspace root with stdin closed, in a process group of its own.
//!
//! - stdout and stderr are read concurrently, each kept up to the workspace's
//!   [`max_output_bytes`](super::Workspace::max_output_bytes); the rest is read and discarded
//!   (so the command never blocks on a full pipe) and `truncated` is set. Invalid UTF-8 is
//!   replaced.
//! - The kept output is also streamed, chunk by chunk, to the context's output sink.
//! - The command is given until the earlier of `timeout_ms` and the context's deadline. Then
//!   every process it started is killed (SIGKILL), `timed_out` is `true` and `exit_code` `null`.
//! - `exit_code` is `null` as well when the shell was killed by a signal.
//! - When the shell exits, every process it left running is killed, so nothing the command
//!   started outlives the call, and the call returns with the output read so far even if such a
//!   process held stdout or stderr open (what it writes after that is not waited for).
//! - Dropping the future (cancellation) kills every process the command started too.
//!
//! "Every process the command started" is found two ways, neither of which can touch a process
//! the call did not start (nothing is reaped but the shell itself, no `waitpid(-1)`): the
//! shell's process group (`killpg`), and, on Linux, every process whose environment carries
//! this call's `A3S_TASK_SCOPE` value, which every descendant inherits — also after `setsid`,
//! a double fork or a re-parenting to init. Each is opened as a pidfd before its environment is
//! checked, so a recycled process id is never signalled. A descendant that both leaves the
//! process group and starts over with an empty environment (`setsid env -i ...`) escapes; only
//! a cgroup would catch it, and cgroups are not assumed to be available.
//!
//! Errors: a missing or ill-typed `command` or `timeout_ms` (at least 1) is
//! [`Error::InvalidPayload`](crate::Error::InvalidPayload); `bash` disabled on the workspace or
//! `sh` failing to start is [`Error::ToolFailed`](crate::Error::ToolFailed). A non-zero exit is not an error.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

use super::{Args, OutputSink, ToolContext, Workspace, tool_error};
use crate::error::{Error, Result};

/// Size of one read from a pipe.
const CHUNK_BYTES: usize = 8 * 1024;

pub(super) async fn run(args: &Args<'_>, ws: &Workspace, ctx: &ToolContext) -> Result<Value> {
    let command = args.string("command")?;
    let timeout_ms = args.opt_count("timeout_ms", 1)?;
    if command.contains('\0') {
        return Err(Error::invalid_payload(
            "bash: `command` must not contain a NUL byte",
        ));
    }
    if !ws.allows_bash() {
        return Err(tool_error(
            args.tool,
            "bash is disabled on this worker (start it with --allow-bash)",
        ));
    }
    let now = Instant::now();
    let own = timeout_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)));
    let deadline = match (own, ctx.deadline()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if deadline.is_some_and(|d| d <= now) {
        return Ok(outcome(b"", b"", None, true, false));
    }

    let scope = Scope::token();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env(SCOPE_VAR, &scope)
        .current_dir(ws.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| tool_error(args.tool, format!("cannot start sh: {e}")))?;
    // From here on, dropping this future ends every process the command started.
    let scope = Scope::new(child.id(), scope);

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let cap = ws.max_output_bytes();
    let sink = ctx.output();
    let mut out = Capture::new(cap);
    let mut err = Capture::new(cap);
    let mut status: Option<ExitStatus> = None;
    let finished = {
        let work = async {
            let pumps = async {
                tokio::join!(
                    pump(stdout, "stdout", &mut out, sink),
                    pump(stderr, "stderr", &mut err, sink)
                )
            };
            let exited = async {
                status = child.wait().await.ok();
                // End what the shell left behind, so the pipes close.
                scope.end_all_blocking().await;
            };
            tokio::pin!(pumps, exited);
            tokio::select! {
                _ = &mut pumps => exited.await,
                () = &mut exited => {
                    // Whatever still holds a pipe open escaped the sweep: take what is
                    // buffered, then stop waiting for it.
                    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, pumps).await;
                }
            }
        };
        match deadline {
            Some(d) => tokio::time::timeout_at(d, work).await.is_ok(),
            None => {
                work.await;
                true
            }
        }
    };
    let timed_out = !finished && status.is_none();
    if !finished {
        scope.end_all_blocking().await;
    }
    scope.disarm();
    // A child still running was just killed; `kill_on_drop` lets tokio reap it.
    drop(child);
    let exit_code = if timed_out {
        None
    } else {
        status.and_then(|s| s.code())
    };
    Ok(outcome(
        &out.buf,
        &err.buf,
        exit_code,
        timed_out,
        out.truncated || err.truncated,
    ))
}

/// Why a `bash` result counts as a failure (`None` for exit code 0).
pub(super) fn failure(result: &Value) -> Option<String> {
    match result.get("exit_code").and_then(Value::as_i64) {
        Some(0) => None,
        Some(code) => Some(format!("command exited with code {code}")),
        None if result.get("timed_out") == Some(&Value::Bool(true)) => {
            Some("command timed out and was killed".to_string())
        }
        None => Some("command was terminated by a signal".to_string()),
    }
}

fn outcome(
    stdout: &[u8],
    stderr: &[u8],
    exit_code: Option<i32>,
    timed_out: bool,
    truncated: bool,
) -> Value {
    json!({
        "stdout": String::from_utf8_lossy(stdout),
        "stderr": String::from_utf8_lossy(stderr),
        "exit_code": exit_code,
        "timed_out": timed_out,
        "truncated": truncated,
    })
}

/// Reads `reader` to the end, keeping up to the cap and streaming the kept part to `sink`.
async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    stream: &str,
    capture: &mut Capture,
    sink: Option<&OutputSink>,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let kept = capture.push(buf.get(..n).unwrap_or_default());
        if let Some(sink) = sink
            && !kept.is_empty()
        {
            pending.extend_from_slice(kept);
            let text = take_utf8(&mut pending);
            if !text.is_empty() {
                sink(stream, &text);
            }
        }
    }
    if let Some(sink) = sink
        && !pending.is_empty()
    {
        sink(stream, &String::from_utf8_lossy(&pending));
    }
}

/// Takes the decodable text out of `pending` (invalid bytes replaced), leaving an incomplete
/// character at its end for the next chunk.
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let mut text = String::new();
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(&String::from_utf8_lossy(valid));
                match e.error_len() {
                    Some(len) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = after.get(len..).unwrap_or_default();
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    *pending = rest.to_vec();
    text
}

/// One stream's output, up to a cap.
struct Capture {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Keeps what fits of `data` and returns that part.
    fn push<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let room = self.cap.saturating_sub(self.buf.len());
        let (kept, dropped) = data.split_at(data.len().min(room));
        self.buf.extend_from_slice(kept);
        if !dropped.is_empty() {
            self.truncated = true;
        }
        kept
    }
}

/// The environment variable whose value marks every process one `bash` call starts.
pub(crate) const SCOPE_VAR: &str = "A3S_TASK_SCOPE";

/// How long the output is still read after the shell exited and its processes were ended.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// How many passes over the process table one sweep makes at most (a process forking while it
/// is being killed is found by the next pass).
const MAX_SWEEPS: usize = 64;

/// The processes of one `bash` call: ended when dropped, unless disarmed.
struct Scope {
    pgid: Option<i32>,
    /// `A3S_TASK_SCOPE=<token>`, as it appears in `/proc/<pid>/environ`.
    marker: Option<Vec<u8>>,
}

impl Scope {
    /// A fresh value for [`SCOPE_VAR`].
    fn token() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    fn new(pid: Option<u32>, token: String) -> Self {
        Self {
            pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0),
            marker: Some(format!("{SCOPE_VAR}={token}").into_bytes()),
        }
    }

    /// Kills the process group and every process carrying the marker.
    fn end_all(&self) {
        if let Some(pgid) = self.pgid {
            kill_process_group(pgid);
        }
        if let Some(marker) = &self.marker {
            sweep(marker);
        }
    }

    /// [`end_all`](Self::end_all) off the async threads (it reads the process table).
    async fn end_all_blocking(&self) {
        let pgid = self.pgid;
        let marker = self.marker.clone();
        let ended = tokio::task::spawn_blocking(move || {
            Scope { pgid, marker }.end_all();
        })
        .await;
        if ended.is_err() {
            self.end_all();
        }
    }

    fn disarm(mut self) {
        self.pgid = None;
        self.marker = None;
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.end_all();
    }
}

/// Sends SIGKILL to every process whose environment holds `marker` (Linux: `/proc`), pass after
/// pass until none is left. Each process is opened as a pidfd before its environment is read,
/// so the signal reaches the process that was checked or none (never a recycled id).
#[cfg(target_os = "linux")]
fn sweep(marker: &[u8]) {
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let me = std::process::id();
    for _ in 0..MAX_SWEEPS {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut found = false;
        for entry in entries.flatten() {
            let Some(raw) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if u32::try_from(raw) == Ok(me) {
                continue;
            }
            let Some(pid) = Pid::from_raw(raw) else {
                continue;
            };
            let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
                continue;
            };
            // A zombie's environment reads as empty: only live processes match.
            let carries = std::fs::read(format!("/proc/{raw}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker));
            if carries {
                found = true;
                let _ = pidfd_send_signal(&pidfd, Signal::KILL);
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends SIGKILL to every process in group `pgid` (> 0, so never our own group).
#[cfg(unix)]
fn kill_process_group(pgid: i32) {
    if let Some(pgid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
}

/// No process groups here: `kill_on_drop` kills the shell itself.
#[cfg(not(unix))]
fn kill_process_group(_pgid: i32) {}

/// No process table to search here: the process group is all that is ended.
#[cfg(not(target_os = "linux"))]
fn sweep(_marker: &[u8]) {}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    async fn call(ws: &Workspace, v: Value, ctx: &ToolContext) -> Result<Value> {
        run(
            &Args {
                tool: "bash",
                map: v.as_object().unwrap(),
            },
            ws,
            ctx,
        )
        .await
    }

    fn ws() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap().with_bash(true);
        (dir, ws)
    }

    #[tokio::test]
    async fn exit_codes_and_streams() {
        let (_d, ws) = ws();
        let ctx = ToolContext::new();
        let out = call(
            &ws,
            json!({"command": "echo out; echo err >&2; exit 3"}),
            &ctx,
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"stdout": "out\n", "stderr": "err\n", "exit_code": 3, "timed_out": false, "truncated": false})
        );
        assert_eq!(failure(&out).unwrap(), "command exited with code 3");
        let out = call(&ws, json!({"command": "pwd"}), &ctx).await.unwrap();
        assert_eq!(
            out["stdout"].as_str().unwrap().trim_end(),
            ws.root().to_str().unwrap()
        );
        assert_eq!(failure(&out), None);
        let out = call(&ws, json!({"command": "kill -9 $$"}), &ctx)
            .await
            .unwrap();
        assert_eq!(out["exit_code"], Value::Null);
        assert_eq!(out["timed_out"], false);
        assert!(failure(&out).unwrap().contains("signal"));
    }

    #[tokio::test]
    async fn output_is_capped_but_drained() {
        let (_d, ws) = ws();
        let ws = ws.with_max_output_bytes(10);
        let out = call(
            &ws,
            json!({"command": "head -c 300000 /dev/zero | tr '\\0' a; echo done >&2"}),
            &ToolContext::new(),
        )
        .await
        .unwrap();
        assert_eq!(out["stdout"], "a".repeat(10));
        assert_eq!(out["stderr"], "done\n");
        assert_eq!(out["truncated"], true);
        assert_eq!(out["exit_code"], 0);
    }

    #[tokio::test]
    async fn chunks_reach_the_sink() {
        let (_d, ws) = ws();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen2 = Arc::clone(&seen);
        let ctx = ToolContext::new().with_output(Arc::new(move |s: &str, c: &str| {
            seen2.lock().unwrap().push((s.to_string(), c.to_string()));
        }));
        call(
            &ws,
            json!({"command": "printf 'h\\303\\251'; printf x >&2"}),
            &ctx,
        )
        .await
        .unwrap();
        let seen = seen.lock().unwrap();
        let stdout: String = seen
            .iter()
            .filter(|(s, _)| s == "stdout")
            .map(|(_, c)| c.as_str())
            .collect();
        let stderr: String = seen
            .iter()
            .filter(|(s, _)| s == "stderr")
            .map(|(_, c)| c.as_str())
            .collect();
        assert_eq!((stdout.as_str(), stderr.as_str()), ("hé", "x"));
    }

    #[tokio::test]
    async fn past_deadline_does_not_run() {
        let (d, ws) = ws();
        let ctx = ToolContext::new().with_deadline(Instant::now());
        let out = call(&ws, json!({"command": "touch ran"}), &ctx)
            .await
            .unwrap();
        assert_eq!(out["timed_out"], true);
        assert_eq!(out["exit_code"], Value::Null);
        assert!(!d.path().join("ran").exists());
        assert!(failure(&out).unwrap().contains("timed out"));
    }

    #[tokio::test]
    async fn refusals() {
        let (_d, ws) = ws();
        let ctx = ToolContext::new();
        let err = call(&ws, json!({"command": "true"}), &ctx);
        assert!(err.await.is_ok());
        assert_eq!(
            call(&ws, json!({}), &ctx).await.unwrap_err().code(),
            "InvalidPayload"
        );
        assert_eq!(
            call(&ws, json!({"command": "a\0b"}), &ctx)
                .await
                .unwrap_err()
                .code(),
            "InvalidPayload"
        );
        let err = call(&ws, json!({"command": "true", "timeout_ms": 0}), &ctx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`timeout_ms`"), "{err}");
        let ws = ws.with_bash(false);
        let err = call(&ws, json!({"command": "true"}), &ctx)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "ToolFailed");
        assert!(err.to_string().contains("--allow-bash"));
    }

    /// Whether process `pid` is still running (a zombie counts as ended).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// Waits (bounded) until `pid` has ended.
    async fn ended(pid: &str) -> bool {
        for _ in 0..200 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The pid a command wrote to `file` (waiting for it to appear).
    async fn pid_in(file: &std::path::Path) -> String {
        for _ in 0..200 {
            if let Ok(pid) = std::fs::read_to_string(file)
                && !pid.trim().is_empty()
            {
                return pid.trim().to_string();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid in {}", file.display());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn detached_descendants_end_with_the_command() {
        let (d, ws) = ws();
        let ctx = ToolContext::new();
        // setsid (own session and group) and a double fork (re-parented to init), both with
        // stdout and stderr closed so the call does not wait for them.
        let out = call(
            &ws,
            json!({"command": "setsid sh -c 'echo $$ > s.pid; exec sleep 60' >/dev/null 2>&1 </dev/null &\n\
                               (sh -c 'echo $$ > f.pid; exec sleep 60' >/dev/null 2>&1 &) ; \
                               while [ ! -s s.pid ] || [ ! -s f.pid ]; do sleep 0.01; done; echo started"}),
            &ctx,
        )
        .await
        .unwrap();
        assert_eq!(out["stdout"], "started\n");
        assert_eq!(out["exit_code"], 0);
        for file in ["s.pid", "f.pid"] {
            let pid = pid_in(&d.path().join(file)).await;
            assert!(ended(&pid).await, "{file}: process {pid} outlived the call");
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_descendant_holding_stdout_does_not_hold_the_call() {
        let (d, ws) = ws();
        let started = Instant::now();
        let out = call(
            &ws,
            json!({"command": "setsid sh -c 'echo $$ > h.pid; echo from-child; exec sleep 60' &\n\
                               while [ ! -s h.pid ]; do sleep 0.01; done; echo done",
                   "timeout_ms": 30_000}),
            &ToolContext::new(),
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out["exit_code"], 0);
        assert_eq!(out["timed_out"], false);
        let stdout = out["stdout"].as_str().unwrap();
        assert!(stdout.contains("done\n"), "{stdout:?}");
        let pid = pid_in(&d.path().join("h.pid")).await;
        assert!(ended(&pid).await, "process {pid} outlived the call");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn timeout_and_cancel_end_detached_descendants() {
        let (d, ws) = ws();
        let command = |file: &str| json!({"command": format!("setsid sh -c 'echo $$ > {file}; exec sleep 60' >/dev/null 2>&1 & sleep 60")});
        // Timeout.
        let mut args = command("t.pid");
        args["timeout_ms"] = json!(1500);
        let out = call(&ws, args, &ToolContext::new()).await.unwrap();
        assert_eq!(out["timed_out"], true);
        let pid = pid_in(&d.path().join("t.pid")).await;
        assert!(ended(&pid).await, "timeout: process {pid} survived");
        // Cancel: the future is dropped while the command runs.
        let ctx = ToolContext::new();
        let args = command("c.pid");
        let running = call(&ws, args, &ctx);
        let file = d.path().join("c.pid");
        let pid = tokio::select! {
            _ = running => panic!("the command should still run"),
            pid = pid_in(&file) => pid,
        };
        assert!(ended(&pid).await, "cancel: process {pid} survived");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn processes_the_call_did_not_start_are_left_alone() {
        let (_d, ws) = ws();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let out = call(&ws, json!({"command": "true"}), &ToolContext::new())
            .await
            .unwrap();
        assert_eq!(out["exit_code"], 0);
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated child was touched"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn utf8_carry() {
        let mut p = b"a\xc3".to_vec();
        assert_eq!(take_utf8(&mut p), "a");
        assert_eq!(p, b"\xc3");
        p.extend_from_slice(b"\xa9\xffb");
        assert_eq!(take_utf8(&mut p), "é\u{FFFD}b");
        assert!(p.is_empty());
    }

    #[test]
    fn capture_caps() {
        let mut c = Capture::new(3);
        assert_eq!(c.push(b"ab"), b"ab");
        assert_eq!(c.push(b"cd"), b"c");
        assert_eq!(c.push(b"e"), b"");
        assert!(c.truncated);
        assert_eq!(c.buf, b"abc");
    }
}

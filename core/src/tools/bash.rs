//! `bash {command, timeout_ms?}` → `{stdout, stderr, exit_code, timed_out, truncated}`.
//!
//! Runs `sh -c command` in the workspace root with stdin closed, in a process group of its own.
//!
//! - stdout and stderr are read concurrently, each kept up to the workspace's
//!   [`max_output_bytes`](super::Workspace::max_output_bytes); the rest is read and discarded
//!   (so the command never blocks on a full pipe) and `truncated` is set. Invalid UTF-8 is
//!   replaced.
//! - The kept output is also streamed, chunk by chunk, to the context's output sink.
//! - The command is given until the earlier of `timeout_ms` and the context's deadline. Then its
//!   whole process group is killed (SIGKILL), `timed_out` is `true` and `exit_code` `null`.
//! - `exit_code` is `null` as well when the shell was killed by a signal.
//! - When the shell exits, whatever it left running in its process group is killed, so no
//!   background process outlives the call (use `setsid` to really detach one).
//! - Dropping the future (cancellation) kills the process group too.
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

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
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
    // From here on, dropping this future kills the whole group.
    let group = GroupKill::new(child.id());

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let cap = ws.max_output_bytes();
    let sink = ctx.output();
    let mut out = Capture::new(cap);
    let mut err = Capture::new(cap);
    let mut status: Option<ExitStatus> = None;
    let finished = {
        let wait = async {
            status = child.wait().await.ok();
            // Sweep what the shell left behind, so the pipes close.
            group.kill();
        };
        let work = async {
            tokio::join!(
                wait,
                pump(stdout, "stdout", &mut out, sink),
                pump(stderr, "stderr", &mut err, sink)
            );
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
        group.kill();
    }
    group.disarm();
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

/// Kills a process group with SIGKILL when dropped, unless disarmed.
struct GroupKill {
    pgid: Option<i32>,
}

impl GroupKill {
    fn new(pid: Option<u32>) -> Self {
        Self {
            pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0),
        }
    }

    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            kill_process_group(pgid);
        }
    }

    fn disarm(mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to every process in group `pgid` (> 0).
#[cfg(unix)]
#[allow(unsafe_code)]
fn kill_process_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: `killpg` takes plain integers and touches no memory of ours; it only sends a
        // signal. `pgid > 0` rules out 0 (our own group) and negative values.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// No process groups here: `kill_on_drop` kills the shell itself.
#[cfg(not(unix))]
fn kill_process_group(_pgid: i32) {}

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
        let ws = Workspace::new(dir.path()).unwrap();
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

//! Tracing a task across processes: W3C trace context and the spans of a task's life.
//!
//! Every task has a trace. Its trace id and root span id are derived from the session id and
//! the task id ([`TraceContext::for_task`]), so the scheduler and the broker agree on them
//! without passing anything around, and every (re)publish of a task carries the same context.
//! Over NATS the message of a task whose span is enabled carries it in a W3C `traceparent`
//! header; a worker makes its run span a child of it, so one trace joins the session and the
//! worker.
//!
//! Spans and events (target `a3s::task`, level DEBUG, so they cost nothing unless enabled,
//! e.g. `A3S_LOG=info,a3s::task=debug`):
//!
//! | name | side | when | fields |
//! | --- | --- | --- | --- |
//! | span `a3s.task` | session | a slot is given (schedule) until the outcome (complete) | `task_id`, `lane`, `command`, `queue_wait_us`, `trace_id`, `span_id` |
//! | event `dispatched` | session | an attempt starts: run here, claimable, or published | `attempt`, `mode` |
//! | event `claimed` | session | an in-process worker claims it | `attempt` |
//! | event `completed` | session | the task ends | `outcome`, `latency_us` |
//! | span `a3s.task.run` | both | a handler or worker runs an attempt | `task_id`, `lane`, `command`, `attempt`, `trace_id`, `parent_span_id`, `span_id` |
//!
//! With the `otel` feature and a `tracing-opentelemetry` layer installed, the session's task
//! span gets real OpenTelemetry ids instead of the derived ones; they are remembered while the
//! task lives, so the `traceparent` header carries them and the worker's spans are exported as
//! its children.

use std::fmt;

/// The NATS (and HTTP) header that carries a [`TraceContext`].
pub const TRACEPARENT: &str = "traceparent";

/// The tracing target of the task spans and events.
pub const TARGET: &str = "a3s::task";

/// FNV-1a's standard offset basis (other seeds give independent hashes of the same bytes).
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a of `bytes` from `seed`: the stable hash behind route tokens, batch message ids
/// and trace ids (the same bytes give the same value in every process and version).
pub(crate) fn fnv1a(seed: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A W3C trace context (`traceparent`): a trace id, the id of the parent span, and whether the
/// trace is sampled.
///
/// # Examples
///
/// ```
/// use a3s_code_core::observe::TraceContext;
/// let cx = TraceContext::for_task("session-1", "0a1b2c3d-7");
/// let header = cx.to_string();
/// assert_eq!(TraceContext::parse(&header), Some(cx));
/// assert_eq!(header.len(), 55);
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-0000000000000001-01").is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

impl TraceContext {
    /// The context of a task: its trace id and the id of its root span, derived from the
    /// session id and the task id (the same inputs always give the same context).
    pub fn for_task(session_id: &str, task_id: &str) -> Self {
        let a = task_hash(FNV_OFFSET, session_id, task_id);
        let b = task_hash(0x6c62_272e_07bb_0142, session_id, task_id);
        let c = task_hash(0x9e37_79b9_7f4a_7c15, session_id, task_id);
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&a.to_be_bytes());
        trace_id[8..].copy_from_slice(&b.to_be_bytes());
        Self {
            trace_id: nonzero(trace_id),
            span_id: nonzero(c.to_be_bytes()),
            sampled: true,
        }
    }

    /// Parses a `traceparent` header value (version `00`, or a later version's first four
    /// fields). `None` for anything malformed, or all-zero ids.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        decode_hex(trace, &mut trace_id)?;
        decode_hex(span, &mut span_id)?;
        let mut flag = [0u8; 1];
        decode_hex(flags, &mut flag)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flag[0] & 1 == 1,
        })
    }

    /// A child: the same trace, a new random span id (the span of whoever received this
    /// context).
    pub fn child(&self) -> Self {
        let random = uuid::Uuid::new_v4().into_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&random[..8]);
        Self {
            span_id: nonzero(span_id),
            ..*self
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// Whether the trace is sampled (flag `01`).
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    #[cfg(feature = "otel")]
    pub(crate) fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    #[cfg(feature = "otel")]
    pub(crate) fn span_id_bytes(&self) -> [u8; 8] {
        self.span_id
    }
}

/// `00-<trace id>-<span id>-<flags>`, the `traceparent` header value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{}",
            self.trace_id(),
            self.span_id(),
            if self.sampled { "01" } else { "00" }
        )
    }
}

/// The trace context of a NATS message's `traceparent` header, if it has a valid one.
#[cfg(feature = "nats")]
pub(crate) fn from_headers(headers: Option<&async_nats::HeaderMap>) -> Option<TraceContext> {
    TraceContext::parse(headers?.get(TRACEPARENT)?.as_str())
}

/// A 64-bit id from a session and task id: FNV-1a from `seed`, then mixed.
fn task_hash(seed: u64, session_id: &str, task_id: &str) -> u64 {
    let bytes = session_id
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(task_id.bytes());
    let mut h = fnv1a(seed, bytes);
    // A final avalanche (splitmix64), so close inputs give unrelated ids.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    if !is_hex(s) || s.len() != out.len() * 2 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What [`run_span`] records of the attempt (the task's fields, so this module needs no task
/// type: it sits below `task`).
pub(crate) struct RunOf<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) lane: crate::lane::SessionLane,
    pub(crate) command: &'a str,
    pub(crate) attempt: u32,
    /// The task's trace context, computed only when the span is recorded.
    pub(crate) context: &'a dyn Fn() -> TraceContext,
}

/// The span of one attempt run by a handler or worker: a child of `parent` (the session's task
/// span, for a handler in the session's process), else of the task's trace context (a worker).
pub(crate) fn run_span(task: RunOf<'_>, parent: Option<&tracing::Span>) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "a3s::task",
        parent: parent.and_then(tracing::Span::id),
        "a3s.task.run",
        task_id = %task.task_id,
        lane = task.lane.as_str(),
        command = %task.command,
        attempt = task.attempt,
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let cx = (task.context)();
        span.record("trace_id", cx.trace_id());
        span.record("parent_span_id", cx.span_id());
        if parent.is_none() {
            otel::set_parent(&span, &cx);
        }
        let me = otel::context_of(&span).unwrap_or_else(|| cx.child());
        span.record("span_id", me.span_id());
    }
    span
}

/// The session's span of a task, from its slot to its outcome: the root of the task's trace.
pub(crate) fn task_span(
    session_id: &str,
    task_id: impl FnOnce() -> String,
    lane: crate::lane::SessionLane,
    command: &str,
    queue_wait: std::time::Duration,
) -> tracing::Span {
    // A root: it is created wherever a slot frees up, inside unrelated spans.
    let span = tracing::debug_span!(
        target: "a3s::task",
        parent: None,
        "a3s.task",
        task_id = tracing::field::Empty,
        lane = lane.as_str(),
        command = command,
        queue_wait_us = queue_wait.as_micros() as u64,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let task_id = task_id();
        // With OpenTelemetry, the span's own ids (and the broker sends those); else the ids
        // derived from the task.
        let cx = match otel::context_of(&span) {
            Some(cx) => {
                otel::remember(session_id, &task_id, cx);
                cx
            }
            None => TraceContext::for_task(session_id, &task_id),
        };
        span.record("task_id", task_id.as_str());
        span.record("trace_id", cx.trace_id());
        span.record("span_id", cx.span_id());
    }
    span
}

/// The context of a task of this process: its OpenTelemetry span's, else the derived one.
pub(crate) fn task_context(session_id: &str, task_id: &str) -> TraceContext {
    otel::lookup(session_id, task_id).unwrap_or_else(|| TraceContext::for_task(session_id, task_id))
}

/// A task's span closed: forget its OpenTelemetry context.
pub(crate) fn task_ended(session_id: &str, task_id: impl FnOnce() -> String) {
    otel::forget(session_id, task_id);
}

#[cfg(feature = "otel")]
pub(crate) mod otel {
    //! OpenTelemetry glue. With a `tracing-opentelemetry` layer installed, the session's task
    //! span has real OpenTelemetry ids: they are remembered while the task lives, so the broker
    //! puts them in the `traceparent` header and the worker's span becomes its child.
    use std::collections::HashMap;
    use std::sync::LazyLock;

    use super::TraceContext;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use parking_lot::Mutex;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// (session id, task id) → the task span's context, while the task is live.
    static LIVE: LazyLock<Mutex<HashMap<(String, String), TraceContext>>> =
        LazyLock::new(Default::default);

    fn remote(cx: &TraceContext) -> opentelemetry::Context {
        let sc = SpanContext::new(
            TraceId::from_bytes(cx.trace_id_bytes()),
            SpanId::from_bytes(cx.span_id_bytes()),
            if cx.is_sampled() {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(sc)
    }

    /// Makes `span` a child of `cx` in OpenTelemetry.
    pub(crate) fn set_parent(span: &tracing::Span, cx: &TraceContext) {
        let _ = span.set_parent(remote(cx));
    }

    /// The OpenTelemetry ids of `span`, when an OpenTelemetry layer gave it some.
    pub(crate) fn context_of(span: &tracing::Span) -> Option<TraceContext> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| TraceContext {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            sampled: sc.is_sampled(),
        })
    }

    pub(crate) fn remember(session_id: &str, task_id: &str, cx: TraceContext) {
        LIVE.lock()
            .insert((session_id.to_owned(), task_id.to_owned()), cx);
    }

    pub(crate) fn lookup(session_id: &str, task_id: &str) -> Option<TraceContext> {
        let live = LIVE.lock();
        if live.is_empty() {
            return None;
        }
        live.get(&(session_id.to_owned(), task_id.to_owned()))
            .copied()
    }

    pub(crate) fn forget(session_id: &str, task_id: impl FnOnce() -> String) {
        let mut live = LIVE.lock();
        if !live.is_empty() {
            live.remove(&(session_id.to_owned(), task_id()));
        }
    }
}

#[cfg(not(feature = "otel"))]
pub(crate) mod otel {
    //! Without the `otel` feature: the derived ids only.
    use super::TraceContext;

    pub(crate) fn set_parent(_span: &tracing::Span, _cx: &TraceContext) {}

    pub(crate) fn context_of(_span: &tracing::Span) -> Option<TraceContext> {
        None
    }

    pub(crate) fn remember(_session_id: &str, _task_id: &str, _cx: TraceContext) {}

    pub(crate) fn lookup(_session_id: &str, _task_id: &str) -> Option<TraceContext> {
        None
    }

    pub(crate) fn forget(_session_id: &str, _task_id: impl FnOnce() -> String) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let cx = TraceContext::for_task("s", "t-1");
        assert_eq!(cx, TraceContext::for_task("s", "t-1"));
        assert_ne!(cx.trace_id(), TraceContext::for_task("s", "t-2").trace_id());
        assert_ne!(
            cx.trace_id(),
            TraceContext::for_task("s2", "t-1").trace_id()
        );
        let header = cx.to_string();
        assert!(header.starts_with("00-") && header.ends_with("-01"));
        assert_eq!(TraceContext::parse(&header), Some(cx));
        let known = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(known).unwrap();
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id(), "00f067aa0ba902b7");
        assert!(parsed.is_sampled());
        assert_eq!(parsed.to_string(), known);
        // A later version may append fields; 00 may not.
        assert!(TraceContext::parse(&format!("01{}-extra", &known[2..])).is_some());
        assert!(TraceContext::parse(&format!("{known}-extra")).is_none());
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn children_keep_the_trace() {
        let cx = TraceContext::for_task("s", "t");
        let child = cx.child();
        assert_eq!(child.trace_id(), cx.trace_id());
        assert_ne!(child.span_id(), cx.span_id());
    }
}

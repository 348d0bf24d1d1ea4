//! Version 2 of the wire protocol: subjects, stream and consumer names, and the JSON envelopes.
//! `docs/protocol.md` is the normative description; these types implement it, and
//! `tests/fixtures/v2/wire/` holds one canonical example of each envelope.
//!
//! Every envelope carries `"v": 2`. A message with another major version, or that is not valid
//! JSON of the expected shape, is rejected with [`Error::UnsupportedProtocol`] or
//! [`Error::InvalidPayload`]; receivers log the reason and drop the message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::queue::{RetryPolicy, SessionLane};
use crate::task::{ExternalTask, ExternalTaskResult};

/// The protocol major version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// The route token of tasks without required labels.
pub const ANY_ROUTE: &str = "_";

/// How a worker acknowledges a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Acknowledge after the result is stored: a crashed worker's task runs again elsewhere.
    #[default]
    AtLeastOnce,
    /// Acknowledge before running: a crash fails the task (by its timeout) instead of running it
    /// twice. For side effects that must not repeat.
    AtMostOnce,
}

/// Subject, stream and consumer names under one prefix (default `a3s`), version 2.
///
/// Tasks live in one work-queue stream per **tenant** (`<P>_TASKS_<tenant>`), so a worker
/// credential can be confined to one tenant's stream, consumers and acknowledgements. Pool
/// workers share one consumer per (tenant, lane, route); workers of one session pull from that
/// session's own consumers. Results of every session go to one stream, addressed to the
/// process (the **hub**) that hosts the session, which reads them with one consumer.
///
/// # Examples
///
/// ```
/// use a3s_code_core::broker::wire::Names;
/// use a3s_code_core::queue::SessionLane;
/// let n = Names::new("a3s").unwrap();
/// assert_eq!(n.tasks_stream("acme"), "A3S_TASKS_acme");
/// assert_eq!(n.pool_subject("acme", SessionLane::Query, "_"), "a3s.task.acme.query._");
/// assert_eq!(n.pool_consumer(SessionLane::Query, "_"), "pool_query__");
/// assert_eq!(n.session_subject("acme", SessionLane::Query, "_", "s1"), "a3s.task.acme.query._.s1");
/// assert_eq!(n.session_consumer("s1", SessionLane::Query, "_"), "s_s1_query__");
/// assert_eq!(n.result_subject("acme", "h1", "s1"), "a3s.result.acme.h1.s1");
/// assert_eq!(n.hub_results_filter("h1"), "a3s.result.*.h1.*");
/// assert_eq!(n.objects_bucket("acme"), "A3S_OBJ_acme");
/// assert_eq!(n.payload_object("s1", "abc-1"), "s1/abc-1/payload");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix`: one subject token of letters, digits, `-` and `_`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty or invalid prefix.
    pub fn new(prefix: &str) -> Result<Self> {
        if !is_token(prefix) {
            return Err(Error::invalid_config(format!(
                "NATS prefix {prefix:?} must be 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn stream(&self, what: &str) -> String {
        format!(
            "{}_{what}",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The work-queue stream of one tenant's tasks (subjects [`all_tasks`](Self::all_tasks)).
    pub fn tasks_stream(&self, tenant: &str) -> String {
        self.stream(&format!("TASKS_{tenant}"))
    }

    /// Every task subject of a tenant: `<prefix>.task.<tenant>.>`.
    pub fn all_tasks(&self, tenant: &str) -> String {
        format!("{}.task.{tenant}.>", self.prefix)
    }

    /// Where a session publishes a task for the tenant's pool workers.
    pub fn pool_subject(&self, tenant: &str, lane: SessionLane, route: &str) -> String {
        format!("{}.task.{tenant}.{lane}.{route}", self.prefix)
    }

    /// Where a session publishes a task for workers attached to it (`--session-id S`).
    pub fn session_subject(
        &self,
        tenant: &str,
        lane: SessionLane,
        route: &str,
        session: &str,
    ) -> String {
        format!("{}.task.{tenant}.{lane}.{route}.{session}", self.prefix)
    }

    /// The consumer a tenant's pool workers share for one lane and route (on the tenant's
    /// tasks stream).
    pub fn pool_consumer(&self, lane: SessionLane, route: &str) -> String {
        format!("pool_{lane}_{route}")
    }

    /// The consumer the workers attached to one session share for one lane and route.
    pub fn session_consumer(&self, session: &str, lane: SessionLane, route: &str) -> String {
        format!("s_{session}_{lane}_{route}")
    }

    /// The work-queue stream of every result (subjects `<prefix>.result.>`).
    pub fn results_stream(&self) -> String {
        self.stream("RESULTS")
    }

    /// Every result subject.
    pub fn all_results(&self) -> String {
        format!("{}.result.>", self.prefix)
    }

    /// Where workers publish the results of a session hosted by `hub`.
    pub fn result_subject(&self, tenant: &str, hub: &str, session: &str) -> String {
        format!("{}.result.{tenant}.{hub}.{session}", self.prefix)
    }

    /// The filter of a hub's results consumer: its sessions' results, every tenant.
    pub fn hub_results_filter(&self, hub: &str) -> String {
        format!("{}.result.*.{hub}.*", self.prefix)
    }

    /// The durable consumer a hub reads its sessions' results with.
    pub fn hub_consumer(&self, hub: &str) -> String {
        format!("hub_{hub}")
    }

    /// Core NATS: workers stream a task's output chunks to its session.
    pub fn output_subject(&self, tenant: &str, hub: &str, session: &str) -> String {
        format!("{}.output.{tenant}.{hub}.{session}", self.prefix)
    }

    /// What a hub subscribes to for its sessions' output.
    pub fn hub_output_filter(&self, hub: &str) -> String {
        format!("{}.output.*.{hub}.*", self.prefix)
    }

    /// Core NATS: sessions ring it when a tenant's tasks are waiting (`*` for every tenant).
    pub fn ready_subject(&self, tenant: &str) -> String {
        format!("{}.ready.{tenant}", self.prefix)
    }

    /// Core NATS: sessions push cancels of a tenant's tasks (`*` for every tenant).
    pub fn cancel_subject(&self, tenant: &str) -> String {
        format!("{}.cancel.{tenant}", self.prefix)
    }

    /// Core NATS request: a worker of one session asks its session's hub to attach, under the
    /// session's tenant, or [`FLEET`] when the worker does not know it (a credential confined to
    /// a tenant may publish only under its own). Hubs listen on `<prefix>.attach.*.*`.
    pub fn attach_subject(&self, tenant: &str, session: &str) -> String {
        format!("{}.attach.{tenant}.{session}", self.prefix)
    }

    /// Core NATS: a worker's presence, under its tenant ([`FLEET`] for a worker of every
    /// tenant); `*` / `>` to listen.
    pub fn presence_subject(&self, tenant: &str, worker: &str) -> String {
        format!("{}.presence.{tenant}.{worker}", self.prefix)
    }

    /// Where a session publishes its dead letters.
    pub fn dlq_subject(&self, tenant: &str, session: &str) -> String {
        format!("{}.dlq.{tenant}.{session}", self.prefix)
    }

    /// The dead-letter stream (subjects `<prefix>.dlq.>`, limits retention, browsable).
    pub fn dlq_stream(&self) -> String {
        self.stream("DLQ")
    }

    /// Every dead-letter subject.
    pub fn all_dlq(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// Core NATS: Hybrid lanes publish their lifecycle events.
    pub fn event_subject(&self, tenant: &str, session: &str, lane: SessionLane) -> String {
        format!("{}.event.{tenant}.{session}.{lane}", self.prefix)
    }

    /// The object store bucket of one tenant's payloads and results too large for a message
    /// (its stream is `OBJ_<bucket>`).
    pub fn objects_bucket(&self, tenant: &str) -> String {
        self.stream(&format!("OBJ_{tenant}"))
    }

    /// The object a session stores a task's large payload under: `<session>/<task_id>/payload`.
    pub fn payload_object(&self, session: &str, task_id: &str) -> String {
        format!("{session}/{task_id}/payload")
    }

    /// The object a worker stores a large result under: `<session>/<task_id>/result/<attempt>`.
    pub fn result_object(&self, session: &str, task_id: &str, attempt: u32) -> String {
        format!("{session}/{task_id}/result/{attempt}")
    }

    /// Core NATS: a worker tells a session which of its tasks it took ([`TakenNotice`]).
    pub fn taken_subject(&self, tenant: &str, hub: &str, session: &str) -> String {
        format!("{}.taken.{tenant}.{hub}.{session}", self.prefix)
    }

    /// What a hub subscribes to for its sessions' taken notices.
    pub fn hub_taken_filter(&self, hub: &str) -> String {
        format!("{}.taken.*.{hub}.*", self.prefix)
    }

    /// Core NATS request: read requests about a tenant's sessions hosted by one hub
    /// ([`AdminRequest`]); viewers may publish here.
    pub fn view_subject(&self, tenant: &str, hub: &str) -> String {
        format!("{}.view.{tenant}.{hub}", self.prefix)
    }

    /// Core NATS request: actions on a tenant's sessions hosted by one hub; admins only.
    pub fn admin_subject(&self, tenant: &str, hub: &str) -> String {
        format!("{}.admin.{tenant}.{hub}", self.prefix)
    }

    /// Core NATS: a roll call; every hub hosting sessions of `tenant` ([`FLEET`]: of any tenant)
    /// answers with its [`Announcement`]s on the reply subject.
    pub fn hello_subject(&self, tenant: &str) -> String {
        format!("{}.hello.{tenant}", self.prefix)
    }

    /// Core NATS: a hub's periodic [`Announcement`] for one tenant (`*` to listen).
    pub fn announce_subject(&self, tenant: &str, hub: &str) -> String {
        format!("{}.announce.{tenant}.{hub}", self.prefix)
    }
}

/// The tenant of sessions that name none.
pub const DEFAULT_TENANT: &str = "default";

/// The presence token of a worker that serves every tenant (the shared fleet).
pub const FLEET: &str = "_";

/// Whether `s` can name a tenant: a subject token ([`is_token`]) that does not start with `_`
/// (reserved, e.g. [`FLEET`]).
pub fn is_tenant(s: &str) -> bool {
    is_token(s) && !s.starts_with('_')
}

/// Whether `s` can be one subject token: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The route token of a set of required labels: [`ANY_ROUTE`] for none, else `r` followed by the
/// 16 lowercase hex digits of the 64-bit FNV-1a hash of `k1=v1,k2=v2,...` (keys sorted, UTF-8).
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use a3s_code_core::broker::wire::route_token;
/// assert_eq!(route_token(&BTreeMap::new()), "_");
/// let eu = BTreeMap::from([("region".to_owned(), "eu-west".to_owned())]);
/// assert_eq!(route_token(&eu), "rcfd762ef7b417dea");
/// ```
pub fn route_token(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return ANY_ROUTE.to_owned();
    }
    let canonical = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    format!("r{:016x}", fnv1a(FNV_OFFSET, canonical.bytes()))
}

pub(crate) use crate::trace::{FNV_OFFSET, fnv1a};

/// Whether a worker with `worker_labels` may run a task that requires `required`.
pub fn labels_match(
    required: &BTreeMap<String, String>,
    worker_labels: &BTreeMap<String, String>,
) -> bool {
    required
        .iter()
        .all(|(k, v)| worker_labels.get(k) == Some(v))
}

/// A reference to a payload or result too large for a message, kept in the JetStream object
/// store (`docs/protocol.md` §3.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// The object store bucket: [`Names::objects_bucket`] (one per tenant).
    pub bucket: String,
    /// The object's name: [`Names::payload_object`] or [`Names::result_object`].
    pub name: String,
    /// Its size in bytes (the UTF-8 JSON of the value).
    pub size: u64,
}

/// A task as published on [`Names::pool_subject`] or [`Names::session_subject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    /// Protocol major version: 2.
    pub v: u32,
    /// The session's tenant: the token after `task.` in the subject.
    pub tenant: String,
    /// The hub (session process) results and output go to: [`Names::result_subject`].
    pub hub: String,
    /// The task (its fields at the top level, `remaining_ms` as of publication).
    #[serde(flatten)]
    pub task: ExternalTask,
    /// Attempts allowed in all; a delivery beyond it is reported as exhausted, not run.
    pub max_attempts: u32,
    /// The session's retry policy: the delay a worker asks for when it gives a task back.
    pub retry: RetryPolicy,
    /// When the worker acknowledges.
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Labels a worker must have to run the task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where the payload is when it was too large to inline (then `payload` is null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_ref: Option<ObjectRef>,
}

/// What a result message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    /// The task ran; `result` holds its outcome (which may report `success: false`).
    Result,
    /// The task's deliveries exceeded `max_attempts`: it was not run again.
    Exhausted,
}

/// A result as published on [`Names::result_subject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEnvelope {
    /// Protocol major version: 2.
    pub v: u32,
    /// What this reports.
    pub kind: ResultKind,
    /// The task.
    pub task_id: String,
    /// Its session.
    pub session_id: String,
    /// The delivery count of the attempt that produced this (JetStream's `delivered`).
    pub attempt: u32,
    /// Who ran it.
    #[serde(default)]
    pub worker_id: String,
    /// The outcome (for `exhausted`: `success: false` and the reason in `error`).
    pub result: ExternalTaskResult,
    /// Where the result is when it was too large to inline (then `result.result` is null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<ObjectRef>,
}

/// The `kind` of a [`ResultBatch`]: always `"batch"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// Several results in one message.
    #[default]
    Batch,
}

/// Several results of one session in one message on its [`Names::result_subject`]: a worker that
/// finishes many tasks at once stores them with one publish (one message, one acknowledgement
/// for the broker instead of one per task). Optional for workers; sessions accept both forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultBatch {
    /// Protocol major version: 2.
    pub v: u32,
    /// `"batch"`.
    pub kind: BatchKind,
    /// The session of every result in it.
    pub session_id: String,
    /// Result envelopes, each as it would be published alone.
    pub results: Vec<ResultEnvelope>,
}

impl ResultBatch {
    /// How [`encode_parts`](Self::encode_parts) begins a batch (version 2).
    const PREFIX: &[u8] = br#"{"v":2,"kind":"batch","session_id":"#;

    /// The bytes of a batch of already encoded result envelopes (no re-encoding).
    pub fn encode_parts(session_id: &str, parts: &[&[u8]]) -> Vec<u8> {
        let session = serde_json::to_string(session_id).expect("strings serialize");
        let len = parts.iter().map(|p| p.len() + 1).sum::<usize>() + session.len() + Self::OVERHEAD;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(Self::PREFIX);
        out.extend_from_slice(session.as_bytes());
        out.extend_from_slice(br#","results":["#);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Bytes a batch adds around its results, besides the session id and one comma per result.
    pub const OVERHEAD: usize = 64;
}

/// Decodes what a worker published on a results subject: one [`ResultEnvelope`] or a
/// [`ResultBatch`] of them (every one of this version).
///
/// # Errors
///
/// As [`decode`], for the message or any result in a batch.
pub fn decode_results(bytes: &[u8]) -> Result<Vec<ResultEnvelope>> {
    let batch = |bytes: &[u8]| -> Result<Vec<ResultEnvelope>> {
        let b = decode::<ResultBatch>(bytes)?;
        if let Some(bad) = b.results.iter().find(|r| r.v != PROTOCOL_VERSION) {
            return Err(Error::UnsupportedProtocol {
                version: bad.v.to_string(),
                supported: PROTOCOL_VERSION.to_string(),
            });
        }
        Ok(b.results)
    };
    // How this build writes batches; anything else is told apart by its `kind`.
    if bytes.starts_with(ResultBatch::PREFIX) {
        return batch(bytes);
    }
    decode::<ResultEnvelope>(bytes)
        .map(|r| vec![r])
        .or_else(|err| {
            #[derive(Deserialize)]
            struct Kind {
                kind: Option<Value>,
            }
            match serde_json::from_slice::<Kind>(bytes) {
                Ok(Kind { kind: Some(k) }) if k == "batch" => batch(bytes),
                _ => Err(err),
            }
        })
}

/// A doorbell on [`Names::ready_subject`]: a tenant's tasks are waiting in one lane and route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doorbell {
    /// Protocol major version: 2.
    pub v: u32,
    /// The lane.
    pub lane: SessionLane,
    /// The route token.
    pub route: String,
    /// The labels behind the route token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Set when the tasks wait in this session's own consumer (workers attached to it), absent
    /// for the tenant's pool consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The tenant's weight (its share of a saturated fleet), as its sessions last declared it.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

/// A cancel on [`Names::cancel_subject`]: stop the task if it runs, drop it otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelNotice {
    /// Protocol major version: 2.
    pub v: u32,
    /// The task.
    pub task_id: String,
    /// Its session.
    pub session_id: String,
    /// `cancelled`, `timed_out` or `closed`.
    pub reason: String,
}

/// The session closed, on [`Names::cancel_subject`] after the cancels of its tasks: a worker
/// serving that session alone has nothing more to do (`a3s-code worker --exit-when-closed`
/// exits). It has no `task_id`, so a worker that reads only cancels ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClosed {
    /// Protocol major version: 2.
    pub v: u32,
    /// Always [`SessionClosed::EVENT`].
    pub event: String,
    /// The session.
    pub session_id: String,
}

impl SessionClosed {
    /// The `event` of a session-closed notice.
    pub const EVENT: &'static str = "session_closed";

    /// The notice that `session_id` closed.
    pub fn new(session_id: &str) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            event: Self::EVENT.to_owned(),
            session_id: session_id.to_owned(),
        }
    }
}

/// An output chunk on [`Names::output_subject`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// Protocol major version: 2.
    pub v: u32,
    /// The task.
    pub task_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text.
    pub chunk: String,
    /// 0, 1, 2... per task, so receivers can spot gaps (core NATS is at most once).
    pub seq: u64,
}

/// A message of the protocol: it carries its major version (`"v"`).
pub trait Envelope: for<'de> Deserialize<'de> {
    /// The `v` it was decoded with.
    fn version(&self) -> u32;
}

macro_rules! envelopes {
    ($($t:ty),*) => {$(
        impl Envelope for $t {
            fn version(&self) -> u32 {
                self.v
            }
        }
    )*};
}
/// A worker took tasks of one session (core NATS on [`Names::taken_subject`], a SHOULD): the
/// admin API shows who holds each in-flight task. One notice per session and batch of claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenNotice {
    /// Protocol major version: 2.
    pub v: u32,
    /// The worker.
    pub worker_id: String,
    /// The tasks it took, with the attempt of each (the delivery count).
    pub tasks: Vec<Taken>,
}

/// One task of a [`TakenNotice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    /// The task.
    pub task_id: String,
    /// The attempt it took.
    pub attempt: u32,
}

/// A process hosting sessions of a tenant, as it announces itself on
/// [`Names::announce_subject`] every `interval_s` and answers a roll call
/// ([`Names::hello_subject`]): one announcement per process and tenant, however many sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// Protocol major version: 2.
    pub v: u32,
    /// The process's hub id (the token of its result, view and admin subjects).
    pub hub: String,
    /// The tenant.
    pub tenant: String,
    /// Sessions of that tenant it hosts now (0 in its last announcement).
    pub sessions: usize,
    /// Worker slots they need now, per lane and required label set: backlog plus tasks out
    /// at workers, External lanes only (the sum of their `a3s_lane_worker_slots_needed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demand: Vec<Demand>,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its software version.
    pub version: String,
    /// Seconds between two announcements: it is gone after three missed ones.
    pub interval_s: u64,
}

/// Worker slots needed for one lane and label set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// The lane.
    pub lane: SessionLane,
    /// Required labels, `k=v,k=v` sorted; empty for none.
    #[serde(default)]
    pub labels: String,
    /// Slots needed.
    pub slots: usize,
}

/// A request of the admin API, on [`Names::view_subject`] (reads) or
/// [`Names::admin_subject`] (`act`), answered with an [`AdminReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminRequest {
    /// Protocol major version: 2.
    pub v: u32,
    /// What it asks.
    #[serde(flatten)]
    pub op: AdminOp,
}

/// What an [`AdminRequest`] asks (`"op"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminOp {
    /// A page of the hub's sessions of the subject's tenant, by session id.
    Sessions {
        /// The last session id of the previous page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many.
        limit: usize,
    },
    /// A session's lanes and figures.
    Session {
        /// The session.
        session_id: String,
    },
    /// A page of a session's tasks.
    Tasks {
        /// The session.
        session_id: String,
        /// Which.
        query: crate::queue::inspect::TaskQuery,
    },
    /// A page of a session's dead letters.
    DeadLetters {
        /// The session.
        session_id: String,
        /// Where the previous page ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        /// At most this many.
        limit: usize,
    },
    /// An action (on the admin subject only).
    Act {
        /// The session.
        session_id: String,
        /// The action.
        action: crate::queue::inspect::Action,
        /// Who asks (a user or token name), logged by the session.
        #[serde(default)]
        actor: String,
    },
}

/// The answer to an [`AdminRequest`]: `{"v": 2, "ok": <value>}` or
/// `{"v": 2, "error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminReply {
    /// Protocol major version: 2.
    pub v: u32,
    /// The answer (its shape depends on the op).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    /// The refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AdminError>,
}

/// Why an [`AdminRequest`] was refused: a stable code of `tests/fixtures/v1/errors.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminError {
    /// The code (`SessionNotFound`, `TaskNotFound`, `InvalidConfig`, ...).
    pub code: String,
    /// The message.
    pub message: String,
}

envelopes!(
    TaskEnvelope,
    ResultEnvelope,
    ResultBatch,
    Doorbell,
    CancelNotice,
    SessionClosed,
    OutputChunk,
    AttachRequest,
    AttachReply,
    Presence,
    TakenNotice,
    Announcement,
    AdminRequest,
    AdminReply
);

/// A worker of one session asks to be attached (core NATS request on
/// [`Names::attach_subject`]); the hub hosting the session answers with an [`AttachReply`].
/// From then on the session publishes that lane's tasks to its own consumers
/// ([`Names::session_subject`]) instead of its tenant's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Protocol major version: 2.
    pub v: u32,
    /// The worker.
    pub worker_id: String,
    /// The lanes it serves.
    pub lanes: Vec<SessionLane>,
}

/// The hub's answer to an [`AttachRequest`]: where the session's tasks are, and the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReply {
    /// Protocol major version: 2.
    pub v: u32,
    /// The session's tenant: its tasks are in [`Names::tasks_stream`] of it.
    pub tenant: String,
    /// The consumers' `ack_wait` in milliseconds: renew a task's lease every third of it.
    pub lease_ms: u64,
}

/// What a worker is doing, as it announces on [`Names::presence_subject`] every few seconds and
/// whenever its state changes: the one source for dashboards and autoscaling signals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Protocol major version: 2.
    pub v: u32,
    /// The worker.
    pub worker_id: String,
    /// Its tenant, if it serves one (absent: every tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its session, if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The lanes it serves.
    pub lanes: Vec<SessionLane>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Tasks it can run at once.
    pub slots: u64,
    /// Tasks it runs now.
    pub busy: u64,
    /// Its software version.
    pub version: String,
    /// `waiting` (no work exists for it yet), `serving` or `draining`.
    pub state: WorkerState,
    /// Seconds between two announcements: it is gone after three missed ones.
    pub interval_s: u64,
}

/// A worker's state in its [`Presence`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Connected, no work exists for it yet (no session of its tenant, its session not open).
    #[default]
    Waiting,
    /// Taking tasks.
    Serving,
    /// Finishing what it holds, taking nothing new.
    Draining,
}

impl WorkerState {
    /// `waiting`, `serving` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Waiting => "waiting",
            WorkerState::Serving => "serving",
            WorkerState::Draining => "draining",
        }
    }
}

/// Decodes an envelope of this version ([`PROTOCOL_VERSION`]): a message of another (or no) version is refused as such even
/// when its shape would fit.
///
/// # Errors
///
/// [`Error::UnsupportedProtocol`] for another or a missing version, [`Error::InvalidPayload`]
/// for anything that is not the expected JSON.
pub fn decode<T: Envelope>(bytes: &[u8]) -> Result<T> {
    // One parse on the hot path; the version is looked at on its own only to explain a failure.
    let shape_error = match serde_json::from_slice::<T>(bytes) {
        Ok(env) if env.version() == PROTOCOL_VERSION => return Ok(env),
        Ok(_) => None,
        Err(e) => Some(e),
    };
    #[derive(Deserialize)]
    struct Version {
        v: Option<Value>,
    }
    let version: Version = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid_payload(format!("not a JSON object: {e}")))?;
    match (version.v, shape_error) {
        (Some(Value::Number(n)), Some(e)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {
            Err(Error::invalid_payload(e.to_string()))
        }
        (other, _) => Err(Error::UnsupportedProtocol {
            version: other.map_or_else(|| "none".to_owned(), |v| v.to_string()),
            supported: PROTOCOL_VERSION.to_string(),
        }),
    }
}

/// Encodes an envelope.
pub fn encode<T: Serialize>(envelope: &T) -> Vec<u8> {
    serde_json::to_vec(envelope).expect("envelopes always serialize")
}

impl From<ResultEnvelope> for crate::queue::dispatch::RemoteResult {
    fn from(env: ResultEnvelope) -> Self {
        Self {
            task_id: env.task_id,
            attempt: env.attempt,
            exhausted: env.kind == ResultKind::Exhausted,
            result: env.result,
            worker_id: env.worker_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_envelopes_round_trip() {
        let task = ExternalTask::new(
            "abc-1",
            "s1",
            SessionLane::Query,
            "read",
            json!({"path": "a"}),
            5_000,
        );
        let env = TaskEnvelope {
            v: PROTOCOL_VERSION,
            tenant: "acme".into(),
            hub: "h1".into(),
            task,
            max_attempts: 3,
            retry: RetryPolicy::exponential(2, 100),
            delivery: DeliveryMode::AtMostOnce,
            labels: BTreeMap::from([("gpu".into(), "yes".into())]),
            payload_ref: None,
        };
        let bytes = encode(&env);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["task_id"], "abc-1");
        assert_eq!(v["delivery"], "at_most_once");
        assert_eq!(v["retry"]["strategy"], "exponential");
        let back: TaskEnvelope = decode(&bytes).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn versions_and_garbage_are_rejected() {
        assert_eq!(
            decode::<Doorbell>(br#"{"v":1,"lane":"query","route":"_"}"#)
                .unwrap_err()
                .code(),
            "UnsupportedProtocol"
        );
        assert_eq!(
            decode::<Doorbell>(br#"{"lane":"query","route":"_"}"#)
                .unwrap_err()
                .code(),
            "UnsupportedProtocol"
        );
        assert_eq!(
            decode::<Doorbell>(br#"{"v":"2","lane":"query"}"#)
                .unwrap_err()
                .code(),
            "UnsupportedProtocol"
        );
        assert_eq!(
            decode::<Doorbell>(b"\xff\x00").unwrap_err().code(),
            "InvalidPayload"
        );
        assert_eq!(
            decode::<Doorbell>(br#"{"v":2,"lane":"fast","route":"_"}"#)
                .unwrap_err()
                .code(),
            "InvalidPayload"
        );
        assert_eq!(
            decode::<ResultEnvelope>(br#"[1,2]"#).unwrap_err().code(),
            "InvalidPayload"
        );
    }

    fn result(task_id: &str) -> ResultEnvelope {
        ResultEnvelope {
            v: PROTOCOL_VERSION,
            kind: ResultKind::Result,
            task_id: task_id.into(),
            session_id: "s1".into(),
            attempt: 1,
            worker_id: "w".into(),
            result: ExternalTaskResult::ok(json!({"results": [1, 2]})),
            result_ref: None,
        }
    }

    #[test]
    fn result_batches_and_single_results_decode_alike() {
        let (a, b) = (result("t-1"), result("t-2"));
        let parts = [encode(&a), encode(&b)];
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let bytes = ResultBatch::encode_parts("s1", &parts);
        let batch: ResultBatch = decode(&bytes).unwrap();
        assert_eq!(batch.kind, BatchKind::Batch);
        assert_eq!(batch.results, vec![a.clone(), b.clone()]);
        assert_eq!(decode_results(&bytes).unwrap(), vec![a.clone(), b.clone()]);
        // One result alone, even one whose own JSON has a "results" key.
        assert_eq!(decode_results(&encode(&a)).unwrap(), vec![a.clone()]);
        // A batch written by another encoder, keys in another order.
        let foreign = json!({"results": [a, b], "session_id": "s1", "kind": "batch", "v": 2});
        let foreign = serde_json::to_vec(&foreign).unwrap();
        assert_eq!(decode_results(&foreign).unwrap().len(), 2);
    }

    #[test]
    fn bad_batches_are_refused_whole_with_their_own_reason() {
        let mut inner = serde_json::to_value(result("t-1")).unwrap();
        inner["v"] = json!(3);
        let newer = json!({"v": 2, "kind": "batch", "session_id": "s1", "results": [inner]});
        let err = decode_results(&serde_json::to_vec(&newer).unwrap()).unwrap_err();
        assert_eq!(err.code(), "UnsupportedProtocol");
        let broken = br#"{"v":2,"kind":"batch","session_id":"s1","results":[{"v":2}]}"#;
        let err = decode_results(broken).unwrap_err();
        assert_eq!(err.code(), "InvalidPayload");
        assert!(err.to_string().contains("missing field"), "{err}");
        let reordered = br#"{"session_id":"s1","kind":"batch","v":2,"results":7}"#;
        assert_eq!(
            decode_results(reordered).unwrap_err().code(),
            "InvalidPayload"
        );
        let garbage = br#"{"v":2,"kind":"result"}"#;
        assert_eq!(
            decode_results(garbage).unwrap_err().code(),
            "InvalidPayload"
        );
        assert_eq!(
            decode_results(br#"{"v":3,"kind":"batch"}"#)
                .unwrap_err()
                .code(),
            "UnsupportedProtocol"
        );
    }

    #[test]
    fn routes_are_stable_and_order_independent() {
        let a = BTreeMap::from([
            ("region".to_owned(), "eu-west".to_owned()),
            ("gpu".to_owned(), "a100".to_owned()),
        ]);
        let token = route_token(&a);
        assert!(token.starts_with('r') && token.len() == 17 && is_token(&token));
        let worker = BTreeMap::from([
            ("region".to_owned(), "eu-west".to_owned()),
            ("gpu".to_owned(), "a100".to_owned()),
            ("zone".to_owned(), "b".to_owned()),
        ]);
        assert!(labels_match(&a, &worker));
        assert!(!labels_match(&worker, &a));
        assert!(labels_match(&BTreeMap::new(), &a));
    }

    #[test]
    fn prefixes_are_single_tokens() {
        assert!(Names::new("a3s-test_1").is_ok());
        for bad in ["", "a.b", "a*", "a b"] {
            assert_eq!(Names::new(bad).unwrap_err().code(), "InvalidConfig");
        }
        assert_eq!(
            Names::new("my-app").unwrap().results_stream(),
            "MY_APP_RESULTS"
        );
    }
}

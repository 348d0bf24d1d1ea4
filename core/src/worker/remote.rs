//! [`WorkerClient`]: the worker's side of NATS JetStream, with the same methods as
//! [`AgentSession`](crate::AgentSession) so the spec's worker loop runs unchanged on another
//! machine.
//!
//! A claimed task is leased: while it is outstanding the session renews the lease (`InProgress`)
//! every third of the consumer's `AckWait`, so only a dead worker loses it. The result is stored
//! in the results stream before the task is acknowledged, so a crash in between runs the task again
//! rather than losing it (at least once; a lane configured at-most-once is acknowledged first).
//!
//! Payloads and results too large for a NATS message travel through the JetStream object store,
//! by reference (`docs/protocol.md` §3.5): a claimed task always has its payload in hand.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, join_all};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::TaskSource;
use crate::broker::NatsConfig;
use crate::broker::objects::{self, Bucket};
use crate::broker::wire::{
    self, ANY_ROUTE, CancelNotice, DeliveryMode, Doorbell, Names, OutputChunk, PROTOCOL_VERSION,
    ResultEnvelope, ResultKind, TaskEnvelope,
};
use crate::error::{Error, Result};
use crate::queue::{RetryPolicy, SessionLane};
use crate::task::{ExternalTask, ExternalTaskResult};
use crate::tools::OutputSink;

/// Which tasks a [`WorkerClient`] takes.
///
/// # Examples
///
/// ```
/// use a3s_code_core::queue::SessionLane;
/// use a3s_code_core::worker::WorkerClientOptions;
/// let opts = WorkerClientOptions::session("abc123")
///     .with_lanes([SessionLane::Query])
///     .with_label("region", "eu-west");
/// assert_eq!(opts.session_id.as_deref(), Some("abc123"));
/// assert!(WorkerClientOptions::pool().session_id.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct WorkerClientOptions {
    /// The session to serve; `None` serves every session (a pool worker).
    pub session_id: Option<String>,
    /// The lanes to serve (default: all four).
    pub lanes: Vec<SessionLane>,
    /// This worker's labels; it takes tasks whose required labels it has, and tasks with none.
    pub labels: BTreeMap<String, String>,
    /// Reported with every result (default: a random id).
    pub worker_id: String,
}

impl WorkerClientOptions {
    /// Serve one session.
    pub fn session(session_id: impl Into<String>) -> Self {
        Self {
            session_id: Some(session_id.into()),
            ..Self::pool()
        }
    }

    /// Serve every session on the broker.
    pub fn pool() -> Self {
        Self {
            session_id: None,
            lanes: SessionLane::ALL.to_vec(),
            labels: BTreeMap::new(),
            worker_id: format!(
                "worker-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
        }
    }

    /// Serve only these lanes.
    pub fn with_lanes(mut self, lanes: impl IntoIterator<Item = SessionLane>) -> Self {
        self.lanes = lanes.into_iter().collect();
        self.lanes.sort();
        self.lanes.dedup();
        self
    }

    /// Adds a label (`region=eu-west`, `gpu=a100`).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the worker id.
    pub fn with_worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = id.into();
        self
    }
}

/// A task this worker holds, until it reports or gives it back.
struct Claim {
    /// The delivery's reply subject: acknowledgements go there.
    reply: Subject,
    session_id: String,
    delivery: DeliveryMode,
    attempt: u32,
    max_attempts: u32,
    retry: RetryPolicy,
}

/// A result ready to publish, with what is needed to settle its task afterwards.
struct Encoded {
    /// Its place among the caller's results.
    index: usize,
    task_id: String,
    claim: Claim,
    bytes: Vec<u8>,
    /// Why the real result was replaced by a failure (too large), reported to the caller.
    refused: Option<Error>,
}

/// The message id of a batch: the same results (task ids and attempts, in order) give the same
/// id, so a batch published again after a lost acknowledgement is stored once.
fn batch_message_id(batch: &[Encoded]) -> String {
    let bytes = || {
        batch.iter().flat_map(|e| {
            e.task_id
                .bytes()
                .chain(e.claim.attempt.to_le_bytes())
                .chain([0xff])
        })
    };
    let a = wire::fnv1a(wire::FNV_OFFSET, bytes());
    let b = wire::fnv1a(0x6c62_272e_07bb_0142, bytes());
    format!("batch:{}:{a:016x}{b:016x}", batch.len())
}

/// A consumer that may have work: (lane, session, route), ordered by lane priority first.
type Source = (SessionLane, String, String);

/// A worker with exactly one source (one session, one lane, no labels) keeps pull requests open
/// on it, like a bare JetStream worker: a task reaches it as soon as it is stored. The open
/// requests never ask for more tasks than the caller had free slots.
///
/// The consumer's leader holds open requests in memory, so they vanish when it fails over to
/// another server (on a cluster) even though this worker's connection stays up; and a request
/// sent while the consumer has no leader is dropped without an answer. Requests ask for an idle
/// heartbeat: when neither a task nor a heartbeat came for [`PULL_SILENCE`], the worker forgets
/// its requests and asks again.
struct Direct {
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    next_subject: String,
    inbox: Subject,
    /// Open pull requests, oldest first: (local expiry, tasks still owed).
    credit: Mutex<std::collections::VecDeque<(Instant, usize)>>,
    /// When the open requests last showed they are alive (a task or an idle heartbeat arrived),
    /// or a request was sent.
    heard: Mutex<Instant>,
    /// Tasks delivered and claimed, waiting for the caller.
    ready: Mutex<std::collections::VecDeque<ExternalTask>>,
    /// Woken when tasks arrive or a request ends (the claim may ask again).
    arrived: tokio::sync::Notify,
    /// No new request before this instant: the last one was refused (no leader yet, too many
    /// waiting requests), and asking again at once would only be refused again.
    pause_until: Mutex<Instant>,
}

impl Direct {
    /// Tasks still owed by open requests (expired ones dropped; all of them dropped when the
    /// server has been silent for too long: they died with a consumer leader).
    fn outstanding(&self) -> usize {
        let now = Instant::now();
        let mut credit = self.credit.lock();
        if !credit.is_empty() && now >= *self.heard.lock() + PULL_SILENCE {
            tracing::debug!("open pull requests went silent; asking again");
            credit.clear();
        }
        credit.retain(|(expires, _)| *expires > now);
        credit.iter().map(|(_, n)| n).sum()
    }

    /// When [`outstanding`](Self::outstanding) would give up on the open requests, if any.
    fn silence_deadline(&self) -> Option<Instant> {
        let credit = self.credit.lock();
        (!credit.is_empty()).then(|| *self.heard.lock() + PULL_SILENCE)
    }

    /// The open requests are alive.
    fn heard(&self) {
        *self.heard.lock() = Instant::now();
    }

    /// Forgets every open request (they are gone with the connection).
    fn forget(&self) {
        tracing::debug!("reconnected: forgetting the open pull requests");
        self.credit.lock().clear();
        self.arrived.notify_waiters();
    }

    /// A request ended with a status: it owes nothing more, and the claim may ask again (after
    /// [`REASK_PAUSE`] unless it merely expired).
    fn ended(&self, status: async_nats::StatusCode) {
        self.consume(true);
        if status != async_nats::StatusCode::TIMEOUT {
            *self.pause_until.lock() = Instant::now() + REASK_PAUSE;
        }
        self.arrived.notify_waiters();
    }

    /// One delivery (or the end of a request, `whole`) against the oldest open request.
    fn consume(&self, whole: bool) {
        let mut credit = self.credit.lock();
        if let Some(front) = credit.front_mut() {
            if whole || front.1 <= 1 {
                credit.pop_front();
            } else {
                front.1 -= 1;
            }
        }
    }
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    options: WorkerClientOptions,
    lease: Duration,
    tasks_stream: stream::Stream,
    consumers: Mutex<HashMap<String, consumer::PullConsumer>>,
    /// Consumers whose last fetch went unanswered (no leader: an election on a cluster), left
    /// alone until the instant given so they do not hold up the others.
    unanswered: Mutex<HashMap<String, Instant>>,
    /// Consumers a doorbell (or a full batch) says may have work, with a generation so a hint that
    /// arrives during a fetch is not lost.
    hints: Mutex<BTreeMap<Source, u64>>,
    hint_gen: Mutex<u64>,
    bell: watch::Sender<u64>,
    claims: Mutex<HashMap<String, Claim>>,
    cancels: broadcast::Sender<String>,
    output: mpsc::UnboundedSender<(String, Vec<u8>)>,
    background: Mutex<Vec<JoinHandle<()>>>,
    direct: Option<Direct>,
    /// Observability: when the heartbeat last renewed the leases (`/metrics` heartbeat age).
    last_heartbeat: Mutex<Instant>,
    /// The object store of large payloads and results, opened when first needed.
    objects: tokio::sync::OnceCell<Bucket>,
    /// Envelopes larger than this put their result in `objects`.
    inline_limit: usize,
    max_object_bytes: usize,
}

impl Inner {
    /// Sends an acknowledgement of `kind` for a delivery (fire and forget).
    async fn ack(&self, reply: &Subject, kind: AckKind) {
        if let Err(e) = self.client.publish(reply.clone(), kind.into()).await {
            tracing::debug!(error = %e, "could not send an acknowledgement");
        }
    }

    /// Acknowledges and waits for the server to confirm it (at-most-once lanes).
    async fn ack_confirmed(&self, reply: &Subject) -> bool {
        self.client
            .request(reply.clone(), AckKind::Ack.into())
            .await
            .is_ok()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for h in self.background.lock().drain(..) {
            h.abort();
        }
    }
}

/// The worker's side of a session on another machine. See the [module docs](self).
///
/// Cloning is cheap; clones share the connection and the claims. Every method is safe to call
/// concurrently.
///
/// # Examples
///
/// The spec's worker loop, pointed at NATS:
///
/// ```no_run
/// use a3s_code_core::ExternalTaskResult;
/// use a3s_code_core::worker::WorkerClient;
/// # #[tokio::main] async fn main() -> a3s_code_core::Result<()> {
/// let session = WorkerClient::connect("nats://127.0.0.1:4222", "abc123").await?;
/// loop {
///     let tasks = session.pending_external_tasks().await?;
///     if tasks.is_empty() {
///         tokio::time::sleep(std::time::Duration::from_millis(100)).await;
///         continue;
///     }
///     for task in tasks {
///         let result = ExternalTaskResult::ok(serde_json::json!({"done": task.command_type}));
///         session.complete_external_task(&task.task_id, result).await?;
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct WorkerClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClient")
            .field("session_id", &self.inner.options.session_id)
            .field("worker_id", &self.inner.options.worker_id)
            .field("claims", &self.inner.claims.lock().len())
            .finish_non_exhaustive()
    }
}

impl WorkerClient {
    /// How many tasks one claim takes when the caller gives no limit (`pending_external_tasks`,
    /// and the bindings' `pending_external_tasks(wait=...)` without `limit`).
    pub const DEFAULT_CLAIM_LIMIT: usize = 256;
}

impl WorkerClient {
    /// Connects to `url` (one or more comma-separated servers) as a worker of `session_id`
    /// (`"*"` for every session).
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when NATS cannot be reached or has no streams for this
    /// prefix yet (no session was ever opened on it).
    pub async fn connect(url: &str, session_id: &str) -> Result<Self> {
        let options = match session_id {
            "*" => WorkerClientOptions::pool(),
            id => WorkerClientOptions::session(id),
        };
        Self::connect_with(NatsConfig::new(url), options).await
    }

    /// Connects with full settings (auth, TLS, prefix, lanes, labels, worker id).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), plus [`Error::InvalidConfig`] for bad settings.
    pub async fn connect_with(config: NatsConfig, options: WorkerClientOptions) -> Result<Self> {
        let names = config.validate()?;
        if let Some(id) = &options.session_id
            && !wire::is_token(id)
        {
            return Err(Error::invalid_config(format!(
                "session id {id:?} is not a valid session id"
            )));
        }
        if options.lanes.is_empty() {
            return Err(Error::invalid_config(
                "a worker must serve at least one lane",
            ));
        }
        let (client, connections) = config.connect_watched().await?;
        let js = jetstream::new(client.clone());
        let tasks_stream =
            js.get_stream(names.tasks_stream())
                .await
                .map_err(|e| Error::BrokerUnavailable {
                    reason: format!(
                        "no tasks stream {} (has a session been opened with this prefix?): {e}",
                        names.tasks_stream()
                    ),
                })?;
        let (output, output_rx) = mpsc::unbounded_channel();
        let direct = match (
            &options.session_id,
            &options.lanes[..],
            options.labels.is_empty(),
        ) {
            (Some(sid), [lane], true) => Some(Direct {
                next_subject: format!(
                    "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                    names.tasks_stream(),
                    names.task_consumer(sid, *lane, ANY_ROUTE)
                ),
                inbox: Subject::from(client.new_inbox()),
                credit: Mutex::default(),
                heard: Mutex::new(Instant::now()),
                ready: Mutex::default(),
                arrived: tokio::sync::Notify::new(),
                pause_until: Mutex::new(Instant::now()),
            }),
            _ => None,
        };
        let direct_sub = match &direct {
            Some(d) => Some(
                client
                    .subscribe(d.inbox.clone())
                    .await
                    .map_err(unavailable)?,
            ),
            None => None,
        };
        let inner = Arc::new(Inner {
            client: client.clone(),
            js,
            names: names.clone(),
            options,
            lease: config.lease,
            tasks_stream,
            consumers: Mutex::new(HashMap::new()),
            unanswered: Mutex::new(HashMap::new()),
            hints: Mutex::new(BTreeMap::new()),
            hint_gen: Mutex::new(0),
            bell: watch::channel(0).0,
            claims: Mutex::new(HashMap::new()),
            cancels: broadcast::channel(1024).0,
            output,
            background: Mutex::new(Vec::new()),
            direct,
            last_heartbeat: Mutex::new(Instant::now()),
            objects: tokio::sync::OnceCell::new(),
            inline_limit: objects::inline_limit(&client),
            max_object_bytes: config.max_object_bytes,
        });
        let target = inner
            .options
            .session_id
            .clone()
            .unwrap_or_else(|| "*".to_owned());
        // A single-source worker keeps pull requests open: it needs no doorbells.
        let doorbells = match inner.direct {
            Some(_) => None,
            None => Some(
                client
                    .subscribe(names.ready_subject(&target))
                    .await
                    .map_err(unavailable)?,
            ),
        };
        let cancels = client
            .subscribe(names.cancel_subject(&target))
            .await
            .map_err(unavailable)?;
        let weak = Arc::downgrade(&inner);
        *inner.background.lock() = vec![
            tokio::spawn(listen_cancels(weak.clone(), cancels)),
            tokio::spawn(heartbeat(weak.clone())),
            tokio::spawn(publish_output(client, output_rx)),
        ];
        if let Some(sub) = doorbells {
            inner
                .background
                .lock()
                .push(tokio::spawn(listen_doorbells(weak.clone(), sub)));
        }
        if let Some(sub) = direct_sub {
            inner
                .background
                .lock()
                .push(tokio::spawn(forget_requests_on_reconnect(
                    weak.clone(),
                    connections,
                )));
            inner
                .background
                .lock()
                .push(tokio::spawn(direct_deliveries(weak.clone(), sub)));
        }
        let me = Self { inner };
        me.sweep().await;
        Ok(me)
    }

    /// This worker's id, reported with its results.
    pub fn worker_id(&self) -> &str {
        &self.inner.options.worker_id
    }

    /// Tasks claimed and not yet reported.
    pub fn claimed_count(&self) -> usize {
        self.inner.claims.lock().len()
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// How long ago the heartbeat last renewed this worker's leases (it runs every third of the
    /// lease, claims or not: a growing age means a stuck worker).
    pub fn heartbeat_age(&self) -> Duration {
        self.inner.last_heartbeat.lock().elapsed()
    }

    /// Claims what is waiting now (up to 256), highest-priority lane first, without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when NATS cannot be reached.
    pub async fn pending_external_tasks(&self) -> Result<Vec<ExternalTask>> {
        self.claim_external_tasks(Self::DEFAULT_CLAIM_LIMIT, Duration::ZERO)
            .await
    }

    /// Claims at most `max` tasks (pass your free slots), highest-priority lane first, waiting up
    /// to `wait` for the first one.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when NATS cannot be reached.
    pub async fn claim_external_tasks(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ExternalTask>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if let Some(direct) = &self.inner.direct
            && !wait.is_zero()
        {
            return self.claim_direct(direct, max, wait).await;
        }
        let until = Instant::now() + wait;
        let mut bell = self.inner.bell.subscribe();
        loop {
            bell.borrow_and_update();
            let tasks = self.fetch(max).await?;
            if !tasks.is_empty() {
                return Ok(tasks);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(tasks);
            }
            // Wait for a doorbell; sweep every consumer now and then in case one was missed.
            let sweep = until.min(now + Duration::from_secs(1));
            tokio::select! {
                _ = bell.changed() => {}
                _ = tokio::time::sleep_until(sweep) => self.sweep().await,
            }
        }
    }

    /// Claims through the open pull requests of a single-source worker.
    async fn claim_direct(
        &self,
        d: &Direct,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ExternalTask>> {
        let until = Instant::now() + wait;
        loop {
            let arrived = d.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut ready = d.ready.lock();
                if !ready.is_empty() {
                    let n = ready.len().min(max);
                    return Ok(ready.drain(..n).collect());
                }
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Vec::new());
            }
            // Ask for the free slots not yet covered by open requests, in batches: a request per
            // freed slot would cost the server as much as the task itself.
            let owed = d.outstanding();
            let paused = *d.pause_until.lock();
            if now < paused {
                tokio::select! {
                    _ = arrived => {}
                    _ = tokio::time::sleep_until(paused.min(until)) => {}
                }
                continue;
            }
            if owed == 0 || owed * 2 <= max {
                // Requests outlive this call (its `wait`): a request that expired between two
                // calls would leave the worker deaf until the next one. The server answers an
                // expired request with a 408, which retires it here too.
                let expires = PULL_EXPIRES;
                let want = max - owed;
                tracing::trace!(want, owed, "asking for tasks");
                d.credit
                    .lock()
                    .push_back((now + expires + Duration::from_secs(1), want));
                d.heard();
                let body = format!(
                    "{{\"batch\":{want},\"expires\":{},\"idle_heartbeat\":{}}}",
                    expires.as_nanos(),
                    PULL_HEARTBEAT.as_nanos()
                );
                self.inner
                    .client
                    .publish_with_reply(d.next_subject.clone(), d.inbox.clone(), body.into())
                    .await
                    .map_err(unavailable)?;
            }
            let wake = d.silence_deadline().map_or(until, |t| t.min(until));
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Hints every consumer this worker serves (after a timeout or at start).
    async fn sweep(&self) {
        let inner = &self.inner;
        let mut sources: Vec<Source> = Vec::new();
        match &inner.options.session_id {
            Some(sid) => {
                for &lane in &inner.options.lanes {
                    sources.push((lane, sid.clone(), ANY_ROUTE.to_owned()));
                }
            }
            None => {
                // Pool: every session's consumers, read from their filter subjects (a route's
                // required labels are in the consumer's description).
                let mut list = inner.tasks_stream.consumers();
                while let Some(Ok(info)) = list.next().await {
                    let subject = info.config.filter_subject;
                    let parts: Vec<&str> = subject.split('.').collect();
                    let required = parse_labels(info.config.description.as_deref().unwrap_or(""));
                    if let [_, "task", sid, lane, route] = parts[..]
                        && let Ok(lane) = lane.parse::<SessionLane>()
                        && inner.options.lanes.contains(&lane)
                        && wire::labels_match(&required, &inner.options.labels)
                    {
                        sources.push((lane, sid.to_owned(), route.to_owned()));
                    }
                }
            }
        }
        let mut hints = inner.hints.lock();
        let generation = next_gen(&inner.hint_gen);
        for s in sources {
            hints.insert(s, generation);
        }
    }

    /// One pass over the hinted consumers, highest priority first.
    async fn fetch(&self, max: usize) -> Result<Vec<ExternalTask>> {
        let inner = &self.inner;
        let candidates: Vec<(Source, u64)> = inner
            .hints
            .lock()
            .iter()
            .map(|(s, g)| (s.clone(), *g))
            .collect();
        let mut out = Vec::new();
        for ((lane, sid, route), generation) in candidates {
            if out.len() >= max {
                break;
            }
            let want = max - out.len();
            let name = inner.names.task_consumer(&sid, lane, &route);
            {
                // Its hint stays: it is tried again once the pause is over.
                let mut unanswered = inner.unanswered.lock();
                let now = Instant::now();
                unanswered.retain(|_, until| *until > now);
                if unanswered.contains_key(&name) {
                    continue;
                }
            }
            let consumer = match self.consumer(&name).await {
                Ok(c) => c,
                Err(Error::TaskNotFound { .. }) => {
                    // The session is gone.
                    inner.hints.lock().remove(&(lane, sid, route));
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Bounded: a request in flight when the connection drops is never answered.
            let mut batch = timed(
                "fetching tasks",
                consumer.fetch().max_messages(want).messages(),
            )
            .await?;
            let mut got = 0;
            loop {
                let msg = match tokio::time::timeout(FETCH_TIMEOUT, batch.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "fetch ended early");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!(
                            consumer = name,
                            "fetch got no answer; the connection dropped or the consumer's leader \
                             is changing"
                        );
                        inner
                            .unanswered
                            .lock()
                            .insert(name.clone(), Instant::now() + FETCH_PAUSE);
                        break;
                    }
                };
                got += 1;
                if let Some(task) = self.accept(msg).await {
                    out.push(task);
                }
            }
            if got < want {
                // Drained: forget the hint unless a doorbell renewed it meanwhile.
                let mut hints = inner.hints.lock();
                let key = (lane, sid, route);
                if hints.get(&key) == Some(&generation) {
                    hints.remove(&key);
                }
            }
        }
        Ok(out)
    }

    async fn consumer(&self, name: &str) -> Result<consumer::PullConsumer> {
        if let Some(c) = self.inner.consumers.lock().get(name) {
            return Ok(c.clone());
        }
        match self
            .inner
            .tasks_stream
            .get_consumer::<consumer::pull::Config>(name)
            .await
        {
            Ok(c) => {
                self.inner
                    .consumers
                    .lock()
                    .insert(name.to_owned(), c.clone());
                Ok(c)
            }
            Err(e) if e.to_string().contains("not found") => Err(Error::TaskNotFound {
                task_id: name.to_owned(),
            }),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Turns a delivery into a claimed task, or disposes of it (malformed, exhausted).
    async fn accept(&self, msg: jetstream::Message) -> Option<ExternalTask> {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
        let reply = msg.reply.clone()?;
        let env = match wire::decode::<TaskEnvelope>(&msg.payload) {
            Ok(env) => env,
            Err(err) => {
                tracing::warn!(error = %err, subject = %msg.subject, "dropping a malformed task message");
                self.inner.ack(&reply, AckKind::Term).await;
                return None;
            }
        };
        let mut task = env.task;
        // The session id names the subject results go to: it must be the one the task came on.
        let subject_session = msg.subject.split('.').rev().nth(2);
        if !wire::is_token(&task.session_id) || subject_session != Some(task.session_id.as_str()) {
            tracing::warn!(
                subject = %msg.subject,
                session_id = %task.session_id,
                "dropping a task whose session id does not match its subject"
            );
            self.inner.ack(&reply, AckKind::Term).await;
            return None;
        }
        task.attempt = delivered;
        // Observability: join the session's trace (W3C `traceparent` header), see observe::trace.
        task = task.with_trace_context(crate::trace::from_headers(msg.headers.as_ref()));
        if delivered > env.max_attempts {
            self.inner.ack(&reply, AckKind::Term).await;
            let reason = format!(
                "{} attempts were lost (worker crashes or expired leases)",
                delivered - 1
            );
            let report = self.envelope(
                ResultKind::Exhausted,
                &task.task_id,
                &task.session_id,
                delivered,
                ExternalTaskResult::err(reason),
            );
            let _ = self
                .publish_result(&task.session_id, &task.task_id, delivered, report)
                .await;
            return None;
        }
        if let Some(r) = &env.payload_ref
            && !self.fetch_payload(&mut task, r, &reply).await
        {
            return None;
        }
        if env.delivery == DeliveryMode::AtMostOnce && !self.inner.ack_confirmed(&reply).await {
            // Not acknowledged: another worker may get it; we must not run it.
            return None;
        }
        self.inner.claims.lock().insert(
            task.task_id.clone(),
            Claim {
                reply,
                session_id: task.session_id.clone(),
                delivery: env.delivery,
                attempt: delivered,
                max_attempts: env.max_attempts,
                retry: env.retry,
            },
        );
        Some(task)
    }

    /// Replaces a referenced payload by the object's content. When it cannot be read, gives the
    /// task back (NATS unavailable) or fails it (missing, wrong size, too large) and says false.
    async fn fetch_payload(
        &self,
        task: &mut ExternalTask,
        r: &wire::ObjectRef,
        reply: &Subject,
    ) -> bool {
        // Reading may take a while: start from a fresh lease.
        self.inner.ack(reply, AckKind::Progress).await;
        let read = match self.objects().await {
            Ok(bucket) => bucket.get(r, self.inner.max_object_bytes).await,
            Err(e) => Err(e),
        };
        let err = match read {
            Ok(payload) => {
                task.payload = payload;
                return true;
            }
            Err(e) => e,
        };
        if let Error::BrokerUnavailable { reason } = &err {
            tracing::warn!(
                task_id = task.task_id,
                reason,
                "cannot read a task's payload; giving it back"
            );
            self.inner
                .ack(reply, AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return false;
        }
        tracing::warn!(task_id = task.task_id, error = %err, "cannot read a task's payload; failing it");
        let report = self.envelope(
            ResultKind::Result,
            &task.task_id,
            &task.session_id,
            task.attempt,
            objects::failed(&err),
        );
        let reported = match self
            .publish_result(&task.session_id, &task.task_id, task.attempt, report)
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        // Not reported: let it come back rather than lose it.
        let kind = match reported {
            true => AckKind::Term,
            false => AckKind::Nak(Some(Duration::from_secs(1))),
        };
        self.inner.ack(reply, kind).await;
        false
    }

    /// The object store bucket, opened on first use.
    async fn objects(&self) -> Result<&Bucket> {
        self.inner
            .objects
            .get_or_try_init(|| Bucket::open(&self.inner.js, &self.inner.names))
            .await
    }

    fn envelope(
        &self,
        kind: ResultKind,
        task_id: &str,
        session_id: &str,
        attempt: u32,
        result: ExternalTaskResult,
    ) -> ResultEnvelope {
        ResultEnvelope {
            v: PROTOCOL_VERSION,
            kind,
            task_id: task_id.to_owned(),
            session_id: session_id.to_owned(),
            attempt,
            worker_id: self.inner.options.worker_id.clone(),
            result,
            result_ref: None,
        }
    }

    /// A result envelope's bytes, its result moved to the object store when too large for a
    /// message.
    async fn encode_result(
        &self,
        session_id: &str,
        task_id: &str,
        attempt: u32,
        mut envelope: ResultEnvelope,
    ) -> Result<Vec<u8>> {
        let bytes = wire::encode(&envelope);
        if bytes.len() <= self.inner.inline_limit {
            return Ok(bytes);
        }
        // Too large for a message: the result goes to the object store, by reference.
        let result = serde_json::to_vec(&envelope.result.result).expect("a Value serializes");
        if result.len() > self.inner.max_object_bytes {
            return Err(Error::PayloadTooLarge {
                size: result.len(),
                limit: self.inner.max_object_bytes,
            });
        }
        let name = self.inner.names.result_object(session_id, task_id, attempt);
        envelope.result_ref = Some(self.objects().await?.put(&name, result).await?);
        envelope.result.result = serde_json::Value::Null;
        Ok(wire::encode(&envelope))
    }

    /// Publishes a results message (one envelope or a batch) to the results stream; the future
    /// resolves once the server stored it.
    async fn publish_results_message(
        &self,
        session_id: &str,
        bytes: Vec<u8>,
        message_id: String,
    ) -> Result<BoxFuture<'static, Result<()>>> {
        // The message id makes a publish retried with the same content count once.
        let publish = PublishMessage::build()
            .payload(bytes.into())
            .message_id(message_id);
        let ack = timed(
            "publishing a result",
            self.inner
                .js
                .send_publish(self.inner.names.result_subject(session_id), publish),
        )
        .await?;
        Ok(Box::pin(async move {
            ack.await.map(|_| ()).map_err(unavailable)
        }))
    }

    async fn publish_result(
        &self,
        session_id: &str,
        task_id: &str,
        attempt: u32,
        envelope: ResultEnvelope,
    ) -> Result<BoxFuture<'static, Result<()>>> {
        let bytes = self
            .encode_result(session_id, task_id, attempt, envelope)
            .await?;
        self.publish_results_message(session_id, bytes, format!("{task_id}:{attempt}"))
            .await
    }

    /// Reports a task's result: stored durably, then the task is acknowledged.
    ///
    /// # Errors
    ///
    /// [`Error::TaskNotFound`] when this worker holds no such task (never claimed, already
    /// reported, or cancelled); [`Error::BrokerUnavailable`] when the result could not be stored
    /// (the task stays claimed, so you can retry); [`Error::PayloadTooLarge`] when the result's
    /// JSON is over the `NatsConfig`'s `max_object_bytes` (a failed result saying so was reported
    /// instead: the task is no longer held).
    pub async fn complete_external_task(
        &self,
        task_id: &str,
        result: ExternalTaskResult,
    ) -> Result<()> {
        let mut out = self
            .complete_external_tasks([(task_id.to_owned(), result)])
            .await?;
        out.pop().unwrap_or(Ok(()))
    }

    /// Reports many results: they are stored with as few messages as fit (a batch per session,
    /// up to the server's message size), then the tasks are acknowledged, in one round trip.
    ///
    /// # Errors
    ///
    /// One outcome per result, in order, as
    /// [`complete_external_task`](Self::complete_external_task).
    pub async fn complete_external_tasks(
        &self,
        results: impl IntoIterator<Item = (String, ExternalTaskResult)>,
    ) -> Result<Vec<Result<()>>> {
        let mut outcomes: Vec<Result<()>> = Vec::new();
        let mut ready: Vec<Encoded> = Vec::new();
        for (task_id, result) in results {
            let index = outcomes.len();
            outcomes.push(Ok(()));
            let claim = self.inner.claims.lock().remove(&task_id);
            let Some(claim) = claim else {
                outcomes[index] = Err(Error::TaskNotFound { task_id });
                continue;
            };
            let (session, attempt) = (claim.session_id.clone(), claim.attempt);
            let env = self.envelope(ResultKind::Result, &task_id, &session, attempt, result);
            let mut encoded = self
                .encode_result(&session, &task_id, attempt, env)
                .await
                .map(|bytes| (bytes, None));
            if let Err(too_large @ Error::PayloadTooLarge { .. }) = encoded {
                // Report a failed result instead, so the task ends rather than hangs; the caller
                // still learns why.
                tracing::warn!(task_id, error = %too_large, "a result is too large; reporting a failure instead");
                let env = self.envelope(
                    ResultKind::Result,
                    &task_id,
                    &session,
                    attempt,
                    objects::failed(&too_large),
                );
                encoded = self
                    .encode_result(&session, &task_id, attempt, env)
                    .await
                    .map(|bytes| (bytes, Some(too_large)));
            }
            match encoded {
                Ok((bytes, refused)) => ready.push(Encoded {
                    index,
                    task_id,
                    claim,
                    bytes,
                    refused,
                }),
                Err(e) => {
                    self.inner.claims.lock().insert(task_id, claim);
                    outcomes[index] = Err(e);
                }
            }
        }
        // One message per run of results of the same session that fits in a message.
        let limit = self.inner.inline_limit;
        let mut groups: Vec<Vec<Encoded>> = Vec::new();
        let mut size = 0;
        for e in ready {
            let fits = groups.last().is_some_and(|g: &Vec<Encoded>| {
                g[0].claim.session_id == e.claim.session_id
                    && size
                        + e.bytes.len()
                        + 1
                        + wire::ResultBatch::OVERHEAD
                        + e.claim.session_id.len()
                        <= limit
            });
            if !fits {
                groups.push(Vec::new());
                size = 0;
            }
            size += e.bytes.len() + 1;
            groups.last_mut().expect("pushed").push(e);
        }
        let mut sent = Vec::with_capacity(groups.len());
        for group in groups {
            let session = group[0].claim.session_id.clone();
            let (bytes, id) = match &group[..] {
                [one] => (
                    one.bytes.clone(),
                    format!("{}:{}", one.task_id, one.claim.attempt),
                ),
                many => {
                    let parts: Vec<&[u8]> = many.iter().map(|e| e.bytes.as_slice()).collect();
                    (
                        wire::ResultBatch::encode_parts(&session, &parts),
                        batch_message_id(many),
                    )
                }
            };
            let published = self.publish_results_message(&session, bytes, id).await;
            sent.push((group, published));
        }
        let stored = join_all(sent.into_iter().map(|(group, published)| async move {
            let outcome = match published {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            (group, outcome)
        }))
        .await;
        for (group, outcome) in stored {
            for e in group {
                match &outcome {
                    Ok(()) => {
                        if e.claim.delivery == DeliveryMode::AtLeastOnce {
                            self.inner.ack(&e.claim.reply, AckKind::Ack).await;
                        }
                        outcomes[e.index] = e.refused.map_or(Ok(()), Err);
                    }
                    Err(err) => {
                        outcomes[e.index] = Err(Error::BrokerUnavailable {
                            reason: err.to_string(),
                        });
                        self.inner.claims.lock().insert(e.task_id, e.claim);
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// Gives a task back without a result: it is delivered again after the session's retry
    /// delay, or reported exhausted when it has no attempts left.
    ///
    /// # Errors
    ///
    /// [`Error::TaskNotFound`] when this worker holds no such task.
    pub async fn abandon_external_task(&self, task_id: &str, reason: &str) -> Result<()> {
        let claim = self.inner.claims.lock().remove(task_id);
        let claim = claim.ok_or_else(|| Error::TaskNotFound {
            task_id: task_id.to_owned(),
        })?;
        if claim.delivery == DeliveryMode::AtMostOnce {
            // Already acknowledged: nobody will run it again. Report it as failed.
            let env = self.envelope(
                ResultKind::Result,
                task_id,
                &claim.session_id,
                claim.attempt,
                ExternalTaskResult::err(reason),
            );
            return self
                .publish_result(&claim.session_id, task_id, claim.attempt, env)
                .await?
                .await;
        }
        if claim.attempt >= claim.max_attempts {
            self.inner.ack(&claim.reply, AckKind::Term).await;
            let why = format!("{} attempt(s) failed; last: {reason}", claim.attempt);
            let env = self.envelope(
                ResultKind::Exhausted,
                task_id,
                &claim.session_id,
                claim.attempt + 1,
                ExternalTaskResult::err(why),
            );
            return self
                .publish_result(&claim.session_id, task_id, claim.attempt, env)
                .await?
                .await;
        }
        let delay = claim.retry.delay_before_retry(claim.attempt);
        self.inner
            .ack(&claim.reply, AckKind::Nak(Some(delay)))
            .await;
        Ok(())
    }

    /// Task ids the session cancelled (or timed out) while this worker may be running them.
    pub fn cancellations(&self) -> broadcast::Receiver<String> {
        self.inner.cancels.subscribe()
    }

    /// A sink that streams a task's output chunks to its session.
    pub fn output_sink(&self, task: &ExternalTask) -> OutputSink {
        let subject = self.inner.names.output_subject(&task.session_id);
        let task_id = task.task_id.clone();
        let tx = self.inner.output.clone();
        let seq = std::sync::atomic::AtomicU64::new(0);
        Arc::new(move |stream: &str, chunk: &str| {
            let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let msg = OutputChunk {
                v: PROTOCOL_VERSION,
                task_id: task_id.clone(),
                stream: stream.to_owned(),
                chunk: chunk.to_owned(),
                seq: n,
            };
            let _ = tx.send((subject.clone(), wire::encode(&msg)));
        })
    }

    /// Gives back every task still claimed (delivered again at once elsewhere) and stops.
    pub async fn close(&self) {
        let claims: Vec<Claim> = self.inner.claims.lock().drain().map(|(_, c)| c).collect();
        for c in claims {
            if c.delivery == DeliveryMode::AtLeastOnce {
                self.inner.ack(&c.reply, AckKind::Nak(None)).await;
            }
        }
        let _ = self.inner.client.flush().await;
        for h in self.inner.background.lock().drain(..) {
            h.abort();
        }
    }
}

impl TaskSource for WorkerClient {
    fn claim(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<ExternalTask>>> {
        Box::pin(self.claim_external_tasks(max, wait))
    }

    fn complete(
        &self,
        results: Vec<(String, ExternalTaskResult)>,
    ) -> BoxFuture<'_, Result<Vec<Result<()>>>> {
        Box::pin(self.complete_external_tasks(results))
    }

    fn cancellations(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.inner.cancels.subscribe())
    }

    fn output_sink(&self, task: &ExternalTask) -> Option<OutputSink> {
        Some(WorkerClient::output_sink(self, task))
    }

    fn abandon<'a>(&'a self, task_id: &'a str, reason: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.abandon_external_task(task_id, reason))
    }

    fn default_claim_limit(&self) -> usize {
        Self::DEFAULT_CLAIM_LIMIT
    }

    fn health(&self) -> super::SourceHealth {
        super::SourceHealth {
            connected: self.is_connected(),
            worker_id: Some(self.worker_id().to_owned()),
            heartbeat_age: Some(self.heartbeat_age()),
        }
    }
}

/// A reconnection loses the pull requests the server held: forget them, so the next claim asks
/// again instead of waiting for their expiry.
async fn forget_requests_on_reconnect(
    inner: std::sync::Weak<Inner>,
    mut connections: watch::Receiver<u64>,
) {
    connections.borrow_and_update();
    while connections.changed().await.is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        if let Some(d) = &inner.direct {
            d.forget();
        }
    }
}

/// How long a single-source worker's pull requests stay open.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// How often the server confirms an idle pull request is still open.
const PULL_HEARTBEAT: Duration = Duration::from_millis(500);

/// Silence after which open pull requests count as lost (three missed heartbeats): a consumer
/// that lost its leader answers nothing until it has a new one, and a worker must ask again
/// soon after, or the others take all the work meanwhile.
const PULL_SILENCE: Duration = Duration::from_millis(1500);

/// How long a worker waits before asking again after a request was refused.
const REASK_PAUSE: Duration = Duration::from_millis(250);

/// The longest a single broker operation may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a fetch (a `no_wait` pull request, which a consumer's leader answers at once)
/// may go without an answer: a request sent while the connection drops, or while the consumer
/// changes leader on a cluster, is never answered, and waiting for it would keep the worker from
/// its other consumers. A delivery that comes later anyway is delivered again after the lease.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a consumer whose fetch went unanswered is left alone.
const FETCH_PAUSE: Duration = Duration::from_secs(2);

/// Runs a broker operation with [`OP_TIMEOUT`], mapping both failures to `BrokerUnavailable`.
async fn timed<T, E: std::fmt::Display>(
    what: &str,
    op: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(r) => r.map_err(|e| Error::BrokerUnavailable {
            reason: format!("{what}: {e}"),
        }),
        Err(_) => Err(Error::BrokerUnavailable {
            reason: format!("{what}: no answer within {OP_TIMEOUT:?}"),
        }),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::BrokerUnavailable {
        reason: e.to_string(),
    }
}

/// `k=v,k=v` into labels (what a route consumer's description holds).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn next_gen(counter: &Mutex<u64>) -> u64 {
    let mut g = counter.lock();
    *g += 1;
    *g
}

async fn listen_doorbells(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(sid) = msg.subject.split('.').nth(2).map(str::to_owned) else {
            continue;
        };
        let bell = match wire::decode::<Doorbell>(&msg.payload) {
            Ok(b) => b,
            Err(err) => {
                tracing::debug!(error = %err, "ignoring a malformed doorbell");
                continue;
            }
        };
        if !inner.options.lanes.contains(&bell.lane)
            || !wire::labels_match(&bell.labels, &inner.options.labels)
        {
            continue;
        }
        let generation = next_gen(&inner.hint_gen);
        inner
            .hints
            .lock()
            .insert((bell.lane, sid, bell.route), generation);
        inner.bell.send_modify(|n| *n += 1);
    }
}

async fn listen_cancels(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Ok(notice) = wire::decode::<CancelNotice>(&msg.payload) else {
            continue;
        };
        let claim = inner.claims.lock().remove(&notice.task_id);
        if let Some(claim) = claim {
            // The session no longer wants it: remove it from the queue.
            inner.ack(&claim.reply, AckKind::Ack).await;
        }
        let _ = inner.cancels.send(notice.task_id);
    }
}

/// Renews the lease of every outstanding claim.
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => (i.lease / 3).max(Duration::from_millis(200)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let replies: Vec<Subject> = {
            let claims = inner.claims.lock();
            claims
                .values()
                .filter(|c| c.delivery == DeliveryMode::AtLeastOnce)
                .map(|c| c.reply.clone())
                .collect()
        };
        for reply in replies {
            inner.ack(&reply, AckKind::Progress).await;
        }
        *inner.last_heartbeat.lock() = Instant::now();
    }
}

/// Receives what the open pull requests of a single-source worker deliver.
async fn direct_deliveries(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    use async_nats::StatusCode;
    while let Some(msg) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(d) = &inner.direct else { return };
        match msg.status {
            Some(StatusCode::IDLE_HEARTBEAT) => {
                d.heard();
                continue;
            }
            // A request expired or was cut short (its consumer's leader changed or is missing).
            Some(status) => {
                tracing::debug!(%status, description = ?msg.description, "a pull request ended");
                d.ended(status);
                continue;
            }
            None => {
                d.heard();
                d.consume(false);
            }
        }
        let session = WorkerClient {
            inner: inner.clone(),
        };
        let message = jetstream::Message {
            message: msg,
            context: inner.js.clone(),
        };
        if let Some(task) = session.accept(message).await {
            d.ready.lock().push_back(task);
            d.arrived.notify_waiters();
        }
    }
}

async fn publish_output(
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    while let Some((subject, payload)) = rx.recv().await {
        let _ = client.publish(subject, payload.into()).await;
    }
}

//! [`WorkerClient`]: the worker's side of NATS JetStream, with the same methods as
//! [`AgentSession`](crate::AgentSession) so the spec's worker loop runs unchanged on another
//! machine.
//!
//! Three kinds of worker (`docs/protocol.md` §1):
//! - a worker of **one session** ([`WorkerClientOptions::session`], `--session-id S`) attaches to
//!   it (the session's process answers with its tenant and lease) and pulls from the session's
//!   own consumers;
//! - a **tenant's pool** worker ([`WorkerClientOptions::pool`] + `with_tenant`) pulls from that
//!   tenant's pool consumers;
//! - a **fleet** worker ([`WorkerClientOptions::pool`]) serves every tenant, sharing its slots
//!   between them by the weights their sessions declare.
//!
//! Workers wait for work: a worker started before any session (or before its session) keeps
//! running, says once that it waits, and takes tasks as soon as they exist. It announces its
//! [`Presence`] every few seconds.
//!
//! A claimed task is leased: while it is outstanding the client renews the lease (`InProgress`)
//! every third of the consumer's `AckWait`, so only a dead worker loses it. The result is stored
//! in the results stream before the task is acknowledged, so a crash in between runs the task again
//! rather than losing it (at least once; a lane configured at-most-once is acknowledged first).
//!
//! Payloads and results too large for a NATS message travel through the tenant's JetStream
//! object store, by reference (`docs/protocol.md` §3.5): a claimed task always has its payload in
//! hand. Reading a payload never holds up the other deliveries.

mod pull;
mod results;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, join_all};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::pull::{Credit, Ending};
use self::results::{Encoded, Target};
use super::NatsConfig;
use super::objects::{self, Bucket};
use crate::broker::wire::{
    self, ANY_ROUTE, AttachReply, AttachRequest, CancelNotice, DeliveryMode, Doorbell, FLEET,
    Names, OutputChunk, PROTOCOL_VERSION, Presence, ResultEnvelope, ResultKind, TaskEnvelope,
    WorkerState,
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
/// let pool = WorkerClientOptions::pool().with_tenant("acme");
/// assert!(pool.session_id.is_none());
/// assert_eq!(pool.tenant.as_deref(), Some("acme"));
/// ```
#[derive(Debug, Clone)]
pub struct WorkerClientOptions {
    /// The session to serve; `None` serves every session (a pool worker).
    pub session_id: Option<String>,
    /// The tenant whose sessions a pool worker serves; `None` serves every tenant (the shared
    /// fleet). A worker of one session learns its session's tenant; given, it attaches under it
    /// (what a credential confined to that tenant allows).
    pub tenant: Option<String>,
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

    /// Serve every session on the broker (of [`with_tenant`](Self::with_tenant)'s tenant, or
    /// of every tenant).
    pub fn pool() -> Self {
        Self {
            session_id: None,
            tenant: None,
            lanes: SessionLane::ALL.to_vec(),
            labels: BTreeMap::new(),
            worker_id: format!(
                "worker-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
        }
    }

    /// Serve only this tenant's sessions.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
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
    target: Target,
    delivery: DeliveryMode,
    attempt: u32,
    max_attempts: u32,
    retry: RetryPolicy,
}

/// A consumer that may have work: (lane, tenant, consumer), ordered by lane priority first.
type Source = (SessionLane, String, String);

/// How often a worker announces its presence.
const PRESENCE_INTERVAL: Duration = Duration::from_secs(5);

/// How often a worker of one session asks to attach while its session is not there.
const ATTACH_RETRY: Duration = Duration::from_secs(1);

/// How long a tenant learned from doorbells stays a source without a new one.
const TENANT_IDLE: Duration = Duration::from_secs(60);

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    options: WorkerClientOptions,
    /// The lease renewals are paced by (the shortest consumer `ack_wait` seen).
    lease: Mutex<Duration>,
    /// For a worker of one session: the attach answer, once its session answered.
    attached: watch::Sender<Option<AttachReply>>,
    /// Tasks streams by tenant, opened when first needed.
    streams: tokio::sync::Mutex<HashMap<String, stream::Stream>>,
    consumers: Mutex<HashMap<(String, String), consumer::PullConsumer>>,
    /// Consumers whose last fetch went unanswered (no leader: an election on a cluster), left
    /// alone until the instant given so they do not hold up the others.
    unanswered: Mutex<HashMap<(String, String), Instant>>,
    /// Consumers a doorbell (or a full batch) says may have work, with a generation so a hint that
    /// arrives during a fetch is not lost.
    hints: Mutex<BTreeMap<Source, u64>>,
    hint_gen: Mutex<u64>,
    /// Sources swept now and then (in case a doorbell was missed), with when they were last
    /// rung (tenants learned from doorbells are forgotten after [`TENANT_IDLE`]).
    known: Mutex<BTreeMap<Source, Instant>>,
    /// Tenants' weights as their doorbells last said, and the slots each is owed (fair shares).
    weights: Mutex<HashMap<String, f64>>,
    deficits: Mutex<HashMap<String, f64>>,
    bell: watch::Sender<u64>,
    claims: Mutex<HashMap<String, Claim>>,
    /// Tasks delivered and claimed, waiting for the caller (open requests deliver here, and
    /// tasks whose payload was read in the background).
    ready: Mutex<VecDeque<ExternalTask>>,
    /// Deliveries whose payload is being read.
    fetching: AtomicU64,
    /// Woken when tasks arrive or a request ends (the claim may ask again).
    arrived: Notify,
    cancels: broadcast::Sender<String>,
    /// Tasks cancelled before this worker held them (newest last, bounded): a delivery of one
    /// is ended without running it.
    cancelled_early: Mutex<VecDeque<(String, String)>>,
    output: mpsc::UnboundedSender<(String, Vec<u8>)>,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// A single-source worker's open pull requests.
    direct: Option<Credit>,
    /// Where its open requests deliver.
    inbox: Subject,
    /// Observability: when the heartbeat last renewed the leases (`/metrics` heartbeat age).
    last_heartbeat: Mutex<Instant>,
    /// Object stores by tenant, opened when first needed.
    buckets: tokio::sync::Mutex<HashMap<String, Bucket>>,
    /// Envelopes larger than this put their result in the object store.
    inline_limit: usize,
    max_object_bytes: usize,
    /// Work exists for this worker (a source answered, or its session attached it).
    serving: AtomicBool,
    draining: AtomicBool,
    /// Slots and busy slots, as the worker loop last reported them (for presence).
    slots: AtomicU64,
    busy: AtomicU64,
    presence_changed: Notify,
    /// Tasks taken since the last taken notices went out (at most every [`TAKEN_EVERY`]).
    taken: Mutex<Vec<String>>,
    taken_added: Arc<Notify>,
    /// The session this worker serves said it closed (reset when it attaches again).
    session_closed: watch::Sender<bool>,
}

/// How long taken notices are gathered before they go out: a task that ends sooner needs none
/// (under load most do), and each session gets one message per interval, not per claim.
const TAKEN_EVERY: Duration = Duration::from_millis(50);

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

    fn state(&self) -> WorkerState {
        if self.draining.load(Ordering::Relaxed) {
            WorkerState::Draining
        } else if self.serving.load(Ordering::Relaxed) {
            WorkerState::Serving
        } else {
            WorkerState::Waiting
        }
    }

    /// Work exists for this worker: say so once.
    fn serving(&self) {
        if !self.serving.swap(true, Ordering::Relaxed) {
            tracing::info!(worker = self.options.worker_id, "tasks found; serving");
            self.presence_changed.notify_one();
        }
    }

    fn shorter_lease(&self, lease: Duration) {
        let mut l = self.lease.lock();
        if lease >= Duration::from_secs(1) && lease < *l {
            *l = lease;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for h in self.background.lock().drain(..) {
            h.abort();
        }
    }
}

/// The worker's side of sessions on other machines. See the [module docs](self).
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
            .field("tenant", &self.inner.options.tenant)
            .field("worker_id", &self.inner.options.worker_id)
            .field("claims", &self.inner.claims.lock().len())
            .finish_non_exhaustive()
    }
}

impl WorkerClient {
    /// How many tasks one claim takes when the caller gives no limit (`pending_external_tasks`,
    /// and the bindings' `pending_external_tasks(wait_ms=...)` without `limit`).
    pub const DEFAULT_CLAIM_LIMIT: usize = 256;

    /// Connects to `url` (one or more comma-separated servers) as a worker of `session_id`
    /// (`"*"` for every session of every tenant).
    ///
    /// Returns once connected, whether or not the session (or any session) exists yet: the
    /// worker waits for work.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when NATS cannot be reached.
    pub async fn connect(url: &str, session_id: &str) -> Result<Self> {
        let options = match session_id {
            "*" => WorkerClientOptions::pool(),
            id => WorkerClientOptions::session(id),
        };
        Self::connect_with(NatsConfig::new(url), options).await
    }

    /// Connects with full settings (auth, TLS, prefix, tenant, lanes, labels, worker id).
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
        if let Some(t) = &options.tenant
            && !wire::is_tenant(t)
        {
            return Err(Error::invalid_config(format!(
                "tenant {t:?} must be 1 to 64 letters, digits, '-' or '_', not starting with '_'"
            )));
        }
        if !wire::is_token(&options.worker_id) {
            return Err(Error::invalid_config(format!(
                "worker id {:?} must be 1 to 64 letters, digits, '-' or '_'",
                options.worker_id
            )));
        }
        if options.lanes.is_empty() {
            return Err(Error::invalid_config(
                "a worker must serve at least one lane",
            ));
        }
        let (client, connections) = config.connect_watched().await?;
        let js = jetstream::new(client.clone());
        let (output, output_rx) = mpsc::unbounded_channel();
        let single_lane = match &options.lanes[..] {
            [lane] if options.labels.is_empty() => Some(*lane),
            _ => None,
        };
        // One consumer to pull from: keep pull requests open on it.
        let direct = match (&options.session_id, &options.tenant, single_lane) {
            (Some(_), _, Some(_)) => Some(Credit::new(None)),
            (None, Some(t), Some(lane)) => Some(Credit::new(Some(format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                names.tasks_stream(t),
                names.pool_consumer(lane, ANY_ROUTE)
            )))),
            _ => None,
        };
        let inbox = Subject::from(client.new_inbox());
        let direct_sub = match &direct {
            Some(_) => Some(client.subscribe(inbox.clone()).await.map_err(unavailable)?),
            None => None,
        };
        let inner = Arc::new(Inner {
            client: client.clone(),
            js,
            names: names.clone(),
            lease: Mutex::new(config.lease),
            attached: watch::channel(None).0,
            streams: tokio::sync::Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            unanswered: Mutex::new(HashMap::new()),
            hints: Mutex::new(BTreeMap::new()),
            hint_gen: Mutex::new(0),
            known: Mutex::new(BTreeMap::new()),
            weights: Mutex::new(HashMap::new()),
            deficits: Mutex::new(HashMap::new()),
            bell: watch::channel(0).0,
            claims: Mutex::new(HashMap::new()),
            ready: Mutex::new(VecDeque::new()),
            fetching: AtomicU64::new(0),
            arrived: Notify::new(),
            cancels: broadcast::channel(1024).0,
            cancelled_early: Mutex::new(VecDeque::new()),
            output,
            background: Mutex::new(Vec::new()),
            direct,
            inbox: inbox.clone(),
            last_heartbeat: Mutex::new(Instant::now()),
            buckets: tokio::sync::Mutex::new(HashMap::new()),
            inline_limit: objects::inline_limit(&client),
            max_object_bytes: config.max_object_bytes,
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            slots: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            presence_changed: Notify::new(),
            taken: Mutex::new(Vec::new()),
            taken_added: Arc::new(Notify::new()),
            session_closed: watch::channel(false).0,
            options,
        });
        // A tenant's pool worker knows its sources from the start.
        if inner.options.session_id.is_none()
            && let Some(t) = &inner.options.tenant
        {
            let now = Instant::now();
            let mut known = inner.known.lock();
            for &lane in &inner.options.lanes {
                known.insert(
                    (lane, t.clone(), names.pool_consumer(lane, ANY_ROUTE)),
                    now + Duration::from_secs(365 * 24 * 3600),
                );
            }
        }
        let weak = Arc::downgrade(&inner);
        let mut background = vec![
            tokio::spawn(heartbeat(weak.clone())),
            tokio::spawn(publish_output(client.clone(), output_rx)),
            tokio::spawn(announce(weak.clone())),
            tokio::spawn(send_taken(weak.clone(), inner.taken_added.clone())),
        ];
        match &inner.options.session_id {
            Some(sid) => {
                background.push(tokio::spawn(attach(weak.clone(), sid.clone())));
            }
            None => {
                let tenant = inner.options.tenant.as_deref().unwrap_or("*");
                let doorbells = client
                    .subscribe(names.ready_subject(tenant))
                    .await
                    .map_err(unavailable)?;
                let cancels = client
                    .subscribe(names.cancel_subject(tenant))
                    .await
                    .map_err(unavailable)?;
                background.push(tokio::spawn(listen_doorbells(weak.clone(), doorbells)));
                background.push(tokio::spawn(listen_cancels(weak.clone(), cancels)));
            }
        }
        if let Some(sub) = direct_sub {
            background.push(tokio::spawn(forget_requests_on_reconnect(
                weak.clone(),
                connections,
            )));
            background.push(tokio::spawn(direct_deliveries(weak.clone(), sub)));
        }
        *inner.background.lock() = background;
        let me = Self { inner };
        me.sweep();
        Ok(me)
    }

    /// Resolves once the session this worker serves ([`WorkerClientOptions::session`]) says it
    /// closed (a [`SessionClosed`](wire::SessionClosed) notice); never for a pool worker. A
    /// session whose process died without closing says nothing: its worker keeps waiting (for
    /// the session to open again).
    pub async fn session_closed(&self) {
        let mut closed = self.inner.session_closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// Whether the session this worker serves said it closed (and has not attached it since).
    pub fn is_session_closed(&self) -> bool {
        *self.inner.session_closed.borrow()
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

    /// `Waiting` until work exists for this worker (its session attached it, or a source of
    /// its tenants answered), then `Serving`; `Draining` once [`drain`](Self::drain) or
    /// [`close`](Self::close) was called.
    pub fn state(&self) -> WorkerState {
        self.inner.state()
    }

    /// Tells the client how many slots the worker has and how many are busy (announced in its
    /// presence).
    pub fn report_load(&self, slots: usize, busy: usize) {
        self.inner.slots.store(slots as u64, Ordering::Relaxed);
        self.inner.busy.store(busy as u64, Ordering::Relaxed);
    }

    /// Announces that the worker takes no new tasks (it finishes those it holds).
    pub fn drain(&self) {
        if !self.inner.draining.swap(true, Ordering::Relaxed) {
            self.inner.presence_changed.notify_one();
        }
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
        if max == 0 || self.inner.draining.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let until = Instant::now() + wait;
        let mut bell = self.inner.bell.subscribe();
        loop {
            let arrived = self.inner.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            bell.borrow_and_update();
            // A delivery moves from an open request's credit to `fetching` (being accepted, or
            // its payload read) to `ready`. Read against that direction, one that moves
            // meanwhile is counted twice (asked for on the next turn), never missed: a miss
            // would ask for it again, and that request could outlive this worker.
            let owed = self.inner.direct.as_ref().map_or(0, Credit::outstanding);
            let in_transit = self.inner.fetching.load(Ordering::SeqCst) as usize;
            let mut tasks = self.take_ready(max);
            let free = max.saturating_sub(tasks.len() + in_transit);
            let wake = match &self.inner.direct {
                Some(d) => {
                    if free > 0 {
                        self.ask(d, Credit::want(free, owed)).await?;
                    }
                    d.silence_deadline()
                }
                None => {
                    if free > 0 {
                        tasks.extend(self.fetch(free).await?);
                    }
                    None
                }
            };
            if !tasks.is_empty() {
                self.note_taken(&tasks);
                return Ok(tasks);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(tasks);
            }
            // Wait for a delivery or a doorbell; sweep every source now and then in case one
            // was missed.
            let sweep = until.min(now + Duration::from_secs(1));
            let wake = wake.map_or(sweep, |w| w.min(sweep));
            tokio::select! {
                _ = arrived => {}
                _ = bell.changed() => {}
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= sweep {
                        self.sweep();
                    }
                }
            }
        }
    }

    /// Notes tasks this worker took, for its next taken notices ([`send_taken`]).
    fn note_taken(&self, tasks: &[ExternalTask]) {
        self.inner
            .taken
            .lock()
            .extend(tasks.iter().map(|t| t.task_id.clone()));
        self.inner.taken_added.notify_one();
    }

    fn take_ready(&self, max: usize) -> Vec<ExternalTask> {
        let mut ready = self.inner.ready.lock();
        let n = ready.len().min(max);
        ready.drain(..n).collect()
    }

    /// Asks the single source for `want` more tasks (the free slots not yet covered by open
    /// requests, [`Credit::want`]).
    async fn ask(&self, d: &Credit, want: usize) -> Result<()> {
        if want == 0 || Instant::now() < d.paused_until() {
            return Ok(());
        }
        let Some(next) = d.next_subject.lock().clone() else {
            // A worker of one session whose session has not answered yet.
            return Ok(());
        };
        tracing::trace!(want, "asking for tasks");
        d.asked(want);
        self.inner
            .client
            .publish_with_reply(
                next,
                self.inner.inbox.clone(),
                Credit::request_body(want).into(),
            )
            .await
            .map_err(unavailable)
    }

    /// Hints every known source (after a timeout or at start).
    fn sweep(&self) {
        let inner = &self.inner;
        let now = Instant::now();
        let sources: Vec<Source> = {
            let mut known = inner.known.lock();
            known.retain(|_, until| *until > now);
            known.keys().cloned().collect()
        };
        let mut hints = inner.hints.lock();
        let generation = next_gen(&inner.hint_gen);
        for s in sources {
            hints.insert(s, generation);
        }
    }

    /// One pass over the hinted sources: tenants share `max` by weight (what each is owed
    /// carries over between calls), highest-priority lane first within a tenant; slots a tenant
    /// cannot use go to the others.
    async fn fetch(&self, max: usize) -> Result<Vec<ExternalTask>> {
        let inner = &self.inner;
        let candidates: Vec<(Source, u64)> = inner
            .hints
            .lock()
            .iter()
            .map(|(s, g)| (s.clone(), *g))
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_tenant: BTreeMap<String, Vec<(Source, u64)>> = BTreeMap::new();
        for c in candidates {
            by_tenant.entry(c.0.1.clone()).or_default().push(c);
        }
        for sources in by_tenant.values_mut() {
            sources.sort_by_key(|((lane, _, _), _)| *lane);
        }
        let budgets = {
            let weights = inner.weights.lock();
            let mut deficits = inner.deficits.lock();
            deficits.retain(|t, _| by_tenant.contains_key(t));
            let total: f64 = by_tenant
                .keys()
                .map(|t| weights.get(t).copied().unwrap_or(1.0))
                .sum();
            let mut budgets: Vec<(String, usize)> = by_tenant
                .keys()
                .map(|t| {
                    let w = weights.get(t).copied().unwrap_or(1.0);
                    let d = deficits.entry(t.clone()).or_insert(0.0);
                    // Bounded both ways: no tenant banks a burst, none is starved for long
                    // after taking slots the others could not use.
                    *d = (*d + max as f64 * w / total).clamp(-2.0 * max as f64, 2.0 * max as f64);
                    (t.clone(), d.floor().max(0.0) as usize)
                })
                .collect();
            // The most owed first.
            budgets.sort_by(|a, b| {
                let (da, db) = (deficits[&a.0], deficits[&b.0]);
                db.partial_cmp(&da).unwrap_or(std::cmp::Ordering::Equal)
            });
            budgets
        };
        let mut out = Vec::new();
        // Tenants that had less than they were asked for: drained for now.
        let mut drained: Vec<&str> = Vec::new();
        for (tenant, budget) in &budgets {
            let want = (*budget).min(max - out.len());
            if want == 0 {
                continue;
            }
            let got = self
                .fetch_tenant(&by_tenant[tenant], want, &mut out)
                .await?;
            if let Some(d) = inner.deficits.lock().get_mut(tenant) {
                *d -= got as f64;
            }
            if got < want {
                drained.push(tenant);
            }
        }
        // Work-conserving: slots nobody's share covered go to the most owed tenants that may
        // still have work.
        for (tenant, _) in &budgets {
            if out.len() >= max {
                break;
            }
            if drained.contains(&tenant.as_str()) {
                continue;
            }
            let want = max - out.len();
            let got = self
                .fetch_tenant(&by_tenant[tenant], want, &mut out)
                .await?;
            if let Some(d) = inner.deficits.lock().get_mut(tenant) {
                *d -= got as f64;
            }
        }
        Ok(out)
    }

    /// Fetches up to `want` deliveries from one tenant's sources, highest-priority lane first;
    /// the claimed tasks go to `out` (or, while their payload is read, to the ready queue
    /// later). Returns how many deliveries it took.
    async fn fetch_tenant(
        &self,
        sources: &[(Source, u64)],
        want: usize,
        out: &mut Vec<ExternalTask>,
    ) -> Result<usize> {
        let inner = &self.inner;
        let mut total = 0;
        for ((lane, tenant, name), generation) in sources {
            if total >= want {
                break;
            }
            let key = (tenant.clone(), name.clone());
            {
                // Its hint stays: it is tried again once the pause is over.
                let mut unanswered = inner.unanswered.lock();
                let now = Instant::now();
                unanswered.retain(|_, until| *until > now);
                if unanswered.contains_key(&key) {
                    continue;
                }
            }
            let consumer = match self.consumer(tenant, name).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    // Not there (yet): no session of it has published.
                    inner
                        .hints
                        .lock()
                        .remove(&(*lane, tenant.clone(), name.clone()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            inner.serving();
            let n = want - total;
            // Bounded: a request in flight when the connection drops is never answered.
            let mut batch = timed(
                "fetching tasks",
                consumer.fetch().max_messages(n).messages(),
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
                            .insert(key.clone(), Instant::now() + FETCH_PAUSE);
                        break;
                    }
                };
                got += 1;
                if let Some(task) = self.accept(msg.message).await {
                    out.push(task);
                }
            }
            total += got;
            if got < n {
                // Drained: forget the hint unless a doorbell renewed it meanwhile.
                let mut hints = inner.hints.lock();
                let key = (*lane, tenant.clone(), name.clone());
                if hints.get(&key) == Some(generation) {
                    hints.remove(&key);
                }
            }
        }
        Ok(total)
    }

    /// A tenant's consumer, `None` while it (or the tenant's stream) does not exist.
    async fn consumer(&self, tenant: &str, name: &str) -> Result<Option<consumer::PullConsumer>> {
        let key = (tenant.to_owned(), name.to_owned());
        if let Some(c) = self.inner.consumers.lock().get(&key) {
            return Ok(Some(c.clone()));
        }
        let Some(stream) = self.stream(tenant).await? else {
            return Ok(None);
        };
        match stream.get_consumer::<consumer::pull::Config>(name).await {
            Ok(c) => {
                self.inner.shorter_lease(c.cached_info().config.ack_wait);
                self.inner.consumers.lock().insert(key, c.clone());
                Ok(Some(c))
            }
            Err(e) if e.to_string().contains("not found") => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// A tenant's tasks stream, `None` while no session of the tenant was ever opened.
    async fn stream(&self, tenant: &str) -> Result<Option<stream::Stream>> {
        let mut streams = self.inner.streams.lock().await;
        if let Some(s) = streams.get(tenant) {
            return Ok(Some(s.clone()));
        }
        match self
            .inner
            .js
            .get_stream(self.inner.names.tasks_stream(tenant))
            .await
        {
            Ok(s) => {
                streams.insert(tenant.to_owned(), s.clone());
                Ok(Some(s))
            }
            Err(e) if e.to_string().contains("not found") => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Turns a delivery into a claimed task, or disposes of it (malformed, exhausted, another
    /// tenant's). A task whose payload is in the object store is read in the background and
    /// lands in the ready queue.
    async fn accept(&self, msg: async_nats::Message) -> Option<ExternalTask> {
        let reply = msg.reply.clone()?;
        let delivered = delivery_count(&reply).max(1);
        let env = match wire::decode::<TaskEnvelope>(&msg.payload) {
            Ok(env) => env,
            Err(err) => {
                tracing::warn!(error = %err, subject = %msg.subject, "dropping a malformed task message");
                self.inner.ack(&reply, AckKind::Term).await;
                return None;
            }
        };
        // `<P>.task.<tenant>.<lane>.<route>[.<session>]`: the tenant (and session) the task came
        // on must be the ones its envelope names, and results go to that tenant's subjects.
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        let (subject_tenant, subject_session) = match tokens[..] {
            [_, _, t, _, _] => (Some(t), None),
            [_, _, t, _, _, s] => (Some(t), Some(s)),
            _ => (None, None),
        };
        let wrong = subject_tenant != Some(env.tenant.as_str())
            || subject_session.is_some_and(|s| s != env.task.session_id)
            || self
                .inner
                .options
                .tenant
                .as_ref()
                .is_some_and(|t| *t != env.tenant)
            || !wire::is_token(&env.task.session_id)
            || !wire::is_token(&env.hub);
        if wrong {
            tracing::warn!(
                subject = %msg.subject,
                tenant = %env.tenant,
                session_id = %env.task.session_id,
                "dropping a task whose tenant or session does not match its subject"
            );
            self.inner.ack(&reply, AckKind::Term).await;
            return None;
        }
        let target = Target {
            tenant: env.tenant.clone(),
            hub: env.hub.clone(),
            session: env.task.session_id.clone(),
        };
        let cancelled = {
            let mut early = self.inner.cancelled_early.lock();
            let at = early
                .iter()
                .position(|(s, t)| *s == target.session && *t == env.task.task_id);
            at.and_then(|i| early.remove(i)).is_some()
        };
        if cancelled {
            // Cancelled before it arrived: the session failed it already; end the delivery.
            self.inner.ack(&reply, AckKind::Ack).await;
            return None;
        }
        let mut task = env.task;
        task.attempt = delivered;
        // Observability: join the session's trace (W3C `traceparent` header), see crate::trace.
        task = task.with_trace_context(crate::trace::from_headers(msg.headers.as_ref()));
        if delivered > env.max_attempts {
            let reason = format!(
                "{} attempts were lost (worker crashes or expired leases)",
                delivered - 1
            );
            let report = self.envelope(
                ResultKind::Exhausted,
                &task.task_id,
                &target.session,
                delivered,
                ExternalTaskResult::err(reason),
            );
            // The outcome is stored first, then the message ended: the other order would lose
            // the outcome if this worker died in between. If it cannot be stored, the message
            // comes back later and the next delivery reports it.
            let stored = match self
                .publish_result(&target, &task.task_id, delivered, report)
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            let end = match stored {
                true => AckKind::Term,
                false => AckKind::Nak(Some(Duration::from_secs(1))),
            };
            self.inner.ack(&reply, end).await;
            return None;
        }
        let claim = Claim {
            reply,
            target,
            delivery: env.delivery,
            attempt: delivered,
            max_attempts: env.max_attempts,
            retry: env.retry,
        };
        match env.payload_ref {
            None => self.claimed(task, claim).await,
            Some(r) => {
                // Read in the background: one slow object must not hold up other deliveries.
                self.inner.fetching.fetch_add(1, Ordering::SeqCst);
                let me = self.clone();
                tokio::spawn(async move {
                    let mut task = task;
                    let read = me.fetch_payload(&mut task, &r, &claim).await;
                    let task = match read {
                        true => me.claimed(task, claim).await,
                        false => None,
                    };
                    // Ready before no longer in transit (see claim_external_tasks).
                    if let Some(task) = task {
                        me.inner.ready.lock().push_back(task);
                    }
                    me.inner.fetching.fetch_sub(1, Ordering::SeqCst);
                    me.inner.arrived.notify_waiters();
                });
                None
            }
        }
    }

    /// The last step of a claim: an at-most-once task is acknowledged first (not confirmed:
    /// another worker may get it; this one must not run it).
    async fn claimed(&self, task: ExternalTask, claim: Claim) -> Option<ExternalTask> {
        if claim.delivery == DeliveryMode::AtMostOnce
            && !self.inner.ack_confirmed(&claim.reply).await
        {
            return None;
        }
        self.inner.claims.lock().insert(task.task_id.clone(), claim);
        Some(task)
    }

    /// Replaces a referenced payload by the object's content. When it cannot be read, gives the
    /// task back (NATS unavailable) or fails it (missing, wrong object, wrong size, too large)
    /// and says false.
    async fn fetch_payload(
        &self,
        task: &mut ExternalTask,
        r: &wire::ObjectRef,
        claim: &Claim,
    ) -> bool {
        let reply = &claim.reply;
        // Reading may take a while: start from a fresh lease.
        self.inner.ack(reply, AckKind::Progress).await;
        let expected = self
            .inner
            .names
            .payload_object(&claim.target.session, &task.task_id);
        let read = match self.objects(&claim.target.tenant).await {
            Ok(bucket) => bucket.get(r, &expected, self.inner.max_object_bytes).await,
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
            &claim.target.session,
            task.attempt,
            objects::failed(&err),
        );
        let reported = match self
            .publish_result(&claim.target, &task.task_id, task.attempt, report)
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

    /// A tenant's object store bucket, opened on first use.
    async fn objects(&self, tenant: &str) -> Result<Bucket> {
        let mut buckets = self.inner.buckets.lock().await;
        if let Some(b) = buckets.get(tenant) {
            return Ok(b.clone());
        }
        let b = Bucket::open(&self.inner.js, &self.inner.names, tenant).await?;
        buckets.insert(tenant.to_owned(), b.clone());
        Ok(b)
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
        target: &Target,
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
        let name = self
            .inner
            .names
            .result_object(&target.session, task_id, attempt);
        let bucket = self.objects(&target.tenant).await?;
        envelope.result_ref = Some(bucket.put(&name, result).await?);
        envelope.result.result = serde_json::Value::Null;
        Ok(wire::encode(&envelope))
    }

    /// Publishes a results message (one envelope or a batch) to the results stream; the future
    /// resolves once the server stored it.
    async fn publish_results_message(
        &self,
        target: &Target,
        bytes: Vec<u8>,
        message_id: String,
    ) -> Result<BoxFuture<'static, Result<()>>> {
        // The message id makes a publish retried with the same content count once.
        let publish = PublishMessage::build()
            .payload(bytes.into())
            .message_id(message_id);
        let subject = self
            .inner
            .names
            .result_subject(&target.tenant, &target.hub, &target.session);
        let ack = timed(
            "publishing a result",
            self.inner.js.send_publish(subject, publish),
        )
        .await?;
        Ok(Box::pin(async move {
            ack.await.map(|_| ()).map_err(unavailable)
        }))
    }

    async fn publish_result(
        &self,
        target: &Target,
        task_id: &str,
        attempt: u32,
        envelope: ResultEnvelope,
    ) -> Result<BoxFuture<'static, Result<()>>> {
        let bytes = self
            .encode_result(target, task_id, attempt, envelope)
            .await?;
        self.publish_results_message(target, bytes, format!("{task_id}:{attempt}"))
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
        let mut ready: Vec<Encoded<Claim>> = Vec::new();
        for (task_id, result) in results {
            let index = outcomes.len();
            outcomes.push(Ok(()));
            let claim = self.inner.claims.lock().remove(&task_id);
            let Some(claim) = claim else {
                outcomes[index] = Err(Error::TaskNotFound { task_id });
                continue;
            };
            let (target, attempt) = (claim.target.clone(), claim.attempt);
            let env = self.envelope(
                ResultKind::Result,
                &task_id,
                &target.session,
                attempt,
                result,
            );
            let mut encoded = self
                .encode_result(&target, &task_id, attempt, env)
                .await
                .map(|bytes| (bytes, None));
            if let Err(too_large @ Error::PayloadTooLarge { .. }) = encoded {
                // Report a failed result instead, so the task ends rather than hangs; the caller
                // still learns why.
                tracing::warn!(task_id, error = %too_large, "a result is too large; reporting a failure instead");
                let env = self.envelope(
                    ResultKind::Result,
                    &task_id,
                    &target.session,
                    attempt,
                    objects::failed(&too_large),
                );
                encoded = self
                    .encode_result(&target, &task_id, attempt, env)
                    .await
                    .map(|bytes| (bytes, Some(too_large)));
            }
            match encoded {
                Ok((bytes, refused)) => ready.push(Encoded {
                    index,
                    task_id,
                    attempt,
                    target,
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
        let groups = results::group(ready, self.inner.inline_limit);
        let mut sent = Vec::with_capacity(groups.len());
        for group in groups {
            let (bytes, id) = results::message(&group);
            let published = self
                .publish_results_message(&group[0].target, bytes, id)
                .await;
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
                &claim.target.session,
                claim.attempt,
                ExternalTaskResult {
                    success: false,
                    result: serde_json::json!({"error_code": "RetriesExhausted"}),
                    error: Some(format!("given back on an at-most-once lane: {reason}")),
                },
            );
            return self
                .publish_result(&claim.target, task_id, claim.attempt, env)
                .await?
                .await;
        }
        if claim.attempt >= claim.max_attempts {
            // Reported as the next delivery would be (attempt + 1, "exhausted"), stored
            // first, then the message ended.
            let why = format!("{} attempt(s) failed; last: {reason}", claim.attempt);
            let next = claim.attempt + 1;
            let env = self.envelope(
                ResultKind::Exhausted,
                task_id,
                &claim.target.session,
                next,
                ExternalTaskResult::err(why),
            );
            self.publish_result(&claim.target, task_id, next, env)
                .await?
                .await?;
            self.inner.ack(&claim.reply, AckKind::Term).await;
            return Ok(());
        }
        let delay = claim.retry.delay_before_retry(claim.attempt);
        self.inner
            .ack(&claim.reply, AckKind::Nak(Some(delay)))
            .await;
        Ok(())
    }

    /// Ends the delivery of a claimed task this worker will not run or report: its deadline
    /// passed before it started or while it ran (the session has failed it already). The
    /// message is terminated (`+TERM`), so it is not delivered again.
    ///
    /// # Errors
    ///
    /// [`Error::TaskNotFound`] when this worker does not hold the task.
    pub async fn skip_external_task(&self, task_id: &str) -> Result<()> {
        let claim = self.inner.claims.lock().remove(task_id);
        let claim = claim.ok_or_else(|| Error::TaskNotFound {
            task_id: task_id.to_owned(),
        })?;
        if claim.delivery == DeliveryMode::AtLeastOnce {
            self.inner.ack(&claim.reply, AckKind::Term).await;
        }
        Ok(())
    }

    /// Task ids the session cancelled (or timed out) while this worker may be running them.
    pub fn cancellations(&self) -> broadcast::Receiver<String> {
        self.inner.cancels.subscribe()
    }

    /// A sink that streams a task's output chunks to its session (nothing for a task this
    /// worker does not hold).
    pub fn output_sink(&self, task: &ExternalTask) -> OutputSink {
        let subject = self.inner.claims.lock().get(&task.task_id).map(|c| {
            self.inner
                .names
                .output_subject(&c.target.tenant, &c.target.hub, &c.target.session)
        });
        let task_id = task.task_id.clone();
        let tx = self.inner.output.clone();
        let seq = std::sync::atomic::AtomicU64::new(0);
        Arc::new(move |stream: &str, chunk: &str| {
            let Some(subject) = &subject else { return };
            let n = seq.fetch_add(1, Ordering::Relaxed);
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
        self.drain();
        let claims: Vec<Claim> = self.inner.claims.lock().drain().map(|(_, c)| c).collect();
        for c in claims {
            if c.delivery == DeliveryMode::AtLeastOnce {
                self.inner.ack(&c.reply, AckKind::Nak(None)).await;
            }
        }
        publish_presence(&self.inner).await;
        let _ = self.inner.client.flush().await;
        for h in self.inner.background.lock().drain(..) {
            h.abort();
        }
    }
}

/// The delivery count in an acknowledgement subject: `$JS.ACK.<stream>.<consumer>.<delivered>.
/// ...` (9 tokens), or with a domain and account hash first (`$JS.ACK.<domain>.<hash>.<stream>.
/// <consumer>.<delivered>...`, 11 or 12 tokens).
fn delivery_count(reply: &str) -> u32 {
    let tokens: Vec<&str> = reply.split('.').collect();
    let at = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return 1,
    };
    tokens.get(at).and_then(|t| t.parse().ok()).unwrap_or(1)
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
            inner.arrived.notify_waiters();
        }
    }
}

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

fn next_gen(counter: &Mutex<u64>) -> u64 {
    let mut g = counter.lock();
    *g += 1;
    *g
}

/// Doorbells say which (tenant, lane, route) has work: hint that source, remember it for the
/// sweeps, and note the tenant's weight.
async fn listen_doorbells(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(tenant) = msg.subject.split('.').nth(2).map(str::to_owned) else {
            continue;
        };
        if !wire::is_tenant(&tenant) {
            continue;
        }
        let bell = match wire::decode::<Doorbell>(&msg.payload) {
            Ok(b) => b,
            Err(err) => {
                tracing::debug!(error = %err, "ignoring a malformed doorbell");
                continue;
            }
        };
        let own_session = bell.session.as_deref();
        let for_me = match (&inner.options.session_id, own_session) {
            (None, None) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => false,
        };
        if !for_me
            || !inner.options.lanes.contains(&bell.lane)
            || !wire::labels_match(&bell.labels, &inner.options.labels)
            || !wire::is_token(&bell.route)
        {
            continue;
        }
        if bell.weight.is_finite() && bell.weight > 0.0 {
            inner.weights.lock().insert(tenant.clone(), bell.weight);
        }
        let consumer = match own_session {
            Some(s) => inner.names.session_consumer(s, bell.lane, &bell.route),
            None => inner.names.pool_consumer(bell.lane, &bell.route),
        };
        let source = (bell.lane, tenant, consumer);
        let generation = next_gen(&inner.hint_gen);
        inner.hints.lock().insert(source.clone(), generation);
        {
            let mut known = inner.known.lock();
            let until = known.entry(source).or_insert_with(Instant::now);
            *until = (*until).max(Instant::now() + TENANT_IDLE);
        }
        inner.bell.send_modify(|n| *n += 1);
    }
}

async fn listen_cancels(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let notice = match wire::decode::<CancelNotice>(&msg.payload) {
            Ok(notice) => notice,
            Err(_) => {
                if let Ok(closed) = wire::decode::<wire::SessionClosed>(&msg.payload)
                    && closed.event == wire::SessionClosed::EVENT
                    && inner.options.session_id.as_deref() == Some(closed.session_id.as_str())
                {
                    tracing::info!(session = closed.session_id, "the session closed");
                    inner.session_closed.send_replace(true);
                }
                continue;
            }
        };
        let claim = {
            let mut claims = inner.claims.lock();
            match claims.get(&notice.task_id) {
                Some(c) if c.target.session == notice.session_id => claims.remove(&notice.task_id),
                _ => None,
            }
        };
        if let Some(claim) = claim {
            // The session no longer wants it: remove it from the queue.
            inner.ack(&claim.reply, AckKind::Ack).await;
            let _ = inner.cancels.send(notice.task_id);
        } else {
            // Not held (yet): a delivery that comes later must not run.
            let mut early = inner.cancelled_early.lock();
            if early.len() >= MAX_REMEMBERED_CANCELS {
                early.pop_front();
            }
            early.push_back((notice.session_id, notice.task_id));
        }
    }
}

/// How many cancels of tasks not held are remembered.
const MAX_REMEMBERED_CANCELS: usize = 4096;

/// Renews the lease of every outstanding claim.
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    loop {
        let period = match inner.upgrade() {
            Some(i) => (*i.lease.lock() / 3).max(Duration::from_millis(200)),
            None => return,
        };
        tokio::time::sleep(period).await;
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
                inner.serving();
                continue;
            }
            // A request expired or was cut short (its consumer's leader changed or is missing,
            // or the consumer does not exist yet).
            Some(status) => {
                tracing::debug!(%status, description = ?msg.description, "a pull request ended");
                d.ended(match status {
                    StatusCode::TIMEOUT => Ending::Expired,
                    _ => Ending::Refused,
                });
                inner.arrived.notify_waiters();
                continue;
            }
            None => {
                d.heard();
                // In transit from the request's credit to the ready queue: counted before the
                // credit is consumed and until the task is ready (see claim_external_tasks).
                inner.fetching.fetch_add(1, Ordering::SeqCst);
                d.consume(false);
                inner.serving();
            }
        }
        let client = WorkerClient {
            inner: inner.clone(),
        };
        if let Some(task) = client.accept(msg).await {
            inner.ready.lock().push_back(task);
        }
        inner.fetching.fetch_sub(1, Ordering::SeqCst);
        inner.arrived.notify_waiters();
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

/// A worker of one session asks its session to attach it, until the session answers (and again
/// after a reconnection or now and then, in case the session's process restarted).
async fn attach(inner: std::sync::Weak<Inner>, session_id: String) {
    let mut said_waiting = false;
    let mut subscribed: Option<String> = None;
    loop {
        let Some(i) = inner.upgrade() else { return };
        let request = AttachRequest {
            v: PROTOCOL_VERSION,
            worker_id: i.options.worker_id.clone(),
            lanes: i.options.lanes.clone(),
        };
        let subject = i
            .names
            .attach_subject(i.options.tenant.as_deref().unwrap_or(FLEET), &session_id);
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            i.client.request(subject, wire::encode(&request).into()),
        )
        .await;
        let reply = match answer {
            Ok(Ok(msg)) => match wire::decode::<AttachReply>(&msg.payload) {
                Ok(r) if wire::is_tenant(&r.tenant) => Ok(r),
                Ok(r) => Err(format!(
                    "the session named an invalid tenant {:?}",
                    r.tenant
                )),
                Err(_) => Err(String::from_utf8_lossy(&msg.payload).into_owned()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer".to_owned()),
        };
        match reply {
            Ok(r) => {
                if i.attached.borrow().as_ref() != Some(&r) {
                    tracing::info!(
                        session = session_id,
                        tenant = r.tenant,
                        "attached to the session"
                    );
                }
                i.shorter_lease(Duration::from_millis(r.lease_ms));
                if subscribed.as_deref() != Some(r.tenant.as_str()) {
                    // Cancels and doorbells of the session's tenant (doorbells of its own routes).
                    let subs = (
                        i.client.subscribe(i.names.cancel_subject(&r.tenant)).await,
                        i.client.subscribe(i.names.ready_subject(&r.tenant)).await,
                    );
                    if let (Ok(cancels), Ok(bells)) = subs {
                        i.background
                            .lock()
                            .push(tokio::spawn(listen_cancels(inner.clone(), cancels)));
                        i.background
                            .lock()
                            .push(tokio::spawn(listen_doorbells(inner.clone(), bells)));
                        subscribed = Some(r.tenant.clone());
                    }
                }
                let now = Instant::now();
                {
                    let mut known = i.known.lock();
                    for &lane in &i.options.lanes {
                        known.insert(
                            (
                                lane,
                                r.tenant.clone(),
                                i.names.session_consumer(&session_id, lane, ANY_ROUTE),
                            ),
                            now + Duration::from_secs(365 * 24 * 3600),
                        );
                    }
                }
                if let (Some(d), [lane]) = (&i.direct, &i.options.lanes[..]) {
                    *d.next_subject.lock() = Some(format!(
                        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                        i.names.tasks_stream(&r.tenant),
                        i.names.session_consumer(&session_id, *lane, ANY_ROUTE)
                    ));
                }
                i.attached.send_replace(Some(r));
                // Open again (its process restarted, or it was resumed).
                i.session_closed.send_replace(false);
                i.serving();
                i.bell.send_modify(|n| *n += 1);
                i.arrived.notify_waiters();
                drop(i);
                // Attach again now and then: the session's process may have restarted.
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Err(why) => {
                if !said_waiting {
                    tracing::info!(
                        session = session_id,
                        reason = why,
                        "waiting for the session to open"
                    );
                    said_waiting = true;
                }
                drop(i);
                tokio::time::sleep(ATTACH_RETRY).await;
            }
        }
    }
}

/// Announces the worker's presence every [`PRESENCE_INTERVAL`] and whenever its state changes.
/// Tells each session which of its tasks this worker took and still holds (protocol.md §13.4):
/// what was taken within [`TAKEN_EVERY`] goes out as one notice per session; tasks already
/// ended are left out (the session knows who ran them from their results).
async fn send_taken(inner: std::sync::Weak<Inner>, added: Arc<Notify>) {
    loop {
        let note = added.notified();
        tokio::pin!(note);
        note.as_mut().enable();
        let Some(i) = inner.upgrade() else { return };
        let idle = i.taken.lock().is_empty();
        drop(i);
        if idle {
            note.await;
            continue;
        }
        tokio::time::sleep(TAKEN_EVERY).await;
        let Some(i) = inner.upgrade() else { return };
        let taken = std::mem::take(&mut *i.taken.lock());
        let mut by_session: BTreeMap<String, Vec<wire::Taken>> = BTreeMap::new();
        {
            let claims = i.claims.lock();
            for task_id in taken {
                if let Some(c) = claims.get(&task_id) {
                    let t = &c.target;
                    by_session
                        .entry(i.names.taken_subject(&t.tenant, &t.hub, &t.session))
                        .or_default()
                        .push(wire::Taken {
                            task_id,
                            attempt: c.attempt,
                        });
                }
            }
        }
        for (subject, tasks) in by_session {
            let notice = wire::TakenNotice {
                v: PROTOCOL_VERSION,
                worker_id: i.options.worker_id.clone(),
                tasks,
            };
            let _ = i
                .client
                .publish(subject, wire::encode(&notice).into())
                .await;
        }
    }
}

async fn announce(inner: std::sync::Weak<Inner>) {
    let mut said_waiting = false;
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.state() == WorkerState::Waiting && !said_waiting {
            said_waiting = true;
            tracing::info!(
                worker = i.options.worker_id,
                "waiting for work (no session of this worker's tenants or session yet)"
            );
        }
        publish_presence(&i).await;
        // Holds the client for at most one interval after its last handle is dropped.
        tokio::select! {
            _ = i.presence_changed.notified() => {}
            _ = tokio::time::sleep(PRESENCE_INTERVAL) => {}
        }
    }
}

async fn publish_presence(i: &Inner) {
    let tenant = i
        .attached
        .borrow()
        .as_ref()
        .map(|r| r.tenant.clone())
        .or_else(|| i.options.tenant.clone());
    let presence = Presence {
        v: PROTOCOL_VERSION,
        worker_id: i.options.worker_id.clone(),
        tenant: tenant.clone(),
        session: i.options.session_id.clone(),
        lanes: i.options.lanes.clone(),
        labels: i.options.labels.clone(),
        slots: i.slots.load(Ordering::Relaxed),
        busy: i.busy.load(Ordering::Relaxed),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state: i.state(),
        interval_s: PRESENCE_INTERVAL.as_secs(),
    };
    let subject = i
        .names
        .presence_subject(tenant.as_deref().unwrap_or(FLEET), &i.options.worker_id);
    let _ = i
        .client
        .publish(subject, wire::encode(&presence).into())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_counts_from_both_ack_subject_forms() {
        assert_eq!(
            delivery_count("$JS.ACK.A3S_TASKS_t.pool_query__.3.17.9.1700000000.0"),
            3
        );
        assert_eq!(
            delivery_count("$JS.ACK.hub.ACCHASH.A3S_TASKS_t.pool_query__.2.17.9.1700000000.0.tok"),
            2
        );
        assert_eq!(delivery_count("garbage"), 1);
    }
}

//! The hub: what every session of a process that talks to one NATS deployment shares.
//!
//! Cost grows with work, not with open sessions: a process keeps one connection, one results
//! consumer (`hub_<id>`, filter `<P>.result.*.<id>.*`) and one output subscription for all its
//! sessions, creates each tenant's tasks stream, object store and pool consumers once, and rings
//! doorbells for all of them from one place (at most one per tenant, lane and route per
//! millisecond). A session registers with the hub when it opens and leaves when it closes; the
//! broker keeps no state per idle session.
//!
//! Hubs are found by connection identity (servers, credentials, prefix, inbox prefix) in a
//! process-wide registry, and dropped [`HUB_LINGER`] after their last session closed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::NatsConfig;
use super::objects::{self, Bucket};
use crate::broker::Tenant;
use crate::broker::wire::{
    self, AttachReply, AttachRequest, Doorbell, Names, OutputChunk, PROTOCOL_VERSION,
    ResultEnvelope,
};
use crate::error::{Error, Result};
use crate::lane::SessionLane;
use crate::queue::inspect::Target;
use crate::queue::scheduler::Scheduler;

/// How long a hub outlives its last session: a session that opens soon after reuses its
/// connection, consumers and id, and the admin API, asked about a session that just closed,
/// finds a hub that answers (`SessionNotFound`) rather than one half gone (its subscriptions
/// ending while a request is on its way, which would go unanswered).
const HUB_LINGER: Duration = Duration::from_secs(30);

/// How long a pull request for results stays open.
const RESULTS_PULL_EXPIRES: Duration = Duration::from_secs(10);

/// How often the server confirms an idle pull request for results is still open (missing two
/// in a row starts a new one).
const RESULTS_PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Results fetched per pull request.
const RESULTS_BATCH: usize = 512;

/// Under load, one doorbell per key and interval instead of one per stored task.
const RING_INTERVAL: Duration = Duration::from_millis(1);

/// A worker asked to attach to a session: the session answers on `reply`.
pub(crate) struct Attach {
    pub(crate) lanes: Vec<SessionLane>,
    pub(crate) worker_id: String,
    pub(crate) reply: oneshot::Sender<std::result::Result<AttachReply, String>>,
}

/// What the hub knows of one of its sessions.
pub(crate) struct SessionLink {
    pub(crate) tenant: String,
    pub(crate) scheduler: Weak<Scheduler>,
    pub(crate) attach: mpsc::UnboundedSender<Attach>,
}

/// A doorbell to ring: (tenant, lane, route, session for a session's own consumers).
type RingKey = (String, SessionLane, String, Option<String>);

/// One tenant's JetStream objects, created once per hub.
#[derive(Clone)]
pub(crate) struct TenantStreams {
    pub(crate) tasks: stream::Stream,
    pub(crate) bucket: Bucket,
}

pub(crate) struct Hub {
    /// This hub's token in result and output subjects.
    pub(crate) id: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    /// The settings it connected with (stream limits and replicas of what it creates).
    pub(crate) config: NatsConfig,
    /// Envelopes larger than this put their payload in the object store.
    pub(crate) inline_limit: usize,
    sessions: Mutex<HashMap<String, Arc<SessionLink>>>,
    tenants: tokio::sync::Mutex<HashMap<String, TenantStreams>>,
    /// The latest declaration of each tenant (weight, cap), with the session that made it.
    declared: Mutex<HashMap<String, (Tenant, String)>>,
    /// Consumers this hub created, one creation per consumer however many sessions ask at once.
    consumers: Mutex<HashMap<(String, String), CreatedOnce>>,
    /// Doorbells to ring on the next turn of the ringer.
    ring: Mutex<HashSet<RingKey>>,
    labels: Mutex<HashMap<String, BTreeMap<String, String>>>,
    ringer: Arc<Notify>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        for h in self.background.lock().drain(..) {
            h.abort();
        }
    }
}

/// A slot of the registry: the hub once connected.
pub(crate) struct HubSlot {
    cell: tokio::sync::OnceCell<Arc<Hub>>,
    config: NatsConfig,
}

fn registry() -> &'static Mutex<HashMap<String, Weak<HubSlot>>> {
    static HUBS: OnceLock<Mutex<HashMap<String, Weak<HubSlot>>>> = OnceLock::new();
    HUBS.get_or_init(Default::default)
}

/// A consumer's creation, shared by the sessions that need it (stream name, consumer name).
type CreatedOnce = Arc<tokio::sync::OnceCell<Instant>>;

/// The registry key: sessions with the same servers, credentials and names share a hub. (Kept
/// in memory only; the credentials themselves are part of it, as a different token is a
/// different connection.)
fn identity(config: &NatsConfig) -> String {
    use super::config::NatsAuth;
    let auth = match &config.auth {
        NatsAuth::None => String::new(),
        NatsAuth::Token(t) => format!("token:{t}"),
        NatsAuth::UserPassword { user, password } => format!("user:{user}:{password}"),
        NatsAuth::NKey(seed) => format!("nkey:{seed}"),
        NatsAuth::CredentialsFile(p) => format!("creds:{}", p.display()),
    };
    format!(
        "{:?}|{}|{auth}|{:?}|{}|{}|{:?}|{}",
        config.servers,
        config.prefix,
        config.tls,
        config.inbox_prefix,
        config.replicas,
        config.lease,
        config.max_object_bytes
    )
}

impl HubSlot {
    /// The slot for `config`'s connection, shared with every session of this process that uses
    /// the same one.
    pub(crate) fn for_config(config: &NatsConfig) -> Arc<HubSlot> {
        let key = identity(config);
        let mut hubs = registry().lock();
        hubs.retain(|_, slot| slot.strong_count() > 0);
        if let Some(slot) = hubs.get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        let slot = Arc::new(HubSlot {
            cell: tokio::sync::OnceCell::new(),
            config: config.clone(),
        });
        hubs.insert(key, Arc::downgrade(&slot));
        slot
    }

    /// Keeps the slot (and its hub) for [`HUB_LINGER`] more: called by a session that closes.
    pub(crate) fn linger(self: Arc<Self>) {
        tokio::spawn(async move {
            tokio::time::sleep(HUB_LINGER).await;
            drop(self);
        });
    }

    /// The hub, connecting it first if no session did yet.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when NATS cannot be reached or set up.
    pub(crate) async fn hub(&self) -> Result<Arc<Hub>> {
        self.cell
            .get_or_try_init(|| Hub::connect(self.config.clone()))
            .await
            .cloned()
    }
}

pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::BrokerUnavailable {
        reason: format!("{what}: {e}"),
    }
}

impl Hub {
    async fn connect(config: NatsConfig) -> Result<Arc<Hub>> {
        let names = config.validate()?;
        let client = config.connect().await?;
        // Every session of the process publishes through this context: room for many
        // acknowledgements in flight (publishing waits for room rather than failing).
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(1 << 16)
            .backpressure_on_inflight(true)
            .timeout(Duration::from_secs(30))
            .build(client.clone());
        let work_queue = |name: String, subject: String| stream::Config {
            name,
            subjects: vec![subject],
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            max_age: config.stream_max_age,
            max_bytes: config.stream_max_bytes,
            duplicate_window: config.duplicate_window,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let results = js
            .get_or_create_stream(work_queue(names.results_stream(), names.all_results()))
            .await
            .map_err(|e| unavailable("creating the results stream", e))?;
        js.get_or_create_stream(stream::Config {
            name: names.dlq_stream(),
            subjects: vec![names.all_dlq()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: config.stream_max_bytes,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("creating the dead-letter stream", e))?;
        let id = format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let consumer_name = names.hub_consumer(&id);
        results
            .get_or_create_consumer(
                &consumer_name,
                consumer::pull::Config {
                    durable_name: Some(consumer_name.clone()),
                    filter_subject: names.hub_results_filter(&id),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: -1,
                    inactive_threshold: config.inactive_threshold,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("creating the results consumer", e))?;
        let output = client
            .subscribe(names.hub_output_filter(&id))
            .await
            .map_err(|e| unavailable("subscribing to output", e))?;
        let attach = client
            .subscribe(format!("{}.attach.>", names.prefix()))
            .await
            .map_err(|e| unavailable("subscribing to attach requests", e))?;
        let hub = Arc::new(Hub {
            id,
            inline_limit: objects::inline_limit(&client),
            client,
            js,
            names,
            config,
            sessions: Mutex::new(HashMap::new()),
            tenants: tokio::sync::Mutex::new(HashMap::new()),
            declared: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            ring: Mutex::new(HashSet::new()),
            labels: Mutex::new(HashMap::new()),
            ringer: Arc::new(Notify::new()),
            background: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&hub);
        let admin = super::admin::start(&hub).await?;
        let mut background = vec![
            tokio::spawn(consume_results(weak.clone())),
            tokio::spawn(consume_output(weak.clone(), output)),
            tokio::spawn(serve_attach(weak.clone(), attach)),
            tokio::spawn(ring_doorbells(weak)),
        ];
        background.extend(admin.into_iter().map(tokio::spawn));
        *hub.background.lock() = background;
        tracing::debug!(hub = hub.id, "NATS hub connected");
        Ok(hub)
    }

    /// Registers a session: its results, output and attach requests reach it from now on.
    pub(crate) fn register(&self, session_id: &str, link: SessionLink) {
        self.sessions
            .lock()
            .insert(session_id.to_owned(), Arc::new(link));
    }

    /// The session closed.
    pub(crate) fn unregister(&self, session_id: &str) {
        self.sessions.lock().remove(session_id);
    }

    /// How many sessions this hub hosts now.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    fn link(&self, session_id: &str) -> Option<Arc<SessionLink>> {
        self.sessions.lock().get(session_id).cloned()
    }

    /// One of this hub's open sessions, for the admin API.
    pub(crate) fn target(&self, session_id: &str) -> Option<Target> {
        let link = self.link(session_id)?;
        self.to_target(&link)
    }

    /// Every open session of this hub, for the admin API.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let links: Vec<Arc<SessionLink>> = self.sessions.lock().values().cloned().collect();
        links.iter().filter_map(|l| self.to_target(l)).collect()
    }

    fn to_target(&self, link: &SessionLink) -> Option<Target> {
        let scheduler = link.scheduler.upgrade().filter(|s| !s.is_closed())?;
        Some(Target {
            scheduler,
            tenant: link.tenant.clone(),
            hub: Some(self.id.clone()),
        })
    }

    /// Records a session's tenant declaration; a different earlier one is replaced (the latest
    /// wins) with a warning.
    pub(crate) fn declare(&self, session_id: &str, tenant: &Tenant) {
        let mut declared = self.declared.lock();
        match declared.get(tenant.name()) {
            Some((earlier, by)) if earlier != tenant => tracing::warn!(
                tenant = tenant.name(),
                earlier_session = by,
                session = session_id,
                earlier_weight = earlier.weight(),
                weight = tenant.weight(),
                earlier_max_in_flight = ?earlier.max_in_flight(),
                max_in_flight = ?tenant.max_in_flight(),
                "sessions of one tenant declare different weights or caps; the latest wins"
            ),
            _ => {}
        }
        declared.insert(
            tenant.name().to_owned(),
            (tenant.clone(), session_id.to_owned()),
        );
    }

    /// The tenant's weight as last declared in this process.
    fn weight(&self, tenant: &str) -> f64 {
        self.declared
            .lock()
            .get(tenant)
            .map_or(1.0, |(t, _)| t.weight())
    }

    /// The tenant's cap of tasks in flight per lane, as last declared in this process.
    fn max_in_flight(&self, tenant: &str) -> Option<usize> {
        self.declared
            .lock()
            .get(tenant)
            .and_then(|(t, _)| t.max_in_flight())
    }

    /// The tenant's tasks stream and object store, created if missing (once per hub).
    pub(crate) async fn tenant(&self, tenant: &str) -> Result<TenantStreams> {
        let mut tenants = self.tenants.lock().await;
        if let Some(t) = tenants.get(tenant) {
            return Ok(t.clone());
        }
        let c = &self.config;
        let tasks = self
            .js
            .get_or_create_stream(stream::Config {
                name: self.names.tasks_stream(tenant),
                subjects: vec![self.names.all_tasks(tenant)],
                retention: stream::RetentionPolicy::WorkQueue,
                discard: stream::DiscardPolicy::New,
                storage: stream::StorageType::File,
                max_age: c.stream_max_age,
                max_bytes: c.stream_max_bytes,
                duplicate_window: c.duplicate_window,
                num_replicas: c.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                unavailable(&format!("creating the tasks stream of tenant {tenant}"), e)
            })?;
        let bucket = Bucket::ensure(&self.js, &self.names, tenant, c).await?;
        let t = TenantStreams { tasks, bucket };
        tenants.insert(tenant.to_owned(), t.clone());
        Ok(t)
    }

    /// Creates a task consumer on the tenant's stream unless this hub already did.
    pub(crate) async fn ensure_consumer(
        &self,
        tenant: &str,
        name: &str,
        filter: String,
        max_attempts: u32,
    ) -> Result<()> {
        let key = (tenant.to_owned(), name.to_owned());
        // The server deletes a consumer nobody pulled from for `inactive_threshold`: one created
        // a while ago is created again (idempotent when it still exists), so a long-lived
        // process never publishes for a consumer that is gone.
        let refresh = self.config.inactive_threshold / 3;
        let cell = {
            let mut consumers = self.consumers.lock();
            let cell = consumers.entry(key).or_default();
            if cell
                .get()
                .is_some_and(|created| created.elapsed() >= refresh)
            {
                *cell = Arc::default();
            }
            cell.clone()
        };
        cell.get_or_try_init(|| async {
            self.create_consumer(tenant, name, filter, max_attempts)
                .await
                .map(|()| Instant::now())
        })
        .await
        .map(|_| ())
    }

    async fn create_consumer(
        &self,
        tenant: &str,
        name: &str,
        filter: String,
        max_attempts: u32,
    ) -> Result<()> {
        let streams = self.tenant(tenant).await?;
        let max_ack_pending = self
            .max_in_flight(tenant)
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        streams
            .tasks
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject: filter,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.lease,
                    // A safety net only: the session's retry policy decides (workers report a
                    // delivery beyond max_attempts as exhausted without running it).
                    max_deliver: i64::from(max_attempts) + 2,
                    // The tenant's cap of tasks in flight, enforced by the server for every
                    // worker and session of the tenant.
                    max_ack_pending,
                    inactive_threshold: self.config.inactive_threshold,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable(&format!("creating consumer {name}"), e))?;
        Ok(())
    }

    /// Forgets a consumer this hub created (it was deleted).
    pub(crate) fn forget_consumer(&self, tenant: &str, name: &str) {
        self.consumers
            .lock()
            .remove(&(tenant.to_owned(), name.to_owned()));
    }

    /// Asks for a doorbell: tasks are stored for `(tenant, lane, route)` (in `session`'s own
    /// consumer when given). Rung within a millisecond, once for every caller meanwhile.
    pub(crate) fn ring(
        &self,
        tenant: &str,
        lane: SessionLane,
        route: &str,
        labels: &BTreeMap<String, String>,
        session: Option<&str>,
    ) {
        if !labels.is_empty() {
            self.labels
                .lock()
                .entry(route.to_owned())
                .or_insert_with(|| labels.clone());
        }
        let fresh = self.ring.lock().insert((
            tenant.to_owned(),
            lane,
            route.to_owned(),
            session.map(str::to_owned),
        ));
        if fresh {
            self.ringer.notify_one();
        }
    }
}

/// Rings the doorbells asked for, at most once per key and [`RING_INTERVAL`].
async fn ring_doorbells(hub: Weak<Hub>) {
    // Waits on the bell alone: holding the hub while idle would keep it (and this task) alive
    // after everything else let it go.
    let Some(ringer) = hub.upgrade().map(|h| h.ringer.clone()) else {
        return;
    };
    loop {
        let Some(h) = hub.upgrade() else { return };
        let keys: Vec<RingKey> = h.ring.lock().drain().collect();
        for (tenant, lane, route, session) in keys {
            let bell = Doorbell {
                v: PROTOCOL_VERSION,
                lane,
                labels: h.labels.lock().get(&route).cloned().unwrap_or_default(),
                route,
                session,
                weight: h.weight(&tenant),
            };
            let _ = h
                .client
                .publish(h.names.ready_subject(&tenant), wire::encode(&bell).into())
                .await;
        }
        drop(h);
        ringer.notified().await;
        tokio::time::sleep(RING_INTERVAL).await;
    }
}

/// Applies results as they arrive, then acknowledges them (a result seen twice is applied once).
async fn consume_results(hub: Weak<Hub>) {
    let mut delay = Duration::from_millis(100);
    let mut results: Option<consumer::PullConsumer> = None;
    loop {
        let Some(h) = hub.upgrade() else { return };
        let consumer = match results.take() {
            Some(c) => Ok(c),
            None => {
                async {
                    h.js.get_stream(h.names.results_stream())
                        .await
                        .map_err(|e| unavailable("results stream", e))?
                        .get_consumer(&h.names.hub_consumer(&h.id))
                        .await
                        .map_err(|e| unavailable("results consumer", e))
                }
                .await
            }
        };
        // Idle heartbeats: pull requests vanish with the consumer's leader when it fails over
        // (the connection itself may stay up); a missed heartbeat ends this pull and starts
        // another.
        let pulled = match consumer {
            Ok(c) => match c
                .stream()
                .max_messages_per_batch(RESULTS_BATCH)
                .expires(RESULTS_PULL_EXPIRES)
                .heartbeat(RESULTS_PULL_HEARTBEAT)
                .messages()
                .await
            {
                Ok(messages) => Ok((c, messages)),
                Err(e) => Err(unavailable("pulling results", e)),
            },
            Err(e) => Err(e),
        };
        drop(h);
        match pulled {
            Ok((c, mut messages)) => {
                delay = Duration::from_millis(100);
                while let Some(message) = messages.next().await {
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::debug!(error = %e, "pulling results stopped; pulling again");
                            if e.kind() != consumer::pull::MessagesErrorKind::ConsumerDeleted {
                                results = Some(c);
                            }
                            break;
                        }
                    };
                    let Some(h) = hub.upgrade() else { return };
                    if h.apply_results(&message).await {
                        let _ = message.ack().await;
                    } else {
                        let _ = message
                            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read results; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

impl Hub {
    /// Applies one results message. False when it should be read again later (a referenced
    /// result object cannot be read now).
    async fn apply_results(&self, message: &jetstream::Message) -> bool {
        // `<P>.result.<tenant>.<hub>.<session>`: the tenant token is what the worker's
        // credential allowed it to publish to.
        let tokens: Vec<&str> = message.subject.split('.').collect();
        let [_, _, tenant, _, session] = tokens[..] else {
            tracing::warn!(subject = %message.subject, "dropping a result on a malformed subject");
            return true;
        };
        let Some(link) = self.link(session) else {
            tracing::debug!(
                session,
                "dropping a result for a session this process no longer hosts"
            );
            return true;
        };
        if link.tenant != tenant {
            tracing::warn!(
                session,
                tenant,
                expected = link.tenant,
                "dropping a result published under another tenant than its session's"
            );
            return true;
        }
        let mut envs = match wire::decode_results(&message.payload) {
            Ok(envs) => envs,
            Err(err) => {
                tracing::warn!(error = %err, "dropping a malformed result message");
                return true;
            }
        };
        envs.retain(|env| {
            let ok = env.session_id == session;
            if !ok {
                tracing::warn!(
                    session = env.session_id,
                    subject = %message.subject,
                    "dropping a result addressed to another session than its subject's"
                );
            }
            ok
        });
        // Read every referenced result first: a message is applied whole or, when the object
        // store cannot be read now, not at all (it comes back).
        if envs.iter().any(|e| e.result_ref.is_some()) {
            let bucket = match self.tenant(tenant).await {
                Ok(t) => t.bucket,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot open the object store; reading the results later");
                    return false;
                }
            };
            if !resolve_result_objects(
                &bucket,
                &self.names,
                self.config.max_object_bytes,
                &mut envs,
            )
            .await
            {
                return false;
            }
        }
        let Some(scheduler) = link.scheduler.upgrade() else {
            return true;
        };
        for env in envs {
            scheduler.remote_result(env.into());
        }
        true
    }
}

/// Replaces each result stored by reference by the object's content (deleting the object), or
/// by a failure saying why it cannot be read. The reference must name the object the protocol
/// gives that result (`<session>/<task>/result/<attempt>` in the tenant's bucket): a forged
/// reference to any other object is refused without touching it. False when the object store
/// is unavailable: the message should be read again later.
async fn resolve_result_objects(
    objects: &Bucket,
    names: &Names,
    max_object_bytes: usize,
    envs: &mut [ResultEnvelope],
) -> bool {
    for env in envs.iter_mut() {
        let Some(r) = env.result_ref.as_ref() else {
            continue;
        };
        let expected = names.result_object(&env.session_id, &env.task_id, env.attempt);
        match objects.get(r, &expected, max_object_bytes).await {
            Ok(value) => env.result.result = value,
            Err(Error::BrokerUnavailable { reason }) => {
                tracing::warn!(
                    task_id = env.task_id,
                    reason,
                    "cannot read a result object; retrying"
                );
                return false;
            }
            Err(err) => {
                tracing::warn!(task_id = env.task_id, error = %err, "a result refers to an unreadable object; failing the task");
                env.result = objects::failed(&err);
                // Not ours to delete: only the object the protocol names is.
                if r.bucket != objects.name() || r.name != expected {
                    env.result_ref = None;
                }
            }
        }
    }
    for env in envs.iter_mut() {
        if let Some(r) = env.result_ref.take() {
            objects.delete(&r.name).await;
        }
    }
    true
}

/// Turns workers' output chunks into `QueueEvent::Output` of their session.
async fn consume_output(hub: Weak<Hub>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(h) = hub.upgrade() else { return };
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        let [_, _, tenant, _, session] = tokens[..] else {
            continue;
        };
        let Some(link) = h.link(session).filter(|l| l.tenant == tenant) else {
            continue;
        };
        let Some(scheduler) = link.scheduler.upgrade() else {
            continue;
        };
        match wire::decode::<OutputChunk>(&msg.payload) {
            Ok(chunk) => scheduler.remote_output(chunk.task_id, chunk.stream, chunk.chunk),
            Err(err) => tracing::debug!(error = %err, "dropping a malformed output chunk"),
        }
    }
}

/// Answers workers that attach to a session of this hub (others' sessions are left to their
/// hubs).
async fn serve_attach(hub: Weak<Hub>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(h) = hub.upgrade() else { return };
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        // `attach.<tenant>.<session>`, or `attach.<session>` for a worker that does not know
        // (or speak for) the tenant: as `attach._.<session>`.
        let (tenant, session) = match tokens[..] {
            [_, _, tenant, session] => (tenant, session),
            [_, _, session] => (wire::FLEET, session),
            _ => continue,
        };
        let Some(link) = h.link(session) else {
            continue;
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let answer = match wire::decode::<AttachRequest>(&msg.payload) {
            // Only a worker that may speak for the session's tenant (or for every tenant) attaches.
            Ok(_) if tenant != link.tenant && tenant != wire::FLEET => {
                Err(format!("session {session} is not in tenant {tenant}"))
            }
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                let sent = link.attach.send(Attach {
                    lanes: req.lanes,
                    worker_id: req.worker_id,
                    reply: tx,
                });
                match (sent, rx) {
                    (Ok(()), rx) => match tokio::time::timeout(Duration::from_secs(5), rx).await {
                        Ok(Ok(answer)) => answer,
                        _ => Err("the session did not answer".to_owned()),
                    },
                    (Err(_), _) => Err("the session is closing".to_owned()),
                }
            }
            Err(err) => Err(err.to_string()),
        };
        let body = match answer {
            Ok(reply) => wire::encode(&reply),
            Err(error) => serde_json::to_vec(&serde_json::json!({
                "v": PROTOCOL_VERSION,
                "error": error,
            }))
            .expect("json serializes"),
        };
        let _ = h.client.publish(reply, body.into()).await;
    }
}

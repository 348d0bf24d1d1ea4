//! The session's side of NATS JetStream: publishes tasks that hold a lane slot, rings doorbells,
//! withdraws ended tasks, records dead letters. What sessions of one process share (the
//! connection, the results reader, each tenant's streams) is the [`Hub`](super::hub::Hub).
//!
//! One task per session owns its published tasks. The scheduler talks to it through an
//! unbounded channel (it calls under its lock, so it must never wait); tasks queue there while
//! NATS is unreachable and go out when it is back (their deadline still runs in the session).
//!
//! A task goes to the tenant's pool consumer, unless a worker attached to this session for the
//! task's lane: from then on (for the session's lifetime) that lane's tasks go to the session's
//! own consumer, and the ones waiting in the pool are moved there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::NatsConfig;
use super::hub::{Attach, Hub, HubSlot, SessionLink, TenantStreams};
use super::objects;
use crate::broker::wire::{
    self, ANY_ROUTE, AttachReply, CancelNotice, PROTOCOL_VERSION, ResultEnvelope, ResultKind,
    TaskEnvelope,
};
use crate::broker::{Dispatcher, Ended, Tenant};
use crate::error::{Error, Result};
use crate::queue::scheduler::Scheduler;
use crate::queue::{DeadLetter, QueueEvent, SessionLane};
use crate::task::ExternalTask;

/// Where the broker connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BrokerStatus {
    /// Connecting (or reconnecting after a failure).
    Connecting(Option<String>),
    /// Streams and consumers are in place; tasks flow.
    Ready,
    /// The session closed.
    Closed,
}

enum Cmd {
    Publish(ExternalTask, Option<BTreeMap<String, String>>),
    Ended {
        task_id: String,
        how: Ended,
    },
    DeadLetter {
        task_id: String,
        bytes: Vec<u8>,
    },
    /// Dead letters left the session's DLQ: delete their copies from the stream.
    LettersRemoved(Vec<String>),
    /// The session's DLQ was purged.
    LettersPurged,
    Event {
        lane: SessionLane,
        payload: Vec<u8>,
    },
    Close(oneshot::Sender<()>),
}

/// The handle the scheduler holds.
pub(crate) struct NatsBroker {
    tx: mpsc::UnboundedSender<Cmd>,
    status: watch::Receiver<BrokerStatus>,
    closing: watch::Sender<bool>,
    max_object_bytes: usize,
}

impl NatsBroker {
    /// Starts the broker task on the current runtime.
    pub(crate) fn start(
        config: NatsConfig,
        tenant: Tenant,
        session_id: String,
        scheduler: Weak<Scheduler>,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid_config("a session that uses NATS must be opened inside a tokio runtime")
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(BrokerStatus::Connecting(None));
        let (closing, closing_rx) = watch::channel(false);
        let max_object_bytes = config.max_object_bytes;
        let slot = HubSlot::for_config(&config);
        handle.spawn(run(
            slot, config, tenant, session_id, scheduler, rx, status_tx, closing_rx,
        ));
        Ok(Arc::new(Self {
            tx,
            status,
            closing,
            max_object_bytes,
        }))
    }

    /// Waits until the broker is ready, or `timeout` passes.
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<()> {
        let mut status = self.status.clone();
        let wait = status.wait_for(|s| matches!(s, BrokerStatus::Ready | BrokerStatus::Closed));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if *s == BrokerStatus::Ready => Ok(()),
            Ok(_) => Err(Error::ShutDown),
            Err(_) => Err(Error::BrokerUnavailable {
                reason: match &*self.status.borrow() {
                    BrokerStatus::Connecting(Some(why)) => why.clone(),
                    _ => format!("not ready after {timeout:?}"),
                },
            }),
        }
    }
}

impl Dispatcher for NatsBroker {
    fn publish(&self, task: ExternalTask, labels: Option<&BTreeMap<String, String>>) {
        let _ = self.tx.send(Cmd::Publish(task, labels.cloned()));
    }

    fn task_ended(&self, task_id: &str, lane: SessionLane, how: Ended) {
        let _ = (
            lane,
            self.tx.send(Cmd::Ended {
                task_id: task_id.to_owned(),
                how,
            }),
        );
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.max_object_bytes)
    }

    fn dead_letter(&self, letter: &DeadLetter) {
        let _ = self.tx.send(Cmd::DeadLetter {
            task_id: letter.task_id.clone(),
            bytes: serde_json::to_vec(letter).expect("dead letters serialize"),
        });
    }

    fn dead_letters_removed(&self, task_ids: Vec<String>) {
        let _ = self.tx.send(Cmd::LettersRemoved(task_ids));
    }

    fn dead_letters_purged(&self) {
        let _ = self.tx.send(Cmd::LettersPurged);
    }

    fn hybrid_event(&self, lane: SessionLane, event: &QueueEvent) {
        let payload = serde_json::to_vec(event).expect("events serialize");
        let _ = self.tx.send(Cmd::Event { lane, payload });
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Cmd::Close(done)).is_ok();
        let _ = self.closing.send(true);
        Box::pin(async move {
            if sent {
                let _ = wait.await;
            }
        })
    }
}

/// A published task the broker keeps track of until it ends.
struct Outstanding {
    lane: SessionLane,
    route: String,
    /// Published to this session's own consumer (a worker attached for its lane), else to the
    /// tenant's pool.
    own: bool,
    /// Its stream sequence, once the publish was acknowledged.
    seq: Option<u64>,
    /// The envelope, kept until the publish is acknowledged (to publish again on failure) and
    /// while it may still be moved to the session's own consumer.
    bytes: Option<bytes::Bytes>,
    /// It ended before its publish was acknowledged: withdraw it once it is.
    withdrawn: Option<&'static str>,
    /// The object holding its payload, when too large for a message: deleted when it ends.
    object: Option<String>,
    /// Its `traceparent` header, when the session traces it.
    traceparent: Option<String>,
    /// How many times it was moved (the message id of a moved copy must differ).
    moves: u32,
}

struct Conn {
    hub: Arc<Hub>,
    tenant: TenantStreams,
}

struct State {
    config: NatsConfig,
    tenant: Tenant,
    session_id: String,
    retry: crate::queue::RetryPolicy,
    outstanding: HashMap<String, Outstanding>,
    /// Lanes a worker attached to: their tasks go to this session's own consumers.
    attached: HashSet<SessionLane>,
    /// This session's own consumers (deleted when it closes).
    own_consumers: HashSet<String>,
    /// The labels behind each route token in use.
    routes: HashMap<String, BTreeMap<String, String>>,
    /// To fail a task whose payload cannot be published at all.
    scheduler: Weak<Scheduler>,
    /// Where each dead letter's copy is in the dead-letter stream.
    letters: Arc<parking_lot::Mutex<HashMap<String, Letter>>>,
}

/// A dead letter's copy in the dead-letter stream.
#[derive(Clone, Copy)]
enum Letter {
    /// Being stored.
    Storing,
    /// Stored at this stream sequence.
    Stored(u64),
    /// It left the DLQ while being stored: delete the copy once stored.
    Removed,
}

impl State {
    fn subject(&self, hub: &Hub, lane: SessionLane, route: &str, own: bool) -> String {
        let t = self.tenant.name();
        if own {
            hub.names.session_subject(t, lane, route, &self.session_id)
        } else {
            hub.names.pool_subject(t, lane, route)
        }
    }

    fn consumer(&self, hub: &Hub, lane: SessionLane, route: &str, own: bool) -> String {
        if own {
            hub.names.session_consumer(&self.session_id, lane, route)
        } else {
            hub.names.pool_consumer(lane, route)
        }
    }
}

/// Commands a session's broker handles before letting the other sessions of its process take a
/// turn.
const PUBLISH_TURN: usize = 8;

/// Tries to store a dead letter in the `P_DLQ` stream before giving up (logged each time).
const DLQ_TRIES: u32 = 5;

type AckFuture = BoxFuture<'static, (String, std::result::Result<u64, String>)>;

#[allow(clippy::too_many_arguments)]
async fn run(
    slot: Arc<HubSlot>,
    config: NatsConfig,
    tenant: Tenant,
    session_id: String,
    scheduler: Weak<Scheduler>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    status: watch::Sender<BrokerStatus>,
    mut closing: watch::Receiver<bool>,
) {
    let Some(retry) = scheduler.upgrade().map(|s| s.config().retry_policy) else {
        return;
    };
    let mut st = State {
        config,
        tenant,
        session_id,
        retry,
        outstanding: HashMap::new(),
        attached: HashSet::new(),
        own_consumers: HashSet::new(),
        routes: HashMap::new(),
        scheduler: scheduler.clone(),
        letters: Default::default(),
    };
    let (attach_tx, mut attach_rx) = mpsc::unbounded_channel::<Attach>();
    // Connect (or join this process's hub) and set up, retrying until it works or the session
    // closes. Commands wait in the channel meanwhile, in order.
    let mut delay = Duration::from_millis(200);
    let conn = loop {
        match setup(&slot, &st).await {
            Ok(conn) => break conn,
            Err(err) => {
                tracing::warn!(error = %err, "NATS not ready; retrying");
                let _ = status.send(BrokerStatus::Connecting(Some(err.to_string())));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(5)),
                    _ = closing.wait_for(|c| *c) => {
                        let _ = status.send(BrokerStatus::Closed);
                        while let Ok(cmd) = rx.try_recv() {
                            if let Cmd::Close(done) = cmd {
                                let _ = done.send(());
                            }
                        }
                        return;
                    }
                }
            }
        }
    };
    conn.hub.declare(&st.session_id, &st.tenant);
    conn.hub.register(
        &st.session_id,
        SessionLink {
            tenant: st.tenant.name().to_owned(),
            scheduler: scheduler.clone(),
            attach: attach_tx,
        },
    );
    let _ = status.send(BrokerStatus::Ready);

    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let mut republish: FuturesUnordered<BoxFuture<'static, String>> = FuturesUnordered::new();
    let mut rering = tokio::time::interval(Duration::from_secs(1));
    rering.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (acks_pending, republish_pending) = (!acks.is_empty(), !republish.is_empty());
        let busy = !st.outstanding.is_empty();
        tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        let mut next = Some(cmd);
                        // Drain what is queued, a few at a time: the sessions of a process take
                        // turns at publishing, so a burst of them lands in the tenant's (FIFO)
                        // pool interleaved and each session's first tasks come early.
                        let mut turn = PUBLISH_TURN;
                        while let Some(cmd) = next.take() {
                            if let Cmd::Close(done) = cmd {
                                shutdown(&st, &conn).await;
                                conn.hub.unregister(&st.session_id);
                                slot.linger();
                                let _ = status.send(BrokerStatus::Closed);
                                let _ = done.send(());
                                return;
                            }
                            handle(&mut st, &conn, cmd, &mut acks).await;
                            turn -= 1;
                            if turn == 0 {
                                // Alone in its process, a session has nobody to give way to.
                                if conn.hub.session_count() > 1 {
                                    tokio::task::yield_now().await;
                                }
                                turn = PUBLISH_TURN;
                            }
                            next = rx.try_recv().ok();
                        }
                    }
                    Some(attach) = attach_rx.recv() => {
                        attached(&mut st, &conn, attach, &mut acks).await;
                    }
                    Some((task_id, outcome)) = acks.next(), if acks_pending => {
                        acked(&mut st, &conn, task_id, outcome, &mut republish, &mut acks).await;
                        while let Some(Some((task_id, outcome))) = acks.next().now_or_never() {
                            acked(&mut st, &conn, task_id, outcome, &mut republish, &mut acks).await;
                        }
                    }
                    Some(task_id) = republish.next(), if republish_pending => {
                        if let Some(o) = st.outstanding.get(&task_id) && let Some(bytes) = o.bytes.clone() {
                            let subject = st.subject(&conn.hub, o.lane, &o.route, o.own);
                            let (traceparent, id) = (o.traceparent.clone(), message_id(&task_id, o.moves));
                            match stored(&mut st, &conn, &task_id, bytes, None).await {
                                Ok(bytes) => {
                                    let ack = publish_bytes(&conn.hub, subject, task_id, id, bytes, traceparent).await;
        acks.push(ack);
                                }
                                Err(Some(reason)) => acks.push(failed_ack(task_id, reason)),
                                Err(None) => {}
                            }
                        }
                    }
                    // Doorbells are hints (core NATS): ring again while tasks are out, in case one was
                    // missed. An idle session does not tick.
                    _ = rering.tick(), if busy => {
                        for o in st.outstanding.values() {
                            let labels = st.routes.get(&o.route).cloned().unwrap_or_default();
                            let own = o.own.then_some(st.session_id.as_str());
                            conn.hub.ring(st.tenant.name(), o.lane, &o.route, &labels, own);
                        }
                    }
                }
    }
    // The session was dropped without closing.
    conn.hub.unregister(&st.session_id);
    slot.linger();
}

/// Joins the hub and makes sure the tenant's streams exist.
async fn setup(slot: &HubSlot, st: &State) -> Result<Conn> {
    let hub = slot.hub().await?;
    let tenant = hub.tenant(st.tenant.name()).await?;
    Ok(Conn { hub, tenant })
}

/// The message id of a task's `moves`-th copy: the task id first (a publish retried after a
/// failure is deduplicated by the server), another id for a copy moved to another consumer.
fn message_id(task_id: &str, moves: u32) -> String {
    match moves {
        0 => task_id.to_owned(),
        n => format!("{task_id}:m{n}"),
    }
}

async fn ensure_consumer(st: &mut State, conn: &Conn, lane: SessionLane, route: &str, own: bool) {
    let name = st.consumer(&conn.hub, lane, route, own);
    let filter = st.subject(&conn.hub, lane, route, own);
    let created = conn
        .hub
        .ensure_consumer(st.tenant.name(), &name, filter, st.retry.max_attempts())
        .await;
    match created {
        Ok(()) if own => {
            st.own_consumers.insert(name);
        }
        Ok(()) => {}
        Err(err) => {
            tracing::warn!(error = %err, "could not create the consumer; publishing anyway")
        }
    }
}

async fn handle(st: &mut State, conn: &Conn, cmd: Cmd, acks: &mut FuturesUnordered<AckFuture>) {
    match cmd {
        Cmd::Publish(task, labels) => {
            let lane = task.lane;
            let labels = labels.unwrap_or_default();
            let route = wire::route_token(&labels);
            st.routes
                .entry(route.clone())
                .or_insert_with(|| labels.clone());
            let own = st.attached.contains(&lane);
            ensure_consumer(st, conn, lane, &route, own).await;
            let task_id = task.task_id.clone();
            let traceparent = task.carried_trace_context().map(|cx| cx.to_string());
            let envelope = TaskEnvelope {
                v: PROTOCOL_VERSION,
                tenant: st.tenant.name().to_owned(),
                hub: conn.hub.id.clone(),
                max_attempts: st.retry.max_attempts(),
                retry: st.retry,
                delivery: st.config.delivery(lane),
                labels,
                payload_ref: None,
                task,
            };
            let bytes = bytes::Bytes::from(wire::encode(&envelope));
            let subject = st.subject(&conn.hub, lane, &route, own);
            st.outstanding.insert(
                task_id.clone(),
                Outstanding {
                    lane,
                    route,
                    own,
                    seq: None,
                    bytes: Some(bytes.clone()),
                    withdrawn: None,
                    object: None,
                    traceparent: traceparent.clone(),
                    moves: 0,
                },
            );
            match stored(st, conn, &task_id, bytes, Some(envelope)).await {
                Ok(bytes) => {
                    let id = task_id.clone();
                    let ack =
                        publish_bytes(&conn.hub, subject, task_id, id, bytes, traceparent).await;
                    acks.push(ack);
                }
                Err(Some(reason)) => acks.push(failed_ack(task_id, reason)),
                Err(None) => {}
            }
        }
        Cmd::Ended { task_id, how, .. } => {
            let Some(mut o) = st.outstanding.remove(&task_id) else {
                return;
            };
            if let Some(name) = o.object.take() {
                conn.tenant.bucket.delete(&name).await;
            }
            if let Ended::Withdrawn(reason) = how {
                match o.seq {
                    Some(seq) => withdraw(st, conn, &task_id, seq, reason).await,
                    None => {
                        // Still being published: withdraw it once the server acknowledges.
                        o.withdrawn = Some(reason);
                        st.outstanding.insert(task_id, o);
                    }
                }
            }
        }
        Cmd::DeadLetter { task_id, bytes } => {
            // Stored in the background until the server acknowledges it (a few tries): the
            // session's own dead-letter queue already holds the letter (and is authoritative),
            // this is the copy that stays browsable after the session is gone.
            let js = conn.hub.js.clone();
            let subject = conn.hub.names.dlq_subject(st.tenant.name(), &st.session_id);
            let bytes = bytes::Bytes::from(bytes);
            let letters = st.letters.clone();
            let stream = conn.hub.names.dlq_stream();
            letters.lock().insert(task_id.clone(), Letter::Storing);
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(250);
                for attempt in 1..=DLQ_TRIES {
                    let stored = match js.publish(subject.clone(), bytes.clone()).await {
                        Ok(ack) => match tokio::time::timeout(Duration::from_secs(5), ack).await {
                            Ok(Ok(ack)) => {
                                let removed = {
                                    let mut letters = letters.lock();
                                    match letters.get(&task_id) {
                                        Some(Letter::Removed) => {
                                            letters.remove(&task_id);
                                            true
                                        }
                                        _ => {
                                            letters.insert(task_id, Letter::Stored(ack.sequence));
                                            false
                                        }
                                    }
                                };
                                if removed {
                                    delete_letter(&js, &stream, ack.sequence).await;
                                }
                                return;
                            }
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "no acknowledgement within 5 s".to_owned(),
                        },
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(
                        attempt,
                        error = stored,
                        "could not record a dead letter in NATS"
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            });
        }
        Cmd::LettersRemoved(task_ids) => {
            for task_id in task_ids {
                let seq = {
                    let mut letters = st.letters.lock();
                    match letters.get(&task_id).copied() {
                        Some(Letter::Stored(seq)) => {
                            letters.remove(&task_id);
                            Some(seq)
                        }
                        Some(Letter::Storing) => {
                            letters.insert(task_id, Letter::Removed);
                            None
                        }
                        _ => None,
                    }
                };
                if let Some(seq) = seq {
                    delete_letter(&conn.hub.js, &conn.hub.names.dlq_stream(), seq).await;
                }
            }
        }
        Cmd::LettersPurged => {
            {
                let mut letters = st.letters.lock();
                for l in letters.values_mut() {
                    *l = Letter::Removed;
                }
                letters.retain(|_, l| !matches!(l, Letter::Stored(_)));
            }
            let subject = conn.hub.names.dlq_subject(st.tenant.name(), &st.session_id);
            let purged = match conn.hub.js.get_stream(conn.hub.names.dlq_stream()).await {
                Ok(stream) => stream
                    .purge()
                    .filter(subject)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = purged {
                tracing::warn!(error, "could not purge the session's dead letters in NATS");
            }
        }
        Cmd::Event { lane, payload } => {
            let subject = conn
                .hub
                .names
                .event_subject(st.tenant.name(), &st.session_id, lane);
            let _ = conn.hub.client.publish(subject, payload.into()).await;
        }
        Cmd::Close(_) => unreachable!("handled by the loop"),
    }
}

/// Deletes a dead letter's copy from the dead-letter stream (already gone is fine).
async fn delete_letter(js: &async_nats::jetstream::Context, stream: &str, seq: u64) {
    let deleted = match js.get_stream(stream).await {
        Ok(s) => s
            .delete_message(seq)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = deleted {
        tracing::debug!(error, seq, "could not delete a dead letter's copy in NATS");
    }
}

/// A worker attached for some lanes: from now on their tasks go to this session's own
/// consumers, and those waiting in the tenant's pool are moved there (a pool worker that took
/// one meanwhile may still run it: execution is at least once, completion exactly once;
/// at-most-once tasks are never moved).
async fn attached(
    st: &mut State,
    conn: &Conn,
    attach: Attach,
    acks: &mut FuturesUnordered<AckFuture>,
) {
    let newly: Vec<SessionLane> = attach
        .lanes
        .iter()
        .copied()
        .filter(|l| st.attached.insert(*l))
        .collect();
    for &lane in &attach.lanes {
        ensure_consumer(st, conn, lane, ANY_ROUTE, true).await;
    }
    if !newly.is_empty() {
        tracing::info!(
            session = st.session_id,
            worker = attach.worker_id,
            lanes = ?newly,
            "a worker attached: these lanes' tasks now go to the session's own consumers"
        );
    }
    let to_move: Vec<String> = st
        .outstanding
        .iter()
        .filter(|(_, o)| {
            !o.own
                && newly.contains(&o.lane)
                && st.config.delivery(o.lane) == wire::DeliveryMode::AtLeastOnce
        })
        .map(|(id, _)| id.clone())
        .collect();
    for task_id in to_move {
        move_to_own(st, conn, &task_id, acks).await;
    }
    let _ = attach.reply.send(Ok(AttachReply {
        v: PROTOCOL_VERSION,
        tenant: st.tenant.name().to_owned(),
        lease_ms: u64::try_from(st.config.lease.as_millis()).unwrap_or(u64::MAX),
    }));
}

/// Moves a task from the tenant's pool to this session's own consumer: deletes it from the
/// stream (unless a worker already acknowledged it) and publishes it again.
async fn move_to_own(
    st: &mut State,
    conn: &Conn,
    task_id: &str,
    acks: &mut FuturesUnordered<AckFuture>,
) {
    let Some(o) = st.outstanding.get(task_id) else {
        return;
    };
    let (Some(seq), false) = (o.seq, o.own) else {
        // Not stored yet: moved once the server acknowledges it.
        return;
    };
    if conn.tenant.tasks.delete_message(seq).await.is_err() {
        // Already taken and acknowledged by a pool worker.
        return;
    }
    let route = o.route.clone();
    ensure_consumer(st, conn, o.lane, &route, true).await;
    let Some(o) = st.outstanding.get_mut(task_id) else {
        return;
    };
    let Some(bytes) = o.bytes.clone() else {
        return;
    };
    o.own = true;
    o.seq = None;
    o.moves += 1;
    let subject =
        conn.hub
            .names
            .session_subject(st.tenant.name(), o.lane, &o.route, &st.session_id);
    let id = message_id(task_id, o.moves);
    let traceparent = o.traceparent.clone();
    let ack = publish_bytes(
        &conn.hub,
        subject,
        task_id.to_owned(),
        id,
        bytes,
        traceparent,
    )
    .await;
    acks.push(ack);
}

/// Makes a task's envelope fit in a message: a payload too large for one goes to the object
/// store and the envelope refers to it (`envelope`, if given, is what `bytes` encodes).
///
/// `Err(Some(reason))`: storing it failed, try again later; `Err(None)`: the payload is over
/// `max_object_bytes`, the task was failed and forgotten.
async fn stored(
    st: &mut State,
    conn: &Conn,
    task_id: &str,
    bytes: bytes::Bytes,
    envelope: Option<TaskEnvelope>,
) -> std::result::Result<bytes::Bytes, Option<String>> {
    if bytes.len() <= conn.hub.inline_limit {
        return Ok(bytes);
    }
    let envelope = match envelope {
        Some(e) => Ok(e),
        None => wire::decode::<TaskEnvelope>(&bytes),
    };
    let outcome = match envelope {
        Ok(mut env) if env.payload_ref.is_none() => {
            let payload = serde_json::to_vec(&env.task.payload).expect("a Value always serializes");
            let name = conn.hub.names.payload_object(&st.session_id, task_id);
            if payload.len() > st.config.max_object_bytes {
                Err(Error::PayloadTooLarge {
                    size: payload.len(),
                    limit: st.config.max_object_bytes,
                })
            } else {
                match conn.tenant.bucket.put(&name, payload).await {
                    Ok(r) => {
                        env.payload_ref = Some(r);
                        env.task.payload = serde_json::Value::Null;
                        Ok((bytes::Bytes::from(wire::encode(&env)), name))
                    }
                    Err(e) => Err(e),
                }
            }
        }
        Ok(_) => return Ok(bytes),
        Err(e) => Err(e),
    };
    match outcome {
        Ok((bytes, name)) => {
            if let Some(o) = st.outstanding.get_mut(task_id) {
                o.bytes = Some(bytes.clone());
                o.object = Some(name);
            }
            Ok(bytes)
        }
        Err(Error::BrokerUnavailable { reason }) => {
            tracing::warn!(task_id, reason, "storing a large payload failed; retrying");
            Err(Some(reason))
        }
        Err(err) => {
            // Cannot be published at all (only when the lane became External after submit, which
            // checks the size): fail the task rather than retry forever.
            tracing::warn!(task_id, error = %err, "failing a task whose payload cannot be published");
            st.outstanding.remove(task_id);
            if let Some(scheduler) = st.scheduler.upgrade() {
                scheduler.remote_result(
                    ResultEnvelope {
                        v: PROTOCOL_VERSION,
                        kind: ResultKind::Result,
                        task_id: task_id.to_owned(),
                        session_id: st.session_id.clone(),
                        attempt: 1,
                        worker_id: String::new(),
                        result: objects::failed(&err),
                        result_ref: None,
                    }
                    .into(),
                );
            }
            Err(None)
        }
    }
}

/// A publish that failed before it was sent: retried like one the server did not acknowledge.
fn failed_ack(task_id: String, reason: String) -> AckFuture {
    async move { (task_id, Err(reason)) }.boxed()
}

async fn publish_bytes(
    hub: &Hub,
    subject: String,
    task_id: String,
    message_id: String,
    bytes: bytes::Bytes,
    traceparent: Option<String>,
) -> AckFuture {
    // A publish retried after a failure is deduplicated by the server.
    let mut publish = PublishMessage::build()
        .payload(bytes)
        .message_id(message_id);
    if let Some(value) = traceparent {
        // Observability: the worker's spans join the session's trace (protocol.md §9).
        publish = publish.header(crate::trace::TRACEPARENT, value.as_str());
    }
    // Bounded: a publish in flight when the connection drops may never be answered.
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        hub.js.send_publish(subject, publish),
    )
    .await
    .unwrap_or_else(|_| {
        Err(async_nats::jetstream::context::PublishError::new(
            async_nats::jetstream::context::PublishErrorKind::TimedOut,
        ))
    });
    match sent {
        Ok(ack) => async move {
            (
                task_id,
                ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
            )
        }
        .boxed(),
        Err(e) => {
            let reason = e.to_string();
            async move { (task_id, Err(reason)) }.boxed()
        }
    }
}

async fn acked(
    st: &mut State,
    conn: &Conn,
    task_id: String,
    outcome: std::result::Result<u64, String>,
    republish: &mut FuturesUnordered<BoxFuture<'static, String>>,
    acks: &mut FuturesUnordered<AckFuture>,
) {
    let Some(o) = st.outstanding.get_mut(&task_id) else {
        return;
    };
    match outcome {
        Ok(seq) => {
            o.seq = Some(seq);
            // Kept while it may still be moved to this session's own consumer.
            if o.own || st.config.delivery(o.lane) != wire::DeliveryMode::AtLeastOnce {
                o.bytes = None;
            }
            let (lane, route, own) = (o.lane, o.route.clone(), o.own);
            if let Some(reason) = o.withdrawn {
                st.outstanding.remove(&task_id);
                withdraw(st, conn, &task_id, seq, reason).await;
                return;
            }
            if !own && st.attached.contains(&lane) {
                // A worker attached while it was being published.
                move_to_own(st, conn, &task_id, acks).await;
                return;
            }
            // Ring only once the task is stored, or a worker may look before it is there.
            let labels = st.routes.get(&route).cloned().unwrap_or_default();
            let session = own.then_some(st.session_id.as_str());
            conn.hub
                .ring(st.tenant.name(), lane, &route, &labels, session);
        }
        Err(reason) => {
            if let Some(why) = o.withdrawn {
                // It ended meanwhile; nothing to publish. Workers may still get it if the server
                // stored it after all: cancel it.
                st.outstanding.remove(&task_id);
                cancel(st, conn, &task_id, why).await;
                return;
            }
            tracing::warn!(task_id, reason, "publishing a task failed; retrying");
            republish.push(
                async move {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    task_id
                }
                .boxed(),
            );
        }
    }
}

/// Removes an ended task from the work queue and tells workers running it to stop.
async fn withdraw(st: &State, conn: &Conn, task_id: &str, seq: u64, reason: &'static str) {
    // Fails harmlessly when a worker already acknowledged (removed) it.
    let _ = conn.tenant.tasks.delete_message(seq).await;
    cancel(st, conn, task_id, reason).await;
}

async fn cancel(st: &State, conn: &Conn, task_id: &str, reason: &'static str) {
    let notice = CancelNotice {
        v: PROTOCOL_VERSION,
        task_id: task_id.to_owned(),
        session_id: st.session_id.clone(),
        reason: reason.to_owned(),
    };
    let _ = conn
        .hub
        .client
        .publish(
            conn.hub.names.cancel_subject(st.tenant.name()),
            wire::encode(&notice).into(),
        )
        .await;
}

/// The session closed: drop what is left of its tasks and delete its own consumers (the
/// tenant's pool consumers are shared; the server deletes them once unused for
/// `inactive_threshold`).
async fn shutdown(st: &State, conn: &Conn) {
    for (task_id, o) in &st.outstanding {
        if let Some(seq) = o.seq {
            withdraw(st, conn, task_id, seq, "closed").await;
        }
        if let Some(name) = &o.object {
            conn.tenant.bucket.delete(name).await;
        }
    }
    for name in &st.own_consumers {
        let _ = conn.tenant.tasks.delete_consumer(name).await;
        conn.hub.forget_consumer(st.tenant.name(), name);
    }
    // Last: workers of this session alone may stop (protocol.md §5.2).
    let _ = conn
        .hub
        .client
        .publish(
            conn.hub.names.cancel_subject(st.tenant.name()),
            wire::encode(&wire::SessionClosed::new(&st.session_id)).into(),
        )
        .await;
    let _ = conn.hub.client.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_copies_get_their_own_message_id() {
        assert_eq!(message_id("t-1", 0), "t-1");
        assert_eq!(message_id("t-1", 2), "t-1:m2");
    }
}

//! The session's side of NATS JetStream: publishes tasks that hold a lane slot, rings doorbells,
//! applies results, withdraws ended tasks, records dead letters.
//!
//! One task owns the connection. The scheduler talks to it through an unbounded channel (it
//! calls under its lock, so it must never wait); tasks queue there while NATS is unreachable and
//! go out when it is back (their deadline still runs in the session).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::objects::{self, Bucket};
use super::wire::{
    self, ANY_ROUTE, CancelNotice, Doorbell, Names, OutputChunk, PROTOCOL_VERSION, ResultEnvelope,
    ResultKind, TaskEnvelope,
};
use super::{Dispatcher, Ended, NatsConfig};
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
    Ended { task_id: String, how: Ended },
    DeadLetter(Vec<u8>),
    Event { lane: SessionLane, payload: Vec<u8> },
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
        session_id: String,
        scheduler: Weak<Scheduler>,
    ) -> Result<Arc<Self>> {
        let names = config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid_config("a session that uses NATS must be opened inside a tokio runtime")
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(BrokerStatus::Connecting(None));
        let (closing, closing_rx) = watch::channel(false);
        let max_object_bytes = config.max_object_bytes;
        handle.spawn(run(
            config, names, session_id, scheduler, rx, status_tx, closing_rx,
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
        let _ = self.tx.send(Cmd::DeadLetter(
            serde_json::to_vec(letter).expect("dead letters serialize"),
        ));
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
    /// Its stream sequence, once the publish was acknowledged.
    seq: Option<u64>,
    /// The envelope, kept until the publish is acknowledged (to publish again on failure).
    bytes: Option<bytes::Bytes>,
    /// It ended before its publish was acknowledged: withdraw it once it is.
    withdrawn: Option<&'static str>,
    /// The object holding its payload, when too large for a message: deleted when it ends.
    object: Option<String>,
    /// Its `traceparent` header, when the session traces it.
    traceparent: Option<String>,
}

struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    tasks: stream::Stream,
    objects: Bucket,
    /// Envelopes larger than this put their payload in `objects`.
    inline_limit: usize,
}

struct State {
    config: NatsConfig,
    names: Names,
    session_id: String,
    retry: crate::queue::RetryPolicy,
    outstanding: HashMap<String, Outstanding>,
    consumers: HashSet<(SessionLane, String)>,
    /// Lanes and routes published to since the last doorbell.
    ring: HashSet<(SessionLane, String)>,
    /// The labels behind each route token in use.
    routes: HashMap<String, BTreeMap<String, String>>,
    /// Doorbells go out at most once per [`RING_INTERVAL`]; a ring within it is deferred to
    /// `ring_due`.
    last_ring: Option<tokio::time::Instant>,
    ring_due: Option<tokio::time::Instant>,
    /// To fail a task whose payload cannot be published at all.
    scheduler: Weak<Scheduler>,
}

/// Under load, one doorbell per interval instead of one per stored task.
const RING_INTERVAL: Duration = Duration::from_millis(1);

/// Tries to store a dead letter in the `P_DLQ` stream before giving up (logged each time).
const DLQ_TRIES: u32 = 5;

/// How long a pull request for results stays open.
const RESULTS_PULL_EXPIRES: Duration = Duration::from_secs(10);

/// How often the server confirms an idle pull request for results is still open (missing two
/// in a row starts a new one).
const RESULTS_PULL_HEARTBEAT: Duration = Duration::from_secs(1);

type AckFuture = BoxFuture<'static, (String, std::result::Result<u64, String>)>;

async fn run(
    config: NatsConfig,
    names: Names,
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
        names,
        session_id,
        retry,
        outstanding: HashMap::new(),
        consumers: HashSet::new(),
        ring: HashSet::new(),
        routes: HashMap::new(),
        last_ring: None,
        ring_due: None,
        scheduler: scheduler.clone(),
    };
    // Connect and set up, retrying until it works or the session closes. Commands wait in the
    // channel meanwhile, in order.
    let mut delay = Duration::from_millis(200);
    let conn = loop {
        match setup(&mut st).await {
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
    let _ = status.send(BrokerStatus::Ready);
    let listeners = [
        tokio::spawn(consume_results(
            conn.js.clone(),
            conn.objects.clone(),
            st.config.max_object_bytes,
            st.names.clone(),
            st.session_id.clone(),
            scheduler.clone(),
        )),
        tokio::spawn(consume_output(
            conn.client.clone(),
            st.names.clone(),
            st.session_id.clone(),
            scheduler.clone(),
        )),
    ];

    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let mut republish: FuturesUnordered<BoxFuture<'static, String>> = FuturesUnordered::new();
    let mut rering = tokio::time::interval(Duration::from_secs(1));
    rering.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (acks_pending, republish_pending) = (!acks.is_empty(), !republish.is_empty());
        let ring_due = st.ring_due;
        tokio::select! {
            _ = tokio::time::sleep_until(ring_due.unwrap_or_else(tokio::time::Instant::now)), if ring_due.is_some() => {
                st.ring_due = None;
                ring(&mut st, &conn).await;
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let mut next = Some(cmd);
                // Drain what is queued, then ring each touched lane once.
                while let Some(cmd) = next.take() {
                    if let Cmd::Close(done) = cmd {
                        shutdown(&st, &conn).await;
                        for l in &listeners { l.abort(); }
                        let _ = status.send(BrokerStatus::Closed);
                        let _ = done.send(());
                        return;
                    }
                    handle(&mut st, &conn, cmd, &mut acks).await;
                    next = rx.try_recv().ok();
                }
                ring(&mut st, &conn).await;
            }
            Some((task_id, outcome)) = acks.next(), if acks_pending => {
                acked(&mut st, &conn, task_id, outcome, &mut republish).await;
                while let Some(Some((task_id, outcome))) = acks.next().now_or_never() {
                    acked(&mut st, &conn, task_id, outcome, &mut republish).await;
                }
                ring(&mut st, &conn).await;
            }
            Some(task_id) = republish.next(), if republish_pending => {
                if let Some(o) = st.outstanding.get(&task_id) && let Some(bytes) = o.bytes.clone() {
                    let subject = st.names.task_subject(&st.session_id, o.lane, &o.route);
                    let traceparent = o.traceparent.clone();
                    match stored(&mut st, &conn, &task_id, bytes, None).await {
                        Ok(bytes) => {
                            let ack = publish_bytes(&conn.js, subject, task_id, bytes, traceparent).await;
                            acks.push(ack);
                        }
                        Err(Some(reason)) => acks.push(failed_ack(task_id, reason)),
                        Err(None) => {}
                    }
                }
            }
            _ = rering.tick() => {
                st.ring.extend(st.outstanding.values().map(|o| (o.lane, o.route.clone())));
                ring(&mut st, &conn).await;
            }
        }
    }
    for l in &listeners {
        l.abort();
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::BrokerUnavailable {
        reason: format!("{what}: {e}"),
    }
}

/// Connects, creates the streams if needed and the session's consumers.
async fn setup(st: &mut State) -> Result<Conn> {
    let client = st.config.connect().await?;
    let js = jetstream::new(client.clone());
    let names = &st.names;
    let work_queue = |name: String, subject: String| stream::Config {
        name,
        subjects: vec![subject],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        max_age: st.config.stream_max_age,
        max_bytes: st.config.stream_max_bytes,
        duplicate_window: st.config.duplicate_window,
        num_replicas: st.config.replicas,
        ..Default::default()
    };
    let tasks = js
        .get_or_create_stream(work_queue(names.tasks_stream(), names.all_tasks()))
        .await
        .map_err(|e| unavailable("creating the tasks stream", e))?;
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
        max_bytes: st.config.stream_max_bytes,
        num_replicas: st.config.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| unavailable("creating the dead-letter stream", e))?;
    let objects = Bucket::ensure(&js, names, &st.config).await?;
    let inline_limit = objects::inline_limit(&client);
    let conn = Conn {
        client,
        js,
        tasks,
        objects,
        inline_limit,
    };
    results
        .get_or_create_consumer(
            &names.result_consumer(&st.session_id),
            consumer::pull::Config {
                durable_name: Some(names.result_consumer(&st.session_id)),
                filter_subject: names.result_subject(&st.session_id),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                inactive_threshold: st.config.inactive_threshold,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unavailable("creating the results consumer", e))?;
    // Workers bind to the default-route consumers of every lane as soon as the session exists.
    for lane in SessionLane::ALL {
        ensure_consumer(st, &conn, lane, ANY_ROUTE).await?;
    }
    Ok(conn)
}

async fn ensure_consumer(
    st: &mut State,
    conn: &Conn,
    lane: SessionLane,
    route: &str,
) -> Result<()> {
    if st.consumers.contains(&(lane, route.to_owned())) {
        return Ok(());
    }
    let name = st.names.task_consumer(&st.session_id, lane, route);
    let max_attempts = st.retry.max_attempts();
    conn.tasks
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                // Pool workers read a route's required labels here (`k=v,k=v`).
                description: st.routes.get(route).filter(|l| !l.is_empty()).map(|l| {
                    l.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
                filter_subject: st.names.task_subject(&st.session_id, lane, route),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: st.config.lease,
                // A safety net only: the session's retry policy decides (workers report a
                // delivery beyond max_attempts as exhausted without running it).
                max_deliver: i64::from(max_attempts) + 2,
                inactive_threshold: st.config.inactive_threshold,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unavailable(&format!("creating consumer {name}"), e))?;
    st.consumers.insert((lane, route.to_owned()));
    Ok(())
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
            if let Err(err) = ensure_consumer(st, conn, lane, &route).await {
                tracing::warn!(error = %err, "could not create the consumer; publishing anyway");
            }
            let task_id = task.task_id.clone();
            let traceparent = task.carried_trace_context().map(|cx| cx.to_string());
            let envelope = TaskEnvelope {
                v: PROTOCOL_VERSION,
                max_attempts: st.retry.max_attempts(),
                retry: st.retry,
                delivery: st.config.delivery(lane),
                labels,
                payload_ref: None,
                task,
            };
            let bytes = bytes::Bytes::from(wire::encode(&envelope));
            let subject = st.names.task_subject(&st.session_id, lane, &route);
            st.outstanding.insert(
                task_id.clone(),
                Outstanding {
                    lane,
                    route,
                    seq: None,
                    bytes: Some(bytes.clone()),
                    withdrawn: None,
                    object: None,
                    traceparent: traceparent.clone(),
                },
            );
            match stored(st, conn, &task_id, bytes, Some(envelope)).await {
                Ok(bytes) => {
                    let ack = publish_bytes(&conn.js, subject, task_id, bytes, traceparent).await;
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
                conn.objects.delete(&name).await;
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
        Cmd::DeadLetter(bytes) => {
            // Stored in the background until the server acknowledges it (a few tries): the
            // session's own dead-letter queue already holds the letter, this is the browsable copy.
            let (js, subject) = (conn.js.clone(), st.names.dlq_subject(&st.session_id));
            let bytes = bytes::Bytes::from(bytes);
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(250);
                for attempt in 1..=DLQ_TRIES {
                    let stored = match js.publish(subject.clone(), bytes.clone()).await {
                        Ok(ack) => match tokio::time::timeout(Duration::from_secs(5), ack).await {
                            Ok(Ok(_)) => return,
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
        Cmd::Event { lane, payload } => {
            let _ = conn
                .client
                .publish(st.names.event_subject(&st.session_id, lane), payload.into())
                .await;
        }
        Cmd::Close(_) => unreachable!("handled by the loop"),
    }
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
    if bytes.len() <= conn.inline_limit {
        return Ok(bytes);
    }
    let envelope = match envelope {
        Some(e) => Ok(e),
        None => wire::decode::<TaskEnvelope>(&bytes),
    };
    let outcome = match envelope {
        Ok(mut env) => {
            let payload = serde_json::to_vec(&env.task.payload).expect("a Value always serializes");
            let name = st.names.payload_object(&st.session_id, task_id);
            if payload.len() > st.config.max_object_bytes {
                Err(Error::PayloadTooLarge {
                    size: payload.len(),
                    limit: st.config.max_object_bytes,
                })
            } else {
                match conn.objects.put(&name, payload).await {
                    Ok(r) => {
                        env.payload_ref = Some(r);
                        env.task.payload = serde_json::Value::Null;
                        Ok((bytes::Bytes::from(wire::encode(&env)), name))
                    }
                    Err(e) => Err(e),
                }
            }
        }
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
    js: &jetstream::Context,
    subject: String,
    task_id: String,
    bytes: bytes::Bytes,
    traceparent: Option<String>,
) -> AckFuture {
    // The task id as message id: a publish retried after a failure is deduplicated by the server.
    let mut publish = PublishMessage::build()
        .payload(bytes)
        .message_id(task_id.clone());
    if let Some(value) = traceparent {
        // Observability: the worker's spans join the session's trace (protocol.md §9).
        publish = publish.header(crate::trace::TRACEPARENT, value.as_str());
    }
    // Bounded: a publish in flight when the connection drops may never be answered.
    let sent = tokio::time::timeout(Duration::from_secs(5), js.send_publish(subject, publish))
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
) {
    let Some(o) = st.outstanding.get_mut(&task_id) else {
        return;
    };
    match outcome {
        Ok(seq) => {
            o.seq = Some(seq);
            o.bytes = None;
            // Ring only once the task is stored, or a worker may look before it is there.
            st.ring.insert((o.lane, o.route.clone()));
            if let Some(reason) = o.withdrawn {
                st.outstanding.remove(&task_id);
                withdraw(st, conn, &task_id, seq, reason).await;
            }
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
    let _ = conn.tasks.delete_message(seq).await;
    cancel(st, conn, task_id, reason).await;
}

async fn cancel(st: &State, conn: &Conn, task_id: &str, reason: &'static str) {
    let notice = CancelNotice {
        v: PROTOCOL_VERSION,
        task_id: task_id.to_owned(),
        reason: reason.to_owned(),
    };
    let _ = conn
        .client
        .publish(
            st.names.cancel_subject(&st.session_id),
            wire::encode(&notice).into(),
        )
        .await;
}

async fn ring(st: &mut State, conn: &Conn) {
    if st.ring.is_empty() {
        return;
    }
    let now = tokio::time::Instant::now();
    if let Some(last) = st.last_ring
        && now < last + RING_INTERVAL
    {
        st.ring_due.get_or_insert(last + RING_INTERVAL);
        return;
    }
    st.last_ring = Some(now);
    st.ring_due = None;
    let ring: Vec<_> = st.ring.drain().collect();
    for (lane, route) in ring {
        let labels = st.routes.get(&route).cloned().unwrap_or_default();
        let bell = Doorbell {
            v: PROTOCOL_VERSION,
            lane,
            route,
            labels,
        };
        let _ = conn
            .client
            .publish(
                st.names.ready_subject(&st.session_id),
                wire::encode(&bell).into(),
            )
            .await;
    }
}

/// The session closed: drop what is left of its tasks and delete its consumers.
async fn shutdown(st: &State, conn: &Conn) {
    for (task_id, o) in &st.outstanding {
        if let Some(seq) = o.seq {
            withdraw(st, conn, task_id, seq, "closed").await;
        }
        if let Some(name) = &o.object {
            conn.objects.delete(name).await;
        }
    }
    for (lane, route) in &st.consumers {
        let _ = conn
            .tasks
            .delete_consumer(&st.names.task_consumer(&st.session_id, *lane, route))
            .await;
    }
    if let Ok(results) = conn.js.get_stream(st.names.results_stream()).await {
        let _ = results
            .delete_consumer(&st.names.result_consumer(&st.session_id))
            .await;
    }
    let _ = conn.client.flush().await;
}

/// Applies results as they arrive, then acknowledges them (a result seen twice is applied once).
async fn consume_results(
    js: jetstream::Context,
    objects: Bucket,
    max_object_bytes: usize,
    names: Names,
    session_id: String,
    scheduler: Weak<Scheduler>,
) {
    let mut delay = Duration::from_millis(100);
    // Kept across pulls: a consumer is addressed by name, and asking for its info again needs
    // its leader, which an election on a cluster may lack for seconds.
    let mut results: Option<consumer::PullConsumer> = None;
    loop {
        let consumer = match results.take() {
            Some(c) => Ok(c),
            None => {
                async {
                    js.get_stream(names.results_stream())
                        .await
                        .map_err(|e| unavailable("results stream", e))?
                        .get_consumer(&names.result_consumer(&session_id))
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
                    let Some(scheduler) = scheduler.upgrade() else {
                        return;
                    };
                    match wire::decode_results(&message.payload) {
                        Ok(mut envs) => {
                            // Read every referenced result first: a message is applied whole or,
                            // when the object store cannot be read now, not at all (it comes back).
                            if !resolve_result_objects(&objects, max_object_bytes, &mut envs).await
                            {
                                let _ = message
                                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                                    .await;
                                continue;
                            }
                            for env in envs {
                                if env.session_id == session_id {
                                    scheduler.remote_result(env.into());
                                } else {
                                    tracing::warn!(
                                        session = env.session_id,
                                        "dropping a result addressed to another session"
                                    );
                                }
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "dropping a malformed result message")
                        }
                    }
                    let _ = message.ack().await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read results; retrying"),
        }
        if scheduler.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Replaces each result stored by reference by the object's content (deleting the object), or
/// by a failure saying why it cannot be read. False when the object store is unavailable: the
/// message should be read again later.
async fn resolve_result_objects(
    objects: &Bucket,
    max_object_bytes: usize,
    envs: &mut [ResultEnvelope],
) -> bool {
    for env in envs.iter_mut() {
        let Some(r) = env.result_ref.as_ref() else {
            continue;
        };
        match objects.get(r, max_object_bytes).await {
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

/// Turns workers' output chunks into `QueueEvent::Output`.
async fn consume_output(
    client: async_nats::Client,
    names: Names,
    session_id: String,
    scheduler: Weak<Scheduler>,
) {
    let Ok(mut sub) = client.subscribe(names.output_subject(&session_id)).await else {
        return;
    };
    while let Some(msg) = sub.next().await {
        let Some(scheduler) = scheduler.upgrade() else {
            return;
        };
        match wire::decode::<OutputChunk>(&msg.payload) {
            Ok(chunk) => scheduler.remote_output(chunk.task_id, chunk.stream, chunk.chunk),
            Err(err) => tracing::debug!(error = %err, "dropping a malformed output chunk"),
        }
    }
}

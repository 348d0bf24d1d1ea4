//! The admin API over NATS (`docs/protocol.md` §13): roll calls find the processes hosting
//! sessions, requests to a process's view and admin subjects read and steer its sessions,
//! presence announcements show the workers, and the dead-letter stream keeps the letters of
//! sessions that are gone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::{
    Action, ActionOutcome, Announcement, DeadLetter, DeadLetterPage, FleetDemandRow, LetterSource,
    SessionPage, SessionView, TaskPage, TaskQuery, WorkerView,
};
use crate::broker::NatsConfig;
use crate::broker::wire::{
    self, AdminOp, AdminReply, AdminRequest, FLEET, Names, PROTOCOL_VERSION, Presence,
};
use crate::error::{Error, Result};

/// How long a roll call collects answers.
const ROLL_CALL: Duration = Duration::from_millis(300);

/// How long a roll call's answers are reused (a dashboard refreshing every second or two asks
/// once per refresh, not once per request).
const ROLL_CALL_REUSE: Duration = Duration::from_secs(1);

/// How long a request waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type Violations = Arc<Mutex<VecDeque<String>>>;

pub(crate) struct Remote {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    /// The tenant the credential is confined to, if any.
    tenant: Option<String>,
    /// Where each session was last found: (tenant, hub).
    located: Mutex<HashMap<String, (String, String)>>,
    workers: Arc<Mutex<HashMap<String, (Presence, Instant)>>>,
    violations: Violations,
    background: JoinHandle<()>,
    /// The latest roll call's answers, and when it ended; one roll call at a time.
    roll: tokio::sync::Mutex<Option<(Instant, Vec<Announcement>)>>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.background.abort();
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::BrokerUnavailable {
        reason: format!("{what}: {e}"),
    }
}

impl Remote {
    pub(crate) async fn connect(config: NatsConfig, tenant: Option<String>) -> Result<Arc<Self>> {
        if let Some(t) = &tenant
            && !wire::is_tenant(t)
        {
            return Err(Error::invalid_config(format!(
                "tenant {t:?} is not a valid name"
            )));
        }
        let names = config.validate()?;
        let violations = Violations::default();
        let (client, _) = config.connect_observed(Some(violations.clone())).await?;
        let js = jetstream::new(client.clone());
        let presence = client
            .subscribe(names.presence_subject(tenant.as_deref().unwrap_or("*"), "*"))
            .await
            .map_err(|e| unavailable("subscribing to presence", e))?;
        let workers: Arc<Mutex<HashMap<String, (Presence, Instant)>>> = Arc::default();
        let background = tokio::spawn(listen_presence(workers.clone(), presence));
        Ok(Arc::new(Self {
            client,
            js,
            names,
            tenant,
            located: Mutex::default(),
            workers,
            violations,
            background,
            roll: tokio::sync::Mutex::new(None),
        }))
    }

    /// Every process's announcements, fresh (a roll call).
    pub(crate) async fn processes(&self) -> Result<Vec<Announcement>> {
        self.roll(true).await
    }

    /// A roll call's answers: a new one, or (`fresh` false) the latest one's when it ended less
    /// than [`ROLL_CALL_REUSE`] ago (listing pages; a session not found in them is looked for
    /// again with a new roll call).
    async fn roll(&self, fresh: bool) -> Result<Vec<Announcement>> {
        let mut roll = self.roll.lock().await;
        if !fresh
            && let Some((at, answers)) = roll.as_ref()
            && at.elapsed() < ROLL_CALL_REUSE
        {
            return Ok(answers.clone());
        }
        let answers = self.roll_call().await?;
        *roll = Some((Instant::now(), answers.clone()));
        Ok(answers)
    }

    async fn roll_call(&self) -> Result<Vec<Announcement>> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("subscribing for a roll call", e))?;
        let subject = self
            .names
            .hello_subject(self.tenant.as_deref().unwrap_or(FLEET));
        self.client
            .publish_with_reply(subject, inbox, "{\"v\":2}".into())
            .await
            .map_err(|e| unavailable("calling the roll", e))?;
        let mut out = Vec::new();
        let until = tokio::time::Instant::now() + ROLL_CALL;
        while let Ok(Some(msg)) = tokio::time::timeout_at(until, sub.next()).await {
            match wire::decode::<Announcement>(&msg.payload) {
                Ok(a) => out.push(a),
                Err(err) => tracing::debug!(error = %err, "ignoring a malformed announcement"),
            }
        }
        out.sort_by(|a, b| (&a.tenant, &a.hub).cmp(&(&b.tenant, &b.hub)));
        Ok(out)
    }

    /// One request to a hub; its `ok` decoded as `T`.
    async fn request<T: DeserializeOwned>(
        &self,
        tenant: &str,
        hub: &str,
        op: AdminOp,
        session: Option<&str>,
    ) -> Result<T> {
        let act = matches!(op, AdminOp::Act { .. });
        let subject = match act {
            true => self.names.admin_subject(tenant, hub),
            false => self.names.view_subject(tenant, hub),
        };
        let body = wire::encode(&AdminRequest {
            v: PROTOCOL_VERSION,
            op,
        });
        // No one answers the process's subject: it closed, and with it its sessions (a listing,
        // `session` None, skips it).
        let gone = || Error::SessionNotFound {
            session_id: session.unwrap_or_default().to_owned(),
        };
        let denied = || {
            self.violations
                .lock()
                .iter()
                .any(|v| v.contains(&format!("\"{subject}\"")))
        };
        if denied() {
            // Refused before: the credential has not changed since.
            return Err(permission_denied(&subject));
        }
        let request = self.client.request(subject.clone(), body.into());
        tokio::pin!(request);
        let deadline = tokio::time::sleep(REQUEST_TIMEOUT);
        tokio::pin!(deadline);
        // The server drops a request the credential may not publish and says so on the side:
        // watch for that while waiting.
        let mut watch = tokio::time::interval(Duration::from_millis(20));
        let reply = loop {
            tokio::select! {
                r = &mut request => match r {
                    Ok(msg) => break msg,
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        return Err(gone());
                    }
                    Err(e) => return Err(unavailable("admin request", e)),
                },
                _ = watch.tick() => {
                    if denied() {
                        return Err(permission_denied(&subject));
                    }
                }
                _ = &mut deadline => {
                    return Err(unavailable(
                        "admin request",
                        format!("no answer from process {hub} within {REQUEST_TIMEOUT:?}"),
                    ));
                }
            }
        };
        let reply: AdminReply = wire::decode(&reply.payload)?;
        match (reply.ok, reply.error) {
            (Some(ok), None) => serde_json::from_value(ok)
                .map_err(|e| Error::invalid_payload(format!("admin answer: {e}"))),
            (_, Some(err)) => Err(error_from(err.code, err.message, session)),
            (None, None) => Err(Error::invalid_payload(
                "an admin answer with neither ok nor error",
            )),
        }
    }

    /// Where a session is: (tenant, hub), asking every process that hosts sessions (those of
    /// a recent roll call first, then of a new one).
    async fn locate(&self, session_id: &str, fresh: bool) -> Result<(String, String)> {
        if !fresh && let Some(at) = self.located.lock().get(session_id).cloned() {
            return Ok(at);
        }
        match self.find(session_id, false).await {
            Err(Error::SessionNotFound { .. }) => self.find(session_id, true).await,
            other => other,
        }
    }

    async fn find(&self, session_id: &str, fresh: bool) -> Result<(String, String)> {
        let processes = self.roll(fresh).await?;
        let asks = processes
            .iter()
            .filter(|a| a.sessions > 0)
            .map(|a| async move {
                let page: Result<SessionView> = self
                    .request(
                        &a.tenant,
                        &a.hub,
                        AdminOp::Session {
                            session_id: session_id.to_owned(),
                        },
                        Some(session_id),
                    )
                    .await;
                page.ok().map(|_| (a.tenant.clone(), a.hub.clone()))
            });
        let found = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next()
            .ok_or_else(|| Error::SessionNotFound {
                session_id: session_id.to_owned(),
            })?;
        self.located
            .lock()
            .insert(session_id.to_owned(), found.clone());
        Ok(found)
    }

    /// A request about one session, located first (again when it moved or left).
    async fn about<T: DeserializeOwned>(&self, session_id: &str, op: AdminOp) -> Result<T> {
        let (tenant, hub) = self.locate(session_id, false).await?;
        match self
            .request(&tenant, &hub, op.clone(), Some(session_id))
            .await
        {
            Err(Error::SessionNotFound { .. }) => {
                self.located.lock().remove(session_id);
                let (tenant, hub) = self.locate(session_id, true).await?;
                self.request(&tenant, &hub, op, Some(session_id)).await
            }
            other => other,
        }
    }

    pub(crate) async fn sessions(
        &self,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SessionPage> {
        // The cursor is `<tenant>.<hub>.<last session id>` (all three are subject tokens).
        let after = match cursor {
            None => None,
            Some(c) => {
                let mut parts = c.splitn(3, '.');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(t), Some(h), Some(s)) => Some((t.to_owned(), h.to_owned(), s.to_owned())),
                    _ => {
                        return Err(Error::invalid_config(format!(
                            "{c:?} is not a cursor of this listing"
                        )));
                    }
                }
            }
        };
        let mut processes: Vec<Announcement> = self
            .roll(false)
            .await?
            .into_iter()
            .filter(|a| a.sessions > 0 && tenant.is_none_or(|t| a.tenant == t))
            .collect();
        processes.sort_by(|a, b| (&a.tenant, &a.hub).cmp(&(&b.tenant, &b.hub)));
        let mut out = SessionPage {
            sessions: Vec::new(),
            next: None,
        };
        for a in processes {
            let key = (a.tenant.clone(), a.hub.clone());
            let start = match &after {
                Some((t, h, s)) if (t, h) == (&key.0, &key.1) => Some(s.clone()),
                Some((t, h, _)) if (&key.0, &key.1) < (t, h) => continue,
                _ => None,
            };
            let want = limit - out.sessions.len();
            let asked = self
                .request(
                    &a.tenant,
                    &a.hub,
                    AdminOp::Sessions {
                        after: start,
                        limit: want,
                    },
                    None,
                )
                .await;
            let page: SessionPage = match asked {
                Ok(page) => page,
                // The process closed since the roll call: none of its sessions is left.
                Err(Error::SessionNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            {
                let mut located = self.located.lock();
                for s in &page.sessions {
                    located.insert(s.session_id.clone(), key.clone());
                }
            }
            out.sessions.extend(page.sessions);
            if out.sessions.len() == limit {
                let more = page.next.is_some();
                let last = out.sessions.last().map(|s| s.session_id.clone());
                // A full page ends at this process's last session: the next page starts at
                // the next process (asked then; an empty page is possible if none is left).
                out.next = last.map(|s| {
                    if more {
                        format!("{}.{}.{s}", key.0, key.1)
                    } else {
                        format!("{}.{}.{s}~", key.0, key.1)
                    }
                });
                break;
            }
        }
        // `~` sorts after every session id: the rest of that process is skipped.
        Ok(out)
    }

    pub(crate) async fn session(&self, session_id: &str) -> Result<SessionView> {
        self.about(
            session_id,
            AdminOp::Session {
                session_id: session_id.to_owned(),
            },
        )
        .await
    }

    pub(crate) async fn tasks(&self, session_id: &str, query: &TaskQuery) -> Result<TaskPage> {
        self.about(
            session_id,
            AdminOp::Tasks {
                session_id: session_id.to_owned(),
                query: query.clone(),
            },
        )
        .await
    }

    pub(crate) async fn dead_letters(
        &self,
        session_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        // A cursor of the stream listing starts with `s` (the next stream sequence).
        if let Some(c) = cursor
            && let Some(seq) = c.strip_prefix('s')
        {
            let seq = seq.parse::<u64>().map_err(|_| {
                Error::invalid_config(format!("{c:?} is not a cursor of this listing"))
            })?;
            return self.stream_letters(session_id, seq, limit).await;
        }
        let asked = self
            .about(
                session_id,
                AdminOp::DeadLetters {
                    session_id: session_id.to_owned(),
                    cursor: cursor.map(str::to_owned),
                    limit,
                },
            )
            .await;
        match asked {
            Err(Error::SessionNotFound { .. }) if cursor.is_none() => {
                let page = self.stream_letters(session_id, 1, limit).await?;
                if page.letters.is_empty() {
                    return Err(Error::SessionNotFound {
                        session_id: session_id.to_owned(),
                    });
                }
                Ok(page)
            }
            other => other,
        }
    }

    /// Dead letters of a session that is gone, from the dead-letter stream (read only).
    async fn stream_letters(
        &self,
        session_id: &str,
        from: u64,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        if !wire::is_token(session_id) {
            return Err(Error::SessionNotFound {
                session_id: session_id.to_owned(),
            });
        }
        let stream = self
            .js
            .get_stream(self.names.dlq_stream())
            .await
            .map_err(|e| unavailable("dead-letter stream", e))?;
        // Its tenant is unknown once it is gone: the subject's tenant token is a wildcard (or
        // the credential's own tenant).
        let subject = self
            .names
            .dlq_subject(self.tenant.as_deref().unwrap_or("*"), session_id);
        let mut letters = Vec::new();
        let mut seq = from.max(1);
        let mut next = None;
        loop {
            let next_msg = stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let msg = match next_msg {
                Ok(m) => m,
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    break;
                }
                Err(e) => return Err(unavailable("reading the dead-letter stream", e)),
            };
            if letters.len() == limit {
                next = Some(format!("s{}", msg.sequence));
                break;
            }
            seq = msg.sequence + 1;
            match serde_json::from_slice::<DeadLetter>(&msg.payload) {
                Ok(l) => letters.push(l),
                Err(err) => tracing::debug!(error = %err, "skipping a malformed dead letter"),
            }
        }
        Ok(DeadLetterPage {
            letters,
            next,
            source: LetterSource::Stream,
        })
    }

    pub(crate) async fn act(
        &self,
        session_id: &str,
        action: &Action,
        actor: &str,
    ) -> Result<ActionOutcome> {
        self.about(
            session_id,
            AdminOp::Act {
                session_id: session_id.to_owned(),
                action: action.clone(),
                actor: actor.to_owned(),
            },
        )
        .await
    }

    pub(crate) fn workers(&self) -> Vec<WorkerView> {
        let mut workers = self.workers.lock();
        workers.retain(|_, (p, at)| at.elapsed() < Duration::from_secs(3 * p.interval_s.max(1)));
        let mut out: Vec<WorkerView> = workers
            .values()
            .map(|(p, at)| WorkerView {
                presence: p.clone(),
                last_seen_ms: at.elapsed().as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.presence.worker_id.cmp(&b.presence.worker_id));
        out
    }

    pub(crate) async fn fleet_demand(&self) -> Result<Vec<FleetDemandRow>> {
        let mut sum: std::collections::BTreeMap<(String, crate::lane::SessionLane, String), usize> =
            Default::default();
        for a in self.processes().await? {
            for d in a.demand {
                *sum.entry((a.tenant.clone(), d.lane, d.labels)).or_default() += d.slots;
            }
        }
        Ok(sum
            .into_iter()
            .map(|((tenant, lane, labels), slots)| FleetDemandRow {
                tenant,
                lane,
                labels,
                slots,
            })
            .collect())
    }
}

fn permission_denied(subject: &str) -> Error {
    Error::PermissionDenied {
        reason: format!("this credential may not publish to {subject} (a viewer cannot act)"),
    }
}

/// The typed error of a refusal's code.
fn error_from(code: String, message: String, session: Option<&str>) -> Error {
    match code.as_str() {
        "SessionNotFound" => Error::SessionNotFound {
            session_id: session.unwrap_or_default().to_owned(),
        },
        "PermissionDenied" => Error::PermissionDenied { reason: message },
        "TaskNotFound" => Error::TaskNotFound {
            task_id: task_of(&message),
        },
        "InvalidConfig" => Error::InvalidConfig { reason: message },
        "InvalidPayload" => Error::InvalidPayload { reason: message },
        "ShutDown" => Error::ShutDown,
        // Refusals that carry more than a message (a task that already ended, a full lane)
        // keep their code in the reason.
        _ => Error::BrokerUnavailable {
            reason: format!("{code}: {message}"),
        },
    }
}

fn task_of(message: &str) -> String {
    message
        .strip_prefix("task ")
        .and_then(|m| m.split(' ').next())
        .unwrap_or_default()
        .to_owned()
}

/// Keeps the latest presence of every worker.
async fn listen_presence(
    workers: Arc<Mutex<HashMap<String, (Presence, Instant)>>>,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        if let Ok(p) = wire::decode::<Presence>(&msg.payload) {
            workers
                .lock()
                .insert(p.worker_id.clone(), (p, Instant::now()));
        }
    }
}

//! The hub's side of the admin API (`docs/protocol.md` §13): it answers reads and actions
//! about its sessions, answers roll calls, announces itself per tenant, and applies workers'
//! "taken" notices. One subscription of each kind per process, however many sessions.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::hub::{Hub, unavailable};
use crate::broker::wire::{
    self, AdminError, AdminOp, AdminReply, AdminRequest, Announcement, Demand, FLEET,
    PROTOCOL_VERSION, TakenNotice,
};
use crate::error::{Error, Result};
use crate::queue::inspect::{self, SessionPage, Target, check_limit};

/// Seconds between two announcements of a hub.
pub(crate) const ANNOUNCE_INTERVAL_S: u64 = 5;

/// Subscribes to what the hub answers; the returned futures run for the hub's life.
pub(crate) async fn start(
    hub: &Arc<Hub>,
) -> Result<Vec<futures_util::future::BoxFuture<'static, ()>>> {
    let sub = |subject: String| {
        let client = hub.client.clone();
        async move {
            client
                .subscribe(subject)
                .await
                .map_err(|e| unavailable("subscribing for the admin API", e))
        }
    };
    let n = &hub.names;
    let views = sub(n.view_subject("*", &hub.id)).await?;
    let actions = sub(n.admin_subject("*", &hub.id)).await?;
    let hello = sub(n.hello_subject("*")).await?;
    let taken = sub(n.hub_taken_filter(&hub.id)).await?;
    let weak = Arc::downgrade(hub);
    Ok(vec![
        Box::pin(serve(weak.clone(), hub.client.clone(), views, false)),
        Box::pin(serve(weak.clone(), hub.client.clone(), actions, true)),
        Box::pin(serve_hello(weak.clone(), hello)),
        Box::pin(consume_taken(weak.clone(), taken)),
        Box::pin(announce(weak)),
    ])
}

/// Answers requests on `<P>.view.<tenant>.<hub>` (`act == false`) or `<P>.admin.<tenant>.<hub>`.
/// A request that arrives while the hub closes (its last session gone, its subscriptions not
/// yet) is answered as by a hub without sessions, not left to time out.
async fn serve(
    hub: Weak<Hub>,
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    act: bool,
) {
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let tenant = msg.subject.split('.').nth(2).unwrap_or_default().to_owned();
        let h = hub.upgrade();
        let answer = wire::decode::<AdminRequest>(&msg.payload).and_then(|req| match &h {
            Some(h) => answer(h, &tenant, req.op, act),
            None => closed(req.op),
        });
        let body = match answer {
            Ok(ok) => AdminReply {
                v: PROTOCOL_VERSION,
                ok: Some(ok),
                error: None,
            },
            Err(err) => AdminReply {
                v: PROTOCOL_VERSION,
                ok: None,
                error: Some(AdminError {
                    code: err.code().to_owned(),
                    message: err.to_string(),
                }),
            },
        };
        let _ = client.publish(reply, wire::encode(&body).into()).await;
        if h.is_none() {
            return;
        }
    }
}

/// What a hub that closed answers: no sessions.
fn closed(op: AdminOp) -> Result<serde_json::Value> {
    match op {
        AdminOp::Sessions { .. } => json(SessionPage {
            sessions: Vec::new(),
            next: None,
        }),
        AdminOp::Session { session_id }
        | AdminOp::Tasks { session_id, .. }
        | AdminOp::DeadLetters { session_id, .. }
        | AdminOp::Act { session_id, .. } => Err(Error::SessionNotFound { session_id }),
    }
}

fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(v).expect("admin answers serialize"))
}

/// One request, for sessions of `tenant` (the subject's token, which the credential was
/// allowed to publish under).
fn answer(hub: &Hub, tenant: &str, op: AdminOp, act: bool) -> Result<serde_json::Value> {
    let target = |session_id: &str| -> Result<Target> {
        hub.target(session_id)
            .filter(|t| t.tenant == tenant)
            .ok_or_else(|| Error::SessionNotFound {
                session_id: session_id.to_owned(),
            })
    };
    match (op, act) {
        (AdminOp::Act { .. }, false) => Err(Error::PermissionDenied {
            reason: "actions go to the admin subject".to_owned(),
        }),
        (
            AdminOp::Act {
                session_id,
                action,
                actor,
            },
            true,
        ) => json(inspect::act(&target(&session_id)?, &action, &actor)?),
        (_, true) => Err(Error::invalid_payload(
            "the admin subject only takes \"act\"",
        )),
        (AdminOp::Sessions { after, limit }, false) => {
            check_limit(limit)?;
            let mut targets: Vec<Target> = hub
                .targets()
                .into_iter()
                .filter(|t| t.tenant == tenant)
                .filter(|t| {
                    after
                        .as_deref()
                        .is_none_or(|a| t.scheduler.session_id() > a)
                })
                .collect();
            targets.sort_unstable_by(|a, b| a.scheduler.session_id().cmp(b.scheduler.session_id()));
            let more = targets.len() > limit;
            targets.truncate(limit);
            let sessions: Vec<_> = targets.iter().map(inspect::summary).collect();
            json(SessionPage {
                next: more
                    .then(|| sessions.last().map(|s| s.session_id.clone()))
                    .flatten(),
                sessions,
            })
        }
        (AdminOp::Session { session_id }, false) => json(inspect::session(&target(&session_id)?)),
        (AdminOp::Tasks { session_id, query }, false) => {
            json(inspect::tasks(&target(&session_id)?, &query)?)
        }
        (
            AdminOp::DeadLetters {
                session_id,
                cursor,
                limit,
            },
            false,
        ) => json(inspect::dead_letters(
            &target(&session_id)?,
            cursor.as_deref(),
            limit,
        )?),
    }
}

/// Slots needed per (lane index, label set).
type DemandSum = BTreeMap<(usize, String), usize>;

/// This hub's announcements, one per tenant it hosts sessions of (`tenant`: only that one's).
fn announcements(hub: &Hub, tenant: Option<&str>) -> Vec<Announcement> {
    let mut by_tenant: BTreeMap<String, (usize, DemandSum)> = BTreeMap::new();
    for t in hub.targets() {
        if tenant.is_some_and(|want| want != t.tenant) {
            continue;
        }
        let entry = by_tenant.entry(t.tenant.clone()).or_default();
        entry.0 += 1;
        for (lane, labels, n) in t.scheduler.worker_demand() {
            *entry.1.entry((lane.index(), labels)).or_default() += n;
        }
    }
    by_tenant
        .into_iter()
        .map(|(tenant, (sessions, demand))| announcement(hub, tenant, sessions, demand))
        .collect()
}

fn announcement(hub: &Hub, tenant: String, sessions: usize, demand: DemandSum) -> Announcement {
    Announcement {
        v: PROTOCOL_VERSION,
        hub: hub.id.clone(),
        tenant,
        sessions,
        demand: demand
            .into_iter()
            .map(|((lane, labels), slots)| Demand {
                lane: crate::lane::SessionLane::ALL[lane],
                labels,
                slots,
            })
            .collect(),
        host: host_name(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        interval_s: ANNOUNCE_INTERVAL_S,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Answers roll calls on `<P>.hello.<tenant>` (`_`: every tenant) with one announcement per
/// tenant on the reply subject.
async fn serve_hello(hub: Weak<Hub>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(h) = hub.upgrade() else { return };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let tenant = msg.subject.split('.').nth(2).unwrap_or(FLEET);
        let only = (tenant != FLEET).then_some(tenant);
        for a in announcements(&h, only) {
            let _ = h
                .client
                .publish(reply.clone(), wire::encode(&a).into())
                .await;
        }
    }
}

/// Announces the hub per tenant every [`ANNOUNCE_INTERVAL_S`]; a tenant whose last session
/// left is announced once more with no sessions.
async fn announce(hub: Weak<Hub>) {
    let mut previous: Vec<String> = Vec::new();
    loop {
        let Some(h) = hub.upgrade() else { return };
        let now = announcements(&h, None);
        for gone in previous
            .iter()
            .filter(|t| !now.iter().any(|a| &a.tenant == *t))
        {
            let a = announcement(&h, gone.clone(), 0, BTreeMap::new());
            let subject = h.names.announce_subject(gone, &h.id);
            let _ = h.client.publish(subject, wire::encode(&a).into()).await;
        }
        for a in &now {
            let subject = h.names.announce_subject(&a.tenant, &h.id);
            let _ = h.client.publish(subject, wire::encode(a).into()).await;
        }
        previous = now.into_iter().map(|a| a.tenant).collect();
        drop(h);
        tokio::time::sleep(Duration::from_secs(ANNOUNCE_INTERVAL_S)).await;
    }
}

/// Applies workers' taken notices to their sessions (`<P>.taken.<tenant>.<hub>.<session>`).
async fn consume_taken(hub: Weak<Hub>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(h) = hub.upgrade() else { return };
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        let [_, _, tenant, _, session] = tokens[..] else {
            continue;
        };
        let Some(t) = h.target(session).filter(|t| t.tenant == tenant) else {
            continue;
        };
        match wire::decode::<TakenNotice>(&msg.payload) {
            Ok(notice) => t.scheduler.taken(
                notice.tasks.iter().map(|x| (x.task_id.as_str(), x.attempt)),
                &notice.worker_id,
            ),
            Err(err) => tracing::debug!(error = %err, "dropping a malformed taken notice"),
        }
    }
}

//! A session's queue state as NATS JetStream sees it: what `a3s-code stats --nats` shows.
//!
//! The session publishes a task only once it holds a lane slot, so the broker's view is the
//! hand-off to workers: tasks stored and not yet delivered, delivered and not yet acknowledged
//! (running on a worker), redelivered, and the workers' open pull requests. A session whose
//! workers attached to it has consumers of its own; the tasks of the others wait in their
//! tenant's pool consumers, shared by every session of the tenant: for them the figures are the
//! tenant's.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde::Serialize;

use crate::broker::NatsConfig;
use crate::broker::wire::Names;
use crate::error::{Error, Result};
use crate::queue::SessionLane;

/// One lane of a session, summed over its consumers (one per routing label set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BrokerLaneStats {
    /// Consumers of the lane (the default route, plus one per label set in use).
    pub consumer_count: usize,
    /// Tasks stored and not yet delivered to a worker.
    pub pending_count: u64,
    /// Tasks delivered to a worker and not yet acknowledged (running, or leased).
    pub ack_pending_count: u64,
    /// Tasks delivered more than once (a worker died or gave them back).
    pub redelivered_count: u64,
    /// Open pull requests: workers waiting for tasks of this lane.
    pub waiting_pull_count: u64,
    /// Deliveries so far (every attempt counts), for rates.
    pub delivered_count: u64,
    /// Acknowledged deliveries so far (the consumers' ack floor).
    pub acked_count: u64,
}

/// A session's state on the broker: what was handed to workers and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BrokerSessionStats {
    /// The session.
    pub session_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Whether the tenant's tasks stream exists (a session of the tenant was opened).
    pub found: bool,
    /// Whether the lanes' figures are this session's own consumers' (workers attached to it)
    /// rather than its tenant's pool, shared with the tenant's other sessions.
    pub own_consumers: bool,
    /// Per lane, highest priority first.
    pub per_lane: BTreeMap<SessionLane, BrokerLaneStats>,
    /// Results stored and not yet applied by the session's process (every session of that
    /// process: they share one results consumer). 0 when unknown.
    pub results_pending_count: u64,
    /// The session's dead letters in the broker's dead-letter stream.
    pub dead_letter_count: u64,
}

/// A connection for reading sessions' queue state from the broker.
///
/// # Examples
///
/// ```no_run
/// use a3s_code_core::{broker::NatsConfig, observe::BrokerInspector};
/// # #[tokio::main] async fn main() -> a3s_code_core::Result<()> {
/// let inspector = BrokerInspector::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
/// let stats = inspector.session("default", "abc123").await?;
/// for (lane, l) in &stats.per_lane {
///     println!("{lane}: {} waiting, {} on workers", l.pending_count, l.ack_pending_count);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BrokerInspector {
    js: jetstream::Context,
    names: Names,
}

impl BrokerInspector {
    /// Connects with `config` (auth, TLS and prefix as the session's).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for bad settings, [`Error::BrokerUnavailable`] when NATS cannot
    /// be reached.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        let names = config.validate()?;
        let client = config.connect().await?;
        Ok(Self {
            js: jetstream::new(client),
            names,
        })
    }

    /// The state of one session of `tenant` (`"default"` for sessions that name none).
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when NATS is unreachable.
    pub async fn session(&self, tenant: &str, session_id: &str) -> Result<BrokerSessionStats> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| Error::BrokerUnavailable {
            reason: format!("{what}: {e}"),
        };
        let mut out = BrokerSessionStats {
            session_id: session_id.to_owned(),
            tenant: tenant.to_owned(),
            per_lane: SessionLane::ALL
                .into_iter()
                .map(|l| (l, BrokerLaneStats::default()))
                .collect(),
            ..Default::default()
        };
        let tasks = match self.js.get_stream(self.names.tasks_stream(tenant)).await {
            Ok(t) => t,
            Err(e) if e.to_string().contains("not found") => return Ok(out),
            Err(e) => return Err(unavailable("tasks stream", &e)),
        };
        out.found = true;
        // One tenant's consumers: a few pool consumers and those of attached sessions.
        let mut own = Vec::new();
        let mut pool = Vec::new();
        let mut consumers = tasks.consumers();
        while let Some(info) = consumers.next().await {
            let info: consumer::Info = info.map_err(|e| unavailable("listing consumers", &e))?;
            let subject = info.config.filter_subject.clone();
            let parts: Vec<&str> = subject.split('.').collect();
            match parts[..] {
                [_, "task", _, lane, _route] => {
                    if let Ok(lane) = lane.parse::<SessionLane>() {
                        pool.push((lane, info));
                    }
                }
                [_, "task", _, lane, _route, sid] if sid == session_id => {
                    if let Ok(lane) = lane.parse::<SessionLane>() {
                        own.push((lane, info));
                    }
                }
                _ => {}
            }
        }
        out.own_consumers = !own.is_empty();
        for (lane, info) in if own.is_empty() { pool } else { own } {
            let l = out.per_lane.entry(lane).or_default();
            l.consumer_count += 1;
            l.pending_count += info.num_pending;
            l.ack_pending_count += info.num_ack_pending as u64;
            l.redelivered_count += info.num_redelivered as u64;
            l.waiting_pull_count += info.num_waiting as u64;
            l.delivered_count += info.delivered.consumer_sequence;
            l.acked_count += info.ack_floor.consumer_sequence;
        }
        if let Ok(dlq) = self.js.get_stream(self.names.dlq_stream()).await
            && let Ok(mut subjects) = dlq
                .info_with_subjects(self.names.dlq_subject(tenant, session_id))
                .await
        {
            while let Some(Ok((_, count))) = subjects.next().await {
                out.dead_letter_count += count as u64;
            }
        }
        Ok(out)
    }
}

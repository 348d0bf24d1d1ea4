//! A session's queue state as NATS JetStream sees it: what `a3s-code stats --nats` shows.
//!
//! The session publishes a task only once it holds a lane slot, so the broker's view is the
//! hand-off to workers: tasks stored and not yet delivered, delivered and not yet acknowledged
//! (running on a worker), redelivered, and the workers' open pull requests.

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
    /// Whether the session has consumers on the broker (it is open, or closed without cleaning
    /// up and not yet expired).
    pub found: bool,
    /// Per lane, highest priority first.
    pub per_lane: BTreeMap<SessionLane, BrokerLaneStats>,
    /// Results stored and not yet applied by the session.
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
/// let stats = inspector.session("abc123").await?;
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

    /// The state of one session.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when the streams cannot be read (none was ever created with
    /// this prefix, or NATS is unreachable).
    pub async fn session(&self, session_id: &str) -> Result<BrokerSessionStats> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| Error::BrokerUnavailable {
            reason: format!("{what}: {e}"),
        };
        let mut out = BrokerSessionStats {
            session_id: session_id.to_owned(),
            per_lane: SessionLane::ALL
                .into_iter()
                .map(|l| (l, BrokerLaneStats::default()))
                .collect(),
            ..Default::default()
        };
        let tasks = self
            .js
            .get_stream(self.names.tasks_stream())
            .await
            .map_err(|e| unavailable("tasks stream", &e))?;
        let mut consumers = tasks.consumers();
        while let Some(info) = consumers.next().await {
            let info: consumer::Info = info.map_err(|e| unavailable("listing consumers", &e))?;
            let subject = &info.config.filter_subject;
            let parts: Vec<&str> = subject.split('.').collect();
            let [_, "task", sid, lane, _route] = parts[..] else {
                continue;
            };
            let Ok(lane) = lane.parse::<SessionLane>() else {
                continue;
            };
            if sid != session_id {
                continue;
            }
            out.found = true;
            let l = out.per_lane.entry(lane).or_default();
            l.consumer_count += 1;
            l.pending_count += info.num_pending;
            l.ack_pending_count += info.num_ack_pending as u64;
            l.redelivered_count += info.num_redelivered as u64;
            l.waiting_pull_count += info.num_waiting as u64;
            l.delivered_count += info.delivered.consumer_sequence;
            l.acked_count += info.ack_floor.consumer_sequence;
        }
        if let Ok(results) = self.js.get_stream(self.names.results_stream()).await
            && let Ok(info) = results
                .consumer_info(self.names.result_consumer(session_id))
                .await
        {
            out.results_pending_count = info.num_pending + info.num_ack_pending as u64;
        }
        if let Ok(dlq) = self.js.get_stream(self.names.dlq_stream()).await
            && let Ok(mut subjects) = dlq
                .info_with_subjects(self.names.dlq_subject(session_id))
                .await
        {
            while let Some(Ok((_, count))) = subjects.next().await {
                out.dead_letter_count += count as u64;
            }
        }
        Ok(out)
    }
}

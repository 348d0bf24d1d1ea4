//! The interface the scheduler hands External tasks through. The scheduler owns it; brokers
//! (`crate::broker`) implement it, so the queue never imports a broker.

use std::collections::BTreeMap;

use super::{DeadLetter, QueueEvent, SessionLane};
use crate::task::ExternalTask;
use crate::task::ExternalTaskResult;

/// How a published task ended, as the session tells its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A result was applied: the worker already removed the task.
    Completed,
    /// Cancelled, timed out, failed or closed: remove it and stop running copies.
    Withdrawn(&'static str),
}

/// The session's side of a broker. Called under the scheduler's lock: never blocks.
pub(crate) trait Dispatcher: Send + Sync {
    /// Publishes a task that holds a lane slot, for workers with `labels` (none: any worker).
    fn publish(&self, task: ExternalTask, labels: Option<&BTreeMap<String, String>>);
    /// A published task ended.
    fn task_ended(&self, task_id: &str, lane: SessionLane, how: Ended);
    /// The largest payload (as JSON) a task of an External lane may have, if limited.
    fn max_payload_bytes(&self) -> Option<usize>;
    /// A task was dead-lettered.
    fn dead_letter(&self, letter: &DeadLetter);
    /// Dead letters left the DLQ (deleted, or retried): their mirrored copies go too.
    fn dead_letters_removed(&self, task_ids: Vec<String>);
    /// Every dead letter of the session was purged.
    fn dead_letters_purged(&self);
    /// A lifecycle event of a Hybrid lane, for external monitoring.
    fn hybrid_event(&self, lane: SessionLane, event: &QueueEvent);
    /// The session closed: withdraw its tasks, delete its consumers, stop. The future resolves
    /// when that is done; dropping it does not stop the work.
    fn close(&self) -> futures_util::future::BoxFuture<'static, ()>;
}

/// A result that came through a broker, as the scheduler applies it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteResult {
    /// The task it reports on.
    pub(crate) task_id: String,
    /// The attempt that produced it (the broker's delivery count).
    pub(crate) attempt: u32,
    /// Every attempt was lost: the task fails with `RetriesExhausted` (the result says why).
    pub(crate) exhausted: bool,
    /// What the worker reported.
    pub(crate) result: ExternalTaskResult,
    /// Who ran it (empty when the worker did not say).
    pub(crate) worker_id: String,
}

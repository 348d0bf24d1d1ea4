//! Queue events: task lifecycle, retries, dead-lettering and alerts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use super::{SessionLane, TaskHandlerMode};

/// Something that happened in a session's queue.
///
/// Every lane emits lifecycle events to [`subscribe_events`](crate::AgentSession::subscribe_events)
/// subscribers; a Hybrid lane also publishes its Started / Completed / Failed events to the broker
/// when one is configured, for external monitoring.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueueEvent {
    /// A task entered its lane's backlog.
    Submitted {
        /// The task.
        task_id: String,
        /// Its lane.
        lane: SessionLane,
        /// Its command type.
        command_type: String,
    },
    /// A task got a lane slot and began an attempt: running (Internal, Hybrid) or handed to
    /// workers (External).
    Started {
        /// The task.
        task_id: String,
        /// Its lane.
        lane: SessionLane,
        /// Its command type.
        command_type: String,
        /// How the lane handles it.
        mode: TaskHandlerMode,
        /// The attempt number, from 1.
        attempt: u32,
    },
    /// A task finished with a successful result.
    Completed {
        /// The task.
        task_id: String,
        /// Its lane.
        lane: SessionLane,
        /// Its command type.
        command_type: String,
        /// Submit to completion, in milliseconds.
        latency_ms: u64,
    },
    /// A task ended unsuccessfully: its result reported `success: false` (code `ToolFailed`),
    /// or it got none (timed out, cancelled, out of retries, session closed).
    Failed {
        /// The task.
        task_id: String,
        /// Its lane.
        lane: SessionLane,
        /// Its command type.
        command_type: String,
        /// `ToolFailed` for a failed result, else the error code (`TaskTimedOut`,
        /// `TaskCancelled`, `RetriesExhausted`, ...).
        code: String,
        /// The error message.
        error: String,
    },
    /// An attempt was lost; another follows after `delay_ms`.
    Retrying {
        /// The task.
        task_id: String,
        /// Its lane.
        lane: SessionLane,
        /// The attempt that comes next.
        next_attempt: u32,
        /// The backoff before it.
        delay_ms: u64,
        /// Why the previous attempt was lost.
        reason: String,
    },
    /// A failed task was added to the dead-letter queue.
    DeadLettered {
        /// The task.
        task_id: String,
        /// Its lane.
        lane: SessionLane,
        /// Why it failed.
        reason: String,
    },
    /// A threshold was crossed (only with `enable_alerts`).
    Alert {
        /// Which threshold.
        kind: AlertKind,
        /// The lane concerned.
        lane: SessionLane,
        /// The observed value (tasks, or milliseconds).
        value: u64,
        /// The configured threshold.
        threshold: u64,
    },
    /// A chunk of a running task's output (streamed by long tasks such as `bash`).
    Output {
        /// The task.
        task_id: String,
        /// `"stdout"` or `"stderr"`.
        stream: String,
        /// The text.
        chunk: String,
    },
    /// A dead letter was submitted again as a new task (the admin API's retry).
    Resubmitted {
        /// The new task.
        task_id: String,
        /// The dead letter it retries.
        retry_of: String,
        /// Its lane.
        lane: SessionLane,
    },
}

impl QueueEvent {
    /// The task the event is about, if any.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            QueueEvent::Submitted { task_id, .. }
            | QueueEvent::Started { task_id, .. }
            | QueueEvent::Completed { task_id, .. }
            | QueueEvent::Failed { task_id, .. }
            | QueueEvent::Retrying { task_id, .. }
            | QueueEvent::DeadLettered { task_id, .. }
            | QueueEvent::Output { task_id, .. }
            | QueueEvent::Resubmitted { task_id, .. } => Some(task_id),
            QueueEvent::Alert { .. } => None,
        }
    }
}

/// Which alert threshold was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A lane's backlog reached `queue_depth_alert_threshold`.
    QueueDepth,
    /// A task took longer than `latency_alert_threshold_ms`.
    Latency,
}

/// A subscription to a session's queue events.
///
/// Slow subscribers do not slow the queue: when one falls more than the buffer behind, the
/// oldest events are skipped for it and counted in [`lagged`](Self::lagged).
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<QueueEvent>,
    lagged: u64,
    subscribers: Arc<AtomicUsize>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventStream {
    /// A stream over `rx`, counted in `subscribers` while it lives.
    pub(crate) fn new(rx: broadcast::Receiver<QueueEvent>, subscribers: Arc<AtomicUsize>) -> Self {
        subscribers.fetch_add(1, Ordering::Relaxed);
        Self {
            rx,
            lagged: 0,
            subscribers,
        }
    }

    /// The next event; `None` once the session is closed and every event was read.
    pub async fn recv(&mut self) -> Option<QueueEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<QueueEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged += n,
                Err(_) => return None,
            }
        }
    }

    /// How many events this subscriber missed because it fell behind.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

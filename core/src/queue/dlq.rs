//! The dead-letter queue: tasks that failed for good, kept for inspection.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SessionLane;

/// A task that timed out, ran out of retries or was otherwise failed by the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The task's id.
    pub task_id: String,
    /// Its lane.
    pub lane: SessionLane,
    /// Its command type.
    pub command_type: String,
    /// Its payload, as submitted.
    pub payload: Value,
    /// The stable code of the failure (`TaskTimedOut`, `RetriesExhausted`, ...).
    pub error_code: String,
    /// The failure, as a message.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub dead_lettered_at: u64,
}

/// A bounded FIFO of dead letters; the oldest are dropped first.
#[derive(Debug)]
pub(crate) struct DeadLetterQueue {
    entries: VecDeque<DeadLetter>,
    max_size: usize,
    dropped: u64,
}

impl DeadLetterQueue {
    pub(crate) fn new(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            max_size,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, letter: DeadLetter) {
        if self.entries.len() == self.max_size {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(letter);
    }

    /// Takes one letter out by task id.
    pub(crate) fn remove(&mut self, task_id: &str) -> Option<DeadLetter> {
        let at = self.entries.iter().position(|l| l.task_id == task_id)?;
        self.entries.remove(at)
    }

    /// Puts a letter back (a retry that could not be submitted), newest.
    pub(crate) fn restore(&mut self, letter: DeadLetter) {
        self.push(letter);
    }

    pub(crate) fn snapshot(&self) -> Vec<DeadLetter> {
        self.entries.iter().cloned().collect()
    }

    /// Up to `limit` letters from position `from` (oldest first).
    pub(crate) fn page(&self, from: usize, limit: usize) -> Vec<DeadLetter> {
        self.entries
            .iter()
            .skip(from)
            .take(limit)
            .cloned()
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn drain(&mut self) -> Vec<DeadLetter> {
        self.entries.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str) -> DeadLetter {
        DeadLetter {
            task_id: id.into(),
            lane: SessionLane::Query,
            command_type: "read".into(),
            payload: Value::Null,
            error_code: "TaskTimedOut".into(),
            error: "timed out".into(),
            attempts: 1,
            dead_lettered_at: 0,
        }
    }

    #[test]
    fn keeps_the_newest_within_bounds() {
        let mut q = DeadLetterQueue::new(2);
        for id in ["a", "b", "c"] {
            q.push(letter(id));
        }
        let ids: Vec<_> = q.snapshot().into_iter().map(|d| d.task_id).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!((q.len(), q.dropped), (2, 1));
        assert_eq!(q.drain().len(), 2);
        assert_eq!(q.len(), 0);
    }
}

//! Open pull requests of a single-source worker, and the credit they still owe.
//!
//! A worker with exactly one source (one consumer: one lane of its session, or of its tenant's
//! pool, no labels) keeps pull requests open on it, like a bare JetStream worker: a task reaches
//! it as soon as it is stored. The open requests never ask for more tasks than the caller had
//! free slots.
//!
//! The consumer's leader holds open requests in memory, so they vanish when it fails over to
//! another server (on a cluster) even though the worker's connection stays up; and a request
//! sent while the consumer has no leader is dropped without an answer. Requests ask for an idle
//! heartbeat: when neither a task nor a heartbeat came for [`PULL_SILENCE`], the worker forgets
//! its requests and asks again.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long a pull request stays open.
pub(super) const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// How often the server confirms an idle pull request is still open.
pub(super) const PULL_HEARTBEAT: Duration = Duration::from_millis(500);

/// Silence after which open pull requests count as lost (three missed heartbeats): a consumer
/// that lost its leader answers nothing until it has a new one, and a worker must ask again
/// soon after, or the others take all the work meanwhile.
pub(super) const PULL_SILENCE: Duration = Duration::from_millis(1500);

/// How long a worker waits before asking again after a request was refused.
pub(super) const REASK_PAUSE: Duration = Duration::from_millis(250);

/// What a status that ended a request means for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// It expired (`408`): ask again at once.
    Expired,
    /// It was refused or cut short (`409` leadership change, `503` no responders, `404`): ask
    /// again after [`REASK_PAUSE`].
    Refused,
}

/// The credit of the open requests, and when they were last heard of.
pub(super) struct Credit {
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, once known (a session's worker learns
    /// its stream when it attaches).
    pub(super) next_subject: Mutex<Option<String>>,
    /// Open pull requests, oldest first: (local expiry, tasks still owed).
    credit: Mutex<VecDeque<(Instant, usize)>>,
    /// When the open requests last showed they are alive (a task or an idle heartbeat arrived),
    /// or a request was sent.
    heard: Mutex<Instant>,
    /// No new request before this instant: the last one was refused (no leader yet, no such
    /// consumer yet), and asking again at once would only be refused again.
    pause_until: Mutex<Instant>,
}

impl Credit {
    pub(super) fn new(next_subject: Option<String>) -> Self {
        let now = Instant::now();
        Self {
            next_subject: Mutex::new(next_subject),
            credit: Mutex::default(),
            heard: Mutex::new(now),
            pause_until: Mutex::new(now),
        }
    }

    /// Tasks still owed by open requests (expired ones dropped; all of them dropped when the
    /// server has been silent for too long: they died with a consumer leader).
    pub(super) fn outstanding(&self) -> usize {
        let now = Instant::now();
        let mut credit = self.credit.lock();
        if !credit.is_empty() && now >= *self.heard.lock() + PULL_SILENCE {
            tracing::debug!("open pull requests went silent; asking again");
            credit.clear();
        }
        credit.retain(|(expires, _)| *expires > now);
        credit.iter().map(|(_, n)| n).sum()
    }

    /// How many tasks to ask for now, given `free` slots and what open requests still owe
    /// ([`outstanding`](Self::outstanding)): none while enough is owed (a request per freed slot
    /// would cost the server as much as the task itself), else the difference.
    pub(super) fn want(free: usize, owed: usize) -> usize {
        if owed == 0 || owed * 2 <= free {
            free.saturating_sub(owed)
        } else {
            0
        }
    }

    /// Records a request for `n` tasks sent now.
    pub(super) fn asked(&self, n: usize) {
        let now = Instant::now();
        self.credit
            .lock()
            .push_back((now + PULL_EXPIRES + Duration::from_secs(1), n));
        self.heard();
    }

    /// When [`outstanding`](Self::outstanding) would give up on the open requests, if any.
    pub(super) fn silence_deadline(&self) -> Option<Instant> {
        let credit = self.credit.lock();
        (!credit.is_empty()).then(|| *self.heard.lock() + PULL_SILENCE)
    }

    /// When the next request may go out.
    pub(super) fn paused_until(&self) -> Instant {
        *self.pause_until.lock()
    }

    /// The open requests are alive.
    pub(super) fn heard(&self) {
        *self.heard.lock() = Instant::now();
    }

    /// Forgets every open request (they are gone with the connection).
    pub(super) fn forget(&self) {
        tracing::debug!("reconnected: forgetting the open pull requests");
        self.credit.lock().clear();
    }

    /// A request ended with a status: it owes nothing more, and the claim may ask again (after
    /// [`REASK_PAUSE`] unless it merely expired).
    pub(super) fn ended(&self, how: Ending) {
        self.consume(true);
        if how == Ending::Refused {
            *self.pause_until.lock() = Instant::now() + REASK_PAUSE;
        }
    }

    /// One delivery (or the end of a request, `whole`) against the oldest open request.
    pub(super) fn consume(&self, whole: bool) {
        let mut credit = self.credit.lock();
        if let Some(front) = credit.front_mut() {
            if whole || front.1 <= 1 {
                credit.pop_front();
            } else {
                front.1 -= 1;
            }
        }
    }

    /// The body of a pull request for `n` tasks.
    pub(super) fn request_body(n: usize) -> String {
        format!(
            "{{\"batch\":{n},\"expires\":{},\"idle_heartbeat\":{}}}",
            PULL_EXPIRES.as_nanos(),
            PULL_HEARTBEAT.as_nanos()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn credit_is_asked_consumed_and_forgotten() {
        let c = Credit::new(Some("next".into()));
        assert_eq!(Credit::want(8, c.outstanding()), 8);
        c.asked(8);
        assert_eq!(c.outstanding(), 8);
        // Enough is owed: no new request for a slot or two.
        assert_eq!(Credit::want(8, c.outstanding()), 0);
        for _ in 0..5 {
            c.consume(false);
        }
        assert_eq!(c.outstanding(), 3);
        // Half the free slots are uncovered: ask for the rest.
        assert_eq!(Credit::want(8, c.outstanding()), 5);
        c.ended(Ending::Expired);
        assert_eq!(c.outstanding(), 0);
        assert!(c.paused_until() <= Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_drops_the_requests_and_refusals_pause() {
        let c = Credit::new(None);
        c.asked(4);
        assert!(c.silence_deadline().is_some());
        tokio::time::advance(PULL_SILENCE / 2).await;
        c.heard();
        tokio::time::advance(PULL_SILENCE / 2 + Duration::from_millis(1)).await;
        assert_eq!(c.outstanding(), 4, "a heartbeat kept them alive");
        tokio::time::advance(PULL_SILENCE).await;
        assert_eq!(c.outstanding(), 0, "silent requests died with a leader");
        c.asked(2);
        c.ended(Ending::Refused);
        assert!(c.paused_until() > Instant::now());
        assert_eq!(c.outstanding(), 0);
        assert!(Credit::request_body(3).starts_with("{\"batch\":3,"));
    }
}

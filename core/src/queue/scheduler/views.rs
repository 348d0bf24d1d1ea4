//! What the admin API reads from a scheduler and asks of it: tasks by state a page at a time,
//! the bounded ring of recently finished tasks, "taken" notices, dead-letter actions.

use std::collections::VecDeque;

use super::*;
use crate::queue::inspect::{TaskOutcome, TaskPage, TaskQuery, TaskState, TaskView};

/// A finished task as the ring keeps it (no payload: tens of bytes plus its error).
pub(super) struct Finished {
    /// Its position in the session's finished order (1, 2, ...): the cursor of pages.
    n: u64,
    seq: u64,
    lane: SessionLane,
    command: Command,
    mode: Option<TaskHandlerMode>,
    submitted_at: u64,
    started_at: Option<u64>,
    finished_at: u64,
    attempt: u32,
    worker: Option<Arc<str>>,
    outcome: TaskOutcome,
    error: Option<Box<(String, String)>>,
    retry_of: Option<Box<str>>,
}

/// The ring of recently finished tasks.
pub(super) struct History {
    ring: VecDeque<Finished>,
    capacity: usize,
    total: u64,
}

impl History {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            ring: VecDeque::new(),
            capacity,
            total: 0,
        }
    }

    fn push(&mut self, mut f: Finished) {
        if self.capacity == 0 {
            return;
        }
        self.total += 1;
        f.n = self.total;
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(f);
    }

    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }
}

fn bad_cursor(cursor: &str) -> Error {
    Error::invalid_config(format!("{cursor:?} is not a cursor of this listing"))
}

impl Scheduler {
    /// Wall-clock milliseconds of a monotonic instant.
    fn wall_ms(&self, at: Instant) -> u64 {
        let (base, base_ms) = self.base;
        if at >= base {
            base_ms + at.duration_since(base).as_millis() as u64
        } else {
            base_ms.saturating_sub(base.duration_since(at).as_millis() as u64)
        }
    }

    /// Records a task that held a slot and ended.
    pub(super) fn record_finished(
        &self,
        st: &mut State,
        seq: u64,
        e: &Entry,
        outcome: &Result<ExternalTaskResult>,
    ) {
        let retry_of = st.retry_of.remove(&seq);
        if st.history.capacity == 0 {
            return;
        }
        let (outcome, error) = match outcome {
            Ok(r) if r.success => (TaskOutcome::Completed, None),
            Ok(r) => (
                TaskOutcome::Failed,
                Some(("ToolFailed".to_owned(), r.error.clone().unwrap_or_default())),
            ),
            Err(err) => (
                match err {
                    Error::TaskTimedOut { .. } => TaskOutcome::TimedOut,
                    Error::TaskCancelled { .. } => TaskOutcome::Cancelled,
                    _ => TaskOutcome::Failed,
                },
                Some((err.code().to_owned(), err.to_string())),
            ),
        };
        let (worker, attempt) = match &e.worker {
            Some((w, a)) => (Some(w.clone()), e.attempt.max(*a)),
            None => (None, e.attempt),
        };
        let f = Finished {
            n: 0,
            seq,
            lane: e.lane,
            command: e.command.clone(),
            mode: Some(e.mode),
            submitted_at: self.wall_ms(e.submitted_at),
            started_at: Some(e.created_at),
            finished_at: epoch_ms(),
            attempt,
            worker,
            outcome,
            error: error.map(Box::new),
            retry_of,
        };
        st.history.push(f);
    }

    /// Records a task cancelled while it waited for a slot.
    pub(super) fn record_unstarted(
        &self,
        st: &mut State,
        lane: SessionLane,
        q: &Queued,
        task_id: &str,
    ) {
        let retry_of = st.retry_of.remove(&q.seq);
        let f = Finished {
            n: 0,
            seq: q.seq,
            lane,
            command: q.command.clone(),
            mode: None,
            submitted_at: self.wall_ms(q.submitted_at),
            started_at: None,
            finished_at: epoch_ms(),
            attempt: 0,
            worker: None,
            outcome: TaskOutcome::Cancelled,
            error: Some(Box::new((
                "TaskCancelled".to_owned(),
                format!("task {task_id} was cancelled"),
            ))),
            retry_of,
        };
        st.history.push(f);
    }

    /// A worker took these tasks' attempts (its "taken" notice): shown as their holder.
    /// Notices of ended tasks, foreign ids or older attempts are ignored. One lock per notice.
    pub(crate) fn taken<'a>(
        &self,
        tasks: impl IntoIterator<Item = (&'a str, u32)>,
        worker_id: &str,
    ) {
        let worker: Arc<str> = worker_id.into();
        let mut st = self.state.lock();
        for (task_id, attempt) in tasks {
            let Ok(seq) = self.seq_of(task_id) else {
                continue;
            };
            if let Some(e) = st.live.get_mut(&seq)
                && e.worker.as_ref().is_none_or(|(_, a)| *a <= attempt)
            {
                e.worker = Some((worker.clone(), attempt));
            }
        }
    }

    /// Finished tasks kept, for the session view.
    pub(crate) fn finished_kept(&self) -> usize {
        self.state.lock().history.len()
    }

    /// One page of tasks in `query.state`.
    pub(crate) fn tasks(&self, query: &TaskQuery) -> Result<TaskPage> {
        query.validate()?;
        let st = self.state.lock();
        let matches = |seq: u64| {
            query
                .search
                .as_deref()
                .is_none_or(|s| self.task_id(seq).starts_with(s))
        };
        let limit = query.limit;
        match query.state {
            TaskState::Pending => {
                // Dispatch order: lane by lane (highest first), FIFO within; cursor `lane:seq`.
                let after = match &query.cursor {
                    None => None,
                    Some(c) => {
                        let (lane, seq) = c.split_once(':').ok_or_else(|| bad_cursor(c))?;
                        let lane: usize = lane.parse().map_err(|_| bad_cursor(c))?;
                        let seq: u64 = seq.parse().map_err(|_| bad_cursor(c))?;
                        Some((lane, seq))
                    }
                };
                let mut tasks = Vec::new();
                let mut more = false;
                'lanes: for lane in SessionLane::ALL {
                    let i = lane.index();
                    if after.is_some_and(|(l, _)| i < l) {
                        continue;
                    }
                    for q in &st.lanes[i].backlog {
                        if after.is_some_and(|(l, s)| i == l && q.seq <= s) || !matches(q.seq) {
                            continue;
                        }
                        if tasks.len() == limit {
                            more = true;
                            break 'lanes;
                        }
                        tasks.push((i, q.seq, self.pending_view(lane, q)));
                    }
                }
                let next = more
                    .then(|| tasks.last().map(|(i, seq, _)| format!("{i}:{seq}")))
                    .flatten();
                let tasks = tasks.into_iter().map(|(_, _, t)| t).collect();
                Ok(TaskPage { tasks, next })
            }
            TaskState::InFlight => {
                // Oldest first; cursor: the last sequence number shown.
                let after = match &query.cursor {
                    None => None,
                    Some(c) => Some(c.parse::<u64>().map_err(|_| bad_cursor(c))?),
                };
                let mut seqs: Vec<u64> = st
                    .live
                    .keys()
                    .copied()
                    .filter(|s| after.is_none_or(|a| *s > a) && matches(*s))
                    .collect();
                seqs.sort_unstable();
                let more = seqs.len() > limit;
                seqs.truncate(limit);
                let tasks: Vec<TaskView> = seqs
                    .iter()
                    .map(|s| self.live_view(&st, *s, &st.live[s]))
                    .collect();
                let next = more.then(|| seqs.last().map(u64::to_string)).flatten();
                Ok(TaskPage { tasks, next })
            }
            TaskState::Finished => {
                // Newest first; cursor: the position of the last one shown.
                let before = match &query.cursor {
                    None => u64::MAX,
                    Some(c) => c.parse::<u64>().map_err(|_| bad_cursor(c))?,
                };
                let ring = &st.history.ring;
                // Positions are consecutive: start right below the cursor without scanning.
                let newest = ring.back().map_or(0, |f| f.n);
                let skip = newest.saturating_sub(before.saturating_sub(1)) as usize;
                let mut tasks = Vec::new();
                let mut last_n = None;
                let mut more = false;
                for f in ring.iter().rev().skip(skip) {
                    if !matches(f.seq) {
                        continue;
                    }
                    if tasks.len() == limit {
                        more = true;
                        break;
                    }
                    last_n = Some(f.n);
                    tasks.push(self.finished_view(f));
                }
                let next = more.then(|| last_n.map(|n| n.to_string())).flatten();
                Ok(TaskPage { tasks, next })
            }
        }
    }

    fn pending_view(&self, lane: SessionLane, q: &Queued) -> TaskView {
        TaskView {
            task_id: self.task_id(q.seq),
            lane,
            command_type: q.command.as_str().to_owned(),
            state: TaskState::Pending,
            submitted_at: self.wall_ms(q.submitted_at),
            started_at: None,
            finished_at: None,
            attempt: 0,
            mode: None,
            worker_id: None,
            outcome: None,
            error_code: None,
            error: None,
            retry_of: None,
            labels: q
                .options
                .as_ref()
                .map(|o| o.labels.clone())
                .unwrap_or_default(),
            payload: serde_json::from_str(&q.payload).ok(),
        }
    }

    fn live_view(&self, st: &State, seq: u64, e: &Entry) -> TaskView {
        let (worker_id, attempt) = match &e.worker {
            Some((w, a)) => (Some(w.to_string()), e.attempt.max(*a)),
            None => (None, e.attempt),
        };
        TaskView {
            task_id: self.task_id(seq),
            lane: e.lane,
            command_type: e.command.as_str().to_owned(),
            state: TaskState::InFlight,
            submitted_at: self.wall_ms(e.submitted_at),
            started_at: Some(e.created_at),
            finished_at: None,
            attempt,
            mode: Some(e.mode),
            worker_id,
            outcome: None,
            error_code: None,
            error: None,
            retry_of: st.retry_of.get(&seq).map(|r| r.to_string()),
            labels: e.labels.clone(),
            payload: Some(e.payload.clone()),
        }
    }

    fn finished_view(&self, f: &Finished) -> TaskView {
        TaskView {
            task_id: self.task_id(f.seq),
            lane: f.lane,
            command_type: f.command.as_str().to_owned(),
            state: TaskState::Finished,
            submitted_at: f.submitted_at,
            started_at: f.started_at,
            finished_at: Some(f.finished_at),
            attempt: f.attempt,
            mode: f.mode,
            worker_id: f.worker.as_deref().map(str::to_owned),
            outcome: Some(f.outcome),
            error_code: f.error.as_ref().map(|e| e.0.clone()),
            error: f.error.as_ref().map(|e| e.1.clone()),
            retry_of: f.retry_of.as_deref().map(str::to_owned),
            labels: Default::default(),
            payload: None,
        }
    }

    /// Up to `limit` dead letters from position `from`, and whether more follow.
    pub(crate) fn dead_letter_page(&self, from: usize, limit: usize) -> (Vec<DeadLetter>, bool) {
        let st = self.state.lock();
        match &st.dlq {
            Some(dlq) => (dlq.page(from, limit), dlq.len() > from + limit),
            None => (Vec::new(), false),
        }
    }

    /// Submits a dead letter's task again as a new task whose `retry_of` is the letter's id,
    /// and takes the letter out of the DLQ (it stays when the submit fails).
    pub(crate) fn retry_dead_letter(self: &Arc<Self>, task_id: &str) -> Result<TaskHandle> {
        let letter = self.take_dead_letter(task_id)?;
        let payload = letter.payload.clone();
        let submitted = self.submit_as(
            letter.lane,
            &letter.command_type,
            payload,
            None,
            Some(task_id.into()),
        );
        match submitted {
            Ok(handle) => {
                self.state.lock().emit(|| QueueEvent::Resubmitted {
                    task_id: handle.task_id().to_owned(),
                    retry_of: task_id.to_owned(),
                    lane: letter.lane,
                });
                if let Some(d) = self.dispatcher.get() {
                    d.dead_letters_removed(vec![task_id.to_owned()]);
                }
                Ok(handle)
            }
            Err(err) => {
                self.restore_dead_letter(letter);
                Err(err)
            }
        }
    }

    /// Deletes one dead letter (and its mirrored copy).
    pub(crate) fn delete_dead_letter(&self, task_id: &str) -> Result<()> {
        self.take_dead_letter(task_id)?;
        if let Some(d) = self.dispatcher.get() {
            d.dead_letters_removed(vec![task_id.to_owned()]);
        }
        Ok(())
    }

    /// Deletes every dead letter (and their mirrored copies); returns them.
    pub(crate) fn purge_dead_letters(&self) -> Vec<DeadLetter> {
        let letters = self.drain_dead_letters();
        if let Some(d) = self.dispatcher.get() {
            d.dead_letters_purged();
        }
        letters
    }
}

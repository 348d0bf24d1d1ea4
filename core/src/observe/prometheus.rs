//! Renders sessions and workers in the Prometheus text format (0.0.4), from snapshots taken
//! at scrape time: the scheduler's counters and histograms are read, never touched per task.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::queue::metrics::{HistogramExport, MetricsExport};
use crate::queue::{QueueStats, SessionLane};

/// The `Content-Type` of `/metrics` (the Prometheus text format, version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a session shows at one scrape.
#[derive(Debug)]
pub(crate) struct SessionSnapshot {
    pub(crate) session_id: String,
    /// Its tenant: a label of the autoscaling gauge (fleets may be scaled per tenant).
    pub(crate) tenant: String,
    pub(crate) open: bool,
    /// `None` without a broker.
    pub(crate) broker_ready: Option<bool>,
    pub(crate) stats: QueueStats,
    pub(crate) metrics: Option<MetricsExport>,
    /// Worker slots needed per External lane and required label set.
    pub(crate) demand: Vec<(SessionLane, String, usize)>,
}

/// Per-lane counters of a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WorkerLaneCounts {
    pub(crate) claimed: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) rejected: u64,
    pub(crate) skipped_expired: u64,
}

/// What a worker shows at one scrape.
#[derive(Debug)]
pub(crate) struct WorkerSnapshot {
    pub(crate) worker_id: String,
    pub(crate) stats: WorkerStats,
    pub(crate) lanes: [WorkerLaneCounts; 4],
    pub(crate) slots: usize,
    pub(crate) connected: bool,
    pub(crate) heartbeat_age: Option<Duration>,
    pub(crate) state: crate::broker::wire::WorkerState,
}

type Labels = Vec<(&'static str, String)>;

/// A counter family: name, help, and how to read it from a lane's figures.
type CounterOf<T> = (&'static str, &'static str, fn(&T) -> u64);

/// One metric family: name (without `_total` / unit suffix), help, unit, type, samples.
fn family<V: Copy + Into<f64>>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        let mut m = metric.encode_family(&labels)?;
        let v: f64 = value.into();
        match kind {
            MetricType::Counter => m.encode_counter::<NoLabelSet, u64, u64>(&(v as u64), None)?,
            _ => m.encode_gauge(&v)?,
        }
    }
    Ok(())
}

fn histograms<'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, &'a HistogramExport)>,
) -> std::fmt::Result {
    let mut metric =
        enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in samples {
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl Collector for SessionSnapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let session = || vec![("session", self.session_id.clone())];
        let lane = |l: SessionLane| {
            vec![
                ("session", self.session_id.clone()),
                ("lane", l.to_string()),
            ]
        };
        let lanes = || self.stats.per_lane.iter().map(|(l, s)| (*l, s));
        family(
            &mut enc,
            "a3s_session_open",
            "1 while the session is open, 0 once it is closed.",
            None,
            MetricType::Gauge,
            [(session(), flag(self.open))],
        )?;
        if let Some(ready) = self.broker_ready {
            family(
                &mut enc,
                "a3s_session_broker_ready",
                "1 when the session's broker (NATS) is connected and set up.",
                None,
                MetricType::Gauge,
                [(session(), flag(ready))],
            )?;
        }
        let mut info = enc.encode_descriptor(
            "a3s_lane",
            "The lane's handler mode (internal, external, hybrid).",
            None,
            MetricType::Info,
        )?;
        for (l, s) in lanes() {
            let mut labels = lane(l);
            labels.push(("mode", s.mode.as_str().to_owned()));
            info.encode_info(&labels)?;
        }
        family(
            &mut enc,
            "a3s_lane_pending_tasks",
            "Tasks waiting for a slot of the lane (the backlog).",
            None,
            MetricType::Gauge,
            lanes().map(|(l, s)| (lane(l), s.pending_count as f64)),
        )?;
        family(
            &mut enc,
            "a3s_lane_oldest_pending_age",
            "How long the oldest task of the backlog has been waiting (0 when none).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            lanes().map(|(l, s)| (lane(l), s.oldest_pending_ms as f64 / 1000.0)),
        )?;
        family(
            &mut enc,
            "a3s_lane_in_flight_tasks",
            "Tasks holding a slot of the lane (running, or handed to workers).",
            None,
            MetricType::Gauge,
            lanes().map(|(l, s)| (lane(l), s.active_count as f64)),
        )?;
        family(
            &mut enc,
            "a3s_lane_capacity_tasks",
            "The lane's concurrency limit (slots).",
            None,
            MetricType::Gauge,
            lanes().map(|(l, s)| (lane(l), s.max_concurrency as f64)),
        )?;
        family(
            &mut enc,
            "a3s_lane_paused",
            "1 while the lane is paused (nothing new is dispatched), else 0.",
            None,
            MetricType::Gauge,
            lanes().map(|(l, s)| (lane(l), flag(s.paused))),
        )?;
        family(
            &mut enc,
            "a3s_lane_worker_slots_needed",
            "Worker slots an External lane needs now, by required label set (and the session's \
             tenant): its backlog plus its tasks out at workers (the autoscaling signal; 0 when \
             idle).",
            None,
            MetricType::Gauge,
            self.demand.iter().map(|(l, labels, n)| {
                let mut set = lane(*l);
                set.push(("labels", labels.clone()));
                set.push(("tenant", self.tenant.clone()));
                (set, *n as f64)
            }),
        )?;
        family(
            &mut enc,
            "a3s_lane_external_tasks",
            "In-flight tasks handed to workers (External lanes).",
            None,
            MetricType::Gauge,
            lanes().map(|(l, s)| (lane(l), s.external_count as f64)),
        )?;
        family(
            &mut enc,
            "a3s_lane_claimed_tasks",
            "External tasks claimed by an in-process worker and not yet completed.",
            None,
            MetricType::Gauge,
            lanes().map(|(l, s)| (lane(l), s.claimed_count as f64)),
        )?;
        let Some(m) = &self.metrics else {
            return Ok(());
        };
        let per = |f: fn(&crate::queue::metrics::LaneExport) -> u64| {
            SessionLane::ALL.map(|l| (lane(l), f(&m.lanes[l.index()]) as f64))
        };
        let counters: [CounterOf<crate::queue::metrics::LaneExport>; 7] = [
            (
                "a3s_tasks_completed",
                "Tasks that ended with a successful result.",
                |l| l.completed(),
            ),
            (
                "a3s_tasks_failed",
                "Tasks that ended with a failed result (success: false) or ran out of retries.",
                |l| l.failed,
            ),
            (
                "a3s_tasks_timed_out",
                "Tasks whose deadline passed before a result.",
                |l| l.timed_out,
            ),
            (
                "a3s_tasks_cancelled",
                "Tasks cancelled before they completed.",
                |l| l.cancelled,
            ),
            (
                "a3s_tasks_retried",
                "Retries started after lost attempts (including redeliveries over NATS).",
                |l| l.retried,
            ),
            (
                "a3s_tasks_dead_lettered",
                "Tasks added to the dead-letter queue.",
                |l| l.dead_lettered,
            ),
            (
                "a3s_tasks_redelivered",
                "Results that came from a redelivered attempt (attempt > 1) over NATS.",
                |l| l.redelivered,
            ),
        ];
        for (name, help, f) in counters {
            family(&mut enc, name, help, None, MetricType::Counter, per(f))?;
        }
        family(
            &mut enc,
            "a3s_completions_rejected",
            "Results refused because the task had already ended (late or repeated results).",
            None,
            MetricType::Counter,
            [(session(), m.rejected_completions as f64)],
        )?;
        family(
            &mut enc,
            "a3s_dead_letter_tasks",
            "Dead letters currently held by the session.",
            None,
            MetricType::Gauge,
            [(session(), m.dlq_depth as f64)],
        )?;
        histograms(
            &mut enc,
            "a3s_task_queue_wait",
            "Submit to slot: how long tasks waited in the backlog.",
            SessionLane::ALL.map(|l| (lane(l), &m.lanes[l.index()].queue_wait)),
        )?;
        histograms(
            &mut enc,
            "a3s_task_run",
            "Slot to result: how long tasks ran (with workers: hand-off, run and report).",
            SessionLane::ALL.map(|l| (lane(l), &m.lanes[l.index()].run)),
        )?;
        histograms(
            &mut enc,
            "a3s_task_latency",
            "Submit to result, end to end.",
            SessionLane::ALL.map(|l| (lane(l), &m.lanes[l.index()].latency)),
        )?;
        let mut quantiles = Vec::new();
        for l in SessionLane::ALL {
            let e = &m.lanes[l.index()];
            for (q, v) in [("0.5", e.p50), ("0.95", e.p95), ("0.99", e.p99)] {
                let mut labels = lane(l);
                labels.push(("quantile", q.to_owned()));
                quantiles.push((labels, secs(v)));
            }
        }
        family(
            &mut enc,
            "a3s_task_latency_quantile",
            "End-to-end latency percentiles since the session started (HDR histogram, 3 significant figures).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            quantiles,
        )
    }
}

impl Collector for WorkerSnapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let worker = || vec![("worker", self.worker_id.clone())];
        let lane =
            |l: SessionLane| vec![("worker", self.worker_id.clone()), ("lane", l.to_string())];
        let per = |f: fn(&WorkerLaneCounts) -> u64| {
            SessionLane::ALL.map(|l| (lane(l), f(&self.lanes[l.index()]) as f64))
        };
        family(
            &mut enc,
            "a3s_worker_connected",
            "1 while the worker is connected to its broker (always 1 in process).",
            None,
            MetricType::Gauge,
            [(worker(), flag(self.connected))],
        )?;
        {
            use crate::broker::wire::WorkerState;
            family(
                &mut enc,
                "a3s_worker_state",
                "1 for the worker's state: waiting (no work exists for it yet), serving or draining.",
                None,
                MetricType::Gauge,
                [
                    WorkerState::Waiting,
                    WorkerState::Serving,
                    WorkerState::Draining,
                ]
                .map(|st| {
                    let mut l = worker();
                    l.push(("state", st.as_str().to_owned()));
                    (l, flag(self.state == st))
                }),
            )?;
        }
        family(
            &mut enc,
            "a3s_worker_busy_slots",
            "Tasks the worker is running now.",
            None,
            MetricType::Gauge,
            [(worker(), self.stats.busy as f64)],
        )?;
        family(
            &mut enc,
            "a3s_worker_slots",
            "Tasks the worker runs at once at most (its concurrency).",
            None,
            MetricType::Gauge,
            [(worker(), self.slots as f64)],
        )?;
        if let Some(age) = self.heartbeat_age {
            family(
                &mut enc,
                "a3s_worker_heartbeat_age",
                "Time since the worker last renewed its leases (its heartbeat).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
                [(worker(), secs(age))],
            )?;
        }
        let counters: [CounterOf<WorkerLaneCounts>; 5] = [
            (
                "a3s_worker_tasks_claimed",
                "Tasks the worker claimed.",
                |c| c.claimed,
            ),
            (
                "a3s_worker_tasks_succeeded",
                "Tasks run and reported with success: true.",
                |c| c.succeeded,
            ),
            (
                "a3s_worker_tasks_failed",
                "Tasks run and reported with success: false.",
                |c| c.failed,
            ),
            (
                "a3s_worker_results_rejected",
                "Results the session refused (the task had timed out, was cancelled or completed elsewhere).",
                |c| c.rejected,
            ),
            (
                "a3s_worker_tasks_expired",
                "Tasks not run because their deadline had passed.",
                |c| c.skipped_expired,
            ),
        ];
        for (name, help, f) in counters {
            family(&mut enc, name, help, None, MetricType::Counter, per(f))?;
        }
        Ok(())
    }
}

fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

pub(crate) fn render_session(snapshot: SessionSnapshot) -> String {
    render(snapshot)
}

pub(crate) fn render_worker(snapshot: WorkerSnapshot) -> String {
    render(snapshot)
}

/// Counters of a running worker (`a3s_code_core::worker::WorkerStats`; defined here, below the
/// worker, because its `/metrics` renders them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Tasks claimed.
    pub claimed: u64,
    /// Results accepted by the session, `success: true`.
    pub succeeded: u64,
    /// Results accepted by the session, `success: false`.
    pub failed: u64,
    /// Tasks not run because their deadline had passed.
    pub skipped_expired: u64,
    /// Results the session refused (the task had timed out, was cancelled or completed elsewhere).
    pub rejected: u64,
    /// Tasks running now.
    pub busy: u64,
}

//! Queue statistics (always on) and metrics (latency histograms and counters, opt-in).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{SessionLane, TaskHandlerMode};

/// A snapshot of what is in the queue right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Tasks waiting for a lane slot.
    pub pending_count: usize,
    /// Tasks holding a lane slot (running, handed to workers, or between retries).
    pub active_count: usize,
    /// Active tasks of External lanes: waiting for a worker or claimed by one.
    pub external_count: usize,
    /// The same, per lane, highest priority first.
    pub per_lane: BTreeMap<SessionLane, LaneStats>,
}

/// A snapshot of one lane.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LaneStats {
    /// Tasks waiting for a slot.
    pub pending_count: usize,
    /// Tasks holding a slot.
    pub active_count: usize,
    /// Active tasks handed to workers.
    pub external_count: usize,
    /// External tasks claimed by a worker and not yet completed.
    pub claimed_count: usize,
    /// The lane's concurrency limit.
    pub max_concurrency: usize,
    /// The lane's handler mode.
    pub mode: TaskHandlerMode,
    /// The lane's task timeout.
    pub timeout_ms: u64,
    /// How long the oldest pending task has been waiting, in milliseconds (0 when none).
    pub oldest_pending_ms: u64,
    /// Whether the lane is paused ([`AgentSession::pause_lane`](crate::AgentSession::pause_lane)).
    pub paused: bool,
}

/// Counters and latency percentiles since the session started (`enable_metrics`).
///
/// Latency is measured from submit to completion. `success_rate` is the share of processed
/// tasks that completed with `success: true` (0 when nothing was processed).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueMetrics {
    /// Tasks that reached an outcome: a result, a timeout or a failure (cancelled ones excluded).
    pub total_processed: u64,
    /// Tasks whose result reported failure, or that ran out of retries.
    pub total_failed: u64,
    /// Tasks whose deadline passed.
    pub total_timed_out: u64,
    /// Tasks cancelled before they completed.
    pub total_cancelled: u64,
    /// Retries started after lost attempts.
    pub total_retried: u64,
    /// Tasks added to the dead-letter queue.
    pub total_dead_lettered: u64,
    /// Completions refused because the task had already finished (late or repeated results).
    pub total_rejected_completions: u64,
    /// Successful share of processed tasks, 0.0 to 1.0.
    pub success_rate: f64,
    /// Mean submit-to-completion latency.
    pub avg_latency: Duration,
    /// Median latency.
    pub p50_latency: Duration,
    /// 95th percentile latency.
    pub p95_latency: Duration,
    /// 99th percentile latency.
    pub p99_latency: Duration,
    /// Dead letters currently held.
    pub dlq_depth: usize,
    /// The same figures per lane.
    pub per_lane: BTreeMap<SessionLane, LaneMetrics>,
}

/// Counters and latency percentiles of one lane.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LaneMetrics {
    /// Tasks that reached an outcome.
    pub total_processed: u64,
    /// Tasks whose result reported failure, or that ran out of retries.
    pub total_failed: u64,
    /// Tasks whose deadline passed.
    pub total_timed_out: u64,
    /// Retries started.
    pub total_retried: u64,
    /// Successful share of processed tasks.
    pub success_rate: f64,
    /// Mean latency.
    pub avg_latency: Duration,
    /// Median latency.
    pub p50_latency: Duration,
    /// 95th percentile latency.
    pub p95_latency: Duration,
    /// 99th percentile latency.
    pub p99_latency: Duration,
}

/// Lane-level counters and latency histograms in microseconds.
#[derive(Debug)]
pub(crate) struct LaneRecorder {
    processed: u64,
    failed: u64,
    timed_out: u64,
    cancelled: u64,
    retried: u64,
    dead_lettered: u64,
    redelivered: u64,
    /// Submit to result.
    latency_us: Histogram<u64>,
    /// Submit to slot.
    queue_wait_us: Histogram<u64>,
    /// Slot to result.
    run_us: Histogram<u64>,
}

impl LaneRecorder {
    fn new() -> Self {
        // 1 µs .. auto-resized, 3 significant figures.
        let histogram = || Histogram::new(3).expect("3 significant figures is valid");
        Self {
            processed: 0,
            failed: 0,
            timed_out: 0,
            cancelled: 0,
            retried: 0,
            dead_lettered: 0,
            redelivered: 0,
            latency_us: histogram(),
            queue_wait_us: histogram(),
            run_us: histogram(),
        }
    }
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    // Auto-resizing: recording only fails past u64::MAX / 2, far beyond any latency.
    let _ = h.record(us);
}

/// Upper bounds (seconds) of the Prometheus latency buckets; `+Inf` follows.
pub(crate) const BUCKETS_S: [f64; 22] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A latency histogram as Prometheus buckets (counts per bucket, not cumulative; the last
/// bound is `+Inf`), with its sum in seconds and its count.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HistogramExport {
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) sum: f64,
    pub(crate) count: u64,
}

impl HistogramExport {
    fn of(h: &Histogram<u64>) -> Self {
        let mut counts = [0u64; BUCKETS_S.len() + 1];
        for v in h.iter_recorded() {
            let secs = h.highest_equivalent(v.value_iterated_to()) as f64 / 1e6;
            let i = BUCKETS_S.partition_point(|b| *b < secs);
            counts[i] += v.count_at_value();
        }
        Self {
            buckets: BUCKETS_S
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(counts)
                .collect(),
            sum: h.mean() * h.len() as f64 / 1e6,
            count: h.len(),
        }
    }
}

/// Everything recorded for one lane, for the Prometheus exporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LaneExport {
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) timed_out: u64,
    pub(crate) cancelled: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) redelivered: u64,
    pub(crate) latency: HistogramExport,
    pub(crate) queue_wait: HistogramExport,
    pub(crate) run: HistogramExport,
    pub(crate) p50: Duration,
    pub(crate) p95: Duration,
    pub(crate) p99: Duration,
}

impl LaneExport {
    /// Tasks that ended with a successful result.
    pub(crate) fn completed(&self) -> u64 {
        self.processed
            .saturating_sub(self.failed)
            .saturating_sub(self.timed_out)
    }
}

/// Everything recorded, for the Prometheus exporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MetricsExport {
    pub(crate) lanes: [LaneExport; 4],
    pub(crate) rejected_completions: u64,
    pub(crate) dlq_depth: usize,
}

/// Records outcomes per lane; the scheduler calls it under its lock.
#[derive(Debug)]
pub(crate) struct MetricsRecorder {
    lanes: [LaneRecorder; 4],
    rejected_completions: u64,
}

impl MetricsRecorder {
    pub(crate) fn new() -> Self {
        Self {
            lanes: [
                LaneRecorder::new(),
                LaneRecorder::new(),
                LaneRecorder::new(),
                LaneRecorder::new(),
            ],
            rejected_completions: 0,
        }
    }

    /// A result: `latency` from submit, `run` from the slot.
    pub(crate) fn completed(
        &mut self,
        lane: SessionLane,
        success: bool,
        latency: Duration,
        run: Duration,
    ) {
        let l = &mut self.lanes[lane.index()];
        l.processed += 1;
        if !success {
            l.failed += 1;
        }
        record(&mut l.latency_us, latency);
        record(&mut l.run_us, run);
    }

    /// A task got its slot after waiting `wait` in the backlog.
    pub(crate) fn dispatched(&mut self, lane: SessionLane, wait: Duration) {
        record(&mut self.lanes[lane.index()].queue_wait_us, wait);
    }

    /// A result came from a redelivered attempt (over a broker).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn redelivered(&mut self, lane: SessionLane) {
        self.lanes[lane.index()].redelivered += 1;
    }

    pub(crate) fn failed(&mut self, lane: SessionLane) {
        let l = &mut self.lanes[lane.index()];
        l.processed += 1;
        l.failed += 1;
    }

    pub(crate) fn timed_out(&mut self, lane: SessionLane) {
        let l = &mut self.lanes[lane.index()];
        l.processed += 1;
        l.timed_out += 1;
    }

    pub(crate) fn cancelled(&mut self, lane: SessionLane) {
        self.lanes[lane.index()].cancelled += 1;
    }

    pub(crate) fn retried(&mut self, lane: SessionLane) {
        self.lanes[lane.index()].retried += 1;
    }

    pub(crate) fn dead_lettered(&mut self, lane: SessionLane) {
        self.lanes[lane.index()].dead_lettered += 1;
    }

    pub(crate) fn rejected_completion(&mut self) {
        self.rejected_completions += 1;
    }

    /// Counters and histograms as buckets (reads every histogram once: call at scrape time).
    pub(crate) fn export(&self, dlq_depth: usize) -> MetricsExport {
        MetricsExport {
            lanes: SessionLane::ALL.map(|lane| {
                let l = &self.lanes[lane.index()];
                let (_, p50, p95, p99) = percentiles(&l.latency_us);
                LaneExport {
                    processed: l.processed,
                    failed: l.failed,
                    timed_out: l.timed_out,
                    cancelled: l.cancelled,
                    retried: l.retried,
                    dead_lettered: l.dead_lettered,
                    redelivered: l.redelivered,
                    latency: HistogramExport::of(&l.latency_us),
                    queue_wait: HistogramExport::of(&l.queue_wait_us),
                    run: HistogramExport::of(&l.run_us),
                    p50,
                    p95,
                    p99,
                }
            }),
            rejected_completions: self.rejected_completions,
            dlq_depth,
        }
    }

    pub(crate) fn snapshot(&self, dlq_depth: usize) -> QueueMetrics {
        let mut all = Histogram::<u64>::new(3).expect("valid");
        let mut m = QueueMetrics {
            dlq_depth,
            total_rejected_completions: self.rejected_completions,
            ..Default::default()
        };
        for lane in SessionLane::ALL {
            let l = &self.lanes[lane.index()];
            all.add(&l.latency_us)
                .expect("auto-resizing histograms accept any value");
            m.total_processed += l.processed;
            m.total_failed += l.failed;
            m.total_timed_out += l.timed_out;
            m.total_cancelled += l.cancelled;
            m.total_retried += l.retried;
            m.total_dead_lettered += l.dead_lettered;
            let (avg, p50, p95, p99) = percentiles(&l.latency_us);
            m.per_lane.insert(
                lane,
                LaneMetrics {
                    total_processed: l.processed,
                    total_failed: l.failed,
                    total_timed_out: l.timed_out,
                    total_retried: l.retried,
                    success_rate: rate(l.processed, l.failed + l.timed_out),
                    avg_latency: avg,
                    p50_latency: p50,
                    p95_latency: p95,
                    p99_latency: p99,
                },
            );
        }
        m.success_rate = rate(m.total_processed, m.total_failed + m.total_timed_out);
        (m.avg_latency, m.p50_latency, m.p95_latency, m.p99_latency) = percentiles(&all);
        m
    }
}

fn rate(processed: u64, bad: u64) -> f64 {
    if processed == 0 {
        0.0
    } else {
        processed.saturating_sub(bad) as f64 / processed as f64
    }
}

fn percentiles(h: &Histogram<u64>) -> (Duration, Duration, Duration, Duration) {
    if h.is_empty() {
        return Default::default();
    }
    let us = |q: f64| Duration::from_micros(h.value_at_quantile(q));
    (
        Duration::from_nanos((h.mean() * 1_000.0) as u64),
        us(0.50),
        us(0.95),
        us(0.99),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_aggregates_lanes() {
        let mut r = MetricsRecorder::new();
        for ms in 1..=100 {
            r.completed(
                SessionLane::Query,
                true,
                Duration::from_millis(ms),
                Duration::from_millis(ms),
            );
        }
        r.completed(
            SessionLane::Execute,
            false,
            Duration::from_millis(5),
            Duration::from_millis(1),
        );
        r.timed_out(SessionLane::Execute);
        r.retried(SessionLane::Execute);
        let m = r.snapshot(1);
        assert_eq!(
            (
                m.total_processed,
                m.total_failed,
                m.total_timed_out,
                m.total_retried
            ),
            (102, 1, 1, 1)
        );
        assert!((m.success_rate - 100.0 / 102.0).abs() < 1e-9);
        let q = &m.per_lane[&SessionLane::Query];
        assert_eq!(q.success_rate, 1.0);
        assert!(
            q.p50_latency >= Duration::from_millis(49)
                && q.p50_latency <= Duration::from_millis(51)
        );
        assert!(
            q.p99_latency >= Duration::from_millis(98)
                && q.p99_latency <= Duration::from_millis(100)
        );
        assert_eq!(m.per_lane[&SessionLane::Execute].success_rate, 0.0);
        assert_eq!(m.dlq_depth, 1);
        assert_eq!(MetricsRecorder::new().snapshot(0).success_rate, 0.0);
    }

    #[test]
    fn export_buckets_histograms() {
        let mut r = MetricsRecorder::new();
        for ms in [1, 2, 3, 40, 700] {
            r.completed(
                SessionLane::Query,
                true,
                Duration::from_millis(ms),
                Duration::from_millis(ms / 2),
            );
        }
        r.dispatched(SessionLane::Query, Duration::from_micros(30));
        r.timed_out(SessionLane::Query);
        r.redelivered(SessionLane::Query);
        let e = r.export(0);
        let q = &e.lanes[SessionLane::Query.index()];
        assert_eq!(
            (q.processed, q.timed_out, q.completed(), q.redelivered),
            (6, 1, 5, 1)
        );
        assert_eq!(q.latency.count, 5);
        assert_eq!(q.latency.buckets.len(), BUCKETS_S.len() + 1);
        assert_eq!(q.latency.buckets.last().unwrap().0, f64::INFINITY);
        assert_eq!(q.latency.buckets.iter().map(|b| b.1).sum::<u64>(), 5);
        let upto = |h: &HistogramExport, bound: f64| {
            h.buckets
                .iter()
                .filter(|b| b.0 <= bound)
                .map(|b| b.1)
                .sum::<u64>()
        };
        assert_eq!(upto(&q.latency, 0.0025), 2);
        assert_eq!(upto(&q.latency, 0.005), 3);
        assert_eq!(upto(&q.latency, 0.05), 4);
        assert_eq!(upto(&q.latency, 1.0), 5);
        assert!((q.latency.sum - 0.746).abs() < 0.001, "{}", q.latency.sum);
        assert_eq!(upto(&q.queue_wait, 0.00005), 1);
        assert_eq!(q.run.count, 5);
        assert!(q.p99 >= Duration::from_millis(699));
        assert_eq!(e.lanes[SessionLane::Execute.index()].latency.count, 0);
    }
}

//! `a3s-code bench soak`: a long run over NATS with worker processes killed and restarted at
//! random, reporting per-minute latency and the resident memory of the session and the workers.
//! A script (`scripts/soak.sh`), not a CI test; its results are in docs/RELIABILITY.md.

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::SessionLane;
use hdrhistogram::Histogram;
use serde_json::json;

use super::{Procs, delete_streams, parking_lot_free, query_session, spawn_procs};

#[derive(clap::Args)]
pub(super) struct SoakArgs {
    /// NATS URL; without it a `nats-server -js` is started on a free port.
    #[arg(long)]
    nats: Option<String>,
    /// Tasks in all.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    /// Submission rate, tasks/s.
    #[arg(long, default_value_t = 4_000)]
    rate: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Shortest pause between two worker restarts, seconds.
    #[arg(long, default_value_t = 2.0)]
    restart_min: f64,
    /// Longest pause between two worker restarts, seconds.
    #[arg(long, default_value_t = 10.0)]
    restart_max: f64,
    /// Lease on a task (session and workers): how soon a killed worker's tasks go elsewhere.
    #[arg(long, default_value_t = 2_000)]
    lease_ms: u64,
    /// Length of one report window, seconds.
    #[arg(long, default_value_t = 60)]
    window_secs: u64,
}

/// A small xorshift generator: restarts need only be unpredictable, not cryptographic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Per-window latency and outcome counts.
struct Window {
    latency_us: Histogram<u64>,
    ok: u64,
    failed: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new(3).expect("valid"),
            ok: 0,
            failed: 0,
        }
    }
}

pub(super) async fn soak(a: SoakArgs) -> anyhow::Result<()> {
    let (url, _server) = match &a.nats {
        Some(u) => (u.clone(), None),
        None => {
            let s = crate::server::NatsServer::start()?;
            (s.url().to_owned(), Some(s))
        }
    };
    let prefix = format!("soak{:x}", std::process::id() ^ rand_seed() as u32);
    let lease = Duration::from_millis(a.lease_ms);
    let session = query_session(
        NatsConfig::new(&url).with_prefix(&prefix).with_lease(lease),
        a.workers * a.concurrency,
        1_000_000,
    )
    .await?;
    let worker_args: Vec<String> = [
        "worker",
        "--nats",
        &url,
        "--prefix",
        &prefix,
        "--session-id",
        session.id(),
        "--lanes",
        "query",
        "--concurrency",
        &a.concurrency.to_string(),
        "--lease-ms",
        &a.lease_ms.to_string(),
        "--noop",
    ]
    .map(str::to_owned)
    .into();
    let mut workers = spawn_procs(a.workers, &worker_args)?;
    // When each worker started: the oldest one at the end shows whether a worker's memory grows.
    let mut born: Vec<(u32, Instant, Option<f64>)> = workers
        .0
        .iter()
        .map(|c| (c.id(), Instant::now(), None))
        .collect();

    let start = Instant::now();
    let window = Duration::from_secs(a.window_secs);
    let windows = Arc::new(parking_lot_free::Mutex::new(vec![Window::new()]));
    let done = Arc::new(AtomicU64::new(0));
    let mut rng = Rng(rand_seed() | 1);
    let mut next_restart =
        start + Duration::from_secs_f64(rng.uniform(a.restart_min, a.restart_max));
    let mut restarts = 0u32;
    let mut next_sample = start + Duration::from_secs(10);
    let session_rss_start = rss_mib(std::process::id()).unwrap_or(0.0);
    let mut first_workers_rss: Option<f64> = None;
    let mut rows: Vec<String> = Vec::new();
    let mut report_at = start + window;

    println!(
        "soak: {} tasks at {}/s, {} workers x {} slots, a worker killed (SIGKILL) every {}-{} s, lease {} ms, {url}",
        a.tasks, a.rate, a.workers, a.concurrency, a.restart_min, a.restart_max, a.lease_ms
    );
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..a.tasks {
        ticker.tick().await;
        let (session, sink, done) = (session.clone(), windows.clone(), done.clone());
        joins.spawn(async move {
            let t0 = Instant::now();
            let slot = (t0 - start).as_secs() / window.as_secs().max(1);
            let outcome = match session
                .submit(SessionLane::Query, "noop", json!({"i": i}))
                .await
            {
                Ok(handle) => handle.await.map(|r| r.success).unwrap_or(false),
                Err(_) => false,
            };
            let us = t0.elapsed().as_micros() as u64;
            let mut w = sink.lock().expect("lock");
            while w.len() <= slot as usize {
                w.push(Window::new());
            }
            let w = &mut w[slot as usize];
            let _ = w.latency_us.record(us);
            if outcome {
                w.ok += 1
            } else {
                w.failed += 1
            }
            done.fetch_add(1, Ordering::Relaxed);
        });
        while joins.try_join_next().is_some() {}

        let now = Instant::now();
        if now >= next_restart {
            let k = (rng.next() % a.workers as u64) as usize;
            replace_worker(&mut workers, k, &worker_args)?;
            born[k] = (workers.0[k].id(), now, None);
            restarts += 1;
            next_restart = now + Duration::from_secs_f64(rng.uniform(a.restart_min, a.restart_max));
        }
        if now >= next_sample {
            next_sample = now + Duration::from_secs(10);
            let max = workers
                .0
                .iter()
                .filter_map(|c| rss_mib(c.id()))
                .fold(0.0, f64::max);
            first_workers_rss.get_or_insert(max);
            for b in &mut born {
                if b.2.is_none() {
                    b.2 = rss_mib(b.0);
                }
            }
        }
        if now >= report_at {
            report_at += window;
            rows.push(row(&windows, rows.len(), &workers, restarts));
            println!("{}", rows.last().expect("pushed"));
        }
    }
    while joins.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    rows.push(row(&windows, rows.len(), &workers, restarts));

    let metrics = session.queue_metrics().await;
    let session_rss_end = rss_mib(std::process::id()).unwrap_or(0.0);
    let workers_rss_end = workers
        .0
        .iter()
        .filter_map(|c| rss_mib(c.id()))
        .fold(0.0, f64::max);
    // A run shorter than the first sample compares the end with itself.
    let oldest = born.iter().min_by_key(|b| b.1).map(|b| {
        let last = rss_mib(b.0).unwrap_or(0.0);
        (b.1.elapsed(), b.2.unwrap_or(last), last)
    });
    let (ok, failed, first_p99, worst_p99) = {
        let w = windows.lock().expect("lock");
        let (ok, failed): (u64, u64) = w.iter().fold((0, 0), |(o, f), w| (o + w.ok, f + w.failed));
        let first_p99 = w[0].latency_us.value_at_quantile(0.99) as f64 / 1000.0;
        let worst_p99 = w
            .iter()
            .filter(|w| !w.latency_us.is_empty())
            .map(|w| w.latency_us.value_at_quantile(0.99) as f64 / 1000.0)
            .fold(0.0, f64::max);
        (ok, failed, first_p99, worst_p99)
    };

    println!(
        "\n| window | tasks | ok | failed | p50 ms | p99 ms | session RSS MiB | max worker RSS MiB | restarts so far |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!(
        "\n{} tasks in {:.0} s ({:.0}/s): {ok} succeeded, {failed} failed, {} lost; {restarts} worker restarts",
        a.tasks,
        elapsed.as_secs_f64(),
        a.tasks as f64 / elapsed.as_secs_f64(),
        a.tasks - ok - failed
    );
    if let Some(m) = metrics {
        println!(
            "session: {} processed, {} retried, {} dead-lettered, {} late or repeated results refused",
            m.total_processed, m.total_retried, m.total_dead_lettered, m.total_rejected_completions
        );
    }
    println!(
        "session RSS: {session_rss_start:.1} MiB at start, {session_rss_end:.1} MiB at end; \
         largest worker RSS: {:.1} MiB at the first sample, {workers_rss_end:.1} MiB at end",
        first_workers_rss.unwrap_or(workers_rss_end)
    );
    if let Some((age, first, last)) = oldest {
        println!(
            "longest-lived worker ({:.0} s): {first:.1} MiB at its first sample, {last:.1} MiB at end",
            age.as_secs_f64()
        );
    }
    println!(
        "p99: {first_p99:.2} ms in the first window, {worst_p99:.2} ms in the worst ({:.2}x; target <= 2x)",
        worst_p99 / first_p99
    );
    session.close().await;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    delete_streams(&js, &prefix).await;
    anyhow::ensure!(ok + failed == a.tasks, "tasks lost");
    Ok(())
}

/// One report line for window `i`.
fn row(
    windows: &parking_lot_free::Mutex<Vec<Window>>,
    i: usize,
    workers: &Procs,
    restarts: u32,
) -> String {
    let w = windows.lock().expect("lock");
    let Some(w) = w.get(i) else {
        return format!("| {i} | 0 | | | | | | | {restarts} |");
    };
    let max_worker = workers
        .0
        .iter()
        .filter_map(|c| rss_mib(c.id()))
        .fold(0.0, f64::max);
    format!(
        "| {i} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {max_worker:.1} | {restarts} |",
        w.latency_us.len(),
        w.ok,
        w.failed,
        w.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        w.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        rss_mib(std::process::id()).unwrap_or(0.0),
    )
}

/// Kills worker `k` (SIGKILL, mid-task) and starts a new one in its place.
fn replace_worker(workers: &mut Procs, k: usize, args: &[String]) -> anyhow::Result<()> {
    let old: &mut Child = &mut workers.0[k];
    let _ = old.kill();
    let _ = old.wait();
    let mut fresh = spawn_procs(1, args)?;
    workers.0[k] = fresh.0.pop().expect("spawned one");
    Ok(())
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9)
}

//! `a3s-code bench pool`: many sessions in one process, one fleet of pool workers
//! (`a3s-code worker --session-id '*'`), one server: throughput and fairness as the number of
//! sessions grows, the cost of idle sessions, and tenants' shares of a saturated fleet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::SessionLane;
use a3s_code_core::{Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig};
use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

use super::{Procs, noop_workers, query_config};

#[derive(clap::Args)]
pub(crate) struct PoolBench {
    /// Tasks of each session-count run, split evenly over its sessions.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Session counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    sessions: Vec<usize>,
    /// Pool worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Each session's Query lane concurrency.
    #[arg(long, default_value_t = 64)]
    lane_concurrency: usize,
    /// Idle sessions to open for the per-session cost (0: skip).
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// Skip the tenant fairness runs.
    #[arg(long)]
    no_fairness: bool,
    /// Length of each window of the weighted-shares run.
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
    /// Windows of the weighted-shares run.
    #[arg(long, default_value_t = 3)]
    windows: usize,
    /// Fail (exit status 1) when the largest session count's throughput is under this fraction
    /// of the first's: a gate for CI (`--sessions 1,1000 --min-ratio 0.5`).
    #[arg(long)]
    min_ratio: Option<f64>,
}

/// The server's memory (`/varz` `mem`, bytes).
async fn server_mem(monitor: u16) -> anyhow::Result<u64> {
    let http = crate::stats::http_client()?;
    let text = http
        .get(format!("http://127.0.0.1:{monitor}/varz"))
        .send()
        .await?
        .text()
        .await?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["mem"].as_u64().context("no mem in /varz")
}

/// This process's resident memory (bytes).
fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn queue_config(lane_concurrency: usize, max_pending: usize) -> SessionQueueConfig {
    query_config(lane_concurrency, max_pending, 600_000)
}

/// Opens `n` sessions (of `tenant` with `weight`, if given) and waits until their broker is
/// ready; returns them and how long that took.
async fn open_sessions(
    nats: &NatsConfig,
    n: usize,
    cfg: &SessionQueueConfig,
    tenant: Option<(&str, f64)>,
) -> anyhow::Result<(Vec<AgentSession>, Duration)> {
    let agent = Agent::from_config(AgentConfig::default());
    let start = Instant::now();
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let mut opts = SessionOptions::new()
            .with_queue_config(cfg.clone())
            .with_nats(nats.clone());
        if let Some((t, w)) = tenant {
            opts = opts.with_tenant(t, w)?;
        }
        sessions.push(agent.session(".", Some(opts))?);
    }
    for s in &sessions {
        s.broker_ready(Duration::from_secs(60)).await?;
    }
    Ok((sessions, start.elapsed()))
}

/// Waits until `n` workers announced themselves (presence), so the clock starts with the fleet
/// connected.
async fn fleet_present(client: &async_nats::Client, prefix: &str, n: usize) -> anyhow::Result<()> {
    let mut sub = client.subscribe(format!("{prefix}.presence.>")).await?;
    let mut seen = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = sub.next().await {
            seen.insert(m.subject.to_string());
            if seen.len() >= n {
                return;
            }
        }
    })
    .await
    .context("the workers did not announce themselves")?;
    Ok(())
}

/// What one session-count run measured.
struct Row {
    sessions: usize,
    tasks: usize,
    elapsed: Duration,
    slowest: Duration,
    median: Duration,
    first_p99: Duration,
    task_p99: Duration,
    server_mem: u64,
}

/// Each session submits its share of tasks at once and awaits them; per session: time to its
/// first result (from its first submit) and to its last.
async fn run_sessions(
    sessions: &[AgentSession],
    per: usize,
) -> (Duration, Vec<(Duration, Duration)>, Histogram<u64>) {
    let start = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new(3).expect("valid histogram"),
    ));
    let mut joins = Vec::with_capacity(sessions.len());
    for s in sessions {
        let (s, latencies) = (s.clone(), latencies.clone());
        joins.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let mut pending = futures_util::stream::FuturesUnordered::new();
            for i in 0..per {
                let h = s
                    .submit(SessionLane::Query, "noop", json!({"i": i}))
                    .await
                    .expect("submit");
                let submitted = Instant::now();
                pending.push(async move { (h.await, submitted.elapsed()) });
            }
            let mut first = None;
            while let Some((out, took)) = pending.next().await {
                assert!(out.expect("result").success);
                first.get_or_insert_with(|| t0.elapsed());
                let _ = latencies
                    .lock()
                    .expect("lock")
                    .record(took.as_micros() as u64);
            }
            (first.unwrap_or_default(), start.elapsed())
        }));
    }
    let mut per_session = Vec::with_capacity(joins.len());
    for j in joins {
        per_session.push(j.await.expect("session task"));
    }
    let latencies = latencies.lock().expect("lock").clone();
    (start.elapsed(), per_session, latencies)
}

pub(crate) async fn pool_bench(b: PoolBench) -> anyhow::Result<()> {
    let server = crate::server::NatsServer::start()?;
    let prefix = format!("pool{}", std::process::id());
    let nats = NatsConfig::new(server.url()).with_prefix(&prefix);
    let client = async_nats::connect(server.url()).await?;
    let workers: Procs = noop_workers(b.workers, server.url(), &prefix, "*", b.concurrency)?;
    fleet_present(&client, &prefix, b.workers).await?;
    println!(
        "# a3s-code bench pool: {} pool workers x {} slots, sessions' Query lane {} slots, {} tasks a run (nats-server {})",
        b.workers,
        b.concurrency,
        b.lane_concurrency,
        b.tasks,
        server_version()
    );
    // Warm-up: one session, a few tasks (connections, streams, consumers).
    {
        let (s, _) =
            open_sessions(&nats, 1, &queue_config(b.lane_concurrency, 1 << 20), None).await?;
        let _ = run_sessions(&s, 500).await;
        for s in s {
            s.close().await;
        }
    }
    let mut rows = Vec::new();
    for &n in &b.sessions {
        let per = (b.tasks / n).max(1);
        let cfg = queue_config(b.lane_concurrency, 1 << 20);
        let (sessions, opened) = open_sessions(&nats, n, &cfg, None).await?;
        let (elapsed, per_session, latencies) = run_sessions(&sessions, per).await;
        let mem = server_mem(server.monitor()).await.unwrap_or(0);
        let mut done: Vec<Duration> = per_session.iter().map(|p| p.1).collect();
        done.sort();
        let mut first = Histogram::<u64>::new(3)?;
        for (f, _) in &per_session {
            first.record(f.as_micros() as u64)?;
        }
        let row = Row {
            sessions: n,
            tasks: per * n,
            elapsed,
            slowest: *done.last().unwrap_or(&Duration::ZERO),
            median: done[done.len() / 2],
            first_p99: Duration::from_micros(first.value_at_quantile(0.99)),
            task_p99: Duration::from_micros(latencies.value_at_quantile(0.99)),
            server_mem: mem,
        };
        eprintln!(
            "{n} sessions: opened in {opened:.2?}, {:.0} tasks/s",
            row.tasks as f64 / elapsed.as_secs_f64()
        );
        rows.push(row);
        for s in sessions {
            s.close().await;
        }
    }
    let base = rows
        .first()
        .map(|r| r.tasks as f64 / r.elapsed.as_secs_f64())
        .unwrap_or(1.0);
    println!(
        "\n| sessions x tasks | tasks/s | vs 1 session | slowest session done | median | slowest / median | first result p99 | task p99 | server memory |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let rate = r.tasks as f64 / r.elapsed.as_secs_f64();
        println!(
            "| {} x {} | {:.0} | {:.0}% | {:.2} s | {:.2} s | {:.2}x | {:.0} ms | {:.0} ms | {} MiB |",
            r.sessions,
            r.tasks / r.sessions,
            rate,
            100.0 * rate / base,
            r.slowest.as_secs_f64(),
            r.median.as_secs_f64(),
            r.slowest.as_secs_f64() / r.median.as_secs_f64().max(1e-9),
            r.first_p99.as_secs_f64() * 1000.0,
            r.task_p99.as_secs_f64() * 1000.0,
            r.server_mem >> 20
        );
    }

    if let (Some(min), Some(last)) = (b.min_ratio, rows.last()) {
        let ratio = last.tasks as f64 / last.elapsed.as_secs_f64() / base;
        if ratio < min {
            anyhow::bail!(
                "{} sessions ran at {:.0}% of one session's throughput, under the {:.0}% required",
                last.sessions,
                ratio * 100.0,
                min * 100.0
            );
        }
        println!(
            "\n{} sessions at {:.0}% of one session's throughput (required: {:.0}%)",
            last.sessions,
            ratio * 100.0,
            min * 100.0
        );
    }

    if b.idle_sessions > 0 {
        let (mem0, rss0) = (server_mem(server.monitor()).await.unwrap_or(0), own_rss());
        let cfg = queue_config(b.lane_concurrency, 1000);
        let (idle, opened) = open_sessions(&nats, b.idle_sessions, &cfg, None).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (mem1, rss1) = (server_mem(server.monitor()).await.unwrap_or(0), own_rss());
        let n = b.idle_sessions as f64;
        println!(
            "\n{} idle sessions: opened (broker ready) at {:.0}/s; server memory {:+.1} KiB per session ({} -> {} MiB); this process {:+.1} KiB per session",
            b.idle_sessions,
            n / opened.as_secs_f64(),
            (mem1 as f64 - mem0 as f64) / 1024.0 / n,
            mem0 >> 20,
            mem1 >> 20,
            (rss1 as f64 - rss0 as f64) / 1024.0 / n
        );
        for s in idle {
            s.close().await;
        }
    }

    if !b.no_fairness {
        fairness(&b, &nats).await?;
    }
    drop(workers);
    Ok(())
}

fn server_version() -> String {
    crate::server::bin()
        .ok()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Tenant B's 100 tasks alone, then while tenant A floods 100 000 (weights 1:1); then A and B
/// both saturating the fleet with weights 3:1, A's share of the completions per window.
async fn fairness(b: &PoolBench, nats: &NatsConfig) -> anyhow::Result<()> {
    let cfg = queue_config(b.lane_concurrency, 1 << 21);
    // B alone.
    let (bs, _) = open_sessions(nats, 1, &cfg, Some(("tenant-b", 1.0))).await?;
    let (alone, ..) = run_sessions(&bs, 100).await;
    // A floods from 8 sessions (more published work than the fleet's slots), then B again.
    let (a_sessions, _) = open_sessions(nats, 8, &cfg, Some(("tenant-a", 1.0))).await?;
    let flood: Vec<_> = a_sessions
        .iter()
        .cloned()
        .map(|s| {
            tokio::spawn(async move {
                let mut hs = Vec::with_capacity(12_500);
                for i in 0..12_500 {
                    hs.push(
                        s.submit(SessionLane::Query, "noop", json!({"i": i}))
                            .await
                            .expect("submit"),
                    );
                }
                for h in hs {
                    let _ = h.await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (contended, ..) = run_sessions(&bs, 100).await;
    for f in flood {
        f.await?;
    }
    println!(
        "\ntenant B's 100 tasks: {:.0} ms alone, {:.0} ms while tenant A floods 100 000 (weights 1:1; target <= 2x alone + the 1-session full-load p99)",
        alone.as_secs_f64() * 1000.0,
        contended.as_secs_f64() * 1000.0
    );
    for s in bs.into_iter().chain(a_sessions) {
        s.close().await;
    }

    // Weights 3:1, both saturating.
    let (a, _) = open_sessions(nats, 8, &cfg, Some(("tenant-a3", 3.0))).await?;
    let (bb, _) = open_sessions(nats, 8, &cfg, Some(("tenant-b1", 1.0))).await?;
    let done_a = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done_b = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loads = Vec::new();
    for (sessions, done) in [(&a, &done_a), (&bb, &done_b)] {
        for s in sessions.iter() {
            let (s, done, stop) = (s.clone(), done.clone(), stop.clone());
            // Keep twice the lane's slots submitted: the session always has work to publish.
            loads.push(tokio::spawn(async move {
                let mut inflight = futures_util::stream::FuturesUnordered::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    while inflight.len() < 128 {
                        inflight.push(
                            s.submit(SessionLane::Query, "noop", json!({"i": i}))
                                .await
                                .expect("submit"),
                        );
                        i += 1;
                    }
                    if let Some(out) = inflight.next().await
                        && out.is_ok()
                    {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // both saturating
    let mut shares = Vec::new();
    for _ in 0..b.windows {
        let (a0, b0) = (
            done_a.load(std::sync::atomic::Ordering::Relaxed),
            done_b.load(std::sync::atomic::Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_secs(b.window_secs)).await;
        let (a1, b1) = (
            done_a.load(std::sync::atomic::Ordering::Relaxed),
            done_b.load(std::sync::atomic::Ordering::Relaxed),
        );
        let (da, db) = ((a1 - a0) as f64, (b1 - b0) as f64);
        shares.push((100.0 * da / (da + db).max(1.0), da + db));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in a.into_iter().chain(bb) {
        s.close().await;
    }
    for l in loads {
        l.abort();
    }
    println!(
        "weights 3:1, both saturating: tenant A's share per {} s window: {} (target 73-77%)",
        b.window_secs,
        shares
            .iter()
            .map(|(s, n)| format!("{s:.1}% of {n:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

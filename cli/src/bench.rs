//! `a3s-code bench nats`: end-to-end throughput and latency over NATS JetStream with real worker
//! processes, beside a bare async-nats work-queue pattern measured in the same run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot_free::Mutex;
use serde_json::json;

mod pool;
mod soak;

mod parking_lot_free {
    pub(crate) type Mutex<T> = std::sync::Mutex<T>;
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Session + `a3s-code worker` processes over NATS, beside a bare JetStream work queue.
    Nats(NatsBench),
    /// A long run over NATS with worker processes killed and restarted at random intervals.
    Soak(soak::SoakArgs),
    /// Many sessions in one process, one fleet of pool workers: throughput and fairness as
    /// sessions grow, idle sessions' cost, tenants' shares.
    Pool(pool::PoolBench),
    /// A bare JetStream worker (pull, publish result, ack): the baseline's worker process.
    #[command(hide = true)]
    BareWorker(BareWorker),
}

#[derive(clap::Args)]
struct NatsBench {
    /// NATS URL; without it a `nats-server -js` is started on a free port.
    #[arg(long)]
    nats: Option<String>,
    /// Tasks of the full-load run.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Tasks each worker runs at once (both patterns). A worker of ours never asks for more
    /// tasks than its free slots, while a bare worker keeps 200 prefetched whatever its slots:
    /// docs/PERFORMANCE.md gives the figures at 16 slots too.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rate of the steady run, tasks/s.
    #[arg(long, default_value_t = 500)]
    steady_rate: u64,
    /// Length of the steady and half-load runs.
    #[arg(long, default_value_t = 10)]
    steady_secs: u64,
    /// The session's Query lane concurrency: tasks published at once (default: twice the
    /// workers' slots).
    #[arg(long)]
    lane_concurrency: Option<usize>,
    /// Rounds of each pattern (the two take turns): full load reports the median round, the
    /// paced runs pool their latencies over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run only the full-load part of one pattern (`a3s` or `bare`), for profiling.
    #[arg(long)]
    only: Option<String>,
}

#[derive(clap::Args)]
struct BareWorker {
    #[arg(long)]
    nats: String,
    #[arg(long)]
    prefix: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::Nats(b) => nats_bench(b).await,
        Which::Soak(a) => soak::soak(a).await,
        Which::Pool(b) => pool::pool_bench(b).await,
        Which::BareWorker(w) => bare_worker(w).await,
    }
}

/// Latency percentiles of one run.
struct Run {
    tasks: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64()
    }
    fn p(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
    /// Pools another run's samples into this one (its rate becomes the pooled rate).
    fn pool(mut self, other: Run) -> Run {
        self.tasks += other.tasks;
        self.elapsed += other.elapsed;
        self.latency_us
            .add(&other.latency_us)
            .expect("same histogram bounds");
        self
    }
}

/// Something that runs one task end to end and reports when it is done.
trait Pattern: Send + Sync + 'static {
    fn one(self: Arc<Self>, i: u64) -> futures_util::future::BoxFuture<'static, ()>;
}

/// Full load: everything at once. Otherwise: `rate` tasks/s for `secs`.
async fn drive<P: Pattern>(p: Arc<P>, tasks: usize, pace: Option<(f64, u64)>) -> Run {
    let (count, interval) = match pace {
        None => (tasks, None),
        Some((rate, secs)) => (
            (rate * secs as f64) as usize,
            Some(Duration::from_secs_f64(1.0 / rate)),
        ),
    };
    let start = Instant::now();
    let mut joins = Vec::with_capacity(count);
    let mut ticker = interval.map(|d| {
        let mut t = tokio::time::interval(d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for i in 0..count {
        if let Some(t) = &mut ticker {
            t.tick().await;
        }
        let p = p.clone();
        joins.push(tokio::spawn(async move {
            let t0 = Instant::now();
            p.one(i as u64).await;
            t0.elapsed()
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3).expect("valid");
    for j in joins {
        let d = j.await.expect("task");
        let _ = latency_us.record(d.as_micros() as u64);
    }
    Run {
        tasks: count,
        elapsed: start.elapsed(),
        latency_us,
    }
}

struct Session(AgentSession);

impl Pattern for Session {
    fn one(self: Arc<Self>, i: u64) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let out = self
                .0
                .submit(SessionLane::Query, "noop", json!({"i": i}))
                .await
                .expect("submit")
                .await;
            assert!(out.expect("result").success);
        })
    }
}

struct Bare {
    js: jetstream::Context,
    subject: String,
    waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Pattern for Bare {
    fn one(self: Arc<Self>, _i: u64) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.waiting.lock().expect("lock").insert(id, tx);
            let payload = serde_json::to_vec(&json!({"id": id})).expect("json");
            let ack = self
                .js
                .publish(self.subject.clone(), payload.into())
                .await
                .expect("publish");
            ack.await.expect("stored");
            rx.await.expect("result");
        })
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_procs(n: usize, args: &[String]) -> anyhow::Result<Procs> {
    let exe: PathBuf = std::env::current_exe()?;
    let mut procs = Procs(Vec::new());
    for _ in 0..n {
        procs.0.push(
            Command::new(&exe)
                .args(args)
                .env("A3S_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?,
        );
    }
    Ok(procs)
}

/// One full-load round of a pattern, kept in `runs` (round 0 is a short warm-up, not kept).
async fn full_round<P: Pattern>(
    p: &Arc<P>,
    b: &NatsBench,
    round: usize,
    label: &str,
    runs: &mut Vec<Run>,
) {
    let tasks = if round == 0 { 500 } else { b.tasks };
    let r = drive(p.clone(), tasks, None).await;
    if round > 0 {
        eprintln!("{label}: full load {:.0} tasks/s", r.rate());
        runs.push(r);
    }
}

/// The full-load run of median throughput among `runs`.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// Rounds of paced runs, each kind's samples pooled.
fn pool(rounds: Vec<[Run; 2]>) -> [Run; 2] {
    let mut rounds = rounds.into_iter();
    let first = rounds.next().expect("at least one round");
    rounds.fold(first, |[h, s], [h2, s2]| [h.pool(h2), s.pool(s2)])
}

/// Paced runs of one pattern: half its full-load rate, then the steady rate.
async fn paced<P: Pattern>(p: Arc<P>, b: &NatsBench, full: &Run) -> [Run; 2] {
    let half = drive(p.clone(), 0, Some((full.rate() / 2.0, b.steady_secs))).await;
    let steady = drive(p, 0, Some((b.steady_rate as f64, b.steady_secs))).await;
    [half, steady]
}

type BareSetup = (Arc<Bare>, tokio::task::JoinHandle<()>, Procs);

/// The bare pattern's streams, its results listener and its worker processes.
async fn bare_setup(
    js: &jetstream::Context,
    url: &str,
    prefix: &str,
    b: &NatsBench,
) -> anyhow::Result<BareSetup> {
    for (name, subject) in [("TASKS", "bt"), ("RES", "br")] {
        js.get_or_create_stream(stream::Config {
            name: format!("{}_{name}", prefix.to_uppercase()),
            subjects: vec![format!("{prefix}.{subject}")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    }
    let results = js
        .get_stream(format!("{}_RES", prefix.to_uppercase()))
        .await?;
    let rc = results
        .get_or_create_consumer(
            "r",
            consumer::pull::Config {
                durable_name: Some("r".into()),
                ..Default::default()
            },
        )
        .await?;
    let bare = Arc::new(Bare {
        js: js.clone(),
        subject: format!("{prefix}.bt"),
        waiting: Arc::default(),
        next: Default::default(),
    });
    let waiting = bare.waiting.clone();
    let listener = tokio::spawn(async move {
        let mut msgs = rc.messages().await.expect("results");
        while let Some(Ok(m)) = msgs.next().await {
            let id = serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .and_then(|v| v["id"].as_u64());
            let _ = m.ack().await;
            if let Some(tx) = id.and_then(|id| waiting.lock().expect("lock").remove(&id)) {
                let _ = tx.send(());
            }
        }
    });
    let workers = spawn_procs(
        b.workers,
        &[
            "bench".into(),
            "bare-worker".into(),
            "--nats".into(),
            url.to_owned(),
            "--prefix".into(),
            prefix.to_owned(),
            "--concurrency".into(),
            b.concurrency.to_string(),
        ],
    )?;
    Ok((bare, listener, workers))
}

/// The a3s session (this process) and its `a3s-code worker --noop` processes.
async fn ours_setup(
    url: &str,
    prefix: &str,
    b: &NatsBench,
) -> anyhow::Result<(Arc<Session>, Procs)> {
    let session = query_session(
        NatsConfig::new(url).with_prefix(prefix),
        b.lane_concurrency.unwrap_or(b.workers * b.concurrency * 2),
        b.tasks * (b.rounds + 1) + 100_000,
    )
    .await?;
    let workers = noop_workers(b.workers, url, prefix, session.id(), b.concurrency)?;
    Ok((Arc::new(Session(session)), workers))
}

async fn nats_bench(b: NatsBench) -> anyhow::Result<()> {
    let (url, _server) = match &b.nats {
        Some(u) => (u.clone(), None),
        None => {
            let s = crate::server::NatsServer::start()?;
            (s.url().to_owned(), Some(s))
        }
    };
    let client = async_nats::connect(&url).await?;
    let version = client.server_info().version;
    let stamp = format!(
        "{:x}",
        Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let js = jetstream::new(client.clone());
    let (bare_prefix, prefix) = (format!("bb{stamp}"), format!("ab{stamp}"));
    let bare = match b.only.as_deref() {
        Some("a3s") => None,
        _ => Some(bare_setup(&js, &url, &bare_prefix, &b).await?),
    };
    let ours = match b.only.as_deref() {
        Some("bare") => None,
        _ => Some(ours_setup(&url, &prefix, &b).await?),
    };

    // Full load: the two patterns take turns, so a drift of the machine's speed hits both alike;
    // each keeps its median round. Round 0 warms up connections, consumers and caches.
    let (mut bare_full, mut ours_full) = (Vec::new(), Vec::new());
    for round in 0..=b.rounds {
        if let Some((p, ..)) = &bare {
            full_round(p, &b, round, "bare", &mut bare_full).await;
        }
        if let Some((p, _)) = &ours {
            full_round(p, &b, round, "a3s", &mut ours_full).await;
        }
    }
    let paced_runs = match (&bare, &ours) {
        (Some((bp, ..)), Some((op, _))) if b.only.is_none() => {
            // Paced runs take turns too, and each pattern's samples are pooled over the rounds:
            // a single 10-second run at 500/s has only 50 samples above its p99.
            let (bare_full, ours_full) = (median(bare_full), median(ours_full));
            let (mut bare_paced, mut ours_paced) = (Vec::new(), Vec::new());
            for _ in 0..b.rounds.max(1) {
                bare_paced.push(paced(bp.clone(), &b, &bare_full).await);
                ours_paced.push(paced(op.clone(), &b, &ours_full).await);
            }
            let [bare_half, bare_steady] = pool(bare_paced);
            let [ours_half, ours_steady] = pool(ours_paced);
            Some((
                [bare_full, bare_half, bare_steady],
                [ours_full, ours_half, ours_steady],
            ))
        }
        // Profiling one pattern (--only): no paced runs.
        _ => None,
    };
    if let Some((listener, workers)) = bare.map(|(_, l, w)| (l, w)) {
        drop(workers);
        listener.abort();
        for name in ["TASKS", "RES"] {
            let _ = js
                .delete_stream(format!("{}_{name}", bare_prefix.to_uppercase()))
                .await;
        }
    }
    if let Some((session, workers)) = ours {
        drop(workers);
        session.0.close().await;
        delete_streams(&js, &prefix).await;
    }
    let Some((bare_runs, ours)) = paced_runs else {
        return Ok(());
    };
    println!(
        "nats-server {version}, loopback, {} worker processes x {} slots, {} tasks at full load \
         (the median of {} rounds, the two patterns taking turns); paced runs {} s each, {} \
         rounds taking turns, latencies pooled\n",
        b.workers,
        b.concurrency,
        b.tasks,
        b.rounds,
        b.steady_secs,
        b.rounds.max(1)
    );
    println!(
        "| pattern | full load tasks/s | full p50 ms | full p99 ms | half load p50 ms | half p99 ms | {}/s p50 ms | {}/s p99 ms |",
        b.steady_rate, b.steady_rate
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, r) in [
        ("bare async-nats work queue", &bare_runs),
        ("a3s session + a3s-code worker", &ours),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r[0].rate(),
            r[0].p(0.5),
            r[0].p(0.99),
            r[1].p(0.5),
            r[1].p(0.99),
            r[2].p(0.5),
            r[2].p(0.99)
        );
    }
    println!(
        "\nthroughput: {:.0}% of the bare pattern (target >= 70%); p99 at {}/s: {:.2}x the bare pattern's (target <= 1.5x)",
        ours[0].rate() / bare_runs[0].rate() * 100.0,
        b.steady_rate,
        ours[2].p(0.99) / bare_runs[2].p(0.99)
    );
    Ok(())
}

/// A session whose Query lane is External over NATS with `concurrency` slots: the benchmarks'
/// producer, ready once its streams and consumers exist.
async fn query_session(
    nats: NatsConfig,
    concurrency: usize,
    max_pending: usize,
) -> anyhow::Result<AgentSession> {
    let cfg = query_config(concurrency, max_pending, 120_000);
    let session = Agent::from_config(AgentConfig::default()).session(
        ".",
        Some(SessionOptions::new().with_queue_config(cfg).with_nats(nats)),
    )?;
    session.broker_ready(Duration::from_secs(10)).await?;
    Ok(session)
}

/// A queue config whose Query lane is External with `concurrency` slots: the benchmarks' and
/// the conformance kit's.
pub(crate) fn query_config(
    concurrency: usize,
    max_pending: usize,
    timeout_ms: u64,
) -> SessionQueueConfig {
    SessionQueueConfig {
        query_max_concurrency: concurrency,
        max_pending,
        lane_handlers: [(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms,
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// `n` `a3s-code worker --noop` processes serving the Query lane of `session` (`*`: the pool).
fn noop_workers(
    n: usize,
    url: &str,
    prefix: &str,
    session: &str,
    concurrency: usize,
) -> anyhow::Result<Procs> {
    let args: Vec<String> = [
        "worker",
        "--nats",
        url,
        "--prefix",
        prefix,
        "--session-id",
        session,
        "--lanes",
        "query",
        "--concurrency",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([concurrency.to_string(), "--noop".to_owned()])
    .collect();
    spawn_procs(n, &args)
}

/// Deletes a session's streams (a benchmark's broker is often shared).
async fn delete_streams(js: &jetstream::Context, prefix: &str) {
    let p = prefix.to_uppercase();
    for name in [
        format!("OBJ_{p}_OBJ_default"),
        format!("{p}_TASKS_default"),
        format!("{p}_RESULTS"),
        format!("{p}_DLQ"),
    ] {
        let _ = js.delete_stream(name).await;
    }
}

async fn bare_worker(w: BareWorker) -> anyhow::Result<()> {
    let client = async_nats::connect(&w.nats).await?;
    let js = jetstream::new(client);
    let tasks = js
        .get_stream(format!("{}_TASKS", w.prefix.to_uppercase()))
        .await?;
    let c = tasks
        .get_or_create_consumer(
            "w",
            consumer::pull::Config {
                durable_name: Some("w".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let subject = format!("{}.br", w.prefix);
    let msgs = c.messages().await?;
    msgs.for_each_concurrent(w.concurrency, |m| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            let Ok(m) = m else { return };
            if let Ok(ack) = js.publish(subject, m.payload.clone()).await
                && ack.await.is_ok()
            {
                let _ = m.ack().await;
            }
        }
    })
    .await;
    Ok(())
}

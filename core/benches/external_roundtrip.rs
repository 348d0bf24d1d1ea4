//! In-process External round trip: submit → long-poll claim → complete → the submitter resolves,
//! beside a bare tokio mpsc + oneshot round trip measured in the same run.
//!
//! `cargo bench -p a3s-code-core --bench external_roundtrip -- [TASKS]` (default 1 000 000).

use std::time::{Duration, Instant};

use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, ExternalTaskResult, SessionOptions, SessionQueueConfig};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

struct Run {
    name: String,
    tasks: u64,
    elapsed: Duration,
    latency_ns: Histogram<u64>,
}

impl Run {
    fn row(&self) -> String {
        let q = |p: f64| self.latency_ns.value_at_quantile(p) as f64 / 1_000.0;
        format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            self.name,
            self.tasks,
            self.tasks as f64 / self.elapsed.as_secs_f64(),
            q(0.50),
            q(0.99),
            q(0.999),
        )
    }
}

/// `in_flight` submitters, each doing `tasks / in_flight` sequential round trips.
async fn drive<F, Fut>(name: &str, tasks: u64, in_flight: u64, one: F) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per = tasks / in_flight;
    let start = Instant::now();
    let mut joins = Vec::new();
    for s in 0..in_flight {
        let one = one.clone();
        joins.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            for i in 0..per {
                let t = Instant::now();
                one(s * per + i).await;
                h.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            h
        }));
    }
    let mut latency_ns = Histogram::<u64>::new(3).unwrap();
    for j in joins {
        latency_ns.add(j.await.unwrap()).unwrap();
    }
    Run {
        name: name.to_owned(),
        tasks: per * in_flight,
        elapsed: start.elapsed(),
        latency_ns,
    }
}

async fn bare(tasks: u64, in_flight: u64) -> Run {
    let (tx, mut rx) = mpsc::channel::<(Value, oneshot::Sender<Value>)>(1024);
    let worker = tokio::spawn(async move {
        while let Some((payload, reply)) = rx.recv().await {
            let _ = reply.send(payload);
        }
    });
    let run = drive(
        &format!("bare tokio mpsc + oneshot, {in_flight} in flight"),
        tasks,
        in_flight,
        move |i| {
            let tx = tx.clone();
            async move {
                let (rtx, rrx) = oneshot::channel();
                tx.send((json!({"i": i}), rtx)).await.unwrap();
                rrx.await.unwrap();
            }
        },
    )
    .await;
    worker.abort();
    run
}

async fn session_roundtrip(tasks: u64, in_flight: u64) -> Run {
    let config = SessionQueueConfig {
        query_max_concurrency: 64,
        lane_handlers: [(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 60_000,
            },
        )]
        .into(),
        ..Default::default()
    };
    let session = Agent::from_config(AgentConfig::default())
        .session(".", Some(SessionOptions::new().with_queue_config(config)))
        .unwrap();
    let w = session.clone();
    let worker = tokio::spawn(async move {
        while let Ok(batch) = w.claim_external_tasks(64, Duration::from_secs(1)).await {
            let results = batch
                .into_iter()
                .map(|t| (t.task_id, ExternalTaskResult::ok(t.payload)));
            for r in w.complete_external_tasks(results).await {
                r.unwrap();
            }
        }
    });
    let s = session.clone();
    let run = drive(
        &format!("a3s session External round trip, {in_flight} in flight"),
        tasks,
        in_flight,
        move |i| {
            let s = s.clone();
            async move {
                let out = s
                    .submit(SessionLane::Query, "noop", json!({"i": i}))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                debug_assert!(out.success);
            }
        },
    )
    .await;
    session.close().await;
    worker.await.unwrap();
    run
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tasks: u64 = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // Optional filters: `bare`, `session`, `1`, `4` (for profiling one configuration).
    let only = |what: &str| {
        !args.iter().any(|a| a == "bare" || a == "session") || args.iter().any(|a| a == what)
    };
    let flights: Vec<u64> = match args
        .iter()
        .find_map(|a| a.strip_prefix("inflight="))
        .and_then(|k| k.parse().ok())
    {
        Some(k) => vec![k],
        None => vec![1, 4],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("| round trip | tasks | tasks/s | p50 µs | p99 µs | p99.9 µs |");
        println!("|---|---|---|---|---|---|");
        let mut ratios = Vec::new();
        for in_flight in flights {
            let b = if only("bare") {
                Some(bare(tasks, in_flight).await)
            } else {
                None
            };
            let s = if only("session") {
                Some(session_roundtrip(tasks, in_flight).await)
            } else {
                None
            };
            for run in b.iter().chain(s.iter()) {
                println!("{}", run.row());
            }
            if let (Some(b), Some(s)) = (b, s) {
                let tput = (s.tasks as f64 / s.elapsed.as_secs_f64())
                    / (b.tasks as f64 / b.elapsed.as_secs_f64());
                ratios.push((in_flight, tput));
            }
        }
        println!();
        for (k, r) in ratios {
            println!(
                "{k} in flight: session throughput = {:.0}% of bare channels (target ≥ 25%)",
                r * 100.0
            );
        }
    });
}

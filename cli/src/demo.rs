//! `a3s-code demo`: a real job through External Query workers in this process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use a3s_code_core::observe::Exporter;
use a3s_code_core::queue::{
    LaneHandlerConfig, QueueMetrics, QueueStats, SessionLane, TaskHandlerMode,
};
use a3s_code_core::tools::Workspace;
use a3s_code_core::worker::{Worker, WorkerConfig, builtin_handler};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, ExternalTaskResult, SessionOptions, SessionQueueConfig,
};
use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// The directory to search (the session's workspace).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// In-process workers polling the session.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 8)]
    worker_concurrency: usize,
    /// The regex to search for.
    #[arg(
        long,
        default_value = r"\b(fn|def|function|class|struct|trait|impl|interface)\s+[A-Za-z_]\w*"
    )]
    pattern: String,
    /// Which files to search (.gitignore is honoured).
    #[arg(long, default_value = "**/*")]
    glob: String,
    /// How many files with the most matches to open and show.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Query lane concurrency (tasks handed to workers at once).
    #[arg(long, default_value_t = 32)]
    query_concurrency: usize,
    /// Serve the session's /metrics and /healthz on this address (e.g. 127.0.0.1:9464) while
    /// it runs and, after it, until ctrl-c: watch it with `a3s-code stats --metrics ADDR`.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the dashboard (a web page of this process's sessions: lanes, tasks, dead letters,
    /// pause / resume, cancel) on this address, e.g. 127.0.0.1:8080; after the first search the
    /// demo keeps searching again, so there is a live session to watch, until ctrl-c.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<std::net::SocketAddr>,
    /// Show the live stats view (lanes, backlog, in-flight, rates, p50/p99, workers) while it
    /// runs.
    #[arg(long)]
    stats: bool,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = SessionQueueConfig {
        query_max_concurrency: args.query_concurrency,
        enable_metrics: true,
        enable_dlq: true,
        lane_handlers: [(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 30_000,
            },
        )]
        .into(),
        ..Default::default()
    };
    let mut options = SessionOptions::new()
        .with_queue_config(config)
        .with_bash(false);
    if let Some(addr) = args.metrics_addr {
        options = options.with_metrics_addr(addr);
    }
    let session = Agent::from_config(AgentConfig::default())
        .session(&args.dir, Some(options))
        .with_context(|| format!("opening a session on {}", args.dir.display()))?;
    let root = session.workspace().root().to_owned();
    println!("session {} on {}", session.id(), root.display());
    println!(
        "Query lane: External, {} in-process workers x {} slots",
        args.workers, args.worker_concurrency
    );
    if let Some(addr) = session.metrics_addr() {
        println!("metrics: http://{addr}/metrics  (watch: a3s-code stats --metrics {addr})");
    }
    let dashboard = match args.dashboard {
        Some(addr) => {
            let options = crate::dashboard::Options {
                source: "this process".to_owned(),
                ..Default::default()
            };
            let dashboard =
                crate::dashboard::serve(a3s_code_core::admin::AdminClient::local(), addr, options)
                    .await?;
            println!(
                "dashboard: http://{}/#/session/{}",
                dashboard.local_addr(),
                session.id()
            );
            Some(dashboard)
        }
        None => None,
    };
    println!();

    let workers: Vec<Worker> = (0..args.workers.max(1))
        .map(|i| {
            Worker::spawn(
                Arc::new(session.clone()),
                builtin_handler(
                    Workspace::new(&root)
                        .expect("the session's root is a directory")
                        .with_bash(false),
                ),
                WorkerConfig {
                    concurrency: args.worker_concurrency.max(1),
                    name: Some(format!("demo-{}", i + 1)),
                    ..Default::default()
                },
            )
        })
        .collect();

    // The live view, drawn from the same text `/metrics` serves.
    let exporters: Vec<Arc<dyn Exporter>> = workers.iter().map(Worker::exporter).collect();
    let live = args.stats.then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
        let (session, exporters, bar2) = (session.clone(), exporters.clone(), bar.clone());
        let task = tokio::spawn(async move {
            let mut previous: Option<(crate::stats::View, Instant)> = None;
            loop {
                let view = in_process_view(&session, &exporters, previous.as_ref());
                bar2.set_message(crate::stats::render(&view));
                previous = Some((view, Instant::now()));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        (bar, task)
    });

    // 1. glob: which files to search.
    let listed = tool(&session, "glob", json!({ "pattern": args.glob })).await?;
    let files: Vec<String> = listed["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    if listed["truncated"] == true {
        println!("(glob result truncated to {} files)", files.len());
    }

    // 2. grep: one task per file, fanned out to the workers.
    let bar = if live.is_some() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(files.len() as u64)
    }
    .with_style(
        ProgressStyle::with_template("{spinner} grep {pos}/{len} files [{bar:30}] {per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut hits: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let mut failures = 0usize;
    let mut results = grep_each(&session, &files, &args.pattern, args.query_concurrency);
    while let Some((path, out)) = results.next().await {
        bar.inc(1);
        match out {
            Ok(r) if r.success => {
                for m in r.result["matches"].as_array().into_iter().flatten() {
                    let line = m["line"].as_u64().unwrap_or(0);
                    let text = m["text"].as_str().unwrap_or_default().trim().to_owned();
                    hits.entry(path.clone()).or_default().push((line, text));
                }
            }
            Ok(r) => {
                if r.error.as_deref().is_some_and(|e| e.contains("regex")) {
                    bar.finish_and_clear();
                    bail!("grep failed: {}", r.error.unwrap_or_default());
                }
                failures += 1;
            }
            Err(e) => {
                failures += 1;
                bar.println(format!("{path}: {e}"));
            }
        }
    }
    bar.finish_and_clear();

    // 3. read: open the files with the most matches.
    let mut ranked: Vec<(&String, &Vec<(u64, String)>)> = hits.iter().collect();
    ranked.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let total: usize = hits.values().map(Vec::len).sum();
    println!(
        "{} matches of /{}/ in {} of {} files",
        total,
        args.pattern,
        hits.len(),
        files.len()
    );
    for (path, lines) in ranked.iter().take(args.top) {
        let read = tool(&session, "read", json!({ "path": path, "limit": 1 })).await?;
        println!(
            "\n{path}  ({} matches, {} lines)",
            lines.len(),
            read["total_lines"]
        );
        for (line, text) in lines.iter().take(3) {
            println!("  {line:>5}: {}", truncate(text, 100));
        }
    }
    if failures > 0 {
        println!("\n{failures} files could not be searched (binary or unreadable)");
    }

    if dashboard.is_some() {
        println!(
            "\nthe dashboard shows a live session: the search runs again and again until ctrl-c \
             (pause the Query lane there and watch its backlog grow)"
        );
        let again = async {
            loop {
                grep_each(&session, &files, &args.pattern, args.query_concurrency)
                    .for_each(|_| async {})
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = again => {}
        }
    }

    if let Some((bar, task)) = live {
        task.abort();
        bar.finish_and_clear();
        println!(
            "\n{}",
            crate::stats::render(&in_process_view(&session, &exporters, None))
        );
    }
    let stats = session.queue_stats().await;
    let metrics = session.queue_metrics().await;
    let mut worker_totals = (0, 0);
    for w in workers {
        let s = w.shutdown().await;
        worker_totals.0 += s.claimed;
        worker_totals.1 += s.succeeded + s.failed;
    }
    println!(
        "\nworkers: {} tasks claimed, {} completed",
        worker_totals.0, worker_totals.1
    );
    print_stats(&stats);
    if let Some(m) = metrics {
        print_metrics(&m);
    }
    println!("\ndone in {:.2?}", started.elapsed());
    if let Some(addr) = session.metrics_addr().filter(|_| dashboard.is_none()) {
        println!("still serving http://{addr}/metrics (ctrl-c to quit)");
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(dashboard);
    session.close().await;
    Ok(())
}

/// One `grep` task per file, fanned out to the workers; the results as they come.
fn grep_each<'a>(
    session: &'a AgentSession,
    files: &'a [String],
    pattern: &'a str,
    concurrency: usize,
) -> impl futures_util::Stream<Item = (String, a3s_code_core::Result<ExternalTaskResult>)> + 'a {
    stream::iter(files.iter().cloned())
        .map(move |path| async move {
            let out = session
                .tool(
                    "grep",
                    json!({ "pattern": pattern, "path": path, "max_results": 50 }),
                )
                .await;
            (path, out)
        })
        .buffer_unordered(concurrency * 2)
}

/// The stats view of this process's session and workers, with rates against `previous`.
fn in_process_view(
    session: &AgentSession,
    workers: &[Arc<dyn Exporter>],
    previous: Option<&(crate::stats::View, Instant)>,
) -> crate::stats::View {
    let mut text = session.metrics_text();
    for w in workers {
        text.push_str(&w.render());
    }
    let mut view = crate::stats::view_from_samples(&crate::stats::parse_prometheus(&text));
    if let Some((p, at)) = previous {
        crate::stats::fill_rates(&mut view, p, at.elapsed());
    }
    view
}

async fn tool(session: &AgentSession, name: &str, args: Value) -> anyhow::Result<Value> {
    let out = session
        .tool(name, args)
        .await
        .with_context(|| format!("{name} task"))?;
    if !out.success {
        bail!("{name} failed: {}", out.error.unwrap_or_default());
    }
    Ok(out.result)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn print_stats(stats: &QueueStats) {
    println!(
        "queue stats: pending {}, active {}, external {}",
        stats.pending_count, stats.active_count, stats.external_count
    );
    for (lane, l) in &stats.per_lane {
        println!(
            "  {lane:<8} {:<8} max {:>3}  pending {:>3}  active {:>3}",
            l.mode.as_str(),
            l.max_concurrency,
            l.pending_count,
            l.active_count
        );
    }
}

fn print_metrics(m: &QueueMetrics) {
    println!(
        "queue metrics: {} processed, {} failed, {} timed out, success rate {:.2}%",
        m.total_processed,
        m.total_failed,
        m.total_timed_out,
        m.success_rate * 100.0
    );
    println!(
        "  latency avg {:?}  p50 {:?}  p95 {:?}  p99 {:?}",
        m.avg_latency, m.p50_latency, m.p95_latency, m.p99_latency
    );
    for (lane, l) in m.per_lane.iter().filter(|(_, l)| l.total_processed > 0) {
        println!(
            "  {lane:<8} {:>6} processed  p50 {:?}  p99 {:?}",
            l.total_processed, l.p50_latency, l.p99_latency
        );
    }
    if m.dlq_depth > 0 {
        println!("  dead letters: {}", m.dlq_depth);
    }
    let _ = Duration::ZERO;
}

//! A three-node JetStream cluster loses servers in the middle of a run and gets them back, one
//! at a time: the one that leads the tasks stream, then the one that leads the workers' task
//! consumer, then the one that leads the session's results consumer (the open pull requests a
//! consumer's leader holds die with it, while the clients' connections may stay up). The session
//! (streams with 3 replicas) and three `a3s-code worker` processes, all given the three URLs,
//! carry on by themselves: every task completes exactly once.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::broker::wire::{ANY_ROUTE, Names};
use a3s_code_core::queue::{LaneHandlerConfig, QueueEvent, SessionLane, TaskHandlerMode};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig, TaskHandle,
};
use serde_json::json;
use test_support::NatsCluster;

const TASKS: usize = 10_000;
/// Files the tasks read (`f<i % FILES>.txt` holds `i % FILES`), so each result can be checked.
const FILES: usize = 100;
/// Tasks that must complete between two steps of the scenario.
const STEP: u64 = (TASKS / 8) as u64;

/// The longest tasks may stall when a server is lost: its Raft groups elect new leaders within
/// seconds, and clients must not wait for pull requests the lost server held (30 s) before
/// asking again.
const STALL: Duration = Duration::from_secs(28);

/// How long after a step's tasks are done every pull-mode worker may take to have claimed its
/// share. A worker deaf on requests the lost server held would stay so for their 30 s expiry;
/// a live one asks a consumer that had no leader again within 1.5 s.
const CATCH_UP: Duration = Duration::from_secs(10);

/// The tasks submitted so far, with their handles (the task's number gives its file).
struct Load<'a> {
    session: &'a AgentSession,
    /// The deployment's subject and stream prefix.
    prefix: String,
    handles: Vec<(usize, TaskHandle)>,
    /// `Submitted` events the event counter has seen.
    seen: Arc<AtomicUsize>,
}

impl Load<'_> {
    async fn submit(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.handles.len();
            let path = format!("f{}.txt", i % FILES);
            let h = self
                .session
                .submit(SessionLane::Query, "read", json!({"path": path}))
                .await
                .unwrap();
            self.handles.push((i, h));
            // Let the event counter keep up (its buffer holds 4096 events).
            if (i + 1).is_multiple_of(1_000) {
                while self.seen.load(Ordering::Relaxed) < i + 1 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    fn len(&self) -> u64 {
        self.handles.len() as u64
    }
}

/// An `a3s-code worker` process, with its `/metrics`.
struct WorkerProc {
    child: Child,
    metrics: String,
}

impl WorkerProc {
    fn spawn(url: &str, prefix: &str, session: &str, workspace: &std::path::Path) -> Self {
        Self::spawn_with(url, prefix, session, workspace, &[])
    }

    fn spawn_with(
        url: &str,
        prefix: &str,
        session: &str,
        workspace: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let addr = format!("127.0.0.1:{}", test_support::free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
            .args([
                "worker",
                "--nats",
                url,
                "--prefix",
                prefix,
                "--session-id",
                session,
                "--lease-ms",
                "2000",
                "--concurrency",
                "32",
            ])
            .args(["--metrics-addr", &addr])
            .arg("--workspace")
            .arg(workspace)
            .args(extra)
            // A3S_TEST_WORKER_LOG (an A3S_LOG filter) shows the workers' logs when debugging.
            .env(
                "A3S_LOG",
                std::env::var("A3S_TEST_WORKER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a3s-code worker");
        Self {
            child,
            metrics: format!("http://{addr}/metrics"),
        }
    }

    /// Tasks it claimed so far.
    async fn claimed(&self) -> f64 {
        let (_, scrape) = test_support::http_get(&self.metrics).await;
        test_support::metric(
            &scrape,
            "a3s_worker_tasks_claimed_total",
            &[("lane", "query")],
        )
        .unwrap_or(0.0)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn session(url: &str, prefix: &str, workspace: &std::path::Path) -> AgentSession {
    let cfg = SessionQueueConfig {
        query_max_concurrency: 96,
        max_pending: 100_000,
        enable_metrics: true,
        enable_dlq: true,
        lane_handlers: [(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 180_000,
            },
        )]
        .into(),
        ..Default::default()
    };
    let nats = NatsConfig::new(url)
        .with_prefix(prefix)
        .with_lease(Duration::from_secs(2))
        .with_replicas(3);
    Agent::from_config(AgentConfig::default())
        .session(
            workspace,
            Some(SessionOptions::new().with_queue_config(cfg).with_nats(nats)),
        )
        .expect("session")
}

async fn processed(session: &AgentSession) -> u64 {
    session.queue_metrics().await.unwrap().total_processed
}

/// Waits until the session has completed `n` tasks: they flow. Only time while every stream
/// and consumer of the test has a leader counts against `within`: without one, no client can go
/// on (nats-server 2.9 sometimes takes long to elect a consumer's new leader), and that is the
/// server's liveness, not the clients'; it gets [`LEADERLESS`] at most. When tasks do not
/// flow, says what the session, the workers and the task consumers looked like.
async fn wait_processed(
    cluster: &NatsCluster,
    load: &Load<'_>,
    workers: &[WorkerProc],
    n: u64,
    within: Duration,
    what: &str,
) {
    let session = load.session;
    let prefix = load.prefix.to_uppercase();
    let (mut counted, mut leaderless) = (Duration::ZERO, Duration::ZERO);
    let mut last = Instant::now();
    let mut led = true;
    let mut checked = Instant::now();
    loop {
        let done = processed(session).await;
        if done >= n {
            if leaderless > Duration::ZERO {
                eprintln!(
                    "{what}: the cluster had no leader for some of its groups for {leaderless:?}"
                );
            }
            return;
        }
        let now = Instant::now();
        match led {
            true => counted += now - last,
            false => leaderless += now - last,
        }
        last = now;
        if now - checked >= Duration::from_secs(1) {
            checked = now;
            let missing = cluster.leaderless(&prefix);
            led = missing.is_empty();
            assert!(
                leaderless < LEADERLESS,
                "{what}: no leader for {missing:?} for {LEADERLESS:?} (the server's liveness)"
            );
        }
        if counted >= within {
            let mut claimed = Vec::new();
            for w in workers {
                claimed.push(w.claimed().await);
            }
            let m = session.queue_metrics().await.unwrap();
            let stream = Names::new(&load.prefix).unwrap().tasks_stream(TENANT);
            panic!(
                "{what}: {done} of {n} tasks done after {within:?} with every group led \
                 ({leaderless:?} without)\nsubmitted {}; workers claimed {claimed:?}; \
                 session: {m:?}\n{}",
                load.len(),
                cluster.consumers_report(&stream)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The longest the test waits for the cluster to elect leaders it lost.
const LEADERLESS: Duration = Duration::from_secs(120);

/// Kills node `i`, checks that tasks keep completing without it, restarts it, and checks that
/// tasks keep completing and that every worker keeping pull requests open takes part (none
/// stays deaf on requests the lost server held: they would stay open 30 s). When the others
/// have taken the step's tasks before a worker asked again (a consumer without a leader answers
/// nothing, and its new leader may come late in the step), more tasks are submitted for
/// [`CATCH_UP`], so that the worker asking last still finds some.
///
/// A worker that fetches on doorbells instead (the last of `workers`) is not checked: open
/// requests are served first, so it may rightly get few tasks.
async fn lose_and_restore(
    cluster: &mut NatsCluster,
    load: &mut Load<'_>,
    workers: &[WorkerProc],
    i: usize,
    why: &str,
) {
    let session = load.session;
    let pullers = &workers[..workers.len() - 1];
    // Enough tasks for the step (the previous steps may have taken more than theirs).
    let shortfall = (processed(session).await + 3 * STEP).saturating_sub(load.len());
    load.submit(shortfall as usize).await;
    let started = Instant::now();
    cluster.kill(i);
    let at = processed(session).await;
    let mut before = Vec::new();
    for w in pullers {
        before.push(w.claimed().await);
    }
    let without = format!("without n{i}");
    wait_processed(cluster, load, workers, at + STEP, STALL, &without).await;
    let stalled = started.elapsed();
    cluster.restart(i);
    let restarted = started.elapsed();
    let end = (at + 2 * STEP).min(load.len());
    let after = format!("after restarting n{i}");
    wait_processed(cluster, load, workers, end, STALL, &after).await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let mut claimed = Vec::new();
        for (w, before) in pullers.iter().zip(&before) {
            claimed.push(w.claimed().await - before);
        }
        // Each took more than the tasks it may have held already (its slots, twice).
        if claimed.iter().all(|&n| n > 64.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks claimed by each pull-mode worker since n{i} was lost: {claimed:?} (of {}, \
             {CATCH_UP:?} after the step)",
            processed(session).await - at
        );
        if processed(session).await + 256 > load.len() {
            load.submit(512).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "n{i} ({why}) lost after {at} tasks: {STEP} more done {stalled:?} later; restarted \
         after {restarted:?}; {end} done after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_leaders_mid_run_loses_and_doubles_nothing() {
    if !test_support::has_nats_server() {
        eprintln!("skipped: nats-server is not installed (set NATS_SERVER_BIN or install it)");
        return;
    }
    let started = Instant::now();
    let mut cluster = NatsCluster::start();
    let url = cluster.url();
    let prefix = test_support::unique_prefix();
    let names = Names::new(&prefix).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in 0..FILES {
        std::fs::write(dir.path().join(format!("f{f}.txt")), f.to_string()).unwrap();
    }
    let session = session(&url, &prefix, dir.path());
    session.broker_ready(Duration::from_secs(30)).await.unwrap();

    // Every stream the session created keeps three copies.
    let client = async_nats::connect(cluster.urls()[0].as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    for stream in [
        names.tasks_stream(TENANT),
        names.results_stream(),
        names.dlq_stream(),
        format!("OBJ_{}", names.objects_bucket(TENANT)),
    ] {
        let mut handle = js.get_stream(&stream).await.unwrap();
        let replicas = handle.info().await.unwrap().config.num_replicas;
        assert_eq!(replicas, 3, "{stream}");
    }

    let submitted = Arc::new(AtomicUsize::new(0));
    let mut events = session.subscribe_events();
    let seen = submitted.clone();
    let counting = tokio::spawn(async move {
        let mut completed = HashMap::<String, u32>::new();
        while let Some(ev) = events.recv().await {
            match ev {
                QueueEvent::Submitted { .. } => {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                QueueEvent::Completed { task_id, .. } => {
                    *completed.entry(task_id).or_default() += 1;
                }
                _ => {}
            }
        }
        (completed, events.lagged())
    });
    // Two workers serve the query lane alone (they keep pull requests open on its consumer),
    // one serves every lane (it fetches on doorbells).
    let workers = [
        WorkerProc::spawn_with(
            &url,
            &prefix,
            session.id(),
            dir.path(),
            &["--lanes", "query"],
        ),
        WorkerProc::spawn_with(
            &url,
            &prefix,
            session.id(),
            dir.path(),
            &["--lanes", "query"],
        ),
        WorkerProc::spawn(&url, &prefix, session.id(), dir.path()),
    ];

    let mut load = Load {
        session: &session,
        prefix: prefix.clone(),
        handles: Vec::with_capacity(TASKS),
        seen: submitted,
    };
    load.submit(TASKS).await;

    let first = Duration::from_secs(60);
    wait_processed(&cluster, &load, &workers, STEP, first, "before any loss").await;
    let leader = cluster
        .stream_leader(&names.tasks_stream(TENANT))
        .expect("the tasks stream has a leader");
    lose_and_restore(
        &mut cluster,
        &mut load,
        &workers,
        leader,
        "tasks stream leader",
    )
    .await;
    // The workers attached to the session: its tasks are in its own consumer.
    let task_consumer = names.session_consumer(session.id(), SessionLane::Query, ANY_ROUTE);
    let leader = cluster
        .consumer_leader(&names.tasks_stream(TENANT), &task_consumer)
        .expect("the task consumer has a leader");
    lose_and_restore(
        &mut cluster,
        &mut load,
        &workers,
        leader,
        "task consumer leader",
    )
    .await;
    let leader = cluster
        .consumer_leader(&names.results_stream(), &hub_consumer(&js, &names).await)
        .expect("the results consumer has a leader");
    lose_and_restore(
        &mut cluster,
        &mut load,
        &workers,
        leader,
        "results consumer leader",
    )
    .await;

    let handles = load.handles;
    let total = handles.len();
    for (i, h) in handles {
        let out = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .unwrap_or_else(|_| panic!("task {i} is lost"))
            .unwrap();
        assert!(out.success, "task {i}: {out:?}");
        assert_eq!(
            out.result["content"],
            (i % FILES).to_string(),
            "task {i} got its own result"
        );
    }
    let m = session.queue_metrics().await.unwrap();
    assert_eq!(
        (m.total_processed, m.total_failed, m.total_timed_out),
        (total as u64, 0, 0),
        "{m:?}"
    );
    session.close().await;
    let (completed, lagged) = counting.await.unwrap();
    assert_eq!(lagged, 0, "the event subscriber kept up");
    assert_eq!(completed.len(), total, "every task completed");
    let twice: Vec<_> = completed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks completed more than once: {twice:?}"
    );
    eprintln!(
        "{total} tasks in {:?}; {} attempts retried, {} duplicate results ignored",
        started.elapsed(),
        m.total_retried,
        m.total_rejected_completions
    );
}

/// Sessions without a tenant belong to this one.
const TENANT: &str = a3s_code_core::broker::wire::DEFAULT_TENANT;

/// The results consumer of the test's one session process (its hub).
async fn hub_consumer(
    js: &async_nats::jetstream::Context,
    names: &a3s_code_core::broker::wire::Names,
) -> String {
    use futures_util::StreamExt;
    let results = js.get_stream(names.results_stream()).await.unwrap();
    let mut names_of = results.consumer_names();
    while let Some(Ok(name)) = names_of.next().await {
        if name.starts_with("hub_") {
            return name;
        }
    }
    panic!("no hub consumer on the results stream")
}

//! `a3s-code conformance -- <command>`: checks a worker process against the MUST rules of
//! docs/protocol.md, whatever its language.
//!
//! The kit plays the session side (a real `AgentSession` over NATS, with a 1 s lease so leases
//! matter within seconds) and watches the wire with a client of its own: results on
//! `P.result.>`, acknowledgements on `$JS.ACK.>` (a NATS subscriber sees every `+ACK`, `+WPI`,
//! `-NAK` and `+TERM` a worker sends), task envelopes on `P.task.>`. It starts the worker as
//! many times as its scenarios need, each time with a fresh subject prefix and workspace, and
//! tells it everything through the environment `a3s-code worker` reads too:
//!
//! | variable | value |
//! | --- | --- |
//! | `A3S_NATS_URL` | the server |
//! | `A3S_NATS_PREFIX` | a fresh prefix per run |
//! | `SESSION_ID` | the session's id, or `*` for the pool-mode scenario |
//! | `A3S_WORKSPACE` | a fresh directory per run |
//! | `A3S_WORKER_ID` | `conformance-<n>` |
//! | `A3S_LANES` | `query` (every task goes to the Query lane) |
//! | `A3S_LEASE_MS` | `1000` (also the consumers' `ack_wait`) |
//! | `A3S_ALLOW_BASH` | `1` in the scenarios that need a long task, unset otherwise |
//! | `A3S_LABELS` | `region=eu` in the labels scenario |
//!
//! Each rule ends passed, failed or not applicable (with the reason). Mandatory rules decide the
//! exit status; optional ones (tools the worker does not serve, labels, pool mode) are reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{SessionLane, SubmitOptions};
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{Agent, AgentConfig, AgentSession, ExternalTaskResult, SessionQueueConfig};
use anyhow::Context;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::server::NatsServer;

/// The lease the kit's sessions give their consumers (and tell workers in `A3S_LEASE_MS`).
const LEASE: Duration = Duration::from_secs(1);

/// How long a task may take to come back before the kit calls it lost.
const RESULT_WAIT: Duration = Duration::from_secs(15);

#[derive(clap::Args)]
pub(crate) struct ConformanceArgs {
    /// NATS server to run against (default: a nats-server of the kit's own, from
    /// `$NATS_SERVER_BIN` or the `PATH`).
    #[arg(long)]
    nats: Option<String>,
    /// Print the report as JSON (one object: `rules`, `conforming`).
    #[arg(long)]
    json: bool,
    /// Keep each run's worker output in this directory (default: a temporary one, shown for
    /// failed rules).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// The command that starts a worker, after `--` (e.g. `-- a3s-code worker` or
    /// `-- python3 worker.py`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How a rule ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Passed,
    Failed,
    NotApplicable,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Outcome {
    rule: &'static str,
    mandatory: bool,
    status: Status,
    reason: String,
}

/// The rules, in report order: id, mandatory, what it checks.
const RULES: &[(&str, bool, &str)] = &[
    (
        "one-result-per-delivery",
        true,
        "at most one result per delivery of a task",
    ),
    (
        "result-stored-before-ack",
        true,
        "a task is acknowledged only after its result is stored",
    ),
    (
        "attempt-numbers",
        true,
        "a result carries the delivery count of the delivery it answers",
    ),
    (
        "lease-renewal",
        true,
        "a task running longer than the lease keeps it (+WPI) and is not redelivered",
    ),
    (
        "exhausted",
        true,
        "a delivery past max_attempts is reported exhausted, not run, then terminated",
    ),
    (
        "late-task-skipped",
        true,
        "a task delivered after its deadline is not run",
    ),
    (
        "malformed-input",
        true,
        "garbage on the task subject leaves the worker serving",
    ),
    ("cancel", true, "a cancel stops the running task"),
    (
        "large-values",
        true,
        "payloads and results too large for a message travel by reference",
    ),
    ("tool-read", false, "read"),
    ("tool-write", false, "write"),
    ("tool-edit", false, "edit"),
    ("tool-ls", false, "ls"),
    ("tool-glob", false, "glob"),
    ("tool-grep", false, "grep"),
    ("tool-bash", false, "bash"),
    (
        "labels",
        false,
        "a labelled worker takes tasks that require its labels, and only those",
    ),
    (
        "pool-mode",
        false,
        "a pool worker (SESSION_ID='*') serves a session of its tenant",
    ),
    (
        "taken-notice",
        false,
        "a worker tells the session which tasks it took (who holds each, for the admin API)",
    ),
];

pub(crate) async fn run(args: ConformanceArgs) -> anyhow::Result<()> {
    let (url, _server) = match &args.nats {
        Some(url) => (url.clone(), None),
        None => {
            let server = NatsServer::start()?;
            (server.url().to_owned(), Some(server))
        }
    };
    let logs = match &args.logs {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (dir.clone(), None)
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("a3s-conformance-")
                .tempdir()?;
            (dir.path().to_owned(), Some(dir))
        }
    };
    let kit = Kit {
        url,
        command: args.command.clone(),
        logs: logs.0.clone(),
        runs: Mutex::new(0),
        outcomes: Mutex::new(BTreeMap::new()),
    };
    // Each scenario starts its own worker process(es); one that cannot run at all fails the
    // mandatory rules nobody decided.
    for outcome in [
        basic(&kit).await,
        long_tasks(&kit).await,
        attempts(&kit).await,
        exhausted(&kit).await,
        labels(&kit).await,
        pool_mode(&kit).await,
    ] {
        if let Err(e) = outcome {
            kit.fail_undecided(&format!("{e:#}"));
        }
    }
    let outcomes = kit.report();
    let conforming = outcomes
        .iter()
        .all(|o| !o.mandatory || o.status == Status::Passed);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"rules": outcomes, "conforming": conforming}))?
        );
    } else {
        print_human(&outcomes, conforming, &logs.0, logs.1.is_some());
    }
    // Keep the logs of a failed run for the person reading the report.
    if let Some(dir) = logs.1
        && !conforming
    {
        let _ = dir.keep();
    }
    if conforming {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

fn print_human(outcomes: &[Outcome], conforming: bool, logs: &Path, temporary: bool) {
    for o in outcomes {
        let mark = match o.status {
            Status::Passed => "pass",
            Status::Failed => "FAIL",
            Status::NotApplicable => "n/a ",
        };
        let kind = if o.mandatory { "must" } else { "may " };
        let detail = if o.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", o.reason)
        };
        println!("{mark}  {kind}  {}{detail}", o.rule);
    }
    if conforming {
        println!("\nconforming: every mandatory rule passed");
    } else {
        let kept = if temporary { " (kept)" } else { "" };
        println!(
            "\nNOT conforming: a mandatory rule failed; worker output in {}{kept}",
            logs.display()
        );
    }
}

struct Kit {
    url: String,
    command: Vec<String>,
    logs: PathBuf,
    runs: Mutex<u32>,
    outcomes: Mutex<BTreeMap<&'static str, Outcome>>,
}

impl Kit {
    fn decide(&self, rule: &'static str, status: Status, reason: impl Into<String>) {
        let mandatory = RULES
            .iter()
            .find(|(id, ..)| *id == rule)
            .is_some_and(|r| r.1);
        let mut outcomes = self.outcomes.lock();
        // A failure sticks: a later pass of the same rule does not hide it.
        if outcomes
            .get(rule)
            .is_some_and(|o| o.status == Status::Failed)
        {
            return;
        }
        outcomes.insert(
            rule,
            Outcome {
                rule,
                mandatory,
                status,
                reason: reason.into(),
            },
        );
    }

    fn pass(&self, rule: &'static str) {
        self.decide(rule, Status::Passed, "");
    }

    fn fail(&self, rule: &'static str, reason: impl Into<String>) {
        self.decide(rule, Status::Failed, reason);
    }

    fn not_applicable(&self, rule: &'static str, reason: impl Into<String>) {
        self.decide(rule, Status::NotApplicable, reason);
    }

    fn fail_undecided(&self, why: &str) {
        let decided: Vec<&str> = self.outcomes.lock().keys().copied().collect();
        for (rule, mandatory, _) in RULES {
            if !decided.contains(rule) && *mandatory {
                self.fail(
                    rule,
                    format!("the scenario deciding it could not run: {why}"),
                );
            }
        }
    }

    fn report(&self) -> Vec<Outcome> {
        let outcomes = self.outcomes.lock();
        RULES
            .iter()
            .map(|(rule, mandatory, _)| {
                outcomes.get(rule).cloned().unwrap_or(Outcome {
                    rule,
                    mandatory: *mandatory,
                    status: if *mandatory {
                        Status::Failed
                    } else {
                        Status::NotApplicable
                    },
                    reason: "no scenario decided it".to_owned(),
                })
            })
            .collect()
    }

    /// A session of its own (fresh prefix and workspace), a watcher on its subjects.
    async fn setup(&self, retry: a3s_code_core::lane::RetryPolicy) -> anyhow::Result<Run> {
        let n = {
            let mut runs = self.runs.lock();
            *runs += 1;
            *runs
        };
        let prefix = format!("cf{}{n}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let workspace = tempfile::Builder::new()
            .prefix("a3s-conformance-ws-")
            .tempdir()?;
        let nats = NatsConfig::new(&self.url)
            .with_prefix(&prefix)
            .with_lease(LEASE);
        let cfg = SessionQueueConfig {
            retry_policy: retry,
            enable_dlq: true,
            ..crate::bench::query_config(32, SessionQueueConfig::default().max_pending, 60_000)
        };
        let session = Agent::from_config(AgentConfig::default()).session(
            workspace.path(),
            Some(
                a3s_code_core::SessionOptions::new()
                    .with_queue_config(cfg)
                    .with_nats(nats.clone()),
            ),
        )?;
        session
            .broker_ready(Duration::from_secs(10))
            .await
            .context("the kit's own session could not reach NATS")?;
        let watch = Watch::start(&self.url, &prefix).await?;
        Ok(Run {
            n,
            prefix,
            nats,
            session,
            workspace,
            watch,
            workers: Vec::new(),
        })
    }

    /// Starts the worker under test for `run`, with `extra` environment variables.
    fn start_worker(
        &self,
        run: &mut Run,
        session: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let index = run.workers.len();
        let log_path = self.logs.join(format!("run{}-worker{index}.log", run.n));
        let log = std::fs::File::create(&log_path)?;
        let (program, args) = self.command.split_first().context("no worker command")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("A3S_NATS_URL", &self.url)
            .env("A3S_NATS_PREFIX", &run.prefix)
            .env("SESSION_ID", session)
            .env("A3S_WORKSPACE", run.workspace.path())
            .env("A3S_WORKER_ID", format!("conformance-{}-{index}", run.n))
            .env("A3S_LANES", "query")
            .env("A3S_LEASE_MS", LEASE.as_millis().to_string())
            .env_remove("A3S_ALLOW_BASH")
            .env_remove("A3S_LABELS")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the worker ({})", self.command.join(" ")))?;
        run.workers.push(Worker { child, log_path });
        Ok(())
    }
}

/// One scenario's session, watcher and worker processes.
struct Run {
    n: u32,
    prefix: String,
    nats: NatsConfig,
    session: AgentSession,
    workspace: tempfile::TempDir,
    watch: Watch,
    workers: Vec<Worker>,
}

struct Worker {
    child: Child,
    log_path: PathBuf,
}

impl Run {
    fn root(&self) -> &Path {
        self.workspace.path()
    }

    /// Submits a Query task and waits for its outcome (bounded).
    async fn call(&self, command: &str, payload: Value) -> anyhow::Result<(String, TaskEnd)> {
        self.call_with(command, payload, SubmitOptions::new(), RESULT_WAIT)
            .await
    }

    async fn call_with(
        &self,
        command: &str,
        payload: Value,
        options: SubmitOptions,
        wait: Duration,
    ) -> anyhow::Result<(String, TaskEnd)> {
        let handle = self
            .session
            .submit_with(SessionLane::Query, command, payload, options)
            .await?;
        let id = handle.task_id().to_owned();
        let outcome = match tokio::time::timeout(wait, handle.result()).await {
            Ok(Ok(r)) => TaskEnd::Done(r),
            Ok(Err(e)) => TaskEnd::Error(e.code().to_owned(), e.to_string()),
            Err(_) => {
                let _ = self.session.cancel(&id).await;
                TaskEnd::Lost
            }
        };
        Ok((id, outcome))
    }

    fn alive(&mut self) -> bool {
        self.workers
            .iter_mut()
            .all(|w| w.child.try_wait().ok().flatten().is_none())
    }

    /// Where the worker's output is, and how it ended if it exited.
    fn log_hint(&mut self) -> String {
        let Some(w) = self.workers.last_mut() else {
            return String::new();
        };
        let exited = match w.child.try_wait() {
            Ok(Some(status)) => {
                let first = std::fs::read_to_string(&w.log_path)
                    .unwrap_or_default()
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| format!(": {}", truncate(l.trim())))
                    .unwrap_or_default();
                format!("; the worker exited ({status}){first}")
            }
            _ => String::new(),
        };
        format!(" (worker output: {}{exited})", w.log_path.display())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// How a submitted task ended.
#[derive(Debug)]
enum TaskEnd {
    Done(ExternalTaskResult),
    Error(String, String),
    Lost,
}

impl TaskEnd {
    fn describe(&self) -> String {
        match self {
            TaskEnd::Done(r) => serde_json::to_string(r).unwrap_or_default(),
            TaskEnd::Error(code, msg) => format!("{code}: {msg}"),
            TaskEnd::Lost => "no outcome in time".to_owned(),
        }
    }
}

/// What the kit saw on the wire, in arrival order.
#[derive(Debug, Clone)]
enum Seen {
    Result {
        task_id: String,
        attempt: u64,
        kind: String,
    },
    Ack {
        kind: String,
    },
    Task {
        subject: String,
        payload: Value,
    },
    Taken {
        task_id: String,
        attempt: u64,
        worker_id: String,
    },
}

struct Watch {
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    client: async_nats::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    /// Ends the subscription with the run: left open, it would keep watching the next runs, and
    /// its interest in every subject would keep the server sending to the inboxes of workers
    /// long gone (it drops a pull request nobody listens to).
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    async fn start(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(url).await?;
        let tasks_stream = format!("{}_TASKS_", prefix.to_uppercase().replace('-', "_"));
        let (results, tasks) = (format!("{prefix}.result."), format!("{prefix}.task."));
        let taken = format!("{prefix}.taken.");
        // One subscription for everything, so what it records is in the order the server sent
        // it: a worker's acknowledgement and its result published right after land in that
        // order (one connection's messages are delivered in order), which separate
        // subscriptions would not keep. The kit's runs are short and use their own prefix. (Its
        // interest in every inbox keeps a vanished worker's open pull requests alive for the
        // run, where a real server would drop them: a worker must not leave any behind.)
        let mut all = client.subscribe(">").await?;
        client.flush().await?;
        let seen: Arc<Mutex<Vec<(Instant, Seen)>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Some(m) = all.next().await {
                // JetStream's deliveries of stored messages (to the session's and the workers'
                // inboxes) show the original subject too: count only what was published.
                if m.reply.as_ref().is_some_and(|r| r.starts_with("$JS.ACK.")) {
                    continue;
                }
                let subject = m.subject.as_str();
                let now = Instant::now();
                if subject.starts_with(&results) {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    // A batch carries several results.
                    let items = match v.get("results").and_then(Value::as_array) {
                        Some(list) => list.clone(),
                        None => vec![v],
                    };
                    for item in items {
                        let task_id = item["task_id"].as_str().unwrap_or_default().to_owned();
                        let attempt = item["attempt"].as_u64().unwrap_or(0);
                        let kind = item["kind"].as_str().unwrap_or("result").to_owned();
                        sink.lock().push((
                            now,
                            Seen::Result {
                                task_id,
                                attempt,
                                kind,
                            },
                        ));
                    }
                } else if let Some(rest) = subject.strip_prefix("$JS.ACK.") {
                    let tokens: Vec<&str> = rest.split('.').collect();
                    // <stream>.<consumer>... or <domain>.<account>.<stream>.<consumer>...
                    let stream = match tokens.len() {
                        7 => tokens[0],
                        n if n >= 9 => tokens[2],
                        _ => "",
                    };
                    if stream.starts_with(&tasks_stream) {
                        let body = String::from_utf8_lossy(&m.payload);
                        let kind = body.split_whitespace().next().unwrap_or("+ACK");
                        let kind = if kind.is_empty() { "+ACK" } else { kind }.to_owned();
                        sink.lock().push((now, Seen::Ack { kind }));
                    }
                } else if subject.starts_with(&taken) {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    let worker_id = v["worker_id"].as_str().unwrap_or_default().to_owned();
                    for t in v["tasks"].as_array().into_iter().flatten() {
                        sink.lock().push((
                            now,
                            Seen::Taken {
                                task_id: t["task_id"].as_str().unwrap_or_default().to_owned(),
                                attempt: t["attempt"].as_u64().unwrap_or(0),
                                worker_id: worker_id.clone(),
                            },
                        ));
                    }
                } else if subject.starts_with(&tasks) {
                    let payload = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    let subject = subject.to_owned();
                    sink.lock().push((now, Seen::Task { subject, payload }));
                }
            }
        });
        Ok(Self { seen, client, task })
    }

    fn since(&self, t: Instant) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn results_for(&self, task_id: &str) -> Vec<(u64, String)> {
        self.seen
            .lock()
            .iter()
            .filter_map(|(_, s)| match s {
                Seen::Result {
                    task_id: id,
                    attempt,
                    kind,
                } if id == task_id => Some((*attempt, kind.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every (task, attempt) answered more than once.
    fn doubled(&self) -> Vec<(String, u64)> {
        let mut counts: BTreeMap<(String, u64), u32> = BTreeMap::new();
        for (_, s) in self.seen.lock().iter() {
            if let Seen::Result {
                task_id, attempt, ..
            } = s
            {
                *counts.entry((task_id.clone(), *attempt)).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, _)| k)
            .collect()
    }

    fn last_task(&self) -> Option<(String, Value)> {
        self.seen.lock().iter().rev().find_map(|(_, s)| match s {
            Seen::Task { subject, payload } if payload.is_object() => {
                Some((subject.clone(), payload.clone()))
            }
            _ => None,
        })
    }
}

/// Waits (bounded) until `check` holds.
async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

/// Whether a failed outcome says the worker does not serve the command (or bash is off).
fn unserved(outcome: &TaskEnd) -> bool {
    match outcome {
        TaskEnd::Done(r) if !r.success => {
            let code = r.result.get("error_code").and_then(Value::as_str);
            let msg = r.error.as_deref().unwrap_or_default();
            code == Some("UnknownTool") || msg.contains("disabled")
        }
        _ => false,
    }
}

// ----- scenarios -------------------------------------------------------------------------------

/// One worker, no bash: results and acks, the tools, garbage, late tasks, large values.
async fn basic(kit: &Kit) -> anyhow::Result<()> {
    let mut run = kit
        .setup(a3s_code_core::lane::RetryPolicy::default())
        .await?;
    std::fs::write(run.root().join("a.txt"), "one\ntwo\nthree\n")?;
    std::fs::write(run.root().join("b.txt"), "a needle here\n")?;
    let session = run.session.id().to_owned();
    kit.start_worker(&mut run, &session, &[])?;

    // Sequential reads: each one's acknowledgement must follow its result.
    let mut order_ok = true;
    let mut order_why = String::new();
    let mut served_read = None;
    for i in 0..5 {
        let t0 = Instant::now();
        let (id, out) = run.call("read", json!({"path": "a.txt"})).await?;
        if let TaskEnd::Lost = out {
            anyhow::bail!(
                "a read was not answered within {} s{}",
                RESULT_WAIT.as_secs(),
                run.log_hint()
            );
        }
        if i == 0 {
            served_read = Some(out);
        }
        // The acknowledgement may follow the result by a moment.
        until(Duration::from_secs(2), || {
            run.watch
                .since(t0)
                .iter()
                .any(|s| matches!(s, Seen::Ack { kind } if kind == "+ACK" || kind == "+TERM"))
        })
        .await;
        let seen = run.watch.since(t0);
        let first_result = seen
            .iter()
            .position(|s| matches!(s, Seen::Result { task_id, .. } if *task_id == id));
        let first_ack = seen
            .iter()
            .position(|s| matches!(s, Seen::Ack { kind } if kind == "+ACK" || kind == "+TERM"));
        match (first_result, first_ack) {
            (Some(r), Some(a)) if a < r => {
                order_ok = false;
                order_why = format!("task {id} was acknowledged before its result was published");
            }
            (None, _) => {
                order_ok = false;
                order_why = format!("no result was seen for task {id}");
            }
            (Some(_), None) => {
                order_ok = false;
                order_why = format!("task {id} was never acknowledged after its result");
            }
            _ => {}
        }
    }
    if order_ok {
        kit.pass("result-stored-before-ack");
    } else {
        kit.fail("result-stored-before-ack", order_why);
    }

    // A burst: 20 reads at once, each answered once.
    let burst =
        futures_util::future::join_all((0..20).map(|_| run.call("read", json!({"path": "a.txt"}))))
            .await;
    let lost = burst
        .iter()
        .filter(|r| matches!(r, Ok((_, TaskEnd::Lost)) | Err(_)))
        .count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let doubled = run.watch.doubled();
    if !doubled.is_empty() {
        let some: Vec<_> = doubled.iter().take(3).collect();
        kit.fail(
            "one-result-per-delivery",
            format!(
                "{} (task, attempt) answered more than once, e.g. {some:?}",
                doubled.len()
            ),
        );
    } else if lost > 0 {
        let hint = run.log_hint();
        kit.fail(
            "one-result-per-delivery",
            format!("{lost} of 20 concurrent reads got no result{hint}"),
        );
    } else {
        kit.pass("one-result-per-delivery");
    }

    tools(kit, &run, served_read).await?;
    malformed(kit, &mut run).await?;
    late(kit, &run).await?;
    large(kit, &run).await?;
    Ok(())
}

/// One case per tool, with today's semantics (docs/protocol.md §7).
async fn tools(kit: &Kit, run: &Run, read: Option<TaskEnd>) -> anyhow::Result<()> {
    let check = |rule: &'static str, out: &TaskEnd, ok: bool| {
        if unserved(out) {
            kit.not_applicable(rule, "the worker does not serve this tool (UnknownTool)");
        } else if ok {
            kit.pass(rule);
        } else {
            kit.fail(rule, format!("unexpected outcome {}", out.describe()));
        }
    };
    let read = match read {
        Some(r) => r,
        None => run.call("read", json!({"path": "a.txt"})).await?.1,
    };
    let (_, window) = run
        .call("read", json!({"path": "a.txt", "offset": 2, "limit": 1}))
        .await?;
    let whole = matches!(&read, TaskEnd::Done(r) if r.success && r.result["content"] == "one\ntwo\nthree\n");
    let part = matches!(&window, TaskEnd::Done(r) if r.success && r.result == json!({"content": "two\n", "total_lines": 3, "start_line": 2, "end_line": 2, "truncated": true}));
    check(
        "tool-read",
        if whole { &window } else { &read },
        whole && part,
    );

    let (_, out) = run
        .call("write", json!({"path": "new/c.txt", "content": "héllo\n"}))
        .await?;
    let ok = matches!(&out, TaskEnd::Done(r) if r.success && r.result["bytes_written"] == 7)
        && std::fs::read_to_string(run.root().join("new/c.txt"))
            .ok()
            .as_deref()
            == Some("héllo\n");
    check("tool-write", &out, ok);

    let (_, out) = run
        .call(
            "edit",
            json!({"path": "b.txt", "old_string": "needle", "new_string": "pin"}),
        )
        .await?;
    let ok = matches!(&out, TaskEnd::Done(r) if r.success && r.result["replacements"] == 1)
        && std::fs::read_to_string(run.root().join("b.txt"))
            .ok()
            .as_deref()
            == Some("a pin here\n");
    check("tool-edit", &out, ok);
    std::fs::write(run.root().join("b.txt"), "a needle here\n")?;

    let (_, out) = run.call("ls", json!({})).await?;
    let names: Vec<String> = match &out {
        TaskEnd::Done(r) if r.success => r.result["entries"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let ok =
        names.iter().take(3).map(String::as_str).collect::<Vec<_>>() == ["a.txt", "b.txt", "new"];
    check("tool-ls", &out, ok);

    let (_, out) = run.call("glob", json!({"pattern": "*.txt"})).await?;
    let ok = matches!(&out, TaskEnd::Done(r) if r.success && r.result == json!({"paths": ["a.txt", "b.txt", "new/c.txt"], "truncated": false}));
    check("tool-glob", &out, ok);

    let (_, out) = run.call("grep", json!({"pattern": "needle"})).await?;
    let ok = matches!(&out, TaskEnd::Done(r) if r.success && r.result == json!({"matches": [{"path": "b.txt", "line": 1, "text": "a needle here"}], "truncated": false}));
    check("tool-grep", &out, ok);
    Ok(())
}

/// Garbage on the session's task subject, then a real task.
async fn malformed(kit: &Kit, run: &mut Run) -> anyhow::Result<()> {
    let Some((subject, _)) = run.watch.last_task() else {
        kit.fail(
            "malformed-input",
            "the kit saw no task envelope to learn the subject from",
        );
        return Ok(());
    };
    let js = async_nats::jetstream::new(run.watch.client.clone());
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not json".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"v\":2}".to_vec(),
        b"{\"v\":99,\"task_id\":\"x\"}".to_vec(),
        br#"{"v":2,"task_id":5,"session_id":[],"tenant":{},"hub":null}"#.to_vec(),
        vec![0xff; 64 * 1024],
    ];
    for g in garbage {
        js.publish(subject.clone(), g.into()).await?.await?;
    }
    let (_, out) = run.call("read", json!({"path": "a.txt"})).await?;
    let alive = run.alive();
    match (&out, alive) {
        (TaskEnd::Done(r), true) if r.success => kit.pass("malformed-input"),
        (_, false) => kit.fail(
            "malformed-input",
            format!("the worker exited{}", run.log_hint()),
        ),
        _ => kit.fail(
            "malformed-input",
            format!("a read after the garbage: {}", out.describe()),
        ),
    }
    Ok(())
}

/// A task envelope whose deadline has passed (`remaining_ms: 0`) must not run.
async fn late(kit: &Kit, run: &Run) -> anyhow::Result<()> {
    let Some((subject, mut env)) = run.watch.last_task() else {
        kit.fail("late-task-skipped", "the kit saw no task envelope to copy");
        return Ok(());
    };
    let task_id = format!("{}-late", env["task_id"].as_str().unwrap_or("t"));
    env["task_id"] = json!(task_id);
    env["command_type"] = json!("write");
    env["payload"] = json!({"path": "late.txt", "content": "ran late"});
    env["remaining_ms"] = json!(0);
    if let Some(obj) = env.as_object_mut() {
        obj.remove("payload_ref");
    }
    let js = async_nats::jetstream::new(run.watch.client.clone());
    js.publish(subject, serde_json::to_vec(&env)?.into())
        .await?
        .await?;
    // Long enough for a delivery, a run, and a redelivery after the lease.
    tokio::time::sleep(LEASE * 3).await;
    let ran = run.root().join("late.txt").exists();
    let succeeded = run
        .watch
        .results_for(&task_id)
        .iter()
        .any(|(_, kind)| kind == "result")
        && ran;
    if ran || succeeded {
        kit.fail(
            "late-task-skipped",
            "a task delivered past its deadline ran (late.txt was written)",
        );
    } else {
        kit.pass("late-task-skipped");
    }
    Ok(())
}

/// A payload and a result larger than the server's `max_payload`.
async fn large(kit: &Kit, run: &Run) -> anyhow::Result<()> {
    let max = run.watch.client.server_info().max_payload;
    let size = max + 100 * 1024;
    let content: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let (_, wrote) = run
        .call("write", json!({"path": "big.txt", "content": content}))
        .await?;
    if unserved(&wrote) {
        // Try the result direction alone with a file the kit writes.
        std::fs::write(run.root().join("big.txt"), &content)?;
    } else {
        let on_disk = std::fs::read_to_string(run.root().join("big.txt")).unwrap_or_default();
        if !matches!(&wrote, TaskEnd::Done(r) if r.success) || on_disk != content {
            kit.fail(
                "large-values",
                format!(
                    "a {size}-byte write payload (by reference): {}",
                    truncate(&wrote.describe())
                ),
            );
            return Ok(());
        }
    }
    let (_, read) = run.call("read", json!({"path": "big.txt"})).await?;
    if unserved(&read) {
        kit.not_applicable("large-values", "the worker serves neither read nor write");
        return Ok(());
    }
    match &read {
        TaskEnd::Done(r) if r.success && r.result["content"].as_str() == Some(content.as_str()) => {
            kit.pass("large-values")
        }
        other => kit.fail(
            "large-values",
            format!(
                "a {size}-byte read result (by reference): {}",
                truncate(&other.describe())
            ),
        ),
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

/// Tasks longer than the lease (bash): renewal, cancel, the bash tool itself.
async fn long_tasks(kit: &Kit) -> anyhow::Result<()> {
    let mut run = kit
        .setup(a3s_code_core::lane::RetryPolicy::default())
        .await?;
    let session = run.session.id().to_owned();
    kit.start_worker(&mut run, &session, &[("A3S_ALLOW_BASH", "1")])?;

    let (_, out) = run
        .call("bash", json!({"command": "echo hi; exit 3"}))
        .await?;
    if let TaskEnd::Lost = out {
        anyhow::bail!("a bash task got no outcome{}", run.log_hint());
    }
    if unserved(&out) {
        let why = "needs a task that runs longer than the lease; the worker does not run bash";
        kit.not_applicable("tool-bash", "the worker does not serve bash");
        kit.not_applicable("lease-renewal", why);
        kit.not_applicable("cancel", why);
        kit.not_applicable("taken-notice", why);
        return Ok(());
    }
    let ok = matches!(&out, TaskEnd::Done(r) if !r.success && r.result["exit_code"] == 3 && r.result["stdout"] == "hi\n");
    if ok {
        kit.pass("tool-bash");
    } else {
        kit.fail(
            "tool-bash",
            format!("unexpected outcome {}", out.describe()),
        );
    }

    // Three leases long.
    let t0 = Instant::now();
    let (id, out) = run
        .call("bash", json!({"command": "sleep 3; echo done"}))
        .await?;
    until(Duration::from_secs(2), || {
        !run.watch.results_for(&id).is_empty()
    })
    .await;
    let renewals = run
        .watch
        .since(t0)
        .iter()
        .filter(|s| matches!(s, Seen::Ack { kind } if kind == "+WPI"))
        .count();
    // Taken notices (a SHOULD, §13.4): a task held for 3 s is named, with attempt 1 and the
    // worker's id, before its result.
    let seen = run.watch.since(t0);
    let named = seen
        .iter()
        .position(|s| matches!(s, Seen::Taken { task_id, .. } if *task_id == id));
    let answered = seen
        .iter()
        .position(|s| matches!(s, Seen::Result { task_id, .. } if *task_id == id));
    match named.map(|at| (at, &seen[at])) {
        None => kit.fail(
            "taken-notice",
            format!("task {id}, held for 3 s, was never named on {}.taken.>", run.prefix),
        ),
        Some((at, _)) if answered.is_some_and(|r| r < at) => kit.fail(
            "taken-notice",
            format!("task {id} was named taken only after its result"),
        ),
        Some((_, Seen::Taken { attempt, worker_id, .. })) if *attempt != 1 || worker_id.is_empty() => {
            kit.fail(
                "taken-notice",
                format!(
                    "task {id} was named with attempt {attempt} and worker id {worker_id:?}, expected 1 and the worker's id"
                ),
            )
        }
        Some(_) => kit.pass("taken-notice"),
    }
    let results = run.watch.results_for(&id);
    match &out {
        TaskEnd::Done(r) if r.success && r.result["stdout"] == "done\n" => {
            if renewals == 0 {
                kit.fail(
                    "lease-renewal",
                    "no +WPI was sent during a 3 s task with a 1 s lease",
                );
            } else if distinct_attempts(&results) > 1 {
                kit.fail(
                    "lease-renewal",
                    format!("the task was delivered again while it ran: results {results:?}"),
                );
            } else {
                kit.pass("lease-renewal");
            }
        }
        other => kit.fail(
            "lease-renewal",
            format!("a 3 s task with a 1 s lease: {}", other.describe()),
        ),
    }

    // Cancel a running command: its process must go.
    let handle = run
        .session
        .submit(
            SessionLane::Query,
            "bash",
            json!({"command": "echo $$ > pid; sleep 30; touch done"}),
        )
        .await?;
    let pid_file = run.root().join("pid");
    if !until(Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty())
    })
    .await
    {
        kit.fail(
            "cancel",
            format!("the command did not start within 10 s{}", run.log_hint()),
        );
        return Ok(());
    }
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_owned();
    handle.cancel().await?;
    let gone = until(Duration::from_secs(5), || !process_alive(&pid)).await;
    if gone && !run.root().join("done").exists() {
        kit.pass("cancel");
    } else {
        kit.fail(
            "cancel",
            format!("process {pid} still ran 5 s after the cancel"),
        );
    }
    Ok(())
}

/// How many different attempts were answered (a redelivery shows as a second one).
fn distinct_attempts(results: &[(u64, String)]) -> usize {
    let mut attempts: Vec<u64> = results.iter().map(|(a, _)| *a).collect();
    attempts.sort_unstable();
    attempts.dedup();
    attempts.len()
}

/// Whether process `pid` is running (a zombie counts as ended).
fn process_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Takes one delivery of the next task and vanishes (no result, no renewal): the next delivery
/// has attempt 2.
async fn doomed_claim(run: &Run) -> anyhow::Result<()> {
    let doomed = WorkerClient::connect_with(
        run.nats.clone(),
        WorkerClientOptions::session(run.session.id()).with_lanes([SessionLane::Query]),
    )
    .await?;
    let got = doomed
        .claim_external_tasks(1, Duration::from_secs(10))
        .await?;
    anyhow::ensure!(got.len() == 1, "the kit's own first claim got nothing");
    drop(doomed);
    Ok(())
}

/// The second delivery of a task must be answered with attempt 2.
async fn attempts(kit: &Kit) -> anyhow::Result<()> {
    let mut run = kit
        .setup(a3s_code_core::lane::RetryPolicy::fixed(2, 0))
        .await?;
    std::fs::write(run.root().join("a.txt"), "x\n")?;
    let handle = run
        .session
        .submit(SessionLane::Query, "read", json!({"path": "a.txt"}))
        .await?;
    let id = handle.task_id().to_owned();
    doomed_claim(&run).await?;
    let session = run.session.id().to_owned();
    kit.start_worker(&mut run, &session, &[])?;
    let out = tokio::time::timeout(RESULT_WAIT, handle.result()).await;
    // The session may hear of the result a moment before the kit's watcher does.
    until(Duration::from_secs(2), || {
        !run.watch.results_for(&id).is_empty()
    })
    .await;
    // Answering twice is another rule's failure: each distinct answer counts once here.
    let mut results = run.watch.results_for(&id);
    results.dedup();
    match out {
        Ok(Ok(r)) if r.success => match results.as_slice() {
            [(2, _)] => kit.pass("attempt-numbers"),
            other => kit.fail(
                "attempt-numbers",
                format!("the second delivery was answered as {other:?} (attempt, kind); expected attempt 2"),
            ),
        },
        other => kit.fail(
            "attempt-numbers",
            format!("the task's second delivery: {other:?}{}", run.log_hint()),
        ),
    }
    Ok(())
}

/// A delivery past `max_attempts`: reported exhausted (stored first), not run, terminated.
async fn exhausted(kit: &Kit) -> anyhow::Result<()> {
    let mut run = kit.setup(a3s_code_core::lane::RetryPolicy::none()).await?;
    let handle = run
        .session
        .submit(
            SessionLane::Query,
            "write",
            json!({"path": "exhausted.txt", "content": "must not run"}),
        )
        .await?;
    let id = handle.task_id().to_owned();
    doomed_claim(&run).await?;
    let t0 = Instant::now();
    let session = run.session.id().to_owned();
    kit.start_worker(&mut run, &session, &[])?;
    let out = tokio::time::timeout(RESULT_WAIT, handle.result()).await;
    until(Duration::from_secs(2), || {
        run.watch
            .since(t0)
            .iter()
            .any(|s| matches!(s, Seen::Ack { kind } if kind.starts_with("+TERM")))
    })
    .await;
    let seen = run.watch.since(t0);
    let report = seen.iter().position(
        |s| matches!(s, Seen::Result { task_id, kind, attempt } if *task_id == id && kind == "exhausted" && *attempt == 2),
    );
    let term = seen
        .iter()
        .position(|s| matches!(s, Seen::Ack { kind } if kind.starts_with("+TERM")));
    let ran = run.root().join("exhausted.txt").exists();
    let code = match &out {
        Ok(Err(e)) => e.code().to_owned(),
        other => format!("{other:?}"),
    };
    match (report, term) {
        _ if ran => kit.fail("exhausted", "the exhausted task ran (exhausted.txt was written)"),
        _ if code != "RetriesExhausted" => kit.fail(
            "exhausted",
            format!("the session got {code}, not RetriesExhausted{}", run.log_hint()),
        ),
        (Some(r), Some(t)) if r < t => kit.pass("exhausted"),
        (Some(_), Some(_)) => kit.fail(
            "exhausted",
            "the message was terminated before the exhausted result was published (a crash in between loses the outcome)",
        ),
        (Some(_), None) => kit.fail("exhausted", "the exhausted delivery was never terminated (+TERM)"),
        (None, _) => kit.fail("exhausted", "no result of kind \"exhausted\" with attempt 2 was published"),
    }
    Ok(())
}

/// Labels: a worker with `region=eu` takes `region=eu` tasks and not `region=us` ones.
async fn labels(kit: &Kit) -> anyhow::Result<()> {
    let mut run = kit
        .setup(a3s_code_core::lane::RetryPolicy::default())
        .await?;
    std::fs::write(run.root().join("a.txt"), "x\n")?;
    let session = run.session.id().to_owned();
    kit.start_worker(&mut run, &session, &[("A3S_LABELS", "region=eu")])?;
    let (_, plain) = run.call("read", json!({"path": "a.txt"})).await?;
    if !matches!(&plain, TaskEnd::Done(r) if r.success) {
        kit.fail(
            "labels",
            format!("an unlabelled read: {}", plain.describe()),
        );
        return Ok(());
    }
    let (_, eu) = run
        .call_with(
            "read",
            json!({"path": "a.txt"}),
            SubmitOptions::new().with_label("region", "eu"),
            Duration::from_secs(10),
        )
        .await?;
    if !matches!(&eu, TaskEnd::Done(r) if r.success) {
        kit.not_applicable(
            "labels",
            format!(
                "a task requiring region=eu was not served ({}): labels not supported",
                eu.describe()
            ),
        );
        return Ok(());
    }
    let (_, us) = run
        .call_with(
            "read",
            json!({"path": "a.txt"}),
            SubmitOptions::new().with_label("region", "us"),
            Duration::from_secs(3),
        )
        .await?;
    match us {
        TaskEnd::Lost => kit.pass("labels"),
        other => kit.fail(
            "labels",
            format!(
                "a task requiring region=us was taken by a region=eu worker: {}",
                other.describe()
            ),
        ),
    }
    Ok(())
}

/// Pool mode: `SESSION_ID='*'` serves the session through its tenant's pool.
async fn pool_mode(kit: &Kit) -> anyhow::Result<()> {
    let mut run = kit
        .setup(a3s_code_core::lane::RetryPolicy::default())
        .await?;
    std::fs::write(run.root().join("a.txt"), "x\n")?;
    kit.start_worker(&mut run, "*", &[("A3S_TENANT", "default")])?;
    let (_, out) = run
        .call_with(
            "read",
            json!({"path": "a.txt"}),
            SubmitOptions::new(),
            Duration::from_secs(10),
        )
        .await?;
    match &out {
        TaskEnd::Done(r) if r.success => kit.pass("pool-mode"),
        TaskEnd::Lost => kit.not_applicable(
            "pool-mode",
            "nothing was served within 10 s with SESSION_ID='*': pool mode not supported",
        ),
        other => kit.fail(
            "pool-mode",
            format!("a read in pool mode: {}", other.describe()),
        ),
    }
    Ok(())
}

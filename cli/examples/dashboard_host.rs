//! A session on NATS that keeps its workers busy, for the dashboard's browser test and
//! screenshots (`tests/browser/`, `scripts/screenshots.sh`).
//!
//! ```text
//! dashboard_host --nats URL [--prefix P] [--tenant T] [--extra-sessions N] --workspace DIR
//! ```
//!
//! Prints `SESSION_ID=<id>` once the broker is ready, then submits without end (until killed
//! or stdin closes): `read`s on Query (some of a missing file, which fail), short `bash` on
//! Execute, a `sleep 30` now and then (to cancel), and a `bash` with a timeout shorter than
//! its run, which dies into the dead-letter queue (and completes when retried, under the lane's
//! own timeout). `--extra-sessions N` opens N more sessions, of other tenants and with no worker
//! of their own, whose backlog grows slowly (for the screenshots' sessions page).

use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::{LaneHandlerConfig, SessionLane, SubmitOptions, TaskHandlerMode};
use a3s_code_core::{Agent, AgentConfig, AgentSession, SessionOptions, SessionQueueConfig};
use anyhow::Context;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut nats, mut prefix, mut tenant, mut workspace) = (None, "a3s".to_owned(), None, None);
    let mut extra_sessions = 0;
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nats" => nats = Some(value),
            "--prefix" => prefix = value,
            "--tenant" => tenant = Some(value),
            "--workspace" => workspace = Some(value),
            "--extra-sessions" => extra_sessions = value.parse()?,
            _ => anyhow::bail!("unknown option {flag}"),
        }
    }
    let (nats, workspace) = (
        nats.context("--nats URL")?,
        workspace.context("--workspace DIR")?,
    );
    std::fs::write(
        std::path::Path::new(&workspace).join("notes.txt"),
        "the dashboard's test file\n",
    )?;

    let external = |timeout_ms| LaneHandlerConfig {
        mode: TaskHandlerMode::External,
        timeout_ms,
    };
    let config = SessionQueueConfig {
        query_max_concurrency: 4,
        execute_max_concurrency: 8,
        max_pending: 2_000,
        enable_metrics: true,
        enable_dlq: true,
        finished_history: 200,
        lane_handlers: [
            (SessionLane::Query, external(30_000)),
            (SessionLane::Execute, external(60_000)),
        ]
        .into(),
        ..Default::default()
    };
    let open = |tenant: Option<&str>| -> anyhow::Result<AgentSession> {
        let mut options = SessionOptions::new()
            .with_queue_config(config.clone())
            .with_nats(NatsConfig::new(&nats).with_prefix(&prefix));
        if let Some(t) = tenant {
            options = options.with_tenant(t, 1.0)?;
        }
        Ok(Agent::from_config(AgentConfig::default()).session(&workspace, Some(options))?)
    };
    let session = open(tenant.as_deref())?;
    session.broker_ready(Duration::from_secs(20)).await?;
    let mut others = Vec::new();
    for i in 0..extra_sessions {
        let other = open(Some(["acme", "globex", "initech"][i % 3]))?;
        other.broker_ready(Duration::from_secs(20)).await?;
        others.push(other);
    }
    println!("SESSION_ID={}", session.id());

    let every = |ms, lane, command: &'static str, payload: Value, timeout_ms: Option<u64>| {
        every_on(session.clone(), ms, lane, command, payload, timeout_ms)
    };
    let mut loops = vec![
        every(
            150,
            SessionLane::Query,
            "read",
            json!({ "path": "notes.txt" }),
            None,
        ),
        every(
            2_000,
            SessionLane::Query,
            "read",
            json!({ "path": "missing.txt" }),
            None,
        ),
        every(
            400,
            SessionLane::Execute,
            "bash",
            json!({ "command": "sleep 0.5; echo done" }),
            None,
        ),
        every(
            3_000,
            SessionLane::Execute,
            "bash",
            json!({ "command": "sleep 3; echo slow" }),
            Some(800),
        ),
        every(
            15_000,
            SessionLane::Execute,
            "bash",
            json!({ "command": "sleep 30" }),
            None,
        ),
    ];
    for (i, other) in others.iter().enumerate() {
        let path = json!({ "path": "notes.txt" });
        loops.push(every_on(
            other.clone(),
            700 + 300 * i as u64,
            SessionLane::Query,
            "read",
            path,
            None,
        ));
    }
    // Until stdin closes (the test's end) or the process is killed.
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    for l in loops {
        l.abort();
    }
    for s in others {
        s.close().await;
    }
    session.close().await;
    Ok(())
}

/// Submits a task to `session` every `ms` milliseconds.
fn every_on(
    session: AgentSession,
    ms: u64,
    lane: SessionLane,
    command: &'static str,
    payload: Value,
    timeout_ms: Option<u64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(ms));
        loop {
            tick.tick().await;
            submit(&session, lane, command, payload.clone(), timeout_ms).await;
        }
    })
}

async fn submit(
    session: &AgentSession,
    lane: SessionLane,
    command: &str,
    payload: Value,
    timeout_ms: Option<u64>,
) {
    let mut options = SubmitOptions::new();
    if let Some(ms) = timeout_ms {
        options = options.with_timeout_ms(ms);
    }
    // The handle is dropped: the task runs on, its outcome shows in the dashboard. A full
    // backlog (a paused lane) refuses more, which is fine here.
    let _ = session.submit_with(lane, command, payload, options).await;
}

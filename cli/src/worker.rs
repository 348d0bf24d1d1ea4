//! `a3s-code worker`: runs the built-in tools for sessions on other machines, over NATS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::queue::SessionLane;
use a3s_code_core::tools::Workspace;
use a3s_code_core::worker::{
    Executor, Worker, WorkerClient, WorkerClientOptions, WorkerConfig, builtin_handler,
};
use a3s_code_core::{ExternalTask, ExternalTaskResult};
use anyhow::{Context, bail};

#[derive(clap::Args)]
pub(crate) struct WorkerArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "A3S_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The session to serve, or '*' for every session (a pool worker).
    #[arg(long, env = "SESSION_ID")]
    session_id: String,
    /// With --session-id '*': serve only this tenant's sessions (default: every tenant, the
    /// shared fleet). With one session: the session's tenant, as a credential confined to it
    /// requires (otherwise learned from the session).
    #[arg(long, env = "A3S_TENANT")]
    tenant: Option<String>,
    /// Lanes to serve, comma-separated (control, query, execute, generate).
    #[arg(
        long,
        env = "A3S_LANES",
        value_delimiter = ',',
        default_value = "control,query,execute,generate"
    )]
    lanes: Vec<String>,
    /// Tasks run at once (its slots).
    #[arg(long, env = "A3S_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// Directory the built-in tools are confined to.
    #[arg(long, env = "A3S_WORKSPACE", default_value = ".")]
    workspace: PathBuf,
    /// This worker's labels (k=v,k=v); it takes tasks that require no label or labels it has.
    #[arg(long, env = "A3S_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Allow the bash tool (off by default).
    #[arg(
        long,
        env = "A3S_ALLOW_BASH",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    allow_bash: bool,
    /// The most of one file a tool holds in memory: `edit` refuses larger files, `read` returns
    /// at most this much content (default 16 MiB).
    #[arg(long, env = "A3S_MAX_FILE_BYTES", default_value_t = 16 << 20)]
    max_file_bytes: u64,
    /// Id reported with results (default: random).
    #[arg(long, env = "A3S_WORKER_ID")]
    worker_id: Option<String>,
    /// Subject and stream prefix (must match the session's).
    #[arg(long, env = "A3S_NATS_PREFIX", default_value = "a3s")]
    prefix: String,
    /// Lease on a task before it is delivered elsewhere: the worker learns the consumers' own
    /// lease (set by the sessions) and renews at a third of the shorter of the two.
    #[arg(long, env = "A3S_LEASE_MS", default_value_t = 10_000)]
    lease_ms: u64,
    /// Token authentication.
    #[arg(long, env = "A3S_NATS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    auth: crate::nats_args::NatsAuthArgs,
    /// Serve /metrics (Prometheus) and /healthz (200 while connected to NATS, waiting for work
    /// included; the body says `waiting`, `serving` or `draining`) on this address,
    /// e.g. 0.0.0.0:9465.
    #[arg(long, env = "A3S_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Drain and exit 0 when the session says it closed (with one --session-id: a container or
    /// Job per session ends with its session). A session whose process died says nothing.
    #[arg(
        long,
        env = "A3S_EXIT_WHEN_CLOSED",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    exit_when_closed: bool,
    /// Complete every task at once with an empty result instead of running it (for measuring
    /// the transport).
    #[arg(long, hide = true)]
    noop: bool,
}

impl WorkerArgs {
    fn nats_config(&self) -> anyhow::Result<NatsConfig> {
        let cfg = NatsConfig::new(&self.nats)
            .with_prefix(&self.prefix)
            .with_lease(Duration::from_millis(self.lease_ms))
            .with_name(format!(
                "a3s-code worker {}",
                self.worker_id.as_deref().unwrap_or("")
            ));
        self.auth.apply(cfg, self.token.as_deref())
    }

    fn remote_options(&self) -> anyhow::Result<WorkerClientOptions> {
        let mut opts = match self.session_id.as_str() {
            "*" => WorkerClientOptions::pool(),
            id => WorkerClientOptions::session(id),
        };
        let lanes = self
            .lanes
            .iter()
            .map(|l| l.trim().parse::<SessionLane>())
            .collect::<Result<Vec<_>, _>>()?;
        opts = opts.with_lanes(lanes);
        let mut labels = BTreeMap::new();
        for kv in &self.labels {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("label {kv:?} is not key=value")
            };
            labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        for (k, v) in labels {
            opts = opts.with_label(k, v);
        }
        if let Some(id) = &self.worker_id {
            opts = opts.with_worker_id(id);
        }
        if let Some(t) = &self.tenant {
            opts = opts.with_tenant(t);
        }
        Ok(opts)
    }
}

pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if args.exit_when_closed && args.session_id == "*" {
        bail!(
            "--exit-when-closed needs one --session-id: a pool worker ('*') serves sessions that \
             open and close all the time"
        );
    }
    let workspace = Workspace::new(&args.workspace)
        .with_context(|| format!("workspace {}", args.workspace.display()))?
        .with_bash(args.allow_bash)
        .with_max_file_bytes(args.max_file_bytes);
    let options = args.remote_options()?;
    let lanes: Vec<&str> = options.lanes.iter().map(|l| l.as_str()).collect();
    let remote = WorkerClient::connect_with(args.nats_config()?, options.clone())
        .await
        .with_context(|| format!("connecting to {}", args.nats))?;
    tracing::info!(
        worker = remote.worker_id(),
        session = %args.session_id,
        tenant = args.tenant.as_deref().unwrap_or("*"),
        lanes = %lanes.join(","),
        concurrency = args.concurrency,
        workspace = %workspace.root().display(),
        bash = args.allow_bash,
        "worker ready"
    );
    let executor = if args.noop {
        Executor::from(|_task: ExternalTask| async {
            ExternalTaskResult::ok(serde_json::json!({}))
        })
    } else {
        builtin_handler(workspace)
    };
    let worker = Worker::spawn(
        Arc::new(remote.clone()),
        executor,
        WorkerConfig {
            concurrency: args.concurrency.max(1),
            ..Default::default()
        },
    );
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let server = worker
                .serve_metrics(addr)
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(addr = %server.local_addr(), "serving /metrics and /healthz");
            Some(server)
        }
        None => None,
    };
    let session_closed = async {
        match args.exit_when_closed {
            true => remote.session_closed().await,
            false => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown_signal() => {}
        () = session_closed => tracing::info!(session = %args.session_id, "the session closed"),
    }
    tracing::info!("draining: finishing running tasks, taking no new ones");
    let stats = worker.shutdown().await;
    remote.close().await;
    drop(metrics);
    tracing::info!(
        claimed = stats.claimed,
        succeeded = stats.succeeded,
        failed = stats.failed,
        rejected = stats.rejected,
        "worker stopped"
    );
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

//! `a3s-code`: run the lane queue and its workers from the command line.

use clap::{Parser, Subcommand};

mod auth;
mod bench;
mod conformance;
mod dashboard;
mod demo;
mod nats_args;
#[cfg(feature = "otel")]
mod otel;
mod run;
mod server;
mod stats;
mod worker;

/// a3s-code: a per-session priority lane queue for an AI coding agent's tool calls, with
/// workers in process or on other machines.
#[derive(Parser)]
#[command(name = "a3s-code", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Search a directory with in-process External workers (no broker needed) and show the
    /// queue's stats and metrics.
    Demo(demo::DemoArgs),
    /// Run a prompt through the agent loop (model from --config), showing tool calls as they go.
    Run(run::RunArgs),
    /// Run the built-in tools for sessions on other machines, over NATS JetStream.
    Worker(worker::WorkerArgs),
    /// Benchmarks (results in docs/PERFORMANCE.md).
    Bench(bench::BenchArgs),
    /// A live view of a session's lanes and workers: from their /metrics endpoints
    /// (--metrics URL) and/or from NATS (--nats URL --session-id ID); --json for scripts.
    Stats(stats::StatsArgs),
    /// Credentials: `auth permissions --role worker --tenant T` prints the nats-server
    /// permissions of a role.
    Auth(auth::AuthArgs),
    /// Check a worker of any language against docs/protocol.md's rules:
    /// `a3s-code conformance -- <command that starts the worker>`.
    Conformance(conformance::ConformanceArgs),
    /// A web page to see and steer the sessions of a NATS deployment: lanes, tasks, dead
    /// letters, workers (`--listen`, `--read-only`, `--token NAME=SECRET`).
    Dashboard(dashboard::DashboardArgs),
}

fn main() -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let cli = Cli::parse();
    // The conformance kit's report is its output: its own session's logs stay quiet.
    let default_level = match cli.command {
        Command::Conformance(_) => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("A3S_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let layers = vec![
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    ];
    // Task traces to an OpenTelemetry collector (OTEL_EXPORTER_OTLP_ENDPOINT).
    #[cfg(feature = "otel")]
    let (layers, otel) = {
        let mut layers = layers;
        let guard = otel::init().map(|(layer, guard)| {
            layers.push(layer);
            guard
        });
        (layers, guard)
    };
    tracing_subscriber::registry().with(layers).init();
    // A worker's runtime only moves messages (the tools run on the blocking pool, bash in its
    // own process): one thread does that with fewer wake-ups and context switches.
    let runtime = match cli.command {
        Command::Worker(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    let out = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Stats(args) => stats::run(args).await,
            Command::Auth(args) => auth::run(args),
            Command::Conformance(args) => conformance::run(args).await,
            Command::Dashboard(args) => dashboard::run(args).await,
        }
    });
    #[cfg(feature = "otel")]
    drop(otel);
    out
}

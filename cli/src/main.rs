//! `a3s-code`: run the lane queue and its workers from the command line.

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod run;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("A3S_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    })
}

//! `a3s-code dashboard`: a web page to see and steer sessions, lanes, tasks, dead letters and
//! workers, over the admin API (`a3s_code_core::admin`).
//!
//! One listener serves the page (plain HTML/JS/CSS embedded in the binary), its JSON API, a
//! server-sent event stream of the viewed data, `/metrics` (the fleet's worker demand) and
//! `/healthz`. Who may call it (tokens, loopback names, no request from another site) is
//! [`guard`]'s; which actions are refused (`--read-only`, viewer credentials) is [`http`]'s.

mod guard;
mod history;
mod http;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use a3s_code_core::admin::AdminClient;
use anyhow::{Context, bail};

use crate::nats_args::NatsArgs;

#[derive(clap::Args)]
pub(crate) struct DashboardArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Where to serve the page. An address other than loopback needs at least one --token.
    #[arg(long, env = "A3S_DASHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Show everything, act on nothing: no action buttons, every action endpoint answers 403.
    #[arg(long)]
    read_only: bool,
    /// An access token, NAME=SECRET (repeatable): the page asks for a secret, `Authorization:
    /// Bearer SECRET` works for scripts, and actions are logged with NAME.
    #[arg(
        long = "token",
        value_name = "NAME=SECRET",
        env = "A3S_DASHBOARD_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// Show only this tenant's sessions, processes and workers.
    #[arg(long, env = "A3S_TENANT")]
    tenant: Option<String>,
}

/// How a dashboard serves: who may use it and what it may do.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// No actions at all.
    pub(crate) read_only: bool,
    /// `(name, secret)`: without any, only loopback addresses may be served, to "local".
    pub(crate) tokens: Vec<(String, String)>,
    /// Only this tenant.
    pub(crate) tenant: Option<String>,
    /// What the header shows as the source (`nats://...`, `this process`).
    pub(crate) source: String,
    /// The sessions are those of a NATS deployment (else: of this process).
    pub(crate) remote: bool,
}

impl Options {
    /// Parses `--token NAME=SECRET` values.
    pub(crate) fn with_tokens(mut self, tokens: &[String]) -> anyhow::Result<Self> {
        for t in tokens {
            let Some((name, secret)) = t.split_once('=') else {
                bail!("--token {t:?} is not NAME=SECRET");
            };
            let (name, secret) = (name.trim(), secret.trim());
            if name.is_empty() || secret.len() < 8 {
                bail!(
                    "--token {name}=...: the name must not be empty and the secret must have 8 characters or more"
                );
            }
            if self.tokens.iter().any(|(n, s)| n == name || s == secret) {
                bail!("--token {name}=...: two tokens share a name or a secret");
            }
            self.tokens.push((name.to_owned(), secret.to_owned()));
        }
        Ok(self)
    }
}

/// A running dashboard; it stops when dropped.
pub(crate) struct Dashboard {
    local_addr: SocketAddr,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Dashboard {
    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds `addr` and serves the dashboard of `admin` on it.
///
/// # Errors
///
/// When `addr` is not a loopback address and no token is given, or it cannot be bound.
pub(crate) async fn serve(
    admin: AdminClient,
    addr: SocketAddr,
    options: Options,
) -> anyhow::Result<Dashboard> {
    if !addr.ip().is_loopback() && options.tokens.is_empty() {
        bail!(
            "--listen {addr} is reachable from other machines: give it at least one \
             --token NAME=SECRET (or listen on 127.0.0.1)"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local_addr = listener.local_addr()?;
    let app = Arc::new(http::App::new(admin, options));
    let sampler = tokio::spawn(history::sample(app.clone()));
    let router = http::router(app);
    let server = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::warn!(error = %err, "the dashboard stopped");
        }
    });
    Ok(Dashboard {
        local_addr,
        tasks: vec![server.abort_handle(), sampler.abort_handle()],
    })
}

pub(crate) async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let config = args.nats.config("a3s-code dashboard")?;
    let url = args.nats.url().to_owned();
    let admin = AdminClient::connect_tenant(config, args.tenant.as_deref())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let options = Options {
        read_only: args.read_only,
        tenant: args.tenant.clone(),
        source: url,
        remote: true,
        ..Default::default()
    }
    .with_tokens(&args.tokens)?;
    let (read_only, tokens) = (options.read_only, options.tokens.len());
    let dashboard = serve(admin, args.listen, options).await?;
    tracing::info!(
        url = %format!("http://{}/", dashboard.local_addr()),
        read_only,
        tokens,
        "dashboard ready"
    );
    println!("dashboard: http://{}/", dashboard.local_addr());
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

#[cfg(test)]
mod tests;

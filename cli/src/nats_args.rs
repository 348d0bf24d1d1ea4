//! The NATS credential and TLS options every command that connects shares (`worker`,
//! `dashboard`, `stats`), as `a3s-code auth permissions` describes them. Each command adds its URL,
//! prefix and token flags itself (the dashboard's `--token` is its own access token).

use std::path::PathBuf;

use a3s_code_core::broker::{NatsConfig, NatsTls};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct NatsAuthArgs {
    /// The prefix of reply inboxes (what `a3s-code auth permissions` prints for the
    /// credential; default `_INBOX`).
    #[arg(long, env = "A3S_NATS_INBOX_PREFIX")]
    inbox_prefix: Option<String>,
    /// User for user/password authentication.
    #[arg(long, env = "A3S_NATS_USER")]
    user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "A3S_NATS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// NKey seed authentication.
    #[arg(long, env = "A3S_NATS_NKEY", hide_env_values = true)]
    nkey: Option<String>,
    /// A .creds file (JWT + NKey).
    #[arg(long, env = "A3S_NATS_CREDS")]
    creds: Option<PathBuf>,
    /// CA certificates (PEM) to trust for TLS.
    #[arg(long, env = "A3S_NATS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for TLS.
    #[arg(long, env = "A3S_NATS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for TLS.
    #[arg(long, env = "A3S_NATS_KEY")]
    tls_key: Option<PathBuf>,
}

impl NatsAuthArgs {
    /// `cfg` with these credentials (a `token` wins over them), TLS and inbox prefix, checked.
    pub(crate) fn apply(
        &self,
        mut cfg: NatsConfig,
        token: Option<&str>,
    ) -> anyhow::Result<NatsConfig> {
        cfg = match (token, &self.user, &self.nkey, &self.creds) {
            (Some(t), ..) => cfg.with_token(t),
            (_, Some(u), ..) => {
                cfg.with_user_password(u, self.password.clone().unwrap_or_default())
            }
            (_, _, Some(k), _) => cfg.with_nkey(k),
            (.., Some(c)) => cfg.with_credentials_file(c),
            _ => cfg,
        };
        if self.tls_ca.is_some() || self.tls_cert.is_some() {
            cfg = cfg.with_tls(NatsTls {
                ca_file: self.tls_ca.clone(),
                client_cert: self.tls_cert.clone(),
                client_key: self.tls_key.clone(),
            });
        }
        if let Some(p) = &self.inbox_prefix {
            cfg = cfg.with_inbox_prefix(p);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The NATS options of a client that reads and acts on sessions (the dashboard): URL, prefix,
/// token (`--nats-token`) and the shared credentials.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long = "nats", env = "A3S_NATS_URL", value_name = "URL")]
    url: String,
    /// Subject and stream prefix (must match the sessions').
    #[arg(long, env = "A3S_NATS_PREFIX", default_value = "a3s")]
    prefix: String,
    /// NATS token authentication.
    #[arg(long, env = "A3S_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    #[command(flatten)]
    auth: NatsAuthArgs,
}

impl NatsArgs {
    /// The server URL(s).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The connection's configuration, named `name` on the server.
    pub(crate) fn config(&self, name: &str) -> anyhow::Result<NatsConfig> {
        let cfg = NatsConfig::new(&self.url)
            .with_prefix(&self.prefix)
            .with_name(name);
        self.auth.apply(cfg, self.nats_token.as_deref())
    }
}

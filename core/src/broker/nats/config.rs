//! Connection settings for NATS, shared by sessions and workers.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::wire::{DeliveryMode, Names};
use crate::error::{Error, Result};
use crate::queue::SessionLane;

/// How to authenticate to NATS.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (or credentials in the URL: `nats://user:pass@host:4222`).
    #[default]
    None,
    /// A token.
    Token(String),
    /// A user and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// An NKey seed (`SU...`).
    NKey(String),
    /// A `.creds` file (JWT + NKey seed), as issued by `nsc`.
    CredentialsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: <redacted> }}")
            }
            NatsAuth::NKey(_) => f.write_str("NKey(<redacted>)"),
            NatsAuth::CredentialsFile(p) => write!(f, "CredentialsFile({})", p.display()),
        }
    }
}

/// TLS settings. Connecting to a `tls://` URL, or setting any of these, turns TLS on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// A PEM file of CA certificates to trust (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate, for servers that verify clients.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    pub client_key: Option<PathBuf>,
}

/// Where and how to reach NATS JetStream, and the names and limits of what the session creates
/// there.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use a3s_code_core::broker::NatsConfig;
/// use a3s_code_core::queue::SessionLane;
///
/// let cfg = NatsConfig::new("nats://10.0.0.5:4222,nats://10.0.0.6:4222")
///     .with_prefix("build")
///     .with_token("s3cret")
///     .with_lease(Duration::from_secs(5))
///     .with_replicas(3)
///     .with_at_most_once(SessionLane::Execute);
/// assert_eq!(cfg.servers.len(), 2);
/// assert!(cfg.validate().is_ok());
/// assert!(cfg.clone().with_replicas(0).validate().is_err());
/// assert!(cfg.clone().with_duplicate_window(Duration::ZERO).validate().is_err());
/// assert!(!format!("{cfg:?}").contains("s3cret"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    /// Server URLs (`nats://`, `tls://`); several for a cluster.
    pub servers: Vec<String>,
    /// The first token of every subject, and of stream names (default `a3s`).
    pub prefix: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS, if any.
    pub tls: Option<NatsTls>,
    /// A worker's lease on a task (JetStream `AckWait`). Workers renew it every third of it while
    /// the task runs, so a dead worker's task comes back after at most this long (default 10 s).
    pub lease: Duration,
    /// Oldest task or result a stream keeps (default 24 h).
    pub stream_max_age: Duration,
    /// Bytes a stream may hold; beyond it publishing fails rather than dropping tasks (default 1 GiB).
    pub stream_max_bytes: i64,
    /// Consumers nobody pulled from for this long are deleted by the server (default 1 h).
    pub inactive_threshold: Duration,
    /// Per-lane acknowledgement mode (default at least once).
    pub lane_delivery: HashMap<SessionLane, DeliveryMode>,
    /// Client name shown by the server's monitoring.
    pub name: Option<String>,
    /// Largest payload (a task's `payload`, a result's `result`, as JSON) that may travel through
    /// the object store when it does not fit in a message (default 64 MiB). A session refuses to
    /// submit a larger payload, and a worker to report a larger result, with
    /// [`Error::PayloadTooLarge`].
    pub max_object_bytes: usize,
    /// Copies JetStream keeps of each stream the session creates (tasks, results, dead letters,
    /// the object store bucket), 1 to 5 (default 1). On a cluster, 3 survive the loss of a
    /// server; consumers inherit their stream's count. A stream that already exists keeps its
    /// own.
    pub replicas: usize,
    /// How long the task and result streams the session creates remember a message id, so that
    /// a publish retried after a lost acknowledgement is stored once (default 20 s). The server
    /// keeps one entry per message for this long: at thousands of tasks per second a long window
    /// costs it memory and garbage-collection pauses (2 minutes at 4 000 tasks/s: ~85 MB of live
    /// heap and 150 ms collections every 1.3 s on nats-server 2.9). A task re-published after
    /// the window may run twice; it still completes once (the session applies the first result).
    pub duplicate_window: Duration,
    /// The subject prefix of this client's reply inboxes (default `_INBOX`). A worker credential
    /// confined to one tenant may subscribe only to its own inboxes: give its clients the prefix
    /// `a3s-code auth permissions` prints for it (`_INBOX_W.<tenant>`), so no credential can read
    /// the replies (task deliveries, acknowledgements) meant for another.
    pub inbox_prefix: String,
}

impl NatsConfig {
    /// Settings for `url`: one server, or several separated by commas.
    pub fn new(url: impl AsRef<str>) -> Self {
        Self {
            servers: url
                .as_ref()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            prefix: "a3s".to_owned(),
            auth: NatsAuth::None,
            tls: None,
            lease: Duration::from_secs(10),
            stream_max_age: Duration::from_secs(24 * 3600),
            stream_max_bytes: 1 << 30,
            inactive_threshold: Duration::from_secs(3600),
            lane_delivery: HashMap::new(),
            name: None,
            max_object_bytes: 64 << 20,
            replicas: 1,
            duplicate_window: Duration::from_secs(20),
            inbox_prefix: "_INBOX".to_owned(),
        }
    }

    /// Settings from the environment: `A3S_NATS_URL` (required), and optionally
    /// `A3S_NATS_PREFIX`, `A3S_NATS_INBOX_PREFIX`, `A3S_NATS_REPLICAS`, `A3S_NATS_TOKEN`, `A3S_NATS_USER` + `A3S_NATS_PASSWORD`,
    /// `A3S_NATS_NKEY`, `A3S_NATS_CREDS`, `A3S_NATS_CA`, `A3S_NATS_CERT` + `A3S_NATS_KEY`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `A3S_NATS_URL` is not set or `A3S_NATS_REPLICAS` is not a
    /// number.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url =
            var("A3S_NATS_URL").ok_or_else(|| Error::invalid_config("A3S_NATS_URL is not set"))?;
        let mut cfg = Self::new(url);
        if let Some(p) = var("A3S_NATS_PREFIX") {
            cfg.prefix = p;
        }
        if let Some(p) = var("A3S_NATS_INBOX_PREFIX") {
            cfg.inbox_prefix = p;
        }
        if let Some(r) = var("A3S_NATS_REPLICAS") {
            cfg.replicas = r.parse().map_err(|_| {
                Error::invalid_config(format!("A3S_NATS_REPLICAS={r:?} is not a number"))
            })?;
        }
        cfg.auth = match (
            var("A3S_NATS_TOKEN"),
            var("A3S_NATS_USER"),
            var("A3S_NATS_NKEY"),
            var("A3S_NATS_CREDS"),
        ) {
            (Some(t), ..) => NatsAuth::Token(t),
            (_, Some(user), ..) => NatsAuth::UserPassword {
                user,
                password: var("A3S_NATS_PASSWORD").unwrap_or_default(),
            },
            (_, _, Some(seed), _) => NatsAuth::NKey(seed),
            (.., Some(path)) => NatsAuth::CredentialsFile(path.into()),
            _ => NatsAuth::None,
        };
        let (ca, cert, key) = (
            var("A3S_NATS_CA"),
            var("A3S_NATS_CERT"),
            var("A3S_NATS_KEY"),
        );
        if ca.is_some() || cert.is_some() {
            cfg.tls = Some(NatsTls {
                ca_file: ca.map(Into::into),
                client_cert: cert.map(Into::into),
                client_key: key.map(Into::into),
            });
        }
        Ok(cfg)
    }

    /// Sets the subject and stream prefix (one token; default `a3s`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Authenticates with a token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.auth = NatsAuth::Token(token.into());
        self
    }

    /// Authenticates with a user and password.
    pub fn with_user_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.auth = NatsAuth::UserPassword {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Authenticates with an NKey seed.
    pub fn with_nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = NatsAuth::NKey(seed.into());
        self
    }

    /// Authenticates with a `.creds` file.
    pub fn with_credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = NatsAuth::CredentialsFile(path.into());
        self
    }

    /// Uses TLS with these files.
    pub fn with_tls(mut self, tls: NatsTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the lease (JetStream `AckWait`).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Makes a lane at-most-once: workers acknowledge before running, so a crash fails the task
    /// (at its timeout) instead of running it twice.
    pub fn with_at_most_once(mut self, lane: SessionLane) -> Self {
        self.lane_delivery.insert(lane, DeliveryMode::AtMostOnce);
        self
    }

    /// Sets the largest payload or result that may go through the object store.
    pub fn with_max_object_bytes(mut self, bytes: usize) -> Self {
        self.max_object_bytes = bytes;
        self
    }

    /// Sets how many copies of each stream the session creates (1 to 5; 3 on a three-server
    /// cluster survives losing one).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets how long the streams the session creates deduplicate retried publishes (at least
    /// 100 ms, at most `stream_max_age`).
    pub fn with_duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets the prefix of this client's reply inboxes (see [`inbox_prefix`](Self::inbox_prefix)).
    pub fn with_inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = prefix.into();
        self
    }

    /// Sets the client name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The acknowledgement mode of a lane.
    pub fn delivery(&self, lane: SessionLane) -> DeliveryMode {
        self.lane_delivery.get(&lane).copied().unwrap_or_default()
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for no server, a bad prefix, a lease under 1 s, a non-positive
    /// limit, replicas outside 1 to 5, or a duplicate window under 100 ms or beyond
    /// `stream_max_age`.
    pub fn validate(&self) -> Result<Names> {
        if self.servers.is_empty() {
            return Err(Error::invalid_config("NATS: no server URL given"));
        }
        crate::broker::check_server_urls(&self.servers.join(","))
            .map_err(|e| Error::invalid_config(format!("NATS: {e}")))?;
        if self.lease < Duration::from_secs(1) {
            return Err(Error::invalid_config("NATS: lease must be at least 1 s"));
        }
        if self.stream_max_bytes <= 0
            || self.stream_max_age.is_zero()
            || self.inactive_threshold.is_zero()
            || self.max_object_bytes == 0
        {
            return Err(Error::invalid_config(
                "NATS: stream_max_bytes, stream_max_age, inactive_threshold and max_object_bytes \
                 must be positive",
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::invalid_config(format!(
                "NATS: replicas must be 1 to 5, not {}",
                self.replicas
            )));
        }
        if self.duplicate_window < Duration::from_millis(100)
            || self.duplicate_window > self.stream_max_age
        {
            return Err(Error::invalid_config(format!(
                "NATS: duplicate_window must be from 100 ms to stream_max_age, not {:?}",
                self.duplicate_window
            )));
        }
        if self.inbox_prefix.is_empty()
            || self
                .inbox_prefix
                .split('.')
                .any(|t| !super::super::wire::is_token(t))
        {
            return Err(Error::invalid_config(format!(
                "NATS: inbox_prefix {:?} must be subject tokens of letters, digits, '-' or '_'",
                self.inbox_prefix
            )));
        }
        Names::new(&self.prefix)
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] when no server answers or the credentials are refused,
    /// [`Error::InvalidConfig`] for unreadable credential files or bad URLs.
    pub(crate) async fn connect(&self) -> Result<async_nats::Client> {
        Ok(self.connect_watched().await?.0)
    }

    /// Connects, with a counter that moves on every reconnection (not on the first connection):
    /// subscriptions survive a reconnect, but pull requests the server held are gone and must be
    /// asked again.
    pub(crate) async fn connect_watched(
        &self,
    ) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>)> {
        self.connect_observed(None).await
    }

    /// [`connect_watched`](Self::connect_watched), also keeping the server's permission
    /// violations (its `-ERR 'Permissions Violation ...'`, which fail no call) in `violations`
    /// (the latest 16).
    pub(crate) async fn connect_observed(
        &self,
        violations: Option<Arc<parking_lot::Mutex<std::collections::VecDeque<String>>>>,
    ) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>)> {
        self.validate()?;
        let (connected_tx, connected_rx) = tokio::sync::watch::channel(0u64);
        let mut opts = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
            NatsAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            NatsAuth::CredentialsFile(path) => {
                async_nats::ConnectOptions::with_credentials_file(path)
                    .await
                    .map_err(|e| {
                        Error::invalid_config(format!(
                            "NATS credentials file {}: {e}",
                            path.display()
                        ))
                    })?
            }
        };
        if let Some(tls) = &self.tls {
            opts = opts.require_tls(true);
            if let Some(ca) = &tls.ca_file {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
        opts = opts
            .name(self.name.clone().unwrap_or_else(|| "a3s-code".to_owned()))
            .custom_inbox_prefix(self.inbox_prefix.clone())
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .max_reconnects(None)
            .event_callback(move |event| {
                match &event {
                    // The first connection's event may come after `connect` returned and the
                    // caller looked: only reconnections move the counter its callers see.
                    async_nats::Event::Connected => {
                        connected_tx.send_if_modified(|n| {
                            *n += 1;
                            *n > 1
                        });
                    }
                    async_nats::Event::ServerError(err) => {
                        let text = err.to_string();
                        if let Some(v) = &violations
                            && text.to_ascii_lowercase().contains("permissions violation")
                        {
                            let mut v = v.lock();
                            if v.len() == 16 {
                                v.pop_front();
                            }
                            v.push_back(text);
                        }
                    }
                    _ => {}
                }
                std::future::ready(())
            });
        let addrs = self
            .servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid_config(format!("NATS URL: {e}")))?;
        let client = opts
            .connect(addrs)
            .await
            .map_err(|e| Error::BrokerUnavailable {
                reason: format!("cannot connect to {}: {e}", self.servers.join(",")),
            })?;
        Ok((client, connected_rx))
    }
}

/// The settings of a [`NatsConfig`] as plain optional values: what the bindings' keyword
/// arguments and plain objects, and `A3S_NATS_*`-style inputs, carry. One home for the rules
/// that turn them into a config (which credential wins, when TLS turns on); unset values keep
/// [`NatsConfig::new`]'s defaults.
///
/// Field names are the Python keyword names (Node uses the same in camelCase); the list is
/// [`NatsOptions::FIELDS`], and `tests/fixtures/v1/api.json` (`options.NatsConfig`) holds it for
/// the bindings' tests.
///
/// # Examples
///
/// ```
/// use a3s_code_core::broker::{NatsAuth, NatsOptions};
/// let cfg = NatsOptions {
///     url: "nats://10.0.0.5:4222".into(),
///     user: Some("worker".into()),
///     password: Some("pw".into()),
///     replicas: Some(3),
///     ..Default::default()
/// }
/// .into_config()
/// .unwrap();
/// assert_eq!(cfg.replicas, 3);
/// assert!(matches!(cfg.auth, NatsAuth::UserPassword { .. }));
/// assert!(NatsOptions { url: "nats://h:4222".into(), password: Some("x".into()), ..Default::default() }
///     .into_config()
///     .is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsOptions {
    /// One server URL or several separated by commas.
    pub url: String,
    /// [`NatsConfig::prefix`].
    pub prefix: Option<String>,
    /// Authenticate with a token.
    pub token: Option<String>,
    /// Authenticate with a user (and `password`).
    pub user: Option<String>,
    /// The password of `user`.
    pub password: Option<String>,
    /// Authenticate with an NKey seed.
    pub nkey: Option<String>,
    /// Authenticate with a `.creds` file.
    pub credentials_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust; setting it (or `tls_cert`) turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub tls_key: Option<PathBuf>,
    /// [`NatsConfig::lease`] in milliseconds.
    pub lease_ms: Option<u64>,
    /// [`NatsConfig::max_object_bytes`].
    pub max_object_bytes: Option<usize>,
    /// [`NatsConfig::replicas`].
    pub replicas: Option<usize>,
    /// [`NatsConfig::duplicate_window`] in milliseconds.
    pub duplicate_window_ms: Option<u64>,
    /// [`NatsConfig::inbox_prefix`].
    pub inbox_prefix: Option<String>,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl NatsOptions {
    /// Every field, in declaration order: the names the bindings must accept.
    pub const FIELDS: &'static [&'static str] = &[
        "url",
        "prefix",
        "token",
        "user",
        "password",
        "nkey",
        "credentials_file",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "lease_ms",
        "max_object_bytes",
        "replicas",
        "duplicate_window_ms",
        "inbox_prefix",
    ];

    /// The config these options describe, checked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when more than one credential kind is given, a `password` or
    /// `tls_key` comes without its `user` or `tls_cert`, or [`NatsConfig::validate`] fails.
    pub fn into_config(self) -> Result<NatsConfig> {
        let kinds = [
            self.token.is_some(),
            self.user.is_some(),
            self.nkey.is_some(),
            self.credentials_file.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err(Error::invalid_config(
                "NATS: give one of token, user/password, nkey or credentials_file",
            ));
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(Error::invalid_config("NATS: password given without user"));
        }
        if self.tls_key.is_some() && self.tls_cert.is_none() {
            return Err(Error::invalid_config(
                "NATS: tls_key given without tls_cert",
            ));
        }
        let mut cfg = NatsConfig::new(&self.url);
        if let Some(p) = self.prefix {
            cfg.prefix = p;
        }
        cfg.auth = match (self.token, self.user, self.nkey, self.credentials_file) {
            (Some(t), ..) => NatsAuth::Token(t),
            (_, Some(user), ..) => NatsAuth::UserPassword {
                user,
                password: self.password.unwrap_or_default(),
            },
            (_, _, Some(seed), _) => NatsAuth::NKey(seed),
            (.., Some(path)) => NatsAuth::CredentialsFile(path),
            _ => NatsAuth::None,
        };
        if self.tls_ca.is_some() || self.tls_cert.is_some() {
            cfg.tls = Some(NatsTls {
                ca_file: self.tls_ca,
                client_cert: self.tls_cert,
                client_key: self.tls_key,
            });
        }
        if let Some(ms) = self.lease_ms {
            cfg.lease = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_object_bytes {
            cfg.max_object_bytes = n;
        }
        if let Some(n) = self.replicas {
            cfg.replicas = n;
        }
        if let Some(ms) = self.duplicate_window_ms {
            cfg.duplicate_window = Duration::from_millis(ms);
        }
        if let Some(p) = self.inbox_prefix {
            cfg.inbox_prefix = p;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod options_tests {
    use super::*;

    #[test]
    fn fields_lists_every_field() {
        // Deserializing each listed name alone must work, and an unknown one must not: the
        // list and the struct cannot drift apart.
        for field in NatsOptions::FIELDS {
            let value = match *field {
                "url" | "prefix" | "token" | "user" | "password" | "nkey" | "inbox_prefix" => {
                    "\"x\"".to_owned()
                }
                "credentials_file" | "tls_ca" | "tls_cert" | "tls_key" => "\"/x\"".to_owned(),
                _ => "1".to_owned(),
            };
            let json = format!("{{\"{field}\": {value}}}");
            serde_json::from_str::<NatsOptions>(&json).unwrap_or_else(|e| panic!("{field}: {e}"));
        }
        assert!(serde_json::from_str::<NatsOptions>("{\"nope\": 1}").is_err());
        let unset: serde_json::Map<_, _> = NatsOptions::FIELDS[1..]
            .iter()
            .map(|f| ((*f).to_owned(), serde_json::Value::Null))
            .collect();
        assert!(serde_json::from_value::<NatsOptions>(serde_json::Value::Object(unset)).is_ok());
    }

    #[test]
    fn credential_rules() {
        let base = || NatsOptions {
            url: "nats://h:4222".into(),
            ..Default::default()
        };
        assert!(
            NatsOptions {
                token: Some("t".into()),
                nkey: Some("n".into()),
                ..base()
            }
            .into_config()
            .is_err()
        );
        assert!(
            NatsOptions {
                tls_key: Some("/k".into()),
                ..base()
            }
            .into_config()
            .is_err()
        );
        let cfg = NatsOptions {
            tls_ca: Some("/ca".into()),
            lease_ms: Some(2000),
            ..base()
        }
        .into_config()
        .unwrap();
        assert!(cfg.tls.is_some());
        assert_eq!(cfg.lease, Duration::from_secs(2));
        assert!(
            NatsOptions {
                url: String::new(),
                ..Default::default()
            }
            .into_config()
            .is_err()
        );
    }
}

//! NATS: `NatsConfig` (how to reach the broker, a plain object) and `RemoteSession` (the
//! worker's side of a session on another machine, with the same methods as `AgentSession`).

use std::collections::HashMap;
use std::time::Duration;

use a3s_code_core as core;
use a3s_code_core::broker::NatsTls;
use a3s_code_core::worker::{RemoteOptions as CoreRemoteOptions, RemoteSession};
use napi::Env;
use napi_derive::napi;

use crate::error::{count, non_negative};
use crate::queue::SessionLane;
use crate::runtime::{Promise, promise, spawned};
use crate::session::ClaimOptions;
use crate::shapes::{CompletionsIn, ResultIn, Tasks};
use crate::task::CompletionError;

/// Where and how to reach NATS JetStream (`SessionOptions.nats`, and `config` of
/// `RemoteSession.connect`). Absent fields keep the core's defaults.
#[napi(object)]
#[derive(Clone)]
pub struct NatsConfig {
    /// One server URL (`nats://host:4222`, `tls://...`) or several separated by commas.
    pub url: String,
    /// The first token of every subject and stream name (default `a3s`).
    pub prefix: Option<String>,
    /// Authenticate with a token.
    pub token: Option<String>,
    /// Authenticate with a user and `password`.
    pub user: Option<String>,
    /// The password of `user`.
    pub password: Option<String>,
    /// Authenticate with an NKey seed (`SU...`).
    pub nkey: Option<String>,
    /// Authenticate with a `.creds` file (JWT and NKey seed, as issued by `nsc`).
    pub credentials_file: Option<String>,
    /// A PEM file of CA certificates to trust; setting it (or `tlsCert`) turns TLS on.
    pub tls_ca: Option<String>,
    /// A PEM client certificate, for servers that verify clients.
    pub tls_cert: Option<String>,
    /// The client certificate's PEM private key.
    pub tls_key: Option<String>,
    /// A worker's lease on a task in milliseconds (JetStream `AckWait`, default 10 000).
    pub lease_ms: Option<i64>,
    /// Largest payload or result (JSON bytes) that may go through the object store when it does
    /// not fit in a message (default 64 MiB); beyond it `PayloadTooLarge`.
    pub max_object_bytes: Option<i64>,
    /// Copies JetStream keeps of each stream the session creates, 1 to 5 (default 1; 3 on a
    /// three-server cluster survives losing one).
    pub replicas: Option<i64>,
    /// How long the streams the session creates deduplicate a retried publish, in milliseconds
    /// (default 20 000).
    pub duplicate_window_ms: Option<i64>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of logs.
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// The core's settings, checked. `url`, when given, replaces this object's `url`.
    pub(crate) fn into_core(self, url: Option<&str>) -> core::Result<core::broker::NatsConfig> {
        let mut cfg = core::broker::NatsConfig::new(url.unwrap_or(&self.url));
        if let Some(p) = self.prefix {
            cfg = cfg.with_prefix(p);
        }
        if let Some(t) = self.token {
            cfg = cfg.with_token(t);
        }
        if let Some(u) = self.user {
            cfg = cfg.with_user_password(u, self.password.unwrap_or_default());
        }
        if let Some(k) = self.nkey {
            cfg = cfg.with_nkey(k);
        }
        if let Some(c) = self.credentials_file {
            cfg = cfg.with_credentials_file(c);
        }
        if self.tls_ca.is_some() || self.tls_cert.is_some() {
            cfg = cfg.with_tls(NatsTls {
                ca_file: self.tls_ca.map(Into::into),
                client_cert: self.tls_cert.map(Into::into),
                client_key: self.tls_key.map(Into::into),
            });
        }
        if let Some(ms) = self.lease_ms {
            cfg = cfg.with_lease(Duration::from_millis(non_negative("leaseMs", ms)?));
        }
        if let Some(n) = self.max_object_bytes {
            cfg = cfg.with_max_object_bytes(count("maxObjectBytes", n)?);
        }
        if let Some(n) = self.replicas {
            cfg = cfg.with_replicas(count("replicas", n)?);
        }
        if let Some(ms) = self.duplicate_window_ms {
            cfg = cfg.with_duplicate_window(Duration::from_millis(non_negative(
                "duplicateWindowMs",
                ms,
            )?));
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Options of `RemoteSession.connect`.
#[napi(object)]
#[derive(Debug, Default)]
pub struct RemoteOptions {
    /// Auth, TLS, prefix and lease (its `url` is ignored: `connect`'s first argument wins).
    pub config: Option<NatsConfig>,
    /// The lanes to serve (default: all four).
    pub lanes: Option<Vec<SessionLane>>,
    /// This worker's labels (`{ region: 'eu-west' }`): it takes tasks that require labels it
    /// has, and tasks that require none.
    pub labels: Option<HashMap<String, String>>,
    /// Reported with every result (default: a random id).
    pub worker_id: Option<String>,
}

/// The worker's side of a session on another machine, over NATS JetStream: the same methods
/// as `AgentSession`, so the spec's worker loop runs unchanged with it.
///
/// A claimed task is leased while this worker holds it (renewed automatically); a worker that
/// dies loses it and the task is delivered again elsewhere. Every method may be called
/// concurrently. Asynchronous methods reject with an `Error` whose `code` is the core's stable
/// code (`BrokerUnavailable`, `TaskNotFound`, `PayloadTooLarge`, ...).
#[napi(js_name = "RemoteSession")]
pub struct JsRemoteSession {
    inner: RemoteSession,
}

#[napi]
impl JsRemoteSession {
    /// Connects to `url` as a worker of `sessionId` (`'*'` for every session on the broker).
    ///
    /// Rejects with `BrokerUnavailable` when NATS cannot be reached (or no session ever
    /// created its streams under this prefix), `InvalidConfig` for bad options.
    #[napi(ts_return_type = "Promise<RemoteSession>")]
    pub fn connect(
        env: &Env,
        url: String,
        session_id: String,
        options: Option<RemoteOptions>,
    ) -> napi::Result<Promise<JsRemoteSession>> {
        let RemoteOptions {
            config,
            lanes,
            labels,
            worker_id,
        } = options.unwrap_or_default();
        spawned(env, async move {
            let cfg = match config {
                Some(c) => c.into_core(Some(&url))?,
                None => core::broker::NatsConfig::new(&url),
            };
            let mut opts = match session_id.as_str() {
                "*" => CoreRemoteOptions::pool(),
                id => CoreRemoteOptions::session(id),
            };
            if let Some(lanes) = lanes {
                opts = opts.with_lanes(lanes.into_iter().map(Into::into));
            }
            for (k, v) in labels.unwrap_or_default() {
                opts = opts.with_label(k, v);
            }
            if let Some(id) = worker_id {
                opts = opts.with_worker_id(id);
            }
            let inner = RemoteSession::connect_with(cfg, opts).await?;
            Ok(JsRemoteSession { inner })
        })
    }

    /// This worker's id, reported with its results.
    #[napi(getter)]
    pub fn worker_id(&self) -> String {
        self.inner.worker_id().to_owned()
    }

    /// Claims tasks, highest-priority lane first. Without options: what is waiting now (up to
    /// 256). With `{ limit, waitMs }`: at most `limit` (pass your free slots; default 256),
    /// waiting up to `waitMs` for the first one.
    ///
    /// Rejects with `BrokerUnavailable` when NATS cannot be reached.
    #[napi(ts_return_type = "Promise<ExternalTask[]>")]
    pub fn pending_external_tasks(
        &self,
        env: &Env,
        options: Option<ClaimOptions>,
    ) -> napi::Result<Promise<Tasks>> {
        let remote = self.inner.clone();
        promise(env, async move {
            let tasks = match options {
                None
                | Some(ClaimOptions {
                    limit: None,
                    wait_ms: None,
                }) => remote.pending_external_tasks().await?,
                Some(ClaimOptions { limit, wait_ms }) => {
                    let max = limit.map(|n| count("limit", n)).transpose()?;
                    let wait = non_negative("waitMs", wait_ms.unwrap_or(0))?;
                    remote
                        .claim_external_tasks(
                            max.unwrap_or(RemoteSession::DEFAULT_CLAIM_LIMIT),
                            Duration::from_millis(wait),
                        )
                        .await?
                }
            };
            Ok(Tasks(tasks))
        })
    }

    /// Reports a task's result: stored durably, then the task is acknowledged.
    ///
    /// Rejects with `TaskNotFound` (not held by this worker: never claimed, already reported,
    /// or cancelled), `BrokerUnavailable` (not stored; the task stays claimed, retry), or
    /// `PayloadTooLarge` (the result is over the size limit; a failed result saying so was
    /// reported instead).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn complete_external_task(
        &self,
        env: &Env,
        task_id: String,
        #[napi(ts_arg_type = "ExternalTaskResult")] result: ResultIn,
    ) -> napi::Result<Promise<()>> {
        let remote = self.inner.clone();
        promise(env, async move {
            remote.complete_external_task(&task_id, result.0).await
        })
    }

    /// Reports many results in one round trip. Resolves to one entry per result, in order:
    /// `null` when it was stored, else why not (`{ code, message }`).
    #[napi(ts_return_type = "Promise<Array<CompletionError | null>>")]
    pub fn complete_external_tasks(
        &self,
        env: &Env,
        #[napi(ts_arg_type = "ExternalTaskCompletion[]")] results: CompletionsIn,
    ) -> napi::Result<Promise<Vec<Option<CompletionError>>>> {
        let remote = self.inner.clone();
        promise(env, async move {
            let outcomes = remote.complete_external_tasks(results.0).await?;
            Ok(outcomes
                .into_iter()
                .map(|o| o.err().map(Into::into))
                .collect())
        })
    }

    /// Gives a task back without a result: delivered again after the session's retry delay,
    /// or reported exhausted when it has no attempts left. Rejects with `TaskNotFound`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn abandon_external_task(
        &self,
        env: &Env,
        task_id: String,
        reason: String,
    ) -> napi::Result<Promise<()>> {
        let remote = self.inner.clone();
        promise(env, async move {
            remote.abandon_external_task(&task_id, &reason).await
        })
    }

    /// Gives back every task still claimed (delivered again at once elsewhere) and disconnects.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self, env: &Env) -> napi::Result<Promise<()>> {
        let remote = self.inner.clone();
        promise(env, async move {
            remote.close().await;
            Ok(())
        })
    }
}

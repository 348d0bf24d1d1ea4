//! NATS: `NatsConfig` (how to reach the broker, a plain object) and `WorkerClient` (the
//! worker's side of a session on another machine, with the same worker methods as
//! `AgentSession`; `RemoteSession` is its deprecated alias, set in `bindings-node/main.js`).

use std::collections::HashMap;

use a3s_code_core as core;
use a3s_code_core::broker::NatsOptions;
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions as CoreWorkerClientOptions};
use napi::Env;
use napi_derive::napi;

use crate::error::{count, non_negative};
use crate::queue::SessionLane;
use crate::runtime::{Promise, promise, spawned};
use crate::shapes::{CompletionsIn, ResultIn, Tasks};
use crate::source::{self, ClaimOptions};
use crate::task::CompletionError;

/// Where and how to reach NATS JetStream (`SessionOptions.nats`, and `config` of
/// `WorkerClient.connect`): the core's `NatsOptions`, which checks them (one credential kind,
/// `password` with `user`, `tlsKey` with `tlsCert`, ...). Absent fields keep the core's
/// defaults (see `NatsConfig` in the core's docs).
#[napi(object)]
#[derive(Clone)]
pub struct NatsConfig {
    /// One server URL (`nats://host:4222`, `tls://...`) or several separated by commas.
    pub url: String,
    /// The first token of every subject and stream name.
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
    /// A worker's lease on a task in milliseconds (JetStream `AckWait`).
    pub lease_ms: Option<i64>,
    /// Largest payload or result (JSON bytes) that may go through the object store when it does
    /// not fit in a message; beyond it `PayloadTooLarge`.
    pub max_object_bytes: Option<i64>,
    /// Copies JetStream keeps of each stream the session creates, 1 to 5 (3 on a
    /// three-server cluster survives losing one).
    pub replicas: Option<i64>,
    /// How long the streams the session creates deduplicate a retried publish, in milliseconds.
    pub duplicate_window_ms: Option<i64>,
    /// The prefix of this client's reply inboxes (default `_INBOX`): a credential confined to
    /// one tenant may subscribe only to its own (`a3s-code auth permissions` prints it).
    pub inbox_prefix: Option<String>,
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
    /// The core's settings, checked by `NatsOptions::into_config`. `url`, when given, replaces
    /// this object's `url`.
    pub(crate) fn into_core(self, url: Option<&str>) -> core::Result<core::broker::NatsConfig> {
        let millis = |name, v: Option<i64>| v.map(|ms| non_negative(name, ms)).transpose();
        let counted = |name, v: Option<i64>| v.map(|n| count(name, n)).transpose();
        NatsOptions {
            url: url.map_or(self.url, str::to_owned),
            prefix: self.prefix,
            token: self.token,
            user: self.user,
            password: self.password,
            nkey: self.nkey,
            credentials_file: self.credentials_file.map(Into::into),
            tls_ca: self.tls_ca.map(Into::into),
            tls_cert: self.tls_cert.map(Into::into),
            tls_key: self.tls_key.map(Into::into),
            lease_ms: millis("leaseMs", self.lease_ms)?,
            max_object_bytes: counted("maxObjectBytes", self.max_object_bytes)?,
            replicas: counted("replicas", self.replicas)?,
            duplicate_window_ms: millis("duplicateWindowMs", self.duplicate_window_ms)?,
            inbox_prefix: self.inbox_prefix,
        }
        .into_config()
    }
}

/// Options of `WorkerClient.connect` (the core's `WorkerClientOptions`; formerly
/// `RemoteOptions`, still exported as a deprecated alias).
#[napi(object)]
#[derive(Debug, Default)]
pub struct WorkerClientOptions {
    /// Auth, TLS, prefix and lease (its `url` is ignored: `connect`'s first argument wins).
    pub config: Option<NatsConfig>,
    /// With session id `'*'`: serve only this tenant's sessions (absent: every tenant's, the
    /// shared fleet). With one session: attach under this tenant.
    pub tenant: Option<String>,
    /// The lanes to serve (default: all four).
    pub lanes: Option<Vec<SessionLane>>,
    /// This worker's labels (`{ region: 'eu-west' }`): it takes tasks that require labels it
    /// has, and tasks that require none.
    pub labels: Option<HashMap<String, String>>,
    /// Reported with every result (default: a random id).
    pub worker_id: Option<String>,
}

/// The worker's side of a session on another machine, over NATS JetStream: the same worker
/// methods as `AgentSession`, so the spec's worker loop runs unchanged with it. (Formerly
/// `RemoteSession`, still exported as a deprecated alias of this class.)
///
/// A claimed task is leased while this worker holds it (renewed automatically); a worker that
/// dies loses it and the task is delivered again elsewhere. Every method may be called
/// concurrently. Asynchronous methods reject with an `Error` whose `code` is the core's stable
/// code (`BrokerUnavailable`, `TaskNotFound`, `PayloadTooLarge`, ...).
#[napi(js_name = "WorkerClient")]
pub struct JsWorkerClient {
    inner: WorkerClient,
}

#[napi]
impl JsWorkerClient {
    /// Connects to `url` as a worker of `sessionId` (`'*'` for every session on the broker).
    ///
    /// Rejects with `BrokerUnavailable` when NATS cannot be reached, `InvalidConfig` for bad
    /// options. A worker whose session (or tenant) has no work yet connects and waits for it
    /// (`state` is `'waiting'`).
    #[napi(ts_return_type = "Promise<WorkerClient>")]
    pub fn connect(
        env: &Env,
        url: String,
        session_id: String,
        options: Option<WorkerClientOptions>,
    ) -> napi::Result<Promise<JsWorkerClient>> {
        let WorkerClientOptions {
            config,
            tenant,
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
                "*" => CoreWorkerClientOptions::pool(),
                id => CoreWorkerClientOptions::session(id),
            };
            if let Some(t) = tenant {
                opts = opts.with_tenant(t);
            }
            if let Some(lanes) = lanes {
                opts = opts.with_lanes(lanes.into_iter().map(Into::into));
            }
            for (k, v) in labels.unwrap_or_default() {
                opts = opts.with_label(k, v);
            }
            if let Some(id) = worker_id {
                opts = opts.with_worker_id(id);
            }
            let inner = WorkerClient::connect_with(cfg, opts).await?;
            Ok(JsWorkerClient { inner })
        })
    }

    /// `'waiting'` (no work exists for it yet), `'serving'` or `'draining'`.
    #[napi(getter, ts_return_type = "'waiting' | 'serving' | 'draining'")]
    pub fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }

    /// This worker's id, reported with its results.
    #[napi(getter)]
    pub fn worker_id(&self) -> String {
        self.inner.worker_id().to_owned()
    }

    /// Claims tasks, highest-priority lane first. Without options: what is waiting now (up to
    /// the core's default batch, `WorkerClient::DEFAULT_CLAIM_LIMIT`). With `{ limit, waitMs }`:
    /// at most `limit` (pass your free slots), waiting up to `waitMs` for the first one.
    ///
    /// Rejects with `BrokerUnavailable` when NATS cannot be reached.
    #[napi(ts_return_type = "Promise<ExternalTask[]>")]
    pub fn pending_external_tasks(
        &self,
        env: &Env,
        options: Option<ClaimOptions>,
    ) -> napi::Result<Promise<Tasks>> {
        source::pending(env, &self.inner, options)
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
        source::complete_one(env, &self.inner, task_id, result.0)
    }

    /// Reports many results in one round trip. Resolves to one entry per result, in order:
    /// `null` when it was stored, else why not (`{ code, message }`).
    #[napi(ts_return_type = "Promise<Array<CompletionError | null>>")]
    pub fn complete_external_tasks(
        &self,
        env: &Env,
        #[napi(ts_arg_type = "ExternalTaskCompletion[]")] results: CompletionsIn,
    ) -> napi::Result<Promise<Vec<Option<CompletionError>>>> {
        source::complete_many(env, &self.inner, results)
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
        source::abandon(env, &self.inner, task_id, reason)
    }

    /// Whether the session this worker serves said it closed (always `false` for a pool
    /// worker).
    #[napi(getter)]
    pub fn is_session_closed(&self) -> bool {
        self.inner.is_session_closed()
    }

    /// Resolves once the session this worker serves says it closed (never for a pool worker;
    /// a session whose process died says nothing).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn session_closed(&self, env: &Env) -> napi::Result<Promise<()>> {
        let remote = self.inner.clone();
        promise(env, async move {
            remote.session_closed().await;
            Ok(())
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

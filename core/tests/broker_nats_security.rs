//! Authentication, least-privilege workers, TLS, and a worker that dies holding a task.
#![cfg(feature = "nats")]

mod common;

use std::time::Duration;

use a3s_code_core::broker::{NatsConfig, NatsTls};
use a3s_code_core::queue::{LaneHandlerConfig, RetryPolicy, SessionLane, TaskHandlerMode};
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, ExternalTaskResult, SessionOptions, SessionQueueConfig,
};
use serde_json::json;

fn session(nats: NatsConfig, cfg: SessionQueueConfig) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SessionQueueConfig {
        lane_handlers: [(
            SessionLane::Query,
            LaneHandlerConfig {
                mode: TaskHandlerMode::External,
                timeout_ms: 30_000,
            },
        )]
        .into(),
        enable_dlq: true,
        ..cfg
    };
    let s = Agent::from_config(AgentConfig::default())
        .session(
            dir.path(),
            Some(SessionOptions::new().with_queue_config(cfg).with_nats(nats)),
        )
        .unwrap();
    (s, dir)
}

/// One task through `worker`, checked end to end.
async fn round_trip(session: &AgentSession, worker: &WorkerClient) {
    let h = session
        .submit(SessionLane::Query, "read", json!({"path": "x"}))
        .await
        .unwrap();
    let task = worker
        .claim_external_tasks(1, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    worker
        .complete_external_task(
            &task.task_id,
            ExternalTaskResult::ok(json!({"content": "ok"})),
        )
        .await
        .unwrap();
    assert_eq!(h.await.unwrap().result["content"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authentication_and_a_wrong_token() {
    let server =
        test_support::NatsServer::start_with_config("authorization { token: \"s3cret\" }\n");
    let prefix = test_support::unique_prefix();
    let nats = NatsConfig::new(server.url()).with_prefix(&prefix);
    let (s, _dir) = session(
        nats.clone().with_token("s3cret"),
        SessionQueueConfig::default(),
    );
    s.broker_ready(Duration::from_secs(10)).await.unwrap();
    let worker = WorkerClient::connect_with(
        nats.clone().with_token("s3cret"),
        WorkerClientOptions::session(s.id()),
    )
    .await
    .unwrap();
    round_trip(&s, &worker).await;

    let err = WorkerClient::connect_with(
        nats.clone().with_token("wrong"),
        WorkerClientOptions::session(s.id()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "BrokerUnavailable");
    let (bad, _dir2) = session(nats.with_token("wrong"), SessionQueueConfig::default());
    let err = bad
        .broker_ready(Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "BrokerUnavailable");
    s.close().await;
}

/// A raw client with `user`'s credentials and inbox prefix, and a way to await the server's
/// refusal of what it tries (`-ERR 'Permissions Violation for <what> to "<subject>"'`): tests
/// wait for those refusals instead of for a quiet period that a slow machine would pass anyway.
struct Refusals(tokio::sync::mpsc::UnboundedReceiver<String>);

impl Refusals {
    async fn connect(url: &str, user: &str, inbox: &str) -> (async_nats::Client, Self) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(user.into(), "pw".into())
            .custom_inbox_prefix(inbox)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(msg)) =
                        event
                    {
                        let _ = tx.send(msg);
                    }
                }
            })
            .connect(url)
            .await
            .unwrap();
        (client, Self(rx))
    }

    async fn of(&mut self, what: &str, subject: &str) {
        let wanted = format!("Permissions Violation for {what} to \"{subject}\"");
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(msg) = self.0.recv().await {
                if msg.contains(&wanted) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the server did not refuse: {wanted}"));
    }
}

fn tenant_session(nats: NatsConfig, tenant: &str) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::external_config(Default::default(), &[SessionLane::Query], 30_000);
    let s = Agent::from_config(AgentConfig::default())
        .session(
            dir.path(),
            Some(
                SessionOptions::new()
                    .with_queue_config(cfg)
                    .with_nats(nats)
                    .with_tenant(tenant, 1.0)
                    .unwrap(),
            ),
        )
        .unwrap();
    (s, dir)
}

/// Tenant isolation with the permissions `a3s-code auth permissions` generates: a worker
/// credential of tenant A serves A's sessions (pool and attached) and can reach nothing of
/// tenant B's: not its tasks (pull or acknowledge), not its results (read or forge), not its
/// objects, not its inboxes. The fleet credential serves both and reads no results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_workers_reach_nothing_of_another_tenant() {
    use a3s_code_core::broker::permissions::{Permissions, Role};
    let prefix = test_support::unique_prefix();
    let p = &prefix;
    let users = [
        (
            "session",
            Permissions::for_role(Role::Session, p, None).unwrap(),
        ),
        (
            "worker-a",
            Permissions::for_role(Role::Worker, p, Some("a")).unwrap(),
        ),
        (
            "worker-b",
            Permissions::for_role(Role::Worker, p, Some("b")).unwrap(),
        ),
        (
            "fleet",
            Permissions::for_role(Role::Worker, p, None).unwrap(),
        ),
    ];
    let entries: Vec<_> = users.iter().map(|(u, perms)| (*u, "pw", perms)).collect();
    let conf = Permissions::authorization(&entries);
    let server = test_support::NatsServer::start_with_config(&conf);
    let nats = NatsConfig::new(server.url()).with_prefix(&prefix);
    let as_user = |user: &str| {
        let inbox = users
            .iter()
            .find(|(u, _)| *u == user)
            .unwrap()
            .1
            .inbox_prefix
            .clone();
        nats.clone()
            .with_user_password(user, "pw")
            .with_inbox_prefix(inbox)
    };
    let (sa, _da) = tenant_session(as_user("session"), "a");
    let (sb, _db) = tenant_session(as_user("session"), "b");
    sa.broker_ready(Duration::from_secs(10)).await.unwrap();
    sb.broker_ready(Duration::from_secs(10)).await.unwrap();

    // Each tenant's pool worker serves its own tenant.
    let worker_a = WorkerClient::connect_with(
        as_user("worker-a"),
        WorkerClientOptions::pool()
            .with_tenant("a")
            .with_lanes([SessionLane::Query]),
    )
    .await
    .unwrap();
    let worker_b = WorkerClient::connect_with(
        as_user("worker-b"),
        WorkerClientOptions::pool()
            .with_tenant("b")
            .with_lanes([SessionLane::Query]),
    )
    .await
    .unwrap();
    round_trip(&sa, &worker_a).await;
    round_trip(&sb, &worker_b).await;

    // A raw client with tenant A's worker credential tries everything on tenant B.
    let (raw, mut refused) = Refusals::connect(&server.url(), "worker-a", "_INBOX_W.a").await;
    let up = prefix.to_uppercase();
    let forbidden_publishes = [
        // Pull, inspect or acknowledge B's tasks.
        format!("$JS.API.CONSUMER.MSG.NEXT.{up}_TASKS_b.pool_query__"),
        format!("$JS.API.CONSUMER.INFO.{up}_TASKS_b.pool_query__"),
        format!("$JS.ACK.{up}_TASKS_b.pool_query__.1.1.1.1700000000000000000.0"),
        // Forge a result for B's session, or inject a task anywhere.
        format!("{p}.result.b.hub.{}", sb.id()),
        format!("{p}.task.a.query._"),
        // Read or delete B's objects.
        format!("$JS.API.STREAM.INFO.OBJ_{up}_OBJ_b"),
        format!("$O.{up}_OBJ_b.M.x"),
        // Read results through a consumer of its own.
        format!("$JS.API.CONSUMER.CREATE.{up}_RESULTS"),
    ];
    for subject in &forbidden_publishes {
        raw.publish(subject.clone(), "{}".into()).await.unwrap();
        refused.of("Publish", subject).await;
    }
    let forbidden_subscriptions = [
        format!("{p}.result.>"),
        format!("{p}.result.b.>"),
        "_INBOX.>".to_owned(),
        "_INBOX_W.b.>".to_owned(),
        "_INBOX_W.>".to_owned(),
        format!("{p}.ready.b"),
        format!("{p}.cancel.b"),
    ];
    let mut snoops = Vec::new();
    for subject in &forbidden_subscriptions {
        snoops.push(raw.subscribe(subject.clone()).await.unwrap());
        refused.of("Subscription", subject).await;
    }
    // A's own work is unaffected, and nothing of B's reached the snoops.
    round_trip(&sa, &worker_a).await;
    round_trip(&sb, &worker_b).await;
    raw.flush().await.unwrap();
    for mut snoop in snoops {
        let leaked =
            futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut snoop));
        assert!(
            !matches!(leaked, Some(Some(_))),
            "a worker of A received B's traffic"
        );
    }

    // The shared fleet serves every tenant and still reads no results.
    worker_a.close().await;
    worker_b.close().await;
    let fleet = WorkerClient::connect_with(
        as_user("fleet"),
        WorkerClientOptions::pool().with_lanes([SessionLane::Query]),
    )
    .await
    .unwrap();
    round_trip(&sa, &fleet).await;
    round_trip(&sb, &fleet).await;
    let (fleet_raw, mut fleet_refused) =
        Refusals::connect(&server.url(), "fleet", "_INBOX_W._").await;
    let subject = format!("$JS.API.CONSUMER.CREATE.{up}_RESULTS");
    fleet_raw
        .publish(subject.clone(), "{}".into())
        .await
        .unwrap();
    fleet_refused.of("Publish", &subject).await;
    fleet.close().await;
    sa.close().await;
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let cert_file = write("server.pem", server_cert.pem());
    let key_file = write("server.key", server_key.serialize_pem());
    let server = test_support::NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
        cert_file.display(),
        key_file.display()
    ));
    let prefix = test_support::unique_prefix();
    let tls = NatsTls {
        ca_file: Some(ca_file),
        ..Default::default()
    };
    let nats = NatsConfig::new(format!("tls://127.0.0.1:{}", server.port()))
        .with_prefix(&prefix)
        .with_tls(tls);
    let (s, _dir) = session(nats.clone(), SessionQueueConfig::default());
    s.broker_ready(Duration::from_secs(10)).await.unwrap();
    let worker = WorkerClient::connect_with(nats.clone(), WorkerClientOptions::session(s.id()))
        .await
        .unwrap();
    round_trip(&s, &worker).await;
    // Without the CA the server is not trusted.
    let untrusted =
        NatsConfig::new(format!("tls://127.0.0.1:{}", server.port())).with_prefix(&prefix);
    assert_eq!(
        WorkerClient::connect_with(untrusted, WorkerClientOptions::session(s.id()))
            .await
            .unwrap_err()
            .code(),
        "BrokerUnavailable"
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_holding_a_task_exhausts_it_into_the_dlq_stream() {
    let (url, _server) = test_support::nats();
    let prefix = test_support::unique_prefix();
    let nats = NatsConfig::new(&url)
        .with_prefix(&prefix)
        .with_lease(Duration::from_secs(1));
    let (s, _dir) = session(
        nats.clone(),
        SessionQueueConfig {
            // Two attempts in all.
            retry_policy: RetryPolicy::fixed(1, 0),
            ..Default::default()
        },
    );
    s.broker_ready(Duration::from_secs(10)).await.unwrap();
    let h = s
        .submit(SessionLane::Query, "read", json!({"path": "x"}))
        .await
        .unwrap();
    for attempt in 1..=2 {
        // Claims it, then vanishes without a word: no lease renewal, no result.
        let doomed = WorkerClient::connect_with(nats.clone(), WorkerClientOptions::session(s.id()))
            .await
            .unwrap();
        let t = doomed
            .claim_external_tasks(1, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(t.len(), 1, "attempt {attempt}");
    }
    // Redelivered after the lease; with no retries allowed the next worker reports it exhausted.
    let next = WorkerClient::connect_with(nats.clone(), WorkerClientOptions::session(s.id()))
        .await
        .unwrap();
    // Claim until the session has the worker's report, so "not handed out" is checked on the
    // claims that met the redelivered task, however long the redelivery takes.
    let mut h = std::pin::pin!(h);
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got = next
                .claim_external_tasks(1, Duration::from_secs(1))
                .await
                .unwrap();
            assert!(got.is_empty(), "an exhausted task is not handed out");
            if let Some(out) = futures_util::FutureExt::now_or_never(h.as_mut()) {
                break out.unwrap_err();
            }
        }
    })
    .await
    .expect("the exhausted task is reported");
    assert_eq!(err.code(), "RetriesExhausted");
    assert!(err.to_string().contains("after 2 attempt(s)"), "{err}");
    let letters = s.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attempts, 2,
        "the dead letter counts the attempts made"
    );
    // The dead letter is browsable in the DLQ stream.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut dlq = js
        .get_stream(format!("{}_DLQ", prefix.to_uppercase()))
        .await
        .unwrap();
    let mut stored = 0;
    for _ in 0..50 {
        stored = dlq.info().await.unwrap().state.messages;
        if stored == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored, 1);
    let msg = dlq.get_raw_message(1).await.unwrap();
    let letter: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(letter["error_code"], "RetriesExhausted");
    assert_eq!(letter["attempts"], 2);
    s.close().await;
}

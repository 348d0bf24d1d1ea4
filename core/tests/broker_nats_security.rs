//! Authentication, least-privilege workers, TLS, and a worker that dies holding a task.
#![cfg(feature = "nats")]

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_worker_can_pull_and_report_but_not_publish_tasks_or_read_results() {
    let prefix = test_support::unique_prefix();
    let p = &prefix;
    let t = format!("{}_TASKS", prefix.to_uppercase());
    // The worker permissions of docs/protocol.md §8.
    let conf = format!(
        r#"authorization {{
  users = [
    {{ user: session, password: s1 }}
    {{ user: worker, password: w1, permissions: {{
        publish: ["$JS.API.CONSUMER.MSG.NEXT.{t}.>", "$JS.API.CONSUMER.INFO.{t}.>", "$JS.API.STREAM.INFO.{t}",
                  "$JS.API.CONSUMER.LIST.{t}", "$JS.ACK.{t}.>", "{p}.result.>", "{p}.output.>"]
        subscribe: ["_INBOX.>", "{p}.ready.>", "{p}.cancel.>"]
    }} }}
  ]
}}
"#
    );
    let server = test_support::NatsServer::start_with_config(&conf);
    let nats = NatsConfig::new(server.url()).with_prefix(&prefix);
    let (s, _dir) = session(
        nats.clone().with_user_password("session", "s1"),
        SessionQueueConfig::default(),
    );
    s.broker_ready(Duration::from_secs(10)).await.unwrap();
    let worker_cfg = nats.clone().with_user_password("worker", "w1");
    let worker =
        WorkerClient::connect_with(worker_cfg.clone(), WorkerClientOptions::session(s.id()))
            .await
            .unwrap();
    round_trip(&s, &worker).await;
    // And the pool form.
    let pool = WorkerClient::connect_with(worker_cfg, WorkerClientOptions::pool())
        .await
        .unwrap();
    round_trip(&s, &pool).await;

    // With the worker's credentials, a raw client can neither inject a task nor read results.
    // The server says so (`-ERR 'Permissions Violation ...'`): the tests wait for those refusals
    // instead of for a quiet period that a slow machine would pass anyway.
    let (refused_tx, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let raw = async_nats::ConnectOptions::with_user_and_password("worker".into(), "w1".into())
        .event_callback(move |event| {
            let refused_tx = refused_tx.clone();
            async move {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(msg)) = event {
                    let _ = refused_tx.send(msg);
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    let mut refusal_of = async |what: &str, subject: &str| {
        let wanted = format!("Permissions Violation for {what} to \"{subject}\"");
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(msg) = refused.recv().await {
                if msg.contains(&wanted) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the server did not refuse: {wanted}"));
    };
    let js = async_nats::jetstream::new(raw.clone());
    let forged_subject = format!("{p}.task.{}.query._", s.id());
    // Never acknowledged: the refusal below proves the message was dropped.
    let _forged = js.publish(forged_subject.clone(), "{}".into()).await;
    refusal_of("Publish", &forged_subject).await;
    let results_stream = js
        .get_stream(format!("{}_RESULTS", prefix.to_uppercase()))
        .await;
    assert!(
        results_stream.is_err(),
        "a worker must not be able to look at the results stream"
    );
    let mut snoop = raw.subscribe(format!("{p}.result.>")).await.unwrap();
    refusal_of("Subscription", &format!("{p}.result.>")).await;
    round_trip(&s, &worker).await;
    // The result was routed before the session got it from its stream, so a PING/PONG on the
    // raw connection afterwards is a barrier: anything routed to `snoop` has arrived by now.
    raw.flush().await.unwrap();
    let leaked = futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut snoop));
    assert!(
        !matches!(leaked, Some(Some(_))),
        "a worker must not receive results"
    );
    s.close().await;
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
            retry_policy: RetryPolicy::none(),
            ..Default::default()
        },
    );
    s.broker_ready(Duration::from_secs(10)).await.unwrap();
    let h = s
        .submit(SessionLane::Query, "read", json!({"path": "x"}))
        .await
        .unwrap();
    {
        // Claims it, then vanishes without a word: no lease renewal, no result.
        let doomed = WorkerClient::connect_with(nats.clone(), WorkerClientOptions::session(s.id()))
            .await
            .unwrap();
        let t = doomed
            .claim_external_tasks(1, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(t.len(), 1);
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
    assert_eq!(s.dead_letters().await.len(), 1);
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
    s.close().await;
}

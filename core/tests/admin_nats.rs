//! The admin API over a real nats-server, with the credentials `a3s-code auth permissions`
//! generates: every read and action, and every refusal (unknown task, Control pause, a viewer
//! acting, another tenant's viewer, a session that is gone).
#![cfg(feature = "nats")]

use std::future::Future;
use std::time::{Duration, Instant};

use a3s_code_core::admin::{Action, AdminClient, LetterSource, TaskOutcome, TaskQuery, TaskState};
use a3s_code_core::broker::NatsConfig;
use a3s_code_core::broker::permissions::{Permissions, Role};
use a3s_code_core::queue::{
    LaneHandlerConfig, RetryPolicy, SessionLane, SubmitOptions, TaskHandlerMode,
};
use a3s_code_core::worker::{WorkerClient, WorkerClientOptions};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, Error, ExternalTaskResult, SessionOptions, SessionQueueConfig,
};
use serde_json::json;

/// Polls `check` until it returns `Some`, for up to 15 s.
async fn until<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn session(nats: NatsConfig, tenant: &str) -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let external = LaneHandlerConfig {
        mode: TaskHandlerMode::External,
        timeout_ms: 30_000,
    };
    let cfg = SessionQueueConfig {
        lane_handlers: [(SessionLane::Query, external)].into(),
        enable_dlq: true,
        enable_metrics: true,
        retry_policy: RetryPolicy::none(),
        ..Default::default()
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_and_action_and_every_refusal() {
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
            "admin",
            Permissions::for_role(Role::Admin, p, None).unwrap(),
        ),
        (
            "viewer",
            Permissions::for_role(Role::Viewer, p, None).unwrap(),
        ),
        (
            "viewer-b",
            Permissions::for_role(Role::Viewer, p, Some("b")).unwrap(),
        ),
        (
            "monitor",
            Permissions::for_role(Role::Monitor, p, None).unwrap(),
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
    let (s, _dir) = session(as_user("session"), "a");
    s.broker_ready(Duration::from_secs(10)).await.unwrap();
    let id = s.id().to_owned();
    let worker = WorkerClient::connect_with(
        as_user("worker-a"),
        WorkerClientOptions::pool()
            .with_tenant("a")
            .with_lanes([SessionLane::Query])
            .with_worker_id("w-admin-test"),
    )
    .await
    .unwrap();
    let admin = AdminClient::connect(as_user("admin")).await.unwrap();

    // The process announces itself; the session is listed.
    let processes = admin.processes().await.unwrap();
    assert!(
        processes.iter().any(|a| a.tenant == "a" && a.sessions == 1),
        "{processes:?}"
    );
    let page = admin.sessions(None, None, 10).await.unwrap();
    assert_eq!(page.sessions.len(), 1, "{page:?}");
    assert_eq!(
        (
            page.sessions[0].session_id.as_str(),
            page.sessions[0].tenant.as_str()
        ),
        (id.as_str(), "a")
    );
    assert!(page.next.is_none());
    let view = admin.session(&id).await.unwrap();
    assert_eq!(view.lanes.len(), 4);
    assert!(view.hub.is_some());

    // Pause: nothing is dispatched, the backlog is listed in order, Control cannot be paused.
    admin
        .act(
            &id,
            &Action::Pause {
                lane: SessionLane::Query,
            },
            "alice",
        )
        .await
        .unwrap();
    admin
        .act(
            &id,
            &Action::Pause {
                lane: SessionLane::Query,
            },
            "alice",
        )
        .await
        .unwrap();
    let err = admin
        .act(
            &id,
            &Action::Pause {
                lane: SessionLane::Control,
            },
            "alice",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidConfig", "{err}");
    let mut handles = Vec::new();
    for i in 0..3 {
        handles.push(
            s.submit(SessionLane::Query, "read", json!({"path": format!("f{i}")}))
                .await
                .unwrap(),
        );
    }
    let pending = admin
        .tasks(&id, &TaskQuery::new(TaskState::Pending).with_limit(2))
        .await
        .unwrap();
    assert_eq!(pending.tasks.len(), 2);
    assert_eq!(pending.tasks[0].task_id, handles[0].task_id());
    assert_eq!(pending.tasks[0].payload.as_ref().unwrap()["path"], "f0");
    let rest = admin
        .tasks(
            &id,
            &TaskQuery::new(TaskState::Pending).with_cursor(pending.next.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.tasks.len(), 1);
    assert_eq!(rest.tasks[0].task_id, handles[2].task_id());
    assert!(rest.next.is_none());
    // The fleet needs the backlog's slots.
    let monitor = AdminClient::connect(as_user("monitor")).await.unwrap();
    let demand = monitor.fleet_demand().await.unwrap();
    assert!(
        demand
            .iter()
            .any(|d| d.tenant == "a" && d.lane == SessionLane::Query && d.slots == 3),
        "{demand:?}"
    );

    // Cancel a pending task; an unknown task is refused.
    admin
        .act(
            &id,
            &Action::Cancel {
                task_id: handles[2].task_id().to_owned(),
            },
            "alice",
        )
        .await
        .unwrap();
    let cancelled = handles.pop().unwrap();
    assert!(matches!(cancelled.await, Err(Error::TaskCancelled { .. })));
    let err = admin
        .act(
            &id,
            &Action::Cancel {
                task_id: "00000000-1".into(),
            },
            "alice",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TaskNotFound", "{err}");

    // Resume: dispatched; the worker's taken notice names it as the holder.
    admin
        .act(
            &id,
            &Action::Resume {
                lane: SessionLane::Query,
            },
            "alice",
        )
        .await
        .unwrap();
    let taken = worker
        .claim_external_tasks(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let held = until("the taken notice", || async {
        let page = admin
            .tasks(&id, &TaskQuery::new(TaskState::InFlight))
            .await
            .unwrap();
        page.tasks
            .into_iter()
            .find(|t| t.task_id == taken[0].task_id && t.worker_id.is_some())
    })
    .await;
    assert_eq!(
        (held.worker_id.as_deref(), held.attempt),
        (Some("w-admin-test"), 1)
    );
    let more = worker
        .claim_external_tasks(8, Duration::from_secs(10))
        .await
        .unwrap();
    for t in taken.iter().chain(&more) {
        worker
            .complete_external_task(&t.task_id, ExternalTaskResult::ok(json!({"content": "x"})))
            .await
            .unwrap();
    }
    for h in handles {
        h.await.unwrap();
    }
    let finished = admin
        .tasks(&id, &TaskQuery::new(TaskState::Finished))
        .await
        .unwrap();
    assert_eq!(
        finished.tasks.len(),
        3,
        "two completed and one cancelled: {finished:?}"
    );
    assert_eq!(finished.tasks[2].outcome, Some(TaskOutcome::Cancelled));
    assert!(
        finished.tasks[..2]
            .iter()
            .all(|t| t.outcome == Some(TaskOutcome::Completed)
                && t.worker_id.as_deref() == Some("w-admin-test"))
    );
    let demand = monitor.fleet_demand().await.unwrap();
    assert!(
        demand
            .iter()
            .filter(|d| d.tenant == "a")
            .all(|d| d.slots == 0),
        "idle: {demand:?}"
    );

    // A dead letter (nobody takes it in time), mirrored in the stream; retried, it completes.
    let dead = s
        .submit_with(
            SessionLane::Query,
            "read",
            json!({"path": "late"}),
            SubmitOptions::new().with_timeout_ms(200),
        )
        .await
        .unwrap();
    let dead_id = dead.task_id().to_owned();
    assert!(matches!(dead.await, Err(Error::TaskTimedOut { .. })));
    let letters = admin.dead_letters(&id, None, 10).await.unwrap();
    assert_eq!(letters.source, LetterSource::Session);
    assert_eq!(letters.letters[0].task_id, dead_id);
    let mirrored = || async {
        let client =
            async_nats::ConnectOptions::with_user_and_password("session".into(), "pw".into())
                .connect(server.url())
                .await
                .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js
            .get_stream(format!("{}_DLQ", prefix.to_uppercase()))
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    };
    until("the mirrored letter", || async {
        (mirrored().await == 1).then_some(())
    })
    .await;
    let retried = admin
        .act(
            &id,
            &Action::RetryDeadLetter {
                task_id: dead_id.clone(),
            },
            "alice",
        )
        .await
        .unwrap()
        .task_id
        .unwrap();
    assert_ne!(retried, dead_id);
    until("the letter's copy deleted", || async {
        (mirrored().await == 0).then_some(())
    })
    .await;
    // (The worker may still hold the first copy, withdrawn when it timed out: skipped.)
    until("the retry delivered", || async {
        let got = worker
            .claim_external_tasks(1, Duration::from_millis(500))
            .await
            .unwrap();
        let mut found = None;
        for t in got {
            if t.task_id == retried {
                found = Some(());
            } else {
                let _ = worker.skip_external_task(&t.task_id).await;
            }
        }
        found
    })
    .await;
    worker
        .complete_external_task(&retried, ExternalTaskResult::ok(json!({"content": "late"})))
        .await
        .unwrap();
    let done = until("the retry finished", || async {
        let page = admin
            .tasks(
                &id,
                &TaskQuery::new(TaskState::Finished).with_search(retried.clone()),
            )
            .await
            .unwrap();
        page.tasks.into_iter().next()
    })
    .await;
    assert_eq!(
        (done.outcome, done.retry_of.as_deref()),
        (Some(TaskOutcome::Completed), Some(dead_id.as_str()))
    );
    let err = admin
        .act(
            &id,
            &Action::RetryDeadLetter {
                task_id: dead_id.clone(),
            },
            "alice",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TaskNotFound");

    // Two more letters: one deleted, then a purge.
    for _ in 0..3 {
        let h = s
            .submit_with(
                SessionLane::Query,
                "read",
                json!({"path": "x"}),
                SubmitOptions::new().with_timeout_ms(100),
            )
            .await
            .unwrap();
        assert!(h.await.is_err());
    }
    let letters = admin.dead_letters(&id, None, 2).await.unwrap();
    assert_eq!(letters.letters.len(), 2);
    let last = admin
        .dead_letters(&id, letters.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!((last.letters.len(), last.next.is_none()), (1, true));
    admin
        .act(
            &id,
            &Action::DeleteDeadLetter {
                task_id: letters.letters[0].task_id.clone(),
            },
            "alice",
        )
        .await
        .unwrap();
    until("two copies left", || async {
        (mirrored().await == 2).then_some(())
    })
    .await;
    let purged = admin
        .act(&id, &Action::PurgeDeadLetters, "alice")
        .await
        .unwrap();
    assert_eq!(purged.purged, Some(2));
    until("no copies left", || async {
        (mirrored().await == 0).then_some(())
    })
    .await;

    // A viewer reads but cannot act; another tenant's viewer sees nothing of tenant a.
    let viewer = AdminClient::connect(as_user("viewer")).await.unwrap();
    assert_eq!(viewer.session(&id).await.unwrap().session_id, id);
    let err = viewer
        .act(
            &id,
            &Action::Pause {
                lane: SessionLane::Query,
            },
            "mallory",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "PermissionDenied", "{err}");
    assert!(!s.queue_stats().await.per_lane[&SessionLane::Query].paused);
    let other = AdminClient::connect_tenant(as_user("viewer-b"), Some("b"))
        .await
        .unwrap();
    assert!(
        other
            .sessions(None, None, 10)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
    assert_eq!(
        other.session(&id).await.unwrap_err().code(),
        "SessionNotFound"
    );
    // The workers: from their presence.
    let workers = until("the worker's presence", || async {
        let w = viewer.workers();
        (!w.is_empty()).then_some(w)
    })
    .await;
    assert_eq!(workers[0].presence.worker_id, "w-admin-test");

    // The session goes: its dead letters stay readable from the stream, actions are refused.
    let h = s
        .submit_with(
            SessionLane::Query,
            "read",
            json!({"path": "y"}),
            SubmitOptions::new().with_timeout_ms(100),
        )
        .await
        .unwrap();
    let left = h.task_id().to_owned();
    assert!(h.await.is_err());
    until("the last copy", || async {
        (mirrored().await == 1).then_some(())
    })
    .await;
    s.close().await;
    assert_eq!(
        admin.session(&id).await.unwrap_err().code(),
        "SessionNotFound"
    );
    let letters = admin.dead_letters(&id, None, 10).await.unwrap();
    assert_eq!(letters.source, LetterSource::Stream);
    assert_eq!(letters.letters[0].task_id, left);
    let err = admin
        .act(&id, &Action::RetryDeadLetter { task_id: left }, "alice")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "SessionNotFound", "{err}");
    assert!(
        admin
            .sessions(None, None, 10)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
    worker.close().await;
}

/// A session that just closed, the last of its process (whose connection outlives it for a
/// while): asked about at once, with its location still remembered, it is `SessionNotFound`,
/// never a request left to time out; listing pages leave it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_just_closed_is_not_found_at_once() {
    let (url, _server) = test_support::nats();
    let nats = NatsConfig::new(&url).with_prefix(test_support::unique_prefix());
    let admin = AdminClient::connect(nats.clone()).await.unwrap();
    for _ in 0..5 {
        let (s, _dir) = session(nats.clone(), "default");
        s.broker_ready(Duration::from_secs(10)).await.unwrap();
        let id = s.id().to_owned();
        admin.session(&id).await.unwrap();
        s.close().await;
        drop(s);
        let err = admin.session(&id).await.unwrap_err();
        assert_eq!(err.code(), "SessionNotFound", "{err}");
        let page = admin.sessions(None, None, 10).await.unwrap();
        assert!(page.sessions.iter().all(|p| p.session_id != id), "{page:?}");
    }
}

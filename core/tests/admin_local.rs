//! The admin API in process (`AdminClient::local`): sessions listed and paged, tasks by state,
//! actions, and the bounded ring of finished tasks walked whole by its cursor.

use std::collections::HashSet;

use a3s_code_core::admin::{Action, AdminClient, TaskOutcome, TaskQuery, TaskState};
use a3s_code_core::queue::{LaneHandlerConfig, QueueEvent, SessionLane, TaskHandlerMode};
use a3s_code_core::{
    Agent, AgentConfig, AgentSession, ExternalTaskResult, SessionOptions, SessionQueueConfig,
};
use serde_json::json;

fn open(config: SessionQueueConfig, id: &str) -> AgentSession {
    Agent::from_config(AgentConfig::default())
        .session(
            ".",
            Some(
                SessionOptions::new()
                    .with_queue_config(config)
                    .with_session_id(id),
            ),
        )
        .unwrap()
}

#[tokio::test]
async fn sessions_are_listed_paged_and_leave_when_closed() {
    let tag = uuid_tag();
    let sessions: Vec<AgentSession> = (0..5)
        .map(|i| open(SessionQueueConfig::default(), &format!("{tag}-{i}")))
        .collect();
    let admin = AdminClient::local();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = admin
            .sessions(Some("default"), cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.sessions.len() <= 2);
        seen.extend(
            page.sessions
                .into_iter()
                .map(|s| s.session_id)
                .filter(|s| s.starts_with(&tag)),
        );
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..5).map(|i| format!("{tag}-{i}")).collect::<Vec<_>>()
    );
    assert!(
        admin
            .sessions(Some("other"), None, 10)
            .await
            .unwrap()
            .sessions
            .iter()
            .all(|s| !s.session_id.starts_with(&tag))
    );
    assert_eq!(
        admin.sessions(None, None, 0).await.unwrap_err().code(),
        "InvalidConfig"
    );

    sessions[0].close().await;
    assert_eq!(
        admin.session(&format!("{tag}-0")).await.unwrap_err().code(),
        "SessionNotFound"
    );
    let err = admin
        .act(
            &format!("{tag}-0"),
            &Action::Pause {
                lane: SessionLane::Query,
            },
            "t",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "SessionNotFound");
    drop(sessions);
    let left = admin.sessions(None, None, 1000).await.unwrap();
    assert!(
        left.sessions
            .iter()
            .all(|s| !s.session_id.starts_with(&tag)),
        "dropped sessions leave"
    );
}

#[tokio::test]
async fn tasks_by_state_actions_and_a_retried_dead_letter() {
    let external = LaneHandlerConfig {
        mode: TaskHandlerMode::External,
        timeout_ms: 200,
    };
    let config = SessionQueueConfig {
        lane_handlers: [(SessionLane::Query, external)].into(),
        query_max_concurrency: 1,
        enable_dlq: true,
        enable_metrics: true,
        ..Default::default()
    };
    let s = open(config, &format!("{}-tasks", uuid_tag()));
    let id = s.id().to_owned();
    let admin = AdminClient::local();
    let mut events = s.subscribe_events();

    // One in flight (nobody claims it: it times out into the DLQ), two pending.
    let first = s
        .submit(SessionLane::Query, "read", json!({"path": "a"}))
        .await
        .unwrap();
    let second = s
        .submit(SessionLane::Query, "read", json!({"path": "b"}))
        .await
        .unwrap();
    let third = s
        .submit(SessionLane::Query, "read", json!({"path": "c"}))
        .await
        .unwrap();
    let in_flight = admin
        .tasks(&id, &TaskQuery::new(TaskState::InFlight))
        .await
        .unwrap();
    assert_eq!(in_flight.tasks.len(), 1);
    assert_eq!(in_flight.tasks[0].task_id, first.task_id());
    assert_eq!(
        in_flight.tasks[0].worker_id, None,
        "in process: no worker id"
    );
    let pending = admin
        .tasks(&id, &TaskQuery::new(TaskState::Pending))
        .await
        .unwrap();
    let ids: Vec<&str> = pending.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, [second.task_id(), third.task_id()]);
    let found = admin
        .tasks(
            &id,
            &TaskQuery::new(TaskState::Pending).with_search(third.task_id()),
        )
        .await
        .unwrap();
    assert_eq!(found.tasks.len(), 1);
    let bad = TaskQuery::new(TaskState::Finished).with_cursor("nope");
    assert_eq!(
        admin.tasks(&id, &bad).await.unwrap_err().code(),
        "InvalidConfig"
    );

    admin
        .act(
            &id,
            &Action::Cancel {
                task_id: second.task_id().into(),
            },
            "t",
        )
        .await
        .unwrap();
    admin
        .act(
            &id,
            &Action::Cancel {
                task_id: third.task_id().into(),
            },
            "t",
        )
        .await
        .unwrap();
    let dead = first.task_id().to_owned();
    assert!(first.await.is_err());
    let view = admin.session(&id).await.unwrap();
    assert_eq!(view.dead_letters, 1);
    assert_eq!(view.finished_kept, 3);

    // Retry: a new task with retry_of, the Resubmitted event, the outcome in the ring.
    let worker = s.clone();
    let serve = tokio::spawn(async move {
        let tasks = worker
            .claim_external_tasks(1, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        worker
            .complete_external_task(
                &tasks[0].task_id,
                ExternalTaskResult::ok(json!({"content": "ok"})),
            )
            .await
            .unwrap();
    });
    let retried = admin
        .act(
            &id,
            &Action::RetryDeadLetter {
                task_id: dead.clone(),
            },
            "t",
        )
        .await
        .unwrap()
        .task_id
        .unwrap();
    serve.await.unwrap();
    let finished = loop {
        let page = admin
            .tasks(&id, &TaskQuery::new(TaskState::Finished))
            .await
            .unwrap();
        if page.tasks.len() == 4 {
            break page;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(finished.tasks[0].task_id, retried, "newest first");
    assert_eq!(finished.tasks[0].retry_of.as_deref(), Some(dead.as_str()));
    assert_eq!(finished.tasks[0].outcome, Some(TaskOutcome::Completed));
    assert_eq!(finished.tasks[1].outcome, Some(TaskOutcome::TimedOut));
    assert_eq!(finished.tasks[3].outcome, Some(TaskOutcome::Cancelled));
    let mut resubmitted = false;
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_millis(100), events.recv()).await
    {
        if let QueueEvent::Resubmitted {
            task_id, retry_of, ..
        } = e
        {
            assert_eq!(
                (task_id.as_str(), retry_of.as_str()),
                (retried.as_str(), dead.as_str())
            );
            resubmitted = true;
        }
    }
    assert!(resubmitted);
    assert_eq!(admin.session(&id).await.unwrap().dead_letters, 0);
}

/// The cost rule: with a ring of 100 000 and 100 000 finished tasks, a page holds at
/// most the page size and the cursor walks all 100 000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_walks_a_ring_of_100_000() {
    const N: usize = 100_000;
    let config = SessionQueueConfig {
        finished_history: N,
        max_pending: N,
        query_max_concurrency: 64,
        ..Default::default()
    };
    let s = open(config, &format!("{}-ring", uuid_tag()));
    s.register_handler("noop", |_task| async { ExternalTaskResult::ok(json!({})) });
    let mut handles = Vec::with_capacity(N);
    for _ in 0..N {
        handles.push(
            s.submit(SessionLane::Query, "noop", json!({}))
                .await
                .unwrap(),
        );
    }
    for h in handles {
        h.await.unwrap();
    }
    let admin = AdminClient::local();
    let mut seen = HashSet::with_capacity(N);
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = TaskQuery::new(TaskState::Finished).with_limit(1_000);
        if let Some(c) = cursor.take() {
            q = q.with_cursor(c);
        }
        let page = admin.tasks(s.id(), &q).await.unwrap();
        assert!(page.tasks.len() <= 1_000);
        pages += 1;
        for t in page.tasks {
            assert!(seen.insert(t.task_id), "each task once");
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (N, 100));
    // One more task: the oldest leaves the ring.
    s.submit(SessionLane::Query, "noop", json!({}))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(admin.session(s.id()).await.unwrap().finished_kept, N);
}

fn uuid_tag() -> String {
    format!(
        "t{:x}",
        std::process::id() as u64 * 1_000_003 + rand_u32() as u64
    )
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u32
}

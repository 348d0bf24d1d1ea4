//! What a dashboard page costs a busy session: a ring of 100 000 finished tasks (and a backlog
//! of 100 000 pending ones), then the admin API's pages timed: the first page, a page deep in
//! the ring by its cursor, a search by id (a full scan), the whole walk, and the session view.
//!
//! `cargo bench -p a3s-code-core --bench admin_pages -- [TASKS]` (default 100 000). Prints one
//! line per measure (median of 200 calls, or of 5 for the walk).

use std::time::{Duration, Instant};

use a3s_code_core::admin::{AdminClient, TaskQuery, TaskState};
use a3s_code_core::queue::SessionLane;
use a3s_code_core::{Agent, AgentConfig, ExternalTaskResult, SessionOptions, SessionQueueConfig};
use serde_json::json;

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

fn main() {
    let tasks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = SessionQueueConfig {
            finished_history: tasks,
            max_pending: tasks + 1,
            query_max_concurrency: 256,
            ..Default::default()
        };
        let session = Agent::from_config(AgentConfig::default())
            .session(".", Some(SessionOptions::new().with_queue_config(config)))
            .unwrap();
        session.register_handler("noop", |_task| async { ExternalTaskResult::ok(json!({})) });
        let mut handles = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            handles.push(
                session
                    .submit(SessionLane::Query, "noop", json!({}))
                    .await
                    .unwrap(),
            );
        }
        for h in handles {
            h.await.unwrap();
        }
        // A deep backlog too: the Execute lane paused with `tasks` waiting.
        session.pause_lane(SessionLane::Execute).await.unwrap();
        for i in 0..tasks {
            session
                .submit(SessionLane::Execute, "noop", json!({"i": i}))
                .await
                .unwrap();
        }
        let admin = AdminClient::local();
        let id = session.id().to_owned();
        let time = |q: TaskQuery, n: usize| {
            let admin = admin.clone();
            let id = id.clone();
            async move {
                let mut d = Vec::with_capacity(n);
                let mut got = 0;
                for _ in 0..n {
                    let t = Instant::now();
                    got = admin.tasks(&id, &q).await.unwrap().tasks.len();
                    d.push(t.elapsed());
                }
                (median(d), got)
            }
        };
        let first = time(TaskQuery::new(TaskState::Finished), 200).await;
        println!(
            "finished, first page of 50: {:?} ({} tasks)",
            first.0, first.1
        );
        let deep_cursor = (tasks / 10).to_string();
        let deep = time(
            TaskQuery::new(TaskState::Finished).with_cursor(deep_cursor),
            200,
        )
        .await;
        println!(
            "finished, a page of 50 at the ring's oldest tenth: {:?} ({} tasks)",
            deep.0, deep.1
        );
        let pending = time(TaskQuery::new(TaskState::Pending), 200).await;
        println!(
            "pending, first page of 50 of {tasks}: {:?} ({} tasks)",
            pending.0, pending.1
        );
        let search = time(
            TaskQuery::new(TaskState::Finished).with_search("ffffffff"),
            20,
        )
        .await;
        println!(
            "finished, search by id (a scan of {tasks}): {:?} ({} found)",
            search.0, search.1
        );
        let mut walks = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let mut cursor: Option<String> = None;
            let mut seen = 0;
            loop {
                let mut q = TaskQuery::new(TaskState::Finished).with_limit(1_000);
                if let Some(c) = cursor.take() {
                    q = q.with_cursor(c);
                }
                let page = admin.tasks(&id, &q).await.unwrap();
                seen += page.tasks.len();
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            assert_eq!(seen, tasks);
            walks.push(t.elapsed());
        }
        println!(
            "finished, the whole walk by pages of 1 000: {:?}",
            median(walks)
        );
        let mut views = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            admin.session(&id).await.unwrap();
            views.push(t.elapsed());
        }
        println!("session view (lanes, figures): {:?}", median(views));
        session.close().await;
    });
}

//! `a3s-code dashboard` over a real nats-server with the credentials `a3s-code auth
//! permissions` generates: a viewer's dashboard reads the session, and its actions are refused
//! by the session's side (`PermissionDenied`), after which it says it is a viewer; an admin's
//! dashboard acts.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use a3s_code_core::broker::NatsConfig;
use a3s_code_core::broker::permissions::{Permissions, Role};
use a3s_code_core::queue::SessionLane;
use a3s_code_core::{Agent, AgentConfig, SessionOptions};
use serde_json::{Value, json};

struct Dashboard {
    child: Child,
    base: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dashboard(url: &str, prefix: &str, user: &str, perms: &Permissions) -> Dashboard {
    let port = test_support::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
        .args(["dashboard", "--nats", url, "--prefix", prefix])
        .args(["--user", user, "--password", "pw"])
        .args(["--inbox-prefix", &perms.inbox_prefix])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("A3S_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn a3s-code dashboard");
    Dashboard {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let res = http.get(url).send().await.ok()?;
    let status = res.status().as_u16();
    Some((status, serde_json::from_str(&res.text().await.ok()?).ok()?))
}

/// Polls `url` until it answers 200 (the dashboard started, the session announced), up to 20 s.
async fn until_ok(http: &reqwest::Client, url: &str) -> Value {
    let start = Instant::now();
    loop {
        if let Some((200, body)) = get(http, url).await {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no answer from {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pause(http: &reqwest::Client, d: &Dashboard, session: &str) -> (u16, Value) {
    let res = http
        .post(format!("{}/api/sessions/{session}/actions", d.base))
        .header("content-type", "application/json")
        .header("x-a3s-dashboard", "1")
        .body(json!({ "action": "pause", "lane": "query" }).to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (
        status,
        serde_json::from_str(&res.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_credential_reads_and_cannot_act() {
    let prefix = test_support::unique_prefix();
    let users: Vec<(&str, Permissions)> = [Role::Session, Role::Viewer, Role::Admin]
        .into_iter()
        .zip(["session", "viewer", "admin"])
        .map(|(role, user)| (user, Permissions::for_role(role, &prefix, None).unwrap()))
        .collect();
    let entries: Vec<_> = users.iter().map(|(u, p)| (*u, "pw", p)).collect();
    let conf = Permissions::authorization(&entries);
    let server = test_support::NatsServer::start_with_config(&conf);
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsConfig::new(server.url())
        .with_prefix(&prefix)
        .with_user_password("session", "pw")
        .with_inbox_prefix(users[0].1.inbox_prefix.clone());
    let session = Agent::from_config(AgentConfig::default())
        .session(dir.path(), Some(SessionOptions::new().with_nats(nats)))
        .unwrap();
    session.broker_ready(Duration::from_secs(10)).await.unwrap();
    let id = session.id().to_owned();

    // Plain HTTP; reqwest still wants a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let viewer = dashboard(&server.url(), &prefix, "viewer", &users[1].1);
    let view = until_ok(&http, &format!("{}/api/sessions/{id}", viewer.base)).await;
    assert_eq!(view["session_id"], id.as_str());
    let info = until_ok(&http, &format!("{}/api/info", viewer.base)).await;
    assert_eq!(
        info["can_act"], true,
        "not known to be a viewer yet: {info}"
    );

    let (status, body) = pause(&http, &viewer, &id).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("PermissionDenied")),
        "{body}"
    );
    let info = until_ok(&http, &format!("{}/api/info", viewer.base)).await;
    assert_eq!(
        (&info["viewer"], &info["can_act"]),
        (&json!(true), &json!(false)),
        "the page now hides its buttons: {info}"
    );
    let stats = session.queue_stats().await;
    assert!(!stats.per_lane[&SessionLane::Query].paused);

    let admin = dashboard(&server.url(), &prefix, "admin", &users[2].1);
    until_ok(&http, &format!("{}/api/sessions/{id}", admin.base)).await;
    let (status, body) = pause(&http, &admin, &id).await;
    assert_eq!(status, 200, "{body}");
    let stats = session.queue_stats().await;
    assert!(stats.per_lane[&SessionLane::Query].paused);
    session.close().await;
}

/// `a3s-code demo DIR --dashboard ADDR`: one command, and its session can be watched and
/// steered from the page's API while the demo keeps searching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_session() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("f{i}.rs")), "fn main() {}\n").unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_a3s-code"))
        .arg("demo")
        .arg(dir.path())
        .args(["--dashboard", "127.0.0.1:0"])
        .env("A3S_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn a3s-code demo");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // "dashboard: http://127.0.0.1:PORT/#/session/ID"
    let mut lines = stdout.lines().map_while(Result::ok);
    let line = lines
        .find(|l| l.starts_with("dashboard: "))
        .expect("the demo prints the dashboard's URL");
    // The rest of its output is read (and dropped), so that printing never fails.
    std::thread::spawn(move || lines.for_each(drop));
    let demo = Dashboard {
        child,
        base: line["dashboard: ".len()..]
            .split("/#")
            .next()
            .unwrap()
            .to_owned(),
    };
    let id = line.rsplit('/').next().unwrap().to_owned();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let view = until_ok(&http, &format!("{}/api/sessions/{id}", demo.base)).await;
    assert_eq!(view["session_id"], id.as_str());
    let (status, body) = pause(&http, &demo, &id).await;
    assert_eq!(status, 200, "{body}");
    let view = until_ok(&http, &format!("{}/api/sessions/{id}", demo.base)).await;
    let query = view["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lane"] == "query")
        .unwrap();
    assert_eq!(query["paused"], true, "{view}");
}

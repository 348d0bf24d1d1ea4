//! The dashboard's safety rules and its actions, against a real listener on a free port and
//! the sessions of this process.

use a3s_code_core::admin::AdminClient;
use a3s_code_core::{Agent, AgentConfig, AgentSession};
use serde_json::{Value, json};

use super::{Dashboard, Options, serve};

struct Client {
    http: reqwest::Client,
    base: String,
    _dashboard: Dashboard,
}

async fn start(options: Options) -> Client {
    let dashboard = serve(
        AdminClient::local(),
        "127.0.0.1:0".parse().unwrap(),
        options,
    )
    .await
    .expect("serves");
    Client {
        http: crate::stats::http_client().unwrap(),
        base: format!("http://{}", dashboard.local_addr()),
        _dashboard: dashboard,
    }
}

fn tokens() -> Options {
    Options::default()
        .with_tokens(&["alice=alice-secret-1".to_owned()])
        .unwrap()
}

fn session() -> (AgentSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let session = Agent::from_config(AgentConfig::default())
        .session(dir.path(), None)
        .unwrap();
    (session, dir)
}

/// A request as the dashboard's own page sends an action.
fn action(c: &Client, session: &str, body: &Value) -> reqwest::RequestBuilder {
    c.http
        .post(format!("{}/api/sessions/{session}/actions", c.base))
        .header("content-type", "application/json")
        .header("x-a3s-dashboard", "1")
        .header("origin", &c.base)
        .header("sec-fetch-site", "same-origin")
        .body(body.to_string())
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("the dashboard answers");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The lanes the session's JSON shows paused.
async fn paused(c: &Client, session: &str) -> Vec<String> {
    let (status, view) = send(c.http.get(format!("{}/api/sessions/{session}", c.base))).await;
    assert_eq!(status, 200, "{view}");
    view["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["paused"] == true)
        .map(|l| l["lane"].as_str().unwrap().to_owned())
        .collect()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn actions_apply_to_sessions_of_this_process() {
    let (session, _dir) = session();
    let c = start(Options::default()).await;
    let pause = json!({ "action": "pause", "lane": "execute" });
    let (status, _) = send(action(&c, session.id(), &pause)).await;
    assert_eq!(status, 200);
    assert_eq!(paused(&c, session.id()).await, ["execute"]);

    let control = json!({ "action": "pause", "lane": "control" });
    let (status, body) = send(action(&c, session.id(), &control)).await;
    assert_eq!((status, code(&body)), (400, "InvalidConfig"), "{body}");
    let cancel = json!({ "action": "cancel", "task_id": "nope" });
    let (status, body) = send(action(&c, session.id(), &cancel)).await;
    assert_eq!((status, code(&body)), (404, "TaskNotFound"), "{body}");
    let (status, body) = send(action(&c, "no-such-session", &pause)).await;
    assert_eq!((status, code(&body)), (404, "SessionNotFound"), "{body}");

    let (status, page) = send(c.http.get(format!("{}/api/sessions?limit=1000", c.base))).await;
    assert_eq!(status, 200);
    assert!(
        page["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["session_id"] == session.id()),
        "{page}"
    );
    let tasks = format!(
        "{}/api/sessions/{}/tasks?state=in_flight",
        c.base,
        session.id()
    );
    let (status, page) = send(c.http.get(tasks)).await;
    assert_eq!((status, &page["tasks"]), (200, &json!([])), "{page}");
    session.close().await;
}

#[tokio::test]
async fn read_only_refuses_every_action() {
    let (session, _dir) = session();
    let c = start(Options {
        read_only: true,
        ..Default::default()
    })
    .await;
    for body in [
        json!({ "action": "pause", "lane": "query" }),
        json!({ "action": "purge_dead_letters" }),
    ] {
        let (status, body) = send(action(&c, session.id(), &body)).await;
        assert_eq!((status, code(&body)), (403, "PermissionDenied"), "{body}");
    }
    let (_, info) = send(c.http.get(format!("{}/api/info", c.base))).await;
    assert_eq!(
        (&info["read_only"], &info["can_act"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(paused(&c, session.id()).await, Vec::<String>::new());
    session.close().await;
}

#[tokio::test]
async fn cross_site_requests_are_refused() {
    let (session, _dir) = session();
    let c = start(Options::default()).await;
    let url = format!("{}/api/sessions/{}/actions", c.base, session.id());
    let pause = json!({ "action": "pause", "lane": "query" }).to_string();
    // What a form or a simple fetch of another site can send: no custom header.
    let no_header = c
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(pause.clone());
    let (status, body) = send(no_header).await;
    assert_eq!((status, code(&body)), (403, "CrossSiteRequest"), "{body}");
    // The page's own headers, plus a second Origin or Sec-Fetch-Site of another site.
    for (header, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let pause = json!({ "action": "pause", "lane": "query" });
        let (status, body) = send(action(&c, session.id(), &pause).header(header, value)).await;
        assert_eq!((status, code(&body)), (403, "CrossSiteRequest"), "{body}");
    }
    let form = c
        .http
        .post(&url)
        .header("x-a3s-dashboard", "1")
        .header("content-type", "text/plain")
        .body(pause);
    let (status, body) = send(form).await;
    assert_eq!(
        (status, code(&body)),
        (415, "UnsupportedMediaType"),
        "{body}"
    );
    let (status, _) = send(c.http.get(&url)).await;
    assert_eq!(status, 405, "actions are POST only");
    // A page that rebinds its own name to 127.0.0.1 still sends that name.
    let rebound = c
        .http
        .get(format!("{}/api/sessions", c.base))
        .header("host", "evil.example:8080");
    let (status, body) = send(rebound).await;
    assert_eq!((status, code(&body)), (403, "Forbidden"), "{body}");

    assert_eq!(
        paused(&c, session.id()).await,
        Vec::<String>::new(),
        "nothing was paused"
    );
    session.close().await;
}

#[tokio::test]
async fn other_machines_need_a_token() {
    let err = serve(
        AdminClient::local(),
        "0.0.0.0:0".parse().unwrap(),
        Options::default(),
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--token"), "{err}");
    assert!(
        Options::default()
            .with_tokens(&["short=abc".to_owned()])
            .is_err(),
        "secrets have 8 characters or more"
    );
    assert!(
        Options::default()
            .with_tokens(&["no-equals-sign".to_owned()])
            .is_err()
    );
}

#[tokio::test]
async fn tokens_name_the_actor() {
    let (session, _dir) = session();
    let c = start(tokens()).await;
    let sessions = format!("{}/api/sessions", c.base);
    let (status, body) = send(c.http.get(&sessions)).await;
    assert_eq!((status, code(&body)), (401, "Unauthorized"), "{body}");
    let (status, _) = send(c.http.get(&sessions).bearer_auth("wrong-secret")).await;
    assert_eq!(status, 401);
    let (status, _) = send(c.http.get(&sessions).bearer_auth("alice-secret-1")).await;
    assert_eq!(status, 200);
    for open in ["healthz", "metrics"] {
        let (status, _) = send(c.http.get(format!("{}/{open}", c.base))).await;
        assert_eq!(
            status, 200,
            "/{open} needs no token (Prometheus scrapes it)"
        );
    }
    let (status, _) = send(c.http.get(format!("{}/", c.base))).await;
    assert_eq!(status, 200, "the page (and its login form) does not");

    // The page's login: a cookie only this site sends, and scripts cannot read.
    let login = |token: &str| {
        c.http
            .post(format!("{}/api/login", c.base))
            .header("content-type", "application/json")
            .header("x-a3s-dashboard", "1")
            .body(json!({ "token": token }).to_string())
    };
    let (status, _) = send(login("wrong-secret")).await;
    assert_eq!(status, 401);
    let res = login("alice-secret-1").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let (status, info) = send(
        c.http
            .get(format!("{}/api/info", c.base))
            .header("cookie", &pair),
    )
    .await;
    assert_eq!((status, &info["actor"]), (200, &json!("alice")), "{info}");
    let pause = json!({ "action": "pause", "lane": "generate" });
    let (status, body) = send(action(&c, session.id(), &pause).header("cookie", &pair)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        send(action(&c, session.id(), &pause).header("cookie", "a3s_dashboard=forged")).await;
    assert_eq!(status, 401);
    session.close().await;
}

#[tokio::test]
async fn metrics_show_the_fleet_gauge() {
    let c = start(Options::default()).await;
    let (status, body) = send(c.http.get(format!("{}/metrics", c.base))).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap_or_default();
    assert!(
        text.contains("# TYPE a3s_fleet_worker_slots_needed gauge"),
        "{text}"
    );
}

#[test]
fn the_live_view_cuts_long_strings() {
    let long = "é".repeat(3_000);
    let mut page = json!({ "tasks": [{ "payload": { "content": long, "path": "a.txt" } }] });
    super::http::shorten_strings(&mut page);
    let content = page["tasks"][0]["payload"]["content"].as_str().unwrap();
    assert!(
        content.len() < 2_100 && content.ends_with("… (6000 bytes)"),
        "{content}"
    );
    assert_eq!(page["tasks"][0]["payload"]["path"], "a.txt");
}

#[tokio::test]
async fn guessing_tokens_is_cut_short() {
    let c = start(tokens()).await;
    let sessions = format!("{}/api/sessions", c.base);
    for i in 0..20 {
        let (status, _) = send(c.http.get(&sessions).bearer_auth(format!("guess-{i}"))).await;
        assert_eq!(status, 401);
    }
    let (status, body) = send(c.http.get(&sessions).bearer_auth("alice-secret-1")).await;
    assert_eq!((status, code(&body)), (429, "TooManyRequests"), "{body}");
}

#[tokio::test]
async fn tenant_keeps_other_tenants_out() {
    let (session, _dir) = session();
    let c = start(Options {
        tenant: Some("acme".to_owned()),
        ..Default::default()
    })
    .await;
    let (status, body) = send(
        c.http
            .get(format!("{}/api/sessions/{}", c.base, session.id())),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "SessionNotFound"), "{body}");
    let tasks = format!("{}/api/sessions/{}/tasks", c.base, session.id());
    let (status, _) = send(c.http.get(tasks)).await;
    assert_eq!(status, 404);
    let pause = json!({ "action": "pause", "lane": "query" });
    let (status, _) = send(action(&c, session.id(), &pause)).await;
    assert_eq!(status, 404);
    let (_, page) = send(c.http.get(format!("{}/api/sessions", c.base))).await;
    assert_eq!(page["sessions"], json!([]), "{page}");
    session.close().await;
}

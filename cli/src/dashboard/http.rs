//! The dashboard's HTTP side: the page, its JSON API, the event stream, `/metrics`, and the
//! rules of who may do what.
//!
//! - Without `--token`, the listener is a loopback address and requests must name a loopback
//!   host (what a DNS-rebinding page cannot do); the actor is `local`.
//! - With tokens, every API call needs one: `Authorization: Bearer SECRET`, or the HttpOnly
//!   SameSite=Strict cookie `POST /api/login` sets. The actor is the token's name.
//! - Actions are `POST` with a JSON body, the header `X-A3S-Dashboard: 1` (a page of another
//!   site cannot send it without CORS, which this server never grants), and, when the browser
//!   sends them, an `Origin` equal to this host and `Sec-Fetch-Site: same-origin`.
//! - `--read-only` refuses every action; a viewer credential makes the core refuse them too
//!   (`PermissionDenied`), after which the page shows no action buttons.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use a3s_code_core::admin::{Action, AdminClient, MAX_PAGE, SessionView, TaskQuery, TaskState};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Options;
use super::history::History;

/// How often the event stream pushes the viewed data.
const PUSH_EVERY: Duration = Duration::from_millis(1500);
/// The login cookie.
const COOKIE: &str = "a3s_dashboard";
/// How long a login lasts.
const LOGIN_FOR: Duration = Duration::from_secs(12 * 3600);
/// Logins kept at once; the oldest go first.
const MAX_LOGINS: usize = 1024;
/// Wrong tokens tried in a minute before every try is refused for the rest of it.
const MAX_WRONG_TOKENS: usize = 20;
/// The longest string of a payload the live view sends (scripts get whole payloads).
const MAX_SHOWN_STRING: usize = 2_000;
/// The header every action request carries.
const ACTION_HEADER: &str = "x-a3s-dashboard";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// The dashboard's state.
pub(crate) struct App {
    pub(crate) admin: AdminClient,
    options: Options,
    logins: Mutex<HashMap<String, (String, Instant)>>,
    /// When wrong tokens were tried, the last minute's.
    wrong_tokens: Mutex<VecDeque<Instant>>,
    /// The NATS credential may only read: the core refused an action with `PermissionDenied`.
    viewer: AtomicBool,
    pub(crate) history: History,
}

impl App {
    pub(crate) fn new(admin: AdminClient, options: Options) -> Self {
        Self {
            admin,
            options,
            logins: Mutex::default(),
            wrong_tokens: Mutex::default(),
            viewer: AtomicBool::new(false),
            history: History::default(),
        }
    }

    fn can_act(&self) -> bool {
        !self.options.read_only && !self.viewer.load(Ordering::Relaxed)
    }

    /// Who is asking: the token's name, `local` without tokens.
    fn who(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if self.options.tokens.is_empty() {
            return Ok("local".to_owned());
        }
        if let Some(secret) = bearer(headers) {
            return self.token_name(secret);
        }
        if let Some(id) = cookie(headers, COOKIE) {
            let mut logins = self.logins.lock();
            match logins.get(id) {
                Some((name, at)) if at.elapsed() < LOGIN_FOR => return Ok(name.clone()),
                Some(_) => {
                    logins.remove(id);
                }
                None => {}
            }
        }
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "log in with a dashboard token (Authorization: Bearer SECRET)",
        ))
    }

    /// The name of the token `secret` is; wrong secrets are counted, and past
    /// [`MAX_WRONG_TOKENS`] a minute every try is refused until the minute is over.
    fn token_name(&self, secret: &str) -> Result<String, ApiError> {
        let mut wrong = self.wrong_tokens.lock();
        while wrong
            .front()
            .is_some_and(|at| at.elapsed() > Duration::from_secs(60))
        {
            wrong.pop_front();
        }
        if wrong.len() >= MAX_WRONG_TOKENS {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "too many wrong tokens: try again in a minute",
            ));
        }
        // Every token is compared in full, so the time taken says nothing about the secrets.
        let mut found = None;
        for (name, s) in &self.options.tokens {
            if equal_in_constant_time(s.as_bytes(), secret.as_bytes()) {
                found = Some(name.clone());
            }
        }
        found.ok_or_else(|| {
            wrong.push_back(Instant::now());
            ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "unknown token")
        })
    }

    fn login(&self, name: String) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut logins = self.logins.lock();
        logins.retain(|_, (_, at)| at.elapsed() < LOGIN_FOR);
        if logins.len() >= MAX_LOGINS
            && let Some(oldest) = logins
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            logins.remove(&oldest);
        }
        logins.insert(id.clone(), (name, Instant::now()));
        id
    }

    /// `session_id`'s view; a session of another tenant than `--tenant` is not found.
    async fn session(&self, session_id: &str) -> Result<SessionView, ApiError> {
        let view = self.admin.session(session_id).await?;
        match &self.options.tenant {
            Some(t) if *t != view.tenant => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "SessionNotFound",
                format!("session {session_id} is not one of tenant {t}"),
            )),
            _ => Ok(view),
        }
    }

    /// Checks `--tenant` before reading a session's tasks or letters (one request more).
    async fn check_tenant(&self, session_id: &str) -> Result<(), ApiError> {
        if self.options.tenant.is_some() {
            self.session(session_id).await?;
        }
        Ok(())
    }
}

/// The routes.
pub(crate) fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/sessions", get(sessions))
        .route("/api/tenants", get(tenants))
        .route("/api/sessions/{id}", get(session))
        .route("/api/sessions/{id}/tasks", get(tasks))
        .route("/api/sessions/{id}/dead_letters", get(dead_letters))
        .route("/api/sessions/{id}/history", get(history))
        .route("/api/sessions/{id}/actions", post(act))
        .route("/api/workers", get(workers))
        .route("/api/processes", get(processes))
        .route("/api/stream", get(stream))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    let open = Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/assets/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/assets/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route(
            "/assets/favicon.svg",
            get(|| asset("image/svg+xml", FAVICON_SVG)),
        )
        .route("/api/info", get(info))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout));
    api.merge(open)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such page") })
        .layer(middleware::from_fn_with_state(app.clone(), guard_host))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::map_response(security_headers))
        .with_state(app)
}

// ----- errors --------------------------------------------------------------------------------

/// An error answered as `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
}

impl From<a3s_code_core::Error> for ApiError {
    fn from(err: a3s_code_core::Error) -> Self {
        let code = err.code();
        let status = match code {
            "SessionNotFound" | "TaskNotFound" => StatusCode::NOT_FOUND,
            "PermissionDenied" => StatusCode::FORBIDDEN,
            "InvalidConfig" | "InvalidPayload" => StatusCode::BAD_REQUEST,
            "TaskAlreadyCompleted" | "TaskCancelled" | "TaskTimedOut" | "ShutDown" => {
                StatusCode::CONFLICT
            }
            "QueueFull" => StatusCode::TOO_MANY_REQUESTS,
            "BrokerUnavailable" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, code, err.to_string())
    }
}

impl ApiError {
    fn body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = json_response(&self.body());
        *res.status_mut() = self.status;
        res
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response<T: Serialize + ?Sized>(value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A value, or the error that took its place (parts of a streamed view fail on their own).
fn or_error<T: Serialize>(r: Result<T, ApiError>) -> Value {
    match r {
        Ok(v) => serde_json::to_value(v).unwrap_or(Value::Null),
        Err(e) => e.body(),
    }
}

/// Cuts every string of `value` longer than [`MAX_SHOWN_STRING`] bytes (a `write` task's
/// content, ...): the live view pushes pages of tasks every 1.5 s.
pub(super) fn shorten_strings(value: &mut Value) {
    match value {
        Value::String(s) if s.len() > MAX_SHOWN_STRING => {
            let mut end = MAX_SHOWN_STRING;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            let total = s.len();
            s.truncate(end);
            let _ = write!(s, "… ({total} bytes)");
        }
        Value::Array(items) => items.iter_mut().for_each(shorten_strings),
        Value::Object(fields) => fields.values_mut().for_each(shorten_strings),
        _ => {}
    }
}

// ----- the rules -----------------------------------------------------------------------------

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

/// Without tokens, only requests that name a loopback host: a page of another site that
/// rebinds its DNS name to 127.0.0.1 still sends its own name.
async fn guard_host(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.options.tokens.is_empty()
        && let Some(host) = req.headers().get(header::HOST)
        && !host.to_str().is_ok_and(is_loopback_host)
    {
        return ApiError::forbidden(
            "Forbidden",
            "without --token the dashboard answers only to localhost names",
        )
        .into_response();
    }
    next.run(req).await
}

/// Who is asking, for the routes behind it.
#[derive(Clone)]
struct Actor(String);

async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    match app.who(req.headers()) {
        Ok(actor) => {
            req.extensions_mut().insert(Actor(actor));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// A state-changing request must come from this dashboard's own page (or a script that
/// says so): the custom header, a same-origin `Origin` and `Sec-Fetch-Site` when present, a
/// JSON body.
fn same_origin_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A header sent twice counts with each of its values.
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect::<Vec<_>>()
    };
    if value(ACTION_HEADER) != Some("1") {
        return Err(ApiError::forbidden(
            "CrossSiteRequest",
            "actions need the header X-A3S-Dashboard: 1",
        ));
    }
    if let Some(site) = values("sec-fetch-site")
        .into_iter()
        .find(|site| !matches!(*site, "same-origin" | "none"))
    {
        return Err(ApiError::forbidden(
            "CrossSiteRequest",
            format!("refused a {site} request"),
        ));
    }
    for origin in values("origin") {
        let host = value("host").unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || origin_host != Some(host) {
            return Err(ApiError::forbidden(
                "CrossSiteRequest",
                format!("refused a request from {origin}"),
            ));
        }
    }
    let json = value("content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "actions take a JSON body (Content-Type: application/json)",
        ));
    }
    Ok(())
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(secret.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

// ----- the page ------------------------------------------------------------------------------

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn info(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let actor = app.who(&headers).ok();
    json_response(&json!({
        "mode": if app.options.remote { "nats" } else { "local" },
        "source": app.options.source,
        "tenant": app.options.tenant,
        "read_only": app.options.read_only,
        "viewer": app.viewer.load(Ordering::Relaxed),
        "can_act": app.can_act(),
        "login_required": !app.options.tokens.is_empty(),
        "actor": actor,
        "version": env!("CARGO_PKG_VERSION"),
        "push_every_ms": PUSH_EVERY.as_millis() as u64,
    }))
}

#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

async fn login(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    same_origin_json(&headers)?;
    let body: LoginBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "InvalidPayload", format!("{e}")))?;
    let name = app.token_name(body.token.trim()).inspect_err(|e| {
        tracing::info!(error = %e.message, "dashboard login refused");
    })?;
    tracing::info!(actor = %name, "dashboard login");
    let id = app.login(name.clone());
    let mut res = json_response(&json!({ "actor": name }));
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LOGIN_FOR.as_secs()
    );
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("an ASCII cookie"),
    );
    Ok(res)
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult {
    same_origin_json(&headers)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        app.logins.lock().remove(id);
    }
    let mut res = json_response(&json!({}));
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        ))
        .expect("an ASCII cookie"),
    );
    Ok(res)
}

// ----- reads ---------------------------------------------------------------------------------

/// Where a page starts and how long it is (`serde(flatten)` cannot parse numbers from a
/// query string, so each query names these two fields itself).
#[derive(Deserialize, Default)]
struct Page {
    cursor: Option<String>,
    limit: Option<usize>,
}

impl Page {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, MAX_PAGE)
    }
}

#[derive(Deserialize)]
struct SessionsQuery {
    tenant: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl SessionsQuery {
    fn page(&self) -> Page {
        Page {
            cursor: self.cursor.clone().filter(|c| !c.is_empty()),
            limit: self.limit,
        }
    }
}

async fn sessions(State(app): State<Arc<App>>, Query(q): Query<SessionsQuery>) -> ApiResult {
    Ok(json_response(&app.sessions_page(&q).await?))
}

impl App {
    async fn sessions_page(
        &self,
        q: &SessionsQuery,
    ) -> Result<a3s_code_core::admin::SessionPage, ApiError> {
        let tenant = self
            .options
            .tenant
            .as_deref()
            .or(q.tenant.as_deref().filter(|t| !t.is_empty()));
        Ok(self
            .admin
            .sessions(tenant, q.page().cursor.as_deref(), q.page().limit())
            .await?)
    }

    /// Tenants: from the processes' announcements, or (in process) from the sessions.
    async fn tenants(&self) -> Result<Vec<Value>, ApiError> {
        #[derive(Default)]
        struct Tenant {
            processes: usize,
            sessions: usize,
            slots_needed: usize,
        }
        let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
        let processes = self.admin.processes().await?;
        if processes.is_empty() {
            let page = self
                .admin
                .sessions(self.options.tenant.as_deref(), None, MAX_PAGE)
                .await?;
            for s in page.sessions {
                tenants.entry(s.tenant).or_default().sessions += 1;
            }
            for d in self.admin.fleet_demand().await? {
                if let Some(t) = tenants.get_mut(&d.tenant) {
                    t.slots_needed += d.slots;
                }
            }
        }
        for p in processes {
            if self.options.tenant.as_ref().is_some_and(|t| *t != p.tenant) {
                continue;
            }
            let t = tenants.entry(p.tenant).or_default();
            t.processes += 1;
            t.sessions += p.sessions;
            t.slots_needed += p.demand.iter().map(|d| d.slots).sum::<usize>();
        }
        let workers = self.workers();
        Ok(tenants
            .into_iter()
            .map(|(name, t)| {
                let serving = workers
                    .iter()
                    .filter(|w| w.presence.tenant.as_deref().is_none_or(|wt| wt == name))
                    .count();
                json!({
                    "tenant": name,
                    "processes": t.processes,
                    "sessions": t.sessions,
                    "slots_needed": t.slots_needed,
                    "workers": serving,
                })
            })
            .collect())
    }

    fn workers(&self) -> Vec<a3s_code_core::admin::WorkerView> {
        let mut workers = self.admin.workers();
        if let Some(t) = &self.options.tenant {
            workers.retain(|w| w.presence.tenant.as_ref().is_none_or(|wt| wt == t));
        }
        workers.sort_by(|a, b| a.presence.worker_id.cmp(&b.presence.worker_id));
        workers
    }

    async fn tasks(&self, session_id: &str, q: &TasksQuery) -> Result<Value, ApiError> {
        let mut query = TaskQuery::new(q.state.unwrap_or(TaskState::Pending));
        query.limit = Page {
            cursor: None,
            limit: q.limit,
        }
        .limit();
        query.cursor = q.cursor.clone().filter(|c| !c.is_empty());
        query.search = q.search.clone().filter(|s| !s.trim().is_empty());
        let page = self.admin.tasks(session_id, &query).await?;
        Ok(serde_json::to_value(page).unwrap_or_default())
    }

    async fn dead_letters(&self, session_id: &str, page: &Page) -> Result<Value, ApiError> {
        let letters = self
            .admin
            .dead_letters(session_id, page.cursor.as_deref(), page.limit())
            .await?;
        Ok(serde_json::to_value(letters).unwrap_or_default())
    }
}

async fn tenants(State(app): State<Arc<App>>) -> ApiResult {
    Ok(json_response(&app.tenants().await?))
}

async fn session(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    Ok(json_response(&app.session(&id).await?))
}

#[derive(Deserialize)]
struct TasksQuery {
    state: Option<TaskState>,
    search: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn tasks(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<TasksQuery>,
) -> ApiResult {
    app.check_tenant(&id).await?;
    Ok(json_response(&app.tasks(&id, &q).await?))
}

async fn dead_letters(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult {
    app.check_tenant(&id).await?;
    Ok(json_response(&app.dead_letters(&id, &page).await?))
}

async fn history(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    app.check_tenant(&id).await?;
    app.history.watch(&id);
    Ok(json_response(&app.history.series(&id)))
}

async fn workers(State(app): State<Arc<App>>) -> Response {
    json_response(&app.workers())
}

async fn processes(State(app): State<Arc<App>>) -> ApiResult {
    let mut processes = app.admin.processes().await?;
    if let Some(t) = &app.options.tenant {
        processes.retain(|p| p.tenant == *t);
    }
    Ok(json_response(&processes))
}

// ----- the live view -------------------------------------------------------------------------

/// What a page shows, pushed every [`PUSH_EVERY`]: `view=sessions` (`tenant`, `cursor`),
/// `view=session` (`id`; its tasks of one `state` with `cursor` and `search`, or with
/// `letters=true` its dead letters from `letters_cursor`) or `view=workers`.
#[derive(Deserialize)]
struct StreamQuery {
    view: String,
    id: Option<String>,
    tenant: Option<String>,
    state: Option<TaskState>,
    cursor: Option<String>,
    search: Option<String>,
    #[serde(default)]
    letters: bool,
    letters_cursor: Option<String>,
}

impl App {
    async fn view(&self, q: &StreamQuery) -> Value {
        match (q.view.as_str(), &q.id) {
            ("session", Some(id)) => {
                self.history.watch(id);
                let session = self.session(id).await;
                let gone = session.as_ref().is_err_and(|e| e.code == "SessionNotFound");
                let tasks = match &session {
                    Ok(_) if !q.letters => {
                        let tq = TasksQuery {
                            state: q.state,
                            search: q.search.clone(),
                            cursor: q.cursor.clone(),
                            limit: None,
                        };
                        or_error(self.tasks(id, &tq).await)
                    }
                    _ => Value::Null,
                };
                // A session that is gone may still have letters in the stream.
                let letters =
                    if (session.is_ok() && q.letters) || (gone && self.options.tenant.is_none()) {
                        let page = Page {
                            cursor: q.letters_cursor.clone(),
                            limit: None,
                        };
                        or_error(self.dead_letters(id, &page).await)
                    } else {
                        Value::Null
                    };
                let tenant = session.as_ref().ok().map(|s| s.tenant.clone());
                let workers: Vec<_> = self
                    .workers()
                    .into_iter()
                    .filter(|w| match &w.presence.session {
                        Some(s) => s == id,
                        None => w
                            .presence
                            .tenant
                            .as_ref()
                            .is_none_or(|t| Some(t) == tenant.as_ref()),
                    })
                    .collect();
                let (mut tasks, mut letters) = (tasks, letters);
                shorten_strings(&mut tasks);
                shorten_strings(&mut letters);
                json!({
                    "session": or_error(session),
                    "history": self.history.series(id),
                    "tasks": tasks,
                    "letters": letters,
                    "workers": workers,
                    "can_act": self.can_act(),
                })
            }
            ("workers", _) => {
                let processes = self.admin.processes().await.map_err(ApiError::from);
                let demand = self.admin.fleet_demand().await.map_err(ApiError::from);
                json!({
                    "workers": self.workers(),
                    "processes": or_error(processes.map(|mut p| {
                        if let Some(t) = &self.options.tenant {
                            p.retain(|p| p.tenant == *t);
                        }
                        p
                    })),
                    "demand": or_error(demand),
                    "can_act": self.can_act(),
                })
            }
            _ => {
                let sq = SessionsQuery {
                    tenant: q.tenant.clone(),
                    cursor: q.cursor.clone(),
                    limit: None,
                };
                json!({
                    "sessions": or_error(self.sessions_page(&sq).await),
                    "tenants": or_error(self.tenants().await),
                    "workers": self.workers().len(),
                    "can_act": self.can_act(),
                })
            }
        }
    }
}

async fn stream(State(app): State<Arc<App>>, Query(q): Query<StreamQuery>) -> Response {
    let updates = futures_util::stream::unfold((app, q, true), |(app, q, first)| async move {
        if !first {
            tokio::time::sleep(PUSH_EVERY).await;
        }
        let data = app.view(&q).await.to_string();
        let event = Event::default().event("update").data(data);
        Some((Ok::<_, Infallible>(event), (app, q, false)))
    });
    // A reverse proxy (nginx) passes each event on at once instead of buffering the stream.
    (
        [("x-accel-buffering", "no")],
        Sse::new(updates).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

// ----- actions -------------------------------------------------------------------------------

async fn act(
    State(app): State<Arc<App>>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    if app.options.read_only {
        return Err(ApiError::forbidden(
            "PermissionDenied",
            "this dashboard is read-only (--read-only)",
        ));
    }
    same_origin_json(&headers)?;
    let action: Action = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidPayload",
            format!("not an action: {e}"),
        )
    })?;
    app.check_tenant(&id).await?;
    let target = match &action {
        Action::Cancel { task_id }
        | Action::RetryDeadLetter { task_id }
        | Action::DeleteDeadLetter { task_id } => task_id.clone(),
        Action::Pause { lane } | Action::Resume { lane } => lane.as_str().to_owned(),
        _ => String::new(),
    };
    match app.admin.act(&id, &action, &actor).await {
        Ok(outcome) => {
            tracing::info!(
                %actor, session = %id, action = action.name(), %target,
                new_task = outcome.task_id.as_deref().unwrap_or(""),
                "dashboard action"
            );
            Ok(json_response(&outcome))
        }
        Err(err) => {
            if err.code() == "PermissionDenied" {
                app.viewer.store(true, Ordering::Relaxed);
            }
            tracing::info!(
                %actor, session = %id, action = action.name(), %target, error = %err,
                "dashboard action refused"
            );
            Err(err.into())
        }
    }
}

// ----- /metrics ------------------------------------------------------------------------------

async fn metrics(State(app): State<Arc<App>>) -> ApiResult {
    let mut demand = app.admin.fleet_demand().await?;
    if let Some(t) = &app.options.tenant {
        demand.retain(|d| d.tenant == *t);
    }
    let workers = app.workers();
    let mut out = String::new();
    out.push_str(
        "# HELP a3s_fleet_worker_slots_needed Worker slots the fleet's sessions need now \
         (backlog plus tasks out at workers, External lanes), from the processes' announcements.\n\
         # TYPE a3s_fleet_worker_slots_needed gauge\n",
    );
    for d in &demand {
        let _ = writeln!(
            out,
            "a3s_fleet_worker_slots_needed{{tenant=\"{}\",lane=\"{}\",labels=\"{}\"}} {}",
            escape(&d.tenant),
            d.lane.as_str(),
            escape(&d.labels),
            d.slots
        );
    }
    let mut slots: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    for w in &workers {
        let p = &w.presence;
        let tenant = p.tenant.clone().unwrap_or_else(|| "*".to_owned());
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let e = slots.entry((tenant, state)).or_default();
        e.0 += 1;
        e.1 += p.slots;
        e.2 += p.busy;
    }
    for (i, (name, help)) in [
        (
            "a3s_fleet_workers",
            "Workers announcing themselves, by tenant served (* for every tenant) and state.",
        ),
        (
            "a3s_fleet_worker_slots",
            "Their slots (tasks they can run at once).",
        ),
        (
            "a3s_fleet_worker_slots_busy",
            "Their slots running a task now.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for ((tenant, state), figures) in &slots {
            let value = [figures.0, figures.1, figures.2][i];
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",state=\"{state}\"}} {value}",
                escape(tenant)
            );
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

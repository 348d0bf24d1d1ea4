//! The dashboard's HTTP side: the page, its JSON API and the event stream of what a page
//! shows. Who may call it is [`guard`]'s; `--read-only` refuses every action here, and a
//! viewer credential makes the sessions refuse them (`PermissionDenied`), after which the page
//! shows no action buttons.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use a3s_code_core::admin::{Action, AdminClient, MAX_PAGE, SessionView, TaskQuery, TaskState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Options;
use super::guard::{self, Actor, Guard};
use super::history::History;

/// How often the event stream pushes the viewed data.
const PUSH_EVERY: Duration = Duration::from_millis(1500);
/// The longest string of a payload the live view sends (scripts get whole payloads).
const MAX_SHOWN_STRING: usize = 2_000;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// The dashboard's state.
pub(crate) struct App {
    pub(crate) admin: AdminClient,
    pub(super) options: Options,
    /// Who may use it.
    pub(super) guard: Guard,
    /// The NATS credential may only read: the core refused an action with `PermissionDenied`.
    viewer: AtomicBool,
    pub(crate) history: History,
}

impl App {
    pub(crate) fn new(admin: AdminClient, options: Options) -> Self {
        Self {
            admin,
            guard: Guard::new(options.tokens.clone()),
            options,
            viewer: AtomicBool::new(false),
            history: History::default(),
        }
    }

    fn can_act(&self) -> bool {
        !self.options.read_only && !self.viewer.load(Ordering::Relaxed)
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
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            guard::authenticate,
        ));
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
        // Open like the sessions' and workers' own /metrics: Prometheus scrapes it without a
        // token (it shows tenants, lanes and slot counts, no task).
        .route("/metrics", get(super::metrics::metrics))
        .route("/api/info", get(info))
        .route("/api/login", post(guard::login))
        .route("/api/logout", post(guard::logout));
    api.merge(open)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such page") })
        .layer(middleware::from_fn_with_state(
            app.clone(),
            guard::guard_host,
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::map_response(guard::security_headers))
        .with_state(app)
}

// ----- errors --------------------------------------------------------------------------------

/// An error answered as `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: String,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn forbidden(code: &str, message: impl Into<String>) -> Self {
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

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn json_response<T: Serialize + ?Sized>(value: &T) -> Response {
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
    let actor = app.guard.who(&headers).ok();
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

    pub(super) fn workers(&self) -> Vec<a3s_code_core::admin::WorkerView> {
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
    guard::same_origin_json(&headers)?;
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

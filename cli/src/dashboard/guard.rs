//! Who may use the dashboard, and how a request proves it comes from the dashboard's page.
//!
//! - Without `--token`, the listener is a loopback address and requests must name a loopback
//!   host (what a DNS-rebinding page cannot do); the actor is `local`.
//! - With tokens, every API call needs one: `Authorization: Bearer SECRET`, or the HttpOnly
//!   SameSite=Strict cookie `POST /api/login` sets. The actor is the token's name. Wrong tokens
//!   are throttled.
//! - Actions (and logins) are `POST` with a JSON body, the header `X-A3S-Dashboard: 1` (a page
//!   of another site cannot send it without CORS, which this server never grants), and, when
//!   the browser sends them, an `Origin` equal to this host and `Sec-Fetch-Site: same-origin`.
//! - Every answer forbids framing and scripts from elsewhere (Content-Security-Policy).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

use super::http::{ApiError, ApiResult, App, json_response};

/// The login cookie.
const COOKIE: &str = "a3s_dashboard";
/// How long a login lasts.
const LOGIN_FOR: Duration = Duration::from_secs(12 * 3600);
/// Logins kept at once; the oldest go first.
const MAX_LOGINS: usize = 1024;
/// Wrong tokens tried in a minute before every try is refused for the rest of it.
const MAX_WRONG_TOKENS: usize = 20;
/// The header every action request carries.
const ACTION_HEADER: &str = "x-a3s-dashboard";

/// The tokens, and the logins made with them.
pub(super) struct Guard {
    /// `(name, secret)`.
    tokens: Vec<(String, String)>,
    logins: Mutex<HashMap<String, (String, Instant)>>,
    /// When wrong tokens were tried, the last minute's.
    wrong_tokens: Mutex<VecDeque<Instant>>,
}

impl Guard {
    pub(super) fn new(tokens: Vec<(String, String)>) -> Self {
        Self {
            tokens,
            logins: Mutex::default(),
            wrong_tokens: Mutex::default(),
        }
    }

    /// Whether callers must show a token.
    pub(super) fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Who is asking: the token's name, `local` without tokens.
    pub(super) fn who(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if !self.required() {
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
    pub(super) fn token_name(&self, secret: &str) -> Result<String, ApiError> {
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
        for (name, s) in &self.tokens {
            if equal_in_constant_time(s.as_bytes(), secret.as_bytes()) {
                found = Some(name.clone());
            }
        }
        found.ok_or_else(|| {
            wrong.push_back(Instant::now());
            ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "unknown token")
        })
    }

    pub(super) fn login(&self, name: String) -> String {
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
}

pub(super) async fn security_headers(mut res: Response) -> Response {
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
pub(super) async fn guard_host(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if !app.guard.required()
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
pub(super) struct Actor(pub(super) String);

pub(super) async fn authenticate(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Response {
    match app.guard.who(req.headers()) {
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
pub(super) fn same_origin_json(headers: &HeaderMap) -> Result<(), ApiError> {
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

#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

pub(super) async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    same_origin_json(&headers)?;
    let body: LoginBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "InvalidPayload", format!("{e}")))?;
    let name = app.guard.token_name(body.token.trim()).inspect_err(|e| {
        tracing::info!(error = %e.message, "dashboard login refused");
    })?;
    tracing::info!(actor = %name, "dashboard login");
    let id = app.guard.login(name.clone());
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

pub(super) async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult {
    same_origin_json(&headers)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        app.guard.logins.lock().remove(id);
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

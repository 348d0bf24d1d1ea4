//! Per-task values crossing the FFI as JSON: claimed tasks, task handles, results and the
//! objects workers pass in. `shapes.js` (evaluated once per JS environment) builds and reads
//! the JS side; Rust (de)serializes with serde. Keys inside `payload` and `result` are never
//! renamed: they go through JSON untouched.
//!
//! Building these objects property by property through Node-API cost several microseconds per
//! task (a `#[napi]` class instance even more); `JSON.parse` plus a constructor in JavaScript
//! costs a fraction of that, which the worker loop needs.
#![allow(unsafe_code)] // raw napi calls, each on the JS thread that owns `env`

use std::cell::RefCell;
use std::ffi::CStr;
use std::ptr;
use std::sync::OnceLock;
use std::time::Duration;

use a3s_code_core as core;
use napi::bindgen_prelude::{FromNapiValue, ToNapiValue};
use napi::{Env, Status, sys};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::error::Failure;
use crate::runtime::promise_failure;

const SOURCE: &str = include_str!("shapes.js");

fn check(status: sys::napi_status, what: &str) -> napi::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(napi::Error::new(
            Status::from(status),
            format!("{what} failed"),
        ))
    }
}

/// The functions `shapes.js` returns, kept for one environment.
#[derive(Clone, Copy)]
struct Shapes {
    env: usize,
    tasks: sys::napi_ref,
    handle: sys::napi_ref,
    parse: sys::napi_ref,
    stringify: sys::napi_ref,
    deadline_of: sys::napi_ref,
}

thread_local! {
    static SHAPES: RefCell<Option<Shapes>> = const { RefCell::new(None) };
}

/// The shapes of `env`, evaluated on first use.
unsafe fn shapes(env: sys::napi_env) -> napi::Result<Shapes> {
    if let Some(s) = SHAPES.with_borrow(|s| s.filter(|s| s.env == env as usize)) {
        return Ok(s);
    }
    unsafe {
        let mut source = ptr::null_mut();
        check(
            sys::napi_create_string_utf8(
                env,
                SOURCE.as_ptr().cast(),
                SOURCE.len() as isize,
                &mut source,
            ),
            "loading shapes.js",
        )?;
        let mut factory = ptr::null_mut();
        check(
            sys::napi_run_script(env, source, &mut factory),
            "evaluating shapes.js",
        )?;
        let mut native = ptr::null_mut();
        check(
            sys::napi_create_object(env, &mut native),
            "creating natives",
        )?;
        for (name, cb) in [
            (c"expired", expired as unsafe extern "C" fn(_, _) -> _),
            (c"remaining", remaining),
        ] {
            let mut f = ptr::null_mut();
            check(
                sys::napi_create_function(
                    env,
                    name.as_ptr(),
                    name.count_bytes() as isize,
                    Some(cb),
                    ptr::null_mut(),
                    &mut f,
                ),
                "creating a native",
            )?;
            check(
                sys::napi_set_named_property(env, native, name.as_ptr(), f),
                "creating natives",
            )?;
        }
        let exports = call_raw(env, factory, &[native])?;
        let get = |name: &CStr| -> napi::Result<sys::napi_ref> {
            let (mut f, mut r) = (ptr::null_mut(), ptr::null_mut());
            check(
                sys::napi_get_named_property(env, exports, name.as_ptr(), &mut f),
                "reading shapes.js",
            )?;
            check(
                sys::napi_create_reference(env, f, 1, &mut r),
                "keeping shapes.js",
            )?;
            Ok(r)
        };
        let s = Shapes {
            env: env as usize,
            tasks: get(c"tasks")?,
            handle: get(c"handle")?,
            parse: get(c"parse")?,
            stringify: get(c"stringify")?,
            deadline_of: get(c"deadlineOf")?,
        };
        SHAPES.with_borrow_mut(|slot| *slot = Some(s));
        Ok(s)
    }
}

/// Calls `f(args)`; a thrown exception becomes the error (with that very JS error).
unsafe fn call_raw(
    env: sys::napi_env,
    f: sys::napi_value,
    args: &[sys::napi_value],
) -> napi::Result<sys::napi_value> {
    unsafe {
        let mut undefined = ptr::null_mut();
        sys::napi_get_undefined(env, &mut undefined);
        let mut out = ptr::null_mut();
        let status =
            sys::napi_call_function(env, undefined, f, args.len(), args.as_ptr(), &mut out);
        if status == sys::Status::napi_ok {
            return Ok(out);
        }
        let mut pending = false;
        sys::napi_is_exception_pending(env, &mut pending);
        if pending {
            let mut exception = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(env, &mut exception);
            let mut message = ptr::null_mut();
            let mut text = String::from("invalid argument");
            if sys::napi_coerce_to_string(env, exception, &mut message) == sys::Status::napi_ok
                && let Ok(s) = String::from_napi_value(env, message)
            {
                text = s;
            }
            return Err(napi::Error::new(Status::InvalidArg, text));
        }
        check(status, "calling shapes.js")?;
        Ok(out)
    }
}

unsafe fn call(
    env: sys::napi_env,
    f: sys::napi_ref,
    args: &[sys::napi_value],
) -> napi::Result<sys::napi_value> {
    unsafe {
        let mut func = ptr::null_mut();
        check(
            sys::napi_get_reference_value(env, f, &mut func),
            "reading shapes.js",
        )?;
        call_raw(env, func, args)
    }
}

unsafe fn js_string(env: sys::napi_env, s: &str) -> napi::Result<sys::napi_value> {
    let mut v = ptr::null_mut();
    check(
        unsafe { sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut v) },
        "creating a string",
    )?;
    Ok(v)
}

/// `JSON.parse(json)` in `env`.
unsafe fn parse(env: sys::napi_env, json: &str) -> napi::Result<sys::napi_value> {
    unsafe {
        let s = shapes(env)?;
        call(env, s.parse, &[js_string(env, json)?])
    }
}

/// `value` read through `JSON.stringify` and serde; errors name what was expected.
unsafe fn from_json<T: DeserializeOwned>(
    env: sys::napi_env,
    value: sys::napi_value,
    what: &str,
) -> napi::Result<T> {
    let json = unsafe {
        let s = shapes(env)?;
        let text = call(env, s.stringify, &[value])
            .map_err(|e| napi::Error::new(Status::InvalidArg, format!("{what}: {}", e.reason)))?;
        String::from_napi_value(env, text)?
    };
    serde_json::from_str(&json)
        .map_err(|e| napi::Error::new(Status::InvalidArg, format!("{what}: {e}")))
}

fn to_json<T: Serialize>(value: &T) -> napi::Result<String> {
    serde_json::to_string(value)
        .map_err(|e| napi::Error::new(Status::GenericFailure, e.to_string()))
}

// ---- the monotonic clock of deadlines ----------------------------------------------------------

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// An instant as signed milliseconds from [`base`].
fn to_ms(at: Instant) -> f64 {
    let base = base();
    if at >= base {
        (at - base).as_secs_f64() * 1_000.0
    } else {
        -((base - at).as_secs_f64() * 1_000.0)
    }
}

/// Signed milliseconds from [`base`] as an instant.
fn from_ms(ms: f64) -> Instant {
    let base = base();
    let d = Duration::from_secs_f64((ms.abs() / 1_000.0).min(1e12));
    if ms >= 0.0 {
        base + d
    } else {
        base.checked_sub(d).unwrap_or(base)
    }
}

/// The deadline argument of `native.expired` / `native.remaining`.
unsafe fn deadline_arg(env: sys::napi_env, info: sys::napi_callback_info) -> Instant {
    let mut argc = 1;
    let mut argv = [ptr::null_mut()];
    let mut ms = 0.0;
    unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
        );
        sys::napi_get_value_double(env, argv[0], &mut ms);
    }
    from_ms(ms)
}

unsafe extern "C" fn expired(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let deadline = unsafe { deadline_arg(env, info) };
    let mut v = ptr::null_mut();
    unsafe { sys::napi_get_boolean(env, Instant::now() >= deadline, &mut v) };
    v
}

unsafe extern "C" fn remaining(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let deadline = unsafe { deadline_arg(env, info) };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis() as f64;
    let mut v = ptr::null_mut();
    unsafe { sys::napi_create_double(env, left, &mut v) };
    v
}

// ---- the values ----------------------------------------------------------------------------------

/// Claimed tasks on their way to JavaScript: `ExternalTask[]`.
pub struct Tasks(pub Vec<core::ExternalTask>);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskOut<'a> {
    task_id: &'a str,
    session_id: &'a str,
    lane: &'static str,
    command_type: &'a str,
    payload: &'a Value,
    timeout_ms: u64,
    created_at: u64,
    attempt: u32,
    deadline: f64,
}

impl ToNapiValue for Tasks {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let rows: Vec<TaskOut<'_>> = val
            .0
            .iter()
            .map(|t| TaskOut {
                task_id: &t.task_id,
                session_id: &t.session_id,
                lane: t.lane.as_str(),
                command_type: &t.command_type,
                payload: &t.payload,
                timeout_ms: t.timeout_ms,
                created_at: t.created_at,
                attempt: t.attempt,
                deadline: to_ms(t.deadline()),
            })
            .collect();
        let json = to_json(&rows)?;
        unsafe {
            let s = shapes(env)?;
            call(env, s.tasks, &[js_string(env, &json)?])
        }
    }
}

/// A task coming back from JavaScript (`executeBuiltin(task, ..)`): one from
/// `pendingExternalTasks`, or any object with its fields. One without a deadline of ours gets
/// `timeoutMs` from now; `sessionId`, `createdAt` and `attempt` are optional.
pub struct TaskIn(pub core::ExternalTask);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskFields {
    task_id: String,
    #[serde(default)]
    session_id: String,
    lane: core::queue::SessionLane,
    command_type: String,
    #[serde(default)]
    payload: Value,
    timeout_ms: u64,
    created_at: Option<u64>,
    attempt: Option<u32>,
}

impl FromNapiValue for TaskIn {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let fields: TaskFields = unsafe { from_json(env, value, "ExternalTask")? };
        let deadline = unsafe {
            let s = shapes(env)?;
            let d = call(env, s.deadline_of, &[value])?;
            f64::from_napi_value(env, d).ok().map(from_ms)
        };
        let now = Instant::now();
        let deadline = deadline.unwrap_or(now + Duration::from_millis(fields.timeout_ms));
        let remaining = deadline.saturating_duration_since(now);
        let mut task = core::ExternalTask::new(
            fields.task_id,
            fields.session_id,
            fields.lane,
            fields.command_type,
            fields.payload,
            u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        );
        task.timeout_ms = fields.timeout_ms;
        if let Some(at) = fields.created_at {
            task.created_at = at;
        }
        if let Some(n) = fields.attempt {
            task.attempt = n;
        }
        Ok(TaskIn(task))
    }
}

/// Any JSON value coming from JavaScript (a payload, tool arguments), keys untouched.
pub struct JsonIn(pub Value);

impl FromNapiValue for JsonIn {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        unsafe { from_json(env, value, "a JSON value") }.map(JsonIn)
    }
}

#[derive(Serialize, Deserialize)]
struct ResultFields {
    success: bool,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<String>,
}

impl From<ResultFields> for core::ExternalTaskResult {
    fn from(r: ResultFields) -> Self {
        Self {
            success: r.success,
            result: r.result,
            error: r.error,
        }
    }
}

/// An `ExternalTaskResult` coming from JavaScript.
pub struct ResultIn(pub core::ExternalTaskResult);

impl FromNapiValue for ResultIn {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let r: ResultFields = unsafe { from_json(env, value, "ExternalTaskResult")? };
        Ok(ResultIn(r.into()))
    }
}

/// An `ExternalTaskCompletion[]` coming from JavaScript.
pub struct CompletionsIn(pub Vec<(String, core::ExternalTaskResult)>);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompletionFields {
    task_id: String,
    result: ResultFields,
}

impl FromNapiValue for CompletionsIn {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let rows: Vec<CompletionFields> =
            unsafe { from_json(env, value, "ExternalTaskCompletion[]")? };
        Ok(CompletionsIn(
            rows.into_iter()
                .map(|c| (c.task_id, c.result.into()))
                .collect(),
        ))
    }
}

/// An `ExternalTaskResult` on its way to JavaScript (`error` is `null` on success).
pub struct ResultOut(pub core::ExternalTaskResult);

impl ToNapiValue for ResultOut {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let r = val.0;
        let json = to_json(&ResultFields {
            success: r.success,
            result: r.result,
            error: r.error,
        })?;
        unsafe { parse(env, &json) }
    }
}

/// A submitted task's handle on its way to JavaScript: `{ taskId, result(), cancel() }`.
///
/// Its result promise is made at once (so that no handle object needs a native finalizer) and
/// `cancel()` calls the session's `cancel(taskId)`.
pub struct HandleOut {
    pub handle: core::TaskHandle,
    pub session: SessionRef,
}

/// A reference to the JS `AgentSession` object, released when the handle is built (or when
/// dropped on its JS thread; a drop elsewhere leaks it rather than call napi off-thread).
pub struct SessionRef {
    env: sys::napi_env,
    raw: sys::napi_ref,
    thread: std::thread::ThreadId,
}

// Only used and deleted on the JS thread that created it (checked in `Drop`).
unsafe impl Send for SessionRef {}

impl SessionRef {
    /// A reference to `session` (a JS value of `env`).
    ///
    /// # Safety
    ///
    /// `env` is the live environment of the calling (JS) thread and `session` a value of it.
    pub unsafe fn new(env: sys::napi_env, session: sys::napi_value) -> napi::Result<Self> {
        let mut raw = ptr::null_mut();
        check(
            unsafe { sys::napi_create_reference(env, session, 1, &mut raw) },
            "keeping the session",
        )?;
        Ok(SessionRef {
            env,
            raw,
            thread: std::thread::current().id(),
        })
    }

    /// The session object, releasing the reference.
    unsafe fn take(mut self) -> napi::Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        let raw = std::mem::replace(&mut self.raw, ptr::null_mut());
        unsafe {
            let got = sys::napi_get_reference_value(self.env, raw, &mut value);
            sys::napi_delete_reference(self.env, raw);
            check(got, "reading the session")?;
        }
        Ok(value)
    }
}

impl Drop for SessionRef {
    fn drop(&mut self) {
        if !self.raw.is_null() && std::thread::current().id() == self.thread {
            unsafe { sys::napi_delete_reference(self.env, self.raw) };
        }
    }
}

impl ToNapiValue for HandleOut {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let HandleOut { handle, session } = val;
        unsafe {
            let session_value = session.take()?;
            let task_id = js_string(env, handle.task_id())?;
            let result = promise_failure(&Env::from_raw(env), async move {
                handle.await.map(ResultOut).map_err(Failure::from)
            })?;
            let result = ToNapiValue::to_napi_value(env, result)?;
            let s = shapes(env)?;
            call(env, s.handle, &[task_id, result, session_value])
        }
    }
}

//! Where async crosses the FFI, in one place: core futures become JS promises.
//!
//! Every asynchronous method builds its promise with [`promise`]. Its core future is driven
//! on the JS thread, inside the runtime context of napi's tokio runtime (the binding's one
//! runtime: timers, blocking pools and spawned tasks of the core live there):
//!
//! 1. It is polled at once. Most core calls are ready then (they take the scheduler's short
//!    lock and return: completing a task, claiming what is there, reading stats), and the
//!    promise settles on the spot, with no thread hop and no allocation of ours.
//! 2. A future that is not ready waits without blocking anything. Whoever wakes it (another
//!    task's completion on the JS thread, a timer or a tokio worker) queues it for the JS
//!    thread through **one** threadsafe function per JS environment, which polls every queued
//!    future per wake-up and settles those that finished.
//!
//! A poll never blocks: core futures wait by returning `Pending`. The exceptions are calls
//! that touch the file system or spawn processes inside a poll (the built-in tools); they use
//! [`spawned`], which runs the future on a tokio worker and only settles its promise on the JS
//! thread.
//!
//! Why not `#[napi] async fn`: napi-rs creates a threadsafe function per promise and hops to a
//! tokio worker and back for every call (20-40 µs each on this project's 2-core machine),
//! which the worker loop's per-task calls cannot afford, and it sets a rejection's `code` from
//! its own `Status`, where ours must carry the core's code (see [`crate::error`]).

use std::cell::RefCell;
use std::ffi::c_void;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use a3s_code_core as core;
use napi::bindgen_prelude::{JsError, ToNapiValue, spawn, within_runtime_if_available};
use napi::{Env, Status, sys};

use crate::error::Failure;

/// A JS promise returned to JavaScript (`Promise<T>` in `index.d.ts`).
pub struct Promise<T> {
    value: sys::napi_value,
    _resolves_to: PhantomData<fn() -> T>,
}

#[allow(unsafe_code)] // returns the handle created in the current scope
impl<T> ToNapiValue for Promise<T> {
    unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        Ok(val.value)
    }
}

/// A promise of `fut`'s output: resolved with the value, or rejected with an `Error` whose
/// `code` is the core error's code. `fut` is driven on the JS thread (see the
/// [module docs](self)): its polls must not block.
pub fn promise<T, F>(env: &Env, fut: F) -> napi::Result<Promise<T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = core::Result<T>> + Send + 'static,
{
    settle(
        env,
        async move { fut.await.map_err(Failure::from) },
        Driver::JsThread,
    )
}

/// [`promise`] for a future whose polls may block (file system, processes): it runs on a
/// tokio worker.
pub fn spawned<T, F>(env: &Env, fut: F) -> napi::Result<Promise<T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = core::Result<T>> + Send + 'static,
{
    settle(
        env,
        async move { fut.await.map_err(Failure::from) },
        Driver::Runtime,
    )
}

/// [`promise`] for a future that already reduced its error to a [`Failure`].
pub fn promise_failure<T, F>(env: &Env, fut: F) -> napi::Result<Promise<T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    settle(env, fut, Driver::JsThread)
}

/// Where a promise's future is polled.
enum Driver {
    /// On the JS thread: at once, then whenever it is woken.
    JsThread,
    /// On a tokio worker.
    Runtime,
}

/// What settles a promise, run on the JS thread with its environment.
type Finish = Box<dyn FnOnce(sys::napi_env) + Send>;

/// A future whose output settles a promise.
type Job = Pin<Box<dyn Future<Output = Finish> + Send>>;

#[allow(unsafe_code)] // napi's raw promise API, on the JS thread that owns `env`
fn settle<T, F>(env: &Env, fut: F, driver: Driver) -> napi::Result<Promise<T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    let raw_env = env.raw();
    let mut deferred = ptr::null_mut();
    let mut value = ptr::null_mut();
    check(unsafe { sys::napi_create_promise(raw_env, &mut deferred, &mut value) })?;
    let deferred = Deferred(deferred);
    let job: Job = Box::pin(async move {
        let out = fut.await;
        Box::new(move |env: sys::napi_env| unsafe { finish(env, deferred, out) }) as Finish
    });
    match driver {
        Driver::JsThread => {
            // Most core futures are ready at once: try without a waker of our own first.
            let mut job = job;
            let first = within_runtime_if_available(|| {
                job.as_mut().poll(&mut Context::from_waker(Waker::noop()))
            });
            if let Poll::Ready(finish) = first {
                finish(raw_env);
            } else {
                let task = Arc::new(Task {
                    bridge: Bridge::of(raw_env)?,
                    job: Mutex::new(Some(job)),
                    queued: AtomicBool::new(false),
                });
                // Poll again with the task's waker, which the first poll could not register.
                if !task.run(raw_env) {
                    task.bridge.track(raw_env);
                }
            }
        }
        Driver::Runtime => {
            let bridge = Bridge::of(raw_env)?;
            bridge.track(raw_env);
            spawn(async move {
                let finish = job.await;
                bridge.send(Item::Settle(finish));
            });
        }
    }
    Ok(Promise {
        value,
        _resolves_to: PhantomData,
    })
}

/// Settles `deferred` with `out`, converted to JS.
///
/// # Safety
///
/// `env` is the live environment of the current (JS) thread and `deferred` an unsettled
/// promise of it.
#[allow(unsafe_code)]
unsafe fn finish<T: ToNapiValue>(env: sys::napi_env, deferred: Deferred, out: Result<T, Failure>) {
    let settled = match out {
        Ok(value) => unsafe { T::to_napi_value(env, value) }
            .map_err(|err| unsafe { JsError::from(err).into_value(env) }),
        Err(failure) => Err(unsafe { JsError::from(failure.into_error()).into_value(env) }),
    };
    unsafe {
        match settled {
            Ok(js) => sys::napi_resolve_deferred(env, deferred.0, js),
            Err(js) => sys::napi_reject_deferred(env, deferred.0, js),
        };
    }
}

fn check(status: sys::napi_status) -> napi::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(napi::Error::new(
            Status::from(status),
            "creating a promise failed",
        ))
    }
}

/// A promise's resolver: created, and only used, on the JS thread; it travels with its future.
struct Deferred(sys::napi_deferred);

#[allow(unsafe_code)] // only dereferenced on the JS thread (`finish`)
unsafe impl Send for Deferred {}

/// A future driven on the JS thread.
struct Task {
    bridge: Arc<Bridge>,
    /// The future, until it completes.
    job: Mutex<Option<Job>>,
    /// Whether it is queued for a poll already.
    queued: AtomicBool,
}

impl Task {
    /// Polls the future once; returns true when it completed now (and settled its promise).
    /// JS thread only.
    fn run(self: &Arc<Self>, env: sys::napi_env) -> bool {
        self.queued.store(false, Ordering::SeqCst);
        let mut slot = lock(&self.job);
        let Some(job) = slot.as_mut() else {
            return false; // a late wake-up of a finished future
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        match within_runtime_if_available(|| job.as_mut().poll(&mut cx)) {
            Poll::Ready(finish) => {
                *slot = None;
                drop(slot);
                finish(env);
                true
            }
            Poll::Pending => false,
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.bridge.send(Item::Poll(self.clone()));
        }
    }
}

/// Work for the JS thread.
enum Item {
    /// Poll a woken future.
    Poll(Arc<Task>),
    /// Settle a promise whose future ran on the runtime.
    Settle(Finish),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The JS environment's queue of work, drained on its thread by one threadsafe function.
/// It keeps the event loop alive only while some of its promises are pending.
struct Bridge {
    tsfn: AtomicPtr<sys::napi_threadsafe_function__>,
    queue: Mutex<Vec<Item>>,
    /// Whether a call of the threadsafe function is on its way (coalesces wake-ups).
    scheduled: AtomicBool,
    /// Pending promises (only changed on the JS thread).
    pending: AtomicUsize,
}

thread_local! {
    /// The bridge of the JS environment running on this thread, with that environment.
    static BRIDGE: RefCell<Option<(usize, Arc<Bridge>)>> = const { RefCell::new(None) };
}

#[allow(unsafe_code)] // napi's threadsafe-function API
impl Bridge {
    /// The bridge of `env`, created on first use. JS thread only.
    fn of(env: sys::napi_env) -> napi::Result<Arc<Bridge>> {
        let key = env as usize;
        if let Some(bridge) = BRIDGE.with_borrow(|b| {
            b.as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, b)| b.clone())
        }) {
            return Ok(bridge);
        }
        let bridge = Arc::new(Bridge {
            tsfn: AtomicPtr::new(ptr::null_mut()),
            queue: Mutex::new(Vec::new()),
            scheduled: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
        });
        // The threadsafe function owns one reference, released by `finalize`.
        let context = Arc::into_raw(bridge.clone()) as *mut c_void;
        let name = c"a3s-code";
        let mut js_name = ptr::null_mut();
        let mut tsfn = ptr::null_mut();
        let created = unsafe {
            check(sys::napi_create_string_utf8(
                env,
                name.as_ptr(),
                name.count_bytes() as isize,
                &mut js_name,
            ))
            .and_then(|()| {
                check(sys::napi_create_threadsafe_function(
                    env,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    js_name,
                    0,
                    1,
                    context,
                    Some(finalize),
                    context,
                    Some(drain),
                    &mut tsfn,
                ))
            })
        };
        if let Err(err) = created {
            drop(unsafe { Arc::from_raw(context as *const Bridge) });
            return Err(err);
        }
        // Idle until a promise is pending: it must not keep the process alive.
        unsafe { sys::napi_unref_threadsafe_function(env, tsfn) };
        bridge.tsfn.store(tsfn, Ordering::Release);
        BRIDGE.with_borrow_mut(|b| *b = Some((key, bridge.clone())));
        Ok(bridge)
    }

    /// Counts a new pending promise, keeping the event loop alive. JS thread only.
    fn track(&self, env: sys::napi_env) {
        if self.pending.fetch_add(1, Ordering::Relaxed) == 0 {
            unsafe { sys::napi_ref_threadsafe_function(env, self.tsfn.load(Ordering::Acquire)) };
        }
    }

    /// Counts settled promises, letting the event loop end when none is left. JS thread only.
    fn untrack(&self, env: sys::napi_env, settled: usize) {
        if settled > 0 && self.pending.fetch_sub(settled, Ordering::Relaxed) == settled {
            unsafe { sys::napi_unref_threadsafe_function(env, self.tsfn.load(Ordering::Acquire)) };
        }
    }

    /// Queues work and wakes the JS thread unless a wake-up is already on its way.
    /// Any thread.
    fn send(&self, item: Item) {
        lock(&self.queue).push(item);
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            // Fails only while the environment shuts down: its promises go with it.
            unsafe {
                sys::napi_call_threadsafe_function(
                    self.tsfn.load(Ordering::Acquire),
                    ptr::null_mut(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                )
            };
        }
    }
}

/// The threadsafe function's callback, on the JS thread: runs everything queued, including
/// what it queues itself while running.
#[allow(unsafe_code)]
unsafe extern "C" fn drain(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() || context.is_null() {
        return; // the environment is going away
    }
    let bridge = unsafe { &*(context as *const Bridge) };
    bridge.scheduled.store(false, Ordering::SeqCst);
    let batch = std::mem::take(&mut *lock(&bridge.queue));
    let mut settled = 0;
    for item in batch {
        let mut scope = ptr::null_mut();
        let opened =
            unsafe { sys::napi_open_handle_scope(env, &mut scope) } == sys::Status::napi_ok;
        let done = match item {
            Item::Poll(task) => task.run(env),
            Item::Settle(finish) => {
                finish(env);
                true
            }
        };
        if done {
            settled += 1;
        }
        if opened {
            unsafe { sys::napi_close_handle_scope(env, scope) };
        }
    }
    bridge.untrack(env, settled);
}

/// Releases the threadsafe function's reference to its bridge when the environment ends.
#[allow(unsafe_code)]
unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    if data.is_null() {
        return;
    }
    let bridge = unsafe { Arc::from_raw(data as *const Bridge) };
    // Forget it on this thread too, so a later environment here gets a bridge of its own.
    let _ = BRIDGE.try_with(|b| {
        let mut b = b.borrow_mut();
        if b.as_ref()
            .is_some_and(|(_, mine)| Arc::ptr_eq(mine, &bridge))
        {
            *b = None;
        }
    });
}

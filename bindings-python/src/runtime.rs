//! The one tokio runtime of the process, and the one place where async crosses into Python.
//!
//! - Sync methods block on the runtime with the GIL released ([`block_on`]).
//! - Async methods return a coroutine ([`awaitable`]): the call starts the work, awaiting the
//!   coroutine in any asyncio loop gives the outcome.
//! - A process forked after the runtime started cannot use it (its threads did not survive the
//!   fork): every entry point checks and raises a clear `RuntimeError`.
//! - At interpreter exit (an `atexit` hook, while the interpreter is still whole) the runtime
//!   is shut down: its threads stop before finalization begins, so none of them can take the
//!   GIL of an interpreter that is being torn down (that aborts or crashes the process).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use tokio::runtime::{Handle, Runtime};
use tokio::task::{AbortHandle, JoinError, JoinHandle};

struct Shared {
    /// Taken (and shut down) at interpreter exit.
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    pid: u32,
}

static RUNTIME: OnceLock<Result<Shared, String>> = OnceLock::new();

/// Set in the child of a `fork()` (by an `os.register_at_fork` hook): a cheap check on every
/// call, where comparing pids would cost a system call.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Set at interpreter exit: the runtime is gone, and nothing may take the GIL from its threads.
static EXITING: AtomicBool = AtomicBool::new(false);

/// How long exit waits for the runtime's threads to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

#[pyfunction]
fn after_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Stops the runtime at interpreter exit (an `atexit` hook).
///
/// The GIL is released while the runtime's threads finish what they are doing: a result on its
/// way to an asyncio future may be waiting for the GIL.
#[pyfunction]
fn shut_down_at_exit(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    let Some(Ok(shared)) = RUNTIME.get() else {
        return;
    };
    let Some(runtime) = shared.runtime.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    if shared.pid == std::process::id() {
        py.detach(|| runtime.shutdown_timeout(SHUTDOWN_WAIT));
    } else {
        // A forked child: the threads to stop do not exist here.
        std::mem::forget(runtime);
    }
}

/// Registers the fork and exit hooks (at module import).
pub(crate) fn register_hooks(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item("after_in_child", wrap_pyfunction!(after_fork_in_child, m)?)?;
    py.import("os")?
        .call_method("register_at_fork", (), Some(&kwargs))?;
    py.import("atexit")?
        .call_method1("register", (wrap_pyfunction!(shut_down_at_exit, m)?,))?;
    Ok(())
}

/// The process-wide runtime, started on first use.
///
/// # Errors
///
/// `RuntimeError` when it cannot start, in a process forked after it started, or once the
/// interpreter is exiting.
pub(crate) fn runtime() -> PyResult<Handle> {
    let shared = RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("a3s-code")
            .build()
            .map_err(|e| format!("a3s_code: cannot start the tokio runtime: {e}"))?;
        Ok(Shared {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            pid: std::process::id(),
        })
    });
    let shared = shared
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(e.clone()))?;
    if FORKED.load(Ordering::Relaxed) && shared.pid != std::process::id() {
        return Err(PyRuntimeError::new_err(format!(
            "a3s_code was started in process {} and cannot be used in this forked child {}: \
             its runtime threads do not survive fork(). Import and use a3s_code only after \
             forking, or use the 'spawn' or 'forkserver' multiprocessing start method.",
            shared.pid,
            std::process::id()
        )));
    }
    if EXITING.load(Ordering::Relaxed) {
        return Err(PyRuntimeError::new_err(
            "a3s_code cannot be used while the interpreter exits: its runtime has stopped",
        ));
    }
    Ok(shared.handle.clone())
}

/// Runs `fut` to completion on the runtime with the GIL released (for sync methods).
pub(crate) fn block_on<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    Ok(py.detach(|| rt.block_on(fut)))
}

/// Runs `f` inside the runtime's context (for sync core calls that may spawn tasks).
pub(crate) fn enter<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    let rt = runtime()?;
    let _guard = rt.enter();
    Ok(f())
}

/// A value produced on the runtime and converted to Python once the GIL is held.
pub(crate) trait ToPy: Send + 'static {
    /// The Python object.
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>>;
}

/// The Python functions every async method returns through.
struct Coroutines {
    ready: Py<PyAny>,
    fail: Py<PyAny>,
    wait: Py<PyAny>,
    settle: Py<PyAny>,
}

const COROUTINES: &std::ffi::CStr = c"from asyncio import get_running_loop


async def ready(value):
    return value


async def fail(error):
    raise error


async def wait(running):
    future = get_running_loop().create_future()
    running.start(future)
    try:
        return await future
    finally:
        running.abort()


def settle(future, ok, value):
    if not future.done():
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
";

fn coroutines(py: Python<'_>) -> PyResult<&Coroutines> {
    static CELL: PyOnceLock<Coroutines> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        let m = PyModule::from_code(
            py,
            COROUTINES,
            c"a3s_code/_awaitables.py",
            c"a3s_code._awaitables",
        )?;
        Ok(Coroutines {
            ready: m.getattr("ready")?.unbind(),
            fail: m.getattr("fail")?.unbind(),
            wait: m.getattr("wait")?.unbind(),
            settle: m.getattr("settle")?.unbind(),
        })
    })
}
/// Returns a coroutine that resolves to `fut`'s output; the call itself starts the work.
///
/// The future is polled once right away (without waiting, in the runtime's context): core calls
/// that complete at once (submit, complete, stats, a claim that finds tasks) come back as a
/// coroutine that returns the value at once, with no thread hop and no event-loop round trip.
/// Otherwise `fut` goes on running on the runtime, never holding the GIL while it waits, and the
/// coroutine awaits it through an `asyncio.Future` of whichever loop awaits it (so the call
/// works outside a running loop too, as in `asyncio.run(session.close())`). Cancelling the
/// coroutine, or dropping it unawaited, drops `fut`.
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: ToPy,
{
    let rt = runtime()?;
    let coroutines = coroutines(py)?;
    let mut fut = Box::pin(fut);
    let polled = {
        let _guard = rt.enter();
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    match polled {
        Poll::Ready(output) => match output.and_then(|v| v.to_py(py)) {
            Ok(value) => coroutines.ready.bind(py).call1((value,)),
            Err(err) => coroutines.fail.bind(py).call1((err.into_value(py),)),
        },
        Poll::Pending => {
            let task = rt.spawn(async move { fut.await.map(|v| Box::new(v) as Box<dyn ToPyDyn>) });
            let running = Running {
                task: Mutex::new(Some(AbortOnDrop(task))),
                abort: OnceLock::new(),
            };
            coroutines.wait.bind(py).call1((running,))
        }
    }
}

/// [`ToPy`] behind a `Box<dyn>`, so that [`Running`] needs no type parameter.
trait ToPyDyn: Send {
    fn to_py_boxed(self: Box<Self>, py: Python<'_>) -> PyResult<Bound<'_, PyAny>>;
}

impl<T: ToPy> ToPyDyn for T {
    fn to_py_boxed(self: Box<Self>, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        (*self).to_py(py)
    }
}

type Outcome = PyResult<Box<dyn ToPyDyn>>;

/// A spawned task that is aborted when dropped (its coroutine was never awaited).
struct AbortOnDrop(JoinHandle<Outcome>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A core call still running on the runtime, awaited by the coroutine `awaitable` returned.
#[pyclass(frozen, name = "Running", module = "a3s_code")]
struct Running {
    task: Mutex<Option<AbortOnDrop>>,
    abort: OnceLock<AbortHandle>,
}

#[pymethods]
impl Running {
    /// Settles `future` (an `asyncio.Future` of the running loop) with the call's outcome, from
    /// the runtime through the loop's `call_soon_threadsafe`, once the call is done.
    fn start(&self, py: Python<'_>, future: Bound<'_, PyAny>) -> PyResult<()> {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let mut task = task.ok_or_else(|| PyRuntimeError::new_err("already awaited"))?;
        let _ = self.abort.set(task.0.abort_handle());
        let event_loop = future.call_method0("get_loop")?.unbind();
        let future = future.unbind();
        let settle = coroutines(py)?.settle.clone_ref(py);
        runtime()?.spawn(async move {
            let outcome = (&mut task.0).await;
            // Taking the GIL may wait for the loop's thread: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || {
                settle_from_runtime(&event_loop, &settle, future, outcome);
            })
            .await;
        });
        Ok(())
    }

    /// Stops the call if it is still running (its awaiting coroutine was cancelled).
    fn abort(&self) {
        if let Some(h) = self.abort.get() {
            h.abort();
        }
    }
}

/// Hands a finished call's outcome to its asyncio future on the loop's thread.
fn settle_from_runtime(
    event_loop: &Py<PyAny>,
    settle: &Py<PyAny>,
    future: Py<PyAny>,
    outcome: Result<Outcome, JoinError>,
) {
    // At exit the runtime is being shut down with the GIL released for exactly this; once the
    // flag is up, nothing is awaiting any more.
    if EXITING.load(Ordering::SeqCst) {
        return;
    }
    Python::attach(|py| {
        let (ok, value) = match outcome.map(|o| o.and_then(|v| v.to_py_boxed(py))) {
            Ok(Ok(value)) => (true, value),
            Ok(Err(err)) => (false, err.into_value(py).into_bound(py).into_any()),
            Err(e) if e.is_cancelled() => return,
            Err(e) => (
                false,
                PyRuntimeError::new_err(format!("a3s_code: the call failed: {e}"))
                    .into_value(py)
                    .into_bound(py)
                    .into_any(),
            ),
        };
        // A closed loop has no one left to tell.
        let _ = event_loop.call_method1(py, "call_soon_threadsafe", (settle, future, ok, value));
    });
}

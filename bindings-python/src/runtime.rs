//! The one tokio runtime of the process, and the one place where async crosses into Python.
//!
//! - Sync methods block on the runtime with the GIL released ([`block_on`]).
//! - Async methods return a coroutine ([`awaitable`]): the call starts the work, awaiting the
//!   coroutine in any asyncio loop gives the outcome.
//! - A process forked after the runtime started cannot use it (its threads did not survive the
//!   fork): every entry point checks and raises a clear `RuntimeError`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

struct Shared {
    runtime: Runtime,
    pid: u32,
}

static RUNTIME: OnceLock<Result<Shared, String>> = OnceLock::new();

/// Set in the child of a `fork()` (by an `os.register_at_fork` hook): a cheap check on every
/// call, where comparing pids would cost a system call.
static FORKED: AtomicBool = AtomicBool::new(false);

#[pyfunction]
fn after_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Registers the fork hook (at module import).
pub(crate) fn register_fork_hook(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item("after_in_child", wrap_pyfunction!(after_fork_in_child, m)?)?;
    py.import("os")?
        .call_method("register_at_fork", (), Some(&kwargs))?;
    Ok(())
}

/// The process-wide runtime, started on first use.
///
/// # Errors
///
/// `RuntimeError` when it cannot start, or in a process forked after it started.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let shared = RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("a3s-code")
            .build()
            .map_err(|e| format!("a3s_code: cannot start the tokio runtime: {e}"))?;
        Ok(Shared {
            runtime,
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
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // The awaitables' futures run on the same runtime as everything else.
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(&shared.runtime);
    });
    Ok(&shared.runtime)
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
    let _guard = runtime()?.enter();
    Ok(f())
}

/// A value produced on the runtime and converted to Python once the GIL is held.
pub(crate) trait ToPy: Send + 'static {
    /// The Python object.
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>>;
}

/// The three coroutine functions every async method returns through.
struct Coroutines {
    ready: Py<PyAny>,
    fail: Py<PyAny>,
    wait: Py<PyAny>,
}

const COROUTINES: &std::ffi::CStr = c"async def ready(value):
    return value


async def fail(error):
    raise error


async def wait(running):
    return await running.future()
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
            let task =
                rt.spawn(async move { fut.await.map(|v| Erased(Box::new(v) as Box<dyn ToPyDyn>)) });
            let running = Running {
                task: Mutex::new(Some(AbortOnDrop(task))),
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

struct Erased(Box<dyn ToPyDyn>);

impl<'py> IntoPyObject<'py> for Erased {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.0.to_py_boxed(py)
    }
}

/// A spawned task that is aborted when dropped (its awaiting coroutine was cancelled or never
/// awaited).
struct AbortOnDrop(JoinHandle<PyResult<Erased>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A core call still running on the runtime, awaited by the coroutine `awaitable` returned.
#[pyclass(frozen, name = "Running", module = "a3s_code")]
struct Running {
    task: Mutex<Option<AbortOnDrop>>,
}

#[pymethods]
impl Running {
    /// An `asyncio.Future` of the running loop for the task's outcome (once).
    fn future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let mut task = task.ok_or_else(|| PyRuntimeError::new_err("already awaited"))?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            match (&mut task.0).await {
                Ok(outcome) => outcome,
                Err(e) => Err(PyRuntimeError::new_err(format!(
                    "a3s_code: the call failed: {e}"
                ))),
            }
        })
    }
}

//! The one tokio runtime of the process, and the one place where async crosses into Python.
//!
//! - Sync methods block on the runtime with the GIL released ([`block_on`]).
//! - Async methods return an `asyncio.Future` of the running loop ([`awaitable`]).
//! - A process forked after the runtime started cannot use it (its threads did not survive the
//!   fork): every entry point checks the pid and raises a clear `RuntimeError`.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

struct Shared {
    runtime: Runtime,
    pid: u32,
}

static RUNTIME: OnceLock<Result<Shared, String>> = OnceLock::new();

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
    if shared.pid != std::process::id() {
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

/// Adapts [`ToPy`] to what `pyo3_async_runtimes` converts results with.
struct Converted<T>(T);

impl<'py, T: ToPy> IntoPyObject<'py> for Converted<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.0.to_py(py)
    }
}

/// Returns an `asyncio.Future` of the running loop that resolves to `fut`'s output.
///
/// The future is polled once right away (without waiting, in the runtime's context): core calls
/// that complete at once (submit, complete, stats) come back as an already resolved future, with
/// no thread hop. Otherwise it runs on the runtime and never holds the GIL while it waits;
/// cancelling the asyncio future drops it.
///
/// # Errors
///
/// `RuntimeError` when no event loop is running in this thread: call async methods from a
/// coroutine (`async def main(): await session.queue_stats()`), not before `asyncio.run`.
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: ToPy,
{
    let rt = runtime()?;
    // Before polling: without a running loop nothing must happen.
    let event_loop = pyo3_async_runtimes::get_running_loop(py)?;
    let mut fut = Box::pin(fut);
    let polled = {
        let _guard = rt.enter();
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    match polled {
        Poll::Ready(output) => {
            let future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
            match output.and_then(|v| v.to_py(py)) {
                Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,))?,
                Err(err) => future.call_method1(
                    pyo3::intern!(py, "set_exception"),
                    (err.into_value(py),),
                )?,
            };
            Ok(future)
        }
        Poll::Pending => {
            let locals = pyo3_async_runtimes::TaskLocals::new(event_loop);
            pyo3_async_runtimes::tokio::future_into_py_with_locals(py, locals, async move {
                fut.await.map(Converted)
            })
        }
    }
}

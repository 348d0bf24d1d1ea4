//! The worker's side of a session, once for `AgentSession` and `WorkerClient`: claiming
//! (`pending_external_tasks`), reporting (`complete_external_task(s)`) and giving back
//! (`abandon_external_task`) through the core's `TaskSource`, so both classes behave alike.
//! Defaults (how many tasks a claim takes, how long it waits) are the core's
//! (`ClaimOptions::resolve`, `TaskSource::default_claim_limit`).

use std::time::Duration;

use a3s_code_core::worker::{ClaimOptions, TaskSource};
use a3s_code_core::{Error, ExternalTaskResult};
use pyo3::exceptions::{PyDeprecationWarning, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::error::CoreError;
use crate::runtime::{self, ToPy};
use crate::task::PyExternalTaskResult;

/// The claim of `pending_external_tasks(limit=, wait_ms=)`; `wait` (seconds) is the deprecated
/// spelling of `wait_ms`, and giving both raises `InvalidConfigError`.
fn claim_options(
    py: Python<'_>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
    wait: Option<f64>,
) -> PyResult<ClaimOptions> {
    let wait = match (wait_ms, wait) {
        (Some(_), Some(_)) => {
            let reason = "pending_external_tasks: give wait_ms or the deprecated wait, not both";
            return Err(CoreError(Error::InvalidConfig {
                reason: reason.into(),
            })
            .into());
        }
        (Some(ms), None) => Some(Duration::from_millis(ms)),
        (None, Some(secs)) => {
            PyErr::warn(
                py,
                &py.get_type::<PyDeprecationWarning>(),
                c"pending_external_tasks(wait=seconds) is deprecated: use wait_ms=milliseconds",
                1,
            )?;
            Some(crate::session::seconds(secs, "wait")?)
        }
        (None, None) => None,
    };
    Ok(ClaimOptions { limit, wait })
}

/// `await source.pending_external_tasks(limit=None, wait_ms=None)`.
pub(crate) fn pending<'py, S: TaskSource + Clone>(
    py: Python<'py>,
    source: &S,
    limit: Option<usize>,
    wait_ms: Option<u64>,
    wait: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = claim_options(py, limit, wait_ms, wait)?;
    let source = source.clone();
    // The core decides what a closed source answers (the spec's call without options: `[]`).
    runtime::awaitable(py, async move {
        Ok(source.pending(options).await.map_err(CoreError)?)
    })
}

/// `await source.complete_external_task(task_id, result)`: raises the outcome's error.
pub(crate) fn complete_one<'py, S: TaskSource + Clone>(
    py: Python<'py>,
    source: &S,
    task_id: String,
    result: &Bound<'py, PyExternalTaskResult>,
) -> PyResult<Bound<'py, PyAny>> {
    let batch = vec![(task_id, result.get().inner.clone())];
    let source = source.clone();
    runtime::awaitable(py, async move {
        let outcomes = source.complete(batch).await.map_err(CoreError)?;
        Ok(outcomes
            .into_iter()
            .next()
            .unwrap_or(Ok(()))
            .map_err(CoreError)?)
    })
}

/// `await source.complete_external_tasks(pairs)`: `None` or the exception (not raised) per pair.
pub(crate) fn complete_many<'py, S: TaskSource + Clone>(
    py: Python<'py>,
    source: &S,
    results: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut batch = Vec::with_capacity(results.len().unwrap_or(0));
    for item in results.try_iter()? {
        batch.push(result_pair(&item?)?);
    }
    let source = source.clone();
    runtime::awaitable(py, async move {
        Ok(Outcomes(source.complete(batch).await.map_err(CoreError)?))
    })
}

/// `await source.abandon_external_task(task_id, reason)`.
pub(crate) fn abandon<'py, S: TaskSource + Clone>(
    py: Python<'py>,
    source: &S,
    task_id: String,
    reason: String,
) -> PyResult<Bound<'py, PyAny>> {
    let source = source.clone();
    runtime::awaitable(py, async move {
        Ok(source.abandon(&task_id, &reason).await.map_err(CoreError)?)
    })
}

/// One `(task_id, ExternalTaskResult)` pair of a batch.
fn result_pair(item: &Bound<'_, PyAny>) -> PyResult<(String, ExternalTaskResult)> {
    let bad = || {
        PyTypeError::new_err(format!(
            "complete_external_tasks takes (task_id: str, ExternalTaskResult) pairs, got {}",
            item.repr()
                .map_or_else(|_| "?".to_owned(), |r| r.to_string())
        ))
    };
    let pair = item.cast::<PyTuple>().map_err(|_| bad())?;
    if pair.len() != 2 {
        return Err(bad());
    }
    let id = pair.get_item(0)?;
    let id = id
        .cast::<PyString>()
        .map_err(|_| bad())?
        .to_cow()?
        .into_owned();
    let result = pair.get_item(1)?;
    let result = result.cast::<PyExternalTaskResult>().map_err(|_| bad())?;
    Ok((id, result.get().inner.clone()))
}

/// The outcomes of a batch completion: `None` or an exception per result.
struct Outcomes(Vec<a3s_code_core::Result<()>>);

impl ToPy for Outcomes {
    fn to_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let list = PyList::empty(py);
        for outcome in self.0 {
            match outcome {
                Ok(()) => list.append(py.None())?,
                Err(e) => list.append(PyErr::from(CoreError(e)).into_value(py))?,
            }
        }
        Ok(list.into_any())
    }
}

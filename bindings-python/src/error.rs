//! The Python exception tree, rooted at `A3sError`, and the one mapping from the core's error.
//!
//! Every class carries the core's stable code as its `code` attribute
//! (`tests/fixtures/v1/errors.json` lists them, and each class's older `python_aliases`).

use a3s_code_core::Error;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    a3s_code,
    A3sError,
    PyException,
    "Base class of every error raised by a3s_code; `code` is the core's stable error code."
);

macro_rules! error_classes {
    ($($code:literal => $class:ident: $doc:literal,)* aliases { $($alias:literal => $target:ident,)* }) => {
        $(create_exception!(a3s_code, $class, A3sError, $doc);)*

        /// The (lazily built) exception of a core error code; `A3sError` for a code this build
        /// does not know.
        pub(crate) fn exception(code: &str, message: String) -> PyErr {
            match code {
                $($code => PyErr::new::<$class, _>(message),)*
                _ => PyErr::new::<A3sError, _>(message),
            }
        }

        /// Adds the exception classes to the module, each with its `code` class attribute.
        pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            py.get_type::<A3sError>().setattr("code", py.None())?;
            m.add("A3sError", py.get_type::<A3sError>())?;
            $(
                py.get_type::<$class>().setattr("code", $code)?;
                m.add(stringify!($class), py.get_type::<$class>())?;
            )*
            // Old names: the same class objects, so `except ToolError` still catches.
            $(m.add($alias, py.get_type::<$target>())?;)*
            Ok(())
        }
    };
}

error_classes! {
    "InvalidConfig" => InvalidConfigError: "A configuration value is out of range or inconsistent.",
    "ConfigFile" => ConfigFileError: "agent.hcl could not be read or parsed (the message names the file and line).",
    "InvalidPayload" => InvalidPayloadError: "A payload or argument object is malformed.",
    "TaskNotFound" => TaskNotFoundError: "No live or recently finished task has this id.",
    "TaskAlreadyCompleted" => TaskAlreadyCompletedError: "The task already has a result; a second completion changes nothing.",
    "TaskTimedOut" => TaskTimedOutError: "The task's deadline passed before it completed.",
    "TaskCancelled" => TaskCancelledError: "The task was cancelled before it completed.",
    "RetriesExhausted" => RetriesExhaustedError: "Every attempt of the task was lost and the retry policy allows no more.",
    "QueueFull" => QueueFullError: "The lane's backlog is at max_pending; nothing was queued.",
    "PayloadTooLarge" => PayloadTooLargeError: "A message is larger than allowed.",
    "PathEscapesWorkspace" => PathEscapesWorkspaceError: "A path names something outside the workspace root.",
    "UnknownTool" => UnknownToolError: "tool(name, ...) was called with a name that is not a built-in tool.",
    "ToolFailed" => ToolFailedError: "A tool refused to run or failed (`ToolError` is its old name).",
    "FileTooLarge" => FileTooLargeError: "A file is larger than a tool may hold in memory (the workspace's max_file_bytes).",
    "ModelFailed" => ModelFailedError: "The model provider refused or failed a request (bad key, unknown model, retries exhausted; `ModelError` is its old name).",
    "BrokerUnavailable" => BrokerUnavailableError: "The message broker cannot be reached or refused an operation.",
    "UnsupportedProtocol" => UnsupportedProtocolError: "A wire message uses a protocol version this build does not speak.",
    "SessionNotFound" => SessionNotFoundError: "No process hosts the session (the admin API's answer about a closed or unknown session).",
    "PermissionDenied" => PermissionDeniedError: "The credential may not do this (an action asked with viewer rights).",
    "ShutDown" => ShutDownError: "The session (or worker) is closed.",
    "Io" => A3sIoError: "An I/O error outside any tool.",
    aliases {
        "ToolError" => ToolFailedError,
        "ModelError" => ModelFailedError,
    }
}

/// A core error on its way to Python: `?` turns it into the exception of its code.
#[derive(Debug)]
pub(crate) struct CoreError(pub(crate) Error);

impl From<Error> for CoreError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

impl From<CoreError> for PyErr {
    fn from(CoreError(err): CoreError) -> PyErr {
        exception(err.code(), err.to_string())
    }
}

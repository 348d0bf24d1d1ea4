//! The one error type of the crate, with stable codes shared by every binding.

use std::path::PathBuf;

use crate::lane::{InvalidLaneSetting, SessionLane};

/// Every error the crate returns.
///
/// Each variant carries the context needed to act on it, and [`Error::code`] gives a stable,
/// language-neutral name (`"TaskNotFound"`, ...) that the Python and Node bindings expose unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the field.
        reason: String,
    },

    /// A configuration file could not be read or parsed.
    #[error("{}{}: {reason}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending item, when known.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },

    /// A payload, argument object or wire message is malformed.
    #[error("invalid payload: {reason}")]
    InvalidPayload {
        /// What is wrong.
        reason: String,
    },

    /// No live or recently finished task has this id.
    #[error("task {task_id} not found")]
    TaskNotFound {
        /// The id that was given.
        task_id: String,
    },

    /// The task already has a result; a second completion changes nothing.
    #[error("task {task_id} is already completed")]
    TaskAlreadyCompleted {
        /// The task.
        task_id: String,
    },

    /// The task's deadline passed before it completed.
    #[error("task {task_id} timed out after {timeout_ms} ms")]
    TaskTimedOut {
        /// The task.
        task_id: String,
        /// Its timeout.
        timeout_ms: u64,
    },

    /// The task was cancelled before it completed.
    #[error("task {task_id} was cancelled")]
    TaskCancelled {
        /// The task.
        task_id: String,
    },

    /// Every attempt of the task was lost (worker crash, handler panic, lease expiry) and the
    /// retry policy allows no more.
    #[error("task {task_id} failed after {attempts} attempt(s): {reason}")]
    RetriesExhausted {
        /// The task.
        task_id: String,
        /// How many attempts were made.
        attempts: u32,
        /// Why the last attempt was lost.
        reason: String,
    },

    /// The lane's backlog is at `max_pending`; nothing was queued.
    #[error("the {lane} lane is full ({max_pending} tasks pending)")]
    QueueFull {
        /// The lane.
        lane: SessionLane,
        /// Its configured bound.
        max_pending: usize,
    },

    /// A message is larger than allowed.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// A path names something outside the workspace root.
    #[error("path {path:?} escapes the workspace {}", root.display())]
    PathEscapesWorkspace {
        /// The path as given.
        path: String,
        /// The workspace root.
        root: PathBuf,
    },

    /// `tool(name, ..)` was called with a name that is not a built-in tool.
    #[error("unknown tool {name:?} (built-in tools: read, write, edit, grep, glob, ls, bash)")]
    UnknownTool {
        /// The name that was given.
        name: String,
    },

    /// A tool refused to run or failed (bad arguments, missing file, non-unique edit, ...).
    #[error("{tool}: {reason}")]
    ToolFailed {
        /// The tool.
        tool: String,
        /// What went wrong.
        reason: String,
    },

    /// A file is larger than a tool may hold in memory ([`Workspace::with_max_file_bytes`]).
    ///
    /// [`Workspace::with_max_file_bytes`]: crate::tools::Workspace::with_max_file_bytes
    #[error(
        "{tool}: {path}: more than {limit} bytes to hold in memory (the workspace's max_file_bytes)"
    )]
    FileTooLarge {
        /// The tool.
        tool: String,
        /// The path as given.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// The message broker cannot be reached or refused an operation.
    #[error("message broker unavailable: {reason}")]
    BrokerUnavailable {
        /// What failed.
        reason: String,
    },

    /// A wire message uses a protocol version this build does not speak.
    #[error("unsupported protocol version {version} (this build speaks {supported})")]
    UnsupportedProtocol {
        /// The version found in the message.
        version: String,
        /// The version this build speaks.
        supported: String,
    },

    /// A model provider refused or failed a request (bad API key, unknown model, rate limit
    /// after the retries, network failure, unreadable reply), or a Generate lane worker
    /// reported a failure.
    #[error("{provider}: {}{message}", status.map(|s| format!("HTTP {s}: ")).unwrap_or_default())]
    ModelFailed {
        /// The provider's name from `agent.hcl` (`"openai"`).
        provider: String,
        /// The HTTP status, when the provider answered (401 for a bad key, 404 for an unknown
        /// model, 429 when rate limited, ...).
        status: Option<u16>,
        /// What went wrong, with the provider's own message when it gave one.
        message: String,
    },

    /// No process hosts this session (it closed, or never existed): the admin API's answer
    /// to requests about it. Its dead letters may still be readable from the stream.
    #[error("session {session_id} not found (no process hosts it)")]
    SessionNotFound {
        /// The session.
        session_id: String,
    },

    /// The credential may not do this (a viewer asking for an action, a read-only dashboard).
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// What was refused.
        reason: String,
    },

    /// The session (or worker) is closed.
    #[error("the session is shut down")]
    ShutDown,

    /// An I/O error outside any tool (reading a config file, binding a socket).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The stable, language-neutral code of this error (`"TaskNotFound"`, ...).
    ///
    /// Python maps each code to an exception class, Node puts it in `error.code`;
    /// `tests/fixtures/v1/errors.json` lists them all.
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::Error;
    /// let err = Error::TaskNotFound { task_id: "t1".into() };
    /// assert_eq!(err.code(), "TaskNotFound");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidConfig { .. } => "InvalidConfig",
            Error::ConfigFile { .. } => "ConfigFile",
            Error::InvalidPayload { .. } => "InvalidPayload",
            Error::TaskNotFound { .. } => "TaskNotFound",
            Error::TaskAlreadyCompleted { .. } => "TaskAlreadyCompleted",
            Error::TaskTimedOut { .. } => "TaskTimedOut",
            Error::TaskCancelled { .. } => "TaskCancelled",
            Error::RetriesExhausted { .. } => "RetriesExhausted",
            Error::QueueFull { .. } => "QueueFull",
            Error::PayloadTooLarge { .. } => "PayloadTooLarge",
            Error::PathEscapesWorkspace { .. } => "PathEscapesWorkspace",
            Error::UnknownTool { .. } => "UnknownTool",
            Error::ToolFailed { .. } => "ToolFailed",
            Error::FileTooLarge { .. } => "FileTooLarge",
            Error::BrokerUnavailable { .. } => "BrokerUnavailable",
            Error::UnsupportedProtocol { .. } => "UnsupportedProtocol",
            Error::ModelFailed { .. } => "ModelFailed",
            Error::SessionNotFound { .. } => "SessionNotFound",
            Error::PermissionDenied { .. } => "PermissionDenied",
            Error::ShutDown => "ShutDown",
            Error::Io(_) => "Io",
        }
    }

    /// Every code [`Error::code`] can return, in declaration order.
    pub const CODES: &'static [&'static str] = &[
        "InvalidConfig",
        "ConfigFile",
        "InvalidPayload",
        "TaskNotFound",
        "TaskAlreadyCompleted",
        "TaskTimedOut",
        "TaskCancelled",
        "RetriesExhausted",
        "QueueFull",
        "PayloadTooLarge",
        "PathEscapesWorkspace",
        "UnknownTool",
        "ToolFailed",
        "FileTooLarge",
        "BrokerUnavailable",
        "UnsupportedProtocol",
        "ModelFailed",
        "SessionNotFound",
        "PermissionDenied",
        "ShutDown",
        "Io",
    ];

    pub(crate) fn invalid_config(reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_payload(reason: impl Into<String>) -> Self {
        Error::InvalidPayload {
            reason: reason.into(),
        }
    }
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<InvalidLaneSetting> for Error {
    fn from(e: InvalidLaneSetting) -> Self {
        Error::InvalidConfig { reason: e.0 }
    }
}

//! The bottom layer of the core: lanes, handler modes and retry policies. Everything else
//! builds on these types; this module imports nothing from the rest of the crate.
//!
//! The spec's paths stay `a3s_code_core::queue::{SessionLane, TaskHandlerMode,
//! LaneHandlerConfig}` (re-exported there).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The names of the built-in tools ([`SessionLane::for_tool`] gives each one's lane).
pub const BUILTIN_TOOLS: [&str; 7] = ["read", "write", "edit", "grep", "glob", "ls", "bash"];

/// A lane name, handler mode, retry strategy or lane setting that is not valid. It converts into
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) with the same message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLaneSetting(pub String);

/// The four priority lanes of a session. A lower number runs first.
///
/// Built-in tools map to lanes by [`SessionLane::for_tool`]: `read`, `grep`, `glob`, `ls` go to
/// `Query`; `bash`, `write`, `edit` to `Execute`; model calls to `Generate`; cancel, pause and status
/// to `Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionLane {
    /// P0: control operations (cancel, pause, status).
    Control = 0,
    /// P1: read-only, parallelizable tools (read, grep, glob, ls).
    Query = 1,
    /// P2: tools with side effects (bash, write, edit).
    Execute = 2,
    /// P3: model calls.
    Generate = 3,
}

impl SessionLane {
    /// Every lane, highest priority first.
    pub const ALL: [SessionLane; 4] = [
        SessionLane::Control,
        SessionLane::Query,
        SessionLane::Execute,
        SessionLane::Generate,
    ];

    /// The lane's priority: 0 (Control) to 3 (Generate); lower runs first.
    pub fn priority(self) -> u8 {
        self as u8
    }

    /// The lowercase name used on the wire and in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionLane::Control => "control",
            SessionLane::Query => "query",
            SessionLane::Execute => "execute",
            SessionLane::Generate => "generate",
        }
    }

    /// The lane a built-in tool runs in, or `None` for a name that is not a built-in tool.
    ///
    /// # Examples
    ///
    /// ```
    /// use a3s_code_core::queue::SessionLane;
    /// assert_eq!(SessionLane::for_tool("grep"), Some(SessionLane::Query));
    /// assert_eq!(SessionLane::for_tool("bash"), Some(SessionLane::Execute));
    /// assert_eq!(SessionLane::for_tool("teleport"), None);
    /// ```
    pub fn for_tool(name: &str) -> Option<SessionLane> {
        match name {
            "read" | "grep" | "glob" | "ls" => Some(SessionLane::Query),
            "bash" | "write" | "edit" => Some(SessionLane::Execute),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SessionLane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionLane {
    type Err = InvalidLaneSetting;

    fn from_str(s: &str) -> Result<Self, InvalidLaneSetting> {
        match s.to_ascii_lowercase().as_str() {
            "control" => Ok(SessionLane::Control),
            "query" => Ok(SessionLane::Query),
            "execute" => Ok(SessionLane::Execute),
            "generate" => Ok(SessionLane::Generate),
            _ => Err(InvalidLaneSetting(format!(
                "unknown lane {s:?} (expected control, query, execute or generate)"
            ))),
        }
    }
}

/// How a lane runs its tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskHandlerMode {
    /// Run in this process with the built-in tools or a registered handler.
    #[default]
    Internal,
    /// Hand the task to workers: `pending_external_tasks()` in process, or a broker.
    External,
    /// Run in this process and publish Started / Completed / Failed events.
    Hybrid,
}

impl TaskHandlerMode {
    /// The lowercase name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskHandlerMode::Internal => "internal",
            TaskHandlerMode::External => "external",
            TaskHandlerMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for TaskHandlerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskHandlerMode {
    type Err = InvalidLaneSetting;

    fn from_str(s: &str) -> Result<Self, InvalidLaneSetting> {
        match s.to_ascii_lowercase().as_str() {
            "internal" => Ok(TaskHandlerMode::Internal),
            "external" => Ok(TaskHandlerMode::External),
            "hybrid" => Ok(TaskHandlerMode::Hybrid),
            _ => Err(InvalidLaneSetting(format!(
                "unknown handler mode {s:?} (expected internal, external or hybrid)"
            ))),
        }
    }
}

/// How one lane handles its tasks and how long each may take.
///
/// # Examples
///
/// ```
/// use a3s_code_core::queue::{LaneHandlerConfig, TaskHandlerMode};
/// let cfg = LaneHandlerConfig { mode: TaskHandlerMode::External, timeout_ms: 120_000 };
/// assert_eq!(LaneHandlerConfig::default().timeout_ms, 60_000);
/// # let _ = cfg;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LaneHandlerConfig {
    /// Internal, External or Hybrid.
    pub mode: TaskHandlerMode,
    /// The budget of each task of the lane, across attempts, counted from when it gets a slot.
    pub timeout_ms: u64,
}

impl Default for LaneHandlerConfig {
    fn default() -> Self {
        Self {
            mode: TaskHandlerMode::Internal,
            timeout_ms: 60_000,
        }
    }
}

impl LaneHandlerConfig {
    /// Checks the values: the timeout must be positive.
    ///
    /// # Errors
    ///
    /// [`InvalidLaneSetting`] naming the field (it converts into
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig)).
    pub fn validate(&self) -> Result<(), InvalidLaneSetting> {
        if self.timeout_ms == 0 {
            return Err(InvalidLaneSetting(
                "timeout_ms must be greater than 0".to_owned(),
            ));
        }
        Ok(())
    }
}

/// How lost attempts are retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryStrategy {
    /// A lost attempt fails the task.
    #[default]
    None,
    /// Wait `initial_delay_ms` before every retry.
    Fixed,
    /// Wait `initial_delay_ms`, then twice that, and so on, capped at `max_delay_ms`.
    Exponential,
}

impl FromStr for RetryStrategy {
    type Err = InvalidLaneSetting;

    fn from_str(s: &str) -> Result<Self, InvalidLaneSetting> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(RetryStrategy::None),
            "fixed" => Ok(RetryStrategy::Fixed),
            "exponential" => Ok(RetryStrategy::Exponential),
            _ => Err(InvalidLaneSetting(format!(
                "unknown retry strategy {s:?} (expected none, fixed or exponential)"
            ))),
        }
    }
}

/// Retries of lost attempts (a worker crash, an expired lease, a panicking handler, an attempt
/// reported as failed before a result).
///
/// A result with `success: false` is not a lost attempt: it is returned as is. Retries never
/// extend a task's `timeout_ms`, which bounds all attempts together.
///
/// # Examples
///
/// ```
/// use a3s_code_core::queue::RetryPolicy;
/// let p = RetryPolicy::exponential(3, 100);
/// assert_eq!(p.delay_before_retry(1).as_millis(), 100);
/// assert_eq!(p.delay_before_retry(3).as_millis(), 400);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// None, fixed or exponential backoff.
    pub strategy: RetryStrategy,
    /// How many retries after the first attempt (ignored with [`RetryStrategy::None`]).
    pub max_retries: u32,
    /// Delay before the first retry.
    pub initial_delay_ms: u64,
    /// Upper bound of any delay.
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    /// Up to 3 retries of lost attempts, 100 ms then doubling, at most 10 s apart: a crashed
    /// worker's task runs again elsewhere. (A failed result is never retried.)
    fn default() -> Self {
        Self {
            strategy: RetryStrategy::Exponential,
            max_retries: 3,
            initial_delay_ms: 100,
            max_delay_ms: 10_000,
        }
    }
}

impl RetryPolicy {
    /// Every field, in declaration order (the bindings' names; Node in camelCase).
    pub const FIELDS: &'static [&'static str] = &[
        "strategy",
        "max_retries",
        "initial_delay_ms",
        "max_delay_ms",
    ];

    /// No retries: a lost attempt fails the task.
    pub fn none() -> Self {
        Self {
            strategy: RetryStrategy::None,
            ..Self::default()
        }
    }

    /// Up to `max_retries` retries, `delay_ms` apart.
    pub fn fixed(max_retries: u32, delay_ms: u64) -> Self {
        Self {
            strategy: RetryStrategy::Fixed,
            max_retries,
            initial_delay_ms: delay_ms,
            ..Self::default()
        }
    }

    /// Up to `max_retries` retries, doubling from `initial_delay_ms`.
    pub fn exponential(max_retries: u32, initial_delay_ms: u64) -> Self {
        Self {
            strategy: RetryStrategy::Exponential,
            max_retries,
            initial_delay_ms,
            ..Self::default()
        }
    }

    /// How many attempts a task gets in all.
    pub fn max_attempts(&self) -> u32 {
        match self.strategy {
            RetryStrategy::None => 1,
            _ => self.max_retries.saturating_add(1),
        }
    }

    /// The wait before retry number `retry` (1-based).
    pub fn delay_before_retry(&self, retry: u32) -> Duration {
        let ms = match self.strategy {
            RetryStrategy::None => 0,
            RetryStrategy::Fixed => self.initial_delay_ms,
            RetryStrategy::Exponential => {
                let shift = retry.saturating_sub(1).min(32);
                self.initial_delay_ms.saturating_mul(1u64 << shift)
            }
        };
        Duration::from_millis(ms.min(self.max_delay_ms))
    }
}

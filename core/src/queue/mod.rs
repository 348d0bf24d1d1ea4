//! The per-session priority lane queue: lanes, handler modes and their configuration.
//!
//! Scheduling itself lives in the session's scheduler; this module holds the vocabulary shared
//! by the session, the brokers, the bindings and the config file.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod dlq;
mod events;
pub(crate) mod metrics;
pub(crate) mod scheduler;

pub use scheduler::{TaskHandle, TaskHandler};

pub use dlq::DeadLetter;
pub use events::{AlertKind, EventStream, QueueEvent};
pub use metrics::{LaneMetrics, LaneStats, QueueMetrics, QueueStats};

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
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "control" => Ok(SessionLane::Control),
            "query" => Ok(SessionLane::Query),
            "execute" => Ok(SessionLane::Execute),
            "generate" => Ok(SessionLane::Generate),
            _ => Err(Error::invalid_config(format!(
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
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "internal" => Ok(TaskHandlerMode::Internal),
            "external" => Ok(TaskHandlerMode::External),
            "hybrid" => Ok(TaskHandlerMode::Hybrid),
            _ => Err(Error::invalid_config(format!(
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
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.timeout_ms == 0 {
            return Err(Error::invalid_config("timeout_ms must be greater than 0"));
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
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(RetryStrategy::None),
            "fixed" => Ok(RetryStrategy::Fixed),
            "exponential" => Ok(RetryStrategy::Exponential),
            _ => Err(Error::invalid_config(format!(
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

/// Per-task settings of [`AgentSession::submit_with`](crate::AgentSession::submit_with).
///
/// # Examples
///
/// ```
/// use a3s_code_core::queue::SubmitOptions;
/// let opts = SubmitOptions::new().with_label("region", "eu-west").with_timeout_ms(5_000);
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    /// Labels a remote worker must have to take the task (`region=eu-west`). Only brokers
    /// route by labels; in-process workers ignore them.
    pub labels: std::collections::BTreeMap<String, String>,
    /// This task's timeout instead of its lane's.
    pub timeout_ms: Option<u64>,
}

impl SubmitOptions {
    /// No labels, the lane's timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires a worker label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets this task's timeout.
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero timeout, an empty label key, or a key with `=` or `,`
    /// (or a value with `,`), which the route token cannot encode unambiguously.
    pub fn validate(&self) -> Result<()> {
        if self.timeout_ms == Some(0) {
            return Err(Error::invalid_config("timeout_ms must be greater than 0"));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.contains(['=', ',']) || v.contains(',') {
                return Err(Error::invalid_config(format!(
                    "label {k:?}={v:?}: keys must be non-empty without '=' or ',', values without ','"
                )));
            }
        }
        Ok(())
    }
}

/// The queue configuration of a session.
///
/// Build it as a struct literal over the defaults:
///
/// ```
/// use a3s_code_core::SessionQueueConfig;
/// let cfg = SessionQueueConfig {
///     query_max_concurrency: 20,
///     execute_max_concurrency: 5,
///     enable_metrics: true,
///     enable_dlq: true,
///     ..Default::default()
/// };
/// assert!(cfg.validate().is_ok());
/// assert_eq!(cfg.control_max_concurrency, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionQueueConfig {
    /// Tasks of the Control lane that may hold a slot at once (default 2).
    pub control_max_concurrency: usize,
    /// Tasks of the Query lane that may hold a slot at once (default 4).
    pub query_max_concurrency: usize,
    /// Tasks of the Execute lane that may hold a slot at once (default 2).
    pub execute_max_concurrency: usize,
    /// Tasks of the Generate lane that may hold a slot at once (default 1).
    pub generate_max_concurrency: usize,
    /// Per-lane bound of tasks waiting for a slot; beyond it `submit` fails with
    /// [`Error::QueueFull`] (default 100 000).
    pub max_pending: usize,
    /// Record latency histograms and counters for `queue_metrics()` (default off).
    pub enable_metrics: bool,
    /// Keep failed and timed-out tasks in a dead-letter queue (default off).
    pub enable_dlq: bool,
    /// How many dead letters are kept; the oldest go first (default 1 000).
    pub dlq_max_size: usize,
    /// Emit [`QueueEvent::Alert`] when a threshold is crossed (default off).
    pub enable_alerts: bool,
    /// Alert when a lane's backlog reaches this many tasks (default 1 000).
    pub queue_depth_alert_threshold: usize,
    /// Alert when a task's end-to-end latency exceeds this (default 30 000 ms).
    pub latency_alert_threshold_ms: u64,
    /// Timeout of lanes without their own entry in `lane_handlers` (default 60 000 ms).
    pub default_timeout_ms: u64,
    /// Retries of lost attempts (default: 3, exponential from 100 ms).
    pub retry_policy: RetryPolicy,
    /// Per-lane handler mode and timeout; lanes not listed are Internal with `default_timeout_ms`.
    pub lane_handlers: HashMap<SessionLane, LaneHandlerConfig>,
}

impl Default for SessionQueueConfig {
    fn default() -> Self {
        Self {
            control_max_concurrency: 2,
            query_max_concurrency: 4,
            execute_max_concurrency: 2,
            generate_max_concurrency: 1,
            max_pending: 100_000,
            enable_metrics: false,
            enable_dlq: false,
            dlq_max_size: 1_000,
            enable_alerts: false,
            queue_depth_alert_threshold: 1_000,
            latency_alert_threshold_ms: 30_000,
            default_timeout_ms: 60_000,
            retry_policy: RetryPolicy::default(),
            lane_handlers: HashMap::new(),
        }
    }
}

impl SessionQueueConfig {
    /// Every field, in declaration order: the names agent.hcl's `queue { }` block and the
    /// bindings accept (Node in camelCase). `tests/fixtures/v1/api.json` (`options`) holds the
    /// same list for the bindings' tests, and a unit test keeps it equal to the struct.
    pub const FIELDS: &'static [&'static str] = &[
        "control_max_concurrency",
        "query_max_concurrency",
        "execute_max_concurrency",
        "generate_max_concurrency",
        "max_pending",
        "enable_metrics",
        "enable_dlq",
        "dlq_max_size",
        "enable_alerts",
        "queue_depth_alert_threshold",
        "latency_alert_threshold_ms",
        "default_timeout_ms",
        "retry_policy",
        "lane_handlers",
    ];

    /// The concurrency limit of a lane.
    pub fn max_concurrency(&self, lane: SessionLane) -> usize {
        match lane {
            SessionLane::Control => self.control_max_concurrency,
            SessionLane::Query => self.query_max_concurrency,
            SessionLane::Execute => self.execute_max_concurrency,
            SessionLane::Generate => self.generate_max_concurrency,
        }
    }

    /// The handler a lane starts with: its `lane_handlers` entry, else Internal with
    /// `default_timeout_ms`.
    pub fn lane_handler(&self, lane: SessionLane) -> LaneHandlerConfig {
        self.lane_handlers
            .get(&lane)
            .copied()
            .unwrap_or(LaneHandlerConfig {
                mode: TaskHandlerMode::Internal,
                timeout_ms: self.default_timeout_ms,
            })
    }

    /// Checks every value. Sessions call it at creation.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first bad field: a zero concurrency, `max_pending`,
    /// timeout or DLQ size.
    pub fn validate(&self) -> Result<()> {
        for lane in SessionLane::ALL {
            if self.max_concurrency(lane) == 0 {
                return Err(Error::invalid_config(format!(
                    "{lane}_max_concurrency must be greater than 0"
                )));
            }
        }
        let positive = [
            ("max_pending", self.max_pending as u64),
            ("dlq_max_size", self.dlq_max_size as u64),
            ("default_timeout_ms", self.default_timeout_ms),
            (
                "queue_depth_alert_threshold",
                self.queue_depth_alert_threshold as u64,
            ),
            (
                "latency_alert_threshold_ms",
                self.latency_alert_threshold_ms,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::invalid_config(format!(
                "{name} must be greater than 0"
            )));
        }
        if self.retry_policy.strategy != RetryStrategy::None && self.retry_policy.max_delay_ms == 0
        {
            return Err(Error::invalid_config(
                "retry_policy.max_delay_ms must be greater than 0",
            ));
        }
        for (lane, handler) in &self.lane_handlers {
            handler.validate().map_err(|_| {
                Error::invalid_config(format!(
                    "lane_handlers.{lane}.timeout_ms must be greater than 0"
                ))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_lists_every_field_in_order() {
        let json = serde_json::to_value(SessionQueueConfig::default()).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, SessionQueueConfig::FIELDS);
        let policy = serde_json::to_value(RetryPolicy::default()).unwrap();
        let keys: Vec<&str> = policy
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, RetryPolicy::FIELDS);
    }

    #[test]
    fn defaults_match_the_spec() {
        let cfg = SessionQueueConfig::default();
        assert_eq!(
            [
                cfg.control_max_concurrency,
                cfg.query_max_concurrency,
                cfg.execute_max_concurrency,
                cfg.generate_max_concurrency
            ],
            [2, 4, 2, 1]
        );
        assert_eq!(cfg.dlq_max_size, 1000);
        assert_eq!(
            cfg.lane_handler(SessionLane::Query),
            LaneHandlerConfig::default()
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn zero_values_are_config_errors() {
        let cases: Vec<(SessionQueueConfig, &str)> = vec![
            (
                SessionQueueConfig {
                    query_max_concurrency: 0,
                    ..Default::default()
                },
                "query_max_concurrency",
            ),
            (
                SessionQueueConfig {
                    dlq_max_size: 0,
                    ..Default::default()
                },
                "dlq_max_size",
            ),
            (
                SessionQueueConfig {
                    default_timeout_ms: 0,
                    ..Default::default()
                },
                "default_timeout_ms",
            ),
            (
                SessionQueueConfig {
                    max_pending: 0,
                    ..Default::default()
                },
                "max_pending",
            ),
            (
                SessionQueueConfig {
                    lane_handlers: [(
                        SessionLane::Execute,
                        LaneHandlerConfig {
                            mode: TaskHandlerMode::External,
                            timeout_ms: 0,
                        },
                    )]
                    .into(),
                    ..Default::default()
                },
                "lane_handlers.execute.timeout_ms",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.code(), "InvalidConfig");
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn names_parse_case_insensitively_and_reject_unknowns() {
        assert_eq!("QUERY".parse::<SessionLane>().unwrap(), SessionLane::Query);
        assert_eq!(
            "hybrid".parse::<TaskHandlerMode>().unwrap(),
            TaskHandlerMode::Hybrid
        );
        assert!("fast".parse::<SessionLane>().is_err());
        assert!("remote".parse::<TaskHandlerMode>().is_err());
        assert_eq!(
            serde_json::to_string(&SessionLane::Generate).unwrap(),
            "\"generate\""
        );
    }

    #[test]
    fn retry_delays() {
        let p = RetryPolicy {
            max_delay_ms: 250,
            ..RetryPolicy::exponential(5, 100)
        };
        let delays: Vec<u128> = (1..=4)
            .map(|r| p.delay_before_retry(r).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 250, 250]);
        assert_eq!(p.max_attempts(), 6);
        assert_eq!(RetryPolicy::none().max_attempts(), 1);
        assert_eq!(
            RetryPolicy::fixed(2, 30).delay_before_retry(2).as_millis(),
            30
        );
    }
}

//! The per-session priority lane queue: lanes, handler modes and their configuration.
//!
//! Scheduling itself lives in the session's scheduler; this module holds the vocabulary shared
//! by the session, the brokers, the bindings and the config file.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub(crate) mod dispatch;
mod dlq;
mod events;
pub(crate) mod inspect;
pub(crate) mod metrics;
pub(crate) mod scheduler;

pub use scheduler::{TaskHandle, TaskHandler};

pub use dlq::DeadLetter;
pub use events::{AlertKind, EventStream, QueueEvent};
pub use metrics::{LaneMetrics, LaneStats, QueueMetrics, QueueStats};

pub use crate::lane::{
    InvalidLaneSetting, LaneHandlerConfig, RetryPolicy, RetryStrategy, SessionLane, TaskHandlerMode,
};

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
    /// How many finished tasks the session keeps for the admin API (its tasks "finished"
    /// view and the dashboard); 0 keeps none (default 64).
    pub finished_history: usize,
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
            finished_history: inspect::DEFAULT_FINISHED_HISTORY,
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
        "finished_history",
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

//! [`Agent`]: the configuration loaded from `agent.hcl`, and the sessions opened from it; the
//! model providers ([`llm`]) and the agent loop behind
//! [`AgentSession::send`](crate::AgentSession::send) ([`run`]).

mod config;
pub mod llm;
pub mod run;
mod session;
mod tool_defs;

pub use config::{AgentConfig, DistributionConfig, ModelConfig, ProviderConfig};
pub use llm::{Message, ToolCall, Usage};
pub use run::{AgentEvent, AgentResponse, AgentStream, StopReason, ToolCallRecord};
pub use tool_defs::builtin_tool_definitions;

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
pub use session::{AgentSession, SessionOptions};

/// An agent: its configuration (`agent.hcl`), from which sessions are opened.
///
/// # Examples
///
/// ```
/// use a3s_code_core::{Agent, AgentConfig, SessionOptions, SessionQueueConfig};
/// # fn main() -> a3s_code_core::Result<()> {
/// let agent = Agent::from_config(AgentConfig::default());
/// let session = agent.session(".", Some(SessionOptions::new().with_queue_config(SessionQueueConfig {
///     query_max_concurrency: 20,
///     ..Default::default()
/// })))?;
/// assert_eq!(session.queue_config().query_max_concurrency, 20);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Agent {
    config: Arc<AgentConfig>,
}

impl Agent {
    /// Loads `agent.hcl` (or any file in its format).
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`](crate::Error::ConfigFile) naming the file and line for a missing
    /// file, a syntax error, an unknown lane or mode, or an invalid queue setting.
    pub async fn new(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let config = tokio::task::spawn_blocking(move || AgentConfig::from_file(&path))
            .await
            .map_err(|e| {
                crate::Error::invalid_config(format!("loading the agent config failed: {e}"))
            })??;
        Ok(Self::from_config(config))
    }

    /// An agent from an already built configuration.
    pub fn from_config(config: AgentConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Opens a session on `workspace` (every built-in tool is confined to it).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for an invalid queue configuration
    /// or session id; an error when `workspace` is not a directory.
    pub fn session(
        &self,
        workspace: impl AsRef<Path>,
        options: Option<SessionOptions>,
    ) -> Result<AgentSession> {
        AgentSession::open(
            Arc::clone(&self.config),
            workspace.as_ref(),
            options.unwrap_or_default(),
        )
    }
}

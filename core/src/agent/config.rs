//! TEMPORARY STUB (replaced by the config branch).
#![allow(missing_docs)]
use std::path::{Path, PathBuf};
use crate::{Result, SessionQueueConfig};
#[derive(Debug, Clone, Default)]
pub struct AgentConfig { pub queue: SessionQueueConfig, pub source: Option<PathBuf>, pub max_tool_rounds: Option<u32>, pub default_model: Option<String> }
#[derive(Debug, Clone, Default)] pub struct ProviderConfig;
#[derive(Debug, Clone, Default)] pub struct ModelConfig;
#[derive(Debug, Clone, Default)] pub struct DistributionConfig;
impl AgentConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> { std::fs::read_to_string(path.as_ref())?; Ok(Self::default()) }
}

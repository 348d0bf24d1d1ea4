//! Agent and agent.hcl.

mod config;

pub use config::{AgentConfig, DistributionConfig, ModelConfig, ProviderConfig};

//! Agent and agent.hcl.

//! TEMPORARY STUB (replaced by the tools branch).
#![allow(missing_docs)]
use std::path::{Path, PathBuf};
use crate::{ExternalTask, ExternalTaskResult, Result};
pub const BUILTIN_TOOLS: [&str; 7] = ["read", "write", "edit", "grep", "glob", "ls", "bash"];
pub fn is_builtin(name: &str) -> bool { BUILTIN_TOOLS.contains(&name) }
#[derive(Debug, Clone)]
pub struct Workspace { root: PathBuf }
impl Workspace {
    pub fn new(root: impl AsRef<Path>) -> Result<Self> { Ok(Self { root: root.as_ref().canonicalize()? }) }
    pub fn root(&self) -> &Path { &self.root }
    pub fn with_bash(self, _allowed: bool) -> Self { self }
}
pub async fn execute_builtin(task: &ExternalTask, _ws: &Workspace) -> ExternalTaskResult {
    ExternalTaskResult::ok(serde_json::json!({"echo": task.payload.clone()}))
}

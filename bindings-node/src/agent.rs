//! `Agent`: the configuration loaded from `agent.hcl`, and the sessions opened from it.

use a3s_code_core as core;
use napi::Env;
use napi_derive::napi;

use crate::error::{self, coded};
use crate::runtime::{Promise, spawned};
use crate::session::{JsAgentSession, SessionOptions};

/// An agent: its configuration, from which sessions are opened.
#[napi(js_name = "Agent")]
pub struct JsAgent {
    inner: core::Agent,
}

#[napi]
impl JsAgent {
    /// An agent with the default configuration (no `agent.hcl`).
    #[napi(constructor)]
    #[allow(clippy::new_without_default)] // a JS constructor, not a Rust API
    pub fn new() -> Self {
        Self {
            inner: core::Agent::from_config(core::AgentConfig::default()),
        }
    }

    /// Loads `agent.hcl` (or any file in its format). Rejects with `ConfigFile` naming the
    /// file and line for a missing file, a syntax error or an invalid setting.
    #[napi(ts_return_type = "Promise<Agent>")]
    pub fn create(env: &Env, path: String) -> napi::Result<Promise<JsAgent>> {
        spawned(env, async move {
            Ok(JsAgent {
                inner: core::Agent::new(path).await?,
            })
        })
    }

    /// Opens a session on `workspace` (every built-in tool is confined to it).
    ///
    /// Throws `InvalidConfig` for an invalid queue configuration or session id, or when
    /// `workspace` is not a directory.
    #[napi(ts_return_type = "AgentSession")]
    pub fn session(
        &self,
        workspace: String,
        options: Option<SessionOptions>,
    ) -> error::Result<JsAgentSession> {
        let options = options
            .map(SessionOptions::into_core)
            .transpose()
            .map_err(coded)?;
        let session = self.inner.session(workspace, options).map_err(coded)?;
        Ok(session.into())
    }
}

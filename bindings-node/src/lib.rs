//! Node.js bindings of `a3s-code-core` (the `@a3s-lab/code` package), built with napi-rs.
//!
//! Thin by design: every method converts its arguments, calls the core once and maps the
//! result. Asynchronous methods run on napi's one tokio runtime and return promises; a core
//! error rejects (or throws) an `Error` whose `code` is the core's stable code. The modules
//! mirror the core's: `agent`, `session`, `queue`, `task`, `worker` (and `remote`, the core's
//! `worker::remote`); `source` holds the worker-side methods `AgentSession` and `WorkerClient`
//! share (the core's `TaskSource`).

pub mod admin;
pub mod agent;
pub mod error;
pub mod queue;
pub mod remote;
pub mod runtime;
pub mod session;
pub mod shapes;
pub mod source;
pub mod task;
pub mod worker;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

//! a3s-code core: per-session priority lane queue and external task distribution.
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod agent;
pub mod error;
pub mod queue;
pub mod task;
pub mod tools;

pub use error::{Error, Result};
pub use queue::SessionQueueConfig;
pub use task::{ExternalTask, ExternalTaskResult};

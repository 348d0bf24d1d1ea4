//! NATS JetStream, in one place: connection settings ([`config`]), the session's side
//! ([`session`]: publishes tasks, applies results), the worker's side ([`worker`]:
//! [`WorkerClient`](worker::WorkerClient)), and the object store of large values
//! ([`objects`]). The message formats are [`crate::broker::wire`]; `docs/protocol.md` is the
//! normative description.

pub(crate) mod admin;
pub(crate) mod config;
pub(crate) mod hub;
pub(crate) mod objects;
pub(crate) mod session;
pub(crate) mod worker;

pub(crate) use config::NatsConfig;

//! Brokers: how External tasks reach workers on other machines.
//!
//! In process (the default) a session keeps its claimable tasks itself: workers call
//! `pending_external_tasks()` / `claim_external_tasks()` on the session. With
//! [`SessionOptions::with_nats`](crate::SessionOptions::with_nats) an External lane instead
//! publishes each task to NATS JetStream once it holds a lane slot, and remote workers
//! ([`WorkerClient`](crate::worker::WorkerClient), `a3s-code worker`, or any client following
//! `docs/protocol.md`) pull it from there. Scheduling stays in the session either way.

pub mod wire;

#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "nats")]
mod nats_config;
#[cfg(feature = "nats")]
pub(crate) mod objects;

#[cfg(feature = "nats")]
pub use nats_config::{NatsAuth, NatsConfig, NatsOptions, NatsTls};

pub(crate) use crate::queue::dispatch::{Dispatcher, Ended};

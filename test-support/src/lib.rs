//! Test helpers.
//!
//! - [`model_server`]: a scripted OpenAI / Anthropic model server on `127.0.0.1:0`.

pub mod model_server;

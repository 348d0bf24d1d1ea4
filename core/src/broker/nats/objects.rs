//! Payloads and results too large for a NATS message travel through a JetStream object store
//! bucket of their tenant (`<PREFIX>_OBJ_<tenant>`, so a worker credential can be confined to
//! its tenant's objects), by reference ([`ObjectRef`]). `docs/protocol.md` §3.1 and §3.2
//! say who writes and who deletes each object.
//!
//! The session creates the bucket; workers open it only when a task references it, so a worker
//! that never sees a large payload needs no permission on it.

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use async_nats::jetstream::{self, stream};
use base64::Engine;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::NatsConfig;
use crate::broker::wire::{Names, ObjectRef};
use crate::error::{Error, Result};
use crate::task::ExternalTaskResult;

/// Room left in a message for its headers (`Nats-Msg-Id`, tracing) besides the JSON body.
const HEADROOM: usize = 8 * 1024;

/// The longest an upload or a download may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest envelope that still goes inline: the server's `max_payload` minus headroom.
pub(crate) fn inline_limit(client: &async_nats::Client) -> usize {
    let max = match client.server_info().max_payload {
        0 => 1 << 20,
        n => n,
    };
    max.saturating_sub(HEADROOM).max(HEADROOM)
}

/// A failed result saying why: `{"error_code": <code>}` and the message (as the tools report).
pub(crate) fn failed(err: &Error) -> ExternalTaskResult {
    ExternalTaskResult {
        success: false,
        result: serde_json::json!({"error_code": err.code()}),
        error: Some(err.to_string()),
    }
}

/// The bucket and its underlying stream (to drop a deleted object's tombstone).
#[derive(Clone)]
pub(crate) struct Bucket {
    store: ObjectStore,
    stream: stream::Stream,
    name: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::BrokerUnavailable {
        reason: format!("{what}: {e}"),
    }
}

impl Bucket {
    /// Opens the bucket, creating it (with the streams' age and size limits) if missing. The
    /// session does this at setup.
    pub(crate) async fn ensure(
        js: &jetstream::Context,
        names: &Names,
        tenant: &str,
        config: &NatsConfig,
    ) -> Result<Self> {
        let name = names.objects_bucket(tenant);
        if let Ok(b) = Self::open(js, names, tenant).await {
            return Ok(b);
        }
        let created = js
            .create_object_store(object_store::Config {
                bucket: name.clone(),
                description: Some("a3s-code: payloads and results too large for a message".into()),
                max_age: config.stream_max_age,
                max_bytes: config.stream_max_bytes,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => Self::open(js, names, tenant).await,
            // Another session created it meanwhile.
            Err(e) => Self::open(js, names, tenant)
                .await
                .map_err(|_| unavailable(&format!("creating the object store {name}"), e)),
        }
    }

    /// Opens a tenant's existing bucket (workers).
    pub(crate) async fn open(js: &jetstream::Context, names: &Names, tenant: &str) -> Result<Self> {
        let name = names.objects_bucket(tenant);
        let what = format!("object store {name}");
        let store = timed(&what, js.get_object_store(&name)).await?;
        let stream = timed(&what, js.get_stream(format!("OBJ_{name}"))).await?;
        Ok(Self {
            store,
            stream,
            name,
        })
    }

    /// Stores `bytes` under `name`.
    pub(crate) async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<ObjectRef> {
        let size = bytes.len() as u64;
        let mut reader = std::io::Cursor::new(bytes);
        let what = format!("storing object {name}");
        let put = self.store.put(name, &mut reader);
        match tokio::time::timeout(TRANSFER_TIMEOUT, put).await {
            Ok(Ok(_)) => Ok(ObjectRef {
                bucket: self.name.clone(),
                name: name.to_owned(),
                size,
            }),
            Ok(Err(e)) => Err(unavailable(&what, e)),
            Err(_) => Err(unavailable(&what, "timed out")),
        }
    }

    /// The bucket's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Reads the JSON value `r` refers to, refusing objects over `limit` bytes. `expected` is
    /// the object name the protocol gives this value: a reference to any other object (another
    /// session's, another tenant's bucket) is refused before anything is read.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPayload`] when the reference is not to this bucket or not to `expected`,
    /// the object is missing, has another size or is not JSON; [`Error::PayloadTooLarge`] over
    /// `limit`; [`Error::BrokerUnavailable`] when NATS could not be read (worth retrying).
    pub(crate) async fn get(&self, r: &ObjectRef, expected: &str, limit: usize) -> Result<Value> {
        if r.bucket != self.name {
            return Err(Error::invalid_payload(format!(
                "object {:?} is in bucket {:?}, not {:?}",
                r.name, r.bucket, self.name
            )));
        }
        if r.name != expected {
            return Err(Error::invalid_payload(format!(
                "the reference names object {:?}, not {expected:?}",
                r.name
            )));
        }
        if r.size > limit as u64 {
            return Err(Error::PayloadTooLarge {
                size: usize::try_from(r.size).unwrap_or(usize::MAX),
                limit,
            });
        }
        let what = format!("reading object {}", r.name);
        let read = async {
            let mut object = match self.store.get(&r.name).await {
                Ok(o) => o,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                    return Err(Error::invalid_payload(format!(
                        "object {} is missing from bucket {}",
                        r.name, self.name
                    )));
                }
                Err(e) => return Err(unavailable(&what, e)),
            };
            if object.info.size as u64 != r.size {
                return Err(Error::invalid_payload(format!(
                    "object {} holds {} bytes, the reference says {}",
                    r.name, object.info.size, r.size
                )));
            }
            let mut bytes = Vec::with_capacity(object.info.size);
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| unavailable(&what, e))?;
            if bytes.len() as u64 != r.size {
                return Err(Error::invalid_payload(format!(
                    "object {} yielded {} bytes, the reference says {}",
                    r.name,
                    bytes.len(),
                    r.size
                )));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid_payload(format!("object {} is not JSON: {e}", r.name)))
        };
        match tokio::time::timeout(TRANSFER_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(&what, "timed out")),
        }
    }

    /// Deletes an object, tombstone included (missing objects are fine).
    pub(crate) async fn delete(&self, name: &str) {
        match self.store.delete(name).await {
            Ok(()) => {}
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(object = name, error = %e, "could not delete an object");
                return;
            }
        }
        let meta = format!(
            "$O.{}.M.{}",
            self.name,
            base64::engine::general_purpose::URL_SAFE.encode(name)
        );
        if let Err(e) = self.stream.purge().filter(meta).await {
            tracing::debug!(object = name, error = %e, "could not drop an object's tombstone");
        }
    }
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    op: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(Duration::from_secs(10), op).await {
        Ok(r) => r.map_err(|e| unavailable(what, e)),
        Err(_) => Err(unavailable(what, "timed out")),
    }
}

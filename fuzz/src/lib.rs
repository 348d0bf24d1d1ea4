//! Invariants shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target feeds untrusted bytes to the entry point the real code uses on them, and checks:
//! no panic, errors are typed (an expected [`Error::code`]), and what decodes encodes back to
//! something that decodes to the same value.

use std::fmt::Debug;

use a3s_code_core::Error;
use a3s_code_core::broker::wire;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The codes `wire::decode` may fail with.
pub const WIRE_ERRORS: [&str; 2] = ["InvalidPayload", "UnsupportedProtocol"];

/// Asserts that `err` is one of `codes` and has a message.
pub fn assert_typed(err: &Error, codes: &[&str]) {
    assert!(
        codes.contains(&err.code()),
        "unexpected error code {} ({err})",
        err.code()
    );
    assert!(
        !err.to_string().is_empty(),
        "{} without a message",
        err.code()
    );
}

/// Decodes `bytes` as a version-1 envelope with [`wire::decode`] (what sessions and workers call
/// on every message), and checks the round trip: `decode(encode(x)) == x`. Returns the envelope
/// and its encoding, or `None` when `bytes` is (correctly) rejected.
pub fn envelope_round_trip<T>(bytes: &[u8]) -> Option<(T, Vec<u8>)>
where
    T: Serialize + wire::Envelope + PartialEq + Debug,
{
    let env = match wire::decode::<T>(bytes) {
        Ok(env) => env,
        Err(err) => {
            assert_typed(&err, &WIRE_ERRORS);
            return None;
        }
    };
    let encoded = wire::encode(&env);
    let again: T = wire::decode(&encoded).unwrap_or_else(|err| {
        panic!(
            "an encoded envelope does not decode: {err}\n{}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(again, env, "decode(encode(x)) != x");
    Some((again, encoded))
}

/// [`envelope_round_trip`], plus: encoding is stable (`encode(decode(encode(x))) == encode(x)`).
/// For envelopes without a clock-dependent field (all but the task).
pub fn envelope_stable<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + wire::Envelope + PartialEq + Debug,
{
    let (env, encoded) = envelope_round_trip::<T>(bytes)?;
    assert_eq!(
        String::from_utf8_lossy(&wire::encode(&env)),
        String::from_utf8_lossy(&encoded),
        "encoding is not stable"
    );
    Some(env)
}

/// A message on a results subject as a session reads it ([`wire::decode_results`]: one result or
/// a batch): typed errors only, and every result it yields round-trips stably.
pub fn results_message(bytes: &[u8]) -> Option<Vec<wire::ResultEnvelope>> {
    let results = match wire::decode_results(bytes) {
        Ok(r) => r,
        Err(err) => {
            assert_typed(&err, &WIRE_ERRORS);
            return None;
        }
    };
    for r in &results {
        let encoded = wire::encode(r);
        envelope_stable::<wire::ResultEnvelope>(&encoded).expect("a decoded result re-decodes");
    }
    Some(results)
}

/// Plain serde JSON round trip (the types `wire` flattens into its envelopes).
pub fn json_round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value: T = serde_json::from_slice(bytes).ok()?;
    let encoded = serde_json::to_vec(&value).expect("serializes");
    let again: T = serde_json::from_slice(&encoded).unwrap_or_else(|err| {
        panic!(
            "a serialized value does not deserialize: {err}\n{}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(again, value, "from_json(to_json(x)) != x");
    Some(again)
}

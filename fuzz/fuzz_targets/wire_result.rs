//! A result message as a session receives it (`consume_results`): `wire::decode::<ResultEnvelope>`.
#![no_main]

use a3s_code_core::broker::wire::ResultEnvelope;
use a3s_code_fuzz::envelope_stable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = envelope_stable::<ResultEnvelope>(data);
});

//! An output chunk as a session receives it (`consume_output`): `wire::decode::<OutputChunk>`.
#![no_main]

use a3s_code_core::broker::wire::OutputChunk;
use a3s_code_fuzz::envelope_stable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = envelope_stable::<OutputChunk>(data);
});

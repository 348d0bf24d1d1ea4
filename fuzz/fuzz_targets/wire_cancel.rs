//! A cancel notice as a worker receives it (`listen_cancels`): `wire::decode::<CancelNotice>`.
#![no_main]

use a3s_code_core::broker::wire::CancelNotice;
use a3s_code_fuzz::envelope_stable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = envelope_stable::<CancelNotice>(data);
});

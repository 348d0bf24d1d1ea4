//! A doorbell as a worker receives it (`listen_doorbells`): `wire::decode::<Doorbell>`.
#![no_main]

use a3s_code_core::broker::wire::{self, Doorbell};
use a3s_code_fuzz::envelope_stable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(bell) = envelope_stable::<Doorbell>(data) {
        let _ = wire::route_token(&bell.labels);
    }
});

//! A message on a results subject as a session receives it (`consume_results`):
//! `wire::decode_results`, one result envelope or a batch of them.
#![no_main]

use a3s_code_fuzz::results_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = results_message(data);
});

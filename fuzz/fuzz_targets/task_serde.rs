//! `ExternalTask` and `ExternalTaskResult` serde (the wire payloads, also what bindings and
//! `complete_external_task` callers hand in as JSON).
#![no_main]

use a3s_code_core::{ExternalTask, ExternalTaskResult};
use a3s_code_fuzz::json_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(task) = json_round_trip::<ExternalTask>(data) {
        assert!(task.remaining_ms() <= task.timeout_ms);
        let _ = (task.is_timed_out(), task.deadline(), task.trace_context());
    }
    let _ = json_round_trip::<ExternalTaskResult>(data);
});

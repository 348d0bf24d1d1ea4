//! A task message as a worker receives it (`WorkerClient::accept`, and the session re-reading
//! its own envelope to move a large payload to the object store): `wire::decode::<TaskEnvelope>`.
#![no_main]

use a3s_code_core::broker::wire::{self, TaskEnvelope};
use a3s_code_fuzz::envelope_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((env, _)) = envelope_round_trip::<TaskEnvelope>(data) else {
        return;
    };
    // What a worker does next with a decoded task must not panic either.
    let task = &env.task;
    assert!(task.remaining_ms() <= task.timeout_ms);
    let _ = (task.is_timed_out(), task.deadline(), task.trace_context());
    let token = wire::route_token(&env.labels);
    assert!(token == wire::ANY_ROUTE || (token.len() == 17 && token.starts_with('r')));
    assert!(wire::labels_match(&env.labels, &env.labels));
    // A worker giving the task back asks for this delay (`claim.retry.delay_before_retry`).
    assert!(env.retry.max_attempts() >= 1);
    for attempt in [0, 1, task.attempt, env.max_attempts, u32::MAX] {
        assert!(
            env.retry.delay_before_retry(attempt).as_millis() <= u128::from(env.retry.max_delay_ms)
        );
    }
});

//! The language-neutral fixtures hold for the Rust core: the API fixtures in tests/fixtures/v1
//! (errors, names, options, the in-process task types) and the wire protocol's envelopes in
//! tests/fixtures/v2/wire (protocol version 2; v1's are kept, frozen, for the version tests).

use a3s_code_core::{Error, ExternalTask, ExternalTaskResult};
use serde_json::Value;

fn fixture(path: &str) -> Value {
    // Wire envelopes are version 2's; everything else is in v1.
    let dir = match path.starts_with("wire/") && !path.starts_with("wire/external_task") {
        true => "v2",
        false => "v1",
    };
    let full = format!(
        "{}/../tests/fixtures/{dir}/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&full).expect(&full)).expect("valid JSON")
}

#[test]
fn errors_json_lists_every_code() {
    let listed: Vec<String> = fixture("errors.json")["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, Error::CODES);
}

#[test]
fn wire_task_round_trips_and_keeps_payload_keys() {
    let wire = fixture("wire/external_task.json");
    let task: ExternalTask = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(
        task.payload["CamelCaseKey"], 1,
        "payload keys are never renamed"
    );
    assert!((119_000..=119_500).contains(&task.remaining_ms()));
    let mut back = serde_json::to_value(&task).unwrap();
    // remaining_ms is recomputed at serialization; everything else is identical.
    back["remaining_ms"] = wire["remaining_ms"].clone();
    assert_eq!(back, wire);
    let result: ExternalTaskResult =
        serde_json::from_value(fixture("wire/external_task_result.json")).unwrap();
    assert!(result.success);
}

#[cfg(feature = "nats")]
#[test]
fn wire_envelopes_decode_and_encode_canonically() {
    use a3s_code_core::broker::wire::{
        self, AttachReply, AttachRequest, CancelNotice, Doorbell, OutputChunk, Presence,
        ResultBatch, ResultEnvelope, ResultKind, TaskEnvelope,
    };

    fn round_trip<T: serde::Serialize + wire::Envelope>(name: &str) -> T {
        let json = fixture(&format!("wire/{name}"));
        let decoded: T = wire::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
        let mut encoded: Value = serde_json::from_slice(&wire::encode(&decoded)).unwrap();
        if encoded.get("remaining_ms").is_some() {
            encoded["remaining_ms"] = json["remaining_ms"].clone(); // recomputed when encoding
        }
        assert_eq!(encoded, json, "{name} encodes back to the fixture");
        decoded
    }
    let task: TaskEnvelope = round_trip("task_envelope.json");
    assert_eq!(
        (task.max_attempts, task.task.command_type.as_str()),
        (4, "read")
    );
    let result: ResultEnvelope = round_trip("result_envelope.json");
    assert_eq!(result.kind, ResultKind::Result);
    // Large payloads and results travel by reference (docs/protocol.md §3.1, §3.2).
    let by_ref: TaskEnvelope = round_trip("task_envelope_ref.json");
    let by_ref_tenant = by_ref.tenant.clone();
    assert!(by_ref.task.payload.is_null());
    let r = by_ref.payload_ref.expect("payload_ref");
    let names = wire::Names::new("a3s").unwrap();
    assert_eq!(r.bucket, names.objects_bucket(&by_ref_tenant));
    assert_eq!(
        r.name,
        names.payload_object(&by_ref.task.session_id, &by_ref.task.task_id)
    );
    let by_ref: ResultEnvelope = round_trip("result_envelope_ref.json");
    assert!(by_ref.result.result.is_null());
    let r = by_ref.result_ref.expect("result_ref");
    assert_eq!(r.bucket, names.objects_bucket(&by_ref_tenant));
    assert_eq!(
        r.name,
        names.result_object(&by_ref.session_id, &by_ref.task_id, by_ref.attempt)
    );
    assert!(task.payload_ref.is_none() && result.result_ref.is_none());
    let exhausted: ResultEnvelope = round_trip("result_exhausted.json");
    assert_eq!(exhausted.kind, ResultKind::Exhausted);
    let batch: ResultBatch = round_trip("result_batch.json");
    assert_eq!(batch.results.len(), 2);
    assert!(
        batch
            .results
            .iter()
            .all(|r| r.session_id == batch.session_id)
    );
    let bytes = serde_json::to_vec(&fixture("wire/result_batch.json")).unwrap();
    assert_eq!(wire::decode_results(&bytes).unwrap(), batch.results);
    round_trip::<Doorbell>("doorbell.json");
    let bell: Doorbell = round_trip("doorbell_session.json");
    assert!(bell.session.is_some() && bell.weight == 3.0);
    round_trip::<CancelNotice>("cancel.json");
    let closed: wire::SessionClosed = round_trip("session_closed.json");
    assert_eq!(closed.event, wire::SessionClosed::EVENT);
    // A worker that reads only cancels ignores it: it is not one.
    let bytes = serde_json::to_vec(&fixture("wire/session_closed.json")).unwrap();
    assert!(wire::decode::<CancelNotice>(&bytes).is_err());
    round_trip::<OutputChunk>("output_chunk.json");
    round_trip::<AttachRequest>("attach_request.json");
    round_trip::<AttachReply>("attach_reply.json");
    round_trip::<Presence>("presence.json");
    // The admin API (§13).
    let taken: wire::TakenNotice = round_trip("taken.json");
    assert_eq!(taken.tasks[1].attempt, 2);
    let a: wire::Announcement = round_trip("announcement.json");
    assert_eq!(a.demand.iter().map(|d| d.slots).sum::<usize>(), 9);
    let req: wire::AdminRequest = round_trip("admin_request_tasks.json");
    assert!(matches!(req.op, wire::AdminOp::Tasks { ref query, .. }
        if query.state == a3s_code_core::admin::TaskState::InFlight));
    let act: wire::AdminRequest = round_trip("admin_request_act.json");
    assert!(matches!(
        act.op,
        wire::AdminOp::Act {
            action: a3s_code_core::admin::Action::Pause { .. },
            ..
        }
    ));
    let ok: wire::AdminReply = round_trip("admin_reply_ok.json");
    let page: a3s_code_core::admin::TaskPage = serde_json::from_value(ok.ok.unwrap()).unwrap();
    assert_eq!(
        page.tasks[0].worker_id.as_deref(),
        Some("worker-3f2a9c1b7d4e")
    );
    let err: wire::AdminReply = round_trip("admin_reply_error.json");
    assert_eq!(err.error.unwrap().code, "SessionNotFound");
    // A version-1 message is refused by a version-2 party with its reason.
    let bad = serde_json::to_vec(&fixture("wire/bad_version.json")).unwrap();
    assert_eq!(
        wire::decode::<Doorbell>(&bad).unwrap_err().code(),
        "UnsupportedProtocol"
    );
}

#[test]
fn api_json_options_are_the_cores_option_sets() {
    let options = fixture("api.json")["options"].clone();
    let names = |set: &str| -> Vec<String> {
        serde_json::from_value(options[set].clone()).unwrap_or_else(|e| panic!("{set}: {e}"))
    };
    let core = |fields: &[&str]| fields.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>();
    use a3s_code_core::SessionQueueConfig;
    use a3s_code_core::queue::RetryPolicy;
    use a3s_code_core::worker::ClaimOptions;
    assert_eq!(
        names("SessionQueueConfig"),
        core(SessionQueueConfig::FIELDS)
    );
    assert_eq!(names("RetryPolicy"), core(RetryPolicy::FIELDS));
    assert_eq!(names("ClaimOptions"), core(ClaimOptions::FIELDS));
    #[cfg(feature = "nats")]
    assert_eq!(
        names("NatsConfig"),
        core(a3s_code_core::broker::NatsOptions::FIELDS)
    );
}

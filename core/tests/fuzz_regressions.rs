//! Inputs the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) once failed on, replayed with the
//! same invariants so `cargo test` keeps them fixed.
//!
//! `tests/fixtures/fuzz/<target>/` holds the inputs of the target of that name; add a crashing
//! input there (`fuzz/artifacts/<target>/crash-*`) along with the fix.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use a3s_code_core::agent::AgentConfig;
use a3s_code_core::broker::wire::{
    self, CancelNotice, Doorbell, OutputChunk, ResultEnvelope, TaskEnvelope,
};
use a3s_code_core::tools::{self, ToolContext, Workspace};
use a3s_code_core::{Error, ExternalTask, ExternalTaskResult};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The inputs kept for `target`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn assert_code(err: &Error, codes: &[&str], path: &Path) {
    assert!(
        codes.contains(&err.code()),
        "{}: unexpected {} ({err})",
        path.display(),
        err.code()
    );
}

/// `decode(encode(decode(bytes))) == decode(bytes)`, as in `fuzz/src/lib.rs`.
fn envelope_round_trip<T>(target: &str)
where
    T: Serialize + wire::Envelope + PartialEq + Debug,
{
    for (path, bytes) in inputs(target) {
        match wire::decode::<T>(&bytes) {
            Ok(env) => {
                let again: T = wire::decode(&wire::encode(&env)).unwrap();
                assert_eq!(again, env, "{}", path.display());
            }
            Err(err) => assert_code(&err, &["InvalidPayload", "UnsupportedProtocol"], &path),
        }
    }
}

fn json_round_trip<T>(path: &Path, bytes: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(again, value, "{}", path.display());
    }
}

#[test]
fn wire_envelopes() {
    envelope_round_trip::<TaskEnvelope>("wire_task");
    for (path, bytes) in inputs("wire_result") {
        match wire::decode_results(&bytes) {
            Ok(results) => {
                for r in results {
                    let again: ResultEnvelope = wire::decode(&wire::encode(&r)).unwrap();
                    assert_eq!(again, r, "{}", path.display());
                }
            }
            Err(err) => assert_code(&err, &["InvalidPayload", "UnsupportedProtocol"], &path),
        }
    }
    envelope_round_trip::<CancelNotice>("wire_cancel");
    envelope_round_trip::<OutputChunk>("wire_output");
    envelope_round_trip::<Doorbell>("wire_doorbell");
}

#[test]
fn task_serde() {
    for (path, bytes) in inputs("task_serde") {
        json_round_trip::<ExternalTask>(&path, &bytes);
        json_round_trip::<ExternalTaskResult>(&path, &bytes);
    }
}

/// Numbers in user JSON keep their exact value through the wire: the default `serde_json`
/// parser may be off by one ulp (the workspace enables `float_roundtrip`).
#[test]
fn payload_numbers_survive_the_wire() {
    let (_, bytes) = inputs("task_serde")
        .into_iter()
        .find(|(p, _)| p.ends_with("float-digits.json"))
        .unwrap();
    let task: ExternalTask = serde_json::from_slice(&bytes).unwrap();
    // std's parser rounds correctly.
    let exact = |s: &str| s.parse::<f64>().ok();
    assert_eq!(
        task.payload["n"].as_f64(),
        exact("1184467440737095516160000")
    );
    assert_eq!(task.payload["x"].as_f64(), exact("38672410791262988e-300"));
}

#[test]
fn agent_hcl() {
    for (path, bytes) in inputs("agent_hcl") {
        let Ok(src) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Err(err) = AgentConfig::parse(src, "agent.hcl") {
            assert_code(&err, &["ConfigFile"], &path);
        }
    }
}

#[tokio::test]
async fn tool_args() {
    for (path, bytes) in inputs("tool_args") {
        let Ok(input) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let Some(tool) = input["tool"].as_str() else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap().with_bash(false);
        let outcome = tools::run_tool(tool, &input["args"], &ws, &ToolContext::new()).await;
        if let Err(err) = outcome {
            let codes = [
                "InvalidPayload",
                "PathEscapesWorkspace",
                "ToolFailed",
                "UnknownTool",
            ];
            assert_code(&err, &codes, &path);
        }
    }
}

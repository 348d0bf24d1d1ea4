//! `a3s-code worker` passes the conformance kit (`a3s-code conformance`), every mandatory rule
//! and every optional one it can serve. The foreign worker and deliberately broken workers go
//! through the kit in the Python suite (`bindings-python/tests/test_conformance.py`).

use std::process::Command;

use serde_json::Value;

#[test]
fn a3s_code_worker_conforms() {
    let (url, _server) = test_support::nats();
    let bin = env!("CARGO_BIN_EXE_a3s-code");
    let out = Command::new(bin)
        .args(["conformance", "--json", "--nats", &url, "--", bin, "worker"])
        .env("A3S_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let not_passed: Vec<&Value> = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] != "passed")
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
    assert_eq!(report["conforming"], true);
    assert!(out.status.success());
    assert_eq!(report["rules"].as_array().unwrap().len(), 19);
}

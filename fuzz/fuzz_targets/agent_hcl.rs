//! The `agent.hcl` parser: `AgentConfig::parse` (what `Agent::new` / `AgentConfig::from_file`
//! run on the file's text).
//!
//! Invariants: errors are `ConfigFile` naming the file and a line that exists; an accepted
//! configuration has a valid queue configuration, unique provider names and model ids; `Debug`
//! never shows an `api_key` value.
#![no_main]

use std::collections::HashSet;

use a3s_code_core::Error;
use a3s_code_core::agent::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match AgentConfig::parse(src, "agent.hcl") {
        Ok(cfg) => cfg,
        Err(err) => {
            let Error::ConfigFile { path, line, reason } = &err else {
                panic!("unexpected error code {} ({err})", err.code());
            };
            assert_eq!(path.to_str(), Some("agent.hcl"));
            assert!(!reason.is_empty());
            if let Some(line) = *line {
                // hcl-edit may point just past the last line (an unexpected end of input).
                let lines = src.split('\n').count();
                assert!(
                    (1..=lines + 1).contains(&line),
                    "line {line} of a {lines}-line file: {err}"
                );
            }
            return;
        }
    };
    cfg.queue
        .validate()
        .unwrap_or_else(|e| panic!("an accepted queue config is invalid: {e}"));
    assert!(cfg.source.is_none());
    let mut names = HashSet::new();
    for p in &cfg.providers {
        assert!(names.insert(p.name.as_str()), "provider {:?} twice", p.name);
        let mut ids = HashSet::new();
        for m in &p.models {
            assert!(ids.insert(m.id.as_str()), "model {:?} twice", m.id);
        }
    }
    let _ = cfg.provider("openai");

    // Redaction: with the keys removed, the Debug output only loses its `<redacted>` markers.
    const SHOWN_KEY: &str = "api_key: Some(<redacted>)";
    let shown = format!("{cfg:?}");
    let mut keyless = cfg.clone();
    for p in &mut keyless.providers {
        p.api_key = None;
    }
    let keyless = format!("{keyless:?}");
    if !keyless.contains(SHOWN_KEY) {
        assert_eq!(shown.replace(SHOWN_KEY, "api_key: None"), keyless);
    }
});

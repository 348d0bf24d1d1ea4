//! `read` streams: reading one line of a 1 GiB file keeps the process small. Measured as a
//! child process's peak resident memory (`VmHWM`), so no other test's memory counts.

#![cfg(target_os = "linux")]

use a3s_code_core::tools::{ToolContext, Workspace, run_tool};
use serde_json::json;

/// The most a child reading 1 GiB may peak at (the test binary alone is ~10-20 MB).
const MAX_PEAK_KB: u64 = 120 * 1024;

#[test]
fn reading_a_line_of_a_1_gib_file_stays_small() {
    for case in ["sparse", "text-then-sparse"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "read_child", "--ignored", "--nocapture"])
            .env("A3S_READ_CHILD", case)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{case}: child failed:\n{stdout}\n{stderr}"
        );
        let peak: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("peak_kb="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{case}: no peak reported:\n{stdout}\n{stderr}"));
        eprintln!("{case}: peak RSS {} MB", peak / 1024);
        assert!(peak < MAX_PEAK_KB, "{case}: peak RSS {peak} kB");
    }
}

/// Reads one line of a 1 GiB file and prints the peak RSS; run by the test above only.
#[test]
#[ignore = "run by reading_a_line_of_a_1_gib_file_stays_small in a child process"]
fn read_child() {
    let Ok(case) = std::env::var("A3S_READ_CHILD") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("big")).unwrap();
    if case == "text-then-sparse" {
        // 8 KiB of lines first, so the binary check (a NUL in the first 8 KiB) passes and
        // the read goes on through the zeros: one ~1 GiB line, counted but never held.
        use std::io::Write;
        (&file)
            .write_all("line\n".repeat(8 * 1024 / 5 + 1).as_bytes())
            .unwrap();
    }
    file.set_len(1 << 30).unwrap();
    let ws = Workspace::new(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(run_tool(
        "read",
        &json!({"path": "big", "limit": 1}),
        &ws,
        &ToolContext::new(),
    ));
    match case.as_str() {
        "sparse" => {
            let err = out.unwrap_err();
            assert!(err.to_string().contains("binary"), "{err}");
        }
        _ => {
            let out = out.unwrap();
            assert_eq!(out["content"], "line\n");
            assert_eq!(out["total_lines"], 8 * 1024 / 5 + 2);
            assert_eq!(out["truncated"], true);
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_string();
    println!("peak_kb={peak}");
}

//! Runs the spec's Rust sample as a user would: from `examples/spec`, where its agent.hcl is.

use std::process::Command;

#[test]
fn the_spec_rust_sample_runs_as_written() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO_BIN_EXE_spec-worker"))
        .current_dir(dir)
        .output()
        .expect("spawn the sample");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Total processed: 12"), "{stdout}");
    assert!(stdout.contains("spec sample OK"), "{stdout}");
}

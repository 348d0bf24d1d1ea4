//! Helpers shared by the CLI's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use a3s_code_core::TaskHandle;

/// Awaits every `(i, handle)` of a run of `bash` tasks that `echo i`: each must complete (within
/// 120 s: none is lost), succeed, and carry its own output (no result applied to another task).
pub async fn expect_own_echoes(handles: Vec<(usize, TaskHandle)>) {
    for (i, h) in handles {
        let out = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("no task is lost")
            .unwrap();
        assert!(out.success, "task {i}: {out:?}");
        assert_eq!(
            out.result["stdout"],
            format!("{i}\n"),
            "task {i}'s own result"
        );
    }
}

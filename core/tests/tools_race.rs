//! The tools against a tree that changes under them: a directory of the workspace is swapped,
//! over and over, with a symbolic link to a directory outside (`renameat2(RENAME_EXCHANGE)`, so
//! every path check sees one or the other). Nothing from outside may ever be returned, and
//! nothing may be created or changed outside — on both ways cap-std resolves paths: `openat2`
//! with `RESOLVE_BENEATH`, and the walk by directory handles used where `openat2` is missing or
//! denied (forced here by running the same race in a child process under a seccomp filter that
//! answers `openat2` with `ENOSYS`, as older kernels and some container profiles do).

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use a3s_code_core::tools::{ToolContext, Workspace, run_tool};
use rustix::fs::{CWD, RenameFlags, renameat_with};
use serde_json::{Value, json};

/// Rounds of tool calls per resolution path, and the time they may take at most.
const ROUNDS: usize = 600;
const MAX_TIME: Duration = Duration::from_secs(12);

/// What is outside: a secret file, a name only the outside has, and a file to overwrite.
const SECRET: &str = "OUTSIDE-SECRET";

struct Race {
    _parent: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

/// `parent/ws/d` is a directory of the workspace and `parent/ws/link` a symbolic link to
/// `parent/outside`; the swapper exchanges the two names.
fn race_tree() -> Race {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("ws");
    let outside = parent.path().join("outside");
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(root.join("d/f"), "inside needle\n").unwrap();
    std::fs::write(root.join("d/sub/g"), "inside needle\n").unwrap();
    std::fs::write(outside.join("f"), format!("{SECRET} needle\n")).unwrap();
    std::fs::write(outside.join("sub/g"), format!("{SECRET} needle\n")).unwrap();
    std::fs::write(
        outside.join("only_outside.txt"),
        format!("{SECRET} needle\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    Race {
        _parent: parent,
        root,
        outside,
    }
}

/// The outside tree, as names and contents, to compare before and after.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push((name, String::new()));
                stack.push(p);
            } else {
                out.push((name, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Runs the race; returns how many calls succeeded (some must, or the race proves nothing).
fn run_race() -> u64 {
    let race = race_tree();
    let before = snapshot(&race.outside);
    let ws = Workspace::new(&race.root).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let (a, b) = (race.root.join("d"), race.root.join("link"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
                // Leave the tools time to run between swaps (2 cores here).
                std::thread::yield_now();
            }
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ctx = ToolContext::new();
    let started = Instant::now();
    let mut succeeded = 0u64;
    let mut leaks: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        if started.elapsed() > MAX_TIME {
            eprintln!("stopped after {round} rounds ({MAX_TIME:?})");
            break;
        }
        let calls: Vec<(&str, Value)> = vec![
            ("read", json!({"path": "d/f"})),
            ("read", json!({"path": "d/sub/g"})),
            ("grep", json!({"pattern": "needle", "path": "d"})),
            ("grep", json!({"pattern": "needle", "path": "d/f"})),
            ("glob", json!({"pattern": "*", "path": "d"})),
            ("ls", json!({"path": "d"})),
            (
                "write",
                json!({"path": format!("d/new{round}"), "content": "x"}),
            ),
            (
                "write",
                json!({"path": format!("d/dir{round}/x"), "content": "x"}),
            ),
            (
                "write",
                json!({"path": "d/f", "content": "inside needle\n"}),
            ),
            (
                "edit",
                json!({"path": "d/sub/g", "old_string": "inside", "new_string": "inside"}),
            ),
        ];
        for (tool, args) in calls {
            match rt.block_on(run_tool(tool, &args, &ws, &ctx)) {
                Ok(out) => {
                    succeeded += 1;
                    let text = out.to_string();
                    if text.contains(SECRET) || text.contains("only_outside") {
                        leaks.push(format!("{tool} {args}: {text}"));
                    }
                }
                Err(e) => {
                    // Any refusal is fine; the message must not carry outside content either.
                    assert!(!e.to_string().contains(SECRET), "{tool}: {e}");
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let after = snapshot(&race.outside);
    let swaps = swaps.load(Ordering::Relaxed);
    eprintln!(
        "{succeeded} calls succeeded, {swaps} swaps, {:?}, {} leak(s)",
        started.elapsed(),
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "outside content returned:\n{}",
        leaks.join("\n")
    );
    assert_eq!(before, after, "the outside tree changed");
    assert!(swaps > 100, "the swapper barely ran ({swaps} swaps)");
    succeeded
}

#[test]
fn race_on_the_openat2_path() {
    if !openat2_works() {
        eprintln!("skipped: this kernel has no openat2 (the fallback test covers it)");
        return;
    }
    assert!(run_race() > 0);
}

#[test]
fn race_on_the_fallback_path() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fallback_child", "--ignored", "--nocapture"])
        .env("A3S_RACE_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}\n{stderr}"
    );
    eprintln!("{stderr}");
}

/// The fallback race, run only as the child of `race_on_the_fallback_path`.
#[test]
#[ignore = "run by race_on_the_fallback_path in a child process under seccomp"]
fn fallback_child() {
    if std::env::var_os("A3S_RACE_CHILD").is_none() {
        return;
    }
    deny_openat2();
    assert!(!openat2_works(), "the seccomp filter did not take");
    assert!(run_race() > 0);
}

/// Whether `openat2` is available to this process.
fn openat2_works() -> bool {
    use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
    !matches!(
        openat2(
            CWD,
            ".",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
        ),
        Err(rustix::io::Errno::NOSYS)
    )
}

/// Makes `openat2` fail with `ENOSYS` in every thread of this process from now on.
fn deny_openat2() {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
    let filter = SeccompFilter::new(
        [(libc::SYS_openat2, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .unwrap();
    let program: BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter_all_threads(&program).unwrap();
}

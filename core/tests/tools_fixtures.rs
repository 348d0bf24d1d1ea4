//! The built-in tools against the language-neutral fixtures in `tests/fixtures/tools/` (the
//! format is described in its README): each case's workspace is built in a temporary directory,
//! its arguments run through `execute_builtin`, and the task result, the files afterwards and the
//! untouched directory outside the workspace are checked. The Python foreign worker runs the same
//! files (`bindings-python/tests/test_tool_fixtures.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use a3s_code_core::ExternalTask;
use a3s_code_core::queue::SessionLane;
use a3s_code_core::tools::{BUILTIN_TOOLS, Workspace, execute_builtin};
use serde_json::{Map, Value};

/// The name of this runner in a case's `skip` object.
const RUNNER: &str = "rust";

/// Each task's time limit: far more than any case needs (the `bash` timeouts are their own).
const TASK_TIMEOUT_MS: u64 = 60_000;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tools")
}

#[tokio::test]
async fn read() {
    run_file("read").await;
}

#[tokio::test]
async fn write() {
    run_file("write").await;
}

#[tokio::test]
async fn edit() {
    run_file("edit").await;
}

#[tokio::test]
async fn grep() {
    run_file("grep").await;
}

#[tokio::test]
async fn glob() {
    run_file("glob").await;
}

#[tokio::test]
async fn ls() {
    run_file("ls").await;
}

#[tokio::test]
async fn bash() {
    run_file("bash").await;
}

#[test]
fn every_builtin_tool_has_a_fixture_file() {
    for tool in BUILTIN_TOOLS {
        let path = fixtures_dir().join(format!("{tool}.json"));
        assert!(path.is_file(), "{} is missing", path.display());
    }
}

/// Runs every case of `<tool>.json` and fails with the list of the cases that did not pass.
async fn run_file(tool: &str) {
    let path = fixtures_dir().join(format!("{tool}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!cases.is_empty(), "{}: no cases", path.display());
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in &cases {
        let name = case["name"].as_str().expect("every case has a name");
        if case["skip"].get(RUNNER).is_some() {
            continue;
        }
        ran += 1;
        if let Err(why) = run_case(tool, case).await {
            failures.push(format!("{tool}.json: {name}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The two directories of a case: the workspace root (`<tmp>/ws`) and a sibling outside it
/// (`<tmp>/outside`), both canonical.
struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["ws", "outside"] {
            std::fs::create_dir(tmp.path().join(name)).unwrap();
        }
        let root = std::fs::canonicalize(tmp.path().join("ws")).unwrap();
        let outside = std::fs::canonicalize(tmp.path().join("outside")).unwrap();
        Self {
            _tmp: tmp,
            root,
            outside,
        }
    }

    /// `v` with `{root}` and `{outside}` replaced in every string.
    fn subst(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.subst_str(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.subst(i)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.subst(v)))
                    .collect::<Map<_, _>>(),
            ),
            other => other.clone(),
        }
    }

    fn subst_str(&self, s: &str) -> String {
        s.replace("{root}", self.root.to_str().unwrap())
            .replace("{outside}", self.outside.to_str().unwrap())
    }
}

async fn run_case(tool: &str, case: &Value) -> Result<(), String> {
    let dirs = Dirs::new();
    let spec = &case["workspace"];
    build(&dirs, spec)?;
    let outside_before = snapshot(&dirs.outside);

    let options = &case["options"];
    let mut ws = Workspace::new(&dirs.root)
        .map_err(|e| e.to_string())?
        .with_bash(options["allow_bash"].as_bool().unwrap_or(false));
    if let Some(n) = options["max_file_bytes"].as_u64() {
        ws = ws.with_max_file_bytes(n);
    }
    if let Some(n) = options["max_output_bytes"].as_u64() {
        ws = ws.with_max_output_bytes(usize::try_from(n).unwrap());
    }

    let command = case["tool"].as_str().unwrap_or(tool);
    let args = dirs.subst(&case["args"]);
    let task = ExternalTask::new(
        "t1",
        "s1",
        SessionLane::Execute,
        command,
        args,
        TASK_TIMEOUT_MS,
    );
    let got = execute_builtin(&task, &ws).await;
    check_outcome(
        &dirs.subst(&case["expect"]),
        got.success,
        &got.result,
        got.error.as_deref(),
    )?;

    if let Some(after) = case["files_after"].as_object() {
        for (path, want) in after {
            check_file(&dirs, path, &dirs.subst(want))?;
        }
    }
    let outside_after = snapshot(&dirs.outside);
    if outside_after != outside_before {
        return Err(format!(
            "the directory outside the workspace changed: {outside_before:?} -> {outside_after:?}"
        ));
    }
    Ok(())
}

/// Creates the case's files, directories, symbolic links and FIFOs, and the files outside.
fn build(dirs: &Dirs, spec: &Value) -> Result<(), String> {
    let put = |base: &Path, files: &Value| -> Result<(), String> {
        for (path, content) in files.as_object().into_iter().flatten() {
            let full = base.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).map_err(|e| format!("{path}: {e}"))?;
            std::fs::write(&full, content_bytes(content)?).map_err(|e| format!("{path}: {e}"))?;
        }
        Ok(())
    };
    put(&dirs.root, &spec["files"])?;
    put(&dirs.outside, &spec["outside"])?;
    for dir in spec["dirs"].as_array().into_iter().flatten() {
        let dir = dir.as_str().ok_or("dirs: not a string")?;
        std::fs::create_dir_all(dirs.root.join(dir)).map_err(|e| format!("{dir}: {e}"))?;
    }
    for (link, target) in spec["symlinks"].as_object().into_iter().flatten() {
        let target = dirs.subst_str(target.as_str().ok_or("symlinks: not a string")?);
        let full = dirs.root.join(link);
        std::fs::create_dir_all(full.parent().unwrap()).map_err(|e| format!("{link}: {e}"))?;
        std::os::unix::fs::symlink(&target, &full).map_err(|e| format!("{link}: {e}"))?;
    }
    for fifo in spec["fifos"].as_array().into_iter().flatten() {
        let fifo = fifo.as_str().ok_or("fifos: not a string")?;
        let status = std::process::Command::new("mkfifo")
            .arg(dirs.root.join(fifo))
            .status()
            .map_err(|e| format!("mkfifo {fifo}: {e}"))?;
        if !status.success() {
            return Err(format!("mkfifo {fifo}: {status}"));
        }
    }
    Ok(())
}

/// A content value: a string, `{"base64": ...}`, `{"repeat": s, "times": n}`, or a list of
/// those, concatenated.
fn content_bytes(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for part in parts {
                out.extend(content_bytes(part)?);
            }
            Ok(out)
        }
        Value::Object(map) if map.contains_key("base64") => {
            base64_decode(map["base64"].as_str().ok_or("base64: not a string")?)
        }
        Value::Object(map) if map.contains_key("repeat") => {
            let unit = map["repeat"].as_str().ok_or("repeat: not a string")?;
            let times = map["times"].as_u64().ok_or("repeat: no times")?;
            Ok(unit.repeat(usize::try_from(times).unwrap()).into_bytes())
        }
        other => Err(format!("not a content value: {other}")),
    }
}

/// Standard base64 (padding optional).
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("invalid base64 {s:?}"))?;
        acc = (acc << 6) | u32::try_from(v).unwrap();
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
        }
    }
    Ok(out)
}

/// Checks a task result against `expect` (see the README for the forms).
fn check_outcome(
    expect: &Value,
    success: bool,
    result: &Value,
    error: Option<&str>,
) -> Result<(), String> {
    let got = || format!("success {success}, result {result}, error {error:?}");
    let want_success = if let Some(code) = expect.get("error_code") {
        let want = serde_json::json!({ "error_code": code });
        if *result != want {
            return Err(format!("expected error {code}, got {}", got()));
        }
        false
    } else if let Some(want) = expect.get("result") {
        if result != want {
            return Err(format!("expected result {want}, got {}", got()));
        }
        expect["success"].as_bool().unwrap_or(true)
    } else if let Some(want) = expect.get("result_subset") {
        for (key, value) in want.as_object().ok_or("result_subset: not an object")? {
            if result.get(key) != Some(value) {
                return Err(format!("expected {key} = {value}, got {}", got()));
            }
        }
        expect["success"].as_bool().unwrap_or(true)
    } else {
        return Err(format!(
            "no result, result_subset or error_code in {expect}"
        ));
    };
    if success != want_success {
        return Err(format!("expected success {want_success}, got {}", got()));
    }
    match (want_success, error) {
        (true, None) => {}
        (true, Some(_)) => return Err(format!("expected no error, got {}", got())),
        (false, None) => return Err(format!("expected an error message, got {}", got())),
        (false, Some(message)) => {
            if let Some(part) = expect["error_contains"].as_str()
                && !message.contains(part)
            {
                return Err(format!(
                    "expected an error containing {part:?}, got {}",
                    got()
                ));
            }
        }
    }
    Ok(())
}

/// Checks one `files_after` entry: content (a regular file), `null` (nothing there) or
/// `{"symlink": target}`.
fn check_file(dirs: &Dirs, path: &str, want: &Value) -> Result<(), String> {
    let full = dirs.root.join(path);
    let meta = std::fs::symlink_metadata(&full);
    match want {
        Value::Null => match meta {
            Err(_) => Ok(()),
            Ok(_) => Err(format!("{path} should not exist")),
        },
        Value::Object(map) if map.contains_key("symlink") => {
            let target =
                std::fs::read_link(&full).map_err(|e| format!("{path}: not a symlink ({e})"))?;
            if target.to_str() == map["symlink"].as_str() {
                Ok(())
            } else {
                Err(format!(
                    "{path}: a symlink to {}, expected {}",
                    target.display(),
                    map["symlink"]
                ))
            }
        }
        content => {
            let meta = meta.map_err(|e| format!("{path}: {e}"))?;
            if !meta.is_file() {
                return Err(format!("{path}: not a regular file"));
            }
            let got = std::fs::read(&full).map_err(|e| format!("{path}: {e}"))?;
            let want = content_bytes(content)?;
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "{path}: holds {:?}, expected {:?}",
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want)
                ))
            }
        }
    }
}

/// Every entry below `dir` with its content (files) or target (links), for "nothing changed".
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            if kind.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                todo.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, target.into_os_string().into_encoded_bytes());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}

//! The catalogue of bad inputs: every file in tests/fixtures/bad/ is a spec (TOML, or raw
//! bytes) that `eoi generate FIXTURE -o OUT` must answer with a given exit code and message,
//! leaving no output and no `.eoi-*` temporary file behind (and an existing output as it was).
//!
//! Each fixture starts with comment lines that say what to expect and how to run it:
//!
//! ```text
//! # expect: CODE | an excerpt of standard error     (required, first)
//! # also: another excerpt                          (any number)
//! # args: --format npy                             (extra arguments)
//! # output: missing/out.safetensors                (default out.safetensors)
//! # spec: no-such-spec.toml                        (run on this path instead; it does not exist)
//! # setup: existing-output | parent-is-a-file | unwritable-directory
//! ```
//!
//! A fixture expecting exit 0 is a warning: the run succeeds and the excerpts are on
//! standard error.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{eoi, leftovers, text, unwritable_directory};

const FIXTURES: &str = "tests/fixtures/bad";

const PRECIOUS: &[u8] = b"an existing output that a refused run must leave alone";

#[derive(Debug, Default)]
struct Case {
    code: i32,
    excerpts: Vec<String>,
    args: Vec<String>,
    output: Option<String>,
    spec: Option<String>,
    setup: Option<String>,
}

/// Reads the `# key: value` lines at the top of a fixture (raw bytes: the header is ASCII,
/// the rest need not be UTF-8).
fn header(bytes: &[u8]) -> Result<Case, String> {
    let mut case = Case {
        code: -1,
        ..Case::default()
    };
    for line in bytes.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"# ") else {
            break;
        };
        let text = std::str::from_utf8(rest).map_err(|e| format!("header not UTF-8: {e}"))?;
        let Some((key, value)) = text.split_once(": ") else {
            break;
        };
        match key {
            "expect" => {
                let (code, excerpt) = value
                    .split_once(" | ")
                    .ok_or("expect needs `CODE | excerpt`")?;
                case.code = code.trim().parse().map_err(|_| "bad exit code")?;
                case.excerpts.push(excerpt.to_string());
            }
            "also" => case.excerpts.push(value.to_string()),
            "args" => case.args = value.split_whitespace().map(String::from).collect(),
            "output" => case.output = Some(value.to_string()),
            "spec" => case.spec = Some(value.to_string()),
            "setup" => case.setup = Some(value.to_string()),
            _ => break,
        }
    }
    if case.code < 0 {
        return Err("no `# expect: CODE | excerpt` line".into());
    }
    Ok(case)
}

/// Runs one fixture; returns what went wrong, if anything.
fn check(fixture: &Path) -> Result<(), String> {
    let bytes = fs::read(fixture).map_err(|e| e.to_string())?;
    let case = header(&bytes)?;
    let sandbox = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = sandbox.path();
    let spec = match &case.spec {
        Some(missing) => missing.clone(),
        None => {
            fs::write(dir.join("spec.toml"), &bytes).map_err(|e| e.to_string())?;
            "spec.toml".into()
        }
    };
    // Relative to the sandbox, the directory eoi runs in, as a user would type it.
    let mut output = PathBuf::from(case.output.as_deref().unwrap_or("out.safetensors"));
    let mut watched = vec![dir.to_path_buf()];
    match case.setup.as_deref() {
        None => {}
        Some("existing-output") => fs::write(dir.join(&output), PRECIOUS).unwrap(),
        Some("parent-is-a-file") => fs::write(dir.join("file.txt"), b"a file").unwrap(),
        Some("unwritable-directory") => {
            let locked = unwritable_directory(dir);
            output = locked.join("eoi-out.safetensors");
            watched.push(locked);
        }
        Some(other) => return Err(format!("unknown setup `{other}`")),
    }
    let written = dir.join(&output);
    let assert = eoi()
        .current_dir(dir)
        .args(["generate", &spec, "-o"])
        .arg(&output)
        .args(&case.args)
        .assert();
    let got = assert.get_output();
    let stderr = text(&got.stderr);
    let mut problems = Vec::new();
    if got.status.code() != Some(case.code) {
        problems.push(format!(
            "exit code {:?}, expected {}",
            got.status.code(),
            case.code
        ));
    }
    for excerpt in &case.excerpts {
        if !stderr.contains(excerpt.as_str()) {
            problems.push(format!("no {excerpt:?} on standard error"));
        }
    }
    if case.code != 0 && !got.stdout.is_empty() {
        problems.push("a failed run printed on standard output".into());
    }
    match (case.code, case.setup.as_deref()) {
        (0, _) => {
            if !written.exists() {
                problems.push("a successful run wrote no output".into());
            }
        }
        (_, Some("existing-output")) => {
            if fs::read(&written).ok().as_deref() != Some(PRECIOUS) {
                problems.push("the existing output was changed".into());
            }
        }
        _ => {
            if written.exists() {
                problems.push(format!("a failed run left {}", written.display()));
            }
        }
    }
    for place in &watched {
        let left = leftovers(place);
        if !left.is_empty() {
            problems.push(format!("temporary files left: {left:?}"));
        }
    }
    #[cfg(unix)]
    if case.setup.as_deref() == Some("unwritable-directory") {
        use std::os::unix::fs::PermissionsExt;
        // Let the temporary directory be removed again.
        let _ = fs::set_permissions(dir.join("locked"), fs::Permissions::from_mode(0o755));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n    stderr: {stderr}", problems.join("; ")))
    }
}

#[test]
fn every_bad_input_gets_its_exit_code_and_message_and_leaves_nothing() {
    let mut fixtures: Vec<PathBuf> = fs::read_dir(FIXTURES)
        .expect("tests/fixtures/bad exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 40,
        "the catalogue has {} fixtures, fewer than 40",
        fixtures.len()
    );
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|f| {
            check(f)
                .err()
                .map(|why| format!("{}: {why}", f.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled as expected:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

#[test]
fn headers_are_read_from_raw_bytes() {
    let case = header(b"# expect: 2 | not UTF-8\n# args: --format npy\nname = \"\xff\"\n").unwrap();
    assert_eq!(case.code, 2);
    assert_eq!(case.excerpts, ["not UTF-8"]);
    assert_eq!(case.args, ["--format", "npy"]);
    assert!(header(b"[sparsity]\n").is_err());
}

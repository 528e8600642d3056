//! Faults from outside the program: a file-size limit hit while writing, and SIGINT or
//! SIGTERM in the middle of a run. Each must leave no partial output and no `.eoi-*`
//! temporary file, and an existing output untouched; the exit code says what happened.

#![cfg(target_os = "linux")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use predicates::str::contains;

use crate::util::{eoi_after, eoi_process, leftovers, text};

const PRECIOUS: &[u8] = b"an older checkpoint that a failed run must not touch";

/// Four 256 x 256 layers: about 1.3 MB of output, far past a 50 KB file-size limit.
const MID: &str = "[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"l{i}.weight\"\nshape = [256, 256]\nrepeat = 4\n";

/// Runs `eoi generate spec.toml ARGS` under `ulimit -f 100` (at most 100 blocks of 512
/// bytes, or of 1024 in some shells: either way far less than the output).
fn generate_under_file_limit(dir: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    eoi_after("ulimit -f 100")
        .current_dir(dir)
        .args(["generate", "spec.toml"])
        .args(args)
        .assert()
}

#[test]
fn a_file_size_limit_fails_cleanly_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("spec.toml"), MID).unwrap();
    fs::write(dir.path().join("init.safetensors"), PRECIOUS).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["-o", "init.safetensors", "--force"], "init.safetensors"),
        (&["-o", "init", "--format", "npy"], "init"),
        (&["-o", "shards", "--max-shard-size", "200KB"], "shards"),
    ];
    for &(args, out) in cases {
        generate_under_file_limit(dir.path(), args)
            .code(1)
            .stderr(contains("File too large"))
            .stderr(contains("ulimit -f"));
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new(), "{args:?}");
        if out != "init.safetensors" {
            assert!(!dir.path().join(out).exists(), "{args:?} left {out}");
        }
    }
    assert_eq!(
        fs::read(dir.path().join("init.safetensors")).unwrap(),
        PRECIOUS
    );

    // One part of a sharded output, into a shared directory that already holds another
    // part's file: the part fails, the other file stays.
    let shared = dir.path().join("parts");
    fs::create_dir(&shared).unwrap();
    fs::write(shared.join("model-00001-of-00004.safetensors"), PRECIOUS).unwrap();
    generate_under_file_limit(
        dir.path(),
        &["-o", "parts", "--max-shard-size", "200KB", "--shard", "2/4"],
    )
    .code(1)
    .stderr(contains("parts/model-00002-of-00004.safetensors"));
    assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    let names: Vec<_> = fs::read_dir(&shared).unwrap().flatten().collect();
    assert_eq!(names.len(), 1);
    assert_eq!(
        fs::read(shared.join("model-00001-of-00004.safetensors")).unwrap(),
        PRECIOUS
    );
}

/// Six 4096 x 4096 layers, 800 MB of output: two EOI layers, written within a fraction of a
/// second, then four of the `orthogonal` baseline, whose dense QR takes seconds each, so the
/// run is still writing when the tests' signal arrives (six EOI layers alone now finish in
/// about half a second, before it).
const LONG: &str = "[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"l{i}.weight\"\nshape = [4096, 4096]\nrepeat = 2\n\n[[layer]]\nname = \"slow{i}.weight\"\nshape = [4096, 4096]\nrepeat = 4\nscheme = \"orthogonal\"\n";

/// Starts `eoi generate` and waits until its temporary output exists.
fn start_and_wait_for_staging(dir: &Path, args: &[&str]) -> Child {
    fs::write(dir.join("spec.toml"), LONG).unwrap();
    let mut child = eoi_process()
        .current_dir(dir)
        .args(["generate", "spec.toml", "-q"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while leftovers(dir).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("eoi ended ({status}) before its temporary output appeared");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no temporary output after two minutes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Sends `signal` to a running `child` and returns its exit code and standard error.
fn interrupt(child: Child, signal: i32) -> (Option<i32>, String) {
    // SAFETY: kill only sends a signal to the child we started and have not waited for.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0);
    let output = child.wait_with_output().unwrap();
    (output.status.code(), text(&output.stderr))
}

#[test]
fn sigterm_removes_the_temporary_file_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("init.safetensors"), PRECIOUS).unwrap();
    let child = start_and_wait_for_staging(dir.path(), &["-o", "init.safetensors", "--force"]);
    let (code, stderr) = interrupt(child, libc::SIGTERM);
    assert_eq!(code, Some(143), "{stderr}");
    assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(
        fs::read(dir.path().join("init.safetensors")).unwrap(),
        PRECIOUS
    );
}

#[test]
fn sigint_removes_a_staged_directory() {
    for args in [
        &["-o", "init", "--format", "npy"][..],
        &["-o", "init", "--max-shard-size", "100MB"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let child = start_and_wait_for_staging(dir.path(), args);
        // Let the workers get going inside the staged directory.
        std::thread::sleep(Duration::from_millis(300));
        let (code, stderr) = interrupt(child, libc::SIGINT);
        assert_eq!(code, Some(130), "{args:?}: {stderr}");
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new(), "{args:?}");
        assert!(!dir.path().join("init").exists(), "{args:?}");
    }
}

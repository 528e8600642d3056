//! The Python wheel (pyproject.toml, python/eoi) as a user gets it: built from this checkout
//! with pip (maturin from PyPI, in pip's isolated build environment), installed with its
//! `test` extra into a fresh venv (never `.venv`), and the package's own pytest suite,
//! python/tests, run there against the installed package and the binary the wheel put on the
//! venv's PATH (not target/). The suite fails, never skips, when a package is missing.
//!
//! The base interpreter is `$PYTHON` (default `python3`), as for scripts/test's `.venv`.
//! The build uses Cargo.toml's `wheel` profile (target/wheel/), so it never replaces
//! target/release/eoi. python/tests_torch (PyTorch, too large for CI) is run by hand:
//! docs/python.md, "Tests".

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::util::{repo, text};

/// Runs `command`, printing how long it took; requires success.
fn run(what: &str, command: &mut Command) -> Output {
    let start = Instant::now();
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    println!("{what}: {:.1} s", start.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{command:?}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// `venv/bin/python` (`Scripts\python.exe` on Windows).
fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

#[test]
fn the_wheel_installs_into_a_fresh_venv_and_its_python_tests_pass() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let venv = work.path().join("venv");
    let dist = work.path().join("dist");
    let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        "python -m venv",
        Command::new(&base).arg("-m").arg("venv").arg(&venv),
    );
    let python = venv_python(&venv);
    let pip = |args: &[&str]| {
        let mut command = Command::new(&python);
        command
            .args(["-m", "pip", "--disable-pip-version-check", "--no-input"])
            .args(args);
        command
    };

    // `pip wheel .` from the checkout: the release binary and the package in one wheel.
    run(
        "pip wheel (maturin builds the release binary)",
        pip(&["wheel", "--no-deps", "--wheel-dir"])
            .arg(&dist)
            .arg(repo("")),
    );
    let wheels: Vec<PathBuf> = std::fs::read_dir(&dist)
        .expect("pip wheel made the directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    assert_eq!(wheels.len(), 1, "pip wheel made {wheels:?}");
    let wheel = &wheels[0];
    let size = std::fs::metadata(wheel).expect("the wheel").len();
    println!(
        "wheel: {} ({:.2} MB)",
        wheel.file_name().unwrap().to_string_lossy(),
        size as f64 / 1e6
    );
    assert!(
        size < 20_000_000,
        "the wheel is {size} bytes: is the binary unstripped?"
    );

    // Installed as a user installs it, with the packages its tests import.
    let requirement = format!("{}[test]", wheel.display());
    run(
        "pip install WHEEL[test]",
        &mut pip(&["install", "--quiet", &requirement]),
    );

    // pytest in a directory of its own, with the venv first on the PATH (as activated) and
    // nothing pointing the package elsewhere.
    let bin = python.parent().expect("the venv's scripts directory");
    let path = std::env::join_paths(std::iter::once(bin.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("a PATH");
    let out = run(
        "pytest python/tests",
        Command::new(&python)
            .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs"])
            .arg(repo("python/tests"))
            .current_dir(work.path())
            .env("PATH", path)
            .env("EOI_WHEEL", wheel)
            .env("EOI_REPO", repo(""))
            .env("JAX_PLATFORMS", "cpu")
            .env_remove("EOI_BINARY")
            .env_remove("PYTHONPATH")
            .env_remove("VIRTUAL_ENV"),
    );
    let report = text(&out.stdout);
    println!("{report}");
    let summary = report
        .lines()
        .rev()
        .find(|line| line.contains(" passed"))
        .unwrap_or_else(|| panic!("no pytest summary in:\n{report}"));
    for word in ["skipped", "xfail", "deselected", "failed", "error"] {
        assert!(
            !summary.contains(word),
            "pytest's summary says {word}: {summary}"
        );
    }
}

//! Snapshots (insta) of what a user reads: every help text and representative error
//! messages, from the real binary. A change to any of them fails here until the stored
//! snapshot under tests/snapshots/ is updated, so an interface change is a reviewed change.
//!
//! To accept a change on purpose: `INSTA_UPDATE=always scripts/test --test it snapshots::`,
//! then review `git diff tests/snapshots` and commit it with the change. (Without that,
//! insta writes the new text beside the old as `.snap.new` files.)
//!
//! The snapshots keep the folder and names they had when this module was its own test
//! crate, tests/snapshots.rs: `tests/snapshots/snapshots__NAME.snap` (see [`snapshot`]).
//!
//! Help is rendered 100 columns wide (`COLUMNS`), the tool version is replaced by
//! `[VERSION]` so that a release does not change the snapshots, and no colour variable is
//! inherited from the caller.

use std::path::Path;
use std::process::Output;

use crate::util::{Sandbox, commands, eoi_process, utf8};

/// Asserts `value` against the stored snapshot `tests/snapshots/snapshots__{name}.snap`.
///
/// insta names a snapshot after the module path (`it::snapshots` here) and puts it in a
/// `snapshots` folder beside the test file (tests/it/); these settings keep the folder and the
/// file names this module's snapshots had as tests/snapshots.rs, so no file moves.
fn snapshot(name: &str, value: String) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(format!("snapshots__{name}"), value));
}

/// Runs `eoi args...` in `dir`.
fn eoi(dir: &Path, args: &[&str]) -> Output {
    eoi_process()
        .args(args)
        .current_dir(dir)
        .env("COLUMNS", "100")
        .output()
        .expect("eoi runs")
}

/// Output text with the tool's version replaced by `[VERSION]`.
fn text(bytes: &[u8]) -> String {
    utf8(bytes).replace(env!("CARGO_PKG_VERSION"), "[VERSION]")
}

/// The standard output of a run that must succeed and print nothing on standard error.
fn help(args: &[&str]) -> String {
    let sandbox = Sandbox::new();
    let output = eoi(sandbox.dir(), args);
    assert!(output.status.success(), "eoi {args:?} failed");
    assert!(
        output.stderr.is_empty(),
        "eoi {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[test]
fn help_texts() {
    let top = help(&["--help"]);
    snapshot("help", top.clone());
    snapshot("help_short", help(&["-h"]));
    snapshot("version", help(&["--version"]));
    // The commands `eoi --help` lists, without `help`: a new command gets a snapshot too.
    for command in commands(&top) {
        snapshot(&format!("help_{command}"), help(&[&command, "--help"]));
    }
}

/// A failing run as a transcript: the command, the exit code and both streams.
fn refused(spec: Option<&str>, args: &[&str]) -> String {
    let sandbox = Sandbox::new();
    if let Some(spec) = spec {
        sandbox.write("spec.toml", spec);
    }
    let output = eoi(sandbox.dir(), args);
    assert!(!output.status.success(), "eoi {args:?} succeeded");
    format!(
        "$ eoi {}\nexit code: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        output
            .status
            .code()
            .map_or("none".into(), |c| c.to_string()),
        text(&output.stdout),
        text(&output.stderr),
    )
}

const LAYER: &str = "[[layer]]\nname = \"fc.weight\"\nshape = [4, 100]\n";

#[test]
fn error_messages() {
    let cases: &[(&str, Option<String>, &[&str])] = &[
        (
            "unknown_key",
            Some(format!("[sparsity]\ndensty = 0.5\n\n{LAYER}")),
            &["plan", "spec.toml"],
        ),
        (
            "unknown_value",
            Some(format!(
                "[sparsity]\ndensity = 0.5\ndistribution = \"erkk\"\n\n{LAYER}"
            )),
            &["plan", "spec.toml"],
        ),
        (
            "density_out_of_range",
            Some(format!("[sparsity]\ndensity = 1.5\n\n{LAYER}")),
            &["plan", "spec.toml"],
        ),
        (
            "below_minimum",
            Some(format!("[sparsity]\ndensity = 0.001\n\n{LAYER}")),
            &["generate", "spec.toml", "-o", "init.safetensors"],
        ),
        (
            "duplicate_name",
            Some(format!("[sparsity]\ndensity = 0.5\n\n{LAYER}\n{LAYER}")),
            &["plan", "spec.toml", "--json"],
        ),
        (
            "groups_not_dividing_out",
            Some("[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"conv.weight\"\nshape = [32, 4, 3, 3]\ngroups = 3\n".into()),
            &["plan", "spec.toml"],
        ),
        (
            "depthwise_below_minimum",
            Some("[sparsity]\ndensity = 0.05\n\n[[layer]]\nname = \"dw.weight\"\nshape = [96, 1, 3, 3]\ngroups = 96\n".into()),
            &["plan", "spec.toml"],
        ),
        ("missing_file", None, &["plan", "missing.toml"]),
        (
            "missing_output_option",
            Some(format!("[sparsity]\ndensity = 0.5\n\n{LAYER}")),
            &["generate", "spec.toml"],
        ),
    ];
    for (name, spec, args) in cases {
        snapshot(&format!("error_{name}"), refused(spec.as_deref(), args));
    }
}

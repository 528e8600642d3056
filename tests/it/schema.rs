//! The spec's JSON Schema against an independent validator. The schema `eoi schema` prints is
//! committed as specs/eoi.schema.json, which every bundled spec names on its first line
//! (`#:schema ./eoi.schema.json`, read by taplo and Even Better TOML). The Python
//! `jsonschema` package, run by tests/python/validate_schema.py on specs read with Python's
//! own TOML parser, must accept every bundled spec and refuse what eoi's parser refuses for
//! a key or a value.
//!
//! The interpreter is `$EOI_PYTHON` (default `python3`); `scripts/test` creates a virtual
//! environment with jsonschema and sets it. Without jsonschema these tests fail, they do not
//! skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{Needs, SMALL, Sandbox, bundled_specs, eoi_process, python, repo, text};

const DIRECTIVE: &str = "#:schema ./eoi.schema.json";

fn committed_schema() -> PathBuf {
    repo("specs/eoi.schema.json")
}

/// Runs tests/python/validate_schema.py on `specs` with the committed schema.
fn validate(specs: &[PathBuf]) -> Output {
    python(Needs::JsonSchema)
        .arg(repo("tests/python/validate_schema.py"))
        .arg(committed_schema())
        .args(specs)
        .output()
        .expect("the validator runs")
}

fn eoi_plan(spec: &Path) -> Output {
    eoi_process()
        .arg("plan")
        .arg(spec)
        .output()
        .expect("eoi runs")
}

#[test]
fn the_committed_schema_is_what_eoi_schema_prints() {
    let output = eoi_process().arg("schema").output().expect("eoi runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let committed = fs::read(committed_schema()).expect("specs/eoi.schema.json is readable");
    assert!(
        committed == output.stdout,
        "specs/eoi.schema.json differs from `eoi schema`; if the spec format changed on \
         purpose, run `cargo run -- schema > specs/eoi.schema.json` and review the diff"
    );
}

#[test]
fn every_bundled_spec_names_the_schema_on_its_first_line() {
    for spec in bundled_specs() {
        let text = fs::read_to_string(&spec).expect("the spec is readable");
        assert_eq!(
            text.lines().next(),
            Some(DIRECTIVE),
            "{} must start with `{DIRECTIVE}`",
            spec.display()
        );
    }
}

#[test]
fn every_bundled_spec_and_the_golden_spec_satisfy_the_schema() {
    let mut specs = bundled_specs();
    specs.push(PathBuf::from(SMALL));
    let output = validate(&specs);
    let report = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{report}{}",
        text(&output.stderr)
    );
    assert_eq!(report.lines().count(), specs.len(), "{report}");
    assert!(report.lines().all(|l| l.ends_with(": valid")), "{report}");
}

/// Every key and kind of value the spec format has, as README documents it.
const FULL: &str = r#"seed = 42

[sparsity]
density = 0.3
distribution = "erk"
erk_power_scale = 1.0
dense = ["conv1.weight", "fc.*"]
below_minimum = "clamp"

[init]
scheme = "eoi"
gain = "relu"
conv_center = "sqrt"

[output]
format = "npy"
dtype = "f64"
mask_suffix = "_mask"

[[layer]]
name = "conv1.weight"
shape = [16, 3, 3, 3]

[[layer]]
name = "block.{i}.weight"
shape = [16, 16, 3, 3]
repeat = 3
gain = 1.5
conv_center = "same"

[[layer]]
name = "dw.weight"
shape = [16, 1, 3, 3]
groups = 16

[[layer]]
name = "head.weight"
shape = [10, 16]
density = 0.5

[[layer]]
name = "fc.weight"
shape = [10, 10]
"#;

#[test]
fn the_schema_accepts_every_key_and_refuses_what_the_parser_refuses() {
    let sandbox = Sandbox::new();
    let write = |name: &str, text: &str| sandbox.write(name, text);
    let full = write("full.toml", FULL);
    assert!(eoi_plan(&full).status.success(), "the parser takes FULL");
    let output = validate(std::slice::from_ref(&full));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));

    // Each spec is FULL with one change that eoi's parser refuses.
    let bad: &[(&str, &str, &str)] = &[
        ("unknown-top.toml", "seed = 42\n", "seed = 42\nsede = 1\n"),
        ("unknown-sparsity.toml", "density = 0.3\n", "densty = 0.3\n"),
        (
            "unknown-layer.toml",
            "shape = [10, 10]\n",
            "shape = [10, 10]\nbias = true\n",
        ),
        ("unknown-table.toml", "[output]\n", "[outputs]\n"),
        ("density-high.toml", "density = 0.5\n", "density = 1.5\n"),
        ("density-zero.toml", "density = 0.3\n", "density = 0.0\n"),
        ("distribution.toml", "\"erk\"", "\"erkk\""),
        ("gain-name.toml", "\"relu\"", "\"rleu\""),
        ("gain-negative.toml", "gain = 1.5", "gain = -1.5"),
        ("dtype.toml", "\"f64\"", "\"f8\""),
        ("shape-rank.toml", "[10, 16]", "[10]"),
        ("shape-zero.toml", "[10, 16]", "[10, 0]"),
        ("repeat.toml", "repeat = 3", "repeat = 0"),
        ("groups.toml", "groups = 16", "groups = 0"),
        ("seed.toml", "seed = 42", "seed = -1"),
    ];
    let mut paths = Vec::new();
    for (name, from, to) in bad {
        assert!(FULL.contains(from), "{name}: FULL has no {from:?}");
        let path = write(name, &FULL.replacen(from, to, 1));
        assert_eq!(
            eoi_plan(&path).status.code(),
            Some(2),
            "{name}: the parser should refuse it"
        );
        paths.push(path);
    }
    let no_layers = FULL[..FULL.find("[[layer]]").unwrap()].to_string();
    paths.push(write("no-layers.toml", &no_layers));
    let no_sparsity = FULL.replace("[sparsity]\n", "[sparsity_]\n");
    paths.push(write("no-sparsity.toml", &no_sparsity));

    let output = validate(&paths);
    let report = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{report}{}",
        text(&output.stderr)
    );
    for path in &paths {
        let name = path.display().to_string();
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("{name}: ")) && !l.ends_with(": valid")),
            "the schema accepts {name}:\n{report}"
        );
    }
    // The unknown key is named in the validator's message.
    assert!(report.contains("'sede'"), "{report}");
    assert!(report.contains("'bias'"), "{report}");
}

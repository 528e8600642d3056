//! The JSON Schemas against an independent validator. The schema `eoi schema` prints is
//! committed as specs/eoi.schema.json, which every bundled spec names on its first line
//! (`#:schema ./eoi.schema.json`, read by taplo and Even Better TOML). The Python
//! `jsonschema` package, run by tests/python/validate_schema.py on specs read with Python's
//! own TOML parser, must accept every bundled spec and refuse what eoi's parser refuses for
//! a key or a value. The schemas of the JSON documents eoi writes (`eoi schema DOCUMENT`,
//! committed as schemas/DOCUMENT.schema.json) must accept what the binary writes, and each
//! document must read back into the type that wrote it.
//!
//! The interpreter is `$EOI_PYTHON` (default `python3`); `scripts/test` creates a virtual
//! environment with jsonschema and sets it. Without jsonschema these tests fail, they do not
//! skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{Needs, SMALL, Sandbox, bundled_specs, eoi_process, python, repo, text};

use crate::util::lib::{
    Document, GenerateJson, InspectJson, IsometryJson, LayerRecord, PlanJson, VerifyJson,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
const DIRECTIVE: &str = "#:schema ./eoi.schema.json";

fn committed_schema() -> PathBuf {
    repo("specs/eoi.schema.json")
}

/// Runs tests/python/validate_schema.py on `specs` with the committed schema.
fn validate(specs: &[PathBuf]) -> Output {
    validate_with(&committed_schema(), specs)
}

/// Runs the validator on `files` (TOML specs, or JSON documents) with `schema`.
fn validate_with(schema: &Path, files: &[PathBuf]) -> Output {
    python(Needs::JsonSchema)
        .arg(repo("tests/python/validate_schema.py"))
        .arg(schema)
        .args(files)
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

/// Every key and kind of value the spec format has, as docs/spec.md documents it.
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

/// Where the schema of `document` is committed.
fn committed_schema_of(document: Document) -> PathBuf {
    match document {
        Document::Spec => committed_schema(),
        other => repo(&format!("schemas/{}.schema.json", other.name())),
    }
}

fn eoi_schema(args: &[&str]) -> Vec<u8> {
    let output = eoi_process()
        .arg("schema")
        .args(args)
        .output()
        .expect("eoi runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    output.stdout
}

#[test]
fn every_committed_schema_is_what_eoi_schema_prints_for_its_document() {
    assert!(
        eoi_schema(&["spec"]) == eoi_schema(&[]),
        "spec is the default"
    );
    for &document in Document::ALL {
        let path = committed_schema_of(document);
        let committed =
            fs::read(&path).unwrap_or_else(|e| panic!("{} is not readable: {e}", path.display()));
        assert!(
            committed == eoi_schema(&[document.name()]),
            "{} differs from `eoi schema {}`; if the document changed on purpose, run \
             `cargo run -- schema {} > {}` and review the diff",
            path.display(),
            document.name(),
            document.name(),
            path.display()
        );
    }
}

/// A network with every kind of record field: a bias and a tied name, an approx-isometry
/// layer, a grouped and a structured convolution.
const OUTPUTS: &str = r#"seed = 7

[sparsity]
density = 0.5

[[layer]]
name = "fc1.weight"
shape = [32, 16]
bias_std = 0.1
tied = ["head.weight"]

[[layer]]
name = "fc2.weight"
shape = [32, 32]
scheme = "approx-isometry"

[[layer]]
name = "fc3.weight"
shape = [16, 32]

[[layer]]
name = "conv1.weight"
shape = [8, 4, 3, 3]
groups = 2

[[layer]]
name = "conv2.weight"
shape = [8, 8, 3, 3]
conv_mask = "structured"
"#;

/// Runs eoi in `dir` and returns its standard output, which must end with `code`.
fn eoi_in(dir: &Path, args: &[&str], code: i32) -> Vec<u8> {
    let output = eoi_process()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("eoi runs");
    assert_eq!(
        output.status.code(),
        Some(code),
        "eoi {args:?}: {}",
        text(&output.stderr)
    );
    output.stdout
}

/// `json` read into `T`; written again (as eoi prints documents, or compactly as artifacts
/// hold records), it must give the same bytes: no key is lost, renamed or reordered.
fn reads_back<T: Serialize + DeserializeOwned>(what: &str, json: &[u8], pretty: bool) -> T {
    let value: T = serde_json::from_slice(json)
        .unwrap_or_else(|e| panic!("{what} does not read into its type: {e}\n{}", text(json)));
    let again = if pretty {
        serde_json::to_string_pretty(&value).unwrap() + "\n"
    } else {
        serde_json::to_string(&value).unwrap()
    };
    assert_eq!(again, text(json), "{what}, read and written again");
    value
}

#[test]
fn every_json_output_reads_back_into_its_type_and_satisfies_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path();
    fs::write(at.join("net.toml"), OUTPUTS).unwrap();
    let mut documents: Vec<(Document, &str, Vec<u8>)> = Vec::new();

    let plan = eoi_in(at, &["plan", "net.toml", "--json"], 0);
    let planned: PlanJson = reads_back("plan --json", &plan, true);
    assert_eq!(planned.layers.len(), 5);
    assert!(
        planned
            .layers
            .iter()
            .all(|l| l.expected_nnz.is_some() && l.nnz.is_none())
    );
    documents.push((Document::Plan, "plan", plan));

    let generate = eoi_in(
        at,
        &[
            "generate",
            "net.toml",
            "-o",
            "net.safetensors",
            "-q",
            "--json",
        ],
        0,
    );
    let generated: GenerateJson = reads_back("generate --json", &generate, true);
    assert!(
        generated
            .layers
            .iter()
            .all(|l| l.nnz.is_some() && l.expected_nnz.is_none())
    );
    documents.push((Document::Generate, "generate", generate));
    let npy = [
        "generate", "net.toml", "-o", "npy", "--format", "npy", "-q", "--json",
    ];
    documents.push((Document::Generate, "generate-npy", eoi_in(at, &npy, 0)));

    // The records an artifact holds are the records generate --json printed.
    let bytes = fs::read(at.join("net.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let layers = &header.metadata().as_ref().unwrap()["eoi.layers"];
    let stored: Vec<LayerRecord> = reads_back("eoi.layers", layers.as_bytes(), false);
    assert_eq!(stored, generated.layers);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(at.join("npy/manifest.json")).unwrap()).unwrap();
    let listed: Vec<LayerRecord> = reads_back(
        "the manifest's layers",
        manifest["layers"].to_string().as_bytes(),
        false,
    );
    assert_eq!(listed, stored);
    let mut records = Vec::new();
    for (k, record) in stored.iter().enumerate() {
        let path = at.join(format!("record-{k}.json"));
        fs::write(&path, serde_json::to_string(record).unwrap()).unwrap();
        records.push(path);
    }

    let verify = eoi_in(
        at,
        &["verify", "net.safetensors", "--regenerate", "--json"],
        0,
    );
    let verified: VerifyJson = reads_back("verify --json", &verify, true);
    assert!(verified.passed && verified.regenerate.as_ref().is_some_and(|g| g.passed));
    documents.push((Document::Verify, "verify", verify));
    // A weight changed by hand: failures, and a regeneration difference.
    let path = at.join("npy/fc3.weight.npy");
    let mut weight = fs::read(&path).unwrap();
    let end = weight.len();
    weight[end - 4..].copy_from_slice(&1.0f32.to_le_bytes());
    fs::write(&path, weight).unwrap();
    let failed = eoi_in(at, &["verify", "npy", "--regenerate", "--json"], 1);
    let verdict: VerifyJson = reads_back("verify --json (failing)", &failed, true);
    assert!(!verdict.passed && verdict.layers.iter().any(|l| !l.failures.is_empty()));
    assert!(
        verdict
            .regenerate
            .as_ref()
            .is_some_and(|g| !g.differences.is_empty())
    );
    documents.push((Document::Verify, "verify-failing", failed));

    let inspect = eoi_in(at, &["inspect", "net.safetensors", "--json"], 0);
    let inspected: InspectJson = reads_back("inspect --json", &inspect, true);
    assert!(inspected.tensors.iter().any(|t| t.groups == Some(2)));
    documents.push((Document::Inspect, "inspect", inspect));

    let isometry = ["isometry", "net.safetensors", "--layers", "fc*", "--json"];
    let isometry = eoi_in(at, &isometry, 0);
    let measured: IsometryJson = reads_back("isometry --json", &isometry, true);
    assert_eq!(measured.chain.len(), 3);
    documents.push((Document::Isometry, "isometry", isometry));
    // A convolution chain on a grid: exact (dense), and estimated from probes (nulls).
    for (name, extra) in [("isometry-grid", None), ("isometry-probes", Some("8"))] {
        let mut args = vec!["isometry", "net.safetensors", "--layers", "conv*"];
        args.extend(["--grid", "4", "--json"]);
        if let Some(k) = extra {
            args.extend(["--probes", k]);
        }
        let json = eoi_in(at, &args, 0);
        let measured: IsometryJson = reads_back("isometry --grid --json", &json, true);
        assert_eq!(
            measured.grid.as_ref().map(|g| g.probes),
            Some(extra.map(|_| 8))
        );
        documents.push((Document::Isometry, name, json));
    }

    let mut checks = vec![(Document::Record, records)];
    for (document, name, json) in documents {
        let path = at.join(format!("{name}.json"));
        fs::write(&path, json).unwrap();
        checks.push((document, vec![path]));
    }
    for (document, files) in checks {
        let output = validate_with(&committed_schema_of(document), &files);
        let report = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {report}{}",
            document.name(),
            text(&output.stderr)
        );
        assert_eq!(report.lines().count(), files.len(), "{report}");
    }
}

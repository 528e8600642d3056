//! End-to-end tests of `eoi verify` and `eoi inspect` on real files: artifacts written by the
//! binary, then tampered with here (a weight changed inside or outside the mask, an off-centre
//! conv tap, a dropped mask, altered metadata, truncation, forged headers), and dense
//! checkpoints written here or by Python's `safetensors`. Files are taken apart and rebuilt
//! with the `safetensors` crate and a small writer of our own, never with eoi's reader.

use std::fs;
use std::ops::Range;
use std::path::PathBuf;
use std::process::Command as StdCommand;

use assert_cmd::Command;
use assert_cmd::assert::Assert;
use safetensors::SafeTensors;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Linear layers of every shape class and a convolution whose mask is topped up beyond the
/// centre support (sqrt rule: centre density 0.5, mask 0.25 of the kernel).
const MODEL: &str = r#"seed = 11

[sparsity]
density = 0.25

[init]
gain = "tanh"

[[layer]]
name = "fc.weight"
shape = [16, 24]

[[layer]]
name = "tall.weight"
shape = [20, 8]

[[layer]]
name = "square.weight"
shape = [12, 12]
gain = 0.5

[[layer]]
name = "conv.weight"
shape = [8, 16, 3, 3]
"#;

const TANH: f64 = 5.0 / 3.0;

/// A temporary directory the binary runs in.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("cannot create a temporary directory"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn eoi(&self, args: &[&str]) -> Assert {
        Command::new(assert_cmd::cargo::cargo_bin!("eoi"))
            .current_dir(self.dir.path())
            .args(args)
            .assert()
    }

    /// Generates MODEL (with extra `args`) to `out`.
    fn generate(&self, out: &str, args: &[&str]) {
        fs::write(self.path("spec.toml"), MODEL).unwrap();
        let mut all = vec!["generate", "spec.toml", "-o", out, "-q"];
        all.extend_from_slice(args);
        self.eoi(&all).success();
    }

    /// Generates MODEL to `model.safetensors` and returns its bytes.
    fn model(&self) -> Vec<u8> {
        self.generate("model.safetensors", &[]);
        fs::read(self.path("model.safetensors")).unwrap()
    }
}

fn stdout_of(assert: &Assert) -> String {
    String::from_utf8(assert.get_output().stdout.clone()).expect("stdout is not UTF-8")
}

fn stderr_of(assert: &Assert) -> String {
    String::from_utf8(assert.get_output().stderr.clone()).expect("stderr is not UTF-8")
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Runs `eoi verify args...` and requires exit code `code`; returns stdout and stderr.
fn verify(sandbox: &Sandbox, args: &[&str], code: i32) -> (String, String) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let assert = sandbox.eoi(&all).code(code);
    (stdout_of(&assert), stderr_of(&assert))
}

// ---------------------------------------------------------------------------------------
// Taking safetensors files apart and putting them together, independently of eoi

/// Byte range of tensor `name`'s data in a safetensors file.
fn data_range(bytes: &[u8], name: &str) -> Range<usize> {
    let (n, metadata) = SafeTensors::read_metadata(bytes).expect("a valid file");
    let info = metadata
        .info(name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    let start = 8 + n + info.data_offsets.0;
    start..8 + n + info.data_offsets.1
}

fn f32s(bytes: &[u8], range: Range<usize>) -> Vec<f32> {
    bytes[range]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn set_f32(bytes: &mut [u8], range: &Range<usize>, index: usize, value: f32) {
    let at = range.start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// A tensor to write: name, safetensors dtype, shape, little-endian data.
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Every tensor and the metadata of a safetensors file, as the `safetensors` crate reads them.
fn take_apart(bytes: &[u8]) -> (Vec<Entry>, Vec<(String, String)>) {
    let file = SafeTensors::deserialize(bytes).expect("a valid file");
    let mut entries: Vec<(usize, Entry)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let start = data_range(bytes, &name).start;
            let entry = Entry {
                name,
                dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            (start, entry)
        })
        .collect();
    entries.sort_by_key(|(start, _)| *start);
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let mut metadata: Vec<(String, String)> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    metadata.sort();
    (entries.into_iter().map(|(_, e)| e).collect(), metadata)
}

/// A safetensors file: our own writer, with contiguous offsets in the given order.
fn put_together(entries: &[Entry], metadata: &[(String, String)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        header.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut at = 0;
    for e in entries {
        header.insert(
            e.name.clone(),
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [at, at + e.data.len()]}),
        );
        at += e.data.len();
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    text.resize(text.len().next_multiple_of(8), b' ');
    raw_file(
        &text,
        &entries
            .iter()
            .flat_map(|e| e.data.clone())
            .collect::<Vec<_>>(),
    )
}

/// A file from a header length prefix, header bytes and data, whatever they say.
fn raw_file(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Deterministic pseudo-random values in (-1, 1), none of them zero.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            if u == 0.5 { 0.25 } else { 2.0 * u - 1.0 }
        })
        .collect()
}

/// Where the data of a version 1.0 .npy file starts.
fn npy_data_start(bytes: &[u8]) -> usize {
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------
// verify: fresh artifacts

#[test]
fn fresh_artifacts_verify_in_both_formats() {
    let sandbox = Sandbox::new();
    sandbox.generate("model.safetensors", &[]);
    sandbox.generate("model64.safetensors", &["--dtype", "f64"]);
    sandbox.generate("model_npy", &["--format", "npy"]);
    for artifact in ["model.safetensors", "model64.safetensors", "model_npy"] {
        let (out, _) = verify(&sandbox, &[artifact, "--regenerate"], 0);
        assert!(
            out.contains("ok: 4 layers pass every check"),
            "{artifact}: {out}"
        );
        assert!(
            out.contains("regenerated 8 tensors from the embedded spec and seed: bit-identical"),
            "{artifact}: {out}"
        );
        assert!(!out.contains("FAIL"), "{out}");
    }
}

#[test]
fn verify_json_reports_every_layer() {
    let sandbox = Sandbox::new();
    sandbox.model();
    let (out, err) = verify(&sandbox, &["model.safetensors", "--json"], 0);
    assert!(err.is_empty(), "{err}");
    let report = parse_json(&out);
    assert_eq!(report["passed"], true);
    assert_eq!(report["format"], "safetensors");
    assert_eq!(report["recorded"]["seed"], 11);
    assert_eq!(report["regenerate"], Value::Null);
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for layer in layers {
        for key in [
            "name",
            "shape",
            "kind",
            "dtype",
            "nnz",
            "density",
            "gain",
            "orthogonality_error",
            "tolerance",
            "passed",
            "failures",
        ] {
            assert!(layer.get(key).is_some(), "no {key} in {layer}");
        }
        let error = layer["orthogonality_error"].as_f64().unwrap();
        let tolerance = layer["tolerance"].as_f64().unwrap();
        assert!(error <= tolerance, "{layer}");
        // An f32 file is orthogonal to f32 rounding: well below 1e-6 of gain^2.
        let gain = layer["gain"].as_f64().unwrap();
        assert!(tolerance < 1e-6 * gain * gain, "{layer}");
    }
    assert_eq!(layers[0]["gain"].as_f64().unwrap(), TANH);
    assert_eq!(layers[3]["kind"], "conv");
}

// ---------------------------------------------------------------------------------------
// verify: tampered artifacts fail with exit 1 and say where

#[test]
fn a_weight_changed_inside_the_mask_breaks_orthogonality() {
    let sandbox = Sandbox::new();
    let mut bytes = sandbox.model();
    let weight = data_range(&bytes, "fc.weight");
    let mask = data_range(&bytes, "fc.weight_mask");
    let values = f32s(&bytes, weight.clone());
    let k = (0..values.len())
        .find(|&k| bytes[mask.start + k] == 1 && values[k].abs() > 0.1)
        .expect("a large weight inside the mask");
    set_f32(&mut bytes, &weight, k, values[k] * 1.01);
    fs::write(sandbox.path("model.safetensors"), &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["model.safetensors"], 1);
    assert!(
        out.contains("FAIL  fc.weight  orthogonality: max |W W^T - gain^2 I| = "),
        "{out}"
    );
    assert!(out.contains("FAILED: 1 of 4 layers fail"), "{out}");
    assert_eq!(out.matches("FAIL  ").count(), 1, "{out}");
}

#[test]
fn a_weight_outside_the_mask_is_found() {
    let sandbox = Sandbox::new();
    let mut bytes = sandbox.model();
    let weight = data_range(&bytes, "tall.weight");
    let mask = data_range(&bytes, "tall.weight_mask");
    let k = (0..20 * 8)
        .find(|&k| bytes[mask.start + k] == 0)
        .expect("a position outside the mask");
    set_f32(&mut bytes, &weight, k, 0.5);
    fs::write(sandbox.path("model.safetensors"), &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["model.safetensors"], 1);
    let expected = format!(
        "FAIL  tall.weight  mask: 1 nonzero weights outside the mask, first at ({}, {}) (value 5e-1)",
        k / 8,
        k % 8
    );
    assert!(out.contains(&expected), "{expected}\n{out}");
}

#[test]
fn an_off_centre_conv_tap_is_found() {
    let sandbox = Sandbox::new();
    let mut bytes = sandbox.model();
    let weight = data_range(&bytes, "conv.weight");
    let mask = data_range(&bytes, "conv.weight_mask");
    // A topped-up mask position off the centre tap (index 4 of 9): trainable, but zero.
    let k = (0..8 * 16 * 9)
        .find(|&k| k % 9 != 4 && bytes[mask.start + k] == 1)
        .expect("a topped-up position off the centre");
    set_f32(&mut bytes, &weight, k, 1e-3);
    fs::write(sandbox.path("model.safetensors"), &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["model.safetensors"], 1);
    let (o, i, t) = (k / 144, k / 9 % 16, k % 9);
    let expected = format!(
        "FAIL  conv.weight  off-centre: 1 nonzero weights off the centre tap, first at ({o}, {i}, {}, {})",
        t / 3,
        t % 3
    );
    assert!(out.contains(&expected), "{expected}\n{out}");
    assert!(!out.contains("mask:"), "inside the mask: {out}");
}

#[test]
fn a_dropped_mask_is_missed() {
    let sandbox = Sandbox::new();
    let bytes = sandbox.model();
    let (mut entries, metadata) = take_apart(&bytes);
    entries.retain(|e| e.name != "square.weight_mask");
    fs::write(
        sandbox.path("model.safetensors"),
        put_together(&entries, &metadata),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["model.safetensors"], 1);
    assert!(
        out.contains("FAIL  square.weight  tensors: the mask \"square.weight_mask\" is missing"),
        "{out}"
    );
    // The weight itself is still checked and still orthogonal.
    assert_eq!(out.matches("FAIL  ").count(), 1, "{out}");
}

#[test]
fn altered_metadata_is_caught() {
    let sandbox = Sandbox::new();
    let bytes = sandbox.model();
    let (entries, metadata) = take_apart(&bytes);

    // One layer's nnz off by one.
    let mut altered = metadata.clone();
    let layers = altered.iter_mut().find(|(k, _)| k == "eoi.layers").unwrap();
    let mut records: Value = serde_json::from_str(&layers.1).unwrap();
    let nnz = records[0]["nnz"].as_u64().unwrap();
    records[0]["nnz"] = json!(nnz + 1);
    layers.1 = records.to_string();
    fs::write(
        sandbox.path("nnz.safetensors"),
        put_together(&entries, &altered),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["nnz.safetensors"], 1);
    let expected = format!(
        "FAIL  fc.weight  density: the mask holds {nnz} ones, the record says nnz = {}",
        nnz + 1
    );
    assert!(out.contains(&expected), "{expected}\n{out}");

    // A key removed, another malformed.
    let mut broken: Vec<(String, String)> = metadata
        .iter()
        .filter(|(k, _)| k != "eoi.seed")
        .cloned()
        .collect();
    for (k, v) in &mut broken {
        if k == "eoi.stream_version" {
            *v = "one".into();
        }
    }
    fs::write(
        sandbox.path("keys.safetensors"),
        put_together(&entries, &broken),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["keys.safetensors"], 1);
    assert!(
        out.contains("FAIL  metadata key \"eoi.seed\" is missing"),
        "{out}"
    );
    assert!(
        out.contains("FAIL  metadata key \"eoi.stream_version\" is \"one\", not a whole number"),
        "{out}"
    );

    // No metadata at all: not eoi's, but the masks are still checked.
    fs::write(
        sandbox.path("bare.safetensors"),
        put_together(&entries, &[]),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["bare.safetensors", "--regenerate"], 1);
    assert!(out.contains("the file has no __metadata__"), "{out}");
    assert!(
        out.contains("cannot regenerate: the metadata lacks the spec or the seed"),
        "{out}"
    );
    assert!(out.contains("0 of 4 layers fail"), "{out}");
}

#[test]
fn an_extra_tensor_is_reported() {
    let sandbox = Sandbox::new();
    let bytes = sandbox.model();
    let (mut entries, metadata) = take_apart(&bytes);
    entries.push(Entry {
        name: "smuggled".into(),
        dtype: "F32".into(),
        shape: vec![2],
        data: f32_bytes(&[1.0, 2.0]),
    });
    fs::write(
        sandbox.path("x.safetensors"),
        put_together(&entries, &metadata),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["x.safetensors"], 1);
    assert!(
        out.contains("FAIL  tensor \"smuggled\" is not a recorded layer or its mask"),
        "{out}"
    );
}

#[test]
fn other_layouts_and_names_are_named_not_misreported() {
    let sandbox = Sandbox::new();
    sandbox.generate("flax.safetensors", &["--layout", "flax"]);
    let (out, _) = verify(&sandbox, &["flax.safetensors"], 1);
    assert!(
        out.contains("FAIL  the file was written with layout \"flax\"; verify reads only the default layout (\"torch\") so far"),
        "{out}"
    );
    sandbox.generate("prune", &["--names", "torch-prune", "--format", "npy"]);
    let (out, _) = verify(&sandbox, &["prune"], 1);
    assert!(
        out.contains("FAIL  the file was written with names \"torch-prune\""),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// verify --regenerate

#[test]
fn regeneration_names_a_weight_nudged_by_one_ulp() {
    let sandbox = Sandbox::new();
    let mut bytes = sandbox.model();
    let weight = data_range(&bytes, "square.weight");
    let values = f32s(&bytes, weight.clone());
    // The smallest nonzero weight, one ulp up: far inside the orthogonality tolerance.
    let k = (0..values.len())
        .filter(|&k| values[k] != 0.0)
        .min_by(|&a, &b| values[a].abs().total_cmp(&values[b].abs()))
        .unwrap();
    let nudged = f32::from_bits(values[k].to_bits() + 1);
    set_f32(&mut bytes, &weight, k, nudged);
    fs::write(sandbox.path("model.safetensors"), &bytes).unwrap();

    let (out, _) = verify(&sandbox, &["model.safetensors"], 0);
    assert!(out.contains("ok: 4 layers pass every check"), "{out}");

    let (out, _) = verify(&sandbox, &["model.safetensors", "--regenerate"], 1);
    let expected = format!(
        "FAIL  square.weight  regenerate: 1 of 144 elements differ, first at ({}, {})",
        k / 12,
        k % 12
    );
    assert!(out.contains(&expected), "{expected}\n{out}");
    assert_eq!(out.matches("FAIL  ").count(), 1, "{out}");

    let (out, _) = verify(
        &sandbox,
        &["model.safetensors", "--regenerate", "--json"],
        1,
    );
    let report = parse_json(&out);
    assert_eq!(report["passed"], false);
    assert_eq!(report["regenerate"]["passed"], false);
    assert_eq!(report["regenerate"]["compared"], 8);
    assert_eq!(
        report["regenerate"]["differences"][0]["tensor"],
        "square.weight"
    );
    assert!(
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["passed"] == true)
    );
}

#[test]
fn regeneration_catches_a_flipped_mask_bit_in_npy() {
    let sandbox = Sandbox::new();
    sandbox.generate("model", &["--format", "npy"]);
    let path = sandbox.path("model/fc.weight_mask.npy");
    let mut bytes = fs::read(&path).unwrap();
    // Turn a 0 into a 1: a trainable position eoi did not choose; every other check holds
    // except the recorded nnz.
    let header = npy_data_start(&bytes);
    let k = bytes[header..].iter().position(|&b| b == 0).unwrap();
    bytes[header + k] = 1;
    fs::write(&path, &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["model", "--regenerate"], 1);
    assert!(
        out.contains("FAIL  fc.weight  density: the mask holds"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "FAIL  fc.weight_mask  regenerate: 1 of 384 elements differ, first at ({}, {})",
            k / 24,
            k % 24
        )),
        "{out}"
    );
}

#[test]
fn regeneration_says_when_another_major_version_made_the_file() {
    let sandbox = Sandbox::new();
    let bytes = sandbox.model();
    let (entries, mut metadata) = take_apart(&bytes);
    for (k, v) in &mut metadata {
        if k == "eoi.version" {
            *v = "7.0.0".into();
        }
    }
    fs::write(
        sandbox.path("old.safetensors"),
        put_together(&entries, &metadata),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["old.safetensors", "--regenerate"], 0);
    assert!(
        out.contains("note: the file was made by eoi 7.0.0, another major version than this eoi"),
        "{out}"
    );
}

#[test]
fn regeneration_does_not_trust_a_forged_spec_with_a_huge_layer() {
    // Found while fuzzing verify: the embedded spec is the file's claim, not the file. A 1e6 x
    // 1e6 layer (8 TB to generate) must be reported as absent from the file, not generated.
    let sandbox = Sandbox::new();
    let bytes = sandbox.model();
    let (entries, mut metadata) = take_apart(&bytes);
    for (k, v) in &mut metadata {
        if k == "eoi.spec" {
            assert!(v.contains("shape = [20, 8]"));
            *v = v.replace("shape = [20, 8]", "shape = [1000000, 1000000]");
        }
    }
    fs::write(
        sandbox.path("forged.safetensors"),
        put_together(&entries, &metadata),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["forged.safetensors", "--regenerate"], 1);
    assert!(
        out.contains(
            "FAIL  tall.weight  regenerate: the file's shape is [20, 8], the spec's [1000000, 1000000]"
        ),
        "{out}"
    );
    assert!(
        out.contains("FAIL  tall.weight_mask  regenerate: the file holds [20, 8] bool"),
        "{out}"
    );
    // The other layers are still generated and compared bit for bit.
    assert!(!out.contains("FAIL  fc.weight"), "{out}");
    assert!(out.contains(", 2 regeneration differences"), "{out}");
}

// ---------------------------------------------------------------------------------------
// Unreadable input: exit 2 with the reason, for verify and inspect alike

/// Runs verify and inspect on `file` (written into the sandbox) and requires exit 2 and
/// `message` on standard error.
fn refused(sandbox: &Sandbox, name: &str, bytes: &[u8], message: &str) {
    fs::write(sandbox.path(name), bytes).unwrap();
    for command in ["verify", "inspect"] {
        let assert = sandbox.eoi(&[command, name]).code(2);
        let err = stderr_of(&assert);
        assert!(err.starts_with("error: "), "{command} {name}: {err}");
        assert!(
            err.contains(message),
            "{command} {name}: expected {message:?} in\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(stdout_of(&assert).is_empty());
    }
}

#[test]
fn truncated_files_are_unreadable() {
    let sandbox = Sandbox::new();
    let bytes = sandbox.model();
    refused(
        &sandbox,
        "short.safetensors",
        &bytes[..bytes.len() - 10],
        "(truncated, or a forged header)",
    );
    refused(
        &sandbox,
        "header.safetensors",
        &bytes[..100],
        "only 92 follow the length (the file is truncated",
    );
    refused(
        &sandbox,
        "tiny.safetensors",
        &bytes[..5],
        "too short for a safetensors file",
    );
}

#[test]
fn forged_headers_are_refused_clearly() {
    let sandbox = Sandbox::new();
    let tensor = |name: &str, dtype: &str, shape: &str, offsets: &str| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}"#)
    };
    let one = |entry: String| format!("{{{entry}}}").into_bytes();

    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    refused(
        &sandbox,
        "huge.safetensors",
        &huge,
        "the header length 1152921504606846976 exceeds the limit of 100000000 bytes",
    );
    refused(
        &sandbox,
        "past.safetensors",
        &raw_file(&one(tensor("w", "F32", "[4]", "[0,16]")), &[0; 8]),
        "tensor \"w\" ends at byte 16 of the data, but the file holds only 8 bytes",
    );
    let overlapping = format!(
        "{{{},{}}}",
        tensor("a", "F32", "[2]", "[0,8]"),
        tensor("b", "F32", "[2]", "[4,12]")
    );
    refused(
        &sandbox,
        "overlap.safetensors",
        &raw_file(overlapping.as_bytes(), &[0; 12]),
        "tensors \"a\" and \"b\" overlap",
    );
    refused(
        &sandbox,
        "overflow.safetensors",
        &raw_file(
            &one(tensor(
                "w",
                "F32",
                "[4294967296,4294967296,4294967296]",
                "[0,4]",
            )),
            &[0; 4],
        ),
        "tensor \"w\" has shape [4294967296, 4294967296, 4294967296], whose element count overflows",
    );
    refused(
        &sandbox,
        "dtype.safetensors",
        &raw_file(&one(tensor("w", "F128", "[1]", "[0,16]")), &[0; 16]),
        "tensor \"w\" has unknown or unsupported dtype \"F128\"",
    );
    let mut name = br#"{"w"#.to_vec();
    name.extend([0xc3, 0x28]);
    name.extend(br#"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#);
    refused(
        &sandbox,
        "utf8.safetensors",
        &raw_file(&name, &[0]),
        "the header is not valid UTF-8 at byte 3",
    );
    refused(
        &sandbox,
        "gap.safetensors",
        &raw_file(&one(tensor("w", "U8", "[1]", "[0,1]")), &[0; 5]),
        "bytes 1 to 5 of the data belong to no tensor",
    );
}

#[test]
fn missing_inputs_and_bad_npy_files_are_unreadable() {
    let sandbox = Sandbox::new();
    for command in ["verify", "inspect"] {
        let err = stderr_of(&sandbox.eoi(&[command, "nothing.safetensors"]).code(2));
        assert!(err.contains("cannot read 'nothing.safetensors'"), "{err}");
    }
    sandbox.generate("model", &["--format", "npy"]);
    let path = sandbox.path("model/fc.weight.npy");
    let bytes = fs::read(&path).unwrap();
    let header = npy_data_start(&bytes);
    let from = b"'fortran_order': False";
    let at = bytes[..header]
        .windows(from.len())
        .position(|w| w == from)
        .expect("a C-order header");
    let mut tampered = bytes.clone();
    tampered[at..at + from.len()].copy_from_slice(b"'fortran_order': True ");
    fs::write(&path, &tampered).unwrap();
    let err = stderr_of(&sandbox.eoi(&["verify", "model"]).code(2));
    assert!(
        err.contains("fc.weight.npy': the array is stored in Fortran order (fortran_order: True)"),
        "{err}"
    );
    fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let err = stderr_of(&sandbox.eoi(&["inspect", "model"]).code(2));
    assert!(
        err.contains("the header describes 1536 bytes of data but the file holds 1532"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// inspect

#[test]
fn inspect_finds_the_gain_in_every_singular_value_of_an_eoi_layer() {
    let sandbox = Sandbox::new();
    sandbox.model();
    let assert = sandbox
        .eoi(&["inspect", "model.safetensors", "--json"])
        .success();
    assert!(stderr_of(&assert).is_empty());
    let report = parse_json(&stdout_of(&assert));
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 8);
    for t in tensors {
        for key in [
            "name",
            "shape",
            "dtype",
            "density",
            "orthogonality_error",
            "singular_min",
            "singular_max",
        ] {
            assert!(t.get(key).is_some(), "no {key} in {t}");
        }
    }
    let find = |name: &str| {
        tensors
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    // Linear layers, and the conv: its centre matrix is wide (8 x 16), so the rows of its
    // (out, in*K) matrix are orthonormal too.
    for (name, gain) in [
        ("fc.weight", TANH),
        ("tall.weight", TANH),
        ("square.weight", 0.5),
        ("conv.weight", TANH),
    ] {
        let t = find(name);
        let (lo, hi) = (
            t["singular_min"].as_f64().unwrap(),
            t["singular_max"].as_f64().unwrap(),
        );
        assert!((lo / gain - 1.0).abs() < 1e-6, "{name}: {lo}");
        assert!((hi / gain - 1.0).abs() < 1e-6, "{name}: {hi}");
        assert!(t["orthogonality_error"].as_f64().unwrap() < 1e-6, "{t}");
        assert_eq!(t["mask"], format!("{name}_mask"));
        let mask = find(&format!("{name}_mask"));
        assert_eq!(mask["dtype"], "bool");
        assert_eq!(mask["mask_of"], name);
        assert_eq!(mask["singular_min"], Value::Null);
    }
    // The conv's values sit at the centre tap only; its mask is topped up beyond them.
    let conv = find("conv.weight");
    let mask = find("conv.weight_mask");
    assert!(conv["density"].as_f64().unwrap() < mask["density"].as_f64().unwrap());
    assert_eq!(
        mask["nnz"].as_u64().unwrap(),
        (0.25f64 * 1152.0).ceil() as u64
    );
    assert_eq!(conv["matrix"], json!([8, 144]));
}

#[test]
fn inspect_reads_a_dense_checkpoint_without_masks() {
    let sandbox = Sandbox::new();
    // A random dense matrix, a bias, a conv kernel, an integer counter, an orthogonal matrix.
    let (r, s) = (0.6f32, 0.8f32);
    let entries = vec![
        Entry {
            name: "fc.weight".into(),
            dtype: "F32".into(),
            shape: vec![32, 64],
            data: f32_bytes(&noise(32 * 64, 1)),
        },
        Entry {
            name: "fc.bias".into(),
            dtype: "F32".into(),
            shape: vec![32],
            data: f32_bytes(&noise(32, 2)),
        },
        Entry {
            name: "conv.weight".into(),
            dtype: "F32".into(),
            shape: vec![8, 4, 3, 3],
            data: f32_bytes(&noise(8 * 4 * 9, 3)),
        },
        Entry {
            name: "bn.num_batches_tracked".into(),
            dtype: "I64".into(),
            shape: vec![],
            data: 7i64.to_le_bytes().to_vec(),
        },
        Entry {
            name: "rot.weight".into(),
            dtype: "F32".into(),
            shape: vec![2, 2],
            data: f32_bytes(&[3.0 * r, 3.0 * s, -3.0 * s, 3.0 * r]),
        },
    ];
    fs::write(
        sandbox.path("dense.safetensors"),
        put_together(&entries, &[]),
    )
    .unwrap();
    let assert = sandbox
        .eoi(&["inspect", "dense.safetensors", "--json"])
        .success();
    let report = parse_json(&stdout_of(&assert));
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 5);
    let find = |name: &str| tensors.iter().find(|t| t["name"] == name).unwrap();

    let fc = find("fc.weight");
    assert_eq!(fc["density"], 1.0);
    assert_eq!(fc["nnz"], 32 * 64);
    assert_eq!(fc["mask"], Value::Null);
    assert_eq!(fc["row_nnz"], json!({"min": 64, "mean": 64.0, "max": 64}));
    let (lo, hi) = (
        fc["singular_min"].as_f64().unwrap(),
        fc["singular_max"].as_f64().unwrap(),
    );
    assert!(0.0 < lo && lo < hi, "{fc}");
    assert!(fc["orthogonality_error"].as_f64().unwrap() > 0.01, "{fc}");

    let bias = find("fc.bias");
    assert_eq!(bias["density"], 1.0);
    assert_eq!(bias["singular_min"], Value::Null);
    assert_eq!(bias["matrix"], Value::Null);

    assert_eq!(find("conv.weight")["matrix"], json!([8, 36]));
    let counter = find("bn.num_batches_tracked");
    assert_eq!(
        (counter["nnz"].clone(), counter["dtype"].clone()),
        (json!(1), json!("i64"))
    );

    // A rotation times 3: orthogonal whatever its gain, both singular values 3.
    let rot = find("rot.weight");
    assert!(rot["orthogonality_error"].as_f64().unwrap() < 1e-6, "{rot}");
    assert!((rot["gain"].as_f64().unwrap() - 3.0).abs() < 1e-6, "{rot}");
    assert!(
        (rot["singular_min"].as_f64().unwrap() - 3.0).abs() < 1e-6,
        "{rot}"
    );

    let table = stdout_of(&sandbox.eoi(&["inspect", "dense.safetensors"]).success());
    assert!(table.starts_with("tensor"), "{table}");
    assert!(table.contains("fc.bias"), "{table}");
    assert!(table.contains("5 tensors (0 masks)"), "{table}");
}

/// The Python interpreter of `scripts/test` (with numpy and safetensors).
fn python() -> String {
    std::env::var("EOI_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn inspect_reads_a_checkpoint_written_by_python() {
    let sandbox = Sandbox::new();
    let script = r#"
import sys, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
save_file({
    "layer.weight": np.ascontiguousarray(rng.standard_normal((48, 16)).astype(np.float32)),
    "layer.bias": np.zeros(48, dtype=np.float32),
    "ortho.weight": np.ascontiguousarray((2.0 * q).astype(np.float64)),
    "half.weight": np.ascontiguousarray(np.eye(8, dtype=np.float16)),
}, sys.argv[1], metadata={"format": "pt"})
np.save(sys.argv[2], np.ascontiguousarray(q[:8, :].astype(np.float32)))
"#;
    let out = StdCommand::new(python())
        .args(["-c", script])
        .arg(sandbox.path("py.safetensors"))
        .arg(sandbox.path("rows.npy"))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "this test needs numpy and safetensors (run scripts/test): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = parse_json(&stdout_of(
        &sandbox
            .eoi(&["inspect", "py.safetensors", "--json"])
            .success(),
    ));
    let tensors = report["tensors"].as_array().unwrap();
    let find = |name: &str| tensors.iter().find(|t| t["name"] == name).unwrap();
    assert_eq!(find("layer.bias")["density"], 0.0);
    assert_eq!(find("layer.weight")["matrix"], json!([48, 16]));
    let ortho = find("ortho.weight");
    assert_eq!(ortho["dtype"], "f64");
    assert!(
        (ortho["singular_min"].as_f64().unwrap() - 2.0).abs() < 1e-12,
        "{ortho}"
    );
    assert!(
        (ortho["singular_max"].as_f64().unwrap() - 2.0).abs() < 1e-12,
        "{ortho}"
    );
    let half = find("half.weight");
    assert_eq!(
        (half["dtype"].clone(), half["nnz"].clone()),
        (json!("f16"), json!(8))
    );
    assert_eq!(half["orthogonality_error"], 0.0);

    // One .npy file: a tensor named after the file.
    let rows = parse_json(&stdout_of(
        &sandbox.eoi(&["inspect", "rows.npy", "--json"]).success(),
    ));
    assert_eq!(rows["format"], "npy");
    let t = &rows["tensors"][0];
    assert_eq!(
        (t["name"].clone(), t["shape"].clone()),
        (json!("rows"), json!([8, 64]))
    );
    assert!(t["orthogonality_error"].as_f64().unwrap() < 1e-6, "{t}");
}

#[test]
fn help_documents_the_exit_codes_and_examples() {
    let sandbox = Sandbox::new();
    let help = stdout_of(&sandbox.eoi(&["verify", "--help"]).success());
    for needle in [
        "Exit status:",
        "2  the input cannot be read",
        "--regenerate",
        "Examples:",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let help = stdout_of(&sandbox.eoi(&["inspect", "--help"]).success());
    assert!(
        help.contains("Examples:") && help.contains("--json"),
        "{help}"
    );
}

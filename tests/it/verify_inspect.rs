//! End-to-end tests of `eoi verify` and `eoi inspect` on real files: artifacts written by the
//! binary, then tampered with here (a weight changed inside or outside the mask, an off-centre
//! conv tap, a dropped mask, altered metadata, truncation, forged headers), and dense
//! checkpoints written here or by Python's `safetensors`. Files are taken apart and rebuilt
//! with the `safetensors` crate and a small writer of our own, never with eoi's reader.

use std::fs;
use std::ops::Range;

use serde_json::{Value, json};

use crate::util::{
    Entry, Sandbox, data_range, f32_bytes, f32s, json, npy_data_start, raw_file, run_python_code,
    safetensors_bytes, stderr, stdout, take_apart,
};

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

/// Generates MODEL (with extra `args`) to `out` in the sandbox.
fn generate(sandbox: &Sandbox, out: &str, args: &[&str]) {
    let mut all = vec!["-q"];
    all.extend_from_slice(args);
    sandbox.generate(MODEL, out, &all).success();
}

/// Generates MODEL to `model.safetensors` and returns its bytes.
fn model(sandbox: &Sandbox) -> Vec<u8> {
    generate(sandbox, "model.safetensors", &[]);
    sandbox.read("model.safetensors")
}

/// Runs `eoi verify args...` and requires exit code `code`; returns stdout and stderr.
fn verify(sandbox: &Sandbox, args: &[&str], code: i32) -> (String, String) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let assert = sandbox.eoi(&all).code(code);
    (stdout(&assert), stderr(&assert))
}

// ---------------------------------------------------------------------------------------
// Taking safetensors files apart and putting them together, independently of eoi

fn set_f32(bytes: &mut [u8], range: &Range<usize>, index: usize, value: f32) {
    let at = range.start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// A safetensors file of our own writer, header padded as the crate pads it, with
/// `metadata` (if any) as `__metadata__`.
fn put_together(entries: &[Entry], metadata: &[(String, String)]) -> Vec<u8> {
    let metadata = (!metadata.is_empty()).then(|| {
        Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        )
    });
    safetensors_bytes(entries, metadata.as_ref(), true)
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

// ---------------------------------------------------------------------------------------
// verify: fresh artifacts

#[test]
fn fresh_artifacts_verify_in_both_formats() {
    let sandbox = Sandbox::new();
    generate(&sandbox, "model.safetensors", &[]);
    generate(&sandbox, "model64.safetensors", &["--dtype", "f64"]);
    generate(&sandbox, "model_npy", &["--format", "npy"]);
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
    model(&sandbox);
    let (out, err) = verify(&sandbox, &["model.safetensors", "--json"], 0);
    assert!(err.is_empty(), "{err}");
    let report = json(&out);
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
    let mut bytes = model(&sandbox);
    let weight = data_range(&bytes, "fc.weight");
    let mask = data_range(&bytes, "fc.weight_mask");
    let values = f32s(&bytes[weight.clone()]);
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
    let mut bytes = model(&sandbox);
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
    let mut bytes = model(&sandbox);
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
    let bytes = model(&sandbox);
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
    let bytes = model(&sandbox);
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
    let bytes = model(&sandbox);
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

// ---------------------------------------------------------------------------------------
// verify --regenerate

#[test]
fn regeneration_names_a_weight_nudged_by_one_ulp() {
    let sandbox = Sandbox::new();
    let mut bytes = model(&sandbox);
    let weight = data_range(&bytes, "square.weight");
    let values = f32s(&bytes[weight.clone()]);
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
    let report = json(&out);
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
    generate(&sandbox, "model", &["--format", "npy"]);
    let path = sandbox.path("model/fc.weight_mask.npy");
    let mut bytes = fs::read(&path).unwrap();
    // Turn a 0 into a 1: a trainable position eoi did not choose; every other check holds
    // except the recorded nnz.
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
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
    let bytes = model(&sandbox);
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
    let bytes = model(&sandbox);
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
        let err = stderr(&assert);
        assert!(err.starts_with("error: "), "{command} {name}: {err}");
        assert!(
            err.contains(message),
            "{command} {name}: expected {message:?} in\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(stdout(&assert).is_empty());
    }
}

#[test]
fn truncated_files_are_unreadable() {
    let sandbox = Sandbox::new();
    let bytes = model(&sandbox);
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
        let err = stderr(&sandbox.eoi(&[command, "nothing.safetensors"]).code(2));
        assert!(err.contains("cannot read 'nothing.safetensors'"), "{err}");
    }
    generate(&sandbox, "model", &["--format", "npy"]);
    let path = sandbox.path("model/fc.weight.npy");
    let bytes = fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header = npy_data_start(&bytes);
    let from = b"'fortran_order': False";
    let at = bytes[..header]
        .windows(from.len())
        .position(|w| w == from)
        .expect("a C-order header");
    let mut tampered = bytes.clone();
    tampered[at..at + from.len()].copy_from_slice(b"'fortran_order': True ");
    fs::write(&path, &tampered).unwrap();
    let err = stderr(&sandbox.eoi(&["verify", "model"]).code(2));
    assert!(
        err.contains("fc.weight.npy': the array is stored in Fortran order (fortran_order: True)"),
        "{err}"
    );
    fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let err = stderr(&sandbox.eoi(&["inspect", "model"]).code(2));
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
    model(&sandbox);
    let assert = sandbox
        .eoi(&["inspect", "model.safetensors", "--json"])
        .success();
    assert!(stderr(&assert).is_empty());
    let report = json(stdout(&assert));
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
    let report = json(stdout(&assert));
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

    let table = stdout(&sandbox.eoi(&["inspect", "dense.safetensors"]).success());
    assert!(table.starts_with("tensor"), "{table}");
    assert!(table.contains("fc.bias"), "{table}");
    assert!(table.contains("5 tensors (0 masks)"), "{table}");
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
    run_python_code(
        script,
        [sandbox.path("py.safetensors"), sandbox.path("rows.npy")],
    );
    let report = json(stdout(
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
    let rows = json(stdout(
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
    let help = stdout(&sandbox.eoi(&["verify", "--help"]).success());
    for needle in [
        "Exit status:",
        "2  the input cannot be read",
        "--regenerate",
        "Examples:",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let help = stdout(&sandbox.eoi(&["inspect", "--help"]).success());
    assert!(
        help.contains("Examples:") && help.contains("--json"),
        "{help}"
    );
}

// ---------------------------------------------------------------------------------------
// Every output eoi writes: shards, flax layout, torch-prune names, --base

/// MODEL in shards of at most 2000 bytes: fc (1920 bytes of weight and mask) alone, tall
/// and square (800 + 720) together, conv (5760) alone.
const SHARD_SIZE: &str = "2000";

fn shard(k: usize) -> String {
    format!("sh/model-{k:05}-of-00003.safetensors")
}

fn layer_names(report: &Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["name"].as_str().expect("a name").to_string())
        .collect()
}

#[test]
fn a_sharded_output_verifies_as_one_checkpoint() {
    let sandbox = Sandbox::new();
    generate(&sandbox, "sh", &["--max-shard-size", SHARD_SIZE]);
    for whole in ["sh", "sh/model.safetensors.index.json"] {
        let (out, _) = verify(&sandbox, &[whole, "--regenerate"], 0);
        assert!(
            out.starts_with(&format!("{whole} (safetensors, 3 shards): made by eoi")),
            "{out}"
        );
        assert!(
            out.contains("regenerated 8 tensors from the embedded spec and seed: bit-identical"),
            "{out}"
        );
        assert!(out.contains("ok: 4 layers pass every check"), "{out}");
        assert!(!out.contains("FAIL") && !out.contains("note"), "{out}");
    }
    let json = sandbox.json(&["verify", "sh"], 0);
    assert_eq!(json["shards"], 3);
    assert_eq!(
        layer_names(&json),
        ["fc.weight", "tall.weight", "square.weight", "conv.weight"]
    );

    // One shard on its own: its two layers, and it says that is all.
    let (out, _) = verify(&sandbox, &[&shard(2)], 0);
    assert!(
        out.contains("note: this file is shard 2 of 3: only the layers it holds are checked"),
        "{out}"
    );
    assert!(out.contains("ok: 2 layers pass every check"), "{out}");
    let (out, _) = verify(&sandbox, &[&shard(2), "--regenerate"], 0);
    assert!(
        out.contains("note: shard 2 of 3: only the 2 layers it holds are regenerated"),
        "{out}"
    );
    assert!(
        out.contains("regenerated 4 tensors from the embedded spec and seed: bit-identical"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    let json = sandbox.json(&["verify", &shard(2)], 0);
    assert_eq!(json["recorded"]["shard"], "2/3");
    assert_eq!(json["shards"], Value::Null);
    assert_eq!(layer_names(&json), ["tall.weight", "square.weight"]);
}

#[test]
fn a_tampered_shard_fails_its_directory() {
    let sandbox = Sandbox::new();
    generate(&sandbox, "sh", &["--max-shard-size", SHARD_SIZE]);
    let path = sandbox.path(&shard(3));
    let mut bytes = fs::read(&path).unwrap();
    let weight = data_range(&bytes, "conv.weight");
    let mask = data_range(&bytes, "conv.weight_mask");
    let k = (0..8 * 16 * 9)
        .find(|&k| bytes[mask.start + k] == 0)
        .expect("a position outside the mask");
    set_f32(&mut bytes, &weight, k, 0.5);
    fs::write(&path, &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["sh"], 1);
    assert!(
        out.contains("FAIL  conv.weight  mask: 1 nonzero weights outside the mask"),
        "{out}"
    );
    assert!(out.contains("FAILED: 1 of 4 layers fail"), "{out}");
    verify(&sandbox, &[&shard(3)], 1);
    verify(&sandbox, &[&shard(1)], 0);

    // One ulp in shard 2: only regeneration sees it, from the directory or the shard.
    let path = sandbox.path(&shard(2));
    let mut bytes = fs::read(&path).unwrap();
    let weight = data_range(&bytes, "square.weight");
    let values = f32s(&bytes[weight.clone()]);
    let k = (0..values.len()).find(|&k| values[k] != 0.0).unwrap();
    set_f32(
        &mut bytes,
        &weight,
        k,
        f32::from_bits(values[k].to_bits() + 1),
    );
    fs::write(&path, &bytes).unwrap();
    let expected = format!(
        "FAIL  square.weight  regenerate: 1 of 144 elements differ, first at ({}, {})",
        k / 12,
        k % 12
    );
    for target in ["sh", &shard(2)] {
        let (out, _) = verify(&sandbox, &[target, "--regenerate"], 1);
        assert!(out.contains(&expected), "{target}: {expected}\n{out}");
    }

    // A shard of another run, and a shard in the wrong place.
    let (entries, metadata) = take_apart(&bytes);
    let with = |key: &str, value: &str| {
        let mut changed = metadata.clone();
        for (k, v) in &mut changed {
            if k == key {
                *v = value.into();
            }
        }
        fs::write(&path, put_together(&entries, &changed)).unwrap();
        verify(&sandbox, &["sh"], 1).0
    };
    let out = with("eoi.seed", "12");
    assert!(
        out.contains(
            "FAIL  shards \"model-00001-of-00003.safetensors\" and \"model-00002-of-00003.safetensors\" record different eoi.seed (11 and 12): the shards were not written by one run"
        ),
        "{out}"
    );
    let out = with("eoi.shard", "3/3");
    assert!(
        out.contains(
            "FAIL  shard \"model-00002-of-00003.safetensors\" records eoi.shard 3/3, but it is file 2 of the 3 the index lists"
        ),
        "{out}"
    );
}

/// Each tensor of an inspect report by name.
fn tensors_by_name(report: &Value) -> std::collections::BTreeMap<String, Value> {
    report["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| (t["name"].as_str().expect("a name").to_string(), t.clone()))
        .collect()
}

#[test]
fn inspect_reads_every_shard_as_the_single_file() {
    let sandbox = Sandbox::new();
    model(&sandbox);
    generate(&sandbox, "sh", &["--max-shard-size", SHARD_SIZE]);
    let whole = sandbox.json(&["inspect", "model.safetensors"], 0);
    assert_eq!(whole["shards"], Value::Null);
    for sharded in ["sh", "sh/model.safetensors.index.json"] {
        let json = sandbox.json(&["inspect", sharded], 0);
        assert_eq!(json["shards"], 3);
        assert_eq!(json["format"], "safetensors");
        assert_eq!(tensors_by_name(&json), tensors_by_name(&whole), "{sharded}");
    }
    let text = stdout(&sandbox.eoi(&["inspect", "sh"]).success());
    assert!(
        text.contains("8 tensors (4 masks), 3,680 elements in 3 shards"),
        "{text}"
    );
    let one = sandbox.json(&["inspect", &shard(2)], 0);
    assert_eq!(one["tensors"].as_array().unwrap().len(), 4);
}

#[test]
fn a_hugging_face_sharded_checkpoint_reads_as_one() {
    let sandbox = Sandbox::new();
    // As `save_pretrained` writes them: shards with {"format": "pt"} and an index; and an
    // unsharded directory holding model.safetensors.
    let script = r#"
import json, os, sys
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
shards = {
    "model-00001-of-00002.safetensors": {
        "embed.weight": rng.standard_normal((10, 32)).astype(np.float32),
        "ortho.weight": (2.0 * q).astype(np.float32),
    },
    "model-00002-of-00002.safetensors": {
        "ortho.weight_mask": np.ones((32, 32), dtype=bool),
        "head.bias": np.zeros(10, dtype=np.float32),
    },
}
os.makedirs(sys.argv[1])
weight_map, total = {}, 0
for name, tensors in shards.items():
    save_file(tensors, os.path.join(sys.argv[1], name), metadata={"format": "pt"})
    for key, value in tensors.items():
        weight_map[key] = name
        total += value.nbytes
with open(os.path.join(sys.argv[1], "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
os.makedirs(sys.argv[2])
save_file({"ortho.weight": (2.0 * q).astype(np.float32)},
          os.path.join(sys.argv[2], "model.safetensors"), metadata={"format": "pt"})
"#;
    run_python_code(script, [sandbox.path("hf"), sandbox.path("single")]);
    let json = sandbox.json(&["inspect", "hf"], 0);
    assert_eq!(json["shards"], 2);
    let tensors = tensors_by_name(&json);
    assert_eq!(tensors.len(), 4);
    let ortho = &tensors["ortho.weight"];
    // Paired with its mask across shards; a scaled orthogonal matrix.
    assert_eq!(ortho["mask"], "ortho.weight_mask");
    for key in ["singular_min", "singular_max"] {
        assert!((ortho[key].as_f64().unwrap() - 2.0).abs() < 1e-5, "{ortho}");
    }
    let single = sandbox.json(&["inspect", "single"], 0);
    assert_eq!(single["tensors"][0]["name"], "ortho.weight");

    // Not eoi's: verify says so once (not once per shard), and still checks the masked
    // layer it finds across the shards.
    let (out, _) = verify(&sandbox, &["hf"], 1);
    assert_eq!(
        out.matches("FAIL  metadata key \"eoi.layers\" is missing")
            .count(),
        1,
        "{out}"
    );
    let json = sandbox.json(&["verify", "hf"], 1);
    assert_eq!(layer_names(&json), ["ortho.weight"]);
    assert_eq!(json["layers"][0]["passed"], true, "{json}");
}

#[test]
fn flax_layout_files_get_the_verdicts_of_the_torch_layout() {
    let sandbox = Sandbox::new();
    generate(&sandbox, "torch.safetensors", &[]);
    generate(&sandbox, "flax.safetensors", &["--layout", "flax"]);
    generate(
        &sandbox,
        "flax_npy",
        &["--layout", "flax", "--format", "npy"],
    );
    let torch = sandbox.json(&["verify", "torch.safetensors"], 0);
    assert_eq!(torch["layout"], "torch");
    for flax in ["flax.safetensors", "flax_npy"] {
        let (out, _) = verify(&sandbox, &[flax, "--regenerate"], 0);
        assert!(out.contains("flax layout): made by eoi"), "{out}");
        assert!(
            out.contains("regenerated 8 tensors from the embedded spec and seed: bit-identical"),
            "{out}"
        );
        assert!(out.contains("ok: 4 layers pass every check"), "{out}");
        assert!(!out.contains("FAIL"), "{out}");
        let json = sandbox.json(&["verify", flax], 0);
        assert_eq!(json["layout"], "flax");
        assert_eq!(json["recorded"]["layout"], "flax");
        let (ours, theirs) = (
            json["layers"].as_array().unwrap(),
            torch["layers"].as_array().unwrap(),
        );
        assert_eq!(ours.len(), 4);
        for (a, b) in ours.iter().zip(theirs) {
            for key in [
                "name",
                "kind",
                "scheme",
                "dtype",
                "nnz",
                "density",
                "gain",
                "orthogonality_error",
                "tolerance",
                "passed",
            ] {
                assert_eq!(a[key], b[key], "{flax} {key}: {a} vs {b}");
            }
        }
        // Shapes as stored: Dense kernels (in, out), conv kernels (k..., in, out).
        assert_eq!(ours[0]["shape"], json!([24, 16]));
        assert_eq!(ours[3]["shape"], json!([3, 3, 16, 8]));
    }

    // inspect measures each matrix as the layer applies it: the torch file's numbers.
    let torch = tensors_by_name(&sandbox.json(&["inspect", "torch.safetensors"], 0));
    let json = sandbox.json(&["inspect", "flax.safetensors"], 0);
    assert_eq!(json["layout"], "flax");
    let flax = tensors_by_name(&json);
    assert_eq!(flax.len(), 8);
    for (name, t) in &flax {
        for key in [
            "matrix",
            "nnz",
            "density",
            "mask",
            "mask_of",
            "gain",
            "orthogonality_error",
            "singular_min",
            "singular_max",
            "row_nnz",
            "col_nnz",
        ] {
            assert_eq!(t[key], torch[name][key], "{name} {key}");
        }
    }
    assert_eq!(flax["conv.weight"]["matrix"], json!([8, 144]));
    assert_eq!(flax["conv.weight"]["shape"], json!([3, 3, 16, 8]));
    let text = stdout(&sandbox.eoi(&["inspect", "flax.safetensors"]).success());
    assert!(
        text.contains("flax layout: kernels stored (in, out)"),
        "{text}"
    );
}

#[test]
fn a_tampered_flax_file_fails_at_its_stored_position() {
    let sandbox = Sandbox::new();
    generate(&sandbox, "flax.safetensors", &["--layout", "flax"]);
    let clean = fs::read(sandbox.path("flax.safetensors")).unwrap();

    // Off the centre tap of the conv, stored (kh, kw, in, out) = (3, 3, 16, 8): element
    // ((kh * 3 + kw) * 16 + i) * 8 + o.
    let mut bytes = clean.clone();
    let weight = data_range(&bytes, "conv.weight");
    let mask = data_range(&bytes, "conv.weight_mask");
    let k = (0..8 * 16 * 9)
        .find(|&k| k / 128 != 4 && bytes[mask.start + k] == 1)
        .expect("a topped-up position off the centre");
    set_f32(&mut bytes, &weight, k, 1e-3);
    fs::write(sandbox.path("tap.safetensors"), &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["tap.safetensors"], 1);
    let expected = format!(
        "FAIL  conv.weight  off-centre: 1 nonzero weights off the centre tap, first at ({}, {}, {}, {})",
        k / 384,
        k / 128 % 3,
        k / 8 % 16,
        k % 8
    );
    assert!(out.contains(&expected), "{expected}\n{out}");
    assert!(!out.contains("mask:"), "inside the mask: {out}");

    // Outside the mask of the Dense kernel, stored (in, out) = (24, 16).
    let mut bytes = clean.clone();
    let weight = data_range(&bytes, "fc.weight");
    let mask = data_range(&bytes, "fc.weight_mask");
    let k = (0..24 * 16)
        .find(|&k| bytes[mask.start + k] == 0)
        .expect("a position outside the mask");
    set_f32(&mut bytes, &weight, k, 0.5);
    fs::write(sandbox.path("outside.safetensors"), &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["outside.safetensors"], 1);
    let expected = format!(
        "FAIL  fc.weight  mask: 1 nonzero weights outside the mask, first at ({}, {}) (value 5e-1)",
        k / 16,
        k % 16
    );
    assert!(out.contains(&expected), "{expected}\n{out}");

    // A weight inside the mask scaled: orthogonality breaks; regeneration names the spot.
    let mut bytes = clean;
    let weight = data_range(&bytes, "tall.weight");
    let values = f32s(&bytes[weight.clone()]);
    let k = (0..values.len())
        .find(|&k| values[k].abs() > 0.1)
        .expect("a large weight");
    set_f32(&mut bytes, &weight, k, values[k] * 1.01);
    fs::write(sandbox.path("scaled.safetensors"), &bytes).unwrap();
    let (out, _) = verify(&sandbox, &["scaled.safetensors", "--regenerate"], 1);
    assert!(
        out.contains("FAIL  tall.weight  orthogonality: max |W^T W - gain^2 I| = "),
        "{out}"
    );
    let expected = format!(
        "FAIL  tall.weight  regenerate: 1 of 160 elements differ, first at ({}, {})",
        k / 20,
        k % 20
    );
    assert!(out.contains(&expected), "{expected}\n{out}");
}

#[test]
fn inspect_reads_a_flax_checkpoint_as_its_layers_act() {
    let sandbox = Sandbox::new();
    // A Flax CNN's parameters: a conv kernel (3, 3, in 16, out 8) whose centre tap has
    // orthonormal columns, and a Dense kernel (in 24, out 16) with orthonormal columns.
    let script = r#"
import sys
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(1)
centre, _ = np.linalg.qr(rng.standard_normal((16, 8)))
dense, _ = np.linalg.qr(rng.standard_normal((24, 16)))
kernel = np.zeros((3, 3, 16, 8), dtype=np.float32)
kernel[1, 1] = centre
tensors = {
    "Conv_0.kernel": kernel,
    "Dense_0.kernel": np.ascontiguousarray(dense.astype(np.float32)),
    "Dense_0.bias": np.zeros(16, dtype=np.float32),
}
save_file(tensors, sys.argv[1], metadata={"format": "flax"})
save_file(tensors, sys.argv[2])
"#;
    run_python_code(
        script,
        [
            sandbox.path("flax.safetensors"),
            sandbox.path("unmarked.safetensors"),
        ],
    );
    let json = sandbox.json(&["inspect", "flax.safetensors"], 0);
    assert_eq!(json["layout"], "flax");
    let tensors = tensors_by_name(&json);
    for (name, matrix, row_nnz) in [
        ("Conv_0.kernel", json!([8, 144]), 16),
        ("Dense_0.kernel", json!([16, 24]), 24),
    ] {
        let t = &tensors[name];
        assert_eq!(t["matrix"], matrix, "{t}");
        assert!(t["orthogonality_error"].as_f64().unwrap() < 1e-6, "{t}");
        for key in ["singular_min", "singular_max"] {
            assert!((t[key].as_f64().unwrap() - 1.0).abs() < 1e-6, "{t}");
        }
        assert_eq!(t["row_nnz"]["min"], row_nnz, "{t}");
    }
    // Without `format: flax` nothing says the layout: read as PyTorch's, the kernel is the
    // (3, 384) matrix of its first dimension, far from orthogonal.
    let json = sandbox.json(&["inspect", "unmarked.safetensors"], 0);
    assert_eq!(json["layout"], "torch");
    let conv = &tensors_by_name(&json)["Conv_0.kernel"];
    assert_eq!(conv["matrix"], json!([3, 384]));
    assert!(
        conv["orthogonality_error"].as_f64().unwrap() > 0.5,
        "{conv}"
    );
}

#[test]
fn torch_prune_names_are_verified_under_their_names() {
    let sandbox = Sandbox::new();
    generate(&sandbox, "prune.safetensors", &["--names", "torch-prune"]);
    generate(
        &sandbox,
        "prune.npz",
        &[
            "--names",
            "torch-prune",
            "--format",
            "npz",
            "--layout",
            "flax",
        ],
    );
    for file in ["prune.safetensors", "prune.npz"] {
        let (out, _) = verify(&sandbox, &[file, "--regenerate"], 0);
        assert!(out.contains("torch-prune names): made by eoi"), "{out}");
        assert!(
            out.contains("regenerated 8 tensors from the embedded spec and seed: bit-identical"),
            "{out}"
        );
        assert!(out.contains("ok: 4 layers pass every check"), "{out}");
        assert!(!out.contains("FAIL"), "{out}");
        let json = sandbox.json(&["verify", file], 0);
        assert_eq!(json["recorded"]["names"], "torch-prune");
        assert_eq!(
            layer_names(&json),
            ["fc.weight", "tall.weight", "square.weight", "conv.weight"]
        );
    }

    // The mask is f32 (the weight's dtype), named <module>.weight_mask beside
    // <module>.weight_orig.
    let bytes = fs::read(sandbox.path("prune.safetensors")).unwrap();
    let mut tampered = bytes.clone();
    let weight = data_range(&bytes, "fc.weight_orig");
    let mask = f32s(&bytes[data_range(&bytes, "fc.weight_mask")]);
    let k = mask
        .iter()
        .position(|&m| m == 0.0)
        .expect("a zero of the mask");
    set_f32(&mut tampered, &weight, k, 0.5);
    fs::write(sandbox.path("outside.safetensors"), &tampered).unwrap();
    let (out, _) = verify(&sandbox, &["outside.safetensors"], 1);
    let expected = format!(
        "FAIL  fc.weight  mask: 1 nonzero weights outside the mask, first at ({}, {}) (value 5e-1)",
        k / 24,
        k % 24
    );
    assert!(out.contains(&expected), "{expected}\n{out}");

    let (mut entries, metadata) = take_apart(&bytes);
    entries.retain(|e| e.name != "square.weight_orig");
    fs::write(
        sandbox.path("dropped.safetensors"),
        put_together(&entries, &metadata),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["dropped.safetensors"], 1);
    assert!(
        out.contains("FAIL  square.weight  tensors: the weight \"square.weight_orig\" is missing"),
        "{out}"
    );
}

/// A base checkpoint for MODEL's layers: each at its shape in f32, and what a model holds
/// besides (a bias, BatchNorm statistics, an I64 counter).
fn base_entries() -> Vec<Entry> {
    let f32_entry = |name: &str, shape: &[usize], seed: u64| Entry {
        name: name.into(),
        dtype: "F32".into(),
        shape: shape.to_vec(),
        data: f32_bytes(&noise(shape.iter().product(), seed)),
    };
    vec![
        f32_entry("fc.weight", &[16, 24], 1),
        f32_entry("fc.bias", &[16], 2),
        f32_entry("tall.weight", &[20, 8], 3),
        f32_entry("square.weight", &[12, 12], 4),
        f32_entry("conv.weight", &[8, 16, 3, 3], 5),
        f32_entry("bn.running_mean", &[8], 6),
        Entry {
            name: "bn.num_batches_tracked".into(),
            dtype: "I64".into(),
            shape: vec![],
            data: 7i64.to_le_bytes().to_vec(),
        },
    ]
}

#[test]
fn a_base_output_lists_its_copied_tensors_and_checks_its_layers() {
    use sha2::{Digest, Sha256};
    let sandbox = Sandbox::new();
    let base = put_together(&base_entries(), &[("format".into(), "pt".into())]);
    fs::write(sandbox.path("base.safetensors"), &base).unwrap();
    generate(&sandbox, "out.safetensors", &["--base", "base.safetensors"]);
    let (out, _) = verify(&sandbox, &["out.safetensors"], 0);
    assert!(
        out.contains("note: 3 tensors were copied from the base 'base.safetensors'"),
        "{out}"
    );
    assert!(out.contains("ok: 4 layers pass every check"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    let json = sandbox.json(&["verify", "out.safetensors", "--regenerate"], 0);
    let mut copied: Vec<&str> = json["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    copied.sort_unstable();
    assert_eq!(
        copied,
        ["bn.num_batches_tracked", "bn.running_mean", "fc.bias"]
    );
    let header = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let digest: String = Sha256::digest(&base[8..header])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        json["recorded"]["base"],
        json!({"name": "base.safetensors", "sha256": digest})
    );
    assert_eq!(json["regenerate"]["passed"], true);
    assert_eq!(json["regenerate"]["compared"], 8);
    assert!(
        json["regenerate"]["notes"][0].as_str().unwrap().contains(
            "the 3 tensors copied from the base 'base.safetensors' are not compared: pass --base"
        ),
        "{json}"
    );
    // With the base, the copies are compared too.
    let with_base = [
        "out.safetensors",
        "--regenerate",
        "--base",
        "base.safetensors",
    ];
    let (out, _) = verify(&sandbox, &with_base, 0);
    assert!(
        out.contains("compared 3 copied tensors with the base: bit-identical"),
        "{out}"
    );

    // A generated layer changed: exit 1, as for any eoi file.
    let bytes = fs::read(sandbox.path("out.safetensors")).unwrap();
    let mut tampered = bytes.clone();
    let weight = data_range(&bytes, "square.weight");
    let values = f32s(&bytes[weight.clone()]);
    let k = (0..values.len())
        .find(|&k| values[k].abs() > 0.1)
        .expect("a large weight");
    set_f32(&mut tampered, &weight, k, values[k] * 1.01);
    fs::write(sandbox.path("tampered.safetensors"), &tampered).unwrap();
    let (out, _) = verify(&sandbox, &["tampered.safetensors"], 1);
    assert!(
        out.contains("FAIL  square.weight  orthogonality: max |W W^T - gain^2 I| = "),
        "{out}"
    );

    // A copied tensor changed: only the base can tell.
    let mut tampered = bytes.clone();
    let bias = data_range(&bytes, "fc.bias");
    set_f32(&mut tampered, &bias, 3, 9.0);
    fs::write(sandbox.path("copy.safetensors"), &tampered).unwrap();
    verify(&sandbox, &["copy.safetensors", "--regenerate"], 0);
    let (out, _) = verify(
        &sandbox,
        &[
            "copy.safetensors",
            "--regenerate",
            "--base",
            "base.safetensors",
        ],
        1,
    );
    assert!(
        out.contains("FAIL  fc.bias  regenerate: 1 of 16 elements differ, first at (3)"),
        "{out}"
    );
    // Another base than the recorded one is refused by its SHA-256.
    let (out, _) = verify(
        &sandbox,
        &[
            "out.safetensors",
            "--regenerate",
            "--base",
            "copy.safetensors",
        ],
        1,
    );
    assert!(
        out.contains("cannot regenerate: 'copy.safetensors' is not the base this file was made from: the SHA-256 of its header is"),
        "{out}"
    );

    // Without the base record, tensors that are not eoi's are failures, as before.
    let (entries, metadata) = take_apart(&bytes);
    let metadata: Vec<(String, String)> = metadata
        .into_iter()
        .filter(|(k, _)| !k.starts_with("eoi.base"))
        .collect();
    fs::write(
        sandbox.path("unrecorded.safetensors"),
        put_together(&entries, &metadata),
    )
    .unwrap();
    let (out, _) = verify(&sandbox, &["unrecorded.safetensors"], 1);
    assert!(
        out.contains("FAIL  tensor \"fc.bias\" is not a recorded layer or its mask"),
        "{out}"
    );
    assert!(!out.contains("copied"), "{out}");
}

#[test]
fn a_sharded_base_output_verifies_whole_and_by_shard() {
    let sandbox = Sandbox::new();
    let entries = base_entries();
    let (first, second) = entries.split_at(3);
    fs::create_dir(sandbox.path("base")).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (name, part) in [("a.safetensors", first), ("b.safetensors", second)] {
        fs::write(
            sandbox.path(&format!("base/{name}")),
            put_together(part, &[("format".into(), "pt".into())]),
        )
        .unwrap();
        for e in part {
            weight_map.insert(e.name.clone(), json!(name));
        }
    }
    fs::write(
        sandbox.path("base/model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    generate(&sandbox, "out", &["--base", "base"]);
    let (out, _) = verify(&sandbox, &["out", "--regenerate", "--base", "base"], 0);
    assert!(
        out.contains("compared 3 copied tensors with the base: bit-identical"),
        "{out}"
    );
    assert!(out.contains("(safetensors, 2 shards)"), "{out}");
    assert!(
        out.contains("note: 3 tensors were copied from the base 'model.safetensors.index.json'"),
        "{out}"
    );
    assert!(out.contains("ok: 4 layers pass every check"), "{out}");
    // Shard a holds fc (and its copied bias) and tall.
    let (out, _) = verify(&sandbox, &["out/a.safetensors", "--regenerate"], 0);
    assert!(
        out.contains("note: 1 tensors were copied from the base"),
        "{out}"
    );
    assert!(out.contains("ok: 2 layers pass every check"), "{out}");
    assert!(
        out.contains("note: shard 1 of 2: only the 2 layers it holds are regenerated"),
        "{out}"
    );
}

//! Biases (`bias_std` in `[init]` and per layer) through the real binary on real files:
//! `plan` shows them, `generate` writes them beside their weights (values from their own
//! streams, zeros for 0), `verify` checks them and notices tampering, `--regenerate`
//! reproduces them, `--base` replaces a base's bias only when asked, and `isometry` adds
//! the generated ones. Their bytes are frozen in tests/it/golden.rs, and the official numpy and
//! safetensors packages read them in tests/it/python_interop.rs.

use std::fs;

use safetensors::Dtype;
use serde_json::json;

use crate::util::{
    Entry, Sandbox, data_range, read_safetensors, safetensors_bytes, stderr, stdout,
};

/// Three linear layers: `fc1` takes [init]'s bias_std, `fc2` sets 0, `proj` (not named
/// `<module>.weight`) gets no bias.
const SPEC: &str = r#"seed = 5

[sparsity]
density = 0.25

[init]
bias_std = 0.5

[[layer]]
name = "fc1.weight"
shape = [400, 64]

[[layer]]
name = "fc2.weight"
shape = [32, 400]
bias_std = 0

[[layer]]
name = "proj"
shape = [32, 32]
"#;

/// A sandbox holding SPEC as spec.toml.
fn sandbox() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.write("spec.toml", SPEC);
    sandbox
}

#[test]
fn plan_shows_each_layers_bias_in_text_and_json() {
    let sandbox = sandbox();
    let out = sandbox.eoi(&["plan", "spec.toml"]).success();
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    assert!(header.ends_with("bias_std"), "{text}");
    let row = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap();
    assert!(row("fc1.weight").ends_with(" 0.5"), "{text}");
    assert!(row("fc2.weight").ends_with(" 0"), "{text}");
    assert!(row("proj").ends_with(" -"), "{text}");
    assert!(text.contains("3 layers, 2 biases, "), "{text}");

    let plan = sandbox.json(&["plan", "spec.toml"], 0);
    assert_eq!(plan["schema_version"], 1);
    assert_eq!(plan["layers"][0]["bias"], "fc1.bias");
    assert_eq!(plan["layers"][0]["bias_std"], 0.5);
    assert_eq!(plan["layers"][1]["bias_std"], 0.0);
    assert!(plan["layers"][2].get("bias").is_none());
    let names: Vec<&str> = plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "fc1.weight",
            "fc1.weight_mask",
            "fc1.bias",
            "fc2.weight",
            "fc2.weight_mask",
            "fc2.bias",
            "proj",
            "proj_mask"
        ]
    );
    assert_eq!(
        plan["tensors"][2],
        json!({"name": "fc1.bias", "dtype": "f32", "shape": [400]})
    );
    // The flax layout and torch-prune names keep `<module>.bias`, shape (out,), and the dtype
    // follows the weights'.
    sandbox.write(
        "flax.toml",
        format!("{SPEC}\n[output]\nlayout = \"flax\"\ndtype = \"f16\"\n"),
    );
    let plan = sandbox.json(&["plan", "flax.toml"], 0);
    assert_eq!(plan["tensors"][0]["shape"], json!([64, 400]));
    assert_eq!(
        plan["tensors"][2],
        json!({"name": "fc1.bias", "dtype": "f16", "shape": [400]})
    );
}

#[test]
fn generate_writes_biases_in_the_weights_dtype_and_records_them() {
    let sandbox = sandbox();
    let summary = sandbox.json(&["generate", "spec.toml", "-o", "b.safetensors"], 0);
    assert_eq!(summary["layers"][0]["bias_std"], 0.5);
    let file = read_safetensors(&sandbox.path("b.safetensors"));
    let bias = file.tensor("fc1.bias");
    assert_eq!(
        (bias.dtype, bias.shape.as_slice()),
        (Dtype::F32, &[400][..])
    );
    let values = bias.f32s();
    let ms = values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 400.0;
    // Mean square of 400 draws of N(0, 0.25): standard error 0.25 * sqrt(2/400) = 0.0177.
    assert!((ms - 0.25).abs() < 6.0 * 0.0177, "{ms}");
    assert!(values.iter().filter(|v| **v > 0.0).count() > 150);
    let bias = file.tensor("fc2.bias");
    assert_eq!(bias.shape, &[32]);
    assert_eq!(bias.data, vec![0u8; 128], "bias_std = 0 gives +0.0 bytes");
    assert!(
        file.tensors
            .keys()
            .all(|name| name != "proj.bias" && name != "proj_bias")
    );
    assert_eq!(file.tensors.len(), 8);
    let records = file.layers();
    assert_eq!(records[0]["bias"], "fc1.bias");
    assert_eq!(records[1]["bias_std"], 0.0);
    assert!(records[2].get("bias_std").is_none());

    // The weights and masks are the same bytes as without biases.
    sandbox.write(
        "plain.toml",
        SPEC.replace("bias_std = 0.5\n", "")
            .replace("bias_std = 0\n", ""),
    );
    sandbox
        .eoi(&["generate", "plain.toml", "-o", "p.safetensors", "-q"])
        .success();
    let plain = read_safetensors(&sandbox.path("p.safetensors")).tensors;
    let mut without_biases = file.tensors.clone();
    without_biases.retain(|name, _| !name.ends_with(".bias"));
    assert_eq!(without_biases, plain);

    // bf16 weights give a bf16 bias.
    sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "h.safetensors",
            "-q",
            "--dtype",
            "bf16",
        ])
        .success();
    let half = read_safetensors(&sandbox.path("h.safetensors"));
    let bias = half.tensor("fc1.bias");
    assert_eq!((bias.dtype, bias.data.len()), (Dtype::BF16, 800));
}

#[test]
fn verify_checks_biases_and_regenerate_reproduces_them() {
    let sandbox = sandbox();
    sandbox
        .eoi(&["generate", "spec.toml", "-o", "b.safetensors", "-q"])
        .success();
    sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "npy",
            "-q",
            "--format",
            "npy",
        ])
        .success();
    sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "b.npz",
            "-q",
            "--format",
            "npz",
            "--dtype",
            "f16",
        ])
        .success();
    for artifact in ["b.safetensors", "npy", "b.npz"] {
        let report = sandbox.json(&["verify", artifact, "--regenerate"], 0);
        assert_eq!(report["passed"], true, "{artifact}: {report}");
        assert_eq!(report["regenerate"]["compared"], 8, "{artifact}");
        assert_eq!(report["layers"][0]["bias"], "fc1.bias");
        let std = report["layers"][0]["bias_std"].as_f64().unwrap();
        assert!((std - 0.5).abs() < 0.1, "{std}");
        assert_eq!(report["layers"][1]["bias_std"], 0.0);
        assert!(report["layers"][2]["bias"].is_null());
    }

    // Tampering: fc1's bias scaled by 4 (a std of 2, not 0.5), one of fc2's zeros made 1.
    let path = sandbox.path("b.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let (fc1, fc2) = (
        data_range(&bytes, "fc1.bias"),
        data_range(&bytes, "fc2.bias"),
    );
    for chunk in bytes[fc1].chunks_exact_mut(4) {
        let v = f32::from_le_bytes(chunk.try_into().unwrap()) * 4.0;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    let at = fc2.start + 12;
    bytes[at..at + 4].copy_from_slice(&1.0f32.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let assert = sandbox
        .eoi(&["verify", "b.safetensors", "--regenerate"])
        .code(1);
    let out = stdout(&assert);
    assert!(
        out.contains("FAIL  fc1.weight  bias: the bias \"fc1.bias\" has std 2.04"),
        "{out}"
    );
    assert!(
        out.contains("the record says 0.5: the std of 400 such draws lies within [0.3717, 0.6219] except with probability 4e-9"),
        "{out}"
    );
    assert!(
        out.contains(
            "FAIL  fc2.weight  bias: the bias \"fc2.bias\" is recorded with std 0 but 1 values are nonzero, first at (3)"
        ),
        "{out}"
    );
    assert!(out.contains("fc1.bias"), "{out}");
    let report = sandbox.json(&["verify", "b.safetensors", "--regenerate"], 1);
    let differing: Vec<&str> = report["regenerate"]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tensor"].as_str().unwrap())
        .collect();
    assert_eq!(differing, ["fc1.bias", "fc2.bias"]);
}

#[test]
fn inspect_lists_the_biases() {
    let sandbox = sandbox();
    sandbox
        .eoi(&["generate", "spec.toml", "-o", "b.safetensors", "-q"])
        .success();
    let report = sandbox.json(&["inspect", "b.safetensors"], 0);
    let bias = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fc1.bias")
        .unwrap();
    assert_eq!(bias["shape"], json!([400]));
    assert_eq!(bias["dtype"], "f32");
    assert_eq!(bias["bias_of"], "fc1.weight");
    let rms = bias["rms"].as_f64().unwrap();
    assert!((rms - 0.5).abs() < 0.1, "{rms}");
    let weight = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fc1.weight")
        .unwrap();
    assert!(weight["bias_of"].is_null() && weight["rms"].is_null());
    let out = sandbox.eoi(&["inspect", "b.safetensors"]).success();
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("fc2.bias")).unwrap();
    assert!(line.ends_with("(bias of fc2.weight, rms 0)"), "{text}");
}

/// A base checkpoint: `fc1.weight` [400, 64] and `fc1.bias` of `bias_len` values 7.0, and an
/// unrelated `other` tensor.
fn write_base(sandbox: &Sandbox, name: &str, bias_len: usize) {
    let bias: Vec<u8> = (0..bias_len).flat_map(|_| 7.0f32.to_le_bytes()).collect();
    let entries = [
        Entry::new("fc1.weight", "F32", &[400, 64], vec![0u8; 400 * 64 * 4]),
        Entry::new("fc1.bias", "F32", &[bias_len], bias),
        Entry::new("other", "U8", &[8], vec![1u8; 8]),
    ];
    sandbox.write(name, safetensors_bytes(&entries, None, false));
}

#[test]
fn a_bases_bias_is_replaced_only_with_bias_std() {
    let sandbox = sandbox();
    write_base(&sandbox, "base.safetensors", 400);
    let one = |bias: &str| {
        format!(
            "seed = 5\n[sparsity]\ndensity = 0.25\n[[layer]]\nname = \"fc1.weight\"\nshape = [400, 64]\n{bias}"
        )
    };
    // Without bias_std the base's bias is copied unchanged.
    sandbox.write("keep.toml", one(""));
    sandbox
        .eoi(&[
            "generate",
            "keep.toml",
            "--base",
            "base.safetensors",
            "-o",
            "keep.safetensors",
            "-q",
        ])
        .success();
    let kept = read_safetensors(&sandbox.path("keep.safetensors"));
    assert!(kept.tensor("fc1.bias").f32s().iter().all(|&v| v == 7.0));
    // With bias_std the generated bias replaces it: the same bytes as a plain generate.
    sandbox.write("new.toml", one("bias_std = 0.5\n"));
    sandbox
        .eoi(&[
            "generate",
            "new.toml",
            "--base",
            "base.safetensors",
            "-o",
            "new.safetensors",
            "-q",
        ])
        .success();
    sandbox
        .eoi(&["generate", "new.toml", "-o", "plain.safetensors", "-q"])
        .success();
    let replaced = read_safetensors(&sandbox.path("new.safetensors"));
    let plain = read_safetensors(&sandbox.path("plain.safetensors"));
    assert_eq!(replaced.tensor("fc1.bias"), plain.tensor("fc1.bias"));
    assert_eq!(replaced.tensor("other").data, vec![1u8; 8]);
    assert_eq!(
        replaced.tensors.len(),
        4,
        "weight, mask, bias and the copied tensor"
    );
    // A base bias of another shape is refused, naming it.
    write_base(&sandbox, "odd.safetensors", 399);
    let assert = sandbox
        .eoi(&[
            "generate",
            "new.toml",
            "--base",
            "odd.safetensors",
            "-o",
            "odd-out.safetensors",
        ])
        .code(2);
    let err = stderr(&assert);
    assert!(
        err.contains("tensor \"fc1.bias\": the spec's bias_std makes it a bias of shape [400] in F32 for layer \"fc1.weight\", but the base 'odd.safetensors' has [399] in F32"),
        "{err}"
    );
    assert!(!sandbox.path("odd-out.safetensors").exists());
}

#[test]
fn isometry_adds_the_generated_biases() {
    let sandbox = sandbox();
    let chain = |bias: &str| {
        format!(
            "seed = 1\n[sparsity]\ndensity = 0.5\n[init]\n{bias}\n[[layer]]\nname = \"h.{{i}}.weight\"\nshape = [64, 64]\nrepeat = 4\n"
        )
    };
    for (name, bias) in [
        ("none", ""),
        ("zero", "bias_std = 0"),
        ("some", "bias_std = 0.5"),
    ] {
        sandbox.write(&format!("{name}.toml"), chain(bias));
        sandbox
            .eoi(&[
                "generate",
                &format!("{name}.toml"),
                "-o",
                &format!("{name}.safetensors"),
                "-q",
            ])
            .success();
    }
    let report = |name: &str| sandbox.json(&["isometry", &format!("{name}.safetensors")], 0);
    let (none, zero, some) = (report("none"), report("zero"), report("some"));
    assert!(none["chain"][0]["bias"].is_null());
    assert_eq!(some["chain"][2]["bias"], "h.2.bias");
    // Zero biases change nothing; biases of std 0.5 change the signal and the Jacobian.
    assert_eq!(none["signal_rms"], zero["signal_rms"]);
    assert_eq!(none["jacobian"], zero["jacobian"]);
    assert_ne!(none["signal_rms"][4], some["signal_rms"][4]);
    assert_ne!(
        none["jacobian"]["singular_mean_sq"],
        some["jacobian"]["singular_mean_sq"]
    );
}

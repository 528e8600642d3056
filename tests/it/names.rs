//! `--names torch-prune` writes `<module>.<param>_orig` and `<module>.<param>_mask` (the
//! mask in the weight's dtype) for any parameter, as `torch.nn.utils.prune` stores a pruned
//! parameter; the official Python safetensors reads them.

use std::path::Path;

use assert_cmd::Command;
use safetensors::SafeTensors;

const SPEC: &str = r#"
[sparsity]
density = 0.5
[[layer]]
name = "fc1.weight"
shape = [6, 5]
[[layer]]
name = "conv.weight"
shape = [4, 3, 3, 3]
"#;

fn generate(dir: &Path, spec: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).unwrap();
    Command::cargo_bin("eoi")
        .unwrap()
        .arg("generate")
        .arg(&path)
        .args(["-q", "--force", "-o"])
        .arg(dir.join("out.safetensors"))
        .args(extra)
        .assert()
}

#[test]
fn torch_prune_names_hold_the_plain_values_and_a_weight_dtype_mask() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), SPEC, &[]).success();
    let plain = std::fs::read(dir.path().join("out.safetensors")).unwrap();
    generate(dir.path(), SPEC, &["--names", "torch-prune"]).success();
    let pruned = std::fs::read(dir.path().join("out.safetensors")).unwrap();
    let (plain, pruned) = (
        SafeTensors::deserialize(&plain).unwrap(),
        SafeTensors::deserialize(&pruned).unwrap(),
    );
    let mut names = pruned.names();
    names.sort();
    assert_eq!(
        names,
        [
            "conv.weight_mask",
            "conv.weight_orig",
            "fc1.weight_mask",
            "fc1.weight_orig"
        ]
    );
    for layer in ["fc1.weight", "conv.weight"] {
        let orig = pruned.tensor(&format!("{layer}_orig")).unwrap();
        let weight = plain.tensor(layer).unwrap();
        assert_eq!(orig.data(), weight.data());
        assert_eq!(orig.shape(), weight.shape());
        let mask = pruned.tensor(&format!("{layer}_mask")).unwrap();
        let bool_mask = plain.tensor(&format!("{layer}_mask")).unwrap();
        assert_eq!(mask.dtype(), safetensors::Dtype::F32);
        assert_eq!(mask.shape(), weight.shape());
        let values: Vec<f32> = mask
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let expected: Vec<f32> = bool_mask.data().iter().map(|&b| f32::from(b)).collect();
        assert_eq!(values, expected);
    }
}

#[test]
fn torch_prune_from_the_spec_with_f64() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{SPEC}[output]\nnames = \"torch-prune\"\ndtype = \"f64\"\n");
    generate(dir.path(), &spec, &[]).success();
    let bytes = std::fs::read(dir.path().join("out.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        file.tensor("fc1.weight_mask").unwrap().dtype(),
        safetensors::Dtype::F64
    );
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().unwrap()["eoi.names"],
        "torch-prune"
    );
}

/// `list_tensors.py FILE`: the file as the official Python safetensors reads it.
fn python_view(file: &Path) -> serde_json::Value {
    let python = std::env::var("EOI_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/list_tensors.py"
        ))
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (scripts/test sets EOI_PYTHON): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    all[file.to_str().unwrap()].clone()
}

/// nn.MultiheadAttention(embed_dim=8, num_heads=2) has `in_proj_weight` (24, 8), which
/// `prune.identity(mha, "in_proj_weight")` turns into `in_proj_weight_orig` and the buffer
/// `in_proj_weight_mask`; its `out_proj` is a Linear.
const ATTENTION: &str = r#"
[sparsity]
density = 0.5
[init]
bias_std = 0.1
[[layer]]
name = "attn.in_proj_weight"
shape = [24, 8]
[[layer]]
name = "attn.out_proj.weight"
shape = [8, 8]
[[layer]]
name = "head"
shape = [2, 8]
"#;

#[test]
fn torch_prune_names_any_parameter_and_python_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), ATTENTION, &[]).success();
    let plain = std::fs::read(dir.path().join("out.safetensors")).unwrap();
    let plain = SafeTensors::deserialize(&plain).unwrap();
    generate(dir.path(), ATTENTION, &["--names", "torch-prune"]).success();
    let view = python_view(&dir.path().join("out.safetensors"));
    let tensors = view["tensors"].as_object().unwrap();
    let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    names.sort_unstable();
    // bias_std gives a bias to `<module>.weight` layers only: out_proj's, as plain names do.
    assert_eq!(
        names,
        [
            "attn.in_proj_weight_mask",
            "attn.in_proj_weight_orig",
            "attn.out_proj.bias",
            "attn.out_proj.weight_mask",
            "attn.out_proj.weight_orig",
            "head_mask",
            "head_orig",
        ]
    );
    for layer in ["attn.in_proj_weight", "attn.out_proj.weight", "head"] {
        let weight = plain.tensor(layer).unwrap();
        let shape: Vec<u64> = weight.shape().iter().map(|&d| d as u64).collect();
        for suffix in ["_orig", "_mask"] {
            let t = &tensors[&format!("{layer}{suffix}")];
            assert_eq!(t["dtype"], "float32", "{layer}{suffix}");
            assert_eq!(t["shape"], serde_json::json!(shape), "{layer}{suffix}");
        }
        // The values are the plain run's, byte for byte.
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(weight.data())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(tensors[&format!("{layer}_orig")]["sha256"], digest);
    }
    assert_eq!(view["metadata"]["eoi.names"], "torch-prune");
}

#[test]
fn torch_prune_refuses_a_name_no_state_dict_holds() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{SPEC}[[layer]]\nname = \"head.\"\nshape = [2, 6]\n");
    let out = generate(dir.path(), &spec, &["--names", "torch-prune"]).code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("layer \"head.\""), "{stderr}");
    assert!(stderr.contains("<module>.<param>"), "{stderr}");
    assert!(!dir.path().join("out.safetensors").exists());
}

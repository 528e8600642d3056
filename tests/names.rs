//! `--names torch-prune` writes `<module>.weight_orig` and `<module>.weight_mask` (the mask
//! in the weight's dtype), as `torch.nn.utils.prune` stores a pruned parameter.

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

#[test]
fn torch_prune_refuses_a_name_without_dot_weight() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{SPEC}[[layer]]\nname = \"head.kernel\"\nshape = [2, 6]\n");
    let out = generate(dir.path(), &spec, &["--names", "torch-prune"]).failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("head.kernel"), "{stderr}");
    assert!(stderr.contains("<module>.weight"), "{stderr}");
}

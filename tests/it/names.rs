//! `--names torch-prune` writes `<module>.<param>_orig` and `<module>.<param>_mask` (the
//! mask in the weight's dtype) for any parameter, as `torch.nn.utils.prune` stores a pruned
//! parameter; the official Python safetensors reads them.

use assert_cmd::assert::Assert;
use safetensors::Dtype;

use crate::util::{Sandbox, python_view, read_safetensors, sha256, stderr};

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

/// Writes `spec` and runs `eoi generate spec.toml -o out.safetensors -q --force EXTRA...`.
fn generate(sandbox: &Sandbox, spec: &str, extra: &[&str]) -> Assert {
    sandbox.generate(
        spec,
        "out.safetensors",
        &[&["-q", "--force"], extra].concat(),
    )
}

#[test]
fn torch_prune_names_hold_the_plain_values_and_a_weight_dtype_mask() {
    let sandbox = Sandbox::new();
    generate(&sandbox, SPEC, &[]).success();
    let plain = read_safetensors(&sandbox.path("out.safetensors"));
    generate(&sandbox, SPEC, &["--names", "torch-prune"]).success();
    let pruned = read_safetensors(&sandbox.path("out.safetensors"));
    let names: Vec<&str> = pruned.tensors.keys().map(String::as_str).collect();
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
        let orig = pruned.tensor(&format!("{layer}_orig"));
        let weight = plain.tensor(layer);
        assert_eq!(orig.data, weight.data);
        assert_eq!(orig.shape, weight.shape);
        let mask = pruned.tensor(&format!("{layer}_mask"));
        let bool_mask = plain.tensor(&format!("{layer}_mask"));
        assert_eq!(mask.dtype, Dtype::F32);
        assert_eq!(mask.shape, weight.shape);
        let expected: Vec<f32> = bool_mask.data.iter().map(|&b| f32::from(b)).collect();
        assert_eq!(mask.f32s(), expected);
    }
}

#[test]
fn torch_prune_from_the_spec_with_f64() {
    let sandbox = Sandbox::new();
    let spec = format!("{SPEC}[output]\nnames = \"torch-prune\"\ndtype = \"f64\"\n");
    generate(&sandbox, &spec, &[]).success();
    let file = read_safetensors(&sandbox.path("out.safetensors"));
    assert_eq!(file.tensor("fc1.weight_mask").dtype, Dtype::F64);
    assert_eq!(file.meta("eoi.names"), "torch-prune");
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
    let sandbox = Sandbox::new();
    generate(&sandbox, ATTENTION, &[]).success();
    let plain = read_safetensors(&sandbox.path("out.safetensors"));
    generate(&sandbox, ATTENTION, &["--names", "torch-prune"]).success();
    let view = &python_view(&[sandbox.path("out.safetensors")])["out.safetensors"];
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
        let weight = plain.tensor(layer);
        let shape: Vec<u64> = weight.shape.iter().map(|&d| d as u64).collect();
        for suffix in ["_orig", "_mask"] {
            let t = &tensors[&format!("{layer}{suffix}")];
            assert_eq!(t["dtype"], "float32", "{layer}{suffix}");
            assert_eq!(t["shape"], serde_json::json!(shape), "{layer}{suffix}");
        }
        // The values are the plain run's, byte for byte.
        assert_eq!(
            tensors[&format!("{layer}_orig")]["sha256"],
            sha256(&weight.data)
        );
    }
    assert_eq!(view["metadata"]["eoi.names"], "torch-prune");
}

#[test]
fn torch_prune_refuses_a_name_no_state_dict_holds() {
    let sandbox = Sandbox::new();
    let spec = format!("{SPEC}[[layer]]\nname = \"head.\"\nshape = [2, 6]\n");
    let out = generate(&sandbox, &spec, &["--names", "torch-prune"]).code(2);
    let stderr = stderr(&out);
    assert!(stderr.contains("layer \"head.\""), "{stderr}");
    assert!(stderr.contains("<module>.<param>"), "{stderr}");
    assert!(!sandbox.path("out.safetensors").exists());
}

//! `--layout flax` writes the same values as the torch layout, permuted: Dense kernels
//! (in, out), convolution kernels (k..., in, out); masks the same way.

use std::collections::HashMap;
use std::path::Path;

use assert_cmd::Command;
use safetensors::SafeTensors;

const SPEC: &str = r#"
seed = 11
[sparsity]
density = 0.5
[[layer]]
name = "fc.weight"
shape = [6, 5]
[[layer]]
name = "c1.weight"
shape = [4, 3, 3]
[[layer]]
name = "c2.weight"
shape = [5, 3, 3, 2]
[[layer]]
name = "c3.weight"
shape = [3, 2, 2, 3, 2]
"#;

fn generate(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = dir.join(format!("out{}.safetensors", extra.join("")));
    Command::cargo_bin("eoi")
        .unwrap()
        .arg("generate")
        .arg(&spec)
        .args(["-q", "--dtype", "f64", "-o"])
        .arg(&out)
        .args(extra)
        .assert()
        .success();
    std::fs::read(out).unwrap()
}

/// Each tensor's shape and values as f64.
fn tensors(bytes: &[u8]) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                safetensors::Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::BOOL => view.data().iter().map(|&b| f64::from(b)).collect(),
                other => panic!("unexpected dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn format_of(bytes: &[u8]) -> String {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    meta.metadata().as_ref().unwrap()["format"].clone()
}

#[test]
fn flax_layout_is_the_torch_layout_permuted() {
    let dir = tempfile::tempdir().unwrap();
    let torch_bytes = generate(dir.path(), &[]);
    let flax_bytes = generate(dir.path(), &["--layout", "flax"]);
    assert_eq!(format_of(&torch_bytes), "pt");
    assert_eq!(format_of(&flax_bytes), "flax");
    let (torch, flax) = (tensors(&torch_bytes), tensors(&flax_bytes));
    assert_eq!(torch.len(), 8);
    for (name, (shape, values)) in &torch {
        let (fshape, fvalues) = &flax[name];
        let (out, inp) = (shape[0], shape[1]);
        let kernel = &shape[2..];
        let taps: usize = kernel.iter().product();
        let mut expected_shape = kernel.to_vec();
        expected_shape.extend([inp, out]);
        assert_eq!(fshape, &expected_shape, "{name}");
        assert!(values.iter().any(|&v| v != 0.0), "{name} is all zero");
        for o in 0..out {
            for i in 0..inp {
                for t in 0..taps {
                    let torch_at = (o * inp + i) * taps + t;
                    let flax_at = (t * inp + i) * out + o;
                    assert_eq!(values[torch_at], fvalues[flax_at], "{name} ({o}, {i}, {t})");
                }
            }
        }
    }
}

#[test]
fn layout_comes_from_the_spec_too() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, format!("{SPEC}[output]\nlayout = \"flax\"\n")).unwrap();
    let out = dir.path().join("o.safetensors");
    Command::cargo_bin("eoi")
        .unwrap()
        .arg("generate")
        .arg(&spec)
        .arg("-q")
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(format_of(&bytes), "flax");
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["eoi.layout"], "flax");
    assert_eq!(tensors_shape(&bytes, "fc.weight"), vec![5, 6]);
}

fn tensors_shape(bytes: &[u8], name: &str) -> Vec<usize> {
    SafeTensors::deserialize(bytes)
        .unwrap()
        .tensor(name)
        .unwrap()
        .shape()
        .to_vec()
}

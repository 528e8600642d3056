//! `--layout flax` writes the same values as the torch layout, permuted: Dense kernels
//! (in, out), convolution kernels (k..., in, out); masks the same way.

use crate::util::{Checkpoint, Sandbox, read_safetensors};

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

/// Generates SPEC as f64 with `extra` arguments and reads the output back.
fn generate(sandbox: &Sandbox, extra: &[&str]) -> Checkpoint {
    let out = format!("out{}.safetensors", extra.join(""));
    let args = [&["-q", "--dtype", "f64"][..], extra].concat();
    sandbox.generate(SPEC, &out, &args).success();
    read_safetensors(&sandbox.path(&out))
}

#[test]
fn flax_layout_is_the_torch_layout_permuted() {
    let sandbox = Sandbox::new();
    let torch = generate(&sandbox, &[]);
    let flax = generate(&sandbox, &["--layout", "flax"]);
    assert_eq!(torch.meta("format"), "pt");
    assert_eq!(flax.meta("format"), "flax");
    assert_eq!(torch.tensors.len(), 8);
    for (name, tensor) in &torch.tensors {
        let (shape, values) = (&tensor.shape, tensor.values());
        let (fshape, fvalues) = (&flax.tensor(name).shape, flax.tensor(name).values());
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
    let sandbox = Sandbox::new();
    let spec = format!("{SPEC}[output]\nlayout = \"flax\"\n");
    sandbox.generate(&spec, "o.safetensors", &["-q"]).success();
    let file = read_safetensors(&sandbox.path("o.safetensors"));
    assert_eq!(file.meta("format"), "flax");
    assert_eq!(file.meta("eoi.layout"), "flax");
    assert_eq!(file.tensor("fc.weight").shape, vec![5, 6]);
}

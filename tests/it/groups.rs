//! Grouped and depthwise convolutions (`groups = G`), through the real binary and the files it
//! writes (read with the `safetensors` crate): each group's block of the centre tap is
//! orthogonal, so the layer is orthogonal as a grouped convolution, which is checked block by
//! block and as an operator, by a direct periodic 2-D convolution of a random input; a
//! depthwise layer's centre taps are exactly +-gain; masks hold the planned count; `verify`
//! judges each block on its own; and the EfficientNet-B0 spec in specs/ generates.

use std::fs;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::util::{
    Sandbox, Tensor, centre_tap, data_range, eoi, f32s, gram_error, json, read_safetensors, stdout,
};

/// Writes `text` as a spec in the sandbox and generates it to `out.safetensors` (f64 unless
/// `args` give a `--dtype`); the output's path.
fn generate(sandbox: &Sandbox, text: &str, args: &[&str]) -> PathBuf {
    let dtype: &[&str] = if args.contains(&"--dtype") {
        &[]
    } else {
        &["--dtype", "f64"]
    };
    let all = [&["-q"][..], dtype, args].concat();
    sandbox.generate(text, "out.safetensors", &all).success();
    sandbox.path("out.safetensors")
}

/// Standard normal values from a small generator of the test's own (splitmix64, Box-Muller).
fn normals(n: usize, mut state: u64) -> Vec<f64> {
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (1.0 - next(), next());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect()
}

/// The periodic grouped 2-D convolution (cross-correlation, PyTorch's) of `x` (in, n, n) by
/// the kernel `w` (out, in/G, kh, kw), offsets taken from the centre tap; or, with
/// `transpose`, its adjoint applied to `x` (out, n, n), giving (in, n, n).
fn periodic_conv(w: &Tensor, groups: usize, x: &[f64], n: usize, transpose: bool) -> Vec<f64> {
    let (out, per_group, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let values = w.values();
    let inp = per_group * groups;
    let out_per_group = out / groups;
    let (ch, cw) = ((kh - 1) / 2, (kw - 1) / 2);
    let mut y = vec![0.0; if transpose { inp } else { out } * n * n];
    for o in 0..out {
        let g = o / out_per_group;
        for il in 0..per_group {
            let i = g * per_group + il;
            for a in 0..kh {
                for b in 0..kw {
                    let weight = values[((o * per_group + il) * kh + a) * kw + b];
                    if weight == 0.0 {
                        continue;
                    }
                    for r in 0..n {
                        for c in 0..n {
                            let rr = (r + n + a - ch) % n;
                            let cc = (c + n + b - cw) % n;
                            if transpose {
                                y[(i * n + rr) * n + cc] += weight * x[(o * n + r) * n + c];
                            } else {
                                y[(o * n + r) * n + c] += weight * x[(i * n + rr) * n + cc];
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

const LAYERS: &str = r#"
[[layer]]
name = "square.weight"
shape = [12, 4, 3, 3]
groups = 3

[[layer]]
name = "tall.weight"
shape = [16, 2, 3, 3]
groups = 4

[[layer]]
name = "wide.weight"
shape = [8, 8, 5, 5]
groups = 2
conv_center = "same"

[[layer]]
name = "depthwise.weight"
shape = [24, 1, 3, 3]
groups = 24
"#;

/// (name, groups) of LAYERS.
const GROUPED: &[(&str, usize)] = &[
    ("square.weight", 3),
    ("tall.weight", 4),
    ("wide.weight", 2),
    ("depthwise.weight", 24),
];

#[test]
fn grouped_kernels_are_orthogonal_per_block_and_as_periodic_convolutions() {
    let sandbox = Sandbox::new();
    let text = format!("seed = 7\n[sparsity]\ndensity = 0.3\nbelow_minimum = \"clamp\"\n{LAYERS}");
    let out = generate(&sandbox, &text, &[]);
    let file = read_safetensors(&out);
    let records = file.layers();
    let n = 7;
    for &(name, groups) in GROUPED {
        let w = file.tensor(name);
        let mask = file.tensor(&format!("{name}_mask"));
        let record = records.iter().find(|r| r["name"] == name).unwrap();
        assert_eq!(record["groups"], groups, "{name}");
        let (out_channels, per_group) = (w.shape[0], w.shape[1]);
        let rows = out_channels / groups;
        // Per block: each group's (out/G, in/G) block of the centre is orthogonal.
        let h = centre_tap(&w.values(), &w.shape);
        for b in 0..groups {
            let block = &h[b * rows * per_group..(b + 1) * rows * per_group];
            let error = gram_error(block, rows, per_group, 1.0);
            assert!(error < 1e-12, "{name} block {b}: {error:e}");
        }
        // The blocks are not orthogonal as one (out, in/G) matrix: the per-block check is
        // the one that matters (this would pass only for G = 1).
        assert!(gram_error(&h, out_channels, per_group, 1.0) > 0.5, "{name}");
        // Off the centre every weight is zero, and no weight lies outside the mask.
        let nonzero = w.values().iter().filter(|v| **v != 0.0).count();
        assert_eq!(nonzero, h.iter().filter(|v| **v != 0.0).count(), "{name}");
        assert!(
            w.values()
                .iter()
                .zip(&mask.values())
                .all(|(v, m)| *v == 0.0 || *m == 1.0),
            "{name}"
        );
        // The mask holds ceil(d * numel) ones (or the whole centre support, if more).
        let numel = w.values().len() as f64;
        let ones = mask.values().iter().filter(|m| **m == 1.0).count() as f64;
        let density = record["density"].as_f64().unwrap();
        assert_eq!(ones, (density * numel).ceil(), "{name}");
        assert_eq!(record["nnz"], ones as u64, "{name}");

        // As an operator: the periodic grouped convolution of a random input keeps its norm
        // (blocks with orthonormal columns), or its adjoint does (orthonormal rows).
        let tall = rows >= per_group;
        let channels = if tall {
            per_group * groups
        } else {
            out_channels
        };
        let x = normals(channels * n * n, 11);
        let y = periodic_conv(w, groups, &x, n, !tall);
        let ratio = norm(&y) / norm(&x);
        assert!((ratio - 1.0).abs() < 1e-10, "{name}: |Ax|/|x| = {ratio}");
    }
}

#[test]
fn a_depthwise_layer_at_density_0_3_is_orthogonal_with_its_centre_raised() {
    // Issue 18's case: `density = 0.3` on a depthwise [32, 1, 3, 3]. Its centre rule (sqrt)
    // asks 0.548 of 1 x 1 blocks, below their identity: the centre is raised to +-gain per
    // channel, and the top-up brings the mask to ceil(0.3 * 288) = 87 ones.
    let sandbox = Sandbox::new();
    let text = "seed = 5\n[sparsity]\ndensity = 0.3\n[[layer]]\nname = \"dw.weight\"\nshape = [32, 1, 3, 3]\ngroups = 32\n";
    let spec = sandbox.write("dw.toml", text);
    let plan = stdout(&eoi().arg("plan").arg(&spec).assert().success());
    assert!(
        plan.contains("centre raised to its identity in 1 convolution: dw.weight"),
        "{plan}"
    );
    let out = generate(&sandbox, text, &[]);
    let file = read_safetensors(&out);
    let record = &file.layers()[0];
    assert_eq!(
        (&record["density"], &record["nnz"], &record["centre_nnz"]),
        (&json!(0.3), &json!(87), &json!(32)),
        "{record}"
    );
    assert_eq!(
        (&record["centre_density"], &record["centre_raised"]),
        (&json!(1.0), &json!(true)),
        "{record}"
    );
    let w = file.tensor("dw.weight");
    let mask = file.tensor("dw.weight_mask");
    assert_eq!(mask.values().iter().filter(|m| **m == 1.0).count(), 87);
    for (k, (v, m)) in w.values().iter().zip(mask.values()).enumerate() {
        if k % 9 == 4 {
            assert!(
                v.abs() == 1.0 && m == 1.0,
                "centre of channel {}: {v}",
                k / 9
            );
        } else {
            assert_eq!(*v, 0.0, "dw.weight[{k}]");
        }
    }
    // As an operator on a periodic 6 x 6 grid it keeps the norm of a random input.
    let x = normals(32 * 36, 3);
    let y = periodic_conv(w, 32, &x, 6, false);
    assert!((norm(&y) / norm(&x) - 1.0).abs() < 1e-12);
    eoi()
        .arg("verify")
        .arg(&out)
        .arg("--regenerate")
        .assert()
        .code(0);
    // Below one weight per channel (1/9) it is refused.
    let low = sandbox.write("low.toml", text.replace("0.3", "0.1"));
    let refused = eoi().arg("plan").arg(&low).assert().code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).to_string();
    assert!(
        stderr.contains("gives it 0.100000, below the 0.111111 that EOI can make"),
        "{stderr}"
    );
}

#[test]
fn depthwise_centres_are_exactly_plus_or_minus_the_gain() {
    let sandbox = Sandbox::new();
    let text = "seed = 3\n[sparsity]\ndensity = 1.0\n[init]\ngain = \"relu\"\n[[layer]]\nname = \"dw.weight\"\nshape = [64, 1, 3, 3]\ngroups = 64\n[[layer]]\nname = \"dw1d.weight\"\nshape = [32, 1, 5]\ngroups = 32\n";
    let out = generate(&sandbox, text, &[]);
    let file = read_safetensors(&out);
    let gain = 2f64.sqrt();
    for (name, taps, tap) in [("dw.weight", 9, 4), ("dw1d.weight", 5, 2)] {
        let w = file.tensor(name);
        let mut signs = [0; 2];
        for (k, v) in w.values().iter().enumerate() {
            if k % taps == tap {
                assert!(v.abs() == gain, "{name}[{k}] = {v}");
                signs[usize::from(*v < 0.0)] += 1;
            } else {
                assert_eq!(*v, 0.0, "{name}[{k}]");
            }
        }
        // The signs are random: both occur (each channel's from its own block stream).
        assert!(signs[0] > 0 && signs[1] > 0, "{name}: {signs:?}");
        // As a dense depthwise layer, every tap is trainable.
        let mask = file.tensor(&format!("{name}_mask"));
        assert!(mask.values().iter().all(|m| *m == 1.0), "{name}");
    }
}

#[test]
fn the_orthogonal_baseline_is_orthogonal_per_block_unmasked() {
    let sandbox = Sandbox::new();
    let text =
        format!("seed = 9\n[sparsity]\ndensity = 1.0\n[init]\nscheme = \"orthogonal\"\n{LAYERS}");
    let out = generate(&sandbox, &text, &[]);
    let file = read_safetensors(&out);
    for &(name, groups) in GROUPED {
        let w = file.tensor(name);
        let (out_channels, per_group) = (w.shape[0], w.shape[1]);
        let rows = out_channels / groups;
        let h = centre_tap(&w.values(), &w.shape);
        for b in 0..groups {
            let block = &h[b * rows * per_group..(b + 1) * rows * per_group];
            assert!(
                gram_error(block, rows, per_group, 1.0) < 1e-12,
                "{name} {b}"
            );
        }
    }
    // Kaiming's fan-in is the tensor's: in/G * K (std 1/sqrt(4 * 9) for square.weight).
    let out = generate(
        &sandbox,
        &format!("seed = 9\n[sparsity]\ndensity = 1.0\n[init]\nscheme = \"kaiming\"\n{LAYERS}"),
        &["--force"],
    );
    let file = read_safetensors(&out);
    let w = file.tensor("square.weight");
    let variance = w.values().iter().map(|v| v * v).sum::<f64>() / w.values().len() as f64;
    // 432 samples of variance 1/36: the standard error of the estimate is about 7%.
    assert!((variance * 36.0 - 1.0).abs() < 0.3, "{}", variance * 36.0);
}

#[test]
fn verify_judges_each_block_and_catches_a_broken_one() {
    let sandbox = Sandbox::new();
    let text = format!("seed = 7\n[sparsity]\ndensity = 0.3\nbelow_minimum = \"clamp\"\n{LAYERS}");
    let out = generate(&sandbox, &text, &["--dtype", "f32"]);
    eoi()
        .arg("verify")
        .arg(&out)
        .args(["--regenerate"])
        .assert()
        .code(0);
    // Scale one centre weight of the last block of square.weight: that block alone breaks.
    let mut bytes = fs::read(&out).unwrap();
    let range = data_range(&bytes, "square.weight");
    let values = f32s(&bytes[range.clone()]);
    let k = values.iter().rposition(|v| *v != 0.0).unwrap();
    let at = range.start + 4 * k;
    bytes[at..at + 4].copy_from_slice(&(values[k] * 1.5).to_le_bytes());
    let broken = sandbox.path("broken.safetensors");
    fs::write(&broken, &bytes).unwrap();
    let text = stdout(&eoi().arg("verify").arg(&broken).assert().code(1));
    assert!(
        text.contains(
            "FAIL  square.weight  orthogonality: max |B B^T - gain^2 I| over each of the 3 groups' blocks B of the centre tap H = "
        ),
        "{text}"
    );
    assert_eq!(text.matches("FAIL  ").count(), 1, "{text}");
}

#[test]
fn efficientnet_b0_is_layer_wise_orthogonal_with_plus_minus_gain_depthwise_centres() {
    // The bundled ImageNet spec, as it is (82 layers, 5.2M weights, f32), with no `dense`
    // list since issue 18: every layer passes verify (each block of each centre orthogonal),
    // and each of the 16 depthwise layers has exactly +-1 (sigma_w = 1) at every channel's
    // centre tap and zero elsewhere. ERK caps the seven 3x3 ones at 1; the nine 5x5 ones take
    // ERK's density below 1, their centres raised to the identity and their masks topped up.
    let sandbox = Sandbox::new();
    let out = sandbox.path("b0.safetensors");
    eoi()
        .args(["generate", "specs/efficientnet-b0.toml", "-q", "-o"])
        .arg(&out)
        .assert()
        .success();
    eoi().arg("verify").arg(&out).assert().code(0);
    let file = read_safetensors(&out);
    let records = file.layers();
    let depthwise: Vec<&Value> = records
        .iter()
        .filter(|r| r["groups"].as_u64().is_some_and(|g| g > 1))
        .collect();
    assert_eq!(depthwise.len(), 16);
    for record in depthwise {
        let name = record["name"].as_str().unwrap();
        let w = file.tensor(name);
        assert_eq!(record["groups"], w.shape[0], "{name}");
        assert_eq!(w.shape[1], 1, "{name}");
        let (taps, tap) = (w.shape[2] * w.shape[3], (w.shape[2] * w.shape[3]) / 2);
        let mut negative = 0;
        for (k, v) in w.values().iter().enumerate() {
            if k % taps == tap {
                assert_eq!(v.abs(), 1.0, "{name}[{k}]");
                negative += usize::from(*v < 0.0);
            } else {
                assert_eq!(*v, 0.0, "{name}[{k}]");
            }
        }
        assert!(
            negative > 0 && negative < w.shape[0],
            "{name}: {negative} negative"
        );
        let density = record["density"].as_f64().unwrap();
        let mask = file.tensor(&format!("{name}_mask"));
        let ones = mask.values().iter().filter(|m| **m == 1.0).count();
        if taps == 9 {
            assert_eq!(
                (density, &record["origin"]),
                (1.0, &json!("capped")),
                "{name}"
            );
            assert_eq!(ones, w.values().len(), "{name}");
        } else {
            assert!((0.4..0.45).contains(&density), "{name}: {density}");
            assert_eq!(record["centre_raised"], true, "{name}");
            let numel = w.values().len();
            assert_eq!(ones, (density * numel as f64).ceil() as usize, "{name}");
        }
    }
}

#[test]
fn inspect_measures_a_grouped_layer_block_by_block() {
    let sandbox = Sandbox::new();
    let text = format!(
        "seed = 7\n[sparsity]\ndensity = 0.3\nbelow_minimum = \"clamp\"\n[init]\ngain = 2.0\n{LAYERS}"
    );
    let out = generate(&sandbox, &text, &[]);
    let report = json(stdout(
        &eoi()
            .arg("inspect")
            .arg(&out)
            .arg("--json")
            .assert()
            .success(),
    ));
    let tensors = report["tensors"].as_array().unwrap();
    for &(name, groups) in GROUPED {
        let t = tensors.iter().find(|t| t["name"] == name).unwrap();
        assert_eq!(t["groups"], groups, "{name}");
        // Each block, read as (out/G, in/G * K), is gain times a delta kernel whose centre
        // has orthonormal rows (square and wide blocks, depthwise ones): its Gram matrix is
        // gain^2 I and its singular values the gain. Over the whole (out, in/G * K) matrix
        // that would not hold (its rows overlap across groups).
        assert!(
            (t["singular_max"].as_f64().unwrap() - 2.0).abs() < 1e-12,
            "{t}"
        );
        let error = t["orthogonality_error"].as_f64().unwrap();
        if name == "tall.weight" {
            // Orthonormal columns at the centre: this reading is not orthogonal (as for
            // any tall delta kernel; verify checks the centre tap itself).
            assert!(error > 0.5 && t["singular_min"] == 0.0, "{t}");
        } else {
            assert!(error < 1e-12, "{t}");
            assert!((t["gain"].as_f64().unwrap() - 2.0).abs() < 1e-12, "{t}");
            assert!(
                (t["singular_min"].as_f64().unwrap() - 2.0).abs() < 1e-12,
                "{t}"
            );
        }
    }
    // The mask is not a grouped weight.
    let mask = tensors
        .iter()
        .find(|t| t["name"] == "square.weight_mask")
        .unwrap();
    assert_eq!(mask["groups"], Value::Null);
}

//! Structured conv masks (`conv_mask = "structured"`), through the real binary and the files
//! it writes (read with the `safetensors` crate): the mask is the whole kernel slice of every
//! channel pair the centre matrix connects and nothing else, so it holds exactly
//! `centre_nnz * K` ones; the weights are the orthogonal centre matrix at the centre tap; a
//! convolution reading the image (`in` = `image_channels`) stays dense; bad values are spec
//! errors; `verify` passes and `--regenerate` reproduces the file.

use std::fs;
use std::path::PathBuf;

use predicates::str::contains;

use crate::util::{
    Sandbox, data_range, eoi, json, read_safetensors, records_by_name, stderr, stdout,
};

/// Writes `text` as a spec and generates it as f64 to `out.safetensors`; the output's path.
fn generate(sandbox: &Sandbox, text: &str) -> PathBuf {
    sandbox
        .generate(text, "out.safetensors", &["-q", "--dtype", "f64"])
        .success();
    sandbox.path("out.safetensors")
}

const SPEC: &str = r#"seed = 5
[sparsity]
density = 0.2
[init]
conv_mask = "structured"
[[layer]]
name = "stem.weight"
shape = [16, 3, 3, 3]
[[layer]]
name = "mid.weight"
shape = [32, 16, 3, 3]
[[layer]]
name = "tall.weight"
shape = [48, 24, 5]
[[layer]]
name = "grouped.weight"
shape = [32, 8, 3, 3]
groups = 4
[[layer]]
name = "fc.weight"
shape = [10, 32]
"#;

#[test]
fn masks_are_whole_slices_of_the_centre_support_with_an_orthogonal_centre() {
    let sandbox = Sandbox::new();
    let out = generate(&sandbox, SPEC);
    let file = read_safetensors(&out);
    for (name, groups) in [("mid.weight", 1), ("tall.weight", 1), ("grouped.weight", 4)] {
        let (shape, w) = (&file.tensor(name).shape, file.tensor(name).values());
        let mask = file.tensor(&format!("{name}_mask")).values();
        let (out_ch, inp) = (shape[0], shape[1]);
        let taps: usize = shape[2..].iter().product();
        let tap = (taps - 1) / 2; // odd kernels: the middle of the flattened taps
        let rec = file.record(name);
        assert_eq!(rec["conv_mask"], "structured", "{name}");
        let centre_nnz = rec["centre_nnz"].as_u64().unwrap();
        let mut kept = 0u64;
        for o in 0..out_ch {
            for i in 0..inp {
                let slice = &mask[(o * inp + i) * taps..(o * inp + i + 1) * taps];
                let ones = slice.iter().filter(|&&b| b != 0.0).count();
                assert!(
                    ones == 0 || ones == taps,
                    "{name}: slice ({o}, {i}) keeps {ones} of {taps} taps"
                );
                let base = (o * inp + i) * taps;
                let centre = w[base + tap];
                // The slice is kept exactly where the centre matrix has a nonzero.
                assert_eq!(ones == taps, centre != 0.0, "{name}: slice ({o}, {i})");
                for t in (0..taps).filter(|&t| t != tap) {
                    assert_eq!(
                        w[base + t],
                        0.0,
                        "{name}: off-centre weight ({o}, {i}, {t})"
                    );
                }
                kept += u64::from(ones == taps);
            }
        }
        assert_eq!(kept, centre_nnz, "{name}");
        let nnz = mask.iter().filter(|&&b| b != 0.0).count() as u64;
        assert_eq!(nnz, centre_nnz * taps as u64, "{name}");
        assert_eq!(rec["nnz"].as_u64().unwrap(), nnz, "{name}");
        // d_H = d: the centre lands within one rotation (2 min(rows, cols) entries per block)
        // of d * out * in, so the tensor within K times that of d * numel.
        let density = rec["density"].as_f64().unwrap();
        assert_eq!(rec["centre_density"].as_f64().unwrap(), density, "{name}");
        let block = (out_ch / groups).min(inp) as f64;
        let slack = 2.0 * block * groups as f64;
        let target = density * (out_ch * inp) as f64;
        assert!(
            (centre_nnz as f64 - target).abs() <= slack,
            "{name}: centre {centre_nnz} vs {target}"
        );
        // Each block of the centre tap is orthogonal: H_b^T H_b = I (or H_b H_b^T for wide).
        let rows = out_ch / groups;
        for g in 0..groups {
            let h = |r: usize, c: usize| w[((g * rows + r) * inp + c) * taps + tap];
            let (n, m, tall) = if rows >= inp {
                (inp, rows, true)
            } else {
                (rows, inp, false)
            };
            for a in 0..n {
                for b in 0..n {
                    let dot: f64 = (0..m)
                        .map(|k| {
                            if tall {
                                h(k, a) * h(k, b)
                            } else {
                                h(a, k) * h(b, k)
                            }
                        })
                        .sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!(
                        (dot - want).abs() < 1e-12,
                        "{name} block {g}: ({a}, {b}) = {dot}"
                    );
                }
            }
        }
    }
    // The layer reading the 3-channel image is dense; the linear layer is plain EOI.
    let stem_mask = file.tensor("stem.weight_mask").values();
    assert!(stem_mask.iter().all(|&b| b == 1.0));
    assert_eq!(file.record("stem.weight")["origin"], "dense");
    assert!(file.record("fc.weight").get("conv_mask").is_none());
}

#[test]
fn plan_shows_the_mask_rule_of_structured_kernels() {
    let sandbox = Sandbox::new();
    let spec = sandbox.write("spec.toml", SPEC);
    let text = stdout(&eoi().arg("plan").arg(&spec).assert().success());
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(
        line("mid.weight").contains("conv_mask=structured"),
        "{text}"
    );
    assert!(
        line("grouped.weight").contains("groups=4 conv_mask=structured"),
        "{text}"
    );
    assert!(!line("fc.weight").contains("conv_mask"), "{text}");
    let plan = eoi()
        .arg("plan")
        .arg(&spec)
        .arg("--json")
        .assert()
        .success();
    let layers = records_by_name(&json(stdout(&plan))["layers"]);
    assert_eq!(layers["mid.weight"]["conv_mask"], "structured");
}

#[test]
fn verify_passes_and_regenerate_reproduces() {
    let sandbox = Sandbox::new();
    let out = generate(&sandbox, SPEC);
    eoi()
        .arg("verify")
        .arg(&out)
        .arg("--regenerate")
        .assert()
        .success()
        .stdout(contains("bit-identical"));
}

#[test]
fn verify_catches_a_partly_kept_slice() {
    let sandbox = Sandbox::new();
    let out = generate(&sandbox, SPEC);
    let mut bytes = fs::read(&out).unwrap();
    // Flip one mask byte of mid.weight_mask: its slice is then partly kept.
    let mask = data_range(&bytes, "mid.weight_mask");
    let at = mask.clone().find(|&k| bytes[k] == 1).unwrap();
    bytes[at] = 0;
    fs::write(&out, &bytes).unwrap();
    eoi()
        .arg("verify")
        .arg(&out)
        .assert()
        .failure()
        .stdout(contains("partly kept"));
}

#[test]
fn image_channels_sets_which_layer_stays_dense() {
    let sandbox = Sandbox::new();
    let text = r#"[sparsity]
density = 0.2
[init]
conv_mask = "structured"
image_channels = 16
[[layer]]
name = "rgb.weight"
shape = [16, 3, 3, 3]
[[layer]]
name = "mid.weight"
shape = [32, 16, 3, 3]
"#;
    let out = generate(&sandbox, text);
    let file = read_safetensors(&out);
    assert!(
        file.tensor("mid.weight_mask")
            .values()
            .iter()
            .all(|&b| b == 1.0)
    );
    assert_eq!(file.record("mid.weight")["origin"], "dense");
    let rgb = file.tensor("rgb.weight_mask").values();
    assert!(rgb.contains(&0.0), "rgb.weight is sparse now");
}

#[test]
fn top_up_is_the_default_and_keeps_the_first_layer_sparse() {
    let sandbox = Sandbox::new();
    let text = SPEC.replace("conv_mask = \"structured\"\n", "");
    let out = generate(&sandbox, &text);
    let file = read_safetensors(&out);
    assert!(file.tensor("stem.weight_mask").values().contains(&0.0));
    assert!(file.record("mid.weight").get("conv_mask").is_none());
}

fn spec_error(text: &str, wants: &[&str]) {
    let sandbox = Sandbox::new();
    let spec = sandbox.write("bad.toml", text);
    let out = sandbox.path("out.safetensors");
    let assert = eoi()
        .arg("generate")
        .arg(&spec)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2);
    let stderr = stderr(&assert);
    for want in wants {
        assert!(stderr.contains(want), "{want:?} not in {stderr}");
    }
    assert!(!out.exists());
}

#[test]
fn bad_values_are_spec_errors_naming_file_and_field() {
    spec_error(
        "[sparsity]\ndensity = 0.2\n[init]\nconv_mask = \"bogus\"\n[[layer]]\nname = \"c\"\nshape = [8, 8, 3, 3]\n",
        &["bad.toml:4", "conv_mask", "bogus"],
    );
    spec_error(
        "[sparsity]\ndensity = 0.2\n[init]\nimage_channels = 0\n[[layer]]\nname = \"c\"\nshape = [8, 8, 3, 3]\n",
        &["bad.toml:4", "image_channels", "got 0"],
    );
    spec_error(
        "[sparsity]\ndensity = 0.2\n[[layer]]\nname = \"c\"\nshape = [8, 8, 3, 3]\nconv_mask = \"sideways\"\n",
        &["bad.toml:6", "layer \"c\"", "conv_mask", "sideways"],
    );
    spec_error(
        "[sparsity]\ndensity = 0.2\n[[layer]]\nname = \"fc\"\nshape = [8, 8]\nconv_mask = \"structured\"\n",
        &["bad.toml:6", "conv_mask", "linear"],
    );
}

//! Structured conv masks (`conv_mask = "structured"`), through the real binary and the files
//! it writes (read with the `safetensors` crate): the mask is the whole kernel slice of every
//! channel pair the centre matrix connects and nothing else, so it holds exactly
//! `centre_nnz * K` ones; the weights are the orthogonal centre matrix at the centre tap; a
//! convolution reading the image (`in` = `image_channels`) stays dense; bad values are spec
//! errors; `verify` passes and `--regenerate` reproduces the file.

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::str::contains;
use safetensors::SafeTensors;
use serde_json::Value;

fn eoi() -> Command {
    let mut command = Command::cargo_bin("eoi").unwrap();
    command.env_remove("RAYON_NUM_THREADS");
    command
}

fn generate(dir: &Path, text: &str) -> PathBuf {
    let spec = dir.join("spec.toml");
    fs::write(&spec, text).unwrap();
    let out = dir.join("out.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec)
        .arg("-o")
        .arg(&out)
        .args(["-q", "--dtype", "f64"])
        .assert()
        .success();
    out
}

/// Every tensor of a file as (shape, f64 values), and its layer records.
#[allow(clippy::type_complexity)]
fn read(path: &Path) -> (Vec<(String, Vec<usize>, Vec<f64>)>, Vec<Value>) {
    let bytes = fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                safetensors::Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::BOOL => view.data().iter().map(|&b| b as f64).collect(),
                other => panic!("unexpected dtype {other:?}"),
            };
            (name, view.shape().to_vec(), values)
        })
        .collect();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let layers = &metadata.metadata().as_ref().unwrap()["eoi.layers"];
    let records = serde_json::from_str::<Value>(layers)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    (tensors, records)
}

fn find<'a>(tensors: &'a [(String, Vec<usize>, Vec<f64>)], name: &str) -> (&'a [usize], &'a [f64]) {
    let (_, shape, values) = tensors.iter().find(|(n, _, _)| n == name).unwrap();
    (shape, values)
}

fn record<'a>(records: &'a [Value], name: &str) -> &'a Value {
    records.iter().find(|r| r["name"] == name).unwrap()
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
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path(), SPEC);
    let (tensors, records) = read(&out);
    for (name, groups) in [("mid.weight", 1), ("tall.weight", 1), ("grouped.weight", 4)] {
        let (shape, w) = find(&tensors, name);
        let (_, mask) = find(&tensors, &format!("{name}_mask"));
        let (out_ch, inp) = (shape[0], shape[1]);
        let taps: usize = shape[2..].iter().product();
        let tap = (taps - 1) / 2; // odd kernels: the middle of the flattened taps
        let rec = record(&records, name);
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
    let (_, stem_mask) = find(&tensors, "stem.weight_mask");
    assert!(stem_mask.iter().all(|&b| b == 1.0));
    assert_eq!(record(&records, "stem.weight")["origin"], "dense");
    assert!(record(&records, "fc.weight").get("conv_mask").is_none());
}

#[test]
fn plan_shows_the_mask_rule_of_structured_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    fs::write(&spec, SPEC).unwrap();
    let assert = eoi().arg("plan").arg(&spec).assert().success();
    let text = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
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
    let json = eoi()
        .arg("plan")
        .arg(&spec)
        .arg("--json")
        .assert()
        .success();
    let json: Value = serde_json::from_slice(&json.get_output().stdout).unwrap();
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(record(layers, "mid.weight")["conv_mask"], "structured");
}

#[test]
fn verify_passes_and_regenerate_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path(), SPEC);
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
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path(), SPEC);
    let mut bytes = fs::read(&out).unwrap();
    // Flip one mask byte of mid.weight_mask: its slice is then partly kept.
    let (start, len) = {
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let view = file.tensor("mid.weight_mask").unwrap();
        let data = view.data();
        let offset = data.as_ptr() as usize - bytes.as_ptr() as usize;
        (offset, data.len())
    };
    let at = (0..len).find(|&k| bytes[start + k] == 1).unwrap();
    bytes[start + at] = 0;
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
    let dir = tempfile::tempdir().unwrap();
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
    let out = generate(dir.path(), text);
    let (tensors, records) = read(&out);
    assert!(
        find(&tensors, "mid.weight_mask")
            .1
            .iter()
            .all(|&b| b == 1.0)
    );
    assert_eq!(record(&records, "mid.weight")["origin"], "dense");
    let rgb = find(&tensors, "rgb.weight_mask").1;
    assert!(rgb.contains(&0.0), "rgb.weight is sparse now");
}

#[test]
fn top_up_is_the_default_and_keeps_the_first_layer_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let text = SPEC.replace("conv_mask = \"structured\"\n", "");
    let out = generate(dir.path(), &text);
    let (tensors, records) = read(&out);
    assert!(find(&tensors, "stem.weight_mask").1.contains(&0.0));
    assert!(record(&records, "mid.weight").get("conv_mask").is_none());
}

fn spec_error(text: &str, wants: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    fs::write(&spec, text).unwrap();
    let out = dir.path().join("out.safetensors");
    let assert = eoi()
        .arg("generate")
        .arg(&spec)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
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

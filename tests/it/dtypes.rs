//! Weight dtypes f16 and bf16 and mask dtypes u8 and f32, on the real binary: the values are
//! EOI's f64 values rounded once (checked by tests/python/check_dtypes.py with NumPy's own
//! casts and an independent bf16 rounding), `eoi verify --regenerate` accepts every
//! combination, and the combinations that cannot be written are refused before any work.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{self, SMALL as SPEC, eoi, json, run_script, small_with_biases};

/// `eoi generate SPEC -q -o DIR/NAME ARGS...`, required to succeed; the output path.
fn generate(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    util::generate(Path::new(SPEC), &out, args);
    out
}

/// Runs tests/python/check_dtypes.py; its exit status, last JSON line and standard error.
fn check(reference: &Path, candidate: &Path) -> (bool, Value, String) {
    let out = run_script("check_dtypes.py", [reference, candidate]);
    let stdout = util::text(&out.stdout);
    let stderr = util::text(&out.stderr);
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line from the checker:\n{stdout}\n{stderr}"));
    (out.status.success(), json, stderr)
}

#[test]
fn half_precision_weights_are_the_f64_values_rounded_once() {
    let dir = tempfile::tempdir().unwrap();
    let reference = generate(dir.path(), "f64.safetensors", &["--dtype", "f64"]);
    for (name, args, dtypes) in [
        (
            "f16.safetensors",
            vec!["--dtype", "f16"],
            vec!["bool", "f16"],
        ),
        (
            "bf16.safetensors",
            vec!["--dtype", "bf16"],
            vec!["bf16", "bool"],
        ),
        (
            "f16-u8",
            vec!["--dtype", "f16", "--mask-dtype", "u8", "--format", "npy"],
            vec!["f16", "u8"],
        ),
        (
            "f32-f32.safetensors",
            vec!["--mask-dtype", "f32"],
            vec!["f32"],
        ),
        (
            "f64-u8.safetensors",
            vec!["--dtype", "f64", "--mask-dtype", "u8"],
            vec!["f64", "u8"],
        ),
    ] {
        let candidate = generate(dir.path(), name, &args);
        let (ok, json, stderr) = check(&reference, &candidate);
        assert!(ok, "{name}: {stderr}");
        assert_eq!(json["failures"], 0, "{name}");
        assert_eq!(json["tensors"], 16, "{name}");
        assert_eq!(json["dtypes"], serde_json::json!(dtypes), "{name}");
    }
    // The checker can fail: other weights (another seed) are not these f64 values rounded.
    let other = generate(
        dir.path(),
        "other.safetensors",
        &["--dtype", "bf16", "--seed", "5"],
    );
    let (ok, json, stderr) = check(&reference, &other);
    assert!(!ok, "a bf16 file of another seed passed");
    assert!(json["failures"].as_u64().unwrap() > 0);
    assert!(
        stderr.contains("not the f64 values rounded once"),
        "{stderr}"
    );
}

#[test]
fn verify_regenerates_every_dtype_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("f16.safetensors", vec!["--dtype", "f16"]),
        (
            "bf16.safetensors",
            vec!["--dtype", "bf16", "--mask-dtype", "u8"],
        ),
        ("f32-mask", vec!["--mask-dtype", "f32", "--format", "npy"]),
    ] {
        let out = generate(dir.path(), name, &args);
        let assert = eoi()
            .arg("verify")
            .arg(&out)
            .args(["--regenerate", "--json"])
            .assert()
            .success();
        let report = json(util::stdout(&assert));
        assert_eq!(report["passed"], true, "{name}: {report}");
        assert_eq!(report["regenerate"]["compared"], 16, "{name}");
    }
    // A bf16 weight with one changed element fails both the regeneration and the checks.
    let file = dir.path().join("bf16.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // The first tensor in the data is a weight (weights come before the 1-byte masks).
    bytes[8 + header + 1] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let assert = eoi()
        .arg("verify")
        .arg(&file)
        .args(["--regenerate", "--json"])
        .assert()
        .code(1);
    let report = json(util::stdout(&assert));
    assert_eq!(report["regenerate"]["passed"], false, "{report}");
}

#[test]
fn bf16_is_refused_for_npy_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("init");
    let assert = eoi()
        .arg("generate")
        .arg(SPEC)
        .arg("-o")
        .arg(&out)
        .args(["--format", "npy", "--dtype", "bf16"])
        .assert()
        .code(2);
    let stderr = util::stderr(&assert);
    assert!(stderr.contains("NumPy has no bf16 type"), "{stderr}");
    assert!(stderr.contains("safetensors"), "{stderr}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn torch_prune_masks_keep_the_weight_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(
        dir.path(),
        "prune.safetensors",
        &["--names", "torch-prune", "--dtype", "bf16"],
    );
    let file = util::read_safetensors(&out);
    let mask = file.tensor("fc1.weight_mask");
    assert_eq!(mask.dtype, safetensors::Dtype::BF16);
    // bf16 1.0 is 0x3F80.
    assert!(
        mask.data
            .chunks_exact(2)
            .all(|c| c == [0, 0] || c == [0x80, 0x3F])
    );
    // Asking for another mask dtype with torch-prune names is a contradiction.
    let assert = eoi()
        .arg("generate")
        .arg(SPEC)
        .arg("-o")
        .arg(dir.path().join("bad.safetensors"))
        .args(["--names", "torch-prune", "--mask-dtype", "u8"])
        .assert()
        .code(2);
    let stderr = util::stderr(&assert);
    assert!(stderr.contains("mask_dtype \"u8\""), "{stderr}");
    assert!(stderr.contains("torch-prune"), "{stderr}");
}

#[test]
fn plan_and_generate_json_name_the_output_choices_and_tensors() {
    let assert = eoi()
        .args(["plan", "--json", "--format", "npz"])
        .arg(SPEC)
        .assert()
        .success();
    let plan = json(util::stdout(&assert));
    assert_eq!(plan["schema_version"], 1);
    assert_eq!(plan["format"], "npz");
    assert_eq!(plan["dtype"], "f32");
    assert_eq!(plan["mask_dtype"], "bool");
    assert_eq!(plan["layout"], "torch");
    assert_eq!(plan["names"], "plain");
    let tensors = plan["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 16);
    assert_eq!(
        tensors[1],
        serde_json::json!({"name": "stem.weight_mask", "dtype": "bool", "shape": [16, 3, 3, 3]})
    );
    let dir = tempfile::tempdir().unwrap();
    let assert = eoi()
        .arg("generate")
        .arg(SPEC)
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .args([
            "-q",
            "--json",
            "--dtype",
            "bf16",
            "--names",
            "torch-prune",
            "--layout",
            "flax",
        ])
        .assert()
        .success();
    let report = json(util::stdout(&assert));
    assert_eq!(report["dtype"], "bf16");
    assert_eq!(report["mask_dtype"], "bf16");
    assert_eq!(report["layout"], "flax");
    assert_eq!(report["names"], "torch-prune");
}

#[test]
fn biases_are_rounded_once_like_the_weights() {
    // A bias is written in its weight's dtype by the same conversion: its f16 and bf16
    // values are its f64 values rounded once, in a safetensors file and an npy directory.
    let dir = tempfile::tempdir().unwrap();
    let spec = small_with_biases(dir.path());
    let run = |name: &str, args: &[&str]| {
        let out = dir.path().join(name);
        util::generate(&spec, &out, args);
        out
    };
    let reference = run("f64.safetensors", &["--dtype", "f64"]);
    for (name, args) in [
        ("f16.safetensors", vec!["--dtype", "f16"]),
        ("bf16.safetensors", vec!["--dtype", "bf16"]),
        ("f32", vec!["--format", "npy"]),
    ] {
        let candidate = run(name, &args);
        let (ok, json, stderr) = check(&reference, &candidate);
        assert!(ok, "{name}: {stderr}");
        // 8 layers: weight, mask and bias each.
        assert_eq!(json["tensors"], 24, "{name}");
    }
}

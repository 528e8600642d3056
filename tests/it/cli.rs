//! End-to-end tests of the `eoi` binary. Every test runs the real program in a temporary
//! directory and reads what it wrote back with independent readers (the `safetensors` crate,
//! `ndarray-npy`, `serde_json`), never with eoi's own code; the maths (orthogonality, masks,
//! densities) is recomputed here from the values on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use predicates::prelude::*;
use predicates::str::contains;
use safetensors::Dtype;
use serde_json::Value;

use crate::util::{
    Checkpoint, Sandbox, bundled_specs, contents, eoi_after, eoi_process, files_under, gram_error,
    json, manifest, read_npy_as, read_safetensors, read_then_close, records_by_name, repo, stderr,
    stdout,
};

/// The name every test gives its spec inside the sandbox.
const SPEC: &str = "spec.toml";

/// A small model with every shape class: wide, tall and square matrices (one with its own
/// gain) and 1-D, 2-D and 3-D convolutions (one with an even kernel).
const MODEL: &str = r#"seed = 5

[sparsity]
density = 0.25

[init]
gain = "tanh"

[[layer]]
name = "fc_wide.weight"
shape = [8, 20]

[[layer]]
name = "fc_tall.weight"
shape = [24, 6]

[[layer]]
name = "fc_square.weight"
shape = [12, 12]
gain = 0.5

[[layer]]
name = "conv.weight"
shape = [16, 8, 3, 3]

[[layer]]
name = "conv1d.weight"
shape = [6, 10, 4]

[[layer]]
name = "conv3d.weight"
shape = [7, 5, 3, 3, 3]
"#;

const TANH: f64 = 5.0 / 3.0;

/// MODEL's layers as the test expects them: name, shape, gain (density 0.25 for all).
const MODEL_LAYERS: &[(&str, &[usize], f64)] = &[
    ("fc_wide.weight", &[8, 20], TANH),
    ("fc_tall.weight", &[24, 6], TANH),
    ("fc_square.weight", &[12, 12], 0.5),
    ("conv.weight", &[16, 8, 3, 3], TANH),
    ("conv1d.weight", &[6, 10, 4], TANH),
    ("conv3d.weight", &[7, 5, 3, 3, 3], TANH),
];

const MODEL_DENSITY: f64 = 0.25;

/// A spec with enough sizeable layers that several threads really interleave.
fn many_layers() -> String {
    format!(
        "{MODEL}\n[[layer]]\nname = \"big.{{i}}.weight\"\nshape = [96, 80]\nrepeat = 8\n\n\
         [[layer]]\nname = \"bigconv.{{i}}.weight\"\nshape = [32, 24, 3, 3]\nrepeat = 4\n"
    )
}

// ---------------------------------------------------------------------------------------
// Running the binary and checking what it wrote

/// Writes `spec` to `spec.toml` and runs `eoi args...` in the sandbox.
fn run(sandbox: &Sandbox, spec: &str, args: &[&str]) -> assert_cmd::assert::Assert {
    sandbox.write(SPEC, spec);
    sandbox.eoi(args)
}

/// Generates `spec` to the safetensors file `out` and returns its bytes.
fn generate_bytes(sandbox: &Sandbox, spec: &str, out: &str, args: &[&str]) -> Vec<u8> {
    sandbox.generate(spec, out, args).success();
    sandbox.read(out)
}

fn mask_name(layer: &str) -> String {
    format!("{layer}_mask")
}

/// Checks one layer of a checkpoint against the definition of EOI (EOI.md) and returns the
/// number of ones in its mask.
fn check_layer(
    checkpoint: &Checkpoint,
    name: &str,
    shape: &[usize],
    density: f64,
    gain: f64,
    tolerance: f64,
) -> u64 {
    let weight = checkpoint.tensor(name);
    let mask_tensor = checkpoint.tensor(&mask_name(name));
    assert_eq!(weight.shape, shape, "{name}: weight shape");
    assert_eq!(mask_tensor.shape, shape, "{name}: mask shape");
    let values = weight.values();
    let mask = mask_tensor.mask();
    for (k, (&v, &m)) in values.iter().zip(&mask).enumerate() {
        assert!(
            m || v == 0.0,
            "{name}: weight {k} = {v} lies outside the mask"
        );
    }
    let ones = mask.iter().filter(|&&m| m).count() as u64;
    let (out, inp) = (shape[0], shape[1]);
    let numel = weight.numel() as f64;
    if shape.len() == 2 {
        let error = gram_error(&values, out, inp, gain);
        assert!(error < tolerance, "{name}: not orthogonal, error {error}");
        // EOI stops within one rotation (at most n new nonzeros) of the target, and never
        // below the identity's n nonzeros.
        let n = out.min(inp) as f64;
        let target = density * numel;
        assert!(
            ones as f64 >= n,
            "{name}: {ones} ones, fewer than the identity"
        );
        if target > n {
            assert!(
                (ones as f64 - target).abs() <= n,
                "{name}: {ones} ones, target {target}"
            );
        }
    } else {
        let kernel = &shape[2..];
        let taps: usize = kernel.iter().product();
        let centre = kernel.iter().fold(0, |index, &k| index * k + (k - 1) / 2);
        let mut h = Vec::with_capacity(out * inp);
        for (k, &v) in values.iter().enumerate() {
            if k % taps == centre {
                h.push(v);
            } else {
                assert_eq!(v, 0.0, "{name}: element {k} is off the centre tap {centre}");
            }
        }
        let error = gram_error(&h, out, inp, gain);
        assert!(
            error < tolerance,
            "{name}: centre not orthogonal, error {error}"
        );
        let centre_support = h.iter().filter(|&&v| v != 0.0).count() as u64;
        let expected = ((density * numel).ceil() as u64).max(centre_support);
        assert_eq!(
            ones, expected,
            "{name}: mask ones (centre support {centre_support})"
        );
    }
    ones
}

/// Checks every layer of MODEL in a checkpoint, and the per-layer provenance records
/// against the masks on disk.
fn check_model(checkpoint: &Checkpoint, tolerance: f64) {
    let records = checkpoint.layer_records();
    assert_eq!(records.len(), MODEL_LAYERS.len());
    assert_eq!(checkpoint.tensors.len(), 2 * MODEL_LAYERS.len());
    for &(name, shape, gain) in MODEL_LAYERS {
        let ones = check_layer(checkpoint, name, shape, MODEL_DENSITY, gain, tolerance);
        let record = &records[name];
        let numel: usize = shape.iter().product();
        assert_eq!(record["nnz"].as_u64(), Some(ones), "{name}: nnz");
        assert_eq!(
            record["achieved_density"].as_f64(),
            Some(ones as f64 / numel as f64),
            "{name}: achieved_density"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. safetensors output

#[test]
fn safetensors_output_holds_orthogonal_weights_masks_and_provenance() {
    let sandbox = Sandbox::new();
    sandbox.generate(MODEL, "init.safetensors", &[]).success();
    let checkpoint = read_safetensors(&sandbox.path("init.safetensors"));

    let names: BTreeSet<String> = MODEL_LAYERS
        .iter()
        .flat_map(|&(n, _, _)| [n.to_string(), mask_name(n)])
        .collect();
    assert_eq!(
        checkpoint.tensors.keys().cloned().collect::<BTreeSet<_>>(),
        names
    );
    for &(name, _, _) in MODEL_LAYERS {
        assert_eq!(checkpoint.tensor(name).dtype, Dtype::F32, "{name}");
        assert_eq!(
            checkpoint.tensor(&mask_name(name)).dtype,
            Dtype::BOOL,
            "{name}"
        );
    }
    check_model(&checkpoint, 1e-5);

    assert_eq!(checkpoint.meta("format"), "pt");
    assert_eq!(checkpoint.meta("eoi.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(checkpoint.meta("eoi.stream_version"), "1");
    assert_eq!(checkpoint.meta("eoi.seed"), "5");
    assert_eq!(checkpoint.meta("eoi.spec"), MODEL);
}

#[test]
fn the_seed_option_is_recorded() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(MODEL, "init.safetensors", &["--seed", "123"])
        .success();
    let checkpoint = read_safetensors(&sandbox.path("init.safetensors"));
    assert_eq!(checkpoint.meta("eoi.seed"), "123");
    check_model(&checkpoint, 1e-5);
}

#[test]
fn conv_masks_hold_the_target_or_the_whole_centre_support() {
    // A 1x1 conv: the centre matrix is the whole kernel, so EOI's stop rule lands its
    // support a little below ceil(d * numel) (topped up) or above it (kept as is).
    let spec = "[sparsity]\ndensity = 0.31\n\n[init]\nconv_center = \"same\"\n\n\
                [[layer]]\nname = \"pw.weight\"\nshape = [16, 16, 1, 1]\n";
    let target = (0.31f64 * 256.0).ceil() as u64;
    let sandbox = Sandbox::new();
    let (mut topped_up, mut kept) = (0, 0);
    for seed in 0..12 {
        let out = format!("pw{seed}.safetensors");
        sandbox
            .generate(spec, &out, &["--seed", &seed.to_string()])
            .success();
        let checkpoint = read_safetensors(&sandbox.path(&out));
        let ones = check_layer(&checkpoint, "pw.weight", &[16, 16, 1, 1], 0.31, 1.0, 1e-5);
        if ones == target {
            topped_up += 1;
        } else {
            kept += 1;
        }
    }
    assert!(
        topped_up > 0 && kept > 0,
        "both cases: {topped_up} topped up, {kept} kept"
    );
}

#[test]
fn layers_below_the_minimum_can_be_clamped_to_the_identity() {
    let spec = "[sparsity]\ndensity = 0.001\nbelow_minimum = \"clamp\"\n\n\
                [[layer]]\nname = \"fc\"\nshape = [100, 50]\n";
    let sandbox = Sandbox::new();
    let assert = sandbox.generate(spec, "init.safetensors", &[]).success();
    let stderr = stderr(&assert);
    assert!(stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains("layer \"fc\""), "{stderr}");
    assert!(stderr.contains("0.010000"), "{stderr}");
    let checkpoint = read_safetensors(&sandbox.path("init.safetensors"));
    // Density 1/100: the identity's 50 nonzeros, already orthogonal.
    let ones = check_layer(&checkpoint, "fc", &[100, 50], 0.01, 1.0, 1e-6);
    assert_eq!(ones, 50);
}

// ---------------------------------------------------------------------------------------
// 2. npy output

#[test]
fn npy_output_matches_the_safetensors_output() {
    let sandbox = Sandbox::new();
    sandbox.generate(MODEL, "init.safetensors", &[]).success();
    sandbox
        .generate(MODEL, "init", &["--format", "npy"])
        .success();
    let checkpoint = read_safetensors(&sandbox.path("init.safetensors"));
    let dir = sandbox.path("init");

    let mut expected_files: Vec<PathBuf> = checkpoint
        .tensors
        .keys()
        .map(|name| PathBuf::from(format!("{name}.npy")))
        .collect();
    expected_files.push(PathBuf::from("manifest.json"));
    expected_files.sort();
    assert_eq!(files_under(&dir, true), expected_files);

    for (name, tensor) in &checkpoint.tensors {
        let from_npy = read_npy_as(&dir.join(format!("{name}.npy")), tensor.dtype);
        assert_eq!(&from_npy, tensor, "{name}: npy and safetensors differ");
    }

    let manifest = manifest(&dir);
    let listed: BTreeMap<String, (String, Value)> = manifest["tensors"]
        .as_array()
        .expect("manifest has no tensors list")
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap().to_string();
            let file = t["file"].as_str().unwrap().to_string();
            (name, (file, t["shape"].clone()))
        })
        .collect();
    assert_eq!(listed.len(), checkpoint.tensors.len());
    for (name, tensor) in &checkpoint.tensors {
        let (file, shape) = &listed[name];
        assert_eq!(file, &format!("{name}.npy"));
        assert_eq!(shape, &serde_json::json!(tensor.shape));
    }
    assert_eq!(manifest["spec"].as_str(), Some(MODEL));
    assert_eq!(
        records_by_name(&manifest["layers"]),
        checkpoint.layer_records()
    );
}

// ---------------------------------------------------------------------------------------
// 3. f64

#[test]
fn f64_output_rounds_to_the_f32_output() {
    let sandbox = Sandbox::new();
    sandbox.generate(MODEL, "f32.safetensors", &[]).success();
    sandbox
        .generate(MODEL, "f64.safetensors", &["--dtype", "f64"])
        .success();
    let single = read_safetensors(&sandbox.path("f32.safetensors"));
    let double = read_safetensors(&sandbox.path("f64.safetensors"));
    check_model(&double, 1e-12);
    for &(name, _, _) in MODEL_LAYERS {
        assert_eq!(double.tensor(name).dtype, Dtype::F64, "{name}");
        let rounded: Vec<u32> = double
            .tensor(name)
            .values()
            .into_iter()
            .map(|v| (v as f32).to_bits())
            .collect();
        let stored: Vec<u32> = single
            .tensor(name)
            .f32s()
            .into_iter()
            .map(f32::to_bits)
            .collect();
        assert_eq!(rounded, stored, "{name}");
        let mask = mask_name(name);
        assert_eq!(double.tensor(&mask), single.tensor(&mask), "{mask}");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Determinism

#[test]
fn the_same_spec_gives_the_same_bytes() {
    let sandbox = Sandbox::new();
    let spec = many_layers();
    let first = generate_bytes(&sandbox, &spec, "a.safetensors", &[]);
    let second = generate_bytes(&sandbox, &spec, "b.safetensors", &[]);
    assert!(first == second, "two runs of the same spec differ");
    sandbox.generate(&spec, "a", &["--format", "npy"]).success();
    sandbox.generate(&spec, "b", &["--format", "npy"]).success();
    assert!(contents(&sandbox.path("a")) == contents(&sandbox.path("b")));
}

#[test]
fn thread_counts_do_not_change_the_bytes() {
    let sandbox = Sandbox::new();
    let spec = many_layers();
    let reference = generate_bytes(&sandbox, &spec, "default.safetensors", &[]);
    for threads in ["1", "2", "7"] {
        let out = format!("threads{threads}.safetensors");
        let bytes = generate_bytes(&sandbox, &spec, &out, &["--threads", threads]);
        assert!(bytes == reference, "--threads {threads} changed the bytes");
    }
    for threads in ["1", "2"] {
        let out = format!("env{threads}.safetensors");
        fs::write(sandbox.path(SPEC), &spec).unwrap();
        sandbox
            .command()
            .env("RAYON_NUM_THREADS", threads)
            .args(["generate", SPEC, "-o", &out])
            .assert()
            .success();
        let bytes = fs::read(sandbox.path(&out)).unwrap();
        assert!(
            bytes == reference,
            "RAYON_NUM_THREADS={threads} changed the bytes"
        );
    }
}

#[test]
fn another_seed_changes_every_weight() {
    let sandbox = Sandbox::new();
    sandbox.generate(MODEL, "a.safetensors", &[]).success();
    sandbox
        .generate(MODEL, "b.safetensors", &["--seed", "6"])
        .success();
    let a = read_safetensors(&sandbox.path("a.safetensors"));
    let b = read_safetensors(&sandbox.path("b.safetensors"));
    for &(name, _, _) in MODEL_LAYERS {
        assert_ne!(a.tensor(name).data, b.tensor(name).data, "{name}");
    }
}

#[test]
fn adding_a_layer_changes_no_other_tensor() {
    let extra = "\n[[layer]]\nname = \"extra.weight\"\nshape = [10, 30]\n";
    // The new layer goes first, so every other layer moves in the file.
    let (head, layers) = MODEL.split_once("\n[[layer]]").unwrap();
    let extended = format!("{head}{extra}\n[[layer]]{layers}");
    let sandbox = Sandbox::new();
    sandbox.generate(MODEL, "a.safetensors", &[]).success();
    sandbox.generate(&extended, "b.safetensors", &[]).success();
    let a = read_safetensors(&sandbox.path("a.safetensors"));
    let b = read_safetensors(&sandbox.path("b.safetensors"));
    assert_eq!(b.tensors.len(), a.tensors.len() + 2);
    for (name, tensor) in &a.tensors {
        assert_eq!(b.tensor(name), tensor, "{name} changed");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Overwriting and failed runs

const PRECIOUS: &[u8] = b"not a checkpoint, and not eoi's to replace";

#[test]
fn an_existing_output_needs_force() {
    let sandbox = Sandbox::new();
    let out = sandbox.path("init.safetensors");
    fs::write(&out, PRECIOUS).unwrap();
    sandbox
        .generate(MODEL, "init.safetensors", &[])
        .code(2)
        .stderr(contains("--force"));
    assert_eq!(fs::read(&out).unwrap(), PRECIOUS);
    assert_eq!(sandbox.leftovers(), Vec::<PathBuf>::new());

    sandbox
        .generate(MODEL, "init.safetensors", &["--force"])
        .success();
    check_model(&read_safetensors(&out), 1e-5);
}

#[test]
fn an_existing_npy_output_needs_force() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("init");
    sandbox
        .generate(MODEL, "init", &["--format", "npy"])
        .success();
    let before = contents(&dir);
    sandbox
        .generate(MODEL, "init", &["--format", "npy", "--seed", "9"])
        .code(2)
        .stderr(contains("--force"));
    assert!(contents(&dir) == before, "a refused run changed the output");

    sandbox
        .generate(
            MODEL,
            "init",
            &["--format", "npy", "--seed", "9", "--force"],
        )
        .success();
    let manifest = manifest(&dir);
    assert_eq!(manifest["seed"].as_u64(), Some(9));
    assert_eq!(sandbox.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn force_never_replaces_a_directory_eoi_did_not_write() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("results");
    fs::create_dir_all(dir.join("run1")).unwrap();
    fs::write(dir.join("notes.txt"), PRECIOUS).unwrap();
    // A manifest.json of someone else's (valid JSON, but not eoi's).
    fs::write(dir.join("manifest.json"), b"{\"tensors\": []}").unwrap();
    fs::write(dir.join("run1").join("weights.npy"), PRECIOUS).unwrap();
    let before = contents(&dir);
    sandbox
        .generate(MODEL, "results", &["--format", "npy", "--force"])
        .code(2);
    assert!(contents(&dir) == before, "the directory was changed");
    assert_eq!(sandbox.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_spec_error_leaves_the_existing_output_alone() {
    let sandbox = Sandbox::new();
    let out = sandbox.path("init.safetensors");
    fs::write(&out, PRECIOUS).unwrap();
    sandbox
        .generate(
            "[sparsity]\ndensity = 2\n",
            "init.safetensors",
            &["--force"],
        )
        .code(2);
    assert_eq!(fs::read(&out).unwrap(), PRECIOUS);
    assert_eq!(sandbox.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_missing_output_directory_is_a_usage_error() {
    let sandbox = Sandbox::new();
    for (out, args) in [
        ("missing/init.safetensors", &[][..]),
        ("missing/init", &["--format", "npy"][..]),
    ] {
        sandbox
            .generate(MODEL, out, args)
            .code(2)
            .stderr(contains("missing"));
        assert!(!sandbox.path("missing").exists());
    }
    assert_eq!(sandbox.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_run_failing_while_writing_cleans_up_and_keeps_the_old_output() {
    // A 300-byte tensor name is fine in safetensors but cannot be an .npy file name, so the
    // npy run fails half-way, after its staging directory exists.
    let long = "a".repeat(300);
    let spec = format!(
        "[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"ok\"\nshape = [4, 4]\n\n\
         [[layer]]\nname = \"{long}\"\nshape = [4, 4]\n"
    );
    let sandbox = Sandbox::new();
    let dir = sandbox.path("init");
    sandbox
        .generate(MODEL, "init", &["--format", "npy"])
        .success();
    let before = contents(&dir);
    sandbox
        .generate(&spec, "init", &["--format", "npy", "--force"])
        .code(1);
    assert!(contents(&dir) == before, "a failed run changed the output");
    assert_eq!(sandbox.leftovers(), Vec::<PathBuf>::new());
}

#[cfg(unix)]
#[test]
fn outputs_get_ordinary_permissions_under_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    fs::write(sandbox.path(SPEC), MODEL).unwrap();
    for args in [
        &["-o", "init.safetensors"][..],
        &["-o", "init", "--format", "npy"],
    ] {
        eoi_after("umask 027")
            .current_dir(sandbox.dir())
            .args(["generate", SPEC])
            .args(args)
            .assert()
            .success();
    }
    let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(sandbox.path("init.safetensors")), 0o640);
    assert_eq!(mode(sandbox.path("init")), 0o750);
    assert_eq!(mode(sandbox.path("init").join("manifest.json")), 0o640);
    assert_eq!(mode(sandbox.path("init").join("conv.weight.npy")), 0o640);
}

// ---------------------------------------------------------------------------------------
// 6. Spec errors

/// `spec.toml:LINE:COLUMN` of the first occurrence of `needle` (columns count characters).
fn position_of(text: &str, needle: &str) -> String {
    let offset = text.find(needle).expect("needle not in the spec");
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
    format!("{SPEC}:{line}:{column}")
}

/// Runs a spec that must be refused by both commands with exit 2, and checks that nothing was
/// written. Returns the error text (standard error).
fn refused(sandbox: &Sandbox, spec: &[u8]) -> String {
    fs::write(sandbox.path(SPEC), spec).unwrap();
    let plan = sandbox.command().args(["plan", SPEC]).assert().code(2);
    let generate = sandbox
        .command()
        .args(["generate", SPEC, "-o", "init.safetensors"])
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty());
    assert!(!sandbox.path("init.safetensors").exists());
    assert_eq!(sandbox.leftovers(), Vec::<PathBuf>::new());
    let planned = stderr(&plan);
    let stderr = stderr(&generate);
    assert_eq!(planned, stderr, "plan and generate report differently");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

const ONE_LAYER: &str = "[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"fc\"\nshape = [4, 4]\n";

#[test]
fn spec_errors_name_the_place_the_layer_and_the_field() {
    // (what, spec, where the error points, what the message must say)
    let cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "unknown key",
            format!("{ONE_LAYER}densty = 0.5\n"),
            "densty",
            &[
                "layer \"fc\"",
                "unknown key `densty`",
                "did you mean `density`?",
            ],
        ),
        (
            "density above 1",
            format!("{ONE_LAYER}density = 1.5\n"),
            "1.5",
            &["layer \"fc\", field `density`", "(0, 1]", "1.5"],
        ),
        (
            "zero in a shape",
            ONE_LAYER.replace("[4, 4]", "[4, 0]"),
            "[4, 0]",
            &["layer \"fc\", field `shape`", "at least 1"],
        ),
        (
            "duplicate after repeat",
            format!("{ONE_LAYER}\n[[layer]]\nname = \"fc{{i}}\"\nshape = [4, 4]\nrepeat = 3\n")
                .replace("\"fc\"", "\"fc1\""),
            "\"fc{i}\"",
            &[
                "layer \"fc{i}\", field `name`",
                "duplicate layer name \"fc1\"",
            ],
        ),
        (
            "repeat without {i}",
            format!("{ONE_LAYER}repeat = 7\n"),
            "7",
            &["layer \"fc\", field `repeat`", "{i}"],
        ),
        (
            "density below EOI's minimum",
            "[sparsity]\ndensity = 0.001\n\n[[layer]]\nname = \"fc\"\nshape = [100, 50]\n".into(),
            "\"fc\"",
            &[
                "layer \"fc\"",
                "0.001",
                "0.010000",
                "below_minimum = \"clamp\"",
            ],
        ),
    ];
    let sandbox = Sandbox::new();
    for (what, spec, at, expected) in cases {
        let stderr = refused(&sandbox, spec.as_bytes());
        let position = position_of(&spec, at);
        assert!(
            stderr.contains(&position),
            "{what}: no {position} in\n{stderr}"
        );
        for text in expected {
            assert!(stderr.contains(text), "{what}: no {text:?} in\n{stderr}");
        }
    }
}

#[test]
fn unreadable_and_empty_specs_are_refused() {
    let sandbox = Sandbox::new();
    for empty in ["", "\n  \n# only a comment\n"] {
        let stderr = refused(&sandbox, empty.as_bytes());
        assert!(
            stderr.contains(SPEC) && stderr.contains("empty"),
            "{stderr}"
        );
    }

    let stderr = refused(
        &sandbox,
        b"[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"f\xff\"\n",
    );
    assert!(
        stderr.contains("spec.toml:4:10") && stderr.contains("UTF-8"),
        "{stderr}"
    );

    sandbox
        .command()
        .args(["generate", "missing.toml", "-o", "init.safetensors"])
        .assert()
        .code(2)
        .stderr(contains("missing.toml"));
    sandbox
        .command()
        .args(["plan", "missing.toml"])
        .assert()
        .code(2)
        .stderr(contains("missing.toml"));
    assert!(!sandbox.path("init.safetensors").exists());
}

#[test]
fn columns_count_characters_in_every_spec_error() {
    // Column 10 is the character after `name = "é`, however many bytes `é` takes. TOML
    // errors count characters; the UTF-8 check must count the same way.
    let sandbox = Sandbox::new();
    let toml_error = refused(
        &sandbox,
        "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"é\"x\n".as_bytes(),
    );
    assert!(toml_error.contains("spec.toml:4:11"), "{toml_error}");
    let mut bytes = "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"é"
        .as_bytes()
        .to_vec();
    bytes.extend_from_slice(b"\xff\"\n");
    let utf8_error = refused(&sandbox, &bytes);
    assert!(utf8_error.contains("spec.toml:4:10"), "{utf8_error}");
}

#[test]
fn bad_command_lines_are_usage_errors() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(MODEL, "init.safetensors", &["--threads", "0"])
        .code(2);
    sandbox
        .generate(MODEL, "init.safetensors", &["--dtype", "f8"])
        .code(2);
    run(&sandbox, MODEL, &["generate", SPEC])
        .code(2)
        .stderr(contains("--output"));
    assert!(!sandbox.path("init.safetensors").exists());
}

// ---------------------------------------------------------------------------------------
// 7. JSON

#[test]
fn plan_json_describes_every_layer() {
    let sandbox = Sandbox::new();
    let assert = run(&sandbox, MODEL, &["plan", SPEC, "--json"]).success();
    let plan = json(stdout(&assert));
    assert_eq!(plan["schema_version"].as_u64(), Some(1));
    let density = plan["density"].as_f64().expect("no top-level density");
    assert!((density - MODEL_DENSITY).abs() < 1e-12, "{density}");
    let layers = plan["layers"].as_array().expect("no layers");
    assert_eq!(layers.len(), MODEL_LAYERS.len());
    for (layer, &(name, shape, _)) in layers.iter().zip(MODEL_LAYERS) {
        assert_eq!(layer["name"].as_str(), Some(name));
        assert_eq!(layer["shape"], serde_json::json!(shape));
        assert_eq!(layer["density"].as_f64(), Some(MODEL_DENSITY), "{name}");
    }
    assert!(!sandbox.path("init.safetensors").exists());
}

#[test]
fn plan_json_spreads_erk_to_the_overall_density() {
    let spec = fs::read_to_string(repo("specs/mlp-mnist.toml")).unwrap();
    let sandbox = Sandbox::new();
    let assert = run(&sandbox, &spec, &["plan", SPEC, "--json"]).success();
    let plan = json(stdout(&assert));
    let layers = plan["layers"].as_array().unwrap();
    let (mut kept, mut total) = (0.0, 0.0);
    for layer in layers {
        let numel: f64 = layer["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap())
            .product();
        kept += layer["density"].as_f64().unwrap() * numel;
        total += numel;
    }
    assert!((kept / total - 0.05).abs() < 1e-9, "{}", kept / total);
    assert!((plan["density"].as_f64().unwrap() - 0.05).abs() < 1e-9);
    // ERK gives the first layer less than the square ones and the last one more.
    let d = |k: usize| layers[k]["density"].as_f64().unwrap();
    assert!(d(0) < d(1) && d(1) < d(6), "{} {} {}", d(0), d(1), d(6));
}

#[test]
fn generate_json_goes_to_stdout_and_the_summary_to_stderr() {
    let sandbox = Sandbox::new();
    let assert = sandbox
        .generate(MODEL, "init.safetensors", &["--json"])
        .success();
    // The whole of standard output is one JSON document.
    let summary = json(stdout(&assert));
    let stderr = stderr(&assert);
    assert!(
        stderr.contains("wrote") && stderr.contains("init.safetensors"),
        "{stderr}"
    );
    assert!(!stderr.contains('{'), "JSON on stderr: {stderr}");

    let checkpoint = read_safetensors(&sandbox.path("init.safetensors"));
    let records = records_by_name(&summary["layers"]);
    assert_eq!(records.len(), MODEL_LAYERS.len());
    let mut total = 0;
    for &(name, _, _) in MODEL_LAYERS {
        let ones = checkpoint
            .tensor(&mask_name(name))
            .mask()
            .into_iter()
            .filter(|&m| m)
            .count() as u64;
        assert_eq!(records[name]["nnz"].as_u64(), Some(ones), "{name}");
        total += ones;
    }
    assert_eq!(summary["nnz"].as_u64(), Some(total));

    let quiet = sandbox
        .generate(MODEL, "quiet.safetensors", &["--json", "-q"])
        .success()
        .stderr(predicate::str::is_empty());
    json(stdout(&quiet));
    sandbox
        .generate(MODEL, "quieter.safetensors", &["-q"])
        .success()
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::is_empty());
}

// ---------------------------------------------------------------------------------------
// 8. Standard input

#[test]
fn a_spec_from_stdin_gives_the_same_bytes_as_from_a_file() {
    let sandbox = Sandbox::new();
    let from_file = generate_bytes(&sandbox, MODEL, "file.safetensors", &[]);
    sandbox
        .command()
        .args(["generate", "-", "-o", "stdin.safetensors"])
        .write_stdin(MODEL)
        .assert()
        .success();
    let from_stdin = fs::read(sandbox.path("stdin.safetensors")).unwrap();
    assert!(from_file == from_stdin, "stdin and file outputs differ");

    let bad = ONE_LAYER.replace("[4, 4]", "[4, 0]");
    sandbox
        .command()
        .args(["plan", "-"])
        .write_stdin(bad.clone())
        .assert()
        .code(2)
        .stderr(contains(
            position_of(&bad, "[4, 0]").replace(SPEC, "<stdin>"),
        ));
}

// ---------------------------------------------------------------------------------------
// 9. Version and help

#[test]
fn version_and_help_say_what_users_need() {
    let sandbox = Sandbox::new();
    sandbox
        .command()
        .arg("--version")
        .assert()
        .success()
        .stdout(contains("random streams v1").and(contains(env!("CARGO_PKG_VERSION"))));
    for command in ["generate", "plan"] {
        sandbox
            .command()
            .args([command, "--help"])
            .assert()
            .success()
            .stdout(contains("Examples:").and(contains(format!("eoi {command} "))));
    }
}

// ---------------------------------------------------------------------------------------
// 10. Closed pipes

#[test]
fn a_closed_pipe_ends_the_run_quietly() {
    let sandbox = Sandbox::new();
    // 86 kB of plan, and 20,000 layers: 1.6 MB, more than a pipe holds (at most 1 MiB).
    let huge = "[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"h.{i}.weight\"\nshape = [8, 8]\nrepeat = 20000\n";
    fs::write(sandbox.path(SPEC), huge).unwrap();
    let bundled = repo("specs/mlp-1000-tanh.toml");
    let bundled = bundled.to_str().unwrap();
    for args in [
        &["plan", bundled][..],
        &["plan", SPEC],
        &["plan", SPEC, "--json"],
    ] {
        let (_, output) = read_then_close(eoi_process().args(args).current_dir(sandbox.dir()), 16);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {:?}",
            output.status
        );
        assert!(
            output.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------
// 11. Bundled specs

#[test]
fn every_bundled_spec_plans() {
    let sandbox = Sandbox::new();
    for spec in &bundled_specs() {
        let assert = sandbox
            .command()
            .arg("plan")
            .arg(spec)
            .arg("--json")
            .assert()
            .success();
        let plan = json(stdout(&assert));
        assert!(
            !plan["layers"].as_array().unwrap().is_empty(),
            "{}",
            spec.display()
        );
        sandbox.command().arg("plan").arg(spec).assert().success();
    }
}

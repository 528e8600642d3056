//! Interoperability with the user's side: artifacts written by the real `eoi` binary are
//! loaded with the official Python `safetensors` and `numpy` packages by
//! `tests/python/check_artifact.py`, which checks masks, shapes, dtypes, nonzero counts and
//! exact orthogonality independently of the Rust code. The bytes Python sees are compared,
//! tensor by tensor (SHA-256), with what the Rust `safetensors` and `ndarray-npy` crates read.
//!
//! The interpreter is `$EOI_PYTHON` (default `python3`); `scripts/test` creates a virtual
//! environment with the right packages and sets it. Without numpy and safetensors these tests
//! fail, they do not skip.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Output;

use safetensors::Dtype;
use serde_json::Value;

use crate::util::{
    Needs, Sandbox, data_range, eoi_process, generate, json, json_from, manifest, python,
    read_npy_as, read_safetensors, records_by_name, repo, run_script, sha256, text,
};

/// Runs tests/python/check_artifact.py ARGS... ARTIFACT.
fn run_checker(args: &[&str], artifact: &Path) -> Output {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(artifact.as_os_str());
    run_script("check_artifact.py", all)
}

/// The checker's verdict on a good artifact: its final JSON line.
#[derive(Debug)]
struct Report {
    tensors: u64,
    layers: u64,
    max_orthogonality_error: f64,
    /// Approximate-isometry layers whose error NumPy recomputed and found as recorded.
    isometry_layers: u64,
}

/// Runs the checker on `artifact`, requires it to pass and returns its final JSON line.
fn check(artifact: &Path) -> Report {
    let out = run_checker(&[], artifact);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "check_artifact.py rejected {} ({}):\n{stdout}\n{}",
        artifact.display(),
        out.status,
        text(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("the checker prints a JSON line");
    let json: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the checker's last line is not JSON ({e}): {last}"));
    assert_eq!(json["failures"], 0, "{stdout}");
    Report {
        tensors: json["tensors"].as_u64().expect("tensors"),
        layers: json["layers"].as_u64().expect("layers"),
        max_orthogonality_error: json["max_orthogonality_error"]
            .as_f64()
            .expect("max_orthogonality_error"),
        isometry_layers: json["isometry_layers"].as_u64().expect("isometry_layers"),
    }
}

/// Runs the checker on a broken artifact, requires exit code 1 and returns its stderr.
fn check_fails(artifact: &Path) -> String {
    let out = run_checker(&[], artifact);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check_artifact.py should reject {}:\n{}\n{}",
        artifact.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// One tensor as seen by a reader: SHA-256 of its C-order bytes, NumPy dtype name, shape.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    sha256: String,
    dtype: String,
    shape: Vec<usize>,
}

/// Every tensor as Python (numpy / safetensors) sees it.
fn python_view(artifact: &Path) -> BTreeMap<String, Seen> {
    let out = run_checker(&["--dump-sha256"], artifact);
    assert!(
        out.status.success(),
        "check_artifact.py --dump-sha256 {} failed:\n{}",
        artifact.display(),
        text(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("--dump-sha256 prints JSON");
    json.as_object()
        .expect("a JSON object")
        .iter()
        .map(|(name, t)| {
            let seen = Seen {
                sha256: t["sha256"].as_str().expect("sha256").to_string(),
                dtype: t["dtype"].as_str().expect("dtype").to_string(),
                shape: t["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("a dimension") as usize)
                    .collect(),
            };
            (name.clone(), seen)
        })
        .collect()
}

/// NumPy's name of a safetensors dtype.
fn numpy_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
        Dtype::BOOL => "bool",
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Every tensor of a .safetensors file as the Rust `safetensors` crate reads it.
fn rust_view_safetensors(file: &Path) -> BTreeMap<String, Seen> {
    read_safetensors(file)
        .tensors
        .into_iter()
        .map(|(name, t)| {
            let seen = Seen {
                sha256: sha256(&t.data),
                dtype: numpy_name(t.dtype).to_string(),
                shape: t.shape,
            };
            (name, seen)
        })
        .collect()
}

/// Every tensor of an npy directory (as listed in its manifest) as `ndarray-npy` reads it,
/// turned back into little-endian C-order bytes.
fn rust_view_npy(dir: &Path) -> BTreeMap<String, Seen> {
    let manifest = manifest(dir);
    let mut seen = BTreeMap::new();
    for t in manifest["tensors"].as_array().expect("manifest tensors") {
        let name = t["name"].as_str().expect("name");
        let path = dir.join(t["file"].as_str().expect("file"));
        let dtype = match t["dtype"].as_str() {
            Some("f32") => Dtype::F32,
            Some("f64") => Dtype::F64,
            Some("bool") => Dtype::BOOL,
            other => panic!("tensor {name} has unexpected manifest dtype {other:?}"),
        };
        let tensor = read_npy_as(&path, dtype);
        seen.insert(
            name.to_string(),
            Seen {
                sha256: sha256(&tensor.data),
                dtype: numpy_name(dtype).to_string(),
                shape: tensor.shape,
            },
        );
    }
    seen
}

/// Requires Python and Rust to see exactly the same tensors and bytes.
fn assert_same_view(artifact: &Path) -> BTreeMap<String, Seen> {
    let python = python_view(artifact);
    let rust = if artifact.is_dir() {
        rust_view_npy(artifact)
    } else {
        rust_view_safetensors(artifact)
    };
    assert_eq!(
        python.keys().collect::<Vec<_>>(),
        rust.keys().collect::<Vec<_>>(),
        "Python and Rust see different tensors in {}",
        artifact.display()
    );
    for (name, r) in &rust {
        assert_eq!(
            &python[name],
            r,
            "tensor {name} of {}: Python's view (left) differs from Rust's (right)",
            artifact.display()
        );
    }
    rust
}

/// The per-layer records of an artifact, by layer name.
fn layer_records(artifact: &Path) -> BTreeMap<String, Value> {
    if artifact.is_dir() {
        records_by_name(&manifest(artifact)["layers"])
    } else {
        read_safetensors(artifact).layer_records()
    }
}

/// Linear layers: wide, tall, square, a single row and a single column; gains by name, by
/// number per layer, and the default.
const LINEAR_SPEC: &str = r#"
seed = 11

[sparsity]
density = 0.25
distribution = "uniform"

[init]
scheme = "eoi"
gain = 1.0

[output]
format = "safetensors"
dtype = "f32"

[[layer]]
name = "wide.weight"
shape = [24, 80]
gain = "tanh"

[[layer]]
name = "tall.weight"
shape = [90, 20]
gain = 2.5

[[layer]]
name = "square.weight"
shape = [40, 40]
density = 0.6

[[layer]]
name = "row.weight"
shape = [1, 50]

[[layer]]
name = "column.weight"
shape = [50, 1]
gain = 0.5
"#;

/// Convolutions with 1, 2 and 3 spatial dimensions, an even kernel, a 1x1 kernel, a tall and
/// a wide centre matrix, both centre rules and a gain given by nonlinearity.
const CONV_SPEC: &str = r#"
seed = 5

[sparsity]
density = 0.2
distribution = "uniform"

[init]
scheme = "eoi"
gain = "relu"
conv_center = "sqrt"

[output]
format = "safetensors"
dtype = "f32"

[[layer]]
name = "conv1d.weight"
shape = [16, 8, 3]

[[layer]]
name = "conv2d.weight"
shape = [32, 16, 3, 3]

[[layer]]
name = "conv3d.weight"
shape = [8, 8, 3, 3, 3]
conv_center = "same"

[[layer]]
name = "even.weight"
shape = [12, 6, 2, 4]

[[layer]]
name = "wide1d.weight"
shape = [6, 40, 5]
gain = 1.5

[[layer]]
name = "pointwise.weight"
shape = [16, 32, 1, 1]

[[layer]]
name = "fc.weight"
shape = [10, 32]
"#;

fn assert_gain(records: &BTreeMap<String, Value>, layer: &str, gain: f64) {
    let got = records[layer]["gain"].as_f64().expect("a gain");
    assert!(
        (got - gain).abs() <= 1e-15 * gain,
        "layer {layer}: gain {got} recorded, {gain} expected"
    );
}

#[test]
fn python_has_numpy_and_safetensors() {
    python(Needs::NumpySafetensors);
}

#[test]
fn linear_f32_safetensors_with_tall_wide_and_gains() {
    let dir = Sandbox::new();
    let spec = dir.write("linear.toml", LINEAR_SPEC);
    let out = dir.path("linear.safetensors");
    generate(&spec, &out, &[]);

    let report = check(&out);
    assert_eq!((report.tensors, report.layers), (10, 5), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-5 * 6.25, "{report:?}");
    assert!(report.max_orthogonality_error > 0.0, "{report:?}");

    let records = layer_records(&out);
    assert_gain(&records, "wide.weight", 5.0 / 3.0);
    assert_gain(&records, "tall.weight", 2.5);
    assert_gain(&records, "square.weight", 1.0);
    assert_gain(&records, "column.weight", 0.5);

    let seen = assert_same_view(&out);
    assert_eq!(seen["tall.weight"].shape, [90, 20]);
    assert_eq!(seen["tall.weight"].dtype, "float32");
    assert_eq!(seen["tall.weight_mask"].dtype, "bool");
    assert_eq!(seen["wide.weight"].shape, [24, 80]);
}

#[test]
fn linear_f64_safetensors_is_orthogonal_to_f64_precision() {
    let dir = Sandbox::new();
    let spec = dir.write("linear.toml", LINEAR_SPEC);
    let out = dir.path("linear64.safetensors");
    generate(&spec, &out, &["--dtype", "f64"]);

    let report = check(&out);
    assert_eq!((report.tensors, report.layers), (10, 5), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-12 * 6.25, "{report:?}");

    let seen = assert_same_view(&out);
    assert!(
        seen.iter().all(|(name, s)| s.dtype
            == if name.ends_with("_mask") {
                "bool"
            } else {
                "float64"
            }),
        "{seen:?}"
    );
}

#[test]
fn npy_directory_matches_safetensors_bytes() {
    let dir = Sandbox::new();
    let spec = dir.write("linear.toml", LINEAR_SPEC);
    let npy = dir.path("linear-npy");
    let st = dir.path("linear.safetensors");
    generate(&spec, &npy, &["--format", "npy"]);
    generate(&spec, &st, &[]);

    let report = check(&npy);
    assert_eq!((report.tensors, report.layers), (10, 5), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-5 * 6.25, "{report:?}");

    // The same spec and seed give the same tensors whatever the container.
    let from_npy = assert_same_view(&npy);
    let from_safetensors = assert_same_view(&st);
    assert_eq!(from_npy, from_safetensors);
}

#[test]
fn npz_archive_loads_with_numpy_and_matches_safetensors_bytes() {
    let dir = Sandbox::new();
    let spec = dir.write("linear.toml", LINEAR_SPEC);
    let npz = dir.path("linear.npz");
    let st = dir.path("linear.safetensors");
    generate(&spec, &npz, &["--format", "npz"]);
    generate(&spec, &st, &[]);
    // numpy.load reads the archive and the checker finds every layer orthogonal and masked.
    let report = check(&npz);
    assert_eq!((report.tensors, report.layers), (10, 5), "{report:?}");
    assert_eq!(python_view(&npz), rust_view_safetensors(&st));
}

#[test]
fn npz_with_more_than_65535_members_uses_zip64_and_loads() {
    // 33,000 layers make 66,001 members: past the 16-bit member count of a plain zip.
    let dir = Sandbox::new();
    let spec = dir.write("many.toml",
        "[sparsity]\ndensity = 1.0\n[[layer]]\nname = \"l{i}.weight\"\nshape = [1, 2]\nrepeat = 33000\n",
    );
    let npz = dir.path("many.npz");
    generate(&spec, &npz, &["--format", "npz"]);
    let bytes = fs::read(&npz).unwrap();
    // The zip64 end record's signature sits 98 bytes from the end (56 + 20 + 22).
    assert_eq!(&bytes[bytes.len() - 98..bytes.len() - 94], b"PK\x06\x06");
    let out = python(Needs::NumpySafetensors)
        .args([
            "-c",
            "import sys, numpy as np\nz = np.load(sys.argv[1])\nprint(len(z.files), float(abs(z['l32999.weight']).sum() > 0), int(z['l0.weight_mask'].sum()))",
        ])
        .arg(&npz)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "66001 1.0 2");
}

#[test]
fn conv_kernels_1d_2d_3d_are_delta_orthogonal() {
    let dir = Sandbox::new();
    let spec = dir.write("conv.toml", CONV_SPEC);

    let out = dir.path("conv.safetensors");
    generate(&spec, &out, &[]);
    let report = check(&out);
    assert_eq!((report.tensors, report.layers), (14, 7), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-5 * 2.25, "{report:?}");
    let records = layer_records(&out);
    assert_gain(&records, "conv2d.weight", 2f64.sqrt());
    assert_gain(&records, "wide1d.weight", 1.5);
    for (name, kind) in [
        ("conv1d.weight", "conv"),
        ("conv3d.weight", "conv"),
        ("fc.weight", "linear"),
    ] {
        assert_eq!(records[name]["kind"], kind, "{name}");
    }
    let seen = assert_same_view(&out);
    assert_eq!(seen["conv3d.weight"].shape, [8, 8, 3, 3, 3]);
    assert_eq!(seen["conv1d.weight_mask"].shape, [16, 8, 3]);

    let out64 = dir.path("conv64");
    generate(&spec, &out64, &["--format", "npy", "--dtype", "f64"]);
    let report = check(&out64);
    assert_eq!((report.tensors, report.layers), (14, 7), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-12 * 2.25, "{report:?}");
    assert_same_view(&out64);
}

#[test]
fn bundled_mlp_mnist_spec() {
    let dir = Sandbox::new();
    let out = dir.path("mlp.safetensors");
    generate(&repo("specs/mlp-mnist.toml"), &out, &[]);
    let report = check(&out);
    assert_eq!((report.tensors, report.layers), (14, 7), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-5, "{report:?}");
    assert_same_view(&out);
}

#[test]
fn bundled_resnet32_spec() {
    let dir = Sandbox::new();
    let spec = repo("specs/resnet32-cifar10.toml");

    let out = dir.path("resnet32.safetensors");
    generate(&spec, &out, &[]);
    let report = check(&out);
    assert_eq!((report.tensors, report.layers), (68, 34), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-5, "{report:?}");
    assert_same_view(&out);

    let npy = dir.path("resnet32-f64");
    generate(
        &spec,
        &npy,
        &["--format", "npy", "--dtype", "f64", "--seed", "3"],
    );
    let report = check(&npy);
    assert_eq!((report.tensors, report.layers), (68, 34), "{report:?}");
    assert!(report.max_orthogonality_error <= 1e-12, "{report:?}");
    assert_eq!(manifest(&npy)["seed"], 3, "--seed is recorded");
    assert_same_view(&npy);
}

/// A copy of `original` with the bytes of one element of `tensor` replaced.
fn corrupt(original: &Path, copy: &Path, tensor: &str, element: usize, value: &[u8]) {
    let mut bytes = fs::read(original).unwrap();
    let range = data_range(&bytes, tensor);
    let at = range.start + element * value.len();
    assert!(at + value.len() <= range.end);
    bytes[at..at + value.len()].copy_from_slice(value);
    fs::write(copy, bytes).unwrap();
}

/// Index of the first element of a bool tensor equal to `want`.
fn first_mask_element(file: &Path, mask: &str, want: bool) -> usize {
    read_safetensors(file)
        .tensor(mask)
        .data
        .iter()
        .position(|&b| (b != 0) == want)
        .expect("such an element exists")
}

#[test]
fn the_checker_rejects_broken_artifacts() {
    let dir = Sandbox::new();
    let spec = dir.write("linear.toml", LINEAR_SPEC);
    let good = dir.path("good.safetensors");
    generate(&spec, &good, &[]);
    check(&good);

    // A nonzero weight where the mask is 0.
    let outside = first_mask_element(&good, "square.weight_mask", false);
    let bad = dir.path("outside.safetensors");
    corrupt(
        &good,
        &bad,
        "square.weight",
        outside,
        &1e-3f32.to_le_bytes(),
    );
    let err = check_fails(&bad);
    assert!(
        err.contains("square.weight") && err.contains("outside the mask"),
        "{err}"
    );

    // One kept weight changed: no longer orthogonal.
    let kept = first_mask_element(&good, "tall.weight_mask", true);
    let bad = dir.path("skewed.safetensors");
    corrupt(&good, &bad, "tall.weight", kept, &0.123f32.to_le_bytes());
    let err = check_fails(&bad);
    assert!(
        err.contains("tall.weight") && err.contains("not orthogonal"),
        "{err}"
    );

    // A mask bit cleared: the mask no longer covers the weights nor matches the record's nnz.
    let bad = dir.path("mask.safetensors");
    corrupt(
        &good,
        &bad,
        "wide.weight_mask",
        first_mask_element(&good, "wide.weight_mask", true),
        &[0],
    );
    let err = check_fails(&bad);
    assert!(
        err.contains("wide.weight_mask") && err.contains("nnz"),
        "{err}"
    );

    // A conv kernel with a nonzero weight off the centre tap (inside the mask, so only the
    // delta structure is broken).
    let spec = dir.write("conv.toml", CONV_SPEC);
    let conv = dir.path("conv.safetensors");
    generate(&spec, &conv, &[]);
    check(&conv);
    let file = read_safetensors(&conv);
    let mask = file.tensor("conv2d.weight_mask");
    // Shape (32, 16, 3, 3): the centre tap of each (out, in) pair is element 4 of 9.
    let off_centre = mask
        .data
        .iter()
        .enumerate()
        .position(|(k, &b)| b != 0 && k % 9 != 4)
        .expect("the sqrt rule adds mask positions off the centre");
    let bad = dir.path("conv-off-centre.safetensors");
    corrupt(
        &conv,
        &bad,
        "conv2d.weight",
        off_centre,
        &0.5f32.to_le_bytes(),
    );
    let err = check_fails(&bad);
    assert!(
        err.contains("conv2d.weight") && err.contains("off the centre"),
        "{err}"
    );
}

/// Runs check_biases.py on `artifact` with the expected biases; its exit status and stderr.
fn check_biases(artifact: &Path, expected: &Value) -> (bool, String) {
    let expected = expected.to_string();
    let out = run_script(
        "check_biases.py",
        [artifact.as_os_str(), OsStr::new(&expected)],
    );
    (out.status.success(), text(&out.stderr))
}

#[test]
fn biases_load_with_numpy_in_every_container() {
    // fc1 and fc2 draw biases of std 0.05 and 2 ([init] and their own); fc3 asks for 0.
    let spec_text = "seed = 11\n[sparsity]\ndensity = 0.3\n[init]\nbias_std = 0.05\n\
        [[layer]]\nname = \"fc1.weight\"\nshape = [600, 100]\n\
        [[layer]]\nname = \"fc2.weight\"\nshape = [300, 600]\nbias_std = 2\n\
        [[layer]]\nname = \"fc3.weight\"\nshape = [10, 300]\nbias_std = 0\n";
    let dir = Sandbox::new();
    let spec = dir.path("biases.toml");
    fs::write(&spec, spec_text).unwrap();
    let expected = |dtype: &str| {
        serde_json::json!({
            "fc1.bias": {"shape": [600], "dtype": dtype, "std": 0.05},
            "fc2.bias": {"shape": [300], "dtype": dtype, "std": 2.0},
            "fc3.bias": {"shape": [10], "dtype": dtype, "std": 0.0},
        })
    };
    for (name, args, dtype) in [
        ("b.safetensors", vec![], "float32"),
        ("b16.safetensors", vec!["--dtype", "f16"], "float16"),
        (
            "flax.safetensors",
            vec!["--layout", "flax", "--names", "torch-prune"],
            "float32",
        ),
        ("sharded", vec!["--max-shard-size", "300KB"], "float32"),
        ("npy", vec!["--format", "npy", "--dtype", "f64"], "float64"),
        ("b.npz", vec!["--format", "npz"], "float32"),
    ] {
        let out = dir.path(name);
        generate(&spec, &out, &args);
        let (ok, stderr) = check_biases(&out, &expected(dtype));
        assert!(ok, "{name}: {stderr}");
    }
    // The checker can fail: a bias of another std, a missing bias, a nonzero "zero" bias.
    let out = dir.path("b.safetensors");
    let mut wrong = expected("float32");
    wrong["fc1.bias"]["std"] = serde_json::json!(0.1);
    wrong["fc2.bias"]["std"] = serde_json::json!(0.0);
    wrong["fc4.bias"] = serde_json::json!({"shape": [1], "dtype": "float32", "std": 1.0});
    let (ok, stderr) = check_biases(&out, &wrong);
    assert!(!ok);
    assert!(
        stderr.contains("FAIL fc1.bias: mean square / std^2 = 0.2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("FAIL fc2.bias: std 0 but not all values are +0.0"),
        "{stderr}"
    );
    assert!(stderr.contains("FAIL fc4.bias: missing"), "{stderr}");
}

#[test]
fn a_stream_on_standard_output_loads_with_safetensors_load() {
    // `eoi generate SPEC -o - | python ...`: the official safetensors.numpy.load reads the
    // piped bytes, which equal the file `-o FILE` writes, byte for byte and tensor for tensor.
    let dir = Sandbox::new();
    let spec = dir.path("biases.toml");
    let spec_text = fs::read_to_string(repo("specs/mlp-mnist.toml"))
        .unwrap()
        .replacen("[init]\n", "[init]\nbias_std = 0.01\n", 1);
    fs::write(&spec, spec_text).unwrap();
    let file = dir.path("file.safetensors");
    generate(&spec, &file, &[]);
    let mut producer = eoi_process()
        .arg("generate")
        .arg(&spec)
        .args(["-o", "-", "-q"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("eoi runs");
    let script = "import json, sys\n\
        import numpy as np\n\
        from safetensors.numpy import load, load_file\n\
        data = sys.stdin.buffer.read()\n\
        streamed, written = load(data), load_file(sys.argv[1])\n\
        assert data == open(sys.argv[1], 'rb').read(), 'the bytes differ'\n\
        assert sorted(streamed) == sorted(written), 'the names differ'\n\
        for name in written:\n\
        \x20   a, b = streamed[name], written[name]\n\
        \x20   assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name\n\
        print(json.dumps({'tensors': len(streamed), 'bytes': len(data), 'biases': sum(n.endswith('.bias') for n in streamed)}))\n";
    let consumer = python(Needs::NumpySafetensors)
        .args(["-c", script])
        .arg(&file)
        .stdin(producer.stdout.take().unwrap())
        .output()
        .expect("python runs");
    assert!(producer.wait().unwrap().success());
    assert!(consumer.status.success(), "{}", text(&consumer.stderr));
    let report = json(&consumer.stdout);
    assert_eq!(
        report["tensors"], 21,
        "7 layers: weight, mask and bias each"
    );
    assert_eq!(report["biases"], 7);
    assert_eq!(report["bytes"], fs::metadata(&file).unwrap().len());
}

#[test]
fn approx_isometry_errors_are_what_numpy_computes_from_the_file() {
    // Linear layers (wide, tall, square, a row, a column) and convolutions (the centre
    // matrix), in f32 and f64: NumPy's ||G - gain^2 I||_F / ||gain^2 I||_F of each stored
    // weight equals the record's isometry_error to the stored dtype's rounding.
    let dir = Sandbox::new();
    for (name, body, layers) in [("linear", LINEAR_SPEC, 5), ("conv", CONV_SPEC, 7)] {
        let spec = dir.write(&format!("{name}.toml"), body);
        for dtype in ["f32", "f64"] {
            let out = dir.path(&format!("{name}-{dtype}.safetensors"));
            generate(
                &spec,
                &out,
                &["--scheme", "approx-isometry", "--dtype", dtype],
            );
            let report = check(&out);
            assert_eq!(report.isometry_layers, layers, "{name} {dtype}: {report:?}");
            let records = layer_records(&out);
            assert!(
                records
                    .values()
                    .all(|r| r["isometry_error"].as_f64().is_some_and(|e| e < 1.0)),
                "{records:?}"
            );
        }
    }
    // A weight moved by one part in a thousand no longer has the recorded error.
    let good = dir.path("linear-f64.safetensors");
    let bad = dir.path("moved.safetensors");
    let at = first_mask_element(&good, "square.weight_mask", true);
    let data = read_safetensors(&good).tensor("square.weight").data.clone();
    let value = f64::from_le_bytes(data[at * 8..at * 8 + 8].try_into().unwrap());
    corrupt(
        &good,
        &bad,
        "square.weight",
        at,
        &(value * 1.001).to_le_bytes(),
    );
    let stderr = check_fails(&bad);
    assert!(stderr.contains("square.weight: isometry error"), "{stderr}");
}

/// Runs examples/conv_spectrum.py on `layer` of `file` and returns its JSON.
fn spectrum(file: &Path, layer: &str, groups: usize) -> Value {
    let output = python(Needs::NumpySafetensors)
        .arg(repo("examples/conv_spectrum.py"))
        .arg(file)
        .arg(layer)
        .args(["--groups", &groups.to_string(), "--grid", "6", "--json"])
        .output()
        .expect("conv_spectrum.py runs");
    json_from("conv_spectrum.py", &output)
}

#[test]
fn a_depthwise_layer_is_an_isometry_where_the_single_column_treatment_is_not() {
    // The same depthwise weight (144, 1, 3, 3) twice: declared with groups = 144 (each
    // channel's centre +-gain), and as the reference code sees it, one (144, 1) matrix whose
    // centre is a single unit-norm column. numpy's 2-D FFT gives the singular values of each
    // as a periodic convolution operator (examples/conv_spectrum.py).
    let dir = Sandbox::new();
    let spec = dir.write("depthwise.toml",
        "[sparsity]\ndensity = 1.0\n[[layer]]\nname = \"grouped.weight\"\nshape = [144, 1, 3, 3]\ngroups = 144\n[[layer]]\nname = \"column.weight\"\nshape = [144, 1, 3, 3]\n",
    );
    let file = dir.path("depthwise.safetensors");
    generate(&spec, &file, &["--dtype", "f64"]);
    let grouped = spectrum(&file, "grouped.weight", 144);
    assert_eq!(grouped["count"], 144 * 36);
    for key in ["min", "mean", "max"] {
        let s = grouped[key].as_f64().unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{key} {s}");
    }
    let column = spectrum(&file, "column.weight", 144);
    let (mean, max) = (
        column["mean"].as_f64().unwrap(),
        column["max"].as_f64().unwrap(),
    );
    // A unit vector of 144 entries: their mean magnitude is at most 1/sqrt(144) = 0.083.
    assert!(mean <= 1.0 / 12.0 + 1e-12 && max < 0.6, "{column}");
}

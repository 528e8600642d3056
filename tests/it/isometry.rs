//! End-to-end tests of `eoi isometry` on real files. The Jacobian of a linear chain is
//! checked against an independent NumPy computation from the same file
//! (`tests/python/isometry_reference.py`, run with `$EOI_PYTHON` as tests/python_interop.rs
//! does: without numpy and safetensors these tests fail, they do not skip); an EOI chain of
//! gain 1 must be an exact isometry; bad chains must be refused with the layers named.

use std::fs;
use std::path::Path;

use safetensors::tensor::TensorView;
use serde_json::Value;

use crate::util::{Sandbox, json_from, run_script, stdout, utf8};

/// Runs tests/python/isometry_reference.py with `$EOI_PYTHON` and parses its JSON output.
fn reference(args: &[&str]) -> Value {
    json_from(
        "isometry_reference.py",
        &run_script("isometry_reference.py", args),
    )
}

/// isometry_reference.py writes its chain as `name` in the sandbox (`extra`: its options,
/// e.g. "zero-first"); the file's path and the layer names, in chain order.
fn write_chain(sandbox: &Sandbox, name: &str, extra: &[&str]) -> (String, Vec<String>) {
    let file = sandbox.path(name).to_str().unwrap().to_string();
    let args = [&["write-chain", file.as_str()], extra].concat();
    let names = serde_json::from_value(reference(&args)).unwrap();
    (file, names)
}

/// isometry_reference.py's `what` ("jacobian", "signal") of the chain `names` in `file`.
fn numpy_chain(what: &str, file: &str, names: &[String]) -> Value {
    let mut args = vec![what, file];
    args.extend(names.iter().map(String::as_str));
    reference(&args)
}

/// `eoi isometry FILE ARGS... --json` in the sandbox, which must succeed.
fn isometry(sandbox: &Sandbox, file: &str, args: &[&str]) -> Value {
    sandbox.json(&[&["isometry", file], args].concat(), 0)
}

/// `eoi isometry ARGS...`, which must fail with exit 2; its standard error.
fn refused(sandbox: &Sandbox, args: &[&str]) -> String {
    let assert = sandbox.eoi(&[&["isometry"], args].concat()).code(2);
    let out = assert.get_output();
    assert!(out.stdout.is_empty(), "nothing on stdout when refused");
    utf8(&out.stderr)
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn assert_relative(ours: &Value, numpy: &Value, key: &str, tolerance: f64) {
    let (a, b) = (number(&ours[key]), number(&numpy[key]));
    assert!(
        (a - b).abs() <= tolerance * b.abs(),
        "{key}: eoi {a} vs NumPy {b} (relative {:e})",
        (a - b).abs() / b.abs()
    );
}

fn chain_names(report: &Value) -> Vec<String> {
    report["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|l| l["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn a_linear_chain_matches_numpy_in_natural_order() {
    let sandbox = Sandbox::new();
    let (file, names) = write_chain(&sandbox, "chain.safetensors", &[]);
    let numpy = numpy_chain("jacobian", &file, &names);

    // No provenance: natural name order puts net.10 after net.8; lexical order would not
    // compose.
    let ours = isometry(&sandbox, "chain.safetensors", &["--nonlinearity", "linear"]);
    assert_eq!(ours["order"], "natural");
    assert_eq!(chain_names(&ours), names);
    assert_eq!(ours["layers"], names.len());
    assert_eq!(ours["nonlinearity"], "linear");
    let jacobian = &ours["jacobian"];
    assert_eq!(jacobian["rows"], numpy["rows"]);
    assert_eq!(jacobian["cols"], numpy["cols"]);
    for key in [
        "singular_mean_sq",
        "singular_max",
        "singular_min",
        "singular_std",
    ] {
        assert_relative(jacobian, &numpy, key, 1e-9);
    }
    // A Gaussian chain is far from an isometry; the test would notice a constant answer.
    assert!(number(&jacobian["singular_std"]) > 0.1);
    let rms = ours["signal_rms"].as_array().unwrap();
    assert_eq!(rms.len(), names.len() + 1);
    assert_eq!(rms[0]["depth"], 0);
    assert!((number(&rms[0]["rms"]) - 1.0).abs() < 1e-12);
}

#[test]
fn an_eoi_chain_matches_numpy_in_provenance_order() {
    // Recorded order b, a, c; in name order the shapes would not compose.
    let spec = "seed = 5\n[sparsity]\ndensity = 0.3\n[init]\ngain = 1.3\n\
        [[layer]]\nname = \"b.weight\"\nshape = [40, 24]\n\
        [[layer]]\nname = \"a.weight\"\nshape = [32, 40]\n\
        [[layer]]\nname = \"c.weight\"\nshape = [16, 32]\n";
    let sandbox = Sandbox::new();
    sandbox.generate(spec, "eoi.safetensors", &["-q"]).success();
    let file = sandbox.path("eoi.safetensors");
    let numpy = reference(&[
        "jacobian",
        file.to_str().unwrap(),
        "b.weight",
        "a.weight",
        "c.weight",
    ]);
    let ours = isometry(&sandbox, "eoi.safetensors", &["--nonlinearity", "linear"]);
    assert_eq!(ours["order"], "provenance");
    assert_eq!(chain_names(&ours), ["b.weight", "a.weight", "c.weight"]);
    assert_eq!(ours["jacobian"]["rows"], 16);
    assert_eq!(ours["jacobian"]["cols"], 24);
    for key in [
        "singular_mean_sq",
        "singular_max",
        "singular_min",
        "singular_std",
    ] {
        assert_relative(&ours["jacobian"], &numpy, key, 1e-9);
    }
}

const SQUARE: &str = "seed = 2\n[sparsity]\ndensity = 0.2\n[init]\ngain = 1.0\n\
    [[layer]]\nname = \"hidden.{i}.weight\"\nshape = [48, 48]\nrepeat = 12\n";

#[test]
fn an_eoi_chain_of_gain_one_is_an_exact_isometry() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(SQUARE, "square.safetensors", &["-q", "--dtype", "f64"])
        .success();
    let ours = isometry(
        &sandbox,
        "square.safetensors",
        &["--nonlinearity", "linear"],
    );
    let jacobian = &ours["jacobian"];
    for key in ["singular_max", "singular_min", "singular_mean_sq"] {
        let s = number(&jacobian[key]);
        assert!((s - 1.0).abs() < 1e-9, "{key} = {s}");
    }
    assert!(number(&jacobian["singular_std"]) < 1e-9);
    for entry in ours["signal_rms"].as_array().unwrap() {
        assert!((number(&entry["rms"]) - 1.0).abs() < 1e-9, "{entry}");
    }
    // With tanh the singular values shrink below 1 but stay far from 0 at this depth.
    let tanh = isometry(&sandbox, "square.safetensors", &[]);
    let mean_sq = number(&tanh["jacobian"]["singular_mean_sq"]);
    assert!(mean_sq < 1.0 && mean_sq > 0.05, "{mean_sq}");
}

/// A chain whose Jacobian would hold more than 2^25 values (one EOI layer of 8200 x 4096:
/// 8200 x 4096 = 33.6M) is estimated without being asked, and says why; its columns are
/// orthonormal (gain 1), so every singular value is 1 and the estimates must find it.
#[test]
fn a_jacobian_over_the_limit_is_estimated_and_says_why() {
    let sandbox = Sandbox::new();
    let spec = "seed = 3\n[sparsity]\ndensity = 0.01\n[init]\ngain = 1.0\n\
        [[layer]]\nname = \"wide.weight\"\nshape = [8200, 4096]\n";
    sandbox
        .generate(spec, "wide.safetensors", &["-q"])
        .success();
    let ours = isometry(&sandbox, "wide.safetensors", &["--nonlinearity", "linear"]);
    let j = &ours["jacobian"];
    assert_eq!(j["method"], "estimated", "{j}");
    assert_eq!(j["probes"], 64, "{j}");
    let (mean, se) = (
        number(&j["singular_mean_sq"]),
        number(&j["singular_mean_sq_stderr"]),
    );
    assert!(se > 0.0 && (mean - 1.0).abs() <= 4.0 * se, "{mean} +- {se}");
    // f32 weights: orthonormal to about 1e-7.
    assert!((number(&j["singular_max"]) - 1.0).abs() < 1e-5, "{j}");
    assert!(
        j["singular_min"].is_null() && j["singular_std"].is_null(),
        "{j}"
    );
    let text = sandbox
        .eoi(&["isometry", "wide.safetensors", "--nonlinearity", "linear"])
        .success();
    let text = stdout(&text);
    assert!(
        text.contains(
            "ESTIMATED (an exact spectrum would accumulate a Jacobian of 8200 x 4096 values, over the limit of 33554432"
        ),
        "{text}"
    );
}

#[test]
fn flax_layout_and_torch_prune_names_give_the_same_chain() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(SQUARE, "plain.safetensors", &["-q"])
        .success();
    sandbox
        .generate(SQUARE, "flax.safetensors", &["-q", "--layout", "flax"])
        .success();
    sandbox
        .generate(
            SQUARE,
            "prune.safetensors",
            &["-q", "--names", "torch-prune"],
        )
        .success();
    sandbox
        .generate(SQUARE, "npy", &["-q", "--format", "npy"])
        .success();
    let plain = isometry(&sandbox, "plain.safetensors", &[]);
    for other in ["flax.safetensors", "prune.safetensors", "npy"] {
        let report = isometry(&sandbox, other, &[]);
        assert_eq!(report["jacobian"], plain["jacobian"], "{other}");
        assert_eq!(report["signal_rms"], plain["signal_rms"], "{other}");
        assert_eq!(chain_names(&report), chain_names(&plain), "{other}");
    }
}

#[test]
fn a_tanh_chain_adds_its_biases_as_numpy_does() {
    let sandbox = Sandbox::new();
    let (file, names) = write_chain(&sandbox, "zero.safetensors", &["zero-first"]);
    // The first weight is zero, so the signal after it is tanh(bias), whatever the input.
    let numpy = numpy_chain("signal", &file, &names);
    let ours = isometry(&sandbox, "zero.safetensors", &["--seed", "9"]);
    assert!(
        ours["chain"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["bias"].is_string())
    );
    let rms = ours["signal_rms"].as_array().unwrap();
    for (k, expected) in numpy.as_array().unwrap().iter().enumerate() {
        let (a, b) = (number(&rms[k + 1]["rms"]), number(expected));
        assert!((a - b).abs() <= 1e-12 * b, "depth {}: {a} vs {b}", k + 1);
    }
    // The Jacobian passes through the zero weight.
    assert_eq!(number(&ours["jacobian"]["singular_max"]), 0.0);
}

#[test]
fn layers_selects_by_glob_and_the_seed_changes_only_the_signal() {
    let spec = "[sparsity]\ndensity = 0.25\ndense = [\"input.weight\", \"output.weight\"]\n\
        [init]\ngain = 1.0247\n\
        [[layer]]\nname = \"input.weight\"\nshape = [32, 20]\n\
        [[layer]]\nname = \"hidden.{i}.weight\"\nshape = [32, 32]\nrepeat = 11\n\
        [[layer]]\nname = \"output.weight\"\nshape = [5, 32]\n";
    let sandbox = Sandbox::new();
    sandbox.generate(spec, "mlp.safetensors", &["-q"]).success();
    let all = isometry(&sandbox, "mlp.safetensors", &[]);
    assert_eq!(all["layers"], 13);
    assert_eq!(all["jacobian"]["cols"], 20);
    let hidden = isometry(&sandbox, "mlp.safetensors", &["--layers", "hidden.*"]);
    assert_eq!(hidden["layers"], 11);
    let names = chain_names(&hidden);
    assert_eq!(names[0], "hidden.0.weight");
    assert_eq!(names[10], "hidden.10.weight");
    let two = isometry(
        &sandbox,
        "mlp.safetensors",
        &["--layers", "input.weight", "--layers", "hidden.0.*"],
    );
    assert_eq!(chain_names(&two), ["input.weight", "hidden.0.weight"]);

    let other_seed = isometry(&sandbox, "mlp.safetensors", &["--seed", "1"]);
    assert_ne!(other_seed["signal_rms"], all["signal_rms"]);
    assert_eq!(
        isometry(&sandbox, "mlp.safetensors", &["--seed", "1"])["signal_rms"],
        other_seed["signal_rms"]
    );
    let linear = |seed: &str| {
        isometry(
            &sandbox,
            "mlp.safetensors",
            &["--nonlinearity", "linear", "--seed", seed],
        )["jacobian"]
            .clone()
    };
    assert_eq!(linear("0"), linear("1"));
}

#[test]
fn text_output_summarises_the_jacobian_and_the_depth() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(SQUARE, "square.safetensors", &["-q"])
        .success();
    let assert = sandbox
        .eoi(&["isometry", "square.safetensors", "--nonlinearity", "relu"])
        .success();
    let text = stdout(&assert);
    for needle in [
        "a chain of 12 layers in provenance order: hidden.0.weight (48x48) ... hidden.11.weight (48x48)",
        "phi = relu",
        "input-output Jacobian (48 x 48)",
        "mean of squares",
        "signal RMS along the depth",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

#[test]
fn an_overflowing_jacobian_is_reported_not_summarised() {
    let spec = "[sparsity]\ndensity = 0.5\n[init]\ngain = 8.0\n\
        [[layer]]\nname = \"l{i}.weight\"\nshape = [4, 4]\nrepeat = 400\n";
    let sandbox = Sandbox::new();
    sandbox.generate(spec, "big.safetensors", &["-q"]).success();
    let report = isometry(&sandbox, "big.safetensors", &["--nonlinearity", "linear"]);
    assert!(report["jacobian"]["singular_max"].is_null());
    let note = report["note"].as_str().unwrap();
    assert!(note.contains("non-finite entries from depth"), "{note}");
}

#[test]
fn chains_that_do_not_compose_name_both_layers() {
    let spec = "[sparsity]\ndensity = 0.5\n\
        [[layer]]\nname = \"enc.weight\"\nshape = [8, 16]\n\
        [[layer]]\nname = \"dec.weight\"\nshape = [16, 4]\n";
    let sandbox = Sandbox::new();
    sandbox.generate(spec, "bad.safetensors", &["-q"]).success();
    let message = refused(&sandbox, &["bad.safetensors"]);
    assert!(
        message.contains(
            "layers \"enc.weight\" and \"dec.weight\" do not compose: \"enc.weight\" has 8 outputs but \"dec.weight\" takes 4 inputs"
        ),
        "{message}"
    );
    assert!(message.contains("bad.safetensors"), "{message}");
}

#[test]
fn convolution_chains_are_refused_with_a_reason() {
    let spec = "[sparsity]\ndensity = 0.5\n\
        [[layer]]\nname = \"conv.weight\"\nshape = [8, 4, 3, 3]\n\
        [[layer]]\nname = \"fc.weight\"\nshape = [10, 8]\n";
    let sandbox = Sandbox::new();
    sandbox.generate(spec, "cnn.safetensors", &["-q"]).success();
    let message = refused(&sandbox, &["cnn.safetensors"]);
    assert!(
        message.contains("\"conv.weight\" is a convolution (8x4x3x3)"),
        "{message}"
    );
    assert!(
        message.contains("measure a convolution chain on a periodic grid with --grid N"),
        "{message}"
    );
    assert!(message.contains("--layers"), "{message}");
    // Selecting the linear part works.
    let fc = isometry(&sandbox, "cnn.safetensors", &["--layers", "fc.*"]);
    assert_eq!(fc["layers"], 1);
}

#[test]
fn unknown_globs_missing_files_and_bad_biases_are_refused() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(SQUARE, "square.safetensors", &["-q"])
        .success();
    let message = refused(&sandbox, &["square.safetensors", "--layers", "decoder.*"]);
    assert!(
        message.contains("--layers 'decoder.*' matches no weight of 'square.safetensors'"),
        "{message}"
    );
    assert!(message.contains("\"hidden.0.weight\""), "{message}");

    let message = refused(&sandbox, &["absent.safetensors"]);
    assert!(message.contains("absent.safetensors"), "{message}");

    // A bias whose length is not the layer's outputs.
    let weight: Vec<u8> = (0..12).flat_map(|k| f64::from(k).to_le_bytes()).collect();
    let bias: Vec<u8> = [0.5f64; 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = [
        (
            "fc.weight",
            TensorView::new(safetensors::Dtype::F64, vec![4, 3], &weight).unwrap(),
        ),
        (
            "fc.bias",
            TensorView::new(safetensors::Dtype::F64, vec![3], &bias).unwrap(),
        ),
    ];
    let path = sandbox.path("bias.safetensors");
    safetensors::serialize_to_file(tensors, None, &path).unwrap();
    let message = refused(&sandbox, &["bias.safetensors"]);
    assert!(
        message.contains(
            "the bias \"fc.bias\" of layer \"fc.weight\" has shape [3] and dtype f64, but the layer has 4 outputs"
        ),
        "{message}"
    );
    assert!(Path::new(&path).exists());
}

#[test]
fn a_sharded_output_is_one_chain() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(SQUARE, "plain.safetensors", &["-q"])
        .success();
    // 11520 bytes per layer (weight and mask): two layers a shard, six shards.
    sandbox
        .generate(SQUARE, "sharded", &["-q", "--max-shard-size", "24000"])
        .success();
    let plain = isometry(&sandbox, "plain.safetensors", &[]);
    for whole in ["sharded", "sharded/model.safetensors.index.json"] {
        let report = isometry(&sandbox, whole, &[]);
        assert_eq!(report["order"], "provenance", "{whole}");
        assert_eq!(report["layers"], 12, "{whole}");
        assert_eq!(chain_names(&report), chain_names(&plain), "{whole}");
        assert_eq!(report["jacobian"], plain["jacobian"], "{whole}");
        assert_eq!(report["signal_rms"], plain["signal_rms"], "{whole}");
    }
    assert_eq!(
        fs::read_dir(sandbox.path("sharded")).unwrap().count(),
        7,
        "six shards and the index"
    );
}

/// A transformer's MLP blocks: two repeat tables, so eoi's records list every fc1 before
/// every fc2 and the recorded order does not compose; `--order names` reads fc1, fc2 of
/// block 0, then block 1, ...
const MLP_BLOCKS: &str = "seed = 4\n[sparsity]\ndensity = 0.25\n[init]\ngain = 1.1\n\
    [[layer]]\nname = \"attn.{i}.weight\"\nshape = [8, 8]\nrepeat = 3\n\
    [[layer]]\nname = \"layers.{i}.mlp.fc1.weight\"\nshape = [32, 8]\nrepeat = 3\n\
    [[layer]]\nname = \"layers.{i}.mlp.fc2.weight\"\nshape = [8, 32]\nrepeat = 3\n";

#[test]
fn order_names_reads_mlp_blocks_as_a_chain() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(MLP_BLOCKS, "mlp.safetensors", &["-q"])
        .success();
    let mlp = ["mlp.safetensors", "--layers", "layers.*.mlp.*"];
    // By default (the records list every selected layer) and with --order records, the
    // records' order: fc1 of block 0, then fc1 of block 1, which do not compose.
    for extra in [&[][..], &["--order", "records"][..]] {
        let message = refused(&sandbox, &[&mlp[..], extra].concat());
        assert!(
            message.contains(
                "layers \"layers.0.mlp.fc1.weight\" and \"layers.1.mlp.fc1.weight\" do not compose"
            ),
            "{message}"
        );
        assert!(message.contains("chain order: provenance"), "{message}");
    }
    let ours = isometry(
        &sandbox,
        "mlp.safetensors",
        &[
            "--layers",
            "layers.*.mlp.*",
            "--order",
            "names",
            "--nonlinearity",
            "linear",
        ],
    );
    let want: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                format!("layers.{i}.mlp.fc1.weight"),
                format!("layers.{i}.mlp.fc2.weight"),
            ]
        })
        .collect();
    assert_eq!(ours["order"], "natural");
    assert_eq!(chain_names(&ours), want);
    let file = sandbox.path("mlp.safetensors");
    let mut args = vec!["jacobian", file.to_str().unwrap()];
    args.extend(want.iter().map(String::as_str));
    let numpy = reference(&args);
    for key in ["singular_mean_sq", "singular_max", "singular_min"] {
        assert_relative(&ours["jacobian"], &numpy, key, 1e-9);
    }
    // The text says the order too.
    let text = sandbox
        .eoi(&[
            "isometry",
            "mlp.safetensors",
            "--layers",
            "layers.*.mlp.*",
            "--order",
            "names",
        ])
        .success();
    let text = stdout(&text);
    assert!(
        text.contains("a chain of 6 layers in natural order: layers.0.mlp.fc1.weight (32x8)"),
        "{text}"
    );
    // --order records where the records do not list a layer, or there are none.
    let message = refused(
        &sandbox,
        &[
            "mlp.safetensors",
            "--layers",
            "layers.*.mlp.*",
            "--order",
            "bogus",
        ],
    );
    assert!(
        message.contains("records") && message.contains("names"),
        "{message}"
    );
    write_chain(&sandbox, "chain.safetensors", &[]);
    let message = refused(&sandbox, &["chain.safetensors", "--order", "records"]);
    assert!(
        message.contains("--order records: 'chain.safetensors' has no eoi provenance records"),
        "{message}"
    );
    assert!(message.contains("--order names"), "{message}");
}

/// `--probes K` on a linear chain: the mean of squares within a few standard errors of
/// NumPy's exact value, the largest singular value (Lanczos on J^T J) equal to NumPy's to
/// 1e-6; std and min not estimated. The NumPy chain is rectangular (12 inputs, 10 outputs),
/// so the mean is over the 10 singular values.
#[test]
fn probes_estimate_a_linear_chain_within_their_standard_errors() {
    let sandbox = Sandbox::new();
    let (file, names) = write_chain(&sandbox, "chain.safetensors", &[]);
    let numpy = numpy_chain("jacobian", &file, &names);
    let linear = ["--nonlinearity", "linear", "--probes", "512"];
    let exact = isometry(&sandbox, "chain.safetensors", &["--nonlinearity", "tanh"]);
    let runs = [
        (isometry(&sandbox, "chain.safetensors", &linear), numpy),
        // tanh, against the exact path on the same file.
        (
            isometry(&sandbox, "chain.safetensors", &["--probes", "512"]),
            exact["jacobian"].clone(),
        ),
    ];
    for (ours, want) in runs {
        let j = &ours["jacobian"];
        assert_eq!(j["method"], "estimated", "{j}");
        assert_eq!(j["probes"], 512);
        assert_eq!(
            (j["rows"].clone(), j["cols"].clone()),
            (10.into(), 12.into())
        );
        assert!(
            j["singular_std"].is_null() && j["singular_min"].is_null(),
            "{j}"
        );
        let (mean, se) = (
            number(&j["singular_mean_sq"]),
            number(&j["singular_mean_sq_stderr"]),
        );
        let exact_mean = number(&want["singular_mean_sq"]);
        assert!(se > 0.0 && se < 0.2 * exact_mean, "{se}");
        assert!(
            (mean - exact_mean).abs() <= 4.0 * se,
            "{mean} +- {se} vs exact {exact_mean}"
        );
        assert_relative(j, &want, "singular_max", 1e-6);
        let iterations = j["singular_max_iterations"].as_u64().expect("iterations");
        assert!((1..=300).contains(&iterations), "{iterations}");
        assert!(number(&j["singular_max_residual"]) <= 1e-6, "{j}");
        assert!(ours["grid"].is_null());
    }
    // Exact runs say so and carry no estimate's fields.
    assert_eq!(exact["jacobian"]["method"], "exact");
    assert!(exact["jacobian"]["probes"].is_null());
    assert!(exact["jacobian"]["singular_max_iterations"].is_null());
    // The text labels the estimates.
    let text = sandbox
        .eoi(&["isometry", "chain.safetensors", "--probes", "64"])
        .success();
    let text = stdout(&text);
    assert!(
        text.contains("ESTIMATED (--probes): the mean of squares from 64 random probes"),
        "{text}"
    );
    assert!(
        text.contains("(estimated, at most the true value: "),
        "{text}"
    );
    assert!(text.contains("std, min         not estimated"), "{text}");
}

/// Wider than the Lanczos method's first steps (60 inputs), with random masks: the largest
/// singular value from the Lanczos method equals the exact one to 1e-6, linear and tanh.
#[test]
fn lanczos_finds_the_largest_singular_value_of_a_wide_chain() {
    let spec = "seed = 3\n[sparsity]\ndensity = 0.3\n[init]\ngain = 1.0\n\
        [[layer]]\nname = \"h.{i}.weight\"\nshape = [60, 60]\nrepeat = 6\n";
    let sandbox = Sandbox::new();
    sandbox
        .generate(spec, "wide.safetensors", &["-q", "--scheme", "kaiming"])
        .success();
    for phi in ["linear", "tanh"] {
        let exact = isometry(&sandbox, "wide.safetensors", &["--nonlinearity", phi]);
        let ours = isometry(
            &sandbox,
            "wide.safetensors",
            &["--nonlinearity", phi, "--probes", "256"],
        );
        let j = &ours["jacobian"];
        assert_eq!(j["method"], "estimated");
        assert_relative(j, &exact["jacobian"], "singular_max", 1e-6);
        let (mean, se) = (
            number(&j["singular_mean_sq"]),
            number(&j["singular_mean_sq_stderr"]),
        );
        let want = number(&exact["jacobian"]["singular_mean_sq"]);
        assert!(
            (mean - want).abs() <= 4.0 * se,
            "{phi}: {mean} +- {se} vs {want}"
        );
        assert!(number(&j["singular_max_residual"]) <= 1e-6, "{j}");
    }
}

#[test]
fn bad_probes_are_refused_for_linear_chains() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(SQUARE, "square.safetensors", &["-q"])
        .success();
    for k in ["0", "3", "4097"] {
        let message = refused(&sandbox, &["square.safetensors", "--probes", k]);
        assert!(
            message.contains(&format!("--probes {k}: give between 4 and 4096 probes")),
            "{message}"
        );
    }
    let message = refused(&sandbox, &["square.safetensors", "--probes", "many"]);
    assert!(message.contains("--probes"), "{message}");
}

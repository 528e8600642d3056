//! End-to-end tests of `eoi isometry --grid` on real files. The spectrum of a chain of
//! periodic convolutions (grouped, depthwise, even and large kernels, biases) is checked
//! against the dense Jacobian NumPy builds from the convolution's definition
//! (`tests/python/conv_isometry_reference.py`, with `$EOI_PYTHON`: without numpy and
//! safetensors these tests fail, they do not skip): exactly through the Fourier path
//! (linear) and the dense path (tanh), and within a few standard errors through the probes;
//! a delta-orthogonal EOI chain of gain 1 must be an exact isometry; bad chains are refused.

use serde_json::Value;

use crate::util::{Sandbox, json_from, run_script, stdout, utf8};

/// Runs tests/python/conv_isometry_reference.py with `$EOI_PYTHON`; its JSON output.
fn reference(args: &[&str]) -> Value {
    json_from(
        "conv_isometry_reference.py",
        &run_script("conv_isometry_reference.py", args),
    )
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn close(a: f64, b: f64, tolerance: f64, what: &str) {
    assert!(
        (a - b).abs() <= tolerance * b.abs().max(1e-300),
        "{what}: eoi {a} vs NumPy {b}"
    );
}

const GRID: &str = "5";
const CHANNELS: usize = 4;

/// The reference chain in the sandbox, eoi's input vector for `seed` as JSON, and NumPy's
/// measurements of the chain with `phi`.
fn chain_and_numpy(sandbox: &Sandbox, seed: u64, phi: &str) -> (Vec<String>, Value) {
    let file = sandbox.path("conv.safetensors");
    let file = file.to_str().unwrap();
    let names: Vec<String> =
        serde_json::from_value(reference(&["write-chain", file])).expect("names");
    let n = CHANNELS * 25;
    // The input is eoi's seeded unit-RMS vector: the library's own function, which is not
    // what is under test here (tests/it/isometry.rs and its unit tests check it).
    let x = eoi::isometry::input(seed, n);
    let input = sandbox.write("input.json", serde_json::to_string(&x).unwrap());
    let mut args = vec!["jacobian", file, GRID, input.to_str().unwrap(), phi];
    args.extend(names.iter().map(String::as_str));
    let numpy = reference(&args);
    (names, numpy)
}

fn assert_matches(ours: &Value, numpy: &Value, keys: &[&str], tolerance: f64) {
    let jacobian = &ours["jacobian"];
    assert_eq!(jacobian["rows"], numpy["rows"]);
    assert_eq!(jacobian["cols"], numpy["cols"]);
    for key in keys {
        close(number(&jacobian[key]), number(&numpy[key]), tolerance, key);
    }
    close(
        number(&ours["grid"]["singular_sq_var"]),
        number(&numpy["singular_sq_var"]),
        tolerance,
        "singular_sq_var",
    );
}

const ALL: [&str; 4] = [
    "singular_mean_sq",
    "singular_std",
    "singular_max",
    "singular_min",
];

#[test]
fn a_linear_conv_chain_matches_the_dense_jacobian_per_frequency() {
    let sandbox = Sandbox::new();
    let (names, numpy) = chain_and_numpy(&sandbox, 0, "linear");
    let ours = sandbox.json(
        &[
            "isometry",
            "conv.safetensors",
            "--grid",
            GRID,
            "--nonlinearity",
            "linear",
        ],
        0,
    );
    assert_eq!(ours["layers"], names.len());
    assert_eq!(ours["order"], "natural");
    assert_eq!(ours["grid"]["method"], "fourier");
    assert_eq!(ours["grid"]["size"], 5);
    assert_eq!(ours["grid"]["dims"], 2);
    assert_eq!(ours["grid"]["channels"], CHANNELS);
    assert_eq!(ours["grid"]["positions"], 25);
    assert_eq!(ours["jacobian"]["method"], "exact");
    assert!(ours["jacobian"]["singular_mean_sq_stderr"].is_null());
    let chain = ours["chain"].as_array().unwrap();
    let groups: Vec<u64> = chain
        .iter()
        .map(|l| l["groups"].as_u64().unwrap())
        .collect();
    assert_eq!(groups, [1, 2, 4, 1, 1]);
    assert_eq!(chain[3]["kernel"], serde_json::json!([2, 2]));
    assert_eq!(chain[4]["bias"], "conv.4.bias");
    assert_matches(&ours, &numpy, &ALL, 1e-9);
    let rms = ours["signal_rms"].as_array().unwrap();
    for (entry, expected) in rms.iter().zip(numpy["signal_rms"].as_array().unwrap()) {
        close(number(&entry["rms"]), number(expected), 1e-12, "signal rms");
    }
}

#[test]
fn a_tanh_conv_chain_matches_the_dense_jacobian() {
    let sandbox = Sandbox::new();
    let (_, numpy) = chain_and_numpy(&sandbox, 3, "tanh");
    let ours = sandbox.json(
        &[
            "isometry",
            "conv.safetensors",
            "--grid",
            GRID,
            "--seed",
            "3",
        ],
        0,
    );
    assert_eq!(ours["grid"]["method"], "dense");
    assert_eq!(ours["jacobian"]["method"], "exact");
    assert_matches(&ours, &numpy, &ALL, 1e-9);
    let rms = ours["signal_rms"].as_array().unwrap();
    for (entry, expected) in rms.iter().zip(numpy["signal_rms"].as_array().unwrap()) {
        close(number(&entry["rms"]), number(expected), 1e-12, "signal rms");
    }

    // Probes estimate the same chain: within four standard errors, and labelled.
    let estimated = sandbox.json(
        &[
            "isometry",
            "conv.safetensors",
            "--grid",
            GRID,
            "--seed",
            "3",
            "--probes",
            "400",
        ],
        0,
    );
    let jacobian = &estimated["jacobian"];
    assert_eq!(jacobian["method"], "estimated");
    assert_eq!(estimated["grid"]["method"], "probes");
    assert_eq!(estimated["grid"]["probes"], 400);
    for key in ["singular_std", "singular_max", "singular_min"] {
        assert!(jacobian[key].is_null(), "{key} is not estimated");
    }
    for (key, se, exact) in [
        (
            &jacobian["singular_mean_sq"],
            &jacobian["singular_mean_sq_stderr"],
            &numpy["singular_mean_sq"],
        ),
        (
            &estimated["grid"]["singular_sq_var"],
            &estimated["grid"]["singular_sq_var_stderr"],
            &numpy["singular_sq_var"],
        ),
    ] {
        let (value, se, exact) = (number(key), number(se), number(exact));
        assert!(
            se > 0.0 && se < 0.2 * exact.abs().max(0.1),
            "{value} +- {se} vs {exact}"
        );
        assert!(
            (value - exact).abs() < 4.0 * se,
            "estimate {value} +- {se}, exact {exact}"
        );
    }
    // The signal does not depend on the method.
    assert_eq!(estimated["signal_rms"], ours["signal_rms"]);

    let text = sandbox
        .eoi(&[
            "isometry",
            "conv.safetensors",
            "--grid",
            GRID,
            "--probes",
            "16",
        ])
        .success();
    let text = stdout(&text);
    assert!(text.contains("ESTIMATED from 16 random probes"), "{text}");
    assert!(text.contains("(estimated)"), "{text}");
    assert!(text.contains("not estimated"), "{text}");
    assert!(text.contains("periodic 5x5 grid"), "{text}");
}

const DELTA: &str = "seed = 4\n[sparsity]\ndensity = 0.25\n[init]\ngain = 1.0\nconv_center = \"same\"\n\
    [[layer]]\nname = \"lift.weight\"\nshape = [8, 1, 3, 3]\n\
    [[layer]]\nname = \"hidden.{i}.weight\"\nshape = [8, 8, 3, 3]\nrepeat = 20\n\
    [[layer]]\nname = \"dw.weight\"\nshape = [8, 1, 3, 3]\ngroups = 8\ndensity = 1.0\n";

#[test]
fn a_delta_orthogonal_eoi_chain_of_gain_one_is_an_exact_isometry() {
    let sandbox = Sandbox::new();
    sandbox
        .generate(DELTA, "delta.safetensors", &["-q", "--dtype", "f64"])
        .success();
    let ours = sandbox.json(
        &[
            "isometry",
            "delta.safetensors",
            "--layers",
            "hidden.*",
            "--grid",
            "16",
            "--nonlinearity",
            "linear",
        ],
        0,
    );
    assert_eq!(ours["order"], "provenance");
    assert_eq!(ours["layers"], 20);
    assert_eq!(ours["jacobian"]["rows"], 8 * 256);
    for key in ["singular_max", "singular_min", "singular_mean_sq"] {
        let s = number(&ours["jacobian"][key]);
        assert!((s - 1.0).abs() < 1e-9, "{key} = {s}");
    }
    assert!(number(&ours["grid"]["singular_sq_var"]) < 1e-9);

    // The same artifact in flax layout (k, k, in, out) and with torch-prune names gives the
    // same chain and the same numbers, with tanh too.
    let tanh_args = ["--layers", "hidden.*", "--grid", "6"];
    let torch = sandbox.json(
        &[&["isometry", "delta.safetensors"], &tanh_args[..]].concat(),
        0,
    );
    sandbox
        .generate(
            DELTA,
            "flax.safetensors",
            &[
                "-q",
                "--dtype",
                "f64",
                "--layout",
                "flax",
                "--names",
                "torch-prune",
            ],
        )
        .success();
    let flax = sandbox.json(
        &[&["isometry", "flax.safetensors"], &tanh_args[..]].concat(),
        0,
    );
    assert_eq!(flax["jacobian"], torch["jacobian"]);
    assert_eq!(flax["signal_rms"], torch["signal_rms"]);
    assert_eq!(flax["grid"], torch["grid"]);

    // The depthwise layer joins a chain as 8 -> 8 in 8 groups; the lifting conv 1 -> 8 is
    // refused by eoi's records although its shape is the depthwise one.
    let depthwise = sandbox.json(
        &[
            "isometry",
            "delta.safetensors",
            "--layers",
            "hidden.1*",
            "--layers",
            "dw.weight",
            "--grid",
            "4",
        ],
        0,
    );
    let chain = depthwise["chain"].as_array().unwrap();
    assert_eq!(chain.last().unwrap()["groups"], 8);
    let err = refused(
        &sandbox,
        &[
            "delta.safetensors",
            "--layers",
            "lift.weight",
            "--grid",
            "8",
        ],
    );
    assert!(err.contains("\"lift.weight\""), "{err}");
    assert!(err.contains("1 -> 8 convolution, not 8 -> 8"), "{err}");
}

/// `eoi isometry ARGS...`, which must fail with exit 2; its standard error.
fn refused(sandbox: &Sandbox, args: &[&str]) -> String {
    let assert = sandbox.eoi(&[&["isometry"], args].concat()).code(2);
    let out = assert.get_output();
    assert!(out.stdout.is_empty(), "nothing on stdout when refused");
    utf8(&out.stderr)
}

#[test]
fn bad_grids_and_chains_are_refused_with_a_reason() {
    let sandbox = Sandbox::new();
    let spec = "[sparsity]\ndensity = 0.5\n\
        [[layer]]\nname = \"a.weight\"\nshape = [8, 8, 3, 3]\n\
        [[layer]]\nname = \"b.weight\"\nshape = [16, 8, 3, 3]\n\
        [[layer]]\nname = \"c.weight\"\nshape = [8, 8, 5, 5]\n\
        [[layer]]\nname = \"d.weight\"\nshape = [8, 8, 3]\n\
        [[layer]]\nname = \"fc.weight\"\nshape = [10, 8]\n";
    sandbox.generate(spec, "bad.safetensors", &["-q"]).success();
    let cases: [(&[&str], &[&str]); 9] = [
        (
            &["--grid", "4"],
            &["\"fc.weight\"", "not a convolution", "--layers"],
        ),
        (
            &["--layers", "a.*", "--layers", "b.*", "--grid", "4"],
            &["\"b.weight\"", "16 output channels", "\"a.weight\" has 8"],
        ),
        (
            &["--layers", "c.*", "--grid", "4"],
            &["\"c.weight\"", "5x5 kernel", "--grid 5 or more"],
        ),
        (
            &["--layers", "a.*", "--layers", "d.*", "--grid", "4"],
            &["\"d.weight\"", "1-D", "do not compose"],
        ),
        (&["--layers", "a.*", "--grid", "0"], &["--grid 0"]),
        (
            &["--layers", "a.*", "--grid", "4", "--probes", "2"],
            &["--probes 2", "between 4 and 4096"],
        ),
        (&["--layers", "a.*"], &["\"a.weight\"", "--grid N"]),
        (
            &["--layers", "a.*", "--grid", "20000", "--probes", "4096"],
            &["--grid 20000", "GB available", "fewer --probes"],
        ),
        (&["--probes", "8"], &["--grid"]),
    ];
    for (args, needles) in cases {
        let err = refused(&sandbox, &[&["bad.safetensors"], args].concat());
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: {needle} not in {err}");
        }
    }
}

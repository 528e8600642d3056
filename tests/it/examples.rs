//! The examples in examples/, run as a user runs them, with the real `eoi` binary and the
//! Python of `$EOI_PYTHON` (scripts/test makes it a venv with tests/python/requirements.txt:
//! JAX, Flax, optax, scikit-learn, matplotlib). Without those packages these tests fail, they
//! do not skip. `examples/load_jax.py` and `examples/load_torch.py` use the Python package:
//! python/tests runs the first with the installed wheel (tests/it/python_package.rs), and
//! the second, like the eleven PyTorch families of `examples/real_models.py`, needs PyTorch,
//! too large for CI: they are run by hand (docs/python.md, "Tests", and docs/guide.md,
//! "Twelve real models, end to end").

use std::fs;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::util::{Needs, eoi_path, eoi_process, json, python, repo, text};

/// Runs `python examples/SCRIPT ARGS...` in `dir` with the eoi under test, whatever its
/// exit status.
fn example_output(dir: &Path, script: &str, args: &[&str]) -> Output {
    python(Needs::Examples)
        .arg(repo("examples").join(script))
        .arg("--eoi")
        .arg(eoi_path())
        .args(args)
        .current_dir(dir)
        // CPU only (no probing for accelerators); plots without a display.
        .env("JAX_PLATFORMS", "cpu")
        .env("MPLBACKEND", "Agg")
        .output()
        .expect("the example runs")
}

/// Runs `python examples/SCRIPT ARGS...` in `dir` with the eoi under test; requires success.
fn run_example(dir: &Path, script: &str, args: &[&str]) -> Output {
    let out = example_output(dir, script, args);
    assert!(
        out.status.success(),
        "examples/{script} {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The final test accuracy `scheme` reached in an example's `--json` results.
fn test_accuracy(results: &Value, scheme: &str) -> f64 {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scheme"] == scheme)
        .and_then(|r| r["test_accuracy"].as_f64())
        .unwrap_or_else(|| panic!("no result for {scheme}:\n{results}"))
}

/// EOI reached at least `eoi_min` test accuracy and Kaiming over random masks at most 30%
/// (chance is 10%), in an example's `--json` results.
fn eoi_trains_and_kaiming_does_not(results: &Value, eoi_min: f64, what: &str, stdout: &str) {
    let eoi = test_accuracy(results, "eoi");
    assert!(
        eoi >= eoi_min,
        "EOI reached only {eoi} test accuracy {what}:\n{stdout}"
    );
    let kaiming = test_accuracy(results, "kaiming");
    assert!(
        kaiming <= 0.3,
        "Kaiming over random masks reached {kaiming} test accuracy {what}:\n{stdout}"
    );
}

/// The 1000-layer proof at a fifth of the depth (so CI can afford it): from the same spec,
/// seed and training, EOI trains and masked Kaiming stays near chance (10 classes).
#[test]
fn deep_mlp_trains_from_eoi_but_not_from_masked_kaiming_at_depth_200() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(
        dir.path(),
        "deep_mlp.py",
        &[
            "--schemes",
            "eoi,kaiming",
            "--depth",
            "200",
            "--steps",
            "150",
            "--json",
            "results.json",
            "--plot",
            "curve.png",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("| scheme | test accuracy |"),
        "no table:\n{stdout}"
    );
    let results: Value = json(fs::read(dir.path().join("results.json")).unwrap());
    eoi_trains_and_kaiming_does_not(&results, 0.85, "at depth 200", &stdout);
    let png = fs::read(dir.path().join("curve.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "--plot wrote no PNG");
}

/// The 2:4 variant (`--nm 2:4`: hidden layers 2:4 sparse at density 0.5) at a fifth of the
/// depth: EOI's exactly orthogonal 2:4 layers train, Kaiming over random 2:4 masks stays near
/// chance (measured at depth 200: 95.7% and 8.6%); the artifact's hidden layers hold 2:4.
#[test]
fn deep_mlp_at_2_4_trains_from_eoi_but_not_from_kaiming_over_random_2_4_masks() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(
        dir.path(),
        "deep_mlp.py",
        &[
            "--nm",
            "2:4",
            "--schemes",
            "eoi,kaiming",
            "--depth",
            "200",
            "--steps",
            "150",
            "--json",
            "results.json",
            "--artifacts",
            "runs",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("hidden layers 2:4 at density 0.5"),
        "{stdout}"
    );
    let results: Value = json(fs::read(dir.path().join("results.json")).unwrap());
    assert_eq!(results["nm"], "2:4", "{results}");
    eoi_trains_and_kaiming_does_not(&results, 0.85, "at 2:4, depth 200", &stdout);
    // What was trained is 2:4: the records say so and verify checks every group.
    for scheme in ["eoi", "kaiming"] {
        let file = dir
            .path()
            .join("runs")
            .join(format!("{scheme}.safetensors"));
        let verified = eoi_process().arg("verify").arg(&file).output().unwrap();
        assert!(verified.status.success(), "{}", text(&verified.stdout));
        let inspect = eoi_process()
            .args(["inspect", "--json"])
            .arg(&file)
            .output()
            .unwrap();
        let inspected = json(&inspect.stdout);
        let hidden = inspected["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "hidden.7.weight")
            .unwrap_or_else(|| panic!("no hidden.7.weight:\n{inspected}"));
        assert_eq!(hidden["nm"][0], "2:4", "{scheme}: {hidden}");
    }
}

/// `--include` merges an earlier run's results (same settings) into the table, the plot and
/// the JSON without training those schemes again, and refuses a run with other settings.
#[test]
fn deep_mlp_includes_an_earlier_runs_results_only_with_the_same_settings() {
    let dir = tempfile::tempdir().unwrap();
    let small = ["--depth", "4", "--steps", "2", "--eval-every", "1"];
    fn with<'a>(small: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [small, extra].concat()
    }
    run_example(
        dir.path(),
        "deep_mlp.py",
        &with(&small, &["--schemes", "kaiming", "--json", "first.json"]),
    );
    let out = run_example(
        dir.path(),
        "deep_mlp.py",
        &with(
            &small,
            &[
                "--schemes",
                "eoi",
                "--include",
                "first.json",
                "--json",
                "both.json",
                "--plot",
                "both.png",
            ],
        ),
    );
    let first: Value = json(fs::read(dir.path().join("first.json")).unwrap());
    let both: Value = json(fs::read(dir.path().join("both.json")).unwrap());
    let schemes: Vec<&str> = both["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scheme"].as_str().unwrap())
        .collect();
    assert_eq!(schemes, ["eoi", "kaiming"], "{both}");
    assert_eq!(
        both["results"][1], first["results"][0],
        "the included result changed"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("| kaiming |"), "{stdout}");
    assert!(
        fs::read(dir.path().join("both.png"))
            .unwrap()
            .starts_with(b"\x89PNG")
    );

    let refused = example_output(
        dir.path(),
        "deep_mlp.py",
        &[
            "--depth",
            "5",
            "--steps",
            "2",
            "--schemes",
            "eoi",
            "--include",
            "first.json",
        ],
    );
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("--include first.json: its depth 4 differ"),
        "{stderr}"
    );
}

/// The deep-CNN proof at a smaller size (so CI can afford it; README "Why EOI" has the full
/// one): from specs/cnn-digits.toml, the same seed and training, EOI's delta-orthogonal
/// network trains and masked Kaiming stays near chance (10 classes).
#[test]
fn deep_cnn_trains_from_eoi_but_not_from_masked_kaiming_at_depth_50() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(
        dir.path(),
        "deep_cnn.py",
        &[
            "--schemes",
            "eoi,kaiming",
            "--depth",
            "50",
            "--steps",
            "150",
            "--json",
            "results.json",
            "--plot",
            "curve.png",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("| scheme | test accuracy |"),
        "no table:\n{stdout}"
    );
    let results: Value = json(fs::read(dir.path().join("results.json")).unwrap());
    assert_eq!(
        (&results["depth"], &results["channels"]),
        (&Value::from(50), &Value::from(16)),
        "{results}"
    );
    eoi_trains_and_kaiming_does_not(&results, 0.75, "at depth 50", &stdout);
    let png = fs::read(dir.path().join("curve.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "--plot wrote no PNG");
}

/// deep_cnn.py's --include checks the settings a CNN run adds (the channels) too.
#[test]
fn deep_cnn_includes_an_earlier_run_only_with_the_same_channels() {
    let dir = tempfile::tempdir().unwrap();
    let small = ["--depth", "3", "--steps", "2", "--eval-every", "1"];
    run_example(
        dir.path(),
        "deep_cnn.py",
        &[
            &small[..],
            &[
                "--schemes",
                "kaiming",
                "--channels",
                "8",
                "--json",
                "first.json",
            ],
        ]
        .concat(),
    );
    let out = run_example(
        dir.path(),
        "deep_cnn.py",
        &[
            &small[..],
            &[
                "--schemes",
                "eoi",
                "--channels",
                "8",
                "--include",
                "first.json",
                "--json",
                "both.json",
            ],
        ]
        .concat(),
    );
    assert!(
        text(&out.stdout).contains("| kaiming |"),
        "{}",
        text(&out.stdout)
    );
    let both: Value = json(fs::read(dir.path().join("both.json")).unwrap());
    let schemes: Vec<&str> = both["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scheme"].as_str().unwrap())
        .collect();
    assert_eq!(schemes, ["eoi", "kaiming"], "{both}");
    let refused = example_output(
        dir.path(),
        "deep_cnn.py",
        &[
            &small[..],
            &[
                "--schemes",
                "eoi",
                "--channels",
                "16",
                "--include",
                "first.json",
            ],
        ]
        .concat(),
    );
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("--include first.json: its channels 8 differ"),
        "{stderr}"
    );
}

/// `examples/real_models.py`'s Flax CNN end to end, with JAX only (the other eleven
/// families need PyTorch and are run by hand: docs/guide.md, "Twelve real models, end to end"):
/// shape list -> `eoi spec --from - --layout flax` -> base params -> `generate --base` ->
/// loaded as the model's param tree -> masked optax steps keep the zeros -> `eoi verify`.
#[test]
fn real_models_takes_the_flax_cnn_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(
        dir.path(),
        "real_models.py",
        &[
            "--families",
            "flax-cnn",
            "--work",
            "work",
            "--json",
            "real.json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for step in [
        "build", "spec", "generate", "load", "copied", "masks", "train", "verify",
    ] {
        let line = format!("flax-cnn         {step:<9} ok ");
        assert!(stdout.contains(&line), "no {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains("| flax-cnn | shapes | 4 (4) | 4 | 0.1000 |")
            && stdout.contains("1 of 1 families passed end to end"),
        "{stdout}"
    );

    let results: Value =
        serde_json::from_slice(&fs::read(dir.path().join("real.json")).unwrap()).unwrap();
    let family = &results["families"][0];
    assert_eq!(family["family"], "flax-cnn", "{results}");
    assert_eq!(family["passed"], true, "{results}");
    assert_eq!(family["layers"], 4, "{results}");
    assert_eq!(family["copied"], 4, "{results}");
    assert_eq!(family["verify"], "pass", "{results}");

    // The files it left in --work, checked by this eoi on its own: the output holds the
    // CNN's four kernels with their masks in Flax layout, and the four Flax biases copied.
    let work = dir.path().join("work/flax-cnn");
    let spec = fs::read_to_string(work.join("spec.toml")).unwrap();
    assert!(spec.contains("layout = \"flax\""), "{spec}");
    let verify = eoi_process()
        .arg("verify")
        .arg(work.join("eoi.safetensors"))
        .args(["--regenerate", "--base"])
        .arg(work.join("base.safetensors"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["layout"], "flax", "{report}");
    let mut copied: Vec<&str> = report["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    copied.sort_unstable();
    assert_eq!(
        copied,
        ["Conv_0.bias", "Conv_1.bias", "Dense_0.bias", "Dense_1.bias"],
        "{report}"
    );
    assert_eq!(report["layers"].as_array().unwrap().len(), 4, "{report}");
}

/// An unknown family is refused before anything runs, naming the twelve.
#[test]
fn real_models_refuses_an_unknown_family_naming_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = example_output(
        dir.path(),
        "real_models.py",
        &["--families", "flax-cnn,resnet18"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown family resnet18; the families are resnet50,")
            && stderr.contains("gpt2, flax-cnn"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "it wrote files"
    );
}

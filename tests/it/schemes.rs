//! The baseline schemes on the real binary: each writes what its formula says (mask counts
//! exact, kept-weight statistics within sampling error, orthogonality where promised), the
//! command line's `--scheme` is recorded so `verify --regenerate` reproduces it, and bad
//! scheme names are spec errors.

use std::path::{Path, PathBuf};

use crate::util::{
    self, Checkpoint, Sandbox, Tensor, centre_tap, data_range, eoi, gram_error, json,
    read_safetensors,
};

/// Writes `spec` and generates it as f64 safetensors with `args` in `dir`; the output read
/// back, and its path.
fn generate_in(dir: &Path, spec: &str, args: &[&str]) -> (Checkpoint, PathBuf) {
    let spec_path = dir.join("spec.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let out = dir.join("out.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec_path)
        .args(["-q", "--force", "--dtype", "f64", "-o"])
        .arg(&out)
        .args(args)
        .assert()
        .success();
    (read_safetensors(&out), out)
}

fn generate(spec: &str, args: &[&str]) -> Checkpoint {
    let sandbox = Sandbox::new();
    generate_in(sandbox.dir(), spec, args).0
}

fn spec_of(density: f64, gain: f64, layers: &[(&str, &[usize])]) -> String {
    let mut text = format!("seed = 11\n[sparsity]\ndensity = {density}\n[init]\ngain = {gain}\n");
    for (name, shape) in layers {
        text.push_str(&format!(
            "[[layer]]\nname = \"{name}\"\nshape = {shape:?}\n"
        ));
    }
    text
}

/// Mean and standard deviation of the kept weights.
fn kept_moments(weight: &Tensor, mask: &[bool]) -> (f64, f64, usize) {
    let kept: Vec<f64> = weight
        .values()
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(v, _)| *v)
        .collect();
    let n = kept.len() as f64;
    let mean = kept.iter().sum::<f64>() / n;
    let var = kept.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt(), kept.len())
}

/// Every weight outside the mask is exactly zero; the mask holds exactly `want` ones.
fn check_mask(a: &Checkpoint, name: &str, want: usize) {
    let mask = a.mask_of(name);
    let ones = mask.iter().filter(|&&m| m).count();
    assert_eq!(ones, want, "{name}: mask ones");
    let outside = a
        .tensor(name)
        .values()
        .iter()
        .zip(&mask)
        .filter(|(v, m)| !**m && **v != 0.0)
        .count();
    assert_eq!(outside, 0, "{name}: nonzero weights outside the mask");
    assert_eq!(a.record(name)["nnz"], want as u64);
}

const LINEAR: (&str, &[usize]) = ("fc.weight", &[256, 192]);
const CONV: (&str, &[usize]) = ("conv.weight", &[64, 32, 3, 3]);

#[test]
fn kaiming_keeps_round_d_numel_normal_weights_of_std_gain_over_root_fan_in() {
    let (density, gain) = (0.3, 1.5);
    for (scheme, scaled) in [("kaiming", false), ("scaled-kaiming", true)] {
        let a = generate(
            &spec_of(density, gain, &[LINEAR, CONV]),
            &["--scheme", scheme],
        );
        for (name, shape, fan_in) in [(LINEAR.0, LINEAR.1, 192.0), (CONV.0, CONV.1, 32.0 * 9.0)] {
            let numel: usize = shape.iter().product();
            let want = (density * numel as f64).round() as usize;
            check_mask(&a, name, want);
            assert_eq!(a.tensor(name).shape, shape);
            let fan: f64 = if scaled { fan_in * density } else { fan_in };
            let std = gain / fan.sqrt();
            let (mean, sample_std, n) = kept_moments(a.tensor(name), &a.mask_of(name));
            // Standard errors: mean std/sqrt(n), std about std/sqrt(2n); bounds of 5 of them.
            let n = n as f64;
            assert!(
                mean.abs() < 5.0 * std / n.sqrt(),
                "{scheme} {name}: mean {mean}"
            );
            assert!(
                (sample_std / std - 1.0).abs() < 5.0 / (2.0 * n).sqrt(),
                "{scheme} {name}: std {sample_std}, formula {std}"
            );
            let record = a.record(name);
            assert_eq!(record["scheme"], scheme);
            assert!(record.get("rotations").is_none(), "{record}");
        }
    }
}

#[test]
fn orthogonal_is_exactly_orthogonal_unmasked_and_delta_for_convolutions() {
    let gain = 1.25;
    let a = generate(
        &spec_of(1.0, gain, &[LINEAR, ("wide.weight", &[40, 100]), CONV]),
        &["--scheme", "orthogonal"],
    );
    for (name, r, c) in [(LINEAR.0, 256, 192), ("wide.weight", 40, 100)] {
        check_mask(&a, name, r * c);
        let dev = gram_error(&a.tensor(name).values(), r, c, gain);
        assert!(dev < 1e-13, "{name}: {dev}");
    }
    // The conv kernel: an orthogonal matrix at the centre tap (index 4 of 3x3), zero elsewhere.
    let w = &a.tensor(CONV.0).values();
    let centre: Vec<f64> = w.iter().skip(4).step_by(9).copied().collect();
    assert!(w.iter().enumerate().all(|(k, v)| k % 9 == 4 || *v == 0.0));
    let dev = gram_error(&centre, 64, 32, gain);
    assert!(dev < 1e-13, "conv centre: {dev}");
}

#[test]
fn masked_orthogonal_keeps_entries_of_an_orthogonal_matrix() {
    // The entries of a Haar orthogonal 256 x 192 matrix have variance 1/256 (columns of
    // unit norm); the kept ones are a uniform sample of them.
    let (density, gain) = (0.25, 2.0);
    let a = generate(
        &spec_of(density, gain, &[LINEAR, CONV]),
        &["--scheme", "orthogonal"],
    );
    check_mask(&a, LINEAR.0, (density * 256.0 * 192.0) as usize);
    check_mask(&a, CONV.0, (density * 64.0 * 32.0 * 9.0) as usize);
    let (mean, std, n) = kept_moments(a.tensor(LINEAR.0), &a.mask_of(LINEAR.0));
    let want = gain / 256f64.sqrt();
    let n = n as f64;
    assert!(mean.abs() < 5.0 * want / n.sqrt(), "{mean}");
    assert!(
        (std / want - 1.0).abs() < 5.0 / (2.0 * n).sqrt(),
        "{std} vs {want}"
    );
    // Conv: only centre-tap weights can be nonzero; off-centre mask ones hold zeros.
    let w = &a.tensor(CONV.0).values();
    assert!(w.iter().enumerate().all(|(k, v)| k % 9 == 4 || *v == 0.0));
}

#[test]
fn every_scheme_verifies_and_regenerates_bit_for_bit() {
    let spec = spec_of(0.4, 1.0, &[LINEAR, CONV, ("tall.weight", &[50, 20])]);
    for scheme in [
        "eoi",
        "kaiming",
        "scaled-kaiming",
        "orthogonal",
        "approx-isometry",
        "conv-orthogonal",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (a, out) = generate_in(dir.path(), &spec, &["--scheme", scheme]);
        assert_eq!(a.metadata["eoi.scheme"], scheme);
        let assert = eoi()
            .args(["verify", "--regenerate", "--json"])
            .arg(&out)
            .assert()
            .success();
        let report = json(util::stdout(&assert));
        assert_eq!(report["regenerate"]["passed"], true, "{scheme}: {report}");
        assert_eq!(report["regenerate"]["compared"], 6, "{scheme}");
        for layer in report["layers"].as_array().unwrap() {
            assert_eq!(layer["scheme"], scheme);
            // Only EOI promises orthogonality at density 0.4: only it gets a tolerance.
            assert_eq!(layer["tolerance"].is_number(), scheme == "eoi", "{layer}");
        }
    }
}

#[test]
fn a_masked_orthogonal_matrix_that_claims_density_one_fails_verify() {
    // Rewrite the record of a masked orthogonal layer to claim d = 1 (and the mask to all
    // ones): verify must then judge, and reject, its orthogonality.
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_of(1.0, 1.0, &[("fc.weight", &[32, 32])]);
    let (a, out) = generate_in(dir.path(), &spec, &["--scheme", "orthogonal"]);
    assert!(gram_error(&a.tensor("fc.weight").values(), 32, 32, 1.0) < 1e-13);
    eoi().arg("verify").arg(&out).assert().success();
    // Now a kaiming layer whose record is edited to say it is orthogonal at d = 1.
    let spec = spec_of(1.0, 1.0, &[("fc.weight", &[32, 32])]);
    let (_, out) = generate_in(dir.path(), &spec, &["--scheme", "kaiming"]);
    let bytes = std::fs::read(&out).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let new_header = header.replacen(
        "\\\"scheme\\\":\\\"kaiming\\\"",
        "\\\"scheme\\\":\\\"orthogonal\\\"",
        1,
    );
    let mut rebuilt = (new_header.len() as u64).to_le_bytes().to_vec();
    rebuilt.extend_from_slice(new_header.as_bytes());
    rebuilt.extend_from_slice(&bytes[8 + header_len..]);
    assert_ne!(new_header, header, "the record should name the scheme");
    std::fs::write(&out, rebuilt).unwrap();
    let assert = eoi().arg("verify").arg(&out).assert().code(1);
    let stdout = util::stdout(&assert);
    assert!(stdout.contains("orthogonality"), "{stdout}");
}

#[test]
fn per_layer_schemes_mix_and_the_plan_names_them() {
    let spec = "[sparsity]\ndensity = 0.5\n[init]\nscheme = \"kaiming\"\n[[layer]]\nname = \"a\"\nshape = [8, 8]\n[[layer]]\nname = \"b\"\nshape = [8, 8]\nscheme = \"eoi\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.toml");
    std::fs::write(&path, spec).unwrap();
    let assert = eoi()
        .arg("plan")
        .arg(&path)
        .arg("--json")
        .assert()
        .success();
    let plan = json(util::stdout(&assert));
    assert_eq!(plan["layers"][0]["scheme"], "kaiming");
    assert_eq!(plan["layers"][1]["scheme"], "eoi");
    let assert = eoi().arg("plan").arg(&path).assert().success();
    let text = util::stdout(&assert);
    assert!(
        text.lines()
            .any(|l| l.starts_with("a ") && l.contains("kaiming")),
        "{text}"
    );
    // --scheme overrides both.
    let assert = eoi()
        .arg("plan")
        .arg(&path)
        .args(["--json", "--scheme", "orthogonal"])
        .assert()
        .success();
    let plan = json(util::stdout(&assert));
    assert_eq!(plan["layers"][0]["scheme"], "orthogonal");
    assert_eq!(plan["layers"][1]["scheme"], "orthogonal");
}

#[test]
fn a_random_mask_may_go_below_eois_minimum() {
    // 1/max(64, 64) is EOI's floor; a random mask can keep a single weight.
    let spec = spec_of(0.001, 1.0, &[("fc.weight", &[64, 64])]);
    let a = generate(&spec, &["--scheme", "kaiming"]);
    check_mask(&a, "fc.weight", 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, &spec).unwrap();
    let assert = eoi()
        .arg("generate")
        .arg(&path)
        .args(["-o"])
        .arg(dir.path().join("o.safetensors"))
        .assert()
        .code(2);
    let stderr = util::stderr(&assert);
    assert!(stderr.contains("that EOI can make"), "{stderr}");
    let tiny = spec_of(1e-6, 1.0, &[("fc.weight", &[64, 64])]);
    std::fs::write(&path, tiny).unwrap();
    let assert = eoi()
        .arg("plan")
        .arg(&path)
        .args(["--scheme", "kaiming"])
        .assert()
        .code(2);
    let stderr = util::stderr(&assert);
    assert!(
        stderr.contains("that scheme \"kaiming\" can make for shape 64x64 (one weight of 4096)"),
        "{stderr}"
    );
}

/// Nonzeros per row and per column of an (r, c) row-major matrix.
fn degrees(values: &[f64], r: usize, c: usize) -> (Vec<usize>, Vec<usize>) {
    let rows = (0..r)
        .map(|i| (0..c).filter(|&j| values[i * c + j] != 0.0).count())
        .collect();
    let cols = (0..c)
        .map(|j| (0..r).filter(|&i| values[i * c + j] != 0.0).count())
        .collect();
    (rows, cols)
}

#[test]
fn sao_is_orthogonal_with_regular_degrees_and_whole_kernel_slices() {
    let gain = 1.5;
    let spec = format!(
        "{}[[layer]]\nname = \"wide.weight\"\nshape = [12, 128]\ndensity = 0.5\n",
        spec_of(
            0.25,
            gain,
            &[("tall.weight", &[64, 32]), ("conv.weight", &[16, 8, 3, 3])]
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, out) = generate_in(dir.path(), &spec, &["--scheme", "sao"]);
    // tall 64 x 32 at 0.25: degree k = 16 of m = 64; each of the 32 columns (the short side)
    // has 16 nonzeros, each of the 64 rows a = 32 * 16 / 64 = 8.
    // wide 12 x 128 at 0.5: k = 64, a = 6.
    for (name, r, c, row_degree, col_degree) in [
        ("tall.weight", 64, 32, 8, 16),
        ("wide.weight", 12, 128, 64, 6),
    ] {
        let w = &a.tensor(name).values();
        check_mask(&a, name, r * row_degree);
        let (rows, cols) = degrees(w, r, c);
        assert!(
            rows.iter().all(|&d| d == row_degree),
            "{name} rows {rows:?}"
        );
        assert!(
            cols.iter().all(|&d| d == col_degree),
            "{name} cols {cols:?}"
        );
        let dev = gram_error(w, r, c, gain);
        assert!(dev < 1e-13, "{name}: {dev}");
        // The mask is exactly the support.
        let mask = a.mask_of(name);
        assert!(w.iter().zip(&mask).all(|(v, m)| (*v != 0.0) == *m));
        assert_eq!(a.record(name)["degree"], if r > c { 16 } else { 64 });
    }
    // conv 16 x 8 x 3 x 3 at 0.25: k = 4 of m = 16, a = 2. The centre tap holds the SAO
    // matrix; the mask holds all 9 taps of every connected channel pair.
    let w = &a.tensor("conv.weight").values();
    let mask = a.mask_of("conv.weight");
    check_mask(&a, "conv.weight", 8 * 4 * 9);
    let centre: Vec<f64> = w.iter().skip(4).step_by(9).copied().collect();
    assert!(w.iter().enumerate().all(|(k, v)| k % 9 == 4 || *v == 0.0));
    assert!(gram_error(&centre, 16, 8, gain) < 1e-13);
    for (pair, taps) in mask.chunks(9).enumerate() {
        let connected = centre[pair] != 0.0;
        assert!(taps.iter().all(|&m| m == connected), "pair {pair}");
    }
    assert_eq!(a.record("conv.weight")["centre_nnz"], 8 * 4);
    let assert = eoi()
        .args(["verify", "--regenerate", "--json"])
        .arg(&out)
        .assert()
        .success();
    let report = json(util::stdout(&assert));
    assert_eq!(report["regenerate"]["passed"], true, "{report}");
    assert!(
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["tolerance"].is_number()),
        "SAO promises orthogonality: {report}"
    );
}

#[test]
fn sao_refuses_densities_it_cannot_make_and_names_the_nearest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let run = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let assert = eoi()
            .arg("plan")
            .arg(&path)
            .args(["--scheme", "sao"])
            .assert()
            .code(2);
        util::stderr(&assert)
    };
    let stderr = run(&spec_of(0.1, 1.0, &[("fc.weight", &[128, 128])]));
    assert!(stderr.contains("layer \"fc.weight\""), "{stderr}");
    assert!(
        stderr.contains("the nearest are 0.0625 (degree 8) below and 0.125 (degree 16) above"),
        "{stderr}"
    );
    // 10 x 128 needs 10 k / 128 whole: only k = 64 and 128.
    let stderr = run(&spec_of(0.3, 1.0, &[("fc.weight", &[10, 128])]));
    assert!(stderr.contains("below the 0.500000"), "{stderr}");
    // ERK densities are continuous: refused with the layer named.
    let stderr = run(
        "[sparsity]\ndensity = 0.25\ndistribution = \"erk\"\n[[layer]]\nname = \"a.weight\"\nshape = [64, 64]\n[[layer]]\nname = \"b.weight\"\nshape = [32, 64]\n",
    );
    assert!(stderr.contains("distribution \"erk\" gives it"), "{stderr}");
    // Valid densities plan fine, with the degree in the record.
    std::fs::write(&path, spec_of(0.125, 1.0, &[("fc.weight", &[128, 128])])).unwrap();
    let assert = eoi()
        .arg("plan")
        .arg(&path)
        .args(["--scheme", "sao", "--json"])
        .assert()
        .success();
    let plan = json(util::stdout(&assert));
    assert_eq!(plan["layers"][0]["degree"], 16);
    assert_eq!(plan["layers"][0]["expected_nnz"], 128 * 16);
}

/// `||G - g^2 I||_F / ||g^2 I||_F` of the smaller Gram matrix of an (r, c) row-major matrix.
fn isometry_error(values: &[f64], r: usize, c: usize, gain: f64) -> f64 {
    let at = |i: usize, k: usize| {
        if r <= c {
            values[i * c + k]
        } else {
            values[k * c + i]
        }
    };
    let (n, m) = (r.min(c), r.max(c));
    let mut sum = 0.0;
    for i in 0..n {
        for j in 0..n {
            let dot: f64 = (0..m).map(|k| at(i, k) * at(j, k)).sum();
            let want = if i == j { gain * gain } else { 0.0 };
            sum += (dot - want) * (dot - want);
        }
    }
    sum.sqrt() / (gain * gain * (n as f64).sqrt())
}

#[test]
fn approx_isometry_optimises_the_masked_orthogonal_start_and_records_its_error() {
    let (density, gain) = (0.3, 1.3);
    let layers: &[(&str, &[usize])] = &[
        ("wide.weight", &[48, 80]),
        ("tall.weight", &[80, 48]),
        ("conv.weight", &[32, 16, 3, 3]),
    ];
    let spec = spec_of(density, gain, layers);
    let start = generate(&spec, &["--scheme", "orthogonal"]);
    let none = generate(
        &spec.replace("[init]\n", "[init]\nai_steps = 0\n"),
        &["--scheme", "approx-isometry"],
    );
    let a = generate(&spec, &["--scheme", "approx-isometry"]);
    for &(name, shape) in layers {
        let numel: usize = shape.iter().product();
        check_mask(&a, name, (density * numel as f64).round() as usize);
        // The same mask as `orthogonal`, and with no steps the same weights, bit for bit.
        assert_eq!(a.mask_of(name), start.mask_of(name), "{name}");
        assert_eq!(
            none.tensor(name).values(),
            start.tensor(name).values(),
            "{name}"
        );
        let (r, c) = (shape[0], shape[1]);
        let (matrix, begun) = if shape.len() == 4 {
            let w = &a.tensor(name).values();
            assert!(
                w.iter().enumerate().all(|(k, v)| k % 9 == 4 || *v == 0.0),
                "{name}: off-centre"
            );
            (
                centre_tap(w, shape),
                centre_tap(&start.tensor(name).values(), shape),
            )
        } else {
            (a.tensor(name).values(), start.tensor(name).values())
        };
        let error = isometry_error(&matrix, r, c, gain);
        let initial = isometry_error(&begun, r, c, gain);
        let record = a.record(name);
        let recorded = record["isometry_error"].as_f64().unwrap();
        assert!(
            (error - recorded).abs() <= 1e-12,
            "{name}: {error} vs record {recorded}"
        );
        assert!(error < 0.1 * initial, "{name}: {error} from {initial}");
        assert_eq!(record["ai_steps"], 100, "{record}");
        assert_eq!(record["ai_lr"], 1.0, "{record}");
        let unoptimised = none.record(name)["isometry_error"].as_f64().unwrap();
        assert!(
            (unoptimised - initial).abs() <= 1e-12,
            "{name}: {unoptimised} vs {initial}"
        );
    }
}

#[test]
fn approx_isometry_bytes_do_not_depend_on_the_thread_count() {
    let spec = spec_of(
        0.2,
        1.0,
        &[("a.weight", &[64, 96]), ("b.weight", &[96, 64]), CONV],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for threads in ["1", "3"] {
        let sub = dir.path().join(threads);
        std::fs::create_dir(&sub).unwrap();
        let (_, out) = generate_in(
            &sub,
            &spec,
            &["--scheme", "approx-isometry", "--threads", threads],
        );
        files.push(std::fs::read(out).unwrap());
    }
    assert!(
        files[0] == files[1],
        "--threads 1 and 3 wrote different bytes"
    );
}

#[test]
fn a_moved_approx_isometry_weight_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_of(0.3, 1.0, &[("fc.weight", &[24, 40])]);
    let (a, out) = generate_in(dir.path(), &spec, &["--scheme", "approx-isometry"]);
    let assert = eoi().arg("verify").arg(&out).assert().success();
    let stdout = util::stdout(&assert);
    assert!(
        stdout.contains("1 approx-isometry layers hold the isometry error"),
        "{stdout}"
    );
    // Scale the first kept weight by 1.001: the stored matrix no longer has the recorded error.
    let first = a.mask_of("fc.weight").iter().position(|&m| m).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let at = data_range(&bytes, "fc.weight").start + 8 * first;
    let value = f64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let mut moved = bytes.clone();
    moved[at..at + 8].copy_from_slice(&(value * 1.001).to_le_bytes());
    std::fs::write(&out, moved).unwrap();
    let assert = eoi().arg("verify").arg(&out).assert().code(1);
    let stdout = util::stdout(&assert);
    assert!(
        stdout.contains("fc.weight  orthogonality: the isometry error"),
        "{stdout}"
    );
}

#[test]
fn bad_ai_steps_and_ai_lr_are_spec_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ai.toml");
    for (line, field, says) in [
        (
            "ai_steps = -1",
            "ai_steps",
            "ai_steps must be an integer from 0 to 4294967295, got -1",
        ),
        ("ai_steps = 5000000000", "ai_steps", "got 5000000000"),
        ("ai_lr = 0.0", "ai_lr", "ai_lr must be a number > 0, got 0"),
        ("ai_lr = -0.5", "ai_lr", "got -0.5"),
        ("ai_lr = inf", "ai_lr", "got inf"),
        ("ai_lr = nan", "ai_lr", "got NaN"),
        ("ai_steps = 1.5", "ai_steps", ""),
        ("ai_lr = \"fast\"", "ai_lr", ""),
    ] {
        std::fs::write(
            &path,
            format!("[sparsity]\ndensity = 0.5\n[init]\nscheme = \"approx-isometry\"\n{line}\n[[layer]]\nname = \"a\"\nshape = [8, 8]\n"),
        )
        .unwrap();
        let assert = eoi().arg("plan").arg(&path).assert().code(2);
        let stderr = util::stderr(&assert);
        assert!(stderr.contains("ai.toml"), "{line}: {stderr}");
        assert!(stderr.contains(&format!("`{field}`")), "{line}: {stderr}");
        assert!(stderr.contains(says), "{line}: {stderr}");
    }
    // Valid settings reach the plan.
    std::fs::write(
        &path,
        "[sparsity]\ndensity = 0.5\n[init]\nscheme = \"approx-isometry\"\nai_steps = 7\nai_lr = 0.25\n[[layer]]\nname = \"a\"\nshape = [8, 8]\n",
    )
    .unwrap();
    let assert = eoi()
        .arg("plan")
        .arg(&path)
        .arg("--json")
        .assert()
        .success();
    let plan = json(util::stdout(&assert));
    assert_eq!(plan["layers"][0]["ai_steps"], 7);
    assert_eq!(plan["layers"][0]["ai_lr"], 0.25);
    let assert = eoi().arg("plan").arg(&path).assert().success();
    let stdout = util::stdout(&assert);
    assert!(
        stdout.contains("approx-isometry: up to 7 gradient steps per layer at learning rate 0.25"),
        "{stdout}"
    );
}

#[test]
fn approx_isometry_writes_the_same_bytes_when_its_values_wait_on_disk() {
    // Alone, the two layers are prepared at once (their masks and values fit eoi's 4 MiB
    // budget for prepared layers); beside a 4.3-million-weight layer they do not, so their
    // descended values wait in a temporary file until written. Same bytes either way, and
    // for any thread count.
    let small = "seed = 4\n[sparsity]\ndensity = 0.25\n[init]\nscheme = \"approx-isometry\"\ngain = 1.1\n\
        [[layer]]\nname = \"a.weight\"\nshape = [64, 96]\n[[layer]]\nname = \"b.weight\"\nshape = [96, 64]\n";
    let large = format!(
        "{small}[[layer]]\nname = \"big.weight\"\nshape = [2048, 2100]\nscheme = \"kaiming\"\ndensity = 0.01\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, text: &str, threads: &str| {
        let spec = dir.path().join(format!("{name}.toml"));
        std::fs::write(&spec, text).unwrap();
        let out = dir.path().join(format!("{name}-{threads}.safetensors"));
        eoi()
            .arg("generate")
            .arg(&spec)
            .args(["-q", "--dtype", "f16", "--threads", threads, "-o"])
            .arg(&out)
            .assert()
            .success();
        let file = read_safetensors(&out);
        let errors: Vec<_> = file
            .layers()
            .iter()
            .filter(|r| r["scheme"] == "approx-isometry")
            .map(|r| r["isometry_error"].clone())
            .collect();
        let tensors: Vec<Vec<u8>> = ["a.weight", "a.weight_mask", "b.weight", "b.weight_mask"]
            .iter()
            .map(|t| file.tensor(t).data.clone())
            .collect();
        (tensors, errors)
    };
    let alone = run("small", small, "2");
    assert_eq!(alone.1.len(), 2);
    for threads in ["1", "3"] {
        assert!(
            run("large", &large, threads) == alone,
            "--threads {threads}"
        );
    }
}

#[test]
fn inspect_shows_the_recorded_isometry_error_of_approx_isometry_weights() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_of(0.3, 1.0, &[("fc.weight", &[24, 40]), CONV]);
    let (a, out) = generate_in(dir.path(), &spec, &["--scheme", "approx-isometry"]);
    let assert = eoi()
        .args(["inspect", "--json"])
        .arg(&out)
        .assert()
        .success();
    let report = json(util::stdout(&assert));
    for t in report["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if name.ends_with("_mask") {
            assert!(t["recorded_isometry_error"].is_null(), "{t}");
        } else {
            assert_eq!(
                t["recorded_isometry_error"],
                a.record(name)["isometry_error"],
                "{t}"
            );
        }
    }
    let assert = eoi().arg("inspect").arg(&out).assert().success();
    let stdout = util::stdout(&assert);
    let want = format!(
        "(approx-isometry, recorded isometry error {:.2e})",
        a.record("fc.weight")["isometry_error"].as_f64().unwrap()
    );
    assert!(stdout.contains(&want), "{stdout}");
}

/// `||T x|| / ||x||` for a random x on the periodic N^D grid, T the periodic
/// cross-correlation with kernel `w` (out, in, k...) as PyTorch's `Conv` computes it with
/// circular padding, `y[o, p] = sum_{i, t} w[o, i, t] x[i, p + t]`, computed directly in f64;
/// with `adjoint`, its transpose `x[i, p + t] += w[o, i, t] y[o, p]` (the transposed
/// convolution), from out to in channels.
fn periodic_gain(w: &Tensor, n: usize, adjoint: bool, seed: u64) -> f64 {
    let (out, inp, kernel) = (w.shape[0], w.shape[1], &w.shape[2..]);
    let dims = kernel.len();
    let cells = n.pow(dims as u32);
    let taps: usize = kernel.iter().product();
    let (from, to) = if adjoint { (out, inp) } else { (inp, out) };
    // A simple xorshift generator and Box-Muller: independent of eoi's streams.
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let x: Vec<f64> = (0..from * cells)
        .map(|_| (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos())
        .collect();
    let coords = |mut index: usize, sizes: &[usize]| {
        let mut c = vec![0; sizes.len()];
        for d in (0..sizes.len()).rev() {
            c[d] = index % sizes[d];
            index /= sizes[d];
        }
        c
    };
    let grid = vec![n; dims];
    let mut y = vec![0.0; to * cells];
    for cell in 0..cells {
        let p = coords(cell, &grid);
        for t in 0..taps {
            let s = coords(t, kernel);
            let q = (0..dims).fold(0, |acc, d| acc * n + (p[d] + s[d]) % n);
            for o in 0..out {
                for i in 0..inp {
                    let v = w.values()[(o * inp + i) * taps + t];
                    if adjoint {
                        y[i * cells + q] += v * x[o * cells + cell];
                    } else {
                        y[o * cells + cell] += v * x[i * cells + q];
                    }
                }
            }
        }
    }
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    norm(&y) / norm(&x)
}

#[test]
fn conv_orthogonal_kernels_preserve_the_norm_as_periodic_convolutions() {
    let gain = 1.5;
    let layers: &[(&str, &[usize])] = &[
        ("square.weight", &[12, 12, 3, 3]),
        ("tall.weight", &[16, 6, 3, 3]),
        ("wide.weight", &[5, 12, 3, 3]),
        ("even.weight", &[8, 8, 2, 4]),
        ("line.weight", &[6, 4, 5]),
        ("volume.weight", &[4, 6, 3, 3, 3]),
        ("fc.weight", &[20, 30]),
    ];
    let a = generate(
        &spec_of(1.0, gain, layers),
        &["--scheme", "conv-orthogonal"],
    );
    for &(name, shape) in layers {
        let w = a.tensor(name);
        check_mask(&a, name, shape.iter().product());
        if shape.len() == 2 {
            // A linear layer: a dense orthogonal matrix times the gain.
            let dev = gram_error(&w.values(), shape[0], shape[1], gain);
            assert!(dev < 1e-13, "{name}: {dev}");
            continue;
        }
        let kernel = &shape[2..];
        let taps: usize = kernel.iter().product();
        for t in 0..taps {
            assert!(
                w.values().iter().skip(t).step_by(taps).any(|v| *v != 0.0),
                "{name}: tap {t} unused"
            );
        }
        // More outputs than inputs: an isometry; fewer: its transpose is one.
        let adjoint = shape[0] < shape[1];
        for n in [*kernel.iter().max().unwrap(), 6] {
            let ratio = periodic_gain(w, n, adjoint, n as u64);
            assert!(
                (ratio - gain).abs() < 1e-10,
                "{name} on a {n}-grid: |Tx|/|x| = {ratio}, gain {gain}"
            );
        }
        // Not a delta kernel: its (out, in * K) matrix is not orthogonal when out > in.
        if shape[0] > shape[1] {
            let r = shape[0];
            let dev = gram_error(&w.values(), r, w.values().len() / r, gain);
            assert!(dev > 1e-3, "{name}: {dev}");
        }
    }
}

#[test]
fn conv_orthogonal_masks_and_matches_orthogonal_on_matrices() {
    let layers: &[(&str, &[usize])] = &[
        ("conv.weight", &[16, 8, 3, 3]),
        ("point.weight", &[16, 8, 1, 1]),
        ("fc.weight", &[30, 20]),
    ];
    let spec = spec_of(0.3, 2.0, layers);
    let a = generate(&spec, &["--scheme", "conv-orthogonal"]);
    let b = generate(&spec, &["--scheme", "orthogonal"]);
    for &(name, shape) in layers {
        let numel: usize = shape.iter().product();
        check_mask(&a, name, (0.3 * numel as f64).round() as usize);
        assert_eq!(a.record(name)["scheme"], "conv-orthogonal");
        let same = a.tensor(name).values() == b.tensor(name).values()
            && a.mask_of(name) == b.mask_of(name);
        // A matrix and a 1 x 1 kernel are the orthogonal scheme's, bit for bit; a 3 x 3
        // kernel uses every tap, so its kept weights lie off the centre too.
        assert_eq!(same, name != "conv.weight", "{name}");
    }
    let w = &a.tensor("conv.weight").values();
    assert!(w.iter().enumerate().any(|(k, v)| k % 9 != 4 && *v != 0.0));
}

#[test]
fn conv_orthogonal_at_density_one_verifies_and_a_broken_kernel_fails() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_of(
        1.0,
        1.0,
        &[
            ("tall.weight", &[12, 4, 3, 3]),
            ("wide.weight", &[4, 12, 3]),
        ],
    );
    let (_, out) = generate_in(dir.path(), &spec, &["--scheme", "conv-orthogonal"]);
    let assert = eoi()
        .args(["verify", "--regenerate", "--json"])
        .arg(&out)
        .assert()
        .success();
    let report = json(util::stdout(&assert));
    for layer in report["layers"].as_array().unwrap() {
        assert!(layer["tolerance"].is_number(), "{layer}");
        assert!(
            layer["orthogonality_error"].as_f64().unwrap() < 1e-13,
            "{layer}"
        );
    }
    // Scale one weight: the zero-lag Gram is no longer gain^2 I.
    let bytes = std::fs::read(&out).unwrap();
    let start = data_range(&bytes, "tall.weight").start;
    let mut broken = bytes.clone();
    let old = f64::from_le_bytes(broken[start..start + 8].try_into().unwrap());
    broken[start..start + 8].copy_from_slice(&(old * 1.5 + 0.1).to_le_bytes());
    std::fs::write(&out, broken).unwrap();
    let assert = eoi().arg("verify").arg(&out).assert().code(1);
    let stdout = util::stdout(&assert);
    assert!(
        stdout.contains("tall.weight") && stdout.contains("orthogonality"),
        "{stdout}"
    );
}

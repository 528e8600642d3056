//! N:M sparsity (`nm`): property tests of the construction through the library (the pattern
//! and exact orthogonality to 1e-12 in f64, over random shapes, the common patterns,
//! transposable or not, linear and conv, groups), and the real binary on real files: the
//! plan and the records show the pattern, `verify` checks it (and catches a mask that breaks
//! it), `inspect` finds it in any checkpoint, numpy confirms it independently, and the spec
//! errors name the layer, the shape and the nearest fix.

use proptest::prelude::*;
use serde_json::Value;

use crate::util::lib::{LayerPlan, Overrides, RowBlocks, Source, generate_layer, layer_stats};
use crate::util::lib::{parse_spec, plan};
use crate::util::{
    Needs, Sandbox, data_range, gram_error, read_safetensors, records_by_name, stderr, stdout,
};

/// The common patterns, (N, M).
const PATTERNS: [(usize, usize); 5] = [(1, 2), (2, 4), (1, 4), (2, 8), (4, 8)];

/// Plans a one-layer spec with an N:M pattern and returns the layer.
fn layer(
    shape: &[usize],
    groups: usize,
    nm: (usize, usize),
    transposable: bool,
    density: f64,
    scheme: &str,
) -> LayerPlan {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let text = format!(
        "[sparsity]\ndensity = {density:?}\nbelow_minimum = \"clamp\"\nnm = \"{}:{}\"\nnm_transposable = {transposable}\n[init]\nscheme = \"{scheme}\"\ngain = 1.3\nconv_center = \"sqrt\"\n[[layer]]\nname = \"w\"\nshape = [{}]\ngroups = {groups}\ndensity = {density:?}\n",
        nm.0,
        nm.1,
        dims.join(", ")
    );
    let spec = parse_spec(Source {
        name: "nm.toml".into(),
        text,
    })
    .expect("valid spec");
    let mut plan = plan(&spec, &Overrides::default()).expect("valid plan");
    plan.layers.remove(0)
}

/// A tensor (a weight or a mask) as row-major values of its (out, in, k...) shape.
fn flat<T: RowBlocks>(tensor: &T) -> Vec<T::Elem> {
    let mut out = Vec::new();
    tensor.rows_into(0, tensor.rows(), &mut out);
    out
}

/// The largest number of ones in a group of `m` consecutive inputs of a row at a tap, and
/// (when `out` is a multiple of `m`) in a group of `m` consecutive outputs of a column,
/// counted here from the definition.
fn most_per_group(ones: &[bool], shape: &[usize], m: usize) -> (usize, Option<usize>) {
    let (out, inp) = (shape[0], shape[1]);
    let taps: usize = shape[2..].iter().product();
    let at = |o: usize, i: usize, t: usize| ones[(o * inp + i) * taps + t];
    let mut along_inputs = 0;
    for o in 0..out {
        for t in 0..taps {
            for g in 0..inp / m {
                along_inputs = along_inputs.max((0..m).filter(|&j| at(o, g * m + j, t)).count());
            }
        }
    }
    let along_outputs = (out % m == 0).then(|| {
        let mut most = 0;
        for i in 0..inp {
            for t in 0..taps {
                for g in 0..out / m {
                    most = most.max((0..m).filter(|&j| at(g * m + j, i, t)).count());
                }
            }
        }
        most
    });
    (along_inputs, along_outputs)
}

/// A random N:M layer: its shape, groups, pattern and transposability.
fn nm_layer() -> impl Strategy<Value = (Vec<usize>, usize, (usize, usize), bool)> {
    (
        0..PATTERNS.len(),
        any::<bool>(),
        prop::option::of(prop::collection::vec(1usize..4, 1..=2)),
        1usize..=3,
        1usize..=4,
        0usize..=12,
    )
        .prop_map(|(p, transposable, kernel, groups, a, b)| {
            let (n, m) = PATTERNS[p];
            let classes = m / n;
            let groups = if kernel.is_some() { groups } else { 1 };
            let rows = if transposable {
                m * (1 + b % 3)
            } else {
                classes + b
            };
            let mut shape = vec![rows * groups, m * a];
            shape.extend(kernel.unwrap_or_default());
            (shape, groups, (n, m), transposable)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn eoi_nm_layers_are_exactly_orthogonal_and_keep_the_pattern(
        (shape, groups, nm, transposable) in nm_layer(),
        fraction in 0.05f64..=1.0,
        seed in any::<u64>(),
    ) {
        let (n, m) = nm;
        let density = fraction * n as f64 / m as f64;
        let l = layer(&shape, groups, nm, transposable, density, "eoi");
        let g = generate_layer(&l, seed);
        let w = flat(&g.weight);
        let mask: Vec<bool> = flat(&g.mask).iter().map(|&b| b == 1).collect();
        prop_assert!(w.iter().zip(&mask).all(|(x, &kept)| *x == 0.0 || kept), "a weight outside the mask");
        let (inputs, outputs) = most_per_group(&mask, &shape, m);
        prop_assert!(inputs <= n, "{inputs} ones in a group of {m} inputs");
        if transposable {
            prop_assert!(outputs.is_some_and(|c| c <= n), "{outputs:?} ones in a group of {m} outputs");
        }
        let (out, inp) = (shape[0], shape[1]);
        let taps: usize = shape[2..].iter().product();
        let ones = mask.iter().filter(|&&b| b).count() as u64;
        prop_assert_eq!(ones, g.stats.nnz);
        prop_assert_eq!(layer_stats(&l, seed), g.stats.clone());
        if shape.len() == 2 {
            // Exactly orthogonal, and the mask is the support.
            prop_assert!(gram_error(&w, out, inp, 1.3) < 1e-12);
            prop_assert!(w.iter().zip(&mask).all(|(x, &kept)| (*x != 0.0) == kept));
        } else {
            // Delta-orthogonal: each group's block of the centre tap is orthogonal, every
            // other tap is zero, and the mask is the centre's support topped up inside the
            // pattern to ceil(d * numel), at most N/M of the tensor.
            let tap = shape[2..].iter().fold(0, |acc, &k| acc * k + (k - 1) / 2);
            prop_assert!(w.iter().enumerate().all(|(k, x)| k % taps == tap || *x == 0.0));
            let centre: Vec<f64> = w.iter().skip(tap).step_by(taps).copied().collect();
            let rows = out / groups;
            for b in 0..groups {
                let block = &centre[b * rows * inp..(b + 1) * rows * inp];
                prop_assert!(gram_error(block, rows, inp, 1.3) < 1e-12, "block {b}");
            }
            let support = centre.iter().filter(|x| **x != 0.0).count() as u64;
            let numel = (out * inp * taps) as u64;
            let want = ((l.density * numel as f64).ceil() as u64).max(support).min(numel * n as u64 / m as u64);
            prop_assert_eq!(ones, want);
            prop_assert_eq!(g.stats.centre_nnz, Some(support));
        }
    }

    #[test]
    fn random_nm_masks_keep_the_pattern_and_their_count(
        (shape, groups, nm, transposable) in nm_layer(),
        fraction in 0.05f64..=1.0,
        scheme in prop::sample::select(vec!["kaiming", "scaled-kaiming", "orthogonal"]),
        seed in any::<u64>(),
    ) {
        let (n, m) = nm;
        let density = fraction * n as f64 / m as f64;
        let l = layer(&shape, groups, nm, transposable, density, scheme);
        let g = generate_layer(&l, seed);
        let w = flat(&g.weight);
        let mask: Vec<bool> = flat(&g.mask).iter().map(|&b| b == 1).collect();
        prop_assert!(w.iter().zip(&mask).all(|(x, &kept)| *x == 0.0 || kept));
        let (inputs, outputs) = most_per_group(&mask, &shape, m);
        prop_assert!(inputs <= n);
        if transposable {
            prop_assert!(outputs.is_some_and(|c| c <= n));
        }
        let numel = mask.len() as u64;
        let round = (l.density * numel as f64).round() as u64;
        let ones = mask.iter().filter(|&&b| b).count() as u64;
        prop_assert_eq!(ones, round.min(numel * n as u64 / m as u64));
        prop_assert_eq!(g.stats.nnz, ones);
    }
}

#[test]
fn at_n_over_m_a_random_mask_keeps_exactly_n_of_every_m() {
    // Without transposability: N positions of every M, drawn per row and tap; every one of
    // the C(4, 2) = 6 choices shows up, each about as often (1/6 of 4096 groups, sd 24).
    let l = layer(&[256, 64], 1, (2, 4), false, 0.5, "kaiming");
    let mask: Vec<u8> = flat(&generate_layer(&l, 9).mask);
    let mut seen = std::collections::HashMap::new();
    for group in mask.chunks(4) {
        assert_eq!(group.iter().filter(|&&b| b == 1).count(), 2);
        *seen.entry(group.to_vec()).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.values().all(|&c| (560..805).contains(&c)), "{seen:?}");
}

const SPEC: &str = r#"seed = 7

[sparsity]
density = 0.5
nm = "2:4"
dense = ["head.weight"]

[[layer]]
name = "wide.weight"
shape = [24, 64]

[[layer]]
name = "tall.weight"
shape = [64, 32]
nm_transposable = true

[[layer]]
name = "conv.weight"
shape = [16, 8, 3, 3]
groups = 2

[[layer]]
name = "free.weight"
shape = [16, 16]
nm = "none"
density = 0.25

[[layer]]
name = "head.weight"
shape = [10, 30]
"#;

#[test]
fn plan_and_records_show_the_pattern_only_for_nm_layers() {
    let sandbox = Sandbox::new();
    sandbox.write("nm.toml", SPEC);
    let plan = stdout(&sandbox.eoi(&["plan", "nm.toml"]).success());
    let row = |name: &str| {
        plan.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{plan}"))
            .to_string()
    };
    assert!(row("wide.weight").contains("24x64 nm=2:4 "), "{plan}");
    assert!(
        row("tall.weight").contains("64x32 nm=2:4 transposable"),
        "{plan}"
    );
    assert!(
        row("conv.weight").contains("16x8x3x3 groups=2 nm=2:4"),
        "{plan}"
    );
    assert!(!row("free.weight").contains("nm="), "{plan}");
    assert!(!row("head.weight").contains("nm="), "{plan}");
    assert!(row("wide.weight").contains("  nm  "), "origin nm: {plan}");
    assert!(plan.contains("docs/spec.md, \"N:M sparsity\""), "{plan}");

    let json = sandbox.json(&["plan", "nm.toml"], 0);
    let records = records_by_name(&json["layers"]);
    assert_eq!(records["wide.weight"]["nm"], "2:4");
    assert_eq!(records["wide.weight"]["origin"], "nm");
    assert_eq!(records["wide.weight"]["density"], 0.5);
    assert!(records["wide.weight"].get("nm_transposable").is_none());
    assert_eq!(records["tall.weight"]["nm_transposable"], true);
    for other in ["free.weight", "head.weight"] {
        assert!(records[other].get("nm").is_none(), "{other}");
        assert!(records[other].get("nm_transposable").is_none(), "{other}");
    }
    // The EOI convolution's centre density is capped at N/M (sqrt would ask 0.707).
    assert_eq!(records["conv.weight"]["centre_density"], 0.5);
}

#[test]
fn generated_nm_layers_verify_regenerate_and_pass_numpy_checks() {
    let sandbox = Sandbox::new();
    sandbox.write("nm.toml", SPEC);
    for scheme in ["eoi", "kaiming", "scaled-kaiming", "orthogonal"] {
        let out = format!("{scheme}.safetensors");
        sandbox
            .generate(SPEC, &out, &["--scheme", scheme])
            .success();
        let verified = sandbox.eoi(&["verify", &out, "--regenerate"]).success();
        assert!(
            stdout(&verified).contains("ok:"),
            "{scheme}: {}",
            stdout(&verified)
        );
        let records = read_safetensors(&sandbox.path(&out)).layer_records();
        assert_eq!(records["wide.weight"]["nm"], "2:4", "{scheme}");
    }
    // numpy, independently: every group of 4 inputs of every row (and tap) holds at most 2
    // ones, every group of 4 outputs of tall.weight too; weights are zero outside the mask;
    // EOI's matrices (and each group's centre block) are orthogonal.
    let check = r#"
import sys
import numpy as np
from safetensors.numpy import load_file

for scheme in ["eoi", "kaiming", "scaled-kaiming", "orthogonal"]:
    t = load_file(f"{scheme}.safetensors")
    for name in ["wide.weight", "tall.weight", "conv.weight"]:
        w, m = t[name].astype(np.float64), t[name + "_mask"]
        o, i = w.shape[:2]
        ones = m.reshape(o, i, -1)
        assert ones.reshape(o, i // 4, 4, -1).sum(axis=2).max() <= 2, (scheme, name)
        if name == "tall.weight":
            assert ones.reshape(o // 4, 4, i, -1).sum(axis=1).max() <= 2, (scheme, name)
        assert not w[~m].any(), (scheme, name)
        assert abs(m.mean() - 0.5) < 0.02, (scheme, name, m.mean())
        if scheme != "eoi":
            continue
        centre = w if w.ndim == 2 else w[:, :, 1, 1]
        blocks = [centre] if name != "conv.weight" else [centre[:8], centre[8:]]
        for b in blocks:
            g = b @ b.T if b.shape[0] <= b.shape[1] else b.T @ b
            assert abs(g - np.eye(len(g))).max() < 1e-6, (name, abs(g - np.eye(len(g))).max())
print("ok")
"#;
    assert_eq!(sandbox.python(Needs::NumpySafetensors, check).trim(), "ok");
}

#[test]
fn verify_catches_a_mask_that_breaks_the_pattern() {
    let sandbox = Sandbox::new();
    sandbox.write("nm.toml", SPEC);
    sandbox.generate(SPEC, "nm.safetensors", &[]).success();
    let mut bytes = sandbox.read("nm.safetensors");
    // In wide.weight's row 0, make the first group of 4 inputs hold 3 ones: the weights
    // there stay as they were (zero where the mask was 0), so only the pattern and the
    // count are wrong.
    let range = data_range(&bytes, "wide.weight_mask");
    let first = &mut bytes[range.start..range.start + 4];
    let zero = first.iter().position(|&b| b == 0).unwrap();
    first[zero] = 1;
    sandbox.write("broken.safetensors", &bytes);
    let failed = sandbox.eoi(&["verify", "broken.safetensors"]).code(1);
    let out = stdout(&failed);
    assert!(
        out.contains("1 groups of 4 inputs hold more than N = 2 ones (nm = \"2:4\"), first row 0, inputs 0..4 with 3"),
        "{out}"
    );
    // The JSON says which layer and which check.
    let json = sandbox.json(&["verify", "broken.safetensors"], 1);
    let wide = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "wide.weight")
        .unwrap();
    assert_eq!(wide["passed"], false);
    assert!(
        wide["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["message"].as_str().unwrap().contains("more than N = 2")),
        "{wide}"
    );
}

#[test]
fn inspect_finds_n_m_patterns_in_any_checkpoint() {
    // A checkpoint eoi did not write: numpy's 2:4 matrix (every row keeps inputs {0, 1} or
    // {2, 3} of each group of 4, by row parity), a dense one and a 1:4 one; in torch and
    // flax-like storage alike the patterns are along the inputs.
    let sandbox = Sandbox::new();
    let make = r#"
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
w = rng.standard_normal((8, 16)).astype(np.float32)
keep = np.zeros((8, 16), dtype=bool)
for r in range(8):
    for g in range(4):
        keep[r, 4 * g + 2 * (r % 2): 4 * g + 2 * (r % 2) + 2] = True
one = np.zeros((8, 16), dtype=np.float32)
one[:, ::4] = 1.0
save_file({"two.weight": np.ascontiguousarray(w * keep), "dense.weight": w, "one.weight": one}, "other.safetensors")
"#;
    sandbox.python(Needs::NumpySafetensors, make);
    let json = sandbox.json(&["inspect", "other.safetensors"], 0);
    let tensor = |name: &str| -> Value {
        json["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&tensor("two.weight")["nm"]), ["2:4", "4:8"]);
    // Along the outputs, rows 0..4 alternate between the two halves: 2 of 4 again.
    assert_eq!(
        names(&tensor("two.weight")["nm_transposable"]),
        ["2:4", "4:8"]
    );
    assert!(names(&tensor("dense.weight")["nm"]).is_empty());
    // One input of every 4, but all 8 rows on that input: 1:4 along the inputs only.
    assert_eq!(
        names(&tensor("one.weight")["nm"]),
        ["1:2", "2:4", "1:4", "2:8", "4:8"]
    );
    assert!(names(&tensor("one.weight")["nm_transposable"]).is_empty());
    let table = stdout(&sandbox.eoi(&["inspect", "other.safetensors"]).success());
    let row = table.lines().find(|l| l.starts_with("two.weight")).unwrap();
    assert!(row.ends_with("(N:M 2:4 4:8, transposable)"), "{row}");
    let dense = table
        .lines()
        .find(|l| l.starts_with("dense.weight"))
        .unwrap();
    assert!(!dense.contains("N:M"), "{dense}");
}

#[test]
fn flax_layout_keeps_the_pattern_along_the_inputs() {
    // Flax stores a Dense kernel (in, out): the groups of M inputs run down its first axis.
    // verify and inspect read it back in PyTorch order and find the same pattern.
    let sandbox = Sandbox::new();
    sandbox.write("nm.toml", SPEC);
    sandbox
        .generate(SPEC, "flax.safetensors", &["--layout", "flax"])
        .success();
    sandbox.eoi(&["verify", "flax.safetensors"]).success();
    let json = sandbox.json(&["inspect", "flax.safetensors"], 0);
    let wide = json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "wide.weight_mask")
        .unwrap();
    assert_eq!(wide["shape"], serde_json::json!([64, 24]));
    assert_eq!(wide["nm"][0], "2:4");
    let check = r#"
from safetensors.numpy import load_file
m = load_file("flax.safetensors")["wide.weight_mask"]
assert m.shape == (64, 24)
assert m.reshape(16, 4, 24).sum(axis=1).max() <= 2
print("ok")
"#;
    assert_eq!(sandbox.python(Needs::NumpySafetensors, check).trim(), "ok");
}

/// `eoi plan` on a spec, expecting a refusal (exit 2); its standard error.
fn refused(spec: &str) -> String {
    let sandbox = Sandbox::new();
    sandbox.write("bad.toml", spec);
    stderr(&sandbox.eoi(&["plan", "bad.toml"]).code(2))
}

#[test]
fn layers_the_pattern_does_not_fit_are_refused_or_skipped_as_nm_skip_says() {
    let layers = "[[layer]]\nname = \"stem.weight\"\nshape = [16, 3, 3, 3]\n[[layer]]\nname = \"fc.weight\"\nshape = [16, 32]\n";
    let e = refused(&format!(
        "[sparsity]\ndensity = 0.5\nnm = \"2:4\"\n{layers}"
    ));
    assert!(
        e.contains("layer \"stem.weight\", field `nm`: nm = \"2:4\" groups every 4 consecutive input channels, but shape 16x3x3x3 has 3 input channels, not a multiple of 4"),
        "{e}"
    );
    assert!(
        e.contains("help: use 4 input channels (a multiple of 4)"),
        "{e}"
    );
    assert!(
        e.contains("nm_skip = \"dense\" or \"unstructured\" in [sparsity]"),
        "{e}"
    );

    let sandbox = Sandbox::new();
    for (skip, density, origin) in [
        ("dense", 1.0, "dense"),
        ("unstructured", 0.5, "distributed"),
    ] {
        sandbox.write(
            "skip.toml",
            format!("[sparsity]\ndensity = 0.5\nnm = \"2:4\"\nnm_skip = \"{skip}\"\n{layers}"),
        );
        let json = sandbox.json(&["plan", "skip.toml"], 0);
        let records = records_by_name(&json["layers"]);
        assert_eq!(records["stem.weight"]["density"], density, "{skip}");
        assert_eq!(records["stem.weight"]["origin"], origin, "{skip}");
        assert!(records["stem.weight"].get("nm").is_none(), "{skip}");
        assert_eq!(records["fc.weight"]["nm"], "2:4", "{skip}");
    }
    // A layer's own nm is never skipped.
    let e = refused(
        "[sparsity]\ndensity = 0.5\nnm_skip = \"dense\"\nnm = \"1:4\"\n[[layer]]\nname = \"fc.weight\"\nshape = [16, 30]\nnm = \"2:4\"\n",
    );
    assert!(e.contains("has 30 inputs, not a multiple of 4"), "{e}");
    assert!(e.contains("help: use 32 inputs (a multiple of 4), or nm = \"1:2\", or nm = \"none\" for this layer"), "{e}");
}

#[test]
fn what_cannot_be_made_is_refused_with_the_reason() {
    let one = |sparsity: &str, layer: &str| {
        refused(&format!(
            "[sparsity]\ndensity = 0.5\n{sparsity}\n[[layer]]\nname = \"fc.weight\"\nshape = [16, 32]\n{layer}"
        ))
    };
    let e = one("nm = \"3:8\"", "");
    assert!(
        e.contains("[sparsity], field `nm`: in \"3:8\" N does not divide M"),
        "{e}"
    );
    assert!(
        e.contains("the nearest patterns are \"2:8\" or \"4:8\""),
        "{e}"
    );
    let e = one("", "nm = \"2of4\"");
    assert!(
        e.contains("layer \"fc.weight\", field `nm`: an N:M pattern is written \"N:M\""),
        "{e}"
    );
    let e = one("nm = \"2:4\"", "density = 0.75");
    assert!(
        e.contains("its density 0.75, above 0.5, the most an N:M layer with nm = \"2:4\" holds"),
        "{e}"
    );
    let e = one("nm = \"2:4\"", "scheme = \"sao\"");
    assert!(
        e.contains("scheme \"sao\" cannot make an N:M layer (nm = \"2:4\")"),
        "{e}"
    );
    let e = refused(
        "[sparsity]\ndensity = 0.5\nnm = \"2:4\"\nnm_transposable = true\n[[layer]]\nname = \"fc.weight\"\nshape = [6, 32]\n",
    );
    assert!(e.contains("nm_transposable groups every 4 consecutive outputs too, but shape 6x32 has 6 outputs, not a multiple of 4"), "{e}");
    assert!(e.contains("nm_transposable = false"), "{e}");
    let e = one("", "nm_transposable = true");
    assert!(
        e.contains("nm_transposable applies to N:M layers, but this layer has no N:M pattern"),
        "{e}"
    );
    let e = one("nm_skip = \"dense\"", "");
    assert!(e.contains("[sparsity] sets no `nm`"), "{e}");
    // Below the blocks' identity: 2:4 on 16 x 32 is two 8 x 16 blocks, 1/16 of each.
    let e = one("nm = \"2:4\"", "density = 0.01");
    assert!(
        e.contains("below the 0.031250 that N:M EOI can make for shape 16x32"),
        "{e}"
    );
}

#[test]
fn nm_layers_count_as_fixed_in_the_budget() {
    // ERK over the free layer only: the 2:4 layer keeps 0.5 of its 512 weights, so the free
    // 16 x 16 layer gets what keeps the overall density at 0.4: (0.4 * 768 - 256) / 256.
    let sandbox = Sandbox::new();
    sandbox.write(
        "budget.toml",
        "[sparsity]\ndensity = 0.4\ndistribution = \"erk\"\nnm = \"2:4\"\n[[layer]]\nname = \"a\"\nshape = [16, 32]\n[[layer]]\nname = \"b\"\nshape = [16, 16]\nnm = \"none\"\n",
    );
    let json = sandbox.json(&["plan", "budget.toml"], 0);
    let records = records_by_name(&json["layers"]);
    assert_eq!(records["a"]["density"], 0.5);
    let b = records["b"]["density"].as_f64().unwrap();
    assert!((b - (0.4 * 768.0 - 256.0) / 256.0).abs() < 1e-12, "{b}");
    assert!((json["density"].as_f64().unwrap() - 0.4).abs() < 1e-12);
    // Every layer fixed by its pattern leaves ERK nothing to spread: the help says why.
    sandbox.write(
        "all.toml",
        "[sparsity]\ndensity = 0.4\ndistribution = \"erk\"\nnm = \"2:4\"\n[[layer]]\nname = \"a\"\nshape = [16, 32]\n",
    );
    let e = stderr(&sandbox.eoi(&["plan", "all.toml"]).code(2));
    assert!(e.contains("N:M layers are fixed at N/M too"), "{e}");
    // A target below N/M is a warning: N:M layers still keep N/M.
    sandbox.write(
        "low.toml",
        "[sparsity]\ndensity = 0.25\nnm = \"2:4\"\n[[layer]]\nname = \"a\"\nshape = [16, 32]\n",
    );
    let e = stderr(&sandbox.eoi(&["plan", "low.toml"]).success());
    assert!(
        e.contains("[sparsity] density 0.25 is below 0.5 (N/M of nm = \"2:4\")"),
        "{e}"
    );
}

#[test]
fn layers_without_a_pattern_keep_their_records_and_bytes() {
    // The same unstructured layer with and without an N:M layer beside it: its record and
    // its tensors' bytes are the same.
    let sandbox = Sandbox::new();
    let plain = "seed = 1\n[sparsity]\ndensity = 0.3\n[[layer]]\nname = \"a\"\nshape = [12, 20]\n";
    let mixed =
        format!("{plain}[[layer]]\nname = \"b\"\nshape = [8, 8]\nnm = \"1:2\"\ndensity = 0.5\n");
    sandbox.generate(plain, "plain.safetensors", &[]).success();
    sandbox.generate(&mixed, "mixed.safetensors", &[]).success();
    let plain = read_safetensors(&sandbox.path("plain.safetensors"));
    let mixed = read_safetensors(&sandbox.path("mixed.safetensors"));
    assert_eq!(plain.record("a"), mixed.record("a"));
    for name in ["a", "a_mask"] {
        assert_eq!(plain.tensor(name).data, mixed.tensor(name).data, "{name}");
    }
    assert_eq!(mixed.record("b")["nm"], "1:2");
}

#[test]
fn the_guides_jax_recipe_keeps_the_pattern_through_training() {
    // docs/guide.md, "N:M masks in PyTorch and JAX": the flax-layout 2:4 mask, the groups of
    // 4 inputs down the kernel's first axis, kept through 3 AdamW steps by masking the
    // updates. (The PyTorch recipe needs torch, which CI does not install: run by hand.)
    let sandbox = Sandbox::new();
    let spec = "seed = 3\n[sparsity]\ndensity = 0.5\nnm = \"2:4\"\n[[layer]]\nname = \"fc1.weight\"\nshape = [256, 128]\n[[layer]]\nname = \"fc2.weight\"\nshape = [128, 256]\nnm_transposable = true\n";
    sandbox
        .generate(spec, "nm-flax.safetensors", &["--layout", "flax"])
        .success();
    let recipe = r#"
import jax, jax.numpy as jnp, optax
from safetensors.numpy import load_file

t = load_file("nm-flax.safetensors")
kernel, mask = jnp.asarray(t["fc1.weight"]), jnp.asarray(t["fc1.weight_mask"])
assert kernel.shape == (128, 256), kernel.shape
assert int(mask.reshape(-1, 4, 256).sum(axis=1).max()) == 2
params, masks = {"kernel": kernel}, {"kernel": mask.astype(kernel.dtype)}
opt = optax.adamw(1e-3)
state = opt.init(params)
loss = lambda p, x: jnp.mean(jnp.tanh(x @ p["kernel"]) ** 2)
x = jax.random.normal(jax.random.key(0), (32, 128))
for _ in range(3):
    grads = jax.grad(loss)(params, x)
    updates, state = opt.update(grads, state, params)
    updates = jax.tree.map(lambda u, m: u * m, updates, masks)
    params = optax.apply_updates(params, updates)
moved = params["kernel"] != kernel
assert bool(moved.any())
assert not bool(jnp.any(jnp.where(mask, 0, params["kernel"])))
assert int((params["kernel"] != 0).reshape(-1, 4, 256).sum(axis=1).max()) <= 2
# fc2 is transposable: its (in, out) kernel is 2:4 down both axes
m2 = t["fc2.weight_mask"]
assert m2.reshape(-1, 4, 128).sum(axis=1).max() <= 2
assert m2.reshape(256, -1, 4).sum(axis=2).max() <= 2
print("ok")
"#;
    assert_eq!(sandbox.python(Needs::Examples, recipe).trim(), "ok");
}

//! `verify`'s fast paths (the Gram matrix of a sparse layer from its nonzeros, a linear
//! layer read as stored, in either layout) against the dense computation by numpy in f64:
//! on fresh EOI layers, on layers tampered with inside the mask, and on random matrices with
//! an EOI layer's support. The orthogonality error verify reports must be numpy's
//! `max |G - gain^2 I|` of the smaller Gram matrix G to rounding, and its verdict the one
//! that error gives against the reported tolerance.

use serde_json::Value;

use crate::util::{Sandbox, json, run_python_code, stdout};

/// Sparse layers large enough for the sparse product (wide, tall, square), a dense one, and
/// a square one at a density where the dense product is the cheaper.
const MODEL: &str = r#"seed = 5

[sparsity]
density = 0.05

[[layer]]
name = "wide.weight"
shape = [256, 640]

[[layer]]
name = "tall.weight"
shape = [600, 200]

[[layer]]
name = "square.weight"
shape = [300, 300]

[[layer]]
name = "dense.weight"
shape = [160, 240]
density = 1.0

[[layer]]
name = "half.weight"
shape = [256, 256]
density = 0.5
"#;

/// Tampers with a safetensors file in place, keeping its metadata: `wide` gets N(0, 1)
/// values on its mask's support (a random sparse matrix), `tall` one weight inside the mask
/// scaled by 1.001, `square` every weight inside the mask perturbed by 1e-6 relative;
/// `dense` and `half` stay as written.
const TAMPER: &str = r#"
import sys, numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
path = sys.argv[1]
with safe_open(path, "np") as f:
    meta = f.metadata()
    tensors = {k: f.get_tensor(k) for k in f.keys()}
rng = np.random.default_rng(3)
w, m = tensors["wide.weight"], tensors["wide.weight_mask"].astype(bool)
w[m] = rng.standard_normal(int(m.sum())).astype(w.dtype)
w, m = tensors["tall.weight"], tensors["tall.weight_mask"].astype(bool)
at = np.argwhere(m & (np.abs(w) > 0.05))[0]
w[tuple(at)] *= np.float32(1.001)
w, m = tensors["square.weight"], tensors["square.weight_mask"].astype(bool)
w[m] *= (1 + 1e-6 * rng.standard_normal(int(m.sum()))).astype(w.dtype)
save_file(tensors, path, metadata=meta)
"#;

/// Prints, as JSON, numpy's `max |G - gain^2 I|` in f64 for each layer of argv[2] (a JSON
/// object of layer name to gain), G the smaller Gram matrix of the layer's (out, in) matrix
/// (a Flax kernel, argv[3] == "flax", is stored transposed; for a square one the order
/// matters to rounding: verify takes `L L^T`).
const DENSE: &str = r#"
import sys, json, numpy as np
from safetensors import safe_open
gains = json.loads(sys.argv[2])
out = {}
with safe_open(sys.argv[1], "np") as f:
    for name, gain in gains.items():
        w = f.get_tensor(name).astype(np.float64)
        if sys.argv[3] == "flax":
            w = w.T
        g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        out[name] = float(np.abs(g - gain * gain * np.eye(g.shape[0])).max())
print(json.dumps(out))
"#;

/// verify's JSON report of `file`, whatever its exit code (0 or 1).
fn verify(sandbox: &Sandbox, file: &str) -> Value {
    let assert = sandbox.eoi(&["verify", file, "--json"]);
    let code = assert.get_output().status.code();
    assert!(matches!(code, Some(0 | 1)), "exit {code:?}");
    json(stdout(&assert))
}

/// Compares every layer of verify's report of `file` with numpy's dense computation, and
/// returns the names of the layers that failed orthogonality.
fn compare_with_numpy(sandbox: &Sandbox, file: &str, layout: &str) -> Vec<String> {
    let report = verify(sandbox, file);
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "{report}");
    let gains: serde_json::Map<String, Value> = layers
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_owned(), l["gain"].clone()))
        .collect();
    let dense = json(
        run_python_code(
            DENSE,
            [
                sandbox.path(file).into_os_string(),
                Value::Object(gains).to_string().into(),
                layout.into(),
            ],
        )
        .stdout,
    );
    let mut failed = Vec::new();
    for layer in layers {
        let name = layer["name"].as_str().unwrap();
        let ours = layer["orthogonality_error"].as_f64().unwrap();
        let theirs = dense[name].as_f64().unwrap();
        let gain = layer["gain"].as_f64().unwrap();
        // Both sum the same f64 products, in different orders.
        let slack = 1e-13 * (gain * gain + theirs);
        assert!(
            (ours - theirs).abs() <= slack,
            "{file} {name}: verify {ours:e}, numpy {theirs:e}"
        );
        let tolerance = layer["tolerance"].as_f64().unwrap();
        let failures = layer["failures"].as_array().unwrap();
        let orthogonality = failures.iter().any(|f| f["check"] == "orthogonality");
        assert_eq!(orthogonality, theirs > tolerance, "{file} {name}: {layer}");
        if orthogonality {
            failed.push(name.to_owned());
        }
    }
    failed
}

#[test]
fn verify_matches_numpy_on_fresh_tampered_and_random_layers() {
    let sandbox = Sandbox::new();
    for layout in ["torch", "flax"] {
        let file = format!("{layout}.safetensors");
        sandbox
            .generate(MODEL, &file, &["-q", "--layout", layout])
            .success();
        assert!(
            compare_with_numpy(&sandbox, &file, layout).is_empty(),
            "{layout}"
        );
        run_python_code(TAMPER, [sandbox.path(&file)]);
        assert_eq!(
            compare_with_numpy(&sandbox, &file, layout),
            ["wide.weight", "tall.weight", "square.weight"],
            "{layout}"
        );
    }
}

/// Writes random matrices (argv[1]): dense, sparse, tall, wide, nearly singular and exactly
/// rank-deficient, in f64 and f32; prints numpy's singular values (`svd(compute_uv=False)` in
/// f64) of each as JSON.
const RANDOM: &str = r#"
import sys, json, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(7)
t = {}
t["dense.weight"] = rng.standard_normal((300, 300))
s = rng.standard_normal((400, 900)); s[rng.random(s.shape) > 0.03] = 0; t["sparse.weight"] = s
t["tall.weight"] = rng.standard_normal((500, 120)).astype(np.float32)
q, _ = np.linalg.qr(rng.standard_normal((256, 256)))
t["ortho.weight"] = 1.7 * q
d = rng.standard_normal((210, 210)); d[:, 0] = d[:, 1] * (1 + 1e-9); t["near.weight"] = d
r = rng.standard_normal((220, 5)) @ rng.standard_normal((5, 260)); t["rank5.weight"] = r
save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, sys.argv[1])
print(json.dumps({k: np.linalg.svd(v.astype(np.float64), compute_uv=False).tolist() for k, v in t.items()}))
"#;

#[test]
fn inspect_singular_values_match_numpy_svd_by_eigenvalues_and_by_svd() {
    let sandbox = Sandbox::new();
    let svd = json(run_python_code(RANDOM, [sandbox.path("r.safetensors")]).stdout);
    for flag in [None, Some("--svd")] {
        let mut args = vec!["inspect", "r.safetensors", "--json"];
        args.extend(flag);
        let report = json(stdout(&sandbox.eoi(&args).success()));
        let tensors = report["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), 6);
        for t in tensors {
            let name = t["name"].as_str().unwrap();
            let want: Vec<f64> = serde_json::from_value(svd[name].clone()).unwrap();
            let (max, min) = (want[0], *want.last().unwrap());
            let got_max = t["singular_max"].as_f64().unwrap();
            let got_min = t["singular_min"].as_f64().unwrap();
            // An eigenvalue of G in f64 is off by a small multiple of eps * ||G||, so the
            // squares are compared; an SVD is accurate to eps * max in the values.
            let bound = match flag {
                None => 1e-12 * max * max,
                Some(_) => 1e-12 * max * (max + min),
            };
            assert!(
                (got_max * got_max - max * max).abs() <= bound,
                "{flag:?} {name}: max {got_max:e} against {max:e}"
            );
            assert!(
                (got_min * got_min - min * min).abs() <= bound,
                "{flag:?} {name}: min {got_min:e} against {min:e}"
            );
        }
    }
}

#[test]
fn inspect_layers_selects_tensors_by_glob() {
    let sandbox = Sandbox::new();
    sandbox.generate(MODEL, "m.safetensors", &["-q"]).success();
    let report = sandbox.json(
        &[
            "inspect",
            "m.safetensors",
            "--layers",
            "*.weight",
            "--layers",
            "half.*",
        ],
        0,
    );
    let names: Vec<&str> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "wide.weight",
            "tall.weight",
            "square.weight",
            "dense.weight",
            "half.weight",
            "half.weight_mask"
        ]
    );
    let assert = sandbox
        .eoi(&["inspect", "m.safetensors", "--layers", "conv*"])
        .code(2);
    let err = crate::util::stderr(&assert);
    assert!(
        err.contains(
            "--layers 'conv*' matches no tensor of 'm.safetensors' (tensors: \"wide.weight\""
        ),
        "{err}"
    );
    assert!(stdout(&assert).is_empty());
}

//! `eoi generate ... --masks MASKS`: every mask in its own safetensors file, keyed by its
//! layer's name, and none in the weights output. The official Python safetensors reads
//! both files (tests/python/list_tensors.py); their tensors are compared with a plain run of
//! the same spec, byte for byte, and each file records the other's name. Where the masks
//! cannot go apart, the run is refused with exit 2 and nothing is written.

use std::fs;
use std::path::{Path, PathBuf};

use predicates::str::contains;
use serde_json::{Value, json};

use crate::util::{
    Entry, contents, data_range, eoi, eoi_after, json as parse_json, names_in, python_view,
    safetensors_bytes,
};

const SPEC: &str = r#"
[sparsity]
density = 0.5
[init]
bias_std = 0.05
[[layer]]
name = "fc1.weight"
shape = [16, 12]
[[layer]]
name = "conv.weight"
shape = [8, 4, 3, 3]
[[layer]]
name = "head"
shape = [5, 16]
"#;

const LAYERS: [&str; 3] = ["fc1.weight", "conv.weight", "head"];

fn spec(dir: &Path) -> PathBuf {
    let path = dir.join("spec.toml");
    fs::write(&path, SPEC).unwrap();
    path
}

/// A plain run of SPEC (masks beside their weights), as Python reads it.
fn plain(dir: &Path) -> Value {
    let out = dir.join("plain.safetensors");
    eoi()
        .arg("generate")
        .arg(spec(dir))
        .args(["-q", "--force", "-o"])
        .arg(&out)
        .assert()
        .success();
    python_view(&[out])["plain.safetensors"].clone()
}

fn names(view: &Value) -> Vec<String> {
    let mut names: Vec<String> = view["tensors"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

/// Every mask of `plain` is in `masks` under its layer's name, with its bytes.
fn assert_masks_of(plain: &Value, masks: &Value) {
    let mut expected: Vec<String> = LAYERS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(names(masks), expected);
    for layer in LAYERS {
        assert_eq!(
            masks["tensors"][layer],
            plain["tensors"][format!("{layer}_mask")],
            "{layer}"
        );
        assert_eq!(masks["tensors"][layer]["dtype"], "bool");
    }
}

#[test]
fn a_single_file_and_its_masks_file_hold_the_plain_runs_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain(dir.path());
    let out = dir.path().join("init.safetensors");
    let masks = dir.path().join("init-masks.safetensors");
    eoi()
        .arg("generate")
        .arg(spec(dir.path()))
        .arg("-o")
        .arg(&out)
        .arg("--masks")
        .arg(&masks)
        .assert()
        .success()
        .stderr(contains("and its masks to"));
    let view = python_view(&[out.clone(), masks.clone()]);
    let (weights, mask_file) = (&view["init.safetensors"], &view["init-masks.safetensors"]);
    // The weights file: the plain run's weights and biases, no mask.
    let expected: Vec<String> = names(&plain)
        .into_iter()
        .filter(|n| !n.ends_with("_mask"))
        .collect();
    assert_eq!(names(weights), expected);
    for name in &expected {
        assert_eq!(weights["tensors"][name], plain["tensors"][name], "{name}");
    }
    assert_masks_of(&plain, mask_file);
    // Each records the other, and the plan's provenance.
    assert_eq!(weights["metadata"]["eoi.masks"], "init-masks.safetensors");
    assert_eq!(mask_file["metadata"]["eoi.weights"], "init.safetensors");
    for key in ["eoi.layers", "eoi.spec", "eoi.seed", "eoi.version"] {
        assert_eq!(weights["metadata"][key], plain["metadata"][key], "{key}");
        assert_eq!(mask_file["metadata"][key], plain["metadata"][key], "{key}");
    }
    // Deterministic bytes: a second run writes the same two files.
    let first = (fs::read(&out).unwrap(), fs::read(&masks).unwrap());
    eoi()
        .arg("generate")
        .arg(spec(dir.path()))
        .args(["-q", "--force", "--threads", "1", "-o"])
        .arg(&out)
        .arg("--masks")
        .arg(&masks)
        .assert()
        .success();
    assert_eq!(first, (fs::read(&out).unwrap(), fs::read(&masks).unwrap()));
}

#[test]
fn the_names_recorded_are_relative_so_the_pair_moves_together() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("masks")).unwrap();
    fs::create_dir(dir.path().join("weights")).unwrap();
    eoi()
        .current_dir(dir.path())
        .arg("generate")
        .arg(spec(dir.path()))
        .args(["-q", "-o", "weights/w.safetensors"])
        .args(["--masks", "./masks/../masks/m.safetensors"])
        .assert()
        .success();
    let w = dir.path().join("weights/w.safetensors");
    let m = dir.path().join("masks/m.safetensors");
    let view = python_view(&[w, m]);
    assert_eq!(
        view["w.safetensors"]["metadata"]["eoi.masks"],
        "../masks/m.safetensors"
    );
    assert_eq!(
        view["m.safetensors"]["metadata"]["eoi.weights"],
        "../weights/w.safetensors"
    );
}

#[test]
fn sharded_weights_hold_no_mask_and_their_index_lists_none() {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain(dir.path());
    let out = dir.path().join("shards");
    let masks = dir.path().join("masks.safetensors");
    eoi()
        .arg("generate")
        .arg(spec(dir.path()))
        .args(["-q", "--max-shard-size", "1600B", "-o"])
        .arg(&out)
        .arg("--masks")
        .arg(&masks)
        .assert()
        .success();
    let index = parse_json(fs::read(out.join("model.safetensors.index.json")).unwrap());
    let map = index["weight_map"].as_object().unwrap();
    let mut shards: Vec<PathBuf> = map
        .values()
        .map(|f| out.join(f.as_str().unwrap()))
        .collect();
    shards.sort();
    shards.dedup();
    // The shards are filled by the bytes they hold: fc1 (832 bytes with its bias), then conv
    // (1184) and head (320) together. Counting the masks (192, 288 and 80 bytes) would have
    // put conv and head apart.
    assert_eq!(shards.len(), 2, "{map:?}");
    let view = python_view(&shards);
    let mut seen = Vec::new();
    for (file, shard) in view.as_object().unwrap() {
        assert_eq!(
            shard["metadata"]["eoi.masks"], "../masks.safetensors",
            "{file}"
        );
        for name in names(shard) {
            assert_eq!(shard["tensors"][&name], plain["tensors"][&name], "{name}");
            assert_eq!(map[&name].as_str(), Some(file.as_str()));
            seen.push(name);
        }
    }
    seen.sort();
    assert_eq!(seen.len(), map.len());
    assert!(seen.iter().all(|n| !n.ends_with("_mask")), "{seen:?}");
    let masks_view = python_view(std::slice::from_ref(&masks));
    assert_masks_of(&plain, &masks_view["masks.safetensors"]);
    assert_eq!(
        masks_view["masks.safetensors"]["metadata"]["eoi.weights"],
        "shards"
    );
}

/// A safetensors base holding the spec's layers (and a norm vector) with distinct bytes.
fn write_base(path: &Path) {
    let entries: Vec<Entry> = [
        ("fc1.weight", vec![16, 12]),
        ("fc1.bias", vec![16]),
        ("norm.weight", vec![16]),
        ("conv.weight", vec![8, 4, 3, 3]),
        ("conv.bias", vec![8]),
        ("head", vec![5, 16]),
    ]
    .iter()
    .enumerate()
    .map(|(k, (name, shape))| Entry::patterned(name, "F32", shape, k))
    .collect();
    let metadata = json!({"format": "pt"});
    fs::write(path, safetensors_bytes(&entries, Some(&metadata), false)).unwrap();
}

#[test]
fn a_completed_checkpoint_keeps_its_masks_apart_too() {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain(dir.path());
    // A single-file base, and a save_pretrained directory holding the same file.
    let file = dir.path().join("base.safetensors");
    write_base(&file);
    let hf = dir.path().join("hf");
    fs::create_dir(&hf).unwrap();
    fs::copy(&file, hf.join("model.safetensors")).unwrap();
    fs::write(hf.join("config.json"), "{\"model_type\": \"test\"}\n").unwrap();
    for (base, out, weights) in [
        (&file, "out.safetensors", "out.safetensors"),
        (&hf, "out-dir", "out-dir/model.safetensors"),
    ] {
        let masks = dir.path().join(format!("{out}.masks.safetensors"));
        eoi()
            .arg("generate")
            .arg(spec(dir.path()))
            .arg("--base")
            .arg(base)
            .args(["-q", "-o"])
            .arg(dir.path().join(out))
            .arg("--masks")
            .arg(&masks)
            .assert()
            .success();
        let weights = dir.path().join(weights);
        let view = python_view(&[weights.clone(), masks.clone()]);
        let w = &view[weights.file_name().unwrap().to_str().unwrap()];
        // The base's tensors, the layers replaced, the biases generated: no mask.
        assert_eq!(
            names(w),
            [
                "conv.bias",
                "conv.weight",
                "fc1.bias",
                "fc1.weight",
                "head",
                "norm.weight"
            ]
        );
        for layer in LAYERS {
            assert_eq!(w["tensors"][layer], plain["tensors"][layer], "{layer}");
        }
        let m = &view[masks.file_name().unwrap().to_str().unwrap()];
        assert_masks_of(&plain, m);
        let expected = if base == &file {
            format!("{out}.masks.safetensors")
        } else {
            format!("../{out}.masks.safetensors")
        };
        assert_eq!(w["metadata"]["eoi.masks"], expected.as_str());
        assert_eq!(w["metadata"]["eoi.base"], m["metadata"]["eoi.base"]);
        assert_eq!(m["metadata"]["eoi.weights"], out);
    }
    assert_eq!(
        fs::read(dir.path().join("out-dir/config.json")).unwrap(),
        fs::read(hf.join("config.json")).unwrap()
    );
}

/// Runs `eoi generate SPEC ARGS` in `dir`, which must fail with exit 2 and `message`, leaving
/// the directory as it was.
fn refused(dir: &Path, args: &[&str], message: &str) {
    let spec = spec(dir);
    let before = (names_in(dir), contents(dir));
    eoi()
        .current_dir(dir)
        .arg("generate")
        .arg(&spec)
        .args(args)
        .assert()
        .code(2)
        .stderr(contains(message));
    assert_eq!((names_in(dir), contents(dir)), before, "{args:?}");
}

#[test]
fn where_masks_cannot_go_apart_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = ["--masks", "m.safetensors"];
    let with = |args: &[&'static str]| [args, &m[..]].concat();
    refused(
        d,
        &with(&["-o", "out", "--format", "npy"]),
        "npy output keeps every mask as its own tensor already",
    );
    refused(
        d,
        &with(&["-o", "out.npz", "--format", "npz"]),
        "npz output keeps every mask",
    );
    refused(
        d,
        &with(&["-o", "out.safetensors", "--names", "torch-prune"]),
        "torch.nn.utils.prune loads it",
    );
    refused(
        d,
        &with(&["-o", "out", "--max-shard-size", "1KB", "--shard", "1/3"]),
        "--shard 1/3 writes only one part's layers",
    );
    refused(
        d,
        &[
            "-o",
            "out",
            "--max-shard-size",
            "1KB",
            "--masks",
            "out/m.safetensors",
        ],
        "is the output 'out' or inside it",
    );
    refused(
        d,
        &["-o", "same.safetensors", "--masks", "./same.safetensors"],
        "is the output 'same.safetensors' or inside it",
    );
    // Standard output is a pipe here, not a terminal.
    refused(d, &with(&["-o", "-"]), "give the weights a path");
    // Never over an existing masks file without --force, nor over a directory.
    fs::write(d.join("m.safetensors"), "earlier masks").unwrap();
    refused(
        d,
        &with(&["-o", "out.safetensors"]),
        "'m.safetensors' already exists; pass --force",
    );
    fs::remove_file(d.join("m.safetensors")).unwrap();
    fs::create_dir(d.join("m.safetensors")).unwrap();
    refused(
        d,
        &with(&["-o", "out.safetensors", "--force"]),
        "'m.safetensors' is a directory",
    );
    fs::remove_dir(d.join("m.safetensors")).unwrap();
    // An existing weights output refuses the pair: neither file is written.
    fs::write(d.join("out.safetensors"), "earlier weights").unwrap();
    refused(d, &with(&["-o", "out.safetensors"]), "already exists");
    assert!(!d.join("m.safetensors").exists());
}

/// Runs `eoi generate` under `ulimit -f 100`: the weights (1 MB) cannot be written.
#[cfg(target_os = "linux")]
#[test]
fn a_write_failure_leaves_both_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(
        d.join("big.toml"),
        "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"l{i}.weight\"\nshape = [256, 256]\nrepeat = 4\n",
    )
    .unwrap();
    fs::write(d.join("out.safetensors"), "earlier weights").unwrap();
    fs::write(d.join("m.safetensors"), "earlier masks").unwrap();
    eoi_after("ulimit -f 100")
        .current_dir(d)
        .args(["generate", "big.toml", "-o", "out.safetensors"])
        .args(["--masks", "m.safetensors", "--force"])
        .assert()
        .code(1)
        .stderr(contains("File too large"));
    assert_eq!(
        fs::read_to_string(d.join("out.safetensors")).unwrap(),
        "earlier weights"
    );
    assert_eq!(
        fs::read_to_string(d.join("m.safetensors")).unwrap(),
        "earlier masks"
    );
    let names = names_in(d);
    // No temporary file is left: only the spec and the two old files.
    assert_eq!(names, ["big.toml", "m.safetensors", "out.safetensors"]);
}

fn verify(dir: &Path, target: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    eoi()
        .current_dir(dir)
        .arg("verify")
        .arg(target)
        .args(args)
        .assert()
}

#[test]
fn verify_reads_the_masks_from_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let generate = |out: &str, masks: &str, extra: &[&str]| {
        eoi()
            .current_dir(dir.path())
            .arg("generate")
            .arg(&spec)
            .args(["-q", "-o", out, "--masks", masks])
            .args(extra)
            .assert()
            .success();
    };
    generate("w.safetensors", "m.safetensors", &[]);
    generate(
        "shards",
        "shard-masks.safetensors",
        &["--max-shard-size", "1600B"],
    );
    for target in ["w.safetensors", "shards"] {
        for args in [&[][..], &["--regenerate"][..]] {
            verify(dir.path(), Path::new(target), args)
                .success()
                .stdout(contains("3 layers pass every check"))
                .stdout(contains("the masks are read from '"));
        }
    }
    // The pair moves together: verify finds the masks by the recorded relative name.
    let moved = dir.path().join("moved");
    fs::create_dir(&moved).unwrap();
    for name in ["w.safetensors", "m.safetensors"] {
        fs::copy(dir.path().join(name), moved.join(name)).unwrap();
    }
    verify(&moved, Path::new("w.safetensors"), &["--regenerate"]).success();
    // The masks file on its own is not an artifact to verify: it says which one is.
    verify(dir.path(), Path::new("m.safetensors"), &[])
        .code(2)
        .stderr(contains(
            "holds only the masks of the weights output \"w.safetensors\"",
        ));
    // A mask changed in the masks file fails the layer, and regeneration names it.
    let mut bytes = fs::read(moved.join("m.safetensors")).unwrap();
    let range = data_range(&bytes, "fc1.weight");
    let at = range
        .clone()
        .find(|&k| bytes[k] == 1)
        .expect("fc1.weight's mask has a one");
    bytes[at] = 0;
    fs::write(moved.join("m.safetensors"), &bytes).unwrap();
    verify(&moved, Path::new("w.safetensors"), &[])
        .code(1)
        .stdout(contains("fc1.weight"));
    verify(&moved, Path::new("w.safetensors"), &["--regenerate"])
        .code(1)
        .stdout(contains("m.safetensors"));
    // Without its masks file, every layer's mask is missing and the file is named.
    fs::remove_file(moved.join("m.safetensors")).unwrap();
    verify(&moved, Path::new("w.safetensors"), &[])
        .code(1)
        .stdout(contains(
            "the masks file \"m.safetensors\" the output records (eoi.masks) cannot be read",
        ));
    // Masks of another run (another seed) are not taken for this output's.
    generate(
        "other.safetensors",
        "other-masks.safetensors",
        &["--seed", "5"],
    );
    fs::copy(
        dir.path().join("other-masks.safetensors"),
        moved.join("m.safetensors"),
    )
    .unwrap();
    verify(&moved, Path::new("w.safetensors"), &[])
        .code(1)
        .stdout(contains("does not name this output as its weights"))
        .stdout(contains("another spec or seed"));
}

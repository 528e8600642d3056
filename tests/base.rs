//! `eoi generate --base`: a complete checkpoint. The bases are ResNet-18's state dict (its
//! real names and shapes, BatchNorm counters as I64) and a small GPT-2 style transformer in
//! two shards, with data written by these tests; the official Python safetensors package
//! checks that every tensor the spec does not name is copied byte for byte, and the
//! replaced tensors are compared with a plain `eoi generate` of the same spec, which
//! `eoi verify` checks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use assert_cmd::Command;
use serde_json::{Value, json};

const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/check_base.py");

fn python() -> String {
    std::env::var("EOI_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// (name, dtype, shape) of ResNet-18's state dict, in order.
fn resnet18() -> Vec<(String, &'static str, Vec<usize>)> {
    let mut list = Vec::new();
    let bn = |list: &mut Vec<(String, &'static str, Vec<usize>)>, prefix: &str, c: usize| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            list.push((format!("{prefix}.{p}"), "F32", vec![c]));
        }
        list.push((format!("{prefix}.num_batches_tracked"), "I64", vec![]));
    };
    list.push(("conv1.weight".into(), "F32", vec![64, 3, 7, 7]));
    bn(&mut list, "bn1", 64);
    let mut inp = 64;
    for (l, c) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        for b in 0..2 {
            let p = format!("layer{l}.{b}");
            list.push((
                format!("{p}.conv1.weight"),
                "F32",
                vec![c, if b == 0 { inp } else { c }, 3, 3],
            ));
            bn(&mut list, &format!("{p}.bn1"), c);
            list.push((format!("{p}.conv2.weight"), "F32", vec![c, c, 3, 3]));
            bn(&mut list, &format!("{p}.bn2"), c);
            if b == 0 && l > 1 {
                list.push((
                    format!("{p}.downsample.0.weight"),
                    "F32",
                    vec![c, inp, 1, 1],
                ));
                bn(&mut list, &format!("{p}.downsample.1"), c);
            }
        }
        inp = c;
    }
    list.push(("fc.weight".into(), "F32", vec![1000, 512]));
    list.push(("fc.bias".into(), "F32", vec![1000]));
    list
}

fn size(dtype: &str) -> usize {
    match dtype {
        "F32" => 4,
        "I64" => 8,
        "F16" => 2,
        _ => 1,
    }
}

/// Writes `list` as a safetensors file whose every tensor has distinct, nonzero bytes, with
/// `metadata` in its header.
fn write_base(path: &Path, list: &[(String, &'static str, Vec<usize>)], metadata: Value) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), metadata);
    let mut data: Vec<u8> = Vec::new();
    for (k, (name, dtype, shape)) in list.iter().enumerate() {
        let bytes = size(dtype) * shape.iter().product::<usize>();
        let at = data.len();
        data.extend((0..bytes).map(|i| ((i * 31 + k * 7) % 251) as u8 + 1));
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [at, data.len()]}),
        );
    }
    let text = Value::Object(header).to_string();
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text.as_bytes());
    file.extend(data);
    fs::write(path, file).unwrap();
}

fn eoi() -> Command {
    Command::cargo_bin("eoi").unwrap()
}

fn spec_from(source: &Path, args: &[&str]) -> String {
    let out = eoi()
        .arg("spec")
        .arg("--from")
        .arg(source)
        .args(args)
        .assert()
        .success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

fn check_with_python(base: &Path, out: &Path, replaced: &[String]) {
    let result = Process::new(python())
        .arg(CHECK)
        .arg(base)
        .arg(out)
        .args(replaced)
        .output()
        .expect("python runs (scripts/test sets EOI_PYTHON)");
    assert!(
        result.status.success(),
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&result.stdout).trim(), "ok");
}

fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut list: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    list.sort();
    list
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

#[test]
fn resnet18_becomes_a_complete_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("resnet18.safetensors");
    let list = resnet18();
    write_base(
        &base,
        &list,
        json!({"format": "pt", "origin": "tests", "eoi.seed": "99"}),
    );
    let spec = dir.path().join("resnet18.toml");
    fs::write(
        &spec,
        spec_from(&base, &["--density", "0.2", "--gain", "relu"]),
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec)
        .arg("--base")
        .arg(&base)
        .arg("-o")
        .arg(&out)
        .arg("-q")
        .assert()
        .success();
    let replaced: Vec<String> = list
        .iter()
        .filter(|(_, _, s)| s.len() >= 2)
        .map(|(n, _, _)| n.clone())
        .collect();
    assert_eq!(replaced.len(), 21);
    check_with_python(&base, &out, &replaced);
    // The replaced tensors are exactly what a plain run writes; verify checks that one.
    let plain = dir.path().join("plain.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec)
        .arg("-o")
        .arg(&plain)
        .arg("-q")
        .assert()
        .success();
    eoi().arg("verify").arg(&plain).assert().success();
    let from_plain = tensors(&plain);
    let completed = tensors(&out);
    for t in &from_plain {
        assert!(completed.contains(t), "{} differs from a plain run", t.0);
    }
    let meta = metadata(&out);
    assert_eq!(meta["eoi.base"], "resnet18.safetensors");
    let header_len = u64::from_le_bytes(fs::read(&base).unwrap()[..8].try_into().unwrap()) as usize;
    let digest = {
        use sha2::{Digest, Sha256};
        Sha256::digest(&fs::read(&base).unwrap()[8..8 + header_len])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(meta["eoi.base_sha256"], digest);
    // The base's own keys are kept, except format and eoi.* (eoi's provenance wins).
    assert_eq!(meta["origin"], "tests");
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["eoi.seed"], "0");
}

#[test]
fn a_sharded_base_gives_the_same_shards_and_a_matching_index() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    fs::create_dir(&ckpt).unwrap();
    let mut first = vec![("wte.weight".to_string(), "F16", vec![100, 32])];
    let mut second = Vec::new();
    for i in 0..2 {
        let part = if i == 0 { &mut first } else { &mut second };
        for (name, dtype, shape) in [
            ("ln_1.weight", "F32", vec![32]),
            ("attn.c_attn.weight", "F32", vec![32, 96]),
            ("attn.c_attn.bias", "F32", vec![96]),
            ("mlp.c_fc.weight", "F32", vec![32, 128]),
            ("mlp.c_proj.weight", "F32", vec![128, 32]),
            ("attn.bias", "U8", vec![1, 1, 16, 16]),
        ] {
            part.push((format!("h.{i}.{name}"), dtype, shape));
        }
    }
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &first),
        ("model-00002-of-00002.safetensors", &second),
    ] {
        write_base(&ckpt.join(file), part, json!({"format": "pt"}));
        for (name, _, _) in part.iter() {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    let index = ckpt.join("model.safetensors.index.json");
    fs::write(
        &index,
        json!({"metadata": {"total_size": 1}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let spec = dir.path().join("spec.toml");
    fs::write(
        &spec,
        spec_from(
            &ckpt,
            &[
                "--exclude",
                "wte.*",
                "--exclude",
                "*.attn.bias",
                "--density",
                "0.25",
            ],
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    eoi()
        .arg("generate")
        .arg(&spec)
        .arg("--base")
        .arg(&ckpt)
        .arg("-o")
        .arg(&out)
        .arg("-q")
        .assert()
        .success();
    let replaced: Vec<String> = first
        .iter()
        .chain(&second)
        .filter(|(n, _, s)| s.len() == 2 && !n.starts_with("wte"))
        .map(|(n, _, _)| n.clone())
        .collect();
    assert_eq!(replaced.len(), 6);
    check_with_python(&index, &out.join("model.safetensors.index.json"), &replaced);
    let written: Value =
        serde_json::from_slice(&fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let on_disk: u64 = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    .iter()
    .map(|f| {
        tensors(&out.join(f))
            .iter()
            .map(|(_, _, d)| d.len() as u64)
            .sum::<u64>()
    })
    .sum();
    assert_eq!(written["metadata"]["total_size"], on_disk);
    assert_eq!(
        metadata(&out.join("model-00002-of-00002.safetensors"))["eoi.shard"],
        "2/2"
    );
}

/// `eoi generate SPEC --base BASE -o OUT` must fail with exit 2 and `message`, leaving
/// whatever was at OUT as it was.
fn mismatch(dir: &Path, spec: &str, base: &Path, message: &str) {
    let spec_path = dir.join("bad.toml");
    fs::write(&spec_path, spec).unwrap();
    let out: PathBuf = dir.join("kept.safetensors");
    fs::write(&out, "an earlier output").unwrap();
    eoi()
        .arg("generate")
        .arg(&spec_path)
        .arg("--base")
        .arg(base)
        .args(["--force", "-q", "-o"])
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(message));
    assert_eq!(fs::read_to_string(&out).unwrap(), "an earlier output");
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".eoi-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn disagreements_with_the_base_name_the_tensor_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    write_base(
        &base,
        &[
            ("fc.weight".into(), "F32", vec![8, 4]),
            ("half.weight".into(), "F16", vec![8, 8]),
            ("fc.weight_orig".into(), "F32", vec![8, 4]),
        ],
        json!({}),
    );
    let layer = |name: &str, shape: &str| {
        format!("[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"{name}\"\nshape = {shape}\n")
    };
    mismatch(
        dir.path(),
        &layer("fc.weight", "[4, 8]"),
        &base,
        "tensor \"fc.weight\": the spec makes shape [4, 8] (torch layout) but the base",
    );
    mismatch(
        dir.path(),
        &layer("missing.weight", "[8, 4]"),
        &base,
        "layer \"missing.weight\" of the spec is not a tensor of the base",
    );
    mismatch(
        dir.path(),
        &layer("half.weight", "[8, 8]"),
        &base,
        "tensor \"half.weight\": the base '",
    );
    mismatch(
        dir.path(),
        &layer("half.weight", "[8, 8]"),
        &base,
        "stores it as F16 but the spec writes F32",
    );
    mismatch(
        dir.path(),
        &format!(
            "{}[output]\nnames = \"torch-prune\"\n",
            layer("fc.weight", "[8, 4]")
        ),
        &base,
        "tensor \"fc.weight_orig\" of the base",
    );
    let not_safetensors = dir.path().join("notes.txt");
    fs::write(&not_safetensors, "not a checkpoint at all").unwrap();
    mismatch(
        dir.path(),
        &layer("fc.weight", "[8, 4]"),
        &not_safetensors,
        "not a safetensors file",
    );
}

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

/// A checkpoint's tensors: (name, dtype, shape), in order.
type TensorList = Vec<(String, &'static str, Vec<usize>)>;

/// (name, dtype, shape) of ResNet-18's state dict, in order.
fn resnet18() -> TensorList {
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
    // A checkpoint directory's other files: the config is copied, an index of old weights
    // is not.
    fs::write(ckpt.join("config.json"), "{\"n_layer\": 2}\n").unwrap();
    fs::write(ckpt.join("pytorch_model.bin.index.json"), "{}\n").unwrap();
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
    let files = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ];
    assert_eq!(listing(&out), files);
    assert_eq!(
        fs::read(out.join("config.json")).unwrap(),
        fs::read(ckpt.join("config.json")).unwrap()
    );
    // The index file names the same base: the same directory, byte for byte.
    let again = dir.path().join("again");
    eoi()
        .arg("generate")
        .arg(&spec)
        .arg("--base")
        .arg(&index)
        .arg("-o")
        .arg(&again)
        .arg("-q")
        .assert()
        .success();
    for name in files {
        assert_eq!(
            fs::read(again.join(name)).unwrap(),
            fs::read(out.join(name)).unwrap(),
            "{name}"
        );
    }
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

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A Hugging Face `save_pretrained` directory of a small GPT-2 style model: its
/// model.safetensors, config files and tokenizer, and what else such directories hold: old
/// weights in other formats, a subdirectory, and (as in the Hugging Face cache) a file
/// reached through a symbolic link.
fn save_pretrained_directory(dir: &Path) -> (PathBuf, TensorList) {
    let hf = dir.join("gpt2");
    fs::create_dir(&hf).unwrap();
    let mut list = vec![("transformer.wte.weight".to_string(), "F32", vec![100, 32])];
    for i in 0..2 {
        for (name, shape) in [
            ("ln_1.weight", vec![32]),
            ("attn.c_attn.weight", vec![32, 96]),
            ("attn.c_attn.bias", vec![96]),
            ("mlp.c_fc.weight", vec![32, 128]),
            ("mlp.c_proj.weight", vec![128, 32]),
        ] {
            list.push((format!("transformer.h.{i}.{name}"), "F32", shape));
        }
    }
    write_base(
        &hf.join("model.safetensors"),
        &list,
        json!({"format": "pt"}),
    );
    fs::write(
        hf.join("config.json"),
        "{\"model_type\": \"gpt2\", \"n_embd\": 32}\n",
    )
    .unwrap();
    fs::write(
        hf.join("generation_config.json"),
        "{\"do_sample\": false}\n",
    )
    .unwrap();
    fs::write(hf.join("tokenizer.json"), vec![b't'; 3000]).unwrap();
    fs::write(hf.join("README.md"), "# gpt2 tiny\n").unwrap();
    fs::write(hf.join("pytorch_model.bin"), "old weights").unwrap();
    fs::write(hf.join("flax_model.msgpack"), "old weights").unwrap();
    fs::create_dir(hf.join("original")).unwrap();
    fs::write(hf.join("original/consolidated.00.pth"), "old weights").unwrap();
    fs::write(dir.join("blob"), "{\"model_max_length\": 64}\n").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("blob"), hf.join("tokenizer_config.json")).unwrap();
    #[cfg(not(unix))]
    fs::copy(dir.join("blob"), hf.join("tokenizer_config.json")).unwrap();
    (hf, list)
}

#[test]
fn a_save_pretrained_directory_gives_a_directory_with_its_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let (hf, list) = save_pretrained_directory(dir.path());
    let spec = dir.path().join("gpt2.toml");
    fs::write(
        &spec,
        spec_from(&hf, &["--exclude", "*wte*", "--density", "0.25"]),
    )
    .unwrap();
    let out = dir.path().join("gpt2-eoi");
    let run = eoi()
        .arg("generate")
        .arg(&spec)
        .arg("--base")
        .arg(&hf)
        .arg("-o")
        .arg(&out)
        .arg("--json")
        .assert()
        .success();
    let copied = [
        "README.md",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    let mut expected: Vec<&str> = copied.to_vec();
    expected.push("model.safetensors");
    expected.sort_unstable();
    assert_eq!(listing(&out), expected);
    for name in copied {
        assert_eq!(
            fs::read(out.join(name)).unwrap(),
            fs::read(hf.join(name)).unwrap(),
            "{name}"
        );
        assert!(!fs::symlink_metadata(out.join(name)).unwrap().is_symlink());
    }
    // The old weights and the subdirectory are named, not copied.
    let stderr = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    assert!(stderr.contains("copied from"), "{stderr}");
    for name in ["pytorch_model.bin", "flax_model.msgpack", "original"] {
        assert!(stderr.contains(&format!("'{name}'")), "{name}: {stderr}");
    }
    let summary: Value = serde_json::from_slice(&run.get_output().stdout).unwrap();
    assert_eq!(summary["base_files"]["copied"], json!(copied));
    let left: Vec<&str> = summary["base_files"]["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        left,
        ["flax_model.msgpack", "original", "pytorch_model.bin"]
    );
    let replaced: Vec<String> = list
        .iter()
        .filter(|(n, _, s)| s.len() == 2 && !n.contains("wte"))
        .map(|(n, _, _)| n.clone())
        .collect();
    assert_eq!(replaced.len(), 6);
    check_with_python(
        &hf.join("model.safetensors"),
        &out.join("model.safetensors"),
        &replaced,
    );
    assert_eq!(
        metadata(&out.join("model.safetensors"))["eoi.base"],
        "model.safetensors"
    );

    // The model.safetensors file itself is a single-file base: it gives a single file, the
    // same bytes as the directory's.
    let single = dir.path().join("single.safetensors");
    eoi()
        .arg("generate")
        .arg(&spec)
        .arg("--base")
        .arg(hf.join("model.safetensors"))
        .args(["-q", "-o"])
        .arg(&single)
        .assert()
        .success();
    assert_eq!(
        fs::read(&single).unwrap(),
        fs::read(out.join("model.safetensors")).unwrap()
    );

    // Never over the output without --force; with it, over this directory eoi wrote.
    let again = |force: bool| {
        let mut cmd = eoi();
        cmd.arg("generate")
            .arg(&spec)
            .arg("--base")
            .arg(&hf)
            .args(["-q", "--seed", "5", "-o"])
            .arg(&out);
        if force {
            cmd.arg("--force");
        }
        cmd.assert()
    };
    again(false).code(2).stderr(predicates::str::contains(
        "gpt2-eoi' already exists; pass --force",
    ));
    assert_eq!(metadata(&out.join("model.safetensors"))["eoi.seed"], "0");
    again(true).success();
    assert_eq!(metadata(&out.join("model.safetensors"))["eoi.seed"], "5");
    assert_eq!(listing(&out), expected);
    // A directory eoi did not write is never replaced.
    let foreign = dir.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("notes.txt"), "mine").unwrap();
    eoi()
        .arg("generate")
        .arg(&spec)
        .arg("--base")
        .arg(&hf)
        .args(["-q", "--force", "-o"])
        .arg(&foreign)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "a directory that eoi did not write",
        ));
    assert_eq!(listing(&foreign), ["notes.txt"]);
}

/// Under `ulimit -f 100` (50 to 100 KB), a base directory whose tokenizer is larger cannot
/// be copied: the run fails naming the file, and leaves the earlier output and no
/// temporary file.
#[cfg(target_os = "linux")]
#[test]
fn a_file_that_cannot_be_copied_fails_the_run_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("small");
    fs::create_dir(&hf).unwrap();
    let list = [("fc.weight".to_string(), "F32", vec![8, 8])];
    write_base(&hf.join("model.safetensors"), &list, json!({}));
    fs::write(hf.join("config.json"), "{}").unwrap();
    fs::write(hf.join("tokenizer.json"), vec![b't'; 400_000]).unwrap();
    let spec = dir.path().join("small.toml");
    fs::write(&spec, spec_from(&hf, &["--density", "0.5"])).unwrap();
    let out = dir.path().join("out");
    let generate = |extra: &[&str]| {
        Command::new("sh")
            .current_dir(dir.path())
            .args(["-c", "ulimit -f 100 && exec \"$@\"", "sh"])
            .arg(assert_cmd::cargo::cargo_bin!("eoi"))
            .arg("generate")
            .arg(&spec)
            .arg("--base")
            .arg(&hf)
            .args(["-q", "-o"])
            .arg(&out)
            .args(extra)
            .assert()
    };
    generate(&[])
        .code(1)
        .stderr(predicates::str::contains("cannot copy"))
        .stderr(predicates::str::contains("tokenizer.json"));
    assert!(!out.exists());
    // Over an earlier output of eoi, which stays as it was.
    fs::write(hf.join("tokenizer.json"), "small").unwrap();
    generate(&[]).success();
    let before: Vec<Vec<u8>> = listing(&out)
        .iter()
        .map(|n| fs::read(out.join(n)).unwrap())
        .collect();
    fs::write(hf.join("tokenizer.json"), vec![b't'; 400_000]).unwrap();
    generate(&["--force", "--seed", "3"]).code(1);
    let after: Vec<Vec<u8>> = listing(&out)
        .iter()
        .map(|n| fs::read(out.join(n)).unwrap())
        .collect();
    assert_eq!(before, after);
    let hidden: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".eoi-"))
        .collect();
    assert_eq!(hidden, Vec::<String>::new());
}

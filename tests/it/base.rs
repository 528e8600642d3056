//! `eoi generate --base`: a complete checkpoint. The bases are ResNet-18's state dict (its
//! real names and shapes, BatchNorm counters as I64) and a small GPT-2 style transformer in
//! two shards, with data written by these tests; the official Python safetensors package
//! checks that every tensor the spec does not name is copied byte for byte, and the
//! replaced tensors are compared with a plain `eoi generate` of the same spec, which
//! `eoi verify` checks.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::util::{
    Entry, eoi, eoi_after, json as parse_json, leftovers, names_in, read_safetensors, resnet18,
    run_script, safetensors_bytes, sha256, spec_from,
};

/// A checkpoint's tensors: (name, dtype, shape), in order.
type TensorList = Vec<(String, &'static str, Vec<usize>)>;

/// (name, dtype, shape) of ResNet-18's state dict, in order: the BatchNorm counters are I64.
fn resnet18_with_dtypes() -> TensorList {
    resnet18()
        .into_iter()
        .map(|(name, shape)| {
            let dtype = if name.ends_with(".num_batches_tracked") {
                "I64"
            } else {
                "F32"
            };
            (name, dtype, shape)
        })
        .collect()
}

/// Writes `list` as a safetensors file whose every tensor has distinct, nonzero bytes, with
/// `metadata` in its header.
fn write_base(path: &Path, list: &[(String, &'static str, Vec<usize>)], metadata: Value) {
    let entries: Vec<Entry> = list
        .iter()
        .enumerate()
        .map(|(k, (name, dtype, shape))| Entry::patterned(name, dtype, shape, k))
        .collect();
    fs::write(path, safetensors_bytes(&entries, Some(&metadata), false)).unwrap();
}

/// tests/python/check_base.py: the official safetensors package finds every tensor of `out`
/// but `replaced` copied byte for byte from `base`.
fn check_with_python(base: &Path, out: &Path, replaced: &[String]) {
    let mut args = vec![base.as_os_str(), out.as_os_str()];
    args.extend(replaced.iter().map(|r| std::ffi::OsStr::new(r.as_str())));
    let result = run_script("check_base.py", args);
    assert!(
        result.status.success(),
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&result.stdout).trim(), "ok");
}

#[test]
fn resnet18_becomes_a_complete_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("resnet18.safetensors");
    let list = resnet18_with_dtypes();
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
    let from_plain = read_safetensors(&plain).tensors;
    let completed = read_safetensors(&out);
    for (name, t) in &from_plain {
        assert_eq!(completed.tensor(name), t, "{name} differs from a plain run");
    }
    let meta = completed.metadata;
    assert_eq!(meta["eoi.base"], "resnet18.safetensors");
    let bytes = fs::read(&base).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(meta["eoi.base_sha256"], sha256(&bytes[8..8 + header_len]));
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
    let written = parse_json(fs::read(out.join("model.safetensors.index.json")).unwrap());
    let on_disk: u64 = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    .iter()
    .map(|f| {
        read_safetensors(&out.join(f))
            .tensors
            .values()
            .map(|t| t.data.len() as u64)
            .sum::<u64>()
    })
    .sum();
    assert_eq!(written["metadata"]["total_size"], on_disk);
    assert_eq!(
        read_safetensors(&out.join("model-00002-of-00002.safetensors")).meta("eoi.shard"),
        "2/2"
    );
    let files = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ];
    assert_eq!(names_in(&out), files);
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
    assert_eq!(leftovers(dir), Vec::<PathBuf>::new());
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
    assert_eq!(names_in(&out), expected);
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
        read_safetensors(&out.join("model.safetensors")).meta("eoi.base"),
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
    assert_eq!(
        read_safetensors(&out.join("model.safetensors")).meta("eoi.seed"),
        "0"
    );
    again(true).success();
    assert_eq!(
        read_safetensors(&out.join("model.safetensors")).meta("eoi.seed"),
        "5"
    );
    assert_eq!(names_in(&out), expected);
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
    assert_eq!(names_in(&foreign), ["notes.txt"]);
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
        eoi_after("ulimit -f 100")
            .current_dir(dir.path())
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
    let before: Vec<Vec<u8>> = names_in(&out)
        .iter()
        .map(|n| fs::read(out.join(n)).unwrap())
        .collect();
    fs::write(hf.join("tokenizer.json"), vec![b't'; 400_000]).unwrap();
    generate(&["--force", "--seed", "3"]).code(1);
    let after: Vec<Vec<u8>> = names_in(&out)
        .iter()
        .map(|n| fs::read(out.join(n)).unwrap())
        .collect();
    assert_eq!(before, after);
    let hidden: Vec<String> = names_in(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".eoi-"))
        .collect();
    assert_eq!(hidden, Vec::<String>::new());
}

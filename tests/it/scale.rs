//! Sharded output on the real binary: the Hugging Face layout, weights beside their masks,
//! and `--shard K/N` parts that are byte-identical to the full run.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use assert_cmd::Command;
use safetensors::SafeTensors;
use serde_json::Value;

const SPEC: &str = "[sparsity]\ndensity = 0.2\ndistribution = \"erk\"\n\
[[layer]]\nname = \"embed.weight\"\nshape = [64, 300]\n\
[[layer]]\nname = \"blocks.{i}.weight\"\nshape = [64, 64]\nrepeat = 9\n\
[[layer]]\nname = \"conv.weight\"\nshape = [32, 64, 3, 3]\n\
[[layer]]\nname = \"head.weight\"\nshape = [10, 64]\n";

fn eoi(args: &[&str], dir: &Path) -> assert_cmd::assert::Assert {
    Command::cargo_bin("eoi")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .assert()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    dir
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn shards_follow_the_hugging_face_layout() {
    let dir = setup();
    eoi(
        &[
            "generate",
            "spec.toml",
            "-o",
            "model",
            "--max-shard-size",
            "40KB",
            "-q",
        ],
        dir.path(),
    )
    .success();
    let out = files(&dir.path().join("model"));
    let index: Value = serde_json::from_slice(&out["model.safetensors.index.json"]).unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    let shard_names: Vec<&String> = out.keys().filter(|n| n.ends_with(".safetensors")).collect();
    assert!(shard_names.len() >= 3, "{shard_names:?}");
    let n = shard_names.len();
    let mut total = 0;
    let mut seen = 0;
    for (k, name) in shard_names.iter().enumerate() {
        assert_eq!(**name, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        let file = SafeTensors::deserialize(&out[*name]).unwrap();
        let mut data = 0;
        for (tensor, view) in file.tensors() {
            assert_eq!(
                weight_map[&tensor], **name,
                "{tensor} is not mapped to its shard"
            );
            total += view.data().len() as u64;
            data += view.data().len();
            seen += 1;
            // Every weight's mask sits in the same shard, and vice versa.
            let partner = match tensor.strip_suffix("_mask") {
                Some(weight) => weight.to_string(),
                None => format!("{tensor}_mask"),
            };
            assert!(
                file.tensor(&partner).is_ok(),
                "{partner} is not beside {tensor}"
            );
        }
        // A shard holds more than one layer only if they fit under the size together.
        if file.len() > 2 {
            assert!(data <= 40_000, "{name} holds {data} bytes");
        }
    }
    assert_eq!(seen, weight_map.len());
    assert_eq!(seen, 2 * 12);
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
}

#[test]
fn parts_are_byte_identical_to_the_full_run() {
    let dir = setup();
    eoi(
        &[
            "generate",
            "spec.toml",
            "-o",
            "full",
            "--max-shard-size",
            "40KB",
            "-q",
        ],
        dir.path(),
    )
    .success();
    let full = files(&dir.path().join("full"));
    let n = full.len() - 1;
    // The parts in reverse order, as independent jobs would finish.
    for k in (1..=n).rev() {
        let part = format!("{k}/{n}");
        eoi(
            &[
                "generate",
                "spec.toml",
                "-o",
                "parts",
                "--max-shard-size",
                "40KB",
                "--shard",
                &part,
                "-q",
            ],
            dir.path(),
        )
        .success();
    }
    assert_eq!(files(&dir.path().join("parts")), full);
}

#[test]
fn a_part_is_refused_when_it_does_not_match_the_sharding() {
    let dir = setup();
    let wrong = eoi(
        &[
            "generate",
            "spec.toml",
            "-o",
            "p",
            "--max-shard-size",
            "40KB",
            "--shard",
            "1/99",
        ],
        dir.path(),
    )
    .code(2);
    let stderr = String::from_utf8_lossy(&wrong.get_output().stderr).to_string();
    assert!(stderr.contains("not 99"), "{stderr}");
    assert!(!dir.path().join("p").exists());
    eoi(
        &["generate", "spec.toml", "-o", "p", "--shard", "1/2"],
        dir.path(),
    )
    .code(2);
    eoi(
        &[
            "generate",
            "spec.toml",
            "-o",
            "p",
            "--max-shard-size",
            "lots",
        ],
        dir.path(),
    )
    .code(2);
}

#[test]
fn a_part_never_replaces_an_existing_shard_without_force() {
    let dir = setup();
    eoi(
        &[
            "generate",
            "spec.toml",
            "-o",
            "full",
            "--max-shard-size",
            "40KB",
            "-q",
        ],
        dir.path(),
    )
    .success();
    let full = files(&dir.path().join("full"));
    let n = full.len() - 1;
    let part = format!("2/{n}");
    let args = [
        "generate",
        "spec.toml",
        "-o",
        "p",
        "--max-shard-size",
        "40KB",
        "--shard",
        &part,
        "-q",
    ];
    eoi(&args, dir.path()).success();
    let shard = dir
        .path()
        .join("p")
        .join(format!("model-00002-of-{n:05}.safetensors"));
    fs::write(&shard, b"keep me").unwrap();
    eoi(&args, dir.path()).code(2);
    assert_eq!(fs::read(&shard).unwrap(), b"keep me");
    eoi(&[&args[..], &["--force"]].concat(), dir.path()).success();
    assert_eq!(
        fs::read(&shard).unwrap(),
        full[&format!("model-00002-of-{n:05}.safetensors")]
    );
}

//! Sharded output on the real binary: the Hugging Face layout, weights beside their masks,
//! and `--shard K/N` parts that are byte-identical to the full run.

use std::fs;

use safetensors::SafeTensors;

use crate::util::{Sandbox, contents, json, stderr};

const SPEC: &str = "[sparsity]\ndensity = 0.2\ndistribution = \"erk\"\n\
[[layer]]\nname = \"embed.weight\"\nshape = [64, 300]\n\
[[layer]]\nname = \"blocks.{i}.weight\"\nshape = [64, 64]\nrepeat = 9\n\
[[layer]]\nname = \"conv.weight\"\nshape = [32, 64, 3, 3]\n\
[[layer]]\nname = \"head.weight\"\nshape = [10, 64]\n";

/// A sandbox holding SPEC as spec.toml.
fn setup() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.write("spec.toml", SPEC);
    sandbox
}

#[test]
fn shards_follow_the_hugging_face_layout() {
    let sandbox = setup();
    sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "model",
            "--max-shard-size",
            "40KB",
            "-q",
        ])
        .success();
    let out = contents(&sandbox.path("model"));
    let index = json(&out["model.safetensors.index.json"]);
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
    let sandbox = setup();
    sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "full",
            "--max-shard-size",
            "40KB",
            "-q",
        ])
        .success();
    let full = contents(&sandbox.path("full"));
    let n = full.len() - 1;
    // The parts in reverse order, as independent jobs would finish.
    for k in (1..=n).rev() {
        let part = format!("{k}/{n}");
        sandbox
            .eoi(&[
                "generate",
                "spec.toml",
                "-o",
                "parts",
                "--max-shard-size",
                "40KB",
                "--shard",
                &part,
                "-q",
            ])
            .success();
    }
    assert_eq!(contents(&sandbox.path("parts")), full);
}

#[test]
fn a_part_is_refused_when_it_does_not_match_the_sharding() {
    let sandbox = setup();
    let wrong = sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "p",
            "--max-shard-size",
            "40KB",
            "--shard",
            "1/99",
        ])
        .code(2);
    let stderr = stderr(&wrong);
    assert!(stderr.contains("not 99"), "{stderr}");
    assert!(!sandbox.path("p").exists());
    sandbox
        .eoi(&["generate", "spec.toml", "-o", "p", "--shard", "1/2"])
        .code(2);
    sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "p",
            "--max-shard-size",
            "lots",
        ])
        .code(2);
}

#[test]
fn a_part_never_replaces_an_existing_shard_without_force() {
    let sandbox = setup();
    sandbox
        .eoi(&[
            "generate",
            "spec.toml",
            "-o",
            "full",
            "--max-shard-size",
            "40KB",
            "-q",
        ])
        .success();
    let full = contents(&sandbox.path("full"));
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
    sandbox.eoi(&args).success();
    let shard = sandbox
        .path("p")
        .join(format!("model-00002-of-{n:05}.safetensors"));
    fs::write(&shard, b"keep me").unwrap();
    sandbox.eoi(&args).code(2);
    assert_eq!(fs::read(&shard).unwrap(), b"keep me");
    sandbox.eoi(&[&args[..], &["--force"]].concat()).success();
    assert_eq!(
        fs::read(&shard).unwrap(),
        full[&format!("model-00002-of-{n:05}.safetensors")]
    );
}

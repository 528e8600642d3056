//! Golden hashes: the SHA-256 of every tensor that the real binary writes for
//! tests/golden/small.toml (and tests/golden/sao.toml, tests/golden/groups.toml,
//! tests/golden/structured.toml), per dtype and per scheme, checked against the tables of
//! tests/golden/hashes.toml. They freeze the random streams, the stop rule, the conv rule, the
//! baselines' masks and values (approximate isometry's descent too), and density planning: if
//! one changes, output bytes change, which is a breaking change (new major version, CHANGELOG
//! entry, and new hashes).
//!
//! The hashes are of each tensor's data, not of whole files, so the same table holds for
//! every container: one safetensors file, an npy directory and sharded safetensors all carry
//! the same little-endian, C-ordered bytes (masks as one byte per element). They hold too
//! for any thread count, and with another layer added to the spec, since every tensor draws
//! from its own stream.
//!
//! A deliberate change of the streams is one reviewed data update, not an edit of this file:
//!
//! ```text
//! EOI_BLESS=1 scripts/test --test it -- golden:: npz::
//! scripts/test --test it -- golden:: npz::
//! git diff tests/golden/hashes.toml
//! ```
//!
//! The first run rewrites the tables that differ (see `util::golden`), the second checks
//! the new tables without rewriting anything.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::golden::{self, Hashes};
use crate::util::{
    generate, json, manifest, npy_data_start, read_safetensors, sha256, small_with_biases,
};

const SPEC: &str = "tests/golden/small.toml";

/// SHA-256 of each tensor's data in a safetensors file, read with the safetensors crate.
fn safetensors_hashes(path: &Path) -> Hashes {
    read_safetensors(path)
        .tensors
        .into_iter()
        .map(|(name, tensor)| (name, sha256(&tensor.data)))
        .collect()
}

/// SHA-256 of each tensor's data in an npy directory: the bytes after each file's header,
/// whose length the .npy format states (a u16 in version 1, a u32 in versions 2 and 3).
fn npy_hashes(dir: &Path) -> Hashes {
    let manifest = manifest(dir);
    let tensors = manifest["tensors"].as_array().unwrap();
    tensors
        .iter()
        .map(|t| {
            let bytes = std::fs::read(dir.join(t["file"].as_str().unwrap())).unwrap();
            let data = npy_data_start(&bytes);
            (
                t["name"].as_str().unwrap().to_string(),
                sha256(&bytes[data..]),
            )
        })
        .collect()
}

/// SHA-256 of each tensor's data in a sharded output, every shard the index names.
fn sharded_hashes(dir: &Path) -> Hashes {
    let index = json(std::fs::read(dir.join("model.safetensors.index.json")).unwrap());
    let mut files: Vec<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f.as_str().unwrap())
        .collect();
    files.sort();
    files.dedup();
    assert!(
        files.len() > 1,
        "the golden spec should make several shards"
    );
    let mut hashes = BTreeMap::new();
    for file in files {
        let shard = safetensors_hashes(&dir.join(file));
        for (name, hash) in shard {
            assert_eq!(index["weight_map"][&name], file, "{name}");
            assert!(hashes.insert(name.clone(), hash).is_none(), "{name} twice");
        }
    }
    hashes
}

/// The container to write the golden spec in.
#[derive(Clone, Copy, Debug)]
enum Container {
    Safetensors,
    Npy,
    Sharded,
}

/// Generates `spec` as `container` with `args` and returns each tensor's data hash.
fn hashes(spec: &Path, container: Container, args: &[&str]) -> Hashes {
    let dir = tempfile::tempdir().unwrap();
    match container {
        Container::Safetensors => {
            let out = dir.path().join("golden.safetensors");
            generate(spec, &out, args);
            safetensors_hashes(&out)
        }
        Container::Npy => {
            let out = dir.path().join("golden");
            generate(spec, &out, &[args, &["--format", "npy"]].concat());
            npy_hashes(&out)
        }
        Container::Sharded => {
            // About 12 KB per shard: the golden spec's 30 KB of f32 tensors make several.
            let out = dir.path().join("golden");
            generate(spec, &out, &[args, &["--max-shard-size", "12KB"]].concat());
            sharded_hashes(&out)
        }
    }
}

/// Checks the golden spec's output as one safetensors file with `--dtype DTYPE`.
fn check(dtype: &str, table: &str) {
    assert!(Path::new(SPEC).exists());
    let actual = hashes(Path::new(SPEC), Container::Safetensors, &["--dtype", dtype]);
    golden::check(&format!("{SPEC} ({dtype})"), &actual, &[table]);
}

#[test]
fn f32_output_is_frozen() {
    check("f32", "f32");
}

#[test]
fn f64_output_is_frozen() {
    check("f64", "f64");
}

#[test]
fn npy_and_sharded_outputs_hold_the_same_bytes() {
    let spec = Path::new(SPEC);
    for (container, dtype) in [
        (Container::Npy, "f32"),
        (Container::Npy, "f64"),
        (Container::Sharded, "f32"),
        (Container::Sharded, "f64"),
    ] {
        let actual = hashes(spec, container, &["--dtype", dtype]);
        golden::check(
            &format!("{SPEC} ({container:?}, {dtype})"),
            &actual,
            &[dtype],
        );
    }
}

#[test]
fn thread_counts_change_no_golden_byte() {
    let spec = Path::new(SPEC);
    for (container, threads) in [
        (Container::Safetensors, "1"),
        (Container::Npy, "3"),
        (Container::Sharded, "1"),
        (Container::Sharded, "5"),
    ] {
        let actual = hashes(spec, container, &["--threads", threads]);
        golden::check(
            &format!("{SPEC} ({container:?}, --threads {threads})"),
            &actual,
            &["f32"],
        );
    }
}

#[test]
fn adding_a_layer_changes_no_golden_tensor() {
    // The new layer goes first, so every other layer moves in every container. It keeps the
    // spec's overall density 0.3 itself, so the ERK budget of the other layers (and with it
    // their densities, to the last bit) stays as it was.
    let text = std::fs::read_to_string(SPEC).unwrap();
    let (head, layers) = text.split_once("\n[[layer]]").unwrap();
    let extended = format!(
        "{head}\n[[layer]]\nname = \"added.weight\"\nshape = [20, 20]\ndensity = 0.3\n\n[[layer]]{layers}"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("extended.toml");
    std::fs::write(&spec, extended).unwrap();
    for container in [Container::Safetensors, Container::Npy, Container::Sharded] {
        let mut actual = hashes(&spec, container, &[]);
        assert!(actual.remove("added.weight").is_some(), "{container:?}");
        assert!(
            actual.remove("added.weight_mask").is_some(),
            "{container:?}"
        );
        golden::check(
            &format!("{SPEC} with a layer added ({container:?})"),
            &actual,
            &["f32"],
        );
    }
}

#[test]
fn every_baseline_scheme_is_frozen_for_any_thread_count_and_container() {
    // The baselines' random masks and values are part of the same contract as EOI's bytes.
    let spec = Path::new(SPEC);
    for (scheme, table) in [
        ("kaiming", "kaiming"),
        ("scaled-kaiming", "scaled_kaiming"),
        ("orthogonal", "orthogonal"),
        ("approx-isometry", "approx_isometry"),
        ("conv-orthogonal", "conv_orthogonal"),
    ] {
        for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
            let actual = hashes(spec, container, &["--scheme", scheme, "--threads", threads]);
            golden::check(
                &format!("{SPEC} (--scheme {scheme}, {container:?}, --threads {threads})"),
                &actual,
                &[table],
            );
        }
    }
}

#[test]
fn half_precision_output_is_frozen() {
    check("f16", "f16");
    check("bf16", "bf16");
    // f16 has a NumPy type (<f2): an npy directory holds the same bytes.
    let actual = hashes(Path::new(SPEC), Container::Npy, &["--dtype", "f16"]);
    golden::check(&format!("{SPEC} (Npy, f16)"), &actual, &["f16"]);
}

#[test]
fn mask_dtypes_are_frozen() {
    let spec = Path::new(SPEC);
    // u8 masks hold the bytes of bool masks, 0 and 1: the f32 table itself.
    let actual = hashes(spec, Container::Safetensors, &["--mask-dtype", "u8"]);
    golden::check(&format!("{SPEC} (--mask-dtype u8)"), &actual, &["f32"]);
    // f32 masks: the f32 weights, and masks of 0.0 and 1.0 (masks_f32 names every mask).
    let masks = golden::table("masks_f32");
    let f32_masks: Vec<String> = golden::table("f32")
        .into_keys()
        .filter(|name| name.ends_with("_mask"))
        .collect();
    assert_eq!(masks.keys().cloned().collect::<Vec<_>>(), f32_masks);
    for container in [Container::Safetensors, Container::Npy] {
        let actual = hashes(spec, container, &["--mask-dtype", "f32"]);
        golden::check(
            &format!("{SPEC} ({container:?}, --mask-dtype f32)"),
            &actual,
            &["f32", "masks_f32"],
        );
    }
}

#[test]
fn biases_are_frozen_and_change_no_weight_or_mask() {
    // Each bias draws from its own stream (seed, "<module>.bias"): the weights and masks
    // keep the golden bytes, and the biases have their own, in every container and for any
    // thread count.
    let dir = tempfile::tempdir().unwrap();
    let spec = small_with_biases(dir.path());
    for (dtype, weights, biases) in [
        ("f32", "f32", "biases_f32"),
        ("bf16", "bf16", "biases_bf16"),
    ] {
        let containers: &[(Container, &str)] = if dtype == "bf16" {
            &[(Container::Safetensors, "1"), (Container::Sharded, "3")]
        } else {
            &[
                (Container::Safetensors, "1"),
                (Container::Npy, "3"),
                (Container::Sharded, "2"),
            ]
        };
        for &(container, threads) in containers {
            let actual = hashes(&spec, container, &["--dtype", dtype, "--threads", threads]);
            golden::check(
                &format!("{SPEC} with biases ({container:?}, {dtype}, --threads {threads})"),
                &actual,
                &[weights, biases],
            );
        }
    }
    // The zero bias is 10 f32 zeros: an independent value for its hash.
    let zeros = sha256(&[0u8; 40]);
    assert_eq!(golden::table("biases_f32")["head.bias"], zeros);
}

#[test]
fn sao_is_frozen_for_any_thread_count_and_container() {
    let spec = Path::new("tests/golden/sao.toml");
    for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
        let actual = hashes(spec, container, &["--threads", threads]);
        golden::check(
            &format!("tests/golden/sao.toml ({container:?}, --threads {threads})"),
            &actual,
            &["sao"],
        );
    }
}

#[test]
fn grouped_and_depthwise_convolutions_are_frozen() {
    // EOI's blocks draw from block streams, the baselines' blocks likewise; the top-up and
    // the random masks from the tensor's stream.
    let spec = Path::new("tests/golden/groups.toml");
    for (scheme, table) in [
        ("eoi", "groups_eoi"),
        ("orthogonal", "groups_orthogonal"),
        ("kaiming", "groups_kaiming"),
    ] {
        for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
            let actual = hashes(spec, container, &["--scheme", scheme, "--threads", threads]);
            golden::check(
                &format!(
                    "tests/golden/groups.toml (--scheme {scheme}, {container:?}, --threads {threads})"
                ),
                &actual,
                &[table],
            );
        }
    }
}

#[test]
fn structured_conv_masks_are_frozen() {
    // The centre matrices draw as under top-up at d_H = d; the slices draw nothing more.
    let spec = Path::new("tests/golden/structured.toml");
    for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
        let actual = hashes(spec, container, &["--threads", threads]);
        golden::check(
            &format!("tests/golden/structured.toml ({container:?}, --threads {threads})"),
            &actual,
            &["structured"],
        );
    }
}

#[test]
fn nm_layers_are_frozen_for_every_scheme_that_takes_a_pattern() {
    // EOI's classes from the tensor's stream, its blocks from N:M block streams, the top-up
    // from the tensor's stream; the baselines' random N:M masks, then their values.
    let spec = Path::new("tests/golden/nm.toml");
    for (scheme, table) in [
        ("eoi", "nm_eoi"),
        ("kaiming", "nm_kaiming"),
        ("scaled-kaiming", "nm_scaled_kaiming"),
        ("orthogonal", "nm_orthogonal"),
    ] {
        for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
            let actual = hashes(spec, container, &["--scheme", scheme, "--threads", threads]);
            golden::check(
                &format!(
                    "tests/golden/nm.toml (--scheme {scheme}, {container:?}, --threads {threads})"
                ),
                &actual,
                &[table],
            );
        }
    }
}

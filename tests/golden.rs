//! Golden hashes: the SHA-256 of every tensor that the real binary writes for
//! tests/golden/small.toml, per dtype. They freeze the random streams, the stop rule, the
//! conv rule and density planning: if one changes, output bytes change, which is a breaking
//! change (new major version, CHANGELOG entry, and new hashes here).
//!
//! The hashes are of each tensor's data, not of whole files, so the same table holds for
//! every container: one safetensors file, an npy directory and sharded safetensors all carry
//! the same little-endian, C-ordered bytes (masks as one byte per element). They hold too
//! for any thread count, and with another layer added to the spec, since every tensor draws
//! from its own stream.

use std::collections::BTreeMap;
use std::path::Path;

use assert_cmd::Command;
use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};

const SPEC: &str = "tests/golden/small.toml";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `eoi generate SPEC -q -o OUT ARGS...`.
fn generate(spec: &Path, out: &Path, args: &[&str]) {
    Command::cargo_bin("eoi")
        .unwrap()
        .env_remove("RAYON_NUM_THREADS")
        .arg("generate")
        .arg(spec)
        .args(["-q", "-o"])
        .arg(out)
        .args(args)
        .assert()
        .success();
}

/// SHA-256 of each tensor's data in a safetensors file, read with the safetensors crate.
fn safetensors_hashes(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, sha256(view.data())))
        .collect()
}

/// SHA-256 of each tensor's data in an npy directory: the bytes after each file's header,
/// whose length the .npy format states (a u16 in version 1, a u32 in versions 2 and 3).
fn npy_hashes(dir: &Path) -> BTreeMap<String, String> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let tensors = manifest["tensors"].as_array().unwrap();
    tensors
        .iter()
        .map(|t| {
            let bytes = std::fs::read(dir.join(t["file"].as_str().unwrap())).unwrap();
            assert_eq!(&bytes[..6], b"\x93NUMPY");
            let data = match bytes[6] {
                1 => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
                _ => 12 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            };
            (
                t["name"].as_str().unwrap().to_string(),
                sha256(&bytes[data..]),
            )
        })
        .collect()
}

/// SHA-256 of each tensor's data in a sharded output, every shard the index names.
fn sharded_hashes(dir: &Path) -> BTreeMap<String, String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
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
fn hashes(spec: &Path, container: Container, args: &[&str]) -> BTreeMap<String, String> {
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

/// Checks `actual` against the table `expected`; on a mismatch, prints the new table.
fn check_table(what: &str, actual: &BTreeMap<String, String>, expected: &[(&str, &str)]) {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
    if *actual != expected {
        let listing: Vec<String> = actual
            .iter()
            .map(|(n, h)| format!("        (\"{n}\", \"{h}\"),"))
            .collect();
        panic!(
            "output bytes of {what} changed: the random streams or the method changed.\n\
             If that is intended, it is a breaking change; the new hashes are:\n{}",
            listing.join("\n")
        );
    }
}

fn check(dtype: &str, expected: &[(&str, &str)]) {
    assert!(Path::new(SPEC).exists());
    let actual = hashes(Path::new(SPEC), Container::Safetensors, &["--dtype", dtype]);
    check_table(&format!("{SPEC} ({dtype})"), &actual, expected);
}

#[test]
fn f32_output_is_frozen() {
    check("f32", F32);
}

#[test]
fn f64_output_is_frozen() {
    check("f64", F64);
}

#[test]
fn npy_and_sharded_outputs_hold_the_same_bytes() {
    let spec = Path::new(SPEC);
    for (container, dtype, table) in [
        (Container::Npy, "f32", F32),
        (Container::Npy, "f64", F64),
        (Container::Sharded, "f32", F32),
        (Container::Sharded, "f64", F64),
    ] {
        let actual = hashes(spec, container, &["--dtype", dtype]);
        check_table(&format!("{SPEC} ({container:?}, {dtype})"), &actual, table);
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
        check_table(
            &format!("{SPEC} ({container:?}, --threads {threads})"),
            &actual,
            F32,
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
        check_table(
            &format!("{SPEC} with a layer added ({container:?})"),
            &actual,
            F32,
        );
    }
}

const F32: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "f5e9f99a8ec945f6fc91e7339968cdc7dad9b79298cf7073a7614d82726b8d74",
    ),
    (
        "blocks.0.weight_mask",
        "7c9dfdec78c708b73b64c76316ee51d096c342fa6c53ffd0f5f0ea24210046d5",
    ),
    (
        "blocks.1.weight",
        "2cb0e033fe6653cb3151485c6ab2148cae33c380e1a2057e457111108fba7bc5",
    ),
    (
        "blocks.1.weight_mask",
        "012def827fdb62c7073640c9d433a673c5c458d4941809ac6c08057c9644d3a2",
    ),
    (
        "fc1.weight",
        "9113092f51e370bda2d7442550a072a9349b8f5b2e90c0501d6f9e2f0a567c04",
    ),
    (
        "fc1.weight_mask",
        "b9febf9876542f81f1ac59a0de4ac89bf49d72d1b346fbba12e261c1ead5b9ad",
    ),
    (
        "fc2.weight",
        "5df027e4c1adb9a2afd8f878c6fbd65b88543183b1fce693086ed0fe9151cf6b",
    ),
    (
        "fc2.weight_mask",
        "8b29db1cc0591aa0168236319a625a0000c7df904118b4c9437823b214939126",
    ),
    (
        "head.weight",
        "7e59e1742a83f84f3f92079328e9ad11649ecb471cdb78d8cfdc4b59cc188d76",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "c0c26d69c006751c4460d9a5563b0b7da3a68030330b9ce1774b3d9fd5b9bc48",
    ),
    (
        "stem.weight_mask",
        "806c4d5052f802cba8cfe3b1b5d860b4fcfa3949bfe5cae8aa05d584124b697e",
    ),
    (
        "temporal.weight",
        "0e0d00049547c31529e30580f10f736e1f2f947981ef1b45710a0524a3891c14",
    ),
    (
        "temporal.weight_mask",
        "3eb492dc843f26a65ccfe24eb20aebb7f29f11d90436e798b3bdc15b63c389c0",
    ),
    (
        "volume.weight",
        "87c48331900f79bac1ac9fc4fc570647c47856459ca33977f29b1fbf5eef267b",
    ),
    (
        "volume.weight_mask",
        "42693a576d9e073dc32b39c396b424b2a00ee22fc8335ce65ae32613d1a3d896",
    ),
];
const F64: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "cae488412ad8ef5ba5057850f98003f53007900d7e6cc7d8890a2d54f5a7102f",
    ),
    (
        "blocks.0.weight_mask",
        "7c9dfdec78c708b73b64c76316ee51d096c342fa6c53ffd0f5f0ea24210046d5",
    ),
    (
        "blocks.1.weight",
        "5c5f65ef6ec25316c264d4fa39a3dbf4c0633cdedfc418b9e2124fabfc39be4a",
    ),
    (
        "blocks.1.weight_mask",
        "012def827fdb62c7073640c9d433a673c5c458d4941809ac6c08057c9644d3a2",
    ),
    (
        "fc1.weight",
        "efe99549dedabef48244794f6ae4a4e62238d1958b568fcc84d4e82fa1f1f252",
    ),
    (
        "fc1.weight_mask",
        "b9febf9876542f81f1ac59a0de4ac89bf49d72d1b346fbba12e261c1ead5b9ad",
    ),
    (
        "fc2.weight",
        "f54409cca8d819dc268bbc4c13466ffa3f7b31750db9ab4c116f3e5800c52789",
    ),
    (
        "fc2.weight_mask",
        "8b29db1cc0591aa0168236319a625a0000c7df904118b4c9437823b214939126",
    ),
    (
        "head.weight",
        "f44441db8fc9b44b53e4f19c173a4f674a6c03748d3bb6358fc3776f681fcf43",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "002b4c2bb95a2d2d4f875c8eaa6f7eddce0781456c0067c26937c8bf090fc898",
    ),
    (
        "stem.weight_mask",
        "806c4d5052f802cba8cfe3b1b5d860b4fcfa3949bfe5cae8aa05d584124b697e",
    ),
    (
        "temporal.weight",
        "53cafb5b855b36171077425935a051f9645d385096d0df31a2fb6f8705525fd3",
    ),
    (
        "temporal.weight_mask",
        "3eb492dc843f26a65ccfe24eb20aebb7f29f11d90436e798b3bdc15b63c389c0",
    ),
    (
        "volume.weight",
        "ef8808c640c7512e8859e20b8303bc6f2c4e3fb6d9a06d04867d25be01c48a2e",
    ),
    (
        "volume.weight_mask",
        "42693a576d9e073dc32b39c396b424b2a00ee22fc8335ce65ae32613d1a3d896",
    ),
];

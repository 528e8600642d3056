//! Golden hashes: the SHA-256 of every tensor that the real binary writes for
//! tests/golden/small.toml (and tests/golden/sao.toml, tests/golden/groups.toml, tests/golden/structured.toml), per dtype and per scheme. They freeze the random streams, the stop
//! rule, the conv rule, the baselines' masks and values (approximate isometry's descent too), and density planning: if one changes, output bytes change, which is a breaking
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

#[test]
fn every_baseline_scheme_is_frozen_for_any_thread_count_and_container() {
    // The baselines' random masks and values are part of the same contract as EOI's bytes.
    let spec = Path::new(SPEC);
    for (scheme, table) in [
        ("kaiming", KAIMING),
        ("scaled-kaiming", SCALED_KAIMING),
        ("orthogonal", ORTHOGONAL),
        ("approx-isometry", APPROX_ISOMETRY),
        ("conv-orthogonal", CONV_ORTHOGONAL),
    ] {
        for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
            let actual = hashes(spec, container, &["--scheme", scheme, "--threads", threads]);
            check_table(
                &format!("{SPEC} (--scheme {scheme}, {container:?}, --threads {threads})"),
                &actual,
                table,
            );
        }
    }
}

#[test]
fn half_precision_output_is_frozen() {
    check("f16", F16);
    check("bf16", BF16);
    // f16 has a NumPy type (<f2): an npy directory holds the same bytes.
    let actual = hashes(Path::new(SPEC), Container::Npy, &["--dtype", "f16"]);
    check_table(&format!("{SPEC} (Npy, f16)"), &actual, F16);
}

#[test]
fn mask_dtypes_are_frozen() {
    let spec = Path::new(SPEC);
    // u8 masks hold the bytes of bool masks, 0 and 1: the f32 table itself.
    let actual = hashes(spec, Container::Safetensors, &["--mask-dtype", "u8"]);
    check_table(&format!("{SPEC} (--mask-dtype u8)"), &actual, F32);
    // f32 masks: the f32 weights, and masks of 0.0 and 1.0.
    let expected: Vec<(&str, &str)> = F32
        .iter()
        .filter(|(name, _)| !name.ends_with("_mask"))
        .chain(MASKS_F32)
        .copied()
        .collect();
    for container in [Container::Safetensors, Container::Npy] {
        let actual = hashes(spec, container, &["--mask-dtype", "f32"]);
        check_table(
            &format!("{SPEC} ({container:?}, --mask-dtype f32)"),
            &actual,
            &expected,
        );
    }
}

/// The golden spec with biases: `bias_std = 0.00448` (the paper's sigma_b) in `[init]`, and
/// `bias_std = 0` for `head.weight`.
fn spec_with_biases(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(SPEC).unwrap();
    let text = text.replacen("[init]\n", "[init]\nbias_std = 0.00448\n", 1);
    let text = text.replacen(
        "name = \"head.weight\"\n",
        "name = \"head.weight\"\nbias_std = 0\n",
        1,
    );
    let spec = dir.join("biases.toml");
    std::fs::write(&spec, text).unwrap();
    spec
}

#[test]
fn biases_are_frozen_and_change_no_weight_or_mask() {
    // Each bias draws from its own stream (seed, "<module>.bias"): the weights and masks
    // keep the golden bytes, and the biases have their own, in every container and for any
    // thread count.
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with_biases(dir.path());
    for (dtype, weights, biases) in [("f32", F32, BIASES_F32), ("bf16", BF16, BIASES_BF16)] {
        let expected: Vec<(&str, &str)> = weights.iter().chain(biases).copied().collect();
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
            check_table(
                &format!("{SPEC} with biases ({container:?}, {dtype}, --threads {threads})"),
                &actual,
                &expected,
            );
        }
    }
    // The zero bias is 10 f32 zeros: an independent value for its hash.
    let zeros = sha256(&[0u8; 40]);
    assert!(BIASES_F32.contains(&("head.bias", zeros.as_str())));
}

const BIASES_F32: &[(&str, &str)] = &[
    (
        "blocks.0.bias",
        "dc5d490045a423c3bfa4db6f882cd324da4eca82342f913e0587a57f83ceccca",
    ),
    (
        "blocks.1.bias",
        "b0adb3ff188d7b55e99223c4dde86cbf72091e10a40afcffd817649e63c31792",
    ),
    (
        "fc1.bias",
        "be81ae46cf63352c9648eaa7cfea585592e01e2b3923a5a5bb6618c4d9392dd3",
    ),
    (
        "fc2.bias",
        "30cdfb9e99f5eb2dbd3fb8c3cc1a96ddcb217d2c0e303bfcdf1146002feee3a0",
    ),
    (
        "head.bias",
        "2c34ce1df23b838c5abf2a7f6437cca3d3067ed509ff25f11df6b11b582b51eb",
    ),
    (
        "stem.bias",
        "343389c0243d95864c56d5cf54b577b260a1b8234f414e6f0982e7646688d9b1",
    ),
    (
        "temporal.bias",
        "657326c76410ac6c3b9cb1cdf0a8ef17289dc849e743f7f79d6a402e6ac3ee93",
    ),
    (
        "volume.bias",
        "44647ddfa4a7ad1b1dd806bf600c16a9447bdca2a6de4b2e70f75404359e395b",
    ),
];

const BIASES_BF16: &[(&str, &str)] = &[
    (
        "blocks.0.bias",
        "ff019483d467a09a8c89e9583fdc995f6021f2f0c47c3aa785dc24ea810e203d",
    ),
    (
        "blocks.1.bias",
        "a1f4a3b3273bccd6937d5222749a83751d5d68a60aee1da3e085ad1a8cc98474",
    ),
    (
        "fc1.bias",
        "4df2d9a1afc103f6472979de0751dc725f8b7a09f424246e0f94dc328f600f8b",
    ),
    (
        "fc2.bias",
        "41e453d7022730091a02469d2709d99539a81822ada7327be087bc2efbca1029",
    ),
    (
        "head.bias",
        "de47c9b27eb8d300dbb5f2c353e632c393262cf06340c4fa7f1b40c4cbd36f90",
    ),
    (
        "stem.bias",
        "64fd94853caf0697977aeaf16c7c9e5ce45910795be02ac271aa6a5b163e2e65",
    ),
    (
        "temporal.bias",
        "1ca200c6b3d5c90f8d046154953f054709449dadc4c1015be09672ca311bcc44",
    ),
    (
        "volume.bias",
        "454dbaee91fc78853debcca18cd0f402789aa3da6592b29603e7fe421ee73fd8",
    ),
];

const F16: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "de9f57b70d0f4d9e0cf2617219fc1fcc0aa83c30aaacaa0d4cc8bd8f592d3d69",
    ),
    (
        "blocks.0.weight_mask",
        "7c9dfdec78c708b73b64c76316ee51d096c342fa6c53ffd0f5f0ea24210046d5",
    ),
    (
        "blocks.1.weight",
        "1ede364b3bf73cbe6d87a0037b5bf9df64e1c82744272977a2ae4e4a8c865d83",
    ),
    (
        "blocks.1.weight_mask",
        "012def827fdb62c7073640c9d433a673c5c458d4941809ac6c08057c9644d3a2",
    ),
    (
        "fc1.weight",
        "c4429e2e064165fe12cd099dc1e3f45879db9d336c181232a9fe1aed21b4a2be",
    ),
    (
        "fc1.weight_mask",
        "b9febf9876542f81f1ac59a0de4ac89bf49d72d1b346fbba12e261c1ead5b9ad",
    ),
    (
        "fc2.weight",
        "5eabf8889fe4613ed2400943e7a02baad3fb9688b175334e9306db223fbf0f95",
    ),
    (
        "fc2.weight_mask",
        "8b29db1cc0591aa0168236319a625a0000c7df904118b4c9437823b214939126",
    ),
    (
        "head.weight",
        "23317b7a7c021b0b690f867299e91dee1e9dd3d635a5733f86cfd5b5826253b9",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "87fc498f0df74102977e74f6e0b11f433e63259c2adc68abfb795bb4e4e05fb0",
    ),
    (
        "stem.weight_mask",
        "806c4d5052f802cba8cfe3b1b5d860b4fcfa3949bfe5cae8aa05d584124b697e",
    ),
    (
        "temporal.weight",
        "2af6ae821914be8569785e7f64ac307be2928a22d247621b7b512b073bf0d3f2",
    ),
    (
        "temporal.weight_mask",
        "3eb492dc843f26a65ccfe24eb20aebb7f29f11d90436e798b3bdc15b63c389c0",
    ),
    (
        "volume.weight",
        "202e8732882bdf5e3a1ad517b726103bc8eb995bfd71e4941cbf0d3774ef8874",
    ),
    (
        "volume.weight_mask",
        "42693a576d9e073dc32b39c396b424b2a00ee22fc8335ce65ae32613d1a3d896",
    ),
];
const BF16: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "c88b34e2c531a0bb0eb9be5e3d37e6c0ec1c08e82e99fc195f0921937c2b2cbd",
    ),
    (
        "blocks.0.weight_mask",
        "7c9dfdec78c708b73b64c76316ee51d096c342fa6c53ffd0f5f0ea24210046d5",
    ),
    (
        "blocks.1.weight",
        "a6a1ba19a447f800b2c9565a5e9910c5cb01a1957b13eec9a978309e7b7a9757",
    ),
    (
        "blocks.1.weight_mask",
        "012def827fdb62c7073640c9d433a673c5c458d4941809ac6c08057c9644d3a2",
    ),
    (
        "fc1.weight",
        "2487b13012009132c19e3ad0cc5855b2c7dd28886c55bebc379fe95a164e465b",
    ),
    (
        "fc1.weight_mask",
        "b9febf9876542f81f1ac59a0de4ac89bf49d72d1b346fbba12e261c1ead5b9ad",
    ),
    (
        "fc2.weight",
        "1db1e135d56663206c88975ad997bdabb55a7b218550badb80b444d18b94db3b",
    ),
    (
        "fc2.weight_mask",
        "8b29db1cc0591aa0168236319a625a0000c7df904118b4c9437823b214939126",
    ),
    (
        "head.weight",
        "8605471d2029819de672e7690f2692bece4f7e84c2f1d40bafafed5e5e528d16",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "6908ae4d2a5321c4da8f5d4158e9b4ddc13879b617d5398329d6ff15a8779ec0",
    ),
    (
        "stem.weight_mask",
        "806c4d5052f802cba8cfe3b1b5d860b4fcfa3949bfe5cae8aa05d584124b697e",
    ),
    (
        "temporal.weight",
        "0bad78bbcb2d5955ca3ca8971d9ea880a639c170afca69c4156a8593c9a11789",
    ),
    (
        "temporal.weight_mask",
        "3eb492dc843f26a65ccfe24eb20aebb7f29f11d90436e798b3bdc15b63c389c0",
    ),
    (
        "volume.weight",
        "9fcb06d270a51d2944be627a80dec1808f2b43cc71bc65416939c5648e95308d",
    ),
    (
        "volume.weight_mask",
        "42693a576d9e073dc32b39c396b424b2a00ee22fc8335ce65ae32613d1a3d896",
    ),
];
const MASKS_F32: &[(&str, &str)] = &[
    (
        "blocks.0.weight_mask",
        "317de15d47752d31b0e434cfeba17a2b90280db4fc37953616c9f4aac21ce906",
    ),
    (
        "blocks.1.weight_mask",
        "484fb75aced465d25450c2ed7b96a88612f059c9adb76b048261aa89d368d735",
    ),
    (
        "fc1.weight_mask",
        "c75b9d44a84def5807e10314e2447990a4aa7828cee30a054daeaeb8fb020e45",
    ),
    (
        "fc2.weight_mask",
        "4f7014ef7e081944d42c5a79622771179a001072184356ef403b31b786e50535",
    ),
    (
        "head.weight_mask",
        "9daebe2966c6a8065d691f81625f3cc8ba345f05f44b143fc2e31e5c59d72b5c",
    ),
    (
        "stem.weight_mask",
        "97a8deb84f7a9f374f2f6584e7e4d7d8a4b419be0f17fbd84166fda0342194fb",
    ),
    (
        "temporal.weight_mask",
        "d4dc7dc05962cc57224a1fa4b5d393b6db7bac933f71a827cf8599c65681eb31",
    ),
    (
        "volume.weight_mask",
        "3855626b97c595702a3534077434f0e282c84fc56e0e047dd22822cc056e94a6",
    ),
];

#[test]
fn sao_is_frozen_for_any_thread_count_and_container() {
    let spec = Path::new("tests/golden/sao.toml");
    for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
        let actual = hashes(spec, container, &["--threads", threads]);
        check_table(
            &format!("tests/golden/sao.toml ({container:?}, --threads {threads})"),
            &actual,
            SAO,
        );
    }
}

#[test]
fn grouped_and_depthwise_convolutions_are_frozen() {
    // EOI's blocks draw from block streams, the baselines' blocks likewise; the top-up and
    // the random masks from the tensor's stream.
    let spec = Path::new("tests/golden/groups.toml");
    for (scheme, table) in [
        ("eoi", GROUPS_EOI),
        ("orthogonal", GROUPS_ORTHOGONAL),
        ("kaiming", GROUPS_KAIMING),
    ] {
        for (container, threads) in [(Container::Safetensors, "1"), (Container::Npy, "3")] {
            let actual = hashes(spec, container, &["--scheme", scheme, "--threads", threads]);
            check_table(
                &format!(
                    "tests/golden/groups.toml (--scheme {scheme}, {container:?}, --threads {threads})"
                ),
                &actual,
                table,
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
        check_table(
            &format!("tests/golden/structured.toml ({container:?}, --threads {threads})"),
            &actual,
            STRUCTURED,
        );
    }
}

const STRUCTURED: &[(&str, &str)] = &[
    (
        "fc.weight",
        "d2fe5ebeed96dd035a3f062ea4e39c07548c30510e9742ae89a3fa9c019e4c9b",
    ),
    (
        "fc.weight_mask",
        "ddff0b35671404c02764db4921b68fa8cef3287ec6cd4a80bed6ffc32f2811c7",
    ),
    (
        "grouped.weight",
        "cc49235c81216265cbddd9811a1c797753d0c44a1677e4eb9f53edb00e71fd75",
    ),
    (
        "grouped.weight_mask",
        "f62ad58a1276c63c930b11be8143f690b3c1857f1641c40445e828ab9f376ad7",
    ),
    (
        "square.weight",
        "da2a09e7a0a3394ef53f4b7918abe1ea6cabb76d91d21ca5fd01b81c9f415c29",
    ),
    (
        "square.weight_mask",
        "2d63683b6ae0bb8dfd6167f1b527fd2116453dbc519477a058a923e5db6c5cfd",
    ),
    (
        "stem.weight",
        "ff5ea1b4a62ad782b670370353433f16dbfd162479a4a0f978cf2fc7ff82cb91",
    ),
    (
        "stem.weight_mask",
        "9cd41b3d52e4f7c43807cfbe3b0ad6346f9c99337a895cef31d84d294007deea",
    ),
    (
        "tall.weight",
        "fd90c7b1a711f62a208167c6b055f1bb63bc2bac8bbdffe3e25f0ca2a6cfa203",
    ),
    (
        "tall.weight_mask",
        "d3d5a715f7cca55577a423992598208bac61b93c90edaf8447c5263f0abb6cad",
    ),
    (
        "topup.weight",
        "604bce591b040b81c5ba1c23397191187bebda25b61fe72d7b09bed6d098f485",
    ),
    (
        "topup.weight_mask",
        "3c0f74294c02ce4c5b69e8f930ca1bddf62cb7f1fdabb058e155d70cb72e7ee0",
    ),
];

const GROUPS_EOI: &[(&str, &str)] = &[
    (
        "depthwise.weight",
        "60dd4efc39608ba1536ad5e6719133590781cffd7cfa5b5e4265bfa0f4fa3d69",
    ),
    (
        "depthwise.weight_mask",
        "761136e30319b547b806f3753bb0237dcf74194a44f77561bcc360ba1a5b7adb",
    ),
    (
        "grouped.weight",
        "d259e3974376e8e39447d3fe3b98ef681233c8090ba1d0ba6bbf8d187213fddf",
    ),
    (
        "grouped.weight_mask",
        "76192b53de87556daac8469639fe1f7ca44429a26adcccc31638479456909bbc",
    ),
    (
        "multiplier.weight",
        "126b0979551e2471cf84074ff360cd7366bf3f967dea2f08b2696be5cf10a749",
    ),
    (
        "multiplier.weight_mask",
        "7f30277b1a058f94ddde086d5e845c92c16b48c0bc5fbe28dfcce969fb770cc9",
    ),
    (
        "wide.weight",
        "d1597942e47fe80f462df49d4627dff4fd8ccdbb34494f00bf3c525e4dd95ecd",
    ),
    (
        "wide.weight_mask",
        "0185aaa11b2ab10b5eed30cec6bad4d06d8c1d0ac398374f636f6509433e93ef",
    ),
];

const GROUPS_ORTHOGONAL: &[(&str, &str)] = &[
    (
        "depthwise.weight",
        "6277ca24a17555ee305ce6a356c60b637fddab36b916ab654e6dac1cf5238577",
    ),
    (
        "depthwise.weight_mask",
        "381495a25bf4dc8afd12dff5fe6d5e74cb216bbac676fcbbeb6a810c88cf0ee2",
    ),
    (
        "grouped.weight",
        "35d04a4ff9a40cf3a93c8b73b392206a86824dfe4c3737e1082bbfab9fde68ed",
    ),
    (
        "grouped.weight_mask",
        "35fb84daf8f72653d52211cacfe6afabee7656d34f6d81a18823b2efeb5f88d6",
    ),
    (
        "multiplier.weight",
        "be3e1d7889ccdcff538caf3bf566f432277756614dbbe5a37019865262a3462a",
    ),
    (
        "multiplier.weight_mask",
        "5e117cdc884327bab45d715fbabde9cb16829c867578d3097352d3ca2478cd7e",
    ),
    (
        "wide.weight",
        "91a87e17cf8c2d38929e747164352768a034e4858b3f63d2f4396cfeddd109a8",
    ),
    (
        "wide.weight_mask",
        "5ebf53669b3fe71897fcec2ecff6dc975ea61bb2fb3db461a3ecc32c6bc0618b",
    ),
];

const GROUPS_KAIMING: &[(&str, &str)] = &[
    (
        "depthwise.weight",
        "9173fa9aa794133b4d8e4fabd9985a9eaaff280bfa29d4f576703bdbc7b52869",
    ),
    (
        "depthwise.weight_mask",
        "381495a25bf4dc8afd12dff5fe6d5e74cb216bbac676fcbbeb6a810c88cf0ee2",
    ),
    (
        "grouped.weight",
        "7c9e2e990d86ec97ff9a94d45793469a65584010df51e1261f2903cb5d74ddb3",
    ),
    (
        "grouped.weight_mask",
        "35fb84daf8f72653d52211cacfe6afabee7656d34f6d81a18823b2efeb5f88d6",
    ),
    (
        "multiplier.weight",
        "9d2a707156a7d49300a2191cbcdf36b981b23cda36afe80c05fe4641a0643831",
    ),
    (
        "multiplier.weight_mask",
        "5e117cdc884327bab45d715fbabde9cb16829c867578d3097352d3ca2478cd7e",
    ),
    (
        "wide.weight",
        "24d7f7f59e0b326d089aa515a9589ec579403598027990638daaa425ada53fb4",
    ),
    (
        "wide.weight_mask",
        "5ebf53669b3fe71897fcec2ecff6dc975ea61bb2fb3db461a3ecc32c6bc0618b",
    ),
];

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
const KAIMING: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "ba82bfa9ed8ddade10420c172f370d6824e71dbed06c77d21e1eb1b96f7a7ba0",
    ),
    (
        "blocks.0.weight_mask",
        "86d9f6c502ae40d9547f4d44fc094b2254d3627dc9069f2dfc6863f62f6dcfb8",
    ),
    (
        "blocks.1.weight",
        "fdc9642e7d0cee953c6366e5b83ffd397215c8f0ef804014f8d3c4155ff73a80",
    ),
    (
        "blocks.1.weight_mask",
        "487d9e9dca9d77d231bc1763dd2b8c383d411f3bf8bff9525d4db065ce66a028",
    ),
    (
        "fc1.weight",
        "061ed31c2b20e910c1245ff3c9f09b15b17fbd64e8da98be6437d8d898935e16",
    ),
    (
        "fc1.weight_mask",
        "9a15704781181fd57831492d5666d1fef0a6cb4ecee089bf6c7e93ecdc5b3061",
    ),
    (
        "fc2.weight",
        "4564002f4ac9ecafc868062b6c55b98f227e6f1fafdf60bd503d74a7ce9f3159",
    ),
    (
        "fc2.weight_mask",
        "e5a46007df72d5383fb89bcfc90a404653184871708fce8948638d0c316060d2",
    ),
    (
        "head.weight",
        "620006140fdf3e32d70351941048004f9f6eef958ac0767d1ae06940bcea28d8",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "f53e6e066219a51a01693bd2810dc0db3f2bae4eb8d94847a13b1ba585fc9382",
    ),
    (
        "stem.weight_mask",
        "b044c372f565b7151c5c744b3a05c32eb71895eb87a59c0136146ea4ae241e0b",
    ),
    (
        "temporal.weight",
        "2ca2784b758a7cd4390a75ea10c572a252a4e28fa4a29e5deb1494fef3657ef0",
    ),
    (
        "temporal.weight_mask",
        "0abdb5127d1cb43ac25d3431433fa2938a7d3b69b704a7c90d2707a0dcdb4869",
    ),
    (
        "volume.weight",
        "3bdf6cfe832957461b10eff16e9abcba6605e80f45402d47c7ecba733bdafd32",
    ),
    (
        "volume.weight_mask",
        "4e6ba4a128458d678b6ecdcb64936f22c2094e4338117811efc7c3632c202b99",
    ),
];
const SCALED_KAIMING: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "8f11b670485b9622604a4ba06ec2f46a8f90c1c85f0811f2ed1183aa3eceb932",
    ),
    (
        "blocks.0.weight_mask",
        "86d9f6c502ae40d9547f4d44fc094b2254d3627dc9069f2dfc6863f62f6dcfb8",
    ),
    (
        "blocks.1.weight",
        "4416a8ae0970a1ed44301f009433a66ca32306b785f6798353e64d1baaac125d",
    ),
    (
        "blocks.1.weight_mask",
        "487d9e9dca9d77d231bc1763dd2b8c383d411f3bf8bff9525d4db065ce66a028",
    ),
    (
        "fc1.weight",
        "78e511807f6c6346ab256ef8e38e1f1dfa91009601cdcf96925a06ae39ce69d4",
    ),
    (
        "fc1.weight_mask",
        "9a15704781181fd57831492d5666d1fef0a6cb4ecee089bf6c7e93ecdc5b3061",
    ),
    (
        "fc2.weight",
        "438fafd5ece53bcc44baf59d188741592611677a8c3e2207fe92865088ac1fc7",
    ),
    (
        "fc2.weight_mask",
        "e5a46007df72d5383fb89bcfc90a404653184871708fce8948638d0c316060d2",
    ),
    (
        "head.weight",
        "620006140fdf3e32d70351941048004f9f6eef958ac0767d1ae06940bcea28d8",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "cbd88e81ec4ecb14415a5cc99abc351b2ab11d52ea8cb2d87c1210efac5c0797",
    ),
    (
        "stem.weight_mask",
        "b044c372f565b7151c5c744b3a05c32eb71895eb87a59c0136146ea4ae241e0b",
    ),
    (
        "temporal.weight",
        "d6e55f5621217def5137a181a1dacaa2a8644687423a3300c30e1985bb98ed26",
    ),
    (
        "temporal.weight_mask",
        "0abdb5127d1cb43ac25d3431433fa2938a7d3b69b704a7c90d2707a0dcdb4869",
    ),
    (
        "volume.weight",
        "759b682ad5f9efade376a04f6a9c4fbd4f41210a0046df618e232823a8892a1c",
    ),
    (
        "volume.weight_mask",
        "4e6ba4a128458d678b6ecdcb64936f22c2094e4338117811efc7c3632c202b99",
    ),
];
/// Approximate isometry: the orthogonal baseline's masks (the same draws), optimised values.
const APPROX_ISOMETRY: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "264c8652f589cb1a7edc4ecee4bb5136d4d0ad99c2416d6f00dc817fd2edb598",
    ),
    (
        "blocks.0.weight_mask",
        "86d9f6c502ae40d9547f4d44fc094b2254d3627dc9069f2dfc6863f62f6dcfb8",
    ),
    (
        "blocks.1.weight",
        "7763aef68d145b9533e7245b459f59c1f1c9e617d35fe34e60c61838ab33e4ca",
    ),
    (
        "blocks.1.weight_mask",
        "487d9e9dca9d77d231bc1763dd2b8c383d411f3bf8bff9525d4db065ce66a028",
    ),
    (
        "fc1.weight",
        "61f8ef0c3d8f27d1fb02ef53463931ff29f644f7e6fc685b0294b73b274d828d",
    ),
    (
        "fc1.weight_mask",
        "9a15704781181fd57831492d5666d1fef0a6cb4ecee089bf6c7e93ecdc5b3061",
    ),
    (
        "fc2.weight",
        "bb9b5cfde03add9feae1a811a5dced880a8c199044708175e9283f417e013547",
    ),
    (
        "fc2.weight_mask",
        "e5a46007df72d5383fb89bcfc90a404653184871708fce8948638d0c316060d2",
    ),
    (
        "head.weight",
        "a6e03b5eea22a27bb476143116d6caac95e8326fc3ec61d7e78894195e3102a4",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "51c31c504e62b9c05f4f25b8bb6d929c4439594002ecd401565a5f458907efb6",
    ),
    (
        "stem.weight_mask",
        "b044c372f565b7151c5c744b3a05c32eb71895eb87a59c0136146ea4ae241e0b",
    ),
    (
        "temporal.weight",
        "d20fc0693a392b2e66d488fbed9ef0dd12379e94ab14f431b8faad992c60a3bd",
    ),
    (
        "temporal.weight_mask",
        "0abdb5127d1cb43ac25d3431433fa2938a7d3b69b704a7c90d2707a0dcdb4869",
    ),
    (
        "volume.weight",
        "1b2abd66cfbee9cf21a24b38481e2deae3caeed205e4b518f0fdc1afa1c14687",
    ),
    (
        "volume.weight_mask",
        "4e6ba4a128458d678b6ecdcb64936f22c2094e4338117811efc7c3632c202b99",
    ),
];

const ORTHOGONAL: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "48848e5c652a8439de3ac22c24bff64227918205f16993ee964eefdf41adcbfe",
    ),
    (
        "blocks.0.weight_mask",
        "86d9f6c502ae40d9547f4d44fc094b2254d3627dc9069f2dfc6863f62f6dcfb8",
    ),
    (
        "blocks.1.weight",
        "5930ed57217211345dc06086fac2f2dea7d9a2dbe1148f385ed19d7f1bcd5374",
    ),
    (
        "blocks.1.weight_mask",
        "487d9e9dca9d77d231bc1763dd2b8c383d411f3bf8bff9525d4db065ce66a028",
    ),
    (
        "fc1.weight",
        "ef9d79603e879e59ffccd09ba1bb6ac856a2895244dbd6ee8ad75fe6eca3c524",
    ),
    (
        "fc1.weight_mask",
        "9a15704781181fd57831492d5666d1fef0a6cb4ecee089bf6c7e93ecdc5b3061",
    ),
    (
        "fc2.weight",
        "12ce2fddc17aee3d2edbd690de3b9518bca0e1dd3ae2213b4af042c9c720d8cf",
    ),
    (
        "fc2.weight_mask",
        "e5a46007df72d5383fb89bcfc90a404653184871708fce8948638d0c316060d2",
    ),
    (
        "head.weight",
        "a6e03b5eea22a27bb476143116d6caac95e8326fc3ec61d7e78894195e3102a4",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "67ef0ac7c95a93d804af2e193b9fd83f15ee64a8c32166281e6719276f183f14",
    ),
    (
        "stem.weight_mask",
        "b044c372f565b7151c5c744b3a05c32eb71895eb87a59c0136146ea4ae241e0b",
    ),
    (
        "temporal.weight",
        "a10f312e982e3d31b6950c10219f8a6a8877c9ab9b2f7cc6d1532d9d5157849e",
    ),
    (
        "temporal.weight_mask",
        "0abdb5127d1cb43ac25d3431433fa2938a7d3b69b704a7c90d2707a0dcdb4869",
    ),
    (
        "volume.weight",
        "1fb11c798ab767ca993aa4867ccf40a92bd093ffbd559c858062d353df82901a",
    ),
    (
        "volume.weight_mask",
        "4e6ba4a128458d678b6ecdcb64936f22c2094e4338117811efc7c3632c202b99",
    ),
];
const SAO: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "19e21b63cfeb7019686a5ab2846ff839ebc628f02f9b794c701a1900e91b02e0",
    ),
    (
        "blocks.0.weight_mask",
        "c15ef32d402e93cdcde8dcddcbceae2f8b9baf334b6386df0684c79c28a3c7a5",
    ),
    (
        "blocks.1.weight",
        "bec21c5a201eceb02958e2c19b91ed8934c697fa9b2f15c9711df3774827357e",
    ),
    (
        "blocks.1.weight_mask",
        "f4f8e0b99b4fc32ccc33964c87590d51b0d8222a3947bc1182506d5d24247853",
    ),
    (
        "fc1.weight",
        "7e5a7be9d4249a87f13e075b795dd8be33a8161d529bfe6e1b1bab950e8c0a57",
    ),
    (
        "fc1.weight_mask",
        "9cc3045431d9595d4d79a8be0be745d430823a9db120cc68e4a253b2351465b4",
    ),
    (
        "fc2.weight",
        "bcd0989480c327d3a5c71ba287560bbe948381e959f5b4a10c63c33bd95f6458",
    ),
    (
        "fc2.weight_mask",
        "8701b32a82100ecc94c2454e16b7bfa2b6311e0ab59c7edc3c4a29b3b72b28e0",
    ),
    (
        "head.weight",
        "4ad37ac390fd333570c345a8039b685a8352fea6deb028dd0a25054e14b25844",
    ),
    (
        "head.weight_mask",
        "e87ebab060beb7c66837da91b9d2295d637d1fca348b1864ac0281ed0fe77274",
    ),
    (
        "stem.weight",
        "45d5a25d9700d9781586ee745bb56b3bfc196b0ad78808671a7d64553eb49b3e",
    ),
    (
        "stem.weight_mask",
        "4d76a8e07293ab0f0f03fdfac009845631cde02c427e14dc7c4cfc9419a1b3cc",
    ),
];

/// `--scheme conv-orthogonal`: its linear layers (fc1, fc2, head) are `orthogonal`'s bytes.
const CONV_ORTHOGONAL: &[(&str, &str)] = &[
    (
        "blocks.0.weight",
        "a320c1b5cb4e6e4af85de1e3f1cc764ebe5811d8e31197c44215dd8e36caa9ef",
    ),
    (
        "blocks.0.weight_mask",
        "86d9f6c502ae40d9547f4d44fc094b2254d3627dc9069f2dfc6863f62f6dcfb8",
    ),
    (
        "blocks.1.weight",
        "5514cc07e1880eb8857c2ae1c277a7b912360cc6d8572f47751ec7507a81658b",
    ),
    (
        "blocks.1.weight_mask",
        "487d9e9dca9d77d231bc1763dd2b8c383d411f3bf8bff9525d4db065ce66a028",
    ),
    (
        "fc1.weight",
        "ef9d79603e879e59ffccd09ba1bb6ac856a2895244dbd6ee8ad75fe6eca3c524",
    ),
    (
        "fc1.weight_mask",
        "9a15704781181fd57831492d5666d1fef0a6cb4ecee089bf6c7e93ecdc5b3061",
    ),
    (
        "fc2.weight",
        "12ce2fddc17aee3d2edbd690de3b9518bca0e1dd3ae2213b4af042c9c720d8cf",
    ),
    (
        "fc2.weight_mask",
        "e5a46007df72d5383fb89bcfc90a404653184871708fce8948638d0c316060d2",
    ),
    (
        "head.weight",
        "a6e03b5eea22a27bb476143116d6caac95e8326fc3ec61d7e78894195e3102a4",
    ),
    (
        "head.weight_mask",
        "893c172baa019a7bc919e5b8255d39258346a9953f305d0b115076f2cc26cbed",
    ),
    (
        "stem.weight",
        "3e6471284725105c7f778e61843ffab416abbad2d39c4c0c460c6e68387a82c9",
    ),
    (
        "stem.weight_mask",
        "b044c372f565b7151c5c744b3a05c32eb71895eb87a59c0136146ea4ae241e0b",
    ),
    (
        "temporal.weight",
        "517d86c43c3737504548704c8b70bc69999aa428cb7fa7438d1e6f8cea90dd84",
    ),
    (
        "temporal.weight_mask",
        "0abdb5127d1cb43ac25d3431433fa2938a7d3b69b704a7c90d2707a0dcdb4869",
    ),
    (
        "volume.weight",
        "3d41613073f40fb8182feb7e4148df7e5f52b929ecffc79e02b41084922e3953",
    ),
    (
        "volume.weight_mask",
        "4e6ba4a128458d678b6ecdcb64936f22c2094e4338117811efc7c3632c202b99",
    ),
];

//! Golden hashes: the SHA-256 of every tensor that the real binary writes for
//! tests/golden/small.toml, per dtype. They freeze the random streams, the stop rule, the
//! conv rule and density planning: if one changes, output bytes change, which is a breaking
//! change (new major version, CHANGELOG entry, and new hashes here).

use std::collections::BTreeMap;
use std::path::Path;

use assert_cmd::Command;
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

const SPEC: &str = "tests/golden/small.toml";

/// Generates the golden spec with `args` and returns SHA-256 of each tensor's data.
fn tensor_hashes(dtype: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("golden.safetensors");
    Command::cargo_bin("eoi")
        .unwrap()
        .args(["generate", SPEC, "-q", "--dtype", dtype, "-o"])
        .arg(&out)
        .assert()
        .success();
    let bytes = std::fs::read(&out).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let digest = Sha256::digest(view.data());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            (name, hex)
        })
        .collect()
}

fn check(dtype: &str, expected: &[(&str, &str)]) {
    assert!(Path::new(SPEC).exists());
    let actual = tensor_hashes(dtype);
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
    if actual != expected {
        let listing: Vec<String> = actual
            .iter()
            .map(|(n, h)| format!("        (\"{n}\", \"{h}\"),"))
            .collect();
        panic!(
            "output bytes of {SPEC} ({dtype}) changed: the random streams or the method changed.\n\
             If that is intended, it is a breaking change; the new hashes are:\n{}",
            listing.join("\n")
        );
    }
}

#[test]
fn f32_output_is_frozen() {
    check("f32", F32);
}

#[test]
fn f64_output_is_frozen() {
    check("f64", F64);
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

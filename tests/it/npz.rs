//! `--format npz`: one NumPy .npz archive (a zip of stored .npy members and manifest.json),
//! read here with an independent walk over the zip's local headers: the tensors hold the
//! golden bytes, the archive's own bytes are deterministic, and it is placed atomically like
//! every output (no clobbering without --force, nothing left by a failed run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::golden::{self, Hashes};
use crate::util::{SMALL, eoi, json, sha256, stderr};

fn generate(out: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    eoi()
        .arg("generate")
        .arg(SMALL)
        .args(["-q", "--format", "npz", "-o"])
        .arg(out)
        .args(args)
        .assert()
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// The members of a small zip archive in file order, by walking its local headers: name,
/// compression method and data.
fn members(bytes: &[u8]) -> Vec<(String, usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes[at..at + 4] == *b"PK\x03\x04" {
        let (method, size) = (u16_at(bytes, at + 8), u32_at(bytes, at + 18));
        let (name_len, extra_len) = (u16_at(bytes, at + 26), u16_at(bytes, at + 28));
        let name = String::from_utf8(bytes[at + 30..at + 30 + name_len].to_vec()).unwrap();
        let data = at + 30 + name_len + extra_len;
        out.push((name, method, bytes[data..data + size].to_vec()));
        at = data + size;
    }
    assert_eq!(
        &bytes[at..at + 4],
        b"PK\x01\x02",
        "the central directory follows"
    );
    out
}

/// SHA-256 of the data of every .npy member (after its version 1.0 header), by tensor name.
fn tensor_hashes(path: &Path) -> Hashes {
    let bytes = std::fs::read(path).unwrap();
    members(&bytes)
        .into_iter()
        .filter_map(|(name, method, data)| {
            assert_eq!(method, 0, "{name} is stored");
            let tensor = name.strip_suffix(".npy")?.to_string();
            assert_eq!(&data[..8], b"\x93NUMPY\x01\x00");
            Some((tensor, sha256(&data[10 + u16_at(&data, 8)..])))
        })
        .collect()
}

#[test]
fn npz_members_hold_the_golden_bytes_and_a_manifest_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("init.npz");
    generate(&out, &[]).success();
    golden::check("small.toml as npz", &tensor_hashes(&out), &["f32"]);
    let bytes = std::fs::read(&out).unwrap();
    let all = members(&bytes);
    assert_eq!(all[0].0, "manifest.json");
    let manifest = json(&all[0].2);
    assert_eq!(manifest["seed"], 2024);
    assert_eq!(manifest["tensors"][0]["file"], "stem.weight.npy");
    assert_eq!(all.len(), 17);
}

#[test]
fn npz_bytes_do_not_depend_on_threads_and_are_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
    generate(&a, &["--threads", "1"]).success();
    generate(&b, &["--threads", "3"]).success();
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap());
    // The tensor members' names, order and bytes (.npy headers included). The manifest is
    // left out: it records the eoi version, which changes with each release.
    let manifest_free: Vec<u8> = {
        let all = members(&bytes);
        all[1..]
            .iter()
            .flat_map(|(n, _, d)| [n.as_bytes(), d].concat())
            .collect()
    };
    let actual = BTreeMap::from([("small.npz".to_string(), sha256(&manifest_free))]);
    golden::check(
        "the npz members' names and bytes",
        &actual,
        &["npz_members"],
    );
}

#[test]
fn npz_is_placed_atomically_and_never_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("init.npz");
    std::fs::write(&out, b"precious").unwrap();
    let stderr = stderr(&generate(&out, &[]).code(2));
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    generate(&out, &["--force"]).success();
    golden::check("small.toml as npz, --force", &tensor_hashes(&out), &["f32"]);
    // Nothing but the archive is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // bf16 has no NumPy type: refused before any work.
    let bf16 = dir.path().join("bf16.npz");
    generate(&bf16, &["--dtype", "bf16"]).code(2);
    assert!(!bf16.exists());
}

#[test]
fn verify_and_inspect_read_npz() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("init.npz");
    generate(&out, &["--dtype", "f16", "--mask-dtype", "u8"]).success();
    let assert = eoi()
        .arg("verify")
        .arg(&out)
        .args(["--regenerate", "--json"])
        .assert()
        .success();
    let report = json(&assert.get_output().stdout);
    assert_eq!(report["format"], "npz");
    assert_eq!(report["regenerate"]["compared"], 16);
    let assert = eoi()
        .args(["inspect", "--json"])
        .arg(&out)
        .assert()
        .success();
    let inspection = json(&assert.get_output().stdout);
    assert_eq!(inspection["tensors"].as_array().unwrap().len(), 16);
    // A truncated archive is refused, naming the problem.
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes[..bytes.len() - 10]).unwrap();
    let stderr = stderr(&eoi().arg("verify").arg(&out).assert().code(2));
    assert!(stderr.contains("not a readable .npz archive"), "{stderr}");
}

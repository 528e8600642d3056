//! The artifact reader behind `eoi verify` and `eoi inspect` on arbitrary bytes: a single file
//! (safetensors, or .npy by its magic) or an npy directory, opened with `eoi::read::Artifact`,
//! every tensor read back, the recorded provenance parsed, and then the whole artifact
//! verified (with `--regenerate`: the embedded spec planned and generated again) and
//! inspected (statistics and spectra of its matrices), as the commands do. Every input must
//! give an error or a result, never a panic, a hang or an allocation larger than the input
//! calls for.
//!
//! The first byte picks the shape of the artifact: even, one file holding the rest; odd, a
//! directory: the rest is cut before every `\x93NUMPY`; the first piece, if not empty, is
//! `manifest.json`, the others are `0.npy`, `1.npy`, ... (at most 16).

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use eoi::progress::Silent;
use eoi::read::Artifact;
use eoi::records::Recorded;
use libfuzzer_sys::fuzz_target;

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
const MAX_FILES: usize = 16;

/// A private scratch directory, made once per fuzzing process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("eoi-fuzz-read-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// Where each `\x93NUMPY` starts, at most [`MAX_FILES`] of them.
fn magics(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at + NPY_MAGIC.len() <= bytes.len() && starts.len() < MAX_FILES {
        if bytes[at..].starts_with(NPY_MAGIC) {
            starts.push(at);
            at += NPY_MAGIC.len();
        } else {
            at += 1;
        }
    }
    starts
}

fn artifact_from(data: &[u8]) -> Option<PathBuf> {
    let (&mode, bytes) = data.split_first()?;
    let dir = scratch();
    if mode % 2 == 0 {
        let path = dir.join("artifact.safetensors");
        fs::write(&path, bytes).ok()?;
        return Some(path);
    }
    let npy = dir.join("npy");
    let _ = fs::remove_dir_all(&npy);
    fs::create_dir(&npy).ok()?;
    let starts = magics(bytes);
    let manifest = &bytes[..starts.first().copied().unwrap_or(bytes.len())];
    if !manifest.is_empty() {
        fs::write(npy.join("manifest.json"), manifest).ok()?;
    }
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(bytes.len());
        fs::write(npy.join(format!("{k}.npy")), &bytes[start..end]).ok()?;
    }
    Some(npy)
}

fuzz_target!(|data: &[u8]| {
    let Some(path) = artifact_from(data) else {
        return;
    };
    if let Ok(artifact) = Artifact::open(&path) {
        for info in artifact.tensors() {
            let _ = artifact.read_bytes(info);
            let _ = artifact.read_f64(info);
        }
        if let Some(pairs) = artifact.metadata() {
            let _ = Recorded::from_metadata(pairs);
        }
        if let Some(doc) = artifact.manifest() {
            let _ = Recorded::from_manifest(doc);
        }
    }
    let options = eoi::verify::Options {
        regenerate: true,
        ..Default::default()
    };
    let _ = eoi::verify::verify(&path, &options, &Silent);
    let _ = eoi::inspect::inspect(&path, &Silent);
});

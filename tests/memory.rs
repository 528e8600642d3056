//! Memory is bounded by the largest layer and the threads, not by the model. This file holds
//! one test on purpose: it reads the peak resident size of its child processes
//! (`getrusage(RUSAGE_CHILDREN)`), which would mix with other tests' children in one process.

#![cfg(target_os = "linux")]

use std::path::Path;

use assert_cmd::Command;

/// The largest peak resident size, in bytes, of any child waited for so far.
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_maxrss as u64 * 1024
}

fn spec(dir: &Path, name: &str, layers: usize, width: usize, density: f64) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        "[sparsity]\ndensity = {density}\n[[layer]]\nname = \"l{{i}}.weight\"\nshape = [{width}, {width}]\nrepeat = {layers}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn generate(spec: &Path, out: &Path) {
    Command::cargo_bin("eoi")
        .unwrap()
        .args(["generate", "-q", "--threads", "2", "-o"])
        .arg(out)
        .arg(spec)
        .assert()
        .success();
}

#[test]
fn peak_memory_follows_the_largest_layer_not_the_model() {
    let dir = tempfile::tempdir().unwrap();
    // 8 and then 32 layers of 1024 x 1024: the model grows 4x (42 MB -> 168 MB of output).
    generate(
        &spec(dir.path(), "small.toml", 8, 1024, 0.1),
        &dir.path().join("small.safetensors"),
    );
    let small = children_peak_rss();
    generate(
        &spec(dir.path(), "large.toml", 32, 1024, 0.1),
        &dir.path().join("large.safetensors"),
    );
    let large = children_peak_rss();
    assert!(
        large as f64 <= small as f64 * 1.25,
        "peak RSS grew from {} MB to {} MB for a 4x larger model",
        small >> 20,
        large >> 20
    );
    // One 8192 x 8192 layer (a 270 MB output) stays under 1 GiB.
    generate(
        &spec(dir.path(), "huge.toml", 1, 8192, 0.001),
        &dir.path().join("huge.safetensors"),
    );
    let huge = children_peak_rss();
    eprintln!(
        "peak RSS: 8 layers {} MB, 32 layers {} MB, one 8192^2 layer {} MB",
        small >> 20,
        large >> 20,
        huge >> 20
    );
    assert!(
        huge < 1 << 30,
        "peak RSS {} MB for an 8192 x 8192 layer",
        huge >> 20
    );
    assert!(
        std::fs::metadata(dir.path().join("huge.safetensors"))
            .unwrap()
            .len()
            > 8192 * 8192 * 5
    );
}

//! Memory is bounded by the largest layer and the threads, not by the model. Each run's peak
//! resident size is the kernel's figure for that one process (`wait4`), so the other tests
//! of this binary, running beside it with children of their own, do not count.

#![cfg(target_os = "linux")]

use std::fs::File;
use std::path::Path;
use std::process::Stdio;

use crate::util::{Sandbox, eoi_process};

fn spec(dir: &Path, name: &str, layers: usize, width: usize, density: f64) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        "[sparsity]\ndensity = {density}\n[[layer]]\nname = \"l{{i}}.weight\"\nshape = [{width}, {width}]\nrepeat = {layers}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `eoi generate -q --threads 2 -o OUT SPEC`, requires success, and returns the peak
/// resident size in bytes of that process alone, as `wait4` reports it when reaping it.
fn generate(spec: &Path, out: &Path) -> u64 {
    let log = out.with_extension("stderr");
    // Reaped by wait4 below, which std's Child::wait cannot stand in for (no rusage).
    #[allow(clippy::zombie_processes)]
    let child = eoi_process()
        .args(["generate", "-q", "--threads", "2", "-o"])
        .arg(out)
        .arg(spec)
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 only writes into the status and the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "eoi generate {} failed ({status:#x}):\n{}",
        spec.display(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn peak_memory_follows_the_largest_layer_not_the_model() {
    let sandbox = Sandbox::new();
    // 8 and then 32 layers of 1024 x 1024: the model grows 4x (42 MB -> 168 MB of output).
    let small = generate(
        &spec(sandbox.dir(), "small.toml", 8, 1024, 0.1),
        &sandbox.path("small.safetensors"),
    );
    let large = generate(
        &spec(sandbox.dir(), "large.toml", 32, 1024, 0.1),
        &sandbox.path("large.safetensors"),
    );
    assert!(
        large as f64 <= small as f64 * 1.25,
        "peak RSS grew from {} MB to {} MB for a 4x larger model",
        small >> 20,
        large >> 20
    );
    // One 8192 x 8192 layer (a 270 MB output) stays under 1 GiB.
    let huge = generate(
        &spec(sandbox.dir(), "huge.toml", 1, 8192, 0.001),
        &sandbox.path("huge.safetensors"),
    );
    eprintln!(
        "peak RSS: 8 layers {} MB, 32 layers {} MB, one 8192^2 layer {} MB",
        small >> 20,
        large >> 20,
        huge >> 20
    );
    // Each run stays under 1 GiB, the 8192 x 8192 layer too.
    assert!(
        small.max(large).max(huge) < 1 << 30,
        "peak RSS {} MB for an 8192 x 8192 layer",
        huge >> 20
    );
    assert!(
        std::fs::metadata(sandbox.path("huge.safetensors"))
            .unwrap()
            .len()
            > 8192 * 8192 * 5
    );
}

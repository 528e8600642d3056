//! `eoi generate SPEC -o -`: one safetensors file streamed to standard output, read here
//! through a real pipe. Its bytes must equal those of `-o FILE` for the same spec and seed,
//! whatever the dtypes (which decide the order of the data), names, layout and threads; what
//! cannot go to a stream is refused with exit 2 and nothing on standard output; a write
//! failure exits 1 and a closed pipe ends the run quietly.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use crate::util::{
    Needs, SMALL as SPEC, Sandbox, eoi_path, eoi_process, python, read_then_close, repo,
    small_with_biases, text,
};

/// `eoi generate SPEC -o - ARGS...` with standard output a pipe: (exit code, stdout, stderr).
fn streamed(spec: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = eoi_process()
        .arg("generate")
        .arg(spec)
        .args(["-o", "-"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        text(&out.stderr),
    )
}

#[test]
fn the_stream_holds_the_bytes_of_the_file() {
    let dir = Sandbox::new();
    let spec = small_with_biases(dir.dir());
    for args in [
        // bool masks after the f32 weights: the weights pass, then the masks pass.
        vec!["--threads", "3"],
        vec!["--threads", "1", "--dtype", "f64"],
        // f32 masks beside f32 weights: one pass, layer after layer.
        vec!["--mask-dtype", "f32"],
        // f32 masks before f16 weights: the masks pass first.
        vec!["--dtype", "f16", "--mask-dtype", "f32"],
        vec![
            "--dtype",
            "bf16",
            "--layout",
            "flax",
            "--names",
            "torch-prune",
        ],
        vec!["--scheme", "kaiming", "--seed", "9"],
    ] {
        let file = dir.path("file.safetensors");
        let written = eoi_process()
            .arg("generate")
            .arg(&spec)
            .arg("-o")
            .arg(&file)
            .args(["-q", "--force"])
            .args(&args)
            .status()
            .unwrap();
        assert!(written.success(), "{args:?}");
        let (code, bytes, stderr) = streamed(&spec, &args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("wrote standard output (safetensors, "),
            "{stderr}"
        );
        let expected = fs::read(&file).unwrap();
        assert_eq!(bytes.len(), expected.len(), "{args:?}");
        assert!(
            bytes == expected,
            "{args:?}: the stream differs from the file"
        );
    }
}

#[test]
fn what_cannot_be_streamed_is_refused_before_any_byte() {
    let dir = Sandbox::new();
    let base = dir.path("base.safetensors");
    let made = eoi_process()
        .args(["generate", SPEC, "-q", "-o"])
        .arg(&base)
        .status()
        .unwrap();
    assert!(made.success());
    let base = base.to_str().unwrap();
    for (args, message) in [
        (vec!["--format", "npy"], "npy output is written to a path"),
        (vec!["--format", "npz"], "npz output is written to a path"),
        (
            vec!["--max-shard-size", "10KB"],
            "sharded output (--max-shard-size, --shard) is a directory",
        ),
        (
            vec!["--max-shard-size", "10KB", "--shard", "1/3"],
            "sharded output (--max-shard-size, --shard) is a directory",
        ),
        (vec!["--base", base], "--base writes the base's files"),
        (
            vec!["--masks", "masks.safetensors"],
            "--masks moves the weights and the masks into place together",
        ),
        (
            vec!["--json"],
            "--json prints to standard output, which -o - fills with the safetensors bytes",
        ),
    ] {
        let (code, bytes, stderr) = streamed(Path::new(SPEC), &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(bytes.is_empty(), "{args:?} wrote to standard output");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // A run refused for its memory writes nothing either.
    let (code, bytes, stderr) = streamed(Path::new(SPEC), &["--max-memory", "1KB"]);
    assert_eq!((code, bytes.len()), (2, 0), "{stderr}");
}

#[test]
fn a_terminal_is_refused() {
    // Standard output a pseudo-terminal, made by Python's pty module (the interpreter of
    // $EOI_PYTHON, as in the other tests).
    let script = "import pty, subprocess, sys\n\
        main, side = pty.openpty()\n\
        p = subprocess.run(sys.argv[1:], stdout=side, stderr=subprocess.PIPE)\n\
        sys.stderr.buffer.write(p.stderr)\n\
        sys.exit(p.returncode)\n";
    let out = python(Needs::NumpySafetensors)
        .args(["-c", script])
        .arg(eoi_path())
        .args(["generate", SPEC, "-o", "-"])
        .output()
        .expect("python runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("standard output, which is a terminal; redirect it to a file or a pipe"),
        "{stderr}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_exits_1_and_a_closed_pipe_ends_quietly() {
    // /dev/full refuses every write: the run fails with exit 1 and says why.
    let out = eoi_process()
        .args(["generate", SPEC, "-o", "-"])
        .stdout(fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");

    // A reader that takes 100 bytes and closes the pipe (`eoi ... -o - | head -c 100`): a
    // normal end, exit 0, no error. The spec is large enough (83 MB) to outlast the pipe.
    let spec = repo("specs/mlp-1000-tanh.toml");
    let (head, out) = read_then_close(
        eoi_process()
            .arg("generate")
            .arg(spec)
            .args(["-o", "-", "-q"]),
        100,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty());
    let header_len = u64::from_le_bytes(head[..8].try_into().unwrap());
    assert!(header_len > 0 && head[8] == b'{');
}

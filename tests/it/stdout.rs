//! `eoi generate SPEC -o -`: one safetensors file streamed to standard output, read here
//! through a real pipe. Its bytes must equal those of `-o FILE` for the same spec and seed,
//! whatever the dtypes (which decide the order of the data), names, layout and threads; what
//! cannot go to a stream is refused with exit 2 and nothing on standard output; a write
//! failure exits 1 and a closed pipe ends the run quietly.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::TempDir;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/small.toml");

fn eoi() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin!("eoi"))
}

/// The golden spec with biases, so every kind of tensor is in the stream.
fn spec_with_biases(dir: &Path) -> std::path::PathBuf {
    let text =
        fs::read_to_string(SPEC)
            .unwrap()
            .replacen("[init]\n", "[init]\nbias_std = 0.1\n", 1);
    let spec = dir.join("biases.toml");
    fs::write(&spec, text).unwrap();
    spec
}

/// `eoi generate SPEC -o - ARGS...` with standard output a pipe: (exit code, stdout, stderr).
fn streamed(spec: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = eoi()
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
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_stream_holds_the_bytes_of_the_file() {
    let dir = TempDir::new().unwrap();
    let spec = spec_with_biases(dir.path());
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
        let file = dir.path().join("file.safetensors");
        let written = eoi()
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
    let dir = TempDir::new().unwrap();
    let base = dir.path().join("base.safetensors");
    let made = eoi()
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
    let python = std::env::var("EOI_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import pty, subprocess, sys\n\
        main, side = pty.openpty()\n\
        p = subprocess.run(sys.argv[1:], stdout=side, stderr=subprocess.PIPE)\n\
        sys.stderr.buffer.write(p.stderr)\n\
        sys.exit(p.returncode)\n";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(assert_cmd::cargo::cargo_bin!("eoi"))
        .args(["generate", SPEC, "-o", "-"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the Python interpreter `{python}`: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
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
    let out = eoi()
        .args(["generate", SPEC, "-o", "-"])
        .stdout(fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");

    // A reader that takes 100 bytes and closes the pipe (`eoi ... -o - | head -c 100`): a
    // normal end, exit 0, no error. The spec is large enough (83 MB) to outlast the pipe.
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/mlp-1000-tanh.toml");
    let mut child = eoi()
        .args(["generate", spec, "-o", "-", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    let header_len = u64::from_le_bytes(head[..8].try_into().unwrap());
    assert!(header_len > 0 && head[8] == b'{');
}

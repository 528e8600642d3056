//! What every test module shares: the binary under test, a sandbox directory to run it in,
//! independent readers of what it writes (the `safetensors` crate, `ndarray-npy`,
//! `serde_json`; never eoi's own code), a safetensors writer for hand-made inputs, hashes,
//! the orthogonality measure, the Python runner, the spec and model fixtures, the golden hash
//! tables ([`golden`]) and the library items the tests call directly ([`lib`]).
//!
//! A helper lives here as soon as two modules need it; what only one module needs stays in it.

pub mod golden;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::sync::OnceLock;

use assert_cmd::Command;
use assert_cmd::assert::Assert;
use ndarray::ArrayD;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The library items tests call directly (few: the tests drive the binary). When a module of
/// the library moves, these lines are the ones to change.
pub mod lib {
    pub use eoi::json::{Document, GenerateJson, InspectJson, IsometryJson, PlanJson, VerifyJson};
    pub use eoi::plan::{Overrides, plan};
    pub use eoi::records::LayerRecord;
    pub use eoi::schemes::{LayerPlan, generate as generate_layer, stats as layer_stats};
    pub use eoi::spec::{Source, parse as parse_spec};
    pub use eoi::stream::STREAM_VERSION;
    pub use eoi::tensor::RowBlocks;
}

// ---------------------------------------------------------------------------------------
// Fixtures in the repository

/// The repository's root (cargo runs the tests there too).
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A path in the repository, e.g. `repo("specs/mlp-mnist.toml")`.
pub fn repo(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

/// The golden spec tests/golden/small.toml: a linear stack and convolutions of every rank with
/// ERK densities, whose output bytes tests/golden/hashes.toml freezes.
pub const SMALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/small.toml");

/// The bundled specs, specs/*.toml, sorted.
pub fn bundled_specs() -> Vec<PathBuf> {
    let mut specs: Vec<PathBuf> = fs::read_dir(repo("specs"))
        .expect("specs/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 8, "{specs:?}");
    specs
}

/// Writes the golden spec with biases into `dir` and returns its path: `bias_std = 0.00448`
/// (the paper's sigma_b) in `[init]`, and `bias_std = 0` (a bias of zeros) for `head.weight`.
pub fn small_with_biases(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(SMALL).unwrap();
    let text = text.replacen("[init]\n", "[init]\nbias_std = 0.00448\n", 1);
    let text = text.replacen(
        "name = \"head.weight\"\n",
        "name = \"head.weight\"\nbias_std = 0\n",
        1,
    );
    let spec = dir.join("biases.toml");
    fs::write(&spec, text).unwrap();
    spec
}

/// (name, shape) of torchvision's resnet18 state dict, in its order. Every tensor is F32 but
/// the BatchNorm counters `*.num_batches_tracked` (I64, shape []).
pub fn resnet18() -> Vec<(String, Vec<usize>)> {
    let mut list = Vec::new();
    let bn = |list: &mut Vec<(String, Vec<usize>)>, prefix: &str, c: usize| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            list.push((format!("{prefix}.{p}"), vec![c]));
        }
        list.push((format!("{prefix}.num_batches_tracked"), vec![]));
    };
    list.push(("conv1.weight".into(), vec![64, 3, 7, 7]));
    bn(&mut list, "bn1", 64);
    let mut inp = 64;
    for (l, c) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        for b in 0..2 {
            let p = format!("layer{l}.{b}");
            let first_in = if b == 0 { inp } else { c };
            list.push((format!("{p}.conv1.weight"), vec![c, first_in, 3, 3]));
            bn(&mut list, &format!("{p}.bn1"), c);
            list.push((format!("{p}.conv2.weight"), vec![c, c, 3, 3]));
            bn(&mut list, &format!("{p}.bn2"), c);
            if b == 0 && l > 1 {
                list.push((format!("{p}.downsample.0.weight"), vec![c, inp, 1, 1]));
                bn(&mut list, &format!("{p}.downsample.1"), c);
            }
        }
        inp = c;
    }
    list.push(("fc.weight".into(), vec![1000, 512]));
    list.push(("fc.bias".into(), vec![1000]));
    list
}

// ---------------------------------------------------------------------------------------
// The binary under test

/// The `eoi` binary cargo built for these tests.
pub fn eoi_path() -> &'static Path {
    assert_cmd::cargo::cargo_bin!("eoi")
}

/// `eoi` as a plain process (for pipes, signals and children of our own), with no thread
/// count or colour setting inherited from the caller.
pub fn eoi_process() -> Process {
    let mut command = Process::new(eoi_path());
    command
        .env_remove("RAYON_NUM_THREADS")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE");
    command
}

/// Starts `command` with its standard output and error piped, reads the first `n` bytes of
/// its output and closes the pipe (as `| head -c N` does); those bytes and how the run ended.
pub fn read_then_close(command: &mut Process, n: usize) -> (Vec<u8>, Output) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut head = vec![0u8; n];
    child
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut head)
        .expect("no output");
    (head, child.wait_with_output().unwrap())
}

/// `eoi` to run and assert on (assert_cmd), environment as [`eoi_process`].
pub fn eoi() -> Command {
    Command::from_std(eoi_process())
}

/// Runs `eoi generate SPEC -o OUT -q ARGS...`, which must succeed.
pub fn generate(spec: &Path, out: &Path, args: &[&str]) {
    eoi()
        .arg("generate")
        .arg(spec)
        .arg("-o")
        .arg(out)
        .arg("-q")
        .args(args)
        .assert()
        .success();
}

/// Runs `eoi spec --from SOURCE ARGS...`, which must succeed; the spec it prints.
pub fn spec_from(source: &Path, args: &[&str]) -> String {
    let assert = eoi()
        .arg("spec")
        .arg("--from")
        .arg(source)
        .args(args)
        .assert()
        .success();
    utf8(&assert.get_output().stdout)
}

/// `eoi` started by `sh` after `setup`, a shell command such as `ulimit -f 100` or `umask
/// 027`: `sh -c 'SETUP && exec "$@"' sh EOI`, to which the caller adds eoi's arguments.
pub fn eoi_after(setup: &str) -> Command {
    let mut sh = Process::new("sh");
    sh.args(["-c", &format!("{setup} && exec \"$@\""), "sh"])
        .arg(eoi_path())
        .env_remove("RAYON_NUM_THREADS")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE");
    Command::from_std(sh)
}

/// A temporary directory the binary runs in; specs and outputs live inside it, and it is
/// removed with everything in it when the test ends.
pub struct Sandbox {
    dir: TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("cannot create a temporary directory"),
        }
    }

    /// The sandbox directory itself.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` in the sandbox; its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
        path
    }

    /// The bytes of `name` in the sandbox.
    pub fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    }

    /// `eoi`, to be run inside the sandbox.
    pub fn command(&self) -> Command {
        let mut command = eoi();
        command.current_dir(self.dir.path());
        command
    }

    /// Runs `eoi args...` inside the sandbox.
    pub fn eoi(&self, args: &[&str]) -> Assert {
        self.command().args(args).assert()
    }

    /// Writes `spec` to `spec.toml` and runs `eoi generate spec.toml -o OUT ARGS...`.
    pub fn generate(&self, spec: &str, out: &str, args: &[&str]) -> Assert {
        self.write("spec.toml", spec);
        let mut all = vec!["generate", "spec.toml", "-o", out];
        all.extend_from_slice(args);
        self.eoi(&all)
    }

    /// `eoi COMMAND ARGS... --json`, required to exit with `code`; its standard output as JSON.
    pub fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        json(&self.eoi(&all).code(code).get_output().stdout)
    }

    /// Runs `python -c CODE` inside the sandbox, with the packages `needs` names (JAX on the
    /// CPU), and requires it to succeed; its standard output.
    pub fn python(&self, needs: Needs, code: &str) -> String {
        let out = python(needs)
            .args(["-c", code])
            .current_dir(self.dir.path())
            .env("JAX_PLATFORMS", "cpu")
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "python -c failed in the sandbox:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        utf8(&out.stdout)
    }

    /// Staging files or directories (`.eoi-*`) left anywhere in the sandbox.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        leftovers(self.dir.path())
    }
}

/// The commands a top-level help text (`eoi --help`) lists, without `help`; it must list at
/// least plan, generate, completions, man and schema.
pub fn commands(top_help: &str) -> Vec<String> {
    let commands: Vec<String> = top_help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect();
    for expected in ["plan", "generate", "completions", "man", "schema"] {
        assert!(commands.iter().any(|c| c == expected), "{top_help}");
    }
    commands
}

/// Standard output of a run, which must be UTF-8.
pub fn stdout(assert: &Assert) -> String {
    utf8(&assert.get_output().stdout)
}

/// Standard error of a run, which must be UTF-8.
pub fn stderr(assert: &Assert) -> String {
    utf8(&assert.get_output().stderr)
}

/// Bytes that must be UTF-8, as text.
pub fn utf8(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("the output is not UTF-8")
}

/// Bytes as text for a message, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes (or text) that must be JSON.
pub fn json(bytes: impl AsRef<[u8]>) -> Value {
    let bytes = bytes.as_ref();
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(bytes)))
}

// ---------------------------------------------------------------------------------------
// Files on disk

/// Every path under `dir`, relative to it (directories too if `with_dirs`), sorted.
pub fn files_under(dir: &Path, with_dirs: bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).expect("cannot list a directory") {
            let path = entry.expect("cannot read a directory entry").path();
            let relative = path.strip_prefix(dir).unwrap().to_path_buf();
            if path.is_dir() {
                pending.push(path);
                if with_dirs {
                    found.push(relative);
                }
            } else {
                found.push(relative);
            }
        }
    }
    found.sort();
    found
}

/// Every file under `path` (or `path` itself, under the name "") by its path relative to
/// `path`, with its bytes: to show that a run changed nothing, or that two outputs are equal.
pub fn contents(path: &Path) -> BTreeMap<String, Vec<u8>> {
    if path.is_file() {
        return BTreeMap::from([(String::new(), fs::read(path).unwrap())]);
    }
    files_under(path, false)
        .into_iter()
        .map(|relative| {
            let bytes = fs::read(path.join(&relative)).unwrap();
            (relative.to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// The names in `dir` (files, directories, links), sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The staging names eoi uses while writing (`.eoi-*`) anywhere under `dir`. Directories
/// that cannot be listed are passed over, links are not followed.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(".eoi-") {
                found.push(path.clone());
            }
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// A directory that this process cannot create files in. A 0555 directory does that for an
/// ordinary user, but root (as in CI containers) writes through any mode bits; there the
/// output goes to /sys instead, where no one may create files, not even root.
pub fn unwritable_directory(sandbox: &Path) -> PathBuf {
    let locked = sandbox.join("locked");
    fs::create_dir(&locked).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let probe = locked.join("probe");
    if fs::write(&probe, b"").is_err() {
        return locked;
    }
    fs::remove_file(&probe).unwrap();
    let sys = PathBuf::from("/sys");
    assert!(
        fs::write(sys.join("eoi-probe"), b"").is_err(),
        "no unwritable directory found: both a 0555 directory and /sys take new files"
    );
    sys
}

// ---------------------------------------------------------------------------------------
// Reading outputs back, independently of eoi

/// One tensor as the `safetensors` crate reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values widened to f64: F64 and F32 as numbers, BOOL as 0 and 1.
    pub fn values(&self) -> Vec<f64> {
        match self.dtype {
            Dtype::F64 => self
                .data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F32 => self.f32s().into_iter().map(f64::from).collect(),
            Dtype::BOOL => self.data.iter().map(|&b| f64::from(b)).collect(),
            other => panic!("expected F64, F32 or BOOL, got {other:?}"),
        }
    }

    /// An F32 tensor's values.
    pub fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32);
        f32s(&self.data)
    }

    /// A BOOL tensor's values; every byte must be 0 or 1.
    pub fn mask(&self) -> Vec<bool> {
        assert_eq!(self.dtype, Dtype::BOOL, "a mask must be BOOL");
        assert_eq!(self.data.len(), self.numel());
        self.data
            .iter()
            .map(|&b| match b {
                0 => false,
                1 => true,
                other => panic!("a BOOL byte must be 0 or 1, got {other}"),
            })
            .collect()
    }
}

/// A safetensors file: its tensors and `__metadata__` (empty if it has none).
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("no tensor \"{name}\" in {:?}", self.tensors.keys()))
    }

    pub fn meta(&self, key: &str) -> &str {
        self.metadata
            .get(key)
            .unwrap_or_else(|| panic!("no metadata key \"{key}\" in {:?}", self.metadata))
    }

    /// The mask of layer `name`: the BOOL tensor `{name}_mask`.
    pub fn mask_of(&self, name: &str) -> Vec<bool> {
        self.tensor(&format!("{name}_mask")).mask()
    }

    /// The per-layer records of `eoi.layers`, in their order.
    pub fn layers(&self) -> Vec<Value> {
        match json(self.meta("eoi.layers")) {
            Value::Array(layers) => layers,
            other => panic!("eoi.layers is not a list: {other}"),
        }
    }

    /// The per-layer records of `eoi.layers`, by name.
    pub fn layer_records(&self) -> BTreeMap<String, Value> {
        records_by_name(&Value::Array(self.layers()))
    }

    /// The record of layer `name` in `eoi.layers`.
    pub fn record(&self, name: &str) -> Value {
        self.layers()
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no record of layer {name}"))
    }
}

/// Reads a safetensors file with the `safetensors` crate.
pub fn read_safetensors(path: &Path) -> Checkpoint {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    safetensors_of(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid safetensors: {e}", path.display()))
}

/// Reads the bytes of a safetensors file with the `safetensors` crate.
pub fn safetensors_of(bytes: &[u8]) -> Result<Checkpoint, String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| format!("{e:?}"))?;
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let tensor = Tensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            (name, tensor)
        })
        .collect();
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format!("{e:?}"))?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Checkpoint { tensors, metadata })
}

/// Byte range of tensor `name`'s data in the bytes of a safetensors file.
pub fn data_range(bytes: &[u8], name: &str) -> Range<usize> {
    let (n, metadata) = SafeTensors::read_metadata(bytes).expect("a valid file");
    let info = metadata
        .info(name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    8 + n + info.data_offsets.0..8 + n + info.data_offsets.1
}

/// An .npy file read with `ndarray-npy` as `dtype` (F32, F64 or BOOL), as a tensor of
/// little-endian row-major bytes: directly comparable with a safetensors tensor.
pub fn read_npy_as(path: &Path, dtype: Dtype) -> Tensor {
    fn read<T: ndarray_npy::ReadableElement>(path: &Path) -> ArrayD<T> {
        ndarray_npy::read_npy(path)
            .unwrap_or_else(|e| panic!("ndarray-npy cannot read {}: {e}", path.display()))
    }
    let (shape, data): (Vec<usize>, Vec<u8>) = match dtype {
        Dtype::F32 => {
            let a = read::<f32>(path);
            let data = a.iter().flat_map(|x| x.to_le_bytes()).collect();
            (a.shape().to_vec(), data)
        }
        Dtype::F64 => {
            let a = read::<f64>(path);
            let data = a.iter().flat_map(|x| x.to_le_bytes()).collect();
            (a.shape().to_vec(), data)
        }
        Dtype::BOOL => {
            let a = read::<bool>(path);
            (a.shape().to_vec(), a.iter().map(|&b| u8::from(b)).collect())
        }
        other => panic!("unexpected dtype {other:?}"),
    };
    Tensor { dtype, shape, data }
}

/// Where the data of an .npy file starts: after the magic, the version and the header, whose
/// length is a u16 in version 1 and a u32 in versions 2 and 3.
pub fn npy_data_start(bytes: &[u8]) -> usize {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an .npy file");
    match bytes[6] {
        1 => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        _ => 12 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
    }
}

/// The manifest.json of an npy directory.
pub fn manifest(dir: &Path) -> Value {
    json(fs::read(dir.join("manifest.json")).expect("manifest.json is readable"))
}

/// A JSON array of layer records keyed by their `name`.
pub fn records_by_name(layers: &Value) -> BTreeMap<String, Value> {
    layers
        .as_array()
        .expect("layers is not an array")
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// Little-endian f32 values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// f32 values as little-endian bytes.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------
// Writing inputs by hand

/// A tensor to write: name, safetensors dtype, shape, little-endian data.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn new(name: &str, dtype: &str, shape: &[usize], data: Vec<u8>) -> Entry {
        Entry {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            data,
        }
    }

    /// A tensor whose bytes are nonzero and differ from those of the `k`-th other tensor.
    pub fn patterned(name: &str, dtype: &str, shape: &[usize], k: usize) -> Entry {
        let size = match dtype {
            "F64" | "I64" => 8,
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            _ => 1,
        };
        let len = size * shape.iter().product::<usize>();
        let data = (0..len)
            .map(|i| ((i * 31 + k * 7) % 251) as u8 + 1)
            .collect();
        Entry::new(name, dtype, shape, data)
    }
}

/// A safetensors file of our own writer: `metadata` as `__metadata__` first if given, then
/// the tensors with contiguous offsets in the given order. With `padded` the header is padded
/// with spaces to a multiple of 8 bytes, as the safetensors crate writes it; without, the
/// data starts wherever the header ends.
pub fn safetensors_bytes(entries: &[Entry], metadata: Option<&Value>, padded: bool) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if let Some(metadata) = metadata {
        header.insert("__metadata__".into(), metadata.clone());
    }
    let mut at = 0;
    for e in entries {
        header.insert(
            e.name.clone(),
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [at, at + e.data.len()]}),
        );
        at += e.data.len();
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    if padded {
        text.resize(text.len().next_multiple_of(8), b' ');
    }
    let data: Vec<u8> = entries.iter().flat_map(|e| e.data.clone()).collect();
    raw_file(&text, &data)
}

/// A file from a header length prefix, header bytes and data, whatever they say.
pub fn raw_file(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Every tensor (in file order) and the metadata of a safetensors file, as the `safetensors`
/// crate reads them (metadata sorted by key): to change and put together again with
/// [`safetensors_bytes`].
pub fn take_apart(bytes: &[u8]) -> (Vec<Entry>, Vec<(String, String)>) {
    let checkpoint = safetensors_of(bytes).expect("a valid file");
    let mut entries: Vec<(usize, Entry)> = checkpoint
        .tensors
        .into_iter()
        .map(|(name, t)| {
            let start = data_range(bytes, &name).start;
            let dtype = format!("{:?}", t.dtype);
            (start, Entry::new(&name, &dtype, &t.shape, t.data))
        })
        .collect();
    entries.sort_by_key(|(start, _)| *start);
    let metadata = checkpoint.metadata.into_iter().collect();
    (entries.into_iter().map(|(_, e)| e).collect(), metadata)
}

// ---------------------------------------------------------------------------------------
// Hashes and maths

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The largest entry of |G - gain^2 I|, G the Gram matrix of the smaller side of the
/// row-major `rows x cols` matrix `w`: W W^T if it is wide or square, W^T W if it is tall.
pub fn gram_error(w: &[f64], rows: usize, cols: usize, gain: f64) -> f64 {
    assert_eq!(w.len(), rows * cols);
    let wide = rows <= cols;
    let (n, m) = if wide { (rows, cols) } else { (cols, rows) };
    // Element k of the a-th row (wide) or column (tall) of W.
    let at = |a: usize, k: usize| {
        if wide {
            w[a * cols + k]
        } else {
            w[k * cols + a]
        }
    };
    let mut worst = 0.0f64;
    for a in 0..n {
        for b in 0..n {
            let dot: f64 = (0..m).map(|k| at(a, k) * at(b, k)).sum();
            let expected = if a == b { gain * gain } else { 0.0 };
            worst = worst.max((dot - expected).abs());
        }
    }
    worst
}

/// The centre tap of a kernel `(out, in, k...)` given as row-major values: the row-major
/// `(out, in)` matrix of the elements at index `(k - 1) / 2` of every kernel dimension.
pub fn centre_tap(values: &[f64], shape: &[usize]) -> Vec<f64> {
    let kernel = &shape[2..];
    let taps: usize = kernel.iter().product();
    let centre = kernel.iter().fold(0, |index, &k| index * k + (k - 1) / 2);
    values.iter().skip(centre).step_by(taps).copied().collect()
}

// ---------------------------------------------------------------------------------------
// Python

/// What a Python-checked test needs the interpreter to import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Needs {
    /// numpy and safetensors: the interoperability checks.
    NumpySafetensors,
    /// jsonschema and a TOML parser: the schema checks.
    JsonSchema,
    /// What examples/ imports: JAX, Flax, optax, scikit-learn, matplotlib.
    Examples,
}

impl Needs {
    fn imports(self) -> &'static str {
        match self {
            Needs::NumpySafetensors => "import numpy, safetensors",
            Needs::JsonSchema => {
                "import jsonschema\ntry:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli"
            }
            Needs::Examples => "import numpy, safetensors, jax, flax, optax, sklearn, matplotlib",
        }
    }
}

/// The Python interpreter, `$EOI_PYTHON` (default `python3`), once it is known to import what
/// `needs` names. Without it the test fails, it does not skip: `scripts/test` creates .venv
/// with tests/python/requirements.txt and sets EOI_PYTHON.
pub fn python(needs: Needs) -> Process {
    static CHECKED: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match needs {
        Needs::NumpySafetensors => 0,
        Needs::JsonSchema => 1,
        Needs::Examples => 2,
    };
    let python = CHECKED[slot].get_or_init(|| {
        let python = std::env::var("EOI_PYTHON").unwrap_or_else(|_| "python3".into());
        let imports = needs.imports();
        let help = "run the tests with `scripts/test` (it creates .venv with \
                    tests/python/requirements.txt and sets EOI_PYTHON), or set EOI_PYTHON to a \
                    Python with those packages";
        match Process::new(&python).args(["-c", imports]).output() {
            Ok(out) if out.status.success() => python,
            Ok(out) => panic!(
                "this test needs Python with `{imports}`, which failed with `{python}`:\n{}\n{help}",
                text(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run the Python interpreter `{python}`: {e}\n{help}"),
        }
    });
    Process::new(python)
}

/// Runs tests/python/SCRIPT ARGS... (numpy and safetensors needed): its output, whatever
/// its exit status.
pub fn run_script<I, S>(script: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    python(Needs::NumpySafetensors)
        .arg(repo("tests/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("tests/python/{script} does not run: {e}"))
}

/// Runs `python -c CODE ARGS...` (numpy and safetensors needed) and requires it to succeed.
pub fn run_python_code<I, S>(code: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = python(Needs::NumpySafetensors)
        .args(["-c", code])
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python -c failed:\n{}\n{}",
        text(&out.stderr),
        code
    );
    out
}

/// Requires a Python run to have succeeded; its standard output as JSON.
pub fn json_from(what: &str, out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    json(&out.stdout)
}

/// tests/python/list_tensors.py: each file as the official Python safetensors reads it,
/// keyed by its file name: `{name: {"metadata": {...}, "tensors": {...}}}`.
pub fn python_view<P: AsRef<Path>>(files: &[P]) -> Value {
    let all = json_from(
        "list_tensors.py",
        &run_script("list_tensors.py", files.iter().map(|f| f.as_ref())),
    );
    let mut keyed = serde_json::Map::new();
    for f in files {
        let f = f.as_ref();
        keyed.insert(
            f.file_name().unwrap().to_string_lossy().into_owned(),
            all[f.to_str().unwrap()].clone(),
        );
    }
    Value::Object(keyed)
}

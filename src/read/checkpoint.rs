//! A checkpoint read as one: a safetensors file, a Hugging Face `save_pretrained` directory,
//! or the shards a `model.safetensors.index.json` lists, checked to agree with its shards
//! exactly; and, for the checking commands, any artifact eoi reads (`Checkpoint::open_any`).
//! Tensors are looked up by name and read one at a time through [`Tensor`].

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::safetensors::StringPairs;
use super::{
    Artifact, MAX_MANIFEST, ReadError, TensorInfo, hex, io_error, plain_file_name, read_exact_at,
};
use crate::layer::Format;

/// The index file of a sharded checkpoint.
pub const INDEX: &str = "model.safetensors.index.json";

/// The one file of an unsharded Hugging Face `save_pretrained` directory.
pub const SINGLE: &str = "model.safetensors";

/// One tensor of a [`Checkpoint`], with the file that holds it: what the checking commands
/// look up by name and read, one tensor (or one chunk) at a time.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    artifact: &'a Artifact,
    info: &'a TensorInfo,
}

impl<'a> Tensor<'a> {
    /// The file (or npy directory, or archive) that holds the tensor.
    pub fn artifact(&self) -> &'a Artifact {
        self.artifact
    }

    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    /// See [`Artifact::read_f64`].
    pub fn read_f64(&self) -> Result<Vec<f64>, ReadError> {
        self.artifact.read_f64(self.info)
    }

    /// See [`Artifact::read_bytes`].
    pub fn read_bytes(&self) -> Result<Vec<u8>, ReadError> {
        self.artifact.read_bytes(self.info)
    }

    /// See [`Artifact::read_at`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.artifact.read_at(self.info, offset, buf)
    }
}

impl std::ops::Deref for Tensor<'_> {
    type Target = TensorInfo;

    fn deref(&self) -> &TensorInfo {
        self.info
    }
}

/// A checkpoint read as one: a safetensors file, or the shards a
/// `model.safetensors.index.json` lists ([`Checkpoint::open`]); or, for the checking
/// commands, any artifact eoi reads ([`Checkpoint::open_any`]: also an npy directory, an
/// .npz archive or one .npy file). Every file is validated as [`Artifact::open`] does, and
/// for shards the index must agree with them exactly: every listed tensor is in its shard,
/// every tensor of a shard is listed with that shard, and no name appears in two shards.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    /// The files in index order (file names relative to the index's directory), or the one
    /// file under its own path.
    files: Vec<(String, Artifact)>,
    /// The index's `metadata` object, for a sharded checkpoint.
    index_metadata: Option<Value>,
    /// SHA-256 of the header of a single file, or of the whole index file.
    sha256: String,
    /// Tensor name -> (file, tensor) indices, for lookups by name.
    by_name: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    fn new(
        path: &Path,
        files: Vec<(String, Artifact)>,
        index_metadata: Option<Value>,
        sha256: String,
    ) -> Checkpoint {
        let mut by_name = HashMap::new();
        for (f, (_, a)) in files.iter().enumerate() {
            for (t, info) in a.tensors().iter().enumerate() {
                by_name.entry(info.name.clone()).or_insert((f, t));
            }
        }
        Checkpoint {
            path: path.to_path_buf(),
            files,
            index_metadata,
            sha256,
            by_name,
        }
    }

    /// Opens any artifact as one checkpoint: what [`Checkpoint::open`] opens (a safetensors
    /// file, an index file, a directory holding [`INDEX`] or [`SINGLE`]), and otherwise a
    /// directory of .npy files, an .npz archive or one .npy file (as [`Artifact::open`]
    /// does). An index file is recognised by its name ending in `.json`. Only headers, the
    /// index and manifests are read.
    pub fn open_any(path: &Path) -> Result<Checkpoint, ReadError> {
        let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
        let is_json = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".json"));
        if meta.is_file() && is_json {
            return open_index(path);
        }
        if meta.is_dir() && (path.join(INDEX).is_file() || path.join(SINGLE).is_file()) {
            return Checkpoint::open(path);
        }
        let artifact = Artifact::open(path)?;
        let sha256 = artifact.header_sha256().unwrap_or_default();
        Ok(Checkpoint::new(
            path,
            vec![(path.display().to_string(), artifact)],
            None,
            sha256,
        ))
    }

    /// Opens a safetensors file, an index file (`*.index.json`), or a directory holding
    /// [`INDEX`] (or, unsharded, [`SINGLE`]). Only headers and the index are read.
    pub fn open(path: &Path) -> Result<Checkpoint, ReadError> {
        let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            let index = path.join(INDEX);
            if index.is_file() {
                return open_index(&index);
            }
            // An unsharded `save_pretrained` directory holds one `model.safetensors`.
            let single = path.join(SINGLE);
            if single.is_file() {
                return Checkpoint::open(&single);
            }
            return Err(ReadError::NotSafetensors {
                path: path.display().to_string(),
                found: "a directory without model.safetensors.index.json or model.safetensors",
            });
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_some_and(|n| n.ends_with(".index.json")) {
            return open_index(path);
        }
        let artifact = Artifact::open(path)?;
        if artifact.format() != Format::Safetensors {
            return Err(ReadError::NotSafetensors {
                path: path.display().to_string(),
                found: "an .npy file",
            });
        }
        let sha256 = artifact.header_sha256().unwrap_or_default();
        Ok(Checkpoint::new(
            path,
            vec![(path.display().to_string(), artifact)],
            None,
            sha256,
        ))
    }

    /// The path it was opened from (the file, or the index file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is sharded (opened from an index).
    pub fn is_sharded(&self) -> bool {
        self.index_metadata.is_some()
    }

    /// The files, each with its name (relative to the index for shards).
    pub fn files(&self) -> &[(String, Artifact)] {
        &self.files
    }

    /// The index's `metadata` object (sharded checkpoints only).
    pub fn index_metadata(&self) -> Option<&Value> {
        self.index_metadata.as_ref()
    }

    /// SHA-256 (hex) of the header of a single file, or of the index file of a sharded one.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Every tensor with the file that holds it, file by file in data order.
    pub fn tensors(&self) -> impl Iterator<Item = (&Artifact, &TensorInfo)> {
        self.files
            .iter()
            .flat_map(|(_, a)| a.tensors().iter().map(move |t| (a, t)))
    }

    /// A tensor by name, with the file that holds it.
    pub fn tensor(&self, name: &str) -> Option<(&Artifact, &TensorInfo)> {
        let &(f, t) = self.by_name.get(name)?;
        let artifact = &self.files[f].1;
        Some((artifact, &artifact.tensors()[t]))
    }

    /// A tensor by name, ready to read.
    pub fn get(&self, name: &str) -> Option<Tensor<'_>> {
        self.tensor(name)
            .map(|(artifact, info)| Tensor { artifact, info })
    }

    /// Every tensor, ready to read, file by file in data (or manifest) order.
    pub fn iter(&self) -> impl Iterator<Item = Tensor<'_>> {
        self.tensors()
            .map(|(artifact, info)| Tensor { artifact, info })
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.files.iter().map(|(_, a)| a.tensors().len()).sum()
    }

    /// Whether it holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How its files are stored (shards are safetensors files).
    pub fn format(&self) -> Format {
        self.files
            .first()
            .map_or(Format::Safetensors, |(_, a)| a.format())
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|(_, a)| a.data_bytes()).sum()
    }
}

/// The parts of an index that matter: `metadata` and `weight_map` (tensor -> shard file),
/// with duplicate tensor names rejected.
#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<Value>,
    weight_map: StringPairs,
}

/// Opens the shards an index lists, in the order they first appear in its `weight_map`,
/// and checks that the index and the shards agree exactly.
fn open_index(path: &Path) -> Result<Checkpoint, ReadError> {
    let (bytes, raw) = read_index(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let weight_map = &raw.weight_map.0;
    let (order, listed) = shard_order(path, weight_map)?;
    let mut files = Vec::with_capacity(order.len());
    for name in order {
        let artifact = open_shard(path, &dir, &name, &listed)?;
        files.push((name, artifact));
    }
    let held: HashSet<(&str, &str)> = files
        .iter()
        .flat_map(|(n, a)| {
            a.tensors()
                .iter()
                .map(move |t| (n.as_str(), t.name.as_str()))
        })
        .collect();
    for (tensor, file) in weight_map {
        if !held.contains(&(file.as_str(), tensor.as_str())) {
            return Err(index_error(
                path,
                format!(
                    "the weight_map puts tensor \"{tensor}\" in \"{file}\", which does not hold it"
                ),
            ));
        }
    }
    let metadata = raw
        .metadata
        .unwrap_or_else(|| Value::Object(Default::default()));
    let sha256 = hex(&Sha256::digest(&bytes));
    Ok(Checkpoint::new(path, files, Some(metadata), sha256))
}

fn index_error(path: &Path, message: String) -> ReadError {
    ReadError::Index {
        path: path.display().to_string(),
        message,
    }
}

/// The index file's bytes (at most [`MAX_MANIFEST`]) and what they say.
fn read_index(path: &Path) -> Result<(Vec<u8>, RawIndex), ReadError> {
    let bad = |message: String| index_error(path, message);
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    if size > MAX_MANIFEST {
        return Err(bad(format!(
            "{size} bytes, over the limit of {MAX_MANIFEST}"
        )));
    }
    let mut bytes = vec![0u8; size as usize];
    read_exact_at(&file, &mut bytes, 0).map_err(|e| io_error(path, e))?;
    let raw: RawIndex = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "{e} (expected {{\"metadata\": {{...}}, \"weight_map\": {{tensor: file}}}})"
        ))
    })?;
    if raw.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(bad("\"metadata\" is not an object".into()));
    }
    Ok((bytes, raw))
}

/// The shard files of a `weight_map` in the order they first appear (each a plain file name
/// beside the index), and the shard each tensor is mapped to.
fn shard_order<'a>(
    path: &Path,
    weight_map: &'a [(String, String)],
) -> Result<(Vec<String>, HashMap<&'a str, &'a str>), ReadError> {
    let mut order: Vec<String> = Vec::new();
    let mut listed: HashMap<&str, &str> = HashMap::new();
    for (tensor, file) in weight_map {
        if !plain_file_name(file) {
            return Err(index_error(
                path,
                format!(
                    "tensor \"{tensor}\" is mapped to \"{file}\", not a plain file name beside the index"
                ),
            ));
        }
        if !order.contains(file) {
            order.push(file.clone());
        }
        listed.insert(tensor, file);
    }
    if order.is_empty() {
        return Err(index_error(path, "the weight_map lists no tensor".into()));
    }
    Ok((order, listed))
}

/// Shard `name` of the index at `path`, in `dir`: a safetensors file each of whose tensors
/// the index maps to it (`listed`: tensor -> shard).
fn open_shard(
    path: &Path,
    dir: &Path,
    name: &str,
    listed: &HashMap<&str, &str>,
) -> Result<Artifact, ReadError> {
    let artifact = Artifact::open(&dir.join(name))?;
    if artifact.format() != Format::Safetensors {
        return Err(ReadError::NotSafetensors {
            path: dir.join(name).display().to_string(),
            found: "an .npy file",
        });
    }
    for t in artifact.tensors() {
        match listed.get(t.name.as_str()) {
            Some(&f) if f == name => {}
            Some(&f) => {
                return Err(index_error(
                    path,
                    format!(
                        "tensor \"{}\" is in shard \"{name}\" but the index maps it to \"{f}\"",
                        t.name
                    ),
                ));
            }
            None => {
                return Err(index_error(
                    path,
                    format!(
                        "tensor \"{}\" of shard \"{name}\" is not in the weight_map",
                        t.name
                    ),
                ));
            }
        }
    }
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::npy::tests::npy_bytes;

    #[test]
    fn a_sharded_index_must_agree_with_its_shards() {
        let dir = tempfile::tempdir().unwrap();
        let shard = |name: &str, tensors: &[&str]| {
            let entries: Vec<String> = tensors
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    format!(
                        r#""{t}":{{"dtype":"U8","shape":[1],"data_offsets":[{k},{}]}}"#,
                        k + 1
                    )
                })
                .collect();
            let header = format!("{{{}}}", entries.join(","));
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            bytes.extend(vec![7u8; tensors.len()]);
            fs::write(dir.path().join(name), bytes).unwrap();
        };
        shard("a.safetensors", &["x", "y"]);
        shard("b.safetensors", &["z"]);
        let index = dir.path().join(INDEX);
        let open = |map: &str| {
            fs::write(&index, format!(r#"{{"metadata":{{}},"weight_map":{map}}}"#)).unwrap();
            Checkpoint::open(dir.path())
        };
        let good =
            open(r#"{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}"#).unwrap();
        assert!(good.is_sharded());
        assert_eq!(good.tensors().count(), 3);
        assert_eq!(good.tensor("z").unwrap().1.name, "z");
        for (map, expected) in [
            (
                r#"{"x":"a.safetensors","z":"b.safetensors"}"#,
                "\"y\" of shard \"a.safetensors\" is not in the weight_map",
            ),
            (
                r#"{"x":"a.safetensors","y":"b.safetensors","z":"b.safetensors"}"#,
                "is in shard \"a.safetensors\" but the index maps it to \"b.safetensors\"",
            ),
            (r#"{"x":"../a.safetensors"}"#, "not a plain file name"),
            (
                r#"{"x":"a.safetensors","x":"a.safetensors"}"#,
                "appears twice",
            ),
            (r#"{}"#, "lists no tensor"),
        ] {
            let err = open(map).unwrap_err().to_string();
            assert!(err.contains(expected), "{map}: {err}");
        }
    }

    #[test]
    fn any_artifact_opens_as_one_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend([3, 4]);
        fs::write(dir.path().join("a.safetensors"), &bytes).unwrap();
        // An index by any name ending in .json.
        let index = dir.path().join("weights.json");
        fs::write(&index, r#"{"weight_map":{"w":"a.safetensors"}}"#).unwrap();
        let sharded = Checkpoint::open_any(&index).unwrap();
        assert!(sharded.is_sharded());
        let w = sharded.get("w").unwrap();
        assert_eq!(w.read_f64().unwrap(), [3.0, 4.0]);
        assert_eq!((sharded.len(), sharded.data_bytes()), (1, 2));

        // An npy directory: no index, no model.safetensors.
        let npy = dir.path().join("npy");
        fs::create_dir(&npy).unwrap();
        let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }";
        fs::write(npy.join("m.npy"), npy_bytes(1, dict, &[1, 0])).unwrap();
        let checkpoint = Checkpoint::open_any(&npy).unwrap();
        assert_eq!(checkpoint.format(), Format::Npy);
        assert!(!checkpoint.is_sharded());
        assert_eq!(
            checkpoint
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>(),
            ["m"]
        );
        // Checkpoint::open itself still wants safetensors.
        assert!(matches!(
            Checkpoint::open(&npy.join("m.npy")),
            Err(ReadError::NotSafetensors { .. })
        ));

        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let err = Checkpoint::open_any(&empty).unwrap_err().to_string();
        assert!(
            err.contains("is a directory without model.safetensors.index.json, model.safetensors, manifest.json or any .npy file"),
            "{err}"
        );
    }
}

//! `generate --base`: a complete checkpoint. Every tensor of the base checkpoint that the
//! plan does not name is copied unchanged (bytes, dtype, name) into the output file that
//! mirrors its own; every tensor the plan names is replaced by its initialization and its
//! mask (and its bias, for a layer with `bias_std`), in the same file. Everything is checked
//! against the base before anything is written, and each disagreement names the tensor.
//! A base directory (a `save_pretrained` directory, sharded or not) gives an output
//! directory with the base's other files (config.json, tokenizer, ...) copied unchanged.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;
use crate::plan::Plan;
use crate::read::{self, Checkpoint, TensorInfo};
use crate::schemes::LayerPlan;
use crate::write::shards::CopiedFile;
use crate::write::{Copied, CopyFrom};

/// The checkpoint to complete, and the directory the output mirrors when the base is one.
#[derive(Debug)]
pub struct Base {
    pub checkpoint: Checkpoint,
    /// The base's directory: given as a directory, or as a sharded checkpoint's index file
    /// (its directory). `None` for a single safetensors file, which gives a single file.
    pub directory: Option<PathBuf>,
}

impl Base {
    /// Opens `path` as [`Checkpoint::open`] does and notes whether it is a directory.
    pub fn open(path: &Path) -> Result<Base, Error> {
        let checkpoint = Checkpoint::open(path)?;
        let directory = if path.is_dir() {
            Some(path.to_path_buf())
        } else if checkpoint.is_sharded() {
            Some(match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
        } else {
            None
        };
        Ok(Base {
            checkpoint,
            directory,
        })
    }

    /// The name the output gives the base's file `name` (as [`Checkpoint::files`] names
    /// it): its file name inside an output directory, the output itself for a single file.
    pub fn output_name(&self, name: &str) -> String {
        match (&self.directory, self.checkpoint.is_sharded()) {
            (Some(_), false) => Path::new(name).file_name().map_or_else(
                || read::SINGLE.to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            _ => name.to_string(),
        }
    }
}

/// Why an entry of the base directory is not copied into the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftOut {
    /// A file of weights in another format (pytorch_model.bin, *.pt, *.msgpack, *.h5, a
    /// safetensors file the checkpoint does not list, an index of such files): it holds
    /// the base's old weights, which the output replaces.
    OldWeights,
    /// A directory (or a link to one): not copied.
    Directory,
    /// Neither a file nor a directory (a socket, a broken link).
    NotAFile,
}

impl LeftOut {
    pub fn reason(self) -> &'static str {
        match self {
            LeftOut::OldWeights => {
                "it holds weights (the base's old ones, which the output replaces)"
            }
            LeftOut::Directory => "a directory (only the files at the top level are copied)",
            LeftOut::NotAFile => "not a regular file",
        }
    }
}

/// What a base directory gives the output besides its safetensors files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryFiles {
    /// The base directory.
    pub directory: PathBuf,
    /// Copied unchanged, in name order.
    pub copied: Vec<CopiedFile>,
    /// Not copied, with the reason, in name order.
    pub left_out: Vec<(OsString, LeftOut)>,
}

/// File name endings of weights in formats other than safetensors, and of shard indexes.
const WEIGHT_ENDINGS: &[&str] = &[
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".msgpack",
    ".h5",
    ".safetensors",
    ".gguf",
    ".onnx",
    ".npz",
    ".npy",
    ".index.json",
];

/// Sorts the entries of a base directory: the checkpoint's own files (its safetensors files
/// and index, which the output writes anew) are skipped; other weight files, directories and
/// special files are left out; every other file at the top level (following symbolic links,
/// as in a Hugging Face cache snapshot) is copied.
pub fn directory_files(base: &Base) -> Result<DirectoryFiles, Error> {
    let Some(dir) = &base.directory else {
        return Ok(DirectoryFiles::default());
    };
    let cannot = |e| {
        Error::io(
            format!("cannot list the base directory '{}'", dir.display()),
            e,
        )
    };
    let own: HashSet<OsString> = base
        .checkpoint
        .files()
        .iter()
        .filter_map(|(name, _)| Path::new(name).file_name().map(OsString::from))
        .chain(
            base.checkpoint
                .is_sharded()
                .then(|| base.checkpoint.path().file_name().map(OsString::from))
                .flatten(),
        )
        .collect();
    let mut entries: Vec<(OsString, PathBuf)> = fs::read_dir(dir)
        .map_err(cannot)?
        .map(|entry| entry.map(|e| (e.file_name(), e.path())))
        .collect::<Result<_, _>>()
        .map_err(cannot)?;
    entries.sort();
    let mut files = DirectoryFiles {
        directory: dir.clone(),
        ..DirectoryFiles::default()
    };
    for (name, path) in entries {
        // The checkpoint's own files are written anew; `.eoi-*` are the temporary files of
        // an eoi run that was killed, never a part of the checkpoint.
        if own.contains(&name) || name.to_string_lossy().starts_with(".eoi-") {
            continue;
        }
        let lower = name.to_string_lossy().to_lowercase();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => files.left_out.push((name, LeftOut::Directory)),
            Ok(meta) if !meta.is_file() => files.left_out.push((name, LeftOut::NotAFile)),
            Err(_) => files.left_out.push((name, LeftOut::NotAFile)),
            Ok(_) if WEIGHT_ENDINGS.iter().any(|e| lower.ends_with(e)) => {
                files.left_out.push((name, LeftOut::OldWeights))
            }
            Ok(_) => files.copied.push(CopiedFile { name, source: path }),
        }
    }
    Ok(files)
}

/// One file of the output: the base file it mirrors, the plan's layers placed in it (their
/// base tensors are replaced), the tensors copied from it, and the keys of its
/// `__metadata__` that are kept.
#[derive(Debug)]
pub struct BaseFile {
    /// The base file's name: its path for a single file, its name beside the index for a
    /// shard (the output shard gets the same name).
    pub name: String,
    pub layers: Vec<usize>,
    pub copies: Vec<Copied>,
    pub kept_metadata: Vec<(String, String)>,
}

/// The provenance keys that record the base: its file name and the SHA-256 of its header
/// (of its index file, when sharded).
pub fn provenance(base: &Checkpoint) -> Vec<(String, String)> {
    let name = base
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    vec![
        ("eoi.base".into(), name),
        ("eoi.base_sha256".into(), base.sha256().to_string()),
    ]
}

/// Places the plan's layers in the base's files and lists what is copied, or says which
/// tensor disagrees.
pub fn assemble(plan: &Plan, base: &Checkpoint) -> Result<Vec<BaseFile>, Error> {
    let mut assembly = Assembly::new(plan, base);
    for (k, layer) in plan.layers.iter().enumerate() {
        assembly.place(k, layer)?;
    }
    assembly.finish()
}

/// The base's files as the output will mirror them, while the plan's layers are placed.
struct Assembly<'a> {
    plan: &'a Plan,
    base: &'a Checkpoint,
    /// The base's path, for messages.
    shown: String,
    /// Which file holds each tensor of the base.
    file_of: HashMap<&'a str, usize>,
    files: Vec<BaseFile>,
    /// Base tensors the output replaces: each layer's own, an existing tensor named like its
    /// mask (a base that is itself an eoi output), its bias, its tied copies.
    replaced: HashSet<&'a str>,
    /// Tied tensors the base holds, with the file they stay in: written with the weight's
    /// bytes.
    tied_copies: Vec<(usize, Copied)>,
}

impl<'a> Assembly<'a> {
    fn new(plan: &'a Plan, base: &'a Checkpoint) -> Assembly<'a> {
        let mut file_of = HashMap::new();
        for (f, (_, artifact)) in base.files().iter().enumerate() {
            for t in artifact.tensors() {
                file_of.insert(t.name.as_str(), f);
            }
        }
        let files = base
            .files()
            .iter()
            .map(|(name, artifact)| BaseFile {
                name: name.clone(),
                layers: Vec::new(),
                copies: Vec::new(),
                kept_metadata: artifact
                    .metadata()
                    .unwrap_or_default()
                    .iter()
                    .filter(|(k, _)| k != "format" && !k.starts_with("eoi."))
                    .cloned()
                    .collect(),
            })
            .collect();
        Assembly {
            plan,
            base,
            shown: base.path().display().to_string(),
            file_of,
            files,
            replaced: HashSet::new(),
            tied_copies: Vec::new(),
        }
    }

    /// Places layer `k` in the file that holds its base tensor, and claims the base tensors
    /// its mask, bias and tied names replace.
    fn place(&mut self, k: usize, layer: &'a LayerPlan) -> Result<(), Error> {
        let info = self.layer_tensor(layer)?;
        self.replaced.insert(info.name.as_str());
        let f = self.file_of[info.name.as_str()];
        self.files[f].layers.push(k);
        self.claim_names(layer, info, f)?;
        self.claim_bias(layer, f)?;
        self.claim_tied(layer, info, f)
    }

    /// The base tensor the layer replaces: it must exist with the shape and dtype the spec
    /// writes.
    fn layer_tensor(&self, layer: &LayerPlan) -> Result<&'a TensorInfo, Error> {
        let (plan, shown) = (self.plan, &self.shown);
        let Some((_, info)) = self.base.tensor(&layer.name) else {
            return Err(Error::Usage(format!(
                "layer \"{}\" of the spec is not a tensor of the base '{shown}'; --base replaces tensors the base has\n  help: check the name (eoi spec --from '{shown}' lists the base's tensors), or drop the layer from the spec",
                layer.name
            )));
        };
        let shape = plan.output.layout.shape(layer.shape.dims());
        if info.shape != shape {
            return Err(Error::Usage(format!(
                "tensor \"{}\": the spec makes shape {shape:?} ({} layout) but the base '{shown}' has {:?}",
                layer.name,
                plan.output.layout.name(),
                info.shape
            )));
        }
        let dtype = plan.output.dtype.safetensors_name();
        if info.dtype.safetensors_name() != dtype {
            return Err(Error::Usage(format!(
                "tensor \"{}\": the base '{shown}' stores it as {} but the spec writes {}\n  help: pass --dtype {} (or set dtype in [output]) to keep the base's dtype",
                layer.name,
                info.dtype.safetensors_name(),
                dtype,
                info.dtype.name()
            )));
        }
        Ok(info)
    }

    /// The output names of the layer's weight and mask (when they are not the layer's own
    /// name): a base tensor of that name may only be an old mask of the same shape, in the
    /// layer's file, which the new mask replaces.
    fn claim_names(&mut self, layer: &LayerPlan, info: &TensorInfo, f: usize) -> Result<(), Error> {
        let (plan, shown) = (self.plan, &self.shown);
        let shape = &info.shape;
        let weight = plan.output.weight_name(&layer.name);
        let mask = plan.output.mask_name(&layer.name);
        for (output_name, is_mask) in [(weight, false), (mask, true)] {
            if output_name == layer.name {
                continue;
            }
            if let Some((_, existing)) = self.base.tensor(&output_name) {
                if !is_mask
                    || existing.shape != *shape
                    || plan.layers.iter().any(|l| l.name == output_name)
                {
                    return Err(Error::Usage(format!(
                        "tensor \"{output_name}\" of the base '{shown}' has the name the output gives to the {} of layer \"{}\"; rename one of them",
                        if is_mask { "mask" } else { "weight" },
                        layer.name
                    )));
                }
                self.replaced.insert(existing.name.as_str());
                if self.file_of[existing.name.as_str()] != f {
                    return Err(Error::Usage(format!(
                        "tensor \"{output_name}\" of the base '{shown}' is in another shard than layer \"{}\", whose mask replaces it",
                        layer.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// A layer with a bias_std replaces the base's `<module>.bias`, which must then be the
    /// bias the spec makes: shape (out,), the weight's dtype, in the layer's shard. Without
    /// bias_std the base's bias is copied unchanged like any other tensor.
    fn claim_bias(&mut self, layer: &LayerPlan, f: usize) -> Result<(), Error> {
        let shown = &self.shown;
        let dtype = self.plan.output.dtype.safetensors_name();
        if let Some(bias) = layer.bias_name()
            && let Some((_, existing)) = self.base.tensor(&bias)
        {
            let out = layer.shape.out();
            if existing.shape != [out] || existing.dtype.safetensors_name() != dtype {
                return Err(Error::Usage(format!(
                    "tensor \"{bias}\": the spec's bias_std makes it a bias of shape [{out}] in {dtype} for layer \"{}\", but the base '{shown}' has {:?} in {}\n  help: remove bias_std for this layer to keep the base's tensor",
                    layer.name,
                    existing.shape,
                    existing.dtype.safetensors_name()
                )));
            }
            if self.file_of[existing.name.as_str()] != f {
                return Err(Error::Usage(format!(
                    "tensor \"{bias}\" of the base '{shown}' is in another shard than layer \"{}\", whose generated bias replaces it",
                    layer.name
                )));
            }
            self.replaced.insert(existing.name.as_str());
        }
        Ok(())
    }

    /// Tied names the base holds as tensors of their own get the layer's weight bytes (no
    /// mask); those it does not hold (a checkpoint saved one tensor per storage) are not
    /// written, as the base does not have them.
    fn claim_tied(&mut self, layer: &LayerPlan, info: &TensorInfo, f: usize) -> Result<(), Error> {
        let shown = &self.shown;
        let weight_name = self.plan.output.weight_name(&layer.name);
        for tied in &layer.tied {
            let Some((_, existing)) = self.base.tensor(tied) else {
                continue;
            };
            if existing.shape != info.shape || existing.dtype != info.dtype {
                return Err(Error::Usage(format!(
                    "tensor \"{tied}\" is tied to layer \"{}\" in the spec, but the base '{shown}' has it as {:?} in {}, the layer as {:?} in {}\n  help: remove \"{tied}\" from the layer's `tied` to copy the base's tensor unchanged",
                    layer.name,
                    existing.shape,
                    existing.dtype.safetensors_name(),
                    info.shape,
                    info.dtype.safetensors_name()
                )));
            }
            if self.file_of[existing.name.as_str()] != f {
                return Err(Error::Usage(format!(
                    "tensor \"{tied}\" of the base '{shown}' is in another shard than layer \"{}\", to which it is tied",
                    layer.name
                )));
            }
            if !self.replaced.insert(existing.name.as_str()) {
                return Err(Error::Usage(format!(
                    "tensor \"{tied}\" of the base '{shown}' is tied to layer \"{}\" but is also replaced by another of the spec's tensors",
                    layer.name
                )));
            }
            self.tied_copies.push((
                f,
                Copied {
                    name: existing.name.clone(),
                    dtype: existing.dtype,
                    shape: existing.shape.clone(),
                    nbytes: existing.nbytes,
                    from: CopyFrom::Tensor(weight_name.clone()),
                },
            ));
        }
        Ok(())
    }

    /// The files with what each copies from the base: every tensor not replaced, and the
    /// tied copies.
    fn finish(mut self) -> Result<Vec<BaseFile>, Error> {
        for (f, (_, artifact)) in self.base.files().iter().enumerate() {
            let source = match artifact.file() {
                Some(file) => Arc::new(file.try_clone().map_err(|e| {
                    Error::io(format!("cannot read '{}'", artifact.path().display()), e)
                })?),
                None => continue,
            };
            for t in artifact.tensors() {
                if self.replaced.contains(t.name.as_str()) {
                    continue;
                }
                let Some(start) = artifact.data_start(t) else {
                    continue;
                };
                self.files[f].copies.push(Copied {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    nbytes: t.nbytes,
                    from: CopyFrom::File {
                        source: Arc::clone(&source),
                        start,
                    },
                });
            }
        }
        for (f, copy) in self.tied_copies {
            self.files[f].copies.push(copy);
        }
        Ok(self.files)
    }
}

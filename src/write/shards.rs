//! Sharded safetensors output, the Hugging Face convention: a directory of
//! `model-00001-of-0000N.safetensors` files and `model.safetensors.index.json`
//! (`{"metadata": {"total_size": N}, "weight_map": {tensor: file}}`). A layer's weight and
//! mask always share a shard. Shards are assigned from the plan alone, so `--shard K/N` on
//! N machines writes exactly the files of one full run, with no coordination. The same
//! staged directory holds `generate --base DIR`'s output: the base's safetensors files
//! (one `model.safetensors`, or its shards and index) and its other files, copied.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::safetensors::SafetensorsFile;
use super::{Destination, Output, TensorInfo, TensorSink, TwoStep, display, staging};
use crate::error::Error;
use crate::interrupt::{self, Staged};

/// The index file's name.
pub const INDEX: &str = "model.safetensors.index.json";

/// The file name of shard `k` (1-based) of `n`.
pub fn shard_name(k: usize, n: usize) -> String {
    format!("model-{k:05}-of-{n:05}.safetensors")
}

/// Assigns layers (by their bytes, weight and mask together) to shards: in order, a layer
/// joins the current shard unless that would take it past `max_bytes`; then a new shard
/// starts. A layer larger than `max_bytes` gets a shard of its own.
pub fn assign(layer_bytes: &[u64], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut size = 0;
    for (k, &bytes) in layer_bytes.iter().enumerate() {
        match shards.last_mut() {
            Some(current) if size + bytes <= max_bytes => current.push(k),
            _ => {
                shards.push(vec![k]);
                size = 0;
            }
        }
        size += bytes;
    }
    shards
}

/// The index document: every tensor (name and bytes) of every shard, in order, and the
/// total tensor bytes.
pub fn index(files: &[(String, Vec<(String, u64)>)]) -> Vec<u8> {
    let mut weight_map = Map::new();
    let mut total = 0;
    for (file, tensors) in files {
        for (name, nbytes) in tensors {
            weight_map.insert(name.clone(), json!(file));
            total += nbytes;
        }
    }
    let key = crate::records::VERSION_KEY;
    let document = json!({
        "metadata": {"total_size": total, key: crate::VERSION},
        "weight_map": Value::Object(weight_map),
    });
    let mut bytes = serde_json::to_vec_pretty(&document).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

fn cannot_write(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("cannot write '{}'", display(path)), e)
}

/// One shard to write.
pub struct ShardFile {
    /// Its file name inside the output directory.
    pub name: String,
    pub tensors: Vec<TensorInfo>,
    /// The index of each tensor in the whole output (as `Output::tensor` is called).
    pub global: Vec<usize>,
    /// Tensors copied unchanged from a base checkpoint's shard (`generate --base`).
    pub copies: Vec<super::Copied>,
    pub metadata: Vec<(String, String)>,
}

/// A file copied unchanged into the output directory (`generate --base DIR`: the base's
/// config.json, tokenizer files, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopiedFile {
    /// Its name in the output directory (the base's name for it).
    pub name: std::ffi::OsString,
    pub source: PathBuf,
}

/// A sharded output being written: every shard of a full run, staged in a hidden directory
/// and moved into place whole; or the shards of one part, each staged beside its final name
/// in the (possibly shared) output directory.
pub struct ShardedOutput {
    files: Vec<(String, SafetensorsFile)>,
    /// Files copied into the staged directory when it is finished (full runs only).
    copied: Vec<CopiedFile>,
    /// Whole-output tensor index -> (file, index within the file).
    places: HashMap<usize, (usize, usize)>,
    destination: Destination,
    /// The hidden directory of a full run; `None` for a part.
    staged: Option<PathBuf>,
    /// Removes that directory if the run is interrupted.
    _registered: Option<Staged>,
    index: Option<Vec<u8>>,
}

impl ShardedOutput {
    /// Stages `shards`. With `part`, the output directory is shared with other parts: it is
    /// created if needed and each file replaces its own name only. `index` is written
    /// with the shards when given.
    pub fn create(
        destination: &Destination,
        shards: Vec<ShardFile>,
        index: Option<Vec<u8>>,
        part: bool,
    ) -> Result<ShardedOutput, Error> {
        let (directory, staged): (PathBuf, Option<(PathBuf, Staged)>) = if part {
            fs::create_dir_all(&destination.path).map_err(cannot_write(&destination.path))?;
            for name in shards
                .iter()
                .map(|s| s.name.as_str())
                .chain(index.as_ref().map(|_| INDEX))
            {
                let path = destination.path.join(name);
                if path.exists() && !destination.force {
                    return Err(Error::Usage(format!(
                        "'{}' already exists; pass --force to replace it",
                        path.display()
                    )));
                }
            }
            (destination.path.clone(), None)
        } else {
            let (staged, registered) = interrupt::create_staged(
                || Ok(staging(0o777).tempdir_in(destination.parent())?.keep()),
                |d| d.as_path(),
            )
            .map_err(cannot_write(&destination.path))?;
            (staged.clone(), Some((staged, registered)))
        };
        let (staged, registered) = staged.unzip();
        // Built before its files, so that a failure to stage one drops the output and with
        // it the staged directory and the files already made.
        let mut output = ShardedOutput {
            files: Vec::with_capacity(shards.len()),
            places: HashMap::new(),
            destination: destination.clone(),
            staged,
            _registered: registered,
            index,
            copied: Vec::new(),
        };
        for shard in shards {
            for (local, &global) in shard.global.iter().enumerate() {
                output.places.insert(global, (output.files.len(), local));
            }
            let file = SafetensorsFile::create(
                &directory,
                &destination.path.join(&shard.name),
                shard.tensors,
                shard.copies,
                &shard.metadata,
            )?;
            output.files.push((shard.name, file));
        }
        Ok(output)
    }

    /// Also copies `files` into the directory, unchanged, when it is finished. Only a full
    /// run's directory, staged whole, takes them.
    pub fn with_files(mut self, files: Vec<CopiedFile>) -> Result<ShardedOutput, Error> {
        if self.staged.is_none() && !files.is_empty() {
            return Err(Error::Internal(
                "files are copied only into a staged directory".into(),
            ));
        }
        self.copied = files;
        Ok(self)
    }

    /// Copies the copied files into `directory`.
    fn copy_files(&self, directory: &Path) -> Result<(), Error> {
        for file in &self.copied {
            let to = directory.join(&file.name);
            fs::copy(&file.source, &to).map_err(|e| {
                Error::io(
                    format!(
                        "cannot copy '{}' into the output '{}'",
                        display(&file.source),
                        display(&self.destination.path)
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

impl Output for ShardedOutput {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        let &(file, local) = self.places.get(&index).ok_or_else(|| {
            Error::Internal(format!("tensor {index} belongs to no shard being written"))
        })?;
        self.files[file].1.sink(local)
    }

    fn commit(mut self: Box<Self>) -> Result<(), Error> {
        self.finish()?;
        interrupt::uninterrupted(|| self.place())
    }

    fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, f)| f.bytes()).sum::<u64>()
            + self.index.as_ref().map_or(0, |i| i.len() as u64)
    }
}

impl TwoStep for ShardedOutput {
    /// A full run's files, index and copied files are written in its staged directory; a
    /// part's files and index go straight to their names in the shared directory.
    fn finish(&mut self) -> Result<(), Error> {
        let directory = self
            .staged
            .clone()
            .unwrap_or_else(|| self.destination.path.clone());
        let replace = self.staged.is_none() && self.destination.force;
        for (name, file) in &mut self.files {
            file.copy_in()?;
            file.persist(&directory.join(&*name), replace)?;
        }
        if let Some(index) = &self.index {
            let path = directory.join(INDEX);
            let write = || -> std::io::Result<()> {
                let (staged, _registered) = interrupt::create_staged(
                    || staging(0o666).tempfile_in(&directory),
                    |f| f.path(),
                )?;
                fs::write(staged.path(), index)?;
                if replace {
                    staged.persist(&path)?;
                } else {
                    staged.persist_noclobber(&path)?;
                }
                Ok(())
            };
            write().map_err(|e| Error::io(format!("cannot write '{}'", display(&path)), e))?;
        }
        self.copy_files(&directory)
    }

    fn place(&mut self) -> Result<(), Error> {
        match &self.staged {
            Some(staged) => self.destination.place_directory(staged),
            None => Ok(()),
        }
    }
}

impl Drop for ShardedOutput {
    fn drop(&mut self) {
        // After a successful commit the staged directory has moved and this finds nothing.
        if let Some(staged) = &self.staged {
            let _ = fs::remove_dir_all(staged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_fill_shards_in_order_and_big_ones_stand_alone() {
        assert_eq!(assign(&[3, 3, 3, 3], 6), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(assign(&[3, 10, 3], 6), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(assign(&[1, 1, 1], 100), vec![vec![0, 1, 2]]);
        assert_eq!(shard_name(2, 13), "model-00002-of-00013.safetensors");
    }
}

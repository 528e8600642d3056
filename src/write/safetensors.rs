//! The safetensors writer: an 8-byte little-endian header length, a JSON header with
//! `__metadata__` first and the tensors in data order, padded with spaces to a multiple of 8,
//! then the data. Tensors are ordered by element size, largest first (weights before masks),
//! keeping the spec's order within a size, so every tensor starts at a multiple of its
//! element size. The header is built from the plan before any data exists, so its bytes are
//! deterministic and layers can be written at their offsets as they are generated.

use std::path::Path;

use serde_json::{Map, Value, json};
use tempfile::NamedTempFile;

use super::{
    Copied, CopyFrom, Destination, Output, SinkFile, TensorInfo, TensorSink, TwoStep, display,
    staging, write_all_at,
};
use crate::error::Error;
use crate::interrupt::{self, Staged};
use crate::read::{MAX_HEADER, read_exact_at};
use crate::records::Provenance;

/// One safetensors file being written: a hidden temporary file in the destination's
/// directory, sized and headed before any tensor data arrives.
pub struct SafetensorsFile {
    /// `None` once it has been moved into place.
    file: Option<NamedTempFile>,
    /// Removes the file if the run is interrupted.
    _staged: Staged,
    tensors: Vec<TensorInfo>,
    /// Absolute file offset of each tensor's data, in the order of `tensors`.
    offsets: Vec<u64>,
    /// Tensors copied from another file, each with its absolute offset here.
    copies: Vec<(Copied, u64)>,
    total: u64,
}

/// Bytes copied at a time from a base checkpoint.
const COPY_BUFFER: usize = 1 << 20;

/// One tensor of the header: what `layout` needs of a generated or a copied tensor.
struct Entry<'a> {
    name: &'a str,
    dtype: &'static str,
    size: usize,
    shape: &'a [usize],
    nbytes: u64,
}

impl SafetensorsFile {
    /// Stages a file in `directory` holding `tensors` and then the `copies`, with
    /// `metadata` in its header. The copies' bytes are copied in by [`Self::copy_in`].
    /// Refuses, before anything is written, a header that readers would refuse
    /// ([`MAX_HEADER`]); `shown` is the destination the messages name.
    pub fn create(
        directory: &Path,
        shown: &Path,
        tensors: Vec<TensorInfo>,
        copies: Vec<Copied>,
        metadata: &[(String, String)],
    ) -> Result<SafetensorsFile, Error> {
        let entries: Vec<Entry<'_>> = tensors
            .iter()
            .map(|t| Entry {
                name: &t.name,
                dtype: t.dtype.safetensors_name(),
                size: t.dtype.size(),
                shape: &t.shape,
                nbytes: t.nbytes(),
            })
            .chain(copies.iter().map(|c| Entry {
                name: &c.name,
                dtype: c.dtype.safetensors_name(),
                size: c.dtype.size(),
                shape: &c.shape,
                nbytes: c.nbytes,
            }))
            .collect();
        let (header, relative) = layout_entries(&entries, metadata);
        check_header(header.len(), entries.len(), shown)?;
        let data_start = 8 + header.len() as u64;
        let total = data_start + entries.iter().map(|e| e.nbytes).sum::<u64>();
        let cannot = |e| Error::io(format!("cannot write '{}'", display(shown)), e);
        let (file, staged) =
            interrupt::create_staged(|| staging(0o666).tempfile_in(directory), |f| f.path())
                .map_err(cannot)?;
        file.as_file().set_len(total).map_err(cannot)?;
        let mut head = Vec::with_capacity(header.len() + 8);
        head.extend_from_slice(&(header.len() as u64).to_le_bytes());
        head.extend_from_slice(&header);
        write_all_at(file.as_file(), &head, 0).map_err(cannot)?;
        let mut offsets: Vec<u64> = relative.iter().map(|r| r + data_start).collect();
        let copy_offsets = offsets.split_off(tensors.len());
        Ok(SafetensorsFile {
            file: Some(file),
            _staged: staged,
            offsets,
            tensors,
            copies: copies.into_iter().zip(copy_offsets).collect(),
            total,
        })
    }

    /// The staged file, while it is staged.
    fn staged(&self) -> Result<&std::fs::File, Error> {
        self.file
            .as_ref()
            .map(NamedTempFile::as_file)
            .ok_or_else(|| Error::Internal("a file already moved into place was written".into()))
    }

    /// Copies every copied tensor's bytes from its source, a bounded buffer at a time; a
    /// copy of one of this file's own tensors (a tied parameter) after that tensor is
    /// written, so this runs when every tensor is.
    pub fn copy_in(&self) -> Result<(), Error> {
        let file = self.staged()?;
        let mut buffer = vec![0u8; COPY_BUFFER];
        for (copy, at) in &self.copies {
            let (source, start) = match &copy.from {
                CopyFrom::File { source, start } => (source.as_ref(), *start),
                CopyFrom::Tensor(name) => {
                    let Some(k) = self.tensors.iter().position(|t| &t.name == name) else {
                        return Err(Error::Internal(format!(
                            "tensor \"{}\" is tied to \"{name}\", which this file does not hold",
                            copy.name
                        )));
                    };
                    if self.tensors[k].nbytes() != copy.nbytes {
                        return Err(Error::Internal(format!(
                            "tensor \"{}\" is tied to \"{name}\" of another size",
                            copy.name
                        )));
                    }
                    (file, self.offsets[k])
                }
            };
            let mut done = 0u64;
            while done < copy.nbytes {
                let len = (copy.nbytes - done).min(COPY_BUFFER as u64) as usize;
                let chunk = &mut buffer[..len];
                read_exact_at(source, chunk, start + done)
                    .and_then(|()| write_all_at(file, chunk, at + done))
                    .map_err(|e| {
                        Error::io(
                            format!("cannot copy tensor \"{}\" from the base", copy.name),
                            e,
                        )
                    })?;
                done += len as u64;
            }
        }
        Ok(())
    }

    /// Where tensor `index` (in the order given to `create`) goes.
    pub fn sink(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        let info = self.tensors.get(index).ok_or_else(|| {
            Error::Internal(format!("tensor {index} is not in the file being written"))
        })?;
        Ok(TensorSink::new(
            SinkFile::Shared(self.staged()?),
            self.offsets[index],
            info,
        ))
    }

    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Renames the finished file to `path`; without `replace`, never over an existing file.
    /// Only renames: the registration for cleanup lasts until `self` is dropped, so this can
    /// run with interruptions held off.
    pub fn persist(&mut self, path: &Path, replace: bool) -> Result<(), Error> {
        let Some(file) = self.file.take() else {
            return Err(Error::Internal(format!(
                "'{}' was moved into place twice",
                display(path)
            )));
        };
        let result = if replace {
            file.persist(path).map(|_| ())
        } else {
            file.persist_noclobber(path).map(|_| ())
        };
        result.map_err(|e| {
            let message = format!("cannot move the output into place at '{}'", display(path));
            // Kept, so that it is removed when `self` is dropped.
            self.file = Some(e.file);
            Error::io(message, e.error)
        })
    }
}

/// A single-file safetensors output.
pub struct SafetensorsOutput {
    file: SafetensorsFile,
    destination: Destination,
}

/// Refuses a header of `length` bytes over [`MAX_HEADER`], the limit of the safetensors
/// readers (the official one and ours): a file no one could read is not worth writing.
pub fn check_header(length: usize, tensors: usize, shown: &Path) -> Result<(), Error> {
    if length as u64 <= MAX_HEADER {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "'{}' would have a safetensors header of {length} bytes ({tensors} tensors and the \
         provenance), over the {MAX_HEADER} bytes that safetensors readers accept: shard \
         the output (--max-shard-size) or write --format npy or npz",
        display(shown)
    )))
}

/// The header bytes (without the length prefix) and each tensor's offset within the data.
pub fn layout(tensors: &[TensorInfo], metadata: &[(String, String)]) -> (Vec<u8>, Vec<u64>) {
    let entries: Vec<Entry<'_>> = tensors
        .iter()
        .map(|t| Entry {
            name: &t.name,
            dtype: t.dtype.safetensors_name(),
            size: t.dtype.size(),
            shape: &t.shape,
            nbytes: t.nbytes(),
        })
        .collect();
    layout_entries(&entries, metadata)
}

/// Orders the entries by element size, largest first (stable), so every tensor starts at a
/// multiple of its element size.
fn layout_entries(entries: &[Entry<'_>], metadata: &[(String, String)]) -> (Vec<u8>, Vec<u64>) {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(entries[k].size));
    let mut offsets = vec![0u64; entries.len()];
    let mut header = Map::new();
    let meta: Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut at = 0u64;
    for &k in &order {
        let t = &entries[k];
        offsets[k] = at;
        let end = at + t.nbytes;
        header.insert(
            t.name.to_string(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut bytes = Value::Object(header).to_string().into_bytes();
    let padded = bytes.len().next_multiple_of(8);
    bytes.resize(padded, b' ');
    (bytes, offsets)
}

impl SafetensorsOutput {
    /// Starts the output; `copies` are copied from their sources at commit.
    pub fn create(
        destination: &Destination,
        tensors: Vec<TensorInfo>,
        copies: Vec<Copied>,
        provenance: &Provenance,
    ) -> Result<SafetensorsOutput, Error> {
        let file = SafetensorsFile::create(
            &destination.parent(),
            &destination.path,
            tensors,
            copies,
            &provenance.metadata,
        )?;
        Ok(SafetensorsOutput {
            file,
            destination: destination.clone(),
        })
    }
}

impl Output for SafetensorsOutput {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        self.file.sink(index)
    }

    fn commit(mut self: Box<Self>) -> Result<(), Error> {
        self.finish()?;
        self.place()
    }

    fn bytes(&self) -> u64 {
        self.file.bytes()
    }
}

impl TwoStep for SafetensorsOutput {
    fn finish(&mut self) -> Result<(), Error> {
        self.file.copy_in()
    }

    fn place(&mut self) -> Result<(), Error> {
        self.file
            .persist(&self.destination.path, self.destination.force)
    }
}

/// Whether `path` is a safetensors file whose `__metadata__` records the eoi version that
/// wrote it. Any failure to read it is a no.
pub fn written_by_eoi(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut length = [0u8; 8];
    if read_exact_at(&file, &mut length, 0).is_err() {
        return false;
    }
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER {
        return false;
    }
    let mut header = vec![0u8; length as usize];
    if read_exact_at(&file, &mut header, 8).is_err() {
        return false;
    }
    serde_json::from_slice::<Value>(&header).is_ok_and(|h| {
        h.get("__metadata__")
            .and_then(|m| m.get("eoi.version"))
            .is_some_and(Value::is_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Dtype;

    #[test]
    fn weights_come_before_masks_and_the_header_is_padded() {
        let tensors = vec![
            TensorInfo {
                name: "a".into(),
                dtype: Dtype::F32,
                shape: vec![3, 3],
            },
            TensorInfo {
                name: "a_mask".into(),
                dtype: Dtype::Bool,
                shape: vec![3, 3],
            },
            TensorInfo {
                name: "b".into(),
                dtype: Dtype::F32,
                shape: vec![2, 1],
            },
            TensorInfo {
                name: "b_mask".into(),
                dtype: Dtype::Bool,
                shape: vec![2, 1],
            },
        ];
        let (header, offsets) = layout(&tensors, &[("k".into(), "v".into())]);
        assert_eq!(header.len() % 8, 0);
        assert_eq!(offsets, vec![0, 44, 36, 53]);
        let text = String::from_utf8(header).unwrap();
        assert!(
            text.starts_with("{\"__metadata__\":{\"k\":\"v\"},\"a\":"),
            "{text}"
        );
    }

    #[test]
    fn a_header_readers_would_refuse_is_refused_before_anything_is_staged() {
        let dir = tempfile::tempdir().unwrap();
        let shown = dir.path().join("out.safetensors");
        let tensor = || TensorInfo {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2, 2],
        };
        // The provenance is what grows with the model; one big metadata value stands in.
        let big = |n: usize| vec![("eoi.layers".to_string(), "x".repeat(n))];
        let refused = SafetensorsFile::create(
            dir.path(),
            &shown,
            vec![tensor()],
            Vec::new(),
            &big(100_000_000),
        );
        match refused {
            Err(Error::Usage(message)) => assert!(
                message.contains("out.safetensors' would have a safetensors header of 1000000")
                    && message.contains("--max-shard-size"),
                "{message}"
            ),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a header over 100 MB was accepted"),
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Just under the limit is written.
        let (header, _) = layout(&[tensor()], &big(0));
        let fits = MAX_HEADER as usize - header.len();
        assert!(
            SafetensorsFile::create(dir.path(), &shown, vec![tensor()], Vec::new(), &big(fits))
                .is_ok()
        );
    }
}

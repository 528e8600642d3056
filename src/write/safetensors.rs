//! The safetensors writer: an 8-byte little-endian header length, a JSON header with
//! `__metadata__` first and the tensors in data order, padded with spaces to a multiple of 8,
//! then the data. Tensors are ordered by element size, largest first (weights before masks),
//! keeping the spec's order within a size, so every tensor starts at a multiple of its
//! element size. The header is built from the plan before any data exists, so its bytes are
//! deterministic and layers can be written at their offsets as they are generated.

use std::io;
use std::path::Path;

use serde_json::{Map, Value, json};
use tempfile::NamedTempFile;

use super::{
    Copied, Destination, Output, SinkFile, TensorInfo, TensorSink, display, staging, write_all_at,
};
use crate::error::Error;
use crate::interrupt::{self, Staged};
use crate::provenance::Provenance;
use crate::read::read_exact_at;

/// One safetensors file being written: a hidden temporary file in the destination's
/// directory, sized and headed before any tensor data arrives.
pub struct SafetensorsFile {
    file: NamedTempFile,
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
    pub fn create(
        directory: &Path,
        tensors: Vec<TensorInfo>,
        copies: Vec<Copied>,
        metadata: &[(String, String)],
    ) -> io::Result<SafetensorsFile> {
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
        let data_start = 8 + header.len() as u64;
        let total = data_start + entries.iter().map(|e| e.nbytes).sum::<u64>();
        let file = staging(0o666).tempfile_in(directory)?;
        let staged = interrupt::stage(file.path());
        file.as_file().set_len(total)?;
        let mut head = Vec::with_capacity(header.len() + 8);
        head.extend_from_slice(&(header.len() as u64).to_le_bytes());
        head.extend_from_slice(&header);
        write_all_at(file.as_file(), &head, 0)?;
        let mut offsets: Vec<u64> = relative.iter().map(|r| r + data_start).collect();
        let copy_offsets = offsets.split_off(tensors.len());
        Ok(SafetensorsFile {
            file,
            _staged: staged,
            offsets,
            tensors,
            copies: copies.into_iter().zip(copy_offsets).collect(),
            total,
        })
    }

    /// Copies every copied tensor's bytes from its source, a bounded buffer at a time.
    pub fn copy_in(&self) -> Result<(), Error> {
        let mut buffer = vec![0u8; COPY_BUFFER];
        for (copy, at) in &self.copies {
            let mut done = 0u64;
            while done < copy.nbytes {
                let len = (copy.nbytes - done).min(COPY_BUFFER as u64) as usize;
                let chunk = &mut buffer[..len];
                read_exact_at(&copy.source, chunk, copy.start + done)
                    .and_then(|()| write_all_at(self.file.as_file(), chunk, at + done))
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
    pub fn sink(&self, index: usize) -> TensorSink<'_> {
        TensorSink::new(
            SinkFile::Shared(self.file.as_file()),
            self.offsets[index],
            &self.tensors[index],
        )
    }

    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Renames the finished file to `path`; without `replace`, never over an existing file.
    pub fn persist(self, path: &Path, replace: bool) -> Result<(), Error> {
        let result = if replace {
            self.file.persist(path).map(|_| ())
        } else {
            self.file.persist_noclobber(path).map(|_| ())
        };
        result.map_err(|e| {
            Error::io(
                format!("cannot move the output into place at '{}'", display(path)),
                e.error,
            )
        })
    }
}

/// A single-file safetensors output.
pub struct SafetensorsOutput {
    file: SafetensorsFile,
    destination: Destination,
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
            tensors,
            copies,
            &provenance.metadata,
        )
        .map_err(|e| Error::io(format!("cannot write '{}'", display(&destination.path)), e))?;
        Ok(SafetensorsOutput {
            file,
            destination: destination.clone(),
        })
    }
}

impl Output for SafetensorsOutput {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        Ok(self.file.sink(index))
    }

    fn commit(self: Box<Self>) -> Result<(), Error> {
        self.file.copy_in()?;
        self.file
            .persist(&self.destination.path, self.destination.force)
    }

    fn bytes(&self) -> u64 {
        self.file.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Dtype;

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
}

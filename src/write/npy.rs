//! The npy writer: a directory with one `<tensor name>.npy` (format version 1.0) per tensor
//! and a `manifest.json` with the provenance and the list of tensors. The directory is built
//! beside the destination and renamed into place when complete.

use std::fs::{self, File};
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::{
    Destination, Output, SinkFile, TensorInfo, TensorSink, display, staging, write_all_at,
};
use crate::error::Error;
use crate::interrupt::{self, Staged};
use crate::records::Provenance;

/// The name of the manifest inside an npy output directory.
pub const MANIFEST: &str = "manifest.json";

pub struct NpyOutput {
    directory: PathBuf,
    /// Removes the directory if the run is interrupted.
    _staged: Staged,
    destination: Destination,
    tensors: Vec<TensorInfo>,
    manifest: Vec<u8>,
    total: u64,
}

/// The .npy header for a C-ordered array: magic, version 1.0, header length, and the
/// dictionary padded with spaces and a newline to a multiple of 64 bytes. bf16 has no NumPy
/// type and is refused (the plan refuses it first, naming the option).
pub fn header(info: &TensorInfo) -> Result<Vec<u8>, Error> {
    let descr = info.dtype.npy_descr().ok_or_else(|| {
        Error::Usage(format!(
            "tensor \"{}\": NumPy has no {} type; write {} as safetensors",
            info.name,
            info.dtype.name(),
            info.dtype.name()
        ))
    })?;
    let shape = match info.shape.as_slice() {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        descr, shape
    );
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    Ok(out)
}

/// The manifest of an npy directory or an npz archive: the provenance document with the
/// list of tensors (name, file or member name, dtype, shape), as pretty JSON.
pub fn manifest(provenance: &Provenance, tensors: &[TensorInfo]) -> Vec<u8> {
    let mut manifest = match &provenance.document {
        Value::Object(map) => map.clone(),
        other => Map::from_iter([("provenance".to_string(), other.clone())]),
    };
    let files: Vec<Value> = tensors
        .iter()
        .map(|t| {
            json!({"name": t.name, "file": format!("{}.npy", t.name), "dtype": t.dtype.name(), "shape": t.shape})
        })
        .collect();
    manifest.insert("tensors".into(), Value::Array(files));
    let mut bytes =
        serde_json::to_vec_pretty(&Value::Object(manifest)).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

impl NpyOutput {
    pub fn create(
        destination: &Destination,
        tensors: Vec<TensorInfo>,
        provenance: &Provenance,
    ) -> Result<NpyOutput, Error> {
        let context = || format!("cannot write '{}'", display(&destination.path));
        let mut total = 0;
        for t in &tensors {
            total += header(t)?.len() as u64 + t.nbytes();
        }
        let (directory, staged) = interrupt::create_staged(
            || Ok(staging(0o777).tempdir_in(destination.parent())?.keep()),
            |d| d.as_path(),
        )
        .map_err(|e| Error::io(context(), e))?;
        let manifest = manifest(provenance, &tensors);
        total += manifest.len() as u64;
        Ok(NpyOutput {
            directory,
            _staged: staged,
            destination: destination.clone(),
            tensors,
            manifest,
            total,
        })
    }
}

impl Output for NpyOutput {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        let info = &self.tensors[index];
        let path = self.directory.join(format!("{}.npy", info.name));
        let header = header(info)?;
        let opened = File::create(&path).and_then(|file| {
            write_all_at(&file, &header, 0)?;
            Ok(file)
        });
        match opened {
            Ok(file) => Ok(TensorSink::new(
                SinkFile::Owned(file),
                header.len() as u64,
                info,
            )),
            Err(e) => Err(Error::io(format!("cannot write '{}'", display(&path)), e)),
        }
    }

    fn commit(self: Box<Self>) -> Result<(), Error> {
        let manifest_path = self.directory.join(MANIFEST);
        fs::write(&manifest_path, &self.manifest)
            .map_err(|e| Error::io(format!("cannot write '{}'", display(&manifest_path)), e))?;
        interrupt::uninterrupted(|| self.destination.place_directory(&self.directory))
    }

    fn bytes(&self) -> u64 {
        self.total
    }
}

impl Drop for NpyOutput {
    fn drop(&mut self) {
        // After a successful commit the directory has moved and this finds nothing.
        let _ = fs::remove_dir_all(&self.directory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Dtype;

    #[test]
    fn headers_are_64_byte_aligned_and_describe_the_array() {
        for shape in [vec![3usize, 4], vec![128, 3, 3, 3], vec![7]] {
            let info = TensorInfo {
                name: "x".into(),
                dtype: Dtype::F32,
                shape,
            };
            let h = header(&info).unwrap();
            assert_eq!(h.len() % 64, 0);
            assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
            assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
            assert_eq!(*h.last().unwrap(), b'\n');
        }
        let text = String::from_utf8_lossy(
            &header(&TensorInfo {
                name: "x".into(),
                dtype: Dtype::Bool,
                shape: vec![5],
            })
            .unwrap()[10..],
        )
        .into_owned();
        assert!(
            text.contains("'descr': '|b1', 'fortran_order': False, 'shape': (5,), }"),
            "{text}"
        );
    }
}

//! The one reader of artifacts: safetensors files (alone, or the shards of a Hugging Face
//! index), npy directories, single .npy files and .npz archives, written for hostile input.
//! Every size, offset and count a file claims is checked against the real file size, with
//! overflow-checked arithmetic, before anything is allocated from it; tensor data is read one
//! tensor (or one chunk) at a time, never the whole file.
//!
//! One file per format, mirroring the writers in src/write/: `safetensors` parses a
//! header, `npy` reads .npy files and npy directories with their manifest, `npz` reads the
//! zip records of an archive, and `checkpoint` opens a file, the shards of an index, or any
//! artifact as one [`Checkpoint`]. This module holds what they share: [`ReadError`], the
//! limits, [`Artifact`] with its [`TensorInfo`]s, and the chunked reads that decode the data.
//!
//! ```no_run
//! use eoi::read::Artifact;
//!
//! let artifact = Artifact::open("init.safetensors".as_ref())?;
//! for info in artifact.tensors() {
//!     let values = artifact.read_f64(info)?;
//!     println!("{} {:?} {} {}", info.name, info.shape, info.dtype.name(), values.len());
//! }
//! # Ok::<(), eoi::read::ReadError>(())
//! ```

mod checkpoint;
mod npy;
mod npz;
mod safetensors;

pub use checkpoint::{Checkpoint, INDEX, SINGLE, Tensor};
pub use npy::MANIFEST;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::layer::{Dtype, Format};
use npy::{NPY_MAGIC, npy_stem, npy_tensor, open_npy_directory};
use npz::open_npz;
use safetensors::open_safetensors;

/// The dtypes of a safetensors header this reader knows, for messages.
const KNOWN_DTYPES: &str =
    "BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F8_E4M3, F8_E5M2, F16, BF16, F32, F64";

/// Largest safetensors header accepted (the `safetensors` crate's limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// Largest npy `manifest.json` accepted.
pub const MAX_MANIFEST: u64 = 100_000_000;

/// Largest .npy header accepted (the dictionary; eoi writes under 200 bytes).
pub const MAX_NPY_HEADER: u64 = 1 << 20;

/// Largest npz central directory accepted (eoi writes about 60 bytes per tensor).
pub const MAX_ZIP_DIRECTORY: u64 = 100_000_000;

/// Bytes read at a time when converting a tensor's data.
const CHUNK: usize = 1 << 20;

/// Why an artifact cannot be read. Every variant names the file and says exactly what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path cannot be opened or read (missing, permissions, an I/O error).
    #[error("cannot read '{path}': {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The path is neither a file nor a directory.
    #[error("'{path}' is neither a file nor a directory")]
    NotFileOrDirectory { path: String },
    /// The file is smaller than the 8-byte header length of a safetensors file.
    #[error(
        "'{path}' is {size} bytes long: too short for a safetensors file (the header length alone takes 8)"
    )]
    TooShort { path: String, size: u64 },
    /// The header length exceeds [`MAX_HEADER`].
    #[error(
        "'{path}': the header length {length} exceeds the limit of {MAX_HEADER} bytes (not a safetensors file, or a forged header)"
    )]
    HeaderTooLarge { path: String, length: u64 },
    /// The header length points past the end of the file.
    #[error(
        "'{path}': the header claims {length} bytes but only {available} follow the length (the file is truncated or not safetensors)"
    )]
    HeaderPastEnd {
        path: String,
        length: u64,
        available: u64,
    },
    /// The header is not UTF-8 (tensor names and metadata must be).
    #[error(
        "'{path}': the header is not valid UTF-8 at byte {offset} of the header (tensor names and metadata must be UTF-8)"
    )]
    HeaderNotUtf8 { path: String, offset: usize },
    /// The header does not start with `{`.
    #[error("'{path}': the header does not start with '{{' (not a safetensors file)")]
    HeaderNotObject { path: String },
    /// The header is not the JSON a safetensors header must be.
    #[error("'{path}': the header is not a valid safetensors header: {message}")]
    HeaderJson { path: String, message: String },
    /// A tensor's dtype is not one this reader knows.
    #[error(
        "'{path}': tensor \"{name}\" has unknown or unsupported dtype \"{dtype}\" (known: {})",
        KNOWN_DTYPES
    )]
    UnknownDtype {
        path: String,
        name: String,
        dtype: String,
    },
    /// A tensor's shape has more elements than can be counted or addressed.
    #[error("'{path}': tensor \"{name}\" has shape {shape:?}, whose element count overflows")]
    ShapeOverflow {
        path: String,
        name: String,
        shape: Vec<u64>,
    },
    /// A tensor's data offsets end before they begin.
    #[error(
        "'{path}': tensor \"{name}\" has data offsets [{begin}, {end}] that end before they begin"
    )]
    OffsetsReversed {
        path: String,
        name: String,
        begin: u64,
        end: u64,
    },
    /// A tensor's data offsets point past the end of the file.
    #[error(
        "'{path}': tensor \"{name}\" ends at byte {end} of the data, but the file holds only {available} bytes of data (truncated, or a forged header)"
    )]
    OffsetsPastEnd {
        path: String,
        name: String,
        end: u64,
        available: u64,
    },
    /// A tensor's byte range does not match its dtype and shape.
    #[error(
        "'{path}': tensor \"{name}\" spans {actual} bytes but its dtype and shape need {expected}"
    )]
    SizeMismatch {
        path: String,
        name: String,
        expected: u64,
        actual: u64,
    },
    /// Two tensors share bytes.
    #[error(
        "'{path}': tensors \"{first}\" and \"{second}\" overlap (bytes {begin} to {end} of the data)"
    )]
    Overlap {
        path: String,
        first: String,
        second: String,
        begin: u64,
        end: u64,
    },
    /// Bytes of the data belong to no tensor.
    #[error("'{path}': bytes {begin} to {end} of the data belong to no tensor")]
    Gap { path: String, begin: u64, end: u64 },
    /// An npy file does not start with the .npy magic string.
    #[error("'{path}': not an .npy file (it does not start with \\x93NUMPY)")]
    NpyMagic { path: String },
    /// An npy format version this reader does not know.
    #[error(
        "'{path}': .npy format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)"
    )]
    NpyVersion { path: String, major: u8, minor: u8 },
    /// An npy header that cannot be parsed or is too large.
    #[error("'{path}': bad .npy header: {message}")]
    NpyHeader { path: String, message: String },
    /// An npy array stored in Fortran (column-major) order.
    #[error(
        "'{path}': the array is stored in Fortran order (fortran_order: True); only C order is supported: save it with np.save(path, np.ascontiguousarray(a))"
    )]
    NpyFortranOrder { path: String },
    /// An npy dtype this reader does not support.
    #[error(
        "'{path}': unsupported .npy dtype '{descr}' (supported: little-endian or byte-sized bool, integers and f2/f4/f8)"
    )]
    NpyDtype { path: String, descr: String },
    /// An npy file whose length does not match its header.
    #[error(
        "'{path}': the header describes {expected} bytes of data but the file holds {actual} (truncated, or extra bytes)"
    )]
    NpySize {
        path: String,
        expected: u64,
        actual: u64,
    },
    /// An .npz archive whose zip records cannot be read.
    #[error("'{path}': not a readable .npz archive: {message}")]
    Zip { path: String, message: String },
    /// A `manifest.json` that is not what an npy output's manifest must be.
    #[error("'{path}': bad manifest: {message}")]
    Manifest { path: String, message: String },
    /// A sharded checkpoint's `model.safetensors.index.json` that cannot be used.
    #[error("'{path}': bad sharded index: {message}")]
    Index { path: String, message: String },
    /// A directory that holds nothing a checkpoint is made of.
    #[error(
        "'{path}' is a directory without {INDEX}, {SINGLE}, {MANIFEST} or any .npy file: not a checkpoint"
    )]
    NoCheckpoint { path: String },
    /// A file that is not a safetensors checkpoint where one is needed.
    #[error("'{path}' is not a safetensors file ({found})")]
    NotSafetensors { path: String, found: &'static str },
    /// A tensor's data cannot be converted to numbers.
    #[error("tensor \"{name}\" has dtype {dtype}, which is not numeric")]
    NotNumeric { name: String, dtype: &'static str },
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(path: &Path, source: io::Error) -> ReadError {
    ReadError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Decodes one little-endian element of `dtype` (`b.len() == dtype.size()`) as f64. Bool
/// and integer values convert exactly up to 2^53.
pub(crate) fn decode(dtype: Dtype, b: &[u8]) -> f64 {
    match dtype {
        Dtype::Bool | Dtype::U8 => f64::from(b[0]),
        Dtype::I8 => f64::from(b[0] as i8),
        Dtype::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
        Dtype::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
        Dtype::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::U64 => u64::from_le_bytes(eight(b)) as f64,
        Dtype::I64 => i64::from_le_bytes(eight(b)) as f64,
        Dtype::F8E4M3 => minifloat(u32::from(b[0]), 4, 3, false),
        Dtype::F8E5M2 => minifloat(u32::from(b[0]), 5, 2, true),
        Dtype::F16 => minifloat(u32::from(u16::from_le_bytes([b[0], b[1]])), 5, 10, true),
        Dtype::BF16 => f64::from(f32::from_bits(
            u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
        )),
        Dtype::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F64 => f64::from_le_bytes(eight(b)),
    }
}

/// Decodes the little-endian elements of `dtype` in `bytes` into `out`, one per
/// `dtype.size()` bytes (`out.len() * dtype.size() == bytes.len()`), as [`decode`] does one:
/// the loop the checks run over every weight, specialised for the common float dtypes.
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
    debug_assert_eq!(out.len() * dtype.size(), bytes.len());
    match dtype {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        Dtype::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(eight(b));
            }
        }
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f64::from(f32::from_bits(
                    u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
                ));
            }
        }
        Dtype::Bool | Dtype::U8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f64::from(b);
            }
        }
        _ => {
            let size = dtype.size();
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(size)) {
                *o = decode(dtype, b);
            }
        }
    }
}

/// Decodes like [`decode_into`], into f32: exact for the dtypes whose every value f32 holds
/// ([`f32_holds`]); the checks use it to keep such a matrix at half the bytes of f64.
pub fn decode_f32_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(out.len() * dtype.size(), bytes.len());
    match dtype {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        Dtype::Bool | Dtype::U8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f32::from(b);
            }
        }
        _ => {
            let size = dtype.size();
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(size)) {
                *o = decode(dtype, b) as f32;
            }
        }
    }
}

/// Whether f32 holds every value of `dtype` exactly (the floats of 32 bits or fewer and the
/// integers of 16 bits or fewer).
pub fn f32_holds(dtype: Dtype) -> bool {
    !matches!(
        dtype,
        Dtype::F64 | Dtype::U32 | Dtype::I32 | Dtype::U64 | Dtype::I64
    )
}

fn eight(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Decodes a small binary float: sign, `exp_bits` exponent bits (IEEE bias), `man_bits`
/// mantissa bits. With `ieee_special`, an all-ones exponent is infinity or NaN (f16, e5m2);
/// without (e4m3fn), only all-ones exponent and mantissa is NaN.
fn minifloat(bits: u32, exp_bits: u32, man_bits: u32, ieee_special: bool) -> f64 {
    let sign = if bits >> (exp_bits + man_bits) & 1 == 1 {
        -1.0
    } else {
        1.0
    };
    let exp_max = (1u32 << exp_bits) - 1;
    let exponent = bits >> man_bits & exp_max;
    let mantissa = bits & ((1u32 << man_bits) - 1);
    let bias = (1i32 << (exp_bits - 1)) - 1;
    if exponent == exp_max {
        if ieee_special {
            return if mantissa == 0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            };
        }
        if mantissa == (1u32 << man_bits) - 1 {
            return f64::NAN;
        }
    }
    let fraction = f64::from(mantissa) / f64::from(1u32 << man_bits);
    if exponent == 0 {
        sign * fraction * libm::ldexp(1.0, 1 - bias)
    } else {
        sign * (1.0 + fraction) * libm::ldexp(1.0, exponent as i32 - bias)
    }
}

/// A tensor of an artifact, validated against the file it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    /// Dimensions in stored (row-major) order; empty for a scalar.
    pub shape: Vec<usize>,
    /// Elements: the product of the dimensions (1 for a scalar).
    pub numel: usize,
    /// `numel * dtype.size()`.
    pub nbytes: u64,
    /// The file holding the data and where in it the data starts.
    file: PathBuf,
    start: u64,
}

/// A validated artifact: its tensors and what it records about itself. Data is read on demand.
#[derive(Debug)]
pub struct Artifact {
    path: PathBuf,
    format: Format,
    tensors: Vec<TensorInfo>,
    metadata: Option<Vec<(String, String)>>,
    manifest: Option<Value>,
    /// The safetensors file, kept open so every read sees the file that was validated.
    file: Option<File>,
    /// SHA-256 of the safetensors header (the JSON text after the 8-byte length).
    header_sha256: Option<[u8; 32]>,
    /// Index of each name's first tensor, built on the first lookup by name.
    by_name: OnceLock<HashMap<String, usize>>,
}

impl Artifact {
    /// Opens and validates `path`: a safetensors file, a single .npy file (recognised by its
    /// magic bytes), or a directory of .npy files (with or without eoi's `manifest.json`).
    /// Only headers are read.
    pub fn open(path: &Path) -> Result<Artifact, ReadError> {
        let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            return open_npy_directory(path);
        }
        if !meta.is_file() {
            return Err(ReadError::NotFileOrDirectory {
                path: path.display().to_string(),
            });
        }
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let size = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut magic = [0u8; 6];
        if size >= 6 {
            read_exact_at(&file, &mut magic, 0).map_err(|e| io_error(path, e))?;
        }
        if &magic[..4] == b"PK\x03\x04" || &magic[..4] == b"PK\x05\x06" {
            return open_npz(path, file, size);
        }
        if &magic == NPY_MAGIC {
            let info = npy_tensor(path, npy_stem(path))?;
            return Ok(Artifact {
                path: path.to_path_buf(),
                format: Format::Npy,
                tensors: vec![info],
                metadata: None,
                manifest: None,
                file: None,
                header_sha256: None,
                by_name: OnceLock::new(),
            });
        }
        open_safetensors(path, file, size)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The tensors, in data order (safetensors), manifest order (npy with a manifest) or
    /// file-name order (npy without one).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The first tensor named `name`, found through an index so that looking up every
    /// tensor of a large artifact stays linear.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let by_name = self.by_name.get_or_init(|| {
            let mut by_name = HashMap::with_capacity(self.tensors.len());
            for (k, t) in self.tensors.iter().enumerate() {
                by_name.entry(t.name.clone()).or_insert(k);
            }
            by_name
        });
        by_name.get(name).map(|&k| &self.tensors[k])
    }

    /// The safetensors `__metadata__` pairs in header order (`None` when the header has none,
    /// and for npy).
    pub fn metadata(&self) -> Option<&[(String, String)]> {
        self.metadata.as_deref()
    }

    /// An npy directory's `manifest.json` (`None` when there is none, and for safetensors).
    pub fn manifest(&self) -> Option<&Value> {
        self.manifest.as_ref()
    }

    /// The SHA-256 of a safetensors file's header (the JSON text after the 8-byte length, as
    /// stored, padding included), in hex; `None` for npy.
    pub fn header_sha256(&self) -> Option<String> {
        self.header_sha256.map(|h| hex(&h))
    }

    /// Where the data of a safetensors tensor starts in its file (`None` for npy), so it can
    /// be copied byte for byte.
    pub fn data_start(&self, info: &TensorInfo) -> Option<u64> {
        (self.format == Format::Safetensors).then_some(info.start)
    }

    /// The open safetensors file that was validated (`None` for npy).
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The number of nonzero elements of a tensor (any dtype; a float -0.0 is zero, a NaN is
    /// not), read a chunk at a time in bounded memory.
    pub fn count_nonzero(&self, info: &TensorInfo) -> Result<u64, ReadError> {
        let size = info.dtype.size();
        let mut buf = vec![0u8; CHUNK.min(info.nbytes as usize)];
        let mut offset = 0u64;
        let mut nonzero = 0u64;
        while offset < info.nbytes {
            let len = (info.nbytes - offset).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..len];
            self.read_at(info, offset, chunk)?;
            nonzero += chunk
                .chunks_exact(size)
                .filter(|b| decode(info.dtype, b) != 0.0)
                .count() as u64;
            offset += len as u64;
        }
        Ok(nonzero)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes).sum()
    }

    /// Fills `buf` with the tensor's bytes starting `offset` bytes into its data.
    pub fn read_at(&self, info: &TensorInfo, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > info.nbytes) {
            return Err(io_error(
                &info.file,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a read past the end of tensor \"{}\"", info.name),
                ),
            ));
        }
        let at = info.start + offset;
        let result = match &self.file {
            Some(file) => read_exact_at(file, buf, at),
            None => File::open(&info.file).and_then(|f| read_exact_at(&f, buf, at)),
        };
        result.map_err(|e| io_error(&info.file, e))
    }

    /// The tensor's raw little-endian bytes, read a chunk at a time. The size was checked
    /// against the real file when the artifact was opened.
    pub fn read_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>, ReadError> {
        let len = usize::try_from(info.nbytes).map_err(|_| {
            io_error(
                &info.file,
                io::Error::new(io::ErrorKind::OutOfMemory, "the tensor cannot be addressed"),
            )
        })?;
        let mut bytes = vec![0u8; len];
        for (k, chunk) in bytes.chunks_mut(CHUNK).enumerate() {
            self.read_at(info, (k * CHUNK) as u64, chunk)?;
        }
        Ok(bytes)
    }

    /// The tensor's values as f64, in row-major order, read and converted a chunk at a time.
    pub fn read_f64(&self, info: &TensorInfo) -> Result<Vec<f64>, ReadError> {
        let size = info.dtype.size();
        let mut values = vec![0.0; (info.nbytes / size as u64) as usize];
        let mut buf = vec![0u8; CHUNK.min(info.nbytes as usize)];
        let mut offset = 0u64;
        while offset < info.nbytes {
            let len = (info.nbytes - offset).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..len];
            self.read_at(info, offset, chunk)?;
            let at = (offset / size as u64) as usize;
            let whole = len / size * size;
            decode_into(
                info.dtype,
                &chunk[..whole],
                &mut values[at..at + whole / size],
            );
            offset += len as u64;
        }
        Ok(values)
    }
}

#[cfg(unix)]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Element count of `shape`, if it fits in a u64 and in memory addressing.
fn checked_numel(shape: &[u64]) -> Option<usize> {
    let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
    usize::try_from(numel).ok()
}

/// A file name from a manifest must stay inside the directory.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minifloats_decode() {
        // e4m3fn: 0x38 = 1.0, 0x7e = 448 (largest), 0x7f = NaN, 0x01 = 2^-9.
        assert_eq!(decode(Dtype::F8E4M3, &[0x38]), 1.0);
        assert_eq!(decode(Dtype::F8E4M3, &[0x7e]), 448.0);
        assert!(decode(Dtype::F8E4M3, &[0x7f]).is_nan());
        assert_eq!(decode(Dtype::F8E4M3, &[0x01]), libm::ldexp(1.0, -9));
        // e5m2: 0x3c = 1.0, 0x7c = inf, 0xc0 = -2.
        assert_eq!(decode(Dtype::F8E5M2, &[0x3c]), 1.0);
        assert_eq!(decode(Dtype::F8E5M2, &[0x7c]), f64::INFINITY);
        assert_eq!(decode(Dtype::F8E5M2, &[0xc0]), -2.0);
        // bf16 0x3f80 = 1.0.
        assert_eq!(decode(Dtype::BF16, &[0x80, 0x3f]), 1.0);
        assert_eq!(Dtype::F32.unit_roundoff(), Some(libm::ldexp(1.0, -24)));
    }
}

//! The one reader of artifacts: safetensors files (alone, or the shards of a Hugging Face
//! index), npy directories, single .npy files and .npz archives, written for hostile input. Every size, offset and count a file claims is checked against the
//! real file size, with overflow-checked arithmetic, before anything is allocated from it;
//! tensor data is read one tensor (or one chunk) at a time, never the whole file.
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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::layer::{Dtype, Format};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The dtypes of a safetensors header this reader knows, for messages.
const KNOWN_DTYPES: &str =
    "BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F8_E4M3, F8_E5M2, F16, BF16, F32, F64";

/// Largest safetensors header accepted (the `safetensors` crate's limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// Largest npy `manifest.json` accepted.
pub const MAX_MANIFEST: u64 = 100_000_000;

/// Largest .npy header accepted (the dictionary; eoi writes under 200 bytes).
pub const MAX_NPY_HEADER: u64 = 1 << 20;

/// Bytes read at a time when converting a tensor's data.
const CHUNK: usize = 1 << 20;

/// The name of the manifest in an npy output directory.
pub const MANIFEST: &str = "manifest.json";

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
fn decode(dtype: Dtype, b: &[u8]) -> f64 {
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
        let mut values = Vec::with_capacity(info.numel);
        let mut buf = vec![0u8; CHUNK.min(info.nbytes as usize)];
        let mut offset = 0u64;
        while offset < info.nbytes {
            let len = (info.nbytes - offset).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..len];
            self.read_at(info, offset, chunk)?;
            values.extend(chunk.chunks_exact(size).map(|b| decode(info.dtype, b)));
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

// ---------------------------------------------------------------------------------------
// safetensors

/// One tensor entry of a safetensors header, as written.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// A safetensors header: tensor entries in header order and `__metadata__`, with duplicate
/// keys rejected (serde_json would keep the last silently).
struct RawHeader {
    entries: Vec<(String, RawEntry)>,
    metadata: Option<Vec<(String, String)>>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                let mut metadata = None;
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("\"{key}\" appears twice")));
                    }
                    if key == "__metadata__" {
                        let pairs: StringPairs = map.next_value().map_err(|e| {
                            de::Error::custom(format!(
                                "__metadata__ must map strings to strings: {e}"
                            ))
                        })?;
                        metadata = Some(pairs.0);
                    } else {
                        let entry: RawEntry = map
                            .next_value()
                            .map_err(|e| de::Error::custom(format!("tensor \"{key}\": {e}")))?;
                        entries.push((key, entry));
                    }
                }
                Ok(RawHeader { entries, metadata })
            }
        }
        deserializer.deserialize_map(HeaderVisitor)
    }
}

/// A JSON object of strings, in order, with duplicate keys rejected.
struct StringPairs(Vec<(String, String)>);

impl<'de> Deserialize<'de> for StringPairs {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = StringPairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringPairs, A::Error> {
                let mut seen = HashSet::new();
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("key \"{key}\" appears twice")));
                    }
                    let value: String = map
                        .next_value()
                        .map_err(|e| de::Error::custom(format!("key \"{key}\": {e}")))?;
                    pairs.push((key, value));
                }
                Ok(StringPairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// Element count of `shape`, if it fits in a u64 and in memory addressing.
fn checked_numel(shape: &[u64]) -> Option<usize> {
    let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
    usize::try_from(numel).ok()
}

fn open_safetensors(path: &Path, file: File, size: u64) -> Result<Artifact, ReadError> {
    let shown = || path.display().to_string();
    if size < 8 {
        return Err(ReadError::TooShort {
            path: shown(),
            size,
        });
    }
    let mut prefix = [0u8; 8];
    read_exact_at(&file, &mut prefix, 0).map_err(|e| io_error(path, e))?;
    let length = u64::from_le_bytes(prefix);
    if length > MAX_HEADER {
        return Err(ReadError::HeaderTooLarge {
            path: shown(),
            length,
        });
    }
    let available = size - 8;
    if length > available {
        return Err(ReadError::HeaderPastEnd {
            path: shown(),
            length,
            available,
        });
    }
    // Both checks above bound this allocation by the real file size and the cap.
    let mut header = vec![0u8; length as usize];
    read_exact_at(&file, &mut header, 8).map_err(|e| io_error(path, e))?;
    let text = std::str::from_utf8(&header).map_err(|e| ReadError::HeaderNotUtf8 {
        path: shown(),
        offset: e.valid_up_to(),
    })?;
    if !text.starts_with('{') {
        return Err(ReadError::HeaderNotObject { path: shown() });
    }
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| ReadError::HeaderJson {
        path: shown(),
        message: e.to_string(),
    })?;
    let data_start = 8 + length;
    let data_len = size - data_start;

    let mut tensors = Vec::with_capacity(raw.entries.len());
    let mut ranges = Vec::with_capacity(raw.entries.len());
    for (name, entry) in raw.entries {
        let dtype =
            Dtype::from_safetensors(&entry.dtype).ok_or_else(|| ReadError::UnknownDtype {
                path: shown(),
                name: name.clone(),
                dtype: entry.dtype.clone(),
            })?;
        let overflow = || ReadError::ShapeOverflow {
            path: shown(),
            name: name.clone(),
            shape: entry.shape.clone(),
        };
        let numel = checked_numel(&entry.shape).ok_or_else(overflow)?;
        let nbytes = (numel as u64)
            .checked_mul(dtype.size() as u64)
            .ok_or_else(overflow)?;
        let [begin, end] = entry.data_offsets;
        if end < begin {
            return Err(ReadError::OffsetsReversed {
                path: shown(),
                name,
                begin,
                end,
            });
        }
        if end > data_len {
            return Err(ReadError::OffsetsPastEnd {
                path: shown(),
                name,
                end,
                available: data_len,
            });
        }
        if end - begin != nbytes {
            return Err(ReadError::SizeMismatch {
                path: shown(),
                name,
                expected: nbytes,
                actual: end - begin,
            });
        }
        // Every dimension divides numel, which fits in usize.
        let shape = entry.shape.iter().map(|&d| d as usize).collect();
        ranges.push((begin, end, tensors.len()));
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            numel,
            nbytes,
            file: path.to_path_buf(),
            start: data_start + begin,
        });
    }

    // The data must be covered exactly: sorted by start, each tensor begins where the
    // previous one ended, and the last ends at the end of the file.
    ranges.sort_unstable();
    let mut at = 0u64;
    let mut previous: Option<usize> = None;
    for &(begin, end, k) in &ranges {
        if begin < at {
            let first = previous
                .map(|p| tensors[p].name.clone())
                .unwrap_or_default();
            return Err(ReadError::Overlap {
                path: shown(),
                first,
                second: tensors[k].name.clone(),
                begin,
                end: at.min(end),
            });
        }
        if begin > at {
            return Err(ReadError::Gap {
                path: shown(),
                begin: at,
                end: begin,
            });
        }
        at = end;
        previous = Some(k);
    }
    if at != data_len {
        return Err(ReadError::Gap {
            path: shown(),
            begin: at,
            end: data_len,
        });
    }
    let order: Vec<usize> = ranges.iter().map(|&(_, _, k)| k).collect();
    let mut slots: Vec<Option<TensorInfo>> = tensors.into_iter().map(Some).collect();
    let tensors = order.into_iter().filter_map(|k| slots[k].take()).collect();
    Ok(Artifact {
        path: path.to_path_buf(),
        format: Format::Safetensors,
        tensors,
        metadata: raw.metadata,
        manifest: None,
        file: Some(file),
        header_sha256: Some(Sha256::digest(&header).into()),
        by_name: OnceLock::new(),
    })
}

// ---------------------------------------------------------------------------------------
// npy

const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The parsed dictionary of a .npy header.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    dtype: Dtype,
    shape: Vec<u64>,
}

/// A value of the Python literal in a .npy header.
#[derive(Debug)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
}

/// Parses the Python dict literal of a .npy header:
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_npy_dict(text: &str) -> Result<Vec<(String, PyValue)>, String> {
    struct Cursor<'a> {
        s: &'a [u8],
        at: usize,
    }
    impl Cursor<'_> {
        fn skip_space(&mut self) {
            while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
        }
        fn peek(&mut self) -> Option<u8> {
            self.skip_space();
            self.s.get(self.at).copied()
        }
        fn expect(&mut self, c: u8) -> Result<(), String> {
            match self.peek() {
                Some(got) if got == c => {
                    self.at += 1;
                    Ok(())
                }
                Some(got) => Err(format!(
                    "expected '{}' at byte {}, found '{}'",
                    c as char,
                    self.at,
                    (got as char).escape_default()
                )),
                None => Err(format!("expected '{}', found the end", c as char)),
            }
        }
        fn string(&mut self) -> Result<String, String> {
            let quote = match self.peek() {
                Some(q @ (b'\'' | b'"')) => q,
                _ => return Err(format!("expected a quoted string at byte {}", self.at)),
            };
            self.at += 1;
            let start = self.at;
            while self.at < self.s.len() && self.s[self.at] != quote {
                if self.s[self.at] == b'\\' {
                    return Err("escapes in strings are not supported".into());
                }
                self.at += 1;
            }
            if self.at >= self.s.len() {
                return Err("unterminated string".into());
            }
            let text = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
            self.at += 1;
            Ok(text)
        }
        fn integer(&mut self) -> Result<u64, String> {
            self.skip_space();
            let start = self.at;
            while self.at < self.s.len() && self.s[self.at].is_ascii_digit() {
                self.at += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("");
            let value = digits.parse::<u64>().map_err(|_| {
                format!(
                    "expected a dimension (an integer >= 0 below 2^64) at byte {start}, found '{}'",
                    String::from_utf8_lossy(&self.s[start..(start + 20).min(self.s.len())])
                )
            })?;
            // Python 2 wrote longs with a suffix.
            if self.s.get(self.at) == Some(&b'L') {
                self.at += 1;
            }
            Ok(value)
        }
        fn word(&mut self) -> String {
            self.skip_space();
            let start = self.at;
            while self.at < self.s.len() && self.s[self.at].is_ascii_alphabetic() {
                self.at += 1;
            }
            String::from_utf8_lossy(&self.s[start..self.at]).into_owned()
        }
    }

    let mut c = Cursor {
        s: text.as_bytes(),
        at: 0,
    };
    let mut items = Vec::new();
    c.expect(b'{')?;
    loop {
        if c.peek() == Some(b'}') {
            c.at += 1;
            break;
        }
        let key = c.string()?;
        c.expect(b':')?;
        let value = match c.peek() {
            Some(b'\'' | b'"') => PyValue::Str(c.string()?),
            Some(b'(') => {
                c.at += 1;
                let mut dims = Vec::new();
                loop {
                    if c.peek() == Some(b')') {
                        c.at += 1;
                        break;
                    }
                    if dims.len() >= 64 {
                        return Err("a shape has at most 64 dimensions".into());
                    }
                    dims.push(c.integer()?);
                    match c.peek() {
                        Some(b',') => c.at += 1,
                        Some(b')') => {}
                        _ => return Err(format!("expected ',' or ')' at byte {}", c.at)),
                    }
                }
                PyValue::Tuple(dims)
            }
            _ => match c.word().as_str() {
                "True" => PyValue::Bool(true),
                "False" => PyValue::Bool(false),
                other => {
                    return Err(format!(
                        "unexpected value for '{key}': '{}'",
                        other.escape_default()
                    ));
                }
            },
        };
        items.push((key, value));
        match c.peek() {
            Some(b',') => c.at += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected ',' or '}}' at byte {}", c.at)),
        }
    }
    if c.peek().is_some() {
        return Err(format!(
            "unexpected text after the dictionary at byte {}",
            c.at
        ));
    }
    Ok(items)
}

/// Reads and checks an .npy file's header; returns it with the byte where the data starts.
/// Reads and checks the header of the .npy bytes at `base` (a file, or a member of an
/// archive) of `size` bytes; the offset of the data from `base` comes with it.
fn read_npy_header(
    path: &Path,
    file: &File,
    base: u64,
    size: u64,
) -> Result<(NpyHeader, u64), ReadError> {
    let read_exact_at = |file: &File, buf: &mut [u8], at: u64| read_exact_at(file, buf, base + at);
    let shown = || path.display().to_string();
    let bad = |message: String| ReadError::NpyHeader {
        path: shown(),
        message,
    };
    let mut prefix = [0u8; 8];
    if size < 10 {
        return Err(ReadError::NpyMagic { path: shown() });
    }
    read_exact_at(file, &mut prefix, 0).map_err(|e| io_error(path, e))?;
    if &prefix[..6] != NPY_MAGIC {
        return Err(ReadError::NpyMagic { path: shown() });
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let (length, dict_start) = match (major, minor) {
        (1, 0) => {
            let mut b = [0u8; 2];
            read_exact_at(file, &mut b, 8).map_err(|e| io_error(path, e))?;
            (u64::from(u16::from_le_bytes(b)), 10)
        }
        (2, 0) | (3, 0) => {
            if size < 12 {
                return Err(bad("the file ends inside the header length".into()));
            }
            let mut b = [0u8; 4];
            read_exact_at(file, &mut b, 8).map_err(|e| io_error(path, e))?;
            (u64::from(u32::from_le_bytes(b)), 12)
        }
        _ => {
            return Err(ReadError::NpyVersion {
                path: shown(),
                major,
                minor,
            });
        }
    };
    if length > MAX_NPY_HEADER {
        return Err(bad(format!(
            "the header length {length} exceeds the limit of {MAX_NPY_HEADER} bytes"
        )));
    }
    if dict_start + length > size {
        return Err(bad(format!(
            "the header claims {length} bytes but the file ends before (truncated?)"
        )));
    }
    let mut dict = vec![0u8; length as usize];
    read_exact_at(file, &mut dict, dict_start).map_err(|e| io_error(path, e))?;
    // Versions 1 and 2 are latin-1, 3 is UTF-8; a header that is not ASCII cannot be ours or
    // numpy's for any supported dtype, so both are read as UTF-8.
    let text = std::str::from_utf8(&dict)
        .map_err(|e| bad(format!("not UTF-8 text at byte {}", e.valid_up_to())))?;
    let items = parse_npy_dict(text).map_err(bad)?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in items {
        let slot_taken = match (key.as_str(), value) {
            ("descr", PyValue::Str(s)) => descr.replace(s).is_some(),
            ("fortran_order", PyValue::Bool(b)) => fortran.replace(b).is_some(),
            ("shape", PyValue::Tuple(t)) => shape.replace(t).is_some(),
            ("descr", _) => {
                return Err(ReadError::NpyDtype {
                    path: shown(),
                    descr: "a structured dtype".into(),
                });
            }
            (key @ ("fortran_order" | "shape"), v) => {
                return Err(bad(format!("'{key}' has the wrong type ({v:?})")));
            }
            (key, _) => return Err(bad(format!("unknown key '{key}'"))),
        };
        if slot_taken {
            return Err(bad(format!("'{key}' appears twice")));
        }
    }
    let descr = descr.ok_or_else(|| bad("no 'descr'".into()))?;
    let fortran = fortran.ok_or_else(|| bad("no 'fortran_order'".into()))?;
    let shape = shape.ok_or_else(|| bad("no 'shape'".into()))?;
    if fortran {
        return Err(ReadError::NpyFortranOrder { path: shown() });
    }
    let dtype = Dtype::from_npy(&descr).ok_or_else(|| ReadError::NpyDtype {
        path: shown(),
        descr: descr.clone(),
    })?;
    Ok((NpyHeader { dtype, shape }, dict_start + length))
}

/// Opens and validates one .npy file as tensor `name`.
fn npy_tensor(path: &Path, name: String) -> Result<TensorInfo, ReadError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    let (header, data_start) = read_npy_header(path, &file, 0, size)?;
    npy_info(path, name, header, data_start, size)
}

/// The tensor of .npy bytes of `size` with `header`, its data `data_start` bytes in.
fn npy_info(
    path: &Path,
    name: String,
    header: NpyHeader,
    data_start: u64,
    size: u64,
) -> Result<TensorInfo, ReadError> {
    let overflow = || ReadError::ShapeOverflow {
        path: path.display().to_string(),
        name: name.clone(),
        shape: header.shape.clone(),
    };
    let numel = checked_numel(&header.shape).ok_or_else(overflow)?;
    let nbytes = (numel as u64)
        .checked_mul(header.dtype.size() as u64)
        .ok_or_else(overflow)?;
    let expected = data_start.checked_add(nbytes).ok_or_else(overflow)?;
    if expected != size {
        return Err(ReadError::NpySize {
            path: path.display().to_string(),
            expected: nbytes,
            actual: size - data_start,
        });
    }
    Ok(TensorInfo {
        name,
        dtype: header.dtype,
        shape: header.shape.iter().map(|&d| d as usize).collect(),
        numel,
        nbytes,
        file: path.to_path_buf(),
        start: data_start,
    })
}

fn npy_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".npy").unwrap_or(&name).to_string()
}

/// A file name from a manifest must stay inside the directory.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// The tensors a manifest lists, in its order: tensor `k`, named `name`, is found by
/// `resolve(k, name, file)` and checked against the manifest's dtype and shape.
fn manifest_order(
    manifest_path: &Path,
    doc: &Value,
    mut resolve: impl FnMut(usize, &str, &str) -> Result<TensorInfo, ReadError>,
) -> Result<Vec<TensorInfo>, ReadError> {
    let bad = |message: String| ReadError::Manifest {
        path: manifest_path.display().to_string(),
        message,
    };
    let list = doc
        .get("tensors")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"tensors\" array".into()))?;
    let mut seen = HashSet::new();
    let mut tensors = Vec::with_capacity(list.len());
    for (k, entry) in list.iter().enumerate() {
        let field = |key: &str| {
            entry
                .get(key)
                .ok_or_else(|| bad(format!("tensors[{k}] has no \"{key}\"")))
        };
        let name = field("name")?
            .as_str()
            .ok_or_else(|| bad(format!("tensors[{k}].name is not a string")))?;
        let file = field("file")?
            .as_str()
            .ok_or_else(|| bad(format!("tensors[{k}].file is not a string")))?;
        if !seen.insert(name.to_string()) {
            return Err(bad(format!("tensor \"{name}\" is listed twice")));
        }
        let info = resolve(k, name, file)?;
        let dtype = field("dtype")?.as_str();
        if dtype != Some(info.dtype.name()) {
            return Err(bad(format!(
                "tensor \"{name}\": the manifest says dtype {}, the file holds {}",
                field("dtype")?,
                info.dtype.name()
            )));
        }
        let shape: Option<Vec<u64>> = field("shape")?
            .as_array()
            .and_then(|dims| dims.iter().map(Value::as_u64).collect());
        let matches = shape.as_ref().is_some_and(|s| {
            s.len() == info.shape.len() && s.iter().zip(&info.shape).all(|(&a, &b)| a == b as u64)
        });
        if !matches {
            return Err(bad(format!(
                "tensor \"{name}\": the manifest says shape {}, the file holds {:?}",
                field("shape")?,
                info.shape
            )));
        }
        tensors.push(info);
    }
    Ok(tensors)
}

fn open_npy_directory(dir: &Path) -> Result<Artifact, ReadError> {
    let manifest_path = dir.join(MANIFEST);
    let bad = |message: String| ReadError::Manifest {
        path: manifest_path.display().to_string(),
        message,
    };
    let manifest = match File::open(&manifest_path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&manifest_path, e)),
        Ok(file) => {
            let size = file
                .metadata()
                .map_err(|e| io_error(&manifest_path, e))?
                .len();
            if size > MAX_MANIFEST {
                return Err(bad(format!(
                    "{size} bytes, over the limit of {MAX_MANIFEST}"
                )));
            }
            let mut bytes = vec![0u8; size as usize];
            read_exact_at(&file, &mut bytes, 0).map_err(|e| io_error(&manifest_path, e))?;
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
            Some(value)
        }
    };
    let mut tensors = Vec::new();
    match &manifest {
        Some(doc) => {
            tensors = manifest_order(&manifest_path, doc, |k, name, file| {
                if !plain_file_name(file) {
                    return Err(bad(format!(
                        "tensors[{k}].file \"{file}\" is not a plain file name inside the directory"
                    )));
                }
                npy_tensor(&dir.join(file), name.to_string())
            })?;
        }
        None => {
            let mut files = Vec::new();
            for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
                let entry = entry.map_err(|e| io_error(dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".npy") && entry.path().is_file() {
                    files.push(name);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(ReadError::NoCheckpoint {
                    path: dir.display().to_string(),
                });
            }
            for file in files {
                let path = dir.join(&file);
                tensors.push(npy_tensor(&path, npy_stem(&path))?);
            }
        }
    }
    Ok(Artifact {
        path: dir.to_path_buf(),
        format: Format::Npy,
        tensors,
        metadata: None,
        manifest,
        file: None,
        header_sha256: None,
        by_name: OnceLock::new(),
    })
}

// ---------------------------------------------------------------------------------------
// checkpoints: one safetensors file, or shards with a Hugging Face index

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

fn open_index(path: &Path) -> Result<Checkpoint, ReadError> {
    let bad = |message: String| ReadError::Index {
        path: path.display().to_string(),
        message,
    };
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
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut order: Vec<String> = Vec::new();
    let mut listed: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (tensor, file) in &raw.weight_map.0 {
        if !plain_file_name(file) {
            return Err(bad(format!(
                "tensor \"{tensor}\" is mapped to \"{file}\", not a plain file name beside the index"
            )));
        }
        if !order.contains(file) {
            order.push(file.clone());
        }
        listed.insert(tensor, file);
    }
    if order.is_empty() {
        return Err(bad("the weight_map lists no tensor".into()));
    }
    let mut files = Vec::with_capacity(order.len());
    for name in order {
        let artifact = Artifact::open(&dir.join(&name))?;
        if artifact.format() != Format::Safetensors {
            return Err(ReadError::NotSafetensors {
                path: dir.join(&name).display().to_string(),
                found: "an .npy file",
            });
        }
        for t in artifact.tensors() {
            match listed.get(t.name.as_str()) {
                Some(&f) if f == name => {}
                Some(&f) => {
                    return Err(bad(format!(
                        "tensor \"{}\" is in shard \"{name}\" but the index maps it to \"{f}\"",
                        t.name
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "tensor \"{}\" of shard \"{name}\" is not in the weight_map",
                        t.name
                    )));
                }
            }
        }
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
    for (tensor, file) in &raw.weight_map.0 {
        if !held.contains(&(file.as_str(), tensor.as_str())) {
            return Err(bad(format!(
                "the weight_map puts tensor \"{tensor}\" in \"{file}\", which does not hold it"
            )));
        }
    }
    let metadata = raw
        .metadata
        .unwrap_or_else(|| Value::Object(Default::default()));
    let sha256 = hex(&Sha256::digest(&bytes));
    Ok(Checkpoint::new(path, files, Some(metadata), sha256))
}

// ---------------------------------------------------------------------------------------
// npz

/// The zip end-of-central-directory signature, and its record's fixed length.
const ZIP_END: u32 = 0x0605_4b50;
const ZIP_END_LEN: u64 = 22;

/// Largest npz central directory accepted (eoi writes about 60 bytes per tensor).
pub const MAX_ZIP_DIRECTORY: u64 = 100_000_000;

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(eight(&b[at..at + 8]))
}

/// A stored member of a zip archive: its name and where its data lies.
struct ZipMember {
    name: String,
    data_at: u64,
    size: u64,
}

/// Reads the members of a zip archive (an .npz file), checking every record, size and
/// offset against the file before use. Only stored (uncompressed) members can be read in
/// place; a compressed one (numpy.savez_compressed) is refused with the reason.
fn zip_members(path: &Path, file: &File, size: u64) -> Result<Vec<ZipMember>, ReadError> {
    let bad = |message: String| ReadError::Zip {
        path: path.display().to_string(),
        message,
    };
    let read = |at: u64, len: u64| -> Result<Vec<u8>, ReadError> {
        let end = at.checked_add(len).filter(|&e| e <= size);
        if end.is_none() {
            return Err(bad(format!(
                "a record at byte {at} of {len} bytes runs past the end of the file (truncated?)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        read_exact_at(file, &mut buf, at).map_err(|e| io_error(path, e))?;
        Ok(buf)
    };
    // The end record: the last signature whose comment runs exactly to the end of the file.
    let tail_len = size.min(ZIP_END_LEN + 0xFFFF);
    let tail = read(size - tail_len, tail_len)?;
    let end = (0..tail.len().saturating_sub(ZIP_END_LEN as usize - 1))
        .rev()
        .find(|&k| {
            le32(&tail, k) == u64::from(ZIP_END)
                && k + ZIP_END_LEN as usize + le16(&tail, k + 20) as usize == tail.len()
        })
        .ok_or_else(|| {
            bad("no end-of-central-directory record (not a zip archive, or truncated)".into())
        })?;
    let end_at = size - tail_len + end as u64;
    let e = &tail[end..];
    let (mut count, mut dir_len, mut dir_at) = (le16(e, 10), le32(e, 12), le32(e, 16));
    if count == 0xFFFF || dir_len == 0xFFFF_FFFF || dir_at == 0xFFFF_FFFF {
        // Zip64: the locator just before the end record points at the zip64 end record.
        let locator_at = end_at
            .checked_sub(20)
            .ok_or_else(|| bad("zip64 fields but no zip64 locator".into()))?;
        let locator = read(locator_at, 20)?;
        if le32(&locator, 0) != 0x0706_4b50 {
            return Err(bad("zip64 fields but no zip64 locator".into()));
        }
        let record = read(le64(&locator, 8), 56)?;
        if le32(&record, 0) != 0x0606_4b50 {
            return Err(bad("the zip64 locator points at no zip64 end record".into()));
        }
        (count, dir_len, dir_at) = (le64(&record, 32), le64(&record, 40), le64(&record, 48));
    }
    if dir_len > MAX_ZIP_DIRECTORY {
        return Err(bad(format!(
            "a central directory of {dir_len} bytes, over the limit of {MAX_ZIP_DIRECTORY}"
        )));
    }
    if dir_at.checked_add(dir_len).is_none_or(|e| e > end_at) {
        return Err(bad("the central directory runs past its end record".into()));
    }
    let dir = read(dir_at, dir_len)?;
    // Each central header takes at least 46 bytes: a count beyond that is forged.
    if count > dir_len / 46 {
        return Err(bad(format!(
            "{count} members claimed in a {dir_len}-byte directory"
        )));
    }
    let mut members = Vec::with_capacity(count as usize);
    let mut at = 0usize;
    for k in 0..count {
        let header = dir
            .get(at..at + 46)
            .filter(|h| le32(h, 0) == 0x0201_4b50)
            .ok_or_else(|| bad(format!("central directory entry {k} is malformed")))?;
        let (flags, method) = (le16(header, 8), le16(header, 10));
        let (name_len, extra_len, comment_len) = (
            le16(header, 28) as usize,
            le16(header, 30) as usize,
            le16(header, 32) as usize,
        );
        let (mut compressed, mut size_, mut offset) =
            (le32(header, 20), le32(header, 24), le32(header, 42));
        let rest = dir
            .get(at + 46..at + 46 + name_len + extra_len + comment_len)
            .ok_or_else(|| {
                bad(format!(
                    "central directory entry {k} runs past the directory"
                ))
            })?;
        let name = std::str::from_utf8(&rest[..name_len])
            .map_err(|_| bad(format!("member {k} has a name that is not UTF-8")))?
            .to_string();
        // Zip64 extra field: the 64-bit values of the fields that are all ones, in order.
        let mut extra = &rest[name_len..name_len + extra_len];
        while extra.len() >= 4 {
            let (id, len) = (le16(extra, 0), le16(extra, 2) as usize);
            let body = extra
                .get(4..4 + len)
                .ok_or_else(|| bad(format!("member \"{name}\" has a malformed extra field")))?;
            if id == 1 {
                let mut values = body.chunks_exact(8).map(|c| le64(c, 0));
                for slot in [&mut size_, &mut compressed, &mut offset] {
                    if *slot == 0xFFFF_FFFF {
                        *slot = values.next().ok_or_else(|| {
                            bad(format!("member \"{name}\" has a short zip64 extra field"))
                        })?;
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        at += 46 + name_len + extra_len + comment_len;
        if flags & 1 != 0 {
            return Err(bad(format!("member \"{name}\" is encrypted")));
        }
        if method != 0 || compressed != size_ {
            return Err(bad(format!(
                "member \"{name}\" is compressed (method {method}); only stored members can be read in place: write the archive with numpy.savez, not savez_compressed"
            )));
        }
        let local = read(offset, 30)?;
        if le32(&local, 0) != u64::from(LOCAL_ZIP) {
            return Err(bad(format!(
                "member \"{name}\" has no local header at byte {offset}"
            )));
        }
        let data_at = offset + 30 + le16(&local, 26) + le16(&local, 28);
        if data_at.checked_add(size_).is_none_or(|e| e > dir_at) {
            return Err(bad(format!(
                "member \"{name}\" ({size_} bytes at byte {data_at}) runs into the central directory"
            )));
        }
        members.push(ZipMember {
            name,
            data_at,
            size: size_,
        });
    }
    Ok(members)
}

const LOCAL_ZIP: u32 = 0x0403_4b50;

fn open_npz(path: &Path, file: File, size: u64) -> Result<Artifact, ReadError> {
    let members = zip_members(path, &file, size)?;
    let shown = |member: &str| PathBuf::from(format!("{}:{member}", path.display()));
    let mut manifest = None;
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for m in &members {
        if !seen.insert(m.name.as_str()) {
            return Err(ReadError::Zip {
                path: path.display().to_string(),
                message: format!("member \"{}\" appears twice", m.name),
            });
        }
        if m.name == MANIFEST {
            let member_path = shown(MANIFEST);
            if m.size > MAX_MANIFEST {
                return Err(ReadError::Manifest {
                    path: member_path.display().to_string(),
                    message: format!("{} bytes, over the limit of {MAX_MANIFEST}", m.size),
                });
            }
            let mut bytes = vec![0u8; m.size as usize];
            read_exact_at(&file, &mut bytes, m.data_at).map_err(|e| io_error(path, e))?;
            manifest =
                Some(
                    serde_json::from_slice::<Value>(&bytes).map_err(|e| ReadError::Manifest {
                        path: member_path.display().to_string(),
                        message: format!("not JSON: {e}"),
                    })?,
                );
        } else if let Some(name) = m.name.strip_suffix(".npy") {
            let member_path = shown(&m.name);
            let (header, start) = read_npy_header(&member_path, &file, m.data_at, m.size)?;
            let info = npy_info(&member_path, name.to_string(), header, start, m.size)?;
            found.push(TensorInfo {
                file: path.to_path_buf(),
                start: m.data_at + info.start,
                ..info
            });
        }
    }
    let tensors = match &manifest {
        Some(doc) => manifest_order(&shown(MANIFEST), doc, |k, name, file| {
            let bad = |message: String| ReadError::Manifest {
                path: shown(MANIFEST).display().to_string(),
                message,
            };
            let wanted = format!("{name}.npy");
            if file != wanted {
                return Err(bad(format!(
                    "tensors[{k}].file is \"{file}\", the member of \"{name}\" is \"{wanted}\""
                )));
            }
            found
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| bad(format!("tensor \"{name}\" has no member {wanted}")))
        })?,
        None => found,
    };
    Ok(Artifact {
        path: path.to_path_buf(),
        format: Format::Npz,
        tensors,
        metadata: None,
        manifest,
        file: Some(file),
        header_sha256: None,
        by_name: OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A safetensors file from a raw header text and data bytes.
    fn safetensors_file(header: &[u8], data: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&(header.len() as u64).to_le_bytes())
            .unwrap();
        file.write_all(header).unwrap();
        file.write_all(data).unwrap();
        file
    }

    fn open_bytes(header: &str, data: &[u8]) -> Result<Artifact, ReadError> {
        let file = safetensors_file(header.as_bytes(), data);
        Artifact::open(file.path())
    }

    const GOOD: &str = r#"{"__metadata__":{"b":"2","a":"1"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"m":{"dtype":"BOOL","shape":[2,2],"data_offsets":[16,20]}}"#;

    fn good_data() -> Vec<u8> {
        let mut data: Vec<u8> = [1.0f32, -2.0, 0.5, 0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        data.extend([1, 1, 0, 1]);
        data
    }

    #[test]
    fn a_valid_file_reads_back_its_tensors_and_ordered_metadata() {
        let a = open_bytes(GOOD, &good_data()).unwrap();
        assert_eq!(a.format(), Format::Safetensors);
        let names: Vec<&str> = a.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "m"]);
        assert_eq!(
            a.metadata().unwrap(),
            &[("b".into(), "2".into()), ("a".into(), "1".into())]
        );
        let w = a.tensor("w").unwrap();
        assert_eq!(w.shape, [2, 2]);
        assert_eq!(a.read_f64(w).unwrap(), [1.0, -2.0, 0.5, 0.0]);
        let m = a.tensor("m").unwrap();
        assert_eq!(a.read_bytes(m).unwrap(), [1, 1, 0, 1]);
    }

    #[test]
    fn tensors_come_in_data_order_and_padding_is_allowed() {
        let header = r#"{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}    "#;
        let a = open_bytes(header, &[7, 9]).unwrap();
        assert_eq!(a.tensors()[0].name, "a");
        assert_eq!(a.tensors()[0].numel, 1);
        assert_eq!(a.read_f64(&a.tensors()[1]).unwrap(), [9.0]);
        assert!(a.metadata().is_none());
    }

    #[test]
    fn hostile_headers_get_precise_errors() {
        let tensor = |dtype: &str, shape: &str, offsets: &str| {
            format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#)
        };
        let cases: Vec<(String, Vec<u8>, &str)> = vec![
            (tensor("F99", "[1]", "[0,4]"), vec![0; 4], "unknown or unsupported dtype \"F99\""),
            (
                tensor("F32", "[4294967296,4294967296,16]", "[0,4]"),
                vec![0; 4],
                "overflows",
            ),
            (tensor("F32", "[2]", "[0,8]"), vec![0; 4], "holds only 4 bytes of data"),
            (tensor("F32", "[1]", "[4,0]"), vec![0; 4], "end before they begin"),
            (tensor("F32", "[2]", "[0,4]"), vec![0; 4], "need 8"),
            (tensor("F32", "[1]", "[0,4]"), vec![0; 8], "bytes 4 to 8 of the data belong to no tensor"),
            (
                r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#.into(),
                vec![0; 3],
                "overlap",
            ),
            (tensor("F32", "[-1]", "[0,4]"), vec![0; 4], "tensor \"t\""),
            (r#"{"__metadata__":{"k":1}}"#.into(), vec![], "must map strings to strings"),
            (
                r#"{"t":{"dtype":"U8","shape":[],"data_offsets":[0,1]},"t":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#.into(),
                vec![0],
                "appears twice",
            ),
            ("[1, 2]".into(), vec![], "does not start with '{'"),
        ];
        for (header, data, expected) in cases {
            let err = open_bytes(&header, &data).unwrap_err().to_string();
            assert!(err.contains(expected), "{header}: {err}");
        }
    }

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

    #[test]
    fn header_lengths_are_checked_before_any_allocation() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&(1u64 << 60).to_le_bytes()).unwrap();
        file.write_all(b"{}").unwrap();
        let err = Artifact::open(file.path()).unwrap_err();
        assert!(matches!(err, ReadError::HeaderTooLarge { length, .. } if length == 1 << 60));

        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&1000u64.to_le_bytes()).unwrap();
        file.write_all(b"{}").unwrap();
        let err = Artifact::open(file.path()).unwrap_err();
        assert!(matches!(
            err,
            ReadError::HeaderPastEnd {
                length: 1000,
                available: 2,
                ..
            }
        ));

        let file = tempfile::NamedTempFile::new().unwrap();
        let err = Artifact::open(file.path()).unwrap_err();
        assert!(matches!(err, ReadError::TooShort { size: 0, .. }));
    }

    #[test]
    fn names_must_be_utf8() {
        let mut header = br#"{"w"#.to_vec();
        header.extend([0xff, 0xfe]);
        header.extend(br#"":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#);
        let file = safetensors_file(&header, &[0]);
        let err = Artifact::open(file.path()).unwrap_err();
        assert!(
            matches!(err, ReadError::HeaderNotUtf8 { offset: 3, .. }),
            "{err}"
        );
    }

    fn npy_bytes(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = NPY_MAGIC.to_vec();
        out.extend([major, 0]);
        if major == 1 {
            out.extend((dict.len() as u16).to_le_bytes());
        } else {
            out.extend((dict.len() as u32).to_le_bytes());
        }
        out.extend(dict.as_bytes());
        out.extend(data);
        out
    }

    /// Opens `bytes` as `x.npy` (reads after the directory is gone fail, so it is leaked
    /// for the test's lifetime).
    fn open_npy(bytes: &[u8]) -> Result<Artifact, ReadError> {
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join("x.npy");
        fs::write(&path, bytes).unwrap();
        let result = Artifact::open(&path);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    #[test]
    fn npy_versions_and_dtypes_are_read() {
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        for major in [1, 2, 3] {
            let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
            let a = open_npy(&npy_bytes(major, dict, &f32s)).unwrap();
            let t = &a.tensors()[0];
            assert_eq!(
                (t.name.as_str(), t.shape.as_slice()),
                ("x", [2usize, 3].as_slice())
            );
            assert_eq!(a.read_f64(t).unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        }
        let halves: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7c00]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = open_npy(&npy_bytes(
            1,
            "{'descr':'<f2','fortran_order':False,'shape':(4,)}",
            &halves,
        ))
        .unwrap();
        assert_eq!(
            a.read_f64(&a.tensors()[0]).unwrap(),
            [1.0, -2.0, libm::ldexp(1.0, -24), f64::INFINITY]
        );
        for (descr, data, want) in [
            ("|b1", vec![1u8, 0], vec![1.0, 0.0]),
            ("|u1", vec![200, 3], vec![200.0, 3.0]),
            ("<f8", 2.5f64.to_le_bytes().repeat(2), vec![2.5, 2.5]),
        ] {
            let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
            let a = open_npy(&npy_bytes(1, &dict, &data)).unwrap();
            assert_eq!(a.read_f64(&a.tensors()[0]).unwrap(), want, "{descr}");
        }
    }

    #[test]
    fn bad_npy_files_are_refused_clearly() {
        let cases = [
            (
                npy_bytes(
                    1,
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
                    &[0; 4],
                ),
                "Fortran order",
            ),
            (
                npy_bytes(
                    1,
                    "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
                    &[0; 4],
                ),
                "unsupported .npy dtype '>f4'",
            ),
            (
                npy_bytes(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                    &[0; 4],
                ),
                "describes 8 bytes of data but the file holds 4",
            ),
            (
                npy_bytes(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 8), }",
                    &[],
                ),
                "overflows",
            ),
            (
                npy_bytes(1, "{'descr': '<f4', 'shape': (1,), }", &[0; 4]),
                "no 'fortran_order'",
            ),
            (
                npy_bytes(
                    1,
                    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                    &[0; 4],
                ),
                "bad .npy header",
            ),
            (b"\x93NUMPY\x04\x00\x00\x00".to_vec(), "version 4.0"),
        ];
        for (bytes, expected) in cases {
            let err = open_npy(&bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let mut huge = NPY_MAGIC.to_vec();
        huge.extend([2, 0]);
        huge.extend(u32::MAX.to_le_bytes());
        let err = open_npy(&huge).unwrap_err().to_string();
        assert!(err.contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn manifests_may_not_point_outside_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(MANIFEST),
            r#"{"tensors":[{"name":"w","file":"../w.npy","dtype":"f32","shape":[1]}]}"#,
        )
        .unwrap();
        let err = Artifact::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a plain file name"), "{err}");
    }

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

//! Output writers. Every format lays out its tensors from their names, dtypes and shapes
//! before any data exists, then takes each tensor's bytes in any order (layers are written
//! as they are generated, in parallel), and finally commits atomically: the output appears
//! whole under its name, or not at all, and a failed run leaves an existing output untouched.

pub mod npy;
pub mod npz;
pub mod pair;
pub mod safetensors;
pub mod shards;
pub mod stream;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

use crate::error::Error;
use crate::layer::Dtype;
use crate::layer::Format;
use crate::records::Provenance;
use crate::tensor::RowBlocks;

/// A tensor of the output, known before its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product::<u64>() * self.dtype.size() as u64
    }
}

/// A tensor copied byte for byte from a validated safetensors file (`generate --base`), or
/// from a tensor of the output itself (a tied parameter): its name, dtype and shape as
/// stored there, and where its data lies.
#[derive(Debug)]
pub struct Copied {
    pub name: String,
    pub dtype: crate::layer::Dtype,
    pub shape: Vec<usize>,
    pub nbytes: u64,
    pub from: CopyFrom,
}

/// Where a copied tensor's bytes come from.
#[derive(Debug)]
pub enum CopyFrom {
    /// A file: a handle on the file that was validated, and where the data starts in it.
    File {
        source: std::sync::Arc<File>,
        start: u64,
    },
    /// The generated tensor of this name in the same output file, once it is written (a
    /// tied parameter gets its layer's weight bytes).
    Tensor(String),
}

/// An output being written.
pub trait Output: Sync {
    /// Where tensor `index` (in the order given to [`create`]) goes.
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error>;

    /// Moves the finished output into place.
    fn commit(self: Box<Self>) -> Result<(), Error>;

    /// Total bytes of the output.
    fn bytes(&self) -> u64;
}

/// An output that moves into place in two steps, so that two outputs can be moved into
/// place together, both or neither ([`pair::PairedOutput`]): [`Self::finish`] does all the
/// work that can fail for lack of space or a bad source, [`Self::place`] only renames.
pub trait TwoStep: Output {
    /// Completes the output where it is staged: copied tensors, index and copied files
    /// written; nothing is at the destination yet.
    fn finish(&mut self) -> Result<(), Error>;

    /// Moves the finished output into place with renames only. It runs with interruptions
    /// held off ([`crate::interrupt::uninterrupted`]), so it stages and unregisters nothing.
    fn place(&mut self) -> Result<(), Error>;
}

enum SinkFile<'a> {
    Shared(&'a File),
    Owned(File),
    /// A stream written in order ([`stream::StreamOutput`]).
    Stream(&'a Mutex<stream::StreamState>),
}

/// Where one tensor's bytes go: positional writes within the tensor's region of a file, from
/// any thread. It checks every write against the tensor's size and, at the end, that every
/// byte was written, so a bug can never leave a short or overlong tensor in a file.
pub struct TensorSink<'a> {
    file: SinkFile<'a>,
    /// File offset of the tensor's first byte.
    base: u64,
    info: &'a TensorInfo,
    written: AtomicU64,
    /// For a zip member: the CRC-32 of the bytes so far, taken block by block.
    crc: Option<BlockCrcs<'a>>,
}

/// The CRC-32 of a member written in blocks, in any order, from any thread: each block's CRC
/// with its offset and length, combined in order when the tensor is complete.
struct BlockCrcs<'a> {
    blocks: Mutex<Vec<(u64, u64, crc32fast::Hasher)>>,
    /// The CRC of the member's bytes before the tensor (its .npy header).
    prefix: crc32fast::Hasher,
    /// Where the member's CRC goes.
    result: &'a OnceLock<u32>,
}

impl<'a> TensorSink<'a> {
    fn new(file: SinkFile<'a>, base: u64, info: &'a TensorInfo) -> TensorSink<'a> {
        TensorSink {
            file,
            base,
            info,
            written: AtomicU64::new(0),
            crc: None,
        }
    }

    /// Also computes the CRC-32 of `prefix` followed by the tensor's bytes, into `result`
    /// when the tensor is finished.
    fn with_crc(mut self, prefix: crc32fast::Hasher, result: &'a OnceLock<u32>) -> TensorSink<'a> {
        self.crc = Some(BlockCrcs {
            blocks: Mutex::new(Vec::new()),
            prefix,
            result,
        });
        self
    }

    /// Writes `bytes` at byte `offset` of the tensor.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if offset + bytes.len() as u64 > self.info.nbytes() {
            return Err(io::Error::other(format!(
                "tensor \"{}\" was written past its end",
                self.info.name
            )));
        }
        match &self.file {
            SinkFile::Shared(f) => write_all_at(f, bytes, self.base + offset)?,
            SinkFile::Owned(f) => write_all_at(f, bytes, self.base + offset)?,
            SinkFile::Stream(state) => state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_at(self.base + offset, bytes)?,
        }
        if let Some(crc) = &self.crc {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(bytes);
            crc.blocks.lock().unwrap_or_else(|e| e.into_inner()).push((
                offset,
                bytes.len() as u64,
                hasher,
            ));
        }
        self.written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Checks that the whole tensor was written.
    pub fn finish(self) -> Result<(), Error> {
        let written = self.written.load(Ordering::Relaxed);
        if written != self.info.nbytes() {
            return Err(Error::Internal(format!(
                "tensor \"{}\" got {written} bytes, expected {}",
                self.info.name,
                self.info.nbytes()
            )));
        }
        if let Some(crc) = self.crc {
            let mut blocks = crc.blocks.into_inner().unwrap_or_else(|e| e.into_inner());
            blocks.sort_by_key(|b| b.0);
            let mut hasher = crc.prefix;
            let mut at = 0;
            for (offset, len, block) in blocks {
                if offset != at {
                    return Err(Error::Internal(format!(
                        "tensor \"{}\" was written in overlapping blocks",
                        self.info.name
                    )));
                }
                hasher.combine(&block);
                at += len;
            }
            // A sink is finished once; a second value would be a bug, and is ignored.
            let _ = crc.result.set(hasher.finalize());
        }
        Ok(())
    }
}

thread_local! {
    /// Each thread's encoded block, kept from block to block and tensor to tensor so that the
    /// kernel does not map and zero a fresh megabyte for every block.
    static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tensors larger than this are encoded by several threads at once.
const PARALLEL_BYTES: u64 = 8 << 20;

/// Encodes `tensor` as `dtype` into tensor `index` of `output`, in blocks of about 1 MiB
/// written at their offsets; large tensors are split among threads. The bytes are the same
/// whichever thread encodes which block.
pub fn write_tensor<T: RowBlocks>(
    output: &dyn Output,
    index: usize,
    tensor: &T,
    dtype: Dtype,
) -> Result<(), Error> {
    let sink = output.tensor(index)?;
    crate::tensor::check_writable(dtype).map_err(|e| Error::Internal(e.to_string()))?;
    let step = tensor.block_rows(dtype);
    let row_bytes = (tensor.row_len() * dtype.size()) as u64;
    let blocks = tensor.rows().div_ceil(step);
    let encode_block = |values: &mut Vec<T::Elem>, block: usize| -> io::Result<()> {
        ENCODED.with_borrow_mut(|bytes| {
            let first = block * step;
            bytes.clear();
            tensor.encode_rows(first, step.min(tensor.rows() - first), dtype, values, bytes);
            sink.write_at(first as u64 * row_bytes, bytes)
        })
    };
    let result = if sink.info.nbytes() > PARALLEL_BYTES {
        (0..blocks)
            .into_par_iter()
            .try_for_each_init(Vec::new, encode_block)
    } else {
        let mut values = Vec::new();
        (0..blocks).try_for_each(|b| encode_block(&mut values, b))
    };
    result.map_err(|e| Error::io(format!("cannot write tensor \"{}\"", sink.info.name), e))?;
    sink.finish()
}

#[cfg(unix)]
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

#[cfg(windows)]
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Whether an output is one file or a directory of files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    File,
    Directory,
}

/// A directory may be replaced only if it is empty or an earlier output of eoi (it has eoi's
/// npy manifest or sharded index, or, written by `generate --base DIR` from an unsharded
/// checkpoint, a `model.safetensors` whose metadata eoi wrote), so `--force` can never
/// delete an unrelated directory.
pub fn check_replaceable(path: &Path) -> Result<(), Error> {
    let records_eoi = |file: &str, pointer: &str| {
        fs::read(path.join(file))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|v| v.pointer(pointer).is_some())
    };
    let key = crate::records::VERSION_KEY;
    let ours = records_eoi(npy::MANIFEST, &format!("/{key}"))
        || records_eoi(shards::INDEX, &format!("/metadata/{key}"))
        || safetensors::written_by_eoi(&path.join(crate::read::SINGLE));
    let empty = fs::read_dir(path)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if ours || empty {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "'{}' is a directory that eoi did not write (it has no eoi {}, {} or {}); refusing to replace it even with --force",
            path.display(),
            npy::MANIFEST,
            shards::INDEX,
            crate::read::SINGLE
        )))
    }
}

/// Where the output goes and whether it may replace what is there.
#[derive(Clone, Debug)]
pub struct Destination {
    pub path: PathBuf,
    pub force: bool,
}

impl Destination {
    /// Checks, before any work, that an output of `container` can be placed: its directory
    /// exists, and nothing is in the way unless `force` is given (and then only a file for a
    /// file, and for a directory only one that eoi wrote, or an empty one).
    pub fn check(&self, container: Container) -> Result<(), Error> {
        let parent = self.parent();
        if !parent.is_dir() {
            let what = if parent.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(Error::Usage(format!(
                "cannot write '{}': the directory '{}' {what}",
                self.path.display(),
                parent.display()
            )));
        }
        match fs::symlink_metadata(&self.path) {
            Err(_) => Ok(()),
            Ok(_) if !self.force => Err(Error::Usage(format!(
                "'{}' already exists; pass --force to replace it",
                self.path.display()
            ))),
            Ok(meta) => match container {
                Container::File if meta.is_dir() => Err(Error::Usage(format!(
                    "'{}' is a directory; this output is one file",
                    self.path.display()
                ))),
                Container::Directory if !meta.is_dir() => Err(Error::Usage(format!(
                    "'{}' exists and is not a directory; this output is a directory",
                    self.path.display()
                ))),
                Container::Directory => check_replaceable(&self.path),
                Container::File => Ok(()),
            },
        }
    }

    /// Moves a complete staged directory to the destination. An existing destination (checked
    /// replaceable before the run) is moved aside first and deleted after.
    pub(crate) fn place_directory(&self, staged: &Path) -> Result<(), Error> {
        let dest = &self.path;
        let moved = |e| {
            Error::io(
                format!("cannot move the output into place at '{}'", display(dest)),
                e,
            )
        };
        if dest.exists() {
            check_replaceable(dest)?;
            let aside = staging(0o700)
                .tempdir_in(self.parent())
                .map_err(moved)?
                .keep();
            let old = aside.join("old");
            fs::rename(dest, &old).map_err(moved)?;
            if let Err(e) = fs::rename(staged, dest) {
                // Put the old output back: a failed run leaves the destination as it was.
                if fs::rename(&old, dest).is_ok() {
                    let _ = fs::remove_dir(&aside);
                }
                return Err(moved(e));
            }
            fs::remove_dir_all(&aside).map_err(|e| {
                Error::io(
                    format!("cannot remove the replaced output in '{}'", display(&aside)),
                    e,
                )
            })
        } else {
            fs::rename(staged, dest).map_err(moved)
        }
    }

    pub fn parent(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// Starts an output of `format` at `destination` holding `tensors`, recording `provenance`.
pub fn create(
    format: Format,
    destination: &Destination,
    tensors: Vec<TensorInfo>,
    provenance: &Provenance,
) -> Result<Box<dyn Output>, Error> {
    match format {
        Format::Safetensors => Ok(Box::new(safetensors::SafetensorsOutput::create(
            destination,
            tensors,
            Vec::new(),
            provenance,
        )?)),
        Format::Npy => Ok(Box::new(npy::NpyOutput::create(
            destination,
            tensors,
            provenance,
        )?)),
        Format::Npz => Ok(Box::new(npz::NpzOutput::create(
            destination,
            tensors,
            provenance,
        )?)),
    }
}

/// Writes a small file (a spec, an index) atomically: staged beside the destination and
/// renamed into place, never over an existing file unless the destination allows it.
pub fn place_file(destination: &Destination, bytes: &[u8]) -> Result<(), Error> {
    let path = &destination.path;
    let cannot = |e| Error::io(format!("cannot write '{}'", display(path)), e);
    let (staged, _registered) = crate::interrupt::create_staged(
        || staging(0o666).tempfile_in(destination.parent()),
        |f| f.path(),
    )
    .map_err(cannot)?;
    fs::write(staged.path(), bytes).map_err(cannot)?;
    let placed = if destination.force {
        staged.persist(path).map(|_| ())
    } else {
        staged.persist_noclobber(path).map(|_| ())
    };
    placed.map_err(|e| cannot(e.error))
}

/// A builder for the hidden temporary file or directory that an output is staged in. It gets
/// the permissions of an ordinary new file (`mode` less the umask), not tempfile's 0600.
fn staging(
    #[cfg_attr(not(unix), allow(unused_variables))] mode: u32,
) -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".eoi-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    builder
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

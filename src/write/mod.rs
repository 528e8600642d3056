//! Output writers. Every format lays out its tensors from their names, dtypes and shapes
//! before any data exists, then takes each tensor's bytes in any order (layers are written
//! as they are generated, in parallel), and finally commits atomically: the output appears
//! whole under its name, or not at all, and a failed run leaves an existing output untouched.

pub mod npy;
pub mod safetensors;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::provenance::Provenance;
use crate::spec::Format;
use crate::tensor::Dtype;

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

/// Produces one tensor's bytes, in row-major order.
pub type Fill<'a> = &'a mut dyn FnMut(&mut dyn Write) -> io::Result<()>;

/// An output being written.
pub trait Output: Sync {
    /// Writes tensor `index` (in the order given to [`create`]); `fill` must write exactly
    /// its byte size.
    fn write_tensor(&self, index: usize, fill: Fill<'_>) -> Result<(), Error>;

    /// Moves the finished output into place.
    fn commit(self: Box<Self>) -> Result<(), Error>;

    /// Total bytes of the output.
    fn bytes(&self) -> u64;
}

/// Where the output goes and whether it may replace what is there.
#[derive(Clone, Debug)]
pub struct Destination {
    pub path: PathBuf,
    pub force: bool,
}

impl Destination {
    /// Checks, before any work, that the output can be placed: its directory exists, and
    /// nothing is in the way unless `force` is given.
    pub fn check(&self, format: Format) -> Result<(), Error> {
        let parent = self.parent();
        if !parent.is_dir() {
            return Err(Error::Usage(format!(
                "cannot write '{}': the directory '{}' does not exist",
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
            Ok(meta) => match format {
                Format::Safetensors if meta.is_dir() => Err(Error::Usage(format!(
                    "'{}' is a directory; a safetensors output is one file",
                    self.path.display()
                ))),
                Format::Npy if !meta.is_dir() => Err(Error::Usage(format!(
                    "'{}' exists and is not a directory; an npy output is a directory",
                    self.path.display()
                ))),
                Format::Npy => npy::check_replaceable(&self.path),
                Format::Safetensors => Ok(()),
            },
        }
    }

    fn parent(&self) -> PathBuf {
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
    destination.check(format)?;
    match format {
        Format::Safetensors => Ok(Box::new(safetensors::SafetensorsOutput::create(
            destination,
            tensors,
            provenance,
        )?)),
        Format::Npy => Ok(Box::new(npy::NpyOutput::create(
            destination,
            tensors,
            provenance,
        )?)),
    }
}

/// Counts what `fill` writes and checks it against the tensor's size, so that a bug can never
/// leave a short or overlong tensor in a file.
pub(crate) fn fill_exactly(
    info: &TensorInfo,
    out: &mut dyn Write,
    fill: Fill<'_>,
) -> Result<(), Error> {
    struct Counting<'a> {
        inner: &'a mut dyn Write,
        count: u64,
    }
    impl Write for Counting<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.count += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    let mut counting = Counting {
        inner: out,
        count: 0,
    };
    fill(&mut counting)
        .map_err(|e| Error::io(format!("cannot write tensor \"{}\"", info.name), e))?;
    counting
        .flush()
        .map_err(|e| Error::io(format!("cannot write tensor \"{}\"", info.name), e))?;
    if counting.count != info.nbytes() {
        return Err(Error::Internal(format!(
            "tensor \"{}\" produced {} bytes, expected {}",
            info.name,
            counting.count,
            info.nbytes()
        )));
    }
    Ok(())
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

//! The library's error type. Each variant knows its exit code; only `main` prints.

use std::io;

use crate::read::ReadError;
use crate::spec::SpecError;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be used: exit 2.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The request cannot be carried out as given (an input that cannot be read, an output
    /// that exists without `--force`, a missing output directory): exit 2.
    #[error("{0}")]
    Usage(String),
    /// An artifact (safetensors file, npy directory) cannot be read: missing, truncated or
    /// malformed. Exit 2.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Reading or writing failed while doing the work: exit 1.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A check of the tool's own work failed; a bug to report: exit 1.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Spec(_) | Error::Usage(_) | Error::Read(_) => 2,
            Error::Io { .. } | Error::Internal(_) => 1,
        }
    }

    /// Advice for a failure the message alone does not explain how to fix.
    pub fn help(&self) -> Option<&'static str> {
        match self {
            Error::Io { source, .. } => match source.kind() {
                io::ErrorKind::FileTooLarge => Some(
                    "the output is larger than the file-size limit of this process (ulimit -f); raise the limit, or split the output with --max-shard-size",
                ),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Some(
                    "the disk (or your quota) is full; free some space or write the output elsewhere",
                ),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether this is a write to a closed pipe (`eoi ... | head`), which ends a run quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

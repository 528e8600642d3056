//! Safetensors to a stream (`-o -`, standard output): the same header and bytes as a file,
//! written strictly in data order. Tensors arrive from several threads at their offsets, as
//! for a file; a write that is not the next in order waits in memory until it is, so the run
//! must produce tensors in about data order (see `generate`'s passes) to keep that bounded. Nothing is staged or renamed: a failed run leaves a truncated stream.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use super::{Output, SinkFile, TensorInfo, TensorSink, safetensors};
use crate::error::Error;
use crate::records::Provenance;

/// What the stream has received so far.
pub(crate) struct StreamState {
    writer: Box<dyn Write + Send>,
    /// Bytes written to the stream so far (header included).
    next: u64,
    /// Blocks that arrived before their turn, by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    /// The kind of the first write error: later writes fail without touching the stream.
    failed: Option<io::ErrorKind>,
}

impl StreamState {
    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(kind) = self.failed {
            return Err(io::Error::new(
                kind,
                "an earlier write to the stream failed",
            ));
        }
        if let Err(e) = self.writer.write_all(bytes) {
            self.failed = Some(e.kind());
            return Err(e);
        }
        self.next += bytes.len() as u64;
        Ok(())
    }

    /// Writes `bytes` at stream offset `at`: now if it is the next in order (and then every
    /// waiting block that follows), else when its turn comes.
    pub(crate) fn write_at(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if at < self.next || self.pending.contains_key(&at) {
            return Err(io::Error::other(format!(
                "stream offset {at} was written twice"
            )));
        }
        if at > self.next {
            self.pending.insert(at, bytes.to_vec());
            return Ok(());
        }
        self.emit(bytes)?;
        while let Some(block) = self.pending.remove(&self.next) {
            self.emit(&block)?;
        }
        Ok(())
    }
}

/// A safetensors file written to a stream.
pub struct StreamOutput {
    tensors: Vec<TensorInfo>,
    /// Stream offset of each tensor's first byte, in the order of `tensors`.
    offsets: Vec<u64>,
    total: u64,
    state: Mutex<StreamState>,
}

impl StreamOutput {
    /// Writes the header of a file holding `tensors` to `writer` (`shown` names the stream in
    /// messages); the tensors follow through [`Output::tensor`].
    pub fn create(
        writer: Box<dyn Write + Send>,
        tensors: Vec<TensorInfo>,
        provenance: &Provenance,
        shown: &Path,
    ) -> Result<StreamOutput, Error> {
        let (header, relative) = safetensors::layout(&tensors, &provenance.metadata);
        safetensors::check_header(header.len(), tensors.len(), shown)?;
        let data_start = 8 + header.len() as u64;
        let total = data_start + tensors.iter().map(TensorInfo::nbytes).sum::<u64>();
        let mut state = StreamState {
            writer,
            next: 0,
            pending: BTreeMap::new(),
            failed: None,
        };
        let cannot = |e| Error::io(format!("cannot write to {}", shown.display()), e);
        state
            .emit(&(header.len() as u64).to_le_bytes())
            .and_then(|()| state.emit(&header))
            .map_err(cannot)?;
        Ok(StreamOutput {
            offsets: relative.iter().map(|r| r + data_start).collect(),
            tensors,
            total,
            state: Mutex::new(state),
        })
    }
}

impl Output for StreamOutput {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        Ok(TensorSink::new(
            SinkFile::Stream(&self.state),
            self.offsets[index],
            &self.tensors[index],
        ))
    }

    fn commit(self: Box<Self>) -> Result<(), Error> {
        let mut state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        if state.next != self.total || !state.pending.is_empty() {
            return Err(Error::Internal(format!(
                "the stream got {} of {} bytes in order",
                state.next, self.total
            )));
        }
        state
            .writer
            .flush()
            .map_err(|e| Error::io("cannot write to standard output", e))
    }

    fn bytes(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// A writer into a shared buffer.
    struct Shared(Arc<StdMutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocks_out_of_order_wait_for_their_turn() {
        let buffer = Arc::new(StdMutex::new(Vec::new()));
        let mut state = StreamState {
            writer: Box::new(Shared(Arc::clone(&buffer))),
            next: 0,
            pending: BTreeMap::new(),
            failed: None,
        };
        state.write_at(6, b"gh").unwrap();
        state.write_at(2, b"cdef").unwrap();
        assert!(buffer.lock().unwrap().is_empty());
        state.write_at(0, b"ab").unwrap();
        assert_eq!(buffer.lock().unwrap().as_slice(), b"abcdefgh");
        assert!(state.pending.is_empty());
        assert!(
            state.write_at(4, b"xx").is_err(),
            "a second write of a block"
        );
    }
}

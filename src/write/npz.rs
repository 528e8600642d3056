//! The npz writer: one NumPy `.npz` archive, a zip of stored (uncompressed) members: first
//! `manifest.json` (the provenance and the list of tensors, as in an npy directory), then one
//! `<tensor name>.npy` per tensor, the same bytes as the npy writer's files, in the plan's
//! order. `numpy.load` reads it as a mapping from tensor names to arrays.
//!
//! Every size is known from the plan, so every member's place is fixed before any data exists
//! and tensors are written at their offsets as layers finish, in any order, like the other
//! writers. A member's CRC-32 is combined from the CRCs of the blocks written into it and
//! put into its local header, and the central directory written, when the archive is
//! committed. The bytes are deterministic: fixed member order, the DOS timestamp 1980-01-01
//! 00:00, UTF-8 names, no extra fields but zip64's. Zip64 fields appear only where the zip
//! specification (PKWARE APPNOTE 6.3) needs them: a member of 4 GiB or more, an offset past
//! 4 GiB, or more than 65535 members.
//!
//! The container is written here rather than with a zip crate because the whole format
//! needed is three fixed records and a CRC; the crates at hand stream a member at a time
//! from one thread, while layers arrive in parallel and out of order.

use std::path::Path;
use std::sync::OnceLock;

use tempfile::NamedTempFile;

use super::{
    Destination, Output, SinkFile, TensorInfo, TensorSink, display, npy, staging, write_all_at,
};
use crate::error::Error;
use crate::interrupt::{self, Staged};
use crate::records::Provenance;

/// Sizes and offsets at or above this are stored in zip64 fields.
const ZIP32_MAX: u64 = 0xFFFF_FFFF;

/// Members beyond this count need the zip64 end records.
const MEMBERS_MAX: usize = 0xFFFF;

/// The DOS date of 1980-01-01 (time 00:00:00 is 0).
const DOS_DATE: u16 = (1 << 5) | 1;

/// General purpose flag bit 11: the name is UTF-8.
const UTF8: u16 = 1 << 11;

const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
const END_SIGNATURE: u32 = 0x0605_4b50;
const ZIP64_END_SIGNATURE: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;

/// Offset of the CRC-32 field in a local file header.
const LOCAL_CRC_AT: u64 = 14;

/// One member of the archive.
struct Member {
    name: String,
    /// Offset of its local file header.
    offset: u64,
    /// Bytes of its data (the .npy header and tensor, or the manifest).
    size: u64,
    /// Bytes of the local header (fixed part, name and extra field).
    local_len: u64,
}

impl Member {
    fn zip64_size(&self) -> bool {
        self.size >= ZIP32_MAX
    }

    fn data_at(&self) -> u64 {
        self.offset + self.local_len
    }
}

/// Little-endian record building.
struct Record(Vec<u8>);

impl Record {
    fn u16(mut self, v: u16) -> Record {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(mut self, v: u32) -> Record {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Record {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, b: &[u8]) -> Record {
        self.0.extend_from_slice(b);
        self
    }
}

/// A size or offset for a 32-bit field: itself, or all ones when zip64 holds it.
fn field32(v: u64) -> u32 {
    if v >= ZIP32_MAX { u32::MAX } else { v as u32 }
}

/// The version needed to extract: 2.0 for stored members, 4.5 with zip64.
fn version(zip64: bool) -> u16 {
    if zip64 { 45 } else { 20 }
}

fn local_header(member: &Member, crc: u32) -> Vec<u8> {
    let zip64 = member.zip64_size();
    let extra = if zip64 {
        Record(Vec::new())
            .u16(1)
            .u16(16)
            .u64(member.size)
            .u64(member.size)
            .0
    } else {
        Vec::new()
    };
    Record(Vec::with_capacity(30 + member.name.len() + extra.len()))
        .u32(LOCAL_SIGNATURE)
        .u16(version(zip64))
        .u16(UTF8)
        .u16(0) // stored
        .u16(0) // time
        .u16(DOS_DATE)
        .u32(crc)
        .u32(field32(member.size))
        .u32(field32(member.size))
        .u16(member.name.len() as u16)
        .u16(extra.len() as u16)
        .bytes(member.name.as_bytes())
        .bytes(&extra)
        .0
}

fn central_header(member: &Member, crc: u32) -> Vec<u8> {
    let mut extra = Record(Vec::new());
    if member.zip64_size() {
        extra = extra.u64(member.size).u64(member.size);
    }
    if member.offset >= ZIP32_MAX {
        extra = extra.u64(member.offset);
    }
    let extra = if extra.0.is_empty() {
        Vec::new()
    } else {
        Record(Vec::new())
            .u16(1)
            .u16(extra.0.len() as u16)
            .bytes(&extra.0)
            .0
    };
    let zip64 = !extra.is_empty();
    Record(Vec::with_capacity(46 + member.name.len() + extra.len()))
        .u32(CENTRAL_SIGNATURE)
        .u16(version(zip64)) // made by: MS-DOS attributes, this version
        .u16(version(zip64))
        .u16(UTF8)
        .u16(0)
        .u16(0)
        .u16(DOS_DATE)
        .u32(crc)
        .u32(field32(member.size))
        .u32(field32(member.size))
        .u16(member.name.len() as u16)
        .u16(extra.len() as u16)
        .u16(0) // comment
        .u16(0) // disk
        .u16(0) // internal attributes
        .u32(0) // external attributes
        .u32(field32(member.offset))
        .bytes(member.name.as_bytes())
        .bytes(&extra)
        .0
}

/// The central directory's size for `members`, computed without CRCs.
fn central_len(members: &[Member]) -> u64 {
    members
        .iter()
        .map(|m| central_header(m, 0).len() as u64)
        .sum()
}

/// The end records: zip64 end record and locator when needed, then the classic end record.
fn end_records(count: usize, directory_at: u64, directory_len: u64) -> Vec<u8> {
    let zip64 = count >= MEMBERS_MAX || directory_at >= ZIP32_MAX || directory_len >= ZIP32_MAX;
    let mut out = Vec::new();
    if zip64 {
        let end64_at = directory_at + directory_len;
        out = Record(out)
            .u32(ZIP64_END_SIGNATURE)
            .u64(44)
            .u16(45)
            .u16(45)
            .u32(0)
            .u32(0)
            .u64(count as u64)
            .u64(count as u64)
            .u64(directory_len)
            .u64(directory_at)
            .u32(ZIP64_LOCATOR_SIGNATURE)
            .u32(0)
            .u64(end64_at)
            .u32(1)
            .0;
    }
    let count16 = if count >= MEMBERS_MAX {
        u16::MAX
    } else {
        count as u16
    };
    Record(out)
        .u32(END_SIGNATURE)
        .u16(0)
        .u16(0)
        .u16(count16)
        .u16(count16)
        .u32(field32(directory_len))
        .u32(field32(directory_at))
        .u16(0)
        .0
}

/// An npz archive being written: a hidden temporary file beside the destination, sized, with
/// every local header, .npy header and the manifest in place before any tensor data.
pub struct NpzOutput {
    file: NamedTempFile,
    /// Removes the file if the run is interrupted.
    _staged: Staged,
    destination: Destination,
    tensors: Vec<TensorInfo>,
    /// The manifest, then one member per tensor.
    members: Vec<Member>,
    manifest_crc: u32,
    /// The CRC-32 of the .npy header of each tensor's member.
    header_crcs: Vec<crc32fast::Hasher>,
    /// Each tensor member's CRC-32, set when its tensor is complete.
    crcs: Vec<OnceLock<u32>>,
    directory_at: u64,
    total: u64,
}

/// The member name of a tensor.
pub fn member_name(tensor: &str) -> String {
    format!("{tensor}.npy")
}

impl NpzOutput {
    pub fn create(
        destination: &Destination,
        tensors: Vec<TensorInfo>,
        provenance: &Provenance,
    ) -> Result<NpzOutput, Error> {
        let context = || format!("cannot write '{}'", display(&destination.path));
        let manifest = npy::manifest(provenance, &tensors);
        let headers: Vec<Vec<u8>> = tensors.iter().map(npy::header).collect::<Result<_, _>>()?;
        let mut members = Vec::with_capacity(tensors.len() + 1);
        let mut at = 0u64;
        let sizes = std::iter::once((npy::MANIFEST.to_string(), manifest.len() as u64)).chain(
            tensors
                .iter()
                .zip(&headers)
                .map(|(t, h)| (member_name(&t.name), h.len() as u64 + t.nbytes())),
        );
        for (name, size) in sizes {
            if name.len() > u16::MAX as usize {
                return Err(Error::Usage(format!(
                    "the npz member name \"{}...\" is longer than a zip archive allows (65535 bytes)",
                    name.chars().take(40).collect::<String>()
                )));
            }
            let mut member = Member {
                name,
                offset: at,
                size,
                local_len: 0,
            };
            member.local_len = local_header(&member, 0).len() as u64;
            at = member.data_at() + size;
            members.push(member);
        }
        let directory_at = at;
        let directory_len = central_len(&members);
        let total = directory_at
            + directory_len
            + end_records(members.len(), directory_at, directory_len).len() as u64;

        let (file, staged) = interrupt::create_staged(
            || staging(0o666).tempfile_in(destination.parent()),
            |f| f.path(),
        )
        .map_err(|e| Error::io(context(), e))?;
        let manifest_crc = crc32fast::hash(&manifest);
        let written = file.as_file().set_len(total).and_then(|()| {
            let m = &members[0];
            write_all_at(file.as_file(), &local_header(m, manifest_crc), m.offset)?;
            write_all_at(file.as_file(), &manifest, m.data_at())?;
            for (m, h) in members[1..].iter().zip(&headers) {
                write_all_at(file.as_file(), &local_header(m, 0), m.offset)?;
                write_all_at(file.as_file(), h, m.data_at())?;
            }
            Ok(())
        });
        written.map_err(|e| Error::io(context(), e))?;
        let header_crcs = headers
            .iter()
            .map(|h| {
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(h);
                hasher
            })
            .collect();
        Ok(NpzOutput {
            file,
            _staged: staged,
            destination: destination.clone(),
            crcs: tensors.iter().map(|_| OnceLock::new()).collect(),
            tensors,
            members,
            manifest_crc,
            header_crcs,
            directory_at,
            total,
        })
    }
}

impl Output for NpzOutput {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        let member = &self.members[index + 1];
        let header_len = member.size - self.tensors[index].nbytes();
        Ok(TensorSink::new(
            SinkFile::Shared(self.file.as_file()),
            member.data_at() + header_len,
            &self.tensors[index],
        )
        .with_crc(self.header_crcs[index].clone(), &self.crcs[index]))
    }

    fn commit(self: Box<Self>) -> Result<(), Error> {
        let path = &self.destination.path;
        let mut crcs = vec![self.manifest_crc];
        for (t, crc) in self.tensors.iter().zip(&self.crcs) {
            match crc.get() {
                Some(&c) => crcs.push(c),
                None => {
                    return Err(Error::Internal(format!(
                        "tensor \"{}\" was never written",
                        t.name
                    )));
                }
            }
        }
        let mut directory = Vec::new();
        for (m, &crc) in self.members.iter().zip(&crcs) {
            directory.extend_from_slice(&central_header(m, crc));
        }
        directory.extend_from_slice(&end_records(
            self.members.len(),
            self.directory_at,
            directory.len() as u64,
        ));
        let file = self.file.as_file();
        let written = self.members[1..]
            .iter()
            .zip(&crcs[1..])
            .try_for_each(|(m, crc)| {
                write_all_at(file, &crc.to_le_bytes(), m.offset + LOCAL_CRC_AT)
            })
            .and_then(|()| write_all_at(file, &directory, self.directory_at));
        written.map_err(|e| Error::io(format!("cannot write '{}'", display(path)), e))?;
        debug_assert_eq!(self.directory_at + directory.len() as u64, self.total);
        persist(self.file, path, self.destination.force)
    }

    fn bytes(&self) -> u64 {
        self.total
    }
}

/// Renames the finished file to `path`; without `replace`, never over an existing file.
fn persist(file: NamedTempFile, path: &Path, replace: bool) -> Result<(), Error> {
    let result = if replace {
        file.persist(path).map(|_| ())
    } else {
        file.persist_noclobber(path).map(|_| ())
    };
    result.map_err(|e| {
        Error::io(
            format!("cannot move the output into place at '{}'", display(path)),
            e.error,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, offset: u64, size: u64) -> Member {
        let mut m = Member {
            name: name.into(),
            offset,
            size,
            local_len: 0,
        };
        m.local_len = local_header(&m, 0).len() as u64;
        m
    }

    #[test]
    fn small_members_have_no_zip64_fields() {
        let m = member("a.npy", 0, 100);
        let local = local_header(&m, 0xDEAD_BEEF);
        assert_eq!(local.len(), 30 + 5);
        assert_eq!(&local[14..18], &0xDEAD_BEEFu32.to_le_bytes());
        assert_eq!(&local[18..22], &100u32.to_le_bytes());
        assert_eq!(central_header(&m, 0).len(), 46 + 5);
        assert_eq!(end_records(1, 135, 51).len(), 22);
    }

    #[test]
    fn large_members_offsets_and_counts_use_zip64() {
        // A 5 GiB member past a 4 GiB offset: sizes in the local zip64 extra, sizes and the
        // offset in the central one, all ones in the 32-bit fields.
        let m = member("big.npy", 5 << 30, 5 << 30);
        let local = local_header(&m, 0);
        assert_eq!(local.len(), 30 + 7 + 20);
        assert_eq!(&local[18..26], &[0xFF; 8]);
        assert_eq!(&local[37..41], &[1, 0, 16, 0]);
        let central = central_header(&m, 0);
        assert_eq!(central.len(), 46 + 7 + 4 + 24);
        assert_eq!(&central[42..46], &[0xFF; 4]);
        // Zip64 end record (56) and locator (20) before the classic end record.
        let end = end_records(70_000, 10 << 30, 1000);
        assert_eq!(end.len(), 56 + 20 + 22);
        assert_eq!(&end[..4], &ZIP64_END_SIGNATURE.to_le_bytes());
        assert_eq!(&end[56..60], &ZIP64_LOCATOR_SIGNATURE.to_le_bytes());
        assert_eq!(&end[84..88], &[0xFF; 4]);
    }
}

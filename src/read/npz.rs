//! The .npz archive numpy.savez writes: a zip of .npy members (and eoi's `manifest.json`).
//! The zip's records are read from the end: the end-of-central-directory record (and its zip64
//! form), the central directory, then each member's local header, every size and offset
//! checked against the file before use. Only stored members are read, in place.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::npy::{manifest_order, npy_info, read_npy_header};
use super::{
    Artifact, MANIFEST, MAX_MANIFEST, MAX_ZIP_DIRECTORY, ReadError, TensorInfo, eight, io_error,
    read_exact_at,
};
use crate::layer::Format;

/// The zip end-of-central-directory signature, and its record's fixed length.
const ZIP_END: u32 = 0x0605_4b50;
const ZIP_END_LEN: u64 = 22;

/// The signatures of the zip64 end-of-central-directory locator and record, of a central
/// directory header, and of a local file header.
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL_ZIP: u32 = 0x0403_4b50;

/// The fixed lengths of a central directory header and of a local file header.
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: u64 = 30;

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
    let zip = Zip { path, file, size };
    let end = zip.end_record()?;
    let dir = zip.central_directory(&end)?;
    // central_directory bounded the count by the directory's length.
    let mut members = Vec::with_capacity(end.count as usize);
    let mut at = 0usize;
    for k in 0..end.count {
        let entry = zip.central_entry(&dir, &mut at, k)?;
        members.push(zip.stored_member(entry, end.dir_at)?);
    }
    Ok(members)
}

/// A zip archive of `size` bytes, read one record at a time.
struct Zip<'a> {
    path: &'a Path,
    file: &'a File,
    size: u64,
}

/// Where the end record puts the central directory: `count` headers in `dir_len` bytes at
/// byte `dir_at`; the end record itself is at byte `end_at`.
struct EndRecord {
    count: u64,
    dir_len: u64,
    dir_at: u64,
    end_at: u64,
}

/// A central directory header, its zip64 extra field applied.
struct CentralEntry {
    name: String,
    flags: u64,
    method: u64,
    compressed: u64,
    size: u64,
    /// Where the member's local header starts.
    offset: u64,
}

impl Zip<'_> {
    fn bad(&self, message: String) -> ReadError {
        ReadError::Zip {
            path: self.path.display().to_string(),
            message,
        }
    }

    /// The `len` bytes at byte `at`, allocated only once they are known to lie in the file.
    fn read(&self, at: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let end = at.checked_add(len).filter(|&e| e <= self.size);
        if end.is_none() {
            return Err(self.bad(format!(
                "a record at byte {at} of {len} bytes runs past the end of the file (truncated?)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        read_exact_at(self.file, &mut buf, at).map_err(|e| io_error(self.path, e))?;
        Ok(buf)
    }

    /// The end record: the last signature whose comment runs exactly to the end of the file,
    /// with its zip64 values when its own fields are all ones.
    fn end_record(&self) -> Result<EndRecord, ReadError> {
        let size = self.size;
        let tail_len = size.min(ZIP_END_LEN + 0xFFFF);
        let tail = self.read(size - tail_len, tail_len)?;
        let end = (0..tail.len().saturating_sub(ZIP_END_LEN as usize - 1))
            .rev()
            .find(|&k| {
                le32(&tail, k) == u64::from(ZIP_END)
                    && k + ZIP_END_LEN as usize + le16(&tail, k + 20) as usize == tail.len()
            })
            .ok_or_else(|| {
                self.bad(
                    "no end-of-central-directory record (not a zip archive, or truncated)".into(),
                )
            })?;
        let end_at = size - tail_len + end as u64;
        let e = &tail[end..];
        let (count, dir_len, dir_at) = (le16(e, 10), le32(e, 12), le32(e, 16));
        let (count, dir_len, dir_at) =
            if count == 0xFFFF || dir_len == 0xFFFF_FFFF || dir_at == 0xFFFF_FFFF {
                self.zip64_end_record(end_at)?
            } else {
                (count, dir_len, dir_at)
            };
        Ok(EndRecord {
            count,
            dir_len,
            dir_at,
            end_at,
        })
    }

    /// The member count, directory length and directory offset of the zip64 end record, found
    /// through the locator just before the end record at byte `end_at`.
    fn zip64_end_record(&self, end_at: u64) -> Result<(u64, u64, u64), ReadError> {
        let locator_at = end_at
            .checked_sub(20)
            .ok_or_else(|| self.bad("zip64 fields but no zip64 locator".into()))?;
        let locator = self.read(locator_at, 20)?;
        if le32(&locator, 0) != u64::from(ZIP64_LOCATOR) {
            return Err(self.bad("zip64 fields but no zip64 locator".into()));
        }
        let record = self.read(le64(&locator, 8), 56)?;
        if le32(&record, 0) != u64::from(ZIP64_END) {
            return Err(self.bad("the zip64 locator points at no zip64 end record".into()));
        }
        Ok((le64(&record, 32), le64(&record, 40), le64(&record, 48)))
    }

    /// The central directory's bytes, read once its length is under [`MAX_ZIP_DIRECTORY`]
    /// and it ends before the end record, and its member count is checked against its length.
    fn central_directory(&self, end: &EndRecord) -> Result<Vec<u8>, ReadError> {
        let EndRecord {
            count,
            dir_len,
            dir_at,
            end_at,
        } = *end;
        if dir_len > MAX_ZIP_DIRECTORY {
            return Err(self.bad(format!(
                "a central directory of {dir_len} bytes, over the limit of {MAX_ZIP_DIRECTORY}"
            )));
        }
        if dir_at.checked_add(dir_len).is_none_or(|e| e > end_at) {
            return Err(self.bad("the central directory runs past its end record".into()));
        }
        let dir = self.read(dir_at, dir_len)?;
        // Each central header takes at least 46 bytes: a count beyond that is forged.
        if count > dir_len / CENTRAL_LEN as u64 {
            return Err(self.bad(format!(
                "{count} members claimed in a {dir_len}-byte directory"
            )));
        }
        Ok(dir)
    }

    /// Central directory header `k`, at byte `*at` of the directory `dir`; `*at` moves past it.
    fn central_entry(&self, dir: &[u8], at: &mut usize, k: u64) -> Result<CentralEntry, ReadError> {
        let header = dir
            .get(*at..*at + CENTRAL_LEN)
            .filter(|h| le32(h, 0) == u64::from(CENTRAL))
            .ok_or_else(|| self.bad(format!("central directory entry {k} is malformed")))?;
        let (flags, method) = (le16(header, 8), le16(header, 10));
        let (name_len, extra_len, comment_len) = (
            le16(header, 28) as usize,
            le16(header, 30) as usize,
            le16(header, 32) as usize,
        );
        let (compressed, size, offset) = (le32(header, 20), le32(header, 24), le32(header, 42));
        let start = *at + CENTRAL_LEN;
        let rest = dir
            .get(start..start + name_len + extra_len + comment_len)
            .ok_or_else(|| {
                self.bad(format!(
                    "central directory entry {k} runs past the directory"
                ))
            })?;
        let name = std::str::from_utf8(&rest[..name_len])
            .map_err(|_| self.bad(format!("member {k} has a name that is not UTF-8")))?
            .to_string();
        let mut entry = CentralEntry {
            name,
            flags,
            method,
            compressed,
            size,
            offset,
        };
        self.apply_zip64_extra(&mut entry, &rest[name_len..name_len + extra_len])?;
        *at += CENTRAL_LEN + name_len + extra_len + comment_len;
        Ok(entry)
    }

    /// Applies the zip64 extra field among the `extra` fields of `entry`'s central header:
    /// the 64-bit values of the fields that are all ones, in order.
    fn apply_zip64_extra(
        &self,
        entry: &mut CentralEntry,
        mut extra: &[u8],
    ) -> Result<(), ReadError> {
        let name = &entry.name;
        while extra.len() >= 4 {
            let (id, len) = (le16(extra, 0), le16(extra, 2) as usize);
            let body = extra.get(4..4 + len).ok_or_else(|| {
                self.bad(format!("member \"{name}\" has a malformed extra field"))
            })?;
            if id == 1 {
                let mut values = body.chunks_exact(8).map(|c| le64(c, 0));
                for slot in [&mut entry.size, &mut entry.compressed, &mut entry.offset] {
                    if *slot == 0xFFFF_FFFF {
                        *slot = values.next().ok_or_else(|| {
                            self.bad(format!("member \"{name}\" has a short zip64 extra field"))
                        })?;
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        Ok(())
    }

    /// The member of a central `entry`: not encrypted, stored, with a local header at its
    /// offset, and data that ends before the central directory at byte `dir_at`.
    fn stored_member(&self, entry: CentralEntry, dir_at: u64) -> Result<ZipMember, ReadError> {
        let CentralEntry {
            name,
            flags,
            method,
            compressed,
            size,
            offset,
        } = entry;
        if flags & 1 != 0 {
            return Err(self.bad(format!("member \"{name}\" is encrypted")));
        }
        if method != 0 || compressed != size {
            return Err(self.bad(format!(
                "member \"{name}\" is compressed (method {method}); only stored members can be read in place: write the archive with numpy.savez, not savez_compressed"
            )));
        }
        let local = self.read(offset, LOCAL_LEN)?;
        if le32(&local, 0) != u64::from(LOCAL_ZIP) {
            return Err(self.bad(format!(
                "member \"{name}\" has no local header at byte {offset}"
            )));
        }
        let data_at = offset + LOCAL_LEN + le16(&local, 26) + le16(&local, 28);
        if data_at.checked_add(size).is_none_or(|e| e > dir_at) {
            return Err(self.bad(format!(
                "member \"{name}\" ({size} bytes at byte {data_at}) runs into the central directory"
            )));
        }
        Ok(ZipMember {
            name,
            data_at,
            size,
        })
    }
}

pub(super) fn open_npz(path: &Path, file: File, size: u64) -> Result<Artifact, ReadError> {
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
    use crate::read::npy::tests::npy_bytes;

    /// A zip archive of `members` (name, bytes, compression method, flags), written by hand
    /// as numpy.savez lays one out: local headers and data, the central directory, the end
    /// record. CRCs are left zero (the reader does not check them).
    fn zip(members: &[(&str, Vec<u8>, u16, u16)]) -> Vec<u8> {
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, data, method, flags) in members {
            let (offset, len) = (out.len() as u32, data.len() as u32);
            out.extend(LOCAL_ZIP.to_le_bytes());
            for v in [20, *flags, *method, 0, 0, 0, 0] {
                out.extend(u16::to_le_bytes(v));
            }
            for v in [len, len] {
                out.extend(v.to_le_bytes());
            }
            for v in [name.len() as u16, 0] {
                out.extend(v.to_le_bytes());
            }
            out.extend(name.as_bytes());
            out.extend(data);
            central.extend(CENTRAL.to_le_bytes());
            for v in [20, 20, *flags, *method, 0, 0, 0, 0] {
                central.extend(u16::to_le_bytes(v));
            }
            for v in [len, len] {
                central.extend(v.to_le_bytes());
            }
            for v in [name.len() as u16, 0, 0, 0, 0, 0, 0] {
                central.extend(v.to_le_bytes());
            }
            central.extend(offset.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let (dir_at, dir_len) = (out.len() as u32, central.len() as u32);
        out.extend(central);
        out.extend(ZIP_END.to_le_bytes());
        let count = members.len() as u16;
        for v in [0, 0, count, count] {
            out.extend(u16::to_le_bytes(v));
        }
        out.extend(dir_len.to_le_bytes());
        out.extend(dir_at.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out
    }

    fn open_zip(bytes: &[u8]) -> Result<Artifact, ReadError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        Artifact::open(file.path())
    }

    #[test]
    fn stored_members_are_read_in_place() {
        let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }";
        let bytes = zip(&[
            ("w.npy", npy_bytes(1, dict, &[3, 4]), 0, 0),
            ("m.npy", npy_bytes(2, dict, &[1, 0]), 0, 0),
        ]);
        let a = open_zip(&bytes).unwrap();
        assert_eq!(a.format(), Format::Npz);
        let names: Vec<&str> = a.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "m"]);
        assert_eq!(a.read_f64(a.tensor("w").unwrap()).unwrap(), [3.0, 4.0]);
        assert_eq!(a.read_bytes(a.tensor("m").unwrap()).unwrap(), [1, 0]);
    }

    #[test]
    fn hostile_archives_get_precise_errors() {
        let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }";
        let member = |method, flags| zip(&[("w.npy", npy_bytes(1, dict, &[3, 4]), method, flags)]);
        let good = member(0, 0);
        let end = good.len() - ZIP_END_LEN as usize;
        let with = |at: usize, patch: &[u8]| {
            let mut bytes = good.clone();
            bytes[at..at + patch.len()].copy_from_slice(patch);
            bytes
        };
        let cases = [
            (
                member(8, 0),
                "member \"w.npy\" is compressed (method 8); only stored members can be read in place",
            ),
            (member(0, 1), "member \"w.npy\" is encrypted"),
            (
                good[..good.len() - 1].to_vec(),
                "no end-of-central-directory record (not a zip archive, or truncated)",
            ),
            (with(end + 10, &[0xe8, 0x03]), "1000 members claimed in a "),
            (
                with(end + 8, &[0xff; 4]),
                "zip64 fields but no zip64 locator",
            ),
            (
                // Both sizes of the central header (46 bytes and the name before the end).
                with(end - 51 + 20, &[0xe8, 3, 0, 0, 0xe8, 3, 0, 0]),
                "member \"w.npy\" (1000 bytes at byte 35) runs into the central directory",
            ),
            (
                // The local header offset, the last field before the name.
                with(end - 5 - 4, &[1, 0, 0, 0]),
                "member \"w.npy\" has no local header at byte 1",
            ),
            (
                with(end + 12, &[0xff, 0xff, 0xff, 0x00]),
                "the central directory runs past its end record",
            ),
        ];
        for (bytes, expected) in cases {
            let err = open_zip(&bytes).unwrap_err().to_string();
            assert!(
                err.contains("not a readable .npz archive") && err.contains(expected),
                "{expected}: {err}"
            );
        }
    }
}

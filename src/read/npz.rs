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

//! The safetensors header: an 8-byte little-endian length, then a JSON object of tensor
//! entries (dtype, shape, data offsets) and an optional `__metadata__` of strings. The header
//! is parsed with duplicate keys refused, and every entry is checked against the data that
//! follows it: known dtype, element count without overflow, offsets in order and inside the
//! file, and the data covered exactly, with no overlap and no gap.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use super::{Artifact, MAX_HEADER, ReadError, TensorInfo, checked_numel, io_error, read_exact_at};
use crate::layer::{Dtype, Format};

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
pub(super) struct StringPairs(pub(super) Vec<(String, String)>);

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

/// Opens and validates a safetensors file of `size` bytes: its header, then each tensor entry
/// against the data that follows, then the data's exact coverage. Only the header is read.
pub(super) fn open_safetensors(path: &Path, file: File, size: u64) -> Result<Artifact, ReadError> {
    let header = read_header(path, &file, size)?;
    let raw = parse_header(path, &header)?;
    // read_header checked that the 8-byte length and the header fit in the file.
    let data_start = 8 + header.len() as u64;
    let data_len = size - data_start;

    let mut tensors = Vec::with_capacity(raw.entries.len());
    let mut ranges = Vec::with_capacity(raw.entries.len());
    for (name, entry) in raw.entries {
        let [begin, end] = entry.data_offsets;
        let info = validate_entry(path, name, entry, data_start, data_len)?;
        ranges.push((begin, end, tensors.len()));
        tensors.push(info);
    }
    let tensors = in_data_order(path, tensors, ranges, data_len)?;
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

/// The header's bytes (the JSON text after the 8-byte length, padding included), allocated
/// only once its claimed length is known to be under [`MAX_HEADER`] and inside the file.
fn read_header(path: &Path, file: &File, size: u64) -> Result<Vec<u8>, ReadError> {
    let shown = || path.display().to_string();
    if size < 8 {
        return Err(ReadError::TooShort {
            path: shown(),
            size,
        });
    }
    let mut prefix = [0u8; 8];
    read_exact_at(file, &mut prefix, 0).map_err(|e| io_error(path, e))?;
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
    read_exact_at(file, &mut header, 8).map_err(|e| io_error(path, e))?;
    Ok(header)
}

/// Parses the header's bytes: UTF-8 text holding one JSON object.
fn parse_header(path: &Path, header: &[u8]) -> Result<RawHeader, ReadError> {
    let shown = || path.display().to_string();
    let text = std::str::from_utf8(header).map_err(|e| ReadError::HeaderNotUtf8 {
        path: shown(),
        offset: e.valid_up_to(),
    })?;
    if !text.starts_with('{') {
        return Err(ReadError::HeaderNotObject { path: shown() });
    }
    serde_json::from_str(text).map_err(|e| ReadError::HeaderJson {
        path: shown(),
        message: e.to_string(),
    })
}

/// Tensor `name` of the header, checked on its own: a known dtype, an element count and a
/// byte size without overflow, and data offsets in order, inside the `data_len` bytes of
/// data (which start at byte `data_start` of the file), spanning exactly that byte size.
fn validate_entry(
    path: &Path,
    name: String,
    entry: RawEntry,
    data_start: u64,
    data_len: u64,
) -> Result<TensorInfo, ReadError> {
    let shown = || path.display().to_string();
    let dtype = Dtype::from_safetensors(&entry.dtype).ok_or_else(|| ReadError::UnknownDtype {
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
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        numel,
        nbytes,
        file: path.to_path_buf(),
        start: data_start + begin,
    })
}

/// The validated `tensors` sorted by where their data starts, once the data is known to be
/// covered exactly: `ranges` holds each tensor's data offsets `(begin, end, index)`, and
/// sorted by start each tensor begins where the previous one ended, the last at `data_len`.
fn in_data_order(
    path: &Path,
    tensors: Vec<TensorInfo>,
    mut ranges: Vec<(u64, u64, usize)>,
    data_len: u64,
) -> Result<Vec<TensorInfo>, ReadError> {
    let shown = || path.display().to_string();
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
    let mut slots: Vec<Option<TensorInfo>> = tensors.into_iter().map(Some).collect();
    Ok(ranges
        .into_iter()
        .filter_map(|(_, _, k)| slots[k].take())
        .collect())
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
}

//! NumPy's .npy format: the magic string, a version, and a Python dict literal
//! (`{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`) parsed by a small
//! tokenizer of its own, then C-order data whose length must match the header exactly. Also
//! npy output directories: one .npy file per tensor, in the order of eoi's `manifest.json`
//! (checked against the files) or, without one, in file-name order.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use super::{
    Artifact, MAX_MANIFEST, MAX_NPY_HEADER, ReadError, TensorInfo, checked_numel, io_error,
    plain_file_name, read_exact_at,
};
use crate::layer::{Dtype, Format};

/// The name of the manifest in an npy output directory.
pub const MANIFEST: &str = "manifest.json";

pub(super) const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The parsed dictionary of a .npy header.
#[derive(Debug, PartialEq)]
pub(super) struct NpyHeader {
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
        let value = c.value(&key)?;
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

/// The tokens of a .npy header's dict literal, read from byte `at` of `s`: the few Python
/// literals numpy writes there (quoted strings without escapes, `True`/`False`, and tuples
/// of non-negative integers). Errors name the byte where the text went wrong.
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

    /// The next byte that is not white space, without consuming it.
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

    /// The value of dict key `key` (named in the message when it is none of the three kinds).
    fn value(&mut self, key: &str) -> Result<PyValue, String> {
        Ok(match self.peek() {
            Some(b'\'' | b'"') => PyValue::Str(self.string()?),
            Some(b'(') => PyValue::Tuple(self.tuple()?),
            _ => match self.word().as_str() {
                "True" => PyValue::Bool(true),
                "False" => PyValue::Bool(false),
                other => {
                    return Err(format!(
                        "unexpected value for '{key}': '{}'",
                        other.escape_default()
                    ));
                }
            },
        })
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

    /// A shape tuple from its opening parenthesis: at most 64 dimensions, a trailing comma
    /// allowed (`(3,)`).
    fn tuple(&mut self) -> Result<Vec<u64>, String> {
        self.at += 1;
        let mut dims = Vec::new();
        loop {
            if self.peek() == Some(b')') {
                self.at += 1;
                break;
            }
            if dims.len() >= 64 {
                return Err("a shape has at most 64 dimensions".into());
            }
            dims.push(self.integer()?);
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b')') => {}
                _ => return Err(format!("expected ',' or ')' at byte {}", self.at)),
            }
        }
        Ok(dims)
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

/// Reads and checks the header of the .npy bytes at `base` (a file, or a member of an
/// archive) of `size` bytes; the offset of the data from `base` comes with it.
pub(super) fn read_npy_header(
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
    Ok((npy_fields(path, items)?, dict_start + length))
}

/// The header of the .npy file at `path` from its dict's `items`: each of `descr`,
/// `fortran_order` and `shape` once, with its type, C order and a supported dtype.
fn npy_fields(path: &Path, items: Vec<(String, PyValue)>) -> Result<NpyHeader, ReadError> {
    let shown = || path.display().to_string();
    let bad = |message: String| ReadError::NpyHeader {
        path: shown(),
        message,
    };
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
    Ok(NpyHeader { dtype, shape })
}

/// Opens and validates one .npy file as tensor `name`.
pub(super) fn npy_tensor(path: &Path, name: String) -> Result<TensorInfo, ReadError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    let (header, data_start) = read_npy_header(path, &file, 0, size)?;
    npy_info(path, name, header, data_start, size)
}

/// The tensor of .npy bytes of `size` with `header`, its data `data_start` bytes in.
pub(super) fn npy_info(
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

pub(super) fn npy_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".npy").unwrap_or(&name).to_string()
}

/// The tensors a manifest lists, in its order: tensor `k`, named `name`, is found by
/// `resolve(k, name, file)` and checked against the manifest's dtype and shape.
pub(super) fn manifest_order(
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

pub(super) fn open_npy_directory(dir: &Path) -> Result<Artifact, ReadError> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The bytes of an .npy file of format version `major`.0 with header `dict` and `data`
    /// (also used by the checkpoint tests).
    pub(in crate::read) fn npy_bytes(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
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
}

//! Reading the source's shapes: a safetensors file's header, a sharded checkpoint's index
//! and shard headers (through [`crate::read`]), or a JSON shape list, whose entries may say
//! each tensor's groups, module, kind and storage (`tied_to`). Tensor data is never read.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{quoted, usage};
use crate::error::Error;
use crate::isometry::natural_cmp;
use crate::layer::named;
use crate::read::{self, Checkpoint};

/// Largest JSON shape list accepted.
pub const MAX_JSON: u64 = 100_000_000;

/// Most dimensions a tensor in a JSON shape list may have.
const MAX_RANK: usize = 64;

/// A tensor of the source: its name, its shape as stored, and what the source says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    /// Convolution groups, when the source records them (a shape list's `"groups"`); a
    /// checkpoint does not.
    pub groups: Option<u64>,
    /// The class name of the module holding the tensor (a shape list's `"module"`).
    pub module: Option<String>,
    /// What the tensor is (a shape list's `"kind"`); without it the name rules decide.
    pub kind: Option<TensorKind>,
    /// The tensor whose storage this one shares (a shape list's `"tied_to"`).
    pub tied_to: Option<String>,
    /// The dtype it is stored in (checkpoints only).
    pub dtype: Option<crate::layer::Dtype>,
}

impl Entry {
    /// An entry with only a name and a shape.
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Entry {
        Entry {
            name: name.into(),
            shape,
            groups: None,
            module: None,
            kind: None,
            tied_to: None,
            dtype: None,
        }
    }
}

named! {
    /// What a tensor is, as a shape list's `"kind"` says (examples/shapes_from_torch.py and
    /// shapes_from_flax.py write it). Only `linear` and `conv` tensors become layers.
    pub enum TensorKind {
        /// The weight of a linear map: nn.Linear (and subclasses), transformers' Conv1D
        /// (stored (in, out)), nn.MultiheadAttention's `in_proj_weight`, a Flax Dense kernel.
        Linear = "linear",
        /// The weight of a convolution (nn.ConvNd, nn.ConvTransposeNd, a Flax Conv kernel).
        Conv = "conv",
        /// An embedding table (nn.Embedding, Flax Embed).
        Embedding = "embedding",
        /// A parameter of a normalization layer.
        Norm = "norm",
        /// A bias.
        Bias = "bias",
        /// A buffer (running statistics, counters, position ids).
        Buffer = "buffer",
        /// Anything else: class tokens, position tables, layer scales ...
        Other = "other",
    }
}

impl TensorKind {
    /// Whether eoi initializes tensors of this kind.
    pub fn is_layer(self) -> bool {
        matches!(self, TensorKind::Linear | TensorKind::Conv)
    }
}

/// What the shapes were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// One safetensors file: its header.
    Safetensors,
    /// A sharded checkpoint: its index and the shards' headers.
    Sharded,
    /// A JSON shape list.
    Json,
}

/// The tensors of a model, in the order the spec will list them, and where they came from.
#[derive(Clone, Debug)]
pub struct Shapes {
    /// The source as given (a path, or `<stdin>`).
    pub name: String,
    pub kind: SourceKind,
    /// SHA-256 (hex) of a safetensors header, of a sharded checkpoint's index file, or of
    /// the JSON text.
    pub sha256: String,
    pub entries: Vec<Entry>,
}

impl Shapes {
    /// What the SHA-256 was taken of, for the spec's header comment.
    pub(super) fn hashed(&self) -> &'static str {
        match self.kind {
            SourceKind::Safetensors => "safetensors header",
            SourceKind::Sharded => "index file",
            SourceKind::Json => "JSON shape list",
        }
    }
}

/// Reads the shapes of a safetensors file, a sharded checkpoint (its index file or the
/// directory holding it) or a JSON shape list. Tensor data is never read.
pub fn read_shapes(path: &Path) -> Result<Shapes, Error> {
    let shown = path.display().to_string();
    let index_like = path.is_dir()
        || path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"));
    if index_like {
        return checkpoint_shapes(&Checkpoint::open(path)?, shown);
    }
    let io = |source: std::io::Error| {
        Error::Read(read::ReadError::Io {
            path: shown.clone(),
            source,
        })
    };
    let mut file = File::open(path).map_err(io)?;
    let mut prefix = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut prefix).map_err(io)?;
    // A safetensors file starts with its header length, eight little-endian bytes of which
    // the last is zero for any header under 2^56 bytes; JSON text holds no NUL byte.
    let json_like = !prefix.contains(&0)
        && prefix
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{' || b == b'[' || b == 0xef);
    if !json_like {
        return checkpoint_shapes(&Checkpoint::open(path)?, shown);
    }
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_JSON {
        return Err(usage(format!(
            "'{shown}' is {size} bytes, over the limit of {MAX_JSON} for a JSON shape list"
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    // A Hugging Face index is JSON too.
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
        && map.get("weight_map").is_some_and(Value::is_object)
    {
        return checkpoint_shapes(&Checkpoint::open(path)?, shown);
    }
    shapes_from_json(&shown, &bytes)
}

/// The shapes of a checkpoint, in natural name order (`h.2` before `h.10`).
pub fn checkpoint_shapes(checkpoint: &Checkpoint, name: String) -> Result<Shapes, Error> {
    let mut entries: Vec<Entry> = checkpoint
        .tensors()
        .map(|(_, t)| Entry {
            dtype: Some(t.dtype),
            ..Entry::new(t.name.clone(), t.shape.clone())
        })
        .collect();
    entries.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(Shapes {
        name,
        kind: if checkpoint.is_sharded() {
            SourceKind::Sharded
        } else {
            SourceKind::Safetensors
        },
        sha256: checkpoint.sha256().to_string(),
        entries,
    })
}

/// A JSON shape list as written: an object `{name: shape | {shape, groups}}` (duplicate
/// names rejected, which serde_json would drop silently) or an array of entries.
enum RawList {
    Object(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl<'de> Deserialize<'de> for RawList {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = RawList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an object {\"name\": [shape...]} or an array [{\"name\": ..., \"shape\": [...]}]",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawList, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!(
                            "tensor \"{key}\" is listed twice"
                        )));
                    }
                    entries.push((key, map.next_value()?));
                }
                Ok(RawList::Object(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawList, A::Error> {
                let mut entries = Vec::new();
                while let Some(value) = seq.next_element()? {
                    entries.push(value);
                }
                Ok(RawList::Array(entries))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// Parses a JSON shape list: `{"name": [shape...], ...}` or
/// `[{"name": ..., "shape": [...], "groups": 1, "module": "Linear", "kind": "linear",
/// "tied_to": "..."}, ...]` (all but `name` and `shape` optional; in the object form a value
/// may also be an object without `name`). Names keep their order.
pub fn shapes_from_json(name: &str, bytes: &[u8]) -> Result<Shapes, Error> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| not_a_list(name, format!("not UTF-8 text at byte {}", e.valid_up_to())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawList = serde_json::from_str(text).map_err(|e| not_a_list(name, e.to_string()))?;
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |tensor: String, shape: &Value, object: Option<&Map<String, Value>>| {
        if tensor.is_empty() {
            return Err(usage(format!("'{name}': a tensor name is empty")));
        }
        if !seen.insert(tensor.clone()) {
            return Err(usage(format!(
                "'{name}': tensor \"{tensor}\" is listed twice"
            )));
        }
        entries.push(entry(name, tensor, shape, object)?);
        Ok(())
    };
    match raw {
        RawList::Object(pairs) => {
            for (tensor, value) in pairs {
                match &value {
                    Value::Object(object) => {
                        check_keys(name, &tensor, object, false)?;
                        push(tensor.clone(), &object["shape"], Some(object))?;
                    }
                    shape => push(tensor, shape, None)?,
                }
            }
        }
        RawList::Array(list) => {
            for (k, value) in list.iter().enumerate() {
                let object = value.as_object().ok_or_else(|| {
                    not_a_list(
                        name,
                        format!("entry {k} is not an object {{\"name\": ..., \"shape\": [...]}}"),
                    )
                })?;
                let tensor = object
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| not_a_list(name, format!("entry {k} has no \"name\" string")))?;
                check_keys(name, tensor, object, true)?;
                push(tensor.to_string(), &object["shape"], Some(object))?;
            }
        }
    }
    check_ties(name, &entries)?;
    if entries.is_empty() {
        return Err(usage(format!("'{name}' lists no tensors")));
    }
    Ok(Shapes {
        name: name.to_string(),
        kind: SourceKind::Json,
        sha256: read::hex(&Sha256::digest(bytes)),
        entries,
    })
}

/// The error of a text that is no shape list at all, with what one looks like.
fn not_a_list(name: &str, message: String) -> Error {
    usage(format!(
        "'{name}' is not a safetensors file, a sharded index or a JSON shape list: {message}\n  help: a shape list is {{\"fc.weight\": [300, 784], ...}} or [{{\"name\": \"fc.weight\", \"shape\": [300, 784]}}, ...]"
    ))
}

/// The error of one tensor of a shape list.
fn wrong(name: &str, tensor: &str, message: String) -> Error {
    usage(format!("'{name}': tensor \"{tensor}\": {message}"))
}

/// The keys an entry of a shape list may have, besides `name` in the array form.
const KEYS: &[&str] = &["shape", "groups", "module", "kind", "tied_to"];

/// Checks an entry's keys: known ones only, and a `shape`.
fn check_keys(
    name: &str,
    tensor: &str,
    object: &Map<String, Value>,
    name_key: bool,
) -> Result<(), Error> {
    for key in object.keys() {
        if !(KEYS.contains(&key.as_str()) || name_key && key == "name") {
            return Err(wrong(
                name,
                tensor,
                format!(
                    "unknown key \"{key}\" (known: {}{})",
                    if name_key { "name, " } else { "" },
                    KEYS.join(", ")
                ),
            ));
        }
    }
    match object.get("shape") {
        Some(_) => Ok(()),
        None => Err(wrong(name, tensor, "no \"shape\"".into())),
    }
}

/// One entry of a shape list: its shape, and the optional keys of its `object`.
fn entry(
    name: &str,
    tensor: String,
    shape: &Value,
    object: Option<&Map<String, Value>>,
) -> Result<Entry, Error> {
    let not_a_shape = || {
        wrong(
            name,
            &tensor,
            format!("the shape must be an array of integers >= 0, got {shape}"),
        )
    };
    let dims = shape.as_array().ok_or_else(not_a_shape)?;
    if dims.len() > MAX_RANK {
        return Err(wrong(
            name,
            &tensor,
            format!("{} dimensions; at most {MAX_RANK}", dims.len()),
        ));
    }
    let dims = dims
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(not_a_shape)?;
    let field = |key: &str| object.and_then(|o| o.get(key));
    let groups = match field("groups") {
        None => None,
        Some(g) => Some(g.as_u64().filter(|&g| g >= 1).ok_or_else(|| {
            wrong(
                name,
                &tensor,
                format!("groups must be an integer >= 1, got {g}"),
            )
        })?),
    };
    let text = |key: &str| -> Result<Option<String>, Error> {
        match field(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(v) => Err(wrong(
                name,
                &tensor,
                format!("\"{key}\" must be a non-empty string, got {v}"),
            )),
        }
    };
    let module = text("module")?;
    let kind = match text("kind")? {
        None => None,
        Some(k) => Some(TensorKind::parse(&k).ok_or_else(|| {
            wrong(
                name,
                &tensor,
                format!(
                    "unknown kind {} (known: {})",
                    quoted(&k),
                    TensorKind::NAMES.join(", ")
                ),
            )
        })?),
    };
    let tied_to = text("tied_to")?;
    Ok(Entry {
        name: tensor,
        shape: dims,
        groups,
        module,
        kind,
        tied_to,
        dtype: None,
    })
}

/// Checks a shape list's ties: each `tied_to` names another tensor of the list, of the same
/// shape, that is not tied itself (the one holding the storage).
fn check_ties(name: &str, entries: &[Entry]) -> Result<(), Error> {
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for entry in entries {
        let Some(target) = &entry.tied_to else {
            continue;
        };
        let problem = match by_name.get(target.as_str()) {
            None => "which is not in the list".to_string(),
            Some(_) if target == &entry.name => "itself".to_string(),
            Some(t) if t.tied_to.is_some() => format!(
                "which is tied to {} itself: name the tensor holding the storage",
                quoted(t.tied_to.as_deref().unwrap_or_default())
            ),
            Some(t) if t.shape != entry.shape => {
                format!("whose shape {:?} is not {:?}", t.shape, entry.shape)
            }
            Some(_) => continue,
        };
        return Err(usage(format!(
            "'{name}': tensor {} has \"tied_to\": {}, {problem}",
            quoted(&entry.name),
            quoted(target)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_in_both_forms_and_their_errors() {
        let a = shapes_from_json(
            "a.json",
            br#"{"x.weight": {"shape": [3, 4], "groups": 1}, "x.bias": [3]}"#,
        )
        .unwrap();
        let b = shapes_from_json(
            "b.json",
            br#"[{"name": "x.weight", "shape": [3, 4], "groups": 1}, {"name": "x.bias", "shape": [3]}]"#,
        )
        .unwrap();
        assert_eq!(a.entries, b.entries);
        for (text, expected) in [
            (r#"{"a": [1, 2], "a": [1, 2]}"#, "listed twice"),
            (
                r#"[{"name": "a", "shape": [1]}, {"name": "a", "shape": [1]}]"#,
                "listed twice",
            ),
            (r#"{"a": [1, -2]}"#, "integers >= 0"),
            (r#"{"a": "3x3"}"#, "integers >= 0"),
            (r#"[{"name": "a", "shpae": [1]}]"#, "unknown key \"shpae\""),
            (r#"[[1, 2]]"#, "entry 0 is not an object"),
            (
                r#"{"a": {"shape": [2, 2], "groups": 0}}"#,
                "groups must be an integer >= 1",
            ),
            (r#"{}"#, "lists no tensors"),
            (
                r#"[{"name": "a", "shape": [2, 2], "kind": "dense"}]"#,
                "unknown kind \"dense\" (known: linear, conv, embedding, norm, bias, buffer, other)",
            ),
            (
                r#"[{"name": "a", "shape": [2, 2], "kind": 3}]"#,
                "\"kind\" must be a non-empty string, got 3",
            ),
            (
                r#"[{"name": "a", "shape": [2, 2], "tied_to": "b"}]"#,
                "tensor \"a\" has \"tied_to\": \"b\", which is not in the list",
            ),
            (
                r#"[{"name": "a", "shape": [2, 2]}, {"name": "b", "shape": [2, 3], "tied_to": "a"}]"#,
                "whose shape [2, 2] is not [2, 3]",
            ),
            (
                r#"[{"name": "a", "shape": [2, 2], "tied_to": "b"}, {"name": "b", "shape": [2, 2], "tied_to": "a"}]"#,
                "which is tied to \"a\" itself: name the tensor holding the storage",
            ),
            (r#"3"#, "not a safetensors file"),
        ] {
            let err = shapes_from_json("x.json", text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}

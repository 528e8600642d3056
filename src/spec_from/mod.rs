//! `eoi spec --from`: a complete spec written from the tensors a model already has. The
//! shapes come from a safetensors checkpoint (headers only, through [`crate::read`]), a
//! sharded one's index, or a JSON shape list. Only the weights of linear and convolution
//! modules become `[[layer]]`s: by the `kind` a shape list gives each tensor, or else by the
//! name rules of [`NAME_RULES`]; every other tensor is left to the base and listed in a
//! comment with the reason. Runs that differ only in one index 0..n-1 fold into `repeat`
//! with `{i}`, and the text is checked by parsing it back with [`crate::spec::parse`] before
//! anyone sees it.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::isometry::natural_cmp;
use crate::layer::Layout;
use crate::layer::{BelowMinimum, Distribution, Gain, Kind, Shape};
use crate::read::{self, Checkpoint};
use crate::spec::{self, Pattern, Source};
use crate::units::thousands;

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

/// What a tensor is, as a shape list's `"kind"` says (examples/shapes_from_torch.py and
/// shapes_from_flax.py write it). Only `linear` and `conv` tensors become layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// The weight of a linear map: nn.Linear (and subclasses), transformers' Conv1D (stored
    /// (in, out)), nn.MultiheadAttention's `in_proj_weight`, a Flax Dense kernel.
    Linear,
    /// The weight of a convolution (nn.ConvNd, nn.ConvTransposeNd, a Flax Conv kernel).
    Conv,
    /// An embedding table (nn.Embedding, Flax Embed).
    Embedding,
    /// A parameter of a normalization layer.
    Norm,
    /// A bias.
    Bias,
    /// A buffer (running statistics, counters, position ids).
    Buffer,
    /// Anything else: class tokens, position tables, layer scales ...
    Other,
}

impl TensorKind {
    pub const NAMES: &'static [&'static str] = &[
        "linear",
        "conv",
        "embedding",
        "norm",
        "bias",
        "buffer",
        "other",
    ];

    pub fn parse(name: &str) -> Option<TensorKind> {
        Some(match name {
            "linear" => TensorKind::Linear,
            "conv" => TensorKind::Conv,
            "embedding" => TensorKind::Embedding,
            "norm" => TensorKind::Norm,
            "bias" => TensorKind::Bias,
            "buffer" => TensorKind::Buffer,
            "other" => TensorKind::Other,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TensorKind::Linear => "linear",
            TensorKind::Conv => "conv",
            TensorKind::Embedding => "embedding",
            TensorKind::Norm => "norm",
            TensorKind::Bias => "bias",
            TensorKind::Buffer => "buffer",
            TensorKind::Other => "other",
        }
    }

    /// Whether eoi initializes tensors of this kind.
    pub fn is_layer(self) -> bool {
        matches!(self, TensorKind::Linear | TensorKind::Conv)
    }
}

/// Which part of a tensor's dotted name a [`NameRule`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The last component (`weight`, `cls_token`, `kernel`).
    Leaf,
    /// The component before it: the module's own name (`wte`, `LayerNorm`, `shared`); empty
    /// for a name without a dot. Only the module's own name, never its parents', so that
    /// `embeddings.patch_embeddings.projection.weight` (a convolution) is not an embedding.
    Module,
}

/// One row of the name rules: tensors whose `part` matches `glob` (ASCII case-insensitive;
/// `*` any run, `?` one character) are layers, or are left to the base as `what`.
#[derive(Clone, Copy, Debug)]
pub struct NameRule {
    pub part: Part,
    pub glob: &'static str,
    /// `None`: the tensor is a layer; else what it is, for the comment.
    pub left_as: Option<&'static str>,
}

const fn rule(part: Part, glob: &'static str, left_as: Option<&'static str>) -> NameRule {
    NameRule {
        part,
        glob,
        left_as,
    }
}

/// How a tensor without a `kind` (a checkpoint's, or a bare shape list's) is classified:
/// the first rule that matches decides. Before the rules, tensors of rank 0 or 1 and of
/// rank above 5 are left out; after them, a tensor no rule matched is left out as "not a
/// .weight". The rules follow torchvision's, timm's, transformers' and Flax's names; a
/// misjudged tensor is put right with `--include` or `--exclude`. README ("Start from your
/// model") shows the same table.
pub const NAME_RULES: &[NameRule] = &[
    // nn.MultiheadAttention's packed (q, k, v) projection is a linear weight.
    rule(Part::Leaf, "in_proj_weight", None),
    // Embedding tables: the weight of a module named for it.
    rule(Part::Module, "*embed*", Some("embedding")),
    rule(Part::Module, "wte", Some("embedding")),
    rule(Part::Module, "wpe", Some("embedding")),
    rule(Part::Module, "shared", Some("embedding")),
    rule(Part::Module, "relative_attention_bias", Some("embedding")),
    rule(Part::Leaf, "embedding", Some("embedding")),
    // Position tables and tokens held as bare parameters.
    rule(Part::Leaf, "*embed*", Some("position table")),
    rule(Part::Leaf, "*token*", Some("token")),
    // Scales: layer scale, timm's ls1/ls2 gamma, Flax norms' scale.
    rule(Part::Leaf, "layer_scale*", Some("scale")),
    rule(Part::Leaf, "gamma", Some("scale")),
    rule(Part::Module, "ls?", Some("scale")),
    rule(Part::Leaf, "*scale*", Some("scale")),
    // Normalization layers.
    rule(Part::Module, "*norm*", Some("norm")),
    rule(Part::Module, "ln", Some("norm")),
    rule(Part::Module, "ln_*", Some("norm")),
    rule(Part::Module, "bn", Some("norm")),
    rule(Part::Module, "bn?", Some("norm")),
    // The weights eoi initializes: PyTorch's `.weight`, Flax's `kernel`.
    rule(Part::Leaf, "weight", None),
    rule(Part::Leaf, "kernel", None),
];

/// What the name rules make of `name`: `Ok(())` for a layer, or the reason it is left out.
fn name_rule(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    let (module, leaf) = match lower.rsplit_once('.') {
        Some((path, leaf)) => (path.rsplit('.').next().unwrap_or(path), leaf),
        None => ("", lower.as_str()),
    };
    for r in NAME_RULES {
        let text = match r.part {
            Part::Leaf => leaf,
            Part::Module => module,
        };
        if glob(r.glob).matches(text) {
            return match r.left_as {
                None => Ok(()),
                Some(what) => Err(format!(
                    "{what} (name rule {} on the {})",
                    quoted(r.glob),
                    match r.part {
                        Part::Leaf => "last name part",
                        Part::Module => "module name",
                    }
                )),
            };
        }
    }
    Err("not a .weight, kernel or in_proj_weight".into())
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
    fn hashed(&self) -> &'static str {
        match self.kind {
            SourceKind::Safetensors => "safetensors header",
            SourceKind::Sharded => "index file",
            SourceKind::Json => "JSON shape list",
        }
    }
}

fn usage(message: String) -> Error {
    Error::Usage(message)
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
    let mut file = File::open(path).map_err(|e| {
        Error::Read(read::ReadError::Io {
            path: shown.clone(),
            source: e,
        })
    })?;
    let mut prefix = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut prefix).map_err(|e| {
        Error::Read(read::ReadError::Io {
            path: shown.clone(),
            source: e,
        })
    })?;
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
    let size = file
        .metadata()
        .map_err(|e| {
            Error::Read(read::ReadError::Io {
                path: shown.clone(),
                source: e,
            })
        })?
        .len();
    if size > MAX_JSON {
        return Err(usage(format!(
            "'{shown}' is {size} bytes, over the limit of {MAX_JSON} for a JSON shape list"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Read(read::ReadError::Io {
            path: shown.clone(),
            source: e,
        })
    })?;
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
    let bad = |message: String| {
        usage(format!(
            "'{name}' is not a safetensors file, a sharded index or a JSON shape list: {message}\n  help: a shape list is {{\"fc.weight\": [300, 784], ...}} or [{{\"name\": \"fc.weight\", \"shape\": [300, 784]}}, ...]"
        ))
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| bad(format!("not UTF-8 text at byte {}", e.valid_up_to())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawList = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    let wrong =
        |tensor: &str, message: String| usage(format!("'{name}': tensor \"{tensor}\": {message}"));
    let mut push = |tensor: String,
                    shape: &Value,
                    object: Option<&serde_json::Map<String, Value>>|
     -> Result<(), Error> {
        if tensor.is_empty() {
            return Err(usage(format!("'{name}': a tensor name is empty")));
        }
        if !seen.insert(tensor.clone()) {
            return Err(usage(format!(
                "'{name}': tensor \"{tensor}\" is listed twice"
            )));
        }
        let dims = shape.as_array().ok_or_else(|| {
            wrong(
                &tensor,
                format!("the shape must be an array of integers >= 0, got {shape}"),
            )
        })?;
        if dims.len() > MAX_RANK {
            return Err(wrong(
                &tensor,
                format!("{} dimensions; at most {MAX_RANK}", dims.len()),
            ));
        }
        let shape = dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                wrong(
                    &tensor,
                    format!("the shape must be an array of integers >= 0, got {shape}"),
                )
            })?;
        let field = |key: &str| object.and_then(|o| o.get(key));
        let groups = match field("groups") {
            None => None,
            Some(g) => Some(g.as_u64().filter(|&g| g >= 1).ok_or_else(|| {
                wrong(&tensor, format!("groups must be an integer >= 1, got {g}"))
            })?),
        };
        let text = |key: &str| -> Result<Option<String>, Error> {
            match field(key) {
                None => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(v) => Err(wrong(
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
        entries.push(Entry {
            name: tensor,
            shape,
            groups,
            module,
            kind,
            tied_to,
            dtype: None,
        });
        Ok(())
    };
    const KEYS: &[&str] = &["shape", "groups", "module", "kind", "tied_to"];
    let fields = |tensor: &str, object: &serde_json::Map<String, Value>, name_key: bool| {
        for key in object.keys() {
            if !(KEYS.contains(&key.as_str()) || name_key && key == "name") {
                return Err(wrong(
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
            None => Err(wrong(tensor, "no \"shape\"".into())),
        }
    };
    match raw {
        RawList::Object(pairs) => {
            for (tensor, value) in pairs {
                match &value {
                    Value::Object(object) => {
                        fields(&tensor, object, false)?;
                        push(tensor.clone(), &object["shape"], Some(object))?;
                    }
                    shape => push(tensor, shape, None)?,
                }
            }
        }
        RawList::Array(list) => {
            for (k, value) in list.iter().enumerate() {
                let object = value.as_object().ok_or_else(|| {
                    bad(format!(
                        "entry {k} is not an object {{\"name\": ..., \"shape\": [...]}}"
                    ))
                })?;
                let tensor = object
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("entry {k} has no \"name\" string")))?;
                fields(tensor, object, true)?;
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

/// How the spec is written: the command line's choices.
#[derive(Clone, Debug)]
pub struct Options {
    pub density: crate::layer::Density,
    pub distribution: Distribution,
    pub gain: Option<Gain>,
    pub seed: Option<u64>,
    pub scheme: Option<String>,
    /// Globs of tensors to leave out; they win over `include`.
    pub exclude: Vec<String>,
    /// Globs of tensors to make layers although their kind or the name rules leave them out
    /// (still of rank 2 to 5).
    pub include: Vec<String>,
    /// `[sparsity] below_minimum`, when given.
    pub below_minimum: Option<BelowMinimum>,
    /// Globs of layers kept dense (`[sparsity] dense`).
    pub dense: Vec<String>,
    /// The layout the source's shapes are in; the spec's shapes are PyTorch's, and a flax
    /// source gets `layout = "flax"` in `[output]`.
    pub layout: Layout,
    /// Fold runs into `repeat`.
    pub fold: bool,
}

/// The suffix a mask's name may carry (`X_mask` for layer `X`; torch-prune's
/// `<module>.weight_mask` is the same).
pub const MASK_SUFFIX: &str = "_mask";

/// Sets each layer's density to the fraction of nonzeros in its mask: the tensor named as
/// the layer plus [`MASK_SUFFIX`], or else as the layer itself. Layers matching a `dense`
/// glob keep density 1 and are not looked up. The masks are read a chunk at a time.
fn densities_from(
    masks: &Checkpoint,
    layers: &mut [Layer],
    stored: &HashMap<String, Vec<usize>>,
    options: &Options,
) -> Result<(), Error> {
    let dense: Vec<Pattern> = options.dense.iter().map(|g| glob(g)).collect();
    let shown = masks.path().display().to_string();
    for layer in layers.iter_mut() {
        if dense.iter().any(|p| p.matches(&layer.name)) {
            continue;
        }
        let suffixed = format!("{}{MASK_SUFFIX}", layer.name);
        let Some((file, info)) = masks
            .tensor(&suffixed)
            .or_else(|| masks.tensor(&layer.name))
        else {
            continue;
        };
        let same = info.shape.as_slice() == layer.shape.dims()
            || stored.get(&layer.name) == Some(&info.shape);
        if !same {
            return Err(usage(format!(
                "'{shown}': mask {} has shape {:?}, but layer {} has shape {:?}",
                quoted(&info.name),
                info.shape,
                quoted(&layer.name),
                stored
                    .get(&layer.name)
                    .map_or(layer.shape.dims(), |s| s.as_slice()),
            )));
        }
        let nnz = file.count_nonzero(info)?;
        if nnz == 0 {
            return Err(usage(format!(
                "'{shown}': mask {} of layer {} has no nonzero element, so the layer would have no weights\n  help: leave the layer out with --exclude {}",
                quoted(&info.name),
                quoted(&layer.name),
                quoted(&layer.name),
            )));
        }
        layer.mask = Some((nnz, info.numel as u64, info.name.clone()));
    }
    Ok(())
}

/// A tensor that becomes a layer.
#[derive(Clone, Debug)]
struct Layer {
    name: String,
    shape: Shape,
    /// Convolution groups (1 unless the source says otherwise).
    groups: usize,
    /// `groups` was not in the source: a [C, 1, k...] weight assumed depthwise.
    assumed_depthwise: bool,
    /// Names sharing this layer's storage (tied weights).
    tied: Vec<String>,
    /// The dtype the source stores it in, when known.
    dtype: Option<crate::layer::Dtype>,
    /// It is a layer only because an `--include` glob matched it.
    included: bool,
    /// Density from a mask: (nnz, numel, mask name).
    mask: Option<(u64, u64, String)>,
}

/// A tensor left to the base, with the reason (the heading it is listed under).
struct LeftOut<'a> {
    reason: String,
    entry: &'a Entry,
    /// The names tied to it, left with it.
    tied: Vec<&'a str>,
}

/// The output of [`spec_from`]: the spec and what the user should know about it.
#[derive(Clone, Debug)]
pub struct Written {
    pub text: String,
    /// Warnings for standard error (e.g. convolutions assumed depthwise).
    pub warnings: Vec<String>,
}

/// One `[[layer]]` table: a layer, or a folded run of them.
struct Table {
    name: String,
    repeat: Option<usize>,
    /// The layers it stands for, in index order.
    members: Vec<usize>,
}

/// Quotes text as a TOML basic string (escapes included), for values and for names in
/// comments alike, so no name can break the file.
fn quoted(text: &str) -> String {
    use toml_writer::ToTomlValue as _;
    toml_writer::TomlStringBuilder::new(text)
        .as_basic()
        .to_toml_value()
}

fn float(x: f64) -> String {
    toml::Value::Float(x).to_string()
}

fn glob(pattern: &str) -> Pattern {
    Pattern {
        glob: pattern.to_string(),
        position: (0, 0),
    }
}

/// Writes the spec for `shapes`.
///
/// A tensor becomes a layer when its `kind` is linear or conv, or, without a kind, when the
/// name rules ([`NAME_RULES`]) make it one; an `--include` glob adds a tensor of rank 2 to
/// 5 back, and an `--exclude` glob leaves one out (it has the last word). A tensor tied to
/// another (`tied_to`) is never a layer of its own: it goes with the tensor holding the
/// storage, into that layer's `tied`, or left to the base with it. A [C, 1, k...]
/// convolution weight (C > 1) whose groups the source does not record is assumed depthwise
/// (`groups = C`, with a comment and a warning). With `masks` (`--densities-from`), each
/// layer with a mask gets its density from it (see [`densities_from`]); the others keep the
/// distribution's.
pub fn spec_from(
    shapes: &Shapes,
    options: &Options,
    masks: Option<&Checkpoint>,
) -> Result<Written, Error> {
    let excluded: Vec<Pattern> = options.exclude.iter().map(|g| glob(g)).collect();
    let included: Vec<Pattern> = options.include.iter().map(|g| glob(g)).collect();
    let mut include_used = vec![false; included.len()];
    // The names tied to each storage tensor, in list order.
    let mut ties: HashMap<&str, Vec<&str>> = HashMap::new();
    for entry in &shapes.entries {
        if let Some(target) = &entry.tied_to {
            ties.entry(target.as_str()).or_default().push(&entry.name);
        }
    }
    // A shape list that gives any tensor its groups gives them all (1 when absent).
    let records_groups = shapes.entries.iter().any(|e| e.groups.is_some());
    let mut layers: Vec<Layer> = Vec::new();
    let mut left_out: Vec<LeftOut> = Vec::new();
    for entry in &shapes.entries {
        if entry.name.contains("{i}") {
            return Err(usage(format!(
                "'{}': tensor {} contains \"{{i}}\", which a spec reserves for `repeat`; exclude it with --exclude",
                shapes.name,
                quoted(&entry.name)
            )));
        }
        let tensor = quoted(&entry.name);
        if let Some(target) = &entry.tied_to {
            if let Some(k) = included.iter().position(|p| p.matches(&entry.name)) {
                return Err(usage(format!(
                    "'{}': --include {} matches {tensor}, which is tied to {} (they share one storage)\n  help: include {} instead: the layer is the storage, and {tensor} gets the same weight",
                    shapes.name,
                    quoted(&options.include[k]),
                    quoted(target),
                    quoted(target),
                )));
            }
            continue;
        }
        let rank = entry.shape.len();
        let rank_reason = || match rank {
            0 | 1 => format!("rank {rank}"),
            _ => "more than 5 dimensions".to_string(),
        };
        let proposed: Result<(), String> = match entry.kind {
            Some(kind) if kind.is_layer() => {
                let fits = match kind {
                    TensorKind::Linear => rank == 2,
                    _ => (3..=5).contains(&rank),
                };
                if !fits {
                    return Err(usage(format!(
                        "'{}': tensor {tensor} has kind \"{}\" but shape {:?}: a linear weight has 2 dimensions, a convolution weight 3 to 5\n  help: correct the kind, or leave the tensor out with --exclude {tensor}",
                        shapes.name,
                        kind.name(),
                        entry.shape
                    )));
                }
                Ok(())
            }
            Some(kind) => Err(format!("kind \"{}\"", kind.name())),
            None if !(2..=5).contains(&rank) => Err(rank_reason()),
            None => name_rule(&entry.name),
        };
        let mut by_include = false;
        let reason = if excluded.iter().any(|p| p.matches(&entry.name)) {
            Some("--exclude".to_string())
        } else {
            match proposed {
                Ok(()) => None,
                Err(reason) => {
                    let hits: Vec<usize> = (0..included.len())
                        .filter(|&k| included[k].matches(&entry.name))
                        .collect();
                    for &k in &hits {
                        include_used[k] |= (2..=5).contains(&rank);
                    }
                    if !hits.is_empty() && (2..=5).contains(&rank) {
                        by_include = true;
                        None
                    } else {
                        Some(reason)
                    }
                }
            }
        };
        let tied: Vec<&str> = ties.get(entry.name.as_str()).cloned().unwrap_or_default();
        if let Some(reason) = reason {
            left_out.push(LeftOut {
                reason,
                entry,
                tied,
            });
            continue;
        }
        if entry.shape.contains(&0) {
            return Err(usage(format!(
                "'{}': tensor {tensor} has shape {:?}, with a zero dimension: it has no weights to initialize\n  help: leave it out with --exclude {tensor}",
                shapes.name, entry.shape
            )));
        }
        let torch = options.layout.torch_shape(&entry.shape);
        let dims: Vec<i64> = torch.iter().map(|&d| d as i64).collect();
        let shape = Shape::new(&dims)
            .map_err(|m| usage(format!("'{}': tensor {tensor}: {m}", shapes.name)))?;
        // A checkpoint does not record groups: a [C, 1, k...] kernel is almost always
        // depthwise (MobileNet, EfficientNet, ConvNeXt), unless no layer feeds it (below);
        // the comment says how to undo it.
        let assumed_depthwise = !records_groups
            && entry.groups.is_none()
            && entry.kind != Some(TensorKind::Linear)
            && shape.kind() == Kind::Conv
            && shape.inp() == 1
            && shape.out() > 1;
        let groups = match entry.groups {
            None if assumed_depthwise => shape.out(),
            None => 1,
            Some(g) => usize::try_from(g).unwrap_or(usize::MAX),
        };
        if groups != 1 && (shape.kind() != Kind::Conv || shape.out() % groups != 0) {
            return Err(usage(format!(
                "'{}': tensor {tensor} has groups = {groups}, which its shape {:?} cannot have: groups applies to convolutions (rank 3 to 5) and must divide their output channels ({})\n  help: give the groups of the convolution this weight belongs to, or leave it out with --exclude {tensor}",
                shapes.name,
                entry.shape,
                shape.out()
            )));
        }
        layers.push(Layer {
            name: entry.name.clone(),
            shape,
            groups,
            assumed_depthwise,
            tied: tied.into_iter().map(str::to_string).collect(),
            dtype: entry.dtype,
            included: by_include,
            mask: None,
        });
    }
    // A depthwise convolution reads the C channels another layer makes; a [C, 1, k...]
    // weight that no other layer feeds (no other layer has C outputs) is a first layer on
    // one-channel input (a grayscale CNN's), an ordinary convolution.
    let outs: Vec<usize> = layers.iter().map(|l| l.shape.out()).collect();
    for (k, layer) in layers.iter_mut().enumerate() {
        if layer.assumed_depthwise
            && !outs
                .iter()
                .enumerate()
                .any(|(j, &out)| j != k && out == layer.shape.out())
        {
            layer.assumed_depthwise = false;
            layer.groups = 1;
        }
    }
    if let Some(k) = include_used.iter().position(|used| !used) {
        return Err(usage(format!(
            "'{}': --include {} matches no tensor of rank 2 to 5 that would otherwise be left out\n  help: the spec's closing comment lists every tensor left out, with the reason",
            shapes.name,
            quoted(&options.include[k])
        )));
    }
    if layers.is_empty() {
        return Err(usage(format!(
            "'{}' has no weight of a linear or convolution module to initialize ({} tensors left out, {})\n  help: add tensors with --include GLOB",
            shapes.name,
            left_out.len(),
            summary(&left_out)
        )));
    }
    if let Some(masks) = masks {
        let stored: HashMap<String, Vec<usize>> = shapes
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect();
        densities_from(masks, &mut layers, &stored, options)?;
    }
    let tables = if options.fold {
        fold(&layers)
    } else {
        (0..layers.len())
            .map(|k| Table {
                name: layers[k].name.clone(),
                repeat: None,
                members: vec![k],
            })
            .collect()
    };
    let dtype = output_dtype(&layers);
    let text = render(shapes, options, masks, &layers, &tables, &left_out, &dtype);
    check(&text, &layers)?;
    let mut warnings = Vec::new();
    let assumed = layers.iter().filter(|l| l.assumed_depthwise).count();
    if assumed > 0 {
        warnings.push(format!(
            "{assumed} convolution weights of shape [C, 1, k...] are assumed depthwise (groups = C), since '{}' does not record groups; each has a comment in the spec saying how to undo it (a shape list from examples/shapes_from_torch.py records groups)",
            shapes.name
        ));
    }
    Ok(Written { text, warnings })
}

/// "12 rank 1, 3 kind \"norm\"": the reasons tensors were left out, with counts.
fn summary(left_out: &[LeftOut]) -> String {
    let groups = grouped(left_out);
    if groups.is_empty() {
        return "none".into();
    }
    groups
        .iter()
        .map(|(reason, list)| format!("{} {reason}", list.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tensors left out, grouped by reason in the order each reason first appears.
fn grouped<'a, 'b>(left_out: &'b [LeftOut<'a>]) -> Vec<(&'b str, Vec<&'b LeftOut<'a>>)> {
    let mut groups: Vec<(&str, Vec<&LeftOut>)> = Vec::new();
    for item in left_out {
        match groups.iter_mut().find(|(r, _)| *r == item.reason) {
            Some((_, list)) => list.push(item),
            None => groups.push((&item.reason, vec![item])),
        }
    }
    groups
}

/// The weight dtype the spec's `[output]` records: the dtype most layers are stored in
/// (the first layer's among equals), when it is not f32 and eoi writes it; and the layers
/// stored otherwise, for a comment.
struct OutputDtype {
    /// The dtype to write into `[output]`, when not the default f32.
    write: Option<&'static str>,
    /// The layers' majority dtype, when known.
    majority: Option<crate::layer::Dtype>,
    /// (name, dtype) of the layers not in the majority dtype.
    others: Vec<(String, crate::layer::Dtype)>,
}

fn output_dtype(layers: &[Layer]) -> OutputDtype {
    let mut counts: Vec<(crate::layer::Dtype, usize)> = Vec::new();
    for dtype in layers.iter().filter_map(|l| l.dtype) {
        match counts.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, n)) => *n += 1,
            None => counts.push((dtype, 1)),
        }
    }
    let majority = counts
        .iter()
        .fold(
            None::<(crate::layer::Dtype, usize)>,
            |best, &(d, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((d, n)),
            },
        )
        .map(|(d, _)| d);
    let write = match majority {
        Some(crate::layer::Dtype::BF16) => Some("bf16"),
        Some(crate::layer::Dtype::F16) => Some("f16"),
        Some(crate::layer::Dtype::F64) => Some("f64"),
        _ => None,
    };
    let others = layers
        .iter()
        .filter_map(|l| match (l.dtype, majority) {
            (Some(d), Some(m)) if d != m => Some((l.name.clone(), d)),
            _ => None,
        })
        .collect();
    OutputDtype {
        write,
        majority,
        others,
    }
}

/// Folds runs of layers that differ only in one integer 0..n-1 (same shape and density)
/// into `repeat` tables, largest runs first; the tables come in the order of their first
/// layer.
fn fold(layers: &[Layer]) -> Vec<Table> {
    type Key = (String, Vec<usize>, usize, Option<(u64, u64)>);
    let mut candidates: HashMap<Key, Vec<(usize, usize)>> = HashMap::new();
    for (k, layer) in layers.iter().enumerate() {
        // A tied layer's names do not follow its own `{i}`: it stays a table of its own.
        if !layer.tied.is_empty() {
            continue;
        }
        let name = layer.name.as_bytes();
        let mut at = 0;
        while at < name.len() {
            if !name[at].is_ascii_digit() {
                at += 1;
                continue;
            }
            let start = at;
            while at < name.len() && name[at].is_ascii_digit() {
                at += 1;
            }
            let digits = &layer.name[start..at];
            if digits.len() > 1 && digits.starts_with('0') {
                continue;
            }
            let Ok(value) = digits.parse::<usize>() else {
                continue;
            };
            let template = format!("{}{{i}}{}", &layer.name[..start], &layer.name[at..]);
            let density = layer.mask.as_ref().map(|(nnz, numel, _)| (*nnz, *numel));
            candidates
                .entry((template, layer.shape.dims().to_vec(), layer.groups, density))
                .or_default()
                .push((value, k));
        }
    }
    let mut runs: Vec<(String, Vec<usize>)> = candidates
        .into_iter()
        .filter_map(|((template, _, _, _), mut members)| {
            members.sort_unstable();
            let n = members.len();
            let complete = n >= 2 && members.iter().enumerate().all(|(i, &(v, _))| v == i);
            // The spec expands `repeat` by replacing every "{i}": the template must give back
            // exactly these names.
            let exact = template.matches("{i}").count() == 1
                && members
                    .iter()
                    .all(|&(v, k)| template.replace("{i}", &v.to_string()) == layers[k].name);
            (complete && exact).then(|| (template, members.into_iter().map(|(_, k)| k).collect()))
        })
        .collect();
    runs.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(a.1[0].cmp(&b.1[0]))
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut claimed = vec![false; layers.len()];
    let mut tables = Vec::new();
    for (template, members) in runs {
        if members.iter().any(|&k| claimed[k]) {
            continue;
        }
        for &k in &members {
            claimed[k] = true;
        }
        tables.push(Table {
            name: template,
            repeat: Some(members.len()),
            members,
        });
    }
    for (k, layer) in layers.iter().enumerate() {
        if !claimed[k] {
            tables.push(Table {
                name: layer.name.clone(),
                repeat: None,
                members: vec![k],
            });
        }
    }
    tables.sort_by_key(|t| t.members.iter().copied().min().unwrap_or(0));
    tables
}

fn render(
    shapes: &Shapes,
    options: &Options,
    masks: Option<&Checkpoint>,
    layers: &[Layer],
    tables: &[Table],
    left_out: &[LeftOut],
    dtype: &OutputDtype,
) -> String {
    let mut t = String::new();
    let params: u64 = layers.iter().map(|l| l.shape.numel()).sum();
    let _ = writeln!(
        t,
        "# eoi spec of {}, written by `eoi spec --from` (eoi {}).",
        quoted(&shapes.name),
        crate::VERSION
    );
    let _ = writeln!(t, "# sha256 of its {}: {}", shapes.hashed(), shapes.sha256);
    let by_kind = shapes.entries.iter().any(|e| e.kind.is_some());
    let _ = writeln!(
        t,
        "# {} tensors are the layers below ({} weights, {} [[layer]] tables{}):",
        layers.len(),
        thousands(params),
        tables.len(),
        if options.fold { ", runs folded" } else { "" },
    );
    let _ = writeln!(
        t,
        "# the weights of linear and convolution modules, {}.",
        if by_kind {
            "by the shape list's \"kind\"\n# (README, \"Start from your model\")"
        } else {
            "by eoi's name rules\n# (README, \"Start from your model\")"
        }
    );
    let included = layers.iter().filter(|l| l.included).count();
    if included > 0 {
        let _ = writeln!(t, "# {included} of them are there by --include.");
    }
    let tied: usize = layers.iter().map(|l| l.tied.len()).sum();
    if tied > 0 {
        let _ = writeln!(
            t,
            "# {tied} more names share a layer's storage (tied weights): see `tied`."
        );
    }
    let left_tied: usize = left_out.iter().map(|l| l.tied.len()).sum();
    let _ = writeln!(
        t,
        "# {} tensors are left to the base (`generate --base` copies them unchanged), listed at\n# the end with the reason. --include GLOB adds one back, --exclude GLOB leaves one out.",
        left_out.len() + left_tied,
    );
    if left_tied > 0 {
        let _ = writeln!(
            t,
            "# {left_tied} of them are tied to a tensor listed there and go with it."
        );
    }
    let assumed = layers.iter().filter(|l| l.assumed_depthwise).count();
    if assumed > 0 {
        let _ = writeln!(
            t,
            "# {assumed} convolutions of shape [C, 1, k...] are assumed depthwise (groups = C): the source\n# does not record groups. Each says how to undo it; a shape list from\n# examples/shapes_from_torch.py records groups and makes this sure."
        );
    }
    if let Some(masks) = masks {
        let with = layers.iter().filter(|l| l.mask.is_some()).count();
        let _ = writeln!(
            t,
            "# Densities from the masks in {} (sha256 of its {}: {}):",
            quoted(&masks.path().display().to_string()),
            if masks.is_sharded() {
                "index file"
            } else {
                "safetensors header"
            },
            masks.sha256()
        );
        let _ = writeln!(
            t,
            "# {with} layers have a mask and its fraction of nonzeros as their density; {} keep the distribution's{}.",
            layers.len() - with,
            if options.dense.is_empty() {
                ""
            } else {
                " (or are dense)"
            }
        );
    }
    if options.layout == Layout::Flax {
        t.push_str("# The source is in Flax layout; shapes here are PyTorch's (out, in, k...), and\n# layout = \"flax\" writes them back as (in, out) and (k..., in, out).\n");
    }
    t.push('\n');
    let _ = writeln!(t, "seed = {}", options.seed.unwrap_or(0));
    t.push_str("\n[sparsity]\n");
    let _ = writeln!(t, "density = {}", float(options.density.get()));
    let _ = writeln!(t, "distribution = {}", quoted(options.distribution.name()));
    if !options.dense.is_empty() {
        let globs: Vec<String> = options.dense.iter().map(|g| quoted(g)).collect();
        let _ = writeln!(t, "dense = [{}]", globs.join(", "));
    }
    if let Some(rule) = options.below_minimum {
        let _ = writeln!(t, "below_minimum = {}", quoted(rule.name()));
    }
    if options.scheme.is_some() || options.gain.is_some() {
        t.push_str("\n[init]\n");
        if let Some(scheme) = &options.scheme {
            let _ = writeln!(t, "scheme = {}", quoted(scheme));
        }
        if let Some(gain) = &options.gain {
            let value = match &gain.nonlinearity {
                Some(name) => quoted(name),
                None => float(gain.value),
            };
            let _ = writeln!(t, "gain = {value}");
        }
    }
    let writable =
        dtype.write.is_some() || dtype.majority.is_none_or(|d| d == crate::layer::Dtype::F32);
    if options.layout == Layout::Flax
        || dtype.write.is_some()
        || !writable
        || !dtype.others.is_empty()
    {
        t.push_str("\n[output]\n");
        if options.layout == Layout::Flax {
            t.push_str("layout = \"flax\"\n");
        }
        if let Some(name) = dtype.write {
            let _ = writeln!(
                t,
                "dtype = {}  # the layers' dtype in the source, so `generate --base` keeps it",
                quoted(name)
            );
        }
        if let (false, Some(d)) = (writable, dtype.majority) {
            let _ = writeln!(
                t,
                "# The layers are stored as {} in the source, which eoi does not write (it writes f32,\n# f64, f16, bf16): `generate --base` refuses them until the base is converted.",
                d.safetensors_name()
            );
        }
        if !dtype.others.is_empty() {
            let _ = writeln!(
                t,
                "# {} layers are stored in another dtype than {} (`generate --base` refuses them\n# until --dtype or the base agrees):",
                dtype.others.len(),
                dtype.majority.map_or("f32", |d| d.name())
            );
            for (name, d) in &dtype.others {
                let _ = writeln!(t, "#   {} {}", quoted(name), d.name());
            }
        }
    }
    for table in tables {
        let first = &layers[table.members[0]];
        t.push_str("\n[[layer]]\n");
        let _ = writeln!(t, "name = {}", quoted(&table.name));
        let dims: Vec<String> = first.shape.dims().iter().map(|d| d.to_string()).collect();
        let _ = writeln!(t, "shape = [{}]", dims.join(", "));
        if first.groups != 1 {
            if first.assumed_depthwise {
                let _ = writeln!(
                    t,
                    "groups = {}  # assumed depthwise: the source does not record groups. If this is a plain\n# convolution with one input channel, delete this line (and a depthwise `density` below).",
                    first.groups
                );
            } else {
                let _ = writeln!(t, "groups = {}", first.groups);
            }
        }
        if let Some(n) = table.repeat {
            let _ = writeln!(t, "repeat = {n}");
        }
        if !first.tied.is_empty() {
            let names: Vec<String> = first.tied.iter().map(|n| quoted(n)).collect();
            let _ = writeln!(
                t,
                "tied = [{}]  # these share the weight's storage; --base gives them its bytes",
                names.join(", ")
            );
        }
        if first.included {
            t.push_str("# a layer by --include\n");
        }
        let depthwise = depthwise_dense(table.members.iter().map(|&k| &layers[k]), options);
        if depthwise {
            t.push_str(
                "density = 1.0  # depthwise: EOI's blocks are 1 x 1 (+-gain each), with no sparser form\n",
            );
        }
        if masks.is_some() {
            match &first.mask {
                Some((nnz, numel, mask)) => {
                    let _ = writeln!(
                        t,
                        "density = {}  # {} of {} nonzero in mask {}{}",
                        float(*nnz as f64 / *numel as f64),
                        thousands(*nnz),
                        thousands(*numel),
                        quoted(mask),
                        if table.members.len() > 1 {
                            " (and alike for every {i})"
                        } else {
                            ""
                        },
                    );
                }
                None if depthwise => {}
                None => t.push_str("# no mask used: the density comes from [sparsity]\n"),
            }
        }
    }
    for (reason, list) in grouped(left_out) {
        let count: usize = list.iter().map(|l| 1 + l.tied.len()).sum();
        let _ = writeln!(t, "\n# Left to the base, {reason}: {count}");
        for item in list {
            let mut line = format!("#   {} {:?}", quoted(&item.entry.name), item.entry.shape);
            if let Some(module) = &item.entry.module {
                let _ = write!(line, " ({module})");
            }
            if !item.tied.is_empty() {
                let names: Vec<String> = item.tied.iter().map(|n| quoted(n)).collect();
                let _ = write!(line, "; {} tied to it, so left too", names.join(", "));
            }
            let _ = writeln!(t, "{line}");
        }
    }
    t
}

/// Whether a table's layers get `density = 1.0` of their own: depthwise convolutions (1 x 1
/// blocks, which EOI can only make dense) under EOI, without a mask's density or a `dense`
/// glob (which would then contradict it).
fn depthwise_dense<'a>(mut members: impl Iterator<Item = &'a Layer>, options: &Options) -> bool {
    let eoi = options.scheme.as_deref().is_none_or(|s| s == "eoi");
    let dense: Vec<Pattern> = options.dense.iter().map(|g| glob(g)).collect();
    eoi && members.all(|layer| {
        layer.groups > 1
            && layer.groups == layer.shape.out()
            && layer.shape.inp() == 1
            && layer.mask.is_none()
            && !dense.iter().any(|p| p.matches(&layer.name))
    })
}

/// Parses the written spec back and checks that it expands to exactly the layers, with
/// their groups and tied names.
fn check(text: &str, layers: &[Layer]) -> Result<(), Error> {
    let spec = spec::parse(Source {
        name: "<spec --from>".into(),
        text: text.to_string(),
    })
    .map_err(|e| Error::Internal(format!("the written spec does not parse: {e}")))?;
    type Row<'a> = (&'a str, &'a [usize], usize, &'a [String]);
    let mut want: Vec<Row> = layers
        .iter()
        .map(|l| (l.name.as_str(), l.shape.dims(), l.groups, l.tied.as_slice()))
        .collect();
    let mut got: Vec<Row> = spec
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.shape.dims(), l.groups, l.tied.as_slice()))
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        return Err(Error::Internal(
            "the written spec does not expand to the source's layers".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            density: crate::layer::Density::new(0.1).unwrap(),
            distribution: Distribution::Uniform,
            gain: None,
            seed: None,
            scheme: None,
            exclude: Vec::new(),
            include: Vec::new(),
            below_minimum: None,
            dense: Vec::new(),
            layout: Layout::Torch,
            fold: true,
        }
    }

    fn shapes(list: &[(&str, &[usize])]) -> Shapes {
        Shapes {
            name: "t.json".into(),
            kind: SourceKind::Json,
            sha256: "0".repeat(64),
            entries: list
                .iter()
                .map(|(n, s)| Entry::new(*n, s.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn runs_fold_only_when_complete_from_zero_with_one_shape() {
        let text = spec_from(
            &shapes(&[
                ("h.0.weight", &[4, 4]),
                ("h.1.weight", &[4, 4]),
                ("h.2.weight", &[4, 4]),
                ("g.1.weight", &[4, 4]),
                ("g.2.weight", &[4, 4]),
                ("k.0.weight", &[4, 4]),
                ("k.1.weight", &[4, 8]),
                ("b.0.weight", &[4, 4]),
                ("b.01.weight", &[4, 4]),
            ]),
            &options(),
            None,
        )
        .unwrap()
        .text;
        assert!(
            text.contains("name = \"h.{i}.weight\"\nshape = [4, 4]\nrepeat = 3\n"),
            "{text}"
        );
        for single in [
            "g.1.weight",
            "g.2.weight",
            "k.0.weight",
            "k.1.weight",
            "b.0.weight",
            "b.01.weight",
        ] {
            assert!(
                text.contains(&format!("name = \"{single}\"\n")),
                "{single}: {text}"
            );
        }
    }

    #[test]
    fn names_that_need_quoting_survive_the_round_trip() {
        let text = spec_from(
            &shapes(&[
                ("a \"quoted\"\\name\n0.weight", &[3, 3]),
                ("b\t#1.weight", &[2, 3]),
                ("b\t#0.weight", &[2, 3]),
                ("bias", &[3]),
                ("odd\u{7f}\"\n", &[5]),
            ]),
            &options(),
            None,
        )
        .unwrap()
        .text;
        assert!(text.contains("name = \"b\\t#{i}.weight\"\n"), "{text}");
        // The left-out names are quoted in their comment too: no line escapes it.
        assert!(text.contains("#   \"odd\\u007F\\\"\\n\" [5]"), "{text}");
    }

    #[test]
    fn name_rules_pick_module_weights_and_say_why_the_rest_is_left() {
        for (name, expected) in [
            ("fc.weight", Ok(())),
            ("Conv_0.kernel", Ok(())),
            ("blocks.0.attn.in_proj_weight", Ok(())),
            ("embeddings.patch_embeddings.projection.weight", Ok(())),
            (
                "model.embed_tokens.weight",
                Err("embedding (name rule \"*embed*\" on the module name)"),
            ),
            (
                "shared.weight",
                Err("embedding (name rule \"shared\" on the module name)"),
            ),
            (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                Err("embedding (name rule \"relative_attention_bias\" on the module name)"),
            ),
            (
                "params.Table.embedding",
                Err("embedding (name rule \"embedding\" on the last name part)"),
            ),
            (
                "encoder.pos_embedding",
                Err("position table (name rule \"*embed*\" on the last name part)"),
            ),
            (
                "class_token",
                Err("token (name rule \"*token*\" on the last name part)"),
            ),
            (
                "features.1.0.layer_scale",
                Err("scale (name rule \"layer_scale*\" on the last name part)"),
            ),
            (
                "blocks.0.ls1.gamma",
                Err("scale (name rule \"gamma\" on the last name part)"),
            ),
            (
                "encoder.layer.0.output.LayerNorm.weight",
                Err("norm (name rule \"*norm*\" on the module name)"),
            ),
            (
                "h.0.ln_1.weight",
                Err("norm (name rule \"ln_*\" on the module name)"),
            ),
            (
                "relative_position_bias_table",
                Err("not a .weight, kernel or in_proj_weight"),
            ),
        ] {
            assert_eq!(name_rule(name), expected.map_err(String::from), "{name}");
        }
    }

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

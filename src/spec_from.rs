//! `eoi spec --from`: a complete spec written from the tensors a model already has. The
//! shapes come from a safetensors checkpoint (headers only, through [`crate::read`]), a
//! sharded one's index, or a JSON shape list; every tensor of rank >= 2 becomes a `[[layer]]`,
//! runs that differ only in one index 0..n-1 fold into `repeat` with `{i}`, and the text is
//! checked by parsing it back with [`crate::spec::parse`] before anyone sees it.

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
use crate::read::{self, Checkpoint};
use crate::spec::{self, Distribution, Gain, Kind, Pattern, Shape, Source};
use crate::tensor::Layout;

/// Largest JSON shape list accepted.
pub const MAX_JSON: u64 = 100_000_000;

/// Most dimensions a tensor in a JSON shape list may have.
const MAX_RANK: usize = 64;

/// A tensor of the source: its name, its shape as stored, and its convolution groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub groups: u64,
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
            name: t.name.clone(),
            shape: t.shape.clone(),
            groups: 1,
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
/// `[{"name": ..., "shape": [...], "groups": 1}, ...]` (`groups` optional; in the object form
/// a value may also be `{"shape": [...], "groups": g}`). Names keep their order.
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
    let mut push = |tensor: String, shape: &Value, groups: Option<&Value>| -> Result<(), Error> {
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
        let groups = match groups {
            None => 1,
            Some(g) => g.as_u64().filter(|&g| g >= 1).ok_or_else(|| {
                wrong(&tensor, format!("groups must be an integer >= 1, got {g}"))
            })?,
        };
        entries.push(Entry {
            name: tensor,
            shape,
            groups,
        });
        Ok(())
    };
    let fields = |tensor: &str, object: &serde_json::Map<String, Value>, allowed: &[&str]| {
        for key in object.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(wrong(
                    tensor,
                    format!("unknown key \"{key}\" (known: {})", allowed.join(", ")),
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
                        fields(&tensor, object, &["shape", "groups"])?;
                        push(tensor.clone(), &object["shape"], object.get("groups"))?;
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
                fields(tensor, object, &["name", "shape", "groups"])?;
                push(tensor.to_string(), &object["shape"], object.get("groups"))?;
            }
        }
    }
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

/// How the spec is written: the command line's choices.
#[derive(Clone, Debug)]
pub struct Options {
    pub density: spec::Density,
    pub distribution: Distribution,
    pub gain: Option<Gain>,
    pub seed: Option<u64>,
    pub scheme: Option<String>,
    /// Globs of tensors to leave out.
    pub exclude: Vec<String>,
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
    /// Density from a mask: (nnz, numel, mask name).
    mask: Option<(u64, u64, String)>,
}

/// Why a tensor is not a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum LeftOut {
    /// Rank 0 or 1: biases, norm parameters, counters.
    Rank,
    /// More than 5 dimensions, which no weight eoi makes has.
    TooManyDims,
    /// An `--exclude` glob.
    Excluded,
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
/// With `masks` (`--densities-from`), each layer with a mask gets its density from it (see
/// [`densities_from`]); the others keep the distribution's.
pub fn spec_from(
    shapes: &Shapes,
    options: &Options,
    masks: Option<&Checkpoint>,
) -> Result<String, Error> {
    let excluded: Vec<Pattern> = options.exclude.iter().map(|g| glob(g)).collect();
    let mut layers: Vec<Layer> = Vec::new();
    let mut left_out: Vec<(LeftOut, &Entry)> = Vec::new();
    for entry in &shapes.entries {
        if entry.name.contains("{i}") {
            return Err(usage(format!(
                "'{}': tensor {} contains \"{{i}}\", which a spec reserves for `repeat`; exclude it with --exclude",
                shapes.name,
                quoted(&entry.name)
            )));
        }
        let reason = if excluded.iter().any(|p| p.matches(&entry.name)) {
            Some(LeftOut::Excluded)
        } else if entry.shape.len() < 2 {
            Some(LeftOut::Rank)
        } else if entry.shape.len() > 5 {
            Some(LeftOut::TooManyDims)
        } else {
            None
        };
        if let Some(reason) = reason {
            left_out.push((reason, entry));
            continue;
        }
        let tensor = quoted(&entry.name);
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
        let groups = usize::try_from(entry.groups).unwrap_or(usize::MAX);
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
            mask: None,
        });
    }
    if layers.is_empty() {
        return Err(usage(format!(
            "'{}' has no tensor of rank 2 or more left to initialize ({} left out)",
            shapes.name,
            left_out.len()
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
    let text = render(shapes, options, masks, &layers, &tables, &left_out);
    check(&text, &layers)?;
    Ok(text)
}

/// Folds runs of layers that differ only in one integer 0..n-1 (same shape and density)
/// into `repeat` tables, largest runs first; the tables come in the order of their first
/// layer.
fn fold(layers: &[Layer]) -> Vec<Table> {
    type Key = (String, Vec<usize>, usize, Option<(u64, u64)>);
    let mut candidates: HashMap<Key, Vec<(usize, usize)>> = HashMap::new();
    for (k, layer) in layers.iter().enumerate() {
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

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render(
    shapes: &Shapes,
    options: &Options,
    masks: Option<&Checkpoint>,
    layers: &[Layer],
    tables: &[Table],
    left_out: &[(LeftOut, &Entry)],
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
    let _ = writeln!(
        t,
        "# {} tensors of rank >= 2 are the layers below ({} weights, {} [[layer]] tables{});",
        layers.len(),
        thousands(params),
        tables.len(),
        if options.fold {
            " after folding runs into `repeat`"
        } else {
            ""
        },
    );
    let _ = writeln!(
        t,
        "# {} tensors are left out and listed at the end.",
        left_out.len()
    );
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
    if options.layout == Layout::Flax {
        t.push_str("\n[output]\nlayout = \"flax\"\n");
    }
    for table in tables {
        let first = &layers[table.members[0]];
        t.push_str("\n[[layer]]\n");
        let _ = writeln!(t, "name = {}", quoted(&table.name));
        let dims: Vec<String> = first.shape.dims().iter().map(|d| d.to_string()).collect();
        let _ = writeln!(t, "shape = [{}]", dims.join(", "));
        if first.groups != 1 {
            let _ = writeln!(t, "groups = {}", first.groups);
        }
        if let Some(n) = table.repeat {
            let _ = writeln!(t, "repeat = {n}");
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
    for (reason, heading) in [
        (
            LeftOut::Rank,
            "rank < 2 (biases, norm parameters, counters)",
        ),
        (LeftOut::TooManyDims, "more than 5 dimensions"),
        (LeftOut::Excluded, "--exclude"),
    ] {
        let list: Vec<&&Entry> = left_out
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, e)| e)
            .collect();
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(t, "\n# Left out, {heading}: {}", list.len());
        for entry in list {
            let _ = writeln!(t, "#   {} {:?}", quoted(&entry.name), entry.shape);
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

/// Parses the written spec back and checks that it expands to exactly the layers.
fn check(text: &str, layers: &[Layer]) -> Result<(), Error> {
    let spec = spec::parse(Source {
        name: "<spec --from>".into(),
        text: text.to_string(),
    })
    .map_err(|e| Error::Internal(format!("the written spec does not parse: {e}")))?;
    let mut want: Vec<(&str, &[usize], usize)> = layers
        .iter()
        .map(|l| (l.name.as_str(), l.shape.dims(), l.groups))
        .collect();
    let mut got: Vec<(&str, &[usize], usize)> = spec
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.shape.dims(), l.groups))
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
            density: spec::Density::new(0.1).unwrap(),
            distribution: Distribution::Uniform,
            gain: None,
            seed: None,
            scheme: None,
            exclude: Vec::new(),
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
                .map(|(n, s)| Entry {
                    name: n.to_string(),
                    shape: s.to_vec(),
                    groups: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn runs_fold_only_when_complete_from_zero_with_one_shape() {
        let text = spec_from(
            &shapes(&[
                ("h.0.w", &[4, 4]),
                ("h.1.w", &[4, 4]),
                ("h.2.w", &[4, 4]),
                ("g.1.w", &[4, 4]),
                ("g.2.w", &[4, 4]),
                ("k.0.w", &[4, 4]),
                ("k.1.w", &[4, 8]),
                ("b.0.w", &[4, 4]),
                ("b.01.w", &[4, 4]),
            ]),
            &options(),
            None,
        )
        .unwrap();
        assert!(
            text.contains("name = \"h.{i}.w\"\nshape = [4, 4]\nrepeat = 3\n"),
            "{text}"
        );
        for single in ["g.1.w", "g.2.w", "k.0.w", "k.1.w", "b.0.w", "b.01.w"] {
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
                ("a \"quoted\"\\name\n0", &[3, 3]),
                ("b\t#1", &[2, 3]),
                ("b\t#0", &[2, 3]),
                ("bias", &[3]),
                ("odd\u{7f}\"\n", &[5]),
            ]),
            &options(),
            None,
        )
        .unwrap();
        assert!(text.contains("name = \"b\\t#{i}\"\n"), "{text}");
        // The left-out names are quoted in their comment too: no line escapes it.
        assert!(text.contains("#   \"odd\\u007F\\\"\\n\" [5]"), "{text}");
    }

    #[test]
    fn json_lists_in_both_forms_and_their_errors() {
        let a = shapes_from_json("a.json", br#"{"x.weight": [3, 4], "x.bias": [3]}"#).unwrap();
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
            (r#"3"#, "not a safetensors file"),
        ] {
            let err = shapes_from_json("x.json", text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}

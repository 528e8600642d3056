//! The architecture spec: TOML parsed once into typed, validated values (`Spec`). Nothing
//! downstream looks at the TOML again. Every error names the file, line and column, the
//! layer and the field, and suggests the nearest known key or value for a misspelling.

use std::fmt;
use std::ops::Range;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::layer::{
    BelowMinimum, CentreRule, ConvMask, Density, Distribution, Dtype, Format, Gain, Kind, Layout,
    Names, Shape,
};
use crate::schemes::Scheme;
use crate::schemes::approx_isometry;

/// Most layers a spec may expand to; a guard against a `repeat` typo allocating forever.
pub const MAX_LAYERS: usize = 1_000_000;

/// Most bytes all layer names may take together after `repeat` expansion: a guard against a
/// long name repeated many times. Each name is stored three times in a safetensors header
/// (weight, mask and record), and readers refuse headers over 100 MB.
pub const MAX_NAME_BYTES: u64 = 32_000_000;

/// The text of a spec and the name to show for it in messages (a path, or `<stdin>`).
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// A spec that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub file: String,
    /// 1-based line and column, when the problem has a place in the text.
    pub position: Option<(usize, usize)>,
    /// What the place is: `layer "fc1.weight", field `density`` and the like.
    pub context: String,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if !self.context.is_empty() {
            write!(f, "{}: ", self.context)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// A glob over layer names: `*` matches any run of characters, `?` any one character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub glob: String,
    pub position: (usize, usize),
}

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.glob.as_bytes(), name.as_bytes())
    }
}

/// Matches `*` (any run) and `?` (any one byte-level character) with backtracking on the
/// last star only, so the cost is linear in practice and never exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The `[sparsity]` table.
#[derive(Clone, Debug)]
pub struct Sparsity {
    pub density: Density,
    pub distribution: Distribution,
    pub erk_power_scale: f64,
    pub dense: Vec<Pattern>,
    pub below_minimum: BelowMinimum,
}

/// The `[init]` table.
#[derive(Clone, Debug)]
pub struct Init {
    /// The scheme of every layer that does not set its own.
    pub scheme: Scheme,
    pub gain: Gain,
    pub conv_center: CentreRule,
    /// The mask rule of every EOI convolution that does not set its own (`conv_mask`).
    pub conv_mask: ConvMask,
    /// The input image's channel count: under `conv_mask = "structured"`, an EOI convolution
    /// whose `in` equals it stays dense.
    pub image_channels: usize,
    /// The std of the biases of every layer named `<module>.weight` (`<module>.bias`, drawn
    /// N(0, bias_std^2)); `None`: no biases unless a layer sets its own.
    pub bias_std: Option<f64>,
    /// The descent of scheme "approx-isometry" (`ai_steps`, `ai_lr`).
    pub isometry: approx_isometry::Settings,
}

/// The `[output]` table; what it leaves out, the command line or the defaults decide.
#[derive(Clone, Debug, Default)]
pub struct OutputSpec {
    pub format: Option<Format>,
    pub dtype: Option<Dtype>,
    pub mask_dtype: Option<Dtype>,
    pub mask_suffix: Option<String>,
    pub layout: Option<Layout>,
    pub names: Option<Names>,
}

/// One layer after `repeat` expansion.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub shape: Shape,
    pub density: Option<Density>,
    pub gain: Option<Gain>,
    pub conv_center: Option<CentreRule>,
    pub conv_mask: Option<ConvMask>,
    pub scheme: Option<Scheme>,
    /// This layer's bias std, overriding `[init]`'s; only for layers named `<module>.weight`.
    pub bias_std: Option<f64>,
    /// Convolution groups G (1 unless the spec says otherwise): the kernel is G independent
    /// blocks of (out/G, in/G), and `shape[1]` is in/G, as PyTorch stores the weight.
    pub groups: usize,
    /// Names of parameters sharing this layer's storage (`tied`), expanded.
    pub tied: Vec<String>,
    /// Where the layer's `name` stands in the spec (1-based line, column).
    pub position: (usize, usize),
}

/// A validated spec.
#[derive(Clone, Debug)]
pub struct Spec {
    pub source: Source,
    pub seed: u64,
    pub sparsity: Sparsity,
    pub init: Init,
    pub output: OutputSpec,
    pub layers: Vec<LayerSpec>,
}

// The TOML as serde sees it. Keys are checked against these structs' fields before serde
// runs, so that an unknown key gets a suggestion; the values carry their spans for errors.
// The same structs give `eoi schema` its JSON Schema (`json_schema`): the doc comments become
// the descriptions, and the `schemars` attributes state the types and ranges that `validate`
// accepts, so an editor's completion and validation follow the parser. What needs two fields
// at once (`repeat` and "{i}" in the name, `erk_power_scale` with "erk") only the parser checks.

/// An eoi architecture spec: the weight tensors of a network, how sparse to make them and
/// how to initialize them (Exact Orthogonal Initialization, Nowak et al., ICML 2024).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "Spec",
    title = "eoi spec",
    extend("required" = ["sparsity", "layer"])
)]
struct RawSpec {
    /// Seed of the random streams: an integer >= 0, default 0. `--seed` overrides it.
    #[schemars(with = "Option<u64>")]
    seed: Option<Spanned<i64>>,
    /// How sparse the network is and how the density is spread over the layers.
    sparsity: Option<RawSparsity>,
    /// How the weights are initialized.
    init: Option<RawInit>,
    /// The output container; the command line overrides it.
    output: Option<RawOutput>,
    /// The weight tensors, one `[[layer]]` table each (or one per group, with `repeat`).
    #[serde(default)]
    #[schemars(length(min = 1))]
    layer: Vec<RawLayer>,
}

/// The `[sparsity]` table: the overall density and how it is spread over the layers.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Sparsity")]
struct RawSparsity {
    /// Overall fraction of weights kept, 0 < density <= 1.
    #[schemars(with = "f64", extend("exclusiveMinimum" = 0, "maximum" = 1))]
    density: Spanned<f64>,
    /// How the density is spread: "uniform" (default; every layer gets `density`), "erk"
    /// (Erdos-Renyi-Kernel, as in RigL) or "er" (Erdos-Renyi).
    #[schemars(with = "Option<String>", extend("enum" = Distribution::NAMES))]
    distribution: Option<Spanned<String>>,
    /// Exponent of the erk raw densities, >= 0 (default 1); "erk" only.
    #[schemars(with = "Option<f64>", range(min = 0))]
    erk_power_scale: Option<Spanned<f64>>,
    /// Globs over layer names (`*` any run, `?` one character) of layers that stay dense.
    #[schemars(
        with = "Option<Vec<String>>",
        extend("items" = { "type": "string", "minLength": 1 })
    )]
    dense: Option<Vec<Spanned<String>>>,
    /// What to do with a layer density below EOI's minimum 1/max(out, in): "error"
    /// (default) or "clamp" (raise it to the minimum and re-balance the others).
    #[schemars(with = "Option<String>", extend("enum" = BelowMinimum::NAMES))]
    below_minimum: Option<Spanned<String>>,
}

/// The `[init]` table: the initialization scheme and its defaults for every layer.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Init")]
struct RawInit {
    /// The initialization scheme of every layer: "eoi" (the default; exact orthogonal), or a
    /// baseline: "kaiming", "scaled-kaiming" or "orthogonal" (a random mask over normal
    /// weights of std gain / sqrt(fan_in), gain / sqrt(fan_in * density), or a dense
    /// orthogonal matrix), "sao" (sparsity-aware orthogonal, densities k / max(out, in)
    /// only), "approx-isometry" (the orthogonal baseline, then gradient descent on the kept
    /// weights towards orthogonality), or "conv-orthogonal" (a random mask over a
    /// block-orthogonal kernel, dense on every tap and orthogonal as a periodic convolution).
    /// `--scheme` overrides it.
    #[schemars(with = "Option<String>", extend("enum" = Scheme::NAMES))]
    scheme: Option<Spanned<String>>,
    /// Factor the orthogonal weights are multiplied by (default 1).
    #[schemars(with = "Option<GainSchema>")]
    gain: Option<Spanned<toml::Value>>,
    /// Density of a convolution's centre tap: "sqrt" (default; min(d * K, 1, sqrt(d)) with K
    /// taps) or "same" (the layer's density d).
    #[schemars(with = "Option<String>", extend("enum" = CentreRule::NAMES))]
    conv_center: Option<Spanned<String>>,
    /// Mask of an EOI convolution: "top-up" (default; the centre matrix's support at the centre
    /// tap, topped up with uniform positions to the density) or "structured" (all taps of every
    /// channel pair the centre matrix connects, with centre density d; layers whose `in` is
    /// `image_channels` stay dense). Linear layers and other schemes ignore it.
    #[schemars(with = "Option<String>", extend("enum" = ConvMask::NAMES))]
    conv_mask: Option<Spanned<String>>,
    /// The input image's channel count, an integer >= 1 (default 3): under conv_mask =
    /// "structured" a convolution whose `in` equals it stays dense.
    #[schemars(with = "Option<u64>", range(min = 1))]
    image_channels: Option<Spanned<i64>>,
    /// Std of the biases, >= 0: every layer named `<module>.weight` also gets `<module>.bias`,
    /// shape (out,), drawn N(0, bias_std^2) (exactly zeros for 0). Without it anywhere, no
    /// biases are written. Layers named otherwise get no bias.
    #[schemars(with = "Option<f64>", range(min = 0))]
    bias_std: Option<Spanned<f64>>,
    /// Scheme "approx-isometry": the most gradient steps per layer, an integer >= 0 (default
    /// 100; 0 keeps the masked orthogonal start).
    #[schemars(with = "Option<u32>", range(min = 0, max = 4294967295u32))]
    ai_steps: Option<Spanned<i64>>,
    /// Scheme "approx-isometry": the learning rate, a number > 0 (default 1; a step that does
    /// not lower the error is undone and the rate halved).
    #[schemars(with = "Option<f64>", extend("exclusiveMinimum" = 0))]
    ai_lr: Option<Spanned<f64>>,
}

/// The `[output]` table; the command line overrides each field.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Output")]
struct RawOutput {
    /// "safetensors" (one file, the default), "npy" (a directory of .npy files) or "npz" (one
    /// NumPy archive of .npy members, for `numpy.load`).
    #[schemars(with = "Option<String>", extend("enum" = Format::NAMES))]
    format: Option<Spanned<String>>,
    /// Weight dtype: "f32" (default), "f64", "f16" or "bf16" (bf16 needs safetensors: NumPy
    /// has no bfloat16). Values are computed in f64 and rounded once, to nearest-even.
    #[schemars(with = "Option<String>", extend("enum" = Dtype::WEIGHT_NAMES))]
    dtype: Option<Spanned<String>>,
    /// Mask dtype: "bool" (default), "u8" or "f32", holding 0 and 1. With names =
    /// "torch-prune" the mask takes the weight's dtype instead.
    #[schemars(with = "Option<String>", extend("enum" = Dtype::MASK_NAMES))]
    mask_dtype: Option<Spanned<String>>,
    /// Suffix of each weight's mask name (default "_mask").
    #[schemars(with = "Option<String>", length(min = 1))]
    mask_suffix: Option<Spanned<String>>,
    /// Order of the weight dimensions: "torch" (default; (out, in) and (out, in, k...)) or
    /// "flax" ((in, out) and (k..., in, out)). Masks follow their weights.
    #[schemars(with = "Option<String>", extend("enum" = Layout::NAMES))]
    layout: Option<Spanned<String>>,
    /// Tensor names: "plain" (default; `X` and `X` + mask_suffix) or "torch-prune"
    /// (`<module>.<param>_orig` and `<module>.<param>_mask`, the mask in the weight's dtype,
    /// for any parameter `<module>.<param>`), as `torch.nn.utils.prune` stores them.
    #[schemars(with = "Option<String>", extend("enum" = Names::NAMES))]
    names: Option<Spanned<String>>,
}

/// One `[[layer]]`: a weight tensor, or `repeat` tensors of the same shape.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Layer")]
struct RawLayer {
    /// The tensor's name in the output, unique; with `repeat` it contains "{i}", replaced by
    /// 0, 1, ... in turn.
    #[schemars(with = "String", length(min = 1))]
    name: Spanned<String>,
    /// The weight shape in PyTorch order: [out, in] for a linear layer, [out, in, k...] for a
    /// convolution with 1 to 3 spatial dimensions.
    #[schemars(schema_with = "shape_schema")]
    shape: Spanned<Vec<Spanned<i64>>>,
    /// This layer's own density, 0 < density <= 1; it counts against the overall budget.
    #[schemars(
        with = "Option<f64>",
        extend("exclusiveMinimum" = 0, "maximum" = 1)
    )]
    density: Option<Spanned<f64>>,
    /// Expands the table into this many layers (>= 1); the name must contain "{i}".
    #[schemars(with = "Option<u64>", range(min = 1))]
    repeat: Option<Spanned<i64>>,
    /// This layer's gain, overriding `[init]`'s.
    #[schemars(with = "Option<GainSchema>")]
    gain: Option<Spanned<toml::Value>>,
    /// This layer's centre rule, overriding `[init]`'s: "sqrt" or "same".
    #[schemars(with = "Option<String>", extend("enum" = CentreRule::NAMES))]
    conv_center: Option<Spanned<String>>,
    /// This layer's conv mask rule, overriding `[init]`'s: "top-up" or "structured"
    /// (convolutions only).
    #[schemars(with = "Option<String>", extend("enum" = ConvMask::NAMES))]
    conv_mask: Option<Spanned<String>>,
    /// This layer's initialization scheme, overriding `[init]`'s.
    #[schemars(with = "Option<String>", extend("enum" = Scheme::NAMES))]
    scheme: Option<Spanned<String>>,
    /// This layer's bias std (>= 0), overriding `[init]`'s; the layer must be named
    /// `<module>.weight`, and its bias is `<module>.bias`.
    #[schemars(with = "Option<f64>", range(min = 0))]
    bias_std: Option<Spanned<f64>>,
    /// Convolution groups G >= 1 (default 1), PyTorch's `groups`: the weight's shape is then
    /// [out, in / G, k...] as PyTorch stores it, `out` divisible by G; depthwise is G = out
    /// with shape [out, 1, k...]. Convolutions only.
    #[schemars(with = "Option<u64>", range(min = 1))]
    groups: Option<Spanned<i64>>,
    /// Names of parameters that share this layer's storage (tied weights, e.g. GPT-2's
    /// "lm_head.weight" with "transformer.wte.weight"); "{i}" is expanded with `repeat` like
    /// `name`. `generate --base` gives each one the base holds the layer's weight bytes.
    #[schemars(with = "Option<Vec<String>>")]
    tied: Option<Vec<Spanned<String>>>,
}

/// The schema of a gain as a spec writes it (the parser reads a `toml::Value`).
struct GainSchema;

impl JsonSchema for GainSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Gain".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number > 0, or the name of a nonlinearity for PyTorch's calculate_gain value (leaky_relu with slope 0.01).",
            "anyOf": [
                { "type": "number", "exclusiveMinimum": 0 },
                { "type": "string", "enum": Gain::NAMES }
            ]
        })
    }
}

fn shape_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "integer", "minimum": 1 },
        "minItems": 2,
        "maxItems": 5
    })
}

/// TOML has no null: an optional key is one that is left out. So the `null` that schemars
/// allows for an `Option` field (`"type": ["integer", "null"]`, or `anyOf` a reference and
/// `{"type": "null"}`) is taken out again.
fn without_null(schema: &mut Schema) {
    if let Some(object) = schema.as_object_mut() {
        if let Some(serde_json::Value::Array(types)) = object.get_mut("type") {
            types.retain(|t| t != "null");
            if let [only] = types.as_slice() {
                let only = only.clone();
                object.insert("type".into(), only);
            }
        }
        if let Some(serde_json::Value::Array(any_of)) = object.get_mut("anyOf") {
            any_of.retain(|s| *s != serde_json::json!({ "type": "null" }));
            if let [serde_json::Value::Object(only)] = any_of.as_slice() {
                let only = only.clone();
                object.remove("anyOf");
                for (key, value) in only {
                    object.entry(key).or_insert(value);
                }
            }
        }
    }
    schemars::transform::transform_subschemas(&mut without_null, schema);
}

/// The JSON Schema (draft 2020-12) of the spec format, made from the structs the parser
/// reads, for editors (taplo, Even Better TOML) and `eoi schema`.
///
/// ```
/// let schema = eoi::spec::json_schema();
/// assert_eq!(schema["required"], serde_json::json!(["sparsity", "layer"]));
/// assert_eq!(schema["additionalProperties"], false); // unknown keys are errors
/// ```
pub fn json_schema() -> serde_json::Value {
    SchemaSettings::draft2020_12()
        .with_transform(without_null)
        .into_generator()
        .into_root_schema_for::<RawSpec>()
        .to_value()
}

/// The field names serde expects for `T`, read from its derived `Deserialize` impl so the
/// key check can never drift from the structs.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor, value::Error};

    struct Probe(Option<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for &mut Probe {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0 = Some(fields);
            Err(Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of two adjacent
/// characters (the optimal string alignment distance), so `gian` is one edit from `gain`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Rows i - 2, i - 1 and i of the table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j - 1] + cost)
                .min(previous[j] + 1)
                .min(current[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    quoted.join(", ")
}

/// The 1-based line and column (in characters) of byte `offset` of a text, which need only
/// be valid UTF-8 before the offset.
pub fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Builds errors for one source text: turns byte offsets into line and column.
struct Errors<'a> {
    source: &'a Source,
}

impl Errors<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        line_column(self.source.text.as_bytes(), offset)
    }

    fn at(
        &self,
        span: &Range<usize>,
        context: impl Into<String>,
        message: impl Into<String>,
    ) -> SpecError {
        SpecError {
            file: self.source.name.clone(),
            position: Some(self.position(span.start)),
            context: context.into(),
            message: message.into(),
            help: None,
        }
    }

    fn whole(&self, message: impl Into<String>, help: Option<String>) -> SpecError {
        SpecError {
            file: self.source.name.clone(),
            position: None,
            context: String::new(),
            message: message.into(),
            help,
        }
    }
}

fn with_help(mut error: SpecError, help: impl Into<String>) -> SpecError {
    error.help = Some(help.into());
    error
}

/// Describes what a byte offset of the document belongs to: the layer and field, or the
/// table and field. Used to give serde's type errors a context.
fn context_at(doc: &DeTable<'_>, offset: usize) -> String {
    let inside = |span: Range<usize>| span.start <= offset && offset < span.end.max(span.start + 1);
    for (key, value) in doc.iter() {
        let key_name: &str = key.get_ref();
        match value.get_ref() {
            DeValue::Array(entries) if key_name == "layer" => {
                for (index, entry) in entries.iter().enumerate() {
                    if let DeValue::Table(table) = entry.get_ref() {
                        let label = layer_label(table, index);
                        for (field, v) in table.iter() {
                            if inside(field.span()) || inside(v.span()) {
                                return format!("{label}, field `{}`", field.get_ref());
                            }
                        }
                        if inside(entry.span()) {
                            return label;
                        }
                    }
                }
            }
            DeValue::Table(table) => {
                for (field, v) in table.iter() {
                    if inside(field.span()) || inside(v.span()) {
                        return format!("[{key_name}], field `{}`", field.get_ref());
                    }
                }
                if inside(value.span()) || inside(key.span()) {
                    return format!("[{key_name}]");
                }
            }
            _ => {
                if inside(value.span()) || inside(key.span()) {
                    return format!("field `{key_name}`");
                }
            }
        }
    }
    String::new()
}

fn layer_label(table: &DeTable<'_>, index: usize) -> String {
    match table.get("name").map(|v| v.get_ref()) {
        Some(DeValue::String(name)) => format!("layer \"{name}\""),
        _ => format!("[[layer]] #{}", index + 1),
    }
}

/// Checks every key of the document against the fields of the raw structs.
fn check_keys(doc: &DeTable<'_>, errors: &Errors<'_>) -> Result<(), SpecError> {
    let top = fields_of::<RawSpec>();
    let unknown = |key: &Spanned<toml::de::DeString<'_>>, known: &[&str], context: String| {
        let name: &str = key.get_ref();
        let error = errors.at(&key.span(), context, format!("unknown key `{name}`"));
        match closest(name, known) {
            Some(near) => with_help(error, format!("did you mean `{near}`?")),
            None => with_help(error, format!("known keys here: {}", known.join(", "))),
        }
    };
    for (key, value) in doc.iter() {
        let name: &str = key.get_ref();
        if !top.contains(&name) {
            return Err(unknown(key, top, String::from("top level")));
        }
        let section: &[&str] = match name {
            "sparsity" => fields_of::<RawSparsity>(),
            "init" => fields_of::<RawInit>(),
            "output" => fields_of::<RawOutput>(),
            "layer" => fields_of::<RawLayer>(),
            _ => continue,
        };
        if name == "layer" && !matches!(value.get_ref(), DeValue::Array(_)) {
            return Err(with_help(
                errors.at(
                    &key.span(),
                    "top level",
                    "`layer` must be an array of tables, one per weight tensor",
                ),
                "write each layer under its own [[layer]] header, with two brackets",
            ));
        }
        match value.get_ref() {
            DeValue::Table(table) => {
                for (field, _) in table.iter() {
                    if !section.contains(&field.get_ref().as_ref()) {
                        return Err(unknown(field, section, format!("[{name}]")));
                    }
                }
            }
            DeValue::Array(entries) if name == "layer" => {
                for (index, entry) in entries.iter().enumerate() {
                    if let DeValue::Table(table) = entry.get_ref() {
                        for (field, _) in table.iter() {
                            if !section.contains(&field.get_ref().as_ref()) {
                                return Err(unknown(field, section, layer_label(table, index)));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses and validates a spec.
pub fn parse(source: Source) -> Result<Spec, SpecError> {
    let errors = Errors { source: &source };
    let text = source.text.as_str();
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(errors.whole(
            "the spec is empty",
            Some("a spec needs a [sparsity] table with `density` and at least one [[layer]] with `name` and `shape`".into()),
        ));
    }
    let doc = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let mut message = format!("invalid TOML: {}", e.message());
        let found = text.get(span.clone()).unwrap_or("");
        if message.ends_with("duplicate key") && !found.is_empty() && !found.contains('\n') {
            message.push_str(&format!(" `{found}`"));
        }
        errors.at(&span, "", message)
    })?;
    check_keys(doc.get_ref(), &errors)?;
    let raw: RawSpec = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let context = context_at(doc.get_ref(), span.start);
        errors.at(&span, context, in_toml_terms(e.message()))
    })?;
    validate(raw, &source, &errors)
}

/// serde's type errors name Rust types (`expected i64`, `struct RawSparsity`); a spec's
/// author knows TOML's: integer, number (float), array, table.
fn in_toml_terms(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid type: integer `")
        && let Some((number, _)) = rest.split_once("` as i128")
    {
        return format!("integer {number} is too large (at most {})", i64::MAX);
    }
    let mut text = message.to_string();
    for (rust, toml) in [
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
        ("floating point", "float"),
    ] {
        text = text.replace(rust, toml);
    }
    match text.find("expected struct Raw") {
        Some(at) => format!("{}expected a table", &text[..at]),
        None => text,
    }
}

fn one_of<T>(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    context: &str,
    what: &str,
    names: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, SpecError> {
    parse(value.get_ref()).ok_or_else(|| {
        let error = errors.at(
            &value.span(),
            context,
            format!(
                "unknown {what} \"{}\"; expected one of {}",
                value.get_ref(),
                quoted_list(names)
            ),
        );
        match closest(value.get_ref(), names) {
            Some(near) => with_help(error, format!("did you mean \"{near}\"?")),
            None => error,
        }
    })
}

fn density(errors: &Errors<'_>, value: &Spanned<f64>, context: &str) -> Result<Density, SpecError> {
    Density::new(*value.get_ref()).ok_or_else(|| {
        errors.at(
            &value.span(),
            context,
            format!("density must be in (0, 1], got {}", value.get_ref()),
        )
    })
}

fn gain(
    errors: &Errors<'_>,
    value: &Spanned<toml::Value>,
    context: &str,
) -> Result<Gain, SpecError> {
    match value.get_ref() {
        toml::Value::Integer(i) => Gain::number(*i as f64),
        toml::Value::Float(x) => Gain::number(*x),
        toml::Value::String(name) => {
            return Gain::named(name).ok_or_else(|| {
                let error = errors.at(
                    &value.span(),
                    context,
                    format!(
                        "unknown gain \"{name}\"; expected a number or one of {}",
                        quoted_list(Gain::NAMES)
                    ),
                );
                match closest(name, Gain::NAMES) {
                    Some(near) => with_help(error, format!("did you mean \"{near}\"?")),
                    None => error,
                }
            });
        }
        other => {
            return Err(errors.at(
                &value.span(),
                context,
                format!(
                    "gain must be a number or a nonlinearity name, got a {}",
                    other.type_str()
                ),
            ));
        }
    }
    .ok_or_else(|| {
        errors.at(
            &value.span(),
            context,
            format!("gain must be finite and > 0, got {}", value.get_ref()),
        )
    })
}

fn bias_std(errors: &Errors<'_>, value: &Spanned<f64>, context: &str) -> Result<f64, SpecError> {
    let std = *value.get_ref();
    if std.is_finite() && std >= 0.0 {
        Ok(std)
    } else {
        Err(errors.at(
            &value.span(),
            context,
            format!("bias_std must be a finite number >= 0, got {std}"),
        ))
    }
}

fn centre_rule(name: &str) -> Option<CentreRule> {
    match name {
        "same" => Some(CentreRule::Same),
        "sqrt" => Some(CentreRule::Sqrt),
        _ => None,
    }
}

fn validate(raw: RawSpec, source: &Source, errors: &Errors<'_>) -> Result<Spec, SpecError> {
    let seed = match &raw.seed {
        None => 0,
        Some(s) => u64::try_from(*s.get_ref()).map_err(|_| {
            errors.at(
                &s.span(),
                "field `seed`",
                format!("seed must be an integer >= 0, got {}", s.get_ref()),
            )
        })?,
    };

    let Some(rs) = raw.sparsity else {
        return Err(errors.whole(
            "the spec has no [sparsity] table",
            Some(
                "add\n    [sparsity]\n    density = 0.1   # the overall fraction of weights kept"
                    .into(),
            ),
        ));
    };
    let ctx = "[sparsity], field";
    let sparsity = Sparsity {
        density: density(errors, &rs.density, &format!("{ctx} `density`"))?,
        distribution: match &rs.distribution {
            None => Distribution::Uniform,
            Some(v) => one_of(
                errors,
                v,
                &format!("{ctx} `distribution`"),
                "distribution",
                Distribution::NAMES,
                |s| match s {
                    "uniform" => Some(Distribution::Uniform),
                    "erk" => Some(Distribution::Erk),
                    "er" => Some(Distribution::Er),
                    _ => None,
                },
            )?,
        },
        erk_power_scale: match &rs.erk_power_scale {
            None => 1.0,
            Some(p) => {
                let value = *p.get_ref();
                if !(value.is_finite() && value >= 0.0) {
                    return Err(errors.at(
                        &p.span(),
                        format!("{ctx} `erk_power_scale`"),
                        format!("erk_power_scale must be finite and >= 0, got {value}"),
                    ));
                }
                value
            }
        },
        dense: rs
            .dense
            .iter()
            .flatten()
            .map(|g| {
                if g.get_ref().is_empty() {
                    Err(errors.at(
                        &g.span(),
                        format!("{ctx} `dense`"),
                        "a dense pattern must not be empty",
                    ))
                } else {
                    Ok(Pattern {
                        glob: g.get_ref().clone(),
                        position: errors.position(g.span().start),
                    })
                }
            })
            .collect::<Result<_, _>>()?,
        below_minimum: match &rs.below_minimum {
            None => BelowMinimum::Error,
            Some(v) => one_of(
                errors,
                v,
                &format!("{ctx} `below_minimum`"),
                "below_minimum",
                BelowMinimum::NAMES,
                BelowMinimum::parse,
            )?,
        },
    };
    if let (Some(p), true) = (
        &rs.erk_power_scale,
        sparsity.distribution != Distribution::Erk,
    ) {
        return Err(with_help(
            errors.at(&p.span(), format!("{ctx} `erk_power_scale`"), format!(
                "erk_power_scale applies to distribution \"erk\" only, but the distribution is \"{}\"",
                sparsity.distribution.name()
            )),
            "remove erk_power_scale or set distribution = \"erk\"",
        ));
    }

    let init = match &raw.init {
        None => Init {
            scheme: Scheme::default(),
            gain: Gain::number(1.0).expect("1 is a valid gain"),
            conv_center: CentreRule::Sqrt,
            conv_mask: ConvMask::TopUp,
            image_channels: 3,
            bias_std: None,
            isometry: approx_isometry::DEFAULT,
        },
        Some(ri) => Init {
            scheme: match &ri.scheme {
                None => Scheme::default(),
                Some(v) => one_of(
                    errors,
                    v,
                    "[init], field `scheme`",
                    "scheme",
                    Scheme::NAMES,
                    Scheme::parse,
                )?,
            },
            gain: match &ri.gain {
                None => Gain::number(1.0).expect("1 is a valid gain"),
                Some(g) => gain(errors, g, "[init], field `gain`")?,
            },
            conv_center: match &ri.conv_center {
                None => CentreRule::Sqrt,
                Some(v) => one_of(
                    errors,
                    v,
                    "[init], field `conv_center`",
                    "conv_center",
                    CentreRule::NAMES,
                    centre_rule,
                )?,
            },
            conv_mask: match &ri.conv_mask {
                None => ConvMask::TopUp,
                Some(v) => one_of(
                    errors,
                    v,
                    "[init], field `conv_mask`",
                    "conv_mask",
                    ConvMask::NAMES,
                    ConvMask::parse,
                )?,
            },
            image_channels: match &ri.image_channels {
                None => 3,
                Some(v) => usize::try_from(*v.get_ref())
                    .ok()
                    .filter(|&c| c >= 1)
                    .ok_or_else(|| {
                        errors.at(
                            &v.span(),
                            "[init], field `image_channels`",
                            format!(
                                "image_channels must be an integer >= 1 (the input image's channel count), got {}",
                                v.get_ref()
                            ),
                        )
                    })?,
            },
            bias_std: ri
                .bias_std
                .as_ref()
                .map(|v| bias_std(errors, v, "[init], field `bias_std`"))
                .transpose()?,
            isometry: approx_isometry::Settings {
                steps: match &ri.ai_steps {
                    None => approx_isometry::DEFAULT.steps,
                    Some(v) => u32::try_from(*v.get_ref()).map_err(|_| {
                        errors.at(
                            &v.span(),
                            "[init], field `ai_steps`",
                            format!(
                                "ai_steps must be an integer from 0 to {}, got {}",
                                u32::MAX,
                                v.get_ref()
                            ),
                        )
                    })?,
                },
                lr: match &ri.ai_lr {
                    None => approx_isometry::DEFAULT.lr,
                    Some(v) => {
                        let lr = *v.get_ref();
                        if !(lr.is_finite() && lr > 0.0) {
                            return Err(with_help(
                                errors.at(
                                    &v.span(),
                                    "[init], field `ai_lr`",
                                    format!("ai_lr must be a number > 0, got {lr}"),
                                ),
                                format!(
                                    "the default is {}; a rate too large for a layer is halved until a step lowers its error",
                                    approx_isometry::DEFAULT.lr
                                ),
                            ));
                        }
                        lr
                    }
                },
            },
        },
    };

    let output = match &raw.output {
        None => OutputSpec::default(),
        Some(ro) => OutputSpec {
            format: ro
                .format
                .as_ref()
                .map(|v| {
                    one_of(
                        errors,
                        v,
                        "[output], field `format`",
                        "format",
                        Format::NAMES,
                        Format::parse,
                    )
                })
                .transpose()?,
            dtype: ro
                .dtype
                .as_ref()
                .map(|v| {
                    one_of(
                        errors,
                        v,
                        "[output], field `dtype`",
                        "dtype",
                        Dtype::WEIGHT_NAMES,
                        Dtype::weight,
                    )
                })
                .transpose()?,
            mask_dtype: ro
                .mask_dtype
                .as_ref()
                .map(|v| {
                    one_of(
                        errors,
                        v,
                        "[output], field `mask_dtype`",
                        "mask_dtype",
                        Dtype::MASK_NAMES,
                        Dtype::mask,
                    )
                })
                .transpose()?,
            mask_suffix: match &ro.mask_suffix {
                Some(s) if s.get_ref().is_empty() => {
                    return Err(errors.at(
                        &s.span(),
                        "[output], field `mask_suffix`",
                        "mask_suffix must not be empty",
                    ));
                }
                other => other.as_ref().map(|s| s.get_ref().clone()),
            },
            layout: ro
                .layout
                .as_ref()
                .map(|v| {
                    one_of(
                        errors,
                        v,
                        "[output], field `layout`",
                        "layout",
                        Layout::NAMES,
                        Layout::parse,
                    )
                })
                .transpose()?,
            names: ro
                .names
                .as_ref()
                .map(|v| {
                    one_of(
                        errors,
                        v,
                        "[output], field `names`",
                        "names",
                        Names::NAMES,
                        Names::parse,
                    )
                })
                .transpose()?,
        },
    };

    if raw.layer.is_empty() {
        return Err(errors.whole(
            "the spec defines no layers",
            Some("add one [[layer]] table per weight tensor:\n    [[layer]]\n    name = \"fc1.weight\"\n    shape = [300, 784]".into()),
        ));
    }
    let mut layers: Vec<LayerSpec> = Vec::new();
    let mut first_seen: std::collections::HashMap<String, (usize, usize)> =
        std::collections::HashMap::new();
    // Every tied name: the layer it goes with, and where it is written.
    let mut tied_seen: std::collections::HashMap<String, (String, Range<usize>)> =
        std::collections::HashMap::new();
    let mut name_bytes: u64 = 0;
    for raw_layer in &raw.layer {
        let name = raw_layer.name.get_ref();
        let label = format!("layer \"{name}\"");
        let field = |f: &str| format!("{label}, field `{f}`");
        if name.is_empty() {
            return Err(errors.at(
                &raw_layer.name.span(),
                field("name"),
                "a layer name must not be empty",
            ));
        }
        let dims: Vec<i64> = raw_layer
            .shape
            .get_ref()
            .iter()
            .map(|d| *d.get_ref())
            .collect();
        let shape =
            Shape::new(&dims).map_err(|m| errors.at(&raw_layer.shape.span(), field("shape"), m))?;
        let layer_density = raw_layer
            .density
            .as_ref()
            .map(|d| density(errors, d, &field("density")))
            .transpose()?;
        let layer_gain = raw_layer
            .gain
            .as_ref()
            .map(|g| gain(errors, g, &field("gain")))
            .transpose()?;
        let conv_center = raw_layer
            .conv_center
            .as_ref()
            .map(|v| {
                one_of(
                    errors,
                    v,
                    &field("conv_center"),
                    "conv_center",
                    CentreRule::NAMES,
                    centre_rule,
                )
            })
            .transpose()?;
        let conv_mask = match &raw_layer.conv_mask {
            None => None,
            Some(v) => {
                let rule = one_of(
                    errors,
                    v,
                    &field("conv_mask"),
                    "conv_mask",
                    ConvMask::NAMES,
                    ConvMask::parse,
                )?;
                if shape.kind() != Kind::Conv {
                    return Err(errors.at(
                        &v.span(),
                        field("conv_mask"),
                        format!(
                            "conv_mask applies to convolutions, but shape {shape} is a linear layer"
                        ),
                    ));
                }
                Some(rule)
            }
        };
        let layer_scheme = raw_layer
            .scheme
            .as_ref()
            .map(|v| {
                one_of(
                    errors,
                    v,
                    &field("scheme"),
                    "scheme",
                    Scheme::NAMES,
                    Scheme::parse,
                )
            })
            .transpose()?;
        let layer_bias_std = match &raw_layer.bias_std {
            None => None,
            Some(v) if !name.ends_with(".weight") => {
                return Err(with_help(
                    errors.at(
                        &v.span(),
                        field("bias_std"),
                        format!(
                            "bias_std needs a layer named <module>.weight (its bias is <module>.bias), got \"{name}\""
                        ),
                    ),
                    "name the layer after its PyTorch parameter, e.g. \"fc1.weight\", or remove bias_std",
                ));
            }
            Some(v) => Some(bias_std(errors, v, &field("bias_std"))?),
        };
        let groups = match &raw_layer.groups {
            None => 1,
            Some(g) => layer_groups(errors, g, &shape, &field("groups"))?,
        };
        let has_index = name.contains("{i}");
        let names: Vec<String> = match &raw_layer.repeat {
            None if has_index => {
                return Err(with_help(
                    errors.at(
                        &raw_layer.name.span(),
                        field("name"),
                        "the name contains \"{i}\" but the layer has no `repeat`",
                    ),
                    "add `repeat = N` to expand it into N layers, or remove \"{i}\" from the name",
                ));
            }
            None => vec![name.clone()],
            Some(r) => {
                let count = *r.get_ref();
                if count < 1 {
                    return Err(errors.at(
                        &r.span(),
                        field("repeat"),
                        format!("repeat must be an integer >= 1, got {count}"),
                    ));
                }
                if !has_index {
                    return Err(with_help(
                        errors.at(&r.span(), field("repeat"), "`repeat` needs \"{i}\" in the layer name, so that the repeated layers get distinct names"),
                        format!("for example name = \"{}\"", suggest_indexed(name)),
                    ));
                }
                if count as u64 > (MAX_LAYERS - layers.len().min(MAX_LAYERS)) as u64 {
                    return Err(errors.at(
                        &r.span(),
                        field("repeat"),
                        format!("repeat = {count} makes the spec longer than {MAX_LAYERS} layers, the most eoi supports"),
                    ));
                }
                let longest = name.replace("{i}", &(count - 1).to_string()).len() as u64;
                let total = name_bytes + count as u64 * longest;
                if total > MAX_NAME_BYTES {
                    return Err(with_help(
                        errors.at(
                            &r.span(),
                            field("repeat"),
                            format!(
                                "repeat = {count} makes {:.1} MB of layer names, more than the {} MB eoi supports",
                                total as f64 / 1e6,
                                MAX_NAME_BYTES / 1_000_000
                            ),
                        ),
                        "use a shorter name: every name is stored three times in a safetensors header, which readers limit to 100 MB",
                    ));
                }
                (0..count)
                    .map(|i| name.replace("{i}", &i.to_string()))
                    .collect()
            }
        };
        let position = errors.position(raw_layer.name.span().start);
        let tied_raw: &[Spanned<String>] = raw_layer.tied.as_deref().unwrap_or_default();
        for t in tied_raw {
            let text = t.get_ref();
            let problem = if text.is_empty() {
                Some("a tied name must not be empty".to_string())
            } else if text.contains("{i}") && raw_layer.repeat.is_none() {
                Some(format!(
                    "tied name \"{text}\" contains \"{{i}}\" but the layer has no `repeat`"
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(errors.at(&t.span(), field("tied"), problem));
            }
        }
        for (index, expanded) in names.into_iter().enumerate() {
            let mut tied = Vec::with_capacity(tied_raw.len());
            for t in tied_raw {
                let tied_name = t.get_ref().replace("{i}", &index.to_string());
                if tied_name == expanded {
                    return Err(errors.at(
                        &t.span(),
                        field("tied"),
                        format!("tied name \"{tied_name}\" is the layer's own name"),
                    ));
                }
                if let Some((other, _)) = tied_seen.get(&tied_name) {
                    return Err(with_help(
                        errors.at(
                            &t.span(),
                            field("tied"),
                            format!(
                                "tied name \"{tied_name}\" is listed twice (also with layer \"{other}\")"
                            ),
                        ),
                        "a parameter shares the storage of one layer: list it once",
                    ));
                }
                tied_seen.insert(tied_name.clone(), (expanded.clone(), t.span()));
                tied.push(tied_name);
            }
            if let Some(&(line, column)) = first_seen.get(&expanded) {
                return Err(errors.at(
                    &raw_layer.name.span(),
                    field("name"),
                    format!("duplicate layer name \"{expanded}\" (first defined at line {line}, column {column})"),
                ));
            }
            first_seen.insert(expanded.clone(), position);
            name_bytes += expanded.len() as u64;
            layers.push(LayerSpec {
                name: expanded,
                shape: shape.clone(),
                density: layer_density,
                gain: layer_gain.clone(),
                conv_center,
                conv_mask,
                scheme: layer_scheme,
                bias_std: layer_bias_std,
                groups,
                tied,
                position,
            });
        }
    }
    // A tied name is a parameter without a layer of its own.
    let mut tied_names: Vec<(&String, &(String, Range<usize>))> = tied_seen.iter().collect();
    tied_names.sort_by_key(|(_, (_, span))| span.start);
    for (tied_name, (owner, span)) in tied_names {
        if let Some(&(line, column)) = first_seen.get(tied_name) {
            return Err(with_help(
                errors.at(
                    span,
                    format!("layer \"{owner}\", field `tied`"),
                    format!(
                        "tied name \"{tied_name}\" is a layer of the spec (line {line}, column {column})"
                    ),
                ),
                "a tied parameter shares this layer's weight and has no layer of its own: remove it from `tied` or remove its [[layer]]",
            ));
        }
    }

    Ok(Spec {
        source: source.clone(),
        seed,
        sparsity,
        init,
        output,
        layers,
    })
}

/// Validates a layer's `groups` against its shape: an integer >= 1, 1 for a linear layer,
/// and dividing `out` (the tensor's second dimension is already in/G, so it needs no check).
fn layer_groups(
    errors: &Errors<'_>,
    value: &Spanned<i64>,
    shape: &Shape,
    context: &str,
) -> Result<usize, SpecError> {
    let g = *value.get_ref();
    if g < 1 {
        return Err(errors.at(
            &value.span(),
            context,
            format!("groups must be an integer >= 1, got {g}"),
        ));
    }
    if g == 1 {
        return Ok(1);
    }
    if shape.kind() == Kind::Linear {
        return Err(with_help(
            errors.at(
                &value.span(),
                context,
                format!(
                    "groups = {g} applies to convolutions, but shape {shape} is a linear layer's (out, in)"
                ),
            ),
            "remove groups (a linear layer has one group), or give the kernel's spatial dimensions in shape",
        ));
    }
    let g = usize::try_from(g).unwrap_or(usize::MAX);
    if shape.out() % g != 0 {
        let divisors: Vec<String> = divisors(shape.out())
            .into_iter()
            .filter(|&d| d > 1)
            .map(|d| d.to_string())
            .collect();
        return Err(with_help(
            errors.at(
                &value.span(),
                context,
                format!(
                    "groups = {g} does not divide out = {} (shape {shape}): each group has out / groups output channels",
                    shape.out()
                ),
            ),
            format!(
                "groups must divide {}: {}; shape is [out, in / groups, k...] as PyTorch stores a grouped convolution's weight",
                shape.out(),
                shorten(&divisors)
            ),
        ));
    }
    Ok(g)
}

/// The divisors of `n`, in increasing order (trial division up to sqrt(n)).
fn divisors(n: usize) -> Vec<usize> {
    let (mut small, mut large) = (Vec::new(), Vec::new());
    let mut d = 1;
    while d <= n / d {
        if n % d == 0 {
            small.push(d);
            if d != n / d {
                large.push(n / d);
            }
        }
        d += 1;
    }
    small.extend(large.into_iter().rev());
    small
}

/// A list for a message, at most ten items and an ellipsis.
fn shorten(items: &[String]) -> String {
    if items.len() <= 10 {
        items.join(", ")
    } else {
        format!("{}, ...", items[..10].join(", "))
    }
}

/// `hidden.weight` -> `hidden.{i}.weight`: a likely indexed form of a name.
fn suggest_indexed(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((module, param)) => format!("{module}.{{i}}.{param}"),
        None => format!("{name}.{{i}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Spec, SpecError> {
        parse(Source {
            name: "test.toml".into(),
            text: text.into(),
        })
    }

    const MINIMAL: &str =
        "[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"fc.weight\"\nshape = [4, 6]\n";

    #[test]
    fn a_minimal_spec_gets_the_defaults() {
        let spec = parse_str(MINIMAL).unwrap();
        assert_eq!(spec.seed, 0);
        assert_eq!(spec.sparsity.distribution, Distribution::Uniform);
        assert_eq!(spec.init.gain.value, 1.0);
        assert_eq!(spec.init.conv_center, CentreRule::Sqrt);
        assert_eq!(spec.layers.len(), 1);
        assert_eq!(spec.layers[0].shape.dims(), &[4, 6]);
        assert_eq!(spec.layers[0].position, (5, 8));
    }

    #[test]
    fn groups_default_to_one_and_must_divide_out() {
        let spec = parse_str(MINIMAL).unwrap();
        assert_eq!(spec.layers[0].groups, 1);
        let conv = |shape: &str, groups: &str| {
            parse_str(&format!(
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"c\"\nshape = {shape}\ngroups = {groups}\n"
            ))
        };
        let spec = conv("[96, 1, 3, 3]", "96").unwrap();
        assert_eq!(spec.layers[0].groups, 96);
        assert_eq!(conv("[4, 6]", "1").unwrap().layers[0].groups, 1);
        for (shape, groups, excerpt) in [
            ("[32, 4, 3, 3]", "3", "groups = 3 does not divide out = 32"),
            ("[4, 6]", "2", "applies to convolutions"),
            ("[8, 4, 3]", "0", "groups must be an integer >= 1, got 0"),
            ("[8, 4, 3]", "-2", "groups must be an integer >= 1, got -2"),
        ] {
            let err = conv(shape, groups).unwrap_err();
            assert_eq!(err.context, "layer \"c\", field `groups`");
            assert_eq!(err.position, Some((6, 10)));
            assert!(err.message.contains(excerpt), "{err}");
        }
        assert_eq!(divisors(12), [1, 2, 3, 4, 6, 12]);
        assert_eq!(divisors(1), [1]);
        assert_eq!(divisors(49), [1, 7, 49]);
    }

    #[test]
    fn repeat_expands_names_from_zero() {
        let spec = parse_str(
            "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"h.{i}.weight\"\nshape = [3, 3]\nrepeat = 3\n",
        )
        .unwrap();
        let names: Vec<&str> = spec.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["h.0.weight", "h.1.weight", "h.2.weight"]);
    }

    #[test]
    fn unknown_keys_get_a_suggestion_and_a_position() {
        let err = parse_str("[sparsity]\ndensty = 0.5\n").unwrap_err();
        assert_eq!(err.position, Some((2, 1)));
        assert!(err.message.contains("unknown key `densty`"), "{err}");
        assert_eq!(err.help.as_deref(), Some("did you mean `density`?"));

        let err = parse_str(&format!("{MINIMAL}shap = [1, 2]\n")).unwrap_err();
        assert!(err.context.contains("layer \"fc.weight\""), "{err}");
        assert!(err.help.unwrap().contains("`shape`"));
    }

    #[test]
    fn type_errors_speak_toml() {
        let err = parse_str("seed = 1.5\n[sparsity]\ndensity = 0.5\n").unwrap_err();
        assert!(err.message.contains("expected an integer"), "{err}");
        let err =
            parse_str("seed = 99999999999999999999\n[sparsity]\ndensity = 0.5\n").unwrap_err();
        assert!(err.message.contains("is too large"), "{err}");
        let err = parse_str("sparsity = 0.5\n").unwrap_err();
        assert!(err.message.ends_with("expected a table"), "{err}");
        let err = parse_str(&format!("{MINIMAL}density = \"0.5\"\n")).unwrap_err();
        assert!(err.message.contains("expected a number"), "{err}");
        let err = parse_str("[sparsity]\ndensity = 0.5\n[layer]\nname = 'a'\nshape = [2, 2]\n")
            .unwrap_err();
        assert!(err.help.unwrap().contains("[[layer]]"));
        let err = parse_str("[sparsity]\ndensity = 0.5\ndensity = 0.2\n").unwrap_err();
        assert!(err.message.contains("duplicate key `density`"), "{err}");
    }

    #[test]
    fn type_errors_name_the_layer_and_field() {
        let err =
            parse_str("[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"a\"\nshape = [3, 3.5]\n")
                .unwrap_err();
        assert!(err.context.contains("layer \"a\", field `shape`"), "{err}");
        assert_eq!(err.position.unwrap().0, 5);
    }

    #[test]
    fn bad_values_are_rejected_with_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "[sparsity]\ndensity = 1.5\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "density must be in (0, 1]",
            ),
            (
                "[sparsity]\ndensity = nan\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "density must be in (0, 1]",
            ),
            (
                "[sparsity]\ndensity = 0.5\ndistribution='erkk'\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "unknown distribution",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[init]\ngain=-1\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "gain must be finite and > 0",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[init]\ngain='tahn'\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "unknown gain",
            ),
            (
                "seed = -1\n[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "seed must be an integer >= 0",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2]\n",
                "2 dimensions",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2,0]\n",
                "at least 1",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[4294967296,4294967296]\n",
                "more elements",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a{i}'\nshape=[2,2]\n",
                "has no `repeat`",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2,2]\nrepeat=2\n",
                "needs \"{i}\"",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a{i}'\nshape=[2,2]\nrepeat=0\n",
                "repeat must be",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a{i}'\nshape=[2,2]\nrepeat=2000000\n",
                "longer than",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a1'\nshape=[2,2]\n[[layer]]\nname='a{i}'\nshape=[2,2]\nrepeat=2\n",
                "duplicate layer name \"a1\"",
            ),
            ("[sparsity]\ndensity = 0.5\n", "no layers"),
            ("[[layer]]\nname='a'\nshape=[2,2]\n", "no [sparsity]"),
            ("# only a comment\n", "empty"),
            ("[sparsity\n", "invalid TOML"),
        ];
        for (text, expected) in cases {
            let err = parse_str(text).unwrap_err();
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn globs_match_stars_and_question_marks() {
        let p = |g: &str| Pattern {
            glob: g.into(),
            position: (1, 1),
        };
        assert!(p("fc.*").matches("fc.weight"));
        assert!(!p("fc.*").matches("fc1.weight"));
        assert!(p("*.weight").matches("a.b.weight"));
        assert!(p("conv?.weight").matches("conv1.weight"));
        assert!(!p("conv?.weight").matches("conv12.weight"));
        assert!(p("*").matches(""));
        assert!(p("a*b*c").matches("aXbYbZc"));
        assert!(!p("a*b*c").matches("aXbYbZ"));
        assert!(p("exact").matches("exact"));
    }

    #[test]
    fn bias_std_is_a_number_at_least_zero_on_weight_layers() {
        let spec = parse_str(
            "[sparsity]\ndensity = 0.5\n[init]\nbias_std = 0.25\n[[layer]]\nname = 'a.weight'\nshape = [2, 2]\nbias_std = 0\n[[layer]]\nname = 'b'\nshape = [2, 2]\n",
        )
        .unwrap();
        assert_eq!(spec.init.bias_std, Some(0.25));
        assert_eq!(spec.layers[0].bias_std, Some(0.0));
        assert_eq!(spec.layers[1].bias_std, None);
        for (value, message) in [
            ("-0.1", "bias_std must be a finite number >= 0, got -0.1"),
            ("nan", "bias_std must be a finite number >= 0"),
            ("inf", "bias_std must be a finite number >= 0"),
        ] {
            let err = parse_str(&format!(
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname = 'a.weight'\nshape = [2, 2]\nbias_std = {value}\n"
            ))
            .unwrap_err();
            assert!(err.message.contains(message), "{err}");
            assert_eq!(err.context, "layer \"a.weight\", field `bias_std`");
            assert_eq!(err.position, Some((6, 12)));
            let err = parse_str(&format!(
                "[sparsity]\ndensity = 0.5\n[init]\nbias_std = {value}\n[[layer]]\nname = 'a.weight'\nshape = [2, 2]\n"
            ))
            .unwrap_err();
            assert_eq!(err.context, "[init], field `bias_std`");
        }
        let err = parse_str(
            "[sparsity]\ndensity = 0.5\n[[layer]]\nname = 'fc'\nshape = [2, 2]\nbias_std = 0.1\n",
        )
        .unwrap_err();
        assert_eq!(err.context, "layer \"fc\", field `bias_std`");
        assert!(
            err.message.contains("needs a layer named <module>.weight"),
            "{err}"
        );
        assert_eq!(err.position, Some((6, 12)));
    }

    #[test]
    fn tied_names_expand_with_repeat_and_are_checked() {
        let spec = parse_str(
            "[sparsity]\ndensity = 0.5\n[[layer]]\nname = 'wte.weight'\nshape = [8, 4]\ntied = ['lm_head.weight']\n[[layer]]\nname = 'h.{i}.w'\nshape = [4, 4]\nrepeat = 2\ntied = ['g.{i}.w']\n",
        )
        .unwrap();
        assert_eq!(spec.layers[0].tied, ["lm_head.weight"]);
        assert_eq!(spec.layers[1].tied, ["g.0.w"]);
        assert_eq!(spec.layers[2].tied, ["g.1.w"]);
        for (layers, message, position) in [
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['b']\n[[layer]]\nname = 'b'\nshape = [2, 2]\n",
                "tied name \"b\" is a layer of the spec (line 8, column 8)",
                (6, 9),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['c', 'c']\n",
                "tied name \"c\" is listed twice (also with layer \"a\")",
                (6, 14),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['a']\n",
                "tied name \"a\" is the layer's own name",
                (6, 9),
            ),
            (
                "[[layer]]\nname = 'h.{i}'\nshape = [2, 2]\nrepeat = 2\ntied = ['c']\n",
                "tied name \"c\" is listed twice (also with layer \"h.0\")",
                (7, 9),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['c.{i}']\n",
                "tied name \"c.{i}\" contains \"{i}\" but the layer has no `repeat`",
                (6, 9),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['']\n",
                "a tied name must not be empty",
                (6, 9),
            ),
        ] {
            let err = parse_str(&format!("[sparsity]\ndensity = 0.5\n{layers}")).unwrap_err();
            assert_eq!(err.message, message, "{layers}");
            assert!(err.context.ends_with(", field `tied`"), "{err}");
            assert_eq!(err.position, Some(position), "{layers}");
        }
    }

    #[test]
    fn field_lists_come_from_the_structs() {
        assert_eq!(
            fields_of::<RawLayer>(),
            &[
                "name",
                "shape",
                "density",
                "repeat",
                "gain",
                "conv_center",
                "conv_mask",
                "scheme",
                "bias_std",
                "groups",
                "tied"
            ]
        );
        assert!(fields_of::<RawSpec>().contains(&"sparsity"));
    }

    /// The schema of `table.field` (`table` "" for the top level), with references resolved.
    fn schema_of(schema: &serde_json::Value, table: &str, field: &str) -> serde_json::Value {
        let resolve = |s: &serde_json::Value| match s["$ref"].as_str() {
            Some(r) => {
                let name = r.strip_prefix("#/$defs/").expect("a local reference");
                schema["$defs"][name].clone()
            }
            None => s.clone(),
        };
        let object = if table.is_empty() {
            schema.clone()
        } else {
            resolve(&schema["properties"][table])
        };
        let object = if table == "layer" {
            resolve(&object["items"])
        } else {
            object
        };
        let property = object["properties"][field].clone();
        assert!(!property.is_null(), "no property {table}.{field}");
        property
    }

    /// A spec with `line` added to `table` (`layer` is the one layer, a 4x6 linear).
    fn with_line(table: &str, line: &str) -> String {
        let mut text = String::new();
        for t in ["sparsity", "init", "output"] {
            text.push_str(&format!("[{t}]\n"));
            if t == "sparsity" {
                text.push_str("density = 0.5\n");
            }
            if t == table {
                text.push_str(&format!("{line}\n"));
            }
        }
        text.push_str("[[layer]]\nname = \"fc.weight\"\nshape = [4, 6]\n");
        if table == "layer" {
            text.push_str(&format!("{line}\n"));
        }
        text
    }

    #[test]
    fn every_name_the_schema_allows_parses_and_others_do_not() {
        let schema = json_schema();
        let fields = [
            ("sparsity", "distribution"),
            ("sparsity", "below_minimum"),
            ("init", "scheme"),
            ("init", "conv_center"),
            ("init", "conv_mask"),
            ("output", "format"),
            ("output", "dtype"),
            ("output", "mask_dtype"),
            ("layer", "conv_center"),
        ];
        for (table, field) in fields {
            let names = schema_of(&schema, table, field)["enum"].clone();
            let names = names.as_array().expect("an enum of names");
            assert!(!names.is_empty());
            for name in names {
                let text = with_line(table, &format!("{field} = {name}"));
                assert!(parse_str(&text).is_ok(), "{table}.{field} = {name}");
            }
            let text = with_line(table, &format!("{field} = \"nonsense\""));
            assert!(parse_str(&text).is_err(), "{table}.{field} = \"nonsense\"");
        }
        let gain = &schema["$defs"]["Gain"];
        let gain_names = gain["anyOf"][1]["enum"].as_array().unwrap();
        assert_eq!(gain_names.len(), Gain::NAMES.len());
        for name in gain_names {
            for table in ["init", "layer"] {
                let text = with_line(table, &format!("gain = {name}"));
                assert!(parse_str(&text).is_ok(), "{table}.gain = {name}");
            }
        }
    }

    #[test]
    fn the_schema_states_the_parsers_ranges() {
        let schema = json_schema();
        for table in ["sparsity", "layer"] {
            let density = schema_of(&schema, table, "density");
            assert_eq!(density["exclusiveMinimum"], 0, "{table}");
            assert_eq!(density["maximum"], 1, "{table}");
        }
        assert!(parse_str(&with_line("layer", "density = 1")).is_ok());
        assert!(parse_str(&with_line("layer", "density = 0.0")).is_err());
        assert_eq!(schema_of(&schema, "", "seed")["minimum"], 0);
        assert_eq!(schema_of(&schema, "layer", "repeat")["minimum"], 1);
        let shape = schema_of(&schema, "layer", "shape");
        assert_eq!(
            (&shape["minItems"], &shape["maxItems"]),
            (&2.into(), &5.into())
        );
        assert_eq!(shape["items"]["minimum"], 1);
        assert_eq!(
            schema["required"],
            serde_json::json!(["sparsity", "layer"]),
            "the parser refuses a spec without either"
        );
    }

    #[test]
    fn the_schema_is_closed_and_documented() {
        let schema = json_schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let mut objects = vec![("Spec", &schema)];
        for (name, def) in schema["$defs"].as_object().unwrap() {
            if def["type"] == "object" {
                objects.push((name, def));
            }
        }
        assert_eq!(
            objects.len(),
            5,
            "the spec, [sparsity], [init], [output], [[layer]]"
        );
        for (name, object) in objects {
            assert_eq!(object["additionalProperties"], false, "{name}");
            assert!(object["description"].is_string(), "{name}");
            for (field, property) in object["properties"].as_object().unwrap() {
                assert!(property["description"].is_string(), "{name}.{field}");
                assert!(!property.to_string().contains("null"), "{name}.{field}");
            }
        }
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(closest("densty", &["density", "dense"]), Some("density"));
        assert_eq!(closest("zzz", &["density", "dense"]), None);
        assert_eq!(closest("gian", &["scheme", "gain"]), Some("gain"));
        assert_eq!(closest("ekr", Distribution::NAMES), Some("erk"));
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }
}

//! The spec's TOML as written: the serde structs (`RawSpec` and one per table) whose fields
//! carry their spans, and [`read`], which refuses an empty text, invalid TOML, an unknown key
//! (with the nearest known one) and a value of the wrong type before validation starts. The
//! same structs, with their doc comments and `schemars` attributes, give the JSON Schema.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostics::{
    Errors, SpecError, closest, context_at, in_toml_terms, layer_label, with_help,
};
use crate::layer::{
    BelowMinimum, CentreRule, ConvMask, Distribution, Dtype, Format, Gain, Layout, Names,
};
use crate::schemes::Scheme;
use crate::schemes::nm::Skip;

// The TOML as serde sees it. Keys are checked against these structs' fields before serde
// runs, so that an unknown key gets a suggestion; the values carry their spans for errors.
// The same structs give `eoi schema` its JSON Schema (`json_schema`): the doc comments become
// the descriptions, and the `schemars` attributes state the types and ranges that validation
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
pub(super) struct RawSpec {
    /// Seed of the random streams: an integer >= 0, default 0. `--seed` overrides it.
    #[schemars(with = "Option<u64>")]
    pub(super) seed: Option<Spanned<i64>>,
    /// How sparse the network is and how the density is spread over the layers.
    pub(super) sparsity: Option<RawSparsity>,
    /// How the weights are initialized.
    pub(super) init: Option<RawInit>,
    /// The output container; the command line overrides it.
    pub(super) output: Option<RawOutput>,
    /// The weight tensors, one `[[layer]]` table each (or one per group, with `repeat`).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub(super) layer: Vec<RawLayer>,
}

/// The `[sparsity]` table: the overall density and how it is spread over the layers.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Sparsity")]
pub(super) struct RawSparsity {
    /// Overall fraction of weights kept, 0 < density <= 1.
    #[schemars(with = "f64", extend("exclusiveMinimum" = 0, "maximum" = 1))]
    pub(super) density: Spanned<f64>,
    /// How the density is spread: "uniform" (default; every layer gets `density`), "erk"
    /// (Erdos-Renyi-Kernel, as in RigL) or "er" (Erdos-Renyi).
    #[schemars(with = "Option<String>", extend("enum" = Distribution::NAMES))]
    pub(super) distribution: Option<Spanned<String>>,
    /// Exponent of the erk raw densities, >= 0 (default 1); "erk" only.
    #[schemars(with = "Option<f64>", range(min = 0))]
    pub(super) erk_power_scale: Option<Spanned<f64>>,
    /// Globs over layer names (`*` any run, `?` one character) of layers that stay dense.
    #[schemars(
        with = "Option<Vec<String>>",
        extend("items" = { "type": "string", "minLength": 1 })
    )]
    pub(super) dense: Option<Vec<Spanned<String>>>,
    /// What to do with a layer density below EOI's minimum 1/max(out, in): "error"
    /// (default) or "clamp" (raise it to the minimum and re-balance the others).
    #[schemars(with = "Option<String>", extend("enum" = BelowMinimum::NAMES))]
    pub(super) below_minimum: Option<Spanned<String>>,
    /// An N:M pattern for every layer, such as "2:4" (NVIDIA's sparse tensor cores): at most
    /// N nonzeros in every group of M consecutive inputs of every row, 0 < N < M, N dividing
    /// M. An N:M layer's density is N/M unless it fixes a lower one; dense layers have no
    /// pattern. "none" (the default): no pattern. A layer's own `nm` overrides it.
    #[schemars(with = "Option<String>", extend("pattern" = "^([0-9]+:[0-9]+|none)$"))]
    pub(super) nm: Option<Spanned<String>>,
    /// Whether N:M patterns hold along the outputs too (every group of M consecutive outputs
    /// of every column), so that the transposed matrix is N:M as well; default false.
    #[schemars(with = "Option<bool>")]
    pub(super) nm_transposable: Option<Spanned<bool>>,
    /// What to do with a layer this table's `nm` does not fit (its input dimension not a
    /// multiple of M, ...): "error" (default), "dense" (the layer stays dense) or
    /// "unstructured" (the layer has no pattern).
    #[schemars(with = "Option<String>", extend("enum" = Skip::NAMES))]
    pub(super) nm_skip: Option<Spanned<String>>,
}

/// The `[init]` table: the initialization scheme and its defaults for every layer.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Init")]
pub(super) struct RawInit {
    /// The initialization scheme of every layer: "eoi" (the default; exact orthogonal), or a
    /// baseline: "kaiming", "scaled-kaiming" or "orthogonal" (a random mask over normal
    /// weights of std gain / sqrt(fan_in), gain / sqrt(fan_in * density), or a dense
    /// orthogonal matrix), "sao" (sparsity-aware orthogonal, densities k / max(out, in)
    /// only), "approx-isometry" (the orthogonal baseline, then gradient descent on the kept
    /// weights towards orthogonality), or "conv-orthogonal" (a random mask over a
    /// block-orthogonal kernel, dense on every tap and orthogonal as a periodic convolution).
    /// `--scheme` overrides it.
    #[schemars(with = "Option<String>", extend("enum" = Scheme::NAMES))]
    pub(super) scheme: Option<Spanned<String>>,
    /// Factor the orthogonal weights are multiplied by (default 1).
    #[schemars(with = "Option<GainSchema>")]
    pub(super) gain: Option<Spanned<toml::Value>>,
    /// Density of a convolution's centre tap: "sqrt" (default; min(d * K, 1, sqrt(d)) with K
    /// taps) or "same" (the layer's density d).
    #[schemars(with = "Option<String>", extend("enum" = CentreRule::NAMES))]
    pub(super) conv_center: Option<Spanned<String>>,
    /// Mask of an EOI convolution: "top-up" (default; the centre matrix's support at the centre
    /// tap, topped up with uniform positions to the density) or "structured" (all taps of every
    /// channel pair the centre matrix connects, with centre density d; layers whose `in` is
    /// `image_channels` stay dense). Linear layers and other schemes ignore it.
    #[schemars(with = "Option<String>", extend("enum" = ConvMask::NAMES))]
    pub(super) conv_mask: Option<Spanned<String>>,
    /// The input image's channel count, an integer >= 1 (default 3): under conv_mask =
    /// "structured" a convolution whose `in` equals it stays dense.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub(super) image_channels: Option<Spanned<i64>>,
    /// Std of the biases, >= 0: every layer named `<module>.weight` also gets `<module>.bias`,
    /// shape (out,), drawn N(0, bias_std^2) (exactly zeros for 0). Without it anywhere, no
    /// biases are written. Layers named otherwise get no bias.
    #[schemars(with = "Option<f64>", range(min = 0))]
    pub(super) bias_std: Option<Spanned<f64>>,
    /// Scheme "approx-isometry": the most gradient steps per layer, an integer >= 0 (default
    /// 100; 0 keeps the masked orthogonal start).
    #[schemars(with = "Option<u32>", range(min = 0, max = 4294967295u32))]
    pub(super) ai_steps: Option<Spanned<i64>>,
    /// Scheme "approx-isometry": the learning rate, a number > 0 (default 1; a step that does
    /// not lower the error is undone and the rate halved).
    #[schemars(with = "Option<f64>", extend("exclusiveMinimum" = 0))]
    pub(super) ai_lr: Option<Spanned<f64>>,
}

/// The `[output]` table; the command line overrides each field.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Output")]
pub(super) struct RawOutput {
    /// "safetensors" (one file, the default), "npy" (a directory of .npy files) or "npz" (one
    /// NumPy archive of .npy members, for `numpy.load`).
    #[schemars(with = "Option<String>", extend("enum" = Format::NAMES))]
    pub(super) format: Option<Spanned<String>>,
    /// Weight dtype: "f32" (default), "f64", "f16" or "bf16" (bf16 needs safetensors: NumPy
    /// has no bfloat16). Values are computed in f64 and rounded once, to nearest-even.
    #[schemars(with = "Option<String>", extend("enum" = Dtype::WEIGHT_NAMES))]
    pub(super) dtype: Option<Spanned<String>>,
    /// Mask dtype: "bool" (default), "u8" or "f32", holding 0 and 1. With names =
    /// "torch-prune" the mask takes the weight's dtype instead.
    #[schemars(with = "Option<String>", extend("enum" = Dtype::MASK_NAMES))]
    pub(super) mask_dtype: Option<Spanned<String>>,
    /// Suffix of each weight's mask name (default "_mask").
    #[schemars(with = "Option<String>", length(min = 1))]
    pub(super) mask_suffix: Option<Spanned<String>>,
    /// Order of the weight dimensions: "torch" (default; (out, in) and (out, in, k...)) or
    /// "flax" ((in, out) and (k..., in, out)). Masks follow their weights.
    #[schemars(with = "Option<String>", extend("enum" = Layout::NAMES))]
    pub(super) layout: Option<Spanned<String>>,
    /// Tensor names: "plain" (default; `X` and `X` + mask_suffix) or "torch-prune"
    /// (`<module>.<param>_orig` and `<module>.<param>_mask`, the mask in the weight's dtype,
    /// for any parameter `<module>.<param>`), as `torch.nn.utils.prune` stores them.
    #[schemars(with = "Option<String>", extend("enum" = Names::NAMES))]
    pub(super) names: Option<Spanned<String>>,
}

/// One `[[layer]]`: a weight tensor, or `repeat` tensors of the same shape.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Layer")]
pub(super) struct RawLayer {
    /// The tensor's name in the output, unique; with `repeat` it contains "{i}", replaced by
    /// 0, 1, ... in turn.
    #[schemars(with = "String", length(min = 1))]
    pub(super) name: Spanned<String>,
    /// The weight shape in PyTorch order: [out, in] for a linear layer, [out, in, k...] for a
    /// convolution with 1 to 3 spatial dimensions.
    #[schemars(schema_with = "shape_schema")]
    pub(super) shape: Spanned<Vec<Spanned<i64>>>,
    /// This layer's own density, 0 < density <= 1; it counts against the overall budget.
    #[schemars(
        with = "Option<f64>",
        extend("exclusiveMinimum" = 0, "maximum" = 1)
    )]
    pub(super) density: Option<Spanned<f64>>,
    /// Expands the table into this many layers (>= 1); the name must contain "{i}".
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub(super) repeat: Option<Spanned<i64>>,
    /// This layer's gain, overriding `[init]`'s.
    #[schemars(with = "Option<GainSchema>")]
    pub(super) gain: Option<Spanned<toml::Value>>,
    /// This layer's centre rule, overriding `[init]`'s: "sqrt" or "same".
    #[schemars(with = "Option<String>", extend("enum" = CentreRule::NAMES))]
    pub(super) conv_center: Option<Spanned<String>>,
    /// This layer's conv mask rule, overriding `[init]`'s: "top-up" or "structured"
    /// (convolutions only).
    #[schemars(with = "Option<String>", extend("enum" = ConvMask::NAMES))]
    pub(super) conv_mask: Option<Spanned<String>>,
    /// This layer's initialization scheme, overriding `[init]`'s.
    #[schemars(with = "Option<String>", extend("enum" = Scheme::NAMES))]
    pub(super) scheme: Option<Spanned<String>>,
    /// This layer's bias std (>= 0), overriding `[init]`'s; the layer must be named
    /// `<module>.weight`, and its bias is `<module>.bias`.
    #[schemars(with = "Option<f64>", range(min = 0))]
    pub(super) bias_std: Option<Spanned<f64>>,
    /// Convolution groups G >= 1 (default 1), PyTorch's `groups`: the weight's shape is then
    /// [out, in / G, k...] as PyTorch stores it, `out` divisible by G; depthwise is G = out
    /// with shape [out, 1, k...]. Convolutions only.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub(super) groups: Option<Spanned<i64>>,
    /// Names of parameters that share this layer's storage (tied weights, e.g. GPT-2's
    /// "lm_head.weight" with "transformer.wte.weight"); "{i}" is expanded with `repeat` like
    /// `name`. `generate --base` gives each one the base holds the layer's weight bytes.
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) tied: Option<Vec<Spanned<String>>>,
    /// This layer's N:M pattern, such as "2:4", overriding `[sparsity]`'s; "none" for no
    /// pattern.
    #[schemars(with = "Option<String>", extend("pattern" = "^([0-9]+:[0-9]+|none)$"))]
    pub(super) nm: Option<Spanned<String>>,
    /// Whether this layer's N:M pattern holds along its outputs too, overriding
    /// `[sparsity]`'s.
    #[schemars(with = "Option<bool>")]
    pub(super) nm_transposable: Option<Spanned<bool>>,
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

/// The schema of a shape: 2 to 5 integers >= 1, as `Shape::new` accepts.
fn shape_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "integer", "minimum": 1 },
        "minItems": 2,
        "maxItems": 5
    })
}

/// Reads a spec's text into the raw structs, or says what keeps it from being read: an empty
/// spec, invalid TOML, an unknown key, or a value of the wrong type.
pub(super) fn read(errors: &Errors<'_>) -> Result<RawSpec, SpecError> {
    let text = errors.source.text.as_str();
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
    check_keys(doc.get_ref(), errors)?;
    let raw: RawSpec = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let context = context_at(doc.get_ref(), span.start);
        errors.at(&span, context, in_toml_terms(e.message()))
    })?;
    Ok(raw)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{MINIMAL, parse_str};

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
                "tied",
                "nm",
                "nm_transposable"
            ]
        );
        assert!(fields_of::<RawSpec>().contains(&"sparsity"));
    }
}

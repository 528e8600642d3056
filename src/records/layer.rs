//! The layer record: one type for what eoi says about a layer, written by `plan --json`,
//! `generate --json`, safetensors `eoi.layers` and the npy manifest, and read back by
//! `verify`, `inspect` and `isometry`. Optional fields are absent, not null, where the layer
//! has nothing to say (no groups, no tied names, no bias, another scheme's fields), so the
//! records of every artifact keep their bytes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::layer::{CentreRule, ConvMask, Kind, Origin};
use crate::schemes::nm::Pattern;
use crate::schemes::{LayerPlan, LayerStats, Scheme};

/// One layer as eoi records it: its plan, then either what the plan expects (`expected_nnz`,
/// in `plan --json`) or what generation achieved (`achieved_density`, `nnz`, ... in
/// artifacts and `generate --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LayerRecord {
    /// The weight's name: the layer's name in the spec.
    pub name: String,
    /// The weight's shape in PyTorch order: (out, in) or (out, in / groups, k...).
    pub shape: Vec<usize>,
    /// Whether the layer is a matrix or a convolution kernel.
    pub kind: Kind,
    /// The layer's initialization scheme; eoi when a record has none.
    #[serde(default)]
    pub scheme: Scheme,
    /// The target density of the whole tensor.
    pub density: f64,
    /// Why the layer has its density.
    pub origin: Origin,
    /// Elements of the weight.
    pub params: u64,
    /// The gain the weight is scaled by.
    pub gain: f64,
    /// Convolution groups; absent for 1 (every layer but grouped convolutions).
    #[serde(default = "one_group", skip_serializing_if = "is_one_group")]
    #[schemars(range(min = 1))]
    pub groups: usize,
    /// Names of parameters sharing the layer's storage; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tied: Vec<String>,
    /// SAO: the degree of the layer's regular bipartite structure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degree: Option<usize>,
    /// Approximate isometry: the gradient steps of the descent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_steps: Option<u32>,
    /// Approximate isometry: the learning rate of the descent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_lr: Option<f64>,
    /// EOI convolutions: how the centre matrix's density follows from the layer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_center: Option<CentreRule>,
    /// EOI convolutions: which kernel positions the mask keeps; absent for top-up.
    #[serde(default = "top_up", skip_serializing_if = "is_top_up")]
    pub conv_mask: ConvMask,
    /// EOI convolutions: the density the centre matrix (each group's block) is built at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre_density: Option<f64>,
    /// N:M layers: the pattern, at most N nonzeros in every group of M consecutive inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nm: Option<Pattern>,
    /// N:M layers: whether the pattern holds along the outputs too; absent when it does not.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nm_transposable: bool,
    /// EOI convolutions: true when the centre rule asked less than the centre's identity,
    /// so the centre was built at the identity (`centre_density` 1/max(out/G, in/G)) and the
    /// mask's top-up reaches the layer's density; absent otherwise.
    #[serde(default, skip_serializing_if = "is_false")]
    pub centre_raised: bool,
    /// The layer's bias tensor, for a layer with a bias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
    /// The std the bias is drawn with, for a layer with a bias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bias_std: Option<f64>,
    /// Plans: the nonzeros the plan expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_nnz: Option<u64>,
    /// Artifacts: ones in the mask over its elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_density: Option<f64>,
    /// Artifacts: ones in the mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nnz: Option<u64>,
    /// Artifacts, EOI: the Givens rotations applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotations: Option<u64>,
    /// Artifacts, EOI and SAO convolutions: nonzeros of the centre matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre_nnz: Option<u64>,
    /// Artifacts, approximate isometry: `||G - gain^2 I||_F / ||gain^2 I||_F` the descent
    /// reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isometry_error: Option<f64>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn one_group() -> usize {
    1
}

fn is_one_group(groups: &usize) -> bool {
    *groups == 1
}

fn top_up() -> ConvMask {
    ConvMask::TopUp
}

fn is_top_up(mask: &ConvMask) -> bool {
    *mask == ConvMask::TopUp
}

/// The fields every record has, in record order; the others have defaults or are optional.
pub const REQUIRED: &[&str] = &[
    "name", "shape", "kind", "density", "origin", "params", "gain",
];

impl LayerRecord {
    /// A layer's record: its plan, and what generation achieved when `stats` is given
    /// (else the nonzeros the plan expects).
    pub fn new(layer: &LayerPlan, stats: Option<&LayerStats>) -> LayerRecord {
        let fields = layer.rules().record(layer);
        let (ai_steps, ai_lr) = match (fields.ai_steps, fields.ai_lr) {
            (Some(steps), Some(lr)) => (Some(steps), Some(lr)),
            _ => (None, None),
        };
        let (bias, bias_std) = match (layer.bias_name(), layer.bias_std) {
            (Some(bias), Some(std)) => (Some(bias), Some(std)),
            _ => (None, None),
        };
        LayerRecord {
            name: layer.name.clone(),
            shape: layer.shape.dims().to_vec(),
            kind: layer.kind(),
            scheme: layer.scheme,
            density: layer.density,
            origin: layer.origin,
            params: layer.shape.numel(),
            gain: layer.gain.value,
            groups: layer.groups,
            tied: layer.tied.clone(),
            degree: fields.degree,
            ai_steps,
            ai_lr,
            conv_center: fields.conv_center,
            conv_mask: fields.conv_mask.unwrap_or(ConvMask::TopUp),
            centre_density: fields.centre_density,
            nm: layer.nm.map(|nm| nm.pattern),
            nm_transposable: layer.nm.is_some_and(|nm| nm.transposable),
            centre_raised: fields.centre_raised,
            bias,
            bias_std,
            expected_nnz: stats.is_none().then(|| layer.expected_nnz()),
            achieved_density: stats.map(LayerStats::density),
            nnz: stats.map(|s| s.nnz),
            rotations: stats.and_then(|s| s.rotations),
            centre_nnz: stats.and_then(|s| s.centre_nnz),
            isometry_error: stats.and_then(|s| s.isometry_error),
        }
    }

    /// The record as JSON, as artifacts and outputs hold it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a record of strings, numbers and lists serializes")
    }

    /// The layer's bias tensor and the std it was drawn with, when it has one.
    pub fn bias(&self) -> Option<(&str, f64)> {
        Some((self.bias.as_deref()?, self.bias_std?))
    }

    /// Reads a record without trusting it: what is wrong is described in words that follow
    /// "the record of layer NAME" (`has no "nnz"`, `has "nnz" that is not a whole number`).
    /// Besides the types, a bias std is not negative and comes with its bias tensor, and the
    /// groups divide the shape's outputs.
    pub fn read(raw: &Value) -> Result<LayerRecord, String> {
        let Some(object) = raw.as_object() else {
            return Err("is not a JSON object".into());
        };
        if let Some(key) = REQUIRED.iter().find(|key| !object.contains_key(**key)) {
            return Err(format!("has no \"{key}\""));
        }
        let record: LayerRecord = serde_path_to_error::deserialize(raw).map_err(|e| {
            let field = match e.path().iter().next() {
                Some(serde_path_to_error::Segment::Map { key }) => key.clone(),
                _ => String::new(),
            };
            malformed(&field, object.get(&field), e.inner())
        })?;
        if let Some(std) = record.bias_std {
            if std < 0.0 {
                return Err(format!("has \"bias_std\" {std}, below 0"));
            }
            if record.bias.is_none() {
                return Err("has no \"bias\"".into());
            }
        }
        if record.nm_transposable && record.nm.is_none() {
            return Err("has \"nm_transposable\" but no \"nm\"".into());
        }
        let (g, shape) = (record.groups, &record.shape);
        let out = shape.first().copied().unwrap_or(0);
        if g == 0 || out % g != 0 || (g > 1 && shape.len() < 3) {
            return Err(format!(
                "has \"groups\" {g}, which is not a number of groups of shape {shape:?}"
            ));
        }
        Ok(record)
    }
}

/// What is wrong with `field` of a record, whose value is `value`, in words.
fn malformed(field: &str, value: Option<&Value>, error: &serde_json::Error) -> String {
    let value = value.map_or_else(String::new, Value::to_string);
    let not = |what: &str| format!("has \"{field}\" {value}, not {what} this eoi knows");
    match field {
        "name" | "bias" => format!("has a \"{field}\" that is not a string"),
        "shape" => "has a \"shape\" that is not a list of dimensions".into(),
        "tied" => "has a \"tied\" that is not a list of names".into(),
        "kind" => not("a layer kind"),
        "scheme" => not("a scheme"),
        "origin" => not("an origin"),
        "conv_center" => not("a centre rule"),
        "conv_mask" => not("a mask rule"),
        "nm" => not("an N:M pattern"),
        "nm_transposable" => format!("has \"{field}\" that is not true or false"),
        "density" | "gain" | "ai_lr" | "centre_density" | "bias_std" | "achieved_density"
        | "isometry_error" => format!("has \"{field}\" that is not a number"),
        "centre_raised" => format!("has \"{field}\" that is not true or false"),
        "params" | "groups" | "degree" | "ai_steps" | "expected_nnz" | "nnz" | "rotations"
        | "centre_nnz" => format!("has \"{field}\" that is not a whole number"),
        "" => format!("is malformed: {error}"),
        _ => format!("has \"{field}\" that is malformed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_required_fields_are_those_of_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(LayerRecord)).unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(required, REQUIRED);
    }

    fn record() -> Value {
        json!({"name": "a", "shape": [4, 2, 3], "kind": "conv", "scheme": "eoi", "density": 0.5,
               "origin": "fixed", "params": 24, "gain": 1.0, "achieved_density": 0.5, "nnz": 12})
    }

    #[test]
    fn old_records_read_with_their_defaults() {
        let mut raw = record();
        raw.as_object_mut().unwrap().remove("scheme");
        let r = LayerRecord::read(&raw).unwrap();
        assert_eq!(
            (r.scheme, r.groups, r.conv_mask, r.tied.len()),
            (Scheme::default(), 1, ConvMask::TopUp, 0)
        );
        // Written back, the defaults stay absent (the scheme is always written).
        let back = r.to_value();
        assert_eq!(back["scheme"], "eoi");
        assert!(back.get("groups").is_none() && back.get("conv_mask").is_none());
    }

    #[test]
    fn malformed_fields_are_named() {
        let cases = [
            ("nnz", json!(-1), "has \"nnz\" that is not a whole number"),
            (
                "density",
                json!("half"),
                "has \"density\" that is not a number",
            ),
            ("name", json!(3), "has a \"name\" that is not a string"),
            (
                "shape",
                json!([4, "x"]),
                "has a \"shape\" that is not a list of dimensions",
            ),
            (
                "scheme",
                json!("eoi2"),
                "has \"scheme\" \"eoi2\", not a scheme this eoi knows",
            ),
            (
                "conv_mask",
                json!(1),
                "has \"conv_mask\" 1, not a mask rule this eoi knows",
            ),
            (
                "tied",
                json!(["b", 2]),
                "has a \"tied\" that is not a list of names",
            ),
            ("bias_std", json!(-0.5), "has \"bias_std\" -0.5, below 0"),
            (
                "groups",
                json!(3),
                "has \"groups\" 3, which is not a number of groups of shape [4, 2, 3]",
            ),
        ];
        for (key, value, expected) in cases {
            let mut raw = record();
            raw[key] = value;
            if key == "bias_std" {
                raw["bias"] = json!("a.bias");
            }
            assert_eq!(LayerRecord::read(&raw).unwrap_err(), expected, "{key}");
        }
        let mut raw = record();
        raw.as_object_mut().unwrap().remove("gain");
        assert_eq!(LayerRecord::read(&raw).unwrap_err(), "has no \"gain\"");
        raw = record();
        raw["bias_std"] = json!(0.5);
        assert_eq!(LayerRecord::read(&raw).unwrap_err(), "has no \"bias\"");
    }
}

//! Provenance read back: what an artifact records about how it was made (the `eoi.*` keys of
//! safetensors `__metadata__`, or an npy `manifest.json`; see [`crate::provenance`] for what
//! is written), parsed without trusting it. A missing or malformed key is described, not
//! fatal, so `verify` can report it beside everything else.

use std::collections::HashSet;

use serde_json::Value;

use crate::provenance::VERSION_KEY;
use crate::schemes::conv::ConvMask;
use crate::spec::Scheme;
/// One layer as an artifact records it (an entry of `eoi.layers`), read back.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRecord {
    pub name: String,
    pub shape: Vec<usize>,
    /// Target density of the whole tensor.
    pub density: f64,
    /// The layer's scheme; records without one are EOI's.
    pub scheme: Scheme,
    pub gain: f64,
    pub achieved_density: f64,
    /// Ones in the mask.
    pub nnz: u64,
    /// Nonzeros of the centre matrix, for convolutions.
    pub centre_nnz: Option<u64>,
    /// The kernel's mask rule; top-up when the record has none (as before structured masks).
    pub conv_mask: ConvMask,
    /// The layer's bias tensor and the std it was drawn with, when it has one.
    pub bias: Option<(String, f64)>,
    /// Approximate isometry: the relative Frobenius error its descent reached.
    pub isometry_error: Option<f64>,
    /// Convolution groups; 1 when the record has none (every layer before groups existed).
    pub groups: usize,
    /// The record as written, to compare with a regenerated one field by field.
    pub raw: Value,
}

/// What an artifact says about how it was made, read back from safetensors `__metadata__`
/// or an npy `manifest.json`. Whatever is missing or malformed is `None` here and described
/// in `problems`, so one bad key does not hide what the others say.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub version: Option<String>,
    pub stream_version: Option<u32>,
    pub schema_version: Option<u32>,
    pub seed: Option<u64>,
    pub mask_suffix: Option<String>,
    pub spec: Option<String>,
    /// The scheme `--scheme` imposed on every layer, if it was given.
    pub scheme_override: Option<Scheme>,
    pub layers: Option<Vec<LayerRecord>>,
    /// Each key that is missing or malformed, in words.
    pub problems: Vec<String>,
}

impl Recorded {
    /// Reads the `eoi.*` keys of safetensors metadata.
    pub fn from_metadata(pairs: &[(String, String)]) -> Recorded {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let mut recorded = Recorded::default();
        let mut number = |key: &str| -> Option<u64> {
            match get(key) {
                None => {
                    recorded
                        .problems
                        .push(format!("metadata key \"{key}\" is missing"));
                    None
                }
                Some(text) => match text.parse::<u64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        recorded.problems.push(format!(
                            "metadata key \"{key}\" is \"{text}\", not a whole number"
                        ));
                        None
                    }
                },
            }
        };
        let stream_version = number("eoi.stream_version");
        let schema_version = number("eoi.schema_version");
        let seed = number("eoi.seed");
        recorded.stream_version = stream_version.and_then(|n| u32::try_from(n).ok());
        recorded.schema_version = schema_version.and_then(|n| u32::try_from(n).ok());
        recorded.seed = seed;
        for (key, slot) in [
            ("eoi.version", &mut recorded.version),
            ("eoi.mask_suffix", &mut recorded.mask_suffix),
            ("eoi.spec", &mut recorded.spec),
        ] {
            match get(key) {
                Some(v) => *slot = Some(v.to_string()),
                None => recorded
                    .problems
                    .push(format!("metadata key \"{key}\" is missing")),
            }
        }
        if let Some(name) = get("eoi.scheme") {
            recorded.scheme_override = Scheme::parse(name);
            if recorded.scheme_override.is_none() {
                recorded.problems.push(format!(
                    "metadata key \"eoi.scheme\" is \"{name}\", not a scheme this eoi knows"
                ));
            }
        }
        match get("eoi.layers") {
            None => recorded
                .problems
                .push("metadata key \"eoi.layers\" is missing".into()),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(layers) => recorded.layers = read_layers(&layers, &mut recorded.problems),
                Err(e) => recorded
                    .problems
                    .push(format!("metadata key \"eoi.layers\" is not JSON: {e}")),
            },
        }
        recorded
    }

    /// Reads an npy manifest (`eoi_version`, `stream_version`, `seed`, ... with typed values).
    pub fn from_manifest(doc: &Value) -> Recorded {
        let mut recorded = Recorded::default();
        let mut problems = Vec::new();
        let mut field = |key: &str| -> Option<&Value> {
            let value = doc.get(key);
            if value.is_none() {
                problems.push(format!("manifest key \"{key}\" is missing"));
            }
            value
        };
        let version = field(VERSION_KEY).cloned();
        let stream_version = field("stream_version").cloned();
        let schema_version = field("schema_version").cloned();
        let seed = field("seed").cloned();
        let mask_suffix = field("mask_suffix").cloned();
        let spec = field("spec").cloned();
        let layers = field("layers").cloned();
        let mut malformed = |key: &str, what: &str| {
            problems.push(format!("manifest key \"{key}\" is not {what}"));
        };
        let text = |v: Option<Value>, key: &str, m: &mut dyn FnMut(&str, &str)| match v {
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                m(key, "a string");
                None
            }
            None => None,
        };
        recorded.version = text(version, VERSION_KEY, &mut malformed);
        recorded.mask_suffix = text(mask_suffix, "mask_suffix", &mut malformed);
        recorded.spec = text(spec, "spec", &mut malformed);
        let mut whole = |v: Option<Value>, key: &str| match v {
            Some(v) => {
                let n = v.as_u64();
                if n.is_none() {
                    malformed(key, "a whole number");
                }
                n
            }
            None => None,
        };
        recorded.stream_version =
            whole(stream_version, "stream_version").and_then(|n| u32::try_from(n).ok());
        recorded.schema_version =
            whole(schema_version, "schema_version").and_then(|n| u32::try_from(n).ok());
        recorded.seed = whole(seed, "seed");
        match doc.get("scheme") {
            None => {}
            Some(Value::String(name)) if Scheme::parse(name).is_some() => {
                recorded.scheme_override = Scheme::parse(name);
            }
            Some(other) => problems.push(format!(
                "manifest key \"scheme\" is {other}, not a scheme this eoi knows"
            )),
        }
        recorded.problems = problems;
        if let Some(layers) = layers {
            recorded.layers = read_layers(&layers, &mut recorded.problems);
        }
        recorded
    }
}

/// Reads the array of layer records; a malformed record is described in `problems` and left out.
fn read_layers(layers: &Value, problems: &mut Vec<String>) -> Option<Vec<LayerRecord>> {
    let Some(list) = layers.as_array() else {
        problems.push("the layer records are not a JSON array".into());
        return None;
    };
    let mut records: Vec<LayerRecord> = Vec::with_capacity(list.len());
    let mut seen: HashSet<String> = HashSet::with_capacity(list.len());
    for (k, raw) in list.iter().enumerate() {
        match read_layer(raw) {
            Ok(record) => {
                if !seen.insert(record.name.clone()) {
                    problems.push(format!("layer \"{}\" is recorded twice", record.name));
                } else {
                    records.push(record);
                }
            }
            Err(what) => {
                let name = raw.get("name").and_then(Value::as_str);
                problems.push(match name {
                    Some(name) => format!("the record of layer \"{name}\" {what}"),
                    None => format!("layer record {k} {what}"),
                });
            }
        }
    }
    Some(records)
}

fn read_layer(raw: &Value) -> Result<LayerRecord, String> {
    let field = |key: &str| raw.get(key).ok_or_else(|| format!("has no \"{key}\""));
    let number = |key: &str| {
        field(key)?
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("has \"{key}\" that is not a number"))
    };
    let whole = |key: &str| {
        field(key)?
            .as_u64()
            .ok_or_else(|| format!("has \"{key}\" that is not a whole number"))
    };
    let name = field("name")?
        .as_str()
        .ok_or("has a \"name\" that is not a string")?
        .to_string();
    let shape = field("shape")?
        .as_array()
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
        })
        .ok_or("has a \"shape\" that is not a list of dimensions")?;
    let scheme = match raw.get("scheme") {
        None => Scheme::Eoi,
        Some(value) => value
            .as_str()
            .and_then(Scheme::parse)
            .ok_or_else(|| format!("has \"scheme\" {value}, not a scheme this eoi knows"))?,
    };
    let centre_nnz = match raw.get("centre_nnz") {
        None => None,
        Some(_) => Some(whole("centre_nnz")?),
    };
    let conv_mask = match raw.get("conv_mask") {
        None => ConvMask::TopUp,
        Some(value) => value
            .as_str()
            .and_then(ConvMask::parse)
            .ok_or_else(|| format!("has \"conv_mask\" {value}, not a mask rule this eoi knows"))?,
    };
    let bias = match raw.get("bias_std") {
        None => None,
        Some(_) => {
            let std = number("bias_std")?;
            if std < 0.0 {
                return Err(format!("has \"bias_std\" {std}, below 0"));
            }
            let tensor = field("bias")?
                .as_str()
                .ok_or("has a \"bias\" that is not a string")?;
            Some((tensor.to_string(), std))
        }
    };
    let isometry_error = match raw.get("isometry_error") {
        None => None,
        Some(_) => Some(number("isometry_error")?),
    };
    let groups = match raw.get("groups") {
        None => 1,
        Some(_) => {
            let g = whole("groups")?;
            let out = shape.first().copied().unwrap_or(0) as u64;
            if g == 0 || out % g != 0 || (g > 1 && shape.len() < 3) {
                return Err(format!(
                    "has \"groups\" {g}, which is not a number of groups of shape {shape:?}"
                ));
            }
            g as usize
        }
    };
    Ok(LayerRecord {
        name,
        shape,
        bias,
        groups,
        density: number("density")?,
        scheme,
        gain: number("gain")?,
        achieved_density: number("achieved_density")?,
        nnz: whole("nnz")?,
        centre_nnz,
        conv_mask,
        isometry_error,
        raw: raw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, Overrides};
    use crate::provenance::layer_record;
    use crate::spec::{self, Source};
    use crate::stream::STREAM_VERSION;

    const SPEC: &str = "seed = 3\n[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"a\"\nshape = [4, 6]\n[[layer]]\nname = \"c\"\nshape = [4, 2, 3]\n";

    /// The layer records of SPEC as eoi writes them.
    fn layers() -> Value {
        let spec = spec::parse(Source {
            name: "t.toml".into(),
            text: SPEC.into(),
        })
        .unwrap();
        let plan = plan::plan(&spec, &Overrides::default()).unwrap();
        let records = plan
            .layers
            .iter()
            .map(|l| layer_record(l, Some(&crate::schemes::stats(l, plan.seed))))
            .collect();
        Value::Array(records)
    }

    fn metadata() -> Vec<(String, String)> {
        [
            ("format", "pt".to_string()),
            ("eoi.version", crate::VERSION.to_string()),
            ("eoi.stream_version", STREAM_VERSION.to_string()),
            ("eoi.schema_version", "1".to_string()),
            ("eoi.seed", "3".to_string()),
            ("eoi.mask_suffix", "_mask".to_string()),
            ("eoi.spec", SPEC.to_string()),
            ("eoi.layers", layers().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn manifest() -> Value {
        serde_json::json!({
            VERSION_KEY: crate::VERSION,
            "stream_version": STREAM_VERSION,
            "schema_version": 1,
            "seed": 3,
            "mask_suffix": "_mask",
            "spec": SPEC,
            "layers": layers(),
        })
    }

    #[test]
    fn metadata_and_manifest_read_back_the_same() {
        let a = Recorded::from_metadata(&metadata());
        let b = Recorded::from_manifest(&manifest());
        for r in [&a, &b] {
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            assert_eq!(r.seed, Some(3));
            assert_eq!(r.stream_version, Some(STREAM_VERSION));
            assert_eq!(r.version.as_deref(), Some(crate::VERSION));
            assert_eq!(r.mask_suffix.as_deref(), Some("_mask"));
            assert_eq!(r.spec.as_deref(), Some(SPEC));
            let layers = r.layers.as_ref().unwrap();
            assert_eq!(layers.len(), 2);
            assert_eq!(layers[1].shape, [4, 2, 3]);
            assert!(layers[1].centre_nnz.is_some());
            assert!(layers[0].centre_nnz.is_none());
            assert_eq!(layers[0].density, 0.5);
        }
        assert_eq!(a.layers, b.layers);
    }

    #[test]
    fn a_layer_recorded_twice_is_described_and_kept_once() {
        let mut pairs = metadata();
        for (k, v) in &mut pairs {
            if k == "eoi.layers" {
                let mut list: Vec<Value> = serde_json::from_str(v).unwrap();
                list.push(list[0].clone());
                *v = serde_json::to_string(&list).unwrap();
            }
        }
        let r = Recorded::from_metadata(&pairs);
        let layers = r.layers.as_ref().unwrap();
        assert_eq!(layers.len(), 2);
        let text = r.problems.join("\n");
        assert!(
            text.contains(&format!("layer \"{}\" is recorded twice", layers[0].name)),
            "{text}"
        );
    }

    #[test]
    fn missing_and_malformed_keys_are_described() {
        let mut pairs = metadata();
        pairs.retain(|(k, _)| k != "eoi.spec");
        for (k, v) in &mut pairs {
            if k == "eoi.seed" {
                *v = "-1".into();
            }
            if k == "eoi.layers" {
                *v = v.replacen("\"nnz\":", "\"nnz\":-", 1);
            }
        }
        let r = Recorded::from_metadata(&pairs);
        assert!(r.spec.is_none() && r.seed.is_none());
        let text = r.problems.join("\n");
        assert!(text.contains("\"eoi.spec\" is missing"), "{text}");
        assert!(text.contains("\"eoi.seed\" is \"-1\""), "{text}");
        assert!(
            text.contains("the record of layer \"a\" has \"nnz\" that is not a whole number"),
            "{text}"
        );
        assert_eq!(r.layers.unwrap().len(), 1);

        let mut doc = manifest();
        doc["seed"] = serde_json::json!("three");
        doc.as_object_mut().unwrap().remove("layers");
        let r = Recorded::from_manifest(&doc);
        let text = r.problems.join("\n");
        assert!(
            text.contains("manifest key \"seed\" is not a whole number"),
            "{text}"
        );
        assert!(
            text.contains("manifest key \"layers\" is missing"),
            "{text}"
        );
        assert!(r.layers.is_none());
    }
}

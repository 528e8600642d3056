//! Provenance: what an artifact records about how it was made (tool and stream version, seed,
//! the spec text, every layer's target and achieved density, rotation count and, for
//! approximate isometry, descent settings and error), and the
//! per-layer JSON records shared by `plan --json`, `generate --json`, safetensors metadata and
//! the npy manifest. Records hold no time or path, so the bytes stay reproducible.

use serde_json::{Map, Value, json};

use crate::layer::{Layout, Names};
use crate::plan::Plan;
use crate::schemes::{LayerPlan, LayerStats};
use crate::stream::STREAM_VERSION;

/// Version of the JSON documents (`plan --json`, `generate --json`, `eoi.layers`).
pub const SCHEMA_VERSION: u32 = 1;

/// A layer's record: its plan, and what generation achieved when `stats` is given.
pub fn layer_record(layer: &LayerPlan, stats: Option<&LayerStats>) -> Value {
    let mut record = Map::new();
    record.insert("name".into(), json!(layer.name));
    record.insert("shape".into(), json!(layer.shape.dims()));
    record.insert("kind".into(), json!(layer.kind().name()));
    record.insert("scheme".into(), json!(layer.scheme.name()));
    record.insert("density".into(), json!(layer.density));
    record.insert("origin".into(), json!(layer.origin.name()));
    record.insert("params".into(), json!(layer.shape.numel()));
    record.insert("gain".into(), json!(layer.gain.value));
    // Recorded only for grouped convolutions, so that other records keep their bytes.
    if layer.groups != 1 {
        record.insert("groups".into(), json!(layer.groups));
    }
    // Recorded only for layers with tied names, so that other records keep their bytes.
    if !layer.tied.is_empty() {
        record.insert("tied".into(), json!(layer.tied));
    }
    let fields = layer.rules().record(layer);
    if let Some(k) = fields.degree {
        record.insert("degree".into(), json!(k));
    }
    if let (Some(steps), Some(lr)) = (fields.ai_steps, fields.ai_lr) {
        record.insert("ai_steps".into(), json!(steps));
        record.insert("ai_lr".into(), json!(lr));
    }
    if let Some(rule) = fields.conv_center {
        record.insert("conv_center".into(), json!(rule.name()));
    }
    if let Some(mask) = fields.conv_mask {
        record.insert("conv_mask".into(), json!(mask.name()));
    }
    if let Some(d) = fields.centre_density {
        record.insert("centre_density".into(), json!(d));
    }
    // Only layers with a bias have these fields, so records without biases keep their bytes.
    if let (Some(bias), Some(std)) = (layer.bias_name(), layer.bias_std) {
        record.insert("bias".into(), json!(bias));
        record.insert("bias_std".into(), json!(std));
    }
    match stats {
        None => {
            record.insert("expected_nnz".into(), json!(layer.expected_nnz()));
        }
        Some(s) => {
            record.insert("achieved_density".into(), json!(s.density()));
            record.insert("nnz".into(), json!(s.nnz));
            if let Some(r) = s.rotations {
                record.insert("rotations".into(), json!(r));
            }
            if let Some(c) = s.centre_nnz {
                record.insert("centre_nnz".into(), json!(c));
            }
            if let Some(e) = s.isometry_error {
                record.insert("isometry_error".into(), json!(e));
            }
        }
    }
    Value::Object(record)
}

/// The key under which artifacts record the tool version (`eoi.version` in safetensors
/// metadata, `eoi_version` in an npy manifest).
pub const VERSION_KEY: &str = "eoi_version";

/// The provenance key of a weights output that names its masks file (`--masks`), relative
/// to the directory of the file that records it.
pub const MASKS_KEY: &str = "eoi.masks";

/// The provenance key of a masks file that names its weights output (a file or directory),
/// relative to the masks file's directory. A file with this key holds masks only, each
/// under its layer's name.
pub const WEIGHTS_KEY: &str = "eoi.weights";

/// What an artifact records about how it was made, in the two forms the writers need.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// String key/value pairs in a fixed order, as safetensors' `__metadata__` requires
    /// (`format` first, then `eoi.*` keys; per-layer records as a JSON string).
    pub metadata: Vec<(String, String)>,
    /// The same as one JSON object with typed values (the npy manifest).
    pub document: Value,
}

impl Provenance {
    /// The provenance of a file holding `layers` (all of a plan's layers, or one shard's),
    /// with `shard = Some((k, n))` for shard k of n.
    pub fn new(
        plan: &Plan,
        layers: &[(&LayerPlan, &LayerStats)],
        shard: Option<(usize, usize)>,
    ) -> Provenance {
        let layers: Vec<Value> = layers
            .iter()
            .map(|(l, s)| layer_record(l, Some(s)))
            .collect();
        let layers = Value::Array(layers);
        let flax = plan.output.layout == Layout::Flax;
        let mut metadata = vec![
            ("format".into(), if flax { "flax" } else { "pt" }.into()),
            ("eoi.version".into(), crate::VERSION.into()),
            ("eoi.stream_version".into(), STREAM_VERSION.to_string()),
            ("eoi.schema_version".into(), SCHEMA_VERSION.to_string()),
            ("eoi.seed".into(), plan.seed.to_string()),
            ("eoi.mask_suffix".into(), plan.output.mask_suffix.clone()),
            ("eoi.spec".into(), plan.source.text.clone()),
            ("eoi.layers".into(), layers.to_string()),
        ];
        // The default (torch) layout is not recorded, so default artifacts keep their bytes.
        if flax {
            metadata.push(("eoi.layout".into(), Layout::Flax.name().into()));
        }
        let names = plan.output.names;
        if names != Names::Plain {
            metadata.push(("eoi.names".into(), names.name().into()));
        }
        // The command line's --scheme is not in the spec text: record it so that the file
        // can be made again (only when given, so other artifacts keep their bytes).
        if let Some(scheme) = plan.scheme_override {
            metadata.push(("eoi.scheme".into(), scheme.name().into()));
        }
        if let Some(rule) = plan.below_minimum_override {
            metadata.push(("eoi.below_minimum".into(), rule.name().into()));
        }
        if let Some((k, n)) = shard {
            metadata.push(("eoi.shard".into(), format!("{k}/{n}")));
        }
        let mut document = json!({
            VERSION_KEY: crate::VERSION,
            "stream_version": STREAM_VERSION,
            "schema_version": SCHEMA_VERSION,
            "seed": plan.seed,
            "mask_suffix": plan.output.mask_suffix,
            "spec": plan.source.text,
            "layers": layers,
        });
        if flax {
            document["layout"] = json!(Layout::Flax.name());
        }
        if names != Names::Plain {
            document["names"] = json!(names.name());
        }
        if let Some(scheme) = plan.scheme_override {
            document["scheme"] = json!(scheme.name());
        }
        if let Some(rule) = plan.below_minimum_override {
            document["below_minimum"] = json!(rule.name());
        }
        if let Some((k, n)) = shard {
            document["shard"] = json!(format!("{k}/{n}"));
        }
        Provenance { metadata, document }
    }
}

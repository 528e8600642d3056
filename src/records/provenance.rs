//! Provenance: what an artifact records about how it was made (tool and stream version, seed,
//! the spec text, every layer's [`LayerRecord`]), as safetensors `__metadata__` and as an
//! npy manifest. Records hold no time or path, so the bytes stay reproducible.

use serde_json::{Value, json};

use super::{LayerRecord, SCHEMA_VERSION};
use crate::layer::{Layout, Names};
use crate::plan::Plan;
use crate::schemes::{LayerPlan, LayerStats};
use crate::stream::STREAM_VERSION;

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
        let records: Vec<LayerRecord> = layers
            .iter()
            .map(|(l, s)| LayerRecord::new(l, Some(s)))
            .collect();
        let layers = Value::Array(records.iter().map(LayerRecord::to_value).collect());
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

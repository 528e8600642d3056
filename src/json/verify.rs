//! `eoi verify --json`: the verdict on an artifact, layer by layer, and on its regeneration.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::finite;
use crate::layer::{Dtype, Format, Kind, Layout, Names};
use crate::records::{Recorded, SCHEMA_VERSION};
use crate::schemes::Scheme;
use crate::stream::STREAM_VERSION;
use crate::verify::{Check, LayerReport, Regenerated, Report};

/// What `eoi verify --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VerifyJson {
    /// The version of eoi's JSON documents (1); fields are only added within a version.
    pub schema_version: u32,
    /// The version of the eoi that checked (the artifact's own is under `recorded`).
    pub eoi_version: String,
    pub stream_version: u32,
    /// The artifact as given.
    pub path: String,
    pub format: Format,
    /// The number of shards, for a sharded checkpoint read whole; else null.
    pub shards: Option<usize>,
    /// The layout the weights were read in.
    pub layout: Layout,
    /// Whether every check held (the exit status is 0 exactly when it is true).
    pub passed: bool,
    /// What the artifact records about how it was made.
    pub recorded: RecordedJson,
    /// Problems of the artifact as a whole (metadata, unrecorded tensors).
    pub problems: Vec<String>,
    /// What is worth knowing that is not a failure.
    pub notes: Vec<String>,
    /// Tensors a `generate --base` output copied from its base, in file order.
    pub copied: Vec<String>,
    pub layers: Vec<VerifiedLayerJson>,
    /// The outcome of `--regenerate`; null without it.
    pub regenerate: Option<RegeneratedJson>,
}

/// What an artifact records about how it was made; null where it records nothing usable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordedJson {
    pub eoi_version: Option<String>,
    pub stream_version: Option<u32>,
    pub seed: Option<u64>,
    pub mask_suffix: Option<String>,
    pub layout: Layout,
    pub names: Names,
    /// `K/N` for a file that records being shard K of N, read on its own.
    pub shard: Option<String>,
    /// The checkpoint `generate --base` completed.
    pub base: Option<BaseJson>,
}

/// The base checkpoint of a `generate --base` output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BaseJson {
    /// Its file name (or its index file's).
    pub name: String,
    /// The SHA-256 of its header (or of its index file).
    pub sha256: Option<String>,
}

/// The verdict on one layer; null where a value could not be measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VerifiedLayerJson {
    pub name: String,
    /// The weight's shape as stored (the record's when the weight is missing).
    pub shape: Vec<usize>,
    pub kind: Option<Kind>,
    pub scheme: Option<Scheme>,
    /// The weight's stored dtype.
    pub dtype: Option<Dtype>,
    /// Ones in the mask.
    pub nnz: Option<u64>,
    /// Ones in the mask over its elements.
    pub density: Option<f64>,
    /// The gain the orthogonality was checked against.
    pub gain: Option<f64>,
    /// `max |G - gain^2 I|` over the smaller Gram matrix (of the centre tap, for EOI
    /// convolutions).
    pub orthogonality_error: Option<f64>,
    /// The largest orthogonality error the stored dtype allows; null where the scheme
    /// promises no orthogonality.
    pub tolerance: Option<f64>,
    /// The layer's bias tensor, when the record names one.
    pub bias: Option<String>,
    /// The bias's measured std.
    pub bias_std: Option<f64>,
    /// Approximate isometry: the isometry error of the stored weight.
    pub isometry_error: Option<f64>,
    /// Approximate isometry: the error the record states.
    pub recorded_isometry_error: Option<f64>,
    /// Whether every check of the layer held.
    pub passed: bool,
    pub failures: Vec<FailureJson>,
}

/// One failed check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FailureJson {
    pub check: Check,
    pub message: String,
}

/// The outcome of `--regenerate`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegeneratedJson {
    /// Whether regeneration ran and every tensor is bit-identical.
    pub passed: bool,
    /// Tensors regenerated and compared byte for byte.
    pub compared: usize,
    /// Copied tensors compared with the base's (`--base`).
    pub copies: usize,
    pub differences: Vec<DifferenceJson>,
    /// Why regeneration could not run at all, if it could not.
    pub impossible: Option<String>,
    pub notes: Vec<String>,
}

/// A tensor whose bytes differ from what regeneration (or the base) gives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DifferenceJson {
    pub tensor: String,
    pub message: String,
}

impl VerifyJson {
    pub fn new(report: &Report) -> VerifyJson {
        VerifyJson {
            schema_version: SCHEMA_VERSION,
            eoi_version: crate::VERSION.to_string(),
            stream_version: STREAM_VERSION,
            path: report.path.clone(),
            format: report.format,
            shards: report.shards,
            layout: report.layout,
            passed: report.passed(),
            recorded: RecordedJson::new(&report.recorded),
            problems: report.problems.clone(),
            notes: report.notes.clone(),
            copied: report.copied.clone(),
            layers: report.layers.iter().map(VerifiedLayerJson::new).collect(),
            regenerate: report.regenerated.as_ref().map(RegeneratedJson::new),
        }
    }
}

impl RecordedJson {
    fn new(r: &Recorded) -> RecordedJson {
        RecordedJson {
            eoi_version: r.version.clone(),
            stream_version: r.stream_version,
            seed: r.seed,
            mask_suffix: r.mask_suffix.clone(),
            layout: r.layout,
            names: r.names,
            shard: r.shard.map(|(k, n)| format!("{k}/{n}")),
            base: r.base.as_ref().map(|b| BaseJson {
                name: b.name.clone(),
                sha256: b.sha256.clone(),
            }),
        }
    }
}

impl VerifiedLayerJson {
    fn new(layer: &LayerReport) -> VerifiedLayerJson {
        VerifiedLayerJson {
            name: layer.name.clone(),
            shape: layer.shape.clone(),
            kind: layer.kind,
            scheme: layer.scheme,
            dtype: layer.dtype,
            nnz: layer.nnz,
            density: layer.density.and_then(finite),
            gain: layer.gain.and_then(finite),
            orthogonality_error: layer.orthogonality_error.and_then(finite),
            tolerance: layer.tolerance.and_then(finite),
            bias: layer.bias.clone(),
            bias_std: layer.bias_std.and_then(finite),
            isometry_error: layer.isometry_error.and_then(finite),
            recorded_isometry_error: layer.recorded_isometry_error.and_then(finite),
            passed: layer.passed(),
            failures: layer
                .failures
                .iter()
                .map(|f| FailureJson {
                    check: f.check,
                    message: f.message.clone(),
                })
                .collect(),
        }
    }
}

impl RegeneratedJson {
    fn new(g: &Regenerated) -> RegeneratedJson {
        RegeneratedJson {
            passed: g.passed(),
            compared: g.compared,
            copies: g.copies,
            differences: g
                .differences
                .iter()
                .map(|d| DifferenceJson {
                    tensor: d.tensor.clone(),
                    message: d.message.clone(),
                })
                .collect(),
            impossible: g.impossible.clone(),
            notes: g.notes.clone(),
        }
    }
}

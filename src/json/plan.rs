//! `eoi plan --json`: the plan as a whole, every layer's record and every tensor the output
//! will hold.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::layer::{Distribution, Dtype, Format, Layout, Names};
use crate::plan::Plan;
use crate::records::{LayerRecord, SCHEMA_VERSION};
use crate::stream::STREAM_VERSION;

/// What `eoi plan --json` prints: the plan of a spec, nothing generated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanJson {
    /// The version of eoi's JSON documents (1); fields are only added within a version.
    pub schema_version: u32,
    pub eoi_version: String,
    /// The version of the random streams: the same spec, seed and stream version give the
    /// same bytes.
    pub stream_version: u32,
    pub seed: u64,
    /// How the overall density is spread over the layers.
    pub distribution: Distribution,
    /// The overall density the spec asks for.
    pub target_density: f64,
    /// The overall density planned.
    pub density: f64,
    /// Weights of all layers.
    pub params: u64,
    /// Nonzeros the plan expects over all layers.
    pub expected_nnz: u64,
    /// Every layer's record, with `expected_nnz`.
    pub layers: Vec<LayerRecord>,
    pub warnings: Vec<String>,
    pub format: Format,
    /// The weights' dtype.
    pub dtype: Dtype,
    /// The masks' dtype (the weight's for torch-prune names).
    pub mask_dtype: Dtype,
    pub layout: Layout,
    pub names: Names,
    pub mask_suffix: String,
    /// Every tensor the output will hold, in file order: each layer's weight, mask, then bias.
    pub tensors: Vec<PlannedTensorJson>,
}

/// A tensor the output will hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlannedTensorJson {
    pub name: String,
    pub dtype: Dtype,
    /// The shape as stored, after the layout.
    pub shape: Vec<usize>,
}

impl PlanJson {
    pub fn new(plan: &Plan) -> PlanJson {
        PlanJson {
            schema_version: SCHEMA_VERSION,
            eoi_version: crate::VERSION.to_string(),
            stream_version: STREAM_VERSION,
            seed: plan.seed,
            distribution: plan.distribution,
            target_density: plan.requested_density.get(),
            density: plan.density(),
            params: plan.params(),
            expected_nnz: plan.expected_nnz(),
            layers: plan
                .layers
                .iter()
                .map(|l| LayerRecord::new(l, None))
                .collect(),
            warnings: plan.warnings.clone(),
            format: plan.output.format,
            dtype: plan.output.dtype,
            mask_dtype: plan.output.mask_dtype,
            layout: plan.output.layout,
            names: plan.output.names,
            mask_suffix: plan.output.mask_suffix.clone(),
            tensors: crate::generate::tensors(plan)
                .into_iter()
                .map(|t| PlannedTensorJson {
                    name: t.name,
                    dtype: t.dtype,
                    shape: t.shape,
                })
                .collect(),
        }
    }
}

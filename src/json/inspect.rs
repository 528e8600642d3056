//! `eoi inspect --json`: every tensor of a checkpoint, measured.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::finite;
use crate::inspect::{Inspection, Spread, TensorSummary};
use crate::layer::{Dtype, Format, Layout};
use crate::records::SCHEMA_VERSION;
use crate::schemes::nm::Pattern;

/// What `eoi inspect --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InspectJson {
    /// The version of eoi's JSON documents (1); fields are only added within a version.
    pub schema_version: u32,
    pub eoi_version: String,
    /// The checkpoint as given.
    pub path: String,
    pub format: Format,
    /// The number of shards, for a sharded checkpoint; else null.
    pub shards: Option<usize>,
    /// The layout the matrices were read in.
    pub layout: Layout,
    pub tensors: Vec<TensorJson>,
}

/// One tensor; null where a value does not apply or could not be measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TensorJson {
    pub name: String,
    /// The shape as stored.
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub numel: usize,
    /// Nonzero values.
    pub nnz: u64,
    /// `nnz / numel`; null for an empty tensor.
    pub density: Option<f64>,
    /// The mask paired with this tensor.
    pub mask: Option<String>,
    /// The weight this tensor is the mask of.
    pub mask_of: Option<String>,
    /// The weight this tensor is the bias of.
    pub bias_of: Option<String>,
    /// For a bias: the root mean square of its values.
    pub rms: Option<f64>,
    /// `[out, in * K]`: the matrix the statistics are of, for rank 2 and above.
    pub matrix: Option<[usize; 2]>,
    /// Convolution groups, when eoi's records give the tensor more than one.
    pub groups: Option<usize>,
    /// The square root of the mean diagonal of the smaller Gram matrix G.
    pub gain: Option<f64>,
    /// `max |G - gain^2 I| / gain^2`.
    pub orthogonality_error: Option<f64>,
    pub singular_min: Option<f64>,
    pub singular_max: Option<f64>,
    /// Nonzeros per row of the matrix.
    pub row_nnz: Option<SpreadJson>,
    /// Nonzeros per column of the matrix.
    pub col_nnz: Option<SpreadJson>,
    /// Why a float matrix has no spectrum.
    pub note: Option<String>,
    /// For an approx-isometry weight of an eoi artifact: the isometry error its record states.
    pub recorded_isometry_error: Option<f64>,
    /// For rank 2 and above: the common N:M patterns (1:2, 2:4, 1:4, 2:8, 4:8) the nonzeros
    /// hold along the inputs, at most N in every group of M consecutive inputs of every row
    /// at every tap; null for a lower rank.
    pub nm: Option<Vec<Pattern>>,
    /// For rank 2 and above: those of `nm` that also hold along the outputs (transposable).
    pub nm_transposable: Option<Vec<Pattern>>,
}

/// Minimum, mean and maximum of a count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpreadJson {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
}

impl InspectJson {
    pub fn new(inspection: &Inspection) -> InspectJson {
        InspectJson {
            schema_version: SCHEMA_VERSION,
            eoi_version: crate::VERSION.to_string(),
            path: inspection.path.clone(),
            format: inspection.format,
            shards: inspection.shards,
            layout: inspection.layout,
            tensors: inspection.tensors.iter().map(TensorJson::new).collect(),
        }
    }
}

impl TensorJson {
    fn new(t: &TensorSummary) -> TensorJson {
        let s = t.spectrum.as_ref();
        TensorJson {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype,
            numel: t.numel,
            nnz: t.nnz,
            density: t.density.and_then(finite),
            mask: t.mask.clone(),
            mask_of: t.mask_of.clone(),
            bias_of: t.bias_of.clone(),
            rms: t.rms.and_then(finite),
            matrix: t.matrix.map(|(r, c)| [r, c]),
            groups: t.groups,
            gain: s.and_then(|s| finite(s.gain)),
            orthogonality_error: s.and_then(|s| s.orthogonality_error).and_then(finite),
            singular_min: s.and_then(|s| finite(s.singular_min)),
            singular_max: s.and_then(|s| finite(s.singular_max)),
            row_nnz: t.row_nnz.map(SpreadJson::new),
            col_nnz: t.col_nnz.map(SpreadJson::new),
            note: t.note.clone(),
            recorded_isometry_error: t.recorded_isometry_error.and_then(finite),
            nm: t.nm.as_ref().map(|(held, _)| held.clone()),
            nm_transposable: t.nm.as_ref().map(|(_, both)| both.clone()),
        }
    }
}

impl SpreadJson {
    fn new(s: Spread) -> SpreadJson {
        SpreadJson {
            min: s.min,
            mean: s.mean,
            max: s.max,
        }
    }
}

//! `eoi isometry --json`: the chain, the singular values of its input-output Jacobian and
//! the signal along the depth.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::finite;
use crate::isometry::{Link, Nonlinearity, Order, Report};
use crate::records::SCHEMA_VERSION;

/// What `eoi isometry --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IsometryJson {
    /// The version of eoi's JSON documents (1); fields are only added within a version.
    pub schema_version: u32,
    pub eoi_version: String,
    /// The checkpoint as given.
    pub path: String,
    /// The length of the chain.
    pub layers: usize,
    /// The activation after every layer.
    pub nonlinearity: Nonlinearity,
    /// The seed of the input vector.
    pub seed: u64,
    /// How the chain was ordered.
    pub order: Order,
    pub chain: Vec<LinkJson>,
    pub jacobian: JacobianJson,
    /// The RMS of the signal at each depth: 0 is the input, k the output of the k-th layer.
    pub signal_rms: Vec<SignalJson>,
    /// Why there are no singular values, when there are none.
    pub note: Option<String>,
}

/// One layer of the chain: its weight as the matrix (out, in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkJson {
    pub name: String,
    pub out: usize,
    #[serde(rename = "in")]
    pub inp: usize,
    /// The bias added before the nonlinearity, if the file has one.
    pub bias: Option<String>,
}

/// The input-output Jacobian: its shape and the summary of its singular values (null when
/// it has non-finite entries; see `note`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JacobianJson {
    /// The last layer's outputs.
    pub rows: usize,
    /// The first layer's inputs.
    pub cols: usize,
    /// Mean of the squared singular values.
    pub singular_mean_sq: Option<f64>,
    /// Standard deviation of the singular values.
    pub singular_std: Option<f64>,
    pub singular_max: Option<f64>,
    pub singular_min: Option<f64>,
}

/// The signal's RMS after `depth` layers; null when it is not finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SignalJson {
    pub depth: usize,
    pub rms: Option<f64>,
}

impl IsometryJson {
    pub fn new(report: &Report) -> IsometryJson {
        let s = report.singular.as_ref();
        IsometryJson {
            schema_version: SCHEMA_VERSION,
            eoi_version: crate::VERSION.to_string(),
            path: report.path.clone(),
            layers: report.chain.len(),
            nonlinearity: report.nonlinearity,
            seed: report.seed,
            order: report.order,
            chain: report.chain.iter().map(LinkJson::new).collect(),
            jacobian: JacobianJson {
                rows: report.rows,
                cols: report.cols,
                singular_mean_sq: s.and_then(|s| finite(s.mean_sq)),
                singular_std: s.and_then(|s| finite(s.std)),
                singular_max: s.and_then(|s| finite(s.max)),
                singular_min: s.and_then(|s| finite(s.min)),
            },
            signal_rms: report
                .signal_rms
                .iter()
                .enumerate()
                .map(|(depth, &rms)| SignalJson {
                    depth,
                    rms: finite(rms),
                })
                .collect(),
            note: report.note.clone(),
        }
    }
}

impl LinkJson {
    fn new(link: &Link) -> LinkJson {
        LinkJson {
            name: link.name.clone(),
            out: link.out,
            inp: link.inp,
            bias: link.bias.clone(),
        }
    }
}

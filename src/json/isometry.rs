//! `eoi isometry --json`: the chain, the singular values of its input-output Jacobian and
//! the signal along the depth.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::finite;
use crate::isometry::conv::{ConvLink, Grid, Method};
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
    /// The periodic grid of a convolution chain (`--grid`); null for a chain of linear layers.
    pub grid: Option<GridJson>,
}

/// How a convolution chain was measured (`--grid N`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GridJson {
    /// Positions along each spatial dimension (N).
    pub size: usize,
    /// Spatial dimensions of the kernels and the grid: 1, 2 or 3.
    pub dims: usize,
    /// Channels C of every layer (each layer maps C to C).
    pub channels: usize,
    /// Positions of the grid, N^dims; the Jacobian's side is channels x positions.
    pub positions: usize,
    /// fourier: exact, the product of C x C matrices at each frequency (linear chains);
    /// dense: exact, the dense Jacobian from forward-mode products (side at most 1024);
    /// probes: estimated from random probes (see `jacobian.method`).
    pub method: Method,
    /// The number of random probes (method probes), else null.
    pub probes: Option<usize>,
    /// The variance of the squared singular values (the eigenvalues of J^T J; 0 for an
    /// exact isometry). With method probes an unbiased estimate, which may fall below 0.
    pub singular_sq_var: Option<f64>,
    /// The standard error of `singular_sq_var` (jackknife over the probes), when estimated.
    pub singular_sq_var_stderr: Option<f64>,
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
    /// A convolution's kernel size (`--grid`), e.g. [3, 3]; null for a linear layer.
    pub kernel: Option<Vec<usize>>,
    /// A convolution's groups (`--grid`); null for a linear layer.
    pub groups: Option<usize>,
}

/// The input-output Jacobian: its shape and the summary of its singular values (null when
/// it has non-finite entries; see `note`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JacobianJson {
    /// The last layer's outputs.
    pub rows: usize,
    /// The first layer's inputs.
    pub cols: usize,
    /// exact: the singular values were computed; estimated: from random probes (`--probes`,
    /// or a Jacobian too large for an exact spectrum), where the mean of squares is estimated
    /// (with `singular_mean_sq_stderr`), std and min are null, and max is null for `--grid`
    /// chains and, for linear chains, from the Lanczos method on J^T J (`singular_max_iterations`,
    /// `singular_max_residual`).
    pub method: JacobianMethod,
    /// The number of random probes of an estimate (for `--grid` chains also `grid.probes`);
    /// null when exact.
    pub probes: Option<usize>,
    /// Mean of the squared singular values.
    pub singular_mean_sq: Option<f64>,
    /// The standard error of an estimated `singular_mean_sq`; null when exact.
    pub singular_mean_sq_stderr: Option<f64>,
    /// Standard deviation of the singular values.
    pub singular_std: Option<f64>,
    /// The largest singular value; estimated (linear chains), the square root of the largest
    /// Ritz value of the Lanczos method on J^T J, at most the true value.
    pub singular_max: Option<f64>,
    pub singular_min: Option<f64>,
    /// Lanczos steps (each a forward and a reverse pass) for an estimated `singular_max`;
    /// null otherwise.
    pub singular_max_iterations: Option<usize>,
    /// `||J^T J x - s^2 x|| / s^2` for the Ritz vector x (s the estimated `singular_max`): an
    /// eigenvalue of J^T J lies within this fraction of s^2 of s^2. Null when not estimated.
    pub singular_max_residual: Option<f64>,
}

/// Whether the Jacobian's singular values were computed or estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JacobianMethod {
    Exact,
    Estimated,
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
        let grid = report.grid.as_ref();
        let estimate = report.estimate.as_ref();
        IsometryJson {
            schema_version: SCHEMA_VERSION,
            eoi_version: crate::VERSION.to_string(),
            path: report.path.clone(),
            layers: report.chain.len(),
            nonlinearity: report.nonlinearity,
            seed: report.seed,
            order: report.order,
            chain: report
                .chain
                .iter()
                .enumerate()
                .map(|(k, l)| LinkJson::new(l, grid.and_then(|g| g.links.get(k))))
                .collect(),
            jacobian: JacobianJson {
                rows: report.rows,
                cols: report.cols,
                method: if grid.is_some_and(Grid::estimated) || estimate.is_some() {
                    JacobianMethod::Estimated
                } else {
                    JacobianMethod::Exact
                },
                probes: grid.and_then(|g| g.probes).or(estimate.map(|e| e.probes)),
                singular_mean_sq: s.and_then(|s| finite(s.mean_sq)),
                singular_mean_sq_stderr: grid
                    .and_then(|g| g.mean_sq_stderr)
                    .or(estimate.map(|e| e.mean_sq_stderr))
                    .and_then(finite),
                singular_std: s.and_then(|s| finite(s.std)),
                singular_max: s.and_then(|s| finite(s.max)),
                singular_min: s.and_then(|s| finite(s.min)),
                singular_max_iterations: estimate.map(|e| e.iterations),
                singular_max_residual: estimate.and_then(|e| finite(e.residual)),
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
            grid: grid.map(|g| GridJson {
                size: g.size,
                dims: g.dims,
                channels: g.channels,
                positions: g.positions(),
                method: g.method,
                probes: g.probes,
                singular_sq_var: g.sq_var.and_then(finite),
                singular_sq_var_stderr: g.sq_var_stderr.and_then(finite),
            }),
        }
    }
}

impl LinkJson {
    fn new(link: &Link, conv: Option<&ConvLink>) -> LinkJson {
        LinkJson {
            name: link.name.clone(),
            out: link.out,
            inp: link.inp,
            bias: link.bias.clone(),
            kernel: conv.map(|c| c.kernel.clone()),
            groups: conv.map(|c| c.groups),
        }
    }
}

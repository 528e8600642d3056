//! `isometry`: dynamical isometry made visible. The rank-2 weights of an artifact are read as
//! a feed-forward chain `h <- phi(W h + b)`; a seeded input of unit RMS is propagated through
//! it while the input-output Jacobian `J = D_L W_L ... D_1 W_1` (`D_k` the diagonal of
//! `phi'` at layer k) is accumulated in f64. A network is dynamically isometric when the
//! singular values of `J` all sit near 1 (Saxe et al. 2014; Pennington et al. 2017): signals
//! and gradients then neither vanish nor explode with depth, which is what EOI buys.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut};
use rayon::prelude::*;

use crate::error::Error;
use crate::inspect::{mask_suffix, weight_of};
use crate::layer::{Layout, named};
use crate::measure;
use crate::progress::Progress;
use crate::read::{Checkpoint, ReadError, Tensor};
use crate::records::{Recorded, layout_of};
use crate::spec::Pattern;
use crate::stream::Stream;
use crate::units::some_names;

pub mod conv;

/// The name of the random stream the input is drawn from (with the `--seed`).
pub const INPUT_STREAM: &str = "eoi-isometry-input";

named! {
    /// The activation `phi` applied after every layer of the chain.
    pub enum Nonlinearity {
        Tanh = "tanh",
        Linear = "linear",
        /// `max(0, h)`; its derivative at 0 is taken as 0, as PyTorch does.
        Relu = "relu",
        /// `clamp(h, -1, 1)`; derivative 1 strictly inside, 0 outside and on the corners.
        HardTanh = "hard-tanh",
    }
}

impl Nonlinearity {
    /// `(phi(h), phi'(h))`.
    pub fn apply(self, h: f64) -> (f64, f64) {
        match self {
            Nonlinearity::Tanh => {
                let t = h.tanh();
                (t, 1.0 - t * t)
            }
            Nonlinearity::Linear => (h, 1.0),
            Nonlinearity::Relu if h > 0.0 => (h, 1.0),
            Nonlinearity::Relu => (0.0, 0.0),
            Nonlinearity::HardTanh if h.abs() < 1.0 => (h, 1.0),
            Nonlinearity::HardTanh => (h.clamp(-1.0, 1.0), 0.0),
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Globs (`*` any run, `?` one character) over layer names; empty selects every rank-2
    /// weight.
    pub layers: Vec<String>,
    pub nonlinearity: Nonlinearity,
    /// Seed of the input vector's stream ([`INPUT_STREAM`]).
    pub seed: u64,
    /// `--grid N`: read the chain as convolutions on a periodic grid of N positions per
    /// dimension ([`conv`]).
    pub grid: Option<usize>,
    /// `--probes K`: estimate from K random probes.
    pub probes: Option<usize>,
    /// `--order`: how to order the chain; `None` as [`order`] decides (the records when they
    /// record every selected layer, else names).
    pub order: Option<OrderBy>,
}

named! {
    /// `--order`: the order asked for on the command line.
    pub enum OrderBy {
        /// The order of eoi's provenance records (an error if they do not record every
        /// selected layer).
        Records = "records",
        /// Natural name order, whatever the records say: the MLP blocks of a transformer
        /// (`layers.0.mlp.fc1`, `layers.0.mlp.fc2`, `layers.1.mlp.fc1`, ...) read as a chain,
        /// which the records (every `fc1` before every `fc2`) do not give.
        Names = "names",
    }
}

named! {
    /// How the chain was ordered.
    pub enum Order {
        /// The order of the layer records of eoi's provenance.
        Provenance = "provenance",
        /// Natural name order: runs of digits compare as numbers, so `hidden.10` follows
        /// `hidden.9`.
        Natural = "natural",
    }
}

/// One layer of the chain: the weight read as the matrix (out, in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The layer's name (a torch-prune `X_orig` is listed as `X`).
    pub name: String,
    /// Outputs and inputs.
    pub out: usize,
    pub inp: usize,
    /// The `.bias` tensor added before the nonlinearity, if the file has one.
    pub bias: Option<String>,
}

/// The summary of the Jacobian's singular values (there are `min(rows, cols)` of them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Singular {
    /// Mean of the squared singular values: `||J||_F^2 / min(rows, cols)`.
    pub mean_sq: f64,
    /// Standard deviation of the singular values (over all of them, not a sample estimate).
    pub std: f64,
    pub max: f64,
    pub min: f64,
}

/// The outcome.
#[derive(Clone, Debug)]
pub struct Report {
    pub path: String,
    pub nonlinearity: Nonlinearity,
    pub seed: u64,
    pub order: Order,
    pub chain: Vec<Link>,
    /// The Jacobian's shape: the last layer's outputs by the first layer's inputs.
    pub rows: usize,
    pub cols: usize,
    /// `None` when the Jacobian has non-finite entries (see `note`).
    pub singular: Option<Singular>,
    /// Why there are no singular values, when there are none.
    pub note: Option<String>,
    /// The RMS of the signal after each depth: index 0 is the input (1), index k the output
    /// of the k-th layer of the chain.
    pub signal_rms: Vec<f64>,
    /// The grid, for a convolution chain (`--grid`).
    pub grid: Option<conv::Grid>,
    /// How a linear chain's spectrum was estimated, when it was (`--probes`, or a Jacobian
    /// over [`EXACT_LIMIT`]); `None` when exact (and for `--grid` chains: see `grid`).
    pub estimate: Option<Estimate>,
}

/// The largest number of values (`max_k out_k` by the chain's inputs) of the Jacobian a
/// linear chain accumulates for an exact spectrum (2^25 f64 values, 256 MiB a copy, two
/// copies held); above it, or when twice that memory is not available, the spectrum is
/// estimated ([`Estimate`]).
pub const EXACT_LIMIT: u64 = 1 << 25;

/// The most Lanczos steps on `J^T J` for the largest singular value of an estimate (each one
/// forward and one reverse pass through the chain).
pub const MAX_ITERATIONS: usize = 300;

/// The Lanczos method stops when the relative residual `||J^T J x - s^2 x|| / s^2` of the
/// Ritz vector x is at most this: an eigenvalue of `J^T J` within 1e-6 of `s^2`, so a
/// singular value within about 5e-7 of `s` (relative). Weights stored in f32 are exact to
/// about 6e-8, so the clustered spectrum of an EOI chain cannot be resolved much further.
pub const TOLERANCE: f64 = 1e-6;

/// The name of the random stream the Lanczos method starts from (with the `--seed`).
pub const POWER_STREAM: &str = "eoi-isometry-power";

/// An estimated spectrum of a linear chain: the mean of squares from random probes
/// (forward products, Hutchinson), the largest singular value from the Lanczos method on
/// `J^T J` (forward and reverse products). The std and the smallest are not estimated.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// Why: `--probes` was given (true), or the exact Jacobian was over the limit (false).
    pub asked: bool,
    /// The number of random probes.
    pub probes: usize,
    /// The standard error of the estimated mean of squares.
    pub mean_sq_stderr: f64,
    /// Lanczos steps done.
    pub iterations: usize,
    /// `||J^T J x - s^2 x|| / s^2` for the Ritz vector `x` (unit), `s` the reported largest
    /// singular value: `s` is at most the true one, and an eigenvalue of `J^T J` lies within
    /// `residual * s^2` of `s^2`.
    pub residual: f64,
}

/// A weight of the artifact that may join the chain.
struct Candidate<'a> {
    name: String,
    weight: Tensor<'a>,
    mask: Option<Tensor<'a>>,
}

/// The singular values of the chain's `rows x cols` Jacobian: exact from `jacobian`, or
/// with `probes` estimated from `jacobian` (J times the probes) and the `sparse` layers
/// (the largest by Lanczos), or why there are none.
fn chain_singular(
    jacobian: &[f64],
    (rows, cols): (usize, usize),
    sparse: &[SparseLayer],
    probes: Option<usize>,
    non_finite: Option<usize>,
    options: &Options,
    progress: &dyn Progress,
) -> (Option<Singular>, Option<String>, Option<Estimate>) {
    let mut estimate = None;
    let (singular, note) = match (non_finite, probes) {
        (Some(depth), _) => (None, Some(overflow_note(depth))),
        (None, Some(k)) => {
            // Over the min(rows, cols) singular values, as the exact summary.
            let (mean_sq, mean_sq_stderr, _, _) = conv::estimate(jacobian, rows.min(cols), k);
            let (max, iterations, residual) =
                largest_singular(sparse, options.seed, progress).unwrap_or((f64::NAN, 0, f64::NAN));
            progress.advance((MAX_ITERATIONS - iterations.min(MAX_ITERATIONS)) as u64);
            estimate = Some(Estimate {
                asked: options.probes.is_some(),
                probes: k,
                mean_sq_stderr,
                iterations,
                residual,
            });
            (
                Some(Singular {
                    mean_sq,
                    std: f64::NAN,
                    max,
                    min: f64::NAN,
                }),
                None,
            )
        }
        (None, None) => match measure::singular_values(
            measure::view(jacobian, rows, cols),
            measure::parallelism(rows, cols),
        ) {
            Some(s) => (Some(summarize(&s)), None),
            None => (
                None,
                Some("the SVD of the Jacobian did not converge".into()),
            ),
        },
    };
    (singular, note, estimate)
}

/// The name of layer `c`'s bias, `<module>.bias` beside its `<module>.weight`, when the
/// checkpoint holds one; refused unless it is a float vector of the layer's `out` outputs
/// (`outputs` says what they are in the message).
fn bias_name(
    checkpoint: &Checkpoint,
    c: &Candidate<'_>,
    out: usize,
    outputs: &str,
    path: &str,
) -> Result<Option<String>, Error> {
    let Some(module) = c.name.strip_suffix(".weight") else {
        return Ok(None);
    };
    let name = format!("{module}.bias");
    match checkpoint.get(&name) {
        None => Ok(None),
        Some(b) if b.shape == [out] && b.dtype.is_float() => Ok(Some(name)),
        Some(b) => Err(usage(format!(
            "'{path}': the bias \"{name}\" of layer \"{}\" has shape {:?} and dtype {}, but the layer has {out} {outputs}: a bias must be a float vector of shape [{out}]",
            c.name,
            b.shape,
            b.dtype.name()
        ))),
    }
}

impl Candidate<'_> {
    /// The weight with its mask applied, as f64 in PyTorch order (a Flax kernel's (in, out)
    /// read as the (out, in) matrix it applies).
    fn masked_weight(&self, layout: Layout) -> Result<Vec<f64>, ReadError> {
        let mut w = self.weight.read_f64()?;
        if let Some(mask) = self.mask {
            for (w, m) in w.iter_mut().zip(mask.read_f64()?) {
                *w *= m;
            }
        }
        Ok(layout.torch_order(w, &self.weight.shape))
    }
}

/// The values of a link's bias `name`, or `len` zeros where it has none.
fn bias_values(
    checkpoint: &Checkpoint,
    name: Option<&str>,
    len: usize,
) -> Result<Vec<f64>, ReadError> {
    match name.and_then(|name| checkpoint.get(name)) {
        Some(info) => info.read_f64(),
        None => Ok(vec![0.0; len]),
    }
}

/// Why a chain has no singular values: its Jacobian stopped being finite at `depth`.
fn overflow_note(depth: usize) -> String {
    format!(
        "the Jacobian has non-finite entries from depth {depth} on (overflow, or non-finite weights): no singular values"
    )
}

fn usage(message: String) -> Error {
    Error::Usage(message)
}

/// Orders names naturally: digit runs compare as numbers (`hidden.9` < `hidden.10`), the
/// rest byte by byte.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let run = |s: &[u8], mut k: usize| {
                let start = k;
                while k < s.len() && s[k].is_ascii_digit() {
                    k += 1;
                }
                (start, k)
            };
            let ((sa, ea), (sb, eb)) = (run(a, i), run(b, j));
            let trim = |s: &[u8], start: usize, end: usize| {
                let mut k = start;
                while k + 1 < end && s[k] == b'0' {
                    k += 1;
                }
                k
            };
            let (ta, tb) = (trim(a, sa, ea), trim(b, sb, eb));
            let by_value = (ea - ta)
                .cmp(&(eb - tb))
                .then_with(|| a[ta..ea].cmp(&b[tb..eb]))
                .then_with(|| (ea - sa).cmp(&(eb - sb)));
            if by_value != Ordering::Equal {
                return by_value;
            }
            (i, j) = (ea, eb);
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// The float weights of rank 2 and above that are not masks, with their masks.
fn candidates<'a>(checkpoint: &'a Checkpoint, recorded: Option<&Recorded>) -> Vec<Candidate<'a>> {
    let suffix = mask_suffix(recorded);
    let pairs: Vec<(Tensor<'a>, Tensor<'a>)> = checkpoint
        .iter()
        .filter_map(|m| weight_of(checkpoint, &m, &suffix).map(|w| (w, m)))
        .collect();
    checkpoint
        .iter()
        .filter(|t| t.dtype.is_float() && t.shape.len() >= 2)
        .filter(|t| !pairs.iter().any(|(_, m)| m.name == t.name))
        .map(|t| {
            let mask = pairs
                .iter()
                .find(|(w, _)| w.name == t.name)
                .map(|(_, m)| *m);
            // PyTorch pruning keeps the layer `X` as `X_orig` beside `X_mask`.
            let name = match (mask, t.name.strip_suffix("_orig")) {
                (Some(_), Some(base)) => base.to_string(),
                _ => t.name.clone(),
            };
            Candidate {
                name,
                weight: t,
                mask,
            }
        })
        .collect()
}

/// Selects, orders and checks the chain; no tensor data is read.
fn chain<'a>(
    checkpoint: &'a Checkpoint,
    recorded: Option<&Recorded>,
    options: &Options,
    path: &str,
) -> Result<(Vec<Candidate<'a>>, Vec<Link>, Order), Error> {
    let mut selected = select(candidates(checkpoint, recorded), options, path)?;
    let order = order(&mut selected, recorded, options.order, path)?;
    let layout = layout_of(checkpoint, recorded);
    let mut links: Vec<Link> = Vec::with_capacity(selected.len());
    for c in &selected {
        let link = link(checkpoint, c, layout, links.last(), order, path)?;
        links.push(link);
    }
    Ok((selected, links, order))
}

/// The candidates `--layers` selects (all without it): at least one, each pattern matching
/// one, and no convolution.
fn select<'a>(
    all: Vec<Candidate<'a>>,
    options: &Options,
    path: &str,
) -> Result<Vec<Candidate<'a>>, Error> {
    let selected: Vec<Candidate> = if options.layers.is_empty() {
        all
    } else {
        let patterns: Vec<Pattern> = options
            .layers
            .iter()
            .map(|g| Pattern {
                glob: g.clone(),
                position: (0, 0),
            })
            .collect();
        let matches = |c: &Candidate, p: &Pattern| p.matches(&c.name) || p.matches(&c.weight.name);
        for p in &patterns {
            if !all.iter().any(|c| matches(c, p)) {
                return Err(usage(format!(
                    "--layers '{}' matches no weight of '{path}' (weights: {})",
                    p.glob,
                    some_names(all.iter().map(|c| c.name.as_str()))
                )));
            }
        }
        all.into_iter()
            .filter(|c| patterns.iter().any(|p| matches(c, p)))
            .collect()
    };
    if selected.is_empty() {
        return Err(usage(format!(
            "'{path}' holds no float weight of rank 2 or more: there is no chain to measure"
        )));
    }
    let convs: Vec<&Candidate> = selected
        .iter()
        .filter(|c| c.weight.shape.len() > 2)
        .collect();
    if !convs.is_empty() && options.grid.is_none() {
        return Err(usage(format!(
            "'{path}': {} {} a convolution ({}): without --grid, eoi isometry follows chains of \
             linear layers (rank-2 weights) only; measure a convolution chain on a periodic \
             grid with --grid N{}",
            some_names(convs.iter().map(|c| c.name.as_str())),
            if convs.len() == 1 { "is" } else { "are" },
            convs[0]
                .weight
                .shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("x"),
            if options.layers.is_empty() {
                ", or select linear layers with --layers GLOB"
            } else {
                ""
            }
        )));
    }
    Ok(selected)
}

/// Sorts the chain: with `--order names` (`by`) in natural name order; with `--order
/// records` in the order of eoi's records, which must record every selected layer; without
/// `--order`, the records' order when they record every selected layer, else names.
fn order(
    selected: &mut [Candidate<'_>],
    recorded: Option<&Recorded>,
    by: Option<OrderBy>,
    path: &str,
) -> Result<Order, Error> {
    // The layer names eoi's provenance records, in order, if it records any.
    let recorded_order: Option<HashMap<&str, usize>> =
        recorded.and_then(|r| r.layers.as_ref()).map(|layers| {
            let mut positions = HashMap::with_capacity(layers.len());
            for (k, l) in layers.iter().enumerate() {
                positions.entry(l.name.as_str()).or_insert(k);
            }
            positions
        });
    let by_names = |selected: &mut [Candidate<'_>]| {
        selected.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        Ok(Order::Natural)
    };
    match (&recorded_order, by) {
        (_, Some(OrderBy::Names)) => by_names(selected),
        (Some(names), _) if selected.iter().all(|c| names.contains_key(c.name.as_str())) => {
            selected.sort_by_key(|c| names.get(c.name.as_str()).copied());
            Ok(Order::Provenance)
        }
        (None, Some(OrderBy::Records)) => Err(usage(format!(
            "--order records: '{path}' has no eoi provenance records of its layers (metadata eoi.layers) to order the chain by; give --order names"
        ))),
        (Some(names), Some(OrderBy::Records)) => Err(usage(format!(
            "--order records: eoi's provenance records of '{path}' do not list {}; give --order names, or choose recorded layers with --layers GLOB",
            some_names(
                selected
                    .iter()
                    .filter(|c| !names.contains_key(c.name.as_str()))
                    .map(|c| c.name.as_str())
            )
        ))),
        _ => by_names(selected),
    }
}

/// Candidate `c` as a link of the chain after `prev`: a matrix (out, in) with elements,
/// whose inputs are `prev`'s outputs, with its `<module>.bias` if the file has a valid one.
fn link(
    checkpoint: &Checkpoint,
    c: &Candidate<'_>,
    layout: Layout,
    prev: Option<&Link>,
    order: Order,
    path: &str,
) -> Result<Link, Error> {
    let &[out, inp] = layout.torch_shape(&c.weight.shape).as_slice() else {
        return Err(Error::Internal(format!(
            "layer \"{}\" reached the chain with shape {:?}",
            c.name, c.weight.shape
        )));
    };
    if out == 0 || inp == 0 {
        return Err(usage(format!(
            "'{path}': layer \"{}\" has shape {:?}, with no elements",
            c.name, c.weight.shape
        )));
    }
    if let Some(prev) = prev
        && prev.out != inp
    {
        return Err(usage(format!(
            "'{path}': layers \"{}\" and \"{}\" do not compose: \"{}\" has {} outputs but \"{}\" takes {} inputs (chain order: {}; choose layers with --layers GLOB)",
            prev.name,
            c.name,
            prev.name,
            prev.out,
            c.name,
            inp,
            order.name()
        )));
    }
    let bias = bias_name(checkpoint, c, out, "outputs", path)?;
    Ok(Link {
        name: c.name.clone(),
        out,
        inp,
        bias,
    })
}

/// A standard normal deviate by Box-Muller, from the stream (with `libm`, portable bits).
fn gaussian(stream: &mut Stream) -> f64 {
    let u = 1.0 - stream.unit(); // in (0, 1]
    let angle = stream.angle();
    libm::sqrt(-2.0 * libm::log(u)) * libm::cos(angle)
}

/// The root mean square of `x` (0 for an empty vector).
fn rms(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// The seeded input: `n` standard normal values, scaled to an RMS of exactly 1 (up to rounding).
pub fn input(seed: u64, n: usize) -> Vec<f64> {
    let mut stream = Stream::derive(seed, INPUT_STREAM);
    let x: Vec<f64> = (0..n).map(|_| gaussian(&mut stream)).collect();
    let scale = rms(&x);
    x.into_iter().map(|v| v / scale).collect()
}

/// The summary of singular values `s`.
pub fn summarize(s: &[f64]) -> Singular {
    let n = s.len().max(1) as f64;
    let mean = s.iter().sum::<f64>() / n;
    Singular {
        mean_sq: s.iter().map(|v| v * v).sum::<f64>() / n,
        std: (s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt(),
        max: s.iter().copied().fold(0.0, f64::max),
        min: s.iter().copied().reduce(f64::min).unwrap_or(0.0),
    }
}

/// Density below which a layer's product with the Jacobian is taken from its nonzeros.
const SPARSE_BELOW: f64 = 0.3;

/// `W J` for the row-major `out x inp` matrix `w` and the row-major `inp x cols` Jacobian
/// `j`, row-major: from W's nonzeros (each output row the sum, in increasing input order, of
/// `w_ok` times row k of J: nnz(W) * cols multiply-adds, J taken a block of columns at a
/// time) when W is sparse, else by faer's blocked product (out * inp * cols). Rows are
/// computed in parallel, each by one task, so the bits do not depend on the number of
/// threads.
fn times(w: &[f64], out: usize, inp: usize, j: &[f64], cols: usize) -> Vec<f64> {
    let mut product = vec![0.0; out * cols];
    if out == 0 || cols == 0 {
        return product;
    }
    let nnz = w.iter().filter(|&&v| v != 0.0).count();
    if (nnz as f64) < SPARSE_BELOW * (out * inp) as f64 {
        // Tasks of ROWS output rows (see BLOCK for the figures).
        const ROWS: usize = 64;
        let task = |(t, p): (usize, &mut [f64])| {
            // Written before it is read: the first access to the fresh (calloc'd) pages is
            // then a write, one page fault each. A read first maps the shared zero page and
            // the write after it faults again, flushing the other threads' TLBs: that was a
            // third of the time of a 48-layer chain of 2048 x 2048.
            p.fill(0.0);
            sparse_rows(w, inp, j, cols, t * ROWS, p);
        };
        if (nnz as f64) * (cols as f64) > 1e7 {
            product
                .par_chunks_mut(ROWS * cols)
                .enumerate()
                .for_each(task);
        } else {
            product.chunks_mut(ROWS * cols).enumerate().for_each(task);
        }
    } else {
        let par = measure::parallelism(out, inp.max(cols));
        matmul(
            MatMut::from_row_major_slice_mut(&mut product, out, cols),
            Accum::Replace,
            measure::view(w, out, inp),
            measure::view(j, inp, cols),
            1.0,
            par,
        );
        measure::clean_vector_state(par);
    }
    product
}

/// Rows `first..` of `W J` into `p` (whole rows of `cols`), from W's nonzeros: taken in
/// increasing input k (then row), J a block of [`BLOCK`] columns at a time, so that each
/// row of the block is read once for every output row that uses it while those rows stay in
/// cache, and each output element is summed over k in increasing order. With AVX2 the same
/// loop is compiled a second time with 256-bit vectors and chosen at run time; Rust never
/// fuses a multiply and an add, so both round alike and give the same bits.
fn sparse_rows(w: &[f64], inp: usize, j: &[f64], cols: usize, first: usize, p: &mut [f64]) {
    let rows = p.len() / cols;
    let mut entries: Vec<(u32, u32, f64)> = Vec::new();
    for r in 0..rows {
        let o = first + r;
        let row = &w[o * inp..(o + 1) * inp];
        entries.extend(
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v != 0.0)
                .map(|(k, &v)| (k as u32, r as u32, v)),
        );
    }
    // Stable: a column's entries stay in row order.
    entries.sort_by_key(|&(k, _, _)| k);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor supports AVX2, checked just above.
        unsafe { sparse_rows_avx2(&entries, j, cols, p) };
        return;
    }
    sparse_rows_portable(&entries, j, cols, p);
}

/// Columns of J per block of [`sparse_rows`]: a chain of 48 layers of 2048 x 2048 (J 2048
/// wide) took 7.2 s in one block, 9.1 s in blocks of 512 and 10.3 s in blocks of 128 (with
/// tasks of 64 rows; 8, 16, 32, 128 and 256 rows took 1-18% longer).
const BLOCK: usize = 2048;

#[inline(always)]
fn sparse_rows_portable(entries: &[(u32, u32, f64)], j: &[f64], cols: usize, p: &mut [f64]) {
    for c0 in (0..cols).step_by(BLOCK) {
        let c1 = (c0 + BLOCK).min(cols);
        for &(k, r, v) in entries {
            let (k, r) = (k as usize, r as usize);
            let jr = &j[k * cols + c0..k * cols + c1];
            let pr = &mut p[r * cols + c0..r * cols + c1];
            for (pv, &jv) in pr.iter_mut().zip(jr) {
                *pv += v * jv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sparse_rows_avx2(entries: &[(u32, u32, f64)], j: &[f64], cols: usize, p: &mut [f64]) {
    sparse_rows_portable(entries, j, cols, p);
}

/// A layer's matrix by its nonzeros, row by row (compressed sparse rows), with the slopes
/// `phi'` at its pre-activations: what the forward (JVP) and reverse (VJP) products of an
/// estimate need.
struct SparseLayer {
    out: usize,
    inp: usize,
    starts: Vec<usize>,
    columns: Vec<u32>,
    values: Vec<f64>,
    slope: Vec<f64>,
}

impl SparseLayer {
    fn new(w: &[f64], out: usize, inp: usize, slope: Vec<f64>) -> SparseLayer {
        let mut starts = Vec::with_capacity(out + 1);
        let (mut columns, mut values) = (Vec::new(), Vec::new());
        starts.push(0);
        for row in w.chunks_exact(inp) {
            for (k, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    columns.push(k as u32);
                    values.push(v);
                }
            }
            starts.push(values.len());
        }
        SparseLayer {
            out,
            inp,
            starts,
            columns,
            values,
            slope,
        }
    }

    /// `D W V` for the row-major `inp x k` block `v`: each output row by one task, summed in
    /// increasing input order (the bits do not depend on the number of threads).
    fn forward(&self, v: &[f64], k: usize) -> Vec<f64> {
        let mut y = vec![0.0; self.out * k];
        let row = |(o, y): (usize, &mut [f64])| {
            for e in self.starts[o]..self.starts[o + 1] {
                let (c, w) = (self.columns[e] as usize, self.values[e]);
                for (y, &x) in y.iter_mut().zip(&v[c * k..(c + 1) * k]) {
                    *y += w * x;
                }
            }
            let d = self.slope[o];
            y.iter_mut().for_each(|y| *y *= d);
        };
        if self.values.len() * k > 1 << 20 {
            y.par_chunks_mut(k).enumerate().for_each(row);
        } else {
            y.chunks_mut(k).enumerate().for_each(row);
        }
        y
    }

    /// `W^T D u` for a vector `u` of the layer's outputs.
    fn reverse(&self, u: &[f64]) -> Vec<f64> {
        let mut x = vec![0.0; self.inp];
        for (o, &u) in u.iter().enumerate() {
            let u = u * self.slope[o];
            if u != 0.0 {
                for e in self.starts[o]..self.starts[o + 1] {
                    x[self.columns[e] as usize] += self.values[e] * u;
                }
            }
        }
        x
    }
}

fn norm(x: &[f64]) -> f64 {
    // Scaled, so that neither a vanishing nor an exploding chain's vector under/overflows.
    let top = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if top == 0.0 || !top.is_finite() {
        return top;
    }
    top * x.iter().map(|v| (v / top).powi(2)).sum::<f64>().sqrt()
}

/// The Lanczos method on `J^T J` from a seeded Gaussian start ([`POWER_STREAM`]): the
/// largest singular value `s = sqrt(theta)` (`theta` the largest Ritz value, never above the
/// largest eigenvalue), the steps taken and the relative residual (see [`Estimate`]). Stops
/// at [`TOLERANCE`] or after [`MAX_ITERATIONS`] steps. `J^T J` is applied scaled by
/// `1 / ||J v_0||^2` (`v_0` the unit start), each product as `J^T (J x / s_0) / s_0`, so that
/// a chain whose values vanish or explode is followed on its own scale. `None` when a
/// product is not finite.
fn largest_singular(
    layers: &[SparseLayer],
    seed: u64,
    progress: &dyn Progress,
) -> Option<(f64, usize, f64)> {
    let cols = layers.first().map_or(0, |l| l.inp);
    let mut stream = Stream::derive(seed, POWER_STREAM);
    let mut v: Vec<f64> = (0..cols).map(|_| gaussian(&mut stream)).collect();
    let n = norm(&v);
    v.iter_mut().for_each(|x| *x /= n);
    let forward = |x: &[f64]| layers.iter().fold(x.to_vec(), |u, l| l.forward(&u, 1));
    let s0 = norm(&forward(&v));
    if !s0.is_finite() {
        return None;
    }
    if s0 == 0.0 {
        // J v = 0 for a random v: J = 0 (with probability 1).
        return Some((0.0, 1, 0.0));
    }
    let (theta, steps, residual) =
        measure::spectrum::largest_eigenvalue(v, MAX_ITERATIONS, TOLERANCE, |x, y| {
            let mut u = forward(x);
            u.iter_mut().for_each(|v| *v /= s0);
            for l in layers.iter().rev() {
                u = l.reverse(&u);
            }
            for (y, u) in y.iter_mut().zip(u) {
                *y = u / s0;
            }
            progress.advance(1);
        })?;
    Some((theta.sqrt() * s0, steps, residual))
}

/// Measures the chain of the artifact at `path`: exactly (the accumulated Jacobian and its
/// SVD) when its largest intermediate Jacobian holds at most [`EXACT_LIMIT`] values and twice
/// its memory is available, else (or with `--probes`) an [`Estimate`].
pub fn isometry(path: &Path, options: &Options, progress: &dyn Progress) -> Result<Report, Error> {
    if let Some(size) = options.grid {
        return conv::isometry(path, options, size, progress);
    }
    conv::check_probes(options.probes)?;
    let checkpoint = Checkpoint::open_any(path)?;
    let recorded = Recorded::of(&checkpoint);
    let shown = path.display().to_string();
    let (selected, links, order) = chain(&checkpoint, recorded.as_ref(), options, &shown)?;
    let layout = layout_of(&checkpoint, recorded.as_ref());
    let cols = links[0].inp;
    let widest = links.iter().map(|l| l.out).max().unwrap_or(cols).max(cols);
    let values = widest as u64 * cols as u64;
    let affordable = conv::available_memory().is_none_or(|a| values * 16 <= a);
    let probes = match options.probes {
        Some(k) => Some(k),
        None if values > EXACT_LIMIT || !affordable => Some(conv::DEFAULT_PROBES),
        None => None,
    };
    // Columns carried through the chain: the identity's, or the probes.
    let carried = probes.unwrap_or(cols);
    let work = |l: &Link| (l.out * l.inp * carried / 64 + l.out * l.inp) as u64;
    let iterations = if probes.is_some() { MAX_ITERATIONS } else { 0 };
    progress.start(links.iter().map(work).sum::<u64>() + iterations as u64);

    let mut x = input(options.seed, cols);
    let mut signal_rms = vec![rms(&x)];
    // J (exact) or J V (probes), row-major: rows the current layer's outputs.
    let mut jacobian: Vec<f64> = match probes {
        None => (0..cols * cols)
            .map(|k| if k / cols == k % cols { 1.0 } else { 0.0 })
            .collect(),
        Some(k) => {
            let mut stream = Stream::derive(options.seed, conv::PROBE_STREAM);
            (0..cols * k).map(|_| gaussian(&mut stream)).collect()
        }
    };
    let mut sparse: Vec<SparseLayer> = Vec::new();
    let mut non_finite: Option<usize> = None;
    for (depth, (c, link)) in selected.iter().zip(&links).enumerate() {
        let (out, inp) = (link.out, link.inp);
        // Stored (in, out) in flax layout: the (out, in) matrix, row-major.
        let w = c.masked_weight(layout)?;
        let bias = bias_values(&checkpoint, link.bias.as_deref(), out)?;
        let mut slope = vec![0.0; out];
        let mut next = vec![0.0; out];
        for o in 0..out {
            let row = &w[o * inp..(o + 1) * inp];
            let h = row.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() + bias[o];
            (next[o], slope[o]) = options.nonlinearity.apply(h);
        }
        x = next;
        signal_rms.push(rms(&x));

        match probes {
            None => {
                let mut product = times(&w, out, inp, &jacobian, cols);
                for (row, &d) in product.chunks_exact_mut(cols.max(1)).zip(&slope) {
                    row.iter_mut().for_each(|v| *v *= d);
                }
                jacobian = product;
            }
            Some(k) => {
                let layer = SparseLayer::new(&w, out, inp, slope);
                jacobian = layer.forward(&jacobian, k);
                sparse.push(layer);
            }
        }
        if non_finite.is_none() && jacobian.iter().any(|v| !v.is_finite()) {
            non_finite = Some(depth + 1);
        }
        progress.advance(work(link));
    }

    let rows = links.last().map_or(cols, |l| l.out);
    let (singular, note, estimate) = chain_singular(
        &jacobian,
        (rows, cols),
        &sparse,
        probes,
        non_finite,
        options,
        progress,
    );
    Ok(Report {
        path: shown,
        nonlinearity: options.nonlinearity,
        seed: options.seed,
        order,
        chain: links,
        rows,
        cols,
        singular,
        note,
        signal_rms,
        grid: None,
        estimate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut names = vec![
            "hidden.10.weight",
            "hidden.9.weight",
            "hidden.100.weight",
            "hidden.2.weight",
            "a.weight",
            "hidden.02.weight",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "a.weight",
                "hidden.2.weight",
                "hidden.02.weight",
                "hidden.9.weight",
                "hidden.10.weight",
                "hidden.100.weight"
            ]
        );
        assert_eq!(natural_cmp("net.2", "net.2"), Ordering::Equal);
        assert_eq!(natural_cmp("net", "net.0"), Ordering::Less);
    }

    #[test]
    fn the_sparse_product_is_the_dense_one() {
        let (out, inp, cols) = (70, 90, 300);
        let mut stream = Stream::derive(3, "isometry-test");
        let j: Vec<f64> = (0..inp * cols).map(|_| gaussian(&mut stream)).collect();
        for density in [0.05, 0.5] {
            let w: Vec<f64> = (0..out * inp)
                .map(|_| {
                    let v = gaussian(&mut stream);
                    if stream.unit() < density { v } else { 0.0 }
                })
                .collect();
            let ours = times(&w, out, inp, &j, cols);
            for o in 0..out {
                for c in 0..cols {
                    let want: f64 = (0..inp).map(|k| w[o * inp + k] * j[k * cols + c]).sum();
                    let got = ours[o * cols + c];
                    assert!(
                        (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                        "{density}"
                    );
                }
            }
        }
    }

    #[test]
    fn sparse_forward_and_reverse_products_are_d_w_and_its_transpose() {
        let (out, inp, k) = (9, 7, 3);
        let mut stream = Stream::derive(4, "isometry-test");
        let w: Vec<f64> = (0..out * inp)
            .map(|_| {
                let v = gaussian(&mut stream);
                if stream.unit() < 0.4 { v } else { 0.0 }
            })
            .collect();
        let slope: Vec<f64> = (0..out).map(|o| 0.5 + o as f64 / 10.0).collect();
        let layer = SparseLayer::new(&w, out, inp, slope.clone());
        let v: Vec<f64> = (0..inp * k).map(|_| gaussian(&mut stream)).collect();
        let y = layer.forward(&v, k);
        for o in 0..out {
            for c in 0..k {
                let want = slope[o] * (0..inp).map(|i| w[o * inp + i] * v[i * k + c]).sum::<f64>();
                assert!((y[o * k + c] - want).abs() < 1e-12);
            }
        }
        let u: Vec<f64> = (0..out).map(|_| gaussian(&mut stream)).collect();
        let x = layer.reverse(&u);
        for i in 0..inp {
            let want: f64 = (0..out).map(|o| w[o * inp + i] * slope[o] * u[o]).sum();
            assert!((x[i] - want).abs() < 1e-12);
        }
    }

    #[test]
    fn nonlinearities_and_their_slopes() {
        let t = Nonlinearity::Tanh.apply(0.5);
        assert!((t.0 - 0.5f64.tanh()).abs() < 1e-16);
        assert!((t.1 - (1.0 - 0.5f64.tanh().powi(2))).abs() < 1e-16);
        assert_eq!(Nonlinearity::Linear.apply(-3.0), (-3.0, 1.0));
        assert_eq!(Nonlinearity::Relu.apply(-1.0), (0.0, 0.0));
        assert_eq!(Nonlinearity::Relu.apply(0.0), (0.0, 0.0));
        assert_eq!(Nonlinearity::Relu.apply(2.0), (2.0, 1.0));
        assert_eq!(Nonlinearity::HardTanh.apply(0.25), (0.25, 1.0));
        assert_eq!(Nonlinearity::HardTanh.apply(-4.0), (-1.0, 0.0));
        assert_eq!(Nonlinearity::HardTanh.apply(1.0), (1.0, 0.0));
    }

    #[test]
    fn the_input_has_unit_rms_and_depends_on_the_seed() {
        let x = input(0, 128);
        assert!((rms(&x) - 1.0).abs() < 1e-15);
        assert_eq!(x, input(0, 128));
        assert_ne!(x, input(1, 128));
        // Roughly Gaussian: mean near 0, a fair share on each side.
        let x = input(5, 10_000);
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        let beyond = x.iter().filter(|v| v.abs() > 1.96).count();
        assert!((400..600).contains(&beyond), "{beyond}");
    }

    #[test]
    fn summaries_of_singular_values() {
        let s = summarize(&[3.0, 1.0]);
        assert_eq!((s.mean_sq, s.std, s.max, s.min), (5.0, 1.0, 3.0, 1.0));
    }
}

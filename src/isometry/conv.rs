//! `isometry --grid N`: the input-output Jacobian of a chain of same-shaped C -> C
//! convolutions acting on a periodic grid of N positions along each spatial dimension (N x N
//! for 2-D kernels; N for 1-D, N x N x N for 3-D ones).
//!
//! Layer k maps `x` (C channels by N^d positions) to `phi(K_k x + b_k)`, where the circular
//! convolution is PyTorch's cross-correlation with circular padding, stride 1 and no
//! dilation: `(K x)[o, p] = sum_{c, t} W[o, c, t] x[c, p + t - (k - 1) / 2 mod N]` (the tap
//! `(k - 1) / 2`, rounded down, sits on the output position; `c` runs over `o`'s group). The
//! Jacobian is `J = D_L K_L ... D_1 K_1`, a square matrix of side `n = C N^d`.
//!
//! Three ways to its singular values, chosen in [`Method`]:
//! - **Fourier** (the linear nonlinearity, exact): each `K_k` is block diagonal in the
//!   d-dimensional discrete Fourier basis, so the chain's singular values are the union over
//!   the `N^d` frequencies `f` of those of the C x C complex product `W_L(f) ... W_1(f)`,
//!   `W_k(f) = sum_t W_k[., ., t] e^{2 pi i f.(t - off)/N}`. A frequency and its negative
//!   give conjugate products (real weights), so only one of each pair is computed.
//! - **Dense** (other nonlinearities, `n <=` [`DENSE_LIMIT`], exact): the identity's `n`
//!   columns are pushed through the chain by forward-mode (JVP) products, giving `J`, whose
//!   singular values come from faer's SVD.
//! - **Probes** (otherwise, or with `--probes K`, estimated): `K` Gaussian probes `v` are
//!   pushed through by forward-mode products. `||J v||^2 / n` is an unbiased estimate of the
//!   mean of the squared singular values (Hutchinson); with `G = Y^T Y` (`Y = J V`), the
//!   U-statistic over pairs `i != j` of `G_ij^2 / n - q_i q_j` is an unbiased estimate of the
//!   variance of the squared singular values. Standard errors: the sample standard deviation
//!   over `sqrt(K)`, and the jackknife for the variance. The std, max and min of the singular
//!   values themselves are not estimated.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, c64};
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

use super::{
    Candidate, Link, Nonlinearity, Options, Report, Singular, bias_name, bias_values, candidates,
    gaussian, input, order, overflow_note, rms, select, some_names, summarize, usage,
};
use crate::error::Error;
use crate::layer::{Layout, named};
use crate::measure;
use crate::progress::Progress;
use crate::read::Checkpoint;
use crate::records::{Recorded, layout_of};
use crate::stream::Stream;

/// The largest Jacobian side `n = C N^d` whose singular values are computed exactly for a
/// nonlinear chain (the dense Jacobian costs `n` forward-mode products per layer and an
/// `n x n` SVD); above it they are estimated from random probes.
pub const DENSE_LIMIT: usize = 1024;

/// The number of random probes when the Jacobian is too large to build.
pub const DEFAULT_PROBES: usize = 64;

/// The fewest and most probes `--probes` accepts.
pub const MIN_PROBES: usize = 4;
pub const MAX_PROBES: usize = 4096;

/// The name of the random stream the probes are drawn from (with the `--seed`).
pub const PROBE_STREAM: &str = "eoi-isometry-probes";

named! {
    /// How the singular values were obtained.
    pub enum Method {
        /// Exact: the product of C x C matrices at every frequency (linear chains).
        Fourier = "fourier",
        /// Exact: the dense Jacobian, built column by column with forward-mode products.
        Dense = "dense",
        /// Estimated from random probes pushed through forward-mode products.
        Probes = "probes",
    }
}

/// One convolution of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvLink {
    /// The kernel's spatial size (`[kh, kw]` for a 2-D convolution).
    pub kernel: Vec<usize>,
    pub groups: usize,
}

/// What `--grid` adds to a [`Report`].
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Positions along each spatial dimension.
    pub size: usize,
    /// Spatial dimensions: 1, 2 or 3.
    pub dims: usize,
    pub channels: usize,
    /// The kernel and groups of each link of the chain, in chain order.
    pub links: Vec<ConvLink>,
    pub method: Method,
    /// The number of random probes, when estimated.
    pub probes: Option<usize>,
    /// The standard error of the estimated mean of squares (None when exact).
    pub mean_sq_stderr: Option<f64>,
    /// The variance of the squared singular values (the eigenvalues of `J^T J`): exact, or
    /// estimated (an unbiased estimate, which may fall below 0) with `sq_var_stderr`.
    pub sq_var: Option<f64>,
    pub sq_var_stderr: Option<f64>,
}

impl Grid {
    pub fn estimated(&self) -> bool {
        self.method == Method::Probes
    }

    /// `N^d`.
    pub fn positions(&self) -> usize {
        self.size.pow(self.dims as u32)
    }
}

/// For each tap of a kernel, the input position each output position reads.
type Gather = Vec<Vec<u32>>;

/// One convolution ready to apply: weights (out, in / groups, taps) and gather tables.
struct Conv {
    weights: Vec<f64>,
    bias: Vec<f64>,
    /// Input channels per group and output channels per group.
    per_group_in: usize,
    per_group_out: usize,
    taps: usize,
    /// For each tap, the input position each output position reads (shared by the layers
    /// of one kernel shape).
    gather: Arc<Gather>,
    /// For each tap, its offset from the centre along each dimension.
    offsets: Vec<Vec<i64>>,
}

impl Conv {
    /// `out = K x` for `x` laid out as (channel, position, column) with `cols` columns.
    fn apply(&self, x: &[f64], cols: usize, positions: usize, out: &mut [f64]) {
        let block = positions * cols;
        out.par_chunks_mut(block).enumerate().for_each(|(o, y)| {
            y.fill(0.0);
            let group = o / self.per_group_out;
            for cl in 0..self.per_group_in {
                let c = group * self.per_group_in + cl;
                let xc = &x[c * block..(c + 1) * block];
                let row = &self.weights[(o * self.per_group_in + cl) * self.taps..][..self.taps];
                for (t, &w) in row.iter().enumerate() {
                    if w == 0.0 {
                        continue;
                    }
                    for (p, &q) in self.gather[t].iter().enumerate() {
                        let src = &xc[q as usize * cols..][..cols];
                        let dst = &mut y[p * cols..][..cols];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += w * s;
                        }
                    }
                }
            }
        });
    }
}

/// Memory the machine has available, where it can be read (Linux's MemAvailable; the same
/// reading as `generate`'s memory limit).
pub(super) fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The multi-index of flat position `p` on a grid of `dims` dimensions of `size`.
fn unflatten(mut p: usize, size: usize, dims: usize) -> Vec<usize> {
    let mut index = vec![0; dims];
    for d in (0..dims).rev() {
        index[d] = p % size;
        p /= size;
    }
    index
}

fn flatten(index: &[usize], size: usize) -> usize {
    index.iter().fold(0, |acc, &i| acc * size + i)
}

/// The offsets of a kernel's taps from the tap that sits on the output position.
fn tap_offsets(kernel: &[usize]) -> Vec<Vec<i64>> {
    let taps: usize = kernel.iter().product();
    (0..taps)
        .map(|t| {
            let mut rest = t;
            let mut offset = vec![0; kernel.len()];
            for d in (0..kernel.len()).rev() {
                let k = kernel[d];
                offset[d] = (rest % k) as i64 - ((k as i64 - 1) / 2);
                rest /= k;
            }
            offset
        })
        .collect()
}

fn gather_table(offsets: &[Vec<i64>], size: usize, dims: usize) -> Gather {
    let positions = size.pow(dims as u32);
    offsets
        .iter()
        .map(|offset| {
            (0..positions)
                .map(|p| {
                    let index: Vec<usize> = unflatten(p, size, dims)
                        .iter()
                        .zip(offset)
                        .map(|(&i, &o)| (i as i64 + o).rem_euclid(size as i64) as usize)
                        .collect();
                    flatten(&index, size) as u32
                })
                .collect()
        })
        .collect()
}

fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

/// Checks the selected weights as a chain of C -> C convolutions and returns the links.
fn links(
    checkpoint: &Checkpoint,
    recorded: Option<&Recorded>,
    selected: &[Candidate<'_>],
    size: usize,
    path: &str,
) -> Result<(Vec<Link>, Vec<ConvLink>), Error> {
    let layout = layout_of(checkpoint, recorded);
    let not_conv: Vec<&Candidate> = selected
        .iter()
        .filter(|c| !(3..=5).contains(&c.weight.shape.len()))
        .collect();
    if let Some(first) = not_conv.first() {
        return Err(usage(format!(
            "'{path}': {} {} not a convolution (shape {}): with --grid, eoi isometry follows chains of 1-D, 2-D or 3-D convolutions (weights of rank 3 to 5) only; select the convolutions with --layers GLOB",
            some_names(not_conv.iter().map(|c| c.name.as_str())),
            if not_conv.len() == 1 { "is" } else { "are" },
            shape_text(&first.weight.shape),
        )));
    }
    let mut links: Vec<Link> = Vec::with_capacity(selected.len());
    let mut convs: Vec<ConvLink> = Vec::with_capacity(selected.len());
    let first = &selected[0];
    let dims = first.weight.shape.len() - 2;
    let channels = layout.torch_shape(&first.weight.shape)[0];
    for c in selected {
        let shape = layout.torch_shape(&c.weight.shape);
        if shape.contains(&0) {
            return Err(usage(format!(
                "'{path}': layer \"{}\" has shape {:?}, with no elements",
                c.name, c.weight.shape
            )));
        }
        if shape.len() - 2 != dims {
            return Err(usage(format!(
                "'{path}': layers \"{}\" and \"{}\" do not compose on one grid: \"{}\" is a {dims}-D convolution (shape {}) but \"{}\" is {}-D (shape {}); select convolutions of one kind with --layers GLOB",
                first.name,
                c.name,
                first.name,
                shape_text(&layout.torch_shape(&first.weight.shape)),
                c.name,
                shape.len() - 2,
                shape_text(&shape),
            )));
        }
        let (out, per_group_in, kernel) = (shape[0], shape[1], shape[2..].to_vec());
        let same = "--grid follows chains of same-shaped C -> C convolutions (choose layers with --layers GLOB)";
        if out != channels {
            return Err(usage(format!(
                "'{path}': layer \"{}\" has {out} output channels (shape {}) but the chain's first layer \"{}\" has {channels}: {same}",
                c.name,
                shape_text(&shape),
                first.name,
            )));
        }
        if channels % per_group_in != 0 {
            return Err(usage(format!(
                "'{path}': layer \"{}\" (shape {}) takes {per_group_in} input channels per group, which does not divide the chain's {channels} channels: it is not a {channels} -> {channels} convolution; {same}",
                c.name,
                shape_text(&shape),
            )));
        }
        let groups = channels / per_group_in;
        let recorded_groups = recorded
            .and_then(|r| r.layers.as_ref())
            .and_then(|layers| layers.iter().find(|l| l.name == c.name))
            .map(|l| l.groups);
        if let Some(g) = recorded_groups
            && g != groups
        {
            return Err(usage(format!(
                "'{path}': layer \"{}\" (shape {}, groups {g} in eoi's records) is a {} -> {out} convolution, not {channels} -> {channels}: {same}",
                c.name,
                shape_text(&shape),
                per_group_in * g,
            )));
        }
        if let Some((d, &k)) = kernel.iter().enumerate().find(|&(_, &k)| k > size) {
            return Err(usage(format!(
                "'{path}': layer \"{}\" has a {} kernel, {k} taps along dimension {} do not fit a periodic grid of {size}: give --grid {k} or more",
                c.name,
                shape_text(&kernel),
                d + 1,
            )));
        }
        let bias = bias_name(checkpoint, c, out, "output channels", path)?;
        links.push(Link {
            name: c.name.clone(),
            out,
            inp: channels,
            bias,
        });
        convs.push(ConvLink { kernel, groups });
    }
    Ok((links, convs))
}

/// The variance of the squared values of `s` (over all of them), computed on `s / max` so
/// that the fourth powers of a vanishing chain's values do not underflow early.
fn sq_var(s: &[f64]) -> f64 {
    let n = s.len().max(1) as f64;
    let top = s.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let top = if top > 0.0 && top.is_finite() {
        top
    } else {
        1.0
    };
    let m2 = s.iter().map(|v| (v / top).powi(2)).sum::<f64>() / n;
    let var = s
        .iter()
        .map(|v| ((v / top).powi(2) - m2).powi(2))
        .sum::<f64>()
        / n;
    var * top.powi(4)
}

/// Estimates from `K` probe images `Y = J V` (column j of `y` holds `J v_j`; layout (row,
/// column), `n` rows): (mean of squares, its standard error, variance of squares, its
/// standard error).
pub fn estimate(y: &[f64], n: usize, k: usize) -> (f64, f64, f64, f64) {
    // Computed on `y / scale`, so that the fourth powers neither underflow nor overflow.
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    };
    let (s2, s4) = (scale * scale, scale * scale * scale * scale);
    let mut gram = vec![0.0; k * k];
    for row in y.chunks_exact(k) {
        for i in 0..k {
            let a = row[i] / scale;
            for j in i..k {
                gram[i * k + j] += a * (row[j] / scale);
            }
        }
    }
    for i in 0..k {
        for j in 0..i {
            gram[i * k + j] = gram[j * k + i];
        }
    }
    let nf = n as f64;
    let q: Vec<f64> = (0..k).map(|i| gram[i * k + i] / nf).collect();
    let kf = k as f64;
    let mean = q.iter().sum::<f64>() / kf;
    let var = q.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (kf - 1.0);
    let mean_se = (var / kf).sqrt();
    // h_ij = G_ij^2 / n - q_i q_j, unbiased for the variance of the squared singular values.
    let h = |i: usize, j: usize| gram[i * k + j].powi(2) / nf - q[i] * q[j];
    let rows: Vec<f64> = (0..k)
        .map(|i| (0..k).filter(|&j| j != i).map(|j| h(i, j)).sum())
        .collect();
    let total: f64 = rows.iter().sum();
    let full = total / (kf * (kf - 1.0));
    let loo: Vec<f64> = rows
        .iter()
        .map(|r| (total - 2.0 * r) / ((kf - 1.0) * (kf - 2.0)))
        .collect();
    let loo_mean = loo.iter().sum::<f64>() / kf;
    let jack = ((kf - 1.0) / kf * loo.iter().map(|v| (v - loo_mean).powi(2)).sum::<f64>()).sqrt();
    (mean * s2, mean_se * s2, full * s4, jack * s4)
}

/// The frequencies to compute: one of each pair `{f, -f}`, with whether it is its own
/// negative (then its product is real and counts once).
fn frequencies(size: usize, dims: usize) -> Vec<(Vec<usize>, bool)> {
    let positions = size.pow(dims as u32);
    (0..positions)
        .filter_map(|p| {
            let f = unflatten(p, size, dims);
            let neg: Vec<usize> = f.iter().map(|&i| (size - i) % size).collect();
            let q = flatten(&neg, size);
            (p <= q).then_some((f, p == q))
        })
        .collect()
}

/// The singular values at frequency `f` (each twice when `f` is not its own negative, for
/// `f` and `-f`), or the depth from which the product is not finite.
fn fourier_singular(
    convs: &[Conv],
    channels: usize,
    size: usize,
    f: &[usize],
    self_conjugate: bool,
) -> Result<Vec<f64>, usize> {
    let mut product = Mat::<c64>::identity(channels, channels);
    let mut w = Mat::<c64>::zeros(channels, channels);
    let mut next = Mat::<c64>::zeros(channels, channels);
    for (depth, conv) in convs.iter().enumerate() {
        let phases: Vec<c64> = conv
            .offsets
            .iter()
            .map(|offset| {
                let turns: f64 = offset
                    .iter()
                    .zip(f)
                    .map(|(&o, &fi)| (o * fi as i64).rem_euclid(size as i64) as f64)
                    .sum::<f64>()
                    / size as f64;
                let angle = 2.0 * std::f64::consts::PI * turns;
                c64::new(angle.cos(), angle.sin())
            })
            .collect();
        w.fill(c64::new(0.0, 0.0));
        for o in 0..channels {
            let group = o / conv.per_group_out;
            for cl in 0..conv.per_group_in {
                let row = &conv.weights[(o * conv.per_group_in + cl) * conv.taps..][..conv.taps];
                let mut sum = c64::new(0.0, 0.0);
                for (&v, &phase) in row.iter().zip(&phases) {
                    sum += phase * v;
                }
                w[(o, group * conv.per_group_in + cl)] = sum;
            }
        }
        matmul(
            next.as_mut(),
            Accum::Replace,
            w.as_ref(),
            product.as_ref(),
            c64::new(1.0, 0.0),
            Par::Seq,
        );
        measure::zero_upper_here();
        std::mem::swap(&mut product, &mut next);
        let finite = (0..channels).all(|j| {
            (0..channels).all(|i| product[(i, j)].re.is_finite() && product[(i, j)].im.is_finite())
        });
        if !finite {
            return Err(depth + 1);
        }
    }
    let s = product.singular_values();
    measure::zero_upper_here();
    let s = s.map_err(|_| usize::MAX)?;
    Ok(if self_conjugate {
        s
    } else {
        s.iter().flat_map(|&v| [v, v]).collect()
    })
}

/// Refuses a `--probes K` outside [`MIN_PROBES`, `MAX_PROBES`] (linear and convolution
/// chains alike).
pub(super) fn check_probes(probes: Option<usize>) -> Result<(), Error> {
    match probes {
        Some(k) if !(MIN_PROBES..=MAX_PROBES).contains(&k) => Err(usage(format!(
            "--probes {k}: give between {MIN_PROBES} and {MAX_PROBES} probes (the standard errors need at least {MIN_PROBES})"
        ))),
        _ => Ok(()),
    }
}

/// Measures the convolution chain of the artifact at `path` on a periodic grid of `size`.
pub fn isometry(
    path: &Path,
    options: &Options,
    size: usize,
    progress: &dyn Progress,
) -> Result<Report, Error> {
    if size == 0 {
        return Err(usage(
            "--grid 0: the grid needs at least one position along each dimension".into(),
        ));
    }
    check_probes(options.probes)?;
    let checkpoint = Checkpoint::open_any(path)?;
    let recorded = Recorded::of(&checkpoint);
    let shown = path.display().to_string();
    let mut selected = select(candidates(&checkpoint, recorded.as_ref()), options, &shown)?;
    let order = order(&mut selected, recorded.as_ref(), options.order, &shown)?;
    let (links, kernels) = links(&checkpoint, recorded.as_ref(), &selected, size, &shown)?;
    let layout = layout_of(&checkpoint, recorded.as_ref());
    let channels = links[0].out;
    let dims = kernels[0].kernel.len();
    let positions = (0..dims)
        .try_fold(1usize, |acc, _| acc.checked_mul(size))
        .filter(|&p| p <= u32::MAX as usize);
    let n = positions.and_then(|p| p.checked_mul(channels));
    let (Some(positions), Some(n)) = (positions, n) else {
        return Err(usage(format!(
            "--grid {size}: a {dims}-D grid of that size is too large to measure"
        )));
    };

    let method = match options.probes {
        Some(_) => Method::Probes,
        None if options.nonlinearity == Nonlinearity::Linear => Method::Fourier,
        None if n <= DENSE_LIMIT => Method::Dense,
        None => Method::Probes,
    };
    let probes = (method == Method::Probes).then(|| options.probes.unwrap_or(DEFAULT_PROBES));
    let cols = match method {
        Method::Fourier => 0,
        Method::Dense => n,
        Method::Probes => probes.unwrap_or(DEFAULT_PROBES),
    };
    let freqs = if method == Method::Fourier {
        frequencies(size, dims)
    } else {
        Vec::new()
    };
    let per_layer = (n as u64).saturating_mul(cols as u64 + 1);
    progress.start(per_layer * links.len() as u64 + freqs.len() as u64);

    check_memory(size, channels, positions, &kernels, method, cols)?;

    let convs = convolutions(&checkpoint, layout, &selected, &links, &kernels, size)?;

    let (tangents, signal_rms, non_finite) = propagate(
        &convs,
        options,
        method,
        (n, positions, cols),
        per_layer,
        progress,
    );

    let mut grid = Grid {
        size,
        dims,
        channels,
        links: kernels.clone(),
        method,
        probes,
        mean_sq_stderr: None,
        sq_var: None,
        sq_var_stderr: None,
    };
    let (singular, note) =
        grid_singular(&mut grid, &convs, &tangents, &freqs, non_finite, progress);
    Ok(Report {
        path: shown,
        nonlinearity: options.nonlinearity,
        seed: options.seed,
        order,
        chain: links,
        rows: n,
        cols: n,
        singular,
        note,
        signal_rms,
        grid: Some(grid),
        estimate: None,
    })
}

/// Runs the signal through the chain, and with it the tangents (dense: the identity;
/// probes: Gaussian columns; Fourier: none), laid out as (channel, position, column):
/// the tangents at the end, the signal's RMS at every depth, and the first depth at which a
/// tangent stopped being finite.
fn propagate(
    convs: &[Conv],
    options: &Options,
    method: Method,
    (n, positions, cols): (usize, usize, usize),
    per_layer: u64,
    progress: &dyn Progress,
) -> (Vec<f64>, Vec<f64>, Option<usize>) {
    let mut x = input(options.seed, n);
    let mut signal_rms = vec![rms(&x)];
    let mut tangents = match method {
        Method::Fourier => Vec::new(),
        Method::Dense => {
            let mut v = vec![0.0; n * n];
            for i in 0..n {
                v[i * n + i] = 1.0;
            }
            v
        }
        Method::Probes => {
            let mut stream = Stream::derive(options.seed, PROBE_STREAM);
            (0..n * cols).map(|_| gaussian(&mut stream)).collect()
        }
    };
    let mut scratch = vec![0.0; tangents.len()];
    let mut h = vec![0.0; n];
    let mut non_finite: Option<usize> = None;
    for (depth, conv) in convs.iter().enumerate() {
        conv.apply(&x, 1, positions, &mut h);
        let mut slopes = vec![0.0; n];
        for (i, v) in h.iter().enumerate() {
            let b = conv.bias[i / positions];
            (x[i], slopes[i]) = options.nonlinearity.apply(v + b);
        }
        signal_rms.push(rms(&x));
        if cols > 0 {
            conv.apply(&tangents, cols, positions, &mut scratch);
            scratch
                .par_chunks_mut(cols)
                .zip(&slopes)
                .for_each(|(row, &d)| row.iter_mut().for_each(|v| *v *= d));
            std::mem::swap(&mut tangents, &mut scratch);
            if non_finite.is_none() && tangents.iter().any(|v| !v.is_finite()) {
                non_finite = Some(depth + 1);
            }
        }
        progress.advance(per_layer);
    }
    (tangents, signal_rms, non_finite)
}

/// The singular values of the chain's Jacobian by the grid's method, or why there are none;
/// `grid` gets the variance of their squares (and the estimates' standard errors).
fn grid_singular(
    grid: &mut Grid,
    convs: &[Conv],
    tangents: &[f64],
    freqs: &[(Vec<usize>, bool)],
    non_finite: Option<usize>,
    progress: &dyn Progress,
) -> (Option<Singular>, Option<String>) {
    let (n, channels, size) = (
        grid.channels * grid.size.pow(grid.dims as u32),
        grid.channels,
        grid.size,
    );
    let cols = grid.probes.unwrap_or(0);
    match (grid.method, non_finite) {
        (_, Some(depth)) => (None, Some(overflow_note(depth))),
        (Method::Fourier, None) => {
            let mut all: Vec<f64> = Vec::with_capacity(n);
            let mut worst: Option<usize> = None;
            for batch in freqs.chunks(64) {
                let results: Vec<Result<Vec<f64>, usize>> = batch
                    .par_iter()
                    .map(|(f, own)| fourier_singular(convs, channels, size, f, *own))
                    .collect();
                for r in results {
                    match r {
                        Ok(s) => all.extend(s),
                        Err(depth) => worst = Some(worst.map_or(depth, |w| w.min(depth))),
                    }
                }
                progress.advance(batch.len() as u64);
            }
            match worst {
                Some(usize::MAX) => (
                    None,
                    Some("the SVD of a frequency's product did not converge".into()),
                ),
                Some(depth) => (None, Some(overflow_note(depth))),
                None => {
                    grid.sq_var = Some(sq_var(&all));
                    (Some(summarize(&all)), None)
                }
            }
        }
        (Method::Dense, None) => {
            match measure::singular_values(
                measure::view(tangents, n, n),
                measure::parallelism(n, n),
            ) {
                Some(s) => {
                    grid.sq_var = Some(sq_var(&s));
                    (Some(summarize(&s)), None)
                }
                None => (
                    None,
                    Some("the SVD of the Jacobian did not converge".into()),
                ),
            }
        }
        (Method::Probes, None) => {
            let (mean_sq, mean_se, spread, spread_se) = estimate(tangents, n, cols);
            grid.mean_sq_stderr = Some(mean_se);
            grid.sq_var = Some(spread);
            grid.sq_var_stderr = Some(spread_se);
            (
                Some(Singular {
                    mean_sq,
                    std: f64::NAN,
                    max: f64::NAN,
                    min: f64::NAN,
                }),
                None,
            )
        }
    }
}

/// The chain's convolutions, masked, in PyTorch order, each with its bias and the gather
/// table of its kernel shape on the grid (layers of one kernel shape share a table).
fn convolutions(
    checkpoint: &Checkpoint,
    layout: Layout,
    selected: &[Candidate<'_>],
    links: &[Link],
    kernels: &[ConvLink],
    size: usize,
) -> Result<Vec<Conv>, Error> {
    let channels = links[0].out;
    let dims = kernels[0].kernel.len();
    let mut tables: Vec<(Vec<usize>, Arc<Gather>)> = Vec::new();
    let mut convs: Vec<Conv> = Vec::with_capacity(links.len());
    for ((c, link), conv) in selected.iter().zip(links).zip(kernels) {
        let weights = c.masked_weight(layout)?;
        let bias = bias_values(checkpoint, link.bias.as_deref(), channels)?;
        let offsets = tap_offsets(&conv.kernel);
        let gather = match tables.iter().find(|(k, _)| *k == conv.kernel) {
            Some((_, table)) => Arc::clone(table),
            None => {
                let table = Arc::new(gather_table(&offsets, size, dims));
                tables.push((conv.kernel.clone(), Arc::clone(&table)));
                table
            }
        };
        convs.push(Conv {
            weights,
            bias,
            per_group_in: channels / conv.groups,
            per_group_out: channels / conv.groups,
            taps: conv.kernel.iter().product(),
            gather,
            offsets,
        });
    }

    Ok(convs)
}

/// Refuses up front a measurement the machine does not have the memory for: the tangents
/// and a scratch copy, the signal, and one gather table per kernel shape.
fn check_memory(
    size: usize,
    channels: usize,
    positions: usize,
    kernels: &[ConvLink],
    method: Method,
    cols: usize,
) -> Result<(), Error> {
    let n = channels * positions;
    let mut shapes: Vec<&Vec<usize>> = kernels.iter().map(|k| &k.kernel).collect();
    shapes.sort();
    shapes.dedup();
    let tables: u128 = shapes
        .iter()
        .map(|k| k.iter().product::<usize>() as u128 * positions as u128 * 4)
        .sum();
    let needed = (2 * n as u128 * cols as u128 + 4 * n as u128) * 8 + tables;
    if let Some(available) = available_memory()
        && needed > available as u128
    {
        return Err(usage(format!(
            "--grid {size}: measuring {channels} channels on {positions} positions ({} method, {cols} tangent vectors) needs about {:.1} GB, more than the {:.1} GB available; give a smaller --grid{}",
            method.name(),
            needed as f64 / 1e9,
            available as f64 / 1e9,
            if method == Method::Probes {
                " or fewer --probes"
            } else {
                ""
            }
        )));
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dense matrix of one circular convolution, built entry by entry from the
    /// definition (independent of the gather tables and of the Fourier path).
    fn dense(w: &[f64], channels: usize, groups: usize, k: usize, size: usize) -> Vec<Vec<f64>> {
        let pos = size * size;
        let n = channels * pos;
        let per = channels / groups;
        let mut m = vec![vec![0.0; n]; n];
        for o in 0..channels {
            for cl in 0..per {
                let c = (o / per) * per + cl;
                for a in 0..k {
                    for b in 0..k {
                        let v = w[((o * per + cl) * k + a) * k + b];
                        for r in 0..size {
                            for s in 0..size {
                                let rr = (r + a + size - (k - 1) / 2) % size;
                                let ss = (s + b + size - (k - 1) / 2) % size;
                                m[o * pos + r * size + s][c * pos + rr * size + ss] += v;
                            }
                        }
                    }
                }
            }
        }
        m
    }

    #[test]
    fn gather_tables_and_fourier_agree_with_dense_convolutions() {
        let (channels, groups, k, size) = (4, 2, 3, 5);
        let per = channels / groups;
        let mut stream = Stream::derive(7, "test");
        let mut layers = Vec::new();
        for _ in 0..3 {
            let w: Vec<f64> = (0..channels * per * k * k)
                .map(|_| gaussian(&mut stream))
                .collect();
            let offsets = tap_offsets(&[k, k]);
            layers.push(Conv {
                weights: w,
                bias: vec![0.0; channels],
                per_group_in: per,
                per_group_out: per,
                taps: k * k,
                gather: Arc::new(gather_table(&offsets, size, 2)),
                offsets,
            });
        }
        let n = channels * size * size;
        // The chain's dense matrix, by products of the entry-by-entry matrices.
        let mut j: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|c| f64::from(u8::from(i == c))).collect())
            .collect();
        for l in &layers {
            let m = dense(&l.weights, channels, groups, k, size);
            j = (0..n)
                .map(|i| {
                    (0..n)
                        .map(|c| (0..n).map(|t| m[i][t] * j[t][c]).sum())
                        .collect()
                })
                .collect();
        }
        // The gather path on the identity's columns.
        let mut t: Vec<f64> = (0..n * n)
            .map(|i| f64::from(u8::from(i / n == i % n)))
            .collect();
        let mut out = vec![0.0; n * n];
        for l in &layers {
            l.apply(&t, n, size * size, &mut out);
            std::mem::swap(&mut t, &mut out);
        }
        for i in 0..n {
            for c in 0..n {
                assert!((t[i * n + c] - j[i][c]).abs() < 1e-12, "({i}, {c})");
            }
        }
        // Fourier: the union over frequencies is the dense matrix's spectrum.
        let flat: Vec<f64> = j.iter().flatten().copied().collect();
        let mut dense_s =
            measure::singular_values(measure::view(&flat, n, n), Par::Seq).expect("svd");
        let mut fourier_s: Vec<f64> = frequencies(size, 2)
            .iter()
            .flat_map(|(f, own)| {
                fourier_singular(&layers, channels, size, f, *own).expect("finite")
            })
            .collect();
        assert_eq!(fourier_s.len(), n);
        dense_s.sort_by(f64::total_cmp);
        fourier_s.sort_by(f64::total_cmp);
        for (a, b) in dense_s.iter().zip(&fourier_s) {
            assert!((a - b).abs() < 1e-10 * dense_s[n - 1], "{a} vs {b}");
        }
    }

    /// The Fourier path against the dense Jacobian of the gather path (checked against the
    /// definition in 2-D above), for 1-D and 3-D kernels, odd and even.
    #[test]
    fn one_and_three_dimensional_chains_agree_per_frequency() {
        for (kernel, size, channels, groups) in [
            (vec![3], 7, 3, 1),
            (vec![4], 6, 4, 2),
            (vec![3, 2, 3], 3, 2, 1),
        ] {
            let dims = kernel.len();
            let per = channels / groups;
            let taps: usize = kernel.iter().product();
            let mut stream = Stream::derive(9, "test-dims");
            let layers: Vec<Conv> = (0..3)
                .map(|_| {
                    let offsets = tap_offsets(&kernel);
                    Conv {
                        weights: (0..channels * per * taps)
                            .map(|_| gaussian(&mut stream))
                            .collect(),
                        bias: vec![0.0; channels],
                        per_group_in: per,
                        per_group_out: per,
                        taps,
                        gather: Arc::new(gather_table(&offsets, size, dims)),
                        offsets,
                    }
                })
                .collect();
            let positions = size.pow(dims as u32);
            let n = channels * positions;
            let mut t: Vec<f64> = (0..n * n)
                .map(|i| f64::from(u8::from(i / n == i % n)))
                .collect();
            let mut out = vec![0.0; n * n];
            for l in &layers {
                l.apply(&t, n, positions, &mut out);
                std::mem::swap(&mut t, &mut out);
            }
            let mut dense_s =
                measure::singular_values(measure::view(&t, n, n), Par::Seq).expect("svd");
            let mut fourier_s: Vec<f64> = frequencies(size, dims)
                .iter()
                .flat_map(|(f, own)| {
                    fourier_singular(&layers, channels, size, f, *own).expect("finite")
                })
                .collect();
            assert_eq!(fourier_s.len(), n, "{kernel:?}");
            dense_s.sort_by(f64::total_cmp);
            fourier_s.sort_by(f64::total_cmp);
            for (a, b) in dense_s.iter().zip(&fourier_s) {
                assert!(
                    (a - b).abs() < 1e-10 * dense_s[n - 1],
                    "{kernel:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn the_variance_of_squares_keeps_its_scale() {
        assert_eq!(sq_var(&[1.0, 1.0]), 0.0);
        assert!((sq_var(&[1.0, 3.0]) - 16.0).abs() < 1e-12);
        let v = sq_var(&[1e-60, 3e-60]);
        assert!((v - 16e-240).abs() < 1e-12 * 16e-240, "{v}");
    }

    #[test]
    fn even_grids_pair_frequencies_with_their_negatives() {
        let f = frequencies(4, 2);
        // 16 frequencies: 4 their own negative ({0, 2}^2), 6 pairs.
        assert_eq!(f.len(), 10);
        assert_eq!(f.iter().filter(|(_, own)| *own).count(), 4);
        assert_eq!(frequencies(5, 1).len(), 3);
    }

    #[test]
    fn probe_estimates_are_unbiased_for_an_isometry() {
        // J = I: every probe's ||v||^2 / n is near 1 and the variance of squares is 0.
        let (n, k) = (400, 256);
        let mut stream = Stream::derive(1, "probes");
        let y: Vec<f64> = (0..n * k).map(|_| gaussian(&mut stream)).collect();
        let (mean, se, spread, spread_se) = estimate(&y, n, k);
        assert!((mean - 1.0).abs() < 4.0 * se, "{mean} +- {se}");
        assert!(se > 0.0 && se < 0.01, "{se}");
        assert!(spread_se > 0.0 && spread_se < 0.02, "{spread_se}");
        assert!(spread.abs() < 4.0 * spread_se, "{spread} +- {spread_se}");
        // A chain that has all but vanished is estimated at its own scale, not as 0.
        let tiny: Vec<f64> = y.iter().map(|v| v * 1e-60).collect();
        let (m, m_se, v, v_se) = estimate(&tiny, n, k);
        for (a, b) in [
            (m, mean * 1e-120),
            (m_se, se * 1e-120),
            (v, spread * 1e-240),
            (v_se, spread_se * 1e-240),
        ] {
            assert!((a - b).abs() <= 1e-9 * b.abs(), "{a} vs {b}");
        }
    }
}

//! `inspect`: looks inside any checkpoint, eoi's or not: a safetensors file, a sharded
//! checkpoint, an npy directory or archive. Every tensor gets its density and nonzeros;
//! every tensor of rank 2 or more is read as the matrix (out, in * K) (K the kernel taps) the
//! layer applies, and gets the spread of nonzeros per row and column, and, for float
//! tensors, its orthogonality error and extreme singular values (from the eigenvalues of its
//! smaller Gram matrix, or an exact SVD with `--svd`). A flax-layout
//! checkpoint ((in, out), (k..., in, out); see [`layout_of`]) is read in PyTorch order first.
//! Masks are paired with their weights by name (`X` and `X_mask`, or PyTorch pruning's
//! `X_orig`); a tensor without a mask is simply dense. Every matrix is also checked for the
//! common N:M patterns (2:4 and its kin) along its inputs and its outputs.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::error::Error;
use crate::layer::Layout;
use crate::layer::{Dtype, Format};
use crate::measure::{self, Elements, GramStats, Matrix, Scan};
use crate::progress::Progress;
use crate::read::{Checkpoint, ReadError, Tensor, TensorInfo};
use crate::records::{Recorded, layout_of};
use crate::schemes::nm::{self, Pattern as NmPattern};
use crate::spec::Pattern;
use crate::units::some_names;
use faer::Par;

/// Minimum, mean and maximum of a count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
}

impl Spread {
    fn of(counts: &[u64]) -> Option<Spread> {
        let min = *counts.iter().min()?;
        let max = *counts.iter().max()?;
        let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
        Some(Spread { min, mean, max })
    }
}

/// The linear algebra of a float matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum {
    /// The gain the matrix would have if it were a scaled orthogonal matrix: the square root
    /// of the mean diagonal of its smaller Gram matrix G.
    pub gain: f64,
    /// `max |G - gain^2 I| / gain^2`: 0 for a multiple of an orthogonal matrix, whatever its
    /// gain; `None` for a zero matrix.
    pub orthogonality_error: Option<f64>,
    pub singular_min: f64,
    pub singular_max: f64,
}

/// What inspection found in one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSummary {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub numel: usize,
    /// Nonzero values.
    pub nnz: u64,
    /// `nnz / numel`; `None` for an empty tensor.
    pub density: Option<f64>,
    /// The mask paired with this tensor, if any.
    pub mask: Option<String>,
    /// The weight this tensor is the mask of, if it is one.
    pub mask_of: Option<String>,
    /// The weight this tensor is the bias of: a rank-1 `<module>.bias` beside
    /// `<module>.weight` (or torch-prune's `<module>.weight_orig`).
    pub bias_of: Option<String>,
    /// For a bias: the root mean square of its values (its std, for a bias drawn around 0).
    pub rms: Option<f64>,
    /// The (out, in * K) matrix the statistics below are of, for rank 2 and above.
    pub matrix: Option<(usize, usize)>,
    /// Convolution groups, when eoi's records give the tensor more than one: the
    /// orthogonality error and singular values are then of the block-diagonal operator, each
    /// group's (out/G, in/G * K) block on its own.
    pub groups: Option<usize>,
    pub row_nnz: Option<Spread>,
    pub col_nnz: Option<Spread>,
    /// For float matrices with finite values.
    pub spectrum: Option<Spectrum>,
    /// Why a float matrix has no spectrum (non-finite values, no convergence).
    pub note: Option<String>,
    /// For an approx-isometry weight of an eoi artifact: the isometry error its record states
    /// (`||G - gain^2 I||_F / ||gain^2 I||_F` after the descent).
    pub recorded_isometry_error: Option<f64>,
    /// For rank 2 and above: the common N:M patterns its nonzeros hold along the inputs (at
    /// most N in every M consecutive inputs of every row, at every tap), and those they hold
    /// along the outputs too (transposably); see [`nm::patterns_held`].
    pub nm: Option<(Vec<NmPattern>, Vec<NmPattern>)>,
}

/// What inspection found in an artifact.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub path: String,
    pub format: Format,
    /// The number of shards, for a sharded checkpoint.
    pub shards: Option<usize>,
    /// The layout the matrices were read in ([`layout_of`]).
    pub layout: Layout,
    pub tensors: Vec<TensorSummary>,
}

/// The mask suffix a checkpoint records (eoi's metadata or manifest), else `_mask`.
pub(crate) fn mask_suffix(recorded: Option<&Recorded>) -> String {
    recorded.map_or("_mask", Recorded::mask_suffix).to_string()
}

/// The weight that `mask` is the mask of: same shape, named `W` or `W_orig` for `W<suffix>`.
pub(crate) fn weight_of<'a>(
    checkpoint: &'a Checkpoint,
    mask: &TensorInfo,
    suffix: &str,
) -> Option<Tensor<'a>> {
    let base = mask.name.strip_suffix(suffix)?;
    [base.to_string(), format!("{base}_orig")]
        .iter()
        .filter_map(|name| checkpoint.get(name))
        .find(|w| w.shape == mask.shape && w.name != mask.name)
}

/// What `inspect` looks at and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Globs (`*` any run, `?` one character) over tensor names; empty selects every tensor.
    pub layers: Vec<String>,
    /// The extreme singular values by an exact SVD of each matrix instead of the square roots
    /// of the extreme eigenvalues of its smaller Gram matrix.
    pub svd: bool,
}

/// Work units of one tensor, for progress: its bytes and its Gram product's multiply-adds
/// over 64 (an exact SVD's, with `svd`).
fn work(t: &TensorInfo, svd: bool) -> u64 {
    let matrix = match t.shape.as_slice() {
        [out, ..] if t.shape.len() >= 2 && t.dtype.is_float() && *out > 0 => {
            let cols = t.numel / out;
            if svd {
                measure::work(*out, cols) / 64.0
            } else {
                measure::gram::work(*out, cols, None) / 64.0
            }
        }
        _ => 0.0,
    };
    t.nbytes.max(1) + matrix as u64
}

/// The bytes inspecting a tensor holds at most: its bytes, an f64 copy (twice, once
/// permuted) unless it is a matrix read as stored, and its Gram product's.
fn memory(t: &TensorInfo, svd: bool) -> u64 {
    let numel = t.numel as u64;
    match t.shape.as_slice() {
        [out, inp] if !svd => t.nbytes + 2 * measure::gram::memory(*out, *inp),
        [out, ..] if t.shape.len() >= 2 && *out > 0 => {
            t.nbytes + 16 * numel + 2 * measure::gram::memory(*out, t.numel / out)
        }
        _ => t.nbytes + 8 * numel,
    }
}

/// The tensors `--layers` selects (all without it); an error names a glob that matches none.
fn select<'a>(
    all: Vec<Tensor<'a>>,
    globs: &[String],
    path: &Path,
) -> Result<Vec<Tensor<'a>>, Error> {
    if globs.is_empty() {
        return Ok(all);
    }
    let patterns: Vec<Pattern> = globs
        .iter()
        .map(|g| Pattern {
            glob: g.clone(),
            position: (0, 0),
        })
        .collect();
    for p in &patterns {
        if !all.iter().any(|t| p.matches(&t.name)) {
            return Err(Error::Usage(format!(
                "--layers '{}' matches no tensor of '{}' (tensors: {})",
                p.glob,
                path.display(),
                some_names(all.iter().map(|t| t.name.as_str()))
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|t| patterns.iter().any(|p| p.matches(&t.name)))
        .collect())
}

/// Inspects the artifact at `path`: a safetensors file, a sharded checkpoint (its directory
/// or index file), an npy directory, an .npz archive or one .npy file. Tensors are measured
/// in parallel, a run of them within a memory budget at a time (a large one alone, spread
/// over the threads itself).
pub fn inspect(
    path: &Path,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Inspection, Error> {
    let checkpoint = Checkpoint::open_any(path)?;
    // eoi's records, when present: the mask suffix, the layout, approx-isometry's errors
    // and grouped convolutions' groups.
    let recorded = Recorded::of(&checkpoint);
    let layout = layout_of(&checkpoint, recorded.as_ref());
    let suffix = mask_suffix(recorded.as_ref());
    let pairs: Vec<(String, String)> = checkpoint
        .iter()
        .filter_map(|m| {
            weight_of(&checkpoint, &m, &suffix).map(|w| (w.name.clone(), m.name.clone()))
        })
        .collect();
    // The first pairing of each name, as a search in `pairs` would find it.
    let mut mask_of_weight: HashMap<&str, &str> = HashMap::with_capacity(pairs.len());
    let mut weight_of_mask: HashMap<&str, &str> = HashMap::with_capacity(pairs.len());
    for (w, m) in &pairs {
        mask_of_weight.entry(w).or_insert(m);
        weight_of_mask.entry(m).or_insert(w);
    }
    // Approximate isometry's recorded errors, by weight name.
    let isometry_errors: HashMap<&str, f64> = recorded
        .as_ref()
        .and_then(|r| r.layers.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l.name.as_str(), l.isometry_error?)))
        .collect();
    // Grouped convolutions' groups, by weight name: each is measured block by block.
    let groups: HashMap<&str, usize> = recorded
        .as_ref()
        .and_then(|r| r.layers.as_ref())
        .into_iter()
        .flatten()
        .filter(|l| l.groups > 1)
        .map(|l| (l.name.as_str(), l.groups))
        .collect();
    let all = select(checkpoint.iter().collect(), &options.layers, path)?;
    let svd = options.svd;
    let needs: Vec<u64> = all.iter().map(|t| memory(t.info(), svd)).collect();
    let budget = measure::budget(None, None, "inspect")?;
    progress.start(all.iter().map(|t| work(t.info(), svd)).sum());
    let mut tensors = Vec::with_capacity(all.len());
    for run in measure::groups(&needs, budget) {
        let done = all[run]
            .par_iter()
            .map(|t| {
                let base = t.name.strip_suffix("_orig").unwrap_or(&t.name);
                let g = groups
                    .get(t.name.as_str())
                    .or_else(|| groups.get(base))
                    .copied();
                let mut summary = summarize(t, layout, g, svd)?;
                summary.mask = mask_of_weight.get(t.name.as_str()).map(|m| m.to_string());
                summary.mask_of = weight_of_mask.get(t.name.as_str()).map(|w| w.to_string());
                summary.bias_of = bias_of(&checkpoint, t.info());
                summary.recorded_isometry_error = isometry_errors.get(t.name.as_str()).copied();
                if summary.bias_of.is_some() && t.dtype.is_float() && t.numel > 0 {
                    let values = t.read_f64()?;
                    summary.rms =
                        Some((values.iter().map(|v| v * v).sum::<f64>() / t.numel as f64).sqrt());
                }
                progress.advance(work(t.info(), svd));
                Ok(summary)
            })
            .collect::<Result<Vec<_>, ReadError>>()?;
        tensors.extend(done);
    }
    Ok(Inspection {
        path: path.display().to_string(),
        format: checkpoint.format(),
        shards: checkpoint.is_sharded().then(|| checkpoint.files().len()),
        layout,
        tensors,
    })
}

/// The weight a rank-1 tensor `<module>.bias` belongs to: `<module>.weight`, or torch-prune's
/// `<module>.weight_orig`, when the checkpoint has it.
fn bias_of(checkpoint: &Checkpoint, t: &TensorInfo) -> Option<String> {
    let module = t
        .name
        .strip_suffix(".bias")
        .filter(|_| t.shape.len() == 1)?;
    [format!("{module}.weight"), format!("{module}.weight_orig")]
        .into_iter()
        .find(|name| checkpoint.get(name).is_some())
}

/// Summarises one tensor; one of rank 2 or more is measured as the (out, in * K) matrix the
/// layer applies: a rank-2 one read as stored (a Flax kernel as the transpose it holds), a
/// higher one read as f64 and permuted to PyTorch order first (and so is every matrix for an
/// exact SVD).
fn summarize(
    t: &Tensor<'_>,
    layout: Layout,
    groups: Option<usize>,
    svd: bool,
) -> Result<TensorSummary, ReadError> {
    let mut summary = TensorSummary {
        name: t.name.clone(),
        shape: t.shape.clone(),
        dtype: t.dtype,
        numel: t.numel,
        nnz: 0,
        density: None,
        mask: None,
        mask_of: None,
        bias_of: None,
        rms: None,
        matrix: None,
        groups: None,
        row_nnz: None,
        col_nnz: None,
        spectrum: None,
        note: None,
        recorded_isometry_error: None,
        nm: None,
    };
    if t.shape.len() < 2 || t.numel == 0 {
        let values = t.read_f64()?;
        summary.nnz = values.iter().filter(|&&v| v != 0.0).count() as u64;
        summary.density = (t.numel > 0).then(|| summary.nnz as f64 / t.numel as f64);
        return Ok(summary);
    }
    let torch = layout.torch_shape(&t.shape);
    let rows = torch[0];
    let cols = t.numel / rows;
    let as_stored = t.shape.len() == 2 && !svd;
    let (bytes, values) = if as_stored {
        (t.read_bytes()?, Vec::new())
    } else {
        (Vec::new(), layout.torch_order(t.read_f64()?, &t.shape))
    };
    let matrix = if as_stored {
        Matrix::stored(&bytes, t.dtype, t.shape[0], t.shape[1]).transposed(layout == Layout::Flax)
    } else {
        Matrix::f64(&values, rows, cols)
    };
    summary.nm = Some(patterns_held(&matrix, &torch));
    let scan = measure::scan(&matrix, None);
    summary.nnz = scan.nnz;
    summary.density = Some(scan.nnz as f64 / t.numel as f64);
    summary.matrix = Some((rows, cols));
    let (row_counts, col_counts) = if matrix.transposed {
        (&scan.col_nnz, &scan.row_nnz)
    } else {
        (&scan.row_nnz, &scan.col_nnz)
    };
    (summary.row_nnz, summary.col_nnz) = (Spread::of(row_counts), Spread::of(col_counts));
    if !t.dtype.is_float() {
        return Ok(summary);
    }
    if scan.non_finite {
        summary.note = Some("non-finite values: no orthogonality or singular values".into());
        return Ok(summary);
    }
    // A grouped convolution is block diagonal as an operator: group b's rows see only its
    // own inputs, so each block is measured on its own (a record whose groups do not fit the
    // shape is ignored).
    let groups = groups
        .filter(|&g| t.shape.len() >= 3 && g > 1 && rows % g == 0)
        .unwrap_or(1);
    summary.groups = (groups > 1).then_some(groups);
    let blocks: Vec<(Matrix<'_>, Scan)> = if groups == 1 {
        vec![(matrix, scan)]
    } else {
        (0..groups)
            .map(|b| {
                let block = matrix.rows_block(b * rows / groups, rows / groups);
                let scan = measure::scan(&block, None);
                (block, scan)
            })
            .collect()
    };
    match spectrum(&blocks, svd) {
        Ok(spectrum) => summary.spectrum = Some(spectrum),
        Err(note) => summary.note = Some(note.into()),
    }
    Ok(summary)
}

/// The gain, orthogonality error and extreme singular values of the block-diagonal operator
/// of `blocks` (one for an ordinary matrix), each with its [`Scan`]: the singular values as
/// the square roots of the extreme eigenvalues of each block's smaller Gram matrix
/// ([`measure::spectrum`]), or with `svd` by an exact SVD (then every block is f64 values);
/// why there are none when the solver does not converge.
fn spectrum(blocks: &[(Matrix<'_>, Scan)], svd: bool) -> Result<Spectrum, &'static str> {
    let mut stats = Vec::with_capacity(blocks.len());
    let (mut low, mut high) = (f64::INFINITY, 0.0f64);
    for (block, scan) in blocks {
        let (n, m) = block.gram_dims();
        let par = measure::parallelism(n, m);
        let (s, kept, _) = measure::gram::gram(block, scan, None, par != Par::Seq, !svd);
        stats.push(s);
        let (lo, hi) = match (kept, block.elements) {
            (Some(g), _) => {
                let (lo, hi, _) = measure::spectrum::extreme_eigenvalues(&g)
                    .ok_or("the eigen-solver did not converge")?;
                (lo.sqrt(), hi.sqrt())
            }
            (None, Elements::F64(values)) => {
                let s =
                    measure::singular_values(measure::view(values, block.rows, block.cols), par)
                        .ok_or("the SVD did not converge")?;
                (
                    s.last().copied().unwrap_or(0.0),
                    s.first().copied().unwrap_or(0.0),
                )
            }
            (None, Elements::Stored { .. }) => return Err("no singular values"),
        };
        low = low.min(lo);
        high = high.max(hi);
    }
    let gain_squared =
        stats.iter().map(GramStats::mean_diagonal).sum::<f64>() / stats.len().max(1) as f64;
    let orthogonality_error = (gain_squared > 0.0).then(|| {
        stats
            .iter()
            .map(|g| g.deviation(gain_squared) / gain_squared)
            .fold(0.0, |worst: f64, e| {
                if worst.is_nan() || e.is_nan() {
                    f64::NAN
                } else {
                    worst.max(e)
                }
            })
    });
    Ok(Spectrum {
        gain: gain_squared.sqrt(),
        orthogonality_error,
        singular_min: if low.is_finite() { low } else { 0.0 },
        singular_max: high,
    })
}

/// The common N:M patterns [`nm::patterns_held`] finds in `matrix`, the layer's matrix of a
/// tensor of PyTorch shape `torch` (rows `torch[0]`): read as stored, one row of the stored
/// matrix decoded at a time into a map of its nonzeros (a byte an element).
fn patterns_held(matrix: &Matrix<'_>, torch: &[usize]) -> (Vec<NmPattern>, Vec<NmPattern>) {
    // Elements are read as the groups are checked: most matrices fail every pattern within
    // their first groups.
    if matrix.transposed {
        // Stored (in, out): the layer's element (o, i) is stored at i * out + o.
        let (out, inputs) = (matrix.cols, matrix.rows);
        nm::patterns_held(torch, |k| {
            matrix.nonzero_at((k % inputs) * out + k / inputs)
        })
    } else {
        nm::patterns_held(torch, |k| matrix.nonzero_at(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_summarize_counts() {
        let s = Spread::of(&[2, 4, 9]).unwrap();
        assert_eq!((s.min, s.max), (2, 9));
        assert!((s.mean - 5.0).abs() < 1e-15);
        assert!(Spread::of(&[]).is_none());
    }
}

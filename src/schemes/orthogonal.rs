//! Dense orthogonal matrices, the `orthogonal` baseline (Saxe et al. 2014; PyTorch's
//! `orthogonal_`): the Q factor of the QR decomposition of a Gaussian matrix, with the signs
//! of diag R made positive so that Q is Haar-distributed, times the gain. For convolutions it
//! sits at the centre tap (delta-orthogonal, Xiao et al. 2018). The baseline then keeps a
//! random mask of it.
//!
//! The QR is our own Householder QR in f64, one plain loop nest with a fixed order of every
//! sum and no threads or runtime-dispatched SIMD, so its bits are the same on every thread
//! count and every machine of an architecture (a BLAS or faer could pick other kernels on
//! another CPU).

use super::{
    KernelGram, LayerPlan, LayerStats, Minimum, Prepared, Rules, StoredMask, Values, at_centre,
    mask,
};
use crate::layer::{Layout, centre_tap};
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order, RowBlocks, Weight};

/// The rules of `orthogonal`: a random mask over a dense orthogonal matrix (at the centre
/// tap of a convolution), one block per group.
pub struct Orthogonal;

/// The values: the dense matrix drawn from where the mask left the layer's stream.
struct Masked {
    stream: Stream,
    seed: u64,
}

impl Values for Masked {
    fn weight(&self, layer: &LayerPlan, mask: &Mask) -> Weight {
        masked_orthogonal(layer, mask, &mut self.stream.clone(), self.seed)
    }
}

impl Rules for Orthogonal {
    fn maker(&self) -> &'static str {
        "scheme \"orthogonal\""
    }

    fn minimum(&self, layer: &LayerPlan) -> Minimum {
        mask::minimum(layer)
    }

    fn expected_nnz(&self, layer: &LayerPlan) -> u64 {
        mask::expected_nnz(layer)
    }

    fn stats(&self, layer: &LayerPlan, _seed: u64) -> LayerStats {
        mask::stats(layer)
    }

    /// The mask ([`mask::draw`]), then, in [`Values::weight`], the Gaussian matrix of each
    /// block (see [`masked_orthogonal`]).
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a> {
        let mut stream = Stream::derive(seed, &layer.name);
        let drawn = mask::draw(layer, &mut stream);
        Prepared::new(layer, drawn, mask::stats(layer), Masked { stream, seed })
    }

    /// The byte mask and the f64 weight of the whole tensor, the Gaussian matrix and its Q.
    fn memory(&self, layer: &LayerPlan, _layout: Layout, _threads: usize) -> u64 {
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        layer.shape.numel() * (8 + 1) + 3 * out * inp * 8
    }

    /// Orthogonal only unmasked.
    fn promises_orthogonality(&self, density: f64) -> bool {
        density == 1.0
    }

    fn kernel_gram(&self) -> KernelGram {
        KernelGram::Centre
    }

    fn check_mask(&self, stored: &StoredMask<'_>) -> Vec<String> {
        mask::check_count(stored)
    }
}

/// The `orthogonal` baseline: a dense orthogonal (out, in) matrix times the gain, at the
/// centre tap for convolutions, kept where the mask is 1. A grouped kernel gets one dense
/// orthogonal (out/G, in/G) block per group: with one group from the layer's stream after
/// the mask, with G > 1 block b from [`Stream::derive_block`]`(seed, name, b)`.
pub fn masked_orthogonal(layer: &LayerPlan, mask: &Mask, stream: &mut Stream, seed: u64) -> Weight {
    let (out, inp) = (layer.shape.out(), layer.shape.inp());
    let groups = layer.groups.max(1);
    let rows = out / groups;
    let blocks: Vec<Grid<f64>> = if groups == 1 {
        vec![matrix(out, inp, stream)]
    } else {
        (0..groups)
            .map(|b| {
                let mut own = Stream::derive_block(seed, &layer.name, b as u64);
                matrix(rows, inp, &mut own)
            })
            .collect()
    };
    let taps = layer.shape.taps();
    let tap = centre_tap(layer.shape.kernel());
    let gain = layer.gain.value;
    let mut values = Vec::with_capacity(out * inp);
    let mut row = Vec::with_capacity(inp * taps);
    for i in 0..out {
        row.clear();
        mask.rows_into(i, 1, &mut row);
        let q = &blocks[i / rows];
        for j in 0..inp {
            let kept = row[j * taps + tap] != 0;
            values.push(if kept { gain * q.get(i % rows, j) } else { 0.0 });
        }
    }
    at_centre(layer, Grid::new(out, inp, Order::RowMajor, values))
}

/// Q of the thin QR decomposition `A = Q R` of an `m x n` matrix (`m >= n`) stored
/// column-major in `a`, with column j of Q negated where `R_jj < 0` (so diag R >= 0).
/// Returns Q as `m x n`, column-major: orthonormal columns.
///
/// Householder reflections `H_k = I - 2 v v^T / (v^T v)` with `v = x + sign(x_0) |x| e_0`
/// (sign(0) = +1) zero column k below the diagonal; Q is accumulated backwards,
/// `H_0 (H_1 (... (H_{n-1} [I_n; 0])))`. A column that is already zero is not reflected.
pub fn orthonormal_columns(mut a: Vec<f64>, m: usize, n: usize) -> Vec<f64> {
    assert!(m >= n && a.len() == m * n, "QR needs a tall m x n matrix");
    // For each k: 2 / (v^T v) (0 when no reflection), and the sign of R_kk.
    let mut scale = vec![0.0; n];
    let mut sign = vec![1.0; n];
    for k in 0..n {
        let (left, right) = a.split_at_mut((k + 1) * m);
        let v = &mut left[k * m + k..];
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let s = if v[0] >= 0.0 { 1.0 } else { -1.0 };
        // H x = -s |x| e_0: R_kk = -s |x|.
        sign[k] = -s;
        v[0] += s * norm;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        scale[k] = 2.0 / vv;
        for column in right.chunks_exact_mut(m) {
            reflect(v, &mut column[k..], scale[k]);
        }
    }
    let mut q = vec![0.0; m * n];
    for k in 0..n {
        q[k * m + k] = 1.0;
    }
    for k in (0..n).rev() {
        if scale[k] == 0.0 {
            continue;
        }
        let v = &a[k * m + k..(k + 1) * m];
        // Columns j < k of the partial product are still e_j, untouched by H_k.
        for column in q.chunks_exact_mut(m).skip(k) {
            reflect(v, &mut column[k..], scale[k]);
        }
    }
    for (column, &s) in q.chunks_exact_mut(m).zip(&sign) {
        if s < 0.0 {
            column.iter_mut().for_each(|x| *x = -*x);
        }
    }
    q
}

/// `x <- x - scale (v . x) v`.
fn reflect(v: &[f64], x: &mut [f64], scale: f64) {
    let dot: f64 = v.iter().zip(x.iter()).map(|(a, b)| a * b).sum();
    let f = scale * dot;
    for (xi, vi) in x.iter_mut().zip(v) {
        *xi -= f * vi;
    }
}

/// A Haar-random `rows x cols` matrix with orthonormal rows (wide or square) or columns
/// (tall), not yet scaled.
///
/// Draws: the `max x min` Gaussian matrix, column-major, by [`Stream::fill_normal`]. Its Q
/// is the output matrix when it is tall, and its transpose when it is wide.
pub fn matrix(rows: usize, cols: usize, stream: &mut Stream) -> Grid<f64> {
    let (m, n) = (rows.max(cols), rows.min(cols));
    let mut a = vec![0.0; m * n];
    stream.fill_normal(&mut a);
    let q = orthonormal_columns(a, m, n);
    if rows >= cols {
        Grid::new(rows, cols, Order::ColumnMajor, q)
    } else {
        // Q^T, m columns of length n stored one after another: row-major rows x cols.
        Grid::new(rows, cols, Order::RowMajor, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram_error(g: &Grid<f64>) -> f64 {
        let (r, c) = (g.rows(), g.cols());
        let (n, m) = (r.min(c), r.max(c));
        let at = |i: usize, k: usize| if r <= c { g.get(i, k) } else { g.get(k, i) };
        let mut worst: f64 = 0.0;
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..m).map(|k| at(i, k) * at(j, k)).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((dot - want).abs());
            }
        }
        worst
    }

    #[test]
    fn q_is_orthonormal_and_r_has_a_positive_diagonal() {
        let (m, n) = (9, 5);
        let mut s = Stream::derive(4, "qr");
        let mut a = vec![0.0; m * n];
        s.fill_normal(&mut a);
        let q = orthonormal_columns(a.clone(), m, n);
        // R = Q^T A is upper triangular with a positive diagonal, and Q R = A.
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..m).map(|k| q[i * m + k] * a[j * m + k]).sum();
                if i > j {
                    assert!(r.abs() < 1e-13, "R[{i}][{j}] = {r}");
                }
                if i == j {
                    assert!(r > 0.0, "R[{i}][{i}] = {r}");
                }
            }
        }
        for (rows, cols) in [(9, 5), (5, 9), (16, 16), (1, 7), (7, 1)] {
            let g = matrix(rows, cols, &mut s);
            assert!(gram_error(&g) < 1e-14, "{rows}x{cols}");
        }
    }

    #[test]
    fn a_zero_column_is_left_alone() {
        // Rank-deficient input: Q stays orthonormal on the reflected columns and the
        // untouched one is e_k.
        let a = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let q = orthonormal_columns(a, 3, 2);
        assert_eq!(q, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }
}

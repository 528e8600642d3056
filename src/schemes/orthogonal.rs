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

use crate::stream::Stream;
use crate::tensor::{Grid, Order};

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

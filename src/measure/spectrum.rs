//! The extreme singular values of a matrix, from its smaller Gram matrix G: `sigma =
//! sqrt(lambda(G))`. `inspect` needs only the smallest and the largest, so they are found by
//! the Lanczos method with full reorthogonalisation, applying G as `A (A^T x)` to the
//! factor's nonzeros (or as the dense G), until both extreme Ritz values have converged to
//! [`TOLERANCE`]; a matrix too small for that to pay, or whose extremes have not converged in
//! [`MAX_STEPS`] steps, gets every eigenvalue of the dense G from faer's symmetric
//! eigen-solver (values only). The exact SVD stays available ([`super::singular_values`]).
//!
//! Accuracy: an eigenvalue of G computed in f64 is off by about `eps * ||G||`, so sigma by
//! `eps * sigma_max^2 / (2 sigma)`: to the last digits for a well-conditioned matrix (every
//! EOI layer), about `sqrt(eps) * sigma_max` (1.5e-8) for a singular one. The measured
//! errors against numpy's SVD are in docs/guide.md ("Performance").

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::{Mat, Par};

use super::gram::GramMatrix;
use crate::stream::Stream;

/// Lanczos steps at most, before the dense eigen-solver takes over.
pub const MAX_STEPS: usize = 300;

/// Below this dimension the dense eigen-solver is used directly (it costs less than the
/// steps the Lanczos method would take).
pub const DENSE_BELOW: usize = 200;

/// Convergence of an extreme Ritz value: its error estimate (the residual bound, or its
/// square over the gap to the next Ritz value when that is smaller) relative to the largest
/// eigenvalue.
pub const TOLERANCE: f64 = 1e-14;

/// Steps between convergence tests.
const CHECK_EVERY: usize = 4;

/// How the extreme eigenvalues were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// The Lanczos method, in this many steps.
    Lanczos(usize),
    /// Every eigenvalue of the dense matrix.
    Dense,
}

/// The smallest and the largest eigenvalue of the Gram matrix `g` (clamped at 0 below: G is
/// positive semidefinite), and how they were found; `None` when the dense eigen-solver does
/// not converge (non-finite entries).
pub fn extreme_eigenvalues(g: &GramMatrix) -> Option<(f64, f64, Solver)> {
    let n = g.n();
    if n == 0 {
        return Some((0.0, 0.0, Solver::Dense));
    }
    if n >= DENSE_BELOW {
        let found = match g {
            GramMatrix::Sparse(s) => {
                let mut z = vec![0.0; s.m];
                lanczos(n, |x, y| s.gram_times(x, y, &mut z))
            }
            GramMatrix::Dense(m) => lanczos(n, |x, y| dense_times(m, x, y)),
        };
        if let Some((low, high, steps)) = found {
            return Some((low.max(0.0), high.max(0.0), Solver::Lanczos(steps)));
        }
    }
    let values = eigenvalues(&g.matrix())?;
    let low = values.first().copied().unwrap_or(0.0);
    let high = values.last().copied().unwrap_or(0.0);
    Some((low.max(0.0), high.max(0.0), Solver::Dense))
}

/// `y = G x` for a dense symmetric G (both triangles stored), column by column.
fn dense_times(g: &Mat<f64>, x: &[f64], y: &mut [f64]) {
    y.iter_mut().for_each(|v| *v = 0.0);
    for (j, &xj) in x.iter().enumerate() {
        let col = g.col(j);
        for (yi, &gij) in y.iter_mut().zip(col.iter()) {
            *yi += gij * xj;
        }
    }
}

/// Every eigenvalue of the symmetric `g`, ascending, by faer (values only); `None` if the
/// iteration does not converge.
pub fn eigenvalues(g: &Mat<f64>) -> Option<Vec<f64>> {
    let n = g.nrows();
    let par = if n >= 512 { Par::rayon(0) } else { Par::Seq };
    let mut s = Diag::<f64>::zeros(n);
    let scratch =
        evd::self_adjoint_evd_scratch::<f64>(n, ComputeEigenvectors::No, par, Default::default());
    let mut buffer = MemBuffer::new(scratch);
    let solved = evd::self_adjoint_evd(
        g.as_ref(),
        s.as_mut(),
        None,
        par,
        MemStack::new(&mut buffer),
        Default::default(),
    )
    .ok();
    super::clean_vector_state(par);
    solved?;
    let mut values: Vec<f64> = s.column_vector().iter().copied().collect();
    if values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One step of the Lanczos method with full reorthogonalisation: `w = G q` for the last
/// basis vector q, its Rayleigh quotient pushed onto `alpha`, `w` made orthogonal to the
/// basis (twice is enough, Kahan and Parlett: orthogonal to working precision); the norm
/// `b` of what is left, and whether it is a breakdown (an invariant subspace to rounding:
/// the Ritz values are eigenvalues, and from a random start it holds every distinct one).
/// `None` when `G q` is not finite.
fn lanczos_step(
    basis: &[Vec<f64>],
    alpha: &mut Vec<f64>,
    beta: &[f64],
    w: &mut [f64],
    apply: &mut impl FnMut(&[f64], &mut [f64]),
) -> Option<(f64, bool)> {
    let n = w.len();
    let q = &basis[basis.len() - 1];
    apply(q, w);
    if w.iter().any(|v| !v.is_finite()) {
        return None;
    }
    alpha.push(dot(q, w));
    for _ in 0..2 {
        for q in basis {
            let c = dot(q, w);
            w.iter_mut().zip(q).for_each(|(v, qi)| *v -= c * qi);
        }
    }
    let b = dot(w, w).sqrt();
    let scale = alpha
        .iter()
        .chain(beta)
        .fold(0.0f64, |s, v| s.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    Some((b, b <= f64::EPSILON * (n as f64).sqrt() * scale))
}

/// The Lanczos method with full reorthogonalisation on the n x n symmetric operator `apply`
/// (`y = G x`), from a fixed random start: the smallest and the largest eigenvalue and the
/// steps taken, or `None` if they have not converged in [`MAX_STEPS`] steps.
fn lanczos(n: usize, mut apply: impl FnMut(&[f64], &mut [f64])) -> Option<(f64, f64, usize)> {
    let steps = MAX_STEPS.min(n);
    let mut start = vec![0.0; n];
    Stream::derive(0, "eoi-inspect-lanczos").fill_normal(&mut start);
    let norm = dot(&start, &start).sqrt();
    start.iter_mut().for_each(|v| *v /= norm);
    let mut basis: Vec<Vec<f64>> = vec![start];
    let mut alpha: Vec<f64> = Vec::with_capacity(steps);
    let mut beta: Vec<f64> = Vec::with_capacity(steps);
    let mut w = vec![0.0; n];
    for k in 1..=steps {
        let (b, breakdown) = lanczos_step(&basis, &mut alpha, &beta, &mut w, &mut apply)?;
        if breakdown || k == 1 || k % CHECK_EVERY == 0 || k == steps {
            let (low, high) = ritz_extremes(&alpha, &beta, if breakdown { 0.0 } else { b });
            let limit = TOLERANCE * high.value.abs().max(low.value.abs());
            if breakdown || (low.error <= limit && high.error <= limit) {
                return Some((low.value, high.value, k));
            }
        }
        if k == steps {
            break;
        }
        beta.push(b);
        basis.push(w.iter().map(|v| v / b).collect());
    }
    None
}

/// The largest eigenvalue of the n x n symmetric positive semidefinite operator `apply`
/// (`y = G x`), by the Lanczos method with full reorthogonalisation from the unit vector
/// `start`, for `isometry`'s estimates: the largest Ritz value `theta` (never above the
/// largest eigenvalue), the steps taken and the relative residual `r / theta`, where `r =
/// ||G x - theta x||` for the Ritz vector x, so that an eigenvalue of G lies within `r` of
/// `theta`. Stops when the relative residual is at most `tolerance`, on an invariant
/// subspace, after `max_steps` steps, or when `G x` is not finite (then `None`).
pub fn largest_eigenvalue(
    start: Vec<f64>,
    max_steps: usize,
    tolerance: f64,
    mut apply: impl FnMut(&[f64], &mut [f64]),
) -> Option<(f64, usize, f64)> {
    let n = start.len();
    let steps = max_steps.min(n).max(1);
    let mut basis: Vec<Vec<f64>> = vec![start];
    let mut alpha: Vec<f64> = Vec::with_capacity(steps);
    let mut beta: Vec<f64> = Vec::with_capacity(steps);
    let mut w = vec![0.0; n];
    for k in 1..=steps {
        let (b, breakdown) = lanczos_step(&basis, &mut alpha, &beta, &mut w, &mut apply)?;
        if breakdown || k % CHECK_EVERY == 0 || k == steps {
            let theta = kth_eigenvalue(&alpha, &beta, k - 1);
            let s = eigenvector(&alpha, &beta, theta);
            let next = if breakdown { 0.0 } else { b };
            let residual = tridiagonal_residual(&alpha, &beta, theta, &s) + next * s[k - 1].abs();
            let relative = if theta > 0.0 { residual / theta } else { 0.0 };
            if breakdown || relative <= tolerance || k == steps {
                return Some((theta.max(0.0), k, relative));
            }
        }
        beta.push(b);
        basis.push(w.iter().map(|v| v / b).collect());
    }
    None
}

/// An extreme Ritz value and the estimate of its distance to an eigenvalue.
#[derive(Clone, Copy, Debug)]
struct Ritz {
    value: f64,
    error: f64,
}

/// The smallest and the largest eigenvalue of the tridiagonal T (diagonal `alpha`,
/// off-diagonal `beta`, one shorter), with the error estimates of the Ritz values they are
/// when the next off-diagonal entry is `next`: the residual bound `r = ||(T - theta) s|| +
/// next |s_last|`, or `r^2 / gap` when smaller, `gap` the distance to the next Ritz value.
fn ritz_extremes(alpha: &[f64], beta: &[f64], next: f64) -> (Ritz, Ritz) {
    let k = alpha.len();
    let ritz = |i: usize, neighbour: Option<usize>| {
        let value = kth_eigenvalue(alpha, beta, i);
        let s = eigenvector(alpha, beta, value);
        let residual = tridiagonal_residual(alpha, beta, value, &s) + next * s[k - 1].abs();
        let error = match neighbour {
            Some(j) => {
                let gap = (kth_eigenvalue(alpha, beta, j) - value).abs();
                if gap > 0.0 {
                    residual.min(residual * residual / gap)
                } else {
                    residual
                }
            }
            None => residual,
        };
        Ritz { value, error }
    };
    let neighbour = |j: usize| (k > 1).then_some(j);
    (
        ritz(0, neighbour(1)),
        ritz(k - 1, neighbour(k.saturating_sub(2))),
    )
}

/// The number of eigenvalues of the tridiagonal T below `x` (Sturm count by the LDL^T
/// pivots).
fn count_below(alpha: &[f64], beta: &[f64], x: f64) -> usize {
    let mut count = 0;
    let mut d = 1.0;
    for (i, &a) in alpha.iter().enumerate() {
        let b2 = if i == 0 {
            0.0
        } else {
            beta[i - 1] * beta[i - 1]
        };
        d = a - x - if i == 0 { 0.0 } else { b2 / d };
        if d == 0.0 {
            d = -f64::EPSILON * (a.abs() + x.abs()).max(f64::MIN_POSITIVE);
        }
        if d < 0.0 {
            count += 1;
        }
    }
    count
}

/// Eigenvalue `i` (ascending, from 0) of the tridiagonal T, by bisection to the last bit.
fn kth_eigenvalue(alpha: &[f64], beta: &[f64], i: usize) -> f64 {
    let k = alpha.len();
    let radius = |j: usize| {
        (if j > 0 { beta[j - 1].abs() } else { 0.0 }) + if j + 1 < k { beta[j].abs() } else { 0.0 }
    };
    let mut lo = (0..k)
        .map(|j| alpha[j] - radius(j))
        .fold(f64::INFINITY, f64::min);
    let mut hi = (0..k)
        .map(|j| alpha[j] + radius(j))
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = f64::EPSILON * lo.abs().max(hi.abs()).max(f64::MIN_POSITIVE);
    (lo, hi) = (lo - pad, hi + pad);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if count_below(alpha, beta, mid) > i {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

/// A unit eigenvector of T for the eigenvalue `theta`, by two steps of inverse iteration
/// (tridiagonal elimination with partial pivoting).
fn eigenvector(alpha: &[f64], beta: &[f64], theta: f64) -> Vec<f64> {
    let k = alpha.len();
    let mut x = vec![1.0; k];
    for _ in 0..3 {
        x = solve_shifted(alpha, beta, theta, &x);
        let norm = dot(&x, &x).sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            let mut e = vec![0.0; k];
            e[k - 1] = 1.0;
            return e;
        }
        x.iter_mut().for_each(|v| *v /= norm);
    }
    x
}

/// `||(T - theta I) s||`.
fn tridiagonal_residual(alpha: &[f64], beta: &[f64], theta: f64, s: &[f64]) -> f64 {
    let k = alpha.len();
    let mut sum = 0.0;
    for i in 0..k {
        let mut r = (alpha[i] - theta) * s[i];
        if i > 0 {
            r += beta[i - 1] * s[i - 1];
        }
        if i + 1 < k {
            r += beta[i] * s[i + 1];
        }
        sum += r * r;
    }
    sum.sqrt()
}

/// Solves `(T - theta I) x = b` by Gaussian elimination with partial pivoting (a zero pivot
/// replaced by a tiny one: the shifted matrix is singular on purpose).
fn solve_shifted(alpha: &[f64], beta: &[f64], theta: f64, b: &[f64]) -> Vec<f64> {
    let k = alpha.len();
    let scale = alpha
        .iter()
        .chain(beta)
        .fold(0.0f64, |s, v| s.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let tiny = f64::EPSILON * scale;
    // Row i of the upper factor: (d[i], u1[i], u2[i]) at columns i, i+1, i+2.
    let mut d: Vec<f64> = alpha.iter().map(|a| a - theta).collect();
    let mut u1: Vec<f64> = (0..k)
        .map(|i| if i + 1 < k { beta[i] } else { 0.0 })
        .collect();
    let mut u2 = vec![0.0; k];
    let mut rhs = b.to_vec();
    for i in 0..k.saturating_sub(1) {
        let sub = beta[i];
        if sub.abs() > d[i].abs() {
            // Swap rows i and i+1.
            let (di, u1i, u2i, ri) = (d[i], u1[i], u2[i], rhs[i]);
            d[i] = sub;
            u1[i] = d[i + 1];
            u2[i] = u1[i + 1];
            rhs[i] = rhs[i + 1];
            let factor = di / sub;
            d[i + 1] = u1i - factor * u1[i];
            u1[i + 1] = u2i - factor * u2[i];
            rhs[i + 1] = ri - factor * rhs[i];
        } else {
            if d[i] == 0.0 {
                d[i] = tiny;
            }
            let factor = sub / d[i];
            d[i + 1] -= factor * u1[i];
            u1[i + 1] -= factor * u2[i];
            rhs[i + 1] -= factor * rhs[i];
        }
    }
    if d[k - 1] == 0.0 {
        d[k - 1] = tiny;
    }
    let mut x = vec![0.0; k];
    for i in (0..k).rev() {
        let mut v = rhs[i];
        if i + 1 < k {
            v -= u1[i] * x[i + 1];
        }
        if i + 2 < k {
            v -= u2[i] * x[i + 2];
        }
        x[i] = v / d[i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::gram::{Matrix, Product, gram, scan};

    #[test]
    fn bisection_finds_the_eigenvalues_of_a_tridiagonal_matrix() {
        // T = tridiag(-1, 2, -1) of order 5: eigenvalues 2 - 2 cos(j pi / 6).
        let alpha = [2.0; 5];
        let beta = [-1.0; 4];
        for i in 0..5 {
            let want = 2.0 - 2.0 * ((i + 1) as f64 * std::f64::consts::PI / 6.0).cos();
            assert!(
                (kth_eigenvalue(&alpha, &beta, i) - want).abs() < 1e-14,
                "{i}"
            );
            let s = eigenvector(&alpha, &beta, want);
            assert!(tridiagonal_residual(&alpha, &beta, want, &s) < 1e-12, "{i}");
        }
    }

    /// A rows x cols matrix of N(0, 1) entries, a fraction `density` of them kept.
    fn random(rows: usize, cols: usize, density: f64, seed: u64) -> Vec<f64> {
        let mut s = Stream::derive(seed, "spectrum-test");
        let mut v = vec![0.0; rows * cols];
        s.fill_normal(&mut v);
        for x in v.iter_mut() {
            if s.unit() >= density {
                *x = 0.0;
            }
        }
        v
    }

    #[test]
    fn the_extremes_match_the_dense_eigen_solver_and_the_svd() {
        for (rows, cols, density) in [(300, 700, 0.05), (700, 300, 1.0), (250, 250, 0.3)] {
            let values = random(rows, cols, density, rows as u64);
            let matrix = Matrix::f64(&values, rows, cols);
            let s = scan(&matrix, None);
            let svd = crate::measure::singular_values(
                crate::measure::view(&values, rows, cols),
                Par::Seq,
            )
            .unwrap();
            for product in [Product::Sparse, Product::Dense] {
                let (_, kept, _) = gram(&matrix, &s, Some(product), false, true);
                let (low, high, _) = extreme_eigenvalues(&kept.unwrap()).unwrap();
                let (smax, smin) = (svd[0], *svd.last().unwrap());
                assert!((high.sqrt() - smax).abs() < 1e-10 * smax, "{product:?}");
                assert!((low.sqrt() - smin).abs() < 1e-8 * smax, "{product:?}");
            }
        }
    }

    #[test]
    fn an_orthogonal_matrix_converges_at_once() {
        // A permutation times 2: G = 4 I exactly, an invariant subspace at the first step.
        let n = 256;
        let mut values = vec![0.0; n * n];
        for i in 0..n {
            values[i * n + (i * 7) % n] = 2.0;
        }
        let matrix = Matrix::f64(&values, n, n);
        let s = scan(&matrix, None);
        let (_, kept, _) = gram(&matrix, &s, None, false, true);
        let (low, high, solver) = extreme_eigenvalues(&kept.unwrap()).unwrap();
        assert_eq!((low, high), (4.0, 4.0));
        assert_eq!(solver, Solver::Lanczos(1));
    }
}

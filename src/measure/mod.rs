//! Measures of a weight matrix, shared by `verify` and `inspect`: the smaller Gram matrix
//! (W W^T or W^T W, whichever is smaller) and its distance from a multiple of the identity,
//! and the singular values by an exact SVD. The linear algebra is faer's, in f64.

pub mod gram;
pub mod spectrum;

pub use gram::{Elements, GramMatrix, GramStats, Matrix, Product, Scan, scan};

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::{Accum, Mat, MatRef, Par};

/// Consecutive runs of items (layers, tensors) whose memory `needs` fit `budget` together:
/// the items of a run are measured in parallel, the runs one after another, so memory follows
/// the largest item, not the model. An item over the budget is a run of its own.
pub fn groups(needs: &[u64], budget: u64) -> Vec<std::ops::Range<usize>> {
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut used = 0;
    for (k, &need) in needs.iter().enumerate() {
        match groups.last_mut() {
            Some(group) if used + need <= budget => group.end = k + 1,
            _ => {
                groups.push(k..k + 1);
                used = 0;
            }
        }
        used += need;
    }
    groups
}

/// The budget the items in flight share, after refusing work whose largest item needs more
/// than `--max-memory` (or the default share of the memory available): `command` is what
/// the item is needed for ("verify"), `item` names it (`layer "fc" (4096x4096)`).
pub fn budget(
    max_memory: Option<u64>,
    largest: Option<(String, u64)>,
    command: &str,
) -> Result<u64, crate::error::Error> {
    use crate::units::human_size;
    let Some((limit, source)) = crate::generate::memory_limit(max_memory) else {
        return Ok(crate::generate::BUDGET);
    };
    if let Some((item, need)) = largest
        && need > limit
    {
        return Err(crate::error::Error::Usage(format!(
            "{item} needs {} of memory to {command}, more than the {} allowed by {source}\n  \
             help: pass --max-memory {}MiB or more if the machine has that much free, or run on a machine with more memory",
            human_size(need),
            human_size(limit),
            need.div_ceil(1 << 20),
        )));
    }
    Ok(crate::generate::BUDGET.min(limit))
}

/// Clears the upper halves of the vector registers after faer's kernels, on this thread and
/// (when `par` let faer use them) on every thread of rayon's pool. Its AVX-512 kernels leave
/// them dirty (no `vzeroupper`), and the SSE code of the rest of this crate (compiled for
/// baseline x86-64) then runs about 3x slower on those threads for as long as they live:
/// the sparse Gram product of a 2048 x 2048 EOI layer took 27 ms instead of 8 ms on any
/// thread that had taken part in a dense product before (see docs/guide.md, "Performance").
/// Call it after every faer call. Elsewhere than x86-64, and without AVX, it does nothing.
pub fn clean_vector_state(par: Par) {
    zero_upper_here();
    if par != Par::Seq {
        rayon::broadcast(|_| zero_upper_here());
    }
}

/// `vzeroupper` on this thread, where the processor has AVX.
pub fn zero_upper_here() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the processor supports AVX, checked just above.
        unsafe { zero_upper() };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn zero_upper() {
    std::arch::x86_64::_mm256_zeroupper();
}

/// Multiply-adds above which one matrix's product or SVD is spread over threads; below it,
/// parallelism across layers is cheaper than within one.
const PARALLEL_WORK: f64 = 5e7;

/// Rough multiply-adds to take the Gram matrix and the singular values of a rows x cols matrix.
pub fn work(rows: usize, cols: usize) -> f64 {
    let (n, m) = (rows.min(cols) as f64, rows.max(cols) as f64);
    n * n * m * 5.0
}

/// Threads for one rows x cols matrix.
pub fn parallelism(rows: usize, cols: usize) -> Par {
    if work(rows, cols) > PARALLEL_WORK {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// A view of row-major `data` as a rows x cols matrix (`data.len() == rows * cols`).
pub fn view(data: &[f64], rows: usize, cols: usize) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(data, rows, cols)
}

/// The smaller Gram matrix: `W W^T` when `rows <= cols`, else `W^T W`. Only the lower
/// triangle (with the diagonal) is computed; the rest is zero.
pub fn gram(w: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let w = if w.nrows() <= w.ncols() {
        w
    } else {
        w.transpose()
    };
    let n = w.nrows();
    let mut g = Mat::<f64>::zeros(n, n);
    matmul(
        g.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        w,
        BlockStructure::Rectangular,
        w.transpose(),
        BlockStructure::Rectangular,
        1.0,
        par,
    );
    clean_vector_state(par);
    g
}

/// The largest `|G_ab - target * [a == b]|` over the lower triangle of a Gram matrix from
/// [`gram`] (NaN if any entry is NaN).
pub fn deviation(g: &Mat<f64>, target: f64) -> f64 {
    let mut worst = 0.0f64;
    for j in 0..g.ncols() {
        for i in j..g.nrows() {
            let want = if i == j { target } else { 0.0 };
            let d = (g[(i, j)] - want).abs();
            if d.is_nan() {
                return f64::NAN;
            }
            worst = worst.max(d);
        }
    }
    worst
}

/// `||G - target I||_F / ||target I||_F` of a Gram matrix from [`gram`] (its lower triangle
/// counted twice off the diagonal): approximate isometry's error measure.
pub fn relative_frobenius(g: &Mat<f64>, target: f64) -> f64 {
    let n = g.nrows();
    let mut sum = 0.0;
    for j in 0..g.ncols() {
        let d = g[(j, j)] - target;
        sum += d * d;
        for i in j + 1..n {
            sum += 2.0 * g[(i, j)] * g[(i, j)];
        }
    }
    sum.sqrt() / (target * (n as f64).sqrt())
}

/// The mean of the diagonal: the squared gain of a matrix whose rows (or columns) are
/// orthogonal with equal norms.
pub fn mean_diagonal(g: &Mat<f64>) -> f64 {
    let n = g.nrows();
    if n == 0 {
        return 0.0;
    }
    (0..n).map(|i| g[(i, i)]).sum::<f64>() / n as f64
}

/// The singular values, largest first, by faer's SVD without singular vectors; `None` if
/// the iteration does not converge (non-finite input).
pub fn singular_values(w: MatRef<'_, f64>, par: Par) -> Option<Vec<f64>> {
    let (m, n) = (w.nrows(), w.ncols());
    let mut s = Diag::<f64>::zeros(m.min(n));
    let scratch = svd::svd_scratch::<f64>(
        m,
        n,
        ComputeSvdVectors::No,
        ComputeSvdVectors::No,
        par,
        Default::default(),
    );
    let mut buffer = MemBuffer::new(scratch);
    let solved = svd::svd(
        w,
        s.as_mut(),
        None,
        None,
        par,
        MemStack::new(&mut buffer),
        Default::default(),
    );
    clean_vector_state(par);
    solved.ok()?;
    Some(s.column_vector().iter().copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_of_a_scaled_rotation_is_a_multiple_of_the_identity() {
        // 2 x 3 with orthogonal rows of norm 2: G = 4 I exactly.
        let (c, s) = (0.6, 0.8);
        let data = [2.0 * c, 2.0 * s, 0.0, -2.0 * s, 2.0 * c, 0.0];
        for (rows, cols, w) in [
            (2, 3, view(&data, 2, 3)),
            (3, 2, view(&data, 2, 3).transpose()),
        ] {
            let g = gram(w, Par::Seq);
            assert_eq!((g.nrows(), g.ncols()), (2, 2), "{rows}x{cols}");
            assert!(deviation(&g, 4.0) < 1e-15);
            assert!((mean_diagonal(&g) - 4.0).abs() < 1e-15);
        }
    }

    #[test]
    fn deviation_finds_the_worst_entry() {
        let data = [1.0, 0.5, 0.0, 1.0];
        let g = gram(view(&data, 2, 2), Par::Seq);
        // G = [[1.25, 0.5], [0.5, 1]].
        assert!((deviation(&g, 1.0) - 0.5).abs() < 1e-15);
        let nan = [f64::NAN, 0.0, 0.0, 1.0];
        assert!(deviation(&gram(view(&nan, 2, 2), Par::Seq), 1.0).is_nan());
    }

    #[test]
    fn singular_values_match_a_hand_computed_case() {
        // [[3, 0], [4, 5]] has singular values sqrt(45) and sqrt(5).
        let data = [3.0, 0.0, 4.0, 5.0];
        let s = singular_values(view(&data, 2, 2), Par::Seq).unwrap();
        assert!((s[0] - 45f64.sqrt()).abs() < 1e-13, "{s:?}");
        assert!((s[1] - 5f64.sqrt()).abs() < 1e-13, "{s:?}");
        let wide = [1.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let s = singular_values(view(&wide, 2, 3), Par::Seq).unwrap();
        assert_eq!(s.len(), 2);
        assert!((s[0] - 2.0).abs() < 1e-15 && (s[1] - 1.0).abs() < 1e-15);
    }
}

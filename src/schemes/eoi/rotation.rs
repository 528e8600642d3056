//! Exact Orthogonal Initialization of one matrix (Nowak et al., ICML 2024): start from the
//! rectangular identity `[I_n | 0]` (n = min, m = max of the shape), right-multiply by random
//! Givens rotations of two columns until the structural support reaches the target density,
//! transpose if the matrix is tall, scale by the gain.
//!
//! The work is split in two: [`schedule`] runs the stop rule on the support alone (bitsets,
//! O(n/64) per rotation) and records the rotations; [`Schedule::matrix`] applies them to the
//! values. So the achieved density and rotation count are known before any weight exists.

use crate::stream::Stream;
use crate::tensor::{self, BitGrid, ComputedRows, Grid, Order};

/// One Givens rotation of columns `i` and `j`:
/// `a_i <- cos * a_i + sin * a_j`, `a_j <- -sin * a_i + cos * a_j`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rotation {
    pub i: usize,
    pub j: usize,
    pub cos: f64,
    pub sin: f64,
}

/// The structural support of the n x m working matrix: one bitset per column, with the
/// number of set bits per column and in total.
#[derive(Clone, Debug)]
pub struct Support {
    n: usize,
    m: usize,
    words: usize,
    bits: Vec<u64>,
    column_nnz: Vec<u64>,
    nnz: u64,
}

impl Support {
    /// The support of `[I_n | 0]`.
    fn identity(n: usize, m: usize) -> Support {
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; words * m];
        let mut column_nnz = vec![0u64; m];
        for k in 0..n {
            bits[k * words + k / 64] |= 1u64 << (k % 64);
            column_nnz[k] = 1;
        }
        Support {
            n,
            m,
            words,
            bits,
            column_nnz,
            nnz: n as u64,
        }
    }

    fn column(&self, j: usize) -> &[u64] {
        &self.bits[j * self.words..(j + 1) * self.words]
    }

    /// Total nonzeros after rotating columns i and j: both columns take the union of their
    /// supports, so nnz grows by `2|S_i u S_j| - |S_i| - |S_j|`.
    fn nnz_after(&self, i: usize, j: usize, union: u64) -> u64 {
        self.nnz - self.column_nnz[i] - self.column_nnz[j] + 2 * union
    }

    /// Writes `S_i u S_j` into `out` and returns its size.
    fn union_into(&self, i: usize, j: usize, out: &mut [u64]) -> u64 {
        let mut count = 0;
        for ((o, a), b) in out.iter_mut().zip(self.column(i)).zip(self.column(j)) {
            *o = a | b;
            count += u64::from(o.count_ones());
        }
        count
    }

    /// Gives columns i and j the support `union` (of size `count`), as a rotation does.
    fn set_both(&mut self, i: usize, j: usize, union: &[u64], count: u64) {
        self.nnz = self.nnz_after(i, j, count);
        for line in [i, j] {
            self.bits[line * self.words..(line + 1) * self.words].copy_from_slice(union);
            self.column_nnz[line] = count;
        }
    }

    /// Whether entry (row k, column j) of the working matrix is in the support.
    pub fn contains(&self, k: usize, j: usize) -> bool {
        self.bits[j * self.words + k / 64] >> (k % 64) & 1 == 1
    }

    pub fn nnz(&self) -> u64 {
        self.nnz
    }
}

/// The rotations that EOI applies to reach a density, and the support they lead to.
#[derive(Clone, Debug)]
pub struct Schedule {
    rows: usize,
    cols: usize,
    rotations: Vec<Rotation>,
    support: Support,
}

/// Runs EOI's stop rule for a `rows` x `cols` matrix at `density`, drawing from `stream`.
///
/// Each rotation draws, in this order: `i` uniform in `0..m`; `j` uniform in `0..m-1`,
/// incremented when `j >= i` (so `j != i` uniformly); the angle uniform in `[0, 2*pi)`.
/// The process stops at the first rotation after which `nnz >= density * n * m`; of the states
/// before and after that rotation it keeps the one whose density is closer to the target,
/// the later one on a tie. The draws of a rejected last rotation are consumed all the same.
pub fn schedule(rows: usize, cols: usize, density: f64, stream: &mut Stream) -> Schedule {
    let n = rows.min(cols);
    let m = rows.max(cols);
    let mut support = Support::identity(n, m);
    let mut rotations = Vec::new();
    let target = density * (n as f64) * (m as f64);
    let mut union = vec![0u64; support.words];
    if m >= 2 {
        while (support.nnz as f64) < target {
            let i = stream.below(m as u64) as usize;
            let mut j = stream.below(m as u64 - 1) as usize;
            if j >= i {
                j += 1;
            }
            let theta = stream.angle();
            let count = support.union_into(i, j, &mut union);
            let after = support.nnz_after(i, j, count);
            let before = support.nnz;
            if after as f64 >= target && target - (before as f64) < (after as f64) - target {
                break;
            }
            support.set_both(i, j, &union, count);
            rotations.push(Rotation {
                i,
                j,
                cos: libm::cos(theta),
                sin: libm::sin(theta),
            });
        }
    }
    Schedule {
        rows,
        cols,
        rotations,
        support,
    }
}

impl Schedule {
    /// The rotations, in the order they are applied.
    pub fn rotations(&self) -> &[Rotation] {
        &self.rotations
    }

    /// Rows of the output matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the output matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Nonzeros of the support (the mask's ones).
    pub fn nnz(&self) -> u64 {
        self.support.nnz
    }

    pub fn support(&self) -> &Support {
        &self.support
    }

    /// The number of entries, `rows * cols`.
    pub fn numel(&self) -> u64 {
        self.rows as u64 * self.cols as u64
    }

    fn tall(&self) -> bool {
        self.rows > self.cols
    }

    /// Lays out data in the working matrix's column-major order as the output `rows x cols`
    /// matrix: a tall output is the transpose of the working matrix, whose columns are then
    /// the output's rows.
    fn output_order(&self) -> Order {
        if self.tall() {
            Order::RowMajor
        } else {
            Order::ColumnMajor
        }
    }

    /// Applies the rotations to `[I_n | 0]` in f64 and scales by `gain`: the EOI matrix, with
    /// orthonormal rows (wide or square) or columns (tall) times `gain`.
    ///
    /// A rotation only changes the rows in the union of the two columns' supports. While that
    /// union is small the rotation visits just those rows; once it covers a quarter of the
    /// column it sweeps the whole column, which the compiler vectorises. Both compute the same
    /// products on the same entries, so the choice never changes a nonzero value (entries
    /// outside the support stay zero; the sign of a zero is normalised when encoding).
    pub fn matrix(&self, gain: f64) -> Grid<f64> {
        let n = self.support.n;
        let m = self.support.m;
        let mut values = tensor::zeroed(n * m);
        for k in 0..n {
            values[k * n + k] = 1.0;
        }
        let mut support = Support::identity(n, m);
        let mut union = vec![0u64; support.words];
        for r in &self.rotations {
            let count = support.union_into(r.i, r.j, &mut union);
            rotate_pair(&mut values, n, r, &union, count as usize);
            support.set_both(r.i, r.j, &union, count);
        }
        if gain != 1.0 {
            for v in &mut values {
                *v *= gain;
            }
        }
        Grid::new(self.rows, self.cols, self.output_order(), values)
    }

    /// The same matrix as [`Schedule::matrix`], computed a block of rows at a time when it
    /// is wide or square (its rows are the working matrix's rows); `None` for a tall matrix,
    /// whose rows are the working matrix's columns.
    pub fn rotated_rows(&self, gain: f64) -> Option<RotatedRows> {
        (!self.tall()).then(|| RotatedRows {
            n: self.support.n,
            m: self.support.m,
            rotations: self.rotations.clone(),
            gain,
        })
    }

    /// The mask, the structural support, in the same layout as [`Schedule::matrix`].
    pub fn mask(&self) -> BitGrid {
        let s = &self.support;
        BitGrid::new(
            self.rows,
            self.cols,
            self.output_order(),
            s.words,
            s.bits.clone(),
        )
    }
}

/// A wide or square EOI matrix (gain included) whose rows are computed on demand.
///
/// A Givens rotation of columns i and j changes each row on its own: entry (k, i) and (k, j)
/// after the rotation depend only on the same two entries before it. So any block of rows can
/// be computed alone by replaying every rotation on just those rows, with the same operations
/// on every entry as [`Schedule::matrix`], hence the same bits. A block of 64 rows of a
/// 4096-column matrix is 2 MiB: it stays in cache while it is rotated, transposed and
/// encoded, and the layer never needs its whole n x m matrix in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct RotatedRows {
    n: usize,
    m: usize,
    rotations: Vec<Rotation>,
    gain: f64,
}

impl ComputedRows for RotatedRows {
    fn rows(&self) -> usize {
        self.n
    }

    fn cols(&self) -> usize {
        self.m
    }

    /// Computes rows `first..first + count` into `block`, column-major: entry (first + t, j)
    /// at `j * count + t`.
    ///
    /// Each row starts as its row of `[I_n | 0]`; the block keeps one support bitset per
    /// column (bit t for row first + t), so a rotation whose two columns are zero on these
    /// rows costs a few word operations, a sparse one visits only the union of the supports,
    /// and a dense one sweeps both column segments with the vectorised kernel.
    fn compute(&self, first: usize, count: usize, block: &mut Vec<f64>) {
        let m = self.m;
        block.clear();
        block.resize(count * m, 0.0);
        let words = count.div_ceil(64);
        let mut support = vec![0u64; words * m];
        for t in 0..count {
            let k = first + t;
            block[k * count + t] = 1.0;
            support[k * words + t / 64] |= 1u64 << (t % 64);
        }
        let mut union = vec![0u64; words];
        for r in &self.rotations {
            let mut size = 0;
            for (w, u) in union.iter_mut().enumerate() {
                *u = support[r.i * words + w] | support[r.j * words + w];
                size += u.count_ones() as usize;
            }
            if size == 0 {
                continue;
            }
            rotate_pair(block, count, r, &union, size);
            support[r.i * words..(r.i + 1) * words].copy_from_slice(&union);
            support[r.j * words..(r.j + 1) * words].copy_from_slice(&union);
        }
        if self.gain != 1.0 {
            for v in block.iter_mut() {
                *v *= self.gain;
            }
        }
    }
}

/// Applies rotation `r` to columns `r.i` and `r.j` of `values` (columns of `len` entries,
/// stored one after another) on the rows in `union`, which holds `size` rows: just those rows
/// while they are few, the whole columns with the vectorised kernel once they cover a
/// quarter. Both compute the same products on the same entries; rows outside the union are
/// zero in both columns and stay zero.
fn rotate_pair(values: &mut [f64], len: usize, r: &Rotation, union: &[u64], size: usize) {
    let (lo, hi) = (r.i.min(r.j), r.i.max(r.j));
    let (head, tail) = values.split_at_mut(hi * len);
    let low = &mut head[lo * len..(lo + 1) * len];
    let high = &mut tail[..len];
    let (a, b) = if r.i < r.j { (low, high) } else { (high, low) };
    let (c, s) = (r.cos, r.sin);
    if size * 4 >= len {
        rotate_columns(a, b, c, s);
        return;
    }
    for (w, &word) in union.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let k = w * 64 + bits.trailing_zeros() as usize;
            let (xi, yj) = (a[k], b[k]);
            a[k] = c * xi + s * yj;
            b[k] = c * yj - s * xi;
            bits &= bits - 1;
        }
    }
}

/// `a <- c a + s b`, `b <- c b - s a` over whole columns: the hot loop of dense rotations.
///
/// On x86-64 processors with AVX2 the same loop is compiled a second time with 256-bit
/// vectors and chosen at run time. Rust never fuses a multiply and an add, so both versions
/// round every operation the same way and produce the same bits.
fn rotate_columns(a: &mut [f64], b: &mut [f64], c: f64, s: f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor supports AVX2, checked just above.
        unsafe { rotate_columns_avx2(a, b, c, s) };
        return;
    }
    rotate_columns_portable(a, b, c, s);
}

#[inline(always)]
fn rotate_columns_portable(a: &mut [f64], b: &mut [f64], c: f64, s: f64) {
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        let (xi, yj) = (*x, *y);
        *x = c * xi + s * yj;
        *y = c * yj - s * xi;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rotate_columns_avx2(a: &mut [f64], b: &mut [f64], c: f64, s: f64) {
    rotate_columns_portable(a, b, c, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram_error(w: &Grid<f64>, gain: f64) -> f64 {
        // max |(W W^T or W^T W) - gain^2 I| over the smaller Gram matrix.
        let (r, c) = (w.rows(), w.cols());
        let mut worst: f64 = 0.0;
        if r <= c {
            for a in 0..r {
                for b in 0..r {
                    let dot: f64 = (0..c).map(|k| w.get(a, k) * w.get(b, k)).sum();
                    let want = if a == b { gain * gain } else { 0.0 };
                    worst = worst.max((dot - want).abs());
                }
            }
        } else {
            for a in 0..c {
                for b in 0..c {
                    let dot: f64 = (0..r).map(|k| w.get(k, a) * w.get(k, b)).sum();
                    let want = if a == b { gain * gain } else { 0.0 };
                    worst = worst.max((dot - want).abs());
                }
            }
        }
        worst
    }

    #[test]
    fn union_accounting_matches_a_recount() {
        let mut stream = Stream::derive(5, "support");
        let mut support = Support::identity(70, 90);
        let mut union = vec![0u64; support.words];
        for _ in 0..200 {
            let i = stream.below(90) as usize;
            let j = (i + 1 + stream.below(89) as usize) % 90;
            let count = support.union_into(i, j, &mut union);
            let predicted = support.nnz_after(i, j, count);
            support.set_both(i, j, &union, count);
            let recount = (0..90)
                .flat_map(|c| (0..70).map(move |k| (k, c)))
                .filter(|&(k, c)| support.contains(k, c))
                .count() as u64;
            assert_eq!(predicted, recount);
            assert_eq!(support.nnz(), recount);
        }
    }

    #[test]
    fn density_at_or_below_the_identity_needs_no_rotation() {
        let mut stream = Stream::derive(0, "id");
        let s = schedule(4, 10, 0.1, &mut stream);
        assert!(s.rotations().is_empty());
        assert_eq!(s.nnz(), 4);
        let w = s.matrix(2.0);
        for i in 0..4 {
            for j in 0..10 {
                assert_eq!(w.get(i, j), if i == j { 2.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn the_stop_rule_follows_the_documented_draws_and_keeps_the_closer_state() {
        let (n, m, density) = (20usize, 30usize, 0.3);
        let target = density * (n * m) as f64;
        for seed in 0..50 {
            let s = schedule(n, m, density, &mut Stream::derive(seed, "stop"));
            // Replay the documented draw order on a fresh stream and an independent support.
            let mut replay = Stream::derive(seed, "stop");
            let mut support = Support::identity(n, m);
            let mut union = vec![0u64; support.words];
            let draw = |stream: &mut Stream| {
                let i = stream.below(m as u64) as usize;
                let mut j = stream.below(m as u64 - 1) as usize;
                if j >= i {
                    j += 1;
                }
                let theta = stream.angle();
                (i, j, theta)
            };
            for r in s.rotations() {
                assert!((support.nnz() as f64) < target, "rotated past the target");
                let (i, j, theta) = draw(&mut replay);
                assert_eq!((r.i, r.j), (i, j));
                assert_eq!((r.cos, r.sin), (libm::cos(theta), libm::sin(theta)));
                let count = support.union_into(i, j, &mut union);
                support.set_both(i, j, &union, count);
            }
            assert_eq!(support.nnz(), s.nnz());
            let got = s.nnz() as f64;
            if got < target {
                // The next rotation was drawn and rejected: it would have reached the target
                // but the state before it is strictly closer.
                let (i, j, _) = draw(&mut replay);
                let count = support.union_into(i, j, &mut union);
                let after = support.nnz_after(i, j, count) as f64;
                assert!(after >= target);
                assert!(target - got < after - target);
            }
        }
    }

    #[test]
    fn square_tall_and_wide_matrices_are_orthogonal_and_supported_by_their_mask() {
        for &(rows, cols, d) in &[(16, 16, 0.5), (10, 25, 0.3), (25, 10, 0.3), (1, 7, 1.0)] {
            let mut stream = Stream::derive(9, "shape");
            let s = schedule(rows, cols, d, &mut stream);
            let w = s.matrix(1.3);
            let mask = s.mask();
            assert!(gram_error(&w, 1.3) < 1e-12, "{rows}x{cols}");
            let mut ones = 0;
            for i in 0..rows {
                for j in 0..cols {
                    if !mask.get(i, j) {
                        assert_eq!(w.get(i, j), 0.0);
                    } else {
                        ones += 1;
                    }
                }
            }
            assert_eq!(ones, s.nnz());
        }
    }

    #[test]
    fn rows_computed_in_blocks_have_the_whole_matrix_bits() {
        // Blocks of every size, aligned or not, sparse and dense phases, gain or none.
        for &(rows, cols, d, gain) in &[
            (200, 200, 0.3, 1.0),
            (130, 300, 0.05, 1.7),
            (64, 64, 1.0, 0.5),
            (1, 9, 1.0, 1.0),
            (70, 71, 0.02, 1.0),
        ] {
            let mut stream = Stream::derive(4, "blocks");
            let s = schedule(rows, cols, d, &mut stream);
            let whole = s.matrix(gain);
            let lazy = s.rotated_rows(gain).expect("a wide or square matrix");
            assert_eq!((lazy.rows(), lazy.cols()), (rows, cols));
            for step in [1, 3, 64, 100, 128, rows] {
                let mut block = Vec::new();
                for first in (0..rows).step_by(step) {
                    let count = step.min(rows - first);
                    lazy.compute(first, count, &mut block);
                    for t in 0..count {
                        for j in 0..cols {
                            // Zeros may differ in sign, which encoding normalises.
                            assert_eq!(
                                (block[j * count + t] + 0.0).to_bits(),
                                (whole.get(first + t, j) + 0.0).to_bits(),
                                "{rows}x{cols} d={d}: row {} column {j}, blocks of {step}",
                                first + t
                            );
                        }
                    }
                }
            }
        }
        let mut stream = Stream::derive(4, "tall");
        assert!(
            schedule(30, 10, 0.5, &mut stream)
                .rotated_rows(1.0)
                .is_none()
        );
    }

    #[test]
    fn the_vectorised_rotation_gives_the_portable_bits() {
        let mut stream = Stream::derive(8, "simd");
        let column =
            |stream: &mut Stream| -> Vec<f64> { (0..1003).map(|_| stream.unit() - 0.5).collect() };
        let (a0, b0) = (column(&mut stream), column(&mut stream));
        let (c, s) = (libm::cos(1.1), libm::sin(1.1));
        let (mut a1, mut b1) = (a0.clone(), b0.clone());
        let (mut a2, mut b2) = (a0, b0);
        rotate_columns(&mut a1, &mut b1, c, s);
        rotate_columns_portable(&mut a2, &mut b2, c, s);
        assert!(a1.iter().zip(&a2).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(b1.iter().zip(&b2).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn full_density_fills_every_entry() {
        let mut stream = Stream::derive(2, "full");
        let s = schedule(12, 12, 1.0, &mut stream);
        assert_eq!(s.nnz(), 144);
    }
}

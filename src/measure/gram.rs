//! The smaller Gram matrix of a stored matrix, at the cost of what the matrix holds.
//!
//! A matrix is read as the file stores it ([`Matrix`]: row-major, f64 values or the stored
//! bytes, decoded a row at a time), so no f64 copy of a whole tensor is ever made. One
//! [`scan`] counts the nonzeros of every row and column (and, for `verify`, the nonzero
//! weights outside a mask); then the Gram matrix `G = A A^T` of the short-wide orientation
//! `A` (n x m, n <= m: the matrix or its transpose, whose smaller Gram matrices are the same)
//! is formed the cheaper way:
//!
//! - **sparse** ([`Sparse`]): from the nonzeros alone, held by row and by column. Row a of G
//!   is `sum over k in row a of A_ak * (column k of A)`, so G costs the sum over columns of
//!   nnz(column)^2 / 2 multiply-adds, not n^2 m / 2: an EOI layer's mask is its support,
//!   and at density 0.03 that is a thousandth of the dense product.
//! - **dense**: in panels of [`PANEL`] columns of A, each `G += P P^T` by faer in bands of
//!   [`BAND`] columns of G.
//!
//! Either way every entry of G is summed in f64 in an order fixed by the data alone (row a
//! of G over the columns of A in increasing order; a dense entry panel by panel, each panel
//! by one sequential faer product), so the results do not depend on the number of threads;
//! the work is split over rows of G (sparse) or bands of G (dense), never over the sum.
//! What the checks need is kept as [`GramStats`] (the diagonal, the largest off-diagonal
//! entry, the sum of squares off the diagonal); the matrix itself only when a spectrum is
//! asked for ([`GramMatrix`]).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

use crate::layer::Dtype;
use crate::read::{decode, decode_f32_into, decode_into, f32_holds};

/// Columns of A converted to f64 at a time by the dense product.
pub const PANEL: usize = 256;

/// Columns of G per task of the dense product: a fixed split, so that each entry is computed
/// by the same sequential product whatever the number of threads.
pub const BAND: usize = 128;

/// Multiply-adds above which one sparse product is spread over the threads (about 0.1 s).
const SPARSE_PARALLEL_WORK: f64 = 1e8;

/// Rows of G per task of the sparse product.
const SPARSE_ROWS: usize = 64;

/// Relative cost of one sparse multiply-add (an indexed load and a scattered add) against one
/// of faer's dense multiply-adds, measured on this project's machine by `cargo bench --bench
/// gram` (2048 x 2048 at d = 0.15, one thread: 9.7e7 sparse multiply-adds in 94 ms, 4.4e9
/// dense ones in 139 ms, a ratio of 30): the sparse product is chosen when `SPARSE_COST *
/// sum over columns of nnz^2 < n^2 m`, below about d = 0.18 for evenly spread nonzeros.
pub const SPARSE_COST: f64 = 30.0;

/// A matrix's elements in row-major order: f64 values, or a stored tensor's little-endian
/// bytes of `dtype`.
#[derive(Clone, Copy, Debug)]
pub enum Elements<'a> {
    F64(&'a [f64]),
    Stored { bytes: &'a [u8], dtype: Dtype },
}

/// A `rows x cols` matrix whose elements are stored row-major, and whether the matrix the
/// layer applies is its transpose (a Flax Dense kernel, stored (in, out)).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub elements: Elements<'a>,
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl<'a> Matrix<'a> {
    /// A matrix of f64 values (`values.len() == rows * cols`).
    pub fn f64(values: &'a [f64], rows: usize, cols: usize) -> Matrix<'a> {
        Matrix {
            elements: Elements::F64(values),
            rows,
            cols,
            transposed: false,
        }
    }

    /// A matrix of stored bytes (`bytes.len() == rows * cols * dtype.size()`).
    pub fn stored(bytes: &'a [u8], dtype: Dtype, rows: usize, cols: usize) -> Matrix<'a> {
        Matrix {
            elements: Elements::Stored { bytes, dtype },
            rows,
            cols,
            transposed: false,
        }
    }

    /// The same elements, read as the transpose of the matrix the layer applies.
    pub fn transposed(self, transposed: bool) -> Matrix<'a> {
        Matrix { transposed, ..self }
    }

    /// Rows `start..start + rows` as a matrix of their own (a group's block).
    pub fn rows_block(&self, start: usize, rows: usize) -> Matrix<'a> {
        let (from, to) = (start * self.cols, (start + rows) * self.cols);
        let elements = match self.elements {
            Elements::F64(v) => Elements::F64(&v[from..to]),
            Elements::Stored { bytes, dtype } => Elements::Stored {
                bytes: &bytes[from * dtype.size()..to * dtype.size()],
                dtype,
            },
        };
        Matrix {
            elements,
            rows,
            cols: self.cols,
            transposed: self.transposed,
        }
    }

    /// Elements `from..to` of the row-major order as `V`: a slice of f64 values, or decoded
    /// into `buf` (which must hold `to - from` values).
    fn span<'s, V: Value>(&'s self, from: usize, to: usize, buf: &'s mut [V]) -> &'s [V] {
        V::span(self.elements, from, to, buf)
    }

    /// Elements `from..from + out.len()` of the row-major order, written to `out` as f64.
    fn read_into(&self, from: usize, out: &mut [f64]) {
        let to = from + out.len();
        match self.elements {
            Elements::F64(v) => out.copy_from_slice(&v[from..to]),
            Elements::Stored { bytes, dtype } => {
                let size = dtype.size();
                decode_into(dtype, &bytes[from * size..to * size], out);
            }
        }
    }

    /// Whether element `at` of the row-major order is nonzero (a NaN is; -0.0 is not).
    pub fn nonzero_at(&self, at: usize) -> bool {
        match self.elements {
            Elements::F64(v) => v[at] != 0.0,
            Elements::Stored { bytes, dtype } => {
                let size = dtype.size();
                decode(dtype, &bytes[at * size..(at + 1) * size]) != 0.0
            }
        }
    }

    /// Whether f32 holds every element exactly (stored f32, bf16, f16...): then the checks
    /// keep them as f32, at half the bytes, and every product of two of them is exact in f64.
    fn narrow(&self) -> bool {
        match self.elements {
            Elements::F64(_) => false,
            Elements::Stored { dtype, .. } => f32_holds(dtype),
        }
    }

    /// The smaller dimension `n` and the larger `m`.
    pub fn gram_dims(&self) -> (usize, usize) {
        (self.rows.min(self.cols), self.rows.max(self.cols))
    }

    /// Whether the short-wide orientation A, whose `A A^T` is the smaller Gram matrix, is the
    /// transpose of the stored matrix. For the layer's matrix L (out, in), A is L when out <=
    /// in, else L^T; a square matrix thus gets `L L^T` however it is stored, and the same bits.
    pub fn a_is_transpose(&self) -> bool {
        if self.transposed {
            self.cols <= self.rows
        } else {
            self.rows > self.cols
        }
    }
}

/// The float a matrix's elements are held in while it is measured: f32 when it holds them
/// exactly ([`Matrix::narrow`]), else f64. Products are formed in f64 either way, so the
/// Gram matrix has the same bits.
pub trait Value: Copy + Default + PartialEq + Send + Sync + 'static {
    /// Bytes per value.
    const SIZE: usize;
    fn widen(self) -> f64;
    /// Whether the value is infinite or NaN, as 0 or 1 (a branch-free count).
    fn non_finite(self) -> u32;
    /// Elements `from..to` of `elements`: borrowed when they already are `Self`.
    fn span<'s>(elements: Elements<'s>, from: usize, to: usize, buf: &'s mut [Self]) -> &'s [Self];
}

impl Value for f32 {
    const SIZE: usize = 4;
    fn widen(self) -> f64 {
        f64::from(self)
    }
    fn non_finite(self) -> u32 {
        u32::from(self.to_bits() & 0x7f80_0000 == 0x7f80_0000)
    }
    fn span<'s>(elements: Elements<'s>, from: usize, to: usize, buf: &'s mut [f32]) -> &'s [f32] {
        let out = &mut buf[..to - from];
        match elements {
            // Not reached: f64 values are measured as f64 (`Matrix::narrow`).
            Elements::F64(v) => {
                for (o, &x) in out.iter_mut().zip(&v[from..to]) {
                    *o = x as f32;
                }
            }
            Elements::Stored { bytes, dtype } => {
                let size = dtype.size();
                decode_f32_into(dtype, &bytes[from * size..to * size], out);
            }
        }
        out
    }
}

impl Value for f64 {
    const SIZE: usize = 8;
    fn widen(self) -> f64 {
        self
    }
    fn non_finite(self) -> u32 {
        u32::from(self.to_bits() & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000)
    }
    fn span<'s>(elements: Elements<'s>, from: usize, to: usize, buf: &'s mut [f64]) -> &'s [f64] {
        match elements {
            Elements::F64(v) => &v[from..to],
            Elements::Stored { bytes, dtype } => {
                let size = dtype.size();
                let out = &mut buf[..to - from];
                decode_into(dtype, &bytes[from * size..to * size], out);
                out
            }
        }
    }
}

/// What one pass over a matrix finds.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Nonzero elements (a NaN is nonzero; -0.0 is zero).
    pub nnz: u64,
    /// Nonzeros per row and per column.
    pub row_nnz: Vec<u64>,
    pub col_nnz: Vec<u64>,
    /// Whether any element is infinite or NaN.
    pub non_finite: bool,
    /// With a mask: the nonzero elements where the mask is 0.
    pub outside: u64,
    /// The first of them in the reading order [`scan`] is given: its flat index in that order
    /// and its value.
    pub first_outside: Option<(usize, f64)>,
}

/// One pass over `matrix`: nonzeros per stored row and column, non-finite values and, with
/// `mask` (one byte per element in the same row-major order, 0 meaning outside), the nonzero
/// elements outside it; `first_outside` is the first in the order of the matrix the layer
/// applies (the transpose's, for a transposed matrix), as its flat index there.
pub fn scan(matrix: &Matrix<'_>, mask: Option<&[u8]>) -> Scan {
    if matrix.narrow() {
        scan_as::<f32>(matrix, mask)
    } else {
        scan_as::<f64>(matrix, mask)
    }
}

/// Elements per word of [`nonzero_bits`].
const WORD: usize = 64;

/// Bit i set when `chunk[i]` (at most [`WORD`] elements) is nonzero, without a branch, so
/// that a run of zeros (most of a sparse row) costs a few instructions per word.
#[inline(always)]
fn nonzero_bits<V: Value>(chunk: &[V]) -> u64 {
    let zero = V::default();
    flags_to_bits(chunk, |v| v != zero)
}

/// Bit i set when `mask[i]` (at most [`WORD`] bytes) is 0: outside the mask.
#[inline(always)]
fn zero_bits(mask: &[u8]) -> u64 {
    flags_to_bits(mask, |m| m == 0)
}

/// Bit i set when `test(chunk[i])` (at most [`WORD`] elements). A whole word is tested into
/// 64 bytes of 0 or 1 (vector compares), then each 8 of them gathered into 8 bits by one
/// multiplication: byte j of x, 0 or 1, lands on bit 56 + j of `x * 0x0102040810204080`.
#[inline(always)]
fn flags_to_bits<T: Copy>(chunk: &[T], test: impl Fn(T) -> bool) -> u64 {
    let Ok(word) = <&[T; WORD]>::try_from(chunk) else {
        let mut bits = 0u64;
        for (i, &v) in chunk.iter().enumerate() {
            bits |= u64::from(test(v)) << i;
        }
        return bits;
    };
    let mut flags = [0u8; WORD];
    for (f, &v) in flags.iter_mut().zip(word) {
        *f = u8::from(test(v));
    }
    let mut bits = 0u64;
    for (j, eight) in flags.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes(eight.try_into().unwrap_or_default());
        bits |= (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * j);
    }
    bits
}

/// Calls `f(i)` for every set bit i of `bits`, in increasing order.
#[inline(always)]
fn each_bit(mut bits: u64, mut f: impl FnMut(usize)) {
    while bits != 0 {
        f(bits.trailing_zeros() as usize);
        bits &= bits - 1;
    }
}

/// [`scan`] with the elements held as `V`: a row a word of [`WORD`] elements at a time, each
/// word's nonzeros found as a bitmask; only they are counted by column and tested.
fn scan_as<V: Value>(matrix: &Matrix<'_>, mask: Option<&[u8]>) -> Scan {
    let (rows, cols) = (matrix.rows, matrix.cols);
    let mut scan = Scan {
        row_nnz: vec![0; rows],
        col_nnz: vec![0; cols],
        ..Scan::default()
    };
    let mut buf = vec![V::default(); cols];
    let mut non_finite = 0u32;
    for r in 0..rows {
        let row = matrix.span(r * cols, (r + 1) * cols, &mut buf);
        let mut count = 0u64;
        let mut first_outside = None;
        for (w, chunk) in row.chunks(WORD).enumerate() {
            let bits = nonzero_bits(chunk);
            if bits == 0 {
                continue;
            }
            let base = w * WORD;
            count += u64::from(bits.count_ones());
            let counts = &mut scan.col_nnz[base..base + chunk.len()];
            each_bit(bits, |i| {
                counts[i] += 1;
                non_finite |= chunk[i].non_finite();
            });
            if let Some(mask) = mask {
                let from = r * cols + base;
                let outside = bits & zero_bits(&mask[from..from + chunk.len()]);
                scan.outside += u64::from(outside.count_ones());
                if outside != 0 && first_outside.is_none() {
                    first_outside = Some(base + outside.trailing_zeros() as usize);
                }
            }
        }
        scan.row_nnz[r] = count;
        scan.nnz += count;
        // The row's first weight outside the mask is the first of the row in either order.
        if let Some(c) = first_outside {
            let at = if matrix.transposed {
                c * rows + r
            } else {
                r * cols + c
            };
            if scan.first_outside.is_none_or(|(first, _)| at < first) {
                scan.first_outside = Some((at, row[c].widen()));
            }
        }
    }
    scan.non_finite = non_finite != 0;
    scan
}

/// The values of a [`Sparse`] factor, as f32 when f32 holds them ([`Value`]).
#[derive(Clone, Debug)]
enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The nonzeros of the short-wide orientation A (n x m, n <= m) of a matrix, column by
/// column (CSC), row indices increasing within a column; and for each row of A, its
/// nonzeros' places in those columns (column index and position), columns increasing.
#[derive(Clone, Debug)]
pub struct Sparse {
    pub n: usize,
    pub m: usize,
    col_start: Vec<usize>,
    row_index: Vec<u32>,
    values: Values,
    row_start: Vec<usize>,
    /// Per row, in increasing column k: (k, the position of the nonzero in the columns).
    row_places: Vec<(u32, u32)>,
}

fn starts(counts: &[u64]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(counts.len() + 1);
    let mut at = 0usize;
    starts.push(0);
    for &c in counts {
        at += c as usize;
        starts.push(at);
    }
    starts
}

/// Evaluates `$body` with `$v` bound to a factor's values, `&Vec<f32>` or `&Vec<f64>`.
macro_rules! with_values {
    ($sparse:expr, $v:ident => $body:expr) => {
        match &$sparse.values {
            Values::F32($v) => $body,
            Values::F64($v) => $body,
        }
    };
}

impl Sparse {
    /// The nonzeros of `matrix`, whose per-row and per-column counts `scan` found. `None`
    /// when a dimension or the count of nonzeros does not fit the u32 indices (the dense
    /// product is used then).
    pub fn new(matrix: &Matrix<'_>, scan: &Scan) -> Option<Sparse> {
        if matrix.rows > u32::MAX as usize
            || matrix.cols > u32::MAX as usize
            || scan.nnz > u64::from(u32::MAX)
        {
            return None;
        }
        let (n, m) = matrix.gram_dims();
        let (col_start, row_index, values) = if matrix.narrow() {
            let (start, index, values) = columns::<f32>(matrix, scan);
            (start, index, Values::F32(values))
        } else {
            let (start, index, values) = columns::<f64>(matrix, scan);
            (start, index, Values::F64(values))
        };
        // The rows: the columns' entries taken in increasing k and appended to their rows.
        let row_start = starts(if matrix.a_is_transpose() {
            &scan.col_nnz
        } else {
            &scan.row_nnz
        });
        let mut fill = row_start[..n].to_vec();
        let mut row_places = vec![(0u32, 0u32); row_index.len()];
        for k in 0..m {
            for p in col_start[k]..col_start[k + 1] {
                let at = &mut fill[row_index[p] as usize];
                row_places[*at] = (k as u32, p as u32);
                *at += 1;
            }
        }
        Some(Sparse {
            n,
            m,
            col_start,
            row_index,
            values,
            row_start,
            row_places,
        })
    }

    /// Nonzeros.
    pub fn nnz(&self) -> usize {
        self.row_index.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let value = match self.values {
            Values::F32(_) => f32::SIZE,
            Values::F64(_) => f64::SIZE,
        };
        self.nnz() * (12 + value) + (self.m + self.n + 2) * 8
    }

    /// `y = A A^T x` (`x`, `y` of length n), through `z` of length m, in a fixed order:
    /// `z = A^T x` column by column, then `y = A z` added column by column (each `y_a` summed
    /// over k in increasing order).
    pub fn gram_times(&self, x: &[f64], y: &mut [f64], z: &mut [f64]) {
        with_values!(self, values => self.gram_times_as(values, x, y, z))
    }

    fn gram_times_as<V: Value>(&self, values: &[V], x: &[f64], y: &mut [f64], z: &mut [f64]) {
        for (k, zk) in z.iter_mut().enumerate() {
            let (s, e) = (self.col_start[k], self.col_start[k + 1]);
            *zk = self.row_index[s..e]
                .iter()
                .zip(&values[s..e])
                .map(|(&a, &v)| v.widen() * x[a as usize])
                .sum();
        }
        y.iter_mut().for_each(|v| *v = 0.0);
        for (k, &zk) in z.iter().enumerate() {
            let (s, e) = (self.col_start[k], self.col_start[k + 1]);
            for (&a, &v) in self.row_index[s..e].iter().zip(&values[s..e]) {
                y[a as usize] += v.widen() * zk;
            }
        }
    }

    /// Rows `from..to` of G's lower triangle, each given to `row` as (a, the entries `G_ab`
    /// for b < a, G_aa). Row a is accumulated densely: each of its nonzeros `A_ak`, in
    /// increasing k, adds `A_ak` times the part of column k above and on the diagonal (the
    /// column's entries up to `A_ak` itself). Each entry is thus summed over k in increasing
    /// order, whatever the rows asked for.
    fn gram_rows(&self, from: usize, to: usize, row: impl FnMut(usize, &[f64], f64)) {
        with_values!(self, values => self.gram_rows_as(values, from, to, row))
    }

    fn gram_rows_as<V: Value>(
        &self,
        values: &[V],
        from: usize,
        to: usize,
        mut row: impl FnMut(usize, &[f64], f64),
    ) {
        let mut acc = vec![0.0f64; self.n];
        for a in from..to {
            let upto = &mut acc[..=a];
            for &(k, p) in &self.row_places[self.row_start[a]..self.row_start[a + 1]] {
                let (s, p) = (self.col_start[k as usize], p as usize);
                let v = values[p].widen();
                for (&b, &u) in self.row_index[s..=p].iter().zip(&values[s..=p]) {
                    upto[b as usize] += v * u.widen();
                }
            }
            row(a, &upto[..a], upto[a]);
            upto.fill(0.0);
        }
    }

    /// Multiply-adds of the Gram product: half the sum over columns of nnz^2.
    pub fn gram_work(&self) -> f64 {
        (0..self.m)
            .map(|k| {
                let c = (self.col_start[k + 1] - self.col_start[k]) as f64;
                c * (c + 1.0) / 2.0
            })
            .sum()
    }

    /// The whole of G (both triangles), for an eigen-solver.
    pub fn gram_matrix(&self) -> Mat<f64> {
        let mut g = Mat::<f64>::zeros(self.n, self.n);
        self.gram_rows(0, self.n, |a, off, diagonal| {
            g[(a, a)] = diagonal;
            for (b, &v) in off.iter().enumerate() {
                g[(a, b)] = v;
                g[(b, a)] = v;
            }
        });
        g
    }
}

/// The columns of A (CSC: starts, row indices, values) from one pass over the stored rows,
/// a word of [`WORD`] elements at a time. When A is the transpose, its columns are the
/// stored rows, each a column's run; otherwise a stored row's nonzeros are appended to their
/// columns.
fn columns<V: Value>(matrix: &Matrix<'_>, scan: &Scan) -> (Vec<usize>, Vec<u32>, Vec<V>) {
    let (rows, cols) = (matrix.rows, matrix.cols);
    let nnz = scan.nnz as usize;
    let mut buf = vec![V::default(); cols];
    let mut index = vec![0u32; nnz];
    let mut values = vec![V::default(); nnz];
    let transpose = matrix.a_is_transpose();
    let start = starts(if transpose {
        &scan.row_nnz
    } else {
        &scan.col_nnz
    });
    let mut fill = start[..start.len() - 1].to_vec();
    for r in 0..rows {
        let row = matrix.span(r * cols, (r + 1) * cols, &mut buf);
        for (w, chunk) in row.chunks(WORD).enumerate() {
            let base = w * WORD;
            each_bit(nonzero_bits(chunk), |i| {
                let (column, index_in_it) = if transpose {
                    (r, base + i)
                } else {
                    (base + i, r)
                };
                let at = fill[column];
                index[at] = index_in_it as u32;
                values[at] = chunk[i];
                fill[column] = at + 1;
            });
        }
    }
    (start, index, values)
}

/// What the checks need of a Gram matrix G (n x n): its diagonal, its largest off-diagonal
/// entry in absolute value and the sum of squares of the entries below the diagonal.
#[derive(Clone, Debug, PartialEq)]
pub struct GramStats {
    /// The dimension of G, and the length m of the dot products its entries are.
    pub n: usize,
    pub m: usize,
    pub diagonal: Vec<f64>,
    /// `max |G_ab|` over a != b (NaN if any entry is NaN).
    pub off_max: f64,
    /// `sum over a > b of G_ab^2`.
    pub off_squares: f64,
}

/// The larger of two errors, NaN if either is.
fn worse(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

impl GramStats {
    fn new(n: usize, m: usize) -> GramStats {
        GramStats {
            n,
            m,
            diagonal: vec![0.0; n],
            off_max: 0.0,
            off_squares: 0.0,
        }
    }

    /// `max |G - target I|` over all entries (NaN if any entry is NaN).
    pub fn deviation(&self, target: f64) -> f64 {
        self.diagonal
            .iter()
            .fold(self.off_max, |worst, &d| worse(worst, (d - target).abs()))
    }

    /// `||G - target I||_F / ||target I||_F`: approximate isometry's error measure.
    pub fn relative_frobenius(&self, target: f64) -> f64 {
        let diagonal: f64 = self
            .diagonal
            .iter()
            .map(|d| (d - target) * (d - target))
            .sum();
        (diagonal + 2.0 * self.off_squares).sqrt() / (target * (self.n as f64).sqrt())
    }

    /// The mean of the diagonal: the squared gain of a matrix whose rows (or columns) are
    /// orthogonal with equal norms.
    pub fn mean_diagonal(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        self.diagonal.iter().sum::<f64>() / self.n as f64
    }

    /// Takes in row a's entries below the diagonal and its diagonal entry.
    fn add_row(&mut self, a: usize, off: &[f64], diagonal: f64) {
        self.diagonal[a] = diagonal;
        for &v in off {
            self.off_max = worse(self.off_max, v.abs());
            self.off_squares += v * v;
        }
    }

    /// Takes in the stats of rows computed apart (`other`'s diagonal entries are those of its
    /// rows, zero elsewhere), in order.
    fn merge(&mut self, other: GramStats, rows: std::ops::Range<usize>) {
        self.diagonal[rows.clone()].copy_from_slice(&other.diagonal[rows]);
        self.off_max = worse(self.off_max, other.off_max);
        self.off_squares += other.off_squares;
    }
}

/// How a Gram matrix was formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    Sparse,
    Dense,
}

/// The Gram matrix kept for a spectrum: its factor's nonzeros, or the matrix itself (both
/// triangles).
pub enum GramMatrix {
    Sparse(Sparse),
    Dense(Mat<f64>),
}

impl GramMatrix {
    pub fn n(&self) -> usize {
        match self {
            GramMatrix::Sparse(s) => s.n,
            GramMatrix::Dense(g) => g.nrows(),
        }
    }

    /// The whole matrix.
    pub fn matrix(&self) -> std::borrow::Cow<'_, Mat<f64>> {
        match self {
            GramMatrix::Sparse(s) => std::borrow::Cow::Owned(s.gram_matrix()),
            GramMatrix::Dense(g) => std::borrow::Cow::Borrowed(g),
        }
    }
}

/// Whether the sparse product is the cheaper for a matrix with these counts: `SPARSE_COST`
/// times half the sum over the columns of A of nnz^2, against `n^2 m / 2`. (The columns of A
/// are the stored columns, or the stored rows when A is the transpose.)
pub fn sparse_is_cheaper(matrix: &Matrix<'_>, scan: &Scan) -> bool {
    let (n, m) = matrix.gram_dims();
    let columns = if matrix.a_is_transpose() {
        &scan.row_nnz
    } else {
        &scan.col_nnz
    };
    let sparse: f64 = columns.iter().map(|&c| (c as f64) * (c as f64) / 2.0).sum();
    SPARSE_COST * sparse < (n as f64) * (n as f64) * (m as f64) / 2.0
}

/// Rough cost, in dense multiply-adds, of the Gram statistics of a `rows x cols` matrix with
/// about `nnz` nonzeros (all of them when unknown), for progress: the cheaper product's.
pub fn work(rows: usize, cols: usize, nnz: Option<u64>) -> f64 {
    let (n, m) = (rows.min(cols) as f64, rows.max(cols) as f64);
    let dense = n * n * m / 2.0;
    match nnz {
        // Uneven columns cost more than this even spread; it is an estimate.
        Some(nnz) if m > 0.0 => dense.min(SPARSE_COST * (nnz as f64).powi(2) / (2.0 * m)),
        _ => dense,
    }
}

/// Bytes the Gram product of a `rows x cols` matrix may hold: the dense G (n x n f64) and
/// one panel, or the sparse factor, which is used only within the larger of that and 4 bytes
/// per element ([`sparse_fits`]).
pub fn memory(rows: usize, cols: usize) -> u64 {
    let (n, m) = (rows.min(cols) as u64, rows.max(cols) as u64);
    let dense = 8 * n * n + 8 * n * PANEL as u64;
    dense.max(4 * n * m) + 8 * (n + m)
}

/// Whether the sparse factor of a matrix with these counts fits [`memory`].
fn sparse_fits(matrix: &Matrix<'_>, scan: &Scan) -> bool {
    let (n, m) = matrix.gram_dims();
    24 * scan.nnz + 16 * (n + m) as u64 <= memory(matrix.rows, matrix.cols)
}

/// The Gram statistics of `matrix` (whose [`scan`] is `scan`), by the cheaper product unless
/// `product` forces one; with `keep`, the Gram matrix too (as its factor when sparse).
/// `parallel` lets one matrix be spread over the threads (the dense product, and a sparse
/// one of over [`SPARSE_PARALLEL_WORK`]); the numbers are the same either way.
pub fn gram(
    matrix: &Matrix<'_>,
    scan: &Scan,
    product: Option<Product>,
    parallel: bool,
    keep: bool,
) -> (GramStats, Option<GramMatrix>, Product) {
    let product = product.unwrap_or(
        if sparse_is_cheaper(matrix, scan) && sparse_fits(matrix, scan) {
            Product::Sparse
        } else {
            Product::Dense
        },
    );
    if product == Product::Sparse
        && let Some(sparse) = Sparse::new(matrix, scan)
    {
        // A sparse product is spread over the threads only when it is long: below that,
        // the layers measured in parallel keep the threads busy at no cost.
        let parallel = parallel && sparse.gram_work() > SPARSE_PARALLEL_WORK;
        let stats = sparse_stats(&sparse, parallel);
        return (stats, keep.then_some(GramMatrix::Sparse(sparse)), product);
    }
    let g = dense_gram(matrix, parallel);
    let stats = dense_stats(&g, matrix.gram_dims().1);
    let kept = keep.then(|| {
        let mut g = g;
        let n = g.nrows();
        for j in 0..n {
            for i in j + 1..n {
                g[(j, i)] = g[(i, j)];
            }
        }
        GramMatrix::Dense(g)
    });
    (stats, kept, Product::Dense)
}

/// The statistics of G from its factor's nonzeros, rows of G in tasks of [`SPARSE_ROWS`].
pub fn sparse_stats(sparse: &Sparse, parallel: bool) -> GramStats {
    let n = sparse.n;
    let task = |t: usize| {
        let (from, to) = (t * SPARSE_ROWS, ((t + 1) * SPARSE_ROWS).min(n));
        let mut stats = GramStats::new(n, sparse.m);
        sparse.gram_rows(from, to, |a, off, d| stats.add_row(a, off, d));
        (from..to, stats)
    };
    let tasks = n.div_ceil(SPARSE_ROWS);
    let parts: Vec<_> = if parallel {
        (0..tasks).into_par_iter().map(task).collect()
    } else {
        (0..tasks).map(task).collect()
    };
    let mut stats = GramStats::new(n, sparse.m);
    for (rows, part) in parts {
        stats.merge(part, rows);
    }
    stats
}

/// The lower triangle (with the diagonal) of the smaller Gram matrix of `matrix`, densely:
/// panels of [`PANEL`] columns of A converted to f64, each added as `P P^T` in bands of
/// [`BAND`] columns of G (each band one sequential faer product). Entries above the diagonal
/// outside the diagonal bands are zero; inside them they are computed too and meaningless.
pub fn dense_gram(matrix: &Matrix<'_>, parallel: bool) -> Mat<f64> {
    let cols = matrix.cols;
    let (n, m) = matrix.gram_dims();
    let mut g = Mat::<f64>::zeros(n, n);
    if n == 0 {
        return g;
    }
    let mut buf = vec![0.0; n * PANEL];
    let mut decoded = vec![0.0; PANEL.max(cols)];
    let mut k0 = 0;
    while k0 < m {
        let kb = PANEL.min(m - k0);
        // The panel is columns k0..k0+kb of A, column-major (n values each): the same
        // layout whichever way the matrix is stored, so that a transposed copy gets the
        // same bits.
        if matrix.a_is_transpose() {
            // A's columns are the stored rows: each decoded in place.
            for k in 0..kb {
                let from = (k0 + k) * cols;
                matrix.read_into(from, &mut buf[k * n..(k + 1) * n]);
            }
        } else {
            // A is the matrix: kb values of every row, spread over the panel's columns.
            for a in 0..n {
                let from = a * cols + k0;
                let part = matrix.span(from, from + kb, &mut decoded);
                for (k, &v) in part.iter().enumerate() {
                    buf[k * n + a] = v;
                }
            }
        }
        let panel = MatRef::from_column_major_slice(&buf[..n * kb], n, kb);
        add_panel(&mut g, panel, parallel);
        k0 += kb;
    }
    g
}

/// `G += P P^T` on the lower triangle, band by band.
fn add_panel(g: &mut Mat<f64>, panel: MatRef<'_, f64>, parallel: bool) {
    let n = g.nrows();
    let mut bands = Vec::with_capacity(n.div_ceil(BAND));
    let mut rest = g.as_mut();
    let mut j0 = 0;
    while j0 < n {
        let w = BAND.min(n - j0);
        let (band, right) = rest.split_at_col_mut(w);
        bands.push((j0, band));
        rest = right;
        j0 += w;
    }
    let run = |(j0, band): &mut (usize, faer::MatMut<'_, f64>)| {
        let (j0, w) = (*j0, band.ncols());
        let below = n - j0;
        matmul(
            band.as_mut().subrows_mut(j0, below),
            Accum::Add,
            panel.subrows(j0, below),
            panel.subrows(j0, w).transpose(),
            1.0,
            Par::Seq,
        );
        super::zero_upper_here();
    };
    if parallel {
        bands.par_iter_mut().for_each(run);
    } else {
        bands.iter_mut().for_each(run);
    }
}

/// The statistics of a dense Gram matrix's lower triangle, column by column.
pub fn dense_stats(g: &Mat<f64>, m: usize) -> GramStats {
    let n = g.nrows();
    let mut stats = GramStats::new(n, m);
    for j in 0..n {
        stats.diagonal[j] = g[(j, j)];
        for i in j + 1..n {
            let v = g[(i, j)];
            stats.off_max = worse(stats.off_max, v.abs());
            stats.off_squares += v * v;
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Stream;

    /// A rows x cols matrix with about `density` of its entries N(0, 1), the rest 0.
    fn random(rows: usize, cols: usize, density: f64, seed: u64) -> Vec<f64> {
        let mut s = Stream::derive(seed, "gram-test");
        let mut values = vec![0.0; rows * cols];
        s.fill_normal(&mut values);
        for v in values.iter_mut() {
            if s.unit() >= density {
                *v = 0.0;
            }
        }
        values
    }

    /// G's lower triangle the plain way: every dot product of the short-wide orientation.
    fn reference(values: &[f64], rows: usize, cols: usize) -> Vec<Vec<f64>> {
        let (n, m) = (rows.min(cols), rows.max(cols));
        let at = |a: usize, k: usize| {
            if rows <= cols {
                values[a * cols + k]
            } else {
                values[k * cols + a]
            }
        };
        (0..n)
            .map(|a| {
                (0..=a)
                    .map(|b| (0..m).map(|k| at(a, k) * at(b, k)).sum())
                    .collect()
            })
            .collect()
    }

    fn check_against_reference(values: &[f64], rows: usize, cols: usize) {
        let want = reference(values, rows, cols);
        let matrix = Matrix::f64(values, rows, cols);
        let scan = scan(&matrix, None);
        let mut off_max = 0.0f64;
        let mut off_squares = 0.0;
        for (a, row) in want.iter().enumerate() {
            for &v in &row[..a] {
                off_max = off_max.max(v.abs());
                off_squares += v * v;
            }
        }
        let tol = 1e-12 * (1.0 + off_max);
        for product in [Product::Sparse, Product::Dense] {
            for parallel in [false, true] {
                let (stats, kept, used) = gram(&matrix, &scan, Some(product), parallel, true);
                assert_eq!(used, product);
                for (a, row) in want.iter().enumerate() {
                    assert!((stats.diagonal[a] - row[a]).abs() < tol, "{product:?} {a}");
                }
                assert!((stats.off_max - off_max).abs() < tol, "{product:?}");
                assert!((stats.off_squares - off_squares).abs() < 1e-9 * (1.0 + off_squares));
                let g = kept.unwrap().matrix().into_owned();
                for (a, row) in want.iter().enumerate() {
                    for (b, &v) in row.iter().enumerate() {
                        assert!((g[(a, b)] - v).abs() < tol, "{product:?} ({a}, {b})");
                        assert!((g[(b, a)] - v).abs() < tol, "{product:?} ({b}, {a})");
                    }
                }
            }
        }
    }

    #[test]
    fn both_products_agree_with_the_dot_products() {
        for (rows, cols, density) in [
            (1, 1, 1.0),
            (3, 7, 0.5),
            (7, 3, 0.5),
            (130, 300, 0.05),
            (300, 130, 0.05),
            (257, 257, 1.0),
            (40, 600, 0.01),
        ] {
            let values = random(rows, cols, density, (rows * 1000 + cols) as u64);
            check_against_reference(&values, rows, cols);
        }
    }

    #[test]
    fn threads_do_not_change_a_bit() {
        let values = random(300, 520, 0.2, 5);
        let matrix = Matrix::f64(&values, 300, 520);
        let scan = scan(&matrix, None);
        for product in [Product::Sparse, Product::Dense] {
            let (one, _, _) = gram(&matrix, &scan, Some(product), false, false);
            let (many, _, _) = gram(&matrix, &scan, Some(product), true, false);
            assert_eq!(one, many, "{product:?}");
        }
        // `gram` spreads only long sparse products; the split itself, on a short one.
        let sparse = Sparse::new(&matrix, &scan).unwrap();
        assert_eq!(sparse_stats(&sparse, false), sparse_stats(&sparse, true));
    }

    #[test]
    fn a_transposed_copy_gets_the_same_bits() {
        // A Flax kernel (in, out) holds the transpose of the PyTorch (out, in) matrix.
        for (rows, cols, density) in [(40, 40, 0.3), (40, 40, 1.0), (30, 50, 0.2), (50, 30, 1.0)] {
            let values = random(rows, cols, density, 11);
            let mut transpose = vec![0.0; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    transpose[c * rows + r] = values[r * cols + c];
                }
            }
            let torch = Matrix::f64(&values, rows, cols);
            let flax = Matrix::f64(&transpose, cols, rows).transposed(true);
            let (a, b) = (scan(&torch, None), scan(&flax, None));
            assert_eq!((&a.row_nnz, &a.col_nnz), (&b.col_nnz, &b.row_nnz));
            for product in [Product::Sparse, Product::Dense] {
                assert_eq!(
                    gram(&torch, &a, Some(product), false, false).0,
                    gram(&flax, &b, Some(product), false, false).0,
                    "{rows}x{cols} {product:?}"
                );
            }
        }
    }

    #[test]
    fn stored_bytes_read_as_their_values() {
        let values = random(20, 50, 0.3, 9);
        let f32s: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let bytes: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
        let widened: Vec<f64> = f32s.iter().map(|&v| f64::from(v)).collect();
        for (rows, cols) in [(20, 50), (50, 20)] {
            let stored = Matrix::stored(&bytes, Dtype::F32, rows, cols);
            let plain = Matrix::f64(&widened, rows, cols);
            let (a, b) = (scan(&stored, None), scan(&plain, None));
            assert_eq!(
                (a.nnz, &a.row_nnz, &a.col_nnz),
                (b.nnz, &b.row_nnz, &b.col_nnz)
            );
            for product in [Product::Sparse, Product::Dense] {
                assert_eq!(
                    gram(&stored, &a, Some(product), false, false).0,
                    gram(&plain, &b, Some(product), false, false).0
                );
            }
        }
    }

    /// `values` stored as `dtype` (row-major), and the values the bytes hold.
    fn stored(values: &[f64], rows: usize, cols: usize, dtype: Dtype) -> (Vec<u8>, Vec<f64>) {
        use crate::tensor::{Grid, Order, write_all};
        let grid = Grid::new(rows, cols, Order::RowMajor, values.to_vec());
        let mut bytes = Vec::new();
        write_all(&grid, dtype, &mut bytes).unwrap();
        let held = bytes
            .chunks_exact(dtype.size())
            .map(|b| decode(dtype, b))
            .collect();
        (bytes, held)
    }

    #[test]
    fn nonzero_bits_are_the_elements_tests() {
        let values = random(1, 300, 0.3, 21);
        let mask: Vec<u8> = values.iter().map(|&v| u8::from(v > 0.5)).collect();
        for len in [0, 1, 7, 8, 63, 64] {
            for start in [0, 5, 64, 200] {
                let chunk = &values[start..start + len];
                let want: u64 = (0..len).map(|i| u64::from(chunk[i] != 0.0) << i).sum();
                assert_eq!(nonzero_bits(chunk), want, "{start} {len}");
                let mask = &mask[start..start + len];
                let want: u64 = (0..len).map(|i| u64::from(mask[i] == 0) << i).sum();
                assert_eq!(zero_bits(mask), want, "{start} {len}");
            }
        }
    }

    #[test]
    fn the_scan_counts_what_a_plain_loop_counts_in_every_dtype() {
        // Whole words of 64 and the tails after them; zeros of both signs, a NaN and an
        // infinity; a mask that misses some weights.
        for (rows, cols) in [(3, 200), (130, 64), (70, 129), (129, 70)] {
            let mut values = random(rows, cols, 0.15, (rows * cols) as u64);
            values[1] = -0.0;
            values[cols + 3] = f64::NAN;
            values[rows * cols - 2] = f64::INFINITY;
            let flips = random(rows, cols, 0.05, 77);
            for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::F64] {
                let (bytes, held) = stored(&values, rows, cols, dtype);
                let mask: Vec<u8> = held
                    .iter()
                    .zip(&flips)
                    .map(|(&v, &f)| u8::from((v != 0.0) == (f == 0.0)))
                    .collect();
                for transposed in [false, true] {
                    let matrix = Matrix::stored(&bytes, dtype, rows, cols).transposed(transposed);
                    let got = scan(&matrix, Some(&mask));
                    let mut row_nnz = vec![0u64; rows];
                    let mut col_nnz = vec![0u64; cols];
                    let (mut outside, mut first) = (0u64, None::<(usize, f64)>);
                    for r in 0..rows {
                        for c in 0..cols {
                            let v = held[r * cols + c];
                            if v != 0.0 {
                                row_nnz[r] += 1;
                                col_nnz[c] += 1;
                                if mask[r * cols + c] == 0 {
                                    outside += 1;
                                    let at = if transposed {
                                        c * rows + r
                                    } else {
                                        r * cols + c
                                    };
                                    if first.is_none_or(|(f, _)| at < f) {
                                        first = Some((at, v));
                                    }
                                }
                            }
                        }
                    }
                    let what = format!("{rows}x{cols} {dtype:?} transposed={transposed}");
                    assert_eq!(got.row_nnz, row_nnz, "{what}");
                    assert_eq!(got.col_nnz, col_nnz, "{what}");
                    assert_eq!(got.nnz, row_nnz.iter().sum::<u64>(), "{what}");
                    assert!(got.non_finite, "{what}");
                    assert_eq!(got.outside, outside, "{what}");
                    assert!(outside > 0, "{what}");
                    let (g, f) = (got.first_outside.unwrap(), first.unwrap());
                    assert_eq!(g.0, f.0, "{what}");
                    assert!(g.1 == f.1 || (g.1.is_nan() && f.1.is_nan()), "{what}");
                }
            }
        }
    }

    #[test]
    fn narrow_values_give_the_bits_of_wide_ones() {
        // f32, bf16 and f16 matrices are held as f32 by both products, their f64 copies as
        // f64: every product of two is exact in f64, so the sums have the same bits.
        for (rows, cols, density) in [(130, 300, 0.05), (300, 130, 0.05), (70, 129, 1.0)] {
            let values = random(rows, cols, density, 3);
            for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
                let (bytes, held) = stored(&values, rows, cols, dtype);
                let narrow = Matrix::stored(&bytes, dtype, rows, cols);
                let wide = Matrix::f64(&held, rows, cols);
                assert!(narrow.narrow() && !wide.narrow());
                let (a, b) = (scan(&narrow, None), scan(&wide, None));
                for product in [Product::Sparse, Product::Dense] {
                    let (x, kept_x, _) = gram(&narrow, &a, Some(product), false, true);
                    let (y, kept_y, _) = gram(&wide, &b, Some(product), false, true);
                    assert_eq!(x, y, "{rows}x{cols} {dtype:?} {product:?}");
                    assert_eq!(
                        kept_x.unwrap().matrix().into_owned(),
                        kept_y.unwrap().matrix().into_owned()
                    );
                }
            }
        }
    }

    #[test]
    fn the_sparse_gram_times_a_vector_is_the_dense_one() {
        for (rows, cols) in [(130, 300), (300, 130)] {
            let values = random(rows, cols, 0.05, 8);
            let matrix = Matrix::f64(&values, rows, cols);
            let s = scan(&matrix, None);
            let sparse = Sparse::new(&matrix, &s).unwrap();
            let g = dense_gram(&matrix, false);
            let n = sparse.n;
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let (mut y, mut z) = (vec![0.0; n], vec![0.0; sparse.m]);
            sparse.gram_times(&x, &mut y, &mut z);
            for (a, &ya) in y.iter().enumerate() {
                // G's lower triangle holds the entries; the upper one is read by symmetry.
                let want: f64 = (0..n).map(|b| g[(a.max(b), a.min(b))] * x[b]).sum();
                assert!(
                    (ya - want).abs() < 1e-12 * (1.0 + want.abs()),
                    "{rows}x{cols} {a}"
                );
            }
        }
    }

    #[test]
    fn clearing_the_vector_state_is_safe_from_any_thread() {
        // From the main thread and from inside rayon's pool, which broadcasts to itself.
        crate::measure::clean_vector_state(Par::rayon(0));
        (0..4)
            .into_par_iter()
            .for_each(|_| crate::measure::clean_vector_state(Par::rayon(0)));
        crate::measure::clean_vector_state(Par::Seq);
    }

    #[test]
    fn a_mask_finds_the_first_weight_outside_it_in_either_order() {
        // 2 x 3: nonzeros at (0, 2) and (1, 0) outside the mask.
        let values = [1.0, 0.0, 2.0, 3.0, 4.0, 0.0];
        let mask = [1, 0, 0, 0, 1, 1];
        let matrix = Matrix::f64(&values, 2, 3);
        let s = scan(&matrix, Some(&mask));
        assert_eq!((s.outside, s.first_outside), (2, Some((2, 2.0))));
        // Read as the transpose (3 x 2): (1, 0) comes first, at 0 * 2 + 1.
        let s = scan(&matrix.transposed(true), Some(&mask));
        assert_eq!((s.outside, s.first_outside), (2, Some((1, 3.0))));
        assert_eq!(s.row_nnz, [2, 2]);
        assert_eq!(s.col_nnz, [2, 1, 1]);
    }

    #[test]
    fn deviation_and_frobenius_follow_the_entries() {
        // A = [[1, 0.5], [0, 1]]: G = A A^T = [[1.25, 0.5], [0.5, 1]].
        let values = [1.0, 0.5, 0.0, 1.0];
        let matrix = Matrix::f64(&values, 2, 2);
        let s = scan(&matrix, None);
        for product in [Product::Sparse, Product::Dense] {
            let (stats, _, _) = gram(&matrix, &s, Some(product), false, false);
            assert!((stats.deviation(1.0) - 0.5).abs() < 1e-15);
            let want = (0.25f64 * 0.25 + 2.0 * 0.25).sqrt() / 2f64.sqrt();
            assert!((stats.relative_frobenius(1.0) - want).abs() < 1e-15);
            assert!((stats.mean_diagonal() - 1.125).abs() < 1e-15);
        }
        let nan = [f64::NAN, 0.0, 0.0, 1.0];
        let matrix = Matrix::f64(&nan, 2, 2);
        let s = scan(&matrix, None);
        assert!(s.non_finite);
        for product in [Product::Sparse, Product::Dense] {
            assert!(
                gram(&matrix, &s, Some(product), false, false)
                    .0
                    .deviation(1.0)
                    .is_nan()
            );
        }
    }

    #[test]
    fn the_cheaper_product_is_chosen() {
        let sparse = random(512, 512, 0.02, 1);
        let m = Matrix::f64(&sparse, 512, 512);
        assert!(sparse_is_cheaper(&m, &scan(&m, None)));
        let dense = random(512, 512, 1.0, 2);
        let m = Matrix::f64(&dense, 512, 512);
        assert!(!sparse_is_cheaper(&m, &scan(&m, None)));
    }
}

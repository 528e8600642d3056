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
use crate::read::decode_into;

/// Columns of A converted to f64 at a time by the dense product.
pub const PANEL: usize = 256;

/// Columns of G per task of the dense product: a fixed split, so that each entry is computed
/// by the same sequential product whatever the number of threads.
pub const BAND: usize = 128;

/// Rows of G per task of the sparse product.
const SPARSE_ROWS: usize = 64;

/// Rows of G accumulated together by the sparse product (32 x n f64: 512 KiB at n = 2048).
const ROW_BLOCK: usize = 32;

/// Relative cost of one sparse multiply-add (an indexed load and a scattered add) against one
/// of faer's dense multiply-adds, measured on this project's machine (see
/// docs/guide.md, "Performance"): the sparse product is chosen when `SPARSE_COST * sum over
/// columns of nnz^2 < n^2 m`.
pub const SPARSE_COST: f64 = 24.0;

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

    /// Elements `from..to` of the row-major order, as f64: a slice of the values, or
    /// decoded into `buf` (which must hold `to - from` values).
    fn span<'s>(&'s self, from: usize, to: usize, buf: &'s mut [f64]) -> &'s [f64] {
        match self.elements {
            Elements::F64(v) => &v[from..to],
            Elements::Stored { bytes, dtype } => {
                let size = dtype.size();
                let out = &mut buf[..to - from];
                decode_into(dtype, &bytes[from * size..to * size], out);
                out
            }
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
    let transposed = matrix.transposed;
    let (rows, cols) = (matrix.rows, matrix.cols);
    let mut scan = Scan {
        row_nnz: vec![0; rows],
        col_nnz: vec![0; cols],
        ..Scan::default()
    };
    let mut buf = vec![0.0; cols];
    for r in 0..rows {
        let row = matrix.span(r * cols, (r + 1) * cols, &mut buf);
        let mut count = 0u64;
        for (c, &v) in row.iter().enumerate() {
            if v != 0.0 {
                count += 1;
                scan.col_nnz[c] += 1;
                if !v.is_finite() {
                    scan.non_finite = true;
                }
                if let Some(mask) = mask
                    && mask[r * cols + c] == 0
                {
                    scan.outside += 1;
                    let at = if transposed {
                        c * rows + r
                    } else {
                        r * cols + c
                    };
                    if scan.first_outside.is_none_or(|(first, _)| at < first) {
                        scan.first_outside = Some((at, v));
                    }
                }
            }
        }
        scan.row_nnz[r] = count;
        scan.nnz += count;
    }
    scan
}

/// The nonzeros of the short-wide orientation A (n x m, n <= m) of a matrix, by row (CSR)
/// and by column (CSC), with indices in increasing order.
#[derive(Clone, Debug)]
pub struct Sparse {
    pub n: usize,
    pub m: usize,
    row_start: Vec<usize>,
    row_index: Vec<u32>,
    row_value: Vec<f64>,
    col_start: Vec<usize>,
    col_index: Vec<u32>,
    col_value: Vec<f64>,
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

impl Sparse {
    /// The nonzeros of `matrix`, whose per-row and per-column counts `scan` found. `None`
    /// when a dimension does not fit the u32 indices.
    pub fn new(matrix: &Matrix<'_>, scan: &Scan) -> Option<Sparse> {
        let (rows, cols) = (matrix.rows, matrix.cols);
        if rows > u32::MAX as usize || cols > u32::MAX as usize {
            return None;
        }
        let nnz = scan.nnz as usize;
        // By stored row (CSR of the stored matrix) and by stored column (CSC).
        let by_row = starts(&scan.row_nnz);
        let by_col = starts(&scan.col_nnz);
        let mut row_index = vec![0u32; nnz];
        let mut row_value = vec![0.0; nnz];
        let mut col_index = vec![0u32; nnz];
        let mut col_value = vec![0.0; nnz];
        let mut col_fill: Vec<usize> = by_col[..cols].to_vec();
        let mut buf = vec![0.0; cols];
        let mut at = 0;
        for r in 0..rows {
            let row = matrix.span(r * cols, (r + 1) * cols, &mut buf);
            for (c, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    row_index[at] = c as u32;
                    row_value[at] = v;
                    at += 1;
                    let k = col_fill[c];
                    col_index[k] = r as u32;
                    col_value[k] = v;
                    col_fill[c] += 1;
                }
            }
        }
        let (n, m) = matrix.gram_dims();
        Some(if !matrix.a_is_transpose() {
            Sparse {
                n,
                m,
                row_start: by_row,
                row_index,
                row_value,
                col_start: by_col,
                col_index,
                col_value,
            }
        } else {
            // A is the transpose: its rows are the stored columns.
            Sparse {
                n,
                m,
                row_start: by_col,
                row_index: col_index,
                row_value: col_value,
                col_start: by_row,
                col_index: row_index,
                col_value: row_value,
            }
        })
    }

    /// Nonzeros.
    pub fn nnz(&self) -> usize {
        self.row_value.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.nnz() * 24 + (self.n + self.m + 2) * 8
    }

    /// Row a of A: column indices and values.
    fn row(&self, a: usize) -> (&[u32], &[f64]) {
        let (s, e) = (self.row_start[a], self.row_start[a + 1]);
        (&self.row_index[s..e], &self.row_value[s..e])
    }

    /// Column k of A: row indices and values.
    fn col(&self, k: usize) -> (&[u32], &[f64]) {
        let (s, e) = (self.col_start[k], self.col_start[k + 1]);
        (&self.col_index[s..e], &self.col_value[s..e])
    }

    /// `y = A A^T x` (`x`, `y` of length n), through `z` of length m, in a fixed order.
    pub fn gram_times(&self, x: &[f64], y: &mut [f64], z: &mut [f64]) {
        z.iter_mut().for_each(|v| *v = 0.0);
        for (a, &xa) in x.iter().enumerate() {
            let (index, value) = self.row(a);
            for (&k, &v) in index.iter().zip(value) {
                z[k as usize] += v * xa;
            }
        }
        for (a, ya) in y.iter_mut().enumerate() {
            let (index, value) = self.row(a);
            *ya = index
                .iter()
                .zip(value)
                .map(|(&k, &v)| v * z[k as usize])
                .sum();
        }
    }

    /// Rows `from..to` of G's lower triangle, each given to `row` as (a, the nonzero entries
    /// `(b, G_ab)` for b < a in increasing b, G_aa). Rows are accumulated densely, a block of
    /// [`ROW_BLOCK`] at a time: the block's nonzeros `A_ak` are taken in increasing k (then
    /// a), each adding `A_ak` times the part of column k above and on the diagonal to row a,
    /// so a column is read once for every row of the block that has it, and each entry is
    /// summed over k in increasing order (the same bits as row by row).
    fn gram_rows(
        &self,
        from: usize,
        to: usize,
        mut row: impl FnMut(usize, &mut dyn Iterator<Item = (usize, f64)>, f64),
    ) {
        let n = self.n;
        let mut acc = vec![0.0f64; ROW_BLOCK * n];
        let mut entries: Vec<(u32, u32, f64)> = Vec::new();
        let mut r0 = from;
        while r0 < to {
            let r1 = (r0 + ROW_BLOCK).min(to);
            entries.clear();
            for a in r0..r1 {
                let (index, value) = self.row(a);
                entries.extend(index.iter().zip(value).map(|(&k, &v)| (k, a as u32, v)));
            }
            entries.sort_unstable_by_key(|&(k, a, _)| (k, a));
            for &(k, a, v) in &entries {
                let a = a as usize;
                let (rows, values) = self.col(k as usize);
                let len = rows.partition_point(|&b| b as usize <= a);
                let upto = &mut acc[(a - r0) * n..(a - r0) * n + a + 1];
                for (&b, &u) in rows[..len].iter().zip(&values[..len]) {
                    upto[b as usize] += v * u;
                }
            }
            for a in r0..r1 {
                let upto = &mut acc[(a - r0) * n..(a - r0) * n + a + 1];
                let (off, diagonal) = upto.split_at_mut(a);
                let mut found = off
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| **g != 0.0)
                    .map(|(b, &g)| (b, g));
                row(a, &mut found, diagonal[0]);
                upto.fill(0.0);
            }
            r0 = r1;
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
            for (b, v) in off {
                g[(a, b)] = v;
                g[(b, a)] = v;
            }
        });
        g
    }
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
    fn add_row(&mut self, a: usize, off: &mut dyn Iterator<Item = (usize, f64)>, diagonal: f64) {
        self.diagonal[a] = diagonal;
        for (_, v) in off {
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
/// `parallel` spreads one matrix over the threads; the numbers are the same either way.
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
        // The panel is columns k0..k0+kb of A, n rows of kb values: the same layout
        // whichever way the matrix is stored, so that a transposed copy gets the same bits.
        if !matrix.a_is_transpose() {
            // A is the matrix: kb values of every row.
            for a in 0..n {
                let from = a * cols + k0;
                let part = matrix.span(from, from + kb, &mut decoded);
                buf[a * kb..(a + 1) * kb].copy_from_slice(part);
            }
        } else {
            // A is the transpose: rows k0..k0+kb of the matrix, each a column of the panel.
            for k in 0..kb {
                let from = (k0 + k) * cols;
                let part = matrix.span(from, from + cols, &mut decoded);
                for (a, &v) in part.iter().enumerate() {
                    buf[a * kb + k] = v;
                }
            }
        }
        let panel = MatRef::from_row_major_slice(&buf[..n * kb], n, kb);
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

//! Tensors on their way out: the f64 grids and support bitsets that the schemes make, the
//! output dtypes, and the one place where values become bytes. Every tensor is read as
//! blocks of rows in row-major order ([`RowBlocks`]), so it can be encoded in pieces, in
//! parallel, straight into the output, without a second copy of the whole tensor.

use std::io::{self, Write};
use std::sync::Mutex;

use crate::layer::Dtype;

/// How a [`Grid`] or [`BitGrid`] stores its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Element (i, j) at `i * cols + j`.
    RowMajor,
    /// Element (i, j) at `j * rows + i`: the layout EOI works in, one contiguous column
    /// per Givens-rotated column.
    ColumnMajor,
}

/// Buffers at least this large are recycled across layers and backed by huge pages.
const LARGE: usize = 4 << 20;

/// Large working buffers returned by finished layers, for the next layers to reuse.
///
/// Fresh memory is expensive: the kernel must find, zero and map every page on first touch,
/// and on the virtual machines this was measured on that cost more than all the rotations
/// (4.5 of 10 s for a 50304 x 2048 layer). Reusing a buffer costs one memset. The pool keeps
/// at most one buffer per worker thread, so memory stays bounded by threads x largest layer.
static POOL: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());

/// A zeroed buffer of `len` doubles: a recycled one when one is large enough, otherwise a
/// fresh allocation that asks Linux for transparent huge pages before its first touch.
pub fn zeroed(len: usize) -> Vec<f64> {
    let bytes = len * std::mem::size_of::<f64>();
    if bytes >= LARGE {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..pool.len())
            .filter(|&k| pool[k].capacity() >= len)
            .min_by_key(|&k| pool[k].capacity());
        if let Some(k) = best {
            let mut values = pool.swap_remove(k);
            drop(pool);
            values.clear();
            values.resize(len, 0.0);
            return values;
        }
    }
    let values = vec![0.0f64; len];
    #[cfg(target_os = "linux")]
    if bytes >= LARGE {
        const HUGE: usize = 2 << 20;
        let start = values.as_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + bytes) / HUGE * HUGE;
        if end > aligned {
            // SAFETY: the range lies inside the allocation we own and no reference into it
            // is alive; MADV_HUGEPAGE only changes how the kernel backs untouched pages, not
            // their contents. A failure (THP disabled) is harmless and ignored.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    values
}

/// Returns a finished layer's buffer for reuse by [`zeroed`].
pub fn recycle(values: Vec<f64>) {
    if values.capacity() * std::mem::size_of::<f64>() < LARGE {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.push(values);
    let keep = rayon::current_num_threads();
    if pool.len() > keep {
        // Drop the smallest buffers: the largest serve every layer.
        pool.sort_by_key(|v| std::cmp::Reverse(v.capacity()));
        pool.truncate(keep);
    }
}

/// A tensor seen as `rows()` rows of `row_len()` elements, readable a block of rows at a time.
pub trait RowBlocks: Sync {
    type Elem: Element;

    fn rows(&self) -> usize;

    fn row_len(&self) -> usize;

    /// Element (i, j) of the row-major view: row `i`, position `j` within the row.
    fn get(&self, i: usize, j: usize) -> Self::Elem;

    /// Appends rows `first..first + count`, row-major, to `out`.
    fn rows_into(&self, first: usize, count: usize, out: &mut Vec<Self::Elem>);

    /// How many rows to encode at a time as `dtype`: about 1 MiB of output by default.
    fn block_rows(&self, dtype: Dtype) -> usize {
        ((1 << 20) / (self.row_len() * dtype.size()).max(1)).max(1)
    }

    /// Appends rows `first..first + count` encoded as `dtype` to `out`. The default reads
    /// the rows into `scratch` and encodes them; grids encode straight from their storage.
    fn encode_rows(
        &self,
        first: usize,
        count: usize,
        dtype: Dtype,
        scratch: &mut Vec<Self::Elem>,
        out: &mut Vec<u8>,
    ) {
        scratch.clear();
        self.rows_into(first, count, scratch);
        Self::Elem::encode(scratch, dtype, out);
    }
}

/// A dense rows x cols matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid<T> {
    rows: usize,
    cols: usize,
    order: Order,
    data: Vec<T>,
}

impl<T: Copy + Default> Grid<T> {
    /// Wraps `data`, which must hold `rows * cols` elements in `order`.
    pub fn new(rows: usize, cols: usize, order: Order, data: Vec<T>) -> Grid<T> {
        assert_eq!(
            data.len(),
            rows * cols,
            "grid data does not match its shape"
        );
        Grid {
            rows,
            cols,
            order,
            data,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element (i, j).
    pub fn get(&self, i: usize, j: usize) -> T {
        match self.order {
            Order::RowMajor => self.data[i * self.cols + j],
            Order::ColumnMajor => self.data[j * self.rows + i],
        }
    }

    /// Appends rows `first..first + count` in row-major order; column-major storage is read
    /// one contiguous run of `count` elements per column.
    fn copy_rows(&self, first: usize, count: usize, out: &mut Vec<T>) {
        match self.order {
            Order::RowMajor => {
                out.extend_from_slice(&self.data[first * self.cols..(first + count) * self.cols]);
            }
            Order::ColumnMajor => {
                let start = out.len();
                out.resize(start + count * self.cols, T::default());
                let block = &mut out[start..];
                // Tiles of TILE columns: each row of the tile is written contiguously while
                // the TILE column runs are read in step, so both sides stay in cache.
                for j0 in (0..self.cols).step_by(TILE) {
                    let width = TILE.min(self.cols - j0);
                    for i in 0..count {
                        let row = &mut block[i * self.cols + j0..i * self.cols + j0 + width];
                        for (t, slot) in row.iter_mut().enumerate() {
                            *slot = self.data[(j0 + t) * self.rows + first + i];
                        }
                    }
                }
            }
        }
    }
}

/// Width of the column tiles in which column-major storage is transposed.
const TILE: usize = 16;

impl<T: Element> RowBlocks for Grid<T> {
    type Elem = T;

    fn rows(&self) -> usize {
        self.rows
    }

    fn row_len(&self) -> usize {
        self.cols
    }

    fn get(&self, i: usize, j: usize) -> T {
        Grid::get(self, i, j)
    }

    fn rows_into(&self, first: usize, count: usize, out: &mut Vec<T>) {
        self.copy_rows(first, count, out);
    }

    fn encode_rows(
        &self,
        first: usize,
        count: usize,
        dtype: Dtype,
        _: &mut Vec<T>,
        out: &mut Vec<u8>,
    ) {
        match self.order {
            Order::RowMajor => T::encode(
                &self.data[first * self.cols..(first + count) * self.cols],
                dtype,
                out,
            ),
            Order::ColumnMajor => {
                T::encode_transposed(&self.data, self.rows, self.cols, first, count, dtype, out)
            }
        }
    }
}

/// A 0/1 matrix stored as bitsets: for [`Order::RowMajor`] one bitset per row, for
/// [`Order::ColumnMajor`] one per column (EOI's support, one bitset per rotated column).
#[derive(Clone, Debug, PartialEq)]
pub struct BitGrid {
    rows: usize,
    cols: usize,
    order: Order,
    /// u64 words per stored line (row or column).
    words: usize,
    bits: Vec<u64>,
}

impl BitGrid {
    /// Wraps bitsets of `words` u64 per line; bit `k` of line `l` is word `l * words + k / 64`,
    /// bit `k % 64`.
    pub fn new(rows: usize, cols: usize, order: Order, words: usize, bits: Vec<u64>) -> BitGrid {
        let (lines, length) = match order {
            Order::RowMajor => (rows, cols),
            Order::ColumnMajor => (cols, rows),
        };
        assert!(words >= length.div_ceil(64), "bit lines are too short");
        assert_eq!(
            bits.len(),
            lines * words,
            "bit grid data does not match its shape"
        );
        BitGrid {
            rows,
            cols,
            order,
            words,
            bits,
        }
    }

    pub fn get(&self, i: usize, j: usize) -> bool {
        let (line, k) = match self.order {
            Order::RowMajor => (i, j),
            Order::ColumnMajor => (j, i),
        };
        self.bits[line * self.words + k / 64] >> (k % 64) & 1 == 1
    }
}

impl RowBlocks for BitGrid {
    type Elem = u8;

    fn rows(&self) -> usize {
        self.rows
    }

    fn row_len(&self) -> usize {
        self.cols
    }

    fn get(&self, i: usize, j: usize) -> u8 {
        u8::from(BitGrid::get(self, i, j))
    }

    fn rows_into(&self, first: usize, count: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + count * self.cols, 0);
        let block = &mut out[start..];
        match self.order {
            Order::RowMajor => {
                for (i, row) in block.chunks_exact_mut(self.cols).enumerate() {
                    let line = &self.bits[(first + i) * self.words..(first + i + 1) * self.words];
                    for (j, b) in row.iter_mut().enumerate() {
                        *b = (line[j / 64] >> (j % 64) & 1) as u8;
                    }
                }
            }
            Order::ColumnMajor => {
                // The word that holds row k in every column, gathered once per 64 rows: each
                // row is then one shift and mask per column, which the compiler vectorises.
                let mut column_words = Vec::with_capacity(self.cols);
                let mut current = usize::MAX;
                for (i, row) in block.chunks_exact_mut(self.cols).enumerate() {
                    let k = first + i;
                    let (word, bit) = (k / 64, k % 64);
                    if word != current {
                        column_words.clear();
                        column_words
                            .extend((0..self.cols).map(|j| self.bits[j * self.words + word]));
                        current = word;
                    }
                    for (b, &w) in row.iter_mut().zip(&column_words) {
                        *b = (w >> bit & 1) as u8;
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Each thread's block of a [`Weight::Computed`] matrix, kept from block to block and layer
    /// to layer: a fresh megabyte-sized buffer would be mapped, zeroed by the kernel page by
    /// page and unmapped again every time.
    static BLOCK: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A matrix whose rows are computed when they are encoded, a block of rows at a time, so
/// the whole matrix never exists in memory (EOI's wide and square matrices, which replay
/// their rotations for each block).
pub trait ComputedRows: std::fmt::Debug + Send + Sync {
    /// Rows of the matrix.
    fn rows(&self) -> usize;

    /// Columns of the matrix.
    fn cols(&self) -> usize;

    /// Computes rows `first..first + count` into `block`, column-major: entry
    /// (first + t, j) at `j * count + t`.
    fn compute(&self, first: usize, count: usize, block: &mut Vec<f64>);
}

/// A layer's weight values, in PyTorch layout, as the scheme made them.
#[derive(Clone, Debug)]
pub enum Weight {
    /// A linear layer's (out, in) matrix.
    Matrix(Grid<f64>),
    /// A convolution kernel (out, in, taps) that is zero everywhere except at the centre
    /// tap `tap` (an index into the flattened spatial dimensions), which holds `centre`.
    CentreTap {
        centre: Grid<f64>,
        taps: usize,
        tap: usize,
    },
    /// A matrix computed a block of rows at a time as it is encoded.
    Computed(std::sync::Arc<dyn ComputedRows>),
}

impl Weight {
    /// The f64 buffer behind the weight, for [`recycle`].
    pub fn into_values(self) -> Vec<f64> {
        match self {
            Weight::Matrix(grid) | Weight::CentreTap { centre: grid, .. } => grid.data,
            Weight::Computed(_) => Vec::new(),
        }
    }
}

impl RowBlocks for Weight {
    type Elem = f64;

    fn rows(&self) -> usize {
        match self {
            Weight::Matrix(grid) | Weight::CentreTap { centre: grid, .. } => grid.rows,
            Weight::Computed(rows) => rows.rows(),
        }
    }

    /// Rows of the tensor flattened to (out, in * taps).
    fn row_len(&self) -> usize {
        match self {
            Weight::Matrix(grid) => grid.cols,
            Weight::CentreTap { centre, taps, .. } => centre.cols * taps,
            Weight::Computed(rows) => rows.cols(),
        }
    }

    fn get(&self, i: usize, j: usize) -> f64 {
        match self {
            Weight::Matrix(grid) => grid.get(i, j),
            Weight::CentreTap { centre, taps, tap } => {
                if j % taps == *tap {
                    centre.get(i, j / taps)
                } else {
                    0.0
                }
            }
            Weight::Computed(rows) => {
                let mut row = Vec::new();
                rows.compute(i, 1, &mut row);
                row[j]
            }
        }
    }

    /// Blocks of whole 64-row words for a rotated matrix, which replays every rotation once
    /// per block; about 1 MiB of output otherwise.
    fn block_rows(&self, dtype: Dtype) -> usize {
        let rows = ((1 << 20) / (self.row_len() * dtype.size()).max(1)).max(1);
        match self {
            Weight::Computed(_) => rows.next_multiple_of(64),
            _ => rows,
        }
    }

    fn encode_rows(
        &self,
        first: usize,
        count: usize,
        dtype: Dtype,
        scratch: &mut Vec<f64>,
        out: &mut Vec<u8>,
    ) {
        match self {
            Weight::Matrix(grid) => grid.encode_rows(first, count, dtype, scratch, out),
            Weight::Computed(rows) => BLOCK.with_borrow_mut(|block| {
                rows.compute(first, count, block);
                f64::encode_transposed(block, count, rows.cols(), 0, count, dtype, out);
            }),
            Weight::CentreTap { .. } => {
                scratch.clear();
                self.rows_into(first, count, scratch);
                f64::encode(scratch, dtype, out);
            }
        }
    }

    fn rows_into(&self, first: usize, count: usize, out: &mut Vec<f64>) {
        match self {
            Weight::Matrix(grid) => grid.copy_rows(first, count, out),
            Weight::Computed(rows) => {
                let mut block = Vec::new();
                rows.compute(first, count, &mut block);
                Grid::new(count, rows.cols(), Order::ColumnMajor, block).copy_rows(0, count, out);
            }
            Weight::CentreTap { centre, taps, tap } => {
                let mut h = Vec::with_capacity(count * centre.cols);
                centre.copy_rows(first, count, &mut h);
                let start = out.len();
                out.resize(start + count * centre.cols * taps, 0.0);
                for (slot, &v) in out[start..].iter_mut().skip(*tap).step_by(*taps).zip(&h) {
                    *slot = v;
                }
            }
        }
    }
}

/// A layer's mask, in the weight's shape flattened to (out, in * taps).
#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    /// EOI's support bitsets (linear layers).
    Bits(BitGrid),
    /// One byte per element, 0 or 1 (convolutions: centre support plus top-up).
    Bytes(Grid<u8>),
}

impl RowBlocks for Mask {
    type Elem = u8;

    fn rows(&self) -> usize {
        match self {
            Mask::Bits(bits) => bits.rows,
            Mask::Bytes(bytes) => bytes.rows,
        }
    }

    fn row_len(&self) -> usize {
        match self {
            Mask::Bits(bits) => bits.cols,
            Mask::Bytes(bytes) => bytes.cols,
        }
    }

    fn get(&self, i: usize, j: usize) -> u8 {
        match self {
            Mask::Bits(bits) => u8::from(bits.get(i, j)),
            Mask::Bytes(bytes) => bytes.get(i, j),
        }
    }

    fn rows_into(&self, first: usize, count: usize, out: &mut Vec<u8>) {
        match self {
            Mask::Bits(bits) => bits.rows_into(first, count, out),
            Mask::Bytes(bytes) => bytes.copy_rows(first, count, out),
        }
    }

    fn encode_rows(
        &self,
        first: usize,
        count: usize,
        dtype: Dtype,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        match self {
            Mask::Bytes(bytes) => bytes.encode_rows(first, count, dtype, scratch, out),
            // Rows of 0/1 bytes are already the BOOL and U8 encodings.
            Mask::Bits(bits) if matches!(dtype, Dtype::Bool | Dtype::U8) => {
                bits.rows_into(first, count, out)
            }
            Mask::Bits(_) => {
                scratch.clear();
                self.rows_into(first, count, scratch);
                u8::encode(scratch, dtype, out);
            }
        }
    }
}

/// A PyTorch-layout tensor (out, in, k...), seen as rows of `row_len() = in * taps`, read in
/// Flax layout (k..., in, out): the same values, permuted. Row `r = t * in + i` of the result
/// (tap `t`, input `i`) holds element (o, i * taps + t) of the PyTorch tensor for every output
/// `o`. This wrapper is the only place the layout is changed; the encoding that follows is
/// the same [`Element::encode`] as for PyTorch layout.
pub struct FlaxView<'a, T> {
    inner: &'a T,
    taps: usize,
}

impl<'a, T: RowBlocks> FlaxView<'a, T> {
    /// Wraps `inner`, whose rows are `row_len() / taps` inputs times `taps` spatial taps.
    pub fn new(inner: &'a T, taps: usize) -> FlaxView<'a, T> {
        assert!(
            taps >= 1 && inner.row_len() % taps == 0,
            "taps do not divide the row"
        );
        FlaxView { inner, taps }
    }
}

impl<T: RowBlocks> RowBlocks for FlaxView<'_, T> {
    type Elem = T::Elem;

    fn rows(&self) -> usize {
        self.inner.row_len()
    }

    fn row_len(&self) -> usize {
        self.inner.rows()
    }

    fn get(&self, r: usize, o: usize) -> T::Elem {
        let inp = self.inner.row_len() / self.taps;
        let (t, i) = (r / inp, r % inp);
        self.inner.get(o, i * self.taps + t)
    }

    fn rows_into(&self, first: usize, count: usize, out: &mut Vec<T::Elem>) {
        let outs = self.inner.rows();
        out.reserve(count * outs);
        for r in first..first + count {
            out.extend((0..outs).map(|o| self.get(r, o)));
        }
    }
}

/// An element that can be written as any output dtype: this is the single place where
/// values are converted to bytes (little-endian).
pub trait Element: Copy + Default + Send + Sync {
    /// Appends `src` encoded as `dtype` to `out`.
    fn encode(src: &[Self], dtype: Dtype, out: &mut Vec<u8>);

    /// Appends rows `first..first + count` of the column-major `rows x cols` matrix `data`,
    /// encoded as `dtype` in row-major order: transposition and encoding in one pass.
    fn encode_transposed(
        data: &[Self],
        rows: usize,
        cols: usize,
        first: usize,
        count: usize,
        dtype: Dtype,
        out: &mut Vec<u8>,
    );
}

/// The one transposing encoder: tiles of TILE columns, each tile row written contiguously
/// while the tile's column runs are read in step, so both sides stay in cache.
fn transpose_into<T: Copy, const N: usize>(
    data: &[T],
    (rows, cols): (usize, usize),
    (first, count): (usize, usize),
    out: &mut Vec<u8>,
    bytes: impl Fn(T) -> [u8; N],
) {
    let start = out.len();
    out.resize(start + count * cols * N, 0);
    let block = &mut out[start..];
    for j0 in (0..cols).step_by(TILE) {
        let width = TILE.min(cols - j0);
        for i in 0..count {
            let row = &mut block[(i * cols + j0) * N..(i * cols + j0 + width) * N];
            for (t, slot) in row.chunks_exact_mut(N).enumerate() {
                slot.copy_from_slice(&bytes(data[(j0 + t) * rows + first + i]));
            }
        }
    }
}

/// [`transpose_into`] from f64 to little-endian f32, a zero of either sign stored as +0.0:
/// 4 x 4 tiles at a time with AVX2 where the processor has it. The vector conversion rounds
/// to nearest, ties to even, as `as f32` does, so both give the same bits.
fn transpose_to_f32(data: &[f64], shape: (usize, usize), range: (usize, usize), out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let start = out.len();
        out.resize(start + range.1 * shape.1 * 4, 0);
        // SAFETY: the processor supports AVX2, checked just above.
        unsafe { transpose_to_f32_avx2(data, shape, range, &mut out[start..]) };
        return;
    }
    transpose_into(data, shape, range, out, |x| {
        ((x + 0.0) as f32).to_le_bytes()
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transpose_to_f32_avx2(
    data: &[f64],
    (rows, cols): (usize, usize),
    (first, count): (usize, usize),
    out: &mut [u8],
) {
    use std::arch::x86_64::*;
    assert!(first + count <= rows && data.len() >= rows * cols);
    assert_eq!(out.len(), count * cols * 4);
    let element = |i: usize, j: usize| ((data[j * rows + first + i] + 0.0) as f32).to_le_bytes();
    let (whole_rows, whole_cols) = (count / 4 * 4, cols / 4 * 4);
    let zero = _mm256_setzero_pd();
    // Columns outside, rows inside: the four column runs are read front to back, and the
    // tile rows written land in the same few dozen cache lines of the output until they fill.
    for j0 in (0..whole_cols).step_by(4) {
        for i0 in (0..whole_rows).step_by(4) {
            // Columns j0..j0+4 of rows i0..i0+4: four contiguous runs of four doubles.
            let mut c = [_mm_setzero_ps(); 4];
            for (k, v) in c.iter_mut().enumerate() {
                let at = (j0 + k) * rows + first + i0;
                let run = &data[at..at + 4];
                // SAFETY: `run` holds the four doubles read.
                let x = unsafe { _mm256_loadu_pd(run.as_ptr()) };
                *v = _mm256_cvtpd_ps(_mm256_add_pd(x, zero));
            }
            let t0 = _mm_unpacklo_ps(c[0], c[1]);
            let t1 = _mm_unpacklo_ps(c[2], c[3]);
            let t2 = _mm_unpackhi_ps(c[0], c[1]);
            let t3 = _mm_unpackhi_ps(c[2], c[3]);
            let r = [
                _mm_movelh_ps(t0, t1),
                _mm_movehl_ps(t1, t0),
                _mm_movelh_ps(t2, t3),
                _mm_movehl_ps(t3, t2),
            ];
            for (k, row) in r.iter().enumerate() {
                let at = ((i0 + k) * cols + j0) * 4;
                let slot = &mut out[at..at + 16];
                // SAFETY: `slot` holds the 16 bytes written.
                unsafe { _mm_storeu_ps(slot.as_mut_ptr().cast(), *row) };
            }
        }
    }
    for i in 0..count {
        let ragged = if i < whole_rows { whole_cols } else { 0 };
        for j in ragged..cols {
            out[(i * cols + j) * 4..][..4].copy_from_slice(&element(i, j));
        }
    }
}

/// Appends `src.len() * N` bytes to `out`, each element's bytes from `bytes`.
fn append<T: Copy, const N: usize>(src: &[T], out: &mut Vec<u8>, bytes: impl Fn(T) -> [u8; N]) {
    let start = out.len();
    out.resize(start + src.len() * N, 0);
    for (slot, &x) in out[start..].chunks_exact_mut(N).zip(src) {
        slot.copy_from_slice(&bytes(x));
    }
}

/// `x` rounded to f32 "to odd": truncated toward zero, and when that was inexact the last
/// bit of the significand set. Rounding to odd first and to nearest-even second gives the
/// correctly rounded result whenever the first format has at least two more significand bits
/// than the second (Boldo and Melquiond, 2008): f32 has 24 bits, f16 11 and bf16 8, over the
/// whole range of both, subnormals included. This is how f64 values reach f16 and bf16 with
/// one rounding, not two.
///
/// Why not `half::f16::from_f64` and `half::bf16::from_f64` (half 2.7): on x86 with F16C,
/// `f16::from_f64` converts through `f as f32` (rounding twice), and the portable code of
/// both drops the low 32 bits of the f64 significand before rounding, so a value just above
/// a halfway point rounds down. Their `from_f32` conversions are correctly rounded, in
/// software and in hardware alike.
fn f32_round_to_odd(x: f64) -> f32 {
    let nearest = x as f32;
    if !nearest.is_finite() || f64::from(nearest) == x {
        // Exact, or beyond f32's range: beyond every f16 and bf16 value too, where
        // rounding to nearest gives the same infinity.
        return nearest;
    }
    let bits = nearest.to_bits();
    if bits & 1 == 1 {
        return nearest;
    }
    // An even, inexact result: its odd neighbour on x's side is the truncation with the
    // last bit set (the magnitude is the low 31 bits, so +-1 steps by one unit in the last
    // place, across binades too).
    if f64::from(nearest).abs() > x.abs() {
        f32::from_bits(bits - 1)
    } else {
        f32::from_bits(bits + 1)
    }
}

/// `x` as IEEE binary16 bits, rounded to nearest, ties to even.
fn f16_bits(x: f64) -> [u8; 2] {
    half::f16::from_f32(f32_round_to_odd(x)).to_le_bytes()
}

/// `x` as bfloat16 bits, rounded to nearest, ties to even.
fn bf16_bits(x: f64) -> [u8; 2] {
    half::bf16::from_f32(f32_round_to_odd(x)).to_le_bytes()
}

/// A weight value's bytes as `dtype`. Adding +0.0 turns -0.0 into +0.0: a zero is stored as
/// all-zero bytes whichever way the arithmetic reached it. Bool and u8 store whether the
/// value is nonzero.
macro_rules! encode_f64 {
    ($dtype:expr, $apply:ident, $($args:expr),*) => {
        match $dtype {
            Dtype::F32 => $apply($($args,)* |x: f64| ((x + 0.0) as f32).to_le_bytes()),
            Dtype::F64 => $apply($($args,)* |x: f64| (x + 0.0).to_le_bytes()),
            Dtype::F16 => $apply($($args,)* |x: f64| f16_bits(x + 0.0)),
            Dtype::BF16 => $apply($($args,)* |x: f64| bf16_bits(x + 0.0)),
            Dtype::Bool | Dtype::U8 => $apply($($args,)* |x: f64| [u8::from(x != 0.0)]),
            other => unreachable!("{other} is not written: check_writable guards every encoder"),
        }
    };
}

/// A mask value's (0 or 1) bytes as `dtype`; any nonzero byte counts as 1.
macro_rules! encode_u8 {
    ($dtype:expr, $apply:ident, $($args:expr),*) => {
        match $dtype {
            Dtype::F32 => $apply($($args,)* |x: u8| f32::from(u8::from(x != 0)).to_le_bytes()),
            Dtype::F64 => $apply($($args,)* |x: u8| f64::from(u8::from(x != 0)).to_le_bytes()),
            Dtype::F16 => $apply($($args,)* |x: u8| f16_bits(f64::from(u8::from(x != 0)))),
            Dtype::BF16 => $apply($($args,)* |x: u8| bf16_bits(f64::from(u8::from(x != 0)))),
            Dtype::Bool | Dtype::U8 => $apply($($args,)* |x: u8| [u8::from(x != 0)]),
            other => unreachable!("{other} is not written: check_writable guards every encoder"),
        }
    };
}

impl Element for f64 {
    fn encode(src: &[f64], dtype: Dtype, out: &mut Vec<u8>) {
        encode_f64!(dtype, append, src, out)
    }

    fn encode_transposed(
        data: &[f64],
        rows: usize,
        cols: usize,
        first: usize,
        count: usize,
        dtype: Dtype,
        out: &mut Vec<u8>,
    ) {
        let (shape, range) = ((rows, cols), (first, count));
        match dtype {
            Dtype::F32 => transpose_to_f32(data, shape, range, out),
            _ => encode_f64!(dtype, transpose_into, data, shape, range, out),
        }
    }
}

impl Element for u8 {
    fn encode(src: &[u8], dtype: Dtype, out: &mut Vec<u8>) {
        encode_u8!(dtype, append, src, out)
    }

    fn encode_transposed(
        data: &[u8],
        rows: usize,
        cols: usize,
        first: usize,
        count: usize,
        dtype: Dtype,
        out: &mut Vec<u8>,
    ) {
        let (shape, range) = ((rows, cols), (first, count));
        encode_u8!(dtype, transpose_into, data, shape, range, out)
    }
}

/// The dtypes eoi encodes values in: [`Dtype::WEIGHTS`] and [`Dtype::MASKS`]. Every path
/// that encodes ([`write_all`], `write::write_tensor`) asks this first, so the encoders
/// never see another dtype.
pub fn check_writable(dtype: Dtype) -> io::Result<()> {
    if Dtype::WEIGHTS.contains(&dtype) || Dtype::MASKS.contains(&dtype) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("eoi writes tensors as f32, f64, f16, bf16, bool or u8, not {dtype}"),
        ))
    }
}

/// Writes a whole tensor as `dtype` bytes in row-major order to `out`, a block at a time.
pub fn write_all<T: RowBlocks>(tensor: &T, dtype: Dtype, out: &mut dyn Write) -> io::Result<()> {
    check_writable(dtype)?;
    let step = tensor.block_rows(dtype);
    let mut values = Vec::new();
    let mut bytes = Vec::new();
    for first in (0..tensor.rows()).step_by(step) {
        bytes.clear();
        tensor.encode_rows(
            first,
            step.min(tensor.rows() - first),
            dtype,
            &mut values,
            &mut bytes,
        );
        out.write_all(&bytes)?;
    }
    out.flush()
}

/// Writes a weight as `dtype` bytes in row-major order.
pub fn write_weight(weight: &Weight, dtype: Dtype, out: &mut dyn Write) -> io::Result<()> {
    write_all(weight, dtype, out)
}

/// Writes a mask as `dtype` bytes in row-major order.
pub fn write_mask(mask: &Mask, dtype: Dtype, out: &mut dyn Write) -> io::Result<()> {
    write_all(mask, dtype, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Layout;

    fn all_rows<T: RowBlocks>(t: &T) -> Vec<Vec<T::Elem>> {
        let mut flat = Vec::new();
        t.rows_into(0, t.rows(), &mut flat);
        flat.chunks(t.row_len()).map(|r| r.to_vec()).collect()
    }

    #[test]
    fn only_the_dtypes_eoi_writes_are_encoded() {
        let grid = Grid::new(1, 2, Order::RowMajor, vec![1.0, 0.0]);
        for &dtype in Dtype::ALL {
            let mut out = Vec::new();
            let written = write_all(&grid, dtype, &mut out);
            let writable = Dtype::WEIGHTS.contains(&dtype) || Dtype::MASKS.contains(&dtype);
            assert_eq!(written.is_ok(), writable, "{dtype}");
            assert_eq!(out.len(), if writable { 2 * dtype.size() } else { 0 });
        }
    }

    /// Row-major flat index of `index` in `shape`.
    fn flat(index: &[usize], shape: &[usize]) -> usize {
        index.iter().zip(shape).fold(0, |k, (&i, &d)| k * d + i)
    }

    #[test]
    fn torch_order_undoes_the_flax_layout_element_by_element() {
        for dims in [vec![3, 4], vec![4, 2, 3], vec![3, 2, 2, 3, 2]] {
            let stored = Layout::Flax.shape(&dims);
            let numel: usize = dims.iter().product();
            // Each stored element holds its own flat index in the stored tensor.
            let values: Vec<usize> = (0..numel).collect();
            let torch = Layout::Flax.torch_order(values.clone(), &stored);
            let mut index = vec![0; dims.len()];
            for (k, &v) in torch.iter().enumerate() {
                let mut rest = k;
                for (slot, &d) in index.iter_mut().zip(&dims).rev() {
                    *slot = rest % d;
                    rest /= d;
                }
                // Torch element (o, i, t...) is stored at (t..., i, o).
                assert_eq!(v, flat(&Layout::Flax.shape(&index), &stored), "{dims:?}");
            }
            assert_eq!(Layout::Torch.torch_order(values.clone(), &dims), values);
        }
        // What the writer's FlaxView puts out, read back in PyTorch order, is the original.
        let original: Vec<f64> = (0..24).map(f64::from).collect();
        let grid = Grid::new(4, 6, Order::RowMajor, original.clone());
        let mut written = Vec::new();
        let view = FlaxView::new(&grid, 3);
        view.rows_into(0, view.rows(), &mut written);
        let back = Layout::Flax.torch_order(written, &Layout::Flax.shape(&[4, 2, 3]));
        assert_eq!(back, original);
    }

    #[test]
    fn column_major_rows_come_out_transposed_in_any_block() {
        let (rows, cols) = (37, 5);
        let data: Vec<u32> = (0..rows * cols).map(|k| k as u32).collect();
        let grid = Grid::new(rows, cols, Order::ColumnMajor, data);
        let mut block = Vec::new();
        grid.copy_rows(10, 3, &mut block);
        for i in 0..3 {
            for j in 0..cols {
                assert_eq!(block[i * cols + j], (j * rows + 10 + i) as u32);
            }
        }
    }

    #[test]
    fn bit_grids_read_the_same_in_both_orders() {
        // A 3 x 70 pattern stored as row bitsets and as column bitsets.
        let on = |i: usize, j: usize| (i * 7 + j * 3) % 5 == 0;
        let (rows, cols) = (3, 70);
        let mut by_row = vec![0u64; rows * 2];
        let mut by_col = vec![0u64; cols];
        for i in 0..rows {
            for j in 0..cols {
                if on(i, j) {
                    by_row[i * 2 + j / 64] |= 1 << (j % 64);
                    by_col[j] |= 1 << i;
                }
            }
        }
        let a = BitGrid::new(rows, cols, Order::RowMajor, 2, by_row);
        let b = BitGrid::new(rows, cols, Order::ColumnMajor, 1, by_col);
        let expected: Vec<Vec<u8>> = (0..rows)
            .map(|i| (0..cols).map(|j| u8::from(on(i, j))).collect())
            .collect();
        assert_eq!(all_rows(&a), expected);
        assert_eq!(all_rows(&b), expected);
        assert!(a.get(0, 0) && b.get(0, 0));
    }

    #[test]
    fn centre_tap_rows_hold_the_centre_matrix_at_one_tap() {
        let centre = Grid::new(2, 2, Order::RowMajor, vec![1.0, 2.0, 3.0, 4.0]);
        let weight = Weight::CentreTap {
            centre,
            taps: 3,
            tap: 1,
        };
        assert_eq!(
            all_rows(&weight),
            vec![
                vec![0.0, 1.0, 0.0, 0.0, 2.0, 0.0],
                vec![0.0, 3.0, 0.0, 0.0, 4.0, 0.0]
            ]
        );
    }

    /// The correctly rounded binary16 / bfloat16 bits of `x` by brute force: among every
    /// finite value of the format (decoded exactly to f64 by `half`), the nearest, ties to
    /// the even bit pattern; beyond the largest finite value plus half a step, infinity.
    fn nearest_bits(x: f64, decode: impl Fn(u16) -> f64, max_finite: u16) -> u16 {
        let top = decode(max_finite);
        let step = top - decode(max_finite - 1);
        if x.abs() >= top + step / 2.0 {
            let inf = max_finite + 1;
            return if x < 0.0 { inf | 0x8000 } else { inf };
        }
        let mut best: Option<(f64, u16)> = None;
        for magnitude in 0..=max_finite {
            let bits = if x < 0.0 {
                magnitude | 0x8000
            } else {
                magnitude
            };
            let d = (decode(bits) - x).abs();
            best = match best {
                Some((bd, bb)) if bd < d || (bd == d && bb & 1 == 0) => Some((bd, bb)),
                _ => Some((d, bits)),
            };
        }
        best.map(|(_, b)| b).unwrap_or(0)
    }

    fn f16_of(x: f64) -> u16 {
        u16::from_le_bytes(f16_bits(x))
    }

    fn bf16_of(x: f64) -> u16 {
        u16::from_le_bytes(bf16_bits(x))
    }

    #[test]
    fn half_precision_rounds_once_to_nearest_even() {
        // 1 + 2^-11 is halfway between the f16 values 1 and 1 + 2^-10: a tie, to even (1).
        // A hair above it, the nearest is 1 + 2^-10; f32 cannot hold that hair, so a
        // conversion through f32 (half's from_f64 with F16C) or one that drops the low bits
        // of the f64 (half's portable from_f64) sees a tie and rounds down.
        let tie = 1.0 + libm::ldexp(1.0, -11);
        let above = tie + libm::ldexp(1.0, -40);
        assert_eq!(f16_of(tie), 0x3C00);
        assert_eq!(f16_of(above), 0x3C01);
        assert_eq!(f16_of(tie - libm::ldexp(1.0, -40)), 0x3C00);
        assert_eq!(
            half::f16::from_f64(above).to_bits(),
            0x3C00,
            "half rounds twice"
        );
        // The same for bf16 (7 fraction bits).
        let tie = 1.0 + libm::ldexp(1.0, -8);
        let above = tie + libm::ldexp(1.0, -40);
        assert_eq!(bf16_of(tie), 0x3F80);
        assert_eq!(bf16_of(above), 0x3F81);
        assert_eq!(
            half::bf16::from_f64(above).to_bits(),
            0x3F80,
            "half rounds twice"
        );
        // Odd ties round up to even; exact values stay; signs, zero, subnormals, overflow.
        assert_eq!(f16_of(1.0 + 3.0 * libm::ldexp(1.0, -11)), 0x3C02);
        assert_eq!(f16_of(-0.5), 0xB800);
        assert_eq!(f16_of(0.0), 0);
        assert_eq!(f16_of(libm::ldexp(1.0, -24)), 0x0001);
        assert_eq!(f16_of(libm::ldexp(1.0, -25)), 0x0000);
        assert_eq!(f16_of(libm::ldexp(1.0, -25) * (1.0 + 1e-12)), 0x0001);
        assert_eq!(f16_of(65504.0), 0x7BFF);
        assert_eq!(f16_of(65519.99), 0x7BFF);
        assert_eq!(f16_of(65520.0), 0x7C00);
        assert_eq!(bf16_of(f64::MAX), 0x7F80);
        assert_eq!(bf16_of(-1e300), 0xFF80);
    }

    #[test]
    fn half_precision_matches_brute_force_nearest() {
        let f16 = |b: u16| half::f16::from_bits(b).to_f64();
        let bf16 = |b: u16| half::bf16::from_bits(b).to_f64();
        // Every halfway point between neighbours, and one f64 step either side of it, plus
        // a spread of ordinary values; magnitudes from subnormal to the largest finite.
        let mut xs = Vec::new();
        for (decode, max) in [(&f16 as &dyn Fn(u16) -> f64, 0x7BFFu16), (&bf16, 0x7F7F)] {
            for b in (0..max)
                .step_by(401)
                .chain([0, 1, 2, 0x3FF, 0x400, max - 1])
            {
                let mid = (decode(b) + decode(b + 1)) / 2.0;
                let (up, down) = (
                    f64::from_bits(mid.to_bits() + 1),
                    f64::from_bits(mid.to_bits() - 1),
                );
                xs.extend([mid, up, down, -mid, -up]);
            }
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mantissa = (state >> 11) as f64 / (1u64 << 53) as f64;
            let exponent = (state % 60) as i32 - 40;
            xs.push(libm::ldexp(mantissa - 0.5, exponent));
        }
        for &x in &xs {
            assert_eq!(f16_of(x), nearest_bits(x, f16, 0x7BFF), "f16 of {x:e}");
            assert_eq!(bf16_of(x), nearest_bits(x, bf16, 0x7F7F), "bf16 of {x:e}");
        }
    }

    #[test]
    fn the_vectorised_transposition_gives_the_portable_bytes() {
        // Ragged shapes and ranges, signed zeros, ties, subnormals and overflow to infinity.
        let special = [
            -0.0,
            0.0,
            1.0 + f64::EPSILON,
            1.0 + 2.0f64.powi(-24),
            1e-310,
            -1e-40,
            1e300,
            -3.5,
        ];
        for (rows, cols) in [(1, 1), (4, 4), (5, 7), (64, 130), (9, 3)] {
            let data: Vec<f64> = (0..rows * cols)
                .map(|k| {
                    let x = (k as f64 * 0.7316).sin() / (1.0 + k as f64);
                    if k % 5 == 0 {
                        special[k / 5 % special.len()]
                    } else {
                        x
                    }
                })
                .collect();
            for (first, count) in [(0, rows), (rows / 2, rows - rows / 2), (rows - 1, 1)] {
                let (mut fast, mut plain) = (vec![7u8], vec![7u8]);
                transpose_to_f32(&data, (rows, cols), (first, count), &mut fast);
                transpose_into(&data, (rows, cols), (first, count), &mut plain, |x| {
                    ((x + 0.0) as f32).to_le_bytes()
                });
                assert_eq!(fast, plain, "{rows}x{cols} rows {first}+{count}");
            }
        }
    }

    #[test]
    fn negative_zero_is_stored_as_positive_zero() {
        let mut out = Vec::new();
        f64::encode(&[-0.0], Dtype::F32, &mut out);
        f64::encode(&[-0.0], Dtype::F64, &mut out);
        assert_eq!(out.len(), 12);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn values_are_written_little_endian() {
        let grid = Grid::new(1, 2, Order::RowMajor, vec![1.5f64, -2.0]);
        let mut bytes = Vec::new();
        write_all(&grid, Dtype::F32, &mut bytes).unwrap();
        let mut expected = 1.5f32.to_le_bytes().to_vec();
        expected.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(bytes, expected);
        let mut bools = Vec::new();
        u8::encode(&[0, 1, 2], Dtype::Bool, &mut bools);
        assert_eq!(bools, [0, 1, 1]);
    }
}

//! Tensors on their way out: the f64 grids that the schemes make, the output dtypes, and
//! the one place where values become bytes (dtype conversion, row-major order).

use std::io::{self, Write};

/// How a [`Grid`] stores its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Element (i, j) at `i * cols + j`.
    RowMajor,
    /// Element (i, j) at `j * rows + i`: the layout EOI works in, one contiguous column
    /// per Givens-rotated column.
    ColumnMajor,
}

/// A dense rows x cols matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid<T> {
    rows: usize,
    cols: usize,
    order: Order,
    data: Vec<T>,
}

impl<T: Copy> Grid<T> {
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

    /// Calls `f` with every row, in order. Column-major storage is transposed in blocks of
    /// rows so that memory is read in contiguous runs.
    pub fn for_each_row<E>(&self, mut f: impl FnMut(&[T]) -> Result<(), E>) -> Result<(), E> {
        match self.order {
            Order::RowMajor => {
                for row in self.data.chunks_exact(self.cols.max(1)).take(self.rows) {
                    f(row)?;
                }
                Ok(())
            }
            Order::ColumnMajor => {
                const BLOCK: usize = 16;
                let mut block: Vec<T> = Vec::with_capacity(BLOCK * self.cols);
                for first in (0..self.rows).step_by(BLOCK) {
                    let height = BLOCK.min(self.rows - first);
                    block.clear();
                    for i in 0..height {
                        block.extend((0..self.cols).map(|j| self.data[j * self.rows + first + i]));
                    }
                    for row in block.chunks_exact(self.cols.max(1)).take(height) {
                        f(row)?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A layer's weight values, in PyTorch layout, as the scheme made them.
#[derive(Clone, Debug, PartialEq)]
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
}

impl Weight {
    /// Calls `f` with each row of the tensor flattened to (out, in * taps), in order.
    pub fn for_each_row<E>(&self, mut f: impl FnMut(&[f64]) -> Result<(), E>) -> Result<(), E> {
        match self {
            Weight::Matrix(grid) => grid.for_each_row(f),
            Weight::CentreTap { centre, taps, tap } => {
                let mut row = vec![0.0; centre.cols() * taps];
                centre.for_each_row(|h| {
                    for (i, &v) in h.iter().enumerate() {
                        row[i * taps + tap] = v;
                    }
                    f(&row)
                })
            }
        }
    }
}

/// Element types of the output files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::Bool => 1,
        }
    }

    /// The name used in specs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::Bool => "bool",
        }
    }

    /// The dtype string of the safetensors header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::Bool => "BOOL",
        }
    }

    /// The `descr` of a NumPy .npy header.
    pub fn npy_descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::Bool => "|b1",
        }
    }
}

/// An element that can be written as any output dtype: this is the single place where
/// values are converted.
pub trait Element: Copy {
    fn encode(self, dtype: Dtype, out: &mut Vec<u8>);
}

impl Element for f64 {
    fn encode(self, dtype: Dtype, out: &mut Vec<u8>) {
        // Adding +0.0 turns -0.0 into +0.0: a zero is stored as all-zero bytes whichever way
        // the arithmetic reached it.
        let x = self + 0.0;
        match dtype {
            Dtype::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            Dtype::F64 => out.extend_from_slice(&x.to_le_bytes()),
            Dtype::Bool => out.push(u8::from(x != 0.0)),
        }
    }
}

impl Element for u8 {
    fn encode(self, dtype: Dtype, out: &mut Vec<u8>) {
        match dtype {
            Dtype::F32 => out.extend_from_slice(&f32::from(self).to_le_bytes()),
            Dtype::F64 => out.extend_from_slice(&f64::from(self).to_le_bytes()),
            Dtype::Bool => out.push(u8::from(self != 0)),
        }
    }
}

/// Encodes rows of elements as `dtype` little-endian bytes into `w`, buffering about 1 MiB.
pub struct Encoder<'w> {
    dtype: Dtype,
    buffer: Vec<u8>,
    out: &'w mut dyn Write,
}

impl<'w> Encoder<'w> {
    const FLUSH_AT: usize = 1 << 20;

    pub fn new(dtype: Dtype, out: &'w mut dyn Write) -> Encoder<'w> {
        Encoder {
            dtype,
            buffer: Vec::with_capacity(Self::FLUSH_AT + (1 << 16)),
            out,
        }
    }

    pub fn row<T: Element>(&mut self, row: &[T]) -> io::Result<()> {
        for &x in row {
            x.encode(self.dtype, &mut self.buffer);
            if self.buffer.len() >= Self::FLUSH_AT {
                self.out.write_all(&self.buffer)?;
                self.buffer.clear();
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.write_all(&self.buffer)?;
        self.buffer.clear();
        self.out.flush()
    }
}

/// Writes a weight as `dtype` bytes in row-major order.
pub fn write_weight(weight: &Weight, dtype: Dtype, out: &mut dyn Write) -> io::Result<()> {
    let mut encoder = Encoder::new(dtype, out);
    weight.for_each_row(|row| encoder.row(row))?;
    encoder.finish()
}

/// Writes a mask as `dtype` bytes in row-major order.
pub fn write_mask(mask: &Grid<u8>, dtype: Dtype, out: &mut dyn Write) -> io::Result<()> {
    let mut encoder = Encoder::new(dtype, out);
    mask.for_each_row(|row| encoder.row(row))?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_major_rows_come_out_transposed() {
        // 37 rows cross the 16-row blocks of the transposition.
        let rows = 37;
        let cols = 5;
        let data: Vec<u32> = (0..rows * cols).map(|k| k as u32).collect();
        let grid = Grid::new(rows, cols, Order::ColumnMajor, data);
        let mut seen = Vec::new();
        grid.for_each_row(|row| {
            seen.push(row.to_vec());
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(seen.len(), rows);
        for (i, row) in seen.iter().enumerate() {
            let expected: Vec<u32> = (0..cols).map(|j| (j * rows + i) as u32).collect();
            assert_eq!(row, &expected);
        }
    }

    #[test]
    fn centre_tap_rows_hold_the_centre_matrix_at_one_tap() {
        let centre = Grid::new(2, 2, Order::RowMajor, vec![1.0, 2.0, 3.0, 4.0]);
        let weight = Weight::CentreTap {
            centre,
            taps: 3,
            tap: 1,
        };
        let mut rows = Vec::new();
        weight
            .for_each_row(|r| {
                rows.push(r.to_vec());
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![0.0, 1.0, 0.0, 0.0, 2.0, 0.0],
                vec![0.0, 3.0, 0.0, 0.0, 4.0, 0.0]
            ]
        );
    }

    #[test]
    fn negative_zero_is_stored_as_positive_zero() {
        let mut out = Vec::new();
        (-0.0f64).encode(Dtype::F32, &mut out);
        (-0.0f64).encode(Dtype::F64, &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn encoder_writes_little_endian_values() {
        let mut bytes = Vec::new();
        let mut enc = Encoder::new(Dtype::F32, &mut bytes);
        enc.row(&[1.5f64, -2.0]).unwrap();
        enc.finish().unwrap();
        let mut expected = 1.5f32.to_le_bytes().to_vec();
        expected.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(bytes, expected);
    }
}

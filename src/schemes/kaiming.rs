//! Kaiming-normal baselines (He et al. 2015) over a random mask: every kept weight is
//! normal with std `gain / sqrt(fan_in)` (`kaiming`), or `gain / sqrt(fan_in * d)`
//! (`scaled-kaiming`, which keeps the variance of a pre-activation as the dense init had it),
//! with `fan_in = in * K`. Weights outside the mask are zero.

use crate::layer::Shape;
use crate::stream::Stream;
use crate::tensor::{self, Grid, Mask, Order, RowBlocks};

/// The std of the kept weights.
pub fn std(shape: &Shape, density: f64, gain: f64, scaled: bool) -> f64 {
    let fan_in = shape.fan_in() as f64;
    let fan = if scaled { fan_in * density } else { fan_in };
    gain / fan.sqrt()
}

/// The weight over `mask`, (out, in * K) row-major.
///
/// Draws: one value of [`Stream::normals`] per kept position, in row-major order of the
/// positions, times `std`.
pub fn weight(mask: &Mask, std: f64, stream: &mut Stream) -> Grid<f64> {
    let (rows, row_len) = (mask.rows(), mask.row_len());
    let mut values = tensor::zeroed(rows * row_len);
    let mut normals = stream.normals();
    let mut row = Vec::with_capacity(row_len);
    for i in 0..rows {
        row.clear();
        mask.rows_into(i, 1, &mut row);
        for (slot, &kept) in values[i * row_len..(i + 1) * row_len].iter_mut().zip(&row) {
            if kept != 0 {
                *slot = std * normals.next().unwrap_or(0.0);
            }
        }
    }
    Grid::new(rows, row_len, Order::RowMajor, values)
}

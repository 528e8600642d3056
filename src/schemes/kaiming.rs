//! Kaiming-normal baselines (He et al. 2015) over a random mask: every kept weight is
//! normal with std `gain / sqrt(fan_in)` (`kaiming`), or `gain / sqrt(fan_in * d)`
//! (`scaled-kaiming`, which keeps the variance of a pre-activation as the dense init had it),
//! with `fan_in = in * K`. Weights outside the mask are zero.

use super::{
    KernelGram, LayerPlan, LayerStats, Minimum, Prepared, Rules, StoredMask, Values, mask,
};
use crate::layer::{Layout, Shape};
use crate::stream::Stream;
use crate::tensor::{self, Grid, Mask, Order, RowBlocks, Weight};

/// The rules of `kaiming` and of `scaled-kaiming`.
pub struct Kaiming {
    /// Whether the std is divided by `sqrt(d)` (`scaled-kaiming`).
    scaled: bool,
}

impl Kaiming {
    /// `kaiming`: std `gain / sqrt(fan_in)`.
    pub const PLAIN: Kaiming = Kaiming { scaled: false };
    /// `scaled-kaiming`: std `gain / sqrt(fan_in * d)`.
    pub const SCALED: Kaiming = Kaiming { scaled: true };
}

/// The values: normal draws from where the mask left the layer's stream.
struct Normals {
    stream: Stream,
    scaled: bool,
}

impl Values for Normals {
    fn weight(&self, layer: &LayerPlan, mask: &Mask) -> Weight {
        let std = std(&layer.shape, layer.density, layer.gain.value, self.scaled);
        Weight::Matrix(weight(mask, std, &mut self.stream.clone()))
    }
}

impl Rules for Kaiming {
    fn maker(&self) -> &'static str {
        if self.scaled {
            "scheme \"scaled-kaiming\""
        } else {
            "scheme \"kaiming\""
        }
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

    /// The mask ([`mask::draw`]), then, in [`Values::weight`], the values.
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a> {
        let mut stream = Stream::derive(seed, &layer.name);
        let drawn = mask::draw(layer, &mut stream);
        let values = Normals {
            stream,
            scaled: self.scaled,
        };
        Prepared::new(layer, drawn, mask::stats(layer), values)
    }

    /// The byte mask and the f64 weight of the whole tensor.
    fn memory(&self, layer: &LayerPlan, _layout: Layout, _threads: usize) -> u64 {
        layer.shape.numel() * (8 + 1)
    }

    fn promises_orthogonality(&self, _density: f64) -> bool {
        false
    }

    fn kernel_gram(&self) -> KernelGram {
        KernelGram::Flattened
    }

    fn check_mask(&self, stored: &StoredMask<'_>) -> Vec<String> {
        mask::check_count(stored)
    }
}

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

//! Initialization schemes: a layer's plan and its random stream in, the weight, the mask and
//! the statistics the provenance records out. EOI's maths lives in [`eoi`]; [`conv`] wraps it
//! with the delta-orthogonal centre-tap rule for kernels.

pub mod conv;
pub mod eoi;

use crate::plan::LayerPlan;
use crate::spec::{Kind, Scheme};
use crate::stream::Stream;
use crate::tensor::{Mask, Weight};

/// What a layer's generation achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerStats {
    pub numel: u64,
    /// Ones in the mask.
    pub nnz: u64,
    /// Givens rotations applied.
    pub rotations: u64,
    /// Nonzeros of the centre matrix, for convolutions.
    pub centre_nnz: Option<u64>,
}

impl LayerStats {
    pub fn density(&self) -> f64 {
        self.nnz as f64 / self.numel as f64
    }
}

/// A generated layer.
pub struct Generated {
    pub weight: Weight,
    /// The mask in the weight's shape, flattened to (out, in * taps).
    pub mask: Mask,
    pub stats: LayerStats,
}

fn centre_schedule(layer: &LayerPlan, stream: &mut Stream) -> eoi::Schedule {
    let shape = &layer.shape;
    match (layer.scheme, shape.kind()) {
        (Scheme::Eoi, Kind::Linear) => {
            eoi::schedule(shape.out(), shape.inp(), layer.density, stream)
        }
        (Scheme::Eoi, Kind::Conv) => conv::schedule(
            shape.out(),
            shape.inp(),
            shape.taps(),
            layer.density,
            layer.conv_center,
            stream,
        ),
    }
}

fn stats_of(layer: &LayerPlan, schedule: &eoi::Schedule) -> LayerStats {
    let numel = layer.shape.numel();
    let rotations = schedule.rotations().len() as u64;
    match layer.kind() {
        Kind::Linear => LayerStats {
            numel,
            nnz: schedule.nnz(),
            rotations,
            centre_nnz: None,
        },
        Kind::Conv => LayerStats {
            numel,
            nnz: conv::mask_ones(layer.density, numel, schedule.nnz()),
            rotations,
            centre_nnz: Some(schedule.nnz()),
        },
    }
}

/// The statistics of a layer's generation, computed from the support alone (cheap: no
/// weight values), so they can go into a file header before any weight exists.
pub fn stats(layer: &LayerPlan, seed: u64) -> LayerStats {
    let mut stream = Stream::derive(seed, &layer.name);
    let schedule = centre_schedule(layer, &mut stream);
    stats_of(layer, &schedule)
}

/// A layer whose randomness is all drawn: its mask and statistics are final, and its weight
/// values follow deterministically from the rotations (see [`Prepared::weight`]). The mask
/// can be written while the values are computed.
pub struct Prepared<'a> {
    layer: &'a LayerPlan,
    schedule: eoi::Schedule,
    pub mask: Mask,
    pub stats: LayerStats,
}

impl Prepared<'_> {
    /// Applies the rotations: the layer's weight values.
    pub fn weight(&self) -> Weight {
        let gain = self.layer.gain.value;
        match self.layer.kind() {
            Kind::Linear => Weight::Matrix(self.schedule.matrix(gain)),
            Kind::Conv => conv::weight(&self.schedule, self.layer.shape.kernel(), gain),
        }
    }
}

/// Draws all of a layer's randomness from its own stream: the rotations, then (for
/// convolutions) the mask top-up.
pub fn prepare(layer: &LayerPlan, seed: u64) -> Prepared<'_> {
    let mut stream = Stream::derive(seed, &layer.name);
    let schedule = centre_schedule(layer, &mut stream);
    let stats = stats_of(layer, &schedule);
    let mask = match layer.kind() {
        Kind::Linear => Mask::Bits(schedule.mask()),
        Kind::Conv => conv::mask(&schedule, layer.shape.kernel(), layer.density, &mut stream),
    };
    Prepared {
        layer,
        schedule,
        mask,
        stats,
    }
}

/// Generates a layer's weight and mask from its own stream.
pub fn generate(layer: &LayerPlan, seed: u64) -> Generated {
    let prepared = prepare(layer, seed);
    Generated {
        weight: prepared.weight(),
        mask: prepared.mask,
        stats: prepared.stats,
    }
}

//! Exact Orthogonal Initialization (Nowak et al., ICML 2024), the scheme eoi is named for:
//! a matrix is the rectangular identity turned by random Givens [`rotation`]s until its
//! support reaches the density, so it is exactly orthogonal at any density; a convolution
//! holds such a matrix at its [`centre`] tap (delta-orthogonal), one block per group, and a
//! mask topped up (or structured) around it. This file states EOI's rules for the plan, the
//! generator, the records and `verify`.

pub mod centre;
pub mod rotation;

use super::{
    KernelGram, LayerPlan, LayerStats, Minimum, Prepared, Rules, SchemeFields, StoredMask, Values,
};
use crate::layer::{ConvMask, Kind, Layout, ones_at_centre};
use crate::stream::Stream;
use crate::tensor::{Mask, Weight};

/// EOI's rules.
pub struct Eoi;

/// A linear layer's schedule: the first draws of its stream.
fn linear_schedule(layer: &LayerPlan, stream: &mut Stream) -> rotation::Schedule {
    rotation::schedule(layer.shape.out(), layer.shape.inp(), layer.density, stream)
}

/// A kernel's centre, block by block (one block unless the layer has groups).
fn kernel_centre(layer: &LayerPlan, seed: u64, stream: &mut Stream) -> centre::Centre {
    let shape = &layer.shape;
    centre::centre(
        shape.out(),
        shape.inp(),
        shape.taps(),
        layer.groups,
        layer.density,
        layer.conv_center,
        stream,
        (seed, &layer.name),
    )
}

/// The density a kernel's centre blocks are built at, and whether the centre was raised to
/// its identity (see [`centre::centre_density`]).
pub fn kernel_centre_density(layer: &LayerPlan) -> (f64, bool) {
    let (out, inp) = layer.block();
    centre::centre_density(
        out,
        inp,
        layer.shape.taps(),
        layer.density,
        layer.conv_center,
    )
}

fn linear_stats(layer: &LayerPlan, schedule: &rotation::Schedule) -> LayerStats {
    LayerStats {
        numel: layer.shape.numel(),
        nnz: schedule.nnz(),
        rotations: Some(schedule.rotations().len() as u64),
        centre_nnz: None,
        isometry_error: None,
    }
}

fn kernel_stats(layer: &LayerPlan, centre: &centre::Centre) -> LayerStats {
    let numel = layer.shape.numel();
    LayerStats {
        numel,
        nnz: match layer.conv_mask {
            ConvMask::TopUp => centre::mask_ones(layer.density, numel, centre.nnz()),
            ConvMask::Structured => centre.nnz() * layer.shape.taps() as u64,
        },
        rotations: Some(centre.rotations()),
        centre_nnz: Some(centre.nnz()),
        isometry_error: None,
    }
}

/// What EOI's values are made from: a matrix's rotations, or a kernel's centre blocks.
enum Recipe {
    Matrix(rotation::Schedule),
    Kernel(centre::Centre),
}

impl Values for Recipe {
    fn weight(&self, layer: &LayerPlan, _mask: &Mask) -> Weight {
        let gain = layer.gain.value;
        match self {
            Recipe::Matrix(schedule) => Weight::Matrix(schedule.matrix(gain)),
            Recipe::Kernel(centre) => centre::weight(centre, layer.shape.kernel(), gain),
        }
    }

    /// A wide or square matrix in PyTorch layout is computed a block of rows at a time while
    /// it is encoded ([`Weight::Computed`]), so the layer's whole f64 matrix never exists.
    fn weight_for(&self, layer: &LayerPlan, mask: &Mask, layout: Layout) -> Weight {
        if let (Recipe::Matrix(schedule), Layout::Torch) = (self, layout)
            && let Some(rows) = schedule.rotated_rows(layer.gain.value)
        {
            return Weight::Computed(std::sync::Arc::new(rows));
        }
        self.weight(layer, mask)
    }
}

impl Rules for Eoi {
    fn maker(&self) -> &'static str {
        "EOI"
    }

    /// The identity's `1/max(out, in)` for a matrix. For a kernel, the identity at the
    /// centre tap (of every block, G `min(out/G, in/G)` ones) over the tensor's elements,
    /// `1/(max(out/G, in/G) K)`: the top-up reaches any density from there (for a depthwise
    /// k x k layer, 1/k^2), the centre being raised to its identity where its rule asks
    /// less ([`centre::centre_density`]). A structured mask keeps whole kernel slices, so its
    /// kernel is as dense as its centre matrix: there the minimum stays the centre's,
    /// `1/max(out/G, in/G)` (a structured depthwise layer is dense).
    fn minimum(&self, layer: &LayerPlan) -> Minimum {
        let shape = &layer.shape;
        let (out, inp, groups) = (shape.out(), shape.inp(), layer.groups);
        let block = out / groups;
        let depthwise = groups > 1 && block == 1 && inp == 1;
        let (density, reason, help) = match (shape.kind(), layer.conv_mask) {
            (Kind::Linear, _) => (
                1.0 / out.max(inp) as f64,
                format!("the identity: 1/max({out}, {inp})"),
                None,
            ),
            (Kind::Conv, ConvMask::TopUp) => {
                let ones = groups * block.min(inp);
                let numel = shape.numel();
                let reason = if depthwise {
                    format!(
                        "the identity at the centre tap, {ones} ones of {numel}: a depthwise convolution's blocks are 1 x 1, one +-gain per channel"
                    )
                } else if groups > 1 {
                    format!(
                        "the identity at the centre tap, {ones} ones of {numel}: min({block}, {inp}) for each of the {groups} blocks of the centre matrix"
                    )
                } else {
                    format!(
                        "the identity at the centre tap, {ones} ones of {numel}: min({out}, {inp})"
                    )
                };
                (
                    centre::tensor_minimum(block, inp, shape.taps()),
                    reason,
                    None,
                )
            }
            (Kind::Conv, ConvMask::Structured) => {
                let blocks = if groups > 1 {
                    format!(" for each of the {groups} blocks of the centre matrix")
                } else {
                    " for the centre matrix".into()
                };
                (
                    1.0 / block.max(inp) as f64,
                    format!(
                        "the identity: 1/max({block}, {inp}){blocks}, whose kernel slices a structured mask keeps whole"
                    ),
                    depthwise.then(|| {
                        "under a structured mask a depthwise layer is dense (its 1 x 1 blocks keep whole slices): use conv_mask = \"top-up\" for this layer (it goes down to one weight per channel), set below_minimum = \"clamp\" in [sparsity] or pass --below-minimum clamp, or match it with a `dense` pattern".into()
                    }),
                )
            }
        };
        Minimum {
            density,
            reason,
            help,
        }
    }

    fn structured_masks(&self) -> bool {
        true
    }

    /// `round(d * numel)` for a matrix (EOI lands within one rotation of it), `ceil(d * numel)`
    /// for a kernel (its mask is topped up to exactly that); for a structured kernel
    /// `round(d * numel)`, which its `centre_nnz * K` ones land near.
    fn expected_nnz(&self, layer: &LayerPlan) -> u64 {
        let exact = layer.density * layer.shape.numel() as f64;
        let nnz = match (layer.kind(), layer.conv_mask) {
            (Kind::Linear, _) | (Kind::Conv, ConvMask::Structured) => exact.round(),
            (Kind::Conv, ConvMask::TopUp) => exact.ceil(),
        };
        (nnz as u64).min(layer.shape.numel())
    }

    /// From the support alone: the rotations are scheduled, no value is computed.
    fn stats(&self, layer: &LayerPlan, seed: u64) -> LayerStats {
        let mut stream = Stream::derive(seed, &layer.name);
        match layer.kind() {
            Kind::Linear => linear_stats(layer, &linear_schedule(layer, &mut stream)),
            Kind::Conv => kernel_stats(layer, &kernel_centre(layer, seed, &mut stream)),
        }
    }

    /// The rotations, then (for convolutions) the mask's top-up; a grouped kernel's blocks
    /// draw from their own streams (see [`centre::centre`]).
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a> {
        let mut stream = Stream::derive(seed, &layer.name);
        match layer.kind() {
            Kind::Linear => {
                let schedule = linear_schedule(layer, &mut stream);
                let stats = linear_stats(layer, &schedule);
                let mask = Mask::Bits(schedule.mask());
                Prepared::new(layer, mask, stats, Recipe::Matrix(schedule))
            }
            Kind::Conv => {
                let centre = kernel_centre(layer, seed, &mut stream);
                let kernel = layer.shape.kernel();
                let mask = match layer.conv_mask {
                    ConvMask::TopUp => centre::mask(&centre, kernel, layer.density, &mut stream),
                    ConvMask::Structured => centre::structured_mask(&centre, kernel),
                };
                let stats = kernel_stats(layer, &centre);
                Prepared::new(layer, mask, stats, Recipe::Kernel(centre))
            }
        }
    }

    /// The f64 working matrix, the byte mask and the support bitsets; or, for a matrix
    /// computed a block of rows at a time (see [`Values::weight_for`]), the bitsets and one
    /// block of 64 rows per thread.
    fn memory(&self, layer: &LayerPlan, layout: Layout, threads: usize) -> u64 {
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        let bits = out * inp / 8;
        let matrix = out * inp * (8 + 1) + bits;
        match layer.kind() {
            Kind::Linear if layout == Layout::Torch && out <= inp => {
                2 * bits + threads as u64 * 64 * inp * (8 + 8 + 1)
            }
            Kind::Linear => matrix,
            Kind::Conv => matrix + layer.shape.numel(),
        }
    }

    /// The support and mask bitsets, and a convolution's byte mask.
    fn prepared_memory(&self, layer: &LayerPlan) -> u64 {
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        match layer.kind() {
            Kind::Linear => out * inp / 4,
            Kind::Conv => out * inp / 8 + layer.shape.numel(),
        }
    }

    /// A convolution's centre rule, its mask rule (structured kernels only, so that top-up
    /// records keep their bytes), the density its centre is built at, and whether that was
    /// raised above the rule's (only when it was, for the same reason).
    fn record(&self, layer: &LayerPlan) -> SchemeFields {
        if layer.kind() != Kind::Conv {
            return SchemeFields::default();
        }
        let (centre_density, centre_raised) = kernel_centre_density(layer);
        SchemeFields {
            conv_center: Some(layer.conv_center),
            conv_mask: (layer.conv_mask == ConvMask::Structured).then_some(layer.conv_mask),
            centre_density: Some(centre_density),
            centre_raised,
            ..SchemeFields::default()
        }
    }

    fn promises_orthogonality(&self, _density: f64) -> bool {
        true
    }

    fn kernel_gram(&self) -> KernelGram {
        KernelGram::Centre
    }

    /// The target density as EOI reaches it: a matrix lands within one rotation, at most
    /// `2 min(out, in)` entries, of it; a kernel's mask holds exactly `ceil(d * numel)` ones,
    /// or the whole centre support if that is more, with the centre support at the centre
    /// tap; a structured kernel exactly `centre_nnz * K`, in whole kernel slices.
    fn check_mask(&self, mask: &StoredMask<'_>) -> Vec<String> {
        let (shape, nnz, density) = (mask.shape, mask.nnz, mask.density);
        let numel = mask.bits.len() as u64;
        let mut failures = Vec::new();
        match (shape.len(), mask.centre_nnz) {
            (2, _) => {
                let slack = 2.0 * shape[0].min(shape[1]) as f64;
                let target = density * numel as f64;
                if (nnz as f64 - target).abs() > slack {
                    failures.push(format!(
                        "{nnz} ones is more than one rotation ({slack} entries) from the target density {density} ({target:.1} ones)"
                    ));
                }
            }
            (_, Some(centre)) if mask.conv_mask == ConvMask::Structured => {
                let taps: usize = shape[2..].iter().product::<usize>().max(1);
                let want = centre * taps as u64;
                if want != nnz {
                    failures.push(format!(
                        "a structured kernel with {centre} centre nonzeros and {taps} taps has {want} mask ones, this one {nnz}"
                    ));
                }
                let partial = mask
                    .bits
                    .chunks(taps)
                    .filter(|slice| {
                        let ones = slice.iter().filter(|&&b| b != 0).count();
                        ones != 0 && ones != taps
                    })
                    .count();
                if partial > 0 {
                    failures.push(format!(
                        "{partial} kernel slices of a structured mask are partly kept; each must keep all {taps} taps or none"
                    ));
                }
            }
            (_, Some(centre)) => {
                let want = centre::mask_ones(density, numel, centre);
                if want != nnz {
                    failures.push(format!(
                        "a kernel at density {density} with {centre} centre nonzeros has {want} mask ones, this one {nnz}"
                    ));
                }
                let at_centre = ones_at_centre(mask.bits, &shape[2..]);
                if at_centre < centre {
                    failures.push(format!(
                        "the mask holds {at_centre} ones at the centre tap, fewer than the record's centre_nnz = {centre}"
                    ));
                }
            }
            (_, None) => failures.push("the record of a convolution has no centre_nnz".into()),
        }
        failures
    }
}

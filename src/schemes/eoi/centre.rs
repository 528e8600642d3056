//! Delta-orthogonal EOI for convolutions, the centre tap: an EOI matrix H of shape (out, in) sits at the
//! spatial centre tap of the kernel and every other tap is zero, so the kernel is orthogonal
//! as a convolution. A grouped convolution (G groups, weight (out, in/G, k...)) gets G
//! independent EOI blocks of (out/G, in/G), one per group, each from its own stream
//! ([`Centre`]); a depthwise one (1 x 1 blocks) a centre of +-gain per channel. The mask starts as the support of H at the centre tap and is topped up
//! with uniformly chosen positions, anywhere in the tensor, to `ceil(d * numel)` ones; those
//! weights start at zero but are trainable. With `conv_mask = "structured"` ([`ConvMask`])
//! the mask is instead every tap of each channel pair the centre connects, at `d_H = d`.

use super::rotation;
use crate::layer::{CentreRule, below, centre_tap};
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order, Weight};

/// The smallest density of a kernel whose centre blocks are (out, in) (one block: out/G
/// rows each), with K `taps`: its centre at its own minimum, the identity of every block
/// (`min(out, in)` ones each, one block per `out` rows), over the tensor's elements:
/// `1/(max(out, in) K)`. For a depthwise k x k layer (1 x 1 blocks) that is `1/k^2`.
pub fn tensor_minimum(out: usize, inp: usize, taps: usize) -> f64 {
    1.0 / (out.max(inp) as f64 * taps as f64)
}

/// The smallest layer density at which the centre `rule` alone gives every (out, in) block
/// its minimum, the identity's `1/m` (m = max(out, in)); below it the centre is raised to
/// the identity ([`centre_density`]).
pub fn rule_minimum(out: usize, inp: usize, taps: usize, rule: CentreRule) -> f64 {
    let m = out.max(inp) as f64;
    match rule {
        CentreRule::Same => 1.0 / m,
        // min(d K, 1, sqrt d) >= 1/m  <=>  d >= 1/(m K) and d >= 1/m^2.
        CentreRule::Sqrt => (1.0 / (m * taps as f64)).max(1.0 / (m * m)),
    }
}

/// The density a kernel's centre blocks (out, in) are built at, for a layer `density` with
/// K `taps` under `rule`, and whether it was raised: the rule's `d_H`
/// ([`CentreRule::centre_density`]), or, where the rule asks less than a block can have
/// (the layer is below [`rule_minimum`], with the same tolerance as every minimum), the
/// identity's `1/max(out, in)`. The layers that were possible before raising existed are
/// exactly those never raised, so their records keep their bytes.
pub fn centre_density(
    out: usize,
    inp: usize,
    taps: usize,
    density: f64,
    rule: CentreRule,
) -> (f64, bool) {
    if below(density, rule_minimum(out, inp, taps, rule)) {
        (1.0 / out.max(inp) as f64, true)
    } else {
        (rule.centre_density(density, taps), false)
    }
}

/// How many ones the mask holds: `ceil(density * numel)` (at most numel), or the support of
/// the centre matrix if that is already larger.
pub fn mask_ones(density: f64, numel: u64, centre_nnz: u64) -> u64 {
    let target = (density * numel as f64).ceil();
    let target = if target >= numel as f64 {
        numel
    } else {
        target as u64
    };
    target.max(centre_nnz)
}

/// The centre matrix of a kernel with G groups: G EOI blocks of shape (out/G, in/G), stacked
/// along `out` (block b holds output channels `b out/G .. (b + 1) out/G`, which see only their
/// group's in/G input channels, the tensor's second dimension). As an operator the grouped
/// convolution's centre is block diagonal, so it is orthogonal exactly when every block is.
#[derive(Clone, Debug)]
pub struct Centre {
    blocks: Vec<rotation::Schedule>,
    /// Each block's sign: -1 or +1 for a 1 x 1 block of a grouped kernel (which has no two
    /// columns to rotate), +1 otherwise.
    signs: Vec<f64>,
}

impl Centre {
    /// The blocks' schedules, in order.
    pub fn blocks(&self) -> &[rotation::Schedule] {
        &self.blocks
    }

    /// Rows of the whole centre matrix (`out`).
    pub fn rows(&self) -> usize {
        self.blocks.iter().map(rotation::Schedule::rows).sum()
    }

    /// Columns of the centre matrix (in/G).
    pub fn cols(&self) -> usize {
        self.blocks[0].cols()
    }

    /// Nonzeros of the centre matrix: the blocks' supports together.
    pub fn nnz(&self) -> u64 {
        self.blocks.iter().map(rotation::Schedule::nnz).sum()
    }

    /// Givens rotations of all blocks.
    pub fn rotations(&self) -> u64 {
        self.blocks.iter().map(|b| b.rotations().len() as u64).sum()
    }

    /// The (out, in/G) centre matrix times `gain`: each block's EOI matrix (times its sign).
    pub fn matrix(&self, gain: f64) -> Grid<f64> {
        if let [only] = self.blocks.as_slice() {
            return only.matrix(gain * self.signs[0]);
        }
        let (rows, cols) = (self.rows(), self.cols());
        let mut values = Vec::with_capacity(rows * cols);
        for (block, &sign) in self.blocks.iter().zip(&self.signs) {
            let m = block.matrix(gain * sign);
            for r in 0..block.rows() {
                values.extend((0..cols).map(|c| m.get(r, c)));
            }
        }
        Grid::new(rows, cols, Order::RowMajor, values)
    }
}

/// The centre matrix's schedules at the layer's centre density (see [`CentreRule::centre_density`]),
/// each block at that density. Where the rule asks less than a block's identity (a raised
/// centre, see [`centre_density`]), the schedule stops where it starts, at the identity,
/// having drawn nothing (a 1 x 1 block still draws its sign).
///
/// With one group the single block draws its rotations first from the tensor's `stream`
/// (which the mask's top-up then continues), as before groups existed. With G > 1 block b
/// draws from its own stream [`Stream::derive_block`]`(seed, name, b)`: its rotations (see
/// [`rotation::schedule`]), or, for a 1 x 1 block (a depthwise convolution's), one
/// [`Stream::below`]`(2)` for its sign (1: negative); the tensor's stream is left for the
/// top-up alone.
#[allow(clippy::too_many_arguments)]
pub fn centre(
    out: usize,
    inp: usize,
    taps: usize,
    groups: usize,
    density: f64,
    rule: CentreRule,
    stream: &mut Stream,
    (seed, name): (u64, &str),
) -> Centre {
    let d = rule.centre_density(density, taps);
    if groups <= 1 {
        return Centre {
            blocks: vec![rotation::schedule(out, inp, d, stream)],
            signs: vec![1.0],
        };
    }
    let rows = out / groups;
    let mut blocks = Vec::with_capacity(groups);
    let mut signs = Vec::with_capacity(groups);
    for b in 0..groups {
        let mut own = Stream::derive_block(seed, name, b as u64);
        if rows == 1 && inp == 1 {
            signs.push(if own.below(2) == 1 { -1.0 } else { 1.0 });
        } else {
            signs.push(1.0);
        }
        blocks.push(rotation::schedule(rows, inp, d, &mut own));
    }
    Centre { blocks, signs }
}

/// The kernel's mask: the centre matrix's support at the centre tap, topped up by drawing
/// from `stream` (which continues after the centre's rotations for one group, and is the
/// tensor's fresh stream for several).
///
/// Top-up draws: positions `p` uniform in `0..numel` (row-major over (out, in, k...), the whole
/// tensor whatever its groups); a position whose mask is 0 is set to 1, one that is already
/// 1 is drawn again, until the mask holds [`mask_ones`] ones. When every position must be 1,
/// no draw is made.
pub fn mask(centre: &Centre, kernel: &[usize], density: f64, stream: &mut Stream) -> Mask {
    let (out, inp) = (centre.rows(), centre.cols());
    let taps: usize = kernel.iter().product();
    let tap = centre_tap(kernel);
    let numel = out * inp * taps;
    let mut mask = vec![0u8; numel];
    let mut first = 0;
    for block in centre.blocks() {
        let support = block.mask();
        for o in 0..block.rows() {
            for i in 0..inp {
                mask[((first + o) * inp + i) * taps + tap] = u8::from(support.get(o, i));
            }
        }
        first += block.rows();
    }
    let want = mask_ones(density, numel as u64, centre.nnz());
    if want == numel as u64 {
        mask.fill(1);
    } else {
        let mut have = centre.nnz();
        while have < want {
            let p = stream.below(numel as u64) as usize;
            if mask[p] == 0 {
                mask[p] = 1;
                have += 1;
            }
        }
    }
    Mask::Bytes(Grid::new(out, inp * taps, Order::RowMajor, mask))
}

/// The structured mask of a kernel: for every (o, i) the centre matrix connects, all K taps
/// of the slice `[o, i, ..]` are 1; every other slice is all 0. It draws nothing, so the
/// mask has exactly `centre.nnz() * K` ones.
pub fn structured_mask(centre: &Centre, kernel: &[usize]) -> Mask {
    let (out, inp) = (centre.rows(), centre.cols());
    let taps: usize = kernel.iter().product();
    let mut mask = vec![0u8; out * inp * taps];
    let mut first = 0;
    for block in centre.blocks() {
        let support = block.mask();
        for o in 0..block.rows() {
            for i in 0..inp {
                if support.get(o, i) {
                    let at = ((first + o) * inp + i) * taps;
                    mask[at..at + taps].fill(1);
                }
            }
        }
        first += block.rows();
    }
    Mask::Bytes(Grid::new(out, inp * taps, Order::RowMajor, mask))
}

/// The kernel: the centre matrix (times `gain`) at the centre tap, zero elsewhere.
pub fn weight(centre: &Centre, kernel: &[usize], gain: f64) -> Weight {
    Weight::CentreTap {
        centre: centre.matrix(gain),
        taps: kernel.iter().product(),
        tap: centre_tap(kernel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::RowBlocks;

    #[test]

    fn rule_minimum_is_where_the_centre_reaches_one_over_m() {
        for rule in [CentreRule::Same, CentreRule::Sqrt] {
            for &(out, inp, taps) in &[(64, 32, 9), (16, 16, 1), (3, 200, 25)] {
                let d = rule_minimum(out, inp, taps, rule);
                let m = out.max(inp) as f64;
                let dh = rule.centre_density(d, taps);
                assert!((dh - 1.0 / m).abs() < 1e-12, "{rule:?} {out} {inp} {taps}");
                // At it the centre is the rule's; just below, it is raised to 1/m.
                assert_eq!(centre_density(out, inp, taps, d, rule), (dh, false));
                assert_eq!(
                    centre_density(out, inp, taps, d * 0.99, rule),
                    (1.0 / m, true)
                );
            }
        }
    }

    #[test]
    fn the_tensor_minimum_is_the_identity_at_the_centre_over_numel() {
        // (64, 32, 3, 3): 32 ones of 18432; a depthwise 3 x 3 block: 1 of 9; 5 x 5: 1 of 25.
        assert_eq!(tensor_minimum(64, 32, 9), 32.0 / 18432.0);
        assert_eq!(tensor_minimum(1, 1, 9), 1.0 / 9.0);
        assert_eq!(tensor_minimum(1, 1, 25), 1.0 / 25.0);
        // At or below the rule's minimum the tensor's is never above it.
        for rule in [CentreRule::Same, CentreRule::Sqrt] {
            assert!(tensor_minimum(3, 200, 25) <= rule_minimum(3, 200, 25, rule));
        }
    }

    #[test]
    fn a_raised_centre_is_the_identity_and_draws_nothing() {
        // A 16 x 16 centre under "same" at d = 0.01 < 1/16: no rotation, no draw.
        let mut stream = Stream::derive(1, "c");
        let c = centre(16, 16, 9, 1, 0.01, CentreRule::Same, &mut stream, (1, "c"));
        assert_eq!((c.rotations(), c.nnz()), (0, 16));
        assert_eq!(stream.below(1 << 40), Stream::derive(1, "c").below(1 << 40));
        // Depthwise at 0.3: each 1 x 1 block is +-1; the top-up reaches ceil(0.3 * 288).
        let mut stream = Stream::derive(1, "dw");
        let c = centre(32, 1, 9, 32, 0.3, CentreRule::Sqrt, &mut stream, (1, "dw"));
        assert_eq!((c.rotations(), c.nnz()), (0, 32));
        let m = mask(&c, &[3, 3], 0.3, &mut stream);
        let Mask::Bytes(grid) = m else {
            panic!("a kernel's mask is bytes")
        };
        let mut ones = Vec::new();
        grid.rows_into(0, grid.rows(), &mut ones);
        assert_eq!(ones.iter().filter(|&&b| b == 1).count(), 87);
    }

    #[test]
    fn mask_is_topped_up_to_the_target_and_never_below_the_centre() {
        assert_eq!(mask_ones(0.1, 1000, 10), 100);
        assert_eq!(mask_ones(0.1, 1001, 10), 101);
        assert_eq!(mask_ones(0.001, 1000, 10), 10);
        assert_eq!(mask_ones(1.0, 1000, 10), 1000);
    }
}

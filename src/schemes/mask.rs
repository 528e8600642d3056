//! Random masks, the baselines' pruning: exactly `round(d * numel)` ones, a subset chosen
//! uniformly among all subsets of that size, from the tensor's own stream. The baselines'
//! weights are drawn after the mask and are zero outside it.

use super::{LayerPlan, LayerStats, Minimum, StoredMask};
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order};

/// A random mask's smallest density: one weight.
pub fn minimum(layer: &LayerPlan) -> Minimum {
    let numel = layer.shape.numel();
    Minimum {
        density: 1.0 / numel as f64,
        reason: format!("one weight of {numel}"),
        help: None,
    }
}

/// The ones a layer's random mask holds, [`ones`] of its density.
pub fn expected_nnz(layer: &LayerPlan) -> u64 {
    ones(layer.density, layer.shape.numel())
}

/// The statistics of a random-mask layer: they follow from the plan alone.
pub fn stats(layer: &LayerPlan) -> LayerStats {
    LayerStats {
        numel: layer.shape.numel(),
        nnz: expected_nnz(layer),
        rotations: None,
        centre_nnz: None,
        isometry_error: None,
    }
}

/// A layer's random mask over its (out, in * K) flattening: the first draws of its stream.
pub fn draw(layer: &LayerPlan, stream: &mut Stream) -> Mask {
    let shape = &layer.shape;
    random(shape.out(), shape.fan_in(), layer.density, stream)
}

/// What is wrong with a stored mask that should hold exactly [`ones`] of its density.
pub fn check_count(mask: &StoredMask<'_>) -> Vec<String> {
    let numel = mask.bits.len() as u64;
    let want = ones(mask.density, numel);
    if want == mask.nnz {
        return Vec::new();
    }
    vec![format!(
        "a {} mask at density {} over {numel} weights has round(d * numel) = {want} ones, this one {}",
        mask.scheme.name(),
        mask.density,
        mask.nnz
    )]
}

/// Ones in a random mask of density `density` over `numel` weights: `round(d * numel)`
/// (halves away from zero), at most `numel`.
pub fn ones(density: f64, numel: u64) -> u64 {
    let exact = (density * numel as f64).round();
    if exact >= numel as f64 {
        numel
    } else {
        exact as u64
    }
}

/// `ones` positions of `0..numel` chosen uniformly without replacement, as one byte per
/// position (1 chosen, 0 not).
///
/// Draws (Floyd's algorithm, exactly `ones` draws): for `j` from `numel - ones` up to
/// `numel - 1`, draw `t` with [`Stream::below`]`(j + 1)`; if position `t` is not chosen yet,
/// choose it, otherwise choose position `j`. Every subset of size `ones` is equally likely,
/// and the memory is the byte mask alone, whatever the density.
pub fn choose(numel: usize, ones: usize, stream: &mut Stream) -> Vec<u8> {
    let mut chosen = vec![0u8; numel];
    for j in numel - ones.min(numel)..numel {
        let t = stream.below(j as u64 + 1) as usize;
        if chosen[t] == 0 {
            chosen[t] = 1;
        } else {
            chosen[j] = 1;
        }
    }
    chosen
}

/// A layer's random mask over its (out, in * taps) flattening, row-major: the positions in
/// PyTorch order (out, in, k...).
pub fn random(out: usize, row_len: usize, density: f64, stream: &mut Stream) -> Mask {
    let numel = out * row_len;
    let want = ones(density, numel as u64) as usize;
    Mask::Bytes(Grid::new(
        out,
        row_len,
        Order::RowMajor,
        choose(numel, want, stream),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ones_round_half_away_from_zero() {
        assert_eq!(ones(0.5, 5), 3);
        assert_eq!(ones(0.1, 1000), 100);
        assert_eq!(ones(0.125, 128 * 128), 2048);
        assert_eq!(ones(1.0, 7), 7);
        assert_eq!(ones(1e-9, 7), 0);
    }

    #[test]
    fn exactly_the_asked_number_is_chosen() {
        let mut s = Stream::derive(1, "m");
        for (numel, k) in [(10, 0), (10, 1), (10, 9), (10, 10), (1000, 377)] {
            let m = choose(numel, k, &mut s);
            assert_eq!(m.iter().filter(|&&b| b == 1).count(), k);
            assert!(m.iter().all(|&b| b <= 1));
        }
    }

    #[test]
    fn every_position_is_equally_likely() {
        // 20000 draws of 3 of 8 positions: each position expects 7500 hits, sd about 68.
        let mut s = Stream::derive(2, "m");
        let mut hits = [0u32; 8];
        for _ in 0..20_000 {
            for (h, b) in hits.iter_mut().zip(choose(8, 3, &mut s)) {
                *h += u32::from(b);
            }
        }
        assert!(hits.iter().all(|&h| (7150..7850).contains(&h)), "{hits:?}");
    }

    #[test]
    fn pairs_are_as_likely_as_uniform_sampling_makes_them() {
        // Subsets of 2 of 4: each of the 6 pairs has probability 1/6 (3000 of 18000, sd 50).
        let mut s = Stream::derive(3, "m");
        let mut counts = std::collections::HashMap::new();
        for _ in 0..18_000 {
            *counts.entry(choose(4, 2, &mut s)).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 6);
        assert!(
            counts.values().all(|&c| (2750..3250).contains(&c)),
            "{counts:?}"
        );
    }
}

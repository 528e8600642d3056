//! Densities per layer: the layers the spec or a pattern fixes, and the overall density
//! spread over the others by the distribution (`uniform`, `erk`, `er`), capped at 1 and
//! re-balanced, and raised to each layer's minimum where `below_minimum = "clamp"`.
//!
//! ERK's raw density of a layer is `((sum of dims) / (product of dims))^p`, ER's
//! `(out + in) / (out * in)`, both of the tensor's real shape (for a grouped convolution
//! (out, in/G, k...), as PyTorch stores it), and its weight N_l is its numel; eps solves
//! `sum_free eps raw_l N_l + sum_fixed d_l N_l = d sum_all N_l`, so fixed layers count
//! against the budget and the overall density is d.

use crate::layer::{Distribution, Origin, Shape};
use crate::spec::{Sparsity, SpecError};

/// A layer as the distribution sees it.
pub struct Slot {
    /// ERK/ER raw density; meaningless for fixed slots.
    raw: f64,
    numel: f64,
    /// The layer's own density or a pattern's, when it has one.
    pub fixed: Option<(f64, Origin)>,
    /// The smallest density the layer's scheme can make.
    minimum: f64,
}

impl Slot {
    /// A layer of `shape` whose scheme makes at least `minimum`, fixed at `fixed` if it is.
    pub fn new(
        sparsity: &Sparsity,
        shape: &Shape,
        fixed: Option<(f64, Origin)>,
        minimum: f64,
    ) -> Slot {
        let raw = match sparsity.distribution {
            Distribution::Uniform => 1.0,
            Distribution::Erk => {
                let sum: f64 = shape.dims().iter().map(|&d| d as f64).sum();
                let product: f64 = shape.dims().iter().map(|&d| d as f64).product();
                // libm, not the platform pow: densities feed the stop rule, so they must be
                // the same to the last bit everywhere.
                libm::pow(sum / product, sparsity.erk_power_scale)
            }
            Distribution::Er => {
                let (o, i) = (shape.out() as f64, shape.inp() as f64);
                (o + i) / (o * i)
            }
        };
        Slot {
            raw,
            numel: shape.numel() as f64,
            fixed,
            minimum,
        }
    }
}

pub use crate::layer::below;

/// Every layer's density and where it came from. With `clamp`, fixed densities below a
/// layer's minimum are raised to it, and so are distributed ones (erk and er re-balance the
/// rest); without it, a density below the minimum is left for the caller to refuse.
pub fn distribute(
    sparsity: &Sparsity,
    mut slots: Vec<Slot>,
    clamp: bool,
    file: &str,
) -> Result<Vec<(f64, Origin)>, SpecError> {
    if clamp {
        for slot in &mut slots {
            if let Some((d, _)) = slot.fixed
                && below(d, slot.minimum)
            {
                slot.fixed = Some((slot.minimum, Origin::Clamped));
            }
        }
    }
    let target = sparsity.density.get();
    let free_density = match sparsity.distribution {
        Distribution::Uniform => slots
            .iter()
            .map(|s| {
                if clamp && below(target, s.minimum) {
                    s.minimum
                } else {
                    target
                }
            })
            .collect(),
        Distribution::Erk | Distribution::Er => spread(sparsity, &mut slots, clamp, file)?,
    };
    Ok(slots
        .iter()
        .zip(free_density)
        .map(|(slot, free)| match slot.fixed {
            Some(fixed) => fixed,
            None if clamp && free > target && sparsity.distribution == Distribution::Uniform => {
                (free, Origin::Clamped)
            }
            None => (free, Origin::Distributed),
        })
        .collect())
}

/// ERK's or ER's densities of the free layers: eps times each raw density, after capping
/// every free layer with the largest raw density at 1 (and, with `clamp`, raising those below
/// their minimum) until none exceeds 1.
fn spread(
    sparsity: &Sparsity,
    slots: &mut [Slot],
    clamp: bool,
    file: &str,
) -> Result<Vec<f64>, SpecError> {
    let target = sparsity.density.get();
    let error = |message: String, help: &str| SpecError {
        file: file.to_string(),
        position: None,
        context: "[sparsity]".into(),
        message,
        help: Some(help.into()),
    };
    let total: f64 = slots.iter().map(|s| s.numel).sum();
    let budget = target * total;
    loop {
        let free: Vec<usize> = (0..slots.len())
            .filter(|&k| slots[k].fixed.is_none())
            .collect();
        if free.is_empty() {
            return Err(error(
                format!(
                    "distribution \"{}\" has no free layer to spread density {} over: every layer is fixed or dense",
                    sparsity.distribution.name(),
                    target
                ),
                "drop a layer's fixed density or a dense pattern (N:M layers are fixed at N/M too), or use distribution = \"uniform\"",
            ));
        }
        let fixed_kept: f64 = slots
            .iter()
            .filter_map(|s| s.fixed.map(|(d, _)| d * s.numel))
            .sum();
        let remaining = budget - fixed_kept;
        if remaining <= 0.0 {
            return Err(error(
                format!(
                    "fixed and dense layers alone keep {:.0} weights, the whole budget of density {} ({:.0} of {:.0} weights) or more, leaving nothing for the {} free layers",
                    fixed_kept,
                    target,
                    budget,
                    total,
                    free.len()
                ),
                "raise [sparsity] density, or fix fewer layers",
            ));
        }
        let free_mass: f64 = free.iter().map(|&k| slots[k].raw * slots[k].numel).sum();
        let eps = remaining / free_mass;
        let largest = free.iter().map(|&k| slots[k].raw).fold(f64::MIN, f64::max);
        if eps * largest > 1.0 {
            for &k in &free {
                if slots[k].raw == largest {
                    slots[k].fixed = Some((1.0, Origin::Capped));
                }
            }
            continue;
        }
        let mut raised = false;
        if clamp {
            for &k in &free {
                if below(eps * slots[k].raw, slots[k].minimum) {
                    slots[k].fixed = Some((slots[k].minimum, Origin::Clamped));
                    raised = true;
                }
            }
        }
        if !raised {
            return Ok(slots.iter().map(|s| eps * s.raw).collect());
        }
    }
}

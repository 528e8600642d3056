//! Density planning: every layer's density (uniform, ERK, ER, fixed densities, dense
//! patterns, each scheme's minimum), gain, centre rule and scheme, and the output choices,
//! resolved from a [`Spec`] into a [`Plan`], one phase at a time: each layer as its scheme
//! will make it ([`resolve`]), the densities the spec fixes ([`fixed_densities`]), the rest
//! spread by the distribution ([`densities`]), each layer checked by its scheme ([`check`]),
//! and the output ([`output`]). Generation executes the plan and never looks at the spec.

pub mod densities;
pub mod output;

use crate::layer::Dtype;
use crate::layer::{
    BelowMinimum, CentreRule, ConvMask, Density, Distribution, Format, Kind, Layout, Names, Origin,
};
use crate::schemes::nm::{Nm, Skip};
use crate::schemes::{LayerPlan, Minimum, Scheme};
use crate::spec::{LayerSpec, Source, Spec, SpecError};
use densities::Slot;
pub use output::OutputPlan;

/// Command-line choices that take precedence over the spec.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub seed: Option<u64>,
    /// Every layer's scheme, over the spec's `[init]` and per-layer `scheme`.
    pub scheme: Option<Scheme>,
    pub format: Option<Format>,
    pub dtype: Option<Dtype>,
    pub mask_dtype: Option<Dtype>,
    pub max_shard_size: Option<u64>,
    pub layout: Option<Layout>,
    pub names: Option<Names>,
    /// `[sparsity] below_minimum`, over the spec's.
    pub below_minimum: Option<BelowMinimum>,
}

/// Everything generation needs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub source: Source,
    pub seed: u64,
    /// The overall density the spec asked for.
    pub requested_density: Density,
    pub distribution: Distribution,
    /// The scheme the command line imposed on every layer, if it did (the provenance
    /// records it, since the spec text does not say it).
    pub scheme_override: Option<Scheme>,
    /// The command line's `--below-minimum`, if given (recorded like `scheme_override`).
    pub below_minimum_override: Option<BelowMinimum>,
    pub layers: Vec<LayerPlan>,
    pub output: OutputPlan,
    /// Things the user should know that do not stop the run.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn params(&self) -> u64 {
        self.layers.iter().map(|l| l.shape.numel()).sum()
    }

    /// The overall planned density: the parameter-weighted mean of the layer densities.
    pub fn density(&self) -> f64 {
        let kept: f64 = self
            .layers
            .iter()
            .map(|l| l.density * l.shape.numel() as f64)
            .sum();
        kept / self.params() as f64
    }

    pub fn expected_nnz(&self) -> u64 {
        self.layers.iter().map(LayerPlan::expected_nnz).sum()
    }
}

/// Resolves a spec into a plan.
///
/// Grouped convolutions (`groups = G`) enter the densities through the tensor's real shape
/// only (see [`densities`]); a grouped layer's density applies to the whole tensor, its
/// scheme's minimum is per block, and the centre density d_H (`conv_center`) is each block's.
pub fn plan(spec: &Spec, overrides: &Overrides) -> Result<Plan, SpecError> {
    let file = spec.source.name.as_str();
    let mut warnings = Vec::new();
    let mut layers: Vec<LayerPlan> = spec
        .layers
        .iter()
        .map(|layer| resolve(spec, overrides, layer))
        .collect();
    let mut fixed = fixed_densities(spec, &layers, &mut warnings)?;
    patterns(spec, &mut layers, &mut fixed, &mut warnings)?;
    let minima: Vec<Minimum> = layers.iter().map(|l| l.rules().minimum(l)).collect();
    let slots = layers
        .iter()
        .zip(fixed)
        .zip(&minima)
        .map(|((l, fixed), min)| Slot::new(&spec.sparsity, &l.shape, fixed, min.density))
        .collect();
    let below_minimum = overrides
        .below_minimum
        .unwrap_or(spec.sparsity.below_minimum);
    let clamp = below_minimum == BelowMinimum::Clamp;
    let densities = densities::distribute(&spec.sparsity, slots, clamp, file)?;
    for ((layer, (density, origin)), minimum) in layers.iter_mut().zip(densities).zip(&minima) {
        layer.density = density;
        layer.origin = origin;
        check(layer, minimum, spec.sparsity.distribution, file)?;
        if origin == Origin::Clamped {
            warnings.push(format!(
                "layer \"{}\": density raised to {}'s minimum {:.6} for shape {}",
                layer.name,
                layer.rules().maker(),
                density,
                layer.shape
            ));
        }
    }
    let output = output::resolve(spec, overrides)?;
    output::check_names(&layers, &output, file)?;
    Ok(Plan {
        source: spec.source.clone(),
        seed: overrides.seed.unwrap_or(spec.seed),
        requested_density: spec.sparsity.density,
        distribution: spec.sparsity.distribution,
        scheme_override: overrides.scheme,
        below_minimum_override: overrides.below_minimum,
        layers,
        output,
        warnings,
    })
}

/// A layer of the spec as its scheme will make it, its density not decided yet: its scheme
/// (the command line's, the layer's, or `[init]`'s), gain, centre rule and mask rule (a
/// structured mask for the convolutions of a scheme that takes one, which sets `d_H = d`),
/// and its bias.
fn resolve(spec: &Spec, overrides: &Overrides, layer: &LayerSpec) -> LayerPlan {
    let init = &spec.init;
    let scheme: Scheme = overrides.scheme.or(layer.scheme).unwrap_or(init.scheme);
    let conv_mask = if scheme.rules().structured_masks() && layer.shape.kind() == Kind::Conv {
        layer.conv_mask.unwrap_or(init.conv_mask)
    } else {
        ConvMask::TopUp
    };
    let conv_center = match conv_mask {
        ConvMask::Structured => CentreRule::Same,
        ConvMask::TopUp => layer.conv_center.unwrap_or(init.conv_center),
    };
    LayerPlan {
        name: layer.name.clone(),
        shape: layer.shape.clone(),
        density: 1.0,
        origin: Origin::Distributed,
        scheme,
        gain: layer.gain.clone().unwrap_or_else(|| init.gain.clone()),
        conv_center,
        conv_mask,
        // [init]'s bias_std applies to the layers named <module>.weight only; a layer's own
        // bias_std is refused by the spec on any other name.
        bias_std: layer
            .bias_std
            .or(init.bias_std.filter(|_| layer.name.ends_with(".weight"))),
        isometry: init.isometry,
        groups: layer.groups,
        tied: layer.tied.clone(),
        nm: None,
        position: layer.position,
    }
}

/// The N:M patterns: each layer's own `nm`, or `[sparsity]`'s for a layer that is not dense.
/// A layer with a pattern is fixed at N/M unless it fixes its own density (which its rules
/// then check is at most N/M). A shape the pattern does not fit is an error, or, for a layer
/// that inherits `[sparsity]`'s pattern, what `nm_skip` says: dense (unless the layer fixes
/// its own density), or no pattern.
fn patterns(
    spec: &Spec,
    layers: &mut [LayerPlan],
    fixed: &mut [Option<(f64, Origin)>],
    warnings: &mut Vec<String>,
) -> Result<(), SpecError> {
    let sparsity = &spec.sparsity;
    if let Some(p) = sparsity.nm
        && sparsity.density.get() < p.density()
    {
        warnings.push(format!(
            "[sparsity] density {} is below {} (N/M of nm = \"{p}\"): N:M layers keep N/M of their weights unless they fix a lower density, so the overall density is not the target",
            sparsity.density.get(),
            p.density()
        ));
    }
    for ((layer_spec, layer), fixed) in spec.layers.iter().zip(layers.iter_mut()).zip(fixed) {
        let explicit = layer_spec.nm.is_some();
        let error = |context: &str, message: String, help: String| SpecError {
            file: spec.source.name.clone(),
            position: Some(layer_spec.position),
            context: format!("layer \"{}\", field `{context}`", layer.name),
            message,
            help: Some(help),
        };
        let Some(pattern) = layer_spec.nm.unwrap_or(sparsity.nm) else {
            if layer_spec.nm_transposable.is_some() {
                return Err(error(
                    "nm_transposable",
                    "nm_transposable applies to N:M layers, but this layer has no N:M pattern"
                        .into(),
                    "give the layer an `nm` (or [sparsity] one), or remove nm_transposable".into(),
                ));
            }
            continue;
        };
        if !explicit && fixed.is_some_and(|(d, _)| d >= 1.0) {
            // A dense layer has no pattern to inherit.
            continue;
        }
        let nm = Nm {
            pattern,
            transposable: layer_spec
                .nm_transposable
                .unwrap_or(sparsity.nm_transposable),
        };
        if let Err(unfit) = crate::schemes::nm::fit(&layer.shape, layer.groups, nm) {
            let skip = sparsity.nm_skip;
            if explicit || skip == Skip::Error {
                let mut fixes = unfit.fixes;
                fixes.push(if explicit {
                    "nm = \"none\" for this layer".into()
                } else {
                    "nm = \"none\" for this layer, or nm_skip = \"dense\" or \"unstructured\" in [sparsity] for every layer the pattern does not fit".into()
                });
                return Err(error(
                    "nm",
                    unfit.message,
                    format!("use {}", fixes.join(", or ")),
                ));
            }
            if skip == Skip::Dense && fixed.is_none() {
                *fixed = Some((1.0, Origin::Dense));
            }
            continue;
        }
        layer.nm = Some(nm);
        if fixed.is_none() {
            *fixed = Some((pattern.density(), Origin::Nm));
        }
    }
    Ok(())
}

/// The densities the spec fixes: a layer's own `density`, a `dense` pattern (density 1), or,
/// under a structured mask, a convolution reading the input image (its full `in` is
/// `image_channels`), which stays dense as in the reference code. A pattern that matches no
/// layer is a warning; a layer with both its own density and a pattern is an error.
fn fixed_densities(
    spec: &Spec,
    layers: &[LayerPlan],
    warnings: &mut Vec<String>,
) -> Result<Vec<Option<(f64, Origin)>>, SpecError> {
    let dense = &spec.sparsity.dense;
    let mut matched = vec![0usize; dense.len()];
    let mut fixed = Vec::with_capacity(layers.len());
    for (layer, planned) in spec.layers.iter().zip(layers) {
        let dense_by: Option<usize> = dense.iter().position(|p| p.matches(&layer.name));
        for (count, pattern) in matched.iter_mut().zip(dense) {
            if pattern.matches(&layer.name) {
                *count += 1;
            }
        }
        let image = planned.conv_mask == ConvMask::Structured
            && layer.shape.inp() * layer.groups == spec.init.image_channels;
        fixed.push(match (layer.density, dense_by) {
            (Some(d), Some(p)) => {
                let pattern = &dense[p];
                return Err(SpecError {
                    file: spec.source.name.clone(),
                    position: Some(layer.position),
                    context: format!("layer \"{}\"", layer.name),
                    message: format!(
                        "the layer fixes density = {} but also matches dense pattern \"{}\" (line {}); which one is meant?",
                        d.get(),
                        pattern.glob,
                        pattern.position.0
                    ),
                    help: Some("remove the layer's density, or narrow the pattern".into()),
                });
            }
            (Some(d), None) => Some((d.get(), Origin::Fixed)),
            (None, _) if image => Some((1.0, Origin::Dense)),
            (None, Some(_)) => Some((1.0, Origin::Dense)),
            (None, None) => None,
        });
    }
    for (count, pattern) in matched.iter().zip(dense) {
        if *count == 0 {
            warnings.push(format!(
                "{}:{}:{}: dense pattern \"{}\" matches no layer",
                spec.source.name, pattern.position.0, pattern.position.1, pattern.glob
            ));
        }
    }
    Ok(fixed)
}

/// A planned layer against its scheme: its density at least the scheme's minimum, and
/// whatever else the scheme requires ([`crate::schemes::Rules::check`]).
fn check(
    layer: &LayerPlan,
    minimum: &Minimum,
    distribution: Distribution,
    file: &str,
) -> Result<(), SpecError> {
    let how = match layer.origin {
        Origin::Fixed => "its density".to_string(),
        Origin::Nm => "its N:M pattern gives it".to_string(),
        _ => format!("distribution \"{}\" gives it", distribution.name()),
    };
    let rules = layer.rules();
    let density = layer.density;
    if densities::below(density, minimum.density) {
        return Err(SpecError {
            file: file.to_string(),
            position: Some(layer.position),
            context: format!("layer \"{}\"", layer.name),
            message: format!(
                "{how} {density:.6}, below the {:.6} that {} can make for shape {} ({})",
                minimum.density,
                rules.maker(),
                layer.shape,
                minimum.reason,
            ),
            help: Some(minimum.help.clone().unwrap_or_else(|| {
                "raise the density, or set below_minimum = \"clamp\" in [sparsity] (or pass --below-minimum clamp) to use the minimum".into()
            })),
        });
    }
    rules.check(layer).map_err(|refusal| SpecError {
        file: file.to_string(),
        position: Some(layer.position),
        context: match refusal.field {
            Some(field) => format!("layer \"{}\", field `{field}`", layer.name),
            None => format!("layer \"{}\"", layer.name),
        },
        message: if refusal.density {
            format!("{how} {density}, {}", refusal.message)
        } else {
            refusal.message
        },
        help: Some(refusal.help),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    fn plan_of(text: &str) -> Result<Plan, SpecError> {
        let spec = spec::parse(Source {
            name: "t.toml".into(),
            text: text.into(),
        })?;
        plan(&spec, &Overrides::default())
    }

    fn densities(p: &Plan) -> Vec<f64> {
        p.layers.iter().map(|l| l.density).collect()
    }

    const TWO: &str =
        "[[layer]]\nname='a'\nshape=[100, 50]\n[[layer]]\nname='b'\nshape=[10, 100]\n";

    #[test]
    fn uniform_gives_every_free_layer_the_density() {
        let p = plan_of(&format!("[sparsity]\ndensity=0.3\n{TWO}")).unwrap();
        assert_eq!(densities(&p), [0.3, 0.3]);
        assert!((p.density() - 0.3).abs() < 1e-15);
    }

    #[test]
    fn erk_matches_hand_computed_values() {
        // raw_a = 150/5000 = 0.03, raw_b = 110/1000 = 0.11; N_a = 5000, N_b = 1000.
        // eps * (0.03*5000 + 0.11*1000) = 0.2 * 6000  =>  eps = 1200 / 260.
        let p = plan_of(&format!(
            "[sparsity]\ndensity=0.2\ndistribution='erk'\n{TWO}"
        ))
        .unwrap();
        let eps = 1200.0 / 260.0;
        let d = densities(&p);
        assert!((d[0] - 0.03 * eps).abs() < 1e-12, "{d:?}");
        assert!((d[1] - 0.11 * eps).abs() < 1e-12, "{d:?}");
        assert!((p.density() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn erk_caps_layers_above_one_and_rebalances() {
        // eps * 260 = 0.5 * 6000 => eps = 11.54; raw_b * eps = 1.27 > 1, so b becomes dense:
        // a gets (3000 - 1000) / 5000 = 0.4.
        let p = plan_of(&format!(
            "[sparsity]\ndensity=0.5\ndistribution='erk'\n{TWO}"
        ))
        .unwrap();
        assert_eq!(p.layers[1].origin, Origin::Capped);
        assert_eq!(p.layers[1].density, 1.0);
        assert!((p.layers[0].density - 0.4).abs() < 1e-12);
        assert!((p.density() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn er_uses_the_channel_dimensions_only() {
        let text = "[sparsity]\ndensity=0.1\ndistribution='er'\n[[layer]]\nname='c'\nshape=[20, 10, 3, 3]\n[[layer]]\nname='l'\nshape=[40, 30]\n";
        let p = plan_of(text).unwrap();
        // raw_c = 30/200 = 0.15 (N 1800), raw_l = 70/1200 (N 1200).
        let eps = 0.1 * 3000.0 / (0.15 * 1800.0 + 70.0 / 1200.0 * 1200.0);
        assert!((p.layers[0].density - 0.15 * eps).abs() < 1e-12);
        assert!((p.layers[1].density - 70.0 / 1200.0 * eps).abs() < 1e-12);
    }

    #[test]
    fn erk_power_scale_zero_is_uniform_over_free_layers() {
        let p = plan_of(&format!(
            "[sparsity]\ndensity=0.2\ndistribution='erk'\nerk_power_scale=0\n{TWO}"
        ))
        .unwrap();
        assert!((p.layers[0].density - 0.2).abs() < 1e-12);
        assert!((p.layers[1].density - 0.2).abs() < 1e-12);
    }

    #[test]
    fn fixed_layers_count_against_the_erk_budget() {
        let text = "[sparsity]\ndensity=0.2\ndistribution='erk'\ndense=['b']\n[[layer]]\nname='a'\nshape=[100, 50]\n[[layer]]\nname='b'\nshape=[10, 100]\n";
        let p = plan_of(text).unwrap();
        assert_eq!(p.layers[1].origin, Origin::Dense);
        assert!((p.layers[0].density - 200.0 / 5000.0).abs() < 1e-12);
        assert!((p.density() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn budget_and_freedom_errors() {
        let e = plan_of("[sparsity]\ndensity=0.1\ndistribution='erk'\ndense=['b']\n[[layer]]\nname='a'\nshape=[100, 50]\n[[layer]]\nname='b'\nshape=[100, 100]\n").unwrap_err();
        assert!(e.message.contains("leaving nothing"), "{e}");
        let e = plan_of("[sparsity]\ndensity=0.1\ndistribution='erk'\ndense=['*']\n[[layer]]\nname='a'\nshape=[100, 50]\n").unwrap_err();
        assert!(e.message.contains("no free layer"), "{e}");
        let e = plan_of("[sparsity]\ndensity=0.1\ndense=['a']\n[[layer]]\nname='a'\nshape=[10, 5]\ndensity=0.5\n").unwrap_err();
        assert!(e.message.contains("also matches dense pattern"), "{e}");
    }

    #[test]
    fn below_minimum_is_an_error_or_a_clamp() {
        let e = plan_of("[sparsity]\ndensity=0.001\n[[layer]]\nname='a'\nshape=[100, 50]\n")
            .unwrap_err();
        assert!(e.message.contains("below the 0.010000"), "{e}");
        assert_eq!(e.position, Some((4, 6)));
        let p = plan_of("[sparsity]\ndensity=0.001\nbelow_minimum='clamp'\n[[layer]]\nname='a'\nshape=[100, 50]\n").unwrap();
        assert_eq!(p.layers[0].density, 0.01);
        assert_eq!(p.layers[0].origin, Origin::Clamped);
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn erk_clamping_keeps_the_overall_density() {
        // A tiny-density big layer next to a small one: ERK puts the big one below 1/m.
        let text = "[sparsity]\ndensity=0.0006\ndistribution='erk'\nbelow_minimum='clamp'\n[[layer]]\nname='big'\nshape=[2000, 2000]\n[[layer]]\nname='small'\nshape=[500, 2000]\n";
        let p = plan_of(text).unwrap();
        assert!(p.layers.iter().any(|l| l.origin == Origin::Clamped));
        assert!((p.density() - 0.0006).abs() < 1e-12, "{}", p.density());
        assert_eq!(p.layers[0].density, 1.0 / 2000.0);
    }

    #[test]
    fn unmatched_dense_patterns_warn() {
        let p = plan_of(&format!("[sparsity]\ndensity=0.3\ndense=['zzz*']\n{TWO}")).unwrap();
        assert!(p.warnings[0].contains("matches no layer"));
    }

    #[test]
    fn mask_names_may_not_collide_with_layers() {
        let e = plan_of("[sparsity]\ndensity=0.5\n[[layer]]\nname='a'\nshape=[4, 4]\n[[layer]]\nname='a_mask'\nshape=[4, 4]\n").unwrap_err();
        assert!(e.message.contains("also the mask name"), "{e}");
    }

    #[test]
    fn biases_follow_init_and_the_layers_own_bias_std() {
        let p = plan_of("[sparsity]\ndensity=0.5\n[init]\nbias_std=0.1\n[[layer]]\nname='a.weight'\nshape=[4, 4]\n[[layer]]\nname='b.weight'\nshape=[3, 4]\nbias_std=0\n[[layer]]\nname='c'\nshape=[4, 3]\n").unwrap();
        let biases: Vec<(Option<String>, Option<f64>)> = p
            .layers
            .iter()
            .map(|l| (l.bias_name(), l.bias_std))
            .collect();
        assert_eq!(
            biases,
            [
                (Some("a.bias".into()), Some(0.1)),
                (Some("b.bias".into()), Some(0.0)),
                (None, None)
            ]
        );
        // Without bias_std anywhere, no layer has a bias.
        let p = plan_of(&format!("[sparsity]\ndensity=0.3\n{TWO}")).unwrap();
        assert!(p.layers.iter().all(|l| l.bias_name().is_none()));
    }

    #[test]
    fn a_bias_may_not_take_another_tensors_name() {
        let e = plan_of("[sparsity]\ndensity=0.5\n[[layer]]\nname='fc.weight'\nshape=[4, 4]\nbias_std=0.1\n[[layer]]\nname='fc.bias'\nshape=[4, 4]\n").unwrap_err();
        assert_eq!(e.context, "layer \"fc.weight\", field `bias_std`");
        assert!(
            e.message
                .contains("bias \"fc.bias\" has the name of a tensor of layer \"fc.bias\""),
            "{e}"
        );
        assert_eq!(e.position, Some((4, 6)));
        // A mask name counts too.
        let e = plan_of("[sparsity]\ndensity=0.5\n[init]\nbias_std=0.1\n[output]\nmask_suffix='.bias'\n[[layer]]\nname='fc.weight'\nshape=[4, 4]\n[[layer]]\nname='fc'\nshape=[4, 4]\n").unwrap_err();
        assert!(e.message.contains("of layer \"fc\""), "{e}");
    }

    #[test]
    fn torch_prune_takes_any_parameter_and_keeps_every_name_distinct() {
        let prune = |layers: &str| {
            plan_of(&format!(
                "[sparsity]\ndensity=0.5\n[output]\nnames='torch-prune'\n{layers}"
            ))
        };
        let p = prune("[[layer]]\nname='attn.in_proj_weight'\nshape=[12, 4]\n[[layer]]\nname='head'\nshape=[4, 4]\n").unwrap();
        assert_eq!(
            [
                p.output.weight_name("attn.in_proj_weight"),
                p.output.mask_name("attn.in_proj_weight")
            ],
            ["attn.in_proj_weight_orig", "attn.in_proj_weight_mask"]
        );
        // No state dict holds an empty name part.
        for bad in ["fc.", ".weight", "a..weight"] {
            let e = prune(&format!("[[layer]]\nname='{bad}'\nshape=[4, 4]\n")).unwrap_err();
            assert!(e.message.contains("<module>.<param>"), "{bad}: {e}");
            assert_eq!(e.context, format!("layer \"{bad}\""));
        }
        // A layer named like another's pruned parameter or mask.
        let e = prune("[[layer]]\nname='fc.weight'\nshape=[4, 4]\n[[layer]]\nname='fc.weight_orig'\nshape=[4, 4]\n").unwrap_err();
        assert!(
            e.message
                .contains("the name torch-prune gives to the weight of layer \"fc.weight\""),
            "{e}"
        );
        let e = prune("[[layer]]\nname='fc.weight'\nshape=[4, 4]\n[[layer]]\nname='fc.weight_mask'\nshape=[4, 4]\n").unwrap_err();
        assert!(
            e.message
                .contains("mask name of layer \"fc.weight\" (names = \"torch-prune\")"),
            "{e}"
        );
        // A generated bias where the spec prunes that bias as a layer.
        let e = prune("[[layer]]\nname='fc.weight'\nshape=[4, 4]\nbias_std=0.1\n[[layer]]\nname='fc.bias'\nshape=[4, 4]\n").unwrap_err();
        assert!(
            e.message
                .contains("bias \"fc.bias\" has the name of a tensor of layer \"fc.bias\""),
            "{e}"
        );
    }

    #[test]
    fn a_tied_name_may_not_be_another_output_tensor() {
        let layers = "[[layer]]\nname='a.weight'\nshape=[4, 4]\ntied=['b.weight_mask']\n[[layer]]\nname='b.weight'\nshape=[4, 4]\n";
        let e = plan_of(&format!("[sparsity]\ndensity=0.5\n{layers}")).unwrap_err();
        assert_eq!(e.context, "layer \"a.weight\", field `tied`");
        assert!(e.message.contains("of layer \"b.weight\""), "{e}");
        // A bias counts too; a tied name no tensor takes is fine.
        let e = plan_of("[sparsity]\ndensity=0.5\n[init]\nbias_std=0.1\n[[layer]]\nname='a.weight'\nshape=[4, 4]\ntied=['a.bias']\n").unwrap_err();
        assert!(e.message.contains("tied name \"a.bias\""), "{e}");
        assert!(plan_of("[sparsity]\ndensity=0.5\n[[layer]]\nname='a.weight'\nshape=[4, 4]\ntied=['head.weight']\n").is_ok());
    }

    #[test]
    fn npy_names_may_not_leave_the_directory() {
        let e = plan_of("[sparsity]\ndensity=0.5\n[output]\nformat='npy'\n[[layer]]\nname='../evil'\nshape=[4, 4]\n").unwrap_err();
        assert!(e.message.contains("cannot be a file name"), "{e}");
    }

    #[test]
    fn grouped_layers_use_their_real_shape_and_a_per_block_minimum() {
        // (32, 4, 3, 3) with groups = 8 is in = 32, eight blocks of 4 x 4. ERK and ER see the
        // tensor's shape: raw_c = (32 + 4 + 3 + 3) / (32 * 4 * 9) = 42/1152 (N 1152),
        // raw_l = 80/1024 (N 1024); eps = 0.2 * 2176 / (42 + 80).
        let layers = "[[layer]]\nname='c'\nshape=[32, 4, 3, 3]\ngroups=8\n[[layer]]\nname='l'\nshape=[16, 64]\n";
        let p = plan_of(&format!(
            "[sparsity]\ndensity=0.2\ndistribution='erk'\n{layers}"
        ))
        .unwrap();
        let eps = 0.2 * 2176.0 / 122.0;
        assert!((p.layers[0].density - 42.0 / 1152.0 * eps).abs() < 1e-12);
        assert!((p.layers[1].density - 80.0 / 1024.0 * eps).abs() < 1e-12);
        assert_eq!((p.layers[0].groups, p.layers[0].block()), (8, (4, 4)));
        assert_eq!((p.layers[1].groups, p.layers[1].block()), (1, (16, 64)));
        // ER: (out + in/G) / (out * in/G) = 36/128.
        let p = plan_of(&format!(
            "[sparsity]\ndensity=0.2\ndistribution='er'\n{layers}"
        ))
        .unwrap();
        let eps = 0.2 * 2176.0 / (36.0 / 128.0 * 1152.0 + 80.0);
        assert!((p.layers[0].density - 36.0 / 128.0 * eps).abs() < 1e-12);
        // A depthwise layer ERK would put above 1 is capped dense, and ERK re-balances the rest.
        let text = "[sparsity]\ndensity=0.3\ndistribution='erk'\nbelow_minimum='clamp'\n[[layer]]\nname='dw'\nshape=[96, 1, 3, 3]\ngroups=96\n[[layer]]\nname='pw'\nshape=[96, 96, 1, 1]\n";
        let p = plan_of(text).unwrap();
        assert_eq!(p.layers[0].density, 1.0);
        assert!((p.density() - 0.3).abs() < 1e-12, "{}", p.density());
    }

    #[test]
    fn a_depthwise_layer_takes_any_density_down_to_one_weight_per_channel() {
        let dw = |density: f64, extra: &str| {
            plan_of(&format!(
                "[sparsity]\ndensity={density}\n{extra}[[layer]]\nname='dw'\nshape=[96, 1, 3, 3]\ngroups=96\n"
            ))
        };
        // 0.3 plans as asked; its centre (1 x 1 blocks) is raised to its identity.
        let p = dw(0.3, "").unwrap();
        assert_eq!(
            (p.layers[0].density, p.layers[0].origin),
            (0.3, Origin::Distributed)
        );
        let record = p.layers[0].rules().record(&p.layers[0]);
        assert_eq!(
            (record.centre_density, record.centre_raised),
            (Some(1.0), true)
        );
        // Below 1/9 (one weight of each 3 x 3 kernel) it is refused, or clamped to 1/9.
        let e = dw(0.05, "").unwrap_err();
        assert!(
            e.message.contains("below the 0.111111 that EOI can make"),
            "{e}"
        );
        let p = dw(0.05, "below_minimum='clamp'\n").unwrap();
        assert_eq!(
            (p.layers[0].density, p.layers[0].origin),
            (1.0 / 9.0, Origin::Clamped)
        );
    }
}

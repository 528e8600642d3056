//! Density planning: every layer's density (uniform, ERK, ER, fixed densities, dense
//! patterns, EOI's minimum), gain, centre rule and scheme, and the output choices, resolved
//! from a [`Spec`] into a [`Plan`]. Generation executes the plan and never looks at the spec.

use crate::layer::{
    BelowMinimum, CentreRule, ConvMask, Density, Distribution, Dtype, Format, Kind, Layout, Names,
    Origin, Shape,
};
use crate::schemes::{LayerPlan, Scheme, conv, sao};
use crate::spec::{Source, Spec, SpecError};

/// The smallest density a scheme can make for a shape with `groups` groups. EOI: the
/// identity's `1/max(out, in)` for a matrix; for a kernel, the density whose centre matrix
/// reaches that, per block: `1/max(out/G, in/G)` for each block's centre (so a depthwise
/// layer, whose blocks are 1 x 1, can only be dense). A random mask: one weight, `1/numel`.
/// SAO: its smallest degree over `max(out, in)`.
pub fn minimum_density(shape: &Shape, groups: usize, rule: CentreRule, scheme: Scheme) -> f64 {
    if scheme.random_mask() {
        return 1.0 / shape.numel() as f64;
    }
    if scheme == Scheme::Sao {
        return sao::minimum_density(shape.out(), shape.inp());
    }
    match shape.kind() {
        Kind::Linear => 1.0 / shape.out().max(shape.inp()) as f64,
        Kind::Conv => conv::minimum_density(shape.out() / groups, shape.inp(), shape.taps(), rule),
    }
}

/// Why a scheme's minimum density is what it is, for messages.
fn minimum_reason(shape: &Shape, groups: usize, scheme: Scheme) -> String {
    if scheme.random_mask() {
        return format!("one weight of {}", shape.numel());
    }
    if scheme == Scheme::Sao {
        let (n, m) = (shape.out().min(shape.inp()), shape.out().max(shape.inp()));
        return format!(
            "its smallest degree {} over max({}, {}): the degree must divide {m} and make {n} * degree / {m} whole",
            (sao::minimum_density(shape.out(), shape.inp()) * m as f64).round(),
            shape.out(),
            shape.inp()
        );
    }
    if groups > 1 {
        let out = shape.out() / groups;
        return format!(
            "the identity: 1/max({out}, {}) for each of the {groups} blocks of the centre matrix{}",
            shape.inp(),
            if out.max(shape.inp()) == 1 {
                "; the blocks of a depthwise convolution are 1 x 1, so EOI makes it dense"
            } else {
                ""
            }
        );
    }
    format!(
        "the identity: 1/max({}, {}){}",
        shape.out(),
        shape.inp(),
        if shape.kind() == Kind::Conv {
            " for the centre matrix"
        } else {
            ""
        }
    )
}

/// Output choices after the command line and the spec have had their say.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputPlan {
    pub format: Format,
    pub dtype: Dtype,
    pub mask_dtype: Dtype,
    pub mask_suffix: String,
    /// Largest shard in bytes: safetensors output becomes a directory of shards.
    pub max_shard_size: Option<u64>,
    /// Order of the weight (and mask) dimensions in the output.
    pub layout: Layout,
    pub names: Names,
}

impl OutputPlan {
    /// The output name of a layer's weight.
    pub fn weight_name(&self, layer: &str) -> String {
        match self.names {
            Names::Plain => layer.to_string(),
            Names::TorchPrune => format!("{layer}_orig"),
        }
    }

    /// The output name of a layer's mask.
    pub fn mask_name(&self, layer: &str) -> String {
        match self.names {
            Names::Plain => format!("{layer}{}", self.mask_suffix),
            Names::TorchPrune => format!("{layer}_mask"),
        }
    }
}

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

struct Slot {
    /// ERK/ER raw density; meaningless for fixed slots.
    raw: f64,
    numel: f64,
    fixed: Option<(f64, Origin)>,
}

/// Resolves a spec into a plan.
///
/// Grouped convolutions (`groups = G`) enter the densities through the tensor's real shape
/// only, (out, in/G, k...) as PyTorch stores it: ERK's raw density is
/// `((out + in/G + sum k) / (out * in/G * prod k))^p`, ER's `(out + in/G) / (out * in/G)`, and
/// N_l is the tensor's numel, so a grouped layer weighs in with the parameters it has. Its
/// density applies to the whole tensor; EOI's minimum is per block (see [`minimum_density`]);
/// the centre density d_H (`conv_center`) is each block's density.
pub fn plan(spec: &Spec, overrides: &Overrides) -> Result<Plan, SpecError> {
    let file = spec.source.name.clone();
    let error = |position: Option<(usize, usize)>,
                 context: String,
                 message: String,
                 help: Option<String>| SpecError {
        file: file.clone(),
        position,
        context,
        message,
        help,
    };
    let mut warnings = Vec::new();
    let sparsity = &spec.sparsity;

    // Fixed densities: the layer's own key, or a dense pattern.
    let mut matched = vec![0usize; sparsity.dense.len()];
    let mut slots = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        let dense_by: Option<usize> = sparsity.dense.iter().position(|p| p.matches(&layer.name));
        for (count, pattern) in matched.iter_mut().zip(&sparsity.dense) {
            if pattern.matches(&layer.name) {
                *count += 1;
            }
        }
        let fixed = match (layer.density, dense_by) {
            (Some(d), Some(p)) => {
                let pattern = &sparsity.dense[p];
                return Err(error(
                    Some(layer.position),
                    format!("layer \"{}\"", layer.name),
                    format!(
                        "the layer fixes density = {} but also matches dense pattern \"{}\" (line {}); which one is meant?",
                        d.get(),
                        pattern.glob,
                        pattern.position.0
                    ),
                    Some("remove the layer's density, or narrow the pattern".into()),
                ));
            }
            (Some(d), None) => Some((d.get(), Origin::Fixed)),
            (None, Some(_)) => Some((1.0, Origin::Dense)),
            (None, None) => None,
        };
        let shape = &layer.shape;
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
        slots.push(Slot {
            raw,
            numel: shape.numel() as f64,
            fixed,
        });
    }
    for (count, pattern) in matched.iter().zip(&sparsity.dense) {
        if *count == 0 {
            warnings.push(format!(
                "{}:{}:{}: dense pattern \"{}\" matches no layer",
                spec.source.name, pattern.position.0, pattern.position.1, pattern.glob
            ));
        }
    }

    let layer_schemes: Vec<Scheme> = spec
        .layers
        .iter()
        .map(|l| overrides.scheme.or(l.scheme).unwrap_or(spec.init.scheme))
        .collect();
    // A structured mask is for EOI convolutions; it sets d_H = d.
    let masks: Vec<ConvMask> = spec
        .layers
        .iter()
        .zip(&layer_schemes)
        .map(|(l, &scheme)| {
            if scheme == Scheme::Eoi && l.shape.kind() == Kind::Conv {
                l.conv_mask.unwrap_or(spec.init.conv_mask)
            } else {
                ConvMask::TopUp
            }
        })
        .collect();
    let rules: Vec<CentreRule> = spec
        .layers
        .iter()
        .zip(&masks)
        .map(|(l, &mask)| match mask {
            ConvMask::Structured => CentreRule::Same,
            ConvMask::TopUp => l.conv_center.unwrap_or(spec.init.conv_center),
        })
        .collect();
    // Under a structured mask, a convolution reading the input image stays dense, as in the
    // reference code (its `in` is the image's channel count).
    for ((slot, layer), &mask) in slots.iter_mut().zip(&spec.layers).zip(&masks) {
        if mask == ConvMask::Structured
            && layer.shape.inp() * layer.groups == spec.init.image_channels
            && layer.density.is_none()
        {
            slot.fixed = Some((1.0, Origin::Dense));
        }
    }
    let minima: Vec<f64> = spec
        .layers
        .iter()
        .zip(&rules)
        .zip(&layer_schemes)
        .map(|((l, &rule), &scheme)| minimum_density(&l.shape, l.groups, rule, scheme))
        .collect();
    let clamp = overrides.below_minimum.unwrap_or(sparsity.below_minimum) == BelowMinimum::Clamp;
    // A density counts as below the minimum only beyond rounding noise.
    let below = |d: f64, min: f64| d < min * (1.0 - 1e-12);
    if clamp {
        for (slot, &min) in slots.iter_mut().zip(&minima) {
            if let Some((d, _)) = slot.fixed
                && below(d, min)
            {
                slot.fixed = Some((min, Origin::Clamped));
            }
        }
    }

    let target = sparsity.density.get();
    let free_density: Vec<f64> = match sparsity.distribution {
        Distribution::Uniform => minima
            .iter()
            .map(|&min| {
                if clamp && below(target, min) {
                    min
                } else {
                    target
                }
            })
            .collect(),
        Distribution::Erk | Distribution::Er => {
            let total: f64 = slots.iter().map(|s| s.numel).sum();
            let budget = target * total;
            loop {
                let free: Vec<usize> = (0..slots.len())
                    .filter(|&k| slots[k].fixed.is_none())
                    .collect();
                if free.is_empty() {
                    return Err(error(
                        None,
                        "[sparsity]".into(),
                        format!(
                            "distribution \"{}\" has no free layer to spread density {} over: every layer is fixed or dense",
                            sparsity.distribution.name(),
                            target
                        ),
                        Some("drop a layer's fixed density or a dense pattern, or use distribution = \"uniform\"".into()),
                    ));
                }
                let fixed_kept: f64 = slots
                    .iter()
                    .filter_map(|s| s.fixed.map(|(d, _)| d * s.numel))
                    .sum();
                let remaining = budget - fixed_kept;
                if remaining <= 0.0 {
                    return Err(error(
                        None,
                        "[sparsity]".into(),
                        format!(
                            "fixed and dense layers alone keep {:.0} weights, the whole budget of density {} ({:.0} of {:.0} weights) or more, leaving nothing for the {} free layers",
                            fixed_kept,
                            target,
                            budget,
                            total,
                            free.len()
                        ),
                        Some("raise [sparsity] density, or fix fewer layers".into()),
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
                        if below(eps * slots[k].raw, minima[k]) {
                            slots[k].fixed = Some((minima[k], Origin::Clamped));
                            raised = true;
                        }
                    }
                }
                if !raised {
                    break slots.iter().map(|s| eps * s.raw).collect();
                }
            }
        }
    };

    let mut layers = Vec::with_capacity(spec.layers.len());
    for (k, layer) in spec.layers.iter().enumerate() {
        let (density, origin) = match slots[k].fixed {
            Some(fixed) => fixed,
            None if clamp
                && free_density[k] > target
                && sparsity.distribution == Distribution::Uniform =>
            {
                (free_density[k], Origin::Clamped)
            }
            None => (free_density[k], Origin::Distributed),
        };
        let scheme = layer_schemes[k];
        if below(density, minima[k]) {
            let how = match origin {
                Origin::Fixed => "its density".to_string(),
                _ => format!("distribution \"{}\" gives it", sparsity.distribution.name()),
            };
            let maker = match scheme {
                Scheme::Eoi => "EOI".to_string(),
                other => format!("scheme \"{}\"", other.name()),
            };
            return Err(error(
                Some(layer.position),
                format!("layer \"{}\"", layer.name),
                format!(
                    "{how} {density:.6}, below the {:.6} that {maker} can make for shape {} ({})",
                    minima[k],
                    layer.shape,
                    minimum_reason(&layer.shape, layer.groups, scheme),
                ),
                Some(
                    if scheme == Scheme::Eoi
                        && layer.groups > 1
                        && layer.shape.out() == layer.groups
                        && layer.shape.inp() == 1
                    {
                        "under EOI a depthwise layer is dense: set below_minimum = \"clamp\" in [sparsity] or pass --below-minimum clamp (erk and er then re-balance the other layers), or match it with a `dense` pattern".into()
                    } else {
                        "raise the density, or set below_minimum = \"clamp\" in [sparsity] (or pass --below-minimum clamp) to use the minimum".into()
                    },
                ),
            ));
        }
        if matches!(
            scheme,
            Scheme::Sao | Scheme::ApproxIsometry | Scheme::ConvOrthogonal
        ) && layer.groups > 1
        {
            return Err(error(
                Some(layer.position),
                format!("layer \"{}\", field `groups`", layer.name),
                format!(
                    "scheme \"{}\" is not made for grouped convolutions (groups = {})",
                    scheme.name(),
                    layer.groups
                ),
                Some("use scheme \"eoi\" or \"orthogonal\" for this layer (they build each group's block on its own), or groups = 1".into()),
            ));
        }
        if scheme == Scheme::Sao
            && sao::degree(layer.shape.out(), layer.shape.inp(), density).is_none()
        {
            let (out, inp) = (layer.shape.out(), layer.shape.inp());
            let m = out.max(inp);
            let (lower, upper) = sao::nearest(out, inp, density);
            let show = |d: Option<f64>| match d {
                Some(d) => format!("{d} (degree {})", (d * m as f64).round()),
                None => "none".into(),
            };
            let how = match origin {
                Origin::Fixed => "its density".to_string(),
                _ => format!("distribution \"{}\" gives it", sparsity.distribution.name()),
            };
            return Err(error(
                Some(layer.position),
                format!("layer \"{}\"", layer.name),
                format!(
                    "{how} {density}, which scheme \"sao\" cannot make for shape {}: SAO makes densities degree / {m} with the degree dividing {m} and {} * degree / {m} whole; the nearest are {} below and {} above",
                    layer.shape,
                    out.min(inp),
                    show(lower),
                    show(upper),
                ),
                Some("give the layer one of those densities (its own `density`, or the [sparsity] density with distribution = \"uniform\"); erk and er rarely land on one".into()),
            ));
        }
        if origin == Origin::Clamped {
            warnings.push(format!(
                "layer \"{}\": density raised to {} minimum {:.6} for shape {}",
                layer.name,
                match scheme {
                    Scheme::Eoi => "EOI's".to_string(),
                    other => format!("scheme \"{}\"'s", other.name()),
                },
                density,
                layer.shape
            ));
        }
        layers.push(LayerPlan {
            name: layer.name.clone(),
            shape: layer.shape.clone(),
            density,
            origin,
            scheme,
            gain: layer.gain.clone().unwrap_or_else(|| spec.init.gain.clone()),
            conv_center: rules[k],
            conv_mask: masks[k],
            // [init]'s bias_std applies to the layers named <module>.weight only; a layer's
            // own bias_std is refused by the spec on any other name.
            bias_std: layer.bias_std.or(spec
                .init
                .bias_std
                .filter(|_| layer.name.ends_with(".weight"))),
            isometry: spec.init.isometry,
            groups: layer.groups,
            tied: layer.tied.clone(),
            position: layer.position,
        });
    }

    let names = overrides.names.or(spec.output.names).unwrap_or_default();
    let dtype = overrides.dtype.or(spec.output.dtype).unwrap_or(Dtype::F32);
    let output_error = |message: String, help: &str| SpecError {
        file: spec.source.name.clone(),
        position: None,
        context: "[output]".into(),
        message,
        help: Some(help.into()),
    };
    let mask_dtype = match (names, overrides.mask_dtype.or(spec.output.mask_dtype)) {
        // torch.nn.utils.prune stores the mask as a buffer of the weight's dtype.
        (Names::TorchPrune, None) => dtype,
        (Names::TorchPrune, Some(m)) if m == dtype => dtype,
        (Names::TorchPrune, Some(m)) => {
            return Err(output_error(
                format!(
                    "mask_dtype \"{}\" does not go with names = \"torch-prune\", whose masks take the weight's dtype (\"{}\")",
                    m.name(),
                    dtype.name()
                ),
                "drop mask_dtype (or --mask-dtype), or use names = \"plain\"",
            ));
        }
        (Names::Plain, m) => m.unwrap_or(Dtype::Bool),
    };
    let output = OutputPlan {
        format: overrides
            .format
            .or(spec.output.format)
            .unwrap_or(Format::Safetensors),
        dtype,
        mask_dtype,
        names,
        mask_suffix: spec
            .output
            .mask_suffix
            .clone()
            .unwrap_or_else(|| "_mask".into()),
        max_shard_size: overrides.max_shard_size,
        layout: overrides.layout.or(spec.output.layout).unwrap_or_default(),
    };
    if output.max_shard_size.is_some() && output.format != Format::Safetensors {
        return Err(SpecError {
            file: spec.source.name.clone(),
            position: None,
            context: String::new(),
            message: format!(
                "sharding (--max-shard-size) applies to safetensors output, not {}",
                output.format.name()
            ),
            help: Some("drop --max-shard-size, or use format safetensors".into()),
        });
    }
    for (what, d) in [("dtype", output.dtype), ("mask dtype", output.mask_dtype)] {
        if output.format != Format::Safetensors && d.npy_descr().is_none() {
            return Err(output_error(
                format!(
                    "{what} \"{}\" cannot be stored in {} output: NumPy has no {} type",
                    d.name(),
                    output.format.name(),
                    d.name()
                ),
                "use format = \"safetensors\" (or --format safetensors), which stores bf16 natively, or dtype = \"f16\" or \"f32\"",
            ));
        }
    }
    check_names(&layers, &output, &spec.source.name)?;

    Ok(Plan {
        source: spec.source.clone(),
        seed: overrides.seed.unwrap_or(spec.seed),
        requested_density: sparsity.density,
        distribution: sparsity.distribution,
        scheme_override: overrides.scheme,
        below_minimum_override: overrides.below_minimum,
        layers,
        output,
        warnings,
    })
}

/// Output tensor names must be unique (a mask name may not equal a layer name) and, for npy,
/// usable as file names inside the output directory.
fn check_names(layers: &[LayerPlan], output: &OutputPlan, file: &str) -> Result<(), SpecError> {
    let mut owners = std::collections::HashMap::new();
    for layer in layers {
        owners.insert(layer.name.as_str(), layer);
    }
    for layer in layers {
        // torch.nn.utils.prune turns parameter `<param>` of a module into `<param>_orig` and
        // a buffer `<param>_mask`: any parameter, as long as the name is one a state dict
        // can hold (dot-separated module path, no empty part).
        if output.names == Names::TorchPrune && layer.name.split('.').any(str::is_empty) {
            return Err(SpecError {
                file: file.into(),
                position: Some(layer.position),
                context: format!("layer \"{}\"", layer.name),
                message: format!(
                    "names = \"torch-prune\" needs a PyTorch parameter name, <module>.<param> with no empty part, got \"{}\"",
                    layer.name
                ),
                help: Some(
                    "name the layer after its parameter in the state dict, e.g. \"fc1.weight\" or \"attn.in_proj_weight\", or use names = \"plain\"".into(),
                ),
            });
        }
        let mask = output.mask_name(&layer.name);
        let weight = output.weight_name(&layer.name);
        if let Some(other) = owners.get(mask.as_str()) {
            let suffix = match output.names {
                Names::Plain => format!("mask_suffix \"{}\"", output.mask_suffix),
                Names::TorchPrune => "names = \"torch-prune\"".into(),
            };
            return Err(SpecError {
                file: file.into(),
                position: Some(other.position),
                context: format!("layer \"{}\"", other.name),
                message: format!(
                    "the name \"{}\" is also the mask name of layer \"{}\" ({suffix})",
                    other.name, layer.name
                ),
                help: Some(match output.names {
                    Names::Plain => "rename the layer or set another [output] mask_suffix".into(),
                    Names::TorchPrune => "rename the layer, or use names = \"plain\"".into(),
                }),
            });
        }
        // Pruning `X` makes a parameter `X_orig`: a layer of that name could not coexist.
        if weight != layer.name
            && let Some(other) = owners.get(weight.as_str())
        {
            return Err(SpecError {
                file: file.into(),
                position: Some(other.position),
                context: format!("layer \"{}\"", other.name),
                message: format!(
                    "the name \"{}\" is also the name torch-prune gives to the weight of layer \"{}\"",
                    other.name, layer.name
                ),
                help: Some("rename the layer, or use names = \"plain\"".into()),
            });
        }
        if output.format == Format::Npy {
            for name in [weight.as_str(), mask.as_str()] {
                if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
                    return Err(SpecError {
                        file: file.into(),
                        position: Some(layer.position),
                        context: format!("layer \"{}\"", layer.name),
                        message: format!(
                            "\"{name}\" cannot be a file name in an npy directory (it has a path separator or is . or ..)"
                        ),
                        help: Some(
                            "use format = \"safetensors\", or a name without '/' and '\\'".into(),
                        ),
                    });
                }
            }
        }
    }
    // Biases: `<module>.bias` may be no other output tensor's name, nor a layer's (with
    // torch-prune names, a layer `<module>.bias` is the pruned bias parameter itself).
    if layers.iter().any(|l| l.bias_std.is_some()) {
        let mut taken: std::collections::HashMap<String, &LayerPlan> =
            std::collections::HashMap::new();
        for layer in layers {
            taken.insert(layer.name.clone(), layer);
            taken.insert(output.weight_name(&layer.name), layer);
            taken.insert(output.mask_name(&layer.name), layer);
        }
        for layer in layers {
            let Some(bias) = layer.bias_name() else {
                continue;
            };
            if let Some(other) = taken.get(&bias) {
                return Err(SpecError {
                    file: file.into(),
                    position: Some(layer.position),
                    context: format!("layer \"{}\", field `bias_std`", layer.name),
                    message: format!(
                        "the layer's bias \"{bias}\" has the name of a tensor of layer \"{}\"",
                        other.name
                    ),
                    help: Some(
                        "rename one of the layers, or remove bias_std from this layer (or from [init])".into(),
                    ),
                });
            }
            taken.insert(bias, layer);
        }
    }
    check_tied_names(layers, output, file)
}

/// A tied name (`tied`) names a parameter the output may write with the layer's bytes: it
/// may be no output tensor of any layer (weight, mask or bias).
fn check_tied_names(
    layers: &[LayerPlan],
    output: &OutputPlan,
    file: &str,
) -> Result<(), SpecError> {
    if layers.iter().all(|l| l.tied.is_empty()) {
        return Ok(());
    }
    let mut taken: std::collections::HashMap<String, &LayerPlan> = std::collections::HashMap::new();
    for layer in layers {
        taken.insert(output.weight_name(&layer.name), layer);
        taken.insert(output.mask_name(&layer.name), layer);
        if let Some(bias) = layer.bias_name() {
            taken.insert(bias, layer);
        }
    }
    for layer in layers {
        if let Some((tied, other)) = layer
            .tied
            .iter()
            .find_map(|t| taken.get(t).map(|other| (t, other)))
        {
            return Err(SpecError {
                file: file.into(),
                position: Some(layer.position),
                context: format!("layer \"{}\", field `tied`", layer.name),
                message: format!(
                    "tied name \"{tied}\" is also the name of an output tensor of layer \"{}\"",
                    other.name
                ),
                help: Some(
                    "a tied name is a parameter sharing this layer's storage: remove it from `tied`, or rename the other layer".into(),
                ),
            });
        }
    }
    Ok(())
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
        // EOI's minimum is the block's: 1/max(4, 4) for the centre, not 1/32.
        let shape = Shape::new(&[32, 4, 3, 3]).unwrap();
        assert_eq!(
            minimum_density(&shape, 8, CentreRule::Same, Scheme::Eoi),
            0.25
        );
        assert_eq!(
            minimum_density(&shape, 8, CentreRule::Sqrt, Scheme::Eoi),
            1.0 / 16.0
        );
        assert_eq!(
            minimum_density(&shape, 1, CentreRule::Same, Scheme::Eoi),
            1.0 / 32.0
        );
        // A depthwise layer's 1 x 1 blocks make it dense, under either rule; a random mask
        // still needs only one weight.
        let depthwise = Shape::new(&[96, 1, 3, 3]).unwrap();
        for rule in [CentreRule::Same, CentreRule::Sqrt] {
            assert_eq!(minimum_density(&depthwise, 96, rule, Scheme::Eoi), 1.0);
        }
        assert_eq!(
            minimum_density(&depthwise, 96, CentreRule::Same, Scheme::Kaiming),
            1.0 / 864.0
        );
        // Clamped, a depthwise layer is dense and ERK re-balances the rest.
        let text = "[sparsity]\ndensity=0.3\ndistribution='erk'\nbelow_minimum='clamp'\n[[layer]]\nname='dw'\nshape=[96, 1, 3, 3]\ngroups=96\n[[layer]]\nname='pw'\nshape=[96, 96, 1, 1]\n";
        let p = plan_of(text).unwrap();
        assert_eq!(p.layers[0].density, 1.0);
        assert!((p.density() - 0.3).abs() < 1e-12, "{}", p.density());
    }

    #[test]
    fn conv_minimum_follows_the_centre_rule() {
        let shape = Shape::new(&[64, 32, 3, 3]).unwrap();
        assert_eq!(
            minimum_density(&shape, 1, CentreRule::Same, Scheme::Eoi),
            1.0 / 64.0
        );
        assert_eq!(
            minimum_density(&shape, 1, CentreRule::Sqrt, Scheme::Eoi),
            1.0 / (64.0 * 9.0)
        );
        // A random mask needs one weight, whatever the rule.
        assert_eq!(
            minimum_density(&shape, 1, CentreRule::Same, Scheme::Kaiming),
            1.0 / (64.0 * 32.0 * 9.0)
        );
    }
}

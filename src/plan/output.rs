//! The output plan: the container, dtypes, layout and tensor names after the command line
//! and the spec have had their say, and the checks that every output tensor has a name of
//! its own that the container can hold.

use std::collections::HashMap;

use super::Overrides;
use crate::layer::{Dtype, Format, Layout, Names};
use crate::schemes::LayerPlan;
use crate::spec::{Spec, SpecError};

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

/// The output plan of `spec` under the command line's `overrides`.
pub fn resolve(spec: &Spec, overrides: &Overrides) -> Result<OutputPlan, SpecError> {
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
    Ok(output)
}

/// Output tensor names must be unique (a mask name may not equal a layer name, nor a
/// torch-prune weight name another layer's), name a parameter under torch-prune names, and
/// for npy be usable as file names inside the output directory; biases and tied names may
/// take no other tensor's name.
pub(crate) fn check_names(
    layers: &[LayerPlan],
    output: &OutputPlan,
    file: &str,
) -> Result<(), SpecError> {
    let owners: HashMap<&str, &LayerPlan> = layers.iter().map(|l| (l.name.as_str(), l)).collect();
    let error = |layer: &LayerPlan, message: String, help: &str| SpecError {
        file: file.into(),
        position: Some(layer.position),
        context: format!("layer \"{}\"", layer.name),
        message,
        help: Some(help.into()),
    };
    for layer in layers {
        check_prune_name(layer, output).map_err(|(m, h)| error(layer, m, h))?;
        check_collisions(layer, output, &owners).map_err(|(other, m, h)| error(other, m, h))?;
        check_npy_names(layer, output).map_err(|(m, h)| error(layer, m, h))?;
    }
    check_bias_names(layers, output, file)?;
    check_tied_names(layers, output, file)
}

/// torch.nn.utils.prune turns parameter `<param>` of a module into `<param>_orig` and a
/// buffer `<param>_mask`: any parameter, as long as the name is one a state dict can hold
/// (dot-separated module path, no empty part).
fn check_prune_name(layer: &LayerPlan, output: &OutputPlan) -> Result<(), (String, &'static str)> {
    if output.names == Names::TorchPrune && layer.name.split('.').any(str::is_empty) {
        return Err((
            format!(
                "names = \"torch-prune\" needs a PyTorch parameter name, <module>.<param> with no empty part, got \"{}\"",
                layer.name
            ),
            "name the layer after its parameter in the state dict, e.g. \"fc1.weight\" or \"attn.in_proj_weight\", or use names = \"plain\"",
        ));
    }
    Ok(())
}

/// The layer's mask name may not be another layer's name, nor (pruning `X` makes a
/// parameter `X_orig`) its torch-prune weight name; the error is the other layer's.
fn check_collisions<'a>(
    layer: &LayerPlan,
    output: &OutputPlan,
    owners: &HashMap<&str, &'a LayerPlan>,
) -> Result<(), (&'a LayerPlan, String, &'static str)> {
    let mask = output.mask_name(&layer.name);
    if let Some(other) = owners.get(mask.as_str()) {
        let (suffix, help) = match output.names {
            Names::Plain => (
                format!("mask_suffix \"{}\"", output.mask_suffix),
                "rename the layer or set another [output] mask_suffix",
            ),
            Names::TorchPrune => (
                "names = \"torch-prune\"".into(),
                "rename the layer, or use names = \"plain\"",
            ),
        };
        return Err((
            other,
            format!(
                "the name \"{}\" is also the mask name of layer \"{}\" ({suffix})",
                other.name, layer.name
            ),
            help,
        ));
    }
    let weight = output.weight_name(&layer.name);
    if weight != layer.name
        && let Some(other) = owners.get(weight.as_str())
    {
        return Err((
            other,
            format!(
                "the name \"{}\" is also the name torch-prune gives to the weight of layer \"{}\"",
                other.name, layer.name
            ),
            "rename the layer, or use names = \"plain\"",
        ));
    }
    Ok(())
}

/// An npy output writes each tensor as a file named after it, inside the output directory.
fn check_npy_names(layer: &LayerPlan, output: &OutputPlan) -> Result<(), (String, &'static str)> {
    if output.format != Format::Npy {
        return Ok(());
    }
    let (weight, mask) = (
        output.weight_name(&layer.name),
        output.mask_name(&layer.name),
    );
    for name in [weight.as_str(), mask.as_str()] {
        if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return Err((
                format!(
                    "\"{name}\" cannot be a file name in an npy directory (it has a path separator or is . or ..)"
                ),
                "use format = \"safetensors\", or a name without '/' and '\\'",
            ));
        }
    }
    Ok(())
}

/// Biases: `<module>.bias` may be no other output tensor's name, nor a layer's (with
/// torch-prune names, a layer `<module>.bias` is the pruned bias parameter itself).
fn check_bias_names(
    layers: &[LayerPlan],
    output: &OutputPlan,
    file: &str,
) -> Result<(), SpecError> {
    if layers.iter().all(|l| l.bias_std.is_none()) {
        return Ok(());
    }
    let mut taken: HashMap<String, &LayerPlan> = HashMap::new();
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
                    "rename one of the layers, or remove bias_std from this layer (or from [init])"
                        .into(),
                ),
            });
        }
        taken.insert(bias, layer);
    }
    Ok(())
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
    let mut taken: HashMap<String, &LayerPlan> = HashMap::new();
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

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

/// Output tensor names must be unique (a mask name may not equal a layer name) and, for npy,
/// usable as file names inside the output directory.
pub(crate) fn check_names(
    layers: &[LayerPlan],
    output: &OutputPlan,
    file: &str,
) -> Result<(), SpecError> {
    let mut owners = HashMap::new();
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

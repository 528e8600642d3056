//! Which tensors of the source become `[[layer]]`s: by a shape list's `kind`, or else by
//! the name rules ([`NAME_RULES`]); `--include` adds a tensor back and `--exclude` leaves one
//! out; a tied tensor goes with its storage. Each layer gets its PyTorch shape and groups (a
//! [C, 1, k...] weight is assumed depthwise) and, with `--densities-from`, a mask's density.

use std::collections::HashMap;

use super::shapes::{Entry, Shapes, TensorKind};
use super::{Layer, LeftOut, Options, glob, quoted, usage};
use crate::error::Error;
use crate::layer::{Kind, Layout, Shape};
use crate::read::Checkpoint;
use crate::spec::Pattern;

/// Which part of a tensor's dotted name a [`NameRule`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The last component (`weight`, `cls_token`, `kernel`).
    Leaf,
    /// The component before it: the module's own name (`wte`, `LayerNorm`, `shared`); empty
    /// for a name without a dot. Only the module's own name, never its parents', so that
    /// `embeddings.patch_embeddings.projection.weight` (a convolution) is not an embedding.
    Module,
}

/// One row of the name rules: tensors whose `part` matches `glob` (ASCII case-insensitive;
/// `*` any run, `?` one character) are layers, or are left to the base as `what`.
#[derive(Clone, Copy, Debug)]
pub struct NameRule {
    pub part: Part,
    pub glob: &'static str,
    /// `None`: the tensor is a layer; else what it is, for the comment.
    pub left_as: Option<&'static str>,
}

const fn rule(part: Part, glob: &'static str, left_as: Option<&'static str>) -> NameRule {
    NameRule {
        part,
        glob,
        left_as,
    }
}

/// How a tensor without a `kind` (a checkpoint's, or a bare shape list's) is classified:
/// the first rule that matches decides. Before the rules, tensors of rank 0 or 1 and of
/// rank above 5 are left out; after them, a tensor no rule matched is left out as "not a
/// .weight". The rules follow torchvision's, timm's, transformers' and Flax's names; a
/// misjudged tensor is put right with `--include` or `--exclude`. docs/guide.md ("Start from your
/// model") shows the same table.
pub const NAME_RULES: &[NameRule] = &[
    // nn.MultiheadAttention's packed (q, k, v) projection is a linear weight.
    rule(Part::Leaf, "in_proj_weight", None),
    // Embedding tables: the weight of a module named for it.
    rule(Part::Module, "*embed*", Some("embedding")),
    rule(Part::Module, "wte", Some("embedding")),
    rule(Part::Module, "wpe", Some("embedding")),
    rule(Part::Module, "shared", Some("embedding")),
    rule(Part::Module, "relative_attention_bias", Some("embedding")),
    rule(Part::Leaf, "embedding", Some("embedding")),
    // Position tables and tokens held as bare parameters.
    rule(Part::Leaf, "*embed*", Some("position table")),
    rule(Part::Leaf, "*token*", Some("token")),
    // Scales: layer scale, timm's ls1/ls2 gamma, Flax norms' scale.
    rule(Part::Leaf, "layer_scale*", Some("scale")),
    rule(Part::Leaf, "gamma", Some("scale")),
    rule(Part::Module, "ls?", Some("scale")),
    rule(Part::Leaf, "*scale*", Some("scale")),
    // Normalization layers.
    rule(Part::Module, "*norm*", Some("norm")),
    rule(Part::Module, "ln", Some("norm")),
    rule(Part::Module, "ln_*", Some("norm")),
    rule(Part::Module, "bn", Some("norm")),
    rule(Part::Module, "bn?", Some("norm")),
    // The weights eoi initializes: PyTorch's `.weight`, Flax's `kernel`.
    rule(Part::Leaf, "weight", None),
    rule(Part::Leaf, "kernel", None),
];

/// What the name rules make of `name`: `Ok(())` for a layer, or the reason it is left out.
fn name_rule(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    let (module, leaf) = match lower.rsplit_once('.') {
        Some((path, leaf)) => (path.rsplit('.').next().unwrap_or(path), leaf),
        None => ("", lower.as_str()),
    };
    for r in NAME_RULES {
        let text = match r.part {
            Part::Leaf => leaf,
            Part::Module => module,
        };
        if glob(r.glob).matches(text) {
            return match r.left_as {
                None => Ok(()),
                Some(what) => Err(format!(
                    "{what} (name rule {} on the {})",
                    quoted(r.glob),
                    match r.part {
                        Part::Leaf => "last name part",
                        Part::Module => "module name",
                    }
                )),
            };
        }
    }
    Err("not a .weight, kernel or in_proj_weight".into())
}

/// The layers of `shapes` (in their order) and the tensors left to the base.
///
/// A tensor tied to another is never a layer of its own: it goes with the tensor holding
/// the storage, into its layer's `tied` or left to the base with it.
pub(super) fn select<'a>(
    shapes: &'a Shapes,
    options: &Options,
) -> Result<(Vec<Layer>, Vec<LeftOut<'a>>), Error> {
    let excluded: Vec<Pattern> = options.exclude.iter().map(|g| glob(g)).collect();
    let included: Vec<Pattern> = options.include.iter().map(|g| glob(g)).collect();
    let mut include_used = vec![false; included.len()];
    // The names tied to each storage tensor, in list order.
    let mut ties: HashMap<&str, Vec<&str>> = HashMap::new();
    for entry in &shapes.entries {
        if let Some(target) = &entry.tied_to {
            ties.entry(target.as_str()).or_default().push(&entry.name);
        }
    }
    // A shape list that gives any tensor its groups gives them all (1 when absent).
    let records_groups = shapes.entries.iter().any(|e| e.groups.is_some());
    let mut layers: Vec<Layer> = Vec::new();
    let mut left_out: Vec<LeftOut> = Vec::new();
    for entry in &shapes.entries {
        if entry.name.contains("{i}") {
            return Err(usage(format!(
                "'{}': tensor {} contains \"{{i}}\", which a spec reserves for `repeat`; exclude it with --exclude",
                shapes.name,
                quoted(&entry.name)
            )));
        }
        if let Some(target) = &entry.tied_to {
            if let Some(k) = included.iter().position(|p| p.matches(&entry.name)) {
                let tensor = quoted(&entry.name);
                return Err(usage(format!(
                    "'{}': --include {} matches {tensor}, which is tied to {} (they share one storage)\n  help: include {} instead: the layer is the storage, and {tensor} gets the same weight",
                    shapes.name,
                    quoted(&options.include[k]),
                    quoted(target),
                    quoted(target),
                )));
            }
            continue;
        }
        let proposed = proposed(entry, &shapes.name)?;
        let (reason, by_include) = if excluded.iter().any(|p| p.matches(&entry.name)) {
            (Some("--exclude".to_string()), false)
        } else {
            include(proposed, entry, &included, &mut include_used)
        };
        let tied: Vec<&str> = ties.get(entry.name.as_str()).cloned().unwrap_or_default();
        if let Some(reason) = reason {
            left_out.push(LeftOut {
                reason,
                entry,
                tied,
            });
            continue;
        }
        let layer = layer(entry, &shapes.name, options.layout, records_groups)?;
        layers.push(Layer {
            tied: tied.into_iter().map(str::to_string).collect(),
            included: by_include,
            ..layer
        });
    }
    first_layers_are_plain(&mut layers);
    if let Some(k) = include_used.iter().position(|used| !used) {
        return Err(usage(format!(
            "'{}': --include {} matches no tensor of rank 2 to 5 that would otherwise be left out\n  help: the spec's closing comment lists every tensor left out, with the reason",
            shapes.name,
            quoted(&options.include[k])
        )));
    }
    Ok((layers, left_out))
}

/// What the source makes of a tensor before the globs: `Ok(())` for a layer (its `kind`
/// is linear or conv, or without a kind the name rules say so), or the reason it is left
/// out. A linear or conv `kind` on a shape of the wrong rank is an error.
fn proposed(entry: &Entry, source: &str) -> Result<Result<(), String>, Error> {
    let rank = entry.shape.len();
    Ok(match entry.kind {
        Some(kind) if kind.is_layer() => {
            let fits = match kind {
                TensorKind::Linear => rank == 2,
                _ => (3..=5).contains(&rank),
            };
            if !fits {
                let tensor = quoted(&entry.name);
                return Err(usage(format!(
                    "'{source}': tensor {tensor} has kind \"{}\" but shape {:?}: a linear weight has 2 dimensions, a convolution weight 3 to 5\n  help: correct the kind, or leave the tensor out with --exclude {tensor}",
                    kind.name(),
                    entry.shape
                )));
            }
            Ok(())
        }
        Some(kind) => Err(format!("kind \"{}\"", kind.name())),
        None if !(2..=5).contains(&rank) => Err(match rank {
            0 | 1 => format!("rank {rank}"),
            _ => "more than 5 dimensions".to_string(),
        }),
        None => name_rule(&entry.name),
    })
}

/// Whether an `--include` glob makes a layer of a tensor `proposed` leaves out (one of rank
/// 2 to 5): the reason it stays left out, if it does, and whether an `--include` made it a
/// layer. Marks the globs that did so as used.
fn include(
    proposed: Result<(), String>,
    entry: &Entry,
    included: &[Pattern],
    include_used: &mut [bool],
) -> (Option<String>, bool) {
    let Err(reason) = proposed else {
        return (None, false);
    };
    let rank = entry.shape.len();
    let hits: Vec<usize> = (0..included.len())
        .filter(|&k| included[k].matches(&entry.name))
        .collect();
    for &k in &hits {
        include_used[k] |= (2..=5).contains(&rank);
    }
    if !hits.is_empty() && (2..=5).contains(&rank) {
        (None, true)
    } else {
        (Some(reason), false)
    }
}

/// The layer of a tensor that is one, in PyTorch's shape order, with its groups; not tied
/// and not by `--include` (the caller says).
fn layer(
    entry: &Entry,
    source: &str,
    layout: Layout,
    records_groups: bool,
) -> Result<Layer, Error> {
    let tensor = quoted(&entry.name);
    if entry.shape.contains(&0) {
        return Err(usage(format!(
            "'{source}': tensor {tensor} has shape {:?}, with a zero dimension: it has no weights to initialize\n  help: leave it out with --exclude {tensor}",
            entry.shape
        )));
    }
    let torch = layout.torch_shape(&entry.shape);
    let dims: Vec<i64> = torch.iter().map(|&d| d as i64).collect();
    let shape =
        Shape::new(&dims).map_err(|m| usage(format!("'{source}': tensor {tensor}: {m}")))?;
    // A checkpoint does not record groups: a [C, 1, k...] kernel is almost always
    // depthwise (MobileNet, EfficientNet, ConvNeXt), unless no layer feeds it (see
    // `first_layers_are_plain`); the comment says how to undo it.
    let assumed_depthwise = !records_groups
        && entry.groups.is_none()
        && entry.kind != Some(TensorKind::Linear)
        && shape.kind() == Kind::Conv
        && shape.inp() == 1
        && shape.out() > 1;
    let groups = match entry.groups {
        None if assumed_depthwise => shape.out(),
        None => 1,
        Some(g) => usize::try_from(g).unwrap_or(usize::MAX),
    };
    if groups != 1 && (shape.kind() != Kind::Conv || shape.out() % groups != 0) {
        return Err(usage(format!(
            "'{source}': tensor {tensor} has groups = {groups}, which its shape {:?} cannot have: groups applies to convolutions (rank 3 to 5) and must divide their output channels ({})\n  help: give the groups of the convolution this weight belongs to, or leave it out with --exclude {tensor}",
            entry.shape,
            shape.out()
        )));
    }
    Ok(Layer {
        name: entry.name.clone(),
        shape,
        groups,
        assumed_depthwise,
        tied: Vec::new(),
        dtype: entry.dtype,
        included: false,
        mask: None,
    })
}

/// A depthwise convolution reads the C channels another layer makes; a [C, 1, k...]
/// weight that no other layer feeds (no other layer has C outputs) is a first layer on
/// one-channel input (a grayscale CNN's), an ordinary convolution.
fn first_layers_are_plain(layers: &mut [Layer]) {
    let outs: Vec<usize> = layers.iter().map(|l| l.shape.out()).collect();
    for (k, layer) in layers.iter_mut().enumerate() {
        if layer.assumed_depthwise
            && !outs
                .iter()
                .enumerate()
                .any(|(j, &out)| j != k && out == layer.shape.out())
        {
            layer.assumed_depthwise = false;
            layer.groups = 1;
        }
    }
}

/// The suffix a mask's name may carry (`X_mask` for layer `X`; torch-prune's
/// `<module>.weight_mask` is the same).
pub const MASK_SUFFIX: &str = "_mask";

/// Sets each layer's density to the fraction of nonzeros in its mask: the tensor named as
/// the layer plus [`MASK_SUFFIX`], or else as the layer itself. Layers matching a `dense`
/// glob keep density 1 and are not looked up. The masks are read a chunk at a time.
pub(super) fn densities_from(
    masks: &Checkpoint,
    layers: &mut [Layer],
    stored: &HashMap<String, Vec<usize>>,
    options: &Options,
) -> Result<(), Error> {
    let dense: Vec<Pattern> = options.dense.iter().map(|g| glob(g)).collect();
    let shown = masks.path().display().to_string();
    for layer in layers.iter_mut() {
        if dense.iter().any(|p| p.matches(&layer.name)) {
            continue;
        }
        let suffixed = format!("{}{MASK_SUFFIX}", layer.name);
        let Some((file, info)) = masks
            .tensor(&suffixed)
            .or_else(|| masks.tensor(&layer.name))
        else {
            continue;
        };
        let same = info.shape.as_slice() == layer.shape.dims()
            || stored.get(&layer.name) == Some(&info.shape);
        if !same {
            return Err(usage(format!(
                "'{shown}': mask {} has shape {:?}, but layer {} has shape {:?}",
                quoted(&info.name),
                info.shape,
                quoted(&layer.name),
                stored
                    .get(&layer.name)
                    .map_or(layer.shape.dims(), |s| s.as_slice()),
            )));
        }
        let nnz = file.count_nonzero(info)?;
        if nnz == 0 {
            return Err(usage(format!(
                "'{shown}': mask {} of layer {} has no nonzero element, so the layer would have no weights\n  help: leave the layer out with --exclude {}",
                quoted(&info.name),
                quoted(&layer.name),
                quoted(&layer.name),
            )));
        }
        layer.mask = Some((nnz, info.numel as u64, info.name.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_pick_module_weights_and_say_why_the_rest_is_left() {
        for (name, expected) in [
            ("fc.weight", Ok(())),
            ("Conv_0.kernel", Ok(())),
            ("blocks.0.attn.in_proj_weight", Ok(())),
            ("embeddings.patch_embeddings.projection.weight", Ok(())),
            (
                "model.embed_tokens.weight",
                Err("embedding (name rule \"*embed*\" on the module name)"),
            ),
            (
                "shared.weight",
                Err("embedding (name rule \"shared\" on the module name)"),
            ),
            (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                Err("embedding (name rule \"relative_attention_bias\" on the module name)"),
            ),
            (
                "params.Table.embedding",
                Err("embedding (name rule \"embedding\" on the last name part)"),
            ),
            (
                "encoder.pos_embedding",
                Err("position table (name rule \"*embed*\" on the last name part)"),
            ),
            (
                "class_token",
                Err("token (name rule \"*token*\" on the last name part)"),
            ),
            (
                "features.1.0.layer_scale",
                Err("scale (name rule \"layer_scale*\" on the last name part)"),
            ),
            (
                "blocks.0.ls1.gamma",
                Err("scale (name rule \"gamma\" on the last name part)"),
            ),
            (
                "encoder.layer.0.output.LayerNorm.weight",
                Err("norm (name rule \"*norm*\" on the module name)"),
            ),
            (
                "h.0.ln_1.weight",
                Err("norm (name rule \"ln_*\" on the module name)"),
            ),
            (
                "relative_position_bias_table",
                Err("not a .weight, kernel or in_proj_weight"),
            ),
        ] {
            assert_eq!(name_rule(name), expected.map_err(String::from), "{name}");
        }
    }
}

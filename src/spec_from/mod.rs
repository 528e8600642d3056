//! `eoi spec --from`: a complete spec written from the tensors a model already has. The
//! shapes come from a safetensors checkpoint (headers only, through [`crate::read`]), a
//! sharded one's index, or a JSON shape list. Only the weights of linear and convolution
//! modules become `[[layer]]`s: by the `kind` a shape list gives each tensor, or else by the
//! name rules of [`NAME_RULES`]; every other tensor is left to the base and listed in a
//! comment with the reason. Runs that differ only in one index 0..n-1 fold into `repeat`
//! with `{i}`, and the text is checked by parsing it back with [`crate::spec::parse`] before
//! anyone sees it.

mod fold;
mod layers;
mod render;
mod shapes;

use std::collections::HashMap;

use crate::error::Error;
use crate::layer::{BelowMinimum, Distribution, Gain, Layout, Shape};
use crate::read::Checkpoint;
use crate::spec::{self, Pattern, Source};

use layers::densities_from;
pub use layers::{MASK_SUFFIX, NAME_RULES, NameRule, Part};
pub use shapes::{
    Entry, MAX_JSON, Shapes, SourceKind, TensorKind, checkpoint_shapes, read_shapes,
    shapes_from_json,
};

/// How the spec is written: the command line's choices.
#[derive(Clone, Debug)]
pub struct Options {
    pub density: crate::layer::Density,
    pub distribution: Distribution,
    pub gain: Option<Gain>,
    pub seed: Option<u64>,
    pub scheme: Option<String>,
    /// Globs of tensors to leave out; they win over `include`.
    pub exclude: Vec<String>,
    /// Globs of tensors to make layers although their kind or the name rules leave them out
    /// (still of rank 2 to 5).
    pub include: Vec<String>,
    /// `[sparsity] below_minimum`, when given.
    pub below_minimum: Option<BelowMinimum>,
    /// Globs of layers kept dense (`[sparsity] dense`).
    pub dense: Vec<String>,
    /// The layout the source's shapes are in; the spec's shapes are PyTorch's, and a flax
    /// source gets `layout = "flax"` in `[output]`.
    pub layout: Layout,
    /// Fold runs into `repeat`.
    pub fold: bool,
}

/// A tensor that becomes a layer.
#[derive(Clone, Debug)]
struct Layer {
    name: String,
    shape: Shape,
    /// Convolution groups (1 unless the source says otherwise).
    groups: usize,
    /// `groups` was not in the source: a [C, 1, k...] weight assumed depthwise.
    assumed_depthwise: bool,
    /// Names sharing this layer's storage (tied weights).
    tied: Vec<String>,
    /// The dtype the source stores it in, when known.
    dtype: Option<crate::layer::Dtype>,
    /// It is a layer only because an `--include` glob matched it.
    included: bool,
    /// Density from a mask: (nnz, numel, mask name).
    mask: Option<(u64, u64, String)>,
}

/// A tensor left to the base, with the reason (the heading it is listed under).
struct LeftOut<'a> {
    reason: String,
    entry: &'a Entry,
    /// The names tied to it, left with it.
    tied: Vec<&'a str>,
}

/// The output of [`spec_from`]: the spec and what the user should know about it.
#[derive(Clone, Debug)]
pub struct Written {
    pub text: String,
    /// Warnings for standard error (e.g. convolutions assumed depthwise).
    pub warnings: Vec<String>,
}

/// One `[[layer]]` table: a layer, or a folded run of them.
struct Table {
    name: String,
    repeat: Option<usize>,
    /// The layers it stands for, in index order.
    members: Vec<usize>,
}

/// Quotes text as a TOML basic string (escapes included), for values and for names in
/// comments alike, so no name can break the file.
fn quoted(text: &str) -> String {
    use toml_writer::ToTomlValue as _;
    toml_writer::TomlStringBuilder::new(text)
        .as_basic()
        .to_toml_value()
}

/// A glob of the command line (`--include`, `--exclude`, `--dense`), which has no place in a
/// spec.
fn glob(pattern: &str) -> Pattern {
    Pattern {
        glob: pattern.to_string(),
        position: (0, 0),
    }
}

/// A source or an option `spec --from` cannot use (exit code 2).
fn usage(message: String) -> Error {
    Error::Usage(message)
}

/// Writes the spec for `shapes`.
///
/// A tensor becomes a layer when its `kind` is linear or conv, or, without a kind, when the
/// name rules ([`NAME_RULES`]) make it one; an `--include` glob adds a tensor of rank 2 to
/// 5 back, and an `--exclude` glob leaves one out (it has the last word). A tensor tied to
/// another (`tied_to`) is never a layer of its own: it goes with the tensor holding the
/// storage, into that layer's `tied`, or left to the base with it. A [C, 1, k...]
/// convolution weight (C > 1) whose groups the source does not record is assumed depthwise
/// (`groups = C`, with a comment and a warning). With `masks` (`--densities-from`), each
/// layer with a mask gets its density from it (see `densities_from`); the others keep the
/// distribution's.
pub fn spec_from(
    shapes: &Shapes,
    options: &Options,
    masks: Option<&Checkpoint>,
) -> Result<Written, Error> {
    let (mut layers, left_out) = layers::select(shapes, options)?;
    if layers.is_empty() {
        return Err(usage(format!(
            "'{}' has no weight of a linear or convolution module to initialize ({} tensors left out, {})\n  help: add tensors with --include GLOB",
            shapes.name,
            left_out.len(),
            render::summary(&left_out)
        )));
    }
    if let Some(masks) = masks {
        let stored: HashMap<String, Vec<usize>> = shapes
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect();
        densities_from(masks, &mut layers, &stored, options)?;
    }
    let tables = fold::tables(&layers, options.fold);
    let dtype = render::output_dtype(&layers);
    let text = render::render(shapes, options, masks, &layers, &tables, &left_out, &dtype);
    check(&text, &layers)?;
    let mut warnings = Vec::new();
    let assumed = layers.iter().filter(|l| l.assumed_depthwise).count();
    if assumed > 0 {
        warnings.push(format!(
            "{assumed} convolution weights of shape [C, 1, k...] are assumed depthwise (groups = C), since '{}' does not record groups; each has a comment in the spec saying how to undo it (a shape list from examples/shapes_from_torch.py records groups)",
            shapes.name
        ));
    }
    Ok(Written { text, warnings })
}

/// Parses the written spec back and checks that it expands to exactly the layers, with
/// their groups and tied names.
fn check(text: &str, layers: &[Layer]) -> Result<(), Error> {
    let spec = spec::parse(Source {
        name: "<spec --from>".into(),
        text: text.to_string(),
    })
    .map_err(|e| Error::Internal(format!("the written spec does not parse: {e}")))?;
    type Row<'a> = (&'a str, &'a [usize], usize, &'a [String]);
    let mut want: Vec<Row> = layers
        .iter()
        .map(|l| (l.name.as_str(), l.shape.dims(), l.groups, l.tied.as_slice()))
        .collect();
    let mut got: Vec<Row> = spec
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.shape.dims(), l.groups, l.tied.as_slice()))
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        return Err(Error::Internal(
            "the written spec does not expand to the source's layers".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn options() -> Options {
        Options {
            density: crate::layer::Density::new(0.1).unwrap(),
            distribution: Distribution::Uniform,
            gain: None,
            seed: None,
            scheme: None,
            exclude: Vec::new(),
            include: Vec::new(),
            below_minimum: None,
            dense: Vec::new(),
            layout: Layout::Torch,
            fold: true,
        }
    }

    pub(super) fn shapes(list: &[(&str, &[usize])]) -> Shapes {
        Shapes {
            name: "t.json".into(),
            kind: SourceKind::Json,
            sha256: "0".repeat(64),
            entries: list
                .iter()
                .map(|(n, s)| Entry::new(*n, s.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn names_that_need_quoting_survive_the_round_trip() {
        let text = spec_from(
            &shapes(&[
                ("a \"quoted\"\\name\n0.weight", &[3, 3]),
                ("b\t#1.weight", &[2, 3]),
                ("b\t#0.weight", &[2, 3]),
                ("bias", &[3]),
                ("odd\u{7f}\"\n", &[5]),
            ]),
            &options(),
            None,
        )
        .unwrap()
        .text;
        assert!(text.contains("name = \"b\\t#{i}.weight\"\n"), "{text}");
        // The left-out names are quoted in their comment too: no line escapes it.
        assert!(text.contains("#   \"odd\\u007F\\\"\\n\" [5]"), "{text}");
    }
}

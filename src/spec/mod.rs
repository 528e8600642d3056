//! The architecture spec: TOML parsed once into typed, validated values (`Spec`). Nothing
//! downstream looks at the TOML again. Every error names the file, line and column, the
//! layer and the field, and suggests the nearest known key or value for a misspelling.
//! [`parse`] reads the text into the raw serde structs (`raw.rs`), checks the top-level
//! tables (`validate.rs`) and expands the `[[layer]]` tables (`layers.rs`).

mod diagnostics;
mod glob;
mod layers;
mod raw;
mod schema;
mod validate;

use crate::layer::{
    BelowMinimum, CentreRule, ConvMask, Density, Distribution, Dtype, Format, Gain, Layout, Names,
    Shape,
};
use crate::schemes::Scheme;
use crate::schemes::approx_isometry;
use crate::schemes::nm;

pub use diagnostics::{SpecError, closest, line_column};
pub use glob::Pattern;
pub use schema::json_schema;

/// Most layers a spec may expand to; a guard against a `repeat` typo allocating forever.
pub const MAX_LAYERS: usize = 1_000_000;

/// Most bytes all layer names may take together after `repeat` expansion: a guard against a
/// long name repeated many times. Each name is stored three times in a safetensors header
/// (weight, mask and record), and readers refuse headers over 100 MB.
pub const MAX_NAME_BYTES: u64 = 32_000_000;

/// The text of a spec and the name to show for it in messages (a path, or `<stdin>`).
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// The `[sparsity]` table.
#[derive(Clone, Debug)]
pub struct Sparsity {
    pub density: Density,
    pub distribution: Distribution,
    pub erk_power_scale: f64,
    pub dense: Vec<Pattern>,
    pub below_minimum: BelowMinimum,
    /// The N:M pattern of every layer that does not set its own (`nm`).
    pub nm: Option<nm::Pattern>,
    /// Whether N:M patterns hold along the outputs too, for every layer that does not say.
    pub nm_transposable: bool,
    /// What to do with a layer `nm` does not fit.
    pub nm_skip: nm::Skip,
}

/// The `[init]` table.
#[derive(Clone, Debug)]
pub struct Init {
    /// The scheme of every layer that does not set its own.
    pub scheme: Scheme,
    pub gain: Gain,
    pub conv_center: CentreRule,
    /// The mask rule of every EOI convolution that does not set its own (`conv_mask`).
    pub conv_mask: ConvMask,
    /// The input image's channel count: under `conv_mask = "structured"`, an EOI convolution
    /// whose `in` equals it stays dense.
    pub image_channels: usize,
    /// The std of the biases of every layer named `<module>.weight` (`<module>.bias`, drawn
    /// N(0, bias_std^2)); `None`: no biases unless a layer sets its own.
    pub bias_std: Option<f64>,
    /// The descent of scheme "approx-isometry" (`ai_steps`, `ai_lr`).
    pub isometry: approx_isometry::Settings,
}

/// The `[output]` table; what it leaves out, the command line or the defaults decide.
#[derive(Clone, Debug, Default)]
pub struct OutputSpec {
    pub format: Option<Format>,
    pub dtype: Option<Dtype>,
    pub mask_dtype: Option<Dtype>,
    pub mask_suffix: Option<String>,
    pub layout: Option<Layout>,
    pub names: Option<Names>,
}

/// One layer after `repeat` expansion.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub shape: Shape,
    pub density: Option<Density>,
    pub gain: Option<Gain>,
    pub conv_center: Option<CentreRule>,
    pub conv_mask: Option<ConvMask>,
    pub scheme: Option<Scheme>,
    /// This layer's bias std, overriding `[init]`'s; only for layers named `<module>.weight`.
    pub bias_std: Option<f64>,
    /// Convolution groups G (1 unless the spec says otherwise): the kernel is G independent
    /// blocks of (out/G, in/G), and `shape[1]` is in/G, as PyTorch stores the weight.
    pub groups: usize,
    /// Names of parameters sharing this layer's storage (`tied`), expanded.
    pub tied: Vec<String>,
    /// This layer's `nm`: `Some(None)` for "none", `None` when it leaves it to `[sparsity]`.
    pub nm: Option<Option<nm::Pattern>>,
    /// This layer's `nm_transposable`, when it sets it.
    pub nm_transposable: Option<bool>,
    /// Where the layer's `name` stands in the spec (1-based line, column).
    pub position: (usize, usize),
}

/// A validated spec.
#[derive(Clone, Debug)]
pub struct Spec {
    pub source: Source,
    pub seed: u64,
    pub sparsity: Sparsity,
    pub init: Init,
    pub output: OutputSpec,
    pub layers: Vec<LayerSpec>,
}

/// Parses and validates a spec.
pub fn parse(source: Source) -> Result<Spec, SpecError> {
    let errors = diagnostics::Errors { source: &source };
    let raw = raw::read(&errors)?;
    let seed = validate::seed(raw.seed.as_ref(), &errors)?;
    let sparsity = validate::sparsity(raw.sparsity.as_ref(), &errors)?;
    let init = validate::init(raw.init.as_ref(), &errors)?;
    let output = validate::output(raw.output.as_ref(), &errors)?;
    let layers = layers::layers(&raw.layer, &errors)?;
    Ok(Spec {
        source,
        seed,
        sparsity,
        init,
        output,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse_str(text: &str) -> Result<Spec, SpecError> {
        parse(Source {
            name: "test.toml".into(),
            text: text.into(),
        })
    }

    pub(super) const MINIMAL: &str =
        "[sparsity]\ndensity = 0.5\n\n[[layer]]\nname = \"fc.weight\"\nshape = [4, 6]\n";
}

//! Initialization schemes: a layer's plan and its random stream in, the weight, the mask and
//! the statistics the provenance records out. Each scheme lives in one file and states its
//! rules there by implementing [`Rules`]: the smallest density it can make and why, the
//! layers it accepts, its statistics, its mask and weight, the memory it needs, what its
//! layer records hold and what `verify` may expect of it. [`Scheme`] names the schemes and
//! is their registry: plan, generate, provenance and verify ask a layer's scheme instead of
//! matching on its name.
//!
//! EOI's maths lives in [`eoi`] (the Givens rotations) and [`conv`] (the delta-orthogonal
//! centre tap of kernels). The baselines keep a random [`mask`] over [`kaiming`] normal
//! weights, a dense [`orthogonal`] matrix or a block-orthogonal kernel ([`conv_orthogonal`]),
//! or build [`sao`]'s structured matrix; [`approx_isometry`] optimises the masked orthogonal
//! matrix towards orthogonality. An N:M pattern ([`nm`]) is a property of a layer, not a
//! scheme: [`LayerPlan::rules`] wraps the layer's scheme in the pattern's rules.

pub mod approx_isometry;
pub mod conv_orthogonal;
pub mod eoi;
pub mod kaiming;
pub mod mask;
pub mod nm;
pub mod orthogonal;
pub mod sao;

use crate::layer::{CentreRule, ConvMask, Gain, Kind, Layout, Origin, Shape, centre_tap, named};
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order, Weight};

/// The registry of schemes: one line per scheme gives its variant, its name in specs and
/// on the command line, and its rules (a value implementing [`Rules`] in the scheme's file).
macro_rules! registry {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal => $rules:expr, )+
        }
    ) => {
        named! {
            $(#[$meta])*
            pub enum $name {
                $( $(#[$vmeta])* $variant = $text, )+
            }
        }

        impl $name {
            /// The scheme's rules.
            pub fn rules(self) -> &'static dyn Rules {
                match self {
                    $($name::$variant => &$rules,)+
                }
            }
        }
    };
}

registry! {
    /// The initialization scheme of a layer: EOI, or one of the baselines the paper compares
    /// it with.
    #[derive(Default)]
    pub enum Scheme {
        /// Exact Orthogonal Initialization (the default).
        #[default]
        Eoi = "eoi" => eoi::Eoi,
        /// A random mask over normal weights with std `gain / sqrt(fan_in)`.
        Kaiming = "kaiming" => kaiming::Kaiming::PLAIN,
        /// A random mask over normal weights with std `gain / sqrt(fan_in * d)`.
        ScaledKaiming = "scaled-kaiming" => kaiming::Kaiming::SCALED,
        /// A random mask over a dense orthogonal matrix (delta-orthogonal for convolutions).
        Orthogonal = "orthogonal" => orthogonal::Orthogonal,
        /// Sparsity-Aware Orthogonal initialization (Esguerra et al. 2023): exactly orthogonal
        /// on a regular bipartite structure, for densities `k / max(out, in)` only.
        Sao = "sao" => sao::Sao,
        /// Approximate isometry (Lee et al. 2020): the `orthogonal` baseline's masked matrix,
        /// then gradient descent on the kept weights towards an orthogonal Gram matrix.
        ApproxIsometry = "approx-isometry" => approx_isometry::ApproxIsometry,
        /// A random mask over a dense block-orthogonal kernel (Xiao et al. 2018, Algorithm 1),
        /// orthogonal as a periodic convolution on every tap; a dense orthogonal matrix for
        /// linear layers.
        ConvOrthogonal = "conv-orthogonal" => conv_orthogonal::ConvOrthogonal,
    }
}

/// The rules of one scheme: what plan, generate, the provenance and verify need to know of
/// it. Each scheme's file implements them; [`Scheme::rules`] finds them.
pub trait Rules: Sync {
    /// How messages name the maker of a layer: `EOI`, or `scheme "kaiming"`.
    fn maker(&self) -> &'static str;

    /// The smallest density the scheme can make for `layer` (from its shape, groups and
    /// centre rule; its density is not read), and why.
    fn minimum(&self, layer: &LayerPlan) -> Minimum;

    /// Whether the scheme can make `layer` as planned (its groups, its density); the refusal
    /// says why and how to fix it.
    fn check(&self, _layer: &LayerPlan) -> Result<(), Refusal> {
        Ok(())
    }

    /// Whether a convolution under this scheme may take `conv_mask = "structured"`.
    fn structured_masks(&self) -> bool {
        false
    }

    /// The nonzeros the plan expects the layer's mask to hold.
    fn expected_nnz(&self, layer: &LayerPlan) -> u64;

    /// A line `eoi plan` prints once, under its table, about a layer of this scheme.
    fn plan_note(&self, _layer: &LayerPlan) -> Option<String> {
        None
    }

    /// The statistics of the layer's generation, computed without weight values where the
    /// scheme allows it, so they can go into a file header before any weight exists.
    fn stats(&self, layer: &LayerPlan, seed: u64) -> LayerStats;

    /// Draws what the layer's mask needs from its own stream and fixes the statistics; the
    /// weight values follow deterministically ([`Prepared::weight`]).
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a>;

    /// Whether the statistics cost the whole generation (approximate isometry's descent), so
    /// that a large run keeps what [`Prepared::optimised`] gives until the layer is written.
    fn costly_stats(&self) -> bool {
        false
    }

    /// The layer prepared again from the `values` and `stats` an earlier [`Rules::prepare`]
    /// gave ([`Prepared::optimised`]), without redoing the costly part; `None` where the
    /// scheme keeps nothing.
    fn resume<'a>(
        &self,
        _layer: &'a LayerPlan,
        _seed: u64,
        _values: Vec<f64>,
        _stats: LayerStats,
    ) -> Option<Prepared<'a>> {
        None
    }

    /// Bytes the layer needs while it is generated and written in `layout` by `threads`
    /// threads (its bias aside).
    fn memory(&self, layer: &LayerPlan, layout: Layout, threads: usize) -> u64;

    /// Bytes a prepared layer holds until it is written.
    fn prepared_memory(&self, layer: &LayerPlan) -> u64 {
        layer.shape.numel()
    }

    /// The scheme's own fields of the layer's record (`degree`, `ai_steps`, `conv_center`,
    /// ...), before what generation achieved.
    fn record(&self, _layer: &LayerPlan) -> SchemeFields {
        SchemeFields::default()
    }

    /// Whether the weight (of a convolution: its centre tap) is orthogonal times the gain
    /// at `density`, so that `verify` judges it.
    fn promises_orthogonality(&self, density: f64) -> bool;

    /// Which Gram matrix of a convolution shows its orthogonality (see [`KernelGram`]).
    fn kernel_gram(&self) -> KernelGram;

    /// What is wrong with a stored mask's count and placement, given the layer's record (an
    /// empty list when nothing is).
    fn check_mask(&self, mask: &StoredMask<'_>) -> Vec<String>;
}

/// The smallest density a scheme can make for a layer, and why (for messages).
#[derive(Clone, Debug, PartialEq)]
pub struct Minimum {
    pub density: f64,
    pub reason: String,
    /// Advice for a layer below the minimum beyond the usual (raise it, or clamp).
    pub help: Option<String>,
}

/// Why a scheme cannot make a layer as planned.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// The layer's field at fault, if one is (`groups`).
    pub field: Option<&'static str>,
    /// Whether the layer's density is at fault: the plan then says where it came from before
    /// the message.
    pub density: bool,
    pub message: String,
    pub help: String,
}

/// The scheme's own fields of a layer record, in the order records hold them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchemeFields {
    /// SAO's degree.
    pub degree: Option<usize>,
    /// Approximate isometry's descent.
    pub ai_steps: Option<u32>,
    pub ai_lr: Option<f64>,
    /// EOI convolutions: the centre rule, the mask rule (structured only), the density the
    /// centre matrix is built at, and whether that is raised above the rule's (to the
    /// identity of its blocks, where the rule asks less).
    pub conv_center: Option<CentreRule>,
    pub conv_mask: Option<ConvMask>,
    pub centre_density: Option<f64>,
    pub centre_raised: bool,
}

/// Which Gram matrix of a convolution's weight shows the orthogonality its scheme gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelGram {
    /// The centre tap's (out, in) matrix; every other tap must be zero (delta-orthogonal).
    Centre,
    /// The zero lag of a block-orthogonal kernel: `sum_t W_t^T W_t` (out >= in) or
    /// `sum_t W_t W_t^T` (out < in), the Gram of the (in, out * K) or (out, in * K)
    /// flattening.
    ZeroLag,
    /// The (out, in * K) flattening, reported but promised nothing.
    Flattened,
}

/// A stored mask as `verify` reads it, beside what the layer's record says of it.
#[derive(Clone, Copy, Debug)]
pub struct StoredMask<'a> {
    /// The record's scheme name and target density.
    pub scheme: Scheme,
    pub density: f64,
    /// The weight's shape in PyTorch order.
    pub shape: &'a [usize],
    /// One byte per element (0 or 1), in PyTorch order.
    pub bits: &'a [u8],
    pub nnz: u64,
    /// The record's centre nonzeros and mask rule (convolutions).
    pub centre_nnz: Option<u64>,
    pub conv_mask: ConvMask,
    /// The record's N:M pattern, if it has one.
    pub nm: Option<nm::Nm>,
}

/// One layer, fully resolved.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    pub name: String,
    pub shape: Shape,
    /// The target density of the whole tensor.
    pub density: f64,
    pub origin: Origin,
    pub scheme: Scheme,
    pub gain: Gain,
    /// The centre rule in force: `Same` under a structured mask, whatever `conv_center` says.
    pub conv_center: CentreRule,
    /// The kernel's mask rule (EOI convolutions; `TopUp` for every other layer).
    pub conv_mask: ConvMask,
    /// The std of the layer's bias, when it has one (only layers named `<module>.weight`).
    pub bias_std: Option<f64>,
    /// The descent of scheme "approx-isometry" (every layer carries `[init]`'s).
    pub isometry: approx_isometry::Settings,
    /// Convolution groups G: the kernel is G independent blocks of (out/G, in/G) (see
    /// [`LayerPlan::block`]); 1 for linear layers and ordinary convolutions.
    pub groups: usize,
    /// Names of parameters sharing the layer's storage (`tied`): with `--base`, each one the
    /// base holds gets the weight's bytes.
    pub tied: Vec<String>,
    /// The layer's N:M pattern (`nm`), if it has one: its rules then wrap its scheme's.
    pub nm: Option<nm::Nm>,
    /// Where the layer stands in the spec (line, column).
    pub position: (usize, usize),
}

impl LayerPlan {
    /// A layer `name` of `shape` at `density` with every other choice at the spec's default:
    /// EOI, gain 1, centre rule `sqrt`, top-up masks, no bias, one group. For generating a
    /// layer without a spec (`plan` resolves layers from specs).
    pub fn new(name: &str, shape: Shape, density: f64) -> LayerPlan {
        LayerPlan {
            name: name.to_string(),
            shape,
            density,
            origin: Origin::Fixed,
            scheme: Scheme::Eoi,
            gain: Gain::one(),
            conv_center: CentreRule::Sqrt,
            conv_mask: ConvMask::TopUp,
            bias_std: None,
            isometry: approx_isometry::DEFAULT,
            groups: 1,
            tied: Vec::new(),
            nm: None,
            position: (0, 0),
        }
    }

    pub fn kind(&self) -> Kind {
        self.shape.kind()
    }

    /// The name of the layer's bias, `<module>.bias` for a layer `<module>.weight`, when the
    /// layer has one. It is the same under every layout and naming.
    pub fn bias_name(&self) -> Option<String> {
        self.bias_std?;
        self.name
            .strip_suffix(".weight")
            .map(|module| format!("{module}.bias"))
    }

    /// The shape (out/G, in/G) of one of the G blocks of the centre matrix; the whole
    /// (out, in/G) matrix for G = 1. The tensor's second dimension is in/G already.
    pub fn block(&self) -> (usize, usize) {
        (self.shape.out() / self.groups, self.shape.inp())
    }

    /// The nonzeros the plan expects, as its scheme makes them ([`Rules::expected_nnz`]).
    pub fn expected_nnz(&self) -> u64 {
        self.rules().expected_nnz(self)
    }

    /// The rules of this layer: its scheme's, wrapped in its N:M pattern's if it has one.
    pub fn rules(&self) -> &'static dyn Rules {
        rules_of(self.scheme, self.nm.is_some())
    }
}

/// The rules of a layer of `scheme`, with an N:M pattern or without.
pub fn rules_of(scheme: Scheme, nm: bool) -> &'static dyn Rules {
    if nm {
        nm::rules(scheme)
    } else {
        scheme.rules()
    }
}

/// What a layer's generation achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    pub numel: u64,
    /// Ones in the mask.
    pub nnz: u64,
    /// Givens rotations applied (EOI only).
    pub rotations: Option<u64>,
    /// Nonzeros of the centre matrix, for EOI and SAO convolutions.
    pub centre_nnz: Option<u64>,
    /// Approximate isometry: `||G - gain^2 I||_F / ||gain^2 I||_F` of the optimised matrix
    /// (its centre tap for convolutions), in f64 (see [`approx_isometry`]).
    pub isometry_error: Option<f64>,
}

impl LayerStats {
    pub fn density(&self) -> f64 {
        self.nnz as f64 / self.numel as f64
    }
}

/// A generated layer.
pub struct Generated {
    pub weight: Weight,
    /// The mask in the weight's shape, flattened to (out, in * taps).
    pub mask: Mask,
    /// The bias, one row of `out` values, when the layer has one ([`bias`]).
    pub bias: Option<Grid<f64>>,
    pub stats: LayerStats,
}

/// A layer's bias `<module>.bias`, when it has one: `out` values `bias_std * z` with `z` the
/// standard normals ([`Stream::normals`]) of the bias's own stream, keyed by (seed,
/// `"<module>.bias"`), so the weight's stream and bytes are the same with or without a bias.
/// A std of 0 gives exactly +0.0 everywhere (no draws; `0 * z` would give -0.0 for
/// negative z). One row of `out` values, so it encodes like every tensor.
pub fn bias(layer: &LayerPlan, seed: u64) -> Option<Grid<f64>> {
    let name = layer.bias_name()?;
    let std = layer.bias_std?;
    let out = layer.shape.out();
    let mut values = vec![0.0; out];
    if std > 0.0 {
        Stream::derive(seed, &name).fill_normal(&mut values);
        for value in &mut values {
            *value *= std;
        }
    }
    Some(Grid::new(1, out, Order::RowMajor, values))
}

/// What a prepared layer's weight values are made from: each scheme's own recipe (EOI's
/// rotations, a baseline's stream, SAO's structure, approximate isometry's descended values).
pub trait Values: Send + Sync {
    /// The layer's weight values over `mask`.
    fn weight(&self, layer: &LayerPlan, mask: &Mask) -> Weight;

    /// The weight as it is best written in `layout`: the same values as [`Values::weight`],
    /// computed a block of rows at a time while it is encoded where the scheme can.
    fn weight_for(&self, layer: &LayerPlan, mask: &Mask, _layout: Layout) -> Weight {
        self.weight(layer, mask)
    }

    /// Approximate isometry's optimised values (see [`Rules::resume`]).
    fn optimised(&self) -> Option<&[f64]> {
        None
    }
}

/// A layer whose mask and statistics are final; its weight values follow deterministically
/// (see [`Prepared::weight`]). The mask can be written while the values are computed.
pub struct Prepared<'a> {
    layer: &'a LayerPlan,
    values: Box<dyn Values + 'a>,
    pub mask: Mask,
    pub stats: LayerStats,
}

impl<'a> Prepared<'a> {
    pub fn new(
        layer: &'a LayerPlan,
        mask: Mask,
        stats: LayerStats,
        values: impl Values + 'a,
    ) -> Prepared<'a> {
        Prepared {
            layer,
            values: Box::new(values),
            mask,
            stats,
        }
    }

    /// The layer's weight values.
    pub fn weight(&self) -> Weight {
        self.values.weight(self.layer, &self.mask)
    }

    /// The weight as it is best written in `layout` (see [`Values::weight_for`]).
    pub fn weight_for(&self, layout: Layout) -> Weight {
        self.values.weight_for(self.layer, &self.mask, layout)
    }

    /// Approximate isometry's optimised values; `None` for the other schemes.
    pub fn optimised(&self) -> Option<&[f64]> {
        self.values.optimised()
    }
}

/// The statistics of a layer's generation (see [`Rules::stats`]).
pub fn stats(layer: &LayerPlan, seed: u64) -> LayerStats {
    layer.rules().stats(layer, seed)
}

/// Draws what a layer's mask needs and fixes its statistics (see [`Rules::prepare`]).
pub fn prepare(layer: &LayerPlan, seed: u64) -> Prepared<'_> {
    layer.rules().prepare(layer, seed)
}

/// Generates a layer's weight and mask from its own stream.
pub fn generate(layer: &LayerPlan, seed: u64) -> Generated {
    let prepared = prepare(layer, seed);
    Generated {
        weight: prepared.weight(),
        mask: prepared.mask,
        bias: bias(layer, seed),
        stats: prepared.stats,
    }
}

/// The refusal of a scheme not made for grouped convolutions (`scheme` is its name).
pub fn no_groups(scheme: &str, layer: &LayerPlan) -> Result<(), Refusal> {
    if layer.groups <= 1 {
        return Ok(());
    }
    Err(Refusal {
        field: Some("groups"),
        density: false,
        message: format!(
            "scheme \"{scheme}\" is not made for grouped convolutions (groups = {})",
            layer.groups
        ),
        help: "use scheme \"eoi\" or \"orthogonal\" for this layer (they build each group's block on its own), or groups = 1".into(),
    })
}

/// A centre matrix `centre` as the layer's weight: the matrix itself for a linear layer, at
/// the centre tap (every other tap zero) for a convolution.
pub fn at_centre(layer: &LayerPlan, centre: Grid<f64>) -> Weight {
    match layer.kind() {
        Kind::Linear => Weight::Matrix(centre),
        Kind::Conv => Weight::CentreTap {
            centre,
            taps: layer.shape.taps(),
            tap: centre_tap(layer.shape.kernel()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::CentreRule;
    use crate::layer::Dtype;
    use crate::tensor::RowBlocks;

    /// A 600 x 40 layer `fc.weight` at density 0.5, with a bias of `bias_std` if given.
    fn fc(bias_std: Option<f64>) -> LayerPlan {
        let shape = Shape::new(&[600, 40]).unwrap();
        LayerPlan {
            bias_std,
            ..LayerPlan::new("fc.weight", shape, 0.5)
        }
    }

    fn values(grid: &Grid<f64>) -> Vec<f64> {
        let mut out = Vec::new();
        grid.rows_into(0, grid.rows(), &mut out);
        out
    }

    #[test]
    fn a_bias_is_its_own_streams_normals_times_the_std() {
        let layer = fc(Some(0.00448));
        let bias = bias(&layer, 7).unwrap();
        assert_eq!((bias.rows(), bias.cols()), (1, 600));
        let mut expected = vec![0.0; 600];
        Stream::derive(7, "fc.bias").fill_normal(&mut expected);
        let got = values(&bias);
        for (g, z) in got.iter().zip(&expected) {
            assert_eq!(*g, 0.00448 * z);
        }
        // Its mean square is the std's square, within sampling error (chi-square, 600
        // degrees of freedom: standard error sqrt(2/600) = 0.058 of it; bound 5 of them).
        let ms = got.iter().map(|v| v * v).sum::<f64>() / 600.0;
        assert!((ms / (0.00448 * 0.00448) - 1.0).abs() < 0.29, "{ms}");
        // Another seed, another bias.
        assert_ne!(values(&super::bias(&layer, 8).unwrap()), got);
    }

    #[test]
    fn a_zero_std_gives_positive_zeros_and_no_std_no_bias() {
        let zeros = values(&bias(&fc(Some(0.0)), 7).unwrap());
        assert!(
            zeros.iter().all(|v| v.to_bits() == 0),
            "every value is +0.0"
        );
        assert!(bias(&fc(None), 7).is_none());
    }

    #[test]
    fn a_bias_leaves_the_weight_and_mask_unchanged() {
        let with = generate(&fc(Some(1.0)), 3);
        let without = generate(&fc(None), 3);
        let bytes = |w: &Weight| {
            let mut out = Vec::new();
            crate::tensor::write_weight(w, Dtype::F64, &mut out).unwrap();
            out
        };
        assert_eq!(bytes(&with.weight), bytes(&without.weight));
        assert_eq!(with.mask, without.mask);
        assert!(with.bias.is_some() && without.bias.is_none());
    }

    /// The smallest density `scheme` makes for `shape` with `groups` groups under `rule`
    /// and mask rule `mask`.
    fn minimum_density(
        shape: &Shape,
        groups: usize,
        (rule, mask): (CentreRule, ConvMask),
        scheme: Scheme,
    ) -> f64 {
        let layer = LayerPlan {
            groups,
            conv_center: rule,
            conv_mask: mask,
            scheme,
            ..LayerPlan::new("t", shape.clone(), 1.0)
        };
        scheme.rules().minimum(&layer).density
    }

    const SAME: (CentreRule, ConvMask) = (CentreRule::Same, ConvMask::TopUp);
    const SQRT: (CentreRule, ConvMask) = (CentreRule::Sqrt, ConvMask::TopUp);
    const STRUCTURED: (CentreRule, ConvMask) = (CentreRule::Same, ConvMask::Structured);

    #[test]
    fn grouped_and_depthwise_minima_are_the_identity_of_each_block() {
        // (32, 4, 3, 3) with groups = 8: eight blocks of 4 x 4. EOI's least kernel is the
        // identity of each block at the centre tap, 32 ones of 1152, under either centre rule
        // (the top-up does the rest); a structured mask keeps whole slices: 1/max(4, 4).
        let shape = Shape::new(&[32, 4, 3, 3]).unwrap();
        for rule in [SAME, SQRT] {
            assert_eq!(minimum_density(&shape, 8, rule, Scheme::Eoi), 32.0 / 1152.0);
        }
        assert_eq!(minimum_density(&shape, 8, STRUCTURED, Scheme::Eoi), 0.25);
        assert_eq!(minimum_density(&shape, 1, SAME, Scheme::Eoi), 4.0 / 1152.0);
        // A depthwise layer's 1 x 1 blocks: one weight per channel, 1/9 of a 3 x 3 kernel
        // (dense under a structured mask); a random mask still needs only one weight.
        let depthwise = Shape::new(&[96, 1, 3, 3]).unwrap();
        for rule in [SAME, SQRT] {
            assert_eq!(
                minimum_density(&depthwise, 96, rule, Scheme::Eoi),
                1.0 / 9.0
            );
        }
        assert_eq!(
            minimum_density(&depthwise, 96, STRUCTURED, Scheme::Eoi),
            1.0
        );
        assert_eq!(
            minimum_density(&depthwise, 96, SAME, Scheme::Kaiming),
            1.0 / 864.0
        );
    }

    #[test]
    fn conv_minimum_is_the_tensors_whatever_the_centre_rule() {
        // (64, 32, 3, 3): the identity's 32 ones at the centre tap of 18432 weights.
        let shape = Shape::new(&[64, 32, 3, 3]).unwrap();
        for rule in [SAME, SQRT] {
            assert_eq!(
                minimum_density(&shape, 1, rule, Scheme::Eoi),
                1.0 / (64.0 * 9.0)
            );
        }
        assert_eq!(
            minimum_density(&shape, 1, STRUCTURED, Scheme::Eoi),
            1.0 / 64.0
        );
        // A random mask needs one weight, whatever the rule.
        assert_eq!(
            minimum_density(&shape, 1, SAME, Scheme::Kaiming),
            1.0 / (64.0 * 32.0 * 9.0)
        );
    }
}

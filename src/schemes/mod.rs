//! Initialization schemes: a layer's plan and its random stream in, the weight, the mask and
//! the statistics the provenance records out. Every scheme has the same shape: [`prepare`]
//! draws what the mask needs and fixes the statistics, [`Prepared::weight`] computes the
//! values. EOI's maths lives in [`eoi`], and [`conv`] wraps it with the delta-orthogonal
//! centre-tap rule for kernels. The baselines keep a random [`mask`] over [`kaiming`]
//! normal weights, a dense [`orthogonal`] matrix or a block-orthogonal kernel
//! ([`conv_orthogonal`]), or build [`sao`]'s structured matrix; [`approx_isometry`]
//! optimises the masked orthogonal matrix towards orthogonality.

pub mod approx_isometry;
pub mod conv;
pub mod conv_orthogonal;
pub mod eoi;
pub mod kaiming;
pub mod mask;
pub mod orthogonal;
pub mod sao;

use crate::layer::{CentreRule, ConvMask, Gain, Kind, Layout, Origin, Shape, named};
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order, RowBlocks, Weight};

named! {
    /// The initialization scheme of a layer: EOI, or one of the baselines the paper compares
    /// it with.
    pub enum Scheme {
        /// Exact Orthogonal Initialization (the default).
        Eoi = "eoi",
        /// A random mask over normal weights with std `gain / sqrt(fan_in)`.
        Kaiming = "kaiming",
        /// A random mask over normal weights with std `gain / sqrt(fan_in * d)`.
        ScaledKaiming = "scaled-kaiming",
        /// A random mask over a dense orthogonal matrix (delta-orthogonal for convolutions).
        Orthogonal = "orthogonal",
        /// Sparsity-Aware Orthogonal initialization (Esguerra et al. 2023): exactly orthogonal
        /// on a regular bipartite structure, for densities `k / max(out, in)` only.
        Sao = "sao",
        /// Approximate isometry (Lee et al. 2020): the `orthogonal` baseline's masked matrix,
        /// then gradient descent on the kept weights towards an orthogonal Gram matrix.
        ApproxIsometry = "approx-isometry",
        /// A random mask over a dense block-orthogonal kernel (Xiao et al. 2018, Algorithm 1),
        /// orthogonal as a periodic convolution on every tap; a dense orthogonal matrix for
        /// linear layers.
        ConvOrthogonal = "conv-orthogonal",
    }
}

impl Scheme {
    /// Whether the mask is drawn uniformly at random, with exactly `round(d * numel)` ones.
    pub fn random_mask(self) -> bool {
        !matches!(self, Scheme::Eoi | Scheme::Sao)
    }

    /// Whether the weight (of a convolution: its centre tap, every other tap zero) is
    /// orthogonal times the gain at `density`: EOI and SAO always, a dense orthogonal matrix
    /// (and approximate isometry, which starts from it) only unmasked, and a block-orthogonal
    /// kernel (orthogonal as a convolution) likewise.
    pub fn promises_orthogonality(self, density: f64) -> bool {
        match self {
            Scheme::Eoi | Scheme::Sao => true,
            Scheme::Orthogonal | Scheme::ApproxIsometry | Scheme::ConvOrthogonal => density == 1.0,
            Scheme::Kaiming | Scheme::ScaledKaiming => false,
        }
    }

    /// Whether a convolution's weight is zero off the centre tap.
    pub fn delta(self) -> bool {
        matches!(
            self,
            Scheme::Eoi | Scheme::Orthogonal | Scheme::Sao | Scheme::ApproxIsometry
        )
    }
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

    /// The density of the centre matrix, for convolutions.
    pub fn centre_density(&self) -> Option<f64> {
        (self.kind() == Kind::Conv).then(|| {
            self.conv_center
                .centre_density(self.density, self.shape.taps())
        })
    }

    /// The nonzeros the plan expects: `round(d * numel)` for a matrix (EOI lands within one
    /// rotation of it) and for a random mask (exactly), `ceil(d * numel)` for an EOI kernel
    /// (its mask is topped up to exactly that); for a structured kernel `round(d * numel)`,
    /// which its `centre_nnz * K` ones land near.
    pub fn expected_nnz(&self) -> u64 {
        if self.scheme.random_mask() {
            return mask::ones(self.density, self.shape.numel());
        }
        let exact = self.density * self.shape.numel() as f64;
        let nnz = match (self.kind(), self.conv_mask) {
            // A structured kernel keeps K taps per centre nonzero: within one rotation's slices.
            (Kind::Linear, _) | (Kind::Conv, ConvMask::Structured) => exact.round(),
            (Kind::Conv, ConvMask::TopUp) => exact.ceil(),
        };
        (nnz as u64).min(self.shape.numel())
    }
}

/// What a layer's generation achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    pub numel: u64,
    /// Ones in the mask.
    pub nnz: u64,
    /// Givens rotations applied (EOI; 0 for the other schemes).
    pub rotations: u64,
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

/// A linear layer's EOI schedule: the first draws of its stream.
fn linear_schedule(layer: &LayerPlan, stream: &mut Stream) -> eoi::Schedule {
    eoi::schedule(layer.shape.out(), layer.shape.inp(), layer.density, stream)
}

/// A kernel's EOI centre, block by block (one block unless the layer has groups).
fn kernel_centre(layer: &LayerPlan, seed: u64, stream: &mut Stream) -> conv::Centre {
    let shape = &layer.shape;
    conv::centre(
        shape.out(),
        shape.inp(),
        shape.taps(),
        layer.groups,
        layer.density,
        layer.conv_center,
        stream,
        (seed, &layer.name),
    )
}

fn linear_stats(layer: &LayerPlan, schedule: &eoi::Schedule) -> LayerStats {
    LayerStats {
        numel: layer.shape.numel(),
        nnz: schedule.nnz(),
        rotations: schedule.rotations().len() as u64,
        centre_nnz: None,
        isometry_error: None,
    }
}

fn kernel_stats(layer: &LayerPlan, centre: &conv::Centre) -> LayerStats {
    let numel = layer.shape.numel();
    LayerStats {
        numel,
        nnz: match layer.conv_mask {
            crate::layer::ConvMask::TopUp => conv::mask_ones(layer.density, numel, centre.nnz()),
            crate::layer::ConvMask::Structured => centre.nnz() * layer.shape.taps() as u64,
        },
        rotations: centre.rotations(),
        centre_nnz: Some(centre.nnz()),
        isometry_error: None,
    }
}

/// The statistics of a random-mask layer: they follow from the plan alone.
fn random_mask_stats(layer: &LayerPlan) -> LayerStats {
    let numel = layer.shape.numel();
    LayerStats {
        numel,
        nnz: mask::ones(layer.density, numel),
        rotations: 0,
        centre_nnz: None,
        isometry_error: None,
    }
}

/// The statistics of a layer's generation, computed without weight values where the scheme
/// allows it (EOI: from the support alone), so they can go into a file header before any
/// weight exists. Approximate isometry records the error its descent reaches, so its
/// statistics cost the whole descent.
pub fn stats(layer: &LayerPlan, seed: u64) -> LayerStats {
    match layer.scheme {
        Scheme::Eoi => {
            let mut stream = Stream::derive(seed, &layer.name);
            match layer.kind() {
                Kind::Linear => linear_stats(layer, &linear_schedule(layer, &mut stream)),
                Kind::Conv => kernel_stats(layer, &kernel_centre(layer, seed, &mut stream)),
            }
        }
        Scheme::Kaiming | Scheme::ScaledKaiming | Scheme::Orthogonal | Scheme::ConvOrthogonal => {
            random_mask_stats(layer)
        }
        Scheme::Sao => sao_stats(layer, sao_degree(layer)),
        Scheme::ApproxIsometry => prepare(layer, seed).stats,
    }
}

/// A SAO layer's degree; the plan admits only densities that have one.
fn sao_degree(layer: &LayerPlan) -> usize {
    let (out, inp) = (layer.shape.out(), layer.shape.inp());
    // The plan refuses other densities; the nearest degree keeps this total regardless.
    sao::degree(out, inp, layer.density)
        .unwrap_or_else(|| ((layer.density * out.max(inp) as f64).round() as usize).max(1))
}

/// The statistics of a SAO layer: `n k` nonzeros in the matrix, on every tap of a kernel.
fn sao_stats(layer: &LayerPlan, degree: usize) -> LayerStats {
    let shape = &layer.shape;
    let centre = shape.out().min(shape.inp()) as u64 * degree as u64;
    LayerStats {
        numel: shape.numel(),
        nnz: centre * shape.taps() as u64,
        rotations: 0,
        centre_nnz: (layer.kind() == Kind::Conv).then_some(centre),
        isometry_error: None,
    }
}

/// How a prepared layer's values are made.
enum Recipe {
    /// EOI of a matrix: the rotations to apply.
    Eoi(eoi::Schedule),
    /// EOI of a kernel: the centre's blocks.
    EoiKernel(conv::Centre),
    /// A baseline over a random mask: the values are drawn from the layer's stream where the
    /// mask left it.
    Drawn(Stream),
    /// SAO: its structure, and the stream where drawing it left off (for the values).
    Sao(sao::Structure, Stream),
    /// Approximate isometry: the optimised kept values of the (centre) matrix, row-major
    /// over the mask's kept (centre) positions.
    Optimised(Vec<f64>),
}

/// A layer whose mask and statistics are final; its weight values follow deterministically
/// (see [`Prepared::weight`]). The mask can be written while the values are computed.
pub struct Prepared<'a> {
    layer: &'a LayerPlan,
    seed: u64,
    recipe: Recipe,
    pub mask: Mask,
    pub stats: LayerStats,
}

impl Prepared<'_> {
    /// The layer's weight values.
    pub fn weight(&self) -> Weight {
        let layer = self.layer;
        let gain = layer.gain.value;
        match &self.recipe {
            Recipe::Eoi(schedule) => Weight::Matrix(schedule.matrix(gain)),
            Recipe::EoiKernel(centre) => conv::weight(centre, layer.shape.kernel(), gain),
            Recipe::Sao(structure, stream) => {
                let matrix = structure.matrix(gain, &mut stream.clone());
                match layer.kind() {
                    Kind::Linear => Weight::Matrix(matrix),
                    Kind::Conv => Weight::CentreTap {
                        centre: matrix,
                        taps: layer.shape.taps(),
                        tap: conv::centre_tap(layer.shape.kernel()),
                    },
                }
            }
            Recipe::Optimised(values) => optimised_weight(layer, &self.mask, values),
            Recipe::Drawn(stream) => {
                let mut stream = stream.clone();
                match layer.scheme {
                    Scheme::Orthogonal => {
                        masked_orthogonal(layer, &self.mask, &mut stream, self.seed)
                    }
                    Scheme::ConvOrthogonal => {
                        masked_block_orthogonal(layer, &self.mask, &mut stream)
                    }
                    scheme => {
                        let scaled = scheme == Scheme::ScaledKaiming;
                        let std = kaiming::std(&layer.shape, layer.density, gain, scaled);
                        Weight::Matrix(kaiming::weight(&self.mask, std, &mut stream))
                    }
                }
            }
        }
    }

    /// Approximate isometry's optimised values (see [`prepare_optimised`]); `None` for the
    /// other schemes.
    pub fn optimised(&self) -> Option<&[f64]> {
        match &self.recipe {
            Recipe::Optimised(values) => Some(values),
            _ => None,
        }
    }

    /// The weight as it is best written in `layout`: the same values as [`Prepared::weight`],
    /// but for a wide or square linear layer in PyTorch layout computed a block of rows at a
    /// time while it is encoded ([`Weight::Computed`]), so the layer's whole f64 matrix never
    /// exists. Other layers are computed whole first.
    pub fn weight_for(&self, layout: Layout) -> Weight {
        if let Recipe::Eoi(schedule) = &self.recipe {
            if layout == Layout::Torch {
                if let Some(rows) = schedule.rotated_rows(self.layer.gain.value) {
                    return Weight::Computed(std::sync::Arc::new(rows));
                }
            }
        }
        self.weight()
    }
}

/// The `orthogonal` baseline: a dense orthogonal (out, in) matrix times the gain, at the
/// centre tap for convolutions, kept where the mask is 1. A grouped kernel gets one dense
/// orthogonal (out/G, in/G) block per group: with one group from the layer's stream after
/// the mask, with G > 1 block b from [`Stream::derive_block`]`(seed, name, b)`.
fn masked_orthogonal(layer: &LayerPlan, mask: &Mask, stream: &mut Stream, seed: u64) -> Weight {
    let (out, inp) = (layer.shape.out(), layer.shape.inp());
    let groups = layer.groups.max(1);
    let rows = out / groups;
    let blocks: Vec<Grid<f64>> = if groups == 1 {
        vec![orthogonal::matrix(out, inp, stream)]
    } else {
        (0..groups)
            .map(|b| {
                let mut own = Stream::derive_block(seed, &layer.name, b as u64);
                orthogonal::matrix(rows, inp, &mut own)
            })
            .collect()
    };
    let taps = layer.shape.taps();
    let tap = conv::centre_tap(layer.shape.kernel());
    let gain = layer.gain.value;
    let mut values = Vec::with_capacity(out * inp);
    let mut row = Vec::with_capacity(inp * taps);
    for i in 0..out {
        row.clear();
        mask.rows_into(i, 1, &mut row);
        let q = &blocks[i / rows];
        for j in 0..inp {
            let kept = row[j * taps + tap] != 0;
            values.push(if kept { gain * q.get(i % rows, j) } else { 0.0 });
        }
    }
    let centre = Grid::new(out, inp, Order::RowMajor, values);
    match layer.kind() {
        Kind::Linear => Weight::Matrix(centre),
        Kind::Conv => Weight::CentreTap { centre, taps, tap },
    }
}

/// Whether the (centre) matrix entry (i, j) is kept by a random mask over (out, in * taps).
fn centre_kept(mask: &Mask, taps: usize, tap: usize) -> impl Fn(usize, usize) -> bool + '_ {
    move |i, j| mask.get(i, j * taps + tap) != 0
}

/// The approximate-isometry weight: `values` at the mask's kept (centre) positions, zero
/// elsewhere.
fn optimised_weight(layer: &LayerPlan, mask: &Mask, values: &[f64]) -> Weight {
    let (out, inp) = (layer.shape.out(), layer.shape.inp());
    let taps = layer.shape.taps();
    let tap = conv::centre_tap(layer.shape.kernel());
    let kept = centre_kept(mask, taps, tap);
    let mut matrix = crate::tensor::zeroed(out * inp);
    let mut next = values.iter();
    for i in 0..out {
        for j in 0..inp {
            if kept(i, j) {
                matrix[i * inp + j] = next.next().copied().unwrap_or(0.0);
            }
        }
    }
    let centre = Grid::new(out, inp, Order::RowMajor, matrix);
    match layer.kind() {
        Kind::Linear => Weight::Matrix(centre),
        Kind::Conv => Weight::CentreTap { centre, taps, tap },
    }
}

/// The `conv-orthogonal` baseline: a block-orthogonal kernel times the gain (a dense
/// orthogonal matrix for linear layers), kept where the mask is 1.
fn masked_block_orthogonal(layer: &LayerPlan, mask: &Mask, stream: &mut Stream) -> Weight {
    let shape = &layer.shape;
    let kernel = conv_orthogonal::kernel(shape.out(), shape.inp(), shape.kernel(), stream);
    let gain = layer.gain.value;
    let row_len = shape.fan_in();
    let mut values = Vec::with_capacity(shape.out() * row_len);
    let mut row = Vec::with_capacity(row_len);
    for i in 0..shape.out() {
        row.clear();
        mask.rows_into(i, 1, &mut row);
        for (j, &kept) in row.iter().enumerate() {
            values.push(if kept != 0 {
                gain * kernel.get(i, j)
            } else {
                0.0
            });
        }
    }
    Weight::Matrix(Grid::new(shape.out(), row_len, Order::RowMajor, values))
}

/// Draws what a layer's mask needs from its own stream. EOI: the rotations, then (for
/// convolutions) the mask top-up; a grouped kernel's blocks draw from their own streams
/// (see [`conv::centre`]). The random-mask baselines: the mask ([`mask::random`]),
/// then, in [`Prepared::weight`], the values. SAO: the groups ([`sao::Structure::draw`]),
/// then the values ([`sao::Structure::matrix`]). Approximate isometry: the mask, the
/// orthogonal matrix (the draws of `orthogonal`), then the descent, here, so that its error
/// is in the statistics.
pub fn prepare(layer: &LayerPlan, seed: u64) -> Prepared<'_> {
    let mut stream = Stream::derive(seed, &layer.name);
    match layer.scheme {
        Scheme::Eoi => match layer.kind() {
            Kind::Linear => {
                let schedule = linear_schedule(layer, &mut stream);
                Prepared {
                    layer,
                    seed,
                    stats: linear_stats(layer, &schedule),
                    mask: Mask::Bits(schedule.mask()),
                    recipe: Recipe::Eoi(schedule),
                }
            }
            Kind::Conv => {
                let centre = kernel_centre(layer, seed, &mut stream);
                let mask = match layer.conv_mask {
                    crate::layer::ConvMask::TopUp => {
                        conv::mask(&centre, layer.shape.kernel(), layer.density, &mut stream)
                    }
                    crate::layer::ConvMask::Structured => {
                        conv::structured_mask(&centre, layer.shape.kernel())
                    }
                };
                Prepared {
                    layer,
                    seed,
                    stats: kernel_stats(layer, &centre),
                    mask,
                    recipe: Recipe::EoiKernel(centre),
                }
            }
        },
        Scheme::Kaiming | Scheme::ScaledKaiming | Scheme::Orthogonal | Scheme::ConvOrthogonal => {
            let shape = &layer.shape;
            let mask = mask::random(shape.out(), shape.fan_in(), layer.density, &mut stream);
            Prepared {
                layer,
                seed,
                recipe: Recipe::Drawn(stream),
                mask,
                stats: random_mask_stats(layer),
            }
        }
        Scheme::Sao => {
            let shape = &layer.shape;
            let degree = sao_degree(layer);
            let structure = sao::Structure::draw(shape.out(), shape.inp(), degree, &mut stream);
            let mask = structure.mask(shape.taps());
            Prepared {
                layer,
                seed,
                recipe: Recipe::Sao(structure, stream),
                mask,
                stats: sao_stats(layer, degree),
            }
        }
        Scheme::ApproxIsometry => {
            let shape = &layer.shape;
            let mask = mask::random(shape.out(), shape.fan_in(), layer.density, &mut stream);
            let q = orthogonal::matrix(shape.out(), shape.inp(), &mut stream);
            let kept = centre_kept(&mask, shape.taps(), conv::centre_tap(shape.kernel()));
            let optimised = approx_isometry::optimise(&q, kept, layer.gain.value, layer.isometry);
            drop(q);
            Prepared {
                layer,
                seed,
                recipe: Recipe::Optimised(optimised.values),
                mask,
                stats: LayerStats {
                    isometry_error: Some(optimised.error),
                    ..random_mask_stats(layer)
                },
            }
        }
    }
}

/// An approximate-isometry layer prepared again from the `values` and `stats` an earlier
/// [`prepare`] of it gave ([`Prepared::optimised`]): the mask is drawn again (cheap), the
/// orthogonal start and the descent are not. `None` for the other schemes.
pub fn prepare_optimised(
    layer: &LayerPlan,
    seed: u64,
    values: Vec<f64>,
    stats: LayerStats,
) -> Option<Prepared<'_>> {
    if layer.scheme != Scheme::ApproxIsometry {
        return None;
    }
    let mut stream = Stream::derive(seed, &layer.name);
    let shape = &layer.shape;
    let mask = mask::random(shape.out(), shape.fan_in(), layer.density, &mut stream);
    Some(Prepared {
        layer,
        seed,
        recipe: Recipe::Optimised(values),
        mask,
        stats,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Dtype;

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
}

//! N:M sparsity (NVIDIA's 2:4 and its kin): in every group of M consecutive weights along a
//! layer's input dimension at most N are nonzero, and, "transposable", in every group of M
//! consecutive weights along its output dimension too. A pattern is a property of a layer,
//! orthogonal to its scheme: an N:M layer keeps its scheme, and [`rules`] wraps that scheme's
//! rules with the pattern's.
//!
//! EOI makes an N:M layer exactly orthogonal. Every group of M inputs is split at random into
//! M/N classes of N (transposable: every group of M outputs too; otherwise the outputs go to
//! the classes in balanced consecutive blocks), and class c's outputs x class c's inputs get
//! an EOI block of their own, each from its own stream. After a permutation of rows and
//! columns the matrix is block diagonal, so it is orthogonal exactly, and every row keeps its
//! support inside its class: at most N nonzeros in every group of M. A convolution's centre
//! matrix carries the pattern along its input channels, and the top-up adds ones only inside
//! the classes, so the pattern holds at every tap. The random-mask baselines (`kaiming`,
//! `scaled-kaiming`, `orthogonal`) keep their values over a random N:M mask instead.
//! docs/spec.md, "N:M sparsity", states all of it for users.

use std::fmt;

use super::eoi::rotation;
use super::{
    KernelGram, LayerPlan, LayerStats, Minimum, Prepared, Refusal, Rules, Scheme, SchemeFields,
    StoredMask, Values, kaiming, mask, orthogonal,
};
use crate::layer::{ConvMask, Kind, Layout, Shape, centre_tap, named, ones_at_centre};
use crate::stream::Stream;
use crate::tensor::{self, Grid, Mask, Order, Weight};

/// An N:M pattern: at most `n` nonzeros in every group of `m` consecutive weights, with
/// `0 < n < m` and `n` dividing `m` (so that a group splits into `m / n` classes of `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    n: usize,
    m: usize,
}

impl Pattern {
    /// The patterns `eoi inspect` looks for: those of sparse tensor cores (2:4 for 16-bit
    /// types, 1:2 for TF32) and their common relatives.
    pub const COMMON: [Pattern; 5] = [
        Pattern { n: 1, m: 2 },
        Pattern { n: 2, m: 4 },
        Pattern { n: 1, m: 4 },
        Pattern { n: 2, m: 8 },
        Pattern { n: 4, m: 8 },
    ];

    /// The pattern N:M, or why there is none.
    pub fn new(n: usize, m: usize) -> Result<Pattern, String> {
        if n == 0 || n >= m {
            return Err(format!(
                "an N:M pattern keeps N of every M weights with 0 < N < M, got \"{n}:{m}\""
            ));
        }
        if m % n != 0 {
            // A bounded search, so that a huge M cannot hang the parser.
            let below = (1..n).rev().take(4096).find(|d| m % d == 0).unwrap_or(1);
            let nearest = match (n + 1..m).take(4096).find(|d| m % d == 0) {
                Some(above) => format!("\"{below}:{m}\" or \"{above}:{m}\""),
                None => format!("\"{below}:{m}\""),
            };
            return Err(format!(
                "in \"{n}:{m}\" N does not divide M: eoi splits every group of M weights into M/N classes of N (one exactly orthogonal block per class); the nearest patterns are {nearest}"
            ));
        }
        Ok(Pattern { n, m })
    }

    /// Parses `"N:M"`.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let numbers = text
            .split_once(':')
            .and_then(|(n, m)| Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?)));
        match numbers {
            Some((n, m)) => Pattern::new(n, m),
            None => Err(format!(
                "an N:M pattern is written \"N:M\" with whole numbers, such as \"2:4\", got \"{text}\""
            )),
        }
    }

    pub fn n(self) -> usize {
        self.n
    }

    pub fn m(self) -> usize {
        self.m
    }

    /// The classes a group of M splits into, M/N.
    pub fn classes(self) -> usize {
        self.m / self.n
    }

    /// N/M, the most a layer with this pattern holds.
    pub fn density(self) -> f64 {
        self.n as f64 / self.m as f64
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.n, self.m)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        Pattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Pattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NmPattern".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An N:M pattern \"N:M\": at most N nonzeros in every group of M consecutive weights along the input dimension, 0 < N < M, N dividing M.",
            "type": "string",
            "pattern": "^[0-9]+:[0-9]+$"
        })
    }
}

/// A layer's N:M sparsity: its pattern along the inputs, and whether it holds along the
/// outputs too (`nm_transposable`, NVIDIA ASP's "2d" masks, for which the transposed matrix
/// of the backward pass is N:M as well).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nm {
    pub pattern: Pattern,
    pub transposable: bool,
}

impl fmt::Display for Nm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pattern)?;
        if self.transposable {
            write!(f, " transposable")?;
        }
        Ok(())
    }
}

named! {
    /// What to do with a layer that `[sparsity]`'s `nm` does not fit (`nm_skip`).
    #[derive(Default)]
    pub enum Skip {
        /// A spec error naming the layer (the default).
        #[default]
        Error = "error",
        /// The layer is dense (density 1, origin `dense`), unless it fixes its own density.
        Dense = "dense",
        /// The layer has no pattern: its density comes from the distribution, as without `nm`.
        Unstructured = "unstructured",
    }
}

/// Why a shape cannot take a pattern, and the nearest ways to fix it (for messages).
#[derive(Clone, Debug, PartialEq)]
pub struct Unfit {
    pub message: String,
    pub fixes: Vec<String>,
}

/// Whether a layer of `shape` with `groups` convolution groups can take `nm`: its input
/// dimension (the tensor's second, in/G) a multiple of M; transposable, its outputs per group
/// a multiple of M too; otherwise at least M/N outputs per group, one for every class.
pub fn fit(shape: &Shape, groups: usize, nm: Nm) -> Result<(), Unfit> {
    let (p, m) = (nm.pattern, nm.pattern.m);
    let inp = shape.inp();
    let groups = groups.max(1);
    let rows = shape.out() / groups;
    let (inputs, outputs) = match shape.kind() {
        Kind::Linear => ("inputs", "outputs"),
        Kind::Conv => ("input channels", "output channels"),
    };
    let per_group = if groups > 1 {
        format!(" per group ({groups} groups)")
    } else {
        String::new()
    };
    let patterns_of = |len: usize| -> Vec<String> {
        Pattern::COMMON
            .iter()
            .filter(|q| len % q.m == 0)
            .map(|q| format!("\"{q}\""))
            .collect()
    };
    if inp % m != 0 {
        let mut fixes = vec![format!(
            "{} {inputs} (a multiple of {m})",
            inp.next_multiple_of(m)
        )];
        let others = patterns_of(inp);
        if !others.is_empty() {
            fixes.push(format!("nm = {}", others.join(" or ")));
        }
        return Err(Unfit {
            message: format!(
                "nm = \"{p}\" groups every {m} consecutive {inputs}, but shape {shape} has {inp} {inputs}{}, not a multiple of {m}",
                if shape.kind() == Kind::Conv && groups > 1 {
                    " per group"
                } else {
                    ""
                }
            ),
            fixes,
        });
    }
    if nm.transposable && rows % m != 0 {
        return Err(Unfit {
            message: format!(
                "nm_transposable groups every {m} consecutive {outputs} too, but shape {shape} has {rows} {outputs}{per_group}, not a multiple of {m}"
            ),
            fixes: vec![
                format!(
                    "{} {outputs}{per_group} (a multiple of {m})",
                    rows.next_multiple_of(m)
                ),
                "nm_transposable = false".into(),
            ],
        });
    }
    let classes = p.classes();
    if rows < classes {
        return Err(Unfit {
            message: format!(
                "nm = \"{p}\" splits the {outputs} over its {classes} classes (M/N), but shape {shape} has {rows} {outputs}{per_group}"
            ),
            fixes: vec![format!("at least {classes} {outputs}{per_group}")],
        });
    }
    Ok(())
}

/// The class of each of `len` positions (a multiple of M): for each group of M consecutive
/// positions in order, a Fisher-Yates shuffle of `0..M` (`i` from M - 1 down to 1 swapped
/// with a position [`Stream::below`]`(i + 1)`), after which position `perm[k]` of the group
/// is in class `k / N`.
fn shuffled_classes(len: usize, pattern: Pattern, stream: &mut Stream) -> Vec<usize> {
    let (n, m) = (pattern.n, pattern.m);
    let mut classes = vec![0; len];
    let mut perm: Vec<usize> = (0..m).collect();
    for group in 0..len / m {
        for (k, p) in perm.iter_mut().enumerate() {
            *p = k;
        }
        for i in (1..m).rev() {
            let j = stream.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        for (k, &p) in perm.iter().enumerate() {
            classes[group * m + p] = k / n;
        }
    }
    classes
}

/// The class of each of `len` outputs in balanced consecutive blocks: class c holds
/// `floor(c len / C) .. floor((c + 1) len / C)`. Draws nothing.
fn balanced_classes(len: usize, classes: usize) -> Vec<usize> {
    let mut out = vec![0; len];
    for c in 0..classes {
        out[c * len / classes..(c + 1) * len / classes].fill(c);
    }
    out
}

/// One class of one convolution group: its output rows (of the whole tensor) and its input
/// positions (along the tensor's second dimension), both increasing.
#[derive(Clone, Debug, PartialEq)]
struct Block {
    rows: Vec<usize>,
    cols: Vec<usize>,
}

/// The classes of an N:M layer: block `g * C + c` is class c of convolution group g (one
/// group for a linear layer).
#[derive(Clone, Debug, PartialEq)]
struct Structure {
    blocks: Vec<Block>,
    /// The block of each output row.
    row_block: Vec<usize>,
    /// Inputs along the tensor's second dimension, and taps.
    inp: usize,
    taps: usize,
}

impl Structure {
    /// Draws the classes from the layer's stream: for each convolution group in order, the
    /// classes of its inputs ([`shuffled_classes`]), then, transposable, those of its out/G
    /// outputs the same way; otherwise the outputs are in [`balanced_classes`].
    fn draw(layer: &LayerPlan, nm: Nm, stream: &mut Stream) -> Structure {
        let classes = nm.pattern.classes();
        let groups = layer.groups.max(1);
        let (out, inp) = (layer.shape.out(), layer.shape.inp());
        let per_group = out / groups;
        let mut blocks = Vec::with_capacity(groups * classes);
        let mut row_block = vec![0; out];
        for g in 0..groups {
            let inputs = shuffled_classes(inp, nm.pattern, stream);
            let outputs = if nm.transposable {
                shuffled_classes(per_group, nm.pattern, stream)
            } else {
                balanced_classes(per_group, classes)
            };
            let first = blocks.len();
            blocks.extend((0..classes).map(|_| Block {
                rows: Vec::new(),
                cols: Vec::new(),
            }));
            for (r, &c) in outputs.iter().enumerate() {
                blocks[first + c].rows.push(g * per_group + r);
                row_block[g * per_group + r] = first + c;
            }
            for (i, &c) in inputs.iter().enumerate() {
                blocks[first + c].cols.push(i);
            }
        }
        Structure {
            blocks,
            row_block,
            inp,
            taps: layer.shape.taps(),
        }
    }

    /// The inputs row `row` may use.
    fn allowed(&self, row: usize) -> &[usize] {
        &self.blocks[self.row_block[row]].cols
    }

    /// Every position the classes allow, at every tap, as one byte each (out, in, k...).
    fn allowed_mask(&self) -> Vec<u8> {
        let (inp, taps) = (self.inp, self.taps);
        let mut bytes = vec![0u8; self.row_block.len() * inp * taps];
        for row in 0..self.row_block.len() {
            for &i in self.allowed(row) {
                let at = (row * inp + i) * taps;
                bytes[at..at + taps].fill(1);
            }
        }
        bytes
    }
}

/// The density of each EOI block: the layer's (for a convolution, its centre's, at most
/// N/M) times M/N, at most 1.
fn block_density(layer: &LayerPlan, nm: Nm) -> f64 {
    (centre_density(layer, nm) * nm.pattern.classes() as f64).min(1.0)
}

/// The density of the matrix that carries the pattern: a linear layer's own; a
/// convolution's centre density under its rule, capped at N/M (the most the classes hold).
fn centre_density(layer: &LayerPlan, nm: Nm) -> f64 {
    let d = match layer.kind() {
        Kind::Linear => layer.density,
        Kind::Conv => layer
            .conv_center
            .centre_density(layer.density, layer.shape.taps()),
    };
    d.min(nm.pattern.density())
}

/// Positions an N:M mask may hold, `numel * N / M`: N of every M inputs of every row at
/// every tap.
fn allowed_count(numel: u64, nm: Nm) -> u64 {
    numel / nm.pattern.classes() as u64
}

/// EOI's blocks of an N:M layer: its classes and one EOI schedule per class.
struct Blocks {
    structure: Structure,
    schedules: Vec<rotation::Schedule>,
    /// -1 or +1 for a 1 x 1 block (which has no two columns to rotate), +1 otherwise.
    signs: Vec<f64>,
}

impl Blocks {
    /// Draws the classes from the layer's stream `stream`, then block b's rotations from its
    /// own stream [`Stream::derive_nm`]`(seed, name, b)` at [`block_density`] (see
    /// [`rotation::schedule`]); a 1 x 1 block draws one [`Stream::below`]`(2)` for its sign
    /// (1: negative) instead.
    fn draw(layer: &LayerPlan, nm: Nm, seed: u64, stream: &mut Stream) -> Blocks {
        let structure = Structure::draw(layer, nm, stream);
        let d = block_density(layer, nm);
        let mut schedules = Vec::with_capacity(structure.blocks.len());
        let mut signs = Vec::with_capacity(structure.blocks.len());
        for (b, block) in structure.blocks.iter().enumerate() {
            let mut own = Stream::derive_nm(seed, &layer.name, b as u64);
            let (rows, cols) = (block.rows.len(), block.cols.len());
            let negative = rows == 1 && cols == 1 && own.below(2) == 1;
            signs.push(if negative { -1.0 } else { 1.0 });
            schedules.push(rotation::schedule(rows, cols, d, &mut own));
        }
        Blocks {
            structure,
            schedules,
            signs,
        }
    }

    /// Nonzeros of the matrix (the centre matrix of a kernel): the blocks' supports.
    fn nnz(&self) -> u64 {
        self.schedules.iter().map(rotation::Schedule::nnz).sum()
    }

    fn rotations(&self) -> u64 {
        self.schedules
            .iter()
            .map(|s| s.rotations().len() as u64)
            .sum()
    }

    /// The (out, in) matrix (a kernel's centre) times `gain`, row-major: block b's EOI
    /// matrix at its rows and columns, zero elsewhere.
    fn matrix(&self, gain: f64) -> Grid<f64> {
        let (out, inp) = (self.structure.row_block.len(), self.structure.inp);
        let mut values = tensor::zeroed(out * inp);
        for ((block, schedule), &sign) in self
            .structure
            .blocks
            .iter()
            .zip(&self.schedules)
            .zip(&self.signs)
        {
            let m = schedule.matrix(gain * sign);
            // Tiles of 16 rows: a block stored column-major is read in runs of 16 while 16
            // rows of the matrix are written, so both stay in cache.
            for (r0, rows) in block.rows.chunks(16).enumerate() {
                for (k, &col) in block.cols.iter().enumerate() {
                    for (t, &row) in rows.iter().enumerate() {
                        values[row * inp + col] = m.get(r0 * 16 + t, k);
                    }
                }
            }
            tensor::recycle(Weight::Matrix(m).into_values());
        }
        Grid::new(out, inp, Order::RowMajor, values)
    }

    /// The blocks' supports as one byte per element of the (out, in, k...) tensor: at every
    /// tap of each connected pair when `all_taps`, at the centre tap otherwise.
    fn support(&self, kernel: &[usize], all_taps: bool) -> Vec<u8> {
        let (inp, taps) = (self.structure.inp, self.structure.taps);
        let tap = centre_tap(kernel);
        let mut bytes = vec![0u8; self.structure.row_block.len() * inp * taps];
        for (block, schedule) in self.structure.blocks.iter().zip(&self.schedules) {
            let support = schedule.mask();
            for (r, &row) in block.rows.iter().enumerate() {
                for (k, &col) in block.cols.iter().enumerate() {
                    if support.get(r, k) {
                        let at = (row * inp + col) * taps;
                        if all_taps {
                            bytes[at..at + taps].fill(1);
                        } else {
                            bytes[at + tap] = 1;
                        }
                    }
                }
            }
        }
        bytes
    }
}

/// A kernel's mask ones: [`super::eoi::centre::mask_ones`], at most the positions the
/// classes allow.
fn kernel_ones(layer: &LayerPlan, nm: Nm, centre_nnz: u64) -> u64 {
    let numel = layer.shape.numel();
    super::eoi::centre::mask_ones(layer.density, numel, centre_nnz)
        .min(allowed_count(numel, nm).max(centre_nnz))
}

/// Tops `mask` (the centre's support at the centre tap, `have` ones) up to `want` ones inside
/// the classes, from the tensor's stream after the classes: positions `u` uniform in
/// `0..A`, A = [`allowed_count`], the u-th allowed position in row-major order (row
/// `u / (in K / C)`, then its allowed inputs in increasing order, then taps), set when it is
/// 0 and drawn again when it is 1. When every allowed position must be 1, nothing is drawn.
fn top_up(mask: &mut [u8], structure: &Structure, want: u64, mut have: u64, stream: &mut Stream) {
    let (inp, taps) = (structure.inp, structure.taps);
    // Every row may use in/C inputs at every tap.
    let per_row = (structure.allowed(0).len() * taps) as u64;
    let total = structure.row_block.len() as u64 * per_row;
    if want >= total {
        mask.copy_from_slice(&structure.allowed_mask());
        return;
    }
    while have < want {
        let u = stream.below(total);
        let (row, within) = ((u / per_row) as usize, (u % per_row) as usize);
        let input = structure.allowed(row)[within / taps];
        let p = (row * inp + input) * taps + within % taps;
        if mask[p] == 0 {
            mask[p] = 1;
            have += 1;
        }
    }
}

/// What an N:M layer's values are made from.
enum Recipe {
    /// EOI's blocks.
    Eoi(Blocks),
    /// Kaiming's normals from where the mask left the stream, times `std`.
    Normals { stream: Stream, std: f64 },
    /// The `orthogonal` baseline's matrix from where the mask left the stream.
    Orthogonal { stream: Stream, seed: u64 },
}

impl Values for Recipe {
    fn weight(&self, layer: &LayerPlan, mask: &Mask) -> Weight {
        match self {
            Recipe::Eoi(blocks) => {
                let matrix = blocks.matrix(layer.gain.value);
                super::at_centre(layer, matrix)
            }
            Recipe::Normals { stream, std } => {
                Weight::Matrix(kaiming::weight(mask, *std, &mut stream.clone()))
            }
            Recipe::Orthogonal { stream, seed } => {
                orthogonal::masked_orthogonal(layer, mask, &mut stream.clone(), *seed)
            }
        }
    }
}

/// A random N:M mask, the baselines': the first draws of the layer's stream.
///
/// Without `transposable`, for each row, each group of M consecutive inputs and each tap in
/// that order, N of the M positions chosen uniformly by Floyd's algorithm (as [`mask::choose`]
/// over M, N draws); transposable, the classes of [`Structure::draw`], every position they
/// allow. Then, below N/M, [`mask::ones`] of them are kept by [`mask::choose`] over the
/// allowed positions in row-major order (a subset chosen uniformly).
fn random_mask(layer: &LayerPlan, nm: Nm, stream: &mut Stream) -> Mask {
    let shape = &layer.shape;
    let (out, inp, taps) = (shape.out(), shape.inp(), shape.taps());
    let (n, m) = (nm.pattern.n, nm.pattern.m);
    let mut bytes = if nm.transposable {
        Structure::draw(layer, nm, stream).allowed_mask()
    } else {
        let mut bytes = vec![0u8; out * inp * taps];
        let mut chosen = vec![false; m];
        for row in 0..out {
            for group in 0..inp / m {
                for tap in 0..taps {
                    chosen.fill(false);
                    for j in m - n..m {
                        let t = stream.below(j as u64 + 1) as usize;
                        let pick = if chosen[t] { j } else { t };
                        chosen[pick] = true;
                    }
                    for (j, _) in chosen.iter().enumerate().filter(|(_, c)| **c) {
                        bytes[(row * inp + group * m + j) * taps + tap] = 1;
                    }
                }
            }
        }
        bytes
    };
    let numel = shape.numel();
    let allowed = allowed_count(numel, nm);
    let want = mask::ones(layer.density, numel).min(allowed);
    if want < allowed {
        let keep = mask::choose(allowed as usize, want as usize, stream);
        for (b, &kept) in bytes.iter_mut().filter(|b| **b == 1).zip(&keep) {
            *b = kept;
        }
    }
    Mask::Bytes(Grid::new(out, inp * taps, Order::RowMajor, bytes))
}

/// The rules of N:M layers: the pattern's, around the layer's scheme (see [`rules`]).
pub struct NmRules {
    scheme: Scheme,
}

/// The rules of an N:M layer of `scheme`. A layer without a pattern given to them is made
/// as its scheme makes it.
pub fn rules(scheme: Scheme) -> &'static dyn Rules {
    match scheme {
        Scheme::Eoi => &NmRules {
            scheme: Scheme::Eoi,
        },
        Scheme::Kaiming => &NmRules {
            scheme: Scheme::Kaiming,
        },
        Scheme::ScaledKaiming => &NmRules {
            scheme: Scheme::ScaledKaiming,
        },
        Scheme::Orthogonal => &NmRules {
            scheme: Scheme::Orthogonal,
        },
        Scheme::Sao => &NmRules {
            scheme: Scheme::Sao,
        },
        Scheme::ApproxIsometry => &NmRules {
            scheme: Scheme::ApproxIsometry,
        },
        Scheme::ConvOrthogonal => &NmRules {
            scheme: Scheme::ConvOrthogonal,
        },
    }
}

impl NmRules {
    fn inner(&self) -> &'static dyn Rules {
        self.scheme.rules()
    }

    /// Whether the scheme takes a pattern: EOI and the random-mask baselines.
    fn takes_patterns(&self) -> bool {
        matches!(
            self.scheme,
            Scheme::Eoi | Scheme::Kaiming | Scheme::ScaledKaiming | Scheme::Orthogonal
        )
    }

    /// The layer's pattern, when it has one and the scheme takes it.
    fn nm(&self, layer: &LayerPlan) -> Option<Nm> {
        layer.nm.filter(|_| self.takes_patterns())
    }
}

impl Rules for NmRules {
    fn maker(&self) -> &'static str {
        match self.scheme {
            Scheme::Eoi => "N:M EOI",
            Scheme::Kaiming => "scheme \"kaiming\" over an N:M mask",
            Scheme::ScaledKaiming => "scheme \"scaled-kaiming\" over an N:M mask",
            Scheme::Orthogonal => "scheme \"orthogonal\" over an N:M mask",
            _ => self.inner().maker(),
        }
    }

    /// EOI: the identity of the block whose identity is densest, `1 / max(rows, cols)` of a
    /// block that holds N/M of the weights; for a kernel, the density whose centre reaches
    /// that under its rule. A random mask: one weight.
    fn minimum(&self, layer: &LayerPlan) -> Minimum {
        let Some(nm) = self.nm(layer) else {
            return self.inner().minimum(layer);
        };
        if self.scheme != Scheme::Eoi {
            return mask::minimum(layer);
        }
        let classes = nm.pattern.classes();
        let rows = (layer.shape.out() / layer.groups.max(1) / classes).max(1);
        let cols = (layer.shape.inp() / classes).max(1);
        let side = rows.max(cols);
        let centre = 1.0 / (classes * side) as f64;
        let taps = layer.shape.taps() as f64;
        let density = match (layer.kind(), layer.conv_center) {
            (Kind::Linear, _) | (Kind::Conv, crate::layer::CentreRule::Same) => centre,
            (Kind::Conv, crate::layer::CentreRule::Sqrt) => (centre / taps).max(centre * centre),
        };
        let blocks = classes * layer.groups.max(1);
        Minimum {
            density,
            reason: format!(
                "the identity of each of its {blocks} blocks for nm = \"{}\" (the smallest {rows}x{cols}): 1/{side} of a block, which holds {} of the {}",
                nm.pattern,
                nm.pattern.density(),
                if layer.kind() == Kind::Conv {
                    "centre matrix"
                } else {
                    "weights"
                }
            ),
            help: None,
        }
    }

    /// The scheme takes patterns, the shape fits the pattern, and the density is at most N/M.
    fn check(&self, layer: &LayerPlan) -> Result<(), Refusal> {
        let Some(nm) = layer.nm else {
            return self.inner().check(layer);
        };
        if !self.takes_patterns() {
            let why = match self.scheme {
                Scheme::Sao => "its regular bipartite structure is its own",
                Scheme::ApproxIsometry => "its descent runs over an unstructured random mask",
                _ => "its kernel is dense on every tap",
            };
            return Err(Refusal {
                field: Some("nm"),
                density: false,
                message: format!(
                    "scheme \"{}\" cannot make an N:M layer (nm = \"{}\"): {why}",
                    self.scheme, nm.pattern
                ),
                help: "use scheme \"eoi\" (exactly orthogonal) or a random-mask baseline (\"kaiming\", \"scaled-kaiming\", \"orthogonal\") for this layer, or give it nm = \"none\"".into(),
            });
        }
        if let Err(unfit) = fit(&layer.shape, layer.groups, nm) {
            return Err(Refusal {
                field: Some("nm"),
                density: false,
                message: unfit.message,
                help: format!(
                    "use {}, or give the layer nm = \"none\"",
                    unfit.fixes.join(", or ")
                ),
            });
        }
        if layer.density > nm.pattern.density() * (1.0 + 1e-12) {
            return Err(Refusal {
                field: None,
                density: true,
                message: format!(
                    "above {}, the most an N:M layer with nm = \"{}\" holds (N of every M weights)",
                    nm.pattern.density(),
                    nm.pattern
                ),
                help: format!(
                    "lower the layer's density to {} or below, or give it nm = \"none\"",
                    nm.pattern.density()
                ),
            });
        }
        self.inner().check(layer)
    }

    fn structured_masks(&self) -> bool {
        self.inner().structured_masks()
    }

    /// EOI as without a pattern (`round(d * numel)` for a matrix, `ceil` for a topped-up
    /// kernel), the baselines `round(d * numel)`, all at most the `numel * N / M` positions
    /// the pattern allows.
    fn expected_nnz(&self, layer: &LayerPlan) -> u64 {
        let unstructured = self.inner().expected_nnz(layer);
        match self.nm(layer) {
            Some(nm) => unstructured.min(allowed_count(layer.shape.numel(), nm)),
            None => unstructured,
        }
    }

    fn plan_note(&self, layer: &LayerPlan) -> Option<String> {
        if self.nm(layer).is_none() {
            return self.inner().plan_note(layer);
        }
        Some(match self.scheme {
            Scheme::Eoi => "nm: every group of M inputs (transposable: of M outputs too) is split at random into M/N classes of N, and EOI makes one exactly orthogonal block per class, so each row keeps at most N nonzeros in every group of M (docs/spec.md, \"N:M sparsity\")".into(),
            scheme => format!(
                "nm: scheme \"{scheme}\" keeps its values over a random N:M mask, N of every M inputs drawn uniformly for each row and tap (docs/spec.md, \"N:M sparsity\")"
            ),
        })
    }

    /// From the blocks' supports (EOI) or the plan alone (a random mask).
    fn stats(&self, layer: &LayerPlan, seed: u64) -> LayerStats {
        let Some(nm) = self.nm(layer) else {
            return self.inner().stats(layer, seed);
        };
        if self.scheme != Scheme::Eoi {
            return LayerStats {
                nnz: self.expected_nnz(layer),
                ..mask::stats(layer)
            };
        }
        let mut stream = Stream::derive(seed, &layer.name);
        let blocks = Blocks::draw(layer, nm, seed, &mut stream);
        eoi_stats(layer, nm, &blocks)
    }

    /// EOI: the classes and the blocks' rotations, then, for a kernel, the top-up (or the
    /// structured slices); the baselines: the random N:M mask, then their values.
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a> {
        let Some(nm) = self.nm(layer) else {
            return self.inner().prepare(layer, seed);
        };
        let mut stream = Stream::derive(seed, &layer.name);
        match self.scheme {
            Scheme::Eoi => {
                let blocks = Blocks::draw(layer, nm, seed, &mut stream);
                let stats = eoi_stats(layer, nm, &blocks);
                let kernel = layer.shape.kernel();
                let structured = layer.conv_mask == ConvMask::Structured;
                let mut bytes = blocks.support(kernel, structured);
                if layer.kind() == Kind::Conv && !structured {
                    let want = kernel_ones(layer, nm, blocks.nnz());
                    top_up(
                        &mut bytes,
                        &blocks.structure,
                        want,
                        blocks.nnz(),
                        &mut stream,
                    );
                }
                let (out, row_len) = (layer.shape.out(), layer.shape.fan_in());
                let mask = Mask::Bytes(Grid::new(out, row_len, Order::RowMajor, bytes));
                Prepared::new(layer, mask, stats, Recipe::Eoi(blocks))
            }
            scheme => {
                let drawn = random_mask(layer, nm, &mut stream);
                let stats = self.stats(layer, seed);
                let values = if scheme == Scheme::Orthogonal {
                    Recipe::Orthogonal { stream, seed }
                } else {
                    let scaled = scheme == Scheme::ScaledKaiming;
                    let std = kaiming::std(&layer.shape, layer.density, layer.gain.value, scaled);
                    Recipe::Normals { stream, std }
                };
                Prepared::new(layer, drawn, stats, values)
            }
        }
    }

    /// EOI: the whole (out, in) f64 matrix, the largest block's, the byte mask and the
    /// supports; the baselines: their own, and the mask's subset bytes.
    fn memory(&self, layer: &LayerPlan, layout: Layout, threads: usize) -> u64 {
        let Some(nm) = self.nm(layer) else {
            return self.inner().memory(layer, layout, threads);
        };
        let numel = layer.shape.numel();
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        let classes = nm.pattern.classes() as u64;
        match self.scheme {
            Scheme::Eoi => out * inp * 8 + out * inp * 8 / classes + out * inp / 4 + 2 * numel,
            _ => self.inner().memory(layer, layout, threads) + numel,
        }
    }

    /// EOI: the byte mask and the blocks' supports.
    fn prepared_memory(&self, layer: &LayerPlan) -> u64 {
        if self.nm(layer).is_none() {
            return self.inner().prepared_memory(layer);
        }
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        layer.shape.numel() + out * inp / 8
    }

    /// The scheme's own fields; an EOI kernel's centre density is capped at N/M.
    fn record(&self, layer: &LayerPlan) -> SchemeFields {
        let fields = self.inner().record(layer);
        match self.nm(layer) {
            Some(nm) if fields.centre_density.is_some() => SchemeFields {
                centre_density: Some(centre_density(layer, nm)),
                ..fields
            },
            _ => fields,
        }
    }

    fn promises_orthogonality(&self, density: f64) -> bool {
        self.inner().promises_orthogonality(density)
    }

    fn kernel_gram(&self) -> KernelGram {
        self.inner().kernel_gram()
    }

    /// The pattern in every group of every row (and every column, transposable), then the
    /// count as the scheme makes it, at most the positions the pattern allows.
    fn check_mask(&self, stored: &StoredMask<'_>) -> Vec<String> {
        let Some(nm) = stored.nm.filter(|_| self.takes_patterns()) else {
            let mut failures = self.inner().check_mask(stored);
            if let Some(nm) = stored.nm {
                failures.extend(pattern_failures(stored, nm));
            }
            return failures;
        };
        let mut failures = pattern_failures(stored, nm);
        let numel = stored.bits.len() as u64;
        let allowed = allowed_count(numel, nm);
        let (density, nnz) = (stored.density, stored.nnz);
        match (self.scheme, stored.shape.len(), stored.centre_nnz) {
            (Scheme::Eoi, 2, _) => failures.extend(self.inner().check_mask(stored)),
            (Scheme::Eoi, _, Some(_)) if stored.conv_mask == ConvMask::Structured => {
                failures.extend(self.inner().check_mask(stored))
            }
            (Scheme::Eoi, _, Some(centre)) => {
                let want =
                    super::eoi::centre::mask_ones(density, numel, centre).min(allowed.max(centre));
                if want != nnz {
                    failures.push(format!(
                        "an N:M kernel ({}) at density {density} with {centre} centre nonzeros has {want} mask ones, this one {nnz}",
                        nm.pattern
                    ));
                }
                let at_centre = ones_at_centre(stored.bits, &stored.shape[2..]);
                if at_centre < centre {
                    failures.push(format!(
                        "the mask holds {at_centre} ones at the centre tap, fewer than the record's centre_nnz = {centre}"
                    ));
                }
            }
            (Scheme::Eoi, _, None) => {
                failures.push("the record of a convolution has no centre_nnz".into())
            }
            _ => {
                let want = mask::ones(density, numel).min(allowed);
                if want != nnz {
                    failures.push(format!(
                        "a {} mask with nm = \"{}\" at density {density} over {numel} weights has min(round(d * numel), numel * N / M) = {want} ones, this one {nnz}",
                        stored.scheme, nm.pattern
                    ));
                }
            }
        }
        failures
    }
}

/// The statistics of an EOI N:M layer, from its blocks' supports.
fn eoi_stats(layer: &LayerPlan, nm: Nm, blocks: &Blocks) -> LayerStats {
    let centre = blocks.nnz();
    let (nnz, centre_nnz) = match (layer.kind(), layer.conv_mask) {
        (Kind::Linear, _) => (centre, None),
        (Kind::Conv, ConvMask::Structured) => (centre * layer.shape.taps() as u64, Some(centre)),
        (Kind::Conv, ConvMask::TopUp) => (kernel_ones(layer, nm, centre), Some(centre)),
    };
    LayerStats {
        numel: layer.shape.numel(),
        nnz,
        rotations: Some(blocks.rotations()),
        centre_nnz,
        isometry_error: None,
    }
}

/// Which way groups of M run: along the inputs (each row's, at each tap) or along the
/// outputs (each input's and tap's column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Along {
    Inputs,
    Outputs,
}

/// Calls `visit(line, group, tap, count)` with the nonzeros `count` of every group of `m`
/// consecutive weights of a tensor of PyTorch shape `shape` (out, in, k...), `nonzero(k)`
/// telling whether element k (row-major) is: along the inputs, `line` is a row and the group
/// covers inputs `group * m ..`; along the outputs, `line` is an input and the group covers
/// rows `group * m ..`. The dimension must be a multiple of `m`. Stops early when `visit`
/// returns false.
fn groups(
    shape: &[usize],
    m: usize,
    along: Along,
    nonzero: &impl Fn(usize) -> bool,
    mut visit: impl FnMut(usize, usize, usize, usize) -> bool,
) {
    let (out, inp) = (shape[0], shape[1]);
    let taps: usize = shape[2..].iter().product();
    match along {
        Along::Inputs => {
            for row in 0..out {
                for group in 0..inp / m {
                    for tap in 0..taps {
                        let first = (row * inp + group * m) * taps + tap;
                        let count = (0..m).filter(|j| nonzero(first + j * taps)).count();
                        if !visit(row, group, tap, count) {
                            return;
                        }
                    }
                }
            }
        }
        Along::Outputs => {
            let row_len = inp * taps;
            let mut counts = vec![0usize; row_len];
            for group in 0..out / m {
                counts.fill(0);
                for row in group * m..(group + 1) * m {
                    for (k, count) in counts.iter_mut().enumerate() {
                        *count += usize::from(nonzero(row * row_len + k));
                    }
                }
                for (k, &count) in counts.iter().enumerate() {
                    if !visit(k / taps, group, k % taps, count) {
                        return;
                    }
                }
            }
        }
    }
}

/// What is wrong with a stored mask's pattern: a dimension that is not a multiple of M, or
/// groups with more than N ones (how many, and the first).
fn pattern_failures(stored: &StoredMask<'_>, nm: Nm) -> Vec<String> {
    let shape = stored.shape;
    let (n, m) = (nm.pattern.n, nm.pattern.m);
    let mut failures = Vec::new();
    if shape.len() < 2 {
        return failures;
    }
    let nonzero = |k: usize| stored.bits[k] != 0;
    let mut directions = vec![(Along::Inputs, shape[1], "inputs", "row")];
    if nm.transposable {
        directions.push((Along::Outputs, shape[0], "outputs", "input"));
    }
    for (along, len, what, line_name) in directions {
        if len % m != 0 {
            failures.push(format!(
                "the record says nm = \"{}\", but the mask has {len} {what}, not a multiple of {m}",
                nm.pattern
            ));
            continue;
        }
        let (mut broken, mut first) = (0u64, None);
        groups(shape, m, along, &nonzero, |line, group, tap, count| {
            if count > n {
                broken += 1;
                first.get_or_insert((line, group, tap, count));
            }
            true
        });
        if let Some((line, group, tap, count)) = first {
            let taps = if shape.len() > 2 {
                format!(", tap {tap}")
            } else {
                String::new()
            };
            failures.push(format!(
                "{broken} groups of {m} {what} hold more than N = {n} ones (nm = \"{}\"), first {line_name} {line}, {what} {}..{}{taps} with {count}",
                nm.pattern,
                group * m,
                (group + 1) * m
            ));
        }
    }
    failures
}

/// The common N:M patterns ([`Pattern::COMMON`]) that a tensor of PyTorch shape `shape`
/// (rank 2 or more) holds along its inputs, and those it holds along its inputs and its
/// outputs both (transposably); `nonzero(k)` tells whether element k (row-major) is nonzero.
/// A dimension that is not a multiple of M holds no pattern of that M. The count stops at
/// the first group above the largest common N of its M, so a dense tensor costs a few groups.
pub fn patterns_held(
    shape: &[usize],
    nonzero: impl Fn(usize) -> bool,
) -> (Vec<Pattern>, Vec<Pattern>) {
    if shape.len() < 2 || shape.contains(&0) {
        return (Vec::new(), Vec::new());
    }
    // The most nonzeros in a group of M, or None when the dimension is not a multiple of M
    // or a group holds more than `cap`.
    let most = |along: Along, len: usize, m: usize, cap: usize| -> Option<usize> {
        if len % m != 0 {
            return None;
        }
        let mut most = 0;
        groups(shape, m, along, &nonzero, |_, _, _, count| {
            most = most.max(count);
            most <= cap
        });
        (most <= cap).then_some(most)
    };
    let (mut held, mut both) = (Vec::new(), Vec::new());
    for m in [2, 4, 8] {
        let cap = Pattern::COMMON
            .iter()
            .filter(|p| p.m == m)
            .map(|p| p.n)
            .max()
            .unwrap_or(0);
        let inputs = most(Along::Inputs, shape[1], m, cap);
        let outputs = if inputs.is_some() {
            most(Along::Outputs, shape[0], m, cap)
        } else {
            None
        };
        for p in Pattern::COMMON.iter().filter(|p| p.m == m) {
            if inputs.is_some_and(|c| c <= p.n) {
                held.push(*p);
                if outputs.is_some_and(|c| c <= p.n) {
                    both.push(*p);
                }
            }
        }
    }
    let order = |p: &Pattern| Pattern::COMMON.iter().position(|q| q == p);
    held.sort_by_key(order);
    both.sort_by_key(order);
    (held, both)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::CentreRule;
    use crate::tensor::RowBlocks;

    fn nm(text: &str, transposable: bool) -> Nm {
        Nm {
            pattern: Pattern::parse(text).unwrap(),
            transposable,
        }
    }

    fn layer(dims: &[i64], density: f64, nm: Nm, scheme: Scheme, groups: usize) -> LayerPlan {
        LayerPlan {
            nm: Some(nm),
            scheme,
            groups,
            conv_center: CentreRule::Same,
            ..LayerPlan::new("w", Shape::new(dims).unwrap(), density)
        }
    }

    fn bytes<T: RowBlocks>(t: &T) -> Vec<T::Elem> {
        let mut out = Vec::new();
        t.rows_into(0, t.rows(), &mut out);
        out
    }

    #[test]
    fn patterns_parse_and_refuse_what_cannot_split() {
        assert_eq!(Pattern::parse("2:4").unwrap().to_string(), "2:4");
        assert_eq!(Pattern::parse("4:8").unwrap().classes(), 2);
        for (text, excerpt) in [
            ("2-4", "written \"N:M\""),
            ("4:4", "0 < N < M"),
            ("0:4", "0 < N < M"),
            ("3:8", "the nearest patterns are \"2:8\" or \"4:8\""),
            ("a:b", "written"),
            // A prime M near u64::MAX: refused at once, not after searching every divisor.
            (
                "3:18446744073709551557",
                "the nearest patterns are \"1:18446744073709551557\"",
            ),
            ("18446744073709551556:18446744073709551557", "nearest"),
        ] {
            let e = Pattern::parse(text).unwrap_err();
            assert!(e.contains(excerpt), "{text}: {e}");
        }
    }

    #[test]
    fn classes_split_every_group_into_classes_of_n() {
        let mut s = Stream::derive(1, "classes");
        let p = Pattern::parse("2:8").unwrap();
        let classes = shuffled_classes(64, p, &mut s);
        for group in classes.chunks(8) {
            for c in 0..4 {
                assert_eq!(group.iter().filter(|&&k| k == c).count(), 2);
            }
        }
        assert_eq!(balanced_classes(7, 2), [0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn shapes_that_cannot_take_a_pattern_are_refused_with_fixes() {
        let shape = |d: &[i64]| Shape::new(d).unwrap();
        let e = fit(&shape(&[8, 10]), 1, nm("2:4", false)).unwrap_err();
        assert!(
            e.message.contains("has 10 inputs, not a multiple of 4"),
            "{e:?}"
        );
        assert_eq!(e.fixes[0], "12 inputs (a multiple of 4)");
        assert_eq!(e.fixes[1], "nm = \"1:2\"");
        let e = fit(&shape(&[6, 8]), 1, nm("2:4", true)).unwrap_err();
        assert!(
            e.message.contains("has 6 outputs, not a multiple of 4"),
            "{e:?}"
        );
        let e = fit(&shape(&[1, 8]), 1, nm("1:4", false)).unwrap_err();
        assert!(e.message.contains("over its 4 classes"), "{e:?}");
        assert!(fit(&shape(&[3, 8]), 1, nm("2:4", false)).is_ok());
        assert!(fit(&shape(&[16, 8, 3, 3]), 2, nm("2:4", true)).is_ok());
        assert!(fit(&shape(&[12, 8, 3, 3]), 3, nm("2:4", true)).is_ok());
        let e = fit(&shape(&[12, 8, 3, 3]), 2, nm("2:4", true)).unwrap_err();
        assert!(
            e.message.contains("6 output channels per group (2 groups)"),
            "{e:?}"
        );
    }

    /// Every row's ones in each group of M inputs (and each column's, transposable) at most N.
    fn holds(mask: &[u8], shape: &[usize], nm: Nm) -> bool {
        let stored = StoredMask {
            scheme: Scheme::Eoi,
            density: 0.5,
            shape,
            bits: mask,
            nnz: 0,
            centre_nnz: None,
            conv_mask: ConvMask::TopUp,
            nm: Some(nm),
        };
        pattern_failures(&stored, nm).is_empty()
    }

    #[test]
    fn eoi_blocks_keep_the_pattern_and_their_statistics() {
        for (dims, d, pattern, transposable, groups) in [
            (vec![16i64, 32], 0.5, "2:4", false, 1),
            (vec![32, 16], 0.25, "1:4", true, 1),
            (vec![24, 24, 3, 3], 0.3, "4:8", false, 3),
            (vec![16, 8, 3], 0.5, "1:2", true, 2),
        ] {
            let nm = nm(pattern, transposable);
            let l = layer(&dims, d, nm, Scheme::Eoi, groups);
            let rules = rules(Scheme::Eoi);
            let prepared = rules.prepare(&l, 5);
            let mask = bytes(&prepared.mask);
            assert!(holds(&mask, l.shape.dims(), nm), "{dims:?}");
            let ones = mask.iter().filter(|&&b| b == 1).count() as u64;
            assert_eq!(ones, prepared.stats.nnz, "{dims:?}");
            assert_eq!(rules.stats(&l, 5), prepared.stats, "{dims:?}");
            let weight = bytes(&prepared.weight());
            for (w, m) in weight.iter().zip(&mask) {
                assert!(*w == 0.0 || *m == 1, "{dims:?}: a weight outside the mask");
            }
        }
    }

    #[test]
    fn the_patterns_held_are_found_along_both_dimensions() {
        // Rows 0 and 1 keep inputs {0, 1} of every 4, rows 2 and 3 inputs {2, 3}: 2:4 along
        // the inputs and the outputs, and 4:8; not 1:2 (inputs 0 and 1 are one pair), not 1:4
        // and not 2:8 (four ones in every group of 8); along the 4 outputs only M = 2 and 4 fit.
        let mut mask = [0u8; 4 * 8];
        for row in 0..4 {
            for group in 0..2 {
                for j in 0..2 {
                    mask[row * 8 + group * 4 + (row / 2) * 2 + j] = 1;
                }
            }
        }
        let (held, both) = patterns_held(&[4, 8], |k| mask[k] != 0);
        let names = |ps: &[Pattern]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&held), ["2:4", "4:8"]);
        assert_eq!(names(&both), ["2:4"]);
        let (held, _) = patterns_held(&[3, 6], |_| true);
        assert!(held.is_empty());
    }
}

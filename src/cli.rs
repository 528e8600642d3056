//! The command line: clap definitions, turned into validated library values in
//! `commands`. Help text is part of the interface: it is written for a researcher at a
//! terminal, with an example in every command.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

use eoi::generate::Part;
use eoi::isometry::{Nonlinearity, OrderBy};
use eoi::json::Document;
use eoi::layer::{Distribution, Dtype, Format, Layout, Names};
use eoi::schemes::Scheme;

const EXAMPLES: &str = "\
Examples:
  eoi plan specs/mlp-mnist.toml                  show every layer's density, nothing written
  eoi generate specs/mlp-mnist.toml -o init.safetensors
  eoi generate specs/resnet32-cifar10.toml -o init --format npy --seed 3
  eoi verify init.safetensors --regenerate       prove a file is what it claims
  eoi inspect checkpoint.safetensors             density, orthogonality, singular values
  eoi isometry mlp1000.safetensors               singular values of the chain's Jacobian";

/// Sparse, exactly orthogonal neural-network initializations (EOI, Nowak et al., ICML 2024).
///
/// Reads an architecture spec (TOML: layer names and shapes, a density scheme) and writes
/// seeded, bit-reproducible weights and masks as safetensors or npy files for PyTorch,
/// JAX/Flax and NumPy. The same spec, seed and version give the same bytes anywhere.
#[derive(Debug, Parser)]
#[command(name = "eoi", version = concat!(env!("CARGO_PKG_VERSION"), " (random streams v1)"), after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show each layer's shape, density and expected nonzeros, without generating anything.
    #[command(
        after_help = "Examples:\n  eoi plan specs/vgg16-cifar10.toml\n  eoi plan specs/vgg16-cifar10.toml --json | jq '.layers[] | {name, density}'"
    )]
    Plan(PlanArgs),
    /// Generate EOI weights and masks from a spec.
    #[command(
        after_help = "Examples:\n  eoi generate specs/mlp-1000-tanh.toml -o mlp1000.safetensors\n  eoi generate resnet18.toml --base resnet18.safetensors -o resnet18-eoi.safetensors\n  eoi generate spec.toml -o init --format npy --seed 7 --force\n  eoi generate specs/mlp-1000-tanh.toml -o kaiming.safetensors --scheme kaiming\n  eoi generate spec.toml -o init.safetensors --json > summary.json\n  eoi generate spec.toml -o - | ssh gpu-node 'cat > init.safetensors'"
    )]
    Generate(GenerateArgs),
    /// Write a spec for a model you already have, from its checkpoint or a list of shapes.
    ///
    /// Reads the tensor names and shapes of a safetensors file, a sharded checkpoint
    /// (model.safetensors.index.json, or its directory) or a JSON shape list, never tensor
    /// data, and writes a complete, commented spec: the weights of linear and convolution
    /// modules become [[layer]]s with their exact names and shapes, by the "kind" a shape list
    /// gives each tensor or else by name rules (docs/guide.md, "Start from your model"); every other
    /// tensor (embeddings, norms, biases, tokens, scales) is left to the base and listed in a
    /// comment with the reason. Runs of layers that differ only in one index 0..n-1 (same
    /// shape) are folded into `repeat` with "{i}". A JSON shape list is {"name": [shape...],
    /// ...} or [{"name": ..., "shape": [...], "kind": "linear"}, ...];
    /// examples/shapes_from_torch.py and examples/shapes_from_flax.py print one for a model.
    #[command(
        override_usage = "eoi spec --from <SOURCE> [OPTIONS]",
        after_help = "Examples:\n  eoi spec --from model.safetensors --density 0.1 --distribution erk -o spec.toml\n  eoi spec --from checkpoint/ --dense lm_head.weight --below-minimum clamp\n  eoi spec --from gpt2/ --include transformer.wte.weight\n  python examples/shapes_from_torch.py | eoi spec --from - --density 0.1 > resnet18.toml\n  eoi spec --from flax_shapes.json --layout flax --gain relu"
    )]
    Spec(SpecFromArgs),
    /// Check that an artifact eoi wrote is what it claims: masks, orthogonality, densities.
    ///
    /// For every layer recorded in the file's metadata: the weight and its mask exist with the
    /// same shape; no nonzero weight lies outside the mask; the weight is orthogonal times its
    /// gain to the rounding of its dtype (W W^T or W^T W, the smaller; for a convolution the
    /// centre tap, and every other tap is zero); the mask's nonzeros and density agree with
    /// the record. The file is read a tensor at a time and never trusted: a malformed or
    /// forged file is refused with the reason. A sharded output is read whole (or one shard,
    /// on its own), a flax-layout file as the layers act, torch-prune names as recorded; the
    /// tensors a `generate --base` output copied from its base are listed, and compared with
    /// the base by --regenerate --base.
    #[command(
        after_help = "Exit status:\n  0  every check holds\n  1  a check fails; each failure names the layer and the check\n  2  the input cannot be read (missing, truncated, malformed)\n\nExamples:\n  eoi verify mlp1000.safetensors\n  eoi verify init --regenerate                  an npy directory, regenerated bit for bit\n  eoi verify gpt                                a sharded output: its directory\n  eoi verify r18-eoi.safetensors --regenerate --base r18.safetensors\n  eoi verify vgg.safetensors --json | jq '.layers[] | select(.passed | not)'"
    )]
    Verify(VerifyArgs),
    /// Show every tensor of any checkpoint: density, orthogonality, singular values.
    ///
    /// For each tensor of a safetensors file, sharded checkpoint, npy directory, .npz archive
    /// or .npy file: dtype, shape, density, nonzeros, and for matrices the orthogonality
    /// error, the smallest and largest singular value and the nonzeros per row and column.
    /// Works on any checkpoint, not only eoi's: tensors of rank 2 or more are read as the
    /// matrix (out, in * K) the layer applies, from PyTorch layout, or from Flax layout ((in,
    /// out), (k..., in, out)) when eoi's record or the safetensors format says flax. The
    /// orthogonality error is
    /// max |G - g^2 I| / g^2, with G = W W^T or W^T W (the smaller) and g^2 the mean of its
    /// diagonal, so a scaled orthogonal matrix has error 0 whatever its gain g. The smallest
    /// and largest singular values are the square roots of the extreme eigenvalues of G
    /// (accurate to about 1e-15 of the largest for a well-conditioned matrix; see
    /// docs/guide.md, Performance), or an exact SVD's with --svd. Masks (X_mask beside X)
    /// are listed as such; tensors without a mask are dense. A tensor whose nonzeros hold
    /// common N:M patterns (1:2, 2:4, 1:4, 2:8, 4:8: at most N in every M consecutive inputs)
    /// says which after its row, and whether they hold along the outputs too (transposable).
    #[command(
        after_help = "Examples:\n  eoi inspect mlp1000.safetensors\n  eoi inspect resnet32                          an npy directory\n  eoi inspect gpt --layers '*.mlp.*'            the MLP weights of a sharded output\n  eoi inspect model.safetensors --json | jq '.tensors[] | {name, singular_min, singular_max}'"
    )]
    Inspect(InspectArgs),
    /// Measure dynamical isometry: the input-output Jacobian of a chain of layers.
    ///
    /// Reads the rank-2 weights of FILE as a feed-forward chain h <- phi(W h + b), in the order
    /// eoi's provenance records them, else in natural name order (hidden.10 after hidden.9);
    /// b is the <module>.bias tensor of a <module>.weight where the file has one, else 0.
    /// A seeded random input of unit RMS is propagated through the chain while the Jacobian
    /// J = D_L W_L ... D_1 W_1 (D_k the slopes of phi at layer k) is accumulated in f64.
    /// Prints J's singular values (mean of squares, std, max, min) and the signal RMS along
    /// the depth. Singular values near 1 at every depth are dynamical isometry: signals and
    /// gradients neither vanish nor explode, which is what lets a 1000-layer EOI network
    /// train. Weights are multiplied by their masks (X_mask, or torch-prune X_orig with
    /// X_mask); flax-layout files (eoi's record, or safetensors format flax) are read as (in,
    /// out). With --grid N, a chain of C -> C convolutions on a periodic grid (see --grid).
    #[command(
        after_help = "Examples:\n  eoi isometry mlp1000.safetensors --layers 'hidden.*'     the 998 hidden layers, tanh\n  eoi isometry mlp1000.safetensors --nonlinearity linear   the whole chain, no activation\n  eoi isometry init.safetensors --json | jq .jacobian.singular_mean_sq\n  eoi isometry cnn.safetensors --layers 'hidden.*' --grid 16   a conv chain on a 16x16 torus"
    )]
    Isometry(IsometryArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    #[command(
        after_help = "Examples:\n  eoi completions bash > ~/.local/share/bash-completion/completions/eoi\n  eoi completions zsh > ~/.zfunc/_eoi         # with fpath+=~/.zfunc before compinit\n  eoi completions fish > ~/.config/fish/completions/eoi.fish\n  eoi completions powershell >> $PROFILE"
    )]
    Completions(CompletionsArgs),
    /// Print the manual page of eoi and all its commands (roff).
    #[command(after_help = "Examples:\n  eoi man > eoi.1 && man ./eoi.1")]
    Man,
    /// Print the JSON Schema of the spec format, or of a JSON document eoi writes.
    ///
    /// Without DOCUMENT, or with spec: the spec format, for editors that check and complete
    /// TOML. With record: one layer's record (plan --json and generate --json "layers",
    /// safetensors "eoi.layers", an npy manifest's "layers"); with plan, generate, verify,
    /// inspect or isometry: what that command prints with --json. Each schema (JSON Schema
    /// draft 2020-12) is made from the type that writes the document; the repository keeps
    /// them as specs/eoi.schema.json and schemas/DOCUMENT.schema.json.
    #[command(
        after_help = "Examples:\n  eoi schema > eoi.schema.json     # then start a spec with the line: #:schema ./eoi.schema.json\n  eoi schema plan > plan.schema.json\n  eoi plan spec.toml --json > plan.json && check-jsonschema --schemafile plan.schema.json plan.json"
    )]
    Schema(SchemaArgs),
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The document whose schema to print.
    #[arg(value_enum, value_name = "DOCUMENT", default_value_t = Document::Spec)]
    pub document: Document,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Arguments shared by the commands that read a spec.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The spec file (TOML), or - to read it from standard input.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,

    /// Seed of the random streams; overrides the spec's `seed`.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Output format: safetensors (one file), npy (a directory of .npy files) or npz (one
    /// NumPy archive); overrides the spec's [output] format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Initialization scheme of every layer, over the spec's [init] and per-layer `scheme`:
    /// eoi, or a baseline the paper compares it with (docs/spec.md, "Schemes").
    #[arg(long, value_enum, value_name = "SCHEME")]
    pub scheme: Option<Scheme>,

    /// What to do with a layer whose density is below what its scheme can make; overrides
    /// the spec's [sparsity] below_minimum (docs/spec.md, "Densities").
    #[arg(long, value_name = "RULE", value_parser = clap::builder::PossibleValuesParser::new(eoi::layer::BelowMinimum::NAMES))]
    pub below_minimum: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Print the plan as JSON on standard output (its JSON Schema: eoi schema plan).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A safetensors file, a sharded output (its directory or model.safetensors.index.json,
    /// or one shard), an npy directory or an .npz archive written by eoi.
    #[arg(value_name = "FILE|DIR")]
    pub artifact: PathBuf,

    /// Also generate every layer again from the embedded spec and seed, and compare every
    /// tensor bit for bit.
    #[arg(long)]
    pub regenerate: bool,

    /// With --regenerate, for a `generate --base` output: the base checkpoint it completed
    /// (the one its eoi.base_sha256 records); every copied tensor is compared with the
    /// base's, bit for bit.
    #[arg(long, value_name = "CHECKPOINT", requires = "regenerate")]
    pub base: Option<PathBuf>,

    /// Refuse to start if checking the largest layer needs more than SIZE of memory (its
    /// tensors as read and its Gram matrix; e.g. 8GiB); layers are checked in parallel only
    /// within it. Default: 75% of the memory available when the run starts.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Print the verdicts as JSON on standard output (its JSON Schema: eoi schema verify).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A safetensors file, a sharded checkpoint (its directory or index), an npy directory,
    /// an .npz archive, or one .npy file.
    #[arg(value_name = "FILE|DIR")]
    pub artifact: PathBuf,

    /// Only tensors whose name matches GLOB (* any run of characters, ? one character);
    /// repeat to select more. Default: every tensor.
    #[arg(long, value_name = "GLOB")]
    pub layers: Vec<String>,

    /// The smallest and largest singular values by an exact SVD of each matrix (slow: about
    /// 10 times the default on a 2048 x 2048 matrix) instead of the square roots of the
    /// extreme eigenvalues of its smaller Gram matrix.
    #[arg(long)]
    pub svd: bool,

    /// Print one JSON entry per tensor on standard output (its JSON Schema: eoi schema inspect).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IsometryArgs {
    /// A safetensors file, a sharded checkpoint (its directory or index), an npy directory,
    /// an .npz archive, or one .npy file.
    #[arg(value_name = "FILE")]
    pub artifact: PathBuf,

    /// Only layers whose name matches GLOB (* any run of characters, ? one character);
    /// repeat to select more. Default: every rank-2 weight.
    #[arg(long, value_name = "GLOB")]
    pub layers: Vec<String>,

    /// The activation phi after every layer.
    #[arg(long, value_enum, value_name = "PHI", default_value = "tanh")]
    pub nonlinearity: Nonlinearity,

    /// The order of the chain: records (eoi's provenance records; an error unless they list
    /// every selected layer) or names (natural name order, digit runs as numbers: reads a
    /// transformer's MLP blocks, 'layers.*.mlp.*', as fc1, fc2 of block 0, then block 1, ...).
    /// Default: records when they list every selected layer, else names.
    #[arg(long, value_enum, value_name = "ORDER")]
    pub order: Option<OrderBy>,

    /// Seed of the random input vector.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Read the chain as convolutions C -> C (1-D, 2-D or 3-D; grouped and depthwise too)
    /// on a periodic grid of N positions per dimension: circular padding, stride 1. Linear:
    /// exact, per frequency (N^d products of C x C matrices). Other PHI: exact from the dense
    /// Jacobian when C * N^d <= 1024, else estimated from random probes (with standard errors).
    #[arg(long, value_name = "N")]
    pub grid: Option<usize>,

    /// Estimate from K random probes even where an exact spectrum is affordable: the mean of
    /// squared singular values from forward-mode products (with a standard error); for linear
    /// layers also the largest singular value, by the Lanczos method on J^T J (forward and
    /// reverse products). Default: 64 probes when the Jacobian is too large to build (linear
    /// layers: more than 2^25 values, max(out) x inputs, or twice that in f64 not available).
    #[arg(long, value_name = "K")]
    pub probes: Option<usize>,

    /// Print the measurements as JSON on standard output (its JSON Schema: eoi schema isometry).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SpecFromArgs {
    /// A safetensors file, a sharded checkpoint's model.safetensors.index.json (or the
    /// directory holding it), a JSON shape list, or - for a JSON shape list on standard input.
    #[arg(long, value_name = "SOURCE")]
    pub from: PathBuf,

    /// Where to write the spec (default: standard output). Written to a temporary name
    /// beside it and renamed into place when complete.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Replace FILE if it exists.
    #[arg(long, requires = "output")]
    pub force: bool,

    /// The overall density, 0 < D <= 1 ([sparsity] density).
    #[arg(long, value_name = "D", default_value_t = 0.1)]
    pub density: f64,

    /// How the density is spread over the layers ([sparsity] distribution).
    #[arg(long, value_enum, value_name = "DISTRIBUTION", default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,

    /// The gain: a number, or a nonlinearity (linear, tanh, relu, leaky_relu, selu, ...)
    /// ([init] gain).
    #[arg(long, value_name = "GAIN")]
    pub gain: Option<String>,

    /// Seed of the random streams (default 0).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// The initialization scheme ([init] scheme).
    #[arg(long, value_name = "SCHEME", value_parser = clap::builder::PossibleValuesParser::new(eoi::schemes::Scheme::NAMES))]
    pub scheme: Option<String>,

    /// Make layers of the tensors whose names match GLOB (* any run, ? one character) that
    /// would be left to the base (an embedding, a tensor the name rules miss); they must have
    /// rank 2 to 5. Repeatable, e.g. --include 'transformer.wte.weight'.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Leave the tensors whose names match GLOB to the base; wins over --include.
    /// Repeatable, e.g. --exclude 'lm_head.weight'.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Keep the layers whose names match GLOB dense ([sparsity] dense); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub dense: Vec<String>,

    /// The layout of the source's shapes: torch (out, in, k...) or flax (in, out) and
    /// (k..., in, out). The spec's shapes are PyTorch's; flax adds layout = "flax" to [output],
    /// so generate writes Flax shapes again.
    #[arg(long, value_enum, value_name = "LAYOUT", default_value_t = Layout::Torch)]
    pub layout: Layout,

    /// Write every layer as its own [[layer]] table instead of folding runs into `repeat`.
    #[arg(long)]
    pub no_fold: bool,

    /// What to do with a layer whose density is below what its scheme can make ([sparsity]
    /// below_minimum): error (the default) or clamp.
    #[arg(long, value_name = "RULE", value_parser = clap::builder::PossibleValuesParser::new(eoi::layer::BelowMinimum::NAMES))]
    pub below_minimum: Option<String>,

    /// Set each layer's density to the fraction of nonzeros of its mask in MASKS, a
    /// safetensors file or sharded checkpoint of masks of any dtype, named as the weights or
    /// with the suffix _mask. For masks chosen by a pruning method (SNIP, GraSP, SynFlow):
    /// EOI then builds weights and masks at exactly those densities.
    #[arg(long, value_name = "MASKS")]
    pub densities_from: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Where to write: a .safetensors or .npz file, or a directory for --format npy. Written to a
    /// temporary name beside it and renamed into place when complete. `-` streams one
    /// safetensors file to standard output as it is generated: no temporary file and no
    /// atomic rename, so a failed run leaves a truncated stream (and exits non-zero). Not
    /// with npy/npz, sharding, --base, --masks or --json, nor to a terminal. A file named `-` is
    /// written as `./-`.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// Replace OUT if it exists (an npy directory only if eoi wrote it).
    #[arg(long)]
    pub force: bool,

    /// Weight dtype: f32, f64, f16 or bf16 (bf16 only as safetensors); overrides the spec's
    /// [output] dtype. Computed in f64, rounded once to nearest-even.
    #[arg(long, value_name = "DTYPE", value_parser = dtype_of(Dtype::WEIGHTS))]
    pub dtype: Option<Dtype>,

    /// Mask dtype: bool, u8 or f32 (holding 0 and 1); overrides the spec's [output]
    /// mask_dtype. torch-prune names keep the mask in the weight's dtype.
    #[arg(long, value_name = "DTYPE", value_parser = dtype_of(Dtype::MASKS))]
    pub mask_dtype: Option<Dtype>,

    /// Order of the weight dimensions: torch (out, in, k...) or flax (k..., in, out);
    /// overrides the spec's [output] layout.
    #[arg(long, value_enum, value_name = "LAYOUT")]
    pub layout: Option<Layout>,

    /// Tensor names: plain (X and X_mask) or torch-prune (<module>.<param>_orig and
    /// <module>.<param>_mask, mask in the weight dtype, as torch.nn.utils.prune keeps them);
    /// overrides the spec's [output] names.
    #[arg(long, value_enum, value_name = "NAMES")]
    pub names: Option<Names>,

    /// Worker threads (default: all cores, or RAYON_NUM_THREADS). Output bytes do not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,

    /// Print a machine-readable summary on standard output (its JSON Schema: eoi schema generate).
    #[arg(long)]
    pub json: bool,

    /// Print no summary and no progress bar on standard error.
    #[arg(short, long)]
    pub quiet: bool,

    /// Write a directory of safetensors shards of at most SIZE each (e.g. 5GB, 500MB, 2GiB)
    /// with model.safetensors.index.json, the Hugging Face convention. A layer's weight and
    /// mask share a shard.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_shard_size: Option<u64>,

    /// Write only shard K of N (with --max-shard-size) into OUT, byte-identical to shard K of
    /// the full run, so N jobs can write one model with no coordination. Shard 1 also writes
    /// the index.
    #[arg(long, value_name = "K/N", value_parser = parse_part, requires = "max_shard_size")]
    pub shard: Option<Part>,

    /// Complete this checkpoint (a safetensors file; a save_pretrained directory holding
    /// model.safetensors; a sharded checkpoint's directory or its
    /// model.safetensors.index.json): every tensor the spec does not name is copied
    /// unchanged, every tensor it names is replaced by its initialization and mask. OUT
    /// mirrors the base: one file for a file; for a directory, a directory with the same
    /// safetensors files and the base's other files (config.json, tokenizer, ...) copied
    /// unchanged. Weights in other formats (pytorch_model.bin, ...) and subdirectories are
    /// left out and named.
    #[arg(long, value_name = "CHECKPOINT")]
    pub base: Option<PathBuf>,

    /// Write every mask to MASKS, one safetensors file keyed by the layers' own names (the
    /// parameters they mask), and none to OUT, for loaders that refuse unknown tensors
    /// (Hugging Face transformers). OUT and MASKS record each other's name; both are moved
    /// into place together, or neither. Safetensors with plain names; not with -o - or
    /// --shard.
    #[arg(long, value_name = "MASKS")]
    pub masks: Option<PathBuf>,

    /// Refuse to start if generating the largest layer needs more than SIZE of memory (e.g.
    /// 8GiB); smaller layers are run in parallel only within it. Default: 75% of the memory
    /// available when the run starts.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
}

/// Parses a size such as `5GB` (10^9 bytes), `500MB`, `2GiB` (2^30 bytes) or `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        format!("'{text}' is not a size: use a number with an optional unit, e.g. 5GB or 500MiB")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}': use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    let bytes = number * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("'{text}' is not a usable size (at least 1 byte)"));
    }
    Ok(bytes as u64)
}

/// A parser of the dtypes in `allowed`, offered by name (a subset of [`Dtype`]'s values).
fn dtype_of(allowed: &'static [Dtype]) -> impl TypedValueParser<Value = Dtype> {
    let names = allowed.iter().map(|d| d.name());
    clap::builder::PossibleValuesParser::new(names)
        .try_map(|name| Dtype::parse(&name).ok_or_else(|| format!("unknown dtype {name}")))
}

/// Parses `K/N` with 1 <= K <= N.
pub fn parse_part(text: &str) -> Result<Part, String> {
    let bad = || format!("'{text}' is not a shard: use K/N, e.g. 3/8 for the third of eight");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let index: usize = k.trim().parse().map_err(|_| bad())?;
    let count: usize = n.trim().parse().map_err(|_| bad())?;
    if index == 0 || index > count {
        return Err(format!(
            "'{text}': the shard number must be between 1 and {count}"
        ));
    }
    Ok(Part { index, count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes_and_parts_parse() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("GB").is_err());
        assert_eq!(parse_part("2/5"), Ok(Part { index: 2, count: 5 }));
        assert!(parse_part("0/5").is_err());
        assert!(parse_part("6/5").is_err());
        assert!(parse_part("2").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_stream_version() {
        let version = Cli::command().get_version().unwrap().to_string();
        assert!(version.contains(&format!("random streams v{}", eoi::stream::STREAM_VERSION)));
    }
}

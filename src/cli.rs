//! The command line: clap definitions, turned into validated library values in
//! `commands`. Help text is part of the interface: it is written for a researcher at a
//! terminal, with an example in every command.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use eoi::spec::Format;
use eoi::tensor::Dtype;

const EXAMPLES: &str = "\
Examples:
  eoi plan specs/mlp-mnist.toml                  show every layer's density, nothing written
  eoi generate specs/mlp-mnist.toml -o init.safetensors
  eoi generate specs/resnet32-cifar10.toml -o init --format npy --seed 3";

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
        after_help = "Examples:\n  eoi generate specs/mlp-1000-tanh.toml -o mlp1000.safetensors\n  eoi generate spec.toml -o init --format npy --seed 7 --force\n  eoi generate spec.toml -o init.safetensors --json > summary.json"
    )]
    Generate(GenerateArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    #[command(
        after_help = "Examples:\n  eoi completions bash > ~/.local/share/bash-completion/completions/eoi\n  eoi completions zsh > ~/.zfunc/_eoi         # with fpath+=~/.zfunc before compinit\n  eoi completions fish > ~/.config/fish/completions/eoi.fish\n  eoi completions powershell >> $PROFILE"
    )]
    Completions(CompletionsArgs),
    /// Print the manual page of eoi and all its commands (roff).
    #[command(after_help = "Examples:\n  eoi man > eoi.1 && man ./eoi.1")]
    Man,
    /// Print the JSON Schema of the spec format, for editors that check and complete TOML.
    #[command(
        after_help = "Examples:\n  eoi schema > eoi.schema.json     # then start a spec with the line: #:schema ./eoi.schema.json"
    )]
    Schema,
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

    /// Output format; overrides the spec's [output] format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Print the plan as JSON on standard output (schema in README).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Where to write: a .safetensors file, or a directory for --format npy. Written to a
    /// temporary name beside it and renamed into place when complete.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// Replace OUT if it exists (an npy directory only if eoi wrote it).
    #[arg(long)]
    pub force: bool,

    /// Weight dtype; overrides the spec's [output] dtype.
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub dtype: Option<DtypeArg>,

    /// Worker threads (default: all cores, or RAYON_NUM_THREADS). Output bytes do not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,

    /// Print a machine-readable summary on standard output (schema in README).
    #[arg(long)]
    pub json: bool,

    /// Print no summary on standard error.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Safetensors,
    Npy,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Safetensors => Format::Safetensors,
            FormatArg::Npy => Format::Npy,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DtypeArg {
    F32,
    F64,
}

impl From<DtypeArg> for Dtype {
    fn from(d: DtypeArg) -> Dtype {
        match d {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F64 => Dtype::F64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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

//! The program's stories: read the spec, plan, generate, and report to the terminal or as
//! JSON. Everything here turns command-line values into library calls and library results
//! into text; the work itself happens in the library.

use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use serde::Serialize;

use eoi::error::Error;
use eoi::generate::{self, Options};
use eoi::inspect;
use eoi::isometry;
use eoi::json::{self, GenerateJson, InspectJson, IsometryJson, PlanJson, VerifyJson};
use eoi::layer::Gain;
use eoi::plan::{self, Overrides, Plan};
use eoi::spec::{self, Source, SpecError};
use eoi::spec_from;
use eoi::units::thousands;
use eoi::verify;
use eoi::write::{self, Container, Destination};

use crate::cli::{
    Cli, Command, GenerateArgs, InspectArgs, IsometryArgs, PlanArgs, SpecArgs, SpecFromArgs,
    VerifyArgs,
};
use crate::docs;
use crate::output::{self, Bar};

/// Runs a parsed command line; the exit code when it ran to the end (0, or 1 when `verify`
/// finds a failed check).
pub fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Plan(args) => plan_command(args).map(|()| 0),
        Command::Generate(args) => generate_command(args).map(|()| 0),
        Command::Spec(args) => spec_from_command(args).map(|()| 0),
        Command::Verify(args) => verify_command(args),
        Command::Inspect(args) => inspect_command(args).map(|()| 0),
        Command::Isometry(args) => isometry_command(args).map(|()| 0),
        Command::Completions(args) => print_bytes(&docs::completions(args.shell)).map(|()| 0),
        Command::Man => print_bytes(&docs::man_page()).map(|()| 0),
        Command::Schema(args) => print_json(&json::schema(args.document)).map(|()| 0),
    }
}

/// Reads the spec text from a file, or from standard input for `-`.
fn read_source(path: &Path) -> Result<Source, Error> {
    let (name, bytes) = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Usage(format!("cannot read the spec from standard input: {e}")))?;
        ("<stdin>".to_string(), bytes)
    } else {
        let name = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Usage(format!("cannot read spec '{name}': {e}")))?;
        (name, bytes)
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Source { name, text }),
        Err(e) => {
            let (line, column) = spec::line_column(e.as_bytes(), e.utf8_error().valid_up_to());
            Err(SpecError {
                file: name,
                position: Some((line, column)),
                context: String::new(),
                message: "the spec is not valid UTF-8 text".into(),
                help: Some("save the spec as UTF-8".into()),
            }
            .into())
        }
    }
}

fn load_plan(args: &SpecArgs, overrides: Overrides) -> Result<Plan, Error> {
    let source = read_source(&args.spec)?;
    let spec = spec::parse(source)?;
    let overrides = Overrides {
        seed: args.seed,
        scheme: args.scheme,
        format: args.format,
        below_minimum: args
            .below_minimum
            .as_deref()
            .and_then(eoi::layer::BelowMinimum::parse),
        ..overrides
    };
    let plan = plan::plan(&spec, &overrides)?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(plan)
}

fn stdout_error(e: io::Error) -> Error {
    Error::io("cannot write to standard output", e)
}

fn print_bytes(bytes: &[u8]) -> Result<(), Error> {
    io::stdout().lock().write_all(bytes).map_err(stdout_error)
}

fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(|e| stdout_error(e.into()))?;
    writeln!(out).map_err(stdout_error)
}

fn plan_command(args: PlanArgs) -> Result<(), Error> {
    let plan = load_plan(&args.spec, Overrides::default())?;
    if args.json {
        return print_json(&PlanJson::new(&plan));
    }
    print_bytes(output::plan_text(&plan).as_bytes())
}

/// A progress bar on standard error for long runs at a terminal; nothing otherwise.
fn progress_bar(plan: &Plan, quiet: bool) -> Option<ProgressBar> {
    const LONG: u64 = 256 << 20;
    let total: u64 = generate::tensors(plan).iter().map(|t| t.nbytes()).sum();
    if quiet || total < LONG || !io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

fn generate_command(args: GenerateArgs) -> Result<(), Error> {
    let stream = generate::is_stdout(&args.output);
    if stream && args.json {
        return Err(Error::Usage(
            "--json prints to standard output, which -o - fills with the safetensors bytes; drop --json (eoi plan SPEC --json describes the output beforehand)".into(),
        ));
    }
    if stream && io::stdout().is_terminal() {
        return Err(Error::Usage(
            "-o - writes binary safetensors data to standard output, which is a terminal; redirect it to a file or a pipe (eoi generate SPEC -o - > init.safetensors)".into(),
        ));
    }
    let overrides = Overrides {
        dtype: args.dtype,
        mask_dtype: args.mask_dtype,
        layout: args.layout,
        names: args.names,
        max_shard_size: args.max_shard_size,
        ..Overrides::default()
    };
    let plan = load_plan(&args.spec, overrides)?;
    let base = args
        .base
        .as_deref()
        .map(eoi::generate::base::Base::open)
        .transpose()?
        .map(Arc::new);
    let bar = progress_bar(&plan, args.quiet);
    let options = Options {
        output: args.output.clone(),
        force: args.force,
        threads: args.threads.map(|n| n.get()),
        part: args.shard,
        max_memory: args.max_memory,
        base,
        masks: args.masks.clone(),
        progress: bar
            .clone()
            .map(|bar| -> generate::Progress { Arc::new(move |bytes| bar.inc(bytes)) }),
    };
    let report = generate::run(&plan, &options);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    if !args.quiet {
        let what = match (report.files, args.shard) {
            (1, _) => format!(
                "{}, {}",
                plan.output.format.name(),
                plan.output.dtype.name()
            ),
            (n, Some(part)) => format!("shard {} of {n}, {}", part.index, plan.output.dtype.name()),
            (n, None) => format!("{n} shards, {}", plan.output.dtype.name()),
        };
        let weights: u64 = report.stats.iter().map(|s| s.numel).sum();
        let shown = if stream {
            "standard output".to_string()
        } else {
            args.output.display().to_string()
        };
        let masks = match &args.masks {
            Some(path) => format!(" and its masks to {}", path.display()),
            None => String::new(),
        };
        eprintln!(
            "wrote {shown} ({what}){masks}: {} layers, {} weights, density {:.5} (target {}, {}), {} nonzeros, {:.1} MB in {:.2} s",
            report.layers.len(),
            thousands(weights),
            report.density(),
            plan.requested_density.get(),
            plan.distribution.name(),
            thousands(report.nnz()),
            report.bytes as f64 / 1e6,
            report.seconds,
        );
        if let Some(files) = &report.base_files {
            eprint!("{}", base_files_text(files));
        }
    }
    if args.json {
        print_json(&GenerateJson::new(
            &plan,
            &report,
            &args.output,
            args.masks.as_deref(),
        ))?;
    }
    Ok(())
}

/// What a base directory gave the output besides its safetensors files, for standard error.
fn base_files_text(files: &eoi::generate::base::DirectoryFiles) -> String {
    let base = &files.directory;
    let mut text = String::new();
    if !files.copied.is_empty() {
        let names: Vec<String> = files
            .copied
            .iter()
            .map(|f| f.name.to_string_lossy().into_owned())
            .collect();
        text.push_str(&format!(
            "copied from '{}' unchanged: {}\n",
            base.display(),
            names.join(", ")
        ));
    }
    for (name, why) in &files.left_out {
        text.push_str(&format!(
            "note: not copied from '{}': '{}': {}\n",
            base.display(),
            name.to_string_lossy(),
            why.reason()
        ));
    }
    text
}

fn spec_from_command(args: SpecFromArgs) -> Result<(), Error> {
    let density = eoi::layer::Density::new(args.density).ok_or_else(|| {
        Error::Usage(format!(
            "--density {}: a density must be in (0, 1]",
            args.density
        ))
    })?;
    let gain = args
        .gain
        .as_deref()
        .map(|text| {
            Gain::named(text)
                .or_else(|| text.parse::<f64>().ok().and_then(Gain::number))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--gain {text}: a gain is a number > 0 or one of {}",
                        Gain::NAMES.join(", ")
                    ))
                })
        })
        .transpose()?;
    for (flag, globs) in [
        ("--exclude", &args.exclude),
        ("--include", &args.include),
        ("--dense", &args.dense),
    ] {
        if globs.iter().any(String::is_empty) {
            return Err(Error::Usage(format!("{flag}: a pattern must not be empty")));
        }
    }
    if let Some(output) = &args.output {
        Destination {
            path: output.clone(),
            force: args.force,
        }
        .check(Container::File)?;
    }
    let shapes = if args.from.as_os_str() == "-" {
        let mut bytes = Vec::new();
        io::stdin()
            .take(spec_from::MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Usage(format!("cannot read standard input: {e}")))?;
        if bytes.len() as u64 > spec_from::MAX_JSON {
            return Err(Error::Usage(format!(
                "the shape list on standard input exceeds the limit of {} bytes",
                spec_from::MAX_JSON
            )));
        }
        spec_from::shapes_from_json("<stdin>", &bytes)?
    } else {
        spec_from::read_shapes(&args.from)?
    };
    let options = spec_from::Options {
        density,
        distribution: args.distribution,
        gain,
        seed: args.seed,
        scheme: args.scheme,
        exclude: args.exclude,
        include: args.include,
        below_minimum: args
            .below_minimum
            .as_deref()
            .and_then(eoi::layer::BelowMinimum::parse),
        dense: args.dense,
        layout: args.layout,
        fold: !args.no_fold,
    };
    let masks = args
        .densities_from
        .as_deref()
        .map(eoi::read::Checkpoint::open)
        .transpose()?;
    let written = spec_from::spec_from(&shapes, &options, masks.as_ref())?;
    for warning in &written.warnings {
        eprintln!("warning: {warning}");
    }
    let text = written.text;
    match &args.output {
        None => print_bytes(text.as_bytes()),
        Some(path) => write::place_file(
            &Destination {
                path: path.clone(),
                force: args.force,
            },
            text.as_bytes(),
        ),
    }
}

fn verify_command(args: VerifyArgs) -> Result<u8, Error> {
    let options = verify::Options {
        regenerate: args.regenerate,
        base: args.base,
        max_memory: args.max_memory,
    };
    let report = {
        let bar = Bar::new("verifying");
        verify::verify(&args.artifact, &options, &bar)?
    };
    if args.json {
        print_json(&VerifyJson::new(&report))?;
    } else {
        io::stdout()
            .lock()
            .write_all(output::verify_text(&report).as_bytes())
            .map_err(stdout_error)?;
    }
    Ok(if report.passed() { 0 } else { 1 })
}

fn inspect_command(args: InspectArgs) -> Result<(), Error> {
    let inspection = {
        let bar = Bar::new("inspecting");
        let options = inspect::Options {
            layers: args.layers,
            svd: args.svd,
        };
        inspect::inspect(&args.artifact, &options, &bar)?
    };
    if args.json {
        print_json(&InspectJson::new(&inspection))
    } else {
        io::stdout()
            .lock()
            .write_all(output::inspect_text(&inspection).as_bytes())
            .map_err(stdout_error)
    }
}

fn isometry_command(args: IsometryArgs) -> Result<(), Error> {
    let options = isometry::Options {
        layers: args.layers,
        nonlinearity: args.nonlinearity,
        seed: args.seed,
        grid: args.grid,
        probes: args.probes,
        order: args.order,
    };
    let report = {
        let bar = Bar::new("measuring");
        isometry::isometry(&args.artifact, &options, &bar)?
    };
    if args.json {
        print_json(&IsometryJson::new(&report))
    } else {
        io::stdout()
            .lock()
            .write_all(output::isometry_text(&report).as_bytes())
            .map_err(stdout_error)
    }
}

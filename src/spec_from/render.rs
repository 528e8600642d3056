//! Writing the spec's TOML: a header comment saying where the shapes came from and what was
//! decided, then `seed`, `[sparsity]`, `[init]` and `[output]` from the command line's
//! choices and the source's dtype, one `[[layer]]` table per layer or folded run, and a
//! closing comment listing every tensor left to the base with the reason.

use std::fmt::Write as _;

use super::shapes::Shapes;
use super::{Layer, LeftOut, Options, Table, glob, quoted};
use crate::layer::{Dtype, Layout};
use crate::read::Checkpoint;
use crate::spec::Pattern;
use crate::units::thousands;

/// The spec's text.
pub(super) fn render(
    shapes: &Shapes,
    options: &Options,
    masks: Option<&Checkpoint>,
    layers: &[Layer],
    tables: &[Table],
    left_out: &[LeftOut],
    dtype: &OutputDtype,
) -> String {
    let mut t = String::new();
    header(&mut t, shapes, options, layers, tables, left_out);
    notes(&mut t, options, masks, layers);
    t.push('\n');
    let _ = writeln!(t, "seed = {}", options.seed.unwrap_or(0));
    sparsity_and_init(&mut t, options);
    output(&mut t, options, dtype);
    for table in tables {
        layer_table(&mut t, table, layers, options, masks);
    }
    for (reason, list) in grouped(left_out) {
        let count: usize = list.iter().map(|l| 1 + l.tied.len()).sum();
        let _ = writeln!(t, "\n# Left to the base, {reason}: {count}");
        for item in list {
            let mut line = format!("#   {} {:?}", quoted(&item.entry.name), item.entry.shape);
            if let Some(module) = &item.entry.module {
                let _ = write!(line, " ({module})");
            }
            if !item.tied.is_empty() {
                let names: Vec<String> = item.tied.iter().map(|n| quoted(n)).collect();
                let _ = write!(line, "; {} tied to it, so left too", names.join(", "));
            }
            let _ = writeln!(t, "{line}");
        }
    }
    t
}

/// The header comment: the source and its hash, how many tensors are layers and why, and
/// how many are left to the base.
fn header(
    t: &mut String,
    shapes: &Shapes,
    options: &Options,
    layers: &[Layer],
    tables: &[Table],
    left_out: &[LeftOut],
) {
    let params: u64 = layers.iter().map(|l| l.shape.numel()).sum();
    let _ = writeln!(
        t,
        "# eoi spec of {}, written by `eoi spec --from` (eoi {}).",
        quoted(&shapes.name),
        crate::VERSION
    );
    let _ = writeln!(t, "# sha256 of its {}: {}", shapes.hashed(), shapes.sha256);
    let by_kind = shapes.entries.iter().any(|e| e.kind.is_some());
    let _ = writeln!(
        t,
        "# {} tensors are the layers below ({} weights, {} [[layer]] tables{}):",
        layers.len(),
        thousands(params),
        tables.len(),
        if options.fold { ", runs folded" } else { "" },
    );
    let _ = writeln!(
        t,
        "# the weights of linear and convolution modules, {}.",
        if by_kind {
            "by the shape list's \"kind\"\n# (docs/guide.md, \"Start from your model\")"
        } else {
            "by eoi's name rules\n# (docs/guide.md, \"Start from your model\")"
        }
    );
    let included = layers.iter().filter(|l| l.included).count();
    if included > 0 {
        let _ = writeln!(t, "# {included} of them are there by --include.");
    }
    let tied: usize = layers.iter().map(|l| l.tied.len()).sum();
    if tied > 0 {
        let _ = writeln!(
            t,
            "# {tied} more names share a layer's storage (tied weights): see `tied`."
        );
    }
    let left_tied: usize = left_out.iter().map(|l| l.tied.len()).sum();
    let _ = writeln!(
        t,
        "# {} tensors are left to the base (`generate --base` copies them unchanged), listed at\n# the end with the reason. --include GLOB adds one back, --exclude GLOB leaves one out.",
        left_out.len() + left_tied,
    );
    if left_tied > 0 {
        let _ = writeln!(
            t,
            "# {left_tied} of them are tied to a tensor listed there and go with it."
        );
    }
}

/// The notes of the header: convolutions assumed depthwise, the masks densities came from,
/// and a Flax source's layout.
fn notes(t: &mut String, options: &Options, masks: Option<&Checkpoint>, layers: &[Layer]) {
    let assumed = layers.iter().filter(|l| l.assumed_depthwise).count();
    if assumed > 0 {
        let _ = writeln!(
            t,
            "# {assumed} convolutions of shape [C, 1, k...] are assumed depthwise (groups = C): the source\n# does not record groups. Each says how to undo it; a shape list from\n# examples/shapes_from_torch.py records groups and makes this sure."
        );
    }
    if let Some(masks) = masks {
        let with = layers.iter().filter(|l| l.mask.is_some()).count();
        let _ = writeln!(
            t,
            "# Densities from the masks in {} (sha256 of its {}: {}):",
            quoted(&masks.path().display().to_string()),
            if masks.is_sharded() {
                "index file"
            } else {
                "safetensors header"
            },
            masks.sha256()
        );
        let _ = writeln!(
            t,
            "# {with} layers have a mask and its fraction of nonzeros as their density; {} keep the distribution's{}.",
            layers.len() - with,
            if options.dense.is_empty() {
                ""
            } else {
                " (or are dense)"
            }
        );
    }
    if options.layout == Layout::Flax {
        t.push_str("# The source is in Flax layout; shapes here are PyTorch's (out, in, k...), and\n# layout = \"flax\" writes them back as (in, out) and (k..., in, out).\n");
    }
}

/// `[sparsity]`, and `[init]` when the command line sets a scheme or a gain.
fn sparsity_and_init(t: &mut String, options: &Options) {
    t.push_str("\n[sparsity]\n");
    let _ = writeln!(t, "density = {}", float(options.density.get()));
    let _ = writeln!(t, "distribution = {}", quoted(options.distribution.name()));
    if !options.dense.is_empty() {
        let globs: Vec<String> = options.dense.iter().map(|g| quoted(g)).collect();
        let _ = writeln!(t, "dense = [{}]", globs.join(", "));
    }
    if let Some(rule) = options.below_minimum {
        let _ = writeln!(t, "below_minimum = {}", quoted(rule.name()));
    }
    if options.scheme.is_some() || options.gain.is_some() {
        t.push_str("\n[init]\n");
        if let Some(scheme) = &options.scheme {
            let _ = writeln!(t, "scheme = {}", quoted(scheme));
        }
        if let Some(gain) = &options.gain {
            let value = match &gain.nonlinearity {
                Some(name) => quoted(name),
                None => float(gain.value),
            };
            let _ = writeln!(t, "gain = {value}");
        }
    }
}

/// `[output]`, when the source is in Flax layout or its layers are not all stored in f32.
fn output(t: &mut String, options: &Options, dtype: &OutputDtype) {
    let writable = dtype.write.is_some() || dtype.majority.is_none_or(|d| d == Dtype::F32);
    if options.layout == Layout::Flax
        || dtype.write.is_some()
        || !writable
        || !dtype.others.is_empty()
    {
        t.push_str("\n[output]\n");
        if options.layout == Layout::Flax {
            t.push_str("layout = \"flax\"\n");
        }
        if let Some(name) = dtype.write {
            let _ = writeln!(
                t,
                "dtype = {}  # the layers' dtype in the source, so `generate --base` keeps it",
                quoted(name)
            );
        }
        if let (false, Some(d)) = (writable, dtype.majority) {
            let _ = writeln!(
                t,
                "# The layers are stored as {} in the source, which eoi does not write (it writes f32,\n# f64, f16, bf16): `generate --base` refuses them until the base is converted.",
                d.safetensors_name()
            );
        }
        if !dtype.others.is_empty() {
            let _ = writeln!(
                t,
                "# {} layers are stored in another dtype than {} (`generate --base` refuses them\n# until --dtype or the base agrees):",
                dtype.others.len(),
                dtype.majority.map_or("f32", |d| d.name())
            );
            for (name, d) in &dtype.others {
                let _ = writeln!(t, "#   {} {}", quoted(name), d.name());
            }
        }
    }
}

/// One `[[layer]]` table: a layer or a folded run, with its groups, `repeat`, tied names and
/// density when it has its own.
fn layer_table(
    t: &mut String,
    table: &Table,
    layers: &[Layer],
    options: &Options,
    masks: Option<&Checkpoint>,
) {
    let first = &layers[table.members[0]];
    t.push_str("\n[[layer]]\n");
    let _ = writeln!(t, "name = {}", quoted(&table.name));
    let dims: Vec<String> = first.shape.dims().iter().map(|d| d.to_string()).collect();
    let _ = writeln!(t, "shape = [{}]", dims.join(", "));
    if first.groups != 1 {
        if first.assumed_depthwise {
            let _ = writeln!(
                t,
                "groups = {}  # assumed depthwise: the source does not record groups. If this is a plain\n# convolution with one input channel, delete this line (and a depthwise `density` below).",
                first.groups
            );
        } else {
            let _ = writeln!(t, "groups = {}", first.groups);
        }
    }
    if let Some(n) = table.repeat {
        let _ = writeln!(t, "repeat = {n}");
    }
    if !first.tied.is_empty() {
        let names: Vec<String> = first.tied.iter().map(|n| quoted(n)).collect();
        let _ = writeln!(
            t,
            "tied = [{}]  # these share the weight's storage; --base gives them its bytes",
            names.join(", ")
        );
    }
    if first.included {
        t.push_str("# a layer by --include\n");
    }
    let depthwise = depthwise_least(table.members.iter().map(|&k| &layers[k]), options);
    if let Some(least) = depthwise {
        let taps = first.shape.taps();
        let _ = writeln!(
            t,
            "density = {}  # depthwise: EOI's least, one weight (+-gain) per channel, 1/{taps}; [sparsity]'s {} is below it",
            float(least),
            options.density.get()
        );
    }
    if masks.is_some() {
        match &first.mask {
            Some((nnz, numel, mask)) => {
                let _ = writeln!(
                    t,
                    "density = {}  # {} of {} nonzero in mask {}{}",
                    float(*nnz as f64 / *numel as f64),
                    thousands(*nnz),
                    thousands(*numel),
                    quoted(mask),
                    if table.members.len() > 1 {
                        " (and alike for every {i})"
                    } else {
                        ""
                    },
                );
            }
            None if depthwise.is_some() => {}
            None => t.push_str("# no mask used: the density comes from [sparsity]\n"),
        }
    }
}

/// The density a table's layers get of their own, when they are depthwise convolutions
/// under EOI whose `uniform` density would be below EOI's least for them: one weight per
/// channel, `1/K` (K the kernel's taps; see docs/spec.md, "Densities"). Not with a mask's
/// density or a `dense` glob (which would then contradict it); under erk and er the
/// distribution decides, and `below_minimum` says what happens below it.
fn depthwise_least<'a>(
    mut members: impl Iterator<Item = &'a Layer>,
    options: &Options,
) -> Option<f64> {
    let eoi = options.scheme.as_deref().is_none_or(|s| s == "eoi");
    let uniform = options.distribution == crate::layer::Distribution::Uniform;
    let dense: Vec<Pattern> = options.dense.iter().map(|g| glob(g)).collect();
    let first = members.next()?;
    let least = 1.0 / first.shape.taps() as f64;
    let depthwise = |layer: &Layer| {
        layer.groups > 1
            && layer.groups == layer.shape.out()
            && layer.shape.inp() == 1
            && layer.shape.taps() == first.shape.taps()
            && layer.mask.is_none()
            && !dense.iter().any(|p| p.matches(&layer.name))
    };
    (eoi && uniform
        && crate::layer::below(options.density.get(), least)
        && depthwise(first)
        && members.all(depthwise))
    .then_some(least)
}

/// A number as TOML writes a float (`1.0`, not `1`).
fn float(x: f64) -> String {
    toml::Value::Float(x).to_string()
}

/// "12 rank 1, 3 kind \"norm\"": the reasons tensors were left out, with counts.
pub(super) fn summary(left_out: &[LeftOut]) -> String {
    let groups = grouped(left_out);
    if groups.is_empty() {
        return "none".into();
    }
    groups
        .iter()
        .map(|(reason, list)| format!("{} {reason}", list.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tensors left out, grouped by reason in the order each reason first appears.
fn grouped<'a, 'b>(left_out: &'b [LeftOut<'a>]) -> Vec<(&'b str, Vec<&'b LeftOut<'a>>)> {
    let mut groups: Vec<(&str, Vec<&LeftOut>)> = Vec::new();
    for item in left_out {
        match groups.iter_mut().find(|(r, _)| *r == item.reason) {
            Some((_, list)) => list.push(item),
            None => groups.push((&item.reason, vec![item])),
        }
    }
    groups
}

/// The weight dtype the spec's `[output]` records: the dtype most layers are stored in
/// (the first layer's among equals), when it is not f32 and eoi writes it; and the layers
/// stored otherwise, for a comment.
pub(super) struct OutputDtype {
    /// The dtype to write into `[output]`, when not the default f32.
    write: Option<&'static str>,
    /// The layers' majority dtype, when known.
    majority: Option<Dtype>,
    /// (name, dtype) of the layers not in the majority dtype.
    others: Vec<(String, Dtype)>,
}

pub(super) fn output_dtype(layers: &[Layer]) -> OutputDtype {
    let mut counts: Vec<(Dtype, usize)> = Vec::new();
    for dtype in layers.iter().filter_map(|l| l.dtype) {
        match counts.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, n)) => *n += 1,
            None => counts.push((dtype, 1)),
        }
    }
    let majority = counts
        .iter()
        .fold(None::<(Dtype, usize)>, |best, &(d, n)| match best {
            Some((_, m)) if m >= n => best,
            _ => Some((d, n)),
        })
        .map(|(d, _)| d);
    let write = match majority {
        Some(Dtype::BF16) => Some("bf16"),
        Some(Dtype::F16) => Some("f16"),
        Some(Dtype::F64) => Some("f64"),
        _ => None,
    };
    let others = layers
        .iter()
        .filter_map(|l| match (l.dtype, majority) {
            (Some(d), Some(m)) if d != m => Some((l.name.clone(), d)),
            _ => None,
        })
        .collect();
    OutputDtype {
        write,
        majority,
        others,
    }
}

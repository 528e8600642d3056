//! How plans and `verify`, `inspect` and `isometry` results are shown: text for people (a
//! row per layer, one line per failure, a table per tensor), and a progress bar on standard
//! error for long runs at a terminal. Their JSON for programs is written by the types of
//! [`eoi::json`].

use std::io::{self, IsTerminal};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use eoi::inspect::{Inspection, Spread, TensorSummary};
use eoi::isometry;
use eoi::layer::ConvMask;
use eoi::plan::Plan;
use eoi::schemes::LayerPlan;
use eoi::verify;

use eoi::units::thousands;

/// A progress bar on standard error, drawn only when standard error is a terminal and the
/// work is large enough to be worth watching (a few seconds).
pub struct Bar(ProgressBar);

impl Bar {
    /// Work units (bytes read plus multiply-adds / 64) below which no bar is drawn.
    const WORTH_SHOWING: u64 = 2_000_000_000;

    pub fn new(message: &'static str) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% (eta {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        Bar(bar)
    }
}

impl eoi::progress::Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        if total >= Self::WORTH_SHOWING && io::stderr().is_terminal() {
            self.0.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    fn advance(&self, done: u64) {
        self.0.inc(done);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn or_unknown<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "?".to_string(), ToString::to_string)
}

/// `eoi plan`'s table: a row per layer, then the totals, the tied names and each scheme's
/// note.
pub fn plan_text(plan: &Plan) -> String {
    let mut text = plan_table(plan);
    let bias_count = plan
        .layers
        .iter()
        .filter(|l| l.bias_name().is_some())
        .count();
    let bias_note = if bias_count > 0 {
        format!(", {bias_count} biases")
    } else {
        String::new()
    };
    text.push_str(&format!(
        "\n{} layers{bias_note}, {} weights, density {:.5} (target {}, {}), {} expected nonzeros, seed {}\n",
        plan.layers.len(),
        thousands(plan.params()),
        plan.density(),
        plan.requested_density.get(),
        plan.distribution.name(),
        thousands(plan.expected_nnz()),
        plan.seed,
    ));
    // Tied names, only when a layer has them, so other plans keep their text.
    for l in plan.layers.iter().filter(|l| !l.tied.is_empty()) {
        text.push_str(&format!(
            "tied to {}: {} (same storage; with --base each one the base holds gets the weight's bytes)\n",
            l.name,
            l.tied.join(", ")
        ));
    }
    // Convolutions whose centre was raised to its identity, only when there are some.
    let raised: Vec<String> = plan
        .layers
        .iter()
        .filter(|l| l.rules().record(l).centre_raised)
        .map(|l| l.name.clone())
        .collect();
    if !raised.is_empty() {
        text.push_str(&format!(
            "centre raised to its identity in {} {}: {} (the centre rule asks less than the identity of the centre's blocks; the mask's top-up brings each to its density)\n",
            raised.len(),
            if raised.len() == 1 {
                "convolution"
            } else {
                "convolutions"
            },
            some_names(&raised)
        ));
    }
    // Each scheme's note, once, from its first layer.
    let mut noted = Vec::new();
    for l in &plan.layers {
        if !noted.contains(&l.scheme)
            && let Some(note) = l.rules().plan_note(l)
        {
            noted.push(l.scheme);
            text.push_str(&note);
            text.push('\n');
        }
    }
    text
}

/// A layer's shape in `eoi plan`: followed by its groups for a grouped convolution, as
/// PyTorch's Conv2d names them, by its mask rule for a structured kernel (top-up, the
/// default, is not shown) and by its N:M pattern.
fn planned_shape(l: &LayerPlan) -> String {
    let mut text = match l.groups {
        1 => l.shape.to_string(),
        g => format!("{} groups={g}", l.shape),
    };
    if l.conv_mask == ConvMask::Structured {
        text.push_str(" conv_mask=structured");
    }
    if let Some(nm) = l.nm {
        text.push_str(&format!(" nm={}", nm.pattern));
        if nm.transposable {
            text.push_str(" transposable");
        }
    }
    text
}

/// The header and one row per layer of `eoi plan`.
fn plan_table(plan: &Plan) -> String {
    let width = plan
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(5)
        .clamp(5, 60);
    let shape_width = plan
        .layers
        .iter()
        .map(|l| planned_shape(l).len())
        .max()
        .unwrap_or(5)
        .max(5);
    let scheme_width = plan
        .layers
        .iter()
        .map(|l| l.scheme.name().len())
        .max()
        .unwrap_or(6)
        .max(6);
    // The bias column appears only when a layer has a bias, so plans without keep their text.
    let biases = plan.layers.iter().any(|l| l.bias_name().is_some());
    let bias_column = |std: String| {
        if biases {
            format!("  {std:>9}")
        } else {
            String::new()
        }
    };
    let mut text = format!(
        "{:<width$}  {:<shape_width$}  {:<6}  {:<scheme_width$}  {:>8}  {:<11}  {:>12}  {:>12}{}\n",
        "layer",
        "shape",
        "kind",
        "scheme",
        "density",
        "origin",
        "params",
        "nnz",
        bias_column("bias_std".into())
    );
    for l in &plan.layers {
        let std = match (l.bias_name(), l.bias_std) {
            (Some(_), Some(std)) => format!("{std}"),
            _ => "-".into(),
        };
        text.push_str(&format!(
            "{:<width$}  {:<shape_width$}  {:<6}  {:<scheme_width$}  {:>8.5}  {:<11}  {:>12}  {:>12}{}\n",
            l.name,
            planned_shape(l),
            l.kind().name(),
            l.scheme.name(),
            l.density,
            l.origin.name(),
            thousands(l.shape.numel()),
            thousands(l.expected_nnz()),
            bias_column(std),
        ));
    }
    text
}

/// The first few names of a list, then how many more.
fn some_names(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    match names.len() - shown.len() {
        0 => shown.join(", "),
        more => format!("{}, and {more} more", shown.join(", ")),
    }
}

pub fn verify_text(report: &verify::Report) -> String {
    let mut text = verify_heading(report);
    for problem in &report.problems {
        text.push_str(&format!("FAIL  {problem}\n"));
    }
    for layer in &report.layers {
        for f in &layer.failures {
            text.push_str(&format!(
                "FAIL  {}  {}: {}\n",
                layer.name,
                f.check.name(),
                f.message
            ));
        }
    }
    if let Some(g) = &report.regenerated {
        text.push_str(&regeneration_text(g));
    }
    if report.passed() {
        text.push_str(&passed_text(report));
    } else {
        text.push_str(&failed_text(report));
    }
    text
}

/// What the artifact is and who made it, and the notes on it.
fn verify_heading(report: &verify::Report) -> String {
    let r = &report.recorded;
    let mut how = vec![report.format.name().to_string()];
    if let Some(n) = report.shards {
        how.push(format!("{n} shards"));
    }
    if report.layout != eoi::layer::Layout::Torch {
        how.push(format!("{} layout", report.layout.name()));
    }
    if r.names != eoi::layer::Names::Plain {
        how.push(format!("{} names", r.names.name()));
    }
    let mut text = format!(
        "{} ({}): made by eoi {} (random streams v{}), seed {}, {} layers\n",
        report.path,
        how.join(", "),
        or_unknown(&r.version),
        or_unknown(&r.stream_version),
        or_unknown(&r.seed),
        report.layers.len(),
    );
    for note in &report.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    if let Some(base) = &r.base
        && !report.copied.is_empty()
    {
        text.push_str(&format!(
            "note: {} tensors were copied from the base '{}'{}: {} (--json lists them); they are not eoi's layers, and only --regenerate --base compares them\n",
            report.copied.len(),
            base.name,
            base.sha256
                .as_ref()
                .map_or(String::new(), |h| format!(
                    " (SHA-256 {}...)",
                    h.chars().take(16).collect::<String>()
                )),
            some_names(&report.copied)
        ));
    }
    text
}

/// The notes, failures and verdict of `--regenerate`.
fn regeneration_text(g: &verify::Regenerated) -> String {
    let mut text = String::new();
    for note in &g.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    if let Some(why) = &g.impossible {
        text.push_str(&format!("FAIL  regenerate: cannot regenerate: {why}\n"));
    }
    for d in &g.differences {
        text.push_str(&format!("FAIL  {}  regenerate: {}\n", d.tensor, d.message));
    }
    if g.passed() {
        text.push_str(&format!(
            "regenerated {} tensors from the embedded spec and seed: bit-identical\n",
            g.compared
        ));
        if g.copies > 0 {
            text.push_str(&format!(
                "compared {} copied tensors with the base: bit-identical\n",
                g.copies
            ));
        }
    }
    text
}

/// The verdict when every check holds: the layer closest to its tolerance, and what was
/// not judged or was judged against a recorded error.
fn passed_text(report: &verify::Report) -> String {
    let worst = report
        .layers
        .iter()
        .filter_map(|l| Some((l.orthogonality_error? / l.tolerance?, l)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let mut text = format!("ok: {} layers pass every check", report.layers.len());
    if let Some((_, l)) = worst {
        text.push_str(&format!(
            " (closest to its tolerance: {}, orthogonality error {:.2e} of {:.2e})",
            l.name,
            l.orthogonality_error.unwrap_or(0.0),
            l.tolerance.unwrap_or(0.0)
        ));
    }
    text.push('\n');
    let unjudged: Vec<&str> = report
        .layers
        .iter()
        .filter(|l| !l.promises_orthogonality)
        .map(|l| l.scheme.map_or("?", |s| s.name()))
        .collect();
    if !unjudged.is_empty() {
        let mut schemes = unjudged.clone();
        schemes.sort_unstable();
        schemes.dedup();
        text.push_str(&format!(
            "note: orthogonality is not checked for {} layers whose scheme ({}) does not promise it at their density; --json gives their errors\n",
            unjudged.len(),
            schemes.join(", ")
        ));
    }
    let optimised = report
        .layers
        .iter()
        .filter_map(|l| Some((l.recorded_isometry_error?, l)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((worst, l)) = optimised {
        let count = report
            .layers
            .iter()
            .filter(|l| l.recorded_isometry_error.is_some())
            .count();
        text.push_str(&format!(
            "note: {count} approx-isometry layers hold the isometry error ||G - g^2 I||_F / ||g^2 I||_F their records state; the largest is {}'s, {worst:.3e}\n",
            l.name
        ));
    }
    text
}

/// The verdict when a check fails: how many of each kind.
fn failed_text(report: &verify::Report) -> String {
    let failing = report.layers.iter().filter(|l| !l.passed()).count();
    let mut parts = vec![format!("{failing} of {} layers fail", report.layers.len())];
    if !report.problems.is_empty() {
        parts.push(format!("{} file problems", report.problems.len()));
    }
    if let Some(g) = &report.regenerated
        && !g.passed()
    {
        parts.push(format!("{} regeneration differences", g.differences.len()));
    }
    format!("FAILED: {}\n", parts.join(", "))
}

/// What `inspect` says of a tensor after its row: what it is the mask or bias of, why it
/// has no spectrum, or the isometry error its record states; then the N:M patterns it holds.
fn tensor_remark(t: &TensorSummary) -> String {
    let remark = match (&t.mask_of, &t.bias_of, &t.note) {
        (Some(w), _, _) => format!("  (mask of {w})"),
        (None, Some(w), _) => match t.rms {
            Some(rms) => format!("  (bias of {w}, rms {})", figure(rms)),
            None => format!("  (bias of {w})"),
        },
        (None, None, Some(note)) => format!("  ({note})"),
        (None, None, None) => match t.recorded_isometry_error {
            Some(e) => format!("  (approx-isometry, recorded isometry error {e:.2e})"),
            None => String::new(),
        },
    };
    remark + &nm_remark(t)
}

/// The common N:M patterns a sparse matrix holds, strongest first; nothing for a dense one
/// or one that holds none, so other rows keep their text.
fn nm_remark(t: &TensorSummary) -> String {
    let Some((held, both)) = &t.nm else {
        return String::new();
    };
    if held.is_empty() {
        return String::new();
    }
    let list = |ps: &[eoi::schemes::nm::Pattern]| {
        ps.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let transposable = if both.is_empty() {
        String::new()
    } else if both == held {
        ", transposable".into()
    } else {
        format!(", transposable {}", list(both))
    };
    format!("  (N:M {}{transposable})", list(held))
}

fn spread_text(spread: &Option<Spread>) -> String {
    spread.map_or_else(
        || "-".to_string(),
        |s| format!("{}/{:.1}/{}", s.min, s.mean, s.max),
    )
}

pub fn inspect_text(inspection: &Inspection) -> String {
    // A grouped convolution's groups follow its shape, as in `eoi plan`.
    let shape = |t: &TensorSummary| {
        let dims = if t.shape.is_empty() {
            "scalar".to_string()
        } else {
            t.shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("x")
        };
        match t.groups {
            Some(g) => format!("{dims} groups={g}"),
            None => dims,
        }
    };
    let width = inspection
        .tensors
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(6)
        .clamp(6, 60);
    let shape_width = inspection
        .tensors
        .iter()
        .map(|t| shape(t).len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut text = format!(
        "{:<width$}  {:<shape_width$}  {:<7}  {:>8}  {:>12}  {:>9}  {:>9}  {:>9}  {:>16}  {:>16}\n",
        "tensor",
        "shape",
        "dtype",
        "density",
        "nnz",
        "orth.err",
        "sv min",
        "sv max",
        "row nnz min/avg/max",
        "col nnz min/avg/max"
    );
    let number = |x: Option<f64>, precision: usize| {
        x.map_or_else(|| "-".to_string(), |x| format!("{x:.precision$}"))
    };
    for t in &inspection.tensors {
        let s = t.spectrum.as_ref();
        text.push_str(&format!(
            "{:<width$}  {:<shape_width$}  {:<7}  {:>8}  {:>12}  {:>9}  {:>9}  {:>9}  {:>16}  {:>16}{}\n",
            t.name,
            shape(t),
            t.dtype.name(),
            number(t.density, 5),
            thousands(t.nnz),
            s.and_then(|s| s.orthogonality_error)
                .map_or_else(|| "-".to_string(), |e| format!("{e:.2e}")),
            number(s.map(|s| s.singular_min), 5),
            number(s.map(|s| s.singular_max), 5),
            spread_text(&t.row_nnz),
            spread_text(&t.col_nnz),
            tensor_remark(t)
        ));
    }
    let params: u64 = inspection.tensors.iter().map(|t| t.numel as u64).sum();
    let masks = inspection
        .tensors
        .iter()
        .filter(|t| t.mask_of.is_some())
        .count();
    text.push_str(&format!(
        "\n{} tensors ({} masks), {} elements{}; orth.err = max |G - g^2 I| / g^2 with G the smaller Gram matrix of (out, in*K) and g^2 its mean diagonal\n",
        inspection.tensors.len(),
        masks,
        thousands(params),
        match inspection.shards {
            Some(n) => format!(" in {n} shards"),
            None => String::new(),
        }
    ));
    if inspection.layout == eoi::layer::Layout::Flax {
        text.push_str(
            "flax layout: kernels stored (in, out) or (k..., in, out) are measured as the (out, in*K) matrix the layer applies\n",
        );
    }
    text
}

/// A measurement for people: fixed-point where that is readable, scientific otherwise.
fn figure(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if (1e-3..1e4).contains(&x.abs()) {
        format!("{x:.6}")
    } else {
        format!("{x:.3e}")
    }
}

/// The depths shown in text: all of a short chain; of a long one 0, 1, 2, 5, 10, 20, 50, ...
/// and the last.
fn shown_depths(last: usize) -> Vec<usize> {
    if last <= 20 {
        return (0..=last).collect();
    }
    let mut depths = vec![0];
    let mut decade = 1;
    'out: loop {
        for step in [1, 2, 5] {
            let d = step * decade;
            if d >= last {
                break 'out;
            }
            depths.push(d);
        }
        decade *= 10;
    }
    depths.push(last);
    depths
}

pub fn isometry_text(report: &isometry::Report) -> String {
    let link = |l: &isometry::Link| format!("{} ({}x{})", l.name, l.out, l.inp);
    let chain = match report.chain.as_slice() {
        [only] => link(only),
        [first, second] => format!("{}, {}", link(first), link(second)),
        [first, .., last] => format!("{} ... {}", link(first), link(last)),
        [] => String::new(),
    };
    let biases = report.chain.iter().filter(|l| l.bias.is_some()).count();
    let mut text = format!(
        "{}: a chain of {} layers in {} order: {}\n  phi = {}, biases from {} of {} layers, input seed {}\n\n",
        report.path,
        report.chain.len(),
        report.order.name(),
        chain,
        report.nonlinearity.name(),
        biases,
        report.chain.len(),
        report.seed,
    );
    if let Some(grid) = &report.grid {
        text.insert_str(
            text.len() - 1,
            &format!("{}\n", isometry_grid_text(report, grid)),
        );
    }
    text.push_str(&format!(
        "input-output Jacobian ({} x {}), singular values:\n",
        report.rows, report.cols
    ));
    let estimated = report.grid.as_ref().filter(|g| g.estimated());
    match (&report.singular, &report.note, estimated) {
        (Some(s), _, Some(grid)) => text.push_str(&isometry_estimate_text(s, grid)),
        (Some(s), _, None) if report.estimate.is_some() => {
            if let Some(e) = &report.estimate {
                text.push_str(&isometry_linear_estimate_text(report, s, e));
            }
        }
        (Some(s), _, None) => {
            for (label, value) in [
                ("mean of squares", s.mean_sq),
                ("std", s.std),
                ("max", s.max),
                ("min", s.min),
            ] {
                text.push_str(&format!("  {label:<16} {}\n", figure(value)));
            }
        }
        (None, note, _) => {
            text.push_str(&format!(
                "  none: {}\n",
                note.as_deref().unwrap_or("unknown")
            ));
        }
    }
    if let Some(sq) = report
        .grid
        .as_ref()
        .filter(|g| !g.estimated())
        .and_then(|g| g.sq_var)
    {
        text.push_str(&format!("  {:<16} {}\n", "var of squares", figure(sq)));
    }
    text.push_str("\nsignal RMS along the depth:\n  depth  rms\n");
    for depth in shown_depths(report.signal_rms.len().saturating_sub(1)) {
        text.push_str(&format!(
            "  {depth:>5}  {}\n",
            figure(report.signal_rms[depth])
        ));
    }
    text
}

/// The grid and the method of a convolution chain's measurement (`--grid`).
fn isometry_grid_text(report: &isometry::Report, grid: &isometry::conv::Grid) -> String {
    let mut kernels: Vec<String> = Vec::new();
    for link in &grid.links {
        let k = link
            .kernel
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("x");
        let k = match link.groups {
            1 => k,
            g if g == grid.channels => format!("{k} depthwise"),
            g => format!("{k} in {g} groups"),
        };
        if !kernels.contains(&k) {
            kernels.push(k);
        }
    }
    let side = vec![grid.size.to_string(); grid.dims].join("x");
    let method = match grid.method {
        isometry::conv::Method::Fourier => format!(
            "exact, per frequency: {} products of {} x {} matrices",
            grid.positions(),
            grid.channels,
            grid.channels
        ),
        isometry::conv::Method::Dense => format!(
            "exact, from the dense Jacobian ({} forward-mode products per layer)",
            report.cols
        ),
        isometry::conv::Method::Probes => format!(
            "ESTIMATED from {} random probes (forward-mode products), +- one standard error",
            grid.probes.unwrap_or(0)
        ),
    };
    format!(
        "  convolutions {} -> {} ({}) on a periodic {side} grid; {method}",
        grid.channels,
        grid.channels,
        kernels.join(", ")
    )
}

/// The estimated summary: the mean and the variance of the squares, with standard errors.
fn isometry_estimate_text(s: &isometry::Singular, grid: &isometry::conv::Grid) -> String {
    let pm = |v: f64, se: Option<f64>| match se {
        Some(se) => format!("{} +- {}  (estimated)", figure(v), figure(se)),
        None => figure(v),
    };
    let mut text = format!(
        "  {:<16} {}\n",
        "mean of squares",
        pm(s.mean_sq, grid.mean_sq_stderr)
    );
    if let Some(sq) = grid.sq_var {
        text.push_str(&format!(
            "  {:<16} {}\n",
            "var of squares",
            pm(sq, grid.sq_var_stderr)
        ));
    }
    text.push_str("  std, max, min    not estimated (exact with --nonlinearity linear, or without --probes when channels x positions <= 1024)\n");
    text
}

/// The estimated summary of a linear chain: the mean of squares from probes, the largest
/// singular value from the Lanczos method, each labelled.
fn isometry_linear_estimate_text(
    report: &isometry::Report,
    s: &isometry::Singular,
    e: &isometry::Estimate,
) -> String {
    let why = if e.asked {
        "--probes".to_string()
    } else {
        format!(
            "an exact spectrum would accumulate a Jacobian of {} x {} values, over the limit of {} (or the memory available); --probes asks for an estimate anyway",
            report
                .chain
                .iter()
                .map(|l| l.out)
                .max()
                .unwrap_or(report.rows)
                .max(report.cols),
            report.cols,
            isometry::EXACT_LIMIT
        )
    };
    let converged = if e.residual <= isometry::TOLERANCE {
        "converged"
    } else {
        "NOT converged"
    };
    format!(
        "  ESTIMATED ({why}): the mean of squares from {} random probes (forward products), +- one standard error; the largest by the Lanczos method on J^T J (forward and reverse products)\n  {:<16} {} +- {}  (estimated)\n  {:<16} {}  (estimated, at most the true value: {} Lanczos steps, {converged}, relative residual {}: an eigenvalue of J^T J lies within that fraction of max^2)\n  std, min         not estimated (exact without --probes when the Jacobian is within the limit)\n",
        e.probes,
        "mean of squares",
        figure(s.mean_sq),
        figure(e.mean_sq_stderr),
        "max",
        figure(s.max),
        e.iterations,
        figure(e.residual),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_chains_show_a_few_depths() {
        assert_eq!(shown_depths(3), [0, 1, 2, 3]);
        assert_eq!(
            shown_depths(998),
            [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 998]
        );
        assert_eq!(shown_depths(100), [0, 1, 2, 5, 10, 20, 50, 100]);
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(figure(0.0), "0");
        assert_eq!(figure(0.221345), "0.221345");
        assert_eq!(figure(5.2e-6), "5.200e-6");
    }
}

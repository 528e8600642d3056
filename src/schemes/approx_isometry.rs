//! Approximate isometry (Lee, Ajanthan, Gould and Torr, ICLR 2020, "A signal propagation
//! perspective for pruning neural networks at initialization"): prune a dense orthogonal
//! initialization with a random mask `M` (the `orthogonal` baseline, bit for bit), then run
//! gradient descent on the kept weights to bring the smaller Gram matrix `G` of `M * W`
//! (`W W^T` or `W^T W`) back towards `gain^2 I`. For convolutions the centre-tap matrix is
//! optimised over the centre tap's slice of the mask (delta-orthogonal, as `orthogonal`).
//!
//! With `V = W / gain` and `E = V V^T - I` (the short side's Gram), one step is
//! `V <- V - lr * M * (E V)`: gradient descent with rate `lr` on `||V V^T - I||_F^2 / 4`,
//! which is `||G - gain^2 I||_F^2 / (4 gain^4)`, so the rate does not depend on the gain. A
//! step that does not lower the objective is rejected and the rate halved (so a rate too
//! large for a layer cannot diverge); a step whose relative error is already below
//! [`CONVERGED`] ends the descent early. The error reported is
//! `||G - gain^2 I||_F / ||gain^2 I||_F = ||V V^T - I||_F / sqrt(n)`, `n = min(out, in)`.
//!
//! The arithmetic is plain f64 loops over the kept weights, in one fixed order (no BLAS,
//! no threads, no runtime-dispatched SIMD), so the result is the same bits on every machine
//! and thread count. A step costs about `sum_j c_j^2` multiply-adds, with `c_j` the kept
//! weights of line `j` of the long side (`d^2 n^2 m` for a random mask), plus `n^2`.

use super::{
    KernelGram, LayerPlan, LayerStats, Minimum, Prepared, Refusal, Rules, SchemeFields, StoredMask,
    Values, at_centre, mask, no_groups, orthogonal,
};
use crate::layer::{Layout, centre_tap};
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order, RowBlocks, Weight};

/// Approximate isometry's rules.
pub struct ApproxIsometry;

/// The values: the descended kept values of the (centre) matrix, row-major over the mask's
/// kept (centre) positions.
struct Descended(Vec<f64>);

impl Values for Descended {
    fn weight(&self, layer: &LayerPlan, mask: &Mask) -> Weight {
        optimised_weight(layer, mask, &self.0)
    }

    fn optimised(&self) -> Option<&[f64]> {
        Some(&self.0)
    }
}

impl Rules for ApproxIsometry {
    fn maker(&self) -> &'static str {
        "scheme \"approx-isometry\""
    }

    fn minimum(&self, layer: &LayerPlan) -> Minimum {
        mask::minimum(layer)
    }

    fn check(&self, layer: &LayerPlan) -> Result<(), Refusal> {
        no_groups("approx-isometry", layer)
    }

    fn expected_nnz(&self, layer: &LayerPlan) -> u64 {
        mask::expected_nnz(layer)
    }

    fn plan_note(&self, layer: &LayerPlan) -> Option<String> {
        Some(format!(
            "approx-isometry: up to {} gradient steps per layer at learning rate {} (ai_steps, ai_lr in [init]); generate records the error each layer reaches",
            layer.isometry.steps, layer.isometry.lr
        ))
    }

    /// The statistics hold the error the descent reaches, so they cost the whole descent.
    fn stats(&self, layer: &LayerPlan, seed: u64) -> LayerStats {
        self.prepare(layer, seed).stats
    }

    /// The mask, the orthogonal matrix (the draws of `orthogonal`), then the descent, here,
    /// so that its error is in the statistics.
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a> {
        let shape = &layer.shape;
        let mut stream = Stream::derive(seed, &layer.name);
        let drawn = mask::draw(layer, &mut stream);
        let q = orthogonal::matrix(shape.out(), shape.inp(), &mut stream);
        let kept = centre_kept(&drawn, shape.taps(), centre_tap(shape.kernel()));
        let optimised = optimise(&q, kept, layer.gain.value, layer.isometry);
        drop(q);
        let stats = LayerStats {
            isometry_error: Some(optimised.error),
            ..mask::stats(layer)
        };
        Prepared::new(layer, drawn, stats, Descended(optimised.values))
    }

    fn costly_stats(&self) -> bool {
        true
    }

    /// The mask is drawn again (cheap), the orthogonal start and the descent are not.
    fn resume<'a>(
        &self,
        layer: &'a LayerPlan,
        seed: u64,
        values: Vec<f64>,
        stats: LayerStats,
    ) -> Option<Prepared<'a>> {
        let mut stream = Stream::derive(seed, &layer.name);
        let drawn = mask::draw(layer, &mut stream);
        Some(Prepared::new(layer, drawn, stats, Descended(values)))
    }

    /// The byte mask and the output matrix; while the descent runs, the Gaussian matrix and
    /// its Q (at most), two Gram matrices and the kept values.
    fn memory(&self, layer: &LayerPlan, _layout: Layout, _threads: usize) -> u64 {
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        let n = out.min(inp);
        let kept = out * inp;
        layer.shape.numel() + out * inp * 8 + (3 * out * inp * 8).max(2 * n * n * 8 + kept * 28)
    }

    /// The byte mask and the optimised values, 8 bytes per kept centre weight.
    fn prepared_memory(&self, layer: &LayerPlan) -> u64 {
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        layer.shape.numel() + 8 * mask::ones(layer.density, out * inp)
    }

    /// The descent's settings.
    fn record(&self, layer: &LayerPlan) -> SchemeFields {
        SchemeFields {
            ai_steps: Some(layer.isometry.steps),
            ai_lr: Some(layer.isometry.lr),
            ..SchemeFields::default()
        }
    }

    /// It starts from `orthogonal`'s matrix: orthogonal only unmasked.
    fn promises_orthogonality(&self, density: f64) -> bool {
        density == 1.0
    }

    fn kernel_gram(&self) -> KernelGram {
        KernelGram::Centre
    }

    fn check_mask(&self, stored: &StoredMask<'_>) -> Vec<String> {
        mask::check_count(stored)
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
    let tap = centre_tap(layer.shape.kernel());
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
    at_centre(layer, Grid::new(out, inp, Order::RowMajor, matrix))
}

/// Descent settings (`ai_steps`, `ai_lr` in `[init]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// The most gradient steps (tried steps, rejected ones included).
    pub steps: u32,
    /// The initial learning rate, > 0.
    pub lr: f64,
}

/// The defaults: see docs/spec.md ("Schemes", approx-isometry) for the measurements behind them.
pub const DEFAULT: Settings = Settings {
    steps: 100,
    lr: 1.0,
};

/// The relative error below which the descent stops: far below what any stored dtype keeps.
pub const CONVERGED: f64 = 1e-12;

/// The kept weights of a matrix grouped by lines of its long side: column `j` of a wide or
/// square matrix (entries indexed by row), row `j` of a tall one (entries indexed by column).
/// Within a line, entries are in increasing index order.
struct Lines {
    /// The short side.
    n: usize,
    /// Entries of line `j`: `start[j]..start[j + 1]`.
    start: Vec<usize>,
    index: Vec<u32>,
}

impl Lines {
    fn line(&self, j: usize) -> std::ops::Range<usize> {
        self.start[j]..self.start[j + 1]
    }

    fn lines(&self) -> usize {
        self.start.len() - 1
    }

    /// The full symmetric Gram matrix `sum_j v_j v_j^T` of `value` into `g` (n x n,
    /// row-major): the upper triangle line by line, then mirrored.
    fn gram(&self, value: &[f64], g: &mut [f64]) {
        let n = self.n;
        g.fill(0.0);
        for j in 0..self.lines() {
            let range = self.line(j);
            let (index, value) = (&self.index[range.clone()], &value[range]);
            for (p, (&r, &a)) in index.iter().zip(value).enumerate() {
                let row = &mut g[r as usize * n..][..n];
                for (&k, &b) in index[p..].iter().zip(&value[p..]) {
                    row[k as usize] += a * b;
                }
            }
        }
        for i in 0..n {
            for k in i + 1..n {
                g[k * n + i] = g[i * n + k];
            }
        }
    }
}

/// `||G - I||_F^2` of a full symmetric Gram matrix, summed row by row.
fn objective(g: &[f64], n: usize) -> f64 {
    let mut sum = 0.0;
    for i in 0..n {
        let row = &g[i * n..][..n];
        let mut off = 0.0;
        for &x in &row[i + 1..] {
            off += x * x;
        }
        let d = row[i] - 1.0;
        sum += d * d + 2.0 * off;
    }
    sum
}

/// The result of the descent.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimised {
    /// The kept weights of `W` (gain included), row-major over the kept positions.
    pub values: Vec<f64>,
    /// `||G - gain^2 I||_F / ||gain^2 I||_F` of the optimised matrix, computed in f64.
    pub error: f64,
    /// The same for the starting point.
    pub start_error: f64,
}

/// Optimises the kept entries of the `rows x cols` matrix `q` (the unscaled start), kept
/// where `kept(i, j)`; the result is multiplied by `gain`.
pub fn optimise(
    q: &Grid<f64>,
    kept: impl Fn(usize, usize) -> bool,
    gain: f64,
    settings: Settings,
) -> Optimised {
    let (rows, cols) = (q.rows(), q.cols());
    let tall = rows > cols;
    let (n, m) = (rows.min(cols), rows.max(cols));
    // Lines of the long side; `order[t]` is the row-major rank of the t-th entry.
    let mut count = vec![0usize; m + 1];
    let mut positions: Vec<(usize, usize)> = Vec::new();
    for i in 0..rows {
        for j in 0..cols {
            if kept(i, j) {
                positions.push((i, j));
                count[if tall { i } else { j } + 1] += 1;
            }
        }
    }
    for j in 0..m {
        count[j + 1] += count[j];
    }
    let nnz = positions.len();
    let mut index = vec![0u32; nnz];
    let mut value = vec![0.0; nnz];
    let mut order = vec![0usize; nnz];
    let mut cursor = count.clone();
    for (rank, &(i, j)) in positions.iter().enumerate() {
        let (line, at) = if tall { (i, j) } else { (j, i) };
        let slot = cursor[line];
        cursor[line] += 1;
        index[slot] = at as u32;
        value[slot] = q.get(i, j);
        order[slot] = rank;
    }
    drop(positions);
    let lines = Lines {
        n,
        start: count,
        index,
    };

    let mut g = vec![0.0; n * n];
    let mut g_next = vec![0.0; n * n];
    lines.gram(&value, &mut g);
    let mut loss = objective(&g, n);
    let start_loss = loss;
    let mut next = vec![0.0; nnz];
    let mut lr = settings.lr;
    let relative = |loss: f64| (loss / n as f64).sqrt();
    for _ in 0..settings.steps {
        if nnz == 0 || relative(loss) <= CONVERGED {
            break;
        }
        for j in 0..lines.lines() {
            let range = lines.line(j);
            let index = &lines.index[range.clone()];
            let (value, next) = (&value[range.clone()], &mut next[range]);
            for ((&r, &a), slot) in index.iter().zip(value).zip(next.iter_mut()) {
                let row = &g[r as usize * n..][..n];
                let mut s = -a;
                for (&k, &b) in index.iter().zip(value) {
                    s += row[k as usize] * b;
                }
                *slot = a - lr * s;
            }
        }
        lines.gram(&next, &mut g_next);
        let next_loss = objective(&g_next, n);
        if next_loss <= loss {
            std::mem::swap(&mut value, &mut next);
            std::mem::swap(&mut g, &mut g_next);
            loss = next_loss;
        } else {
            lr *= 0.5;
        }
    }
    let mut values = vec![0.0; nnz];
    for (slot, &rank) in order.iter().enumerate() {
        values[rank] = gain * value[slot];
    }
    Optimised {
        values,
        error: relative(loss),
        start_error: relative(start_loss),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::orthogonal;
    use crate::stream::Stream;

    /// `||W W^T - g^2 I||_F / (g^2 sqrt(n))` (smaller side), straight from the definition.
    fn error(rows: usize, cols: usize, w: &[f64], gain: f64) -> f64 {
        let (n, m) = (rows.min(cols), rows.max(cols));
        let at = |a: usize, k: usize| {
            if rows <= cols {
                w[a * cols + k]
            } else {
                w[k * cols + a]
            }
        };
        let mut sum = 0.0;
        for a in 0..n {
            for b in 0..n {
                let dot: f64 = (0..m).map(|k| at(a, k) * at(b, k)).sum();
                let want = if a == b { gain * gain } else { 0.0 };
                sum += (dot - want) * (dot - want);
            }
        }
        sum.sqrt() / (gain * gain * (n as f64).sqrt())
    }

    fn case(rows: usize, cols: usize, density: f64, gain: f64, settings: Settings) {
        let mut s = Stream::derive(9, "ai");
        let q = orthogonal::matrix(rows, cols, &mut s);
        let mask = crate::schemes::mask::choose(
            rows * cols,
            (density * (rows * cols) as f64).round() as usize,
            &mut s,
        );
        let kept = |i: usize, j: usize| mask[i * cols + j] != 0;
        let result = optimise(&q, kept, gain, settings);
        let mut dense = vec![0.0; rows * cols];
        let mut start = vec![0.0; rows * cols];
        let mut values = result.values.iter();
        for i in 0..rows {
            for j in 0..cols {
                if kept(i, j) {
                    dense[i * cols + j] = *values.next().unwrap();
                    start[i * cols + j] = gain * q.get(i, j);
                }
            }
        }
        assert!(values.next().is_none());
        let (e, e0) = (
            error(rows, cols, &dense, gain),
            error(rows, cols, &start, gain),
        );
        assert!(
            (e - result.error).abs() <= 1e-12 * e0,
            "{e} {}",
            result.error
        );
        assert!((e0 - result.start_error).abs() <= 1e-12 * e0);
        assert!(e < 0.5 * e0, "{rows}x{cols}: {e} from {e0}");
    }

    #[test]
    fn descent_lowers_the_error_that_it_reports() {
        let settings = Settings {
            steps: 200,
            lr: 1.0,
        };
        case(24, 24, 0.3, 1.0, settings);
        case(12, 30, 0.25, 2.5, settings);
        case(30, 12, 0.25, 0.7, settings);
    }

    #[test]
    fn no_steps_keep_the_start_and_an_orthogonal_start_stops_at_once() {
        let mut s = Stream::derive(1, "ai");
        let q = orthogonal::matrix(6, 9, &mut s);
        let none = Settings { steps: 0, lr: 1.0 };
        let all = |_: usize, _: usize| true;
        let r = optimise(&q, all, 2.0, none);
        let want: Vec<f64> = (0..6)
            .flat_map(|i| (0..9).map(move |j| (i, j)))
            .map(|(i, j)| 2.0 * q.get(i, j))
            .collect();
        assert_eq!(r.values, want);
        assert_eq!(r.error, r.start_error);
        assert!(r.error < 1e-14);
        // Dense and orthogonal already: converged before the first step.
        let many = Settings {
            steps: 1000,
            lr: 1.0,
        };
        assert_eq!(optimise(&q, all, 2.0, many).values, want);
    }

    #[test]
    fn a_rate_too_large_is_halved_not_followed() {
        let settings = Settings { steps: 60, lr: 1e6 };
        case(16, 16, 0.4, 1.0, settings);
    }
}

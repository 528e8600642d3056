//! Sparsity-Aware Orthogonal initialization (SAO; Esguerra et al. 2023), the paper's main
//! competitor: a sparse orthogonal matrix on the structure of a regular bipartite
//! (Ramanujan-like) graph. For a matrix with n = min and m = max of its shape and a degree k,
//! the m long-side indices are split into m/k groups of k; each of the n short-side lines
//! (rows of the n x m working matrix) is connected to one group, line r to group
//! `r mod (m/k)`, so each group serves `a = n k / m` lines. The lines of one group take `a`
//! orthonormal vectors of length k, and lines of different groups have disjoint supports,
//! so the rows are exactly orthonormal: every short-side line has k nonzeros, every long-side
//! line `a`. SAO therefore exists only for densities `d = k / m` with k dividing m and `n k`
//! a multiple of m.
//!
//! Ours is seeded: the groups are consecutive runs of a uniformly random permutation of the
//! long side, and each group's vectors are the Q of a Gaussian k x a matrix (see
//! [`super::orthogonal`]). SAO's reference code builds its groups by rejection sampling and
//! ties each group to `orth` of a uniform matrix; the structure and the orthogonality are
//! the same. Convolutions get the SAO matrix at the centre tap, and the mask covers the whole
//! kernel slice of every connected channel pair, as SAO's delta construction does. SAO's
//! variant for ReLU networks (a half-size matrix mirrored as `[[W, -W], [-W, W]]`) is not
//! made: the gain is the only nonlinearity-specific setting here, as for every scheme.

use super::{
    KernelGram, LayerPlan, LayerStats, Minimum, Prepared, Refusal, Rules, SchemeFields, StoredMask,
    Values, at_centre, mask, no_groups, orthogonal,
};
use crate::layer::{Kind, Layout};
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order, Weight};

/// SAO's rules.
pub struct Sao;

/// A SAO layer's degree; the plan admits only densities that have one.
fn layer_degree(layer: &LayerPlan) -> usize {
    let (out, inp) = (layer.shape.out(), layer.shape.inp());
    // The plan refuses other densities; the nearest degree keeps this total regardless.
    degree(out, inp, layer.density)
        .unwrap_or_else(|| ((layer.density * out.max(inp) as f64).round() as usize).max(1))
}

/// The statistics of a SAO layer: `n k` nonzeros in the matrix, on every tap of a kernel.
fn layer_stats(layer: &LayerPlan, degree: usize) -> LayerStats {
    let shape = &layer.shape;
    let centre = shape.out().min(shape.inp()) as u64 * degree as u64;
    LayerStats {
        numel: shape.numel(),
        nnz: centre * shape.taps() as u64,
        rotations: None,
        centre_nnz: (layer.kind() == Kind::Conv).then_some(centre),
        isometry_error: None,
    }
}

/// The values: the structure's matrix, drawn from where the structure left the stream.
struct Matrix {
    structure: Structure,
    stream: Stream,
}

impl Values for Matrix {
    fn weight(&self, layer: &LayerPlan, _mask: &Mask) -> Weight {
        let matrix = self
            .structure
            .matrix(layer.gain.value, &mut self.stream.clone());
        at_centre(layer, matrix)
    }
}

impl Rules for Sao {
    fn maker(&self) -> &'static str {
        "scheme \"sao\""
    }

    /// Its smallest degree over `max(out, in)`.
    fn minimum(&self, layer: &LayerPlan) -> Minimum {
        let (out, inp) = (layer.shape.out(), layer.shape.inp());
        let (n, m) = (out.min(inp), out.max(inp));
        let density = minimum_density(out, inp);
        Minimum {
            density,
            reason: format!(
                "its smallest degree {} over max({out}, {inp}): the degree must divide {m} and make {n} * degree / {m} whole",
                (density * m as f64).round(),
            ),
            help: None,
        }
    }

    /// No groups, and only densities `k / max(out, in)` with a degree k ([`degree`]).
    fn check(&self, layer: &LayerPlan) -> Result<(), Refusal> {
        no_groups("sao", layer)?;
        let (out, inp) = (layer.shape.out(), layer.shape.inp());
        if degree(out, inp, layer.density).is_some() {
            return Ok(());
        }
        let m = out.max(inp);
        let (lower, upper) = nearest(out, inp, layer.density);
        let show = |d: Option<f64>| match d {
            Some(d) => format!("{d} (degree {})", (d * m as f64).round()),
            None => "none".into(),
        };
        Err(Refusal {
            field: None,
            density: true,
            message: format!(
                "which scheme \"sao\" cannot make for shape {}: SAO makes densities degree / {m} with the degree dividing {m} and {} * degree / {m} whole; the nearest are {} below and {} above",
                layer.shape,
                out.min(inp),
                show(lower),
                show(upper),
            ),
            help: "give the layer one of those densities (its own `density`, or the [sparsity] density with distribution = \"uniform\"); erk and er rarely land on one".into(),
        })
    }

    /// `n k = d numel` exactly; planned, as EOI's, as `round(d * numel)` for a matrix and
    /// `ceil(d * numel)` for a kernel.
    fn expected_nnz(&self, layer: &LayerPlan) -> u64 {
        let exact = layer.density * layer.shape.numel() as f64;
        let nnz = match layer.kind() {
            Kind::Linear => exact.round(),
            Kind::Conv => exact.ceil(),
        };
        (nnz as u64).min(layer.shape.numel())
    }

    fn stats(&self, layer: &LayerPlan, _seed: u64) -> LayerStats {
        layer_stats(layer, layer_degree(layer))
    }

    /// The groups ([`Structure::draw`]), then, in [`Values::weight`], the values
    /// ([`Structure::matrix`]).
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a> {
        let shape = &layer.shape;
        let degree = layer_degree(layer);
        let mut stream = Stream::derive(seed, &layer.name);
        let structure = Structure::draw(shape.out(), shape.inp(), degree, &mut stream);
        let drawn = structure.mask(shape.taps());
        let stats = layer_stats(layer, degree);
        Prepared::new(layer, drawn, stats, Matrix { structure, stream })
    }

    /// The byte mask, the working matrix and its Q.
    fn memory(&self, layer: &LayerPlan, _layout: Layout, _threads: usize) -> u64 {
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        layer.shape.numel() + 2 * out * inp * 8
    }

    /// The degree.
    fn record(&self, layer: &LayerPlan) -> SchemeFields {
        SchemeFields {
            degree: degree(layer.shape.out(), layer.shape.inp(), layer.density),
            ..SchemeFields::default()
        }
    }

    fn promises_orthogonality(&self, _density: f64) -> bool {
        true
    }

    fn kernel_gram(&self) -> KernelGram {
        KernelGram::Centre
    }

    /// Exactly `n k K = d numel` ones.
    fn check_mask(&self, stored: &StoredMask<'_>) -> Vec<String> {
        mask::check_count(stored)
    }
}

/// The degrees SAO can make for a matrix with sides `out` and `inp`, in increasing order:
/// the divisors k of m = max(out, in) with `n k` a multiple of m (n = min(out, in)), i.e.
/// the divisors of m that are multiples of `m / gcd(n, m)`.
pub fn degrees(out: usize, inp: usize) -> Vec<usize> {
    let (n, m) = (out.min(inp), out.max(inp));
    let step = m / gcd(n, m);
    (1..=m / step)
        .map(|t| t * step)
        .filter(|k| m % k == 0)
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The degree of density `density` if it is one SAO can make: `k = d * m` to within
/// rounding (relative 1e-9), k among [`degrees`].
pub fn degree(out: usize, inp: usize, density: f64) -> Option<usize> {
    let m = out.max(inp);
    let k = (density * m as f64).round();
    if k < 1.0 || (density * m as f64 - k).abs() > 1e-9 * k {
        return None;
    }
    let k = k as usize;
    let (n, m) = (out.min(inp), m);
    (k <= m && m % k == 0 && (n * k) % m == 0).then_some(k)
}

/// The nearest densities SAO can make below and above `density` (either may be missing).
pub fn nearest(out: usize, inp: usize, density: f64) -> (Option<f64>, Option<f64>) {
    let m = out.max(inp) as f64;
    let valid: Vec<f64> = degrees(out, inp).iter().map(|&k| k as f64 / m).collect();
    let below = valid.iter().copied().rfind(|&d| d < density);
    let above = valid.iter().copied().find(|&d| d > density);
    (below, above)
}

/// The smallest density SAO can make: `(m / gcd(n, m)) / m`.
pub fn minimum_density(out: usize, inp: usize) -> f64 {
    let m = out.max(inp);
    let step = m / gcd(out.min(inp), m);
    step as f64 / m as f64
}

/// A layer's SAO structure: the groups of the long side, as a permutation.
pub struct Structure {
    out: usize,
    inp: usize,
    degree: usize,
    /// The long side in group order: group g is `permutation[g k..(g + 1) k]`.
    permutation: Vec<usize>,
}

impl Structure {
    /// Draws the groups: a Fisher-Yates shuffle of `0..m`, for `i` from `m - 1` down to 1
    /// swapping position `i` with position [`Stream::below`]`(i + 1)`.
    pub fn draw(out: usize, inp: usize, degree: usize, stream: &mut Stream) -> Structure {
        let m = out.max(inp);
        let mut permutation: Vec<usize> = (0..m).collect();
        for i in (1..m).rev() {
            let j = stream.below(i as u64 + 1) as usize;
            permutation.swap(i, j);
        }
        Structure {
            out,
            inp,
            degree,
            permutation,
        }
    }

    fn n(&self) -> usize {
        self.out.min(self.inp)
    }

    fn m(&self) -> usize {
        self.out.max(self.inp)
    }

    fn groups(&self) -> usize {
        self.m() / self.degree
    }

    /// Nonzeros of the matrix: `n k`.
    pub fn nnz(&self) -> u64 {
        self.n() as u64 * self.degree as u64
    }

    /// The long-side indices connected to short-side line `r`.
    fn group_of(&self, r: usize) -> &[usize] {
        let g = r % self.groups();
        &self.permutation[g * self.degree..(g + 1) * self.degree]
    }

    /// Entry (o, i) of the (out, in) matrix as (short-side line, long-side index).
    fn line_and_index(&self, o: usize, i: usize) -> (usize, usize) {
        if self.out <= self.inp { (o, i) } else { (i, o) }
    }

    /// The mask over (out, in * taps): every tap of each connected pair.
    pub fn mask(&self, taps: usize) -> Mask {
        let mut connected = vec![0u8; self.n() * self.m()];
        for r in 0..self.n() {
            for &c in self.group_of(r) {
                connected[r * self.m() + c] = 1;
            }
        }
        let mut bytes = Vec::with_capacity(self.out * self.inp * taps);
        for o in 0..self.out {
            for i in 0..self.inp {
                let (r, c) = self.line_and_index(o, i);
                let kept = connected[r * self.m() + c];
                bytes.extend(std::iter::repeat_n(kept, taps));
            }
        }
        Mask::Bytes(Grid::new(self.out, self.inp * taps, Order::RowMajor, bytes))
    }

    /// The (out, in) matrix times `gain`, with orthonormal rows (wide) or columns (tall).
    ///
    /// Draws, for each group g in order: a Gaussian k x a matrix, column-major
    /// ([`Stream::fill_normal`]), whose Q gives the `a` lines of the group: column c of Q is
    /// line `c (m / k) + g`, its t-th entry at long-side index `permutation[g k + t]`.
    pub fn matrix(&self, gain: f64, stream: &mut Stream) -> Grid<f64> {
        let (n, m, k) = (self.n(), self.m(), self.degree);
        let groups = self.groups();
        let a = n / groups;
        let mut work = vec![0.0; n * m];
        for g in 0..groups {
            let mut gaussian = vec![0.0; k * a];
            stream.fill_normal(&mut gaussian);
            let q = orthogonal::orthonormal_columns(gaussian, k, a);
            let columns = &self.permutation[g * k..(g + 1) * k];
            for c in 0..a {
                let r = c * groups + g;
                for (t, &index) in columns.iter().enumerate() {
                    work[r * m + index] = gain * q[c * k + t];
                }
            }
        }
        if self.out <= self.inp {
            Grid::new(self.out, self.inp, Order::RowMajor, work)
        } else {
            // The working matrix's rows are the output's columns.
            Grid::new(self.out, self.inp, Order::ColumnMajor, work)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::RowBlocks;

    #[test]
    fn degrees_divide_m_and_fill_whole_groups() {
        assert_eq!(degrees(128, 128), [1, 2, 4, 8, 16, 32, 64, 128]);
        // n = 12, m = 18: gcd 6, step 3; divisors of 18 that are multiples of 3.
        assert_eq!(degrees(12, 18), [3, 6, 9, 18]);
        assert_eq!(degrees(18, 12), [3, 6, 9, 18]);
        // n = 10, m = 128: step 64.
        assert_eq!(degrees(10, 128), [64, 128]);
        assert_eq!(minimum_density(10, 128), 0.5);
        assert_eq!(degree(128, 128, 0.125), Some(16));
        assert_eq!(degree(128, 128, 0.126), None);
        assert_eq!(degree(12, 18, 1.0 / 3.0), Some(6));
        assert_eq!(degree(12, 18, 2.0 / 18.0), None);
        assert_eq!(
            nearest(128, 128, 0.1),
            (Some(8.0 / 128.0), Some(16.0 / 128.0))
        );
        assert_eq!(nearest(10, 128, 0.3), (None, Some(0.5)));
    }

    fn check(out: usize, inp: usize, k: usize, taps: usize) {
        let mut s = Stream::derive(9, "sao");
        let structure = Structure::draw(out, inp, k, &mut s);
        let w = structure.matrix(1.5, &mut s);
        let mask = structure.mask(taps);
        let (n, m) = (out.min(inp), out.max(inp));
        let a = n * k / m;
        let at = |r: usize, c: usize| if out <= inp { w.get(r, c) } else { w.get(c, r) };
        for r1 in 0..n {
            assert_eq!((0..m).filter(|&c| at(r1, c) != 0.0).count(), k, "line {r1}");
            for r2 in 0..n {
                let dot: f64 = (0..m).map(|c| at(r1, c) * at(r2, c)).sum();
                let want = if r1 == r2 { 2.25 } else { 0.0 };
                assert!((dot - want).abs() < 1e-13, "{out}x{inp} k={k}: {dot}");
            }
        }
        for c in 0..m {
            assert_eq!((0..n).filter(|&r| at(r, c) != 0.0).count(), a, "index {c}");
        }
        // The mask is the support, on every tap.
        let mut ones = 0;
        for o in 0..out {
            for i in 0..inp {
                for t in 0..taps {
                    let bit = mask.get(o, i * taps + t);
                    assert_eq!(bit == 1, w.get(o, i) != 0.0);
                    ones += usize::from(bit);
                }
            }
        }
        assert_eq!(ones as u64, structure.nnz() * taps as u64);
    }

    #[test]
    fn rows_are_orthonormal_with_regular_degrees() {
        check(16, 16, 4, 1);
        check(12, 18, 6, 1);
        check(18, 12, 3, 9);
        check(10, 128, 64, 1);
        check(8, 8, 8, 1);
        check(8, 8, 1, 3);
    }
}

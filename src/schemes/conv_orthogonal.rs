//! Block-orthogonal convolution kernels, the `conv-orthogonal` scheme (Xiao et al. 2018,
//! "Dynamical Isometry and a Mean Field Theory of CNNs", Algorithm 1): a dense kernel that
//! is orthogonal as a convolution with periodic boundary while using every tap, unlike the
//! delta-orthogonal kernel, which uses only the centre.
//!
//! Write a kernel W (out, in, k_1, ..., k_D) as its symbol `W(z) = sum_t W_t z^t`, a
//! polynomial in `z_1..z_D` with (out, in) matrix coefficients. On the periodic grid the
//! convolution is block-diagonalised by the DFT, with block `W(z)` at each frequency
//! (`|z_d| = 1`), so the convolution is an isometry exactly when every `W(z)` is one. Xiao
//! et al.'s building block is `F(z_d) = P + (I - P) z_d` with P a symmetric projection:
//! `F^* F = P + (I - P) |z_d|^2 = I`, a unitary kernel of extent 2 along dimension d. With
//! m = max(out, in), n = min(out, in) and M = a Haar-random (out, in) matrix with orthonormal
//! columns (out >= in) or rows (out < in):
//!
//! - out >= in: `W(z) = F_L ... F_1 M`, so `W(z)^* W(z) = I_in`: the convolution is an
//!   isometry (it preserves the norm of every input);
//! - out < in: `W(z) = M F_1 ... F_L`, so `W(z) W(z)^* = I_out`: a co-isometry (its
//!   transpose, the transposed convolution, preserves norms; orthonormal rows);
//!
//! with `k_d - 1` factors along dimension d (m x m), times the gain. The factors are taken
//! in rounds: round s has one factor for each dimension d with `s < k_d - 1`, in dimension
//! order, so a 2-D k x k kernel gets Xiao et al.'s `k - 1` blocks `F(P_s, z_1) F(Q_s, z_2)`.
//! With k = 1 in every dimension (a 1 x 1 kernel, or a linear layer) W is M itself, the
//! `orthogonal` scheme's matrix: the same draws and the same bytes.

use super::{
    KernelGram, LayerPlan, LayerStats, Minimum, Prepared, Refusal, Rules, StoredMask, Values, mask,
    no_groups, orthogonal,
};
use crate::layer::Layout;
use crate::stream::Stream;
use crate::tensor::{Grid, Mask, Order, RowBlocks, Weight};

/// The rules of `conv-orthogonal`: a random mask over a dense block-orthogonal kernel.
pub struct ConvOrthogonal;

/// The values: the kernel drawn from where the mask left the layer's stream.
struct Masked {
    stream: Stream,
}

impl Values for Masked {
    fn weight(&self, layer: &LayerPlan, mask: &Mask) -> Weight {
        masked_block_orthogonal(layer, mask, &mut self.stream.clone())
    }
}

impl Rules for ConvOrthogonal {
    fn maker(&self) -> &'static str {
        "scheme \"conv-orthogonal\""
    }

    fn minimum(&self, layer: &LayerPlan) -> Minimum {
        mask::minimum(layer)
    }

    fn check(&self, layer: &LayerPlan) -> Result<(), Refusal> {
        no_groups("conv-orthogonal", layer)
    }

    fn expected_nnz(&self, layer: &LayerPlan) -> u64 {
        mask::expected_nnz(layer)
    }

    fn stats(&self, layer: &LayerPlan, _seed: u64) -> LayerStats {
        mask::stats(layer)
    }

    /// The mask ([`mask::draw`]), then, in [`Values::weight`], the kernel ([`kernel`]).
    fn prepare<'a>(&self, layer: &'a LayerPlan, seed: u64) -> Prepared<'a> {
        let mut stream = Stream::derive(seed, &layer.name);
        let drawn = mask::draw(layer, &mut stream);
        Prepared::new(layer, drawn, mask::stats(layer), Masked { stream })
    }

    /// The byte mask, the kernel's coefficients and the output, and m x m work matrices.
    fn memory(&self, layer: &LayerPlan, _layout: Layout, _threads: usize) -> u64 {
        let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
        let m = out.max(inp);
        layer.shape.numel() * (8 + 8 + 1) + 4 * m * m * 8
    }

    /// Orthogonal as a convolution, only unmasked.
    fn promises_orthogonality(&self, density: f64) -> bool {
        density == 1.0
    }

    fn kernel_gram(&self) -> KernelGram {
        KernelGram::ZeroLag
    }

    fn check_mask(&self, stored: &StoredMask<'_>) -> Vec<String> {
        mask::check_count(stored)
    }
}

/// The `conv-orthogonal` baseline: a block-orthogonal kernel times the gain (a dense
/// orthogonal matrix for linear layers), kept where the mask is 1.
fn masked_block_orthogonal(layer: &LayerPlan, mask: &Mask, stream: &mut Stream) -> Weight {
    let shape = &layer.shape;
    let kernel = kernel(shape.out(), shape.inp(), shape.kernel(), stream);
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

/// A random symmetric projection `P = U U^T`: U has orthonormal columns spanning a uniformly
/// random subspace of a random dimension r, each of the m coordinates adding one with
/// probability 1/2 (Xiao et al. keep each column of a Haar matrix by a fair coin).
///
/// Draws: m words, one per coin (its top bit); then the m x r Gaussian matrix of
/// [`orthogonal::orthonormal_columns`], column-major, by [`Stream::fill_normal`].
/// Returns U column-major (m x r) and r.
fn projection(m: usize, stream: &mut Stream) -> (Vec<f64>, usize) {
    let r = (0..m).filter(|_| stream.next_u64() >> 63 == 1).count();
    let mut a = vec![0.0; m * r];
    stream.fill_normal(&mut a);
    (orthogonal::orthonormal_columns(a, m, r), r)
}

/// The unscaled kernel of shape (out, in, kernel...), flattened row-major to
/// (out, in * taps) in PyTorch order.
///
/// Draws: M by [`orthogonal::matrix`]`(out, in)`, then the factors' projections
/// ([`projection`]) in round order, each applied as it is drawn.
pub fn kernel(out: usize, inp: usize, kernel: &[usize], stream: &mut Stream) -> Grid<f64> {
    let taps: usize = kernel.iter().product();
    let m = out.max(inp);
    let left = out >= inp;
    let block = out * inp;
    // The coefficients W_t, each (out, in) row-major, t row-major over the kernel.
    let mut coefficients = vec![0.0; taps * block];
    let start = orthogonal::matrix(out, inp, stream);
    for o in 0..out {
        for i in 0..inp {
            coefficients[o * inp + i] = start.get(o, i);
        }
    }
    // Strides of the kernel's dimensions in taps, and the extent reached so far.
    let mut strides = vec![1; kernel.len()];
    for d in (0..kernel.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * kernel[d + 1];
    }
    let mut extent = vec![1; kernel.len()];
    let rounds = kernel.iter().max().map_or(0, |k| k - 1);
    let mut difference = vec![0.0; block];
    for round in 0..rounds {
        for d in 0..kernel.len() {
            if round + 1 >= kernel[d] {
                continue;
            }
            let (u, r) = projection(m, stream);
            extent[d] += 1;
            // W'_t = W_{t - e_d} + P (W_t - W_{t - e_d}) (or (W_t - W_{t - e_d}) P), from
            // the last tap back, so W_{t - e_d} is still the old one when W'_t needs it.
            for t in (0..taps).rev() {
                let coordinate = |j: usize| (t / strides[j]) % kernel[j];
                if (0..kernel.len()).any(|j| coordinate(j) >= extent[j]) {
                    continue;
                }
                let previous = (coordinate(d) > 0).then(|| t - strides[d]);
                let (before, current) = coefficients.split_at_mut(t * block);
                let current = &mut current[..block];
                let previous = previous.map(|p| &before[p * block..(p + 1) * block]);
                for (k, slot) in difference.iter_mut().enumerate() {
                    *slot = current[k] - previous.map_or(0.0, |p| p[k]);
                }
                let projected = if left {
                    project_left(&u, m, r, &difference, inp)
                } else {
                    project_right(&u, m, r, &difference, out)
                };
                for (k, slot) in current.iter_mut().enumerate() {
                    *slot = previous.map_or(0.0, |p| p[k]) + projected[k];
                }
            }
        }
    }
    let mut values = vec![0.0; taps * block];
    for o in 0..out {
        for i in 0..inp {
            for t in 0..taps {
                values[(o * inp + i) * taps + t] = coefficients[t * block + o * inp + i];
            }
        }
    }
    Grid::new(out, inp * taps, Order::RowMajor, values)
}

/// `U (U^T D)` for D (m x cols) row-major and U (m x r) column-major.
fn project_left(u: &[f64], m: usize, r: usize, d: &[f64], cols: usize) -> Vec<f64> {
    let mut inner = vec![0.0; r * cols];
    for j in 0..r {
        let column = &u[j * m..(j + 1) * m];
        let row = &mut inner[j * cols..(j + 1) * cols];
        for (o, &weight) in column.iter().enumerate() {
            for (slot, &x) in row.iter_mut().zip(&d[o * cols..(o + 1) * cols]) {
                *slot += weight * x;
            }
        }
    }
    let mut result = vec![0.0; m * cols];
    for o in 0..m {
        let row = &mut result[o * cols..(o + 1) * cols];
        for j in 0..r {
            let weight = u[j * m + o];
            for (slot, &x) in row.iter_mut().zip(&inner[j * cols..(j + 1) * cols]) {
                *slot += weight * x;
            }
        }
    }
    result
}

/// `(D U) U^T` for D (rows x m) row-major and U (m x r) column-major.
fn project_right(u: &[f64], m: usize, r: usize, d: &[f64], rows: usize) -> Vec<f64> {
    let mut result = vec![0.0; rows * m];
    for o in 0..rows {
        let line = &d[o * m..(o + 1) * m];
        let target = &mut result[o * m..(o + 1) * m];
        for j in 0..r {
            let column = &u[j * m..(j + 1) * m];
            let dot: f64 = line.iter().zip(column).map(|(a, b)| a * b).sum();
            for (slot, &c) in target.iter_mut().zip(column) {
                *slot += dot * c;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `||T x||^2 / ||x||^2` for the periodic cross-correlation T of `w` (out, in, kernel)
    /// on an N^D grid, applied directly (`transpose`: its adjoint, from out to in channels),
    /// for a random x.
    fn norm_ratio(
        w: &Grid<f64>,
        out: usize,
        inp: usize,
        kernel: &[usize],
        n: usize,
        transpose: bool,
        stream: &mut Stream,
    ) -> f64 {
        let dims = kernel.len();
        let cells = n.pow(dims as u32);
        let taps: usize = kernel.iter().product();
        let (from, to) = if transpose { (out, inp) } else { (inp, out) };
        let mut x = vec![0.0; from * cells];
        stream.fill_normal(&mut x);
        let mut y = vec![0.0; to * cells];
        let split = |mut index: usize, sizes: &[usize]| {
            let mut c = vec![0; sizes.len()];
            for d in (0..sizes.len()).rev() {
                c[d] = index % sizes[d];
                index /= sizes[d];
            }
            c
        };
        let grid = vec![n; dims];
        for cell in 0..cells {
            let p = split(cell, &grid);
            for t in 0..taps {
                let s = split(t, kernel);
                let q = (0..dims).fold(0, |acc, d| acc * n + (p[d] + s[d]) % n);
                for o in 0..out {
                    for i in 0..inp {
                        let v = w.get(o, i * taps + t);
                        if transpose {
                            // (T^T y)[i, q] += W[o, i, t] y[o, p].
                            y[i * cells + q] += v * x[o * cells + cell];
                        } else {
                            y[o * cells + cell] += v * x[i * cells + q];
                        }
                    }
                }
            }
        }
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>();
        norm(&y) / norm(&x)
    }

    #[test]
    fn the_kernel_is_an_isometry_or_co_isometry_as_a_periodic_convolution() {
        let mut s = Stream::derive(9, "block-orthogonal");
        for (out, inp, kernel) in [
            (6, 6, vec![3, 3]),
            (8, 5, vec![3, 3]),
            (4, 7, vec![3, 3]),
            (5, 3, vec![4]),
            (3, 5, vec![3]),
            (4, 4, vec![2, 3, 2]),
            (3, 2, vec![1, 3]),
        ] {
            let w = super::kernel(out, inp, &kernel, &mut s);
            for n in [*kernel.iter().max().unwrap(), 5] {
                let ratio = norm_ratio(&w, out, inp, &kernel, n, out < inp, &mut s);
                assert!(
                    (ratio - 1.0).abs() < 1e-12,
                    "{out}x{inp}x{kernel:?} on {n}: {ratio}"
                );
            }
            // Every tap holds a nonzero weight.
            let taps: usize = kernel.iter().product();
            for t in 0..taps {
                let any = (0..out).any(|o| (0..inp).any(|i| w.get(o, i * taps + t) != 0.0));
                assert!(any, "{out}x{inp}x{kernel:?}: tap {t} is zero");
            }
        }
    }

    #[test]
    fn a_one_by_one_kernel_is_the_orthogonal_schemes_matrix() {
        let a = kernel(5, 8, &[1, 1], &mut Stream::derive(3, "w"));
        let b = orthogonal::matrix(5, 8, &mut Stream::derive(3, "w"));
        for o in 0..5 {
            for i in 0..8 {
                assert_eq!(a.get(o, i).to_bits(), b.get(o, i).to_bits());
            }
        }
    }
}

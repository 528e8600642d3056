//! One layer's checks: its weight and mask found and read in PyTorch order, their shapes,
//! the mask's values and the weights outside it, the density against the record, the
//! orthogonality of the matrix (of the centre tap, block by block for groups) where the
//! scheme promises it, the bias and the tied copies.

use std::borrow::Cow;

use super::{Check, Failure, LayerReport, Stored, isometry_tolerance, tolerance};
use crate::layer::{Dtype, Kind, Layout, centre_tap};
use crate::measure::{self, GramStats, Matrix, Scan};
use crate::read::{Checkpoint, ReadError, Tensor};
use crate::records::StoredRecord;
use crate::schemes::nm::Nm;
use crate::schemes::{KernelGram, Scheme, StoredMask};

impl LayerReport {
    fn fail(&mut self, check: Check, message: String) {
        self.failures.push(Failure::new(check, message));
    }
}

/// Checks one layer: its weight and mask are found by the record's names and read in
/// PyTorch order (out, in, k...), so every check below is the same in every layout;
/// positions in messages are in the stored layout.
pub(super) fn check_layer(
    stored: &Stored<'_>,
    name: &str,
    record: Option<&StoredRecord>,
) -> Result<LayerReport, ReadError> {
    let weight_name = stored.recorded.weight_name(name);
    let weight = stored.checkpoint.get(&weight_name);
    let mask = stored.mask(name);
    let mut report = LayerReport {
        name: name.to_string(),
        shape: weight
            .map(|w| w.shape.clone())
            .or_else(|| record.map(|r| stored.stored_shape(&r.shape)))
            .unwrap_or_default(),
        ..LayerReport::default()
    };
    for (missing, what, tensor) in [
        (weight.is_none(), "weight", weight_name),
        (mask.is_none(), "mask", stored.mask_name(name)),
    ] {
        if missing {
            report.fail(
                Check::Tensors,
                format!("the {what} \"{tensor}\" is missing"),
            );
        }
    }
    let weight_ok = weight.is_some_and(|w| check_weight(&mut report, stored, record, w));
    let mask_ok = mask.is_some_and(|m| check_mask_storage(&mut report, m, weight));

    // A linear layer (one group) is measured as stored, from its bytes: the stored matrix
    // or its transpose (Flax's (in, out)) has the same smaller Gram matrix, and positions
    // are mapped to PyTorch order where a failure names one. Other layers are read in
    // PyTorch order as f64 and oriented first (centre taps, stacked taps, groups).
    let linear = weight
        .filter(|w| weight_ok && w.shape.len() == 2)
        .filter(|_| record.is_none_or(|r| r.groups <= 1));
    let bytes = match linear {
        Some(w) => Some(w.read_bytes()?),
        None => None,
    };
    let matrix = linear.zip(bytes.as_deref()).map(|(w, bytes)| {
        Matrix::stored(bytes, w.dtype, w.shape[0], w.shape[1])
            .transposed(stored.layout == Layout::Flax)
    });

    // From here on, values, bits and shapes are in PyTorch order.
    let values = match weight {
        Some(w) if weight_ok && linear.is_none() => Some(stored.read_f64(&w)?),
        _ => None,
    };
    let torch = weight.map(|w| stored.torch_shape(&w.shape));
    let mut scanned = None;
    if let Some(m) = mask.filter(|_| mask_ok) {
        let stored_bits = mask_bytes(&m)?;
        if let Some(matrix) = &matrix {
            scanned = Some(measure::scan(matrix, Some(&stored_bits)));
        }
        let bits = stored.layout.torch_order(stored_bits, &m.shape);
        let outside = match (&scanned, &values) {
            (Some(scan), _) => Some(Outside {
                count: scan.outside,
                first: scan.first_outside,
            }),
            (None, Some(values)) => Some(Outside::of(values, &bits)),
            (None, None) => None,
        };
        let shape = stored.torch_shape(&m.shape);
        check_mask(&mut report, stored, record, &bits, outside, &shape);
    }

    // Orthogonality where the scheme promises it; the other schemes' orthogonality error
    // (of the (out, in * K) flattening) is reported, not judged.
    let scheme = record.map_or(Scheme::default(), |r| r.scheme);
    report.scheme = Some(scheme);
    report.promises_orthogonality =
        record.is_none_or(|r| scheme.rules().promises_orthogonality(r.density));
    let dtype = weight.as_ref().map(|w| w.dtype);
    let (matrix, values) = (matrix.as_ref(), values.as_deref());
    check_measured(
        &mut report,
        stored,
        record,
        (matrix, scanned, values),
        dtype,
        torch.as_deref(),
    );
    if let Some((bias, std)) = record.and_then(|r| r.bias()) {
        let out = torch
            .as_ref()
            .or(record.map(|r| &r.shape))
            .and_then(|s| s.first().copied());
        check_bias(&mut report, stored.checkpoint, weight, out, bias, std)?;
    }
    if let (Some(record), Some(weight)) = (record, weight) {
        check_tied(&mut report, stored.checkpoint, weight, &record.tied)?;
    }
    Ok(report)
}

/// Measures the layer, from its stored matrix (`matrix`, with its mask's `scanned` counts)
/// or from its values in PyTorch order, and checks its orthogonality.
fn check_measured(
    report: &mut LayerReport,
    stored: &Stored<'_>,
    record: Option<&StoredRecord>,
    (matrix, scanned, values): (Option<&Matrix<'_>>, Option<Scan>, Option<&[f64]>),
    dtype: Option<Dtype>,
    torch: Option<&[usize]>,
) {
    match (matrix, values, dtype, torch) {
        (Some(matrix), _, Some(dtype), Some(shape)) => {
            let scan = scanned.unwrap_or_else(|| measure::scan(matrix, None));
            let measured = Measured {
                grams: vec![gram_stats(matrix, &scan)],
                rows: shape[0],
                cols: shape[1],
                delta: false,
                stacked: false,
            };
            check_orthogonality(report, record, measured, dtype);
        }
        (None, Some(values), Some(dtype), Some(shape)) => {
            let measured = measure_oriented(report, stored, record, values, shape);
            check_orthogonality(report, record, measured, dtype);
        }
        _ => {}
    }
}

/// The weight's rank and dtype, and its shape against the record; whether its values can
/// be measured.
fn check_weight(
    report: &mut LayerReport,
    stored: &Stored<'_>,
    record: Option<&StoredRecord>,
    w: Tensor<'_>,
) -> bool {
    report.dtype = Some(w.dtype);
    let mut ok = true;
    if !(2..=5).contains(&w.shape.len()) {
        report.fail(
            Check::Shape,
            format!(
                "the weight has shape {:?}; a layer has rank 2 to 5",
                w.shape
            ),
        );
        ok = false;
    } else {
        report.kind = Some(if w.shape.len() == 2 {
            Kind::Linear
        } else {
            Kind::Conv
        });
    }
    if !w.dtype.is_float() {
        report.fail(
            Check::Shape,
            format!(
                "the weight has dtype {}; a weight is floating-point",
                w.dtype
            ),
        );
        ok = false;
    }
    if let Some(r) = record
        && r.shape != stored.torch_shape(&w.shape)
    {
        let layout = match stored.layout {
            Layout::Torch => String::new(),
            layout => format!(
                " ({:?} in {} layout)",
                stored.stored_shape(&r.shape),
                layout.name()
            ),
        };
        report.fail(
            Check::Shape,
            format!(
                "the weight has shape {:?}, the record says {:?}{layout}",
                w.shape, r.shape
            ),
        );
    }
    ok
}

/// The mask's dtype, and its shape against the weight's; whether its values can be read.
fn check_mask_storage(report: &mut LayerReport, m: Tensor<'_>, weight: Option<Tensor<'_>>) -> bool {
    let mut ok = true;
    if !(matches!(m.dtype, Dtype::Bool | Dtype::U8) || m.dtype.is_float()) {
        report.fail(
            Check::Shape,
            format!(
                "the mask has dtype {}; eoi writes masks as bool, u8 or floating-point 0 and 1",
                m.dtype
            ),
        );
        ok = false;
    }
    if let Some(w) = weight
        && m.shape != w.shape
    {
        report.fail(
            Check::Shape,
            format!("the mask has shape {:?}, the weight {:?}", m.shape, w.shape),
        );
        ok = false;
    }
    ok
}

/// The nonzero weights outside a mask: how many, and the first in PyTorch order (its flat
/// index there) with its value.
#[derive(Clone, Copy, Debug)]
struct Outside {
    count: u64,
    first: Option<(usize, f64)>,
}

impl Outside {
    /// Of `values` against `bits`, both in PyTorch order.
    fn of(values: &[f64], bits: &[u8]) -> Outside {
        let mut outside = Outside {
            count: 0,
            first: None,
        };
        for (k, (&v, &b)) in values.iter().zip(bits).enumerate() {
            if v != 0.0 && b == 0 {
                outside.count += 1;
                outside.first.get_or_insert((k, v));
            }
        }
        outside
    }
}

/// The mask's values (0 or 1), the weights outside it, and its nonzeros and density against
/// the record; `bits` in PyTorch order, of PyTorch shape `shape`.
fn check_mask(
    report: &mut LayerReport,
    stored: &Stored<'_>,
    record: Option<&StoredRecord>,
    bits: &[u8],
    outside: Option<Outside>,
    shape: &[usize],
) {
    let (nnz, invalid) = mask_counts(bits);
    if invalid > 0 {
        let first = bits.iter().position(|&b| b > 1).unwrap_or(0);
        report.fail(
            Check::Mask,
            format!(
                "{invalid} mask values are neither 0 nor 1, first at {}",
                stored.position(shape, first)
            ),
        );
    }
    report.nnz = Some(nnz);
    report.density = (!bits.is_empty()).then(|| nnz as f64 / bits.len() as f64);
    if let Some(Outside {
        count,
        first: Some((first, value)),
    }) = outside
    {
        report.fail(
            Check::Mask,
            format!(
                "{count} nonzero weights outside the mask, first at {} (value {value:e})",
                stored.position(shape, first),
            ),
        );
    }
    if let Some(r) = record {
        check_density(report, r, nnz, bits, shape);
    }
}

/// The matrix whose Gram matrix shows the orthogonality a layer's scheme gives, row-major.
struct Oriented<'v> {
    matrix: Cow<'v, [f64]>,
    rows: usize,
    cols: usize,
    /// The centre tap of a delta-orthogonal kernel.
    delta: bool,
    /// A block-orthogonal kernel's (in, out * K) flattening.
    stacked: bool,
}

/// What a layer's orthogonality is judged on: the Gram statistics of each group's block of
/// the matrix its scheme makes orthogonal (one block but for grouped convolutions).
struct Measured {
    grams: Vec<GramStats>,
    /// A block's rows and columns.
    rows: usize,
    cols: usize,
    /// The centre tap of a delta-orthogonal kernel.
    delta: bool,
    /// A block-orthogonal kernel's (in, out * K) flattening.
    stacked: bool,
}

/// The Gram statistics of `matrix`, by the cheaper product (sparse from the nonzeros, or
/// dense), spread over the threads when the matrix is large.
fn gram_stats(matrix: &Matrix<'_>, scan: &Scan) -> GramStats {
    let (n, m) = matrix.gram_dims();
    let parallel = measure::parallelism(n, m) != faer::Par::Seq;
    measure::gram::gram(matrix, scan, None, parallel, false).0
}

/// A layer read in PyTorch order as f64 (convolutions): the matrix its scheme makes
/// orthogonal ([`orient`]), measured block by block for a grouped convolution.
fn measure_oriented(
    report: &mut LayerReport,
    stored: &Stored<'_>,
    record: Option<&StoredRecord>,
    values: &[f64],
    shape: &[usize],
) -> Measured {
    let gram = report.scheme.unwrap_or_default().rules().kernel_gram();
    let Oriented {
        matrix,
        rows,
        cols,
        delta,
        stacked,
    } = orient(report, stored, values, shape, gram);
    // A grouped convolution is block diagonal as an operator: each group's block of
    // rows (out/G of them, over the group's own inputs) is judged on its own.
    // (A record whose groups do not fit the file's shape is judged as one block; the
    // shape check has failed it already.)
    let groups = record.map_or(1, |r| r.groups).max(1).min(rows.max(1));
    let groups = if rows % groups == 0 { groups } else { 1 };
    let rows = rows / groups;
    let whole = Matrix::f64(&matrix, rows * groups, cols);
    let grams = (0..groups)
        .map(|b| {
            let block = whole.rows_block(b * rows, rows);
            gram_stats(&block, &measure::scan(&block, None))
        })
        .collect();
    Measured {
        grams,
        rows,
        cols,
        delta,
        stacked,
    }
}

/// The orthogonality of the matrix (linear), the centre tap with every other tap zero
/// (delta-orthogonal kernels) or the zero lag (block-orthogonal kernels), block by block for
/// a grouped convolution, against `gain^2 I` to the rounding of the stored dtype; for
/// approximate isometry, the isometry error against the record.
fn check_orthogonality(
    report: &mut LayerReport,
    record: Option<&StoredRecord>,
    measured: Measured,
    dtype: Dtype,
) {
    let Measured {
        grams,
        rows,
        cols,
        delta,
        stacked,
    } = measured;
    let groups = grams.len();
    let (gain, estimated) = match record {
        Some(r) => (r.gain, false),
        None => (grams[0].mean_diagonal().sqrt(), true),
    };
    let error = grams
        .iter()
        .map(|g| g.deviation(gain * gain))
        .fold(0.0, |worst: f64, e| {
            if worst.is_nan() || e.is_nan() {
                f64::NAN
            } else {
                worst.max(e)
            }
        });
    let tol = tolerance(dtype, gain, rows.max(cols)).filter(|_| report.promises_orthogonality);
    report.gain = Some(gain);
    report.orthogonality_error = Some(error);
    report.tolerance = tol;
    if let Some(recorded) = record.and_then(|r| r.isometry_error) {
        // (approx-isometry has one group: the plan refuses it for grouped layers.)
        let measured = grams[0].relative_frobenius(gain * gain);
        check_isometry_error(report, measured, recorded, dtype, rows, cols);
    }
    if let Some(tol) = tol
        && (error.is_nan() || error > tol)
    {
        let what = if !delta { "W" } else { "the centre tap H" };
        let (what, over) = if groups > 1 {
            (
                "B",
                format!(" over each of the {groups} groups' blocks B of {what}"),
            )
        } else {
            (what, String::new())
        };
        let product = if stacked {
            "sum over taps of W_t^T W_t".to_string()
        } else if rows <= cols {
            format!("{what} {what}^T")
        } else {
            format!("{what}^T {what}")
        };
        report.fail(
            Check::Orthogonality,
            format!(
                "max |{product} - gain^2 I|{over} = {error:.3e} exceeds the tolerance {tol:.3e} for {dtype} (gain {gain}{})",
                if estimated {
                    ", estimated: no record"
                } else {
                    ""
                }
            ),
        );
    }
}

/// The matrix of a weight of PyTorch shape `shape` whose Gram matrix `gram` judges: the
/// (out, in * K) flattening, a block-orthogonal kernel's (in, out * K) one when it has more
/// outputs than inputs, or a delta-orthogonal kernel's centre tap, whose other taps must be
/// zero (checked here).
fn orient<'v>(
    report: &mut LayerReport,
    stored: &Stored<'_>,
    values: &'v [f64],
    shape: &[usize],
    gram: KernelGram,
) -> Oriented<'v> {
    let (out, inp) = (shape[0], shape[1]);
    let kernel = &shape[2..];
    let taps: usize = kernel.iter().product();
    let gram = if taps > 1 {
        gram
    } else {
        KernelGram::Flattened
    };
    let delta = gram == KernelGram::Centre;
    // A block-orthogonal kernel is orthogonal as a convolution; of that, what a Gram
    // matrix shows is the zero lag, `sum_t W_t^T W_t = gain^2 I` (out >= in) or
    // `sum_t W_t W_t^T = gain^2 I` (out < in): the Gram of the (in, out * K) or the
    // (out, in * K) flattening.
    let stacked = gram == KernelGram::ZeroLag && out > inp;
    let (matrix, rows, cols): (Cow<'_, [f64]>, usize, usize) = if stacked {
        let mut by_input = Vec::with_capacity(values.len());
        for i in 0..inp {
            for o in 0..out {
                let start = (o * inp + i) * taps;
                by_input.extend_from_slice(&values[start..start + taps]);
            }
        }
        (by_input.into(), inp, out * taps)
    } else if !delta {
        (values.into(), out, inp * taps)
    } else {
        let tap = centre_tap(kernel);
        let off = values
            .iter()
            .enumerate()
            .filter(|(k, v)| k % taps != tap && **v != 0.0)
            .map(|(k, _)| k)
            .collect::<Vec<_>>();
        if let Some(&first) = off.first() {
            report.fail(
                Check::OffCentre,
                format!(
                    "{} nonzero weights off the centre tap, first at {} (value {:e})",
                    off.len(),
                    stored.position(shape, first),
                    values[first]
                ),
            );
        }
        let centre: Vec<f64> = values.iter().skip(tap).step_by(taps).copied().collect();
        (centre.into(), out, inp)
    };
    Oriented {
        matrix,
        rows,
        cols,
        delta,
        stacked,
    }
}

/// Approximate isometry: the isometry error `measured` of the stored weight (its `rows x
/// cols` matrix) against the error the record states, to [`isometry_tolerance`].
fn check_isometry_error(
    report: &mut LayerReport,
    measured: f64,
    recorded: f64,
    dtype: Dtype,
    rows: usize,
    cols: usize,
) {
    report.isometry_error = Some(measured);
    report.recorded_isometry_error = Some(recorded);
    if let Some(allowed) = isometry_tolerance(dtype, recorded, rows.min(cols), rows.max(cols))
        && ((measured - recorded).abs() > allowed || measured.is_nan())
    {
        report.fail(
            Check::Orthogonality,
            format!(
                "the isometry error ||G - gain^2 I||_F / ||gain^2 I||_F of the stored weight is {measured:.6e}, but the record says {recorded:.6e} (tolerance {allowed:.2e} for {dtype})"
            ),
        );
    }
}

/// Tied parameters the file holds (a `--base` output writes each tied name the base had)
/// must hold the weight's exact bytes, or the model would not be tied on load. Tied names
/// the file does not hold (a checkpoint saved one tensor per storage) are fine.
fn check_tied(
    report: &mut LayerReport,
    checkpoint: &Checkpoint,
    weight: Tensor<'_>,
    tied: &[String],
) -> Result<(), ReadError> {
    let mut bytes = None;
    for name in tied {
        let Some(copy) = checkpoint.get(name) else {
            continue;
        };
        if copy.shape != weight.shape || copy.dtype != weight.dtype {
            report.failures.push(Failure::new(
                Check::Tensors,
                format!(
                    "the tied tensor \"{name}\" is {:?} {}, the weight {:?} {}",
                    copy.shape, copy.dtype, weight.shape, weight.dtype
                ),
            ));
            continue;
        }
        if bytes.is_none() {
            bytes = Some(weight.read_bytes()?);
        }
        if bytes.as_ref() != Some(&copy.read_bytes()?) {
            report.failures.push(Failure::new(
                Check::Tensors,
                format!("the tied tensor \"{name}\" does not hold the weight's bytes"),
            ));
        }
    }
    Ok(())
}

/// Log-probability bound of the bias std check: a correct bias fails it with probability
/// below `2 e^-20` (about 4e-9).
const BIAS_TAIL: f64 = 20.0;

/// The range the mean square of `n` draws of N(0, std^2), over `std^2`, lies in except with
/// probability `2 e^-x`: `n` times it is chi-square with `n` degrees of freedom, and by
/// Laurent and Massart (2000) `P(X - n >= 2 sqrt(n x) + 2 x) <= e^-x` and
/// `P(n - X >= 2 sqrt(n x)) <= e^-x`.
pub fn bias_range(n: usize, x: f64) -> (f64, f64) {
    let n = n as f64;
    (
        (1.0 - 2.0 * (x / n).sqrt()).max(0.0),
        1.0 + 2.0 * (x / n).sqrt() + 2.0 * x / n,
    )
}

/// Checks a recorded bias: present, shape (out,), the weight's dtype, and values drawn with
/// the recorded std (exactly zero for 0; otherwise a mean square within [`bias_range`]).
fn check_bias(
    report: &mut LayerReport,
    checkpoint: &Checkpoint,
    weight: Option<Tensor<'_>>,
    out: Option<usize>,
    bias: &str,
    std: f64,
) -> Result<(), ReadError> {
    report.bias = Some(bias.to_string());
    let mut fail = |message: String| report.failures.push(Failure::new(Check::Bias, message));
    let Some(info) = checkpoint.get(bias) else {
        fail(format!("the bias \"{bias}\" is missing"));
        return Ok(());
    };
    if out.is_none_or(|out| info.shape != [out]) {
        fail(format!(
            "the bias \"{bias}\" has shape {:?}; the layer's bias has shape [{}]",
            info.shape,
            or_unknown(out)
        ));
        return Ok(());
    }
    if !info.dtype.is_float() || weight.is_some_and(|w| w.dtype != info.dtype) {
        fail(format!(
            "the bias \"{bias}\" has dtype {}; eoi writes a bias in its weight's dtype{}",
            info.dtype,
            weight.map_or(String::new(), |w| format!(" ({})", w.dtype))
        ));
        return Ok(());
    }
    let values = info.read_f64()?;
    let measured = (values.iter().map(|v| v * v).sum::<f64>() / values.len() as f64).sqrt();
    report.bias_std = Some(measured);
    if std == 0.0 {
        if let Some(first) = values.iter().position(|&v| v != 0.0) {
            fail(format!(
                "the bias \"{bias}\" is recorded with std 0 but {} values are nonzero, first at ({first}) (value {})",
                values.iter().filter(|&&v| v != 0.0).count(),
                figure(values[first])
            ));
        }
        return Ok(());
    }
    let (low, high) = bias_range(values.len(), BIAS_TAIL);
    let ratio = (measured / std).powi(2);
    if ratio.is_nan() || ratio < low || ratio > high {
        fail(format!(
            "the bias \"{bias}\" has std {}, the record says {std}: the std of {} such draws lies within [{}, {}] except with probability 4e-9",
            figure(measured),
            values.len(),
            figure(low.sqrt() * std),
            figure(high.sqrt() * std)
        ));
    }
    Ok(())
}

/// Four significant digits, in scientific notation only for very small or large values.
fn figure(x: f64) -> String {
    if x == 0.0 || (1e-3..1e4).contains(&x.abs()) {
        format!("{:.4}", x)
    } else {
        format!("{x:.3e}")
    }
}

fn or_unknown(value: Option<usize>) -> String {
    value.map_or_else(|| "?".into(), |v| v.to_string())
}

/// The mask's nonzeros and density against the record: the count and the achieved density
/// exactly, and the count and placement as the layer's scheme makes them
/// ([`crate::schemes::Rules::check_mask`]).
fn check_density(
    report: &mut LayerReport,
    record: &StoredRecord,
    nnz: u64,
    bits: &[u8],
    shape: &[usize],
) {
    let numel = bits.len() as u64;
    let mut fail = |message: String| report.failures.push(Failure::new(Check::Density, message));
    if record.nnz != nnz {
        fail(format!(
            "the mask holds {nnz} ones, the record says nnz = {}",
            record.nnz
        ));
    }
    let density = nnz as f64 / numel.max(1) as f64;
    if (record.achieved_density - density).abs() > 1e-12 * density.max(1e-300) {
        fail(format!(
            "the mask's density is {density}, the record says achieved_density = {}",
            record.achieved_density
        ));
    }
    let stored = StoredMask {
        scheme: record.scheme,
        density: record.density,
        shape,
        bits,
        nnz,
        centre_nnz: record.centre_nnz,
        conv_mask: record.conv_mask,
        nm: record.nm.map(|pattern| Nm {
            pattern,
            transposable: record.nm_transposable,
        }),
    };
    let rules = crate::schemes::rules_of(record.scheme, stored.nm.is_some());
    for message in rules.check_mask(&stored) {
        fail(message);
    }
}

/// How many of a mask's `bits` are nonzero, and how many are neither 0 nor 1: one pass,
/// in blocks of 255 summed in bytes (which the compiler vectorises; a block's sums cannot
/// overflow), exact.
fn mask_counts(bits: &[u8]) -> (u64, u64) {
    bits.chunks(255).fold((0, 0), |(nonzero, invalid), block| {
        let (a, b) = block.iter().fold((0u8, 0u8), |(a, b), &x| {
            (a + u8::from(x != 0), b + u8::from(x > 1))
        });
        (nonzero + u64::from(a), invalid + u64::from(b))
    })
}

/// A mask as one byte per element: bool and u8 as stored, floating-point masks as 0 for 0.0,
/// 1 for 1.0 and 2 (invalid) for anything else.
fn mask_bytes(mask: &Tensor<'_>) -> Result<Vec<u8>, ReadError> {
    if mask.dtype.is_float() {
        let values = mask.read_f64()?;
        Ok(values
            .iter()
            .map(|&v| match v {
                0.0 => 0,
                1.0 => 1,
                _ => 2,
            })
            .collect())
    } else {
        mask.read_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_counts_are_the_plain_counts() {
        let bits: Vec<u8> = (0..10_000u32)
            .map(|k| match k.wrapping_mul(2_654_435_761) % 7 {
                0..=2 => 0,
                3..=5 => 1,
                _ => (k % 250) as u8,
            })
            .collect();
        for len in [0, 1, 254, 255, 256, 511, 10_000] {
            let b = &bits[..len];
            let plain = (
                b.iter().filter(|&&x| x != 0).count() as u64,
                b.iter().filter(|&&x| x > 1).count() as u64,
            );
            assert_eq!(mask_counts(b), plain, "{len} bits");
        }
        assert_eq!(mask_counts(&[1; 1000]), (1000, 0));
        assert_eq!(mask_counts(&[255; 600]), (600, 600));
    }

    #[test]
    fn the_bias_range_holds_a_chi_square_sample() {
        // n = 1000, x = 20: 1 - 2 sqrt(0.02) and 1 + 2 sqrt(0.02) + 0.04.
        let (low, high) = bias_range(1000, 20.0);
        assert!((low - 0.717_157).abs() < 1e-6, "{low}");
        assert!((high - 1.322_843).abs() < 1e-6, "{high}");
        // Few values bound the std from above only.
        assert_eq!(bias_range(10, 20.0).0, 0.0);
        // Draws of N(0, 1) land inside, for many sizes; a doubled std (ratio 4) does not
        // from 100 values on.
        for n in [1usize, 10, 100, 1000, 10_000] {
            let mut z = vec![0.0; n];
            crate::stream::Stream::derive(n as u64, "range").fill_normal(&mut z);
            let ratio = z.iter().map(|v| v * v).sum::<f64>() / n as f64;
            let (low, high) = bias_range(n, 20.0);
            assert!(
                low <= ratio && ratio <= high,
                "{n}: {ratio} in [{low}, {high}]"
            );
            if n >= 100 {
                assert!(4.0 * ratio > high, "{n}");
            }
        }
    }
}

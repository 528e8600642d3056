//! `verify`: proves that an artifact is what it claims, without trusting it. Every layer
//! recorded in the provenance is checked against its weight and mask: shapes, no nonzero
//! weight outside the mask, exact orthogonality up to the rounding of the stored dtype where
//! the layer's scheme promises it (EOI, and `orthogonal` unmasked; for convolutions: of the
//! centre tap, with every other tap zero), and the mask's nonzeros and density against the
//! record. With `regenerate`, the embedded spec is planned and generated
//! again and every tensor is compared byte for byte with the file, a chunk at a time.
//! The artifact is one [`Checkpoint`]: a file, an npy directory or archive, or all the shards
//! of an index; tensors are found by the names the record gives them (plain or torch-prune)
//! and read in PyTorch order whatever their stored layout, so the checks are the same.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::error::Error;
use crate::layer::{Dtype, Format, Kind, Layout, centre_tap};
use crate::measure;
use crate::plan::{self, Overrides, Plan};
use crate::progress::Progress;
use crate::read::{Checkpoint, ReadError, Tensor, TensorInfo};
use crate::records::{self, LayerRecord, Recorded, SCHEMA_VERSION, StoredRecord};
use crate::schemes::{self, KernelGram, LayerPlan, Scheme, StoredMask};
use crate::spec::{self, Source};
use crate::stream::STREAM_VERSION;
use crate::tensor::{self, FlaxView};

/// What to check beyond the file itself.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Generate every layer again from the embedded spec and seed and compare bytes.
    pub regenerate: bool,
    /// With `regenerate`, for a `generate --base` output: the base checkpoint, whose
    /// tensors the file's copies are compared with byte for byte.
    pub base: Option<PathBuf>,
}

/// The kinds of check, as they are named in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The weight or its mask is missing, or a tensor is not recorded.
    Tensors,
    /// Shapes and dtypes of the weight, the mask and the record.
    Shape,
    /// Mask values, and weights outside the mask.
    Mask,
    /// The Gram matrix against gain^2 I.
    Orthogonality,
    /// Convolution taps other than the centre are zero.
    OffCentre,
    /// The mask's nonzeros and density against the record.
    Density,
    /// The record itself.
    Metadata,
    /// A bias: present, of shape (out,) in the weight's dtype, its std as recorded.
    Bias,
    /// Bytes of a regenerated tensor.
    Regenerate,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Tensors => "tensors",
            Check::Shape => "shape",
            Check::Mask => "mask",
            Check::Orthogonality => "orthogonality",
            Check::OffCentre => "off-centre",
            Check::Density => "density",
            Check::Metadata => "metadata",
            Check::Bias => "bias",
            Check::Regenerate => "regenerate",
        }
    }
}

/// One failed check.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub check: Check,
    pub message: String,
}

impl Failure {
    fn new(check: Check, message: impl Into<String>) -> Failure {
        Failure {
            check,
            message: message.into(),
        }
    }
}

/// The verdict on one layer.
#[derive(Clone, Debug, Default)]
pub struct LayerReport {
    pub name: String,
    /// The weight's shape as stored (the record's when the weight is missing).
    pub shape: Vec<usize>,
    pub kind: Option<Kind>,
    /// The scheme the record names (EOI without a record).
    pub scheme: Option<Scheme>,
    /// Whether the scheme promises orthogonality at this density, so that it is judged.
    pub promises_orthogonality: bool,
    /// The weight's stored dtype.
    pub dtype: Option<Dtype>,
    /// Ones in the mask.
    pub nnz: Option<u64>,
    /// Ones in the mask over the number of elements.
    pub density: Option<f64>,
    /// The gain the orthogonality was checked against.
    pub gain: Option<f64>,
    /// `max |G - gain^2 I|` over the smaller Gram matrix of the weight (of its centre tap for
    /// convolutions).
    pub orthogonality_error: Option<f64>,
    /// The largest orthogonality error the stored dtype allows: [`tolerance`].
    pub tolerance: Option<f64>,
    /// The layer's bias tensor, when the record names one.
    pub bias: Option<String>,
    /// The bias's measured std, `sqrt(mean(b^2))` (its mean is 0 by construction).
    pub bias_std: Option<f64>,
    /// Approximate isometry: `||G - gain^2 I||_F / ||gain^2 I||_F` of the stored weight (of
    /// its centre tap), which must match the recorded error to [`isometry_tolerance`].
    pub isometry_error: Option<f64>,
    /// The error the record states.
    pub recorded_isometry_error: Option<f64>,
    pub failures: Vec<Failure>,
}

impl LayerReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A tensor whose regenerated bytes differ from the file's.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    pub tensor: String,
    /// What differs, in words.
    pub message: String,
}

/// The outcome of regeneration.
#[derive(Clone, Debug, Default)]
pub struct Regenerated {
    /// Tensors regenerated and compared byte for byte.
    pub compared: usize,
    /// Tensors a `--base` output copied, compared byte for byte with the base's (`--base`).
    pub copies: usize,
    pub differences: Vec<Difference>,
    /// Why regeneration could not run at all, if it could not.
    pub impossible: Option<String>,
    /// Version remarks (another major version or stream version made the file).
    pub notes: Vec<String>,
}

impl Regenerated {
    pub fn passed(&self) -> bool {
        self.impossible.is_none() && self.differences.is_empty()
    }
}

/// The verdict on an artifact.
#[derive(Clone, Debug)]
pub struct Report {
    pub path: String,
    pub format: Format,
    /// The number of shards, for a sharded checkpoint read whole.
    pub shards: Option<usize>,
    /// The layout the weights are read in (as recorded).
    pub layout: Layout,
    pub recorded: Recorded,
    /// Problems of the artifact as a whole (metadata, unrecorded tensors).
    pub problems: Vec<String>,
    /// What the reader should know that is not a failure (a shard read alone).
    pub notes: Vec<String>,
    /// Tensors that a `--base` output copied from its base, in file order: not eoi's, so
    /// not checked.
    pub copied: Vec<String>,
    pub layers: Vec<LayerReport>,
    pub regenerated: Option<Regenerated>,
}

impl Report {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && self.layers.iter().all(LayerReport::passed)
            && self.regenerated.as_ref().is_none_or(Regenerated::passed)
    }
}

/// The orthogonality tolerance for an EOI matrix stored as `dtype`, with gain `gain` and
/// dot products of length `m` (the longer side): `gain^2 * (4 u + 8 m eps)`, where `u` is
/// the unit roundoff of the stored dtype (2^-24 for f32, 2^-53 for f64) and `eps = 2^-52`.
///
/// Why: the file holds `w = fl(v)` with `|w - v| <= u |v|`, where `v` is EOI's f64 matrix,
/// whose rows (or columns) have norm `gain`. A Gram entry is a sum of products `w_ak w_bk`;
/// rounding both factors moves it by at most `(2u + u^2) sum |v_ak v_bk| <= (2u + u^2) gain^2`
/// (Cauchy-Schwarz), whatever the size. Summing m products in f64 adds at most
/// `m eps gain^2`, and EOI's own f64 rotations leave far less than that. The first term is
/// doubled and the second multiplied by 8 for margin. For f32 that is about `2.4e-7 gain^2`,
/// so an f32 file passes only if it is orthogonal to f32 rounding.
pub fn tolerance(dtype: Dtype, gain: f64, m: usize) -> Option<f64> {
    let u = dtype.unit_roundoff()?;
    Some(gain * gain * (4.0 * u + 8.0 * m as f64 * f64::EPSILON))
}

/// How far the isometry error of an approximate-isometry weight stored as `dtype` may lie
/// from the f64 error its record states, `e`, with `n x m` the smaller Gram matrix's
/// dimensions: `sqrt(n) (4 u (1 + e) + 8 m eps)`.
///
/// Why: rounding to the stored dtype moves the Gram matrix by at most `(2u + u^2) r r^T`
/// entrywise, with `r` the row norms, whose Frobenius norm is `trace G <= gain^2 n (1 + e)`;
/// f64 sums add `m eps gain^2` per entry. Relative to `||gain^2 I||_F = gain^2 sqrt(n)`, and
/// with the factors doubled and multiplied by 8 for margin as in [`tolerance`].
pub fn isometry_tolerance(dtype: Dtype, recorded: f64, n: usize, m: usize) -> Option<f64> {
    let u = dtype.unit_roundoff()?;
    Some((n as f64).sqrt() * (4.0 * u * (1.0 + recorded) + 8.0 * m as f64 * f64::EPSILON))
}

/// Verifies the artifact at `path`: a safetensors file, a sharded checkpoint (its directory
/// or index file), an npy directory, an .npz archive. An artifact that cannot be read is an
/// `Err` (exit 2); failed checks are in the report (exit 1).
pub fn verify(path: &Path, options: &Options, progress: &dyn Progress) -> Result<Report, Error> {
    let checkpoint = Checkpoint::open_any(path)?;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let recorded = Recorded::of(&checkpoint).unwrap_or_else(|| {
        problems.push(no_record(&checkpoint));
        Recorded::default()
    });
    problems.extend(recorded.problems.iter().cloned());
    if let Some(v) = recorded.schema_version
        && v > SCHEMA_VERSION
    {
        problems.push(format!(
            "the records use schema version {v}, newer than this eoi's {}",
            SCHEMA_VERSION
        ));
    }
    if let Some((k, n)) = recorded.shard.filter(|&(_, n)| n > 1) {
        notes.push(format!(
            "this file is shard {k} of {n}: only the layers it holds are checked; verify the directory or its {} to check them all",
            crate::read::INDEX
        ));
    }
    if let Some(weights) = &recorded.weights {
        return Err(Error::Usage(format!(
            "'{}' holds only the masks of the weights output \"{weights}\" (eoi.weights, relative to its directory); verify that output, which reads its masks from here",
            path.display()
        )));
    }
    let masks = masks_file(&checkpoint, &recorded, &mut problems);
    if let Some(masks) = &masks {
        notes.push(format!(
            "the masks are read from '{}', the masks file the output records (eoi.masks)",
            masks.path().display()
        ));
    }
    let layout = records::layout_of(&checkpoint, Some(&recorded));
    let suffix = recorded.mask_suffix().to_string();

    // The layers: as recorded, or (without records) every tensor that has a mask.
    let layers: Vec<(String, Option<&StoredRecord>)> = match &recorded.layers {
        Some(records) => records.iter().map(|r| (r.name.clone(), Some(r))).collect(),
        None => checkpoint
            .iter()
            .filter(|t| checkpoint.get(&format!("{}{suffix}", t.name)).is_some())
            .map(|t| (t.name.clone(), None))
            .collect(),
    };
    let copied = unrecorded(&checkpoint, &recorded, &layers, &mut problems);

    let work = |name: &str| {
        checkpoint
            .get(&recorded.weight_name(name))
            .map_or(1, |t| t.nbytes.max(1) + matrix_work(t.info()))
    };
    progress.start(layers.iter().map(|(name, _)| work(name)).sum());
    let stored = Stored {
        checkpoint: &checkpoint,
        recorded: &recorded,
        layout,
        masks: masks.as_ref(),
    };
    let reports: Vec<LayerReport> = layers
        .par_iter()
        .map(|(name, record)| {
            let report = check_layer(&stored, name, *record);
            progress.advance(work(name));
            report
        })
        .collect::<Result<_, ReadError>>()?;

    let regenerated = if options.regenerate {
        let mut regenerated = regenerate(&stored)?;
        match (&recorded.base, &options.base) {
            (_, Some(base)) => compare_copies(&stored, &copied, base, &mut regenerated)?,
            (Some(base), None) if !copied.is_empty() => regenerated.notes.push(format!(
                "the {} tensors copied from the base '{}' are not compared: pass --base with that checkpoint to compare them byte for byte",
                copied.len(),
                base.name
            )),
            _ => {}
        }
        Some(regenerated)
    } else {
        None
    };
    Ok(Report {
        path: path.display().to_string(),
        format: checkpoint.format(),
        shards: checkpoint.is_sharded().then(|| checkpoint.files().len()),
        layout,
        problems,
        notes,
        copied,
        layers: reports,
        regenerated,
        recorded,
    })
}

/// The masks file a `--masks` output records (`eoi.masks`, relative to the directory of the
/// file that records it), opened and checked against the weights' records: it must name
/// this output as its weights (`eoi.weights`), hold the same spec, and record every layer
/// as the weights do. What is wrong is a problem; `None` when there is no usable file.
fn masks_file(
    checkpoint: &Checkpoint,
    recorded: &Recorded,
    problems: &mut Vec<String>,
) -> Option<Checkpoint> {
    let name = recorded.masks.as_ref()?;
    let dir = match checkpoint.path().parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let path = dir.join(name);
    let masks = match Checkpoint::open(&path) {
        Ok(masks) => masks,
        Err(e) => {
            problems.push(format!(
                "the masks file \"{name}\" the output records (eoi.masks) cannot be read: {e}"
            ));
            return None;
        }
    };
    let Some(theirs) = Recorded::of(&masks) else {
        problems.push(format!(
            "the masks file '{}' has no __metadata__: eoi did not write it",
            path.display()
        ));
        return Some(masks);
    };
    let here = |p: &Path| p.canonicalize().ok();
    let back = theirs.weights.as_ref().and_then(|w| {
        let masks_dir = path.parent().unwrap_or(Path::new("."));
        here(&masks_dir.join(w))
    });
    let ours = [
        here(checkpoint.path()),
        checkpoint.path().parent().and_then(here),
    ];
    if back.is_none() || !ours.contains(&back) {
        problems.push(format!(
            "the masks file '{}' does not name this output as its weights (eoi.weights is {})",
            path.display(),
            theirs
                .weights
                .as_ref()
                .map_or("missing".to_string(), |w| format!("\"{w}\""))
        ));
    }
    if theirs.spec != recorded.spec || theirs.seed != recorded.seed {
        problems.push(format!(
            "the masks file '{}' records another spec or seed than the weights",
            path.display()
        ));
    }
    let records: HashMap<&str, &Value> = theirs
        .layers
        .iter()
        .flatten()
        .map(|r| (r.name.as_str(), &r.raw))
        .collect();
    for r in recorded.layers.iter().flatten() {
        if records.get(r.name.as_str()) != Some(&&r.raw) {
            problems.push(format!(
                "the masks file '{}' records layer \"{}\" otherwise than the weights, or not at all",
                path.display(),
                r.name
            ));
        }
    }
    Some(masks)
}

/// Why a checkpoint records nothing: eoi did not write it.
fn no_record(checkpoint: &Checkpoint) -> String {
    match checkpoint.format() {
        Format::Safetensors if checkpoint.is_sharded() => {
            "the shards have no __metadata__: eoi did not write them".to_string()
        }
        Format::Safetensors => "the file has no __metadata__: eoi did not write it".to_string(),
        format => format!(
            "the {} has no {}: eoi did not write it",
            if format == Format::Npz {
                "archive"
            } else {
                "directory"
            },
            crate::read::MANIFEST
        ),
    }
}

/// The tensors that are no layer's weight, mask or bias: in a `--base` output, the base's
/// tensors copied unchanged, returned to be listed; in any other file, each a problem.
fn unrecorded(
    checkpoint: &Checkpoint,
    recorded: &Recorded,
    layers: &[(String, Option<&StoredRecord>)],
    problems: &mut Vec<String>,
) -> Vec<String> {
    let mut known = std::collections::HashSet::new();
    for (name, record) in layers {
        known.insert(recorded.weight_name(name));
        known.insert(recorded.mask_name(name));
        if let Some((bias, _)) = record.and_then(|r| r.bias()) {
            known.insert(bias.to_string());
        }
        known.extend(record.iter().flat_map(|r| r.tied.iter().cloned()));
    }
    let mut copied = Vec::new();
    for t in checkpoint.iter().filter(|t| !known.contains(&t.name)) {
        if recorded.base.is_some() {
            copied.push(t.name.clone());
        } else {
            problems.push(format!(
                "tensor \"{}\" is not a recorded layer or its mask",
                t.name
            ));
        }
    }
    copied
}

/// Where a layer's tensors are and how they are stored: the checkpoint, the names the
/// record gives them and their layout.
struct Stored<'a> {
    checkpoint: &'a Checkpoint,
    recorded: &'a Recorded,
    layout: Layout,
    /// The masks file of a `--masks` output, where each mask is keyed by its layer's name.
    masks: Option<&'a Checkpoint>,
}

impl Stored<'_> {
    /// Where layer `layer`'s mask is stored, for messages: its name, in the masks file when
    /// the output keeps its masks apart.
    fn mask_name(&self, layer: &str) -> String {
        match self.masks {
            Some(masks) => format!("{layer}\" in \"{}", masks.path().display()),
            None => self.recorded.mask_name(layer),
        }
    }

    /// Layer `layer`'s mask: in the masks file (under the layer's name) when the output
    /// keeps its masks apart, else beside the weight under the recorded mask name.
    fn mask(&self, layer: &str) -> Option<Tensor<'_>> {
        match self.masks {
            Some(masks) => masks.get(layer),
            None => self.checkpoint.get(&self.recorded.mask_name(layer)),
        }
    }

    /// The PyTorch shape (out, in, k...) of a tensor stored as `shape` (unchanged below
    /// rank 2).
    fn torch_shape(&self, shape: &[usize]) -> Vec<usize> {
        if shape.len() < 2 {
            shape.to_vec()
        } else {
            self.layout.torch_shape(shape)
        }
    }

    /// The stored shape of a tensor whose PyTorch shape is `shape`.
    fn stored_shape(&self, shape: &[usize]) -> Vec<usize> {
        if shape.len() < 2 {
            shape.to_vec()
        } else {
            self.layout.shape(shape)
        }
    }

    /// The position, in stored coordinates, of element `flat` of the PyTorch-order tensor
    /// of shape `torch`: what a user indexing the file sees.
    fn position(&self, torch: &[usize], flat: usize) -> String {
        let index = multi_index(torch, flat);
        let index = self.stored_shape(&index);
        let parts: Vec<String> = index.iter().map(usize::to_string).collect();
        format!("({})", parts.join(", "))
    }

    /// A tensor's values in PyTorch order.
    fn read_f64(&self, t: &Tensor<'_>) -> Result<Vec<f64>, ReadError> {
        Ok(self.layout.torch_order(t.read_f64()?, &t.shape))
    }
}

/// Work units for a tensor's linear algebra, for progress.
fn matrix_work(t: &TensorInfo) -> u64 {
    match t.shape.as_slice() {
        [out, inp, ..] => (measure::work(*out, *inp) / 64.0) as u64,
        _ => 0,
    }
}

/// A flat index as a multi-index of `shape`.
fn multi_index(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            index[k] = flat % d;
            flat /= d;
        }
    }
    index
}

/// A flat index as a multi-index: `(3, 0, 1, 2)`.
fn position(shape: &[usize], flat: usize) -> String {
    let parts: Vec<String> = multi_index(shape, flat)
        .iter()
        .map(usize::to_string)
        .collect();
    format!("({})", parts.join(", "))
}

/// Checks one layer: its weight and mask are found by the record's names and read in
/// PyTorch order (out, in, k...), so every check below is the same in every layout;
/// positions in messages are in the stored layout.
fn check_layer(
    stored: &Stored<'_>,
    name: &str,
    record: Option<&StoredRecord>,
) -> Result<LayerReport, ReadError> {
    let weight_name = stored.recorded.weight_name(name);
    let mask_name = stored.mask_name(name);
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
    let fail = |report: &mut LayerReport, check, message: String| {
        report.failures.push(Failure::new(check, message));
    };
    if weight.is_none() {
        fail(
            &mut report,
            Check::Tensors,
            format!("the weight \"{weight_name}\" is missing"),
        );
    }
    if mask.is_none() {
        fail(
            &mut report,
            Check::Tensors,
            format!("the mask \"{mask_name}\" is missing"),
        );
    }

    // Shapes and dtypes.
    let mut weight_ok = false;
    if let Some(w) = weight {
        report.dtype = Some(w.dtype);
        weight_ok = true;
        if !(2..=5).contains(&w.shape.len()) {
            fail(
                &mut report,
                Check::Shape,
                format!(
                    "the weight has shape {:?}; a layer has rank 2 to 5",
                    w.shape
                ),
            );
            weight_ok = false;
        } else {
            report.kind = Some(if w.shape.len() == 2 {
                Kind::Linear
            } else {
                Kind::Conv
            });
        }
        if !w.dtype.is_float() {
            fail(
                &mut report,
                Check::Shape,
                format!(
                    "the weight has dtype {}; a weight is floating-point",
                    w.dtype
                ),
            );
            weight_ok = false;
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
            fail(
                &mut report,
                Check::Shape,
                format!(
                    "the weight has shape {:?}, the record says {:?}{layout}",
                    w.shape, r.shape
                ),
            );
        }
    }
    let mut mask_ok = mask.is_some();
    if let Some(m) = mask {
        if !(matches!(m.dtype, Dtype::Bool | Dtype::U8) || m.dtype.is_float()) {
            fail(
                &mut report,
                Check::Shape,
                format!(
                    "the mask has dtype {}; eoi writes masks as bool, u8 or floating-point 0 and 1",
                    m.dtype
                ),
            );
            mask_ok = false;
        }
        if let Some(w) = weight
            && m.shape != w.shape
        {
            fail(
                &mut report,
                Check::Shape,
                format!("the mask has shape {:?}, the weight {:?}", m.shape, w.shape),
            );
            mask_ok = false;
        }
    }

    // From here on, values, bits and shapes are in PyTorch order.
    let values = match weight {
        Some(w) if weight_ok => Some(stored.read_f64(&w)?),
        _ => None,
    };
    let bits = match mask {
        Some(m) if mask_ok => Some(stored.layout.torch_order(mask_bytes(&m)?, &m.shape)),
        _ => None,
    };
    let torch = weight.map(|w| stored.torch_shape(&w.shape));

    // The mask: its values, and the weights outside it.
    if let Some(bits) = &bits {
        let shape = &mask
            .map(|m| stored.torch_shape(&m.shape))
            .unwrap_or_default();
        let invalid = bits.iter().filter(|&&b| b > 1).count();
        if invalid > 0 {
            let first = bits.iter().position(|&b| b > 1).unwrap_or(0);
            fail(
                &mut report,
                Check::Mask,
                format!(
                    "{invalid} mask values are neither 0 nor 1, first at {}",
                    stored.position(shape, first)
                ),
            );
        }
        let nnz = bits.iter().filter(|&&b| b != 0).count() as u64;
        report.nnz = Some(nnz);
        report.density = (!bits.is_empty()).then(|| nnz as f64 / bits.len() as f64);
        if let Some(values) = &values {
            let outside: Vec<usize> = values
                .iter()
                .zip(bits)
                .enumerate()
                .filter(|(_, (v, b))| **v != 0.0 && **b == 0)
                .map(|(k, _)| k)
                .collect();
            if let Some(&first) = outside.first() {
                fail(
                    &mut report,
                    Check::Mask,
                    format!(
                        "{} nonzero weights outside the mask, first at {} (value {:e})",
                        outside.len(),
                        stored.position(shape, first),
                        values[first]
                    ),
                );
            }
        }
        if let Some(r) = record {
            check_density(&mut report, r, nnz, bits, shape);
        }
    }

    // Orthogonality of the matrix (linear) or the centre tap (conv), and zero off-centre
    // taps, where the scheme promises them; the other schemes' orthogonality error (of the
    // (out, in * K) flattening) is reported, not judged.
    let scheme = record.map_or(Scheme::default(), |r| r.scheme);
    let rules = scheme.rules();
    let promised = record.is_none_or(|r| rules.promises_orthogonality(r.density));
    report.scheme = Some(scheme);
    report.promises_orthogonality = promised;
    if let (Some(values), Some(w), Some(shape)) = (&values, weight, &torch) {
        let (out, inp) = (shape[0], shape[1]);
        let kernel = &shape[2..];
        let taps: usize = kernel.iter().product();
        let gram = if taps > 1 {
            rules.kernel_gram()
        } else {
            KernelGram::Flattened
        };
        let delta = gram == KernelGram::Centre;
        // A block-orthogonal kernel is orthogonal as a convolution; of that, what a Gram
        // matrix shows is the zero lag, `sum_t W_t^T W_t = gain^2 I` (out >= in) or
        // `sum_t W_t W_t^T = gain^2 I` (out < in): the Gram of the (in, out * K) or the
        // (out, in * K) flattening.
        let stacked = gram == KernelGram::ZeroLag && out > inp;
        let (matrix, rows, cols): (std::borrow::Cow<'_, [f64]>, usize, usize) = if stacked {
            let mut by_input = Vec::with_capacity(values.len());
            for i in 0..inp {
                for o in 0..out {
                    let start = (o * inp + i) * taps;
                    by_input.extend_from_slice(&values[start..start + taps]);
                }
            }
            (by_input.into(), inp, out * taps)
        } else if !delta {
            (values.as_slice().into(), out, inp * taps)
        } else {
            let tap = centre_tap(kernel);
            let off = values
                .iter()
                .enumerate()
                .filter(|(k, v)| k % taps != tap && **v != 0.0)
                .map(|(k, _)| k)
                .collect::<Vec<_>>();
            if let Some(&first) = off.first() {
                fail(
                    &mut report,
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
        // A grouped convolution is block diagonal as an operator: each group's block of
        // rows (out/G of them, over the group's own inputs) is judged on its own.
        // (A record whose groups do not fit the file's shape is judged as one block; the
        // shape check has failed it already.)
        let groups = record.map_or(1, |r| r.groups).max(1).min(rows.max(1));
        let groups = if rows % groups == 0 { groups } else { 1 };
        let rows = rows / groups;
        let grams: Vec<_> = (0..groups)
            .map(|b| {
                let block = &matrix[b * rows * cols..(b + 1) * rows * cols];
                measure::gram(
                    measure::view(block, rows, cols),
                    measure::parallelism(rows, cols),
                )
            })
            .collect();
        let (gain, estimated) = match record {
            Some(r) => (r.gain, false),
            None => (measure::mean_diagonal(&grams[0]).sqrt(), true),
        };
        let error = grams
            .iter()
            .map(|g| measure::deviation(g, gain * gain))
            .fold(0.0, |worst: f64, e| {
                if worst.is_nan() || e.is_nan() {
                    f64::NAN
                } else {
                    worst.max(e)
                }
            });
        let tol = tolerance(w.dtype, gain, rows.max(cols)).filter(|_| promised);
        report.gain = Some(gain);
        report.orthogonality_error = Some(error);
        report.tolerance = tol;
        if let Some(recorded) = record.and_then(|r| r.isometry_error) {
            // (approx-isometry has one group: the plan refuses it for grouped layers.)
            let measured = measure::relative_frobenius(&grams[0], gain * gain);
            report.isometry_error = Some(measured);
            report.recorded_isometry_error = Some(recorded);
            if let Some(allowed) =
                isometry_tolerance(w.dtype, recorded, rows.min(cols), rows.max(cols))
                && ((measured - recorded).abs() > allowed || measured.is_nan())
            {
                fail(
                    &mut report,
                    Check::Orthogonality,
                    format!(
                        "the isometry error ||G - gain^2 I||_F / ||gain^2 I||_F of the stored weight is {measured:.6e}, but the record says {recorded:.6e} (tolerance {allowed:.2e} for {})",
                        w.dtype
                    ),
                );
            }
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
            fail(
                &mut report,
                Check::Orthogonality,
                format!(
                    "max |{product} - gain^2 I|{over} = {error:.3e} exceeds the tolerance {tol:.3e} for {} (gain {gain}{})",
                    w.dtype,
                    if estimated {
                        ", estimated: no record"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
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
    };
    for message in record.scheme.rules().check_mask(&stored) {
        fail(message);
    }
}

/// The part of a version that must match for the bytes to: `X` of `X.Y.Z`, or `0.Y` before 1.0.
fn major(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_string(),
        _ => version.to_string(),
    }
}

/// Compares what a writer produces with a tensor's bytes in the file, a chunk at a time.
struct Comparing<'a> {
    tensor: Tensor<'a>,
    info: &'a TensorInfo,
    position: u64,
    buffer: Vec<u8>,
    /// Elements that differ, the first of them, and the last counted (to count each once).
    differing: u64,
    first: Option<u64>,
    last: Option<u64>,
    /// Bytes written past the end of the stored tensor.
    excess: u64,
    error: Option<ReadError>,
}

impl<'a> Comparing<'a> {
    fn new(tensor: Tensor<'a>) -> Comparing<'a> {
        Comparing {
            tensor,
            info: tensor.info(),
            position: 0,
            buffer: Vec::new(),
            differing: 0,
            first: None,
            last: None,
            excess: 0,
            error: None,
        }
    }
}

impl Write for Comparing<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let size = self.info.dtype.size() as u64;
        let room = self.info.nbytes.saturating_sub(self.position);
        let (compared, extra) = data.split_at(data.len().min(room as usize));
        self.excess += extra.len() as u64;
        for piece in compared.chunks(1 << 20) {
            self.buffer.resize(piece.len(), 0);
            if let Err(e) = self.tensor.read_at(self.position, &mut self.buffer) {
                self.error = Some(e);
                return Err(io::Error::other("reading the stored tensor failed"));
            }
            for (k, (a, b)) in piece.iter().zip(&self.buffer).enumerate() {
                if a != b {
                    let element = (self.position + k as u64) / size;
                    if self.last != Some(element) {
                        self.differing += 1;
                        self.first.get_or_insert(element);
                        self.last = Some(element);
                    }
                }
            }
            self.position += piece.len() as u64;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compares one tensor with what `fill` writes; a difference in words, if any.
fn compare(
    tensor: Tensor<'_>,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<Option<String>, Error> {
    let info = tensor.info();
    let mut comparing = Comparing::new(tensor);
    let written = fill(&mut comparing);
    if let Some(e) = comparing.error.take() {
        return Err(e.into());
    }
    if let Err(e) = written {
        // A source that could not be read (a base's tensor) is a read error, not ours.
        return Err(
            if e.get_ref().is_some_and(|inner| inner.is::<ReadError>()) {
                match e.into_inner().map(|inner| inner.downcast::<ReadError>()) {
                    Some(Ok(read)) => Error::Read(*read),
                    _ => Error::Internal(format!("comparing \"{}\": a read failed", info.name)),
                }
            } else {
                Error::Internal(format!("regenerating \"{}\": {e}", info.name))
            },
        );
    }
    let produced = comparing.position + comparing.excess;
    if produced != info.nbytes {
        return Ok(Some(format!(
            "regeneration gives {produced} bytes, the file holds {}",
            info.nbytes
        )));
    }
    Ok(comparing.first.map(|first| {
        format!(
            "{} of {} elements differ, first at {}",
            comparing.differing,
            info.numel,
            position(&info.shape, first as usize)
        )
    }))
}

/// The dtype eoi writes that is stored as `dtype`, if eoi writes it.
fn written_dtype(dtype: Dtype) -> Option<crate::layer::Dtype> {
    match dtype {
        Dtype::F32 => Some(crate::layer::Dtype::F32),
        Dtype::F64 => Some(crate::layer::Dtype::F64),
        Dtype::F16 => Some(crate::layer::Dtype::F16),
        Dtype::BF16 => Some(crate::layer::Dtype::BF16),
        Dtype::Bool => Some(crate::layer::Dtype::Bool),
        Dtype::U8 => Some(crate::layer::Dtype::U8),
        _ => None,
    }
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

/// Regenerates every recorded layer from the embedded spec and compares bytes, in the
/// stored layout and under the stored names. A shard read on its own regenerates only the
/// layers it records.
fn regenerate(stored: &Stored<'_>) -> Result<Regenerated, Error> {
    let (checkpoint, recorded) = (stored.checkpoint, stored.recorded);
    let mut result = Regenerated::default();
    match &recorded.version {
        Some(v) if major(v) != major(crate::VERSION) => result.notes.push(format!(
            "the file was made by eoi {v}, another major version than this eoi {}: its bytes are not promised to match",
            crate::VERSION
        )),
        _ => {}
    }
    match recorded.stream_version {
        Some(v) if v != STREAM_VERSION => result.notes.push(format!(
            "the file was made with random streams v{v}, this eoi has v{STREAM_VERSION}: its bytes cannot match"
        )),
        _ => {}
    }
    let (Some(text), Some(seed)) = (&recorded.spec, recorded.seed) else {
        result.impossible = Some("the metadata lacks the spec or the seed".into());
        return Ok(result);
    };
    let dtype = recorded
        .layers
        .iter()
        .flatten()
        .find_map(|r| checkpoint.get(&recorded.weight_name(&r.name)))
        .map(|w| w.dtype);
    let dtype = match dtype.map(|d| (d, written_dtype(d))) {
        Some((
            _,
            Some(
                d @ (crate::layer::Dtype::F32
                | crate::layer::Dtype::F64
                | crate::layer::Dtype::F16
                | crate::layer::Dtype::BF16),
            ),
        )) => d,
        other => {
            result.impossible = Some(match other {
                Some((d, _)) => format!("eoi writes weights as f32, f64, f16 or bf16, not {d}"),
                None => "no recorded weight is in the file".into(),
            });
            return Ok(result);
        }
    };
    // The mask dtype of the first recorded mask; a plan with another one (torch-prune names
    // with a mismatched mask) is reported by the plan.
    let mask_dtype = recorded
        .layers
        .iter()
        .flatten()
        .find_map(|r| stored.mask(&r.name))
        .and_then(|m| written_dtype(m.dtype));
    let source = Source {
        name: format!("{} (eoi.spec)", checkpoint.path().display()),
        text: text.clone(),
    };
    let plan = spec::parse(source).and_then(|spec| {
        plan::plan(
            &spec,
            &Overrides {
                seed: Some(seed),
                scheme: recorded.scheme_override,
                below_minimum: recorded.below_minimum_override,
                format: None,
                dtype: Some(dtype),
                mask_dtype,
                layout: Some(recorded.layout),
                names: Some(recorded.names),
                ..Overrides::default()
            },
        )
    });
    let mut plan: Plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            result.impossible = Some(format!("the embedded spec cannot be planned: {e}"));
            return Ok(result);
        }
    };
    if let Some(suffix) = &recorded.mask_suffix {
        plan.output.mask_suffix = suffix.clone();
    }
    // A shard read alone holds its own layers only: the others are not its to compare.
    if let Some((k, n)) = recorded.shard.filter(|&(_, n)| n > 1) {
        let held: std::collections::HashSet<&str> = recorded
            .layers
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect();
        plan.layers.retain(|l| held.contains(l.name.as_str()));
        result.notes.push(format!(
            "shard {k} of {n}: only the {} layers it holds are regenerated",
            plan.layers.len()
        ));
    }

    let planned: std::collections::HashSet<&str> =
        plan.layers.iter().map(|l| l.name.as_str()).collect();
    for r in recorded.layers.iter().flatten() {
        if !planned.contains(r.name.as_str()) {
            result.differences.push(Difference {
                tensor: r.name.clone(),
                message: "the embedded spec has no such layer".into(),
            });
        }
    }
    // The first record of each name, as a search would find it.
    let mut records: HashMap<&str, &StoredRecord> = HashMap::new();
    for r in recorded.layers.iter().flatten() {
        records.entry(r.name.as_str()).or_insert(r);
    }
    let outcomes: Vec<(usize, Vec<Difference>)> = plan
        .layers
        .par_iter()
        .map(|layer| regenerate_layer(stored, &records, &plan, layer))
        .collect::<Result<_, Error>>()?;
    for (compared, differences) in outcomes {
        result.compared += compared;
        result.differences.extend(differences);
    }
    Ok(result)
}

/// Regenerates one layer and compares its weight, its mask and its record with the file's.
fn regenerate_layer(
    stored: &Stored<'_>,
    records: &HashMap<&str, &StoredRecord>,
    plan: &Plan,
    layer: &LayerPlan,
) -> Result<(usize, Vec<Difference>), Error> {
    let checkpoint = stored.checkpoint;
    let weight_name = plan.output.weight_name(&layer.name);
    let mask_name = match stored.masks {
        Some(_) => stored.mask_name(&layer.name),
        None => plan.output.mask_name(&layer.name),
    };
    let layout = plan.output.layout;
    let mut differences = Vec::new();
    let mut differ = |tensor: &str, message: String| {
        differences.push(Difference {
            tensor: tensor.to_string(),
            message,
        })
    };
    let dims = layout.shape(layer.shape.dims());
    let weight = match checkpoint.get(&weight_name) {
        None => {
            differ(&weight_name, "the file has no such tensor".into());
            None
        }
        Some(info) if info.shape != dims => {
            differ(
                &weight_name,
                format!(
                    "the file's shape is {:?}, the spec's {:?}",
                    info.shape, dims
                ),
            );
            None
        }
        Some(info) => Some(info),
    };
    let mask = match stored.masks {
        Some(_) => stored.mask(&layer.name),
        None => checkpoint.get(&mask_name),
    };
    let mask = match mask {
        None => {
            differ(&mask_name, "the file has no such tensor".into());
            None
        }
        Some(info)
            if info.shape != dims || written_dtype(info.dtype) != Some(plan.output.mask_dtype) =>
        {
            differ(
                &mask_name,
                format!(
                    "the file holds {:?} {}, regeneration gives {:?} {}",
                    info.shape,
                    info.dtype,
                    dims,
                    plan.output.mask_dtype.name()
                ),
            );
            None
        }
        Some(info) => Some(info),
    };
    // Only a layer the file holds at its planned shape is generated: the embedded spec is
    // not trusted, and a forged one naming a huge layer must not make verify allocate more
    // than the file's own tensors call for.
    if weight.is_none() && mask.is_none() {
        return Ok((0, differences));
    }
    let generated = schemes::generate(layer, plan.seed);
    let mut compared = 0;
    let weight_dtype = plan.output.dtype;
    let taps = layer.shape.taps();
    if let Some(info) = weight {
        compared += 1;
        let diff = compare(info, |w| match layout {
            Layout::Torch => tensor::write_weight(&generated.weight, weight_dtype, w),
            Layout::Flax => {
                tensor::write_all(&FlaxView::new(&generated.weight, taps), weight_dtype, w)
            }
        })?;
        if let Some(message) = diff {
            differ(&weight_name, message);
        }
    }
    if let Some(info) = mask {
        compared += 1;
        let mask_dtype = plan.output.mask_dtype;
        let diff = compare(info, |w| match layout {
            Layout::Torch => tensor::write_mask(&generated.mask, mask_dtype, w),
            Layout::Flax => tensor::write_all(&FlaxView::new(&generated.mask, taps), mask_dtype, w),
        })?;
        if let Some(message) = diff {
            differ(&mask_name, message);
        }
    }
    if let (Some(name), Some(bias)) = (layer.bias_name(), &generated.bias) {
        match checkpoint.get(&name) {
            None => differ(&name, "the file has no such tensor".into()),
            Some(info) => {
                compared += 1;
                let diff = compare(info, |w| tensor::write_all(bias, weight_dtype, w))?;
                if let Some(message) = diff {
                    differ(&name, message);
                }
            }
        }
    }
    let fresh = LayerRecord::new(layer, Some(&generated.stats)).to_value();
    let stored = records.get(layer.name.as_str());
    if let Some(stored) = stored
        && let Some(field) = differing_field(&fresh, &stored.raw)
    {
        differ(&layer.name, format!("its record differs: {field}"));
    }
    Ok((compared, differences))
}

/// Compares the tensors a `--base` output copied with the base's own, byte for byte, after
/// checking that `base` is the checkpoint the file records (the SHA-256 of its header, or
/// of its index). Every base tensor must be in the file, unless a recorded layer replaced
/// it.
fn compare_copies(
    stored: &Stored<'_>,
    copied: &[String],
    base: &Path,
    result: &mut Regenerated,
) -> Result<(), Error> {
    let Some(record) = &stored.recorded.base else {
        result.impossible = Some(format!(
            "--base '{}' was given, but the file records no base (it is not a generate --base output)",
            base.display()
        ));
        return Ok(());
    };
    let checkpoint = Checkpoint::open(base)?;
    if record.sha256.as_deref() != Some(checkpoint.sha256()) {
        result.impossible = Some(format!(
            "'{}' is not the base this file was made from: the SHA-256 of its {} is {}, the file records {} (of '{}')",
            base.display(),
            if checkpoint.is_sharded() {
                "index"
            } else {
                "header"
            },
            checkpoint.sha256(),
            record.sha256.as_deref().unwrap_or("none"),
            record.name
        ));
        return Ok(());
    }
    let differences: Vec<Option<Difference>> = copied
        .par_iter()
        .map(|name| {
            let ours = stored.checkpoint.get(name);
            let message = match (ours, checkpoint.get(name)) {
                (_, None) => Some("the base has no such tensor".to_string()),
                (Some(ours), Some(theirs))
                    if ours.dtype != theirs.dtype || ours.shape != theirs.shape =>
                {
                    Some(format!(
                        "the file holds {:?} {}, the base {:?} {}",
                        ours.shape, ours.dtype, theirs.shape, theirs.dtype
                    ))
                }
                (Some(ours), Some(theirs)) => compare(ours, |w| copy_into(theirs, w))?
                    .map(|m| m.replace("regeneration gives", "the base holds")),
                (None, Some(_)) => Some("the file has no such tensor".to_string()),
            };
            Ok(message.map(|message| Difference {
                tensor: name.clone(),
                message,
            }))
        })
        .collect::<Result<_, Error>>()?;
    result.copies += copied.len();
    result.differences.extend(differences.into_iter().flatten());
    let layers: std::collections::HashSet<&str> = stored
        .recorded
        .layers
        .iter()
        .flatten()
        .map(|r| r.name.as_str())
        .collect();
    for t in checkpoint.iter() {
        if stored.checkpoint.get(&t.name).is_none() && !layers.contains(t.name.as_str()) {
            result.differences.push(Difference {
                tensor: t.name.clone(),
                message: "a tensor of the base is missing from the file".into(),
            });
        }
    }
    Ok(())
}

/// Writes a tensor's stored bytes to `out`, a chunk at a time.
fn copy_into(tensor: Tensor<'_>, out: &mut dyn Write) -> io::Result<()> {
    let mut buffer = vec![0u8; (1usize << 20).min(tensor.nbytes as usize)];
    let mut at = 0u64;
    while at < tensor.nbytes {
        let len = (tensor.nbytes - at).min(buffer.len() as u64) as usize;
        tensor
            .read_at(at, &mut buffer[..len])
            .map_err(io::Error::other)?;
        out.write_all(&buffer[..len])?;
        at += len as u64;
    }
    Ok(())
}

/// The first field in which two layer records differ, in words.
fn differing_field(fresh: &Value, stored: &Value) -> Option<String> {
    let (Value::Object(fresh), Value::Object(stored)) = (fresh, stored) else {
        return Some("the stored record is not an object".into());
    };
    for (key, value) in fresh {
        match stored.get(key) {
            None => return Some(format!("no \"{key}\" (regeneration gives {value})")),
            Some(s) if s != value => {
                return Some(format!("\"{key}\" is {s}, regeneration gives {value}"));
            }
            Some(_) => {}
        }
    }
    stored
        .keys()
        .find(|k| !fresh.contains_key(*k))
        .map(|k| format!("\"{k}\" is not a field regeneration gives"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_follows_the_dtype_and_the_gain() {
        let f32_tol = tolerance(Dtype::F32, 1.0, 128).unwrap();
        assert!((2.3e-7..2.5e-7).contains(&f32_tol), "{f32_tol}");
        let f64_tol = tolerance(Dtype::F64, 1.0, 128).unwrap();
        assert!(f64_tol < 1e-12, "{f64_tol}");
        let scaled = tolerance(Dtype::F32, 2.0, 128).unwrap();
        assert!((scaled - 4.0 * f32_tol).abs() < 1e-20);
        assert!(tolerance(Dtype::Bool, 1.0, 4).is_none());
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

    #[test]
    fn positions_are_multi_indices() {
        assert_eq!(position(&[4, 5], 7), "(1, 2)");
        assert_eq!(position(&[2, 3, 3, 3], 28), "(1, 0, 0, 1)");
    }

    #[test]
    fn majors_follow_cargo_compatibility() {
        assert_eq!(major("0.1.0"), "0.1");
        assert_eq!(major("0.2.3"), "0.2");
        assert_eq!(major("1.4.2"), "1");
        assert_eq!(major("12"), "12");
    }

    #[test]
    fn records_are_compared_field_by_field() {
        let a = serde_json::json!({"name": "x", "nnz": 4});
        let b = serde_json::json!({"name": "x", "nnz": 5});
        assert_eq!(
            differing_field(&a, &b).unwrap(),
            "\"nnz\" is 5, regeneration gives 4"
        );
        assert!(differing_field(&a, &a).is_none());
    }
}

//! `verify --regenerate`: the embedded spec planned and generated again, every tensor
//! compared byte for byte with the file's, a chunk at a time, and each layer's record field
//! by field; with `--base`, the copied tensors compared with the base's.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use super::{Difference, Regenerated, Stored, position};
use crate::error::Error;
use crate::layer::{Dtype, Layout};
use crate::plan::{self, Overrides, Plan};
use crate::read::{Checkpoint, ReadError, Tensor, TensorInfo};
use crate::records::{LayerRecord, Recorded, StoredRecord};
use crate::schemes::{self, Generated, LayerPlan};
use crate::spec::{self, Source};
use crate::stream::STREAM_VERSION;
use crate::tensor::{self, FlaxView};

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

/// Regenerates every recorded layer from the embedded spec and compares bytes, in the
/// stored layout and under the stored names. A shard read on its own regenerates only the
/// layers it records.
pub(super) fn regenerate(stored: &Stored<'_>) -> Result<Regenerated, Error> {
    let recorded = stored.recorded;
    let mut result = Regenerated {
        notes: version_notes(recorded),
        ..Regenerated::default()
    };
    let mut plan = match replan(stored) {
        Ok(plan) => plan,
        Err(why) => {
            result.impossible = Some(why);
            return Ok(result);
        }
    };
    // A shard read alone holds its own layers only: the others are not its to compare.
    if let Some((k, n)) = recorded.shard.filter(|&(_, n)| n > 1) {
        let held: HashSet<&str> = recorded
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

    let planned: HashSet<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
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
    let outcomes: Vec<Outcome> = plan
        .layers
        .par_iter()
        .map(|layer| regenerate_layer(stored, &records, &plan, layer))
        .collect::<Result<_, Error>>()?;
    for outcome in outcomes {
        result.compared += outcome.compared;
        result.differences.extend(outcome.differences);
    }
    Ok(result)
}

/// Remarks on the versions that made the file: another major version of eoi, or another
/// version of the random streams.
fn version_notes(recorded: &Recorded) -> Vec<String> {
    let mut notes = Vec::new();
    match &recorded.version {
        Some(v) if major(v) != major(crate::VERSION) => notes.push(format!(
            "the file was made by eoi {v}, another major version than this eoi {}: its bytes are not promised to match",
            crate::VERSION
        )),
        _ => {}
    }
    match recorded.stream_version {
        Some(v) if v != STREAM_VERSION => notes.push(format!(
            "the file was made with random streams v{v}, this eoi has v{STREAM_VERSION}: its bytes cannot match"
        )),
        _ => {}
    }
    notes
}

/// The plan of the embedded spec, with the recorded seed, overrides, layout, names and
/// mask suffix, and the dtypes the file's first recorded weight and mask are stored in;
/// why regeneration is impossible when it is.
fn replan(stored: &Stored<'_>) -> Result<Plan, String> {
    let (checkpoint, recorded) = (stored.checkpoint, stored.recorded);
    let (Some(text), Some(seed)) = (&recorded.spec, recorded.seed) else {
        return Err("the metadata lacks the spec or the seed".into());
    };
    let dtype = recorded
        .layers
        .iter()
        .flatten()
        .find_map(|r| checkpoint.get(&recorded.weight_name(&r.name)))
        .map(|w| w.dtype);
    let dtype = match dtype.map(|d| (d, written_dtype(d))) {
        Some((_, Some(d @ (Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)))) => d,
        Some((d, _)) => {
            return Err(format!(
                "eoi writes weights as f32, f64, f16 or bf16, not {d}"
            ));
        }
        None => return Err("no recorded weight is in the file".into()),
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
    let overrides = Overrides {
        seed: Some(seed),
        scheme: recorded.scheme_override,
        below_minimum: recorded.below_minimum_override,
        format: None,
        dtype: Some(dtype),
        mask_dtype,
        layout: Some(recorded.layout),
        names: Some(recorded.names),
        ..Overrides::default()
    };
    let mut plan = spec::parse(source)
        .and_then(|spec| plan::plan(&spec, &overrides))
        .map_err(|e| format!("the embedded spec cannot be planned: {e}"))?;
    if let Some(suffix) = &recorded.mask_suffix {
        plan.output.mask_suffix = suffix.clone();
    }
    Ok(plan)
}

/// What regenerating one layer found: the tensors compared, and how they differ.
#[derive(Default)]
struct Outcome {
    compared: usize,
    differences: Vec<Difference>,
}

impl Outcome {
    fn differ(&mut self, tensor: &str, message: String) {
        self.differences.push(Difference {
            tensor: tensor.to_string(),
            message,
        });
    }
}

/// Regenerates one layer and compares its weight, its mask and its record with the file's.
fn regenerate_layer(
    stored: &Stored<'_>,
    records: &HashMap<&str, &StoredRecord>,
    plan: &Plan,
    layer: &LayerPlan,
) -> Result<Outcome, Error> {
    let weight_name = plan.output.weight_name(&layer.name);
    let mask_name = match stored.masks {
        Some(_) => stored.mask_name(&layer.name),
        None => plan.output.mask_name(&layer.name),
    };
    let dims = plan.output.layout.shape(layer.shape.dims());
    let mut outcome = Outcome::default();
    let weight = match stored.checkpoint.get(&weight_name) {
        None => {
            outcome.differ(&weight_name, "the file has no such tensor".into());
            None
        }
        Some(info) if info.shape != dims => {
            outcome.differ(
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
        None => stored.checkpoint.get(&mask_name),
    };
    let mask = match mask {
        None => {
            outcome.differ(&mask_name, "the file has no such tensor".into());
            None
        }
        Some(info)
            if info.shape != dims || written_dtype(info.dtype) != Some(plan.output.mask_dtype) =>
        {
            outcome.differ(
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
        return Ok(outcome);
    }
    let generated = schemes::generate(layer, plan.seed);
    let tensors = [
        weight.map(|info| (info, weight_name.as_str())),
        mask.map(|info| (info, mask_name.as_str())),
    ];
    compare_layer(
        &mut outcome,
        stored.checkpoint,
        plan,
        layer,
        &generated,
        tensors,
    )?;
    let fresh = LayerRecord::new(layer, Some(&generated.stats)).to_value();
    if let Some(record) = records.get(layer.name.as_str())
        && let Some(field) = differing_field(&fresh, &record.raw)
    {
        outcome.differ(&layer.name, format!("its record differs: {field}"));
    }
    Ok(outcome)
}

/// Compares the generated weight and mask with the file's (`[weight, mask]`, each with the
/// name it is stored under, where the file holds it at the planned shape), in the stored
/// layout, and the bias when the layer has one.
fn compare_layer(
    outcome: &mut Outcome,
    checkpoint: &Checkpoint,
    plan: &Plan,
    layer: &LayerPlan,
    generated: &Generated,
    [weight, mask]: [Option<(Tensor<'_>, &str)>; 2],
) -> Result<(), Error> {
    let (weight_dtype, mask_dtype) = (plan.output.dtype, plan.output.mask_dtype);
    let taps = layer.shape.taps();
    if let Some((info, name)) = weight {
        outcome.compared += 1;
        let diff = compare(info, |w| match plan.output.layout {
            Layout::Torch => tensor::write_weight(&generated.weight, weight_dtype, w),
            Layout::Flax => {
                tensor::write_all(&FlaxView::new(&generated.weight, taps), weight_dtype, w)
            }
        })?;
        if let Some(message) = diff {
            outcome.differ(name, message);
        }
    }
    if let Some((info, name)) = mask {
        outcome.compared += 1;
        let diff = compare(info, |w| match plan.output.layout {
            Layout::Torch => tensor::write_mask(&generated.mask, mask_dtype, w),
            Layout::Flax => tensor::write_all(&FlaxView::new(&generated.mask, taps), mask_dtype, w),
        })?;
        if let Some(message) = diff {
            outcome.differ(name, message);
        }
    }
    if let (Some(name), Some(bias)) = (layer.bias_name(), &generated.bias) {
        match checkpoint.get(&name) {
            None => outcome.differ(&name, "the file has no such tensor".into()),
            Some(info) => {
                outcome.compared += 1;
                let diff = compare(info, |w| tensor::write_all(bias, weight_dtype, w))?;
                if let Some(message) = diff {
                    outcome.differ(&name, message);
                }
            }
        }
    }
    Ok(())
}

/// Compares the tensors a `--base` output copied with the base's own, byte for byte, after
/// checking that `base` is the checkpoint the file records (the SHA-256 of its header, or
/// of its index). Every base tensor must be in the file, unless a recorded layer replaced
/// it.
pub(super) fn compare_copies(
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

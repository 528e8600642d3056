//! The output of a run, built from the plan before any layer is generated: the tensors each
//! layer writes and their order, the shards, and the file (or files) they go to: one file, a
//! stream, shards, a base checkpoint's mirror, or weights with their masks apart.

use std::collections::HashMap;
use std::path::Path;

use super::Part;
use super::base::{self, Base, BaseFile, DirectoryFiles};
use crate::error::Error;
use crate::plan::Plan;
use crate::records::{MASKS_KEY, Provenance, WEIGHTS_KEY};
use crate::schemes::{LayerPlan, LayerStats};
use crate::write::pair::{self, Alone, PairedOutput, Route};
use crate::write::safetensors::SafetensorsOutput;
use crate::write::shards::{ShardFile, ShardedOutput};
use crate::write::stream::StreamOutput;
use crate::write::{self, Destination, Output, TensorInfo, TwoStep};

/// The output tensors of a layer: its weight, its mask, and its bias if it has one (in the
/// weight's dtype; a bias has shape (out,) in every layout).
pub fn layer_tensors(plan: &Plan, layer: &LayerPlan) -> Vec<TensorInfo> {
    let shape = plan.output.layout.shape(layer.shape.dims());
    let mut tensors = vec![
        TensorInfo {
            name: plan.output.weight_name(&layer.name),
            dtype: plan.output.dtype,
            shape: shape.clone(),
        },
        TensorInfo {
            name: plan.output.mask_name(&layer.name),
            dtype: plan.output.mask_dtype,
            shape,
        },
    ];
    if let Some(bias) = layer.bias_name() {
        tensors.push(TensorInfo {
            name: bias,
            dtype: plan.output.dtype,
            shape: vec![layer.shape.out()],
        });
    }
    tensors
}

/// The output tensors of a plan, in order: each layer's weight, mask and bias (see
/// [`layer_tensors`]). Layer `k`'s tensors have the indices `tensor_indices(plan)[k]`.
pub fn tensors(plan: &Plan) -> Vec<TensorInfo> {
    plan.layers
        .iter()
        .flat_map(|layer| layer_tensors(plan, layer))
        .collect()
}

/// The indices in [`tensors`] of each layer's tensors: the weight first, then the mask, then
/// the bias if there is one.
pub fn tensor_indices(plan: &Plan) -> Vec<std::ops::Range<usize>> {
    let mut next = 0;
    plan.layers
        .iter()
        .map(|layer| {
            let count = 2 + usize::from(layer.bias_name().is_some());
            next += count;
            next - count..next
        })
        .collect()
}

/// The layers of each shard when the plan asks for sharded output, by the bytes of their
/// tensors in the shards (without the masks when they go to their own file).
pub fn shards(plan: &Plan, masks_apart: bool) -> Option<Vec<Vec<usize>>> {
    let max = plan.output.max_shard_size?;
    let bytes: Vec<u64> = plan
        .layers
        .iter()
        .map(|l| {
            let tensors = layer_tensors(plan, l);
            let masks = if masks_apart { tensors[1].nbytes() } else { 0 };
            tensors.iter().map(TensorInfo::nbytes).sum::<u64>() - masks
        })
        .collect();
    Some(write::shards::assign(&bytes, max))
}

/// The tensors of `layers` that go to the weights output, with their indices in the whole
/// output ([`tensors`]): all of them, or all but the masks when they go to their own file.
fn weight_tensors(
    plan: &Plan,
    layers: &[usize],
    masks_apart: bool,
) -> (Vec<TensorInfo>, Vec<usize>) {
    let indices = tensor_indices(plan);
    layers
        .iter()
        .flat_map(|&k| {
            let first = indices[k].start;
            layer_tensors(plan, &plan.layers[k])
                .into_iter()
                .enumerate()
                .filter(move |&(t, _)| !(masks_apart && t == 1))
                .map(move |(t, info)| (info, first + t))
        })
        .unzip()
}

/// The masks file of `--masks`: every layer's mask under the layer's name, in plan order,
/// with the plan's provenance (and `base`'s record) and the name of its weights output.
fn masks_output(
    plan: &Plan,
    stats: &[(&LayerPlan, &LayerStats)],
    destination: &Destination,
    recorded: &[(String, String)],
    weights: &Path,
) -> Result<SafetensorsOutput, Error> {
    let masks: Vec<TensorInfo> = plan
        .layers
        .iter()
        .map(|layer| TensorInfo {
            name: layer.name.clone(),
            dtype: plan.output.mask_dtype,
            shape: plan.output.layout.shape(layer.shape.dims()),
        })
        .collect();
    let mut provenance = Provenance::new(plan, stats, None);
    provenance.metadata.extend(recorded.iter().cloned());
    let from = destination.parent();
    let name = pair::relative(weights, &from).unwrap_or_else(|| weights.display().to_string());
    provenance.metadata.push((WEIGHTS_KEY.into(), name));
    SafetensorsOutput::create(destination, masks, Vec::new(), &provenance)
}

/// The routes of the whole output's tensors when the masks go to their own file: each
/// layer's mask to the masks file (at the layer's index), every other tensor to the weights
/// output at `main(index)`.
fn routes(plan: &Plan, main: impl Fn(usize) -> Option<usize>) -> Result<Vec<Route>, Error> {
    let indices = tensor_indices(plan);
    let total = indices.last().map_or(0, |r| r.end);
    let mut routes = Vec::with_capacity(total);
    for (k, range) in indices.iter().enumerate() {
        for index in range.clone() {
            routes.push(if index == range.start + 1 {
                Route::Masks(k)
            } else {
                Route::Main(main(index).ok_or_else(|| {
                    Error::Internal(format!("tensor {index} is in no file of the output"))
                })?)
            });
        }
    }
    Ok(routes)
}

/// A weights output that can be paired with a masks file, and where each tensor of the
/// whole output ([`tensors`]) is in it.
struct Weights {
    output: Box<dyn TwoStep>,
    /// Index in the whole output -> index in `output`.
    place: HashMap<usize, usize>,
    /// Number of safetensors files.
    files: usize,
}

/// The output a run writes to: a weights output that can be paired with a masks file, or
/// another (npy, npz, a stream, or plain safetensors).
enum Made {
    Weights(Weights),
    Other(Box<dyn Output>),
}

/// What a run records besides the plan in every file it writes: the base, and the masks
/// file (relative to each file's directory).
struct Extra<'a> {
    recorded: Vec<(String, String)>,
    masks: Option<&'a Path>,
}

impl Extra<'_> {
    /// The keys for a file in `directory`.
    fn keys(&self, directory: &Path) -> Vec<(String, String)> {
        let mut keys = self.recorded.clone();
        if let Some(masks) = self.masks {
            let name =
                pair::relative(masks, directory).unwrap_or_else(|| masks.display().to_string());
            keys.push((MASKS_KEY.into(), name));
        }
        keys
    }
}

/// The weights of a run without a base whose masks go to their own file: one file.
fn weights_file(
    plan: &Plan,
    destination: &Destination,
    stats_of: &HashMap<usize, &LayerStats>,
    extra: &Extra<'_>,
) -> Result<Weights, Error> {
    let all: Vec<usize> = (0..plan.layers.len()).collect();
    let layers: Vec<(&LayerPlan, &LayerStats)> = all
        .iter()
        .map(|&k| (&plan.layers[k], stats_of[&k]))
        .collect();
    let mut provenance = Provenance::new(plan, &layers, None);
    provenance
        .metadata
        .extend(extra.keys(&destination.parent()));
    let (tensors, global) = weight_tensors(plan, &all, extra.masks.is_some());
    Ok(Weights {
        output: Box::new(SafetensorsOutput::create(
            destination,
            tensors,
            Vec::new(),
            &provenance,
        )?),
        place: global
            .into_iter()
            .enumerate()
            .map(|(l, g)| (g, l))
            .collect(),
        files: 1,
    })
}

/// A sharded output (`--max-shard-size`): all its shards and the index, or one part's
/// shards (and the index, for part 1). A tensor keeps its index in the whole output.
fn sharded_output(
    plan: &Plan,
    destination: &Destination,
    shards: &[Vec<usize>],
    part: Option<Part>,
    stats_of: &HashMap<usize, &LayerStats>,
    extra: &Extra<'_>,
) -> Result<Weights, Error> {
    let n = shards.len();
    let masks_apart = extra.masks.is_some();
    let keys = extra.keys(&destination.path);
    let files: Vec<ShardFile> = shards
        .iter()
        .enumerate()
        .filter(|(s, _)| part.is_none_or(|p| p.index == s + 1))
        .map(|(s, layers)| {
            let records: Vec<(&LayerPlan, &LayerStats)> = layers
                .iter()
                .map(|&k| (&plan.layers[k], stats_of[&k]))
                .collect();
            let (tensors, global) = weight_tensors(plan, layers, masks_apart);
            let mut metadata = Provenance::new(plan, &records, Some((s + 1, n))).metadata;
            metadata.extend(keys.iter().cloned());
            ShardFile {
                name: write::shards::shard_name(s + 1, n),
                tensors,
                global,
                copies: Vec::new(),
                metadata,
            }
        })
        .collect();
    let place = files
        .iter()
        .flat_map(|f| f.global.iter().map(|&g| (g, g)))
        .collect();
    let index = part.is_none_or(|p| p.index == 1).then(|| {
        let all: Vec<(String, Vec<(String, u64)>)> = shards
            .iter()
            .enumerate()
            .map(|(s, layers)| {
                let tensors = weight_tensors(plan, layers, masks_apart)
                    .0
                    .iter()
                    .map(|t| (t.name.clone(), t.nbytes()))
                    .collect();
                (write::shards::shard_name(s + 1, n), tensors)
            })
            .collect();
        write::shards::index(&all)
    });
    let output = ShardedOutput::create(destination, files, index, part.is_some())?;
    Ok(Weights {
        output: Box::new(output),
        place,
        files: n,
    })
}

/// The output of a `--base` run: one file holding the plan's tensors and the base's others;
/// or a directory whose safetensors files mirror the base's (its shards with a matching
/// index, or one `model.safetensors`), with the base directory's other files copied. The
/// provenance records the base; the base's own metadata keys other than `format` and
/// `eoi.*` are kept after eoi's.
fn base_output(
    plan: &Plan,
    destination: &Destination,
    assembly: Vec<BaseFile>,
    base: &Base,
    stats_of: &HashMap<usize, &LayerStats>,
    extra: &Extra<'_>,
    copied: Vec<write::shards::CopiedFile>,
) -> Result<Weights, Error> {
    let masks_apart = extra.masks.is_some();
    let n = assembly.len();
    if base.directory.is_none() {
        let Some(file) = assembly.into_iter().next() else {
            return Err(Error::Internal("a base without a file".into()));
        };
        let all: Vec<usize> = (0..plan.layers.len()).collect();
        let layers: Vec<(&LayerPlan, &LayerStats)> = all
            .iter()
            .map(|&k| (&plan.layers[k], stats_of[&k]))
            .collect();
        let mut provenance = Provenance::new(plan, &layers, None);
        provenance
            .metadata
            .extend(extra.keys(&destination.parent()));
        provenance.metadata.extend(file.kept_metadata);
        let (tensors, global) = weight_tensors(plan, &all, masks_apart);
        let output = SafetensorsOutput::create(destination, tensors, file.copies, &provenance)?;
        return Ok(Weights {
            output: Box::new(output),
            place: global
                .into_iter()
                .enumerate()
                .map(|(l, g)| (g, l))
                .collect(),
            files: 1,
        });
    }
    let sharded = base.checkpoint.is_sharded();
    let keys = extra.keys(&destination.path);
    let mut index: Vec<(String, Vec<(String, u64)>)> = Vec::with_capacity(n);
    let mut shard_files = Vec::with_capacity(n);
    let mut place = HashMap::new();
    for (s, file) in assembly.into_iter().enumerate() {
        let records: Vec<(&LayerPlan, &LayerStats)> = file
            .layers
            .iter()
            .map(|&k| (&plan.layers[k], stats_of[&k]))
            .collect();
        let mut metadata = Provenance::new(plan, &records, sharded.then_some((s + 1, n))).metadata;
        metadata.extend(keys.iter().cloned());
        metadata.extend(file.kept_metadata);
        let (tensors, global) = weight_tensors(plan, &file.layers, masks_apart);
        place.extend(global.iter().map(|&g| (g, g)));
        index.push((
            file.name.clone(),
            tensors
                .iter()
                .map(|t| (t.name.clone(), t.nbytes()))
                .chain(file.copies.iter().map(|c| (c.name.clone(), c.nbytes)))
                .collect(),
        ));
        shard_files.push(ShardFile {
            name: base.output_name(&file.name),
            tensors,
            global,
            copies: file.copies,
            metadata,
        });
    }
    let index = sharded.then(|| write::shards::index(&index));
    let output =
        ShardedOutput::create(destination, shard_files, index, false)?.with_files(copied)?;
    Ok(Weights {
        output: Box::new(output),
        place,
        files: n,
    })
}

/// Where and how a run writes.
pub(super) struct Target<'a> {
    pub plan: &'a Plan,
    pub destination: &'a Destination,
    /// `-o -`: one safetensors stream, no staging.
    pub stream: bool,
    /// One part of a sharded output.
    pub part: Option<Part>,
    pub base: Option<&'a Base>,
    /// The masks file, when the masks go apart (`--masks`).
    pub masks: Option<&'a Destination>,
}

/// The output of a run, ready for its layers, with the number of files the whole output has
/// and, for a base directory, the files copied into it and those left out.
pub(super) struct Built {
    pub output: Box<dyn Output>,
    pub files: usize,
    pub base_files: Option<DirectoryFiles>,
}

/// Builds the output of a run around the layers' statistics (the header holds them): a base's
/// mirror, a stream, one file (weights alone when the masks go apart), or shards; and, with
/// `--masks`, the masks file placed together with the weights.
pub(super) fn build(
    target: &Target<'_>,
    shards: Option<&[Vec<usize>]>,
    assembly: Option<(Vec<BaseFile>, DirectoryFiles)>,
    stats_of: &HashMap<usize, &LayerStats>,
) -> Result<Built, Error> {
    let (plan, destination) = (target.plan, target.destination);
    let extra = Extra {
        recorded: target
            .base
            .map(|b| base::provenance(&b.checkpoint))
            .unwrap_or_default(),
        masks: target.masks.map(|m| m.path.as_path()),
    };
    let all = || -> Vec<(&LayerPlan, &LayerStats)> {
        (0..plan.layers.len())
            .map(|k| (&plan.layers[k], stats_of[&k]))
            .collect()
    };
    let mut base_files = None;
    let made = match (shards, assembly) {
        (_, Some((assembly, files))) => {
            let Some(base) = target.base else {
                return Err(Error::Internal("a base assembly without a base".into()));
            };
            let copied = files.copied.clone();
            base_files = base.directory.is_some().then_some(files);
            Made::Weights(base_output(
                plan,
                destination,
                assembly,
                base,
                stats_of,
                &extra,
                copied,
            )?)
        }
        (None, None) if target.stream => {
            // No staging and no rename: the bytes go out as they are ready.
            let provenance = Provenance::new(plan, &all(), None);
            let stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            Made::Other(Box::new(StreamOutput::create(
                Box::new(stdout),
                tensors(plan),
                &provenance,
                Path::new("standard output"),
            )?))
        }
        (None, None) if target.masks.is_some() => {
            Made::Weights(weights_file(plan, destination, stats_of, &extra)?)
        }
        (None, None) => {
            let provenance = Provenance::new(plan, &all(), None);
            Made::Other(write::create(
                plan.output.format,
                destination,
                tensors(plan),
                &provenance,
            )?)
        }
        (Some(shards), None) => Made::Weights(sharded_output(
            plan,
            destination,
            shards,
            target.part,
            stats_of,
            &extra,
        )?),
    };
    let (output, files): (Box<dyn Output>, usize) = match (made, target.masks) {
        (Made::Other(output), _) => (output, 1),
        (Made::Weights(weights), None) => {
            // Without a masks file every tensor keeps its index in the whole output.
            if weights.place.iter().any(|(g, l)| g != l) {
                return Err(Error::Internal(
                    "the weights output renumbers its tensors".into(),
                ));
            }
            (Box::new(Alone(weights.output)), weights.files)
        }
        (Made::Weights(weights), Some(masks)) => {
            let masks_file = masks_output(plan, &all(), masks, &extra.recorded, &destination.path)?;
            let routes = routes(plan, |g| weights.place.get(&g).copied())?;
            let output = PairedOutput::new(weights.output, masks_file, masks.clone(), routes);
            (Box::new(output), weights.files)
        }
    };
    Ok(Built {
        output,
        files,
        base_files,
    })
}

//! `generate`: executes a plan. The statistics of every layer are computed first from the
//! supports alone (cheap), so the output's header and provenance exist before any weight;
//! then layers are generated in parallel, each from its own stream, and written at their
//! places in the output as they finish. Memory is bounded by the layers in flight, not by
//! the model; the bytes do not depend on the number of threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::base::{self, Base, BaseFile, DirectoryFiles};
use crate::error::Error;
use crate::layer::Format;
use crate::layer::Names;
use crate::layer::{Dtype, Layout};
use crate::plan::Plan;
use crate::provenance::{MASKS_KEY, Provenance, WEIGHTS_KEY};
use crate::schemes::LayerPlan;
use crate::schemes::{self, LayerStats};
use crate::tensor::{self, FlaxView, RowBlocks};
use crate::units::human_size;
use crate::write::pair::{self, Alone, PairedOutput, Route};
use crate::write::safetensors::SafetensorsOutput;
use crate::write::shards::{ShardFile, ShardedOutput};
use crate::write::stream::StreamOutput;
use crate::write::{self, Container, Destination, Output, TensorInfo, TwoStep};

/// One of the N parts of a sharded output: shard `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

/// Told the bytes of each layer as it is written (weight and mask together).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// How to run.
#[derive(Clone)]
pub struct Options {
    pub output: PathBuf,
    pub force: bool,
    /// Worker threads; `None` lets rayon decide (all cores, or `RAYON_NUM_THREADS`).
    pub threads: Option<usize>,
    /// Write only this shard of a sharded output (and the index, for shard 1).
    pub part: Option<Part>,
    pub progress: Option<Progress>,
    /// Most memory the run may use, in bytes; `None`: [`DEFAULT_MEMORY_SHARE`] of the memory
    /// available, where that can be read.
    pub max_memory: Option<u64>,
    /// A checkpoint to complete (`--base`): its other tensors are copied into the output,
    /// which mirrors its files (and, for a base directory, its other files).
    pub base: Option<Arc<Base>>,
    /// Write every mask to this safetensors file, under its layer's name, and none to the
    /// output (`--masks`).
    pub masks: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The layers written (indices into the plan's layers): all, or one part's.
    pub layers: Vec<usize>,
    /// Their statistics, in the same order.
    pub stats: Vec<LayerStats>,
    /// Number of files the whole output has (1 unless sharded).
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// For a base directory: the files copied into the output and those left out.
    pub base_files: Option<DirectoryFiles>,
}

impl Report {
    pub fn nnz(&self) -> u64 {
        self.stats.iter().map(|s| s.nnz).sum()
    }

    pub fn density(&self) -> f64 {
        self.nnz() as f64 / self.stats.iter().map(|s| s.numel).sum::<u64>() as f64
    }
}

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

/// Writes a PyTorch-layout tensor of a layer with `taps` spatial taps as tensor `index` of
/// `output`, in `layout`: the one place where the layout is applied.
fn write_in_layout<T: RowBlocks>(
    output: &dyn Output,
    index: usize,
    tensor: &T,
    dtype: Dtype,
    layout: Layout,
    taps: usize,
) -> Result<(), Error> {
    match layout {
        Layout::Torch => write::write_tensor(output, index, tensor, dtype),
        Layout::Flax => write::write_tensor(output, index, &FlaxView::new(tensor, taps), dtype),
    }
}

/// Memory the layers in flight may use together; a larger layer runs alone.
const MEMORY_BUDGET: u64 = 512 << 20;

/// The share of the available memory a run may use when `--max-memory` is not given.
pub const DEFAULT_MEMORY_SHARE: f64 = 0.75;

/// Splits `layers` (in order) into consecutive groups whose generation memory fits `budget`
/// together, so that memory is bounded by the largest layer, not by the model.
fn memory_groups(plan: &Plan, layers: &[usize], budget: u64, threads: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for &k in layers {
        let need = layer_memory(&plan.layers[k], plan.output.layout, threads);
        match groups.last_mut() {
            Some(group) if used + need <= budget => group.push(k),
            _ => {
                groups.push(vec![k]);
                used = 0;
            }
        }
        used += need;
    }
    groups
}

/// Bytes a layer needs while it is generated in `layout` by `threads` threads: what its
/// scheme needs ([`Rules::memory`](crate::schemes::Rules::memory)), and a bias's `out` f64
/// values.
pub fn layer_memory(layer: &LayerPlan, layout: Layout, threads: usize) -> u64 {
    let bias = if layer.bias_name().is_some() {
        layer.shape.out() as u64 * 8
    } else {
        0
    };
    bias + layer.rules().memory(layer, layout, threads)
}

/// Memory that prepared layers waiting to be written may hold together: a constant, so that
/// a run's memory never grows with the model.
const PREPARED_BUDGET: u64 = 4 << 20;

/// Bytes a prepared layer holds until it is written (see
/// [`Rules::prepared_memory`](crate::schemes::Rules::prepared_memory)).
fn prepared_memory(layer: &LayerPlan) -> u64 {
    layer.rules().prepared_memory(layer)
}

/// Prepared values of the layers whose statistics cost their generation (approximate
/// isometry's descent, whose error the header holds), kept on disk between the statistics
/// pass and the layer's turn to be written: the costly part runs once per layer while
/// memory stays bounded by the layers in flight. A
/// private temporary file beside the output (removed when dropped); any I/O failure just
/// means the layer descends again, which gives the same bits.
struct Spill {
    file: std::fs::File,
    end: std::sync::atomic::AtomicU64,
}

impl Spill {
    fn create(dir: &std::path::Path) -> Option<Spill> {
        let file = tempfile::tempfile_in(dir).ok()?;
        Some(Spill {
            file,
            end: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Stores `values`; where they went.
    fn put(&self, values: &[f64]) -> Option<(u64, usize)> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let at = self
            .end
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        write::write_all_at(&self.file, &bytes, at).ok()?;
        Some((at, values.len()))
    }

    fn take(&self, (at, len): (u64, usize)) -> Option<Vec<f64>> {
        let mut bytes = vec![0u8; len * 8];
        crate::read::read_exact_at(&self.file, &mut bytes, at).ok()?;
        Some(
            bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        )
    }
}

/// Memory the machine has available, where it can be read.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of a run: `--max-memory`, or a share of the memory available now.
/// `None` when neither is known. The text says where the limit comes from.
fn memory_limit(max_memory: Option<u64>) -> Option<(u64, String)> {
    match max_memory {
        Some(limit) => Some((limit, "--max-memory".into())),
        None => available_memory().map(|available| {
            let limit = (available as f64 * DEFAULT_MEMORY_SHARE) as u64;
            (
                limit,
                format!(
                    "default ({:.0}% of the {} available)",
                    DEFAULT_MEMORY_SHARE * 100.0,
                    human_size(available)
                ),
            )
        }),
    }
}

/// Refuses to start when generating the largest of `layers` needs more than `limit`. Layers
/// run in parallel only within the limit (see [`memory_groups`]), so the largest layer
/// decides what a run needs.
fn check_memory(
    plan: &Plan,
    layers: &[usize],
    threads: usize,
    limit: u64,
    source: &str,
) -> Result<(), Error> {
    let largest = layers
        .iter()
        .map(|&k| &plan.layers[k])
        .max_by_key(|l| layer_memory(l, plan.output.layout, threads));
    let Some(largest) = largest else {
        return Ok(());
    };
    let need = layer_memory(largest, plan.output.layout, threads);
    if need > limit {
        return Err(Error::Usage(format!(
            "layer \"{}\" ({}) needs {} of memory to generate, more than the {} allowed by {source}; nothing was written\n  \
             help: pass --max-memory {}MiB or more if the machine has that much free, or run on a machine with more memory",
            largest.name,
            largest.shape,
            human_size(need),
            human_size(limit),
            need.div_ceil(1 << 20),
        )));
    }
    Ok(())
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
enum Built {
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

/// Which of a layer's tensors a pass over the layers writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pieces {
    /// The weight, its mask and its bias.
    All,
    /// The weight and its bias.
    Values,
    /// The mask.
    Masks,
}

/// Writes `pieces` of a prepared layer whose tensors start at index `first` of `output`;
/// returns the bytes written.
fn write_layer(
    plan: &Plan,
    output: &dyn Output,
    first: usize,
    layer: &LayerPlan,
    prepared: &schemes::Prepared<'_>,
    pieces: Pieces,
) -> Result<u64, Error> {
    let layout = plan.output.layout;
    let taps = layer.shape.taps();
    let tensors = layer_tensors(plan, layer);
    let write_mask = || {
        write_in_layout(
            output,
            first + 1,
            &prepared.mask,
            plan.output.mask_dtype,
            layout,
            taps,
        )
    };
    let weight = match pieces {
        Pieces::Masks => {
            write_mask()?;
            return Ok(tensors[1].nbytes());
        }
        Pieces::Values => prepared.weight_for(layout),
        Pieces::All => {
            // The mask is final before the values exist: write it while they are computed.
            let (weight, mask_written) = rayon::join(|| prepared.weight_for(layout), write_mask);
            mask_written?;
            weight
        }
    };
    write_in_layout(output, first, &weight, plan.output.dtype, layout, taps)?;
    tensor::recycle(weight.into_values());
    // A bias is one-dimensional: the same in every layout.
    if let Some(bias) = schemes::bias(layer, plan.seed) {
        write::write_tensor(output, first + 2, &bias, plan.output.dtype)?;
    }
    Ok(tensors
        .iter()
        .enumerate()
        .filter(|&(t, _)| pieces == Pieces::All || t != 1)
        .map(|(_, t)| t.nbytes())
        .sum())
}

/// The output path that means standard output (`-o -`): one safetensors stream.
pub const STDOUT: &str = "-";

/// Whether `path` is [`STDOUT`].
pub fn is_stdout(path: &std::path::Path) -> bool {
    path.as_os_str() == STDOUT
}

/// Checks `--masks` before any work: it needs safetensors weights written whole, with
/// plain names, and a file path apart from the weights output that may be written.
fn check_masks(
    plan: &Plan,
    options: &Options,
    weights: &Destination,
) -> Result<Option<Destination>, Error> {
    let Some(path) = &options.masks else {
        return Ok(None);
    };
    let shown = path.display();
    if plan.output.format != Format::Safetensors {
        return Err(Error::Usage(format!(
            "--masks '{shown}' writes the masks as a safetensors file beside safetensors weights; {} output keeps every mask as its own tensor already\n  help: drop --masks, or write --format safetensors",
            plan.output.format.name()
        )));
    }
    if plan.output.names == Names::TorchPrune {
        return Err(Error::Usage(format!(
            "--masks '{shown}' takes the masks out of the weights file, but names = \"torch-prune\" keeps each mask beside its <module>.<param>_orig, where torch.nn.utils.prune loads it\n  help: drop --masks, or use --names plain"
        )));
    }
    if let Some(part) = options.part {
        return Err(Error::Usage(format!(
            "--masks '{shown}' holds the masks of every layer, but --shard {}/{} writes only one part's layers\n  help: run without --shard to write the masks file",
            part.index, part.count
        )));
    }
    if pair::is_within(path, &weights.path) {
        return Err(Error::Usage(format!(
            "--masks '{shown}' is the output '{}' or inside it; the masks file goes beside the weights, not in them\n  help: give --masks a path outside '{}'",
            weights.path.display(),
            weights.path.display()
        )));
    }
    let destination = Destination {
        path: path.clone(),
        force: options.force,
    };
    destination.check(Container::File)?;
    Ok(Some(destination))
}

/// Generates the plan into `options.output`: one file, an npy directory, all shards, or the
/// shards of one part.
pub fn run(plan: &Plan, options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let destination = Destination {
        path: options.output.clone(),
        force: options.force,
    };
    let stream = is_stdout(&options.output);
    if stream {
        let refuse = |what: String| {
            Err(Error::Usage(format!(
                "-o - writes one safetensors file to standard output; {what}"
            )))
        };
        if plan.output.format != Format::Safetensors {
            return refuse(format!(
                "{} output is written to a path: -o DIR for npy, -o FILE.npz for npz",
                plan.output.format.name()
            ));
        }
        if plan.output.max_shard_size.is_some() || options.part.is_some() {
            return refuse(
                "sharded output (--max-shard-size, --shard) is a directory: give it a path".into(),
            );
        }
        if options.base.is_some() {
            return refuse("--base writes the base's files: give the output a path".into());
        }
        if options.masks.is_some() {
            return refuse(
                "--masks moves the weights and the masks into place together: give the weights a path".into(),
            );
        }
    }
    let masks = check_masks(plan, options, &destination)?;
    let assembly: Option<(Vec<BaseFile>, DirectoryFiles)> = match &options.base {
        None => None,
        Some(base) => {
            if options.part.is_some() || plan.output.max_shard_size.is_some() {
                return Err(Error::Usage(
                    "--base writes the base's own files (one, or its shards): drop --max-shard-size and --shard".into(),
                ));
            }
            if plan.output.format != Format::Safetensors {
                return Err(Error::Usage(format!(
                    "--base writes safetensors, not {}",
                    plan.output.format.name()
                )));
            }
            let files = base::assemble(plan, &base.checkpoint)?;
            let container = if base.directory.is_some() {
                Container::Directory
            } else {
                Container::File
            };
            destination.check(container)?;
            Some((files, base::directory_files(base)?))
        }
    };
    let shards = shards(plan, masks.is_some());
    let selected: Vec<usize> = match (&shards, options.part) {
        (_, None) => (0..plan.layers.len()).collect(),
        (None, Some(_)) => {
            return Err(Error::Usage(
                "--shard needs sharded output: give --max-shard-size too".into(),
            ));
        }
        (Some(shards), Some(part)) => {
            if part.count != shards.len() {
                return Err(Error::Usage(format!(
                    "--shard {}/{}: this spec makes {} shards with this --max-shard-size, not {}",
                    part.index,
                    part.count,
                    shards.len(),
                    part.count
                )));
            }
            if part.index == 0 || part.index > part.count {
                return Err(Error::Usage(format!(
                    "--shard {}/{}: the shard number must be between 1 and {}",
                    part.index, part.count, part.count
                )));
            }
            shards[part.index - 1].clone()
        }
    };
    match (plan.output.format, &shards, options.part) {
        _ if assembly.is_some() || stream => {}
        (_, Some(_), Some(_)) => {
            if destination.path.exists() && !destination.path.is_dir() {
                return Err(Error::Usage(format!(
                    "'{}' exists and is not a directory; a sharded output is a directory",
                    destination.path.display()
                )));
            }
            if !destination.parent().is_dir() {
                destination.check(Container::Directory)?;
            }
        }
        (Format::Safetensors | Format::Npz, None, _) => destination.check(Container::File)?,
        _ => destination.check(Container::Directory)?,
    }
    let pool = {
        let mut builder = rayon::ThreadPoolBuilder::new();
        if let Some(n) = options.threads {
            builder = builder.num_threads(n);
        }
        builder.build().map_err(|e| {
            Error::Usage(format!(
                "cannot start {} worker threads: {e}",
                options.threads.unwrap_or(0)
            ))
        })?
    };
    let budget = match memory_limit(options.max_memory) {
        Some((limit, source)) => {
            check_memory(plan, &selected, pool.current_num_threads(), limit, &source)?;
            MEMORY_BUDGET.min(limit)
        }
        None => MEMORY_BUDGET,
    };
    pool.install(|| {
        // A small run (its prepared layers fit PREPARED_BUDGET together) prepares them all now
        // and takes their statistics from that, drawing each layer's randomness once. A larger run computes
        // the statistics alone first and prepares each layer when its group comes, so its
        // memory stays bounded; the bytes are the same either way.
        let threads = rayon::current_num_threads();
        let all_fit = selected
            .iter()
            .map(|&k| prepared_memory(&plan.layers[k]))
            .sum::<u64>()
            <= PREPARED_BUDGET;
        let mut early: HashMap<usize, schemes::Prepared> = if all_fit {
            selected
                .par_iter()
                .map(|&k| (k, schemes::prepare(&plan.layers[k], plan.seed)))
                .collect()
        } else {
            HashMap::new()
        };
        // Statistics that cost the generation itself (approximate isometry's descent): keep
        // what they computed on disk.
        let costly = |k: usize| plan.layers[k].rules().costly_stats();
        let spill = selected
            .iter()
            .any(|&k| !early.contains_key(&k) && costly(k))
            .then(|| {
                let dir = if stream {
                    std::env::temp_dir()
                } else {
                    destination.parent()
                };
                Spill::create(&dir)
            })
            .flatten();
        let (stats, spilled): (Vec<LayerStats>, Vec<Option<(u64, usize)>>) = selected
            .par_iter()
            .map(|&k| match (early.get(&k), &spill) {
                (Some(prepared), _) => (prepared.stats.clone(), None),
                (None, Some(spill)) if costly(k) => {
                    let prepared = schemes::prepare(&plan.layers[k], plan.seed);
                    let at = prepared.optimised().and_then(|v| spill.put(v));
                    (prepared.stats, at)
                }
                (None, _) => (schemes::stats(&plan.layers[k], plan.seed), None),
            })
            .unzip();
        let spilled_of: HashMap<usize, (u64, usize)> = selected
            .iter()
            .zip(&spilled)
            .filter_map(|(&k, at)| Some((k, (*at)?)))
            .collect();
        let stats_of: HashMap<usize, &LayerStats> = selected.iter().copied().zip(&stats).collect();
        let indices = tensor_indices(plan);
        // A file takes each layer's tensors at once. A stream takes them in data order,
        // weights (and biases) and masks apart when their element sizes differ: then the
        // layers are prepared twice, once for each.
        let passes = match (
            stream,
            plan.output.mask_dtype.size().cmp(&plan.output.dtype.size()),
        ) {
            (false, _) | (true, std::cmp::Ordering::Equal) => vec![Pieces::All],
            (true, std::cmp::Ordering::Less) => vec![Pieces::Values, Pieces::Masks],
            (true, std::cmp::Ordering::Greater) => vec![Pieces::Masks, Pieces::Values],
        };
        let extra = Extra {
            recorded: options
                .base
                .as_deref()
                .map(|b| base::provenance(&b.checkpoint))
                .unwrap_or_default(),
            masks: masks.as_ref().map(|m| m.path.as_path()),
        };
        let mut base_files = None;
        let built: Built = match (&shards, assembly) {
            (_, Some((assembly, files))) => {
                let Some(base) = options.base.as_deref() else {
                    return Err(Error::Internal("a base assembly without a base".into()));
                };
                let copied = files.copied.clone();
                base_files = base.directory.is_some().then_some(files);
                Built::Weights(base_output(
                    plan,
                    &destination,
                    assembly,
                    base,
                    &stats_of,
                    &extra,
                    copied,
                )?)
            }
            (None, None) if stream => {
                // No staging and no rename: the bytes go out as they are ready.
                let layers: Vec<(&LayerPlan, &LayerStats)> =
                    plan.layers.iter().zip(&stats).collect();
                let provenance = Provenance::new(plan, &layers, None);
                let stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
                Built::Other(Box::new(StreamOutput::create(
                    Box::new(stdout),
                    tensors(plan),
                    &provenance,
                    std::path::Path::new("standard output"),
                )?))
            }
            (None, None) if masks.is_some() => {
                Built::Weights(weights_file(plan, &destination, &stats_of, &extra)?)
            }
            (None, None) => {
                let layers: Vec<(&LayerPlan, &LayerStats)> =
                    plan.layers.iter().zip(&stats).collect();
                let provenance = Provenance::new(plan, &layers, None);
                Built::Other(write::create(
                    plan.output.format,
                    &destination,
                    tensors(plan),
                    &provenance,
                )?)
            }
            (Some(shards), None) => Built::Weights(sharded_output(
                plan,
                &destination,
                shards,
                options.part,
                &stats_of,
                &extra,
            )?),
        };
        let (output, files): (Box<dyn Output>, usize) = match (built, &masks) {
            (Built::Other(output), _) => (output, 1),
            (Built::Weights(weights), None) => {
                // Without a masks file every tensor keeps its index in the whole output.
                if weights.place.iter().any(|(g, l)| g != l) {
                    return Err(Error::Internal(
                        "the weights output renumbers its tensors".into(),
                    ));
                }
                (Box::new(Alone(weights.output)), weights.files)
            }
            (Built::Weights(weights), Some(masks)) => {
                let layers: Vec<(&LayerPlan, &LayerStats)> =
                    plan.layers.iter().zip(&stats).collect();
                let masks_file =
                    masks_output(plan, &layers, masks, &extra.recorded, &destination.path)?;
                let routes = routes(plan, |g| weights.place.get(&g).copied())?;
                let output = PairedOutput::new(weights.output, masks_file, masks.clone(), routes);
                (Box::new(output), weights.files)
            }
        };
        for &pieces in &passes {
            for group in memory_groups(plan, &selected, budget, threads) {
                let group: Vec<_> = group.into_iter().map(|k| (k, early.remove(&k))).collect();
                group
                    .into_par_iter()
                    .try_for_each(|(k, prepared)| -> Result<(), Error> {
                        let layer = &plan.layers[k];
                        let prepared = prepared
                            .or_else(|| {
                                let values = spill.as_ref()?.take(*spilled_of.get(&k)?)?;
                                layer
                                    .rules()
                                    .resume(layer, plan.seed, values, stats_of[&k].clone())
                            })
                            .unwrap_or_else(|| schemes::prepare(layer, plan.seed));
                        if &prepared.stats != stats_of[&k] {
                            return Err(Error::Internal(format!(
                                "layer \"{}\": generation disagrees with its planned statistics",
                                layer.name
                            )));
                        }
                        let bytes = write_layer(
                            plan,
                            output.as_ref(),
                            indices[k].start,
                            layer,
                            &prepared,
                            pieces,
                        )?;
                        if let Some(progress) = &options.progress {
                            progress(bytes);
                        }
                        Ok(())
                    })?;
            }
        }
        let bytes = output.bytes();
        output.commit()?;
        Ok(Report {
            layers: selected.clone(),
            stats,
            files,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            base_files,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, Overrides};
    use crate::spec::{self, Source};

    fn plan_of(layers: &[(usize, usize)]) -> Plan {
        let mut text = String::from("[sparsity]\ndensity = 0.5\n");
        for (k, (out, inp)) in layers.iter().enumerate() {
            text.push_str(&format!(
                "[[layer]]\nname = \"l{k}\"\nshape = [{out}, {inp}]\n"
            ));
        }
        let spec = spec::parse(Source {
            name: "t.toml".into(),
            text,
        })
        .unwrap();
        plan::plan(&spec, &Overrides::default()).unwrap()
    }

    #[test]
    fn the_largest_layer_decides_and_the_message_gives_the_figure_and_the_fix() {
        // 1000 x 1000 computed whole (as for flax layout): 9 MB of f64 matrix and byte mask,
        // and the bitsets.
        let mut plan = plan_of(&[(10, 10), (1000, 1000)]);
        plan.output.layout = Layout::Flax;
        let need = layer_memory(&plan.layers[1], Layout::Flax, 2);
        assert_eq!(need, 1000 * 1000 * 9 + 1000 * 1000 / 8);
        assert!(check_memory(&plan, &[0, 1], 2, need, "--max-memory X").is_ok());
        let err = check_memory(&plan, &[0, 1], 2, need - 1, "--max-memory X")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer \"l1\" (1000x1000) needs 8.7 MiB"),
            "{err}"
        );
        assert!(err.contains("8.7 MiB allowed by --max-memory X"), "{err}");
        assert!(err.contains("pass --max-memory 9MiB or more"), "{err}");
        // A part without the large layer needs only its own.
        assert!(check_memory(&plan, &[0], 2, 1 << 10, "--max-memory X").is_ok());
    }

    #[test]
    fn a_matrix_computed_in_row_blocks_needs_its_bitsets_and_a_block_per_thread() {
        let plan = plan_of(&[(4096, 4096), (8192, 4096)]);
        let wide = layer_memory(&plan.layers[0], Layout::Torch, 3);
        assert_eq!(wide, 2 * 4096 * 4096 / 8 + 3 * 64 * 4096 * 17);
        assert!(wide < 4096 * 4096 * 8 / 4);
        // Tall matrices and flax layout are computed whole.
        assert_eq!(
            layer_memory(&plan.layers[1], Layout::Torch, 3),
            8192 * 4096 * 9 + 8192 * 4096 / 8
        );
        assert_eq!(
            layer_memory(&plan.layers[0], Layout::Flax, 3),
            4096 * 4096 * 9 + 4096 * 4096 / 8
        );
    }

    #[test]
    fn groups_stay_within_the_budget() {
        let plan = plan_of(&[(100, 100); 6]);
        let one = layer_memory(&plan.layers[0], Layout::Torch, 2);
        let all: Vec<usize> = (0..6).collect();
        assert_eq!(memory_groups(&plan, &all, 6 * one, 2), vec![all.clone()]);
        assert_eq!(
            memory_groups(&plan, &all, 2 * one, 2),
            vec![vec![0, 1], vec![2, 3], vec![4, 5]]
        );
        assert_eq!(memory_groups(&plan, &all, 1, 2).len(), 6);
    }
}

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

pub mod base;
mod memory;
mod output;

use crate::error::Error;
use crate::layer::Format;
use crate::layer::Names;
use crate::layer::{Dtype, Layout};
use crate::plan::Plan;
use crate::schemes::LayerPlan;
use crate::schemes::{self, LayerStats};
use crate::tensor::{self, FlaxView, RowBlocks};
use crate::write::pair;
use crate::write::{self, Container, Destination, Output};
use base::{Base, BaseFile, DirectoryFiles};
pub(crate) use memory::{BUDGET, limit as memory_limit};
pub use memory::{DEFAULT_MEMORY_SHARE, layer_memory};
pub use output::{layer_tensors, shards, tensor_indices, tensors};

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
/// shards of one part. Everything that can be refused is checked first (the output, the
/// base, the masks file, the part, the memory), then the layers' statistics are computed,
/// the output is built around them, and the layers are generated and written group by group.
pub fn run(plan: &Plan, options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let destination = Destination {
        path: options.output.clone(),
        force: options.force,
    };
    let stream = is_stdout(&options.output);
    if stream {
        check_stream(plan, options)?;
    }
    let masks = check_masks(plan, options, &destination)?;
    let assembly = assemble_base(plan, options, &destination)?;
    let shards = output::shards(plan, masks.is_some());
    let selected = select_layers(plan.layers.len(), shards.as_deref(), options.part)?;
    if assembly.is_none() && !stream {
        check_destination(plan, shards.is_some(), options.part, &destination)?;
    }
    let pool = thread_pool(options.threads)?;
    let threads = pool.current_num_threads();
    let budget = match memory::limit(options.max_memory) {
        Some((limit, source)) => {
            memory::check(plan, &selected, threads, limit, &source)?;
            memory::BUDGET.min(limit)
        }
        None => memory::BUDGET,
    };
    pool.install(|| {
        let spill_dir = if stream {
            std::env::temp_dir()
        } else {
            destination.parent()
        };
        let mut prepared = Preparation::new(plan, &selected, &spill_dir);
        let stats_of: HashMap<usize, &LayerStats> =
            selected.iter().copied().zip(&prepared.stats).collect();
        let target = output::Target {
            plan,
            destination: &destination,
            stream,
            part: options.part,
            base: options.base.as_deref(),
            masks: masks.as_ref(),
        };
        let built = output::build(&target, shards.as_deref(), assembly, &stats_of)?;
        let passes = passes(plan, stream);
        for &pieces in &passes {
            for group in memory::groups(plan, &selected, budget, threads) {
                write_group(
                    plan,
                    built.output.as_ref(),
                    &mut prepared,
                    &group,
                    pieces,
                    options,
                )?;
            }
        }
        let bytes = built.output.bytes();
        built.output.commit()?;
        Ok(Report {
            layers: selected.clone(),
            stats: prepared.stats,
            files: built.files,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            base_files: built.base_files,
        })
    })
}

/// `-o -` writes one safetensors file to standard output, as it is generated: refused for
/// what needs a path (npy, npz, shards, a base to mirror, a masks file placed with it).
fn check_stream(plan: &Plan, options: &Options) -> Result<(), Error> {
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
            "--masks moves the weights and the masks into place together: give the weights a path"
                .into(),
        );
    }
    Ok(())
}

/// With `--base`: the plan's layers placed in the base's files ([`base::assemble`]) and the
/// base directory's other files, after checking that the output can mirror the base.
fn assemble_base(
    plan: &Plan,
    options: &Options,
    destination: &Destination,
) -> Result<Option<(Vec<BaseFile>, DirectoryFiles)>, Error> {
    let Some(base) = &options.base else {
        return Ok(None);
    };
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
    Ok(Some((files, base::directory_files(base)?)))
}

/// The layers this run writes: all `count`, or those of one part of a sharded output.
fn select_layers(
    count: usize,
    shards: Option<&[Vec<usize>]>,
    part: Option<Part>,
) -> Result<Vec<usize>, Error> {
    let (shards, part) = match (shards, part) {
        (_, None) => return Ok((0..count).collect()),
        (None, Some(_)) => {
            return Err(Error::Usage(
                "--shard needs sharded output: give --max-shard-size too".into(),
            ));
        }
        (Some(shards), Some(part)) => (shards, part),
    };
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
    Ok(shards[part.index - 1].clone())
}

/// The destination of an output written to a path (not a base's mirror, not a stream):
/// a file, or a directory (npy, shards; one part's shards go into a shared directory).
fn check_destination(
    plan: &Plan,
    sharded: bool,
    part: Option<Part>,
    destination: &Destination,
) -> Result<(), Error> {
    match (plan.output.format, sharded, part) {
        (_, true, Some(_)) => {
            if destination.path.exists() && !destination.path.is_dir() {
                return Err(Error::Usage(format!(
                    "'{}' exists and is not a directory; a sharded output is a directory",
                    destination.path.display()
                )));
            }
            if !destination.parent().is_dir() {
                destination.check(Container::Directory)?;
            }
            Ok(())
        }
        (Format::Safetensors | Format::Npz, false, _) => destination.check(Container::File),
        _ => destination.check(Container::Directory),
    }
}

/// The worker threads: `threads`, or rayon's choice.
fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool, Error> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    builder.build().map_err(|e| {
        Error::Usage(format!(
            "cannot start {} worker threads: {e}",
            threads.unwrap_or(0)
        ))
    })
}

/// The passes over the layers. A file takes each layer's tensors at once. A stream takes
/// them in data order, weights (and biases) and masks apart when their element sizes
/// differ: then the layers are prepared twice, once for each.
fn passes(plan: &Plan, stream: bool) -> Vec<Pieces> {
    use std::cmp::Ordering;
    match (
        stream,
        plan.output.mask_dtype.size().cmp(&plan.output.dtype.size()),
    ) {
        (false, _) | (true, Ordering::Equal) => vec![Pieces::All],
        (true, Ordering::Less) => vec![Pieces::Values, Pieces::Masks],
        (true, Ordering::Greater) => vec![Pieces::Masks, Pieces::Values],
    }
}

/// The layers of a run on their way to being written: their statistics, which the output's
/// header needs before any weight exists; the layers already prepared (a small run, whose
/// prepared layers fit [`memory::PREPARED`] together, prepares them all at once and draws
/// each layer's randomness once); and the values of costly layers kept on disk. A larger run
/// computes the statistics alone first and prepares each layer when its group comes, so its
/// memory stays bounded; the bytes are the same either way.
struct Preparation<'p> {
    plan: &'p Plan,
    stats: Vec<LayerStats>,
    early: HashMap<usize, schemes::Prepared<'p>>,
    spill: Option<memory::Spill>,
    spilled: HashMap<usize, (u64, usize)>,
    stats_of: HashMap<usize, usize>,
}

impl<'p> Preparation<'p> {
    fn new(plan: &'p Plan, selected: &[usize], spill_dir: &Path) -> Preparation<'p> {
        let all_fit = selected
            .iter()
            .map(|&k| memory::prepared(&plan.layers[k]))
            .sum::<u64>()
            <= memory::PREPARED;
        let early: HashMap<usize, schemes::Prepared> = if all_fit {
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
            .then(|| memory::Spill::create(spill_dir))
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
        let spilled = selected
            .iter()
            .zip(&spilled)
            .filter_map(|(&k, at)| Some((k, (*at)?)))
            .collect();
        let stats_of = selected.iter().enumerate().map(|(i, &k)| (k, i)).collect();
        Preparation {
            plan,
            stats,
            early,
            spill,
            spilled,
            stats_of,
        }
    }

    /// Layer `k`'s statistics.
    fn stats(&self, k: usize) -> &LayerStats {
        &self.stats[self.stats_of[&k]]
    }

    /// Layer `k` prepared: as prepared early, or from its values on disk, or afresh.
    fn prepare(&self, k: usize, early: Option<schemes::Prepared<'p>>) -> schemes::Prepared<'p> {
        let (plan, layer) = (self.plan, &self.plan.layers[k]);
        early
            .or_else(|| {
                let values = self.spill.as_ref()?.take(*self.spilled.get(&k)?)?;
                layer
                    .rules()
                    .resume(layer, plan.seed, values, self.stats(k).clone())
            })
            .unwrap_or_else(|| schemes::prepare(layer, plan.seed))
    }
}

/// Prepares and writes `pieces` of a group of layers, in parallel, each checked against the
/// statistics the output's header holds.
fn write_group(
    plan: &Plan,
    output: &dyn Output,
    prepared: &mut Preparation<'_>,
    group: &[usize],
    pieces: Pieces,
    options: &Options,
) -> Result<(), Error> {
    let indices = output::tensor_indices(plan);
    let group: Vec<_> = group
        .iter()
        .map(|&k| (k, prepared.early.remove(&k)))
        .collect();
    let prepared = &*prepared;
    group
        .into_par_iter()
        .try_for_each(|(k, early)| -> Result<(), Error> {
            let layer = &plan.layers[k];
            let ready = prepared.prepare(k, early);
            if &ready.stats != prepared.stats(k) {
                return Err(Error::Internal(format!(
                    "layer \"{}\": generation disagrees with its planned statistics",
                    layer.name
                )));
            }
            let bytes = write_layer(plan, output, indices[k].start, layer, &ready, pieces)?;
            if let Some(progress) = &options.progress {
                progress(bytes);
            }
            Ok(())
        })
}

//! `generate`: executes a plan. The statistics of every layer are computed first from the
//! supports alone (cheap), so the output's header and provenance exist before any weight;
//! then layers are generated in parallel, each from its own stream, and written at their
//! places in the output as they finish. Memory is bounded by the layers in flight, not by
//! the model; the bytes do not depend on the number of threads.

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::Error;
use crate::plan::{LayerPlan, Plan};
use crate::provenance::Provenance;
use crate::schemes::{self, LayerStats};
use crate::spec::Kind;
use crate::write::{self, Destination, TensorInfo};

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub output: PathBuf,
    pub force: bool,
    /// Worker threads; `None` lets rayon decide (all cores, or `RAYON_NUM_THREADS`).
    pub threads: Option<usize>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub stats: Vec<LayerStats>,
    pub bytes: u64,
    pub seconds: f64,
}

impl Report {
    pub fn nnz(&self) -> u64 {
        self.stats.iter().map(|s| s.nnz).sum()
    }

    pub fn density(&self) -> f64 {
        self.nnz() as f64 / self.stats.iter().map(|s| s.numel).sum::<u64>() as f64
    }
}

/// The output tensors of a plan, in order: each layer's weight, then its mask.
pub fn tensors(plan: &Plan) -> Vec<TensorInfo> {
    plan.layers
        .iter()
        .flat_map(|layer| {
            let shape = layer.shape.dims().to_vec();
            [
                TensorInfo {
                    name: layer.name.clone(),
                    dtype: plan.output.dtype,
                    shape: shape.clone(),
                },
                TensorInfo {
                    name: plan.output.mask_name(&layer.name),
                    dtype: plan.output.mask_dtype,
                    shape,
                },
            ]
        })
        .collect()
}

/// Bytes a layer needs while it is generated: its f64 working matrix, the byte mask and the
/// support bitsets.
pub fn layer_memory(layer: &LayerPlan) -> u64 {
    let (out, inp) = (layer.shape.out() as u64, layer.shape.inp() as u64);
    let matrix = out * inp * (8 + 1) + out * inp / 8;
    match layer.kind() {
        Kind::Linear => matrix,
        Kind::Conv => matrix + layer.shape.numel(),
    }
}

/// Memory the machine has available, where it can be read.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a plan whose largest layers in flight would not fit in available memory.
fn check_memory(plan: &Plan, threads: usize) -> Result<(), Error> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let mut sizes: Vec<u64> = plan.layers.iter().map(layer_memory).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let largest = sizes.first().copied().unwrap_or(0);
    let in_flight: u64 = sizes.iter().take(threads.max(1)).sum();
    if largest > available {
        let layer = plan
            .layers
            .iter()
            .max_by_key(|l| layer_memory(l))
            .expect("a plan has layers");
        return Err(Error::Usage(format!(
            "layer \"{}\" ({}) needs {:.1} GiB to generate, but only {:.1} GiB of memory is available",
            layer.name,
            layer.shape,
            largest as f64 / (1u64 << 30) as f64,
            available as f64 / (1u64 << 30) as f64
        )));
    }
    if in_flight > available {
        return Err(Error::Usage(format!(
            "generating the {threads} largest layers at once needs {:.1} GiB, but only {:.1} GiB of memory is available; pass --threads 1",
            in_flight as f64 / (1u64 << 30) as f64,
            available as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// Generates the plan into `options.output`.
pub fn run(plan: &Plan, options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let destination = Destination {
        path: options.output.clone(),
        force: options.force,
    };
    destination.check(plan.output.format)?;
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
    check_memory(plan, pool.current_num_threads())?;
    pool.install(|| {
        let stats: Vec<LayerStats> = plan
            .layers
            .par_iter()
            .map(|layer| schemes::stats(layer, plan.seed))
            .collect();
        let provenance = Provenance::new(plan, &stats);
        let output = write::create(plan.output.format, &destination, tensors(plan), &provenance)?;
        plan.layers
            .par_iter()
            .enumerate()
            .try_for_each(|(k, layer)| -> Result<(), Error> {
                let prepared = schemes::prepare(layer, plan.seed);
                if prepared.stats != stats[k] {
                    return Err(Error::Internal(format!(
                        "layer \"{}\": generation disagrees with its planned statistics",
                        layer.name
                    )));
                }
                // The mask is final before the values exist: write it while they are computed.
                let (weight, mask_written) = rayon::join(
                    || prepared.weight(),
                    || {
                        write::write_tensor(
                            output.as_ref(),
                            2 * k + 1,
                            &prepared.mask,
                            plan.output.mask_dtype,
                        )
                    },
                );
                mask_written?;
                write::write_tensor(output.as_ref(), 2 * k, &weight, plan.output.dtype)
            })?;
        let bytes = output.bytes();
        output.commit()?;
        Ok(Report {
            stats,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    })
}

//! `eoi generate --json`: what was written, and every layer's record with what generation
//! achieved.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::generate::Report;
use crate::generate::base::DirectoryFiles;
use crate::layer::{Distribution, Dtype, Format, Layout, Names};
use crate::plan::Plan;
use crate::records::{LayerRecord, SCHEMA_VERSION};
use crate::stream::STREAM_VERSION;

/// What `eoi generate --json` prints once the output is written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateJson {
    /// The version of eoi's JSON documents (1); fields are only added within a version.
    pub schema_version: u32,
    pub eoi_version: String,
    /// The version of the random streams.
    pub stream_version: u32,
    /// The output path as given (`-o`).
    pub output: String,
    /// The masks file (`--masks`), or null.
    pub masks: Option<String>,
    /// For a base directory: the files copied and those left out; else null.
    pub base_files: Option<BaseFilesJson>,
    pub format: Format,
    pub dtype: Dtype,
    pub mask_dtype: Dtype,
    pub layout: Layout,
    pub names: Names,
    pub mask_suffix: String,
    pub seed: u64,
    pub distribution: Distribution,
    /// The overall density the spec asks for.
    pub target_density: f64,
    /// The overall density achieved by the layers written (null when none was written).
    pub density: Option<f64>,
    /// Weights of the layers written.
    pub params: u64,
    /// Ones in their masks.
    pub nnz: u64,
    /// Bytes written.
    pub bytes: u64,
    pub seconds: f64,
    /// Files the whole output has (1 unless sharded).
    pub files: usize,
    /// The record of every layer written, with what generation achieved.
    pub layers: Vec<LayerRecord>,
}

/// What a base directory gave the output besides its safetensors files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BaseFilesJson {
    /// File names copied unchanged.
    pub copied: Vec<String>,
    /// Files not copied, with the reason.
    pub left_out: Vec<LeftOutJson>,
}

/// A file of the base directory that was not copied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LeftOutJson {
    pub name: String,
    pub reason: String,
}

impl GenerateJson {
    /// The summary of `report`, written from `plan` to `output` (and `masks`).
    pub fn new(plan: &Plan, report: &Report, output: &Path, masks: Option<&Path>) -> GenerateJson {
        GenerateJson {
            schema_version: SCHEMA_VERSION,
            eoi_version: crate::VERSION.to_string(),
            stream_version: STREAM_VERSION,
            output: output.display().to_string(),
            masks: masks.map(|m| m.display().to_string()),
            base_files: report.base_files.as_ref().map(BaseFilesJson::new),
            format: plan.output.format,
            dtype: plan.output.dtype,
            mask_dtype: plan.output.mask_dtype,
            layout: plan.output.layout,
            names: plan.output.names,
            mask_suffix: plan.output.mask_suffix.clone(),
            seed: plan.seed,
            distribution: plan.distribution,
            target_density: plan.requested_density.get(),
            density: super::finite(report.density()),
            params: report.stats.iter().map(|s| s.numel).sum(),
            nnz: report.nnz(),
            bytes: report.bytes,
            seconds: report.seconds,
            files: report.files,
            layers: report
                .layers
                .iter()
                .zip(&report.stats)
                .map(|(&k, s)| LayerRecord::new(&plan.layers[k], Some(s)))
                .collect(),
        }
    }
}

impl BaseFilesJson {
    fn new(files: &DirectoryFiles) -> BaseFilesJson {
        BaseFilesJson {
            copied: files
                .copied
                .iter()
                .map(|f| f.name.to_string_lossy().into_owned())
                .collect(),
            left_out: files
                .left_out
                .iter()
                .map(|(name, why)| LeftOutJson {
                    name: name.to_string_lossy().into_owned(),
                    reason: why.reason().to_string(),
                })
                .collect(),
        }
    }
}

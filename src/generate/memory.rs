//! How much memory generation may use and what each layer needs: the budget a run is held
//! to (`--max-memory`, or a share of what is available), the groups of layers generated
//! together within it, and the spill file that keeps costly prepared values (approximate
//! isometry's descent) on disk until their layer is written.

use crate::error::Error;
use crate::layer::Layout;
use crate::plan::Plan;
use crate::schemes::LayerPlan;
use crate::units::human_size;

/// Memory the layers in flight may use together; a larger layer runs alone.
pub(crate) const BUDGET: u64 = 512 << 20;

/// The share of the available memory a run may use when `--max-memory` is not given.
pub const DEFAULT_MEMORY_SHARE: f64 = 0.75;

/// Splits `layers` (in order) into consecutive groups whose generation memory fits `budget`
/// together, so that memory is bounded by the largest layer, not by the model.
pub(super) fn groups(
    plan: &Plan,
    layers: &[usize],
    budget: u64,
    threads: usize,
) -> Vec<Vec<usize>> {
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
pub(super) const PREPARED: u64 = 4 << 20;

/// Bytes a prepared layer holds until it is written (see
/// [`Rules::prepared_memory`](crate::schemes::Rules::prepared_memory)).
pub(super) fn prepared(layer: &LayerPlan) -> u64 {
    layer.rules().prepared_memory(layer)
}

/// Prepared values of the layers whose statistics cost their generation (approximate
/// isometry's descent, whose error the header holds), kept on disk between the statistics
/// pass and the layer's turn to be written: the costly part runs once per layer while
/// memory stays bounded by the layers in flight. A
/// private temporary file beside the output (removed when dropped); any I/O failure just
/// means the layer descends again, which gives the same bits.
pub(super) struct Spill {
    file: std::fs::File,
    end: std::sync::atomic::AtomicU64,
}

impl Spill {
    pub(super) fn create(dir: &std::path::Path) -> Option<Spill> {
        let file = tempfile::tempfile_in(dir).ok()?;
        Some(Spill {
            file,
            end: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Stores `values`; where they went.
    pub(super) fn put(&self, values: &[f64]) -> Option<(u64, usize)> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let at = self
            .end
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        crate::write::write_all_at(&self.file, &bytes, at).ok()?;
        Some((at, values.len()))
    }

    pub(super) fn take(&self, (at, len): (u64, usize)) -> Option<Vec<f64>> {
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
pub(crate) fn limit(max_memory: Option<u64>) -> Option<(u64, String)> {
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
pub(super) fn check(
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
        assert!(check(&plan, &[0, 1], 2, need, "--max-memory X").is_ok());
        let err = check(&plan, &[0, 1], 2, need - 1, "--max-memory X")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer \"l1\" (1000x1000) needs 8.7 MiB"),
            "{err}"
        );
        assert!(err.contains("8.7 MiB allowed by --max-memory X"), "{err}");
        assert!(err.contains("pass --max-memory 9MiB or more"), "{err}");
        // A part without the large layer needs only its own.
        assert!(check(&plan, &[0], 2, 1 << 10, "--max-memory X").is_ok());
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
        assert_eq!(groups(&plan, &all, 6 * one, 2), vec![all.clone()]);
        assert_eq!(
            groups(&plan, &all, 2 * one, 2),
            vec![vec![0, 1], vec![2, 3], vec![4, 5]]
        );
        assert_eq!(groups(&plan, &all, 1, 2).len(), 6);
    }
}

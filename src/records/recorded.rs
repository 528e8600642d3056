//! Provenance read back: what an artifact records about how it was made (the `eoi.*` keys of
//! safetensors `__metadata__`, of every shard of a sharded output, or an npy `manifest.json`;
//! see [`super::provenance`] for what is written), parsed without trusting it. A missing or
//! malformed key is described, not fatal, so `verify` can report it beside everything else.
//! The record also says how the tensors are laid out (torch or flax) and named (plain or
//! torch-prune): [`Recorded::weight_name`], [`Recorded::mask_name`] and [`layout_of`] are
//! the one place the checking commands learn it.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{LayerRecord, MASKS_KEY, VERSION_KEY, WEIGHTS_KEY};
use crate::layer::{BelowMinimum, Layout, Names};
use crate::read::Checkpoint;
use crate::schemes::Scheme;

/// The checkpoint `generate --base` completed, as the output records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseRecord {
    /// Its file name (or its index file's), `eoi.base`.
    pub name: String,
    /// The SHA-256 of its header (or of its index file), `eoi.base_sha256`.
    pub sha256: Option<String>,
}
/// One layer as an artifact records it (an entry of `eoi.layers`), read back: the record,
/// which has `achieved_density` and `nnz`, and the JSON it was read from, to compare with a
/// regenerated record field by field. It reads as its [`LayerRecord`].
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    pub record: LayerRecord,
    /// Ones in the mask (the record's `nnz`, which an artifact's record must have).
    pub nnz: u64,
    /// The mask's density (the record's `achieved_density`, which it must have too).
    pub achieved_density: f64,
    /// The record as written.
    pub raw: Value,
}

impl std::ops::Deref for StoredRecord {
    type Target = LayerRecord;

    fn deref(&self) -> &LayerRecord {
        &self.record
    }
}

/// What an artifact says about how it was made, read back from safetensors `__metadata__`
/// or an npy `manifest.json`. Whatever is missing or malformed is `None` here and described
/// in `problems`, so one bad key does not hide what the others say.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub version: Option<String>,
    pub stream_version: Option<u32>,
    pub schema_version: Option<u32>,
    pub seed: Option<u64>,
    pub mask_suffix: Option<String>,
    pub spec: Option<String>,
    /// The scheme `--scheme` imposed on every layer, if it was given.
    pub scheme_override: Option<Scheme>,
    /// The rule `--below-minimum` imposed, if it was given.
    pub below_minimum_override: Option<BelowMinimum>,
    /// The order of the weights' dimensions (`eoi.layout`; torch when not recorded).
    pub layout: Layout,
    /// How weights and masks are named (`eoi.names`; plain when not recorded).
    pub names: Names,
    /// The checkpoint `generate --base` completed, for a `--base` output.
    pub base: Option<BaseRecord>,
    /// The masks file a `--masks` output records (`eoi.masks`), relative to the directory of
    /// the file that records it.
    pub masks: Option<String>,
    /// The weights output a masks file records (`eoi.weights`): the file holds masks only.
    pub weights: Option<String>,
    /// `(k, n)` for a file that records being shard k of n (`eoi.shard`), read on its own;
    /// `None` for a whole checkpoint, the shards of an index included.
    pub shard: Option<(usize, usize)>,
    pub layers: Option<Vec<StoredRecord>>,
    /// Each key that is missing or malformed, in words.
    pub problems: Vec<String>,
}

/// The layout a checkpoint's weights are stored in: flax when eoi's record says so
/// (`eoi.layout`, `layout` in an npy manifest) or when every file's safetensors
/// `__metadata__` says `format: flax` (as Hugging Face's Flax checkpoints do); PyTorch's
/// otherwise.
pub fn layout_of(checkpoint: &Checkpoint, recorded: Option<&Recorded>) -> Layout {
    let files = checkpoint.files();
    let flax_format = !files.is_empty()
        && files.iter().all(|(_, a)| {
            a.metadata()
                .is_some_and(|pairs| pairs.iter().any(|(k, v)| k == "format" && v == "flax"))
        });
    if flax_format || recorded.is_some_and(|r| r.layout == Layout::Flax) {
        Layout::Flax
    } else {
        Layout::Torch
    }
}

/// `k/n` with `1 <= k <= n`.
fn parse_shard(text: &str) -> Option<(usize, usize)> {
    let (k, n) = text.split_once('/')?;
    let (k, n) = (k.parse().ok()?, n.parse().ok()?);
    (1..=n).contains(&k).then_some((k, n))
}

impl Recorded {
    /// What a checkpoint records: the metadata of a safetensors file, the manifest of an npy
    /// directory or archive, or the metadata of every shard of a sharded checkpoint, merged
    /// (see [`Recorded::from_shards`]). `None` when it records nothing at all.
    pub fn of(checkpoint: &Checkpoint) -> Option<Recorded> {
        if checkpoint.is_sharded() {
            return Recorded::from_shards(checkpoint);
        }
        let (_, artifact) = checkpoint.files().first()?;
        match (artifact.metadata(), artifact.manifest()) {
            (Some(pairs), _) => Some(Recorded::from_metadata(pairs)),
            (_, Some(doc)) => Some(Recorded::from_manifest(doc)),
            _ => None,
        }
    }

    /// The suffix of mask names: the recorded one, else `_mask`.
    pub fn mask_suffix(&self) -> &str {
        match self.names {
            Names::TorchPrune => "_mask",
            Names::Plain => self
                .mask_suffix
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("_mask"),
        }
    }

    /// The stored name of layer `layer`'s weight: the layer's name, or torch-prune's
    /// `<layer>_orig`.
    pub fn weight_name(&self, layer: &str) -> String {
        match self.names {
            Names::Plain => layer.to_string(),
            Names::TorchPrune => format!("{layer}_orig"),
        }
    }

    /// The stored name of layer `layer`'s mask: the layer's name and the mask suffix, or
    /// torch-prune's `<layer>_mask`.
    pub fn mask_name(&self, layer: &str) -> String {
        format!("{layer}{}", self.mask_suffix())
    }

    /// The records of every shard of a sharded checkpoint as one: the layers of all shards
    /// in index order, and the keys that describe the run (versions, seed, spec, layout,
    /// names, base...) taken from the first shard. Each shard must record the same run
    /// keys and `eoi.shard` = its position in the index; the index's `total_size`, when eoi
    /// wrote the index, must be the shards' tensor bytes. A problem that every shard has is
    /// described once; others name their shard. `None` when no shard has metadata.
    pub fn from_shards(checkpoint: &Checkpoint) -> Option<Recorded> {
        let files = checkpoint.files();
        if files.iter().all(|(_, a)| a.metadata().is_none()) {
            return None;
        }
        let n = files.len();
        let per: Vec<(&str, Recorded)> = files
            .iter()
            .map(|(name, a)| {
                let pairs = a.metadata().unwrap_or_default();
                (name.as_str(), Recorded::from_metadata(pairs))
            })
            .collect();
        let (first_name, first) = &per[0];
        let mut merged = Recorded {
            layers: None,
            problems: Vec::new(),
            shard: None,
            ..first.clone()
        };
        // Problems every shard has once, the others with their shard.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, r) in &per {
            for p in r.problems.iter().collect::<HashSet<_>>() {
                *counts.entry(p.as_str()).or_default() += 1;
            }
        }
        let mut said = HashSet::new();
        let mut seen = HashSet::new();
        let mut layers: Option<Vec<StoredRecord>> = None;
        for (k, (name, r)) in per.iter().enumerate() {
            for p in &r.problems {
                if counts[p.as_str()] == n {
                    if said.insert(p.clone()) {
                        merged.problems.push(p.clone());
                    }
                } else {
                    merged.problems.push(format!("shard \"{name}\": {p}"));
                }
            }
            if k > 0 {
                for ((key, ours), (_, theirs)) in r.run_keys().iter().zip(first.run_keys()) {
                    if *ours != theirs {
                        let values = if ours.len() + theirs.len() <= 80 {
                            format!(" ({theirs} and {ours})")
                        } else {
                            String::new()
                        };
                        merged.problems.push(format!(
                            "shards \"{first_name}\" and \"{name}\" record different {key}{values}: the shards were not written by one run"
                        ));
                    }
                }
            }
            match r.shard {
                Some((i, m)) if (i, m) == (k + 1, n) => {}
                Some((i, m)) => merged.problems.push(format!(
                    "shard \"{name}\" records eoi.shard {i}/{m}, but it is file {} of the {n} the index lists",
                    k + 1
                )),
                None if r.layers.is_some() => merged.problems.push(format!(
                    "shard \"{name}\" has no eoi.shard key (eoi records which shard each file is)"
                )),
                None => {}
            }
            if let Some(list) = &r.layers {
                let all = layers.get_or_insert_with(Vec::new);
                for layer in list {
                    if seen.insert(layer.name.clone()) {
                        all.push(layer.clone());
                    } else {
                        merged.problems.push(format!(
                            "layer \"{}\" is recorded by two shards (again by \"{name}\")",
                            layer.name
                        ));
                    }
                }
            }
        }
        merged.layers = layers;
        let index = checkpoint.index_metadata();
        if index.is_some_and(|m| m.get(VERSION_KEY).is_some()) {
            let total = index.and_then(|m| m.get("total_size"));
            let bytes = checkpoint.data_bytes();
            if total.and_then(Value::as_u64) != Some(bytes) {
                merged.problems.push(format!(
                    "the index records total_size {}, the shards hold {bytes} bytes of tensors",
                    total.map_or_else(|| "(none)".to_string(), Value::to_string)
                ));
            }
        }
        Some(merged)
    }

    /// The keys that describe one run, as text, to compare the shards of one output.
    fn run_keys(&self) -> Vec<(&'static str, String)> {
        let text = |v: Option<String>| v.unwrap_or_else(|| "(none)".into());
        vec![
            ("eoi.version", text(self.version.clone())),
            (
                "eoi.stream_version",
                text(self.stream_version.map(|v| v.to_string())),
            ),
            (
                "eoi.schema_version",
                text(self.schema_version.map(|v| v.to_string())),
            ),
            ("eoi.seed", text(self.seed.map(|v| v.to_string()))),
            ("eoi.mask_suffix", text(self.mask_suffix.clone())),
            ("eoi.spec", text(self.spec.clone())),
            (
                "eoi.scheme",
                text(self.scheme_override.map(|s| s.name().to_string())),
            ),
            (
                "eoi.below_minimum",
                text(self.below_minimum_override.map(|b| b.name().to_string())),
            ),
            ("eoi.layout", self.layout.name().to_string()),
            ("eoi.names", self.names.name().to_string()),
            ("eoi.base", text(self.base.as_ref().map(|b| b.name.clone()))),
            (MASKS_KEY, text(self.masks.clone())),
            (
                "eoi.base_sha256",
                text(self.base.as_ref().and_then(|b| b.sha256.clone())),
            ),
        ]
    }

    /// Reads the `eoi.*` keys of safetensors metadata.
    pub fn from_metadata(pairs: &[(String, String)]) -> Recorded {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let mut recorded = Recorded::default();
        let mut number = |key: &str| -> Option<u64> {
            match get(key) {
                None => {
                    recorded
                        .problems
                        .push(format!("metadata key \"{key}\" is missing"));
                    None
                }
                Some(text) => match text.parse::<u64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        recorded.problems.push(format!(
                            "metadata key \"{key}\" is \"{text}\", not a whole number"
                        ));
                        None
                    }
                },
            }
        };
        let stream_version = number("eoi.stream_version");
        let schema_version = number("eoi.schema_version");
        let seed = number("eoi.seed");
        recorded.stream_version = stream_version.and_then(|n| u32::try_from(n).ok());
        recorded.schema_version = schema_version.and_then(|n| u32::try_from(n).ok());
        recorded.seed = seed;
        for (key, slot) in [
            ("eoi.version", &mut recorded.version),
            ("eoi.mask_suffix", &mut recorded.mask_suffix),
            ("eoi.spec", &mut recorded.spec),
        ] {
            match get(key) {
                Some(v) => *slot = Some(v.to_string()),
                None => recorded
                    .problems
                    .push(format!("metadata key \"{key}\" is missing")),
            }
        }
        if let Some(name) = get("eoi.scheme") {
            recorded.scheme_override = Scheme::parse(name);
            if recorded.scheme_override.is_none() {
                recorded.problems.push(format!(
                    "metadata key \"eoi.scheme\" is \"{name}\", not a scheme this eoi knows"
                ));
            }
        }
        if let Some(name) = get("eoi.below_minimum") {
            recorded.below_minimum_override = BelowMinimum::parse(name);
            if recorded.below_minimum_override.is_none() {
                recorded.problems.push(format!(
                    "metadata key \"eoi.below_minimum\" is \"{name}\", not a rule this eoi knows"
                ));
            }
        }
        recorded.read_output_keys(
            |key| get(&format!("eoi.{key}")).map(|v| Some(v.to_string())),
            "metadata key \"eoi.",
        );
        recorded.masks = get(MASKS_KEY).map(str::to_string);
        recorded.weights = get(WEIGHTS_KEY).map(str::to_string);
        if let Some(name) = get("eoi.base") {
            recorded.base = Some(BaseRecord {
                name: name.to_string(),
                sha256: get("eoi.base_sha256").map(str::to_string),
            });
        }
        if let Some(text) = get("eoi.shard") {
            recorded.shard = parse_shard(text);
            if recorded.shard.is_none() {
                recorded.problems.push(format!(
                    "metadata key \"eoi.shard\" is \"{text}\", not K/N with 1 <= K <= N"
                ));
            }
        }
        match get("eoi.layers") {
            None => recorded
                .problems
                .push("metadata key \"eoi.layers\" is missing".into()),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(layers) => recorded.layers = read_layers(&layers, &mut recorded.problems),
                Err(e) => recorded
                    .problems
                    .push(format!("metadata key \"eoi.layers\" is not JSON: {e}")),
            },
        }
        recorded
    }

    /// Reads an npy manifest (`eoi_version`, `stream_version`, `seed`, ... with typed values).
    pub fn from_manifest(doc: &Value) -> Recorded {
        let mut recorded = Recorded::default();
        let mut problems = Vec::new();
        let mut field = |key: &str| -> Option<&Value> {
            let value = doc.get(key);
            if value.is_none() {
                problems.push(format!("manifest key \"{key}\" is missing"));
            }
            value
        };
        let version = field(VERSION_KEY).cloned();
        let stream_version = field("stream_version").cloned();
        let schema_version = field("schema_version").cloned();
        let seed = field("seed").cloned();
        let mask_suffix = field("mask_suffix").cloned();
        let spec = field("spec").cloned();
        let layers = field("layers").cloned();
        let mut malformed = |key: &str, what: &str| {
            problems.push(format!("manifest key \"{key}\" is not {what}"));
        };
        let text = |v: Option<Value>, key: &str, m: &mut dyn FnMut(&str, &str)| match v {
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                m(key, "a string");
                None
            }
            None => None,
        };
        recorded.version = text(version, VERSION_KEY, &mut malformed);
        recorded.mask_suffix = text(mask_suffix, "mask_suffix", &mut malformed);
        recorded.spec = text(spec, "spec", &mut malformed);
        let mut whole = |v: Option<Value>, key: &str| match v {
            Some(v) => {
                let n = v.as_u64();
                if n.is_none() {
                    malformed(key, "a whole number");
                }
                n
            }
            None => None,
        };
        recorded.stream_version =
            whole(stream_version, "stream_version").and_then(|n| u32::try_from(n).ok());
        recorded.schema_version =
            whole(schema_version, "schema_version").and_then(|n| u32::try_from(n).ok());
        recorded.seed = whole(seed, "seed");
        match doc.get("scheme") {
            None => {}
            Some(Value::String(name)) if Scheme::parse(name).is_some() => {
                recorded.scheme_override = Scheme::parse(name);
            }
            Some(other) => problems.push(format!(
                "manifest key \"scheme\" is {other}, not a scheme this eoi knows"
            )),
        }
        match doc.get("below_minimum") {
            None => {}
            Some(Value::String(name)) if BelowMinimum::parse(name).is_some() => {
                recorded.below_minimum_override = BelowMinimum::parse(name);
            }
            Some(other) => problems.push(format!(
                "manifest key \"below_minimum\" is {other}, not a rule this eoi knows"
            )),
        }
        recorded.problems = problems;
        recorded.read_output_keys(
            |key| doc.get(key).map(|v| v.as_str().map(str::to_string)),
            "manifest key \"",
        );
        if let Some(layers) = layers {
            recorded.layers = read_layers(&layers, &mut recorded.problems);
        }
        recorded
    }
}

impl Recorded {
    /// Reads `layout` and `names` through `get(key)`: `None` when absent, `Some(None)` when
    /// not a string. `what` starts the description of a bad key.
    fn read_output_keys(&mut self, get: impl Fn(&str) -> Option<Option<String>>, what: &str) {
        if let Some(value) = get("layout") {
            match value.as_deref().and_then(Layout::parse) {
                Some(layout) => self.layout = layout,
                None => self.problems.push(format!(
                    "{what}layout\" is {}, not a layout this eoi knows ({})",
                    value.map_or("not a string".into(), |v| format!("\"{v}\"")),
                    Layout::NAMES.join(", ")
                )),
            }
        }
        if let Some(value) = get("names") {
            match value.as_deref().and_then(Names::parse) {
                Some(names) => self.names = names,
                None => self.problems.push(format!(
                    "{what}names\" is {}, not a naming this eoi knows ({})",
                    value.map_or("not a string".into(), |v| format!("\"{v}\"")),
                    Names::NAMES.join(", ")
                )),
            }
        }
    }
}

/// Reads the array of layer records; a malformed record is described in `problems` and left out.
fn read_layers(layers: &Value, problems: &mut Vec<String>) -> Option<Vec<StoredRecord>> {
    let Some(list) = layers.as_array() else {
        problems.push("the layer records are not a JSON array".into());
        return None;
    };
    let mut records: Vec<StoredRecord> = Vec::with_capacity(list.len());
    let mut seen: HashSet<String> = HashSet::with_capacity(list.len());
    for (k, raw) in list.iter().enumerate() {
        match read_layer(raw) {
            Ok(record) => {
                if !seen.insert(record.name.clone()) {
                    problems.push(format!("layer \"{}\" is recorded twice", record.name));
                } else {
                    records.push(record);
                }
            }
            Err(what) => {
                let name = raw.get("name").and_then(Value::as_str);
                problems.push(match name {
                    Some(name) => format!("the record of layer \"{name}\" {what}"),
                    None => format!("layer record {k} {what}"),
                });
            }
        }
    }
    Some(records)
}

/// An artifact's record of a layer: a [`LayerRecord`] with what generation achieved.
fn read_layer(raw: &Value) -> Result<StoredRecord, String> {
    let record = LayerRecord::read(raw)?;
    let achieved_density = record
        .achieved_density
        .ok_or("has no \"achieved_density\"")?;
    let nnz = record.nnz.ok_or("has no \"nnz\"")?;
    Ok(StoredRecord {
        record,
        nnz,
        achieved_density,
        raw: raw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, Overrides};
    use crate::spec::{self, Source};
    use crate::stream::STREAM_VERSION;

    const SPEC: &str = "seed = 3\n[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"a\"\nshape = [4, 6]\n[[layer]]\nname = \"c\"\nshape = [4, 2, 3]\n";

    /// The layer records of SPEC as eoi writes them.
    fn layers() -> Value {
        let spec = spec::parse(Source {
            name: "t.toml".into(),
            text: SPEC.into(),
        })
        .unwrap();
        let plan = plan::plan(&spec, &Overrides::default()).unwrap();
        let records = plan
            .layers
            .iter()
            .map(|l| LayerRecord::new(l, Some(&crate::schemes::stats(l, plan.seed))).to_value())
            .collect();
        Value::Array(records)
    }

    fn metadata() -> Vec<(String, String)> {
        [
            ("format", "pt".to_string()),
            ("eoi.version", crate::VERSION.to_string()),
            ("eoi.stream_version", STREAM_VERSION.to_string()),
            ("eoi.schema_version", "1".to_string()),
            ("eoi.seed", "3".to_string()),
            ("eoi.mask_suffix", "_mask".to_string()),
            ("eoi.spec", SPEC.to_string()),
            ("eoi.layers", layers().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn manifest() -> Value {
        serde_json::json!({
            VERSION_KEY: crate::VERSION,
            "stream_version": STREAM_VERSION,
            "schema_version": 1,
            "seed": 3,
            "mask_suffix": "_mask",
            "spec": SPEC,
            "layers": layers(),
        })
    }

    #[test]
    fn metadata_and_manifest_read_back_the_same() {
        let a = Recorded::from_metadata(&metadata());
        let b = Recorded::from_manifest(&manifest());
        for r in [&a, &b] {
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            assert_eq!(r.seed, Some(3));
            assert_eq!(r.stream_version, Some(STREAM_VERSION));
            assert_eq!(r.version.as_deref(), Some(crate::VERSION));
            assert_eq!(r.mask_suffix.as_deref(), Some("_mask"));
            assert_eq!(r.spec.as_deref(), Some(SPEC));
            let layers = r.layers.as_ref().unwrap();
            assert_eq!(layers.len(), 2);
            assert_eq!(layers[1].shape, [4, 2, 3]);
            assert!(layers[1].centre_nnz.is_some());
            assert!(layers[0].centre_nnz.is_none());
            assert_eq!(layers[0].density, 0.5);
        }
        assert_eq!(a.layers, b.layers);
    }

    #[test]
    fn a_layer_recorded_twice_is_described_and_kept_once() {
        let mut pairs = metadata();
        for (k, v) in &mut pairs {
            if k == "eoi.layers" {
                let mut list: Vec<Value> = serde_json::from_str(v).unwrap();
                list.push(list[0].clone());
                *v = serde_json::to_string(&list).unwrap();
            }
        }
        let r = Recorded::from_metadata(&pairs);
        let layers = r.layers.as_ref().unwrap();
        assert_eq!(layers.len(), 2);
        let text = r.problems.join("\n");
        assert!(
            text.contains(&format!("layer \"{}\" is recorded twice", layers[0].name)),
            "{text}"
        );
    }

    #[test]
    fn layout_names_shard_and_base_are_read_and_bad_values_described() {
        let mut pairs = metadata();
        assert_eq!(Recorded::from_metadata(&pairs).layout, Layout::Torch);
        for (k, v) in [
            ("eoi.layout", "flax"),
            ("eoi.names", "torch-prune"),
            ("eoi.shard", "2/3"),
            ("eoi.base", "base.safetensors"),
            ("eoi.base_sha256", "ab12"),
        ] {
            pairs.push((k.into(), v.into()));
        }
        let r = Recorded::from_metadata(&pairs);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(
            (r.layout, r.names, r.shard),
            (Layout::Flax, Names::TorchPrune, Some((2, 3)))
        );
        assert_eq!(
            r.base,
            Some(BaseRecord {
                name: "base.safetensors".into(),
                sha256: Some("ab12".into())
            })
        );
        assert_eq!(r.weight_name("a.weight"), "a.weight_orig");
        assert_eq!(r.mask_name("a.weight"), "a.weight_mask");

        for (k, v) in &mut pairs {
            match k.as_str() {
                "eoi.layout" => *v = "jax".into(),
                "eoi.names" => *v = "pruned".into(),
                "eoi.shard" => *v = "4/3".into(),
                _ => {}
            }
        }
        let r = Recorded::from_metadata(&pairs);
        let text = r.problems.join("\n");
        for expected in [
            "metadata key \"eoi.layout\" is \"jax\", not a layout this eoi knows (torch, flax)",
            "metadata key \"eoi.names\" is \"pruned\", not a naming this eoi knows (plain, torch-prune)",
            "metadata key \"eoi.shard\" is \"4/3\", not K/N with 1 <= K <= N",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        assert_eq!(
            (r.layout, r.names, r.shard),
            (Layout::Torch, Names::Plain, None)
        );

        let mut doc = manifest();
        doc["layout"] = serde_json::json!("flax");
        doc["names"] = serde_json::json!(3);
        let r = Recorded::from_manifest(&doc);
        assert_eq!(r.layout, Layout::Flax);
        assert!(
            r.problems
                .join("\n")
                .contains("manifest key \"names\" is not a string, not a naming this eoi knows"),
            "{:?}",
            r.problems
        );
    }

    /// A sharded checkpoint in a temporary directory: one shard per layer of SPEC, each with
    /// `metadata(k)` (k from 0), and an index eoi's way.
    fn shards(metadata: impl Fn(usize) -> Vec<(String, String)>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut weight_map = serde_json::Map::new();
        for k in 0..2 {
            let name = format!("s{k}.safetensors");
            let tensor = format!("t{k}");
            let meta: serde_json::Map<String, Value> = metadata(k)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let header = serde_json::json!({
                "__metadata__": meta,
                tensor.clone(): {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
            })
            .to_string();
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            bytes.push(1);
            std::fs::write(dir.path().join(&name), bytes).unwrap();
            weight_map.insert(tensor, Value::String(name));
        }
        let index = serde_json::json!({
            "metadata": {"total_size": 2, VERSION_KEY: crate::VERSION},
            "weight_map": weight_map,
        });
        std::fs::write(dir.path().join(crate::read::INDEX), index.to_string()).unwrap();
        dir
    }

    /// SPEC's metadata for shard k of 2: its own layer record and `eoi.shard`.
    fn shard_metadata(k: usize) -> Vec<(String, String)> {
        let mut pairs = metadata();
        for (key, v) in &mut pairs {
            if key == "eoi.layers" {
                let list: Vec<Value> = serde_json::from_str(v).unwrap();
                *v = Value::Array(vec![list[k].clone()]).to_string();
            }
        }
        pairs.push(("eoi.shard".into(), format!("{}/2", k + 1)));
        pairs
    }

    #[test]
    fn shards_are_read_as_one_record() {
        let dir = shards(shard_metadata);
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        let r = Recorded::of(&checkpoint).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.shard, None);
        assert_eq!(r.seed, Some(3));
        let names: Vec<&str> = r.layers.iter().flatten().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        // Each shard alone says which it is.
        let alone = Checkpoint::open(&dir.path().join("s1.safetensors")).unwrap();
        assert_eq!(Recorded::of(&alone).unwrap().shard, Some((2, 2)));
    }

    #[test]
    fn shards_that_disagree_are_described() {
        let dir = shards(|k| {
            let mut pairs = shard_metadata(k);
            for (key, v) in &mut pairs {
                match key.as_str() {
                    "eoi.seed" if k == 1 => *v = "4".into(),
                    "eoi.shard" if k == 1 => *v = "1/2".into(),
                    // The same layer in both shards.
                    "eoi.layers" => {
                        *v = shard_metadata(0)
                            .into_iter()
                            .find(|(key, _)| key == "eoi.layers")
                            .unwrap()
                            .1
                    }
                    _ => {}
                }
            }
            pairs.retain(|(key, _)| key != "eoi.spec");
            pairs
        });
        let text = Recorded::of(&Checkpoint::open(dir.path()).unwrap())
            .unwrap()
            .problems
            .join("\n");
        for expected in [
            "shards \"s0.safetensors\" and \"s1.safetensors\" record different eoi.seed (3 and 4)",
            "shard \"s1.safetensors\" records eoi.shard 1/2, but it is file 2 of the 2 the index lists",
            "layer \"a\" is recorded by two shards (again by \"s1.safetensors\")",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        // A problem of every shard is said once.
        assert_eq!(text.matches("\"eoi.spec\" is missing").count(), 1, "{text}");

        // An index of eoi's must count the shards' bytes.
        let index = dir.path().join(crate::read::INDEX);
        let text = std::fs::read_to_string(&index).unwrap();
        std::fs::write(&index, text.replace("\"total_size\":2", "\"total_size\":5")).unwrap();
        let problems = Recorded::of(&Checkpoint::open(dir.path()).unwrap())
            .unwrap()
            .problems;
        assert!(
            problems.contains(
                &"the index records total_size 5, the shards hold 2 bytes of tensors".to_string()
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn missing_and_malformed_keys_are_described() {
        let mut pairs = metadata();
        pairs.retain(|(k, _)| k != "eoi.spec");
        for (k, v) in &mut pairs {
            if k == "eoi.seed" {
                *v = "-1".into();
            }
            if k == "eoi.layers" {
                *v = v.replacen("\"nnz\":", "\"nnz\":-", 1);
            }
        }
        let r = Recorded::from_metadata(&pairs);
        assert!(r.spec.is_none() && r.seed.is_none());
        let text = r.problems.join("\n");
        assert!(text.contains("\"eoi.spec\" is missing"), "{text}");
        assert!(text.contains("\"eoi.seed\" is \"-1\""), "{text}");
        assert!(
            text.contains("the record of layer \"a\" has \"nnz\" that is not a whole number"),
            "{text}"
        );
        assert_eq!(r.layers.unwrap().len(), 1);

        let mut doc = manifest();
        doc["seed"] = serde_json::json!("three");
        doc.as_object_mut().unwrap().remove("layers");
        let r = Recorded::from_manifest(&doc);
        let text = r.problems.join("\n");
        assert!(
            text.contains("manifest key \"seed\" is not a whole number"),
            "{text}"
        );
        assert!(
            text.contains("manifest key \"layers\" is missing"),
            "{text}"
        );
        assert!(r.layers.is_none());
    }
}

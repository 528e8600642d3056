//! Records: what eoi writes about its work as JSON and reads back. Each layer's
//! [`LayerRecord`] (in `plan --json`, `generate --json`, safetensors `eoi.layers` and the npy
//! manifest), the [`Provenance`] an artifact carries, and that provenance read back without
//! trusting it ([`Recorded`]), for `verify`, `inspect` and `isometry`.

mod layer;
mod provenance;
mod recorded;

pub use layer::{LayerRecord, REQUIRED};
pub use provenance::{MASKS_KEY, Provenance, VERSION_KEY, WEIGHTS_KEY};
pub use recorded::{BaseRecord, Recorded, StoredRecord, layout_of};

/// Version of the JSON documents (`plan --json`, `generate --json`, `eoi.layers`, the
/// `--json` outputs of the checking commands). Fields are only added within a version.
pub const SCHEMA_VERSION: u32 = 1;

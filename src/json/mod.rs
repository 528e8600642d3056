//! The JSON documents eoi prints, each one serde type that the command writes and a client
//! can read back: `plan --json` ([`PlanJson`]), `generate --json` ([`GenerateJson`]),
//! `verify --json` ([`VerifyJson`]), `inspect --json` ([`InspectJson`]) and `isometry --json`
//! ([`IsometryJson`]). Their JSON Schemas, with those of the spec and of a layer record, are
//! what `eoi schema DOCUMENT` prints ([`schema`]).

mod generate;
mod inspect;
mod isometry;
mod plan;
mod verify;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::Value;

pub use generate::{BaseFilesJson, GenerateJson, LeftOutJson};
pub use inspect::{InspectJson, SpreadJson, TensorJson};
pub use isometry::{IsometryJson, JacobianJson, LinkJson, SignalJson};
pub use plan::{PlanJson, PlannedTensorJson};
pub use verify::{
    BaseJson, DifferenceJson, FailureJson, RecordedJson, RegeneratedJson, VerifiedLayerJson,
    VerifyJson,
};

use crate::layer::named;
use crate::records::LayerRecord;

named! {
    /// The documents whose JSON Schema `eoi schema` prints.
    #[derive(Default)]
    pub enum Document {
        /// The spec format (TOML), for editors.
        #[default]
        Spec = "spec",
        /// One layer's record, as plans, artifacts and `generate --json` hold it.
        Record = "record",
        /// `eoi plan --json`.
        Plan = "plan",
        /// `eoi generate --json`.
        Generate = "generate",
        /// `eoi verify --json`.
        Verify = "verify",
        /// `eoi inspect --json`.
        Inspect = "inspect",
        /// `eoi isometry --json`.
        Isometry = "isometry",
    }
}

/// The JSON Schema (draft 2020-12) of `document`, made from the type that writes it. The
/// schemas describe the documents as eoi writes them: every key of an output is present
/// (null where it has no value), and a record has every field it always has. (Reading is
/// more lenient: a record without `scheme` is EOI's, as in artifacts of early versions.)
///
/// ```
/// use eoi::json::{Document, schema};
/// let plan = schema(Document::Plan);
/// assert_eq!(plan["title"], "PlanJson");
/// assert!(plan["required"].as_array().unwrap().contains(&"layers".into()));
/// ```
pub fn schema(document: Document) -> Value {
    match document {
        Document::Spec => crate::spec::json_schema(),
        Document::Record => schema_of::<LayerRecord>(),
        Document::Plan => schema_of::<PlanJson>(),
        Document::Generate => schema_of::<GenerateJson>(),
        Document::Verify => schema_of::<VerifyJson>(),
        Document::Inspect => schema_of::<InspectJson>(),
        Document::Isometry => schema_of::<IsometryJson>(),
    }
}

fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// A measurement as JSON holds it: `None` (null) when it is not finite, as serde_json writes
/// a NaN or an infinity, so that the document reads back into its type.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

//! `eoi`: sparse, exactly orthogonal neural-network initializations.
//!
//! Exact Orthogonal Initialization (Nowak et al., ICML 2024) builds each sparse weight matrix
//! by composing random Givens rotations, so the sparse matrix is exactly orthogonal at any
//! density. This crate reads an architecture [`spec`], resolves every layer's density into a
//! [`plan`], generates each layer from its own random [`stream`] with the [`schemes`], and
//! streams the tensors to a file through the [`write`]rs.
//!
//! ```
//! use eoi::spec::{self, Source};
//! use eoi::plan::{self, Overrides};
//!
//! let text = "[sparsity]\ndensity = 0.25\n\n[[layer]]\nname = \"fc.weight\"\nshape = [8, 16]\n";
//! let spec = spec::parse(Source { name: "inline.toml".into(), text: text.into() }).unwrap();
//! let plan = plan::plan(&spec, &Overrides::default()).unwrap();
//! let layer = eoi::schemes::generate(&plan.layers[0], plan.seed);
//! // The support lands within one rotation (two columns of 8) of 0.25 * 8 * 16 = 32.
//! assert!((16..=48).contains(&layer.stats.nnz));
//! ```

pub mod error;
pub mod generate;
pub mod inspect;
pub mod interrupt;
pub mod isometry;
pub mod json;
pub mod layer;
pub mod measure;
pub mod plan;
pub mod progress;
pub mod read;
pub mod records;
pub mod schemes;
pub mod spec;
pub mod spec_from;
pub mod stream;
pub mod tensor;
pub mod units;
pub mod verify;
pub mod write;

/// The tool's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

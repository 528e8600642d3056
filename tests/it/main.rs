//! The integration tests of `eoi`: one test binary (`it`), one module per subject, as
//! ripgrep's tests are laid out. Building one binary links the test code once instead of
//! once per file, and every module shares one helper module, `util`: the binary under test,
//! a sandbox directory, readers of what it writes, hashes and the Python runner.
//!
//! Run one subject with a filter on its module path, e.g. `scripts/test --test it golden::`
//! or `cargo test --test it verify_inspect::`. A new subject is one file here and one
//! `mod` line below.

mod util;

mod bad_inputs;
mod base;
mod biases;
mod cli;
mod docs;
mod dtypes;
mod examples;
mod fast_checks;
mod faults;
mod golden;
mod groups;
mod interface;
mod isometry;
mod isometry_conv;
mod layout;
mod masks;
mod memory;
mod names;
mod nm;
mod npz;
mod properties;
mod python_interop;
mod python_package;
mod scale;
mod schema;
mod schemes;
mod snapshots;
mod spec_from;
mod stdout;
mod structured;
mod verify_inspect;

//! The checkpoint readers behind `eoi spec --from`, `--densities-from` and `generate --base`
//! on arbitrary bytes: the shapes read (`eoi::spec_from::read_shapes`), the spec written
//! from them with the same bytes as masks (`spec_from` with `--densities-from`), that spec
//! parsed and planned, and the plan placed in the bytes as a base checkpoint
//! (`eoi::generate::base::assemble`), as the commands do. Every input must give an error or a
//! result, never a panic, a hang or an allocation out of proportion to the input.
//!
//! The first byte picks the shape of the source: even, one file holding the rest (JSON shape
//! list, index, or safetensors: `read_shapes` tells them apart as it does for users); odd, a
//! sharded checkpoint directory: the rest is cut at every `\xffSHARD\xff`, the first piece
//! is `model.safetensors.index.json`, the others `a.safetensors`, `b.safetensors`, ... (at
//! most 8). Bit 1 of the first byte turns folding into `repeat` off.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use eoi::plan::{self, Overrides};
use eoi::read::{Checkpoint, INDEX};
use eoi::spec::{self, Source};
use eoi::layer::{Density, Distribution};
use eoi::spec_from::{self, Options};
use eoi::layer::Layout;
use libfuzzer_sys::fuzz_target;

const CUT: &[u8] = b"\xffSHARD\xff";
const MAX_SHARDS: usize = 8;

/// A private scratch directory, made once per fuzzing process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("eoi-fuzz-from-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// The bytes cut at every [`CUT`], at most `MAX_SHARDS + 1` pieces.
fn pieces(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at + CUT.len() <= bytes.len() && out.len() < MAX_SHARDS {
        if bytes[at..].starts_with(CUT) {
            out.push(&bytes[start..at]);
            at += CUT.len();
            start = at;
        } else {
            at += 1;
        }
    }
    out.push(&bytes[start..]);
    out
}

fn source_from(mode: u8, bytes: &[u8]) -> Option<PathBuf> {
    let dir = scratch();
    if mode % 2 == 0 {
        let path = dir.join("source");
        fs::write(&path, bytes).ok()?;
        return Some(path);
    }
    let sharded = dir.join("sharded");
    let _ = fs::remove_dir_all(&sharded);
    fs::create_dir(&sharded).ok()?;
    let parts = pieces(bytes);
    fs::write(sharded.join(INDEX), parts[0]).ok()?;
    for (k, part) in parts[1..].iter().enumerate() {
        let name = format!("{}.safetensors", char::from(b'a' + k as u8));
        fs::write(sharded.join(name), part).ok()?;
    }
    Some(sharded)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let Some(path) = source_from(mode, bytes) else {
        return;
    };
    let Ok(shapes) = spec_from::read_shapes(&path) else {
        return;
    };
    let checkpoint = Checkpoint::open(&path).ok();
    let options = Options {
        density: Density::new(0.25).expect("a valid density"),
        distribution: Distribution::Erk,
        gain: None,
        seed: None,
        scheme: None,
        exclude: Vec::new(),
        include: Vec::new(),
        below_minimum: None,
        dense: Vec::new(),
        layout: Layout::Torch,
        fold: mode & 2 == 0,
    };
    let Ok(written) = spec_from::spec_from(&shapes, &options, checkpoint.as_ref()) else {
        return;
    };
    let text = written.text;
    let source = Source {
        name: "from.toml".into(),
        text,
    };
    // What spec --from writes must parse: it re-parses its output before printing it.
    let spec = spec::parse(source).expect("spec --from wrote a spec that does not parse");
    if let (Ok(plan), Some(checkpoint)) = (plan::plan(&spec, &Overrides::default()), &checkpoint) {
        let _ = eoi::generate::base::assemble(&plan, checkpoint);
    }
});

//! Spec parsing and planning on arbitrary bytes: `eoi::spec::parse` then `eoi::plan::plan`,
//! as `eoi plan` and `eoi generate` run them before anything is generated. Every input must
//! give a spec error or a plan, never a panic, a hang or an allocation out of proportion.
//! Bytes that are not UTF-8 take the path of `eoi`'s own reader: the position of the first
//! bad byte.

#![no_main]

use eoi::plan::{self, Overrides};
use eoi::spec::{self, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => {
            let _ = spec::line_column(data, e.valid_up_to());
            return;
        }
    };
    let source = Source {
        name: "fuzz.toml".into(),
        text: text.into(),
    };
    if let Ok(spec) = spec::parse(source) {
        let _ = plan::plan(&spec, &Overrides::default());
    }
});

//! What eoi tells other tools about itself: shell completion scripts (clap_complete) and the
//! manual page (clap_mangen), both made from the clap definitions in `cli`, so they list
//! exactly the commands and options the parser accepts. (The spec's JSON Schema, the third
//! such document, comes from the library: `eoi::spec::json_schema`.)

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, roman};

use crate::cli::Cli;

/// The completion script for `shell`. Made in memory: clap_complete panics on a failed
/// write, and the caller wants a closed pipe to be an ordinary error.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "eoi", &mut script);
    script
}

/// One man page for the whole tool: NAME, SYNOPSIS, DESCRIPTION and OPTIONS of `eoi`, then
/// a section per command (`EOI PLAN`, ...) holding that command's synopsis, description,
/// options and examples, then the top-level examples and the version (which names the
/// random-stream version). One page rather than clap_mangen's page per command, so that
/// `eoi man > eoi.1 && man ./eoi.1` shows everything.
pub fn man_page() -> Vec<u8> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut page = Vec::new();
    let man = Man::new(cmd.clone());
    // Rendering into a Vec cannot fail.
    let _ = man.render_title(&mut page);
    let _ = man.render_name_section(&mut page);
    let _ = man.render_synopsis_section(&mut page);
    let _ = man.render_description_section(&mut page);
    let _ = man.render_options_section(&mut page);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        let mut heading = Roff::new();
        heading.control("SH", [name.to_uppercase().as_str()]);
        if let Some(about) = sub.get_about() {
            heading.text([roman(about.to_string())]);
        }
        page.extend(heading.render().into_bytes());
        let man = Man::new(sub.clone());
        let mut parts = Vec::new();
        let _ = man.render_synopsis_section(&mut parts);
        if sub.get_long_about().is_some() {
            let _ = man.render_description_section(&mut parts);
        }
        let _ = man.render_options_section(&mut parts);
        page.extend(subsections(&parts));
        page.extend(examples(sub, "SS"));
    }
    page.extend(examples(&cmd, "SH"));
    let _ = man.render_version_section(&mut page);
    once_preamble(&page)
}

/// Every roff document clap_mangen renders starts by defining the apostrophe string `Aq`;
/// the page needs that only once, at its top.
fn once_preamble(page: &[u8]) -> Vec<u8> {
    const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let text = String::from_utf8_lossy(page);
    let rest = text.strip_prefix(PREAMBLE).unwrap_or(&text);
    format!("{PREAMBLE}{}", rest.replace(PREAMBLE, "")).into_bytes()
}

/// Turns the sections of a command's page into subsections of the tool's page.
fn subsections(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match line.strip_prefix(".SH ") {
            Some(rest) => {
                out.push_str(".SS ");
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// The command's "Examples:" help text as an EXAMPLES (sub)section, lines kept as written.
fn examples(cmd: &clap::Command, level: &str) -> Vec<u8> {
    let Some(help) = cmd.get_after_help().map(|h| h.to_string()) else {
        return Vec::new();
    };
    let lines: Vec<&str> = help
        .lines()
        .skip_while(|l| l.trim() != "Examples:")
        .skip(1)
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    let mut roff = Roff::new();
    roff.control(level, ["EXAMPLES"]);
    roff.control("nf", []);
    roff.control("RS", ["2"]);
    for line in lines {
        roff.text([roman(line.trim_start())]);
    }
    roff.control("RE", []);
    roff.control("fi", []);
    roff.render().into_bytes()
}

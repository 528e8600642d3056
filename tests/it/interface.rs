//! The tool as other programs meet it: shell completion scripts, the man page, the spec's
//! JSON Schema, and colour and stream discipline at terminals and in pipes. Every test runs
//! the real binary. The commands to look for are read from `eoi --help`, so a new command
//! that completions or the man page leave out fails here.

use std::fs;
use std::process::{Command, Output};

use crate::util::{self, Sandbox, eoi_path, eoi_process, json, text, utf8};

/// `eoi args...` with no colour settings inherited from the caller.
fn eoi(args: &[&str]) -> Command {
    let mut command = eoi_process();
    command.args(args);
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("eoi runs")
}

fn stdout(output: &Output) -> String {
    utf8(&output.stdout)
}

fn stderr(output: &Output) -> String {
    text(&output.stderr)
}

/// The commands `eoi --help` lists, without `help`.
fn commands() -> Vec<String> {
    let output = run(&mut eoi(&["--help"]));
    assert!(output.status.success());
    util::commands(&stdout(&output))
}

// ---------------------------------------------------------------------------------------
// Completions

#[test]
fn every_shell_gets_a_script_naming_every_command() {
    let commands = commands();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let output = run(&mut eoi(&["completions", shell]));
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        assert!(output.stderr.is_empty(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        for word in commands
            .iter()
            .map(String::as_str)
            .chain(["seed", "output", "dtype"])
        {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let output = run(&mut eoi(&["completions", "tcsh"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).contains("possible values"),
        "{}",
        stderr(&output)
    );
}

/// What bash offers after `words`, completing the last one, with eoi's script loaded.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_eoi eoi '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output).lines().map(String::from).collect()
}

#[test]
fn the_bash_script_completes_commands_options_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("eoi.bash");
    fs::write(&script, run(&mut eoi(&["completions", "bash"])).stdout).unwrap();

    let all = bash_completes(&script, &["eoi", ""]);
    for command in commands() {
        assert!(all.contains(&command), "{command} not in {all:?}");
    }
    assert_eq!(bash_completes(&script, &["eoi", "gen"]), ["generate"]);
    assert_eq!(
        bash_completes(&script, &["eoi", "generate", "spec.toml", "--dt"]),
        ["--dtype"]
    );
    let mut shells = bash_completes(&script, &["eoi", "completions", ""]);
    shells.retain(|s| !s.starts_with('-'));
    shells.sort();
    assert_eq!(shells, ["bash", "elvish", "fish", "powershell", "zsh"]);
}

// ---------------------------------------------------------------------------------------
// Man page

#[test]
fn the_man_page_has_a_section_for_every_command() {
    let output = run(&mut eoi(&["man"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let page = stdout(&output);
    assert!(
        page.lines().any(|l| l.starts_with(".TH eoi 1 ")),
        "no title line"
    );
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXAMPLES",
        "VERSION",
    ] {
        assert!(
            page.lines().any(|l| l == format!(".SH {section}")),
            "no {section} section"
        );
    }
    for command in commands() {
        let heading = format!(".SH \"EOI {}\"", command.to_uppercase());
        let start = page
            .find(&heading)
            .unwrap_or_else(|| panic!("no section {heading}"));
        let section = &page[start + heading.len()..];
        let section = &section[..section.find("\n.SH ").unwrap_or(section.len())];
        assert!(
            section.contains(&format!("\\fBeoi {command}\\fR")),
            "{command}: no synopsis"
        );
        assert!(section.contains(".SS EXAMPLES"), "{command}: no examples");
    }
    assert!(page.contains(&format!(
        "v{} (random streams v1)",
        env!("CARGO_PKG_VERSION")
    )));
    // The apostrophe string is defined once, before the title.
    assert_eq!(page.matches(".ds Aq \\(aq").count(), 1);
    assert!(page.find(".ds Aq").unwrap() < page.find(".TH").unwrap());
}

// ---------------------------------------------------------------------------------------
// JSON Schema

#[test]
fn schema_prints_a_draft_2020_12_json_schema() {
    let output = run(&mut eoi(&["schema"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let schema = json(&output.stdout);
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    assert!(stdout(&output).ends_with("}\n"));
}

// ---------------------------------------------------------------------------------------
// Colour and streams

const ESC: char = '\u{1b}';

/// A command-line error and the top-level help, as (stderr of the error, stdout of help).
fn error_and_help(envs: &[(&str, &str)]) -> (String, String) {
    let error = run(eoi(&["plan", "--bogus"]).envs(envs.iter().copied()));
    assert_eq!(error.status.code(), Some(2));
    let help = run(eoi(&["--help"]).envs(envs.iter().copied()));
    assert!(help.status.success());
    (stderr(&error), stdout(&help))
}

#[test]
fn output_to_pipes_is_plain_and_no_color_wins_over_forced_colour() {
    let (error, help) = error_and_help(&[]);
    assert!(!error.contains(ESC) && !help.contains(ESC), "{error}{help}");
    assert!(error.contains("unexpected argument '--bogus'"), "{error}");

    // CLICOLOR_FORCE colours even a pipe, which shows that colour is on at all ...
    let (error, help) = error_and_help(&[("CLICOLOR_FORCE", "1")]);
    assert!(error.contains(ESC) && help.contains(ESC), "{error}{help}");
    // ... and NO_COLOR (https://no-color.org) turns it off even then.
    let (error, help) = error_and_help(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]);
    assert!(!error.contains(ESC) && !help.contains(ESC), "{error}{help}");
}

/// Runs `eoi args...` at a terminal (a pseudo-terminal from util-linux's `script`) and
/// returns what the terminal showed.
#[cfg(target_os = "linux")]
fn at_a_terminal(args: &str, envs: &[(&str, &str)]) -> String {
    let command = format!("'{}' {args}", eoi_path().display());
    let output = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CI")
        .envs(envs.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `script` (util-linux) to give eoi a terminal: {e}"));
    stdout(&output)
}

#[cfg(target_os = "linux")]
#[test]
fn terminals_get_colour_unless_no_color_is_set() {
    let coloured = at_a_terminal("plan --bogus", &[]);
    assert!(coloured.contains("--bogus"), "{coloured}");
    assert!(coloured.contains(ESC), "{coloured}");
    let plain = at_a_terminal("plan --bogus", &[("NO_COLOR", "1")]);
    assert!(plain.contains("--bogus"), "{plain}");
    assert!(!plain.contains(ESC), "{plain}");
}

#[test]
fn failed_json_runs_print_nothing_on_standard_output() {
    let dir = Sandbox::new();
    let bad = dir.write(
        "bad.toml",
        "[sparsity]\ndensity = 1.5\n[[layer]]\nname = \"a\"\nshape = [4, 4]\n",
    );
    let good = dir.write(
        "good.toml",
        "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"a\"\nshape = [4, 4]\n",
    );
    let bad = bad.to_str().unwrap();
    let good = good.to_str().unwrap();
    let missing_dir = dir.path("no/such/dir/out.safetensors");
    let missing_dir = missing_dir.to_str().unwrap();
    let out = dir.path("out.safetensors");
    let out = out.to_str().unwrap();
    let runs: &[&[&str]] = &[
        &["plan", bad, "--json"],
        &["plan", "no-such-spec.toml", "--json"],
        &["generate", bad, "-o", out, "--json"],
        &["generate", good, "-o", missing_dir, "--json"],
        &["generate", good, "--json"],
        &["plan", good, "--json", "--seed", "-1"],
    ];
    for args in runs {
        let output = run(&mut eoi(args));
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            output.stdout.is_empty(),
            "{args:?} wrote to stdout: {}",
            stdout(&output)
        );
        assert!(stderr(&output).contains("error"), "{args:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Versions

#[test]
fn version_and_json_outputs_name_the_stream_version() {
    let stream = crate::util::lib::STREAM_VERSION;
    let output = run(&mut eoi(&["--version"]));
    assert_eq!(
        stdout(&output),
        format!(
            "eoi {} (random streams v{stream})\n",
            env!("CARGO_PKG_VERSION")
        )
    );

    let dir = Sandbox::new();
    let spec = dir.write(
        "spec.toml",
        "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"a\"\nshape = [4, 4]\n",
    );
    let spec = spec.to_str().unwrap();
    let out = dir.path("out.safetensors");
    let runs: &[&[&str]] = &[
        &["plan", spec, "--json"],
        &[
            "generate",
            spec,
            "-o",
            out.to_str().unwrap(),
            "--json",
            "-q",
        ],
    ];
    for args in runs {
        let output = run(&mut eoi(args));
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        let json = json(&output.stdout);
        assert_eq!(json["stream_version"], stream, "{args:?}");
        assert_eq!(json["eoi_version"], env!("CARGO_PKG_VERSION"), "{args:?}");
    }
}

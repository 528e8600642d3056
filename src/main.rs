//! The `eoi` binary: parse the command line, run the command, print one error and exit with
//! its code (2 for usage, spec and unreadable-input errors, 1 for failures while working or a
//! failed `verify`). A closed pipe on standard output ends the run quietly with 0, as Unix
//! tools do.

mod cli;
mod commands;
mod docs;
mod output;
mod signals;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    signals::install();
    match commands::run(cli::Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                if !err.to_string().contains(&cause.to_string()) {
                    eprintln!("  caused by: {cause}");
                }
                source = cause.source();
            }
            if let Some(help) = err.help() {
                eprintln!("  help: {help}");
            }
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

//! The `idstitch` binary: parse the command line, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use idstitch::cli::{run, Cli, Failure};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map(|f| f.code).unwrap_or(2);
            eprintln!("idstitch: {e:#}");
            ExitCode::from(code)
        }
    }
}

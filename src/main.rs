//! The `idstitch` binary: parse the command line, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use idstitch::cli::{run, Cli, Failure};

/// mimalloc instead of glibc's malloc: the daemon allocates many small maps per event, and
/// glibc's `malloc_consolidate`/`_int_free` were a quarter of its CPU under load (perf).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

//! The `idstitch` binary: parse the command line, run, map errors to exit codes.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use idstitch::cli::{run, Cli, Failure};

/// mimalloc instead of glibc's malloc: the daemon allocates many small maps per event, and
/// glibc's `malloc_consolidate`/`_int_free` were a quarter of its CPU under load (perf).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map(|f| f.code).unwrap_or(2);
            eprintln!("idstitch: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// `--help` and `--version` print and exit 0; any other parse error is a failure the user can
/// fix (exit 1, api.md), told in one line: clap's first line, and where to look.
fn usage(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        eprintln!("idstitch: a command is missing; see `idstitch --help`");
        return ExitCode::from(1);
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("idstitch: {first}; see `idstitch --help`");
    ExitCode::from(1)
}

//! The `idstitch` binary: parse the command line, run, map errors to exit codes.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};
use idstitch::cli::{run, Cli, Command, Failure};

/// mimalloc instead of glibc's malloc: the daemon allocates many small maps per event, and
/// glibc's `malloc_consolidate`/`_int_free` were a quarter of its CPU under load (perf).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    idstitch::cli::no_transparent_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    if !matches!(cli.command, Command::Serve(_)) {
        end_quietly_when_stdout_closes();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map(|f| f.code).unwrap_or(2);
            eprintln!("idstitch: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Output piped into `head` that closes early: end by SIGPIPE, as other Unix tools do, rather
/// than panic in `println!` with a backtrace and exit 101. Rust ignores SIGPIPE, so the write
/// fails and `println!` panics; this turns that one panic into the signal. SIGPIPE stays
/// ignored otherwise: a daemon that closes the socket of `ingest` is an error it retries, not
/// a reason to die.
fn end_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            // SAFETY: restoring a signal's default action and raising it in this thread.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default(info)
    }));
}

/// `--help` and `--version` print and exit 0; any other parse error is a failure the user can
/// fix (exit 1, api.md), told in one line: clap's message with what it lists (the missing
/// arguments, the possible values, a tip), and the help of the subcommand concerned.
fn usage(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let help = format!("see `{} --help`", command_of(&text));
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        eprintln!("idstitch: a command is missing; {help}");
        return ExitCode::from(1);
    }
    let source = from_environment(&e)
        .map(|var| format!("; it comes from {var} in the environment"))
        .unwrap_or_default();
    eprintln!("idstitch: {}{source}; {help}", one_line(&text));
    ExitCode::from(1)
}

/// The `IDSTITCH_*` variable a refused value came from, when the user did not type the flag:
/// clap names the flag either way, and a user who never typed `--workers` looks for it in
/// vain.
fn from_environment(e: &clap::Error) -> Option<String> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?;
    let typed = std::env::args()
        .skip(1)
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let var = (!typed).then(|| env_of(&Cli::command(), long))??;
    (std::env::var_os(&var)?.to_str() == Some(value)).then_some(var)
}

/// The environment variable of the option `--long`, in `cmd` or any of its subcommands.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|s| env_of(s, long)))
}

/// Clap's message before its usage, on one line: `the following required arguments were not
/// provided: <FILE>`, `invalid value 'x' for '--y <Y>'; possible values: a, b`.
fn one_line(text: &str) -> String {
    let mut lines = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(|l| l.trim().trim_start_matches('[').trim_end_matches(']'))
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let rest: Vec<&str> = lines.collect();
    match (rest.is_empty(), first.ends_with(':')) {
        (true, _) => first.to_string(),
        (false, true) => format!("{first} {}", rest.join(" ")),
        (false, false) => format!("{first}; {}", rest.join("; ")),
    }
}

/// The command a clap message is about: from its usage line (`Usage: idstitch snapshot restore
/// [OPTIONS] …` gives `idstitch snapshot restore`), else the subcommands named on the command
/// line.
fn command_of(text: &str) -> String {
    let usage = text.lines().find_map(|l| l.trim().strip_prefix("Usage:"));
    let words: Vec<&str> = usage
        .unwrap_or_default()
        .split_whitespace()
        .take_while(|w| !w.starts_with(['[', '<', '-']))
        .collect();
    if !words.is_empty() {
        return words.join(" ");
    }
    let mut cmd = Cli::command();
    let mut path = vec!["idstitch".to_string()];
    for arg in std::env::args().skip(1) {
        if let Some(sub) = cmd.find_subcommand(&arg).cloned() {
            path.push(arg);
            cmd = sub;
        }
    }
    path.join(" ")
}

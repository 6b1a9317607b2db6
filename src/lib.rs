//! dirsync: one-way directory sync whose system of record is an append-only event log.

pub mod config;
pub mod error;
pub mod log;
pub mod plan;
pub mod playbook;
pub mod project;
pub mod source;
pub mod sync;
pub mod target;

pub use error::{Error, Exit, Result};

pub mod audit;
pub mod cli;
pub mod commands;
pub mod output;
mod par;

/// Run a parsed command line to an exit code. Errors are printed as one line on stderr.
pub fn run(cli: cli::Cli) -> Exit {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIRSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: redirected to a file or a journal
        // they are noise (issue 17).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dirsync: cannot start the runtime: {e}");
            return Exit::Failure;
        }
    };
    // On a worker, not this thread: a task woken by the I/O driver then runs on the worker
    // that saw the readiness instead of waiting for this thread to be unparked.
    let outcome = match rt.block_on(async { tokio::spawn(commands::execute(cli)).await }) {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => {
                eprintln!("dirsync: {e}");
                return Exit::Failure;
            }
        },
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dirsync: {}", e.to_string().replace('\n', " "));
            e.exit()
        }
    }
}

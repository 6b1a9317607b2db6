//! dirsync: one-way directory sync whose system of record is an append-only event log.

pub mod config;
pub mod error;
pub mod log;
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
    match rt.block_on(commands::execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dirsync: {}", e.to_string().replace('\n', " "));
            e.exit()
        }
    }
}

//! dirsync: one-way directory sync whose system of record is an append-only event log.

pub mod config;
pub mod error;
pub mod ha;
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
pub mod ops;
pub mod output;
mod par;

/// Log lines on stderr: `DIRSYNC_LOG` filters them (default `warn`), and
/// `DIRSYNC_LOG_FORMAT=json` makes each one a JSON object (for a log collector).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIRSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("DIRSYNC_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        let _ = builder.json().with_current_span(false).try_init();
    } else {
        // Colour codes only for a person at a terminal: redirected to a file or a journal
        // they are noise (issue 17).
        let _ = builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
}

/// Print a command's error on stderr: one line, or with `--format json` one JSON object
/// `{"error": ..., "exit": N}`.
fn report_error(json: bool, message: &str, exit: Exit) {
    let message = message.replace('\n', " ");
    if json {
        eprintln!(
            "{}",
            serde_json::json!({ "error": message, "exit": exit as u8 })
        );
    } else {
        eprintln!("dirsync: {message}");
    }
}

/// Run a parsed command line to an exit code. Errors are printed as one line on stderr.
pub fn run(cli: cli::Cli) -> Exit {
    init_tracing();
    output::set_local_time(cli.local_time);
    let json = cli.format == cli::Format::Json;
    // Workers get a main thread's stack (tokio's default is 2 MiB): a command's future nests
    // deep (the service loop runs a failover's playbook, which runs a sync), and polling it
    // takes stack in proportion, more so in a debug build.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report_error(
                json,
                &format!("cannot start the runtime: {e}"),
                Exit::Failure,
            );
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
                report_error(json, &e.to_string(), Exit::Failure);
                return Exit::Failure;
            }
        },
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            report_error(json, &e.to_string(), e.exit());
            e.exit()
        }
    }
}

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dirsync::cli::Cli::parse();
    ExitCode::from(dirsync::run(cli) as u8)
}

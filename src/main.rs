use std::process::ExitCode;

use clap::Parser;

/// jemalloc: the glibc allocator grows a worker thread's arena a page at a time (one
/// mprotect each) and made a 100,000-entry import spend a sixth of its CPU in malloc, free
/// and page faults.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = dirsync::cli::Cli::parse();
    ExitCode::from(dirsync::run(cli) as u8)
}

use std::process::ExitCode;

use clap::Parser;

/// jemalloc: the glibc allocator grows a worker thread's arena a page at a time (one
/// mprotect each) and made a 100,000-entry import spend a sixth of its CPU in malloc, free
/// and page faults.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Everything dirsync creates (the SQLite store, its WAL and shared memory, snapshots,
    // `log export` files) holds directory data: readable by its owner only (issue 18).
    // SAFETY: umask only sets this process's file-creation mask; it cannot fail and touches
    // no memory. No other thread exists yet.
    unsafe {
        libc::umask(0o077);
    }
    let cli = dirsync::cli::Cli::parse();
    ExitCode::from(dirsync::run(cli) as u8)
}

//! `scripts/bench kill`: issue 19's kill loop at bench size. slapd loaded with `--users`
//! users by slapadd (default 1,000,000), an uninterrupted `sync --staging --full` timed,
//! then `--kills` (default 5) `kill -9`s of `sync --full` into one store at random points
//! of that time, `log verify` and `replay --verify` after each, then a sync to completion
//! compared with the uninterrupted import and the directory. The loop is the suite's
//! (`tests/it/kill_loop.rs`, 100,000 users there); `DIRSYNC_KILL_SEED=N` repeats a run.
//! Usage: `cargo bench --bench kill -- [--users N] [--kills K]`.

mod common;
#[path = "../tests/it/kill_loop.rs"]
mod kill_loop;
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use common::arg;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users", 1_000_000);
    let kills = arg(&args, "--kills", 5) as usize;
    let seed = kill_loop::seed();
    let r = kill_loop::kill_loop(users, kills, seed).await;
    for k in &r.kills {
        eprintln!("  {k}");
    }
    println!(
        "{}",
        serde_json::json!({"bench": "kill", "users": users, "kills": kills, "seed": seed,
            "load_s": r.load_s, "import_s": r.import_s, "next_sync_s": r.next_sync_s,
            "next_sync_mode": r.next_sync_mode, "total_s": r.total_s, "runs": r.kills})
    );
}

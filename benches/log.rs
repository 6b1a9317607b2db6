//! `scripts/bench log`: append N events in batches, replay them into the projections, verify
//! the chain; events/s for each. Usage: `cargo bench --bench log -- [--url URL | --db PATH]
//! [--events N] [--batch B] [--keyed] [--reuse]`. Default: a temporary SQLite file, 1,000,000
//! events, batches of 10,000. `--keyed` gives every batch an idempotency key; `--reuse`
//! measures only replay and verify on a store kept from an earlier run (`--db` or `--url`).

mod mix;

/// The binary's allocator, so the rates are the ones `dirsync` gets.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Instant;

use dirsync::log::event::{Event, ExportApplied, ExportOp, ObjectKind};
use dirsync::log::store::Batch;
use dirsync::log::{AnyStore, NewEvent, OpenMode, Store};
use dirsync::project::replay::{self, Until};
use dirsync::project::State;
use mix::{anchor, mixed, opt, text, user};

/// Event `i` of the mix: users carry a department too; exports record a state of another
/// shape than the mapped one (the ledger keeps none for it).
fn event(i: u64, objects: u64) -> NewEvent {
    let import = |i: u64| {
        let mut u = user(i);
        u.attrs.insert("department", text("Engineering"));
        u
    };
    let export = |obj: u64| {
        Event::ExportApplied(ExportApplied {
            epoch: 1,
            anchor: anchor(obj),
            kind: ObjectKind::User,
            op: ExportOp::Create,
            target_id: format!("{obj:032x}"),
            state: Some(
                serde_json::json!({"userName": format!("user{obj}@test.lan"), "active": true}),
            ),
            etag: None,
        })
    };
    mixed(i, objects, import, export)
}

/// CPU time (user + system, all threads) this process has used, in seconds: beside the
/// wall-clock rates it shows how much of the machine each phase kept busy.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = opt(&args, "--events").map_or(Ok(1_000_000), |s| s.parse())?;
    let batch: u64 = opt(&args, "--batch").map_or(Ok(10_000), |s| s.parse())?;
    // `--reuse`: the store already holds the N events of an earlier run (kept with `--db`
    // or `--url`); only replay and verify are measured.
    let reuse = args.iter().any(|a| a == "--reuse");
    // `--keyed`: every batch carries an idempotency key (on its first event).
    let keyed = args.iter().any(|a| a == "--keyed");
    let dir = tempfile::tempdir()?;
    let db =
        opt(&args, "--db").unwrap_or_else(|| dir.path().join("bench.db").display().to_string());
    let url = opt(&args, "--url").unwrap_or_else(|| format!("sqlite://{db}"));
    let backend = if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    let store = AnyStore::open(&url, OpenMode::Init).await?;
    let head = store.head().await?.0;
    if reuse && head != n {
        return Err(format!("--reuse needs a store with exactly {n} events, found {head}").into());
    }
    if !reuse && head != 0 {
        return Err("the bench needs an empty store".into());
    }

    let (mut append_secs, mut append_cpu) = (f64::NAN, f64::NAN);
    let mut i = if reuse { n } else { 0 };
    if !reuse {
        (append_secs, append_cpu) = (0.0, 0.0);
    }
    while i < n {
        let events: Vec<NewEvent> = (i..(i + batch).min(n))
            .map(|j| event(j, j.max(1)))
            .collect();
        i += events.len() as u64;
        let (t, c) = (Instant::now(), cpu_secs());
        let mut b = Batch::new(events);
        if keyed {
            b = b.idempotency_key(format!("bench-{i}"));
        }
        store.append(b).await?;
        append_secs += t.elapsed().as_secs_f64();
        append_cpu += cpu_secs() - c;
    }

    let (t, c) = (Instant::now(), cpu_secs());
    let state = replay::fold(&store, State::default(), Until::Head, None).await?;
    let (replay_secs, replay_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    assert_eq!(state.seq, n);

    let (t, c) = (Instant::now(), cpu_secs());
    let verified = replay::verify_chain(&store, None).await?;
    let (verify_secs, verify_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    assert_eq!(verified, n);

    let rate = |s: f64| {
        if s.is_nan() {
            0
        } else {
            (n as f64 / s).round() as u64
        }
    };
    println!(
        "backend   events    batch   append ev/s  replay ev/s  verify ev/s  (live objects {})",
        state.objects.live().count()
    );
    println!(
        "{backend:<9} {n:<9} {batch:<7} {:<12} {:<12} {:<12}",
        rate(append_secs),
        rate(replay_secs),
        rate(verify_secs)
    );
    println!(
        "{}",
        serde_json::json!({"bench": "log", "backend": backend, "events": n, "batch": batch,
            "append_per_s": rate(append_secs), "replay_per_s": rate(replay_secs), "verify_per_s": rate(verify_secs),
            "append_s": append_secs, "replay_s": replay_secs, "verify_s": verify_secs,
            "append_cpu_s": append_cpu, "replay_cpu_s": replay_cpu, "verify_cpu_s": verify_cpu})
    );
    Ok(())
}

//! `scripts/bench log`: append N events in batches, replay them into the projections, verify
//! the chain; events/s for each. Usage: `cargo bench --bench log -- [--url URL | --db PATH]
//! [--events N] [--batch B] [--keyed] [--reuse]`. Default: a temporary SQLite file, 1,000,000
//! events, batches of 10,000. `--keyed` gives every batch an idempotency key; `--reuse`
//! measures only replay and verify on a store kept from an earlier run (`--db` or `--url`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use dirsync::log::event::{
    stream, AttrValue, CursorAdvanced, DeletionEvidence, Event, ExportApplied, ExportOp,
    ObjectChanged, ObjectDeleted, ObjectImported, ObjectKind, SourceObject,
};
use dirsync::log::store::Batch;
use dirsync::log::{AnyStore, NewEvent, OpenMode, Store};
use dirsync::project::replay::{self, Until};

fn text(v: impl Into<String>) -> Vec<AttrValue> {
    vec![AttrValue::Text(v.into())]
}

fn anchor(i: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i / 7, i)
}

/// A realistic mix: imports of users, attribute changes, deletions, exports, cursors.
fn event(i: u64, objects: u64) -> NewEvent {
    let k = i % 20;
    let pick = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) % objects.max(1);
    // An object imported earlier (imports are the events at multiples of 20, among others),
    // spread over all of them.
    let obj = pick - pick % 20;
    let ev = match k {
        0..=3 => Event::ObjectImported(ObjectImported {
            object: SourceObject {
                anchor: anchor(i),
                kind: ObjectKind::User,
                dn: format!("CN=User {i},OU=Staff,DC=test,DC=lan"),
                attrs: BTreeMap::from([
                    ("cn".into(), text(format!("User {i}"))),
                    ("givenname".into(), text("User")),
                    ("sn".into(), text(format!("{i}"))),
                    ("mail".into(), text(format!("user{i}@test.lan"))),
                    (
                        "userprincipalname".into(),
                        text(format!("user{i}@test.lan")),
                    ),
                    ("department".into(), text("Engineering")),
                    ("useraccountcontrol".into(), text("512")),
                ]),
                members: BTreeSet::new(),
            },
            returned: false,
        }),
        4..=16 => Event::ObjectChanged(ObjectChanged {
            anchor: anchor(obj),
            set: BTreeMap::from([("title".into(), text(format!("Title {i}")))]),
            ..Default::default()
        }),
        17 => Event::ObjectDeleted(ObjectDeleted {
            anchor: anchor(obj),
            evidence: DeletionEvidence::Tombstone {
                deleted_at: None,
                last_known_parent: None,
            },
        }),
        18 => Event::ExportApplied(ExportApplied {
            epoch: 1,
            anchor: anchor(obj),
            kind: ObjectKind::User,
            op: ExportOp::Create,
            target_id: format!("{obj:032x}"),
            state: Some(
                serde_json::json!({"userName": format!("user{obj}@test.lan"), "active": true}),
            ),
            etag: None,
        }),
        _ => Event::CursorAdvanced(CursorAdvanced {
            kind: "dirsync".into(),
            cookie: "TVNEUwMAAAAAAAAAAAAAAA==".into(),
        }),
    };
    let s = match &ev {
        Event::ExportApplied(_) => stream::TARGET.to_string(),
        Event::CursorAdvanced(_) => stream::cursor("bench"),
        _ => stream::SOURCE.to_string(),
    };
    NewEvent::new(s, "bench", ev)
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

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = arg(&args, "--events").map_or(Ok(1_000_000), |s| s.parse())?;
    let batch: u64 = arg(&args, "--batch").map_or(Ok(10_000), |s| s.parse())?;
    // `--reuse`: the store already holds the N events of an earlier run (kept with `--db`
    // or `--url`); only replay and verify are measured.
    let reuse = args.iter().any(|a| a == "--reuse");
    // `--keyed`: every batch carries an idempotency key (on its first event).
    let keyed = args.iter().any(|a| a == "--keyed");
    let dir = tempfile::tempdir()?;
    let db =
        arg(&args, "--db").unwrap_or_else(|| dir.path().join("bench.db").display().to_string());
    let url = arg(&args, "--url").unwrap_or_else(|| format!("sqlite://{db}"));
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
    let state = replay::rebuild(&store, Until::Head).await?;
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

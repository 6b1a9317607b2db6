//! `scripts/bench log`: append N events in batches, replay them into the projections, verify
//! the chain; events/s for each. Usage: `cargo bench --bench log -- [--url URL] [--events N]
//! [--batch B]` (default: a temporary SQLite file, 1,000,000 events, batches of 10,000).

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
    let obj = (i * 7919) % objects.max(1);
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
    let dir = tempfile::tempdir()?;
    let url = arg(&args, "--url")
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let backend = if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    let store = AnyStore::open(&url, OpenMode::Init).await?;
    if store.head().await?.0 != 0 {
        return Err("the bench needs an empty store".into());
    }

    let mut append_secs = 0.0;
    let mut i = 0u64;
    while i < n {
        let events: Vec<NewEvent> = (i..(i + batch).min(n))
            .map(|j| event(j, j.max(1)))
            .collect();
        i += events.len() as u64;
        let t = Instant::now();
        store.append(Batch::new(events)).await?;
        append_secs += t.elapsed().as_secs_f64();
    }

    let t = Instant::now();
    let state = replay::rebuild(&store, Until::Head).await?;
    let replay_secs = t.elapsed().as_secs_f64();
    assert_eq!(state.seq, n);

    let t = Instant::now();
    let verified = replay::verify_chain(&store, None).await?;
    let verify_secs = t.elapsed().as_secs_f64();
    assert_eq!(verified, n);

    let rate = |s: f64| (n as f64 / s).round() as u64;
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
            "append_s": append_secs, "replay_s": replay_secs, "verify_s": verify_secs})
    );
    Ok(())
}

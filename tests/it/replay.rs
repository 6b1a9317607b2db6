//! Replay equivalence: the projections rebuilt from seq 0 equal those maintained along the
//! way, at every point, after thousands of random events of every type.

use std::collections::BTreeSet;

use dirsync::log::event::*;
use dirsync::log::store::Batch;
use dirsync::log::{Expected, NewEvent, Store};
use dirsync::project::replay::{self, Until};
use dirsync::project::State;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::both_backends;
use crate::common::{Backend, Fresh};

fn random_event(rng: &mut StdRng) -> NewEvent {
    let anchor = format!("00000000-0000-4000-8000-{:012}", rng.gen_range(0..60));
    let inst = ["old", "new", "spare"][rng.gen_range(0..3)].to_string();
    let text = |rng: &mut StdRng| vec![AttrValue::Text(format!("v{}", rng.gen_range(0..5)).into())];
    let kind = if rng.gen_bool(0.8) {
        ObjectKind::User
    } else {
        ObjectKind::Group
    };
    let ev = match rng.gen_range(0..22) {
        0..=3 => Event::ObjectImported(ObjectImported {
            object: SourceObject {
                anchor: anchor.clone(),
                kind,
                dn: format!("CN={anchor},OU=O{},DC=test,DC=lan", rng.gen_range(0..3)),
                attrs: Attrs::from([("cn".into(), text(rng)), ("title".into(), text(rng))]),
                members: (0..rng.gen_range(0..3))
                    .map(|i| format!("m{i}"))
                    .collect::<BTreeSet<_>>(),
            },
            returned: rng.gen_bool(0.1),
        }),
        4..=7 => Event::ObjectChanged(ObjectChanged {
            anchor,
            dn: rng
                .gen_bool(0.2)
                .then(|| "CN=moved,DC=test,DC=lan".to_string()),
            set: Attrs::from([("title".into(), text(rng))]),
            removed: if rng.gen_bool(0.2) {
                vec!["cn".into()]
            } else {
                vec![]
            },
            members_added: vec![format!("m{}", rng.gen_range(0..4))],
            members_removed: vec![format!("m{}", rng.gen_range(0..4))],
        }),
        8 | 9 => Event::ObjectDeleted(ObjectDeleted {
            anchor,
            evidence: match rng.gen_range(0..4) {
                0 => DeletionEvidence::Tombstone {
                    deleted_at: None,
                    last_known_parent: Some("OU=x".into()),
                },
                1 => DeletionEvidence::SyncDelete {
                    phase: "refreshDeletes".into(),
                },
                2 => DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
                _ => DeletionEvidence::LeftScope {
                    dn: "CN=x,OU=Out".into(),
                },
            },
        }),
        10 => Event::ImportCompleted(ImportCompleted {
            run_id: "r".into(),
            full: rng.gen_bool(0.5),
            seen: 1,
            added: 0,
            changed: 0,
            deleted: 0,
            left_scope: 0,
        }),
        11 => Event::CursorAdvanced(CursorAdvanced {
            kind: "dirsync".into(),
            cookie: format!("{}", rng.gen::<u32>()),
        }),
        12 => Event::CursorInvalidated(CursorInvalidated {
            reason: "expired".into(),
        }),
        13..=15 => Event::ExportApplied(ExportApplied {
            epoch: rng.gen_range(1..4),
            anchor,
            kind,
            op: [
                ExportOp::Create,
                ExportOp::Update,
                ExportOp::Delete,
                ExportOp::Match,
            ][rng.gen_range(0..4)],
            target_id: format!("t{}", rng.gen_range(0..100)),
            // A mapped state, or one of another shape (the ledger keeps none for it).
            state: Some(if rng.gen_bool(0.7) {
                serde_json::json!({"kind": "user", "user_name": format!("u{}", rng.gen_range(0..9)),
                    "title": format!("t{}", rng.gen_range(0..3)), "active": rng.gen_bool(0.5)})
            } else {
                serde_json::json!({"userName": format!("u{}", rng.gen_range(0..9))})
            }),
            etag: None,
        }),
        16 => Event::ExportFailed(ExportFailed {
            epoch: 1,
            anchor,
            op: ExportOp::Update,
            status: Some(409),
            error: "conflict".into(),
        }),
        17 => Event::SyncRelationshipEstablished(SyncRelationshipEstablished {
            holder: inst.clone(),
            epoch: rng.gen_range(1..10),
        }),
        18 => match rng.gen_range(0..3) {
            0 => Event::SyncRunStarted(SyncRunStarted {
                run_id: format!("r{}", rng.gen_range(0..5)),
                full: false,
                mode: "sync".into(),
            }),
            1 => Event::SyncRunCompleted(SyncRunCompleted {
                run_id: "r1".into(),
                created: 2,
                ..Default::default()
            }),
            _ => Event::SyncRunFailed(SyncRunFailed {
                run_id: "r2".into(),
                error: "boom".into(),
                // Events recorded before reasons were have none.
                reason: [None, Some(FailureReason::Target), Some(FailureReason::Held)]
                    [rng.gen_range(0..3)],
            }),
        },
        19 => match rng.gen_range(0..3) {
            0 => Event::InstanceStopped(InstanceLifecycle::default()),
            1 => Event::InstanceStarted(InstanceLifecycle::default()),
            _ => Event::InstanceRetired(InstanceLifecycle {
                reason: None,
                forced: true,
            }),
        },
        20 => {
            let hash = format!("h{}", rng.gen_range(0..3));
            if rng.gen_bool(0.5) {
                Event::DeletionsHeld(DeletionsHeld {
                    plan_hash: hash,
                    anchors: vec![anchor],
                    reason: "threshold".into(),
                })
            } else {
                Event::DeletionsApproved(DeletionsApproved {
                    plan_hash: hash,
                    approved_by: None,
                })
            }
        }
        _ => {
            let id = format!("h{}", rng.gen_range(0..2));
            match rng.gen_range(0..6) {
                5 => Event::AnchorsMigrated(AnchorsMigrated {
                    from: Some("nsUniqueId".into()),
                    to: "entryUUID".into(),
                    rekeyed: vec![Rekey {
                        new: format!("00000000-0000-4000-8000-{:012}", rng.gen_range(0..60)),
                        old: anchor,
                    }],
                    unpaired: vec![],
                }),
                0 => Event::HandoverStarted(HandoverStarted {
                    handover_id: id,
                    from: "old".into(),
                    to: "new".into(),
                    playbook: "new-computer".into(),
                    steps: vec!["stop".into(), "take-over".into()],
                }),
                1 => Event::HandoverStepStarted(HandoverStep {
                    handover_id: id,
                    step: rng.gen_range(0..3),
                    action: "stop".into(),
                    detail: serde_json::Value::Null,
                }),
                2 => Event::HandoverStepCompleted(HandoverStep {
                    handover_id: id,
                    step: 0,
                    action: "stop".into(),
                    detail: serde_json::json!({"n": 1}),
                }),
                3 => Event::HandoverStepFailed(HandoverStep {
                    handover_id: id,
                    step: 1,
                    action: "take-over".into(),
                    detail: serde_json::json!("x"),
                }),
                _ => Event::HandoverCompleted(HandoverCompleted {
                    handover_id: id,
                    summary: serde_json::Value::Null,
                }),
            }
        }
    };
    NewEvent::new(stream::SOURCE, inst, ev)
}

async fn replay_equals_the_projections_kept_along_the_way(b: Backend) {
    let seed: u64 = std::env::var("DIRSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let f = Fresh::new(b).await;
    // The state maintained incrementally, as a long-running instance would.
    let mut live = State::default();
    let mut at_tenths: Vec<State> = Vec::new();
    while live.seq < 3000 {
        let n = rng.gen_range(1..40);
        let batch: Vec<NewEvent> = (0..n).map(|_| random_event(&mut rng)).collect();
        f.store.append(Batch::new(batch)).await.unwrap();
        live = replay::fold(&f.store, live, Until::Head, None)
            .await
            .unwrap();
        if rng.gen_bool(0.1) {
            replay::save(&f.store, &live).await.unwrap();
        }
        if live.seq / 300 > at_tenths.len() as u64 {
            at_tenths.push(live.clone());
        }
    }
    replay::save(&f.store, &live).await.unwrap();
    let rebuilt = replay::fold(&f.store, State::default(), Until::Head, None)
        .await
        .unwrap();
    assert_eq!(rebuilt.differences(&live), Vec::<String>::new());
    assert_eq!(rebuilt, live);
    assert!(!live.objects.objects.is_empty() && !live.ledger.entries.is_empty());
    for snap in &at_tenths {
        let then = replay::fold(&f.store, State::default(), Until::Seq(snap.seq), None)
            .await
            .unwrap();
        assert_eq!(&then, snap, "state at seq {}", snap.seq);
    }
    // The fold split by object over two threads (long folds take it) gives the same
    // states: from seq 0 to every tenth and to the head, and from every tenth (whose
    // objects it splits first) to the head.
    let split = |state: State, until| replay::fold_split_from(&f.store, state, until, None, 1);
    assert_eq!(split(State::default(), Until::Head).await.unwrap(), live);
    for snap in &at_tenths {
        let then = split(State::default(), Until::Seq(snap.seq)).await.unwrap();
        assert_eq!(&then, snap, "split state at seq {}", snap.seq);
        let now = split(snap.clone(), Until::Head).await.unwrap();
        assert_eq!(now, live, "split fold from seq {}", snap.seq);
    }
    let run = f.cli(&["replay", "--verify", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("\"compared_stored\": true"), "{run:?}");

    // `replay --until` prints the state as of that seq.
    let mid = at_tenths[4].seq;
    let run = f.cli(&["replay", "--until", &mid.to_string(), "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    // As JSON output shows the projections: log points as {"seq", "at"}.
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed, dirsync::output::json_value(&at_tenths[4]).unwrap());

    // A stored projection that no longer matches the log is found.
    let mut wrong = live.clone();
    let some = wrong.objects.objects.keys().next().cloned().unwrap();
    wrong.objects.objects.get_mut(&some).unwrap().dn = "CN=forged".into();
    replay::save(&f.store, &wrong).await.unwrap();
    let run = f.cli(&["replay", "--verify"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains(&some), "names the anchor: {run:?}");
}

/// An import folds what it appends into the state it holds, as the store hands the events
/// over, instead of reading them back (`replay::fold_appended`): the result must be the fold
/// of the log, every time, for small batches and for batches prepared part by part.
async fn appends_written_through_equal_the_log(b: Backend) {
    let mut rng = StdRng::seed_from_u64(0xa11ed);
    let f = Fresh::new(b).await;
    f.store
        .append(Batch::new(vec![random_event(&mut rng)]))
        .await
        .unwrap();
    let mut applied = 0;
    for round in 0..40 {
        let base = replay::current_tuned(&f.store, never_stored())
            .await
            .unwrap();
        let inst = ["old", "new"][rng.gen_range(0..2)];
        // Every tenth batch is large enough to be prepared and handed over in parts.
        let n = if round % 10 == 9 {
            2_500
        } else {
            rng.gen_range(1..60)
        };
        let batch: Vec<NewEvent> = (0..n)
            .map(|_| {
                let e = random_event(&mut rng);
                NewEvent::new(e.stream, inst, e.event)
            })
            .collect();
        let (keep, folding) = replay::fold_appended(&f.store, base, inst);
        let out = f
            .store
            .append_keeping(Batch::new(batch), keep)
            .await
            .unwrap();
        // The handle remembers what it read: nothing else can take it away, so every
        // append is written through.
        let through = folding
            .finish(&f.store, &out)
            .await
            .unwrap()
            .expect("written through");
        applied += 1;
        let rebuilt = replay::fold(&f.store, State::default(), Until::Head, None)
            .await
            .unwrap();
        assert_eq!(rebuilt.differences(&through), Vec::<String>::new());
        assert_eq!(*through, rebuilt);
    }
    assert_eq!(applied, 40);
    // A batch past the refresh threshold: its snapshot is encoded while the append commits,
    // and the refresh after it stores that one. It must be the fold of the log.
    let base = replay::current_tuned(&f.store, never_stored())
        .await
        .unwrap();
    let batch: Vec<NewEvent> = (0..replay::REFRESH_THRESHOLD + 500)
        .map(|_| {
            let e = random_event(&mut rng);
            NewEvent::new(e.stream, "new", e.event)
        })
        .collect();
    let (keep, folding) = replay::fold_appended(&f.store, base, "new");
    let out = f
        .store
        .append_keeping(Batch::new(batch), keep)
        .await
        .unwrap();
    folding.finish(&f.store, &out).await.unwrap();
    let refreshed = replay::current(&f.store).await.unwrap();
    let rebuilt = replay::fold(&f.store, State::default(), Until::Head, None)
        .await
        .unwrap();
    let stored = replay::stored(&f.store).await.unwrap().expect("a snapshot");
    assert_eq!(stored.seq, out.last_seq());
    assert_eq!(stored.differences(&rebuilt), Vec::<String>::new());
    assert_eq!(*refreshed, rebuilt);
    // Not the state before the append: nothing is written through.
    let stale = std::sync::Arc::new(
        replay::fold(&f.store, State::default(), Until::Seq(1), None)
            .await
            .unwrap(),
    );
    let (keep, folding) = replay::fold_appended(&f.store, stale, "old");
    let e = random_event(&mut rng);
    let out = f
        .store
        .append_keeping(
            Batch::new(vec![NewEvent::new(e.stream, "old", e.event)]),
            keep,
        )
        .await
        .unwrap();
    assert!(folding.finish(&f.store, &out).await.unwrap().is_none());
    // A refused append hands nothing over: what the next refresh starts from is still the
    // fold of the log.
    let base = replay::current_tuned(&f.store, never_stored())
        .await
        .unwrap();
    let (keep, folding) = replay::fold_appended(&f.store, base, "old");
    let e = random_event(&mut rng);
    let refused = f
        .store
        .append_keeping(
            Batch::new(vec![NewEvent::new(e.stream, "old", e.event)])
                .expect("no-such-stream", Expected::Exactly(7)),
            keep,
        )
        .await;
    assert!(
        matches!(refused, Err(dirsync::Error::Conflict { .. })),
        "{refused:?}"
    );
    folding.abandon().await;
    let now = replay::current_tuned(&f.store, never_stored())
        .await
        .unwrap();
    let rebuilt = replay::fold(&f.store, State::default(), Until::Head, None)
        .await
        .unwrap();
    assert_eq!(*now, rebuilt);
}

/// The control projections the store keeps (`src/log/control.rs`) equal the fold of the
/// log after every append: small batches, batches prepared part by part, a `log import`
/// (raw rows), a migration that adds them to a store without them, and a row left behind
/// the head. A row that differs from the log is found by `replay --verify`.
async fn stored_control_equals_the_fold(b: Backend) {
    let mut rng = StdRng::seed_from_u64(0xc0de);
    let f = Fresh::new(b).await;
    let check = |store: dirsync::log::AnyStore, what: String| async move {
        let stored = store.control().await.unwrap();
        let rebuilt = replay::fold(&store, State::default(), Until::Head, None)
            .await
            .unwrap();
        assert_eq!(stored.seq, rebuilt.seq, "{what}");
        assert_eq!(stored.control, rebuilt.control, "{what}");
    };
    check(f.store.clone(), "empty".into()).await;
    for round in 0..30 {
        // Some batches large enough to be prepared in parts (SQLite from 2048 events,
        // PostgreSQL's COPY from 256).
        let n = match round % 10 {
            4 => 300,
            9 => 2_500,
            _ => rng.gen_range(1..40),
        };
        let batch: Vec<NewEvent> = (0..n).map(|_| random_event(&mut rng)).collect();
        f.store.append(Batch::new(batch)).await.unwrap();
        check(f.store.clone(), format!("round {round}")).await;
    }
    let rebuilt = replay::fold(&f.store, State::default(), Until::Head, None)
        .await
        .unwrap();
    // The sequence reached every control projection.
    let c = &rebuilt.control;
    assert!(
        !c.instances.instances.is_empty()
            && c.relationship.holder.is_some()
            && !c.cursors.current.is_empty()
            && !c.guard.plans.is_empty()
            && !c.handovers.handovers.is_empty()
            && !c.suspects.failures.is_empty(),
        "{c:?}"
    );

    // `log import`: the rows as stored elsewhere.
    let other = Fresh::new(b).await;
    let mut after = 0;
    loop {
        let page = f.store.read(after, 700).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        other.store.append_raw(&page).await.unwrap();
    }
    check(other.store.clone(), "imported".into()).await;
    assert_eq!(
        other.store.control().await.unwrap().control,
        rebuilt.control
    );

    // A store from before schema 4 (so without the later ones too): the migration folds
    // what it holds.
    other
        .raw_sql(
            "DROP TABLE control; DROP TABLE heartbeats; DROP TABLE idle_cycles; DELETE FROM dirsync_schema WHERE version >= 4;",
        )
        .await;
    let migrated = dirsync::log::AnyStore::open(&other.url, dirsync::log::OpenMode::Init)
        .await
        .unwrap();
    check(migrated.clone(), "migrated".into()).await;

    // A row behind the head (written by something that did not keep it): the next append
    // folds it again.
    other
        .raw_sql("UPDATE control SET seq = seq - 1, body = '{}' WHERE id = 1")
        .await;
    migrated
        .append(Batch::new(vec![random_event(&mut rng)]))
        .await
        .unwrap();
    check(migrated.clone(), "refolded".into()).await;

    // A row written by a build of another body format, at the head: readers fold it again
    // from the log, and the next append writes this build's.
    other
        .raw_sql("UPDATE control SET body = '{\"format\": 0, \"tombstone_lifetime_days\": 99}' WHERE id = 1")
        .await;
    check(migrated.clone(), "another format".into()).await;
    migrated
        .append(Batch::new(vec![random_event(&mut rng)]))
        .await
        .unwrap();
    check(migrated.clone(), "another format, appended".into()).await;

    let run = f.cli(&["replay", "--verify"]);
    assert_eq!(run.code, 0, "{run:?}");
    f.raw_sql(
        "UPDATE control SET body = '{\"format\": 2, \"tombstone_lifetime_days\": 99}' WHERE id = 1",
    )
    .await;
    let run = f.cli(&["replay", "--verify"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.contains("the stored control projections at seq"),
        "{run:?}"
    );
}

/// `instance list` and `status` read the control projections, never the events of source
/// objects, and `deletions show` those of the held anchors only: with every other such
/// payload destroyed (which any fold of the log trips over), they still answer, as the
/// fold of the log before the damage says.
async fn instance_list_and_status_read_no_object_event(b: Backend) {
    let mut rng = StdRng::seed_from_u64(0x1157);
    let f = Fresh::new(b).await;
    while f.store.head().await.unwrap().0 < 500 {
        let batch: Vec<NewEvent> = (0..20).map(|_| random_event(&mut rng)).collect();
        f.store.append(Batch::new(batch)).await.unwrap();
    }
    let before = replay::fold(&f.store, State::default(), Until::Head, None)
        .await
        .unwrap();
    let want =
        dirsync::output::json_value(&dirsync::sync::instance::list(&before.control)).unwrap();
    let status_before = f.cli(&["status", "--format", "json"]);
    let held_before = f.cli(&["deletions", "show", "--format", "json"]);
    assert_eq!(held_before.code, 0, "{held_before:?}");
    assert_ne!(held_before.stdout.trim(), "[]", "the walk held deletions");
    f.raw_sql(crate::common::drop_guard_sql(b)).await;
    // Status reads the events of the quarantine candidates' objects (to tell whether they
    // changed since, and their names), `deletions show` those of the held anchors: those
    // are kept.
    let kept: String = before
        .control
        .suspects
        .candidates()
        .map(|(a, _)| a.clone())
        .chain(dirsync::sync::deletions::anchors(&before.control))
        .map(|a| format!(" AND payload NOT LIKE '%{a}%'"))
        .collect();
    // No snapshot either (a command before may have saved one): a fold starts at seq 0.
    f.raw_sql(&format!(
        "DELETE FROM snapshots; UPDATE events SET payload = 'not an event' \
         WHERE event_type IN ('ObjectImported', 'ObjectChanged', 'ObjectDeleted'){kept}"
    ))
    .await;
    // Any fold of the log fails now.
    let run = f.cli(&["replay", "--verify"]);
    assert_ne!(run.code, 0, "{run:?}");
    let run = f.cli(&["instance", "list", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let got: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(got, want);
    let status_after = f.cli(&["status", "--format", "json"]);
    assert_eq!(status_after.code, status_before.code, "{status_after:?}");
    // The same report, but for the time it was checked at (and the cursor ages from it).
    let strip = |r: &crate::common::Run| {
        let mut v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["checked_at"] = serde_json::Value::Null;
        for i in v["instances"].as_array_mut().unwrap() {
            i["cursor"] = serde_json::Value::Null;
        }
        v
    };
    assert_eq!(strip(&status_after), strip(&status_before));
    assert_eq!(strip(&status_after)["seq"], before.seq);
    let held_after = f.cli(&["deletions", "show", "--format", "json"]);
    assert_eq!(
        (held_after.code, held_after.stdout),
        (0, held_before.stdout)
    );
}

both_backends!(
    replay_equals_the_projections_kept_along_the_way,
    appends_written_through_equal_the_log,
    stored_control_equals_the_fold,
    instance_list_and_status_read_no_object_event
);

/// What a store handle read last is that handle's: read again with nothing appended, the
/// same state comes back (not decoded again), and an append through another handle of the
/// same store is folded on top of it; a second handle starts from the stored snapshot and
/// shares nothing with the first.
#[tokio::test]
async fn a_store_handle_remembers_the_state_it_read_and_only_it() {
    let f = Fresh::new(Backend::Sqlite).await;
    let mut rng = StdRng::seed_from_u64(7);
    f.store
        .append(Batch::new(
            (0..50).map(|_| random_event(&mut rng)).collect(),
        ))
        .await
        .unwrap();
    let first = replay::current(&f.store).await.unwrap();
    let again = replay::current(&f.store).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "read once");
    let other = f.reopen().await;
    let theirs = replay::current(&other).await.unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&first, &theirs),
        "a handle of its own"
    );
    assert_eq!(*first, *theirs);
    drop((again, theirs));
    other
        .append(Batch::new((0..5).map(|_| random_event(&mut rng)).collect()))
        .await
        .unwrap();
    let later = replay::current(&f.store).await.unwrap();
    assert_eq!(later.seq, 55);
    let rebuilt = replay::fold(&f.store, State::default(), Until::Head, None)
        .await
        .unwrap();
    assert_eq!(*later, rebuilt);
    // The first read still holds its state: the handle folded a copy, not it.
    assert_eq!(first.seq, 50);
}

#[tokio::test]
async fn until_a_time_and_bad_until_values() {
    let f = Fresh::new(Backend::Sqlite).await;
    let mut rng = StdRng::seed_from_u64(1);
    f.store
        .append(Batch::new((0..5).map(|_| random_event(&mut rng)).collect()))
        .await
        .unwrap();
    let cut = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    f.store
        .append(Batch::new((0..5).map(|_| random_event(&mut rng)).collect()))
        .await
        .unwrap();
    let run = f.cli(&["replay", "--until", &cut.to_rfc3339(), "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["seq"], 5);
    let run = f.cli(&["replay", "--until", "yesterday-ish"]);
    assert_eq!(run.code, 2, "{run:?}");
}

/// Reads of the current state that never store a snapshot.
fn never_stored() -> replay::Tuning {
    replay::Tuning {
        threshold: u64::MAX,
        ..Default::default()
    }
}

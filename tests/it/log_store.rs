//! The event log on both backends: append, conflicts, idempotency, concurrent writers,
//! tamper detection, export/import, bad input.

use dirsync::log::event::{stream, CursorAdvanced, Event, InstanceLifecycle};
use dirsync::log::store::{AppendOutcome, Batch, Expected};
use dirsync::log::{AnyStore, NewEvent, OpenMode, Store};
use dirsync::project::replay;
use dirsync::Error;

use crate::both_backends;
use crate::common::{drop_guard_sql, Backend, Fresh};

fn cursor(instance: &str, cookie: &str) -> NewEvent {
    NewEvent::new(
        stream::cursor(instance),
        instance,
        Event::CursorAdvanced(CursorAdvanced {
            kind: "dirsync".into(),
            cookie: cookie.into(),
        }),
    )
}

fn stopped(instance: &str) -> NewEvent {
    NewEvent::new(
        stream::instance(instance),
        instance,
        Event::InstanceStopped(InstanceLifecycle::default()),
    )
}

async fn fill(store: &AnyStore, n: usize) {
    for i in 0..n {
        store
            .append(Batch::new(vec![
                cursor("a", &format!("c{i}")),
                stopped("a"),
            ]))
            .await
            .unwrap();
    }
}

async fn append_reads_back_in_order(b: Backend) {
    let f = Fresh::new(b).await;
    let out = f
        .store
        .append(Batch::new(vec![
            cursor("a", "1"),
            cursor("b", "1"),
            cursor("a", "2"),
        ]))
        .await
        .unwrap();
    assert!(
        matches!(
            out,
            AppendOutcome::Appended {
                first_seq: 1,
                last_seq: 3,
                ..
            }
        ),
        "{out:?}"
    );
    let rows = f.store.read(0, 100).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    // The outcome tells when the batch was recorded: the time every row carries.
    if let AppendOutcome::Appended { recorded_at_us, .. } = out {
        assert!(rows.iter().all(|r| r.recorded_at_us == recorded_at_us));
    }
    assert_eq!(
        rows.iter()
            .map(|r| (r.stream.as_str(), r.stream_version))
            .collect::<Vec<_>>(),
        [("cursor/a", 1), ("cursor/b", 1), ("cursor/a", 2)]
    );
    assert_eq!(rows[2].decode().unwrap(), cursor("a", "2").event);
    assert_eq!(f.store.stream_version("cursor/a").await.unwrap(), 2);
    assert_eq!(f.store.head().await.unwrap(), (3, rows[2].hash));
    assert_eq!(replay::verify_chain(&f.store, None).await.unwrap(), 3);
    // `init` again is a no-op on an initialised store.
    let again = AnyStore::open(&f.url, OpenMode::Init).await.unwrap();
    assert_eq!(again.head().await.unwrap().0, 3);
}

async fn stale_expectation_is_a_conflict_and_writes_nothing(b: Backend) {
    let f = Fresh::new(b).await;
    f.store
        .append(Batch::new(vec![cursor("a", "1")]))
        .await
        .unwrap();
    let stale = Batch::new(vec![cursor("a", "2"), stopped("a")])
        .expect(stream::cursor("a"), Expected::NoStream);
    let err = f.store.append(stale).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { found: 1, .. }), "{err}");
    // A condition on a stream the batch does not write (fencing) is checked too.
    let fenced = Batch::new(vec![stopped("b")]).expect(stream::RELATIONSHIP, Expected::Exactly(3));
    assert!(matches!(
        f.store.append(fenced).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(f.store.head().await.unwrap().0, 1);
    assert_eq!(
        f.store
            .stream_version(&stream::instance("a"))
            .await
            .unwrap(),
        0
    );
    let ok = Batch::new(vec![cursor("a", "2")]).expect(stream::cursor("a"), Expected::Exactly(1));
    assert!(f.store.append(ok).await.is_ok());
}

async fn retried_append_with_the_same_key_writes_once(b: Backend) {
    let f = Fresh::new(b).await;
    let batch =
        || Batch::new(vec![cursor("a", "1"), cursor("a", "2")]).idempotency_key("run-7/export-1");
    let first = f.store.append(batch()).await.unwrap();
    assert!(
        matches!(
            first,
            AppendOutcome::Appended {
                first_seq: 1,
                last_seq: 2,
                ..
            }
        ),
        "{first:?}"
    );
    let second = f.store.append(batch()).await.unwrap();
    assert_eq!(second, AppendOutcome::Duplicate { first_seq: 1 });
    // Even from another connection, and with another expectation that would now fail.
    let other = f.reopen().await;
    let third = other
        .append(batch().expect(stream::cursor("a"), Expected::NoStream))
        .await
        .unwrap();
    assert_eq!(third, AppendOutcome::Duplicate { first_seq: 1 });
    assert_eq!(f.store.head().await.unwrap().0, 2);
    assert_eq!(replay::verify_chain(&f.store, None).await.unwrap(), 2);
}

/// Large batches take the bulk paths (PostgreSQL binary COPY from 256 rows, SQLite's
/// pipelined insert): the same chain, the same expectations and idempotency as small ones.
async fn large_batches_keep_the_chain_expectations_and_keys(b: Backend) {
    let f = Fresh::new(b).await;
    f.store
        .append(Batch::new(vec![cursor("z", "0")]))
        .await
        .unwrap();
    let big = |tag: &str| {
        Batch::new(
            (0..3000)
                .map(|i| cursor("a", &format!("{tag}{i}")))
                .collect(),
        )
        .idempotency_key(format!("bulk/{tag}"))
    };
    let out = f
        .store
        .append(big("x").expect(stream::cursor("a"), Expected::NoStream))
        .await
        .unwrap();
    assert!(
        matches!(
            out,
            AppendOutcome::Appended {
                first_seq: 2,
                last_seq: 3001,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        f.store.append(big("x")).await.unwrap(),
        AppendOutcome::Duplicate { first_seq: 2 }
    );
    // A stale expectation on a large batch writes nothing.
    let stale = f
        .store
        .append(big("y").expect(stream::cursor("a"), Expected::Exactly(5)))
        .await;
    assert!(
        matches!(stale, Err(dirsync::Error::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(f.store.head().await.unwrap().0, 3001);
    assert_eq!(
        f.store.stream_version(&stream::cursor("a")).await.unwrap(),
        3000
    );
    f.store.append(big("y")).await.unwrap();
    assert_eq!(replay::verify_chain(&f.store, None).await.unwrap(), 6001);
    let evs = f.store.read(3000, 3).await.unwrap();
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3001, 3002, 3003]
    );
    assert_eq!(evs[1].stream_version, 3001);
}

/// A batch of the size of a large import: PostgreSQL writes it in several `COPY`s, each
/// followed by its history index rows; SQLite in its pipelined parts. Every object is
/// found by its key, the first, one at a group's edge and the last alike.
async fn an_import_sized_batch_is_indexed_throughout(b: Backend) {
    use dirsync::log::event::{AttrValue, Attrs, ObjectImported, ObjectKind, SourceObject};
    let f = Fresh::new(b).await;
    let n = 120_001;
    let object = |i: usize| {
        let mut attrs = Attrs::new();
        attrs.insert(
            "mail",
            vec![AttrValue::Text(format!("u{i}@example.org").into())],
        );
        NewEvent::new(
            stream::SOURCE,
            "a",
            Event::ObjectImported(ObjectImported {
                object: SourceObject {
                    anchor: format!("anchor-{i}"),
                    kind: ObjectKind::User,
                    dn: format!("uid=u{i},dc=example,dc=org"),
                    attrs,
                    members: Default::default(),
                },
                returned: false,
            }),
        )
    };
    let out = f
        .store
        .append(Batch::new((0..n).map(object).collect()))
        .await
        .unwrap();
    assert!(
        matches!(out, AppendOutcome::Appended { first_seq: 1, last_seq, .. } if last_seq == n as u64),
        "{out:?}"
    );
    assert_eq!(
        replay::verify_chain(&f.store, None).await.unwrap(),
        n as u64
    );
    f.config();
    for i in [0, 49_999, 50_000, 100_000, n - 1] {
        let run = f.cli(&[
            "object",
            "show",
            &format!("U{i}@Example.org"),
            "--format",
            "json",
        ]);
        assert_eq!(run.code, 0, "{i}: {run:?}");
        assert!(
            run.stdout.contains(&format!("\"anchor-{i}\"")),
            "{i}: {run:?}"
        );
    }
}

async fn concurrent_writers_keep_one_chain(b: Backend) {
    let f = Fresh::new(b).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = f.reopen().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let events = (0..10)
                    .map(|j| cursor(&format!("w{w}"), &format!("{i}-{j}")))
                    .collect();
                store.append(Batch::new(events)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(replay::verify_chain(&f.store, None).await.unwrap(), 1000);
    for w in 0..4 {
        assert_eq!(
            f.store
                .stream_version(&format!("cursor/w{w}"))
                .await
                .unwrap(),
            250
        );
    }
}

/// Run the binary 8 times in each of several shell loops at once, all against `f`'s store:
/// loop `i` runs `dirsync --config CFG instance {command}` with `$1` set to `args[i]`.
fn loops_at_once(f: &Fresh, command: &str, args: &[&str]) {
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8; do {bin} --config {cfg} instance {command} >/dev/null || exit 1; done",
        bin = crate::common::bin(),
        cfg = f.config().display()
    );
    let children: Vec<_> = args
        .iter()
        .map(|arg| {
            std::process::Command::new("bash")
                .args(["-c", &script, "loop", arg])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn concurrent_processes_keep_one_chain(b: Backend) {
    let f = Fresh::new(b).await;
    // Four loops, each stopping 8 instances of its own.
    loops_at_once(&f, "stop \"p$1-$i\"", &["0", "1", "2", "3"]);
    assert_eq!(replay::verify_chain(&f.store, None).await.unwrap(), 32);
    let run = f.cli(&["instance", "list", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let list: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 32);
}

/// `log verify` while another process appends (a service running): what was appended
/// during the check is not "rows removed".
async fn verify_while_appending_passes(b: Backend) {
    let f = Fresh::new(b).await;
    fill(&f.store, 200).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let store = f.store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                store
                    .append(Batch::new(vec![cursor("w", &format!("w{i}"))]))
                    .await
                    .unwrap();
                i += 1;
            }
            i
        })
    };
    let mut runs = Vec::new();
    for _ in 0..10 {
        let run = f.cli(&["log", "verify"]);
        runs.push((run.code, run.stderr));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let appended = writer.await.unwrap();
    assert!(appended > 10, "{appended} appended during the checks");
    assert_eq!(runs, vec![(0, String::new()); 10]);
}

/// Each kind of tampering is found by `log verify`, which names the first bad seq.
async fn tampering_is_detected(b: Backend) {
    type Tamper = (&'static str, &'static str, u64);
    let cases: [Tamper; 4] = [
        ("altered", "UPDATE events SET payload = '{\"kind\":\"dirsync\",\"cookie\":\"forged\"}' WHERE seq = 5", 5),
        ("removed", "DELETE FROM events WHERE seq = 5", 5),
        ("reordered", "UPDATE events SET seq = -1 WHERE seq = 4; UPDATE events SET seq = 4 WHERE seq = 5; UPDATE events SET seq = 5 WHERE seq = -1", 4),
        ("tail removed", "DELETE FROM events WHERE seq = 10", 10),
    ];
    for (what, sql, bad_seq) in cases {
        let f = Fresh::new(b).await;
        fill(&f.store, 5).await;
        let ok = f.cli(&["log", "verify"]);
        assert_eq!(ok.code, 0, "{ok:?}");
        f.raw_sql(&format!("{} {sql};", drop_guard_sql(b))).await;
        let run = f.cli(&["log", "verify"]);
        assert_eq!(run.code, 5, "{what}: {run:?}");
        assert!(
            run.stderr.contains(&format!("at seq {bad_seq}:")),
            "{what}: expected seq {bad_seq} named: {run:?}"
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{what}: one line: {run:?}"
        );
        // The export refuses to carry a broken log.
        assert_eq!(f.cli(&["log", "export", "-o", "x.jsonl"]).code, 5, "{what}");
        assert!(!f.dir.path().join("x.jsonl").exists());
    }
}

async fn the_store_refuses_to_rewrite_history(b: Backend) {
    let f = Fresh::new(b).await;
    fill(&f.store, 1).await;
    for sql in [
        "UPDATE events SET payload = '{}' WHERE seq = 1",
        "DELETE FROM events WHERE seq = 1",
    ] {
        let url = f.url.clone();
        let sql = sql.to_string();
        // raw_sql panics when the statement fails: that is what we expect here.
        let r = tokio::spawn(async move { crate::common::raw_sql(&url, &sql).await }).await;
        assert!(
            r.is_err(),
            "append-only guard let `{}` through",
            "UPDATE/DELETE"
        );
    }
    assert_eq!(replay::verify_chain(&f.store, None).await.unwrap(), 2);
}

async fn export_import_round_trip_to_the_other_backend(b: Backend) {
    let from = Fresh::new(b).await;
    fill(&from.store, 40).await;
    let run = from.cli(&["log", "export", "-o", "log.jsonl"]);
    assert_eq!(run.code, 0, "{run:?}");
    let file = from.dir.path().join("log.jsonl");
    let other = match b {
        Backend::Sqlite => Backend::Postgres,
        Backend::Postgres => Backend::Sqlite,
    };
    let to = Fresh::new(other).await;
    let run = to.cli(&["log", "import", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("imported 80 events"), "{run:?}");
    assert_eq!(to.cli(&["log", "verify"]).code, 0);
    let again = to.cli(&["log", "export", "-o", "again.jsonl"]);
    assert_eq!(again.code, 0);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(to.dir.path().join("again.jsonl")).unwrap(),
        "the round trip must be byte-identical"
    );
    // Importing the same file again appends nothing.
    let run = to.cli(&["log", "import", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("imported 0 events (80 already present)"),
        "{run:?}"
    );
    // More events at the source, then a re-import appends only those.
    fill(&from.store, 2).await;
    assert_eq!(from.cli(&["log", "export", "-o", "log.jsonl"]).code, 0);
    let run = to.cli(&["log", "import", file.to_str().unwrap()]);
    assert!(
        run.stdout
            .contains("imported 4 events (80 already present)"),
        "{run:?}"
    );
    // A store with its own, different history refuses the file and keeps its log.
    let diverged = Fresh::new(other).await;
    fill(&diverged.store, 1).await;
    let run = diverged.cli(&["log", "import", file.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(diverged.store.head().await.unwrap().0, 2);
}

async fn bad_import_files_write_nothing(b: Backend) {
    let from = Fresh::new(b).await;
    fill(&from.store, 5).await;
    assert_eq!(from.cli(&["log", "export", "-o", "good.jsonl"]).code, 0);
    let good = std::fs::read_to_string(from.dir.path().join("good.jsonl")).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let broken_chain = {
        let mut l = lines.clone();
        l.remove(3);
        l.join("\n")
    };
    let altered = good.replacen("\"cookie\\\":\\\"c2\\\"", "\"cookie\\\":\\\"cX\\\"", 1);
    assert_ne!(altered, good, "the fixture must really alter a line");
    let garbage = format!("{}\nthis is not json\n{}", lines[0], lines[1]);
    let to = Fresh::new(b).await;
    for (name, body, needle) in [
        ("broken.jsonl", broken_chain, "chain broken"),
        ("altered.jsonl", altered, "chain broken"),
        ("garbage.jsonl", garbage, ":2: not a dirsync log line"),
    ] {
        let p = to.dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let run = to.cli(&["log", "import", p.to_str().unwrap()]);
        assert_eq!(run.code, 2, "{name}: {run:?}");
        assert!(run.stderr.contains(needle), "{name}: {run:?}");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{name}: {run:?}");
        assert_eq!(
            to.store.head().await.unwrap().0,
            0,
            "{name}: nothing written"
        );
    }
}

async fn a_store_from_a_newer_dirsync_is_refused(b: Backend) {
    let f = Fresh::new(b).await;
    fill(&f.store, 1).await;
    f.raw_sql("INSERT INTO dirsync_schema (version, applied_at_us) VALUES (99, 0)")
        .await;
    for args in [&["log", "show"][..], &["instance", "stop", "x"], &["init"]] {
        let run = f.cli(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("schema version 99 is newer"), "{run:?}");
    }
    assert_eq!(f.store.head().await.unwrap().0, 2, "nothing written");
}

/// Processes recording commands on one instance at once all succeed: each append expects
/// the instance stream's version, and one that lost the race is decided again, not refused.
async fn commands_on_one_instance_at_once_all_land(b: Backend) {
    let f = Fresh::new(b).await;
    loops_at_once(&f, "$1 shared", &["stop", "start", "stop", "start"]);
    assert_eq!(replay::verify_chain(&f.store, None).await.unwrap(), 32);
    assert_eq!(f.store.stream_version("instance/shared").await.unwrap(), 32);
}

both_backends!(
    append_reads_back_in_order,
    stale_expectation_is_a_conflict_and_writes_nothing,
    retried_append_with_the_same_key_writes_once,
    large_batches_keep_the_chain_expectations_and_keys,
    an_import_sized_batch_is_indexed_throughout,
    concurrent_writers_keep_one_chain,
    concurrent_processes_keep_one_chain,
    commands_on_one_instance_at_once_all_land,
    tampering_is_detected,
    verify_while_appending_passes,
    the_store_refuses_to_rewrite_history,
    export_import_round_trip_to_the_other_backend,
    bad_import_files_write_nothing,
    a_store_from_a_newer_dirsync_is_refused,
);

#[test]
fn a_file_that_is_not_a_store_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 2] = [
        (
            "garbage.db",
            b"this is a text file, not a database at all, honest.........",
        ),
        ("empty-looking.db", &[0u8; 4096]),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("[store]\nurl = \"sqlite://{}\"\n", p.display()),
        )
        .unwrap();
        for args in [&["log", "show"][..], &["init"], &["instance", "stop", "x"]] {
            let mut full = vec!["--config", cfg.to_str().unwrap()];
            full.extend_from_slice(args);
            let run = crate::common::dirsync(dir.path(), &full);
            assert_eq!(run.code, 2, "{name} {args:?}: {run:?}");
            assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
            assert_eq!(
                std::fs::read(&p).unwrap(),
                bytes,
                "{name} must be left untouched"
            );
        }
    }
}

#[test]
fn a_missing_store_is_not_created_by_reading_commands() {
    let dir = tempfile::tempdir().unwrap();
    let run = crate::common::dirsync(dir.path(), &["log", "show"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("dirsync init"), "{run:?}");
    assert!(!dir.path().join("dirsync.db").exists());
    let run = crate::common::dirsync(dir.path(), &["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(dir.path().join("dirsync.db").exists());
    // A new store is made with 16 KiB pages, in WAL mode.
    let db = rusqlite::Connection::open(dir.path().join("dirsync.db")).unwrap();
    let page: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!((page, mode.as_str()), (16_384, "wal"));
}

#[test]
fn an_unreachable_postgres_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::lab::proc::free_port();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!("[store]\nurl = \"postgres://u:hunter2@127.0.0.1:{port}/x\"\n"),
    )
    .unwrap();
    let run = crate::common::dirsync(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "log", "show"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("cannot connect"), "{run:?}");
    assert!(
        !run.stderr.contains("hunter2"),
        "the password must not be printed: {run:?}"
    );
}

#[test]
fn bad_configuration_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for (body, needle) in [
        ("[sync]\nintervall = \"5m\"\n", "intervall"),
        (
            "[sync]\ndeletion_threshold = \"lots\"\n",
            "sync.deletion_threshold",
        ),
        ("[source]\nkind = \"novell\"\n", "novell"),
    ] {
        let cfg = dir.path().join("d.toml");
        std::fs::write(&cfg, body).unwrap();
        let run = crate::common::dirsync(dir.path(), &["--config", cfg.to_str().unwrap(), "init"]);
        assert_eq!(run.code, 2, "{body}: {run:?}");
        assert!(run.stderr.contains(needle), "{body}: {run:?}");
        assert!(!dir.path().join("dirsync.db").exists(), "nothing written");
    }
}

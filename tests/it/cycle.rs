//! A cycle of its own and a cycle with an end (issue 18): one cycle per instance at a time
//! (18.5), and a target that is down or slow ends the cycle soon, with what was applied
//! recorded (18.4). Real slapd and scim2-server, with the lab's proxy in between.

use std::time::{Duration, Instant};

use serde_json::Value;

use dirsync::sync::export::{lock_instance, lock_instance_within};

use crate::common::{bin, dirsync, Backend, Fresh, Run};
use crate::lab::ProxyRules;
use crate::sync_export::E2e;
use crate::target_scim_differ::behind_proxy;

fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// `dirsync sync --instance I --format json` started in the background.
fn spawn_sync(lab: &E2e, instance: &str) -> tokio::process::Child {
    tokio::process::Command::new(bin())
        .args(["sync", "--instance", instance, "--format", "json"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The ledger owns exactly the target's objects, `users` users and `groups` groups.
async fn assert_target_exact(lab: &E2e, users: usize, groups: usize) {
    assert_ledger_is_target(lab).await;
    let (u, g) = (
        lab.view.count("Users").await,
        lab.view.count("Groups").await,
    );
    assert_eq!((u, g), (users as u64, groups as u64));
}

/// Issue 18.5: two `sync --instance a` at once both exported (thousands of 409s). The
/// second now exits 1 with one line before it reads or records anything, and the first
/// leaves the target exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sync_of_an_instance_exits_1_and_exports_nothing() {
    let lab = E2e::ldap(40, "500").await;
    let proxy = behind_proxy(
        &lab,
        ProxyRules {
            delay_writes: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )
    .await;
    let first = spawn_sync(&lab, "a");
    // Wait until the first one is exporting.
    let until = Instant::now() + Duration::from_secs(60);
    while !proxy.seen().iter().any(|(m, _)| m == "POST") {
        assert!(Instant::now() < until, "the first sync never exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let head = lab.head().await;
    let dir = lab.dir.path().to_path_buf();
    let second: Run = tokio::task::spawn_blocking(move || {
        dirsync(&dir, &["sync", "--instance", "a", "--format", "json"])
    })
    .await
    .unwrap();
    assert_eq!(second.code, 1, "{second:?}");
    // With --format json, the error is one JSON object.
    assert_eq!(
        second.stderr,
        format!(
            "{}\n",
            serde_json::json!({
                "error": "refused: a sync of instance `a` is already running (`dirsync sync` or `dirsync run`); this one did nothing",
                "exit": 1
            })
        )
    );
    assert_eq!(second.stdout, "");
    let first: Run = first.wait_with_output().await.unwrap().into();
    assert_eq!(first.code, 0, "{first:?}");
    let v: Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(
        [count(&v, "created"), count(&v, "failures")],
        [42, 0],
        "{v}"
    );
    // The second recorded nothing: every event after `head` is the first one's.
    let runs = lab
        .events_after(head)
        .await
        .into_iter()
        .filter(|t| t.starts_with("SyncRun"))
        .collect::<Vec<_>>();
    assert_eq!(runs, ["SyncRunCompleted"]);
    assert!(
        proxy.seen().iter().all(|(_, s)| *s != 409),
        "{:?}",
        proxy.seen()
    );
    assert_target_exact(&lab, 40, 2).await;
    // The lock is gone with the first: the next cycle runs.
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "created"), 0, "{v}");
}

/// The same for the service: a second `dirsync run` of an instance exits 1 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_an_instance_exits_1() {
    let lab = E2e::ldap(2, "500").await;
    let mut service = tokio::process::Command::new(bin())
        .args(["run", "--instance", "a"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its first cycle has run once the target holds the users.
    let until = Instant::now() + Duration::from_secs(60);
    while lab.view.count("Users").await < 2 {
        assert!(Instant::now() < until, "the service never synced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = tokio::process::Command::new(bin())
        .args(["run", "--instance", "a"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let second: Run = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("a second service of the instance kept running")
        .unwrap()
        .into();
    assert_eq!(second.code, 1, "{second:?}");
    assert_eq!(
        second.stderr,
        "dirsync: refused: `dirsync run --instance a` is already running on this store; this one exits\n"
    );
    service.start_kill().unwrap();
    let _ = service.wait().await;
}

/// The cycle lock on both stores: one holder per instance, other instances free, and free
/// again at once when released (the next cycle of a `run` or a handover comes right after).
async fn one_cycle_lock_per_instance(backend: Backend) {
    let f = Fresh::new(backend).await;
    let other = f.reopen().await;
    for _ in 0..3 {
        let held = lock_instance(&f.store, "a").await.unwrap();
        let refused = lock_instance(&other, "a").await.err().unwrap();
        assert_eq!(
            refused.to_string(),
            "refused: a sync of instance `a` is already running (`dirsync sync` or `dirsync run`); this one did nothing"
        );
        assert_eq!(refused.exit(), dirsync::error::Exit::Failure);
        lock_instance(&other, "b").await.unwrap().release().await;
        held.release().await;
    }
    // A handover step waits for a cycle in flight: it gets the lock once the holder lets
    // go, and is refused (naming the wait) when the holder outlasts the wait.
    let held = lock_instance(&f.store, "a").await.unwrap();
    let refused = lock_instance_within(&other, "a", Duration::from_millis(300))
        .await
        .err()
        .unwrap();
    assert!(refused.to_string().ends_with("(waited 300ms)"), "{refused}");
    let waiting = tokio::spawn(async move {
        let t0 = Instant::now();
        let l = lock_instance_within(&other, "a", Duration::from_secs(20)).await;
        (l.map(|_| ()), t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    held.release().await;
    let (got, waited) = waiting.await.unwrap();
    got.unwrap();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    if backend == Backend::Sqlite {
        use std::os::unix::fs::PermissionsExt;
        let lock = f.dir.path().join("log.db.sync.a.lock");
        let mode = std::fs::metadata(lock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

crate::both_backends!(one_cycle_lock_per_instance);

/// Run `dirsync ARGS` in the lab's dir, killed after `limit`; and how long it took.
async fn run_within(lab: &E2e, args: &[&str], limit: Duration) -> (Run, Duration) {
    let began = Instant::now();
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .kill_on_drop(true)
        .output();
    let run: Run = tokio::time::timeout(limit, out)
        .await
        .unwrap_or_else(|_| panic!("dirsync {args:?} still ran after {limit:?}"))
        .unwrap()
        .into();
    (run, began.elapsed())
}

/// Append `[sync]` keys (the lab's dirsync.toml ends with its `[sync]` section).
fn add_sync_keys(lab: &E2e, keys: &str) {
    let path = lab.dir.path().join("dirsync.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    assert!(toml.contains("[sync]\n"));
    toml.push_str(keys);
    std::fs::write(&path, toml).unwrap();
}

/// The ledger's target ids are exactly the target's users and groups.
async fn assert_ledger_is_target(lab: &E2e) -> usize {
    let state = lab.state().await;
    let mut owned: Vec<String> = state
        .ledger
        .owned()
        .map(|(_, l)| l.target_id.clone())
        .collect();
    owned.sort();
    let mut there: Vec<String> = lab
        .view
        .all("Users")
        .await
        .into_iter()
        .chain(lab.view.all("Groups").await)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    there.sort();
    assert_eq!(owned, there, "ledger and target differ");
    owned.len()
}

/// Issue 18.4: a SCIM server that is down cost 23 minutes of retries, every operation
/// retried in turn. The target goes down mid-cycle here (the proxy stops listening after
/// 15 requests: probe, listing, 13 creates): the cycle ends within a minute with one line
/// naming the first cause, the creates that were answered are recorded, and nothing is
/// recorded as the objects' failure (the rest waits for the next cycle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_goes_down_ends_the_cycle_soon_naming_the_first_cause() {
    let lab = E2e::ldap(100, "500").await;
    let _proxy = behind_proxy(
        &lab,
        ProxyRules {
            down_after: Some(15),
            ..Default::default()
        },
    )
    .await;
    let (run, took) = run_within(
        &lab,
        &["sync", "--instance", "a", "--format", "json"],
        Duration::from_secs(150),
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}: {run:?}");
    let last = json_error(&run);
    // The first request refused names the cause: a create, or under load a lookup the
    // matching still had in flight when the target went down (the order is not fixed).
    assert!(
        (last.starts_with("target: create user ") || last.starts_with("target: list "))
            && last.contains("Connection refused")
            && last.contains("(the target is down: ")
            && last.ends_with("the cycle stopped; what was exported before is recorded"),
        "{run:?}"
    );
    let events = lab.events_after(0).await;
    assert!(!events.iter().any(|t| t == "ExportFailed"), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("SyncRunFailed"));
    let owned = assert_ledger_is_target(&lab).await;
    assert!(owned <= 13, "{owned} exported");
}

/// Issue 18.4: with a target answering writes late, a cycle ran past 15 minutes and
/// recorded as failed creates that had been applied. `[sync] cycle_timeout` ends it: no
/// request starts after it, those in flight finish and are recorded as applied (their
/// answers came after the timeout), and the next cycle goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_ends_at_its_timeout_with_late_answers_recorded() {
    let lab = E2e::ldap(10, "500").await;
    let proxy = behind_proxy(
        &lab,
        ProxyRules {
            delay_writes: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    )
    .await;
    add_sync_keys(&lab, "cycle_timeout = \"3s\"\n");
    let (run, _) = run_within(
        &lab,
        &["sync", "--instance", "a", "--format", "json"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    let last = json_error(&run);
    assert!(
        last.starts_with("cycle timeout: the cycle ran past [sync] cycle_timeout (3s): ")
            && last
                .ends_with("operation(s) left for the next cycle; what was exported is recorded"),
        "{run:?}"
    );
    let events = lab.events_after(0).await;
    assert!(!events.iter().any(|t| t == "ExportFailed"), "{events:?}");
    let first = assert_ledger_is_target(&lab).await;
    assert!((1..12).contains(&first), "{first} exported");
    // Each next cycle goes on where the last stopped, until everything is there.
    for _ in 0..10 {
        let (run, _) = run_within(
            &lab,
            &["sync", "--instance", "a", "--format", "json"],
            Duration::from_secs(60),
        )
        .await;
        assert!(run.code == 0 || run.code == 1, "{run:?}");
        if run.code == 0 {
            break;
        }
    }
    assert_eq!(assert_ledger_is_target(&lab).await, 12);
    assert!(
        proxy.seen().iter().all(|(_, s)| *s != 409),
        "{:?}",
        proxy.seen()
    );
    assert!(!lab
        .events_after(0)
        .await
        .iter()
        .any(|t| t == "ExportFailed"));
}

/// The Graph client shares the policy: with Graph refusing connections (its token endpoint
/// still answering), a chunk of creates ends within a minute, the first cause named and
/// fatal, instead of every `$batch` spending six tries with backoff up to 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_that_is_down_ends_the_chunk_soon() {
    use dirsync::config::Secret;
    use dirsync::target::graph::{GraphOptions, GraphTarget};
    use dirsync::target::{Mapped, MappedUser, Op, Outcome, Target};

    let fake = crate::lab::GraphFake::start();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = GraphTarget::new(
        &format!("http://127.0.0.1:{closed}/v1.0"),
        &fake.token_url(),
        fake.client_id(),
        Secret::new(fake.client_secret()),
        GraphOptions::default(),
    )
    .unwrap();
    let ops: Vec<Op> = (0..200)
        .map(|i| Op::Create {
            anchor: uuid::Uuid::new_v4().to_string(),
            object: Mapped::User(MappedUser {
                user_name: format!("u{i}@test.lan").into(),
                active: true,
                ..Default::default()
            }),
        })
        .collect();
    let began = Instant::now();
    let out = t
        .apply(&ops, Instant::now() + Duration::from_secs(600))
        .await;
    let took = began.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(!out.iter().any(|o| matches!(o, Outcome::Applied { .. })));
    let fatal: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed(e) if e.fatal => Some(e.message.clone()),
            _ => None,
        })
        .collect();
    assert!(!fatal.is_empty(), "{out:?}");
    assert!(
        fatal[0].contains("Connection refused") && fatal[0].contains("(the target is down: "),
        "{}",
        fatal[0]
    );
}

/// The error of a `--format json` command that failed: its stderr ends with one JSON
/// object `{"error": ..., "exit": CODE}`.
fn json_error(run: &Run) -> String {
    let last = run.stderr.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    let error = v["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        v,
        serde_json::json!({"error": error, "exit": run.code}),
        "{run:?}"
    );
    error
}

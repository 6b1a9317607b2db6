//! Issue 21: every cycle leaves a trace (`SyncRunFailed` with a reason, from `sync` and
//! `run`, also when it fails before its import starts), and `dirsync status` tells the
//! health by its exit code in real states: healthy, failing, held, fenced, stale.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dirsync::log::event::{Event, FailureReason, SyncRunCompleted, SyncRunFailed};
use dirsync::log::store::Batch;
use dirsync::log::{NewEvent, Store};
use serde_json::{json, Value};

use crate::common::{bin, dirsync, Run};
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";

/// `dirsync status --format json ARGS`: the run and its JSON.
fn status(lab: &E2e, extra: &[&str]) -> (Run, Value) {
    let mut args = vec!["status", "--format", "json"];
    args.extend_from_slice(extra);
    let run = lab.cli(&args);
    let v = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    (run, v)
}

/// The events after `seq`, decoded, with their instance.
async fn events_after(lab: &E2e, seq: u64) -> Vec<(String, Event)> {
    lab.store()
        .await
        .read(seq, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.instance.clone(), e.decode().unwrap()))
        .collect()
}

/// The one event after `seq`: a failed run of `instance` that never started.
async fn only_failure(lab: &E2e, seq: u64, instance: &str) -> SyncRunFailed {
    let evs = events_after(lab, seq).await;
    match evs.as_slice() {
        [(i, Event::SyncRunFailed(f))] if i == instance => f.clone(),
        other => panic!("expected one SyncRunFailed of {instance}: {other:?}"),
    }
}

/// Run the binary in the lab's directory with extra environment variables.
fn with_env(lab: &E2e, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .env_remove("DIRSYNC_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap().into()
}

/// A copy of the lab's configuration with each line starting with `prefix` replaced.
fn config_with(lab: &E2e, name: &str, prefix: &str, line: &str) -> String {
    let cfg = std::fs::read_to_string(lab.dir.path().join("dirsync.toml")).unwrap();
    let changed: Vec<String> = cfg
        .lines()
        .map(|l| {
            if l.starts_with(prefix) {
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(changed.join("\n"), cfg.trim_end(), "{prefix} not found");
    std::fs::write(lab.dir.path().join(name), changed.join("\n") + "\n").unwrap();
    name.to_string()
}

/// The error a failed command printed: its one line without the `dirsync: ` prefix, or
/// (`--format json`) the `error` of its one JSON object, whose `exit` must be the code.
fn error_line(run: &Run) -> String {
    let last = run.stderr.lines().last().unwrap_or_default();
    match serde_json::from_str::<Value>(last) {
        Ok(v) => {
            let e = v["error"].as_str().unwrap_or_default().to_string();
            assert_eq!(v, json!({"error": e, "exit": run.code}), "{run:?}");
            e
        }
        Err(_) => last.trim_start_matches("dirsync: ").to_string(),
    }
}

/// `last_failure` of the first instance row, without its time and seq.
fn failure_of(v: &Value) -> Value {
    let mut f = v["instances"][0]["last_failure"].clone();
    if let Some(o) = f.as_object_mut() {
        o.remove("at");
        o.remove("seq");
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cycle_leaves_a_trace_and_status_exits_by_health() {
    let lab = E2e::ldap(3, "1\ninterval = \"5s\"\nlease = \"3s\"").await;
    // No instance yet: nothing to be unhealthy about.
    let (run, v) = status(&lab, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(v["instances"], json!([]));

    // Healthy.
    let s = lab.sync("a", &[]);
    let (run, v) = status(&lab, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let state = lab.state().await;
    let rec = &state.control.instances.instances["a"];
    let (run_id, done) = rec.last_completed.clone().unwrap();
    assert_eq!(run_id, s["run_id"].as_str().unwrap());
    let cursor = &state.control.cursors.current["a"];
    let mut row = v["instances"][0].clone();
    let age = row["cursor"]["age_seconds"].as_i64().unwrap();
    assert!((0..60).contains(&age), "{row}");
    row["cursor"]["age_seconds"] = json!(0);
    assert_eq!(
        row,
        json!({
            "instance": "a",
            "role": "holder",
            "epoch": 1,
            "running": null,
            "last_success": {
                "run_id": run_id,
                "at": dirsync::output::time(done.at_us),
                "seq": done.seq,
            },
            "last_failure": null,
            "last_cycle_failed": false,
            "deletions_held": 0,
            "cursor": {
                "at": dirsync::output::time(cursor.at.at_us),
                "age_seconds": 0,
                "expired": false,
            },
            "handover": null,
            "heartbeat": null,
        })
    );
    assert_eq!(
        (
            &v["holder"],
            &v["epoch"],
            &v["deletions_held"],
            &v["handover"],
            &v["quarantined"],
            &v["health"]
        ),
        (
            &json!("a"),
            &json!(1),
            &Value::Null,
            &Value::Null,
            &json!([]),
            &json!({"exit": 0, "problems": []})
        )
    );
    let table = lab.cli(&["status"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.ends_with("healthy\n"), "{table:?}");
    assert!(
        table.stdout.contains(&dirsync::output::time(done.at_us)),
        "{table:?}"
    );
    // --local-time: tables in the local zone; JSON stays UTC.
    let local = with_env(&lab, &[("TZ", "EST5")], &["status", "--local-time"]);
    assert_eq!(local.code, 0, "{local:?}");
    let est = chrono::DateTime::from_timestamp_micros(done.at_us)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::west_opt(5 * 3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    assert!(local.stdout.contains(&est), "{est}: {local:?}");
    let local = with_env(
        &lab,
        &[("TZ", "EST5")],
        &["status", "--local-time", "--format", "json"],
    );
    let lv: Value = serde_json::from_str(&local.stdout).unwrap();
    assert_eq!(
        lv["instances"][0]["last_success"],
        v["instances"][0]["last_success"]
    );

    // DIRSYNC_LOG_FORMAT=json: every log line is a JSON object.
    let logged = with_env(
        &lab,
        &[
            ("DIRSYNC_LOG", "dirsync=debug"),
            ("DIRSYNC_LOG_FORMAT", "json"),
        ],
        &["sync", "--instance", "a", "--format", "json"],
    );
    assert_eq!(logged.code, 0, "{logged:?}");
    let lines: Vec<Value> = logged
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "DEBUG" && l["fields"]["phase"] == "imported"),
        "{logged:?}"
    );
    assert!(
        lines.iter().all(|l| l["timestamp"].is_string()),
        "{logged:?}"
    );

    // The target unreachable: the cycle fails before its import, and says so in the log.
    let dead_target = config_with(
        &lab,
        "dead-target.toml",
        "url = \"http",
        "url = \"http://127.0.0.1:1/v2\"",
    );
    let head = lab.head().await;
    let run = lab.cli(&["--config", &dead_target, "sync", "--instance", "a"]);
    assert_eq!(run.code, 1, "{run:?}");
    // Its log lines and error reach a pipe: no colour codes, no progress bar.
    assert!(run.stderr.contains(" WARN "), "{run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "{run:?}");
    let f = only_failure(&lab, head, "a").await;
    assert_eq!(
        (f.error.as_str(), f.reason),
        (error_line(&run).as_str(), Some(FailureReason::Target))
    );
    let (run, v) = status(&lab, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        failure_of(&v),
        json!({"run_id": f.run_id, "reason": "target", "error": f.error})
    );
    assert_eq!(v["instances"][0]["last_cycle_failed"], true);

    // The source unreachable, from the `run` service: its cycle line carries its time.
    let dead_source = config_with(
        &lab,
        "dead-source.toml",
        "url = \"ldap",
        "url = \"ldap://127.0.0.1:1\"",
    );
    let head = lab.head().await;
    let child = Command::new(bin())
        .args(["--config", &dead_source, "run", "--instance", "a"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while events_after(&lab, head).await.is_empty() {
        assert!(Instant::now() < end, "the service recorded no failed cycle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let f = only_failure(&lab, head, "a").await;
    assert_eq!(f.reason, Some(FailureReason::Source), "{f:?}");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = said
        .lines()
        .find(|l| l.contains("sync failed"))
        .unwrap_or_else(|| panic!("{said}"));
    // "dirsync run: 2026-...Z a: sync failed: source: ...; trying again in 5s"
    let at = line
        .trim_start_matches("dirsync run: ")
        .split(' ')
        .next()
        .unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok(),
        "no time on the cycle line: {line}"
    );
    assert!(line.contains(&f.error), "{line} vs {f:?}");
    let (run, v) = status(&lab, &["--instance", "a"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(failure_of(&v)["reason"], "source");

    // Healthy again.
    lab.sync("a", &[]);
    assert_eq!(status(&lab, &[]).0.code, 0);

    // Held: two deletions over a threshold of one. With `[sync] hold = "deletions"` (the
    // default) the cycle exported its creates and updates: it completed, holding two, and
    // status exits 3 from the guard's held list (not from a failed cycle).
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: delete\n\ndn: uid=u2,{PEOPLE}\nchangetype: delete\n\n"
        ))
        .await;
    let head = lab.head().await;
    let (run, s) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    let plan = s["held_plan"].as_str().unwrap().to_string();
    let evs = events_after(&lab, head).await;
    let Some((_, Event::SyncRunCompleted(c))) = evs.last() else {
        panic!("{evs:?}")
    };
    let count = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"));
    assert_eq!(
        c,
        &SyncRunCompleted {
            run_id: s["run_id"].as_str().unwrap().into(),
            created: count("created"),
            updated: count("updated"),
            deleted: 0,
            matched: count("matched"),
            held: 2,
            failed: 0,
            // The cycle tried its whole plan (its deletions held, awaiting approval): made
            // after its import, after `head`.
            planned_seq: c.planned_seq.filter(|p| *p > head),
            listed_seq: None,
        }
    );
    assert!(c.planned_seq.is_some(), "{c:?}");
    let (run, v) = status(&lab, &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(v["instances"][0]["deletions_held"], 2);
    assert_eq!(v["deletions_held"]["plan_hash"], plan.as_str());
    assert_eq!(v["deletions_held"]["count"], 2);
    assert_eq!(v["instances"][0]["last_cycle_failed"], false, "{v}");
    assert_eq!(lab.cli(&["deletions", "approve", "--plan", &plan]).code, 0);
    lab.sync("a", &[]);
    assert_eq!(status(&lab, &[]).0.code, 0);

    // Fenced: b takes over; a's next cycle fails before it starts, and `status --instance
    // a` exits 4 while the holder's health is fine.
    lab.sync("b", &["--take-over"]);
    let head = lab.head().await;
    let (run, _) = lab.run("a", &[]);
    assert_eq!(run.code, 4, "{run:?}");
    let f = only_failure(&lab, head, "a").await;
    assert_eq!(
        (f.error.as_str(), f.reason),
        (error_line(&run).as_str(), Some(FailureReason::Fenced))
    );
    let (run, v) = status(&lab, &["--instance", "a"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(v["instances"][0]["role"], "standby");
    assert_eq!(status(&lab, &["--instance", "b"]).0.code, 0);
    let (run, v) = status(&lab, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let roles: Vec<(&str, &str)> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["instance"].as_str().unwrap(), i["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [("a", "standby"), ("b", "holder")]);

    // A failure recorded before reasons were (the payload then had none): it still
    // verifies, and shows with no reason.
    let store = lab.store().await;
    store
        .append(Batch::new(vec![NewEvent::new(
            "instance/c",
            "c",
            Event::SyncRunFailed(SyncRunFailed {
                run_id: "old".into(),
                error: "boom".into(),
                reason: None,
            }),
        )]))
        .await
        .unwrap();
    let raw = store.read(lab.head().await - 1, 1).await.unwrap();
    assert_eq!(raw[0].payload, r#"{"run_id":"old","error":"boom"}"#);
    assert_eq!(lab.cli(&["log", "verify"]).code, 0);
    let (run, v) = status(&lab, &["--instance", "c"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(
        failure_of(&v),
        json!({"run_id": "old", "reason": null, "error": "boom"})
    );

    // Stale: no success of the holder within three intervals (15 s).
    tokio::time::sleep(Duration::from_secs(16)).await;
    let (run, v) = status(&lab, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        v["health"]["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("b has not completed a cycle within three intervals (15s)"),
        "{v}"
    );
    let unknown = dirsync(lab.dir.path(), &["status", "--instance", "zz"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    // With --format json, the error is one JSON object on stderr.
    let unknown = dirsync(
        lab.dir.path(),
        &["status", "--instance", "zz", "--format", "json"],
    );
    assert_eq!(
        (unknown.code, unknown.stdout.as_str(), unknown.stderr.as_str()),
        (
            2,
            "",
            "{\"error\":\"the log knows no instance `zz` (see `dirsync instance list`)\",\"exit\":2}\n"
        )
    );
}

/// A handover's sync step that fails (its deletions held, `[sync] hold = "all"`: the cycle
/// exported nothing) records the failed cycle with its reason, and `status` shows the
/// handover stopped part way and the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handover_sync_step_is_recorded_and_shown() {
    let lab = E2e::ldap(3, "1\nlease = \"3s\"\nhold = \"all\"").await;
    let playbooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    std::os::unix::fs::symlink(playbooks, lab.dir.path().join("playbooks")).unwrap();
    lab.sync("old", &[]);
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: delete\n\ndn: uid=u2,{PEOPLE}\nchangetype: delete\n\n"
        ))
        .await;
    let head = lab.head().await;
    let run = lab.cli(&[
        "handover", "--from", "old", "--to", "new", "--format", "json",
    ]);
    assert_eq!(run.code, 3, "{run:?}");
    let error = error_line(&run);
    let evs = events_after(&lab, head).await;
    let runs: Vec<(&str, &str)> = evs
        .iter()
        .map(|(i, e)| (i.as_str(), e.event_type()))
        .filter(|(_, t)| t.starts_with("Handover") || t.starts_with("SyncRun"))
        .collect();
    assert_eq!(
        runs,
        [
            ("new", "HandoverStarted"),
            ("old", "HandoverStepStarted"),
            ("old", "HandoverStepCompleted"),
            ("new", "HandoverStepStarted"),
            ("new", "SyncRunStarted"),
            ("new", "SyncRunFailed"),
            ("new", "HandoverStepFailed"),
        ],
        "{evs:?}"
    );
    let Some(Event::SyncRunFailed(f)) = evs
        .iter()
        .map(|(_, e)| e)
        .find(|e| matches!(e, Event::SyncRunFailed(_)))
    else {
        panic!("{evs:?}")
    };
    assert_eq!(f.reason, Some(FailureReason::Held), "{f:?}");

    let (run, v) = status(&lab, &[]);
    assert_eq!(run.code, 3, "{run:?}");
    let id = v["handover"]["handover_id"].as_str().unwrap().to_string();
    assert_eq!(
        v["handover"],
        json!({
            "handover_id": id,
            "from": "old",
            "to": "new",
            "playbook": "new-computer",
            "status": "failed",
            "done": 1,
            "steps": 6,
        })
    );
    let rows: Vec<Value> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            json!([
                i["instance"],
                i["role"],
                i["epoch"],
                i["handover"],
                i["deletions_held"],
                i["last_failure"]["reason"]
            ])
        })
        .collect();
    assert_eq!(
        rows,
        [
            json!(["new", "holder", 2, id, 2, "held"]),
            json!(["old", "stopped", null, id, 0, null]),
        ]
    );
    let (run, _) = status(&lab, &["--instance", "old"]);
    assert_eq!(run.code, 4, "{run:?}");
    // The handover's JSON: every step's detail is an object.
    let shown = lab.cli(&["handover", "status", "--format", "json"]);
    let h: Value = serde_json::from_str(&shown.stdout).unwrap();
    let details: Vec<&Value> = h["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["detail"])
        .collect();
    assert_eq!(details[0], &json!({}));
    assert_eq!(details[1], &json!({ "error": error }));
    assert!(details[2..].iter().all(|d| *d == &json!({})), "{h}");
}

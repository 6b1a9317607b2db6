//! `[notify]` against `dirsync run` on slapd and scim2-server: a webhook receiver on
//! loopback that checks the signature, the hook command's stdin, a receiver that never
//! answers and a hook that hangs (cycles go on), failing receivers, a missing program, a
//! missing secret.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use dirsync::log::Store;
use serde_json::{json, Value};

use crate::common::{bin, until};
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const SECRET: &str = "s3cr3t-for-the-test";

/// A webhook receiver on loopback: every request's headers and body, answered `status`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(status: StatusCode) -> Receiver {
        let got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
        let keep = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let keep = keep.clone();
                async move {
                    keep.lock().unwrap().push((headers, body));
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hook?token=query-secret",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, got, task }
    }

    fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A receiver that accepts connections and never answers.
fn silent_receiver() -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            match s {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
    });
    (url, t)
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), body).as_ref())
}

/// Ends the service when the test ends, passed or not.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_run(lab: &E2e) -> Service {
    Service(
        Command::new(bin())
            .args(["run", "--instance", "a"])
            .current_dir(lab.dir.path())
            .env_remove("DIRSYNC_CONFIG")
            .env("DIRSYNC_TEST_WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Append `[notify]` (and anything else) to the lab's configuration.
fn configure(lab: &E2e, extra: &str) {
    let p = lab.dir.path().join("dirsync.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(extra);
    std::fs::write(&p, text).unwrap();
}

/// Point the lab's target at a port where nothing listens: every cycle fails.
fn break_target(lab: &E2e) {
    let p = lab.dir.path().join("dirsync.toml");
    let text: String = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("url = \"http") {
                "url = \"http://127.0.0.1:1/v2\"\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(text.contains("127.0.0.1:1/v2"), "{text}");
    std::fs::write(&p, text).unwrap();
}

/// The payloads of the log's notification events, in order: (event type, payload).
async fn deliveries(lab: &E2e) -> Vec<(String, Value)> {
    lab.store()
        .await
        .read(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.stream == "notify")
        .map(|e| (e.event_type, serde_json::from_str(&e.payload).unwrap()))
        .collect()
}

async fn count_events(lab: &E2e, event_type: &str) -> usize {
    lab.store()
        .await
        .read(0, 1_000_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == event_type)
        .count()
}

fn delete_users(uids: &[u32]) -> String {
    uids.iter()
        .map(|i| format!("dn: uid=u{i},{PEOPLE}\nchangetype: delete\n\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_deletions_are_told_once_signed_to_the_webhook_and_to_the_command() {
    let receiver = Receiver::start(StatusCode::NO_CONTENT).await;
    let lab = E2e::ldap(4, "1\ninterval = \"300ms\"").await;
    let stdin_file = lab.dir.path().join("hook.out");
    let hook = lab.dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            stdin_file.display(),
            stdin_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    configure(
        &lab,
        &format!(
            "[notify]\nwebhook_url = \"{}\"\nwebhook_secret_env = \"DIRSYNC_TEST_WEBHOOK_SECRET\"\n\
             command = \"{}\"\ntimeout = \"5s\"\n",
            receiver.url,
            hook.display()
        ),
    );
    let _run = spawn_run(&lab);
    until(30, "the first cycle", || async {
        lab.view.count("Users").await == 4
    })
    .await;
    lab.slapd().ldapmodify(&delete_users(&[3, 4])).await;
    until(30, "the webhook", || async {
        !receiver.requests().is_empty()
    })
    .await;
    until(10, "the command", || async {
        std::fs::read_to_string(&stdin_file).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    // Three more cycles hold the same list: no second notification.
    let held_runs = count_events(&lab, "SyncRunCompleted").await;
    until(30, "three more cycles", || async {
        count_events(&lab, "SyncRunCompleted").await >= held_runs + 3
    })
    .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "one notification per held list");
    let (headers, body) = &requests[0];
    assert_eq!(
        headers["x-dirsync-signature"].to_str().unwrap(),
        format!("sha256={}", hmac_hex(SECRET.as_bytes(), body))
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-dirsync-event"], "deletions_held");
    let stdin = std::fs::read_to_string(&stdin_file).unwrap();
    assert_eq!(
        stdin,
        format!("{}\n", String::from_utf8_lossy(body)),
        "the command gets the webhook's body, once"
    );

    let state = lab.state().await;
    let (plan, held) = state.control.guard.plans.iter().next().unwrap();
    assert_eq!(state.control.guard.plans.len(), 1);
    let mut v: Value = serde_json::from_slice(body).unwrap();
    let at = v["at"].as_str().unwrap().to_string();
    let parsed = chrono::DateTime::parse_from_rfc3339(&at).unwrap();
    assert!(
        (parsed.timestamp_micros() - held.held.at_us).abs() < 5_000_000,
        "{at}"
    );
    let run_id = v["details"]["run_id"].clone();
    v["at"] = json!("AT");
    v["details"]["run_id"] = json!("RUN");
    assert_eq!(
        v,
        json!({"event": "deletions_held", "instance": "a", "at": "AT",
               "details": {"count": 2, "plan": plan, "reason": held.reason, "run_id": "RUN"}})
    );
    assert!(run_id.as_str().is_some_and(|r| r.len() == 36), "{run_id}");

    let mut got = deliveries(&lab).await;
    got.sort_by(|a, b| a.1["channel"].as_str().cmp(&b.1["channel"].as_str()));
    let receiver_url = receiver.url.split('?').next().unwrap().to_string();
    assert_eq!(
        got,
        vec![
            (
                "NotificationDelivered".to_string(),
                json!({"event": "deletions_held", "channel": "command",
                       "receiver": hook.display().to_string(), "attempts": 1})
            ),
            (
                "NotificationDelivered".to_string(),
                json!({"event": "deletions_held", "channel": "webhook",
                       "receiver": receiver_url, "attempts": 1})
            ),
        ]
    );
    let r = lab.cli(&["log", "verify"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cycles_alert_after_failures_before_alert_and_failing_receivers_are_recorded() {
    let receiver = Receiver::start(StatusCode::INTERNAL_SERVER_ERROR).await;
    let lab = E2e::ldap(1, "500\ninterval = \"300ms\"").await;
    break_target(&lab);
    configure(
        &lab,
        &format!(
            "[notify]\nwebhook_url = \"{}\"\nwebhook_secret_env = \"DIRSYNC_TEST_WEBHOOK_SECRET\"\n\
             command = [\"sh\", \"-c\", \"cat > /dev/null; exit 3\"]\n\
             failures_before_alert = 2\ntimeout = \"3s\"\n",
            receiver.url
        ),
    );
    let run = spawn_run(&lab);
    until(30, "both outcomes recorded", || async {
        deliveries(&lab).await.len() == 2
    })
    .await;
    // More failed cycles: still one alert for this run of failures.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = receiver.requests();
    assert!(requests.len() >= 2, "retried: {}", requests.len());
    let bodies: std::collections::BTreeSet<&Bytes> = requests.iter().map(|(_, b)| b).collect();
    assert_eq!(bodies.len(), 1, "every attempt sends the same notification");
    let v: Value = serde_json::from_slice(&requests[0].1).unwrap();
    assert_eq!(v["event"], "sync_failed");
    assert_eq!(v["details"]["failures_in_row"], 2);
    assert_eq!(v["details"]["reason"], "target");
    assert_eq!(v["details"]["exit"], 1);
    assert!(
        v["details"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("target: ")),
        "{v}"
    );
    let mut got = deliveries(&lab).await;
    assert_eq!(got.len(), 2, "{got:?}");
    got.sort_by(|a, b| a.1["channel"].as_str().cmp(&b.1["channel"].as_str()));
    let command_attempts = got[0].1["attempts"].as_u64().unwrap();
    assert!(command_attempts >= 2, "the command is retried: {got:?}");
    let receiver_url = receiver.url.split('?').next().unwrap().to_string();
    assert_eq!(
        got,
        vec![
            (
                "NotificationFailed".to_string(),
                json!({"event": "sync_failed", "channel": "command", "receiver": "sh",
                       "attempts": command_attempts, "error": {"exit": {"code": 3}}})
            ),
            (
                "NotificationFailed".to_string(),
                json!({"event": "sync_failed", "channel": "webhook", "receiver": receiver_url,
                       "attempts": requests.len(), "error": {"http": {"status": 500}}})
            ),
        ]
    );
    let log = lab.cli(&["log", "show", "--format", "json"]);
    assert!(
        !log.stdout.contains("query-secret") && !log.stdout.contains(SECRET),
        "neither the URL's query nor the secret reach the log"
    );
    let mut run = run;
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "the service keeps going"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_and_a_hanging_hook_do_not_hold_up_cycles() {
    let (url, _silent) = silent_receiver();
    let lab = E2e::ldap(4, "1\ninterval = \"300ms\"").await;
    let pidfile = lab.dir.path().join("hook.pid");
    configure(
        &lab,
        &format!(
            "[notify]\nwebhook_url = \"{url}\"\n\
             command = [\"sh\", \"-c\", \"echo $$ > {}; sleep 300\"]\ntimeout = \"10s\"\n",
            pidfile.display()
        ),
    );
    let _run = spawn_run(&lab);
    until(30, "the first cycle", || async {
        lab.view.count("Users").await == 4
    })
    .await;
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    lab.slapd().ldapmodify(&delete_users(&[3, 4])).await;
    until(30, "the hold", || async {
        !lab.state().await.control.guard.plans.is_empty()
    })
    .await;
    until(10, "the hook to start", || async { pidfile.exists() }).await;
    // While both receivers hang, cycles go on: the approved deletions and a change are
    // exported at once.
    let t = Instant::now();
    let plan = lab
        .state()
        .await
        .control
        .guard
        .plans
        .keys()
        .next()
        .unwrap()
        .clone();
    let r = lab.cli(&["deletions", "approve", "--plan", &plan]);
    assert_eq!(r.code, 0, "{r:?}");
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    until(30, "the change to be exported", || async {
        let users = lab.view.users_by_anchor().await;
        users.len() == 2 && users[&a1]["title"] == "Boss"
    })
    .await;
    assert!(deliveries(&lab).await.is_empty(), "still hanging");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    until(20, "both given up on", || async {
        deliveries(&lab).await.len() == 2
    })
    .await;
    let mut got = deliveries(&lab).await;
    got.sort_by(|a, b| a.1["channel"].as_str().cmp(&b.1["channel"].as_str()));
    assert_eq!(
        got,
        vec![
            (
                "NotificationFailed".to_string(),
                json!({"event": "deletions_held", "channel": "command", "receiver": "sh",
                       "attempts": 1, "error": "killed"})
            ),
            (
                "NotificationFailed".to_string(),
                json!({"event": "deletions_held", "channel": "webhook", "receiver": url,
                       "attempts": 1, "error": "timeout"})
            ),
        ]
    );
    // The hook's whole process group is gone (sh and its sleep; a killed orphan may stay
    // a zombie until init reaps it).
    let pgid: i64 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        live_members(pgid),
        Vec::<String>::new(),
        "the hung hook's process group {pgid} was killed"
    );
}

/// Processes of process group `pgid` that are not zombies: their /proc stat lines.
fn live_members(pgid: i64) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // proc(5): fields after the command's ')': state (3), ppid (4), pgrp (5).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[2].parse::<i64>().ok() == Some(pgid) && f[0] != "Z" {
            out.push(stat.trim().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_recorded_and_a_missing_secret_is_bad_configuration() {
    let lab = E2e::ldap(1, "500\ninterval = \"300ms\"").await;
    break_target(&lab);
    configure(
        &lab,
        "[notify]\ncommand = \"/nonexistent/dirsync-alert\"\nfailures_before_alert = 1\n",
    );
    let run = spawn_run(&lab);
    until(30, "the outcome recorded", || async {
        !deliveries(&lab).await.is_empty()
    })
    .await;
    drop(run);
    assert_eq!(
        deliveries(&lab).await,
        vec![(
            "NotificationFailed".to_string(),
            json!({"event": "sync_failed", "channel": "command",
                   "receiver": "/nonexistent/dirsync-alert", "attempts": 1,
                   "error": "not_found"})
        )]
    );

    // A webhook secret whose variable is unset: one line, exit 2, nothing written.
    configure(
        &lab,
        "webhook_url = \"http://127.0.0.1:1/hook\"\nwebhook_secret_env = \"DIRSYNC_TEST_UNSET_SECRET\"\n",
    );
    let head = lab.head().await;
    for args in [
        &["run", "--instance", "a"][..],
        &["sync", "--instance", "a"][..],
        &["handover", "--from", "a", "--to", "b"][..],
    ] {
        let out = Command::new(bin())
            .args(args)
            .current_dir(lab.dir.path())
            .env_remove("DIRSYNC_CONFIG")
            .env_remove("DIRSYNC_TEST_UNSET_SECRET")
            .output()
            .unwrap();
        let r: crate::common::Run = out.into();
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert_eq!(
            r.stderr,
            "dirsync: configuration: notify.webhook_secret: environment variable \
             DIRSYNC_TEST_UNSET_SECRET is not set\n",
            "{args:?}"
        );
    }
    assert_eq!(lab.head().await, head, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_missed_deletions_and_handovers_are_told() {
    let receiver = Receiver::start(StatusCode::OK).await;
    let lab = E2e::ldap(4, "500\ninterval = \"300ms\"\nlease = \"3s\"").await;
    configure(
        &lab,
        &format!(
            "[notify]\nwebhook_url = \"{}\"\ntimeout = \"5s\"\n",
            receiver.url
        ),
    );
    let mut run = spawn_run(&lab);
    until(30, "the first cycle", || async {
        lab.view.count("Users").await == 4
    })
    .await;
    // b takes over: a's next cycle is fenced, it says so and its service exits 4.
    let r = lab.cli(&["sync", "--instance", "b", "--take-over"]);
    assert_eq!(r.code, 0, "{r:?}");
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "a fenced service kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(4));

    // A deletion no sync will export (the holder is stopped): the audit (fresh import by
    // b) finds it missed.
    let a4 = lab.anchor(&format!("uid=u4,{PEOPLE}")).await;
    lab.slapd().ldapdelete(&format!("uid=u4,{PEOPLE}")).await;
    assert_eq!(lab.cli(&["instance", "stop", "b"]).code, 0);
    let r = lab.cli(&[
        "audit",
        "missed-deletes",
        "--refresh",
        "--instance",
        "b",
        "--fail-if-any",
    ]);
    assert_eq!(r.code, 5, "{r:?}");
    let seq_after_audit = lab.head().await;
    assert_eq!(lab.cli(&["instance", "start", "b"]).code, 0);

    // The same computer reinstalled: a handover that completes.
    let playbook =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/reinstall.toml");
    let r = lab.cli(&[
        "handover",
        "--from",
        "b",
        "--to",
        "b",
        "--playbook",
        playbook.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let h: Value = serde_json::from_str(&r.stdout).unwrap();
    // And one that fails: the target is unreachable.
    break_target(&lab);
    let r = lab.cli(&[
        "handover",
        "--from",
        "b",
        "--to",
        "c",
        "--playbook",
        playbook.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");

    let state = lab.state().await;
    let bodies: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|(headers, body)| {
            assert!(
                headers.get("x-dirsync-signature").is_none(),
                "no secret: unsigned"
            );
            let mut v: Value = serde_json::from_slice(body).unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).is_ok());
            v["at"] = json!("AT");
            v
        })
        .collect();
    assert_eq!(bodies.len(), 4, "{bodies:#?}");
    let handover_error = bodies[3]["details"]["error"].as_str().unwrap_or_default();
    assert!(handover_error.starts_with("target: "), "{handover_error}");
    let fenced_error = bodies[0]["details"]["error"].as_str().unwrap_or_default();
    assert!(
        fenced_error.starts_with("fenced: b holds the sync relationship (epoch 2)"),
        "{fenced_error}"
    );
    assert_eq!(
        bodies,
        vec![
            json!({"event": "fenced", "instance": "a", "at": "AT",
                   "details": {"holder": "b", "epoch": 2, "error": fenced_error}}),
            json!({"event": "missed_deletions_found", "instance": "b", "at": "AT",
                   "details": {"count": 1, "pending": 0, "seq": bodies[1]["details"]["seq"],
                               "evidence": "full-import", "anchors": [a4]}}),
            json!({"event": "handover_completed", "instance": "b", "at": "AT",
                   "details": {"handover_id": h["handover_id"], "from": "b", "to": "b",
                               "playbook": h["playbook"], "summary": h["summary"]}}),
            json!({"event": "handover_failed", "instance": "c", "at": "AT",
                   "details": {"from": "b", "to": "c", "error": handover_error, "exit": 1}}),
        ]
    );
    let seq = bodies[1]["details"]["seq"].as_u64().unwrap();
    assert!(seq > 0 && seq <= seq_after_audit, "{seq}");
    // Recorded: the service's and the handover's; the audit records nothing of its own.
    let got: Vec<(String, Value)> = deliveries(&lab).await;
    assert_eq!(
        got,
        vec![
            (
                "NotificationDelivered".to_string(),
                json!({"event": "fenced", "channel": "webhook",
                       "receiver": receiver.url.split('?').next().unwrap(), "attempts": 1})
            ),
            (
                "NotificationDelivered".to_string(),
                json!({"event": "handover_completed", "channel": "webhook",
                       "receiver": receiver.url.split('?').next().unwrap(), "attempts": 1})
            ),
            (
                "NotificationDelivered".to_string(),
                json!({"event": "handover_failed", "channel": "webhook",
                       "receiver": receiver.url.split('?').next().unwrap(), "attempts": 1})
            ),
        ]
    );
    assert!(state.control.handovers.last.is_some());
}

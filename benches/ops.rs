//! `scripts/bench ops`: what metrics and notifications cost a cycle of `dirsync run`.
//!
//! slapd (session log) loaded with N users by slapadd, scim2-server as the target, one
//! SQLite store; a first full `sync` exports them all. Then two configurations of the same
//! binary alternate over R rounds (A first in odd rounds, B first in even ones), each a
//! `dirsync run --instance bench` process of 1 + C cycles (`[sync] interval = "2s"`):
//!
//! * A: no `--listen`, no `[notify]`;
//! * B: `--listen 127.0.0.1:PORT`, scraped at `/metrics` every 100 ms by this process, and
//!   `[notify]` with a signed webhook (a receiver here that checks the signature and answers
//!   200) and a command hook (`sh -c` that reads the body and counts itself in a file).
//!
//! Before every cycle the bench changes K users' title and deletes one more user in the
//! source. `deletion_threshold = 0` holds every deletion, so each cycle holds a list it has
//! not held before: the one thing that makes `run` notify on a healthy cycle
//! (`deletions_held`), in B once per cycle on both channels. Both configurations do the
//! same work apart from metrics and notifications.
//!
//! A cycle's time is its own, from the log: `SyncRunStarted` to `SyncRunCompleted`
//! (recorded times). "Outside" is what the service loop adds around it: from
//! `SyncRunCompleted` to the next `SyncRunStarted`, less the 2 s interval (metrics updated,
//! notifications queued, the state refreshed, the nap's rounding). The first cycle of
//! each process is a warm-up, not counted. Each counted cycle must have exported the K
//! updates; B must have had every notification delivered to both channels and its scrapes
//! answered, or the bench fails. Goal: median cycle B/A <= 1.05.
//!
//! Usage: `cargo bench --bench ops -- [--users N] [--rounds R] [--cycles C] [--changes K]`
//! (defaults 5,000, 5, 5, 100).

mod common;
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use common::{arg, load_average, median};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use dirsync::log::{AnyStore, OpenMode, Store};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const INSTANCE: &str = "bench";
const SECRET_ENV: &str = "DIRSYNC_BENCH_WEBHOOK_SECRET";
const SECRET: &str = "ops-bench-secret";
/// `[sync] interval`: room for the next cycle's ldapmodify on a loaded machine, so that each
/// cycle sees exactly its changes.
const INTERVAL_S: u64 = 2;
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// No `--listen`, no `[notify]`.
    A,
    /// `--listen` scraped, `[notify]` webhook and command.
    B,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::A => "A",
            Setup::B => "B",
        }
    }
}

/// Webhook deliveries received: signature right, and wrong.
#[derive(Default)]
struct Received {
    good: AtomicU64,
    bad: AtomicU64,
}

fn signature(body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// The loopback webhook receiver: counts deliveries, answers 200. Its URL.
async fn receiver(got: Arc<Received>) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            async move {
                let signed = headers
                    .get("x-dirsync-signature")
                    .and_then(|v| v.to_str().ok())
                    == Some(signature(&body).as_str());
                let event = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["event"].as_str().map(str::to_string));
                if signed && event.as_deref() == Some("deletions_held") {
                    got.good.fetch_add(1, Ordering::SeqCst);
                } else {
                    got.bad.fetch_add(1, Ordering::SeqCst);
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let url = format!(
        "http://{}/hook",
        listener.local_addr().expect("receiver address")
    );
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("receiver");
    });
    url
}

/// `GET /metrics` every 100 ms until `stop`: (answered 200 with dirsync's metrics, attempts).
async fn scrape(url: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let client = reqwest::Client::new();
    let (mut ok, mut tried) = (0, 0);
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        tried += 1;
        if let Ok(r) = client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            if r.status() == 200
                && r.text()
                    .await
                    .is_ok_and(|t| t.contains("dirsync_sync_runs_total"))
            {
                ok += 1;
            }
        }
    }
    (ok, tried)
}

/// The lab: source, target, store folder and the two configurations.
struct Lab {
    slapd: lab::Slapd,
    _scim: lab::Scim,
    dir: tempfile::TempDir,
    users: u64,
    changes: u64,
    /// Users deleted so far (from the top: user{N-1}, user{N-2}, ...).
    deleted: u64,
    /// Cycles' changes made so far (each a new title).
    batches: u64,
    hook_count: PathBuf,
}

impl Lab {
    fn store_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("log.db").display())
    }

    fn config(&self, setup: Setup) -> PathBuf {
        self.dir.path().join(format!("{}.toml", setup.name()))
    }

    /// K users' new title and one more user deleted, in one ldapmodify.
    async fn change(&mut self) {
        self.batches += 1;
        let people = self.slapd.people_dn();
        let mut ldif = String::new();
        for j in 0..self.changes {
            ldif.push_str(&format!(
                "dn: uid=user{j},{people}\nchangetype: modify\nreplace: title\ntitle: Boss {} {j}\n\n",
                self.batches
            ));
        }
        let victim = self.users - 1 - self.deleted;
        assert!(victim >= self.changes, "more cycles than users to delete");
        ldif.push_str(&format!(
            "dn: uid=user{victim},{people}\nchangetype: delete\n\n"
        ));
        self.deleted += 1;
        self.slapd.ldapmodify(&ldif).await;
    }
}

async fn setup(users: u64, changes: u64, webhook: &str) -> Lab {
    let t = Instant::now();
    let slapd = common::slapd_with_users(users, "").await;
    let scim = lab::Scim::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("pw"), slapd.password()).expect("pw");
    std::fs::write(d.join("token"), scim.token()).expect("token");
    let hook_count = d.join("hook.count");
    let base = format!(
        "[store]\nurl = \"sqlite://{store}\"\n\
         [source]\nkind = \"openldap\"\nurl = \"{url}\"\nbind_dn = \"{bind}\"\nbase_dn = \"{base}\"\n\
         password_file = \"{pw}\"\n\
         [target]\nkind = \"scim\"\nurl = \"{scim}\"\ntoken_file = \"{token}\"\n\
         [sync]\ninterval = \"{INTERVAL_S}s\"\ndeletion_threshold = 0\n",
        store = d.join("log.db").display(),
        url = slapd.url(),
        bind = slapd.bind_dn(),
        base = slapd.base_dn(),
        pw = d.join("pw").display(),
        scim = scim.base_url(),
        token = d.join("token").display(),
    );
    let lab = Lab {
        slapd,
        _scim: scim,
        dir,
        users,
        changes,
        deleted: 0,
        batches: 0,
        hook_count,
    };
    std::fs::write(lab.config(Setup::A), &base).expect("config A");
    std::fs::write(
        lab.config(Setup::B),
        format!(
            "{base}[notify]\nwebhook_url = \"{webhook}\"\nwebhook_secret_env = \"{SECRET_ENV}\"\n\
             command = [\"sh\", \"-c\", \"cat > /dev/null; echo >> {}\"]\n",
            lab.hook_count.display()
        ),
    )
    .expect("config B");
    dirsync(&lab, &["init"]);
    eprintln!(
        "slapd with {users} users by slapadd: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let report = dirsync(&lab, &["sync", "--instance", INSTANCE, "--format", "json"]);
    let created = report["created"].as_u64();
    assert_eq!(created, Some(users), "the first sync: {report}");
    eprintln!(
        "first full sync, {users} users created: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    lab
}

/// `dirsync --config A.toml ARGS` (must exit 0): its JSON output, if any.
fn dirsync(lab: &Lab, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirsync"))
        .arg("--config")
        .arg(lab.config(Setup::A))
        .args(args)
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .output()
        .expect("run dirsync");
    assert!(
        out.status.success(),
        "dirsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// One counted cycle, from the log.
struct Cycle {
    secs: f64,
    /// To the next cycle's start less the cycle and the interval: the service loop around
    /// the cycle (none for the process's last).
    outside: Option<f64>,
}

/// One `dirsync run` process of 1 + `cycles` cycles.
struct Process {
    setup: Setup,
    cycles: Vec<Cycle>,
    webhook: u64,
    hooks: u64,
    scrapes: u64,
    scrape_attempts: u64,
}

fn hook_lines(lab: &Lab) -> u64 {
    std::fs::read_to_string(&lab.hook_count)
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}

async fn run_process(lab: &mut Lab, setup: Setup, cycles: u64, got: &Received) -> Process {
    let store = AnyStore::open(&lab.store_url(), OpenMode::Existing)
        .await
        .expect("open the store");
    let (head, _) = store.head().await.expect("head");
    drop(store);
    let (webhook_before, hooks_before) = (got.good.load(Ordering::SeqCst), hook_lines(lab));
    lab.change().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dirsync"));
    cmd.arg("--config")
        .arg(lab.config(setup))
        .args(["run", "--instance", INSTANCE])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let stop = Arc::new(AtomicBool::new(false));
    let mut scraper = None;
    if setup == Setup::B {
        let addr = format!("127.0.0.1:{}", lab::proc::free_port());
        cmd.args(["--listen", &addr]).env(SECRET_ENV, SECRET);
        scraper = Some(tokio::spawn(scrape(
            format!("http://{addr}/metrics"),
            stop.clone(),
        )));
    }
    let mut child = cmd.spawn().expect("spawn dirsync run");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut run_ids = Vec::new();
    while let Some(line) = lines.next_line().await.expect("read run's stderr") {
        // "dirsync run: TIME sync RUN_ID: delta import, created ..."
        let Some(rest) = line
            .split_once(" sync ")
            .map(|(_, r)| r)
            .filter(|_| line.starts_with("dirsync run: "))
        else {
            // Warnings; not the service's own lines ("terminated: exiting").
            if !line.starts_with("dirsync run: ") {
                eprintln!("  {line}");
            }
            continue;
        };
        assert!(!rest.starts_with("failed"), "a cycle failed: {line}");
        let run_id = rest.split(':').next().unwrap_or_default().to_string();
        run_ids.push(run_id);
        if run_ids.len() as u64 > cycles {
            let pid = child.id().expect("run's pid") as i32;
            // SAFETY: a signal to the child this process spawned and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        } else {
            lab.change().await;
        }
    }
    let status = child.wait().await.expect("wait for run");
    stop.store(true, Ordering::SeqCst);
    let (scrapes, scrape_attempts) = match scraper {
        Some(s) => s.await.expect("scraper"),
        None => (0, 0),
    };
    assert!(status.success(), "dirsync run ({}): {status}", setup.name());
    assert_eq!(run_ids.len() as u64, cycles + 1, "cycles of the process");

    // Each cycle's start and end as the log recorded them.
    let store = AnyStore::open(&lab.store_url(), OpenMode::Existing)
        .await
        .expect("open the store");
    let mut at: BTreeMap<String, (Option<i64>, Option<i64>, Value)> = BTreeMap::new();
    let mut after = head;
    loop {
        let events = store.read(after, 10_000).await.expect("read the log");
        let Some(last) = events.last() else { break };
        after = last.seq;
        for e in &events {
            let started = e.event_type == "SyncRunStarted";
            if !started && e.event_type != "SyncRunCompleted" {
                continue;
            }
            let p: Value = serde_json::from_str(&e.payload).expect("payload");
            let id = p["run_id"].as_str().expect("run_id").to_string();
            let slot = at.entry(id).or_insert((None, None, Value::Null));
            if started {
                slot.0 = Some(e.recorded_at_us);
            } else {
                slot.1 = Some(e.recorded_at_us);
                slot.2 = p;
            }
        }
    }
    let times: Vec<(i64, i64, &Value)> = run_ids
        .iter()
        .map(|id| match at.get(id) {
            Some((Some(s), Some(c), p)) => (*s, *c, p),
            _ => panic!("run {id}: no SyncRunStarted and SyncRunCompleted in the log"),
        })
        .collect();
    let mut counted = Vec::new();
    for (i, (s, c, p)) in times.iter().enumerate().skip(1) {
        assert_eq!(
            p["updated"].as_u64(),
            Some(lab.changes),
            "cycle {i} of {}: the {} changes exported: {p}",
            setup.name(),
            lab.changes
        );
        assert!(p["held"].as_u64().unwrap_or(0) > 0, "deletions held: {p}");
        counted.push(Cycle {
            secs: (c - s) as f64 / 1e6,
            outside: times
                .get(i + 1)
                .map(|n| (n.0 - c) as f64 / 1e6 - INTERVAL_S as f64),
        });
    }
    Process {
        setup,
        cycles: counted,
        webhook: got.good.load(Ordering::SeqCst) - webhook_before,
        hooks: hook_lines(lab) - hooks_before,
        scrapes,
        scrape_attempts,
    }
}

fn secs(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{s:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users", 5_000).max(2);
    let rounds = arg(&args, "--rounds", 5).max(1);
    let cycles = arg(&args, "--cycles", 5).max(2);
    // Users 0..K change; deletions come from the top and must not reach them.
    let changes = arg(&args, "--changes", 100).min(users / 2);
    let got = Arc::new(Received::default());
    let webhook = receiver(got.clone()).await;
    let mut lab = setup(users, changes, &webhook).await;

    println!(
        "\nops: slapd {users} users -> scim2-server; per cycle {changes} title changes and 1 more \
         deletion held; {cycles} cycles counted per process (+1 warm-up), interval {INTERVAL_S} s"
    );
    println!("A = run; B = run --listen (scraped every 100 ms) + [notify] webhook and command");
    println!(
        "round  setup  median cycle s  median outside s  webhook  hook  scrapes   load(1 5 15)  cycles s"
    );
    let mut all: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut notified = (0, 0, 0);
    // B/A of each round's medians: how much the ratio moves from round to round (noise).
    let mut per_round = Vec::new();
    for round in 1..=rounds {
        let mut medians = BTreeMap::new();
        let order = if round % 2 == 1 {
            [Setup::A, Setup::B]
        } else {
            [Setup::B, Setup::A]
        };
        for setup in order {
            let p = run_process(&mut lab, setup, cycles, &got).await;
            let c: Vec<f64> = p.cycles.iter().map(|c| c.secs).collect();
            let out: Vec<f64> = p.cycles.iter().filter_map(|c| c.outside).collect();
            let cycles_run = cycles + 1;
            if setup == Setup::B {
                // Every cycle held a new list: one notification per cycle, on both channels,
                // delivered before `run` exits (it waits for its queue on SIGTERM).
                assert_eq!(p.webhook, cycles_run, "webhook deliveries");
                assert_eq!(p.hooks, cycles_run, "command hook runs");
                assert!(p.scrapes > 0, "no scrape of /metrics succeeded");
                notified.0 += p.webhook;
                notified.1 += p.hooks;
                notified.2 += p.scrapes;
            } else {
                assert_eq!(
                    (p.webhook, p.hooks, p.scrapes),
                    (0, 0, 0),
                    "A notifies nothing"
                );
            }
            let (w, h, s) = if setup == Setup::B {
                (
                    p.webhook.to_string(),
                    p.hooks.to_string(),
                    format!("{}/{}", p.scrapes, p.scrape_attempts),
                )
            } else {
                ("-".into(), "-".into(), "-".into())
            };
            println!(
                "{round:<6} {:<6} {:<15.3} {:<16.3} {w:<8} {h:<5} {s:<9} {:<13} {}",
                p.setup.name(),
                median(&c),
                median(&out),
                load_average(),
                secs(&c)
            );
            println!(
                "{}",
                json!({"bench": "ops", "round": round, "setup": p.setup.name(), "users": users,
                    "changes": changes, "cycles_s": c, "outside_s": out,
                    "webhook_deliveries": p.webhook, "hook_runs": p.hooks,
                    "scrapes_ok": p.scrapes, "scrapes_tried": p.scrape_attempts, "load": load_average()})
            );
            medians.insert(setup.name(), median(&c));
            let e = all.entry(setup.name()).or_default();
            e.0.extend(c);
            e.1.extend(out);
        }
        per_round.push(medians["B"] / medians["A"]);
    }
    assert_eq!(
        got.bad.load(Ordering::SeqCst),
        0,
        "webhook deliveries unsigned or unexpected"
    );
    let (a, b) = (&all["A"], &all["B"]);
    let (ca, cb) = (median(&a.0), median(&b.0));
    let (oa, ob) = (median(&a.1), median(&b.1));
    println!(
        "all    A: {} cycles, median {ca:.3} s, outside {oa:.3} s; B: {} cycles, median {cb:.3} s, \
         outside {ob:.3} s",
        a.0.len(),
        b.0.len()
    );
    println!(
        "B notified {} times by webhook (signature checked) and {} by command; \
         {} scrapes answered",
        notified.0, notified.1, notified.2
    );
    println!(
        "B/A of each round's medians: {} (median {:.3})",
        per_round
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        median(&per_round)
    );
    println!(
        "B/A cycle {:.3} (goal: <= 1.05, within noise); outside the cycle B - A {:+.1} ms",
        cb / ca,
        (ob - oa) * 1e3
    );
    println!(
        "{}",
        json!({"bench": "ops", "users": users, "rounds": rounds, "changes": changes,
            "cycles_per_process": cycles, "a_median_s": ca, "b_median_s": cb, "ratio": cb / ca,
            "a_outside_s": oa, "b_outside_s": ob, "round_ratios": per_round,
            "webhook_deliveries": notified.0, "hook_runs": notified.1,
            "scrapes_ok": notified.2, "load": load_average()})
    );
}

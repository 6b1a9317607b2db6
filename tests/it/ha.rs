//! High availability (issue 23): a holder and standbys (`dirsync run --standby`) on one
//! PostgreSQL store, against slapd and scim2-server. Short durations: heartbeat 1 s,
//! failover_after 5 s, lease 3 s. Every wait is a bounded poll for a condition.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dirsync::log::event::{Event, FailoverStarted, InstanceFenced};
use dirsync::log::{AnyStore, OpenMode, Store};
use dirsync::project::{replay, State};
use serde_json::{json, Value};

use crate::common::{bin, dirsync, Run};
use crate::lab::proc::free_port;
use crate::lab::{self, ProxyRules, ScimProxy};
use crate::sync_export::{ldap_user, E2e};

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const HA: &str = "[ha]\nheartbeat = \"1s\"\nfailover_after = \"5s\"\n";

/// A lab whose store is a fresh PostgreSQL database shared by every service.
struct Ha {
    lab: E2e,
    url: String,
}

/// A `dirsync run` of the test, killed when dropped; its stderr goes to `NAME.log`.
struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child, by its pid.
        unsafe { libc::kill(self.pid(), sig) };
    }
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Wait (bounded) for it to exit; its exit code.
    async fn exit_code(&mut self, secs: u64) -> Option<i32> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < end, "{} did not exit", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ha {
    /// slapd with u1..u`users` (groups team and crew: u1, u2), `sync` keys added to [sync].
    async fn new(users: u32, sync: &str) -> Ha {
        let lab = E2e::ldap(users, &format!("500\nlease = \"3s\"\n{sync}")).await;
        let url = lab::pg_database().await;
        let path = lab.dir.path().join("dirsync.toml");
        let toml = std::fs::read_to_string(&path)
            .unwrap()
            .replace("url = \"sqlite://log.db\"", &format!("url = \"{url}\""));
        std::fs::write(&path, format!("{toml}{HA}")).unwrap();
        let run = lab.cli(&["init"]);
        assert_eq!(run.code, 0, "{run:?}");
        Ha { lab, url }
    }

    /// [`Ha::new`] with the lab's SQLite store (one file, every service on this host).
    async fn sqlite(users: u32, sync: &str) -> Ha {
        let lab = E2e::ldap(users, &format!("500\nlease = \"3s\"\n{sync}")).await;
        let path = lab.dir.path().join("dirsync.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        assert!(toml.contains("url = \"sqlite://log.db\""), "{toml}");
        std::fs::write(&path, format!("{toml}{HA}")).unwrap();
        let run = lab.cli(&["init"]);
        assert_eq!(run.code, 0, "{run:?}");
        let url = format!("sqlite://{}", lab.dir.path().join("log.db").display());
        Ha { lab, url }
    }

    fn spawn_with(&self, name: &str, config: &str, standby: bool) -> Service {
        self.spawn_args(name, config, standby, &[])
    }

    fn spawn_args(&self, name: &str, config: &str, standby: bool, extra: &[&str]) -> Service {
        let log = self.lab.dir.path().join(format!("{name}.log"));
        let mut args = vec!["--config", config, "run", "--instance", name];
        if standby {
            args.push("--standby");
        }
        args.extend_from_slice(extra);
        let child = Command::new(bin())
            .args(&args)
            .current_dir(self.lab.dir.path())
            .env_remove("DIRSYNC_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Service {
            name: name.into(),
            child,
            log,
        }
    }

    fn spawn(&self, name: &str, standby: bool) -> Service {
        self.spawn_with(name, "dirsync.toml", standby)
    }

    fn cli(&self, args: &[&str]) -> Run {
        dirsync(self.lab.dir.path(), args)
    }

    async fn store(&self) -> AnyStore {
        AnyStore::open(&self.url, OpenMode::Existing).await.unwrap()
    }

    async fn state(&self) -> State {
        std::sync::Arc::unwrap_or_clone(replay::current(&self.store().await).await.unwrap())
    }

    async fn head(&self) -> u64 {
        self.store().await.head().await.unwrap().0
    }

    /// (seq, instance, event) of every event.
    async fn events(&self) -> Vec<(u64, String, Event)> {
        self.store()
            .await
            .read(0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                let ev = e.decode().unwrap();
                (e.seq, e.instance, ev)
            })
            .collect()
    }

    async fn failovers(&self) -> Vec<FailoverStarted> {
        self.events()
            .await
            .into_iter()
            .filter_map(|(_, _, e)| match e {
                Event::FailoverStarted(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    /// The users in the target by userName, sorted, duplicates kept.
    async fn user_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .lab
            .view
            .all("Users")
            .await
            .iter()
            .map(|u| u["userName"].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    }

    /// Each group's displayName and its members' count, as the target has them.
    async fn groups(&self) -> BTreeMap<String, usize> {
        self.lab
            .view
            .all("Groups")
            .await
            .iter()
            .map(|g| {
                (
                    g["displayName"].as_str().unwrap_or_default().to_string(),
                    g["members"].as_array().map_or(0, Vec::len),
                )
            })
            .collect()
    }

    /// Wait (bounded) until the target holds exactly `users` and the two groups.
    async fn until_exact(&self, users: &[u32], secs: u64, services: &[&Service]) {
        let mut want: Vec<String> = users.iter().map(|i| format!("u{i}@example.org")).collect();
        want.sort();
        let groups = BTreeMap::from([("crew".to_string(), 2), ("team".to_string(), 2)]);
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let (got, g) = (self.user_names().await, self.groups().await);
            if got == want && g == groups {
                return;
            }
            if Instant::now() >= end {
                let logs: Vec<String> = services
                    .iter()
                    .map(|s| format!("--- {}\n{}", s.name, s.output()))
                    .collect();
                panic!(
                    "the target never became exact: {} users (want {}), groups {g:?}\n{}",
                    got.len(),
                    want.len(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn heartbeat_role(&self, instance: &str) -> Option<String> {
        self.store()
            .await
            .heartbeats()
            .await
            .unwrap()
            .into_iter()
            .find(|h| h.instance == instance)
            .map(|h| h.role)
    }
}

/// Wait (bounded) until `f` holds.
async fn until<F: AsyncFnMut() -> bool>(secs: u64, what: &str, mut f: F) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delete_users(lab: &E2e, users: std::ops::RangeInclusive<u32>) {
    for i in users {
        lab.slapd().ldapdelete(&format!("uid=u{i},{PEOPLE}")).await;
    }
}

/// Kill -9 the holder in the middle of its first export; delete users while it is dead.
/// One standby takes over (one FailoverStarted, from a), the target ends exactly equal to
/// the source with no duplicates, the chain verifies, and the other standby stays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_holder_and_catches_its_deletions() {
    let ha = Ha::new(400, "interval = \"2s\"").await;
    // Notifications go to a command that keeps them.
    let cfg = ha.lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{toml}[notify]\ncommand = [\"sh\", \"-c\", \"cat >> notes.jsonl; echo >> notes.jsonl\"]\n"),
    )
    .unwrap();
    let mut a = ha.spawn("a", false);
    let ports = [free_port(), free_port()];
    let listen = ports.map(|p| format!("127.0.0.1:{p}"));
    let mut b = ha.spawn_args("b", "dirsync.toml", true, &["--listen", &listen[0]]);
    let mut c = ha.spawn_args("c", "dirsync.toml", true, &["--listen", &listen[1]]);
    // Mid-export: some users are in the target (the 400 take several chunks).
    until(60, "a's export to begin", async || {
        ha.lab.view.count("Users").await >= 100
    })
    .await;
    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    assert_eq!(a.exit_code(10).await, None, "killed by a signal");
    let exported_by_a = ha.lab.view.count("Users").await;
    delete_users(&ha.lab, 390..=400).await;

    let survivors: Vec<u32> = (1..=389).collect();
    ha.until_exact(&survivors, 120, &[&a, &b, &c]).await;
    let took = killed.elapsed();
    eprintln!(
        "exact {:.1}s after the kill (a had exported {exported_by_a} of 400 users)",
        took.as_secs_f64()
    );

    let failovers = ha.failovers().await;
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    let f = &failovers[0];
    assert_eq!(f.old, "a");
    let winner = f.new.clone();
    assert!(winner == "b" || winner == "c", "{f:?}");
    let state = ha.state().await;
    assert_eq!(
        state.control.relationship.holder.as_deref(),
        Some(winner.as_str())
    );
    assert_eq!(state.control.relationship.epoch, f.epoch);
    assert_eq!(f.epoch, 2, "a's epoch 1, then the winner's: one bump");
    // The failover playbook completed, recorded as a handover from a.
    until(30, "the failover playbook completes", async || {
        let s = ha.state().await;
        s.control
            .handovers
            .handovers
            .values()
            .any(|h| h.playbook == "failover" && h.from == "a" && h.completed.is_some())
    })
    .await;
    // The loser still stands by.
    let loser = if winner == "b" { &mut c } else { &mut b };
    assert!(loser.alive(), "{}", loser.output());
    let loser_name = loser.name.clone();
    assert_eq!(
        ha.heartbeat_role(&loser_name).await.as_deref(),
        Some("standby")
    );
    assert_eq!(ha.heartbeat_role(&winner).await.as_deref(), Some("holder"));
    // Nothing exported by the loser, ever.
    let by_loser = ha
        .events()
        .await
        .into_iter()
        .filter(|(_, i, e)| *i == loser_name && matches!(e, Event::ExportBatchStarted(_)))
        .count();
    assert_eq!(by_loser, 0);
    let verify = ha.cli(&["log", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");

    // Operators see it: status (roles, heartbeats, the last failover), handover status,
    // the metrics of both standbys.
    let st = ha.cli(&["status", "--format", "json"]);
    let v: Value = serde_json::from_str(&st.stdout).unwrap_or_else(|_| panic!("{st:?}"));
    let rows: BTreeMap<String, (String, String, bool)> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap().to_string(),
                (
                    i["role"].as_str().unwrap().to_string(),
                    i["heartbeat"]["role"].as_str().unwrap_or("-").to_string(),
                    i["heartbeat"]["silent"].as_bool().unwrap_or(false),
                ),
            )
        })
        .collect();
    let row = |role: &str, beat: &str, silent: bool| (role.to_string(), beat.to_string(), silent);
    assert_eq!(
        rows,
        BTreeMap::from([
            ("a".to_string(), row("standby", "holder", true)),
            (winner.clone(), row("holder", "holder", false)),
            (loser_name.clone(), row("standby", "standby", false)),
        ])
    );
    let last = &v["last_failover"];
    assert_eq!(
        (&last["old"], &last["new"], &last["epoch"], &v["failovers"]),
        (&json!("a"), &json!(winner), &json!(2), &json!(1)),
        "{v}"
    );
    assert!(last["reason"]
        .as_str()
        .unwrap()
        .starts_with("no heartbeat from a for "));
    let hs = ha.cli(&["handover", "status", "--format", "json"]);
    let h: Value = serde_json::from_str(&hs.stdout).unwrap_or_else(|_| panic!("{hs:?}"));
    assert_eq!(
        (&h["playbook"], &h["from"], &h["to"], &h["status"]),
        (
            &json!("failover"),
            &json!("a"),
            &json!(winner),
            &json!("completed")
        ),
        "{h}"
    );
    // The winner told someone: one `failover` notification.
    until(30, "the failover notification", async || {
        std::fs::read_to_string(ha.lab.dir.path().join("notes.jsonl"))
            .is_ok_and(|n| n.contains("\"event\":\"failover\""))
    })
    .await;
    let notes = std::fs::read_to_string(ha.lab.dir.path().join("notes.jsonl")).unwrap_or_default();
    let failover_notes: Vec<Value> = notes
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|n| n["event"] == "failover")
        .map(|mut n| {
            n["at"] = json!("AT");
            n["details"]["last_heartbeat"] = json!(n["details"]["last_heartbeat"].is_string());
            n["details"]["reason"] =
                json!(n["details"]["reason"].as_str() == Some(f.reason.as_str()));
            n
        })
        .collect();
    assert_eq!(
        failover_notes,
        vec![json!({"event": "failover", "instance": winner, "at": "AT",
            "details": {"old": "a", "new": winner, "epoch": 2, "last_heartbeat": true, "reason": true}})]
    );
    for (name, port) in [("b", ports[0]), ("c", ports[1])] {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let won = u8::from(name == winner);
        for line in [
            format!("dirsync_failovers_total{{instance=\"{name}\"}} {won}"),
            format!("dirsync_is_holder{{instance=\"{name}\"}} {won}"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}

/// The same on one SQLite store shared by two services on this host: kill -9 the holder in
/// the middle of its first export, delete users while it is dead; the standby takes over
/// (its file locks free once the holder's process is gone) and the target ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_standby_takes_over_from_a_killed_holder() {
    let ha = Ha::sqlite(300, "interval = \"2s\"").await;
    let mut a = ha.spawn("a", false);
    let b = ha.spawn("b", true);
    until(60, "a's export to begin", async || {
        ha.lab.view.count("Users").await >= 50
    })
    .await;
    a.signal(libc::SIGKILL);
    assert_eq!(a.exit_code(10).await, None, "killed by a signal");
    delete_users(&ha.lab, 291..=300).await;
    ha.until_exact(&(1..=290).collect::<Vec<_>>(), 120, &[&a, &b])
        .await;
    let f = &ha.failovers().await[..];
    assert_eq!(
        f.iter()
            .map(|f| (f.old.as_str(), f.new.as_str(), f.epoch))
            .collect::<Vec<_>>(),
        [("a", "b", 2)]
    );
    until(30, "the failover playbook completes", async || {
        ha.state()
            .await
            .control
            .handovers
            .handovers
            .values()
            .any(|h| h.playbook == "failover" && h.from == "a" && h.completed.is_some())
    })
    .await;
    assert_eq!(ha.heartbeat_role("b").await.as_deref(), Some("holder"));
    let verify = ha.cli(&["log", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// SIGSTOP the holder past failover_after in the middle of an export; a standby takes
/// over; SIGCONT: the paused one sends nothing more, records that it was fenced and
/// stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_sends_nothing_after_a_standby_took_over() {
    let ha = Ha::new(20, "interval = \"1s\"").await;
    // a reaches the target through a proxy that records its requests; b directly.
    let direct = std::fs::read_to_string(ha.lab.dir.path().join("dirsync.toml")).unwrap();
    std::fs::write(ha.lab.dir.path().join("b.toml"), &direct).unwrap();
    let proxy: ScimProxy =
        crate::target_scim_differ::behind_proxy(&ha.lab, ProxyRules::default()).await;
    // a runs as a standby too (fenced, it stands by): nobody holds yet, so a first `sync`
    // by hand makes it the holder, and its service resumes holding.
    let first = ha.cli(&["sync", "--instance", "a"]);
    assert_eq!(first.code, 0, "{first:?}");
    let mut a = ha.spawn("a", true);
    let mut b = ha.spawn_with("b", "b.toml", true);
    ha.until_exact(&(1..=20).collect::<Vec<_>>(), 60, &[&a, &b])
        .await;
    until(30, "a's service holds", async || {
        ha.heartbeat_role("a").await.as_deref() == Some("holder")
    })
    .await;

    // 300 new users: a exports them in chunks; pause it in the middle.
    let mut ldif = String::new();
    for i in 21..=320 {
        ldif.push_str(&ldap_user(i));
    }
    let posts_before = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    ha.lab.slapd().ldapadd(&ldif).await;
    until(60, "a's export of the new users to begin", async || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
            > posts_before + 20
    })
    .await;
    a.signal(libc::SIGSTOP);
    until(60, "b takes over", async || ha.failovers().await.len() == 1).await;
    ha.until_exact(&(1..=320).collect::<Vec<_>>(), 120, &[&a, &b])
        .await;
    let continued = chrono::Utc::now();
    a.signal(libc::SIGCONT);
    until(60, "a finds itself fenced", async || {
        ha.events()
            .await
            .iter()
            .any(|(_, _, e)| matches!(e, Event::InstanceFenced(f) if f.instance == "a"))
    })
    .await;
    let fenced_seen = chrono::Utc::now();
    // A change after the failover reaches the target through b only.
    ha.lab
        .slapd()
        .ldapdelete(&format!("uid=u320,{PEOPLE}"))
        .await;
    ha.until_exact(&(1..=319).collect::<Vec<_>>(), 60, &[&a, &b])
        .await;
    until(30, "a stands by", async || {
        ha.heartbeat_role("a").await.as_deref() == Some("standby")
    })
    .await;
    // The bound the README gives (the window between the lease check and the write): only
    // requests whose check passed before the pause go out after it, at most one per request
    // in flight (the SCIM concurrency, 4), and nothing once a has recorded its fencing.
    // (A late create is a duplicate b's watch removes: the target was exact above.)
    let late: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.at >= continued)
        .map(|r| format!("{} {} at {}", r.method, r.target, r.at))
        .collect();
    assert!(
        late.len() <= 4,
        "a wrote after SIGCONT more than was in flight: {late:?}"
    );
    let after_fenced = proxy
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.at >= fenced_seen)
        .count();
    assert_eq!(after_fenced, 0, "a wrote after it was fenced: {late:?}");
    assert!(a.alive(), "a stands by: {}", a.output());
    assert!(b.alive(), "{}", b.output());
    let fenced: Vec<InstanceFenced> = ha
        .events()
        .await
        .into_iter()
        .filter_map(|(_, _, e)| match e {
            Event::InstanceFenced(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(
        fenced,
        vec![InstanceFenced {
            instance: "a".into(),
            by: "b".into(),
            epoch: 2,
            held: 1,
        }]
    );
    let f = &ha.failovers().await[0];
    assert_eq!((f.old.as_str(), f.new.as_str(), f.epoch), ("a", "b", 2));
    let verify = ha.cli(&["log", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// 30 s of idling with a holder and two standbys cycling every 2 s: heartbeats keep being
/// written, no idle cycle appends anything to the hash-chained log, and status still sees
/// every service's cycles succeed (healthy, the last success an idle cycle, no older than
/// three intervals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idling_with_three_services_does_not_grow_the_log() {
    // A short interval: fifteen cycles of each service in the 30 s, every one idle.
    let ha = Ha::new(3, "interval = \"2s\"").await;
    let a = ha.spawn("a", false);
    let b = ha.spawn("b", true);
    let c = ha.spawn("c", true);
    ha.until_exact(&[1, 2, 3], 60, &[&a, &b, &c]).await;
    // Every service has completed its first cycle (the standbys' imports).
    until(60, "each service's first cycle", async || {
        let s = ha.state().await;
        ["a", "b", "c"].iter().all(|i| {
            s.control
                .instances
                .instances
                .get(*i)
                .is_some_and(|r| r.last_completed.is_some() && r.running.is_none())
        })
    })
    .await;
    let beats = ha.store().await.heartbeats().await.unwrap();
    let head = ha.head().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let grown: Vec<(u64, String, &str)> = ha
        .events()
        .await
        .iter()
        .filter(|(seq, _, _)| *seq > head)
        .map(|(seq, i, e)| (*seq, i.clone(), e.event_type()))
        .collect();
    assert_eq!(grown, Vec::new(), "events appended in 30 s of idling");
    let st = ha.cli(&["status", "--format", "json"]);
    assert_eq!(st.code, 0, "{st:?}");
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    let now = chrono::Utc::now();
    let rows: Vec<(String, bool, bool, bool)> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let at =
                chrono::DateTime::parse_from_rfc3339(i["last_success"]["at"].as_str().unwrap())
                    .unwrap();
            (
                i["instance"].as_str().unwrap().to_string(),
                i["last_success"]["idle"].as_bool().unwrap_or(false),
                i["last_cycle_failed"].as_bool().unwrap(),
                (now - at.with_timezone(&chrono::Utc)).num_seconds() < 6,
            )
        })
        .collect();
    assert_eq!(
        rows,
        ["a", "b", "c"].map(|n| (n.to_string(), true, false, true)),
        "{v}"
    );
    let later = ha.store().await.heartbeats().await.unwrap();
    assert_eq!(later.len(), 3, "{later:?}");
    for (before, after) in beats.iter().zip(&later) {
        assert_eq!(before.instance, after.instance);
        assert!(
            after.at_us >= before.at_us + 20_000_000,
            "{} beat at most once in 20 s of 30: {before:?} {after:?}",
            after.instance
        );
    }
    let roles: Vec<(String, String)> = later
        .iter()
        .map(|h| (h.instance.clone(), h.role.clone()))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("a".into(), "holder".into()),
            ("b".into(), "standby".into()),
            ("c".into(), "standby".into())
        ]
    );
}

/// Two standbys under one instance name: the second is refused; a bad [ha] is refused
/// with exit 2 before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_standby_of_one_name_and_an_unsafe_failover_after_are_refused() {
    let ha = Ha::new(2, "interval = \"1h\"").await;
    let mut b1 = ha.spawn("b", true);
    until(30, "b's first heartbeat", async || {
        ha.heartbeat_role("b").await.is_some()
    })
    .await;
    let mut b2 = ha.spawn("b", true);
    assert_eq!(b2.exit_code(30).await, Some(1), "{}", b2.output());
    assert!(b2.output().contains("already running"), "{}", b2.output());
    assert!(b1.alive(), "{}", b1.output());

    let path = ha.lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("failover_after = \"5s\"", "failover_after = \"4s\"");
    std::fs::write(ha.lab.dir.path().join("bad.toml"), toml).unwrap();
    // b's first staging cycle has ended (it would write beside the refused one).
    until(60, "b's first cycle", async || {
        let s = ha.state().await;
        s.control
            .instances
            .instances
            .get("b")
            .is_some_and(|r| r.last_completed.is_some() && r.running.is_none())
    })
    .await;
    let head = ha.head().await;
    let mut bad = ha.spawn_with("c", "bad.toml", true);
    assert_eq!(bad.exit_code(30).await, Some(2), "{}", bad.output());
    assert!(
        bad.output().contains("ha.failover_after"),
        "{}",
        bad.output()
    );
    assert_eq!(ha.head().await, head, "nothing written");
}

/// A TCP proxy that can cut its connections the way a partition does: bytes stop flowing
/// both ways, the sockets stay open (no reset), and new connections get nowhere.
struct Partition {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn start(upstream: String) -> Partition {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        // Held open, never answered.
                        std::future::pending::<()>().await;
                        drop(down);
                        return;
                    }
                    let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let pump = |mut r: tokio::net::tcp::OwnedReadHalf,
                                mut w: tokio::net::tcp::OwnedWriteHalf,
                                flag: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if flag.load(Ordering::SeqCst) {
                                let _held = (r, w);
                                std::future::pending::<()>().await;
                                return;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let a = tokio::spawn(pump(dr, uw, flag.clone()));
                    let b = tokio::spawn(pump(ur, dw, flag));
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Partition { port, cut, task }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A holder whose link to PostgreSQL is cut in the middle of its export stops exporting
/// (it cannot claim another chunk, and its last claim's lease ends), its heartbeats stop,
/// and a standby takes over and makes the target exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_store_stops_exporting_and_a_standby_takes_over() {
    let ha = Ha::new(400, "interval = \"2s\"").await;
    let direct = std::fs::read_to_string(ha.lab.dir.path().join("dirsync.toml")).unwrap();
    std::fs::write(ha.lab.dir.path().join("b.toml"), &direct).unwrap();
    // a: the store through the partition, the target through a recording proxy.
    let upstream = ha
        .url
        .strip_prefix("postgres://postgres@")
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();
    let partition = Partition::start(upstream.clone()).await;
    let proxy: ScimProxy =
        crate::target_scim_differ::behind_proxy(&ha.lab, ProxyRules::default()).await;
    let a_toml = std::fs::read_to_string(ha.lab.dir.path().join("dirsync.toml"))
        .unwrap()
        .replace(&upstream, &format!("127.0.0.1:{}", partition.port));
    std::fs::write(ha.lab.dir.path().join("a.toml"), a_toml).unwrap();
    let a = ha.spawn_with("a", "a.toml", false);
    let b = ha.spawn_with("b", "b.toml", true);
    until(60, "a's export to begin", async || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
            >= 100
    })
    .await;
    partition.cut();
    let cut_at = chrono::Utc::now();
    // Within failover_after and the lease, or, when the cut caught a in the middle of a
    // transaction, once the server has ended that session (idle in transaction, 10 s).
    let end = Instant::now() + Duration::from_secs(90);
    while ha.failovers().await.len() != 1 {
        assert!(
            Instant::now() < end,
            "b did not take over\n--- a\n{}\n--- b\n{}",
            a.output(),
            b.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "b took over {:.1}s after the cut",
        (chrono::Utc::now() - cut_at).num_milliseconds() as f64 / 1000.0
    );
    ha.until_exact(&(1..=400).collect::<Vec<_>>(), 120, &[&a, &b])
        .await;
    let f = &ha.failovers().await[0];
    assert_eq!((f.old.as_str(), f.new.as_str(), f.epoch), ("a", "b", 2));
    // a's last write went out before its lease (3 s) ended.
    let lease_end = cut_at + chrono::Duration::seconds(3);
    let late: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.at >= lease_end)
        .map(|r| format!("{} {} at {}", r.method, r.target, r.at))
        .collect();
    assert_eq!(late, Vec::<String>::new(), "a wrote after its lease ended");
    let verify = ha.cli(&["log", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// Kill -9 whichever service holds, at a random moment (perhaps in the middle of the
/// previous failover's playbook), with source changes in between, a few rounds; each
/// killed service comes back as a standby once another has taken over. The target ends
/// exactly equal to the source, one failover per kill, the chain valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_of_the_holder_end_exact() {
    const ROUNDS: u32 = 3;
    let ha = Ha::new(60, "interval = \"1s\"").await;
    let first = ha.cli(&["sync", "--instance", "a"]);
    assert_eq!(first.code, 0, "{first:?}");
    let mut services: BTreeMap<String, Service> = ["a", "b", "c"]
        .iter()
        .map(|n| (n.to_string(), ha.spawn(n, true)))
        .collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live: Vec<u32> = (1..=60).collect();
    let mut added = 60;
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(next() % 3000)).await;
        let holder = ha.state().await.control.relationship.holder.unwrap();
        let mut killed = services.remove(&holder).unwrap();
        killed.signal(libc::SIGKILL);
        assert_eq!(killed.exit_code(10).await, None);
        let epoch = ha.state().await.control.relationship.epoch;
        // Changes while the holder is dead: one deletion, one new user.
        // (u1 and u2 stay: they are the groups' members.)
        let gone = live.remove(2 + (next() % (live.len() as u64 - 2)) as usize);
        delete_users(&ha.lab, gone..=gone).await;
        added += 1;
        ha.lab.slapd().ldapadd(&ldap_user(added)).await;
        live.push(added);
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let rel = ha.state().await.control.relationship;
            if rel.epoch > epoch && rel.holder.as_deref() != Some(holder.as_str()) {
                eprintln!(
                    "round {round}: {holder} killed, {} took epoch {}",
                    rel.holder.unwrap_or_default(),
                    rel.epoch
                );
                break;
            }
            assert!(
                Instant::now() < end,
                "nobody took over from {holder}\n{}",
                services
                    .values()
                    .map(|s| format!("--- {}\n{}", s.name, s.output()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // It comes back as a standby.
        drop(killed);
        services.insert(holder.clone(), ha.spawn(&holder, true));
    }
    let refs: Vec<&Service> = services.values().collect();
    ha.until_exact(&live, 180, &refs).await;
    let failovers = ha.failovers().await;
    assert_eq!(failovers.len(), ROUNDS as usize, "{failovers:?}");
    let state = ha.state().await;
    assert_eq!(state.control.relationship.epoch, u64::from(ROUNDS) + 1);
    let verify = ha.cli(&["log", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

//! Operating it: `dirsync run --listen` (metrics, health, readiness) scraped while cycles
//! run against slapd and scim2-server, checked by Prometheus's own `promtool`; bad
//! `--listen` addresses.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{bin, until};
use crate::lab::proc::free_port;
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";

fn spawn_run(lab: &E2e, listen: &str) -> Child {
    Command::new(bin())
        .args(["run", "--instance", "a", "--listen", listen])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Ends the service when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(url: &str) -> Option<(u16, String, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((status, ctype, r.text().await.ok()?))
}

/// The samples of an exposition: `name{labels}` -> value (comments skipped).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            (
                k.to_string(),
                v.parse::<f64>().unwrap_or_else(|_| panic!("bad value {l}")),
            )
        })
        .collect()
}

/// The samples whose name is `name` (labels included in the key).
fn family(s: &BTreeMap<String, f64>, name: &str) -> BTreeMap<String, f64> {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn set_title(uid: &str, t: &str) -> String {
    format!("dn: uid={uid},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: {t}\n\n")
}

/// `promtool check metrics` on `text`: its exit code and what it said.
fn promtool(text: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-deps installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_while_cycles_run() {
    let started = chrono::Utc::now().timestamp() as f64;
    let lab = E2e::ldap(3, "500\ninterval = \"300ms\"").await;
    // Stopped first: the service lives (healthz) but has completed no cycle (readyz).
    let r = lab.cli(&["instance", "stop", "a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let addr = format!("127.0.0.1:{}", free_port());
    let _run = Killed(spawn_run(&lab, &addr));
    let url = |p: &str| format!("http://{addr}{p}");
    until(30, "the service to listen", || async {
        get(&url("/healthz")).await.is_some()
    })
    .await;
    let (status, _, body) = get(&url("/healthz")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = get(&url("/readyz")).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "no cycle has completed yet\n")
    );
    let (status, ctype, text) = get(&url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let s = samples(&text);
    assert_eq!(
        family(&s, "dirsync_sync_runs_total").values().sum::<f64>(),
        0.0,
        "no cycle yet:\n{text}"
    );

    // Started: cycles run; scrape while they do.
    let r = lab.cli(&["instance", "start", "a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    until(30, "the first cycle", || async {
        lab.view.count("Users").await == 3
    })
    .await;
    until(30, "readiness", || async {
        get(&url("/readyz")).await.map(|r| r.0) == Some(200)
    })
    .await;
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    lab.slapd().ldapmodify(&set_title("u1", "Boss")).await;
    until(30, "the update to be exported and counted", || async {
        let s = samples(&get(&url("/metrics")).await.unwrap().2);
        s.get("dirsync_exported_objects_total{instance=\"a\",op=\"update\"}") == Some(&1.0)
    })
    .await;
    assert_eq!(
        lab.view.users_by_anchor().await[&a1]["title"],
        "Boss",
        "what the counter says reached the target"
    );
    // Two more cycles, so the scrape below sees a service between cycles.
    let runs = |text: &str| {
        family(&samples(text), "dirsync_sync_runs_total")
            .values()
            .sum::<f64>()
    };
    let before = runs(&get(&url("/metrics")).await.unwrap().2);
    until(30, "two more cycles", || async {
        runs(&get(&url("/metrics")).await.unwrap().2) >= before + 2.0
    })
    .await;

    let (_, _, text) = get(&url("/metrics")).await.unwrap();
    let s = samples(&text);
    let expect = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    // Every cycle of this service succeeded: 3 users and 2 groups created, one update.
    let total = s["dirsync_sync_runs_total{instance=\"a\",outcome=\"success\"}"];
    assert!(total >= 3.0, "{text}");
    assert_eq!(
        family(&s, "dirsync_sync_runs_total"),
        expect(&[
            (
                "dirsync_sync_runs_total{instance=\"a\",outcome=\"failed\"}",
                0.0
            ),
            (
                "dirsync_sync_runs_total{instance=\"a\",outcome=\"fenced\"}",
                0.0
            ),
            (
                "dirsync_sync_runs_total{instance=\"a\",outcome=\"held\"}",
                0.0
            ),
            (
                "dirsync_sync_runs_total{instance=\"a\",outcome=\"partial\"}",
                0.0
            ),
            (
                "dirsync_sync_runs_total{instance=\"a\",outcome=\"skipped\"}",
                0.0
            ),
            (
                "dirsync_sync_runs_total{instance=\"a\",outcome=\"success\"}",
                total
            ),
        ])
    );
    assert_eq!(
        family(&s, "dirsync_exported_objects_total"),
        expect(&[
            (
                "dirsync_exported_objects_total{instance=\"a\",op=\"create\"}",
                5.0
            ),
            (
                "dirsync_exported_objects_total{instance=\"a\",op=\"delete\"}",
                0.0
            ),
            (
                "dirsync_exported_objects_total{instance=\"a\",op=\"match\"}",
                0.0
            ),
            (
                "dirsync_exported_objects_total{instance=\"a\",op=\"update\"}",
                1.0
            ),
        ])
    );
    assert_eq!(s["dirsync_sync_duration_seconds_count"], total, "{text}");
    assert_eq!(
        s["dirsync_sync_duration_seconds_bucket{le=\"+Inf\"}"], total,
        "{text}"
    );
    let state = lab.state().await;
    assert_eq!(state.control.relationship.epoch, 1);
    assert_eq!(
        expect(&[
            (
                "dirsync_relationship_epoch",
                s["dirsync_relationship_epoch"]
            ),
            (
                "dirsync_is_holder{instance=\"a\"}",
                s["dirsync_is_holder{instance=\"a\"}"]
            ),
            ("dirsync_deletions_held", s["dirsync_deletions_held"]),
        ]),
        expect(&[
            ("dirsync_relationship_epoch", 1.0),
            ("dirsync_is_holder{instance=\"a\"}", 1.0),
            ("dirsync_deletions_held", 0.0),
        ])
    );
    let head = lab.head().await as f64;
    let seq = s["dirsync_log_head_seq"];
    assert!(
        seq > 0.0 && seq <= head,
        "log head {seq} vs the store's {head}"
    );
    let now = chrono::Utc::now().timestamp() as f64;
    let last = s["dirsync_last_success_timestamp_seconds{instance=\"a\"}"];
    assert!(
        last >= started && last <= now + 1.0,
        "{last} within [{started}, {now}]"
    );
    let age = s["dirsync_cursor_age_seconds{instance=\"a\"}"];
    assert!((0.0..30.0).contains(&age), "cursor age {age}");
    let start = s["process_start_time_seconds"];
    assert!(
        start >= started - 5.0 && start <= now + 1.0,
        "process start {start}"
    );
    assert!(s["process_resident_memory_bytes"] > 1e6, "{text}");
    assert!(s["process_virtual_memory_bytes"] >= s["process_resident_memory_bytes"]);
    assert!(s["process_open_fds"] >= 3.0 && s["process_open_fds"] <= s["process_max_fds"]);
    assert!(s["process_cpu_seconds_total"] > 0.0, "{text}");
    // Label values are bounded: the instance, outcomes, ops; never an object's name.
    for k in s.keys() {
        assert!(
            !k.contains("u1") && !k.contains("dc=") && !k.contains(&a1),
            "an object in a label: {k}"
        );
    }
    // Prometheus's own linter accepts the exposition.
    let (code, said) = promtool(&text);
    assert_eq!((code, said.as_str()), (0, ""), "{text}");
}

/// `dirsync run --listen A` with A as given, in `dir`: its exit and stderr.
fn run_listen(dir: &std::path::Path, addr: &str) -> crate::common::Run {
    crate::common::dirsync(dir, &["run", "--instance", "a", "--listen", addr])
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_listen_addresses_exit_2_writing_nothing() {
    let lab = E2e::ldap(1, "500\ninterval = \"300ms\"").await;
    let dir = lab.dir.path();
    let before = files(dir);
    let head = lab.head().await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    for (addr, says) in [
        (busy_addr.as_str(), "the port is already in use"),
        ("localhost", "not an address to listen on"),
        ("127.0.0.1:99999", "not an address to listen on"),
        (
            "10.255.255.1:9464",
            "no interface of this computer has that address",
        ),
    ] {
        let r = run_listen(dir, addr);
        assert_eq!(r.code, 2, "{addr}: {r:?}");
        let line = r.stderr.trim_end();
        assert!(
            !line.contains('\n') && line.starts_with("dirsync: --listen ") && line.contains(says),
            "{addr}: {r:?}"
        );
    }
    assert_eq!(files(dir), before, "nothing written");
    assert_eq!(lab.head().await, head, "nothing recorded");
    drop(busy);

    // A privileged port as an ordinary user.
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        start >= 2,
        "this machine has no privileged ports to test with"
    );
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cfg = open.path().join("dirsync.toml");
    std::fs::write(&cfg, "[store]\nurl = \"sqlite://nobody.db\"\n").unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let addr = format!("127.0.0.1:{}", start - 1);
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin(),
        ]);
        c
    } else {
        Command::new(bin())
    };
    let out = cmd
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "run",
            "--instance",
            "a",
            "--listen",
            &addr,
        ])
        .current_dir(open.path())
        .env_remove("DIRSYNC_CONFIG")
        .output()
        .unwrap();
    let r: crate::common::Run = out.into();
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        r.stderr,
        format!(
            "dirsync: --listen {addr}: cannot listen: permission denied (ports below {start} \
             need root or CAP_NET_BIND_SERVICE)\n"
        )
    );
    assert_eq!(
        files(open.path()),
        vec!["dirsync.toml".to_string()],
        "nothing written"
    );
}

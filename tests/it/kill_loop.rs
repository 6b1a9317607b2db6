//! The kill loop of issue 19 ("kill -9 during a full import at random points"), shared by
//! the suite (`faults.rs`, 100,000 entries, debug build) and `scripts/bench kill`
//! (`benches/kill.rs`, 1,000,000, release), with the store helpers of the fault tests. It
//! uses only `crate::lab` and the dirsync binary, so that a bench can include it by path.

// The suite and the bench each use part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dirsync::log::event::{AttrValue, Event, ObjectKind};
use dirsync::log::{AnyStore, OpenMode};
use dirsync::project::{replay, ObjectRecord, State};

use crate::lab::{Slapd, SlapdOptions};

/// The import's phase marks in its debug log (the start of the run, then where each phase
/// ends), and the phase each kill aims at in turn: reading, planning, the append's
/// transaction twice, what follows the append.
const MARKS: [&str; 4] = [
    "(start)",
    "source read",
    "events planned",
    "events appended",
];
const PLAN: [usize; 5] = [0, 1, 2, 2, 3];

/// Users compared whole against the directory.
const SAMPLE: usize = 25;

pub const SYNC: &[&str] = &["sync", "--instance", "x", "--staging", "--format", "json"];

/// A store folder reading `slapd`, initialised.
pub fn store_dir(slapd: &Slapd) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), slapd);
    let run = dirsync(dir.path(), &["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    dir
}

pub fn write_config(dir: &Path, slapd: &Slapd) {
    std::fs::write(dir.join("pw"), slapd.password()).unwrap();
    std::fs::write(
        dir.join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"openldap\"\nurl = \"{}\"\n\
             bind_dn = \"{}\"\npassword_file = \"pw\"\nbase_dn = \"{}\"\n",
            slapd.url(),
            slapd.bind_dn(),
            slapd.base_dn()
        ),
    )
    .unwrap();
}

pub fn sync(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = SYNC.to_vec();
    args.extend_from_slice(extra);
    let run = dirsync(dir, &args);
    assert_eq!(run.code, 0, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    v["import"].clone()
}

pub async fn state(dir: &Path) -> State {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    std::sync::Arc::unwrap_or_clone(replay::current(&store).await.unwrap())
}

/// `log verify` and `replay --verify` both pass on the store in `dir`.
pub fn assert_store_verifies(dir: &Path, context: &str) {
    let run = dirsync(dir, &["log", "verify"]);
    assert_eq!(run.code, 0, "log verify {context}: {run:?}");
    let run = dirsync(dir, &["replay", "--verify"]);
    assert_eq!(run.code, 0, "replay --verify {context}: {run:?}");
}

/// A record without where in the log it was seen: what the directory determines.
fn content(r: &ObjectRecord) -> (ObjectKind, String, Vec<(String, Vec<String>)>, bool) {
    (r.kind, r.dn.clone(), attrs_of(r), r.live())
}

fn attrs_of(r: &ObjectRecord) -> Vec<(String, Vec<String>)> {
    let mut attrs: Vec<(String, Vec<String>)> = r
        .attrs
        .iter()
        .map(|(k, vs)| {
            let vs = vs
                .iter()
                .map(|v| match v {
                    AttrValue::Text(t) => t.to_string(),
                    other => panic!("{k} of {}: {other:?}", r.dn),
                })
                .collect();
            (k.to_string(), vs)
        })
        .collect();
    attrs.sort();
    attrs
}

/// The live users of `state`, by DN.
pub fn users_by_dn(state: &State) -> BTreeMap<String, &ObjectRecord> {
    state
        .objects
        .objects
        .values()
        .filter(|r| r.live() && r.kind == ObjectKind::User)
        .map(|r| (r.dn.to_lowercase(), &**r))
        .collect()
}

/// The user attributes of `dn` as ldapsearch reads them (names lower-cased, sorted), with
/// what dirsync leaves out (`userPassword`) left out.
async fn directory_entry(slapd: &Slapd, dn: &str) -> Vec<(String, Vec<String>)> {
    let out = slapd
        .ldapsearch(&["-LLL", "-o", "ldif-wrap=no", "-b", dn, "-s", "base", "*"])
        .await;
    let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in out.lines().skip(1).filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("ldapsearch line {line:?} of {dn}"));
        attrs
            .entry(k.to_lowercase())
            .or_default()
            .push(v.to_string());
    }
    attrs.remove("userpassword");
    attrs.into_iter().collect()
}

/// `dirsync sync --full` in `dir`, its stderr (with the import's phases) to `log`.
fn spawn_sync(dir: &Path, log: &Path) -> std::process::Child {
    let mut args = SYNC.to_vec();
    args.push("--full");
    Command::new(bin())
        .args(&args)
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .env("DIRSYNC_LOG", "dirsync::sync::run=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The import's phases in a debug log, with the milliseconds at which each ended.
fn phases(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("phase=\"")?;
            let (name, rest) = rest.split_once('"')?;
            let ms = rest.split_once("ms=")?.1.split_whitespace().next()?;
            Some((name.to_string(), ms.parse().ok()?))
        })
        .collect()
}

pub async fn head(dir: &Path) -> u64 {
    use dirsync::log::Store;
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    store.head().await.unwrap().0
}

/// splitmix64: the kill delays, repeatable from the seed printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A finished dirsync command.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `dirsync ARGS` in `dir` (no inherited DIRSYNC_CONFIG).
pub fn dirsync(dir: &Path, args: &[&str]) -> Ran {
    let o = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .output()
        .unwrap();
    Ran {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dirsync")
}

/// The events of the store in `dir`, decoded.
pub async fn events(dir: &Path) -> Vec<Event> {
    use dirsync::log::Store;
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    let rows = store.read(0, 1_000_000).await.unwrap();
    rows.iter().map(|e| e.decode().unwrap()).collect()
}

/// The seed of a kill loop: `DIRSYNC_KILL_SEED` to repeat one, else from the clock.
pub fn seed() -> u64 {
    std::env::var("DIRSYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// What a kill loop measured.
pub struct KillLoop {
    pub load_s: f64,
    pub import_s: f64,
    pub next_sync_s: f64,
    pub next_sync_mode: serde_json::Value,
    pub total_s: f64,
    /// One line per kill: when, what it hit, the log's head after it.
    pub kills: Vec<String>,
}

/// `kill -9` of `dirsync sync --full` at random points of a full import of `users` users
/// (slapd loaded by slapadd), `kills` times into the same store: after each, `log verify` and `replay --verify` pass;
/// then a sync completes and the projected users equal the directory's (count, a sample
/// compared whole with ldapsearch) and an uninterrupted import's (all of them). Each kill
/// aims at a phase in turn ([`PLAN`]): the run's debug log is followed to that phase's
/// start, then the run is killed at a random point of the uninterrupted import's time for
/// that phase, drawn from `seed`, printed first (see [`seed`]). Panics with the seed on
/// any failure.
pub async fn kill_loop(users: u64, kills: usize, seed: u64) -> KillLoop {
    eprintln!("kill loop: seed {seed} (DIRSYNC_KILL_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut slapd = Slapd::start(SlapdOptions {
        // About 2.5 KB of mdb map per user, with room to spare.
        map_size: Some((users * 4096).max(1 << 30)),
        ..Default::default()
    })
    .await;
    slapd.load_users(users).await;
    let loaded = t0.elapsed();

    eprintln!(
        "kill loop: {users} users loaded in {:.1} s",
        loaded.as_secs_f64()
    );
    // Read the directory once first: the reference import, which times the kills, would
    // otherwise find slapd's pages cold and take longer than the runs it times (seen at
    // 1,000,000: 60 s cold, and later runs done in under 42 s).
    let status = Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-H",
            &slapd.url(),
            "-D",
            slapd.bind_dn(),
            "-w",
        ])
        .arg(slapd.password())
        .args(["-E", "pr=1000/noprompt", "-b", slapd.people_dn(), "(uid=*)"])
        .env("LDAPNOINIT", "1")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ldapsearch to warm slapd: {status}");
    // The uninterrupted import: its time bounds the delays, its objects are the reference.
    let reference = store_dir(&slapd);
    let logs = tempfile::tempdir().unwrap();
    let reference_log = logs.path().join("reference.log");
    let t = Instant::now();
    let status = spawn_sync(reference.path(), &reference_log).wait().unwrap();
    let import_time = t.elapsed();
    assert!(status.success(), "{}", read(&reference_log));
    let v = state(reference.path()).await;
    assert_eq!(users_by_dn(&v).len() as u64, users);
    eprintln!(
        "kill loop: uninterrupted import {:.1} s, phases (name, ms) {:?}",
        import_time.as_secs_f64(),
        phases(&read(&reference_log))
    );

    let dir = store_dir(&slapd);
    let mut history = Vec::new();
    // Where each phase of the reference ended, ms: reading, planning, the append's
    // transaction, what follows it (the end event, the snapshot).
    let reference_phases = phases(&read(&reference_log));
    let at = |name: &str| {
        reference_phases
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, ms)| *ms)
            .unwrap_or_else(|| panic!("no phase {name:?} in {reference_phases:?}"))
    };
    let bounds = [
        0,
        at(MARKS[1]),
        at(MARKS[2]),
        at(MARKS[3]),
        import_time.as_millis() as u64,
    ];
    for k in 0..kills {
        // Kill k targets phase PLAN[k]: the run is followed through its log to that phase's
        // start, then killed at a random point of the reference's time for that phase, so
        // that a slower or faster machine still cuts the phase aimed at.
        let phase = PLAN[k % PLAN.len()];
        let delay =
            Duration::from_millis(bounds[phase + 1] - bounds[phase]).mul_f64(0.9 * rng.unit());
        let log = logs.path().join(format!("kill{k}.log"));
        let mut child = spawn_sync(dir.path(), &log);
        if phase > 0 {
            let deadline = Instant::now() + import_time * 10;
            while !phases(&read(&log)).iter().any(|(p, _)| p == MARKS[phase])
                && child.try_wait().unwrap().is_none()
            {
                assert!(
                    Instant::now() < deadline,
                    "kill {k}: no {:?} (seed {seed})",
                    MARKS[phase]
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(delay).await;
        let outcome = match child.try_wait().unwrap() {
            Some(status) => format!("ended before the kill ({status})"),
            None => {
                child.kill().unwrap(); // SIGKILL
                let status = child.wait().unwrap();
                format!("killed ({status})")
            }
        };
        let reached = phases(&read(&log))
            .last()
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| "(none)".into());
        let context = format!(
            "kill {k} {:.2} s after {:?} (of {:.2} s in the reference): {outcome}, last phase \
             {reached:?}, log head {} (seed {seed})",
            delay.as_secs_f64(),
            MARKS[phase],
            (bounds[phase + 1] - bounds[phase]) as f64 / 1000.0,
            head(dir.path()).await,
        );
        eprintln!("kill loop: {context}");
        history.push(context.clone());
        assert_store_verifies(dir.path(), &context);
    }

    // The next sync completes (a delta when a killed import got its cursor in, else full).
    let t = Instant::now();
    let v = sync(dir.path(), &[]);
    let next_sync = t.elapsed();
    assert_store_verifies(dir.path(), &format!("after the next sync (seed {seed})"));

    let got = state(dir.path()).await;
    let want = state(reference.path()).await;
    let (got_users, want_users) = (users_by_dn(&got), users_by_dn(&want));
    assert_eq!(got_users.len() as u64, users, "seed {seed}: {v}");
    let got_all: BTreeMap<_, _> = got_users.iter().map(|(k, r)| (k, content(r))).collect();
    let want_all: BTreeMap<_, _> = want_users.iter().map(|(k, r)| (k, content(r))).collect();
    assert!(
        got_all == want_all,
        "seed {seed}: the users differ from an uninterrupted import's"
    );
    for _ in 0..SAMPLE {
        let j = rng.next() % users;
        let dn = format!("uid=user{j},{}", slapd.people_dn());
        let r = got_users
            .get(&dn.to_lowercase())
            .unwrap_or_else(|| panic!("seed {seed}: no {dn}"));
        // objectClass is no attribute of a record: it made the record's kind.
        let mut entry = directory_entry(&slapd, &dn).await;
        let classes = entry
            .iter()
            .position(|(k, _)| k == "objectclass")
            .map(|i| entry.remove(i).1);
        assert_eq!(classes, Some(vec!["inetOrgPerson".to_string()]), "{dn}");
        assert_eq!(
            (
                r.kind,
                r.dn.as_str(),
                attrs_of(r),
                r.members.len(),
                r.live()
            ),
            (ObjectKind::User, dn.as_str(), entry, 0, true),
            "seed {seed}"
        );
    }
    KillLoop {
        load_s: loaded.as_secs_f64(),
        import_s: import_time.as_secs_f64(),
        next_sync_s: next_sync.as_secs_f64(),
        next_sync_mode: v["mode"].clone(),
        total_s: t0.elapsed().as_secs_f64(),
        kills: history,
    }
}

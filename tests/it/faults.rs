//! Faults during a large import (issue 19, "Bad input and faults"): `kill -9` at random
//! points of a full import of 100,000 entries, and a disk full under the store mid-import.
//! After either, the log verifies, the stored projections equal a replay, and the next
//! sync completes with the directory's objects.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use dirsync::log::event::{
    AttrValue, Event, FailureReason, ObjectKind, SyncRunFailed, SyncRunStarted,
};
use dirsync::log::{AnyStore, OpenMode};
use dirsync::project::{replay, ObjectRecord, State};

use crate::common::{bin, dirsync};
use crate::lab::{Slapd, SlapdOptions, SmallFs};

/// Users in the directory of the kill loop (issue 19: 100,000 in the suite).
const USERS: u64 = 100_000;
/// `kill -9`s in the loop.
const KILLS: usize = 5;
/// Users compared whole against the directory.
const SAMPLE: usize = 25;

const SYNC: &[&str] = &["sync", "--instance", "x", "--staging", "--format", "json"];

/// A store folder reading `slapd`, initialised.
fn store_dir(slapd: &Slapd) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), slapd);
    let run = dirsync(dir.path(), &["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    dir
}

fn write_config(dir: &Path, slapd: &Slapd) {
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

fn sync(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = SYNC.to_vec();
    args.extend_from_slice(extra);
    let run = dirsync(dir, &args);
    assert_eq!(run.code, 0, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    v["import"].clone()
}

async fn state(dir: &Path) -> State {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    replay::current(&store).await.unwrap()
}

/// `log verify` and `replay --verify` both pass on the store in `dir`.
fn assert_store_verifies(dir: &Path, context: &str) {
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
fn users_by_dn(state: &State) -> BTreeMap<String, &ObjectRecord> {
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

async fn head(dir: &Path) -> u64 {
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

/// `kill -9` of `dirsync sync --full` at random points of a full import of 100,000 users,
/// five times into the same store: after each, `log verify` and `replay --verify` pass;
/// then a sync completes and the projected users equal the directory's (count, a sample
/// compared whole with ldapsearch) and an uninterrupted import's (all of them). The delays
/// are drawn within the uninterrupted import's measured time, from a seed printed first
/// (`DIRSYNC_KILL_SEED=N` repeats a run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_full_import_of_100000_entries_leaves_a_consistent_store() {
    let seed = std::env::var("DIRSYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill loop: seed {seed} (DIRSYNC_KILL_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut slapd = Slapd::start(SlapdOptions::default()).await;
    slapd.load_users(USERS).await;
    let loaded = t0.elapsed();

    // The uninterrupted import: its time bounds the delays, its objects are the reference.
    let reference = store_dir(&slapd);
    let logs = tempfile::tempdir().unwrap();
    let reference_log = logs.path().join("reference.log");
    let t = Instant::now();
    let status = spawn_sync(reference.path(), &reference_log).wait().unwrap();
    let import_time = t.elapsed();
    assert!(status.success(), "{}", read(&reference_log));
    let v = state(reference.path()).await;
    assert_eq!(users_by_dn(&v).len() as u64, USERS);
    let reference_phases = phases(&read(&reference_log));

    let dir = store_dir(&slapd);
    let mut history = Vec::new();
    for k in 0..KILLS {
        // Stratified: kill k falls in the k-th of KILLS equal spans of the import's time
        // (and a little beyond), so that every phase has its chance in each run: reading,
        // planning, the append's transaction, the end event and the snapshot after it.
        let span = import_time.mul_f64(1.1 / KILLS as f64);
        let delay = span.mul_f64(k as f64 + rng.unit());
        let log = logs.path().join(format!("kill{k}.log"));
        let mut child = spawn_sync(dir.path(), &log);
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
            "kill {k} at {:.2} s of {:.2} s: {outcome}, last phase {reached:?}, log head {} \
             (seed {seed})",
            delay.as_secs_f64(),
            import_time.as_secs_f64(),
            head(dir.path()).await,
        );
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
    assert_eq!(got_users.len() as u64, USERS, "seed {seed}: {v}");
    let got_all: BTreeMap<_, _> = got_users.iter().map(|(k, r)| (k, content(r))).collect();
    let want_all: BTreeMap<_, _> = want_users.iter().map(|(k, r)| (k, content(r))).collect();
    assert!(
        got_all == want_all,
        "seed {seed}: the users differ from an uninterrupted import's"
    );
    for _ in 0..SAMPLE {
        let j = rng.next() % USERS;
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
    eprintln!(
        "kill loop: load {:.1} s, uninterrupted import {:.1} s (phases {reference_phases:?}), next sync \
         {:.1} s ({}), total {:.1} s\n  {}",
        loaded.as_secs_f64(),
        import_time.as_secs_f64(),
        next_sync.as_secs_f64(),
        v["mode"],
        t0.elapsed().as_secs_f64(),
        history.join("\n  ")
    );
}

/// Users of the disk-full tests: an import of them needs a few MB of store.
const FULL_USERS: u64 = 5_000;

/// How the store runs out of room.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Room {
    /// The store on a tmpfs shrunk to what it holds plus 256 KiB: ENOSPC, a full disk.
    Tmpfs,
    /// The sync run under RLIMIT_FSIZE of the largest store file plus 256 KiB, SIGXFSZ
    /// ignored: writes past it fail with EFBIG. No mount needed.
    FileSizeLimit,
}

/// The store runs out of room in the middle of a full import: `sync` says so in one line
/// naming the store, exits 1, and leaves nothing half-written: with room again the log
/// verifies, the projections equal a replay, and the next sync imports everything.
async fn out_of_room_during_an_import(room: Room) {
    let mut slapd = Slapd::start(SlapdOptions::default()).await;
    slapd.load_users(FULL_USERS).await;
    let (fs, room) = match room {
        Room::Tmpfs => match SmallFs::mount(64 << 20) {
            Ok(fs) => (Some(fs), Room::Tmpfs),
            Err(why) => {
                // Not silently: the same checks run, with a file size limit for the full disk.
                eprintln!(
                    "NOTE: cannot mount a tmpfs here ({why}); the disk is full by a file size \
                     limit instead"
                );
                (None, Room::FileSizeLimit)
            }
        },
        Room::FileSizeLimit => (None, Room::FileSizeLimit),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = fs.as_ref().map(|f| f.path()).unwrap_or(tmp.path());
    write_config(dir, &slapd);
    let run = dirsync(dir, &["init"]);
    assert_eq!(run.code, 0, "{run:?}");

    let args = ["sync", "--instance", "x", "--staging"];
    let (run, expected) = match (&fs, room) {
        (Some(fs), _) => {
            fs.resize(fs.used() + (256 << 10));
            (
                dirsync(dir, &args),
                "no space left on the device (SQLite: database or disk is full)",
            )
        }
        (None, _) => {
            let largest = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .max()
                .unwrap();
            let out = Command::new("sh")
                .arg("-c")
                .arg("trap '' XFSZ; limit=$1; shift; exec prlimit --fsize=\"$limit\" -- \"$0\" \"$@\"")
                .arg(bin())
                .arg((largest + (256 << 10)).to_string())
                .args(args)
                .current_dir(dir)
                .env_remove("DIRSYNC_CONFIG")
                .output()
                .unwrap();
            (
                out.into(),
                "File too large (os error 27) (SQLite: disk I/O error)",
            )
        }
    };
    eprintln!("{room:?}: {run:?}");
    // The store as the configuration names it (relative to its file).
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            1,
            "",
            format!("dirsync: store ./log.db: {expected}\n").as_str()
        ),
        "{run:?}"
    );

    if let Some(fs) = &fs {
        fs.resize(256 << 20);
    }
    assert_store_verifies(dir, &format!("after running out of room ({room:?})"));
    // The run's start, and its failure when there was room for that: no import event.
    let events = events(dir).await;
    let error = format!("store ./log.db: {expected}");
    match events.as_slice() {
        [Event::SyncRunStarted(SyncRunStarted { full, mode, .. })] => {
            assert_eq!((*full, mode.as_str()), (false, "staging"), "{events:?}")
        }
        [Event::SyncRunStarted(started), Event::SyncRunFailed(failed)] => {
            assert_eq!(
                (started.full, started.mode.as_str()),
                (false, "staging"),
                "{events:?}"
            );
            assert_eq!(
                failed,
                &SyncRunFailed {
                    run_id: started.run_id.clone(),
                    error,
                    reason: Some(FailureReason::Store),
                },
                "{events:?}"
            );
        }
        other => panic!("{room:?}: {other:?}"),
    }
    eprintln!("{room:?}: events {events:?}");
    let v = sync(dir, &[]);
    assert_eq!(v["added"], FULL_USERS, "{v}");
    assert_store_verifies(dir, "after the next sync");
    assert_eq!(users_by_dn(&state(dir).await).len() as u64, FULL_USERS);
}

/// The events of the store in `dir`, decoded.
async fn events(dir: &Path) -> Vec<Event> {
    use dirsync::log::Store;
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    let rows = store.read(0, 1_000_000).await.unwrap();
    rows.iter().map(|e| e.decode().unwrap()).collect()
}

/// A real full disk (a tmpfs; a file size limit where no tmpfs can be mounted, said so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_during_an_import_is_one_line_exit_1_and_nothing_half_written() {
    out_of_room_during_an_import(Room::Tmpfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_during_an_import_is_one_line_exit_1_and_nothing_half_written() {
    out_of_room_during_an_import(Room::FileSizeLimit).await;
}

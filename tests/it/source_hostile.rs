//! A hostile LDAP server (tests/it/lab/hostile_ldap.rs) against every read path: the RFC
//! 4533 refresh (`kind = "openldap"`), DirSync (`kind = "ad"`) and the paged search
//! (`kind = "ldap"`). Whatever the server does, a sync ends with exit 1, one error line,
//! in bounded time, and records nothing of what the server sent: the log holds at most the
//! run's start and its failure.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{bin, dirsync, Run};
use crate::lab::hostile_ldap::{HostileLdap, Mode, Trigger};

/// The limits the tests run with: small, so that each case ends in seconds.
const LIMITS: &str = "operation_timeout = \"2s\"\nimport_timeout = \"12s\"\nmax_entries = 20000\n";
/// Longest a case may take: the import deadline, and room for the process around it.
const BOUND: Duration = Duration::from_secs(30);
/// Most memory a case may take: the process with a message of at most 64 MiB in its buffer.
const MEMORY_BOUND: u64 = 200 << 20;
/// A run still going after this is killed (and the case fails).
const KILL_AFTER: Duration = Duration::from_secs(90);

fn base(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::DirSync => "DC=test,DC=lan",
        _ => "dc=example,dc=org",
    }
}

fn kind(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::SyncRequest => "openldap",
        Trigger::DirSync => "ad",
        Trigger::Paged => "ldap",
    }
}

fn store_dir(trigger: Trigger, url: &str, limits: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"{}\"\nurl = \"{url}\"\n\
             bind_dn = \"cn=admin,{}\"\npassword_file = \"pw\"\nbase_dn = \"{}\"\n{limits}",
            kind(trigger),
            base(trigger),
            base(trigger)
        ),
    )
    .unwrap();
    let run = dirsync(dir.path(), &["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    dir
}

/// `dirsync sync --staging`, killed if it outlives [`KILL_AFTER`]: what it printed, how
/// long it took, and its peak resident memory in bytes.
///
/// Run under GNU time: a process forked from this (large, multi-threaded) test binary
/// starts with the binary's own peak in its `ru_maxrss` (Linux keeps the forked memory's
/// high-water mark across exec), so wait4 on a direct child reports the test binary, not
/// dirsync. time's own child is forked from a small process.
fn sync_with_deadline(dir: &Path) -> (Run, Duration, u64) {
    use std::os::unix::process::CommandExt;
    let t0 = Instant::now();
    let rss_file = dir.join("maxrss");
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(bin())
        .args(["sync", "--instance", "x", "--staging"])
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a kill reaches dirsync under time.
        .process_group(0)
        .spawn()
        .unwrap();
    // Read the pipes while it runs, so that it never blocks on a full one.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > KILL_AFTER {
            // SAFETY: signals the process group this test started.
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    // time writes "Command exited with non-zero status N" first when it is not 0, then
    // the peak in kilobytes.
    let kb: u64 = std::fs::read_to_string(&rss_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or(u64::MAX >> 10);
    (run, t0.elapsed(), kb * 1024)
}

fn events(dir: &Path) -> Vec<Value> {
    let run = dirsync(dir, &["log", "show", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hostile(mode: Mode, trigger: Trigger) {
    hostile_with(mode, trigger, LIMITS)
}

fn hostile_with(mode: Mode, trigger: Trigger, limits: &str) {
    let server = HostileLdap::start(mode, trigger, base(trigger));
    let dir = store_dir(trigger, &server.url(), limits);
    let (run, took, rss) = sync_with_deadline(dir.path());
    assert_eq!(run.code, 1, "{mode:?} {trigger:?} after {took:?}: {run:?}");
    assert!(took < BOUND, "{mode:?} {trigger:?} took {took:?}: {run:?}");
    assert!(
        rss < MEMORY_BOUND,
        "{mode:?} {trigger:?}: {} MB: {run:?}",
        rss >> 20
    );
    let line = run.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{mode:?} {trigger:?}: {run:?}");
    assert!(line.len() < 1000, "{mode:?} {trigger:?}: {run:?}");
    assert!(
        line.contains(&server.url()),
        "{mode:?} {trigger:?}: {run:?}"
    );
    // Nothing the server sent is recorded: no object, no cursor; only the run's start and
    // its failure, with the same reason as the error line.
    let evs = events(dir.path());
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types
            .iter()
            .all(|t| matches!(*t, "SyncRunStarted" | "SyncRunFailed")),
        "{mode:?} {trigger:?}: {types:?}"
    );
    assert!(
        evs.iter().all(|e| e["stream"] != "source"),
        "{mode:?} {trigger:?}"
    );
    if let Some(failed) = evs.iter().find(|e| e["type"] == "SyncRunFailed") {
        let reason = failed["payload"]["error"].as_str().unwrap();
        assert!(line.contains(reason), "{line} vs {reason}");
    }
    eprintln!("{mode:?} {trigger:?}: {took:?}, {} MB: {line}", rss >> 20);
}

macro_rules! cases {
    ($($name:ident: $mode:ident,)*) => {
        mod rfc4533 { use super::*; $(#[test] fn $name() { hostile(Mode::$mode, Trigger::SyncRequest) })* }
        mod dirsync { use super::*; $(#[test] fn $name() { hostile(Mode::$mode, Trigger::DirSync) })* }
        mod paged { use super::*; $(#[test] fn $name() { hostile(Mode::$mode, Trigger::Paged) })* }
    };
}

cases! {
    deeply_nested_ber: NestedBer,
    a_huge_length: HugeLength,
    an_endless_stream_of_entries: EndlessEntries,
    a_wrong_protocol_op: WrongOp,
    an_indefinite_length: IndefiniteLength,
    slow_loris_bytes: SlowLoris,
    endless_pages_with_new_cookies: EndlessPages,
    the_same_cookie_forever: SameCookie,
}

/// Empty pages with ever new cookies: the paged search calls it endless after 100.
#[test]
fn paged_empty_pages_with_new_cookies() {
    hostile(Mode::EmptyPages, Trigger::Paged)
}

/// What no count or clock decides ends as soon under the default limits.
#[test]
fn the_default_limits_end_the_malformed_cases_at_once() {
    for trigger in [Trigger::SyncRequest, Trigger::DirSync, Trigger::Paged] {
        for mode in [
            Mode::NestedBer,
            Mode::HugeLength,
            Mode::WrongOp,
            Mode::IndefiniteLength,
            Mode::SameCookie,
        ] {
            if mode == Mode::SameCookie && trigger == Trigger::SyncRequest {
                continue; // no cookie loop there: an endless stream, for max_entries
            }
            hostile_with(mode, trigger, "");
        }
    }
}

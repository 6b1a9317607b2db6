//! A hostile LDAP server (tests/it/lab/hostile_ldap.rs) against every read path: the RFC
//! 4533 refresh (`kind = "openldap"`), DirSync (`kind = "ad"`) and the paged search
//! (`kind = "ldap"`). Whatever the server does, a sync ends with exit 1, one error line,
//! in bounded time, and records nothing of what the server sent: the log holds at most the
//! run's start and its failure.

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

fn store_dir(trigger: Trigger, url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"{}\"\nurl = \"{url}\"\n\
             bind_dn = \"cn=admin,{}\"\npassword_file = \"pw\"\nbase_dn = \"{}\"\n{LIMITS}",
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

/// `dirsync sync --staging`, killed if it outlives [`KILL_AFTER`].
fn sync_with_deadline(dir: &Path) -> (Run, Duration) {
    let t0 = Instant::now();
    let mut child = Command::new(bin())
        .args(["sync", "--instance", "x", "--staging"])
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > KILL_AFTER {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.into(), t0.elapsed())
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
    let server = HostileLdap::start(mode, trigger, base(trigger));
    let dir = store_dir(trigger, &server.url());
    let (run, took) = sync_with_deadline(dir.path());
    assert_eq!(run.code, 1, "{mode:?} {trigger:?} after {took:?}: {run:?}");
    assert!(took < BOUND, "{mode:?} {trigger:?} took {took:?}: {run:?}");
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
    eprintln!("{mode:?} {trigger:?}: {took:?}: {line}");
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

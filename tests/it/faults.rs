//! Faults during a large import (issue 19, "Bad input and faults"): `kill -9` at random
//! points of a full import of 100,000 entries (the loop is in `kill_loop.rs`, shared with
//! `scripts/bench kill`), and a store that runs out of room mid-import. After either, the
//! log verifies, the stored projections equal a replay, and the next sync completes with
//! the directory's objects.

use std::process::Command;

use dirsync::log::event::{Event, FailureReason, SyncRunFailed, SyncRunStarted};

use crate::common::{bin, dirsync};
use crate::kill_loop::{
    assert_store_verifies, events, kill_loop, seed, state, sync, users_by_dn, write_config,
};
use crate::lab::{Slapd, SlapdOptions, SmallFs};

/// `kill -9` five times at random points of a full import of 100,000 users (issue 19: the
/// suite's size; `scripts/bench kill` runs 1,000,000): see [`kill_loop`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_full_import_of_100000_entries_leaves_a_consistent_store() {
    let r = kill_loop(100_000, 5, seed()).await;
    eprintln!(
        "kill loop: load {:.1} s, uninterrupted import {:.1} s, next sync {:.1} s ({}), \
         total {:.1} s\n  {}",
        r.load_s,
        r.import_s,
        r.next_sync_s,
        r.next_sync_mode,
        r.total_s,
        r.kills.join("\n  ")
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

/// A real full disk (a tmpfs; a file size limit where no tmpfs can be mounted, said so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_during_an_import_is_one_line_exit_1_and_nothing_half_written() {
    out_of_room_during_an_import(Room::Tmpfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_during_an_import_is_one_line_exit_1_and_nothing_half_written() {
    out_of_room_during_an_import(Room::FileSizeLimit).await;
}

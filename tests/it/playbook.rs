//! The built-in playbooks through the binary: `playbook list`, `playbook show`, and a name
//! that is neither a built-in nor a file. No configuration and no store: run from an empty
//! directory. (Handovers with them run in `handover`.)

use dirsync::log::Store;
use serde_json::{json, Value};

use crate::common::{dirsync, Backend, Fresh, Run};

const BUILT_IN: [&str; 4] = ["new-computer", "reinstall", "old-computer-lost", "failover"];

fn json_of(run: &Run) -> Value {
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

#[test]
fn list_and_show_the_built_in_playbooks_from_an_empty_directory() {
    let empty = tempfile::tempdir().unwrap();
    let v = json_of(&dirsync(
        empty.path(),
        &["playbook", "list", "--format", "json"],
    ));
    let list = v["playbooks"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, BUILT_IN);
    // Each listed playbook is what `show` says about it.
    for p in list {
        let shown = json_of(&dirsync(
            empty.path(),
            &[
                "playbook",
                "show",
                p["name"].as_str().unwrap(),
                "--format",
                "json",
            ],
        ));
        assert_eq!(&shown, p);
    }
    let failover = json_of(&dirsync(
        empty.path(),
        &["playbook", "show", "failover", "--format", "json"],
    ));
    assert_eq!(
        failover,
        json!({
            "name": "failover",
            "description": "A standby takes over from a dead holder: reconcile the ledger against a full import, then export",
            "source": "built-in",
            "steps": [
                {"action": "sync", "role": "new", "timeout": "6h", "full": true,
                 "take_over": true, "force": false,
                 "note": "Take the relationship (a new epoch fences the dead holder), import everything, reconcile the ledger against it (deletions the dead holder never exported are caught) and export."},
                {"action": "wait-sync", "role": "new", "timeout": "30m", "full": false,
                 "take_over": false, "force": false,
                 "note": "The new holder has completed a sync (a SyncRunCompleted event)."}
            ]
        })
    );

    let table = dirsync(empty.path(), &["playbook", "list"]);
    assert_eq!(table.code, 0, "{table:?}");
    let rows: Vec<(String, String)> = table
        .stdout
        .lines()
        .skip(1)
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().into(), w.next().unwrap().into())
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("new-computer", "6"),
            ("reinstall", "4"),
            ("old-computer-lost", "5"),
            ("failover", "2")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let show = dirsync(empty.path(), &["playbook", "show", "reinstall"]);
    assert_eq!(show.code, 0, "{show:?}");
    // The ACTION column, by the header's positions.
    let header = show.stdout.lines().nth(1).unwrap();
    let (from, to) = (
        header.find("ACTION").unwrap(),
        header.find("TIMEOUT").unwrap(),
    );
    let actions: Vec<&str> = show
        .stdout
        .lines()
        .skip(2)
        .map(|l| l[from..to].trim())
        .collect();
    assert_eq!(
        actions,
        [
            "stop old",
            "sync new (full, take over)",
            "wait-sync new",
            "retire old"
        ],
        "{show:?}"
    );
    assert!(
        show.stdout
            .starts_with("playbook reinstall (built-in): Reinstall (or move"),
        "{show:?}"
    );
}

/// The one line an unknown playbook name gets (exit 2).
const UNKNOWN: &str = "dirsync: no playbook `new-computr`: not a built-in one (new-computer, reinstall, old-computer-lost, failover) nor a readable file (No such file or directory (os error 2))\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_playbook_name_exits_2_naming_the_built_ins() {
    let empty = tempfile::tempdir().unwrap();
    let run = dirsync(empty.path(), &["playbook", "show", "new-computr"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (2, "", UNKNOWN)
    );

    // A handover with it records nothing.
    let f = Fresh::new(Backend::Sqlite).await;
    let head = f.store.head().await.unwrap().0;
    let run = f.cli(&[
        "handover",
        "--from",
        "a",
        "--to",
        "b",
        "--playbook",
        "new-computr",
    ]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (2, "", UNKNOWN)
    );
    assert_eq!(f.store.head().await.unwrap().0, head);
}

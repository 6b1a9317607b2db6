//! Fencing on a slow network (issue 18.3): an old holder's creates held up in the network
//! past its lease reach the target after a new holder took the relationship over.
//!
//! scim2-server sits behind the lab proxy, which holds POSTs until the test releases them
//! (long after dirsync gave up on them). The lease is `[sync] lease = "3s"` so that the
//! test waits seconds, not minutes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dirsync::log::event::Event;
use dirsync::log::Store;
use serde_json::Value;

use crate::lab::{ProxyRules, ScimProxy};
use crate::sync_export::E2e;
use crate::target_scim_differ::behind_proxy;

fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// Wait (at most 20 s) until `f` holds.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the log says: (type, instance, recorded_at_us, event) of every event after `seq`.
async fn events(lab: &E2e, seq: u64) -> Vec<(String, String, i64, Event)> {
    let store = lab.store().await;
    store
        .read(seq, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let ev = e.decode().unwrap();
            (e.event_type, e.instance, e.recorded_at_us, ev)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_creates_of_the_old_holder_are_taken_or_removed_by_the_new_one() {
    // u1..u3; groups team and crew with members u1 and u2.
    let lab = E2e::ldap(3, "500").await;
    let proxy: ScimProxy = behind_proxy(
        &lab,
        ProxyRules {
            hold_posts_to: vec!["/Users".into(), "/Groups".into()],
            ..Default::default()
        },
    )
    .await;
    let cfg = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{toml}lease = \"3s\"\n")).unwrap();

    // Instance a: every create is held in the network. Each chunk gives up on its requests
    // before its lease ends and records them as failed.
    let started = Instant::now();
    let (run, v) = lab.run("a", &[]);
    let a_took = started.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    // Every request timed out: the groups' chunk is the 4th and 5th in a row without an
    // answer, over 5 s, so the cycle ends as "the target is down" (no report), without
    // recording those as the objects' failures (retry::Breaker); otherwise the report
    // counts them.
    if v.is_null() {
        assert!(run.stderr.contains("(the target is down: "), "{run:?}");
    } else {
        assert_eq!((count(&v, "created"), count(&v, "failures")), (0, 5), "{v}");
    }
    // Users, then groups (not sent again by the export's third pass): two leases of 3 s.
    assert!(a_took < Duration::from_secs(10), "{a_took:?}");
    let held = proxy.held();
    assert_eq!(held, 3 + 2, "a's creates held in the network");
    let log = events(&lab, 0).await;
    let mut claims = BTreeMap::new();
    for (ty, inst, at, ev) in &log {
        match ev {
            Event::ExportBatchStarted(b) => {
                assert_eq!(inst, "a", "{ty}");
                claims.insert(b.batch_id.clone(), (*at, b.lease_until.timestamp_micros()));
            }
            // Every request of a chunk ended (answered or given up on) before its lease.
            Event::ExportBatchCompleted(b) => {
                let (_, until) = claims[&b.batch_id];
                assert!(
                    *at < until,
                    "{b:?} completed {}us after its lease",
                    at - until
                );
            }
            Event::ExportFailed(f) => {
                assert!(f.error.contains("timed out"), "{f:?}");
            }
            _ => {}
        }
    }
    assert_eq!(claims.len(), 2, "{claims:?}");
    // No write of a left before its claim or after its lease's end.
    let writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert_eq!(writes.len(), held);
    for w in &writes {
        let at = w.at.timestamp_micros();
        assert!(
            claims
                .values()
                .any(|(from, until)| *from <= at && at < *until),
            "{} {} at {} outside every lease {claims:?}",
            w.method,
            w.target,
            w.at
        );
    }

    // The network delivers a's user creates, after a gave up on them; nothing is held
    // from now on.
    proxy.set_rules(ProxyRules::default());
    assert_eq!(proxy.release("/Users"), 3);
    until("a's users reach the target", async || {
        lab.view.count("Users").await == 3
    })
    .await;
    let a_users: BTreeMap<String, Value> = lab.view.users_by_anchor().await;
    assert_eq!(a_users.len(), 3);

    // b takes over: what a created is taken by its anchor, not created again.
    let head = lab.head().await;
    let (run, v) = lab.run("b", &["--take-over"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        [
            count(&v, "matched"),
            count(&v, "created"),
            count(&v, "duplicates_removed")
        ],
        [3, 2, 0],
        "{v}"
    );
    let state = lab.state().await;
    for (anchor, u) in &a_users {
        assert_eq!(state.ledger.entries[anchor].target_id, u["id"], "{anchor}");
    }
    assert!(events(&lab, head)
        .await
        .iter()
        .all(|(ty, ..)| ty != "TargetDuplicateRemoved"));

    // Then a's group creates land: each group is in the target twice.
    assert_eq!(proxy.release("/Groups"), 2);
    until("a's groups reach the target", async || {
        lab.view.count("Groups").await == 4
    })
    .await;
    let b_groups: BTreeSet<String> = state
        .ledger
        .owned()
        .filter(|(_, l)| l.kind == dirsync::log::event::ObjectKind::Group)
        .map(|(_, l)| l.target_id.clone())
        .collect();
    let late: BTreeSet<String> = lab
        .view
        .all("Groups")
        .await
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_string())
        .filter(|id| !b_groups.contains(id))
        .collect();
    assert_eq!(late.len(), 2);

    // b's next cycle removes them, keeping its own, and records each removal.
    let head = lab.head().await;
    let v = lab.sync("b", &[]);
    assert_eq!(count(&v, "duplicates_removed"), 2, "{v}");
    assert_eq!(
        [
            count(&v, "created"),
            count(&v, "deleted"),
            count(&v, "matched")
        ],
        [0, 0, 0],
        "{v}"
    );
    let removed: Vec<_> = events(&lab, head)
        .await
        .into_iter()
        .filter_map(|(_, inst, _, ev)| match ev {
            Event::TargetDuplicateRemoved(d) => Some((inst, d)),
            _ => None,
        })
        .collect();
    assert_eq!(
        removed
            .iter()
            .map(|(_, d)| d.target_id.clone())
            .collect::<BTreeSet<_>>(),
        late
    );
    for (inst, d) in &removed {
        assert_eq!(inst, "b");
        assert_eq!(d.epoch, 2);
        assert_eq!(state.ledger.entries[&d.anchor].target_id, d.kept, "{d:?}");
    }
    // Exactly one target object per source object, the ledger's, with its members.
    let users = lab.view.all("Users").await;
    let groups = lab.view.all("Groups").await;
    assert_eq!((users.len(), groups.len()), (3, 2));
    let ids = |v: &[Value]| -> BTreeSet<String> {
        v.iter()
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&groups), b_groups);
    let owned: BTreeSet<String> = lab
        .state()
        .await
        .ledger
        .owned()
        .map(|(_, l)| l.target_id.clone())
        .collect();
    assert_eq!(&ids(&users) | &ids(&groups), owned);
    for g in &groups {
        assert_eq!(g["members"].as_array().map(Vec::len), Some(2), "{g}");
    }

    // Nothing left to do.
    let v = lab.sync("b", &[]);
    assert_eq!(
        [
            "created",
            "updated",
            "deleted",
            "matched",
            "failures",
            "duplicates_removed"
        ]
        .map(|k| count(&v, k)),
        [0; 6],
        "{v}"
    );
    let table = lab.cli(&["sync", "--instance", "b"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("DUPLICATES REMOVED"), "{table:?}");
    // The projections (the lease's start, the uncertain moment) rebuild the same from the log.
    let verify = lab.cli(&["replay", "--verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_waits_out_a_killed_holders_lease_and_its_requests() {
    let lab = E2e::ldap(2, "500").await;
    let proxy: ScimProxy = behind_proxy(
        &lab,
        ProxyRules {
            hold_posts_to: vec!["/Users".into()],
            ..Default::default()
        },
    )
    .await;
    let cfg = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{toml}lease = \"3s\"\n")).unwrap();

    // a claims a chunk, sends its two creates (held in the network) and is killed: its
    // lease is never completed.
    let mut child = std::process::Command::new(crate::common::bin())
        .args(["sync", "--instance", "a"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until("a's creates are in flight", async || proxy.held() == 2).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let lease = lab
        .state()
        .await
        .control
        .relationship
        .lease
        .expect("a's lease is open");
    assert_eq!(lease.instance, "a");
    let length = lease.until_us - lease.from_us;
    assert!(
        (2_900_000..=3_000_000).contains(&length),
        "the configured lease: {length}us"
    );
    // The network delivers them after all.
    proxy.set_rules(ProxyRules::default());
    assert_eq!(proxy.release("/Users"), 2);
    until("a's users reach the target", async || {
        lab.view.count("Users").await == 2
    })
    .await;

    // b waits for a's lease to end and for the longest deadline of a request sent under
    // it (the lease's 3 s), then takes a's users by their anchors.
    let before = proxy.requests().len();
    let (run, v) = lab.run("b", &["--take-over"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!([count(&v, "matched"), count(&v, "created")], [2, 2], "{v}");
    let b_writes: Vec<_> = proxy.requests()[before..]
        .iter()
        .filter(|r| r.method != "GET")
        .cloned()
        .collect();
    assert_eq!(b_writes.len(), 2, "the two groups");
    let waited_until = lease.until_us + length;
    for w in &b_writes {
        assert!(
            w.at.timestamp_micros() >= waited_until,
            "{} {} sent {}us before a's lease and its requests ended",
            w.method,
            w.target,
            waited_until - w.at.timestamp_micros()
        );
    }
    let users = lab.view.all("Users").await;
    let groups = lab.view.all("Groups").await;
    assert_eq!((users.len(), groups.len()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_creates_of_the_same_holder_are_removed_too() {
    let lab = E2e::ldap(2, "500").await;
    let proxy: ScimProxy = behind_proxy(
        &lab,
        ProxyRules {
            hold_posts_to: vec!["/Groups".into()],
            ..Default::default()
        },
    )
    .await;
    let cfg = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{toml}lease = \"3s\"\n")).unwrap();

    // The group creates get no answer within the lease: failed, maybe applied.
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!([count(&v, "created"), count(&v, "failures")], [2, 2], "{v}");
    assert_eq!(proxy.held(), 2);
    assert!(lab.state().await.control.relationship.uncertain.is_some());
    // The next cycle creates them (nothing in the target yet), then the first creates land.
    proxy.set_rules(ProxyRules::default());
    let v = lab.sync("a", &[]);
    assert_eq!(
        [count(&v, "created"), count(&v, "duplicates_removed")],
        [2, 0],
        "{v}"
    );
    assert_eq!(proxy.release("/Groups"), 2);
    until("the late groups reach the target", async || {
        lab.view.count("Groups").await == 4
    })
    .await;
    // The cycle that finds them asks for the two anchors whose creates were in doubt,
    // and lists neither users nor groups whole.
    let before = proxy.requests().len();
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "duplicates_removed"), 2, "{v}");
    let reads: Vec<String> = proxy.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.target.clone())
        .collect();
    assert!(
        reads.iter().all(|t| t.contains("filter=")),
        "only lookups: {reads:?}"
    );
    assert_eq!(
        reads.iter().filter(|t| t.contains("externalId")).count(),
        2,
        "one lookup per anchor in doubt: {reads:?}"
    );
    let owned: BTreeSet<String> = lab
        .state()
        .await
        .ledger
        .owned()
        .map(|(_, l)| l.target_id.clone())
        .collect();
    let groups = lab.view.all("Groups").await;
    assert_eq!(groups.len(), 2);
    assert!(groups
        .iter()
        .all(|g| owned.contains(g["id"].as_str().unwrap())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_late_copies_of_an_anchor_not_owned_yet_keep_the_oldest() {
    let lab = E2e::ldap(2, "500").await;
    let proxy: ScimProxy = behind_proxy(
        &lab,
        ProxyRules {
            hold_posts_to: vec!["/Groups".into()],
            ..Default::default()
        },
    )
    .await;
    let cfg = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{toml}lease = \"3s\"\n")).unwrap();

    // Two cycles send each group create and get no answer: nothing owned, four in flight.
    for _ in 0..2 {
        let (run, v) = lab.run("a", &[]);
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(count(&v, "failures"), 2, "{v}");
    }
    proxy.set_rules(ProxyRules::default());
    assert_eq!(proxy.release("/Groups"), 4);
    until("the late groups reach the target", async || {
        lab.view.count("Groups").await == 4
    })
    .await;
    // Oldest first per anchor, as the server dates them.
    let mut copies: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for g in lab.view.all("Groups").await {
        copies
            .entry(g["externalId"].as_str().unwrap().to_string())
            .or_default()
            .push((
                g["meta"]["created"].as_str().unwrap().to_string(),
                g["id"].as_str().unwrap().to_string(),
            ));
    }
    for c in copies.values_mut() {
        c.sort();
    }

    // The next cycle keeps the oldest copy of each and takes it; the other is removed.
    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!(
        [
            count(&v, "duplicates_removed"),
            count(&v, "matched"),
            count(&v, "created")
        ],
        [2, 2, 0],
        "{v}"
    );
    let state = lab.state().await;
    let removed: BTreeMap<String, (String, String)> = events(&lab, head)
        .await
        .into_iter()
        .filter_map(|(_, _, _, ev)| match ev {
            Event::TargetDuplicateRemoved(d) => Some((d.anchor, (d.kept, d.target_id))),
            _ => None,
        })
        .collect();
    for (anchor, c) in &copies {
        assert_eq!(c.len(), 2);
        assert_eq!(
            removed[anchor],
            (c[0].1.clone(), c[1].1.clone()),
            "{anchor}"
        );
        assert_eq!(state.ledger.entries[anchor].target_id, c[0].1);
    }
    assert_eq!(lab.view.count("Groups").await, 2);
}

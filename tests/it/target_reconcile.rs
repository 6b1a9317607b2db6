//! The target is checked, not believed (issue 18.2): `sync --full` and every `[sync]
//! reconcile_target` read the whole target and repair drift. Out-of-band changes are made
//! through scim2-server's own API, never through dirsync.

use serde_json::{json, Value};

use crate::lab::{ProxyRules, ScimProxy};
use crate::sync_export::E2e;
use crate::target_scim_differ::{assert_exact, behind_proxy};

const PEOPLE: &str = "ou=people,dc=example,dc=org";

fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// The reconcile part of a sync's JSON: missing, changed, duplicates found; recreated,
/// restored, removed, failed.
fn drift(v: &Value) -> [u64; 7] {
    let r = &v["reconcile"];
    assert!(r.is_object(), "no reconcile in {v}");
    [
        "missing",
        "changed",
        "duplicates",
        "recreated",
        "restored",
        "removed",
        "failed",
    ]
    .map(|k| count(r, k))
}

/// Add `[sync]` keys to the lab's configuration.
fn sync_keys(lab: &E2e, keys: &str) {
    let path = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        toml.replace("[sync]\n", &format!("[sync]\n{keys}\n")),
    )
    .unwrap();
}

/// A title and a group's name changed directly in scim2-server: a plain sync (the interval
/// not passed) believes the ledger and leaves them; `sync --full` restores them to the
/// mapped source values, and a second `sync --full` finds nothing (no drift is invented by
/// comparing what the server answers with what it was sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_changed_out_of_band_are_restored_by_sync_full() {
    let lab = E2e::ldap(3, "500").await;
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "created"), 5, "{v}");
    // Never reconciled before: the first cycle read the target, and found it exact.
    assert_eq!(drift(&v), [0; 7], "{v}");
    let users = lab.view.users_by_anchor().await;
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let id1 = users[&a1]["id"].as_str().unwrap().to_string();
    let status = lab
        .view
        .patch(
            "Users",
            &id1,
            json!([{"op": "replace", "path": "title", "value": "Chief"}]),
        )
        .await;
    assert_eq!(status / 100, 2, "{status}");
    let groups = lab.view.all("Groups").await;
    let team = groups.iter().find(|g| g["displayName"] == "team").unwrap();
    let status = lab
        .view
        .patch(
            "Groups",
            team["id"].as_str().unwrap(),
            json!([{"op": "replace", "path": "displayName", "value": "renamed"}]),
        )
        .await;
    assert_eq!(status / 100, 2, "{status}");

    // A plain sync within the interval does not read the whole target.
    let v = lab.sync("a", &[]);
    assert!(v.get("reconcile").is_none(), "{v}");
    assert_eq!(lab.view.users_by_anchor().await[&a1]["title"], "Chief");

    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [0, 2, 0, 0, 2, 0, 0], "{v}");
    assert_eq!([count(&v, "updated"), count(&v, "failures")], [0, 0], "{v}");
    assert_exact(&lab, 3, &[]).await;
    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [0; 7], "{v}");
    assert_eq!(count(&v, "updated"), 0, "{v}");
}

/// The case: the target wiped (a server restored empty). A plain sync within the
/// interval believes the ledger (exit 0, nothing to do); `sync --full` reads the target,
/// finds every owned object missing and creates each again with its source state (the
/// ledger holds the new ids, the groups the users' new ids); `audit drift` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_target_is_restored_by_sync_full() {
    let lab = E2e::ldap(50, "500").await;
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "created"), 52, "{v}");
    for res in ["Users", "Groups"] {
        for o in lab.view.all(res).await {
            let status = lab.view.delete(res, o["id"].as_str().unwrap()).await;
            assert_eq!(status / 100, 2, "{status}");
        }
    }
    assert_eq!(lab.view.count("Users").await, 0);
    let v = lab.sync("a", &[]);
    assert!(v.get("reconcile").is_none(), "{v}");
    // preflight no longer passes it.
    let (code, row) = target_content(&lab);
    assert_eq!(code, 1);
    assert_eq!(row["ok"], false, "{row}");
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .starts_with("52 of the 52 objects the ledger owns are missing from the target"),
        "{row}"
    );

    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [52, 0, 0, 52, 0, 0, 0], "{v}");
    assert_eq!(
        [
            count(&v, "recreated"),
            count(&v, "created"),
            count(&v, "failures")
        ],
        [52, 0, 0],
        "{v}"
    );
    assert_exact(&lab, 50, &[]).await;
    let state = lab.state().await;
    let users = lab.view.users_by_anchor().await;
    for (anchor, u) in &users {
        assert_eq!(&state.ledger.entries[anchor].target_id, &u["id"]);
    }
    // Recorded: found and repaired, for the audit.
    let r = state.control.relationship.reconciles.last().unwrap();
    assert_eq!(
        [r.found.missing, r.found.recreated, r.found.failed],
        [52, 52, 0]
    );
    let run = lab.cli(&["audit", "drift", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let a: Value = serde_json::from_str(&run.stdout).unwrap();
    let last = a["reconciles"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        [&last["missing"], &last["recreated"], &last["instance"]],
        [&json!(52), &json!(52), &json!("a")],
        "{a}"
    );
    let run = lab.cli(&["audit", "drift"]);
    assert!(run.stdout.contains("52"), "{run:?}");
    assert_eq!(lab.cli(&["audit", "drift", "--fail-if-any"]).code, 5);
    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [0; 7], "{v}");
    assert_eq!(lab.cli(&["audit", "drift", "--fail-if-any"]).code, 0);
    let (_, row) = target_content(&lab);
    assert_eq!(row["ok"], true, "{row}");
}

/// `preflight`'s exit code and its `target content` row.
fn target_content(lab: &E2e) -> (i32, Value) {
    let run = lab.cli(&["preflight", "--instance", "a", "--format", "json"]);
    let checks: Value = serde_json::from_str(&run.stdout).unwrap();
    let row = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "target content")
        .cloned()
        .unwrap_or_else(|| panic!("no target content row: {run:?}"));
    (run.code, row)
}

/// Objects carrying one of our anchors that the ledger does not know (a create delayed
/// past a take-over, a restore from backup) are duplicates: removed, each recorded, the
/// ledger's own objects untouched. Their deletions are the guard's like any other: above
/// the threshold the whole list is held (exit 3) until approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_carrying_our_anchor_are_removed_within_the_guard() {
    let lab = E2e::ldap(3, "2").await;
    lab.sync("a", &[]);
    let anchors: Vec<String> = user_anchors(&lab).await;
    let dup = |i: usize, name: &str| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": name,
            "externalId": anchors[i],
        })
    };
    lab.view.post("Users", dup(0, "copy1@example.org")).await;
    lab.view.post("Users", dup(1, "copy2@example.org")).await;
    lab.view.post("Users", dup(2, "copy3@example.org")).await;
    assert_eq!(lab.view.count("Users").await, 6);

    // Three deletions against a threshold of 2: held, nothing sent.
    let (run, v) = lab.run("a", &["--full"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(count(&v, "held"), 3, "{v}");
    assert_eq!(lab.view.count("Users").await, 6);
    let shown = lab.cli(&["deletions", "show", "--format", "json"]);
    let plans: Value = serde_json::from_str(&shown.stdout).unwrap();
    let hash = plans[0]["plan_hash"].as_str().unwrap().to_string();
    assert_eq!(plans[0]["count"], 3, "{plans}");
    let first = &plans[0]["deletions"][0];
    assert_eq!(first["kind"], "user", "{plans}");
    assert!(
        first["name"]
            .as_str()
            .unwrap()
            .starts_with("duplicate of u"),
        "{plans}"
    );
    let copy = lab
        .view
        .all("Users")
        .await
        .into_iter()
        .find(|u| u["id"] == first["target_id"])
        .unwrap();
    assert!(
        copy["userName"].as_str().unwrap().starts_with("copy"),
        "{copy}"
    );
    assert_eq!(lab.cli(&["deletions", "approve", "--plan", &hash]).code, 0);
    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [0, 0, 3, 0, 0, 3, 0], "{v}");
    assert_eq!(count(&v, "deleted"), 0, "{v}");
    assert_exact(&lab, 3, &[]).await;
    let state = lab.state().await;
    assert!(state.ledger.owned().count() == 5);

    // Within the threshold: removed at once.
    lab.view.post("Users", dup(0, "again@example.org")).await;
    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [0, 0, 1, 0, 0, 1, 0], "{v}");
    assert_exact(&lab, 3, &[]).await;
    let events = lab.events_after(0).await;
    assert_eq!(
        events.iter().filter(|e| *e == "DuplicateRemoved").count(),
        4
    );
    // The rolling 24 hours count it: two more (within the threshold alone) are held.
    lab.view.post("Users", dup(1, "more1@example.org")).await;
    lab.view.post("Users", dup(2, "more2@example.org")).await;
    let (run, v) = lab.run("a", &["--full"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        v["held_reason"].as_str().unwrap().contains("last 24 hours"),
        "{v}"
    );
    assert_eq!(lab.view.count("Users").await, 5);
}

/// u1..u3's anchors.
async fn user_anchors(lab: &E2e) -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..=3 {
        out.push(lab.anchor(&format!("uid=u{i},{PEOPLE}")).await);
    }
    out
}

/// Listings of the whole target (a GET of Users or Groups without a filter, not the
/// probe's single resource) among the
/// requests the proxy saw from index `from` on.
fn listings(proxy: &ScimProxy, from: usize) -> usize {
    proxy.requests()[from..]
        .iter()
        .filter(|r| {
            r.method == "GET"
                && (r.target.contains("/Users?") || r.target.contains("/Groups?"))
                && !r.target.contains("filter=")
                // The probe asks for one resource.
                && !r.target.ends_with("count=1")
        })
        .count()
}

/// `[sync] reconcile_target`: once it has passed since the last reconcile recorded in the
/// log (by any instance: a take-over does not start it again), a plain sync reads the
/// target and repairs; before, it reads no listing at all (its cost stays independent of
/// the directory's size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sync_reconciles_once_the_interval_has_passed() {
    let lab = E2e::ldap(2, "500").await;
    let proxy = behind_proxy(&lab, ProxyRules::default()).await;
    sync_keys(&lab, "reconcile_target = \"10s\"");
    lab.sync("a", &[]);
    assert!(listings(&proxy, 0) >= 2);
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let id1 = lab.view.users_by_anchor().await[&a1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = lab
        .view
        .patch(
            "Users",
            &id1,
            json!([{"op": "replace", "path": "title", "value": "Chief"}]),
        )
        .await;
    assert_eq!(status / 100, 2);
    let seen = proxy.requests().len();
    let v = lab.sync("a", &[]);
    assert!(v.get("reconcile").is_none(), "{v}");
    assert_eq!(listings(&proxy, seen), 0, "{:?}", &proxy.requests()[seen..]);
    // A take-over lists the target for duplicates by anchor (fencing), but it is no
    // reconcile: nothing is restored and the interval goes on.
    let v = lab.sync("b", &["--take-over"]);
    assert!(v.get("reconcile").is_none(), "{v}");
    assert_eq!(lab.view.users_by_anchor().await[&a1]["title"], "Chief");
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let v = lab.sync("b", &[]);
    assert_eq!(drift(&v), [0, 1, 0, 0, 1, 0, 0], "{v}");
    assert_exact(&lab, 2, &[]).await;
    // Reconciled: the interval starts again. (b still lists for duplicates by anchor in
    // the 20 minutes after its take-over, the fencing watch, but reconciles nothing.)
    let v = lab.sync("b", &[]);
    assert!(v.get("reconcile").is_none(), "{v}");
    assert_exact(&lab, 2, &[]).await;
}

/// An owned user deleted out of band while a copy carrying its anchor is in the target
/// (say, restored from a backup under another userName): the copy is taken back (recorded
/// as a match with its id) and given the source's attributes, instead of a second copy
/// being created beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_carrying_the_anchor_of_a_missing_object_is_taken_back() {
    let lab = E2e::ldap(3, "500").await;
    lab.sync("a", &[]);
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let old = lab.view.users_by_anchor().await[&a1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lab.view.delete("Users", &old).await / 100, 2);
    let copy = lab
        .view
        .post(
            "Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "restored@example.org",
                "externalId": a1,
                "title": "Temp",
            }),
        )
        .await;
    let copy_id = copy["id"].as_str().unwrap().to_string();
    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [1, 0, 0, 1, 0, 0, 0], "{v}");
    // The copy's attributes, and both groups' member (the copy's id), are updates.
    assert_eq!(
        [
            count(&v, "created"),
            count(&v, "updated"),
            count(&v, "matched"),
            count(&v, "failures")
        ],
        [0, 3, 0, 0],
        "{v}"
    );
    assert_exact(&lab, 3, &[]).await;
    assert_eq!(
        lab.view.users_by_anchor().await[&a1]["id"],
        copy_id.as_str()
    );
    assert_eq!(lab.state().await.ledger.entries[&a1].target_id, copy_id);
    let v = lab.sync("a", &["--full"]);
    assert_eq!(drift(&v), [0; 7], "{v}");
}

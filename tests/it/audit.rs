//! `dirsync audit` and `dirsync replay` history commands: missed deletions after a stopped
//! sync window (slapd and Samba AD DC into scim2-server), replay at every tenth seq of a
//! recorded history, `replay --diff`, `--to-target` into an empty tenant, and `--what-if`.

use std::collections::{BTreeMap, BTreeSet};

use dirsync::audit::history;
use dirsync::log::event::*;
use dirsync::log::store::Batch;
use dirsync::log::{NewEvent, Store};
use dirsync::project::replay::{self, Until};
use dirsync::project::{Meta, State};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::both_backends;
use crate::common::{Backend, Fresh, Run};
use crate::lab::Scim;
use crate::sync_export::{E2e, ScimView, Source};

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";
const ALUMNI: &str = "ou=alumni,dc=example,dc=org";
const STAFF: &str = "OU=Staff,DC=test,DC=lan";

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// `audit missed-deletes ARGS --format json`: the exit code and the listed objects by anchor.
fn missed(lab: &E2e, extra: &[&str]) -> (i32, BTreeMap<String, Value>) {
    let mut args = vec!["audit", "missed-deletes", "--format", "json"];
    args.extend_from_slice(extra);
    let run = lab.cli(&args);
    assert!(run.code == 0 || run.code == 5, "{run:?}");
    let v = json(&run);
    let list: BTreeMap<String, Value> = v["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["anchor"].as_str().unwrap().to_string(), m.clone()))
        .collect();
    assert_eq!(v["count"].as_u64().unwrap() as usize, list.len());
    (run.code, list)
}

fn keys(m: &BTreeMap<String, Value>) -> BTreeSet<String> {
    m.keys().cloned().collect()
}

fn set(v: &[&String]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_a_stopped_window_is_audited_exactly_then_cleared_by_a_sync() {
    let lab = E2e::ldap(6, "500").await;
    let s = lab.slapd();
    s.ldapadd(&format!(
        "dn: {ALUMNI}\nobjectClass: organizationalUnit\nou: alumni\n\n"
    ))
    .await;
    lab.sync("a", &[]);
    let u = |i: u32| format!("uid=u{i},{PEOPLE}");
    let (a3, a4, a5) = (
        lab.anchor(&u(3)).await,
        lab.anchor(&u(4)).await,
        lab.anchor(&u(5)).await,
    );
    let (code, list) = missed(&lab, &["--from-log", "--fail-if-any"]);
    assert_eq!((code, list.len()), (0, 0), "in step after a sync");

    // The window: sync stops; two deletions and a move out of scope happen.
    s.ldapdelete(&u(3)).await;
    s.ldapdelete(&u(4)).await;
    s.ldapmodrdn(&u(5), "uid=u5", Some(ALUMNI)).await;

    // The log alone has not seen them yet.
    let (code, list) = missed(&lab, &["--from-log", "--fail-if-any"]);
    assert_eq!((code, list.len()), (0, 0), "{list:?}");

    // Fresh evidence: a full import in staging finds exactly the three. Seen after a's
    // last sync, they are pending (a's next cycle exports them): --fail-if-any passes.
    let (code, list) = missed(&lab, &["--refresh", "--instance", "a", "--fail-if-any"]);
    assert_eq!(code, 0);
    assert_eq!(keys(&list), set(&[&a3, &a4, &a5]));
    for a in [&a3, &a4] {
        let m = &list[a];
        let ev = m["evidence"].as_str().unwrap();
        assert!(
            ev == "absent-from-full-import" || ev == "rfc4533-delete",
            "{m}"
        );
        assert_eq!(m["kind"], "user");
        assert_eq!(
            (&m["state"], &m["status"], &m["status_detail"]),
            (
                &json!("unsent"),
                &json!("pending"),
                &json!("recorded after a's last completed sync: its next cycle exports it")
            ),
            "{m}"
        );
    }
    // a stopped: nobody will export them. They are missed.
    assert_eq!(lab.cli(&["instance", "stop", "a"]).code, 0);
    let (code, stopped) = missed(&lab, &["--fail-if-any"]);
    assert_eq!(code, 5);
    assert_eq!(keys(&stopped), keys(&list));
    assert!(
        stopped.values().all(|m| m["status"] == "missed"
            && m["status_detail"] == "the holder a is stopped, and every other instance is fenced"),
        "{stopped:?}"
    );
    assert_eq!(lab.cli(&["instance", "start", "a"]).code, 0);
    assert_eq!(list[&a3]["name"], "u3@example.org");
    let m5 = &list[&a5];
    assert_eq!(m5["evidence"], "left-scope");
    assert!(m5["evidence_detail"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains(ALUMNI));
    for m in list.values() {
        assert_eq!(m["gap"]["from"]["instance"], "a", "{m}");
        assert!(m["gap"]["to"].is_null(), "no sync since: {m}");
        assert!(
            m["last_seen_live"]["seq"].as_u64().unwrap() < m["recorded"]["seq"].as_u64().unwrap()
        );
        // a's cursor predates the deletions (OpenLDAP has no tombstone lifetime).
        assert_eq!(m["revealable_by"], serde_json::json!(["a"]), "{m}");
    }
    // Now in the log, so --from-log sees them too; CSV has a header and a row each.
    let (_, from_log) = missed(&lab, &["--from-log"]);
    assert_eq!(keys(&from_log), keys(&list));
    let csv = lab.cli(&["audit", "missed-deletes", "--from-log", "--format", "csv"]);
    assert_eq!(csv.code, 0, "{csv:?}");
    assert_eq!(csv.stdout.lines().count(), 4, "{csv:?}");
    assert!(csv.stdout.starts_with("ANCHOR,NAME,KIND,EVIDENCE"));
    let table = lab.cli(&["audit", "missed-deletes", "--from-log"]);
    assert!(table.stdout.contains("left-scope"), "{table:?}");

    // The next sync exports the deletions: nothing is missed any more.
    let v = lab.sync("a", &[]);
    assert_eq!(v["deleted"], 3, "{v}");
    let (code, list) = missed(&lab, &["--refresh", "--instance", "a", "--fail-if-any"]);
    assert_eq!((code, list.len()), (0, 0), "{list:?}");

    // The gap: three deletions recorded between a's two syncs.
    let run = lab.cli(&["audit", "gaps", "--longer-than", "0s", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let g = json(&run);
    let a = g["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "a")
        .unwrap();
    assert_eq!(a["syncs"], 2, "{a}");
    let windows = a["windows"].as_array().unwrap();
    assert_eq!(windows[0]["deletions"], 3, "{a}");
    assert!(windows.last().unwrap()["to"].is_null());
}

/// Issue 22.3: the audit without --refresh reads the log and writes nothing (no event, no
/// instance named after the host), and says as of which import it speaks; only
/// `--refresh --instance I` imports first, as an existing instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_the_audit_reads_and_only_refresh_writes() {
    let lab = E2e::ldap(6, "500").await;
    lab.sync("a", &[]);
    let a3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    lab.slapd().ldapdelete(&format!("uid=u3,{PEOPLE}")).await;
    let instances = |lab: &E2e| {
        let run = lab.cli(&["instance", "list", "--format", "json"]);
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout
    };
    let (head, listed) = (lab.head().await, instances(&lab));
    let state = lab.state().await;
    let last_import = state.control.instances.instances["a"]
        .last_import
        .unwrap()
        .0;
    for _ in 0..2 {
        let run = lab.cli(&[
            "audit",
            "missed-deletes",
            "--fail-if-any",
            "--format",
            "json",
        ]);
        assert_eq!(run.code, 0, "{run:?}");
        let v = json(&run);
        assert_eq!(
            v["as_of"],
            json!({
                "seq": head,
                "last_import": {"instance": "a", "seq": last_import.seq,
                    "at": dirsync::output::time(last_import.at_us), "full": true},
                "last_full_import": {"seq": last_import.seq,
                    "at": dirsync::output::time(last_import.at_us)},
            }),
            "{v}"
        );
        assert_eq!((&v["count"], &v["evidence"]), (&json!(0), &json!("log")));
        let table = lab.cli(&["audit", "missed-deletes"]);
        assert_eq!(
            table.stdout.lines().next().unwrap(),
            format!(
                "as of seq {head}: the last import was a full import by a at {} (seq {})",
                dirsync::output::time(last_import.at_us),
                last_import.seq
            )
        );
    }
    assert_eq!(lab.head().await, head, "the audit appended nothing");
    assert_eq!(instances(&lab), listed, "and created no instance");
    // --refresh needs an instance, --instance needs --refresh, and the instance must exist.
    for args in [
        &["--refresh"][..],
        &["--instance", "a"],
        &["--refresh", "--from-log", "--instance", "a"],
    ] {
        let mut all = vec!["audit", "missed-deletes"];
        all.extend_from_slice(args);
        let run = lab.cli(&all);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    let run = lab.cli(&[
        "audit",
        "missed-deletes",
        "--refresh",
        "--instance",
        "ghost",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        "dirsync: --refresh --instance ghost: no such instance (see `dirsync instance list`); the audit imports as an existing one\n"
    );
    assert_eq!(lab.head().await, head);
    assert_eq!(instances(&lab), listed);

    // --refresh imports as a: the deletion is found, pending a's next cycle.
    let (code, list) = missed(&lab, &["--refresh", "--instance", "a", "--fail-if-any"]);
    assert_eq!(code, 0);
    assert_eq!(keys(&list), set(&[&a3]));
    assert_eq!(list[&a3]["status"], "pending");
    assert!(lab.head().await > head);
    let after = lab.head().await;
    // Read again from the log: the same row, but for what a cursor could still reveal (a's
    // cursor moved past the deletion with that import).
    let (code, mut again) = missed(&lab, &["--fail-if-any"]);
    assert_eq!(again[&a3]["revealable_by"], json!([]));
    again.get_mut(&a3).unwrap()["revealable_by"] = json!(["a"]);
    assert_eq!((code, &again), (0, &list));
    assert_eq!(lab.head().await, after);
    // The next sync of a exports it.
    assert_eq!(lab.sync("a", &[])["deleted"], 1);
    let (_, list) = missed(&lab, &[]);
    assert!(list.is_empty(), "{list:?}");
}

/// A retired instance's last window ends at its retirement, not "open (now)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_instance_s_gap_ends_at_retirement() {
    let lab = E2e::ldap(2, "500").await;
    lab.sync("old", &[]);
    lab.sync("new", &["--take-over"]);
    assert_eq!(lab.cli(&["instance", "retire", "old"]).code, 0);
    let retired = lab.head().await;
    lab.sync("new", &[]);
    let run = lab.cli(&["audit", "gaps", "--longer-than", "0s", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let g = json(&run);
    let old = g["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "old")
        .unwrap();
    assert_eq!(old["status"], "retired");
    let last = old["windows"].as_array().unwrap().last().unwrap().clone();
    assert!(last["to"].is_null(), "{last}");
    assert_eq!(last["retired"]["seq"], retired, "{last}");
    let table = lab.cli(&["audit", "gaps", "--longer-than", "0s"]);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("old "))
        .unwrap_or_else(|| panic!("{table:?}"));
    assert!(
        row.contains("retired ") && row.contains(&format!("(seq {retired})")),
        "{row}"
    );
    assert!(!row.contains("open (now)"), "{row}");
    let new_row = table
        .stdout
        .lines()
        .rfind(|l| l.starts_with("new "))
        .unwrap();
    assert!(new_row.contains("open (now)"), "{new_row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_deletions_are_classified_held() {
    let lab = E2e::ldap(4, "1").await;
    lab.sync("a", &[]);
    let u = |i: u32| format!("uid=u{i},{PEOPLE}");
    let (a3, a4) = (lab.anchor(&u(3)).await, lab.anchor(&u(4)).await);
    lab.slapd().ldapdelete(&u(3)).await;
    lab.slapd().ldapdelete(&u(4)).await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    let plan = v["held_plan"].as_str().unwrap().to_string();
    // The held sync completed without them: missed until someone acts.
    let (code, list) = missed(&lab, &["--from-log", "--fail-if-any"]);
    assert_eq!(code, 5);
    assert_eq!(keys(&list), set(&[&a3, &a4]));
    for m in list.values() {
        assert_eq!(m["state"], "held", "{m}");
        assert_eq!(m["state_detail"], format!("plan {plan}"));
        assert_eq!(m["status"], "missed", "{m}");
        // The held sync exported its creates and updates ([sync] hold = "deletions", the
        // default): it completed, and closes the gap.
        assert_eq!(m["gap"]["to"]["instance"], "a", "{m}");
    }
    // Approved: a's next cycle exports them.
    assert_eq!(lab.cli(&["deletions", "approve", "--plan", &plan]).code, 0);
    let (code, list) = missed(&lab, &["--fail-if-any"]);
    assert_eq!(code, 0);
    assert!(
        list.values()
            .all(|m| m["state"] == "unsent" && m["status"] == "pending"),
        "{list:?}"
    );
    lab.sync("a", &[]);
    let (code, list) = missed(&lab, &["--from-log", "--fail-if-any"]);
    assert_eq!((code, list.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_directory_tombstones_expunged_tombstones_and_moves() {
    let mut lab = E2e::ad().await;
    // More users, so that three deletions do not trip the guard's shrunk-source rule.
    let mut ldif = String::new();
    for i in 5..=8 {
        ldif.push_str(&format!(
            "dn: CN=u{i},{STAFF}\nobjectClass: user\nsAMAccountName: u{i}\n\
             userPrincipalName: u{i}@test.lan\nuserAccountControl: 512\n\n"
        ));
    }
    lab.samba().ldapadd(&ldif).await;
    lab.sync("a", &[]);
    let cn = |c: &str| format!("CN={c},{STAFF}");
    let (a2, a3, a4) = (
        lab.anchor(&cn("u2")).await,
        lab.anchor(&cn("u3")).await,
        lab.anchor(&cn("u4")).await,
    );
    // The window: u4 deleted and its tombstone expunged, u3 deleted (tombstone kept), u2
    // moved out of OU=Staff.
    let Source::Ad(samba) = &mut lab.source else {
        unreachable!()
    };
    samba.ldapdelete(&cn("u4")).await;
    samba.expunge_tombstones().await;
    samba.ldapdelete(&cn("u3")).await;
    let users = samba.users_dn().to_string();
    samba.ldapmodrdn(&cn("u2"), "CN=u2", Some(&users)).await;

    // A delta (staging) sees the tombstone and the move, not the expunged deletion.
    let v = lab.sync("a", &["--staging"]);
    assert_eq!(v["import"]["mode"], "delta", "{v}");
    let (code, list) = missed(&lab, &["--from-log", "--fail-if-any"]);
    assert_eq!(code, 0, "pending: a's next cycle exports them");
    assert_eq!(keys(&list), set(&[&a2, &a3]), "{list:?}");
    assert_eq!(list[&a3]["evidence"], "tombstone");
    assert!(list[&a3]["deleted_at"].is_string(), "{}", list[&a3]);
    assert_eq!(list[&a2]["evidence"], "left-scope");
    assert!(list[&a2]["evidence_detail"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("cn=users"));

    // A full import finds the expunged one as well; with a stopped, all three are missed.
    assert_eq!(lab.cli(&["instance", "stop", "a"]).code, 0);
    let (code, list) = missed(&lab, &["--refresh", "--instance", "a", "--fail-if-any"]);
    assert_eq!(code, 5);
    assert_eq!(keys(&list), set(&[&a2, &a3, &a4]));
    assert_eq!(list[&a4]["evidence"], "absent-from-full-import");
    assert_eq!(list[&a3]["evidence"], "tombstone");
    for m in list.values() {
        assert_eq!(m["state"], "unsent", "{m}");
        assert_eq!(m["status"], "missed", "{m}");
        assert!(m["gap"]["to"].is_null(), "{m}");
    }
    assert_eq!(lab.cli(&["instance", "start", "a"]).code, 0);

    let v = lab.sync("a", &[]);
    assert_eq!(v["deleted"], 3, "{v}");
    let (code, list) = missed(&lab, &["--refresh", "--instance", "a", "--fail-if-any"]);
    assert_eq!((code, list.len()), (0, 0), "{list:?}");
    // Samba reports its tombstone lifetime: the gaps are set against it.
    let g = json(&lab.cli(&["audit", "gaps", "--format", "json"]));
    assert!(g["tombstone_lifetime_days"].as_u64().unwrap() > 0, "{g}");
    assert_eq!(
        lab.cli(&["audit", "gaps", "--fail-if-any"]).code,
        0,
        "nothing near the lifetime"
    );
}

/// The users and groups of a SCIM service, comparable across services: by externalId, with
/// member ids replaced by the members' externalIds.
async fn scim_picture(view: &ScimView) -> BTreeMap<String, Value> {
    let users = view.users_by_anchor().await;
    let groups = view.groups_by_anchor().await;
    let anchor_of: BTreeMap<String, String> = users
        .iter()
        .chain(groups.iter())
        .map(|(a, r)| (r["id"].as_str().unwrap().to_string(), a.clone()))
        .collect();
    let mut out = BTreeMap::new();
    for (a, u) in users {
        out.insert(
            a,
            serde_json::json!({"userName": u["userName"], "name": u["name"], "title": u["title"],
                "active": u["active"], "emails": u["emails"], "displayName": u["displayName"]}),
        );
    }
    for (a, g) in groups {
        let members: BTreeSet<String> = g["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|x| anchor_of[x["value"].as_str().unwrap()].clone())
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            a,
            serde_json::json!({"displayName": g["displayName"], "members": members}),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_target_rebuilds_an_empty_tenant_like_the_live_one() {
    let lab = E2e::ldap(5, "500").await;
    lab.sync("a", &[]);
    let s = lab.slapd();
    s.ldapmodify(&format!(
        "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n\
         dn: cn=team,{GROUPS}\nchangetype: modify\nadd: member\nmember: uid=u3,{PEOPLE}\n\n"
    ))
    .await;
    s.ldapdelete(&format!("uid=u5,{PEOPLE}")).await;
    lab.sync("a", &[]);
    let live = scim_picture(&lab.view).await;
    assert_eq!(live.len(), 6);

    // A second configuration: same store and source, an empty tenant as the target.
    let fresh = Scim::tenant().await;
    let dir = lab.dir.path();
    std::fs::write(dir.join("token2"), format!("{}\n", fresh.token())).unwrap();
    let cfg = std::fs::read_to_string(dir.join("dirsync.toml")).unwrap();
    let (head_part, rest) = cfg.split_once("[target]").unwrap();
    let sync_part = &rest[rest.find("[sync]").unwrap()..];
    std::fs::write(
        dir.join("dr.toml"),
        format!(
            "{head_part}[target]\nkind = \"scim\"\nurl = \"{}\"\ntoken_file = \"token2\"\n{sync_part}",
            fresh.base_url()
        ),
    )
    .unwrap();
    let view = ScimView::new(&fresh);
    let dr = |args: &[&str]| {
        let mut a = vec!["--config", "dr.toml"];
        a.extend_from_slice(args);
        lab.cli(&a)
    };

    // Dry run: the plan creates everything, nothing is written anywhere.
    let head = lab.head().await;
    let run = dr(&[
        "replay",
        "--to-target",
        "--instance",
        "a",
        "--dry-run",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json(&run)["create"], 6, "{run:?}");
    assert_eq!(lab.head().await, head);
    assert_eq!(view.count("Users").await, 0);

    // Another instance may not rebuild while a holds the relationship.
    let run = dr(&["replay", "--to-target", "--instance", "b"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(lab.head().await, head, "a fenced rebuild writes nothing");

    let run = dr(&[
        "replay",
        "--to-target",
        "--instance",
        "a",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json(&run)["created"], 6, "{run:?}");
    assert_eq!(scim_picture(&view).await, live);
    assert!(lab
        .events_after(head)
        .await
        .contains(&"TargetReset".to_string()));
    // The ledger now describes the rebuilt tenant: a sync there has nothing to do.
    let run = dr(&["sync", "--instance", "a", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = json(&run);
    assert_eq!(
        (v["created"].as_u64(), v["updated"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    let state = lab.state().await;
    let owned: BTreeSet<String> = state.ledger.owned().map(|(a, _)| a.clone()).collect();
    assert_eq!(owned, live.keys().cloned().collect());

    // A target holding an object whose anchor the source no longer has is not a fresh
    // one: the old tenant still has u4, now deleted in the source. Refused, nothing written.
    s.ldapdelete(&format!("uid=u4,{PEOPLE}")).await;
    let run = dr(&["sync", "--instance", "a", "--staging"]);
    assert_eq!(run.code, 0, "{run:?}");
    let head = lab.head().await;
    let run = lab.cli(&["replay", "--to-target", "--instance", "a"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not a fresh one"), "{run:?}");
    assert_eq!(lab.head().await, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_a_narrower_scope_lists_exactly_the_objects_outside_it() {
    let lab = E2e::ldap(4, "500").await;
    lab.sync("a", &[]);
    let u3 = format!("uid=u3,{PEOPLE}");
    let dir = lab.dir.path();
    let cfg = std::fs::read_to_string(dir.join("dirsync.toml")).unwrap();
    let wide = format!("include = [\"{PEOPLE}\", \"{GROUPS}\"]");
    assert!(cfg.contains(&wide));
    std::fs::write(
        dir.join("narrow.toml"),
        cfg.replace(
            &wide,
            &format!("include = [\"{PEOPLE}\"]\nexclude = [\"{u3}\"]"),
        ),
    )
    .unwrap();
    let run = lab.cli(&["replay", "--what-if", "narrow.toml", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = json(&run);
    let leave: BTreeSet<String> = v["leave"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["anchor"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = [
        lab.anchor(&u3).await,
        lab.anchor(&format!("cn=team,{GROUPS}")).await,
        lab.anchor(&format!("cn=crew,{GROUPS}")).await,
    ]
    .into();
    assert_eq!(leave, expected);
    assert_eq!(v["join"], serde_json::json!([]));
    assert_eq!(v["change"], serde_json::json!([]));
    // The same configuration changes nothing.
    let run = lab.cli(&["replay", "--what-if", "dirsync.toml", "--format", "json"]);
    let v = json(&run);
    assert_eq!(v["leave"], serde_json::json!([]), "{v}");
    let csv = lab.cli(&["replay", "--what-if", "narrow.toml", "--format", "csv"]);
    assert_eq!(csv.stdout.lines().count(), 4, "{csv:?}");
    // A what-if config that cannot be read is bad input.
    assert_eq!(lab.cli(&["replay", "--what-if", "nope.toml"]).code, 2);
}

/// A random history: imports, changes, deletions, exports, runs, cursors, target resets.
fn random_event(rng: &mut StdRng) -> NewEvent {
    let anchor = format!("a{}", rng.gen_range(0..25));
    let inst = ["old", "new"][rng.gen_range(0..2)];
    let text = |rng: &mut StdRng| vec![AttrValue::Text(format!("v{}", rng.gen_range(0..4)).into())];
    let ev = match rng.gen_range(0..20) {
        0..=4 => Event::ObjectImported(ObjectImported {
            object: SourceObject {
                anchor: anchor.clone(),
                kind: ObjectKind::User,
                dn: format!("uid={anchor},ou=p,dc=t"),
                attrs: Attrs::from([("uid".into(), text(rng)), ("title".into(), text(rng))]),
                members: BTreeSet::new(),
            },
            returned: false,
        }),
        5..=7 => Event::ObjectChanged(ObjectChanged {
            anchor,
            set: Attrs::from([("title".into(), text(rng))]),
            ..Default::default()
        }),
        8 | 9 => Event::ObjectDeleted(ObjectDeleted {
            anchor,
            evidence: DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        }),
        10..=13 => Event::ExportApplied(ExportApplied {
            epoch: 1,
            anchor,
            kind: ObjectKind::User,
            op: [ExportOp::Create, ExportOp::Update, ExportOp::Delete][rng.gen_range(0..3)],
            target_id: format!("t{}", rng.gen_range(0..50)),
            state: Some(
                serde_json::json!({"kind": "user", "user_name": format!("u{}", rng.gen_range(0..5)), "active": true}),
            ),
            etag: None,
        }),
        14 => Event::TargetReset(TargetReset {
            reason: "test".into(),
        }),
        15 => Event::CursorAdvanced(CursorAdvanced {
            kind: "rfc4533".into(),
            cookie: format!("{}", rng.gen::<u16>()),
        }),
        16 => Event::SyncRunStarted(SyncRunStarted {
            run_id: "r".into(),
            full: false,
            mode: ["sync", "staging"][rng.gen_range(0..2)].into(),
        }),
        17 => Event::SyncRunCompleted(SyncRunCompleted {
            run_id: "r".into(),
            ..Default::default()
        }),
        18 => Event::DeletionsHeld(DeletionsHeld {
            plan_hash: format!("h{}", rng.gen_range(0..3)),
            anchors: vec![anchor],
            reason: "t".into(),
        }),
        _ => Event::ExportFailed(ExportFailed {
            epoch: 1,
            anchor,
            op: ExportOp::Delete,
            status: Some(500),
            error: "e".into(),
        }),
    };
    let stream = match &ev {
        Event::ExportApplied(_) | Event::ExportFailed(_) | Event::TargetReset(_) => {
            stream::TARGET.to_string()
        }
        Event::CursorAdvanced(_) => stream::cursor(inst),
        Event::SyncRunStarted(_) | Event::SyncRunCompleted(_) => stream::instance(inst),
        Event::DeletionsHeld(_) => stream::GUARD.to_string(),
        _ => stream::SOURCE.to_string(),
    };
    NewEvent::new(stream, inst, ev)
}

/// Checkpoints on a grid of this many events in this test (the product's is 100,000).
const GRID: u64 = 20;

async fn replay_at_every_tenth_seq_equals_the_recorded_projections(backend: Backend) {
    let f = Fresh::new(backend).await;
    let mut rng = StdRng::seed_from_u64(6);
    // The projections as they were after every seq, kept while the history is recorded.
    let mut recorded = vec![State::default()];
    let mut live = State::default();
    while live.seq < 400 {
        let n = rng.gen_range(1..8);
        let batch: Vec<NewEvent> = (0..n).map(|_| random_event(&mut rng)).collect();
        store_append(&f, batch).await;
        for e in f.store.read(live.seq, 100).await.unwrap() {
            let meta = Meta {
                seq: e.seq,
                instance: &e.instance,
                recorded_at_us: e.recorded_at_us,
            };
            live.apply(&meta, e.decode().unwrap());
            recorded.push(live.clone());
        }
        // What commands do: refresh the stored projections (and the checkpoints).
        let stored = replay::current_tuned(
            &f.store,
            replay::Tuning {
                threshold: 25,
                every: GRID,
            },
        )
        .await
        .unwrap();
        assert_eq!(*stored, live, "stored projections at seq {}", live.seq);
    }
    let head = live.seq;
    for n in (0..=head).step_by(10) {
        let at = replay::at_every(&f.store, Until::Seq(n), GRID, None)
            .await
            .unwrap();
        assert_eq!(
            at.differences(&recorded[n as usize]),
            Vec::<String>::new(),
            "seq {n}"
        );
        assert_eq!(at, recorded[n as usize], "seq {n}");
    }
    // By time: the last event recorded at or before the time (a batch shares its time).
    let events = f.store.read(0, 1000).await.unwrap();
    for e in events.iter().step_by(37) {
        let t = chrono::DateTime::from_timestamp_micros(e.recorded_at_us).unwrap();
        let last = events
            .iter()
            .take_while(|x| x.recorded_at_us <= e.recorded_at_us)
            .last()
            .unwrap()
            .seq;
        let at = replay::at_every(&f.store, Until::Time(t), GRID, None)
            .await
            .unwrap();
        assert_eq!(at, recorded[last as usize], "time of seq {}", e.seq);
    }
    // Through the command, from the stored state and from seq 0.
    for n in [0, 50, 130, head] {
        let run = f.cli(&["replay", "--until", &n.to_string(), "--format", "json"]);
        assert_eq!(run.code, 0, "{run:?}");
        // The projections as JSON output shows them: log points as {"seq", "at"}.
        let got: Value = serde_json::from_str(&run.stdout).unwrap();
        let want = dirsync::output::json_value(&recorded[n as usize]).unwrap();
        assert_eq!(got, want, "replay --until {n}");
    }
    // --diff between two points is the diff of the recorded projections.
    let run = f.cli(&["replay", "--diff", "100", "300", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let got: Value = json(&run);
    let want = dirsync::output::json_value(&history::diff(&recorded[100], &recorded[300])).unwrap();
    assert_eq!(got, want);
    assert!(
        !history::diff(&recorded[100], &recorded[300])
            .objects
            .is_empty(),
        "a history that changes"
    );
    // CSV is for audits and history only.
    assert_eq!(f.cli(&["instance", "list", "--format", "csv"]).code, 2);
    assert_eq!(
        f.cli(&["replay", "--diff", "1", "x", "--format", "json"])
            .code,
        2
    );
    // Checkpoints were kept on the grid.
    assert!(f
        .store
        .load_snapshot(&replay::checkpoint_name(GRID))
        .await
        .unwrap()
        .is_some());
}

async fn store_append(f: &Fresh, events: Vec<NewEvent>) {
    f.store.append(Batch::new(events)).await.unwrap();
}

both_backends!(replay_at_every_tenth_seq_equals_the_recorded_projections);

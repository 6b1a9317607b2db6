//! Issue 20, point 5: a change of scope or mapping applies itself. The effective
//! configuration is recorded (`EffectiveConfigRecorded`); a change that needs data the log
//! does not hold makes the next `sync` a full import by itself, the reason recorded; a
//! narrower one is evaluated over the log; `replay --what-if` names the same objects the
//! real sync then changes. Against slapd and scim2-server.

use std::collections::BTreeSet;

use dirsync::config::Config;
use dirsync::log::event::{
    ConfigPart, DeletionEvidence, EffectiveConfigRecorded, Event, ExportOp, ObjectDeleted,
};
use dirsync::log::Store;
use serde_json::{json, Value};

use crate::common::Run;
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// The events after `seq`, decoded.
async fn events_after(lab: &E2e, seq: u64) -> Vec<Event> {
    lab.store()
        .await
        .read(seq, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.decode().unwrap())
        .collect()
}

/// The configuration records recorded after `seq`.
async fn records_after(lab: &E2e, seq: u64) -> Vec<EffectiveConfigRecorded> {
    events_after(lab, seq)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::EffectiveConfigRecorded(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// Anchors exported with `op` after `seq`.
async fn exported(lab: &E2e, seq: u64, op: ExportOp) -> BTreeSet<String> {
    events_after(lab, seq)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ExportApplied(x) if x.op == op => Some(x.anchor),
            _ => None,
        })
        .collect()
}

/// What `dirsync.toml` as it is now records: the scope and mapping it makes effective.
fn record_of(
    lab: &E2e,
    changed: Vec<ConfigPart>,
    full_import: Option<&str>,
) -> EffectiveConfigRecorded {
    let cfg = Config::load(&lab.dir.path().join("dirsync.toml")).unwrap();
    let src = cfg.source().unwrap();
    let scope = src.effective();
    EffectiveConfigRecorded {
        scope_fingerprint: dirsync::plan::effective::scope_fingerprint(&scope),
        mapping_fingerprint: cfg.mapping().unwrap().fingerprint(),
        scope,
        changed,
        full_import: full_import.map(str::to_string),
    }
}

/// Write `dirsync.toml` as `edit` makes it; returns the old text.
fn edit_config(lab: &E2e, edit: impl Fn(&str) -> String) -> String {
    let p = lab.dir.path().join("dirsync.toml");
    let old = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, edit(&old)).unwrap();
    old
}

/// A sync report's import mode, the configuration parts it found changed, and its count
/// `count` (created, updated, deleted, ...).
fn outcome<'a>(v: &'a Value, count: &str) -> (&'a Value, &'a Value, &'a Value) {
    (
        &v["import"]["mode"],
        &v["import"]["config_changed"],
        &v[count],
    )
}

/// `dirsync.toml` edited by `edit`, then one sync of `a` (no --full): the log's head before
/// the sync, and the sync's report.
async fn edit_and_sync(lab: &E2e, edit: impl Fn(&str) -> String) -> (u64, Value) {
    let head = lab.head().await;
    edit_config(lab, edit);
    (head, lab.sync("a", &[]))
}

/// `replay --what-if FILE --format json` with `dirsync.toml` edited by `edit`.
fn what_if(lab: &E2e, edit: impl Fn(&str) -> String) -> Value {
    let p = lab.dir.path().join("dirsync.toml");
    let text = edit(&std::fs::read_to_string(&p).unwrap());
    std::fs::write(lab.dir.path().join("other.toml"), text).unwrap();
    let run = lab.cli(&["replay", "--what-if", "other.toml", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    json_of(&run)
}

fn anchors(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|i| i["anchor"].as_str().unwrap().to_string())
        .collect()
}

fn with_users(cfg: &str, filter: &str) -> String {
    cfg.replace("[target]", &format!("users = \"{filter}\"\n[target]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_change_runs_a_full_import_by_itself_and_a_narrower_one_is_evaluated() {
    let lab = E2e::ldap(6, "500").await;
    for i in 4..=6 {
        lab.slapd()
            .ldapmodify(&format!(
                "dn: uid=u{i},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Engineer\n\n"
            ))
            .await;
    }
    let v = lab.sync("a", &[]);
    assert_eq!(v["created"], json!(8), "{v}");
    // The first sync records the configuration, as it is.
    assert_eq!(
        records_after(&lab, 0).await,
        [record_of(&lab, vec![], None)]
    );
    let u: Vec<String> = {
        let mut u = Vec::new();
        for i in 1..=6 {
            u.push(lab.anchor(&format!("uid=u{i},{PEOPLE}")).await);
        }
        u
    };
    let engineers: BTreeSet<String> = u[3..].iter().cloned().collect();

    // A different users filter: what-if names who leaves where the log can tell (title),
    // and says what it cannot: what the filter admits, and objectClass for the engineers.
    let other = "(&(objectClass=person)(title=Engineer))";
    let w = what_if(&lab, |c| with_users(c, other));
    let why = "the users filter `(&(objectClass=person)(title=Engineer))` is wider than or different from `(objectClass=inetOrgPerson)`, which the log's objects were imported under: objects it admits may not be in the log";
    assert_eq!(
        w["cannot_evaluate"],
        json!([
            {"part": "users", "why": why},
            {"part": "users", "why": "the users filter cannot be evaluated for 3 object(s): it tests objectclass, which the log does not hold"},
        ])
    );
    assert_eq!(anchors(&w["leave"]), u[..3].iter().cloned().collect());
    // The table says it in one line each, after the rows.
    let run = lab.cli(&["replay", "--what-if", "other.toml"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.ends_with(&format!(
            "cannot evaluate: {why}\ncannot evaluate: the users filter cannot be evaluated for 3 object(s): it tests objectclass, which the log does not hold\n"
        )),
        "{run:?}"
    );
    // The next sync imports in full by itself, records why, and the target ends as the new
    // scope says.
    let (head, v) = edit_and_sync(&lab, |c| with_users(c, other)).await;
    assert_eq!(
        (
            &v["import"]["mode"],
            &v["import"]["fallback"],
            &v["import"]["config_changed"]
        ),
        (&json!("full"), &json!(why), &json!(["users"])),
        "{v}"
    );
    assert_eq!(
        records_after(&lab, head).await,
        [record_of(&lab, vec![ConfigPart::Users], Some(why))]
    );
    // The objects what-if named leave.
    assert_eq!(
        exported(&lab, head, ExportOp::Delete).await,
        anchors(&w["leave"])
    );
    let users: BTreeSet<String> = lab.view.users_by_anchor().await.into_keys().collect();
    assert_eq!(users, engineers);
    // Nothing more to do, and nothing recorded again.
    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!(
        (&v["import"]["mode"], &v["import"]["config_changed"]),
        (&json!("delta"), &Value::Null),
        "{v}"
    );
    assert_eq!(records_after(&lab, head).await, []);

    // A narrower filter over attributes the log holds: what-if names who leaves, the sync
    // (a delta) removes exactly them, with the filter as evidence.
    let narrower = "(&(objectClass=person)(title=Engineer)(!(uid=u6)))";
    let w = what_if(&lab, |c| c.replace(other, narrower));
    assert_eq!(w["cannot_evaluate"], json!([]), "{w}");
    assert_eq!(anchors(&w["leave"]), BTreeSet::from([u[5].clone()]));
    assert_eq!((&w["join"], &w["change"]), (&json!([]), &json!([])));
    let (head, v) = edit_and_sync(&lab, |c| c.replace(other, narrower)).await;
    assert_eq!(
        (
            &v["import"]["mode"],
            &v["import"]["fallback"],
            &v["import"]["left_scope"]
        ),
        (&json!("delta"), &Value::Null, &json!(1)),
        "{v}"
    );
    assert_eq!(
        exported(&lab, head, ExportOp::Delete).await,
        anchors(&w["leave"])
    );
    let evidence: Vec<ObjectDeleted> = events_after(&lab, head)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ObjectDeleted(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        evidence,
        [ObjectDeleted {
            anchor: u[5].clone(),
            evidence: DeletionEvidence::OutOfFilter {
                which: "users".into(),
                filter: narrower.into(),
            },
        }]
    );
    assert_eq!(
        records_after(&lab, head).await,
        [record_of(&lab, vec![ConfigPart::Users], None)]
    );
    let users: BTreeSet<String> = lab.view.users_by_anchor().await.into_keys().collect();
    assert_eq!(users, u[3..5].iter().cloned().collect());
    // The same configuration as what-if: nothing would change. It names the record it
    // compared with, its time in RFC 3339.
    let w = what_if(&lab, |c| c.to_string());
    assert_eq!(
        (&w["leave"], &w["join"], &w["change"], &w["cannot_evaluate"]),
        (&json!([]), &json!([]), &json!([]), &json!([]))
    );
    let last = lab.state().await.objects.effective.unwrap();
    let at = w["recorded"]["at"]["at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{w}");
    assert_eq!(
        (
            &w["recorded"]["at"]["seq"],
            &w["recorded"]["instance"],
            &w["recorded"]["event"]
        ),
        (
            &json!(last.at.seq),
            &json!("a"),
            &serde_json::to_value(&last.event).unwrap()
        )
    );

    // The log shows the three records as recorded, and its chain and projections check.
    let run = lab.cli(&[
        "log",
        "show",
        "--type",
        "EffectiveConfigRecorded",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let shown: Vec<EffectiveConfigRecorded> = run
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(v["recorded_at"].as_str().unwrap()).is_ok()
            );
            serde_json::from_value(v["payload"].clone()).unwrap()
        })
        .collect();
    assert_eq!(shown.len(), 3);
    assert_eq!(shown, records_after(&lab, 0).await);
    assert_eq!(lab.cli(&["log", "verify"]).code, 0);
    let run = lab.cli(&["replay", "--verify"]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_change_updates_every_object_and_a_new_attribute_is_fetched_in_full() {
    let lab = E2e::ldap(4, "500").await;
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u2,{PEOPLE}\nchangetype: modify\nadd: roomNumber\nroomNumber: 101\n\n"
        ))
        .await;
    lab.sync("a", &[]);
    let u: Vec<String> = {
        let mut u = Vec::new();
        for i in 1..=4 {
            u.push(lab.anchor(&format!("uid=u{i},{PEOPLE}")).await);
        }
        u
    };

    // A mapping over attributes the log holds: what-if names every user as changing, the
    // sync (a delta, no --full) updates exactly those.
    let nick = "\n[mapping.user]\nnickName = \"src.uid[0].upperAscii()\"\n";
    let w = what_if(&lab, |c| format!("{c}{nick}"));
    assert_eq!(w["cannot_evaluate"], json!([]), "{w}");
    assert_eq!(anchors(&w["change"]), u.iter().cloned().collect());
    assert_eq!((&w["leave"], &w["join"]), (&json!([]), &json!([])));
    let (head, v) = edit_and_sync(&lab, |c| format!("{c}{nick}")).await;
    assert_eq!(
        outcome(&v, "updated"),
        (&json!("delta"), &json!(["mapping"]), &json!(4)),
        "{v}"
    );
    assert_eq!(
        exported(&lab, head, ExportOp::Update).await,
        anchors(&w["change"])
    );
    assert_eq!(
        records_after(&lab, head).await,
        [record_of(&lab, vec![ConfigPart::Mapping], None)]
    );
    let users = lab.view.users_by_anchor().await;
    assert_eq!(users[&u[2]]["nickName"], json!("U3"));

    // A mapping that reads an attribute the log does not hold: what-if says so; the sync
    // imports in full by itself and every user gets its value.
    let room = "title = \"has(src.roomnumber) ? src.roomnumber[0] : 'none'\"\n";
    let w = what_if(&lab, |c| format!("{c}{room}"));
    assert_eq!(
        w["cannot_evaluate"],
        json!([{"part": "attributes", "why": "the mapping reads roomnumber, which the log does not hold: mapped as if absent"}])
    );
    let head = lab.head().await;
    edit_config(&lab, |c| format!("{c}{room}"));
    let why = "the mapping reads roomnumber, which the log does not hold";
    // A dry run's table says so, and records nothing.
    let run = lab.cli(&["sync", "--instance", "a", "--dry-run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "\nconfiguration changed since the last record: attributes read, mapping (recorded; applied to every object)\nfull import because {why}\n"
        )),
        "{run:?}"
    );
    assert_eq!(lab.head().await, head);
    let v = lab.sync("a", &[]);
    assert_eq!(
        (
            &v["import"]["mode"],
            &v["import"]["fallback"],
            &v["import"]["config_changed"],
            &v["updated"]
        ),
        (
            &json!("full"),
            &json!(why),
            &json!(["attributes", "mapping"]),
            &json!(4)
        ),
        "{v}"
    );
    assert_eq!(
        records_after(&lab, head).await,
        [record_of(
            &lab,
            vec![ConfigPart::Attributes, ConfigPart::Mapping],
            Some(why)
        )]
    );
    let users = lab.view.users_by_anchor().await;
    let titles: Vec<&Value> = u.iter().map(|a| &users[a]["title"]).collect();
    assert_eq!(
        titles,
        [
            &json!("none"),
            &json!("101"),
            &json!("none"),
            &json!("none")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_exclude_and_member_of_take_effect_without_a_full_import() {
    let lab = E2e::ldap(4, "500").await;
    lab.sync("a", &[]);
    let u3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    let (u1, u2, u4) = (
        lab.anchor(&format!("uid=u1,{PEOPLE}")).await,
        lab.anchor(&format!("uid=u2,{PEOPLE}")).await,
        lab.anchor(&format!("uid=u4,{PEOPLE}")).await,
    );
    // An added exclude: u3 leaves this cycle, from a delta.
    let exclude = |c: &str| {
        c.replace(
            "[target]",
            &format!("exclude = [\"uid=u3,{PEOPLE}\"]\n[target]"),
        )
    };
    let w = what_if(&lab, exclude);
    assert_eq!(anchors(&w["leave"]), BTreeSet::from([u3.clone()]));
    let (head, v) = edit_and_sync(&lab, exclude).await;
    assert_eq!(
        outcome(&v, "deleted"),
        (&json!("delta"), &json!(["exclude"]), &json!(1)),
        "{v}"
    );
    assert_eq!(
        exported(&lab, head, ExportOp::Delete).await,
        anchors(&w["leave"])
    );

    // member_of team (u1, u2): u4 leaves; what-if first, then the sync agrees.
    let team = format!("cn=team,{GROUPS}");
    let member_of = |c: &str| c.replace("[target]", &format!("member_of = [\"{team}\"]\n[target]"));
    let w = what_if(&lab, member_of);
    assert_eq!(w["cannot_evaluate"], json!([]), "{w}");
    assert_eq!(anchors(&w["leave"]), BTreeSet::from([u4.clone()]));
    let (head, v) = edit_and_sync(&lab, member_of).await;
    assert_eq!(
        (&v["import"]["mode"], &v["import"]["config_changed"]),
        (&json!("delta"), &json!(["member_of"])),
        "{v}"
    );
    assert_eq!(
        exported(&lab, head, ExportOp::Delete).await,
        anchors(&w["leave"])
    );
    let users: BTreeSet<String> = lab.view.users_by_anchor().await.into_keys().collect();
    assert_eq!(users, BTreeSet::from([u1.clone(), u2.clone()]));

    // member_of taken away again: u4 comes back from the log, without a full import.
    let (head, v) = edit_and_sync(&lab, |c| {
        c.replace(&format!("member_of = [\"{team}\"]\n"), "")
    })
    .await;
    assert_eq!(
        outcome(&v, "created"),
        (&json!("delta"), &json!(["member_of"]), &json!(1)),
        "{v}"
    );
    assert_eq!(
        exported(&lab, head, ExportOp::Create).await,
        BTreeSet::from([u4.clone()])
    );
    // Removing the exclude needs what the log never read: a full import, said so.
    let (head, v) = edit_and_sync(&lab, |c| {
        c.replace(&format!("exclude = [\"uid=u3,{PEOPLE}\"]\n"), "")
    })
    .await;
    let why =
        format!("exclude uid=u3,{PEOPLE} was removed: objects under it may not be in the log");
    assert_eq!(
        (&v["import"]["mode"], &v["import"]["fallback"]),
        (&json!("full"), &json!(why)),
        "{v}"
    );
    assert_eq!(
        exported(&lab, head, ExportOp::Create).await,
        BTreeSet::from([u3])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_is_not_rfc_4515_is_exit_2_naming_the_key_with_nothing_written() {
    let lab = E2e::ldap(2, "500").await;
    lab.sync("a", &[]);
    let head = lab.head().await;
    let good = edit_config(&lab, |c| with_users(c, "(&(objectClass=inetOrgPerson)"));
    for args in [
        vec!["sync", "--instance", "a"],
        vec!["sync", "--instance", "a", "--dry-run"],
    ] {
        let run = lab.cli(&args);
        assert_eq!(run.code, 2, "{run:?}");
        assert_eq!(
            run.stderr.trim(),
            "dirsync: configuration: dirsync.toml: source.users: `(&(objectClass=inetOrgPerson)` is not an LDAP search filter (RFC 4515)",
            "{run:?}"
        );
    }
    // The same as the what-if configuration.
    let bad = std::fs::read_to_string(lab.dir.path().join("dirsync.toml")).unwrap();
    std::fs::write(lab.dir.path().join("dirsync.toml"), good).unwrap();
    std::fs::write(lab.dir.path().join("bad.toml"), bad).unwrap();
    let run = lab.cli(&["replay", "--what-if", "bad.toml", "--format", "json"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("source.users"), "{run:?}");
    assert_eq!(lab.head().await, head);
}

/// Against Samba AD DC (DirSync deltas carry only changed attributes): a narrowed default
/// users filter is evaluated over the log; what-if and the sync name the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_a_narrower_users_filter_is_evaluated_and_what_if_agrees() {
    let lab = E2e::ad().await;
    lab.sync("a", &[]);
    let u4 = lab.anchor("CN=u4,OU=Staff,DC=test,DC=lan").await;
    let narrower = "(&(objectClass=user)(objectCategory=person)(!(sAMAccountName=u4)))";
    let w = what_if(&lab, |c| with_users(c, narrower));
    assert_eq!(w["cannot_evaluate"], json!([]), "{w}");
    assert_eq!(anchors(&w["leave"]), BTreeSet::from([u4.clone()]));
    let (head, v) = edit_and_sync(&lab, |c| with_users(c, narrower)).await;
    assert_eq!(
        outcome(&v, "deleted"),
        (&json!("delta"), &json!(["users"]), &json!(1)),
        "{v}"
    );
    assert_eq!(
        exported(&lab, head, ExportOp::Delete).await,
        anchors(&w["leave"])
    );
    // Unchanged since: a plain delta, nothing recorded, nothing exported.
    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!(
        (&v["import"]["mode"], &v["deleted"], &v["created"]),
        (&json!("delta"), &json!(0), &json!(0)),
        "{v}"
    );
    assert_eq!(records_after(&lab, head).await, []);
}

/// Another base DN needs a full import; what falls outside the new base leaves as out of
/// scope (`left-scope`), not as absent from that import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_change_runs_a_full_import_and_what_is_outside_it_leaves_scope() {
    let lab = E2e::ldap(2, "500").await;
    lab.sync("a", &[]);
    let groups = [
        (
            lab.anchor(&format!("cn=crew,{GROUPS}")).await,
            format!("cn=crew,{GROUPS}"),
        ),
        (
            lab.anchor(&format!("cn=team,{GROUPS}")).await,
            format!("cn=team,{GROUPS}"),
        ),
    ];
    let (head, v) = edit_and_sync(&lab, |c| {
        c.replace(
            "base_dn = \"dc=example,dc=org\"",
            &format!("base_dn = \"{PEOPLE}\""),
        )
    })
    .await;
    let why = format!(
        "the base DN changed from dc=example,dc=org to {PEOPLE}: objects under it may not be in the log"
    );
    assert_eq!(
        (
            &v["import"]["mode"],
            &v["import"]["fallback"],
            &v["import"]["config_changed"],
            &v["import"]["left_scope"],
            &v["deleted"]
        ),
        (
            &json!("full"),
            &json!(why),
            &json!(["base"]),
            &json!(2),
            &json!(2)
        ),
        "{v}"
    );
    let mut deleted: Vec<ObjectDeleted> = events_after(&lab, head)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ObjectDeleted(d) => Some(d),
            _ => None,
        })
        .collect();
    deleted.sort_by(|a, b| a.anchor.cmp(&b.anchor));
    let mut want: Vec<ObjectDeleted> = groups
        .iter()
        .map(|(a, dn)| ObjectDeleted {
            anchor: a.clone(),
            evidence: DeletionEvidence::LeftScope { dn: dn.clone() },
        })
        .collect();
    want.sort_by(|a, b| a.anchor.cmp(&b.anchor));
    assert_eq!(deleted, want);
}

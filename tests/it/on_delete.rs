//! `[sync] on_delete = "disable"` with `disabled_for`, and `[source] member_of`, end to end
//! through the binary: real slapd (and Samba AD DC, one case) into scim2-server. A user gone
//! from the source is set inactive first and deleted only once `disabled_for` has passed
//! since the disable was recorded (the deletion guard counts only that deletion); one that
//! comes back before is re-enabled; `member_of` admits direct and nested members (a nested
//! cycle included) and follows joins and leaves.

use std::time::Duration;

use serde_json::Value;

use dirsync::log::event::ExportOp;

use crate::common::dirsync;
use crate::sync_export::{ldap_source, E2e, Source};

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// Append `[sync]` keys to the lab's configuration (its last section is `[sync]`).
fn add_sync_keys(lab: &E2e, keys: &str) {
    let p = lab.dir.path().join("dirsync.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(keys);
    std::fs::write(&p, text).unwrap();
}

/// The target's `active` of each user, by userName.
async fn active_by_name(lab: &E2e) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = lab
        .view
        .all("Users")
        .await
        .iter()
        .map(|u| {
            (
                u["userName"].as_str().unwrap().to_string(),
                u["active"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    v.sort();
    v
}

/// `audit missed-deletes --format json`: (anchor, state, status) of each row, and the
/// missed count.
fn audit(lab: &E2e) -> (Vec<(String, String, String)>, u64) {
    let run = lab.cli(&["audit", "missed-deletes", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let mut rows: Vec<(String, String, String)> = v["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["anchor"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    (rows, n(&v, "missed_count"))
}

fn user_dn(i: u32) -> String {
    format!("uid=u{i},{PEOPLE}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_disables_first_and_deletes_after_disabled_for_counting_only_deletions() {
    // Threshold 2: three disables in one cycle are not deletions; their deletions are.
    let lab = E2e::ldap(5, "2").await;
    add_sync_keys(
        &lab,
        "on_delete = \"disable\"\ndisabled_for = \"4s\"\nlease = \"3s\"\n",
    );
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "created"), 7, "{v}");
    let gone: Vec<String> = vec![
        lab.anchor(&user_dn(3)).await,
        lab.anchor(&user_dn(4)).await,
        lab.anchor(&user_dn(5)).await,
    ];
    for i in 3..=5 {
        lab.slapd().ldapdelete(&user_dn(i)).await;
    }

    // The next cycle sets them inactive: exit 0, nothing held, nothing deleted.
    let v = lab.sync("a", &[]);
    assert_eq!(
        (
            n(&v, "disabled"),
            n(&v, "deleted"),
            n(&v, "held"),
            n(&v, "updated")
        ),
        (3, 0, 0, 0),
        "{v}"
    );
    let names = |flags: [bool; 5]| -> Vec<(String, bool)> {
        (1..=5)
            .map(|i| (format!("u{i}@example.org"), flags[i - 1]))
            .collect()
    };
    assert_eq!(
        active_by_name(&lab).await,
        names([true, true, false, false, false])
    );
    // Recorded as export outcomes, the clock starting at their record.
    let state = lab.state().await;
    let disabled_at: Vec<i64> = gone
        .iter()
        .map(|a| state.ledger.entries[a].disabled.expect("disabled").at_us)
        .collect();
    // Before its time the audit says pending (state disabled), never missed.
    let mut want: Vec<(String, String, String)> = gone
        .iter()
        .map(|a| (a.clone(), "disabled".to_string(), "pending".to_string()))
        .collect();
    want.sort();
    assert_eq!(audit(&lab), (want.clone(), 0));

    // Another instance takes over (a handover) before disabled_for has passed: the
    // schedule is the log's, so nothing is disabled again, three await deletion.
    let (run, v) = lab.run("b", &["--take-over"]);
    assert_eq!(n(&v, "disabled"), 0, "disabled once: {v}");
    if chrono::Utc::now().timestamp_micros() < disabled_at.iter().min().unwrap() + 4_000_000 {
        // (On a machine slow enough to pass 4 s here, the next step's checks stand alone.)
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(
            (n(&v, "deleted"), n(&v, "held"), n(&v, "awaiting_deletion")),
            (0, 0, 3),
            "{v}"
        );
    }

    // Past disabled_for: the deletions are planned, and the guard counts them (3 > 2).
    let due = disabled_at.iter().max().unwrap() + 4_000_000;
    let wait = due - chrono::Utc::now().timestamp_micros();
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait as u64 + 100_000)).await;
    }
    let (run, v) = lab.run("b", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!((n(&v, "held"), n(&v, "deleted")), (3, 0), "{v}");
    let plan = v["held_plan"].as_str().unwrap().to_string();
    let shown = lab.cli(&["deletions", "show", "--format", "json"]);
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    let mut held: Vec<String> = shown[0]["deletions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["anchor"].as_str().unwrap().to_string())
        .collect();
    held.sort();
    let mut sorted = gone.clone();
    sorted.sort();
    assert_eq!(held, sorted);
    // Due, and held by a completed sync that did not delete them: missed now.
    let missed: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, _, _)| (a.clone(), "held".to_string(), "missed".to_string()))
        .collect();
    assert_eq!(audit(&lab), (missed, 3));

    // Approved, they go.
    let run = lab.cli(&["deletions", "approve", "--plan", &plan]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = lab.sync("b", &[]);
    assert_eq!((n(&v, "deleted"), n(&v, "disabled")), (3, 0), "{v}");
    assert_eq!(
        active_by_name(&lab).await,
        vec![
            ("u1@example.org".to_string(), true),
            ("u2@example.org".to_string(), true)
        ]
    );
    assert_eq!(audit(&lab), (vec![], 0));
    // The log holds each disable before each deletion.
    let state = lab.state().await;
    for a in &gone {
        let l = &state.ledger.entries[a];
        assert!(l.deleted.is_some(), "{a}");
    }
    let store = lab.store().await;
    use dirsync::log::Store;
    let ops: Vec<(String, ExportOp)> = store
        .read(0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| match e.decode().unwrap() {
            dirsync::log::event::Event::ExportApplied(x) if gone.contains(&x.anchor) => {
                Some((x.anchor, x.op))
            }
            _ => None,
        })
        .collect();
    for a in &gone {
        let mine: Vec<ExportOp> = ops
            .iter()
            .filter(|(x, _)| x == a)
            .map(|(_, op)| *op)
            .collect();
        assert_eq!(
            mine,
            vec![ExportOp::Create, ExportOp::Disable, ExportOp::Delete],
            "{a}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_member_of_follows_nested_joins_and_leaves_and_re_enables_on_return() {
    let (slapd, mut source) = ldap_source(4, &["team"]).await;
    // sync names u1 and the nested group, which names u3 and sync again (a cycle).
    slapd
        .ldapadd(&format!(
            "dn: cn=sync,{GROUPS}\nobjectClass: groupOfNames\ncn: sync\n\
             member: {}\nmember: cn=nested,{GROUPS}\n\n\
             dn: cn=nested,{GROUPS}\nobjectClass: groupOfNames\ncn: nested\n\
             member: {}\nmember: cn=sync,{GROUPS}\n\n",
            user_dn(1),
            user_dn(3)
        ))
        .await;
    source.push_str(&format!("member_of = [\"CN=Sync, {GROUPS}\"]\n"));
    let pw = slapd.password().to_string();
    let lab = E2e::new(Source::Ldap(slapd), &source, &pw, "500").await;
    add_sync_keys(&lab, "on_delete = \"disable\"\ndisabled_for = \"1h\"\n");

    // u1 (direct) and u3 (nested) only; the groups are scoped by the DN rules.
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "created"), n(&v, "deleted")), (5, 0), "{v}");
    let on = |names: &[(u32, bool)]| -> Vec<(String, bool)> {
        names
            .iter()
            .map(|(i, a)| (format!("u{i}@example.org"), *a))
            .collect()
    };
    assert_eq!(active_by_name(&lab).await, on(&[(1, true), (3, true)]));
    // team (u1, u2) holds only its synced member.
    let users = lab.view.users_by_anchor().await;
    let groups = lab.view.groups_by_anchor().await;
    let team = lab.anchor(&format!("cn=team,{GROUPS}")).await;
    let u1 = lab.anchor(&user_dn(1)).await;
    let members: Vec<&str> = groups[&team]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(members, vec![users[&u1]["id"].as_str().unwrap()]);

    // u2 joins the nested group: it comes into scope.
    lab.slapd()
        .ldapmodify(&format!(
            "dn: cn=nested,{GROUPS}\nchangetype: modify\nadd: member\nmember: {}\n\n",
            user_dn(2)
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "created"), 1, "{v}");
    assert_eq!(
        active_by_name(&lab).await,
        on(&[(1, true), (2, true), (3, true)])
    );

    // u3 leaves the nested group: out of scope, so disabled (not deleted).
    lab.slapd()
        .ldapmodify(&format!(
            "dn: cn=nested,{GROUPS}\nchangetype: modify\ndelete: member\nmember: {}\n\n",
            user_dn(3)
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "disabled"), n(&v, "deleted")), (1, 0), "{v}");
    assert_eq!(
        active_by_name(&lab).await,
        on(&[(1, true), (2, true), (3, false)])
    );
    let u3 = lab.anchor(&user_dn(3)).await;
    let state = lab.state().await;
    assert_eq!(
        state.objects.objects[&u3]
            .deletion
            .as_ref()
            .map(|d| (d.evidence.label(), d.evidence.detail())),
        Some((
            "not-member",
            Some(format!("not a member of CN=Sync, {GROUPS}"))
        ))
    );
    assert!(state.ledger.entries[&u3].disabled.is_some());

    // u3 joins sync directly before disabled_for: re-enabled, never deleted.
    lab.slapd()
        .ldapmodify(&format!(
            "dn: cn=sync,{GROUPS}\nchangetype: modify\nadd: member\nmember: {}\n\n",
            user_dn(3)
        ))
        .await;
    // Two updates: u3 (active again) and sync (u3 is its member in the target again).
    let v = lab.sync("a", &[]);
    assert_eq!(
        (n(&v, "updated"), n(&v, "disabled"), n(&v, "deleted")),
        (2, 0, 0),
        "{v}"
    );
    assert_eq!(
        active_by_name(&lab).await,
        on(&[(1, true), (2, true), (3, true)])
    );
    assert_eq!(lab.state().await.ledger.entries[&u3].disabled, None);
    // Nothing more to do.
    let v = lab.sync("a", &[]);
    assert_eq!(
        (n(&v, "created"), n(&v, "updated"), n(&v, "deleted")),
        (0, 0, 0),
        "{v}"
    );
    assert_eq!(audit(&lab), (vec![], 0));
}

#[test]
fn bad_on_delete_disabled_for_and_member_of_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let source = "[source]\nkind = \"openldap\"\nurl = \"ldap://127.0.0.1:1\"\n\
                  bind_dn = \"cn=admin\"\npassword_env = \"PW\"\nbase_dn = \"dc=example,dc=org\"\n";
    for (text, key) in [
        (
            "[sync]\non_delete = \"archive\"\n".to_string(),
            "sync.on_delete",
        ),
        (
            "[sync]\non_delete = \"disable\"\ndisabled_for = \"a month\"\n".to_string(),
            "sync.disabled_for",
        ),
        (
            format!("{source}member_of = [\"sync-users\"]\n"),
            "source.member_of",
        ),
    ] {
        let cfg = dir.path().join("dirsync.toml");
        std::fs::write(&cfg, format!("[store]\nurl = \"sqlite://log.db\"\n{text}")).unwrap();
        let run = dirsync(
            dir.path(),
            &["--config", cfg.to_str().unwrap(), "sync", "--instance", "a"],
        );
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains(key), "{run:?}");
        assert!(!dir.path().join("log.db").exists(), "nothing written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samba_member_of_leave_and_tombstone_disable_first_then_delete() {
    const STAFF: &str = "OU=Staff,DC=test,DC=lan";
    let samba = crate::lab::Samba::start().await;
    let mut ldif = format!("dn: {STAFF}\nobjectClass: organizationalUnit\n\n");
    for i in 1..=5 {
        ldif.push_str(&format!(
            "dn: CN=u{i},{STAFF}\nobjectClass: user\nsAMAccountName: u{i}\n\
             userPrincipalName: u{i}@test.lan\nsn: N{i}\nuserAccountControl: 512\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=Team,{STAFF}\nobjectClass: group\nsAMAccountName: team\n\
         member: CN=u1,{STAFF}\nmember: CN=u2,{STAFF}\nmember: CN=u3,{STAFF}\n\
         member: CN=u4,{STAFF}\n\n"
    ));
    samba.ldapadd(&ldif).await;
    let source = format!(
        "kind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
         base_dn = \"DC=test,DC=lan\"\ninclude = [\"{STAFF}\"]\n\
         member_of = [\"cn=team,ou=staff,dc=test,dc=lan\"]\n",
        samba.url(),
        samba.bind_dn()
    );
    let pw = samba.password().to_string();
    let lab = E2e::new(Source::Ad(samba), &source, &pw, "500").await;
    add_sync_keys(&lab, "on_delete = \"disable\"\ndisabled_for = \"2s\"\n");
    let on = |names: &[(u32, bool)]| -> Vec<(String, bool)> {
        names
            .iter()
            .map(|(i, a)| (format!("u{i}@test.lan"), *a))
            .collect()
    };

    // u1..u4 (Team's members) and Team; u5 is no member.
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "created"), 5, "{v}");
    assert_eq!(
        active_by_name(&lab).await,
        on(&[(1, true), (2, true), (3, true), (4, true)])
    );

    // u2 leaves Team, u1 is deleted (a tombstone): both are disabled, not deleted.
    lab.samba()
        .ldapmodify(&format!(
            "dn: CN=Team,{STAFF}\nchangetype: modify\ndelete: member\nmember: CN=u2,{STAFF}\n\n"
        ))
        .await;
    lab.samba().ldapdelete(&format!("CN=u1,{STAFF}")).await;
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "disabled"), n(&v, "deleted")), (2, 0), "{v}");
    assert_eq!(
        active_by_name(&lab).await,
        on(&[(1, false), (2, false), (3, true), (4, true)])
    );
    let state = lab.state().await;
    let mut evidence: Vec<&str> = state
        .objects
        .objects
        .values()
        .filter_map(|r| r.deletion.as_ref().map(|d| d.evidence.label()))
        .collect();
    evidence.sort();
    assert_eq!(
        evidence,
        vec!["not-member", "not-member", "tombstone"],
        "u2, u5, u1"
    );

    // After disabled_for, the next cycle deletes both.
    let due = state
        .ledger
        .entries
        .values()
        .filter_map(|l| l.disabled.map(|d| d.at_us))
        .max()
        .unwrap()
        + 2_000_000;
    let wait = due - chrono::Utc::now().timestamp_micros();
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait as u64 + 100_000)).await;
    }
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "deleted"), n(&v, "disabled")), (2, 0), "{v}");
    assert_eq!(active_by_name(&lab).await, on(&[(3, true), (4, true)]));
    assert_eq!(audit(&lab), (vec![], 0));
}

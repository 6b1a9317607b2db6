//! Anchors that cannot flip (issue 17, finding 2): the anchor attribute is recorded at the
//! first import; an import that would take anchors from another attribute is refused with
//! one exit-2 line and nothing written; `dirsync anchors migrate --to ATTR` re-keys the
//! ledger in place, and the next sync creates and deletes nothing in a real scim2-server,
//! whose objects keep their ids.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::common::{dirsync, Run};
use crate::lab::ds389::{Ds389, Ds389Options, BASE_DN as DS_BASE, BIND_DN as DS_BIND};
use crate::lab::{Samba, Scim, Slapd, SlapdOptions};

fn write_config(dir: &tempfile::TempDir, source: &str, anchor: Option<&str>, scim: &str) {
    let pin = anchor.map_or(String::new(), |a| format!("anchor = \"{a}\"\n"));
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\n{source}{pin}\
             [target]\nkind = \"scim\"\nurl = \"{scim}\"\ntoken_file = \"token\"\n"
        ),
    )
    .unwrap();
}

fn sync(dir: &tempfile::TempDir) -> Run {
    dirsync(
        dir.path(),
        &["sync", "--instance", "old", "--format", "json"],
    )
}

fn sync_ok(dir: &tempfile::TempDir) -> Value {
    let run = sync(dir);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

/// The whole log as `log show` prints it.
fn log(dir: &tempfile::TempDir) -> String {
    let run = dirsync(dir.path(), &["log", "show", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
}

fn recorded(dir: &tempfile::TempDir) -> Value {
    let run = dirsync(dir.path(), &["anchors", "show", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str::<Value>(&run.stdout).unwrap()["recorded"].clone()
}

/// Every user (by userName) and group (by displayName) in the target, with its id and
/// members.
async fn target(base: &str, token: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out = BTreeMap::new();
    for (kind, name) in [("Users", "userName"), ("Groups", "displayName")] {
        let v: Value = reqwest::Client::new()
            .get(format!("{base}/{kind}?count=1000"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for r in v["Resources"].as_array().cloned().unwrap_or_default() {
            let mut members: Vec<String> = r["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|x| x["value"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            members.sort();
            out.insert(
                format!("{kind}/{}", r[name].as_str().unwrap()),
                (r["id"].as_str().unwrap().to_string(), members),
            );
        }
    }
    out
}

/// Every externalId in the target, sorted.
async fn external_ids(base: &str, token: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["Users", "Groups"] {
        let v: Value = reqwest::Client::new()
            .get(format!("{base}/{kind}?count=1000"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for r in v["Resources"].as_array().cloned().unwrap_or_default() {
            out.push(r["externalId"].as_str().unwrap_or_default().to_string());
        }
    }
    out.sort();
    out
}

/// The refusal: exit 2, one line naming the change and the command, nothing written.
fn assert_refused(dir: &tempfile::TempDir, from: &str, to: &str) {
    let before = log(dir);
    let run = sync(dir);
    assert_eq!(run.code, 2, "{run:?}");
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("from {from} to {to}")), "{err}");
    assert!(
        err.contains(&format!("`dirsync anchors migrate --to {to}`")),
        "{err}"
    );
    assert_eq!(log(dir), before, "the refused sync wrote to the log");
}

/// slapd read as `kind = "ldap"`: entryUUID is recorded; pinning `uid`, then `cn`, is
/// refused; a migration to `uid` is refused naming the group that has no uid; a migration
/// to `cn` re-keys every owned object and the next sync neither creates nor deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_other_than_the_recorded_anchor_is_refused_until_migrated() {
    let slapd = Slapd::start(SlapdOptions::default()).await;
    let people = slapd.people_dn();
    let mut ldif = String::new();
    for i in 1..=3 {
        ldif.push_str(&format!(
            "dn: uid=u{i},{people}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\n\
             sn: U{i}\nmail: u{i}@example.org\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=team,{}\nobjectClass: groupOfNames\ncn: team\n\
         member: uid=u1,{people}\nmember: uid=u2,{people}\n\n",
        slapd.groups_dn()
    ));
    slapd.ldapadd(&ldif).await;
    let scim = Scim::tenant().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), slapd.password()).unwrap();
    std::fs::write(dir.path().join("token"), scim.token()).unwrap();
    let source = format!(
        "kind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
         base_dn = \"{}\"\n",
        slapd.url(),
        slapd.bind_dn(),
        slapd.base_dn()
    );
    let config = |pin: Option<&str>| write_config(&dir, &source, pin, scim.base_url());
    config(None);
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    assert_eq!(recorded(&dir), Value::Null);

    let v = sync_ok(&dir);
    assert_eq!(v["created"], 4, "{v}");
    assert_eq!(recorded(&dir), "entryUUID");
    let before = target(scim.base_url(), scim.token()).await;
    assert_eq!(before.len(), 4, "{before:?}");

    config(Some("uid"));
    assert_refused(&dir, "entryUUID", "uid");
    // The group has no uid: the migration names it, and records nothing.
    let head = log(&dir);
    let run = dirsync(dir.path(), &["anchors", "migrate", "--to", "uid"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("cn=team"), "{run:?}");
    assert!(
        run.stderr.contains("no value of the new attribute"),
        "{run:?}"
    );
    assert_eq!(log(&dir), head);

    config(Some("cn"));
    assert_refused(&dir, "entryUUID", "cn");
    let run = dirsync(
        dir.path(),
        &[
            "anchors",
            "migrate",
            "--to",
            "cn",
            "--instance",
            "old",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let m: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(m["from"], "entryUUID", "{m}");
    assert_eq!(m["to"], "cn", "{m}");
    assert_eq!(m["rekeyed"], 4, "{m}");
    assert_eq!(m["unpaired"], Value::Array(vec![]), "{m}");
    assert_eq!(recorded(&dir), "cn");
    let run = dirsync(dir.path(), &["anchors", "show", "--format", "json"]);
    let h: Value = serde_json::from_str(&run.stdout).unwrap();
    let changes: Vec<(Value, Value, Value, Value)> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["from"].clone(),
                c["to"].clone(),
                c["migrated"].clone(),
                c["rekeyed"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (Value::Null, "entryUUID".into(), false.into(), 0.into()),
            ("entryUUID".into(), "cn".into(), true.into(), 4.into()),
        ],
        "{h}"
    );
    // Recorded and shown: the attribute change and each object's old -> new anchor.
    let shown = log(&dir);
    let migrated: Vec<Value> = shown
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "AnchorsMigrated")
        .collect();
    assert_eq!(migrated.len(), 1, "{shown}");
    let p = &migrated[0]["payload"];
    assert_eq!(
        (p["from"].clone(), p["to"].clone()),
        ("entryUUID".into(), "cn".into())
    );
    let mut news: Vec<&str> = p["rekeyed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["new"].as_str().unwrap())
        .collect();
    news.sort();
    assert_eq!(news, ["team", "user 1", "user 2", "user 3"], "{p}");

    let v = sync_ok(&dir);
    assert_eq!(
        (v["created"].clone(), v["deleted"].clone()),
        (0.into(), 0.into()),
        "{v}"
    );
    assert_eq!(v["import"]["mode"], "full", "{v}");
    assert_eq!(target(scim.base_url(), scim.token()).await, before);
    // The target's copy of the anchor follows: a hard match finds them under the new one.
    assert_eq!(external_ids(scim.base_url(), scim.token()).await, news);
    // Migrating again to the same attribute has nothing to re-key, and records nothing.
    let head = log(&dir);
    let run = dirsync(
        dir.path(),
        &["anchors", "migrate", "--to", "cn", "--format", "json"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let again: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (again["seq"].clone(), again["rekeyed"].clone()),
        (0.into(), 0.into()),
        "{again}"
    );
    assert_eq!(log(&dir), head);
    // And it stays that way.
    let v = sync_ok(&dir);
    assert_eq!(
        (
            v["created"].clone(),
            v["updated"].clone(),
            v["deleted"].clone()
        ),
        (0.into(), 0.into(), 0.into()),
        "{v}"
    );
    assert_eq!(target(scim.base_url(), scim.token()).await, before);
}

/// A `kind = "openldap"` pin other than entryUUID is a configuration error: its deltas name
/// entries by entryUUID.
#[test]
fn an_openldap_pin_other_than_entry_uuid_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "x").unwrap();
    std::fs::write(dir.path().join("token"), "x").unwrap();
    write_config(
        &dir,
        "kind = \"openldap\"\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=x\"\n\
         password_file = \"pw\"\nbase_dn = \"dc=x\"\n",
        Some("nsUniqueId"),
        "http://127.0.0.1:1/v2",
    );
    let run = dirsync(dir.path(), &["sync", "--instance", "old"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("source.anchor"), "{run:?}");
}

/// A 389 DS without entryUUID (as one upgraded from 1.4) read as `kind = "ldap"` anchors on
/// nsUniqueId. After the documented `dsconf NAME plugin entryuuid fixup`, the next sync is
/// refused (exit 2, one line, nothing written) instead of deleting and recreating every
/// object; `anchors migrate --to entryUUID` pairs each entry's nsUniqueId with its new
/// entryUUID, and the next sync creates and deletes nothing: same SCIM ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_389_instance_gaining_entry_uuid_is_refused_then_migrated() {
    let ds = Ds389::start(Ds389Options::default()).await;
    ds.dsconf(&["plugin", "entryuuid", "disable"]);
    ds.restart().await;
    let people = format!("ou=people,{DS_BASE}");
    let mut ldif = format!("dn: {people}\nobjectClass: organizationalUnit\nou: people\n\n");
    for i in 1..=3 {
        ldif.push_str(&format!(
            "dn: uid=u{i},{people}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\n\
             sn: U{i}\nmail: u{i}@example.com\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=team,{DS_BASE}\nobjectClass: groupOfNames\ncn: team\n\
         member: uid=u1,{people}\nmember: uid=u3,{people}\n\n"
    ));
    ds.ldapadd(&ldif).await;
    let uuids = |out: String| out.lines().filter(|l| l.starts_with("entryUUID:")).count();
    let search = [
        "-b",
        DS_BASE,
        "(|(objectClass=inetOrgPerson)(objectClass=groupOfNames))",
    ];
    let mut args = search.to_vec();
    args.push("entryUUID");
    assert_eq!(
        uuids(ds.ldapsearch(&args).await),
        0,
        "entries already have entryUUID"
    );

    let scim = Scim::tenant().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), crate::lab::ds389::PASSWORD).unwrap();
    std::fs::write(dir.path().join("token"), scim.token()).unwrap();
    let source = format!(
        "kind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{DS_BIND}\"\npassword_file = \"pw\"\n\
         base_dn = \"{DS_BASE}\"\n",
        ds.url()
    );
    write_config(&dir, &source, None, scim.base_url());
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    let v = sync_ok(&dir);
    assert_eq!(v["created"], 4, "{v}");
    assert_eq!(recorded(&dir), "nsUniqueId");
    let before = target(scim.base_url(), scim.token()).await;
    assert_eq!(before.len(), 4, "{before:?}");

    ds.dsconf(&["plugin", "entryuuid", "enable"]);
    ds.restart().await;
    ds.dsconf(&["plugin", "entryuuid", "fixup", "--wait", DS_BASE]);
    assert_eq!(
        uuids(ds.ldapsearch(&args).await),
        4,
        "fixup left entries out"
    );

    assert_refused(&dir, "nsUniqueId", "entryUUID");
    let run = dirsync(
        dir.path(),
        &[
            "anchors",
            "migrate",
            "--to",
            "entryUUID",
            "--instance",
            "old",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let m: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(m["rekeyed"], 4, "{m}");
    assert_eq!(recorded(&dir), "entryUUID");

    let v = sync_ok(&dir);
    assert_eq!(
        (
            v["created"].clone(),
            v["deleted"].clone(),
            v["held"].clone()
        ),
        (0.into(), 0.into(), 0.into()),
        "{v}"
    );
    assert_eq!(target(scim.base_url(), scim.token()).await, before);
}

/// The same attribute with every value changed (a directory restored from LDIF without its
/// entryUUIDs): the sync is refused naming the command, which pairs the entries by DN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_owned_anchor_changing_is_refused_until_migrated_by_dn() {
    let slapd = Slapd::start(SlapdOptions::default()).await;
    let people = slapd.people_dn();
    let users: String = (1..=3)
        .map(|i| {
            format!(
                "dn: uid=u{i},{people}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\n\
                 sn: U{i}\n\n"
            )
        })
        .collect();
    slapd.ldapadd(&users).await;
    let scim = Scim::tenant().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), slapd.password()).unwrap();
    std::fs::write(dir.path().join("token"), scim.token()).unwrap();
    let source = format!(
        "kind = \"openldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
         base_dn = \"{}\"\n",
        slapd.url(),
        slapd.bind_dn(),
        slapd.base_dn()
    );
    write_config(&dir, &source, None, scim.base_url());
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    assert_eq!(sync_ok(&dir)["created"], 3);
    let before = target(scim.base_url(), scim.token()).await;

    // Restored: the same entries under the same DNs, each with a new entryUUID.
    for i in 1..=3 {
        slapd.ldapdelete(&format!("uid=u{i},{people}")).await;
    }
    slapd.ldapadd(&users).await;
    let head = log(&dir);
    let run = sync(&dir);
    assert_eq!(run.code, 2, "{run:?}");
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another entryUUID"), "{err}");
    assert!(
        err.contains("`dirsync anchors migrate --to entryUUID`"),
        "{err}"
    );
    assert_eq!(log(&dir), head, "the refused sync wrote to the log");

    let run = dirsync(
        dir.path(),
        &[
            "anchors",
            "migrate",
            "--to",
            "entryUUID",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let m: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(m["rekeyed"], 3, "{m}");
    let v = sync_ok(&dir);
    assert_eq!(
        (
            v["created"].clone(),
            v["deleted"].clone(),
            v["held"].clone()
        ),
        (0.into(), 0.into(), 0.into()),
        "{v}"
    );
    assert_eq!(target(scim.base_url(), scim.token()).await, before);
}

/// Active Directory: a consistency GUID holding the object's own objectGUID (as Azure AD
/// Connect writes it) changes no anchor value: the sync is not refused, the new attribute
/// is recorded, and nothing is created or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_consistency_guid_equal_to_the_object_guid_is_recorded_not_refused() {
    let samba = Samba::start().await;
    let staff = "OU=Staff,DC=test,DC=lan";
    let mut ldif = format!("dn: {staff}\nobjectClass: organizationalUnit\n\n");
    for i in 1..=2 {
        ldif.push_str(&format!(
            "dn: CN=u{i},{staff}\nobjectClass: user\nsAMAccountName: u{i}\n\
             userPrincipalName: u{i}@test.lan\nuserAccountControl: 512\n\n"
        ));
    }
    samba.ldapadd(&ldif).await;
    let scim = Scim::tenant().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), samba.password()).unwrap();
    std::fs::write(dir.path().join("token"), scim.token()).unwrap();
    let source = format!(
        "kind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
         base_dn = \"DC=test,DC=lan\"\ninclude = [\"{staff}\"]\n",
        samba.url(),
        samba.bind_dn()
    );
    write_config(&dir, &source, None, scim.base_url());
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    assert_eq!(sync_ok(&dir)["created"], 2);
    assert_eq!(recorded(&dir), "objectGUID");
    let before = target(scim.base_url(), scim.token()).await;

    let out = samba
        .ldapsearch(&[
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            &format!("CN=u1,{staff}"),
            "-s",
            "base",
            "objectGUID",
        ])
        .await;
    let guid = out
        .lines()
        .find_map(|l| l.strip_prefix("objectGUID:: "))
        .expect("objectGUID")
        .to_string();
    samba
        .ldapmodify(&format!(
            "dn: CN=u1,{staff}\nchangetype: modify\nreplace: mS-DS-ConsistencyGuid\n\
             mS-DS-ConsistencyGuid:: {guid}\n-\n"
        ))
        .await;
    let v = sync_ok(&dir);
    assert_eq!(
        (v["created"].clone(), v["deleted"].clone()),
        (0.into(), 0.into()),
        "{v}"
    );
    assert_eq!(recorded(&dir), "ms-DS-ConsistencyGuid");
    assert_eq!(target(scim.base_url(), scim.token()).await, before);
}

/// Active Directory: a consistency GUID set on one user after the first import (objectGUID
/// recorded) is refused, as is pinning objectGUID while the source anchors on the
/// consistency GUID; `anchors migrate --to ms-DS-ConsistencyGuid` re-keys that user alone
/// and the next sync creates and deletes nothing in scim2-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_consistency_guid_appearing_is_refused_then_migrated() {
    let samba = Samba::start().await;
    let staff = "OU=Staff,DC=test,DC=lan";
    let mut ldif = format!("dn: {staff}\nobjectClass: organizationalUnit\n\n");
    for i in 1..=3 {
        ldif.push_str(&format!(
            "dn: CN=u{i},{staff}\nobjectClass: user\nsAMAccountName: u{i}\n\
             userPrincipalName: u{i}@test.lan\ngivenName: User\nsn: N{i}\n\
             userAccountControl: 512\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=Team,{staff}\nobjectClass: group\nsAMAccountName: team\n\
         member: CN=u1,{staff}\nmember: CN=u2,{staff}\n\n"
    ));
    samba.ldapadd(&ldif).await;
    let scim = Scim::tenant().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), samba.password()).unwrap();
    std::fs::write(dir.path().join("token"), scim.token()).unwrap();
    let source = format!(
        "kind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
         base_dn = \"DC=test,DC=lan\"\ninclude = [\"{staff}\"]\n",
        samba.url(),
        samba.bind_dn()
    );
    let config = |pin: Option<&str>| write_config(&dir, &source, pin, scim.base_url());
    config(None);
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    assert_eq!(sync_ok(&dir)["created"], 4);
    assert_eq!(recorded(&dir), "objectGUID");
    let before = target(scim.base_url(), scim.token()).await;

    let cg = uuid::Uuid::new_v4();
    use base64::Engine;
    samba
        .ldapmodify(&format!(
            "dn: CN=u2,{staff}\nchangetype: modify\nreplace: mS-DS-ConsistencyGuid\n\
             mS-DS-ConsistencyGuid:: {}\n-\n",
            base64::engine::general_purpose::STANDARD.encode(cg.to_bytes_le())
        ))
        .await;
    assert_refused(&dir, "objectGUID", "ms-DS-ConsistencyGuid");
    config(Some("objectGUID"));
    let head = log(&dir);
    let run = sync(&dir);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(
        run.stderr
            .contains("pins objectGUID, but the source anchors on ms-DS-ConsistencyGuid"),
        "{run:?}"
    );
    assert_eq!(log(&dir), head);

    config(None);
    let run = dirsync(
        dir.path(),
        &[
            "anchors",
            "migrate",
            "--to",
            "ms-ds-consistencyguid",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let m: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (m["rekeyed"].clone(), m["unchanged"].clone()),
        (1.into(), 3.into()),
        "{m}"
    );
    let v = sync_ok(&dir);
    assert_eq!(
        (
            v["created"].clone(),
            v["deleted"].clone(),
            v["held"].clone()
        ),
        (0.into(), 0.into(), 0.into()),
        "{v}"
    );
    assert_eq!(target(scim.base_url(), scim.token()).await, before);
    assert!(external_ids(scim.base_url(), scim.token())
        .await
        .contains(&cg.hyphenated().to_string()));
}

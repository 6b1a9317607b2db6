//! The OpenLDAP source against a real slapd: full import (entryUUID anchors, members
//! resolved to anchors), RFC 4533 refreshOnly deltas with and without a session log,
//! cookie rejection, a wrong password.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dirsync::config::{SecretRef, SourceConfig, SourceKind, Tls};
use dirsync::log::event::{AttrValue, DeletionEvidence, ObjectKind, SourceObject};
use dirsync::source::Change;
use dirsync::source::{ConnectOptions, OpenLdapOptions, OpenLdapSource};
use dirsync::Error;

use crate::lab::{Slapd, SlapdOptions};

struct Fixture {
    slapd: Slapd,
    cfg: SourceConfig,
    _dir: tempfile::TempDir,
}

const OTHER: &str = "ou=other,dc=example,dc=org";

async fn fixture(session_log: bool) -> Fixture {
    let slapd = Slapd::start(SlapdOptions {
        session_log,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let cfg = source_config(&slapd, slapd.bind_dn().to_string(), pw);
    let f = Fixture {
        slapd,
        cfg,
        _dir: dir,
    };
    let people = f.slapd.people_dn();
    let groups = f.slapd.groups_dn();
    let mut ldif = format!("dn: {OTHER}\nobjectClass: organizationalUnit\nou: other\n\n");
    for i in 1..=3 {
        ldif.push_str(&user(i, people));
    }
    // A member that matches no filter, and one that does not exist at all.
    ldif.push_str("dn: cn=svc,dc=example,dc=org\nobjectClass: organizationalRole\ncn: svc\n\n");
    ldif.push_str(&format!(
        "dn: cn=team,{groups}\nobjectClass: groupOfNames\ncn: team\n\
         member: uid=u1,{people}\nmember: UID=u2, OU=People,dc=example,dc=org\n\
         member: cn=svc,dc=example,dc=org\nmember: uid=ghost,{people}\n\n\
         dn: cn=uteam,{groups}\nobjectClass: groupOfUniqueNames\ncn: uteam\n\
         uniqueMember: uid=u3,{people}#'0101'B\n\n"
    ));
    f.slapd.ldapadd(&ldif).await;
    f
}

/// The source section for `slapd`, binding as `bind_dn` with the password in file `pw`.
fn source_config(slapd: &Slapd, bind_dn: String, pw: std::path::PathBuf) -> SourceConfig {
    SourceConfig {
        kind: SourceKind::Openldap,
        url: slapd.url(),
        tls: Tls::None,
        ca_file: None,
        limits: Default::default(),
        bind_dn,
        password: SecretRef::File(pw),
        base_dn: slapd.base_dn().to_string(),
        users: "(objectClass=inetOrgPerson)".into(),
        groups: "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))".into(),
        include: vec![],
        exclude: vec![],
        anchor: None,
        mapped: Vec::new(),
        mapping_fingerprint: String::new(),
        member_of: Vec::new(),
    }
}

fn user(i: u32, ou: &str) -> String {
    format!(
        "dn: uid=u{i},{ou}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\nsn: N{i}\n\
         givenName: User\nmail: u{i}@example.org\ntitle: Clerk\nuserPassword: pw{i}\n\n"
    )
}

fn conn() -> ConnectOptions {
    ConnectOptions {
        timeout: Duration::from_secs(20),
        danger_skip_tls_verify: false,
        ..Default::default()
    }
}

async fn source(f: &Fixture) -> OpenLdapSource {
    OpenLdapSource::connect(&f.cfg, &conn(), OpenLdapOptions { page_size: 2 })
        .await
        .unwrap()
}

/// entryUUID of `dn` read with ldapsearch.
async fn uuid_of(slapd: &Slapd, dn: &str) -> String {
    let out = slapd
        .ldapsearch(&["-LLL", "-b", dn, "-s", "base", "entryUUID"])
        .await;
    out.lines()
        .find_map(|l| l.strip_prefix("entryUUID: "))
        .unwrap_or_else(|| panic!("no entryUUID for {dn}: {out}"))
        .trim()
        .to_string()
}

fn text(o: &SourceObject, attr: &str) -> String {
    match o.attrs.get(attr).and_then(|v| v.first()) {
        Some(AttrValue::Text(t)) => t.to_string(),
        other => panic!("{attr} of {}: {other:?}", o.dn),
    }
}

fn upserts(changes: &[Change]) -> HashMap<String, SourceObject> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert { object, whole } => {
                assert!(whole, "entries come whole: {object:?}");
                Some((object.anchor.clone(), object.clone()))
            }
            _ => None,
        })
        .collect()
}

fn deletions(changes: &[Change]) -> Vec<(String, String)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Deleted {
                anchor,
                evidence: DeletionEvidence::SyncDelete { phase },
            } => Some((anchor.clone(), phase.clone())),
            Change::Deleted { evidence, .. } => panic!("unexpected evidence {evidence:?}"),
            _ => None,
        })
        .collect()
}

fn present(changes: &[Change]) -> Option<BTreeSet<String>> {
    let mut p = changes.iter().filter_map(|c| match c {
        Change::Present { anchors } => Some(anchors.iter().cloned().collect()),
        _ => None,
    });
    let first = p.next();
    assert!(p.next().is_none(), "at most one Present: {changes:?}");
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_import_anchors_are_entry_uuids_and_members_resolve() {
    let f = fixture(false).await;
    let people = f.slapd.people_dn();
    let mut src = source(&f).await;
    let full = src.full_import().await.unwrap();
    assert_eq!(full.objects.len(), 5, "{:?}", full.objects);
    assert_eq!(full.dangling_members, 1, "uid=ghost");
    assert_eq!(full.without_anchor, 0);
    let by_dn: HashMap<&str, &SourceObject> =
        full.objects.iter().map(|o| (o.dn.as_str(), o)).collect();
    let mut uuids = HashMap::new();
    for i in 1..=3 {
        let dn = format!("uid=u{i},{people}");
        let u = uuid_of(&f.slapd, &dn).await;
        let o = by_dn[dn.as_str()];
        assert_eq!(o.anchor, u);
        assert_eq!(o.kind, ObjectKind::User);
        assert_eq!(text(o, "mail"), format!("u{i}@example.org"));
        assert!(!o.attrs.contains_key("userpassword"), "no secrets: {o:?}");
        uuids.insert(i, u);
    }
    let svc = uuid_of(&f.slapd, "cn=svc,dc=example,dc=org").await;
    let team = by_dn[format!("cn=team,{}", f.slapd.groups_dn()).as_str()];
    assert_eq!(team.kind, ObjectKind::Group);
    assert_eq!(
        team.members,
        BTreeSet::from([uuids[&1].clone(), uuids[&2].clone(), svc]),
        "members outside the filters are still anchors; the dangling one is dropped"
    );
    assert!(!team.attrs.contains_key("member"));
    let uteam = by_dn[format!("cn=uteam,{}", f.slapd.groups_dn()).as_str()];
    assert_eq!(uteam.members, BTreeSet::from([uuids[&3].clone()]));
    assert_eq!(
        uteam.anchor,
        uuid_of(&f.slapd, &format!("cn=uteam,{}", f.slapd.groups_dn())).await
    );
    // Lowercase hyphenated.
    assert!(full
        .objects
        .iter()
        .all(|o| o.anchor.len() == 36 && o.anchor == o.anchor.to_ascii_lowercase()));

    // The same through a refresh with an empty cookie: everything as an upsert, and a
    // present phase (nothing else exists).
    let d = src.delta(&[]).await.unwrap();
    assert!(!d.cookie.is_empty());
    let ups = upserts(&d.changes);
    assert_eq!(ups.len(), 5, "{:?}", d.changes);
    for o in &full.objects {
        let u = &ups[&o.anchor];
        assert_eq!((&u.dn, u.kind, &u.members), (&o.dn, o.kind, &o.members));
        assert_eq!(u.attrs, o.attrs);
    }
    // slapd ends an initial refresh with refreshDeletes=TRUE: no present phase.
    assert!(!d.present_phase, "{:?}", d.changes);
    src.close().await;
}

/// Changes made to the fixture between two refreshes: modify u1, delete u2, rename u3,
/// add u4, team gains u4 and loses u1. Returns the anchors (u1, u2, u3, u4, team).
async fn make_changes(f: &Fixture) -> [String; 5] {
    let people = f.slapd.people_dn();
    let groups = f.slapd.groups_dn();
    let u1 = uuid_of(&f.slapd, &format!("uid=u1,{people}")).await;
    let u2 = uuid_of(&f.slapd, &format!("uid=u2,{people}")).await;
    let u3 = uuid_of(&f.slapd, &format!("uid=u3,{people}")).await;
    let team = uuid_of(&f.slapd, &format!("cn=team,{groups}")).await;
    f.slapd
        .ldapmodify(&format!(
            "dn: uid=u1,{people}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    f.slapd.ldapdelete(&format!("uid=u2,{people}")).await;
    f.slapd
        .ldapmodrdn(&format!("uid=u3,{people}"), "uid=u3b", None)
        .await;
    f.slapd.ldapadd(&user(4, people)).await;
    f.slapd
        .ldapmodify(&format!(
            "dn: cn=team,{groups}\nchangetype: modify\nadd: member\nmember: uid=u4,{people}\n-\n\
             delete: member\nmember: uid=u1,{people}\n\n"
        ))
        .await;
    let u4 = uuid_of(&f.slapd, &format!("uid=u4,{people}")).await;
    [u1, u2, u3, u4, team]
}

async fn check_upserts(f: &Fixture, changes: &[Change], ids: &[String; 5]) {
    let people = f.slapd.people_dn();
    let [u1, _u2, u3, u4, team] = ids;
    let ups = upserts(changes);
    assert_eq!(
        ups.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([u1.clone(), u3.clone(), u4.clone(), team.clone()]),
        "exactly the changed entries: {changes:?}"
    );
    assert_eq!(text(&ups[u1], "title"), "Boss");
    assert_eq!(ups[u3].dn, format!("uid=u3b,{people}"));
    assert_eq!(text(&ups[u3], "uid"), "u3b");
    assert_eq!(ups[u4].kind, ObjectKind::User);
    assert_eq!(ups[team].kind, ObjectKind::Group);
    let svc = uuid_of(&f.slapd, "cn=svc,dc=example,dc=org").await;
    // u2 is deleted (its DN now dangles: no refint overlay), u1 removed, u4 added.
    assert_eq!(ups[team].members, BTreeSet::from([u4.clone(), svc]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_with_a_session_log_reports_changes_and_deletions() {
    let f = fixture(true).await;
    let mut src = source(&f).await;
    let cookie = src.baseline_cookie().await.unwrap();
    let ids = make_changes(&f).await;
    let d = src.delta(&cookie).await.unwrap();
    check_upserts(&f, &d.changes, &ids).await;
    assert_eq!(
        deletions(&d.changes),
        vec![(ids[1].clone(), "refreshDeletes".to_string())],
        "{:?}",
        d.changes
    );
    assert!(!d.present_phase, "{:?}", d.changes);
    assert_eq!(present(&d.changes), None);
    assert_ne!(d.cookie, cookie);

    // Nothing changed since: nothing reported, the cookie still works.
    let again = src.delta(&d.cookie).await.unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(!again.cookie.is_empty());

    // Across a restart, the session log still serves the cookie.
    src.close().await;
    let mut f = f;
    f.slapd.restart().await;
    let people = f.slapd.people_dn();
    f.slapd.ldapdelete(&format!("uid=u4,{people}")).await;
    let mut src = source(&f).await;
    let d2 = src.delta(&again.cookie).await.unwrap();
    assert_eq!(
        deletions(&d2.changes),
        vec![(ids[3].clone(), "refreshDeletes".to_string())],
        "{:?}",
        d2.changes
    );
    src.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_without_a_session_log_sends_the_present_set() {
    let f = fixture(false).await;
    let mut src = source(&f).await;
    let full = src.full_import().await.unwrap();
    let cookie = src.baseline_cookie().await.unwrap();
    let ids = make_changes(&f).await;
    let d = src.delta(&cookie).await.unwrap();
    check_upserts(&f, &d.changes, &ids).await;
    assert!(deletions(&d.changes).is_empty(), "{:?}", d.changes);
    assert!(d.present_phase);
    let p = present(&d.changes).expect("a present phase");
    // Known anchors neither present nor upserted: exactly the deleted u2.
    let ups = upserts(&d.changes);
    let gone: Vec<&String> = full
        .objects
        .iter()
        .map(|o| &o.anchor)
        .filter(|a| !p.contains(*a) && !ups.contains_key(*a))
        .collect();
    assert_eq!(
        gone,
        vec![&ids[1]],
        "present {p:?}, upserts {:?}",
        ups.keys()
    );

    // Nothing changed since: no upserts, nothing derived as deleted.
    let again = src.delta(&d.cookie).await.unwrap();
    assert!(upserts(&again.changes).is_empty(), "{:?}", again.changes);
    if let Some(p) = present(&again.changes) {
        let live: Vec<&String> = full
            .objects
            .iter()
            .map(|o| &o.anchor)
            .filter(|a| **a != ids[1])
            .collect();
        assert!(live.iter().all(|a| p.contains(*a)), "{p:?}");
    }
    src.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_cookie_is_rejected() {
    for session_log in [true, false] {
        let f = fixture(session_log).await;
        let mut src = source(&f).await;
        for bad in [&b"not a cookie"[..], b"rid=000,csn=garbage"] {
            // dirsync refuses it before sending it: the message must not blame the source.
            match src.delta(bad).await {
                Err(e @ Error::CookieUnusable(_)) => {
                    let line = e.to_string();
                    assert!(!line.contains("source rejected"), "{line}");
                    assert!(line.contains("not an OpenLDAP sync cookie"), "{line}");
                }
                other => panic!("session_log={session_log} cookie {bad:?}: {other:?}"),
            }
        }
        // The connection is still usable.
        assert!(!src.baseline_cookie().await.unwrap().is_empty());
        src.close().await;
    }
}

/// A 389 DS native-mode cookie (issue 17, finding 1) gets one line naming the dsconf
/// command that switches Content Sync to its OpenLDAP-compatible mode, as a configuration
/// error (exit 2), not a silent full import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_389_native_cookie_names_the_setting_to_change() {
    let f = fixture(true).await;
    let mut src = source(&f).await;
    let native = b"localhost:38901#cn=directory manager:dc=example,dc=org:(objectClass=*)#7";
    match src.delta(native).await {
        Err(e @ Error::Config(_)) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.contains("plugin contentsync set --allow-openldap on"),
                "{line}"
            );
            assert_eq!(e.exit() as i32, 2);
        }
        other => panic!("{other:?}"),
    }
    src.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error() {
    let f = fixture(false).await;
    let pw = f._dir.path().join("bad");
    std::fs::write(&pw, "wrong\n").unwrap();
    let mut cfg = f.cfg.clone();
    cfg.password = SecretRef::File(pw);
    match OpenLdapSource::connect(&cfg, &conn(), OpenLdapOptions::default()).await {
        Err(Error::SourceRefused(msg)) => {
            assert!(msg.contains("invalid credentials"), "{msg}");
            assert!(!msg.contains("wrong"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // Nobody listening: an error too, not a hang or a panic.
    let mut cfg = f.cfg.clone();
    cfg.url = "ldap://127.0.0.1:1".into();
    assert!(matches!(
        OpenLdapSource::connect(&cfg, &conn(), OpenLdapOptions::default()).await,
        Err(Error::Source(_))
    ));
}

/// A server that limits the page size (`size.pr`) refuses a larger page before sending
/// anything; the full import asks again with smaller pages and still sees every entry.
#[tokio::test]
async fn a_page_larger_than_the_servers_limit_is_asked_again_smaller() {
    let slapd = Slapd::start(SlapdOptions {
        page_limit: Some(100),
        ..Default::default()
    })
    .await;
    let people = slapd.people_dn();
    let mut ldif = String::new();
    for i in 1..=3 {
        ldif.push_str(&user(i, people));
    }
    slapd.ldapadd(&ldif).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw1\n").unwrap();
    let bind_dn = format!("uid=u1,{people}");
    // The limit is real: ldapsearch asking for pages of 1000 as that user is refused.
    let refused = std::process::Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-H",
            &slapd.url(),
            "-D",
            &bind_dn,
            "-w",
            "pw1",
        ])
        .args([
            "-E",
            "pr=1000/noprompt",
            "-b",
            slapd.base_dn(),
            "(uid=*)",
            "1.1",
        ])
        .env("LDAPNOINIT", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("Administrative limit exceeded"),
        "{said}"
    );
    let cfg = source_config(&slapd, bind_dn, pw);
    let mut src = OpenLdapSource::connect(&cfg, &conn(), OpenLdapOptions { page_size: 1000 })
        .await
        .unwrap();
    let full = src.full_import().await.unwrap();
    let mut dns: Vec<&str> = full.objects.iter().map(|o| o.dn.as_str()).collect();
    dns.sort_unstable();
    let want: Vec<String> = (1..=3).map(|i| format!("uid=u{i},{people}")).collect();
    assert_eq!(dns, want);
}

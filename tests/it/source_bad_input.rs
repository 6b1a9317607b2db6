//! Bad and unusual input from real servers, through the CLI binary: deletions a cursor can
//! no longer reveal, a huge group, values that are not UTF-8, DNs with escapes and
//! non-ASCII names, referrals, and a server nobody answers on.

use std::path::Path;
use std::time::Instant;

use base64::Engine;
use dirsync::log::event::AttrValue;
use dirsync::log::{AnyStore, OpenMode};
use dirsync::project::{replay, ObjectRecord, State};
use serde_json::Value;

use crate::common::{dirsync, Run};
use crate::lab::{proc, Samba, Slapd, SlapdOptions};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";
const STAFF: &str = "OU=Staff,DC=test,DC=lan";

/// A store directory with a config for a source.
fn store_dir(kind: &str, url: &str, bind: &str, password: &str, base: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), format!("{password}\n")).unwrap();
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"{kind}\"\nurl = \"{url}\"\n\
             bind_dn = \"{bind}\"\npassword_file = \"pw\"\nbase_dn = \"{base}\"\n"
        ),
    )
    .unwrap();
    let run = dirsync(dir.path(), &["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    dir
}

fn slapd_store(slapd: &Slapd) -> tempfile::TempDir {
    store_dir(
        "openldap",
        &slapd.url(),
        slapd.bind_dn(),
        slapd.password(),
        slapd.base_dn(),
    )
}

fn sync_run(dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["sync", "--instance", "x", "--staging", "--format", "json"];
    args.extend_from_slice(extra);
    dirsync(dir, &args)
}

fn sync(dir: &Path, extra: &[&str]) -> Value {
    let run = sync_run(dir, extra);
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    v["import"].clone()
}

async fn store(dir: &Path) -> AnyStore {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    AnyStore::open(&url, OpenMode::Existing).await.unwrap()
}

async fn state(dir: &Path) -> State {
    std::sync::Arc::unwrap_or_clone(replay::current(&store(dir).await).await.unwrap())
}

/// The record whose DN starts with `rdn,` (any state), and its anchor.
fn by_rdn<'a>(state: &'a State, rdn: &str) -> (&'a String, &'a ObjectRecord) {
    state
        .objects
        .objects
        .iter()
        .map(|(a, r)| (a, &**r))
        .find(|(_, r)| {
            unhex(&r.dn)
                .to_lowercase()
                .starts_with(&format!("{},", rdn.to_lowercase()))
        })
        .unwrap_or_else(|| {
            let dns: Vec<&str> = state
                .objects
                .objects
                .values()
                .map(|r| r.dn.as_str())
                .collect();
            panic!("no {rdn} in {dns:?}")
        })
}

/// A DN with its `\XX` hex escapes written as `\c` (slapd answers `cn=Smith\2C Ann` for
/// `cn=Smith\, Ann`), to compare DNs as the server may spell them.
fn unhex(dn: &str) -> String {
    let b = dn.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'\\' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c < 0x80 {
                    out.extend([b'\\', c]);
                } else {
                    out.push(c);
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn changes(v: &Value) -> [u64; 4] {
    ["added", "changed", "deleted", "left_scope"].map(|k| v[k].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expunged_deletion_is_found_by_a_full_import() {
    let mut samba = Samba::start().await;
    samba
        .ldapadd(&format!(
            "dn: {STAFF}\nobjectClass: organizationalUnit\n\n\
             dn: CN=u1,{STAFF}\nobjectClass: user\nsAMAccountName: u1\nuserAccountControl: 512\n\n\
             dn: CN=u2,{STAFF}\nobjectClass: user\nsAMAccountName: u2\nuserAccountControl: 512\n\n"
        ))
        .await;
    let dir = store_dir(
        "ad",
        &samba.url(),
        samba.bind_dn(),
        samba.password(),
        samba.base_dn(),
    );
    let v = sync(dir.path(), &[]);
    assert_eq!(v["mode"], "full", "{v}");
    let u2 = by_rdn(&state(dir.path()).await, "CN=u2").0.clone();

    samba.ldapdelete(&format!("CN=u2,{STAFF}")).await;
    samba.expunge_tombstones().await;

    // The tombstone is gone: a delta from the old cursor cannot see the deletion.
    let v = sync(dir.path(), &[]);
    assert_eq!(v["mode"], "delta", "{v}");
    assert_eq!(v["deleted"], 0, "{v}");
    assert!(state(dir.path()).await.objects.objects[&u2].live());

    // A full import finds it missing and says so.
    let v = sync(dir.path(), &["--full"]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(v["deleted"], 1, "{v}");
    let s = state(dir.path()).await;
    let r = &s.objects.objects[&u2];
    assert!(!r.live());
    assert_eq!(
        r.deletion.as_ref().unwrap().evidence.label(),
        "absent-from-full-import"
    );
    assert!(by_rdn(&s, "CN=u1").1.live());
}

/// Members of the big group. 50,000 as asked; measured on the 2-core lab machine: see the
/// timings printed by the test.
const BIG: usize = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_fifty_thousand_members_resolves() {
    let t0 = Instant::now();
    let mut slapd = Slapd::start(SlapdOptions::default()).await;
    slapd.stop().await;
    let mut ldif = String::with_capacity(BIG * 120);
    for i in 0..BIG {
        ldif.push_str(&format!(
            "dn: uid=m{i},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: m{i}\ncn: m{i}\nsn: m{i}\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=big,{GROUPS}\nobjectClass: groupOfNames\ncn: big\n"
    ));
    for i in 0..BIG {
        ldif.push_str(&format!("member: uid=m{i},{PEOPLE}\n"));
    }
    slapd.slapadd(&ldif).await;
    slapd.restart().await;
    let loaded = t0.elapsed();
    let dir = slapd_store(&slapd);
    let t1 = Instant::now();
    let v = sync(dir.path(), &[]);
    let imported = t1.elapsed();
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(v["added"], BIG as u64 + 1, "{v}");
    let t2 = Instant::now();
    let s = state(dir.path()).await;
    let replayed = t2.elapsed();
    let (_, big) = by_rdn(&s, "cn=big");
    assert_eq!(big.members.len(), BIG);
    assert!(big
        .members
        .iter()
        .all(|m| s.objects.objects.get(m).is_some_and(|r| r.live())));
    eprintln!(
        "big group: {BIG} members; load {:.1} s, full import {:.1} s, replay {:.1} s",
        loaded.as_secs_f64(),
        imported.as_secs_f64(),
        replayed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_are_kept_as_bytes() {
    // Neither lab server stores a Directory String value that is not UTF-8: slapd refuses it
    // even through `slapadd -s` ("smr_normalize description 21"), Samba with "invalid
    // value". So the binary attribute the AD allow-list keeps, mS-DS-ConsistencyGuid (octet
    // string), carries the bytes: one value that is not UTF-8 and one that happens to be
    // (which ldap3 hands over as text).
    let samba = Samba::start().await;
    let not_utf8: &[u8] = &[
        0x66, 0x6f, 0xff, 0xfe, 0x80, 0x6f, 0xc3, 0x28, 1, 2, 3, 4, 5, 6, 7, 0xf8,
    ];
    let ascii: &[u8] = b"0123456789abcdef";
    samba
        .ldapadd(&format!(
            "dn: {STAFF}\nobjectClass: organizationalUnit\n\n\
             dn: CN=bin,{STAFF}\nobjectClass: user\nsAMAccountName: bin\n\
             userAccountControl: 512\nmS-DS-ConsistencyGuid:: {}\n\n\
             dn: CN=txt,{STAFF}\nobjectClass: user\nsAMAccountName: txt\n\
             userAccountControl: 512\nmS-DS-ConsistencyGuid:: {}\n\n",
            B64.encode(not_utf8),
            B64.encode(ascii)
        ))
        .await;
    let dir = store_dir(
        "ad",
        &samba.url(),
        samba.bind_dn(),
        samba.password(),
        samba.base_dn(),
    );
    let v = sync(dir.path(), &[]);
    assert_eq!(v["mode"], "full", "{v}");
    let s = state(dir.path()).await;
    let binary = |b: &[u8]| vec![AttrValue::Binary { b64: b.to_vec() }];
    let (anchor, r) = by_rdn(&s, "CN=bin");
    let anchor = anchor.clone();
    assert_eq!(r.attrs["ms-ds-consistencyguid"], binary(not_utf8));
    assert_eq!(r.attrs["cn"], vec![AttrValue::Text("bin".into())]);
    assert_eq!(
        by_rdn(&s, "CN=txt").1.attrs["ms-ds-consistencyguid"],
        binary(ascii)
    );
    // A delta keeps them. (Changing the consistency GUID would change the anchor: a new
    // object, not a test of values.)
    samba
        .ldapmodify(&format!(
            "dn: CN=bin,{STAFF}\nchangetype: modify\nreplace: description\n\
             description: changed\n-\n\n"
        ))
        .await;
    let v = sync(dir.path(), &[]);
    assert_eq!(v["mode"], "delta", "{v}");
    let s = state(dir.path()).await;
    let r = &s.objects.objects[&anchor];
    assert_eq!(r.attrs["ms-ds-consistencyguid"], binary(not_utf8));
    assert_eq!(
        r.attrs["description"],
        vec![AttrValue::Text("changed".into())]
    );
    assert_eq!(
        by_rdn(&s, "CN=txt").1.attrs["ms-ds-consistencyguid"],
        binary(ascii)
    );
    // A full import agrees with what the deltas recorded.
    let v = sync(dir.path(), &["--full"]);
    assert_eq!(changes(&v), [0, 0, 0, 0], "{v}");
}

async fn escaped_and_non_ascii_dns(session_log: bool) {
    let slapd = Slapd::start(SlapdOptions {
        session_log,
        ..Default::default()
    })
    .await;
    let smith = format!("cn=Smith\\, Ann,{PEOPLE}");
    let zoe = format!("cn=Zoë Ærø,{PEOPLE}");
    slapd
        .ldapadd(&format!(
            "dn: {smith}\nobjectClass: inetOrgPerson\ncn: Smith, Ann\nsn: Smith\n\n\
             dn:: {}\nobjectClass: inetOrgPerson\ncn:: {}\nsn: Ærø\n\n\
             dn: cn=team,{GROUPS}\nobjectClass: groupOfNames\ncn: team\nmember: {smith}\n\
             member:: {}\n\n",
            B64.encode(&zoe),
            B64.encode("Zoë Ærø"),
            B64.encode(&zoe),
        ))
        .await;
    let dir = slapd_store(&slapd);
    let v = sync(dir.path(), &[]);
    assert_eq!(v["added"], 3, "{v}");
    let s = state(dir.path()).await;
    let (a_smith, r) = by_rdn(&s, "cn=Smith\\, Ann");
    assert_eq!(unhex(&r.dn), smith);
    assert_eq!(r.attrs["cn"], vec![AttrValue::Text("Smith, Ann".into())]);
    let (a_zoe, r) = by_rdn(&s, "cn=Zoë Ærø");
    assert_eq!(unhex(&r.dn), zoe);
    let (a_smith, a_zoe) = (a_smith.clone(), a_zoe.clone());
    let team = &by_rdn(&s, "cn=team").1.members;
    assert!(team.contains(&a_smith) && team.contains(&a_zoe), "{team:?}");

    // Rename both (one into an escaped, non-ASCII name), keeping the group's values
    // current as the refint overlay would.
    let smith2 = format!("cn=Ærø\\, Zoë,{PEOPLE}");
    let zoe2 = format!("cn=Łukasz \\+ Ænne,{PEOPLE}");
    slapd
        .ldapmodify(&format!(
            "dn: {smith}\nchangetype: modrdn\nnewrdn:: {}\ndeleteoldrdn: 1\n\n\
             dn:: {}\nchangetype: modrdn\nnewrdn:: {}\ndeleteoldrdn: 1\n\n\
             dn: cn=team,{GROUPS}\nchangetype: modify\nreplace: member\nmember:: {}\n\
             member:: {}\n-\n\n",
            B64.encode("cn=Ærø\\, Zoë"),
            B64.encode(&zoe),
            B64.encode("cn=Łukasz \\+ Ænne"),
            B64.encode(&smith2),
            B64.encode(&zoe2),
        ))
        .await;
    let v = sync(dir.path(), &[]);
    assert_eq!(v["mode"], "delta", "{v}");
    let s = state(dir.path()).await;
    let r = &s.objects.objects[&a_smith];
    assert!(r.live());
    assert_eq!(unhex(&r.dn), smith2);
    assert_eq!(r.attrs["cn"], vec![AttrValue::Text("Ærø, Zoë".into())]);
    let r = &s.objects.objects[&a_zoe];
    assert!(r.live());
    assert_eq!(unhex(&r.dn), zoe2);
    let team = &by_rdn(&s, "cn=team").1.members;
    assert_eq!(team.len(), 2);
    assert!(team.contains(&a_smith) && team.contains(&a_zoe), "{team:?}");
    // The deltas and a full import agree.
    let v = sync(dir.path(), &["--full"]);
    assert_eq!(changes(&v), [0, 0, 0, 0], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_and_non_ascii_dns_round_trip_with_session_log() {
    escaped_and_non_ascii_dns(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_and_non_ascii_dns_round_trip_without_session_log() {
    escaped_and_non_ascii_dns(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrals_are_skipped_and_counted() {
    let slapd = Slapd::start(SlapdOptions::default()).await;
    // A referral object needs ManageDsaIT (-M) to be added as an entry.
    proc::ldap_tool(
        "ldapadd",
        &slapd.url(),
        slapd.bind_dn(),
        slapd.password(),
        &["-M"],
        Some(&format!(
            "dn: cn=elsewhere,{PEOPLE}\nobjectClass: referral\nobjectClass: extensibleObject\n\
             cn: elsewhere\nref: ldap://elsewhere.invalid/ou=people,dc=other,dc=org\n\n\
             dn: uid=u1,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: u1\ncn: u1\nsn: u1\n\n"
        )),
    )
    .await;
    let dir = slapd_store(&slapd);
    let v = sync(dir.path(), &[]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(v["added"], 1, "{v}");
    assert!(v["referrals_skipped"].as_u64().unwrap() >= 1, "{v}");
    // A delta over the same tree is not troubled by it either.
    slapd
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n-\n\n"
        ))
        .await;
    let v = sync(dir.path(), &[]);
    assert_eq!(v["mode"], "delta", "{v}");
    assert_eq!(changes(&v), [0, 1, 0, 0], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_records_only_the_failed_cycle() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = store_dir(
        "openldap",
        &format!("ldap://127.0.0.1:{port}"),
        "cn=admin,dc=example,dc=org",
        "secret",
        "dc=example,dc=org",
    );
    let t0 = Instant::now();
    let run = sync_run(dir.path(), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(!run.stderr.contains("secret"), "{run:?}");
    assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());
    // Nothing the source said; the failed cycle only (INTERFACE.md: every failed cycle is
    // recorded).
    crate::common::assert_only_failed_cycle(
        &store(dir.path()).await,
        dirsync::log::event::FailureReason::Source,
    )
    .await;
}

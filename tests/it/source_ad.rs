//! The AD source against a real Samba AD DC: full import (anchors, members, ranged
//! retrieval), DirSync deltas, cookie rejection, connection errors.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use dirsync::config::{SecretRef, SourceConfig, SourceKind, Tls};
use dirsync::log::event::{AttrValue, DeletionEvidence, ObjectKind, SourceObject};
use dirsync::source::{AdOptions, AdSource, ConnectOptions, DeltaItem, DeltaObject};
use dirsync::Error;
use uuid::Uuid;

use crate::lab::Samba;

const OU: &str = "OU=Src,DC=test,DC=lan";

struct Fixture {
    samba: Samba,
    cfg: SourceConfig,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let samba = Samba::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", samba.password())).unwrap();
    let cfg = SourceConfig {
        kind: SourceKind::Ad,
        url: samba.url(),
        tls: Tls::None,
        ca_file: None,
        limits: Default::default(),
        bind_dn: samba.bind_dn().to_string(),
        password: SecretRef::File(pw),
        base_dn: samba.base_dn().to_string(),
        users: "(&(objectClass=user)(objectCategory=person))".into(),
        groups: "(objectClass=group)".into(),
        include: vec![OU.into()],
        exclude: vec![],
        anchor: None,
        mapped: Vec::new(),
        mapping_fingerprint: String::new(),
        member_of: Vec::new(),
    };
    Fixture {
        samba,
        cfg,
        _dir: dir,
    }
}

fn conn() -> ConnectOptions {
    ConnectOptions {
        timeout: Duration::from_secs(20),
        danger_skip_tls_verify: false,
        ..Default::default()
    }
}

async fn source(f: &Fixture, opts: AdOptions) -> AdSource {
    AdSource::connect(&f.cfg, &conn(), opts).await.unwrap()
}

fn user_ldif(cn: &str, ou: &str, extra: &str) -> String {
    format!(
        "dn: CN={cn},{ou}\nobjectClass: user\nsAMAccountName: {cn}\n\
         userPrincipalName: {cn}@test.lan\nuserAccountControl: 544\n{extra}\n"
    )
}

/// objectGUID of `dn` read with ldapsearch (base64) -> anchor form.
async fn guid_of(samba: &Samba, dn: &str) -> String {
    let out = samba
        .ldapsearch(&[
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            dn,
            "-s",
            "base",
            "objectGUID",
        ])
        .await;
    let b64 = out
        .lines()
        .find_map(|l| l.strip_prefix("objectGUID:: "))
        .unwrap_or_else(|| panic!("no objectGUID for {dn}:\n{out}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap();
    Uuid::from_bytes_le(bytes.try_into().unwrap())
        .hyphenated()
        .to_string()
}

fn text(o: &SourceObject, attr: &str) -> Option<String> {
    match o.attrs.get(attr)?.first()? {
        AttrValue::Text(t) => Some(t.to_string()),
        AttrValue::Binary { .. } => None,
    }
}

fn by_dn<'a>(objs: &'a [SourceObject], dn: &str) -> &'a SourceObject {
    objs.iter()
        .find(|o| o.dn.eq_ignore_ascii_case(dn))
        .unwrap_or_else(|| panic!("{dn} not imported"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_import_has_anchors_members_and_everything_matching() {
    let f = fixture().await;
    let mut ldif = format!("dn: {OU}\nobjectClass: organizationalUnit\n\n");
    for cn in ["ann", "bob", "cid"] {
        ldif.push_str(&user_ldif(cn, OU, ""));
    }
    ldif.push_str(&format!(
        "dn: CN=staff,{OU}\nobjectClass: group\nmember: CN=ann,{OU}\nmember: CN=bob,{OU}\n\n"
    ));
    f.samba.ldapadd(&ldif).await;
    f.samba
        .ldapmodify(&format!(
            "dn: CN=cid,{OU}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 546\n-\n"
        ))
        .await;

    let mut src = source(&f, AdOptions::default()).await;
    let full = src.full_import().await.unwrap();
    let objs = &full.objects;

    for cn in ["ann", "bob", "cid"] {
        let dn = format!("CN={cn},{OU}");
        let o = by_dn(objs, &dn);
        assert_eq!(o.kind, ObjectKind::User);
        assert_eq!(o.anchor, guid_of(&f.samba, &dn).await, "{dn}");
        assert_eq!(
            text(o, "userprincipalname").as_deref(),
            Some(format!("{cn}@test.lan").as_str())
        );
        assert!(matches!(o.attrs["objectguid"][0], AttrValue::Binary { .. }));
        assert!(!o.attrs.contains_key("usnchanged"));
    }
    assert_eq!(
        text(by_dn(objs, &format!("CN=cid,{OU}")), "useraccountcontrol").as_deref(),
        Some("546")
    );
    assert_eq!(
        text(by_dn(objs, &format!("CN=ann,{OU}")), "useraccountcontrol").as_deref(),
        Some("544")
    );
    let staff = by_dn(objs, &format!("CN=staff,{OU}"));
    assert_eq!(staff.kind, ObjectKind::Group);
    assert_eq!(text(staff, "cn").as_deref(), Some("staff"));
    let want: BTreeSet<String> = [
        guid_of(&f.samba, &format!("CN=ann,{OU}")).await,
        guid_of(&f.samba, &format!("CN=bob,{OU}")).await,
    ]
    .into();
    assert_eq!(staff.members, want);
    // Objects outside include are returned too (the caller's scope decides).
    by_dn(objs, "CN=Administrator,CN=Users,DC=test,DC=lan");
    by_dn(objs, "CN=Domain Users,CN=Users,DC=test,DC=lan");
    // No duplicates.
    let anchors: BTreeSet<&str> = objs.iter().map(|o| o.anchor.as_str()).collect();
    assert_eq!(anchors.len(), objs.len());

    // ms-DS-ConsistencyGuid wins when set.
    let cg = Uuid::new_v4();
    let cg_b64 = base64::engine::general_purpose::STANDARD.encode(cg.to_bytes_le());
    f.samba
        .ldapmodify(&format!(
            "dn: CN=bob,{OU}\nchangetype: modify\nreplace: mS-DS-ConsistencyGuid\nmS-DS-ConsistencyGuid:: {cg_b64}\n-\n"
        ))
        .await;
    let full = src.full_import().await.unwrap();
    let bob = by_dn(&full.objects, &format!("CN=bob,{OU}"));
    assert_eq!(bob.anchor, cg.hyphenated().to_string());
    let staff = by_dn(&full.objects, &format!("CN=staff,{OU}"));
    assert!(staff.members.contains(&bob.anchor), "{:?}", staff.members);

    // Source facts: Samba provisions tombstoneLifetime 180; unset means 60.
    let info = src.source_info().await.unwrap();
    assert_eq!(info.tombstone_lifetime_days, Some(180));
    assert!(info.highest_usn.unwrap() > 3000);
    f.samba
        .ldapmodify(
            "dn: CN=Directory Service,CN=Windows NT,CN=Services,CN=Configuration,DC=test,DC=lan\n\
             changetype: modify\ndelete: tombstoneLifetime\n-\n",
        )
        .await;
    let info = src.source_info().await.unwrap();
    assert_eq!(info.tombstone_lifetime_days, Some(60));
    src.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_2000_members_via_ranged_retrieval() {
    let f = fixture().await;
    let n = 2000;
    let t0 = Instant::now();
    f.samba
        .ldapadd(&format!(
            "dn: {OU}\nobjectClass: organizationalUnit\n\ndn: CN=big,{OU}\nobjectClass: group\n\n"
        ))
        .await;
    // In chunks: the fixture writes all of stdin before reading stdout, and ldapadd prints
    // a line per entry, so one 2,000-entry LDIF fills the stdout pipe and deadlocks.
    for chunk in (0..n).collect::<Vec<_>>().chunks(400) {
        let mut ldif = String::new();
        for i in chunk {
            ldif.push_str(&format!(
                "dn: CN=m{i:04},{OU}\nobjectClass: user\nsAMAccountName: m{i:04}\n\n"
            ));
        }
        f.samba.ldapadd(&ldif).await;
    }
    let mut m = format!("dn: CN=big,{OU}\nchangetype: modify\nadd: member\n");
    for i in 0..n {
        m.push_str(&format!("member: CN=m{i:04},{OU}\n"));
    }
    m.push_str("-\n");
    f.samba.ldapmodify(&m).await;
    eprintln!("source_ad: 2000 users + members in {:?}", t0.elapsed());

    for step in [Some(700), None] {
        let mut src = source(
            &f,
            AdOptions {
                member_range_step: step,
                ..AdOptions::default()
            },
        )
        .await;
        let t1 = Instant::now();
        let full = src.full_import().await.unwrap();
        eprintln!(
            "source_ad: full import (step {step:?}) in {:?}",
            t1.elapsed()
        );
        let users: HashMap<&str, &str> = full
            .objects
            .iter()
            .filter(|o| o.kind == ObjectKind::User)
            .map(|o| (o.anchor.as_str(), o.dn.as_str()))
            .collect();
        let big = by_dn(&full.objects, &format!("CN=big,{OU}"));
        assert_eq!(big.members.len(), n, "step {step:?}");
        assert!(big.members.iter().all(|a| users
            .get(a.as_str())
            .is_some_and(|dn| dn.starts_with("CN=m"))));
        assert!(full.objects.len() > n);
        src.close().await;
    }
}

fn upserts(items: &[DeltaItem]) -> Vec<&DeltaObject> {
    items
        .iter()
        .filter_map(|i| match i {
            DeltaItem::Upsert(o) => Some(o),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirsync_reports_exactly_the_changes() {
    let f = fixture().await;
    let other = "OU=Other,DC=test,DC=lan";
    let mut ldif = format!(
        "dn: {OU}\nobjectClass: organizationalUnit\n\ndn: {other}\nobjectClass: organizationalUnit\n\n"
    );
    for cn in ["u1", "u2", "u3", "u4", "u5"] {
        ldif.push_str(&user_ldif(cn, OU, "title: Clerk\n"));
    }
    ldif.push_str(&format!(
        "dn: CN=g1,{OU}\nobjectClass: group\nmember: CN=u1,{OU}\nmember: CN=u2,{OU}\n\n"
    ));
    f.samba.ldapadd(&ldif).await;
    let guid = |cn: &str| {
        let dn = format!("CN={cn},{OU}");
        let samba = &f.samba;
        async move { guid_of(samba, &dn).await }
    };
    let (u1, u2, u3, u4, u5, g1) = (
        guid("u1").await,
        guid("u2").await,
        guid("u3").await,
        guid("u4").await,
        guid("u5").await,
        guid("g1").await,
    );

    let mut src = source(&f, AdOptions::default()).await;
    // Baseline: everything, with a cookie.
    let base = src.delta(&[]).await.unwrap();
    assert!(!base.cookie.is_empty());
    let ups = upserts(&base.changes);
    for a in [&u1, &u2, &u3, &u4, &u5, &g1] {
        let o = ups
            .iter()
            .find(|o| &o.anchor == a)
            .unwrap_or_else(|| panic!("{a} not in baseline"));
        assert!(o.new);
    }
    let u1o = ups.iter().find(|o| o.anchor == u1).unwrap();
    assert_eq!(u1o.kind, Some(ObjectKind::User));
    assert_eq!(u1o.dn, format!("CN=u1,{OU}"));
    assert_eq!(u1o.attrs["cn"], vec![AttrValue::Text("u1".into())]);
    let g1m: BTreeSet<&String> = base
        .changes
        .iter()
        .filter_map(|i| match i {
            DeltaItem::Members { anchor, added, .. } if anchor == &g1 => Some(added),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(g1m, [&u1, &u2].into());

    // Nothing changed: an empty delta.
    let again = src.delta(&base.cookie).await.unwrap();
    assert!(again.changes.is_empty(), "{:#?}", again.changes);

    // The changes.
    f.samba
        .ldapmodify(&format!(
            "dn: CN=u1,{OU}\nchangetype: modify\nreplace: title\ntitle: Boss\n-\n\n\
             dn: CN=g1,{OU}\nchangetype: modify\nadd: member\nmember: CN=u4,{OU}\n-\n\
             delete: member\nmember: CN=u1,{OU}\n-\n\n\
             dn: CN=u5,{OU}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 546\n-\n"
        ))
        .await;
    f.samba.ldapdelete(&format!("CN=u2,{OU}")).await;
    f.samba
        .ldapmodrdn(&format!("CN=u3,{OU}"), "CN=u3b", Some(other))
        .await;

    let d = src.delta(&again.cookie).await.unwrap();
    assert_ne!(d.cookie, again.cookie);
    let mut seen = BTreeSet::new();
    for item in &d.changes {
        match item {
            DeltaItem::Upsert(o) => {
                assert!(!o.new, "{o:?}");
                seen.insert(o.anchor.clone());
                let keys: Vec<&str> = o.attrs.keys().map(|k| k.as_str()).collect();
                if o.anchor == u1 {
                    assert_eq!(keys, ["title"]);
                    assert_eq!(o.attrs["title"], vec![AttrValue::Text("Boss".into())]);
                } else if o.anchor == u5 {
                    assert_eq!(keys, ["useraccountcontrol"]);
                    assert_eq!(
                        o.attrs["useraccountcontrol"],
                        vec![AttrValue::Text("546".into())]
                    );
                } else if o.anchor == u3 {
                    assert_eq!(o.dn, format!("CN=u3b,{other}"));
                    assert_eq!(o.attrs["cn"], vec![AttrValue::Text("u3b".into())]);
                } else {
                    panic!("unexpected upsert {o:#?}");
                }
            }
            DeltaItem::Deleted {
                anchor,
                object_guid,
                dn,
                evidence,
            } => {
                assert_eq!(anchor, &u2);
                assert_eq!(object_guid, &u2);
                assert!(dn.contains("Deleted Objects"), "{dn}");
                let DeletionEvidence::Tombstone {
                    deleted_at,
                    last_known_parent,
                } = evidence
                else {
                    panic!("{evidence:?}")
                };
                assert_eq!(last_known_parent.as_deref(), Some(OU));
                let at = deleted_at.expect("deleted_at");
                assert!((chrono::Utc::now() - at).num_minutes().abs() < 10, "{at}");
                seen.insert(anchor.clone());
            }
            DeltaItem::Members {
                anchor,
                added,
                removed,
                ..
            } => {
                assert_eq!(anchor, &g1);
                assert_eq!(added, &vec![u4.clone()]);
                assert_eq!(removed, &vec![u1.clone()]);
                seen.insert(anchor.clone());
            }
        }
    }
    let want: BTreeSet<String> = [u1, u2, u3, u5, g1].into();
    assert_eq!(seen, want, "{:#?}", d.changes);
    src.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cookie_wrong_password_and_unreachable_are_clear_errors() {
    let f = fixture().await;
    let mut src = source(&f, AdOptions::default()).await;
    let base = src.delta(&[]).await.unwrap();
    match src.delta(b"garbage cookie").await {
        Err(Error::SourceCookieRejected(m)) => assert!(!m.is_empty()),
        other => panic!("want SourceCookieRejected, got {other:?}"),
    }
    let mut truncated = base.cookie.clone();
    truncated.truncate(20);
    assert!(matches!(
        src.delta(&truncated).await,
        Err(Error::SourceCookieRejected(_))
    ));
    // The good cookie still works on the same connection.
    src.delta(&base.cookie).await.unwrap();
    src.close().await;

    // Wrong password.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "not-the-password").unwrap();
    let mut bad = f.cfg.clone();
    bad.password = SecretRef::File(pw);
    let e = AdSource::connect(&bad, &conn(), AdOptions::default())
        .await
        .unwrap_err();
    let m = e.to_string();
    // Permanent: not retried (issue 17.4); Samba names the reason as AD does (data 52e).
    assert!(matches!(e, Error::SourceRefused(_)), "{e:?}");
    assert!(
        m.contains("wrong password (or unknown user) (AD 52e)"),
        "{m}"
    );
    assert!(
        m.contains("invalid credentials") && m.contains("Administrator"),
        "{m}"
    );
    assert!(!m.contains("not-the-password"));
    assert_eq!(e.exit(), dirsync::Exit::Failure);

    // Nothing listening.
    let mut gone = f.cfg.clone();
    gone.url = "ldap://127.0.0.1:9".into();
    let t0 = Instant::now();
    let e = AdSource::connect(&gone, &conn(), AdOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Source(_)), "{e:?}");
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_certificates_unless_told_not_to() {
    let f = fixture().await;
    let mut ldif = format!("dn: {OU}\nobjectClass: organizationalUnit\n\n");
    ldif.push_str(&user_ldif("tls", OU, ""));
    ldif.push_str(&format!(
        "dn: CN=tlsgroup,{OU}\nobjectClass: group\nmember: CN=tls,{OU}\n\n"
    ));
    f.samba.ldapadd(&ldif).await;
    let plain = source(&f, AdOptions::default())
        .await
        .full_import()
        .await
        .unwrap()
        .objects;
    by_dn(&plain, &format!("CN=tls,{OU}"));
    by_dn(&plain, &format!("CN=tlsgroup,{OU}"));
    for (url, tls) in [
        (f.samba.ldaps_url(), Tls::Ldaps),
        (f.samba.url(), Tls::Starttls),
    ] {
        let mut cfg = f.cfg.clone();
        cfg.url = url.clone();
        cfg.tls = tls;
        // Samba's certificate is self-signed: verification (the default) refuses it.
        let e = AdSource::connect(&cfg, &conn(), AdOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Source(_)), "{url}: {e:?}");
        let mut opts = conn();
        opts.danger_skip_tls_verify = true;
        let mut src = AdSource::connect(&cfg, &opts, AdOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{url} {tls:?}: {e}"));
        assert!(src.source_info().await.unwrap().highest_usn.is_some());
        // The full import's paged searches run on a connection of their own: the same
        // transport, and the same objects as over plain LDAP.
        let full = src.full_import().await.unwrap();
        assert_eq!(full.objects, plain, "{url}");
        src.close().await;
    }
    // A ca_file that cannot be read is a configuration error, not ignored.
    let mut cfg = f.cfg.clone();
    cfg.ca_file = Some("/nonexistent/ca.pem".into());
    let e = AdSource::connect(&cfg, &conn(), AdOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

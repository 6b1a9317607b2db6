//! `dirsync sync --staging` against a real slapd, end to end through the binary: full
//! import, RFC 4533 deltas from the cursor (with and without a session log), scope moves,
//! deletions, cursor trouble; and `kind = "ldap"`, which is read in full every time.

use dirsync::log::event::{stream, AttrValue, CursorAdvanced, Event};
use dirsync::log::store::Batch;
use dirsync::log::{AnyStore, NewEvent, OpenMode, Store};
use dirsync::project::{replay, ObjectRecord, State};
use serde_json::Value;

use crate::common::{dirsync, Run};
use crate::lab::{Slapd, SlapdOptions};

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";
const OTHER: &str = "ou=other,dc=example,dc=org";

struct Lab {
    slapd: Slapd,
    dir: tempfile::TempDir,
}

impl Lab {
    async fn start(session_log: bool, kind: &str) -> Lab {
        let slapd = Slapd::start(SlapdOptions {
            session_log,
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), format!("{}\n", slapd.password())).unwrap();
        Lab::write_config(&dir, &slapd, kind, "pw");
        let run = dirsync(dir.path(), &["init"]);
        assert_eq!(run.code, 0, "{run:?}");
        let mut ldif = format!("dn: {OTHER}\nobjectClass: organizationalUnit\nou: other\n\n");
        for i in 1..=4 {
            ldif.push_str(&user(i, PEOPLE));
        }
        ldif.push_str(&format!(
            "dn: cn=team,{GROUPS}\nobjectClass: groupOfNames\ncn: team\n\
             member: uid=u1,{PEOPLE}\nmember: uid=u2,{PEOPLE}\n\n\
             dn: cn=crew,{GROUPS}\nobjectClass: groupOfNames\ncn: crew\n\
             member: uid=u1,{PEOPLE}\nmember: uid=u2,{PEOPLE}\n\n"
        ));
        ldif.push_str(&user(9, OTHER));
        slapd.ldapadd(&ldif).await;
        Lab { slapd, dir }
    }

    fn write_config(dir: &tempfile::TempDir, slapd: &Slapd, kind: &str, pw_file: &str) {
        std::fs::write(
            dir.path().join("dirsync.toml"),
            format!(
                "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"{kind}\"\nurl = \"{}\"\n\
                 bind_dn = \"{}\"\npassword_file = \"{pw_file}\"\nbase_dn = \"{}\"\n\
                 include = [\"{PEOPLE}\", \"{GROUPS}\"]\n",
                slapd.url(),
                slapd.bind_dn(),
                slapd.base_dn()
            ),
        )
        .unwrap();
    }

    fn sync(&self, extra: &[&str]) -> (Run, Value) {
        let mut args = vec!["sync", "--instance", "old", "--staging", "--format", "json"];
        args.extend_from_slice(extra);
        let run = dirsync(self.dir.path(), &args);
        assert_eq!(run.code, 0, "{run:?}");
        let v: Value = serde_json::from_str(&run.stdout).unwrap();
        (run, v["import"].clone())
    }

    async fn store(&self) -> AnyStore {
        let url = format!("sqlite://{}", self.dir.path().join("log.db").display());
        AnyStore::open(&url, OpenMode::Existing).await.unwrap()
    }

    async fn state(&self) -> State {
        std::sync::Arc::unwrap_or_clone(replay::current(&self.store().await).await.unwrap())
    }

    async fn head(&self) -> u64 {
        self.store().await.head().await.unwrap().0
    }
}

fn user(i: u32, ou: &str) -> String {
    format!(
        "dn: uid=u{i},{ou}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\nsn: N{i}\n\
         givenName: User\nmail: u{i}@example.org\ntitle: Clerk\nuserPassword: pw{i}\n\n"
    )
}

fn counts(v: &Value) -> [u64; 5] {
    ["seen", "added", "changed", "deleted", "left_scope"].map(|k| v[k].as_u64().unwrap())
}

/// The record whose DN starts with `rdn,` (any state), and its anchor.
fn by_rdn<'a>(state: &'a State, rdn: &str) -> (&'a String, &'a ObjectRecord) {
    state
        .objects
        .objects
        .iter()
        .map(|(a, r)| (a, &**r))
        .find(|(_, r)| r.dn.starts_with(&format!("{rdn},")))
        .unwrap_or_else(|| panic!("no {rdn}"))
}

async fn staging_imports_follow_the_directory(session_log: bool) {
    let lab = Lab::start(session_log, "openldap").await;

    // First run: no cursor, so a full import. 4 users + 2 groups in scope; u9 is outside.
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(counts(&v), [6, 6, 0, 0, 0], "{v}");
    let state = lab.state().await;
    assert_eq!(by_rdn(&state, "cn=team").1.members.len(), 2);
    assert!(state.control.cursors.current.contains_key("old"));
    let u1 = by_rdn(&state, "uid=u1").1;
    assert!(!u1.attrs.contains_key("userpassword"), "{:?}", u1.attrs);
    assert!(u1.attrs.contains_key("mail"));

    // Nothing changed: a delta records its completion and the cursor, nothing more.
    let before = lab.head().await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "delta", "{v}");
    assert_eq!(counts(&v)[1..], [0, 0, 0, 0], "{v}");
    let after = lab.head().await;
    assert!(
        after - before <= 4,
        "an unchanged delta appended {} events",
        after - before
    );

    // Change, delete (u2 stays listed in crew: no refint), move out of scope, add,
    // change membership.
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n\
             dn: cn=team,{GROUPS}\nchangetype: modify\nadd: member\nmember: uid=u4,{PEOPLE}\n-\n\
             delete: member\nmember: uid=u2,{PEOPLE}\n\n\
             dn: uid=u4,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Chief\n\n"
        ))
        .await;
    lab.slapd.ldapdelete(&format!("uid=u2,{PEOPLE}")).await;
    lab.slapd
        .ldapmodrdn(&format!("uid=u3,{PEOPLE}"), "uid=u3", Some(OTHER))
        .await;
    lab.slapd.ldapadd(&user(5, PEOPLE)).await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "delta", "{v}");
    let [_, added, changed, deleted, left] = counts(&v);
    assert_eq!((added, deleted, left), (1, 1, 1), "{v}");
    assert!(changed >= 3, "u1 title, team members, u4 title: {v}");
    let state = lab.state().await;
    assert_eq!(
        by_rdn(&state, "uid=u1").1.attrs["title"][0],
        AttrValue::Text("Boss".into())
    );
    let (u2, u2r) = by_rdn(&state, "uid=u2");
    assert_eq!(
        u2r.deletion.as_ref().unwrap().evidence.label(),
        "rfc4533-delete"
    );
    let (u3, u3r) = by_rdn(&state, "uid=u3");
    let u3 = u3.clone();
    assert_eq!(
        u3r.deletion.as_ref().unwrap().evidence.label(),
        "left-scope"
    );
    let (u4, u4r) = by_rdn(&state, "uid=u4");
    assert_eq!(u4r.attrs["title"][0], AttrValue::Text("Chief".into()));
    let team = by_rdn(&state, "cn=team").1;
    assert!(team.members.contains(u4));
    assert_eq!(team.members.len(), 2);
    assert!(
        !by_rdn(&state, "cn=crew").1.members.contains(u2),
        "a deleted member leaves the groups that were not re-sent"
    );
    assert!(by_rdn(&state, "uid=u5").1.live());

    // u3 comes back into scope: the same object returns.
    lab.slapd
        .ldapmodrdn(&format!("uid=u3,{OTHER}"), "uid=u3", Some(PEOPLE))
        .await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "delta", "{v}");
    assert_eq!(counts(&v)[1], 1, "{v}");
    assert!(lab.state().await.objects.objects[&u3].live());

    // A full import of the unchanged directory agrees with the deltas: nothing to record.
    let before = lab.head().await;
    let (_, v) = lab.sync(&["--full"]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(
        counts(&v)[1..],
        [0, 0, 0, 0],
        "deltas and full import agree: {v}"
    );
    let after = lab.head().await;
    assert!(
        after - before <= 4,
        "a full import of an unchanged directory appended {} events",
        after - before
    );
    // And a delta after the full import (from its baseline cookie) finds nothing either.
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "delta", "{v}");
    assert_eq!(counts(&v)[1..], [0, 0, 0, 0], "{v}");

    // A cursor the server cannot use falls back to a full import, and says why.
    lab.store()
        .await
        .append(Batch::new(vec![NewEvent::new(
            stream::cursor("old"),
            "old",
            Event::CursorAdvanced(CursorAdvanced {
                kind: "rfc4533".into(),
                cookie: "bm90IGEgY29va2ll".into(),
            }),
        )]))
        .await
        .unwrap();
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "full", "{v}");
    // dirsync refused that cookie itself: the fallback must not say the source rejected it.
    let why = v["fallback"].as_str().unwrap();
    assert!(why.contains("dirsync cannot use the cursor"), "{v}");
    assert!(!why.contains("rejected"), "{v}");
    assert_eq!(counts(&v)[1..], [0, 0, 0, 0], "{v}");
    let state = lab.state().await;
    assert!(state.control.cursors.invalidated.contains_key("old"));
    assert_eq!(
        replay::verify_chain(&lab.store().await, None)
            .await
            .unwrap(),
        state.seq
    );
    // The new cursor works again.
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "delta", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_imports_follow_the_directory_with_a_session_log() {
    staging_imports_follow_the_directory(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_imports_follow_the_directory_without_a_session_log() {
    staging_imports_follow_the_directory(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_ldap_is_imported_in_full_every_time() {
    let lab = Lab::start(false, "ldap").await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(counts(&v), [6, 6, 0, 0, 0], "{v}");
    assert!(v.get("fallback").is_none(), "{v}");
    let state = lab.state().await;
    assert!(
        !state.control.cursors.current.contains_key("old"),
        "no cursor for a source without change tracking"
    );
    let u1 = by_rdn(&state, "uid=u1").0.clone();
    let out = lab
        .slapd
        .ldapsearch(&[
            "-LLL",
            "-b",
            &format!("uid=u1,{PEOPLE}"),
            "-s",
            "base",
            "entryUUID",
        ])
        .await;
    assert!(out.contains(&format!("entryUUID: {u1}")), "{out}");

    // Unchanged: a full import again, nothing recorded but its completion.
    let before = lab.head().await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(counts(&v)[1..], [0, 0, 0, 0], "{v}");
    assert!(lab.head().await - before <= 3, "{v}");

    // A deletion and a change are found by the next full import.
    lab.slapd.ldapdelete(&format!("uid=u2,{PEOPLE}")).await;
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "full", "{v}");
    let [_, added, changed, deleted, left] = counts(&v);
    assert_eq!((added, deleted, left), (0, 1, 0), "{v}");
    assert!(changed >= 3, "u1 title, team and crew lose u2: {v}");
    let state = lab.state().await;
    assert_eq!(
        by_rdn(&state, "uid=u2")
            .1
            .deletion
            .as_ref()
            .unwrap()
            .evidence
            .label(),
        "absent-from-full-import"
    );
    assert!(state.objects.objects[&u1].live());
    assert!(state.control.cursors.current.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_records_only_the_failed_cycle() {
    let slapd = Slapd::start(SlapdOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad"), "not-the-password\n").unwrap();
    Lab::write_config(&dir, &slapd, "openldap", "bad");
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    let run = dirsync(dir.path(), &["sync", "--instance", "old", "--staging"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("invalid credentials"), "{run:?}");
    assert!(!run.stderr.contains("not-the-password"), "{run:?}");
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    // Nothing the source said; the failed cycle only (INTERFACE.md: every failed cycle is
    // recorded).
    crate::common::assert_only_failed_cycle(&store, dirsync::log::event::FailureReason::Source)
        .await;
}

/// A TCP proxy to `upstream` that cuts the first connection through which the server has sent
/// more than `after` bytes (once); every other connection is passed through untouched.
/// Returns its port and whether the cut happened.
async fn cutting_proxy(
    upstream: u16,
    after: usize,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = std::sync::Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                .await
                .unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
                let _ = sw.shutdown().await;
            });
            let flag = flag.clone();
            tokio::spawn(async move {
                let (mut sent, mut buf) = (0usize, vec![0u8; 16 << 10]);
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                    if sent > after && !flag.swap(true, Ordering::SeqCst) {
                        // Mid-stream: both directions go away at once.
                        up.abort();
                        return;
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    (port, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_import_is_retried_and_recorded_once() {
    let lab = Lab::start(true, "openldap").await;
    let mut ldif = String::new();
    for i in 100..2100 {
        ldif.push_str(&user(i, PEOPLE));
    }
    lab.slapd.ldapadd(&ldif).await;
    let (port, cut) = cutting_proxy(lab.slapd.port(), 100_000).await;
    let config = lab.dir.path().join("dirsync.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&lab.slapd.url(), &format!("ldap://127.0.0.1:{port}"));
    std::fs::write(&config, text).unwrap();

    let (run, v) = lab.sync(&[]);
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy cut a connection"
    );
    assert!(run.stderr.contains("retrying"), "{run:?}");
    assert_eq!(v["mode"], "full", "{v}");
    // Users u1-u4 and u100-u2099, and the two groups: each recorded once.
    assert_eq!(counts(&v), [2006, 2006, 0, 0, 0], "{v}");
    let store = lab.store().await;
    let events = store.read(0, 100_000).await.unwrap();
    let of = |t: &str| events.iter().filter(|e| e.event_type == t).count();
    assert_eq!(of("ObjectImported"), 2006);
    assert_eq!(of("ImportCompleted"), 1);
    assert_eq!(of("CursorAdvanced"), 1);
}

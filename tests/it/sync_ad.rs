//! `dirsync sync --staging` against a real Samba AD DC, end to end through the binary:
//! full import, deltas from the DirSync cursor, scope moves, growth, cursor trouble.

use dirsync::log::event::{stream, CursorAdvanced, Event};
use dirsync::log::store::Batch;
use dirsync::log::{AnyStore, NewEvent, OpenMode, Store};
use dirsync::project::replay;
use serde_json::Value;

use crate::common::{dirsync, Run};
use crate::lab::Samba;

const STAFF: &str = "OU=Staff,DC=test,DC=lan";
const OTHER: &str = "OU=Other,DC=test,DC=lan";

struct Lab {
    samba: Samba,
    dir: tempfile::TempDir,
}

impl Lab {
    async fn start() -> Lab {
        let samba = Samba::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), format!("{}\n", samba.password())).unwrap();
        Lab::write_config(&dir, &samba, "pw");
        let run = dirsync(dir.path(), &["init"]);
        assert_eq!(run.code, 0, "{run:?}");
        let mut ldif = format!("dn: {STAFF}\nobjectClass: organizationalUnit\n\ndn: {OTHER}\nobjectClass: organizationalUnit\n\n");
        for i in 1..=4 {
            ldif.push_str(&user(i, STAFF));
        }
        ldif.push_str(&format!(
            "dn: CN=Team,{STAFF}\nobjectClass: group\nsAMAccountName: team\nmember: CN=u1,{STAFF}\nmember: CN=u2,{STAFF}\n\n"
        ));
        ldif.push_str(&user(9, OTHER));
        samba.ldapadd(&ldif).await;
        Lab { samba, dir }
    }

    fn write_config(dir: &tempfile::TempDir, samba: &Samba, pw_file: &str) {
        std::fs::write(
            dir.path().join("dirsync.toml"),
            format!(
                "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\n\
                 password_file = \"{pw_file}\"\nbase_dn = \"DC=test,DC=lan\"\ninclude = [\"{STAFF}\"]\n",
                samba.url(),
                samba.bind_dn()
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
}

fn user(i: u32, ou: &str) -> String {
    format!(
        "dn: CN=u{i},{ou}\nobjectClass: user\nsAMAccountName: u{i}\nuserPrincipalName: u{i}@test.lan\n\
         givenName: User\nsn: N{i}\ntitle: Clerk\nuserAccountControl: 512\n\n"
    )
}

fn counts(v: &Value) -> [u64; 5] {
    ["seen", "added", "changed", "deleted", "left_scope"].map(|k| v[k].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_imports_follow_the_directory() {
    let lab = Lab::start().await;

    // First run: no cursor, so a full import. 4 users + 1 group in scope; u9 is outside.
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(counts(&v), [5, 5, 0, 0, 0], "{v}");
    let state = replay::current(&lab.store().await).await.unwrap();
    let team = state
        .objects
        .live()
        .find(|(_, r)| r.dn.starts_with("CN=Team"))
        .unwrap()
        .1;
    assert_eq!(team.members.len(), 2, "members resolved to anchors");
    assert!(state.control.cursors.current.contains_key("old"));

    // Nothing changed: a delta records its completion and the cursor, nothing more.
    let before = lab.store().await.head().await.unwrap().0;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "delta", "{v}");
    assert_eq!(counts(&v)[1..], [0, 0, 0, 0], "{v}");
    assert_eq!(
        v["received"], 0,
        "the cursor taken at the full import is current: {v}"
    );
    let after = lab.store().await.head().await.unwrap().0;
    assert!(
        after - before <= 4,
        "an unchanged delta appended {} events",
        after - before
    );

    // Change, delete, move out of scope, add, change membership, disable.
    lab.samba
        .ldapmodify(&format!(
            "dn: CN=u1,{STAFF}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n\
             dn: CN=Team,{STAFF}\nchangetype: modify\nadd: member\nmember: CN=u4,{STAFF}\n-\ndelete: member\nmember: CN=u2,{STAFF}\n\n\
             dn: CN=u4,{STAFF}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n\n"
        ))
        .await;
    lab.samba.ldapdelete(&format!("CN=u2,{STAFF}")).await;
    lab.samba
        .ldapmodrdn(&format!("CN=u3,{STAFF}"), "CN=u3", Some(OTHER))
        .await;
    lab.samba.ldapadd(&user(5, STAFF)).await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "delta", "{v}");
    let [_, added, changed, deleted, left] = counts(&v);
    assert_eq!((added, deleted, left), (1, 1, 1), "{v}");
    assert!(changed >= 3, "u1 title, Team members, u4 disabled: {v}");
    let state = replay::current(&lab.store().await).await.unwrap();
    let by_cn = |cn: &str| {
        state
            .objects
            .objects
            .values()
            .find(|r| r.dn.starts_with(&format!("CN={cn},")))
            .unwrap()
    };
    assert_eq!(
        by_cn("u1").attrs["title"][0],
        dirsync::log::event::AttrValue::Text("Boss".into())
    );
    assert_eq!(
        by_cn("u2").deletion.as_ref().unwrap().evidence.label(),
        "tombstone"
    );
    assert_eq!(
        by_cn("u3").deletion.as_ref().unwrap().evidence.label(),
        "left-scope"
    );
    assert_eq!(
        by_cn("u4").attrs["useraccountcontrol"][0],
        dirsync::log::event::AttrValue::Text("514".into())
    );
    let u4 = state
        .objects
        .objects
        .iter()
        .find(|(_, r)| r.dn.starts_with("CN=u4,"))
        .unwrap()
        .0;
    assert!(by_cn("Team").members.contains(u4));
    assert_eq!(by_cn("Team").members.len(), 2);

    // u3 comes back into scope: the same object returns.
    let u3 = state
        .objects
        .objects
        .iter()
        .find(|(_, r)| r.dn.starts_with("CN=u3,"))
        .unwrap()
        .0
        .clone();
    lab.samba
        .ldapmodrdn(&format!("CN=u3,{OTHER}"), "CN=u3", Some(STAFF))
        .await;
    let (_, v) = lab.sync(&[]);
    assert_eq!(counts(&v)[1], 1, "{v}");
    let state = replay::current(&lab.store().await).await.unwrap();
    assert!(state.objects.objects[&u3].live());

    // A full import of the unchanged directory agrees with the deltas: nothing to record.
    let before = lab.store().await.head().await.unwrap().0;
    let (_, v) = lab.sync(&["--full"]);
    assert_eq!(v["mode"], "full", "{v}");
    assert_eq!(
        counts(&v)[1..],
        [0, 0, 0, 0],
        "deltas and full import agree: {v}"
    );
    let after = lab.store().await.head().await.unwrap().0;
    assert!(
        after - before <= 4,
        "a full import of an unchanged directory appended {} events",
        after - before
    );

    // A cursor the server rejects falls back to a full import, and says why.
    lab.store()
        .await
        .append(Batch::new(vec![NewEvent::new(
            stream::cursor("old"),
            "old",
            Event::CursorAdvanced(CursorAdvanced {
                kind: "dirsync".into(),
                cookie: "bm90IGEgY29va2ll".into(),
            }),
        )]))
        .await
        .unwrap();
    let (_, v) = lab.sync(&[]);
    assert_eq!(v["mode"], "full", "{v}");
    assert!(v["fallback"].as_str().unwrap().contains("rejected"), "{v}");
    let state = replay::current(&lab.store().await).await.unwrap();
    assert!(state.control.cursors.invalidated.contains_key("old"));
    assert_eq!(
        replay::verify_chain(&lab.store().await, None)
            .await
            .unwrap(),
        state.seq
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_records_only_the_failed_cycle() {
    let samba = Samba::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad"), "not-the-password\n").unwrap();
    Lab::write_config(&dir, &samba, "bad");
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    let run = dirsync(dir.path(), &["sync", "--instance", "old", "--staging"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(!run.stderr.contains("not-the-password"), "{run:?}");
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    // Nothing the source said; the failed cycle only (INTERFACE.md: every failed cycle is
    // recorded).
    crate::common::assert_only_failed_cycle(&store, dirsync::log::event::FailureReason::Source)
        .await;
    // Exporting without a [target] section is a configuration error: exit 2.
    let run = dirsync(dir.path(), &["sync", "--instance", "old"]);
    assert_eq!(run.code, 2, "{run:?}");
}

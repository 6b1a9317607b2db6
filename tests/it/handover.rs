//! Handovers end to end through the binary: Samba AD DC (or slapd) into scim2-server.
//! The target is compared with the directory itself (ldapsearch), not with dirsync's view.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dirsync::log::event::{Event, ExportOp};
use dirsync::log::{AnyStore, OpenMode, Store};
use dirsync::project::{Meta, State};
use serde_json::Value;

use crate::common::{bin, dirsync, Run};
use crate::lab::{pg_database, Samba, Scim, Slapd, SlapdOptions};
use crate::sync_export::ScimView;

const STAFF: &str = "OU=Staff,DC=test,DC=lan";
const OTHER: &str = "OU=Other,DC=test,DC=lan";
const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";

enum Dir {
    Ad(Samba),
    Ldap(Slapd),
}

struct Lab {
    dir_server: Dir,
    view: ScimView,
    dir: tempfile::TempDir,
    store_url: String,
}

/// A user as both sides should hold it: userName -> (title, givenName, sn, active).
type Users = BTreeMap<String, (String, String, String, bool)>;
/// displayName -> member userNames.
type Groups = BTreeMap<String, BTreeSet<String>>;

/// Parse `ldapsearch -LLL -o ldif-wrap=no` output into entries (lowercase attribute names).
fn entries(ldif: &str) -> Vec<BTreeMap<String, Vec<String>>> {
    ldif.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let mut e: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for line in b.lines() {
                if let Some((k, v)) = line.split_once(": ") {
                    e.entry(k.to_lowercase()).or_default().push(v.to_string());
                }
            }
            e
        })
        .collect()
}

fn first(e: &BTreeMap<String, Vec<String>>, k: &str) -> String {
    e.get(k)
        .and_then(|v| v.first())
        .cloned()
        .unwrap_or_default()
}

impl Lab {
    async fn ad(users: u32, groups: u32, store_url: Option<String>) -> Lab {
        let samba = Samba::start().await;
        let mut ldif = format!(
            "dn: {STAFF}\nobjectClass: organizationalUnit\n\ndn: {OTHER}\nobjectClass: organizationalUnit\n\n"
        );
        for i in 1..=users {
            ldif.push_str(&ad_user(i));
        }
        let per = users / groups.max(1);
        for g in 1..=groups {
            ldif.push_str(&format!(
                "dn: CN=g{g},{STAFF}\nobjectClass: group\nsAMAccountName: g{g}\n"
            ));
            for i in (g - 1) * per + 1..=g * per {
                ldif.push_str(&format!("member: CN=u{i},{STAFF}\n"));
            }
            ldif.push('\n');
        }
        samba.ldapadd(&ldif).await;
        let source = format!(
            "kind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
             base_dn = \"DC=test,DC=lan\"\ninclude = [\"{STAFF}\"]\n",
            samba.url(),
            samba.bind_dn()
        );
        let pw = samba.password().to_string();
        Lab::new(Dir::Ad(samba), &source, &pw, store_url).await
    }

    async fn ldap(users: u32, store_url: Option<String>) -> Lab {
        let slapd = Slapd::start(SlapdOptions {
            session_log: true,
            ..Default::default()
        })
        .await;
        let mut ldif = String::new();
        for i in 1..=users {
            ldif.push_str(&crate::sync_export::ldap_user(i));
        }
        for g in 1..=4 {
            ldif.push_str(&format!(
                "dn: cn=g{g},{GROUPS}\nobjectClass: groupOfNames\ncn: g{g}\n"
            ));
            for i in (1..=users).filter(|i| i % 4 == g % 4) {
                ldif.push_str(&format!("member: uid=u{i},{PEOPLE}\n"));
            }
            ldif.push('\n');
        }
        slapd.ldapadd(&ldif).await;
        let source = format!(
            "kind = \"openldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
             base_dn = \"{}\"\ninclude = [\"{PEOPLE}\", \"{GROUPS}\"]\n",
            slapd.url(),
            slapd.bind_dn(),
            slapd.base_dn()
        );
        let pw = slapd.password().to_string();
        Lab::new(Dir::Ldap(slapd), &source, &pw, store_url).await
    }

    async fn new(d: Dir, source: &str, pw: &str, store_url: Option<String>) -> Lab {
        let scim = Scim::tenant().await;
        let dir = tempfile::tempdir().unwrap();
        let store_url = store_url.unwrap_or_else(|| "sqlite://log.db".into());
        std::fs::write(dir.path().join("pw"), format!("{pw}\n")).unwrap();
        std::fs::write(dir.path().join("token"), format!("{}\n", scim.token())).unwrap();
        std::fs::write(
            dir.path().join("dirsync.toml"),
            format!(
                "[store]\nurl = \"{store_url}\"\n[source]\n{source}\
                 [target]\nkind = \"scim\"\nurl = \"{}\"\ntoken_file = \"token\"\n\
                 [sync]\ndeletion_threshold = 500\n",
                scim.base_url()
            ),
        )
        .unwrap();
        assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
        let store_url = if let Some(p) = store_url.strip_prefix("sqlite://") {
            format!("sqlite://{}", dir.path().join(p).display())
        } else {
            store_url
        };
        Lab {
            dir_server: d,
            view: ScimView::new(&scim),
            dir,
            store_url,
        }
    }

    fn cli(&self, args: &[&str]) -> Run {
        dirsync(self.dir.path(), args)
    }

    fn ok(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let run = self.cli(&a);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        serde_json::from_str(&run.stdout).unwrap_or(Value::Null)
    }

    /// `handover --from old --to new` with a built-in playbook (`new-computer`: the default,
    /// no `--playbook`), run from an empty directory: the playbooks are in the binary.
    fn handover(&self, playbook: &str) -> Value {
        let empty = tempfile::tempdir().unwrap();
        let cfg = self.dir.path().join("dirsync.toml");
        let mut args = vec![
            "--config",
            cfg.to_str().unwrap(),
            "handover",
            "--from",
            "old",
            "--to",
            "new",
            "--format",
            "json",
        ];
        if playbook != "new-computer" {
            args.extend(["--playbook", playbook]);
        }
        let run = dirsync(empty.path(), &args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert_eq!(
            std::fs::read_dir(empty.path()).unwrap().count(),
            0,
            "the handover wrote nothing into the working directory"
        );
        let v: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(v["playbook"], playbook, "{v}");
        v
    }

    async fn store(&self) -> AnyStore {
        AnyStore::open(&self.store_url, OpenMode::Existing)
            .await
            .unwrap()
    }

    fn samba(&mut self) -> &mut Samba {
        match &mut self.dir_server {
            Dir::Ad(s) => s,
            Dir::Ldap(_) => panic!("not AD"),
        }
    }

    async fn modify(&self, ldif: &str) {
        match &self.dir_server {
            Dir::Ad(s) => s.ldapmodify(ldif).await,
            Dir::Ldap(s) => s.ldapmodify(ldif).await,
        }
    }

    /// The in-scope live users and groups, read from the directory itself.
    async fn source(&self) -> (Users, Groups) {
        let (users_ldif, groups_ldif, by_dn_key) = match &self.dir_server {
            Dir::Ad(s) => (
                s.ldapsearch(&[
                    "-LLL",
                    "-o",
                    "ldif-wrap=no",
                    "-b",
                    STAFF,
                    "(&(objectClass=user)(objectCategory=person))",
                    "userPrincipalName",
                    "title",
                    "givenName",
                    "sn",
                    "userAccountControl",
                ])
                .await,
                s.ldapsearch(&[
                    "-LLL",
                    "-o",
                    "ldif-wrap=no",
                    "-b",
                    STAFF,
                    "(objectClass=group)",
                    "cn",
                    "member",
                ])
                .await,
                "userprincipalname",
            ),
            Dir::Ldap(s) => (
                s.ldapsearch(&[
                    "-LLL",
                    "-o",
                    "ldif-wrap=no",
                    "-b",
                    PEOPLE,
                    "(objectClass=inetOrgPerson)",
                    "mail",
                    "title",
                    "givenName",
                    "sn",
                ])
                .await,
                s.ldapsearch(&[
                    "-LLL",
                    "-o",
                    "ldif-wrap=no",
                    "-b",
                    GROUPS,
                    "(objectClass=groupOfNames)",
                    "cn",
                    "member",
                ])
                .await,
                "mail",
            ),
        };
        let mut users = Users::new();
        let mut name_of_dn = BTreeMap::new();
        for e in entries(&users_ldif) {
            let name = first(&e, by_dn_key);
            let uac: u64 = first(&e, "useraccountcontrol").parse().unwrap_or(512);
            name_of_dn.insert(first(&e, "dn").to_lowercase(), name.clone());
            users.insert(
                name,
                (
                    first(&e, "title"),
                    first(&e, "givenname"),
                    first(&e, "sn"),
                    uac & 2 == 0,
                ),
            );
        }
        let mut groups = Groups::new();
        for e in entries(&groups_ldif) {
            let members = e
                .get("member")
                .into_iter()
                .flatten()
                .filter_map(|dn| name_of_dn.get(&dn.to_lowercase()).cloned())
                .collect();
            groups.insert(first(&e, "cn"), members);
        }
        (users, groups)
    }

    /// The users and groups in the SCIM target.
    async fn target(&self) -> (Users, Groups, usize) {
        let all = self.view.all("Users").await;
        let n = all.len();
        let mut name_of_id = BTreeMap::new();
        let mut users = Users::new();
        for u in &all {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            name_of_id.insert(s(&u["id"]), s(&u["userName"]));
            users.insert(
                s(&u["userName"]),
                (
                    s(&u["title"]),
                    s(&u["name"]["givenName"]),
                    s(&u["name"]["familyName"]),
                    u["active"].as_bool().unwrap_or(true),
                ),
            );
        }
        let mut groups = Groups::new();
        for g in self.view.all("Groups").await {
            let members = g["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| name_of_id.get(m["value"].as_str()?).cloned())
                .collect();
            groups.insert(
                g["displayName"].as_str().unwrap_or_default().to_string(),
                members,
            );
        }
        (users, groups, n)
    }

    async fn assert_target_equals_source(&self) {
        let (su, sg) = self.source().await;
        let (tu, tg, n) = self.target().await;
        assert_eq!(n, tu.len(), "duplicate userNames in the target");
        let missing: Vec<_> = su.keys().filter(|k| !tu.contains_key(*k)).collect();
        let extra: Vec<_> = tu.keys().filter(|k| !su.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing {missing:?}, extra {extra:?}"
        );
        assert_eq!(su, tu, "user attributes");
        assert_eq!(sg, tg, "groups and memberships");
        assert_eq!(
            self.view.count("Groups").await as usize,
            tg.len(),
            "duplicate groups"
        );
    }

    async fn state(&self) -> State {
        std::sync::Arc::unwrap_or_clone(
            dirsync::project::replay::current(&self.store().await)
                .await
                .unwrap(),
        )
    }
}

fn ad_user(i: u32) -> String {
    format!(
        "dn: CN=u{i},{STAFF}\nobjectClass: user\nsAMAccountName: u{i}\nuserPrincipalName: u{i}@test.lan\n\
         givenName: User\nsn: N{i}\ntitle: Clerk\nuserAccountControl: 512\n\n"
    )
}

/// The stopped-sync window of the issue: 30 deleted, 20 modified, 20 added (into g1), 5
/// moved out of scope, memberships changed.
fn ad_changes() -> String {
    let mut l = String::new();
    for i in 1..=30 {
        l.push_str(&format!("dn: CN=u{i},{STAFF}\nchangetype: delete\n\n"));
    }
    for i in 31..=50 {
        l.push_str(&format!(
            "dn: CN=u{i},{STAFF}\nchangetype: modify\nreplace: title\ntitle: Manager\n\n"
        ));
    }
    for i in 501..=520 {
        l.push_str(&format!(
            "dn: CN=u{i},{STAFF}\nchangetype: add\n{}",
            &ad_user(i).split_once('\n').unwrap().1
        ));
    }
    for i in 51..=55 {
        l.push_str(&format!(
            "dn: CN=u{i},{STAFF}\nchangetype: modrdn\nnewrdn: CN=u{i}\ndeleteoldrdn: 1\nnewsuperior: {OTHER}\n\n"
        ));
    }
    l.push_str(&format!(
        "dn: CN=g1,{STAFF}\nchangetype: modify\nadd: member\n"
    ));
    for i in 501..=520 {
        l.push_str(&format!("member: CN=u{i},{STAFF}\n"));
    }
    l.push_str(&format!(
        "\ndn: CN=g2,{STAFF}\nchangetype: modify\ndelete: member\nmember: CN=u45,{STAFF}\n\n\
         dn: CN=g5,{STAFF}\nchangetype: modify\nadd: member\nmember: CN=u60,{STAFF}\n\n"
    ));
    l
}

async fn new_computer_catches_what_the_stopped_window_hid(
    store_url: Option<String>,
    expunge: bool,
) {
    let mut lab = Lab::ad(500, 20, store_url).await;
    let v = lab.ok(&["sync", "--instance", "old"]);
    assert_eq!(v["created"], 520, "{v}");
    lab.ok(&["instance", "stop", "old"]);
    lab.modify(&ad_changes()).await;
    if expunge {
        // Some deletions' tombstones are gone: no cursor can reveal those.
        lab.samba().expunge_tombstones().await;
        lab.modify(&format!(
            "dn: CN=u56,{STAFF}\nchangetype: delete\n\ndn: CN=u57,{STAFF}\nchangetype: delete\n\n"
        ))
        .await;
    }
    let v = lab.handover("new-computer");
    assert_eq!(v["status"], "completed", "{v}");
    let s = &v["summary"];
    let found = s["deletions_by_reconciliation"].as_u64().unwrap()
        + s["deletions_by_old_cursor"].as_u64().unwrap();
    assert_eq!(
        found,
        if expunge { 37 } else { 35 },
        "30 (+2) deleted, 5 left scope: {v}"
    );
    assert_eq!(
        s["matched"], 0,
        "one store: the new instance owns what the old one made: {v}"
    );
    lab.assert_target_equals_source().await;

    let state = lab.state().await;
    assert_eq!(state.control.relationship.holder.as_deref(), Some("new"));
    assert_eq!(
        state.control.instances.instances["old"].status,
        dirsync::project::InstanceStatus::Retired
    );
    // Completed: running it again does nothing; the chain is whole.
    let head = lab.store().await.head().await.unwrap().0;
    let again = lab.handover("new-computer");
    assert_eq!(again["status"], "already-completed");
    assert_eq!(lab.store().await.head().await.unwrap().0, head);
    assert_eq!(lab.cli(&["log", "verify"]).code, 0);
    let status = lab.ok(&["handover", "status"]);
    assert_eq!(status["steps"].as_array().unwrap().len(), 6);
    assert!(status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_computer_on_sqlite() {
    new_computer_catches_what_the_stopped_window_hid(None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_computer_with_expunged_tombstones() {
    new_computer_catches_what_the_stopped_window_hid(None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_computer_on_postgres() {
    new_computer_catches_what_the_stopped_window_hid(Some(pg_database().await), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_computer_lost_replays_its_cursor_then_reconciles() {
    let mut lab = Lab::ad(60, 3, None).await;
    lab.ok(&["sync", "--instance", "old"]);
    // The old computer dies. Ten deletions' tombstones are expunged before anyone looks;
    // five more are still there for the old cursor to reveal.
    let mut l = String::new();
    for i in 1..=10 {
        l.push_str(&format!("dn: CN=u{i},{STAFF}\nchangetype: delete\n\n"));
    }
    lab.modify(&l).await;
    lab.samba().expunge_tombstones().await;
    let mut l = String::new();
    for i in 11..=15 {
        l.push_str(&format!("dn: CN=u{i},{STAFF}\nchangetype: delete\n\n"));
    }
    lab.modify(&l).await;
    let v = lab.handover("old-computer-lost");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["summary"]["deletions_by_old_cursor"], 5, "{v}");
    assert_eq!(v["summary"]["deletions_by_reconciliation"], 10, "{v}");
    lab.assert_target_equals_source().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinstall_reconciles_on_the_same_computer() {
    let lab = Lab::ldap(40, None).await;
    lab.ok(&["sync", "--instance", "old"]);
    // Uninstalled; deletions and changes happen; reinstalled with no usable cursor.
    let mut l = String::new();
    for i in 1..=6 {
        l.push_str(&format!("dn: uid=u{i},{PEOPLE}\nchangetype: delete\n\n"));
    }
    l.push_str(&format!(
        "dn: uid=u7,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
    ));
    lab.modify(&l).await;
    let run = lab.cli(&[
        "handover",
        "--from",
        "old",
        "--to",
        "old",
        "--playbook",
        "reinstall",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["summary"]["deletions_by_reconciliation"], 6, "{v}");
    lab.assert_target_equals_source().await;
    assert_ne!(
        lab.state().await.control.instances.instances["old"].status,
        dirsync::project::InstanceStatus::Retired,
        "the same instance is not retired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_exports_the_deletions_the_dead_holder_imported_and_never_exported() {
    let lab = Lab::ldap(40, None).await;
    lab.ok(&["sync", "--instance", "old"]);
    // The holder imports three deletions and dies before exporting them (a staging cycle
    // records the import and exports nothing); two more happen after it died.
    let del = |r: std::ops::RangeInclusive<u32>| {
        r.map(|i| format!("dn: uid=u{i},{PEOPLE}\nchangetype: delete\n\n"))
            .collect::<String>()
    };
    lab.modify(&del(1..=3)).await;
    let staged = lab.ok(&["sync", "--instance", "old", "--staging"]);
    assert_eq!(staged["import"]["deleted"], 3, "{staged}");
    lab.modify(&del(4..=5)).await;

    let v = lab.handover("failover");
    assert_eq!(v["status"], "completed", "{v}");
    let steps: Vec<(&str, &str)> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["action"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("sync new (full, take over)", "done"),
            ("wait-sync new", "done")
        ]
    );
    assert_eq!(v["summary"]["deleted"], 5, "{v}");
    assert_eq!(v["summary"]["created"], 0, "{v}");
    lab.assert_target_equals_source().await;
    let state = lab.state().await;
    assert_eq!(state.control.relationship.holder.as_deref(), Some("new"));
    assert_ne!(
        state.control.instances.instances["old"].status,
        dirsync::project::InstanceStatus::Retired,
        "the dead holder is fenced, not retired: it may come back as a standby"
    );
    // Its computer comes back: fenced by the new epoch, it exports nothing.
    assert_eq!(lab.cli(&["sync", "--instance", "old"]).code, 4);
}

/// Every export claim in the log was made by the relationship's holder of the moment, at
/// its epoch; and no anchor was created twice.
fn check_single_writer(events: &[dirsync::log::StoredEvent]) {
    let mut state = State::default();
    let mut creates: BTreeMap<String, u32> = BTreeMap::new();
    for e in events {
        let ev = e.decode().unwrap();
        match &ev {
            Event::ExportBatchStarted(b) => {
                assert_eq!(
                    state.control.relationship.holder.as_deref(),
                    Some(e.instance.as_str()),
                    "seq {}: a claim by a non-holder",
                    e.seq
                );
                assert_eq!(b.epoch, state.control.relationship.epoch, "seq {}", e.seq);
            }
            Event::ExportApplied(x) if x.op == ExportOp::Create => {
                *creates.entry(x.anchor.clone()).or_default() += 1;
            }
            _ => {}
        }
        state.apply(
            &Meta {
                seq: e.seq,
                instance: &e.instance,
                recorded_at_us: e.recorded_at_us,
            },
            ev,
        );
    }
    let twice: Vec<_> = creates.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "created twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_and_inside_steps_the_handover_resumes() {
    let lab = Lab::ldap(300, None).await;
    lab.ok(&["sync", "--instance", "old"]);
    lab.ok(&["instance", "stop", "old"]);
    let mut l = String::new();
    for i in 1..=20 {
        l.push_str(&format!("dn: uid=u{i},{PEOPLE}\nchangetype: delete\n\n"));
    }
    for i in 21..=40 {
        l.push_str(&format!(
            "dn: uid=u{i},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ));
    }
    for i in 301..=340 {
        l.push_str(&format!(
            "dn: uid=u{i},{PEOPLE}\nchangetype: add\n{}",
            crate::sync_export::ldap_user(i).split_once('\n').unwrap().1
        ));
    }
    lab.modify(&l).await;

    let store = lab.store().await;
    let count = |evs: &[dirsync::log::StoredEvent], t: &str| {
        evs.iter().filter(|e| e.event_type == t).count()
    };
    let spawn = || {
        Command::new(bin())
            .args([
                "handover",
                "--from",
                "old",
                "--to",
                "new",
                "--playbook",
                "new-computer",
            ])
            .current_dir(lab.dir.path())
            .env_remove("DIRSYNC_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Meanwhile the old computer keeps trying to sync: only the holder's writes may land.
    let dir = lab.dir.path().to_path_buf();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rogue = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                codes.push(dirsync(&dir, &["sync", "--instance", "old"]).code);
                std::thread::sleep(Duration::from_millis(50));
            }
            codes
        })
    };
    // Kill right after each step boundary, then at growing delays inside steps.
    let mut kills = 0;
    for boundary in 1..=5 {
        let mut child = spawn();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let evs = store.read(0, 1_000_000).await.unwrap();
            if count(&evs, "HandoverStepCompleted") >= boundary {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress to boundary {boundary}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = child.kill();
        child.wait().unwrap();
        kills += 1;
    }
    for delay_ms in [30u64, 80, 150, 300] {
        let mut child = spawn();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.kill();
        child.wait().unwrap();
        kills += 1;
    }
    let v = lab.handover("new-computer");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let codes = rogue.join().unwrap();
    assert!(codes.iter().all(|c| [0, 1, 4].contains(c)), "{codes:?}");
    assert!(
        ["completed", "already-completed"].contains(&v["status"].as_str().unwrap()),
        "after {kills} kills: {v}"
    );
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "done"),
        "{v}"
    );
    // The old instance is retired, and it knows.
    assert_ne!(lab.cli(&["sync", "--instance", "old"]).code, 0);
    lab.assert_target_equals_source().await;
    let evs = store.read(0, 1_000_000).await.unwrap();
    check_single_writer(&evs);
    assert_eq!(lab.cli(&["log", "verify"]).code, 0);
    assert_eq!(count(&evs, "HandoverStarted"), 1, "one handover, resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_handover_is_refused_and_stop_waits_for_a_sync() {
    let lab = Lab::ldap(8, None).await;
    lab.ok(&["sync", "--instance", "old"]);
    // A sync in progress on old (its end not recorded yet): stopping old must wait for it.
    let store = lab.store().await;
    store
        .append(dirsync::log::store::Batch::new(vec![
            dirsync::log::NewEvent::new(
                dirsync::log::event::stream::instance("old"),
                "old",
                Event::SyncRunStarted(dirsync::log::event::SyncRunStarted {
                    run_id: "r-busy".into(),
                    full: false,
                    mode: "sync".into(),
                }),
            ),
        ]))
        .await
        .unwrap();
    let mut first = Command::new(bin())
        .args(["handover", "--from", "old", "--to", "new"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It starts, and waits at step 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let evs = store.read(0, 100_000).await.unwrap();
        if evs.iter().any(|e| e.event_type == "HandoverStepStarted") {
            break;
        }
        assert!(Instant::now() < deadline, "the handover did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = lab.cli(&["handover", "--from", "old", "--to", "new"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("another handover is running"),
        "{second:?}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "still waiting for old's sync"
    );
    // The sync ends: the first handover goes on to the end.
    store
        .append(dirsync::log::store::Batch::new(vec![
            dirsync::log::NewEvent::new(
                dirsync::log::event::stream::instance("old"),
                "old",
                Event::SyncRunCompleted(dirsync::log::event::SyncRunCompleted {
                    run_id: "r-busy".into(),
                    ..Default::default()
                }),
            ),
        ]))
        .await
        .unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a sync is in progress on old"), "{text}");
    assert!(text.contains("completed"), "{text}");
    lab.assert_target_equals_source().await;
}

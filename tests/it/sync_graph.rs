//! `dirsync sync` from slapd into the fake Microsoft Graph (`lab::graph`), through the
//! binary, with throttling on: the same flows as `sync_export` against scim2-server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dirsync::log::{AnyStore, OpenMode};
use dirsync::project::replay;
use dirsync::target::graph::immutable_id;
use dirsync::target::Mapped;
use serde_json::{json, Value};

use crate::common::{dirsync, Run};
use crate::lab::graph::GraphFakeOptions;
use crate::lab::{GraphFake, Slapd};
use crate::sync_export::ldap_source;

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";

struct Lab {
    slapd: Slapd,
    graph: GraphFake,
    dir: tempfile::TempDir,
}

impl Lab {
    /// slapd with u1..u`users`, team (u1, u2); the fake allows `writes` per second.
    async fn start(users: u32, writes: u32, threshold: u32) -> Lab {
        let (slapd, source) = ldap_source(users, &["team"]).await;
        let graph = GraphFake::start_with(GraphFakeOptions {
            writes_per_window: writes,
            window: Duration::from_secs(1),
            page_size: 10,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), format!("{}\n", slapd.password())).unwrap();
        std::fs::write(
            dir.path().join("secret"),
            format!("{}\n", graph.client_secret()),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("dirsync.toml"),
            format!(
                "[store]\nurl = \"sqlite://log.db\"\n[source]\n{source}\
                 [target]\nkind = \"graph\"\nurl = \"{}\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
                 client_secret_file = \"secret\"\ntoken_url = \"{}\"\n\
                 [sync]\ndeletion_threshold = {threshold}\n",
                graph.base_url(),
                graph.tenant_id(),
                graph.client_id(),
                graph.token_url(),
            ),
        )
        .unwrap();
        assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
        Lab { slapd, graph, dir }
    }

    fn run(&self, instance: &str, extra: &[&str]) -> (Run, Value) {
        let mut args = vec!["sync", "--instance", instance, "--format", "json"];
        args.extend_from_slice(extra);
        let run = dirsync(self.dir.path(), &args);
        let v = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        (run, v)
    }

    fn sync(&self, instance: &str, extra: &[&str]) -> Value {
        let (run, v) = self.run(instance, extra);
        assert_eq!(run.code, 0, "{run:?}");
        v
    }

    fn upns(&self) -> BTreeSet<String> {
        self.graph
            .users()
            .iter()
            .map(|u| u["userPrincipalName"].as_str().unwrap().to_string())
            .collect()
    }
}

fn counts(v: &Value) -> [u64; 7] {
    [
        "created",
        "updated",
        "deleted",
        "matched",
        "held",
        "conflicts",
        "failures",
    ]
    .map(|k| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_into_graph_under_throttling() {
    // 40 users and a group at 15 writes a second: throttled for certain.
    let lab = Lab::start(40, 15, 500).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [41, 0, 0, 0, 0, 0, 0], "{v}");
    assert!(!lab.graph.throttled().is_empty(), "the fake throttled");
    assert!(lab.graph.max_batch() <= 20);
    assert_eq!(lab.graph.users().len(), 40);
    let u1 = lab.graph.user_by_upn("u1@example.org").unwrap();
    assert_eq!(u1["jobTitle"], "Clerk");
    assert_eq!(u1["accountEnabled"], true);
    let state = dirsync::project::replay::current(
        &dirsync::log::AnyStore::open(
            &format!("sqlite://{}", lab.dir.path().join("log.db").display()),
            dirsync::log::OpenMode::Existing,
        )
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    let (a1, _) = state
        .objects
        .objects
        .iter()
        .find(|(_, r)| r.dn == format!("uid=u1,{PEOPLE}"))
        .unwrap();
    assert_eq!(
        u1["onPremisesImmutableId"].as_str(),
        immutable_id(a1).as_deref(),
        "anchored as AD Connect does"
    );
    let team = lab.graph.group_by_name("team").unwrap();
    let u2 = lab.graph.user_by_upn("u2@example.org").unwrap();
    let members: BTreeSet<&str> = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([u1["id"].as_str().unwrap(), u2["id"].as_str().unwrap()])
    );

    // Changes, a member removed, a deletion; then an identical sync does nothing.
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n\
             dn: cn=team,{GROUPS}\nchangetype: modify\ndelete: member\nmember: uid=u2,{PEOPLE}\n\n"
        ))
        .await;
    lab.slapd.ldapdelete(&format!("uid=u3,{PEOPLE}")).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 2, 1, 0, 0, 0, 0], "{v}");
    assert_eq!(
        lab.graph.user_by_upn("u1@example.org").unwrap()["jobTitle"],
        "Boss"
    );
    assert!(lab.graph.user_by_upn("u3@example.org").is_none());
    let team = lab.graph.group_by_name("team").unwrap();
    assert_eq!(team["members"].as_array().unwrap().len(), 1);
    let writes = lab.graph.writes();
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0; 7], "{v}");
    assert_eq!(lab.graph.writes(), writes, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_matching_guard_fencing_and_revoked_consent() {
    let lab = Lab::start(6, 1000, 2).await;
    // Existing cloud users: u1 by UPN (soft), u2 twice over (ambiguous: UPN and mail).
    let c1 = lab
        .graph
        .add_user(json!({"userPrincipalName": "u1@example.org", "displayName": "Old"}));
    lab.graph
        .add_user(json!({"userPrincipalName": "u2@example.org"}));
    lab.graph
        .add_user(json!({"userPrincipalName": "other@example.org", "mail": "u2@example.org"}));
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "a conflict needs the operator: {run:?}");
    assert_eq!(
        counts(&v),
        [5, 1, 0, 1, 0, 1, 0],
        "u3..u6 and team created: {v}"
    );
    assert_eq!(lab.graph.users().len(), 3 + 4, "nothing duplicated");
    let u1 = lab.graph.user_by_upn("u1@example.org").unwrap();
    assert_eq!(u1["id"], c1.as_str());
    assert!(
        u1["onPremisesImmutableId"].is_string(),
        "soft match anchored"
    );

    // Three deletions over a threshold of two: held until approved.
    for i in 4..=6 {
        lab.slapd.ldapdelete(&format!("uid=u{i},{PEOPLE}")).await;
    }
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(lab.graph.users().len(), 7, "target unchanged");
    let plan = v["held_plan"].as_str().unwrap().to_string();
    let approve = dirsync(lab.dir.path(), &["deletions", "approve", "--plan", &plan]);
    assert_eq!(approve.code, 0, "{approve:?}");
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "u2's conflict still stands: {run:?}");
    assert_eq!(v["deleted"], 3, "{v}");
    assert_eq!(lab.upns().len(), 4);

    // Fencing: b takes over, a exports nothing.
    let (_, v) = lab.run("b", &["--take-over"]);
    assert_eq!(v["epoch"], 2, "{v}");
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let writes = lab.graph.writes();
    let (run, _) = lab.run("a", &[]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(lab.graph.writes(), writes);

    // The app's consent is withdrawn: one clear line, exit 1.
    lab.graph.reject_all_tokens(true);
    let (run, _) = lab.run("b", &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(!run.stderr.contains(lab.graph.client_secret()));
    assert_eq!(lab.graph.writes(), writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_object_is_recorded_and_the_rest_goes_on() {
    let lab = Lab::start(8, 1000, 500).await;
    // Graph refuses u5 (400 inside its batch) and answers 503 twice on the way.
    lab.graph
        .inject(crate::lab::graph::Fault::request(400, 1).matching("u5@example.org"));
    lab.graph.inject(crate::lab::graph::Fault::http(503, 2));
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "a failed export is not success: {run:?}");
    assert_eq!(counts(&v), [8, 0, 0, 0, 0, 0, 1], "{v}");
    assert!(
        v["problems"][0]["detail"].as_str().unwrap().contains("400"),
        "{v}"
    );
    assert!(lab.graph.user_by_upn("u5@example.org").is_none());
    assert_eq!(lab.graph.users().len(), 7, "the rest went on");
    // Nothing was marked exported that was not: the next cycle creates exactly u5.
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [1, 0, 0, 0, 0, 0, 0], "{v}");
    assert!(lab.graph.user_by_upn("u5@example.org").is_some());
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0; 7], "{v}");
}

/// Issue 18.2 through the Graph export: a user deleted in the target out of band is
/// created again when its update is answered 404, and its group gets the new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_out_of_band_is_created_again() {
    let lab = Lab::start(2, 1000, 500).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [3, 0, 0, 0, 0, 0, 0], "{v}");
    let old = lab.graph.user_by_upn("u1@example.org").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    lab.graph.remove_user(&old);
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 1, 0, 0, 0, 0, 0], "{v}");
    assert_eq!(v["recreated"], 1, "{v}");
    let u1 = lab.graph.user_by_upn("u1@example.org").unwrap();
    assert_eq!(u1["jobTitle"], "Boss");
    let new = u1["id"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let u2 = lab.graph.user_by_upn("u2@example.org").unwrap()["id"].clone();
    let team = lab.graph.group_by_name("team").unwrap();
    let members: BTreeSet<&str> = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([new.as_str(), u2.as_str().unwrap()])
    );
    assert_eq!(lab.upns().len(), 2);
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0; 7], "{v}");
}

/// Issue 18.3 on Graph: a late copy of a group (its anchor in the extension attribute)
/// found by the instance that takes over is removed and recorded; the ledger's is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_a_group_is_removed_by_the_take_over() {
    let lab = Lab::start(2, 1000, 500).await;
    lab.sync("a", &[]);
    let attr = lab.graph.anchor_attr();
    let team = lab.graph.group_by_name("team").unwrap();
    let copy = lab.graph.add_group(
        json!({
            "displayName": "team",
            attr.clone(): team[&attr].clone(),
            "createdDateTime": "2099-01-01T00:00:00Z",
        }),
        &[],
    );
    let v = lab.sync("b", &["--take-over"]);
    assert_eq!(v["duplicates_removed"], 1, "{v}");
    let ids: Vec<Value> = lab.graph.groups().iter().map(|g| g["id"].clone()).collect();
    assert_eq!(ids, vec![team["id"].clone()], "the copy {copy} is gone");
    let v = lab.sync("b", &[]);
    assert_eq!(v["duplicates_removed"], 0, "{v}");
}

/// Issue 18.2, the wiped target through the Graph export: a plain sync within the
/// interval believes the ledger; `sync --full` lists users and groups (paged), creates every
/// owned object again (the group with the users' new ids) and restores a title changed out
/// of band; a second `sync --full` finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_target_is_restored_by_sync_full() {
    let lab = Lab::start(12, 1000, 500).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [13, 0, 0, 0, 0, 0, 0], "{v}");
    for u in lab.graph.users() {
        lab.graph.remove_user(u["id"].as_str().unwrap());
    }
    for g in lab.graph.groups() {
        lab.graph.remove_group(g["id"].as_str().unwrap());
    }
    let v = lab.sync("a", &[]);
    assert!(v.get("reconcile").is_none(), "{v}");
    assert!(lab.upns().is_empty());

    let v = lab.sync("a", &["--full"]);
    assert_eq!(counts(&v), [0; 7], "{v}");
    let r = &v["reconcile"];
    assert_eq!(
        [
            &r["missing"],
            &r["recreated"],
            &r["failed"],
            &v["recreated"]
        ],
        [&json!(13), &json!(13), &json!(0), &json!(13)],
        "{v}"
    );
    let want: BTreeSet<String> = (1..=12).map(|i| format!("u{i}@example.org")).collect();
    assert_eq!(lab.upns(), want);
    let id = |i: u32| {
        lab.graph.user_by_upn(&format!("u{i}@example.org")).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let team = lab.graph.group_by_name("team").unwrap();
    let members: BTreeSet<String> = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    assert_eq!(members, BTreeSet::from([id(1), id(2)]));

    lab.graph.set_user_attr(&id(3), "jobTitle", json!("Chief"));
    let v = lab.sync("a", &["--full"]);
    let r = &v["reconcile"];
    assert_eq!(
        [&r["changed"], &r["restored"]],
        [&json!(1), &json!(1)],
        "{v}"
    );
    assert_eq!(
        lab.graph.user_by_upn("u3@example.org").unwrap()["jobTitle"],
        "Clerk"
    );
    let v = lab.sync("a", &["--full"]);
    let r = &v["reconcile"];
    assert_eq!(
        [&r["missing"], &r["changed"], &r["duplicates"]],
        [&json!(0), &json!(0), &json!(0)],
        "{v}"
    );
    assert_eq!(counts(&v), [0; 7], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_properties_reach_graph_and_a_mapping_change_updates_them() {
    let lab = Lab::start(2, 1000, 500).await;
    let conf = lab.dir.path().join("dirsync.toml");
    let mut toml = std::fs::read_to_string(&conf).unwrap();
    toml.push_str(
        "[mapping.user]\nemployeeId = \"src.uid[0].upperAscii()\"\n\
         \"onPremisesExtensionAttributes.extensionAttribute1\" = \"src.cn[0]\"\n\
         businessPhones = \"'+1 555 0100'\"\n",
    );
    std::fs::write(&conf, &toml).unwrap();
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [3, 0, 0, 0, 0, 0, 0], "{v}");
    let stored = |upn: &str| {
        let mut u = lab.graph.user_by_upn(upn).unwrap();
        let o = u.as_object_mut().unwrap();
        for k in ["id", "createdDateTime", "onPremisesImmutableId"] {
            assert!(o.remove(k).is_some(), "{k}");
        }
        u
    };
    assert_eq!(
        stored("u1@example.org"),
        serde_json::json!({
            "accountEnabled": true,
            "userPrincipalName": "u1@example.org",
            "displayName": "User 1",
            "givenName": "User",
            "surname": "N1",
            "mail": "u1@example.org",
            "jobTitle": "Clerk",
            "mailNickname": "u1",
            "employeeId": "U1",
            "businessPhones": ["+1 555 0100"],
            "onPremisesExtensionAttributes": {"extensionAttribute1": "User 1"},
        })
    );
    std::fs::write(&conf, toml.replace("src.cn[0]", "'x-' + src.uid[0]")).unwrap();
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 2, 0, 0, 0, 0, 0], "{v}");
    assert_eq!(
        stored("u2@example.org")["onPremisesExtensionAttributes"],
        serde_json::json!({"extensionAttribute1": "x-u2"})
    );
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0; 7], "{v}");
    // A reconcile reads the mapped properties back: no drift.
    let v = lab.sync("a", &["--full"]);
    assert_eq!(counts(&v), [0; 7], "{v}");
    assert_eq!(
        (&v["reconcile"]["missing"], &v["reconcile"]["changed"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "{v}"
    );
}

/// `[sync] on_delete = "disable"` against Graph: a user deleted in the source has
/// `accountEnabled = false` first, and is deleted by the first cycle after `disabled_for`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_disable_sets_account_enabled_false_then_deletes() {
    let lab = Lab::start(4, 100, 500).await;
    let p = lab.dir.path().join("dirsync.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("on_delete = \"disable\"\ndisabled_for = \"2s\"\n");
    std::fs::write(&p, text).unwrap();
    let v = lab.sync("a", &[]);
    assert_eq!(v["created"], 5, "{v}");
    lab.slapd.ldapdelete(&format!("uid=u3,{PEOPLE}")).await;
    let enabled = |lab: &Lab| -> Vec<(String, Value)> {
        let mut v: Vec<(String, Value)> = lab
            .graph
            .users()
            .iter()
            .map(|u| {
                (
                    u["userPrincipalName"].as_str().unwrap().to_string(),
                    u["accountEnabled"].clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let v = lab.sync("a", &[]);
    assert_eq!(
        (&v["disabled"], &v["deleted"]),
        (&json!(1), &json!(0)),
        "{v}"
    );
    assert_eq!(
        enabled(&lab),
        [(1, true), (2, true), (3, false), (4, true)]
            .iter()
            .map(|(i, e)| (format!("u{i}@example.org"), json!(e)))
            .collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let v = lab.sync("a", &[]);
    assert_eq!(
        (&v["disabled"], &v["deleted"]),
        (&json!(0), &json!(1)),
        "{v}"
    );
    assert_eq!(
        lab.upns(),
        ["u1@example.org", "u2@example.org", "u4@example.org"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
}

/// The users' managers as the log's ledger holds them: upn -> the manager's target id.
async fn recorded_managers(lab: &Lab) -> BTreeMap<String, Option<String>> {
    let url = format!("sqlite://{}", lab.dir.path().join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    let state = replay::current(&store).await.unwrap();
    state
        .ledger
        .entries
        .values()
        .filter(|l| l.deleted.is_none())
        .filter_map(|l| match &l.state {
            Some(Mapped::User(u)) => Some((
                u.user_name.to_string(),
                u.extra.get("manager").map(|m| m.to_string()),
            )),
            _ => None,
        })
        .collect()
}

/// `manager` via `manager/$ref`: a chain (u1 manages u2 manages u3) created in one cycle,
/// read back by a reconcile, then changed, removed, and cleared when the manager is
/// deleted; each recorded in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_chain_is_set_in_one_cycle_then_changed_and_removed() {
    let lab = Lab::start(3, 1000, 500).await;
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u2,{PEOPLE}\nchangetype: modify\nadd: manager\nmanager: uid=u1,{PEOPLE}\n\n\
             dn: uid=u3,{PEOPLE}\nchangetype: modify\nadd: manager\nmanager: UID=U2,{PEOPLE}\n\n"
        ))
        .await;
    let conf = lab.dir.path().join("dirsync.toml");
    let mut toml = std::fs::read_to_string(&conf).unwrap();
    toml.push_str("[mapping.user]\nmanager = \"has(src.manager) ? src.manager[0] : null\"\n");
    std::fs::write(&conf, &toml).unwrap();
    let id = |upn: &str| {
        lab.graph.user_by_upn(upn).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let managers = |lab: &Lab| -> BTreeMap<String, Option<String>> {
        ["u1", "u2", "u3"]
            .iter()
            .filter_map(|u| {
                let upn = format!("{u}@example.org");
                let id = lab.graph.user_by_upn(&upn)?["id"].as_str()?.to_string();
                Some((upn, lab.graph.manager_of(&id)))
            })
            .collect()
    };
    let want = |pairs: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(u, m)| {
                (
                    format!("{u}@example.org"),
                    m.map(|m| id(&format!("{m}@example.org"))),
                )
            })
            .collect()
    };
    // Three users and team created; the two managers set once their users had ids.
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [4, 2, 0, 0, 0, 0, 0], "{v}");
    let chain = want(&[("u1", None), ("u2", Some("u1")), ("u3", Some("u2"))]);
    assert_eq!(managers(&lab), chain);
    assert_eq!(recorded_managers(&lab).await, chain);
    let mut puts: Vec<(String, String, Value)> = lab
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.url.contains("/manager"))
        .map(|r| (r.method, r.url, r.body))
        .collect();
    puts.sort_by(|a, b| a.1.cmp(&b.1));
    let mut want_puts: Vec<(String, String, Value)> = [("u2", "u1"), ("u3", "u2")]
        .iter()
        .map(|(u, m)| {
            (
                "PUT".to_string(),
                format!("/users/{}/manager/$ref", id(&format!("{u}@example.org"))),
                json!({"@odata.id": format!(
                    "https://graph.microsoft.com/v1.0/users/{}",
                    id(&format!("{m}@example.org"))
                )}),
            )
        })
        .collect();
    want_puts.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(puts, want_puts);
    // Nothing left to do; a reconcile reads the managers back (no drift).
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0; 7], "{v}");
    let v = lab.sync("a", &["--full"]);
    assert_eq!(counts(&v), [0; 7], "{v}");
    assert_eq!(v["reconcile"]["changed"], json!(0), "{v}");

    // A new manager.
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u3,{PEOPLE}\nchangetype: modify\nreplace: manager\nmanager: uid=u1,{PEOPLE}\n\n"
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 1, 0, 0, 0, 0, 0], "{v}");
    let changed = want(&[("u1", None), ("u2", Some("u1")), ("u3", Some("u1"))]);
    assert_eq!(managers(&lab), changed);
    assert_eq!(recorded_managers(&lab).await, changed);

    // The source's manager gone: the reference removed.
    lab.slapd
        .ldapmodify(&format!(
            "dn: uid=u3,{PEOPLE}\nchangetype: modify\ndelete: manager\n\n"
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 1, 0, 0, 0, 0, 0], "{v}");
    let removed = want(&[("u1", None), ("u2", Some("u1")), ("u3", None)]);
    assert_eq!(managers(&lab), removed);
    assert_eq!(recorded_managers(&lab).await, removed);
    let last = lab
        .graph
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.url.contains("/manager"));
    assert_eq!(
        last.map(|r| (r.method, r.url, r.status)),
        Some((
            "DELETE".to_string(),
            format!("/users/{}/manager/$ref", id("u3@example.org")),
            204
        ))
    );

    // The manager deleted: u1 gone, u2's manager cleared, in the target and the log (the
    // other update: team loses u1).
    lab.slapd.ldapdelete(&format!("uid=u1,{PEOPLE}")).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 2, 1, 0, 0, 0, 0], "{v}");
    let cleared = want(&[("u2", None), ("u3", None)]);
    assert_eq!(managers(&lab), cleared);
    assert_eq!(recorded_managers(&lab).await, cleared);
    let v = lab.sync("a", &["--full"]);
    assert_eq!(counts(&v), [0; 7], "{v}");
}

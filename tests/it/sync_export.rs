//! `dirsync sync` end to end through the binary: Samba AD DC and slapd into scim2-server.
//! First sync, changes, idempotence, matching of existing cloud objects, the deletion guard
//! with approval, fencing, and a kill -9 in the middle of an export.
//!
//! The SCIM side is inspected with plain HTTP requests here, not through dirsync's client.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dirsync::log::{AnyStore, OpenMode, Store};
use dirsync::project::{replay, State};
use serde_json::{json, Value};

use crate::common::{bin, dirsync, Run};
use crate::lab::{Samba, Scim, ScimTenant, Slapd, SlapdOptions};

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";
const STAFF: &str = "OU=Staff,DC=test,DC=lan";

/// A SCIM service seen through plain HTTP.
pub struct ScimView {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ScimView {
    pub fn new(t: &ScimTenant) -> ScimView {
        ScimView::of(t.base_url(), t.token())
    }

    /// The service at `base` (`.../v2`), read with `token`.
    pub fn of(base: &str, token: &str) -> ScimView {
        ScimView {
            base: base.to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, url: &str) -> Value {
        self.http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every resource of `Users` or `Groups`.
    pub async fn all(&self, res: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let url = format!(
                "{}/{res}?startIndex={}&count=1000",
                self.base,
                out.len() + 1
            );
            let v = self.get(&url).await;
            let page = v["Resources"].as_array().cloned().unwrap_or_default();
            let total = v["totalResults"].as_u64().unwrap_or(0) as usize;
            let empty = page.is_empty();
            out.extend(page);
            if out.len() >= total || empty {
                return out;
            }
        }
    }

    pub async fn count(&self, res: &str) -> u64 {
        let v = self.get(&format!("{}/{res}?count=1", self.base)).await;
        v["totalResults"].as_u64().unwrap_or(0)
    }

    pub async fn post(&self, res: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/{res}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.unwrap()
    }

    /// DELETE `res/id` behind dirsync's back; the status.
    pub async fn delete(&self, res: &str, id: &str) -> u16 {
        self.http
            .delete(format!("{}/{res}/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// PATCH `res/id` with these operations behind dirsync's back; the status.
    pub async fn patch(&self, res: &str, id: &str, operations: Value) -> u16 {
        self.http
            .patch(format!("{}/{res}/{id}", self.base))
            .bearer_auth(&self.token)
            .json(&json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": operations,
            }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Users by externalId.
    pub async fn users_by_anchor(&self) -> BTreeMap<String, Value> {
        by_anchor(self.all("Users").await)
    }

    pub async fn groups_by_anchor(&self) -> BTreeMap<String, Value> {
        by_anchor(self.all("Groups").await)
    }
}

fn by_anchor(v: Vec<Value>) -> BTreeMap<String, Value> {
    v.into_iter()
        .filter_map(|r| Some((r["externalId"].as_str()?.to_string(), r)))
        .collect()
}

fn member_ids(group: &Value) -> BTreeSet<String> {
    group["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["value"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn scim_user(user_name: &str, extra: Value) -> Value {
    let mut v = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

pub enum Source {
    Ad(Samba),
    Ldap(Slapd),
}

/// A source, an empty SCIM tenant and a dirsync directory configured for both.
pub struct E2e {
    pub source: Source,
    pub view: ScimView,
    pub dir: tempfile::TempDir,
}

impl E2e {
    /// slapd with u1..u`users` under people, groups team (u1, u2) and crew (u1, u2).
    pub async fn ldap(users: u32, threshold: &str) -> E2e {
        let (slapd, source) = ldap_source(users, &["team", "crew"]).await;
        let pw = slapd.password().to_string();
        E2e::new(Source::Ldap(slapd), &source, &pw, threshold).await
    }

    /// Samba with u1..u4 and Team (u1, u2) under OU=Staff.
    pub async fn ad() -> E2e {
        let samba = Samba::start().await;
        let mut ldif = format!("dn: {STAFF}\nobjectClass: organizationalUnit\n\n");
        for i in 1..=4 {
            ldif.push_str(&ad_user(i));
        }
        ldif.push_str(&format!(
            "dn: CN=Team,{STAFF}\nobjectClass: group\nsAMAccountName: team\n\
             member: CN=u1,{STAFF}\nmember: CN=u2,{STAFF}\n\n"
        ));
        samba.ldapadd(&ldif).await;
        let source = format!(
            "kind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
             base_dn = \"DC=test,DC=lan\"\ninclude = [\"{STAFF}\"]\n",
            samba.url(),
            samba.bind_dn()
        );
        let pw = samba.password().to_string();
        E2e::new(Source::Ad(samba), &source, &pw, "500").await
    }

    pub async fn new(source: Source, source_toml: &str, pw: &str, threshold: &str) -> E2e {
        let scim = Scim::tenant().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), format!("{pw}\n")).unwrap();
        std::fs::write(dir.path().join("token"), format!("{}\n", scim.token())).unwrap();
        std::fs::write(
            dir.path().join("dirsync.toml"),
            format!(
                "[store]\nurl = \"sqlite://log.db\"\n[source]\n{source_toml}\
                 [target]\nkind = \"scim\"\nurl = \"{}\"\ntoken_file = \"token\"\n\
                 [sync]\ndeletion_threshold = {threshold}\n",
                scim.base_url()
            ),
        )
        .unwrap();
        let run = dirsync(dir.path(), &["init"]);
        assert_eq!(run.code, 0, "{run:?}");
        let view = ScimView::new(&scim);
        E2e { source, view, dir }
    }

    pub fn slapd(&self) -> &Slapd {
        match &self.source {
            Source::Ldap(s) => s,
            Source::Ad(_) => panic!("not an OpenLDAP lab"),
        }
    }

    pub fn samba(&self) -> &Samba {
        match &self.source {
            Source::Ad(s) => s,
            Source::Ldap(_) => panic!("not an AD lab"),
        }
    }

    /// `dirsync sync --instance I --format json ARGS`, any exit code.
    pub fn run(&self, instance: &str, extra: &[&str]) -> (Run, Value) {
        let mut args = vec!["sync", "--instance", instance, "--format", "json"];
        args.extend_from_slice(extra);
        let run = dirsync(self.dir.path(), &args);
        let v = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        (run, v)
    }

    /// A sync that must exit 0.
    pub fn sync(&self, instance: &str, extra: &[&str]) -> Value {
        let (run, v) = self.run(instance, extra);
        assert_eq!(run.code, 0, "{run:?}");
        v
    }

    pub fn cli(&self, args: &[&str]) -> Run {
        dirsync(self.dir.path(), args)
    }

    pub async fn store(&self) -> AnyStore {
        let url = format!("sqlite://{}", self.dir.path().join("log.db").display());
        AnyStore::open(&url, OpenMode::Existing).await.unwrap()
    }

    pub async fn state(&self) -> State {
        std::sync::Arc::unwrap_or_clone(replay::current(&self.store().await).await.unwrap())
    }

    pub async fn head(&self) -> u64 {
        self.store().await.head().await.unwrap().0
    }

    /// The anchor of the source object with this DN (any case).
    pub async fn anchor(&self, dn: &str) -> String {
        let state = self.state().await;
        state
            .objects
            .objects
            .iter()
            .find(|(_, r)| r.dn.eq_ignore_ascii_case(dn))
            .map(|(a, _)| a.clone())
            .unwrap_or_else(|| panic!("no {dn}"))
    }

    /// Event types appended after `seq`.
    pub async fn events_after(&self, seq: u64) -> Vec<String> {
        let store = self.store().await;
        store
            .read(seq, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }
}

/// A slapd (with a session log) holding u1..u`users` under people and each of `groups`
/// with members u1 and u2; and the `[source]` keys that read it (password in file `pw`).
pub async fn ldap_source(users: u32, groups: &[&str]) -> (Slapd, String) {
    let slapd = Slapd::start(SlapdOptions {
        session_log: true,
        ..Default::default()
    })
    .await;
    let mut ldif = String::new();
    for i in 1..=users {
        ldif.push_str(&ldap_user(i));
    }
    for g in groups {
        ldif.push_str(&format!(
            "dn: cn={g},{GROUPS}\nobjectClass: groupOfNames\ncn: {g}\n\
             member: uid=u1,{PEOPLE}\nmember: uid=u2,{PEOPLE}\n\n"
        ));
    }
    slapd.ldapadd(&ldif).await;
    let source = format!(
        "kind = \"openldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
         base_dn = \"{}\"\ninclude = [\"{PEOPLE}\", \"{GROUPS}\"]\n",
        slapd.url(),
        slapd.bind_dn(),
        slapd.base_dn()
    );
    (slapd, source)
}

pub fn ldap_user(i: u32) -> String {
    format!(
        "dn: uid=u{i},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\nsn: N{i}\n\
         givenName: User\nmail: u{i}@example.org\ntitle: Clerk\n\n"
    )
}

fn ad_user(i: u32) -> String {
    format!(
        "dn: CN=u{i},{STAFF}\nobjectClass: user\nsAMAccountName: u{i}\nuserPrincipalName: u{i}@test.lan\n\
         givenName: User\nsn: N{i}\ntitle: Clerk\nuserAccountControl: 512\n\n"
    )
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// created, updated, deleted, matched, held, conflicts, failures
fn export_counts(v: &Value) -> [u64; 7] {
    [
        "created",
        "updated",
        "deleted",
        "matched",
        "held",
        "conflicts",
        "failures",
    ]
    .map(|k| n(v, k))
}

fn no_exports(types: &[String]) -> bool {
    !types
        .iter()
        .any(|t| t.starts_with("Export") || t == "DeletionsHeld")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_into_scim_follows_the_directory() {
    let lab = E2e::ldap(4, "500").await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [6, 0, 0, 0, 0, 0, 0], "{v}");
    assert_eq!(
        v["epoch"], 1,
        "the first instance establishes the relationship"
    );
    let users = lab.view.users_by_anchor().await;
    let groups = lab.view.groups_by_anchor().await;
    assert_eq!(users.len(), 4);
    assert_eq!(groups.len(), 2);
    assert_eq!(
        lab.view.count("Users").await,
        4,
        "nothing without an anchor"
    );
    let u1 = &users[&lab.anchor(&format!("uid=u1,{PEOPLE}")).await];
    assert_eq!(u1["userName"], "u1@example.org");
    assert_eq!(u1["name"]["familyName"], "N1");
    assert_eq!(u1["title"], "Clerk");
    assert_eq!(u1["active"], true);
    let id = |a: &str| users[a]["id"].as_str().unwrap().to_string();
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let a2 = lab.anchor(&format!("uid=u2,{PEOPLE}")).await;
    let team = lab.anchor(&format!("cn=team,{GROUPS}")).await;
    let crew = lab.anchor(&format!("cn=crew,{GROUPS}")).await;
    assert_eq!(groups[&team]["displayName"], "team");
    assert_eq!(
        member_ids(&groups[&team]),
        BTreeSet::from([id(&a1), id(&a2)])
    );

    // The same sync again exports nothing, and records no export.
    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [0; 7], "{v}");
    assert!(no_exports(&lab.events_after(head).await));

    // Changes arrive: an attribute, a new userName, a member removed, a deletion.
    let s = lab.slapd();
    s.ldapmodify(&format!(
        "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n\
         dn: uid=u3,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: u3new@example.org\n\n\
         dn: cn=team,{GROUPS}\nchangetype: modify\ndelete: member\nmember: uid=u2,{PEOPLE}\n\n"
    ))
    .await;
    s.ldapdelete(&format!("uid=u4,{PEOPLE}")).await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [0, 3, 1, 0, 0, 0, 0], "{v}");
    let users = lab.view.users_by_anchor().await;
    let groups = lab.view.groups_by_anchor().await;
    assert_eq!(users.len(), 3);
    assert_eq!(users[&a1]["title"], "Boss");
    assert_eq!(
        users[&a1]["name"]["familyName"], "N1",
        "untouched attributes stay"
    );
    let a3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    assert_eq!(users[&a3]["userName"], "u3new@example.org");
    assert_eq!(member_ids(&groups[&team]), BTreeSet::from([id(&a1)]));
    assert_eq!(
        member_ids(&groups[&crew]),
        BTreeSet::from([id(&a1), id(&a2)])
    );

    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [0; 7], "{v}");
    assert!(no_exports(&lab.events_after(head).await));
    // The ledger is the target: every owned object exists with its id.
    let state = lab.state().await;
    let owned: BTreeSet<String> = state
        .ledger
        .owned()
        .map(|(_, l)| l.target_id.clone())
        .collect();
    let mut in_target: BTreeSet<String> = users
        .values()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    in_target.extend(
        groups
            .values()
            .map(|g| g["id"].as_str().unwrap().to_string()),
    );
    assert_eq!(owned, in_target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_directory_into_scim_follows_the_directory() {
    let lab = E2e::ad().await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [5, 0, 0, 0, 0, 0, 0], "{v}");
    let a = |cn: &str| format!("CN={cn},{STAFF}");
    let (a1, a2, a3) = (
        lab.anchor(&a("u1")).await,
        lab.anchor(&a("u2")).await,
        lab.anchor(&a("u3")).await,
    );
    let team = lab.anchor(&a("Team")).await;
    let users = lab.view.users_by_anchor().await;
    assert_eq!(users.len(), 4);
    assert_eq!(users[&a1]["userName"], "u1@test.lan");
    assert_eq!(users[&a1]["active"], true);
    let id = |a: &str| users[a]["id"].as_str().unwrap().to_string();
    let groups = lab.view.groups_by_anchor().await;
    assert_eq!(groups[&team]["displayName"], "Team");
    assert_eq!(
        member_ids(&groups[&team]),
        BTreeSet::from([id(&a1), id(&a2)])
    );

    // Disable u1, rename u2 (new CN and UPN), take u2 out of Team, delete u4.
    let s = lab.samba();
    s.ldapmodify(&format!(
        "dn: CN=u1,{STAFF}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n\n\
         dn: CN=u2,{STAFF}\nchangetype: modify\nreplace: userPrincipalName\nuserPrincipalName: u2b@test.lan\n\n\
         dn: CN=Team,{STAFF}\nchangetype: modify\ndelete: member\nmember: CN=u2,{STAFF}\n\n"
    ))
    .await;
    s.ldapmodrdn(&format!("CN=u2,{STAFF}"), "CN=u2b", None)
        .await;
    s.ldapmodify(&format!(
        "dn: CN=u3,{STAFF}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
    ))
    .await;
    s.ldapdelete(&format!("CN=u4,{STAFF}")).await;
    let v = lab.sync("a", &[]);
    let [created, updated, deleted, ..] = export_counts(&v);
    assert_eq!((created, deleted), (0, 1), "{v}");
    assert!(updated >= 4, "u1, u2, u3 and Team: {v}");
    let users = lab.view.users_by_anchor().await;
    assert_eq!(users.len(), 3);
    assert_eq!(users[&a1]["active"], false, "disabled");
    assert_eq!(
        users[&a2]["userName"], "u2b@test.lan",
        "renamed, same anchor"
    );
    assert_eq!(users[&a3]["title"], "Boss");
    let groups = lab.view.groups_by_anchor().await;
    assert_eq!(member_ids(&groups[&team]), BTreeSet::from([id(&a1)]));

    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [0; 7], "{v}");
    assert!(no_exports(&lab.events_after(head).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_cloud_objects_are_matched_and_ambiguity_is_held() {
    let lab = E2e::ldap(5, "500").await;
    // Learn the anchors without exporting.
    let v = lab.sync("a", &["--staging"]);
    assert_eq!(v["plan"].as_array().unwrap().len(), 7, "{v}");
    let u = |i: u32| format!("uid=u{i},{PEOPLE}");
    let (a1, a2, a3, a4) = (
        lab.anchor(&u(1)).await,
        lab.anchor(&u(2)).await,
        lab.anchor(&u(3)).await,
        lab.anchor(&u(4)).await,
    );
    let view = &lab.view;
    // u1: a cloud user with its userName (soft match).
    let c1 = view
        .post(
            "Users",
            scim_user("U1@example.org", json!({"title": "Old"})),
        )
        .await;
    // u2: a cloud user carrying its anchor under another name (hard match).
    let c2 = view
        .post("Users", scim_user("legacy-u2", json!({"externalId": a2})))
        .await;
    // u3: two unanchored candidates, by userName and by mail: ambiguous.
    view.post("Users", scim_user("u3@example.org", json!({})))
        .await;
    view.post(
        "Users",
        scim_user(
            "u3-other",
            json!({"emails": [{"value": "u3@example.org", "type": "work"}]}),
        ),
    )
    .await;
    // u4: its userName is taken by an object anchored to something else.
    view.post(
        "Users",
        scim_user("u4@example.org", json!({"externalId": "someone-else"})),
    )
    .await;
    // team: an unanchored group of that name (soft match).
    let cteam = view
        .post(
            "Groups",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "team"}),
        )
        .await;

    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "conflicts need the operator: {run:?}");
    let [created, _, deleted, matched, held, conflicts, failures] = export_counts(&v);
    assert_eq!(
        (matched, conflicts, deleted, held, failures),
        (3, 2, 0, 0, 0),
        "{v}"
    );
    assert_eq!(created, 2, "u5 and crew: {v}");
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["anchor"].as_str().unwrap())
        .collect();
    assert_eq!(
        problems.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([a3.as_str(), a4.as_str()])
    );
    let all = view.all("Users").await;
    assert_eq!(all.len(), 6, "5 pre-existing + u5: nothing duplicated");
    let users = view.users_by_anchor().await;
    assert_eq!(
        users[&a1]["id"], c1["id"],
        "soft match took the existing user"
    );
    assert_eq!(users[&a1]["title"], "Clerk");
    assert_eq!(
        users[&a1]["externalId"],
        a1.as_str(),
        "the anchor was written"
    );
    assert_eq!(users[&a2]["id"], c2["id"]);
    assert_eq!(users[&a2]["userName"], "u2@example.org");
    assert!(!users.contains_key(&a3) && !users.contains_key(&a4));
    let groups = view.groups_by_anchor().await;
    let team = lab.anchor(&format!("cn=team,{GROUPS}")).await;
    assert_eq!(groups[&team]["id"], cteam["id"]);
    assert_eq!(
        member_ids(&groups[&team]),
        BTreeSet::from([
            c1["id"].as_str().unwrap().into(),
            c2["id"].as_str().unwrap().into()
        ])
    );

    // Again: the conflicts are still held, nothing is created, and they are not re-recorded.
    let head = lab.head().await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(export_counts(&v), [0, 0, 0, 0, 0, 2, 0], "{v}");
    assert!(no_exports(&lab.events_after(head).await));
    assert_eq!(view.count("Users").await, 6);
}

/// Delete `count` users, u`from`.. , in one ldapmodify.
async fn delete_users(slapd: &Slapd, from: u32, count: u32) {
    let mut ldif = String::new();
    for i in from..from + count {
        ldif.push_str(&format!("dn: uid=u{i},{PEOPLE}\nchangetype: delete\n\n"));
    }
    slapd.ldapmodify(&ldif).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_deletions_wait_for_an_approval_of_exactly_that_list() {
    let lab = E2e::ldap(700, "500").await;
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "created"), 702, "{v}");
    delete_users(lab.slapd(), 101, 600).await;

    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(n(&v, "held"), 600, "{v}");
    assert!(run.stderr.contains("deletions approve --plan"), "{run:?}");
    assert_eq!(lab.view.count("Users").await, 700, "target unchanged");
    let first = v["held_plan"].as_str().unwrap().to_string();

    let shown = lab.cli(&["deletions", "show", "--format", "json"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    let plans: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(plans[0]["plan_hash"], first.as_str());
    assert_eq!(plans[0]["count"], 600);
    assert!(plans[0]["deletions"][0]["name"]
        .as_str()
        .unwrap()
        .ends_with("@example.org"));

    // Held again without a second record; an unknown hash is bad input.
    let head = lab.head().await;
    let (run, _) = lab.run("a", &[]);
    assert_eq!(run.code, 3);
    assert!(!lab
        .events_after(head)
        .await
        .contains(&"DeletionsHeld".to_string()));
    assert_eq!(lab.cli(&["deletions", "approve", "--plan", "abc"]).code, 2);

    // One more deletion: a different list, a different hash; the first no longer stands,
    // so approving it is refused (exit 2) and approves nothing.
    lab.slapd().ldapdelete(&format!("uid=u100,{PEOPLE}")).await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    let second = v["held_plan"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let head = lab.head().await;
    assert_eq!(lab.cli(&["deletions", "approve", "--plan", &first]).code, 2);
    assert_eq!(lab.head().await, head);
    let (run, _) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(lab.view.count("Users").await, 700);

    assert_eq!(
        lab.cli(&["deletions", "approve", "--plan", &second]).code,
        0
    );
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "deleted"), 601, "{v}");
    assert_eq!(lab.view.count("Users").await, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_instance_exports_nothing() {
    let lab = E2e::ldap(3, "500").await;
    lab.sync("old", &[]);
    // Another instance may not export while old holds the relationship.
    let head = lab.head().await;
    let (run, _) = lab.run("new", &[]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(
        lab.events_after(head).await,
        ["SyncRunFailed"],
        "a fenced instance records its failed cycle and nothing else"
    );
    // It takes over; now old is fenced.
    let v = lab.sync("new", &["--take-over"]);
    assert_eq!(v["epoch"], 2, "{v}");
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let head = lab.head().await;
    let (run, _) = lab.run("old", &[]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("new holds the sync relationship"),
        "{run:?}"
    );
    assert_eq!(lab.events_after(head).await, ["SyncRunFailed"]);
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    assert_eq!(lab.view.users_by_anchor().await[&a1]["title"], "Clerk");
    let v = lab.sync("new", &[]);
    assert_eq!(n(&v, "updated"), 1, "{v}");
    assert_eq!(lab.view.users_by_anchor().await[&a1]["title"], "Boss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_export_then_rerun_duplicates_nothing() {
    // scim2-server slows down as it fills (about 25 creates/s past 1,000 users here), so
    // the directory is kept small enough for a quick test and large enough to span chunks.
    let lab = E2e::ldap(600, "500").await;
    let mut child = std::process::Command::new(bin())
        .args(["sync", "--instance", "a"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let c = lab.view.count("Users").await;
        if c >= 120 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no export started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = lab.view.count("Users").await;
    assert!(before < 600, "killed before the end ({before})");

    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let users = lab.view.all("Users").await;
    assert_eq!(users.len(), 600, "{v}");
    let names: BTreeSet<&str> = users
        .iter()
        .map(|u| u["userName"].as_str().unwrap())
        .collect();
    let anchors: BTreeSet<&str> = users
        .iter()
        .map(|u| u["externalId"].as_str().unwrap())
        .collect();
    assert_eq!((names.len(), anchors.len()), (600, 600), "no duplicates");
    assert_eq!(lab.view.count("Groups").await, 2);
    let state = lab.state().await;
    assert_eq!(state.ledger.owned().count(), 602);
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [0; 7], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_target_credentials_and_unmappable_users() {
    let lab = E2e::ldap(2, "500").await;
    // A user with neither mail nor uid has no userName: reported, not exported.
    lab.slapd()
        .ldapadd(&format!(
            "dn: cn=Nameless,{PEOPLE}\nobjectClass: inetOrgPerson\ncn: Nameless\nsn: X\n\n"
        ))
        .await;
    let wrong = lab.dir.path().join("token");
    let good = std::fs::read_to_string(&wrong).unwrap();
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let (run, _) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("401"), "{run:?}");
    assert!(!run.stderr.contains("not-the-token"));
    assert_eq!(
        lab.events_after(0).await,
        ["SyncRunFailed"],
        "only the failed cycle is recorded"
    );
    std::fs::write(&wrong, good).unwrap();

    // Dry run: the plan, nothing written anywhere.
    let (run, v) = lab.run("a", &["--dry-run"]);
    assert_eq!(run.code, 0, "{run:?}");
    let ops: Vec<&str> = v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create"; 4], "{v}");
    assert_eq!(lab.head().await, 1, "a dry run writes nothing");
    assert_eq!(lab.view.count("Users").await, 0);

    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "created"), 4, "{v}");
    assert_eq!(n(&v, "unmappable"), 1, "{v}");
    assert!(
        v["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("userName"),
        "{v}"
    );
    assert_eq!(lab.view.count("Users").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_checks_reach_bind_and_duplicates() {
    let lab = E2e::ldap(3, "500").await;
    let run = lab.cli(&["preflight", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let checks: Value = serde_json::from_str(&run.stdout).unwrap();
    let names: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "store",
            "source bind",
            "sync control",
            "source read",
            "duplicates",
            "userName",
            "attributes",
            "target",
            "target content"
        ]
    );
    assert_eq!(lab.head().await, 0, "preflight records nothing");
    // A second user with u1's mail, and a wrong token: both fail, exit 1.
    lab.slapd()
        .ldapadd(&format!(
            "dn: uid=twin,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: twin\ncn: Twin\nsn: T\nmail: u1@example.org\n\n"
        ))
        .await;
    std::fs::write(lab.dir.path().join("token"), "wrong\n").unwrap();
    let run = lab.cli(&["preflight", "--format", "json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let checks: Value = serde_json::from_str(&run.stdout).unwrap();
    let failed: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["duplicates", "target"], "{checks}");
    assert!(checks.to_string().contains("u1@example.org"));
}

/// A cycle after one that exported its whole plan plans only what the log named since
/// (`plan::focus`), and ends where a whole plan would: the target exact, a `--full` cycle
/// finding nothing more to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_plans_only_what_changed_since_the_last_whole_plan() {
    let lab = E2e::ldap(40, "500").await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [42, 0, 0, 0, 0, 0, 0], "{v}");
    assert_eq!(v["whole_plan"], "the cycle reads the whole target", "{v}");
    assert_eq!(n(&v, "planned_objects"), 42, "{v}");

    // Nothing changed: nothing planned (its own exports settled what they named).
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [0; 7], "{v}");
    assert_eq!(v.get("whole_plan"), None, "{v}");
    assert_eq!(n(&v, "planned_objects"), 0, "{v}");

    // A title, a member added, a user deleted and one created: those objects, the group
    // that gains a member and the member it gains.
    let s = lab.slapd();
    s.ldapmodify(&format!(
        "dn: uid=u5,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n\
         dn: cn=team,{GROUPS}\nchangetype: modify\nadd: member\nmember: uid=u41,{PEOPLE}\n\n"
    ))
    .await;
    s.ldapadd(&ldap_user(41)).await;
    s.ldapdelete(&format!("uid=u7,{PEOPLE}")).await;
    let v = lab.sync("a", &[]);
    assert_eq!(export_counts(&v), [1, 2, 1, 0, 0, 0, 0], "{v}");
    assert_eq!(v.get("whole_plan"), None, "{v}");
    assert_eq!(n(&v, "planned_objects"), 4, "u5, u7, u41 and team: {v}");
    let users = lab.view.users_by_anchor().await;
    let groups = lab.view.groups_by_anchor().await;
    assert_eq!(users.len(), 40);
    let state = lab.state().await;
    let a = |uid: &str| -> String {
        let dn = format!("uid={uid},{PEOPLE}");
        state
            .objects
            .objects
            .iter()
            .find(|(_, r)| r.dn.eq_ignore_ascii_case(&dn))
            .map(|(a, _)| a.clone())
            .unwrap_or_else(|| panic!("no {dn}"))
    };
    assert_eq!(users[&a("u5")]["title"], "Boss");
    let id = |anchor: &str| users[anchor]["id"].as_str().unwrap().to_string();
    let team = lab.anchor(&format!("cn=team,{GROUPS}")).await;
    assert_eq!(
        member_ids(&groups[&team]),
        BTreeSet::from([id(&a("u1")), id(&a("u2")), id(&a("u41"))])
    );

    // A whole plan finds nothing the focused ones missed.
    let head = lab.head().await;
    let v = lab.sync("a", &["--full"]);
    assert_eq!(export_counts(&v), [0; 7], "{v}");
    assert_eq!(v["whole_plan"], "asked for (--full)", "{v}");
    assert!(no_exports(&lab.events_after(head).await));
}

/// A staging cycle lists what changed in its plan since its instance's last staging
/// cycle listed one; `--staging --full` lists everything that waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_delta_lists_what_changed_in_the_plan() {
    let lab = E2e::ldap(10, "500").await;
    let listed = |v: &Value| -> Vec<(String, String)> {
        let mut ops: Vec<(String, String)> = v["plan"]
            .as_array()
            .map(|p| {
                p.iter()
                    .map(|o| {
                        let s = |k: &str| o[k].as_str().unwrap_or_default().to_string();
                        (s("op"), s("name"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        ops.sort();
        ops
    };
    let v = lab.sync("s", &["--staging"]);
    assert_eq!(listed(&v).len(), 12, "{v}");
    assert_eq!(v["whole_plan"], "no whole plan tried yet", "{v}");

    let v = lab.sync("s", &["--staging"]);
    assert_eq!((listed(&v), n(&v, "planned_objects")), (vec![], 0), "{v}");

    let s = lab.slapd();
    s.ldapmodify(&format!(
        "dn: uid=u5,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
    ))
    .await;
    let v = lab.sync("s", &["--staging"]);
    assert_eq!(
        listed(&v),
        vec![("create".to_string(), "u5@example.org".to_string())],
        "{v}"
    );
    assert_eq!(v.get("whole_plan"), None, "{v}");

    let v = lab.sync("s", &["--staging", "--full"]);
    assert_eq!(listed(&v).len(), 12, "{v}");
    assert_eq!(v["whole_plan"], "asked for (--full)", "{v}");
    assert_eq!(lab.view.count("Users").await, 0, "staging exports nothing");
}

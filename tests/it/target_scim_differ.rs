//! SCIM service providers that differ within the RFC (issue 17), each behaviour put in
//! front of a real scim2-server by the proxy of `lab::scim_proxy`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::lab::{ProxyRules, ScimProxy};
use crate::sync_export::{ldap_user, E2e};

const PEOPLE: &str = "ou=people,dc=example,dc=org";

/// Point the lab's dirsync at a proxy in front of its SCIM tenant.
pub async fn behind_proxy(lab: &E2e, rules: ProxyRules) -> ScimProxy {
    let path = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let upstream = toml
        .lines()
        .skip_while(|l| *l != "[target]")
        .find_map(|l| l.strip_prefix("url = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    let proxy = ScimProxy::start(&upstream, rules).await;
    std::fs::write(&path, toml.replace(&upstream, proxy.base_url())).unwrap();
    proxy
}

fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// Finding 1: a server that answers 400 to the candidate filter of one new object made the
/// whole export fail, every cycle; an unrelated change never arrived. Now the lookup falls
/// back to a listing matched by dirsync itself, and the cycle goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_candidate_filter_does_not_stop_the_export() {
    let lab = E2e::ldap(2, "500").await;
    let _proxy = behind_proxy(
        &lab,
        ProxyRules {
            refuse_filters_containing: vec!["u3@example.org".into()],
            ..Default::default()
        },
    )
    .await;
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "created"), 4, "{v}");

    // A new user whose lookup the server refuses, and an unrelated title change.
    let s = lab.slapd();
    s.ldapadd(&ldap_user(3)).await;
    s.ldapmodify(&format!(
        "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
    ))
    .await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        [
            count(&v, "created"),
            count(&v, "updated"),
            count(&v, "failures")
        ],
        [1, 1, 0],
        "{v}"
    );
    let users = lab.view.users_by_anchor().await;
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let a3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    assert_eq!(users[&a1]["title"], "Boss");
    assert_eq!(users[&a3]["userName"], "u3@example.org");
    assert_eq!(users.len(), 3);
    // And the next cycle has nothing left to do.
    let v = lab.sync("a", &[]);
    assert_eq!([count(&v, "created"), count(&v, "updated")], [0, 0], "{v}");
}

/// The probe that checks the target's credentials each cycle names one user by a filter
/// (a page of all users made scim2-server count 100,000 of them, 0.29 s a cycle); a server
/// that refuses the filter (400) is probed by that page instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_filters_and_falls_back_to_a_page_where_filters_are_refused() {
    let probes = |proxy: &ScimProxy| -> Vec<(String, u16)> {
        proxy
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "GET"
                    && r.target.contains("count=1")
                    && !r.target.contains("count=1000")
            })
            .map(|r| {
                (
                    r.target
                        .split_once("/Users")
                        .map_or(String::new(), |(_, q)| q.to_string()),
                    r.status,
                )
            })
            .collect()
    };
    let filtered = (
        "?filter=userName+eq+%22dirsync-probe.invalid%22&count=1".to_string(),
        200,
    );
    let page = ("?startIndex=1&count=1".to_string(), 200);

    let lab = E2e::ldap(2, "500").await;
    let proxy = behind_proxy(&lab, ProxyRules::default()).await;
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "created"), 4, "{v}");
    assert_eq!(probes(&proxy), vec![filtered.clone()]);

    let lab = E2e::ldap(2, "500").await;
    let proxy = behind_proxy(
        &lab,
        ProxyRules {
            refuse_filters_containing: vec!["dirsync-probe".into()],
            ..Default::default()
        },
    )
    .await;
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "created"), 4, "{v}");
    assert_eq!(probes(&proxy), vec![(filtered.0, 400), page]);
}

/// What the target must hold after a sync of the lab's u1..u`users` and groups team and
/// crew (members u1, u2), read from scim2-server directly: each user by its anchor with
/// userName and title, each group with the users' target ids as members.
pub async fn assert_exact(lab: &E2e, users: u32, titles: &[(u32, &str)]) {
    let found = lab.view.users_by_anchor().await;
    let mut ids = BTreeMap::new();
    let mut want = BTreeMap::new();
    let mut got = BTreeMap::new();
    for i in 1..=users {
        let a = lab.anchor(&format!("uid=u{i},{PEOPLE}")).await;
        let title = titles
            .iter()
            .find(|(n, _)| *n == i)
            .map_or("Clerk", |(_, t)| *t);
        want.insert(a.clone(), (format!("u{i}@example.org"), title.to_string()));
        let u = &found[&a];
        got.insert(
            a.clone(),
            (
                u["userName"].as_str().unwrap_or_default().to_string(),
                u["title"].as_str().unwrap_or_default().to_string(),
            ),
        );
        ids.insert(i, u["id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, want);
    assert_eq!(found.len() as u32, users, "{found:?}");
    let all = lab.view.all("Groups").await;
    let groups: BTreeMap<String, BTreeSet<String>> = all
        .iter()
        .map(|g| {
            let members = g["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|x| x["value"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (g["displayName"].as_str().unwrap().to_string(), members)
        })
        .collect();
    let pair: BTreeSet<String> = [ids[&1].clone(), ids[&2].clone()].into();
    assert_eq!(
        groups,
        BTreeMap::from([
            ("crew".to_string(), pair.clone()),
            ("team".to_string(), pair)
        ]),
        "{all:?}"
    );
    assert_eq!(all.len(), 2, "{all:?}");
}

fn counts(v: &Value) -> [u64; 5] {
    ["created", "updated", "matched", "conflicts", "failures"].map(|k| count(v, k))
}

/// Finding 3 (RFC 7643 §2.1): attribute names are case-insensitive. A server answering
/// `ID`, `UserName`, `Members`, `DisplayName`... made every create "carry no id" and every
/// listing unreadable. Now the sync is as exact as against scim2-server itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_names_in_responses_are_read_case_insensitively() {
    let lab = E2e::ldap(2, "500").await;
    // A cloud user already there, found (soft match) by a name it answers as `UserName`.
    lab.view
        .post(
            "Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "u2@example.org",
            }),
        )
        .await;
    let proxy = behind_proxy(
        &lab,
        ProxyRules {
            rename_attributes: true,
            ..Default::default()
        },
    )
    .await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    // u1, team, crew created; u2 matched and then written whole.
    assert_eq!(counts(&v), [3, 1, 1, 0, 0], "{v}");
    assert_exact(&lab, 2, &[]).await;

    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 1, 0, 0, 0], "{v}");
    assert_exact(&lab, 2, &[(1, "Boss")]).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 0, 0, 0, 0], "{v}");
    assert!(proxy.requests().len() > 5);
}

/// Finding 3: `If-Match` only when the server advertises ETags. A server whose
/// ServiceProviderConfig says `etag.supported = false` (and that answers 412 to any
/// `If-Match`, as it cannot honour one) had every update fail after one re-read. Now no
/// `If-Match` is sent to it, and updates arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_only_when_the_server_advertises_etags() {
    let lab = E2e::ldap(2, "500").await;
    let proxy = behind_proxy(
        &lab,
        ProxyRules {
            no_etags: true,
            ..Default::default()
        },
    )
    .await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [4, 0, 0, 0, 0], "{v}");
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(counts(&v), [0, 1, 0, 0, 0], "{v}");
    assert_exact(&lab, 2, &[(1, "Boss")]).await;
    let seen = proxy.requests();
    assert!(seen.iter().any(|r| r.method == "PATCH"), "{seen:?}");
    let with: Vec<_> = seen.iter().filter(|r| r.if_match).collect();
    assert!(with.is_empty(), "{with:?}");
}

/// Issue 18.2: objects deleted in the target out of band (through scim2-server's API).
/// An update answered 404 re-creates the object (recorded: the ledger holds its new id,
/// and the groups get it as a member); a deletion answered 404 counts as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_deleted_out_of_band_are_recreated_on_update_and_count_as_deleted() {
    let lab = E2e::ldap(3, "500").await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [5, 0, 0, 0, 0], "{v}");
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let a3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    let before = lab.view.users_by_anchor().await;
    let old1 = before[&a1]["id"].as_str().unwrap().to_string();
    let old3 = before[&a3]["id"].as_str().unwrap().to_string();
    assert_eq!(lab.view.delete("Users", &old1).await, 204);
    assert_eq!(lab.view.delete("Users", &old3).await, 204);

    let s = lab.slapd();
    s.ldapmodify(&format!(
        "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
    ))
    .await;
    s.ldapdelete(&format!("uid=u3,{PEOPLE}")).await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    // u1 re-created, both groups given its new id, u3's deletion done.
    assert_eq!(counts(&v), [0, 2, 0, 0, 0], "{v}");
    assert_eq!(
        [count(&v, "recreated"), count(&v, "deleted")],
        [1, 1],
        "{v}"
    );
    assert_exact(&lab, 2, &[(1, "Boss")]).await;
    let users = lab.view.users_by_anchor().await;
    let new1 = users[&a1]["id"].as_str().unwrap().to_string();
    assert_ne!(new1, old1);
    let state = lab.state().await;
    assert_eq!(state.ledger.entries[&a1].target_id, new1);
    assert!(state.ledger.entries[&a3].deleted.is_some());
    assert!(
        state.ledger.failures.is_empty(),
        "{:?}",
        state.ledger.failures
    );
    // Recorded: the update answered 404, then the creation with the new id.
    let store = lab.store().await;
    let events = dirsync::log::Store::read(&store, 0, 100_000).await.unwrap();
    let about_u1: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            (
                e.event_type.clone(),
                serde_json::from_str::<Value>(&e.payload).unwrap(),
            )
        })
        .filter(|(t, p)| t.starts_with("Export") && p["anchor"] == a1.as_str())
        .collect();
    let kinds: Vec<(&str, &str)> = about_u1
        .iter()
        .map(|(t, p)| (t.as_str(), p["op"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("ExportApplied", "create"),
            ("ExportFailed", "update"),
            ("ExportApplied", "create")
        ],
        "{about_u1:?}"
    );
    assert_eq!(about_u1[1].1["status"], 404);
    assert_eq!(about_u1[2].1["target_id"], new1.as_str());
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 0, 0, 0, 0], "{v}");
}

/// Finding 3: a server whose `eq` compares case-exactly. A pre-existing user differing
/// from the source's userName only in case was not found by the candidate filter, its
/// create answered 409 (userName is unique case-insensitively) on every run; a
/// pre-existing group `TEAM` got a duplicate `team`. Matching is dirsync's own,
/// case-insensitive where RFC 7643 says caseExact false, whatever the cycle's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_exact_eq_does_not_hide_case_different_objects() {
    let lab = E2e::ldap(2, "500").await;
    lab.view
        .post(
            "Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "U2@Example.ORG",
            }),
        )
        .await;
    lab.view
        .post(
            "Groups",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "TEAM",
            }),
        )
        .await;
    let proxy = behind_proxy(
        &lab,
        ProxyRules {
            case_exact_eq: true,
            ..Default::default()
        },
    )
    .await;
    // Four new objects: few enough that candidates were asked of the server's filter.
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    // u1 and crew created; U2 and TEAM matched (soft) and written whole.
    assert_eq!(counts(&v), [2, 2, 2, 0, 0], "{v}");
    assert_exact(&lab, 2, &[]).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 0, 0, 0, 0], "{v}");

    // Later, with objects owned: the same again for a user and a group `GRP03` / `grp03`.
    let u3 = lab
        .view
        .post(
            "Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "U3@EXAMPLE.org",
            }),
        )
        .await;
    let grp03 = lab
        .view
        .post(
            "Groups",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "GRP03",
            }),
        )
        .await;
    let s = lab.slapd();
    s.ldapadd(&ldap_user(3)).await;
    s.ldapadd(&format!(
        "dn: cn=grp03,ou=groups,dc=example,dc=org\nobjectClass: groupOfNames\ncn: grp03\n\
         member: uid=u3,{PEOPLE}\n\n"
    ))
    .await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(counts(&v), [0, 2, 2, 0, 0], "{v}");
    let users = lab.view.all("Users").await;
    let groups = lab.view.all("Groups").await;
    assert_eq!([users.len(), groups.len()], [3, 3], "{users:?} {groups:?}");
    let a3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    let g3 = lab.anchor("cn=grp03,ou=groups,dc=example,dc=org").await;
    let ledger = lab.state().await.ledger;
    assert_eq!(ledger.entries[&a3].target_id, u3["id"].as_str().unwrap());
    assert_eq!(ledger.entries[&g3].target_id, grp03["id"].as_str().unwrap());
    let g = groups.iter().find(|g| g["id"] == grp03["id"]).unwrap();
    assert_eq!(g["displayName"], "grp03");
    assert_eq!(g["members"][0]["value"], u3["id"]);
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 0, 0, 0, 0], "{v}");

    // A server whose eq ignores case, as the RFC says, is trusted with the lookup of a few
    // new objects (once it found an owned object by its name spelt in the other case).
    proxy.set_rules(ProxyRules::default());
    lab.view
        .post(
            "Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "u4@EXAMPLE.ORG",
            }),
        )
        .await;
    s.ldapadd(&ldap_user(4)).await;
    let seen = proxy.requests().len();
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 1, 1, 0, 0], "{v}");
    let gets: Vec<String> = proxy.requests()[seen..]
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains("/Users?"))
        // Not the credentials probe (count=1) at the start.
        .filter(|r| r.target.contains("count=1000"))
        .map(|r| r.target.clone())
        .collect();
    assert!(
        gets.iter().all(|t| t.contains("filter=")),
        "no listing: {gets:?}"
    );
    assert_eq!(gets.len(), 3, "two probes and one lookup: {gets:?}");
}

/// Finding 3: per-object failures. A target that refuses one object's write fails that
/// object alone: the rest of the cycle is exported, the failure is recorded
/// (`ExportFailed`) and retried next cycle; after 5 failures in a row the object is
/// quarantined (skipped, shown by `sync`) until its source changes or `sync --full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_object_fails_alone_then_is_quarantined() {
    let lab = E2e::ldap(2, "500").await;
    let proxy = behind_proxy(
        &lab,
        ProxyRules {
            refuse_writes_containing: vec!["u2@example.org".into()],
            ..Default::default()
        },
    )
    .await;
    let a2 = lab.anchor_after_sync_of(&proxy).await;
    let posts_of_u2 = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.body.contains("u2@example.org"))
            .count()
    };
    // Cycles 2 to 5: retried, failing again.
    for cycle in 2..=5 {
        let (run, v) = lab.run("a", &[]);
        assert_eq!(run.code, 1, "cycle {cycle}: {run:?}");
        assert_eq!(counts(&v), [0, 0, 0, 0, 1], "cycle {cycle}: {v}");
        assert_eq!(count(&v, "quarantined"), 0, "{v}");
        assert_eq!(posts_of_u2(), cycle);
    }
    let state = lab.state().await;
    assert_eq!(state.ledger.failures[&a2].count, 5);
    // Cycle 6: quarantined, not sent; the cycle is a success that says so.
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(counts(&v), [0, 0, 0, 0, 0], "{v}");
    assert_eq!(count(&v, "quarantined"), 1, "{v}");
    assert_eq!(v["problems"][0]["problem"], "quarantined", "{v}");
    assert_eq!(v["problems"][0]["anchor"], a2.as_str(), "{v}");
    assert_eq!(posts_of_u2(), 5);
    let table = lab.cli(&["sync", "--instance", "a"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("QUARANTINED"), "{}", table.stdout);
    assert!(table.stdout.contains("quarantined"), "{}", table.stdout);
    assert_eq!(posts_of_u2(), 5);
    // `status` lists it (issue 17) and counts it in its table; the cycles succeed, so
    // the health is fine.
    let state = lab.state().await;
    let f = &state.ledger.failures[&a2];
    let status = lab.cli(&["status", "--format", "json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let v: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        v["quarantined"],
        serde_json::json!([{
            "anchor": a2,
            "kind": "user",
            "name": format!("uid=u2,{PEOPLE}"),
            "op": "create",
            "failures": 5,
            "status": f.status,
            "last_error": f.error,
            "at": dirsync::output::time(f.at.at_us),
        }])
    );
    let table = lab.cli(&["status"]);
    assert!(
        table.stdout.contains("quarantined objects: 1\n"),
        "{}",
        table.stdout
    );

    // Its source changes: tried once more (failing: quarantined again at once).
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u2,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(counts(&v), [0, 0, 0, 0, 1], "{v}");
    assert_eq!(posts_of_u2(), 6);
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(count(&v, "quarantined"), 1, "{v}");
    assert_eq!(posts_of_u2(), 6);

    // The target accepts it now; the operator releases it with a full sync.
    proxy.set_rules(ProxyRules::default());
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "quarantined"), 1, "{v}");
    let v = lab.sync("a", &["--full"]);
    // u2 created, both groups given it as a member.
    assert_eq!(counts(&v), [1, 2, 0, 0, 0], "{v}");
    assert_eq!(count(&v, "quarantined"), 0, "{v}");
    assert_exact(&lab, 2, &[(2, "Boss")]).await;
    assert!(lab.state().await.ledger.failures.is_empty());
    let status = lab.cli(&["status", "--format", "json"]);
    let v: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["quarantined"], serde_json::json!([]));
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 0, 0, 0, 0], "{v}");
}

impl E2e {
    /// The first sync, with u2 refused: the rest is exported, u2's failure recorded.
    /// Returns u2's anchor.
    async fn anchor_after_sync_of(&self, proxy: &ScimProxy) -> String {
        let (run, v) = self.run("a", &[]);
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(counts(&v), [3, 0, 0, 0, 1], "{v}");
        let a2 = self.anchor(&format!("uid=u2,{PEOPLE}")).await;
        assert_eq!(v["problems"][0]["problem"], "failure", "{v}");
        assert_eq!(v["problems"][0]["anchor"], a2.as_str(), "{v}");
        let failure = &self.state().await.ledger.failures[&a2];
        assert_eq!((failure.status, failure.count), (Some(400), 1));
        assert!(
            failure.error.contains("this object is refused"),
            "{failure:?}"
        );
        let groups = self.view.all("Groups").await;
        assert!(
            groups
                .iter()
                .all(|g| g["members"].as_array().unwrap().len() == 1),
            "{groups:?}"
        );
        assert!(proxy.requests().iter().any(|r| r.method == "POST"));
        a2
    }
}

/// Finding 3: a create refused as a duplicate (409) must not fail forever. Here the target's
/// filters miss an existing user (its search index lags), so the candidates lookup finds
/// nothing and the create is answered 409; the next cycle matches against a listing
/// instead and takes the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_as_a_duplicate_is_matched_by_a_listing_next() {
    let lab = E2e::ldap(2, "500").await;
    let proxy = behind_proxy(&lab, ProxyRules::default()).await;
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [4, 0, 0, 0, 0], "{v}");
    let u3 = lab
        .view
        .post(
            "Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "u3@example.org",
            }),
        )
        .await;
    proxy.set_rules(ProxyRules {
        hide_from_filters: vec!["u3@example.org".into()],
        ..Default::default()
    });
    lab.slapd().ldapadd(&ldap_user(3)).await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(counts(&v), [0, 0, 0, 0, 1], "{v}");
    let a3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    let failure = lab.state().await.ledger.failures[&a3].clone();
    assert_eq!(failure.status, Some(409), "{failure:?}");

    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(counts(&v), [0, 1, 1, 0, 0], "{v}");
    let ledger = lab.state().await.ledger;
    assert_eq!(ledger.entries[&a3].target_id, u3["id"].as_str().unwrap());
    assert!(ledger.failures.is_empty(), "{:?}", ledger.failures);
    assert_eq!(lab.view.all("Users").await.len(), 3);
    let v = lab.sync("a", &[]);
    assert_eq!(counts(&v), [0, 0, 0, 0, 0], "{v}");
}

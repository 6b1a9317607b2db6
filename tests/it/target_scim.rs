//! The SCIM target (issue 4) against a real scim2-server (a fresh tenant per test), and
//! against a tiny in-test HTTP stub for what scim2-server cannot produce (429, 5xx,
//! malformed JSON, refused connections).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dirsync::config::{Secret, SecretRef, TargetConfig, TargetKind};
use dirsync::log::event::ObjectKind;
use dirsync::target::scim::ScimTarget;
use dirsync::target::{Mapped, MappedGroup, MappedUser, Op, Outcome, RemoteObject, Target};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::lab::{Scim, ScimTenant};

// ---- helpers ----

fn target(t: &ScimTenant) -> ScimTarget {
    ScimTarget::new(t.base_url(), Secret::new(t.token())).unwrap()
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

fn anchor() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn full_user(name: &str) -> MappedUser {
    MappedUser {
        user_name: format!("{name}@example.org").into(),
        display_name: Some(format!("{name} Example").into()),
        given_name: Some(name.to_string().into()),
        family_name: Some("Example".into()),
        email: Some(format!("{name}.mail@example.org").into()),
        title: Some("Engineer".into()),
        department: Some("R&D".into()),
        active: true,
        extra: Default::default(),
    }
}

fn minimal_user(name: &str) -> MappedUser {
    MappedUser {
        user_name: name.to_string().into(),
        active: true,
        ..Default::default()
    }
}

fn group(name: &str, members: &[&str]) -> MappedGroup {
    MappedGroup {
        display_name: name.to_string().into(),
        members: members.iter().map(|s| s.to_string()).collect(),
    }
}

fn create(anchor: &str, m: impl Into<MappedAny>) -> Op {
    Op::Create {
        anchor: anchor.to_string(),
        object: m.into().0,
    }
}

/// An update; `from` is never None here (that writes the anchor: [`update_as`]).
fn update(id: &str, from: Option<Mapped>, to: Mapped, etag: Option<String>) -> Op {
    update_as(&anchor(), id, from, to, etag)
}

fn update_as(anchor: &str, id: &str, from: Option<Mapped>, to: Mapped, etag: Option<String>) -> Op {
    Op::Update {
        anchor: anchor.to_string(),
        target_id: id.to_string(),
        from,
        to,
        etag,
    }
}

struct MappedAny(Mapped);
impl From<MappedUser> for MappedAny {
    fn from(u: MappedUser) -> Self {
        MappedAny(Mapped::User(u))
    }
}
impl From<MappedGroup> for MappedAny {
    fn from(g: MappedGroup) -> Self {
        MappedAny(Mapped::Group(g))
    }
}

/// The target id and etag of an applied outcome; panics on anything else.
#[track_caller]
fn applied(o: &Outcome) -> (String, Option<String>) {
    match o {
        Outcome::Applied { target_id, etag } => (target_id.clone(), etag.clone()),
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// Apply `ops` and require every one applied; their (id, etag).
async fn apply_ok(s: &ScimTarget, ops: &[Op]) -> Vec<(String, Option<String>)> {
    let out = s.apply(ops, later()).await;
    assert_eq!(out.len(), ops.len());
    out.iter().map(applied).collect()
}

/// Raw GET of `BASE/path` (out of band), its JSON.
async fn get(t: &ScimTenant, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{}/{path}", t.base_url()))
        .bearer_auth(t.token())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

/// Raw PATCH (out of band); its status.
async fn patch(t: &ScimTenant, path: &str, ops: Value, if_match: Option<&str>) -> u16 {
    let mut b = reqwest::Client::new()
        .patch(format!("{}/{path}", t.base_url()))
        .bearer_auth(t.token())
        .header("Content-Type", "application/scim+json")
        .body(
            json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": ops,
            })
            .to_string(),
        );
    if let Some(e) = if_match {
        b = b.header("If-Match", e);
    }
    b.send().await.unwrap().status().as_u16()
}

fn by_anchor<'a>(objs: &'a [RemoteObject], a: &str) -> &'a RemoteObject {
    objs.iter()
        .find(|o| o.anchor.as_deref() == Some(a))
        .unwrap_or_else(|| panic!("no object with anchor {a} in {objs:?}"))
}

fn ids(objs: &[RemoteObject]) -> BTreeSet<String> {
    objs.iter().map(|o| o.id.clone()).collect()
}

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

// ---- against scim2-server ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_users_and_group_then_list_them() {
    let t = Scim::tenant().await;
    let s = target(&t);
    s.probe().await.unwrap();
    let (a1, a2, ag) = (anchor(), anchor(), anchor());
    let u1 = full_user("alice");
    let mut u2 = minimal_user("bob");
    u2.active = false;
    let created = apply_ok(&s, &[create(&a1, u1.clone()), create(&a2, u2.clone())]).await;
    let (id1, e1) = created[0].clone();
    let (id2, e2) = created[1].clone();
    assert!(e1.is_some() && e2.is_some(), "{created:?}");
    let g = group("team", &[&id1, &id2]);
    let (gid, ge) = apply_ok(&s, &[create(&ag, g.clone())]).await[0].clone();

    let users = s.list(ObjectKind::User).await.unwrap();
    assert_eq!(users.len(), 2, "{users:?}");
    let r1 = by_anchor(&users, &a1);
    assert_eq!(r1.id, id1);
    assert_eq!(r1.kind, ObjectKind::User);
    assert_eq!(r1.name, "alice@example.org");
    assert_eq!(r1.emails, vec!["alice.mail@example.org".to_string()]);
    assert_eq!(r1.etag, e1);
    assert_eq!(r1.state, Some(Mapped::User(u1)));
    let r2 = by_anchor(&users, &a2);
    assert_eq!(r2.id, id2);
    assert!(r2.emails.is_empty());
    assert_eq!(r2.etag, e2);
    assert_eq!(r2.state, Some(Mapped::User(u2)));

    let groups = s.list(ObjectKind::Group).await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let rg = by_anchor(&groups, &ag);
    assert_eq!((rg.id.as_str(), rg.name.as_str()), (gid.as_str(), "team"));
    assert_eq!(rg.etag, ge);
    assert!(rg.emails.is_empty());
    assert_eq!(rg.state, Some(Mapped::Group(g)));

    // What the server holds is what we sent.
    let raw = get(&t, &format!("Users/{id1}")).await;
    assert_eq!(raw["externalId"], json!(a1));
    assert_eq!(raw[ENTERPRISE]["department"], json!("R&D"));
    assert_eq!(
        raw["emails"],
        json!([{ "value": "alice.mail@example.org", "type": "work", "primary": true }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_by_anchor_name_email_and_group_name() {
    let t = Scim::tenant().await;
    let s = target(&t);
    let (aa, ab, ac, ag, ao) = (anchor(), anchor(), anchor(), anchor(), anchor());
    let alice = MappedUser {
        user_name: "Alice.Smith@Example.org".into(),
        email: Some("alice.smith@example.org".into()),
        ..minimal_user("")
    };
    let bob = MappedUser {
        email: Some("robert@example.org".into()),
        ..minimal_user("bob")
    };
    let ids_: Vec<String> = apply_ok(
        &s,
        &[
            create(&aa, alice.clone()),
            create(&ab, bob.clone()),
            create(&ac, minimal_user("carol")),
            create(&ag, group("Team \"A\" \\ Ops", &[])),
            create(&ao, group("Other", &[])),
        ],
    )
    .await
    .into_iter()
    .map(|(id, _)| id)
    .collect();
    let (alice_id, bob_id, team_id) = (&ids_[0], &ids_[1], &ids_[3]);
    let found = |v: Vec<RemoteObject>| ids(&v);
    let one = |id: &str| BTreeSet::from([id.to_string()]);

    // By anchor alone.
    let c = s
        .candidates(&aa, &Mapped::User(minimal_user("nobody")))
        .await
        .unwrap();
    assert_eq!(found(c.clone()), one(alice_id));
    assert_eq!(c[0].anchor.as_deref(), Some(aa.as_str()));
    assert!(c[0].state.is_some());
    // By userName, case-insensitively as the server compares it.
    let c = s
        .candidates(
            &anchor(),
            &Mapped::User(minimal_user("ALICE.SMITH@EXAMPLE.ORG")),
        )
        .await
        .unwrap();
    assert_eq!(found(c), one(alice_id));
    // By e-mail.
    let by_mail = MappedUser {
        email: Some("ROBERT@example.org".into()),
        ..minimal_user("someone-else")
    };
    let c = s
        .candidates(&anchor(), &Mapped::User(by_mail))
        .await
        .unwrap();
    assert_eq!(found(c), one(bob_id));
    // A userName equal to someone's e-mail.
    let c = s
        .candidates(&anchor(), &Mapped::User(minimal_user("robert@example.org")))
        .await
        .unwrap();
    assert_eq!(found(c), one(bob_id));
    // Matching on every count is still one object.
    let c = s.candidates(&aa, &Mapped::User(alice)).await.unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    // Nothing.
    let nobody = MappedUser {
        email: Some("none@example.org".into()),
        ..minimal_user("nobody")
    };
    let c = s
        .candidates(&anchor(), &Mapped::User(nobody))
        .await
        .unwrap();
    assert!(c.is_empty(), "{c:?}");

    // Groups: by displayName (with quotes and a backslash), by anchor.
    let c = s
        .candidates(&anchor(), &Mapped::Group(group("Team \"A\" \\ Ops", &[])))
        .await
        .unwrap();
    assert_eq!(found(c), one(team_id));
    let c = s
        .candidates(&ag, &Mapped::Group(group("renamed", &[])))
        .await
        .unwrap();
    assert_eq!(found(c), one(team_id));
    let c = s
        .candidates(&anchor(), &Mapped::Group(group("nope", &[])))
        .await
        .unwrap();
    assert!(c.is_empty(), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_sends_only_differences() {
    let t = Scim::tenant().await;
    let s = target(&t);
    let a = anchor();
    let u0 = full_user("dave");
    let (id, e0) = apply_ok(&s, &[create(&a, u0.clone())]).await[0].clone();
    let path = format!("Users/{id}");

    // Out of band: another title, and an attribute dirsync does not manage.
    let oob = json!([
        { "op": "replace", "path": "title", "value": "Changed out of band" },
        { "op": "add", "path": "nickName", "value": "Dee" },
    ]);
    assert_eq!(patch(&t, &path, oob, None).await, 204);

    // displayName changes; title is the same on both sides, so it is not sent.
    let mut u1 = u0.clone();
    u1.display_name = Some("Dave Renamed".into());
    let (_, e1) = apply_ok(
        &s,
        &[update(
            &id,
            Some(Mapped::User(u0.clone())),
            Mapped::User(u1.clone()),
            None,
        )],
    )
    .await[0]
        .clone();
    let raw = get(&t, &path).await;
    assert_eq!(raw["displayName"], json!("Dave Renamed"));
    assert_eq!(raw["title"], json!("Changed out of band"), "untouched");
    assert_eq!(raw["nickName"], json!("Dee"), "untouched");
    assert_eq!(raw["name"]["givenName"], json!("dave"));
    assert!(e1.is_some() && e1 != e0, "{e0:?} -> {e1:?}");
    assert_eq!(raw["meta"]["version"].as_str(), e1.as_deref());

    // Disable, drop the department, with the etag we got.
    let mut u2 = u1.clone();
    u2.active = false;
    u2.department = None;
    let (_, e2) = apply_ok(
        &s,
        &[update(
            &id,
            Some(Mapped::User(u1.clone())),
            Mapped::User(u2.clone()),
            e1.clone(),
        )],
    )
    .await[0]
        .clone();
    let raw = get(&t, &path).await;
    assert_eq!(raw["active"], json!(false));
    assert!(raw[ENTERPRISE]["department"].is_null(), "{raw}");
    assert_eq!(raw["nickName"], json!("Dee"));
    assert_ne!(e2, e1);

    // Rename the userName and the e-mail.
    let mut u3 = u2.clone();
    u3.user_name = "david@example.org".into();
    u3.email = Some("david@example.org".into());
    let (_, e3) = apply_ok(
        &s,
        &[update(
            &id,
            Some(Mapped::User(u2.clone())),
            Mapped::User(u3.clone()),
            e2.clone(),
        )],
    )
    .await[0]
        .clone();
    let raw = get(&t, &path).await;
    assert_eq!(raw["userName"], json!("david@example.org"));
    assert_eq!(raw["emails"][0]["value"], json!("david@example.org"));
    let c = s
        .candidates(&anchor(), &Mapped::User(minimal_user("David@example.org")))
        .await
        .unwrap();
    assert_eq!(ids(&c), BTreeSet::from([id.clone()]));

    // No difference: nothing is sent, the etag stays.
    let out = apply_ok(
        &s,
        &[update(
            &id,
            Some(Mapped::User(u3.clone())),
            Mapped::User(u3.clone()),
            e3.clone(),
        )],
    )
    .await;
    assert_eq!(out[0], (id.clone(), e3.clone()));
    assert_eq!(
        get(&t, &path).await["meta"]["version"].as_str(),
        e3.as_deref()
    );

    // Without `from`: every attribute of `to` is written, absent ones removed.
    let bare = MappedUser {
        title: Some("Only title".into()),
        ..minimal_user("david@example.org")
    };
    apply_ok(
        &s,
        &[update_as(&a, &id, None, Mapped::User(bare.clone()), None)],
    )
    .await;
    let listed = s.list(ObjectKind::User).await.unwrap();
    // The listing holds every attribute a mapping could set, ours or not (reconcile
    // compares only the mapping's).
    let mut held = bare.clone();
    held.extra.insert("nickName".into(), "Dee".into());
    assert_eq!(listed[0].state, Some(Mapped::User(held)));
    assert_eq!(listed[0].anchor.as_deref(), Some(a.as_str()));
    let raw = get(&t, &path).await;
    assert_eq!(raw["nickName"], json!("Dee"), "not ours, kept");

    // An update of an object that is gone: a per-op failure.
    let out = s
        .apply(
            &[update("no-such-id", None, Mapped::User(u3), None)],
            later(),
        )
        .await;
    match &out[0] {
        Outcome::Failed(e) => assert_eq!((e.status, e.fatal), (Some(404), false), "{e}"),
        o => panic!("{o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_add_remove_and_replace() {
    let t = Scim::tenant().await;
    let s = target(&t);
    let made = apply_ok(
        &s,
        &[
            create(&anchor(), minimal_user("m1")),
            create(&anchor(), minimal_user("m2")),
            create(&anchor(), minimal_user("m3")),
        ],
    )
    .await;
    let (m1, m2, m3) = (&made[0].0, &made[1].0, &made[2].0);
    let g0 = group("crew", &[m1, m2]);
    let ga = anchor();
    let (gid, ge) = apply_ok(&s, &[create(&ga, g0.clone())]).await[0].clone();
    let members = |v: &Value| -> BTreeSet<String> {
        v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["value"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let path = format!("Groups/{gid}");

    let g1 = group("crew", &[m2, m3]);
    let (_, ge1) = apply_ok(
        &s,
        &[update(
            &gid,
            Some(Mapped::Group(g0)),
            Mapped::Group(g1.clone()),
            ge,
        )],
    )
    .await[0]
        .clone();
    assert_eq!(members(&get(&t, &path).await), g1.members);

    // Without `from`: name and the whole list replaced.
    let g2 = group("crew renamed", &[m1]);
    apply_ok(
        &s,
        &[update_as(&ga, &gid, None, Mapped::Group(g2.clone()), ge1)],
    )
    .await;
    let raw = get(&t, &path).await;
    assert_eq!(members(&raw), g2.members);
    assert_eq!(raw["displayName"], json!("crew renamed"));

    // Everyone out.
    let g3 = group("crew renamed", &[]);
    apply_ok(
        &s,
        &[update(
            &gid,
            Some(Mapped::Group(g2)),
            Mapped::Group(g3.clone()),
            None,
        )],
    )
    .await;
    let listed = s.list(ObjectKind::Group).await.unwrap();
    assert_eq!(listed[0].state, Some(Mapped::Group(g3)));
    assert_eq!(listed[0].anchor.as_deref(), Some(ga.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_without_from_writes_the_anchor() {
    // Objects made in the cloud without an anchor, found by name (a soft match): the
    // first update, without `from`, writes everything and the anchor.
    let t = Scim::tenant().await;
    let s = target(&t);
    let client = reqwest::Client::new();
    for (path, body) in [
        (
            "Users",
            json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                          "userName": "cloud@example.org", "title": "Cloud" }),
        ),
        (
            "Groups",
            json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                           "displayName": "cloud group" }),
        ),
    ] {
        let r = client
            .post(format!("{}/{path}", t.base_url()))
            .bearer_auth(t.token())
            .header("Content-Type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let (au, ag) = (anchor(), anchor());
    let user = full_user("cloud");
    let found = s
        .candidates(&au, &Mapped::User(user.clone()))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].anchor, None);
    let grp = group("cloud group", &[&found[0].id]);
    let gfound = s
        .candidates(&ag, &Mapped::Group(grp.clone()))
        .await
        .unwrap();
    assert_eq!((gfound.len(), gfound[0].anchor.as_ref()), (1, None));

    apply_ok(
        &s,
        &[
            update_as(
                &au,
                &found[0].id,
                None,
                Mapped::User(user.clone()),
                found[0].etag.clone(),
            ),
            update_as(&ag, &gfound[0].id, None, Mapped::Group(grp.clone()), None),
        ],
    )
    .await;
    let u = s
        .candidates(&au, &Mapped::User(minimal_user("x")))
        .await
        .unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].anchor.as_deref(), Some(au.as_str()));
    assert_eq!(u[0].state, Some(Mapped::User(user)));
    let g = s.list(ObjectKind::Group).await.unwrap();
    assert_eq!(g[0].anchor.as_deref(), Some(ag.as_str()));
    assert_eq!(g[0].state, Some(Mapped::Group(grp)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_etag_is_refreshed_once() {
    let t = Scim::tenant().await;
    let s = target(&t);
    let u0 = full_user("erin");
    let (id, e0) = apply_ok(&s, &[create(&anchor(), u0.clone())]).await[0].clone();
    let e0 = e0.unwrap();
    let path = format!("Users/{id}");
    // Someone else changes it: e0 is now stale (the server says 412 to it).
    let oob = json!([{ "op": "replace", "path": "title", "value": "Theirs" }]);
    assert_eq!(patch(&t, &path, oob.clone(), None).await, 204);
    assert_eq!(patch(&t, &path, oob, Some(&e0)).await, 412);

    let mut u1 = u0.clone();
    u1.display_name = Some("Erin Ours".into());
    let (_, e1) = apply_ok(
        &s,
        &[update(
            &id,
            Some(Mapped::User(u0)),
            Mapped::User(u1),
            Some(e0.clone()),
        )],
    )
    .await[0]
        .clone();
    let raw = get(&t, &path).await;
    assert_eq!(raw["displayName"], json!("Erin Ours"));
    assert_eq!(raw["title"], json!("Theirs"));
    assert_eq!(raw["meta"]["version"].as_str(), e1.as_deref());
    assert_ne!(e1.as_deref(), Some(e0.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_delete_again() {
    let t = Scim::tenant().await;
    let s = target(&t);
    let made = apply_ok(
        &s,
        &[
            create(&anchor(), minimal_user("frank")),
            create(&anchor(), group("g", &[])),
        ],
    )
    .await;
    let del = [
        Op::Delete {
            anchor: anchor(),
            kind: ObjectKind::User,
            target_id: made[0].0.clone(),
        },
        Op::Delete {
            anchor: anchor(),
            kind: ObjectKind::Group,
            target_id: made[1].0.clone(),
        },
    ];
    for _ in 0..2 {
        let out = apply_ok(&s, &del).await;
        assert_eq!(out[0], (made[0].0.clone(), None));
        assert_eq!(out[1], (made[1].0.clone(), None));
        assert!(s.list(ObjectKind::User).await.unwrap().is_empty());
        assert!(s.list(ObjectKind::Group).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_follows_pages_past_1000() {
    let t = Scim::tenant().await;
    let s = target(&t);
    let anchors: Vec<String> = (0..1050).map(|_| anchor()).collect();
    let ops: Vec<Op> = anchors
        .iter()
        .enumerate()
        .map(|(i, a)| create(a, minimal_user(&format!("user{i:04}"))))
        .collect();
    let made = apply_ok(&s, &ops).await;
    // One page holds at most 1000: the server caps it.
    let page = get(&t, "Users?count=5000").await;
    assert_eq!(page["totalResults"], json!(1050));
    assert_eq!(page["Resources"].as_array().unwrap().len(), 1000);

    let users = s.list(ObjectKind::User).await.unwrap();
    assert_eq!(users.len(), 1050);
    let listed: BTreeSet<String> = users.iter().filter_map(|u| u.anchor.clone()).collect();
    assert_eq!(listed, anchors.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(
        ids(&users),
        made.into_iter().map(|(id, _)| id).collect::<BTreeSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_fatal_and_stops_the_chunk() {
    let t = Scim::tenant().await;
    let bad = ScimTarget::new(t.base_url(), Secret::new("wrong-token")).unwrap();
    let e = bad.probe().await.unwrap_err();
    assert_eq!((e.status, e.fatal), (Some(401), true), "{e}");
    assert!(!e.message.contains("wrong-token"), "{e}");
    assert!(bad.list(ObjectKind::User).await.unwrap_err().fatal);

    // One at a time: the first fails fatally, the rest are never sent.
    let ops: Vec<Op> = (0..3)
        .map(|i| create(&anchor(), minimal_user(&format!("x{i}"))))
        .collect();
    let out = bad.with_concurrency(1).apply(&ops, later()).await;
    match &out[0] {
        Outcome::Failed(e) => assert!(e.fatal && e.status == Some(401), "{e}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(out[1..], [Outcome::NotAttempted, Outcome::NotAttempted]);

    // Eight in flight: those already sent fail, nothing after them is sent.
    let bad = ScimTarget::new(t.base_url(), Secret::new("wrong-token")).unwrap();
    let ops: Vec<Op> = (0..20)
        .map(|i| create(&anchor(), minimal_user(&format!("y{i}"))))
        .collect();
    let out = bad.apply(&ops, later()).await;
    assert_eq!(out.len(), 20);
    assert!(matches!(&out[0], Outcome::Failed(e) if e.fatal));
    for o in &out {
        assert!(
            matches!(o, Outcome::NotAttempted) || matches!(o, Outcome::Failed(e) if e.fatal),
            "{o:?}"
        );
    }
    assert!(
        out[8..].iter().all(|o| *o == Outcome::NotAttempted),
        "{out:?}"
    );
    assert!(target(&t).list(ObjectKind::User).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_deadline_sends_nothing() {
    let t = Scim::tenant().await;
    let s = target(&t);
    let ops = [
        create(&anchor(), minimal_user("late1")),
        create(&anchor(), group("late", &[])),
        update("some-id", None, Mapped::User(minimal_user("late2")), None),
        Op::Delete {
            anchor: anchor(),
            kind: ObjectKind::User,
            target_id: "some-id".into(),
        },
    ];
    let out = s.apply(&ops, Instant::now()).await;
    assert_eq!(out, vec![Outcome::NotAttempted; 4]);
    assert!(s.list(ObjectKind::User).await.unwrap().is_empty());
    assert!(s.list(ObjectKind::Group).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_user_name_fails_alone() {
    let t = Scim::tenant().await;
    let s = target(&t);
    apply_ok(&s, &[create(&anchor(), minimal_user("dup@example.org"))]).await;
    let out = s
        .apply(
            &[
                create(&anchor(), minimal_user("first@example.org")),
                create(&anchor(), minimal_user("DUP@example.org")),
                create(&anchor(), group("grp", &[])),
            ],
            later(),
        )
        .await;
    applied(&out[0]);
    match &out[1] {
        Outcome::Failed(e) => {
            assert_eq!((e.status, e.fatal), (Some(409), false), "{e}");
            assert!(e.message.contains("uniqueness"), "{e}");
        }
        o => panic!("{o:?}"),
    }
    applied(&out[2]);
    assert_eq!(s.list(ObjectKind::User).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_config_resolves_the_token_and_hides_it() {
    let t = Scim::tenant().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{}\n", t.token())).unwrap();
    let cfg = TargetConfig {
        kind: TargetKind::Scim,
        url: t.base_url().to_string(),
        token: Some(SecretRef::File(file)),
        graph: None,
        concurrency: Some(2),
    };
    let s = ScimTarget::from_config(&cfg).unwrap();
    s.probe().await.unwrap();
    assert!(!format!("{s:?}").contains(t.token()));

    let missing = TargetConfig {
        token: Some(SecretRef::Env("DIRSYNC_TEST_NO_SUCH_TOKEN_VAR".into())),
        ..cfg
    };
    let e = ScimTarget::from_config(&missing).unwrap_err().to_string();
    assert!(e.contains("target.token"), "{e}");
}

// ---- against a stub, for what scim2-server never does ----

/// A canned HTTP response.
fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> String {
    let mut s = format!("HTTP/1.1 {status} Canned\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!(
        "Content-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s
}

/// An HTTP server answering each request with the next canned response (the last one
/// repeats), one request per connection; it records each request's head.
struct Stub {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Stub {
    async fn start(responses: Vec<String>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let mut queue: VecDeque<String> = responses.into();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(p + 4);
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock().unwrap().push(head);
                let answer = if queue.len() > 1 {
                    queue.pop_front().unwrap()
                } else {
                    queue.front().cloned().unwrap_or_else(|| resp(500, &[], ""))
                };
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        Stub {
            base: format!("http://127.0.0.1:{port}/v2"),
            requests,
        }
    }

    fn target(&self) -> ScimTarget {
        ScimTarget::new(&self.base, Secret::new("stub-token"))
            .unwrap()
            .with_retries(3, Duration::from_millis(20))
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

const CREATED: &str = r#"{"id":"new-id","meta":{"version":"W/\"5\""}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_429_waits_for_retry_after() {
    let stub = Stub::start(vec![
        resp(429, &[("Retry-After", "1")], r#"{"detail":"slow down"}"#),
        resp(201, &[], CREATED),
    ])
    .await;
    let start = Instant::now();
    let out = stub
        .target()
        .apply(&[create(&anchor(), minimal_user("u"))], later())
        .await;
    assert_eq!(
        out,
        vec![Outcome::Applied {
            target_id: "new-id".into(),
            etag: Some("W/\"5\"".into())
        }]
    );
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[1].starts_with("POST /v2/Users "), "{}", reqs[1]);
    assert!(
        reqs[1].contains("authorization: Bearer stub-token"),
        "{}",
        reqs[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_5xx_is_retried_then_fails() {
    // A create that failed with 503 may have been done: the target looks it up by its
    // anchor, finds nothing, and creates it again.
    let empty = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":0,"Resources":[]}"#;
    let stub = Stub::start(vec![
        resp(503, &[], ""),
        resp(200, &[], empty),
        resp(201, &[("ETag", "W/\"9\"")], CREATED),
    ])
    .await;
    let out = stub
        .target()
        .apply(&[create(&anchor(), minimal_user("u"))], later())
        .await;
    assert_eq!(applied(&out[0]), ("new-id".into(), Some("W/\"9\"".into())));
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(
        reqs[0].starts_with("POST") && reqs[2].starts_with("POST"),
        "{reqs:?}"
    );
    assert!(
        reqs[1].starts_with("GET") && reqs[1].contains("externalId"),
        "{reqs:?}"
    );

    // The lookup finds it: it was created after all, and is not created twice.
    let found = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":1,"Resources":[{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"new-id","userName":"u","meta":{"version":"W/\"5\""}}]}"#;
    let stub = Stub::start(vec![resp(502, &[], ""), resp(200, &[], found)]).await;
    let out = stub
        .target()
        .apply(&[create(&anchor(), minimal_user("u"))], later())
        .await;
    assert_eq!(applied(&out[0]).0, "new-id");
    let posts = stub
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "not created twice");

    let stub = Stub::start(vec![resp(500, &[], r#"{"detail":"boom"}"#)]).await;
    let out = stub
        .target()
        .apply(&[create(&anchor(), minimal_user("u"))], later())
        .await;
    match &out[0] {
        Outcome::Failed(e) => {
            assert_eq!((e.status, e.fatal), (Some(500), false));
            assert!(e.message.contains("boom"), "{e}");
        }
        o => panic!("{o:?}"),
    }
    let posts = stub
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    assert_eq!(posts, 3, "three tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_no_retry_after_the_deadline() {
    let stub = Stub::start(vec![
        resp(429, &[("Retry-After", "30")], ""),
        resp(201, &[], CREATED),
    ])
    .await;
    let start = Instant::now();
    let out = stub
        .target()
        .apply(
            &[create(&anchor(), minimal_user("u"))],
            Instant::now() + Duration::from_secs(3),
        )
        .await;
    match &out[0] {
        Outcome::Failed(e) => assert_eq!(e.status, Some(429), "{e}"),
        o => panic!("{o:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_malformed_json_is_a_failure_not_a_panic() {
    let stub = Stub::start(vec![resp(201, &[], "{\"id\": \"half")]).await;
    let s = stub.target();
    let out = s
        .apply(&[create(&anchor(), minimal_user("u"))], later())
        .await;
    match &out[0] {
        Outcome::Failed(e) => assert!(e.message.contains("malformed JSON"), "{e}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(stub.requests().len(), 1, "not retried");
    let e = s.list(ObjectKind::User).await.unwrap_err();
    assert!(e.message.contains("malformed JSON"), "{e}");
    assert!(!e.fatal);

    // Well-formed JSON of the wrong shape.
    let stub = Stub::start(vec![resp(
        200,
        &[],
        r#"{"totalResults":1,"Resources":[{"userName":"no id"}]}"#,
    )])
    .await;
    let e = stub.target().list(ObjectKind::User).await.unwrap_err();
    assert!(e.message.contains("without an id"), "{e}");
    let stub = Stub::start(vec![resp(201, &[], r#"{"meta":{}}"#)]).await;
    let out = stub
        .target()
        .apply(&[create(&anchor(), group("g", &[]))], later())
        .await;
    assert!(
        matches!(&out[0], Outcome::Failed(e) if e.message.contains("no id")),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_an_update_without_differences_sends_nothing() {
    let stub = Stub::start(vec![]).await;
    let u = Mapped::User(full_user("same"));
    let out = stub
        .target()
        .apply(
            &[update("id-7", Some(u.clone()), u, Some("W/\"3\"".into()))],
            later(),
        )
        .await;
    assert_eq!(applied(&out[0]), ("id-7".into(), Some("W/\"3\"".into())));
    assert!(stub.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_if_match_and_a_second_412() {
    // The configuration (ETags advertised), 412, the re-read, 412 again: a per-op failure
    // after one refresh.
    let stub = Stub::start(vec![
        resp(200, &[], r#"{"etag":{"supported":true}}"#),
        resp(412, &[], r#"{"detail":"changed"}"#),
        resp(
            200,
            &[("ETag", "W/\"8\"")],
            r#"{"id":"id-7","userName":"x"}"#,
        ),
        resp(412, &[], r#"{"detail":"changed again"}"#),
    ])
    .await;
    let from = Mapped::User(minimal_user("x"));
    let to = Mapped::User(minimal_user("y"));
    let out = stub
        .target()
        .apply(
            &[update("id-7", Some(from), to, Some("W/\"3\"".into()))],
            later(),
        )
        .await;
    match &out[0] {
        Outcome::Failed(e) => {
            assert_eq!(e.status, Some(412));
            assert!(e.message.contains("changed again"), "{e}");
        }
        o => panic!("{o:?}"),
    }
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    assert!(reqs[0].starts_with("GET /v2/ServiceProviderConfig "));
    assert!(reqs[1].starts_with("PATCH /v2/Users/id-7 ") && reqs[1].contains("W/\"3\""));
    assert!(reqs[2].starts_with("GET /v2/Users/id-7 "));
    assert!(reqs[3].starts_with("PATCH /v2/Users/id-7 ") && reqs[3].contains("W/\"8\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_connection_refused_is_retried_then_fails() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = ScimTarget::new(&format!("http://127.0.0.1:{port}/v2"), Secret::new("tok"))
        .unwrap()
        .with_retries(2, Duration::from_millis(10));
    let out = s
        .apply(
            &[Op::Delete {
                anchor: anchor(),
                kind: ObjectKind::User,
                target_id: "x".into(),
            }],
            later(),
        )
        .await;
    match &out[0] {
        Outcome::Failed(e) => {
            assert_eq!((e.status, e.fatal), (None, false));
            assert!(e.message.contains("delete user x"), "{e}");
        }
        o => panic!("{o:?}"),
    }
    assert!(s.probe().await.is_err());
}

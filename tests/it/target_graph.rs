//! The Graph target against the fake Graph server (`lab::graph`): tokens, creates, paging,
//! matching queries, minimal updates, members, `$batch` limits, throttling, retries,
//! revoked credentials and the deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dirsync::config::{GraphAuth, Secret, SecretRef, TargetConfig, TargetKind};
use dirsync::log::event::ObjectKind;
use dirsync::target::graph::{immutable_id, GraphOptions, GraphTarget};
use dirsync::target::{Mapped, MappedGroup, MappedUser, Op, Outcome, Target};
use serde_json::{json, Value};

use crate::lab::graph::{Fault, GraphFakeOptions};
use crate::lab::GraphFake;

fn fast() -> GraphOptions {
    GraphOptions {
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..GraphOptions::default()
    }
}

fn client_with(fake: &GraphFake, opts: GraphOptions) -> GraphTarget {
    GraphTarget::new(
        &fake.base_url(),
        &fake.token_url(),
        fake.client_id(),
        Secret::new(fake.client_secret()),
        opts,
    )
    .unwrap()
}

fn client(fake: &GraphFake) -> GraphTarget {
    client_with(fake, fast())
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn anchor() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn user(name: &str) -> MappedUser {
    MappedUser {
        user_name: format!("{name}@test.lan").into(),
        display_name: Some(format!("User {name}").into()),
        given_name: Some("Given".into()),
        family_name: Some(name.into()),
        email: Some(format!("{name}@mail.test.lan").into()),
        title: None,
        department: Some("Ops".into()),
        active: true,
        extra: Default::default(),
    }
}

fn create_user(a: &str, u: &MappedUser) -> Op {
    Op::Create {
        anchor: a.to_string(),
        object: Mapped::User(u.clone()),
    }
}

fn create_group(a: &str, name: &str, members: &[String]) -> Op {
    Op::Create {
        anchor: a.to_string(),
        object: Mapped::Group(MappedGroup {
            display_name: name.into(),
            members: members.iter().cloned().collect(),
        }),
    }
}

#[track_caller]
fn applied(o: &Outcome) -> String {
    match o {
        Outcome::Applied { target_id, .. } => target_id.clone(),
        other => panic!("not applied: {other:?}"),
    }
}

/// Create `n` users named `{prefix}{i}`; their (anchor, target id).
async fn seed_users(t: &GraphTarget, prefix: &str, n: usize) -> Vec<(String, String)> {
    let anchors: Vec<String> = (0..n).map(|_| anchor()).collect();
    let ops: Vec<Op> = anchors
        .iter()
        .enumerate()
        .map(|(i, a)| create_user(a, &user(&format!("{prefix}{i}"))))
        .collect();
    let out = t.apply(&ops, later()).await;
    assert_eq!(out.len(), n);
    anchors.into_iter().zip(out.iter().map(applied)).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_cached_and_renewed_before_it_expires() {
    let fake = GraphFake::start_with(GraphFakeOptions {
        token_lifetime: Duration::from_secs(2),
        ..Default::default()
    });
    let t = client(&fake);
    t.probe().await.unwrap();
    t.list(ObjectKind::User).await.unwrap();
    t.list(ObjectKind::Group).await.unwrap();
    seed_users(&t, "tok", 3).await;
    assert_eq!(fake.token_requests(), 1, "one token for many calls");

    // Past the renewal point (4/5 of the lifetime) but before the expiry: renewed early.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    t.probe().await.unwrap();
    assert_eq!(fake.token_requests(), 2, "not renewed before expiry");
    // Past the expiry of that one: a new token is fetched before the request, so Graph
    // never sees an expired one.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    t.probe().await.unwrap();
    assert_eq!(fake.token_requests(), 3);
    assert_eq!(fake.unauthorized(), 0, "an expired token was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_config_reads_the_secret_and_never_shows_it() {
    let fake = GraphFake::start();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", fake.client_secret())).unwrap();
    let cfg = TargetConfig {
        kind: TargetKind::Graph,
        url: fake.base_url(),
        token: None,
        graph: Some(GraphAuth {
            tenant_id: fake.tenant_id().into(),
            client_id: fake.client_id().into(),
            client_secret: SecretRef::File(secret_file),
            token_url: Some(fake.token_url()),
        }),
        concurrency: None,
    };
    let t = GraphTarget::from_config(&cfg).unwrap();
    assert!(!format!("{t:?}").contains(fake.client_secret()));
    t.probe().await.unwrap();

    // A wrong secret: the token endpoint refuses it, fatally, and says nothing secret.
    let wrong = GraphTarget::new(
        &fake.base_url(),
        &fake.token_url(),
        fake.client_id(),
        Secret::new("wrong-secret-value"),
        fast(),
    )
    .unwrap();
    let e = wrong.probe().await.unwrap_err();
    assert!(e.fatal, "{e:?}");
    assert!(e.message.contains("invalid_client"), "{e}");
    assert!(!e.message.contains("wrong-secret-value"));

    let mut no_auth = cfg.clone();
    no_auth.graph = None;
    assert!(GraphTarget::from_config(&no_auth).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_users_and_groups_and_lists_them_across_pages() {
    let fake = GraphFake::start_with(GraphFakeOptions {
        page_size: 5,
        ..Default::default()
    });
    let t = client(&fake);
    let users = seed_users(&t, "page", 27).await;

    // The immutable id is AD Connect's form of the anchor.
    let (a0, id0) = &users[0];
    let stored = fake.user_by_upn("page0@test.lan").unwrap();
    assert_eq!(stored["id"], id0.as_str());
    assert_eq!(
        stored["onPremisesImmutableId"],
        immutable_id(a0).unwrap().as_str()
    );
    assert_eq!(stored["mailNickname"], "page0");
    assert_eq!(stored["displayName"], "User page0");
    assert_eq!(stored["accountEnabled"], true);

    let ids: Vec<String> = users.iter().map(|(_, id)| id.clone()).collect();
    let (ga, gb) = (anchor(), anchor());
    let out = t
        .apply(
            &[
                create_group(&ga, "Small team", &ids[..7]),
                // More members than Graph expands (20): listing must read them all.
                create_group(&gb, "Everyone", &ids),
            ],
            later(),
        )
        .await;
    let (small, everyone) = (applied(&out[0]), applied(&out[1]));
    let g = fake.group_by_name("Everyone").unwrap();
    assert_eq!(g["members"].as_array().unwrap().len(), 27);
    assert_eq!(g["securityEnabled"], true);
    assert_eq!(g["mailEnabled"], false);
    assert_eq!(g[&fake.anchor_attr()], gb.as_str());

    let listed = t.list(ObjectKind::User).await.unwrap();
    assert_eq!(listed.len(), 27);
    for (a, id) in &users {
        let r = listed.iter().find(|r| &r.id == id).unwrap();
        assert_eq!(
            r.anchor.as_deref(),
            Some(a.as_str()),
            "immutable id round trip"
        );
        assert_eq!(r.kind, ObjectKind::User);
    }
    let r0 = listed.iter().find(|r| &r.id == id0).unwrap();
    assert_eq!(r0.name, "page0@test.lan");
    assert_eq!(r0.emails, vec!["page0@mail.test.lan".to_string()]);
    assert_eq!(r0.state, Some(Mapped::User(user("page0"))));
    let user_pages = fake
        .requests()
        .iter()
        .filter(|l| l.method == "GET" && l.url.starts_with("/users?"))
        .count();
    assert_eq!(user_pages, 6, "27 users in pages of 5");

    let groups = t.list(ObjectKind::Group).await.unwrap();
    assert_eq!(groups.len(), 2);
    for (id, a, n) in [(&small, &ga, 7), (&everyone, &gb, 27)] {
        let g = groups.iter().find(|g| &g.id == id).unwrap();
        assert_eq!(g.anchor.as_deref(), Some(a.as_str()));
        match &g.state {
            Some(Mapped::Group(s)) => assert_eq!(s.members.len(), n, "{}", g.name),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_by_immutable_id_upn_mail_and_group_name() {
    let fake = GraphFake::start();
    let t = client(&fake);
    let a = anchor();
    let by_anchor = fake.add_user(json!({"userPrincipalName": "renamed@test.lan",
        "accountEnabled": true, "onPremisesImmutableId": immutable_id(&a).unwrap()}));
    let by_upn =
        fake.add_user(json!({"userPrincipalName": "jo.o'neil@test.lan", "accountEnabled": true}));
    let by_mail = fake.add_user(json!({"userPrincipalName": "other@test.lan",
        "mail": "jo@mail.test.lan", "accountEnabled": true}));
    let _unrelated =
        fake.add_user(json!({"userPrincipalName": "x@test.lan", "mail": "x@mail.test.lan"}));
    let wanted = MappedUser {
        user_name: "jo.o'neil@test.lan".into(),
        email: Some("jo@mail.test.lan".into()),
        active: true,
        ..Default::default()
    };
    let found = t.candidates(&a, &Mapped::User(wanted)).await.unwrap();
    let ids: BTreeSet<String> = found.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, set(&[&by_anchor, &by_upn, &by_mail]));
    let r = found.iter().find(|r| r.id == by_anchor).unwrap();
    assert_eq!(r.anchor.as_deref(), Some(a.as_str()));
    assert_eq!(found.iter().find(|r| r.id == by_upn).unwrap().anchor, None);

    let ga = anchor();
    let attr = fake.anchor_attr();
    let g_anchor = fake.add_group(
        json!({"displayName": "Renamed", attr.clone(): ga}),
        &[&by_upn],
    );
    let g_name = fake.add_group(json!({"displayName": "Bob's team"}), &[]);
    let _other = fake.add_group(json!({"displayName": "Other"}), &[]);
    let found = t
        .candidates(
            &ga,
            &Mapped::Group(MappedGroup {
                display_name: "Bob's team".into(),
                members: BTreeSet::new(),
            }),
        )
        .await
        .unwrap();
    let ids: BTreeSet<String> = found.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, set(&[&g_anchor, &g_name]));
    let g = found.iter().find(|r| r.id == g_anchor).unwrap();
    assert_eq!(g.anchor.as_deref(), Some(ga.as_str()));
    assert_eq!(
        g.state,
        Some(Mapped::Group(MappedGroup {
            display_name: "Renamed".into(),
            members: set(&[&by_upn]),
        }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_send_only_what_differs() {
    let fake = GraphFake::start();
    let t = client(&fake);
    let users = seed_users(&t, "upd", 1).await;
    let (a, id) = &users[0];
    // Out of band: someone sets the job title in Entra. We do not manage a difference
    // there, so it must survive our update.
    fake.set_user_attr(id, "jobTitle", json!("Set in the cloud"));

    let from = user("upd0");
    let mut to = from.clone();
    to.department = Some("Sales".into());
    to.active = false;
    let update = |from: Option<&MappedUser>, to: &MappedUser| Op::Update {
        anchor: a.clone(),
        target_id: id.clone(),
        from: from.cloned().map(Mapped::User),
        to: Mapped::User(to.clone()),
        etag: None,
    };
    let before = fake.requests().len();
    let out = t.apply(&[update(Some(&from), &to)], later()).await;
    assert_eq!(applied(&out[0]), *id);
    let sent: Vec<_> = fake.requests()[before..].to_vec();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "PATCH");
    assert_eq!(
        sent[0].body,
        json!({"department": "Sales", "accountEnabled": false})
    );
    let u = fake.user_by_upn("upd0@test.lan").unwrap();
    assert_eq!(u["jobTitle"], "Set in the cloud");
    assert_eq!(u["department"], "Sales");

    // Nothing differs: nothing is sent.
    let before = fake.requests().len();
    let out = t.apply(&[update(Some(&to), &to)], later()).await;
    assert_eq!(applied(&out[0]), *id);
    assert_eq!(fake.requests().len(), before);

    // Unknown `from`: every attribute is written (the cloud title is cleared).
    let out = t.apply(&[update(None, &to)], later()).await;
    applied(&out[0]);
    let u = fake.user_by_upn("upd0@test.lan").unwrap();
    assert!(u.get("jobTitle").is_none(), "{u}");
    assert_eq!(
        u["onPremisesImmutableId"],
        immutable_id(a).unwrap().as_str()
    );

    // A rename of a group is a PATCH of displayName only.
    let ga = anchor();
    let gid = applied(
        &t.apply(&[create_group(&ga, "Old name", &[])], later())
            .await[0],
    );
    let before = fake.requests().len();
    let g_from = MappedGroup {
        display_name: "Old name".into(),
        members: BTreeSet::new(),
    };
    let g_to = MappedGroup {
        display_name: "New name".into(),
        ..g_from.clone()
    };
    let out = t
        .apply(
            &[Op::Update {
                anchor: ga,
                target_id: gid.clone(),
                from: Some(Mapped::Group(g_from)),
                to: Mapped::Group(g_to),
                etag: None,
            }],
            later(),
        )
        .await;
    applied(&out[0]);
    let sent = fake.requests()[before..].to_vec();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body, json!({"displayName": "New name"}));
    assert!(fake.group_by_name("New name").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_with_refs_and_deletes_are_idempotent() {
    let fake = GraphFake::start();
    let t = client(&fake);
    let users = seed_users(&t, "mem", 4).await;
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| users[i].1.clone());
    let ga = anchor();
    let gid = applied(
        &t.apply(
            &[create_group(&ga, "Members", &[a.clone(), b.clone()])],
            later(),
        )
        .await[0],
    );
    // `d` is already a member in the cloud though our ledger does not know it: adding it
    // again is answered 400 "already exist", which is success.
    let out = t
        .apply(
            &[Op::Update {
                anchor: ga.clone(),
                target_id: gid.clone(),
                from: Some(Mapped::Group(MappedGroup {
                    display_name: "Members".into(),
                    members: set(&[&a, &b]),
                })),
                to: Mapped::Group(MappedGroup {
                    display_name: "Members".into(),
                    members: set(&[&b, &c]),
                }),
                etag: None,
            }],
            later(),
        )
        .await;
    applied(&out[0]);
    let g = fake.group_by_name("Members").unwrap();
    let members: BTreeSet<String> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(members, set(&[&b, &c]));
    let refs: Vec<String> = fake
        .requests()
        .iter()
        .filter(|l| l.url.ends_with("/$ref"))
        .map(|l| format!("{} {}", l.method, l.url))
        .collect();
    assert_eq!(
        refs,
        [
            format!("POST /groups/{gid}/members/$ref"),
            format!("POST /groups/{gid}/members/$ref"),
            format!("POST /groups/{gid}/members/$ref"),
            format!("DELETE /groups/{gid}/members/{a}/$ref"),
        ]
    );

    // Stale ledger: add an existing member, remove a non-member. Both count as done.
    let out = t
        .apply(
            &[Op::Update {
                anchor: ga.clone(),
                target_id: gid.clone(),
                from: Some(Mapped::Group(MappedGroup {
                    display_name: "Members".into(),
                    members: set(&[&d]),
                })),
                to: Mapped::Group(MappedGroup {
                    display_name: "Members".into(),
                    members: set(&[&b]),
                }),
                etag: None,
            }],
            later(),
        )
        .await;
    applied(&out[0]);
    let statuses: Vec<u16> = fake
        .requests()
        .iter()
        .rev()
        .take(2)
        .map(|l| l.status)
        .collect();
    assert!(
        statuses.contains(&400) && statuses.contains(&404),
        "{statuses:?}"
    );

    // Deleting a user takes it out of the group; deleting it again (404) is Applied.
    let del = Op::Delete {
        anchor: users[1].0.clone(),
        kind: ObjectKind::User,
        target_id: b.clone(),
    };
    let out = t.apply(&[del.clone(), del], later()).await;
    applied(&out[0]);
    applied(&out[1]);
    assert!(fake.user_by_upn("mem1@test.lan").is_none());
    assert_eq!(
        fake.group_by_name("Members").unwrap()["members"],
        json!([c])
    );
    let out = t
        .apply(
            &[Op::Delete {
                anchor: ga,
                kind: ObjectKind::Group,
                target_id: gid,
            }],
            later(),
        )
        .await;
    applied(&out[0]);
    assert!(fake.groups().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_at_most_twenty_requests() {
    let fake = GraphFake::start();
    let t = client(&fake);
    seed_users(&t, "batch", 45).await;
    let batches = fake.batches();
    assert!(batches.len() >= 3, "{batches:?}");
    assert_eq!(fake.max_batch(), 20);
    assert!(batches.iter().all(|b| b.status == 200));
    assert_eq!(fake.users().len(), 45);
    assert!(fake.requests().iter().all(|l| l.in_batch));
}

/// Every 429 (at `t`, Retry-After `r`) is followed by a request no earlier than `t + r`.
fn assert_waited(fake: &GraphFake) {
    let throttles = fake.throttled();
    let arrivals = fake.arrivals();
    assert!(!throttles.is_empty(), "the test did not throttle");
    for th in &throttles {
        if let Some(next) = arrivals.iter().find(|a| a.http_seq > th.http_seq) {
            assert!(
                next.at >= th.at + th.retry_after,
                "request {} came {:?} after a 429 asking for {:?}",
                next.http_seq,
                next.at.duration_since(th.at),
                th.retry_after
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_waited_out_per_retry_after() {
    // 10 writes per second: 30 creates cannot go through at once.
    let fake = GraphFake::start_with(GraphFakeOptions {
        writes_per_window: 10,
        window: Duration::from_secs(1),
        ..Default::default()
    });
    // One batch in flight, so every request after a 429 was sent after the client saw it.
    let t = client_with(
        &fake,
        GraphOptions {
            max_in_flight: 1,
            ..fast()
        },
    );
    let users = seed_users(&t, "thr", 30).await;
    assert_eq!(users.len(), 30);
    assert_eq!(fake.users().len(), 30);
    let per_request_429s = fake
        .requests()
        .iter()
        .filter(|l| l.in_batch && l.status == 429)
        .count();
    assert!(per_request_429s > 0);
    assert_waited(&fake);

    // A whole batch answered 429 is waited out too.
    let fake = GraphFake::start();
    let t = client(&fake);
    fake.inject(Fault::http(429, 1).retry_after(1));
    seed_users(&t, "whole", 3).await;
    assert_eq!(
        fake.batches().len(),
        1,
        "the 429 came before the batch was read"
    );
    assert_eq!(fake.throttled().len(), 1);
    assert_waited(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_with_several_batches_in_flight_still_applies_everything() {
    let fake = GraphFake::start_with(GraphFakeOptions {
        writes_per_window: 20,
        window: Duration::from_secs(1),
        ..Default::default()
    });
    let t = client(&fake);
    seed_users(&t, "par", 70).await;
    assert_eq!(fake.users().len(), 70);
    assert!(!fake.throttled().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_fails_only_its_op() {
    let fake = GraphFake::start();
    let t = client(&fake);
    fake.inject(Fault::request(400, 1).matching("bad1@test.lan"));
    // A duplicate userPrincipalName is refused by Graph's own validation.
    let dup = user("bad0");
    let ops = vec![
        create_user(&anchor(), &user("bad0")),
        create_user(&anchor(), &user("bad1")),
        create_user(&anchor(), &user("bad2")),
    ];
    let out = t.apply(&ops, later()).await;
    applied(&out[0]);
    match &out[1] {
        Outcome::Failed(e) => {
            assert_eq!(e.status, Some(400));
            assert!(!e.fatal);
        }
        o => panic!("{o:?}"),
    }
    applied(&out[2]);
    let out = t.apply(&[create_user(&anchor(), &dup)], later()).await;
    match &out[0] {
        Outcome::Failed(e) => assert!(e.message.contains("already exists"), "{e}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(fake.users().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() {
    let fake = GraphFake::start();
    let t = client(&fake);
    // The whole $batch fails twice, then one request inside it once.
    fake.inject(Fault::http(503, 2));
    fake.inject(Fault::request(503, 1).matching("retry1@test.lan"));
    let users = seed_users(&t, "retry", 3).await;
    assert_eq!(users.len(), 3);
    assert_eq!(
        fake.batches().len(),
        2,
        "a batch answered 503, then the retry of one"
    );
    assert_eq!(fake.arrivals().len(), 4);
    assert_eq!(fake.users().len(), 3);

    // Reads are retried too.
    fake.inject(Fault::http(503, 1));
    assert_eq!(t.list(ObjectKind::User).await.unwrap().len(), 3);

    // A server that keeps failing: the op fails after its tries, with the last error.
    fake.inject(Fault::http(503, 100));
    let out = t
        .apply(&[create_user(&anchor(), &user("never"))], later())
        .await;
    match &out[0] {
        Outcome::Failed(e) => assert_eq!(e.status, Some(503)),
        o => panic!("{o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_renewed_once_and_a_refused_one_is_fatal() {
    let fake = GraphFake::start();
    let t = client(&fake);
    t.probe().await.unwrap();
    fake.revoke_tokens();
    seed_users(&t, "rev", 2).await;
    assert_eq!(fake.token_requests(), 2);
    assert_eq!(fake.unauthorized(), 1);

    // Now every token is refused: a second 401 is fatal, and what was not sent is
    // NotAttempted.
    fake.reject_all_tokens(true);
    let writes = fake.write_attempts();
    let t1 = client_with(
        &fake,
        GraphOptions {
            max_in_flight: 1,
            ..fast()
        },
    );
    let ops: Vec<Op> = (0..25)
        .map(|i| create_user(&anchor(), &user(&format!("fatal{i}"))))
        .collect();
    let out = t1.apply(&ops, later()).await;
    for o in &out[..20] {
        match o {
            Outcome::Failed(e) => assert!(e.fatal && e.status == Some(401), "{e:?}"),
            o => panic!("{o:?}"),
        }
    }
    assert!(
        out[20..].iter().all(|o| *o == Outcome::NotAttempted),
        "{out:?}"
    );
    assert_eq!(fake.write_attempts(), writes, "no write reached Graph");
    let e = t.list(ObjectKind::User).await.unwrap_err();
    assert!(e.fatal, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_at_or_after_the_deadline() {
    let fake = GraphFake::start();
    let t = client(&fake);
    let ops: Vec<Op> = (0..5)
        .map(|i| create_user(&anchor(), &user(&format!("late{i}"))))
        .collect();
    let out = t.apply(&ops, Instant::now()).await;
    assert_eq!(out, vec![Outcome::NotAttempted; 5]);
    assert_eq!(fake.write_attempts(), 0);
    assert!(fake.arrivals().is_empty());
    assert_eq!(fake.token_requests(), 0);

    // The deadline passes while the token is fetched (the token endpoint fails twice):
    // the batch is not sent after it.
    let t_tok = client_with(
        &fake,
        GraphOptions {
            backoff: Duration::from_millis(300),
            max_backoff: Duration::from_secs(1),
            ..fast()
        },
    );
    fake.inject(Fault::token(503, 2));
    let out = t_tok
        .apply(&ops, Instant::now() + Duration::from_millis(200))
        .await;
    assert_eq!(out, vec![Outcome::NotAttempted; 5]);
    assert_eq!(fake.token_requests(), 3, "two failures, then a token");
    assert!(fake.arrivals().is_empty());

    // A retry that would fall after the deadline is not sent: the op fails with the
    // error that asked for it.
    // (Another client: this one will hold back for the Retry-After it is given.)
    let t429 = client(&fake);
    fake.inject(Fault::http(429, 1).retry_after(5));
    let deadline = Instant::now() + Duration::from_secs(2);
    let out = t429
        .apply(&[create_user(&anchor(), &user("late"))], deadline)
        .await;
    match &out[0] {
        Outcome::Failed(e) => assert_eq!(e.status, Some(429)),
        o => panic!("{o:?}"),
    }
    assert!(Instant::now() < deadline, "it waited for nothing");
    assert_eq!(fake.arrivals().len(), 1);

    // A group created just before a deadline whose member adds cannot follow: Failed, not
    // Applied (its members are not all there).
    let users = seed_users(&t, "dl", 1).await;
    fake.inject(Fault::request(503, 1).matching("/members/$ref"));
    let t_slow = client_with(
        &fake,
        GraphOptions {
            backoff: Duration::from_secs(3),
            max_backoff: Duration::from_secs(3),
            ..fast()
        },
    );
    let out = t_slow
        .apply(
            &[create_group(&anchor(), "Late group", &[users[0].1.clone()])],
            Instant::now() + Duration::from_secs(1),
        )
        .await;
    match &out[0] {
        Outcome::Failed(e) => assert_eq!(e.status, Some(503)),
        o => panic!("{o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_come_back_in_op_order_from_shuffled_batch_answers() {
    // The fake answers a batch in reverse order; outcomes must still line up with ops.
    let fake = GraphFake::start();
    let t = client(&fake);
    let users = seed_users(&t, "ord", 5).await;
    for (i, (_, id)) in users.iter().enumerate() {
        let stored: Value = fake.user_by_upn(&format!("ord{i}@test.lan")).unwrap();
        assert_eq!(stored["id"], id.as_str());
    }
}

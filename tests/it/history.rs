//! Answering the auditor: `object show`, `log show --anchor/--type/--since/--until`,
//! `replay --until X --anchor A` and `replay --diff` with values, against slapd into
//! scim2-server; the history index filled by `dirsync init` on a store made before it
//! (both backends).

use std::collections::BTreeSet;

use dirsync::log::event::*;
use dirsync::log::store::{Batch, HistoryQuery};
use dirsync::log::{NewEvent, Store};
use serde_json::{json, Value};

use crate::both_backends;
use crate::common::{Backend, Fresh, Run};
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";

fn json(run: &Run) -> Value {
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// (event, summary) of each timeline entry.
fn timeline(v: &Value) -> Vec<(String, String)> {
    v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["event"].as_str().unwrap().to_string(),
                t["summary"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn lines(run: &Run) -> Vec<Value> {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_object_show_tells_what_happened_to_a_user_and_when() {
    let lab = E2e::ldap(3, "500").await;
    let s = lab.slapd();
    lab.sync("a", &[]);
    let u1 = format!("uid=u1,{PEOPLE}");
    let a1 = lab.anchor(&u1).await;
    let a2 = lab.anchor(&format!("uid=u2,{PEOPLE}")).await;
    let before_change = lab.head().await;
    // Times in the log's JSON are whole seconds: the change comes in a later one.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    s.ldapmodify(&format!(
        "dn: {u1}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
    ))
    .await;
    lab.sync("a", &[]);
    let users = lab.view.users_by_anchor().await;
    let id1 = users[&a1]["id"].as_str().unwrap().to_string();

    // By mail (the userName), in another case.
    let v = json(&lab.cli(&["object", "show", "U1@Example.ORG", "--format", "json"]));
    assert_eq!(v["anchor"], a1.as_str());
    assert_eq!(v["kind"], "user");
    assert_eq!(v["dn"], u1.as_str());
    assert_eq!(v["live"], true);
    assert_eq!(v["source"]["title"], json!(["Boss"]));
    assert_eq!(v["source"]["mail"], json!(["u1@example.org"]));
    assert_eq!(
        v["mapped"],
        json!({"user_name": "u1@example.org", "display_name": "User 1", "given_name": "User",
               "family_name": "N1", "email": "u1@example.org", "title": "Boss", "active": true})
    );
    assert_eq!(v["target"]["id"], id1.as_str());
    assert_eq!(v["target"]["origin"], "created");
    assert_eq!(v["target"]["state"]["title"], "Boss");
    // Every event that touched u1, in order: its import, the two groups it is a member
    // of, its creation, the change with its old and new values, and the update.
    let t = timeline(&v);
    let (first, rest) = t.split_at(3);
    let first: BTreeSet<_> = first.iter().cloned().collect();
    let ev = |e: &str, s: String| (e.to_string(), s);
    assert_eq!(
        first,
        BTreeSet::from([
            ev("ObjectImported", format!("imported user {u1}")),
            ev(
                "ObjectImported",
                format!("imported as a member of group cn=team,{GROUPS}")
            ),
            ev(
                "ObjectImported",
                format!("imported as a member of group cn=crew,{GROUPS}")
            ),
        ])
    );
    assert_eq!(
        rest,
        [
            ev(
                "ExportApplied",
                format!("created in the target: {id1} as u1@example.org (epoch 1)")
            ),
            ev("ObjectChanged", "changed title: 'Clerk' -> 'Boss'".into()),
            ev(
                "ExportApplied",
                format!("updated in the target: {id1} as u1@example.org (epoch 1)")
            ),
        ]
    );
    let seqs: Vec<u64> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for t in v["timeline"].as_array().unwrap() {
        chrono::DateTime::parse_from_rfc3339(t["at"].as_str().unwrap()).unwrap();
        assert_eq!(t["instance"], "a");
    }

    // The same object by anchor (upper case) and by DN (any case); the table names it.
    let by_anchor = json(&lab.cli(&["object", "show", &a1.to_uppercase(), "--format", "json"]));
    assert_eq!(by_anchor, v);
    let by_dn = json(&lab.cli(&["object", "show", &u1.to_uppercase(), "--format", "json"]));
    assert_eq!(by_dn, v);
    let table = lab.cli(&["object", "show", "u1@example.org"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains(&id1), "{table:?}");
    assert!(
        table.stdout.contains("changed title: 'Clerk' -> 'Boss'"),
        "{table:?}"
    );

    // Unknown: exit 2 saying so, nothing on stdout.
    let run = lab.cli(&["object", "show", "nobody@example.org"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("no object is known by `nobody@example.org`"),
        "{run:?}"
    );
    assert!(run.stdout.is_empty());

    // A deletion: the timeline ends with the evidence and the target's deletion.
    s.ldapdelete(&format!("uid=u2,{PEOPLE}")).await;
    lab.sync("a", &[]);
    let v = json(&lab.cli(&["object", "show", &a2, "--format", "json"]));
    assert_eq!(v["live"], false);
    assert_eq!(v["deletion"]["evidence"]["how"], "sync_delete");
    let t = timeline(&v);
    let n = t.len();
    let id2 = users[&a2]["id"].as_str().unwrap();
    // The deletion, u2 leaving both groups (named by DN), the deletion in the target.
    assert_eq!(
        t[n - 4],
        ev(
            "ObjectDeleted",
            "deleted in the source (rfc4533-delete)".into()
        ),
        "{t:?}"
    );
    assert_eq!(
        t[n - 3..n - 1].iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            ev(
                "ObjectChanged",
                format!("removed from group cn=team,{GROUPS}")
            ),
            ev(
                "ObjectChanged",
                format!("removed from group cn=crew,{GROUPS}")
            ),
        ])
    );
    assert_eq!(
        t[n - 1],
        ev(
            "ExportApplied",
            format!("deleted in the target: {id2} (epoch 1)")
        ),
    );
    assert!(v["target"]["deleted"]["seq"].as_u64().is_some(), "{v}");

    // log show --anchor: exactly the timeline's events; with --type, only those.
    let all = lines(&lab.cli(&["log", "show", "--anchor", &a1, "--format", "json"]));
    let by_key = json(&lab.cli(&["object", "show", &a1, "--format", "json"]));
    assert_eq!(
        all.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>(),
        by_key["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["seq"].clone())
            .collect::<Vec<_>>()
    );
    let changed = lines(&lab.cli(&[
        "log",
        "show",
        "--anchor",
        &a1.to_uppercase(),
        "--type",
        "ObjectChanged",
        "--format",
        "json",
    ]));
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(
        changed[0]["payload"],
        json!({"anchor": a1, "set": {"title": ["Boss"]}})
    );
    // --since / --until, as seqs and as times.
    let change_seq = changed[0]["seq"].as_u64().unwrap();
    let until = lines(&lab.cli(&[
        "log",
        "show",
        "--anchor",
        &a1,
        "--until",
        &(change_seq - 1).to_string(),
        "--format",
        "json",
    ]));
    assert_eq!(until.len(), 4);
    let since = lines(&lab.cli(&[
        "log",
        "show",
        "--anchor",
        &a1,
        "--since",
        &(change_seq - 1).to_string(),
        "--format",
        "json",
    ]));
    assert_eq!(since.len() + until.len(), all.len());
    let t3 = chrono::DateTime::parse_from_rfc3339(all[3]["recorded_at"].as_str().unwrap()).unwrap()
        + chrono::Duration::seconds(1);
    let by_time = lines(&lab.cli(&[
        "log",
        "show",
        "--anchor",
        &a1,
        "--until",
        &t3.to_rfc3339(),
        "--format",
        "json",
    ]));
    assert_eq!(by_time, until);
    let by_time = lines(&lab.cli(&[
        "log",
        "show",
        "--anchor",
        &a1,
        "--since",
        &t3.to_rfc3339(),
        "--format",
        "json",
    ]));
    assert_eq!(by_time, since);
    let types = lines(&lab.cli(&["log", "show", "--type", "ObjectDeleted", "--format", "json"]));
    assert_eq!(
        types
            .iter()
            .map(|e| e["payload"]["anchor"].clone())
            .collect::<Vec<_>>(),
        [json!(a2)]
    );
    let run = lab.cli(&["log", "show", "--since", "9", "--until", "3"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("--since (seq 9) is after --until (seq 3)"),
        "{run:?}"
    );
    let run = lab.cli(&[
        "log",
        "show",
        "--since",
        "2030-01-01T00:00:00Z",
        "--until",
        "2020-01-01T00:00:00Z",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = lab.cli(&["log", "show", "--type", "NoSuchEvent"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = lab.cli(&["log", "show", "--anchor", "no-such-anchor"]);
    assert_eq!(run.code, 2, "{run:?}");

    // replay --until X --anchor A: u1 as it was before the change.
    let then = json(&lab.cli(&[
        "replay",
        "--until",
        &before_change.to_string(),
        "--anchor",
        "u1@example.org",
        "--format",
        "json",
    ]));
    assert_eq!(then["as_of"], before_change);
    assert_eq!(then["source"]["title"], json!(["Clerk"]));
    assert_eq!(then["target"]["state"]["title"], "Clerk");
    assert_eq!(timeline(&then).len(), 4);

    // replay --diff: old -> new values, and totals per kind.
    let head = lab.head().await;
    let d = json(&lab.cli(&[
        "replay",
        "--diff",
        &before_change.to_string(),
        &(change_seq + 1).to_string(),
        "--format",
        "json",
    ]));
    assert_eq!(
        d["objects"]["changed"],
        json!([{"anchor": a1, "kind": "user", "name": u1, "detail": ["title: 'Clerk' -> 'Boss'"]}])
    );
    assert_eq!(
        d["totals"],
        json!([
            {"projection": "source", "kind": "user", "added": 0, "changed": 1, "deleted": 0},
        ])
    );
    let d = json(&lab.cli(&[
        "replay",
        "--diff",
        &before_change.to_string(),
        &head.to_string(),
        "--format",
        "json",
    ]));
    assert_eq!(
        d["ledger"]["changed"][0]["detail"],
        json!([r#"title: "Clerk" -> "Boss""#]),
        "{d}"
    );
    let table = lab.cli(&[
        "replay",
        "--diff",
        &before_change.to_string(),
        &head.to_string(),
    ]);
    assert!(table.stdout.contains("totals"), "{table:?}");

    // Ambiguous: two users with one mail (imported in staging: the target would refuse the
    // second userName). Exit 2 listing both.
    s.ldapadd(&format!(
        "dn: uid=d1,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: d1\ncn: D1\nsn: D\nmail: dup@example.org\n\n\
         dn: uid=d2,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: d2\ncn: D2\nsn: D\nmail: DUP@example.org\n\n"
    ))
    .await;
    lab.sync("a", &["--staging"]);
    let (d1, d2) = (
        lab.anchor(&format!("uid=d1,{PEOPLE}")).await,
        lab.anchor(&format!("uid=d2,{PEOPLE}")).await,
    );
    let run = lab.cli(&["object", "show", "dup@example.org"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("names 2 objects"), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("{d1} (user, uid=d1,{PEOPLE})"))
            && run
                .stderr
                .contains(&format!("{d2} (user, uid=d2,{PEOPLE})")),
        "{run:?}"
    );
    // Each is found by its uid.
    let v = json(&lab.cli(&["object", "show", "d2", "--format", "json"]));
    assert_eq!(v["anchor"], d2.as_str());
    assert!(v["target"].is_null(), "staging exports nothing: {v}");
}

/// A store made before the history index: `log show --anchor` needs `dirsync init`, which
/// fills the index from the events already there; appends then keep it up to date.
async fn init_fills_the_history_index_of_an_older_store(backend: Backend) {
    let f = Fresh::new(backend).await;
    let object = |anchor: &str, mail: &str| SourceObject {
        anchor: anchor.into(),
        kind: ObjectKind::User,
        dn: format!("uid={anchor},dc=x"),
        attrs: Attrs::from([("mail".into(), vec![AttrValue::Text(mail.into())])]),
        members: Default::default(),
    };
    let imported = |anchor: &str, mail: &str| {
        NewEvent::new(
            stream::SOURCE,
            "a",
            Event::ObjectImported(ObjectImported {
                object: object(anchor, mail),
                returned: false,
            }),
        )
    };
    let mut events = vec![imported("x1", "one@x"), imported("x2", "two@x")];
    // A large batch (the pipelined and COPY paths).
    for i in 0..3000 {
        events.push(imported(&format!("bulk{i}"), &format!("b{i}@x")));
    }
    events.push(NewEvent::new(
        stream::SOURCE,
        "a",
        Event::ObjectDeleted(ObjectDeleted {
            anchor: "x1".into(),
            evidence: DeletionEvidence::SyncDelete {
                phase: "delete".into(),
            },
        }),
    ));
    f.store.append(Batch::new(events)).await.unwrap();
    let q = HistoryQuery {
        anchor: Some("x1".into()),
        ..Default::default()
    };
    let indexed: Vec<u64> = f
        .store
        .history(&q, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(indexed, [1, 3003]);
    let expected = lines(&f.cli(&["log", "show", "--anchor", "x1", "--format", "json"]));
    assert_eq!(expected.len(), 2);
    // `log show --type` (through event_type_blocks) gives what a scan of the log gives.
    let by_type = |f: &Fresh| {
        let all = lines(&f.cli(&["log", "show", "--format", "json"]));
        for t in [
            "ObjectImported",
            "ObjectDeleted",
            "ObjectChanged",
            "CursorAdvanced",
        ] {
            let of_type: Vec<Value> = all.iter().filter(|e| e["type"] == t).cloned().collect();
            let show = |more: &[&str]| {
                let mut args = vec!["log", "show", "--type", t, "--format", "json"];
                args.extend_from_slice(more);
                lines(&f.cli(&args))
            };
            assert_eq!(show(&[]), of_type, "{t}");
            let first: Vec<Value> = of_type.iter().take(300).cloned().collect();
            assert_eq!(show(&["--limit", "300"]), first, "{t}");
        }
    };
    by_type(&f);

    // Back to schema 1: no index (and none of the later tables).
    f.raw_sql(
        "DROP TABLE event_anchors; DROP TABLE object_keys; DROP TABLE event_type_blocks; \
         DROP TABLE control; DROP TABLE heartbeats; DROP TABLE idle_cycles; DELETE FROM dirsync_schema WHERE version >= 2;",
    )
    .await;
    let run = f.cli(&["log", "show", "--anchor", "x1"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = f.cli(&["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        lines(&f.cli(&["log", "show", "--anchor", "x1", "--format", "json"])),
        expected
    );
    let v = json(&f.cli(&["object", "show", "ONE@x", "--format", "json"]));
    assert_eq!(v["anchor"], "x1");
    let v = json(&f.cli(&["object", "show", "b2999@x", "--format", "json"]));
    assert_eq!(v["anchor"], "bulk2999");
    // The hash chain is what it was.
    let run = f.cli(&["log", "verify"]);
    assert_eq!(run.code, 0, "{run:?}");
    // A later append is indexed too.
    let store = f.reopen().await;
    store
        .append(Batch::new(vec![NewEvent::new(
            stream::SOURCE,
            "a",
            Event::ObjectChanged(ObjectChanged {
                anchor: "x2".into(),
                set: Attrs::from([("mail".into(), vec![AttrValue::Text("new@x".into())])]),
                ..Default::default()
            }),
        )]))
        .await
        .unwrap();
    let v = json(&f.cli(&["object", "show", "new@x", "--format", "json"]));
    assert_eq!(v["anchor"], "x2");
    assert_eq!(
        timeline(&v)[1],
        (
            "ObjectChanged".to_string(),
            "changed mail: 'two@x' -> 'new@x'".to_string()
        )
    );
    // Known by its old mail still (no other object has it now).
    let v = json(&f.cli(&["object", "show", "two@x", "--format", "json"]));
    assert_eq!(v["anchor"], "x2");

    // Back to schema 2 (so without the control projections, heartbeats and idle cycles of 4 to 6):
    // event_anchors keyed by the anchor's text (one stale row in it).
    f.raw_sql(
        "DROP TABLE event_anchors; \
         CREATE TABLE event_anchors (anchor TEXT NOT NULL, seq BIGINT NOT NULL, \
             PRIMARY KEY (anchor, seq)); \
         INSERT INTO event_anchors (anchor, seq) VALUES ('x1', 2); \
         DROP TABLE event_type_blocks; CREATE INDEX events_type ON events (event_type, seq); \
         DROP TABLE control; DROP TABLE heartbeats; DROP TABLE idle_cycles; DELETE FROM dirsync_schema WHERE version >= 3;",
    )
    .await;
    let run = f.cli(&["log", "show", "--anchor", "x1"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = f.cli(&["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        lines(&f.cli(&["log", "show", "--anchor", "x1", "--format", "json"])),
        expected
    );
    let x2: Vec<u64> = lines(&f.cli(&["log", "show", "--anchor", "x2", "--format", "json"]))
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(x2, [2, 3004]);
    by_type(&f);
    let v = json(&f.cli(&["object", "show", "new@x", "--format", "json"]));
    assert_eq!(v["anchor"], "x2");
    let v = json(&f.cli(&["object", "show", "BULK7", "--format", "json"]));
    assert_eq!(v["anchor"], "bulk7");
    let run = f.cli(&["log", "verify"]);
    assert_eq!(run.code, 0, "{run:?}");
}

both_backends!(init_fills_the_history_index_of_an_older_store);

/// Chromium, headless: `args` then the page.
fn chromium(args: &[&str], page: &std::path::Path) -> std::process::Output {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (Debian package `chromium`; scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_report_shows_instances_handover_and_missed_deletions() {
    let lab = E2e::ldap(5, "500").await;
    let dir = lab.dir.path();
    // Short fencing leases: the handover's take-overs wait little.
    let cfg = dir.join("dirsync.toml");
    let mut toml = std::fs::read_to_string(&cfg).unwrap();
    toml.push_str("lease = \"3s\"\n");
    std::fs::write(&cfg, toml).unwrap();
    std::fs::create_dir(dir.join("playbooks")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks/new-computer.toml"),
        dir.join("playbooks/new-computer.toml"),
    )
    .unwrap();
    let s = lab.slapd();
    lab.sync("old", &[]);
    // Deleted while the handover's stop holds the old computer: the handover carries it.
    s.ldapdelete(&format!("uid=u3,{PEOPLE}")).await;
    let run = lab.cli(&["handover", "--from", "old", "--to", "new"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Then the new computer is stopped and a deletion is seen but never exported.
    let run = lab.cli(&["instance", "stop", "new"]);
    assert_eq!(run.code, 0, "{run:?}");
    s.ldapdelete(&format!("uid=u4,{PEOPLE}")).await;
    let a4 = lab.anchor(&format!("uid=u4,{PEOPLE}")).await;
    let run = lab.cli(&["audit", "missed-deletes", "--refresh", "--instance", "new"]);
    assert_eq!(run.code, 0, "{run:?}");

    // A report path in a missing directory: exit 2, nothing written.
    let run = lab.cli(&["report", "--html", "nowhere/report.html"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("does not exist"), "{run:?}");
    assert!(!dir.join("nowhere").exists());

    let run = lab.cli(&["report", "--html", "report.html", "--format", "json"]);
    let v = json(&run);
    assert_eq!(v["chain_verified"], true);
    let page_path = dir.join("report.html");
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert_eq!(v["bytes"].as_u64().unwrap() as usize, page.len());
    // Self-contained: no script, no reference to anything outside the page.
    for bad in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(!page.contains(bad), "{bad} in the page");
    }
    let head = lab.store().await;
    let (seq, hash) = dirsync::log::Store::head(&head).await.unwrap();
    assert!(page.contains(&hex::encode(hash)));

    // What a browser shows: the instances, the handover's steps, the missed deletion.
    let dom = chromium(&["--dump-dom"], &page_path);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for text in [
        "old",
        "new",
        "retired",
        "epoch 2",
        "playbook",
        "wait-sync",
        &a4,
        "u4@example.org",
        "missed deletions",
        "deleted from the target: 1",
        "seen in the source: 2",
        &format!("head: seq {seq}"),
    ] {
        assert!(dom.contains(text), "`{text}` not in the page");
    }
    assert!(
        !dom.contains("u3@example.org"),
        "u3's deletion was exported"
    );
    // The holder is stopped: nobody's next cycle deletes u4, so it is missed, not pending.
    for card in [
        "<b class=\"bad\">1</b>missed deletions",
        "<b class=\"ok\">0</b>pending deletions",
    ] {
        assert!(dom.contains(card), "`{card}` not in the page");
    }

    // A screenshot that is not blank.
    let shot = dir.join("report.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600",
        ],
        &page_path,
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let colours: BTreeSet<&[u8]> = pixels.iter().copied().collect();
    let inked = pixels.iter().filter(|p| p[..3] != [255, 255, 255]).count();
    assert!(colours.len() > 50, "{} colours", colours.len());
    assert!(
        inked * 20 > pixels.len(),
        "{inked} of {} pixels not white",
        pixels.len()
    );
    if let Ok(keep) = std::env::var("DIRSYNC_KEEP_REPORT") {
        std::fs::copy(&shot, format!("{keep}.png")).unwrap();
        std::fs::copy(&page_path, format!("{keep}.html")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_directory_object_show_follows_a_move_and_a_tombstone() {
    const STAFF: &str = "OU=Staff,DC=test,DC=lan";
    let lab = E2e::ad().await;
    // More users, so that a deletion does not trip the guard's shrunk-source rule.
    let mut ldif = String::new();
    for i in 5..=8 {
        ldif.push_str(&format!(
            "dn: CN=u{i},{STAFF}\nobjectClass: user\nsAMAccountName: u{i}\n\
             userPrincipalName: u{i}@test.lan\nuserAccountControl: 512\n\n"
        ));
    }
    lab.samba().ldapadd(&ldif).await;
    lab.sync("a", &[]);
    let dn = format!("CN=u3,{STAFF}");
    let a3 = lab.anchor(&dn).await;
    lab.samba()
        .ldapmodify(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    lab.sync("a", &[]);
    lab.samba().ldapdelete(&dn).await;
    lab.sync("a", &[]);
    assert_eq!(
        lab.view.count("Users").await,
        7,
        "u3 deleted from the target"
    );

    // By userPrincipalName (the AD userName), in another case.
    let v = json(&lab.cli(&["object", "show", "U3@TEST.LAN", "--format", "json"]));
    assert_eq!(v["anchor"], a3.as_str());
    assert_eq!(v["live"], false);
    assert_eq!(v["deletion"]["evidence"]["how"], "tombstone", "{v}");
    assert_eq!(v["source"]["title"], json!(["Boss"]));
    assert!(
        v["mapped"].is_null(),
        "a deleted object maps to nothing: {v}"
    );
    assert!(v["target"]["deleted"]["seq"].is_u64(), "{v}");
    let t = timeline(&v);
    let events: Vec<&str> = t.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        events,
        [
            "ObjectImported",
            "ExportApplied",
            "ObjectChanged",
            "ExportApplied",
            "ObjectDeleted",
            "ExportApplied"
        ],
        "{t:?}"
    );
    assert_eq!(t[0].1, format!("imported user {dn}"));
    assert_eq!(t[2].1, "changed title: 'Clerk' -> 'Boss'");
    assert!(
        t[4].1
            .starts_with("deleted in the source (tombstone, deleted 20"),
        "{t:?}"
    );
    assert!(t[5].1.starts_with("deleted in the target: "), "{t:?}");
}

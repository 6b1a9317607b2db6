//! The deletion guard as a new user meets it (issue 22.2): creates and updates export while
//! deletions are held (`[sync] hold = "deletions"`, the default; `"all"` holds the whole
//! cycle), only the held list that stands can be approved (a superseded one exits 2 naming
//! the current one), `--plan` takes a unique prefix of 8 hex digits or more, a dry run says
//! "would hold" without a hash, and `deletions show` gives each deletion's DN, display name,
//! evidence and when it was seen. Real slapd and Samba AD DC into scim2-server.

use serde_json::{json, Value};

use dirsync::log::event::*;
use dirsync::log::store::Batch;
use dirsync::log::{NewEvent, Store};
use dirsync::output::time;

use crate::common::{Backend, Fresh, Run};
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const STAFF: &str = "OU=Staff,DC=test,DC=lan";

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// Exit 2 with one line on stderr and nothing on stdout.
fn refused(run: &Run) {
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
}

/// The one line on stderr of a `--format json` run that exited 3: a JSON error object.
fn json_error(run: &Run) -> Value {
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    serde_json::from_str(&run.stderr).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// `deletions show --format json`.
fn shown(lab: &E2e) -> Value {
    let run = lab.cli(&["deletions", "show", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

/// What `deletions show` must say about the owned anchor `anchor`, from the log's own record
/// of its deletion and its last export.
async fn expected_deletion(lab: &E2e, anchor: &str, display_name: &str) -> Value {
    let state = lab.state().await;
    let rec = &state.objects.objects[anchor];
    let l = &state.ledger.entries[anchor];
    let d = rec.deletion.as_ref().expect("deleted in the source");
    json!({
        "anchor": anchor,
        "kind": "user",
        "dn": rec.dn,
        "name": l.state.as_ref().unwrap().name(),
        "display_name": display_name,
        "target_id": l.target_id,
        "evidence": d.evidence.label(),
        "evidence_detail": d.evidence.detail(),
        "deleted_at": d.evidence.deleted_at_us().map(time),
        "seen": {"at": time(d.at.at_us), "seq": d.at.seq, "by": d.instance},
    })
}

fn set_title(uid: &str, title: &str) -> String {
    format!("dn: uid={uid},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: {title}\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_updates_flow_while_deletions_wait_for_the_list_that_stands() {
    let lab = E2e::ldap(6, "1").await;
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "created"), 8, "{v}");
    let u = |i: u32| format!("uid=u{i},{PEOPLE}");
    let (a1, a3, a4, a5) = (
        lab.anchor(&u(1)).await,
        lab.anchor(&u(3)).await,
        lab.anchor(&u(4)).await,
        lab.anchor(&u(5)).await,
    );
    lab.slapd().ldapdelete(&u(3)).await;
    lab.slapd().ldapdelete(&u(4)).await;
    lab.slapd().ldapmodify(&set_title("u1", "Boss")).await;

    // A dry run that would trip the guard says so, names no plan, and writes nothing.
    let head = lab.head().await;
    let (run, v) = lab.run("a", &["--dry-run"]);
    assert_eq!(run.code, 3, "{run:?}");
    // JSON output: the exit-3 message is one JSON error object on stderr.
    assert_eq!(
        json_error(&run),
        json!({"error": "would hold 2 deletion(s): 2 deletions exceed the deletion threshold of 1 per cycle. \
                A sync records the list; `dirsync deletions show` then lists it for approval", "exit": 3})
    );
    assert!(v.get("held_plan").is_none(), "{v}");
    assert_eq!(lab.head().await, head);
    assert_eq!(shown(&lab), json!([]), "no plan recorded");

    // The sync holds the two deletions (exit 3) and exports the update.
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        (n(&v, "held"), n(&v, "updated"), n(&v, "deleted")),
        (2, 1, 0),
        "{v}"
    );
    let first = v["held_plan"].as_str().unwrap().to_string();
    assert_eq!(
        json_error(&run),
        json!({"error": format!(
            "2 deletion(s) held: 2 deletions exceed the deletion threshold of 1 per cycle. \
             Review with `dirsync deletions show`, release with `dirsync deletions approve --plan {}`",
            &first[..12]
        ), "exit": 3})
    );
    let users = lab.view.users_by_anchor().await;
    assert_eq!(users[&a1]["title"], "Boss", "the update reached the target");
    assert_eq!(users.len(), 6, "the deletions did not");

    // Each held deletion: DN, display name, evidence, when it was seen.
    let plans = shown(&lab);
    let mut want = vec![
        expected_deletion(&lab, &a3, "User 3").await,
        expected_deletion(&lab, &a4, "User 4").await,
    ];
    want.sort_by(|x, y| x["anchor"].as_str().cmp(&y["anchor"].as_str()));
    assert_eq!(want[0]["evidence"], "rfc4533-delete", "{want:?}");
    assert_eq!(plans.as_array().unwrap().len(), 1, "{plans}");
    let p = &plans[0];
    assert_eq!(
        (&p["plan_hash"], &p["status"], &p["current"], &p["count"]),
        (&json!(first), &json!("held"), &json!(true), &json!(2)),
        "{p}"
    );
    assert_eq!(p["deletions"], Value::from(want), "{p}");
    let table = lab.cli(&["deletions", "show"]);
    assert!(
        table.stdout.starts_with(&format!(
            "2 deletion(s) held since {} (2 deletions exceed the deletion threshold of 1 per cycle); \
             release exactly these with `dirsync deletions approve --plan {}`\n",
            p["held_at"].as_str().unwrap(),
            &first[..12]
        )),
        "{table:?}"
    );
    for line in [&u(3), &u(4)] {
        let row = table.stdout.lines().find(|l| l.contains(line.as_str()));
        let row = row.unwrap_or_else(|| panic!("no {line} in {table:?}"));
        assert!(
            row.contains("rfc4533-delete") && row.contains(" by a"),
            "{row}"
        );
    }

    // Held again: no second record while the list stands.
    let head = lab.head().await;
    let (run, _) = lab.run("a", &[]);
    assert_eq!(run.code, 3);
    assert!(!lab
        .events_after(head)
        .await
        .contains(&"DeletionsHeld".to_string()));

    // A later deletion supersedes the list: approving the first is refused, naming the
    // current one, and approves nothing.
    lab.slapd().ldapdelete(&u(5)).await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    let second = v["held_plan"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let head = lab.head().await;
    let run = lab.cli(&["deletions", "approve", "--plan", &first]);
    refused(&run);
    assert!(
        run.stderr.starts_with(&format!(
            "dirsync: plan {} is no longer the held list: the held list is plan {} (3 deletion(s), held ",
            &first[..12],
            &second[..12]
        )),
        "{run:?}"
    );
    assert!(run
        .stderr
        .ends_with("; nothing approved (see `dirsync deletions show`)\n"));
    // Bad prefixes: too short, not hex, unknown.
    refused(&lab.cli(&["deletions", "approve", "--plan", &second[..7]]));
    refused(&lab.cli(&["deletions", "approve", "--plan", "zzzzzzzz"]));
    let unknown = if second.starts_with("00000000") {
        "11111111"
    } else {
        "00000000"
    };
    refused(&lab.cli(&["deletions", "approve", "--plan", unknown]));
    assert_eq!(lab.head().await, head, "nothing recorded");
    let plans = shown(&lab);
    assert_eq!(
        plans
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (
                p["plan_hash"].as_str().unwrap(),
                p["status"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(second.as_str(), "held"), (first.as_str(), "superseded")]
    );

    // The current list, by eight digits: approved; the next sync exports exactly it.
    let run = lab.cli(&["deletions", "approve", "--plan", &second[..8]]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        format!(
            "approved 3 deletion(s) of plan {}: the next sync exports exactly these while they are its deletions (a different list is held for its own approval)\n",
            &second[..12]
        )
    );
    let approved_at = shown(&lab)[0]["approved"].as_str().unwrap().to_string();
    assert_eq!(
        lab.cli(&["deletions", "show"]).stdout.lines().next().unwrap(),
        format!(
            "no deletions held: plan {} (3 deletion(s)) was approved at {approved_at}; the next sync exports them",
            &second[..12]
        )
    );
    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "deleted"), n(&v, "held")), (3, 0), "{v}");
    let users = lab.view.users_by_anchor().await;
    assert_eq!(users.len(), 3);
    assert!(![&a3, &a4, &a5].iter().any(|a| users.contains_key(*a)));
    assert!(lab
        .events_after(head)
        .await
        .contains(&"DeletionsHoldEnded".to_string()));
    // Approving it again is idempotent; the superseded one finds nothing held.
    assert_eq!(
        lab.cli(&["deletions", "approve", "--plan", &second]).code,
        0
    );
    let run = lab.cli(&["deletions", "approve", "--plan", &first]);
    refused(&run);
    assert!(run.stderr.contains("no deletions are held now"), "{run:?}");
    assert_eq!(
        lab.cli(&["deletions", "show"]).stdout.lines().next(),
        Some("no deletions held")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_hold_all_holds_the_whole_cycle() {
    let lab = E2e::ldap(6, "1").await;
    let cfg = lab.dir.path().join("dirsync.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}hold = \"all\"\n")).unwrap();
    lab.sync("a", &[]);
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    lab.slapd().ldapdelete(&format!("uid=u3,{PEOPLE}")).await;
    lab.slapd().ldapdelete(&format!("uid=u4,{PEOPLE}")).await;
    lab.slapd().ldapmodify(&set_title("u1", "Boss")).await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        (n(&v, "held"), n(&v, "updated"), n(&v, "deleted")),
        (2, 0, 0),
        "{v}"
    );
    let e = json_error(&run);
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("2 deletion(s) held, nothing exported: "))
            && e["exit"] == 3,
        "{run:?}"
    );
    let users = lab.view.users_by_anchor().await;
    assert_eq!((users.len(), &users[&a1]["title"]), (6, &json!("Clerk")));
    let plan = v["held_plan"].as_str().unwrap().to_string();
    // The cycle exported nothing: it is recorded as failed, held (not completed), and
    // status exits 3 from the held list.
    let state = lab.state().await;
    let failed = state.control.instances.instances["a"]
        .last_failed
        .clone()
        .unwrap();
    assert_eq!(
        (failed.run_id.as_str(), failed.reason),
        (v["run_id"].as_str().unwrap(), Some(FailureReason::Held))
    );
    assert!(
        state.control.instances.instances["a"]
            .last_completed
            .as_ref()
            .is_some_and(|(_, at)| at.seq < failed.at.seq),
        "{:?}",
        state.control.instances.instances["a"]
    );
    let status = lab.cli(&["status", "--format", "json"]);
    assert_eq!(status.code, 3, "{status:?}");
    // The audit: no completed sync is newer than the deletions, but the list that stands
    // is held again by a's next cycle: missed, and the gap stays open.
    let audit = lab.cli(&[
        "audit",
        "missed-deletes",
        "--format",
        "json",
        "--fail-if-any",
    ]);
    assert_eq!(audit.code, 5, "{audit:?}");
    let audit: Value = serde_json::from_str(&audit.stdout).unwrap();
    let rows: Vec<(&Value, &Value, &Value, &Value)> = audit["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                &m["state"],
                &m["status"],
                &m["status_detail"],
                &m["gap"]["to"],
            )
        })
        .collect();
    let detail = json!(format!(
        "held (plan {}, not approved): a's next cycle holds it again",
        &plan[..12]
    ));
    let want = (&json!("held"), &json!("missed"), &detail, &Value::Null);
    assert_eq!(rows, [want, want], "{audit}");
    assert_eq!(lab.cli(&["deletions", "approve", "--plan", &plan]).code, 0);
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "updated"), n(&v, "deleted")), (1, 2), "{v}");
    assert_eq!(lab.view.users_by_anchor().await[&a1]["title"], "Boss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_directory_updates_flow_while_tombstoned_users_wait() {
    let lab = E2e::ad().await;
    let cfg = lab.dir.path().join("dirsync.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let lowered = text.replace("deletion_threshold = 500", "deletion_threshold = 1");
    assert_ne!(text, lowered);
    std::fs::write(&cfg, lowered).unwrap();
    lab.sync("a", &[]);
    let cn = |c: &str| format!("CN={c},{STAFF}");
    let (a1, a3, a4) = (
        lab.anchor(&cn("u1")).await,
        lab.anchor(&cn("u3")).await,
        lab.anchor(&cn("u4")).await,
    );
    lab.samba().ldapdelete(&cn("u3")).await;
    lab.samba().ldapdelete(&cn("u4")).await;
    lab.samba()
        .ldapmodify(&format!(
            "dn: {}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n",
            cn("u1")
        ))
        .await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        (n(&v, "held"), n(&v, "updated"), n(&v, "deleted")),
        (2, 1, 0),
        "{v}"
    );
    let users = lab.view.users_by_anchor().await;
    assert_eq!(users[&a1]["title"], "Boss");
    assert_eq!(users.len(), 4);
    let plans = shown(&lab);
    let mut want = vec![
        expected_deletion(&lab, &a3, "u3").await,
        expected_deletion(&lab, &a4, "u4").await,
    ];
    want.sort_by(|x, y| x["anchor"].as_str().cmp(&y["anchor"].as_str()));
    for w in &want {
        assert_eq!(w["evidence"], "tombstone", "{w}");
        assert!(w["deleted_at"].is_string(), "{w}");
        assert!(
            w["evidence_detail"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(STAFF),
            "{w}"
        );
    }
    assert_eq!(plans[0]["deletions"], Value::from(want), "{plans}");
    let plan = plans[0]["plan_hash"].as_str().unwrap().to_string();
    assert_eq!(
        lab.cli(&["deletions", "approve", "--plan", &plan[..10]])
            .code,
        0
    );
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "deleted"), 2, "{v}");
    assert_eq!(lab.view.users_by_anchor().await.len(), 2);
}

/// A prefix that names two held lists is refused with both named; each list is then named
/// by a longer one. (Two real plan hashes sharing eight digits are too rare to make, so the
/// holds are recorded directly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_naming_two_plans_is_refused() {
    let f = Fresh::new(Backend::Sqlite).await;
    let (h1, h2) = (
        format!("abcdef01{}", "0".repeat(56)),
        format!("abcdef01{}", "f".repeat(56)),
    );
    let held = |h: &str, anchor: &str| {
        NewEvent::new(
            stream::GUARD,
            "a",
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: h.into(),
                anchors: vec![anchor.into()],
                reason: "test".into(),
            }),
        )
    };
    f.store
        .append(Batch::new(vec![held(&h1, "x1"), held(&h2, "x2")]))
        .await
        .unwrap();
    let head = f.store.head().await.unwrap().0;
    let run = f.cli(&["deletions", "approve", "--plan", "ABCDEF01"]);
    refused(&run);
    assert_eq!(
        run.stderr,
        "dirsync: --plan `ABCDEF01` names 2 plans (abcdef010000, abcdef01ffff): give more digits\n"
    );
    // The first was superseded by the second.
    refused(&f.cli(&["deletions", "approve", "--plan", "abcdef010"]));
    assert_eq!(f.store.head().await.unwrap().0, head);
    let run = f.cli(&[
        "deletions",
        "approve",
        "--plan",
        "abcdef01f",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).unwrap(),
        json!({"approved": h2, "count": 1})
    );
}

/// A held list ends when a later cycle holds nothing (here: the threshold raised, so the
/// deletions go out within it): the cycle records `DeletionsHoldEnded`, and approving the old
/// plan is refused, since nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_a_hold_ends_when_a_cycle_holds_nothing() {
    let lab = E2e::ldap(6, "1").await;
    lab.sync("a", &[]);
    lab.slapd().ldapdelete(&format!("uid=u3,{PEOPLE}")).await;
    lab.slapd().ldapdelete(&format!("uid=u4,{PEOPLE}")).await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    let plan = v["held_plan"].as_str().unwrap().to_string();
    let cfg = lab.dir.path().join("dirsync.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("deletion_threshold = 1", "deletion_threshold = 5"),
    )
    .unwrap();
    let head = lab.head().await;
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "deleted"), n(&v, "held")), (2, 0), "{v}");
    let store = lab.store().await;
    let ended: Vec<Value> = store
        .read(head, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "DeletionsHoldEnded")
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect();
    assert_eq!(
        ended,
        [
            json!({"plan_hash": plan, "reason": "this cycle's 2 deletion(s) are within the guard's limits"})
        ]
    );
    let run = lab.cli(&["deletions", "approve", "--plan", &plan]);
    refused(&run);
    assert_eq!(
        run.stderr,
        format!(
            "dirsync: plan {} is no longer the held list: no deletions are held now; nothing approved (see `dirsync deletions show`)\n",
            &plan[..12]
        )
    );
    assert_eq!(shown(&lab)[0]["status"], "superseded");
}

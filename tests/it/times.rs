//! Issue "operate it day to day": every `--format json` output gives times as RFC 3339
//! strings (a log point is `{"seq": N, "at": TIME}`), never microsecond integers; every
//! table that shows a time honours `--local-time`.

use std::process::Command;

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};

use crate::common::{bin, Run};
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";

/// Run the binary in the lab with TZ set to India (UTC+05:30, no daylight saving).
fn in_india(lab: &E2e, args: &[&str]) -> Run {
    Command::new(bin())
        .args(args)
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .env("TZ", "Asia/Kolkata")
        .output()
        .unwrap()
        .into()
}

/// Every place in `v` that breaks the rule, by path: a key ending `_us`, or an `at` (or
/// `..._at`) that is neither an RFC 3339 string nor a log point `{"seq", "at"}`.
fn offenders(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                if k.ends_with("_us") {
                    out.push(format!("{p} = {x}"));
                }
                let is_time = x
                    .as_str()
                    .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok());
                // A log point's own `at` is checked inside it.
                let is_point = x.get("seq").is_some() && x.get("at").is_some();
                if (k == "at" || k.ends_with("_at")) && !x.is_null() && !is_time && !is_point {
                    out.push(format!("{p} = {x} (not RFC 3339)"));
                }
                offenders(x, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                offenders(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The JSON a command printed (one document, or JSON Lines).
fn documents(run: &Run) -> Vec<Value> {
    match serde_json::from_str(&run.stdout) {
        Ok(v) => vec![v],
        Err(_) => run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
    }
}

/// `text` with every RFC 3339 UTC time (`...Z`) written at UTC+05:30.
fn in_kolkata(text: &str) -> String {
    let ist = FixedOffset::east_opt(19_800).unwrap();
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..i]);
        let from = &rest[i..];
        match from.get(..20).map(DateTime::parse_from_rfc3339) {
            Some(Ok(t)) if from.as_bytes()[19] == b'Z' => {
                out.push_str(
                    &t.with_timezone(&ist)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                );
                rest = &from[20..];
            }
            _ => {
                let n = from
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(from.len());
                out.push_str(&from[..n]);
                rest = &from[n..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A table's text without its alignment and without ages counted from now ("3s", "2m"):
/// two runs a moment apart compare equal.
fn words(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| {
                    let w = w.trim_end_matches([',', ')']);
                    !(w.len() > 1
                        && w.ends_with(['s', 'm', 'h', 'd'])
                        && w[..w.len() - 1].bytes().all(|b| b.is_ascii_digit()))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_json_times_are_rfc3339_and_tables_honour_local_time() {
    let lab = E2e::ldap(6, "1").await;
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
    let mut bad = Vec::new();
    let first = lab.sync("old", &[]);
    offenders(&first, "sync", &mut bad);
    let run = lab.cli(&[
        "handover", "--from", "old", "--to", "new", "--format", "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    offenders(&documents(&run)[0], "handover", &mut bad);
    // Two deletions over the threshold of one: held.
    for u in ["u5", "u6"] {
        lab.slapd().ldapdelete(&format!("uid={u},{PEOPLE}")).await;
    }
    let (run, held) = lab.run("new", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    offenders(&held, "sync (held)", &mut bad);
    let state = lab.state().await;
    let head = state.seq.to_string();
    let u1 = format!("uid=u1,{PEOPLE}");

    // Every JSON output: no microsecond integers, every `at` an RFC 3339 time.
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["instance", "list"],
        vec!["deletions", "show"],
        vec!["audit", "missed-deletes"],
        vec!["audit", "gaps"],
        vec!["audit", "drift"],
        vec!["log", "show"],
        vec!["log", "verify"],
        vec!["object", "show", &u1],
        vec!["replay"],
        vec!["replay", "--until", "3"],
        vec!["replay", "--diff", "3", &head],
        vec!["replay", "--anchor", &u1],
        vec!["anchors", "show"],
        vec!["handover", "status"],
        vec!["mapping", "show"],
        vec!["playbook", "list"],
        vec!["sync", "--instance", "new", "--dry-run"],
        vec!["audit", "missed-deletes", "--refresh", "--instance", "new"],
        vec!["replay", "--verify"],
        vec!["replay", "--to-target", "--dry-run", "--instance", "new"],
        vec!["report", "--html", "report.html"],
        vec!["preflight", "--instance", "new"],
    ];
    for c in &commands {
        let mut args = c.clone();
        args.extend(["--format", "json"]);
        let run = lab.cli(&args);
        assert!(
            run.code == 0 || (["status", "sync"].contains(&c[0]) && run.code == 3),
            "{c:?}: {run:?}"
        );
        for v in documents(&run) {
            offenders(&v, &c.join(" "), &mut bad);
        }
    }
    assert_eq!(bad, Vec::<String>::new());
    // As the log stands now (`audit --refresh` imported).
    let state = lab.state().await;

    // Whole values: a log point is {"seq", "at"} in the replayed state as everywhere.
    let t = |a: &dirsync::project::At| json!({"seq": a.seq, "at": dirsync::output::time(a.at_us)});
    let replayed: Value =
        serde_json::from_str(&lab.cli(&["replay", "--format", "json"]).stdout).unwrap();
    let rel = &state.control.relationship;
    assert_eq!(
        replayed["relationship"]["since"],
        t(rel.since.as_ref().unwrap())
    );
    let new = &state.control.instances.instances["new"];
    assert_eq!(
        replayed["sync_history"]["syncs"]["new"],
        Value::from(
            state
                .sync_history
                .of("new")
                .iter()
                .map(t)
                .collect::<Vec<_>>()
        )
    );
    let listed: Value =
        serde_json::from_str(&lab.cli(&["instance", "list", "--format", "json"]).stdout).unwrap();
    let old = &state.control.instances.instances["old"];
    assert_eq!(
        listed,
        json!([
            {"instance": "new", "status": "active", "holds_relationship": true,
             "epoch": rel.epoch, "running": null,
             "last_completed": t(&new.last_completed.as_ref().unwrap().1),
             "cursor": t(&state.control.cursors.current["new"].at)},
            {"instance": "old", "status": old.status.as_str(), "holds_relationship": false,
             "epoch": null, "running": null,
             "last_completed": t(&old.last_completed.as_ref().unwrap().1),
             "cursor": state.control.cursors.current.get("old").map(|c| t(&c.at))},
        ])
    );

    // Tables: UTC by default whatever TZ says; with --local-time the same table with each
    // time at the local offset.
    let tables: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["instance", "list"],
        vec!["deletions", "show"],
        vec!["audit", "missed-deletes"],
        vec!["audit", "gaps"],
        vec!["audit", "drift"],
        vec!["log", "show"],
        vec!["object", "show", &u1],
        vec!["replay"],
        vec!["anchors", "show"],
        vec!["handover", "status"],
    ];
    for c in &tables {
        let utc = in_india(&lab, c);
        let mut args = vec!["--local-time"];
        args.extend(c);
        let local = in_india(&lab, &args);
        assert_eq!(utc.code, local.code, "{c:?}: {utc:?}");
        assert!(!utc.stdout.contains("+05:30"), "{c:?}: {utc:?}");
        let want = in_kolkata(&utc.stdout);
        assert_ne!(want, utc.stdout, "{c:?} shows no time: {utc:?}");
        assert_eq!(words(&local.stdout), words(&want), "{c:?}: {local:?}");
    }
}

//! What `[source] member_of` costs a delta import (issue 20): the planning of a one-change
//! delta (`delta_events`) over N users, half of them members of the `member_of` group
//! (through a nested group for a tenth of them), with and without `member_of`, and a delta
//! that changes a group's members. Pure: no server, no store.
//!
//! `scripts/bench member-of [--users N] [--runs R]`, or in a debug build (what the test
//! suite runs): `cargo test --bench member_of -- --users 100000`. Medians of R runs, ms.

use std::collections::BTreeSet;
use std::time::Instant;

use dirsync::log::event::{AttrValue, Attrs, ObjectKind, SourceObject};
use dirsync::project::{Meta, State};
use dirsync::source::Change;
use dirsync::sync::import::{delta_events, full_import_events, DeltaPlan};
use dirsync::sync::scope::Scope;

fn user(i: u64) -> SourceObject {
    SourceObject {
        anchor: format!("u{i:08}"),
        kind: ObjectKind::User,
        dn: format!("uid=user{i},ou=people,dc=example,dc=org"),
        attrs: Attrs::from([
            (
                "uid".into(),
                vec![AttrValue::Text(format!("user{i}").into())],
            ),
            ("title".into(), vec![AttrValue::Text("Clerk".into())]),
        ]),
        members: BTreeSet::new(),
    }
}

fn group(anchor: &str, cn: &str, members: BTreeSet<String>) -> SourceObject {
    SourceObject {
        anchor: anchor.into(),
        kind: ObjectKind::Group,
        dn: format!("cn={cn},ou=groups,dc=example,dc=org"),
        attrs: Attrs::from([("cn".into(), vec![AttrValue::Text(cn.into())])]),
        members,
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let users = arg("--users", 100_000);
    let runs = arg("--runs", 5) as usize;
    // Half the users are members: nine tenths of them directly, a tenth through `nested`.
    let mut direct = BTreeSet::new();
    let mut nested = BTreeSet::new();
    for i in (0..users).step_by(2) {
        if i % 20 == 0 {
            nested.insert(format!("u{i:08}"));
        } else {
            direct.insert(format!("u{i:08}"));
        }
    }
    direct.insert("g-nested".to_string());
    let mut dir: Vec<SourceObject> = (0..users).map(user).collect();
    dir.push(group("g-sync", "sync", direct));
    dir.push(group("g-nested", "nested", nested));
    let groups = vec!["cn=sync,ou=groups,dc=example,dc=org".to_string()];
    let with = Scope::new("dc=example,dc=org", &[], &[]).with_member_of(&groups);
    let without = Scope::new("dc=example,dc=org", &[], &[]);
    let mut state = State::default();
    let first = full_import_events(&state.objects, dir, &with, "r0");
    for (k, e) in first.iter().enumerate() {
        let m = Meta {
            seq: k as u64 + 1,
            instance: "i",
            recorded_at_us: 0,
        };
        state.apply(&m, e.clone());
    }
    let mut changed = user(4);
    changed
        .attrs
        .insert("title", vec![AttrValue::Text("Engineer".into())]);
    let one_user = vec![Change::Upsert {
        object: changed,
        whole: true,
    }];
    let one_group = vec![Change::Members {
        anchor: "g-sync".into(),
        added: vec![],
        removed: vec!["u00000002".into()],
    }];
    let time = |changes: &[Change], scope: &Scope| -> (f64, usize) {
        let mut ms = Vec::new();
        let mut n = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let plan = delta_events(&state.objects, changes, scope, "r1");
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            n = match plan {
                DeltaPlan::Events(e) => e.len(),
                DeltaPlan::NeedWhole(_) => 0,
            };
        }
        (median(ms), n)
    };
    println!("member_of delta planning, {users} users, median of {runs} runs (ms)");
    println!("{:<40} {:>10} {:>8}", "delta", "ms", "events");
    for (name, changes, scope) in [
        ("one user changed, no member_of", &one_user, &without),
        ("one user changed, member_of", &one_user, &with),
        ("one group's members changed, member_of", &one_group, &with),
    ] {
        let (ms, n) = time(changes, scope);
        println!("{name:<40} {ms:>10.2} {n:>8}");
    }
}

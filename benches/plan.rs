//! The plan phase with the mapping as CEL against the compiled-in mapping it replaced
//! (issue 20): `scripts/bench plan [--users N] [--runs R]`.
//!
//! A state of N OpenLDAP users (inetOrgPerson with the attributes the default table reads
//! and ten more) is planned, in one process and alternately, by:
//! * `compiled-in`: the mapping as it was in Rust before CEL (`compiled_in` below, a copy of
//!   the removed `map_object`, kept here only to be measured against);
//! * `cel default`: the default table, which is CEL;
//! * `cel +10`: the default table and ten more attributes (enterprise and core extras).
//!
//! Two plans each: `first sync` (nothing owned: every user is new) and `steady` (every user
//! owned and unchanged since its export: every user mapped and compared, nothing to do).
//! Medians of R runs, in milliseconds, and the ratios to `compiled-in`.

mod common;
// `common` names the lab's types; nothing of it runs here.
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use std::collections::BTreeSet;
use std::time::Instant;

use compact_str::CompactString;
use dirsync::config::{SourceKind, TargetKind};
use dirsync::log::event::{
    AttrValue, Attrs, Event, ExportApplied, ExportOp, ObjectImported, ObjectKind, SourceObject,
};
use dirsync::plan::focus::{Focus, Whole};
use dirsync::plan::mapping::{Desired, Mapping, RawRule, Unmappable};
use dirsync::plan::plan::{plan, plan_with, References, Removal};
use dirsync::project::{Meta, ObjectRecord, State};
use dirsync::target::{Mapped, MappedUser};

fn text(v: &str) -> Vec<AttrValue> {
    vec![AttrValue::Text(v.into())]
}

fn user(i: u64) -> SourceObject {
    let s = |v: String| text(&v);
    SourceObject {
        anchor: format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7919),
        kind: ObjectKind::User,
        dn: format!("uid=user{i},ou=people,dc=example,dc=org"),
        attrs: Attrs::from([
            ("uid".into(), s(format!("user{i}"))),
            ("cn".into(), s(format!("User {i}"))),
            ("sn".into(), s(format!("N{i}"))),
            ("givenname".into(), text("User")),
            ("mail".into(), s(format!("user{i}@example.org"))),
            ("title".into(), text("Clerk")),
            ("departmentnumber".into(), text("Sales")),
            ("employeenumber".into(), s(format!("{i}"))),
            ("employeetype".into(), text("staff")),
            ("o".into(), text("Example")),
            ("businesscategory".into(), text("Retail")),
            ("carlicense".into(), s(format!("CL-{i}"))),
            ("displayname".into(), s(format!("User Number {i}"))),
            ("preferredlanguage".into(), text("en")),
            ("l".into(), text("Berlin")),
            ("st".into(), text("BE")),
            (
                "labeleduri".into(),
                s(format!("https://example.org/~user{i}")),
            ),
            ("ou".into(), text("People")),
        ]),
        members: BTreeSet::new(),
    }
}

/// The ten extra attributes of `cel +10`.
fn extras() -> Vec<RawRule> {
    let e = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:";
    let rows = [
        (format!("{e}employeeNumber"), "src.employeenumber[0]"),
        (
            format!("{e}costCenter"),
            "has(src.carlicense) ? src.carlicense[0] : null",
        ),
        (format!("{e}organization"), "has(src.o) ? src.o[0] : null"),
        (
            format!("{e}division"),
            "has(src.businesscategory) ? src.businesscategory[0] : null",
        ),
        (
            "userType".into(),
            "has(src.employeetype) ? src.employeetype[0] : null",
        ),
        ("nickName".into(), "src.uid[0]"),
        (
            "preferredLanguage".into(),
            "has(src.preferredlanguage) ? src.preferredlanguage[0] : null",
        ),
        (
            "locale".into(),
            "has(src.st) ? src.st[0].lowerAscii() : null",
        ),
        (
            "timezone".into(),
            "has(src.l) ? 'Europe/' + src.l[0] : null",
        ),
        (
            "profileUrl".into(),
            "has(src.labeleduri) ? src.labeleduri[0] : null",
        ),
    ];
    rows.into_iter()
        .enumerate()
        .map(|(i, (key, expr))| RawRule {
            key,
            expr: expr.into(),
            line: i + 1,
        })
        .collect()
}

// ---- the compiled-in mapping the CEL table replaced (OpenLDAP users) ----

fn first(a: &Attrs, name: &str) -> Option<CompactString> {
    a.get(name)?.iter().find_map(|v| match v {
        AttrValue::Text(s) if !s.trim().is_empty() => Some(CompactString::new(s.trim())),
        _ => None,
    })
}

fn compiled_in(_anchor: &str, o: &ObjectRecord) -> Result<Desired, Unmappable> {
    let a = &o.attrs;
    let user_name = first(a, "mail")
        .or_else(|| first(a, "uid"))
        .ok_or_else(|| Unmappable("neither mail nor uid: no userName to export".into()))?;
    Ok(Desired::User(MappedUser {
        user_name,
        display_name: first(a, "displayname").or_else(|| first(a, "cn")),
        given_name: first(a, "givenname"),
        family_name: first(a, "sn"),
        email: first(a, "mail"),
        title: first(a, "title"),
        department: first(a, "departmentnumber").or_else(|| first(a, "ou")),
        active: !first(a, "nsaccountlock").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        extra: Default::default(),
    }))
}

/// N users imported; with `owned`, each exported as `mapping` maps it.
fn state(users: u64, owned: Option<&Mapping>) -> State {
    let mut s = State::default();
    let mut seq = 0;
    let mut apply = |s: &mut State, e: Event| {
        seq += 1;
        let m = Meta {
            seq,
            instance: "bench",
            recorded_at_us: seq as i64,
        };
        s.apply(&m, e);
    };
    for i in 0..users {
        apply(
            &mut s,
            Event::ObjectImported(ObjectImported {
                object: user(i),
                returned: false,
            }),
        );
    }
    if let Some(mapping) = owned {
        let states: Vec<(String, Mapped)> = s
            .objects
            .live()
            .map(|(a, r)| match mapping.map(a, r) {
                Ok(Desired::User(u)) => (a.clone(), Mapped::User(u)),
                other => panic!("{a}: {other:?}"),
            })
            .collect();
        for (i, (anchor, m)) in states.into_iter().enumerate() {
            apply(
                &mut s,
                Event::ExportApplied(ExportApplied {
                    epoch: 1,
                    anchor,
                    kind: ObjectKind::User,
                    op: ExportOp::Create,
                    target_id: format!("t{i}"),
                    state: serde_json::to_value(&m).ok(),
                    etag: None,
                }),
            );
        }
    }
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = common::arg(&args, "--users", 100_000);
    let runs = common::arg(&args, "--runs", 7).max(1) as usize;
    let default = Mapping::default_for(SourceKind::Openldap, TargetKind::Scim);
    let plus10 = Mapping::compile(SourceKind::Openldap, TargetKind::Scim, &extras(), &[])
        .expect("the extras compile");
    let time = |f: &dyn Fn() -> usize, expect: usize| {
        let t = Instant::now();
        let n = f();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(n, expect);
        ms
    };
    println!(
        "plan of {users} OpenLDAP users, {runs} runs, medians (ms); {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "plan", "compiled-in", "cel default", "cel +10", "default x", "+10 x"
    );
    for (label, owned) in [("first sync", false), ("steady", true)] {
        // Steady: owned as each mapping maps it, so each plan has nothing to do.
        let s_default = state(users, owned.then_some(&default));
        let s_plus10 = if owned {
            state(users, Some(&plus10))
        } else {
            state(users, None)
        };
        let n = if owned { 0 } else { users as usize };
        let count = |p: dirsync::plan::plan::Plan| p.new.len() + p.updates.len();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            // Alternate the order so that neither always runs first.
            let mut steps: [(&mut Vec<f64>, &dyn Fn() -> usize); 3] = [
                (&mut a, &|| {
                    count(plan_with(
                        &s_default,
                        None,
                        &References::none(),
                        &Removal::delete(),
                        &compiled_in,
                        &Focus::Whole(Whole::Asked),
                    ))
                }),
                (&mut b, &|| count(plan(&s_default, &default, None))),
                (&mut c, &|| count(plan(&s_plus10, &plus10, None))),
            ];
            if run % 2 == 1 {
                steps.reverse();
            }
            for (out, f) in steps {
                out.push(time(f, n));
            }
        }
        let (a, b, c) = (median(&mut a), median(&mut b), median(&mut c));
        println!(
            "{label:<12} {a:>12.1} {b:>12.1} {c:>12.1} {:>10.2} {:>10.2}",
            b / a,
            c / a
        );
    }
}

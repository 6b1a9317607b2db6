//! History: what changed between two points of the log (`replay --diff`), and how the
//! target would differ under another configuration (`replay --what-if`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{ledger_name, show_values, Item};
use crate::log::event::{AttrName, Attrs, DeletionEvidence, EffectiveScope, ObjectKind};
use crate::plan::mapping::Mapping;
use crate::plan::plan::plan;
use crate::project::{Deletion, LedgerEntry, ObjectRecord, State};
use crate::sync::scope::Scope;
use crate::target::Op;

/// Added, changed and deleted items of one projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<Item>,
    pub changed: Vec<Item>,
    pub deleted: Vec<Item>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.deleted.is_empty()
    }

    /// Rows of (what, kind, anchor, name, detail) for a table or CSV, prefixed by `section`.
    pub fn rows(&self, section: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for (what, items) in [
            ("added", &self.added),
            ("changed", &self.changed),
            ("deleted", &self.deleted),
        ] {
            for i in items {
                let mut r = vec![section.to_string()];
                r.extend(i.row(what));
                rows.push(r);
            }
        }
        rows
    }
}

/// What changed between two states of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub from_seq: u64,
    pub to_seq: u64,
    /// Source objects: live in scope at one point and not the other, or changed.
    pub objects: Changes,
    /// The ownership ledger: objects we owned in the target.
    pub ledger: Changes,
    /// Reconciles of the whole target recorded in between: drift found and repaired.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reconciles: Vec<super::drift::Row>,
    /// Added, changed and deleted per projection and kind.
    pub totals: Vec<Total>,
}

pub const TOTAL_HEADERS: [&str; 5] = ["PROJECTION", "KIND", "ADDED", "CHANGED", "DELETED"];

impl Total {
    pub fn row(&self) -> Vec<String> {
        vec![
            self.projection.to_string(),
            self.kind.as_str().to_string(),
            self.added.to_string(),
            self.changed.to_string(),
            self.deleted.to_string(),
        ]
    }
}

pub const DIFF_HEADERS: [&str; 6] = ["PROJECTION", "CHANGE", "KIND", "ANCHOR", "NAME", "DETAIL"];

impl Diff {
    pub fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = self.objects.rows("source");
        rows.extend(self.ledger.rows("ledger"));
        rows.extend(self.reconciles.iter().map(|r| {
            vec![
                "target".to_string(),
                "reconciled".to_string(),
                String::new(),
                String::new(),
                r.instance.clone(),
                r.summary(),
            ]
        }));
        rows
    }
}

fn live(r: Option<&ObjectRecord>) -> Option<&ObjectRecord> {
    r.filter(|r| r.live())
}

/// Attribute-level differences between two live records, with their values.
fn object_changes(a: &ObjectRecord, b: &ObjectRecord) -> Vec<String> {
    let mut out = value_changes(a, &b.attrs, &b.dn);
    if a.members != b.members {
        let added = b.members.difference(&a.members).count();
        let removed = a.members.difference(&b.members).count();
        out.push(format!("members +{added} -{removed}"));
    }
    out
}

/// What changed from `a` to a record with `attrs` and `dn`: `dn: OLD -> NEW` and each
/// attribute as `name: 'old' -> 'new'` (`(none)` for no value), by name.
pub fn value_changes(a: &ObjectRecord, attrs: &Attrs, dn: &str) -> Vec<String> {
    let mut out = Vec::new();
    if a.dn != dn {
        out.push(format!("dn: {} -> {dn}", a.dn));
    }
    let names: BTreeSet<&AttrName> = a.attrs.keys().chain(attrs.keys()).collect();
    for n in names {
        let (x, y) = (a.attrs.get(n), attrs.get(n));
        if x != y {
            out.push(format!("{n}: {} -> {}", show_values(x), show_values(y)));
        }
    }
    out
}

fn deletion_detail(d: Option<&Deletion>) -> Vec<String> {
    match d.map(|d| &d.evidence) {
        Some(DeletionEvidence::LeftScope { dn }) => vec![format!("left-scope: {dn}")],
        Some(e) => vec![e.label().to_string()],
        None => vec![],
    }
}

/// Added, changed and deleted items of one kind in one projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Total {
    pub projection: &'static str,
    pub kind: ObjectKind,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
}

impl Changes {
    /// The counts per kind (users, then groups), kinds with no change left out.
    fn totals(&self, projection: &'static str) -> Vec<Total> {
        [ObjectKind::User, ObjectKind::Group]
            .into_iter()
            .map(|kind| {
                let n = |l: &[Item]| l.iter().filter(|i| i.kind == kind).count() as u64;
                Total {
                    projection,
                    kind,
                    added: n(&self.added),
                    changed: n(&self.changed),
                    deleted: n(&self.deleted),
                }
            })
            .filter(|t| t.added + t.changed + t.deleted > 0)
            .collect()
    }
}

fn owned(l: Option<&LedgerEntry>) -> Option<&LedgerEntry> {
    l.filter(|l| l.deleted.is_none())
}

/// What changed from `a` to `b` (pure). Items are sorted by anchor.
pub fn diff(a: &State, b: &State) -> Diff {
    let mut out = Diff {
        from_seq: a.seq,
        to_seq: b.seq,
        ..Default::default()
    };
    let anchors: BTreeSet<&String> = a
        .objects
        .objects
        .keys()
        .chain(b.objects.objects.keys())
        .collect();
    for anchor in anchors {
        let (ra, rb) = (a.objects.objects.get(anchor), b.objects.objects.get(anchor));
        let item = |r: &ObjectRecord, detail: Vec<String>| Item {
            anchor: anchor.clone(),
            kind: r.kind,
            name: r.dn.clone(),
            detail,
        };
        match (live(ra.map(|r| &**r)), live(rb.map(|r| &**r))) {
            (None, Some(r)) => out.objects.added.push(item(r, vec![])),
            (Some(r), None) => out.objects.deleted.push(item(
                r,
                deletion_detail(rb.and_then(|r| r.deletion.as_deref())),
            )),
            (Some(x), Some(y)) if x != y => {
                let d = object_changes(x, y);
                if !d.is_empty() {
                    out.objects.changed.push(item(y, d));
                }
            }
            _ => {}
        }
    }
    let anchors: BTreeSet<&String> = a
        .ledger
        .entries
        .keys()
        .chain(b.ledger.entries.keys())
        .collect();
    for anchor in anchors {
        let (la, lb) = (
            owned(a.ledger.entries.get(anchor).map(|l| &**l)),
            owned(b.ledger.entries.get(anchor).map(|l| &**l)),
        );
        let item = |s: &State, l: &LedgerEntry, detail: Vec<String>| Item {
            anchor: anchor.clone(),
            kind: l.kind,
            name: ledger_name(s, anchor),
            detail,
        };
        match (la, lb) {
            (None, Some(l)) => {
                out.ledger
                    .added
                    .push(item(b, l, vec![format!("target id {}", l.target_id)]))
            }
            (Some(l), None) => {
                out.ledger
                    .deleted
                    .push(item(a, l, vec![format!("target id {}", l.target_id)]))
            }
            (Some(x), Some(y)) => {
                let mut d = crate::target::mapped_changes(x.state.as_ref(), y.state.as_ref());
                if x.target_id != y.target_id {
                    d.push(format!("target id {}", y.target_id));
                }
                if !d.is_empty() {
                    out.ledger.changed.push(item(b, y, d));
                }
            }
            (None, None) => {}
        }
    }
    let (from, to) = (a.seq.min(b.seq), a.seq.max(b.seq));
    let later = if b.seq >= a.seq { b } else { a };
    out.reconciles = later
        .control
        .relationship
        .reconciles
        .iter()
        .filter(|r| r.at.seq > from && r.at.seq <= to)
        .map(super::drift::Row::of)
        .collect();
    out.totals = out.objects.totals("source");
    out.totals.extend(out.ledger.totals("ledger"));
    out
}

/// How the target would differ from today's under another scope and mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WhatIf {
    /// Owned today, out of the other scope: would be deleted from the target.
    pub leave: Vec<Item>,
    /// In the other scope and not in the target today: would be created (or matched).
    pub join: Vec<Item>,
    /// Owned today and kept, but mapped differently: would be updated.
    pub change: Vec<Item>,
    /// In the other scope but not exportable under its mapping.
    pub unmappable: Vec<Item>,
    /// Would be exported without a reference attribute (`manager`) whose value names no
    /// object in the other scope (as `sync` reports `unresolved_reference`).
    pub unresolved: Vec<Item>,
    /// The parts of the other configuration the log cannot evaluate, and why: what the
    /// lists above may leave out.
    pub cannot_evaluate: Vec<CannotEvaluate>,
    /// The scope and mapping the log's objects were imported under, as last recorded
    /// (None: a log from before such records; the command's configuration stood in).
    pub recorded: Option<crate::project::EffectiveRecord>,
}

/// A part of a what-if configuration the log cannot (wholly) evaluate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CannotEvaluate {
    pub part: crate::log::event::ConfigPart,
    pub why: String,
}

pub const WHAT_IF_HEADERS: [&str; 5] = ["CHANGE", "KIND", "ANCHOR", "NAME", "DETAIL"];

impl WhatIf {
    pub fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for (what, items) in [
            ("leave", &self.leave),
            ("join", &self.join),
            ("change", &self.change),
            ("unmappable", &self.unmappable),
            ("unresolved_reference", &self.unresolved),
        ] {
            rows.extend(items.iter().map(|i| i.row(what)));
        }
        rows
    }
}

/// The configuration a what-if replays under: its DN rules and `member_of` (`scope`), and,
/// when known, its filters and attributes (`other`) and those the log's objects were
/// imported under (`under`).
pub struct Other<'a> {
    pub scope: &'a Scope,
    pub other: Option<&'a EffectiveScope>,
    pub under: Option<&'a EffectiveScope>,
}

/// Replay the recorded source history under `scope` and the mapping of `kind`, and compare
/// with the target as the ledger holds it today (pure).
pub fn what_if(state: &State, scope: &Scope, mapping: &Mapping) -> WhatIf {
    what_if_under(
        state,
        &Other {
            scope,
            other: None,
            under: None,
        },
        mapping,
    )
}

/// [`what_if`] with the other configuration's filters and `member_of` evaluated over the
/// projection (RFC 4515, see [`crate::plan::filter`]).
///
/// The log records only what was in the scope it was imported under: a wider scope can
/// bring back objects that moved out of it (with their last known attributes) but not
/// objects the log never saw; such parts are listed in `cannot_evaluate`. Group members
/// that would only join are not in the target yet, so they are not counted as a group's
/// change.
pub fn what_if_under(state: &State, other: &Other<'_>, mapping: &Mapping) -> WhatIf {
    use crate::log::event::ConfigPart;
    use crate::plan::effective::{dn_widening, filter_change, not_held};
    use crate::plan::filter::{self, Filter};
    let scope = other.scope;
    let mut cannot: Vec<CannotEvaluate> = Vec::new();
    let mut say = |part: ConfigPart, why: String| cannot.push(CannotEvaluate { part, why });
    // The filters to evaluate: (which, the other one, the one the objects were imported
    // under, as configured).
    let mut filters: Vec<(ObjectKind, &str, Filter, Option<Filter>, String)> = Vec::new();
    let mut held: Vec<String> = Vec::new();
    if let (Some(o), Some(u)) = (other.other, other.under) {
        held.clone_from(&u.attributes);
        let (ob, ub) = (
            crate::source::dn::normalise_dn(&o.base_dn),
            crate::source::dn::normalise_dn(&u.base_dn),
        );
        if ob != ub && !Scope::new(&u.base_dn, &[], &[]).contains(&o.base_dn) {
            say(
                ConfigPart::Base,
                format!(
                    "base_dn {} is not under {}, which the log's objects were imported under: objects outside it are not in the log",
                    o.base_dn, u.base_dn
                ),
            );
        }
        for (kind, which, part, of, uf) in [
            (
                ObjectKind::User,
                "users",
                ConfigPart::Users,
                &o.users,
                &u.users,
            ),
            (
                ObjectKind::Group,
                "groups",
                ConfigPart::Groups,
                &o.groups,
                &u.groups,
            ),
        ] {
            if of.trim() == uf.trim() {
                continue;
            }
            match filter::parse(of) {
                Err(e) => say(
                    part,
                    format!("the {which} filter `{of}` cannot be read here ({e}): not evaluated"),
                ),
                Ok(new) => {
                    if let Err(why) = filter_change(which, uf, of, &held) {
                        say(part, why);
                    }
                    filters.push((kind, which, new, filter::parse(uf).ok(), of.clone()));
                }
            }
        }
        if ob == ub {
            for why in dn_widening(u, o) {
                say(ConfigPart::Exclude, why);
            }
        }
        let new = not_held(&o.attributes, &held);
        if !new.is_empty() {
            say(
                ConfigPart::Attributes,
                format!(
                    "the mapping reads {}, which the log does not hold: mapped as if absent",
                    new.join(", ")
                ),
            );
        }
    }
    let held_fn = |a: &str| held.iter().any(|h| h == a);
    let mut sim = State {
        seq: state.seq,
        ledger: state.ledger.clone(),
        ..Default::default()
    };
    let mut came_back = BTreeSet::new();
    let mut why_out: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for (anchor, r) in &state.objects.objects {
        let mut r = r.clone();
        // Where it would stand under the other configuration, if the log can tell.
        let before = r.deletion.as_ref().map(|d| &d.evidence);
        let candidate = match before {
            None => true,
            Some(DeletionEvidence::LeftScope { .. })
            | Some(DeletionEvidence::OutOfFilter { .. })
            | Some(DeletionEvidence::NotMember { .. }) => true,
            Some(_) => false,
        };
        if !candidate {
            sim.objects.objects.insert(anchor.clone(), r);
            continue;
        }
        let dn = match before {
            Some(DeletionEvidence::LeftScope { dn }) => dn.clone(),
            _ => r.dn.clone(),
        };
        let mut out: Option<String> = (!scope.contains(&dn)).then(|| format!("out of scope: {dn}"));
        if out.is_none() {
            for (kind, which, f, old, text) in &filters {
                if *kind != r.kind {
                    continue;
                }
                match f.eval(&r.attrs, &held_fn, old.as_ref()) {
                    Ok(true) => {}
                    Ok(false) => out = Some(format!("no longer matches the {which} filter {text}")),
                    Err(u) => {
                        let e = unknown.entry(which).or_insert((0, u.to_string()));
                        e.0 += 1;
                    }
                }
            }
        }
        // An object set aside by a filter stays out unless the other filter is evaluated.
        if out.is_none() {
            if let Some(DeletionEvidence::OutOfFilter { which, filter }) = before {
                let evaluated = filters.iter().any(|(_, w, ..)| w == which);
                if !evaluated {
                    out = Some(format!("no longer matches the {which} filter {filter}"));
                }
            }
        }
        match out {
            Some(why) => {
                if r.live() {
                    r.deletion = Some(Box::new(Deletion {
                        evidence: DeletionEvidence::LeftScope { dn: dn.clone() },
                        at: r.last_changed,
                        instance: "what-if".into(),
                    }));
                    why_out.insert(anchor.clone(), why);
                }
            }
            None => {
                if !r.live() {
                    r.dn = dn;
                    r.deletion = None;
                    came_back.insert(anchor.clone());
                }
            }
        }
        sim.objects.objects.insert(anchor.clone(), r);
    }
    // member_of over what the other configuration keeps, as an import evaluates it.
    if !scope.member_of().is_empty() {
        let missing: Vec<&String> = scope
            .member_of()
            .iter()
            .filter(|g| {
                let g = crate::source::dn::normalise_dn(g);
                !sim.objects.live().any(|(_, r)| {
                    r.kind == ObjectKind::Group && crate::source::dn::normalise_dn(&r.dn) == g
                })
            })
            .collect();
        if !missing.is_empty() {
            say(
                ConfigPart::MemberOf,
                format!(
                    "member_of names {}, which the log does not hold as a group: its members count as none",
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let members: BTreeSet<String> = {
            let objects = &sim.objects.objects;
            let roots: Vec<&String> = objects
                .iter()
                .filter(|(_, r)| {
                    r.kind == ObjectKind::Group && r.live() && scope.is_member_of_group(&r.dn)
                })
                .map(|(a, _)| a)
                .collect();
            crate::sync::import::members_of(roots.into_iter(), |a| objects.get(a).map(|r| &**r))
                .into_iter()
                .map(str::to_string)
                .collect()
        };
        let groups = scope.member_of().join("; ");
        for (anchor, r) in sim.objects.objects.iter_mut() {
            if r.kind != ObjectKind::User || !r.live() || members.contains(anchor) {
                continue;
            }
            r.deletion = Some(Box::new(Deletion {
                evidence: DeletionEvidence::NotMember {
                    groups: scope.member_of().to_vec(),
                },
                at: r.last_changed,
                instance: "what-if".into(),
            }));
            came_back.remove(anchor);
            why_out.insert(anchor.clone(), format!("not a member of {groups}"));
        }
    }
    for (which, (n, why)) in unknown {
        say(
            if which == "users" {
                ConfigPart::Users
            } else {
                ConfigPart::Groups
            },
            format!("the {which} filter cannot be evaluated for {n} object(s): {why}"),
        );
    }
    let p = plan(&sim, mapping, None);
    let dn = |a: &str| {
        sim.objects
            .objects
            .get(a)
            .map(|r| r.dn.clone())
            .unwrap_or_default()
    };
    let mut out = WhatIf {
        cannot_evaluate: cannot,
        recorded: state.objects.effective.clone(),
        ..WhatIf::default()
    };
    for op in &p.deletes {
        let a = op.anchor();
        out.leave.push(Item {
            anchor: a.to_string(),
            kind: op.kind(),
            name: ledger_name(state, a),
            detail: vec![why_out
                .get(a)
                .cloned()
                .unwrap_or_else(|| format!("out of scope: {}", dn(a)))],
        });
    }
    for (a, m) in &p.new {
        let mut detail = vec![dn(a)];
        if came_back.contains(a) {
            detail.push("back in scope (last known attributes)".into());
        }
        out.join.push(Item {
            anchor: a.clone(),
            kind: m.kind(),
            name: m.name().to_string(),
            detail,
        });
    }
    for op in &p.updates {
        if let Op::Update {
            anchor, from, to, ..
        } = op
        {
            out.change.push(Item {
                anchor: anchor.clone(),
                kind: to.kind(),
                name: to.name().to_string(),
                detail: crate::target::mapped_changes(from.as_ref(), Some(to)),
            });
        }
    }
    for (a, why) in &p.unmappable {
        out.unmappable.push(Item {
            anchor: a.clone(),
            kind: sim
                .objects
                .objects
                .get(a)
                .map_or(crate::log::event::ObjectKind::User, |r| r.kind),
            name: dn(a),
            detail: vec![why.clone()],
        });
    }
    for d in &p.dangling {
        out.unresolved.push(Item {
            anchor: d.anchor.clone(),
            kind: crate::log::event::ObjectKind::User,
            name: dn(&d.anchor),
            detail: vec![d.detail()],
        });
    }
    for v in [
        &mut out.leave,
        &mut out.join,
        &mut out.change,
        &mut out.unmappable,
        &mut out.unresolved,
    ] {
        v.sort_by(|x, y| x.anchor.cmp(&y.anchor));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::Log;
    use crate::log::event::{
        AttrValue, Attrs, Event, ExportOp, ObjectChanged, ObjectImported, ObjectKind, SourceObject,
    };

    #[test]
    fn diff_names_added_changed_and_deleted() {
        let mut l = Log::new();
        l.import("a1", "uid=u1,ou=p,dc=t", "u1");
        l.import("a2", "uid=u2,ou=p,dc=t", "u2");
        l.export("a1", ExportOp::Create, "u1");
        l.export("a2", ExportOp::Create, "u2");
        let before = l.state.clone();
        l.import("a3", "uid=u3,ou=p,dc=t", "u3");
        l.at(
            "a",
            Event::ObjectChanged(ObjectChanged {
                anchor: "a1".into(),
                set: Attrs::from([("title".into(), vec![AttrValue::Text("Boss".into())])]),
                ..Default::default()
            }),
        );
        l.delete(
            "a2",
            DeletionEvidence::LeftScope {
                dn: "uid=u2,ou=x,dc=t".into(),
            },
        );
        l.export("a2", ExportOp::Delete, "");
        l.export("a1", ExportOp::Update, "u1-renamed");
        l.export("a3", ExportOp::Create, "u3");
        let d = diff(&before, &l.state);
        let names = |v: &[Item]| v.iter().map(|i| i.anchor.clone()).collect::<Vec<_>>();
        assert_eq!(names(&d.objects.added), ["a3"]);
        assert_eq!(names(&d.objects.changed), ["a1"]);
        assert_eq!(d.objects.changed[0].detail, ["title: (none) -> 'Boss'"]);
        assert_eq!(names(&d.objects.deleted), ["a2"]);
        assert_eq!(
            d.objects.deleted[0].detail,
            ["left-scope: uid=u2,ou=x,dc=t"]
        );
        assert_eq!(names(&d.ledger.added), ["a3"]);
        assert_eq!(names(&d.ledger.changed), ["a1"]);
        assert_eq!(
            d.ledger.changed[0].detail,
            [
                r#"display_name: "u1" -> "u1-renamed""#,
                r#"user_name: "u1" -> "u1-renamed""#
            ]
        );
        let total = |projection, added, changed, deleted| Total {
            projection,
            kind: ObjectKind::User,
            added,
            changed,
            deleted,
        };
        assert_eq!(
            d.totals,
            [total("source", 1, 1, 1), total("ledger", 1, 1, 1)]
        );
        assert_eq!(names(&d.ledger.deleted), ["a2"]);
        assert_eq!(d.ledger.deleted[0].name, "u2");
        assert!(diff(&l.state, &l.state).objects.is_empty());
        assert_eq!(d.rows().len(), 6);
        // A reconcile in between is listed with what it found and repaired.
        let mid = l.state.clone();
        l.at(
            "b",
            Event::TargetReconciled(crate::log::event::TargetReconciled {
                run_id: "r".into(),
                listed: 3,
                missing: 2,
                recreated: 2,
                ..Default::default()
            }),
        );
        let d = diff(&before, &l.state);
        assert_eq!(d.reconciles.len(), 1);
        let last = d.rows().pop().unwrap();
        assert_eq!(last[..5], ["target", "reconciled", "", "", "b"]);
        assert!(last[5].contains("found 2 missing") && last[5].contains("2 recreated"));
        assert!(diff(&before, &mid).reconciles.is_empty());
    }

    #[test]
    fn what_if_evaluates_filters_and_member_of_over_the_log_or_says_why_not() {
        use crate::log::event::ConfigPart;
        let mut l = Log::new();
        for a in ["a1", "a2", "a3", "a4"] {
            l.import(a, &format!("uid={a},ou=p,dc=t"), a);
            l.export(a, ExportOp::Create, a);
        }
        for a in ["a1", "a2"] {
            l.at(
                "a",
                Event::ObjectChanged(ObjectChanged {
                    anchor: a.into(),
                    set: Attrs::from([("title".into(), vec![AttrValue::Text("Engineer".into())])]),
                    ..Default::default()
                }),
            );
        }
        let under = EffectiveScope {
            base_dn: "dc=t".into(),
            users: "(objectClass=inetOrgPerson)".into(),
            groups: "(objectClass=groupOfNames)".into(),
            attributes: vec!["cn".into(), "title".into(), "uid".into()],
            ..Default::default()
        };
        let kind = &Mapping::default_for(
            crate::config::SourceKind::Openldap,
            crate::config::TargetKind::Scim,
        );
        let scope = Scope::new("dc=t", &[], &[]);
        let run = |users: &str| {
            let other = EffectiveScope {
                users: users.into(),
                ..under.clone()
            };
            what_if_under(
                &l.state,
                &Other {
                    scope: &scope,
                    other: Some(&other),
                    under: Some(&under),
                },
                kind,
            )
        };
        let users = "(&(objectClass=inetOrgPerson)(title=ENGINEER))";
        let w = run(users);
        let item = |a: &str| Item {
            anchor: a.into(),
            kind: ObjectKind::User,
            name: a.into(),
            detail: vec![format!("no longer matches the users filter {users}")],
        };
        assert_eq!(
            (w.leave, w.cannot_evaluate),
            (vec![item("a3"), item("a4")], vec![])
        );
        // Wider, over an attribute the log does not hold: said, part by part.
        let w = run("(objectClass=person)");
        assert!(w.leave.is_empty());
        assert_eq!(
            w.cannot_evaluate,
            [
                CannotEvaluate {
                    part: ConfigPart::Users,
                    why: "the users filter `(objectClass=person)` is wider than or different from `(objectClass=inetOrgPerson)`, which the log's objects were imported under: objects it admits may not be in the log".into(),
                },
                CannotEvaluate {
                    part: ConfigPart::Users,
                    why: "the users filter cannot be evaluated for 4 object(s): it tests objectclass, which the log does not hold".into(),
                },
            ]
        );
        // member_of: the users outside the group leave; a group the log lacks is named.
        let g = "cn=g,ou=g,dc=t";
        l.at(
            "a",
            Event::ObjectImported(crate::log::event::ObjectImported {
                object: crate::log::event::SourceObject {
                    anchor: "g1".into(),
                    kind: ObjectKind::Group,
                    dn: g.into(),
                    attrs: Attrs::new(),
                    members: ["a2".to_string()].into(),
                },
                returned: false,
            }),
        );
        let groups = vec![g.to_string(), "cn=nope,dc=t".to_string()];
        let scope = Scope::new("dc=t", &[], &[]).with_member_of(&groups);
        let w = what_if_under(
            &l.state,
            &Other {
                scope: &scope,
                other: Some(&under),
                under: Some(&under),
            },
            kind,
        );
        let left: Vec<&str> = w.leave.iter().map(|i| i.anchor.as_str()).collect();
        assert_eq!(left, ["a1", "a3", "a4"]);
        assert_eq!(
            w.cannot_evaluate,
            [CannotEvaluate {
                part: ConfigPart::MemberOf,
                why: "member_of names cn=nope,dc=t, which the log does not hold as a group: its members count as none".into(),
            }]
        );
    }

    #[test]
    fn what_if_a_narrower_scope_lists_the_objects_outside_it() {
        let mut l = Log::new();
        for (a, ou) in [("a1", "p"), ("a2", "p"), ("a3", "q"), ("a4", "q")] {
            l.import(a, &format!("uid={a},ou={ou},dc=t"), a);
            l.export(a, ExportOp::Create, &format!("{a}@t"));
        }
        // a5 moved out of scope before; a wider scope would bring it back.
        l.import("a5", "uid=a5,ou=p,dc=t", "a5");
        l.delete(
            "a5",
            DeletionEvidence::LeftScope {
                dn: "uid=a5,ou=r,dc=t".into(),
            },
        );
        // The ledger's state is as the mapping of ldap users makes it: nothing to change.
        let kind = &Mapping::default_for(
            crate::config::SourceKind::Openldap,
            crate::config::TargetKind::Scim,
        );
        let same = what_if(
            &l.state,
            &Scope::new("dc=t", &["ou=p,dc=t".into(), "ou=q,dc=t".into()], &[]),
            kind,
        );
        assert!(same.leave.is_empty() && same.join.is_empty(), "{same:?}");
        let narrow = what_if(
            &l.state,
            &Scope::new("dc=t", &["ou=p,dc=t".into()], &[]),
            kind,
        );
        let names = |v: &[Item]| v.iter().map(|i| i.anchor.clone()).collect::<Vec<_>>();
        assert_eq!(names(&narrow.leave), ["a3", "a4"]);
        assert!(narrow.join.is_empty());
        let wide = what_if(&l.state, &Scope::new("dc=t", &[], &[]), kind);
        assert_eq!(names(&wide.join), ["a5"]);
        assert!(wide.join[0].detail[1].contains("back in scope"));
        assert_eq!(
            wide.rows().len(),
            wide.join.len() + wide.change.len() + wide.leave.len()
        );
    }

    #[test]
    fn what_if_lists_references_that_would_name_no_object() {
        let mut l = Log::new();
        let text = |s: &str| vec![AttrValue::Text(s.into())];
        // b1's manager a1 is in ou=p; b2's is nobody the log knows.
        l.import("a1", "uid=a1,ou=p,dc=t", "a1");
        for (b, manager) in [("b1", "uid=a1,ou=p,dc=t"), ("b2", "uid=zz,ou=p,dc=t")] {
            l.at(
                "a",
                Event::ObjectImported(ObjectImported {
                    object: SourceObject {
                        anchor: b.into(),
                        kind: ObjectKind::User,
                        dn: format!("uid={b},ou=q,dc=t"),
                        attrs: Attrs::from([
                            ("uid".into(), text(b)),
                            ("cn".into(), text(b)),
                            ("manager".into(), text(manager)),
                        ]),
                        members: Default::default(),
                    },
                    returned: false,
                }),
            );
        }
        let mapping =
            crate::plan::mapping::testkit::with_manager(crate::config::SourceKind::Openldap);
        // Everything in scope: only b2's manager names no object.
        let all = what_if(&l.state, &Scope::new("dc=t", &[], &[]), &mapping);
        let unresolved = |w: &WhatIf| {
            w.unresolved
                .iter()
                .map(|i| (i.anchor.clone(), i.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            unresolved(&all),
            [("b2".to_string(), "uid=b2,ou=q,dc=t".to_string())]
        );
        assert!(
            all.unresolved[0].detail[0].contains("uid=zz,ou=p,dc=t"),
            "{all:?}"
        );
        // Only ou=q: a1 is out of scope, so b1's manager names no object either.
        let q = what_if(
            &l.state,
            &Scope::new("dc=t", &["ou=q,dc=t".into()], &[]),
            &mapping,
        );
        assert_eq!(
            unresolved(&q),
            [
                ("b1".to_string(), "uid=b1,ou=q,dc=t".to_string()),
                ("b2".to_string(), "uid=b2,ou=q,dc=t".to_string())
            ]
        );
        let rows = q.rows();
        assert_eq!(
            rows.iter()
                .filter(|r| r[0] == "unresolved_reference")
                .count(),
            2,
            "{rows:?}"
        );
    }
}

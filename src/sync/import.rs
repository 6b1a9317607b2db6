//! Turning what an import saw into events: the pure half of importing.
//!
//! A full import is diffed against the source projection, so an unchanged directory appends
//! one `ImportCompleted` and nothing else: the log grows with change, not with size.

use std::collections::HashSet;

use super::scope::Scope;
use crate::log::event::{
    DeletionEvidence, Event, ImportCompleted, ObjectChanged, ObjectDeleted, ObjectImported,
    SourceObject,
};
use crate::project::SourceObjects;
use crate::source::Change;

/// The events a complete full import implies, ending with its `ImportCompleted`.
/// `seen` must be everything the source returned; out-of-scope objects may be included
/// (they are how a move out of scope is told apart from a deletion).
pub fn full_import_events(
    current: &SourceObjects,
    seen: Vec<SourceObject>,
    scope: &Scope,
    run_id: &str,
) -> Vec<Event> {
    // Known live objects the source no longer returns: deleted (in the log's order). With
    // none known (a first import), there is nothing to look up.
    let mut gone: Vec<&String> = if current.live().next().is_none() {
        Vec::new()
    } else {
        let present: foldhash::HashSet<&str> = seen.iter().map(|o| o.anchor.as_str()).collect();
        current
            .live()
            .filter(|(a, _)| !present.contains(a.as_str()))
            .map(|(a, _)| a)
            .collect()
    };
    gone.sort();
    let mut events = Vec::with_capacity(seen.len() + gone.len() + 1);
    let mut summary = ImportCompleted {
        run_id: run_id.to_string(),
        full: true,
        seen: 0,
        added: 0,
        changed: 0,
        deleted: 0,
        left_scope: 0,
    };
    for o in seen {
        let known = current.objects.get(&o.anchor);
        if !scope.contains(&o.dn) {
            // Keep the record of a known object current even out of scope, as a delta does:
            // a later return reported by a delta with only the changed attributes builds on
            // it, and would otherwise bring back stale values.
            if let Some(r) = known {
                if r.kind == o.kind {
                    if let Some(c) = diff(&o.anchor, &r.dn, &r.attrs, &r.members, &o) {
                        events.push(Event::ObjectChanged(c));
                    }
                }
            }
            if known.is_some_and(|r| r.live()) {
                summary.left_scope += 1;
                events.push(Event::ObjectDeleted(ObjectDeleted {
                    anchor: o.anchor.clone(),
                    evidence: DeletionEvidence::LeftScope { dn: o.dn.clone() },
                }));
            }
            continue;
        }
        summary.seen += 1;
        match known {
            None => {
                summary.added += 1;
                events.push(Event::ObjectImported(ObjectImported {
                    object: o,
                    returned: false,
                }));
            }
            Some(r) if !r.live() => {
                summary.added += 1;
                events.push(Event::ObjectImported(ObjectImported {
                    object: o,
                    returned: true,
                }));
            }
            Some(r) => {
                if r.kind != o.kind {
                    summary.changed += 1;
                    events.push(Event::ObjectImported(ObjectImported {
                        object: o,
                        returned: false,
                    }));
                } else if let Some(c) = diff(&o.anchor, &r.dn, &r.attrs, &r.members, &o) {
                    summary.changed += 1;
                    events.push(Event::ObjectChanged(c));
                }
            }
        }
    }
    for anchor in gone {
        summary.deleted += 1;
        events.push(Event::ObjectDeleted(ObjectDeleted {
            anchor: anchor.clone(),
            evidence: DeletionEvidence::AbsentFromFullImport {
                run_id: run_id.to_string(),
            },
        }));
    }
    events.push(Event::ImportCompleted(summary));
    events
}

/// The result of planning a delta: the events, or the anchors whose whole object the caller
/// must fetch first (a partial change to an object the log does not hold in full).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaPlan {
    Events(Vec<Event>),
    NeedWhole(Vec<String>),
}

/// The events a delta import implies, ending with its `ImportCompleted`.
pub fn delta_events(
    current: &SourceObjects,
    changes: &[Change],
    scope: &Scope,
    run_id: &str,
) -> DeltaPlan {
    let need: Vec<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert {
                object,
                whole: false,
            } if scope.contains(&object.dn) => {
                let held = current.objects.get(&object.anchor);
                // Partial data is enough for an object we hold, live or returning.
                held.is_none().then(|| object.anchor.clone())
            }
            _ => None,
        })
        .collect();
    if !need.is_empty() {
        return DeltaPlan::NeedWhole(need);
    }
    // Later changes to the same object see the earlier ones: plan against a working copy.
    let mut work = SourceObjects::default();
    let mut events = Vec::new();
    let mut s = ImportCompleted {
        run_id: run_id.to_string(),
        full: false,
        seen: 0,
        added: 0,
        changed: 0,
        deleted: 0,
        left_scope: 0,
    };
    for c in changes {
        let anchor = match c {
            Change::Upsert { object, .. } => &object.anchor,
            Change::Deleted { anchor, .. } | Change::Members { anchor, .. } => anchor,
            Change::Present { anchors } => {
                let before = events.len();
                let mut still: HashSet<&str> = anchors.iter().map(String::as_str).collect();
                for other in changes {
                    if let Change::Upsert { object, .. } = other {
                        still.insert(object.anchor.as_str());
                    }
                }
                let mut gone: Vec<&String> = current
                    .live()
                    .filter(|(a, _)| !still.contains(a.as_str()))
                    // Already deleted by an earlier change of this delta.
                    .filter(|(a, _)| work.objects.get(*a).is_none_or(|r| r.live()))
                    .map(|(a, _)| a)
                    .collect();
                gone.sort();
                let gone_set: HashSet<&String> = gone.iter().copied().collect();
                for a in &gone {
                    s.deleted += 1;
                    events.push(Event::ObjectDeleted(ObjectDeleted {
                        anchor: (*a).clone(),
                        evidence: DeletionEvidence::SyncDelete {
                            phase: "present".into(),
                        },
                    }));
                }
                // As for a reported deletion: a deleted object is no member of anything any
                // more (a group that still lists it, without refint, is not re-sent).
                let mut groups: Vec<&String> = current
                    .objects
                    .iter()
                    .filter(|(g, r)| {
                        !gone_set.contains(g) && r.members.iter().any(|m| gone_set.contains(m))
                    })
                    .map(|(g, _)| g)
                    .collect();
                groups.sort();
                for g in groups {
                    let Some(r) = current.objects.get(g) else {
                        continue;
                    };
                    let removed: Vec<String> = r
                        .members
                        .iter()
                        .filter(|a| gone_set.contains(a))
                        .filter(|a| work.objects.get(g).is_none_or(|w| w.members.contains(*a)))
                        .cloned()
                        .collect();
                    if !removed.is_empty() {
                        events.push(Event::ObjectChanged(ObjectChanged {
                            anchor: g.clone(),
                            members_removed: removed,
                            ..Default::default()
                        }));
                    }
                }
                for (k, e) in events[before..].iter().enumerate() {
                    let m = crate::project::Meta {
                        seq: (before + k) as u64,
                        instance: "",
                        recorded_at_us: 0,
                    };
                    if let Event::ObjectDeleted(d) = e {
                        if let Some(r) = current.objects.get(&d.anchor) {
                            work.objects
                                .entry(d.anchor.clone())
                                .or_insert_with(|| r.clone());
                        }
                    }
                    work.apply(&m, e);
                }
                continue;
            }
        };
        if !work.objects.contains_key(anchor) {
            if let Some(r) = current.objects.get(anchor) {
                work.objects.insert(anchor.clone(), r.clone());
            }
        }
        let before = events.len();
        match c {
            Change::Upsert { object, whole } => {
                s.seen += 1;
                let in_scope = scope.contains(&object.dn);
                match work.objects.get(anchor) {
                    None => {
                        if in_scope {
                            s.added += 1;
                            let mut object = object.clone();
                            object.attrs.retain(|_, v| !v.is_empty());
                            events.push(Event::ObjectImported(ObjectImported {
                                object,
                                returned: false,
                            }));
                        }
                    }
                    Some(r) => {
                        // The whole object as it is now.
                        let mut now = object.clone();
                        if !whole {
                            let mut attrs = r.attrs.clone();
                            attrs.extend(object.attrs.clone());
                            now.attrs = attrs;
                            now.members = r.members.clone();
                        }
                        // An attribute without values is one the change removed (DirSync
                        // reports a cleared attribute so).
                        now.attrs.retain(|_, v| !v.is_empty());
                        now.kind = r.kind;
                        let live = r.live();
                        if live && !in_scope {
                            s.left_scope += 1;
                            if let Some(ch) = diff(anchor, &r.dn, &r.attrs, &r.members, &now) {
                                events.push(Event::ObjectChanged(ch));
                            }
                            events.push(Event::ObjectDeleted(ObjectDeleted {
                                anchor: anchor.clone(),
                                evidence: DeletionEvidence::LeftScope { dn: now.dn.clone() },
                            }));
                        } else if !live && in_scope {
                            s.added += 1;
                            events.push(Event::ObjectImported(ObjectImported {
                                object: now,
                                returned: true,
                            }));
                        } else if let Some(ch) = diff(anchor, &r.dn, &r.attrs, &r.members, &now) {
                            // Out of scope and staying out: keep the record current anyway, so
                            // a later return carries today's attributes.
                            if live {
                                s.changed += 1;
                            }
                            events.push(Event::ObjectChanged(ch));
                        }
                    }
                }
            }
            Change::Deleted { evidence, .. } => {
                let known = work.objects.get(anchor);
                let record = match known {
                    Some(r) if r.live() => true,
                    // Gone from scope earlier, now really deleted: keep the stronger evidence.
                    Some(r) => matches!(
                        r.deletion.as_ref().map(|d| &d.evidence),
                        Some(DeletionEvidence::LeftScope { .. })
                    ),
                    None => false,
                };
                if record {
                    if known.is_some_and(|r| r.live()) {
                        s.deleted += 1;
                    }
                    events.push(Event::ObjectDeleted(ObjectDeleted {
                        anchor: anchor.clone(),
                        evidence: evidence.clone(),
                    }));
                }
                // A deleted object is no member of anything any more. Some servers (Samba)
                // do not report that link removal, so it is derived here; a full import
                // would find the same.
                if matches!(
                    evidence,
                    DeletionEvidence::Tombstone { .. } | DeletionEvidence::SyncDelete { .. }
                ) {
                    let mut groups: Vec<&String> = current
                        .objects
                        .iter()
                        .filter(|(_, r)| r.members.contains(anchor))
                        .map(|(g, _)| g)
                        .collect();
                    groups.sort();
                    for g in groups {
                        let still = work
                            .objects
                            .get(g)
                            .is_none_or(|r| r.members.contains(anchor));
                        if still {
                            events.push(Event::ObjectChanged(ObjectChanged {
                                anchor: g.clone(),
                                members_removed: vec![anchor.clone()],
                                ..Default::default()
                            }));
                        }
                    }
                }
            }
            Change::Present { .. } => {}
            Change::Members { added, removed, .. } => {
                if let Some(r) = work.objects.get(anchor) {
                    let ch = ObjectChanged {
                        anchor: anchor.clone(),
                        members_added: added
                            .iter()
                            .filter(|a| !r.members.contains(*a))
                            .cloned()
                            .collect(),
                        members_removed: removed
                            .iter()
                            .filter(|a| r.members.contains(*a))
                            .cloned()
                            .collect(),
                        ..Default::default()
                    };
                    if !ch.members_added.is_empty() || !ch.members_removed.is_empty() {
                        if r.live() {
                            s.changed += 1;
                        }
                        events.push(Event::ObjectChanged(ch));
                    }
                }
            }
        }
        // Fold this change's events into the working copy for the next change.
        for (k, e) in events[before..].iter().enumerate() {
            let m = crate::project::Meta {
                seq: (before + k) as u64,
                instance: "",
                recorded_at_us: 0,
            };
            work.apply(&m, e);
        }
    }
    events.push(Event::ImportCompleted(s));
    DeltaPlan::Events(events)
}

/// What changed between the recorded object and what the source shows now, if anything.
pub fn diff(
    anchor: &str,
    dn: &str,
    attrs: &crate::log::event::Attrs,
    members: &std::collections::BTreeSet<String>,
    now: &SourceObject,
) -> Option<ObjectChanged> {
    let mut c = ObjectChanged {
        anchor: anchor.to_string(),
        ..Default::default()
    };
    if dn != now.dn {
        c.dn = Some(now.dn.clone());
    }
    for (k, v) in &now.attrs {
        if attrs.get(k) != Some(v) {
            c.set.insert(k.clone(), v.clone());
        }
    }
    c.removed = attrs
        .keys()
        .filter(|k| !now.attrs.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    c.members_added = now.members.difference(members).cloned().collect();
    c.members_removed = members.difference(&now.members).cloned().collect();
    let empty = c.dn.is_none()
        && c.set.is_empty()
        && c.removed.is_empty()
        && c.members_added.is_empty()
        && c.members_removed.is_empty();
    (!empty).then_some(c)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::log::event::{AttrValue, Attrs, ObjectKind, Values};
    use crate::project::{Meta, State};

    fn user(i: u32, ou: &str, title: &str) -> SourceObject {
        SourceObject {
            anchor: format!("a{i}"),
            kind: ObjectKind::User,
            dn: format!("CN=u{i},OU={ou},DC=test,DC=lan"),
            attrs: Attrs::from([("title".into(), vec![AttrValue::Text(title.into())])]),
            members: BTreeSet::new(),
        }
    }

    fn apply_all(state: &mut State, events: &[Event]) {
        for e in events {
            let seq = state.seq + 1;
            state.apply(
                &Meta {
                    seq,
                    instance: "i",
                    recorded_at_us: 0,
                },
                e,
            );
        }
    }

    #[test]
    fn an_unchanged_directory_appends_one_event() {
        let scope = Scope::new("DC=test,DC=lan", &["OU=Staff,DC=test,DC=lan".into()], &[]);
        let dir: Vec<SourceObject> = (0..1000).map(|i| user(i, "Staff", "t")).collect();
        let mut state = State::default();
        let first = full_import_events(&state.objects, dir.clone(), &scope, "r1");
        assert_eq!(first.len(), 1001);
        apply_all(&mut state, &first);
        for run in 0..3 {
            let again = full_import_events(&state.objects, dir.clone(), &scope, &format!("r{run}"));
            assert_eq!(again.len(), 1, "{again:?}");
            apply_all(&mut state, &again);
        }
    }

    #[test]
    fn changes_deletions_and_scope_moves() {
        let scope = Scope::new("DC=test,DC=lan", &["OU=Staff,DC=test,DC=lan".into()], &[]);
        let mut state = State::default();
        let dir: Vec<SourceObject> = (0..5).map(|i| user(i, "Staff", "t")).collect();
        let first = full_import_events(&state.objects, dir.clone(), &scope, "r1");
        apply_all(&mut state, &first);
        // a1 changes title, a2 moves out of scope, a3 is deleted, a9 is new.
        let now = vec![
            user(0, "Staff", "t"),
            user(1, "Staff", "boss"),
            user(2, "Elsewhere", "t"),
            user(4, "Staff", "t"),
            user(9, "Staff", "t"),
        ];
        let ev = full_import_events(&state.objects, now.clone(), &scope, "r2");
        let kinds: Vec<String> = ev.iter().map(|e| e.event_type().to_string()).collect();
        assert_eq!(
            kinds,
            [
                "ObjectChanged",
                "ObjectChanged",
                "ObjectDeleted",
                "ObjectImported",
                "ObjectDeleted",
                "ImportCompleted"
            ]
        );
        // a2's record follows it out of scope (its new DN), then it leaves scope.
        match &ev[1] {
            Event::ObjectChanged(c) => {
                assert_eq!(c.anchor, "a2");
                assert_eq!(c.dn.as_deref(), Some("CN=u2,OU=Elsewhere,DC=test,DC=lan"));
            }
            e => panic!("{e:?}"),
        }
        match &ev[2] {
            Event::ObjectDeleted(d) => {
                assert!(matches!(d.evidence, DeletionEvidence::LeftScope { .. }))
            }
            e => panic!("{e:?}"),
        }
        match &ev[4] {
            Event::ObjectDeleted(d) => {
                assert_eq!(d.anchor, "a3");
                assert!(matches!(
                    d.evidence,
                    DeletionEvidence::AbsentFromFullImport { .. }
                ))
            }
            e => panic!("{e:?}"),
        }
        apply_all(&mut state, &ev);
        // Moving back into scope is a return of the same object, not a new one.
        let back = vec![
            user(0, "Staff", "t"),
            user(1, "Staff", "boss"),
            user(2, "Staff", "t"),
            user(4, "Staff", "t"),
            user(9, "Staff", "t"),
        ];
        let ev = full_import_events(&state.objects, back.clone(), &scope, "r3");
        match &ev[0] {
            Event::ObjectImported(i) => assert!(i.returned && i.object.anchor == "a2"),
            e => panic!("{e:?}"),
        }
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn deltas_move_objects_in_and_out_of_scope() {
        let scope = Scope::new("DC=test,DC=lan", &["OU=Staff,DC=test,DC=lan".into()], &[]);
        let mut state = State::default();
        let dir: Vec<SourceObject> = (0..3).map(|i| user(i, "Staff", "t")).collect();
        let first = full_import_events(&state.objects, dir.clone(), &scope, "r1");
        apply_all(&mut state, &first);
        let partial = |i: u32, ou: &str, title: Option<&str>| {
            let mut o = user(i, ou, title.unwrap_or("t"));
            if title.is_none() {
                o.attrs.clear();
            }
            Change::Upsert {
                object: o,
                whole: false,
            }
        };
        // a0 retitled, a1 moved out, a2 deleted, a7 unknown partial -> must be fetched.
        let changes = vec![
            partial(0, "Staff", Some("boss")),
            partial(1, "Out", None),
            partial(7, "Staff", None),
        ];
        assert_eq!(
            delta_events(&state.objects, &changes, &scope, "d1"),
            DeltaPlan::NeedWhole(vec!["a7".into()])
        );
        let changes = vec![
            partial(0, "Staff", Some("boss")),
            partial(1, "Out", None),
            Change::Deleted {
                anchor: "a2".into(),
                evidence: DeletionEvidence::Tombstone {
                    deleted_at: None,
                    last_known_parent: None,
                },
            },
            Change::Upsert {
                object: user(7, "Staff", "new"),
                whole: true,
            },
        ];
        let DeltaPlan::Events(ev) = delta_events(&state.objects, &changes, &scope, "d1") else {
            panic!()
        };
        let kinds: Vec<&str> = ev.iter().map(|e| e.event_type()).collect();
        assert_eq!(
            kinds,
            [
                "ObjectChanged",
                "ObjectChanged",
                "ObjectDeleted",
                "ObjectDeleted",
                "ObjectImported",
                "ImportCompleted"
            ]
        );
        apply_all(&mut state, &ev);
        assert!(!state.objects.objects["a1"].live());
        assert_eq!(
            state.objects.objects["a1"].attrs["title"],
            vec![AttrValue::Text("t".into())],
            "attrs kept"
        );
        // a1 comes back with only its DN changed: a return carrying the kept attributes.
        let DeltaPlan::Events(ev) =
            delta_events(&state.objects, &[partial(1, "Staff", None)], &scope, "d2")
        else {
            panic!()
        };
        match &ev[0] {
            Event::ObjectImported(i) => {
                assert!(i.returned);
                assert_eq!(i.object.attrs["title"], vec![AttrValue::Text("t".into())]);
            }
            e => panic!("{e:?}"),
        }
        // Replaying the same delta again changes nothing but the completion marker.
        apply_all(&mut state, &ev);
        let DeltaPlan::Events(again) =
            delta_events(&state.objects, &[partial(1, "Staff", None)], &scope, "d3")
        else {
            panic!()
        };
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn incremental_members() {
        let scope = Scope::new("DC=test,DC=lan", &[], &[]);
        let mut state = State::default();
        let mut g = user(5, "Groups", "g");
        g.kind = ObjectKind::Group;
        g.members = BTreeSet::from(["a1".to_string()]);
        let first = full_import_events(&state.objects, vec![g], &scope, "r1");
        apply_all(&mut state, &first);
        // Deleting a member takes it out of its groups even when the server does not say so.
        let del = Change::Deleted {
            anchor: "a1".into(),
            evidence: DeletionEvidence::Tombstone {
                deleted_at: None,
                last_known_parent: None,
            },
        };
        let DeltaPlan::Events(ev) = delta_events(&state.objects, &[del], &scope, "d0") else {
            panic!()
        };
        match &ev[0] {
            Event::ObjectChanged(c) => {
                assert_eq!(c.anchor, "a5");
                assert_eq!(c.members_removed, ["a1"]);
            }
            e => panic!("{e:?}"),
        }
        let ch = Change::Members {
            anchor: "a5".into(),
            added: vec!["a2".into(), "a1".into()],
            removed: vec!["a1".into(), "a9".into()],
        };
        let DeltaPlan::Events(ev) = delta_events(&state.objects, &[ch], &scope, "d") else {
            panic!()
        };
        match &ev[0] {
            Event::ObjectChanged(c) => {
                assert_eq!(c.members_added, ["a2"]);
                assert_eq!(c.members_removed, ["a1"]);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_present_phase_reveals_deletions() {
        let scope = Scope::new("DC=test,DC=lan", &[], &[]);
        let mut state = State::default();
        let dir: Vec<SourceObject> = (0..4).map(|i| user(i, "Staff", "t")).collect();
        let first = full_import_events(&state.objects, dir.clone(), &scope, "r1");
        apply_all(&mut state, &first);
        // a0 unchanged (present), a1 modified (sent whole), a2 and a3 gone.
        let changes = vec![
            Change::Upsert {
                object: user(1, "Staff", "boss"),
                whole: true,
            },
            Change::Present {
                anchors: vec!["a0".into()],
            },
        ];
        let DeltaPlan::Events(ev) = delta_events(&state.objects, &changes, &scope, "d") else {
            panic!()
        };
        let deleted: Vec<&str> = ev
            .iter()
            .filter_map(|e| match e {
                Event::ObjectDeleted(d) => Some(d.anchor.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["a2", "a3"]);
        assert_eq!(ev.len(), 4, "{ev:?}");
    }

    #[test]
    fn a_present_phase_removes_deleted_members_from_groups() {
        let scope = Scope::new("DC=test,DC=lan", &[], &[]);
        let mut state = State::default();
        let mut dir: Vec<SourceObject> = (0..3).map(|i| user(i, "Staff", "t")).collect();
        let mut g = user(5, "Staff", "t");
        g.kind = ObjectKind::Group;
        g.members = BTreeSet::from(["a1".to_string(), "a2".to_string()]);
        let mut g2 = user(6, "Staff", "t");
        g2.kind = ObjectKind::Group;
        g2.members = BTreeSet::from(["a2".to_string()]);
        dir.push(g.clone());
        dir.push(g2.clone());
        let first = full_import_events(&state.objects, dir.clone(), &scope, "r1");
        apply_all(&mut state, &first);
        // a2 is gone (not present); a6 is re-sent whole without it; a5 still lists it (the
        // server has no referential integrity) and is not re-sent.
        g2.members.clear();
        let changes = vec![
            Change::Upsert {
                object: g2,
                whole: true,
            },
            Change::Present {
                anchors: vec!["a0".into(), "a1".into(), "a5".into()],
            },
        ];
        let DeltaPlan::Events(ev) = delta_events(&state.objects, &changes, &scope, "d") else {
            panic!()
        };
        apply_all(&mut state, &ev);
        assert!(!state.objects.objects["a2"].live());
        assert_eq!(
            state.objects.objects["a5"].members,
            BTreeSet::from(["a1".to_string()])
        );
        assert!(state.objects.objects["a6"].members.is_empty());
        let removals = ev
            .iter()
            .filter(|e| matches!(e, Event::ObjectChanged(c) if !c.members_removed.is_empty()))
            .count();
        assert_eq!(removals, 2, "one for a6 (upsert), one for a5: {ev:?}");
        // The same full import now finds nothing to change.
        let mut now: Vec<SourceObject> = dir
            .into_iter()
            .filter(|o| o.anchor != "a2")
            .map(|mut o| {
                o.members.remove("a2");
                o
            })
            .collect();
        now.sort_by(|a, b| a.anchor.cmp(&b.anchor));
        assert_eq!(
            full_import_events(&state.objects, now.clone(), &scope, "r2").len(),
            1
        );
    }
    #[test]
    fn a_cleared_attribute_is_removed_and_out_of_scope_records_stay_current() {
        let scope = Scope::new("DC=test,DC=lan", &["OU=Staff,DC=test,DC=lan".into()], &[]);
        let mut state = State::default();
        let first = full_import_events(&state.objects, vec![user(0, "Staff", "t")], &scope, "r1");
        apply_all(&mut state, &first);
        // A partial change whose attribute has no values: the attribute was cleared.
        let mut cleared = user(0, "Staff", "t");
        cleared.attrs.insert("title", Values::new());
        let DeltaPlan::Events(ev) = delta_events(
            &state.objects,
            &[Change::Upsert {
                object: cleared,
                whole: false,
            }],
            &scope,
            "d1",
        ) else {
            panic!()
        };
        apply_all(&mut state, &ev);
        assert!(!state.objects.objects["a0"].attrs.contains_key("title"));
        // A full import that sees the object out of scope with a new title keeps the record
        // current, so a return reported with partial data carries today's title.
        let out = user(0, "Elsewhere", "moved");
        let ev = full_import_events(&state.objects, vec![out], &scope, "r2");
        apply_all(&mut state, &ev);
        let r = &state.objects.objects["a0"];
        assert!(!r.live());
        assert_eq!(r.attrs["title"], vec![AttrValue::Text("moved".into())]);
        let mut back = user(0, "Staff", "t");
        back.attrs.clear();
        let DeltaPlan::Events(ev) = delta_events(
            &state.objects,
            &[Change::Upsert {
                object: back,
                whole: false,
            }],
            &scope,
            "d2",
        ) else {
            panic!()
        };
        apply_all(&mut state, &ev);
        let r = &state.objects.objects["a0"];
        assert!(r.live());
        assert_eq!(r.attrs["title"], vec![AttrValue::Text("moved".into())]);
    }
}

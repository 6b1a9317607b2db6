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

/// The events a complete full import implies, ending with its `ImportCompleted`.
/// `seen` must be everything the source returned; out-of-scope objects may be included
/// (they are how a move out of scope is told apart from a deletion).
pub fn full_import_events(
    current: &SourceObjects,
    seen: &[SourceObject],
    scope: &Scope,
    run_id: &str,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut summary = ImportCompleted {
        run_id: run_id.to_string(),
        full: true,
        seen: 0,
        added: 0,
        changed: 0,
        deleted: 0,
        left_scope: 0,
    };
    let mut present: HashSet<&str> = HashSet::with_capacity(seen.len());
    for o in seen {
        present.insert(o.anchor.as_str());
        let known = current.objects.get(&o.anchor);
        if !scope.contains(&o.dn) {
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
                    object: o.clone(),
                    returned: false,
                }));
            }
            Some(r) if !r.live() => {
                summary.added += 1;
                events.push(Event::ObjectImported(ObjectImported {
                    object: o.clone(),
                    returned: true,
                }));
            }
            Some(r) => {
                if r.kind != o.kind {
                    summary.changed += 1;
                    events.push(Event::ObjectImported(ObjectImported {
                        object: o.clone(),
                        returned: false,
                    }));
                } else if let Some(c) = diff(&o.anchor, &r.dn, &r.attrs, &r.members, o) {
                    summary.changed += 1;
                    events.push(Event::ObjectChanged(c));
                }
            }
        }
    }
    let mut gone: Vec<&String> = current
        .live()
        .filter(|(a, _)| !present.contains(a.as_str()))
        .map(|(a, _)| a)
        .collect();
    gone.sort();
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
        .filter(|k| !now.attrs.contains_key(*k))
        .cloned()
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
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::log::event::{AttrValue, ObjectKind};
    use crate::project::{Meta, State};

    fn user(i: u32, ou: &str, title: &str) -> SourceObject {
        SourceObject {
            anchor: format!("a{i}"),
            kind: ObjectKind::User,
            dn: format!("CN=u{i},OU={ou},DC=test,DC=lan"),
            attrs: BTreeMap::from([("title".into(), vec![AttrValue::Text(title.into())])]),
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
        let first = full_import_events(&state.objects, &dir, &scope, "r1");
        assert_eq!(first.len(), 1001);
        apply_all(&mut state, &first);
        for run in 0..3 {
            let again = full_import_events(&state.objects, &dir, &scope, &format!("r{run}"));
            assert_eq!(again.len(), 1, "{again:?}");
            apply_all(&mut state, &again);
        }
    }

    #[test]
    fn changes_deletions_and_scope_moves() {
        let scope = Scope::new("DC=test,DC=lan", &["OU=Staff,DC=test,DC=lan".into()], &[]);
        let mut state = State::default();
        let dir: Vec<SourceObject> = (0..5).map(|i| user(i, "Staff", "t")).collect();
        let first = full_import_events(&state.objects, &dir, &scope, "r1");
        apply_all(&mut state, &first);
        // a1 changes title, a2 moves out of scope, a3 is deleted, a9 is new.
        let now = vec![
            user(0, "Staff", "t"),
            user(1, "Staff", "boss"),
            user(2, "Elsewhere", "t"),
            user(4, "Staff", "t"),
            user(9, "Staff", "t"),
        ];
        let ev = full_import_events(&state.objects, &now, &scope, "r2");
        let kinds: Vec<String> = ev.iter().map(|e| e.event_type().to_string()).collect();
        assert_eq!(
            kinds,
            [
                "ObjectChanged",
                "ObjectDeleted",
                "ObjectImported",
                "ObjectDeleted",
                "ImportCompleted"
            ]
        );
        match &ev[1] {
            Event::ObjectDeleted(d) => {
                assert!(matches!(d.evidence, DeletionEvidence::LeftScope { .. }))
            }
            e => panic!("{e:?}"),
        }
        match &ev[3] {
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
        let ev = full_import_events(&state.objects, &back, &scope, "r3");
        match &ev[0] {
            Event::ObjectImported(i) => assert!(i.returned && i.object.anchor == "a2"),
            e => panic!("{e:?}"),
        }
        assert_eq!(ev.len(), 2);
    }
}

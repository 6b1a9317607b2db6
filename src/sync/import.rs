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
    let mut gone: Vec<&String> = if current.live().next().is_none() && scope.member_of().is_empty()
    {
        Vec::new()
    } else {
        let returned: foldhash::HashSet<&str> = seen.iter().map(|o| o.anchor.as_str()).collect();
        current
            .objects
            .iter()
            .filter(|(a, r)| present(r, scope) && !returned.contains(a.as_str()))
            .map(|(a, _)| a)
            .collect()
    };
    gone.sort();
    let mut events = Vec::with_capacity(seen.len() + gone.len() + 1);
    let mut summary = ImportCompleted::start(run_id, true);
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
            if known.is_some_and(|r| present(r, scope)) {
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
            Some(r) if !present(r, scope) => {
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
    if !scope.member_of().is_empty() {
        let work = overlay(current, &events, SourceObjects::default());
        events.extend(member_of_events(current, &work, scope, &mut summary));
    }
    events.push(Event::ImportCompleted(summary));
    events
}

/// Whether a record counts as present for the DN rules: live, or (with `[source]
/// member_of`) a user set aside only because it is no member of those groups. Such a user
/// is kept current like a live one, and comes back when it joins a group (see
/// [`member_of_events`]).
fn present(r: &crate::project::ObjectRecord, scope: &Scope) -> bool {
    r.live()
        || (!scope.member_of().is_empty()
            && matches!(
                r.deletion.as_ref().map(|d| &d.evidence),
                Some(DeletionEvidence::NotMember { .. })
            ))
}

/// The object `anchor` back in scope as the log last recorded it (`ObjectImported`,
/// returned): a rule change over the log brings it back without reading the source.
fn returned_as_recorded(anchor: &str, r: &crate::project::ObjectRecord) -> Event {
    Event::ObjectImported(ObjectImported {
        object: SourceObject {
            anchor: anchor.to_string(),
            kind: r.kind,
            dn: r.dn.clone(),
            attrs: r.attrs.clone(),
            members: r.members.clone(),
        },
        returned: true,
    })
}

/// `work` with `events` folded in: the records they touch, copied from `current` first.
fn overlay(current: &SourceObjects, events: &[Event], mut work: SourceObjects) -> SourceObjects {
    for (k, e) in events.iter().enumerate() {
        let anchor = match e {
            Event::ObjectChanged(c) => Some(&c.anchor),
            Event::ObjectDeleted(d) => Some(&d.anchor),
            Event::ObjectImported(i) => Some(&i.object.anchor),
            _ => None,
        };
        if let Some(a) = anchor {
            if !work.objects.contains_key(a) {
                if let Some(r) = current.objects.get(a) {
                    work.objects.insert(a.clone(), r.clone());
                }
            }
        }
        let m = crate::project::Meta {
            seq: k as u64,
            instance: "",
            recorded_at_us: 0,
        };
        work.apply(&m, e.clone());
    }
    work
}

/// The users `[source] member_of` admits: members, direct or through nested groups, of
/// the live groups it names, in the source projection `get` reads (pure). A group met
/// twice is followed once, so nested cycles end.
pub fn members_of<'a>(
    roots: impl Iterator<Item = &'a String>,
    get: impl Fn(&str) -> Option<&'a crate::project::ObjectRecord>,
) -> std::collections::HashSet<&'a str> {
    use crate::log::event::ObjectKind;
    let mut users = std::collections::HashSet::new();
    let mut seen_groups = std::collections::HashSet::new();
    let mut stack: Vec<&'a String> = roots.collect();
    while let Some(g) = stack.pop() {
        if !seen_groups.insert(g.as_str()) {
            continue;
        }
        let Some(rec) = get(g) else { continue };
        for m in &rec.members {
            match get(m) {
                Some(r) if r.kind == ObjectKind::Group && r.live() => stack.push(m),
                Some(r) if r.kind == ObjectKind::User => {
                    users.insert(m.as_str());
                }
                _ => {}
            }
        }
    }
    users
}

/// With `[source] member_of`: after this import's other events (folded into `work` over
/// `current`), a user that is live but no member of those groups is set aside
/// (`ObjectDeleted`, evidence `not-member`), and one set aside so that is a member now comes
/// back (`ObjectImported`, returned). Sorted by anchor.
fn member_of_events(
    current: &SourceObjects,
    work: &SourceObjects,
    scope: &Scope,
    summary: &mut ImportCompleted,
) -> Vec<Event> {
    use crate::log::event::ObjectKind;
    let get = |a: &str| {
        work.objects
            .get(a)
            .or_else(|| current.objects.get(a))
            .map(|r| &**r)
    };
    let all = || {
        work.objects.iter().chain(
            current
                .objects
                .iter()
                .filter(|(a, _)| !work.objects.contains_key(*a)),
        )
    };
    let roots: Vec<&String> = all()
        .filter(|(_, r)| r.kind == ObjectKind::Group && r.live() && scope.is_member_of_group(&r.dn))
        .map(|(a, _)| a)
        .collect();
    let members = members_of(roots.into_iter(), get);
    let users = all().filter(|(_, r)| r.kind == ObjectKind::User);
    member_of_verdicts(users, |a| members.contains(a), scope, summary)
}

/// The groups `[source] member_of` reaches among `groups` (live): the groups it names and
/// the groups nested in them, by anchor.
fn reach<'a>(
    groups: &[(&'a String, &'a crate::project::ObjectRecord)],
    scope: &Scope,
) -> std::collections::HashMap<&'a str, &'a crate::project::ObjectRecord> {
    let mut reached: std::collections::HashMap<&str, &crate::project::ObjectRecord> = groups
        .iter()
        .filter(|(_, r)| scope.is_member_of_group(&r.dn))
        .map(|(a, r)| (a.as_str(), *r))
        .collect();
    // Nested groups: those a reached group lists, until no more are found.
    loop {
        let before = reached.len();
        for (a, r) in groups {
            if !reached.contains_key(a.as_str()) && reached.values().any(|g| g.members.contains(*a))
            {
                reached.insert(a.as_str(), r);
            }
        }
        if reached.len() == before {
            return reached;
        }
    }
}

/// [`member_of_events`] for a delta: only the users whose membership this import can have
/// changed are judged: those it touched, those who joined or left a group it touched that
/// `member_of` reaches, and the members of the groups that came into or left that reach. What it costs grows with what changed (and one pass over the projection to
/// find its groups), not with every user of the directory.
fn member_of_touched(
    current: &SourceObjects,
    work: &SourceObjects,
    scope: &Scope,
    summary: &mut ImportCompleted,
) -> Vec<Event> {
    use crate::log::event::ObjectKind;
    use crate::project::ObjectRecord;
    let live_group = |r: &ObjectRecord| r.kind == ObjectKind::Group && r.live();
    let before_groups: Vec<(&String, &ObjectRecord)> = current
        .objects
        .iter()
        .filter(|(_, r)| live_group(r))
        .map(|(a, r)| (a, &**r))
        .collect();
    let after_groups: Vec<(&String, &ObjectRecord)> = before_groups
        .iter()
        .filter(|(a, _)| !work.objects.contains_key(*a))
        .copied()
        .chain(
            work.objects
                .iter()
                .filter(|(_, r)| live_group(r))
                .map(|(a, r)| (a, &**r)),
        )
        .collect();
    let before = reach(&before_groups, scope);
    let after = reach(&after_groups, scope);
    let mut candidates: std::collections::BTreeSet<&str> = work
        .objects
        .iter()
        .filter(|(_, r)| r.kind == ObjectKind::User)
        .map(|(a, _)| a.as_str())
        .collect();
    // Groups all of whose members may have moved: those that came into or left the reach.
    let mut whole: Vec<&str> = before
        .keys()
        .filter(|g| !after.contains_key(*g))
        .chain(after.keys().filter(|g| !before.contains_key(*g)))
        .copied()
        .collect();
    for g in work.objects.keys() {
        if let (Some(b), Some(a)) = (before.get(g.as_str()), after.get(g.as_str())) {
            // Reached before and after: only who joined or left it.
            candidates.extend(
                b.members
                    .symmetric_difference(&a.members)
                    .map(String::as_str),
            );
        } else {
            whole.push(g.as_str());
        }
    }
    for g in whole {
        for side in [&before, &after] {
            if let Some(r) = side.get(g) {
                candidates.extend(r.members.iter().map(String::as_str));
            }
        }
    }
    let users = candidates.into_iter().filter_map(|a| {
        work.objects
            .get_key_value(a)
            .or_else(|| current.objects.get_key_value(a))
            .filter(|(_, r)| r.kind == ObjectKind::User)
    });
    member_of_verdicts(
        users,
        |a| after.values().any(|g| g.members.contains(a)),
        scope,
        summary,
    )
}

/// For each of `users`: set aside when live and no member, back when a member and set
/// aside by `member_of`. Sorted by anchor.
fn member_of_verdicts<'a>(
    users: impl Iterator<Item = (&'a String, &'a Box<crate::project::ObjectRecord>)>,
    is_member: impl Fn(&str) -> bool,
    scope: &Scope,
    summary: &mut ImportCompleted,
) -> Vec<Event> {
    let mut out: Vec<(&String, Event)> = Vec::new();
    for (a, r) in users {
        let member = is_member(a.as_str());
        if r.live() && !member {
            summary.left_scope += 1;
            out.push((
                a,
                Event::ObjectDeleted(ObjectDeleted {
                    anchor: a.clone(),
                    evidence: DeletionEvidence::NotMember {
                        groups: scope.member_of().to_vec(),
                    },
                }),
            ));
        } else if member && !r.live() && present(r, scope) {
            summary.added += 1;
            out.push((a, returned_as_recorded(a, r)));
        }
    }
    out.sort_by(|x, y| x.0.cmp(y.0));
    out.into_iter().map(|(_, e)| e).collect()
}

/// A changed filter to evaluate over the projection: the one the objects were imported
/// under (`old`) and the configured one (`new`), which narrows it.
#[derive(Clone, Debug)]
pub struct FilterChange {
    pub old: crate::plan::filter::Filter,
    pub new: crate::plan::filter::Filter,
    /// As configured, for the evidence.
    pub text: String,
}

/// What the configuration asks of the objects the log holds, evaluated over the projection
/// when it changed without needing a full import ([`crate::plan::effective::decide`]).
#[derive(Clone, Debug, Default)]
pub struct Rescope {
    pub users: Option<FilterChange>,
    pub groups: Option<FilterChange>,
    /// The attributes the log holds (lower case).
    pub held: Vec<String>,
    /// `member_of` changed: every user is judged against its groups anew.
    pub member_of: bool,
}

/// The events that apply `scope` and `rescope` to every object the log holds (pure), sorted
/// by anchor: a live object outside the DN rules leaves scope (`left-scope`), one failing a
/// narrowed filter leaves it too (`out-of-filter`); a user set aside only by `member_of`
/// comes back when `member_of` is gone (members of changed groups are the import's
/// [`member_of_events`]). Also returns how many live objects left.
pub fn rescope_events(
    current: &SourceObjects,
    scope: &Scope,
    rescope: &Rescope,
) -> (Vec<Event>, u64) {
    use crate::log::event::ObjectKind;
    let held = |a: &str| rescope.held.iter().any(|h| h == a);
    let mut anchors: Vec<&String> = current.objects.keys().collect();
    anchors.sort();
    let mut out = Vec::new();
    let mut left = 0;
    for a in anchors {
        let Some(r) = current.objects.get(a) else {
            continue;
        };
        let not_member = matches!(
            r.deletion.as_ref().map(|d| &d.evidence),
            Some(DeletionEvidence::NotMember { .. })
        );
        if !r.live() && !not_member {
            continue;
        }
        let change = match r.kind {
            ObjectKind::User => rescope.users.as_ref().map(|f| ("users", f)),
            ObjectKind::Group => rescope.groups.as_ref().map(|f| ("groups", f)),
        };
        // A part that cannot be evaluated keeps the object (the decision asked for a full
        // import instead whenever a filter tests what the log does not hold).
        let failed = change.filter(|(_, f)| f.new.eval(&r.attrs, &held, Some(&f.old)) == Ok(false));
        let evidence = if !scope.contains(&r.dn) {
            Some(DeletionEvidence::LeftScope { dn: r.dn.clone() })
        } else {
            failed.map(|(which, f)| DeletionEvidence::OutOfFilter {
                which: which.to_string(),
                filter: f.text.clone(),
            })
        };
        match evidence {
            Some(evidence) => {
                if r.live() {
                    left += 1;
                }
                out.push(Event::ObjectDeleted(ObjectDeleted {
                    anchor: a.clone(),
                    evidence,
                }));
            }
            None if not_member && scope.member_of().is_empty() => {
                out.push(returned_as_recorded(a, r));
            }
            None => {}
        }
    }
    if rescope.member_of && !scope.member_of().is_empty() {
        let work = overlay(current, &out, SourceObjects::default());
        let mut s = ImportCompleted::start("", false);
        out.extend(member_of_events(current, &work, scope, &mut s));
        left += s.left_scope;
    }
    (out, left)
}

/// The result of planning a delta: the events, or the anchors whose whole object the caller
/// must fetch first (a partial change to an object the log does not hold in full).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaPlan {
    Events(Vec<Event>),
    NeedWhole(Vec<String>),
}

/// How `[source] member_of` judges the users after an import's other events: every user
/// ([`member_of_events`]) or those the import can have moved ([`member_of_touched`]).
type Judge = fn(&SourceObjects, &SourceObjects, &Scope, &mut ImportCompleted) -> Vec<Event>;

/// The events a delta import implies, ending with its `ImportCompleted`.
pub fn delta_events(
    current: &SourceObjects,
    changes: &[Change],
    scope: &Scope,
    run_id: &str,
) -> DeltaPlan {
    delta_events_judged(current, changes, scope, run_id, member_of_touched)
}

/// [`delta_events`] with `member_of` judged by `judge`.
fn delta_events_judged(
    current: &SourceObjects,
    changes: &[Change],
    scope: &Scope,
    run_id: &str,
    judge: Judge,
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
    let mut s = ImportCompleted::start(run_id, false);
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
                    .objects
                    .iter()
                    .filter(|(a, r)| present(r, scope) && !still.contains(a.as_str()))
                    // Already deleted by an earlier change of this delta.
                    .filter(|(a, _)| work.objects.get(*a).is_none_or(|r| present(r, scope)))
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
                    work.apply(&m, e.clone());
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
                        let live = present(r, scope);
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
                    Some(r) if present(r, scope) => true,
                    // Gone from scope earlier, now really deleted: keep the stronger evidence.
                    Some(r) => matches!(
                        r.deletion.as_ref().map(|d| &d.evidence),
                        Some(
                            DeletionEvidence::LeftScope { .. }
                                | DeletionEvidence::NotMember { .. }
                                | DeletionEvidence::OutOfFilter { .. }
                        )
                    ),
                    None => false,
                };
                if record {
                    if known.is_some_and(|r| present(r, scope)) {
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
            work.apply(&m, e.clone());
        }
    }
    if !scope.member_of().is_empty() {
        // Every record this delta touched, as it leaves them (groups' member removals
        // included, which the working copy above does not carry).
        let after = overlay(current, &events, SourceObjects::default());
        events.extend(judge(current, &after, scope, &mut s));
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
                e.clone(),
            );
        }
    }

    fn group(anchor: &str, cn: &str, members: &[&str]) -> SourceObject {
        SourceObject {
            anchor: anchor.into(),
            kind: ObjectKind::Group,
            dn: format!("CN={cn},OU=Groups,DC=test,DC=lan"),
            attrs: Attrs::from([("cn".into(), vec![AttrValue::Text(cn.into())])]),
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn live_users(state: &State) -> Vec<String> {
        let mut v: Vec<String> = state
            .objects
            .live()
            .filter(|(_, r)| r.kind == ObjectKind::User)
            .map(|(a, _)| a.clone())
            .collect();
        v.sort();
        v
    }

    fn delta(state: &State, changes: &[Change], scope: &Scope) -> Vec<Event> {
        match delta_events(&state.objects, changes, scope, "d") {
            DeltaPlan::Events(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn member_of_admits_direct_and_nested_members_and_follows_joins_and_leaves() {
        let groups = vec!["cn=Sync, ou=Groups, dc=test, dc=lan".to_string()];
        let scope = Scope::new("DC=test,DC=lan", &[], &[]).with_member_of(&groups);
        let not_member = DeletionEvidence::NotMember {
            groups: groups.clone(),
        };
        let deleted = |a: &str| {
            Event::ObjectDeleted(ObjectDeleted {
                anchor: a.into(),
                evidence: not_member.clone(),
            })
        };
        // gs names a0 and the nested gn, which names a1 and gs again (a cycle); a2 is in
        // no group, gx (not a member_of group) names a3.
        let mut dir: Vec<SourceObject> = (0..4).map(|i| user(i, "Staff", "t")).collect();
        dir.push(group("gs", "Sync", &["a0", "gn"]));
        dir.push(group("gn", "Nested", &["a1", "gs"]));
        dir.push(group("gx", "Other", &["a3"]));
        let mut state = State::default();
        let first = full_import_events(&state.objects, dir.clone(), &scope, "r1");
        let tail: Vec<Event> = first[first.len() - 3..].to_vec();
        assert_eq!(
            tail,
            vec![
                deleted("a2"),
                deleted("a3"),
                Event::ImportCompleted(ImportCompleted {
                    run_id: "r1".into(),
                    full: true,
                    seen: 7,
                    added: 7,
                    changed: 0,
                    deleted: 0,
                    left_scope: 2,
                })
            ]
        );
        apply_all(&mut state, &first);
        assert_eq!(live_users(&state), vec!["a0", "a1"]);
        // Unchanged: one event, the non-members are not brought back and set aside again.
        let again = full_import_events(&state.objects, dir.clone(), &scope, "r2");
        assert_eq!(again.len(), 1, "{again:?}");
        // A non-member changes: its record is kept current, it stays out.
        let mut changed = dir.clone();
        changed[2] = user(2, "Staff", "boss");
        let ch = full_import_events(&state.objects, changed.clone(), &scope, "r3");
        assert!(
            matches!(ch.as_slice(), [Event::ObjectChanged(c), Event::ImportCompleted(_)] if c.anchor == "a2"),
            "{ch:?}"
        );
        apply_all(&mut state, &ch);
        // a2 joins the nested group: it comes back, with its current attributes.
        let join = delta(
            &state,
            &[Change::Members {
                anchor: "gn".into(),
                added: vec!["a2".into()],
                removed: vec![],
            }],
            &scope,
        );
        assert_eq!(
            join[1],
            Event::ObjectImported(ObjectImported {
                object: changed[2].clone(),
                returned: true,
            })
        );
        apply_all(&mut state, &join);
        assert_eq!(live_users(&state), vec!["a0", "a1", "a2"]);
        // The nested group leaves the member_of group: a1 and a2 leave scope.
        let leave = delta(
            &state,
            &[Change::Members {
                anchor: "gs".into(),
                added: vec![],
                removed: vec!["gn".into()],
            }],
            &scope,
        );
        assert_eq!(leave[1..3], [deleted("a1"), deleted("a2")]);
        apply_all(&mut state, &leave);
        assert_eq!(live_users(&state), vec!["a0"]);
        // A non-member really deleted: the stronger evidence is recorded.
        let gone = delta(
            &state,
            &[Change::Deleted {
                anchor: "a3".into(),
                evidence: DeletionEvidence::SyncDelete {
                    phase: "delete".into(),
                },
            }],
            &scope,
        );
        assert!(
            matches!(&gone[0], Event::ObjectDeleted(d) if d.anchor == "a3" && d.evidence.label() == "rfc4533-delete"),
            "{gone:?}"
        );
        // Without member_of every user the DN rules admit is in scope again.
        let open = Scope::new("DC=test,DC=lan", &[], &[]);
        let all = full_import_events(&state.objects, changed, &open, "r4");
        apply_all(&mut state, &all);
        assert_eq!(live_users(&state), vec!["a0", "a1", "a2", "a3"]);
    }

    #[test]
    fn member_of_judges_only_the_users_a_delta_can_have_moved() {
        let groups = vec!["CN=Sync,OU=Groups,DC=test,DC=lan".to_string()];
        let scope = Scope::new("DC=test,DC=lan", &[], &[]).with_member_of(&groups);
        let mut dir: Vec<SourceObject> = (0..6).map(|i| user(i, "Staff", "t")).collect();
        dir.push(group("gs", "Sync", &["a0", "gn", "a9"]));
        dir.push(group("gn", "Nested", &["a1", "a8"]));
        dir.push(group("gx", "Other", &["a2"]));
        let mut state = State::default();
        let first = full_import_events(&state.objects, dir, &scope, "r");
        apply_all(&mut state, &first);
        assert_eq!(live_users(&state), ["a0", "a1"]);
        let mut moved = user(1, "Staff", "t");
        moved.dn = "CN=u1,OU=Elsewhere,DC=test,DC=lan".into();
        let deltas: Vec<Vec<Change>> = vec![
            // New users: a member directly, one through the nested group, one of neither.
            vec![
                Change::Upsert {
                    object: user(9, "Staff", "t"),
                    whole: true,
                },
                Change::Upsert {
                    object: user(8, "Staff", "t"),
                    whole: true,
                },
                Change::Upsert {
                    object: user(7, "Staff", "t"),
                    whole: true,
                },
            ],
            // Changes of members and non-members, a rename, a deletion.
            vec![
                Change::Upsert {
                    object: user(0, "Staff", "boss"),
                    whole: true,
                },
                Change::Upsert {
                    object: user(3, "Staff", "boss"),
                    whole: true,
                },
                Change::Upsert {
                    object: moved,
                    whole: true,
                },
                Change::Deleted {
                    anchor: "a2".into(),
                    evidence: DeletionEvidence::SyncDelete {
                        phase: "delete".into(),
                    },
                },
            ],
            // A member leaves the named group.
            vec![Change::Members {
                anchor: "gs".into(),
                added: vec![],
                removed: vec!["a0".into()],
            }],
            // A group joins the nested one, bringing its member back.
            vec![
                Change::Members {
                    anchor: "gx".into(),
                    added: vec!["a3".into()],
                    removed: vec![],
                },
                Change::Members {
                    anchor: "gn".into(),
                    added: vec!["gx".into()],
                    removed: vec![],
                },
            ],
            // The nested group is deleted: its members, nested ones too, leave.
            vec![Change::Deleted {
                anchor: "gn".into(),
                evidence: DeletionEvidence::SyncDelete {
                    phase: "delete".into(),
                },
            }],
        ];
        let mut live = Vec::new();
        for changes in deltas {
            let events = delta(&state, &changes, &scope);
            // What judging every user says of the same delta.
            let whole =
                delta_events_judged(&state.objects, &changes, &scope, "d", member_of_events);
            assert_eq!(DeltaPlan::Events(events.clone()), whole);
            apply_all(&mut state, &events);
            live.push(live_users(&state));
        }
        assert_eq!(
            live,
            [
                vec!["a0", "a1", "a8", "a9"],
                vec!["a0", "a1", "a8", "a9"],
                vec!["a1", "a8", "a9"],
                vec!["a1", "a3", "a8", "a9"],
                vec!["a9"],
            ]
        );
    }

    proptest::proptest! {
        /// Whatever a delta changes (members, nesting, users, deletions), judging only the
        /// users it can have moved gives the events judging every user gives.
        #[test]
        fn member_of_of_a_delta_equals_judging_everyone(
            members in proptest::collection::vec(proptest::collection::vec(0usize..10, 0..5), 4),
            ops in proptest::collection::vec((0usize..5, 0usize..4, 0usize..10), 1..6),
        ) {
            // Users a0..a5, groups g0 (named by member_of) .. g3; a member index above 5
            // names group g(i-6).
            let name = |i: usize| if i < 6 { format!("a{i}") } else { format!("g{}", i - 6) };
            let groups = vec!["CN=G0,OU=Groups,DC=test,DC=lan".to_string()];
            let scope = Scope::new("DC=test,DC=lan", &[], &[]).with_member_of(&groups);
            let mut dir: Vec<SourceObject> = (0..6).map(|i| user(i, "Staff", "t")).collect();
            for (g, m) in members.iter().enumerate() {
                let m: Vec<String> = m.iter().map(|i| name(*i)).collect();
                let m: Vec<&str> = m.iter().map(String::as_str).collect();
                dir.push(group(&format!("g{g}"), &format!("G{g}"), &m));
            }
            let mut state = State::default();
            let first = full_import_events(&state.objects, dir, &scope, "r");
            apply_all(&mut state, &first);
            let changes: Vec<Change> = ops
                .iter()
                .map(|&(op, g, x)| match op {
                    0 => Change::Members { anchor: format!("g{g}"), added: vec![name(x)], removed: vec![] },
                    1 => Change::Members { anchor: format!("g{g}"), added: vec![], removed: vec![name(x)] },
                    2 => Change::Upsert { object: user((x % 6) as u32 + 10, "Staff", "t"), whole: true },
                    3 => Change::Deleted {
                        anchor: name(x),
                        evidence: DeletionEvidence::SyncDelete { phase: "delete".into() },
                    },
                    _ => Change::Upsert { object: user((x % 6) as u32, "Staff", "new"), whole: true },
                })
                .collect();
            let touched = delta_events(&state.objects, &changes, &scope, "d");
            let whole = delta_events_judged(&state.objects, &changes, &scope, "d", member_of_events);
            proptest::prop_assert_eq!(touched, whole);
        }
    }

    #[test]
    fn a_changed_scope_is_evaluated_over_the_log() {
        use crate::plan::filter::parse;
        let mut state = State::default();
        let mut dir: Vec<SourceObject> = (0..4)
            .map(|i| {
                user(
                    i,
                    if i == 3 { "Old" } else { "Staff" },
                    if i % 2 == 0 { "Engineer" } else { "Sales" },
                )
            })
            .collect();
        dir.push(group("g1", "Eng", &["a0", "a2"]));
        dir.push(group("g2", "Other", &["a1"]));
        let scope = Scope::new("DC=test,DC=lan", &[], &[]);
        let first = full_import_events(&state.objects, dir.clone(), &scope, "r1");
        apply_all(&mut state, &first);
        // A narrower users filter over a held attribute, and an added exclude.
        let narrower = Scope::new("DC=test,DC=lan", &[], &["OU=Old,DC=test,DC=lan".into()]);
        let users = "(&(objectClass=inetOrgPerson)(title=engineer))";
        let r = Rescope {
            users: Some(FilterChange {
                old: parse("(objectClass=inetOrgPerson)").unwrap(),
                new: parse(users).unwrap(),
                text: users.into(),
            }),
            groups: None,
            held: vec!["cn".into(), "title".into()],
            member_of: false,
        };
        let (events, left) = rescope_events(&state.objects, &narrower, &r);
        let out_of_filter = |a: &str| {
            Event::ObjectDeleted(ObjectDeleted {
                anchor: a.into(),
                evidence: DeletionEvidence::OutOfFilter {
                    which: "users".into(),
                    filter: users.into(),
                },
            })
        };
        assert_eq!(
            events,
            [
                out_of_filter("a1"),
                Event::ObjectDeleted(ObjectDeleted {
                    anchor: "a3".into(),
                    evidence: DeletionEvidence::LeftScope {
                        dn: "CN=u3,OU=Old,DC=test,DC=lan".into()
                    },
                }),
            ]
        );
        assert_eq!(left, 2);
        apply_all(&mut state, &events);
        assert_eq!(live_users(&state), ["a0", "a2"]);
        // Nothing more to do under the same rules, and a full import agrees.
        assert_eq!(rescope_events(&state.objects, &narrower, &r), (vec![], 0));
        let mut again = dir.clone();
        again.retain(|o| o.anchor != "a1"); // the server's filter leaves it out
        let full = full_import_events(&state.objects, again, &narrower, "r2");
        assert_eq!(full.len(), 1, "{full:?}");

        // member_of added sets users aside; taken away again, they come back.
        let groups = vec!["CN=Eng,OU=Groups,DC=test,DC=lan".to_string()];
        let member_of = scope.clone().with_member_of(&groups);
        let mut state = State::default();
        apply_all(&mut state, &first);
        let added = Rescope {
            member_of: true,
            ..Rescope::default()
        };
        let (events, left) = rescope_events(&state.objects, &member_of, &added);
        let set_aside: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::ObjectDeleted(ObjectDeleted {
                    anchor,
                    evidence: DeletionEvidence::NotMember { .. },
                }) => Some(anchor.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!((set_aside, left, events.len()), (vec!["a1", "a3"], 2, 2));
        let mut state = State::default();
        let first = full_import_events(&state.objects, dir.clone(), &member_of, "r1");
        apply_all(&mut state, &first);
        assert_eq!(live_users(&state), ["a0", "a2"]);
        let (events, left) = rescope_events(&state.objects, &scope, &Rescope::default());
        assert_eq!(left, 0);
        let back: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::ObjectImported(i) if i.returned => Some(i.object.anchor.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(back, ["a1", "a3"]);
        apply_all(&mut state, &events);
        assert_eq!(live_users(&state), ["a0", "a1", "a2", "a3"]);
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

//! One object's history (`dirsync object show`): the fold of the events that touched it,
//! read through the history index, and a one-line summary of each (pure).

use std::collections::BTreeMap;

use serde::Serialize;

use super::show_values;
use crate::log::event::{DeletionEvidence, Event, ExportOp, ObjectKind};
use crate::log::index::KEY_ATTRIBUTES;
use crate::log::StoredEvent;
use crate::output::time;
use crate::project::{ExportFailure, Ledger, LedgerEntry, Meta, ObjectRecord, SourceObjects};

/// One event of an object's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Touch {
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    pub instance: String,
    pub event: String,
    pub summary: String,
}

/// What the log knows of one object: its last source state, what we own of it in the
/// target, and every event that touched it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectView {
    pub anchor: String,
    /// The source object as last imported (deleted ones too, marked).
    pub record: Option<ObjectRecord>,
    pub ledger: Option<LedgerEntry>,
    /// The last failed export, cleared by a success.
    pub failure: Option<ExportFailure>,
    pub timeline: Vec<Touch>,
}

impl ObjectView {
    pub fn kind(&self) -> Option<ObjectKind> {
        self.record
            .as_ref()
            .map(|r| r.kind)
            .or(self.ledger.as_ref().map(|l| l.kind))
    }

    /// Whether the object goes by `key` now (compared case-insensitively): its anchor, DN,
    /// `mail`, `userPrincipalName` or `uid`, or the userName, e-mail or group name last
    /// exported.
    pub fn known_as(&self, key: &str) -> bool {
        let key = key.trim().to_lowercase();
        let eq = |s: &str| s.to_lowercase() == key;
        if eq(&self.anchor) {
            return true;
        }
        if let Some(r) = &self.record {
            if eq(&r.dn) {
                return true;
            }
            for a in KEY_ATTRIBUTES {
                if let Some(vs) = r.attrs.get(a) {
                    if vs.iter().any(|v| match v {
                        crate::log::event::AttrValue::Text(t) => eq(t.trim()),
                        _ => false,
                    }) {
                        return true;
                    }
                }
            }
        }
        if let Some(m) = self.ledger.as_ref().and_then(|l| l.state.as_ref()) {
            if eq(m.name()) {
                return true;
            }
            if let crate::target::Mapped::User(u) = m {
                if u.email.as_deref().is_some_and(eq) {
                    return true;
                }
            }
        }
        false
    }
}

/// Fold the events that touched `anchor` (in seq order) into its view. Events about other
/// objects among them (a group whose members changed, a held list) are summarised from
/// `anchor`'s side.
/// `groups` names the groups whose member changes are among them (anchor -> DN).
pub fn fold(
    anchor: &str,
    events: &[(StoredEvent, Event)],
    groups: &BTreeMap<String, String>,
) -> ObjectView {
    let mut objects = SourceObjects::default();
    let mut ledger = Ledger::default();
    let mut timeline = Vec::with_capacity(events.len());
    // The anchor's names before a re-key: their events are the object's too.
    let mut names = vec![anchor.to_string()];
    for (_, e) in events {
        if let Event::AnchorsMigrated(m) = e {
            for r in &m.rekeyed {
                if names.contains(&r.new) && !names.contains(&r.old) {
                    names.push(r.old.clone());
                }
            }
        }
    }
    for (s, e) in events {
        let m = Meta {
            seq: s.seq,
            instance: &s.instance,
            recorded_at_us: s.recorded_at_us,
        };
        let own = names
            .iter()
            .find(|n| touches_itself(e, n))
            .map(String::as_str);
        let before = own.and_then(|a| objects.objects.get(a)).map(|r| &**r);
        timeline.push(Touch {
            seq: s.seq,
            at: time(s.recorded_at_us),
            instance: s.instance.clone(),
            event: s.event_type.clone(),
            summary: summary(own.unwrap_or(anchor), before, e, groups),
        });
        ledger.apply(&m, e);
        objects.apply(&m, e.clone());
    }
    let pick = |f: &dyn Fn(&str) -> bool| names.iter().find(|n| f(n)).cloned();
    let record = pick(&|n| objects.objects.contains_key(n))
        .and_then(|n| objects.objects.remove(&n))
        .map(|r| *r);
    ObjectView {
        anchor: anchor.to_string(),
        record,
        ledger: ledger.entries.remove(anchor).map(|l| *l),
        failure: ledger.failures.remove(anchor),
        timeline,
    }
}

/// Whether `e` is about `anchor` itself (not as a member or in a list).
fn touches_itself(e: &Event, anchor: &str) -> bool {
    match e {
        Event::ObjectImported(i) => i.object.anchor == anchor,
        Event::ObjectChanged(c) => c.anchor == anchor,
        Event::ObjectDeleted(d) => d.anchor == anchor,
        Event::ExportApplied(x) => x.anchor == anchor,
        Event::ExportFailed(f) => f.anchor == anchor,
        Event::DuplicateRemoved(d) => d.anchor == anchor,
        Event::TargetDuplicateRemoved(d) => d.anchor == anchor,
        _ => false,
    }
}

fn op(o: ExportOp) -> &'static str {
    match o {
        ExportOp::Create => "created",
        ExportOp::Update => "updated",
        ExportOp::Delete => "deleted",
        ExportOp::Match => "matched",
        ExportOp::Disable => "disabled (awaiting deletion)",
    }
}

/// What an event did to `anchor`, in one line; `before` is the object as it was.
pub fn summary(
    anchor: &str,
    before: Option<&ObjectRecord>,
    e: &Event,
    groups: &BTreeMap<String, String>,
) -> String {
    match e {
        Event::ObjectImported(i) if i.object.anchor == anchor => {
            let what = if i.returned { "returned" } else { "imported" };
            match before.filter(|b| b.live()) {
                Some(b) => {
                    let d = super::history::value_changes(b, &i.object.attrs, &i.object.dn);
                    if d.is_empty() {
                        format!("{what} again, unchanged: {}", i.object.dn)
                    } else {
                        format!("{what} again: {}", d.join("; "))
                    }
                }
                None => format!("{what} {} {}", i.object.kind.as_str(), i.object.dn),
            }
        }
        Event::ObjectImported(i) => format!("imported as a member of group {}", i.object.dn),
        Event::ObjectChanged(c) if c.anchor == anchor => {
            let mut parts = Vec::new();
            if let Some(dn) = &c.dn {
                parts.push(format!(
                    "dn: {} -> {dn}",
                    before.map_or("(unknown)", |b| b.dn.as_str())
                ));
            }
            for (k, v) in &c.set {
                let old = before.and_then(|b| b.attrs.get(k));
                parts.push(format!(
                    "{k}: {} -> {}",
                    show_values(old),
                    show_values(Some(v))
                ));
            }
            for k in &c.removed {
                let old = before.and_then(|b| b.attrs.get(k));
                parts.push(format!("{k}: {} -> (none)", show_values(old)));
            }
            if !c.members_added.is_empty() || !c.members_removed.is_empty() {
                parts.push(format!(
                    "members +{} -{}",
                    c.members_added.len(),
                    c.members_removed.len()
                ));
            }
            format!("changed {}", parts.join("; "))
        }
        Event::ObjectChanged(c) => {
            let group = groups.get(&c.anchor).unwrap_or(&c.anchor);
            if c.members_added.iter().any(|m| m == anchor) {
                format!("added to group {group}")
            } else {
                format!("removed from group {group}")
            }
        }
        Event::ObjectDeleted(d) => match &d.evidence {
            DeletionEvidence::LeftScope { dn } => format!("left the scope: {dn}"),
            DeletionEvidence::OutOfFilter { which, filter } => {
                format!("left the scope: no longer matches the {which} filter {filter}")
            }
            DeletionEvidence::NotMember { groups } => format!(
                "left the scope: not a member of {} ([source] member_of)",
                groups.join("; ")
            ),
            DeletionEvidence::Tombstone { deleted_at, .. } => format!(
                "deleted in the source (tombstone{})",
                deleted_at.map_or(String::new(), |t| format!(
                    ", deleted {}",
                    time(t.timestamp_micros())
                ))
            ),
            ev => format!("deleted in the source ({})", ev.label()),
        },
        Event::ExportApplied(x) => {
            let name = x
                .state
                .as_ref()
                .and_then(crate::target::Mapped::from_state)
                .map(|m| format!(" as {}", m.name()))
                .unwrap_or_default();
            format!(
                "{} in the target: {}{name} (epoch {})",
                op(x.op),
                x.target_id,
                x.epoch
            )
        }
        Event::ExportFailed(f) => format!(
            "{} failed{}: {}",
            match f.op {
                ExportOp::Create => "create",
                ExportOp::Update => "update",
                ExportOp::Delete => "delete",
                ExportOp::Match => "match",
                ExportOp::Disable => "disable",
            },
            f.status.map_or(String::new(), |s| format!(" ({s})")),
            f.error
        ),
        Event::DuplicateRemoved(d) => {
            format!("duplicate {} removed from the target", d.target_id)
        }
        Event::TargetDuplicateRemoved(d) => format!(
            "late copy {} removed from the target (kept {})",
            d.target_id, d.kept
        ),
        Event::DeletionsHeld(h) => format!(
            "deletion held with {} other(s), plan {}: {}",
            h.anchors.len().saturating_sub(1),
            &h.plan_hash[..h.plan_hash.len().min(12)],
            h.reason
        ),
        Event::DeletionsApproved(a) => format!(
            "held deletion approved, plan {}{}",
            &a.plan_hash[..a.plan_hash.len().min(12)],
            a.approved_by
                .as_deref()
                .map_or(String::new(), |b| format!(" by {b}"))
        ),
        Event::AnchorsMigrated(m) => {
            match m
                .rekeyed
                .iter()
                .find(|r| r.old == anchor || r.new == anchor)
            {
                Some(r) => format!("re-keyed {} -> {} ({})", r.old, r.new, m.to),
                None => format!("left under its old anchor by the migration to {}", m.to),
            }
        }
        Event::TargetReset(r) => format!("target reset: {}", r.reason),
        other => other.event_type().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::*;

    fn stored(seq: u64, e: &Event) -> (StoredEvent, Event) {
        (
            StoredEvent {
                seq,
                stream: "source".into(),
                stream_version: seq,
                event_type: e.event_type().into(),
                schema_version: 1,
                instance: "old".into(),
                recorded_at_us: seq as i64 * 1_000_000,
                idempotency_key: None,
                payload: e.payload(),
                prev_hash: [0; 32],
                hash: [0; 32],
            },
            e.clone(),
        )
    }

    fn text(v: &str) -> Vec<AttrValue> {
        vec![AttrValue::Text(v.into())]
    }

    #[test]
    fn a_timeline_says_what_changed_from_what() {
        let o = SourceObject {
            anchor: "a".into(),
            kind: ObjectKind::User,
            dn: "uid=ann,dc=x".into(),
            attrs: Attrs::from([
                ("title".into(), text("Clerk")),
                ("mail".into(), text("Ann@X")),
            ]),
            members: Default::default(),
        };
        let events = vec![
            stored(
                1,
                &Event::ObjectImported(ObjectImported {
                    object: o,
                    returned: false,
                }),
            ),
            stored(
                2,
                &Event::ObjectChanged(ObjectChanged {
                    anchor: "a".into(),
                    set: Attrs::from([("title".into(), text("Boss"))]),
                    ..Default::default()
                }),
            ),
            stored(
                3,
                &Event::ObjectChanged(ObjectChanged {
                    anchor: "g".into(),
                    members_added: vec!["a".into()],
                    ..Default::default()
                }),
            ),
            stored(
                4,
                &Event::ObjectDeleted(ObjectDeleted {
                    anchor: "a".into(),
                    evidence: DeletionEvidence::SyncDelete {
                        phase: "delete".into(),
                    },
                }),
            ),
        ];
        let v = fold("a", &events, &BTreeMap::new());
        let lines: Vec<(u64, &str)> = v
            .timeline
            .iter()
            .map(|t| (t.seq, t.summary.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (1, "imported user uid=ann,dc=x"),
                (2, "changed title: 'Clerk' -> 'Boss'"),
                (3, "added to group g"),
                (4, "deleted in the source (rfc4533-delete)"),
            ]
        );
        let r = v.record.as_ref().unwrap();
        assert_eq!(r.attrs.get("title").unwrap().to_vec(), text("Boss"));
        assert!(!r.live());
        assert!(v.known_as("ANN@x"));
        assert!(v.known_as("UID=Ann,DC=X"));
        assert!(!v.known_as("bob@x"));
        assert_eq!(v.timeline[0].at, "1970-01-01T00:00:01Z");
    }

    #[test]
    fn a_rekeyed_object_keeps_its_target_and_history() {
        let export = |seq, anchor: &str, op| {
            stored(
                seq,
                &Event::ExportApplied(ExportApplied {
                    epoch: 1,
                    anchor: anchor.into(),
                    kind: ObjectKind::User,
                    op,
                    target_id: "t1".into(),
                    state: None,
                    etag: None,
                }),
            )
        };
        let events = vec![
            export(1, "old", ExportOp::Create),
            stored(
                2,
                &Event::AnchorsMigrated(AnchorsMigrated {
                    from: Some("nsUniqueId".into()),
                    to: "entryUUID".into(),
                    rekeyed: vec![Rekey {
                        old: "old".into(),
                        new: "new".into(),
                    }],
                    unpaired: vec![],
                }),
            ),
            export(3, "new", ExportOp::Update),
        ];
        let v = fold("new", &events, &BTreeMap::new());
        assert_eq!(v.ledger.as_ref().map(|l| l.target_id.as_str()), Some("t1"));
        assert_eq!(
            v.timeline
                .iter()
                .map(|t| t.summary.as_str())
                .collect::<Vec<_>>(),
            [
                "created in the target: t1 (epoch 1)",
                "re-keyed old -> new (entryUUID)",
                "updated in the target: t1 (epoch 1)"
            ]
        );
    }
}

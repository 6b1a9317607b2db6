//! Missed deletions: objects we own in the target that are no longer live and in scope in
//! the source, and whose deletion has not reached the target.

use std::collections::HashMap;

use serde::Serialize;

use super::{ledger_name, point, point_utc, time_opt};
use crate::config::OnDelete;
use crate::log::event::ExportOp;
use crate::log::event::ObjectKind;
use crate::output::time;
use crate::plan::plan::Removal;
use crate::project::{At, Cursors, InstanceStatus, State};

/// Whether a deletion will reach the target without anyone acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No active holder's next cycle would export it: nobody holds the relationship, the
    /// holder is stopped or retired (and every other instance is fenced), or the deletion
    /// is older than the holder's last completed sync, which did not export it.
    Missed,
    /// Recorded after the active holder's last completed sync (or approved since): its
    /// next cycle exports it.
    Pending,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Missed => "missed",
            Status::Pending => "pending",
        }
    }
}

/// Where an unexported deletion stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteState {
    /// Nothing has tried to export it yet.
    Unsent,
    /// The deletion guard holds it: an unapproved plan names it.
    Held,
    /// Its export was tried and failed.
    Failed,
    /// Set inactive in the target, its deletion waiting for `[sync] disabled_for` to pass
    /// (`on_delete = "disable"`).
    Disabled,
}

impl DeleteState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteState::Unsent => "unsent",
            DeleteState::Held => "held",
            DeleteState::Failed => "failed",
            DeleteState::Disabled => "disabled",
        }
    }
}

/// A completed sync (one that exported), by which instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncPoint {
    pub instance: String,
    pub at: At,
}

/// The sync gap a deletion fell into: the last completed sync before it and the next one
/// (None: no sync has completed since).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub from: Option<SyncPoint>,
    pub to: Option<SyncPoint>,
}

/// One owned object whose deletion has not reached the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MissedDelete {
    pub anchor: String,
    pub name: String,
    pub kind: ObjectKind,
    pub target_id: String,
    /// How we know: tombstone, rfc4533-delete, absent-from-full-import, left-scope, or
    /// not-in-source (the ledger owns an anchor the source projection never had).
    pub evidence: String,
    /// The evidence's particulars: where it moved (left scope), the tombstone's parent, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_detail: Option<String>,
    /// When the source deleted it (a tombstone's deletion time), when the source said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at_us: Option<i64>,
    /// When the log recorded the deletion, and which instance saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<At>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_by: Option<String>,
    /// The last time the log saw it live (its last change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_live: Option<At>,
    pub gap: Gap,
    /// Instances whose cursor is positioned before the deletion and is younger than the
    /// tombstone lifetime: a delta from it can still reveal the deletion.
    pub revealable_by: Vec<String>,
    pub state: DeleteState,
    /// The held plan's hash, or the failed export's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_detail: Option<String>,
    pub status: Status,
    /// Why: who would export it next, or why nobody will.
    pub status_detail: String,
}

const DAY_US: i64 = 86_400 * 1_000_000;

/// Every completed sync of every instance, oldest first.
pub fn sync_points(state: &State) -> Vec<SyncPoint> {
    let mut v: Vec<SyncPoint> = state
        .sync_history
        .syncs
        .iter()
        .flat_map(|(name, syncs)| {
            syncs.iter().map(move |at| SyncPoint {
                instance: name.clone(),
                at: *at,
            })
        })
        .collect();
    v.sort_by_key(|p| p.at.seq);
    v
}

/// The gap around seq `seq` in `syncs` (sorted by seq).
pub fn gap_around(syncs: &[SyncPoint], seq: u64) -> Gap {
    let i = syncs.partition_point(|p| p.at.seq < seq);
    Gap {
        from: i.checked_sub(1).and_then(|j| syncs.get(j)).cloned(),
        to: syncs.get(i).cloned(),
    }
}

/// What the audit's evidence is as of: the log's head and the last imports recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsOf {
    pub seq: u64,
    /// The last completed import: by which instance, when, and whether it was full.
    pub last_import: Option<(String, At, bool)>,
    /// The last complete full import.
    pub last_full_import: Option<At>,
}

impl AsOf {
    pub fn of(state: &State) -> AsOf {
        let last_import = state
            .control
            .instances
            .instances
            .iter()
            .filter_map(|(name, r)| r.last_import.map(|(at, full)| (name.clone(), at, full)))
            .max_by_key(|(_, at, _)| at.seq);
        AsOf {
            seq: state.seq,
            last_import,
            last_full_import: state.objects.last_full_import,
        }
    }

    /// One line for people: "as of seq N: the last import ...".
    pub fn line(&self) -> String {
        let last = match &self.last_import {
            None => "no import recorded".to_string(),
            Some((i, at, full)) => format!(
                "the last import was a {} import by {i} at {}",
                if *full { "full" } else { "delta" },
                point(at)
            ),
        };
        let full = match (&self.last_import, self.last_full_import) {
            (Some((_, _, true)), _) => String::new(),
            (_, Some(f)) => format!("; the last full import at {}", point(&f)),
            (_, None) => "; no full import".to_string(),
        };
        format!("as of seq {}: {last}{full}", self.seq)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "last_import": self.last_import.as_ref().map(|(i, at, full)| serde_json::json!({
                "instance": i, "seq": at.seq, "at": time(at.at_us), "full": full,
            })),
            "last_full_import": self.last_full_import.map(|a| serde_json::json!({
                "seq": a.seq, "at": time(a.at_us),
            })),
        })
    }
}

/// Who would export the deletions: the active holder of the relationship and its last
/// completed sync, or why there is none.
enum Exporter<'a> {
    Active {
        name: &'a str,
        last_sync: Option<At>,
    },
    None(String),
}

fn exporter(state: &State) -> Exporter<'_> {
    let Some(name) = state.control.relationship.holder.as_deref() else {
        return Exporter::None("no instance holds the sync relationship".into());
    };
    let rec = state.control.instances.instances.get(name);
    match rec.map(|r| r.status) {
        Some(InstanceStatus::Stopped) => Exporter::None(format!(
            "the holder {name} is stopped, and every other instance is fenced"
        )),
        Some(InstanceStatus::Retired) => Exporter::None(format!(
            "the holder {name} is retired, and every other instance is fenced"
        )),
        _ => Exporter::Active {
            name,
            last_sync: state.sync_history.of(name).last().copied(),
        },
    }
}

/// The audit (pure). `cursors` are the instances' cursors to judge what could reveal each
/// deletion: those before a fresh import, when one was made for the audit. `now_us` is the
/// clock; `on_delete` the `[sync]` policy: a user disabled in the target and not yet due
/// for deletion is `pending` (state `disabled`), and once due it is judged from its due
/// time. Sorted by when the deletion was recorded, then anchor.
pub fn missed_deletes(
    state: &State,
    cursors: &Cursors,
    now_us: i64,
    on_delete: OnDelete,
) -> Vec<MissedDelete> {
    let removal = Removal { on_delete, now_us };
    let syncs = sync_points(state);
    let lifetime_us = state
        .control
        .tombstone_lifetime_days
        .map(|d| i64::from(d) * DAY_US);
    let held: HashMap<&str, &str> = state
        .control
        .guard
        .plans
        .iter()
        .filter(|(_, p)| p.approved.is_none())
        .flat_map(|(h, p)| p.anchors.iter().map(move |a| (a.as_str(), h.as_str())))
        .collect();
    let exporter = exporter(state);
    // An approved list that stands: the holder's next cycle exports it.
    let approved: std::collections::HashSet<&str> = state
        .control
        .guard
        .current
        .as_ref()
        .and_then(|h| state.control.guard.plans.get(h))
        .filter(|p| p.approved.is_some())
        .map(|p| p.anchors.iter().map(String::as_str).collect())
        .unwrap_or_default();
    // The held list that stands, unapproved: the holder's next cycle holds it again. With
    // `[sync] hold = "all"` its held cycles failed (`SyncRunFailed`, reason held), so no
    // completed sync may be newer than these deletions: they are missed all the same.
    let waiting: Option<(&String, std::collections::HashSet<&str>)> =
        state.control.guard.waiting().map(|(h, p)| {
            (
                h,
                p.anchors
                    .iter()
                    .map(String::as_str)
                    .collect::<std::collections::HashSet<_>>(),
            )
        });
    let mut out: Vec<MissedDelete> = Vec::new();
    for (anchor, l) in state.ledger.owned() {
        let rec = state.objects.objects.get(anchor);
        if rec.is_some_and(|r| r.live()) {
            continue;
        }
        let deletion = rec.and_then(|r| r.deletion.as_ref());
        let (evidence, evidence_detail, deleted_at_us) = match deletion.map(|d| &d.evidence) {
            None => ("not-in-source".to_string(), None, None),
            Some(e) => (e.label().to_string(), e.detail(), e.deleted_at_us()),
        };
        let gap = deletion.map_or_else(Gap::default, |d| gap_around(&syncs, d.at.seq));
        let revealable_by = deletion
            .map(|d| {
                cursors
                    .current
                    .iter()
                    .filter(|(_, c)| {
                        c.at.seq < d.at.seq
                            && deleted_at_us.is_none_or(|t| c.at.at_us < t)
                            && lifetime_us.is_none_or(|life| now_us - c.at.at_us <= life)
                    })
                    .map(|(i, _)| i.clone())
                    .collect()
            })
            .unwrap_or_default();
        let failed = state
            .ledger
            .failures
            .get(anchor)
            .filter(|f| f.op == ExportOp::Delete);
        let (st, state_detail) = if let Some(f) = failed {
            (
                DeleteState::Failed,
                Some(match f.status {
                    Some(s) => format!("{s}: {}", f.error),
                    None => f.error.clone(),
                }),
            )
        } else if let Some(h) = held.get(anchor.as_str()) {
            (DeleteState::Held, Some(format!("plan {h}")))
        } else {
            (DeleteState::Unsent, None)
        };
        // When the log learnt that it must go: its deletion, or (an anchor the source
        // never had) its last export.
        let since = deletion.map_or(l.last_export, |d| d.at);
        // A user disabled in the target (`on_delete = "disable"`): due for deletion then.
        let due = match (l.kind, l.disabled.as_ref()) {
            (ObjectKind::User, Some(d)) => removal.due_us(d).map(|u| (*d, u)),
            _ => None,
        };
        let (st, state_detail) = match due {
            Some((d, u)) if st == DeleteState::Unsent => (
                DeleteState::Disabled,
                Some(format!(
                    "disabled at {}, deletion due {}",
                    point_utc(&d),
                    time(u)
                )),
            ),
            _ => (st, state_detail),
        };
        let (status, status_detail) = match &exporter {
            _ if due.is_some_and(|(_, u)| now_us < u) => (
                Status::Pending,
                format!(
                    "disabled in the target (on_delete = \"disable\"); its deletion is due at {}",
                    due.map_or(String::new(), |(_, u)| time(u))
                ),
            ),
            Exporter::None(why) => (Status::Missed, why.clone()),
            Exporter::Active { name, .. } if approved.contains(anchor.as_str()) => (
                Status::Pending,
                format!("approved: {name}'s next cycle exports it"),
            ),
            Exporter::Active {
                name,
                last_sync: Some(s),
            } if due.map_or(s.seq > since.seq, |(_, u)| s.at_us > u) => (
                Status::Missed,
                match due {
                    Some((_, u)) => format!(
                        "due for deletion at {}, before {name}'s last completed sync ({}), which did not delete it",
                        time(u),
                        point_utc(s)
                    ),
                    None => format!(
                        "older than {name}'s last completed sync ({}), which did not export it",
                        point_utc(s)
                    ),
                },
            ),
            Exporter::Active { name, .. } => match &waiting {
                Some((h, held)) if held.contains(anchor.as_str()) => (
                    Status::Missed,
                    format!(
                        "held (plan {}, not approved): {name}'s next cycle holds it again",
                        crate::plan::plan::short_hash(h)
                    ),
                ),
                _ => (
                    Status::Pending,
                    format!(
                        "recorded after {name}'s last completed sync: its next cycle exports it"
                    ),
                ),
            },
        };
        out.push(MissedDelete {
            anchor: anchor.clone(),
            name: ledger_name(state, anchor),
            kind: l.kind,
            target_id: l.target_id.clone(),
            evidence,
            evidence_detail,
            deleted_at_us,
            recorded: deletion.map(|d| d.at),
            recorded_by: deletion.map(|d| d.instance.clone()),
            last_seen_live: rec.map(|r| r.last_changed),
            gap,
            revealable_by,
            state: st,
            state_detail,
            status,
            status_detail,
        });
    }
    out.sort_by(|a, b| {
        let k = |m: &MissedDelete| m.recorded.map_or(u64::MAX, |r| r.seq);
        k(a).cmp(&k(b)).then_with(|| a.anchor.cmp(&b.anchor))
    });
    out
}

pub const HEADERS: [&str; 13] = [
    "ANCHOR",
    "NAME",
    "KIND",
    "EVIDENCE",
    "DETAIL",
    "DELETED",
    "RECORDED",
    "LAST SEEN LIVE",
    "GAP FROM",
    "GAP TO",
    "REVEALABLE BY",
    "STATE",
    "STATUS",
];

fn sync_point(p: Option<&SyncPoint>, none: &str) -> String {
    p.map_or(none.to_string(), |p| {
        format!("{} by {}", point(&p.at), p.instance)
    })
}

impl MissedDelete {
    /// One table or CSV row, in the order of [`HEADERS`].
    pub fn row(&self) -> Vec<String> {
        vec![
            self.anchor.clone(),
            self.name.clone(),
            self.kind.as_str().to_string(),
            self.evidence.clone(),
            self.evidence_detail.clone().unwrap_or_default(),
            time_opt(self.deleted_at_us),
            self.recorded.map_or("-".into(), |a| point(&a)),
            self.last_seen_live.map_or("-".into(), |a| point(&a)),
            sync_point(self.gap.from.as_ref(), "never"),
            sync_point(self.gap.to.as_ref(), "open"),
            if self.revealable_by.is_empty() {
                "none".into()
            } else {
                self.revealable_by.join(" ")
            },
            match &self.state_detail {
                Some(d) => format!("{} ({d})", self.state.as_str()),
                None => self.state.as_str().to_string(),
            },
            format!(
                "{} ({})",
                self.status.as_str(),
                crate::output::shown_in(&self.status_detail)
            ),
        ]
    }

    /// The JSON shape: times as RFC 3339 beside their seqs.
    pub fn json(&self) -> serde_json::Value {
        let at = |a: Option<At>| a.map(|a| serde_json::json!({"seq": a.seq, "at": time(a.at_us)}));
        let sp = |p: Option<&SyncPoint>| {
            p.map(|p| serde_json::json!({"instance": p.instance, "seq": p.at.seq, "at": time(p.at.at_us)}))
        };
        serde_json::json!({
            "anchor": self.anchor,
            "name": self.name,
            "kind": self.kind,
            "target_id": self.target_id,
            "evidence": self.evidence,
            "evidence_detail": self.evidence_detail,
            "deleted_at": self.deleted_at_us.map(time),
            "recorded": at(self.recorded),
            "recorded_by": self.recorded_by,
            "last_seen_live": at(self.last_seen_live),
            "gap": {"from": sp(self.gap.from.as_ref()), "to": sp(self.gap.to.as_ref())},
            "revealable_by": self.revealable_by,
            "state": self.state,
            "state_detail": self.state_detail,
            "status": self.status,
            "status_detail": self.status_detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::{Log, DAY};
    use crate::log::event::{
        DeletionEvidence, DeletionsApproved, DeletionsHeld, Event, ExportFailed, ExportOp,
        SourceInfoRecorded,
    };

    const OU: &str = "ou=people,dc=example,dc=org";

    /// u1..u6 imported and exported, then a sync completed by `a`.
    fn synced() -> Log {
        let mut l = Log::new();
        for i in 1..=6 {
            l.import(
                &format!("a{i}"),
                &format!("uid=u{i},{OU}"),
                &format!("u{i}"),
            );
        }
        l.run("a", "sync");
        for i in 1..=6 {
            l.export(
                &format!("a{i}"),
                ExportOp::Create,
                &format!("u{i}@example.org"),
            );
        }
        l.run("a", "sync");
        l
    }

    fn anchors(v: &[MissedDelete]) -> Vec<&str> {
        v.iter().map(|m| m.anchor.as_str()).collect()
    }

    #[test]
    fn lists_exactly_the_owned_objects_gone_from_the_source() {
        let mut l = synced();
        let last_sync = l.state.seq;
        let cursor = l.cursor("a");
        let tomb_at = l.now + 30 * 60 * 1_000_000;
        let d2 = l.delete(
            "a2",
            DeletionEvidence::Tombstone {
                deleted_at: chrono::DateTime::from_timestamp_micros(tomb_at),
                last_known_parent: Some(OU.into()),
            },
        );
        l.delete(
            "a3",
            DeletionEvidence::LeftScope {
                dn: "uid=u3,ou=gone,dc=example,dc=org".into(),
            },
        );
        // Deleted and its deletion exported: not missed.
        l.delete(
            "a4",
            DeletionEvidence::SyncDelete {
                phase: "delete".into(),
            },
        );
        l.export("a4", ExportOp::Delete, "");
        // Held by the guard, and a failed delete.
        l.delete(
            "a5",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        l.delete(
            "a6",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        l.at(
            "a",
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "h1".into(),
                anchors: vec!["a5".into()],
                reason: "threshold".into(),
            }),
        );
        l.at(
            "a",
            Event::ExportFailed(ExportFailed {
                epoch: 1,
                anchor: "a6".into(),
                op: ExportOp::Delete,
                status: Some(500),
                error: "boom".into(),
            }),
        );
        let next_sync = l.run("a", "sync");
        // An object the ledger owns but the source projection never had.
        l.export("zz", ExportOp::Match, "stray@example.org");

        let now = l.now;
        let v = missed_deletes(&l.state, &l.state.control.cursors, now, OnDelete::Delete);
        assert_eq!(anchors(&v), ["a2", "a3", "a5", "a6", "zz"]);
        let by = |a: &str| v.iter().find(|m| m.anchor == a).unwrap();
        let m2 = by("a2");
        assert_eq!(m2.name, "u2@example.org");
        assert_eq!(m2.evidence, "tombstone");
        assert_eq!(m2.deleted_at_us, Some(tomb_at));
        assert_eq!(m2.recorded.unwrap().seq, d2);
        assert_eq!(m2.gap.from.as_ref().unwrap().at.seq, last_sync);
        assert_eq!(m2.gap.to.as_ref().unwrap().at.seq, next_sync);
        assert_eq!(
            m2.revealable_by,
            ["a"],
            "the cursor at {cursor} predates the tombstone"
        );
        assert_eq!(m2.state, DeleteState::Unsent);
        assert_eq!(by("a3").evidence, "left-scope");
        assert_eq!(
            by("a3").evidence_detail.as_deref(),
            Some("uid=u3,ou=gone,dc=example,dc=org")
        );
        assert_eq!(by("a5").state, DeleteState::Held);
        assert_eq!(by("a5").state_detail.as_deref(), Some("plan h1"));
        assert_eq!(by("a6").state, DeleteState::Failed);
        assert!(by("a6").state_detail.as_deref().unwrap().contains("boom"));
        assert_eq!(by("zz").evidence, "not-in-source");
        assert_eq!(by("zz").gap, Gap::default());

        // An approved plan no longer holds.
        l.at(
            "a",
            Event::DeletionsApproved(DeletionsApproved {
                plan_hash: "h1".into(),
                approved_by: None,
            }),
        );
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(
            v.iter().find(|m| m.anchor == "a5").unwrap().state,
            DeleteState::Unsent
        );
    }

    #[test]
    fn a_cursor_reveals_only_deletions_after_it_and_within_the_tombstone_lifetime() {
        let mut l = synced();
        l.at(
            "a",
            Event::SourceInfoRecorded(SourceInfoRecorded {
                tombstone_lifetime_days: Some(2),
                highest_usn: None,
            }),
        );
        l.cursor("old");
        l.delete(
            "a1",
            DeletionEvidence::Tombstone {
                deleted_at: None,
                last_known_parent: None,
            },
        );
        l.cursor("new");
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(
            v[0].revealable_by,
            ["old"],
            "new's cursor is past the deletion"
        );
        // Three days later old's cursor is past the two-day lifetime.
        let v = missed_deletes(
            &l.state,
            &l.state.control.cursors,
            l.now + 3 * DAY,
            OnDelete::Delete,
        );
        assert!(v[0].revealable_by.is_empty());
        // A tombstone made before the cursor was taken is not revealed by it.
        let mut l = synced();
        let early = l.now - 1;
        l.cursor("late");
        l.delete(
            "a1",
            DeletionEvidence::Tombstone {
                deleted_at: chrono::DateTime::from_timestamp_micros(early),
                last_known_parent: None,
            },
        );
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert!(v[0].revealable_by.is_empty());
    }

    #[test]
    fn staging_runs_do_not_close_a_gap_and_a_sync_after_clears_the_list() {
        let mut l = synced();
        let last = l.state.seq;
        l.delete(
            "a1",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        l.run("a", "staging");
        l.run("a", "dry-run");
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(v[0].gap.from.as_ref().unwrap().at.seq, last);
        assert_eq!(v[0].gap.to, None, "no sync exported since");
        l.export("a1", ExportOp::Delete, "");
        l.run("a", "sync");
        assert!(
            missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete).is_empty()
        );
    }

    fn holds(l: &mut Log, instance: &str, epoch: u64) {
        l.at(
            instance,
            Event::SyncRelationshipEstablished(crate::log::event::SyncRelationshipEstablished {
                holder: instance.into(),
                epoch,
            }),
        );
    }

    fn statuses(l: &Log) -> Vec<(String, Status)> {
        missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete)
            .into_iter()
            .map(|m| (m.anchor, m.status))
            .collect()
    }

    #[test]
    fn a_disabled_user_is_pending_until_its_deletion_is_due_and_missed_after() {
        let mut l = synced();
        holds(&mut l, "a", 1);
        l.delete(
            "a1",
            DeletionEvidence::SyncDelete {
                phase: "delete".into(),
            },
        );
        let disabled_seq = l.export("a1", ExportOp::Disable, "u1@example.org");
        let disabled_at = l.now;
        let policy = OnDelete::Disable {
            after: std::time::Duration::from_secs(30 * 86_400),
        };
        let due = disabled_at + 30 * DAY;
        // Syncs that (rightly) did not delete it leave it pending before its time.
        l.run("a", "sync");
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, policy);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (
                v[0].state,
                v[0].state_detail.clone(),
                v[0].status,
                v[0].status_detail.clone()
            ),
            (
                DeleteState::Disabled,
                Some(format!(
                    "disabled at {}, deletion due {}",
                    point(&At {
                        seq: disabled_seq,
                        at_us: disabled_at
                    }),
                    time(due)
                )),
                Status::Pending,
                format!(
                    "disabled in the target (on_delete = \"disable\"); its deletion is due at {}",
                    time(due)
                )
            )
        );
        // Due, and no completed sync since: the holder's next cycle deletes it.
        l.now = due;
        assert_eq!(
            missed_deletes(&l.state, &l.state.control.cursors, l.now, policy)[0].status,
            Status::Pending
        );
        // A completed sync after the due time that did not delete it: missed.
        let s = l.run("a", "sync");
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, policy);
        assert_eq!(v[0].status, Status::Missed);
        assert!(
            v[0].status_detail.starts_with("due for deletion at ")
                && v[0].status_detail.contains(&format!("(seq {s})")),
            "{}",
            v[0].status_detail
        );
        // Under on_delete = "delete" the disabled user is judged from its deletion.
        let v = missed_deletes(
            &l.state,
            &l.state.control.cursors,
            disabled_at,
            OnDelete::Delete,
        );
        assert_eq!(v[0].status, Status::Missed);
    }

    #[test]
    fn a_deletion_is_pending_until_the_active_holder_syncs_without_it() {
        let mut l = synced();
        let gone = |l: &mut Log, a: &str| {
            l.delete(
                a,
                DeletionEvidence::SyncDelete {
                    phase: "delete".into(),
                },
            )
        };
        gone(&mut l, "a1");
        // Nobody holds the relationship: nobody will export it.
        assert_eq!(statuses(&l), [("a1".into(), Status::Missed)]);
        holds(&mut l, "a", 1);
        // Seen after a's last completed sync: a's next cycle exports it.
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(v[0].status, Status::Pending);
        assert_eq!(
            v[0].status_detail,
            "recorded after a's last completed sync: its next cycle exports it"
        );
        // A sync of a staging instance does not count; a completed sync of a that did not
        // export it makes it missed.
        l.run("b", "staging");
        assert_eq!(statuses(&l), [("a1".into(), Status::Pending)]);
        let s = l.run("a", "sync");
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(v[0].status, Status::Missed);
        assert!(
            v[0].status_detail.contains(&format!("(seq {s})")),
            "{}",
            v[0].status_detail
        );
        // A newer one is pending while an older one is missed; --fail-if-any counts one.
        gone(&mut l, "a2");
        assert_eq!(
            statuses(&l),
            [
                ("a1".into(), Status::Missed),
                ("a2".into(), Status::Pending)
            ]
        );
        // The holder stopped, or retired: nothing is pending.
        l.at("a", Event::InstanceStopped(Default::default()));
        assert_eq!(
            statuses(&l),
            [("a1".into(), Status::Missed), ("a2".into(), Status::Missed)]
        );
        l.at("a", Event::InstanceStarted(Default::default()));
        l.at("a", Event::InstanceRetired(Default::default()));
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(
            v[1].status_detail,
            "the holder a is retired, and every other instance is fenced"
        );
        // Another instance takes over: a1 is older than nothing b synced: pending.
        holds(&mut l, "b", 2);
        assert_eq!(
            statuses(&l),
            [
                ("a1".into(), Status::Pending),
                ("a2".into(), Status::Pending)
            ]
        );
    }

    #[test]
    fn an_approved_list_that_stands_is_pending() {
        let mut l = synced();
        holds(&mut l, "a", 1);
        l.delete(
            "a1",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        l.at(
            "a",
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "h1".into(),
                anchors: vec!["a1".into()],
                reason: "threshold".into(),
            }),
        );
        l.run("a", "sync");
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(
            (v[0].state, v[0].status),
            (DeleteState::Held, Status::Missed)
        );
        l.at(
            "a",
            Event::DeletionsApproved(DeletionsApproved {
                plan_hash: "h1".into(),
                approved_by: None,
            }),
        );
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(
            (v[0].state, v[0].status, v[0].status_detail.as_str()),
            (
                DeleteState::Unsent,
                Status::Pending,
                "approved: a's next cycle exports it"
            )
        );
    }

    #[test]
    fn a_held_list_whose_cycle_failed_is_missed() {
        // [sync] hold = "all": the held cycle exported nothing and failed (reason held), so
        // no completed sync is newer than the deletion; the list that stands is held again
        // by the holder's next cycle: missed. Superseded, the old list's deletions are the
        // new list's, or the next cycle's to export.
        let mut l = synced();
        holds(&mut l, "a", 1);
        l.delete(
            "a1",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        l.at(
            "a",
            Event::SyncRunStarted(crate::log::event::SyncRunStarted {
                run_id: "h".into(),
                full: false,
                mode: "sync".into(),
            }),
        );
        l.at(
            "a",
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "0123456789abcdef".into(),
                anchors: vec!["a1".into()],
                reason: "threshold".into(),
            }),
        );
        l.at(
            "a",
            Event::SyncRunFailed(crate::log::event::SyncRunFailed {
                run_id: "h".into(),
                error: "1 deletion(s) held".into(),
                reason: Some(crate::log::event::FailureReason::Held),
            }),
        );
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(
            (v[0].state, v[0].status, v[0].status_detail.as_str()),
            (
                DeleteState::Held,
                Status::Missed,
                "held (plan 0123456789ab, not approved): a's next cycle holds it again"
            )
        );
        assert_eq!(v[0].gap.to, None, "a failed cycle closes no gap");
        l.at(
            "a",
            Event::DeletionsHoldEnded(crate::log::event::DeletionsHoldEnded {
                plan_hash: "0123456789abcdef".into(),
                reason: "within the threshold".into(),
            }),
        );
        assert_eq!(statuses(&l), [("a1".into(), Status::Pending)]);
    }

    #[test]
    fn as_of_names_the_last_import_and_the_last_full_one() {
        let mut l = synced();
        assert_eq!(
            AsOf::of(&l.state).line(),
            format!(
                "as of seq {}: no import recorded; no full import",
                l.state.seq
            )
        );
        let done = |l: &mut Log, i: &str, full: bool| {
            l.at(
                i,
                Event::ImportCompleted(crate::log::event::ImportCompleted {
                    run_id: "r".into(),
                    full,
                    seen: 6,
                    added: 0,
                    changed: 0,
                    deleted: 0,
                    left_scope: 0,
                }),
            )
        };
        let f = done(&mut l, "b", true);
        let d = done(&mut l, "a", false);
        let a = AsOf::of(&l.state);
        assert_eq!(
            a.last_import
                .as_ref()
                .map(|(i, at, full)| (i.as_str(), at.seq, *full)),
            Some(("a", d, false))
        );
        assert_eq!(a.last_full_import.map(|x| x.seq), Some(f));
        let line = a.line();
        assert!(
            line.starts_with(&format!(
                "as of seq {d}: the last import was a delta import by a at "
            )),
            "{line}"
        );
        assert!(
            line.contains("; the last full import at ") && line.ends_with(&format!("(seq {f})")),
            "{line}"
        );
    }

    #[test]
    fn rows_and_json_carry_every_column() {
        let mut l = synced();
        l.delete(
            "a1",
            DeletionEvidence::LeftScope {
                dn: "uid=u1,ou=x".into(),
            },
        );
        let v = missed_deletes(&l.state, &l.state.control.cursors, l.now, OnDelete::Delete);
        assert_eq!(v[0].row().len(), HEADERS.len());
        assert_eq!(v[0].row()[11], "unsent");
        assert_eq!(
            v[0].row()[12],
            "missed (no instance holds the sync relationship)"
        );
        assert_eq!(v[0].row()[9], "open");
        let j = v[0].json();
        assert_eq!(j["state"], "unsent");
        assert_eq!(j["status"], "missed");
        assert_eq!(j["kind"], "user");
        assert_eq!(j["gap"]["from"]["instance"], "a");
    }
}

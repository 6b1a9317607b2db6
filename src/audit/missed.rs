//! Missed deletions: objects we own in the target that are no longer live and in scope in
//! the source, and whose deletion has not reached the target.

use std::collections::HashMap;

use serde::Serialize;

use super::{ledger_name, point, time_opt};
use crate::log::event::ExportOp;
use crate::log::event::ObjectKind;
use crate::output::time;
use crate::project::{At, Cursors, State};

/// Where a missed deletion stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteState {
    /// Nothing has tried to export it yet.
    Missed,
    /// The deletion guard holds it: an unapproved plan names it.
    Held,
    /// Its export was tried and failed.
    Failed,
}

impl DeleteState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteState::Missed => "missed",
            DeleteState::Held => "held",
            DeleteState::Failed => "failed",
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
}

const DAY_US: i64 = 86_400 * 1_000_000;

/// Every completed sync of every instance, oldest first.
pub fn sync_points(state: &State) -> Vec<SyncPoint> {
    let mut v: Vec<SyncPoint> = state
        .instances
        .instances
        .iter()
        .flat_map(|(name, r)| {
            r.syncs.iter().map(move |at| SyncPoint {
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

/// The audit (pure). `cursors` are the instances' cursors to judge what could reveal each
/// deletion: those before a fresh import, when one was made for the audit. `now_us` is the
/// clock. Sorted by when the deletion was recorded, then anchor.
pub fn missed_deletes(state: &State, cursors: &Cursors, now_us: i64) -> Vec<MissedDelete> {
    let syncs = sync_points(state);
    let lifetime_us = state
        .objects
        .tombstone_lifetime_days
        .map(|d| i64::from(d) * DAY_US);
    let held: HashMap<&str, &str> = state
        .guard
        .plans
        .iter()
        .filter(|(_, p)| p.approved.is_none())
        .flat_map(|(h, p)| p.anchors.iter().map(move |a| (a.as_str(), h.as_str())))
        .collect();
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
            (DeleteState::Missed, None)
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
        });
    }
    out.sort_by(|a, b| {
        let k = |m: &MissedDelete| m.recorded.map_or(u64::MAX, |r| r.seq);
        k(a).cmp(&k(b)).then_with(|| a.anchor.cmp(&b.anchor))
    });
    out
}

pub const HEADERS: [&str; 12] = [
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
        let v = missed_deletes(&l.state, &l.state.cursors, now);
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
        assert_eq!(m2.state, DeleteState::Missed);
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
        let v = missed_deletes(&l.state, &l.state.cursors, l.now);
        assert_eq!(
            v.iter().find(|m| m.anchor == "a5").unwrap().state,
            DeleteState::Missed
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
        let v = missed_deletes(&l.state, &l.state.cursors, l.now);
        assert_eq!(
            v[0].revealable_by,
            ["old"],
            "new's cursor is past the deletion"
        );
        // Three days later old's cursor is past the two-day lifetime.
        let v = missed_deletes(&l.state, &l.state.cursors, l.now + 3 * DAY);
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
        let v = missed_deletes(&l.state, &l.state.cursors, l.now);
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
        let v = missed_deletes(&l.state, &l.state.cursors, l.now);
        assert_eq!(v[0].gap.from.as_ref().unwrap().at.seq, last);
        assert_eq!(v[0].gap.to, None, "no sync exported since");
        l.export("a1", ExportOp::Delete, "");
        l.run("a", "sync");
        assert!(missed_deletes(&l.state, &l.state.cursors, l.now).is_empty());
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
        let v = missed_deletes(&l.state, &l.state.cursors, l.now);
        assert_eq!(v[0].row().len(), HEADERS.len());
        assert_eq!(v[0].row()[11], "missed");
        assert_eq!(v[0].row()[9], "open");
        let j = v[0].json();
        assert_eq!(j["state"], "missed");
        assert_eq!(j["kind"], "user");
        assert_eq!(j["gap"]["from"]["instance"], "a");
    }
}

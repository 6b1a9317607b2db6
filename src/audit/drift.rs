//! Target drift: every reconcile of the whole target recorded in the log (`sync --full`,
//! or a plain `sync` once `[sync] reconcile_target` passed), with the drift it found
//! (objects missing, attributes changed out of band, duplicates carrying our anchors) and
//! what it repaired; and when the next one is due.

use serde::Serialize;

use crate::output::time;
use crate::project::{At, Reconcile, State};

/// One reconcile, flat, as printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub seq: u64,
    pub at: String,
    pub instance: String,
    pub listed: u64,
    pub missing: u64,
    pub changed: u64,
    pub duplicates: u64,
    pub recreated: u64,
    pub restored: u64,
    pub removed: u64,
    pub failed: u64,
}

impl Row {
    pub fn of(r: &Reconcile) -> Row {
        Row {
            seq: r.at.seq,
            at: time(r.at.at_us),
            instance: r.instance.clone(),
            listed: r.found.listed,
            missing: r.found.missing,
            changed: r.found.changed,
            duplicates: r.found.duplicates,
            recreated: r.found.recreated,
            restored: r.found.restored,
            removed: r.found.removed,
            failed: r.found.failed,
        }
    }

    /// One line: what was found and repaired.
    pub fn summary(&self) -> String {
        format!(
            "{} (seq {}): {} read; found {} missing, {} changed, {} duplicates; {} recreated, {} restored, {} removed, {} failed",
            self.at, self.seq, self.listed, self.missing, self.changed, self.duplicates,
            self.recreated, self.restored, self.removed, self.failed
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DriftReport {
    /// Oldest first.
    pub reconciles: Vec<Row>,
    /// The last reconcile with every repair done (`{"seq", "at"}` in JSON).
    pub last_complete: Option<At>,
    /// When a plain sync next reads the whole target (None: at its next cycle).
    pub next_due: Option<String>,
}

impl DriftReport {
    /// The last reconcile found drift (someone changes the target behind dirsync's back).
    pub fn found_any(&self) -> bool {
        self.reconciles
            .last()
            .is_some_and(|r| r.missing + r.changed + r.duplicates > 0)
    }

    pub fn rows(&self) -> Vec<Vec<String>> {
        self.reconciles
            .iter()
            .map(|r| {
                vec![
                    format!("{} (seq {})", crate::output::shown_str(&r.at), r.seq),
                    r.instance.clone(),
                    r.listed.to_string(),
                    r.missing.to_string(),
                    r.changed.to_string(),
                    r.duplicates.to_string(),
                    r.recreated.to_string(),
                    r.restored.to_string(),
                    r.removed.to_string(),
                    r.failed.to_string(),
                ]
            })
            .collect()
    }
}

pub const HEADERS: [&str; 10] = [
    "RECONCILED",
    "INSTANCE",
    "LISTED",
    "MISSING",
    "CHANGED",
    "DUPLICATES",
    "RECREATED",
    "RESTORED",
    "REMOVED",
    "FAILED",
];

/// The report (pure): `every` is the configured `[sync] reconcile_target`.
pub fn drift(state: &State, every: std::time::Duration) -> DriftReport {
    let last = state.control.relationship.last_reconcile();
    let every_us = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
    DriftReport {
        reconciles: state
            .control
            .relationship
            .reconciles
            .iter()
            .map(Row::of)
            .collect(),
        last_complete: last,
        next_due: last.map(|a| time(a.at_us.saturating_add(every_us))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{Event, TargetReconciled};
    use crate::project::Meta;
    use std::time::Duration;

    #[test]
    fn lists_every_reconcile_and_the_next_due_after_the_last_complete_one() {
        let mut s = State::default();
        let empty = drift(&s, Duration::from_secs(60));
        assert!(empty.reconciles.is_empty() && empty.next_due.is_none());
        assert!(!empty.found_any());
        for (seq, failed) in [(3, 0), (9, 2)] {
            s.apply(
                &Meta {
                    seq,
                    instance: "a",
                    recorded_at_us: seq as i64 * 1_000_000,
                },
                Event::TargetReconciled(TargetReconciled {
                    run_id: "r".into(),
                    listed: 10,
                    missing: 4,
                    recreated: 4 - failed,
                    failed,
                    ..Default::default()
                }),
            );
        }
        let d = drift(&s, Duration::from_secs(60));
        assert_eq!(d.reconciles.len(), 2);
        assert!(d.found_any());
        // The one with failures does not count as done: due from the one before.
        assert_eq!(
            d.last_complete,
            Some(At {
                seq: 3,
                at_us: 3_000_000
            })
        );
        assert_eq!(d.next_due, Some(time(63_000_000)));
        assert_eq!(
            d.rows()[1][3..].to_vec(),
            ["4", "0", "0", "2", "0", "0", "2"]
        );
    }
}

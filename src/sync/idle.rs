//! Idle cycles (issue 23): a service cycle that found nothing is not history. A delta
//! import that found no change, whose cursor did not move, followed by an export with
//! nothing to do (or a standby's staging import) appends nothing to the hash-chained log:
//! no `SyncRunStarted`/`SyncRunCompleted`, no empty `ImportCompleted`, no `CursorAdvanced`
//! of the cookie the log already holds. What `status` needs from it (a cycle succeeded at
//! T; the cursor was still current at T) goes to a liveness row outside the chain, one per
//! instance, overwritten ([`IdleCycle`], the `idle_cycles` table), like the heartbeats.
//!
//! This module is the pure part: whether a cycle may stay out of the log, what of an import
//! is worth recording, and whether the export phase has anything to do.

use serde::Serialize;

use crate::project::{At, Cursor, InstanceRecord};

/// The last idle cycle of an instance, as stored outside the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdleCycle {
    pub instance: String,
    /// The cycle's run id (in no event).
    pub run_id: String,
    /// sync or staging.
    pub mode: String,
    /// When it ended.
    pub at_us: i64,
    /// The log's head when it ended: a failure recorded after it has a greater seq.
    pub seq: u64,
    /// The seq of the `CursorAdvanced` it read from and found still current (0: none).
    pub cursor_seq: u64,
}

impl IdleCycle {
    /// When `cursor` was last known current: recorded, or confirmed by this idle cycle when
    /// it read from that very cursor (a delta from it returned nothing, so every change up
    /// to then was seen).
    pub fn cursor_current_at(idle: Option<&IdleCycle>, cursor: &Cursor) -> At {
        match idle {
            Some(i) if i.cursor_seq == cursor.at.seq && i.at_us > cursor.at.at_us => At {
                seq: cursor.at.seq,
                at_us: i.at_us,
            },
            _ => cursor.at,
        }
    }
}

/// However idle, an instance records one cycle in this time: the audit's sync gaps (the
/// windows between recorded syncs) of an instance that runs stay this short, and the log
/// alone shows that it ran (24 recorded cycles a day, against one a minute or more).
pub const RECORD_IDLE_EVERY_US: i64 = 3_600 * 1_000_000;

/// Whether a cycle may leave the log untouched should it turn out idle (pure): only a
/// routine cycle of the service (`quiet`: not `sync` by hand, not a handover step, not
/// full, not a take-over), only when the log's last word on the instance is a run that
/// ended well, and only within [`RECORD_IDLE_EVERY_US`] of it (at `now_us`). After a
/// failure the next success is recorded (the log shows the recovery), and a run a crash
/// left open is closed by the next recorded one.
pub fn may_stay_quiet(
    quiet: bool,
    full: bool,
    take_over: bool,
    rec: Option<&InstanceRecord>,
    now_us: i64,
) -> bool {
    if !quiet || full || take_over {
        return false;
    }
    let Some(rec) = rec else {
        // Never recorded: its first cycle introduces it.
        return false;
    };
    if rec.running.is_some() {
        return false;
    }
    let Some((_, completed)) = &rec.last_completed else {
        return false;
    };
    let failed = rec.last_failed.as_ref().map(|f| f.at.seq);
    failed.is_none_or(|f| completed.seq > f) && now_us - completed.at_us < RECORD_IDLE_EVERY_US
}

/// What an import read, for [`import_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportFacts {
    /// It was a delta (not a full read).
    pub delta: bool,
    /// Object events planned (created, changed, deleted, left scope), the evaluation of a
    /// scope change included; the closing `ImportCompleted` not counted.
    pub object_events: usize,
    /// Anything else to record besides the cursor: the anchor attribute, the effective
    /// configuration, source facts, an invalidated cursor.
    pub other_records: bool,
    /// The source tracks changes (there is a cursor to record).
    pub tracked: bool,
    /// The cookie read differs from the one the log holds for the instance (or it holds
    /// none, or of another kind).
    pub cursor_moved: bool,
    /// Changes the source sent (before scoping): none means the cookie moved over changes
    /// the search does not see.
    pub received: u64,
}

/// What of an import to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportRecord {
    /// Everything planned (with the run's start before it, when that is pending).
    All,
    /// Only the cursor's new position: nothing else happened.
    CursorOnly,
    /// Nothing: the log already says all of it.
    Nothing,
}

/// Decide what of an import is worth recording (pure), for a cycle that may stay quiet: a
/// delta that found nothing records its cursor when it moved over changes the source sent
/// (out of scope, or no change to what is held), else nothing.
///
/// A cookie that moved while the source sent nothing is not recorded: some sources move it
/// on every read (Samba's DirSync cookie does, over changes outside the search), and a delta
/// from the recorded one reads those same nothing-changes again, so it is as current as the
/// new one. Recording it would append a `CursorAdvanced` per idle cycle. The hourly recorded
/// cycle ([`RECORD_IDLE_EVERY_US`]) records it then, so the recorded cookie never ages past
/// an hour (DirSync cookies expire with the tombstone lifetime, months).
pub fn import_record(f: &ImportFacts) -> ImportRecord {
    if !f.delta || f.object_events > 0 || f.other_records {
        return ImportRecord::All;
    }
    if f.tracked && f.cursor_moved && f.received > 0 {
        ImportRecord::CursorOnly
    } else {
        ImportRecord::Nothing
    }
}

/// What the export phase of a cycle found, for [`export_idle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportFacts {
    /// The cycle exports (holds the relationship); a staging cycle does not.
    pub exporting: bool,
    /// The plan has nothing to create, update, delete or disable.
    pub plan_empty: bool,
    /// The target is read whole this cycle (a reconcile is due).
    pub reconcile: bool,
    /// The cycle looks for duplicates in the target (after a take-over).
    pub watch: bool,
    /// The guard has an event to record (a new held list, or the end of one).
    pub guard_event: bool,
    /// Deletions are held.
    pub holding: bool,
}

/// Whether the export phase has nothing to do and nothing to record (pure).
pub fn export_idle(f: &ExportFacts) -> bool {
    if f.guard_event || f.holding {
        return false;
    }
    !f.exporting || (f.plan_empty && !f.reconcile && !f.watch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::RunFailure;

    fn at(seq: u64) -> At {
        At {
            seq,
            at_us: seq as i64 * 1_000_000,
        }
    }

    fn rec(completed: Option<u64>, failed: Option<u64>, running: Option<u64>) -> InstanceRecord {
        InstanceRecord {
            last_completed: completed.map(|s| ("c".to_string(), at(s))),
            last_failed: failed.map(|s| RunFailure {
                run_id: "f".into(),
                at: at(s),
                reason: None,
                error: "boom".into(),
            }),
            running: running.map(|s| ("r".to_string(), at(s))),
            ..Default::default()
        }
    }

    /// A minute after seq 20's time.
    const NOW: i64 = 80 * 1_000_000;

    #[test]
    fn only_routine_cycles_after_a_recorded_success_may_stay_quiet() {
        let ok = rec(Some(10), Some(5), None);
        assert!(may_stay_quiet(true, false, false, Some(&ok), NOW));
        assert!(may_stay_quiet(
            true,
            false,
            false,
            Some(&rec(Some(3), None, None)),
            NOW
        ));
        // By hand, full, taking over: always recorded.
        assert!(!may_stay_quiet(false, false, false, Some(&ok), NOW));
        assert!(!may_stay_quiet(true, true, false, Some(&ok), NOW));
        assert!(!may_stay_quiet(true, false, true, Some(&ok), NOW));
        // The instance's first cycle; after a failure; with a run left open by a crash.
        assert!(!may_stay_quiet(true, false, false, None, NOW));
        assert!(!may_stay_quiet(
            true,
            false,
            false,
            Some(&rec(None, None, None)),
            NOW
        ));
        assert!(!may_stay_quiet(
            true,
            false,
            false,
            Some(&rec(Some(5), Some(10), None)),
            NOW
        ));
        assert!(!may_stay_quiet(
            true,
            false,
            false,
            Some(&rec(None, Some(10), None)),
            NOW
        ));
        assert!(!may_stay_quiet(
            true,
            false,
            false,
            Some(&rec(Some(10), None, Some(12))),
            NOW
        ));
        // An hour after the last recorded success, idle or not, a cycle is recorded.
        let hour = RECORD_IDLE_EVERY_US;
        assert!(may_stay_quiet(
            true,
            false,
            false,
            Some(&ok),
            10_000_000 + hour - 1
        ));
        assert!(!may_stay_quiet(
            true,
            false,
            false,
            Some(&ok),
            10_000_000 + hour
        ));
    }

    #[test]
    fn a_delta_that_found_nothing_records_only_a_cursor_moved_over_changes_read() {
        let idle = ImportFacts {
            delta: true,
            object_events: 0,
            other_records: false,
            tracked: true,
            cursor_moved: false,
            received: 0,
        };
        assert_eq!(import_record(&idle), ImportRecord::Nothing);
        // Changes read that were out of scope, or no change to what is held.
        assert_eq!(
            import_record(&ImportFacts {
                cursor_moved: true,
                received: 3,
                ..idle
            }),
            ImportRecord::CursorOnly
        );
        // A cookie that moves on every read, nothing sent: the recorded one is as good.
        assert_eq!(
            import_record(&ImportFacts {
                cursor_moved: true,
                ..idle
            }),
            ImportRecord::Nothing
        );
        // Untracked sources have no cursor to record (and read in full anyway).
        assert_eq!(
            import_record(&ImportFacts {
                tracked: false,
                cursor_moved: true,
                received: 3,
                ..idle
            }),
            ImportRecord::Nothing
        );
        for busy in [
            ImportFacts {
                delta: false,
                ..idle
            },
            ImportFacts {
                object_events: 1,
                ..idle
            },
            ImportFacts {
                other_records: true,
                ..idle
            },
        ] {
            assert_eq!(import_record(&busy), ImportRecord::All, "{busy:?}");
        }
    }

    #[test]
    fn an_export_is_idle_with_an_empty_plan_and_no_reconcile_watch_or_hold() {
        let idle = ExportFacts {
            exporting: true,
            plan_empty: true,
            reconcile: false,
            watch: false,
            guard_event: false,
            holding: false,
        };
        assert!(export_idle(&idle));
        for busy in [
            ExportFacts {
                plan_empty: false,
                ..idle
            },
            ExportFacts {
                reconcile: true,
                ..idle
            },
            ExportFacts {
                watch: true,
                ..idle
            },
            ExportFacts {
                guard_event: true,
                ..idle
            },
            ExportFacts {
                holding: true,
                ..idle
            },
        ] {
            assert!(!export_idle(&busy), "{busy:?}");
        }
        // A staging cycle exports nothing whatever its plan; a guard event still counts.
        let staging = ExportFacts {
            exporting: false,
            plan_empty: false,
            ..idle
        };
        assert!(export_idle(&staging));
        assert!(!export_idle(&ExportFacts {
            guard_event: true,
            ..staging
        }));
    }

    #[test]
    fn an_idle_cycle_confirms_the_cursor_it_read_from() {
        let cursor = Cursor {
            kind: "rfc4533".into(),
            cookie: "c".into(),
            at: at(7),
        };
        let idle = |cursor_seq, at_us| IdleCycle {
            instance: "a".into(),
            run_id: "r".into(),
            mode: "sync".into(),
            at_us,
            seq: 20,
            cursor_seq,
        };
        assert_eq!(
            IdleCycle::cursor_current_at(Some(&idle(7, 50_000_000)), &cursor),
            At {
                seq: 7,
                at_us: 50_000_000
            }
        );
        // Another cursor (recorded since), or no idle cycle: the recorded time.
        assert_eq!(
            IdleCycle::cursor_current_at(Some(&idle(6, 50_000_000)), &cursor),
            at(7)
        );
        assert_eq!(IdleCycle::cursor_current_at(None, &cursor), at(7));
    }
}

//! Sync gaps: per instance, the windows in which no sync completed, set against the
//! source's tombstone lifetime and the instance's cursor. A window longer than the
//! tombstone lifetime is flagged: a cursor from before it can no longer reveal the
//! deletions made in it (the tombstones are gone); only a full import can.

use serde::Serialize;

use super::{point, span};
use crate::project::{At, State};

const DAY_US: i64 = 86_400 * 1_000_000;

/// One window without a completed sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    /// The completed sync that opened it (None: the instance has never completed one; the
    /// window starts when the log first heard of it).
    #[serde(serialize_with = "crate::output::at_json_opt")]
    pub from: Option<At>,
    /// Where it started when `from` is None.
    #[serde(serialize_with = "crate::output::at_json")]
    pub since: At,
    /// The completed sync that closed it (None: still open now, or ended by retirement).
    #[serde(serialize_with = "crate::output::at_json_opt")]
    pub to: Option<At>,
    /// The instance was retired here: its last window ends then, not now.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::output::at_json_opt"
    )]
    pub retired: Option<At>,
    /// Its length, in whole seconds in JSON (`length_seconds`).
    #[serde(
        rename = "length_seconds",
        serialize_with = "crate::output::seconds_json"
    )]
    pub length_us: i64,
    /// Source deletions the log recorded inside the window.
    pub deletions: u64,
    /// Longer than the tombstone lifetime.
    pub exceeds_lifetime: bool,
}

/// The windows of one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceGaps {
    pub instance: String,
    pub status: String,
    /// Completed syncs (that exported).
    pub syncs: u64,
    #[serde(serialize_with = "crate::output::at_json_opt")]
    pub last_sync: Option<At>,
    #[serde(serialize_with = "crate::output::at_json_opt")]
    pub cursor: Option<At>,
    #[serde(
        rename = "cursor_age_seconds",
        serialize_with = "crate::output::seconds_json_opt"
    )]
    pub cursor_age_us: Option<i64>,
    /// The cursor is older than the tombstone lifetime: deletions from before that are
    /// invisible to it. Never for a retired instance (its cursor is not used again).
    pub cursor_expired: bool,
    pub windows: Vec<Window>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GapReport {
    pub tombstone_lifetime_days: Option<u32>,
    pub instances: Vec<InstanceGaps>,
}

impl GapReport {
    /// Any window longer than the tombstone lifetime, or a cursor past it.
    pub fn flagged(&self) -> bool {
        self.instances
            .iter()
            .any(|i| i.cursor_expired || i.windows.iter().any(|w| w.exceeds_lifetime))
    }
}

/// The gaps (pure). Windows shorter than `min_us` are left out, except the open one and any
/// longer than the tombstone lifetime.
pub fn gaps(state: &State, now_us: i64, min_us: i64) -> GapReport {
    let lifetime = state
        .control
        .tombstone_lifetime_days
        .map(|d| i64::from(d) * DAY_US);
    let mut deletions: Vec<u64> = state
        .objects
        .objects
        .values()
        .filter_map(|r| r.deletion.as_ref().map(|d| d.at.seq))
        .collect();
    deletions.sort_unstable();
    // Deletions recorded with from < seq <= to.
    let between = |from: u64, to: u64| {
        (deletions.partition_point(|&s| s <= to) - deletions.partition_point(|&s| s <= from)) as u64
    };
    let exceeds = |len: i64| lifetime.is_some_and(|l| len > l);
    let mut instances = Vec::new();
    for (name, r) in &state.control.instances.instances {
        let mut windows = Vec::new();
        let mut prev: Option<At> = None;
        let syncs = state.sync_history.of(name);
        for s in syncs {
            if let Some(p) = prev {
                let len = s.at_us - p.at_us;
                if len >= min_us || exceeds(len) {
                    windows.push(Window {
                        from: Some(p),
                        since: p,
                        to: Some(*s),
                        retired: None,
                        length_us: len,
                        deletions: between(p.seq, s.seq),
                        exceeds_lifetime: exceeds(len),
                    });
                }
            }
            prev = Some(*s);
        }
        let since = prev.unwrap_or(r.first_seen);
        // A retired instance's last window ends at its retirement.
        let (end_us, end_seq) = r.retired.map_or((now_us, u64::MAX), |a| (a.at_us, a.seq));
        let len = end_us - since.at_us;
        windows.push(Window {
            from: prev,
            since,
            to: None,
            retired: r.retired,
            length_us: len,
            deletions: between(since.seq, end_seq),
            exceeds_lifetime: exceeds(len),
        });
        let cursor = state.control.cursors.current.get(name).map(|c| c.at);
        let cursor_age_us = cursor.map(|c| now_us - c.at_us);
        let cursor_expired = r.retired.is_none() && cursor_age_us.is_some_and(exceeds);
        instances.push(InstanceGaps {
            instance: name.clone(),
            status: r.status.as_str().to_string(),
            syncs: syncs.len() as u64,
            last_sync: prev,
            cursor,
            cursor_age_us,
            cursor_expired,
            windows,
        });
    }
    GapReport {
        tombstone_lifetime_days: state.control.tombstone_lifetime_days,
        instances,
    }
}

pub const HEADERS: [&str; 9] = [
    "INSTANCE",
    "STATUS",
    "FROM",
    "TO",
    "LENGTH",
    "DELETIONS",
    "PAST TOMBSTONE LIFETIME",
    "CURSOR AGE",
    "CURSOR",
];

impl GapReport {
    /// Table or CSV rows, one per window, in the order of [`HEADERS`].
    pub fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for i in &self.instances {
            for w in &i.windows {
                rows.push(vec![
                    i.instance.clone(),
                    i.status.clone(),
                    match w.from {
                        Some(f) => point(&f),
                        None => format!("never synced; known since {}", point(&w.since)),
                    },
                    match (w.to, w.retired) {
                        (Some(t), _) => point(&t),
                        (None, Some(r)) => format!("retired {}", point(&r)),
                        (None, None) => "open (now)".into(),
                    },
                    span(w.length_us),
                    w.deletions.to_string(),
                    match (self.tombstone_lifetime_days, w.exceeds_lifetime) {
                        (None, _) => "unknown lifetime".into(),
                        (Some(d), true) => format!("YES (> {d}d)"),
                        (Some(_), false) => "no".into(),
                    },
                    i.cursor_age_us.map_or("-".into(), span),
                    match (i.cursor, i.cursor_expired) {
                        (None, _) => "none".into(),
                        (Some(_), true) => "expired".into(),
                        (Some(c), false) => crate::output::shown(c.at_us),
                    },
                ]);
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::{Log, DAY, HOUR};
    use crate::log::event::{DeletionEvidence, Event, ExportOp, SourceInfoRecorded};

    #[test]
    fn windows_between_syncs_are_measured_and_flagged_past_the_lifetime() {
        let mut l = Log::new();
        l.at(
            "a",
            Event::SourceInfoRecorded(SourceInfoRecorded {
                tombstone_lifetime_days: Some(3),
                highest_usn: None,
            }),
        );
        l.import("x1", "uid=x1,dc=t", "x1");
        l.import("x2", "uid=x2,dc=t", "x2");
        l.export("x1", ExportOp::Create, "x1");
        let s1 = l.run("a", "sync");
        l.run("a", "sync"); // one hour later: short, left out
        l.step = 2 * DAY;
        l.delete(
            "x1",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        l.run("a", "staging"); // does not close the window
        let s3 = l.run("a", "sync"); // 6 days after the previous sync
        l.step = HOUR;
        l.cursor("a");
        l.run("b", "staging"); // b never synced
        let report = gaps(&l.state, l.now + HOUR, 3 * HOUR);
        assert_eq!(report.tombstone_lifetime_days, Some(3));
        let a = &report.instances[0];
        assert_eq!((a.instance.as_str(), a.syncs), ("a", 3));
        assert_eq!(a.windows.len(), 2, "{:?}", a.windows);
        let w = &a.windows[0];
        assert_eq!(w.to.unwrap().seq, s3);
        assert!(w.from.unwrap().seq > s1);
        assert!(w.length_us > 3 * DAY && w.exceeds_lifetime);
        assert_eq!(w.deletions, 1);
        let open = &a.windows[1];
        assert_eq!(open.to, None);
        assert!(!open.exceeds_lifetime);
        assert!(!a.cursor_expired);
        assert!(report.flagged());
        let b = &report.instances[1];
        assert_eq!((b.syncs, b.windows.len()), (0, 1));
        assert_eq!(b.windows[0].from, None);
        assert_eq!(report.rows().len(), 3);
        assert_eq!(report.rows()[0].len(), HEADERS.len());

        // Ten days on, the open window and a's cursor are past the lifetime too.
        let later = gaps(&l.state, l.now + 10 * DAY, 3 * HOUR);
        assert!(later.instances[0].cursor_expired);
        assert!(later.instances[0].windows[1].exceeds_lifetime);
    }

    #[test]
    fn a_retired_instance_s_last_window_ends_at_its_retirement() {
        let mut l = Log::new();
        l.at(
            "a",
            Event::SourceInfoRecorded(SourceInfoRecorded {
                tombstone_lifetime_days: Some(3),
                highest_usn: None,
            }),
        );
        l.import("x1", "uid=x1,dc=t", "x1");
        l.export("x1", ExportOp::Create, "x1");
        let s = l.run("old", "sync");
        l.cursor("old");
        let retired = l.at("old", Event::InstanceRetired(Default::default()));
        l.delete(
            "x1",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        // Ten days on: the retired instance's window ended at retirement, one hour after
        // its sync, and its old cursor flags nothing.
        let r = gaps(&l.state, l.now + 10 * DAY, 0);
        let old = &r.instances[0];
        let w = old.windows.last().unwrap();
        assert_eq!(w.from.map(|a| a.seq), Some(s));
        assert_eq!((w.to, w.retired.map(|a| a.seq)), (None, Some(retired)));
        assert_eq!(
            (w.length_us, w.deletions, w.exceeds_lifetime),
            (2 * HOUR, 0, false)
        );
        assert!(!old.cursor_expired);
        assert!(!r.flagged());
        assert!(r.rows()[0][3].starts_with("retired "), "{:?}", r.rows());
        assert!(r.rows()[0][3].ends_with(&format!("(seq {retired})")));
    }

    #[test]
    fn nothing_is_flagged_without_a_lifetime_or_a_long_gap() {
        let mut l = Log::new();
        l.run("a", "sync");
        l.run("a", "sync");
        let r = gaps(&l.state, l.now, 0);
        assert!(!r.flagged());
        assert_eq!(r.instances[0].windows.len(), 2);
        assert_eq!(r.rows()[0][6], "unknown lifetime");
    }
}

//! Audits over the log: deletions that never reached the target ([`missed`]), the windows in
//! which no sync completed ([`gaps`]), and history: differences between two points of the
//! log and what-if replays under another configuration ([`history`]), and the drift found
//! in the target and repaired ([`drift`]).
//!
//! Everything here is pure: functions of projections ([`crate::project::State`]) and the
//! clock. The command handlers read the store (and the source, for fresh evidence) and print.

pub mod drift;
pub mod fresh;
pub mod gaps;
pub mod history;
pub mod lookup;
pub mod missed;
pub mod object;
pub mod report;
pub mod status;

use crate::log::event::ObjectKind;
use crate::output::time;
use crate::project::{At, State};

/// The name people know a ledger entry by: its mapped state's userName or displayName.
pub fn ledger_name(state: &State, anchor: &str) -> String {
    crate::target::ledger_name(&state.ledger, anchor)
}

/// A point of the log in a table: "TIME (seq N)", the time as `--local-time` says.
pub fn point(a: &At) -> String {
    crate::output::shown_at(a)
}

/// A point of the log in text that is data (a JSON field, the HTML report, which says
/// UTC): "TIME (seq N)", the time in UTC whatever `--local-time` says.
pub fn point_utc(a: &At) -> String {
    format!("{} (seq {})", time(a.at_us), a.seq)
}

/// An optional time in microseconds for a table (as `--local-time` says), or "-".
pub fn time_opt(us: Option<i64>) -> String {
    us.map_or_else(|| "-".to_string(), crate::output::shown)
}

/// A duration in whole units people read: "3d 4h", "12m", "40s".
pub fn span(us: i64) -> String {
    let s = us.max(0) / 1_000_000;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// An attribute's values as people read them: `'a'`, `'a', 'b'`, `<16 bytes>`, or `(none)`
/// when it has none; long lists are cut after five values, long values after 120 characters.
pub fn show_values(v: Option<&crate::log::event::Values>) -> String {
    use crate::log::event::AttrValue;
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return "(none)".to_string();
    };
    let one = |x: &AttrValue| match x {
        AttrValue::Text(t) if t.chars().count() > 120 => {
            format!("'{}...'", t.chars().take(117).collect::<String>())
        }
        AttrValue::Text(t) => format!("'{t}'"),
        AttrValue::Binary { b64 } => format!("<{} bytes>", b64.len()),
    };
    let mut out: Vec<String> = v.iter().take(5).map(one).collect();
    if v.len() > 5 {
        out.push(format!("... ({} values)", v.len()));
    }
    out.join(", ")
}

/// One object named in an audit or a diff, with what is said about it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    pub anchor: String,
    pub kind: ObjectKind,
    /// The DN (source objects) or the target name (ledger entries).
    pub name: String,
    /// Attributes that changed, or why it is listed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<String>,
}

impl Item {
    pub fn row(&self, what: &str) -> Vec<String> {
        vec![
            what.to_string(),
            self.kind.as_str().to_string(),
            self.anchor.clone(),
            self.name.clone(),
            self.detail.join(", "),
        ]
    }
}

/// Building states from events, for the unit tests of this module.
#[cfg(test)]
pub(crate) mod testkit {
    use std::collections::BTreeSet;

    use crate::log::event::*;
    use crate::project::{Meta, State};

    pub const HOUR: i64 = 3600 * 1_000_000;
    pub const DAY: i64 = 24 * HOUR;

    /// A state and a clock: every event is one seq and `step` microseconds later.
    pub struct Log {
        pub state: State,
        pub now: i64,
        pub step: i64,
    }

    impl Log {
        pub fn new() -> Log {
            Log {
                state: State::default(),
                now: 1_700_000_000_000_000,
                step: HOUR,
            }
        }

        pub fn at(&mut self, instance: &str, e: Event) -> u64 {
            self.now += self.step;
            let seq = self.state.seq + 1;
            self.state.apply(
                &Meta {
                    seq,
                    instance,
                    recorded_at_us: self.now,
                },
                e,
            );
            seq
        }

        pub fn import(&mut self, anchor: &str, dn: &str, uid: &str) -> u64 {
            let text = |s: &str| vec![AttrValue::Text(s.into())];
            self.at(
                "a",
                Event::ObjectImported(ObjectImported {
                    object: SourceObject {
                        anchor: anchor.into(),
                        kind: ObjectKind::User,
                        dn: dn.into(),
                        attrs: Attrs::from([("uid".into(), text(uid)), ("cn".into(), text(uid))]),
                        members: BTreeSet::new(),
                    },
                    returned: false,
                }),
            )
        }

        pub fn export(&mut self, anchor: &str, op: ExportOp, name: &str) -> u64 {
            self.at(
                "a",
                Event::ExportApplied(ExportApplied {
                    epoch: 1,
                    anchor: anchor.into(),
                    kind: ObjectKind::User,
                    op,
                    target_id: format!("t-{anchor}"),
                    state: (op != ExportOp::Delete).then(|| {
                        serde_json::json!({"kind": "user", "user_name": name, "display_name": name, "active": true})
                    }),
                    etag: None,
                }),
            )
        }

        pub fn delete(&mut self, anchor: &str, evidence: DeletionEvidence) -> u64 {
            self.at(
                "a",
                Event::ObjectDeleted(ObjectDeleted {
                    anchor: anchor.into(),
                    evidence,
                }),
            )
        }

        /// A completed run of `mode` by `instance`.
        pub fn run(&mut self, instance: &str, mode: &str) -> u64 {
            let id = format!("r{}", self.state.seq);
            self.at(
                instance,
                Event::SyncRunStarted(SyncRunStarted {
                    run_id: id.clone(),
                    full: false,
                    mode: mode.into(),
                }),
            );
            self.at(
                instance,
                Event::SyncRunCompleted(SyncRunCompleted {
                    run_id: id,
                    ..Default::default()
                }),
            )
        }

        pub fn cursor(&mut self, instance: &str) -> u64 {
            self.at(
                instance,
                Event::CursorAdvanced(CursorAdvanced {
                    kind: "rfc4533".into(),
                    cookie: "c".into(),
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_well() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(59_000_000), "59s");
        assert_eq!(span(61_000_000), "1m");
        assert_eq!(span(3_720_000_000), "1h 2m");
        assert_eq!(span(90_000_000_000), "1d 1h");
    }
}

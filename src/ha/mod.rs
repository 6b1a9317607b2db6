//! High availability: a holder and its standbys on one shared store (`dirsync run
//! --standby`, `[ha]`). This module is the pure part: what a running service should do
//! next, from the time, the heartbeats and the relationship. The service loop
//! (`sync::service`) carries it out.
//!
//! Heartbeats live in their own table (one row per instance, overwritten), outside the
//! hash chain: liveness is not history. What changes who exports is history and goes in
//! the log: the epoch bump (`SyncRelationshipEstablished`), `FailoverStarted`,
//! `InstanceFenced`.

use std::time::Duration;

use serde::Serialize;

use crate::project::Relationship;

/// One service's last heartbeat as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    pub instance: String,
    /// What the service believed itself to be when it wrote it: `holder` or `standby`.
    pub role: String,
    /// The epoch it held (holder) or last saw (standby).
    pub epoch: u64,
    pub at_us: i64,
    pub host: String,
    pub pid: u32,
}

/// What a service believes itself to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Exporting under this epoch.
    Holder(u64),
    /// Importing only, ready to take over.
    Standby,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Holder(_) => "holder",
            Role::Standby => "standby",
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run a sync cycle that exports (establishing the relationship when nobody holds it).
    Export,
    /// Run a staging cycle: import, export nothing.
    Import,
    /// The holder is silent: contend for the relationship (the epoch bump with the version
    /// `decide` saw is the election) and run the `failover` playbook when won.
    FailOver {
        old: String,
        /// The old holder's last heartbeat, if it ever wrote one.
        last_heartbeat_us: Option<i64>,
        reason: String,
    },
    /// We held `held` and another instance holds a newer epoch: we were fenced.
    Fenced { by: String, epoch: u64, held: u64 },
}

/// Decide for the service `me` running as `role` (`standby`: launched with `--standby`),
/// at `now_us`, with the stored `heartbeats` and the relationship as the log has it.
///
/// - The relationship is ours: export (a standby restarted on the holder's computer resumes).
/// - We believed we held an epoch and someone else holds a newer one: fenced.
/// - Not launched as a standby: export (the cycle's own fencing refuses, exit 4, when
///   another instance holds the relationship).
/// - A standby with nobody holding: import only (a service without `--standby` establishes
///   the relationship; standbys alone never elect a first holder).
/// - A standby whose holder's last sign of life (its heartbeat, or its taking the epoch) is
///   older than `failover_after`: fail over; else import only.
pub fn decide(
    now_us: i64,
    failover_after: Duration,
    heartbeats: &[Heartbeat],
    rel: &Relationship,
    me: &str,
    role: Role,
    standby: bool,
) -> Action {
    if rel.held_by(me) {
        return Action::Export;
    }
    if let (Role::Holder(held), Some(by)) = (role, rel.holder.as_deref()) {
        return Action::Fenced {
            by: by.to_string(),
            epoch: rel.epoch,
            held,
        };
    }
    if !standby {
        return Action::Export;
    }
    let Some(holder) = rel.holder.as_deref() else {
        return Action::Import;
    };
    let beat = heartbeats
        .iter()
        .find(|h| h.instance == holder)
        .map(|h| h.at_us);
    let took = rel.since.map(|s| s.at_us);
    let Some(last) = beat.max(took) else {
        // Nothing says when the holder was last alive (no heartbeat, no time): treat it
        // as alive; an operator's `sync --take-over` remains.
        return Action::Import;
    };
    let silent = now_us.saturating_sub(last);
    if silent > failover_after.as_micros() as i64 {
        Action::FailOver {
            old: holder.to_string(),
            last_heartbeat_us: beat,
            reason: format!(
                "no heartbeat from {holder} for {} (failover_after {})",
                humantime::format_duration(Duration::from_secs((silent / 1_000_000) as u64)),
                humantime::format_duration(failover_after)
            ),
        }
    } else {
        Action::Import
    }
}

/// The role a heartbeat should state, seen from the relationship: a service that believes
/// it holds an epoch the log has moved past says `standby` on its next beat.
pub fn beat_role(role: Role, rel: &Relationship, me: &str) -> Role {
    match role {
        Role::Holder(e) if rel.held_by(me) && rel.epoch == e => role,
        Role::Holder(_) => Role::Standby,
        Role::Standby => Role::Standby,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::At;

    const S: i64 = 1_000_000;

    fn rel(holder: Option<&str>, epoch: u64, since_s: i64) -> Relationship {
        Relationship {
            holder: holder.map(str::to_string),
            epoch,
            since: Some(At {
                seq: 1,
                at_us: since_s * S,
            }),
            ..Default::default()
        }
    }

    fn beat(instance: &str, at_s: i64) -> Heartbeat {
        Heartbeat {
            instance: instance.into(),
            role: "holder".into(),
            epoch: 1,
            at_us: at_s * S,
            host: "h".into(),
            pid: 1,
        }
    }

    const AFTER: Duration = Duration::from_secs(5);

    #[test]
    fn the_holder_exports_and_a_standby_imports_while_the_holder_beats() {
        let r = rel(Some("a"), 1, 100);
        let beats = [beat("a", 109), beat("b", 109)];
        assert_eq!(
            decide(110 * S, AFTER, &beats, &r, "a", Role::Holder(1), true),
            Action::Export
        );
        assert_eq!(
            decide(110 * S, AFTER, &beats, &r, "b", Role::Standby, true),
            Action::Import
        );
        // Exactly failover_after of silence is not yet more than it.
        assert_eq!(
            decide(114 * S, AFTER, &beats, &r, "b", Role::Standby, true),
            Action::Import
        );
    }

    #[test]
    fn a_standby_fails_over_once_the_holder_is_silent_past_failover_after() {
        let r = rel(Some("a"), 1, 100);
        let beats = [beat("a", 109), beat("b", 120)];
        assert_eq!(
            decide(115 * S, AFTER, &beats, &r, "b", Role::Standby, true),
            Action::FailOver {
                old: "a".into(),
                last_heartbeat_us: Some(109 * S),
                reason: "no heartbeat from a for 6s (failover_after 5s)".into(),
            }
        );
    }

    #[test]
    fn a_new_holder_has_failover_after_from_its_take_over_before_its_first_beat() {
        // b took epoch 2 at 200 s; a's old beat (109 s) and no beat from b yet.
        let r = rel(Some("b"), 2, 200);
        let beats = [beat("a", 109)];
        assert_eq!(
            decide(203 * S, AFTER, &beats, &r, "c", Role::Standby, true),
            Action::Import
        );
        assert_eq!(
            decide(206 * S, AFTER, &beats, &r, "c", Role::Standby, true),
            Action::FailOver {
                old: "b".into(),
                last_heartbeat_us: None,
                reason: "no heartbeat from b for 6s (failover_after 5s)".into(),
            }
        );
    }

    #[test]
    fn a_holder_that_finds_a_newer_epoch_is_fenced() {
        let r = rel(Some("b"), 2, 200);
        for standby in [true, false] {
            assert_eq!(
                decide(201 * S, AFTER, &[], &r, "a", Role::Holder(1), standby),
                Action::Fenced {
                    by: "b".into(),
                    epoch: 2,
                    held: 1
                }
            );
        }
        assert_eq!(beat_role(Role::Holder(1), &r, "a"), Role::Standby);
        assert_eq!(beat_role(Role::Holder(2), &r, "b"), Role::Holder(2));
    }

    #[test]
    fn standbys_alone_elect_nobody_and_a_service_without_standby_exports() {
        let none = Relationship::default();
        assert_eq!(
            decide(1, AFTER, &[], &none, "b", Role::Standby, true),
            Action::Import
        );
        assert_eq!(
            decide(1, AFTER, &[], &none, "a", Role::Standby, false),
            Action::Export
        );
        // A standby restarted where the relationship is its own resumes holding.
        let r = rel(Some("b"), 3, 100);
        assert_eq!(
            decide(500 * S, AFTER, &[], &r, "b", Role::Standby, true),
            Action::Export
        );
    }
}

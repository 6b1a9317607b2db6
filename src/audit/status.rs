//! `dirsync status`: per instance, its role, the relationship epoch it holds, its last
//! success and last failure (with the reason), the deletions it holds, its cursor's age
//! against the tombstone lifetime and any handover in progress; the quarantined objects;
//! and the health, as an exit code (INTERFACE.md "Operating it"). Pure: a [`State`] and
//! the time in, rows out.

use serde::Serialize;

use crate::error::Exit;
use crate::log::event::{ExportOp, FailureReason, ObjectKind};
use crate::output::time;
use crate::project::{Control, InstanceStatus, State, StepState};

const DAY_US: i64 = 86_400 * 1_000_000;

/// What an instance is to the sync relationship.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the relationship: its cycles export.
    Holder,
    /// Live, but another instance (or none yet) holds the relationship.
    Standby,
    /// Stopped (`instance stop`): its service idles.
    Stopped,
    /// Retired for good.
    Retired,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Holder => "holder",
            Role::Standby => "standby",
            Role::Stopped => "stopped",
            Role::Retired => "retired",
        }
    }
}

/// A completed cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Success {
    pub run_id: String,
    pub at: String,
    /// Its `SyncRunCompleted`, or, for an idle cycle, the log's head when it ended.
    pub seq: u64,
    /// An idle cycle: it found nothing and is noted outside the log (`sync::idle`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
}

/// A failed cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub run_id: String,
    pub at: String,
    pub seq: u64,
    /// None: recorded before reasons were.
    pub reason: Option<FailureReason>,
    pub error: String,
}

/// A cycle in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Running {
    pub run_id: String,
    pub mode: Option<String>,
    pub since: String,
}

/// The instance's cursor against the source's tombstone lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CursorAge {
    pub at: String,
    pub age_seconds: i64,
    /// Older than the tombstone lifetime: the next delta falls back to a full import.
    pub expired: bool,
}

/// A handover that has not completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HandoverInProgress {
    pub handover_id: String,
    pub from: String,
    pub to: String,
    pub playbook: String,
    /// running, or failed (resume it with the same `dirsync handover` command).
    pub status: &'static str,
    /// Steps done, of all.
    pub done: usize,
    pub steps: usize,
}

/// One instance's row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceRow {
    pub instance: String,
    pub role: Role,
    /// The relationship epoch it holds (None unless it is the holder).
    pub epoch: Option<u64>,
    pub running: Option<Running>,
    pub last_success: Option<Success>,
    pub last_failure: Option<Failure>,
    /// Its last cycle failed (the failure is newer than the last success).
    pub last_cycle_failed: bool,
    /// Deletions its cycles hold (the current held plan, when it held it).
    pub deletions_held: u64,
    pub cursor: Option<CursorAge>,
    /// The id of a handover in progress from or to it.
    pub handover: Option<String>,
    /// Its service's last heartbeat (`dirsync run`), if one ever ran on this store.
    pub heartbeat: Option<HeartbeatRow>,
}

/// A service's last heartbeat as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeartbeatRow {
    pub at: String,
    pub age_seconds: i64,
    /// What the service believed itself to be: holder or standby.
    pub role: String,
    pub epoch: u64,
    pub host: String,
    pub pid: u32,
    /// Older than `[ha] failover_after`: the service is not running (or cannot reach the
    /// store); a standby takes over from a silent holder.
    pub silent: bool,
}

/// The last failover, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailoverRow {
    pub old: String,
    pub new: String,
    pub epoch: u64,
    pub at: String,
    pub seq: u64,
    pub last_heartbeat: Option<String>,
    pub reason: String,
}

/// The current held list, unapproved (the guard's `waiting()`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    pub plan_hash: String,
    pub count: u64,
    pub reason: String,
    pub held_at: String,
    pub by: String,
}

/// An object every cycle skips: its exports failed too often in a row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    pub anchor: String,
    pub kind: Option<ObjectKind>,
    pub name: String,
    pub op: ExportOp,
    pub failures: u32,
    pub status: Option<u16>,
    pub last_error: String,
    pub at: String,
}

/// Why the status is not healthy, and its exit code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// 0 healthy; else the first that applies of 4 (the named instance is fenced), 1 (the
    /// last cycle failed, or no success within three intervals), 3 (deletions held).
    pub exit: u8,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub instances: Vec<InstanceRow>,
    pub holder: Option<String>,
    pub epoch: u64,
    pub tombstone_lifetime_days: Option<u32>,
    pub deletions_held: Option<Held>,
    pub handover: Option<HandoverInProgress>,
    pub quarantined: Vec<Quarantined>,
    /// The last failover (`run --standby`), and how many were recorded.
    pub last_failover: Option<FailoverRow>,
    pub failovers: u64,
    pub health: Health,
    /// The log's seq the status speaks as of.
    pub seq: u64,
    pub checked_at: String,
}

impl StatusReport {
    pub fn exit(&self) -> Exit {
        match self.health.exit {
            0 => Exit::Ok,
            3 => Exit::Held,
            4 => Exit::Fenced,
            _ => Exit::Failure,
        }
    }
}

/// What the status needs besides the state.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    /// `--instance I`: only its row, and its health.
    pub instance: Option<&'a str>,
    pub now_us: i64,
    /// `[sync] interval`: no success within three of them is unhealthy.
    pub interval_us: i64,
    /// The services' heartbeats (stored outside the log).
    pub heartbeats: &'a [crate::ha::Heartbeat],
    /// `[ha] failover_after`: a heartbeat older than this is silent.
    pub failover_after_us: i64,
    /// Each instance's last idle cycle (stored outside the log, `sync::idle`): a success
    /// the log does not record, and the cursor it found still current.
    pub idle: &'a [crate::sync::idle::IdleCycle],
}

/// The status (pure).
/// `c`: the control projections as of `seq`; `objects`: a state holding at least the source
/// objects and ledger entries of the quarantine candidates (`Suspects::candidates`) as of
/// `seq` (the whole state, or [`crate::project::replay::state_of`] them).
pub fn status(c: &Control, seq: u64, objects: &State, ask: &Ask<'_>) -> StatusReport {
    let rel = &c.relationship;
    let holder = rel.holder.as_deref();
    let lifetime_us = c.tombstone_lifetime_days.map(|d| i64::from(d) * DAY_US);
    let held = current_hold(c);
    let handover = handover_in_progress(c);
    let row = |name: &str| -> InstanceRow {
        let rec = c.instances.instances.get(name);
        let status = rec.map(|r| r.status).unwrap_or_default();
        let role = match status {
            InstanceStatus::Retired => Role::Retired,
            InstanceStatus::Stopped => Role::Stopped,
            InstanceStatus::Active if holder == Some(name) => Role::Holder,
            InstanceStatus::Active => Role::Standby,
        };
        let idle = ask.idle.iter().find(|i| i.instance == name);
        let (last_success, _) = last_success(rec, idle);
        let last_failure = rec.and_then(|r| r.last_failed.as_ref()).map(|f| Failure {
            run_id: f.run_id.clone(),
            at: time(f.at.at_us),
            seq: f.at.seq,
            reason: f.reason,
            error: f.error.clone(),
        });
        let last_cycle_failed = match (&last_failure, &last_success) {
            (Some(f), Some(s)) => f.seq > s.seq,
            (Some(_), None) => true,
            _ => false,
        };
        InstanceRow {
            instance: name.to_string(),
            role,
            epoch: (holder == Some(name)).then_some(rel.epoch),
            running: rec.and_then(|r| {
                r.running.as_ref().map(|(id, at)| Running {
                    run_id: id.clone(),
                    mode: r.running_mode.clone(),
                    since: time(at.at_us),
                })
            }),
            last_success,
            last_failure,
            last_cycle_failed,
            deletions_held: held
                .as_ref()
                .filter(|h| h.by == name)
                .map_or(0, |h| h.count),
            cursor: c.cursors.current.get(name).map(|c| {
                let current = crate::sync::idle::IdleCycle::cursor_current_at(idle, c);
                let age = ask.now_us.saturating_sub(current.at_us).max(0);
                CursorAge {
                    at: time(current.at_us),
                    age_seconds: age / 1_000_000,
                    expired: lifetime_us.is_some_and(|l| age > l),
                }
            }),
            handover: handover
                .as_ref()
                .filter(|h| h.from == name || h.to == name)
                .map(|h| h.handover_id.clone()),
            heartbeat: ask.heartbeats.iter().find(|h| h.instance == name).map(|h| {
                let age = ask.now_us.saturating_sub(h.at_us).max(0);
                HeartbeatRow {
                    at: time(h.at_us),
                    age_seconds: age / 1_000_000,
                    role: h.role.clone(),
                    epoch: h.epoch,
                    host: h.host.clone(),
                    pid: h.pid,
                    silent: age > ask.failover_after_us,
                }
            }),
        }
    };
    let names: Vec<&str> = match ask.instance {
        Some(i) => vec![i],
        None => c.instances.instances.keys().map(String::as_str).collect(),
    };
    let instances: Vec<InstanceRow> = names.iter().map(|n| row(n)).collect();
    let health = health(c, ask, &instances, held.as_ref());
    StatusReport {
        instances,
        holder: holder.map(str::to_string),
        epoch: rel.epoch,
        tombstone_lifetime_days: c.tombstone_lifetime_days,
        deletions_held: held,
        handover,
        quarantined: quarantined(c, objects),
        last_failover: rel.last_failover.as_ref().map(|(at, f)| FailoverRow {
            old: f.old.clone(),
            new: f.new.clone(),
            epoch: f.epoch,
            at: time(at.at_us),
            seq: at.seq,
            last_heartbeat: f.last_heartbeat_us.map(time),
            reason: f.reason.clone(),
        }),
        failovers: rel.failovers,
        health,
        seq,
        checked_at: time(ask.now_us),
    }
}

/// An instance's last successful cycle: its last `SyncRunCompleted`, or its last idle cycle
/// when that came later; with the time (µs) it ended.
fn last_success(
    rec: Option<&crate::project::InstanceRecord>,
    idle: Option<&crate::sync::idle::IdleCycle>,
) -> (Option<Success>, Option<i64>) {
    let recorded = rec.and_then(|r| r.last_completed.as_ref());
    match (recorded, idle) {
        (Some((_, at)), Some(i)) if at.at_us >= i.at_us => (
            recorded.map(|(id, at)| Success {
                run_id: id.clone(),
                at: time(at.at_us),
                seq: at.seq,
                idle: false,
            }),
            Some(at.at_us),
        ),
        (_, Some(i)) => (
            Some(Success {
                run_id: i.run_id.clone(),
                at: time(i.at_us),
                seq: i.seq,
                idle: true,
            }),
            Some(i.at_us),
        ),
        (Some((id, at)), None) => (
            Some(Success {
                run_id: id.clone(),
                at: time(at.at_us),
                seq: at.seq,
                idle: false,
            }),
            Some(at.at_us),
        ),
        (None, None) => (None, None),
    }
}

/// The held list that stands and is not approved: the guard's current list
/// ([`crate::project::Guard::waiting`]), which the next cycle holds again. A list a later
/// cycle superseded, or ended by holding nothing, is not held any more (it stays
/// unapproved forever).
fn current_hold(c: &Control) -> Option<Held> {
    let (hash, plan) = c.guard.waiting()?;
    Some(Held {
        plan_hash: hash.clone(),
        count: plan.anchors.len() as u64,
        reason: plan.reason.clone(),
        held_at: time(plan.held.at_us),
        by: plan.by.clone(),
    })
}

/// The last handover, when it has not completed.
fn handover_in_progress(c: &Control) -> Option<HandoverInProgress> {
    let id = c.handovers.last.as_ref()?;
    let h = c.handovers.handovers.get(id)?;
    if h.completed.is_some() {
        return None;
    }
    Some(HandoverInProgress {
        handover_id: id.clone(),
        from: h.from.clone(),
        to: h.to.clone(),
        playbook: h.playbook.clone(),
        status: if h.steps.iter().any(|s| s.state == StepState::Failed) {
            "failed"
        } else {
            "running"
        },
        done: h
            .steps
            .iter()
            .filter(|s| s.state == StepState::Done)
            .count(),
        steps: h.steps.len(),
    })
}

/// Every quarantined object (`sync::export::quarantined`), by anchor: the candidates the
/// control projections keep whose objects did not change since their last failure.
fn quarantined(c: &Control, state: &State) -> Vec<Quarantined> {
    c.suspects
        .candidates()
        .filter_map(|(anchor, f)| {
            let changed = state.objects.objects.get(anchor).map_or(0, |r| {
                r.last_changed
                    .seq
                    .max(r.deletion.as_ref().map_or(0, |d| d.at.seq))
            });
            if !f.quarantines(changed) {
                return None;
            }
            Some(Quarantined {
                anchor: anchor.clone(),
                kind: state
                    .ledger
                    .entries
                    .get(anchor)
                    .map(|l| l.kind)
                    .or_else(|| state.objects.objects.get(anchor).map(|o| o.kind)),
                name: quarantined_name(state, anchor),
                op: f.op,
                failures: f.count,
                status: f.status,
                last_error: f.error.clone(),
                at: time(f.at.at_us),
            })
        })
        .collect()
}

/// The target name the ledger knows, else the source DN.
fn quarantined_name(state: &State, anchor: &str) -> String {
    let n = crate::target::ledger_name(&state.ledger, anchor);
    if !n.is_empty() {
        return n;
    }
    state
        .objects
        .objects
        .get(anchor)
        .map(|o| o.dn.to_string())
        .unwrap_or_default()
}

/// The health of the instances asked about: the named one, else the holder (or, with
/// none, every live instance).
fn health(c: &Control, ask: &Ask<'_>, rows: &[InstanceRow], held: Option<&Held>) -> Health {
    let holder = c.relationship.holder.as_deref();
    let subjects: Vec<&InstanceRow> = match (ask.instance, holder) {
        (Some(_), _) => rows.iter().collect(),
        (None, Some(h)) => rows.iter().filter(|r| r.instance == h).collect(),
        (None, None) => rows
            .iter()
            .filter(|r| matches!(r.role, Role::Holder | Role::Standby))
            .collect(),
    };
    let mut problems = Vec::new();
    let mut exit = 0u8;
    let mut first = |code: u8, why: String, problems: &mut Vec<String>| {
        if exit == 0 {
            exit = code;
        }
        problems.push(why);
    };
    if let (Some(name), Some(h)) = (ask.instance, holder) {
        let retired = rows.iter().any(|r| r.role == Role::Retired);
        if h != name && !retired {
            first(
                4,
                format!(
                    "{name} is fenced: {h} holds the sync relationship (epoch {})",
                    c.relationship.epoch
                ),
                &mut problems,
            );
        }
    }
    let window = ask.interval_us.saturating_mul(3);
    for r in &subjects {
        // A cycle whose deletions were held failed, but the hold is what is reported
        // (exit 3, below) for as long as it stands: held cycles also keep the instance
        // from counting as stale.
        let held_last = r
            .last_failure
            .as_ref()
            .filter(|f| f.reason == Some(FailureReason::Held));
        if r.last_cycle_failed && held_last.is_none() {
            if let Some(f) = &r.last_failure {
                first(
                    1,
                    format!(
                        "the last cycle of {} failed at {} ({}): {}",
                        r.instance,
                        f.at,
                        f.reason.map_or("unknown", FailureReason::as_str),
                        f.error
                    ),
                    &mut problems,
                );
            }
            continue;
        }
        // A retired instance, or a stopped one that does not hold the relationship, is
        // not expected to sync; a stopped holder is (nobody else exports).
        let holds = holder == Some(r.instance.as_str());
        if r.role == Role::Retired || (r.role == Role::Stopped && !holds) {
            continue;
        }
        let ran = last_success(
            c.instances.instances.get(&r.instance),
            ask.idle.iter().find(|i| i.instance == r.instance),
        )
        .1
        .max(held_last.and_then(|_| {
            c.instances
                .instances
                .get(&r.instance)
                .and_then(|i| i.last_failed.as_ref())
                .map(|f| f.at.at_us)
        }));
        let stale = ran.is_none_or(|at| ask.now_us.saturating_sub(at) > window);
        if stale {
            first(
                1,
                format!(
                    "{} has not completed a cycle within three intervals ({}); last success: {}",
                    r.instance,
                    humantime::format_duration(std::time::Duration::from_micros(
                        window.max(0) as u64
                    )),
                    r.last_success.as_ref().map_or("never", |s| s.at.as_str())
                ),
                &mut problems,
            );
        }
    }
    if let Some(h) = held {
        let ours = match ask.instance {
            None => true,
            Some(name) => h.by == name || holder == Some(name),
        };
        if ours {
            first(
                3,
                format!(
                    "{} deletion(s) held since {} ({}): `dirsync deletions approve --plan {}` releases them",
                    h.count, h.held_at, h.reason, h.plan_hash
                ),
                &mut problems,
            );
        }
    }
    Health { exit, problems }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{
        DeletionsApproved, DeletionsHeld, DeletionsHoldEnded, Event, ExportFailed, HandoverStarted,
        HandoverStep, InstanceLifecycle, SourceObject, SyncRelationshipEstablished,
        SyncRunCompleted, SyncRunFailed, SyncRunStarted,
    };
    use crate::project::Meta;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000 * S;

    /// Fold `events` (instance, event), one second apart from T0.
    fn fold(events: &[(&str, Event)]) -> State {
        let mut st = State::default();
        for (i, (inst, e)) in events.iter().enumerate() {
            st.apply(
                &Meta {
                    seq: i as u64 + 1,
                    instance: inst,
                    recorded_at_us: T0 + i as i64 * S,
                },
                e.clone(),
            );
        }
        st
    }

    /// The status of the whole state `st`.
    fn status_of(st: &State, ask: &Ask<'_>) -> StatusReport {
        status(&st.control, st.seq, st, ask)
    }

    fn ask(instance: Option<&str>, now_us: i64) -> Ask<'_> {
        Ask {
            instance,
            now_us,
            interval_us: 60 * S,
            heartbeats: &[],
            failover_after_us: 60 * S,
            idle: &[],
        }
    }

    fn est(h: &str, epoch: u64) -> (&'static str, Event) {
        let holder: &'static str = Box::leak(h.to_string().into_boxed_str());
        (
            holder,
            Event::SyncRelationshipEstablished(SyncRelationshipEstablished {
                holder: h.into(),
                epoch,
            }),
        )
    }

    fn started(id: &str) -> Event {
        Event::SyncRunStarted(SyncRunStarted {
            run_id: id.into(),
            full: false,
            mode: "sync".into(),
        })
    }

    fn completed(id: &str) -> Event {
        Event::SyncRunCompleted(SyncRunCompleted {
            run_id: id.into(),
            ..Default::default()
        })
    }

    fn failed(id: &str, reason: Option<FailureReason>, error: &str) -> Event {
        Event::SyncRunFailed(SyncRunFailed {
            run_id: id.into(),
            error: error.into(),
            reason,
        })
    }

    #[test]
    fn a_healthy_holder() {
        let st = fold(&[est("a", 1), ("a", started("r1")), ("a", completed("r1"))]);
        let r = status(&st.control, st.seq, &st, &ask(None, T0 + 10 * S));
        assert_eq!(
            r.instances,
            vec![InstanceRow {
                instance: "a".into(),
                role: Role::Holder,
                epoch: Some(1),
                running: None,
                last_success: Some(Success {
                    run_id: "r1".into(),
                    at: time(T0 + 2 * S),
                    seq: 3,
                    idle: false,
                }),
                last_failure: None,
                last_cycle_failed: false,
                deletions_held: 0,
                cursor: None,
                handover: None,
                heartbeat: None,
            }]
        );
        assert_eq!(
            r.health,
            Health {
                exit: 0,
                problems: vec![]
            }
        );
        assert_eq!(r.exit(), Exit::Ok);
    }

    #[test]
    fn an_idle_cycle_outside_the_log_is_a_success_and_confirms_the_cursor() {
        use crate::log::event::CursorAdvanced;
        use crate::sync::idle::IdleCycle;
        // a: a success (seq 3), its cursor (seq 4), then a failure (seq 5); interval 60 s.
        let st = fold(&[
            est("a", 1),
            ("a", started("r1")),
            (
                "a",
                Event::CursorAdvanced(CursorAdvanced {
                    kind: "rfc4533".into(),
                    cookie: "c1".into(),
                }),
            ),
            ("a", completed("r1")),
            ("a", failed("r2", Some(FailureReason::Source), "down")),
        ]);
        let idle = |seq: u64, at_us: i64| IdleCycle {
            instance: "a".into(),
            run_id: "quiet".into(),
            mode: "sync".into(),
            at_us,
            seq,
            cursor_seq: 3,
        };
        // An idle cycle noted before the failure does not hide it.
        let before = [idle(4, T0 + 3 * S)];
        let mut q = ask(None, T0 + 100 * S);
        q.idle = &before;
        let r = status_of(&st, &q);
        assert!(r.instances[0].last_cycle_failed, "{r:?}");
        assert_eq!(r.health.exit, 1);
        // One after it (a cycle whose success the log does not record): healthy, its time
        // the last success, and the cursor it read from current since.
        let after = [idle(5, T0 + 90 * S)];
        q.idle = &after;
        let r = status_of(&st, &q);
        let row = &r.instances[0];
        assert_eq!(
            (
                &row.last_success,
                row.last_cycle_failed,
                &row.cursor,
                &r.health
            ),
            (
                &Some(Success {
                    run_id: "quiet".into(),
                    at: time(T0 + 90 * S),
                    seq: 5,
                    idle: true,
                }),
                false,
                &Some(CursorAge {
                    at: time(T0 + 90 * S),
                    age_seconds: 10,
                    expired: false,
                }),
                &Health {
                    exit: 0,
                    problems: vec![]
                }
            )
        );
        // Three intervals after the idle cycle, stale as after a recorded success.
        q.now_us = T0 + 90 * S + 181 * S;
        assert_eq!(status_of(&st, &q).health.exit, 1);
    }

    #[test]
    fn heartbeats_and_the_last_failover() {
        use crate::log::event::FailoverStarted;
        let f = FailoverStarted {
            old: "a".into(),
            new: "b".into(),
            epoch: 2,
            last_heartbeat_us: Some(T0 + S),
            reason: "no heartbeat from a for 61s (failover_after 1m)".into(),
        };
        let st = fold(&[
            est("a", 1),
            ("b", started("r1")),
            ("b", completed("r1")),
            est("b", 2),
            ("b", Event::FailoverStarted(f.clone())),
        ]);
        let beat = |instance: &str, at_us: i64, role: &str, epoch: u64| crate::ha::Heartbeat {
            instance: instance.into(),
            role: role.into(),
            epoch,
            at_us,
            host: "h".into(),
            pid: 7,
        };
        let beats = [
            beat("a", T0 + S, "holder", 1),
            beat("b", T0 + 70 * S, "holder", 2),
        ];
        let mut a = ask(None, T0 + 71 * S);
        a.heartbeats = &beats;
        let r = status_of(&st, &a);
        assert_eq!(
            r.last_failover,
            Some(FailoverRow {
                old: "a".into(),
                new: "b".into(),
                epoch: 2,
                at: time(T0 + 4 * S),
                seq: 5,
                last_heartbeat: Some(time(T0 + S)),
                reason: f.reason.clone(),
            })
        );
        assert_eq!(r.failovers, 1);
        // a, silent since its last beat as the holder of epoch 1, is a standby now.
        let rows: Vec<(&str, Role, Option<HeartbeatRow>)> = r
            .instances
            .iter()
            .map(|i| (i.instance.as_str(), i.role, i.heartbeat.clone()))
            .collect();
        let row = |at_us: i64, age_seconds: i64, epoch: u64, silent: bool| HeartbeatRow {
            at: time(at_us),
            age_seconds,
            role: "holder".into(),
            epoch,
            host: "h".into(),
            pid: 7,
            silent,
        };
        assert_eq!(
            rows,
            vec![
                ("a", Role::Standby, Some(row(T0 + S, 70, 1, true))),
                ("b", Role::Holder, Some(row(T0 + 70 * S, 1, 2, false))),
            ]
        );
    }

    #[test]
    fn a_failed_last_cycle_and_a_stale_success_exit_1() {
        let st = fold(&[
            est("a", 1),
            ("a", started("r1")),
            ("a", completed("r1")),
            (
                "a",
                failed("r2", Some(FailureReason::Target), "target: down"),
            ),
        ]);
        let r = status(&st.control, st.seq, &st, &ask(None, T0 + 10 * S));
        let f = r.instances[0].last_failure.clone().unwrap();
        assert_eq!(
            (f.reason, f.error.as_str(), r.instances[0].last_cycle_failed),
            (Some(FailureReason::Target), "target: down", true)
        );
        assert_eq!(r.exit(), Exit::Failure);
        assert_eq!(
            r.health.problems,
            vec![format!(
                "the last cycle of a failed at {} (target): target: down",
                time(T0 + 3 * S)
            )]
        );
        // Succeeded, but longer ago than three intervals.
        let st = fold(&[est("a", 1), ("a", started("r1")), ("a", completed("r1"))]);
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(None, T0 + 180 * S)).exit(),
            Exit::Ok
        );
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(None, T0 + 183 * S)).exit(),
            Exit::Failure
        );
        // A stopped holder: nobody exports, so three intervals without a success count;
        // a stopped instance that does not hold the relationship is not expected to sync.
        let events = vec![
            est("a", 1),
            ("a", started("r1")),
            ("a", completed("r1")),
            ("a", Event::InstanceStopped(InstanceLifecycle::default())),
            ("b", Event::InstanceStopped(InstanceLifecycle::default())),
        ];
        let st = fold(&events);
        let r = status(&st.control, st.seq, &st, &ask(None, T0 + 100 * S));
        assert_eq!((r.instances[0].role, r.exit()), (Role::Stopped, Exit::Ok));
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(None, T0 + 1000 * S)).exit(),
            Exit::Failure
        );
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(Some("b"), T0 + 1000 * S)).exit(),
            Exit::Fenced
        );
    }

    #[test]
    fn roles_and_the_fenced_instance() {
        let st = fold(&[
            est("a", 1),
            ("a", started("r1")),
            ("a", completed("r1")),
            est("b", 2),
            ("b", started("r2")),
            ("b", completed("r2")),
            (
                "a",
                failed("r3", Some(FailureReason::Fenced), "fenced: b holds it"),
            ),
            ("c", Event::InstanceStopped(InstanceLifecycle::default())),
            ("d", Event::InstanceRetired(InstanceLifecycle::default())),
        ]);
        let now = T0 + 20 * S;
        let r = status(&st.control, st.seq, &st, &ask(None, now));
        let roles: Vec<(&str, Role, Option<u64>)> = r
            .instances
            .iter()
            .map(|i| (i.instance.as_str(), i.role, i.epoch))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("a", Role::Standby, None),
                ("b", Role::Holder, Some(2)),
                ("c", Role::Stopped, None),
                ("d", Role::Retired, None),
            ]
        );
        // Without --instance, the holder's health: fine.
        assert_eq!(r.exit(), Exit::Ok);
        // The fenced instance: 4, before its failed cycle's 1.
        let r = status(&st.control, st.seq, &st, &ask(Some("a"), now));
        assert_eq!((r.exit(), r.health.problems.len()), (Exit::Fenced, 2));
        assert_eq!(r.instances.len(), 1);
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(Some("b"), now)).exit(),
            Exit::Ok
        );
        // A retired instance is not fenced, and not expected to sync.
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(Some("d"), now)).exit(),
            Exit::Ok
        );
    }

    #[test]
    fn held_deletions_exit_3_while_the_held_list_stands_unapproved() {
        let held = Event::DeletionsHeld(DeletionsHeld {
            plan_hash: "abc".into(),
            anchors: vec!["x".into(), "y".into()],
            reason: "2 deletions exceed the threshold of 1".into(),
        });
        let mut events = vec![
            est("a", 1),
            ("a", started("r1")),
            ("a", completed("r1")),
            ("a", started("r2")),
            ("a", held),
            (
                "a",
                failed("r2", Some(FailureReason::Held), "2 deletion(s) held"),
            ),
        ];
        let st = fold(&events);
        let r = status(&st.control, st.seq, &st, &ask(None, T0 + 10 * S));
        // The held cycle failed, and the hold is what is reported; held cycles are not
        // stale ones either.
        assert_eq!(r.exit(), Exit::Held);
        assert!(r.instances[0].last_cycle_failed);
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(None, T0 + 185 * S)).exit(),
            Exit::Held
        );
        assert_eq!(
            status(&st.control, st.seq, &st, &ask(None, T0 + 186 * S)).exit(),
            Exit::Failure
        );
        assert_eq!(r.instances[0].deletions_held, 2);
        assert_eq!(
            r.deletions_held,
            Some(Held {
                plan_hash: "abc".into(),
                count: 2,
                reason: "2 deletions exceed the threshold of 1".into(),
                held_at: time(T0 + 4 * S),
                by: "a".into(),
            })
        );
        // Approved: no longer held.
        let mut approved = events.clone();
        approved.push((
            "a",
            Event::DeletionsApproved(DeletionsApproved {
                plan_hash: "abc".into(),
                approved_by: None,
            }),
        ));
        assert_eq!(
            status(
                &fold(&approved).control,
                0,
                &State::default(),
                &ask(None, T0)
            )
            .deletions_held,
            None
        );
        // A cycle that completes while the list stands ([sync] hold = "deletions": it
        // exported its creates and updates, the deletions wait): still held, exit 3.
        events.push(("a", started("r3")));
        events.push(("a", completed("r3")));
        let r = status_of(&fold(&events), &ask(None, T0 + 10 * S));
        assert_eq!(
            (r.deletions_held.clone().map(|h| h.plan_hash), r.exit()),
            (Some("abc".into()), Exit::Held)
        );
        // A later cycle holds another list: that one is the held list, the first is
        // superseded (unapproved forever, never counted).
        let mut superseded = events.clone();
        superseded.push((
            "a",
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "def".into(),
                anchors: vec!["z".into()],
                reason: "1 deletion exceeds the threshold of 0".into(),
            }),
        ));
        let r = status_of(&fold(&superseded), &ask(None, T0 + 10 * S));
        assert_eq!(
            (
                r.deletions_held.clone().map(|h| (h.plan_hash, h.count)),
                r.exit()
            ),
            (Some(("def".into(), 1)), Exit::Held)
        );
        // A cycle that holds nothing ends the list: no longer held.
        events.push((
            "a",
            Event::DeletionsHoldEnded(DeletionsHoldEnded {
                plan_hash: "abc".into(),
                reason: "within the threshold".into(),
            }),
        ));
        events.push(("a", started("r4")));
        events.push(("a", completed("r4")));
        let r = status_of(&fold(&events), &ask(None, T0 + 10 * S));
        assert_eq!((r.deletions_held.clone(), r.exit()), (None, Exit::Ok));
    }

    #[test]
    fn held_alone_exits_3() {
        // A staging cycle (no export) completing after the hold does not clear it.
        let st = fold(&[
            est("a", 1),
            ("a", started("r1")),
            ("a", completed("r1")),
            (
                "a",
                Event::DeletionsHeld(DeletionsHeld {
                    plan_hash: "abc".into(),
                    anchors: vec!["x".into()],
                    reason: "r".into(),
                }),
            ),
            (
                "a",
                Event::SyncRunStarted(SyncRunStarted {
                    run_id: "r2".into(),
                    full: false,
                    mode: "staging".into(),
                }),
            ),
            ("a", completed("r2")),
        ]);
        let r = status(&st.control, st.seq, &st, &ask(None, T0 + 10 * S));
        assert_eq!((r.exit(), r.health.problems.len()), (Exit::Held, 1));
    }

    #[test]
    fn quarantine_cursor_and_handover() {
        let obj = SourceObject {
            anchor: "q1".into(),
            kind: ObjectKind::User,
            dn: "uid=q,dc=x".into(),
            attrs: Default::default(),
            members: Default::default(),
        };
        let mut events: Vec<(&str, Event)> = vec![
            est("a", 1),
            (
                "a",
                Event::ObjectImported(crate::log::event::ObjectImported {
                    object: obj,
                    returned: false,
                }),
            ),
            (
                "a",
                Event::CursorAdvanced(crate::log::event::CursorAdvanced {
                    kind: "rfc4533".into(),
                    cookie: "c".into(),
                }),
            ),
        ];
        for _ in 0..5 {
            events.push((
                "a",
                Event::ExportFailed(ExportFailed {
                    epoch: 1,
                    anchor: "q1".into(),
                    op: ExportOp::Create,
                    status: Some(400),
                    error: "bad value".into(),
                }),
            ));
        }
        events.push((
            "a",
            Event::HandoverStarted(HandoverStarted {
                handover_id: "h1".into(),
                from: "a".into(),
                to: "b".into(),
                playbook: "new-computer".into(),
                steps: vec!["stop old".into(), "sync new".into()],
            }),
        ));
        events.push((
            "a",
            Event::HandoverStepCompleted(HandoverStep {
                handover_id: "h1".into(),
                step: 0,
                action: "stop old".into(),
                detail: serde_json::json!({}),
            }),
        ));
        let mut st = fold(&events);
        st.control.tombstone_lifetime_days = Some(1);
        let r = status(&st.control, st.seq, &st, &ask(None, T0 + DAY_US + 3 * S));
        assert_eq!(
            r.quarantined,
            vec![Quarantined {
                anchor: "q1".into(),
                kind: Some(ObjectKind::User),
                name: "uid=q,dc=x".into(),
                op: ExportOp::Create,
                failures: 5,
                status: Some(400),
                last_error: "bad value".into(),
                at: time(T0 + 7 * S),
            }]
        );
        assert_eq!(
            r.instances[0].cursor,
            Some(CursorAge {
                at: time(T0 + 2 * S),
                age_seconds: 86_401,
                expired: true
            })
        );
        assert_eq!(r.instances[0].handover.as_deref(), Some("h1"));
        assert_eq!(
            r.handover,
            Some(HandoverInProgress {
                handover_id: "h1".into(),
                from: "a".into(),
                to: "b".into(),
                playbook: "new-computer".into(),
                status: "running",
                done: 1,
                steps: 2,
            })
        );
    }
}

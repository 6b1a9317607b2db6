//! The handover state machine, pure: the state is the `Handovers` projection (a fold of the
//! handover's events), and these functions decide what comes next. The runner carries the
//! decisions out and records their outcomes, which changes the state.

use serde::Serialize;

use super::file::{Action, Role, Step};
use crate::project::{HandoverRecord, Handovers, InstanceStatus, State, StepState};

/// Whether `dirsync handover --from F --to T --playbook P` starts, resumes or does nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    Start,
    Resume(String),
    /// The same handover completed before: a no-op.
    AlreadyDone(String),
    /// Another handover is unfinished: it must be resumed (or finished) first.
    Refuse(String),
}

/// The built-in playbook a standby runs when it takes over from a silent holder.
pub const FAILOVER: &str = "failover";

pub fn begin(h: &Handovers, from: &str, to: &str, playbook: &str) -> Begin {
    let Some((id, rec)) = h
        .last
        .as_ref()
        .and_then(|id| h.handovers.get(id).map(|r| (id, r)))
    else {
        return Begin::Start;
    };
    let same = rec.from == from && rec.to == to && rec.playbook == playbook;
    // A failover whose new holder died before finishing it is superseded by the next
    // failover (from that holder): nobody is left to resume it.
    if rec.completed.is_none() && !same && rec.playbook == FAILOVER && playbook == FAILOVER {
        return Begin::Start;
    }
    match (rec.completed.is_some(), same) {
        (false, true) => Begin::Resume(id.clone()),
        (false, false) => Begin::Refuse(format!(
            "handover {id} ({} -> {}, playbook {}) is not finished: run it again with the same --from, --to and --playbook to resume it",
            rec.from, rec.to, rec.playbook
        )),
        (true, true) => Begin::AlreadyDone(id.clone()),
        (true, false) => Begin::Start,
    }
}

/// The next thing to do in a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run step `i`: pending, or left running by a crash, or failed before (every action
    /// is safe to repeat: syncs match instead of creating twice).
    Run(usize),
    /// Every step is done: record the completion.
    Complete,
    /// Completed: nothing to do.
    Done,
}

pub fn decide(h: &HandoverRecord) -> Next {
    if h.completed.is_some() {
        return Next::Done;
    }
    match h.steps.iter().position(|s| s.state != StepState::Done) {
        Some(i) => Next::Run(i),
        None => Next::Complete,
    }
}

/// Whether a step may run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ready {
    Go,
    /// Not yet (poll again until the step's timeout).
    Wait(String),
    /// Never: the step fails.
    Fail(String),
    /// Nothing to do (e.g. stopping an instance that is both old and new).
    Skip(String),
}

/// The instance a role names in this handover.
pub fn instance(h: &HandoverRecord, role: Role) -> &str {
    match role {
        Role::Old => &h.from,
        Role::New => &h.to,
    }
}

/// Is `step` (index `i`) ready to run? `abandoned(instance)` tells whether the sync the
/// projection shows in progress on that instance is known to be dead (started by an
/// earlier, crashed attempt of this very step).
pub fn ready(state: &State, h: &HandoverRecord, i: usize, step: &Step) -> Ready {
    let name = instance(h, step.role);
    let same = h.from == h.to;
    let rec = state.control.instances.instances.get(name);
    let running = rec.and_then(|r| r.running.as_ref());
    let retired = rec.is_some_and(|r| r.status == InstanceStatus::Retired);
    match step.action {
        Action::Stop | Action::Retire if same && step.role == Role::Old => Ready::Skip(format!(
            "{name} is both the old and the new instance: it is not {}",
            if step.action == Action::Stop {
                "stopped"
            } else {
                "retired"
            }
        )),
        Action::Stop if rec.is_some_and(|r| r.status == InstanceStatus::Stopped) => {
            Ready::Skip(format!("{name} is already stopped"))
        }
        Action::Retire if retired => Ready::Skip(format!("{name} is already retired")),
        Action::Stop | Action::Retire if running.is_some() && !step.force => {
            Ready::Wait(format!("a sync is in progress on {name}"))
        }
        Action::Sync | Action::ReplayCursor | Action::Start | Action::WaitSync if retired => {
            Ready::Fail(format!("{name} is retired"))
        }
        Action::WaitSync => {
            let since = h.started.seq;
            let completed = rec
                .and_then(|r| r.last_completed.as_ref())
                .is_some_and(|(_, at)| at.seq > since);
            if completed && running.is_none() {
                Ready::Go
            } else {
                Ready::Wait(format!(
                    "waiting for {name} to complete a sync (step {})",
                    i + 1
                ))
            }
        }
        _ => Ready::Go,
    }
}

/// What a handover achieved, from its steps' recorded details.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Existing target objects matched instead of created.
    pub matched: u64,
    /// Creating those would have duplicated them.
    pub duplicates_avoided: u64,
    /// Deletions revealed by a cursor (the old instance's, or replayed from it).
    pub deletions_by_old_cursor: u64,
    /// Deletions found by reconciling the ledger against a full import.
    pub deletions_by_reconciliation: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// Fold the steps' details (`sync` steps record their report) into the summary.
pub fn summary(h: &HandoverRecord) -> Summary {
    let mut s = Summary::default();
    for step in &h.steps {
        let d = &step.detail;
        let n = |k: &str| d.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        s.matched += n("matched");
        s.created += n("created");
        s.updated += n("updated");
        s.deleted += n("deleted");
        let found = n("source_deleted");
        match d.get("import_mode").and_then(serde_json::Value::as_str) {
            Some("delta") => s.deletions_by_old_cursor += found,
            Some("full") => s.deletions_by_reconciliation += found,
            _ => {}
        }
    }
    s.duplicates_avoided = s.matched;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{
        Event, HandoverCompleted, HandoverStarted, HandoverStep, InstanceLifecycle,
        SyncRunCompleted, SyncRunStarted,
    };
    use crate::playbook::file::Playbook;
    use crate::project::Meta;

    /// given(events) -> state, as in cqrs-es.
    fn given(events: &[(&str, Event)]) -> State {
        let mut s = State::default();
        for (i, (inst, e)) in events.iter().enumerate() {
            s.apply(
                &Meta {
                    seq: i as u64 + 1,
                    instance: inst,
                    recorded_at_us: i as i64,
                },
                e.clone(),
            );
        }
        s
    }

    fn started(steps: usize) -> Event {
        Event::HandoverStarted(HandoverStarted {
            handover_id: "h1".into(),
            from: "old".into(),
            to: "new".into(),
            playbook: "new-computer".into(),
            steps: (0..steps).map(|i| format!("step {i}")).collect(),
        })
    }

    fn step(kind: &str, i: u32, detail: serde_json::Value) -> Event {
        let s = HandoverStep {
            handover_id: "h1".into(),
            step: i,
            action: "x".into(),
            detail,
        };
        match kind {
            "started" => Event::HandoverStepStarted(s),
            "done" => Event::HandoverStepCompleted(s),
            _ => Event::HandoverStepFailed(s),
        }
    }

    fn rec(s: &State) -> &HandoverRecord {
        &s.control.handovers.handovers["h1"]
    }

    #[test]
    fn decide_runs_steps_in_order_and_resumes_a_crashed_or_failed_one() {
        let s = given(&[("n", started(3))]);
        assert_eq!(decide(rec(&s)), Next::Run(0));
        let s = given(&[
            ("n", started(3)),
            ("n", step("started", 0, serde_json::Value::Null)),
            ("n", step("done", 0, serde_json::Value::Null)),
            ("n", step("started", 1, serde_json::Value::Null)),
        ]);
        assert_eq!(decide(rec(&s)), Next::Run(1), "a crash mid-step re-runs it");
        let s = given(&[
            ("n", started(2)),
            ("n", step("started", 0, serde_json::Value::Null)),
            ("n", step("failed", 0, serde_json::json!({"error": "x"}))),
        ]);
        assert_eq!(decide(rec(&s)), Next::Run(0), "a failed step is retried");
        let mut ev = vec![("n", started(2))];
        for i in 0..2 {
            ev.push(("n", step("started", i, serde_json::Value::Null)));
            ev.push(("n", step("done", i, serde_json::Value::Null)));
        }
        assert_eq!(decide(rec(&given(&ev))), Next::Complete);
        ev.push((
            "n",
            Event::HandoverCompleted(HandoverCompleted {
                handover_id: "h1".into(),
                summary: serde_json::Value::Null,
            }),
        ));
        assert_eq!(decide(rec(&given(&ev))), Next::Done);
    }

    #[test]
    fn begin_resumes_the_same_refuses_another_and_no_ops_a_finished_one() {
        let s = given(&[("n", started(2))]);
        assert_eq!(
            begin(&s.control.handovers, "old", "new", "new-computer"),
            Begin::Resume("h1".into())
        );
        assert!(matches!(
            begin(&s.control.handovers, "old", "other", "new-computer"),
            Begin::Refuse(_)
        ));
        let s = given(&[
            ("n", started(0)),
            (
                "n",
                Event::HandoverCompleted(HandoverCompleted {
                    handover_id: "h1".into(),
                    summary: serde_json::Value::Null,
                }),
            ),
        ]);
        assert_eq!(
            begin(&s.control.handovers, "old", "new", "new-computer"),
            Begin::AlreadyDone("h1".into())
        );
        assert_eq!(
            begin(&s.control.handovers, "new", "newer", "new-computer"),
            Begin::Start
        );
        assert_eq!(
            begin(&State::default().control.handovers, "a", "b", "c"),
            Begin::Start
        );
    }

    #[test]
    fn an_unfinished_failover_is_superseded_by_the_next_failover_only() {
        let failover = Event::HandoverStarted(HandoverStarted {
            handover_id: "h1".into(),
            from: "a".into(),
            to: "b".into(),
            playbook: FAILOVER.into(),
            steps: vec!["sync".into()],
        });
        let s = given(&[("b", failover)]);
        // b died mid-failover; c takes over from b.
        assert_eq!(
            begin(&s.control.handovers, "b", "c", FAILOVER),
            Begin::Start
        );
        assert_eq!(
            begin(&s.control.handovers, "a", "b", FAILOVER),
            Begin::Resume("h1".into())
        );
        assert!(matches!(
            begin(&s.control.handovers, "b", "c", "new-computer"),
            Begin::Refuse(_)
        ));
        // An unfinished handover of another playbook is not superseded by a failover.
        let s = given(&[("n", started(2))]);
        assert!(matches!(
            begin(&s.control.handovers, "new", "c", FAILOVER),
            Begin::Refuse(_)
        ));
    }

    fn pb_step(action: &str, role: &str, extra: &str) -> Step {
        let text = format!(
            "name = \"t\"\n[[step]]\naction = \"sync\"\nrole = \"{role}\"\n[[step]]\naction = \"{action}\"\nrole = \"{role}\"\n{extra}"
        );
        Playbook::parse(&text, "t").unwrap().steps[1].clone()
    }

    #[test]
    fn preconditions_wait_for_a_sync_in_progress_and_for_completion() {
        let run = |inst: &'static str, id: &str| {
            (
                inst,
                Event::SyncRunStarted(SyncRunStarted {
                    run_id: id.into(),
                    full: false,
                    mode: "sync".into(),
                }),
            )
        };
        let done = |inst: &'static str, id: &str| {
            (
                inst,
                Event::SyncRunCompleted(SyncRunCompleted {
                    run_id: id.into(),
                    ..Default::default()
                }),
            )
        };
        let s = given(&[run("old", "r1"), ("n", started(3))]);
        let stop = pb_step("stop", "old", "");
        assert!(matches!(ready(&s, rec(&s), 0, &stop), Ready::Wait(_)));
        let forced = pb_step("stop", "old", "force = true\n");
        assert_eq!(ready(&s, rec(&s), 0, &forced), Ready::Go);
        let s = given(&[run("old", "r1"), done("old", "r1"), ("n", started(3))]);
        assert_eq!(ready(&s, rec(&s), 0, &stop), Ready::Go);

        let wait = pb_step("wait-sync", "new", "");
        // A sync completed before the handover began does not count.
        let s = given(&[run("new", "r0"), done("new", "r0"), ("n", started(3))]);
        assert!(matches!(ready(&s, rec(&s), 2, &wait), Ready::Wait(_)));
        let s = given(&[("n", started(3)), run("new", "r2"), done("new", "r2")]);
        assert_eq!(ready(&s, rec(&s), 2, &wait), Ready::Go);
        let s = given(&[
            ("n", started(3)),
            ("old", Event::InstanceRetired(InstanceLifecycle::default())),
        ]);
        assert!(matches!(
            ready(&s, rec(&s), 0, &pb_step("start", "old", "")),
            Ready::Fail(_)
        ));
        assert!(matches!(
            ready(&s, rec(&s), 0, &pb_step("retire", "old", "")),
            Ready::Skip(_)
        ));
    }

    #[test]
    fn summary_attributes_deletions_to_cursor_or_reconciliation() {
        let s = given(&[
            ("n", started(3)),
            (
                "n",
                step(
                    "done",
                    0,
                    serde_json::json!({"import_mode": "full", "source_deleted": 30, "matched": 500}),
                ),
            ),
            (
                "n",
                step(
                    "done",
                    1,
                    serde_json::json!({"import_mode": "delta", "source_deleted": 4}),
                ),
            ),
        ]);
        let sum = summary(rec(&s));
        assert_eq!(
            (
                sum.matched,
                sum.duplicates_avoided,
                sum.deletions_by_reconciliation,
                sum.deletions_by_old_cursor
            ),
            (500, 500, 30, 4)
        );
    }
}

//! The handover runner: carries out what [`machine::decide`](super::machine::decide) says,
//! one step at a time, recording each step's start and outcome in the log. Killed at any
//! point, it resumes from the log: a step left running is run again (every action is safe
//! to repeat), and a sync it had started and never finished is recorded as abandoned.
//!
//! One runner at a time: it holds the store's `handover` advisory lock (a file lock beside
//! a SQLite log, a session lock on PostgreSQL), which dies with the process.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::json;

use super::file::{Action, Playbook, Role};
use super::machine::{self, Begin, Next, Ready, Summary};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::log::event::{
    stream, CursorAdvanced, Event, FailureReason, HandoverCompleted, HandoverStarted, HandoverStep,
    InstanceLifecycle, SyncRunFailed,
};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, NewEvent, Store};
use crate::project::replay::{self, Until};
use crate::project::{HandoverRecord, State, StepState};
use crate::sync::export::{sync, SyncOptions, SyncReport};
use crate::target::{AnyTarget, Target};

/// How often a waiting step looks at the log again.
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct HandoverOptions {
    pub from: String,
    pub to: String,
    /// A built-in playbook's name, else a playbook file's path ([`Playbook::resolve`]).
    pub playbook: String,
    pub dry_run: bool,
}

/// One step as `handover` and `handover status` show it.
#[derive(Clone, Debug, Serialize)]
pub struct StepLine {
    pub step: usize,
    pub action: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Always an object: `{}` before the step ran, `{"note": ...}` in a dry run, the
    /// step's figures or `{"error": ...}` after it.
    pub detail: serde_json::Value,
}

/// A step's detail as an object (one shape in every command's JSON): nothing recorded is
/// `{}`, text is `{"note": text}`.
fn detail_object(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Null => json!({}),
        serde_json::Value::Object(_) => v.clone(),
        serde_json::Value::String(s) => json!({ "note": s }),
        other => json!({ "value": other }),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct HandoverReport {
    pub handover_id: String,
    pub playbook: String,
    pub from: String,
    pub to: String,
    /// completed, already-completed, dry-run, running or failed.
    pub status: String,
    pub steps: Vec<StepLine>,
    pub summary: Summary,
}

fn lines(h: &HandoverRecord) -> Vec<StepLine> {
    h.steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepLine {
            step: i + 1,
            action: s.action.clone(),
            state: match s.state {
                StepState::Pending => "pending",
                StepState::Running => "running",
                StepState::Done => "done",
                StepState::Failed => "failed",
            }
            .into(),
            started: s.started.map(|a| crate::output::time(a.at_us)),
            finished: s.finished.map(|a| crate::output::time(a.at_us)),
            detail: detail_object(&s.detail),
        })
        .collect()
}

/// The report of a recorded handover (for `handover status`).
pub fn report(id: &str, h: &HandoverRecord) -> HandoverReport {
    let status = if h.completed.is_some() {
        "completed"
    } else if h.steps.iter().any(|s| s.state == StepState::Failed) {
        "failed"
    } else {
        "running"
    };
    HandoverReport {
        handover_id: id.to_string(),
        playbook: h.playbook.clone(),
        from: h.from.clone(),
        to: h.to.clone(),
        status: status.into(),
        steps: lines(h),
        summary: machine::summary(h),
    }
}

/// The recorded handover `id` (the log is the only source of ids, so a miss is a store fault).
fn recorded<'a>(state: &'a State, id: &str) -> Result<&'a HandoverRecord> {
    state
        .control
        .handovers
        .handovers
        .get(id)
        .ok_or_else(|| Error::Store(format!("handover {id} is not in the log")))
}

/// Run or resume a handover to completion. `say` receives one line per step as it runs.
pub async fn handover(
    cfg: &Config,
    store: &AnyStore,
    opts: &HandoverOptions,
    progress: &ProgressBar,
    say: &(dyn Fn(&str) + Sync),
) -> Result<HandoverReport> {
    let pb = Playbook::resolve(&opts.playbook)?;
    if opts.from.is_empty() || opts.to.is_empty() {
        return Err(Error::BadInput("--from and --to name instances".into()));
    }
    let _lock = store
        .try_lock("handover")
        .await?
        .ok_or_else(|| Error::Refused("another handover is running on this store".into()))?;
    // The runner folds its own copy forward (the sync steps share the one the store handle
    // remembers).
    let mut state = std::sync::Arc::unwrap_or_clone(replay::current(store).await?);
    let described: Vec<String> = pb.steps.iter().map(|s| s.describe()).collect();
    let id = match machine::begin(&state.control.handovers, &opts.from, &opts.to, &pb.name) {
        Begin::Refuse(why) => return Err(Error::Refused(why)),
        Begin::AlreadyDone(id) => {
            say(&format!("handover {id} is already complete: nothing to do"));
            let mut r = report(&id, recorded(&state, &id)?);
            r.status = "already-completed".into();
            return Ok(r);
        }
        Begin::Resume(id) => {
            let recorded: Vec<&String> = recorded(&state, &id)?
                .steps
                .iter()
                .map(|s| &s.action)
                .collect();
            if recorded != described.iter().collect::<Vec<_>>() {
                return Err(Error::BadInput(format!(
                    "{}: its steps differ from those handover {id} started with; finish it with the playbook it began with",
                    opts.playbook
                )));
            }
            say(&format!("resuming handover {id}"));
            id
        }
        Begin::Start if opts.dry_run => {
            return Ok(dry_run(&pb, opts));
        }
        Begin::Start => {
            // The identities the instances use must work before anything is recorded (the
            // old tool broke when its service account was moved or removed).
            crate::sync::run::probe_source(cfg.source()?).await?;
            if let Some(t) = &cfg.target {
                AnyTarget::from_config(t)?.probe().await?;
            }
            let id = uuid::Uuid::new_v4().to_string();
            store
                .append(
                    Batch::new(vec![NewEvent::new(
                        stream::handover(&id),
                        opts.to.clone(),
                        Event::HandoverStarted(HandoverStarted {
                            handover_id: id.clone(),
                            from: opts.from.clone(),
                            to: opts.to.clone(),
                            playbook: pb.name.clone(),
                            steps: described.clone(),
                        }),
                    )])
                    .expect(stream::handover(&id), Expected::NoStream),
                )
                .await?;
            say(&format!(
                "handover {id}: {} -> {} with playbook {}",
                opts.from, opts.to, pb.name
            ));
            id
        }
    };
    if opts.dry_run {
        let mut r = report(&id, recorded(&state, &id)?);
        r.status = "dry-run".into();
        return Ok(r);
    }
    loop {
        state = replay::fold(store, state, Until::Head, None).await?;
        let h = state
            .control
            .handovers
            .handovers
            .get(&id)
            .ok_or_else(|| Error::Store(format!("handover {id} vanished from the log")))?
            .clone();
        match machine::decide(&h) {
            Next::Done => return Ok(report(&id, &h)),
            Next::Complete => {
                let summary = machine::summary(&h);
                append(
                    store,
                    &id,
                    &opts.to,
                    Event::HandoverCompleted(HandoverCompleted {
                        handover_id: id.clone(),
                        summary: serde_json::to_value(&summary).unwrap_or_default(),
                    }),
                )
                .await?;
                say(&format!("handover {id} completed"));
            }
            Next::Run(i) => {
                state = run_step(cfg, store, state, &id, &h, &pb, i, progress, say).await?;
            }
        }
    }
}

fn dry_run(pb: &Playbook, opts: &HandoverOptions) -> HandoverReport {
    HandoverReport {
        handover_id: String::new(),
        playbook: pb.name.clone(),
        from: opts.from.clone(),
        to: opts.to.clone(),
        status: "dry-run".into(),
        steps: pb
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepLine {
                step: i + 1,
                action: s.describe(),
                state: "pending".into(),
                started: None,
                finished: None,
                detail: detail_object(
                    &s.note
                        .clone()
                        .map(serde_json::Value::from)
                        .unwrap_or_default(),
                ),
            })
            .collect(),
        summary: Summary::default(),
    }
}

async fn append(store: &AnyStore, id: &str, instance: &str, e: Event) -> Result<()> {
    store
        .append(Batch::new(vec![NewEvent::new(
            stream::handover(id),
            instance,
            e,
        )]))
        .await?;
    Ok(())
}

fn step_event(id: &str, i: usize, action: &str, detail: serde_json::Value) -> HandoverStep {
    HandoverStep {
        handover_id: id.to_string(),
        step: i as u32,
        action: action.to_string(),
        detail,
    }
}

/// A sync report as a step's detail (the summary folds these).
fn sync_detail(r: &SyncReport) -> serde_json::Value {
    json!({
        "run_id": r.run_id,
        "import_mode": r.import.mode,
        "fallback": r.import.fallback,
        "source_deleted": r.import.deleted + r.import.left_scope,
        "created": r.created,
        "updated": r.updated,
        "deleted": r.deleted,
        "matched": r.matched,
        "held": r.held,
        "conflicts": r.conflicts,
        "failures": r.failures,
        "epoch": r.epoch,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    cfg: &Config,
    store: &AnyStore,
    mut state: State,
    id: &str,
    h: &HandoverRecord,
    pb: &Playbook,
    i: usize,
    progress: &ProgressBar,
    say: &(dyn Fn(&str) + Sync),
) -> Result<State> {
    let step = pb
        .steps
        .get(i)
        .ok_or_else(|| Error::Store(format!("handover {id} has no step {}", i + 1)))?;
    let name = machine::instance(h, step.role).to_string();
    let what = step.describe();
    let n = pb.steps.len();
    // A crash left this step running: a sync it had started is dead (we hold the lock).
    if h.steps[i].state == StepState::Running {
        if let Some(started) = h.steps[i].started {
            abandon_run(
                store,
                &state,
                &name,
                started.seq,
                "abandoned: the handover that ran it stopped before it finished",
            )
            .await?;
        }
    }
    append(
        store,
        id,
        &name,
        Event::HandoverStepStarted(step_event(id, i, &what, serde_json::Value::Null)),
    )
    .await?;
    say(&format!("step {}/{n} {what}: started", i + 1));
    state = replay::fold(store, state, Until::Head, None).await?;
    let step_seq = state.seq;
    let begun = Instant::now();
    let mut said = None;
    let outcome: Result<serde_json::Value> = loop {
        state = replay::fold(store, state, Until::Head, None).await?;
        let h = recorded(&state, id)?;
        match machine::ready(&state, h, i, step) {
            Ready::Go => break run_action(cfg, store, &state, h, step, &name, progress).await,
            Ready::Skip(why) => break Ok(json!({ "skipped": why })),
            Ready::Fail(why) => break Err(Error::Refused(why)),
            Ready::Wait(why) => {
                if begun.elapsed() >= step.timeout {
                    break Err(Error::Refused(format!(
                        "timed out after {}: {why}",
                        humantime::format_duration(step.timeout)
                    )));
                }
                if said.as_ref() != Some(&why) {
                    say(&format!("step {}/{n} {what}: {why}", i + 1));
                    said = Some(why);
                }
                tokio::time::sleep(POLL).await;
            }
        }
    };
    match outcome {
        Ok(detail) => {
            say(&format!(
                "step {}/{n} {what}: done {}",
                i + 1,
                brief(&detail)
            ));
            append(
                store,
                id,
                &name,
                Event::HandoverStepCompleted(step_event(id, i, &what, detail)),
            )
            .await?;
            replay::fold(store, state, Until::Head, None).await
        }
        Err(e) => {
            // A sync the step's timeout cut short recorded no end: record it, once no
            // cycle of the instance is running (its lock is free).
            if let Ok(lock) = crate::sync::export::lock_instance(store, &name).await {
                let state = replay::fold(store, state, Until::Head, None).await;
                let r = match state {
                    Ok(state) => {
                        abandon_run(
                            store,
                            &state,
                            &name,
                            step_seq,
                            &format!("abandoned: the handover step ended it ({e})"),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                lock.release().await;
                r?;
            }
            say(&format!("step {}/{n} {what}: failed: {e}", i + 1));
            append(
                store,
                id,
                &name,
                Event::HandoverStepFailed(step_event(
                    id,
                    i,
                    &what,
                    json!({ "error": e.to_string() }),
                )),
            )
            .await?;
            Err(e)
        }
    }
}

/// Record as failed (abandoned) the run of `name` in progress when it started after
/// `since`: its process no longer runs it.
async fn abandon_run(
    store: &AnyStore,
    state: &State,
    name: &str,
    since: u64,
    why: &str,
) -> Result<()> {
    let Some((run_id, at)) = state
        .control
        .instances
        .instances
        .get(name)
        .and_then(|r| r.running.clone())
    else {
        return Ok(());
    };
    if at.seq <= since {
        return Ok(());
    }
    store
        .append(Batch::new(vec![NewEvent::new(
            stream::instance(name),
            name,
            Event::SyncRunFailed(SyncRunFailed {
                run_id,
                error: why.to_string(),
                reason: Some(FailureReason::Abandoned),
            }),
        )]))
        .await?;
    Ok(())
}

/// " (full import, epoch 2, created 3, ...)": a step's detail for people ("" when empty).
pub fn brief(d: &serde_json::Value) -> String {
    let Some(o) = d.as_object() else {
        return match d.as_str() {
            Some(s) => format!(" ({s})"),
            None => String::new(),
        };
    };
    if let Some(s) = o.get("skipped").and_then(|v| v.as_str()) {
        return format!(" (skipped: {s})");
    }
    if let Some(s) = o.get("error").and_then(|v| v.as_str()) {
        return format!(" ({s})");
    }
    if let Some(s) = o.get("note").and_then(|v| v.as_str()) {
        return format!(" ({s})");
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = o.get("import_mode").and_then(|v| v.as_str()) {
        parts.push(format!("{m} import"));
    }
    if let Some(c) = o.get("replayed_cursor_of").and_then(|v| v.as_str()) {
        parts.push(format!("from {c}'s cursor"));
    }
    if let Some(e) = o.get("epoch").and_then(|v| v.as_u64()) {
        parts.push(format!("epoch {e}"));
    }
    let parts: Vec<String> = ["source_deleted", "created", "updated", "deleted", "matched"]
        .iter()
        .filter_map(|k| {
            let v = o.get(*k)?.as_u64()?;
            (v > 0).then(|| format!("{} {v}", k.replace('_', " ")))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("({})", parts.join(", "))
    }
}

async fn run_action(
    cfg: &Config,
    store: &AnyStore,
    state: &State,
    h: &HandoverRecord,
    step: &super::file::Step,
    name: &str,
    progress: &ProgressBar,
) -> Result<serde_json::Value> {
    let lifecycle = |e: Event| NewEvent::new(stream::instance(name), name, e);
    let why = Some(format!("handover step: {}", step.describe()));
    let run = |full: bool| SyncOptions {
        instance: name.to_string(),
        full,
        staging: false,
        dry_run: false,
        take_over: step.take_over,
        stop: None,
        // A cycle of the instance in flight (the old computer's, or its service) ends
        // within cycle_timeout; the step waits for it rather than failing the handover.
        wait_for_cycle: Some(cfg.sync.cycle_timeout),
        quiet: false,
    };
    let synced = |r: SyncReport| -> Result<serde_json::Value> {
        let detail = sync_detail(&r);
        match r.exit() {
            Exit::Ok => Ok(detail),
            Exit::Held => Err(Error::Held(format!(
                "{} deletion(s) held ({}); approve with `dirsync deletions approve --plan {}` and run the handover again",
                r.held,
                r.held_reason.unwrap_or_default(),
                crate::plan::plan::short_hash(&r.held_plan.unwrap_or_default())
            ))),
            _ => Err(Error::Target(format!(
                "{} conflict(s) and {} failed export(s) on {name}: see `dirsync sync --instance {name}`",
                r.conflicts, r.failures
            ))),
        }
    };
    let timed = |fut| async move {
        tokio::time::timeout(step.timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Refused(format!(
                    "timed out after {}",
                    humantime::format_duration(step.timeout)
                )))
            })
    };
    match step.action {
        Action::Stop | Action::Start | Action::Retire => {
            let lc = InstanceLifecycle {
                reason: why,
                forced: step.force,
            };
            let e = match step.action {
                Action::Stop => Event::InstanceStopped(lc),
                Action::Start => Event::InstanceStarted(lc),
                _ => Event::InstanceRetired(lc),
            };
            store.append(Batch::new(vec![lifecycle(e)])).await?;
            Ok(json!({}))
        }
        Action::WaitSync => {
            let last = state
                .control
                .instances
                .instances
                .get(name)
                .and_then(|r| r.last_completed.clone());
            Ok(json!({ "completed_run": last.map(|(id, _)| id) }))
        }
        Action::Sync => timed(sync(cfg, store, &run(step.full), progress))
            .await
            .and_then(synced),
        Action::ReplayCursor => {
            let old = machine::instance(h, Role::Old);
            let Some(c) = state.control.cursors.current.get(old) else {
                return Ok(json!({
                    "skipped": format!("{old} has no cursor in the log: reconciliation finds its deletions")
                }));
            };
            // The new instance continues from where the old one stopped.
            store
                .append(Batch::new(vec![NewEvent::new(
                    stream::cursor(name),
                    name,
                    Event::CursorAdvanced(CursorAdvanced {
                        kind: c.kind.clone(),
                        cookie: c.cookie.clone(),
                    }),
                )]))
                .await?;
            let mut d = timed(sync(cfg, store, &run(false), progress))
                .await
                .and_then(synced)?;
            d["replayed_cursor_of"] = json!(old);
            Ok(d)
        }
    }
}

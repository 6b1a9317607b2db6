//! The sync cycle: import -> plan -> guard -> export, and fencing.
//!
//! # Fencing: one writer at a time
//! The sync relationship is a stream of `SyncRelationshipEstablished` events: its holder and
//! epoch. An instance exports only while it holds the current epoch. Before each chunk of
//! at most [`CHUNK`] operations it appends an `ExportBatchStarted` claim that *expects the
//! relationship stream's version it verified*: the check and the record are one atomic
//! append, and a take-over by another instance in between makes the claim fail (exit 4).
//!
//! The claim carries a lease (`[sync] lease`, default [`LEASE`]). No request of the chunk,
//! first attempt or retry, is sent after the lease's end less a margin
//! ([`lease_margin`]), and every request's own timeout (connecting, sending, the whole
//! answer) is cut to end by then too (`target::request_timeout`). So an instance that lost
//! the relationship a moment after its claim has given up on every request of that chunk
//! within the lease. `--take-over` closes the window from the other side: after recording
//! the new epoch it waits until the last lease taken by another instance has ended, plus
//! the longest deadline a request of it could have had ([`takeover_wait`]), so the old and
//! new holder never send at the same time (assuming their clocks agree to within the
//! margin). What no wait can bound, a request held up in the network after its sender
//! gave up, is handled by the new holder: see `sync::duplicates`.
//!
//! # Exactly once
//! Every applied operation is recorded (`ExportApplied`, with the target's id) right after
//! its chunk. A crash between a request and its record leaves an object in the target the
//! ledger does not know; the next cycle's matching finds it by its anchor (hard match) and
//! takes it, so nothing is created twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;

use super::duplicates::Watch;
use super::reconcile::{self, Duplicate, Listing};
use super::run::{import_run, open_and_check, refuse_retired, ImportOptions, ImportReport};
use crate::config::{Config, Hold};
use crate::error::{Error, Exit, Result};
use crate::log::event::{
    stream, DuplicateRemoved, Event, ExportApplied, ExportBatchCompleted, ExportBatchStarted,
    ExportFailed, ExportOp, FailureReason, ObjectKind, SyncRelationshipEstablished,
    SyncRunCompleted, SyncRunFailed, SyncRunStarted, TargetDuplicateRemoved, TargetReconciled,
    TargetReset,
};
use crate::log::store::{Batch, Expected, StoreLock};
use crate::log::{AnyStore, NewEvent, Store};
use crate::plan::focus::{self, Focus, Whole};
use crate::plan::mapping::Mapping;
use crate::plan::matching::{swap_case, Index, Match};
use crate::plan::plan::{
    guard, guard_event, plan_focused, recent_deletions, GuardInput, Plan, Removal, Verdict,
};
use crate::project::replay;
use crate::project::{ExportFailure, Lease, Meta, State};
use crate::target::{AnyTarget, Mapped, Op, Outcome, RemoteObject, Target, REQUEST_TIMEOUT};

/// Operations per claimed chunk.
pub const CHUNK: usize = 100;
/// How long a claim lets an instance send the requests of its chunk.
pub const LEASE: Duration = Duration::from_secs(30);
/// Kept off the lease for the local deadline: clock differences between computers. A
/// shorter lease keeps a sixth of itself ([`lease_margin`]).
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Failed exports in a row after which an object is quarantined: skipped by every cycle
/// until its source changes (then tried once more) or a `sync --full` tries it again.
pub use crate::project::QUARANTINE_AFTER;
/// With more new objects than this, the target is listed once for matching instead of
/// being asked about each new object.
pub const LIST_ABOVE: usize = 20;

#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub instance: String,
    pub full: bool,
    /// Import and plan; export nothing.
    pub staging: bool,
    /// Read the source (and the target, for matching) and print the plan; write nothing.
    pub dry_run: bool,
    /// Establish a new sync relationship epoch for this instance first.
    pub take_over: bool,
    /// Set (by SIGTERM) to end the export after the chunk in flight; the rest waits for
    /// the next cycle.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// How long to wait for another cycle of the instance to end (a handover step waits
    /// out a cycle in flight); `None`: refuse at once (`sync`, `run`).
    pub wait_for_cycle: Option<Duration>,
    /// A routine cycle of the service (`dirsync run`): when it turns out idle (nothing
    /// imported, the cursor unmoved, nothing to export) it appends nothing to the log and
    /// records the idle cycle outside it (`sync::idle`).
    pub quiet: bool,
}

/// One line of a printed plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedOp {
    /// create, match, update, delete, conflict or unmappable.
    pub op: &'static str,
    pub kind: ObjectKind,
    pub anchor: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// An update's changed attributes, old -> new.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::target::FieldChange>,
}

/// Something the operator must look at: a conflict, a failed export, an unmappable object.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub anchor: String,
    /// conflict, failure, quarantined, unmappable, unresolved_reference or duplicate.
    pub problem: &'static str,
    pub detail: String,
}

/// What a cycle did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    pub run_id: String,
    pub instance: String,
    /// sync, staging or dry-run.
    pub mode: String,
    pub import: ImportReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub matched: u64,
    /// Deletions held by the guard.
    pub held: u64,
    pub conflicts: u64,
    pub failures: u64,
    /// Objects deleted from the target out of band and created again (an update answered
    /// 404); not counted in `created`.
    pub recreated: u64,
    /// Objects skipped because their exports kept failing (see [`QUARANTINE_AFTER`]).
    pub quarantined: u64,
    /// Target objects removed because another one carrying the same anchor was kept (late
    /// creates, `sync::duplicates`).
    pub duplicates_removed: u64,
    /// Users gone from the source set inactive this cycle (`[sync] on_delete = "disable"`);
    /// not counted in `updated` nor by the deletion guard.
    pub disabled: u64,
    /// Users disabled earlier whose deletion is not due yet.
    pub awaiting_deletion: u64,
    /// When this cycle read the whole target (`--full`, or `[sync] reconcile_target`
    /// passed): the drift found and repaired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<TargetReconciled>,
    pub unmappable: u64,
    /// Reference attributes (`manager`) naming no object in scope: those objects were
    /// exported without them (problems `unresolved_reference`).
    pub unresolved_references: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// The plan, on --dry-run and --staging.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedOp>,
    /// An idle cycle: it found nothing and appended nothing to the log (`sync::idle`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
    /// Objects the cycle planned: every live object and owned entry, or only those the
    /// log named since the instance's last whole plan (see [`crate::plan::focus`]).
    pub planned_objects: u64,
    /// Why the cycle planned every object, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole_plan: Option<String>,
    /// Where an exporting cycle that tried every operation of its plan made it.
    #[serde(skip)]
    pub planned_seq: Option<u64>,
    /// Where a staging cycle made the plan it listed.
    #[serde(skip)]
    pub listed_seq: Option<u64>,
}

impl SyncReport {
    /// Held deletions exit 3; conflicts and failed exports exit 1 (after the summary).
    pub fn exit(&self) -> Exit {
        if self.held > 0 {
            Exit::Held
        } else if self.failures > 0 || self.conflicts > 0 {
            Exit::Failure
        } else {
            Exit::Ok
        }
    }

    fn problem(&mut self, anchor: &str, problem: &'static str, detail: String) {
        self.problems.push(Problem {
            anchor: anchor.to_string(),
            problem,
            detail,
        });
    }
}

/// The instance's right to export: the epoch it holds and the relationship stream's version
/// at which that was verified.
#[derive(Clone, Copy, Debug)]
struct Fence {
    epoch: u64,
    version: u64,
}

fn fenced_message(state: &State, instance: &str) -> String {
    format!(
        "{} holds the sync relationship (epoch {}); {instance} exports nothing. `dirsync sync --instance {instance} --take-over` takes it over",
        state.control.relationship.holder.as_deref().unwrap_or("another instance"),
        state.control.relationship.epoch
    )
}

/// Append `events` only while the relationship is still at `fence` (the stream version it
/// was verified at): another instance's take-over in between fences them out.
async fn append_fenced(
    store: &AnyStore,
    instance: &str,
    events: Vec<NewEvent>,
    fence: Fence,
) -> Result<u64> {
    match store
        .append(Batch::new(events).expect(stream::RELATIONSHIP, Expected::Exactly(fence.version)))
        .await
    {
        Ok(o) => Ok(o.last_seq()),
        Err(Error::Conflict { .. }) => {
            let state = replay::current(store).await?;
            Err(Error::Fenced(fenced_message(&state, instance)))
        }
        Err(e) => Err(e),
    }
}

/// Verify (or, with `take_over` or when nobody holds it yet, establish) the relationship.
async fn acquire(
    store: &AnyStore,
    state: Arc<State>,
    instance: &str,
    take_over: bool,
    progress: &ProgressBar,
) -> Result<(Fence, Arc<State>)> {
    let mut state = state;
    for _ in 0..3 {
        // The version first, then the state: a change in between fails the append below.
        let version = store.stream_version(stream::RELATIONSHIP).await?;
        drop(state);
        state = replay::current(store).await?;
        let rel = &state.control.relationship;
        if rel.held_by(instance) && rel.epoch > 0 {
            let epoch = rel.epoch;
            if take_over {
                // Taken already (a failover's election bumped the epoch): no second bump,
                // but the previous holder's lease is still waited out.
                wait_for_lease(&state, instance, progress).await;
            }
            return Ok((Fence { epoch, version }, state));
        }
        if !take_over && rel.holder.is_some() {
            return Err(Error::Fenced(fenced_message(&state, instance)));
        }
        let epoch = rel.epoch + 1;
        let batch = Batch::new(vec![NewEvent::new(
            stream::RELATIONSHIP,
            instance,
            Event::SyncRelationshipEstablished(SyncRelationshipEstablished {
                holder: instance.to_string(),
                epoch,
            }),
        )])
        .expect(stream::RELATIONSHIP, Expected::Exactly(version));
        match store.append(batch).await {
            Ok(_) => {
                // Leases claimed before our epoch are in the log now: wait out another's.
                drop(state);
                state = replay::current(store).await?;
                wait_for_lease(&state, instance, progress).await;
                return Ok((
                    Fence {
                        epoch,
                        version: version + 1,
                    },
                    state,
                ));
            }
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Fenced(
        "the sync relationship kept changing while taking it over".into(),
    ))
}

/// The margin kept off a lease of length `lease` for the local deadline: [`LEASE_MARGIN`],
/// or a sixth of a shorter lease.
pub fn lease_margin(lease: Duration) -> Duration {
    LEASE_MARGIN.min(lease / 6)
}

/// How long a new holder waits, at `now_us`, for another instance's open `lease` (pure):
/// until the lease's end plus the longest deadline a request sent under it could have had
/// (its whole length, at most [`REQUEST_TIMEOUT`]: a request sent just before the end has
/// then certainly been answered or given up on by its sender, even one that did not cut
/// its timeouts to the lease). A lease ending far in the future (a clock ahead) is waited
/// for at most its length, that deadline and [`LEASE_MARGIN`].
pub fn takeover_wait(lease: &Lease, now_us: i64) -> Duration {
    let length = if lease.from_us > 0 && lease.from_us < lease.until_us {
        Duration::from_micros((lease.until_us - lease.from_us) as u64)
            .min(crate::config::LEASE_RANGE.1)
    } else {
        LEASE
    };
    let request = length.min(REQUEST_TIMEOUT);
    let end = lease.until_us.saturating_add(request.as_micros() as i64);
    let left = Duration::from_micros(end.saturating_sub(now_us).max(0) as u64);
    left.min(length + request + LEASE_MARGIN)
}

/// Sleep until the last export lease of another instance and its requests have ended.
async fn wait_for_lease(state: &State, instance: &str, progress: &ProgressBar) {
    let Some(lease) = &state.control.relationship.lease else {
        return;
    };
    if lease.instance == instance {
        return;
    }
    let wait = takeover_wait(lease, chrono::Utc::now().timestamp_micros());
    if !wait.is_zero() {
        progress.set_message(format!(
            "waiting {:.0}s for {}'s export lease and its requests to end",
            wait.as_secs_f64(),
            lease.instance
        ));
        tracing::info!(
            "waiting {:.1}s for {}'s export lease and its requests to end",
            wait.as_secs_f64(),
            lease.instance
        );
        tokio::time::sleep(wait).await;
    }
}

/// One cycle of an instance at a time, across processes (and hosts, on PostgreSQL): a
/// cycle holds the store's advisory lock `sync.INSTANCE` (a 0600 file lock beside SQLite, a
/// session lock on PostgreSQL) until it ends; the operating system or the server releases
/// it when the process dies. A second cycle is refused before it reads or records anything.
pub async fn lock_instance(store: &AnyStore, instance: &str) -> Result<StoreLock> {
    lock_instance_within(store, instance, Duration::ZERO).await
}

/// [`lock_instance`], waiting up to `wait` for a cycle in flight to end.
pub async fn lock_instance_within(
    store: &AnyStore,
    instance: &str,
    wait: Duration,
) -> Result<StoreLock> {
    store
        .lock_within(&format!("sync.{instance}"), wait)
        .await?
        .ok_or_else(|| {
            Error::Refused(format!(
                "a sync of instance `{instance}` is already running (`dirsync sync` or `dirsync run`); this one did nothing{}",
                if wait.is_zero() {
                    String::new()
                } else {
                    format!(" (waited {})", humantime::format_duration(wait))
                }
            ))
        })
}

/// One sync cycle for `opts.instance`.
pub async fn sync(
    cfg: &Config,
    store: &AnyStore,
    opts: &SyncOptions,
    progress: &ProgressBar,
) -> Result<SyncReport> {
    let src_cfg = cfg.source()?.clone();
    let exporting = !opts.staging && !opts.dry_run;
    if opts.take_over && !exporting {
        return Err(Error::BadInput(
            "--take-over establishes a relationship to export: not with --staging or --dry-run"
                .into(),
        ));
    }
    let target = match (&cfg.target, opts.staging) {
        (_, true) => None,
        (Some(t), false) => Some(AnyTarget::from_config(t)?),
        (None, false) if exporting => {
            return Err(Error::Config(
                "no [target] section: nothing to export to (use --staging to import only)".into(),
            ))
        }
        (None, false) => None,
    };
    // A dry run records nothing and may run beside a cycle.
    if opts.dry_run {
        return sync_cycle(cfg, store, opts, src_cfg, target, progress).await;
    }
    let lock = lock_instance_within(
        store,
        &opts.instance,
        opts.wait_for_cycle.unwrap_or(Duration::ZERO),
    )
    .await?;
    let r = sync_cycle(cfg, store, opts, src_cfg, target, progress).await;
    lock.release().await;
    r
}

/// [`sync`] once the instance is ours (or in a dry run).
async fn sync_cycle(
    cfg: &Config,
    store: &AnyStore,
    opts: &SyncOptions,
    src_cfg: crate::config::SourceConfig,
    target: Option<AnyTarget>,
    progress: &ProgressBar,
) -> Result<SyncReport> {
    let exporting = !opts.staging && !opts.dry_run;
    let began = Instant::now();
    let phase = |name: &str| crate::ops::metrics::phase_line!("sync", name, began);
    let checks = async {
        let state = replay::current(store).await?;
        phase("projections read");
        // A stopped instance's service (`dirsync run`) idles, but a sync asked for by hand
        // (or by a handover step, as the documented "force synchronization") still runs:
        // fencing, not the stop, decides who may export.
        refuse_retired(&state, &opts.instance)?;
        // Checks before the run's start is recorded: the source bind, the target's
        // credentials, and (exporting) the relationship.
        let checked = open_and_check(&src_cfg, &state).await?;
        if let Some(t) = &target {
            t.probe().await?;
        }
        // A mapping that writes an extension the SCIM target does not hold is refused
        // before anything is recorded or exported (once per process).
        if let (Some(AnyTarget::Scim(scim)), Some(t)) = (&target, &cfg.target) {
            super::preflight::require_target_schema(scim, &t.url, cfg.mapping()?).await?;
        }
        if exporting {
            let (f, s) = acquire(store, state, &opts.instance, opts.take_over, progress).await?;
            return Ok((s, checked, Some(f)));
        }
        Ok((state, checked, None))
    }
    .await;
    let (state, checked, fence) = match checks {
        Ok(c) => c,
        Err(e) => {
            if !opts.dry_run {
                record_unstarted(store, &opts.instance, &e).await;
            }
            return Err(e);
        }
    };
    let mode = if opts.dry_run {
        "dry-run"
    } else if opts.staging {
        "staging"
    } else {
        "sync"
    };
    let mut report = SyncReport {
        run_id: uuid::Uuid::new_v4().to_string(),
        instance: opts.instance.clone(),
        mode: mode.into(),
        epoch: fence.map(|f| f.epoch),
        ..Default::default()
    };
    // A routine cycle that may turn out idle keeps its start until it records something.
    let quiet = !opts.dry_run
        && super::idle::may_stay_quiet(
            opts.quiet,
            opts.full,
            opts.take_over,
            state.control.instances.instances.get(&opts.instance),
            chrono::Utc::now().timestamp_micros(),
        );
    let mut pending = quiet.then(|| SyncRunStarted {
        run_id: report.run_id.clone(),
        full: opts.full,
        mode: report.mode.clone(),
    });
    if !opts.dry_run && !quiet {
        run_started(store, &report, opts.full).await?;
    }
    let now_us = chrono::Utc::now().timestamp_micros();
    let run = Cycle {
        store,
        target: target.as_ref(),
        mapping: cfg.mapping()?,
        threshold: cfg.sync.deletion_threshold,
        on_delete: cfg.sync.on_delete,
        now_us,
        hold: cfg.sync.hold,
        instance: &opts.instance,
        fence,
        progress,
        stop: opts.stop.as_deref(),
        retry_quarantined: opts.full,
        lease: cfg.sync.lease,
        watch: if exporting {
            super::duplicates::watching(&state, opts.take_over, now_us)
        } else {
            Watch::Off
        },
        deadline: Deadline::after(began, cfg.sync.cycle_timeout),
        reconcile_every: Some(cfg.sync.reconcile_target),
        full: opts.full,
    };
    let scope = src_cfg.scope();
    let import_opts = ImportOptions {
        instance: opts.instance.clone(),
        full: opts.full,
        dry_run: opts.dry_run,
        pending_start: pending.clone(),
    };
    let result = async {
        // Let go of the state while importing: the import then brings the copy this process
        // remembers up to date in place instead of copying it.
        drop(state);
        let imported = import_run(
            store,
            &src_cfg,
            &scope,
            &import_opts,
            &report.run_id,
            Some(checked),
            progress,
        )
        .await?;
        phase("imported");
        if imported.started {
            pending = None;
        }
        // The snapshot of the imported state is stored while the plan is made.
        let (state, saving) = replay::current_saving_beside(store).await?;
        let state = if opts.dry_run {
            Arc::new(with_planned(&state, &imported, &opts.instance))
        } else {
            state
        };
        phase("projections brought up to date");
        report.import = imported;
        let r = run.cycle(state, &mut report, saving, &mut pending).await;
        phase("planned and exported");
        r
    }
    .await;
    match (pending, &result) {
        // Idle: nothing recorded, nor to record; the cycle is noted outside the log.
        (Some(_), Ok(())) => {
            report.idle = true;
            let (seq, _) = store.head().await?;
            store
                .idle_cycle(&super::idle::IdleCycle {
                    instance: opts.instance.clone(),
                    run_id: report.run_id.clone(),
                    mode: report.mode.clone(),
                    at_us: chrono::Utc::now().timestamp_micros(),
                    seq,
                    cursor_seq: report.import.cursor_seq,
                })
                .await?;
        }
        (pending, _) if !opts.dry_run => {
            run_ended(store, &report, cfg.sync.hold, &result, pending).await?;
        }
        _ => {}
    }
    phase("run recorded");
    result.map(|()| report)
}

async fn run_started(store: &AnyStore, report: &SyncReport, full: bool) -> Result<()> {
    store
        .append(Batch::new(vec![NewEvent::new(
            stream::instance(&report.instance),
            report.instance.clone(),
            Event::SyncRunStarted(SyncRunStarted {
                run_id: report.run_id.clone(),
                full,
                mode: report.mode.clone(),
            }),
        )]))
        .await?;
    Ok(())
}

/// Record a cycle that failed before it recorded its start (the source or the target
/// unreachable, fenced): one `SyncRunFailed` of a run that never started. Errors that
/// promise to record nothing (bad configuration, refusals) are not recorded; a store that
/// cannot take the record is reported in the log lines, and the cycle's own error stands.
pub(crate) async fn record_unstarted(store: &AnyStore, instance: &str, e: &Error) {
    let Some(reason) = FailureReason::before_start(e) else {
        return;
    };
    let failed = Event::SyncRunFailed(SyncRunFailed {
        run_id: uuid::Uuid::new_v4().to_string(),
        error: e.to_string(),
        reason: Some(reason),
    });
    let r = store
        .append(Batch::new(vec![NewEvent::new(
            stream::instance(instance),
            instance,
            failed,
        )]))
        .await;
    if let Err(rec) = r {
        tracing::warn!("could not record the failed cycle of {instance}: {rec}");
    }
}

/// The event that ends a run: completed, or failed with its reason. A cycle whose
/// deletions were held (exit 3) failed, held, when it exported nothing (`[sync] hold =
/// "all"`); with `hold = "deletions"` it exported its creates and updates and completed,
/// its held count above zero (the held list stands until approved: `Guard::waiting`).
fn run_end(report: &SyncReport, hold: Hold, result: &Result<()>) -> Event {
    match result {
        Ok(()) if report.held > 0 && hold == Hold::All => Event::SyncRunFailed(SyncRunFailed {
            run_id: report.run_id.clone(),
            error: format!(
                "{} deletion(s) held: {} (plan {})",
                report.held,
                report.held_reason.as_deref().unwrap_or_default(),
                report.held_plan.as_deref().unwrap_or_default()
            ),
            reason: Some(FailureReason::Held),
        }),
        Ok(()) => Event::SyncRunCompleted(SyncRunCompleted {
            run_id: report.run_id.clone(),
            created: report.created,
            updated: report.updated,
            deleted: report.deleted,
            matched: report.matched,
            held: report.held,
            failed: report.failures,
            planned_seq: report.planned_seq,
            listed_seq: report.listed_seq,
        }),
        Err(e) => Event::SyncRunFailed(SyncRunFailed {
            run_id: report.run_id.clone(),
            error: e.to_string(),
            reason: Some(FailureReason::of(e)),
        }),
    }
}

/// Record the run's end, after its start when that was still `pending` (a cycle that may
/// have stayed out of the log and failed, say).
async fn run_ended(
    store: &AnyStore,
    report: &SyncReport,
    hold: Hold,
    result: &Result<()>,
    pending: Option<SyncRunStarted>,
) -> Result<()> {
    let end = run_end(report, hold, result);
    let on = |e: Event| {
        NewEvent::new(
            stream::instance(&report.instance),
            report.instance.clone(),
            e,
        )
    };
    let mut events: Vec<NewEvent> = pending
        .map(|p| on(Event::SyncRunStarted(p)))
        .into_iter()
        .collect();
    events.push(on(end));
    store.append(Batch::new(events)).await?;
    replay::current(store).await?;
    Ok(())
}

/// What [`export_log`] needs besides the store and the target.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub instance: String,
    /// How source objects map.
    pub mapping: Arc<Mapping>,
    pub threshold: crate::config::Threshold,
    /// What a tripped guard holds (`[sync] hold`).
    pub hold: crate::config::Hold,
    pub take_over: bool,
    /// Record `TargetReset` with this reason first, under the same fence as the export's
    /// claims (the ledger forgets the target: everything is created again). Only
    /// [`super::rebuild`] sets it, after checking that the target is a fresh one.
    pub reset: Option<String>,
}

/// Export what the log already holds, without reading the source: plan -> guard -> export,
/// under the relationship like any sync. (Benchmarks; rebuilding a target from the log.)
pub async fn export_log(
    store: &AnyStore,
    target: &AnyTarget,
    opts: &ExportOptions,
    progress: &ProgressBar,
) -> Result<SyncReport> {
    let lock = lock_instance(store, &opts.instance).await?;
    let r = export_log_locked(store, target, opts, progress).await;
    lock.release().await;
    r
}

async fn export_log_locked(
    store: &AnyStore,
    target: &AnyTarget,
    opts: &ExportOptions,
    progress: &ProgressBar,
) -> Result<SyncReport> {
    // A rebuild refused before it starts (fenced, the target unreachable) writes nothing:
    // it is an operator's one-off, not a cycle of the instance.
    let state = replay::current(store).await?;
    target.probe().await?;
    let (fence, mut state) =
        acquire(store, state, &opts.instance, opts.take_over, progress).await?;
    if let Some(reason) = &opts.reset {
        append_fenced(
            store,
            &opts.instance,
            vec![NewEvent::new(
                stream::TARGET,
                opts.instance.as_str(),
                Event::TargetReset(TargetReset {
                    reason: reason.clone(),
                }),
            )],
            fence,
        )
        .await?;
        drop(state);
        state = replay::current(store).await?;
    }
    let mut report = SyncReport {
        run_id: uuid::Uuid::new_v4().to_string(),
        instance: opts.instance.clone(),
        mode: "export".into(),
        epoch: Some(fence.epoch),
        ..Default::default()
    };
    run_started(store, &report, false).await?;
    let run = Cycle {
        store,
        target: Some(target),
        mapping: &opts.mapping,
        threshold: opts.threshold,
        on_delete: crate::config::OnDelete::Delete,
        now_us: chrono::Utc::now().timestamp_micros(),
        hold: opts.hold,
        instance: &opts.instance,
        fence: Some(fence),
        progress,
        stop: None,
        retry_quarantined: false,
        lease: LEASE,
        watch: super::duplicates::watching(
            &state,
            opts.take_over,
            chrono::Utc::now().timestamp_micros(),
        ),
        deadline: Deadline::after(
            Instant::now(),
            crate::config::SyncConfig::default().cycle_timeout,
        ),
        reconcile_every: None,
        // An operator's export plans every object.
        full: true,
    };
    let result = run.cycle(state, &mut report, None, &mut None).await;
    run_ended(store, &report, opts.hold, &result, None).await?;
    result.map(|()| report)
}

/// The state as it would be after a dry-run import's events.
pub(crate) fn with_planned(state: &State, imported: &ImportReport, instance: &str) -> State {
    let mut state = state.clone();
    let now = chrono::Utc::now().timestamp_micros();
    for (seq, e) in (state.seq + 1..).zip(imported.planned.iter()) {
        state.apply(
            &Meta {
                seq,
                instance,
                recorded_at_us: now,
            },
            e.clone(),
        );
    }
    state
}

/// How the target objects that could match a pass's new objects are found.
#[derive(Debug, PartialEq)]
enum LookUp<'a> {
    /// List every object of the kind.
    List,
    /// Ask the target's filters for each new object's candidates, once it proved that its
    /// `eq` ignores case by finding `known` (the object `id`, which we own) by its name
    /// spelt in the other case.
    Filter { id: &'a str, known: &'a Mapped },
}

/// How to look up `new` objects of `kind` (pure). Filters only when few are new (at most
/// [`LIST_ABOVE`]), none of them had its creation refused as a duplicate (409: the target
/// holds something its filters did not find, so a listing is matched instead of failing
/// again), and we own an object of the kind with letters in its name to probe the filters'
/// case with. Otherwise a listing: what dirsync matches itself is then complete, whatever
/// the target's `eq` does.
fn how_to_look_up<'a>(new: &[(String, Mapped)], state: &'a State, kind: ObjectKind) -> LookUp<'a> {
    if new.len() > LIST_ABOVE {
        return LookUp::List;
    }
    let refused = new.iter().any(|(anchor, _)| {
        state
            .ledger
            .failures
            .get(anchor)
            .is_some_and(|f| f.op == ExportOp::Create && f.status == Some(409))
    });
    if refused {
        return LookUp::List;
    }
    state
        .ledger
        .owned()
        .filter(|(_, l)| l.kind == kind)
        .find_map(|(_, l)| {
            let known = l.state.as_ref()?;
            (swap_case(known.name()) != known.name()).then_some(LookUp::Filter {
                id: l.target_id.as_str(),
                known,
            })
        })
        .unwrap_or(LookUp::List)
}

/// The target's objects of `kind` carrying one of `anchors`, each looked up (an anchor the
/// projections know as the other kind is skipped), and false: not a whole listing. A target
/// that cannot be asked by one of the anchors is listed whole instead (true).
async fn carrying(
    t: &AnyTarget,
    kind: ObjectKind,
    state: &State,
    anchors: &[String],
) -> std::result::Result<(Vec<RemoteObject>, bool), crate::target::TargetError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for a in anchors {
        let known = state
            .ledger
            .entries
            .get(a)
            .map(|l| l.kind)
            .or_else(|| state.objects.objects.get(a).map(|r| r.kind));
        if known.is_some_and(|k| k != kind) {
            continue;
        }
        let Some(found) = t.carrying(kind, a).await? else {
            return t.list(kind).await.map(|r| (r, true));
        };
        out.extend(found.into_iter().filter(|r| seen.insert(r.id.clone())));
    }
    Ok((out, false))
}

/// The last failure of `anchor` when that makes it quarantined (pure): at least
/// [`QUARANTINE_AFTER`] exports of it failed in a row (a matching conflict is never sent
/// and does not count) and its source object has not changed (nor been deleted) since the
/// last one.
pub fn quarantined<'a>(state: &'a State, anchor: &str) -> Option<&'a ExportFailure> {
    let f = state.ledger.failures.get(anchor)?;
    let changed = state.objects.objects.get(anchor).map_or(0, |r| {
        r.last_changed
            .seq
            .max(r.deletion.as_ref().map_or(0, |d| d.at.seq))
    });
    f.quarantines(changed).then_some(f)
}

/// What matching decided for one new object.
enum NewDecision {
    Take {
        anchor: String,
        kind: ObjectKind,
        remote: RemoteObject,
        soft: bool,
    },
    Create(Op),
    Conflict {
        anchor: String,
        kind: ObjectKind,
        name: String,
        why: String,
    },
}

/// Match every new object against the target objects `remote` (pure).
fn decide_new(
    remote: &[RemoteObject],
    new: &[(String, Mapped)],
    state: &State,
) -> Vec<NewDecision> {
    let ix = Index::new(remote);
    let owner: HashMap<&str, &str> = state
        .ledger
        .owned()
        .map(|(a, l)| (l.target_id.as_str(), a.as_str()))
        .collect();
    // Two new anchors must not take the same target object in one cycle.
    let mut taken: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(new.len());
    for (anchor, mapped) in new {
        let owned = |id: &str| owner.get(id).map(|a| a.to_string());
        let conflict = |why: String| NewDecision::Conflict {
            anchor: anchor.clone(),
            kind: mapped.kind(),
            name: mapped.name().to_string(),
            why,
        };
        out.push(match ix.find(anchor, mapped, &owned) {
            Match::Hard(r) | Match::Soft(r) if !taken.insert(r.id.clone()) => conflict(format!(
                "target object {} would be taken by two source objects in this cycle",
                r.id
            )),
            Match::Hard(r) => NewDecision::Take {
                anchor: anchor.clone(),
                kind: mapped.kind(),
                remote: r.clone(),
                soft: false,
            },
            Match::Soft(r) => NewDecision::Take {
                anchor: anchor.clone(),
                kind: mapped.kind(),
                remote: r.clone(),
                soft: true,
            },
            Match::None => NewDecision::Create(Op::Create {
                anchor: anchor.clone(),
                object: mapped.clone(),
            }),
            Match::Conflict(why) => conflict(why),
        });
    }
    out
}

/// Whether an export of `anchor` failed earlier in this cycle.
fn failed_in(report: &SyncReport, anchor: &str) -> bool {
    report
        .problems
        .iter()
        .any(|p| p.problem == "failure" && p.anchor == anchor)
}

fn export_op(op: &Op) -> ExportOp {
    match op {
        Op::Create { .. } => ExportOp::Create,
        Op::Update { .. } => ExportOp::Update,
        Op::Delete { .. } => ExportOp::Delete,
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Create { .. } => "create",
        Op::Update { .. } => "update",
        Op::Delete { .. } => "delete",
    }
}

fn target_id_of(op: &Op) -> &str {
    match op {
        Op::Create { .. } => "",
        Op::Update { target_id, .. } | Op::Delete { target_id, .. } => target_id,
    }
}

fn to_value(m: &Mapped) -> Option<serde_json::Value> {
    serde_json::to_value(m).ok()
}

/// The side-effecting half of a cycle after the import.
struct Cycle<'a> {
    store: &'a AnyStore,
    target: Option<&'a AnyTarget>,
    mapping: &'a Mapping,
    threshold: crate::config::Threshold,
    /// `[sync] on_delete`: users gone from the source are deleted, or disabled first.
    on_delete: crate::config::OnDelete,
    /// The cycle's clock for `on_delete`'s due times, read once: every plan of the cycle
    /// (the guard's and the export's) sees the same users due.
    now_us: i64,
    /// What a tripped guard holds: the deletions, or the whole cycle.
    hold: crate::config::Hold,
    instance: &'a str,
    /// Present when exporting.
    fence: Option<Fence>,
    progress: &'a ProgressBar,
    stop: Option<&'a std::sync::atomic::AtomicBool>,
    /// Send quarantined objects' operations too (`sync --full`).
    retry_quarantined: bool,
    /// The export lease of each claim (`[sync] lease`).
    lease: Duration,
    /// Look for duplicates by anchor and remove them before creating (after a take-over or
    /// a create without an answer, `sync::duplicates`).
    watch: Watch,
    /// `[sync] cycle_timeout` from the cycle's start: no request starts after it.
    deadline: Deadline,
    /// Read the whole target and repair drift when this long has passed since the last
    /// reconcile (None: never; `export_log`).
    reconcile_every: Option<Duration>,
    /// `sync --full` (or an operator's export): plan every object, and reconcile (when the
    /// cycle reconciles at all) whatever the interval.
    full: bool,
}

/// The kinds an export plans and sends, in order: users, groups, groups again (members
/// created in the first group pass), and, with a reference attribute (`manager`), users
/// again (references to users created in the first pass).
pub const PASSES: [ObjectKind; 4] = [
    ObjectKind::User,
    ObjectKind::Group,
    ObjectKind::Group,
    ObjectKind::User,
];

/// What the export finishes besides the plan: a reconcile's listing and duplicates, and
/// whether the guard holds the deletions.
struct ExportDone<'a> {
    listing: Option<&'a Listing>,
    duplicates: Vec<Duplicate>,
    hold_deletions: bool,
}

/// When a cycle must end (`[sync] cycle_timeout` after it began).
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn after(began: Instant, timeout: Duration) -> Deadline {
        Deadline {
            at: began + timeout,
            timeout,
        }
    }

    /// The one check: past the deadline, the cycle ends here with `left` operations for
    /// the next one (requests in flight have finished and are recorded by then).
    fn check(&self, left: usize) -> Result<()> {
        if Instant::now() < self.at {
            return Ok(());
        }
        Err(Error::CycleTimeout(format!(
            "the cycle ran past [sync] cycle_timeout ({}): {left} operation(s) left for the next cycle; what was exported is recorded",
            humantime::format_duration(self.timeout)
        )))
    }
}

/// What [`Cycle::run_ops`] is sending besides the plan's own operations.
#[derive(Debug, Default)]
struct Repairing {
    /// Anchors created again because the target lacked them.
    recreate: HashSet<String>,
    /// Anchors whose attributes are restored.
    restore: HashSet<String>,
    /// Every op is the deletion of a duplicate (recorded as DuplicateRemoved).
    duplicates: bool,
    /// Every op sets a user gone from the source inactive (recorded as `ExportOp::Disable`).
    disabling: bool,
}

impl Cycle<'_> {
    /// Plan, guard, then print the plan or export it. `saving` (the snapshot of `state`
    /// being stored) is waited for once the plan is made, before anything is exported.
    /// `pending`: the run's start when nothing of the cycle is recorded yet (it may stay
    /// out of the log, `sync::idle`): recorded before anything else is, left when the cycle
    /// has nothing to do.
    async fn cycle(
        &self,
        state: Arc<State>,
        report: &mut SyncReport,
        saving: Option<replay::Saving>,
        pending: &mut Option<SyncRunStarted>,
    ) -> Result<()> {
        let now = chrono::Utc::now().timestamp_micros();
        let reconciling =
            self.fence.is_some() && self.target.is_some() && self.reconcile_due(&state, now);
        let focus = self.focus(&state, report, reconciling).await?;
        report.whole_plan = focus.whole().map(Whole::describe);
        let planned_seq = state.seq;
        let whole = self.plan(&state, None, &focus);
        report.planned_objects = match &focus {
            Focus::Whole(_) => whole.live + whole.owned,
            Focus::Changed(set) => set.len() as u64,
        };
        report.awaiting_deletion = whole.awaiting.len() as u64;
        if let Some(saving) = saving {
            saving.finish().await?;
        }
        for (anchor, why) in &whole.unmappable {
            report.unmappable += 1;
            report.problem(anchor, "unmappable", why.clone());
        }
        for d in &whole.dangling {
            report.unresolved_references += 1;
            report.problem(&d.anchor, "unresolved_reference", d.detail());
        }
        let listing = match self.target {
            Some(t) if reconciling => Some(self.read_target(t, &state).await?),
            _ => None,
        };
        let dups = listing
            .as_ref()
            .map(|l| reconcile::duplicates(&state, l))
            .unwrap_or_default();
        if let Some(l) = &listing {
            report.reconcile = Some(TargetReconciled {
                run_id: report.run_id.clone(),
                listed: l.objects.len() as u64,
                duplicates: dups.len() as u64,
                ..Default::default()
            });
            for d in &dups {
                report.problem(
                    &d.anchor,
                    "duplicate",
                    format!(
                        "target {} {} ({}) carries this anchor but the ledger does not know it: deleted",
                        d.kind.as_str(),
                        d.target_id,
                        d.name
                    ),
                );
            }
        }
        // Duplicates are deletions like the plan's: the guard counts them together.
        let mut deletes = whole.delete_anchors();
        deletes.extend(dups.iter().map(Duplicate::key));
        deletes.sort();
        let verdict = guard(
            &GuardInput {
                deletes: &deletes,
                owned: whole.owned,
                live: whole.live,
                recent: recent_deletions(&state, now),
                threshold: self.threshold,
            },
            |h| {
                state
                    .control
                    .guard
                    .plans
                    .get(h)
                    .is_some_and(|p| p.approved.is_some())
            },
        );
        let dry_run = report.mode == "dry-run";
        let guard_e = guard_event(state.control.guard.current.as_deref(), &verdict, &deletes);
        if pending.is_some() {
            let holding = matches!(verdict, Verdict::Hold { .. });
            let idle = super::idle::export_idle(&super::idle::ExportFacts {
                exporting: self.fence.is_some(),
                plan_empty: whole.is_empty(),
                reconcile: listing.is_some(),
                watch: self.watch != Watch::Off,
                guard_event: guard_e.is_some(),
                holding,
            });
            if idle {
                if self.fence.is_none() {
                    self.print_plan(&state, whole, report).await?;
                }
                return Ok(());
            }
            if let Some(start) = pending.take() {
                self.store
                    .append(Batch::new(vec![NewEvent::new(
                        stream::instance(self.instance),
                        self.instance,
                        Event::SyncRunStarted(start),
                    )]))
                    .await?;
            }
        }
        // A dry run records nothing: its list has no plan to approve.
        if !dry_run {
            if let Some(e) = guard_e {
                self.store
                    .append(Batch::new(vec![NewEvent::new(
                        stream::GUARD,
                        self.instance,
                        e,
                    )]))
                    .await?;
            }
        }
        let holding = match verdict {
            Verdict::Hold { plan_hash, reason } => {
                report.held = deletes.len() as u64;
                report.held_reason = Some(reason);
                report.held_plan = (!dry_run).then_some(plan_hash);
                true
            }
            _ => false,
        };
        if holding && (self.hold == Hold::All || self.fence.is_none()) {
            // Nothing is exported this cycle ([sync] hold = "all"), or nothing would be.
            if dry_run || report.mode == "staging" {
                self.list(&state, whole, report, planned_seq).await?;
            }
            return Ok(());
        }
        match self.fence {
            None => self.list(&state, whole, report, planned_seq).await,
            Some(fence) => {
                let done = ExportDone {
                    listing: listing.as_ref(),
                    duplicates: dups,
                    hold_deletions: holding,
                };
                self.export(state, fence, report, done, &focus).await?;
                // Every operation of the plan was tried (what failed is recorded as such):
                // the next cycle plans what the log names after this plan.
                let stopped = self
                    .stop
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
                if !stopped {
                    report.planned_seq = Some(self.settled_at(planned_seq).await?);
                }
                Ok(())
            }
        }
    }

    /// The plan of the objects `focus` covers, under `[sync] on_delete`, as of the cycle's
    /// clock.
    fn plan(&self, state: &State, only: Option<ObjectKind>, focus: &Focus) -> Plan {
        let removal = Removal {
            on_delete: self.on_delete,
            now_us: self.now_us,
        };
        plan_focused(state, self.mapping, only, &removal, focus)
    }

    /// The plan of a dry run or a staging cycle, printed; a staging cycle records where it
    /// made the plan it listed, which its next one lists the changes of.
    async fn list(
        &self,
        state: &State,
        plan: Plan,
        report: &mut SyncReport,
        planned_seq: u64,
    ) -> Result<()> {
        self.print_plan(state, plan, report).await?;
        if report.mode == "staging" {
            report.listed_seq = Some(self.settled_at(planned_seq).await?);
        }
        Ok(())
    }

    /// Where the next cycle may plan from, once this one tried every operation of the plan
    /// it made at `planned_seq`: the head, when everything appended since is this cycle's
    /// own (its exports settle what they name); else `planned_seq`, so that the next cycle
    /// plans what others appended meanwhile too.
    async fn settled_at(&self, planned_seq: u64) -> Result<u64> {
        let (mut last, mut own) = (planned_seq, true);
        replay::scan(self.store, planned_seq, None, |e| {
            own = e.instance == self.instance && focus::confined(&e.event_type);
            if !own {
                return Ok(ControlFlow::Break(()));
            }
            last = e.seq;
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(if own { last } else { planned_seq })
    }

    /// What this cycle plans (see [`crate::plan::focus`]): every object, or those the log
    /// names since the instance's last whole plan (and a dry run's import, not in the log),
    /// with what reads them and what is pending.
    async fn focus(&self, state: &State, report: &SyncReport, reconciling: bool) -> Result<Focus> {
        let facts = focus::Facts {
            full: self.full,
            reconcile: reconciling,
            // The cycle that takes over (the log's relationship event makes the next
            // cycles' plans whole too, until one is tried).
            take_over: self.watch == Watch::Whole,
            planned_seq: state
                .control
                .instances
                .instances
                .get(self.instance)
                .and_then(|r| {
                    if report.mode == "staging" {
                        r.listed_seq
                    } else {
                        r.planned_seq
                    }
                }),
            seq: state.seq,
            mapping_matches: state
                .objects
                .effective
                .as_ref()
                .is_some_and(|e| e.event.mapping_fingerprint == self.mapping.fingerprint()),
        };
        let after = match focus::start(&facts) {
            Ok(after) => after,
            Err(why) => return Ok(Focus::Whole(why)),
        };
        let mut named = focus::Named::default();
        let mut whole = None;
        replay::scan(self.store, after, None, |e| {
            if e.seq > state.seq {
                return Ok(ControlFlow::Break(()));
            }
            match named.add(e) {
                Ok(()) => Ok(ControlFlow::Continue(())),
                Err(why) => {
                    whole = Some(why);
                    Ok(ControlFlow::Break(()))
                }
            }
        })
        .await?;
        // A dry run's import is not in the log.
        let whole = whole.or_else(|| {
            let mut planned = report.import.planned.iter();
            planned.find_map(|e| named.add_new(e).err())
        });
        if let Some(why) = whole {
            return Ok(Focus::Whole(why));
        }
        Ok(focus::focus(state, self.mapping, named.anchors()))
    }

    /// Whether this cycle reads the whole target (pure but for the clock's `now`).
    fn reconcile_due(&self, state: &State, now_us: i64) -> bool {
        self.reconcile_every.is_some_and(|every| {
            reconcile::due(
                self.full,
                state.control.relationship.last_reconcile(),
                now_us,
                every,
            )
        })
    }

    /// Every user and group of the target.
    async fn read_target(&self, t: &AnyTarget, state: &State) -> Result<Listing> {
        let mut objects = Vec::new();
        for kind in [ObjectKind::User, ObjectKind::Group] {
            self.progress.set_message(format!(
                "reading every target {} to reconcile",
                kind.as_str()
            ));
            objects.extend(t.list(kind).await?);
        }
        Ok(Listing {
            objects,
            seq: state.seq,
        })
    }

    /// --dry-run and --staging: the plan as lines (matching is asked of the target when one
    /// is configured, read-only).
    async fn print_plan(&self, state: &State, p: Plan, report: &mut SyncReport) -> Result<()> {
        let mut lines = Vec::with_capacity(p.new.len() + p.updates.len() + p.deletes.len());
        match self.target {
            Some(t) if !p.new.is_empty() => {
                let mut remote = Vec::new();
                for kind in [ObjectKind::User, ObjectKind::Group] {
                    let new: Vec<(String, Mapped)> = p
                        .new
                        .iter()
                        .filter(|(_, m)| m.kind() == kind)
                        .cloned()
                        .collect();
                    remote.extend(self.lookup(t, kind, &new, state).await?);
                }
                let decisions = decide_new(&remote, &p.new, state);
                lines.extend(decisions.into_iter().map(|d| Self::decision_line(state, d)));
            }
            // Nothing to match against: every new object is a creation, its line made
            // straight from the plan.
            _ => lines.extend(
                p.new
                    .into_iter()
                    .map(|(anchor, object)| Self::line(state, Op::Create { anchor, object })),
            ),
        }
        lines.extend(p.updates.into_iter().map(|op| Self::line(state, op)));
        lines.extend(p.disables.into_iter().map(|op| {
            let mut line = Self::line(state, op);
            line.op = "disable";
            line.detail = Some("gone from the source: set inactive, deleted later".into());
            line
        }));
        lines.extend(p.deletes.into_iter().map(|op| Self::line(state, op)));
        report.plan = lines;
        Ok(())
    }

    /// The plan line of a new object's decision.
    fn decision_line(state: &State, d: NewDecision) -> PlannedOp {
        match d {
            NewDecision::Take {
                anchor,
                kind,
                remote,
                soft,
            } => PlannedOp {
                op: "match",
                kind,
                anchor,
                name: remote.name.clone(),
                target_id: Some(remote.id),
                detail: Some(if soft { "soft" } else { "hard" }.into()),
                changes: vec![],
            },
            NewDecision::Create(op) => Self::line(state, op),
            NewDecision::Conflict {
                anchor,
                kind,
                name,
                why,
            } => PlannedOp {
                op: "conflict",
                kind,
                anchor,
                name,
                target_id: None,
                detail: Some(why),
                changes: vec![],
            },
        }
    }

    /// The plan line of `op`, taking its strings rather than copying them (a staging plan
    /// of a whole directory is a line per object).
    fn line(state: &State, op: Op) -> PlannedOp {
        let (op_name, kind) = (op_name(&op), op.kind());
        let (anchor, name, target_id, changes) = match op {
            Op::Create { anchor, object } => (anchor, object.name().to_string(), None, vec![]),
            Op::Update {
                anchor,
                target_id,
                from,
                to,
                ..
            } => {
                let changes = crate::target::field_changes(from.as_ref(), Some(&to));
                (anchor, to.name().to_string(), Some(target_id), changes)
            }
            Op::Delete {
                anchor, target_id, ..
            } => {
                let name = crate::target::ledger_name(&state.ledger, &anchor);
                (anchor, name, Some(target_id), vec![])
            }
        };
        PlannedOp {
            op: op_name,
            kind,
            anchor,
            name,
            target_id,
            detail: None,
            changes,
        }
    }

    /// Target objects that could match `new`, which dirsync then matches itself
    /// (case-insensitively, `plan::matching`): the whole listing of the kind, or, when
    /// [`how_to_look_up`] allows and the target's `eq` proves to ignore case, the
    /// candidates of each.
    async fn lookup(
        &self,
        t: &AnyTarget,
        kind: ObjectKind,
        new: &[(String, Mapped)],
        state: &State,
    ) -> Result<Vec<RemoteObject>> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let by_filter = match how_to_look_up(new, state, kind) {
            LookUp::List => false,
            LookUp::Filter { id, known } => match t.eq_ignores_case(id, known).await {
                Ok(yes) => yes,
                Err(e) if e.fatal => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(
                        "target: could not tell whether its filters ignore case ({e}); listing the target's {}s",
                        kind.as_str()
                    );
                    false
                }
            },
        };
        if !by_filter {
            self.progress
                .set_message(format!("listing target {}s", kind.as_str()));
            return Ok(t.list(kind).await?);
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (anchor, m) in new {
            match t.candidates(anchor, m).await {
                Ok(found) => {
                    for r in found {
                        if seen.insert(r.id.clone()) {
                            out.push(r);
                        }
                    }
                }
                Err(e) if e.fatal => return Err(e.into()),
                // Issue 17: a server may refuse the filter of one object (400 on
                // `emails.value eq ...`, say). That must not stop the whole export: fall
                // back to one listing, matched by dirsync itself (case-insensitively,
                // `plan::matching`), for every new object of this kind.
                Err(e) => {
                    tracing::warn!(
                        "target: looking up candidates for {anchor} failed ({e}); listing the target's {}s instead",
                        kind.as_str()
                    );
                    self.progress
                        .set_message(format!("listing target {}s", kind.as_str()));
                    return Ok(t.list(kind).await?);
                }
            }
        }
        Ok(out)
    }

    /// Export: users, then groups (whose members are users' target ids), then groups again
    /// when nested groups were created, then deletions.
    async fn export(
        &self,
        mut state: Arc<State>,
        fence: Fence,
        report: &mut SyncReport,
        done: ExportDone<'_>,
        focus: &Focus,
    ) -> Result<()> {
        let ExportDone {
            listing,
            duplicates,
            hold_deletions,
        } = done;
        let Some(t) = self.target else {
            return Err(Error::Config("no [target] section".into()));
        };
        let mut skipped = HashSet::new();
        // The last pass only with a reference attribute (see PASSES).
        let references = self.mapping.references().next().is_some();
        for (pass, kind) in PASSES.into_iter().enumerate() {
            if pass == 3 && !references {
                break;
            }
            drop(state);
            state = replay::current(self.store).await?;
            let mut p = self.plan(&state, Some(kind), focus);
            p.new
                .retain(|(a, _)| !self.skip_quarantined(&state, a, &mut skipped, report));
            if pass >= 2 {
                // An object whose creation failed in its first pass is not sent again in
                // this cycle: a create that timed out may still reach the target, and the
                // next cycle looks for it before creating.
                p.new.retain(|(a, _)| !failed_in(report, a));
            }
            if pass == 3 {
                p.updates.retain(|op| !failed_in(report, op.anchor()));
            }
            if pass >= 2 && p.new.is_empty() && p.updates.is_empty() {
                continue;
            }
            let mut creates = Vec::new();
            self.deadline
                .check(p.new.len() + p.updates.len() + p.deletes.len())?;
            // After a take-over or a write that may land unrecorded: duplicates removed, and
            // the listing without them when the target was listed whole (a reconcile's whole
            // listing serves instead when there is one: its own duplicate rules apply).
            let listed = if self.watch != Watch::Off && pass < 2 && listing.is_none() {
                self.remove_duplicates(t, kind, &state, &p.new, fence, report)
                    .await?
            } else {
                None
            };
            if !p.new.is_empty() {
                let remote = match (listing, listed) {
                    // The target was just read whole: match against that.
                    (Some(l), _) => l
                        .objects
                        .iter()
                        .filter(|r| r.kind == kind)
                        .cloned()
                        .collect(),
                    (None, Some(l)) => l,
                    (None, None) => self.lookup(t, kind, &p.new, &state).await?,
                };
                let mut taken = Vec::new();
                for d in decide_new(&remote, &p.new, &state) {
                    match d {
                        NewDecision::Take {
                            anchor,
                            kind,
                            remote,
                            soft,
                        } => {
                            report.matched += 1;
                            // A soft match records no state: the next update writes every
                            // attribute and the anchor, making it a hard match from then on.
                            // Of the target's attributes, those the mapping sets.
                            let state = if soft {
                                None
                            } else {
                                let mapped = p
                                    .new
                                    .binary_search_by(|(a, _)| a.as_str().cmp(&anchor))
                                    .ok()
                                    .map(|i| &p.new[i].1);
                                remote
                                    .state
                                    .as_ref()
                                    .map(|s| {
                                        s.with_extras_of(&mapped.into_iter().collect::<Vec<_>>())
                                    })
                                    .as_ref()
                                    .and_then(to_value)
                            };
                            taken.push(NewEvent::new(
                                stream::TARGET,
                                self.instance,
                                Event::ExportApplied(ExportApplied {
                                    epoch: fence.epoch,
                                    anchor,
                                    kind,
                                    op: ExportOp::Match,
                                    target_id: remote.id,
                                    state,
                                    etag: remote.etag,
                                }),
                            ));
                        }
                        NewDecision::Create(op) => creates.push(op),
                        NewDecision::Conflict { anchor, why, .. } => {
                            report.conflicts += 1;
                            report.problem(&anchor, "conflict", why.clone());
                            let error = format!("match conflict: {why}");
                            let same = state
                                .ledger
                                .failures
                                .get(&anchor)
                                .is_some_and(|f| f.error == error);
                            if !same {
                                taken.push(NewEvent::new(
                                    stream::TARGET,
                                    self.instance,
                                    Event::ExportFailed(ExportFailed {
                                        epoch: fence.epoch,
                                        anchor,
                                        op: ExportOp::Match,
                                        status: None,
                                        error,
                                    }),
                                ));
                            }
                        }
                    }
                }
                if !taken.is_empty() {
                    // Matches write nothing to the target but are exports all the same.
                    self.append_fenced(taken, fence).await?;
                    drop(state);
                    state = replay::current(self.store).await?;
                }
            }
            // Matched objects now have a ledger state: their differences are updates.
            let mut updates = self.plan(&state, Some(kind), focus).updates;
            let mut repairing = Repairing::default();
            if let Some(l) = listing.filter(|_| pass < 2) {
                let (r, s) = self
                    .repair(state, l, kind, fence, report, &mut skipped)
                    .await?;
                state = s;
                // What the target holds decides, not what the ledger believed.
                let repaired = r.anchors();
                updates.retain(|op| !repaired.contains(op.anchor()));
                repairing.recreate = r.recreate.iter().map(|o| o.anchor().to_string()).collect();
                // An object taken back is repaired by the record; its update is an update.
                let adopted: HashSet<&str> = r.adopt.iter().map(|(a, _)| a.as_str()).collect();
                repairing.restore = r
                    .restore
                    .iter()
                    .map(Op::anchor)
                    .filter(|a| !adopted.contains(a))
                    .map(str::to_string)
                    .collect();
                creates.extend(r.recreate);
                creates.extend(r.restore);
            }
            updates.retain(|op| !self.skip_quarantined(&state, op.anchor(), &mut skipped, report));
            creates.extend(updates);
            self.run_ops(creates, fence, report, &repairing).await?;
        }
        // Users gone from the source are set inactive (`on_delete = "disable"`): not
        // deletions, so the guard does not hold them.
        drop(state);
        state = replay::current(self.store).await?;
        let mut disables = self.plan(&state, None, focus).disables;
        disables.retain(|op| !self.skip_quarantined(&state, op.anchor(), &mut skipped, report));
        let disabling = Repairing {
            disabling: true,
            ..Default::default()
        };
        self.run_ops(disables, fence, report, &disabling).await?;
        if hold_deletions {
            // The guard holds this cycle's deletions (the duplicates' too); the creates and
            // updates are out. A reconcile with duplicates left is not done: the next
            // cycle reads again.
            return Ok(());
        }
        drop(state);
        state = replay::current(self.store).await?;
        let mut deletes = self.plan(&state, None, focus).deletes;
        deletes.retain(|op| !self.skip_quarantined(&state, op.anchor(), &mut skipped, report));
        self.run_ops(deletes, fence, report, &Repairing::default())
            .await?;
        let Some(found) = report.reconcile.clone() else {
            return Ok(());
        };
        let dups: Vec<Op> = duplicates.iter().map(Duplicate::op).collect();
        let removing = Repairing {
            duplicates: true,
            ..Default::default()
        };
        self.run_ops(dups, fence, report, &removing).await?;
        if self
            .stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            // Stopped with repairs left: not a reconcile done, the next cycle reads again.
            return Ok(());
        }
        let found = report.reconcile.clone().unwrap_or(found);
        tracing::info!(
            "target reconciled: {} listed; {} missing, {} changed, {} duplicates; {} recreated, {} restored, {} removed, {} failed",
            found.listed, found.missing, found.changed, found.duplicates, found.recreated,
            found.restored, found.removed, found.failed
        );
        self.store
            .append(Batch::new(vec![NewEvent::new(
                stream::TARGET,
                self.instance,
                Event::TargetReconciled(found),
            )]))
            .await?;
        Ok(())
    }

    /// The repairs of `kind` against the target's listing (`reconcile::repairs`): objects
    /// taken back (recorded as matches, like matching's) now, the rest returned to send.
    /// Quarantined objects are left out.
    async fn repair(
        &self,
        state: Arc<State>,
        listing: &Listing,
        kind: ObjectKind,
        fence: Fence,
        report: &mut SyncReport,
        skipped: &mut HashSet<String>,
    ) -> Result<(reconcile::Repairs, Arc<State>)> {
        let mut r = reconcile::repairs(&state, self.mapping, kind, listing);
        if let Some(found) = report.reconcile.as_mut() {
            found.missing += r.missing;
            found.changed += r.changed;
        }
        let mut keep = |op: &Op| !self.skip_quarantined(&state, op.anchor(), skipped, report);
        r.recreate.retain(&mut keep);
        r.restore.retain(&mut keep);
        if r.adopt.is_empty() {
            return Ok((r, state));
        }
        let taken: Vec<NewEvent> = r
            .adopt
            .iter()
            .map(|(anchor, remote)| {
                NewEvent::new(
                    stream::TARGET,
                    self.instance,
                    Event::ExportApplied(ExportApplied {
                        epoch: fence.epoch,
                        anchor: anchor.clone(),
                        kind,
                        op: ExportOp::Match,
                        target_id: remote.id.clone(),
                        state: remote.state.as_ref().and_then(to_value),
                        etag: remote.etag.clone(),
                    }),
                )
            })
            .collect();
        if let Some(found) = report.reconcile.as_mut() {
            // Taken back: repaired by the record alone.
            found.recreated += r.adopt.len() as u64;
        }
        self.append_fenced(taken, fence).await?;
        drop(state);
        let state = replay::current(self.store).await?;
        Ok((r, state))
    }

    /// Whether to leave `anchor` out of this cycle's export because it is quarantined
    /// (counted and reported once per cycle, in `skipped`).
    fn skip_quarantined(
        &self,
        state: &State,
        anchor: &str,
        skipped: &mut HashSet<String>,
        report: &mut SyncReport,
    ) -> bool {
        if self.retry_quarantined {
            return false;
        }
        let Some(f) = quarantined(state, anchor) else {
            return false;
        };
        if skipped.insert(anchor.to_string()) {
            report.quarantined += 1;
            report.problem(
                anchor,
                "quarantined",
                format!(
                    "{} failed exports in a row, the last: {}; tried again when its source changes or by `sync --full`",
                    f.count, f.error
                ),
            );
        }
        true
    }

    /// Claim a chunk of `ops` under `fence`: record `ExportBatchStarted` with its lease and
    /// the anchors it creates, and return the batch id and the deadline its requests must
    /// end by (the lease's end less the margin).
    async fn claim(&self, fence: Fence, ops: &[Op]) -> Result<(String, Instant)> {
        let deadline = Instant::now() + self.lease - lease_margin(self.lease);
        let lease_until = chrono::Utc::now()
            + chrono::Duration::from_std(self.lease).unwrap_or_else(|_| chrono::Duration::zero());
        let batch_id = uuid::Uuid::new_v4().to_string();
        self.append_fenced(
            vec![NewEvent::new(
                stream::TARGET,
                self.instance,
                Event::ExportBatchStarted(ExportBatchStarted {
                    batch_id: batch_id.clone(),
                    epoch: fence.epoch,
                    ops: ops.len() as u64,
                    lease_until,
                    creates: Some(
                        ops.iter()
                            .filter(|op| matches!(op, Op::Create { .. }))
                            .map(|op| op.anchor().to_string())
                            .collect(),
                    ),
                }),
            )],
            fence,
        )
        .await?;
        Ok((batch_id, deadline))
    }

    async fn append_fenced(&self, events: Vec<NewEvent>, fence: Fence) -> Result<u64> {
        append_fenced(self.store, self.instance, events, fence).await
    }

    /// After a take-over or an unrecorded write (`sync::duplicates`): read the target's
    /// objects of `kind` that could be duplicates (the whole target, or the objects
    /// carrying the anchors in doubt), delete the duplicates by anchor of objects we own
    /// (under a claim, each recorded as `TargetDuplicateRemoved`), and return a whole
    /// listing without them, for matching. `None` when nothing was listed whole, or the
    /// reading failed (not for lack of rights): the cycle goes on without it and the next
    /// one looks again.
    async fn remove_duplicates(
        &self,
        t: &AnyTarget,
        kind: ObjectKind,
        state: &State,
        new: &[(String, Mapped)],
        fence: Fence,
        report: &mut SyncReport,
    ) -> Result<Option<Vec<RemoteObject>>> {
        let read = match &self.watch {
            Watch::Off => return Ok(None),
            Watch::Anchors(anchors) => {
                self.progress.set_message(format!(
                    "looking up target {}s whose creation may still be in flight",
                    kind.as_str()
                ));
                carrying(t, kind, state, anchors).await
            }
            Watch::Whole => {
                self.progress.set_message(format!(
                    "listing target {}s for duplicates by anchor",
                    kind.as_str()
                ));
                t.list(kind).await.map(|r| (r, true))
            }
        };
        let (mut remote, whole) = match read {
            Ok(r) => r,
            Err(e) if e.fatal => return Err(e.into()),
            Err(e) => {
                tracing::warn!(
                    "target: reading its {}s to look for duplicates failed ({e}); looked for next cycle",
                    kind.as_str()
                );
                return Ok(None);
            }
        };
        let found = super::duplicates::duplicates(&remote, state, new);
        let ops: Vec<(Op, &super::duplicates::Duplicate)> = found
            .iter()
            .flat_map(|d| {
                d.remove.iter().map(move |id| {
                    (
                        Op::Delete {
                            anchor: d.anchor.clone(),
                            kind: d.kind,
                            target_id: id.clone(),
                        },
                        d,
                    )
                })
            })
            .collect();
        if ops.is_empty() {
            return Ok(whole.then_some(remote));
        }
        for chunk in ops.chunks(CHUNK) {
            let deletes: Vec<Op> = chunk.iter().map(|(op, _)| op.clone()).collect();
            let (batch_id, deadline) = self.claim(fence, &deletes).await?;
            let outcomes = t.apply(&deletes, deadline).await;
            let mut events = Vec::new();
            let (mut applied, mut failed) = (0, 0);
            for ((op, d), outcome) in chunk.iter().zip(outcomes) {
                let Op::Delete { target_id, .. } = op else {
                    continue;
                };
                match outcome {
                    Outcome::Applied { .. } => {
                        applied += 1;
                        report.duplicates_removed += 1;
                        tracing::warn!(
                            "target: {} {target_id} duplicated {} (both carry the anchor {}; a create that reached the target late): removed",
                            d.kind.as_str(),
                            d.kept,
                            d.anchor
                        );
                        remote.retain(|r| &r.id != target_id);
                        events.push(NewEvent::new(
                            stream::TARGET,
                            self.instance,
                            Event::TargetDuplicateRemoved(TargetDuplicateRemoved {
                                epoch: fence.epoch,
                                anchor: d.anchor.clone(),
                                kind: d.kind,
                                target_id: target_id.clone(),
                                kept: d.kept.clone(),
                            }),
                        ));
                    }
                    Outcome::Failed(e) => {
                        failed += 1;
                        report.failures += 1;
                        report.problem(
                            &d.anchor,
                            "failure",
                            format!(
                                "removing the duplicate {} {target_id} (of {}): {e}",
                                d.kind.as_str(),
                                d.kept
                            ),
                        );
                    }
                    // Not sent before the lease's end: looked for again next cycle.
                    Outcome::NotAttempted => {}
                }
            }
            events.push(NewEvent::new(
                stream::TARGET,
                self.instance,
                Event::ExportBatchCompleted(ExportBatchCompleted {
                    batch_id,
                    applied,
                    failed,
                }),
            ));
            self.store.append(Batch::new(events)).await?;
        }
        Ok(whole.then_some(remote))
    }

    /// Send `ops` chunk by chunk, each under a claim, recording every outcome.
    async fn run_ops(
        &self,
        ops: Vec<Op>,
        fence: Fence,
        report: &mut SyncReport,
        repairing: &Repairing,
    ) -> Result<()> {
        let Some(t) = self.target else {
            return Ok(());
        };
        if ops.is_empty() {
            return Ok(());
        }
        let bar = crate::output::progress(ops.len() as u64, "export");
        let mut queue: VecDeque<Op> = ops.into();
        // Anchors whose update found the object gone: their creation is a re-creation.
        let mut recreating: HashSet<String> = HashSet::new();
        let mut stalls = 0;
        while !queue.is_empty() {
            if self
                .stop
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            {
                tracing::info!(
                    "stopping after the chunk in flight: {} operations left for the next cycle",
                    queue.len()
                );
                break;
            }
            if let Err(e) = self.deadline.check(queue.len()) {
                bar.finish_and_clear();
                return Err(e);
            }
            let n = queue.len().min(CHUNK);
            let chunk: Vec<Op> = queue.drain(..n).collect();
            // The lease bounds every request of the chunk (fencing); the cycle's deadline
            // only stops new chunks (checked above), so answers in flight are recorded.
            let (batch_id, deadline) = self.claim(fence, &chunk).await?;
            let outcomes = t.apply(&chunk, deadline).await;
            // A fatal error (a 401, the target down) stops the cycle: requests that got no
            // answer are then not the objects' failures and wait for the next cycle.
            let stopping = outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Failed(e) if e.fatal));
            let mut events = Vec::with_capacity(n);
            let mut fatal = None;
            let (mut sent, mut failed) = (0, 0);
            for (i, op) in chunk.into_iter().enumerate() {
                let outcome = outcomes.get(i).cloned().unwrap_or(Outcome::NotAttempted);
                match outcome {
                    Outcome::Applied { target_id, .. } if repairing.duplicates => {
                        sent += 1;
                        bar.inc(1);
                        if let Some(found) = report.reconcile.as_mut() {
                            found.removed += 1;
                        }
                        events.push(NewEvent::new(
                            stream::TARGET,
                            self.instance,
                            Event::DuplicateRemoved(DuplicateRemoved {
                                epoch: fence.epoch,
                                anchor: op.anchor().to_string(),
                                kind: op.kind(),
                                target_id,
                            }),
                        ));
                    }
                    Outcome::Applied { target_id, etag } => {
                        sent += 1;
                        bar.inc(1);
                        let found = report.reconcile.as_mut();
                        match &op {
                            Op::Create { anchor, .. } if repairing.recreate.contains(anchor) => {
                                report.recreated += 1;
                                if let Some(f) = found {
                                    f.recreated += 1;
                                }
                            }
                            Op::Update { anchor, .. } if repairing.restore.contains(anchor) => {
                                if let Some(f) = found {
                                    f.restored += 1;
                                }
                            }
                            Op::Create { anchor, .. } if recreating.remove(anchor) => {
                                report.recreated += 1
                            }
                            Op::Create { .. } => report.created += 1,
                            Op::Update { .. } if repairing.disabling => report.disabled += 1,
                            Op::Update { .. } => report.updated += 1,
                            Op::Delete { .. } => report.deleted += 1,
                        }
                        let state = match &op {
                            Op::Create { object, .. } => to_value(object),
                            Op::Update { to, .. } => to_value(to),
                            Op::Delete { .. } => None,
                        };
                        events.push(NewEvent::new(
                            stream::TARGET,
                            self.instance,
                            Event::ExportApplied(ExportApplied {
                                epoch: fence.epoch,
                                anchor: op.anchor().to_string(),
                                kind: op.kind(),
                                op: if repairing.disabling {
                                    ExportOp::Disable
                                } else {
                                    export_op(&op)
                                },
                                target_id,
                                state,
                                etag,
                            }),
                        ));
                    }
                    Outcome::Failed(e) if e.fatal => {
                        fatal.get_or_insert(e);
                    }
                    // A user to disable that is gone from the target already: what the disable
                    // waited for is done (as a deletion answered 404 counts as done).
                    Outcome::Failed(e) if e.gone && repairing.disabling => {
                        sent += 1;
                        bar.inc(1);
                        tracing::info!(
                            "target: {} is gone from the target ({e}); recorded as deleted",
                            op.anchor()
                        );
                        events.push(NewEvent::new(
                            stream::TARGET,
                            self.instance,
                            Event::ExportApplied(ExportApplied {
                                epoch: fence.epoch,
                                anchor: op.anchor().to_string(),
                                kind: op.kind(),
                                op: ExportOp::Delete,
                                target_id: target_id_of(&op).to_string(),
                                state: None,
                                etag: None,
                            }),
                        ));
                    }
                    // Issue 18.2: deleted in the target out of band. Recorded as the
                    // failed update it is, then created again (next chunk) with the whole
                    // state; its creation records the new target id.
                    Outcome::Failed(e) if e.gone && matches!(op, Op::Update { .. }) => {
                        if let Op::Update { anchor, to, .. } = op {
                            tracing::warn!(
                                "target: {anchor} is gone from the target ({e}); creating it again"
                            );
                            sent += 1;
                            failed += 1;
                            events.push(NewEvent::new(
                                stream::TARGET,
                                self.instance,
                                Event::ExportFailed(ExportFailed {
                                    epoch: fence.epoch,
                                    anchor: anchor.clone(),
                                    op: ExportOp::Update,
                                    status: e.status,
                                    error: format!(
                                        "{}; gone from the target: created again",
                                        e.message
                                    ),
                                }),
                            ));
                            recreating.insert(anchor.clone());
                            queue.push_front(Op::Create { anchor, object: to });
                        }
                    }
                    Outcome::Failed(e) if stopping && e.status.is_none() => {}
                    // A duplicate not removed: reported, and the next cycle reconciles again
                    // (the ledger's own object for the anchor is not at fault).
                    Outcome::Failed(e) if repairing.duplicates => {
                        sent += 1;
                        failed += 1;
                        bar.inc(1);
                        report.failures += 1;
                        if let Some(f) = report.reconcile.as_mut() {
                            f.failed += 1;
                        }
                        report.problem(
                            op.anchor(),
                            "failure",
                            format!(
                                "delete duplicate {} {}: {e}",
                                op.kind().as_str(),
                                target_id_of(&op)
                            ),
                        );
                    }
                    Outcome::Failed(e) => {
                        sent += 1;
                        failed += 1;
                        bar.inc(1);
                        report.failures += 1;
                        if repairing.recreate.contains(op.anchor())
                            || repairing.restore.contains(op.anchor())
                        {
                            if let Some(f) = report.reconcile.as_mut() {
                                f.failed += 1;
                            }
                        }
                        report.problem(
                            op.anchor(),
                            "failure",
                            format!("{} {}: {e}", op_name(&op), op.kind().as_str()),
                        );
                        events.push(NewEvent::new(
                            stream::TARGET,
                            self.instance,
                            Event::ExportFailed(ExportFailed {
                                epoch: fence.epoch,
                                anchor: op.anchor().to_string(),
                                op: if repairing.disabling {
                                    ExportOp::Disable
                                } else {
                                    export_op(&op)
                                },
                                status: e.status,
                                error: e.message,
                            }),
                        ));
                    }
                    Outcome::NotAttempted => queue.push_back(op),
                }
            }
            // Facts about the target: recorded even if the relationship moved meanwhile.
            // The completion ends the lease, so a take-over need not wait for it.
            events.push(NewEvent::new(
                stream::TARGET,
                self.instance,
                Event::ExportBatchCompleted(ExportBatchCompleted {
                    batch_id,
                    applied: sent - failed,
                    failed,
                }),
            ));
            self.store.append(Batch::new(events)).await?;
            if let Some(e) = fatal {
                bar.finish_and_clear();
                return Err(Error::Target(format!(
                    "{e}: the cycle stopped; what was exported before is recorded"
                )));
            }
            stalls = if sent == 0 { stalls + 1 } else { 0 };
            if stalls >= 3 {
                bar.finish_and_clear();
                return Err(Error::Target(
                    "no request could be sent within three export leases".into(),
                ));
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::{At, LedgerEntry, Origin};
    use crate::target::{MappedGroup, MappedUser};

    fn user(name: &str) -> Mapped {
        Mapped::User(MappedUser {
            user_name: name.into(),
            active: true,
            ..Default::default()
        })
    }

    fn own(state: &mut State, anchor: &str, id: &str, m: Option<Mapped>) {
        state.ledger.entries.insert(
            anchor.into(),
            Box::new(LedgerEntry {
                kind: m.as_ref().map_or(ObjectKind::User, Mapped::kind),
                target_id: id.into(),
                origin: Origin::Created,
                state: m,
                owned_since: At::default(),
                last_export: At::default(),
                epoch: 1,
                etag: None,
                deleted: None,
                disabled: None,
            }),
        );
    }

    #[test]
    fn a_take_over_waits_the_lease_and_the_longest_request_deadline() {
        let s = 1_000_000i64;
        let lease = |from_us: i64, until_us: i64| Lease {
            batch_id: "b".into(),
            instance: "old".into(),
            epoch: 1,
            until_us,
            from_us,
            unanswered: Vec::new(),
        };
        // A 30 s lease claimed at 100 s: its requests end by 130 s, or (a sender that did
        // not cut its timeouts) 30 s later: the new holder waits until 160 s.
        let l = lease(100 * s, 130 * s);
        assert_eq!(takeover_wait(&l, 100 * s), Duration::from_secs(60));
        assert_eq!(takeover_wait(&l, 150 * s), Duration::from_secs(10));
        assert_eq!(takeover_wait(&l, 161 * s), Duration::ZERO);
        // A 3 s lease (tests): 3 s more, the longest deadline a request of it could have.
        assert_eq!(
            takeover_wait(&lease(100 * s, 103 * s), 101 * s),
            Duration::from_secs(5)
        );
        // A 10 minute lease: the requests' deadline is still at most REQUEST_TIMEOUT.
        assert_eq!(
            takeover_wait(&lease(100 * s, 700 * s), 700 * s),
            REQUEST_TIMEOUT
        );
        // Recorded before claims kept their start: the default lease is assumed.
        assert_eq!(takeover_wait(&lease(0, 130 * s), 130 * s), REQUEST_TIMEOUT);
        // A lease ending far in the future (the old computer's clock ahead): bounded.
        assert_eq!(
            takeover_wait(&lease(100 * s, 130 * s), -10_000 * s),
            Duration::from_secs(30) + REQUEST_TIMEOUT + LEASE_MARGIN
        );
        assert_eq!(lease_margin(LEASE), LEASE_MARGIN);
        assert_eq!(
            lease_margin(Duration::from_secs(3)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn quarantine_after_five_failures_until_the_source_changes() {
        let at = |seq| At { seq, at_us: 0 };
        let mut state = State::default();
        state.objects.objects.insert(
            "a".into(),
            Box::new(crate::project::ObjectRecord {
                kind: ObjectKind::User,
                dn: "uid=a".into(),
                attrs: Default::default(),
                members: Default::default(),
                first_seen: at(1),
                last_changed: at(5),
                deletion: None,
            }),
        );
        let fail = |op, count, seq| ExportFailure {
            op,
            error: "refused".into(),
            status: Some(400),
            at: at(seq),
            count,
        };
        let with = |f: ExportFailure| {
            let mut s = state.clone();
            s.ledger.failures.insert("a".into(), f);
            s
        };
        let s = with(fail(ExportOp::Create, QUARANTINE_AFTER, 10));
        assert_eq!(
            quarantined(&s, "a").map(|f| f.count),
            Some(QUARANTINE_AFTER)
        );
        assert!(quarantined(&s, "b").is_none());
        assert!(
            quarantined(&with(fail(ExportOp::Update, QUARANTINE_AFTER - 1, 10)), "a").is_none()
        );
        assert!(quarantined(&with(fail(ExportOp::Match, 9, 10)), "a").is_none());
        // The source changed (or was deleted) after the last failure: tried again.
        let mut s = with(fail(ExportOp::Update, 7, 4));
        assert!(quarantined(&s, "a").is_none());
        s.ledger.failures.get_mut("a").unwrap().at = at(6);
        assert!(quarantined(&s, "a").is_some());
        s.objects.objects.get_mut("a").unwrap().deletion =
            Some(Box::new(crate::project::Deletion {
                evidence: crate::log::event::DeletionEvidence::SyncDelete { phase: "x".into() },
                at: at(8),
                instance: "i".into(),
            }));
        assert!(quarantined(&s, "a").is_none());
    }

    #[test]
    fn filters_only_for_few_new_objects_after_a_case_probe() {
        let new = vec![("n1".to_string(), user("new@x"))];
        let mut state = State::default();
        // Nothing owned to probe with: list.
        assert_eq!(how_to_look_up(&new, &state, ObjectKind::User), LookUp::List);
        // Owned, but no letter to swap, or no recorded state, or another kind: list.
        own(&mut state, "a1", "id1", Some(user("1234")));
        own(&mut state, "a2", "id2", None);
        let g = Mapped::Group(MappedGroup {
            display_name: "Staff".into(),
            members: Default::default(),
        });
        own(&mut state, "a3", "id3", Some(g.clone()));
        assert_eq!(how_to_look_up(&new, &state, ObjectKind::User), LookUp::List);
        assert_eq!(
            how_to_look_up(&new, &state, ObjectKind::Group),
            LookUp::Filter {
                id: "id3",
                known: &g
            }
        );
        let bob = user("bob@x");
        own(&mut state, "a4", "id4", Some(bob.clone()));
        assert_eq!(
            how_to_look_up(&new, &state, ObjectKind::User),
            LookUp::Filter {
                id: "id4",
                known: &bob
            }
        );
        // More than LIST_ABOVE new: list.
        let many: Vec<(String, Mapped)> = (0..=LIST_ABOVE)
            .map(|i| (format!("n{i}"), user(&format!("u{i}@x"))))
            .collect();
        assert_eq!(
            how_to_look_up(&many, &state, ObjectKind::User),
            LookUp::List
        );
        // A new object whose creation was refused as a duplicate: list.
        let failure = |op, status| ExportFailure {
            op,
            error: "uniqueness".into(),
            status,
            at: At::default(),
            count: 1,
        };
        state
            .ledger
            .failures
            .insert("n1".into(), failure(ExportOp::Update, Some(409)));
        assert!(matches!(
            how_to_look_up(&new, &state, ObjectKind::User),
            LookUp::Filter { .. }
        ));
        state
            .ledger
            .failures
            .insert("n1".into(), failure(ExportOp::Create, Some(409)));
        assert_eq!(how_to_look_up(&new, &state, ObjectKind::User), LookUp::List);
    }
}

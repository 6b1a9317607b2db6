//! The sync cycle: import -> plan -> guard -> export, and fencing.
//!
//! # Fencing: one writer at a time
//! The sync relationship is a stream of `SyncRelationshipEstablished` events: its holder and
//! epoch. An instance exports only while it holds the current epoch. Before each chunk of
//! at most [`CHUNK`] operations it appends an `ExportBatchStarted` claim that *expects the
//! relationship stream's version it verified*: the check and the record are one atomic
//! append, and a take-over by another instance in between makes the claim fail (exit 4).
//!
//! The claim carries a lease ([`LEASE`]). No request of the chunk, first attempt or retry,
//! is sent after the lease ends (the targets take the deadline). So the window between the
//! check and an HTTP call is bounded by the lease: an instance that lost the relationship
//! a moment after its claim may still send requests of that one chunk for at most
//! [`LEASE`]. `--take-over` closes that window from the other side: after recording the new
//! epoch it waits until the last lease taken by another instance has ended, so the old and
//! new holder never send at the same time (assuming their clocks agree to within the
//! margin kept on the deadline, [`LEASE_MARGIN`]).
//!
//! # Exactly once
//! Every applied operation is recorded (`ExportApplied`, with the target's id) right after
//! its chunk. A crash between a request and its record leaves an object in the target the
//! ledger does not know; the next cycle's matching finds it by its anchor (hard match) and
//! takes it, so nothing is created twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;

use super::plan::{guard, plan, recent_deletions, GuardInput, Plan, Verdict};
use super::run::{import_run, probe_source, refuse_retired, ImportOptions, ImportReport};
use super::scope::Scope;
use crate::config::{Config, SourceKind};
use crate::error::{Error, Exit, Result};
use crate::log::event::{
    stream, DeletionsHeld, Event, ExportApplied, ExportBatchCompleted, ExportBatchStarted,
    ExportFailed, ExportOp, ObjectKind, SyncRelationshipEstablished, SyncRunCompleted,
    SyncRunFailed, SyncRunStarted,
};
use crate::log::store::{Batch, Expected, StoreLock};
use crate::log::{AnyStore, NewEvent, Store};
use crate::project::replay::{self, REFRESH_THRESHOLD};
use crate::project::{Meta, State};
use crate::target::matching::{Index, Match};
use crate::target::{AnyTarget, Mapped, Op, Outcome, RemoteObject, Target};

/// Operations per claimed chunk.
pub const CHUNK: usize = 100;
/// How long a claim lets an instance send the requests of its chunk.
pub const LEASE: Duration = Duration::from_secs(30);
/// Kept off the lease for the local deadline: clock differences between computers.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
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
}

/// Something the operator must look at: a conflict, a failed export, an unmappable object.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub anchor: String,
    /// conflict, failure or unmappable.
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
    pub unmappable: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// The plan, on --dry-run and --staging.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedOp>,
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
        state.relationship.holder.as_deref().unwrap_or("another instance"),
        state.relationship.epoch
    )
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
        state = replay::advance(store, state).await?;
        let rel = &state.relationship;
        if !take_over && rel.holder.is_some() {
            if rel.held_by(instance) {
                let epoch = rel.epoch;
                return Ok((Fence { epoch, version }, state));
            }
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
                state = replay::advance(store, state).await?;
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

/// Sleep until the last export lease of another instance has ended.
async fn wait_for_lease(state: &State, instance: &str, progress: &ProgressBar) {
    let Some(lease) = &state.relationship.lease else {
        return;
    };
    if lease.instance == instance {
        return;
    }
    let now = chrono::Utc::now().timestamp_micros();
    let left = lease.until_us.saturating_sub(now);
    if left > 0 {
        let wait = Duration::from_micros(left as u64).min(LEASE + LEASE_MARGIN);
        progress.set_message(format!(
            "waiting {:.0}s for {}'s export lease to end",
            wait.as_secs_f64(),
            lease.instance
        ));
        tokio::time::sleep(wait).await;
    }
}

/// One cycle of an instance at a time, across processes (and hosts, on PostgreSQL): a
/// cycle holds the store's advisory lock `sync.INSTANCE` (a 0600 file lock beside SQLite, a
/// session lock on PostgreSQL) until it ends; the operating system or the server releases
/// it when the process dies. A second cycle is refused before it reads or records anything.
pub async fn lock_instance(store: &AnyStore, instance: &str) -> Result<StoreLock> {
    store
        .try_lock(&format!("sync.{instance}"))
        .await?
        .ok_or_else(|| {
            Error::Refused(format!(
                "a sync of instance `{instance}` is already running (`dirsync sync` or `dirsync run`); this one did nothing"
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
    let lock = lock_instance(store, &opts.instance).await?;
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
    let phase =
        |name: &str| tracing::debug!(phase = name, ms = began.elapsed().as_millis(), "sync");
    let mut state = replay::refresh(store, REFRESH_THRESHOLD).await?;
    phase("projections read");
    // A stopped instance's service (`dirsync run`) idles, but a sync asked for by hand (or
    // by a handover step, as the documented "force synchronization") still runs: fencing,
    // not the stop, decides who may export.
    refuse_retired(&state, &opts.instance)?;
    // Checks before anything is recorded: the source bind, the target's credentials, and
    // (exporting) the relationship.
    probe_source(&src_cfg).await?;
    if let Some(t) = &target {
        t.probe().await?;
    }
    let mut fence = None;
    if exporting {
        let (f, s) = acquire(store, state, &opts.instance, opts.take_over, progress).await?;
        fence = Some(f);
        state = s;
    }
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
    if !opts.dry_run {
        run_started(store, &report, opts.full).await?;
    }
    let run = Cycle {
        store,
        target: target.as_ref(),
        source_kind: src_cfg.kind,
        threshold: cfg.sync.deletion_threshold,
        instance: &opts.instance,
        fence,
        progress,
        stop: opts.stop.as_deref(),
        deadline: Deadline::after(began, cfg.sync.cycle_timeout),
    };
    let scope = Scope::new(&src_cfg.base_dn, &src_cfg.include, &src_cfg.exclude);
    let import_opts = ImportOptions {
        instance: opts.instance.clone(),
        full: opts.full,
        dry_run: opts.dry_run,
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
            progress,
        )
        .await?;
        phase("imported");
        // The snapshot of the imported state is stored while the plan is made.
        let (state, saving) = replay::refresh_saving_beside(store, REFRESH_THRESHOLD).await?;
        let state = if opts.dry_run {
            Arc::new(with_planned(&state, &imported, &opts.instance))
        } else {
            state
        };
        phase("projections brought up to date");
        report.import = imported;
        let r = run.cycle(state, &mut report, saving).await;
        phase("planned and exported");
        r
    }
    .await;
    if !opts.dry_run {
        run_ended(store, &report, &result).await?;
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

async fn run_ended(store: &AnyStore, report: &SyncReport, result: &Result<()>) -> Result<()> {
    let end = match result {
        Ok(()) => Event::SyncRunCompleted(SyncRunCompleted {
            run_id: report.run_id.clone(),
            created: report.created,
            updated: report.updated,
            deleted: report.deleted,
            matched: report.matched,
            held: report.held,
            failed: report.failures,
        }),
        Err(e) => Event::SyncRunFailed(SyncRunFailed {
            run_id: report.run_id.clone(),
            error: e.to_string(),
        }),
    };
    store
        .append(Batch::new(vec![NewEvent::new(
            stream::instance(&report.instance),
            report.instance.clone(),
            end,
        )]))
        .await?;
    replay::refresh(store, REFRESH_THRESHOLD).await?;
    Ok(())
}

/// What [`export_log`] needs besides the store and the target.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub instance: String,
    /// How source objects map (INTERFACE.md differs per kind).
    pub source_kind: SourceKind,
    pub threshold: crate::config::Threshold,
    pub take_over: bool,
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
    let state = replay::refresh(store, REFRESH_THRESHOLD).await?;
    target.probe().await?;
    let (fence, state) = acquire(store, state, &opts.instance, opts.take_over, progress).await?;
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
        source_kind: opts.source_kind,
        threshold: opts.threshold,
        instance: &opts.instance,
        fence: Some(fence),
        progress,
        stop: None,
        deadline: Deadline::after(
            Instant::now(),
            crate::config::SyncConfig::default().cycle_timeout,
        ),
    };
    let result = run.cycle(state, &mut report, None).await;
    run_ended(store, &report, &result).await?;
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
            e,
        );
    }
    state
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

fn to_value(m: &Mapped) -> Option<serde_json::Value> {
    serde_json::to_value(m).ok()
}

/// The side-effecting half of a cycle after the import.
struct Cycle<'a> {
    store: &'a AnyStore,
    target: Option<&'a AnyTarget>,
    source_kind: SourceKind,
    threshold: crate::config::Threshold,
    instance: &'a str,
    /// Present when exporting.
    fence: Option<Fence>,
    progress: &'a ProgressBar,
    stop: Option<&'a std::sync::atomic::AtomicBool>,
    /// `[sync] cycle_timeout` from the cycle's start: no request starts after it.
    deadline: Deadline,
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

impl Cycle<'_> {
    /// Plan, guard, then print the plan or export it. `saving` (the snapshot of `state`
    /// being stored) is waited for once the plan is made, before anything is exported.
    async fn cycle(
        &self,
        state: Arc<State>,
        report: &mut SyncReport,
        saving: Option<replay::Saving>,
    ) -> Result<()> {
        let whole = plan(&state, self.source_kind, None);
        if let Some(saving) = saving {
            saving.finish().await?;
        }
        for (anchor, why) in &whole.unmappable {
            report.unmappable += 1;
            report.problem(anchor, "unmappable", why.clone());
        }
        let deletes = whole.delete_anchors();
        let now = chrono::Utc::now().timestamp_micros();
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
                    .guard
                    .plans
                    .get(h)
                    .is_some_and(|p| p.approved.is_some())
            },
        );
        if let Verdict::Hold { plan_hash, reason } = verdict {
            report.held = deletes.len() as u64;
            report.held_plan = Some(plan_hash.clone());
            report.held_reason = Some(reason.clone());
            // Recorded once per exact list; nothing is exported this cycle.
            let known = state.guard.plans.contains_key(&plan_hash);
            if !known && report.mode != "dry-run" {
                self.store
                    .append(Batch::new(vec![NewEvent::new(
                        stream::GUARD,
                        self.instance,
                        Event::DeletionsHeld(DeletionsHeld {
                            plan_hash,
                            anchors: deletes,
                            reason,
                        }),
                    )]))
                    .await?;
            }
            if report.mode == "dry-run" || report.mode == "staging" {
                self.print_plan(&state, whole, report).await?;
            }
            return Ok(());
        }
        match self.fence {
            None => self.print_plan(&state, whole, report).await,
            Some(fence) => self.export(state, fence, report).await,
        }
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
                    remote.extend(self.lookup(t, kind, &new).await?);
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
            },
        }
    }

    /// The plan line of `op`, taking its strings rather than copying them (a staging plan
    /// of a whole directory is a line per object).
    fn line(state: &State, op: Op) -> PlannedOp {
        let (op_name, kind) = (op_name(&op), op.kind());
        let (anchor, name, target_id) = match op {
            Op::Create { anchor, object } => (anchor, object.name().to_string(), None),
            Op::Update {
                anchor,
                target_id,
                to,
                ..
            } => (anchor, to.name().to_string(), Some(target_id)),
            Op::Delete {
                anchor, target_id, ..
            } => {
                let name = crate::target::ledger_name(&state.ledger, &anchor);
                (anchor, name, Some(target_id))
            }
        };
        PlannedOp {
            op: op_name,
            kind,
            anchor,
            name,
            target_id,
            detail: None,
        }
    }

    /// Target objects that could match `new`: the whole listing when many are new, else
    /// the candidates of each.
    async fn lookup(
        &self,
        t: &AnyTarget,
        kind: ObjectKind,
        new: &[(String, Mapped)],
    ) -> Result<Vec<RemoteObject>> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        if new.len() > LIST_ABOVE {
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
                // `target::matching`), for every new object of this kind.
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
    ) -> Result<()> {
        let Some(t) = self.target else {
            return Err(Error::Config("no [target] section".into()));
        };
        for (pass, kind) in [ObjectKind::User, ObjectKind::Group, ObjectKind::Group]
            .into_iter()
            .enumerate()
        {
            state = replay::advance(self.store, state).await?;
            let p = plan(&state, self.source_kind, Some(kind));
            if pass == 2 && p.new.is_empty() && p.updates.is_empty() {
                break;
            }
            let mut creates = Vec::new();
            self.deadline
                .check(p.new.len() + p.updates.len() + p.deletes.len())?;
            if !p.new.is_empty() {
                let remote = self.lookup(t, kind, &p.new).await?;
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
                            let state = if soft {
                                None
                            } else {
                                remote.state.as_ref().and_then(to_value)
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
                    state = replay::advance(self.store, state).await?;
                }
            }
            // Matched objects now have a ledger state: their differences are updates.
            let updates = plan(&state, self.source_kind, Some(kind)).updates;
            creates.extend(updates);
            self.run_ops(creates, fence, report).await?;
        }
        state = replay::advance(self.store, state).await?;
        let deletes = plan(&state, self.source_kind, None).deletes;
        self.run_ops(deletes, fence, report).await
    }

    async fn append_fenced(&self, events: Vec<NewEvent>, fence: Fence) -> Result<u64> {
        match self
            .store
            .append(
                Batch::new(events).expect(stream::RELATIONSHIP, Expected::Exactly(fence.version)),
            )
            .await
        {
            Ok(o) => Ok(o.last_seq()),
            Err(Error::Conflict { .. }) => {
                let state = replay::refresh(self.store, REFRESH_THRESHOLD).await?;
                Err(Error::Fenced(fenced_message(&state, self.instance)))
            }
            Err(e) => Err(e),
        }
    }

    /// Send `ops` chunk by chunk, each under a claim, recording every outcome.
    async fn run_ops(&self, ops: Vec<Op>, fence: Fence, report: &mut SyncReport) -> Result<()> {
        let Some(t) = self.target else {
            return Ok(());
        };
        if ops.is_empty() {
            return Ok(());
        }
        let bar = crate::output::progress(ops.len() as u64, "export");
        let mut queue: VecDeque<Op> = ops.into();
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
            let deadline = (Instant::now() + LEASE - LEASE_MARGIN).min(self.deadline.at);
            let lease_until = chrono::Utc::now()
                + chrono::Duration::from_std(LEASE).unwrap_or_else(|_| chrono::Duration::zero());
            let batch_id = uuid::Uuid::new_v4().to_string();
            self.append_fenced(
                vec![NewEvent::new(
                    stream::TARGET,
                    self.instance,
                    Event::ExportBatchStarted(ExportBatchStarted {
                        batch_id: batch_id.clone(),
                        epoch: fence.epoch,
                        ops: n as u64,
                        lease_until,
                    }),
                )],
                fence,
            )
            .await?;
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
                    Outcome::Applied { target_id, etag } => {
                        sent += 1;
                        bar.inc(1);
                        match &op {
                            Op::Create { .. } => report.created += 1,
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
                                op: export_op(&op),
                                target_id,
                                state,
                                etag,
                            }),
                        ));
                    }
                    Outcome::Failed(e) if e.fatal => {
                        fatal.get_or_insert(e);
                    }
                    Outcome::Failed(e) if stopping && e.status.is_none() => {}
                    Outcome::Failed(e) => {
                        sent += 1;
                        failed += 1;
                        bar.inc(1);
                        report.failures += 1;
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
                                op: export_op(&op),
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

//! The import runner: the side-effecting half of importing. It reads the source (full or
//! delta from the instance's cursor), plans the events with the pure functions in
//! [`super::import`], and appends them together with the new cursor in one atomic batch,
//! guarded by the source stream's version, so a concurrent import or a crash never records
//! half an import or a cursor ahead of its changes.

use std::time::{Duration, Instant};

use base64::Engine;
use indicatif::ProgressBar;
use serde::Serialize;

use super::anchor::Checked;
use super::import::{delta_events, full_import_events, DeltaPlan};
use super::scope::Scope;
use crate::config::{Config, SourceConfig};
use crate::error::{Error, Result};
use crate::log::event::{
    stream, AnchorRecorded, CursorAdvanced, CursorInvalidated, Event, ImportCompleted,
    SourceInfoRecorded, SourceObject, SyncRunCompleted, SyncRunFailed, SyncRunStarted,
};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, NewEvent, Store};
use crate::project::replay;
use crate::project::{InstanceStatus, State};
use crate::source::{self, Change, ConnectOptions, Read, ALWAYS_FULL_CURSOR};

/// Re-plan at most this many times when another writer moved the source stream on.
const CONFLICT_RETRIES: u32 = 3;
/// Attempts at reading the source when the connection fails.
const SOURCE_ATTEMPTS: u32 = 3;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub instance: String,
    pub full: bool,
    /// Plan only: append nothing.
    pub dry_run: bool,
    /// The start of a run that may stay out of the log (`sync::idle`): recorded with the
    /// import when the import records anything but a moved cursor; else left to the caller.
    pub pending_start: Option<SyncRunStarted>,
}

/// What an import did, for the summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub run_id: String,
    pub instance: String,
    /// "full" or "delta".
    pub mode: String,
    /// Why a delta became a full import, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// What of the scope and mapping differs from the last recorded
    /// (`EffectiveConfigRecorded`): recorded with this import, and applied to every object.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config_changed: Vec<crate::log::event::ConfigPart>,
    pub seen: u64,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub left_scope: u64,
    pub referrals_skipped: u64,
    /// Objects (full) or changes (delta) the source sent.
    pub received: u64,
    pub events: u64,
    pub dry_run: bool,
    /// The log's last seq after the import.
    pub seq: u64,
    /// On a dry run, the events that would have been recorded (for planning on top).
    #[serde(skip)]
    pub planned: Vec<Event>,
    /// `pending_start` was recorded with the import.
    #[serde(skip)]
    pub started: bool,
    /// The seq of the instance's cursor after the import (0: none).
    #[serde(skip)]
    pub cursor_seq: u64,
}

fn keep_attributes(o: &mut SourceObject, keep: &[String]) {
    o.attrs.retain(|k, _| keep.iter().any(|a| a == k));
}

/// Drop every attribute but the kept ones ([`source::kept`]). An LDAP source keeps only
/// those as it reads; this holds every source to the list.
fn keep_in_read(read: &mut Read, keep: &[String]) {
    match read {
        Read::Full { objects, .. } => objects.iter_mut().for_each(|o| keep_attributes(o, keep)),
        Read::Delta { changes, .. } => {
            for c in changes.iter_mut() {
                if let Change::Upsert { object, .. } = c {
                    keep_attributes(object, keep);
                }
            }
        }
    }
}

/// Connect and bind as the source of `cfg`'s kind; everything on the connection must be
/// done by `deadline`.
async fn connect(cfg: &SourceConfig, deadline: Instant) -> Result<Box<dyn source::Source>> {
    let conn = ConnectOptions {
        deadline: Some(deadline),
        ..Default::default()
    };
    source::connect(cfg, &conn).await
}

/// Is this error worth another attempt (the connection, not our input)?
fn transient(e: &Error) -> bool {
    matches!(e, Error::Source(_) | Error::Io(_))
}

/// Read the source, retrying with backoff when the connection fails, all of it by
/// `deadline` (the import's). A delta whose cookie the server rejects comes back as
/// `Err(SourceCookieRejected)` for the caller to handle.
/// `open`: a connection made for the checks before the run, used by the first attempt.
async fn read_source(
    cfg: &SourceConfig,
    cookie: Option<&[u8]>,
    progress: &ProgressBar,
    deadline: Instant,
    mut open: Option<Box<dyn source::Source>>,
    anchor_in_use: Option<&str>,
) -> Result<(Read, Option<SourceInfoRecorded>, &'static str)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let open = open.take();
        let r = async {
            let mut src = match open {
                Some(mut src) => {
                    src.client().set_deadline(Some(deadline));
                    src
                }
                None => {
                    let mut src = connect(cfg, deadline).await?;
                    src.anchor_in_use(anchor_in_use);
                    src
                }
            };
            let info = src.info().await?;
            progress.set_message(if cookie.is_some() {
                "delta"
            } else {
                "full import"
            });
            let read = match cookie {
                Some(c) => src.delta(c).await,
                None => src.full().await,
            };
            let kind = src.cursor_kind();
            let keep = source::kept(cfg);
            src.close().await;
            let mut read = read?;
            keep_in_read(&mut read, &keep);
            Ok::<_, Error>((read, info, kind))
        }
        .await;
        match r {
            Err(e)
                if transient(&e)
                    && attempt < SOURCE_ATTEMPTS
                    && Instant::now() + retry_wait(attempt) < deadline =>
            {
                let wait = retry_wait(attempt);
                tracing::warn!("reading the source failed ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// The filters of `now` to evaluate over objects imported under `old`: those that changed
/// and narrow the old ones over attributes the log holds.
fn rescope_for(
    old: &crate::log::event::EffectiveScope,
    now: &crate::log::event::EffectiveScope,
) -> super::import::Rescope {
    let change = |which: &str, o: &str, n: &str| {
        (o.trim() != n.trim())
            .then(|| crate::plan::effective::filter_change(which, o, n, &old.attributes).ok())
            .flatten()
            .map(|(old, new)| super::import::FilterChange {
                old,
                new,
                text: n.to_string(),
            })
    };
    super::import::Rescope {
        users: change("users", &old.users, &now.users),
        groups: change("groups", &old.groups, &now.groups),
        held: old.attributes.clone(),
        member_of: old.member_of != now.member_of,
    }
}

/// The pause before attempt `attempt + 1` at reading the source.
fn retry_wait(attempt: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(attempt))
}

/// Why the instance's cursor cannot be used for a delta, if it cannot. Its age counts from
/// when it was last known current: recorded, or confirmed by the instance's last idle cycle
/// (`idle`, outside the log).
fn cursor_unusable(
    state: &State,
    instance: &str,
    kind: &str,
    now_us: i64,
    idle: Option<&super::idle::IdleCycle>,
) -> Option<String> {
    let c = state.control.cursors.current.get(instance)?;
    if c.kind != kind {
        return Some(format!(
            "the cursor is a {} cursor, the source needs {kind}",
            c.kind
        ));
    }
    let days = state.control.tombstone_lifetime_days?;
    let current = super::idle::IdleCycle::cursor_current_at(idle, c);
    let age_days = (now_us - current.at_us) / 86_400_000_000;
    (age_days >= i64::from(days)).then(|| {
        format!("the cursor is {age_days} days old, past the {days}-day tombstone lifetime: deletions older than that are no longer visible to it")
    })
}

/// A retired instance neither imports nor exports.
pub(crate) fn refuse_retired(state: &State, instance: &str) -> Result<()> {
    match state.control.instances.instances.get(instance) {
        Some(r) if r.status == InstanceStatus::Retired => {
            Err(Error::Refused(format!("instance {instance} is retired")))
        }
        _ => Ok(()),
    }
}

/// Connect and bind to the source, then hang up: the check made before anything is recorded.
pub(crate) async fn probe_source(cfg: &SourceConfig) -> Result<()> {
    open_source(cfg).await?.close().await;
    Ok(())
}

/// Connect and bind to the source, with the import's deadline from now.
async fn open_source(cfg: &SourceConfig) -> Result<Box<dyn source::Source>> {
    connect(cfg, Instant::now() + cfg.limits.import_timeout).await
}

/// Connect and bind to the source (a wrong password or an unreachable server fails here,
/// before the run's start is recorded), then check the anchor on that connection. The
/// connection goes on to the run's first read: one connection and bind per cycle.
pub(crate) async fn open_and_check(cfg: &SourceConfig, state: &State) -> Result<Checked> {
    let mut src = open_source(cfg).await?;
    match super::anchor::check(src.client(), cfg, state).await {
        Ok((record, in_use)) => {
            src.anchor_in_use(in_use.as_deref());
            Ok(Checked {
                record,
                in_use,
                source: Some(src),
            })
        }
        Err(e) => {
            src.close().await;
            Err(e)
        }
    }
}

/// One import for `opts.instance`: full, or delta from its cursor.
pub async fn import(
    cfg: &Config,
    store: &AnyStore,
    opts: &ImportOptions,
    progress: &ProgressBar,
) -> Result<ImportReport> {
    let src_cfg = cfg.source()?.clone();
    let scope = src_cfg.scope();
    let checks = async {
        let state = replay::current(store).await?;
        refuse_retired(&state, &opts.instance)?;
        // Reach and bind before recording the start (a wrong password or an unreachable
        // server records only the failed run); an import that would re-key the objects is
        // refused before anything is recorded.
        open_and_check(&src_cfg, &state).await
    }
    .await;
    let checked = match checks {
        Ok(c) => c,
        Err(e) => {
            if !opts.dry_run {
                super::export::record_unstarted(store, &opts.instance, &e).await;
            }
            return Err(e);
        }
    };
    let run_id = uuid::Uuid::new_v4().to_string();
    let inst_stream = stream::instance(&opts.instance);
    if !opts.dry_run {
        store
            .append(Batch::new(vec![NewEvent::new(
                inst_stream.clone(),
                opts.instance.clone(),
                Event::SyncRunStarted(SyncRunStarted {
                    run_id: run_id.clone(),
                    full: opts.full,
                    mode: "staging".into(),
                }),
            )]))
            .await?;
    }
    let result = import_run(
        store,
        &src_cfg,
        &scope,
        opts,
        &run_id,
        Some(checked),
        progress,
    )
    .await;
    if !opts.dry_run {
        let end = match &result {
            Ok(_) => Event::SyncRunCompleted(SyncRunCompleted {
                run_id: run_id.clone(),
                ..Default::default()
            }),
            Err(e) => Event::SyncRunFailed(SyncRunFailed {
                run_id: run_id.clone(),
                error: e.to_string(),
                reason: Some(crate::log::event::FailureReason::of(e)),
            }),
        };
        store
            .append(Batch::new(vec![NewEvent::new(
                inst_stream,
                opts.instance.clone(),
                end,
            )]))
            .await?;
        replay::current(store).await?;
    }
    result
}

/// The import itself, without the run's start and end events (the caller records them).
pub(crate) async fn import_run(
    store: &AnyStore,
    src_cfg: &SourceConfig,
    scope: &Scope,
    opts: &ImportOptions,
    run_id: &str,
    mut checked: Option<Checked>,
    progress: &ProgressBar,
) -> Result<ImportReport> {
    let kind = source::cursor_kind(src_cfg.kind);
    // A source without change tracking is read in full every time.
    let always_full = kind == ALWAYS_FULL_CURSOR;
    let mut tries = 0;
    let began = std::time::Instant::now();
    // Every read of the source below, fallbacks and retries included, ends by then.
    let deadline = Instant::now() + src_cfg.limits.import_timeout;
    let phase = |name: &str| crate::ops::metrics::phase_line!("import", name, began);
    loop {
        tries += 1;
        // Read the version before the state: a write in between makes the append conflict
        // (and re-plan), never slip through.
        let version = store.stream_version(stream::SOURCE).await?;
        let state = replay::current(store).await?;
        // The attribute to record with a first import: as checked before the run (each
        // check is a connection and a few searches), and again after a conflicting append.
        let Checked {
            record: anchor,
            in_use,
            source: open,
        } = match checked.take() {
            Some(c) => c,
            None => open_and_check(src_cfg, &state).await?,
        };
        let mut report = ImportReport {
            run_id: run_id.to_string(),
            instance: opts.instance.clone(),
            dry_run: opts.dry_run,
            ..Default::default()
        };
        // The scope and mapping against the last record: what to record, and whether the
        // change needs a full import or an evaluation over the log.
        let now = src_cfg.effective();
        let recorded = state.objects.effective.as_ref().map(|r| &r.event);
        let group_held = |dn: &str| {
            let n = crate::source::dn::normalise_dn(dn);
            state.objects.live().any(|(_, r)| {
                r.kind == crate::log::event::ObjectKind::Group
                    && crate::source::dn::normalise_dn(&r.dn) == n
            })
        };
        let decision = crate::plan::effective::decide(
            recorded,
            &now,
            &src_cfg.mapping_fingerprint,
            !state.objects.objects.is_empty(),
            &group_held,
        );
        if let Some(r) = &decision.record {
            report.config_changed.clone_from(&r.changed);
        }
        let config_full = decision.full_import.clone();
        // A change the log can evaluate is evaluated; one that needs a full import has its
        // DN rules applied first all the same, so that what falls outside them leaves as
        // out of scope (`left-scope`), not as absent from the import.
        let rescope = match (decision.rescope, config_full.is_some(), recorded) {
            (true, _, Some(old)) => Some(rescope_for(&old.scope, &now)),
            (false, true, Some(_)) => Some(super::import::Rescope::default()),
            _ => None,
        };
        let rescoped = match rescope {
            Some(r) => {
                let (events, left) = super::import::rescope_events(&state.objects, scope, &r);
                (!events.is_empty()).then(|| {
                    let mut objects = state.objects.clone();
                    for (k, e) in events.iter().enumerate() {
                        let m = crate::project::Meta {
                            seq: state.seq + 1 + k as u64,
                            instance: &opts.instance,
                            recorded_at_us: 0,
                        };
                        objects.apply(&m, e.clone());
                    }
                    (objects, events, left)
                })
            }
            _ => None,
        };
        let current = rescoped.as_ref().map_or(&state.objects, |(o, _, _)| o);
        let mut invalidated = None;
        // An idle cycle since the cursor was recorded found it still current.
        let idle = match (
            state.control.tombstone_lifetime_days,
            state.control.cursors.current.contains_key(&opts.instance),
        ) {
            (Some(_), true) => store.idle_cycle_of(&opts.instance).await?,
            _ => None,
        };
        let cursor = if opts.full || always_full || config_full.is_some() {
            None
        } else if let Some(why) = cursor_unusable(
            &state,
            &opts.instance,
            kind,
            chrono::Utc::now().timestamp_micros(),
            idle.as_ref(),
        ) {
            invalidated = Some(why);
            None
        } else {
            state
                .control
                .cursors
                .current
                .get(&opts.instance)
                .map(|c| B64.decode(&c.cookie))
                .transpose()
                .map_err(|e| {
                    Error::Store(format!(
                        "the cursor of {} in the log is not base64: {e}",
                        opts.instance
                    ))
                })?
        };
        if cursor.is_none()
            && !opts.full
            && !always_full
            && invalidated.is_none()
            && config_full.is_none()
        {
            report.fallback = Some("no cursor for this instance yet".into());
        }
        let (mut read, info, cursor_kind) = match read_source(
            src_cfg,
            cursor.as_deref(),
            progress,
            deadline,
            open,
            in_use.as_deref(),
        )
        .await
        {
            Err(Error::SourceCookieRejected(why)) => {
                invalidated = Some(format!("the source rejected the cursor: {why}"));
                read_source(src_cfg, None, progress, deadline, None, in_use.as_deref()).await?
            }
            Err(Error::CookieUnusable(why)) => {
                invalidated = Some(format!("dirsync cannot use the cursor: {why}"));
                read_source(src_cfg, None, progress, deadline, None, in_use.as_deref()).await?
            }
            other => other?,
        };
        phase("source read");
        let mut planned = None;
        let mut received = match &read {
            Read::Full { objects, .. } => objects.len() as u64,
            Read::Delta { changes, .. } => changes.len() as u64,
        };
        if let Read::Delta {
            changes,
            cookie,
            referrals,
        } = &read
        {
            match delta_events(current, changes, scope, run_id) {
                DeltaPlan::Events(ev) => planned = Some((ev, cookie.clone(), *referrals)),
                DeltaPlan::NeedWhole(anchors) => {
                    report.fallback = Some(format!(
                        "{} object(s) came into scope without their full data (e.g. {}): full import",
                        anchors.len(),
                        anchors[0]
                    ));
                    read = read_source(src_cfg, None, progress, deadline, None, in_use.as_deref())
                        .await?
                        .0;
                    if let Read::Full { objects, .. } = &read {
                        received = objects.len() as u64;
                    }
                }
            }
        }
        if let Some(why) = &invalidated {
            report.fallback = Some(why.clone());
        }
        if let Some(why) = &config_full {
            report.fallback = Some(why.clone());
        }
        let (events, cookie, referrals) = match (planned, read) {
            (Some(p), _) => {
                report.mode = "delta".into();
                p
            }
            (
                None,
                Read::Full {
                    objects,
                    cookie,
                    referrals,
                },
            ) => {
                report.mode = "full".into();
                (
                    full_import_events(current, objects, scope, run_id),
                    cookie,
                    referrals,
                )
            }
            (None, Read::Delta { .. }) => {
                return Err(Error::Store(
                    "internal: a delta was read but not planned".into(),
                ));
            }
        };
        // The evaluation's events go first, and count in the import's summary.
        let events = match rescoped {
            Some((_, mut first, left)) => {
                let mut events = events;
                if let Some(Event::ImportCompleted(c)) = events.last_mut() {
                    c.left_scope += left;
                }
                first.extend(events);
                first
            }
            None => events,
        };
        phase("events planned");
        report.referrals_skipped = referrals;
        report.received = received;
        if let Some(Event::ImportCompleted(ImportCompleted {
            seen,
            added,
            changed,
            deleted,
            left_scope,
            ..
        })) = events.last()
        {
            (
                report.seen,
                report.added,
                report.changed,
                report.deleted,
                report.left_scope,
            ) = (*seen, *added, *changed, *deleted, *left_scope);
        }
        let inst = opts.instance.clone();
        // Object events, the closing ImportCompleted not counted.
        let events_planned = events
            .iter()
            .filter(|e| !matches!(e, Event::ImportCompleted(_)))
            .count();
        let mut batch: Vec<NewEvent> = Vec::with_capacity(events.len() + 4);
        if let Some(info) = info {
            if info.tombstone_lifetime_days.is_some()
                && info.tombstone_lifetime_days != state.control.tombstone_lifetime_days
            {
                batch.push(NewEvent::new(
                    stream::SOURCE,
                    inst.clone(),
                    Event::SourceInfoRecorded(info),
                ));
            }
        }
        if let Some(attribute) = anchor {
            batch.push(NewEvent::new(
                stream::SOURCE,
                inst.clone(),
                Event::AnchorRecorded(AnchorRecorded { attribute }),
            ));
        }
        if let Some(record) = decision.record {
            batch.push(NewEvent::new(
                stream::SOURCE,
                inst.clone(),
                Event::EffectiveConfigRecorded(Box::new(record)),
            ));
        }
        if let Some(reason) = invalidated {
            batch.push(NewEvent::new(
                stream::cursor(&inst),
                inst.clone(),
                Event::CursorInvalidated(CursorInvalidated { reason }),
            ));
        }
        batch.extend(
            events
                .into_iter()
                .map(|e| NewEvent::new(stream::SOURCE, inst.clone(), e)),
        );
        // No cursor for a source without change tracking: there is nothing to continue from.
        if cursor_kind != ALWAYS_FULL_CURSOR {
            batch.push(NewEvent::new(
                stream::cursor(&inst),
                inst.clone(),
                Event::CursorAdvanced(CursorAdvanced {
                    kind: cursor_kind.into(),
                    cookie: B64.encode(&cookie),
                }),
            ));
        }
        // A run that may stay out of the log records what the import found only when it
        // found something (`sync::idle`), its start first.
        let mut cursor_seq = state
            .control
            .cursors
            .current
            .get(&inst)
            .map_or(0, |c| c.at.seq);
        if let Some(start) = opts.pending_start.clone().filter(|_| !opts.dry_run) {
            let moved = match (
                batch.last().map(|e| &e.event),
                state.control.cursors.current.get(&inst),
            ) {
                (Some(Event::CursorAdvanced(new)), Some(old)) => {
                    new.kind != old.kind || new.cookie != old.cookie
                }
                (Some(Event::CursorAdvanced(_)), None) => true,
                _ => false,
            };
            let facts = super::idle::ImportFacts {
                delta: report.mode == "delta",
                object_events: events_planned,
                other_records: batch.iter().any(|e| {
                    matches!(
                        e.event,
                        Event::SourceInfoRecorded(_)
                            | Event::AnchorRecorded(_)
                            | Event::EffectiveConfigRecorded(_)
                            | Event::CursorInvalidated(_)
                    )
                }),
                tracked: cursor_kind != ALWAYS_FULL_CURSOR,
                cursor_moved: moved,
                received,
            };
            match super::idle::import_record(&facts) {
                super::idle::ImportRecord::All => {
                    batch.insert(
                        0,
                        NewEvent::new(
                            stream::instance(&inst),
                            inst.clone(),
                            Event::SyncRunStarted(start),
                        ),
                    );
                    report.started = true;
                }
                super::idle::ImportRecord::CursorOnly => {
                    batch.retain(|e| matches!(e.event, Event::CursorAdvanced(_)));
                }
                super::idle::ImportRecord::Nothing => {
                    report.events = 0;
                    report.seq = state.seq;
                    report.cursor_seq = cursor_seq;
                    return Ok(report);
                }
            }
        }
        report.events = batch.len() as u64;
        if opts.dry_run {
            report.seq = state.seq;
            report.planned = batch.into_iter().map(|e| e.event).collect();
            return Ok(report);
        }
        // Handed over to bring the projections up to date while the rows are written,
        // without reading them back.
        let (keep, folding) = replay::fold_appended(store, state, &inst);
        let appended = store
            .append_keeping(
                Batch::new(batch).expect(stream::SOURCE, Expected::Exactly(version)),
                keep,
            )
            .await;
        let appended = match appended {
            Ok(out) => out,
            Err(e) => {
                folding.abandon().await;
                if matches!(e, Error::Conflict { .. }) && tries < CONFLICT_RETRIES {
                    tracing::info!(
                        "another writer changed the source stream; planning the import again"
                    );
                    continue;
                }
                return Err(e);
            }
        };
        phase("events appended");
        report.seq = appended.last_seq();
        if cursor_kind != ALWAYS_FULL_CURSOR {
            // The cursor is the batch's last event.
            cursor_seq = report.seq;
        }
        report.cursor_seq = cursor_seq;
        folding.finish(store, &appended).await?;
        return Ok(report);
    }
}

//! `dirsync run --instance I`: the sync service. A sync every `[sync] interval`; it obeys
//! what the log says about the instance (stopped: idle until started; retired: exit), and
//! SIGTERM (or Ctrl-C) ends it after the export chunk in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::export::{sync, SyncOptions};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::ha;
use crate::log::event::{
    stream, Event, FailoverStarted, InstanceFenced, SyncRelationshipEstablished,
};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, NewEvent, Store};
use crate::ops::metrics::Metrics;
use crate::ops::notify::{self, Notifier};
use crate::ops::Outcome;
use crate::playbook::runner::{handover, HandoverOptions};
use crate::project::replay;
use crate::project::InstanceStatus;

/// How often a stopped instance looks at the log for a start.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Resolves when SIGTERM or SIGINT arrives.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Run the service until retired, fenced or terminated. `say` gets one line per cycle.
/// With `standby` (`--standby`), it imports every interval and exports nothing until the
/// holder falls silent past `[ha] failover_after`; then it contends for the relationship
/// and, having won, runs the `failover` playbook (see `crate::ha`). A holder fenced by a
/// newer epoch becomes a standby with `standby`, else exits 4.
/// With `listen` (bound by the caller, `--listen`), it serves its metrics and health there
/// while it runs (`ops::metrics`); what needs a person goes to `notifier` (`ops::notify`),
/// whose queue it lets finish before it returns.
pub async fn serve(
    cfg: &Config,
    store: &AnyStore,
    instance: &str,
    standby: bool,
    listen: Option<tokio::net::TcpListener>,
    notifier: Notifier,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Exit> {
    let r = service(cfg, store, instance, standby, listen, &notifier, say).await;
    notifier.finish().await;
    r
}

/// What the heartbeat task states, shared with the service loop.
#[derive(Clone, Copy, Debug)]
struct Belief {
    role: ha::Role,
    /// The epoch last seen in the log.
    epoch: u64,
}

/// The belief, and a wake-up for the heartbeat task when the role changes: a role is beaten
/// as soon as it changes, not up to a heartbeat later (a holder killed early in its first
/// cycle has said it was the holder; a standby sees a new holder alive at once).
struct Beliefs {
    now: Mutex<Belief>,
    changed: tokio::sync::Notify,
}

impl Beliefs {
    fn get(&self) -> Belief {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The heartbeat `instance` writes now.
    fn beat(&self, instance: &str) -> ha::Heartbeat {
        let b = self.get();
        ha::Heartbeat {
            instance: instance.to_string(),
            role: b.role.name().into(),
            epoch: match b.role {
                ha::Role::Holder(e) => e,
                ha::Role::Standby => b.epoch,
            },
            at_us: chrono::Utc::now().timestamp_micros(),
            host: crate::cli::host_name(),
            pid: std::process::id(),
        }
    }
}

/// Write this service's heartbeat every `[ha] heartbeat`, and at once when its role
/// changes, until aborted. Each write is cut to one heartbeat: a store that does not answer
/// (a partition) makes the beats stop, so the standbys see a silent holder.
fn heartbeats(
    store: AnyStore,
    instance: String,
    every: Duration,
    belief: Arc<Beliefs>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let beat = belief.beat(&instance);
            match tokio::time::timeout(every, store.beat(&beat)).await {
                Ok(Ok(())) => failing = false,
                Ok(Err(e)) if !failing => {
                    tracing::warn!("heartbeat not recorded: {e}");
                    failing = true;
                }
                Err(_) if !failing => {
                    tracing::warn!("heartbeat not recorded within {every:?}");
                    failing = true;
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = belief.changed.notified() => {}
            }
        }
    })
}

fn set_belief(belief: &Beliefs, role: ha::Role, epoch: u64) {
    let mut b = belief.now.lock().unwrap_or_else(|p| p.into_inner());
    let changed = b.role != role;
    b.role = role;
    b.epoch = epoch;
    drop(b);
    if changed {
        belief.changed.notify_one();
    }
}

/// Record that `instance`, which held `held`, found `by` holding `epoch`.
async fn record_fenced(store: &AnyStore, instance: &str, by: &str, epoch: u64, held: u64) {
    let r = store
        .append(Batch::new(vec![NewEvent::new(
            stream::instance(instance),
            instance,
            Event::InstanceFenced(InstanceFenced {
                instance: instance.to_string(),
                by: by.to_string(),
                epoch,
                held,
            }),
        )]))
        .await;
    if let Err(e) = r {
        tracing::warn!("could not record that {instance} was fenced: {e}");
    }
}

/// The election: take epoch `epoch + 1` from `old` only while the relationship stream is
/// still at `version` (what the decision saw). `Ok(None)`: another standby won.
async fn contend(
    store: &AnyStore,
    instance: &str,
    version: u64,
    epoch: u64,
    started: FailoverStarted,
) -> Result<Option<u64>> {
    let new = epoch + 1;
    let batch = Batch::new(vec![
        NewEvent::new(
            stream::RELATIONSHIP,
            instance,
            Event::SyncRelationshipEstablished(SyncRelationshipEstablished {
                holder: instance.to_string(),
                epoch: new,
            }),
        ),
        NewEvent::new(
            stream::RELATIONSHIP,
            instance,
            Event::FailoverStarted(FailoverStarted {
                epoch: new,
                ..started
            }),
        ),
    ])
    .expect(stream::RELATIONSHIP, Expected::Exactly(version));
    match store.append(batch).await {
        Ok(_) => Ok(Some(new)),
        Err(Error::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[allow(clippy::too_many_arguments)]
async fn service(
    cfg: &Config,
    store: &AnyStore,
    instance: &str,
    standby: bool,
    listen: Option<tokio::net::TcpListener>,
    notifier: &Notifier,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Exit> {
    // One service per instance; its cycles (and a `sync` by hand) take the cycle lock too.
    // Two standbys (or a standby and a holder) under one instance name are refused here.
    let _service = store
        .try_lock(&format!("run.{instance}"))
        .await?
        .ok_or_else(|| {
            Error::Refused(format!(
                "`dirsync run --instance {instance}` is already running on this store; this one exits"
            ))
        })?;
    let metrics = Metrics::new(instance, stall_after(cfg));
    let server = listen.map(|l| metrics.serve(l));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            terminated().await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    let belief = Arc::new(Beliefs {
        now: Mutex::new(Belief {
            role: ha::Role::Standby,
            epoch: 0,
        }),
        changed: tokio::sync::Notify::new(),
    });
    let beating = heartbeats(
        store.clone(),
        instance.to_string(),
        cfg.ha.heartbeat,
        belief.clone(),
    );
    let stopping = || stop.load(Ordering::SeqCst);
    let nap = |d: Duration| {
        let stop = stop.clone();
        let metrics = metrics.clone();
        async move {
            let end = tokio::time::Instant::now() + d;
            while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < end {
                metrics.tick();
                tokio::time::sleep(Duration::from_millis(200).min(d)).await;
            }
        }
    };
    let mut idle_said = false;
    let mut standby_said = false;
    // What this process believes it is: a holder once it exported under an epoch.
    let mut role = ha::Role::Standby;
    // A standby imports every interval, and looks at the holder's heartbeat every beat.
    let mut next_import = Instant::now();
    // A failover won whose playbook has not completed yet: the old holder's name.
    let mut failing_over: Option<String> = None;
    // Failed cycles in a row (a cycle refused because another was running is not one).
    let mut failures: u32 = 0;
    let result = loop {
        if stopping() {
            say("terminated: exiting");
            break Ok(Exit::Ok);
        }
        // The version before the control projections: a take-over in between fails the
        // election's append. The control projections alone: a stopped instance or a standby
        // polls them without loading the directory. A store out of reach (a partition) is
        // waited out, exporting nothing: a claim needs the store, and the heartbeats stop,
        // so a standby takes over.
        let read = async {
            let version = store.stream_version(stream::RELATIONSHIP).await?;
            let (seq, control) = replay::control(store).await?;
            Ok::<_, Error>((version, seq, control))
        };
        let (version, seq, control) = match read.await {
            Ok(r) => r,
            Err(e) => {
                say(&format!(
                    "the store cannot be read: {e}; trying again in {}",
                    humantime::format_duration(cfg.ha.heartbeat)
                ));
                nap(cfg.ha.heartbeat).await;
                continue;
            }
        };
        metrics.state(seq, &control);
        let status = control.instances.instances.get(instance).map(|r| r.status);
        let rel = control.relationship.clone();
        drop(control);
        set_belief(&belief, ha::beat_role(role, &rel, instance), rel.epoch);
        match status {
            Some(InstanceStatus::Retired) => {
                say(&format!("{instance} is retired: exiting"));
                break Ok(Exit::Ok);
            }
            Some(InstanceStatus::Stopped) => {
                if !idle_said {
                    say(&format!(
                        "{instance} is stopped: idle until `dirsync instance start {instance}`"
                    ));
                    idle_said = true;
                }
                nap(IDLE_POLL).await;
                continue;
            }
            _ => idle_said = false,
        }
        if let Some(old) = failing_over.clone() {
            if rel.held_by(instance) {
                match failover_playbook(cfg, store, instance, &old, say).await {
                    Ok(()) => {
                        failing_over = None;
                        nap(cfg.sync.interval).await;
                    }
                    Err(e @ Error::Fenced(_)) if !standby => break Err(e),
                    Err(Error::Fenced(e)) => {
                        say(&format!("fenced during the failover: {e}"));
                        failing_over = None;
                    }
                    Err(e) => {
                        say(&format!(
                            "failover playbook failed: {e}; trying again in {}",
                            humantime::format_duration(cfg.ha.heartbeat)
                        ));
                        nap(cfg.ha.heartbeat).await;
                    }
                }
                continue;
            }
            failing_over = None;
        }
        let beats = if standby {
            match store.heartbeats().await {
                Ok(b) => b,
                Err(e) => {
                    say(&format!("the heartbeats cannot be read: {e}"));
                    nap(cfg.ha.heartbeat).await;
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        let action = ha::decide(
            chrono::Utc::now().timestamp_micros(),
            cfg.ha.failover_after,
            &beats,
            &rel,
            instance,
            role,
            standby,
        );
        let staging = match action {
            ha::Action::Export => {
                standby_said = false;
                // What the heartbeats say during the cycle: the epoch held, or (nobody
                // holds yet) the one the cycle establishes; a cycle fenced sets it back.
                if rel.held_by(instance) {
                    role = ha::Role::Holder(rel.epoch);
                    set_belief(&belief, role, rel.epoch);
                } else if rel.holder.is_none() {
                    set_belief(&belief, ha::Role::Holder(rel.epoch + 1), rel.epoch);
                }
                false
            }
            ha::Action::Import => {
                if !standby_said {
                    say(&format!(
                        "standby: {} holds the sync relationship (epoch {}); importing every {}, exporting nothing",
                        rel.holder.as_deref().unwrap_or("nobody"),
                        rel.epoch,
                        humantime::format_duration(cfg.sync.interval)
                    ));
                    standby_said = true;
                }
                if Instant::now() < next_import {
                    nap(cfg.ha.heartbeat.min(next_import - Instant::now())).await;
                    continue;
                }
                true
            }
            ha::Action::Fenced { by, epoch, held } => {
                record_fenced(store, instance, &by, epoch, held).await;
                let e = Error::Fenced(format!(
                    "{by} holds the sync relationship (epoch {epoch}); {instance} held epoch {held} and exports nothing more"
                ));
                notifier.send(notify::Notification::new(
                    notify::NotifyEvent::Fenced,
                    instance,
                    serde_json::json!({"holder": by, "epoch": epoch, "error": e.to_string()}),
                ));
                role = ha::Role::Standby;
                set_belief(&belief, role, epoch);
                if !standby {
                    say(&format!("{e}: exiting"));
                    break Err(e);
                }
                say(&format!("{e}: standing by"));
                standby_said = true;
                continue;
            }
            ha::Action::FailOver {
                old,
                last_heartbeat_us,
                reason,
            } => {
                let started = FailoverStarted {
                    old: old.clone(),
                    new: instance.to_string(),
                    epoch: 0,
                    last_heartbeat_us,
                    reason: reason.clone(),
                };
                match contend(store, instance, version, rel.epoch, started).await {
                    Err(e) => {
                        say(&format!("{reason}: taking over failed: {e}"));
                        nap(cfg.ha.heartbeat).await;
                    }
                    Ok(None) => {
                        say(&format!(
                            "{reason}: another standby took over first; standing by"
                        ));
                    }
                    Ok(Some(epoch)) => {
                        role = ha::Role::Holder(epoch);
                        set_belief(&belief, role, epoch);
                        // Beat now: the other standbys see the new holder alive at once.
                        let _ = store.beat(&belief.beat(instance)).await;
                        metrics.failover();
                        say(&format!(
                            "failover: {reason}; {instance} took epoch {epoch} and runs the failover playbook"
                        ));
                        notifier.send(notify::Notification::new(
                            notify::NotifyEvent::Failover,
                            instance,
                            serde_json::json!({
                                "old": old,
                                "new": instance,
                                "epoch": epoch,
                                "last_heartbeat": last_heartbeat_us.map(crate::output::time),
                                "reason": reason,
                            }),
                        ));
                        failing_over = Some(old);
                    }
                }
                continue;
            }
        };
        let opts = SyncOptions {
            instance: instance.to_string(),
            full: false,
            staging,
            dry_run: false,
            take_over: false,
            stop: Some(stop.clone()),
            wait_for_cycle: None,
            quiet: true,
        };
        let began = Instant::now();
        let began_us = chrono::Utc::now().timestamp_micros();
        if staging {
            next_import = began + cfg.sync.interval;
        }
        let result = sync(cfg, store, &opts, &ProgressBar::hidden()).await;
        if let (Ok(r), false) = (&result, staging) {
            if let Some(e) = r.epoch {
                role = ha::Role::Holder(e);
                set_belief(&belief, role, e);
            }
        }
        let outcome = Outcome::of(&result);
        metrics.cycle(
            outcome,
            cfg.sync.hold,
            result.as_ref().ok(),
            began.elapsed(),
        );
        failures = match outcome {
            Outcome::Failed => failures.saturating_add(1),
            Outcome::Skipped => failures,
            _ => 0,
        };
        if let Some(r) = result.as_ref().ok().filter(|r| r.idle) {
            metrics.idle_cycle(r.import.cursor_seq, chrono::Utc::now().timestamp_micros());
        }
        // The relationship, the head and the cursor as the cycle left them.
        let control = replay::control(store).await.ok();
        if let Some((seq, c)) = &control {
            metrics.state(*seq, c);
        }
        for n in notify::after_cycle(
            instance,
            &result,
            control.as_ref().map(|(_, c)| c),
            began_us,
            failures,
            notifier.failures_before_alert(),
        ) {
            notifier.send(n);
        }
        let now_rel = control.map(|(_, c)| c.relationship);
        match result {
            Ok(r) => say(&format!(
                "{} {}: {} import, created {}, updated {}, deleted {}, matched {}, held {}, conflicts {}, failures {}, recreated {}, quarantined {}{}{}",
                if staging { "staging" } else { "sync" },
                r.run_id, r.import.mode, r.created, r.updated, r.deleted, r.matched, r.held, r.conflicts, r.failures, r.recreated, r.quarantined,
                r.reconcile.as_ref().map_or(String::new(), |d| format!(
                    "; target reconciled: {} missing, {} changed, {} duplicates found, {} recreated, {} restored, {} removed",
                    d.missing, d.changed, d.duplicates, d.recreated, d.restored, d.removed
                )),
                if r.idle { "; idle: nothing recorded" } else { "" }
            )),
            Err(e @ Error::Fenced(_)) => {
                // Fenced in the middle of its cycle: record it when it had held an epoch.
                if let (ha::Role::Holder(held), Some(rel)) = (role, &now_rel) {
                    if let Some(by) = rel.holder.as_deref().filter(|h| *h != instance) {
                        record_fenced(store, instance, by, rel.epoch, held).await;
                    }
                }
                role = ha::Role::Standby;
                set_belief(&belief, role, now_rel.as_ref().map_or(0, |r| r.epoch));
                if !standby {
                    break Err(e);
                }
                say(&format!("{e}: standing by"));
                standby_said = true;
                continue;
            }
            Err(e @ (Error::Config(_) | Error::BadInput(_))) => break Err(e),
            Err(e) => say(&format!("sync failed: {e}; trying again in {}", humantime::format_duration(cfg.sync.interval))),
        }
        if !staging {
            nap(cfg.sync.interval).await;
        }
    };
    beating.abort();
    watcher.abort();
    if let Some(server) = server {
        server.abort();
    }
    result
}

/// Run (or resume) the built-in `failover` playbook from `old` to `instance`, which has won
/// the election: a full import reconciled against the ledger, then an export. When the log
/// holds another unfinished handover the playbook cannot start: the same sync is run alone.
async fn failover_playbook(
    cfg: &Config,
    store: &AnyStore,
    instance: &str,
    old: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let opts = HandoverOptions {
        from: old.to_string(),
        to: instance.to_string(),
        playbook: "failover".into(),
        dry_run: false,
    };
    // On the heap: the playbook's sync is a large future inside the service loop's.
    match Box::pin(handover(cfg, store, &opts, &ProgressBar::hidden(), say)).await {
        Ok(_) => Ok(()),
        Err(Error::Refused(why)) => {
            say(&format!(
                "the failover playbook cannot start ({why}): running its full sync alone"
            ));
            let opts = SyncOptions {
                instance: instance.to_string(),
                full: true,
                staging: false,
                dry_run: false,
                take_over: true,
                stop: None,
                wait_for_cycle: Some(Duration::from_secs(60)),
                quiet: false,
            };
            sync(cfg, store, &opts, &ProgressBar::hidden())
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// How long the service loop may go without a tick while alive: a cycle in flight is
/// bounded by `[sync] cycle_timeout` (checked between export chunks) and, for an import that
/// has begun, by `[source] import_timeout`; five minutes more for the rest.
fn stall_after(cfg: &Config) -> Duration {
    let import = cfg
        .source
        .as_ref()
        .map_or(Duration::ZERO, |s| s.limits.import_timeout);
    cfg.sync.cycle_timeout + import + Duration::from_secs(300)
}

//! `dirsync run --instance I`: the sync service. A sync every `[sync] interval`; it obeys
//! what the log says about the instance (stopped: idle until started; retired: exit), and
//! SIGTERM (or Ctrl-C) ends it after the export chunk in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::export::{sync, SyncOptions};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::log::AnyStore;
use crate::ops::metrics::Metrics;
use crate::ops::notify::{self, Notifier};
use crate::ops::Outcome;
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
/// With `listen` (bound by the caller, `--listen`), it serves its metrics and health there
/// while it runs (`ops::metrics`); what needs a person goes to `notifier` (`ops::notify`),
/// whose queue it lets finish before it returns.
pub async fn serve(
    cfg: &Config,
    store: &AnyStore,
    instance: &str,
    listen: Option<tokio::net::TcpListener>,
    notifier: Notifier,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Exit> {
    let r = service(cfg, store, instance, listen, &notifier, say).await;
    notifier.finish().await;
    r
}

async fn service(
    cfg: &Config,
    store: &AnyStore,
    instance: &str,
    listen: Option<tokio::net::TcpListener>,
    notifier: &Notifier,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Exit> {
    // One service per instance; its cycles (and a `sync` by hand) take the cycle lock too.
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
    // Failed cycles in a row (a cycle refused because another was running is not one).
    let mut failures: u32 = 0;
    let result = loop {
        if stopping() {
            say("terminated: exiting");
            break Ok(Exit::Ok);
        }
        // The control projections alone: a stopped instance polls them without loading
        // the directory.
        let (seq, control) = replay::control(store).await?;
        metrics.state(seq, &control);
        let status = control.instances.instances.get(instance).map(|r| r.status);
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
        let opts = SyncOptions {
            instance: instance.to_string(),
            full: false,
            staging: false,
            dry_run: false,
            take_over: false,
            stop: Some(stop.clone()),
            wait_for_cycle: None,
        };
        let began = Instant::now();
        let began_us = chrono::Utc::now().timestamp_micros();
        let result = sync(cfg, store, &opts, &ProgressBar::hidden()).await;
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
        match result {
            Ok(r) => say(&format!(
                "sync {}: {} import, created {}, updated {}, deleted {}, matched {}, held {}, conflicts {}, failures {}, recreated {}, quarantined {}{}",
                r.run_id, r.import.mode, r.created, r.updated, r.deleted, r.matched, r.held, r.conflicts, r.failures, r.recreated, r.quarantined,
                r.reconcile.as_ref().map_or(String::new(), |d| format!(
                    "; target reconciled: {} missing, {} changed, {} duplicates found, {} recreated, {} restored, {} removed",
                    d.missing, d.changed, d.duplicates, d.recreated, d.restored, d.removed
                ))
            )),
            Err(e @ Error::Fenced(_)) => break Err(e),
            Err(e @ (Error::Config(_) | Error::BadInput(_))) => break Err(e),
            Err(e) => say(&format!("sync failed: {e}; trying again in {}", humantime::format_duration(cfg.sync.interval))),
        }
        nap(cfg.sync.interval).await;
    };
    watcher.abort();
    if let Some(server) = server {
        server.abort();
    }
    result
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

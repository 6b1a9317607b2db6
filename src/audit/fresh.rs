//! The audit step that does I/O: before `audit missed-deletes --refresh` judges, a staging
//! full import as an existing instance gathers fresh evidence (it records the import and
//! exports nothing; without `--refresh` the audit reads the log and writes nothing). The
//! judging itself is pure ([`super::missed`]).

use std::sync::Arc;

use indicatif::ProgressBar;
use serde::Serialize;

use super::missed::{self, MissedDelete};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::AnyStore;
use crate::project::replay;
use crate::project::State;
use crate::sync::export::{sync, SyncOptions};

/// The staging full import that gathered the evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FreshImport {
    pub instance: String,
    pub run_id: String,
    pub seen: u64,
    pub deleted: u64,
    pub left_scope: u64,
}

/// `audit missed-deletes`: the state it judged, the import that refreshed it (if any), and
/// the missed deletions.
pub struct MissedAudit {
    pub state: Arc<State>,
    pub fresh: Option<FreshImport>,
    pub missed: Vec<MissedDelete>,
    /// As of which import the audit speaks.
    pub as_of: missed::AsOf,
}

/// The missed deletions as of the log (`fresh_as` None), or after a staging full import
/// as the instance `fresh_as`. What could reveal a deletion is judged on the cursors as
/// they were before that import moved one of them.
pub async fn missed_deletes(
    cfg: &Config,
    store: &AnyStore,
    fresh_as: Option<&str>,
    progress: &ProgressBar,
    now_us: i64,
) -> Result<MissedAudit> {
    let before = replay::current(store).await?;
    let cursors = before.control.cursors.clone();
    let (state, fresh) = match fresh_as {
        None => (before, None),
        Some(instance) => {
            if cfg.source.is_none() {
                return Err(Error::Config(
                    "no [source] section to read fresh evidence from: leave out --refresh for the log's view"
                        .into(),
                ));
            }
            // An import as an instance the log does not know would create one.
            if !before.control.instances.instances.contains_key(instance) {
                return Err(Error::BadInput(format!(
                    "--refresh --instance {instance}: no such instance (see `dirsync instance list`); the audit imports as an existing one"
                )));
            }
            let opts = SyncOptions {
                instance: instance.to_string(),
                full: true,
                staging: true,
                dry_run: false,
                take_over: false,
                stop: None,
                wait_for_cycle: None,
                quiet: false,
            };
            let r = sync(cfg, store, &opts, progress).await?;
            let fresh = FreshImport {
                instance: r.instance,
                run_id: r.run_id,
                seen: r.import.seen,
                deleted: r.import.deleted,
                left_scope: r.import.left_scope,
            };
            (replay::current(store).await?, Some(fresh))
        }
    };
    let missed = missed::missed_deletes(&state, &cursors, now_us, cfg.sync.on_delete);
    Ok(MissedAudit {
        as_of: missed::AsOf::of(&state),
        state,
        fresh,
        missed,
    })
}

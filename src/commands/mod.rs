//! What each command does: reads the configuration, opens the store, prints the result.
//! One file per command family; this one dispatches.

mod anchors;
mod audit;
mod deletions;
mod handover;
mod instance;
mod log;
mod mapping;
mod replay;
mod sync;

use self::anchors::*;
use self::audit::*;
use self::deletions::*;
use self::handover::*;
use self::instance::*;
use self::log::*;
use self::mapping::*;
use self::replay::*;
use self::sync::*;

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli::{
    host_name, AnchorsCommand, Cli, Command, DeletionsCommand, Format, HandoverArgs,
    HandoverCommand, InstanceCommand, LogCommand, MappingCommand, ReplayArgs, SyncArgs,
};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::log::event::{stream, InstanceLifecycle};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, ChainVerifier, Event, NewEvent, OpenMode, Store, StoredEvent};
use crate::output::{self, print, table, time};
use crate::project::replay::{self as projection, Until};
use crate::project::{InstanceStatus, State};

/// Replay at most this many events past the stored projections before storing them again.
const SNAPSHOT_EVERY: u64 = 10_000;

pub async fn execute(cli: Cli) -> Result<Exit> {
    let cfg = Config::discover(cli.config.as_deref())?;
    let fmt = cli.format;
    let csv_ok = match &cli.command {
        Command::Audit(_) => true,
        Command::Replay(a) => a.diff.is_some() || a.what_if.is_some(),
        _ => false,
    };
    if fmt == Format::Csv && !csv_ok {
        return Err(Error::BadInput(
            "--format csv is for `audit` and `replay --diff/--what-if`; use table or json here"
                .into(),
        ));
    }
    match cli.command {
        Command::Audit(c) => audit_cmd(&cfg, c, fmt).await,
        Command::Replay(a) if a.is_history() => history_cmd(&cfg, a, fmt).await,
        Command::Init => init(&cfg, fmt).await,
        Command::Log(c) => {
            let store = open(&cfg).await?;
            match c {
                LogCommand::Show { since, limit } => log_show(&store, since, limit, fmt).await,
                LogCommand::Verify => log_verify(&store, fmt).await,
                LogCommand::Export { output } => log_export(&store, output.as_deref()).await,
                LogCommand::Import { file } => log_import(&store, &file, fmt).await,
            }
        }
        Command::Replay(a) => replay_cmd(&open(&cfg).await?, a, fmt).await,
        Command::Instance(c) => instance(&open(&cfg).await?, c, fmt).await,
        Command::Sync(a) => sync(&cfg, a, fmt).await,
        Command::Deletions(c) => deletions(&open(&cfg).await?, c, fmt).await,
        Command::Anchors(c) => anchors(&cfg, c, fmt).await,
        Command::Mapping(c) => mapping(&cfg, c, fmt).await,
        Command::Handover(a) => handover(&cfg, a, fmt).await,
        Command::Preflight { instance } => {
            let instance = crate::cli::instance_or_host(instance)?;
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            let checks = crate::sync::preflight::preflight(&cfg, &instance, &bar).await;
            bar.finish_and_clear();
            match fmt {
                Format::Json => emit_json(&json!(checks))?,
                Format::Table | Format::Csv => {
                    let rows: Vec<Vec<String>> = checks
                        .iter()
                        .map(|c| {
                            vec![
                                c.check.to_string(),
                                c.result().to_string(),
                                c.detail.clone(),
                            ]
                        })
                        .collect();
                    print(&table(&["CHECK", "RESULT", "DETAIL"], &rows))?;
                }
            }
            Ok(if checks.iter().all(|c| c.ok) {
                Exit::Ok
            } else {
                Exit::Failure
            })
        }
        Command::Run { instance } => {
            let instance = crate::cli::instance_or_host(instance)?;
            let store = open(&cfg).await?;
            crate::sync::service::serve(&cfg, &store, &instance, &|l| eprintln!("dirsync run: {l}"))
                .await
        }
    }
}

async fn open(cfg: &Config) -> Result<AnyStore> {
    AnyStore::open(&cfg.store.url, OpenMode::Existing).await
}

fn emit_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<()> {
    Ok(crate::output::print_json(v)?)
}

async fn init(cfg: &Config, fmt: Format) -> Result<Exit> {
    let store = AnyStore::open(&cfg.store.url, OpenMode::Init).await?;
    let (seq, _) = store.head().await?;
    match fmt {
        Format::Json => {
            emit_json(&json!({"store": store.describe(), "events": seq, "ready": true}))?
        }
        Format::Table | Format::Csv => print(&format!(
            "store {} is ready ({seq} events)\n",
            store.describe()
        ))?,
    }
    Ok(Exit::Ok)
}

/// Print rows as a table or CSV, or `json` as JSON.
fn emit_rows(
    fmt: Format,
    headers: &[&str],
    rows: &[Vec<String>],
    json: &serde_json::Value,
) -> Result<()> {
    match fmt {
        Format::Json => emit_json(json),
        Format::Csv => Ok(print(&output::csv(headers, rows))?),
        Format::Table => Ok(print(&table(headers, rows))?),
    }
}

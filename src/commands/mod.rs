//! What each command does: reads the configuration, opens the store, prints the result.
//! One file per command family; this one dispatches.

mod anchors;
mod audit;
mod deletions;
mod handover;
mod instance;
mod log;
mod mapping;
mod object;
mod packaging;
mod playbook;
mod replay;
mod report;
mod status;
mod sync;

use self::anchors::*;
use self::audit::*;
use self::deletions::*;
use self::handover::*;
use self::instance::*;
use self::log::*;
use self::mapping::*;
use self::object::*;
use self::packaging::*;
use self::playbook::*;
use self::replay::*;
use self::report::*;
use self::status::*;
use self::sync::*;

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli::{
    host_name, AnchorsCommand, Cli, Command, DeletionsCommand, Format, HandoverArgs,
    HandoverCommand, InstanceCommand, LogCommand, MappingCommand, ObjectCommand, ReplayArgs,
    SyncArgs,
};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::log::{AnyStore, OpenMode, Store, StoredEvent};
use crate::ops::notify::{self, Notification, Notifier, NotifyEvent};
use crate::output::{self, print, table, time};
use crate::project::replay::{self as projection, Until};
use crate::project::{Control, State};

pub async fn execute(cli: Cli) -> Result<Exit> {
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
    // These need neither a configuration nor a store.
    match cli.command {
        Command::Playbook(c) => return playbook(c, fmt),
        Command::Completions { shell } => return completions(shell),
        Command::Man { dir } => return man(&dir),
        _ => {}
    }
    let cfg = Config::discover(cli.config.as_deref())?;
    match cli.command {
        Command::Audit(c) => audit_cmd(&cfg, c, fmt).await,
        Command::Replay(a) if a.is_history() => history_cmd(&cfg, a, fmt).await,
        Command::Init => init(&cfg, fmt).await,
        Command::Log(c) => {
            let store = open(&cfg).await?;
            match c {
                LogCommand::Show {
                    since,
                    until,
                    anchor,
                    event_type,
                    limit,
                } => {
                    let f = LogFilter {
                        since,
                        until,
                        anchor,
                        event_type,
                        limit,
                    };
                    log_show(&store, f, fmt).await
                }
                LogCommand::Verify => log_verify(&store, fmt).await,
                LogCommand::Export { output } => log_export(&store, output.as_deref()).await,
                LogCommand::Import { file } => log_import(&store, &file, fmt).await,
            }
        }
        Command::Replay(a) if a.anchor.is_some() => {
            let store = open(&cfg).await?;
            let until = match a.until.as_deref().map(parse_until).transpose()? {
                Some(Until::Seq(n)) => Some(n),
                Some(Until::Time(t)) => Some(store.seq_at_or_before(t.timestamp_micros()).await?),
                Some(Until::Head) | None => None,
            };
            let key = a.anchor.unwrap_or_default();
            object_show(&cfg, &store, &key, until, fmt).await
        }
        Command::Replay(a) => replay_cmd(&open(&cfg).await?, a, fmt).await,
        Command::Report { html, since } => report_cmd(&cfg, &html, since.as_deref(), fmt).await,
        Command::Object(ObjectCommand::Show { key }) => {
            object_show(&cfg, &open(&cfg).await?, &key, None, fmt).await
        }
        Command::Instance(c) => instance(&open(&cfg).await?, c, fmt).await,
        Command::Sync(a) => sync(&cfg, a, fmt).await,
        Command::Deletions(c) => deletions(&open(&cfg).await?, c, fmt).await,
        Command::Anchors(c) => anchors(&cfg, c, fmt).await,
        Command::Mapping(c) => mapping(&cfg, c, fmt).await,
        Command::Handover(a) => handover(&cfg, a, fmt).await,
        Command::Status { instance } => status(&cfg, instance, fmt).await,
        Command::Preflight { instance } => {
            let instance = crate::cli::instance_or_host(instance)?;
            let bar = crate::output::spinner("preflight");
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
        // Answered above, before the configuration is read.
        Command::Playbook(_) | Command::Completions { .. } | Command::Man { .. } => Ok(Exit::Ok),
        Command::Run {
            instance,
            listen,
            standby,
        } => {
            let instance = crate::cli::instance_or_host(instance)?;
            // Bound before the store is opened: a bad address is bad usage, nothing written.
            let listener = match listen {
                Some(addr) => Some(crate::ops::metrics::bind(&addr).await?),
                None => None,
            };
            let store = open(&cfg).await?;
            let notifier = Notifier::start(&cfg, notify::Record::Log(store.clone()))?;
            // Each line carries its time: a journal or a file keeps when each cycle ended.
            crate::sync::service::serve(
                &cfg,
                &store,
                &instance,
                standby,
                listener,
                notifier,
                &|l| eprintln!("dirsync run: {} {l}", time(Utc::now().timestamp_micros())),
            )
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

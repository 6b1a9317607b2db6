//! What each command does: reads the configuration, opens the store, prints the result.

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli::{
    host_name, AnchorsCommand, Cli, Command, DeletionsCommand, Format, HandoverArgs,
    HandoverCommand, InstanceCommand, LogCommand, ReplayArgs, SyncArgs,
};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::log::event::{stream, InstanceLifecycle};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, ChainVerifier, Event, NewEvent, OpenMode, Store, StoredEvent};
use crate::output::{self, print, table, time};
use crate::project::replay::{self, Until};
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

fn event_json(e: &StoredEvent) -> serde_json::Value {
    let payload: serde_json::Value =
        serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::String(e.payload.clone()));
    json!({
        "seq": e.seq,
        "recorded_at": time(e.recorded_at_us),
        "instance": e.instance,
        "stream": e.stream,
        "stream_version": e.stream_version,
        "type": e.event_type,
        "schema_version": e.schema_version,
        "payload": payload,
        "hash": hex::encode(e.hash),
    })
}

async fn log_show(store: &AnyStore, since: u64, limit: Option<u64>, fmt: Format) -> Result<Exit> {
    let limit = limit.unwrap_or(u64::MAX);
    let mut n = 0u64;
    let mut rows = Vec::new();
    let mut out = String::new();
    replay::scan(store, since, None, |e| {
        if n >= limit {
            return Ok(ControlFlow::Break(()));
        }
        n += 1;
        match fmt {
            Format::Json => {
                out.push_str(&event_json(e).to_string());
                out.push('\n');
            }
            Format::Table | Format::Csv => {
                let mut summary = e.payload.clone();
                if summary.chars().count() > 90 {
                    summary = summary.chars().take(87).collect::<String>() + "...";
                }
                rows.push(vec![
                    e.seq.to_string(),
                    time(e.recorded_at_us),
                    e.instance.clone(),
                    format!("{}@{}", e.stream, e.stream_version),
                    e.event_type.clone(),
                    summary,
                ]);
            }
        }
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    if fmt == Format::Table {
        out = table(
            &["SEQ", "RECORDED", "INSTANCE", "STREAM", "TYPE", "PAYLOAD"],
            &rows,
        );
    }
    print(&out)?;
    Ok(Exit::Ok)
}

async fn log_verify(store: &AnyStore, fmt: Format) -> Result<Exit> {
    let (head, hash) = store.head().await?;
    let bar = output::progress(head, "verify");
    let r = replay::verify_chain(store, Some(&bar)).await;
    bar.finish_and_clear();
    let n = r?;
    match fmt {
        Format::Json => emit_json(&json!({"ok": true, "events": n, "head": hex::encode(hash)}))?,
        Format::Table | Format::Csv => print(&format!(
            "chain verified: {n} events, head {}\n",
            hex::encode(hash)
        ))?,
    }
    Ok(Exit::Ok)
}

async fn log_export(store: &AnyStore, output: Option<&Path>) -> Result<Exit> {
    // Streamed into a temporary file beside the destination, checked against the chain and
    // its head as it goes, and only then renamed (or copied to stdout): a broken log is
    // reported, never carried elsewhere, and no half file is left behind.
    let dir = match output.and_then(Path::parent) {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        Some(_) => std::path::PathBuf::from("."),
        None => std::env::temp_dir(),
    };
    let tmp = tempfile::NamedTempFile::new_in(&dir)?;
    let (head, _) = store.head().await?;
    let bar = output::progress(head, "export");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    let mut v = ChainVerifier::default();
    let r = replay::scan(store, 0, Some(&bar), |e| {
        v.check(e)
            .map_err(|(seq, reason)| Error::ChainBroken { seq, reason })?;
        serde_json::to_writer(&mut w, e).map_err(Error::store)?;
        w.write_all(b"\n")?;
        Ok(ControlFlow::Continue(()))
    })
    .await;
    bar.finish_and_clear();
    r?;
    w.flush()?;
    drop(w);
    let (head_seq, head_hash) = store.head().await?;
    if head_seq < v.last_seq() || (head_seq == v.last_seq() && head_hash != v.last_hash()) {
        return Err(Error::ChainBroken {
            seq: head_seq.min(v.last_seq()),
            reason: "the head does not match the last event".into(),
        });
    }
    if head_seq > v.last_seq() && head == head_seq {
        return Err(Error::ChainBroken {
            seq: v.last_seq() + 1,
            reason: format!(
                "the log ends at seq {} but its head says {head_seq} (rows removed)",
                v.last_seq()
            ),
        });
    }
    match output {
        Some(path) => {
            tmp.persist(path).map_err(|e| Error::Io(e.error))?;
        }
        None => {
            let mut f = std::fs::File::open(tmp.path())?;
            let mut out = std::io::stdout().lock();
            match std::io::copy(&mut f, &mut out).and_then(|_| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(Exit::Ok)
}

/// Read and verify an export file completely; nothing is written here.
pub fn read_export(file: &Path) -> Result<Vec<StoredEvent>> {
    let f = std::fs::File::open(file)
        .map_err(|e| Error::BadInput(format!("{}: {e}", file.display())))?;
    let mut events = Vec::new();
    let mut chain = ChainVerifier::default();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line =
            line.map_err(|e| Error::BadInput(format!("{}:{}: {e}", file.display(), i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: StoredEvent = serde_json::from_str(&line).map_err(|e| {
            Error::BadInput(format!(
                "{}:{}: not a dirsync log line: {e}",
                file.display(),
                i + 1
            ))
        })?;
        chain.check(&e).map_err(|(seq, reason)| {
            Error::BadInput(format!(
                "{}:{}: chain broken at seq {seq}: {reason}; nothing imported",
                file.display(),
                i + 1
            ))
        })?;
        e.decode().map_err(|err| {
            Error::BadInput(format!(
                "{}:{}: {err}; nothing imported",
                file.display(),
                i + 1
            ))
        })?;
        events.push(e);
    }
    Ok(events)
}

async fn log_import(store: &AnyStore, file: &Path, fmt: Format) -> Result<Exit> {
    let events = read_export(file)?;
    let (head, head_hash) = store.head().await?;
    // The store must hold a prefix of the file: then only the rest is appended.
    if head > 0 {
        let ours = events.get(head as usize - 1);
        if ours.map(|e| e.hash) != Some(head_hash) {
            return Err(Error::BadInput(format!(
                "{}: the store already holds a different log (its seq {head} is not in the file); nothing imported",
                file.display()
            )));
        }
    }
    let new = &events[(head as usize).min(events.len())..];
    store.append_raw(new).await?;
    let state = replay::refresh(store, 0).await?;
    match fmt {
        Format::Json => {
            emit_json(&json!({"imported": new.len(), "already_present": head, "head": state.seq}))?
        }
        Format::Table | Format::Csv => print(&format!(
            "imported {} events ({} already present); log now ends at seq {}\n",
            new.len(),
            head,
            state.seq
        ))?,
    }
    Ok(Exit::Ok)
}

fn parse_until(s: &str) -> Result<Until> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Until::Seq(n));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| Until::Time(t.with_timezone(&Utc)))
        .map_err(|_| {
            Error::BadInput(format!(
                "--until `{s}` is neither a sequence number nor an RFC 3339 time"
            ))
        })
}

async fn replay_cmd(store: &AnyStore, a: ReplayArgs, fmt: Format) -> Result<Exit> {
    let (head, _) = store.head().await?;
    let bar = output::progress(head, "replay");
    if a.verify {
        let r = replay::verify_projections(store, Some(&bar)).await;
        bar.finish_and_clear();
        let (n, compared) = r?;
        match fmt {
            Format::Json => {
                emit_json(&json!({"ok": true, "events": n, "compared_stored": compared}))?
            }
            Format::Table | Format::Csv if compared => print(&format!(
                "replayed {n} events from seq 0: the stored projections match\n"
            ))?,
            Format::Table | Format::Csv => print(&format!(
                "replayed {n} events from seq 0: no stored projections to compare yet\n"
            ))?,
        }
        return Ok(Exit::Ok);
    }
    let until = a
        .until
        .as_deref()
        .map(parse_until)
        .transpose()?
        .unwrap_or(Until::Head);
    let state = replay::state_at(store, until, Some(&bar)).await;
    bar.finish_and_clear();
    let state = state?;
    print_state(&state, fmt)?;
    // The process ends now: freeing a large state piece by piece would only cost time.
    std::mem::forget(state);
    Ok(Exit::Ok)
}

fn at(a: Option<&crate::project::At>) -> String {
    a.map_or_else(
        || "-".to_string(),
        |a| format!("{} (seq {})", time(a.at_us), a.seq),
    )
}

pub fn print_state(s: &State, fmt: Format) -> Result<()> {
    if fmt == Format::Json {
        // Straight to text: a large state is not built again as a JSON tree first.
        return emit_json(s);
    }
    let mut out = format!("state as of seq {}\n\n", s.seq);
    let mut objs: Vec<_> = s.objects.objects.iter().collect();
    objs.sort_by(|a, b| a.1.dn.cmp(&b.1.dn).then(a.0.cmp(b.0)));
    let rows: Vec<Vec<String>> = objs
        .iter()
        .map(|(anchor, r)| {
            vec![
                anchor.to_string(),
                r.kind.as_str().into(),
                r.dn.clone(),
                r.deletion
                    .as_ref()
                    .map_or("live".into(), |d| format!("gone: {}", d.evidence.label())),
            ]
        })
        .collect();
    out.push_str(&format!("source objects ({})\n", rows.len()));
    out.push_str(&table(&["ANCHOR", "KIND", "DN", "STATE"], &rows));
    let mut led: Vec<_> = s.ledger.entries.iter().collect();
    led.sort_by(|a, b| a.0.cmp(b.0));
    let rows: Vec<Vec<String>> = led
        .iter()
        .map(|(anchor, l)| {
            vec![
                anchor.to_string(),
                l.kind.as_str().into(),
                l.target_id.clone(),
                format!("{:?}", l.origin).to_lowercase(),
                if l.deleted.is_some() {
                    "deleted".into()
                } else {
                    "owned".into()
                },
            ]
        })
        .collect();
    out.push_str(&format!("\ntarget ledger ({})\n", rows.len()));
    out.push_str(&table(
        &["ANCHOR", "KIND", "TARGET ID", "ORIGIN", "STATE"],
        &rows,
    ));
    let rows: Vec<Vec<String>> = s
        .cursors
        .current
        .iter()
        .map(|(i, c)| vec![i.clone(), c.kind.clone(), at(Some(&c.at))])
        .collect();
    out.push_str("\ncursors\n");
    out.push_str(&table(&["INSTANCE", "KIND", "ADVANCED"], &rows));
    out.push_str(&format!(
        "\nsync relationship: {} (epoch {}, since {})\n",
        s.relationship.holder.as_deref().unwrap_or("none"),
        s.relationship.epoch,
        at(s.relationship.since.as_ref())
    ));
    print(&out)?;
    Ok(())
}

async fn instance(store: &AnyStore, c: InstanceCommand, fmt: Format) -> Result<Exit> {
    let name = match &c {
        InstanceCommand::List => {
            return list_instances(&*replay::refresh(store, SNAPSHOT_EVERY).await?, fmt);
        }
        InstanceCommand::Stop { instance }
        | InstanceCommand::Start { instance }
        | InstanceCommand::Retire { instance, .. } => instance.clone(),
    };
    let s = stream::instance(&name);
    let mut tries = 0;
    let what = loop {
        tries += 1;
        // The version before the state: an event that lands in between (the instance's own
        // service starting a run, say) makes the append conflict, and the command is decided
        // again on the newer state rather than failing.
        let version = store.stream_version(&s).await?;
        let state = replay::refresh(store, SNAPSHOT_EVERY).await?;
        let event = instance_event(&state, &c)?;
        let what = event.event_type();
        let batch = Batch::new(vec![NewEvent::new(s.clone(), name.clone(), event)])
            .expect(s.clone(), Expected::Exactly(version));
        match store.append(batch).await {
            Err(Error::Conflict { .. }) if tries < CONFLICT_RETRIES => continue,
            r => r?,
        };
        break what;
    };
    replay::refresh(store, SNAPSHOT_EVERY).await?;
    match fmt {
        Format::Json => emit_json(&json!({"instance": name, "recorded": what}))?,
        Format::Table | Format::Csv => print(&format!("{name}: {what}\n"))?,
    }
    Ok(Exit::Ok)
}

/// Attempts at recording an instance command when other writers keep changing its stream.
const CONFLICT_RETRIES: u32 = 10;

/// What an instance command records, decided on `state` (pure).
fn instance_event(state: &State, c: &InstanceCommand) -> Result<Event> {
    Ok(match c {
        InstanceCommand::List => {
            return Err(Error::BadInput("listing instances records nothing".into()));
        }
        InstanceCommand::Stop { instance } => {
            let rec = state.instances.instances.get(instance);
            if rec.map(|r| r.status) == Some(InstanceStatus::Retired) {
                return Err(Error::Refused(format!("instance {instance} is retired")));
            }
            Event::InstanceStopped(InstanceLifecycle::default())
        }
        InstanceCommand::Start { instance } => {
            let rec = state.instances.instances.get(instance);
            if rec.map(|r| r.status) == Some(InstanceStatus::Retired) {
                return Err(Error::Refused(format!(
                    "instance {instance} is retired; a retired instance never syncs again"
                )));
            }
            Event::InstanceStarted(InstanceLifecycle::default())
        }
        InstanceCommand::Retire { instance, force } => {
            let rec = state.instances.instances.get(instance).ok_or_else(|| {
                Error::BadInput(format!("the log knows no instance named {instance}"))
            })?;
            if let Some((run, since)) = &rec.running {
                if !force {
                    return Err(Error::Refused(format!(
                        "instance {instance} has sync run {run} in progress since {}; wait for it or use --force",
                        time(since.at_us)
                    )));
                }
            }
            let reason = rec
                .running
                .as_ref()
                .map(|(run, _)| format!("forced during run {run}"));
            Event::InstanceRetired(InstanceLifecycle {
                reason,
                forced: *force,
            })
        }
    })
}

fn list_instances(state: &State, fmt: Format) -> Result<Exit> {
    let holder = state.relationship.holder.as_deref();
    if fmt == Format::Json {
        let list: Vec<_> = state
            .instances
            .instances
            .iter()
            .map(|(n, r)| {
                json!({
                    "instance": n,
                    "status": r.status.as_str(),
                    "holds_relationship": Some(n.as_str()) == holder,
                    "epoch": if Some(n.as_str()) == holder { Some(state.relationship.epoch) } else { None },
                    "running": r.running.as_ref().map(|(id, _)| id),
                    "last_completed": r.last_completed.as_ref().map(|(_, a)| time(a.at_us)),
                    "cursor": state.cursors.current.get(n).map(|c| time(c.at.at_us)),
                })
            })
            .collect();
        emit_json(&serde_json::Value::Array(list))?;
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = state
        .instances
        .instances
        .iter()
        .map(|(n, r)| {
            vec![
                n.clone(),
                r.status.as_str().into(),
                if Some(n.as_str()) == holder {
                    format!("holder (epoch {})", state.relationship.epoch)
                } else {
                    "-".into()
                },
                r.running.as_ref().map_or("-".into(), |(id, _)| id.clone()),
                at(r.last_completed.as_ref().map(|(_, a)| a)),
                at(state.cursors.current.get(n).map(|c| &c.at)),
            ]
        })
        .collect();
    print(&table(
        &[
            "INSTANCE",
            "STATUS",
            "RELATIONSHIP",
            "RUNNING",
            "LAST SYNC",
            "CURSOR",
        ],
        &rows,
    ))?;
    Ok(Exit::Ok)
}

async fn sync(cfg: &Config, a: SyncArgs, fmt: Format) -> Result<Exit> {
    cfg.source()?;
    let store = open(cfg).await?;
    let opts = crate::sync::export::SyncOptions {
        instance: crate::cli::instance_or_host(a.instance)?,
        full: a.full,
        staging: a.staging,
        dry_run: a.dry_run,
        take_over: a.take_over,
        stop: None,
        wait_for_cycle: None,
    };
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let r = crate::sync::export::sync(cfg, &store, &opts, &bar).await;
    bar.finish_and_clear();
    let r = r?;
    match fmt {
        Format::Json => emit_json(&r)?,
        Format::Table | Format::Csv => print(&sync_table(&r))?,
    }
    if let (Some(h), Some(why)) = (&r.held_plan, &r.held_reason) {
        eprintln!(
            "dirsync: {} deletion(s) held: {why}. Review with `dirsync deletions show`, release with `dirsync deletions approve --plan {h}`",
            r.held
        );
    }
    Ok(r.exit())
}

fn sync_table(r: &crate::sync::export::SyncReport) -> String {
    let i = &r.import;
    let mut out = format!(
        "{} for {} (run {}): {} import{}\n",
        r.mode,
        r.instance,
        r.run_id,
        i.mode,
        match r.epoch {
            Some(e) => format!(", relationship epoch {e}"),
            None => String::new(),
        }
    );
    if let Some(f) = &i.fallback {
        out.push_str(&format!("full import because {f}\n"));
    }
    out.push_str(&table(
        &[
            "SEEN",
            "ADDED",
            "CHANGED",
            "DELETED",
            "LEFT SCOPE",
            "REFERRALS SKIPPED",
            "EVENTS",
        ],
        &[vec![
            i.seen.to_string(),
            i.added.to_string(),
            i.changed.to_string(),
            i.deleted.to_string(),
            i.left_scope.to_string(),
            i.referrals_skipped.to_string(),
            i.events.to_string(),
        ]],
    ));
    if !r.plan.is_empty() {
        out.push_str("\nplan:\n");
        let rows: Vec<Vec<String>> = r
            .plan
            .iter()
            .map(|p| {
                vec![
                    p.op.to_string(),
                    p.kind.as_str().to_string(),
                    p.anchor.clone(),
                    p.name.clone(),
                    p.target_id.clone().unwrap_or_default(),
                    p.detail.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["OP", "KIND", "ANCHOR", "NAME", "TARGET ID", "DETAIL"],
            &rows,
        ));
    } else if r.mode != "sync" {
        out.push_str("\nplan: nothing to export\n");
    }
    if r.mode == "sync" || r.held > 0 {
        out.push('\n');
        out.push_str(&table(
            &[
                "CREATED",
                "UPDATED",
                "DELETED",
                "MATCHED",
                "HELD",
                "CONFLICTS",
                "FAILURES",
                "RECREATED",
                "QUARANTINED",
                "UNMAPPABLE",
                "DUPLICATES REMOVED",
            ],
            &[vec![
                r.created.to_string(),
                r.updated.to_string(),
                r.deleted.to_string(),
                r.matched.to_string(),
                r.held.to_string(),
                r.conflicts.to_string(),
                r.failures.to_string(),
                r.recreated.to_string(),
                r.quarantined.to_string(),
                r.unmappable.to_string(),
                r.duplicates_removed.to_string(),
            ]],
        ));
    }
    if let Some(d) = &r.reconcile {
        out.push_str(&format!(
            "\ntarget reconciled: {} objects read; drift found: {} missing, {} changed, {} duplicates; repaired: {} recreated, {} restored, {} removed; {} failed\n",
            d.listed, d.missing, d.changed, d.duplicates, d.recreated, d.restored, d.removed, d.failed
        ));
    }
    if !r.problems.is_empty() {
        out.push_str("\nproblems:\n");
        let rows: Vec<Vec<String>> = r
            .problems
            .iter()
            .map(|p| vec![p.problem.to_string(), p.anchor.clone(), p.detail.clone()])
            .collect();
        out.push_str(&table(&["PROBLEM", "ANCHOR", "DETAIL"], &rows));
    }
    out
}

async fn anchors(cfg: &Config, c: AnchorsCommand, fmt: Format) -> Result<Exit> {
    let store = open(cfg).await?;
    match c {
        AnchorsCommand::Show => {
            let state = replay::refresh(&store, SNAPSHOT_EVERY).await?;
            let recorded = state.objects.anchor_attribute.clone();
            let pinned = cfg.source.as_ref().and_then(|s| s.anchor.clone());
            let owned = state.ledger.owned().count();
            let history = &state.objects.anchor_history;
            match fmt {
                Format::Json => emit_json(&json!({
                    "recorded": recorded,
                    "pinned": pinned,
                    "owned": owned,
                    "history": history.iter().map(|h| json!({
                        "seq": h.at.seq,
                        "recorded_at": time(h.at.at_us),
                        "instance": h.instance,
                        "from": h.from,
                        "to": h.to,
                        "migrated": h.migrated,
                        "rekeyed": h.rekeyed,
                        "unpaired": h.unpaired,
                    })).collect::<Vec<_>>(),
                }))?,
                Format::Table | Format::Csv => {
                    let mut out = format!(
                        "anchor attribute recorded: {}\npinned by [source] anchor: {}\nowned objects: {owned}\n",
                        recorded.as_deref().unwrap_or("none yet (the first import records it)"),
                        pinned.as_deref().unwrap_or("no"),
                    );
                    if !history.is_empty() {
                        let rows: Vec<Vec<String>> = history
                            .iter()
                            .map(|h| {
                                vec![
                                    h.at.seq.to_string(),
                                    time(h.at.at_us),
                                    h.instance.clone(),
                                    match (&h.from, h.migrated) {
                                        (Some(f), _) => format!("migrated {f} -> {}", h.to),
                                        (None, true) => format!("migrated -> {} (by DN)", h.to),
                                        (None, false) => format!("recorded {}", h.to),
                                    },
                                    h.rekeyed.to_string(),
                                    h.unpaired.to_string(),
                                ]
                            })
                            .collect();
                        out.push_str(&table(
                            &[
                                "SEQ", "RECORDED", "INSTANCE", "CHANGE", "RE-KEYED", "UNPAIRED",
                            ],
                            &rows,
                        ));
                    }
                    print(&out)?;
                }
            }
            Ok(Exit::Ok)
        }
        AnchorsCommand::Migrate {
            to,
            instance,
            allow_unpaired,
        } => {
            let instance = crate::cli::instance_or_host(instance)?;
            let r =
                crate::sync::anchor::migrate(cfg.source()?, &store, &to, &instance, allow_unpaired)
                    .await?;
            match fmt {
                Format::Json => emit_json(&r)?,
                Format::Table | Format::Csv if r.seq == 0 => print(&format!(
                    "the ledger is already keyed by {} ({} owned object(s)): nothing recorded\n",
                    r.to, r.unchanged
                ))?,
                Format::Table | Format::Csv => {
                    let mut out = format!(
                        "anchors migrated from {} to {} (seq {}): {} owned object(s) re-keyed, {} \
                         unchanged, {} deleted in the source left as they are; the next import \
                         is full\n",
                        r.from.as_deref().unwrap_or("(none recorded)"),
                        r.to,
                        r.seq,
                        r.rekeyed,
                        r.unchanged,
                        r.deleted_in_source,
                    );
                    if !r.unpaired.is_empty() {
                        let rows: Vec<Vec<String>> = r
                            .unpaired
                            .iter()
                            .map(|u| vec![u.anchor.clone(), u.dn.clone(), u.why.clone()])
                            .collect();
                        out.push_str("left under their old anchors (--allow-unpaired):\n");
                        out.push_str(&table(&["ANCHOR", "DN", "WHY"], &rows));
                    }
                    print(&out)?;
                }
            }
            Ok(Exit::Ok)
        }
    }
}

async fn deletions(store: &AnyStore, c: DeletionsCommand, fmt: Format) -> Result<Exit> {
    let state = crate::project::replay::refresh(store, 10_000).await?;
    match c {
        DeletionsCommand::Show => {
            // A held entry is an owned anchor, or a duplicate `ANCHOR@TARGET_ID` (reconcile):
            // its kind, name and target id.
            let about = |key: &str| -> (Option<&'static str>, String, Option<String>) {
                if let Some(l) = state.ledger.entries.get(key) {
                    let name = crate::target::ledger_name(&state.ledger, key);
                    return (Some(l.kind.as_str()), name, Some(l.target_id.clone()));
                }
                match key.split_once('@') {
                    Some((anchor, id)) => (
                        state.ledger.entries.get(anchor).map(|l| l.kind.as_str()),
                        format!(
                            "duplicate of {}",
                            crate::target::ledger_name(&state.ledger, anchor)
                        ),
                        Some(id.to_string()),
                    ),
                    None => (None, String::new(), None),
                }
            };
            let plans: Vec<serde_json::Value> = state
                .guard
                .plans
                .iter()
                .map(|(h, p)| {
                    json!({
                        "plan_hash": h,
                        "reason": p.reason,
                        "held_at": crate::output::time(p.held.at_us),
                        "approved": p.approved.map(|a| crate::output::time(a.at_us)),
                        "count": p.anchors.len(),
                        "deletions": p.anchors.iter().map(|a| {
                            let (kind, name, target_id) = about(a);
                            json!({
                                "anchor": a,
                                "name": name,
                                "kind": kind,
                                "target_id": target_id,
                            })
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            match fmt {
                Format::Json => emit_json(&json!(plans))?,
                Format::Table | Format::Csv => {
                    let mut out = String::new();
                    if plans.is_empty() {
                        out.push_str("no deletions held\n");
                    }
                    for (h, p) in &state.guard.plans {
                        out.push_str(&format!(
                            "plan {h}: {} deletion(s), held {} ({}){}\n",
                            p.anchors.len(),
                            crate::output::time(p.held.at_us),
                            p.reason,
                            match p.approved {
                                Some(a) => format!(", approved {}", crate::output::time(a.at_us)),
                                None => String::new(),
                            }
                        ));
                        let rows: Vec<Vec<String>> = p
                            .anchors
                            .iter()
                            .map(|a| {
                                let (kind, name, target_id) = about(a);
                                vec![
                                    a.clone(),
                                    kind.unwrap_or_default().to_string(),
                                    name,
                                    target_id.unwrap_or_default(),
                                ]
                            })
                            .collect();
                        out.push_str(&table(&["ANCHOR", "KIND", "NAME", "TARGET ID"], &rows));
                    }
                    print(&out)?;
                }
            }
            Ok(Exit::Ok)
        }
        DeletionsCommand::Approve { plan } => {
            let Some(p) = state.guard.plans.get(&plan) else {
                return Err(Error::BadInput(format!(
                    "no held deletions with plan hash {plan}: see `dirsync deletions show`"
                )));
            };
            if p.approved.is_none() {
                store
                    .append(
                        crate::log::store::Batch::new(vec![crate::log::NewEvent::new(
                            stream::GUARD,
                            host_name(),
                            crate::log::event::Event::DeletionsApproved(
                                crate::log::event::DeletionsApproved {
                                    plan_hash: plan.clone(),
                                    approved_by: std::env::var("USER").ok(),
                                },
                            ),
                        )])
                        .idempotency_key(format!("approve/{plan}")),
                    )
                    .await?;
            }
            match fmt {
                Format::Json => emit_json(&json!({"approved": plan, "count": p.anchors.len()}))?,
                Format::Table | Format::Csv => print(&format!(
                    "approved {} deletion(s) of plan {plan}: the next sync exports exactly these\n",
                    p.anchors.len()
                ))?,
            }
            Ok(Exit::Ok)
        }
    }
}

async fn handover(cfg: &Config, a: HandoverArgs, fmt: Format) -> Result<Exit> {
    use crate::playbook::runner;
    let store = open(cfg).await?;
    if let Some(HandoverCommand::Status) = a.command {
        let state = crate::project::replay::refresh(&store, 10_000).await?;
        let Some((id, h)) = state
            .handovers
            .last
            .as_ref()
            .and_then(|id| state.handovers.handovers.get(id).map(|h| (id, h)))
        else {
            return match fmt {
                Format::Json => emit_json(&json!(null)).map(|()| Exit::Ok),
                Format::Table | Format::Csv => print("no handover recorded\n")
                    .map(|()| Exit::Ok)
                    .map_err(Error::from),
            };
        };
        print_handover(&runner::report(id, h), fmt)?;
        return Ok(Exit::Ok);
    }
    let opts = runner::HandoverOptions {
        from: a.from.unwrap_or_default(),
        to: a.to.unwrap_or_default(),
        playbook: a.playbook.unwrap_or_else(|| runner::default_playbook(cfg)),
        dry_run: a.dry_run,
    };
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    let say = |l: &str| {
        if fmt == Format::Table {
            bar.suspend(|| println!("{l}"));
        } else {
            bar.suspend(|| eprintln!("{l}"));
        }
    };
    let r = runner::handover(cfg, &store, &opts, &bar, &say).await;
    bar.finish_and_clear();
    print_handover(&r?, fmt)?;
    Ok(Exit::Ok)
}

fn print_handover(r: &crate::playbook::runner::HandoverReport, fmt: Format) -> Result<()> {
    match fmt {
        Format::Json => emit_json(&serde_json::to_value(r).map_err(Error::store)?),
        Format::Table | Format::Csv => {
            let mut out = format!(
                "handover {} ({} -> {}, playbook {}): {}\n",
                r.handover_id, r.from, r.to, r.playbook, r.status
            );
            let rows: Vec<Vec<String>> = r
                .steps
                .iter()
                .map(|s| {
                    vec![
                        s.step.to_string(),
                        s.action.clone(),
                        s.state.clone(),
                        s.started.clone().unwrap_or_default(),
                        s.finished.clone().unwrap_or_default(),
                        crate::playbook::runner::brief(&s.detail)
                            .trim()
                            .trim_start_matches('(')
                            .trim_end_matches(')')
                            .to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["STEP", "ACTION", "STATE", "STARTED", "FINISHED", "DETAIL"],
                &rows,
            ));
            let s = &r.summary;
            if r.status == "dry-run" {
                return print(&out).map_err(Error::from);
            }
            out.push_str(&format!(
                "\nobjects matched: {}  duplicates avoided: {}  deletions caught by the old cursor: {}  deletions caught by reconciliation: {}\n",
                s.matched, s.duplicates_avoided, s.deletions_by_old_cursor, s.deletions_by_reconciliation
            ));
            print(&out).map_err(Error::from)
        }
    }
}

// ---- audit and replay history (issue 6) ----

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

async fn audit_cmd(cfg: &Config, c: crate::cli::AuditCommand, fmt: Format) -> Result<Exit> {
    use crate::audit::{gaps, missed};
    use crate::cli::AuditCommand;
    let store = open(cfg).await?;
    let now = Utc::now().timestamp_micros();
    match c {
        AuditCommand::MissedDeletes {
            fail_if_any,
            from_log,
            instance,
        } => {
            let before = replay::refresh(&store, SNAPSHOT_EVERY).await?;
            // What could reveal a deletion is judged on the cursors as they were before the
            // fresh import moved one of them.
            let cursors = before.cursors.clone();
            let mut fresh = serde_json::Value::Null;
            let state = if from_log {
                before
            } else {
                if cfg.source.is_none() {
                    return Err(Error::Config(
                        "no [source] section to read fresh evidence from: use --from-log for the log's view"
                            .into(),
                    ));
                }
                let opts = crate::sync::export::SyncOptions {
                    instance: crate::cli::instance_or_host(instance)?,
                    full: true,
                    staging: true,
                    dry_run: false,
                    take_over: false,
                    stop: None,
                    wait_for_cycle: None,
                };
                let bar = indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr(),
                );
                let r = crate::sync::export::sync(cfg, &store, &opts, &bar).await;
                bar.finish_and_clear();
                let r = r?;
                fresh = json!({"instance": r.instance, "run_id": r.run_id, "seen": r.import.seen,
                    "deleted": r.import.deleted, "left_scope": r.import.left_scope});
                if fmt != Format::Json {
                    eprintln!(
                        "dirsync: fresh evidence: full import by {} (run {}): {} seen, {} deleted, {} left scope",
                        r.instance, r.run_id, r.import.seen, r.import.deleted, r.import.left_scope
                    );
                }
                replay::refresh(&store, SNAPSHOT_EVERY).await?
            };
            let list = missed::missed_deletes(&state, &cursors, now);
            // The process ends after printing: freeing a large state piece by piece would
            // only cost time (seconds for a million objects).
            let state = std::mem::ManuallyDrop::new(state);
            let rows: Vec<Vec<String>> = list.iter().map(|m| m.row()).collect();
            let v = json!({
                "seq": state.seq,
                "evidence": if from_log { "log" } else { "full-import" },
                "fresh_import": fresh,
                "count": list.len(),
                "missed": list.iter().map(|m| m.json()).collect::<Vec<_>>(),
            });
            if fmt == Format::Table && list.is_empty() {
                print(&format!(
                    "no missed deletions as of seq {}: every deletion seen in the source has reached the target\n",
                    state.seq
                ))?;
            } else {
                emit_rows(fmt, &missed::HEADERS, &rows, &v)?;
            }
            Ok(if fail_if_any && !list.is_empty() {
                Exit::Found
            } else {
                Exit::Ok
            })
        }
        AuditCommand::Gaps {
            longer_than,
            fail_if_any,
        } => {
            let min = match longer_than {
                Some(s) => humantime::parse_duration(&s)
                    .map_err(|e| Error::BadInput(format!("--longer-than `{s}`: {e}")))?,
                None => cfg.sync.interval * 2,
            };
            let state = replay::refresh(&store, SNAPSHOT_EVERY).await?;
            let min_us = i64::try_from(min.as_micros()).unwrap_or(i64::MAX);
            let report = gaps::gaps(&state, now, min_us);
            let v = serde_json::to_value(&report).map_err(Error::store)?;
            emit_rows(fmt, &gaps::HEADERS, &report.rows(), &v)?;
            if fmt == Format::Table {
                print(&match report.tombstone_lifetime_days {
                    Some(d) => format!("\ntombstone lifetime: {d} days\n"),
                    None => "\ntombstone lifetime: unknown (the source did not say)\n".into(),
                })?;
            }
            Ok(if fail_if_any && report.flagged() {
                Exit::Found
            } else {
                Exit::Ok
            })
        }
        AuditCommand::Drift { fail_if_any } => {
            let state = replay::refresh(&store, SNAPSHOT_EVERY).await?;
            let report = crate::audit::drift::drift(&state, cfg.sync.reconcile_target);
            let v = serde_json::to_value(&report).map_err(Error::store)?;
            if fmt == Format::Table && report.reconciles.is_empty() {
                print("the target was never reconciled: `dirsync sync --full` reads it whole\n")?;
            } else {
                emit_rows(fmt, &crate::audit::drift::HEADERS, &report.rows(), &v)?;
            }
            if fmt == Format::Table {
                if let Some(due) = &report.next_due {
                    print(&format!("\nnext reconcile due: {due}\n"))?;
                }
            }
            Ok(if fail_if_any && report.found_any() {
                Exit::Found
            } else {
                Exit::Ok
            })
        }
    }
}

async fn history_cmd(cfg: &Config, a: ReplayArgs, fmt: Format) -> Result<Exit> {
    use crate::audit::history;
    let store = open(cfg).await?;
    if let Some(points) = &a.diff {
        let [from, to] = points.as_slice() else {
            return Err(Error::BadInput("--diff takes two points: A B".into()));
        };
        let (from, to) = (parse_until(from)?, parse_until(to)?);
        let sa = replay::state_at(&store, from, None).await?;
        let sb = replay::state_at(&store, to, None).await?;
        let d = history::diff(&sa, &sb);
        let v = serde_json::to_value(&d).map_err(Error::store)?;
        if fmt == Format::Table {
            print(&format!(
                "changes from seq {} to seq {}\n",
                d.from_seq, d.to_seq
            ))?;
        }
        emit_rows(fmt, &history::DIFF_HEADERS, &d.rows(), &v)?;
        return Ok(Exit::Ok);
    }
    if let Some(path) = &a.what_if {
        let other = Config::load(path)?;
        let src = other.source()?;
        let scope = crate::sync::scope::Scope::new(&src.base_dn, &src.include, &src.exclude);
        let state = replay::refresh(&store, SNAPSHOT_EVERY).await?;
        let w = history::what_if(&state, &scope, src.kind);
        let v = serde_json::to_value(&w).map_err(Error::store)?;
        if fmt == Format::Table {
            print(&format!(
                "under {}: {} would leave the target, {} join, {} change, {} unmappable (log as of seq {})\n",
                path.display(),
                w.leave.len(),
                w.join.len(),
                w.change.len(),
                w.unmappable.len(),
                state.seq
            ))?;
        }
        emit_rows(fmt, &history::WHAT_IF_HEADERS, &w.rows(), &v)?;
        return Ok(Exit::Ok);
    }
    let instance = crate::cli::instance_or_host(a.instance.clone())?;
    to_target(cfg, &store, &instance, a.dry_run, fmt).await
}

/// `replay --to-target`: record that the target is empty (fenced like an export), then
/// export what the log holds through the normal plan, guard and fencing.
async fn to_target(
    cfg: &Config,
    store: &AnyStore,
    instance: &str,
    dry_run: bool,
    fmt: Format,
) -> Result<Exit> {
    use crate::log::event::{stream, TargetReset};
    use crate::target::Target;
    let target = crate::target::AnyTarget::from_config(cfg.target()?)?;
    let source_kind = cfg.source()?.kind;
    let reset = Event::TargetReset(TargetReset {
        reason: format!("replay --to-target by {instance}: rebuild an empty target from the log"),
    });
    let state = replay::refresh(store, SNAPSHOT_EVERY).await?;
    if dry_run {
        let mut s = std::sync::Arc::unwrap_or_clone(state);
        let meta = crate::project::Meta {
            seq: s.seq + 1,
            instance,
            recorded_at_us: Utc::now().timestamp_micros(),
        };
        s.apply(&meta, &reset);
        let p = crate::sync::plan::plan(&s, source_kind, None);
        let mut rows: Vec<Vec<String>> = p
            .new
            .iter()
            .map(|(a, m)| {
                vec![
                    "create".into(),
                    m.kind().as_str().into(),
                    a.clone(),
                    m.name().into(),
                    String::new(),
                ]
            })
            .collect();
        rows.extend(p.unmappable.iter().map(|(a, why)| {
            vec![
                "unmappable".into(),
                String::new(),
                a.clone(),
                String::new(),
                why.clone(),
            ]
        }));
        let v = json!({"dry_run": true, "create": p.new.len(), "unmappable": p.unmappable.len(),
            "plan": rows.iter().map(|r| json!({"op": r[0], "kind": r[1], "anchor": r[2], "name": r[3], "detail": r[4]})).collect::<Vec<_>>()});
        emit_rows(fmt, &["OP", "KIND", "ANCHOR", "NAME", "DETAIL"], &rows, &v)?;
        return Ok(Exit::Ok);
    }
    target.probe().await?;
    let mut remote = target.list(crate::log::event::ObjectKind::User).await?;
    remote.extend(target.list(crate::log::event::ObjectKind::Group).await?);
    let foreign = crate::audit::history::foreign_objects(&remote, &state);
    if !foreign.is_empty() {
        let names: Vec<&str> = foreign.iter().take(5).map(|r| r.name.as_str()).collect();
        return Err(Error::Refused(format!(
            "the target is not a fresh one: {} object(s) carry anchors the source no longer has ({}{}); a rebuild would leave them there unowned. `dirsync sync` keeps an existing target in step",
            foreign.len(),
            names.join(", "),
            if foreign.len() > 5 { ", ..." } else { "" }
        )));
    }
    // The reset is recorded only by the relationship's holder (or when nobody holds it):
    // the append expects the relationship stream's version it checked.
    let version = store.stream_version(stream::RELATIONSHIP).await?;
    let state = replay::advance(store, state).await?;
    if let Some(h) = &state.relationship.holder {
        if h != instance {
            return Err(Error::Fenced(format!(
                "{h} holds the sync relationship (epoch {}); {instance} may not rebuild the target",
                state.relationship.epoch
            )));
        }
    }
    let batch = Batch::new(vec![NewEvent::new(stream::TARGET, instance, reset)])
        .expect(stream::RELATIONSHIP, Expected::Exactly(version));
    match store.append(batch).await {
        Err(Error::Conflict { .. }) => {
            return Err(Error::Fenced(
                "the sync relationship changed while recording the reset; nothing exported".into(),
            ))
        }
        r => r?,
    };
    let opts = crate::sync::export::ExportOptions {
        instance: instance.to_string(),
        source_kind,
        threshold: cfg.sync.deletion_threshold,
        take_over: false,
    };
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    let r = crate::sync::export::export_log(store, &target, &opts, &bar).await;
    bar.finish_and_clear();
    let r = r?;
    match fmt {
        Format::Json => emit_json(&r)?,
        _ => print(&sync_table(&r))?,
    }
    Ok(r.exit())
}

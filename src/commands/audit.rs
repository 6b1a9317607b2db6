use super::*;

pub(super) async fn audit_cmd(
    cfg: &Config,
    c: crate::cli::AuditCommand,
    fmt: Format,
) -> Result<Exit> {
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
            let before = projection::refresh(&store, SNAPSHOT_EVERY).await?;
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
                let bar = crate::output::spinner("full import for the audit");
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
                projection::refresh(&store, SNAPSHOT_EVERY).await?
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
            let state = projection::refresh(&store, SNAPSHOT_EVERY).await?;
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
            let state = projection::refresh(&store, SNAPSHOT_EVERY).await?;
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

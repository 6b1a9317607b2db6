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
            from_log: _,
            refresh,
            instance,
        } => {
            // The webhook's secret is read before anything (exit 2 when unset). The audit's
            // own findings record nothing: a delivery's outcome is said on stderr.
            let notifier = Notifier::start(cfg, notify::Record::Stderr)?;
            let fresh_as = instance.clone().filter(|_| refresh);
            let bar = crate::output::spinner("audit");
            let audit =
                crate::audit::fresh::missed_deletes(cfg, &store, fresh_as.as_deref(), &bar, now)
                    .await;
            bar.finish_and_clear();
            let audit = audit?;
            if let (Some(f), false) = (&audit.fresh, fmt == Format::Json) {
                eprintln!(
                    "dirsync: fresh evidence: full import by {} (run {}): {} seen, {} deleted, {} left scope",
                    f.instance, f.run_id, f.seen, f.deleted, f.left_scope
                );
            }
            let fresh = output::json_value(&audit.fresh).map_err(Error::store)?;
            let list = audit.missed;
            let as_of = audit.as_of;
            // Told only of deletions no holder's next cycle would export (`missed`); the
            // pending ones are on their way.
            let told: Vec<&str> = list
                .iter()
                .filter(|m| m.status == missed::Status::Missed)
                .map(|m| m.anchor.as_str())
                .collect();
            if !told.is_empty() {
                notifier.send(Notification::new(
                    NotifyEvent::MissedDeletionsFound,
                    &crate::cli::instance_or_host(instance)?,
                    json!({"count": told.len(), "pending": list.len() - told.len(),
                           "seq": audit.state.seq,
                           "evidence": if refresh { "full-import" } else { "log" },
                           "anchors": told.iter().take(20).collect::<Vec<_>>()}),
                ));
            }
            notifier.finish().await;
            // The process ends after printing: freeing a large state piece by piece would
            // only cost time (seconds for a million objects).
            let state = std::mem::ManuallyDrop::new(audit.state);
            let missed_count = list
                .iter()
                .filter(|m| m.status == missed::Status::Missed)
                .count();
            let rows: Vec<Vec<String>> = list.iter().map(|m| m.row()).collect();
            let v = json!({
                "seq": state.seq,
                "as_of": as_of.json(),
                "evidence": if refresh { "full-import" } else { "log" },
                "fresh_import": fresh,
                "count": list.len(),
                "missed_count": missed_count,
                "pending_count": list.len() - missed_count,
                "missed": list.iter().map(|m| m.json()).collect::<Vec<_>>(),
            });
            if fmt == Format::Table {
                print(&format!("{}\n", as_of.line()))?;
            }
            if fmt == Format::Table && list.is_empty() {
                print(&format!(
                    "no missed deletions as of seq {}: every deletion the log holds has reached the target\n",
                    state.seq
                ))?;
            } else {
                emit_rows(fmt, &missed::HEADERS, &rows, &v)?;
            }
            Ok(if fail_if_any && missed_count > 0 {
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
            let state = projection::current(&store).await?;
            let min_us = i64::try_from(min.as_micros()).unwrap_or(i64::MAX);
            let report = gaps::gaps(&state, now, min_us);
            let v = output::json_value(&report).map_err(Error::store)?;
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
            let state = projection::current(&store).await?;
            let report = crate::audit::drift::drift(&state, cfg.sync.reconcile_target);
            let v = output::json_value(&report).map_err(Error::store)?;
            if fmt == Format::Table && report.reconciles.is_empty() {
                print("the target was never reconciled: `dirsync sync --full` reads it whole\n")?;
            } else {
                emit_rows(fmt, &crate::audit::drift::HEADERS, &report.rows(), &v)?;
            }
            if fmt == Format::Table {
                if let Some(due) = &report.next_due {
                    print(&format!(
                        "\nnext reconcile due: {}\n",
                        output::shown_str(due)
                    ))?;
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

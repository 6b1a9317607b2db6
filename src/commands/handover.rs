use super::*;

pub(super) async fn handover(cfg: &Config, a: HandoverArgs, fmt: Format) -> Result<Exit> {
    use crate::playbook::runner;
    let store = open(cfg).await?;
    if let Some(HandoverCommand::Status) = a.command {
        let (_, control) = projection::control(&store).await?;
        let Some((id, h)) = control
            .handovers
            .last
            .as_ref()
            .and_then(|id| control.handovers.handovers.get(id).map(|h| (id, h)))
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
    let notifier = Notifier::start(cfg, notify::Record::Log(store.clone()))?;
    let opts = runner::HandoverOptions {
        from: a.from.unwrap_or_default(),
        to: a.to.unwrap_or_default(),
        playbook: a.playbook,
        dry_run: a.dry_run,
    };
    let bar = crate::output::spinner("handover");
    let say = |l: &str| {
        if fmt == Format::Table {
            bar.suspend(|| println!("{l}"));
        } else {
            bar.suspend(|| eprintln!("{l}"));
        }
    };
    let r = runner::handover(cfg, &store, &opts, &bar, &say).await;
    bar.finish_and_clear();
    let told = match &r {
        Ok(h) if h.status == "completed" => Some(Notification::new(
            NotifyEvent::HandoverCompleted,
            &h.to,
            json!({"handover_id": h.handover_id, "from": h.from, "to": h.to,
                   "playbook": h.playbook, "summary": h.summary}),
        )),
        // Bad usage is the caller's to see, not a failed handover.
        Err(e) if e.exit() != Exit::BadInput => Some(Notification::new(
            NotifyEvent::HandoverFailed,
            &opts.to,
            json!({"from": opts.from, "to": opts.to, "error": e.to_string(),
                   "exit": e.exit() as i32}),
        )),
        _ => None,
    };
    if let Some(n) = told {
        notifier.send(n);
    }
    let printed = r.and_then(|r| print_handover(&r, fmt));
    // After the report: a slow receiver delays the exit, not the output.
    notifier.finish().await;
    printed.map(|()| Exit::Ok)
}

pub(super) fn print_handover(
    r: &crate::playbook::runner::HandoverReport,
    fmt: Format,
) -> Result<()> {
    match fmt {
        Format::Json => emit_json(&output::json_value(r).map_err(Error::store)?),
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
                        output::shown_str(s.started.as_deref().unwrap_or_default()),
                        output::shown_str(s.finished.as_deref().unwrap_or_default()),
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

use super::*;

pub(super) fn parse_until(s: &str) -> Result<Until> {
    parse_point("--until", s)
}

/// A point of the log given to `flag`: a sequence number or an RFC 3339 time.
pub(super) fn parse_point(flag: &str, s: &str) -> Result<Until> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Until::Seq(n));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| Until::Time(t.with_timezone(&Utc)))
        .map_err(|_| {
            Error::BadInput(format!(
                "{flag} `{s}` is neither a sequence number nor an RFC 3339 time"
            ))
        })
}

pub(super) async fn replay_cmd(store: &AnyStore, a: ReplayArgs, fmt: Format) -> Result<Exit> {
    let (head, _) = store.head().await?;
    let bar = output::progress(head, "replay");
    if a.verify {
        let r = projection::verify_projections(store, Some(&bar)).await;
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
    let state = projection::at(store, until, Some(&bar)).await;
    bar.finish_and_clear();
    let state = state?;
    print_state(&state, fmt)?;
    // The process ends now: freeing a large state piece by piece would only cost time.
    std::mem::forget(state);
    Ok(Exit::Ok)
}

pub(super) fn at(a: Option<&crate::project::At>) -> String {
    a.map_or_else(|| "-".to_string(), output::shown_at)
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
        .control
        .cursors
        .current
        .iter()
        .map(|(i, c)| vec![i.clone(), c.kind.clone(), at(Some(&c.at))])
        .collect();
    out.push_str("\ncursors\n");
    out.push_str(&table(&["INSTANCE", "KIND", "ADVANCED"], &rows));
    out.push_str(&format!(
        "\nsync relationship: {} (epoch {}, since {})\n",
        s.control.relationship.holder.as_deref().unwrap_or("none"),
        s.control.relationship.epoch,
        at(s.control.relationship.since.as_ref())
    ));
    print(&out)?;
    Ok(())
}

pub(super) async fn history_cmd(cfg: &Config, a: ReplayArgs, fmt: Format) -> Result<Exit> {
    use crate::audit::history;
    let store = open(cfg).await?;
    if let Some(points) = &a.diff {
        let [from, to] = points.as_slice() else {
            return Err(Error::BadInput("--diff takes two points: A B".into()));
        };
        let (from, to) = (parse_until(from)?, parse_until(to)?);
        let sa = projection::at(&store, from, None).await?;
        let sb = projection::at(&store, to, None).await?;
        let d = history::diff(&sa, &sb);
        let v = output::json_value(&d).map_err(Error::store)?;
        if fmt == Format::Table {
            print(&format!(
                "changes from seq {} to seq {}\n",
                d.from_seq, d.to_seq
            ))?;
        }
        emit_rows(fmt, &history::DIFF_HEADERS, &d.rows(), &v)?;
        if fmt == Format::Table {
            let totals: Vec<Vec<String>> = d.totals.iter().map(|t| t.row()).collect();
            print(&format!(
                "\ntotals\n{}",
                table(&history::TOTAL_HEADERS, &totals)
            ))?;
        }
        return Ok(Exit::Ok);
    }
    if let Some(path) = &a.what_if {
        let other = Config::load(path)?;
        let src = other.source()?;
        let scope = src.scope();
        let state = projection::current(&store).await?;
        let other_scope = src.effective();
        // What the log's objects were imported under: as recorded, else (a log from
        // before such records) as this configuration says.
        let under = match &state.objects.effective {
            Some(r) => r.event.scope.clone(),
            None => cfg.source()?.effective(),
        };
        let w = history::what_if_under(
            &state,
            &history::Other {
                scope: &scope,
                other: Some(&other_scope),
                under: Some(&under),
            },
            other.mapping()?,
        );
        let v = output::json_value(&w).map_err(Error::store)?;
        if fmt == Format::Table {
            if let Some(r) = &w.recorded {
                print(&format!(
                    "the log's objects were imported under the scope and mapping recorded at seq {} ({})\n",
                    r.at.seq,
                    output::shown(r.at.at_us)
                ))?;
            }
            print(&format!(
                "under {}: {} would leave the target, {} join, {} change, {} unmappable, {} unresolved reference(s) (log as of seq {})\n",
                path.display(),
                w.leave.len(),
                w.join.len(),
                w.change.len(),
                w.unmappable.len(),
                w.unresolved.len(),
                state.seq
            ))?;
        }
        emit_rows(fmt, &history::WHAT_IF_HEADERS, &w.rows(), &v)?;
        if fmt != Format::Json {
            // Said after the rows (and on stderr for CSV, which is rows only).
            for c in &w.cannot_evaluate {
                let line = format!("cannot evaluate: {}", c.why);
                if fmt == Format::Table {
                    print(&format!("{line}\n"))?;
                } else {
                    eprintln!("dirsync: {line}");
                }
            }
        }
        return Ok(Exit::Ok);
    }
    let instance = crate::cli::instance_or_host(a.instance.clone())?;
    to_target(cfg, &store, &instance, a.dry_run, fmt).await
}

/// `replay --to-target`: the library rebuilds (or, with --dry-run, plans) the target from
/// the log under the export's fencing; this prints it.
pub(super) async fn to_target(
    cfg: &Config,
    store: &AnyStore,
    instance: &str,
    dry_run: bool,
    fmt: Format,
) -> Result<Exit> {
    use crate::sync::rebuild::{rebuild, rebuild_plan, RebuildOptions};
    let target = crate::target::AnyTarget::from_config(cfg.target()?)?;
    let opts = RebuildOptions {
        instance: instance.to_string(),
        mapping: cfg.mapping()?.clone(),
        threshold: cfg.sync.deletion_threshold,
    };
    if dry_run {
        let state = projection::current(store).await?;
        let p = rebuild_plan(&state, &opts, Utc::now().timestamp_micros());
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
    let bar = crate::output::spinner("rebuilding the target");
    let r = rebuild(store, &target, &opts, &bar).await;
    bar.finish_and_clear();
    let r = r?;
    match fmt {
        Format::Json => emit_json(&r)?,
        _ => print(&sync_table(&r))?,
    }
    Ok(r.exit())
}

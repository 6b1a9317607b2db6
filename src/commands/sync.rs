use super::*;

pub(super) async fn sync(cfg: &Config, a: SyncArgs, fmt: Format) -> Result<Exit> {
    cfg.source()?;
    let store = open(cfg).await?;
    // The webhook's secret is read before anything is written (exit 2 when unset).
    let notifier = Notifier::start(cfg, notify::Record::Log(store.clone()))?;
    let opts = crate::sync::export::SyncOptions {
        instance: crate::cli::instance_or_host(a.instance)?,
        full: a.full,
        staging: a.staging,
        dry_run: a.dry_run,
        take_over: a.take_over,
        stop: None,
        wait_for_cycle: None,
        quiet: false,
    };
    let bar = crate::output::spinner("sync");
    let began_us = Utc::now().timestamp_micros();
    let r = crate::sync::export::sync(cfg, &store, &opts, &bar).await;
    bar.finish_and_clear();
    let outcome = crate::ops::Outcome::of(&r);
    let tell = matches!(
        outcome,
        crate::ops::Outcome::Held | crate::ops::Outcome::Fenced
    );
    if notifier.active() && tell && !opts.dry_run && !opts.staging {
        // Held deletions and fencing; failures in a row are counted by `dirsync run`.
        let control = projection::control(&store).await.ok();
        let control = control.as_ref().map(|(_, c)| c);
        for n in notify::after_cycle(&opts.instance, &r, control, began_us, 0, u32::MAX) {
            notifier.send(n);
        }
    }
    let printed = print_sync(cfg, r, fmt);
    // After the report: a slow receiver delays the exit, not the output.
    notifier.finish().await;
    printed
}

fn print_sync(
    cfg: &Config,
    r: Result<crate::sync::export::SyncReport>,
    fmt: Format,
) -> Result<Exit> {
    let r = r?;
    match fmt {
        Format::Json => emit_json(&r)?,
        Format::Table | Format::Csv => print(&sync_table(&r))?,
    }
    let said = match (&r.held_plan, &r.held_reason) {
        (Some(h), Some(why)) => Some(format!(
            "{} deletion(s) held{}: {why}. Review with `dirsync deletions show`, release with `dirsync deletions approve --plan {}`",
            r.held,
            if cfg.sync.hold == crate::config::Hold::All {
                ", nothing exported"
            } else {
                ""
            },
            crate::plan::plan::short_hash(h)
        )),
        // A dry run records no plan: there is nothing to approve yet.
        (None, Some(why)) => Some(format!(
            "would hold {} deletion(s): {why}. A sync records the list; `dirsync deletions show` then lists it for approval",
            r.held
        )),
        _ => None,
    };
    if let Some(said) = said {
        match fmt {
            // Exit 3 is an error to a script: one JSON object, like every error.
            Format::Json => eprintln!("{}", json!({"error": said, "exit": Exit::Held as u8})),
            Format::Table | Format::Csv => eprintln!("dirsync: {said}"),
        }
    }
    Ok(r.exit())
}

pub(super) fn sync_table(r: &crate::sync::export::SyncReport) -> String {
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
    if !i.config_changed.is_empty() {
        let parts: Vec<&str> = i.config_changed.iter().map(|p| p.label()).collect();
        out.push_str(&format!(
            "configuration changed since the last record: {} (recorded; applied to every object)\n",
            parts.join(", ")
        ));
    }
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
                    match &p.detail {
                        Some(d) => d.clone(),
                        None => p
                            .changes
                            .iter()
                            .map(|c| format!("{}: {}", c.attribute, c.change))
                            .collect::<Vec<_>>()
                            .join("; "),
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &["OP", "KIND", "ANCHOR", "NAME", "TARGET ID", "DETAIL"],
            &rows,
        ));
        // Totals: the plan's operations, and the updates' attributes.
        let mut ops: std::collections::BTreeMap<&str, u64> = Default::default();
        let mut attrs: std::collections::BTreeMap<&str, u64> = Default::default();
        for p in &r.plan {
            *ops.entry(p.op).or_default() += 1;
            for c in &p.changes {
                *attrs.entry(c.attribute.as_str()).or_default() += 1;
            }
        }
        let counts = |m: &std::collections::BTreeMap<&str, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("totals: {}\n", counts(&ops)));
        if !attrs.is_empty() {
            out.push_str(&format!("attributes updated: {}\n", counts(&attrs)));
        }
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
                "UNRESOLVED REFERENCES",
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
                r.unresolved_references.to_string(),
                r.duplicates_removed.to_string(),
            ]],
        ));
    }
    if r.disabled > 0 || r.awaiting_deletion > 0 {
        out.push_str(&format!(
            "\non_delete = \"disable\": {} user(s) set inactive this cycle; {} disabled user(s) awaiting deletion\n",
            r.disabled, r.awaiting_deletion
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

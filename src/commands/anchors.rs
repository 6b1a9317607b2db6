use super::*;

pub(super) async fn anchors(cfg: &Config, c: AnchorsCommand, fmt: Format) -> Result<Exit> {
    let store = open(cfg).await?;
    match c {
        AnchorsCommand::Show => {
            let state = projection::current(&store).await?;
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
                                    output::shown(h.at.at_us),
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

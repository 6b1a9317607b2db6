use super::*;

use crate::audit::report::{Chain, DeletionStage, Fact, Mark, Report};
use crate::log::store::HistoryQuery;

/// Every event of type `t` after `after`, through the history index.
async fn of_type(store: &AnyStore, t: &str, after: u64) -> Result<Vec<(StoredEvent, Event)>> {
    let q = HistoryQuery {
        event_type: Some(t.to_string()),
        ..Default::default()
    };
    let events = history_all(store, &q, after, u64::MAX).await?;
    events
        .into_iter()
        .map(|e| {
            let d = e.decode()?;
            Ok((e, d))
        })
        .collect()
}

/// `dirsync report --html FILE [--since TIME]`: read only (the projections' snapshot may
/// be refreshed, as any reading command does); the page is written whole or not at all.
pub(super) async fn report_cmd(
    cfg: &Config,
    file: &Path,
    since: Option<&str>,
    fmt: Format,
) -> Result<Exit> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::BadInput(format!(
            "--html {}: the directory {} does not exist; nothing written",
            file.display(),
            dir.display()
        )));
    }
    let since = since.map(|s| parse_point("--since", s)).transpose()?;
    let store = open(cfg).await?;
    let (head_seq, head_hash) = store.head().await?;
    let (after, since_us) = match since {
        None | Some(Until::Head) => (0, None),
        Some(Until::Seq(n)) => {
            let at = store.read(n.saturating_sub(1), 1).await?;
            (n, at.first().map(|e| e.recorded_at_us))
        }
        Some(Until::Time(t)) => {
            let us = t.timestamp_micros();
            (store.seq_at_or_before(us).await?, Some(us))
        }
    };
    let state = projection::refresh(&store, SNAPSHOT_EVERY).await?;
    let now = Utc::now().timestamp_micros();

    let mut modes = std::collections::HashMap::new();
    for (_, e) in of_type(&store, "SyncRunStarted", after).await? {
        if let Event::SyncRunStarted(s) = e {
            modes.insert(s.run_id, s.mode);
        }
    }
    let mut facts = Vec::new();
    let fact = |e: &StoredEvent, instance: &str, mark: Mark| Fact {
        seq: e.seq,
        at_us: e.recorded_at_us,
        instance: instance.to_string(),
        mark,
    };
    for t in [
        "SyncRunCompleted",
        "SyncRunFailed",
        "InstanceStopped",
        "InstanceStarted",
        "InstanceRetired",
        "SyncRelationshipEstablished",
    ] {
        for (s, e) in of_type(&store, t, after).await? {
            let f = match &e {
                // Runs that exported: staging runs close no gap.
                Event::SyncRunCompleted(c) => modes
                    .get(&c.run_id)
                    .is_none_or(|m| crate::project::EXPORTING_MODES.contains(&m.as_str()))
                    .then(|| fact(&s, &s.instance, Mark::SyncCompleted)),
                Event::SyncRunFailed(f) => {
                    Some(fact(&s, &s.instance, Mark::SyncFailed(f.error.clone())))
                }
                Event::InstanceStopped(_) => Some(fact(&s, &s.instance, Mark::Stopped)),
                Event::InstanceStarted(_) => Some(fact(&s, &s.instance, Mark::Started)),
                Event::InstanceRetired(_) => Some(fact(&s, &s.instance, Mark::Retired)),
                Event::SyncRelationshipEstablished(r) => {
                    Some(fact(&s, &r.holder, Mark::TookOver(r.epoch)))
                }
                _ => None,
            };
            facts.extend(f);
        }
    }
    facts.sort_by_key(|f| f.seq);

    let mut deletions = Vec::new();
    for (s, _) in of_type(&store, "ObjectDeleted", after).await? {
        deletions.push((s.recorded_at_us, DeletionStage::Seen, 1));
    }
    for (s, e) in of_type(&store, "DeletionsHeld", after).await? {
        if let Event::DeletionsHeld(h) = e {
            deletions.push((
                s.recorded_at_us,
                DeletionStage::Held,
                h.anchors.len() as u64,
            ));
        }
    }
    for (s, e) in of_type(&store, "DeletionsApproved", after).await? {
        if let Event::DeletionsApproved(a) = e {
            let n = state
                .guard
                .plans
                .get(&a.plan_hash)
                .map_or(0, |p| p.anchors.len() as u64);
            deletions.push((s.recorded_at_us, DeletionStage::Approved, n));
        }
    }
    for (s, e) in of_type(&store, "ExportApplied", after).await? {
        if let Event::ExportApplied(x) = e {
            if x.op == crate::log::event::ExportOp::Delete {
                deletions.push((s.recorded_at_us, DeletionStage::Exported, 1));
            }
        }
    }

    let min_us = i64::try_from((cfg.sync.interval * 2).as_micros()).unwrap_or(i64::MAX);
    let gaps = crate::audit::gaps::gaps(&state, now, min_us);
    let missed =
        crate::audit::missed::missed_deletes(&state, &state.cursors, now, cfg.sync.on_delete);
    let handovers: Vec<_> = state
        .handovers
        .handovers
        .iter()
        .filter(|(_, h)| h.started.seq > after)
        .map(|(id, h)| (id.clone(), h.clone()))
        .collect();
    let chain = match projection::verify_chain(&store, None).await {
        Ok(events) => Chain::Verified { events },
        Err(Error::ChainBroken { seq, reason }) => Chain::Broken { seq, reason },
        Err(e) => return Err(e),
    };
    let instances = state
        .instances
        .instances
        .iter()
        .map(|(n, r)| (n.clone(), format!("{:?}", r.status).to_lowercase()))
        .collect();
    let report = Report {
        store: store.describe(),
        generated_us: now,
        since_us,
        head_seq,
        head_hash: hex::encode(head_hash),
        chain,
        tombstone_lifetime_days: state.objects.tombstone_lifetime_days,
        instances,
        facts,
        gaps,
        handovers,
        deletions,
        missed,
    };
    let page = crate::audit::report::render(&report);
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    tmp.write_all(page.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(file).map_err(|e| Error::Io(e.error))?;
    let broken = matches!(report.chain, Chain::Broken { .. });
    match fmt {
        Format::Json => emit_json(&json!({
            "report": file.display().to_string(),
            "bytes": page.len(),
            "chain_verified": !broken,
            "head": {"seq": head_seq, "hash": report.head_hash},
            "missed": report.missed.len(),
        }))?,
        Format::Table | Format::Csv => print(&format!(
            "report written to {} ({} bytes): chain {}, {} missed or pending deletion(s)\n",
            file.display(),
            page.len(),
            if broken { "BROKEN" } else { "verified" },
            report.missed.len()
        ))?,
    }
    Ok(if broken { Exit::Found } else { Exit::Ok })
}

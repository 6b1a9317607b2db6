//! Reading the log through the history index for the audits that look at one object
//! (`object show`, `replay --anchor`) or at events of a few types (`report --html`): the
//! object's events, those of the anchors it was re-keyed from, and a key (anchor, DN,
//! userName or mail) resolved to the one object it names (the fold is
//! [`super::object`]'s); the facts of the report, by type (the page is
//! [`super::report`]'s).

use crate::error::{Error, Result};
use crate::log::event::Event;
use crate::log::store::HistoryQuery;
use crate::log::{AnyStore, Store, StoredEvent};
use crate::project::replay::{self, Until};

use super::report::{Chain, DeletionStage, Fact, Mark, Report};

use super::object::ObjectView;

/// Events read through the history index at a time.
const HISTORY_PAGE: u32 = 10_000;

/// Every event of `q` after `after`, page by page through the history index.
pub async fn history_all(
    store: &AnyStore,
    q: &HistoryQuery,
    mut after: u64,
    limit: u64,
) -> Result<Vec<StoredEvent>> {
    let mut out: Vec<StoredEvent> = Vec::new();
    while (out.len() as u64) < limit {
        let want = (limit - out.len() as u64).min(u64::from(HISTORY_PAGE)) as u32;
        let page = store.history(q, after, want).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == want as usize;
        out.extend(page);
        if !full {
            break;
        }
    }
    Ok(out)
}

/// The view of `anchor` as of `until` (the head when None): its events through the history
/// index (and those of the anchors it was re-keyed from), the target resets, and the
/// approvals of deletion lists it was held in.
pub async fn load_view(store: &AnyStore, anchor: &str, until: Option<u64>) -> Result<ObjectView> {
    let q = |anchor: Option<&str>, event_type: Option<&str>, until: Option<u64>| HistoryQuery {
        anchor: anchor.map(str::to_string),
        event_type: event_type.map(str::to_string),
        until,
    };
    let mut events: Vec<StoredEvent> =
        history_all(store, &q(Some(anchor), None, until), 0, u64::MAX).await?;
    // Re-keys: the old anchor's events before the migration are this object's too.
    let mut names = vec![anchor.to_string()];
    let mut i = 0;
    while i < events.len() {
        if events[i].event_type == "AnchorsMigrated" {
            if let Ok(Event::AnchorsMigrated(m)) = events[i].decode() {
                let seq = events[i].seq;
                for r in m.rekeyed {
                    if names.contains(&r.new) && !names.contains(&r.old) && names.len() < 16 {
                        let older =
                            history_all(store, &q(Some(&r.old), None, Some(seq - 1)), 0, u64::MAX)
                                .await?;
                        names.push(r.old);
                        events.extend(older);
                    }
                }
            }
        }
        i += 1;
    }
    events.extend(history_all(store, &q(None, Some("TargetReset"), until), 0, u64::MAX).await?);
    let mut held = Vec::new();
    let mut decoded = Vec::with_capacity(events.len());
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    for e in events {
        let d = e.decode()?;
        if let Event::DeletionsHeld(h) = &d {
            held.push(h.plan_hash.clone());
        }
        decoded.push((e, d));
    }
    if !held.is_empty() {
        let first = decoded.iter().map(|(e, _)| e.seq).min().unwrap_or(0);
        for e in history_all(
            store,
            &q(None, Some("DeletionsApproved"), until),
            first,
            u64::MAX,
        )
        .await?
        {
            let d = e.decode()?;
            if matches!(&d, Event::DeletionsApproved(a) if held.contains(&a.plan_hash)) {
                decoded.push((e, d));
            }
        }
        decoded.sort_by_key(|(e, _)| e.seq);
    }
    // The groups whose member lists it entered or left, by DN.
    let mut groups = std::collections::BTreeMap::new();
    for (_, e) in &decoded {
        if let Event::ObjectChanged(c) = e {
            if c.anchor != anchor && !groups.contains_key(&c.anchor) {
                let first = store
                    .history(&q(Some(&c.anchor), Some("ObjectImported"), until), 0, 1)
                    .await?;
                if let Some(Ok(Event::ObjectImported(i))) = first.first().map(|e| e.decode()) {
                    groups.insert(c.anchor.clone(), i.object.dn);
                }
            }
        }
    }
    Ok(super::object::fold(anchor, &decoded, &groups))
}

/// The one object `key` names (an anchor, a DN, a userName or a mail, in any case), as of
/// `until`. None known: exit 2 saying so; two or more: exit 2 listing them.
pub async fn resolve(store: &AnyStore, key: &str, until: Option<u64>) -> Result<ObjectView> {
    let candidates = store.anchors_named(key.trim()).await?;
    let mut views = Vec::with_capacity(candidates.len());
    for a in &candidates {
        let v = load_view(store, a, until).await?;
        if !v.timeline.is_empty() {
            views.push(v);
        }
    }
    if views.is_empty() {
        return Err(Error::BadInput(format!(
            "no object is known by `{}` (anchor, DN, userName or mail){}",
            key.escape_default(),
            until.map_or(String::new(), |s| format!(" as of seq {s}"))
        )));
    }
    // Objects that go by the key now win over those that went by it once.
    let now: Vec<usize> = (0..views.len())
        .filter(|&i| views[i].known_as(key))
        .collect();
    let pick: Vec<usize> = if now.is_empty() {
        (0..views.len()).collect()
    } else {
        now
    };
    if pick.len() > 1 {
        let list: Vec<String> = pick
            .iter()
            .map(|&i| {
                let v = &views[i];
                format!(
                    "{} ({}, {})",
                    v.anchor,
                    v.kind().map_or("?", |k| k.as_str()),
                    v.record
                        .as_ref()
                        .map_or("no source record", |r| r.dn.as_str())
                )
            })
            .collect();
        return Err(Error::BadInput(format!(
            "`{}` names {} objects: {}; give the anchor",
            key.escape_default(),
            list.len(),
            list.join("; ")
        )));
    }
    Ok(views.swap_remove(pick[0]))
}

/// Every event of type `t` after `after`, through the history index, decoded.
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

/// What `report --html` shows, gathered by type through the history index from `since`
/// (the whole log when None); `interval` is `[sync] interval` (gaps longer than two count).
pub async fn report(
    store: &AnyStore,
    since: Option<Until>,
    interval: std::time::Duration,
    on_delete: crate::config::OnDelete,
) -> Result<Report> {
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
    let state = replay::current(store).await?;
    let now = chrono::Utc::now().timestamp_micros();

    let mut modes = std::collections::HashMap::new();
    for (_, e) in of_type(store, "SyncRunStarted", after).await? {
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
        for (s, e) in of_type(store, t, after).await? {
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
    for (s, _) in of_type(store, "ObjectDeleted", after).await? {
        deletions.push((s.recorded_at_us, DeletionStage::Seen, 1));
    }
    for (s, e) in of_type(store, "DeletionsHeld", after).await? {
        if let Event::DeletionsHeld(h) = e {
            deletions.push((
                s.recorded_at_us,
                DeletionStage::Held,
                h.anchors.len() as u64,
            ));
        }
    }
    for (s, e) in of_type(store, "DeletionsApproved", after).await? {
        if let Event::DeletionsApproved(a) = e {
            let n = state
                .control
                .guard
                .plans
                .get(&a.plan_hash)
                .map_or(0, |p| p.anchors.len() as u64);
            deletions.push((s.recorded_at_us, DeletionStage::Approved, n));
        }
    }
    for (s, e) in of_type(store, "ExportApplied", after).await? {
        if let Event::ExportApplied(x) = e {
            if x.op == crate::log::event::ExportOp::Delete {
                deletions.push((s.recorded_at_us, DeletionStage::Exported, 1));
            }
        }
    }

    let min_us = i64::try_from((interval * 2).as_micros()).unwrap_or(i64::MAX);
    let gaps = crate::audit::gaps::gaps(&state, now, min_us);
    let missed =
        crate::audit::missed::missed_deletes(&state, &state.control.cursors, now, on_delete);
    let handovers: Vec<_> = state
        .control
        .handovers
        .handovers
        .iter()
        .filter(|(_, h)| h.started.seq > after)
        .map(|(id, h)| (id.clone(), h.clone()))
        .collect();
    let chain = match replay::verify_chain(store, None).await {
        Ok(events) => Chain::Verified { events },
        Err(Error::ChainBroken { seq, reason }) => Chain::Broken { seq, reason },
        Err(e) => return Err(e),
    };
    let instances = state
        .control
        .instances
        .instances
        .iter()
        .map(|(n, r)| (n.clone(), format!("{:?}", r.status).to_lowercase()))
        .collect();
    Ok(Report {
        store: store.describe(),
        generated_us: now,
        since_us,
        head_seq,
        head_hash: hex::encode(head_hash),
        chain,
        tombstone_lifetime_days: state.control.tombstone_lifetime_days,
        instances,
        facts,
        gaps,
        handovers,
        deletions,
        missed,
    })
}

use super::*;

use crate::audit::object::{self as view, ObjectView};
use crate::log::store::HistoryQuery;
use crate::project::At;

/// Events read through the history index at a time.
const HISTORY_PAGE: u32 = 10_000;

/// Every event of `q` after `after`, page by page through the history index.
pub(super) async fn history_all(
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
pub(super) async fn load_view(
    store: &AnyStore,
    anchor: &str,
    until: Option<u64>,
) -> Result<ObjectView> {
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
    Ok(view::fold(anchor, &decoded, &groups))
}

/// The one object `key` names (an anchor, a DN, a userName or a mail, in any case), as of
/// `until`. None known: exit 2 saying so; two or more: exit 2 listing them.
pub(super) async fn resolve(store: &AnyStore, key: &str, until: Option<u64>) -> Result<ObjectView> {
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

fn at_json(a: &At) -> serde_json::Value {
    json!({"seq": a.seq, "at": time(a.at_us)})
}

/// The mapped values of the object's source state under this configuration's mapping:
/// Ok(None) without a `[source]` section or for a deleted object.
fn mapped(cfg: &Config, v: &ObjectView) -> std::result::Result<Option<serde_json::Value>, String> {
    use crate::plan::mapping::Desired;
    let (Ok(mapping), Some(r)) = (cfg.mapping(), v.record.as_ref().filter(|r| r.live())) else {
        return Ok(None);
    };
    match mapping.map(&v.anchor, r) {
        Ok(Desired::User(u)) => Ok(serde_json::to_value(&u).ok()),
        Ok(Desired::Group {
            display_name,
            members,
        }) => Ok(Some(
            json!({"display_name": display_name, "members (anchors)": members}),
        )),
        Err(e) => Err(e.0),
    }
}

pub(super) fn view_json(cfg: &Config, v: &ObjectView, as_of: Option<u64>) -> serde_json::Value {
    let r = v.record.as_ref();
    let (mapped, unmappable) = match mapped(cfg, v) {
        Ok(m) => (m, None),
        Err(e) => (None, Some(e)),
    };
    json!({
        "anchor": v.anchor,
        "kind": v.kind().map(|k| k.as_str()),
        "as_of": as_of,
        "dn": r.map(|r| &r.dn),
        "live": r.is_some_and(|r| r.live()),
        "deletion": r.and_then(|r| r.deletion.as_ref()).map(|d| json!({
            "evidence": d.evidence, "seq": d.at.seq, "at": time(d.at.at_us), "instance": d.instance,
        })),
        "first_seen": r.map(|r| at_json(&r.first_seen)),
        "last_changed": r.map(|r| at_json(&r.last_changed)),
        "source": r.map(|r| &r.attrs),
        "members": r.map(|r| &r.members),
        "mapped": mapped,
        "unmappable": unmappable,
        "target": v.ledger.as_ref().map(|l| json!({
            "id": l.target_id,
            "origin": l.origin,
            "epoch": l.epoch,
            "owned_since": at_json(&l.owned_since),
            "last_export": at_json(&l.last_export),
            "deleted": l.deleted.as_ref().map(at_json),
            "state": l.state,
        })),
        "last_failure": v.failure.as_ref().map(|f| json!({
            "op": f.op, "status": f.status, "error": f.error, "seq": f.at.seq,
            "at": time(f.at.at_us), "in_a_row": f.count,
        })),
        "timeline": v.timeline,
    })
}

fn view_table(cfg: &Config, v: &ObjectView, as_of: Option<u64>) -> String {
    let r = v.record.as_ref();
    let mut out = format!(
        "object {} ({}){}\n",
        v.anchor,
        v.kind().map_or("?", |k| k.as_str()),
        as_of.map_or(String::new(), |s| format!(" as of seq {s}"))
    );
    let mut facts: Vec<Vec<String>> = Vec::new();
    let mut fact = |k: &str, val: String| facts.push(vec![k.to_string(), val]);
    match r {
        Some(r) => {
            fact("dn", r.dn.clone());
            fact(
                "state",
                match &r.deletion {
                    None => "live in the source".into(),
                    Some(d) => format!(
                        "gone from the source ({}) at {} by {}",
                        d.evidence.label(),
                        super::replay::at(Some(&d.at)),
                        d.instance
                    ),
                },
            );
            fact("first seen", super::replay::at(Some(&r.first_seen)));
            fact("last changed", super::replay::at(Some(&r.last_changed)));
        }
        None => fact("state", "no source record in the log".into()),
    }
    match &v.ledger {
        Some(l) => {
            fact(
                "target id",
                format!(
                    "{} ({}, epoch {}){}",
                    l.target_id,
                    format!("{:?}", l.origin).to_lowercase(),
                    l.epoch,
                    if l.deleted.is_some() {
                        ", deleted from the target"
                    } else {
                        ""
                    }
                ),
            );
            fact("owned since", super::replay::at(Some(&l.owned_since)));
            fact("last export", super::replay::at(Some(&l.last_export)));
        }
        None => fact("target id", "none (never exported)".into()),
    }
    if let Some(f) = &v.failure {
        fact(
            "last failure",
            format!(
                "{:?}{} at {}: {} ({} in a row)",
                f.op,
                f.status.map_or(String::new(), |s| format!(" {s}")),
                super::replay::at(Some(&f.at)),
                f.error,
                f.count
            ),
        );
    }
    out.push_str(&table(&["FACT", "VALUE"], &facts));
    if let Some(r) = r {
        let mut rows: Vec<Vec<String>> = r
            .attrs
            .iter()
            .map(|(k, vs)| vec![k.to_string(), crate::audit::show_values(Some(vs))])
            .collect();
        if !r.members.is_empty() {
            rows.push(vec![
                "(members)".into(),
                r.members.iter().cloned().collect::<Vec<_>>().join(", "),
            ]);
        }
        out.push_str(&format!("\nsource attributes ({})\n", rows.len()));
        out.push_str(&table(&["ATTRIBUTE", "VALUES"], &rows));
    }
    match mapped(cfg, v) {
        Ok(Some(m)) => {
            let rows: Vec<Vec<String>> = m
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            vec![
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_string),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push_str("\nmapped (this configuration)\n");
            out.push_str(&table(&["ATTRIBUTE", "VALUE"], &rows));
        }
        Ok(None) => {}
        Err(e) => out.push_str(&format!("\nmapped: unmappable: {e}\n")),
    }
    let rows: Vec<Vec<String>> = v
        .timeline
        .iter()
        .map(|t| {
            vec![
                t.seq.to_string(),
                t.at.clone(),
                t.instance.clone(),
                t.event.clone(),
                t.summary.clone(),
            ]
        })
        .collect();
    out.push_str(&format!("\ntimeline ({} events)\n", rows.len()));
    out.push_str(&table(
        &["SEQ", "AT", "INSTANCE", "EVENT", "SUMMARY"],
        &rows,
    ));
    out
}

/// `dirsync object show KEY` (and `replay --until X --anchor A`: `until` set).
pub(super) async fn object_show(
    cfg: &Config,
    store: &AnyStore,
    key: &str,
    until: Option<u64>,
    fmt: Format,
) -> Result<Exit> {
    let v = resolve(store, key, until).await?;
    match fmt {
        Format::Json => emit_json(&view_json(cfg, &v, until))?,
        Format::Table | Format::Csv => print(&view_table(cfg, &v, until))?,
    }
    Ok(Exit::Ok)
}

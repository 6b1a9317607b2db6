use super::*;

use crate::audit::lookup::resolve;
use crate::audit::object::ObjectView;
use crate::project::At;

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
                output::shown_str(&t.at),
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

use super::*;

use crate::plan::plan::short_hash;
use crate::sync::deletions::{self as held, Approval, HeldPlan};

pub(super) async fn deletions(store: &AnyStore, c: DeletionsCommand, fmt: Format) -> Result<Exit> {
    match c {
        DeletionsCommand::Show => show(store, fmt).await,
        DeletionsCommand::Approve { plan } => approve(store, &plan, fmt).await,
    }
}

async fn show(store: &AnyStore, fmt: Format) -> Result<Exit> {
    // The control projections, and the source objects and ledger entries of the held
    // lists only: not the directory.
    let (_, control) = projection::control(store).await?;
    let mut state = projection::state_of(store, &held::anchors(&control)).await?;
    state.control = control;
    let plans = held::plans(&state);
    if fmt == Format::Json {
        emit_json(&plans)?;
        return Ok(Exit::Ok);
    }
    print(&show_table(&plans))?;
    Ok(Exit::Ok)
}

/// `deletions show` for people: the held list with a row per deletion (or what became of
/// the last one), then the earlier lists.
fn show_table(plans: &[HeldPlan]) -> String {
    let mut out = String::new();
    let current = plans.iter().find(|p| p.current);
    match current {
        Some(p) if p.approved_us.is_none() => {
            out.push_str(&format!(
                "{} deletion(s) held since {} ({}); release exactly these with `dirsync deletions approve --plan {}`\n",
                p.count,
                output::shown(p.held_at_us),
                p.reason,
                short_hash(&p.plan_hash)
            ));
            let s = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let rows: Vec<Vec<String>> = p
                .deletions
                .iter()
                .map(|d| {
                    vec![
                        d.anchor.clone(),
                        d.kind.unwrap_or("-").to_string(),
                        s(&d.dn),
                        s(&d.display_name),
                        match &d.evidence_detail {
                            Some(x) => format!("{} ({x})", d.evidence),
                            None => d.evidence.clone(),
                        },
                        d.seen.as_ref().map_or("-".into(), |w| {
                            format!("{} (seq {}) by {}", output::shown(w.at_us), w.seq, w.by)
                        }),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["ANCHOR", "KIND", "DN", "DISPLAY NAME", "EVIDENCE", "SEEN"],
                &rows,
            ));
        }
        Some(HeldPlan {
            plan_hash,
            count,
            approved_us: Some(a),
            ..
        }) => out.push_str(&format!(
            "no deletions held: plan {} ({count} deletion(s)) was approved at {}; the next sync exports them\n",
            short_hash(plan_hash),
            output::shown(*a)
        )),
        Some(_) | None => out.push_str("no deletions held\n"),
    }
    let waiting = current.filter(|p| p.approved_us.is_none());
    let others: Vec<String> = plans
        .iter()
        .filter(|p| waiting.is_none_or(|w| w.plan_hash != p.plan_hash))
        .map(|p| {
            format!(
                "  plan {}: {} deletion(s), held {}, {}\n",
                short_hash(&p.plan_hash),
                p.count,
                output::shown(p.held_at_us),
                match p.approved_us {
                    Some(a) => format!("approved {}", output::shown(a)),
                    None => "superseded (no longer the held list)".into(),
                }
            )
        })
        .collect();
    if !others.is_empty() {
        out.push_str("\nearlier lists:\n");
        out.extend(others);
    }
    out
}

/// Approve the held list that stands, named by a unique prefix of its hash.
async fn approve(store: &AnyStore, prefix: &str, fmt: Format) -> Result<Exit> {
    let approval = held::approve(store, prefix, &host_name(), std::env::var("USER").ok()).await?;
    match (fmt, approval) {
        (Format::Json, Approval::Approved { hash, count } | Approval::Already { hash, count, .. }) => {
            emit_json(&json!({"approved": hash, "count": count}))?
        }
        (_, Approval::Already { hash, count, at }) => print(&format!(
            "plan {} ({count} deletion(s)) was approved at {} already\n",
            short_hash(&hash),
            output::shown(at.at_us)
        ))?,
        (_, Approval::Approved { hash, count }) => print(&format!(
            "approved {count} deletion(s) of plan {}: the next sync exports exactly these while they are its deletions (a different list is held for its own approval)\n",
            short_hash(&hash)
        ))?,
    }
    Ok(Exit::Ok)
}

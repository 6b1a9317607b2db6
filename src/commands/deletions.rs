use super::*;

use crate::plan::plan::{find_plan, short_hash, PlanPrefix, MIN_PLAN_PREFIX};
use crate::project::HeldDeletions;

/// Where a held list stands.
fn plan_status(state: &State, hash: &str, p: &HeldDeletions) -> &'static str {
    match (p.approved, state.guard.current.as_deref() == Some(hash)) {
        (Some(_), _) => "approved",
        (None, true) => "held",
        (None, false) => "superseded",
    }
}

/// One held deletion as `deletions show` gives it: what the target object is, and how and
/// when the source's deletion was seen. A key is an owned anchor, or a duplicate
/// `ANCHOR@TARGET_ID` (reconcile).
fn deletion_json(state: &State, key: &str) -> serde_json::Value {
    let (anchor, duplicate) = match state.ledger.entries.get(key) {
        Some(_) => (key, None),
        None => match key.split_once('@') {
            Some((anchor, id)) => (anchor, Some(id)),
            None => (key, None),
        },
    };
    let l = state.ledger.entries.get(anchor);
    let rec = state.objects.objects.get(anchor);
    let mapped = l.and_then(|l| l.state.as_ref());
    let display_name = mapped.and_then(|m| match m {
        crate::target::Mapped::User(u) => u.display_name.as_deref(),
        crate::target::Mapped::Group(g) => Some(g.display_name.as_str()),
    });
    let deletion = rec.and_then(|r| r.deletion.as_ref());
    let (evidence, detail) = match (duplicate, deletion) {
        (Some(id), _) => (
            "duplicate".to_string(),
            Some(format!(
                "target object {id} carries this anchor; the ledger owns {}",
                l.map(|l| l.target_id.as_str()).unwrap_or("another")
            )),
        ),
        (None, Some(d)) => (d.evidence.label().to_string(), d.evidence.detail()),
        (None, None) => ("not-in-source".to_string(), None),
    };
    json!({
        "anchor": anchor,
        "kind": l.map(|l| l.kind.as_str()),
        "dn": rec.map(|r| r.dn.as_str()),
        "name": match duplicate {
            Some(_) => Some(format!("duplicate of {}", mapped.map_or("", |m| m.name()))),
            None => mapped.map(|m| m.name().to_string()),
        },
        "display_name": display_name,
        "target_id": duplicate.or(l.map(|l| l.target_id.as_str())),
        "evidence": evidence,
        "evidence_detail": detail,
        "deleted_at": deletion.and_then(|d| d.evidence.deleted_at_us()).map(time),
        "seen": deletion.map(|d| json!({"at": time(d.at.at_us), "seq": d.at.seq, "by": d.instance})),
    })
}

pub(super) async fn deletions(store: &AnyStore, c: DeletionsCommand, fmt: Format) -> Result<Exit> {
    match c {
        DeletionsCommand::Show => show(store, fmt).await,
        DeletionsCommand::Approve { plan } => approve(store, &plan, fmt).await,
    }
}

async fn show(store: &AnyStore, fmt: Format) -> Result<Exit> {
    let state = projection::refresh(store, SNAPSHOT_EVERY).await?;
    // The list that stands first, then the others, latest first.
    let mut plans: Vec<(&String, &HeldDeletions)> = state.guard.plans.iter().collect();
    plans.sort_by_key(|(h, p)| {
        (
            state.guard.current.as_ref() != Some(*h),
            std::cmp::Reverse(p.held.seq),
        )
    });
    let json_plans: Vec<serde_json::Value> = plans
        .iter()
        .map(|(h, p)| {
            json!({
                "plan_hash": h,
                "status": plan_status(&state, h, p),
                "current": state.guard.current.as_ref() == Some(*h),
                "reason": p.reason,
                "held_at": time(p.held.at_us),
                "approved": p.approved.map(|a| time(a.at_us)),
                "count": p.anchors.len(),
                "deletions": p.anchors.iter().map(|a| deletion_json(&state, a)).collect::<Vec<_>>(),
            })
        })
        .collect();
    if fmt == Format::Json {
        emit_json(&json!(json_plans))?;
        return Ok(Exit::Ok);
    }
    let mut out = String::new();
    let approved_current = state.guard.current.as_ref().and_then(|h| {
        state
            .guard
            .plans
            .get(h)
            .and_then(|p| p.approved.map(|a| (h, p, a)))
    });
    match state.guard.waiting() {
        None => match approved_current {
            Some((h, p, a)) => out.push_str(&format!(
                "no deletions held: plan {} ({} deletion(s)) was approved at {}; the next sync exports them\n",
                short_hash(h),
                p.anchors.len(),
                output::shown(a.at_us)
            )),
            None => out.push_str("no deletions held\n"),
        },
        Some((h, p)) => {
            out.push_str(&format!(
                "{} deletion(s) held since {} ({}); release exactly these with `dirsync deletions approve --plan {}`\n",
                p.anchors.len(),
                output::shown(p.held.at_us),
                p.reason,
                short_hash(h)
            ));
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
            let rows: Vec<Vec<String>> = p
                .anchors
                .iter()
                .map(|a| {
                    let d = deletion_json(&state, a);
                    vec![
                        s(&d["anchor"]),
                        s(&d["kind"]),
                        s(&d["dn"]),
                        s(&d["display_name"]),
                        match d["evidence_detail"].as_str() {
                            Some(x) => format!("{} ({x})", s(&d["evidence"])),
                            None => s(&d["evidence"]),
                        },
                        match d["seen"].is_null() {
                            true => "-".into(),
                            false => format!(
                                "{} (seq {}) by {}",
                                output::shown_str(&s(&d["seen"]["at"])),
                                d["seen"]["seq"],
                                s(&d["seen"]["by"])
                            ),
                        },
                    ]
                })
                .collect();
            out.push_str(&table(
                &["ANCHOR", "KIND", "DN", "DISPLAY NAME", "EVIDENCE", "SEEN"],
                &rows,
            ));
        }
    }
    let others: Vec<String> = plans
        .iter()
        .filter(|(h, _)| state.guard.waiting().is_none_or(|(w, _)| w != *h))
        .map(|(h, p)| {
            format!(
                "  plan {}: {} deletion(s), held {}, {}\n",
                short_hash(h),
                p.anchors.len(),
                output::shown(p.held.at_us),
                match p.approved {
                    Some(a) => format!("approved {}", output::shown(a.at_us)),
                    None => "superseded (no longer the held list)".into(),
                }
            )
        })
        .collect();
    if !others.is_empty() {
        out.push_str("\nearlier lists:\n");
        out.extend(others);
    }
    print(&out)?;
    Ok(Exit::Ok)
}

/// Approve the held list that stands, named by a unique prefix of its hash. A list that no
/// longer stands (a later cycle held another, or none) is refused, naming the one that does:
/// approving it would release nothing.
async fn approve(store: &AnyStore, prefix: &str, fmt: Format) -> Result<Exit> {
    for _ in 0..3 {
        // The guard stream's version first, then the state: a hold recorded in between
        // fails the append below, and the approval is decided again.
        let version = store.stream_version(stream::GUARD).await?;
        let state = projection::refresh(store, SNAPSHOT_EVERY).await?;
        let hash = match find_plan(state.guard.plans.keys(), prefix) {
            PlanPrefix::Malformed => {
                return Err(Error::BadInput(format!(
                    "--plan `{prefix}`: give at least {MIN_PLAN_PREFIX} hex digits of the plan hash (`dirsync deletions show`)"
                )))
            }
            PlanPrefix::Unknown => {
                return Err(Error::BadInput(format!(
                    "no held deletions with a plan hash starting `{prefix}`: see `dirsync deletions show`"
                )))
            }
            PlanPrefix::Ambiguous(v) => {
                return Err(Error::BadInput(format!(
                    "--plan `{prefix}` names {} plans ({}): give more digits",
                    v.len(),
                    v.iter().map(|h| short_hash(h)).collect::<Vec<_>>().join(", ")
                )))
            }
            PlanPrefix::One(h) => h.to_string(),
        };
        let Some(p) = state.guard.plans.get(&hash) else {
            continue;
        };
        let count = p.anchors.len();
        if let Some(at) = p.approved {
            match fmt {
                Format::Json => emit_json(&json!({"approved": hash, "count": count}))?,
                Format::Table | Format::Csv => print(&format!(
                    "plan {} ({count} deletion(s)) was approved at {} already\n",
                    short_hash(&hash),
                    output::shown(at.at_us)
                ))?,
            }
            return Ok(Exit::Ok);
        }
        if state.guard.current.as_deref() != Some(hash.as_str()) {
            let now = match state.guard.waiting() {
                Some((c, cp)) => format!(
                    "the held list is plan {} ({} deletion(s), held {})",
                    short_hash(c),
                    cp.anchors.len(),
                    output::shown(cp.held.at_us)
                ),
                None => "no deletions are held now".into(),
            };
            return Err(Error::BadInput(format!(
                "plan {} is no longer the held list: {now}; nothing approved (see `dirsync deletions show`)",
                short_hash(&hash)
            )));
        }
        let batch = Batch::new(vec![NewEvent::new(
            stream::GUARD,
            host_name(),
            Event::DeletionsApproved(crate::log::event::DeletionsApproved {
                plan_hash: hash.clone(),
                approved_by: std::env::var("USER").ok(),
            }),
        )])
        .expect(stream::GUARD, Expected::Exactly(version));
        match store.append(batch).await {
            Ok(_) => {}
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
        match fmt {
            Format::Json => emit_json(&json!({"approved": hash, "count": count}))?,
            Format::Table | Format::Csv => print(&format!(
                "approved {count} deletion(s) of plan {}: the next sync exports exactly these while they are its deletions (a different list is held for its own approval)\n",
                short_hash(&hash)
            ))?,
        }
        return Ok(Exit::Ok);
    }
    Err(Error::BadInput(
        "the held deletions kept changing while approving; nothing approved: run it again".into(),
    ))
}

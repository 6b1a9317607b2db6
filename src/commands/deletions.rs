use super::*;

pub(super) async fn deletions(store: &AnyStore, c: DeletionsCommand, fmt: Format) -> Result<Exit> {
    let state = projection::refresh(store, SNAPSHOT_EVERY).await?;
    match c {
        DeletionsCommand::Show => {
            // A held entry is an owned anchor, or a duplicate `ANCHOR@TARGET_ID` (reconcile):
            // its kind, name and target id.
            let about = |key: &str| -> (Option<&'static str>, String, Option<String>) {
                if let Some(l) = state.ledger.entries.get(key) {
                    let name = crate::target::ledger_name(&state.ledger, key);
                    return (Some(l.kind.as_str()), name, Some(l.target_id.clone()));
                }
                match key.split_once('@') {
                    Some((anchor, id)) => (
                        state.ledger.entries.get(anchor).map(|l| l.kind.as_str()),
                        format!(
                            "duplicate of {}",
                            crate::target::ledger_name(&state.ledger, anchor)
                        ),
                        Some(id.to_string()),
                    ),
                    None => (None, String::new(), None),
                }
            };
            let plans: Vec<serde_json::Value> = state
                .guard
                .plans
                .iter()
                .map(|(h, p)| {
                    json!({
                        "plan_hash": h,
                        "reason": p.reason,
                        "held_at": crate::output::time(p.held.at_us),
                        "approved": p.approved.map(|a| crate::output::time(a.at_us)),
                        "count": p.anchors.len(),
                        "deletions": p.anchors.iter().map(|a| {
                            let (kind, name, target_id) = about(a);
                            json!({
                                "anchor": a,
                                "name": name,
                                "kind": kind,
                                "target_id": target_id,
                            })
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            match fmt {
                Format::Json => emit_json(&json!(plans))?,
                Format::Table | Format::Csv => {
                    let mut out = String::new();
                    if plans.is_empty() {
                        out.push_str("no deletions held\n");
                    }
                    for (h, p) in &state.guard.plans {
                        out.push_str(&format!(
                            "plan {h}: {} deletion(s), held {} ({}){}\n",
                            p.anchors.len(),
                            crate::output::shown(p.held.at_us),
                            p.reason,
                            match p.approved {
                                Some(a) => format!(", approved {}", crate::output::shown(a.at_us)),
                                None => String::new(),
                            }
                        ));
                        let rows: Vec<Vec<String>> = p
                            .anchors
                            .iter()
                            .map(|a| {
                                let (kind, name, target_id) = about(a);
                                vec![
                                    a.clone(),
                                    kind.unwrap_or_default().to_string(),
                                    name,
                                    target_id.unwrap_or_default(),
                                ]
                            })
                            .collect();
                        out.push_str(&table(&["ANCHOR", "KIND", "NAME", "TARGET ID"], &rows));
                    }
                    print(&out)?;
                }
            }
            Ok(Exit::Ok)
        }
        DeletionsCommand::Approve { plan } => {
            let Some(p) = state.guard.plans.get(&plan) else {
                return Err(Error::BadInput(format!(
                    "no held deletions with plan hash {plan}: see `dirsync deletions show`"
                )));
            };
            if p.approved.is_none() {
                store
                    .append(
                        crate::log::store::Batch::new(vec![crate::log::NewEvent::new(
                            stream::GUARD,
                            host_name(),
                            crate::log::event::Event::DeletionsApproved(
                                crate::log::event::DeletionsApproved {
                                    plan_hash: plan.clone(),
                                    approved_by: std::env::var("USER").ok(),
                                },
                            ),
                        )])
                        .idempotency_key(format!("approve/{plan}")),
                    )
                    .await?;
            }
            match fmt {
                Format::Json => emit_json(&json!({"approved": plan, "count": p.anchors.len()}))?,
                Format::Table | Format::Csv => print(&format!(
                    "approved {} deletion(s) of plan {plan}: the next sync exports exactly these\n",
                    p.anchors.len()
                ))?,
            }
            Ok(Exit::Ok)
        }
    }
}

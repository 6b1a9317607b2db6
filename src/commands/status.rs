use super::*;

use crate::audit::span;
use crate::audit::status::{self, Ask, StatusReport};

pub(super) async fn status(cfg: &Config, instance: Option<String>, fmt: Format) -> Result<Exit> {
    let store = open(cfg).await?;
    // The control projections, and the few objects quarantine candidates name: never the
    // whole state.
    let (seq, control) = projection::control(&store).await?;
    let candidates: Vec<String> = control
        .suspects
        .candidates()
        .map(|(a, _)| a.clone())
        .collect();
    let objects = projection::state_of(&store, &candidates).await?;
    if let Some(i) = &instance {
        if !control.instances.instances.contains_key(i) {
            return Err(Error::BadInput(format!(
                "the log knows no instance `{i}` (see `dirsync instance list`)"
            )));
        }
    }
    let heartbeats = store.heartbeats().await?;
    let idle = store.idle_cycles().await?;
    let r = status::status(
        &control,
        seq,
        &objects,
        &Ask {
            instance: instance.as_deref(),
            now_us: Utc::now().timestamp_micros(),
            interval_us: i64::try_from(cfg.sync.interval.as_micros()).unwrap_or(i64::MAX),
            heartbeats: &heartbeats,
            failover_after_us: i64::try_from(cfg.ha.failover_after.as_micros()).unwrap_or(i64::MAX),
            idle: &idle,
        },
    );
    match fmt {
        Format::Json => emit_json(&r)?,
        Format::Table | Format::Csv => print(&status_table(&r))?,
    }
    Ok(r.exit())
}

fn status_table(r: &StatusReport) -> String {
    let rows: Vec<Vec<String>> = r
        .instances
        .iter()
        .map(|i| {
            vec![
                i.instance.clone(),
                i.role.as_str().to_string(),
                i.epoch.map_or("-".into(), |e| e.to_string()),
                i.last_success
                    .as_ref()
                    .map_or("-".into(), |s| output::shown_str(&s.at)),
                i.last_failure.as_ref().map_or("-".into(), |f| {
                    format!(
                        "{} ({})",
                        output::shown_str(&f.at),
                        f.reason.map_or("unknown", |r| r.as_str())
                    )
                }),
                i.deletions_held.to_string(),
                i.cursor.as_ref().map_or("-".into(), |c| {
                    format!(
                        "{}{}",
                        span(c.age_seconds.saturating_mul(1_000_000)),
                        if c.expired { " (expired)" } else { "" }
                    )
                }),
                i.running.as_ref().map_or("-".into(), |run| {
                    format!("since {}", output::shown_str(&run.since))
                }),
                i.handover.clone().unwrap_or_else(|| "-".into()),
                i.heartbeat.as_ref().map_or("-".into(), |h| {
                    format!(
                        "{} ago ({}){}",
                        span(h.age_seconds.saturating_mul(1_000_000)),
                        h.role,
                        if h.silent { " silent" } else { "" }
                    )
                }),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "INSTANCE",
            "ROLE",
            "EPOCH",
            "LAST SUCCESS",
            "LAST FAILURE",
            "HELD",
            "CURSOR AGE",
            "RUNNING",
            "HANDOVER",
            "HEARTBEAT",
        ],
        &rows,
    );
    out.push_str(&format!(
        "\nholder: {} (epoch {})  tombstone lifetime: {}  quarantined objects: {}\n",
        r.holder.as_deref().unwrap_or("none"),
        r.epoch,
        r.tombstone_lifetime_days
            .map_or("unknown".into(), |d| format!("{d} days")),
        r.quarantined.len()
    ));
    for i in &r.instances {
        if let Some(f) = i.last_failure.as_ref().filter(|_| i.last_cycle_failed) {
            out.push_str(&format!("last failure of {}: {}\n", i.instance, f.error));
        }
    }
    if let Some(f) = &r.last_failover {
        out.push_str(&format!(
            "last failover: {} -> {} (epoch {}) at {}: {} ({} failover(s) in all)\n",
            f.old,
            f.new,
            f.epoch,
            output::shown_str(&f.at),
            f.reason,
            r.failovers
        ));
    }
    if let Some(h) = &r.handover {
        out.push_str(&format!(
            "handover {} ({} -> {}, {}): {}, {} of {} steps done\n",
            h.handover_id, h.from, h.to, h.playbook, h.status, h.done, h.steps
        ));
    }
    if r.health.problems.is_empty() {
        out.push_str("healthy\n");
    } else {
        for p in &r.health.problems {
            out.push_str(&format!("problem: {}\n", output::shown_in(p)));
        }
    }
    out
}

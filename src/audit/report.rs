//! `dirsync report --html`: one self-contained page for the auditor (pure rendering).
//!
//! No external assets and no script: the charts are inline SVG drawn here, the style is one
//! `<style>` block that also reads well printed. Sections: the chain's verification, a time
//! line per instance (sync runs, failures, gaps against the tombstone lifetime, stops,
//! take-overs), handovers with their steps, deletions over time (seen, held, approved,
//! exported), and the missed and pending deletions with their evidence.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::gaps::GapReport;
use super::missed::MissedDelete;
use super::point_utc;
use crate::output::time;
use crate::project::{HandoverRecord, StepState};

/// Something that happened to an instance, as the time line shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    SyncCompleted,
    SyncFailed(String),
    Stopped,
    Started,
    Retired,
    /// A new relationship epoch taken by this instance.
    TookOver(u64),
}

/// One fact of the log for the report: when, which instance, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    pub seq: u64,
    pub at_us: i64,
    pub instance: String,
    pub mark: Mark,
}

/// What happened to deletions, counted per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeletionStage {
    /// Seen in the source (ObjectDeleted).
    Seen,
    /// Held by the guard (each anchor of a DeletionsHeld).
    Held,
    /// Approved (each anchor of an approved list).
    Approved,
    /// Deleted from the target (ExportApplied delete).
    Exported,
}

impl DeletionStage {
    const ALL: [DeletionStage; 4] = [
        DeletionStage::Seen,
        DeletionStage::Held,
        DeletionStage::Approved,
        DeletionStage::Exported,
    ];
    fn label(self) -> &'static str {
        match self {
            DeletionStage::Seen => "seen in the source",
            DeletionStage::Held => "held by the guard",
            DeletionStage::Approved => "approved",
            DeletionStage::Exported => "deleted from the target",
        }
    }
    fn colour(self) -> &'static str {
        match self {
            DeletionStage::Seen => "#4c78a8",
            DeletionStage::Held => "#e45756",
            DeletionStage::Approved => "#f2a93b",
            DeletionStage::Exported => "#54a24b",
        }
    }
}

/// The chain's verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chain {
    Verified { events: u64 },
    Broken { seq: u64, reason: String },
}

/// Everything the page shows, gathered by the command.
#[derive(Clone, Debug)]
pub struct Report {
    pub store: String,
    pub generated_us: i64,
    /// `--since`: the page's time axis starts here (else at the first fact).
    pub since_us: Option<i64>,
    pub head_seq: u64,
    pub head_hash: String,
    pub chain: Chain,
    pub tombstone_lifetime_days: Option<u32>,
    /// Instances the log knows, with their status now.
    pub instances: Vec<(String, String)>,
    pub facts: Vec<Fact>,
    pub gaps: GapReport,
    pub handovers: Vec<(String, HandoverRecord)>,
    /// (time, stage, count).
    pub deletions: Vec<(i64, DeletionStage, u64)>,
    pub missed: Vec<MissedDelete>,
}

/// `&`, `<`, `>`, `"` and `'` escaped.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = r#"
body{font:14px/1.45 "DejaVu Sans",Helvetica,Arial,sans-serif;color:#1d2330;margin:24px auto;max-width:1100px;padding:0 16px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #d8dde6;padding-bottom:4px}
.sub{color:#5a6475;margin:0 0 16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d8dde6;border-radius:6px;padding:10px 14px;min-width:150px;background:#f7f9fc}
.card b{display:block;font-size:22px}.ok{color:#2e7d32}.bad{color:#c62828}.warn{color:#b26a00}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d8dde6;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eef2f7}td.mono,.mono{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
svg{display:block;max-width:100%;height:auto;margin:6px 0}
svg text{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px;border:1px solid #888}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table,svg{break-inside:avoid}.card{background:#fff}}
"#;

/// The page.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>dirsync report</title><style>{STYLE}</style></head><body>\n"
    );
    let _ = writeln!(
        h,
        "<h1>dirsync report</h1><p class=\"sub\">store {} &middot; generated {} &middot; {} &middot; log head seq {}</p>",
        esc(&r.store),
        time(r.generated_us),
        match r.since_us {
            Some(s) => format!("since {}", time(s)),
            None => "whole log".to_string(),
        },
        r.head_seq
    );
    cards(&mut h, r);
    let (t0, t1) = range(r);
    h.push_str("<h2>Sync runs per instance</h2>\n");
    period(&mut h, t0, t1);
    timeline(&mut h, r, t0, t1);
    h.push_str("<h2>Handovers</h2>\n");
    handovers(&mut h, r, t0, t1);
    h.push_str("<h2>Deletions over time</h2>\n");
    deletions(&mut h, r, t0, t1);
    h.push_str("<h2>Missed and pending deletions</h2>\n");
    missed(&mut h, r);
    h.push_str("<h2>Hash chain</h2>\n");
    match &r.chain {
        Chain::Verified { events } => {
            let _ = write!(
                h,
                "<p class=\"ok\"><b>verified</b>: {events} events, every hash recomputed and linked.</p>"
            );
        }
        Chain::Broken { seq, reason } => {
            let _ = write!(
                h,
                "<p class=\"bad\"><b>BROKEN</b> at seq {seq}: {}</p>",
                esc(reason)
            );
        }
    }
    let _ = write!(
        h,
        "<p>head: seq {} <span class=\"mono\">{}</span></p>\n</body></html>\n",
        r.head_seq,
        esc(&r.head_hash)
    );
    h
}

fn cards(h: &mut String, r: &Report) {
    let missed = r
        .missed
        .iter()
        .filter(|m| m.status == super::missed::Status::Missed)
        .count();
    let pending = r.missed.len() - missed;
    let exceeding = r
        .gaps
        .instances
        .iter()
        .flat_map(|i| &i.windows)
        .filter(|w| w.exceeds_lifetime)
        .count();
    let card = |h: &mut String, class: &str, value: String, label: &str| {
        let _ = write!(
            h,
            "<div class=\"card\"><b class=\"{class}\">{}</b>{}</div>",
            esc(&value),
            esc(label)
        );
    };
    h.push_str("<div class=\"cards\">");
    match &r.chain {
        Chain::Verified { .. } => card(h, "ok", "verified".into(), "hash chain"),
        Chain::Broken { seq, .. } => card(h, "bad", format!("broken at {seq}"), "hash chain"),
    }
    card(h, "", r.instances.len().to_string(), "instances");
    card(
        h,
        if missed > 0 { "bad" } else { "ok" },
        missed.to_string(),
        "missed deletions",
    );
    card(
        h,
        if pending > 0 { "warn" } else { "ok" },
        pending.to_string(),
        "pending deletions",
    );
    card(
        h,
        if exceeding > 0 { "bad" } else { "ok" },
        exceeding.to_string(),
        "gaps past the tombstone lifetime",
    );
    card(
        h,
        "",
        r.tombstone_lifetime_days
            .map_or("unknown".to_string(), |d| format!("{d} days")),
        "tombstone lifetime",
    );
    h.push_str("</div>\n");
}

/// The time axis: from `--since` (else the first fact) to now.
fn range(r: &Report) -> (i64, i64) {
    let first = r
        .facts
        .iter()
        .map(|f| f.at_us)
        .chain(r.deletions.iter().map(|d| d.0))
        .chain(r.handovers.iter().map(|(_, h)| h.started.at_us))
        .min();
    let t0 = r
        .since_us
        .or(first)
        .unwrap_or(r.generated_us - 3_600_000_000);
    let t1 = r.generated_us.max(t0 + 1_000_000);
    // A margin of 2 % each side, so marks at the ends are not cut.
    let pad = (t1 - t0) / 50;
    (t0 - pad, t1 + pad)
}

const W: f64 = 1000.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 40.0;

fn x(t: i64, t0: i64, t1: i64) -> f64 {
    let f = (t - t0) as f64 / (t1 - t0).max(1) as f64;
    LEFT + f.clamp(0.0, 1.0) * (W - LEFT - RIGHT)
}

/// Tick labels along the bottom of a chart at `y`: times of day when the range lies within
/// one day (the date is in the page's line above the chart), else dates and times.
fn axis(h: &mut String, t0: i64, t1: i64, y: f64) {
    let _ = write!(
        h,
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#5a6475\"/>",
        W - RIGHT
    );
    let one_day = time(t0).get(..10) == time(t1).get(..10);
    for i in 0..=5 {
        let t = t0 + (t1 - t0) * i / 5;
        let xx = x(t, t0, t1);
        let full = if t1 - t0 < 60_000_000 {
            // A short period: milliseconds tell the ticks apart.
            chrono::TimeZone::timestamp_micros(&chrono::Utc, t)
                .single()
                .map_or_else(
                    || time(t),
                    |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                )
        } else {
            time(t)
        }
        .replace('T', " ")
        .replace('Z', "");
        let label = if one_day {
            full.get(11..).unwrap_or(&full).to_string()
        } else {
            full.get(..16).unwrap_or(&full).to_string()
        };
        let _ = write!(
            h,
            "<line x1=\"{xx:.1}\" y1=\"{y}\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"#5a6475\"/>\
             <text x=\"{xx:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#5a6475\">{}</text>",
            y + 4.0,
            y + 17.0,
            esc(&label)
        );
    }
}

/// The chart's period in words, above it.
fn period(h: &mut String, t0: i64, t1: i64) {
    let _ = writeln!(h, "<p class=\"sub\">{} to {} (UTC)</p>", time(t0), time(t1));
}

fn legend(h: &mut String, items: &[(&str, &str)]) {
    h.push_str("<div class=\"legend\">");
    for (colour, label) in items {
        let _ = write!(
            h,
            "<span><i style=\"background:{colour}\"></i>{}</span>",
            esc(label)
        );
    }
    h.push_str("</div>\n");
}

fn timeline(h: &mut String, r: &Report, t0: i64, t1: i64) {
    if r.instances.is_empty() {
        h.push_str("<p>No instance has run yet.</p>\n");
        return;
    }
    let lane = 46.0;
    let top = 10.0;
    let height = top + lane * r.instances.len() as f64 + 30.0;
    let _ = write!(
        h,
        "<svg viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\" role=\"img\" \
         aria-label=\"sync runs per instance\">"
    );
    for (i, (name, status)) in r.instances.iter().enumerate() {
        let y = top + lane * i as f64;
        let mid = y + lane / 2.0;
        let _ = write!(
            h,
            "<rect x=\"{LEFT}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\
             <text x=\"6\" y=\"{}\" font-size=\"13\" font-weight=\"bold\">{}</text>\
             <text x=\"6\" y=\"{}\" font-size=\"11\" fill=\"#5a6475\">{}</text>",
            y + 4.0,
            W - LEFT - RIGHT,
            lane - 8.0,
            if i % 2 == 0 { "#f4f6fa" } else { "#fbfcfe" },
            mid - 2.0,
            esc(name),
            mid + 12.0,
            esc(status)
        );
        // Gaps: amber, red past the tombstone lifetime.
        if let Some(g) = r.gaps.instances.iter().find(|g| &g.instance == name) {
            for w in &g.windows {
                let from = w.from.map_or(w.since.at_us, |a| a.at_us);
                let to = w.to.map_or(r.generated_us, |a| a.at_us);
                let (x0, x1) = (x(from, t0, t1), x(to, t0, t1));
                let colour = if w.exceeds_lifetime {
                    "#e45756"
                } else {
                    "#f2c14e"
                };
                let _ = write!(
                    h,
                    "<rect x=\"{x0:.1}\" y=\"{}\" width=\"{:.1}\" height=\"8\" fill=\"{colour}\" opacity=\"0.85\">\
                     <title>no completed sync for {}{}</title></rect>",
                    y + lane - 14.0,
                    (x1 - x0).max(1.5),
                    super::span(w.length_us),
                    if w.exceeds_lifetime {
                        " (past the tombstone lifetime)"
                    } else {
                        ""
                    }
                );
            }
        }
        // Stopped periods: grey hatching from a stop to the next start (or now).
        let mut stopped: Option<i64> = None;
        let facts: Vec<&Fact> = r.facts.iter().filter(|f| &f.instance == name).collect();
        let mut bands = Vec::new();
        for f in &facts {
            match f.mark {
                Mark::Stopped | Mark::Retired if stopped.is_none() => stopped = Some(f.at_us),
                Mark::Started => {
                    if let Some(s) = stopped.take() {
                        bands.push((s, f.at_us));
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = stopped {
            bands.push((s, r.generated_us));
        }
        for (a, b) in bands {
            let (x0, x1) = (x(a, t0, t1), x(b, t0, t1));
            let _ = write!(
                h,
                "<rect x=\"{x0:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"#9aa3b2\" opacity=\"0.45\">\
                 <title>stopped {} to {}</title></rect>",
                y + 6.0,
                (x1 - x0).max(1.5),
                lane - 22.0,
                time(a),
                time(b)
            );
        }
        for f in facts {
            let xx = x(f.at_us, t0, t1);
            match &f.mark {
                Mark::SyncCompleted => {
                    let _ = write!(
                        h,
                        "<line x1=\"{xx:.1}\" y1=\"{}\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"#2e7d32\" stroke-width=\"2\">\
                         <title>sync completed {} (seq {})</title></line>",
                        y + 8.0,
                        y + lane - 18.0,
                        time(f.at_us),
                        f.seq
                    );
                }
                Mark::SyncFailed(e) => {
                    let _ = write!(
                        h,
                        "<g stroke=\"#c62828\" stroke-width=\"2.5\"><title>sync failed {} (seq {}): {}</title>\
                         <line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\"/><line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\"/></g>",
                        time(f.at_us),
                        f.seq,
                        esc(e),
                        xx - 5.0,
                        mid - 9.0,
                        xx + 5.0,
                        mid + 1.0,
                        xx - 5.0,
                        mid + 1.0,
                        xx + 5.0,
                        mid - 9.0
                    );
                }
                Mark::TookOver(epoch) => {
                    let _ = write!(
                        h,
                        "<polygon points=\"{:.1},{} {:.1},{} {:.1},{} {:.1},{}\" fill=\"#7b3fa0\">\
                         <title>took over the sync relationship, epoch {epoch}, {}</title></polygon>\
                         <text x=\"{:.1}\" y=\"{}\" font-size=\"10\" fill=\"#7b3fa0\">epoch {epoch}</text>",
                        xx,
                        mid - 12.0,
                        xx + 6.0,
                        mid - 4.0,
                        xx,
                        mid + 4.0,
                        xx - 6.0,
                        mid - 4.0,
                        time(f.at_us),
                        xx + 8.0,
                        mid - 8.0
                    );
                }
                Mark::Stopped | Mark::Started | Mark::Retired => {
                    let (label, colour) = match f.mark {
                        Mark::Stopped => ("stopped", "#37474f"),
                        Mark::Started => ("started", "#0097a7"),
                        _ => ("retired", "#000"),
                    };
                    let _ = write!(
                        h,
                        "<circle cx=\"{xx:.1}\" cy=\"{}\" r=\"4.5\" fill=\"{colour}\" stroke=\"#fff\"><title>{label} {}</title></circle>",
                        y + 10.0,
                        time(f.at_us),
                    );
                }
            }
        }
    }
    axis(h, t0, t1, top + lane * r.instances.len() as f64 + 4.0);
    h.push_str("</svg>\n");
    legend(
        h,
        &[
            ("#2e7d32", "sync completed"),
            ("#c62828", "sync failed"),
            ("#7b3fa0", "take-over (new epoch)"),
            ("#37474f", "stop"),
            ("#0097a7", "start"),
            ("#000", "retired"),
            ("#9aa3b2", "stopped"),
            ("#f2c14e", "no completed sync (gap)"),
            ("#e45756", "gap past the tombstone lifetime"),
        ],
    );
    // The same in words, for print and for search.
    let mut rows = String::new();
    for g in &r.gaps.instances {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.instance),
            esc(&g.status),
            g.syncs,
            g.last_sync.as_ref().map_or("-".into(), point_utc),
            g.windows.len(),
            g.windows.iter().filter(|w| w.exceeds_lifetime).count()
        );
    }
    let _ = writeln!(
        h,
        "<table><tr><th>instance</th><th>status</th><th>completed syncs</th><th>last sync</th>\
         <th>gaps</th><th>past the tombstone lifetime</th></tr>{rows}</table>"
    );
    let failures: Vec<&Fact> = r
        .facts
        .iter()
        .filter(|f| matches!(f.mark, Mark::SyncFailed(_)))
        .collect();
    if !failures.is_empty() {
        h.push_str("<table><tr><th>failed sync</th><th>instance</th><th>reason</th></tr>");
        for f in failures.iter().rev().take(20) {
            if let Mark::SyncFailed(e) = &f.mark {
                let _ = write!(
                    h,
                    "<tr><td>{} (seq {})</td><td>{}</td><td>{}</td></tr>",
                    time(f.at_us),
                    f.seq,
                    esc(&f.instance),
                    esc(e)
                );
            }
        }
        h.push_str("</table>\n");
    }
}

fn step_colour(s: &StepState) -> &'static str {
    match s {
        StepState::Done => "#54a24b",
        StepState::Failed => "#e45756",
        StepState::Running => "#4c78a8",
        StepState::Pending => "#c9ced8",
    }
}

fn handovers(h: &mut String, r: &Report, t0: i64, t1: i64) {
    if r.handovers.is_empty() {
        h.push_str("<p>No handover in this period.</p>\n");
        return;
    }
    let lane = 40.0;
    let height = 10.0 + lane * r.handovers.len() as f64 + 30.0;
    let _ = write!(
        h,
        "<svg viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\" role=\"img\" aria-label=\"handovers\">"
    );
    for (i, (id, ho)) in r.handovers.iter().enumerate() {
        let y = 10.0 + lane * i as f64;
        let _ = write!(
            h,
            "<text x=\"6\" y=\"{}\" font-size=\"12\" font-weight=\"bold\">{} &#8594; {}</text>\
             <text x=\"6\" y=\"{}\" font-size=\"10\" fill=\"#5a6475\">{}</text>",
            y + 16.0,
            esc(&ho.from),
            esc(&ho.to),
            y + 29.0,
            esc(&id.chars().take(18).collect::<String>())
        );
        for (n, s) in ho.steps.iter().enumerate() {
            let (Some(a), b) = (s.started, s.finished) else {
                continue;
            };
            let end = b.map_or(r.generated_us, |b| b.at_us);
            let (x0, x1) = (x(a.at_us, t0, t1), x(end, t0, t1));
            let _ = write!(
                h,
                "<rect x=\"{x0:.1}\" y=\"{}\" width=\"{:.1}\" height=\"18\" fill=\"{}\" stroke=\"#fff\">\
                 <title>step {}: {} ({:?}) {}</title></rect>",
                y + 6.0,
                (x1 - x0).max(3.0),
                step_colour(&s.state),
                n + 1,
                esc(&s.action),
                s.state,
                time(a.at_us)
            );
        }
    }
    axis(h, t0, t1, 10.0 + lane * r.handovers.len() as f64 + 4.0);
    h.push_str("</svg>\n");
    legend(
        h,
        &[
            ("#54a24b", "step done"),
            ("#4c78a8", "running"),
            ("#e45756", "failed"),
            ("#c9ced8", "pending"),
        ],
    );
    for (id, ho) in &r.handovers {
        let _ = write!(
            h,
            "<p><b>{} &#8594; {}</b> ({}, playbook {}): started {}, {}</p>\
             <table><tr><th>#</th><th>step</th><th>state</th><th>started</th><th>finished</th><th>detail</th></tr>",
            esc(&ho.from),
            esc(&ho.to),
            esc(id),
            esc(&ho.playbook),
            point_utc(&ho.started),
            ho.completed
                .as_ref()
                .map_or("not completed".to_string(), |c| format!("completed {}", point_utc(c)))
        );
        for (n, s) in ho.steps.iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
                n + 1,
                esc(&s.action),
                format!("{:?}", s.state).to_lowercase(),
                s.started.as_ref().map_or("-".into(), point_utc),
                s.finished.as_ref().map_or("-".into(), point_utc),
                if s.detail.is_null() {
                    String::new()
                } else {
                    esc(&s.detail.to_string())
                }
            );
        }
        h.push_str("</table>\n");
    }
}

fn deletions(h: &mut String, r: &Report, t0: i64, t1: i64) {
    let totals: BTreeMap<DeletionStage, u64> =
        r.deletions.iter().fold(BTreeMap::new(), |mut m, d| {
            *m.entry(d.1).or_default() += d.2;
            m
        });
    // Buckets: the smallest of these giving at most 60 bars over the period.
    const S: i64 = 1_000_000;
    let ladder = [
        (S, "second"),
        (10 * S, "10 seconds"),
        (60 * S, "minute"),
        (600 * S, "10 minutes"),
        (3600 * S, "hour"),
        (6 * 3600 * S, "6 hours"),
        (86_400 * S, "day"),
        (7 * 86_400 * S, "week"),
        (30 * 86_400 * S, "30 days"),
    ];
    let (bucket, per) = ladder
        .iter()
        .copied()
        .find(|(b, _)| (t1 - t0) / b < 60)
        .unwrap_or((365 * 86_400 * S, "year"));
    let first = t0.div_euclid(bucket) * bucket;
    let n = ((t1 - first) / bucket + 1).clamp(1, 400) as usize;
    let mut counts = vec![[0u64; 4]; n];
    for (t, stage, c) in &r.deletions {
        let i = ((t - first) / bucket).clamp(0, n as i64 - 1) as usize;
        counts[i][*stage as usize] += c;
    }
    let max = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let (top, plot) = (14.0, 150.0);
    let height = top + plot + 30.0;
    let _ = write!(
        h,
        "<svg viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\" role=\"img\" \
         aria-label=\"deletions over time\">\
         <text x=\"6\" y=\"{}\" font-size=\"11\" fill=\"#5a6475\">{max} per {}</text>\
         <text x=\"6\" y=\"{}\" font-size=\"11\" fill=\"#5a6475\">0</text>\
         <line x1=\"{LEFT}\" y1=\"{top}\" x2=\"{}\" y2=\"{top}\" stroke=\"#e3e7ee\"/>",
        top + 4.0,
        per,
        top + plot,
        W - RIGHT
    );
    for (i, c) in counts.iter().enumerate() {
        let (a, b) = (
            x(first + bucket * i as i64, t0, t1),
            x(first + bucket * (i as i64 + 1), t0, t1),
        );
        let w = ((b - a) / 4.0 - 0.5).max(0.8);
        for s in DeletionStage::ALL {
            let v = c[s as usize];
            if v == 0 {
                continue;
            }
            let bh = (v as f64 / max as f64 * plot).max(2.0);
            let _ = write!(
                h,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{bh:.1}\" fill=\"{}\">\
                 <title>{v} {} from {}</title></rect>",
                a + w * s as usize as f64,
                top + plot - bh,
                s.colour(),
                s.label(),
                time(first + bucket * i as i64)
            );
        }
    }
    axis(h, t0, t1, top + plot);
    h.push_str("</svg>\n");
    let items: Vec<(&str, String)> = DeletionStage::ALL
        .iter()
        .map(|s| {
            (
                s.colour(),
                format!("{}: {}", s.label(), totals.get(s).copied().unwrap_or(0)),
            )
        })
        .collect();
    let items: Vec<(&str, &str)> = items.iter().map(|(c, l)| (*c, l.as_str())).collect();
    legend(h, &items);
}

fn missed(h: &mut String, r: &Report) {
    if r.missed.is_empty() {
        h.push_str(
            "<p class=\"ok\">None: every deletion the log has seen in the source has reached the target.</p>\n",
        );
        return;
    }
    h.push_str(
        "<table><tr><th>status</th><th>object</th><th>target id</th><th>evidence</th>\
         <th>recorded</th><th>in the gap</th><th>revealable by</th></tr>",
    );
    for m in &r.missed {
        let gap = |p: &Option<super::missed::SyncPoint>| {
            p.as_ref().map_or("-".to_string(), |p| {
                format!("{} at {}", p.instance, point_utc(&p.at))
            })
        };
        // missed or pending (and why), then where its export stands (unsent, held, failed).
        let _ = write!(
            h,
            "<tr><td class=\"{}\"><b>{}</b><br>{}<br>{}{}</td><td>{}<br><span class=\"mono\">{}</span> ({})</td>\
             <td class=\"mono\">{}</td><td>{}{}</td><td>{}{}</td><td>after {}<br>then {}</td><td>{}</td></tr>",
            if m.status == super::missed::Status::Missed { "bad" } else { "warn" },
            m.status.as_str(),
            esc(&m.status_detail),
            m.state.as_str(),
            m.state_detail
                .as_deref()
                .map_or(String::new(), |d| format!(": <span class=\"mono\">{}</span>", esc(d))),
            esc(&m.name),
            esc(&m.anchor),
            m.kind.as_str(),
            esc(&m.target_id),
            esc(&m.evidence),
            m.evidence_detail
                .as_deref()
                .map_or(String::new(), |d| format!(": {}", esc(d))),
            m.recorded.as_ref().map_or("-".into(), point_utc),
            m.recorded_by
                .as_deref()
                .map_or(String::new(), |b| format!(" by {}", esc(b))),
            esc(&gap(&m.gap.from)),
            m.gap
                .to
                .as_ref()
                .map_or("no sync since".to_string(), |_| esc(&gap(&m.gap.to))),
            esc(&m.revealable_by.join(", "))
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_page_has_no_external_reference() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let r = Report {
            store: "sqlite://x<y>".into(),
            generated_us: 10_000_000_000,
            since_us: None,
            head_seq: 3,
            head_hash: "ab".into(),
            chain: Chain::Verified { events: 3 },
            tombstone_lifetime_days: Some(180),
            instances: vec![("old".into(), "stopped".into())],
            facts: vec![
                Fact {
                    seq: 1,
                    at_us: 9_000_000_000,
                    instance: "old".into(),
                    mark: Mark::SyncCompleted,
                },
                Fact {
                    seq: 2,
                    at_us: 9_500_000_000,
                    instance: "old".into(),
                    mark: Mark::SyncFailed("<boom>".into()),
                },
            ],
            gaps: GapReport {
                tombstone_lifetime_days: Some(180),
                instances: vec![],
            },
            handovers: vec![],
            deletions: vec![(9_100_000_000, DeletionStage::Seen, 2)],
            missed: vec![],
        };
        let page = render(&r);
        assert!(page.contains("sqlite://x&lt;y&gt;"));
        assert!(page.contains("&lt;boom&gt;") && !page.contains("<boom>"));
        assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
        assert!(page.contains("seen in the source: 2"));
    }
}

//! `scripts/bench history`: answering the auditor at scale, through the dirsync binary.
//!
//! A log of `--events` (1,000,000) events of the `log` bench's mix (users imported, changed,
//! deleted, exported), appended in batches of 10,000 (the history index is filled as they
//! go: the append time includes it). Then, each run three times under `/usr/bin/time` (the
//! median and every run; peak RSS the largest):
//! - `dirsync object show user{N}@test.lan --format json`, N a user in the middle of the log
//!   with changes (the key resolved by mail, the timeline read through the index);
//! - `dirsync log show --anchor A --format json` for the same user;
//! - `dirsync log show --type ObjectDeleted --limit 1000 --format json`;
//! - `dirsync report --html FILE --format json` over the whole log (rows: the page's bytes).
//!
//! Goal: each well under a second at 1,000,000 events.
//!
//! Usage: `cargo bench --bench history -- [--url URL] [--events N]` (default: a temporary
//! SQLite file; with `--url`, an empty PostgreSQL database).

mod mix;

use std::process::{Command, Stdio};
use std::time::Instant;

use dirsync::log::event::{Event, ExportApplied, ExportOp, ObjectKind};
use dirsync::log::store::Batch;
use dirsync::log::{AnyStore, OpenMode, Store};
use mix::{anchor, mixed, opt, user};

fn export(i: u64) -> Event {
    Event::ExportApplied(ExportApplied {
        epoch: 1,
        anchor: anchor(i),
        kind: ObjectKind::User,
        op: ExportOp::Create,
        target_id: format!("{i:032x}"),
        state: Some(
            serde_json::json!({"kind": "user", "user_name": format!("user{i}@test.lan"),
            "active": true}),
        ),
        etag: None,
    })
}

/// One run of the binary under `/usr/bin/time -f "%e %M"`: (seconds, peak RSS in MB, stdout).
fn timed(
    cfg: &std::path::Path,
    args: &[&str],
) -> Result<(f64, f64, Vec<u8>), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(env!("CARGO_BIN_EXE_dirsync"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stderr(Stdio::piped())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "dirsync {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let kb: f64 = err
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .ok_or("no peak RSS from /usr/bin/time")?;
    Ok((secs, kb / 1024.0, out.stdout))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = opt(&args, "--events").map_or(Ok(1_000_000), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let url = opt(&args, "--url")
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("history.db").display()));
    let backend = if url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let store = AnyStore::open(&url, OpenMode::Init).await?;
    if store.head().await?.0 != 0 {
        return Err("the history bench needs an empty store".into());
    }
    let t = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..events {
        batch.push(mixed(i, i, user, export));
        if batch.len() == 10_000 {
            store.append(Batch::new(std::mem::take(&mut batch))).await?;
        }
    }
    if !batch.is_empty() {
        store.append(Batch::new(batch)).await?;
    }
    let append_s = t.elapsed().as_secs_f64();
    drop(store);
    if backend == "postgres" {
        Command::new("psql")
            .args([
                url.as_str(),
                "-q",
                "-c",
                "VACUUM (ANALYZE)",
                "-c",
                "CHECKPOINT",
            ])
            .status()?;
    }
    let cfg = dir.path().join("bench.toml");
    std::fs::write(&cfg, format!("[store]\nurl = \"{url}\"\n"))?;

    // A user imported in the middle of the log: the mix changes users at multiples of 20.
    let n = events / 2 / 20 * 20;
    let a = anchor(n);
    let mail = format!("user{n}@test.lan");
    let page = dir.path().join("report.html").display().to_string();
    let cases: [(&str, Vec<&str>); 4] = [
        (
            "object_show",
            vec!["object", "show", &mail, "--format", "json"],
        ),
        (
            "log_show_anchor",
            vec!["log", "show", "--anchor", &a, "--format", "json"],
        ),
        (
            "log_show_type",
            vec![
                "log",
                "show",
                "--type",
                "ObjectDeleted",
                "--limit",
                "1000",
                "--format",
                "json",
            ],
        ),
        (
            "report_html",
            vec!["report", "--html", &page, "--format", "json"],
        ),
    ];
    let mut rows = serde_json::Map::new();
    for (name, argv) in &cases {
        let mut runs = Vec::new();
        let mut rss: f64 = 0.0;
        let mut out = Vec::new();
        for _ in 0..3 {
            let (s, mb, o) = timed(&cfg, argv)?;
            runs.push(s);
            rss = rss.max(mb);
            out = o;
        }
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let size = match *name {
            "object_show" => {
                let v: serde_json::Value = serde_json::from_slice(&out)?;
                if v["anchor"] != a.as_str() {
                    return Err(format!("object show found {} for {mail}", v["anchor"]).into());
                }
                v["timeline"].as_array().map_or(0, |t| t.len())
            }
            // The page's size in bytes.
            "report_html" => std::fs::metadata(&page)?.len() as usize,
            _ => out.iter().filter(|&&b| b == b'\n').count(),
        };
        println!(
            "{}",
            serde_json::json!({"bench": "history", "backend": backend, "events": events,
                "command": argv.join(" "), "median_s": sorted[1], "runs_s": runs,
                "peak_rss_mb": rss, "rows": size, "goal_s": 1})
        );
        rows.insert(name.to_string(), serde_json::json!(sorted[1]));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "history-summary", "backend": backend, "events": events,
            "append_s": append_s, "append_events_per_s": events as f64 / append_s, "median_s": rows})
    );
    Ok(())
}

//! `scripts/bench export`: dirsync's first export of a log of N users, against the target's
//! own limit measured in the same run.
//!
//! * SCIM: N users into scim2-server. The baseline is a minimal raw HTTP client (one
//!   `reqwest::Client`, 4 POSTs in flight, as dirsync sends them) creating the same user resources in a server of
//!   its own; dirsync is `export_log` (probe, relationship, listing for matching, plan,
//!   guard, export in claimed chunks, every outcome recorded) into another fresh server.
//!   Rounds alternate which side runs first. Goal: dirsync >= 90 % of the raw rate.
//! * Graph: `export_log` of `--graph-users` users into the fake Graph with its write
//!   throttling at Graph's documented rate (3,000 writes per 150 s = 20/s), the bucket scaled
//!   down with the window (300 per 15 s) so the run is short. The minimum those limits
//!   allow is `max(0, W - bucket) / rate` for W writes (the bucket starts full and refills
//!   continuously). Goal: total within 10 % of that minimum.
//!
//! Usage: `cargo bench --bench export -- [--users N] [--graph-users N] [--rounds R]
//! [--only scim|graph]` (defaults 10,000, 1,000, 1).

mod common;
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use common::{arg, load_average};

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use dirsync::config::{Secret, SourceKind, TargetKind, Threshold};
use dirsync::log::event::{
    stream, AttrValue, Attrs, Event, ObjectImported, ObjectKind, SourceObject,
};
use dirsync::log::store::Batch;
use dirsync::log::{AnyStore, NewEvent, OpenMode, Store};
use dirsync::plan::mapping::Mapping;
use dirsync::sync::export::{export_log, ExportOptions, SyncReport};
use dirsync::target::graph::{GraphOptions, GraphTarget};
use dirsync::target::scim::{ScimTarget, USER_SCHEMA};
use dirsync::target::AnyTarget;
use futures_util::stream::StreamExt;
use serde_json::{json, Value};

use lab::graph::GraphFakeOptions;
use lab::{GraphFake, Scim};

/// Requests in flight, as `ScimTarget` sends them (its default).
const CONCURRENCY: usize = 4;
const INSTANCE: &str = "bench";
/// Events per append when building the log.
const APPEND_BATCH: u64 = 1_000;
/// Graph's documented limit (3,000 writes per 150 s), scaled down in time, not in rate.
const GRAPH_WRITES_PER_WINDOW: u32 = 300;
const GRAPH_WINDOW: Duration = Duration::from_secs(15);

/// A random-looking but reproducible entryUUID for user `i`. (Anchors differing only in
/// their last bits make immutable ids that differ only in letter case, which Graph's
/// uniqueness check, case-insensitive in the fake, takes for duplicates.)
fn anchor(i: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let bits = (u128::from(mix(2 * i)) << 64) | u128::from(mix(2 * i + 1));
    uuid::Builder::from_random_bytes(bits.to_be_bytes())
        .into_uuid()
        .to_string()
}

fn text(v: String) -> Vec<AttrValue> {
    vec![AttrValue::Text(v.into())]
}

/// User `i` as slapd would hand it over (OpenLDAP inetOrgPerson; userName is `mail`).
fn user_object(i: u64) -> SourceObject {
    SourceObject {
        anchor: anchor(i),
        kind: ObjectKind::User,
        dn: format!("uid=user{i},ou=people,dc=example,dc=org"),
        attrs: Attrs::from([
            ("uid".into(), text(format!("user{i}"))),
            ("cn".into(), text(format!("User {i}"))),
            ("sn".into(), text(format!("N{i}"))),
            ("givenname".into(), text("User".into())),
            ("mail".into(), text(format!("user{i}@example.org"))),
            ("title".into(), text("Clerk".into())),
        ]),
        members: BTreeSet::new(),
    }
}

/// The SCIM resource of user `i`, built independently of dirsync's code but with the fields
/// it sends for such a user (core schema, externalId = anchor, work e-mail, active).
fn raw_scim_user(i: u64) -> Value {
    json!({
        "schemas": [USER_SCHEMA],
        "externalId": anchor(i),
        "userName": format!("user{i}@example.org"),
        "displayName": format!("User {i}"),
        "name": { "givenName": "User", "familyName": format!("N{i}") },
        "emails": [{ "value": format!("user{i}@example.org"), "type": "work", "primary": true }],
        "title": "Clerk",
        "active": true,
    })
}

/// A SQLite log at `dir/log.db` holding `users` imported users.
async fn build_log(dir: &Path, users: u64) -> AnyStore {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Init)
        .await
        .expect("open log");
    let mut i = 0;
    while i < users {
        let end = (i + APPEND_BATCH).min(users);
        let events = (i..end)
            .map(|j| {
                NewEvent::new(
                    stream::SOURCE,
                    INSTANCE,
                    Event::ObjectImported(ObjectImported {
                        object: user_object(j),
                        returned: false,
                    }),
                )
            })
            .collect();
        store.append(Batch::new(events)).await.expect("append");
        i = end;
    }
    store
}

/// dirsync's export of the log into `target`: (seconds, report).
async fn dirsync_export(store: &AnyStore, target: &AnyTarget) -> (f64, SyncReport) {
    let opts = ExportOptions {
        instance: INSTANCE.into(),
        mapping: std::sync::Arc::new(Mapping::default_for(SourceKind::Openldap, TargetKind::Scim)),
        threshold: Threshold::Count(500),
        hold: Default::default(),
        take_over: false,
        reset: None,
    };
    let progress = indicatif::ProgressBar::hidden();
    let t = Instant::now();
    let report = export_log(store, target, &opts, &progress)
        .await
        .expect("export_log");
    (t.elapsed().as_secs_f64(), report)
}

/// The raw baseline: POST every user, `CONCURRENCY` in flight, one client. Seconds.
async fn raw_scim(base: &str, token: &str, users: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .build()
        .expect("client");
    let url = format!("{base}/Users");
    let auth = format!("Bearer {token}");
    let t = Instant::now();
    let created = futures_util::stream::iter(0..users)
        .map(|i| {
            let req = client
                .post(&url)
                .header("authorization", &auth)
                .header("accept", "application/scim+json")
                .header("content-type", "application/scim+json")
                .body(raw_scim_user(i).to_string());
            async move {
                let resp = req.send().await.expect("POST /Users");
                let status = resp.status();
                let body = resp.bytes().await.expect("response body");
                assert_eq!(
                    status.as_u16(),
                    201,
                    "raw create {i}: {}",
                    String::from_utf8_lossy(&body)
                );
                let v: Value = serde_json::from_slice(&body).expect("JSON");
                v["id"].as_str().map(str::to_string).expect("id")
            }
        })
        .buffer_unordered(CONCURRENCY)
        .count()
        .await;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(created as u64, users);
    secs
}

/// `totalResults` of the server's users.
async fn scim_total(base: &str, token: &str) -> u64 {
    let v: Value = reqwest::Client::new()
        .get(format!("{base}/Users?startIndex=1&count=1"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /Users")
        .json()
        .await
        .expect("list JSON");
    v["totalResults"].as_u64().expect("totalResults")
}

async fn scim(users: u64, rounds: u64) {
    println!("SCIM (scim2-server), {users} users, {CONCURRENCY} in flight");
    println!("round  first    raw s    raw u/s  dirsync s  dirsync u/s  ratio  load(1 5 15)");
    let (mut raw_total, mut ours_total) = (0.0, 0.0);
    for round in 1..=rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = build_log(dir.path(), users).await;
        let raw_server = Scim::start().await;
        let our_server = Scim::start().await;
        let target = AnyTarget::Scim(
            ScimTarget::new(our_server.base_url(), Secret::new(our_server.token()))
                .expect("scim target"),
        );
        let raw_first = round % 2 == 1;
        let mut t_raw = 0.0;
        if raw_first {
            t_raw = raw_scim(raw_server.base_url(), raw_server.token(), users).await;
        }
        let (t_ours, report) = dirsync_export(&store, &target).await;
        if !raw_first {
            t_raw = raw_scim(raw_server.base_url(), raw_server.token(), users).await;
        }
        assert_eq!(
            (report.created, report.failures, report.conflicts),
            (users, 0, 0),
            "dirsync export: {:?}",
            report.problems.first()
        );
        assert_eq!(
            scim_total(our_server.base_url(), our_server.token()).await,
            users
        );
        assert_eq!(
            scim_total(raw_server.base_url(), raw_server.token()).await,
            users
        );
        let (raw_rate, our_rate) = (users as f64 / t_raw, users as f64 / t_ours);
        println!(
            "{round:<6} {:<8} {t_raw:<8.2} {raw_rate:<8.0} {t_ours:<10.2} {our_rate:<12.0} {:<6.3} {}",
            if raw_first { "raw" } else { "dirsync" },
            our_rate / raw_rate,
            load_average()
        );
        println!(
            "{}",
            json!({"bench": "export", "target": "scim", "round": round, "users": users,
                "raw_s": t_raw, "dirsync_s": t_ours, "raw_per_s": raw_rate,
                "dirsync_per_s": our_rate, "ratio": our_rate / raw_rate, "load": load_average()})
        );
        raw_total += t_raw;
        ours_total += t_ours;
    }
    if rounds > 1 {
        println!(
            "all    {rounds} rounds: raw {:.0} u/s, dirsync {:.0} u/s, ratio {:.3} (goal >= 0.90)",
            (users * rounds) as f64 / raw_total,
            (users * rounds) as f64 / ours_total,
            raw_total / ours_total
        );
    } else {
        println!("goal: ratio >= 0.90");
    }
}

async fn graph(users: u64) {
    let rate = GRAPH_WRITES_PER_WINDOW as f64 / GRAPH_WINDOW.as_secs_f64();
    let bucket = GRAPH_WRITES_PER_WINDOW as f64;
    // Users only: one write each. The bucket is full when the export starts and refills
    // continuously, so the last of W writes can go at (W - bucket) / rate at the earliest.
    let writes = users;
    let minimum = ((writes as f64 - bucket) / rate).max(0.0);
    println!(
        "\nGraph (fake), {users} users = {writes} writes; throttling {GRAPH_WRITES_PER_WINDOW} writes per {}s \
         ({rate:.0}/s, Graph's 3,000 per 150 s scaled in time), token bucket starts full",
        GRAPH_WINDOW.as_secs()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = build_log(dir.path(), users).await;
    let fake = GraphFake::start_with(GraphFakeOptions {
        writes_per_window: GRAPH_WRITES_PER_WINDOW,
        window: GRAPH_WINDOW,
        ..Default::default()
    });
    let target = AnyTarget::Graph(
        GraphTarget::new(
            &fake.base_url(),
            &fake.token_url(),
            fake.client_id(),
            Secret::new(fake.client_secret()),
            GraphOptions::default(),
        )
        .expect("graph target"),
    );
    let (t, report) = dirsync_export(&store, &target).await;
    assert_eq!(
        (report.created, report.failures, report.conflicts),
        (users, 0, 0),
        "dirsync export: {:?}",
        report.problems.first()
    );
    assert_eq!(fake.users().len() as u64, users);
    let throttled = fake.throttled().len();
    let attempts = fake.write_attempts();
    let batches = fake.batches().len();
    println!("total s  minimum s  ratio  429s   write attempts  batches  load(1 5 15)");
    let ratio = if minimum > 0.0 { t / minimum } else { f64::NAN };
    println!(
        "{t:<8.2} {minimum:<10.2} {ratio:<6.3} {throttled:<6} {attempts:<15} {batches:<8} {}",
        load_average()
    );
    println!("goal: ratio <= 1.10");
    println!(
        "{}",
        json!({"bench": "export", "target": "graph", "users": users, "writes": writes,
            "writes_per_window": GRAPH_WRITES_PER_WINDOW, "window_s": GRAPH_WINDOW.as_secs(),
            "total_s": t, "minimum_s": minimum, "ratio": ratio, "throttled": throttled,
            "write_attempts": attempts, "batches": batches, "load": load_average()})
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // dirsync's own warnings (retries, throttling) on stderr; DIRSYNC_LOG=debug for more.
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIRSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users", 10_000);
    let graph_users = arg(&args, "--graph-users", 1_000);
    let rounds = arg(&args, "--rounds", 1).max(1);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if only.as_deref() != Some("graph") {
        scim(users, rounds).await;
    }
    if only.as_deref() != Some("scim") {
        graph(graph_users).await;
    }
}

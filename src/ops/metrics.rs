//! `dirsync run --listen ADDR`: `GET /metrics` (Prometheus text format), `GET /healthz` and
//! `GET /readyz`.
//!
//! Every value comes from what the service already has: the cycle's report and the
//! projections it refreshes around each cycle (a fold of the log's tail, no full read).
//! Label values are bounded: the instance's name, the cycle outcomes of [`Outcome`], the
//! four export ops. Process metrics are read from `/proc/self` at each scrape.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Outcome;
use crate::error::{Error, Result};
use crate::project::Control;
use crate::sync::export::SyncReport;

type Labels = Vec<(&'static str, String)>;

/// No cursor recorded (for `cursor_at_us`).
const NONE: i64 = i64::MIN;

/// The service's metrics and health; cheap to clone (shared with the HTTP server).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    instance: String,
    runs: Family<Labels, Counter>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    duration: Histogram,
    exported: Family<Labels, Counter>,
    deletions_held: Gauge,
    epoch: Gauge,
    is_holder: Family<Labels, Gauge>,
    failovers: Family<Labels, Counter>,
    head_seq: Gauge,
    cursor: Arc<CursorAge>,
    /// The cursor (its seq) this service's last idle cycle found still current, and when
    /// (`sync::idle`; 0: none): its age counts from then.
    idle_cursor_seq: AtomicU64,
    idle_cursor_at_us: AtomicI64,
    /// A cycle has completed since the service started.
    ready: AtomicBool,
    /// When the service loop last showed it lives (µs since the epoch).
    tick_us: AtomicI64,
    /// How long the loop may go without a tick (a cycle in flight is bounded by the cycle
    /// timeout and the import's): /healthz fails after that.
    stall_after: Duration,
}

impl Metrics {
    /// Metrics of the service of `instance`. `stall_after`: the longest the service loop
    /// can go without a tick while alive (see [`Metrics::healthy`]).
    pub fn new(instance: &str, stall_after: Duration) -> Metrics {
        let mut registry = Registry::default();
        let runs = Family::<Labels, Counter>::default();
        registry.register(
            "dirsync_sync_runs",
            "Sync cycles run by this service, by outcome (success, partial, held, failed, fenced, skipped)",
            runs.clone(),
        );
        let last_success = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "dirsync_last_success_timestamp_seconds",
            "When the last cycle that completed ended (Unix time)",
            last_success.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        registry.register(
            "dirsync_sync_duration_seconds",
            "How long each cycle took",
            duration.clone(),
        );
        let exported = Family::<Labels, Counter>::default();
        registry.register(
            "dirsync_exported_objects",
            "Objects written to the target (create, update, delete) or matched to an existing one (match)",
            exported.clone(),
        );
        let deletions_held = Gauge::default();
        registry.register(
            "dirsync_deletions_held",
            "Deletions the guard held in the last completed cycle (0: none held)",
            deletions_held.clone(),
        );
        let epoch = Gauge::default();
        registry.register(
            "dirsync_relationship_epoch",
            "The sync relationship's current epoch",
            epoch.clone(),
        );
        let is_holder = Family::<Labels, Gauge>::default();
        registry.register(
            "dirsync_is_holder",
            "1 when this instance holds the sync relationship (may export), else 0",
            is_holder.clone(),
        );
        let failovers = Family::<Labels, Counter>::default();
        registry.register(
            "dirsync_failovers",
            "Failovers this service won (`run --standby`: the holder fell silent and it took over)",
            failovers.clone(),
        );
        let head_seq = Gauge::default();
        registry.register(
            "dirsync_log_head_seq",
            "The seq of the last event of the log",
            head_seq.clone(),
        );
        let cursor = Arc::new(CursorAge {
            instance: instance.to_string(),
            at_us: AtomicI64::new(NONE),
        });
        registry.register_collector(Box::new(cursor.clone()));
        registry.register_collector(Box::new(Process));
        // Every outcome and op from the start, at 0: a rate over a counter that appears
        // late misses its first increment.
        let me = |k: &'static str, v: &str| vec![("instance", instance.to_string()), (k, v.into())];
        for o in Outcome::ALL {
            drop(runs.get_or_create(&me("outcome", o.as_str())));
        }
        for op in OPS {
            drop(exported.get_or_create(&me("op", op)));
        }
        drop(is_holder.get_or_create(&vec![("instance", instance.to_string())]));
        drop(failovers.get_or_create(&vec![("instance", instance.to_string())]));
        Metrics(Arc::new(Inner {
            registry,
            instance: instance.to_string(),
            runs,
            last_success,
            duration,
            exported,
            deletions_held,
            epoch,
            is_holder,
            failovers,
            head_seq,
            cursor,
            idle_cursor_seq: AtomicU64::new(0),
            idle_cursor_at_us: AtomicI64::new(NONE),
            ready: AtomicBool::new(false),
            tick_us: AtomicI64::new(now_us()),
            stall_after,
        }))
    }

    fn labels(&self) -> Labels {
        vec![("instance", self.0.instance.clone())]
    }

    /// Count a cycle that ended as `outcome` after `took` (its report when it completed),
    /// under `[sync] hold` (whether a held cycle completed).
    pub fn cycle(
        &self,
        outcome: Outcome,
        hold: crate::config::Hold,
        report: Option<&SyncReport>,
        took: Duration,
    ) {
        let m = &self.0;
        let mut labels = self.labels();
        labels.push(("outcome", outcome.as_str().into()));
        m.runs.get_or_create(&labels).inc();
        m.duration.observe(took.as_secs_f64());
        if let Some(r) = report {
            for (op, n) in exported_ops(r) {
                let mut labels = self.labels();
                labels.push(("op", op.into()));
                m.exported.get_or_create(&labels).inc_by(n);
            }
            m.deletions_held.set(clamp(r.held));
        }
        if outcome.completed(hold) {
            m.last_success
                .get_or_create(&self.labels())
                .set(now_us() as f64 / 1e6);
            m.ready.store(true, Ordering::SeqCst);
        }
        self.tick();
    }

    /// What the projections say: the relationship, the log's head, the instance's cursor.
    /// `seq`: the log's head the control projections are folded up to.
    pub fn state(&self, seq: u64, control: &Control) {
        let m = &self.0;
        m.epoch.set(clamp(control.relationship.epoch));
        m.is_holder
            .get_or_create(&self.labels())
            .set(i64::from(control.relationship.held_by(&m.instance)));
        m.head_seq.set(clamp(seq));
        let idle_seq = m.idle_cursor_seq.load(Ordering::SeqCst);
        let idle_at = m.idle_cursor_at_us.load(Ordering::SeqCst);
        let at = control.cursors.current.get(&m.instance).map_or(NONE, |c| {
            if c.at.seq == idle_seq {
                c.at.at_us.max(idle_at)
            } else {
                c.at.at_us
            }
        });
        m.cursor.at_us.store(at, Ordering::SeqCst);
        self.tick();
    }

    /// An idle cycle ended at `at_us` and found the cursor recorded at `cursor_seq` still
    /// current: the cursor's age counts from then (until another cursor is recorded).
    pub fn idle_cycle(&self, cursor_seq: u64, at_us: i64) {
        self.0.idle_cursor_seq.store(cursor_seq, Ordering::SeqCst);
        self.0.idle_cursor_at_us.store(at_us, Ordering::SeqCst);
    }

    /// This service won a failover.
    pub fn failover(&self) {
        self.0.failovers.get_or_create(&self.labels()).inc();
    }

    /// The service loop lives.
    pub fn tick(&self) {
        self.0.tick_us.store(now_us(), Ordering::SeqCst);
    }

    /// Whether the service loop ticked within its stall bound.
    pub fn healthy(&self) -> bool {
        let quiet = now_us().saturating_sub(self.0.tick_us.load(Ordering::SeqCst));
        quiet <= i64::try_from(self.0.stall_after.as_micros()).unwrap_or(i64::MAX)
    }

    /// Whether a cycle has completed since the service started.
    pub fn ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    /// The exposition, Prometheus text format 0.0.4.
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.0.registry)
            .map_err(|e| Error::BadInput(format!("encoding the metrics: {e}")))?;
        Ok(out)
    }

    /// The HTTP routes: /metrics, /healthz, /readyz.
    pub fn router(&self) -> axum::Router {
        use axum::routing::get;
        let (m1, m2, m3) = (self.clone(), self.clone(), self.clone());
        axum::Router::new()
            .route(
                "/metrics",
                get(move || async move {
                    match m1.encode() {
                        Ok(body) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            )],
                            body,
                        )
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                        }
                    }
                }),
            )
            .route(
                "/healthz",
                get(move || async move {
                    if m2.healthy() {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the service loop has stalled\n",
                        )
                    }
                }),
            )
            .route(
                "/readyz",
                get(move || async move {
                    if m3.ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no cycle has completed yet\n",
                        )
                    }
                }),
            )
    }

    /// Serve the routes on `listener` until the returned task is aborted.
    pub fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("the metrics server stopped: {e}");
            }
        })
    }
}

/// The ops of `dirsync_exported_objects_total`.
pub const OPS: [&str; 4] = ["create", "update", "delete", "match"];

/// What a cycle wrote to the target, by op (pure): creates include objects created again
/// (deleted out of band), updates the attributes a reconcile restored, deletes the
/// duplicates removed.
pub fn exported_ops(r: &SyncReport) -> [(&'static str, u64); 4] {
    let (restored, removed) = r
        .reconcile
        .as_ref()
        .map_or((0, 0), |c| (c.restored, c.removed));
    [
        ("create", r.created + r.recreated),
        ("update", r.updated + restored + r.disabled),
        ("delete", r.deleted + r.duplicates_removed + removed),
        ("match", r.matched),
    ]
}

/// Parse and bind `--listen ADDR` (IP:PORT) before the service writes anything: an
/// unparsable address, a busy port or a privileged port without the right is bad usage.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    let parsed: std::net::SocketAddr = addr.parse().map_err(|_| {
        Error::BadInput(format!(
            "--listen {addr}: not an address to listen on; give IP:PORT, e.g. 127.0.0.1:9464 or [::1]:9464"
        ))
    })?;
    tokio::net::TcpListener::bind(parsed).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "the port is already in use".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                // Linux: net.ipv4.ip_unprivileged_port_start, 1024 unless set otherwise.
                let start =
                    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                        .ok()
                        .and_then(|s| s.trim().parse::<u16>().ok())
                        .unwrap_or(1024);
                format!("permission denied (ports below {start} need root or CAP_NET_BIND_SERVICE)")
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "no interface of this computer has that address".to_string()
            }
            _ => e.to_string(),
        };
        Error::BadInput(format!("--listen {addr}: cannot listen: {why}"))
    })
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `dirsync_cursor_age_seconds{instance}`: computed at each scrape from when the cursor was
/// recorded (or last found current by an idle cycle), so it grows between cycles. Absent while the instance has no cursor.
#[derive(Debug)]
struct CursorAge {
    instance: String,
    at_us: AtomicI64,
}

impl Collector for CursorAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let at = self.at_us.load(Ordering::SeqCst);
        if at == NONE {
            return Ok(());
        }
        let age = (now_us().saturating_sub(at)).max(0) as f64 / 1e6;
        let mut m = encoder.encode_descriptor(
            "dirsync_cursor_age_seconds",
            "Seconds since the instance's source cursor was recorded (compare with the tombstone lifetime)",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("instance", self.instance.as_str())];
        ConstGauge::new(age).encode(m.encode_family(&labels)?)
    }
}

/// The process metrics Prometheus clients export, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct Process;

/// One reading of `/proc/self` (Linux).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Read them now; `None` where `/proc` is missing or unreadable.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: sysconf only reads a system constant.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        parse_process(&stat, &boot, &limits, open_fds, tick, page)
    }
}

/// The process's resident memory now and at its peak, in MiB (`VmRSS`, `VmHWM` of
/// `/proc/self/status`), for the phase lines of a cycle's debug log; zeros where `/proc` is
/// missing.
pub fn memory_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:") / 1024, kib("VmHWM:") / 1024)
}

/// The debug line of a phase of `what` (a sync, an import): its name, the milliseconds since
/// `began`, and the memory then. A macro, so that the line keeps its caller's target
/// (`DIRSYNC_LOG=dirsync::sync::run=debug` selects the import's).
macro_rules! phase_line {
    ($what:literal, $name:expr, $began:expr) => {{
        let (rss_mib, peak_mib) = $crate::ops::metrics::memory_mib();
        tracing::debug!(
            phase = $name,
            ms = $began.elapsed().as_millis(),
            rss_mib,
            peak_mib,
            $what
        );
    }};
}
pub(crate) use phase_line;

/// [`ProcessStats`] from the text of `/proc/self/stat`, `/proc/stat` and
/// `/proc/self/limits` (pure; proc(5)).
pub fn parse_process(
    stat: &str,
    boot: &str,
    limits: &str,
    open_fds: u64,
    ticks_per_second: i64,
    page_size: i64,
) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces: fields from 3 on
    // follow the last ')'.
    let rest: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    let tick = ticks_per_second.max(1) as f64;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / tick,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_size.max(1) as u64),
        start_time_seconds: btime as f64 + field(22)? as f64 / tick,
        open_fds,
        max_fds,
    })
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(m)?;
        let mut gauges = vec![
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds as f64,
            ),
        ];
        if let Some(max) = p.max_fds {
            gauges.push((
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            ));
        }
        for (name, help, v) in gauges {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Hold;

    #[test]
    fn proc_self_is_parsed_by_its_fields() {
        // proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24; a name with spaces
        // and parentheses.
        let stat = "4242 (dirsync (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 \
                    5 0 1000 123456789 300 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        let p = parse_process(stat, boot, limits, 7, 100, 4096).unwrap();
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 4.0,
                resident_bytes: 300 * 4096,
                virtual_bytes: 123456789,
                start_time_seconds: 1700000010.0,
                open_fds: 7,
                max_fds: Some(1024),
            }
        );
        assert_eq!(parse_process("garbage", boot, limits, 1, 100, 4096), None);
        assert!(ProcessStats::read().is_some(), "this process's /proc/self");
    }

    #[test]
    fn exported_ops_count_what_reached_the_target() {
        let r = SyncReport {
            created: 3,
            recreated: 1,
            updated: 2,
            deleted: 1,
            duplicates_removed: 1,
            matched: 4,
            reconcile: Some(crate::log::event::TargetReconciled {
                restored: 5,
                removed: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            exported_ops(&r),
            [("create", 4), ("update", 7), ("delete", 4), ("match", 4)]
        );
    }

    #[test]
    fn the_exposition_names_the_contract_metrics_before_any_cycle() {
        let m = Metrics::new("a", Duration::from_secs(60));
        let text = m.encode().unwrap();
        for line in [
            "dirsync_sync_runs_total{instance=\"a\",outcome=\"failed\"} 0",
            "dirsync_exported_objects_total{instance=\"a\",op=\"match\"} 0",
            "dirsync_is_holder{instance=\"a\"} 0",
            "dirsync_deletions_held 0",
            "dirsync_relationship_epoch 0",
            "dirsync_log_head_seq 0",
            "dirsync_sync_duration_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!m.ready());
        assert!(m.healthy());
        m.cycle(
            Outcome::Failed,
            Hold::Deletions,
            None,
            Duration::from_millis(300),
        );
        assert!(!m.ready(), "a failed cycle is not readiness");
        // A held cycle that exported nothing ([sync] hold = "all") is recorded as failed.
        assert!(!Outcome::Held.completed(Hold::All));
        m.cycle(
            Outcome::Held,
            Hold::Deletions,
            Some(&SyncReport {
                held: 7,
                ..Default::default()
            }),
            Duration::from_secs(2),
        );
        assert!(m.ready());
        let text = m.encode().unwrap();
        for line in [
            "dirsync_sync_runs_total{instance=\"a\",outcome=\"failed\"} 1",
            "dirsync_sync_runs_total{instance=\"a\",outcome=\"held\"} 1",
            "dirsync_deletions_held 7",
            "dirsync_sync_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let stalled = Metrics::new("a", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(!stalled.healthy());
    }
}

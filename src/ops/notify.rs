//! `[notify]`: telling a person when something needs one. A notification is one JSON body,
//! `{"event": E, "instance": I, "at": RFC3339, "details": {...}}`, POSTed to the webhook
//! (signed: `X-Dirsync-Signature: sha256=<hex HMAC-SHA256 of the body>`) and given on stdin
//! to the command.
//!
//! Delivery is off the sync's path: [`Notifier::send`] only queues, and a task of its own
//! delivers, each channel retried with backoff within `[notify] timeout`. A receiver that
//! fails or hangs costs that task time, never a cycle. Each outcome is recorded in the log
//! (`NotificationDelivered` / `NotificationFailed`: event, channel, receiver, attempts, the
//! error's class), or, for a command that must not write (`audit`), said on stderr.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Outcome;
use crate::config::{Config, NotifyConfig, Secret};
use crate::error::{Error, Result};
use crate::log::event::{stream, Event, NotificationDelivered, NotificationFailed};
use crate::log::store::Batch;
use crate::log::{AnyStore, NewEvent, Store};
use crate::project::Control;
use crate::sync::export::SyncReport;

/// What happened (INTERFACE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    DeletionsHeld,
    SyncFailed,
    Fenced,
    HandoverCompleted,
    HandoverFailed,
    MissedDeletionsFound,
    Failover,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::DeletionsHeld => "deletions_held",
            NotifyEvent::SyncFailed => "sync_failed",
            NotifyEvent::Fenced => "fenced",
            NotifyEvent::HandoverCompleted => "handover_completed",
            NotifyEvent::HandoverFailed => "handover_failed",
            NotifyEvent::MissedDeletionsFound => "missed_deletions_found",
            NotifyEvent::Failover => "failover",
        }
    }
}

/// How a notification travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Webhook,
    Command,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Command => "command",
        }
    }
}

/// Why a delivery failed: a class, never a message that could carry the URL or a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryError {
    /// No answer (or no exit) within the time left.
    Timeout,
    /// The receiver could not be reached (refused, unreachable, name not resolved, TLS).
    Connect,
    /// The receiver answered with another status than 2xx.
    Http { status: u16 },
    /// The request failed otherwise (reset mid-way, a malformed answer).
    Request,
    /// The command's program does not exist.
    NotFound,
    /// The command could not be started (not executable, ...).
    Spawn,
    /// The command exited with a status other than 0.
    Exit { code: i32 },
    /// The command was ended by a signal.
    Signal { signal: i32 },
    /// The command was still running at its time limit and was killed.
    Killed,
    /// Too many notifications waiting: this one was dropped.
    QueueFull,
}

impl DeliveryError {
    /// Whether another attempt may go better.
    fn retryable(self) -> bool {
        match self {
            DeliveryError::Http { status } => status >= 500 || status == 429 || status == 408,
            DeliveryError::NotFound | DeliveryError::Spawn | DeliveryError::QueueFull => false,
            _ => true,
        }
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::Timeout => f.write_str("timed out"),
            DeliveryError::Connect => f.write_str("cannot connect"),
            DeliveryError::Http { status } => write!(f, "HTTP status {status}"),
            DeliveryError::Request => f.write_str("request failed"),
            DeliveryError::NotFound => f.write_str("program not found"),
            DeliveryError::Spawn => f.write_str("cannot start the program"),
            DeliveryError::Exit { code } => write!(f, "exit status {code}"),
            DeliveryError::Signal { signal } => write!(f, "ended by signal {signal}"),
            DeliveryError::Killed => f.write_str("killed at its time limit"),
            DeliveryError::QueueFull => f.write_str("too many notifications waiting"),
        }
    }
}

/// One notification.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub event: NotifyEvent,
    pub instance: String,
    pub at: DateTime<Utc>,
    pub details: Value,
}

impl Notification {
    pub fn new(event: NotifyEvent, instance: &str, details: Value) -> Notification {
        Notification {
            event,
            instance: instance.to_string(),
            at: Utc::now(),
            details,
        }
    }

    /// The body sent: `{"event", "instance", "at", "details"}`.
    pub fn body(&self) -> Vec<u8> {
        json!({
            "event": self.event,
            "instance": self.instance,
            "at": self.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "details": self.details,
        })
        .to_string()
        .into_bytes()
    }
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`: the `X-Dirsync-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// A webhook URL as it may be recorded: no credentials, no query, no fragment.
pub fn receiver_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// What a cycle of `instance` calls for (pure). `began_us`: when the cycle began (a hold
/// recorded since then is new: one notification per held list, not one per cycle);
/// `failures_in_row`: failed cycles in a row, this one included; `state`: the projections
/// after the cycle.
pub fn after_cycle(
    instance: &str,
    result: &Result<SyncReport>,
    state: Option<&Control>,
    began_us: i64,
    failures_in_row: u32,
    failures_before_alert: u32,
) -> Vec<Notification> {
    let mut out = Vec::new();
    match result {
        Ok(r) if r.held > 0 => {
            let new = match (&r.held_plan, state) {
                (Some(plan), Some(s)) => s
                    .guard
                    .plans
                    .get(plan)
                    .is_some_and(|p| p.held.at_us >= began_us),
                _ => true,
            };
            if new {
                out.push(Notification::new(
                    NotifyEvent::DeletionsHeld,
                    instance,
                    json!({
                        "count": r.held,
                        "plan": r.held_plan,
                        "reason": r.held_reason,
                        "run_id": r.run_id,
                    }),
                ));
            }
        }
        Err(e @ Error::Fenced(_)) => out.push(Notification::new(
            NotifyEvent::Fenced,
            instance,
            json!({
                "holder": state.and_then(|s| s.relationship.holder.clone()),
                "epoch": state.map(|s| s.relationship.epoch),
                "error": e.to_string(),
            }),
        )),
        Err(e)
            if Outcome::of(result) == Outcome::Failed
                && failures_in_row == failures_before_alert =>
        {
            out.push(Notification::new(
                NotifyEvent::SyncFailed,
                instance,
                json!({
                    "failures_in_row": failures_in_row,
                    "reason": crate::log::event::FailureReason::of(e).as_str(),
                    "error": e.to_string(),
                    "exit": e.exit() as i32,
                }),
            ))
        }
        _ => {}
    }
    out
}

/// Where delivery outcomes go.
pub enum Record {
    /// Appended to the log (`NotificationDelivered` / `NotificationFailed`).
    Log(AnyStore),
    /// Said on stderr: for commands that write nothing.
    Stderr,
}

/// Notifications waiting to be delivered at most; more are dropped (and said).
const QUEUE: usize = 64;
/// One attempt's limit (less when less of the notification's time is left).
const ATTEMPT: Duration = Duration::from_secs(10);
/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The channels of one `[notify]`, resolved.
struct Channels {
    webhook: Option<(reqwest::Client, String, Option<Secret>)>,
    command: Option<Vec<String>>,
    timeout: Duration,
}

/// Sends notifications from a task of its own; [`Notifier::finish`] waits for them.
pub struct Notifier {
    active: Option<Active>,
    failures_before_alert: u32,
}

struct Active {
    tx: mpsc::Sender<Notification>,
    worker: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Notifier {
    /// A notifier for `cfg`'s `[notify]` (none: it drops everything). The webhook's secret
    /// is read now: unset, it is a configuration error (exit 2) before anything is written.
    pub fn start(cfg: &Config, record: Record) -> Result<Notifier> {
        let Some(n) = &cfg.notify else {
            return Ok(Notifier {
                active: None,
                failures_before_alert: NotifyConfig::default().failures_before_alert,
            });
        };
        let webhook = match &n.webhook_url {
            None => None,
            Some(url) => {
                let secret = n
                    .webhook_secret
                    .as_ref()
                    .map(|s| s.resolve("notify.webhook_secret"))
                    .transpose()?;
                let client = reqwest::Client::builder()
                    .connect_timeout(ATTEMPT)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("dirsync/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|_| Error::Config("notify: cannot build an HTTP client".into()))?;
                Some((client, url.clone(), secret))
            }
        };
        let channels = Channels {
            webhook,
            command: n.command.clone(),
            timeout: n.timeout,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = tokio::spawn(work(rx, channels, record));
        Ok(Notifier {
            active: Some(Active {
                tx,
                worker,
                timeout: n.timeout,
            }),
            failures_before_alert: n.failures_before_alert,
        })
    }

    /// Whether `[notify]` is configured (else [`Notifier::send`] drops everything).
    pub fn active(&self) -> bool {
        self.active.is_some()
    }

    /// `[notify] failures_before_alert`.
    pub fn failures_before_alert(&self) -> u32 {
        self.failures_before_alert
    }

    /// Queue `n` for delivery; never waits.
    pub fn send(&self, n: Notification) {
        let Some(a) = &self.active else {
            return;
        };
        if let Err(e) = a.tx.try_send(n) {
            let n = match e {
                mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
            };
            tracing::warn!(
                "notification {} dropped: {}",
                n.event.as_str(),
                DeliveryError::QueueFull
            );
        }
    }

    /// Deliver what is queued (each notification bounded by `[notify] timeout` per
    /// channel), then end; waits at most that timeout and 5 s (under systemd's default
    /// stop timeout of 90 s at the default 60 s), dropping what is left then.
    pub async fn finish(self) {
        let Some(a) = self.active else {
            return;
        };
        drop(a.tx);
        let mut worker = a.worker;
        let limit = a.timeout + Duration::from_secs(5);
        if tokio::time::timeout(limit, &mut worker).await.is_err() {
            worker.abort();
            tracing::warn!("notifications still undelivered at exit were dropped");
        }
    }
}

async fn work(mut rx: mpsc::Receiver<Notification>, channels: Channels, record: Record) {
    while let Some(n) = rx.recv().await {
        let body = n.body();
        let deadline = Instant::now() + channels.timeout;
        let webhook = async {
            match &channels.webhook {
                Some((client, url, secret)) => Some((
                    Channel::Webhook,
                    receiver_of(url),
                    post(client, url, secret.as_ref(), n.event, &body, deadline).await,
                )),
                None => None,
            }
        };
        let command = async {
            match &channels.command {
                Some(argv) => Some((
                    Channel::Command,
                    argv[0].clone(),
                    run(argv, n.event, &body, deadline).await,
                )),
                None => None,
            }
        };
        let (w, c) = tokio::join!(webhook, command);
        for (channel, receiver, (attempts, outcome)) in [w, c].into_iter().flatten() {
            let said = format!(
                "notification {} {} by {} to {receiver}{} ({attempts} attempt(s))",
                n.event.as_str(),
                if outcome.is_ok() {
                    "delivered"
                } else {
                    "not delivered"
                },
                channel.as_str(),
                outcome.err().map_or(String::new(), |e| format!(": {e}")),
            );
            let event = match outcome {
                Ok(()) => Event::NotificationDelivered(NotificationDelivered {
                    event: n.event,
                    channel,
                    receiver,
                    attempts,
                }),
                Err(error) => Event::NotificationFailed(NotificationFailed {
                    event: n.event,
                    channel,
                    receiver,
                    attempts,
                    error,
                }),
            };
            let failed = matches!(event, Event::NotificationFailed(_));
            match &record {
                Record::Log(store) => {
                    if failed {
                        tracing::warn!("{said}");
                    } else {
                        tracing::info!("{said}");
                    }
                    let batch = Batch::new(vec![NewEvent::new(
                        stream::NOTIFY,
                        n.instance.clone(),
                        event,
                    )]);
                    if let Err(e) = store.append(batch).await {
                        tracing::warn!("recording a notification's delivery: {e}");
                    }
                }
                Record::Stderr if failed => eprintln!("dirsync: {said}"),
                Record::Stderr => tracing::info!("{said}"),
            }
        }
    }
}

/// Try `attempt` until it succeeds, fails for good, or `deadline` leaves no time: the
/// attempts made and the last outcome.
async fn retried<F, Fut>(deadline: Instant, mut attempt: F) -> (u32, Result<(), DeliveryError>)
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<(), DeliveryError>>,
{
    let mut attempts = 0;
    let mut backoff = BACKOFF;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (attempts, Err(DeliveryError::Timeout));
        }
        attempts += 1;
        let r = attempt(ATTEMPT.min(left)).await;
        match r {
            Ok(()) => return (attempts, Ok(())),
            Err(e) if !e.retryable() => return (attempts, Err(e)),
            Err(e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if backoff >= left {
                    return (attempts, Err(e));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&Secret>,
    event: NotifyEvent,
    body: &[u8],
    deadline: Instant,
) -> (u32, Result<(), DeliveryError>) {
    let sig = secret.map(|s| signature(s.expose().as_bytes(), body));
    retried(deadline, |limit| {
        let mut req = client
            .post(url)
            .timeout(limit)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Dirsync-Event", event.as_str())
            .body(body.to_vec());
        if let Some(sig) = &sig {
            req = req.header("X-Dirsync-Signature", sig.as_str());
        }
        async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(DeliveryError::Http {
                    status: r.status().as_u16(),
                }),
                Err(e) if e.is_timeout() => Err(DeliveryError::Timeout),
                Err(e) if e.is_connect() => Err(DeliveryError::Connect),
                Err(_) => Err(DeliveryError::Request),
            }
        }
    })
    .await
}

async fn run(
    argv: &[String],
    event: NotifyEvent,
    body: &[u8],
    deadline: Instant,
) -> (u32, Result<(), DeliveryError>) {
    retried(deadline, |limit| run_once(argv, event, body, limit)).await
}

/// Run the command once with `body` on stdin, killing it (and its process group) at `limit`.
async fn run_once(
    argv: &[String],
    event: NotifyEvent,
    body: &[u8],
    limit: Duration,
) -> Result<(), DeliveryError> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("DIRSYNC_EVENT", event.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DeliveryError::NotFound,
        _ => DeliveryError::Spawn,
    })?;
    let pid = child.id();
    let talk = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read its stdin may close it first: not a failure.
            let _ = stdin.write_all(body).await;
            drop(stdin);
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(limit, talk).await {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => return Err(DeliveryError::Spawn),
        Err(_) => {
            kill_group(pid);
            let _ = child.kill().await;
            return Err(DeliveryError::Killed);
        }
    };
    if status.success() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return Err(DeliveryError::Signal { signal });
        }
    }
    Err(DeliveryError::Exit {
        code: status.code().unwrap_or(-1),
    })
}

/// Kill the command's process group (what it started too).
fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group, which the child
        // leads (process_group(0)); it touches no memory of ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pid;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn receivers_are_recorded_without_credentials_or_query() {
        assert_eq!(
            receiver_of("https://user:pw@hooks.example.com:8443/dirsync?token=abc#x"),
            "https://hooks.example.com:8443/dirsync"
        );
    }

    #[test]
    fn the_body_is_the_documented_shape() {
        let n = Notification {
            event: NotifyEvent::DeletionsHeld,
            instance: "a".into(),
            at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            details: json!({"count": 2}),
        };
        let v: Value = serde_json::from_slice(&n.body()).unwrap();
        assert_eq!(
            v,
            json!({"event": "deletions_held", "instance": "a",
                   "at": "2026-01-02T03:04:05.123456Z", "details": {"count": 2}})
        );
    }

    #[test]
    fn cycles_call_for_notifications() {
        let failed: Result<SyncReport> = Err(Error::Target("down".into()));
        let events = |r: &Result<SyncReport>, n: u32| -> Vec<NotifyEvent> {
            after_cycle("a", r, None, 0, n, 3)
                .into_iter()
                .map(|n| n.event)
                .collect()
        };
        assert_eq!(events(&failed, 2), vec![]);
        assert_eq!(events(&failed, 3), vec![NotifyEvent::SyncFailed]);
        assert_eq!(events(&failed, 4), vec![], "once per run of failures");
        let n = &after_cycle("a", &failed, None, 0, 3, 3)[0];
        assert_eq!(
            n.details,
            json!({"failures_in_row": 3, "reason": "target", "error": "target: down", "exit": 1})
        );
        let fenced: Result<SyncReport> = Err(Error::Fenced("b holds it".into()));
        assert_eq!(events(&fenced, 0), vec![NotifyEvent::Fenced]);
        let skipped: Result<SyncReport> = Err(Error::Refused("running".into()));
        assert_eq!(events(&skipped, 3), vec![]);
        let held: Result<SyncReport> = Ok(SyncReport {
            held: 2,
            held_plan: Some("p1".into()),
            ..Default::default()
        });
        // Held since the cycle began: new; held before: already told.
        let mut state = Control::default();
        state.guard.plans.insert(
            "p1".into(),
            crate::project::HeldDeletions {
                anchors: vec!["x".into(), "y".into()],
                reason: "r".into(),
                held: crate::project::At { seq: 9, at_us: 100 },
                approved: None,
                by: "a".into(),
            },
        );
        let ev = |began| -> Vec<NotifyEvent> {
            after_cycle("a", &held, Some(&state), began, 0, 3)
                .into_iter()
                .map(|n| n.event)
                .collect()
        };
        assert_eq!(ev(50), vec![NotifyEvent::DeletionsHeld]);
        assert_eq!(ev(150), vec![]);
        let ok: Result<SyncReport> = Ok(SyncReport::default());
        assert_eq!(events(&ok, 0), vec![]);
    }
}

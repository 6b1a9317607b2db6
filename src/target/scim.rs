//! The SCIM 2.0 target (RFC 7643 resources, RFC 7644 protocol).
//!
//! One [`reqwest::Client`] (rustls, pooled connections, [`REQUEST_TIMEOUT`] per request)
//! talks to the service provider's base URL (`https://host/scim/v2`). Users carry the
//! core schema plus the enterprise extension (`department`), groups the core group schema;
//! both carry the dirsync anchor as `externalId` (INTERFACE.md mapping).
//!
//! * [`Target::list`] pages through `/Users` or `/Groups` with `startIndex`/`count`,
//!   following `totalResults`.
//! * [`Target::candidates`] is one filtered GET (`externalId eq … or userName eq … or
//!   emails.value eq …`).
//! * [`Target::apply`] runs a chunk of ops with bounded concurrency. Creates POST the whole
//!   resource; updates PATCH only the differences between `from` and `to` (without
//!   `from`: everything, and `externalId` = the anchor, turning a soft match into a hard
//!   one), with `If-Match` when the op carries an etag and the server advertises ETags
//!   (ServiceProviderConfig `etag.supported`, read once), re-read and retried once on 412;
//!   an update answered 404 whose object a GET also finds gone is a `gone` failure (the
//!   export re-creates it); deletes DELETE (404 counts as done). 429 (honouring `Retry-After`), 5xx, timeouts and
//!   connection errors are retried with jittered exponential backoff; no request is sent
//!   after the deadline or after a 401.
//!
//! The pure parts (resource JSON, PATCH operations, parsing a resource, filters,
//! `Retry-After`) are free functions with unit tests below.
//!
//! A create that failed ambiguously (5xx, timeout, connection lost: the server may have done
//! it) is never re-sent blindly: the object is looked up by its anchor first and taken if
//! it is there. Updating the e-mail replaces the whole `emails` list with the one work
//! address dirsync manages.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use compact_str::CompactString;
use futures_util::stream::{self, StreamExt};
use rand::Rng;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH, RETRY_AFTER,
};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Map, Value};

use super::{
    request_timeout, Mapped, MappedGroup, MappedUser, Op, Outcome, RemoteObject, Target,
    TargetError, REQUEST_TIMEOUT,
};
use crate::config::{Secret, TargetConfig};
use crate::error::{Error, Result};
use crate::log::event::ObjectKind;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The PATCH path of the enterprise `department`.
const DEPARTMENT_PATH: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department";

/// The probe's filter: a userName no directory gives (a user so named would do as well).
const PROBE_FILTER: &str = "userName eq \"dirsync-probe.invalid\"";
const SCIM_JSON: &str = "application/scim+json";
const ACCEPT_JSON: &str = "application/scim+json, application/json";
/// Resources per page when listing (scim2-server and many providers cap it at 1000).
const PAGE_SIZE: usize = 1000;
/// Ops in flight at once in [`Target::apply`]. Measured against scim2-server (500 creates,
/// release build): 1 in flight 327/s, 3: 315/s, 4: 280/s, 8: 17/s, because a Python
/// `socketserver` listens with a backlog of 5 and more connections at once get their SYN
/// dropped and retried a second later. Four stays under such small backlogs.
const DEFAULT_CONCURRENCY: usize = 4;
/// Tries per request (the first one included) on 429, 5xx, timeouts, connection errors.
const DEFAULT_ATTEMPTS: u32 = 3;
/// First backoff; doubled per retry, jittered to 50–100 %.
const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest backoff between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A `Retry-After` longer than this is not waited for: the request fails.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// The SCIM 2.0 target. Its Debug output shows the URL, never the token.
pub struct ScimTarget {
    client: reqwest::Client,
    base: Url,
    /// `Bearer TOKEN`, marked sensitive.
    auth: HeaderValue,
    concurrency: usize,
    attempts: u32,
    base_delay: Duration,
    /// Whether the server advertises ETags (ServiceProviderConfig `etag.supported`), read
    /// once, on the first update that could carry `If-Match`.
    etags: Box<tokio::sync::OnceCell<bool>>,
    /// Whether the target is down (every request of this client counts).
    breaker: Box<super::retry::Breaker>,
}

impl fmt::Debug for ScimTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScimTarget")
            .field("base", &self.base.as_str())
            .field("token", &"***")
            .field("concurrency", &self.concurrency)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl ScimTarget {
    /// From the `[target]` section: resolves the token (`target.token`). No request is made.
    pub fn from_config(cfg: &TargetConfig) -> Result<ScimTarget> {
        let token = cfg
            .token
            .as_ref()
            .ok_or_else(|| {
                Error::Config("target: token_env or token_file is required for scim".into())
            })?
            .resolve("target.token")?;
        let t = ScimTarget::new(&cfg.url, token)?;
        Ok(match cfg.concurrency {
            Some(n) => t.with_concurrency(n),
            None => t,
        })
    }

    /// A target at `base_url` (the SCIM base, e.g. `http://127.0.0.1:8080/v2`) with a bearer
    /// token. No request is made.
    pub fn new(base_url: &str, token: Secret) -> Result<ScimTarget> {
        let trimmed = base_url.trim_end_matches('/');
        let base = Url::parse(trimmed)
            .map_err(|e| Error::Target(format!("target url `{trimmed}`: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Target(format!(
                "target url `{trimmed}` is not an http(s) URL"
            )));
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                Error::Target("the target token is not a valid HTTP header value".into())
            })?;
        auth.set_sensitive(true);
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(DEFAULT_CONCURRENCY * 2)
            .user_agent(concat!("dirsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Target(format!("http client: {}", error_chain(&e))))?;
        Ok(ScimTarget {
            client,
            base,
            auth,
            concurrency: DEFAULT_CONCURRENCY,
            attempts: DEFAULT_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            etags: Box::default(),
            breaker: Default::default(),
        })
    }

    /// How many ops [`Target::apply`] keeps in flight (at least 1).
    pub fn with_concurrency(mut self, n: usize) -> ScimTarget {
        self.concurrency = n.max(1);
        self
    }

    /// Tries per request (at least 1) and the first backoff between them.
    pub fn with_retries(mut self, attempts: u32, base_delay: Duration) -> ScimTarget {
        self.attempts = attempts.max(1);
        self.base_delay = base_delay;
        self
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `BASE/seg1/seg2`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        u
    }

    /// One try of `req`, the whole body read within `timeout`.
    async fn once(
        &self,
        req: &Req,
        timeout: Duration,
    ) -> std::result::Result<Reply, reqwest::Error> {
        let mut b = self
            .client
            .request(req.method.clone(), req.url.clone())
            .timeout(timeout)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, ACCEPT_JSON);
        if let Some(body) = &req.body {
            b = b.header(CONTENT_TYPE, SCIM_JSON).body(body.clone());
        }
        if let Some(tag) = &req.if_match {
            b = b.header(IF_MATCH, tag.as_str());
        }
        let resp = b.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Send `req` with retries. Returns the final response, whatever its status (a 401 also
    /// closes `gate`); `NotSent` when `gate` was closed before the first try; `Failed` when
    /// retries ran out or the next one would start after the deadline, and (fatal) once
    /// the target is down (`retry::Breaker`).
    async fn send(&self, req: &Req, gate: Gate<'_>) -> std::result::Result<Reply, SendError> {
        let mut last: Option<TargetError> = None;
        for attempt in 1..=self.attempts {
            if let Some(down) = self.breaker.down() {
                return Err(SendError::Failed(down));
            }
            // Under a deadline (the export lease) the request must also end by it.
            let Some(timeout) = request_timeout(gate.deadline).filter(|_| gate.open()) else {
                return Err(match last {
                    None => SendError::NotSent,
                    Some(e) => SendError::Failed(e),
                });
            };
            let backoff = backoff(self.base_delay, attempt);
            let sent = Instant::now();
            let got = self.once(req, timeout).await;
            if got.is_ok() {
                self.breaker.answered();
            }
            let (err, wait) = match got {
                Ok(reply) if reply.status == StatusCode::UNAUTHORIZED => {
                    gate.trip();
                    return Ok(reply);
                }
                Ok(reply)
                    if reply.status == StatusCode::TOO_MANY_REQUESTS
                        || reply.status.is_server_error() =>
                {
                    let wait = if reply.status == StatusCode::TOO_MANY_REQUESTS {
                        reply
                            .headers
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
                            .unwrap_or(backoff)
                    } else {
                        backoff
                    };
                    (reply_error(&req.what, &reply), wait)
                }
                Ok(reply) => return Ok(reply),
                Err(e) if e.is_builder() => {
                    return Err(SendError::Failed(TargetError::new(
                        None,
                        format!("{}: {}", req.what, error_chain(&e)),
                    )));
                }
                Err(e) => {
                    let err = TargetError::new(None, format!("{}: {}", req.what, error_chain(&e)));
                    if let Some(down) = self.breaker.unanswered(sent, &err.message) {
                        return Err(SendError::Failed(down));
                    }
                    (err, backoff)
                }
            };
            let too_late = gate.deadline.is_some_and(|d| Instant::now() + wait >= d);
            // 429 means "not done": only that may be repeated blindly for a POST.
            let ambiguous = req.once_if_ambiguous && err.status != Some(429);
            if attempt == self.attempts || wait > MAX_RETRY_AFTER || too_late || ambiguous {
                return Err(SendError::Failed(err));
            }
            tracing::warn!(
                attempt,
                wait_ms = wait.as_millis() as u64,
                "scim: {err}; retrying"
            );
            tokio::time::sleep(wait).await;
            last = Some(err);
        }
        Err(SendError::Failed(last.unwrap_or_else(|| {
            TargetError::new(None, format!("{}: no attempt made", req.what))
        })))
    }

    /// Every resource of `kind` matching `filter` (all of them without one), all pages,
    /// each id once.
    async fn query(
        &self,
        kind: ObjectKind,
        filter: Option<&str>,
    ) -> std::result::Result<Vec<RemoteObject>, TargetError> {
        self.query_within(kind, filter, Gate::NONE).await
    }

    /// [`query`](Self::query), each page's request sent only while `gate` is open and ended
    /// by its deadline.
    async fn query_within(
        &self,
        kind: ObjectKind,
        filter: Option<&str>,
        gate: Gate<'_>,
    ) -> std::result::Result<Vec<RemoteObject>, TargetError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut start = 1usize;
        loop {
            let mut url = self.url(&[endpoint(kind)]);
            {
                let mut q = url.query_pairs_mut();
                if let Some(f) = filter {
                    q.append_pair("filter", f);
                }
                q.append_pair("startIndex", &start.to_string());
                q.append_pair("count", &PAGE_SIZE.to_string());
            }
            let what = format!("list {} from {start}", endpoint(kind));
            let req = Req::new(Method::GET, url, what);
            let reply = self.send(&req, gate).await.map_err(SendError::into_error)?;
            if !reply.status.is_success() {
                return Err(reply_error(&req.what, &reply));
            }
            let page = reply_json(&req.what, &reply)?;
            let (resources, total) = parse_list_response(&page).map_err(|e| {
                TargetError::new(Some(reply.status.as_u16()), format!("{}: {e}", req.what))
            })?;
            let n = resources.len();
            for r in resources {
                let obj = parse_resource(kind, r).map_err(|e| {
                    TargetError::new(Some(reply.status.as_u16()), format!("{}: {e}", req.what))
                })?;
                if seen.insert(obj.id.clone()) {
                    out.push(obj);
                }
            }
            start += n;
            let more = match total {
                Some(t) => start <= t,
                None => n >= PAGE_SIZE,
            };
            if n == 0 || !more {
                return Ok(out);
            }
        }
    }

    async fn apply_one(&self, op: &Op, gate: Gate<'_>) -> Outcome {
        let done = match op {
            Op::Create { anchor, object } => self.create(anchor, object, gate).await,
            Op::Update {
                anchor,
                target_id,
                from,
                to,
                etag,
            } => {
                self.update(anchor, target_id, from.as_ref(), to, etag.as_deref(), gate)
                    .await
            }
            Op::Delete {
                kind, target_id, ..
            } => self.delete(*kind, target_id, gate).await,
        };
        match done {
            Ok((target_id, etag)) => Outcome::Applied { target_id, etag },
            Err(SendError::NotSent) => Outcome::NotAttempted,
            Err(SendError::Failed(e)) => Outcome::Failed(e),
        }
    }

    async fn create(&self, anchor: &str, object: &Mapped, gate: Gate<'_>) -> Done {
        let kind = object.kind();
        let body = resource_json(anchor, object);
        let what = format!("create {} {anchor}", kind.as_str());
        let mut req = Req::new(Method::POST, self.url(&[endpoint(kind)]), what).json(&body);
        req.once_if_ambiguous = true;
        let mut tries = 1;
        let reply = loop {
            match self.send(&req, gate).await {
                Err(SendError::Failed(e))
                    if !e.fatal && e.status.is_none_or(|s| s >= 500) && tries < self.attempts =>
                {
                    // The server may have created it: look before creating again.
                    let filter = format!("externalId eq {}", filter_string(anchor));
                    if let Ok(found) = self.query_within(kind, Some(&filter), gate).await {
                        if let [one] = found.as_slice() {
                            return Ok((one.id.clone(), one.etag.clone()));
                        }
                    }
                    let wait = backoff(self.base_delay, tries);
                    if gate.deadline.is_some_and(|d| Instant::now() + wait >= d) {
                        return Err(SendError::Failed(e));
                    }
                    tracing::warn!("scim: {e}; not created, trying again");
                    tokio::time::sleep(wait).await;
                    tries += 1;
                }
                other => break other?,
            }
        };
        if !reply.status.is_success() {
            return Err(SendError::Failed(reply_error(&req.what, &reply)));
        }
        let v = reply_json(&req.what, &reply).map_err(SendError::Failed)?;
        let id = attr(&v, "id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                SendError::Failed(TargetError::new(
                    Some(reply.status.as_u16()),
                    format!("{}: the response carries no id", req.what),
                ))
            })?;
        let etag = header_etag(&reply.headers).or_else(|| meta_version(&v));
        Ok((id.to_string(), etag))
    }

    async fn update(
        &self,
        anchor: &str,
        target_id: &str,
        from: Option<&Mapped>,
        to: &Mapped,
        etag: Option<&str>,
        gate: Gate<'_>,
    ) -> Done {
        let operations = patch_operations(anchor, from, to);
        if operations.is_empty() {
            return Ok((target_id.to_string(), etag.map(str::to_string)));
        }
        let kind = to.kind();
        let url = self.url(&[endpoint(kind), target_id]);
        let body = json!({ "schemas": [PATCH_SCHEMA], "Operations": operations });
        let what = format!("update {} {target_id}", kind.as_str());
        let mut req = Req::new(Method::PATCH, url.clone(), what).json(&body);
        if etag.is_some() && self.etags_supported(gate).await {
            req.if_match = etag.map(str::to_string);
        }
        let mut reply = self.send(&req, gate).await?;
        if reply.status == StatusCode::PRECONDITION_FAILED && req.if_match.is_some() {
            // Someone else changed it since we saw it. Our PATCH only touches our
            // attributes: re-read the current version and try once more with it.
            let stale = reply_error(&req.what, &reply);
            let get = Req::new(
                Method::GET,
                url.clone(),
                format!("read {} {target_id}", kind.as_str()),
            );
            let current = match self.send(&get, gate).await {
                Ok(r) => r,
                Err(SendError::NotSent) => return Err(SendError::Failed(stale)),
                Err(e) => return Err(e),
            };
            if !current.status.is_success() {
                return Err(SendError::Failed(reply_error(&get.what, &current)));
            }
            let version = match header_etag(&current.headers) {
                Some(v) => Some(v),
                None => meta_version(&reply_json(&get.what, &current).map_err(SendError::Failed)?),
            };
            tracing::info!("scim: {stale}; retrying with the current version");
            req.if_match = version;
            reply = match self.send(&req, gate).await {
                Ok(r) => r,
                Err(SendError::NotSent) => return Err(SendError::Failed(stale)),
                Err(e) => return Err(e),
            };
        }
        if reply.status == StatusCode::NOT_FOUND {
            // Gone, or a 404 about something else (a member, say)? Only the object's own
            // 404 may lead to a re-creation: ask for it.
            let failed = reply_error(&req.what, &reply);
            let get = Req::new(
                Method::GET,
                url,
                format!("read {} {target_id}", kind.as_str()),
            );
            return Err(SendError::Failed(match self.send(&get, gate).await {
                Ok(r) if r.status == StatusCode::NOT_FOUND => failed.gone(),
                _ => failed,
            }));
        }
        if !reply.status.is_success() {
            return Err(SendError::Failed(reply_error(&req.what, &reply)));
        }
        let new_etag = match header_etag(&reply.headers) {
            Some(v) => Some(v),
            None if reply.body.iter().all(u8::is_ascii_whitespace) => None,
            None => meta_version(&reply_json(&req.what, &reply).map_err(SendError::Failed)?),
        };
        Ok((target_id.to_string(), new_etag))
    }

    /// Whether the server advertises ETags: `etag.supported` of its ServiceProviderConfig
    /// (RFC 7643 §5), read once. A server that does not say so, or whose configuration
    /// cannot be read, gets no `If-Match` (it may refuse or misread one).
    async fn etags_supported(&self, gate: Gate<'_>) -> bool {
        *self
            .etags
            .get_or_init(|| async {
                let req = Req::new(
                    Method::GET,
                    self.url(&["ServiceProviderConfig"]),
                    "read ServiceProviderConfig".to_string(),
                );
                let advertised = match self.send(&req, gate).await {
                    Ok(reply) if reply.status.is_success() => reply_json(&req.what, &reply)
                        .ok()
                        .and_then(|v| etag_supported(&v)),
                    _ => None,
                };
                if advertised.is_none() {
                    tracing::warn!(
                        "scim: the ServiceProviderConfig does not say whether ETags are supported; updates are sent without If-Match"
                    );
                }
                advertised.unwrap_or(false)
            })
            .await
    }

    /// A discovery endpoint (`Schemas`, `ResourceTypes`; RFC 7644 §4) as JSON; None when
    /// the server answers 404 (it does not publish it).
    pub async fn discovery(
        &self,
        endpoint: &str,
    ) -> std::result::Result<Option<Value>, TargetError> {
        let req = Req::new(
            Method::GET,
            self.url(&[endpoint]),
            format!("read /{endpoint}"),
        );
        let reply = self
            .send(&req, Gate::NONE)
            .await
            .map_err(SendError::into_error)?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(reply_error(&req.what, &reply));
        }
        reply_json(&req.what, &reply).map(Some)
    }

    async fn delete(&self, kind: ObjectKind, target_id: &str, gate: Gate<'_>) -> Done {
        let what = format!("delete {} {target_id}", kind.as_str());
        let req = Req::new(Method::DELETE, self.url(&[endpoint(kind), target_id]), what);
        let reply = self.send(&req, gate).await?;
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            Ok((target_id.to_string(), None))
        } else {
            Err(SendError::Failed(reply_error(&req.what, &reply)))
        }
    }
}

impl Target for ScimTarget {
    /// The credentials and the endpoint, checked by a list request that names at most one
    /// user (`userName eq`, the filter provisioning clients look users up by; Entra's SCIM
    /// requirements name it): a page of all users,
    /// even of one, makes some servers count them all (scim2-server took 0.29 s at 100,000
    /// users, every cycle). A server that cannot filter (400) is asked for that page.
    async fn probe(&self) -> std::result::Result<(), TargetError> {
        let mut url = self.url(&["Users"]);
        url.query_pairs_mut()
            .append_pair("filter", PROBE_FILTER)
            .append_pair("count", "1");
        let filtered = Req::new(Method::GET, url, "probe GET /Users?filter".to_string());
        let mut reply = self
            .send(&filtered, Gate::NONE)
            .await
            .map_err(SendError::into_error)?;
        let mut req = filtered;
        if reply.status == StatusCode::BAD_REQUEST {
            let mut url = self.url(&["Users"]);
            url.query_pairs_mut()
                .append_pair("startIndex", "1")
                .append_pair("count", "1");
            req = Req::new(Method::GET, url, "probe GET /Users".to_string());
            reply = self
                .send(&req, Gate::NONE)
                .await
                .map_err(SendError::into_error)?;
        }
        if !reply.status.is_success() {
            return Err(reply_error(&req.what, &reply));
        }
        let page = reply_json(&req.what, &reply)?;
        parse_list_response(&page).map(|_| ()).map_err(|e| {
            TargetError::new(Some(reply.status.as_u16()), format!("{}: {e}", req.what))
        })
    }

    async fn list(&self, kind: ObjectKind) -> std::result::Result<Vec<RemoteObject>, TargetError> {
        self.query(kind, None).await
    }

    async fn candidates(
        &self,
        anchor: &str,
        object: &Mapped,
    ) -> std::result::Result<Vec<RemoteObject>, TargetError> {
        self.query(object.kind(), Some(&candidates_filter(anchor, object)))
            .await
    }

    async fn carrying(
        &self,
        kind: ObjectKind,
        anchor: &str,
    ) -> std::result::Result<Option<Vec<RemoteObject>>, TargetError> {
        let filter = anchor_terms(anchor).join(" or ");
        self.query(kind, Some(&filter)).await.map(Some)
    }

    async fn eq_ignores_case(
        &self,
        id: &str,
        known: &Mapped,
    ) -> std::result::Result<bool, TargetError> {
        for filter in case_probe_filters(known) {
            let found = self.query(known.kind(), Some(&filter)).await?;
            if !found.iter().any(|r| r.id == id) {
                tracing::info!(
                    "scim: the target's `{filter}` does not find {id}: its eq compares case-exactly; matching reads the whole listing"
                );
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn apply(&self, ops: &[Op], deadline: Instant) -> Vec<Outcome> {
        let stop = AtomicBool::new(false);
        let gate = Gate {
            deadline: Some(deadline),
            stop: Some(&stop),
        };
        // Unordered, so one slow request does not hold the slots behind it; the outcomes
        // are put back in op order.
        // Collected first: a lazy `map` here makes the future not `Send` for every lifetime.
        let requests: Vec<_> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| async move { (i, self.apply_one(op, gate).await) })
            .collect();
        let mut out: Vec<(usize, Outcome)> = stream::iter(requests)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, o)| o).collect()
    }
}

// ---- transport plumbing ----

/// A finished op: the target id and the new etag.
type Done = std::result::Result<(String, Option<String>), SendError>;

enum SendError {
    /// Never sent (deadline passed, or a fatal error stopped the chunk).
    NotSent,
    Failed(TargetError),
}

impl SendError {
    fn into_error(self) -> TargetError {
        match self {
            SendError::NotSent => TargetError::new(None, "request not sent"),
            SendError::Failed(e) => e,
        }
    }
}

/// When requests may still be sent: before `deadline` and until a fatal error.
#[derive(Clone, Copy)]
struct Gate<'a> {
    deadline: Option<Instant>,
    stop: Option<&'a AtomicBool>,
}

impl Gate<'_> {
    const NONE: Gate<'static> = Gate {
        deadline: None,
        stop: None,
    };

    fn open(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d)
            && self.stop.is_none_or(|s| !s.load(Ordering::SeqCst))
    }

    fn trip(&self) {
        if let Some(s) = self.stop {
            s.store(true, Ordering::SeqCst);
        }
    }
}

struct Req {
    method: Method,
    url: Url,
    body: Option<Bytes>,
    if_match: Option<String>,
    /// What it is for, in messages: "create user ANCHOR".
    what: String,
    /// Not safe to send again blindly (a POST): after a 5xx or a transport error the server
    /// may have done it, so `send` gives up at once and the caller looks before retrying.
    once_if_ambiguous: bool,
}

impl Req {
    fn new(method: Method, url: Url, what: String) -> Req {
        Req {
            method,
            url,
            body: None,
            if_match: None,
            what,
            once_if_ambiguous: false,
        }
    }

    fn json(mut self, v: &Value) -> Req {
        self.body = Some(Bytes::from(v.to_string()));
        self
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

fn endpoint(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::User => "Users",
        ObjectKind::Group => "Groups",
    }
}

/// The retry wait before try `attempt + 1`: `base * 2^(attempt-1)`, at most
/// [`MAX_BACKOFF`], jittered to 50–100 %.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// A reqwest error with its causes, on one line (URLs carry no secret; the token is in a
/// header).
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The error a non-success response stands for, with the SCIM `scimType` and `detail`.
fn reply_error(what: &str, reply: &Reply) -> TargetError {
    TargetError::new(
        Some(reply.status.as_u16()),
        format!("{what}: {}", describe_error_body(reply.status, &reply.body)),
    )
}

/// "scimType: detail" from a SCIM error body, else the reason phrase and a bit of the body.
fn describe_error_body(status: StatusCode, body: &[u8]) -> String {
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let detail = attr(&v, "detail").and_then(Value::as_str);
        let kind = attr(&v, "scimType").and_then(Value::as_str);
        match (kind, detail) {
            (Some(k), Some(d)) => return format!("{k}: {d}"),
            (None, Some(d)) => return d.to_string(),
            (Some(k), None) => return format!("{reason}: {k}"),
            (None, None) => {}
        }
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        reason
    } else {
        format!("{reason}: {text}")
    }
}

/// The JSON body of a success response; malformed JSON is an error, never a panic.
fn reply_json(what: &str, reply: &Reply) -> std::result::Result<Value, TargetError> {
    serde_json::from_slice(&reply.body).map_err(|e| {
        TargetError::new(
            Some(reply.status.as_u16()),
            format!("{what}: malformed JSON in the response: {e}"),
        )
    })
}

fn header_etag(h: &HeaderMap) -> Option<String> {
    h.get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn meta_version(v: &Value) -> Option<String> {
    path(v, &["meta", "version"])
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

// ---- pure helpers: resources, PATCH, filters ----

/// The full SCIM resource for a create, carrying `anchor` as `externalId`.
pub fn resource_json(anchor: &str, object: &Mapped) -> Value {
    let mut r = Map::new();
    match object {
        Mapped::User(u) => {
            let mut schemas = vec![json!(USER_SCHEMA)];
            r.insert("externalId".into(), json!(anchor));
            r.insert("userName".into(), json!(u.user_name));
            if let Some(d) = &u.display_name {
                r.insert("displayName".into(), json!(d));
            }
            let mut name = Map::new();
            if let Some(g) = &u.given_name {
                name.insert("givenName".into(), json!(g));
            }
            if let Some(f) = &u.family_name {
                name.insert("familyName".into(), json!(f));
            }
            if !name.is_empty() {
                r.insert("name".into(), Value::Object(name));
            }
            if let Some(t) = &u.title {
                r.insert("title".into(), json!(t));
            }
            if let Some(d) = &u.department {
                r.insert(ENTERPRISE_SCHEMA.into(), json!({ "department": d }));
            }
            r.insert("active".into(), json!(u.active));
            for (key, value) in &u.extra {
                let Ok(p) = extra_path(key) else { continue };
                match p {
                    ExtraPath::Core { attr, sub: None } => {
                        r.insert(attr.into(), json!(value));
                    }
                    ExtraPath::Core {
                        attr,
                        sub: Some(sub),
                    } => {
                        if let Some(o) = r
                            .entry(attr)
                            .or_insert_with(|| Value::Object(Map::new()))
                            .as_object_mut()
                        {
                            o.insert(sub.into(), json!(value));
                        }
                    }
                    ExtraPath::Extension { schema, attr } => {
                        if let Some(o) = r
                            .entry(schema)
                            .or_insert_with(|| Value::Object(Map::new()))
                            .as_object_mut()
                        {
                            o.insert(attr.into(), json!(value));
                        }
                    }
                    ExtraPath::Reference { schema, attr } => {
                        if let Some(o) = r
                            .entry(schema)
                            .or_insert_with(|| Value::Object(Map::new()))
                            .as_object_mut()
                        {
                            o.insert(attr.into(), json!({ "value": value }));
                        }
                    }
                    // Multi-valued attributes below, whole.
                    ExtraPath::Typed { .. } => {}
                }
            }
            for (attr, values) in typed_values(u) {
                r.insert(attr.into(), values);
            }
            for k in r.keys() {
                if k.starts_with("urn:") {
                    schemas.push(json!(k));
                }
            }
            r.insert("schemas".into(), Value::Array(schemas));
        }
        Mapped::Group(g) => {
            r.insert("schemas".into(), json!([GROUP_SCHEMA]));
            r.insert("externalId".into(), json!(anchor));
            r.insert("displayName".into(), json!(g.display_name));
            if !g.members.is_empty() {
                r.insert("members".into(), member_values(g.members.iter()));
            }
        }
    }
    Value::Object(r)
}

/// A user attribute other than the default table's that the mapping can set
/// (`[mapping.user]` keys of a SCIM target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraPath<'a> {
    /// A core attribute (`nickName`), or a sub-attribute of `name` (`name.middleName`).
    Core { attr: &'a str, sub: Option<&'a str> },
    /// An attribute of an extension schema (`urn:...:enterprise:2.0:User:employeeNumber`).
    Extension { schema: &'a str, attr: &'a str },
    /// The enterprise `manager`: the manager's target id, written as `{"value": id}`.
    Reference { schema: &'a str, attr: &'a str },
    /// A value of a multi-valued attribute, by its type:
    /// `phoneNumbers[type eq "mobile"].value`, `addresses[type eq "work"].locality`.
    Typed {
        attr: &'a str,
        kind: &'a str,
        sub: &'a str,
    },
}

/// Core string attributes of a User (RFC 7643 §4.1.1) the mapping may set.
const CORE_EXTRA: &[&str] = &[
    "nickName",
    "profileUrl",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
];
const NAME_EXTRA: &[&str] = &[
    "formatted",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
];
/// The enterprise extension's string attributes (RFC 7643 §4.3); department is the
/// default table's, manager a reference.
const ENTERPRISE_EXTRA: &[&str] = &["employeeNumber", "costCenter", "organization", "division"];
/// Multi-valued attributes with a `type` and a `value` (RFC 7643 §4.1.2).
const TYPED_VALUE: &[&str] = &["emails", "phoneNumbers", "ims", "photos"];
const ADDRESS_SUB: &[&str] = &[
    "formatted",
    "streetAddress",
    "locality",
    "region",
    "postalCode",
    "country",
];

/// Where `key` goes in a User resource, or why dirsync cannot write it.
pub fn extra_path(key: &str) -> std::result::Result<ExtraPath<'_>, String> {
    if let Some(attr) = key
        .strip_prefix(ENTERPRISE_SCHEMA)
        .and_then(|r| r.strip_prefix(':'))
    {
        return match attr {
            a if ENTERPRISE_EXTRA.contains(&a) => Ok(ExtraPath::Extension {
                schema: ENTERPRISE_SCHEMA,
                attr: a,
            }),
            "manager" => Ok(ExtraPath::Reference {
                schema: ENTERPRISE_SCHEMA,
                attr: "manager",
            }),
            _ => Err(format!(
                "the enterprise extension has no string attribute `{attr}` ({}, department)",
                ENTERPRISE_EXTRA.join(", ")
            )),
        };
    }
    if key.starts_with("urn:") {
        // An extension schema the server advertises (`preflight` reads /Schemas).
        return match key.rsplit_once(':') {
            Some((schema, attr))
                if schema != USER_SCHEMA
                    && !attr.is_empty()
                    && attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                Ok(ExtraPath::Extension { schema, attr })
            }
            _ => Err("not `SCHEMA_URN:attribute`".into()),
        };
    }
    if let Some((attr, rest)) = key.split_once("[type eq \"") {
        let (kind, sub) = rest
            .split_once("\"].")
            .ok_or_else(|| "write a typed value as `attr[type eq \"work\"].value`".to_string())?;
        let ok = (TYPED_VALUE.contains(&attr) && sub == "value")
            || (attr == "addresses" && ADDRESS_SUB.contains(&sub));
        if !ok || kind.is_empty() || kind.contains('"') {
            return Err(format!(
                "not a typed value dirsync writes ({}[type eq \"T\"].value, addresses[type eq \"T\"].{})",
                TYPED_VALUE.join("|"),
                ADDRESS_SUB.join("|")
            ));
        }
        return Ok(ExtraPath::Typed { attr, kind, sub });
    }
    if let Some(sub) = key.strip_prefix("name.") {
        if NAME_EXTRA.contains(&sub) {
            return Ok(ExtraPath::Core {
                attr: "name",
                sub: Some(sub),
            });
        }
    }
    if CORE_EXTRA.contains(&key) {
        return Ok(ExtraPath::Core {
            attr: key,
            sub: None,
        });
    }
    Err(format!(
        "not a SCIM user attribute dirsync writes: {}, name.{}, typed values, extension attributes (URN:attribute)",
        CORE_EXTRA.join(", "),
        NAME_EXTRA.join("|")
    ))
}

/// The user's multi-valued attributes, whole: the work e-mail and every typed value the
/// mapping sets, grouped by attribute and type.
fn typed_values(u: &MappedUser) -> BTreeMap<&str, Value> {
    // Attribute -> (type, the value's object), in order.
    type Typed<'a> = Vec<(&'a str, Map<String, Value>)>;
    let mut by: BTreeMap<&str, Typed<'_>> = BTreeMap::new();
    if let Some(e) = &u.email {
        let mut o = Map::new();
        o.insert("value".into(), json!(e));
        o.insert("type".into(), json!("work"));
        o.insert("primary".into(), json!(true));
        by.entry("emails").or_default().push(("work", o));
    }
    for (key, value) in &u.extra {
        if let Ok(ExtraPath::Typed { attr, kind, sub }) = extra_path(key) {
            let list = by.entry(attr).or_default();
            let i = match list.iter().position(|(k, _)| *k == kind) {
                Some(i) => i,
                None => {
                    let mut o = Map::new();
                    o.insert("type".into(), json!(kind));
                    list.push((kind, o));
                    list.len() - 1
                }
            };
            list[i].1.insert(sub.into(), json!(value));
        }
    }
    by.into_iter()
        .map(|(a, l)| {
            (
                a,
                Value::Array(l.into_iter().map(|(_, o)| Value::Object(o)).collect()),
            )
        })
        .collect()
}

fn member_values<'a>(ids: impl Iterator<Item = &'a String>) -> Value {
    Value::Array(ids.map(|id| json!({ "value": id })).collect())
}

/// A user's attributes as (PATCH path, value), None when absent: the default table's
/// (always listed), then the others the mapping sets; multi-valued ones whole.
fn user_attributes(u: &MappedUser) -> Vec<(&str, Option<Value>)> {
    let s = |v: &Option<CompactString>| v.as_ref().map(|s| json!(s));
    let mut typed = typed_values(u);
    let mut out = vec![
        ("userName", Some(json!(u.user_name))),
        ("displayName", s(&u.display_name)),
        ("name.givenName", s(&u.given_name)),
        ("name.familyName", s(&u.family_name)),
        ("emails", typed.remove("emails")),
        ("title", s(&u.title)),
        (DEPARTMENT_PATH, s(&u.department)),
        ("active", Some(json!(u.active))),
    ];
    for (key, value) in &u.extra {
        match extra_path(key) {
            Ok(ExtraPath::Core { .. } | ExtraPath::Extension { .. }) => {
                out.push((key.as_str(), Some(json!(value))))
            }
            Ok(ExtraPath::Reference { .. }) => {
                out.push((key.as_str(), Some(json!({ "value": value }))))
            }
            Ok(ExtraPath::Typed { .. }) | Err(_) => {}
        }
    }
    out.extend(typed.into_iter().map(|(a, v)| (a, Some(v))));
    out
}

/// The PATCH operations (RFC 7644 §3.5.2) that turn `from` into `to`: only what differs.
/// Without `from` (or of another kind), every attribute of `to` is written: `replace` of
/// each one set, `remove` of each one absent (so the object converges whatever it held),
/// a group's members list replaced as a whole, and `externalId` set to `anchor` (a soft
/// match becomes a hard one). Empty when nothing differs.
pub fn patch_operations(anchor: &str, from: Option<&Mapped>, to: &Mapped) -> Vec<Value> {
    let mut ops = Vec::new();
    let known = matches!(
        (from, to),
        (Some(Mapped::User(_)), Mapped::User(_)) | (Some(Mapped::Group(_)), Mapped::Group(_))
    );
    if !known {
        ops.push(json!({ "op": "replace", "path": "externalId", "value": anchor }));
    }
    match to {
        Mapped::User(t) => {
            let from = match from {
                Some(Mapped::User(f)) => Some(user_attributes(f)),
                _ => None,
            };
            let to = user_attributes(t);
            for (path, value) in &to {
                let old = from.as_ref().map(|f| {
                    f.iter()
                        .find(|(p, _)| p == path)
                        .and_then(|(_, v)| v.as_ref())
                });
                if old == Some(value.as_ref()) {
                    continue;
                }
                match value {
                    Some(v) => ops.push(json!({ "op": "replace", "path": path, "value": v })),
                    None => ops.push(json!({ "op": "remove", "path": path })),
                }
            }
            // What the mapping no longer sets.
            for (path, value) in from.iter().flatten() {
                if value.is_some() && !to.iter().any(|(p, _)| p == path) {
                    ops.push(json!({ "op": "remove", "path": path }));
                }
            }
        }
        Mapped::Group(t) => {
            let from = match from {
                Some(Mapped::Group(f)) => Some(f),
                _ => None,
            };
            if from.is_none_or(|f| f.display_name != t.display_name) {
                ops.push(
                    json!({ "op": "replace", "path": "displayName", "value": t.display_name }),
                );
            }
            match from {
                None => ops.push(json!({
                    "op": "replace",
                    "path": "members",
                    "value": member_values(t.members.iter()),
                })),
                Some(f) => {
                    let added: Vec<&String> = t.members.difference(&f.members).collect();
                    if !added.is_empty() {
                        ops.push(json!({
                            "op": "add",
                            "path": "members",
                            "value": member_values(added.into_iter()),
                        }));
                    }
                    for gone in f.members.difference(&t.members) {
                        ops.push(json!({
                            "op": "remove",
                            "path": format!("members[value eq {}]", filter_string(gone)),
                        }));
                    }
                }
            }
        }
    }
    ops
}

/// A filter comparison value: a quoted string with `"` and `\` escaped (RFC 7644 §3.4.2.2).
pub fn filter_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The filter for [`Target::candidates`]: users by externalId, or userName / an e-mail
/// equal to the object's userName or e-mail; groups by externalId or displayName.
pub fn candidates_filter(anchor: &str, object: &Mapped) -> String {
    let mut terms = anchor_terms(anchor);
    match object {
        Mapped::User(u) => {
            let mut names = vec![u.user_name.as_str()];
            if let Some(e) = u.email.as_deref() {
                if !e.eq_ignore_ascii_case(&u.user_name) {
                    names.push(e);
                }
            }
            for n in names {
                terms.push(format!("userName eq {}", filter_string(n)));
                terms.push(format!("emails.value eq {}", filter_string(n)));
            }
        }
        Mapped::Group(g) => {
            terms.push(format!("displayName eq {}", filter_string(&g.display_name)));
        }
    }
    terms.join(" or ")
}

/// The terms of a filter for the objects carrying `anchor` (joined by `or`).
fn anchor_terms(anchor: &str) -> Vec<String> {
    let mut terms = vec![format!("externalId eq {}", filter_string(anchor))];
    // externalId is caseExact: also find an anchor some other tool wrote in upper case.
    let upper = anchor.to_ascii_uppercase();
    if upper != anchor {
        terms.push(format!("externalId eq {}", filter_string(&upper)));
    }
    terms
}

/// The filters that find `known` by its name (users: also its e-mail) spelt in the other
/// case, one per attribute (a value with no letter to swap is left out).
pub fn case_probe_filters(known: &Mapped) -> Vec<String> {
    let mut probes = Vec::new();
    match known {
        Mapped::User(u) => {
            probes.push(("userName", u.user_name.as_str()));
            if let Some(e) = u.email.as_deref() {
                probes.push(("emails.value", e));
            }
        }
        Mapped::Group(g) => probes.push(("displayName", g.display_name.as_str())),
    }
    probes
        .into_iter()
        .filter_map(|(attr, value)| {
            let swapped = crate::plan::matching::swap_case(value);
            (swapped != value).then(|| format!("{attr} eq {}", filter_string(&swapped)))
        })
        .collect()
}

/// The resources and `totalResults` of a ListResponse.
fn parse_list_response(v: &Value) -> std::result::Result<(&[Value], Option<usize>), String> {
    let total = attr(v, "totalResults")
        .and_then(Value::as_u64)
        .map(|t| t as usize);
    let resources = match attr(v, "Resources") {
        Some(Value::Array(a)) => a.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err("`Resources` is not a list".into()),
    };
    if total.is_none() && !v.is_object() {
        return Err("not a SCIM ListResponse".into());
    }
    Ok((resources, total))
}

/// `etag.supported` of a ServiceProviderConfig.
fn etag_supported(config: &Value) -> Option<bool> {
    path(config, &["etag", "supported"]).and_then(Value::as_bool)
}

fn text(v: &Value, names: &[&str]) -> Option<String> {
    path(v, names).and_then(Value::as_str).map(str::to_string)
}

/// The attribute `name` of a JSON object, its name compared case-insensitively (RFC 7643
/// §2.1: "attribute names are case insensitive"; schema URNs too, RFC 8141). The exact
/// spelling is tried first, so a server that writes names as the RFC does costs one lookup.
fn attr<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(name).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The sub-attribute at `names` (`["name", "givenName"]`), each step by [`attr`].
fn path<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().try_fold(v, |v, n| attr(v, n))
}

/// The attributes a mapping may set beyond the default table's, as a User resource holds
/// them (every one it holds: reconcile compares only those the mapping sets).
fn remote_extras(v: &Value) -> BTreeMap<CompactString, CompactString> {
    let mut out = BTreeMap::new();
    let mut put = |key: String, value: Option<&Value>| {
        if let Some(s) = value.and_then(Value::as_str) {
            out.insert(CompactString::new(key), CompactString::new(s));
        }
    };
    for a in CORE_EXTRA {
        put(a.to_string(), attr(v, a));
    }
    for a in NAME_EXTRA {
        put(format!("name.{a}"), path(v, &["name", a]));
    }
    for (k, ext) in v.as_object().into_iter().flatten() {
        if !k.starts_with("urn:") || k.eq_ignore_ascii_case(USER_SCHEMA) {
            continue;
        }
        let enterprise = k.eq_ignore_ascii_case(ENTERPRISE_SCHEMA);
        let schema = if enterprise { ENTERPRISE_SCHEMA } else { k };
        for (a, value) in ext.as_object().into_iter().flatten() {
            if enterprise && a.eq_ignore_ascii_case("department") {
                continue;
            }
            // The manager's id.
            if enterprise && a.eq_ignore_ascii_case("manager") {
                put(format!("{ENTERPRISE_SCHEMA}:manager"), attr(value, "value"));
                continue;
            }
            let a = ENTERPRISE_EXTRA
                .iter()
                .find(|e| enterprise && e.eq_ignore_ascii_case(a))
                .map_or(a.as_str(), |e| *e);
            put(format!("{schema}:{a}"), Some(value));
        }
    }
    for (name, subs) in TYPED_VALUE
        .iter()
        .map(|a| (*a, &["value"][..]))
        .chain([("addresses", ADDRESS_SUB)])
    {
        let Some(Value::Array(items)) = attr(v, name) else {
            continue;
        };
        for item in items {
            let Some(kind) = attr(item, "type").and_then(Value::as_str) else {
                continue;
            };
            // The work e-mail is the default table's.
            if name == "emails" && kind.eq_ignore_ascii_case("work") {
                continue;
            }
            for sub in subs {
                put(format!("{name}[type eq \"{kind}\"].{sub}"), attr(item, sub));
            }
        }
    }
    out
}

/// A SCIM User or Group resource as a [`RemoteObject`] with its mapped state.
pub fn parse_resource(kind: ObjectKind, v: &Value) -> std::result::Result<RemoteObject, String> {
    let id = attr(v, "id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("a resource without an id")?
        .to_string();
    let anchor = attr(v, "externalId")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    let etag = meta_version(v);
    let created = path(v, &["meta", "created"])
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    match kind {
        ObjectKind::User => {
            let user_name =
                text(v, &["userName"]).ok_or_else(|| format!("user {id} has no userName"))?;
            let emails: Vec<&Value> = match attr(v, "emails") {
                Some(Value::Array(a)) => a.iter().collect(),
                _ => Vec::new(),
            };
            let value = |e: &&Value| attr(e, "value").and_then(Value::as_str).map(str::to_string);
            // `type` is caseExact false (RFC 7643 §4.1.2).
            let is = |e: &&Value, k: &str| {
                attr(e, "type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case(k))
            };
            let primary = |e: &&Value| attr(e, "primary").and_then(Value::as_bool) == Some(true);
            // The work address dirsync manages: work+primary, else work, else primary, else
            // the first.
            let email = emails
                .iter()
                .find(|e| is(e, "work") && primary(e))
                .or_else(|| emails.iter().find(|e| is(e, "work")))
                .or_else(|| emails.iter().find(|e| primary(e)))
                .or_else(|| emails.first())
                .and_then(value);
            let user = MappedUser {
                user_name: user_name.as_str().into(),
                display_name: text(v, &["displayName"]).map(Into::into),
                given_name: text(v, &["name", "givenName"]).map(Into::into),
                family_name: text(v, &["name", "familyName"]).map(Into::into),
                email: email.map(Into::into),
                title: text(v, &["title"]).map(Into::into),
                department: path(v, &[ENTERPRISE_SCHEMA, "department"])
                    .and_then(Value::as_str)
                    .map(CompactString::new),
                active: attr(v, "active").and_then(Value::as_bool).unwrap_or(true),
                extra: remote_extras(v),
            };
            Ok(RemoteObject {
                kind,
                id,
                anchor,
                name: user_name,
                emails: emails.iter().filter_map(value).collect(),
                etag,
                created,
                state: Some(Mapped::User(user)),
            })
        }
        ObjectKind::Group => {
            let display_name = text(v, &["displayName"])
                .ok_or_else(|| format!("group {id} has no displayName"))?;
            // An empty group has no `members` at all (we never exclude the attribute).
            let members: BTreeSet<String> = match attr(v, "members") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|m| attr(m, "value").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect(),
                _ => BTreeSet::new(),
            };
            Ok(RemoteObject {
                kind,
                id,
                anchor,
                name: display_name.clone(),
                emails: Vec::new(),
                etag,
                created,
                state: Some(Mapped::Group(MappedGroup {
                    display_name: display_name.into(),
                    members,
                })),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_user() -> MappedUser {
        MappedUser {
            user_name: "alice@example.org".into(),
            display_name: Some("Alice Liddell".into()),
            given_name: Some("Alice".into()),
            family_name: Some("Liddell".into()),
            email: Some("alice@example.org".into()),
            title: Some("Engineer".into()),
            department: Some("R&D".into()),
            active: true,
            extra: Default::default(),
        }
    }

    fn group(name: &str, members: &[&str]) -> MappedGroup {
        MappedGroup {
            display_name: name.into(),
            members: members.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// What a server would answer for `resource_json`, with an id and a version.
    fn served(anchor: &str, m: &Mapped) -> Value {
        let mut v = resource_json(anchor, m);
        v["id"] = json!("id-1");
        v["meta"] = json!({ "version": "W/\"7\"" });
        v
    }

    #[test]
    fn user_resource_has_the_mapping() {
        let v = resource_json("a-1", &Mapped::User(full_user()));
        assert_eq!(
            v,
            json!({
                "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
                "externalId": "a-1",
                "userName": "alice@example.org",
                "displayName": "Alice Liddell",
                "name": { "givenName": "Alice", "familyName": "Liddell" },
                "emails": [{ "value": "alice@example.org", "type": "work", "primary": true }],
                "title": "Engineer",
                ENTERPRISE_SCHEMA: { "department": "R&D" },
                "active": true,
            })
        );
    }

    #[test]
    fn minimal_user_resource_leaves_absent_attributes_out() {
        let u = MappedUser {
            user_name: "bob".into(),
            active: false,
            ..Default::default()
        };
        let v = resource_json("b", &Mapped::User(u));
        assert_eq!(
            v,
            json!({ "schemas": [USER_SCHEMA], "externalId": "b", "userName": "bob", "active": false })
        );
    }

    #[test]
    fn group_resource_lists_members() {
        let v = resource_json("g", &Mapped::Group(group("team", &["u2", "u1"])));
        assert_eq!(
            v,
            json!({
                "schemas": [GROUP_SCHEMA],
                "externalId": "g",
                "displayName": "team",
                "members": [{ "value": "u1" }, { "value": "u2" }],
            })
        );
        let empty = resource_json("g", &Mapped::Group(group("none", &[])));
        assert!(empty.get("members").is_none());
    }

    #[test]
    fn parse_round_trips_what_we_create() {
        for m in [
            Mapped::User(full_user()),
            Mapped::User(MappedUser {
                user_name: "bob".into(),
                ..Default::default()
            }),
            Mapped::Group(group("team", &["u1", "u2"])),
            Mapped::Group(group("empty", &[])),
        ] {
            let r = parse_resource(m.kind(), &served("AB-CD", &m)).unwrap();
            assert_eq!(r.id, "id-1");
            assert_eq!(r.anchor.as_deref(), Some("ab-cd"), "anchor is lowercased");
            assert_eq!(r.etag.as_deref(), Some("W/\"7\""));
            assert_eq!(r.name, m.name());
            assert_eq!(r.state.as_ref(), Some(&m));
        }
    }

    #[test]
    fn parse_picks_the_work_email_and_lists_all() {
        let v = json!({
            "id": "x", "userName": "u",
            "emails": [
                { "value": "home@x", "type": "home", "primary": true },
                { "value": "work@x", "type": "work" },
            ],
        });
        let r = parse_resource(ObjectKind::User, &v).unwrap();
        assert_eq!(r.emails, vec!["home@x", "work@x"]);
        let Some(Mapped::User(u)) = r.state else {
            panic!("no user state")
        };
        assert_eq!(u.email.as_deref(), Some("work@x"));
        assert!(u.active, "active defaults to true");
        assert_eq!(r.anchor, None);
        assert_eq!(r.etag, None);
        assert_eq!(r.created, None);
    }

    #[test]
    fn parse_reads_the_creation_time() {
        let at = |created: &str| {
            let v = json!({ "id": "x", "displayName": "g", "meta": { "created": created } });
            parse_resource(ObjectKind::Group, &v).unwrap().created
        };
        assert_eq!(
            at("2026-12-02T13:15:27.123456+01:00"),
            chrono::DateTime::parse_from_rfc3339("2026-12-02T12:15:27.123456Z")
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
        );
        assert_eq!(at("yesterday"), None);
    }

    #[test]
    fn attribute_names_are_read_case_insensitively() {
        let m = Mapped::User(full_user());
        let exact = parse_resource(ObjectKind::User, &served("ab", &m)).unwrap();
        let v = json!({
            "ID": "id-1",
            "EXTERNALID": "AB",
            "UserName": "alice@example.org",
            "displayname": "Alice Liddell",
            "Name": { "GivenName": "Alice", "FAMILYNAME": "Liddell" },
            "Emails": [{ "Value": "alice@example.org", "Type": "Work", "Primary": true }],
            "Title": "Engineer",
            "URN:IETF:PARAMS:SCIM:SCHEMAS:EXTENSION:ENTERPRISE:2.0:USER": { "Department": "R&D" },
            "Active": true,
            "Meta": { "Version": "W/\"7\"" },
        });
        assert_eq!(parse_resource(ObjectKind::User, &v).unwrap(), exact);
        let g = Mapped::Group(group("team", &["u1", "u2"]));
        let exact = parse_resource(ObjectKind::Group, &served("ab", &g)).unwrap();
        let v = json!({
            "Id": "id-1", "ExternalId": "ab", "DisplayName": "team",
            "Members": [{ "Value": "u1" }, { "VALUE": "u2" }],
            "META": { "VERSION": "W/\"7\"" },
        });
        assert_eq!(parse_resource(ObjectKind::Group, &v).unwrap(), exact);
        let list = json!({ "TotalResults": 3, "resources": [{ "id": "a" }] });
        let (r, t) = parse_list_response(&list).unwrap();
        assert_eq!((r.len(), t), (1, Some(3)));
        assert_eq!(
            describe_error_body(
                StatusCode::CONFLICT,
                br#"{"ScimType":"uniqueness","Detail":"taken"}"#
            ),
            "uniqueness: taken"
        );
    }

    #[test]
    fn etag_support_is_read_from_the_service_provider_config() {
        assert_eq!(
            etag_supported(&json!({ "etag": { "supported": true } })),
            Some(true)
        );
        assert_eq!(
            etag_supported(&json!({ "ETag": { "Supported": false } })),
            Some(false)
        );
        assert_eq!(
            etag_supported(&json!({ "patch": { "supported": true } })),
            None
        );
        assert_eq!(
            etag_supported(&json!({ "etag": { "supported": "yes" } })),
            None
        );
    }

    #[test]
    fn parse_rejects_resources_without_id_or_name() {
        assert!(parse_resource(ObjectKind::User, &json!({ "userName": "u" })).is_err());
        assert!(parse_resource(ObjectKind::User, &json!({ "id": "x" })).is_err());
        assert!(parse_resource(ObjectKind::Group, &json!({ "id": "x" })).is_err());
        assert!(parse_resource(ObjectKind::Group, &json!("nonsense")).is_err());
    }

    #[test]
    fn patch_sends_only_differences() {
        let from = full_user();
        let mut to = from.clone();
        to.title = Some("Lead".into());
        to.department = None;
        to.active = false;
        let ops = patch_operations("a-1", Some(&Mapped::User(from.clone())), &Mapped::User(to));
        assert_eq!(
            ops,
            vec![
                json!({ "op": "replace", "path": "title", "value": "Lead" }),
                json!({ "op": "remove", "path": DEPARTMENT_PATH }),
                json!({ "op": "replace", "path": "active", "value": false }),
            ]
        );
        let same = patch_operations(
            "a-1",
            Some(&Mapped::User(from.clone())),
            &Mapped::User(from),
        );
        assert!(same.is_empty());
    }

    #[test]
    fn patch_renames_and_changes_email() {
        let from = full_user();
        let mut to = from.clone();
        to.user_name = "alice2@example.org".into();
        to.email = Some("alice2@example.org".into());
        let ops = patch_operations("a-1", Some(&Mapped::User(from)), &Mapped::User(to));
        assert_eq!(
            ops,
            vec![
                json!({ "op": "replace", "path": "userName", "value": "alice2@example.org" }),
                json!({ "op": "replace", "path": "emails", "value":
                    [{ "value": "alice2@example.org", "type": "work", "primary": true }] }),
            ]
        );
    }

    #[test]
    fn patch_without_from_writes_everything() {
        let to = MappedUser {
            user_name: "bob".into(),
            title: Some("T".into()),
            active: true,
            ..Default::default()
        };
        let ops = patch_operations("a-1", None, &Mapped::User(to.clone()));
        let paths: Vec<(&str, &str)> = ops
            .iter()
            .map(|o| (o["op"].as_str().unwrap(), o["path"].as_str().unwrap()))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("replace", "externalId"),
                ("replace", "userName"),
                ("remove", "displayName"),
                ("remove", "name.givenName"),
                ("remove", "name.familyName"),
                ("remove", "emails"),
                ("replace", "title"),
                ("remove", DEPARTMENT_PATH),
                ("replace", "active"),
            ]
        );
        // A `from` of the other kind is as good as none.
        let g = Mapped::Group(group("x", &[]));
        assert_eq!(patch_operations("a-1", Some(&g), &Mapped::User(to)), ops);
    }

    #[test]
    fn patch_group_members_add_and_remove() {
        let from = Mapped::Group(group("team", &["u1", "u2"]));
        let to = Mapped::Group(group("team", &["u2", "u3", "u4"]));
        assert_eq!(
            patch_operations("a-1", Some(&from), &to),
            vec![
                json!({ "op": "add", "path": "members", "value": [{ "value": "u3" }, { "value": "u4" }] }),
                json!({ "op": "remove", "path": "members[value eq \"u1\"]" }),
            ]
        );
        let renamed = Mapped::Group(group("crew", &["u1", "u2"]));
        assert_eq!(
            patch_operations("a-1", Some(&from), &renamed),
            vec![json!({ "op": "replace", "path": "displayName", "value": "crew" })]
        );
        assert!(patch_operations("a-1", Some(&from), &from).is_empty());
        assert_eq!(
            patch_operations("a-1", None, &Mapped::Group(group("g", &[]))),
            vec![
                json!({ "op": "replace", "path": "externalId", "value": "a-1" }),
                json!({ "op": "replace", "path": "displayName", "value": "g" }),
                json!({ "op": "replace", "path": "members", "value": [] }),
            ]
        );
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(filter_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(filter_string(""), r#""""#);
    }

    #[test]
    fn candidate_filters() {
        let u = Mapped::User(MappedUser {
            user_name: "Bob@x.org".into(),
            email: Some("bob.smith@x.org".into()),
            ..Default::default()
        });
        assert_eq!(
            candidates_filter("ab-12", &u),
            "externalId eq \"ab-12\" or externalId eq \"AB-12\" or userName eq \"Bob@x.org\" \
             or emails.value eq \"Bob@x.org\" or userName eq \"bob.smith@x.org\" \
             or emails.value eq \"bob.smith@x.org\""
        );
        let same = Mapped::User(MappedUser {
            user_name: "bob@x.org".into(),
            email: Some("BOB@x.org".into()),
            ..Default::default()
        });
        assert_eq!(
            candidates_filter("123", &same),
            "externalId eq \"123\" or userName eq \"bob@x.org\" or emails.value eq \"bob@x.org\""
        );
        let g = Mapped::Group(group("say \"hi\"", &["u1"]));
        assert_eq!(
            candidates_filter("123", &g),
            r#"externalId eq "123" or displayName eq "say \"hi\"""#
        );
    }

    #[test]
    fn case_probes_swap_the_case_of_names_and_mail() {
        let u = Mapped::User(MappedUser {
            user_name: "Bob@x.org".into(),
            email: Some("bob.smith@x.org".into()),
            ..Default::default()
        });
        assert_eq!(
            case_probe_filters(&u),
            [
                "userName eq \"bOB@X.ORG\"",
                "emails.value eq \"BOB.SMITH@X.ORG\""
            ]
        );
        let g = Mapped::Group(group("123", &[]));
        assert!(case_probe_filters(&g).is_empty());
        let g = Mapped::Group(group("Grp03", &[]));
        assert_eq!(case_probe_filters(&g), ["displayName eq \"gRP03\""]);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=5 {
            let full = base * (1 << (attempt - 1));
            let d = backoff(base, attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF);
    }

    #[test]
    fn error_bodies_are_described() {
        let b = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"taken"}"#;
        assert_eq!(
            describe_error_body(StatusCode::CONFLICT, b),
            "uniqueness: taken"
        );
        assert_eq!(
            describe_error_body(StatusCode::NOT_FOUND, br#"{"detail":"gone"}"#),
            "gone"
        );
        assert_eq!(
            describe_error_body(StatusCode::BAD_GATEWAY, b"<html>\nbad</html>"),
            "Bad Gateway: <html>bad</html>"
        );
        assert_eq!(
            describe_error_body(StatusCode::SERVICE_UNAVAILABLE, b""),
            "Service Unavailable"
        );
    }

    #[test]
    fn list_responses() {
        let v = json!({ "totalResults": 3, "Resources": [{ "id": "a" }] });
        let (r, t) = parse_list_response(&v).unwrap();
        assert_eq!((r.len(), t), (1, Some(3)));
        let empty = json!({ "totalResults": 0 });
        let (r, t) = parse_list_response(&empty).unwrap();
        assert_eq!((r.len(), t), (0, Some(0)));
        assert!(parse_list_response(&json!({ "Resources": 5 })).is_err());
        assert!(parse_list_response(&json!([1, 2])).is_err());
    }

    #[test]
    fn the_token_stays_out_of_debug() {
        let t = ScimTarget::new("http://127.0.0.1:9/v2/", Secret::new("s3cr3t-token")).unwrap();
        let d = format!("{t:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert_eq!(t.base_url(), "http://127.0.0.1:9/v2");
        assert_eq!(
            t.url(&["Users", "a b"]).as_str(),
            "http://127.0.0.1:9/v2/Users/a%20b"
        );
        assert!(ScimTarget::new("ftp://x/v2", Secret::new("t")).is_err());
        assert!(ScimTarget::new("http://x/v2", Secret::new("bad\ntoken")).is_err());
    }
}

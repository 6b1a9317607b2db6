//! Microsoft Graph target: users and security groups in Microsoft Entra ID, written with
//! JSON batching (`$batch`, at most 20 requests each).
//!
//! # Identity
//! * Users carry the anchor in `onPremisesImmutableId`: base64 of the anchor GUID's 16
//!   bytes in Microsoft's mixed-endian order (`Uuid::to_bytes_le`), as AD Connect writes
//!   it. [`RemoteObject::anchor`] decodes it back to the lowercase hyphenated form; an
//!   immutable id that is not 16 bytes of base64 (written by another tool) is returned
//!   as is, so matching sees "owned by something else" rather than "cloud-only".
//! * Groups have no writable immutable id. The anchor is kept in a **directory extension
//!   attribute** `extension_<clientIdWithoutDashes>_dirsyncAnchor` (a `String` extension
//!   property named `dirsyncAnchor` registered on the sync application, targeting
//!   `Group`; see [`anchor_attribute`]). It is invisible to users, cannot be edited in
//!   the portal by accident (unlike `description`) and supports `$filter` with `eq`, which
//!   [`Target::candidates`] uses. Registering it is a one-time setup step of the app
//!   registration (`POST /applications/{object-id}/extensionProperties`).
//!
//! # Reads
//! * `list(User)`: `/users?$select=…&$top=999`, following `@odata.nextLink` (only links
//!   under the configured base URL are followed: the bearer token goes nowhere else).
//! * `list(Group)`: `/groups?$select=…&$expand=members($select=id)`. Graph returns at most
//!   20 expanded members of a directory object and no link to the rest, so a group that
//!   shows 20 or more (or none of the `members` property) has its members read completely
//!   from `/groups/{id}/members?$select=id`, all pages. Every listed group thus has `state`.
//! * `candidates`: one `$filter` query (users: immutable id, UPN and mail against the
//!   object's UPN and e-mail; groups: the anchor attribute or displayName), quotes
//!   doubled.
//!
//! # Writes (`apply`)
//! Every op becomes one or more Graph requests: create user (`POST /users`), create group
//! (`POST /groups`, then one `POST /groups/{id}/members/$ref` per member once the id is
//! known: JSON batching cannot feed one request's result into another's URL, so the
//! member adds go in a later batch, not via `dependsOn`), update (`PATCH` with only the
//! attributes that differ, plus `$ref` adds/removes for members), delete. An update whose
//! `from` is unknown writes every attribute of `to` and the anchor (adopting a matched
//! object); for a group it then adds every wanted member, but cannot remove members it
//! does not know of.
//!
//! Requests are packed 20 to a `$batch`; up to [`GraphOptions::max_in_flight`] batches
//! are in flight at once. Ops of one chunk are independent (the planner puts dependent
//! ops in later chunks): Graph runs the requests of a batch in any order.
//! Per-request answers are handled one by one: 2xx applied (a delete or member removal
//! answered 404, or a member add answered "already exist", counts as applied), 429 waits
//! the `Retry-After` it names (and pauses every new batch of this target until then),
//! 5xx and transport errors are retried with jittered exponential backoff, other 4xx
//! fail that op only. No request is sent at or after the deadline: ops never sent are
//! `NotAttempted`; an op whose retry would fall after it is `Failed` with its last error
//! (so is a group whose create went through but whose member adds could not all be sent).
//! A 401 is answered by fetching a new token once; a second 401 is fatal, and everything
//! not yet sent is `NotAttempted`.
//!
//! # Authentication
//! OAuth 2.0 client credentials against the Microsoft identity platform. The token is
//! cached and renewed before it expires (5 minutes early, or a fifth of its lifetime for
//! short-lived tokens). Neither the client secret nor the token appears in `Debug`, errors
//! or logs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use compact_str::CompactString;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use reqwest::{Method, Url};
use serde_json::{json, Map, Value};

use super::{
    request_timeout, Mapped, MappedGroup, MappedUser, Op, Outcome, RemoteObject, Target,
    TargetError, REQUEST_TIMEOUT,
};
use crate::config::{Secret, TargetConfig};
use crate::error::{Error, Result};
use crate::log::event::ObjectKind;

/// The scope of an app-only token for Microsoft Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Graph's documented limit of requests in one `$batch`.
pub const MAX_BATCH: usize = 20;
/// Graph returns at most this many objects of an expanded directory relationship.
const EXPAND_LIMIT: usize = 20;
/// The name of the group anchor's extension property (before the app prefix).
pub const ANCHOR_EXTENSION: &str = "dirsyncAnchor";

const USER_SELECT: &str = "id,userPrincipalName,displayName,givenName,surname,mail,jobTitle,\
department,accountEnabled,onPremisesImmutableId,createdDateTime,employeeId,employeeType,\
companyName,mobilePhone,officeLocation,streetAddress,city,state,postalCode,country,\
preferredLanguage,usageLocation,businessPhones,onPremisesExtensionAttributes";

/// Tuning of a [`GraphTarget`]. The defaults suit the real service.
#[derive(Clone, Debug)]
pub struct GraphOptions {
    /// `$batch` requests in flight at once.
    pub max_in_flight: usize,
    /// Tries of one request (transport errors and 5xx); 429s are retried as long as the
    /// deadline allows.
    pub max_attempts: u32,
    /// First backoff after a 5xx or transport error; doubles per try, jittered.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Renew the token this long before it expires (at most a fifth of its lifetime).
    pub refresh_margin: Duration,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            max_in_flight: 4,
            max_attempts: 6,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            refresh_margin: Duration::from_secs(300),
        }
    }
}

struct CachedToken {
    value: Secret,
    renew_at: Instant,
    serial: u64,
}

/// The Graph client. One `reqwest::Client` (connection pool) for all requests. Small:
/// its state lives behind one allocation.
pub struct GraphTarget {
    inner: Box<Inner>,
}

impl fmt::Debug for GraphTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

struct Inner {
    http: reqwest::Client,
    /// e.g. `https://graph.microsoft.com/v1.0`, no trailing slash.
    base: String,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    anchor_attr: String,
    opts: GraphOptions,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    token_serial: std::sync::atomic::AtomicU64,
    /// No new request before this instant (the server's last Retry-After).
    paused_until: StdMutex<Option<Instant>>,
    /// Whether Graph is down (every request to it counts; see `retry`).
    breaker: super::retry::Breaker,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphTarget")
            .field("base", &self.base)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("anchor_attr", &self.anchor_attr)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The default token endpoint of a tenant.
pub fn default_token_url(tenant_id: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token")
}

/// `extension_<clientIdWithoutDashes>_dirsyncAnchor`: where a group's anchor is kept.
pub fn anchor_attribute(client_id: &str) -> String {
    let app: String = client_id.chars().filter(|c| *c != '-').collect();
    format!("extension_{app}_{ANCHOR_EXTENSION}")
}

impl GraphTarget {
    /// From the configuration: `url` is the Graph base, `[target]` holds the client
    /// credentials. The secret is resolved now; no request is made.
    pub fn from_config(cfg: &TargetConfig) -> Result<GraphTarget> {
        let auth = cfg.graph.as_ref().ok_or_else(|| {
            Error::Config("target: tenant_id, client_id and client_secret are required".into())
        })?;
        let secret = auth.client_secret.resolve("target.client_secret")?;
        let token_url = auth
            .token_url
            .clone()
            .unwrap_or_else(|| default_token_url(&auth.tenant_id));
        GraphTarget::new(
            &cfg.url,
            &token_url,
            &auth.client_id,
            secret,
            GraphOptions::default(),
        )
    }

    /// A client of the Graph service at `base_url` (e.g. `https://graph.microsoft.com/v1.0`)
    /// authenticating at `token_url` with the client credentials.
    pub fn new(
        base_url: &str,
        token_url: &str,
        client_id: &str,
        client_secret: Secret,
        opts: GraphOptions,
    ) -> Result<GraphTarget> {
        let base = base_url.trim_end_matches('/').to_string();
        for (key, u) in [
            ("target.url", &base),
            ("target.token_url", &token_url.into()),
        ] {
            Url::parse(u).map_err(|e| Error::Config(format!("{key}: `{u}`: {e}")))?;
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Target(format!("cannot build the HTTP client: {e}")))?;
        Ok(GraphTarget {
            inner: Box::new(Inner {
                http,
                base,
                token_url: token_url.to_string(),
                client_id: client_id.to_string(),
                client_secret,
                anchor_attr: anchor_attribute(client_id),
                opts: GraphOptions {
                    max_in_flight: opts.max_in_flight.max(1),
                    max_attempts: opts.max_attempts.max(1),
                    ..opts
                },
                token: tokio::sync::Mutex::new(None),
                token_serial: std::sync::atomic::AtomicU64::new(0),
                paused_until: StdMutex::new(None),
                breaker: Default::default(),
            }),
        })
    }

    /// The extension attribute holding group anchors.
    pub fn anchor_attr(&self) -> &str {
        &self.inner.anchor_attr
    }
}

impl Inner {
    // ---- authentication ----

    /// A valid token (cached, or fetched now) and its serial number.
    async fn token(&self) -> Result<(Secret, u64), TargetError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if Instant::now() < t.renew_at {
                return Ok((t.value.clone(), t.serial));
            }
        }
        let (value, lifetime) = self.fetch_token().await?;
        let margin = self.opts.refresh_margin.min(lifetime / 5);
        let serial = self
            .token_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        *cached = Some(CachedToken {
            value: value.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
            serial,
        });
        Ok((value, serial))
    }

    /// Drop the cached token if it is still the one numbered `serial`.
    async fn forget_token(&self, serial: u64) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.serial == serial) {
            *cached = None;
        }
    }

    async fn fetch_token(&self) -> Result<(Secret, Duration), TargetError> {
        let form = form_encode(&[
            ("grant_type", "client_credentials"),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose()),
            ("scope", GRAPH_SCOPE),
        ]);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(&self.token_url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form.clone())
                .send()
                .await;
            let (err, delay) = match sent {
                Err(e) => (
                    TargetError::new(None, format!("token endpoint: {}", describe(&e))),
                    None,
                ),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry_after(resp.headers());
                    let body = resp.bytes().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return parse_token_response(&body).map_err(|m| {
                            TargetError::new(Some(status), format!("token endpoint: {m}"))
                        });
                    }
                    let err = token_error(status, &body);
                    if status == 429 || status >= 500 {
                        (err, retry_after)
                    } else {
                        return Err(err);
                    }
                }
            };
            if attempt >= self.opts.max_attempts {
                return Err(err);
            }
            let delay = delay.unwrap_or_else(|| self.backoff(attempt));
            tracing::debug!(error = %err, ?delay, "token request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    // ---- HTTP ----

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// One authenticated request. A 401 is answered by a new token once; a second 401
    /// is a fatal error. Other statuses are returned as they are. `Ok(None)`: not sent,
    /// because `deadline` had passed when the request was ready to go (e.g. after a slow
    /// token request).
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        deadline: Option<Instant>,
    ) -> Result<Option<Reply>, TargetError> {
        let mut renewed = false;
        loop {
            let (token, serial) = self.token().await?;
            // Under a deadline (the export lease) the request must also end by it.
            let Some(timeout) = request_timeout(deadline) else {
                return Ok(None);
            };
            let mut req = self
                .http
                .request(method.clone(), url)
                .timeout(timeout)
                .bearer_auth(token.expose())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(down) = self.breaker.down() {
                return Err(down);
            }
            let sent = Instant::now();
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    let err = TargetError::new(
                        None,
                        format!("{method} {}: {}", path_of(url), describe(&e)),
                    );
                    return Err(self.breaker.unanswered(sent, &err.message).unwrap_or(err));
                }
            };
            self.breaker.answered();
            let status = resp.status().as_u16();
            let retry_after = retry_after(resp.headers());
            let bytes = resp.bytes().await.map_err(|e| {
                TargetError::new(
                    Some(status),
                    format!(
                        "{method} {}: reading the answer: {}",
                        path_of(url),
                        describe(&e)
                    ),
                )
            })?;
            let reply = Reply {
                status,
                retry_after,
                body: parse_body(&bytes),
            };
            if status == 401 {
                if !renewed {
                    renewed = true;
                    tracing::debug!("401 from Graph: fetching a new token");
                    self.forget_token(serial).await;
                    continue;
                }
                let mut err = graph_error(401, &reply.body);
                err.fatal = true;
                return Err(err);
            }
            return Ok(Some(reply));
        }
    }

    /// A GET with retries on 429 (after Retry-After) and 5xx / transport errors.
    async fn read(&self, url: &str) -> Result<Value, TargetError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_pause().await;
            let sent = self.send(Method::GET, url, None, None).await.and_then(|r| {
                r.ok_or_else(|| TargetError::new(None, format!("GET {}: not sent", path_of(url))))
            });
            let (err, delay) = match sent {
                Err(e) if e.fatal => return Err(e),
                Err(e) => (e, self.backoff(attempt)),
                Ok(r) if (200..300).contains(&r.status) => {
                    return match r.body {
                        Body::Json(v) => Ok(v),
                        _ => Err(TargetError::new(
                            Some(r.status),
                            format!("GET {}: the answer is not JSON", path_of(url)),
                        )),
                    }
                }
                Ok(r) if r.status == 429 => {
                    let d = r.retry_after.unwrap_or_else(|| self.backoff(attempt));
                    self.pause_for(d);
                    (graph_error(429, &r.body), d)
                }
                Ok(r) if r.status >= 500 => (graph_error(r.status, &r.body), self.backoff(attempt)),
                Ok(r) => return Err(graph_error(r.status, &r.body)),
            };
            if attempt >= self.opts.max_attempts {
                return Err(err);
            }
            tracing::debug!(error = %err, ?delay, "Graph read failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Every object of a collection, all pages.
    async fn read_all(&self, first: String) -> Result<Vec<Value>, TargetError> {
        let mut out = Vec::new();
        let mut url = first;
        let mut seen = BTreeSet::new();
        loop {
            let page = self.read(&url).await?;
            let (items, next) = parse_page(&page)
                .map_err(|m| TargetError::new(None, format!("GET {}: {m}", path_of(&url))))?;
            out.extend(items);
            match next {
                None => return Ok(out),
                Some(n) => {
                    if !n.starts_with(&format!("{}/", self.base)) {
                        return Err(TargetError::new(
                            None,
                            format!("refusing to follow a nextLink outside {}", self.base),
                        ));
                    }
                    if !seen.insert(n.clone()) {
                        return Err(TargetError::new(None, "the nextLinks loop"));
                    }
                    url = n;
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        backoff_delay(
            self.opts.backoff,
            self.opts.max_backoff,
            attempt,
            rand::thread_rng().gen_range(0.5..=1.0),
        )
    }

    fn paused_until(&self) -> Option<Instant> {
        match self.paused_until.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut g = match self.paused_until.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.is_none_or(|u| u < until) {
            *g = Some(until);
        }
    }

    async fn wait_pause(&self) {
        if let Some(u) = self.paused_until() {
            tokio::time::sleep_until(u.into()).await;
        }
    }

    // ---- reads ----

    fn users_url(&self, filter: Option<&str>) -> String {
        let mut q = vec![
            ("$select", USER_SELECT.to_string()),
            // The manager's id, compared like the other mapped properties.
            ("$expand", format!("{MANAGER}($select=id)")),
        ];
        match filter {
            Some(f) => q.push(("$filter", f.to_string())),
            None => q.push(("$top", "999".to_string())),
        }
        self.url(&format!("/users?{}", query_encode(&q)))
    }

    fn groups_url(&self, filter: Option<&str>) -> String {
        let mut q = vec![
            (
                "$select",
                format!("id,displayName,createdDateTime,{}", self.anchor_attr),
            ),
            ("$expand", "members($select=id)".to_string()),
        ];
        if let Some(f) = filter {
            q.push(("$filter", f.to_string()));
        }
        self.url(&format!("/groups?{}", query_encode(&q)))
    }

    async fn read_users(&self, url: String) -> Result<Vec<RemoteObject>, TargetError> {
        self.read_all(url)
            .await?
            .iter()
            .map(|v| remote_user(v).map_err(|m| TargetError::new(None, format!("a user: {m}"))))
            .collect()
    }

    async fn read_groups(&self, url: String) -> Result<Vec<RemoteObject>, TargetError> {
        let mut out = Vec::new();
        for v in self.read_all(url).await? {
            let (mut obj, complete) = remote_group(&v, &self.anchor_attr)
                .map_err(|m| TargetError::new(None, format!("a group: {m}")))?;
            if !complete {
                let members = self.group_members(&obj.id).await?;
                if let Some(Mapped::Group(g)) = obj.state.as_mut() {
                    g.members = members;
                }
            }
            out.push(obj);
        }
        Ok(out)
    }

    /// All member ids of a group.
    async fn group_members(&self, id: &str) -> Result<BTreeSet<String>, TargetError> {
        let url = self.url(&format!(
            "/groups/{}/members?{}",
            seg(id),
            query_encode(&[("$select", "id".into()), ("$top", "999".into())])
        ));
        let mut out = BTreeSet::new();
        for m in self.read_all(url).await? {
            match m.get("id").and_then(Value::as_str) {
                Some(id) => out.insert(id.to_string()),
                None => return Err(TargetError::new(None, "a group member without an id")),
            };
        }
        Ok(out)
    }

    // ---- writes ----

    /// Send one `$batch` of requests, unless `deadline` passes first.
    async fn send_batch(
        &self,
        reqs: Vec<Req>,
        deadline: Instant,
    ) -> (Vec<Req>, Result<Option<Reply>, TargetError>) {
        let body = batch_body(&reqs);
        let res = self
            .send(
                Method::POST,
                &self.url("/$batch"),
                Some(&body),
                Some(deadline),
            )
            .await;
        (reqs, res)
    }

    async fn apply_all(&self, ops: &[Op], deadline: Instant) -> Vec<Outcome> {
        let mut run = Run::new(ops.len(), deadline, self.opts.max_attempts);
        for (i, op) in ops.iter().enumerate() {
            match plan_op(op, &self.anchor_attr) {
                Ok(plan) => {
                    run.ops[i].target_id = plan.target_id;
                    for r in plan.requests {
                        run.push(i, r);
                    }
                }
                Err(e) => run.ops[i].failed = Some(e),
            }
        }
        let mut in_flight = FuturesUnordered::new();
        loop {
            // Launch what is ready, as long as slots are free.
            while run.fatal.is_none() && in_flight.len() < self.opts.max_in_flight {
                let now = Instant::now();
                if now >= deadline || self.paused_until().is_some_and(|u| u > now) {
                    break;
                }
                let batch = run.take_ready(now);
                if batch.is_empty() {
                    break;
                }
                in_flight.push(self.send_batch(batch, deadline));
            }
            let can_send = run.fatal.is_none() && Instant::now() < deadline;
            let next_ready = if can_send {
                run.next_ready()
                    .map(|t| self.paused_until().map_or(t, |p| p.max(t)))
                    .filter(|t| *t < deadline)
            } else {
                None
            };
            if in_flight.is_empty() {
                match next_ready {
                    Some(t) => {
                        tokio::time::sleep_until(t.into()).await;
                        continue;
                    }
                    None => break,
                }
            }
            let wake = next_ready.filter(|_| in_flight.len() < self.opts.max_in_flight);
            tokio::select! {
                done = in_flight.next() => {
                    if let Some((reqs, res)) = done {
                        self.absorb(&mut run, reqs, res);
                    }
                }
                _ = sleep_opt(wake) => {}
            }
        }
        run.finish()
    }

    /// Take in the answer to one batch.
    fn absorb(&self, run: &mut Run, reqs: Vec<Req>, res: Result<Option<Reply>, TargetError>) {
        let reply = match res {
            Ok(None) => {
                for r in reqs {
                    run.unsend(r);
                }
                return;
            }
            Err(e) if e.fatal => {
                for r in reqs {
                    run.fail(r.op, e.clone());
                }
                run.fatal = Some(e);
                return;
            }
            Err(e) => {
                // The batch failed as a whole: its requests are retried together.
                let d = self.backoff(reqs.iter().map(|r| r.attempts).max().unwrap_or(0) + 1);
                for r in reqs {
                    run.retry(r, e.clone(), d, true);
                }
                return;
            }
            Ok(Some(r)) => r,
        };
        match reply.status {
            200..=299 => {}
            429 => {
                let d = reply.retry_after.unwrap_or_else(|| self.backoff(1));
                self.pause_for(d);
                let e = graph_error(429, &reply.body);
                for r in reqs {
                    run.retry(r, e.clone(), d, false);
                }
                return;
            }
            s if s >= 500 => {
                let e = graph_error(s, &reply.body);
                let d = self.backoff(reqs.iter().map(|r| r.attempts).max().unwrap_or(0) + 1);
                for r in reqs {
                    run.retry(r, e.clone(), d, true);
                }
                return;
            }
            s => {
                let e = graph_error(s, &reply.body);
                for r in reqs {
                    run.fail(r.op, e.clone());
                }
                return;
            }
        }
        let mut answers = match &reply.body {
            Body::Json(v) => match parse_batch_response(v) {
                Ok(a) => a,
                Err(m) => {
                    let e = TargetError::new(Some(reply.status), format!("$batch: {m}"));
                    for r in reqs {
                        run.fail(r.op, e.clone());
                    }
                    return;
                }
            },
            _ => {
                let e = TargetError::new(Some(reply.status), "$batch: the answer is not JSON");
                for r in reqs {
                    run.fail(r.op, e.clone());
                }
                return;
            }
        };
        for (i, r) in reqs.into_iter().enumerate() {
            let Some(a) = answers.remove(&batch_id(i)) else {
                let e = TargetError::new(None, "$batch: no answer for one of its requests");
                run.fail(r.op, e);
                continue;
            };
            self.absorb_one(run, r, a);
        }
    }

    fn absorb_one(&self, run: &mut Run, r: Req, a: SubReply) {
        match classify(&r.step, a.status, &a.body) {
            Verdict::Done => run.done(r, &a.body),
            Verdict::Throttled => {
                let d = a.retry_after.unwrap_or_else(|| self.backoff(1));
                self.pause_for(d);
                run.retry(r, sub_error(&a), d, false);
            }
            Verdict::Retry => {
                let d = self.backoff(r.attempts + 1);
                run.retry(r, sub_error(&a), d, true);
            }
            Verdict::Fatal => {
                let mut e = sub_error(&a);
                e.fatal = true;
                run.fail(r.op, e.clone());
                run.fatal = Some(e);
            }
            // A PATCH of the object itself answered 404: it was deleted out of band.
            Verdict::Failed if r.step == Step::Patch && a.status == 404 => {
                run.fail(r.op, sub_error(&a).gone())
            }
            Verdict::Failed => run.fail(r.op, sub_error(&a)),
        }
    }
}

async fn sleep_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Target for GraphTarget {
    async fn probe(&self) -> Result<(), TargetError> {
        self.inner
            .read(&self.inner.url("/users?$top=1"))
            .await
            .map(|_| ())
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<RemoteObject>, TargetError> {
        match kind {
            ObjectKind::User => self.inner.read_users(self.inner.users_url(None)).await,
            ObjectKind::Group => self.inner.read_groups(self.inner.groups_url(None)).await,
        }
    }

    async fn candidates(
        &self,
        anchor: &str,
        object: &Mapped,
    ) -> Result<Vec<RemoteObject>, TargetError> {
        match object {
            Mapped::User(u) => {
                let f = user_filter(anchor, u);
                self.inner.read_users(self.inner.users_url(Some(&f))).await
            }
            Mapped::Group(g) => {
                let f = group_filter(&self.inner.anchor_attr, anchor, &g.display_name);
                self.inner
                    .read_groups(self.inner.groups_url(Some(&f)))
                    .await
            }
        }
    }

    /// Users by `onPremisesImmutableId` (an anchor that is no GUID has no immutable ID to
    /// ask by: None), groups by the attribute that carries their anchor.
    async fn carrying(
        &self,
        kind: ObjectKind,
        anchor: &str,
    ) -> Result<Option<Vec<RemoteObject>>, TargetError> {
        match kind {
            ObjectKind::User => {
                let Some(id) = immutable_id(anchor) else {
                    return Ok(None);
                };
                let f = format!("onPremisesImmutableId eq {}", odata_string(&id));
                self.inner
                    .read_users(self.inner.users_url(Some(&f)))
                    .await
                    .map(Some)
            }
            ObjectKind::Group => {
                let f = format!("{} eq {}", self.inner.anchor_attr, odata_string(anchor));
                self.inner
                    .read_groups(self.inner.groups_url(Some(&f)))
                    .await
                    .map(Some)
            }
        }
    }

    /// Graph documents its `$filter` string comparisons (`eq` on userPrincipalName, mail,
    /// displayName) as case-insensitive: nothing to ask.
    async fn eq_ignores_case(&self, _id: &str, _known: &Mapped) -> Result<bool, TargetError> {
        Ok(true)
    }

    async fn apply(&self, ops: &[Op], deadline: Instant) -> Vec<Outcome> {
        self.inner.apply_all(ops, deadline).await
    }
}

// ---- the apply bookkeeping ----

/// What a request does, which decides how its answer is read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Create a user, then set its manager (a target id) when it has one.
    CreateUser(Option<String>),
    /// Create a group, then add these members.
    CreateGroup(Vec<String>),
    Patch,
    AddMember,
    RemoveMember,
    /// `PUT /users/{id}/manager/$ref`.
    SetManager,
    /// `DELETE /users/{id}/manager/$ref`.
    RemoveManager,
    Delete,
}

/// One Graph request of an op.
#[derive(Clone, Debug, PartialEq)]
struct Planned {
    step: Step,
    method: &'static str,
    /// Relative to the base, starting with `/` (as `$batch` wants it).
    url: String,
    body: Option<Value>,
}

#[derive(Debug)]
struct Req {
    op: usize,
    planned: Planned,
    step: Step,
    /// Sends so far (failed ones).
    attempts: u32,
    not_before: Instant,
}

#[derive(Default)]
struct OpState {
    target_id: String,
    /// Requests not yet done.
    outstanding: usize,
    /// Its requests handed to the network (tries included).
    sent: usize,
    failed: Option<TargetError>,
    last_error: Option<TargetError>,
}

struct Run {
    ops: Vec<OpState>,
    queue: VecDeque<Req>,
    deadline: Instant,
    max_attempts: u32,
    fatal: Option<TargetError>,
}

impl Run {
    fn new(n: usize, deadline: Instant, max_attempts: u32) -> Run {
        Run {
            ops: (0..n).map(|_| OpState::default()).collect(),
            queue: VecDeque::new(),
            deadline,
            max_attempts,
            fatal: None,
        }
    }

    fn push(&mut self, op: usize, p: Planned) {
        self.ops[op].outstanding += 1;
        self.queue.push_back(Req {
            op,
            step: p.step.clone(),
            planned: p,
            attempts: 0,
            not_before: Instant::now(),
        });
    }

    /// Up to [`MAX_BATCH`] requests ready at `now`, in queue order.
    fn take_ready(&mut self, now: Instant) -> Vec<Req> {
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(self.queue.len());
        while let Some(r) = self.queue.pop_front() {
            if self.ops[r.op].failed.is_some() {
                continue;
            }
            if batch.len() < MAX_BATCH && r.not_before <= now {
                self.ops[r.op].sent += 1;
                batch.push(r);
            } else {
                rest.push_back(r);
            }
        }
        self.queue = rest;
        batch
    }

    fn next_ready(&self) -> Option<Instant> {
        self.queue
            .iter()
            .filter(|r| self.ops[r.op].failed.is_none())
            .map(|r| r.not_before)
            .min()
    }

    /// `r` was taken for a batch that was never sent (the deadline came first).
    fn unsend(&mut self, r: Req) {
        let s = &mut self.ops[r.op];
        s.sent = s.sent.saturating_sub(1);
        self.queue.push_back(r);
    }

    fn fail(&mut self, op: usize, e: TargetError) {
        let s = &mut self.ops[op];
        if s.failed.is_none() {
            s.failed = Some(e);
        }
    }

    /// Send `r` again after `delay`, unless it has used its tries (when `counts`) or the
    /// retry would fall at or after the deadline: then its op fails with `e`.
    fn retry(&mut self, mut r: Req, e: TargetError, delay: Duration, counts: bool) {
        if counts {
            r.attempts += 1;
        }
        let at = Instant::now() + delay;
        if self.ops[r.op].failed.is_some() {
            return;
        }
        if (counts && r.attempts >= self.max_attempts) || at >= self.deadline {
            self.fail(r.op, e);
            return;
        }
        tracing::debug!(error = %e, ?delay, "Graph request failed; retrying");
        self.ops[r.op].last_error = Some(e);
        r.not_before = at;
        self.queue.push_back(r);
    }

    fn done(&mut self, r: Req, body: &Body) {
        let op = r.op;
        match &r.step {
            Step::CreateUser(_) | Step::CreateGroup(_) => {
                let id = match body {
                    Body::Json(v) => v.get("id").and_then(Value::as_str).map(str::to_string),
                    _ => None,
                };
                let Some(id) = id else {
                    self.fail(
                        op,
                        TargetError::new(None, "the create answer carries no object id"),
                    );
                    return;
                };
                match &r.step {
                    Step::CreateGroup(members) => {
                        for m in members {
                            self.push(op, member_add(&id, m));
                        }
                    }
                    Step::CreateUser(Some(manager)) => self.push(op, manager_set(&id, manager)),
                    _ => {}
                }
                self.ops[op].target_id = id;
            }
            _ => {}
        }
        self.ops[op].outstanding = self.ops[op].outstanding.saturating_sub(1);
    }

    fn finish(self) -> Vec<Outcome> {
        let fatal = self.fatal;
        self.ops
            .into_iter()
            .map(|s| {
                if let Some(e) = s.failed {
                    Outcome::Failed(e)
                } else if s.outstanding == 0 {
                    Outcome::Applied {
                        target_id: s.target_id,
                        etag: None,
                    }
                } else if s.sent == 0 {
                    Outcome::NotAttempted
                } else {
                    Outcome::Failed(s.last_error.or_else(|| fatal.clone()).unwrap_or_else(|| {
                        TargetError::new(
                            None,
                            "the deadline passed before all requests of the op were sent",
                        )
                    }))
                }
            })
            .collect()
    }
}

enum Verdict {
    Done,
    Throttled,
    Retry,
    Fatal,
    Failed,
}

/// How the answer to one request of `step` is taken.
fn classify(step: &Step, status: u16, body: &Body) -> Verdict {
    match status {
        200..=299 => Verdict::Done,
        404 if matches!(
            step,
            Step::Delete | Step::RemoveMember | Step::RemoveManager
        ) =>
        {
            Verdict::Done
        }
        400 if *step == Step::AddMember && error_message(body).contains("already exist") => {
            Verdict::Done
        }
        429 => Verdict::Throttled,
        401 => Verdict::Fatal,
        408 | 500..=599 => Verdict::Retry,
        _ => Verdict::Failed,
    }
}

// ---- pure helpers: requests ----

struct OpPlan {
    target_id: String,
    requests: Vec<Planned>,
}

/// The requests of one op.
fn plan_op(op: &Op, anchor_attr: &str) -> Result<OpPlan, TargetError> {
    let bad_anchor = |a: &str| TargetError::new(None, format!("anchor `{a}` is not a UUID"));
    match op {
        Op::Create { anchor, object } => {
            let (step, url, body) = match object {
                Mapped::User(u) => {
                    let body = user_create_body(anchor, u, &random_password())
                        .ok_or_else(|| bad_anchor(anchor))?;
                    (
                        Step::CreateUser(u.extra.get(MANAGER).map(|m| m.to_string())),
                        "/users",
                        body,
                    )
                }
                Mapped::Group(g) => (
                    Step::CreateGroup(g.members.iter().cloned().collect()),
                    "/groups",
                    group_create_body(anchor_attr, anchor, g),
                ),
            };
            Ok(OpPlan {
                target_id: String::new(),
                requests: vec![Planned {
                    step,
                    method: "POST",
                    url: url.to_string(),
                    body: Some(body),
                }],
            })
        }
        Op::Update {
            anchor,
            target_id,
            from,
            to,
            ..
        } => {
            let mut requests = Vec::new();
            match to {
                Mapped::User(u) => {
                    let from = match from {
                        Some(Mapped::User(f)) => Some(f),
                        _ => None,
                    };
                    let patch = user_patch(anchor, from, u).ok_or_else(|| bad_anchor(anchor))?;
                    if !patch.is_empty() {
                        requests.push(Planned {
                            step: Step::Patch,
                            method: "PATCH",
                            url: format!("/users/{}", seg(target_id)),
                            body: Some(Value::Object(patch)),
                        });
                    }
                    // The manager is a relationship, not a property: its own request.
                    let was = from.and_then(|f| f.extra.get(MANAGER));
                    match u.extra.get(MANAGER) {
                        Some(m) if was != Some(m) => requests.push(manager_set(target_id, m)),
                        None if was.is_some() => requests.push(Planned {
                            step: Step::RemoveManager,
                            method: "DELETE",
                            url: format!("/users/{}/manager/$ref", seg(target_id)),
                            body: None,
                        }),
                        _ => {}
                    }
                }
                Mapped::Group(g) => {
                    let from = match from {
                        Some(Mapped::Group(f)) => Some(f),
                        _ => None,
                    };
                    let d = group_diff(anchor_attr, anchor, from, g);
                    if !d.patch.is_empty() {
                        requests.push(Planned {
                            step: Step::Patch,
                            method: "PATCH",
                            url: format!("/groups/{}", seg(target_id)),
                            body: Some(Value::Object(d.patch)),
                        });
                    }
                    requests.extend(d.add.iter().map(|m| member_add(target_id, m)));
                    requests.extend(d.remove.iter().map(|m| Planned {
                        step: Step::RemoveMember,
                        method: "DELETE",
                        url: format!("/groups/{}/members/{}/$ref", seg(target_id), seg(m)),
                        body: None,
                    }));
                }
            }
            Ok(OpPlan {
                target_id: target_id.clone(),
                requests,
            })
        }
        Op::Delete {
            kind, target_id, ..
        } => {
            let coll = match kind {
                ObjectKind::User => "users",
                ObjectKind::Group => "groups",
            };
            Ok(OpPlan {
                target_id: target_id.clone(),
                requests: vec![Planned {
                    step: Step::Delete,
                    method: "DELETE",
                    url: format!("/{coll}/{}", seg(target_id)),
                    body: None,
                }],
            })
        }
    }
}

fn member_add(group: &str, member: &str) -> Planned {
    Planned {
        step: Step::AddMember,
        method: "POST",
        url: format!("/groups/{}/members/$ref", seg(group)),
        body: Some(json!({
            "@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{}", seg(member))
        })),
    }
}

/// `PUT /users/{user}/manager/$ref`: `manager` (a user's id) becomes `user`'s manager.
fn manager_set(user: &str, manager: &str) -> Planned {
    Planned {
        step: Step::SetManager,
        method: "PUT",
        url: format!("/users/{}/manager/$ref", seg(user)),
        body: Some(json!({
            "@odata.id": format!("https://graph.microsoft.com/v1.0/users/{}", seg(manager))
        })),
    }
}

/// The `$batch` request body; request ids are the positions ("1".."20").
fn batch_body(reqs: &[Req]) -> Value {
    let requests: Vec<Value> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut o = Map::new();
            o.insert("id".into(), Value::String(batch_id(i)));
            o.insert("method".into(), Value::String(r.planned.method.into()));
            o.insert("url".into(), Value::String(r.planned.url.clone()));
            if let Some(b) = &r.planned.body {
                o.insert("body".into(), b.clone());
                o.insert(
                    "headers".into(),
                    json!({ "Content-Type": "application/json" }),
                );
            }
            Value::Object(o)
        })
        .collect();
    json!({ "requests": requests })
}

fn batch_id(i: usize) -> String {
    (i + 1).to_string()
}

/// `onPremisesImmutableId` of an anchor: base64 of its bytes in Microsoft GUID order.
pub fn immutable_id(anchor: &str) -> Option<String> {
    uuid::Uuid::parse_str(anchor)
        .ok()
        .map(|u| B64.encode(u.to_bytes_le()))
}

/// The anchor (lowercase hyphenated) an `onPremisesImmutableId` encodes, if it is one of
/// ours (16 bytes of base64).
pub fn anchor_from_immutable_id(id: &str) -> Option<String> {
    let bytes: [u8; 16] = B64.decode(id.trim()).ok()?.try_into().ok()?;
    Some(uuid::Uuid::from_bytes_le(bytes).hyphenated().to_string())
}

/// A `mailNickname` from `s`: ASCII letters, digits, `.`, `-` and `_` only, no leading or
/// trailing dot, at most 64 characters; `fallback` when nothing is left.
pub fn mail_nickname(s: &str, fallback: &str) -> String {
    let kept: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let nick: String = kept.trim_matches('.').chars().take(64).collect();
    let nick = nick.trim_end_matches('.').to_string();
    if nick.is_empty() {
        fallback.to_string()
    } else {
        nick
    }
}

fn short_anchor(anchor: &str) -> String {
    anchor.chars().filter(|c| *c != '-').take(12).collect()
}

/// A random password meeting Entra ID's complexity rules (all four character classes).
pub fn random_password() -> String {
    use rand::seq::SliceRandom;
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SYMBOL: &[u8] = b"!#%+-=?@^_~";
    let mut rng = rand::rngs::OsRng;
    let all: Vec<u8> = [LOWER, UPPER, DIGIT, SYMBOL].concat();
    let mut chars: Vec<u8> = [LOWER, UPPER, DIGIT, SYMBOL]
        .iter()
        .map(|set| set[rng.gen_range(0..set.len())])
        .collect();
    while chars.len() < 32 {
        chars.push(all[rng.gen_range(0..all.len())]);
    }
    chars.shuffle(&mut rng);
    chars.into_iter().map(char::from).collect()
}

fn display_name(u: &MappedUser) -> &str {
    u.display_name
        .as_deref()
        .filter(|d| !d.is_empty())
        .unwrap_or(&u.user_name)
}

/// User properties the mapping may set beyond the default table's (`[mapping.user]` keys
/// of a Graph target; Microsoft Graph v1.0 `user` resource, all strings).
const EXTRA_PROPS: &[&str] = &[
    "employeeId",
    "employeeType",
    "companyName",
    "mobilePhone",
    "officeLocation",
    "streetAddress",
    "city",
    "state",
    "postalCode",
    "country",
    "preferredLanguage",
    "usageLocation",
    "businessPhones",
];
/// `onPremisesExtensionAttributes.extensionAttribute1` .. `15`.
const EXTENSION_ATTRS: &str = "onPremisesExtensionAttributes";
/// The user's manager: a reference (the mapping gives the manager's DN or anchor, the plan
/// its target id), written with `manager/$ref` rather than as a property.
pub const MANAGER: &str = "manager";

/// What a `[mapping.user]` key of a Graph target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraProperty {
    /// A string property of the user.
    Plain,
    /// `manager`: a reference to another user.
    Reference,
}

/// Whether the mapping may set the user property `key`, or why not.
pub fn extra_property(key: &str) -> std::result::Result<ExtraProperty, String> {
    if key == MANAGER {
        return Ok(ExtraProperty::Reference);
    }
    if EXTRA_PROPS.contains(&key) {
        return Ok(ExtraProperty::Plain);
    }
    if let Some(n) = key
        .strip_prefix(EXTENSION_ATTRS)
        .and_then(|r| r.strip_prefix(".extensionAttribute"))
    {
        if n.parse::<u8>().is_ok_and(|n| (1..=15).contains(&n)) && !n.starts_with('0') {
            return Ok(ExtraProperty::Plain);
        }
    }
    Err(format!(
        "not a Graph user property dirsync writes: {}, {EXTENSION_ATTRS}.extensionAttribute1..15, {MANAGER}",
        EXTRA_PROPS.join(", ")
    ))
}

/// The user's writable attributes, Graph names; `None` is JSON null. The default table's
/// are always listed; the mapping's others after them, the extension attributes as one
/// object.
fn user_attrs(u: &MappedUser) -> Vec<(&str, Value)> {
    let s = |v: &Option<CompactString>| v.as_ref().map_or(Value::Null, |v| Value::from(v.as_str()));
    let mut out = vec![
        ("userPrincipalName", Value::from(u.user_name.as_str())),
        ("displayName", Value::String(display_name(u).to_string())),
        ("givenName", s(&u.given_name)),
        ("surname", s(&u.family_name)),
        ("mail", s(&u.email)),
        ("jobTitle", s(&u.title)),
        ("department", s(&u.department)),
        ("accountEnabled", Value::Bool(u.active)),
    ];
    let mut ext = Map::new();
    for (k, v) in &u.extra {
        match k
            .strip_prefix(EXTENSION_ATTRS)
            .and_then(|r| r.strip_prefix('.'))
        {
            Some(a) => {
                ext.insert(a.to_string(), Value::from(v.as_str()));
            }
            // Written with manager/$ref (plan_op).
            None if k == MANAGER => {}
            None if k == "businessPhones" => out.push((k.as_str(), json!([v.as_str()]))),
            None => out.push((k.as_str(), Value::from(v.as_str()))),
        }
    }
    if !ext.is_empty() {
        out.push((EXTENSION_ATTRS, Value::Object(ext)));
    }
    out
}

/// `POST /users` body. None when the anchor is not a UUID.
pub fn user_create_body(anchor: &str, u: &MappedUser, password: &str) -> Option<Value> {
    let mut o = Map::new();
    for (k, v) in user_attrs(u) {
        if !v.is_null() {
            o.insert(k.into(), v);
        }
    }
    let local = u.user_name.split('@').next().unwrap_or_default();
    o.insert(
        "mailNickname".into(),
        Value::String(mail_nickname(local, &format!("u{}", short_anchor(anchor)))),
    );
    o.insert(
        "passwordProfile".into(),
        json!({ "forceChangePasswordNextSignIn": false, "password": password }),
    );
    o.insert(
        "onPremisesImmutableId".into(),
        Value::String(immutable_id(anchor)?),
    );
    Some(Value::Object(o))
}

/// `PATCH /users/{id}` body: the attributes of `to` that differ from `from`; with no
/// `from`, every attribute and the immutable id. None when the anchor is not a UUID.
pub fn user_patch(
    anchor: &str,
    from: Option<&MappedUser>,
    to: &MappedUser,
) -> Option<Map<String, Value>> {
    let mut o = Map::new();
    match from {
        None => {
            o.extend(user_attrs(to).into_iter().map(|(k, v)| (k.to_string(), v)));
            o.insert(
                "onPremisesImmutableId".into(),
                Value::String(immutable_id(anchor)?),
            );
        }
        Some(f) => {
            let old = user_attrs(f);
            let new = user_attrs(to);
            for (k, v) in &new {
                if old.iter().find(|(o, _)| o == k).map(|(_, v)| v) != Some(v) {
                    o.insert(k.to_string(), v.clone());
                }
            }
            // What the mapping no longer sets is cleared.
            for (k, v) in old {
                if !new.iter().any(|(n, _)| *n == k) {
                    let cleared = match v {
                        Value::Object(m) => {
                            Value::Object(m.into_iter().map(|(a, _)| (a, Value::Null)).collect())
                        }
                        Value::Array(_) => json!([]),
                        _ => Value::Null,
                    };
                    o.insert(k.to_string(), cleared);
                }
            }
        }
    }
    Some(o)
}

/// `POST /groups` body: a security group carrying the anchor in its extension attribute.
/// Members are added afterwards with `$ref`.
pub fn group_create_body(anchor_attr: &str, anchor: &str, g: &MappedGroup) -> Value {
    let mut o = Map::new();
    o.insert("displayName".into(), Value::from(g.display_name.as_str()));
    o.insert("mailEnabled".into(), Value::Bool(false));
    o.insert("securityEnabled".into(), Value::Bool(true));
    o.insert(
        "mailNickname".into(),
        Value::String(mail_nickname(
            &g.display_name,
            &format!("g{}", short_anchor(anchor)),
        )),
    );
    o.insert(anchor_attr.into(), Value::String(anchor.to_string()));
    Value::Object(o)
}

/// What a group update sends.
#[derive(Debug, PartialEq)]
pub struct GroupDiff {
    pub patch: Map<String, Value>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// The group update from `from` (None: unknown, write all) to `to`.
pub fn group_diff(
    anchor_attr: &str,
    anchor: &str,
    from: Option<&MappedGroup>,
    to: &MappedGroup,
) -> GroupDiff {
    let mut patch = Map::new();
    match from {
        None => {
            patch.insert("displayName".into(), Value::from(to.display_name.as_str()));
            patch.insert(anchor_attr.into(), Value::String(anchor.to_string()));
            GroupDiff {
                patch,
                add: to.members.iter().cloned().collect(),
                remove: Vec::new(),
            }
        }
        Some(f) => {
            if f.display_name != to.display_name {
                patch.insert("displayName".into(), Value::from(to.display_name.as_str()));
            }
            GroupDiff {
                patch,
                add: to.members.difference(&f.members).cloned().collect(),
                remove: f.members.difference(&to.members).cloned().collect(),
            }
        }
    }
}

/// An OData string literal: quoted, quotes doubled.
pub fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The users that could match: same immutable id, or UPN / mail equal to the object's
/// UPN or e-mail.
pub fn user_filter(anchor: &str, u: &MappedUser) -> String {
    let mut clauses = Vec::new();
    if let Some(id) = immutable_id(anchor) {
        clauses.push(format!("onPremisesImmutableId eq {}", odata_string(&id)));
    }
    let mut names = vec![u.user_name.as_str()];
    if let Some(e) = u.email.as_deref().filter(|e| !e.is_empty()) {
        if !e.eq_ignore_ascii_case(&u.user_name) {
            names.push(e);
        }
    }
    for n in names {
        clauses.push(format!("userPrincipalName eq {}", odata_string(n)));
        clauses.push(format!("mail eq {}", odata_string(n)));
    }
    clauses.join(" or ")
}

/// The groups that could match: carrying the anchor, or of the same displayName.
pub fn group_filter(anchor_attr: &str, anchor: &str, display_name: &str) -> String {
    format!(
        "{anchor_attr} eq {} or displayName eq {}",
        odata_string(anchor),
        odata_string(display_name)
    )
}

// ---- pure helpers: answers ----

/// A response body: JSON, empty, or something else.
#[derive(Clone, Debug, PartialEq)]
enum Body {
    Empty,
    Json(Value),
    NotJson,
}

fn parse_body(bytes: &[u8]) -> Body {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Body::Empty;
    }
    serde_json::from_slice(bytes).map_or(Body::NotJson, Body::Json)
}

struct Reply {
    status: u16,
    retry_after: Option<Duration>,
    body: Body,
}

/// One answer inside a `$batch` response.
#[derive(Clone, Debug, PartialEq)]
struct SubReply {
    status: u16,
    retry_after: Option<Duration>,
    body: Body,
}

/// The answers of a `$batch` response by request id.
fn parse_batch_response(v: &Value) -> Result<HashMap<String, SubReply>, String> {
    let responses = v
        .get("responses")
        .and_then(Value::as_array)
        .ok_or("no `responses` array")?;
    let mut out = HashMap::new();
    for r in responses {
        let id = match r.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err("a response without an id".into()),
        };
        let status = r
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| format!("response {id} has no valid status"))?;
        let retry_after = r
            .get("headers")
            .and_then(Value::as_object)
            .and_then(|h| {
                h.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .map(|(_, v)| v)
            })
            .and_then(|v| match v {
                Value::String(s) => parse_seconds(s),
                Value::Number(n) => n.as_u64().map(clamp_secs),
                _ => None,
            });
        let body = match r.get("body") {
            None | Some(Value::Null) => Body::Empty,
            Some(b) => Body::Json(b.clone()),
        };
        if out
            .insert(
                id.clone(),
                SubReply {
                    status,
                    retry_after,
                    body,
                },
            )
            .is_some()
        {
            return Err(format!("two responses with id {id}"));
        }
    }
    Ok(out)
}

/// The items of a collection page and its nextLink.
fn parse_page(v: &Value) -> Result<(Vec<Value>, Option<String>), String> {
    let items = v
        .get("value")
        .and_then(Value::as_array)
        .ok_or("no `value` array in the page")?
        .clone();
    let next = match v.get("@odata.nextLink") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("a nextLink that is not a string".into()),
    };
    Ok((items, next))
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// `createdDateTime` (ISO 8601, UTC), when present and readable.
fn created(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = v.get("createdDateTime")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn opt_compact(v: &Value, key: &str) -> Option<CompactString> {
    v.get(key).and_then(Value::as_str).map(CompactString::new)
}

/// The mapping's other properties as a listed user holds them (those selected).
fn remote_extras(v: &Value) -> BTreeMap<CompactString, CompactString> {
    let mut out = BTreeMap::new();
    for p in EXTRA_PROPS {
        let value = match v.get(*p) {
            Some(Value::Array(a)) => a.first().and_then(Value::as_str),
            Some(x) => x.as_str(),
            None => None,
        };
        if let Some(s) = value {
            out.insert(CompactString::new(p), CompactString::new(s));
        }
    }
    if let Some(m) = v
        .get(MANAGER)
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
    {
        out.insert(CompactString::new(MANAGER), CompactString::new(m));
    }
    for (a, x) in v
        .get(EXTENSION_ATTRS)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(s) = x.as_str() {
            out.insert(
                CompactString::new(format!("{EXTENSION_ATTRS}.{a}")),
                CompactString::new(s),
            );
        }
    }
    out
}

/// A user as [`Target::list`] returns it.
fn remote_user(v: &Value) -> Result<RemoteObject, String> {
    let id = opt_str(v, "id").ok_or("no id")?;
    let upn =
        opt_str(v, "userPrincipalName").ok_or_else(|| format!("{id}: no userPrincipalName"))?;
    let mail = opt_str(v, "mail");
    let anchor = opt_str(v, "onPremisesImmutableId")
        .filter(|s| !s.is_empty())
        .map(|s| anchor_from_immutable_id(&s).unwrap_or(s));
    let state = v
        .get("accountEnabled")
        .and_then(Value::as_bool)
        .map(|active| {
            Mapped::User(MappedUser {
                user_name: upn.as_str().into(),
                display_name: opt_compact(v, "displayName"),
                given_name: opt_compact(v, "givenName"),
                family_name: opt_compact(v, "surname"),
                email: mail.as_deref().map(CompactString::new),
                title: opt_compact(v, "jobTitle"),
                department: opt_compact(v, "department"),
                active,
                extra: remote_extras(v),
            })
        });
    Ok(RemoteObject {
        kind: ObjectKind::User,
        id,
        anchor,
        name: upn,
        emails: mail.into_iter().collect(),
        etag: None,
        created: created(v),
        state,
    })
}

/// A group, and whether its expanded members are complete (fewer than Graph's expand
/// limit).
fn remote_group(v: &Value, anchor_attr: &str) -> Result<(RemoteObject, bool), String> {
    let id = opt_str(v, "id").ok_or("no id")?;
    let name = opt_str(v, "displayName").unwrap_or_default();
    let (members, complete) = match v.get("members") {
        Some(Value::Array(ms)) => {
            let mut set = BTreeSet::new();
            for m in ms {
                set.insert(opt_str(m, "id").ok_or_else(|| format!("{id}: a member without id"))?);
            }
            (set, ms.len() < EXPAND_LIMIT)
        }
        _ => (BTreeSet::new(), false),
    };
    Ok((
        RemoteObject {
            kind: ObjectKind::Group,
            id,
            anchor: opt_str(v, anchor_attr).filter(|s| !s.is_empty()),
            name: name.clone(),
            emails: Vec::new(),
            etag: None,
            created: created(v),
            state: Some(Mapped::Group(MappedGroup {
                display_name: name.into(),
                members,
            })),
        },
        complete,
    ))
}

fn error_message(body: &Body) -> String {
    match body {
        Body::Json(v) => {
            let e = v.get("error");
            let code = e.and_then(|e| e.get("code")).and_then(Value::as_str);
            let msg = e.and_then(|e| e.get("message")).and_then(Value::as_str);
            match (code, msg) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                (None, Some(m)) => m.to_string(),
                (None, None) => String::new(),
            }
        }
        Body::Empty => String::new(),
        Body::NotJson => "(an answer that is not JSON)".into(),
    }
}

/// A Graph error answer as a [`TargetError`] (one line, Graph's code and message).
fn graph_error(status: u16, body: &Body) -> TargetError {
    let m = error_message(body);
    let m = if m.is_empty() {
        format!("Graph answered {status}")
    } else {
        one_line(&m)
    };
    TargetError::new(Some(status), m)
}

fn sub_error(a: &SubReply) -> TargetError {
    graph_error(a.status, &a.body)
}

fn token_error(status: u16, body: &[u8]) -> TargetError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v.get("error").and_then(Value::as_str).unwrap_or("error");
    let desc = v
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| format!(" ({})", one_line(d)))
        .unwrap_or_default();
    TargetError {
        status: Some(status),
        message: format!("token endpoint refused the client credentials: {code}{desc}"),
        fatal: !(status == 429 || status >= 500),
        gone: false,
    }
}

/// `{token_type, expires_in, access_token}` (expires_in as a number or a string).
fn parse_token_response(body: &[u8]) -> std::result::Result<(Secret, Duration), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON")?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("no access_token")?;
    if let Some(t) = v.get("token_type").and_then(Value::as_str) {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(format!("token_type `{t}` is not Bearer"));
        }
    }
    let secs = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or("no expires_in")?;
    Ok((Secret::new(token), Duration::from_secs(secs)))
}

fn one_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or_default();
    if l.chars().count() > 300 {
        l.chars().take(300).collect::<String>() + "…"
    } else {
        l.to_string()
    }
}

fn clamp_secs(s: u64) -> Duration {
    Duration::from_secs(s.min(3600))
}

fn parse_seconds(s: &str) -> Option<Duration> {
    s.trim().parse::<u64>().ok().map(clamp_secs)
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_seconds)
}

/// Exponential backoff: `base * 2^(attempt-1)`, at most `max`, times `jitter` (0.5..=1).
pub fn backoff_delay(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    exp.min(max).mul_f64(jitter.clamp(0.0, 1.0))
}

/// Percent-encode a path segment (everything but RFC 3986 unreserved characters).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode `s` for a query or form: RFC 3986 unreserved characters and `keep`
/// stay, a space is `+`, everything else `%XX`.
fn pct(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b)
        {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k=v&…`, form-urlencoded.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k, b""), pct(v, b"")))
        .collect::<Vec<_>>()
        .join("&")
}

/// A query string. `$` and `,` stay readable, as in Graph's own links.
fn query_encode(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k, b"$"), pct(v, b"$,")))
        .collect::<Vec<_>>()
        .join("&")
}

/// The path of a URL, for messages (no host, no query).
fn path_of(url: &str) -> String {
    Url::parse(url).map_or_else(|_| "?".into(), |u| u.path().to_string())
}

/// An error and its causes, one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = match e.url() {
        Some(u) => e.to_string().replace(&format!(" ({u})"), ""),
        None => e.to_string(),
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "84856553-a093-4713-b3b0-1667192003bd";

    fn user() -> MappedUser {
        MappedUser {
            user_name: "jo.o'neil@test.lan".into(),
            display_name: Some("Jo O'Neil".into()),
            given_name: Some("Jo".into()),
            family_name: Some("O'Neil".into()),
            email: Some("jo@test.lan".into()),
            title: None,
            department: Some("Ops".into()),
            active: true,
            extra: Default::default(),
        }
    }

    #[test]
    fn immutable_id_is_ad_connects_form_and_round_trips() {
        assert_eq!(immutable_id(A).unwrap(), "U2WFhJOgE0ezsBZnGSADvQ==");
        assert_eq!(
            anchor_from_immutable_id("U2WFhJOgE0ezsBZnGSADvQ==").unwrap(),
            A
        );
        let upper = A.to_uppercase();
        assert_eq!(
            anchor_from_immutable_id(&immutable_id(&upper).unwrap()).unwrap(),
            A
        );
        assert_eq!(immutable_id("not-a-uuid"), None);
        assert_eq!(anchor_from_immutable_id("c29tZXRoaW5n"), None);
        assert_eq!(anchor_from_immutable_id("!!"), None);
    }

    #[test]
    fn user_create_body_has_what_graph_requires() {
        let b = user_create_body(A, &user(), "Pw-1234567890abc").unwrap();
        assert_eq!(b["userPrincipalName"], "jo.o'neil@test.lan");
        assert_eq!(b["displayName"], "Jo O'Neil");
        assert_eq!(b["surname"], "O'Neil");
        assert_eq!(b["mail"], "jo@test.lan");
        assert_eq!(b["accountEnabled"], true);
        assert_eq!(b["mailNickname"], "jo.oneil");
        assert_eq!(b["onPremisesImmutableId"], "U2WFhJOgE0ezsBZnGSADvQ==");
        assert_eq!(b["passwordProfile"]["password"], "Pw-1234567890abc");
        assert!(
            b.get("jobTitle").is_none(),
            "absent attributes are left out"
        );

        let mut bare = user();
        bare.display_name = None;
        let b = user_create_body(A, &bare, "x").unwrap();
        assert_eq!(b["displayName"], "jo.o'neil@test.lan");
        assert!(user_create_body("nope", &bare, "x").is_none());
    }

    #[test]
    fn nicknames_are_sanitised() {
        assert_eq!(mail_nickname("Jöhn Smith (IT)", "f"), "JhnSmithIT");
        assert_eq!(mail_nickname("..a.b..", "f"), "a.b");
        assert_eq!(mail_nickname("ÄÖÜ", "fallback"), "fallback");
        assert_eq!(mail_nickname(&"x".repeat(100), "f").len(), 64);
    }

    #[test]
    fn passwords_are_strong_and_random() {
        let p = random_password();
        assert_eq!(p.len(), 32);
        assert!(p.chars().any(|c| c.is_ascii_lowercase()));
        assert!(p.chars().any(|c| c.is_ascii_uppercase()));
        assert!(p.chars().any(|c| c.is_ascii_digit()));
        assert!(p.chars().any(|c| !c.is_ascii_alphanumeric()));
        assert_ne!(p, random_password());
    }

    #[test]
    fn user_patch_sends_only_differences() {
        let from = user();
        let mut to = user();
        assert!(user_patch(A, Some(&from), &to).unwrap().is_empty());
        to.department = None;
        to.title = Some("Boss".into());
        to.active = false;
        let p = user_patch(A, Some(&from), &to).unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"department": null, "jobTitle": "Boss", "accountEnabled": false})
        );
        // displayName compares by what Graph holds: the fallback to the UPN.
        let mut f2 = user();
        f2.display_name = Some(f2.user_name.clone());
        let mut t2 = user();
        t2.display_name = None;
        assert!(user_patch(A, Some(&f2), &t2).unwrap().is_empty());
        // Unknown `from`: everything, nulls included, and the immutable id.
        let all = user_patch(A, None, &to).unwrap();
        assert_eq!(all.len(), 9);
        assert_eq!(all["jobTitle"], "Boss");
        assert_eq!(all["department"], Value::Null);
        assert_eq!(all["onPremisesImmutableId"], "U2WFhJOgE0ezsBZnGSADvQ==");
    }

    #[test]
    fn group_bodies_and_diffs() {
        let attr = anchor_attribute("0a1b2c3d-0000-1111-2222-333344445555");
        assert_eq!(
            attr,
            "extension_0a1b2c3d000011112222333344445555_dirsyncAnchor"
        );
        let g = MappedGroup {
            display_name: "Team A/B".into(),
            members: ["m1", "m2"].iter().map(|s| s.to_string()).collect(),
        };
        let b = group_create_body(&attr, A, &g);
        assert_eq!(b["mailEnabled"], false);
        assert_eq!(b["securityEnabled"], true);
        assert_eq!(b["mailNickname"], "TeamAB");
        assert_eq!(b[&attr], A);
        assert!(b.get("members").is_none());

        let to = MappedGroup {
            display_name: "Team A/B".into(),
            members: ["m2", "m3"].iter().map(|s| s.to_string()).collect(),
        };
        let d = group_diff(&attr, A, Some(&g), &to);
        assert!(d.patch.is_empty());
        assert_eq!(d.add, vec!["m3".to_string()]);
        assert_eq!(d.remove, vec!["m1".to_string()]);
        let d = group_diff(&attr, A, None, &to);
        assert_eq!(d.patch.len(), 2);
        assert_eq!(d.add.len(), 2);
        assert!(d.remove.is_empty());
    }

    #[test]
    fn filters_escape_quotes() {
        let f = user_filter(A, &user());
        assert_eq!(
            f,
            "onPremisesImmutableId eq 'U2WFhJOgE0ezsBZnGSADvQ==' or \
             userPrincipalName eq 'jo.o''neil@test.lan' or mail eq 'jo.o''neil@test.lan' or \
             userPrincipalName eq 'jo@test.lan' or mail eq 'jo@test.lan'"
        );
        assert_eq!(
            group_filter("ext", A, "It's"),
            format!("ext eq '{A}' or displayName eq 'It''s'")
        );
    }

    #[test]
    fn plans_ops_into_requests() {
        let attr = "ext";
        let p = plan_op(
            &Op::Update {
                anchor: A.into(),
                target_id: "g/1".into(),
                from: Some(Mapped::Group(MappedGroup {
                    display_name: "G".into(),
                    members: ["a".to_string()].into(),
                })),
                to: Mapped::Group(MappedGroup {
                    display_name: "H".into(),
                    members: ["b".to_string()].into(),
                }),
                etag: None,
            },
            attr,
        )
        .unwrap();
        assert_eq!(p.target_id, "g/1");
        let urls: Vec<_> = p
            .requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.url))
            .collect();
        assert_eq!(
            urls,
            [
                "PATCH /groups/g%2F1",
                "POST /groups/g%2F1/members/$ref",
                "DELETE /groups/g%2F1/members/a/$ref"
            ]
        );
        assert_eq!(
            p.requests[1].body.as_ref().unwrap()["@odata.id"],
            "https://graph.microsoft.com/v1.0/directoryObjects/b"
        );
        let same = plan_op(
            &Op::Update {
                anchor: A.into(),
                target_id: "u".into(),
                from: Some(Mapped::User(user())),
                to: Mapped::User(user()),
                etag: None,
            },
            attr,
        )
        .unwrap();
        assert!(same.requests.is_empty());
        let bad = plan_op(
            &Op::Create {
                anchor: "x".into(),
                object: Mapped::User(user()),
            },
            attr,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn the_manager_is_a_reference_request_not_a_property() {
        let with = |m: Option<&str>| {
            let mut u = user();
            if let Some(m) = m {
                u.extra.insert(MANAGER.into(), m.into());
            }
            u
        };
        let requests = |from: Option<&str>, to: Option<&str>| -> Vec<Planned> {
            plan_op(
                &Op::Update {
                    anchor: A.into(),
                    target_id: "u1".into(),
                    from: Some(Mapped::User(with(from))),
                    to: Mapped::User(with(to)),
                    etag: None,
                },
                "ext",
            )
            .unwrap()
            .requests
        };
        let set = |user: &str, m: &str| Planned {
            step: Step::SetManager,
            method: "PUT",
            url: format!("/users/{user}/manager/$ref"),
            body: Some(json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/users/{m}")})),
        };
        assert_eq!(requests(None, Some("m1")), [set("u1", "m1")]);
        assert_eq!(requests(Some("m1"), Some("m2")), [set("u1", "m2")]);
        assert_eq!(requests(Some("m1"), Some("m1")), []);
        assert_eq!(
            requests(Some("m1"), None),
            [Planned {
                step: Step::RemoveManager,
                method: "DELETE",
                url: "/users/u1/manager/$ref".into(),
                body: None,
            }]
        );
        // A create carries the manager for after the user exists; the body has none.
        let p = plan_op(
            &Op::Create {
                anchor: A.into(),
                object: Mapped::User(with(Some("m1"))),
            },
            "ext",
        )
        .unwrap();
        assert_eq!(p.requests.len(), 1);
        assert_eq!(p.requests[0].step, Step::CreateUser(Some("m1".into())));
        assert!(p.requests[0].body.as_ref().unwrap().get(MANAGER).is_none());
        let mut run = Run::new(1, Instant::now() + Duration::from_secs(60), 3);
        run.push(0, p.requests[0].clone());
        let r = run.take_ready(Instant::now()).remove(0);
        run.done(r, &Body::Json(json!({"id": "new"})));
        let next: Vec<Planned> = run.queue.iter().map(|r| r.planned.clone()).collect();
        assert_eq!(next, [set("new", "m1")]);
        // Removing a manager the user no longer has is done; setting one that is gone is not.
        assert!(matches!(
            classify(&Step::RemoveManager, 404, &Body::Empty),
            Verdict::Done
        ));
        assert!(matches!(
            classify(&Step::SetManager, 404, &Body::Empty),
            Verdict::Failed
        ));
        assert_eq!(extra_property("manager"), Ok(ExtraProperty::Reference));
        assert_eq!(extra_property("employeeId"), Ok(ExtraProperty::Plain));
    }

    #[test]
    fn batch_responses_are_parsed_by_id() {
        let v = json!({"responses": [
            {"id": "2", "status": 429, "headers": {"retry-after": "7"}, "body": {"error": {"code": "TooManyRequests", "message": "slow down"}}},
            {"id": "1", "status": 201, "body": {"id": "abc"}},
            {"id": 3, "status": 204},
        ]});
        let r = parse_batch_response(&v).unwrap();
        assert_eq!(r["1"].status, 201);
        assert_eq!(r["1"].body, Body::Json(json!({"id": "abc"})));
        assert_eq!(r["2"].retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            graph_error(429, &r["2"].body).message,
            "TooManyRequests: slow down"
        );
        assert_eq!(r["3"].body, Body::Empty);
        for bad in [
            json!({}),
            json!({"responses": [{"status": 200}]}),
            json!({"responses": [{"id": "1", "status": "ok"}]}),
            json!({"responses": [{"id": "1", "status": 200}, {"id": "1", "status": 200}]}),
        ] {
            assert!(parse_batch_response(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_classified() {
        let already = Body::Json(json!({"error": {"code": "Request_BadRequest",
            "message": "One or more added object references already exist for the following modified properties: 'members'."}}));
        assert!(matches!(
            classify(&Step::AddMember, 400, &already),
            Verdict::Done
        ));
        assert!(matches!(
            classify(&Step::Patch, 400, &already),
            Verdict::Failed
        ));
        assert!(matches!(
            classify(&Step::Delete, 404, &Body::Empty),
            Verdict::Done
        ));
        assert!(matches!(
            classify(&Step::Patch, 404, &Body::Empty),
            Verdict::Failed
        ));
        assert!(matches!(
            classify(&Step::Patch, 503, &Body::Empty),
            Verdict::Retry
        ));
        assert!(matches!(
            classify(&Step::Patch, 429, &Body::Empty),
            Verdict::Throttled
        ));
        assert!(matches!(
            classify(&Step::Patch, 401, &Body::Empty),
            Verdict::Fatal
        ));
    }

    #[test]
    fn pages_users_groups_and_tokens_parse() {
        let (items, next) =
            parse_page(&json!({"value": [{"id": "1"}], "@odata.nextLink": "http://x/n"})).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(next.as_deref(), Some("http://x/n"));
        assert!(parse_page(&json!({"value": 3})).is_err());

        let u = remote_user(
            &json!({"id": "i", "userPrincipalName": "a@b", "mail": "m@b",
            "accountEnabled": false, "onPremisesImmutableId": "U2WFhJOgE0ezsBZnGSADvQ=="}),
        )
        .unwrap();
        assert_eq!(u.anchor.as_deref(), Some(A));
        assert_eq!(u.emails, vec!["m@b".to_string()]);
        assert!(matches!(u.state, Some(Mapped::User(ref s)) if !s.active));
        let foreign = remote_user(
            &json!({"id": "i", "userPrincipalName": "a@b", "onPremisesImmutableId": "abc"}),
        )
        .unwrap();
        assert_eq!(foreign.anchor.as_deref(), Some("abc"));
        assert!(remote_user(&json!({"userPrincipalName": "a"})).is_err());

        let (g, complete) = remote_group(
            &json!({"id": "g", "displayName": "G", "ext": A, "members": [{"id": "m"}]}),
            "ext",
        )
        .unwrap();
        assert!(complete);
        assert_eq!(g.anchor.as_deref(), Some(A));
        assert_eq!(g.created, None);
        let (g, _) = remote_group(
            &json!({"id": "g", "displayName": "G", "createdDateTime": "2026-12-02T13:15:27Z"}),
            "ext",
        )
        .unwrap();
        assert_eq!(
            g.created,
            chrono::DateTime::from_timestamp(1_796_217_327, 0),
            "createdDateTime"
        );
        let twenty: Vec<Value> = (0..20).map(|i| json!({"id": i.to_string()})).collect();
        let (_, complete) = remote_group(&json!({"id": "g", "members": twenty}), "ext").unwrap();
        assert!(!complete);

        let (t, life) = parse_token_response(
            br#"{"token_type":"Bearer","expires_in":"3599","access_token":"tok"}"#,
        )
        .unwrap();
        assert_eq!((t.expose(), life), ("tok", Duration::from_secs(3599)));
        assert!(parse_token_response(b"{\"access_token\":\"t\"}").is_err());
        assert!(parse_token_response(b"<html>").is_err());
        let e = token_error(
            401,
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: bad secret"}"#,
        );
        assert!(e.fatal && e.message.contains("invalid_client"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(1);
        assert_eq!(backoff_delay(b, m, 1, 1.0), b);
        assert_eq!(backoff_delay(b, m, 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(b, m, 30, 1.0), m);
        assert_eq!(backoff_delay(b, m, 2, 0.5), b);
    }

    #[test]
    fn encodings() {
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(
            form_encode(&[("a", "x y"), ("s", "p&q=")]),
            "a=x+y&s=p%26q%3D"
        );
        assert_eq!(
            query_encode(&[
                ("$select", "id,mail".into()),
                ("$filter", "a eq 'b'".into())
            ]),
            "$select=id,mail&$filter=a+eq+%27b%27"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = GraphTarget::new(
            "http://127.0.0.1:1/v1.0",
            "http://127.0.0.1:1/t",
            "cid",
            Secret::new("hunter2"),
            GraphOptions::default(),
        )
        .unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}

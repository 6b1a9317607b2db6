//! A fake Microsoft Graph (and Microsoft identity platform token endpoint), in memory,
//! written to Microsoft's documented behaviour. No Graph emulator exists in any registry
//! reachable from the lab, so this is what the Graph target is tested against.
//!
//! Started in-process: an axum server on `127.0.0.1:<free port>` on a runtime of its own
//! (a thread), so it works from any test, sync or async, and dies when dropped.
//! Measured start: ~1 ms.
//!
//! What it does, as Graph does:
//! * **Token endpoint** `POST /{tenant}/oauth2/v2.0/token` (form: `grant_type=
//!   client_credentials`, `client_id`, `client_secret`, `scope=https://graph.microsoft.com/.default`)
//!   answers `{token_type: "Bearer", expires_in, ext_expires_in, access_token}`; a wrong
//!   secret is 401 `invalid_client`, a wrong scope 400 `invalid_scope`, a wrong grant 400
//!   `unsupported_grant_type`.
//! * Every `/v1.0` request needs `Authorization: Bearer <token>`: missing, unknown,
//!   expired or revoked tokens are 401 `InvalidAuthenticationToken`.
//! * `/users`, `/users/{id}`, `/groups`, `/groups/{id}`: GET (list / one), POST (create:
//!   201 with the object), PATCH (204), DELETE (204; 404 `Request_ResourceNotFound` when
//!   absent; a deleted object leaves every group). Creates check the required properties
//!   (user: `accountEnabled`, `displayName`, `mailNickname`, `userPrincipalName`,
//!   `passwordProfile.password`; group: `displayName`, `mailEnabled`, `mailNickname`,
//!   `securityEnabled`); unknown properties are 400; a duplicate `userPrincipalName` or
//!   `onPremisesImmutableId` is 400 `Request_BadRequest` "Another object with the same
//!   value for property … already exists." Directory extension properties
//!   (`extension_<app>_<name>`) are accepted on users and groups.
//! * Lists: `$select` (selected properties that have no value come back as null; without
//!   `$select`, a default set that leaves out e.g. `onPremisesImmutableId`, `department`,
//!   `accountEnabled` and extension properties), `$filter` (`prop eq 'value'` joined by
//!   `or`; quotes doubled; case-insensitive), `$top` and `@odata.nextLink` (`$skiptoken`)
//!   with a server page size (default 100: `$top` asks for at most that), `$expand=members`
//!   (at most 20 members per group, no link to the rest, and pages of at most 100 groups).
//! * `POST /groups/{id}/members/$ref` with `{"@odata.id": ".../directoryObjects/{id}"}`
//!   (204; 400 "One or more added object references already exist…" when already a member;
//!   404 when either object does not exist), `DELETE /groups/{id}/members/{id}/$ref`
//!   (204; 404 when not a member), `GET /groups/{id}/members` (paged).
//! * A user's manager: `PUT /users/{id}/manager/$ref` with `{"@odata.id":
//!   ".../users/{id}"}` (204, replacing any manager; 404 when either user does not exist),
//!   `DELETE /users/{id}/manager/$ref` (204; 404 when the user has no manager),
//!   `GET /users/{id}/manager` (the manager; 404 when none), and `$expand=manager` on
//!   users (`manager` present only when set). Deleting a user removes it as anyone's
//!   manager.
//! * `POST /$batch`: at most 20 requests (more is 400), unique ids, relative URLs,
//!   per-request status, headers and body, `dependsOn` (a request whose dependency failed
//!   is 424). Requests run in order; answers come back in **reverse** order, since Graph
//!   documents that their order is arbitrary and the id correlates them.
//! * Throttling: identity writes (POST/PATCH/DELETE) draw from a token bucket of
//!   [`GraphFakeOptions::writes_per_window`] per [`GraphFakeOptions::window`] (Graph:
//!   3,000 per 150 s per app and tenant). An empty bucket answers 429 `TooManyRequests`
//!   with `Retry-After` (whole seconds, at least 1), per request inside a batch too.
//! * Failure injection ([`Fault`]): the next N HTTP requests, the next N Graph requests
//!   (inside batches too; optionally only those whose method, URL or body contains a
//!   string), or the next N token requests fail with a chosen status.
//!
//! Everything it answers is recorded ([`GraphFake::requests`], [`GraphFake::batches`],
//! [`GraphFake::throttled`]) with timestamps, for tests to check what the client did.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

pub const TENANT: &str = "7f0c5d3e-1111-4222-8333-944455556666";
pub const CLIENT_ID: &str = "0a1b2c3d-0000-4111-8222-333344445555";
pub const CLIENT_SECRET: &str = "fake~graph~secret";
pub const SCOPE: &str = "https://graph.microsoft.com/.default";
/// Graph's limit of requests in one `$batch`.
pub const MAX_BATCH: usize = 20;
/// Graph's limit of objects in an expanded directory relationship.
pub const EXPAND_LIMIT: usize = 20;

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct GraphFakeOptions {
    /// Identity writes allowed per `window` (token bucket: refills continuously).
    pub writes_per_window: u32,
    pub window: Duration,
    /// The server's largest page (a `$top` above it is cut down to it).
    pub page_size: usize,
    /// `expires_in` of issued tokens.
    pub token_lifetime: Duration,
}

impl Default for GraphFakeOptions {
    fn default() -> Self {
        GraphFakeOptions {
            writes_per_window: 3000,
            window: Duration::from_secs(150),
            page_size: 100,
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// Where a [`Fault`] strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultScope {
    /// A whole HTTP request to `/v1.0` (a `$batch` is one).
    Http,
    /// One Graph request, sent directly or inside a `$batch`.
    Request,
    /// A request to the token endpoint (answered `{"error": "temporarily_unavailable"}`).
    Token,
}

/// An injected failure: the next `times` requests of `scope` (that contain `matching` in
/// their method, URL or body, if given) are answered `status`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub times: u32,
    pub scope: FaultScope,
    pub matching: Option<String>,
    /// Retry-After seconds (429s get 1 when not set).
    pub retry_after: Option<u64>,
}

impl Fault {
    pub fn http(status: u16, times: u32) -> Fault {
        Fault {
            status,
            times,
            scope: FaultScope::Http,
            matching: None,
            retry_after: None,
        }
    }
    pub fn token(status: u16, times: u32) -> Fault {
        Fault {
            scope: FaultScope::Token,
            ..Fault::http(status, times)
        }
    }
    pub fn request(status: u16, times: u32) -> Fault {
        Fault {
            scope: FaultScope::Request,
            ..Fault::http(status, times)
        }
    }
    pub fn matching(mut self, s: &str) -> Fault {
        self.matching = Some(s.to_string());
        self
    }
    pub fn retry_after(mut self, secs: u64) -> Fault {
        self.retry_after = Some(secs);
        self
    }
}

/// One Graph request the fake answered (directly or inside a batch).
#[derive(Clone, Debug)]
pub struct Logged {
    pub at: Instant,
    /// Number of the HTTP request it came in (1, 2, ...).
    pub http_seq: u64,
    pub in_batch: bool,
    pub method: String,
    /// Path after `/v1.0`, with the query.
    pub url: String,
    pub body: Value,
    pub status: u16,
}

impl Logged {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// One `$batch` HTTP request.
#[derive(Clone, Debug)]
pub struct BatchLog {
    pub at: Instant,
    pub http_seq: u64,
    pub size: usize,
    pub status: u16,
}

/// One 429 the fake sent.
#[derive(Clone, Debug)]
pub struct Throttle {
    pub at: Instant,
    pub http_seq: u64,
    pub retry_after: Duration,
}

/// One HTTP request that reached `/v1.0`.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub http_seq: u64,
    pub method: String,
    pub path: String,
}

#[derive(Clone, Debug)]
struct GroupRec {
    props: Map<String, Value>,
    members: BTreeSet<String>,
}

struct Tok {
    expires: Instant,
    revoked: bool,
}

struct Fake {
    opts: GraphFakeOptions,
    base: String,
    users: BTreeMap<String, Map<String, Value>>,
    /// User id -> its manager's id.
    managers: BTreeMap<String, String>,
    groups: BTreeMap<String, GroupRec>,
    tokens: HashMap<String, Tok>,
    reject_all_tokens: bool,
    token_requests: u32,
    unauthorized: u32,
    bucket: f64,
    refilled: Instant,
    faults: Vec<Fault>,
    http_seq: u64,
    arrivals: Vec<Arrival>,
    log: Vec<Logged>,
    batches: Vec<BatchLog>,
    throttled: Vec<Throttle>,
}

/// An answer of the Graph API (direct or inside a batch).
struct Ans {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl Ans {
    fn new(status: u16, body: Value) -> Ans {
        Ans {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }
    fn empty(status: u16) -> Ans {
        Ans {
            status,
            headers: Vec::new(),
            body: None,
        }
    }
    fn error(status: u16, code: &str, message: &str) -> Ans {
        Ans::new(
            status,
            json!({"error": {"code": code, "message": message,
                "innerError": {"date": "2024-01-01T00:00:00", "request-id": uuid::Uuid::new_v4().to_string()}}}),
        )
    }
    fn bad(message: &str) -> Ans {
        Ans::error(400, "Request_BadRequest", message)
    }
    fn not_found(id: &str) -> Ans {
        Ans::error(
            404,
            "Request_ResourceNotFound",
            &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
        )
    }
    fn with_header(mut self, k: &str, v: String) -> Ans {
        self.headers.push((k.to_string(), v));
        self
    }
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

const USER_PROPS: &[&str] = &[
    "accountEnabled",
    "displayName",
    "givenName",
    "surname",
    "mail",
    "jobTitle",
    "department",
    "mailNickname",
    "userPrincipalName",
    "passwordProfile",
    "onPremisesImmutableId",
    "usageLocation",
    "officeLocation",
    "mobilePhone",
    "otherMails",
    "employeeId",
    "employeeType",
    "companyName",
    "streetAddress",
    "city",
    "state",
    "postalCode",
    "country",
    "preferredLanguage",
    "businessPhones",
    "onPremisesExtensionAttributes",
];
const USER_DEFAULT: &[&str] = &[
    "id",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "surname",
    "userPrincipalName",
];
const GROUP_PROPS: &[&str] = &[
    "displayName",
    "description",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
    "groupTypes",
    "visibility",
];
const GROUP_DEFAULT: &[&str] = &[
    "id",
    "displayName",
    "description",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
    "groupTypes",
];

fn known_prop(list: &[&str], k: &str) -> bool {
    list.contains(&k) || (k.starts_with("extension_") && k.matches('_').count() >= 2)
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pct_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~$,()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (pct_decode(k), pct_decode(v)),
            None => (pct_decode(p), String::new()),
        })
        .collect()
}

fn q<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// `a eq 'x' or b eq 'y'` -> [(a, x), (b, y)]. None when it is anything else.
fn parse_filter(f: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = f.trim();
    loop {
        let (prop, r) = rest.split_once(char::is_whitespace)?;
        let r = r.trim_start().strip_prefix("eq")?.trim_start();
        let r = r.strip_prefix('\'')?;
        // The literal ends at a quote not followed by another quote.
        let mut value = String::new();
        let mut chars = r.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                    chars.next();
                    value.push('\'');
                } else {
                    end = Some(i + 1);
                    break;
                }
            } else {
                value.push(c);
            }
        }
        out.push((prop.to_string(), value));
        rest = r[end?..].trim_start();
        if rest.is_empty() {
            return Some(out);
        }
        rest = rest.strip_prefix("or")?;
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        rest = rest.trim_start();
    }
}

fn matches_filter(obj: &Map<String, Value>, id: &str, clauses: &[(String, String)]) -> bool {
    clauses.iter().any(|(p, v)| {
        if p == "id" {
            return id.eq_ignore_ascii_case(v);
        }
        obj.get(p)
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(v))
    })
}

/// `createdDateTime` as Graph writes it (UTC, seconds).
fn created_now() -> Value {
    Value::String(
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .to_string(),
    )
}

fn project(
    id: &str,
    obj: &Map<String, Value>,
    select: Option<&str>,
    default: &[&str],
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("id".into(), Value::String(id.to_string()));
    let keys: Vec<&str> = match select {
        Some(s) => s
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect(),
        None => default.to_vec(),
    };
    for k in keys {
        if k == "id" {
            continue;
        }
        out.insert(k.to_string(), obj.get(k).cloned().unwrap_or(Value::Null));
    }
    out
}

fn valid_nickname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
}

impl Fake {
    fn refill(&mut self) {
        let now = Instant::now();
        let rate = self.opts.writes_per_window as f64 / self.opts.window.as_secs_f64();
        let cap = self.opts.writes_per_window as f64;
        self.bucket =
            (self.bucket + now.duration_since(self.refilled).as_secs_f64() * rate).min(cap);
        self.refilled = now;
    }

    /// Take one identity write from the bucket, or the Retry-After to wait.
    fn take_write(&mut self) -> Result<(), Duration> {
        self.refill();
        if self.bucket >= 1.0 {
            self.bucket -= 1.0;
            return Ok(());
        }
        let rate = self.opts.writes_per_window as f64 / self.opts.window.as_secs_f64();
        let secs = ((1.0 - self.bucket) / rate).ceil().max(1.0);
        Err(Duration::from_secs(secs as u64))
    }

    fn throttle_answer(&mut self, seq: u64, retry_after: Duration) -> Ans {
        self.throttled.push(Throttle {
            at: Instant::now(),
            http_seq: seq,
            retry_after,
        });
        Ans::error(
            429,
            "TooManyRequests",
            "Too many requests. Please retry after the time in the Retry-After header.",
        )
        .with_header("Retry-After", retry_after.as_secs().to_string())
    }

    fn fault_answer(&mut self, seq: u64, f: &Fault) -> Ans {
        if f.status == 429 {
            let ra = Duration::from_secs(f.retry_after.unwrap_or(1));
            return self.throttle_answer(seq, ra);
        }
        let code = match f.status {
            400 => "Request_BadRequest",
            401 => "InvalidAuthenticationToken",
            403 => "Authorization_RequestDenied",
            404 => "Request_ResourceNotFound",
            503 => "ServiceNotAvailable",
            504 => "GatewayTimeout",
            _ => "InternalServerError",
        };
        let mut a = Ans::error(f.status, code, &format!("injected failure {}", f.status));
        if let Some(r) = f.retry_after {
            a = a.with_header("Retry-After", r.to_string());
        }
        a
    }

    /// The first armed fault of `scope` matching `text`, consumed once.
    fn take_fault(&mut self, scope: FaultScope, text: &str) -> Option<Fault> {
        let i = self.faults.iter().position(|f| {
            f.scope == scope
                && f.times > 0
                && f.matching
                    .as_ref()
                    .is_none_or(|m| text.contains(m.as_str()))
        })?;
        self.faults[i].times -= 1;
        let f = self.faults[i].clone();
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(f)
    }

    fn check_token(&mut self, headers: &HeaderMap) -> Result<(), Ans> {
        let deny = |m: &str| Ans::error(401, "InvalidAuthenticationToken", m);
        let Some(tok) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err(deny("Access token is empty."));
        };
        if self.reject_all_tokens {
            return Err(deny("Access token validation failure. Invalid audience."));
        }
        match self.tokens.get(tok) {
            None => Err(deny("Access token validation failure.")),
            Some(t) if t.revoked => Err(deny("Access token has been revoked.")),
            Some(t) if t.expires <= Instant::now() => {
                Err(deny("Lifetime validation failed, the token is expired."))
            }
            Some(_) => Ok(()),
        }
    }

    fn token_endpoint(&mut self, tenant: &str, body: &[u8]) -> Ans {
        self.token_requests += 1;
        let form = parse_query(&String::from_utf8_lossy(body));
        let err = |status: u16, e: &str, d: &str| {
            Ans::new(status, json!({"error": e, "error_description": d}))
        };
        if tenant != TENANT {
            return err(400, "invalid_request", "AADSTS90002: Tenant not found.");
        }
        if q(&form, "grant_type") != Some("client_credentials") {
            return err(
                400,
                "unsupported_grant_type",
                "AADSTS70003: unsupported grant type",
            );
        }
        if q(&form, "client_id") != Some(CLIENT_ID) {
            return err(
                400,
                "unauthorized_client",
                "AADSTS700016: Application not found.",
            );
        }
        if q(&form, "client_secret") != Some(CLIENT_SECRET) {
            return err(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            );
        }
        if q(&form, "scope") != Some(SCOPE) {
            return err(
                400,
                "invalid_scope",
                "AADSTS1002012: The provided value for scope is not valid.",
            );
        }
        let token = format!("fake.{}", uuid::Uuid::new_v4().simple());
        let life = self.opts.token_lifetime;
        self.tokens.insert(
            token.clone(),
            Tok {
                expires: Instant::now() + life,
                revoked: false,
            },
        );
        Ans::new(
            200,
            json!({"token_type": "Bearer", "expires_in": life.as_secs(),
                   "ext_expires_in": life.as_secs(), "access_token": token}),
        )
    }

    /// One Graph request: `url` is relative to `/v1.0` (with or without a leading `/`).
    fn call(
        &mut self,
        seq: u64,
        in_batch: bool,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Ans {
        let url = format!("/{}", url.trim_start_matches('/'));
        let body_text = body.as_ref().map(Value::to_string).unwrap_or_default();
        let is_write = method != "GET";
        let ans = if let Some(f) =
            self.take_fault(FaultScope::Request, &format!("{method} {url} {body_text}"))
        {
            self.fault_answer(seq, &f)
        } else if is_write {
            match self.take_write() {
                Ok(()) => self.route(method, &url, body.as_ref()),
                Err(ra) => self.throttle_answer(seq, ra),
            }
        } else {
            self.route(method, &url, body.as_ref())
        };
        self.log.push(Logged {
            at: Instant::now(),
            http_seq: seq,
            in_batch,
            method: method.to_string(),
            url,
            body: body.unwrap_or(Value::Null),
            status: ans.status,
        });
        ans
    }

    fn route(&mut self, method: &str, url: &str, body: Option<&Value>) -> Ans {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let query = parse_query(query);
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(pct_decode)
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let obj = || match body {
            Some(Value::Object(o)) => Ok(o.clone()),
            _ => Err(Ans::bad("The request body must be a JSON object.")),
        };
        let r = match (method, segs.as_slice()) {
            ("GET", ["users"]) => Ok(self.list_users(&query)),
            ("POST", ["users"]) => obj().map(|o| self.create_user(o)),
            ("GET", ["users", id]) => Ok(match self.users.get(*id) {
                Some(u) => Ans::new(200, Value::Object(self.user_view(id, u, &query))),
                None => Ans::not_found(id),
            }),
            ("GET", ["users", id, "manager"]) => Ok(self.get_manager(id, &query)),
            ("PUT", ["users", id, "manager", "$ref"]) => obj().map(|o| self.set_manager(id, &o)),
            ("DELETE", ["users", id, "manager", "$ref"]) => Ok(self.remove_manager(id)),
            ("PATCH", ["users", id]) => obj().map(|o| self.patch_user(id, o)),
            ("DELETE", ["users", id]) => Ok(self.delete(id, true)),
            ("GET", ["groups"]) => Ok(self.list_groups(&query)),
            ("POST", ["groups"]) => obj().map(|o| self.create_group(o)),
            ("GET", ["groups", id]) => Ok(match self.groups.get(*id) {
                Some(g) => Ans::new(200, Value::Object(self.group_view(id, g, &query))),
                None => Ans::not_found(id),
            }),
            ("PATCH", ["groups", id]) => obj().map(|o| self.patch_group(id, o)),
            ("DELETE", ["groups", id]) => Ok(self.delete(id, false)),
            ("GET", ["groups", id, "members"]) => Ok(self.list_members(id, &query)),
            ("POST", ["groups", id, "members", "$ref"]) => obj().map(|o| self.add_member(id, &o)),
            ("DELETE", ["groups", id, "members", m, "$ref"]) => Ok(self.remove_member(id, m)),
            (_, ["users" | "groups", ..]) => {
                Ok(Ans::error(405, "Request_BadRequest", "Method not allowed."))
            }
            _ => Ok(Ans::error(
                400,
                "BadRequest",
                &format!(
                    "Resource not found for the segment '{}'.",
                    segs.first().unwrap_or(&"")
                ),
            )),
        };
        r.unwrap_or_else(|a| a)
    }

    /// A page of `items` (already filtered and projected) with a nextLink.
    fn page(&self, coll: &str, query: &[(String, String)], items: Vec<Value>, max: usize) -> Ans {
        let top = q(query, "$top")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(max);
        let size = top.clamp(1, max);
        let skip = q(query, "$skiptoken")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(0);
        let total = items.len();
        let value: Vec<Value> = items.into_iter().skip(skip).take(size).collect();
        let mut out = json!({
            "@odata.context": format!("{}/$metadata#{coll}", self.base),
            "value": value,
        });
        if skip + size < total {
            let mut params: Vec<String> = query
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("$skiptoken"))
                .map(|(k, v)| format!("{}={}", pct_encode(k), pct_encode(v)))
                .collect();
            params.push(format!("$skiptoken={}", skip + size));
            out["@odata.nextLink"] =
                Value::String(format!("{}/{coll}?{}", self.base, params.join("&")));
        }
        Ans::new(200, out)
    }

    fn filter_of(query: &[(String, String)]) -> Result<Option<Vec<(String, String)>>, Ans> {
        match q(query, "$filter") {
            None => Ok(None),
            Some(f) => parse_filter(f).map(Some).ok_or_else(|| {
                Ans::error(400, "Request_UnsupportedQuery", "Invalid filter clause")
            }),
        }
    }

    fn list_users(&self, query: &[(String, String)]) -> Ans {
        let filter = match Self::filter_of(query) {
            Ok(f) => f,
            Err(a) => return a,
        };
        let items = self
            .users
            .iter()
            .filter(|(id, u)| filter.as_ref().is_none_or(|f| matches_filter(u, id, f)))
            .map(|(id, u)| Value::Object(self.user_view(id, u, query)))
            .collect();
        self.page("users", query, items, self.opts.page_size)
    }

    /// A user as a read shows it: `$select`ed, with its manager under `$expand=manager`.
    fn user_view(
        &self,
        id: &str,
        u: &Map<String, Value>,
        query: &[(String, String)],
    ) -> Map<String, Value> {
        let mut v = project(id, u, q(query, "$select"), USER_DEFAULT);
        if q(query, "$expand").is_some_and(|e| e == "manager" || e.starts_with("manager(")) {
            if let Some(m) = self.managers.get(id) {
                v.insert(
                    "manager".into(),
                    json!({"@odata.type": "#microsoft.graph.user", "id": m}),
                );
            }
        }
        v
    }

    fn get_manager(&self, id: &str, query: &[(String, String)]) -> Ans {
        if !self.users.contains_key(id) {
            return Ans::not_found(id);
        }
        match self
            .managers
            .get(id)
            .and_then(|m| Some((m, self.users.get(m)?)))
        {
            Some((m, u)) => {
                let mut v = project(m, u, q(query, "$select"), USER_DEFAULT);
                v.insert(
                    "@odata.type".into(),
                    Value::String("#microsoft.graph.user".into()),
                );
                Ans::new(200, Value::Object(v))
            }
            None => Self::no_manager(),
        }
    }

    fn no_manager() -> Ans {
        Ans::error(
            404,
            "Request_ResourceNotFound",
            "Resource 'manager' does not exist or one of its queried reference-property objects are not present.",
        )
    }

    fn set_manager(&mut self, id: &str, o: &Map<String, Value>) -> Ans {
        let Some(mid) = o
            .get("@odata.id")
            .and_then(Value::as_str)
            .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
            .map(pct_decode)
        else {
            return Ans::bad("Invalid object identifier: the body needs '@odata.id'.");
        };
        if !self.users.contains_key(id) {
            return Ans::not_found(id);
        }
        if !self.users.contains_key(&mid) {
            return Ans::not_found(&mid);
        }
        self.managers.insert(id.to_string(), mid);
        Ans::empty(204)
    }

    fn remove_manager(&mut self, id: &str) -> Ans {
        if !self.users.contains_key(id) {
            return Ans::not_found(id);
        }
        match self.managers.remove(id) {
            Some(_) => Ans::empty(204),
            None => Self::no_manager(),
        }
    }

    fn group_view(&self, id: &str, g: &GroupRec, query: &[(String, String)]) -> Map<String, Value> {
        let mut v = project(id, &g.props, q(query, "$select"), GROUP_DEFAULT);
        if q(query, "$expand").is_some_and(|e| e == "members" || e.starts_with("members(")) {
            let ms: Vec<Value> = g
                .members
                .iter()
                .take(EXPAND_LIMIT)
                .map(|m| json!({"@odata.type": self.type_of(m), "id": m}))
                .collect();
            v.insert("members".into(), Value::Array(ms));
        }
        v
    }

    fn type_of(&self, id: &str) -> &'static str {
        if self.users.contains_key(id) {
            "#microsoft.graph.user"
        } else {
            "#microsoft.graph.group"
        }
    }

    fn list_groups(&self, query: &[(String, String)]) -> Ans {
        let filter = match Self::filter_of(query) {
            Ok(f) => f,
            Err(a) => return a,
        };
        let items = self
            .groups
            .iter()
            .filter(|(id, g)| {
                filter
                    .as_ref()
                    .is_none_or(|f| matches_filter(&g.props, id, f))
            })
            .map(|(id, g)| Value::Object(self.group_view(id, g, query)))
            .collect();
        let max = if q(query, "$expand").is_some() {
            self.opts.page_size.min(100)
        } else {
            self.opts.page_size
        };
        self.page("groups", query, items, max)
    }

    fn list_members(&self, id: &str, query: &[(String, String)]) -> Ans {
        let Some(g) = self.groups.get(id) else {
            return Ans::not_found(id);
        };
        let items = g
            .members
            .iter()
            .map(|m| json!({"@odata.type": self.type_of(m), "id": m}))
            .collect();
        self.page(
            &format!("groups/{id}/members"),
            query,
            items,
            self.opts.page_size,
        )
    }

    /// Checks shared by create and update: known properties, unique values.
    fn check_user(&self, id: Option<&str>, o: &Map<String, Value>) -> Result<(), Ans> {
        for k in o.keys() {
            if !known_prop(USER_PROPS, k) {
                return Err(Ans::bad(&format!(
                    "Property '{k}' does not exist as a declared property or extension property."
                )));
            }
        }
        for prop in ["userPrincipalName", "onPremisesImmutableId"] {
            let Some(v) = o.get(prop).and_then(Value::as_str) else {
                continue;
            };
            let dup = self.users.iter().any(|(uid, u)| {
                Some(uid.as_str()) != id
                    && u.get(prop)
                        .and_then(Value::as_str)
                        .is_some_and(|x| x.eq_ignore_ascii_case(v))
            });
            if dup {
                return Err(Ans::bad(&format!(
                    "Another object with the same value for property {prop} already exists."
                )));
            }
        }
        if let Some(upn) = o.get("userPrincipalName") {
            if !upn
                .as_str()
                .is_some_and(|s| s.contains('@') && !s.starts_with('@'))
            {
                return Err(Ans::bad("Property userPrincipalName is invalid."));
            }
        }
        if let Some(n) = o.get("mailNickname") {
            if !n.as_str().is_some_and(valid_nickname) {
                return Err(Ans::bad(
                    "Invalid value specified for property 'mailNickname' of resource 'User'.",
                ));
            }
        }
        Ok(())
    }

    fn create_user(&mut self, mut o: Map<String, Value>) -> Ans {
        for req in ["displayName", "mailNickname", "userPrincipalName"] {
            if !o.get(req).is_some_and(Value::is_string) {
                return Ans::bad(&format!(
                    "Invalid value specified for property '{req}' of resource 'User'."
                ));
            }
        }
        if !o.get("accountEnabled").is_some_and(Value::is_boolean) {
            return Ans::bad("Property 'accountEnabled' is required.");
        }
        if !o
            .get("passwordProfile")
            .and_then(|p| p.get("password"))
            .is_some_and(Value::is_string)
        {
            return Ans::bad("Property 'passwordProfile' is required.");
        }
        if let Err(a) = self.check_user(None, &o) {
            return a;
        }
        o.remove("passwordProfile");
        o.retain(|_, v| !v.is_null());
        o.insert("createdDateTime".into(), created_now());
        let id = uuid::Uuid::new_v4().to_string();
        self.users.insert(id.clone(), o.clone());
        let mut out = o;
        out.insert(
            "@odata.context".into(),
            Value::String(format!("{}/$metadata#users/$entity", self.base)),
        );
        out.insert("id".into(), Value::String(id));
        Ans::new(201, Value::Object(out))
    }

    fn patch_user(&mut self, id: &str, o: Map<String, Value>) -> Ans {
        if !self.users.contains_key(id) {
            return Ans::not_found(id);
        }
        if let Err(a) = self.check_user(Some(id), &o) {
            return a;
        }
        if let Some(u) = self.users.get_mut(id) {
            for (k, v) in o {
                if k == "passwordProfile" {
                    continue;
                }
                if v.is_null() {
                    u.remove(&k);
                } else {
                    u.insert(k, v);
                }
            }
        }
        Ans::empty(204)
    }

    fn check_group(o: &Map<String, Value>) -> Result<(), Ans> {
        for k in o.keys() {
            if !known_prop(GROUP_PROPS, k) {
                return Err(Ans::bad(&format!(
                    "Property '{k}' does not exist as a declared property or extension property."
                )));
            }
        }
        if let Some(n) = o.get("mailNickname") {
            if !n.as_str().is_some_and(valid_nickname) {
                return Err(Ans::bad(
                    "Invalid value specified for property 'mailNickname' of resource 'Group'.",
                ));
            }
        }
        Ok(())
    }

    fn create_group(&mut self, mut o: Map<String, Value>) -> Ans {
        if !o.get("displayName").is_some_and(Value::is_string)
            || !o.get("mailNickname").is_some_and(Value::is_string)
        {
            return Ans::bad("Invalid value specified for property 'displayName' or 'mailNickname' of resource 'Group'.");
        }
        if !o.get("mailEnabled").is_some_and(Value::is_boolean)
            || !o.get("securityEnabled").is_some_and(Value::is_boolean)
        {
            return Ans::bad("Properties 'mailEnabled' and 'securityEnabled' are required.");
        }
        if let Err(a) = Self::check_group(&o) {
            return a;
        }
        o.retain(|_, v| !v.is_null());
        o.insert("createdDateTime".into(), created_now());
        let id = uuid::Uuid::new_v4().to_string();
        self.groups.insert(
            id.clone(),
            GroupRec {
                props: o.clone(),
                members: BTreeSet::new(),
            },
        );
        let mut out = o;
        out.insert(
            "@odata.context".into(),
            Value::String(format!("{}/$metadata#groups/$entity", self.base)),
        );
        out.insert("id".into(), Value::String(id));
        Ans::new(201, Value::Object(out))
    }

    fn patch_group(&mut self, id: &str, o: Map<String, Value>) -> Ans {
        if let Err(a) = Self::check_group(&o) {
            return a;
        }
        let Some(g) = self.groups.get_mut(id) else {
            return Ans::not_found(id);
        };
        for (k, v) in o {
            if v.is_null() {
                g.props.remove(&k);
            } else {
                g.props.insert(k, v);
            }
        }
        Ans::empty(204)
    }

    fn delete(&mut self, id: &str, user: bool) -> Ans {
        let gone = if user {
            self.users.remove(id).is_some()
        } else {
            self.groups.remove(id).is_some()
        };
        if !gone {
            return Ans::not_found(id);
        }
        for g in self.groups.values_mut() {
            g.members.remove(id);
        }
        self.managers.remove(id);
        self.managers.retain(|_, m| m != id);
        Ans::empty(204)
    }

    fn add_member(&mut self, gid: &str, o: &Map<String, Value>) -> Ans {
        let Some(mid) = o
            .get("@odata.id")
            .and_then(Value::as_str)
            .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
            .map(pct_decode)
        else {
            return Ans::bad("Invalid object identifier: the body needs '@odata.id'.");
        };
        if !self.users.contains_key(&mid) && !self.groups.contains_key(&mid) {
            return Ans::not_found(&mid);
        }
        let Some(g) = self.groups.get_mut(gid) else {
            return Ans::not_found(gid);
        };
        if !g.members.insert(mid) {
            return Ans::bad(
                "One or more added object references already exist for the following modified properties: 'members'.",
            );
        }
        Ans::empty(204)
    }

    fn remove_member(&mut self, gid: &str, mid: &str) -> Ans {
        let Some(g) = self.groups.get_mut(gid) else {
            return Ans::not_found(gid);
        };
        if !g.members.remove(mid) {
            return Ans::not_found(mid);
        }
        Ans::empty(204)
    }

    fn batch(&mut self, seq: u64, body: &[u8]) -> Ans {
        let parsed: Option<Vec<Value>> = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("requests").and_then(Value::as_array).cloned());
        let Some(reqs) = parsed else {
            return Ans::error(400, "BadRequest", "Invalid batch payload format.");
        };
        let size = reqs.len();
        let log = |s: &mut Fake, status: u16| {
            s.batches.push(BatchLog {
                at: Instant::now(),
                http_seq: seq,
                size,
                status,
            })
        };
        if size == 0 || size > MAX_BATCH {
            log(self, 400);
            return Ans::error(
                400,
                "BadRequest",
                "Invalid batch payload format: the number of requests must be between 1 and 20.",
            );
        }
        let mut ids = BTreeSet::new();
        for r in &reqs {
            let ok = r
                .get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| ids.insert(id.to_string()))
                && r.get("method").and_then(Value::as_str).is_some()
                && r.get("url").and_then(Value::as_str).is_some();
            if !ok {
                log(self, 400);
                return Ans::error(
                    400,
                    "BadRequest",
                    "Each request needs a unique id, a method and a url.",
                );
            }
        }
        log(self, 200);
        let mut status_of: HashMap<String, u16> = HashMap::new();
        let mut responses = Vec::new();
        for r in reqs {
            let id = r
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let method = r
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_uppercase();
            let url = r
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let deps: Vec<String> = match r.get("dependsOn") {
                Some(Value::Array(d)) => d
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            };
            let unknown_dep = deps.iter().any(|d| !status_of.contains_key(d));
            let failed_dep = deps
                .iter()
                .any(|d| status_of.get(d).is_some_and(|s| !(200..300).contains(s)));
            let ans = if unknown_dep {
                Ans::error(
                    400,
                    "BadRequest",
                    "dependsOn names a request that is not before this one.",
                )
            } else if failed_dep {
                Ans::error(
                    424,
                    "FailedDependency",
                    "A request this one depends on failed.",
                )
            } else {
                self.call(seq, true, &method, &url, r.get("body").cloned())
            };
            status_of.insert(id.clone(), ans.status);
            let mut headers = Map::new();
            for (k, v) in &ans.headers {
                headers.insert(k.clone(), Value::String(v.clone()));
            }
            if ans.body.is_some() {
                headers.insert(
                    "Content-Type".into(),
                    Value::String("application/json".into()),
                );
            }
            let mut resp = json!({"id": id, "status": ans.status, "headers": headers});
            if let Some(b) = ans.body {
                resp["body"] = b;
            }
            responses.push(resp);
        }
        responses.reverse();
        Ans::new(200, json!({ "responses": responses }))
    }
}

type Shared = Arc<Mutex<Fake>>;

fn lock(s: &Shared) -> MutexGuard<'_, Fake> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_response(a: Ans) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match a.body {
        Some(b) => (status, axum::Json(b)).into_response(),
        None => status.into_response(),
    };
    for (k, v) in a.headers {
        if let (Ok(name), Ok(val)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().insert(name, val);
        }
    }
    resp
}

async fn handle(
    State(st): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let mut s = lock(&st);
    // The token endpoint: /{tenant}/oauth2/v2.0/token
    if let Some(tenant) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
    {
        if method != Method::POST {
            return to_response(Ans::error(405, "invalid_request", "POST only"));
        }
        let tenant = tenant.to_string();
        if let Some(f) = s.take_fault(FaultScope::Token, "") {
            s.token_requests += 1;
            return to_response(Ans::new(
                f.status,
                json!({"error": "temporarily_unavailable",
                       "error_description": "AADSTS90033: A transient error has occurred."}),
            ));
        }
        return to_response(s.token_endpoint(&tenant, &body));
    }
    let Some(rest) = path.strip_prefix("/v1.0") else {
        return to_response(Ans::error(404, "NotFound", "not a Graph path"));
    };
    s.http_seq += 1;
    let seq = s.http_seq;
    s.arrivals.push(Arrival {
        at: Instant::now(),
        http_seq: seq,
        method: method.to_string(),
        path: path.clone(),
    });
    let body_text = String::from_utf8_lossy(&body).into_owned();
    if let Some(f) = s.take_fault(FaultScope::Http, &format!("{method} {path} {body_text}")) {
        return to_response(s.fault_answer(seq, &f));
    }
    if let Err(a) = s.check_token(&headers) {
        s.unauthorized += 1;
        return to_response(a);
    }
    if rest == "/$batch" && method == Method::POST {
        return to_response(s.batch(seq, &body));
    }
    let url = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let json_body = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(_) => {
                return to_response(Ans::error(
                    400,
                    "BadRequest",
                    "Unable to read JSON request payload.",
                ))
            }
        }
    };
    to_response(s.call(seq, false, method.as_str(), &url, json_body))
}

/// The fake Graph server of a test. Dropping it stops the server.
pub struct GraphFake {
    addr: SocketAddr,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GraphFake {
    /// A fake with Graph's documented limits.
    pub fn start() -> GraphFake {
        GraphFake::start_with(GraphFakeOptions::default())
    }

    pub fn start_with(opts: GraphFakeOptions) -> GraphFake {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let state: Shared = Arc::new(Mutex::new(Fake {
            bucket: opts.writes_per_window as f64,
            opts,
            base: format!("http://{addr}/v1.0"),
            users: BTreeMap::new(),
            managers: BTreeMap::new(),
            groups: BTreeMap::new(),
            tokens: HashMap::new(),
            reject_all_tokens: false,
            token_requests: 0,
            unauthorized: 0,
            refilled: Instant::now(),
            faults: Vec::new(),
            http_seq: 0,
            arrivals: Vec::new(),
            log: Vec::new(),
            batches: Vec::new(),
            throttled: Vec::new(),
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let thread = std::thread::Builder::new()
            .name(format!("graph-fake-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await
                        .expect("fake Graph server");
                });
            })
            .expect("spawn the fake Graph thread");
        GraphFake {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn s(&self) -> MutexGuard<'_, Fake> {
        lock(&self.state)
    }

    /// `http://127.0.0.1:P/v1.0`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }
    pub fn token_url(&self) -> String {
        format!("http://{}/{TENANT}/oauth2/v2.0/token", self.addr)
    }
    pub fn tenant_id(&self) -> &'static str {
        TENANT
    }
    pub fn client_id(&self) -> &'static str {
        CLIENT_ID
    }
    pub fn client_secret(&self) -> &'static str {
        CLIENT_SECRET
    }
    /// The attribute the Graph target keeps group anchors in, for this fake's app.
    pub fn anchor_attr(&self) -> String {
        format!("extension_{}_dirsyncAnchor", CLIENT_ID.replace('-', ""))
    }

    /// Every user: stored properties and `id`.
    pub fn users(&self) -> Vec<Value> {
        self.s()
            .users
            .iter()
            .map(|(id, u)| {
                let mut o = u.clone();
                o.insert("id".into(), Value::String(id.clone()));
                Value::Object(o)
            })
            .collect()
    }
    pub fn user_by_upn(&self, upn: &str) -> Option<Value> {
        self.users().into_iter().find(|u| {
            u["userPrincipalName"]
                .as_str()
                .is_some_and(|x| x.eq_ignore_ascii_case(upn))
        })
    }
    /// The id of the user's manager, if it has one.
    pub fn manager_of(&self, id: &str) -> Option<String> {
        self.s().managers.get(id).cloned()
    }
    /// Every group: stored properties, `id`, and `members` (ids).
    pub fn groups(&self) -> Vec<Value> {
        self.s()
            .groups
            .iter()
            .map(|(id, g)| {
                let mut o = g.props.clone();
                o.insert("id".into(), Value::String(id.clone()));
                o.insert(
                    "members".into(),
                    json!(g.members.iter().collect::<Vec<_>>()),
                );
                Value::Object(o)
            })
            .collect()
    }
    pub fn group_by_name(&self, name: &str) -> Option<Value> {
        self.groups().into_iter().find(|g| g["displayName"] == name)
    }

    /// Put a user in directly (an out-of-band change: no token, no throttling, no log).
    /// Returns its id.
    pub fn add_user(&self, props: Value) -> String {
        let Value::Object(o) = props else {
            panic!("add_user wants an object");
        };
        let id = uuid::Uuid::new_v4().to_string();
        self.s().users.insert(id.clone(), o);
        id
    }
    /// Put a group in directly. Returns its id.
    pub fn add_group(&self, props: Value, members: &[&str]) -> String {
        let Value::Object(o) = props else {
            panic!("add_group wants an object");
        };
        let id = uuid::Uuid::new_v4().to_string();
        self.s().groups.insert(
            id.clone(),
            GroupRec {
                props: o,
                members: members.iter().map(|m| m.to_string()).collect(),
            },
        );
        id
    }
    /// Remove a user directly (out of band); group memberships of it stay, as in scim2-server.
    pub fn remove_user(&self, id: &str) {
        self.s().users.remove(id);
    }
    /// Remove a group directly (out of band).
    pub fn remove_group(&self, id: &str) {
        self.s().groups.remove(id);
    }
    /// Change a user directly (out of band).
    pub fn set_user_attr(&self, id: &str, key: &str, value: Value) {
        if let Some(u) = self.s().users.get_mut(id) {
            u.insert(key.to_string(), value);
        }
    }

    /// Token requests the token endpoint answered (good or bad).
    pub fn token_requests(&self) -> u32 {
        self.s().token_requests
    }
    /// 401s answered for bad, expired or revoked tokens.
    pub fn unauthorized(&self) -> u32 {
        self.s().unauthorized
    }
    /// Every token issued so far answers 401 from now on (new ones work).
    pub fn revoke_tokens(&self) {
        for t in self.s().tokens.values_mut() {
            t.revoked = true;
        }
    }
    /// Every token, old or new, answers 401 (e.g. the app's consent was withdrawn).
    pub fn reject_all_tokens(&self, on: bool) {
        self.s().reject_all_tokens = on;
    }
    pub fn inject(&self, f: Fault) {
        self.s().faults.push(f);
    }

    /// Every Graph request answered, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.s().log.clone()
    }
    /// Write requests that reached the API (whatever their answer).
    pub fn write_attempts(&self) -> usize {
        self.s().log.iter().filter(|l| l.is_write()).count()
    }
    /// Write requests that succeeded.
    pub fn writes(&self) -> usize {
        self.s()
            .log
            .iter()
            .filter(|l| l.is_write() && (200..300).contains(&l.status))
            .count()
    }
    pub fn batches(&self) -> Vec<BatchLog> {
        self.s().batches.clone()
    }
    pub fn max_batch(&self) -> usize {
        self.s().batches.iter().map(|b| b.size).max().unwrap_or(0)
    }
    /// Every 429 sent.
    pub fn throttled(&self) -> Vec<Throttle> {
        self.s().throttled.clone()
    }
    /// Every HTTP request that reached `/v1.0`.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.s().arrivals.clone()
    }
}

impl Drop for GraphFake {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter("a eq 'x' or b eq 'it''s'"),
            Some(vec![("a".into(), "x".into()), ("b".into(), "it's".into())])
        );
        assert_eq!(parse_filter("a eq 'x' and b eq 'y'"), None);
        assert_eq!(parse_filter("startswith(a,'x')"), None);
        assert_eq!(parse_filter("a eq 'x"), None);
    }
}

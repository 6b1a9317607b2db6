//! The LDAP reader for everything dirsync reads from a source server: binds, paged
//! searches (full imports), RFC 4533 refreshes, DirSync rounds and base lookups.
//!
//! It owns its socket: it reads into one buffer, walks each complete message in place
//! with [`ber`], and builds borrowed [`EntryRef`]s directly. (ldap3 decoded every message
//! into a tree of `StructureTag`s on a task of its own: several allocations per value and a
//! wake-up of another thread per entry, and on a hostile server a stack overflow on deep
//! nesting, unbounded buffering and panics.) It speaks what the sources need: simple bind,
//! StartTLS, SearchRequest with controls, pipelined base searches, unbind.
//!
//! Nothing the server sends is trusted. A malformed message, a response to another
//! request, a message larger than `[source] max_message_bytes`, more items in one search
//! than `max_entries`, a repeated or endless paging cookie: each is an error naming the
//! server, never a panic. Every decoder here reads one fixed shape of the protocol without
//! recursion, so nesting costs nothing: an element nested where the shape has none is an
//! error. Every read waits at most the connection's idle timeout, the operation's deadline
//! (`operation_timeout`) and the import's (`import_timeout`, through
//! [`ConnectOptions::deadline`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::controls::RawControl;
use ldap3::Scope;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ldap::ber::{self, BOOLEAN, ENUMERATED, INTEGER, OCTET_STRING, SEQUENCE, SET};
use super::ldap::{
    shown, AttrRef, ConnectOptions, EntryRef, LdapFailure, RawResponseControl, SearchOutcome,
};
use super::result;
use crate::config::{SourceConfig, SourceLimits, Tls};
use crate::error::{Error, Result};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 << 10;
/// Pages in a row that bring nothing but a new cookie before a paged search is called
/// endless.
const MAX_EMPTY_PAGES: u32 = 100;

/// Protocol op tags (RFC 4511, `[APPLICATION n]`).
mod op {
    pub const BIND_REQUEST: u8 = 0x60;
    pub const BIND_RESPONSE: u8 = 0x61;
    pub const UNBIND_REQUEST: u8 = 0x42;
    pub const SEARCH_REQUEST: u8 = 0x63;
    pub const SEARCH_ENTRY: u8 = 0x64;
    pub const SEARCH_DONE: u8 = 0x65;
    pub const SEARCH_REFERENCE: u8 = 0x73;
    pub const EXTENDED_REQUEST: u8 = 0x77;
    pub const EXTENDED_RESPONSE: u8 = 0x78;
    pub const INTERMEDIATE: u8 = 0x79;
    /// `controls [0] Controls` after the protocol op.
    pub const CONTROLS: u8 = 0xa0;
}

const STARTTLS_OID: &str = "1.3.6.1.4.1.1466.20037";

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A bound connection.
pub(crate) struct Wire {
    io: Io,
    /// Bytes read and not yet consumed are `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    next_id: i32,
    /// Longest wait for the server's next bytes.
    timeout: Duration,
    limits: SourceLimits,
    /// The import's deadline, if the caller set one.
    import_deadline: Option<Instant>,
    /// When the current operation must be done.
    op_deadline: Instant,
    url: String,
}

/// One decoded response message, borrowing the read buffer.
struct Message<'a> {
    id: i64,
    op: u8,
    body: &'a [u8],
    controls: &'a [u8],
}

/// One response of a search before its result, borrowing the read buffer.
pub(crate) enum Item<'e, 'a> {
    /// A SearchResultEntry and its raw controls (see [`decode_controls`]).
    Entry {
        entry: &'e EntryRef<'a>,
        controls: &'a [u8],
    },
    /// An IntermediateResponse: responseName, responseValue, raw controls.
    Intermediate {
        name: Option<&'a str>,
        value: Option<&'a [u8]>,
        controls: &'a [u8],
    },
    /// A search result reference (continuation referral).
    Referral,
}

/// The SearchResultDone of a search.
pub(crate) struct Done {
    pub rc: u32,
    pub text: String,
    pub controls: Vec<RawResponseControl>,
}

/// What ended a wait.
enum Waited {
    Idle,
    Operation,
    Import,
}

/// How a search is asked: the request and the controls added to it.
pub(crate) struct SearchSpec<'a> {
    pub base: &'a str,
    pub scope: Scope,
    pub filter: &'a str,
    pub attrs: &'a [&'a str],
    /// 0: no limit.
    pub size_limit: i32,
}

impl Wire {
    /// Connect as the configuration says (ldap://, StartTLS, ldaps://) and bind.
    pub(crate) async fn connect(cfg: &SourceConfig, opts: &ConnectOptions) -> Result<Wire> {
        let password = cfg.password.resolve("source.password")?;
        let url = cfg.url.clone();
        let cannot = |why: String| result::cannot_connect(&url, why);
        let parsed = url::Url::parse(&url).map_err(|e| cannot(e.to_string()))?;
        let ldaps = parsed.scheme() == "ldaps";
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(cannot("no host in the URL".into())),
        };
        let port = parsed.port().unwrap_or(if ldaps { 636 } else { 389 });
        // A configured CA file must be readable even when this connection does not use TLS.
        let tls = match (&cfg.ca_file, ldaps || cfg.tls == Tls::Starttls) {
            (None, false) => None,
            (ca, _) => Some(super::ldap::client_tls(
                ca.as_deref(),
                opts.danger_skip_tls_verify,
            )?),
        };
        let now = Instant::now();
        let mut wait = opts.timeout;
        if let Some(d) = opts.deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        let tcp = match tokio::time::timeout(wait, TcpStream::connect((host.as_str(), port))).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(cannot(e.to_string())),
            Err(_) => return Err(cannot(format!("timed out after {wait:?}"))),
        };
        tcp.set_nodelay(true).map_err(|e| cannot(e.to_string()))?;
        let mut wire = Wire {
            io: Io::Plain(tcp),
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            next_id: 1,
            timeout: opts.timeout,
            limits: cfg.limits,
            import_deadline: opts.deadline,
            op_deadline: now + cfg.limits.operation_timeout,
            url: url.clone(),
        };
        if let (Some(tls), true) = (tls, ldaps || cfg.tls == Tls::Starttls) {
            if !ldaps {
                let req = ber::tlv(
                    op::EXTENDED_REQUEST,
                    &ber::tlv(0x80, STARTTLS_OID.as_bytes()),
                );
                let (rc, text) = wire.request(req, op::EXTENDED_RESPONSE).await?;
                if rc != 0 {
                    return Err(result::starttls_refused(&url, rc, &text));
                }
            }
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| cannot(format!("{host} is not a TLS server name: {e}")))?;
            let (wait, _) = wire.wait();
            let Io::Plain(tcp) = wire.io else {
                return Err(cannot("TLS started twice".into()));
            };
            let stream = tokio::time::timeout(
                wait,
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .map_err(|_| cannot(format!("TLS handshake timed out after {wait:?}")))?
            .map_err(|e| cannot(format!("TLS: {e}")))?;
            wire.io = Io::Tls(Box::new(stream));
        }
        let bind = [
            ber::integer(3),
            ber::tlv(OCTET_STRING, cfg.bind_dn.as_bytes()),
            ber::tlv(0x80, password.expose().as_bytes()),
        ]
        .concat();
        let (rc, text) = wire
            .request(ber::tlv(op::BIND_REQUEST, &bind), op::BIND_RESPONSE)
            .await?;
        if rc != 0 {
            return Err(result::bind_refused(&url, &cfg.bind_dn, rc, &text));
        }
        Ok(wire)
    }

    /// One search (no paging) with `controls`: each entry, reference and intermediate
    /// response goes to `each` as it is decoded, then the result comes back (an LDAP error
    /// result too: the caller reads `rc`).
    pub(crate) async fn search(
        &mut self,
        spec: &SearchSpec<'_>,
        controls: &[RawControl],
        each: &mut (dyn FnMut(Item<'_, '_>) -> Result<()> + Send),
    ) -> Result<Done> {
        let search = encode_search(spec)?;
        let ctrls: Vec<Vec<u8>> = controls.iter().map(encode_control).collect();
        self.begin_operation();
        let mut count = 0u64;
        self.search_once(&search, &ctrls, &mut count, each).await
    }

    /// A subtree search in pages of `page_size` (simple paged results), with `controls`
    /// added to every page. Each entry goes to `each` as soon as it is decoded, so the
    /// caller's work overlaps the server's. Referrals are skipped and counted (the
    /// outcome's `entries` stay empty); intermediate responses are ignored. An LDAP error
    /// result comes back as `Ok(Err(LdapFailure))`. Each page is one operation (its own
    /// `operation_timeout`); the pages together may bring `max_entries`, and an empty page
    /// with a cookie the server sent before, or [`MAX_EMPTY_PAGES`] empty pages in a row,
    /// end it as endless.
    pub(crate) async fn paged_search(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        controls: &[RawControl],
        page_size: i32,
        each: &mut (dyn FnMut(&EntryRef<'_>) -> Result<()> + Send),
    ) -> Result<std::result::Result<SearchOutcome, LdapFailure>> {
        let search = encode_search(&SearchSpec {
            base,
            scope: Scope::Subtree,
            filter,
            attrs,
            size_limit: 0,
        })?;
        let mut all = SearchOutcome::default();
        let mut cookie: Vec<u8> = Vec::new();
        let mut cookies_seen = CookieSet::default();
        let mut pages = 0u64;
        let mut empty_pages = 0u32;
        let mut page_size = page_size;
        let mut count = 0u64;
        // The caller's controls, then this page's paged-results control (replaced per page).
        let mut ctrls: Vec<Vec<u8>> = controls.iter().map(encode_control).collect();
        loop {
            ctrls.push(encode_control(&RawControl {
                ctype: super::ldap::PAGED_RESULTS_OID.to_string(),
                crit: false,
                val: Some(ber::paged_request(page_size, &cookie)),
            }));
            self.begin_operation();
            let before = count;
            let mut referrals = 0u64;
            let done = self
                .search_once(&search, &ctrls, &mut count, &mut |item| match item {
                    Item::Entry { entry, .. } => each(entry),
                    Item::Referral => {
                        referrals += 1;
                        Ok(())
                    }
                    Item::Intermediate { .. } => Ok(()),
                })
                .await?;
            ctrls.pop();
            all.referrals += referrals;
            let received = count - before;
            if let Some(smaller) = smaller_page(done.rc, pages, received, page_size) {
                // OpenLDAP refuses a page larger than its `size.pr` limit before sending
                // anything (adminLimitExceeded): ask again with a smaller one.
                tracing::info!(
                    "{}: the server refused pages of {page_size} entries ({}); asking for {smaller}",
                    self.url,
                    done.text
                );
                page_size = smaller;
                continue;
            }
            pages += 1;
            if done.rc != 0 {
                return Ok(Err(LdapFailure {
                    rc: done.rc,
                    text: done.text,
                }));
            }
            let resp = done
                .controls
                .iter()
                .find(|(oid, _)| oid == super::ldap::PAGED_RESULTS_OID);
            cookie = match resp {
                // A server that ignores the (non-critical) control returns everything at once.
                None => Vec::new(),
                Some((_, None)) => return Err(self.bad("paged results response without a value")),
                Some((_, Some(v))) => {
                    ber::paged_response(v).map_err(|e| self.bad(&format!("paged results: {e}")))?
                }
            };
            if cookie.is_empty() {
                all.controls = done.controls;
                break;
            }
            // A cookie sent before is a loop only when the page brought nothing: Samba's
            // cookie names the search's state on the server and stays the same on every
            // page, while the entries move on.
            if !cookies_seen.insert(&cookie) && received == 0 {
                return Err(self.misbehaved(&format!(
                    "the paged search sent a cookie again with nothing new, after {pages} \
                     pages: it would never end"
                )));
            }
            empty_pages = if received == 0 { empty_pages + 1 } else { 0 };
            if empty_pages > MAX_EMPTY_PAGES {
                return Err(self.misbehaved(&format!(
                    "the paged search sent {empty_pages} empty pages in a row: it would never end"
                )));
            }
        }
        Ok(Ok(all))
    }

    /// For each of `dns`, whether the entry there matches `filter`, or the server's result
    /// when it is not success. Base searches for `1.1`, up to `window` of them in flight at
    /// once (pipelined on this connection), answered in any order.
    pub(crate) async fn base_matches(
        &mut self,
        dns: &[&str],
        filter: &str,
        window: usize,
    ) -> Result<Vec<std::result::Result<bool, LdapFailure>>> {
        let filter_ber = encode_filter(filter)
            .map_err(|why| Error::Source(format!("search filter {filter}: {why}")))?;
        let mut results: Vec<Option<std::result::Result<bool, LdapFailure>>> =
            vec![None; dns.len()];
        let mut matched = vec![false; dns.len()];
        // Message ID -> index in `dns`.
        let mut in_flight: HashMap<i64, usize> = HashMap::new();
        let mut next = 0usize;
        let mut count = 0u64;
        self.begin_operation();
        while next < dns.len() || !in_flight.is_empty() {
            while next < dns.len() && in_flight.len() < window.max(1) {
                let search = encode_search_with(dns[next], Scope::Base, &filter_ber, &["1.1"], 0);
                let id = self.send(&search, &[]).await?;
                in_flight.insert(id, next);
                next += 1;
            }
            let m = self.next().await?;
            let msg =
                parse_message(&self.buf[self.pos..self.pos + m]).map_err(|why| self.bad(&why))?;
            let Some(&idx) = in_flight.get(&msg.id) else {
                return Err(self.unexpected_id(&msg, "one of the lookups in flight"));
            };
            match msg.op {
                op::SEARCH_ENTRY => matched[idx] = true,
                op::SEARCH_REFERENCE | op::INTERMEDIATE => {}
                op::SEARCH_DONE => {
                    let (rc, text) = decode_result(msg.body).map_err(|why| self.bad(&why))?;
                    results[idx] = Some(if rc == 0 {
                        Ok(matched[idx])
                    } else {
                        Err(LdapFailure { rc, text })
                    });
                    in_flight.remove(&msg.id);
                    // Progress: the next lookups have an operation's time again.
                    self.begin_operation();
                }
                other => return Err(self.bad(&format!("unexpected message {other:#04x}"))),
            }
            count += 1;
            self.check_count(count)?;
            self.consume(m);
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Ok(false)))
            .collect())
    }

    /// Unbind and close. Errors are ignored: the connection is going away anyway.
    pub(crate) async fn close(mut self) {
        let _ = self.send(&ber::tlv(op::UNBIND_REQUEST, &[]), &[]).await;
        let _ = match &mut self.io {
            Io::Plain(s) => s.shutdown().await,
            Io::Tls(s) => s.shutdown().await,
        };
    }

    /// One search request and its responses, to `each`, until its result. `count` counts
    /// the responses against `max_entries`.
    async fn search_once(
        &mut self,
        search: &[u8],
        ctrls: &[Vec<u8>],
        count: &mut u64,
        each: &mut (dyn FnMut(Item<'_, '_>) -> Result<()> + Send),
    ) -> Result<Done> {
        let id = self.send(search, ctrls).await?;
        loop {
            let m = self.next().await?;
            let msg = self.decode(m, id)?;
            let done = match msg.op {
                op::SEARCH_ENTRY => {
                    let entry = decode_entry(msg.body).map_err(|why| self.bad(&why))?;
                    each(Item::Entry {
                        entry: &entry,
                        controls: msg.controls,
                    })?;
                    None
                }
                op::SEARCH_REFERENCE => {
                    each(Item::Referral)?;
                    None
                }
                op::INTERMEDIATE => {
                    let (name, value) =
                        decode_intermediate(msg.body).map_err(|why| self.bad(&why))?;
                    each(Item::Intermediate {
                        name,
                        value,
                        controls: msg.controls,
                    })?;
                    None
                }
                op::SEARCH_DONE => {
                    let (rc, text) = decode_result(msg.body).map_err(|why| self.bad(&why))?;
                    let controls = decode_controls(msg.controls).map_err(|w| self.bad(&w))?;
                    Some(Done { rc, text, controls })
                }
                other => return Err(self.bad(&format!("unexpected message {other:#04x}"))),
            };
            self.consume(m);
            if let Some(done) = done {
                return Ok(done);
            }
            *count += 1;
            self.check_count(*count)?;
        }
    }

    fn check_count(&self, count: u64) -> Result<()> {
        if count > self.limits.max_entries {
            return Err(self.misbehaved(&format!(
                "a search brought more than {} entries (source.max_entries)",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    /// The import's deadline from now on.
    pub(crate) fn set_import_deadline(&mut self, deadline: Option<Instant>) {
        self.import_deadline = deadline;
    }

    /// A new operation starts: it has `operation_timeout` from now.
    fn begin_operation(&mut self) {
        self.op_deadline = Instant::now() + self.limits.operation_timeout;
    }

    /// How long the next read or write may wait, and which limit that is.
    fn wait(&self) -> (Duration, Waited) {
        let now = Instant::now();
        let mut wait = (self.timeout, Waited::Idle);
        let op = self.op_deadline.saturating_duration_since(now);
        if op < wait.0 {
            wait = (op, Waited::Operation);
        }
        if let Some(d) = self.import_deadline {
            let left = d.saturating_duration_since(now);
            if left <= wait.0 {
                wait = (left, Waited::Import);
            }
        }
        wait
    }

    fn bad(&self, why: &str) -> Error {
        self.misbehaved(&format!("malformed response: {why}"))
    }

    fn misbehaved(&self, why: &str) -> Error {
        Error::SourceMisbehaved(format!("{}: {why}", self.url))
    }

    /// Send one request; returns its message ID.
    async fn send(&mut self, op: &[u8], controls: &[Vec<u8>]) -> Result<i64> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let mut body = [ber::integer(i64::from(id)), op.to_vec()].concat();
        if !controls.is_empty() {
            body.extend(ber::tlv(op::CONTROLS, &controls.concat()));
        }
        let msg = ber::tlv(SEQUENCE, &body);
        let (wait, why) = self.wait();
        let written = tokio::time::timeout(wait, async {
            match &mut self.io {
                Io::Plain(s) => {
                    s.write_all(&msg).await?;
                    s.flush().await
                }
                Io::Tls(s) => {
                    s.write_all(&msg).await?;
                    s.flush().await
                }
            }
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(i64::from(id)),
            Ok(Err(e)) => Err(Error::Source(format!(
                "{}: sending a request: {e}",
                self.url
            ))),
            Err(_) => Err(self.timed_out(why)),
        }
    }

    /// A request answered by one LDAPResult-shaped response with tag `want`: (rc, text).
    async fn request(&mut self, op: Vec<u8>, want: u8) -> Result<(u32, String)> {
        self.begin_operation();
        let id = self.send(&op, &[]).await?;
        let m = self.next().await?;
        let msg = self.decode(m, id)?;
        if msg.op != want {
            let why = format!("expected message {want:#04x}, got {:#04x}", msg.op);
            return Err(self.bad(&why));
        }
        let out = decode_result(msg.body).map_err(|why| self.bad(&why))?;
        self.consume(m);
        Ok(out)
    }

    fn timed_out(&self, why: Waited) -> Error {
        match why {
            Waited::Idle => Error::Source(format!(
                "{}: the server did not answer within {:?}",
                self.url, self.timeout
            )),
            // A server that keeps sending but never finishes: trying again costs as much.
            Waited::Operation => self.misbehaved(&format!(
                "an operation did not finish within {:?} (source.operation_timeout)",
                self.limits.operation_timeout
            )),
            Waited::Import => self.misbehaved(&format!(
                "the import did not finish within {:?} (source.import_timeout)",
                self.limits.import_timeout
            )),
        }
    }

    /// The length of the next complete message in the buffer, reading from the socket
    /// until it is all there.
    async fn next(&mut self) -> Result<usize> {
        loop {
            let avail = &self.buf[self.pos..];
            let need = frame_len(avail).map_err(|why| self.bad(&why))?;
            if let Some(len) = need {
                if len > self.limits.max_message_bytes {
                    return Err(self.misbehaved(&format!(
                        "a message of {len} bytes, more than {} (source.max_message_bytes)",
                        self.limits.max_message_bytes
                    )));
                }
                if avail.len() >= len {
                    return Ok(len);
                }
            }
            self.fill(need.unwrap_or(0)).await?;
        }
    }

    /// The message of `len` bytes [`Self::next`] found, which must answer request `id`: a
    /// notice of disconnection (ID 0) or a response to another request is an error.
    fn decode(&self, len: usize, id: i64) -> Result<Message<'_>> {
        let msg =
            parse_message(&self.buf[self.pos..self.pos + len]).map_err(|why| self.bad(&why))?;
        if msg.id == id {
            return Ok(msg);
        }
        Err(self.unexpected_id(&msg, &format!("request {id}")))
    }

    /// The error for `msg`, which answers none of the requests in flight (`wanted`).
    fn unexpected_id(&self, msg: &Message<'_>, wanted: &str) -> Error {
        if msg.id == 0 {
            let text = decode_result(msg.body)
                .map(|(rc, text)| format!("{} ({text})", result::result_name(rc)))
                .unwrap_or_default();
            return Error::Source(format!(
                "{}: the server ended the connection: {text}",
                self.url
            ));
        }
        self.bad(&format!("a response to request {}, not {wanted}", msg.id))
    }

    fn consume(&mut self, len: usize) {
        self.pos += len;
    }

    /// Read more bytes: at least one, and room for a message of `need` bytes.
    async fn fill(&mut self, need: usize) -> Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let room = need.max(self.buf.len() + READ_CHUNK) - self.buf.len();
        self.buf.reserve(room);
        let (wait, why) = self.wait();
        let read = tokio::time::timeout(wait, async {
            match &mut self.io {
                Io::Plain(s) => s.read_buf(&mut self.buf).await,
                Io::Tls(s) => s.read_buf(&mut self.buf).await,
            }
        })
        .await;
        match read {
            Ok(Ok(0)) => Err(Error::Source(format!(
                "{}: the server closed the connection",
                self.url
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Source(format!("{}: reading: {e}", self.url))),
            Err(_) => Err(self.timed_out(why)),
        }
    }
}

/// The cookies a search was sent, to tell an endless one: 64-bit hashes, so a long search
/// costs a few bytes per page.
#[derive(Default)]
struct CookieSet(std::collections::HashSet<u64>);

impl CookieSet {
    /// False when `cookie` was seen before.
    fn insert(&mut self, cookie: &[u8]) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        cookie.hash(&mut h);
        self.0.insert(h.finish())
    }
}

/// A SearchRequest (RFC 4511 4.5.1) for `spec`.
fn encode_search(spec: &SearchSpec<'_>) -> Result<Vec<u8>> {
    let filter = encode_filter(spec.filter)
        .map_err(|why| Error::Source(format!("search filter {}: {why}", spec.filter)))?;
    Ok(encode_search_with(
        spec.base,
        spec.scope,
        &filter,
        spec.attrs,
        spec.size_limit,
    ))
}

fn encode_search_with(
    base: &str,
    scope: Scope,
    filter_ber: &[u8],
    attrs: &[&str],
    size_limit: i32,
) -> Vec<u8> {
    let attr_list: Vec<Vec<u8>> = attrs
        .iter()
        .map(|a| ber::tlv(OCTET_STRING, a.as_bytes()))
        .collect();
    let scope = match scope {
        Scope::Base => 0,
        Scope::OneLevel => 1,
        Scope::Subtree => 2,
    };
    let search = [
        ber::tlv(OCTET_STRING, base.as_bytes()),
        ber::tlv(ENUMERATED, &[scope]),
        ber::tlv(ENUMERATED, &[0]), // neverDerefAliases
        ber::integer(i64::from(size_limit)),
        ber::integer(0),
        ber::encode_boolean(false),
        filter_ber.to_vec(),
        ber::sequence(&attr_list),
    ]
    .concat();
    ber::tlv(op::SEARCH_REQUEST, &search)
}

/// `IntermediateResponse ::= [APPLICATION 25] SEQUENCE { responseName [0] LDAPOID
/// OPTIONAL, responseValue [1] OCTET STRING OPTIONAL }`.
fn decode_intermediate(b: &[u8]) -> std::result::Result<(Option<&str>, Option<&[u8]>), String> {
    let (name, rest) = ber::optional(b, 0x80)?;
    let (value, rest) = ber::optional(rest, 0x81)?;
    if !rest.is_empty() {
        return Err("an intermediate response with an unknown element".into());
    }
    let name = name
        .map(|n| std::str::from_utf8(n).map_err(|_| "an intermediate response name is not UTF-8"))
        .transpose()?;
    Ok((name, value))
}

/// The smallest page [`Wire::paged_search`] falls back to.
const MIN_PAGE: i32 = 50;

/// The page size to ask for instead, when the first page (`pages` done before it) ended
/// with `rc` after `received` entries and references: only adminLimitExceeded with
/// nothing sent, which is how a server refuses the page size itself.
fn smaller_page(rc: u32, pages: u64, received: u64, page_size: i32) -> Option<i32> {
    const ADMIN_LIMIT_EXCEEDED: u32 = 11;
    (rc == ADMIN_LIMIT_EXCEEDED && pages == 0 && received == 0 && page_size > MIN_PAGE)
        .then(|| (page_size / 2).max(MIN_PAGE))
}

/// The total length of the LDAPMessage at the start of `b`, once its header is there.
fn frame_len(b: &[u8]) -> std::result::Result<Option<usize>, String> {
    let Some((&tag, rest)) = b.split_first() else {
        return Ok(None);
    };
    if tag != SEQUENCE {
        return Err(format!("a message starting with {tag:#04x}"));
    }
    let Some((&first, rest)) = rest.split_first() else {
        return Ok(None);
    };
    if first < 0x80 {
        return Ok(Some(2 + usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return Err("a message without a definite length".into());
    }
    if rest.len() < n {
        return Ok(None);
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |a, &b| (a << 8) | usize::from(b));
    Ok(Some(2 + n + len))
}

/// `LDAPMessage ::= SEQUENCE { messageID, protocolOp, controls [0] OPTIONAL }`.
fn parse_message(msg: &[u8]) -> std::result::Result<Message<'_>, String> {
    let (body, _) = ber::expect(msg, SEQUENCE)?;
    let (id, rest) = ber::expect(body, INTEGER)?;
    let (op, content, rest) = ber::read_tlv(rest)?;
    let (controls, _) = ber::optional(rest, op::CONTROLS)?;
    Ok(Message {
        id: ber::int(id)?,
        op,
        body: content,
        controls: controls.unwrap_or(&[]),
    })
}

/// `LDAPResult`: resultCode, matchedDN, diagnosticMessage (the referral is not needed).
fn decode_result(b: &[u8]) -> std::result::Result<(u32, String), String> {
    let (rc, rest) = ber::expect(b, ENUMERATED)?;
    let (_matched, rest) = ber::expect(rest, OCTET_STRING)?;
    let (text, _) = ber::expect(rest, OCTET_STRING)?;
    let text = String::from_utf8_lossy(text);
    Ok((
        ber::enumerated(rc)?,
        shown(text.trim_end_matches('\0').trim()),
    ))
}

/// `Controls ::= SEQUENCE OF Control { controlType, criticality DEFAULT FALSE, controlValue OPTIONAL }`.
pub(crate) fn decode_controls(
    mut b: &[u8],
) -> std::result::Result<Vec<RawResponseControl>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (c, rest) = ber::expect(b, SEQUENCE)?;
        b = rest;
        let (oid, c) = text(c, "a control OID")?;
        let (_critical, c) = ber::optional(c, BOOLEAN)?;
        let (value, _) = ber::optional(c, OCTET_STRING)?;
        out.push((oid.to_string(), value.map(<[u8]>::to_vec)));
    }
    Ok(out)
}

/// `SearchResultEntry ::= [APPLICATION 4] SEQUENCE { objectName, attributes
/// PartialAttributeList }` with `PartialAttribute ::= SEQUENCE { type, vals SET OF value }`.
/// Decoded in place: the entry borrows the message.
fn decode_entry(b: &[u8]) -> std::result::Result<EntryRef<'_>, String> {
    let (dn, rest) = text(b, "DN")?;
    let mut list = contents_or_empty(rest, SEQUENCE)?;
    let mut attrs = SmallVec::new();
    while !list.is_empty() {
        let (a, rest) = ber::expect(list, SEQUENCE)?;
        list = rest;
        let (name, a) = text(a, "an attribute name")?;
        let mut vals = contents_or_empty(a, SET)?;
        let mut values = SmallVec::new();
        while !vals.is_empty() {
            let (v, rest) = ber::expect(vals, OCTET_STRING)?;
            vals = rest;
            values.push(v);
        }
        attrs.push(AttrRef { name, values });
    }
    Ok(EntryRef { dn, attrs })
}

/// The OCTET STRING at the start of `b` as UTF-8 text (`what` names it in the error), and
/// what follows it.
fn text<'a>(b: &'a [u8], what: &str) -> std::result::Result<(&'a str, &'a [u8]), String> {
    let (t, rest) = ber::expect(b, OCTET_STRING)?;
    let t = std::str::from_utf8(t).map_err(|_| format!("{what} is not UTF-8"))?;
    Ok((t, rest))
}

/// The contents of an optional `tag` at the start of `b`: empty when it is absent.
fn contents_or_empty(b: &[u8], tag: u8) -> std::result::Result<&[u8], String> {
    Ok(ber::optional(b, tag)?.0.unwrap_or(&[]))
}

/// `Control ::= SEQUENCE { controlType, criticality BOOLEAN DEFAULT FALSE, controlValue }`.
fn encode_control(c: &RawControl) -> Vec<u8> {
    let mut parts = vec![ber::tlv(OCTET_STRING, c.ctype.as_bytes())];
    if c.crit {
        parts.push(ber::encode_boolean(true));
    }
    if let Some(v) = &c.val {
        parts.push(ber::tlv(OCTET_STRING, v));
    }
    ber::sequence(&parts)
}

/// An RFC 4515 filter string in BER, through ldap3's filter parser.
fn encode_filter(filter: &str) -> std::result::Result<Vec<u8>, String> {
    use ldap3::asn1::ASNTag;
    let tag = ldap3::parse_filter(filter).map_err(|()| "not a valid LDAP filter".to_string())?;
    let mut out = bytes::BytesMut::new();
    ldap3::asn1::write::encode_into(&mut out, tag.into_structure()).map_err(|e| e.to_string())?;
    Ok(out.to_vec())
}

/// A certificate verifier that accepts any server certificate but still checks the
/// handshake signatures. For tests against self-signed lab servers only
/// ([`ConnectOptions::danger_skip_tls_verify`]).
#[derive(Debug)]
pub(crate) struct AnyCertificate(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, op: u8, body: &[u8], controls: &[Vec<u8>]) -> Vec<u8> {
        let mut parts = vec![ber::integer(id), ber::tlv(op, body)];
        if !controls.is_empty() {
            parts.push(ber::tlv(op::CONTROLS, &controls.concat()));
        }
        ber::sequence(&parts)
    }

    fn entry_body(dn: &str, attrs: &[(&str, &[&[u8]])]) -> Vec<u8> {
        let list: Vec<Vec<u8>> = attrs
            .iter()
            .map(|(n, vs)| {
                let vals: Vec<u8> = vs.iter().flat_map(|v| ber::tlv(OCTET_STRING, v)).collect();
                ber::sequence(&[ber::tlv(OCTET_STRING, n.as_bytes()), ber::tlv(SET, &vals)])
            })
            .collect();
        [ber::tlv(OCTET_STRING, dn.as_bytes()), ber::sequence(&list)].concat()
    }

    #[test]
    fn entries_decode_with_binary_values_and_empty_lists() {
        let body = entry_body(
            "cn=Zoë\\2C Smith,dc=example,dc=org",
            &[
                ("cn", &[b"Zo\xc3\xab"]),
                ("objectGUID", &[&[0xff, 0, 0x80]]),
                ("member", &[]),
            ],
        );
        let e = decode_entry(&body).unwrap();
        assert_eq!(e.dn, "cn=Zoë\\2C Smith,dc=example,dc=org");
        assert_eq!(e.values("OBJECTGUID").unwrap(), &[&[0xff, 0, 0x80][..]]);
        assert_eq!(e.values("member").unwrap().len(), 0);
        let bare = ber::tlv(OCTET_STRING, b"dc=x");
        let bare = decode_entry(&bare).unwrap();
        assert!(bare.attrs.is_empty());
    }

    #[test]
    fn messages_frame_and_decode() {
        let ctrl = encode_control(&RawControl {
            ctype: "1.2.840.113556.1.4.319".into(),
            crit: true,
            val: Some(ber::paged_request(0, b"next")),
        });
        let done = [
            ber::tlv(ENUMERATED, &[0]),
            ber::tlv(OCTET_STRING, b""),
            ber::tlv(OCTET_STRING, b"fine\0"),
        ]
        .concat();
        let msg = message(7, op::SEARCH_DONE, &done, &[ctrl]);
        assert_eq!(frame_len(&msg).unwrap(), Some(msg.len()));
        assert_eq!(frame_len(&msg[..1]).unwrap(), None);
        let m = parse_message(&msg).unwrap();
        assert_eq!((m.id, m.op), (7, op::SEARCH_DONE));
        assert_eq!(decode_result(m.body).unwrap(), (0, "fine".to_string()));
        let c = decode_controls(m.controls).unwrap();
        assert_eq!(c[0].0, "1.2.840.113556.1.4.319");
        assert_eq!(
            ber::paged_response(c[0].1.as_ref().unwrap()).unwrap(),
            b"next"
        );
        // A long message: the length takes more bytes, and a partial header waits.
        let big = message(
            9,
            op::SEARCH_ENTRY,
            &entry_body("cn=a", &[("d", &[&[7; 70_000]])]),
            &[],
        );
        assert_eq!(frame_len(&big).unwrap(), Some(big.len()));
        assert_eq!(frame_len(&big[..2]).unwrap(), None);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(frame_len(&[0x04, 1, 0]).is_err());
        assert!(frame_len(&[0x30, 0x80]).is_err());
        assert!(frame_len(&[0x30, 0x89, 1, 1, 1, 1, 1, 1, 1, 1, 1]).is_err());
        for bad in [
            &[][..],
            &[0x04, 0x05, b'a'][..],
            &[0x04, 0x01, 0xff][..],
            &[0x04, 0x01, b'a', 0x30, 0x03, 0x30, 0x01][..],
        ] {
            assert!(decode_entry(bad).is_err(), "{bad:?}");
        }
        assert!(decode_controls(&[0x30, 0x02, 0x01, 0x01]).is_err());
        assert!(decode_result(&[0x0a, 0x01]).is_err());
        assert!(parse_message(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let good = message(
            3,
            op::SEARCH_ENTRY,
            &entry_body("cn=a,dc=b", &[("cn", &[b"a"])]),
            &[],
        );
        for _ in 0..2000 {
            let mut m = good.clone();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng as usize) % m.len();
            m[i] = (rng >> 32) as u8;
            let cut = (rng >> 48) as usize % (m.len() + 1);
            let m = &m[..cut];
            if let Ok(Some(len)) = frame_len(m) {
                if len <= m.len() {
                    if let Ok(msg) = parse_message(&m[..len]) {
                        let _ = decode_entry(msg.body);
                        let _ = decode_controls(msg.controls);
                    }
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_an_error_without_recursion() {
        // 100,000 SEQUENCEs where the attribute list belongs.
        const DEPTH: usize = 100_000;
        let mut nested = Vec::with_capacity(DEPTH * 6);
        for level in 0..DEPTH {
            nested.extend([SEQUENCE, 0x84]);
            nested.extend((((DEPTH - 1 - level) * 6) as u32).to_be_bytes());
        }
        let body = [ber::tlv(OCTET_STRING, b"cn=deep"), nested.clone()].concat();
        assert!(decode_entry(&body).is_err());
        assert!(decode_controls(&nested).is_err());
        assert!(parse_message(&nested).is_err());
        assert!(decode_intermediate(&body).is_err());
    }

    #[test]
    fn intermediate_responses_decode() {
        let v = [
            ber::tlv(0x80, b"1.3.6.1.4.1.4203.1.9.1.4"),
            ber::tlv(0x81, &[0x80, 1, 7]),
        ]
        .concat();
        let (name, value) = decode_intermediate(&v).unwrap();
        assert_eq!(name, Some("1.3.6.1.4.1.4203.1.9.1.4"));
        assert_eq!(value, Some(&[0x80, 1, 7][..]));
        assert_eq!(decode_intermediate(&[]).unwrap(), (None, None));
        assert!(decode_intermediate(&ber::tlv(0x82, b"x")).is_err());
        assert!(decode_intermediate(&ber::tlv(0x80, &[0xff])).is_err());
    }

    #[test]
    fn searches_encode_scope_and_size_limit() {
        let spec = SearchSpec {
            base: "dc=x",
            scope: Scope::Base,
            filter: "(objectClass=*)",
            attrs: &["1.1"],
            size_limit: 1,
        };
        let req = encode_search(&spec).unwrap();
        let (body, rest) = ber::expect(&req, op::SEARCH_REQUEST).unwrap();
        assert!(rest.is_empty());
        let (base, rest) = ber::expect(body, OCTET_STRING).unwrap();
        assert_eq!(base, b"dc=x");
        let (scope, rest) = ber::expect(rest, ENUMERATED).unwrap();
        assert_eq!(scope, &[0]);
        let (_deref, rest) = ber::expect(rest, ENUMERATED).unwrap();
        let (size, _) = ber::expect(rest, INTEGER).unwrap();
        assert_eq!(ber::int(size).unwrap(), 1);
    }

    /// A Wire on a loopback socket whose other end is `serve`, run on its own thread.
    async fn wire_to(serve: impl FnOnce(std::net::TcpStream) + Send + 'static) -> Wire {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener.accept().unwrap().0));
        let tcp = TcpStream::connect(addr).await.unwrap();
        Wire {
            io: Io::Plain(tcp),
            buf: Vec::new(),
            pos: 0,
            next_id: 1,
            timeout: Duration::from_secs(5),
            limits: SourceLimits::default(),
            import_deadline: None,
            op_deadline: Instant::now(),
            url: "ldap://test".into(),
        }
    }

    /// The next request's message ID, read whole from `conn`.
    fn read_request(conn: &mut std::net::TcpStream) -> i64 {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            if let Ok(Some(len)) = frame_len(&buf) {
                if buf.len() == len {
                    return parse_message(&buf).unwrap().id;
                }
            }
            conn.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
        }
    }

    #[tokio::test]
    async fn pipelined_lookups_are_matched_by_message_id_in_any_order() {
        let mut wire = wire_to(|mut conn| {
            use std::io::Write;
            let ids: Vec<i64> = (0..3).map(|_| read_request(&mut conn)).collect();
            let done = |rc: u8| {
                [
                    ber::tlv(ENUMERATED, &[rc]),
                    ber::tlv(OCTET_STRING, b""),
                    ber::tlv(OCTET_STRING, b""),
                ]
                .concat()
            };
            // The third first, then an entry and the end of the second, then the first.
            let answers = [
                message(ids[2], op::SEARCH_DONE, &done(32), &[]),
                message(ids[1], op::SEARCH_ENTRY, &entry_body("cn=b", &[]), &[]),
                message(ids[1], op::SEARCH_DONE, &done(0), &[]),
                message(ids[0], op::SEARCH_DONE, &done(0), &[]),
            ];
            conn.write_all(&answers.concat()).unwrap();
        })
        .await;
        let got = wire
            .base_matches(&["cn=a", "cn=b", "cn=c"], "(objectClass=*)", 32)
            .await
            .unwrap();
        assert!(matches!(got[0], Ok(false)));
        assert!(matches!(got[1], Ok(true)));
        assert!(matches!(got[2], Err(LdapFailure { rc: 32, .. })));
    }

    #[tokio::test]
    async fn a_response_to_no_request_in_flight_is_an_error() {
        let mut wire = wire_to(|mut conn| {
            use std::io::Write;
            let id = read_request(&mut conn);
            let body = entry_body("cn=x", &[]);
            conn.write_all(&message(id + 7, op::SEARCH_ENTRY, &body, &[]))
                .unwrap();
        })
        .await;
        let e = wire
            .base_matches(&["cn=a"], "(objectClass=*)", 32)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::SourceMisbehaved(_)), "{e}");
    }

    /// A server answering each paged search with `pages[i]`: (entries, cookie).
    async fn paged_server(pages: Vec<(usize, &'static [u8])>) -> Wire {
        wire_to(move |mut conn| {
            use std::io::Write;
            for (n, (entries, cookie)) in pages.into_iter().enumerate() {
                let id = read_request(&mut conn);
                let mut out = Vec::new();
                for e in 0..entries {
                    let dn = format!("cn=p{n}e{e}");
                    out.extend(message(id, op::SEARCH_ENTRY, &entry_body(&dn, &[]), &[]));
                }
                let ctrl = encode_control(&RawControl {
                    ctype: super::super::ldap::PAGED_RESULTS_OID.into(),
                    crit: false,
                    val: Some(ber::paged_request(0, cookie)),
                });
                let done = [
                    ber::tlv(ENUMERATED, &[0]),
                    ber::tlv(OCTET_STRING, b""),
                    ber::tlv(OCTET_STRING, b""),
                ]
                .concat();
                out.extend(message(id, op::SEARCH_DONE, &done, &[ctrl]));
                if conn.write_all(&out).is_err() {
                    return;
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_cookie_repeated_while_entries_move_on_is_samba_not_a_loop() {
        let mut wire = paged_server(vec![(2, b"same"), (2, b"same"), (1, b"")]).await;
        let mut n = 0;
        let out = wire
            .paged_search("dc=x", "(objectClass=*)", &["1.1"], &[], 2, &mut |_| {
                n += 1;
                Ok(())
            })
            .await
            .unwrap();
        assert!(out.is_ok());
        assert_eq!(n, 5);
        // The same cookie with nothing new is a loop.
        let mut wire = paged_server(vec![(2, b"same"), (0, b"same"), (1, b"")]).await;
        let e = wire
            .paged_search("dc=x", "(objectClass=*)", &["1.1"], &[], 2, &mut |_| Ok(()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("never end"), "{e}");
    }

    #[tokio::test]
    async fn more_entries_than_max_entries_end_a_paged_search() {
        let mut wire = paged_server(vec![(3, b"a"), (3, b"b"), (3, b"")]).await;
        wire.limits.max_entries = 5;
        let e = wire
            .paged_search("dc=x", "(objectClass=*)", &["1.1"], &[], 3, &mut |_| Ok(()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("source.max_entries"), "{e}");
    }

    #[test]
    fn a_cookie_seen_before_is_told() {
        let mut seen = CookieSet::default();
        assert!(seen.insert(b"a"));
        assert!(seen.insert(b"b"));
        assert!(!seen.insert(b"a"));
    }

    #[test]
    fn a_refused_first_page_is_asked_again_smaller() {
        assert_eq!(smaller_page(11, 0, 0, 1000), Some(500));
        assert_eq!(smaller_page(11, 0, 0, 80), Some(MIN_PAGE));
        assert_eq!(smaller_page(11, 0, 0, MIN_PAGE), None);
        // Entries already sent, a later page, or another error: the failure stands.
        assert_eq!(smaller_page(11, 0, 3, 1000), None);
        assert_eq!(smaller_page(11, 2, 0, 1000), None);
        assert_eq!(smaller_page(4, 0, 0, 1000), None);
        assert_eq!(smaller_page(0, 0, 0, 1000), None);
    }

    #[test]
    fn filters_and_controls_encode() {
        let f = encode_filter("(&(objectClass=inetOrgPerson)(!(cn=a*)))").unwrap();
        assert_eq!(f[0], 0xa0); // and [0]
        assert!(encode_filter("(&(cn=a)").is_err());
        let c = encode_control(&RawControl {
            ctype: "1.2".into(),
            crit: false,
            val: None,
        });
        assert_eq!(c, ber::sequence(&[ber::tlv(OCTET_STRING, b"1.2")]));
    }
}

//! A lean LDAP reader for bulk paged searches: the full imports.
//!
//! ldap3 decodes every response message into a tree of `StructureTag`s on its connection
//! task and hands it to the caller over a channel. For a 100,000-entry import that is
//! several allocations per value and a wake-up of another thread per entry, which cost
//! more CPU than the server spends producing the entries. This reader owns its socket: it
//! reads into one buffer, walks each complete message in place with [`ber`], and builds
//! borrowed [`EntryRef`]s directly. It speaks only what a paged search needs (simple bind,
//! StartTLS, SearchRequest with controls, unbind); everything else stays on ldap3.
//!
//! Nothing the server sends is trusted: a malformed message, an oversized length or a
//! response to another request is an error naming the server, never a panic.

use std::sync::Arc;
use std::time::Duration;

use ldap3::controls::RawControl;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ldap::ber::{self, BOOLEAN, ENUMERATED, INTEGER, OCTET_STRING, SEQUENCE, SET};
use super::ldap::{
    AttrRef, ConnectOptions, EntryRef, LdapFailure, RawResponseControl, SearchOutcome,
};
use crate::config::{SourceConfig, Tls};
use crate::error::{Error, Result};

/// The largest message accepted (a group of a million members fits).
const MAX_MESSAGE: usize = 256 << 20;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 << 10;

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

/// A bound connection that runs paged searches.
pub(crate) struct Wire {
    io: Io,
    /// Bytes read and not yet consumed are `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    next_id: i32,
    timeout: Duration,
    url: String,
}

/// One decoded response message, borrowing the read buffer.
struct Message<'a> {
    id: i64,
    op: u8,
    body: &'a [u8],
    controls: &'a [u8],
}

impl Wire {
    /// Connect as the configuration says (ldap://, StartTLS, ldaps://) and bind.
    pub(crate) async fn connect(cfg: &SourceConfig, opts: &ConnectOptions) -> Result<Wire> {
        let password = cfg.password.resolve("source.password")?;
        let url = cfg.url.clone();
        let cannot = |why: String| Error::Source(format!("cannot connect to {url}: {why}"));
        let parsed = url::Url::parse(&url).map_err(|e| cannot(e.to_string()))?;
        let ldaps = parsed.scheme() == "ldaps";
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(cannot("no host in the URL".into())),
        };
        let port = parsed.port().unwrap_or(if ldaps { 636 } else { 389 });
        let tcp =
            match tokio::time::timeout(opts.timeout, TcpStream::connect((host.as_str(), port)))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(cannot(e.to_string())),
                Err(_) => return Err(cannot(format!("timed out after {:?}", opts.timeout))),
            };
        tcp.set_nodelay(true).map_err(|e| cannot(e.to_string()))?;
        let mut wire = Wire {
            io: Io::Plain(tcp),
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            next_id: 1,
            timeout: opts.timeout,
            url: url.clone(),
        };
        if ldaps || cfg.tls == Tls::Starttls {
            if !ldaps {
                let req = ber::tlv(
                    op::EXTENDED_REQUEST,
                    &ber::tlv(0x80, STARTTLS_OID.as_bytes()),
                );
                let (rc, text) = wire.request(req, op::EXTENDED_RESPONSE).await?;
                if rc != 0 {
                    return Err(cannot(format!(
                        "StartTLS refused: {} ({text})",
                        super::ldap::result_name(rc)
                    )));
                }
            }
            let tls = super::ldap::client_tls(cfg.ca_file.as_deref(), opts.danger_skip_tls_verify)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| cannot(format!("{host} is not a TLS server name: {e}")))?;
            let Io::Plain(tcp) = wire.io else {
                return Err(cannot("TLS started twice".into()));
            };
            let stream = tokio::time::timeout(
                opts.timeout,
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .map_err(|_| cannot(format!("TLS handshake timed out after {:?}", opts.timeout)))?
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
            return Err(super::result::failure(
                &format!("bind to {url} as {} refused", cfg.bind_dn),
                rc,
                &text,
            ));
        }
        Ok(wire)
    }

    /// A subtree search in pages of `page_size` (simple paged results), with `controls`
    /// added to every page. Each entry goes to `each` as soon as it is decoded, so the
    /// caller's work overlaps the server's. Referrals are skipped and counted (the
    /// outcome's `entries` stay empty); intermediate responses are ignored. An LDAP error
    /// result comes back as `Ok(Err(LdapFailure))`.
    pub(crate) async fn paged_search(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        controls: &[RawControl],
        page_size: i32,
        each: &mut (dyn FnMut(&EntryRef<'_>) -> Result<()> + Send),
    ) -> Result<std::result::Result<SearchOutcome, LdapFailure>> {
        let filter_ber = encode_filter(filter)
            .map_err(|why| Error::Source(format!("search filter {filter}: {why}")))?;
        let attr_list: Vec<Vec<u8>> = attrs
            .iter()
            .map(|a| ber::tlv(OCTET_STRING, a.as_bytes()))
            .collect();
        let search = [
            ber::tlv(OCTET_STRING, base.as_bytes()),
            ber::tlv(ENUMERATED, &[2]), // wholeSubtree
            ber::tlv(ENUMERATED, &[0]), // neverDerefAliases
            ber::integer(0),
            ber::integer(0),
            ber::encode_boolean(false),
            filter_ber,
            ber::sequence(&attr_list),
        ]
        .concat();
        let search = ber::tlv(op::SEARCH_REQUEST, &search);
        let mut all = SearchOutcome::default();
        let mut cookie: Vec<u8> = Vec::new();
        let mut pages = 0u64;
        let mut page_size = page_size;
        // The caller's controls, then this page's paged-results control (replaced per page).
        let mut ctrls: Vec<Vec<u8>> = controls.iter().map(encode_control).collect();
        loop {
            ctrls.push(encode_control(&RawControl {
                ctype: super::ldap::PAGED_RESULTS_OID.to_string(),
                crit: false,
                val: Some(ber::paged_request(page_size, &cookie)),
            }));
            let id = self.send(&search, &ctrls).await?;
            ctrls.pop();
            let mut received = 0u64;
            let (rc, text, controls) = loop {
                let m = self.next().await?;
                let msg = self.decode(m, id)?;
                let done = match msg.op {
                    op::SEARCH_ENTRY => {
                        let entry = decode_entry(msg.body).map_err(|why| self.bad(&why))?;
                        received += 1;
                        each(&entry)?;
                        None
                    }
                    op::SEARCH_REFERENCE => {
                        received += 1;
                        all.referrals += 1;
                        None
                    }
                    op::INTERMEDIATE => None,
                    op::SEARCH_DONE => {
                        let (rc, text) = decode_result(msg.body).map_err(|why| self.bad(&why))?;
                        let controls = decode_controls(msg.controls).map_err(|w| self.bad(&w))?;
                        Some((rc, text, controls))
                    }
                    other => return Err(self.bad(&format!("unexpected message {other:#04x}"))),
                };
                self.consume(m);
                if let Some(done) = done {
                    break done;
                }
            };
            if let Some(smaller) = smaller_page(rc, pages, received, page_size) {
                // OpenLDAP refuses a page larger than its `size.pr` limit before sending
                // anything (adminLimitExceeded): ask again with a smaller one.
                tracing::info!(
                    "{}: the server refused pages of {page_size} entries ({text}); asking for {smaller}",
                    self.url
                );
                page_size = smaller;
                continue;
            }
            pages += 1;
            if rc != 0 {
                return Ok(Err(LdapFailure { rc, text }));
            }
            let resp = controls
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
                all.controls = controls;
                break;
            }
            if pages > 1_000_000 {
                return Err(self.bad(&format!("paged search did not end after {pages} pages")));
            }
        }
        Ok(Ok(all))
    }

    /// Unbind and close. Errors are ignored: the connection is going away anyway.
    pub(crate) async fn close(mut self) {
        let _ = self.send(&ber::tlv(op::UNBIND_REQUEST, &[]), &[]).await;
        let _ = match &mut self.io {
            Io::Plain(s) => s.shutdown().await,
            Io::Tls(s) => s.shutdown().await,
        };
    }

    fn bad(&self, why: &str) -> Error {
        Error::Source(format!("{}: malformed response: {why}", self.url))
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
        let written = tokio::time::timeout(self.timeout, async {
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
            Err(_) => Err(self.timed_out()),
        }
    }

    /// A request answered by one LDAPResult-shaped response with tag `want`: (rc, text).
    async fn request(&mut self, op: Vec<u8>, want: u8) -> Result<(u32, String)> {
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

    fn timed_out(&self) -> Error {
        Error::Source(format!(
            "{}: the server did not answer within {:?}",
            self.url, self.timeout
        ))
    }

    /// The length of the next complete message in the buffer, reading from the socket
    /// until it is all there.
    async fn next(&mut self) -> Result<usize> {
        loop {
            let avail = &self.buf[self.pos..];
            let need = frame_len(avail).map_err(|why| self.bad(&why))?;
            if let Some(len) = need {
                if len > MAX_MESSAGE {
                    return Err(self.bad(&format!("a message of {len} bytes")));
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
        match msg.id {
            got if got == id => Ok(msg),
            0 => {
                let text = decode_result(msg.body)
                    .map(|(rc, text)| format!("{} ({text})", super::ldap::result_name(rc)))
                    .unwrap_or_default();
                Err(Error::Source(format!(
                    "{}: the server ended the connection: {text}",
                    self.url
                )))
            }
            got => Err(self.bad(&format!("a response to request {got}, not {id}"))),
        }
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
        let read = tokio::time::timeout(self.timeout, async {
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
            Err(_) => Err(self.timed_out()),
        }
    }
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
        text.trim_end_matches('\0').trim().to_string(),
    ))
}

/// `Controls ::= SEQUENCE OF Control { controlType, criticality DEFAULT FALSE, controlValue OPTIONAL }`.
fn decode_controls(mut b: &[u8]) -> std::result::Result<Vec<RawResponseControl>, String> {
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

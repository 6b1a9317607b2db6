//! Shared LDAP plumbing for the directory sources: connecting from a [`SourceConfig`]
//! (ldap://, StartTLS, ldaps://), a simple bind with the resolved secret, per-operation
//! and per-import deadlines, and searches (one-shot, simple-paged, pipelined base
//! lookups) that never trust the server.
//!
//! Every byte the server sends is read by one reader, `wire.rs`, which returns errors
//! instead of panicking and holds the server to `[source]`'s limits. ldap3 is used only for
//! its types ([`RawControl`], [`Scope`]) and to encode our own filters, never to parse what
//! the server sends.
//!
//! TLS: certificate verification is on by default (the system roots).
//! [`ConnectOptions::danger_skip_tls_verify`] turns it off and is meant for tests against
//! self-signed lab servers only; it is not reachable from the configuration file. `ca_file`
//! adds the certificates of a PEM file to the system roots ([`tls_config`]); verification
//! stays on, and an unreadable or empty file is a configuration error.

use std::time::{Duration, Instant};

use ldap3::controls::RawControl;
use ldap3::Scope;
use smallvec::SmallVec;

use super::wire::{self, Item, SearchSpec, Wire};
use crate::config::SourceConfig;
use crate::error::{Error, Result};

/// Base searches [`LdapClient::base_matches`] keeps in flight at once.
pub const CONCURRENT_LOOKUPS: usize = 32;

/// OID of the simple paged results control (RFC 2696).
pub const PAGED_RESULTS_OID: &str = "1.2.840.113556.1.4.319";

/// How to connect. Not part of the configuration file.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Limit for the TCP connect and for each LDAP operation (each page of a search).
    pub timeout: Duration,
    /// Accept any server certificate. For tests against self-signed lab servers only.
    pub danger_skip_tls_verify: bool,
    /// When everything on this connection must be done: the import's deadline
    /// (`[source] import_timeout` from the import's start). `None`: no such deadline.
    pub deadline: Option<Instant>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(30),
            danger_skip_tls_verify: false,
            deadline: None,
        }
    }
}

/// Text from the server (a diagnostic message, a DN) as it may appear in an error line:
/// control characters escaped, at most 200 characters.
pub fn shown(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = crate::output::escape_controls(text);
    if let Some((i, _)) = out.char_indices().nth(MAX) {
        out.truncate(i);
        out.push_str("...");
    }
    out
}

/// One attribute of an entry as the server sent it: its name (as sent, options included,
/// e.g. `member;range=0-1499`) and raw values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawAttr {
    pub name: String,
    pub values: Vec<Vec<u8>>,
}

/// One attribute of an entry, borrowed from the message it came in (or from a
/// [`RawAttr`]): its name as sent and its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrRef<'a> {
    pub name: &'a str,
    pub values: SmallVec<[&'a [u8]; 2]>,
}

impl AttrRef<'_> {
    /// The name lower-cased, as `Attrs` keys it (inline when short: no allocation).
    pub fn lower_name(&self) -> crate::log::event::AttrName {
        let mut name = crate::log::event::AttrName::new(self.name);
        name.as_mut_str().make_ascii_lowercase();
        name
    }
}

/// A search result entry, borrowed: a paged search hands each entry over this way, so an
/// entry costs no allocation until the caller keeps something of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub dn: &'a str,
    pub attrs: SmallVec<[AttrRef<'a>; 10]>,
}

impl EntryRef<'_> {
    /// Values of the attribute named `name` (case-insensitive, exact: no options).
    pub fn values(&self, name: &str) -> Option<&[&[u8]]> {
        self.attrs
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .map(|a| a.values.as_slice())
    }

    /// The entry with its own copies of everything.
    pub fn to_owned_entry(&self) -> RawEntry {
        RawEntry {
            dn: self.dn.to_string(),
            attrs: self
                .attrs
                .iter()
                .map(|a| RawAttr {
                    name: a.name.to_string(),
                    values: a.values.iter().map(|v| v.to_vec()).collect(),
                })
                .collect(),
        }
    }
}

/// A search result entry, decoded without trusting the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub dn: String,
    pub attrs: Vec<RawAttr>,
}

impl RawEntry {
    /// The entry borrowed, as a paged search hands it over.
    pub fn borrow(&self) -> EntryRef<'_> {
        EntryRef {
            dn: &self.dn,
            attrs: self
                .attrs
                .iter()
                .map(|a| AttrRef {
                    name: &a.name,
                    values: a.values.iter().map(Vec::as_slice).collect(),
                })
                .collect(),
        }
    }

    /// An entry of `dn` with `attrs` (name, values): test fixtures.
    #[cfg(test)]
    pub(crate) fn of(dn: &str, attrs: &[(&str, &[&[u8]])]) -> RawEntry {
        RawEntry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(name, values)| RawAttr {
                    name: (*name).into(),
                    values: values.iter().map(|v| v.to_vec()).collect(),
                })
                .collect(),
        }
    }

    /// Values of the attribute named `name` (case-insensitive, exact: no options).
    pub fn values(&self, name: &str) -> Option<&[Vec<u8>]> {
        self.attrs
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .map(|a| a.values.as_slice())
    }

    /// The first value of `name` as text.
    pub fn text(&self, name: &str) -> Option<String> {
        self.values(name)
            .and_then(|v| v.first())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// What a search returned.
#[derive(Debug, Default)]
pub struct SearchOutcome {
    pub entries: Vec<RawEntry>,
    /// Search result references (continuation referrals) skipped.
    pub referrals: u64,
    /// Response controls of the final result (OID, value).
    pub controls: Vec<(String, Option<Vec<u8>>)>,
}

/// A response control as the server sent it: OID and raw value.
pub type RawResponseControl = (String, Option<Vec<u8>>);

/// One message of a search, in the order the server sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchItem {
    /// A SearchResultEntry and its response controls.
    Entry {
        entry: RawEntry,
        controls: Vec<RawResponseControl>,
    },
    /// An IntermediateResponse (`[APPLICATION 25]`): responseName and responseValue.
    Intermediate {
        name: Option<String>,
        value: Option<Vec<u8>>,
        controls: Vec<RawResponseControl>,
    },
}

/// What [`LdapClient::search_items`] returned.
#[derive(Debug, Default)]
pub struct ItemsOutcome {
    pub items: Vec<SearchItem>,
    /// Search result references (continuation referrals) skipped.
    pub referrals: u64,
    /// Response controls of the final result.
    pub controls: Vec<RawResponseControl>,
}

/// An LDAP error result, kept so callers can tell them apart.
#[derive(Clone, Debug)]
pub struct LdapFailure {
    pub rc: u32,
    pub text: String,
}

/// A bound connection to a source directory.
pub struct LdapClient {
    /// `None` after an operation failed midway: the connection's state is unknown, so the
    /// next operation connects again.
    wire: Option<Wire>,
    url: String,
    cfg: SourceConfig,
    opts: ConnectOptions,
}

impl std::fmt::Debug for LdapClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapClient")
            .field("url", &self.url)
            .finish()
    }
}

/// TLS settings that trust the system's roots and the certificates in `ca_file` (PEM).
/// Verification stays on: this only widens what is trusted.
pub fn tls_config(ca_file: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    client_tls(Some(ca_file), false)
}

/// TLS settings for a source connection: the system's roots plus those of `ca_file`, or no
/// certificate check at all when `skip_verify` (tests against self-signed lab servers).
pub(crate) fn client_tls(
    ca_file: Option<&std::path::Path>,
    skip_verify: bool,
) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Source(format!("TLS: {e}")))?;
    if skip_verify {
        let any = super::wire::AnyCertificate(provider);
        return Ok(std::sync::Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(any))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system root rustls cannot use is skipped, as ldap3 itself does.
        let _ = roots.add(cert);
    }
    if let Some(ca_file) = ca_file {
        let bad =
            |why: String| Error::Config(format!("source.ca_file {}: {why}", ca_file.display()));
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no PEM certificate in the file".into()));
        }
    }
    Ok(std::sync::Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

impl LdapClient {
    /// Connect as the configuration says and bind with its secret.
    pub async fn connect(cfg: &SourceConfig, opts: &ConnectOptions) -> Result<LdapClient> {
        let wire = Wire::connect(cfg, opts).await?;
        tracing::debug!(url = %cfg.url, bind_dn = %cfg.bind_dn, "bound to the source");
        Ok(LdapClient {
            wire: Some(wire),
            url: cfg.url.clone(),
            cfg: cfg.clone(),
            opts: opts.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything on this connection from now on must be done by `deadline` (a connection
    /// opened for the checks before a run, handed on to the run's import).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.opts.deadline = deadline;
        if let Some(w) = &mut self.wire {
            w.set_import_deadline(deadline);
        }
    }

    /// The connection, connected again if an earlier operation failed midway.
    async fn wire(&mut self) -> Result<&mut Wire> {
        if self.wire.is_none() {
            self.wire = Some(Wire::connect(&self.cfg, &self.opts).await?);
        }
        self.wire
            .as_mut()
            .ok_or_else(|| Error::Source(format!("{}: not connected", self.url)))
    }

    /// Forget the connection after `res` failed midway (not an LDAP error result).
    fn settle<T>(&mut self, res: Result<T>) -> Result<T> {
        if res.is_err() {
            self.wire = None;
        }
        res
    }

    /// One search (no paging). `Err(Ok(failure))`-style results are flattened: an LDAP
    /// error result comes back as `Ok(Err(LdapFailure))` so callers can inspect the code.
    /// Intermediate responses and per-entry controls are dropped: see [`Self::search_items`].
    pub async fn search_raw(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        controls: Vec<RawControl>,
    ) -> Result<std::result::Result<SearchOutcome, LdapFailure>> {
        let spec = SearchSpec {
            base,
            scope,
            filter,
            attrs,
            size_limit: 0,
        };
        self.search_entries(&spec, &controls).await
    }

    /// A search keeping its entries, referrals counted, other responses dropped.
    async fn search_entries(
        &mut self,
        spec: &SearchSpec<'_>,
        controls: &[RawControl],
    ) -> Result<std::result::Result<SearchOutcome, LdapFailure>> {
        let mut out = SearchOutcome::default();
        let wire = self.wire().await?;
        let res = wire
            .search(spec, controls, &mut |item| {
                match item {
                    Item::Entry { entry, .. } => out.entries.push(entry.to_owned_entry()),
                    Item::Referral => out.referrals += 1,
                    Item::Intermediate { .. } => {}
                }
                Ok(())
            })
            .await;
        let done = self.settle(res)?;
        if done.rc != 0 {
            return Ok(Err(LdapFailure {
                rc: done.rc,
                text: done.text,
            }));
        }
        out.controls = done.controls;
        Ok(Ok(out))
    }

    /// One search (no paging) keeping everything the server sent, in order: entries with
    /// their own response controls (e.g. RFC 4533 Sync State) and intermediate responses
    /// (e.g. RFC 4533 Sync Info). Referrals are skipped and counted. An LDAP error result
    /// comes back as `Ok(Err(LdapFailure))`.
    pub async fn search_items(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        controls: Vec<RawControl>,
    ) -> Result<std::result::Result<ItemsOutcome, LdapFailure>> {
        let spec = SearchSpec {
            base,
            scope,
            filter,
            attrs,
            size_limit: 0,
        };
        let mut out = ItemsOutcome::default();
        let wire = self.wire().await?;
        let res = wire
            .search(&spec, &controls, &mut |item| {
                let bad = |why: String| {
                    Error::SourceMisbehaved(format!("malformed response controls: {why}"))
                };
                match item {
                    Item::Entry { entry, controls } => out.items.push(SearchItem::Entry {
                        entry: entry.to_owned_entry(),
                        controls: wire::decode_controls(controls).map_err(bad)?,
                    }),
                    Item::Intermediate {
                        name,
                        value,
                        controls,
                    } => out.items.push(SearchItem::Intermediate {
                        name: name.map(str::to_string),
                        value: value.map(<[u8]>::to_vec),
                        controls: wire::decode_controls(controls).map_err(bad)?,
                    }),
                    Item::Referral => out.referrals += 1,
                }
                Ok(())
            })
            .await;
        let done = self.settle(res)?;
        if done.rc != 0 {
            return Ok(Err(LdapFailure {
                rc: done.rc,
                text: done.text,
            }));
        }
        out.controls = done.controls;
        Ok(Ok(out))
    }

    /// One search that must succeed.
    pub async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        controls: Vec<RawControl>,
    ) -> Result<SearchOutcome> {
        match self
            .search_raw(base, scope, filter, attrs, controls)
            .await?
        {
            Ok(o) => Ok(o),
            Err(f) => Err(super::result::failure(
                &format!("search {filter} under {base} on {}", self.url),
                f.rc,
                &f.text,
            )),
        }
    }

    /// A subtree search in pages of `page_size` (simple paged results), with `controls`
    /// added to every page. Referrals are skipped and counted. See [`Self::paged_each`].
    pub async fn paged_search(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        controls: &[RawControl],
        page_size: i32,
    ) -> Result<SearchOutcome> {
        let mut entries = Vec::new();
        let mut out = self
            .paged_each(base, filter, attrs, controls, page_size, &mut |e| {
                entries.push(e.to_owned_entry());
                Ok(())
            })
            .await?;
        out.entries = entries;
        Ok(out)
    }

    /// [`Self::paged_search`] handing each entry to `each` as it arrives (the outcome's
    /// `entries` stay empty).
    pub async fn paged_each(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        controls: &[RawControl],
        page_size: i32,
        each: &mut (dyn FnMut(&EntryRef<'_>) -> Result<()> + Send),
    ) -> Result<SearchOutcome> {
        let wire = self.wire().await?;
        let res = wire
            .paged_search(base, filter, attrs, controls, page_size, each)
            .await;
        match self.settle(res)? {
            Ok(o) => Ok(o),
            Err(f) => Err(super::result::failure(
                &format!("search {filter} under {base} on {}", self.url),
                f.rc,
                &f.text,
            )),
        }
    }

    /// For each of `dns`, whether the entry there matches `filter`, or the server's refusal
    /// (noSuchObject for an entry gone since). One base search each, up to
    /// [`CONCURRENT_LOOKUPS`] in flight at once on this connection: a thousand entries cost
    /// a few round trips, not a thousand.
    pub async fn base_matches(
        &mut self,
        dns: &[&str],
        filter: &str,
    ) -> Result<Vec<std::result::Result<bool, LdapFailure>>> {
        let wire = self.wire().await?;
        let res = wire.base_matches(dns, filter, CONCURRENT_LOOKUPS).await;
        self.settle(res)
    }

    /// True when at least one entry under `base` matches `filter` (asks for one entry).
    pub async fn exists(&mut self, base: &str, filter: &str) -> Result<bool> {
        let spec = SearchSpec {
            base,
            scope: Scope::Subtree,
            filter,
            attrs: &["1.1"],
            size_limit: 1,
        };
        match self.search_entries(&spec, &[]).await? {
            Ok(o) => Ok(!o.entries.is_empty()),
            // sizeLimitExceeded: more than the one entry we asked for.
            Err(f) if f.rc == 4 => Ok(true),
            Err(f) => Err(super::result::failure(
                &format!("search {filter} under {base} on {}", self.url),
                f.rc,
                &f.text,
            )),
        }
    }

    /// The rootDSE with the given attributes.
    pub async fn root_dse(&mut self, attrs: &[&str]) -> Result<RawEntry> {
        let out = self
            .search("", Scope::Base, "(objectClass=*)", attrs, Vec::new())
            .await?;
        out.entries
            .into_iter()
            .next()
            .ok_or_else(|| Error::Source(format!("{}: the rootDSE is not readable", self.url)))
    }

    /// The limits this connection holds the server to.
    pub fn limits(&self) -> &crate::config::SourceLimits {
        &self.cfg.limits
    }

    /// Unbind and close. Errors are ignored: the connection is going away anyway.
    pub async fn close(mut self) {
        if let Some(wire) = self.wire.take() {
            wire.close().await;
        }
    }
}

/// A minimal BER reader and writer for control values: definite lengths only, every
/// malformation an error.
pub mod ber {
    pub const SEQUENCE: u8 = 0x30;
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const BOOLEAN: u8 = 0x01;
    pub const ENUMERATED: u8 = 0x0a;
    pub const SET: u8 = 0x31;

    /// The tag of the next TLV, if any.
    pub fn peek_tag(buf: &[u8]) -> Option<u8> {
        buf.first().copied()
    }

    /// Reads one TLV with `tag` if the next TLV has that tag: (content, rest).
    pub fn optional(buf: &[u8], tag: u8) -> Result<(Option<&[u8]>, &[u8]), String> {
        if peek_tag(buf) == Some(tag) {
            let (c, rest) = expect(buf, tag)?;
            Ok((Some(c), rest))
        } else {
            Ok((None, buf))
        }
    }

    /// A BOOLEAN content: exactly one byte, any non-zero is TRUE.
    pub fn boolean(content: &[u8]) -> Result<bool, String> {
        match content {
            [b] => Ok(*b != 0),
            _ => Err(format!("bad BOOLEAN length {}", content.len())),
        }
    }

    /// An ENUMERATED (or INTEGER) content as a small non-negative value.
    pub fn enumerated(content: &[u8]) -> Result<u32, String> {
        let v = int(content)?;
        u32::try_from(v).map_err(|_| format!("ENUMERATED value {v} out of range"))
    }

    /// BOOLEAN TRUE/FALSE encoded (DER form).
    pub fn encode_boolean(v: bool) -> Vec<u8> {
        tlv(BOOLEAN, &[if v { 0xff } else { 0 }])
    }

    /// Reads one TLV: (tag, content, rest).
    pub fn read_tlv(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
        let (&tag, rest) = buf.split_first().ok_or("truncated: no tag")?;
        if tag & 0x1f == 0x1f {
            return Err("multi-byte tags are not supported".into());
        }
        let (&first, rest) = rest.split_first().ok_or("truncated: no length")?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 {
                return Err("indefinite length".into());
            }
            if n > 4 || rest.len() < n {
                return Err("bad length".into());
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(format!("truncated: need {len} bytes, have {}", rest.len()));
        }
        Ok((tag, &rest[..len], &rest[len..]))
    }

    /// Reads one TLV that must have `tag`.
    pub fn expect(buf: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
        let (t, content, rest) = read_tlv(buf)?;
        if t != tag {
            return Err(format!("expected tag {tag:#04x}, found {t:#04x}"));
        }
        Ok((content, rest))
    }

    /// A two's complement INTEGER content of at most 8 bytes.
    pub fn int(content: &[u8]) -> Result<i64, String> {
        if content.is_empty() || content.len() > 8 {
            return Err(format!("bad INTEGER length {}", content.len()));
        }
        let neg = content[0] & 0x80 != 0;
        let mut v: i64 = if neg { -1 } else { 0 };
        for &b in content {
            v = (v << 8) | i64::from(b);
        }
        Ok(v)
    }

    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = (len as u64).to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (8 - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        out.push(tag);
        push_len(&mut out, content.len());
        out.extend_from_slice(content);
        out
    }

    /// INTEGER in the fewest two's complement bytes (so i32 0x80000000 is 4 bytes).
    pub fn integer(v: i64) -> Vec<u8> {
        let bytes = v.to_be_bytes();
        let mut start = 0;
        while start < 7 {
            let (b, next) = (bytes[start], bytes[start + 1]);
            if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
                start += 1;
            } else {
                break;
            }
        }
        tlv(INTEGER, &bytes[start..])
    }

    pub fn sequence(items: &[Vec<u8>]) -> Vec<u8> {
        tlv(SEQUENCE, &items.concat())
    }

    /// Paged results request value: SEQUENCE { INTEGER size, OCTET STRING cookie }.
    pub fn paged_request(size: i32, cookie: &[u8]) -> Vec<u8> {
        sequence(&[integer(i64::from(size)), tlv(OCTET_STRING, cookie)])
    }

    /// Paged results response value: the cookie.
    pub fn paged_response(v: &[u8]) -> Result<Vec<u8>, String> {
        let (seq, _) = expect(v, SEQUENCE)?;
        let (_size, rest) = expect(seq, INTEGER)?;
        let (cookie, _) = expect(rest, OCTET_STRING)?;
        Ok(cookie.to_vec())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn integers_are_minimal() {
            assert_eq!(integer(0), vec![2, 1, 0]);
            assert_eq!(integer(1), vec![2, 1, 1]);
            assert_eq!(integer(128), vec![2, 2, 0, 0x80]);
            assert_eq!(integer(-1), vec![2, 1, 0xff]);
            assert_eq!(
                integer(i64::from(0x8000_0000u32 as i32)),
                vec![2, 4, 0x80, 0, 0, 0]
            );
            for v in [0i64, 1, 127, 128, 255, 256, -128, -129, 1 << 40, i64::MIN] {
                let enc = integer(v);
                let (c, rest) = expect(&enc, INTEGER).unwrap();
                assert!(rest.is_empty());
                assert_eq!(int(c).unwrap(), v);
            }
        }

        #[test]
        fn long_lengths_round_trip() {
            let big = vec![7u8; 300];
            let enc = tlv(OCTET_STRING, &big);
            assert_eq!(&enc[..4], &[4, 0x82, 1, 44]);
            let (c, rest) = expect(&enc, OCTET_STRING).unwrap();
            assert_eq!(c, &big[..]);
            assert!(rest.is_empty());
        }

        #[test]
        fn malformed_is_an_error_not_a_panic() {
            for bad in [
                &[][..],
                &[0x30][..],
                &[0x30, 0x05, 1][..],
                &[0x30, 0x80][..],
                &[0x30, 0x85, 1, 1, 1, 1, 1][..],
                &[0x1f, 1, 1][..],
            ] {
                assert!(read_tlv(bad).is_err(), "{bad:?}");
            }
            assert!(paged_response(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
            assert!(int(&[]).is_err());
            let p = paged_request(500, b"abc");
            assert_eq!(paged_response(&p).unwrap(), b"abc");
        }
    }
}

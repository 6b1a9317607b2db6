//! Shared LDAP plumbing for the directory sources: connecting from a [`SourceConfig`]
//! (ldap://, StartTLS, ldaps://), a simple bind with the resolved secret, per-operation
//! timeouts, and searches (one-shot and simple-paged) that never trust the server.
//!
//! ldap3's own response helpers (`SearchEntry::construct`, `RawControl::parse`,
//! `parse_controls`) panic on malformed input, so server data is read here with a small
//! BER reader and non-panicking walks over `StructureTag`s that return errors instead.
//! (ldap3's connection task itself decodes the response envelope; a panic there ends that
//! spawned task only, and the pending operation then fails with an error.)
//!
//! TLS: certificate verification is on by default (the system roots, through ldap3's
//! rustls configuration). [`ConnectOptions::danger_skip_tls_verify`] turns it off and is
//! meant for tests against self-signed lab servers only; it is not reachable from the
//! configuration file. `ca_file` adds the certificates of a PEM file to the system roots
//! ([`tls_config`]); verification stays on, and an unreadable or empty file is a
//! configuration error.

use std::time::Duration;

use futures_util::StreamExt;
use ldap3::asn1::{StructureTag, TagClass, PL};
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchOptions};
use smallvec::SmallVec;

use super::wire::Wire;
use crate::config::{SourceConfig, Tls};
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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(30),
            danger_skip_tls_verify: false,
        }
    }
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
    ldap: Ldap,
    timeout: Duration,
    url: String,
    /// How to open [`Self::bulk`], kept for the first paged search.
    cfg: SourceConfig,
    opts: ConnectOptions,
    /// A second connection for paged searches, read by the lean [`Wire`] reader.
    bulk: Option<Wire>,
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
        let password = cfg.password.resolve("source.password")?;
        let mut settings = LdapConnSettings::new().set_conn_timeout(opts.timeout);
        if let Some(ca) = &cfg.ca_file {
            settings = settings.set_config(tls_config(ca)?);
        }
        if cfg.tls == Tls::Starttls {
            settings = settings.set_starttls(true);
        }
        if opts.danger_skip_tls_verify {
            settings = settings.set_no_tls_verify(true);
        }
        let url = cfg.url.clone();
        let (conn, mut ldap) =
            match tokio::time::timeout(opts.timeout, LdapConnAsync::with_settings(settings, &url))
                .await
            {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    return Err(Error::Source(format!("cannot connect to {url}: {e}")));
                }
                Err(_) => {
                    return Err(Error::Source(format!(
                        "cannot connect to {url}: timed out after {:?}",
                        opts.timeout
                    )));
                }
            };
        let drive_url = url.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(url = %drive_url, error = %e, "ldap connection ended");
            }
        });
        let res = ldap
            .with_timeout(opts.timeout)
            .simple_bind(&cfg.bind_dn, password.expose())
            .await
            .map_err(|e| Error::Source(format!("bind to {url} as {}: {e}", cfg.bind_dn)))?;
        if res.rc != 0 {
            return Err(super::result::failure(
                &format!("bind to {url} as {} refused", cfg.bind_dn),
                res.rc,
                &res.text,
            ));
        }
        tracing::debug!(url = %url, bind_dn = %cfg.bind_dn, "bound to the source");
        Ok(LdapClient {
            ldap,
            timeout: opts.timeout,
            url,
            cfg: cfg.clone(),
            opts: opts.clone(),
            bulk: None,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
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
        let items = match self
            .search_items(base, scope, filter, attrs, controls)
            .await?
        {
            Ok(i) => i,
            Err(f) => return Ok(Err(f)),
        };
        let mut out = SearchOutcome {
            entries: Vec::with_capacity(items.items.len()),
            referrals: items.referrals,
            controls: items.controls,
        };
        for item in items.items {
            if let SearchItem::Entry { entry, .. } = item {
                out.entries.push(entry);
            }
        }
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
        let attrs: Vec<String> = attrs.iter().map(|s| (*s).to_string()).collect();
        if !controls.is_empty() {
            self.ldap.with_controls(controls);
        }
        let timeout = self.timeout;
        let started = self
            .ldap
            .with_timeout(timeout)
            .streaming_search(base, scope, filter, attrs)
            .await;
        let mut stream = started.map_err(|e| self.err(base, e))?;
        let mut out = ItemsOutcome::default();
        loop {
            let next = stream.next().await;
            match next {
                Ok(Some(re)) => {
                    if re.is_ref() {
                        out.referrals += 1;
                        continue;
                    }
                    let controls = re.1.into_iter().map(|c| (c.1.ctype, c.1.val)).collect();
                    if re.0.id == 25 {
                        let (name, value) = decode_intermediate(re.0)?;
                        out.items.push(SearchItem::Intermediate {
                            name,
                            value,
                            controls,
                        });
                        continue;
                    }
                    out.items.push(SearchItem::Entry {
                        entry: decode_entry(re.0)?,
                        controls,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = stream.finish().await;
                    return Err(self.err(base, e));
                }
            }
        }
        let res: LdapResult = stream.finish().await;
        if res.rc != 0 {
            return Ok(Err(LdapFailure {
                rc: res.rc,
                text: res.text.trim_end_matches('\0').trim().to_string(),
            }));
        }
        out.controls = res
            .ctrls
            .into_iter()
            .map(|c| (c.1.ctype, c.1.val))
            .collect();
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
    /// `entries` stay empty). It runs on a second connection read by [`Wire`], opened and
    /// bound on first use.
    pub async fn paged_each(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        controls: &[RawControl],
        page_size: i32,
        each: &mut (dyn FnMut(&EntryRef<'_>) -> Result<()> + Send),
    ) -> Result<SearchOutcome> {
        let bulk = match &mut self.bulk {
            Some(b) => b,
            None => self
                .bulk
                .insert(Wire::connect(&self.cfg, &self.opts).await?),
        };
        let res = bulk
            .paged_search(base, filter, attrs, controls, page_size, each)
            .await;
        match res {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(f)) => Err(super::result::failure(
                &format!("search {filter} under {base} on {}", self.url),
                f.rc,
                &f.text,
            )),
            Err(e) => {
                // The connection's state is unknown after an error: the next search reconnects.
                self.bulk = None;
                Err(e)
            }
        }
    }

    /// For each of `dns`, whether the entry there matches `filter`, or the server's refusal
    /// (noSuchObject for an entry gone since). One base search each, up to
    /// [`CONCURRENT_LOOKUPS`] at once on this connection: a thousand entries cost a few
    /// round trips, not a thousand.
    pub async fn base_matches(
        &self,
        dns: &[&str],
        filter: &str,
    ) -> Result<Vec<std::result::Result<bool, LdapFailure>>> {
        let timeout = self.timeout;
        // Collected first: a lazy `map` here makes the future not `Send` for every lifetime.
        let searches: Vec<_> = dns
            .iter()
            .copied()
            .map(|dn| {
                let mut ldap = self.ldap.clone();
                async move {
                    let res = ldap
                        .with_timeout(timeout)
                        .search(dn, Scope::Base, filter, vec!["1.1"])
                        .await;
                    (dn, res)
                }
            })
            .collect();
        let results: Vec<_> = futures_util::stream::iter(searches)
            .buffered(CONCURRENT_LOOKUPS)
            .collect()
            .await;
        results
            .into_iter()
            .map(|(dn, res)| {
                let ldap3::SearchResult(entries, res) = res.map_err(|e| self.err(dn, e))?;
                Ok(if res.rc == 0 {
                    Ok(entries.iter().any(|e| !e.is_ref()))
                } else {
                    Err(LdapFailure {
                        rc: res.rc,
                        text: res.text.trim_end_matches('\0').trim().to_string(),
                    })
                })
            })
            .collect()
    }

    /// True when at least one entry under `base` matches `filter` (asks for one entry).
    pub async fn exists(&mut self, base: &str, filter: &str) -> Result<bool> {
        self.ldap
            .with_search_options(SearchOptions::new().sizelimit(1));
        match self
            .search_raw(base, Scope::Subtree, filter, &["1.1"], Vec::new())
            .await?
        {
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

    /// Unbind and close. Errors are ignored: the connection is going away anyway.
    pub async fn close(mut self) {
        if let Some(bulk) = self.bulk.take() {
            bulk.close().await;
        }
        let _ = self.ldap.unbind().await;
    }

    fn err(&self, base: &str, e: LdapError) -> Error {
        match e {
            LdapError::Timeout { .. } => Error::Source(format!(
                "{}: search under {base} timed out after {:?}",
                self.url, self.timeout
            )),
            e => Error::Source(format!("{}: search under {base}: {e}", self.url)),
        }
    }
}

/// A readable name for common LDAP result codes.
pub fn result_name(rc: u32) -> String {
    let name = match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        _ => "error",
    };
    format!("{name} ({rc})")
}

/// Decode an IntermediateResponse: `[APPLICATION 25] SEQUENCE { responseName [0] LDAPOID
/// OPTIONAL, responseValue [1] OCTET STRING OPTIONAL }`.
fn decode_intermediate(t: StructureTag) -> Result<(Option<String>, Option<Vec<u8>>)> {
    let bad = |why: &str| {
        Error::Source(format!(
            "malformed intermediate response from the server: {why}"
        ))
    };
    if t.class != TagClass::Application || t.id != 25 {
        return Err(bad("not an IntermediateResponse"));
    }
    let parts = match t.payload {
        PL::C(parts) => parts,
        PL::P(b) if b.is_empty() => Vec::new(),
        PL::P(_) => return Err(bad("not constructed")),
    };
    let (mut name, mut value) = (None, None);
    for p in parts {
        if p.class != TagClass::Context {
            return Err(bad("unexpected element"));
        }
        let PL::P(b) = p.payload else {
            return Err(bad("constructed element"));
        };
        match p.id {
            0 => name = Some(String::from_utf8(b).map_err(|_| bad("name is not UTF-8"))?),
            1 => value = Some(b),
            _ => return Err(bad("unknown element")),
        }
    }
    Ok((name, value))
}

/// Decode a SearchResultEntry (`[APPLICATION 4] SEQUENCE { objectName, attributes }`).
fn decode_entry(t: StructureTag) -> Result<RawEntry> {
    let bad = |why: &str| Error::Source(format!("malformed search entry from the server: {why}"));
    if t.class != TagClass::Application || t.id != 4 {
        return Err(bad("not a SearchResultEntry"));
    }
    let PL::C(parts) = t.payload else {
        return Err(bad("entry is not constructed"));
    };
    let mut parts = parts.into_iter();
    let dn = match parts.next().map(|p| p.payload) {
        Some(PL::P(b)) => String::from_utf8(b).map_err(|_| bad("DN is not UTF-8"))?,
        _ => return Err(bad("no DN")),
    };
    let list = match parts.next().map(|p| p.payload) {
        Some(PL::C(l)) => l,
        None => Vec::new(),
        Some(PL::P(b)) if b.is_empty() => Vec::new(),
        Some(PL::P(_)) => return Err(bad("attribute list is not a sequence")),
    };
    let mut attrs = Vec::with_capacity(list.len());
    for a in list {
        let PL::C(pa) = a.payload else {
            return Err(bad("attribute is not a sequence"));
        };
        let mut pa = pa.into_iter();
        let name = match pa.next().map(|p| p.payload) {
            Some(PL::P(b)) => String::from_utf8(b).map_err(|_| bad("attribute name"))?,
            _ => return Err(bad("attribute without a name")),
        };
        let values = match pa.next().map(|p| p.payload) {
            Some(PL::C(vs)) => {
                let mut out = Vec::with_capacity(vs.len());
                for v in vs {
                    match v.payload {
                        PL::P(b) => out.push(b),
                        PL::C(_) => return Err(bad("attribute value is constructed")),
                    }
                }
                out
            }
            Some(PL::P(b)) if b.is_empty() => Vec::new(),
            None => Vec::new(),
            Some(PL::P(_)) => return Err(bad("attribute values are not a set")),
        };
        attrs.push(RawAttr { name, values });
    }
    Ok(RawEntry { dn, attrs })
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

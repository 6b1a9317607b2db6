//! OpenLDAP (`kind = "openldap"`) and generic LDAP (`kind = "ldap"`) sources.
//!
//! * Full import: a paged search of the users filter, then of the groups filter, under
//!   `base_dn`. The anchor is `entryUUID` (operational: requested explicitly) as a
//!   lowercase hyphenated UUID; the generic kind falls back to `nsUniqueId` (389-DS),
//!   `ipaUniqueID` (FreeIPA) or `GUID` (eDirectory), and skips (and counts) entries with
//!   none of them. `member` (groupOfNames) and `uniqueMember` (groupOfUniqueNames) DNs are
//!   resolved to member anchors: from the import's own DN -> anchor map, else with a
//!   base-scope lookup (members outside the filters or scope are still anchors); DNs that
//!   name no entry are dropped and counted.
//! * Delta (OpenLDAP only): an RFC 4533 refreshOnly search with the cursor's cookie. The
//!   Sync State control of each entry, the Sync Info intermediate messages and the Sync
//!   Done control are parsed here with [`super::ldap::ber`] (never with ldap3's
//!   `SyncState`/`SyncDone`/`parse_syncinfo`, which panic on malformed input).
//!
//! Mapping to [`Change`] (entries come whole, so every upsert is `whole: true`):
//! - state add(1) / modify(2) -> `Upsert`, members resolved;
//! - state delete(3) -> `Deleted { SyncDelete { phase: "delete" } }`;
//! - syncIdSet with refreshDeletes=TRUE -> `Deleted { SyncDelete { phase: "refreshDeletes" } }`;
//! - state present(0), syncIdSet with refreshDeletes=FALSE, and a refresh whose present
//!   phase ended (Sync Done refreshDeletes=FALSE, or a refreshPresent Sync Info) -> one
//!   `Present { anchors }` with every present UUID: the planner derives deletions as
//!   "known live anchors neither present nor upserted".
//!
//! Observed on slapd 2.5 (Debian 12) with syncprov:
//! - With a session log (`syncprov-sessionlog-source cn=accesslog`), a refresh from a cookie
//!   sends the changed entries whole (renames under their new DN), then the deletions as
//!   a syncIdSet with refreshDeletes=TRUE, and ends with refreshDeletes=TRUE. This also
//!   works across a restart of slapd.
//! - Without one, it sends the changed entries whole, the unchanged ones as present (both
//!   forms, a syncIdSet with refreshDeletes=FALSE and entries with state present, are
//!   handled), and ends with refreshDeletes=FALSE: deletions must be derived.
//! - With a session log, a refresh from an up-to-date cookie sends nothing and no present
//!   phase (refreshDeletes=TRUE). When the Sync Done carries no cookie, the old cookie stays
//!   the cursor.
//! - A refresh with an empty cookie sends every entry as add and ends with refreshDeletes
//!   TRUE (initial content: the consumer has nothing to delete).
//! - A cookie slapd cannot parse is not refused: it is treated as no cookie (the whole
//!   content, delete phase), which would hide deletions. Cookies are therefore checked
//!   for OpenLDAP's form ([`check_cookie`]) before they are sent; a refusal (result code
//!   4096 e-syncRefreshRequired, or a protocol error confirmed by a probe) is
//!   `SourceCookieRejected` too.

use std::collections::{BTreeSet, HashMap};

use ldap3::controls::RawControl;
use ldap3::Scope;
use uuid::Uuid;

use super::change::{Change, Read};
use super::dn::normalise_dn;
use super::ldap::{
    ber, AttrRef, ConnectOptions, EntryRef, LdapClient, LdapFailure, RawEntry, RawResponseControl,
    SearchItem,
};
use super::result::result_name;
use crate::config::{SourceConfig, SourceKind};
use crate::error::{Error, Result};
use smallvec::SmallVec;

use crate::log::event::{
    AttrName, AttrValue, Attrs, DeletionEvidence, ObjectKind, SourceInfoRecorded, SourceObject,
    Values,
};

/// RFC 4533 Sync Request control.
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
/// RFC 4533 Sync State control (on each entry).
pub const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
/// RFC 4533 Sync Done control (on the search result).
pub const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
/// RFC 4533 Sync Info intermediate response.
pub const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";
/// RFC 4533 result code e-syncRefreshRequired.
pub const E_SYNC_REFRESH_REQUIRED: u32 = 4096;

/// Sync Request mode refreshOnly.
const MODE_REFRESH_ONLY: u32 = 1;

/// Attributes never kept in imported objects: secrets, and the member values (they become
/// `members`).
const DROPPED_ATTRS: &[&str] = &["userpassword", "member", "uniquemember"];

/// Attributes whose values are always bytes.
const BINARY_ATTRS: &[&str] = &[
    "jpegphoto",
    "photo",
    "usercertificate",
    "cacertificate",
    "usersmimecertificate",
    "userpkcs12",
    "audio",
    "guid",
];

/// Which directory this is: decides the anchor attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// OpenLDAP: `entryUUID`, RFC 4533 deltas.
    OpenLdap,
    /// Any LDAPv3 server: `entryUUID`, else `nsUniqueId`, `ipaUniqueID`, `GUID`; full
    /// imports only.
    Generic,
}

impl Flavour {
    fn anchor_attrs(self) -> &'static [&'static str] {
        match self {
            Flavour::OpenLdap => &["entryUUID"],
            Flavour::Generic => &["entryUUID", "nsUniqueId", "ipaUniqueID", "GUID"],
        }
    }
}

/// Tuning.
#[derive(Clone, Debug)]
pub struct OpenLdapOptions {
    /// Entries per page of a full import. A server whose `size.pr` limit is lower refuses
    /// the page before sending anything, and the search asks again with smaller pages.
    pub page_size: i32,
}

impl Default for OpenLdapOptions {
    fn default() -> Self {
        // As `ldapsearch -E pr=1000` and AD's default MaxPageSize: half as many round trips
        // as 500, and slapd spends less per entry setting up each page.
        OpenLdapOptions { page_size: 1000 }
    }
}

/// Everything a full import returned: in scope or not (the caller's scope decides).
#[derive(Clone, Debug, Default)]
pub struct LdapFullImport {
    pub objects: Vec<SourceObject>,
    /// Search continuation references skipped.
    pub referrals_skipped: u64,
    /// Member DNs that name no entry, dropped.
    pub dangling_members: u64,
    /// Entries without any anchor attribute, skipped.
    pub without_anchor: u64,
}

/// What one RFC 4533 refresh returned.
#[derive(Clone, Debug, Default)]
pub struct SyncDelta {
    /// Upserts first (server order), then deletions, then at most one `Present`.
    pub changes: Vec<Change>,
    /// The cookie to continue from (the old one when the server sent none).
    pub cookie: Vec<u8>,
    pub referrals_skipped: u64,
    /// Member DNs that name no entry, dropped.
    pub dangling_members: u64,
    /// True when the refresh had a present phase (deletions are derived from `Present`).
    pub present_phase: bool,
}

/// The state of an entry in a Sync State control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncStateKind {
    Present,
    Add,
    Modify,
    Delete,
}

/// A parsed Sync State control value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncState {
    pub state: SyncStateKind,
    /// The entryUUID as an anchor (lowercase hyphenated).
    pub uuid: String,
    pub cookie: Option<Vec<u8>>,
}

/// A parsed Sync Done control value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncDone {
    pub cookie: Option<Vec<u8>>,
    pub refresh_deletes: bool,
}

/// A parsed Sync Info message value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncInfo {
    NewCookie(Vec<u8>),
    RefreshDelete {
        cookie: Option<Vec<u8>>,
        refresh_done: bool,
    },
    RefreshPresent {
        cookie: Option<Vec<u8>>,
        refresh_done: bool,
    },
    SyncIdSet {
        cookie: Option<Vec<u8>>,
        refresh_deletes: bool,
        /// Anchors (lowercase hyphenated UUIDs).
        uuids: Vec<String>,
    },
}

/// A bound connection to an OpenLDAP (or generic LDAP) server.
#[derive(Debug)]
pub struct OpenLdapSource {
    client: LdapClient,
    cfg: SourceConfig,
    opts: OpenLdapOptions,
    flavour: Flavour,
    /// The anchor attributes, in order: the pinned one (`[source] anchor`) alone, else the
    /// flavour's.
    anchors: Vec<String>,
    /// The attributes an import keeps ([`super::kept`]), dropped from the rest as entries
    /// are read: each record is then built at its final size.
    keep: Vec<String>,
}

impl OpenLdapSource {
    /// Connect and bind. The flavour follows `cfg.kind` (`ldap` is generic).
    pub async fn connect(
        cfg: &SourceConfig,
        conn: &ConnectOptions,
        opts: OpenLdapOptions,
    ) -> Result<OpenLdapSource> {
        let client = LdapClient::connect(cfg, conn).await?;
        let flavour = match cfg.kind {
            SourceKind::Ldap => Flavour::Generic,
            _ => Flavour::OpenLdap,
        };
        let anchors = match &cfg.anchor {
            Some(a) => vec![a.clone()],
            None => flavour
                .anchor_attrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
        };
        Ok(OpenLdapSource {
            client,
            cfg: cfg.clone(),
            opts,
            flavour,
            anchors,
            keep: super::kept(cfg),
        })
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    pub fn client(&mut self) -> &mut LdapClient {
        &mut self.client
    }

    /// Unbind and close.
    pub async fn close(self) {
        self.client.close().await;
    }

    /// Nothing like AD's tombstone lifetime or USN exists here.
    pub async fn source_info(&mut self) -> Result<SourceInfoRecorded> {
        Ok(SourceInfoRecorded {
            tombstone_lifetime_days: None,
            highest_usn: None,
        })
    }

    fn entry_attrs(&self) -> Vec<String> {
        let mut a = vec!["*".to_string()];
        a.extend(self.anchors.iter().cloned());
        // 389 DS's account lock is operational: `*` leaves it out. Servers that do not know
        // it ignore it (RFC 4511 4.5.1.8).
        a.push("nsAccountLock".into());
        // OpenLDAP ppolicy's lock, operational too: for a mapping of `active`.
        a.push("pwdAccountLockedTime".into());
        a
    }

    /// Every user and group matching the configured filters under `base_dn`.
    pub async fn full_import(&mut self) -> Result<LdapFullImport> {
        let attrs = self.entry_attrs();
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let mut out = LdapFullImport::default();
        let mut seen: foldhash::HashSet<String> = Default::default();
        let mut raw_members: Vec<(usize, Vec<String>)> = Vec::new();
        let base = self.cfg.base_dn.clone();
        let anchors = self.anchors.clone();
        let keep = &self.keep;
        for (kind, filter) in [
            (ObjectKind::User, self.cfg.users.clone()),
            (ObjectKind::Group, self.cfg.groups.clone()),
        ] {
            let started = std::time::Instant::now();
            // Entries become objects as they arrive, while the server sends the next ones.
            let (mut without_anchor, objects) = (0u64, &mut out.objects);
            let mut each = |entry: &EntryRef<'_>| {
                let Some(anchor) = anchor_in(entry, &anchors) else {
                    without_anchor += 1;
                    tracing::warn!(dn = %entry.dn, "entry without an anchor attribute skipped");
                    return Ok(());
                };
                if !seen.insert(anchor.clone()) {
                    return Ok(());
                }
                let idx = objects.len();
                if kind == ObjectKind::Group {
                    raw_members.push((idx, member_dns(entry)));
                }
                let attrs = to_attrs(&entry.attrs, keep);
                objects.push(SourceObject {
                    anchor,
                    kind,
                    dn: entry.dn.to_string(),
                    attrs,
                    members: BTreeSet::new(),
                });
                Ok(())
            };
            let res = self
                .client
                .paged_each(&base, &filter, &attrs, &[], self.opts.page_size, &mut each)
                .await?;
            out.without_anchor += without_anchor;
            out.referrals_skipped += res.referrals;
            tracing::debug!(
                ?kind,
                objects = out.objects.len(),
                ms = started.elapsed().as_millis(),
                "paged search"
            );
        }
        // Member DNs resolve through the imported objects first; no groups, no index.
        let mut cache: HashMap<String, Option<String>> = if raw_members.is_empty() {
            HashMap::new()
        } else {
            out.objects
                .iter()
                .map(|o| (normalise_dn(&o.dn), Some(o.anchor.clone())))
                .collect()
        };
        for (idx, dns) in raw_members {
            let (members, dangling) = self.resolve_members(&dns, &mut cache).await?;
            out.dangling_members += dangling;
            if let Some(o) = out.objects.get_mut(idx) {
                o.members = members;
            }
        }
        Ok(out)
    }

    /// Member DNs to anchors, through `cache` (normalised DN -> anchor, `None` for DNs
    /// known to name no entry) and base lookups. Returns the anchors and how many DNs were
    /// dangling.
    async fn resolve_members(
        &mut self,
        dns: &[String],
        cache: &mut HashMap<String, Option<String>>,
    ) -> Result<(BTreeSet<String>, u64)> {
        let mut members = BTreeSet::new();
        let mut dangling = 0;
        for dn in dns {
            let key = normalise_dn(dn);
            let anchor = match cache.get(&key) {
                Some(a) => a.clone(),
                None => {
                    let a = self.lookup_anchor(dn).await?;
                    cache.insert(key, a.clone());
                    a
                }
            };
            match anchor {
                Some(a) => {
                    members.insert(a);
                }
                None => {
                    dangling += 1;
                    tracing::debug!(member = %dn, "dangling member DN dropped");
                }
            }
        }
        Ok((members, dangling))
    }

    /// The anchor of the entry at `dn`; `None` when there is no such entry (or it has no
    /// anchor attribute).
    async fn lookup_anchor(&mut self, dn: &str) -> Result<Option<String>> {
        let attrs: Vec<&str> = self.anchors.iter().map(String::as_str).collect();
        let res = self
            .client
            .search_raw(dn, Scope::Base, "(objectClass=*)", &attrs, vec![])
            .await?;
        match res {
            Ok(o) => Ok(o
                .entries
                .first()
                .and_then(|e| anchor_in(&e.borrow(), &self.anchors))),
            // noSuchObject; invalidDNSyntax for a member value that is not a DN at all.
            Err(f) if f.rc == 32 || f.rc == 34 => Ok(None),
            Err(f) => Err(Error::Source(format!(
                "looking up member {dn} on {}: {} ({})",
                self.client.url(),
                result_name(f.rc),
                f.text
            ))),
        }
    }

    /// The kind of each entry sent by a refresh: a user when it matches the users filter
    /// (as the full import, which reads users first), else a group.
    async fn kinds_of(&mut self, entries: &[&RawEntry]) -> Result<Vec<ObjectKind>> {
        let dns: Vec<&str> = entries.iter().map(|e| e.dn.as_str()).collect();
        let matches = self.client.base_matches(&dns, &self.cfg.users).await?;
        Ok(entries
            .iter()
            .zip(matches)
            .map(|(entry, m)| match m {
                Ok(true) => ObjectKind::User,
                Ok(false) => ObjectKind::Group,
                // Gone again since the refresh: guess from the object classes.
                Err(_) => kind_from_classes(&entry.borrow()),
            })
            .collect())
    }

    /// The filter of the refresh: the configured users and groups.
    pub fn sync_filter(&self) -> String {
        format!("(|{}{})", paren(&self.cfg.users), paren(&self.cfg.groups))
    }

    /// A cookie for "now", from a refresh with an empty cookie (taken before a full import,
    /// so nothing changed during the import is missed). The refresh is of the base entry
    /// alone and asks for no attributes: the cookie names the database's state (its
    /// contextCSN), not the entries sent, so a subtree refresh would send every entry for
    /// nothing.
    pub async fn baseline_cookie(&mut self) -> Result<Vec<u8>> {
        let cookie = self.baseline_from(&[]).await?;
        if !is_389_native_cookie(&cookie) {
            return Ok(cookie);
        }
        // 389 DS answers a request without a cookie in its native mode (entries named by
        // nsUniqueId, cookies `host:port#binddn:base:filter#changenumber`), and a request
        // whose cookie starts with `rid=` in its OpenLDAP-compatible mode, when the Content
        // Sync plugin allows it (`--allow-openldap on`): entryUUIDs, the anchors of the full
        // import, and OpenLDAP-form cookies. dirsync supports that mode only, so full and
        // delta imports agree on every anchor; it asks for it here and refuses the native one
        // with the setting to change.
        let compat = self.baseline_from(b"rid=000").await?;
        if check_cookie(&compat).is_ok() {
            return Ok(compat);
        }
        Err(self.native_389_error())
    }

    async fn baseline_from(&mut self, start: &[u8]) -> Result<Vec<u8>> {
        let filter = self.sync_filter();
        let base = self.cfg.base_dn.clone();
        let res = self
            .client
            .search_items(
                &base,
                Scope::Base,
                &filter,
                &["1.1"],
                vec![sync_request(start)],
            )
            .await?;
        let out = match res {
            Ok(o) => o,
            // 389 DS with Content Sync in native mode only refuses the `rid=` cookie with
            // e-syncRefreshRequired ("Invalid session cookie"), measured on 389-ds-base 2.3.
            Err(f) if f.rc == E_SYNC_REFRESH_REQUIRED && !start.is_empty() => {
                return Err(self.native_389_error())
            }
            Err(f) => return Err(self.search_failure(&f, "the baseline refresh")),
        };
        let mut cookie = Vec::new();
        for item in &out.items {
            match item {
                SearchItem::Entry { controls, .. } => {
                    if let Some(s) = find_control(controls, SYNC_STATE_OID) {
                        if let Some(c) = self.parse(parse_sync_state(s))?.cookie {
                            cookie = c;
                        }
                    }
                }
                SearchItem::Intermediate { name, value, .. } => {
                    if let Some(info) = self.sync_info(name.as_deref(), value.as_deref())? {
                        if let Some(c) = info_cookie(&info) {
                            cookie = c.to_vec();
                        }
                    }
                }
            }
        }
        let done = self.sync_done(&out.controls)?;
        if let Some(c) = done.cookie {
            cookie = c;
        }
        if cookie.is_empty() {
            return Err(Error::Source(format!(
                "{}: the refresh returned no sync cookie (is the syncprov overlay on {}?)",
                self.client.url(),
                self.cfg.base_dn
            )));
        }
        Ok(cookie)
    }

    /// Changes since `cookie` (empty: everything) and the cookie to continue from.
    ///
    /// A non-empty cookie that is not an OpenLDAP cookie is refused with
    /// `SourceCookieRejected` before anything is sent: slapd treats a cookie it cannot parse
    /// as no cookie and answers with the whole content and a delete phase, which would hide
    /// every deletion since the cursor.
    pub async fn delta(&mut self, cookie: &[u8]) -> Result<SyncDelta> {
        if !cookie.is_empty() {
            if is_389_native_cookie(cookie) {
                return Err(self.native_389_error());
            }
            // Refused here, not by the server: the error must not say the source refused it.
            check_cookie(cookie).map_err(|why| {
                Error::CookieUnusable(format!(
                    "{}: not an OpenLDAP sync cookie: {why}",
                    self.client.url()
                ))
            })?;
        }
        let filter = self.sync_filter();
        let base = self.cfg.base_dn.clone();
        let attrs = self.entry_attrs();
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let res = self
            .client
            .search_items(
                &base,
                Scope::Subtree,
                &filter,
                &attrs,
                vec![sync_request(cookie)],
            )
            .await?;
        let out = match res {
            Ok(o) => o,
            Err(f) => return Err(self.refresh_failed(&f, cookie).await),
        };
        let mut next_cookie = cookie.to_vec();
        let mut upserts: Vec<(String, RawEntry)> = Vec::new();
        let mut deleted: Vec<(String, &'static str)> = Vec::new();
        let mut present: Vec<String> = Vec::new();
        let mut present_phase = false;
        for item in out.items {
            match item {
                SearchItem::Entry { entry, controls } => {
                    let Some(v) = find_control(&controls, SYNC_STATE_OID) else {
                        return Err(Error::Source(format!(
                            "{}: refresh entry {} has no Sync State control",
                            self.client.url(),
                            super::ldap::shown(&entry.dn)
                        )));
                    };
                    let state = self.parse(parse_sync_state(v))?;
                    if let Some(c) = state.cookie {
                        next_cookie = c;
                    }
                    match state.state {
                        SyncStateKind::Present => present.push(state.uuid),
                        SyncStateKind::Add | SyncStateKind::Modify => {
                            upserts.push((state.uuid, entry))
                        }
                        SyncStateKind::Delete => deleted.push((state.uuid, "delete")),
                    }
                }
                SearchItem::Intermediate { name, value, .. } => {
                    let Some(info) = self.sync_info(name.as_deref(), value.as_deref())? else {
                        continue;
                    };
                    if let Some(c) = info_cookie(&info) {
                        next_cookie = c.to_vec();
                    }
                    match info {
                        SyncInfo::NewCookie(_) | SyncInfo::RefreshDelete { .. } => {}
                        SyncInfo::RefreshPresent { .. } => present_phase = true,
                        SyncInfo::SyncIdSet {
                            refresh_deletes: true,
                            uuids,
                            ..
                        } => deleted.extend(uuids.into_iter().map(|u| (u, "refreshDeletes"))),
                        SyncInfo::SyncIdSet {
                            refresh_deletes: false,
                            uuids,
                            ..
                        } => present.extend(uuids),
                    }
                }
            }
        }
        let done = self.sync_done(&out.controls)?;
        if let Some(c) = done.cookie {
            next_cookie = c;
        }
        if !done.refresh_deletes {
            present_phase = true;
        }
        let mut delta = SyncDelta {
            cookie: next_cookie,
            referrals_skipped: out.referrals,
            present_phase,
            ..Default::default()
        };
        // Members: the entries of this refresh first, then lookups.
        let mut cache: HashMap<String, Option<String>> = upserts
            .iter()
            .map(|(u, e)| (normalise_dn(&e.dn), Some(u.clone())))
            .collect();
        let entries: Vec<&RawEntry> = upserts.iter().map(|(_, e)| e).collect();
        let kinds = self.kinds_of(&entries).await?;
        for ((uuid, entry), kind) in upserts.into_iter().zip(kinds) {
            let mut members = BTreeSet::new();
            let entry = entry.borrow();
            if kind == ObjectKind::Group {
                let dns = member_dns(&entry);
                let (m, dangling) = self.resolve_members(&dns, &mut cache).await?;
                delta.dangling_members += dangling;
                members = m;
            }
            delta.changes.push(Change::Upsert {
                object: SourceObject {
                    anchor: uuid,
                    kind,
                    dn: entry.dn.to_string(),
                    attrs: to_attrs(&entry.attrs, &self.keep),
                    members,
                },
                whole: true,
            });
        }
        for (anchor, phase) in deleted {
            delta.changes.push(Change::Deleted {
                anchor,
                evidence: DeletionEvidence::SyncDelete {
                    phase: phase.to_string(),
                },
            });
        }
        if present_phase {
            present.sort();
            present.dedup();
            delta.changes.push(Change::Present { anchors: present });
        }
        Ok(delta)
    }

    /// The error for a refresh the server refused. A non-empty cookie refused as a protocol
    /// error or unwillingness is confirmed bad by a probe with an empty cookie.
    async fn refresh_failed(&mut self, f: &LdapFailure, cookie: &[u8]) -> Error {
        if f.rc == E_SYNC_REFRESH_REQUIRED {
            return Error::SourceCookieRejected(format!(
                "{}: e-syncRefreshRequired (4096) {}",
                self.client.url(),
                f.text
            ));
        }
        if !cookie.is_empty() && matches!(f.rc, 2 | 53 | 80) {
            let base = self.cfg.base_dn.clone();
            let probe = self
                .client
                .search_items(
                    &base,
                    Scope::Base,
                    "(objectClass=*)",
                    &["1.1"],
                    vec![sync_request(&[])],
                )
                .await;
            if let Ok(Ok(_)) = probe {
                return Error::SourceCookieRejected(format!(
                    "{}: {} {}",
                    self.client.url(),
                    result_name(f.rc),
                    f.text
                ));
            }
        }
        self.search_failure(f, "the refresh")
    }

    fn search_failure(&self, f: &LdapFailure, what: &str) -> Error {
        super::result::failure(
            &format!("{what} under {} on {}", self.cfg.base_dn, self.client.url()),
            f.rc,
            &f.text,
        )
    }

    fn parse<T>(&self, r: std::result::Result<T, String>) -> Result<T> {
        r.map_err(|e| {
            Error::Source(format!(
                "{}: malformed sync message: {e}",
                self.client.url()
            ))
        })
    }

    fn sync_info(&self, name: Option<&str>, value: Option<&[u8]>) -> Result<Option<SyncInfo>> {
        if name.is_some_and(|n| n != SYNC_INFO_OID) {
            tracing::debug!(name = ?name, "unknown intermediate response ignored");
            return Ok(None);
        }
        let Some(v) = value else {
            return Err(Error::Source(format!(
                "{}: Sync Info message without a value",
                self.client.url()
            )));
        };
        self.parse(parse_sync_info(v)).map(Some)
    }

    fn sync_done(&self, controls: &[RawResponseControl]) -> Result<SyncDone> {
        match controls.iter().find(|(oid, _)| oid == SYNC_DONE_OID) {
            None => Err(Error::Source(format!(
                "{}: the refresh ended without a Sync Done control (is the syncprov overlay on {}?)",
                self.client.url(),
                self.cfg.base_dn
            ))),
            Some((_, None)) => Ok(SyncDone::default()),
            Some((_, Some(v))) => self.parse(parse_sync_done(v)),
        }
    }
}

/// The error for a 389 Directory Server whose Content Sync plugin answers in its own mode.
impl OpenLdapSource {
    fn native_389_error(&self) -> Error {
        Error::Config(format!(
            "source {} is a 389 Directory Server whose Content Sync plugin is in its native mode \
             (nsUniqueId sync UUIDs, `host:port#binddn:base:filter#changenumber` cookies), which \
             kind = \"openldap\" does not support: run `dsconf INSTANCE plugin contentsync set \
             --allow-openldap on` and restart the server",
            self.client.url()
        ))
    }
}

/// The attributes dirsync keeps for OpenLDAP and generic LDAP objects (inetOrgPerson and
/// groupOfNames): what the mapping reads (INTERFACE.md: userName from mail or uid, names,
/// title, department) and a few that identify an object to people.
pub const LDAP_ATTRIBUTES: &[&str] = &[
    "cn",
    "uid",
    "mail",
    "givenname",
    "sn",
    "displayname",
    "title",
    "departmentnumber",
    "ou",
    "o",
    "employeenumber",
    "employeetype",
    "telephonenumber",
    "mobile",
    "description",
    "preferredlanguage",
    // 389 DS account lock (operational there, requested explicitly): the mapping's `active`.
    "nsaccountlock",
    // OpenLDAP ppolicy's lock (operational, requested explicitly), for a mapped `active`.
    "pwdaccountlockedtime",
];

impl LdapFullImport {
    /// Say what the import dropped.
    fn log_dropped(&self) {
        if self.dangling_members > 0 {
            tracing::info!(
                dangling = self.dangling_members,
                "member DNs naming no entry dropped"
            );
        }
        if self.without_anchor > 0 {
            tracing::warn!(
                skipped = self.without_anchor,
                "entries without an anchor attribute skipped"
            );
        }
    }
}

impl super::Source for OpenLdapSource {
    fn cursor_kind(&self) -> &'static str {
        super::RFC4533_CURSOR
    }

    /// No tombstone lifetime or USN: nothing to record.
    fn info(&mut self) -> super::SourceFuture<'_, Option<SourceInfoRecorded>> {
        Box::pin(async { Ok(None) })
    }

    fn full(&mut self) -> super::SourceFuture<'_, Read> {
        Box::pin(async move {
            let cookie = self.baseline_cookie().await?;
            let full = self.full_import().await?;
            full.log_dropped();
            Ok(Read::Full {
                objects: full.objects,
                cookie,
                referrals: full.referrals_skipped,
            })
        })
    }

    fn delta<'a>(&'a mut self, cookie: &'a [u8]) -> super::SourceFuture<'a, Read> {
        Box::pin(async move {
            let d = OpenLdapSource::delta(self, cookie).await?;
            if d.dangling_members > 0 {
                tracing::info!(
                    dangling = d.dangling_members,
                    "member DNs naming no entry dropped"
                );
            }
            Ok(Read::Delta {
                changes: d.changes,
                cookie: d.cookie,
                referrals: d.referrals_skipped,
            })
        })
    }

    fn client(&mut self) -> &mut LdapClient {
        OpenLdapSource::client(self)
    }

    fn close(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(OpenLdapSource::close(*self))
    }
}

/// A generic LDAPv3 server (`kind = "ldap"`): full imports only. It has no change tracking,
/// so every import is full ([`super::ALWAYS_FULL_CURSOR`]): changes and deletions are
/// derived by the importer from the projection, and no cursor is recorded for it.
#[derive(Debug)]
pub struct GenericLdapSource(OpenLdapSource);

impl GenericLdapSource {
    /// `source`, connected with `kind = "ldap"` (the generic flavour).
    pub fn new(source: OpenLdapSource) -> GenericLdapSource {
        GenericLdapSource(source)
    }
}

impl super::Source for GenericLdapSource {
    fn cursor_kind(&self) -> &'static str {
        super::ALWAYS_FULL_CURSOR
    }

    fn info(&mut self) -> super::SourceFuture<'_, Option<SourceInfoRecorded>> {
        Box::pin(async { Ok(None) })
    }

    fn full(&mut self) -> super::SourceFuture<'_, Read> {
        Box::pin(async move {
            let full = self.0.full_import().await?;
            full.log_dropped();
            Ok(Read::Full {
                objects: full.objects,
                cookie: Vec::new(),
                referrals: full.referrals_skipped,
            })
        })
    }

    fn delta<'a>(&'a mut self, _cookie: &'a [u8]) -> super::SourceFuture<'a, Read> {
        Box::pin(async {
            Err(Error::Store(
                "internal: a delta was asked of a source without change tracking (kind = ldap)"
                    .into(),
            ))
        })
    }

    fn client(&mut self) -> &mut LdapClient {
        self.0.client()
    }

    fn close(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self.0.close())
    }
}

/// True when `cookie` is a 389 DS Content Sync cookie of its native mode:
/// `host:port#binddn:base:filter#changenumber` (three `#`-separated parts, the first a
/// `host:port`, the last a decimal change number). No OpenLDAP cookie has that form (its
/// `#` appear only inside CSNs, after `csn=`).
pub fn is_389_native_cookie(cookie: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(cookie) else {
        return false;
    };
    if text.contains("csn=") {
        return false;
    }
    let Some((head, rest)) = text.split_once('#') else {
        return false;
    };
    let Some((_middle, change)) = rest.rsplit_once('#') else {
        return false;
    };
    let port_ok = head
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && (change == "-1" || (!change.is_empty() && change.bytes().all(|b| b.is_ascii_digit())))
}

/// Checks that `cookie` has OpenLDAP's form: comma-separated `key=value` items (`rid`,
/// `sid`, `csn`, `delcsn`), with at least one `csn`, whose `;`-separated values are CSNs
/// (`YYYYmmddHHMMSS.uuuuuuZ#CCCCCC#SID#MMMMMM`, hex counters).
pub fn check_cookie(cookie: &[u8]) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(cookie).map_err(|_| "not UTF-8".to_string())?;
    let mut csns = 0;
    for item in text.split(',') {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not key=value"))?;
        match k.trim() {
            "csn" | "delcsn" => {
                for csn in v.split(';') {
                    if !is_csn(csn.trim()) {
                        return Err(format!("`{csn}` is not a CSN"));
                    }
                    if k.trim() == "csn" {
                        csns += 1;
                    }
                }
            }
            "rid" | "sid" => {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("bad {k} `{v}`"));
                }
            }
            other => return Err(format!("unknown item `{other}`")),
        }
    }
    if csns == 0 {
        return Err("no csn".into());
    }
    Ok(())
}

fn is_csn(s: &str) -> bool {
    let parts: Vec<&str> = s.split('#').collect();
    let [time, count, sid, modn] = parts.as_slice() else {
        return false;
    };
    let time = time.as_bytes();
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    time.len() == 22
        && time[..14].iter().all(u8::is_ascii_digit)
        && time[14] == b'.'
        && time[15..21].iter().all(u8::is_ascii_digit)
        && time[21] == b'Z'
        && hex(count, 6)
        && hex(sid, 3)
        && hex(modn, 6)
}

fn find_control<'a>(controls: &'a [RawResponseControl], oid: &str) -> Option<&'a [u8]> {
    controls
        .iter()
        .find(|(o, _)| o == oid)
        .map(|(_, v)| v.as_deref().unwrap_or(&[]))
}

fn info_cookie(info: &SyncInfo) -> Option<&[u8]> {
    match info {
        SyncInfo::NewCookie(c) => Some(c),
        SyncInfo::RefreshDelete { cookie, .. }
        | SyncInfo::RefreshPresent { cookie, .. }
        | SyncInfo::SyncIdSet { cookie, .. } => cookie.as_deref(),
    }
}

/// The anchor of an entry: the first anchor attribute of the flavour that it has.
pub fn entry_anchor(entry: &EntryRef<'_>, flavour: Flavour) -> Option<String> {
    flavour.anchor_attrs().iter().find_map(|a| {
        let v = entry.values(a)?.first()?;
        anchor_from_value(v)
    })
}

/// The anchor of an entry: the first of `attrs` that it has.
fn anchor_in(entry: &EntryRef<'_>, attrs: &[String]) -> Option<String> {
    attrs.iter().find_map(|a| {
        let v = entry.values(a)?.first()?;
        anchor_from_value(v)
    })
}

/// A UUID-like identifier to the anchor form: 16 raw bytes, or text whose hex digits make
/// a UUID (entryUUID, ipaUniqueID, 389-DS's `66446001-1dd211b2-...` nsUniqueId) as a
/// lowercase hyphenated UUID; other text lower-cased as is.
pub fn anchor_from_value(v: &[u8]) -> Option<String> {
    if let Ok(text) = std::str::from_utf8(v) {
        let text = text.trim();
        if let Some(u) = hex_uuid(text) {
            return Some(hyphenated(u));
        }
        if !text.is_empty() && v.len() != 16 {
            return Some(text.to_ascii_lowercase());
        }
    }
    let arr: [u8; 16] = v.try_into().ok()?;
    Some(hyphenated(Uuid::from_bytes(arr)))
}

/// `text` as a UUID when, hyphens left out, it is exactly 32 hex digits.
fn hex_uuid(text: &str) -> Option<Uuid> {
    let mut hex = [0u8; 32];
    let mut n = 0;
    for b in text.bytes().filter(|b| *b != b'-') {
        *hex.get_mut(n).filter(|_| b.is_ascii_hexdigit())? = b;
        n += 1;
    }
    (n == 32)
        .then(|| Uuid::try_parse_ascii(&hex).ok())
        .flatten()
}

fn hyphenated(u: Uuid) -> String {
    u.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_string()
}

/// The member DNs of a group entry (`member`, `uniqueMember` without its optional
/// `#'...'B` UID).
fn member_dns(entry: &EntryRef<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for a in &entry.attrs {
        let unique = a.name.eq_ignore_ascii_case("uniquemember");
        if !unique && !a.name.eq_ignore_ascii_case("member") {
            continue;
        }
        for v in &a.values {
            let s = String::from_utf8_lossy(v);
            let mut dn: &str = &s;
            if unique && dn.ends_with("'B") {
                if let Some(i) = dn.rfind("#'") {
                    dn = &dn[..i];
                }
            }
            if !dn.trim().is_empty() {
                out.push(dn.to_string());
            }
        }
    }
    out
}

fn kind_from_classes(entry: &EntryRef<'_>) -> ObjectKind {
    let group = entry.values("objectClass").is_some_and(|vs| {
        vs.iter().any(|v| {
            let c = String::from_utf8_lossy(v).to_ascii_lowercase();
            matches!(
                c.as_str(),
                "groupofnames" | "groupofuniquenames" | "posixgroup" | "groupofmembers" | "group"
            )
        })
    });
    if group {
        ObjectKind::Group
    } else {
        ObjectKind::User
    }
}

/// Server attributes to `Attrs`: lower-case names, secrets and member values left out,
/// binary attributes (and values that are not UTF-8) as bytes.
/// The attributes of `raw` that `keep` names (lower case), never a password or a member
/// list.
fn to_attrs(raw: &[AttrRef<'_>], keep: &[String]) -> Attrs {
    // The list is allocated once, at the size it keeps: one that grew step by step moved
    // twice, and one sized for every attribute read carried the room of those dropped.
    let names: SmallVec<[(usize, AttrName); 16]> = raw
        .iter()
        .enumerate()
        .map(|(i, a)| (i, a.lower_name()))
        .filter(|(_, n)| !DROPPED_ATTRS.contains(&n.as_str()) && keep.iter().any(|k| k == n))
        .collect();
    let mut out = Attrs::with_capacity(names.len());
    for (i, name) in names {
        let a = &raw[i];
        // `jpegPhoto;binary` and the like.
        let base = name.split(';').next().unwrap_or(&name);
        let binary = BINARY_ATTRS.contains(&base) || name.contains(";binary");
        let values = a
            .values
            .iter()
            .map(|v| match std::str::from_utf8(v) {
                Ok(s) if !binary => AttrValue::Text(s.into()),
                _ => AttrValue::Binary { b64: v.to_vec() },
            })
            .collect::<Values>();
        out.insert(name, values);
    }
    out
}

fn paren(filter: &str) -> String {
    let f = filter.trim();
    if f.starts_with('(') {
        f.to_string()
    } else {
        format!("({f})")
    }
}

/// The Sync Request control (critical), refreshOnly: SEQUENCE { ENUMERATED mode,
/// OCTET STRING cookie OPTIONAL, BOOLEAN reloadHint DEFAULT FALSE }.
pub fn sync_request(cookie: &[u8]) -> RawControl {
    let mut items = vec![ber::tlv(ber::ENUMERATED, &[MODE_REFRESH_ONLY as u8])];
    if !cookie.is_empty() {
        items.push(ber::tlv(ber::OCTET_STRING, cookie));
    }
    RawControl {
        ctype: SYNC_REQUEST_OID.to_string(),
        crit: true,
        val: Some(ber::sequence(&items)),
    }
}

fn uuid_anchor(b: &[u8]) -> std::result::Result<String, String> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| format!("a syncUUID must be 16 bytes, got {}", b.len()))?;
    Ok(Uuid::from_bytes(arr).hyphenated().to_string())
}

/// Sync State value: SEQUENCE { ENUMERATED state, OCTET STRING entryUUID (16 bytes),
/// OCTET STRING cookie OPTIONAL }.
pub fn parse_sync_state(v: &[u8]) -> std::result::Result<SyncState, String> {
    let (seq, _) = ber::expect(v, ber::SEQUENCE)?;
    let (st, rest) = ber::expect(seq, ber::ENUMERATED)?;
    let state = match ber::enumerated(st)? {
        0 => SyncStateKind::Present,
        1 => SyncStateKind::Add,
        2 => SyncStateKind::Modify,
        3 => SyncStateKind::Delete,
        n => return Err(format!("unknown sync state {n}")),
    };
    let (uuid, rest) = ber::expect(rest, ber::OCTET_STRING)?;
    let (cookie, _) = ber::optional(rest, ber::OCTET_STRING)?;
    Ok(SyncState {
        state,
        uuid: uuid_anchor(uuid)?,
        cookie: cookie.map(<[u8]>::to_vec),
    })
}

/// Sync Done value: SEQUENCE { OCTET STRING cookie OPTIONAL, BOOLEAN refreshDeletes
/// DEFAULT FALSE }.
pub fn parse_sync_done(v: &[u8]) -> std::result::Result<SyncDone, String> {
    let (seq, _) = ber::expect(v, ber::SEQUENCE)?;
    let (cookie, rest) = ber::optional(seq, ber::OCTET_STRING)?;
    let (del, _) = ber::optional(rest, ber::BOOLEAN)?;
    Ok(SyncDone {
        cookie: cookie.map(<[u8]>::to_vec),
        refresh_deletes: del.map(ber::boolean).transpose()?.unwrap_or(false),
    })
}

/// Sync Info value (implicit tags): CHOICE { newcookie [0] OCTET STRING, refreshDelete [1]
/// SEQUENCE { cookie OPTIONAL, refreshDone BOOLEAN DEFAULT TRUE }, refreshPresent [2] (the
/// same), syncIdSet [3] SEQUENCE { cookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE,
/// syncUUIDs SET OF OCTET STRING } }.
pub fn parse_sync_info(v: &[u8]) -> std::result::Result<SyncInfo, String> {
    let (tag, content, _) = ber::read_tlv(v)?;
    match tag {
        0x80 => Ok(SyncInfo::NewCookie(content.to_vec())),
        0xa1 | 0xa2 => {
            let (cookie, rest) = ber::optional(content, ber::OCTET_STRING)?;
            let (done, _) = ber::optional(rest, ber::BOOLEAN)?;
            let cookie = cookie.map(<[u8]>::to_vec);
            let refresh_done = done.map(ber::boolean).transpose()?.unwrap_or(true);
            Ok(if tag == 0xa1 {
                SyncInfo::RefreshDelete {
                    cookie,
                    refresh_done,
                }
            } else {
                SyncInfo::RefreshPresent {
                    cookie,
                    refresh_done,
                }
            })
        }
        0xa3 => {
            let (cookie, rest) = ber::optional(content, ber::OCTET_STRING)?;
            let (del, rest) = ber::optional(rest, ber::BOOLEAN)?;
            let (mut set, _) = ber::expect(rest, ber::SET)?;
            let mut uuids = Vec::new();
            while !set.is_empty() {
                let (u, more) = ber::expect(set, ber::OCTET_STRING)?;
                uuids.push(uuid_anchor(u)?);
                set = more;
            }
            Ok(SyncInfo::SyncIdSet {
                cookie: cookie.map(<[u8]>::to_vec),
                refresh_deletes: del.map(ber::boolean).transpose()?.unwrap_or(false),
                uuids,
            })
        }
        t => Err(format!("unknown Sync Info choice {t:#04x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
        0x07,
    ];

    #[test]
    fn sync_request_value() {
        let c = sync_request(b"rid=000,csn=x");
        assert!(c.crit);
        let v = c.val.unwrap();
        let (seq, rest) = ber::expect(&v, ber::SEQUENCE).unwrap();
        assert!(rest.is_empty());
        let (mode, rest) = ber::expect(seq, ber::ENUMERATED).unwrap();
        assert_eq!(mode, &[1]);
        let (cookie, rest) = ber::expect(rest, ber::OCTET_STRING).unwrap();
        assert_eq!(cookie, b"rid=000,csn=x");
        assert!(rest.is_empty());
        let empty = sync_request(b"").val.unwrap();
        assert_eq!(empty, vec![0x30, 3, 0x0a, 1, 1]);
    }

    #[test]
    fn sync_state_values() {
        let v = ber::sequence(&[
            ber::tlv(ber::ENUMERATED, &[2]),
            ber::tlv(ber::OCTET_STRING, &U1),
            ber::tlv(ber::OCTET_STRING, b"ck"),
        ]);
        let s = parse_sync_state(&v).unwrap();
        assert_eq!(s.state, SyncStateKind::Modify);
        assert_eq!(s.uuid, "12345678-9abc-4def-8001-020304050607");
        assert_eq!(s.cookie.as_deref(), Some(&b"ck"[..]));
        let v = ber::sequence(&[
            ber::tlv(ber::ENUMERATED, &[0]),
            ber::tlv(ber::OCTET_STRING, &U1),
        ]);
        assert_eq!(parse_sync_state(&v).unwrap().state, SyncStateKind::Present);
        // Malformed: unknown state, short UUID, truncated, wrong tags.
        for bad in [
            ber::sequence(&[
                ber::tlv(ber::ENUMERATED, &[9]),
                ber::tlv(ber::OCTET_STRING, &U1),
            ]),
            ber::sequence(&[
                ber::tlv(ber::ENUMERATED, &[1]),
                ber::tlv(ber::OCTET_STRING, &U1[..15]),
            ]),
            ber::sequence(&[ber::tlv(ber::ENUMERATED, &[1])]),
            ber::sequence(&[
                ber::tlv(ber::INTEGER, &[1]),
                ber::tlv(ber::OCTET_STRING, &U1),
            ]),
            vec![0x30, 0x10, 0x0a],
            vec![],
        ] {
            assert!(parse_sync_state(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sync_done_values() {
        let v = ber::sequence(&[ber::tlv(ber::OCTET_STRING, b"c"), ber::encode_boolean(true)]);
        assert_eq!(
            parse_sync_done(&v).unwrap(),
            SyncDone {
                cookie: Some(b"c".to_vec()),
                refresh_deletes: true
            }
        );
        assert_eq!(
            parse_sync_done(&ber::sequence(&[])).unwrap(),
            SyncDone::default()
        );
        let v = ber::sequence(&[ber::encode_boolean(true)]);
        assert!(parse_sync_done(&v).unwrap().refresh_deletes);
        assert!(parse_sync_done(&[0x30, 3, 1, 2, 0]).is_err());
        assert!(parse_sync_done(&[0x04, 0]).is_err());
    }

    #[test]
    fn sync_info_values() {
        assert_eq!(
            parse_sync_info(&ber::tlv(0x80, b"new")).unwrap(),
            SyncInfo::NewCookie(b"new".to_vec())
        );
        let set = ber::tlv(
            ber::SET,
            &[
                ber::tlv(ber::OCTET_STRING, &U1),
                ber::tlv(ber::OCTET_STRING, &[0u8; 16]),
            ]
            .concat(),
        );
        let v = ber::tlv(
            0xa3,
            &[
                ber::tlv(ber::OCTET_STRING, b"c"),
                ber::encode_boolean(true),
                set.clone(),
            ]
            .concat(),
        );
        assert_eq!(
            parse_sync_info(&v).unwrap(),
            SyncInfo::SyncIdSet {
                cookie: Some(b"c".to_vec()),
                refresh_deletes: true,
                uuids: vec![
                    "12345678-9abc-4def-8001-020304050607".into(),
                    "00000000-0000-0000-0000-000000000000".into()
                ]
            }
        );
        let v = ber::tlv(0xa3, &set);
        assert!(matches!(
            parse_sync_info(&v).unwrap(),
            SyncInfo::SyncIdSet {
                refresh_deletes: false,
                cookie: None,
                ..
            }
        ));
        assert_eq!(
            parse_sync_info(&ber::tlv(0xa2, &[])).unwrap(),
            SyncInfo::RefreshPresent {
                cookie: None,
                refresh_done: true
            }
        );
        assert!(matches!(
            parse_sync_info(&ber::tlv(0xa1, &ber::encode_boolean(false))).unwrap(),
            SyncInfo::RefreshDelete {
                refresh_done: false,
                ..
            }
        ));
        // Malformed.
        let short = ber::tlv(
            0xa3,
            &ber::tlv(ber::SET, &ber::tlv(ber::OCTET_STRING, &[1, 2])),
        );
        for bad in [
            short,
            ber::tlv(0xa3, &[]),
            ber::tlv(0xa4, &[]),
            vec![0xa3, 5, 0x31],
            vec![],
            ber::tlv(0xa1, &[1, 2, 0, 0]),
        ] {
            assert!(parse_sync_info(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cookies() {
        for good in [
            &b"rid=000,csn=20261124013615.123456Z#000000#000#000000"[..],
            b"rid=001,sid=002,csn=20261124013615.123456Z#000001#001#000000;20261124013615.123456Z#000000#002#000000",
            b"csn=20261124013615.123456Z#00000a#000#000000",
        ] {
            assert!(check_cookie(good).is_ok(), "{good:?}");
        }
        for bad in [
            &b"not a cookie"[..],
            b"rid=000",
            b"rid=000,csn=garbage",
            b"rid=000,csn=20261124013615Z#000000#000#000000",
            b"rid=0x,csn=20261124013615.123456Z#000000#000#000000",
            b"rid=000,csn=20261124013615.123456Z#000000#000#000000,x=1",
            &[0xff, 0xfe][..],
        ] {
            assert!(check_cookie(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cookies_of_389_native_mode() {
        for native in [
            &b"localhost:38901#cn=directory manager:dc=example,dc=com:(|(objectclass=inetorgperson)(objectclass=groupofnames))#7"[..],
            b"ds.example.com:389#uid=sync,ou=people,dc=x:dc=x:(objectClass=*)#0",
            b"h:1#::#-1",
        ] {
            assert!(is_389_native_cookie(native), "{native:?}");
            assert!(check_cookie(native).is_err());
        }
        for other in [
            &b"rid=000,csn=20261124013615.123456Z#000000#000#000000"[..],
            b"h#x#7",
            b"h:p#x#7",
            b"h:1#x#",
            b"not a cookie",
            &[0xff, 0xfe][..],
        ] {
            assert!(!is_389_native_cookie(other), "{other:?}");
        }
    }

    #[test]
    fn anchors_from_values() {
        assert_eq!(
            anchor_from_value(b"0C6F1A30-4A5B-103F-8E3E-C7B4D1E4F5A6").as_deref(),
            Some("0c6f1a30-4a5b-103f-8e3e-c7b4d1e4f5a6")
        );
        // 389-DS nsUniqueId.
        assert_eq!(
            anchor_from_value(b"66446001-1dd211b2-66225011-2ee211db").as_deref(),
            Some("66446001-1dd2-11b2-6622-50112ee211db")
        );
        assert_eq!(
            anchor_from_value(&U1).as_deref(),
            Some("12345678-9abc-4def-8001-020304050607")
        );
        assert_eq!(anchor_from_value(b"Opaque-1").as_deref(), Some("opaque-1"));
        // One hex digit too many, or one that is not hex: text, not a UUID.
        assert_eq!(
            anchor_from_value(b"0C6F1A30-4A5B-103F-8E3E-C7B4D1E4F5A6F").as_deref(),
            Some("0c6f1a30-4a5b-103f-8e3e-c7b4d1e4f5a6f")
        );
        assert_eq!(
            anchor_from_value(b"0C6F1A30-4A5B-103F-8E3E-C7B4D1E4F5AG").as_deref(),
            Some("0c6f1a30-4a5b-103f-8e3e-c7b4d1e4f5ag")
        );
        assert_eq!(anchor_from_value(b""), None);
    }

    #[test]
    fn members_and_attrs() {
        let owned = RawEntry::of(
            "cn=g,dc=x",
            &[
                ("member", &[b"uid=a,dc=x"]),
                ("uniqueMember", &[b"uid=b,dc=x#'0101'B", b"uid=c,dc=x"]),
                ("userPassword", &[b"secret"]),
                ("CN", &[b"g"]),
                ("jpegPhoto", &[b"abc"]),
                ("objectClass", &[b"groupOfUniqueNames"]),
            ],
        );
        let e = owned.borrow();
        assert_eq!(e.to_owned_entry(), owned);
        assert_eq!(
            member_dns(&e),
            vec!["uid=a,dc=x", "uid=b,dc=x", "uid=c,dc=x"]
        );
        let keep: Vec<String> = ["cn", "jpegphoto", "member", "userpassword", "uniquemember"]
            .map(String::from)
            .into();
        let a = to_attrs(&e.attrs, &keep);
        assert_eq!(a["cn"], vec![AttrValue::Text("g".into())]);
        assert!(matches!(a["jpegphoto"][0], AttrValue::Binary { .. }));
        assert!(!a.contains_key("userpassword") && !a.contains_key("member"));
        assert!(!a.contains_key("uniquemember"));
        // What the import does not keep is not read into the record at all.
        assert!(!a.contains_key("objectclass"));
        assert_eq!(a.len(), 2);
        assert_eq!(kind_from_classes(&e), ObjectKind::Group);
        assert_eq!(entry_anchor(&e, Flavour::Generic), None);
    }
}

//! Active Directory source: full import (paged, extended DNs, ranged member retrieval) and
//! delta import with the DirSync control.
//!
//! Anchors: `mS-DS-ConsistencyGuid` when set, else `objectGUID`, as a lowercase hyphenated
//! UUID (Microsoft mixed-endian bytes, `Uuid::from_bytes_le`). Entries are decoded from the
//! raw BER here (never through ldap3's `SearchEntry`), so a GUID whose bytes happen to be
//! valid UTF-8 is still read as bytes.
//!
//! Observed on Samba 4 (the lab's AD DC), worth knowing when reading a delta:
//! - Under DirSync, Samba honours the extended-DN control: member values, the entry DN and
//!   `lastKnownParent` come back as `<GUID=...>;<SID=...>;DN`; `lastKnownParent` comes back
//!   in that form even without the control. Members are therefore resolved from the GUID
//!   in the value; a plain DN is looked up only if a value has no GUID.
//! - DirSync returns `name` but not `cn` for new and renamed objects; since `cn` is the RDN
//!   of users and groups, it is filled in from `name` when the DN's RDN is `CN=`.
//! - Deleting a user does not report a `member;range=0-0` removal on its groups; the
//!   caller must drop a deleted anchor from groups itself.
//! - `whenChanged` is not returned by DirSync (it is not replicated); a tombstone's
//!   `deleted_at` is read with one show-deleted lookup per tombstone on incremental calls.
//! - Samba never sets DirSync's moreData; real AD does, and the loop follows it.
//! - A cookie Samba cannot parse is refused with unavailableCriticalExtension (12); AD
//!   answers unwillingToPerform (53) or similar. Either way the cookie is confirmed bad by
//!   a probe with an empty cookie before `Error::SourceCookieRejected` is returned.
//! - The DirSync base must be the naming context root (Samba: insufficientAccessRights
//!   "dN is not one of the naming context"), so the delta reads the whole naming context;
//!   the caller's scope decides what is in scope.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDateTime, Utc};
use ldap3::controls::RawControl;
use ldap3::Scope;
use uuid::Uuid;

use super::change::{Change, Read};
use super::ldap::{ber, AttrRef, ConnectOptions, EntryRef, LdapClient, RawEntry};
use super::result::result_name;
use crate::config::SourceConfig;
use crate::error::{Error, Result};
use crate::log::event::{
    AttrValue, Attrs, DeletionEvidence, ObjectKind, SourceInfoRecorded, SourceObject, Values,
};

pub const DIRSYNC_OID: &str = "1.2.840.113556.1.4.841";
pub const EXTENDED_DN_OID: &str = "1.2.840.113556.1.4.529";
pub const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
/// DirSync flag: report linked-value (member) changes one value at a time.
pub const LDAP_DIRSYNC_INCREMENTAL_VALUES: u32 = 0x8000_0000;
/// Days AD keeps tombstones when `tombstoneLifetime` is not set.
pub const DEFAULT_TOMBSTONE_LIFETIME_DAYS: u32 = 60;

/// Attributes left out of imported objects: they change without any change a target
/// cares about (logons, replication metadata) or are large and unmapped.
const VOLATILE_ATTRS: &[&str] = &[
    "usnchanged",
    "usncreated",
    "whenchanged",
    "lastlogon",
    "lastlogontimestamp",
    "lastlogoff",
    "logoncount",
    "badpwdcount",
    "badpasswordtime",
    "lockouttime",
    "pwdlastset",
    "dscorepropagationdata",
    "ntsecuritydescriptor",
    "replpropertymetadata",
    "msds-revealedusers",
];

/// Attributes whose values are always bytes, even when they happen to be valid UTF-8.
const BINARY_ATTRS: &[&str] = &[
    "objectguid",
    "objectsid",
    "ms-ds-consistencyguid",
    "sidhistory",
    "tokengroups",
    "thumbnailphoto",
    "jpegphoto",
    "usercertificate",
    "usersmimecertificate",
    "logonhours",
    "msexchmailboxguid",
    "msds-generationid",
    "parentguid",
    "ntsecuritydescriptor",
];

/// The attribute an AD anchor comes from when an object has it (else its objectGUID).
pub const CONSISTENCY_GUID: &str = "ms-DS-ConsistencyGuid";

/// Tuning. The defaults suit real AD (MaxPageSize 1000, MaxValRange 1500).
#[derive(Clone, Debug)]
pub struct AdOptions {
    /// Entries per page of a full import.
    pub page_size: i32,
    /// `None`: ask for `member;range=0-*` and follow the server's ranges. `Some(n)`: ask
    /// for `n` values at a time (used by tests to exercise ranged retrieval on Samba, which
    /// has no MaxValRange of its own).
    pub member_range_step: Option<u32>,
    /// DirSync maxBytes per response.
    pub dirsync_max_bytes: i32,
}

impl Default for AdOptions {
    fn default() -> Self {
        AdOptions {
            page_size: 500,
            member_range_step: None,
            dirsync_max_bytes: 1 << 20,
        }
    }
}

/// Everything a full import returned: in-scope or not (the caller's scope decides).
#[derive(Clone, Debug, Default)]
pub struct FullImport {
    pub objects: Vec<SourceObject>,
    /// Search continuation references skipped.
    pub referrals_skipped: u64,
}

/// An object that DirSync reports as created, changed, renamed or moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaObject {
    pub anchor: String,
    /// The objectGUID as an anchor-form string (differs from `anchor` when
    /// mS-DS-ConsistencyGuid is set).
    pub object_guid: String,
    /// Known when the server sent `objectClass` (new objects); else the caller knows it.
    pub kind: Option<ObjectKind>,
    /// The object's current DN.
    pub dn: String,
    /// True when the entry carried `objectClass`, i.e. the object is new to this cookie
    /// (or the cookie was empty): `attrs` is then the whole object, not just changes.
    pub new: bool,
    /// Changed attributes with all their values (lower-case names).
    pub attrs: Attrs,
}

/// One change reported by DirSync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaItem {
    Upsert(DeltaObject),
    Deleted {
        anchor: String,
        object_guid: String,
        /// The tombstone's DN (under CN=Deleted Objects).
        dn: String,
        evidence: DeletionEvidence,
    },
    /// Incremental member values of a group, as anchors.
    Members {
        anchor: String,
        dn: String,
        added: Vec<String>,
        removed: Vec<String>,
    },
}

/// What one delta import returned: the changes, in server order, and the new cookie.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    pub changes: Vec<DeltaItem>,
    pub cookie: Vec<u8>,
    /// Referrals skipped.
    pub referrals_skipped: u64,
}

/// The attributes dirsync keeps for AD objects: what the mapping reads (INTERFACE.md) and a
/// few that identify an object to people. Full and delta imports keep exactly these, so both
/// paths agree and the log grows only with change that matters to the target.
pub const AD_ATTRIBUTES: &[&str] = &[
    "cn",
    "samaccountname",
    "userprincipalname",
    "displayname",
    "givenname",
    "sn",
    "mail",
    "title",
    "department",
    "useraccountcontrol",
    "description",
    "employeeid",
    "telephonenumber",
    "ms-ds-consistencyguid",
];

impl From<DeltaItem> for Change {
    /// A DirSync change as the importer takes it. An upsert is the whole object only when
    /// it is new to the cookie and its kind is known; otherwise it holds the changed
    /// attributes of an object the importer knows (whose kind it keeps).
    fn from(item: DeltaItem) -> Change {
        match item {
            DeltaItem::Upsert(o) => Change::Upsert {
                whole: o.new && o.kind.is_some(),
                object: SourceObject {
                    anchor: o.anchor,
                    kind: o.kind.unwrap_or(ObjectKind::User),
                    dn: o.dn,
                    attrs: o.attrs,
                    members: Default::default(),
                },
            },
            DeltaItem::Deleted {
                anchor, evidence, ..
            } => Change::Deleted { anchor, evidence },
            DeltaItem::Members {
                anchor,
                added,
                removed,
                ..
            } => Change::Members {
                anchor,
                added,
                removed,
            },
        }
    }
}

/// A bound connection to an AD domain controller.
#[derive(Debug)]
pub struct AdSource {
    client: LdapClient,
    cfg: SourceConfig,
    opts: AdOptions,
    /// Whether anchors come from ms-DS-ConsistencyGuid, when the anchor check said so.
    consistency: Option<bool>,
}

impl AdSource {
    /// Connect and bind.
    pub async fn connect(
        cfg: &SourceConfig,
        conn: &ConnectOptions,
        opts: AdOptions,
    ) -> Result<AdSource> {
        let client = LdapClient::connect(cfg, conn).await?;
        Ok(AdSource {
            client,
            cfg: cfg.clone(),
            opts,
            consistency: None,
        })
    }

    pub fn client(&mut self) -> &mut LdapClient {
        &mut self.client
    }

    /// Unbind and close.
    pub async fn close(self) {
        self.client.close().await;
    }

    /// Every user and group matching the configured filters under `base_dn`.
    pub async fn full_import(&mut self) -> Result<FullImport> {
        let member_attr = match self.opts.member_range_step {
            None => "member;range=0-*".to_string(),
            Some(n) => format!("member;range=0-{}", n.max(1) - 1),
        };
        let attrs = ["*", member_attr.as_str()];
        let controls = [extended_dn_control()];
        let mut out = FullImport::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        // (object index, DN, the member values its entry came with)
        let mut groups: Vec<(usize, String, FirstMembers)> = Vec::new();
        let base = self.cfg.base_dn.clone();
        let page_size = self.opts.page_size;
        for (kind, filter) in [
            (ObjectKind::User, self.cfg.users.clone()),
            (ObjectKind::Group, self.cfg.groups.clone()),
        ] {
            // Entries become objects as they arrive, while the server sends the next ones.
            let objects = &mut out.objects;
            let mut each = |entry: &EntryRef<'_>| {
                let ext = ExtendedDn::parse(entry.dn);
                let ids = identity(entry, &ext)?;
                if seen.contains_key(&ids.anchor) {
                    return Ok(());
                }
                let idx = objects.len();
                if kind == ObjectKind::Group {
                    groups.push((idx, ext.dn.clone(), first_member_values(entry)));
                }
                objects.push(SourceObject {
                    anchor: ids.anchor.clone(),
                    kind,
                    attrs: to_attrs(&entry.attrs, &ext.dn, true),
                    dn: ext.dn,
                    members: BTreeSet::new(),
                });
                seen.insert(ids.anchor, idx);
                Ok(())
            };
            let res = self
                .client
                .paged_each(&base, &filter, &attrs, &controls, page_size, &mut each)
                .await?;
            out.referrals_skipped += res.referrals;
        }
        // Groups larger than the server's range limit: the rest of their members.
        let mut pending: Vec<(usize, Vec<Vec<u8>>)> = Vec::with_capacity(groups.len());
        for (idx, dn, (values, next_low)) in groups {
            pending.push((idx, self.more_member_values(values, next_low, &dn).await?));
        }
        // objectGUID -> anchor for imported objects (they differ under ConsistencyGuid).
        let by_guid: HashMap<String, String> = out
            .objects
            .iter()
            .filter_map(|o| {
                let g = o.attrs.get("objectguid")?.first()?;
                let AttrValue::Binary { b64 } = g else {
                    return None;
                };
                Some((guid_anchor(b64).ok()?, o.anchor.clone()))
            })
            .collect();
        for (idx, values) in pending {
            let mut members = BTreeSet::new();
            for v in values {
                let guid = self.member_guid(&v).await?;
                if let Some(g) = guid {
                    members.insert(by_guid.get(&g).cloned().unwrap_or(g));
                }
            }
            if let Some(o) = out.objects.get_mut(idx) {
                o.members = members;
            }
        }
        Ok(out)
    }

    /// `values`, the member values a group's entry came with, and the rest of them by
    /// ranged retrieval from `next_low` on (see [`first_member_values`]).
    async fn more_member_values(
        &mut self,
        mut values: Vec<Vec<u8>>,
        mut next_low: Option<u64>,
        dn: &str,
    ) -> Result<Vec<Vec<u8>>> {
        let mut rounds = 0u32;
        while let Some(low) = next_low.take() {
            rounds += 1;
            if rounds > 1_000_000 {
                return Err(Error::Source(format!(
                    "{dn}: ranged member retrieval did not end"
                )));
            }
            let want = match self.opts.member_range_step {
                None => format!("member;range={low}-*"),
                Some(n) => format!("member;range={low}-{}", low + u64::from(n.max(1)) - 1),
            };
            let res = self
                .client
                .search(
                    dn,
                    Scope::Base,
                    "(objectClass=*)",
                    &[want.as_str()],
                    vec![extended_dn_control()],
                )
                .await?;
            let Some(e) = res.entries.into_iter().next() else {
                return Err(Error::Source(format!(
                    "{dn}: the group vanished during ranged member retrieval"
                )));
            };
            for a in e.attrs {
                if let Some(MemberRange::Range { low: l, high }) = member_range(&a.name) {
                    if l != low {
                        return Err(Error::Source(format!(
                            "{dn}: asked for member values from {low}, got {}",
                            super::ldap::shown(&a.name)
                        )));
                    }
                    let got = a.values.len();
                    values.extend(a.values);
                    next_low = match high {
                        Some(h) if h < l => {
                            return Err(Error::SourceMisbehaved(format!(
                                "{}: ranged member retrieval of {dn} went back to {}",
                                self.client.url(),
                                super::ldap::shown(&a.name)
                            )))
                        }
                        Some(h) if got > 0 => Some(h + 1),
                        _ => None,
                    };
                    let max = self.client.limits().max_entries;
                    if values.len() as u64 > max {
                        return Err(Error::SourceMisbehaved(format!(
                            "{}: group {dn} has more than {max} members (source.max_entries)",
                            self.client.url()
                        )));
                    }
                }
            }
        }
        Ok(values)
    }

    /// The objectGUID (anchor form) of a member value: from `<GUID=...>` when present, else
    /// by looking the DN up. `None` when the DN no longer exists.
    async fn member_guid(&mut self, value: &[u8]) -> Result<Option<String>> {
        let text = String::from_utf8_lossy(value);
        let ext = ExtendedDn::parse(&text);
        if let Some(g) = ext.guid {
            return Ok(Some(g));
        }
        let res = self
            .client
            .search_raw(
                &ext.dn,
                Scope::Base,
                "(objectClass=*)",
                &["objectGUID"],
                vec![],
            )
            .await?;
        match res {
            Ok(o) => Ok(o
                .entries
                .first()
                .and_then(|e| e.values("objectGUID"))
                .and_then(|v| v.first())
                .and_then(|b| guid_anchor(b).ok())),
            Err(f) if f.rc == 32 => Ok(None),
            Err(f) => Err(Error::Source(format!(
                "looking up member {}: {} ({})",
                ext.dn,
                result_name(f.rc),
                f.text
            ))),
        }
    }

    /// The naming context `base_dn` belongs to (DirSync's required base).
    pub async fn naming_context(&mut self) -> Result<String> {
        let root = self
            .client
            .root_dse(&["namingContexts", "defaultNamingContext"])
            .await?;
        let base = normalise(&self.cfg.base_dn);
        let mut best: Option<String> = None;
        for nc in root.values("namingContexts").unwrap_or(&[]) {
            let nc = String::from_utf8_lossy(nc).into_owned();
            let n = normalise(&nc);
            let under = base == n || base.ends_with(&format!(",{n}"));
            if under && best.as_ref().is_none_or(|b| b.len() < nc.len()) {
                best = Some(nc);
            }
        }
        best.or_else(|| root.text("defaultNamingContext"))
            .ok_or_else(|| {
                Error::Source(format!(
                    "{}: no naming context contains {}",
                    self.client.url(),
                    self.cfg.base_dn
                ))
            })
    }

    /// The DirSync filter: the configured users and groups, plus user and group tombstones
    /// (which lose objectCategory and most attributes, so they match no ordinary filter).
    pub fn dirsync_filter(&self) -> String {
        format!(
            "(|(&(isDeleted=TRUE)(|(objectClass=user)(objectClass=group))){}{})",
            paren(&self.cfg.users),
            paren(&self.cfg.groups)
        )
    }

    /// DirSync from `cookie` with `filter`, looping while the server has more: the entries,
    /// the new cookie and the referrals skipped.
    async fn dirsync_rounds(
        &mut self,
        nc: &str,
        filter: &str,
        cookie: &[u8],
    ) -> Result<(Vec<RawEntry>, Vec<u8>, u64)> {
        let mut entries: Vec<RawEntry> = Vec::new();
        let mut cookie = cookie.to_vec();
        let mut referrals = 0u64;
        let mut rounds = 0u32;
        let mut cookies: std::collections::HashSet<Vec<u8>> = Default::default();
        loop {
            rounds = rounds.saturating_add(1);
            let ctrls = vec![
                dirsync_control(
                    LDAP_DIRSYNC_INCREMENTAL_VALUES,
                    self.opts.dirsync_max_bytes,
                    &cookie,
                ),
                extended_dn_control(),
            ];
            let res = self
                .client
                .search_raw(nc, Scope::Subtree, filter, &["*"], ctrls)
                .await?;
            let page = match res {
                Ok(p) => p,
                Err(f) => {
                    if !cookie.is_empty()
                        && matches!(f.rc, 1 | 2 | 12 | 53)
                        && self.dirsync_works(nc).await
                    {
                        return Err(Error::SourceCookieRejected(format!(
                            "{}: {} ({})",
                            self.client.url(),
                            result_name(f.rc),
                            f.text
                        )));
                    }
                    return Err(super::result::failure(
                        &format!("{}: DirSync search under {nc}", self.client.url()),
                        f.rc,
                        &f.text,
                    ));
                }
            };
            referrals += page.referrals;
            entries.extend(page.entries);
            let resp = page
                .controls
                .iter()
                .find(|(oid, _)| oid == DIRSYNC_OID)
                .and_then(|(_, v)| v.as_deref())
                .ok_or_else(|| {
                    Error::Source(format!(
                        "{}: DirSync response control missing",
                        self.client.url()
                    ))
                })?;
            let (more, new_cookie) = parse_dirsync_response(resp).map_err(|e| {
                Error::SourceMisbehaved(format!("{}: DirSync: {e}", self.client.url()))
            })?;
            cookie = new_cookie;
            if !more {
                break;
            }
            // Each round must move on: a cookie sent before, or more entries than a search
            // may bring, is a DirSync that would never end.
            let max = self.client.limits().max_entries;
            if !cookies.insert(cookie.clone()) {
                return Err(Error::SourceMisbehaved(format!(
                    "{}: DirSync went back to a cookie it had sent before, after {rounds} \
                     rounds: it would never end",
                    self.client.url()
                )));
            }
            if entries.len() as u64 + referrals > max || u64::from(rounds) > max {
                return Err(Error::SourceMisbehaved(format!(
                    "{}: DirSync brought more than {max} entries in {rounds} rounds \
                     (source.max_entries)",
                    self.client.url()
                )));
            }
        }

        Ok((entries, cookie, referrals))
    }

    /// A cookie for "now" without reading the directory: DirSync with a filter that matches
    /// nothing still returns a cookie. Taken just before a full import, it makes the next
    /// delta report exactly what changed since (changes during the import come again, and
    /// the diff against the log makes them no-ops).
    pub async fn baseline_cookie(&mut self) -> Result<Vec<u8>> {
        let nc = self.naming_context().await?;
        let (_, cookie, _) = self
            .dirsync_rounds(&nc, "(&(objectClass=user)(!(objectClass=user)))", &[])
            .await?;
        Ok(cookie)
    }

    /// Changes since `cookie` (empty: everything, as a baseline) and the new cookie.
    /// A cookie the server refuses is `Error::SourceCookieRejected`.
    pub async fn delta(&mut self, cookie: &[u8]) -> Result<Delta> {
        let nc = self.naming_context().await?;
        let filter = self.dirsync_filter();
        let incremental = !cookie.is_empty();
        let mut out = Delta::default();
        let (entries, next, referrals) = self.dirsync_rounds(&nc, &filter, cookie).await?;
        out.cookie = next;
        out.referrals_skipped = referrals;

        // Anchors differ from objectGUIDs only for objects with mS-DS-ConsistencyGuid: as
        // the anchor check found (a search for the attribute is a scan of the whole
        // directory on Samba), else asked here.
        let uses_consistency = match self.consistency {
            Some(c) => c,
            None => self.client.exists(&nc, "(mS-DS-ConsistencyGuid=*)").await?,
        };

        let mut guids: Vec<String> = Vec::new();
        let mut items: Vec<PendingItem> = Vec::new();
        for entry in entries {
            let ext = ExtendedDn::parse(&entry.dn);
            let ids = identity(&entry.borrow(), &ext)?;
            let deleted = entry
                .text("isDeleted")
                .is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
            if deleted {
                let lkp = entry
                    .text("lastKnownParent")
                    .map(|v| ExtendedDn::parse(&v).dn);
                let mut deleted_at = entry
                    .text("whenChanged")
                    .and_then(|t| parse_generalized_time(&t));
                if deleted_at.is_none() && incremental {
                    deleted_at = self.tombstone_time(&ids.object_guid).await;
                }
                items.push(PendingItem::Deleted {
                    anchor: ids.anchor,
                    object_guid: ids.object_guid,
                    dn: ext.dn,
                    evidence: DeletionEvidence::Tombstone {
                        deleted_at,
                        last_known_parent: lkp,
                    },
                });
                continue;
            }
            let mut added = Vec::new();
            let mut removed = Vec::new();
            for a in &entry.attrs {
                let target = match member_range(&a.name) {
                    Some(MemberRange::Range {
                        low: 1,
                        high: Some(1),
                    })
                    | Some(MemberRange::Plain) => &mut added,
                    Some(MemberRange::Range {
                        low: 0,
                        high: Some(0),
                    }) => &mut removed,
                    Some(_) => {
                        return Err(Error::Source(format!(
                            "{}: unexpected member range `{}` in a DirSync response",
                            super::ldap::shown(&ext.dn),
                            super::ldap::shown(&a.name)
                        )))
                    }
                    None => continue,
                };
                for v in &a.values {
                    target.push(v.clone());
                }
            }
            let is_new = entry.values("objectClass").is_some();
            let kind = entry.values("objectClass").and_then(|vs| {
                let has = |c: &str| vs.iter().any(|v| v.eq_ignore_ascii_case(c.as_bytes()));
                if has("group") {
                    Some(ObjectKind::Group)
                } else if has("user") {
                    Some(ObjectKind::User)
                } else {
                    None
                }
            });
            let mut attrs = to_attrs(&entry.borrow().attrs, &ext.dn, is_new);
            attrs.remove("parentguid");
            guids.push(ids.object_guid.clone());
            let has_attr_change = !attrs.is_empty();
            let has_members = !added.is_empty() || !removed.is_empty();
            if has_attr_change || !has_members {
                items.push(PendingItem::Upsert(DeltaObject {
                    anchor: ids.anchor.clone(),
                    object_guid: ids.object_guid.clone(),
                    kind,
                    dn: ext.dn.clone(),
                    new: is_new,
                    attrs,
                }));
            }
            if has_members {
                items.push(PendingItem::Members {
                    anchor: ids.anchor,
                    object_guid: ids.object_guid,
                    dn: ext.dn,
                    added,
                    removed,
                });
            }
        }

        // Member values -> objectGUIDs -> anchors.
        let mut member_guids: HashMap<Vec<u8>, Option<String>> = HashMap::new();
        for it in &items {
            if let PendingItem::Members { added, removed, .. } = it {
                for v in added.iter().chain(removed) {
                    if !member_guids.contains_key(v) {
                        let g = self.member_guid(v).await?;
                        if let Some(g) = &g {
                            guids.push(g.clone());
                        }
                        member_guids.insert(v.clone(), g);
                    }
                }
            }
        }
        let anchors = if uses_consistency {
            self.consistency_anchors(&nc, &guids).await?
        } else {
            HashMap::new()
        };
        let anchor_of = |g: &str| anchors.get(g).cloned().unwrap_or_else(|| g.to_string());
        for it in items {
            out.changes.push(match it {
                PendingItem::Upsert(mut o) => {
                    if o.anchor == o.object_guid {
                        o.anchor = anchor_of(&o.object_guid);
                    }
                    DeltaItem::Upsert(o)
                }
                PendingItem::Deleted {
                    anchor,
                    object_guid,
                    dn,
                    evidence,
                } => DeltaItem::Deleted {
                    anchor,
                    object_guid,
                    dn,
                    evidence,
                },
                PendingItem::Members {
                    anchor,
                    object_guid,
                    dn,
                    added,
                    removed,
                } => {
                    let conv = |vals: Vec<Vec<u8>>| -> Vec<String> {
                        vals.iter()
                            .filter_map(|v| member_guids.get(v).cloned().flatten())
                            .map(|g| anchor_of(&g))
                            .collect()
                    };
                    DeltaItem::Members {
                        anchor: if anchor == object_guid {
                            anchor_of(&object_guid)
                        } else {
                            anchor
                        },
                        dn,
                        added: conv(added),
                        removed: conv(removed),
                    }
                }
            });
        }
        Ok(out)
    }

    /// Does DirSync work here with an empty cookie? (Tells a bad cookie from a server that
    /// refuses DirSync altogether.) The filter matches nothing, so this is cheap.
    async fn dirsync_works(&mut self, nc: &str) -> bool {
        let filter =
            "(objectGUID=\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00)";
        let ctrls = vec![dirsync_control(
            LDAP_DIRSYNC_INCREMENTAL_VALUES,
            self.opts.dirsync_max_bytes,
            &[],
        )];
        matches!(
            self.client
                .search_raw(nc, Scope::Subtree, filter, &["objectGUID", "cn"], ctrls)
                .await,
            Ok(Ok(_))
        )
    }

    /// When a tombstone was made: its whenChanged, read with the show-deleted control.
    async fn tombstone_time(&mut self, object_guid: &str) -> Option<DateTime<Utc>> {
        let base = format!("<GUID={object_guid}>");
        let ctrls = vec![RawControl {
            ctype: SHOW_DELETED_OID.to_string(),
            crit: true,
            val: None,
        }];
        let res = self
            .client
            .search_raw(
                &base,
                Scope::Base,
                "(objectClass=*)",
                &["whenChanged"],
                ctrls,
            )
            .await
            .ok()?
            .ok()?;
        res.entries
            .first()?
            .text("whenChanged")
            .and_then(|t| parse_generalized_time(&t))
    }

    /// objectGUID -> anchor for those of `guids` that have mS-DS-ConsistencyGuid.
    async fn consistency_anchors(
        &mut self,
        nc: &str,
        guids: &[String],
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let mut unique: Vec<&String> = guids.iter().collect();
        unique.sort();
        unique.dedup();
        for chunk in unique.chunks(100) {
            let mut filter = String::from("(&(mS-DS-ConsistencyGuid=*)(|");
            for g in chunk {
                let Ok(u) = Uuid::parse_str(g) else { continue };
                filter.push_str("(objectGUID=");
                for b in u.to_bytes_le() {
                    filter.push_str(&format!("\\{b:02x}"));
                }
                filter.push(')');
            }
            filter.push_str("))");
            let res = self
                .client
                .paged_search(
                    nc,
                    &filter,
                    &["objectGUID", "mS-DS-ConsistencyGuid"],
                    &[],
                    self.opts.page_size,
                )
                .await?;
            for e in res.entries {
                let ext = ExtendedDn::parse(&e.dn);
                if let Ok(ids) = identity(&e.borrow(), &ext) {
                    out.insert(ids.object_guid, ids.anchor);
                }
            }
        }
        Ok(out)
    }

    /// The domain's tombstone lifetime and the server's highestCommittedUSN.
    pub async fn source_info(&mut self) -> Result<SourceInfoRecorded> {
        let root = self
            .client
            .root_dse(&["highestCommittedUSN", "configurationNamingContext"])
            .await?;
        let usn = root
            .text("highestCommittedUSN")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let config_nc = root.text("configurationNamingContext").ok_or_else(|| {
            Error::Source(format!(
                "{}: rootDSE has no configurationNamingContext (not AD?)",
                self.client.url()
            ))
        })?;
        let ds = format!("CN=Directory Service,CN=Windows NT,CN=Services,{config_nc}");
        let res = self
            .client
            .search(
                &ds,
                Scope::Base,
                "(objectClass=*)",
                &["tombstoneLifetime"],
                vec![],
            )
            .await?;
        let days = res
            .entries
            .first()
            .and_then(|e| e.text("tombstoneLifetime"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(DEFAULT_TOMBSTONE_LIFETIME_DAYS);
        Ok(SourceInfoRecorded {
            tombstone_lifetime_days: Some(days),
            highest_usn: usn,
        })
    }
}

enum PendingItem {
    Upsert(DeltaObject),
    Deleted {
        anchor: String,
        object_guid: String,
        dn: String,
        evidence: DeletionEvidence,
    },
    Members {
        anchor: String,
        object_guid: String,
        dn: String,
        added: Vec<Vec<u8>>,
        removed: Vec<Vec<u8>>,
    },
}

struct Identity {
    anchor: String,
    object_guid: String,
}

/// Anchor and objectGUID of an entry: objectGUID from the attribute, else from the
/// extended DN; mS-DS-ConsistencyGuid wins for the anchor.
/// The `member` values (extended DNs) a group's entry came with, and where ranged
/// retrieval goes on when the server sent only a first range.
type FirstMembers = (Vec<Vec<u8>>, Option<u64>);

/// The [`FirstMembers`] of a group's entry.
fn first_member_values(entry: &EntryRef<'_>) -> FirstMembers {
    let mut values = Vec::new();
    let mut next_low = None;
    for a in &entry.attrs {
        match member_range(a.name) {
            Some(MemberRange::Plain) => {}
            Some(MemberRange::Range { high, .. }) => next_low = high.map(|h| h + 1),
            _ => continue,
        }
        values.extend(a.values.iter().map(|v| v.to_vec()));
    }
    (values, next_low)
}

fn identity(entry: &EntryRef<'_>, ext: &ExtendedDn) -> Result<Identity> {
    let from_attr = entry
        .values("objectGUID")
        .and_then(|v| v.first())
        .map(|b| guid_anchor(b))
        .transpose()?;
    let object_guid = from_attr
        .or_else(|| ext.guid.clone())
        .ok_or_else(|| Error::Source(format!("entry {} has no objectGUID", ext.dn)))?;
    let consistency = entry
        .values("mS-DS-ConsistencyGuid")
        .and_then(|v| v.first())
        .filter(|b| b.len() == 16)
        .map(|b| guid_anchor(b))
        .transpose()?;
    Ok(Identity {
        anchor: consistency.unwrap_or_else(|| object_guid.clone()),
        object_guid,
    })
}

impl super::Source for AdSource {
    fn cursor_kind(&self) -> &'static str {
        super::DIRSYNC_CURSOR
    }

    fn info(&mut self) -> super::SourceFuture<'_, Option<SourceInfoRecorded>> {
        Box::pin(async move { self.source_info().await.map(Some) })
    }

    fn full(&mut self) -> super::SourceFuture<'_, Read> {
        Box::pin(async move {
            let cookie = self.baseline_cookie().await?;
            let full = self.full_import().await?;
            Ok(Read::Full {
                objects: full.objects,
                cookie,
                referrals: full.referrals_skipped,
            })
        })
    }

    fn delta<'a>(&'a mut self, cookie: &'a [u8]) -> super::SourceFuture<'a, Read> {
        Box::pin(async move {
            let d = AdSource::delta(self, cookie).await?;
            Ok(Read::Delta {
                changes: d.changes.into_iter().map(Change::from).collect(),
                cookie: d.cookie,
                referrals: d.referrals_skipped,
            })
        })
    }

    fn anchor_in_use(&mut self, attribute: Option<&str>) {
        self.consistency = attribute.map(|a| a.eq_ignore_ascii_case(CONSISTENCY_GUID));
    }

    fn client(&mut self) -> &mut LdapClient {
        AdSource::client(self)
    }

    fn close(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(AdSource::close(*self))
    }
}

/// A 16-byte Microsoft GUID (mixed-endian) as a lowercase hyphenated anchor.
pub fn guid_anchor(bytes: &[u8]) -> Result<String> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| {
        Error::Source(format!(
            "a GUID must be 16 bytes, the server sent {}",
            bytes.len()
        ))
    })?;
    Ok(Uuid::from_bytes_le(arr).hyphenated().to_string())
}

/// The 16 bytes (Microsoft mixed-endian) of an anchor, e.g. for Graph's
/// onPremisesImmutableId.
pub fn anchor_guid_bytes(anchor: &str) -> Result<[u8; 16]> {
    Uuid::parse_str(anchor)
        .map(|u| u.to_bytes_le())
        .map_err(|e| Error::BadInput(format!("`{anchor}` is not a GUID: {e}")))
}

/// A DN in AD's extended form `<GUID=...>;<SID=...>;DN`, or a plain DN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtendedDn {
    /// objectGUID as an anchor-form string.
    pub guid: Option<String>,
    pub sid: Option<String>,
    pub dn: String,
}

impl ExtendedDn {
    pub fn parse(s: &str) -> ExtendedDn {
        let mut out = ExtendedDn::default();
        let mut rest = s;
        while let Some(stripped) = rest.strip_prefix('<') {
            let Some(end) = stripped.find('>') else { break };
            let comp = &stripped[..end];
            if let Some((k, v)) = comp.split_once('=') {
                if k.eq_ignore_ascii_case("GUID") {
                    out.guid = parse_guid_text(v);
                } else if k.eq_ignore_ascii_case("SID") {
                    out.sid = Some(v.to_string());
                }
            }
            rest = &stripped[end + 1..];
            rest = rest.strip_prefix(';').unwrap_or(rest);
        }
        out.dn = rest.to_string();
        out
    }
}

/// A GUID as AD prints it in extended DNs: string form (flag 1) or hex of the 16 bytes
/// (flag 0).
fn parse_guid_text(v: &str) -> Option<String> {
    if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(Uuid::from_bytes_le(bytes).hyphenated().to_string());
    }
    Uuid::parse_str(v).ok().map(|u| u.hyphenated().to_string())
}

#[derive(Debug, PartialEq, Eq)]
enum MemberRange {
    Plain,
    /// `member;range=low-high`, `high` None for `*`.
    Range {
        low: u64,
        high: Option<u64>,
    },
    Other,
}

fn member_range(name: &str) -> Option<MemberRange> {
    let lower = name.to_ascii_lowercase();
    if lower == "member" {
        return Some(MemberRange::Plain);
    }
    let opts = lower.strip_prefix("member;")?;
    let Some(r) = opts.split(';').find_map(|o| o.strip_prefix("range=")) else {
        return Some(MemberRange::Other);
    };
    let Some((lo, hi)) = r.split_once('-') else {
        return Some(MemberRange::Other);
    };
    let Ok(low) = lo.parse() else {
        return Some(MemberRange::Other);
    };
    let high = if hi == "*" {
        None
    } else {
        match hi.parse() {
            Ok(h) => Some(h),
            Err(_) => return Some(MemberRange::Other),
        }
    };
    Some(MemberRange::Range { low, high })
}

/// Server attributes to `Attrs`: lower-case names, member values and volatile attributes
/// left out, binary attributes as bytes, extended DN values reduced to their DN, and `cn`
/// derived from `name` when the server left it out (Samba's DirSync does).
fn to_attrs(raw: &[AttrRef<'_>], dn: &str, keep_identity: bool) -> Attrs {
    let mut out = Attrs::with_capacity(raw.len());
    for a in raw {
        let name = a.lower_name();
        if member_range(&name).is_some() || VOLATILE_ATTRS.contains(&name.as_str()) {
            continue;
        }
        if !keep_identity && matches!(name.as_str(), "objectguid" | "instancetype") {
            continue;
        }
        let binary = BINARY_ATTRS.contains(&name.as_str());
        let values = a
            .values
            .iter()
            .map(|v| match std::str::from_utf8(v) {
                Ok(s) if !binary => {
                    if s.starts_with("<GUID=") {
                        AttrValue::Text(ExtendedDn::parse(s).dn.into())
                    } else {
                        AttrValue::Text(s.into())
                    }
                }
                _ => AttrValue::Binary { b64: v.to_vec() },
            })
            .collect::<Values>();
        out.insert(name, values);
    }
    if !out.contains_key("cn") {
        if let Some(name) = out.get("name").cloned() {
            let rdn_is_cn = dn.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("cn="));
            if rdn_is_cn {
                out.insert("cn".to_string(), name);
            }
        }
    }
    out
}

fn normalise(dn: &str) -> String {
    super::dn::normalise_dn(dn)
}

fn paren(filter: &str) -> String {
    let f = filter.trim();
    if f.starts_with('(') {
        f.to_string()
    } else {
        format!("({f})")
    }
}

/// `20240102030405.0Z` -> UTC time.
pub fn parse_generalized_time(s: &str) -> Option<DateTime<Utc>> {
    let head = s.get(..14)?;
    NaiveDateTime::parse_from_str(head, "%Y%m%d%H%M%S")
        .ok()
        .map(|n| n.and_utc())
}

/// The extended-DN control, string GUIDs: value SEQUENCE { INTEGER 1 }.
pub fn extended_dn_control() -> RawControl {
    RawControl {
        ctype: EXTENDED_DN_OID.to_string(),
        crit: false,
        val: Some(ber::sequence(&[ber::integer(1)])),
    }
}

/// The DirSync request control (critical): SEQUENCE { INTEGER flags (as i32),
/// INTEGER maxBytes, OCTET STRING cookie }.
pub fn dirsync_control(flags: u32, max_bytes: i32, cookie: &[u8]) -> RawControl {
    RawControl {
        ctype: DIRSYNC_OID.to_string(),
        crit: true,
        val: Some(ber::sequence(&[
            ber::integer(i64::from(flags as i32)),
            ber::integer(i64::from(max_bytes)),
            ber::tlv(ber::OCTET_STRING, cookie),
        ])),
    }
}

/// DirSync response value: SEQUENCE { INTEGER moreData, INTEGER unused, OCTET STRING
/// cookie } -> (more data, cookie).
pub fn parse_dirsync_response(v: &[u8]) -> std::result::Result<(bool, Vec<u8>), String> {
    let (seq, _) = ber::expect(v, ber::SEQUENCE)?;
    let (more, rest) = ber::expect(seq, ber::INTEGER)?;
    let (_unused, rest) = ber::expect(rest, ber::INTEGER)?;
    let (cookie, _) = ber::expect(rest, ber::OCTET_STRING)?;
    Ok((ber::int(more)? != 0, cookie.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirsync_items_become_changes() {
        let object = |new: bool, kind: Option<ObjectKind>| DeltaObject {
            anchor: "a".into(),
            object_guid: "g".into(),
            kind,
            dn: "CN=A,DC=x".into(),
            new,
            attrs: Attrs::default(),
        };
        let upsert = |whole: bool, kind: ObjectKind| Change::Upsert {
            object: SourceObject {
                anchor: "a".into(),
                kind,
                dn: "CN=A,DC=x".into(),
                attrs: Attrs::default(),
                members: Default::default(),
            },
            whole,
        };
        // Whole only when new to the cookie and of a known kind.
        let new_group = object(true, Some(ObjectKind::Group));
        assert_eq!(
            Change::from(DeltaItem::Upsert(new_group)),
            upsert(true, ObjectKind::Group)
        );
        assert_eq!(
            Change::from(DeltaItem::Upsert(object(false, Some(ObjectKind::Group)))),
            upsert(false, ObjectKind::Group)
        );
        assert_eq!(
            Change::from(DeltaItem::Upsert(object(true, None))),
            upsert(false, ObjectKind::User)
        );
        let evidence = DeletionEvidence::Tombstone {
            deleted_at: None,
            last_known_parent: Some("DC=x".into()),
        };
        assert_eq!(
            Change::from(DeltaItem::Deleted {
                anchor: "a".into(),
                object_guid: "g".into(),
                dn: "CN=A\\0ADEL:g,CN=Deleted Objects,DC=x".into(),
                evidence: evidence.clone(),
            }),
            Change::Deleted {
                anchor: "a".into(),
                evidence
            }
        );
        assert_eq!(
            Change::from(DeltaItem::Members {
                anchor: "a".into(),
                dn: "CN=A,DC=x".into(),
                added: vec!["b".into()],
                removed: vec!["c".into()],
            }),
            Change::Members {
                anchor: "a".into(),
                added: vec!["b".into()],
                removed: vec!["c".into()],
            }
        );
    }

    #[test]
    fn guid_is_mixed_endian() {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode("U2WFhJOgE0ezsBZnGSADvQ==")
            .unwrap();
        assert!(guid_anchor(&b).unwrap().starts_with("84856553-a093-4713-"));
        assert_eq!(
            anchor_guid_bytes(&guid_anchor(&b).unwrap())
                .unwrap()
                .to_vec(),
            b
        );
        assert!(guid_anchor(&b[..15]).is_err());
    }

    #[test]
    fn extended_dns() {
        let e = ExtendedDn::parse(
            "<GUID=7f0aaa17-c04d-4927-bf6c-71fb6f1a5985>;<SID=S-1-5-21-1-2-3-1103>;CN=u2,OU=Exp,DC=test,DC=lan",
        );
        assert_eq!(
            e.guid.as_deref(),
            Some("7f0aaa17-c04d-4927-bf6c-71fb6f1a5985")
        );
        assert_eq!(e.sid.as_deref(), Some("S-1-5-21-1-2-3-1103"));
        assert_eq!(e.dn, "CN=u2,OU=Exp,DC=test,DC=lan");
        let hex = ExtendedDn::parse("<GUID=17aa0a7f4dc02749bf6c71fb6f1a5985>;OU=X,DC=a");
        assert_eq!(
            hex.guid.as_deref(),
            Some("7f0aaa17-c04d-4927-bf6c-71fb6f1a5985")
        );
        assert_eq!(hex.dn, "OU=X,DC=a");
        let plain = ExtendedDn::parse("CN=x,DC=a");
        assert_eq!((plain.guid, plain.dn.as_str()), (None, "CN=x,DC=a"));
        // Malformed: no closing bracket, kept as the DN.
        assert_eq!(ExtendedDn::parse("<GUID=x").dn, "<GUID=x");
    }

    #[test]
    fn member_ranges() {
        assert_eq!(member_range("member"), Some(MemberRange::Plain));
        assert_eq!(
            member_range("member;range=0-1499"),
            Some(MemberRange::Range {
                low: 0,
                high: Some(1499)
            })
        );
        assert_eq!(
            member_range("Member;Range=1500-*"),
            Some(MemberRange::Range {
                low: 1500,
                high: None
            })
        );
        assert_eq!(member_range("member;range=x-1"), Some(MemberRange::Other));
        assert_eq!(member_range("memberOf"), None);
    }

    #[test]
    fn dirsync_values() {
        let c = dirsync_control(LDAP_DIRSYNC_INCREMENTAL_VALUES, 1 << 20, b"ck");
        let v = c.val.unwrap();
        // flags: 4 bytes 80 00 00 00
        assert_eq!(&v[2..8], &[2, 4, 0x80, 0, 0, 0]);
        let resp = ber::sequence(&[
            ber::integer(1),
            ber::integer(0),
            ber::tlv(ber::OCTET_STRING, b"next"),
        ]);
        assert_eq!(
            parse_dirsync_response(&resp).unwrap(),
            (true, b"next".to_vec())
        );
        assert!(parse_dirsync_response(&resp[..resp.len() - 1]).is_err());
        assert!(parse_dirsync_response(b"\x30\x00").is_err());
    }

    #[test]
    fn a_groups_first_member_values_tell_where_ranged_retrieval_goes_on() {
        let entry = |name: &str| {
            RawEntry::of(
                "CN=G,DC=a",
                &[
                    ("cn", &[b"G"]),
                    (name, &[b"<GUID=1>;CN=A", b"<GUID=2>;CN=B"]),
                ],
            )
        };
        let (values, next) = first_member_values(&entry("member;range=0-1").borrow());
        assert_eq!((values.len(), next), (2, Some(2)));
        assert_eq!(
            first_member_values(&entry("member;range=2-*").borrow()).1,
            None
        );
        let (values, next) = first_member_values(&entry("member").borrow());
        assert_eq!((values[1].as_slice(), next), (&b"<GUID=2>;CN=B"[..], None));
    }

    #[test]
    fn attrs_conversion() {
        let owned = RawEntry::of(
            "CN=Ann,DC=a",
            &[
                ("objectGUID", &[b"0123456789abcdef"]),
                ("name", &[b"Ann"]),
                (
                    "manager",
                    &[b"<GUID=7f0aaa17-c04d-4927-bf6c-71fb6f1a5985>;CN=B,DC=a"],
                ),
                ("member;range=1-1", &[b"x"]),
                ("uSNChanged", &[b"5"]),
            ],
        );
        let raw = owned.borrow().attrs;
        let a = to_attrs(&raw, "CN=Ann,DC=a", true);
        assert!(matches!(a["objectguid"][0], AttrValue::Binary { .. }));
        assert_eq!(a["manager"], vec![AttrValue::Text("CN=B,DC=a".into())]);
        assert_eq!(a["cn"], vec![AttrValue::Text("Ann".into())]);
        assert!(!a.contains_key("usnchanged"));
        assert!(!a.keys().any(|k| k.starts_with("member")));
        let b = to_attrs(&raw, "OU=Ann,DC=a", false);
        assert!(!b.contains_key("objectguid") && !b.contains_key("cn"));
    }

    #[test]
    fn generalized_time() {
        let t = parse_generalized_time("20261124003645.0Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T00:36:45+00:00");
        assert!(parse_generalized_time("2026").is_none());
    }
}

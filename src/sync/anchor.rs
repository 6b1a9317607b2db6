//! Source anchors that cannot flip (INTERFACE.md "Source anchor and scope").
//!
//! The anchor is the attribute whose value names a source object for its whole life: the
//! log, the ledger and the target's `externalId` are keyed by it. The attribute in use is
//! recorded in the log at the first import (`AnchorRecorded`). Before an import records
//! anything, the attribute the source would use now (the pin, else what the directory
//! offers) is compared with the recorded one ([`decide`], pure), and a sample of owned
//! objects is read again to see whether their values all changed ([`values_changed`],
//! pure): either change would re-key every object (each deleted and created again in the
//! target), so it is refused (exit 2, nothing written) until `dirsync anchors migrate --to
//! ATTR` re-keys the ledger in place ([`pair`], pure; [`migrate`] reads the source and
//! records `AnchorsMigrated`).

use std::collections::{HashMap, HashSet};

use ldap3::Scope;
use serde::Serialize;

use crate::config::{SourceConfig, SourceKind};
use crate::error::{Error, Result};
use crate::log::event::{stream, AnchorsMigrated, CursorInvalidated, Event, Rekey};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, NewEvent, Store};
use crate::project::replay;
use crate::project::State;
use crate::source::dn::normalise_dn;
use crate::source::ldap::EntryRef;
use crate::source::{ConnectOptions, LdapClient};

/// The AD anchor attributes: `ms-DS-ConsistencyGuid` means "where set, else objectGUID"
/// (what the AD source reads), `objectGUID` the objectGUID alone.
pub const AD_OBJECT_GUID: &str = "objectGUID";
pub const AD_CONSISTENCY_GUID: &str = crate::source::ad::CONSISTENCY_GUID;
/// The one anchor of `kind = "openldap"`: its RFC 4533 deltas name entries by it.
pub const ENTRY_UUID: &str = "entryUUID";
/// The anchors `kind = "ldap"` tries, in order, when none is pinned.
pub const LDAP_DEFAULTS: &[&str] = &[ENTRY_UUID, "nsUniqueId", "ipaUniqueID", "GUID"];

/// Owned objects read again before each import to see whether their anchors changed.
const SAMPLE: usize = 16;

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The pin `attr` for a source of `kind`, in its documented spelling, or why it cannot be.
pub fn pin_for(kind: SourceKind, attr: &str) -> std::result::Result<String, String> {
    let attr = attr.trim();
    let descr = attr.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !descr {
        return Err(format!("`{attr}` is not an attribute name"));
    }
    let known = |list: &[&str]| list.iter().find(|k| same(k, attr)).map(|k| k.to_string());
    match kind {
        SourceKind::Ad => known(&[AD_OBJECT_GUID, AD_CONSISTENCY_GUID]).ok_or_else(|| {
            format!("`{attr}`: kind = \"ad\" anchors on objectGUID or ms-DS-ConsistencyGuid")
        }),
        SourceKind::Openldap => known(&[ENTRY_UUID]).ok_or_else(|| {
            format!(
                "`{attr}`: kind = \"openldap\" anchors on entryUUID (its RFC 4533 deltas name \
                 entries by it); pin another attribute with kind = \"ldap\" (full imports)"
            )
        }),
        SourceKind::Ldap => Ok(known(LDAP_DEFAULTS).unwrap_or_else(|| attr.to_string())),
    }
}

/// What an import may do about the anchor attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is recorded yet: record this attribute with the import.
    Record(String),
    /// The recorded attribute is the one in use (or there is nothing to record yet).
    Keep,
    /// The import would re-key the objects: refused.
    Refuse(Refusal),
}

/// Why an import is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The attribute in use (or pinned) is not the recorded one.
    Changed {
        from: String,
        to: String,
        pinned: bool,
    },
    /// The source anchors on another attribute than the pinned one (AD, where
    /// ms-DS-ConsistencyGuid wins wherever it is set).
    PinNotInUse { pinned: String, in_use: String },
    /// Same attribute, but every owned object read again has another value.
    ValuesChanged { attribute: String, read: usize },
}

impl Refusal {
    /// The one line an operator reads: the change and what to run.
    pub fn message(&self) -> String {
        match self {
            Refusal::Changed { from, to, pinned } => format!(
                "the source anchor would change from {from} to {to}{}: every object would be \
                 deleted and created again in the target, so nothing was imported; run \
                 `dirsync anchors migrate --to {to}` to re-key the ledger in place{}",
                if *pinned {
                    " (pinned by [source] anchor)"
                } else {
                    ""
                },
                if *pinned {
                    format!(", or pin anchor = \"{from}\" again")
                } else {
                    format!(", or pin [source] anchor = \"{from}\" to keep it")
                }
            ),
            Refusal::PinNotInUse { pinned, in_use } => format!(
                "[source] anchor pins {pinned}, but the source anchors on {in_use} (set on some \
                 objects): nothing was imported; pin anchor = \"{in_use}\", or run `dirsync \
                 anchors migrate --to {in_use}` if {pinned} was recorded"
            ),
            Refusal::ValuesChanged { attribute, read } => format!(
                "every owned object read again ({read}) has another {attribute} than the log \
                 records (was the directory restored or re-created?): nothing was imported; \
                 run `dirsync anchors migrate --to {attribute}` to pair them by DN and re-key \
                 the ledger in place"
            ),
        }
    }
}

/// The decision, from the attribute recorded in the log, the one pinned by the
/// configuration and the one the source offers now (`None`: no entry in scope has one).
pub fn decide(recorded: Option<&str>, pin: Option<&str>, detected: Option<&str>) -> Decision {
    if let (Some(p), Some(d)) = (pin, detected) {
        if !same(p, d) {
            return Decision::Refuse(Refusal::PinNotInUse {
                pinned: p.to_string(),
                in_use: d.to_string(),
            });
        }
    }
    let now = pin.or(detected);
    match (recorded, now) {
        (None, Some(a)) => Decision::Record(a.to_string()),
        (Some(r), Some(n)) if !same(r, n) => Decision::Refuse(Refusal::Changed {
            from: r.to_string(),
            to: n.to_string(),
            pinned: pin.is_some(),
        }),
        _ => Decision::Keep,
    }
}

/// Whether the owned objects read again were all re-keyed: `sample` holds, for each owned
/// object found again in the source (by DN), its anchor in the ledger and the value the
/// source has now. None found: no evidence (the guard judges deletions).
pub fn values_changed(sample: &[(String, Option<String>)]) -> bool {
    let found: Vec<_> = sample
        .iter()
        .filter_map(|(old, new)| new.as_ref().map(|n| (old, n)))
        .collect();
    !found.is_empty() && found.iter().all(|(old, new)| old != new)
}

/// The anchor value of `entry` under `attr` for a source of `kind` (the same form the
/// sources produce).
pub fn anchor_value(kind: SourceKind, attr: &str, entry: &EntryRef<'_>) -> Option<String> {
    let first = |a: &str| entry.values(a).and_then(|v| v.first().copied());
    match kind {
        SourceKind::Ad => {
            let guid = |a: &str| {
                first(a)
                    .filter(|b| b.len() == 16)
                    .and_then(|b| crate::source::ad::guid_anchor(b).ok())
            };
            if same(attr, AD_CONSISTENCY_GUID) {
                guid(AD_CONSISTENCY_GUID).or_else(|| guid(AD_OBJECT_GUID))
            } else {
                guid(attr)
            }
        }
        SourceKind::Openldap | SourceKind::Ldap => {
            first(attr).and_then(crate::source::openldap::anchor_from_value)
        }
    }
}

/// The attributes to ask for to compute [`anchor_value`] of `attr`.
fn attrs_for(kind: SourceKind, attr: &str) -> Vec<String> {
    if kind == SourceKind::Ad && same(attr, AD_CONSISTENCY_GUID) {
        vec![AD_CONSISTENCY_GUID.into(), AD_OBJECT_GUID.into()]
    } else {
        vec![attr.to_string()]
    }
}

fn users_or_groups(cfg: &SourceConfig) -> String {
    let p = |f: &str| {
        if f.starts_with('(') {
            f.to_string()
        } else {
            format!("({f})")
        }
    };
    format!("(|{}{})", p(&cfg.users), p(&cfg.groups))
}

/// The attribute the source anchors on now: the pin when the source honours it, else what
/// the directory offers (`None`: no entry in scope has any anchor attribute).
pub async fn detect(client: &mut LdapClient, cfg: &SourceConfig) -> Result<Option<String>> {
    match cfg.kind {
        SourceKind::Ad => {
            if cfg
                .anchor
                .as_deref()
                .is_some_and(|p| same(p, AD_CONSISTENCY_GUID))
            {
                return Ok(Some(AD_CONSISTENCY_GUID.into()));
            }
            let any = client
                .exists(&cfg.base_dn, "(mS-DS-ConsistencyGuid=*)")
                .await?;
            Ok(Some(
                if any {
                    AD_CONSISTENCY_GUID
                } else {
                    AD_OBJECT_GUID
                }
                .into(),
            ))
        }
        SourceKind::Openldap => Ok(Some(ENTRY_UUID.into())),
        SourceKind::Ldap => {
            let filter = users_or_groups(cfg);
            let candidates: Vec<String> = match &cfg.anchor {
                Some(p) => vec![p.clone()],
                None => LDAP_DEFAULTS.iter().map(|s| s.to_string()).collect(),
            };
            for c in candidates {
                if client
                    .exists(&cfg.base_dn, &format!("(&{filter}({c}=*))"))
                    .await?
                {
                    return Ok(Some(c));
                }
            }
            Ok(None)
        }
    }
}

/// Whether every entry under the base that has an ms-DS-ConsistencyGuid has its own
/// objectGUID there (read whole: this runs once, when the attribute first appears).
async fn consistency_guids_are_object_guids(
    client: &mut LdapClient,
    cfg: &SourceConfig,
) -> Result<bool> {
    let mut all_same = true;
    client
        .paged_each(
            &cfg.base_dn,
            "(mS-DS-ConsistencyGuid=*)",
            &[AD_CONSISTENCY_GUID, AD_OBJECT_GUID],
            &[],
            500,
            &mut |e| {
                // Not anchor_value(.., AD_CONSISTENCY_GUID, ..): that falls back to the
                // objectGUID when the consistency GUID is no GUID.
                let raw = |a: &str| e.values(a).and_then(|v| v.first().copied());
                all_same &= raw(AD_OBJECT_GUID)
                    .is_some_and(|own| own.len() == 16 && raw(AD_CONSISTENCY_GUID) == Some(own));
                Ok(())
            },
        )
        .await?;
    Ok(all_same)
}

/// Up to [`SAMPLE`] owned objects live in the source projection (anchor, DN), in anchor
/// order so that every run reads the same ones.
fn owned_sample(state: &State) -> Vec<(String, String)> {
    let mut owned: Vec<(&String, &String)> = state
        .ledger
        .owned()
        .filter_map(|(a, _)| {
            let o = state.objects.objects.get(a)?;
            o.live().then_some((a, &o.dn))
        })
        .collect();
    owned.sort_unstable();
    owned
        .into_iter()
        .take(SAMPLE)
        .map(|(a, d)| (a.clone(), d.clone()))
        .collect()
}

/// What the checks before a run found: the attribute to record with the import (the first
/// import), if any, and the connection they were made on, which the run's first read of the
/// source uses instead of connecting and binding again. A retry after a conflicting append
/// checks again.
pub struct Checked {
    pub record: Option<String>,
    /// The attribute the run anchors on (recorded, pinned or detected), when there is one:
    /// the source reads anchors by it instead of working it out again.
    pub in_use: Option<String>,
    pub source: Option<Box<dyn crate::source::Source>>,
}

/// The check made on `client` before an import records anything: the attribute to record
/// with it (the first import) and the attribute in use, or the refusal as a configuration
/// error (exit 2).
pub async fn check(
    client: &mut LdapClient,
    cfg: &SourceConfig,
    state: &State,
) -> Result<(Option<String>, Option<String>)> {
    let recorded = state.objects.anchor_attribute.as_deref();
    let detected = detect(client, cfg).await?;
    let (attr, record) = match decide(recorded, cfg.anchor.as_deref(), detected.as_deref()) {
        Decision::Refuse(Refusal::Changed { from, to, .. })
            if cfg.kind == SourceKind::Ad
                && same(&from, AD_OBJECT_GUID)
                && same(&to, AD_CONSISTENCY_GUID)
                && consistency_guids_are_object_guids(client, cfg).await? =>
        {
            // Azure AD Connect writes each object's objectGUID into ms-DS-ConsistencyGuid:
            // no anchor value changes, so nothing is re-keyed and the new attribute is
            // simply recorded.
            (to.clone(), Some(to))
        }
        Decision::Refuse(r) => return Err(Error::Config(r.message())),
        Decision::Record(a) => (a.clone(), Some(a)),
        Decision::Keep => match recorded.or(detected.as_deref()) {
            Some(a) => (a.to_string(), None),
            None => return Ok((None, None)),
        },
    };
    // Are the values still those of the ledger? (Also when nothing was recorded yet: a log
    // older than the record may already own objects.)
    let asked = attrs_for(cfg.kind, &attr);
    let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
    let mut sample = Vec::new();
    for (anchor, dn) in owned_sample(state) {
        let now = match client
            .search_raw(&dn, Scope::Base, "(objectClass=*)", &asked, Vec::new())
            .await?
        {
            Ok(o) => o
                .entries
                .first()
                .and_then(|e| anchor_value(cfg.kind, &attr, &e.borrow())),
            // Gone or renamed: no evidence either way.
            Err(_) => None,
        };
        sample.push((anchor, now));
    }
    if values_changed(&sample) {
        let read = sample.iter().filter(|(_, n)| n.is_some()).count();
        return Err(Error::Config(
            Refusal::ValuesChanged {
                attribute: attr,
                read,
            }
            .message(),
        ));
    }
    Ok((record, Some(attr)))
}

/// One directory entry as `anchors migrate` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadEntry {
    pub dn: String,
    /// The value of the recorded attribute (`None` when pairing by DN, or it has none).
    pub old: Option<String>,
    /// The value of the new attribute.
    pub new: Option<String>,
}

/// An owned object `anchors migrate` cannot re-key, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unpaired {
    pub anchor: String,
    pub dn: String,
    pub why: String,
}

/// What a migration does: the ledger entries re-keyed, and the owned objects it cannot
/// re-key (each would be deleted and created again by the next sync).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairing {
    pub rekeyed: Vec<Rekey>,
    /// Owned objects whose anchor already is their value under the new attribute.
    pub unchanged: u64,
    pub unpaired: Vec<Unpaired>,
    /// Owned objects deleted in the source: left under their old anchor, for the next sync
    /// to delete from the target as before.
    pub deleted_in_source: u64,
}

/// Pair each ledger entry's anchor with the same entry's value under the new attribute:
/// by the old attribute's value when `by_value` (the attribute changes), else by DN (the
/// attribute stays, its values changed).
pub fn pair(state: &State, entries: &[ReadEntry], by_value: bool) -> Pairing {
    let mut by_old: HashMap<&str, &ReadEntry> = HashMap::new();
    let mut by_dn: HashMap<String, &ReadEntry> = HashMap::new();
    for e in entries {
        if let Some(o) = &e.old {
            by_old.insert(o, e);
        }
        by_dn.insert(normalise_dn(&e.dn), e);
    }
    let mut out = Pairing::default();
    let mut anchors: Vec<&String> = state.ledger.entries.keys().collect();
    anchors.sort_unstable();
    let mut taken: HashSet<String> = HashSet::new();
    for anchor in anchors {
        let Some(l) = state.ledger.entries.get(anchor) else {
            continue;
        };
        let owned = l.deleted.is_none();
        let record = state.objects.objects.get(anchor);
        let dn = record.map(|r| r.dn.clone()).unwrap_or_default();
        let found = if by_value {
            by_old.get(anchor.as_str()).copied()
        } else {
            record.and_then(|r| by_dn.get(&normalise_dn(&r.dn)).copied())
        };
        let unpaired = |why: String| Unpaired {
            anchor: anchor.clone(),
            dn: dn.clone(),
            why,
        };
        match found.map(|e| &e.new) {
            Some(Some(new)) if new == anchor => {
                out.unchanged += u64::from(owned);
                taken.insert(new.clone());
            }
            Some(Some(new)) => {
                if taken.contains(new) || state.ledger.entries.contains_key(new) {
                    if owned {
                        out.unpaired
                            .push(unpaired(format!("its new anchor {new} is already in use")));
                    }
                } else {
                    taken.insert(new.clone());
                    out.rekeyed.push(Rekey {
                        old: anchor.clone(),
                        new: new.clone(),
                    });
                }
            }
            Some(None) if owned => {
                out.unpaired.push(unpaired(
                    "the entry has no value of the new attribute".into(),
                ));
            }
            None if owned && record.is_some_and(|r| r.live()) => {
                out.unpaired.push(unpaired(if by_value {
                    "no entry in scope has this anchor".into()
                } else {
                    "no entry in scope has this DN".into()
                }));
            }
            None if owned => out.deleted_in_source += 1,
            _ => {}
        }
    }
    out
}

/// What `anchors migrate` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MigrateReport {
    pub from: Option<String>,
    pub to: String,
    pub rekeyed: u64,
    pub unchanged: u64,
    pub deleted_in_source: u64,
    pub unpaired: Vec<Unpaired>,
    /// The log's seq of the `AnchorsMigrated` event (0 when nothing was recorded).
    pub seq: u64,
}

/// How many unpaired objects a refusal names.
const NAMED: usize = 10;

/// `dirsync anchors migrate --to ATTR`: read every entry in scope, pair each ledger entry's
/// old anchor with its value under `to`, and record the re-keying (`AnchorsMigrated`,
/// with every instance's cursor invalidated so that the next import is full). Owned
/// objects that cannot be paired refuse the migration (exit 1) unless `allow_unpaired`.
pub async fn migrate(
    cfg: &SourceConfig,
    store: &AnyStore,
    to: &str,
    instance: &str,
    allow_unpaired: bool,
) -> Result<MigrateReport> {
    let to = pin_for(cfg.kind, to).map_err(|why| Error::BadInput(format!("--to: {why}")))?;
    if let Some(p) = &cfg.anchor {
        if !same(p, &to) {
            return Err(Error::Config(format!(
                "[source] anchor pins {p}: set anchor = \"{to}\" before migrating to {to}"
            )));
        }
    }
    let source_version = store.stream_version(stream::SOURCE).await?;
    let target_version = store.stream_version(stream::TARGET).await?;
    let state = replay::current(store).await?;
    let from = state.objects.anchor_attribute.clone();
    let mut client = LdapClient::connect(cfg, &ConnectOptions::default()).await?;
    let read = async {
        // Migrating to an attribute the source would not use leaves the next sync refused.
        let detected = detect(&mut client, cfg).await?;
        if let Some(d) = &detected {
            if !same(d, &to) {
                return Err(Error::Config(format!(
                    "the source anchors on {d}, not {to}: pin [source] anchor = \"{to}\" first"
                )));
            }
        }
        read_entries(&mut client, cfg, from.as_deref(), &to).await
    }
    .await;
    client.close().await;
    let (entries, by_value) = read?;
    let pairing = pair(&state, &entries, by_value);
    let mut report = MigrateReport {
        from: from.clone(),
        to: to.clone(),
        rekeyed: pairing.rekeyed.len() as u64,
        unchanged: pairing.unchanged,
        deleted_in_source: pairing.deleted_in_source,
        unpaired: pairing.unpaired.clone(),
        seq: 0,
    };
    if !pairing.unpaired.is_empty() && !allow_unpaired {
        let named: Vec<String> = pairing
            .unpaired
            .iter()
            .take(NAMED)
            .map(|u| format!("{} ({}): {}", u.anchor, u.dn, u.why))
            .collect();
        return Err(Error::Refused(format!(
            "{} owned object(s) cannot be paired with an anchor under {to}, nothing was \
             recorded (each would be deleted and created again): {}{}; fix them in the \
             source, or run again with --allow-unpaired to leave them under their old anchors",
            pairing.unpaired.len(),
            named.join("; "),
            if pairing.unpaired.len() > NAMED {
                ", ..."
            } else {
                ""
            }
        )));
    }
    // Already keyed by `to`, every one: nothing to record.
    if from.as_deref().is_some_and(|f| same(f, &to)) && pairing.rekeyed.is_empty() {
        return Ok(report);
    }
    let mut batch = vec![NewEvent::new(
        stream::SOURCE,
        instance.to_string(),
        Event::AnchorsMigrated(AnchorsMigrated {
            from,
            to,
            rekeyed: pairing.rekeyed,
            unpaired: pairing.unpaired.iter().map(|u| u.anchor.clone()).collect(),
        }),
    )];
    // The source projection still holds the old anchors: the next import is full, and
    // brings every object in under its new anchor.
    for inst in state.control.cursors.current.keys() {
        batch.push(NewEvent::new(
            stream::cursor(inst),
            inst.to_string(),
            Event::CursorInvalidated(CursorInvalidated {
                reason: "the source anchors were migrated: a full import brings every object \
                         in under its new anchor"
                    .into(),
            }),
        ));
    }
    let appended = store
        .append(
            Batch::new(batch)
                .expect(stream::SOURCE, Expected::Exactly(source_version))
                .expect(stream::TARGET, Expected::Exactly(target_version)),
        )
        .await?;
    report.seq = appended.last_seq();
    replay::current(store).await?;
    Ok(report)
}

/// Every entry in scope with its old and new anchor values, and whether they pair by value
/// (else by DN: the attribute stays, or none was recorded).
async fn read_entries(
    client: &mut LdapClient,
    cfg: &SourceConfig,
    from: Option<&str>,
    to: &str,
) -> Result<(Vec<ReadEntry>, bool)> {
    let by_value = from.is_some_and(|f| !same(f, to));
    let mut attrs = attrs_for(cfg.kind, to);
    if let (true, Some(f)) = (by_value, from) {
        attrs.extend(attrs_for(cfg.kind, f));
    }
    let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    let filter = users_or_groups(cfg);
    let kind = cfg.kind;
    let mut out = Vec::new();
    let mut each = |e: &EntryRef<'_>| {
        out.push(ReadEntry {
            dn: e.dn.to_string(),
            old: from
                .filter(|_| by_value)
                .and_then(|f| anchor_value(kind, f, e)),
            new: anchor_value(kind, to, e),
        });
        Ok(())
    };
    let base = cfg.base_dn.clone();
    client
        .paged_each(&base, &filter, &attrs, &[], 1000, &mut each)
        .await?;
    Ok((out, by_value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{ExportApplied, ExportOp, ObjectImported, ObjectKind, SourceObject};
    use crate::project::Meta;

    #[test]
    fn first_import_records_the_pin_or_what_the_source_offers() {
        assert_eq!(
            decide(None, None, Some("nsUniqueId")),
            Decision::Record("nsUniqueId".into())
        );
        assert_eq!(
            decide(None, Some("uid"), Some("uid")),
            Decision::Record("uid".into())
        );
        // An empty source pinned: the pin is recorded.
        assert_eq!(
            decide(None, Some("entryUUID"), None),
            Decision::Record("entryUUID".into())
        );
        assert_eq!(decide(None, None, None), Decision::Keep);
    }

    #[test]
    fn the_recorded_attribute_in_use_is_kept() {
        assert_eq!(
            decide(Some("entryUUID"), None, Some("entryUUID")),
            Decision::Keep
        );
        assert_eq!(
            decide(Some("entryUUID"), Some("entryuuid"), Some("EntryUUID")),
            Decision::Keep
        );
        // Nothing in scope has an anchor now: no evidence of a change (the guard judges).
        assert_eq!(decide(Some("nsUniqueId"), None, None), Decision::Keep);
    }

    #[test]
    fn another_attribute_is_refused_naming_the_change() {
        assert_eq!(
            decide(Some("nsUniqueId"), None, Some("entryUUID")),
            Decision::Refuse(Refusal::Changed {
                from: "nsUniqueId".into(),
                to: "entryUUID".into(),
                pinned: false
            })
        );
        assert_eq!(
            decide(Some("entryUUID"), Some("uid"), Some("uid")),
            Decision::Refuse(Refusal::Changed {
                from: "entryUUID".into(),
                to: "uid".into(),
                pinned: true
            })
        );
        // The pin differs from the record even when no entry has the pinned attribute.
        assert_eq!(
            decide(Some("entryUUID"), Some("uid"), None),
            Decision::Refuse(Refusal::Changed {
                from: "entryUUID".into(),
                to: "uid".into(),
                pinned: true
            })
        );
        let Decision::Refuse(r) = decide(Some("nsUniqueId"), None, Some("entryUUID")) else {
            panic!("not refused");
        };
        let m = r.message();
        assert!(m.contains("from nsUniqueId to entryUUID"), "{m}");
        assert!(
            m.contains("`dirsync anchors migrate --to entryUUID`"),
            "{m}"
        );
        assert!(!m.contains('\n'));
    }

    #[test]
    fn a_pin_the_source_does_not_honour_is_refused() {
        assert_eq!(
            decide(None, Some("objectGUID"), Some("ms-DS-ConsistencyGuid")),
            Decision::Refuse(Refusal::PinNotInUse {
                pinned: "objectGUID".into(),
                in_use: "ms-DS-ConsistencyGuid".into()
            })
        );
    }

    #[test]
    fn values_all_changed_is_evidence_of_a_rekey() {
        let s = |o: &str, n: Option<&str>| (o.to_string(), n.map(str::to_string));
        assert!(values_changed(&[s("a", Some("x")), s("b", Some("y"))]));
        assert!(values_changed(&[s("a", Some("x")), s("b", None)]));
        assert!(!values_changed(&[s("a", Some("a")), s("b", Some("y"))]));
        assert!(!values_changed(&[s("a", None)]));
        assert!(!values_changed(&[]));
    }

    #[test]
    fn pins_are_checked_per_kind() {
        assert_eq!(
            pin_for(SourceKind::Ad, "ms-ds-consistencyguid").as_deref(),
            Ok("ms-DS-ConsistencyGuid")
        );
        assert!(pin_for(SourceKind::Ad, "entryUUID").is_err());
        assert_eq!(
            pin_for(SourceKind::Openldap, "entryuuid").as_deref(),
            Ok("entryUUID")
        );
        assert!(pin_for(SourceKind::Openldap, "nsUniqueId").is_err());
        assert_eq!(
            pin_for(SourceKind::Ldap, "nsuniqueid").as_deref(),
            Ok("nsUniqueId")
        );
        assert_eq!(pin_for(SourceKind::Ldap, "uid").as_deref(), Ok("uid"));
        assert!(pin_for(SourceKind::Ldap, "").is_err());
        assert!(pin_for(SourceKind::Ldap, "u id").is_err());
    }

    fn state_with(objects: &[(&str, &str)], owned: &[&str]) -> State {
        let mut s = State::default();
        let mut seq = 0;
        let mut meta = || {
            seq += 1;
            Meta {
                seq,
                instance: "i",
                recorded_at_us: 0,
            }
        };
        for (anchor, dn) in objects {
            s.apply(
                &meta(),
                Event::ObjectImported(ObjectImported {
                    object: SourceObject {
                        anchor: anchor.to_string(),
                        kind: ObjectKind::User,
                        dn: dn.to_string(),
                        attrs: Default::default(),
                        members: Default::default(),
                    },
                    returned: false,
                }),
            );
        }
        for a in owned {
            s.apply(
                &meta(),
                Event::ExportApplied(ExportApplied {
                    epoch: 1,
                    anchor: a.to_string(),
                    kind: ObjectKind::User,
                    op: ExportOp::Create,
                    target_id: format!("t-{a}"),
                    state: None,
                    etag: None,
                }),
            );
        }
        s
    }

    fn entry(dn: &str, old: Option<&str>, new: Option<&str>) -> ReadEntry {
        ReadEntry {
            dn: dn.into(),
            old: old.map(Into::into),
            new: new.map(Into::into),
        }
    }

    #[test]
    fn pairs_by_the_old_value_and_reports_what_it_cannot_pair() {
        let s = state_with(
            &[
                ("a", "uid=a,dc=x"),
                ("b", "uid=b,dc=x"),
                ("c", "uid=c,dc=x"),
            ],
            &["a", "b", "c"],
        );
        let p = pair(
            &s,
            &[
                entry("uid=a,dc=x", Some("a"), Some("A")),
                entry("uid=b,dc=x", Some("b"), None),
                entry("uid=z,dc=x", Some("z"), Some("Z")),
            ],
            true,
        );
        assert_eq!(
            p.rekeyed,
            vec![Rekey {
                old: "a".into(),
                new: "A".into()
            }]
        );
        assert_eq!(
            p.unpaired,
            vec![
                Unpaired {
                    anchor: "b".into(),
                    dn: "uid=b,dc=x".into(),
                    why: "the entry has no value of the new attribute".into()
                },
                Unpaired {
                    anchor: "c".into(),
                    dn: "uid=c,dc=x".into(),
                    why: "no entry in scope has this anchor".into()
                },
            ]
        );
    }

    #[test]
    fn pairs_by_dn_when_the_attribute_stays() {
        let s = state_with(&[("a", "uid=a,dc=x"), ("b", "uid=b,dc=x")], &["a", "b"]);
        let p = pair(
            &s,
            &[
                entry("UID=A,DC=X", None, Some("a2")),
                entry("uid=b,dc=x", None, Some("b")),
            ],
            false,
        );
        assert_eq!(
            p.rekeyed,
            vec![Rekey {
                old: "a".into(),
                new: "a2".into()
            }]
        );
        assert_eq!(p.unchanged, 1);
        assert!(p.unpaired.is_empty());
    }

    #[test]
    fn a_migration_rekeys_the_ledger_keeping_target_ids() {
        let mut s = state_with(&[("a", "uid=a,dc=x"), ("b", "uid=b,dc=x")], &["a", "b"]);
        let before_a = s.ledger.entries.get("a").cloned();
        let before_b = s.ledger.entries.get("b").cloned();
        s.apply(
            &Meta {
                seq: 99,
                instance: "i",
                recorded_at_us: 0,
            },
            Event::AnchorsMigrated(AnchorsMigrated {
                from: Some("nsUniqueId".into()),
                to: "entryUUID".into(),
                rekeyed: vec![Rekey {
                    old: "a".into(),
                    new: "A".into(),
                }],
                unpaired: vec![],
            }),
        );
        assert_eq!(s.objects.anchor_attribute.as_deref(), Some("entryUUID"));
        assert!(!s.ledger.entries.contains_key("a"));
        let mut moved = before_a.unwrap();
        moved.state = None;
        assert_eq!(s.ledger.entries.get("A").cloned(), Some(moved));
        assert_eq!(s.ledger.entries.get("b").cloned(), before_b);
        // The source objects keep their anchors until the next full import.
        assert!(s.objects.objects.contains_key("a"));
    }

    #[test]
    fn a_taken_new_anchor_is_unpaired_and_a_deleted_object_keeps_its_anchor() {
        let mut s = state_with(
            &[
                ("a", "uid=a,dc=x"),
                ("b", "uid=b,dc=x"),
                ("c", "uid=c,dc=x"),
            ],
            &["a", "b", "c"],
        );
        s.apply(
            &Meta {
                seq: 50,
                instance: "i",
                recorded_at_us: 0,
            },
            Event::ObjectDeleted(crate::log::event::ObjectDeleted {
                anchor: "c".into(),
                evidence: crate::log::event::DeletionEvidence::AbsentFromFullImport {
                    run_id: "r".into(),
                },
            }),
        );
        let p = pair(
            &s,
            &[
                entry("uid=a,dc=x", Some("a"), Some("X")),
                entry("uid=b,dc=x", Some("b"), Some("X")),
            ],
            true,
        );
        assert_eq!(
            p.rekeyed,
            vec![Rekey {
                old: "a".into(),
                new: "X".into()
            }]
        );
        assert_eq!(p.unpaired.len(), 1, "{p:?}");
        assert_eq!(p.unpaired[0].anchor, "b");
        assert_eq!(p.unpaired[0].why, "its new anchor X is already in use");
        assert_eq!(p.deleted_in_source, 1);
    }
}

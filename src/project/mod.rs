//! Projections: everything but the log is a fold of the log.
//!
//! Each projection has one pure `apply(&mut self, &Meta, event)`; [`State`] holds them all,
//! and [`State::apply`] is the fold step: replay folds it over the log, snapshots store its
//! result, and commands read that. The source objects take the event by value (their values
//! move in); the small projections read it by reference.
//!
//! Reading the state (see [`replay`]): [`replay::current`] for the current state,
//! [`replay::at`] for the state as of a point of the log; [`replay::control`] for the
//! control projections alone (one stored row), [`replay::state_of`] for what the projections
//! hold of a few objects. Replay itself is [`replay::fold`].

pub mod carry;
pub mod replay;
pub mod snapshot;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::log::event::{
    Attrs, DeletionEvidence, Event, ExportOp, FailureReason, ObjectKind, SourceObject,
};
use crate::target::Mapped;

pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Where an event sits in the log: what `apply` may use besides the event itself.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    pub seq: u64,
    pub instance: &'a str,
    pub recorded_at_us: i64,
}

/// A point in the log: a sequence number and when it was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct At {
    pub seq: u64,
    pub at_us: i64,
}

impl From<&Meta<'_>> for At {
    fn from(m: &Meta<'_>) -> At {
        At {
            seq: m.seq,
            at_us: m.recorded_at_us,
        }
    }
}

/// Why and when an object stopped being live in scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub evidence: DeletionEvidence,
    pub at: At,
    pub instance: String,
}

/// One source object as the log knows it; deleted objects are kept, marked, for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub kind: ObjectKind,
    pub dn: String,
    pub attrs: Attrs,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub members: BTreeSet<String>,
    pub first_seen: At,
    pub last_changed: At,
    /// Boxed: most records are live, and a million of them would each carry the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<Box<Deletion>>,
}

impl ObjectRecord {
    pub fn live(&self) -> bool {
        self.deletion.is_none()
    }
}

/// Current source objects (and the deleted ones, marked).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceObjects {
    /// Boxed: the map's slots stay small, so a million-object map wastes little on its
    /// spare capacity and moves little when it grows.
    pub objects: FastMap<String, Box<ObjectRecord>>,
    /// The last complete full import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_import: Option<At>,
    /// The attribute the anchors come from, as recorded (`AnchorRecorded`, `AnchorsMigrated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_attribute: Option<String>,
    /// Every record and migration of the anchor attribute, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchor_history: Vec<AnchorChange>,
    /// The scope and mapping the objects were last imported under
    /// (`EffectiveConfigRecorded`); None before the first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<EffectiveRecord>,
    /// DNs objects had before a rename (normalised) -> the anchors of the objects renamed
    /// from them: a reference attribute (`manager`) that still names the old DN names the
    /// same object. AD keeps its links on the object, not the name, so a report is not
    /// changed (nor reported by DirSync) when its manager is renamed. A set, so that the
    /// projection does not depend on the order objects are folded in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub former_dns: BTreeMap<String, BTreeSet<String>>,
}

/// The object `anchor` moved from `old` to `new`: remember `old` as its former DN.
fn renamed(former: &mut BTreeMap<String, BTreeSet<String>>, anchor: &str, old: &str, new: &str) {
    if old == new {
        return;
    }
    let old = crate::source::dn::normalise_dn(old);
    if old != crate::source::dn::normalise_dn(new) {
        former.entry(old).or_default().insert(anchor.to_string());
    }
}

impl SourceObjects {
    /// The anchor of the live object once named `dn` (any spelling), if exactly one live
    /// object was renamed from it (two would be a guess).
    pub fn formerly(&self, dn: &str) -> Option<&str> {
        if self.former_dns.is_empty() {
            return None;
        }
        let mut live = self
            .former_dns
            .get(&crate::source::dn::normalise_dn(dn))?
            .iter()
            .filter(|a| self.objects.get(*a).is_some_and(|r| r.live()));
        match (live.next(), live.next()) {
            (Some(a), None) => Some(a.as_str()),
            _ => None,
        }
    }

    /// Fold the former DNs another fold of other objects recorded into these.
    pub fn merge_former_dns(&mut self, other: BTreeMap<String, BTreeSet<String>>) {
        for (dn, anchors) in other {
            self.former_dns.entry(dn).or_default().extend(anchors);
        }
    }
}

/// The last `EffectiveConfigRecorded`, and where it is in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveRecord {
    pub at: At,
    pub instance: String,
    pub event: crate::log::event::EffectiveConfigRecorded,
}

/// The anchor attribute recorded (`from` None, nothing re-keyed) or migrated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorChange {
    pub at: At,
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    /// A migration (`anchors migrate`), not the first import's record.
    pub migrated: bool,
    pub rekeyed: u64,
    pub unpaired: u64,
}

impl SourceObjects {
    /// The fold step of the source objects. It takes the event: its values move into the
    /// projection (a caller that keeps the event gives a clone).
    pub fn apply(&mut self, m: &Meta<'_>, e: Event) {
        match e {
            Event::ObjectImported(i) => {
                let SourceObject {
                    anchor,
                    kind,
                    dn,
                    attrs,
                    members,
                } = i.object;
                let record = |first_seen| {
                    Box::new(ObjectRecord {
                        kind,
                        dn,
                        attrs,
                        members,
                        first_seen,
                        last_changed: m.into(),
                        deletion: None,
                    })
                };
                // One lookup: a returning object keeps when it was first seen.
                match self.objects.entry(anchor) {
                    Entry::Occupied(mut o) => {
                        let first = o.get().first_seen;
                        let old = std::mem::replace(o.get_mut(), record(first));
                        renamed(&mut self.former_dns, o.key(), &old.dn, &o.get().dn);
                    }
                    Entry::Vacant(v) => {
                        v.insert(record(m.into()));
                    }
                }
            }
            Event::ObjectChanged(c) => {
                if let Some(r) = self.objects.get_mut(&c.anchor) {
                    if let Some(dn) = c.dn {
                        renamed(&mut self.former_dns, &c.anchor, &r.dn, &dn);
                        r.dn = dn;
                    }
                    for (k, v) in c.set {
                        r.attrs.insert(k, v);
                    }
                    for k in &c.removed {
                        r.attrs.remove(k);
                    }
                    for a in c.members_added {
                        r.members.insert(a);
                    }
                    for a in &c.members_removed {
                        r.members.remove(a);
                    }
                    r.last_changed = m.into();
                }
            }
            Event::ObjectDeleted(d) => {
                if let Some(r) = self.objects.get_mut(&d.anchor) {
                    r.deletion = Some(Box::new(Deletion {
                        evidence: d.evidence,
                        at: m.into(),
                        instance: m.instance.to_string(),
                    }));
                }
            }
            other => self.apply_other(m, &other),
        }
    }

    pub fn live(&self) -> impl Iterator<Item = (&String, &ObjectRecord)> {
        self.objects
            .iter()
            .filter(|(_, r)| r.live())
            .map(|(a, r)| (a, &**r))
    }

    /// The events other than a source object's.
    fn apply_other(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::ImportCompleted(i) if i.full => self.last_full_import = Some(m.into()),
            Event::AnchorRecorded(a) => {
                self.anchor_attribute = Some(a.attribute.clone());
                self.anchor_history.push(AnchorChange {
                    at: m.into(),
                    instance: m.instance.to_string(),
                    from: None,
                    to: a.attribute.clone(),
                    migrated: false,
                    rekeyed: 0,
                    unpaired: 0,
                });
            }
            Event::EffectiveConfigRecorded(c) => {
                self.effective = Some(EffectiveRecord {
                    at: m.into(),
                    instance: m.instance.to_string(),
                    event: (**c).clone(),
                });
            }
            Event::AnchorsMigrated(a) => {
                self.anchor_attribute = Some(a.to.clone());
                self.anchor_history.push(AnchorChange {
                    at: m.into(),
                    instance: m.instance.to_string(),
                    from: a.from.clone(),
                    to: a.to.clone(),
                    migrated: true,
                    rekeyed: a.rekeyed.len() as u64,
                    unpaired: a.unpaired.len() as u64,
                });
            }
            _ => {}
        }
    }
}

/// How we came to own a target object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Created,
    Matched,
}

/// One target object this deployment owns (or owned: `deleted` says when it was removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub kind: ObjectKind,
    pub target_id: String,
    pub origin: Origin,
    /// The mapped state we last exported (None when the recorded one had another shape:
    /// the next update then writes every attribute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Mapped>,
    pub owned_since: At,
    pub last_export: At,
    pub epoch: u64,
    /// The target's version of the object after our last export (SCIM ETag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<At>,
    /// When a user gone from the source was set inactive, awaiting its deletion (`[sync]
    /// on_delete = "disable"`); cleared by any later create, update or match (re-enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<At>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFailure {
    pub op: ExportOp,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub at: At,
    /// Failures of this anchor in a row (since its last success); `sync::export`
    /// quarantines it after `QUARANTINE_AFTER`.
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl ExportFailure {
    /// The failure recorded by `f` after `before` (the anchor's last one, if any). Only the
    /// object's own refusals count towards quarantine: a target that is down, throttling or
    /// refusing our credentials fails every object alike.
    pub fn after(
        before: Option<&ExportFailure>,
        m: &Meta<'_>,
        f: &crate::log::event::ExportFailed,
    ) -> ExportFailure {
        ExportFailure {
            op: f.op,
            error: f.error.clone(),
            status: f.status,
            at: m.into(),
            count: before.map_or(0, |p| p.count) + u32::from(about_the_object(f.status)),
        }
    }

    /// Whether this failure quarantines its object (`sync::export` skips it), when the
    /// object last changed (or was deleted) at seq `changed`: [`QUARANTINE_AFTER`] of its
    /// own refusals in a row, and no change since the last (a matching conflict is never
    /// sent again anyway).
    pub fn quarantines(&self, changed: u64) -> bool {
        self.op != ExportOp::Match && self.count >= QUARANTINE_AFTER && changed < self.at.seq
    }
}

/// Exports of one object refused in a row before it is quarantined.
pub const QUARANTINE_AFTER: u32 = 5;

/// Whether a failed export's status says the target refused that object itself (a 4xx
/// other than authentication, rate limits and timeouts), rather than failing everything.
pub fn about_the_object(status: Option<u16>) -> bool {
    matches!(status, Some(s) if (400..500).contains(&s) && !matches!(s, 401 | 403 | 407 | 408 | 429))
}

/// The ownership ledger: what we created or matched in the target, by anchor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Boxed, as [`SourceObjects::objects`].
    pub entries: FastMap<String, Box<LedgerEntry>>,
    /// The last failed export per anchor, cleared by the next success.
    #[serde(default)]
    pub failures: BTreeMap<String, ExportFailure>,
}

impl Ledger {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::ExportApplied(x) => {
                self.failures.remove(&x.anchor);
                match x.op {
                    ExportOp::Create | ExportOp::Match => {
                        self.entries.insert(
                            x.anchor.clone(),
                            Box::new(LedgerEntry {
                                kind: x.kind,
                                target_id: x.target_id.clone(),
                                origin: if x.op == ExportOp::Create {
                                    Origin::Created
                                } else {
                                    Origin::Matched
                                },
                                state: x.state.as_ref().and_then(Mapped::from_state),
                                owned_since: m.into(),
                                last_export: m.into(),
                                epoch: x.epoch,
                                etag: x.etag.clone(),
                                deleted: None,
                                disabled: None,
                            }),
                        );
                    }
                    ExportOp::Update | ExportOp::Disable => {
                        if let Some(l) = self.entries.get_mut(&x.anchor) {
                            l.state = x.state.as_ref().and_then(Mapped::from_state);
                            l.etag.clone_from(&x.etag);
                            l.last_export = m.into();
                            l.epoch = x.epoch;
                            // The first disable starts the clock; an update re-enables.
                            l.disabled = match x.op {
                                ExportOp::Disable => l.disabled.or(Some(m.into())),
                                _ => None,
                            };
                        }
                    }
                    ExportOp::Delete => {
                        if let Some(l) = self.entries.get_mut(&x.anchor) {
                            l.state = None;
                            l.last_export = m.into();
                            l.epoch = x.epoch;
                            l.deleted = Some(m.into());
                        }
                    }
                }
            }
            // The same target objects, owned under their source entries' new anchors. Their
            // exported state is forgotten, so that the next update writes every attribute
            // and the target's copy of the anchor (`externalId`, `onPremisesImmutableId`).
            Event::AnchorsMigrated(m) => {
                for r in &m.rekeyed {
                    if let Some(mut l) = self.entries.remove(&r.old) {
                        l.state = None;
                        self.entries.insert(r.new.clone(), l);
                    }
                    // The new anchor's failures are the old one's (or none).
                    match self.failures.remove(&r.old) {
                        Some(f) => self.failures.insert(r.new.clone(), f),
                        None => self.failures.remove(&r.new),
                    };
                }
            }
            // The target was emptied: nothing there is ours any more.
            Event::TargetReset(_) => {
                self.entries.clear();
                self.failures.clear();
            }
            Event::ExportFailed(f) => {
                let next = ExportFailure::after(self.failures.get(&f.anchor), m, f);
                self.failures.insert(f.anchor.clone(), next);
            }
            _ => {}
        }
    }

    /// Entries we own now (not deleted from the target).
    pub fn owned(&self) -> impl Iterator<Item = (&String, &LedgerEntry)> {
        self.entries
            .iter()
            .filter(|(_, l)| l.deleted.is_none())
            .map(|(a, l)| (a, &**l))
    }
}

/// An instance's position in the source's change stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub kind: String,
    pub cookie: String,
    pub at: At,
}

/// Cursors per instance, and why a cursor was last invalidated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursors {
    pub current: BTreeMap<String, Cursor>,
    #[serde(default)]
    pub invalidated: BTreeMap<String, (String, At)>,
}

impl Cursors {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::CursorAdvanced(c) => {
                self.current.insert(
                    m.instance.to_string(),
                    Cursor {
                        kind: c.kind.clone(),
                        cookie: c.cookie.clone(),
                        at: m.into(),
                    },
                );
            }
            Event::CursorInvalidated(c) => {
                self.current.remove(m.instance);
                self.invalidated
                    .insert(m.instance.to_string(), (c.reason.clone(), m.into()));
            }
            _ => {}
        }
    }
}

/// An export lease: `instance` may send requests of one chunk until `until_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub batch_id: String,
    pub instance: String,
    pub epoch: u64,
    pub until_us: i64,
    /// When the claim was recorded (0 in projections stored before it was kept): the
    /// lease's length is `until_us - from_us`.
    #[serde(default)]
    pub from_us: i64,
    /// The chunk's creates whose outcome is not recorded yet. Any left when the claim is
    /// completed got no answer that was recorded (a cycle that stopped as the target went
    /// down records none for requests in flight): they may still land.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

/// Who may export: the holder of the current epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    pub holder: Option<String>,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<At>,
    /// The last export lease taken, by any instance: a new holder waits for it to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// The last time the target may have been sent a write that was not recorded as
    /// applied and may still reach it: a take-over from another holder, a claim whose lease
    /// was never completed (a crash) followed by another claim, or a create that failed
    /// ambiguously (no answer, or a 5xx). The holder looks for duplicates by anchor for a
    /// while after it (`sync::duplicates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertain: Option<At>,
    /// Anchors whose creation was sent and may still be in flight: claimed more often than
    /// answered (applied, or refused by the target itself), for [`WATCH`] after the last
    /// claim. A duplicate by anchor can only be a copy of one of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub creates_in_doubt: BTreeMap<String, InDoubt>,
    /// Since when the creates in doubt are not all known: a claim recorded without its
    /// creates (by an older version), or more in doubt at once than [`IN_DOUBT_CAP`]. For
    /// [`WATCH`] after it, looking for duplicates reads the whole target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doubt_unknown: Option<At>,
    /// Every reconcile of the whole target, oldest first (one per `[sync]
    /// reconcile_target` interval, or per `sync --full`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconciles: Vec<Reconcile>,
    /// The last failover (`dirsync run --standby`): when it was recorded, and what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<(At, crate::log::event::FailoverStarted)>,
    /// Failovers recorded, ever.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failovers: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How long after a write that may land unrecorded (a take-over, a create without an
/// answer) the holder looks for duplicates by anchor in every cycle. Longer than Linux's
/// default TCP retransmission limit (`tcp_retries2` = 15, about 924 s), after which a
/// connection still carrying an old holder's request is given up by the kernel.
pub const WATCH: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// Creates in doubt the relationship keeps by anchor; past it, only that some are
/// ([`Relationship::doubt_unknown`]).
pub const IN_DOUBT_CAP: usize = 10_000;

/// A create in doubt: claimed `claims` times more than it was answered, the last time at
/// `at_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InDoubt {
    pub claims: u32,
    pub at_us: i64,
}

/// One reconcile of the whole target, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    pub at: At,
    pub instance: String,
    pub found: crate::log::event::TargetReconciled,
}

impl Relationship {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::SyncRelationshipEstablished(r) => {
                if self.holder.is_some() {
                    self.uncertain = Some(m.into());
                }
                self.holder = Some(r.holder.clone());
                self.epoch = r.epoch;
                self.since = Some(m.into());
            }
            Event::ExportBatchStarted(b) => {
                if self.lease.is_some() {
                    self.uncertain = Some(m.into());
                }
                self.claim_creates(m, b);
                self.lease = Some(Lease {
                    batch_id: b.batch_id.clone(),
                    instance: m.instance.to_string(),
                    epoch: b.epoch,
                    until_us: b.lease_until.timestamp_micros(),
                    from_us: m.recorded_at_us,
                    unanswered: b.creates.clone().unwrap_or_default(),
                });
            }
            Event::FailoverStarted(f) => {
                self.last_failover = Some((m.into(), f.clone()));
                self.failovers += 1;
            }
            Event::TargetReconciled(r) => self.reconciles.push(Reconcile {
                at: m.into(),
                instance: m.instance.to_string(),
                found: r.clone(),
            }),
            Event::ExportBatchCompleted(b)
                if self
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.batch_id == b.batch_id) =>
            {
                let unanswered = self.lease.take().is_some_and(|l| !l.unanswered.is_empty());
                if unanswered {
                    self.uncertain = Some(m.into());
                }
            }
            // No answer, or a 5xx: the create may have been applied, or still be.
            Event::ExportFailed(f) if f.op == ExportOp::Create => {
                self.recorded(&f.anchor);
                if f.status.is_none_or(|s| s >= 500) {
                    self.uncertain = Some(m.into());
                } else {
                    self.answered(&f.anchor);
                }
            }
            Event::ExportApplied(x) if x.op == ExportOp::Create => {
                self.recorded(&x.anchor);
                self.answered(&x.anchor);
            }
            _ => {}
        }
    }

    /// A claim: its creates are in doubt until answered; those claimed more than [`WATCH`]
    /// before it are let go.
    fn claim_creates(&mut self, m: &Meta<'_>, b: &crate::log::event::ExportBatchStarted) {
        let horizon = m.recorded_at_us.saturating_sub(WATCH.as_micros() as i64);
        self.creates_in_doubt.retain(|_, d| d.at_us >= horizon);
        match &b.creates {
            None if b.ops > 0 => self.doubt_unknown = Some(m.into()),
            None => {}
            Some(anchors) => {
                for a in anchors {
                    let d = self.creates_in_doubt.entry(a.clone()).or_insert(InDoubt {
                        claims: 0,
                        at_us: 0,
                    });
                    d.claims += 1;
                    d.at_us = m.recorded_at_us;
                }
            }
        }
        if self.creates_in_doubt.len() > IN_DOUBT_CAP {
            self.creates_in_doubt.clear();
            self.doubt_unknown = Some(m.into());
        }
    }

    /// The outcome of the claimed create of `anchor` was recorded.
    fn recorded(&mut self, anchor: &str) {
        if let Some(l) = self.lease.as_mut() {
            l.unanswered.retain(|a| a != anchor);
        }
    }

    /// A create of `anchor` was answered.
    fn answered(&mut self, anchor: &str) {
        if let Some(d) = self.creates_in_doubt.get_mut(anchor) {
            d.claims -= 1;
            if d.claims == 0 {
                self.creates_in_doubt.remove(anchor);
            }
        }
    }

    /// When the target was last reconciled with every repair done (none failed): a
    /// reconcile with failures is due again at the next cycle.
    pub fn last_reconcile(&self) -> Option<At> {
        self.reconciles
            .iter()
            .rev()
            .find(|r| r.found.failed == 0)
            .map(|r| r.at)
    }

    /// May `instance` export now (it holds the current epoch)?
    pub fn held_by(&self, instance: &str) -> bool {
        self.holder.as_deref() == Some(instance)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    #[default]
    Active,
    Stopped,
    Retired,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Active => "active",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Retired => "retired",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub status: InstanceStatus,
    /// The run in progress, if a SyncRunStarted has no completion yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<(String, At)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed: Option<(String, At)>,
    /// The last failed cycle: when, why and what it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed: Option<RunFailure>,
    pub first_seen: At,
    /// The mode of the run in progress (sync, staging, export, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_mode: Option<String>,
    /// When it was retired (while it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<At>,
    /// Its last completed import, and whether it was full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_import: Option<(At, bool)>,
    /// Where its last exporting cycle that tried its whole plan made that plan
    /// (`SyncRunCompleted::planned_seq`): its next cycle plans what the log names after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_seq: Option<u64>,
    /// Where its last staging cycle listed its plan from (`SyncRunCompleted::listed_seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_seq: Option<u64>,
}

/// A failed cycle as the instance projection keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailure {
    pub run_id: String,
    pub at: At,
    /// None for failures recorded before reasons were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    pub error: String,
}

/// Run modes that export to the target: their completions close a sync gap.
pub const EXPORTING_MODES: &[&str] = &["sync", "export"];

/// Every instance the log has heard of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instances {
    pub instances: BTreeMap<String, InstanceRecord>,
}

impl Instances {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        let touches = matches!(
            e,
            Event::SyncRunStarted(_)
                | Event::SyncRunCompleted(_)
                | Event::SyncRunFailed(_)
                | Event::InstanceStarted(_)
                | Event::InstanceStopped(_)
                | Event::InstanceRetired(_)
                | Event::CursorAdvanced(_)
                | Event::ImportCompleted(_)
                | Event::SyncRelationshipEstablished(_)
        );
        if !touches {
            return;
        }
        let name = match e {
            Event::SyncRelationshipEstablished(r) => r.holder.as_str(),
            _ => m.instance,
        };
        let rec = self
            .instances
            .entry(name.to_string())
            .or_insert_with(|| InstanceRecord {
                first_seen: m.into(),
                ..Default::default()
            });
        match e {
            Event::SyncRunStarted(s) => {
                rec.running = Some((s.run_id.clone(), m.into()));
                rec.running_mode = Some(s.mode.clone());
            }
            Event::SyncRunCompleted(s) => {
                rec.running = None;
                rec.running_mode = None;
                rec.last_completed = Some((s.run_id.clone(), m.into()));
                // A cycle that did not try its whole plan (staging, stopped) leaves the
                // last point where one did: what it left undone is named after that.
                if s.planned_seq.is_some() {
                    rec.planned_seq = s.planned_seq;
                }
                if s.listed_seq.is_some() {
                    rec.listed_seq = s.listed_seq;
                }
            }
            Event::SyncRunFailed(s) => {
                rec.running = None;
                rec.running_mode = None;
                rec.last_failed = Some(RunFailure {
                    run_id: s.run_id.clone(),
                    at: m.into(),
                    reason: s.reason,
                    error: s.error.clone(),
                });
            }
            Event::ImportCompleted(i) => rec.last_import = Some((m.into(), i.full)),
            Event::InstanceStarted(_) => {
                rec.status = InstanceStatus::Active;
                rec.retired = None;
            }
            Event::InstanceStopped(_) => {
                rec.status = InstanceStatus::Stopped;
                rec.retired = None;
            }
            Event::InstanceRetired(_) => {
                rec.status = InstanceStatus::Retired;
                rec.retired = Some(m.into());
                rec.running = None;
                rec.running_mode = None;
            }
            _ => {}
        }
    }
}

/// Deletions the guard held, by the hash of their exact list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDeletions {
    pub anchors: Vec<String>,
    pub reason: String,
    pub held: At,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<At>,
    /// The instance whose cycle held them.
    #[serde(default)]
    pub by: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub plans: BTreeMap<String, HeldDeletions>,
    /// The held list that stands now: the last one held, until a cycle holds another
    /// (`DeletionsHeld`) or holds nothing (`DeletionsHoldEnded`). Only it can be approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Duplicates deleted from the target (by the key the guard lists them under,
    /// `ANCHOR@TARGET_ID`), and when: they count in the guard's rolling window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates_removed: Vec<(String, At)>,
}

impl Guard {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::DeletionsHeld(h) => {
                // Held again after another list stood: the same list, held anew.
                let p = self
                    .plans
                    .entry(h.plan_hash.clone())
                    .or_insert_with(|| HeldDeletions {
                        anchors: h.anchors.clone(),
                        reason: h.reason.clone(),
                        held: m.into(),
                        approved: None,
                        by: m.instance.to_string(),
                    });
                p.reason.clone_from(&h.reason);
                p.held = m.into();
                p.by = m.instance.to_string();
                self.current = Some(h.plan_hash.clone());
            }
            Event::DeletionsHoldEnded(h)
                if self.current.as_deref() == Some(h.plan_hash.as_str()) =>
            {
                self.current = None;
            }
            Event::DeletionsApproved(a) => {
                if let Some(p) = self.plans.get_mut(&a.plan_hash) {
                    p.approved = Some(m.into());
                }
            }
            Event::DuplicateRemoved(d) => self
                .duplicates_removed
                .push((format!("{}@{}", d.anchor, d.target_id), m.into())),
            _ => {}
        }
    }

    /// The held list that stands and is not approved yet: what the next cycle holds again.
    pub fn waiting(&self) -> Option<(&String, &HeldDeletions)> {
        let h = self.current.as_ref()?;
        self.plans
            .get_key_value(h)
            .filter(|(_, p)| p.approved.is_none())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub action: String,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<At>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<At>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverRecord {
    pub from: String,
    pub to: String,
    pub playbook: String,
    pub steps: Vec<StepRecord>,
    pub started: At,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<At>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handovers {
    pub handovers: BTreeMap<String, HandoverRecord>,
    /// The most recently started handover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

impl Handovers {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::HandoverStarted(h) => {
                self.handovers.insert(
                    h.handover_id.clone(),
                    HandoverRecord {
                        from: h.from.clone(),
                        to: h.to.clone(),
                        playbook: h.playbook.clone(),
                        steps: h
                            .steps
                            .iter()
                            .map(|a| StepRecord {
                                action: a.clone(),
                                state: StepState::Pending,
                                started: None,
                                finished: None,
                                detail: serde_json::Value::Null,
                            })
                            .collect(),
                        started: m.into(),
                        completed: None,
                    },
                );
                self.last = Some(h.handover_id.clone());
            }
            Event::HandoverStepStarted(s)
            | Event::HandoverStepCompleted(s)
            | Event::HandoverStepFailed(s) => {
                let step = self
                    .handovers
                    .get_mut(&s.handover_id)
                    .and_then(|h| h.steps.get_mut(s.step as usize));
                if let Some(step) = step {
                    match e {
                        Event::HandoverStepStarted(_) => {
                            step.state = StepState::Running;
                            step.started = Some(m.into());
                            step.finished = None;
                        }
                        Event::HandoverStepCompleted(_) => {
                            step.state = StepState::Done;
                            step.finished = Some(m.into());
                        }
                        _ => {
                            step.state = StepState::Failed;
                            step.finished = Some(m.into());
                        }
                    }
                    step.detail.clone_from(&s.detail);
                }
            }
            Event::HandoverCompleted(c) => {
                if let Some(h) = self.handovers.get_mut(&c.handover_id) {
                    h.completed = Some(m.into());
                }
            }
            _ => {}
        }
    }
}

/// Failed exports that count towards quarantine: the ledger's failures whose count is at
/// least one (their objects' own refusals, see [`ExportFailure::after`]). Kept small: a
/// target that fails every object alike (down, throttling) adds nothing here. `status`
/// finds the quarantined among them. Only the events of exports concern it, none of one
/// source object (the split fold folds those apart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspects {
    pub failures: BTreeMap<String, ExportFailure>,
}

impl Suspects {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::ExportFailed(f) => {
                let failure = ExportFailure::after(self.failures.get(&f.anchor), m, f);
                if failure.count > 0 {
                    self.failures.insert(f.anchor.clone(), failure);
                }
            }
            Event::ExportApplied(x) => {
                self.failures.remove(&x.anchor);
            }
            // As the ledger re-keys its failures: the new anchor's are the old one's.
            Event::AnchorsMigrated(a) => {
                for r in &a.rekeyed {
                    match self.failures.remove(&r.old) {
                        Some(f) => self.failures.insert(r.new.clone(), f),
                        None => self.failures.remove(&r.new),
                    };
                }
            }
            Event::TargetReset(_) => self.failures.clear(),
            _ => {}
        }
    }

    /// The anchors that are quarantined unless their objects changed since their last
    /// failure (see [`ExportFailure::quarantines`]), in order.
    pub fn candidates(&self) -> impl Iterator<Item = (&String, &ExportFailure)> {
        self.failures.iter().filter(|(_, f)| f.quarantines(0))
    }
}

/// The control projections: everything a command needs that does not grow with the
/// directory (who holds the relationship, the instances, their cursors, held deletions,
/// handovers, the source's tombstone lifetime, the objects close to quarantine). The store
/// keeps it beside the log, folded in the transaction of every append
/// ([`crate::log::store::Store::control`]), so that `status` and `instance list` read it
/// alone; replay folds it with the rest of [`State`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Control {
    pub cursors: Cursors,
    pub relationship: Relationship,
    pub instances: Instances,
    pub guard: Guard,
    pub handovers: Handovers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone_lifetime_days: Option<u32>,
    #[serde(default)]
    pub suspects: Suspects,
}

impl Control {
    /// The fold step of the control projections.
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        self.cursors.apply(m, e);
        self.relationship.apply(m, e);
        self.instances.apply(m, e);
        self.guard.apply(m, e);
        self.handovers.apply(m, e);
        self.suspects.apply(m, e);
        if let Event::SourceInfoRecorded(s) = e {
            if s.tombstone_lifetime_days.is_some() {
                self.tombstone_lifetime_days = s.tombstone_lifetime_days;
            }
        }
    }

    /// Names the projections that differ from `other`.
    pub fn differences(&self, other: &Control) -> Vec<String> {
        let named: [(&str, bool); 7] = [
            ("cursors", self.cursors != other.cursors),
            ("relationship", self.relationship != other.relationship),
            ("instances", self.instances != other.instances),
            ("guard", self.guard != other.guard),
            ("handovers", self.handovers != other.handovers),
            (
                "tombstone lifetime",
                self.tombstone_lifetime_days != other.tombstone_lifetime_days,
            ),
            ("quarantine suspects", self.suspects != other.suspects),
        ];
        named
            .iter()
            .filter(|(_, d)| *d)
            .map(|(n, _)| n.to_string())
            .collect()
    }
}

/// When each instance's completed runs that exported (mode sync or export) ended, oldest
/// first: the audit's sync gaps are the windows between them. Apart from the control
/// projections, which the store rewrites at every append: this grows by one entry per
/// cycle, and only the audit reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncHistory {
    pub syncs: BTreeMap<String, Vec<At>>,
    /// The exporting run each instance has in progress (its id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    running: BTreeMap<String, String>,
}

impl SyncHistory {
    pub fn apply(&mut self, m: &Meta<'_>, e: &Event) {
        match e {
            Event::SyncRunStarted(s) if EXPORTING_MODES.contains(&s.mode.as_str()) => {
                self.running
                    .insert(m.instance.to_string(), s.run_id.clone());
            }
            Event::SyncRunStarted(_) | Event::SyncRunFailed(_) | Event::InstanceRetired(_) => {
                self.running.remove(m.instance);
            }
            Event::SyncRunCompleted(s) => {
                let ended = self.running.remove(m.instance);
                if ended.as_deref() == Some(s.run_id.as_str()) {
                    self.syncs
                        .entry(m.instance.to_string())
                        .or_default()
                        .push(m.into());
                }
            }
            _ => {}
        }
    }

    /// `instance`'s completed syncs, oldest first.
    pub fn of(&self, instance: &str) -> &[At] {
        self.syncs.get(instance).map_or(&[], Vec::as_slice)
    }
}

/// Every projection, as of `seq`: the control projections, the two that grow with the
/// directory, and the history of completed syncs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub seq: u64,
    pub objects: SourceObjects,
    pub ledger: Ledger,
    #[serde(flatten)]
    pub control: Control,
    #[serde(default)]
    pub sync_history: SyncHistory,
}

impl State {
    /// The fold step: apply one event to every projection. Replay is a fold of this over the
    /// log. It takes the event, so that the source objects keep its values (a caller that
    /// keeps the event gives a clone).
    pub fn apply(&mut self, m: &Meta<'_>, e: Event) {
        // Each projection reads only the event and changes only itself, so the order of
        // the calls does not matter: the one that takes the event goes last.
        self.ledger.apply(m, &e);
        self.control.apply(m, &e);
        self.sync_history.apply(m, &e);
        self.objects.apply(m, e);
        self.seq = m.seq;
    }

    /// Names the projections that differ from `other`, with the first differing key.
    pub fn differences(&self, other: &State) -> Vec<String> {
        fn first_key<V: PartialEq>(
            a: &FastMap<String, V>,
            b: &FastMap<String, V>,
        ) -> Option<String> {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter().find(|k| a.get(*k) != b.get(*k)).cloned()
        }
        let mut out = Vec::new();
        if self.seq != other.seq {
            out.push(format!("seq: {} vs {}", self.seq, other.seq));
        }
        if self.objects != other.objects {
            let k = first_key(&self.objects.objects, &other.objects.objects);
            out.push(format!(
                "objects (first differing anchor: {})",
                k.unwrap_or_default()
            ));
        }
        if self.ledger != other.ledger {
            let k = first_key(&self.ledger.entries, &other.ledger.entries);
            out.push(format!(
                "ledger (first differing anchor: {})",
                k.unwrap_or_default()
            ));
        }
        out.extend(self.control.differences(&other.control));
        if self.sync_history != other.sync_history {
            out.push("sync history".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{
        AnchorsMigrated, ExportApplied, ExportFailed, ObjectDeleted, Rekey, SourceInfoRecorded,
        SyncRelationshipEstablished, TargetReset,
    };

    fn meta(seq: u64) -> Meta<'static> {
        Meta {
            seq,
            instance: "a",
            recorded_at_us: seq as i64 * 1_000,
        }
    }

    fn at(seq: u64) -> At {
        At {
            seq,
            at_us: seq as i64 * 1_000,
        }
    }

    fn failed(anchor: &str, status: Option<u16>) -> Event {
        Event::ExportFailed(ExportFailed {
            epoch: 1,
            anchor: anchor.into(),
            op: ExportOp::Update,
            status,
            error: "e".into(),
        })
    }

    /// The control projections after a few events, as a whole value: the tombstone
    /// lifetime, the relationship and its holder's instance record, and the suspects, which
    /// keep the object's own refusals and forget a target that failed everything.
    #[test]
    fn control_folds_the_small_projections() {
        let mut c = Control::default();
        let events = [
            Event::SourceInfoRecorded(SourceInfoRecorded {
                tombstone_lifetime_days: Some(180),
                highest_usn: None,
            }),
            Event::SyncRelationshipEstablished(SyncRelationshipEstablished {
                holder: "a".into(),
                epoch: 2,
            }),
            failed("x", Some(400)),
            failed("y", Some(503)),
            // An event of one source object: no control projection's business.
            Event::ObjectDeleted(ObjectDeleted {
                anchor: "x".into(),
                evidence: DeletionEvidence::SyncDelete {
                    phase: "refreshDeletes".into(),
                },
            }),
            // A later lifetime of none changes nothing.
            Event::SourceInfoRecorded(SourceInfoRecorded {
                tombstone_lifetime_days: None,
                highest_usn: Some(7),
            }),
        ];
        for (i, e) in events.iter().enumerate() {
            c.apply(&meta(i as u64 + 1), e);
        }
        let want = Control {
            relationship: Relationship {
                holder: Some("a".into()),
                epoch: 2,
                since: Some(at(2)),
                ..Default::default()
            },
            instances: Instances {
                instances: BTreeMap::from([(
                    "a".into(),
                    InstanceRecord {
                        first_seen: at(2),
                        ..Default::default()
                    },
                )]),
            },
            tombstone_lifetime_days: Some(180),
            suspects: Suspects {
                failures: BTreeMap::from([(
                    "x".into(),
                    ExportFailure {
                        op: ExportOp::Update,
                        error: "e".into(),
                        status: Some(400),
                        at: at(3),
                        count: 1,
                    },
                )]),
            },
            ..Default::default()
        };
        assert_eq!(c, want);
        // It reads back as it was written (the stored row's body).
        let body = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Control>(&body).unwrap(), c);
        assert_eq!(
            serde_json::from_str::<Control>("{}").unwrap(),
            Control::default()
        );
    }

    /// Whatever mix of failures, successes, re-keys and resets: the suspects are exactly the
    /// ledger's failures with a count, and the candidates those the ledger's rule
    /// (`sync::export::quarantined`) would quarantine when the object has not changed.
    #[test]
    fn the_suspects_are_the_ledgers_counted_failures() {
        let mut ledger = Ledger::default();
        let mut control = Control::default();
        // A fixed pseudo-random walk (no seed to pass around: the walk is the test).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let anchors = ["p", "q", "r", "s"];
        let mut ever_candidates = 0;
        for seq in 1..3_000 {
            let a = anchors[next(4) as usize].to_string();
            let e = match next(20) {
                0..=11 => failed(
                    &a,
                    [None, Some(503), Some(429), Some(400), Some(409)][next(5) as usize],
                ),
                12 | 13 => Event::ExportApplied(ExportApplied {
                    epoch: 1,
                    anchor: a,
                    kind: ObjectKind::User,
                    op: ExportOp::Update,
                    target_id: "t".into(),
                    state: None,
                    etag: None,
                }),
                14 => Event::ExportFailed(ExportFailed {
                    epoch: 1,
                    anchor: a,
                    op: ExportOp::Match,
                    status: Some(409),
                    error: "conflict".into(),
                }),
                15 => Event::AnchorsMigrated(AnchorsMigrated {
                    from: None,
                    to: "entryUUID".into(),
                    rekeyed: vec![Rekey {
                        old: a,
                        new: anchors[next(4) as usize].to_string(),
                    }],
                    unpaired: vec![],
                }),
                16 => Event::TargetReset(TargetReset { reason: "r".into() }),
                _ => Event::ObjectDeleted(ObjectDeleted {
                    anchor: a,
                    evidence: DeletionEvidence::SyncDelete { phase: "p".into() },
                }),
            };
            ledger.apply(&meta(seq), &e);
            control.apply(&meta(seq), &e);
            let counted: BTreeMap<String, ExportFailure> = ledger
                .failures
                .iter()
                .filter(|(_, f)| f.count > 0)
                .map(|(a, f)| (a.clone(), f.clone()))
                .collect();
            assert_eq!(control.suspects.failures, counted, "seq {seq}");
            let candidates: Vec<&String> = control.suspects.candidates().map(|(a, _)| a).collect();
            let quarantined: Vec<&String> = ledger
                .failures
                .iter()
                .filter(|(_, f)| f.quarantines(0))
                .map(|(a, _)| a)
                .collect();
            assert_eq!(candidates, quarantined, "seq {seq}");
            ever_candidates += candidates.len();
        }
        assert!(ever_candidates > 0, "the walk reached quarantine");
    }

    #[test]
    fn the_sync_history_keeps_completed_exporting_runs_only() {
        use crate::log::event::{SyncRunCompleted, SyncRunFailed, SyncRunStarted};
        let started = |id: &str, mode: &str| {
            Event::SyncRunStarted(SyncRunStarted {
                run_id: id.into(),
                full: false,
                mode: mode.into(),
            })
        };
        let completed = |id: &str| {
            Event::SyncRunCompleted(SyncRunCompleted {
                run_id: id.into(),
                ..Default::default()
            })
        };
        let on = |seq: u64, instance: &'static str| Meta {
            seq,
            instance,
            recorded_at_us: seq as i64 * 1_000,
        };
        let mut h = SyncHistory::default();
        let events = [
            (on(1, "a"), started("r1", "sync")),
            (on(2, "a"), completed("r1")),
            // Staging exports nothing.
            (on(3, "b"), started("r2", "staging")),
            (on(4, "b"), completed("r2")),
            // Failed, then a completion of another run id.
            (on(5, "a"), started("r3", "export")),
            (
                on(6, "a"),
                Event::SyncRunFailed(SyncRunFailed {
                    run_id: "r3".into(),
                    error: "e".into(),
                    reason: None,
                }),
            ),
            (on(7, "a"), completed("r3")),
            (on(8, "b"), started("r4", "export")),
            (on(9, "a"), started("r5", "sync")),
            (on(10, "b"), completed("r4")),
            (on(11, "a"), completed("r5")),
        ];
        for (m, e) in &events {
            h.apply(m, e);
        }
        assert_eq!(
            h.syncs,
            BTreeMap::from([
                ("a".to_string(), vec![at(2), at(11)]),
                ("b".to_string(), vec![at(10)]),
            ])
        );
        assert!(h.running.is_empty());
        assert_eq!(h.of("c"), &[] as &[At]);
    }

    #[test]
    fn only_the_objects_own_refusals_count_towards_quarantine() {
        let mut ledger = Ledger::default();
        let fail = |ledger: &mut Ledger, seq, status| {
            let m = Meta {
                seq,
                instance: "a",
                recorded_at_us: 0,
            };
            ledger.apply(
                &m,
                &Event::ExportFailed(ExportFailed {
                    epoch: 1,
                    anchor: "x".into(),
                    op: ExportOp::Update,
                    status,
                    error: "e".into(),
                }),
            );
            ledger.failures["x"].count
        };
        // Connection refused, a 503 after retries, throttling, a revoked token: the target
        // fails everything alike, so nothing counts against the object.
        for (seq, status) in [(1, None), (2, Some(503)), (3, Some(429)), (4, Some(401))] {
            assert_eq!(fail(&mut ledger, seq, status), 0, "{status:?}");
        }
        assert_eq!(fail(&mut ledger, 5, Some(400)), 1);
        assert_eq!(fail(&mut ledger, 6, Some(409)), 2);
        assert_eq!(fail(&mut ledger, 7, Some(500)), 2);
        assert_eq!(ledger.failures["x"].status, Some(500));
    }

    #[test]
    fn a_rename_leaves_the_old_dn_naming_the_object() {
        use crate::log::event::{ObjectChanged, ObjectImported, SourceObject};
        let m = Meta {
            seq: 1,
            instance: "a",
            recorded_at_us: 0,
        };
        let imported = |dn: &str| {
            Event::ObjectImported(ObjectImported {
                object: SourceObject {
                    anchor: "g1".into(),
                    kind: ObjectKind::User,
                    dn: dn.into(),
                    attrs: Attrs::default(),
                    members: BTreeSet::new(),
                },
                returned: false,
            })
        };
        let changed = ObjectChanged {
            anchor: "g1".into(),
            dn: Some("CN=Ann B,OU=Staff,DC=x".into()),
            set: Attrs::default(),
            removed: Vec::new(),
            members_added: Vec::new(),
            members_removed: Vec::new(),
        };
        let want = BTreeMap::from([(
            "cn=ann,ou=staff,dc=x".to_string(),
            BTreeSet::from(["g1".to_string()]),
        )]);
        let mut o = SourceObjects::default();
        o.apply(&m, imported("CN=Ann,OU=Staff,DC=x"));
        o.apply(&m, Event::ObjectChanged(changed));
        assert_eq!(o.former_dns, want);
        assert_eq!(o.formerly("cn=ANN, ou=Staff,dc=x"), Some("g1"));
        assert_eq!(o.formerly("CN=Ann B,OU=Staff,DC=x"), None);
        // A full import that finds the object under another name records it too; the
        // same name (any spelling) is no rename.
        let mut o = SourceObjects::default();
        o.apply(&m, imported("CN=Ann,OU=Staff,DC=x"));
        o.apply(&m, imported("cn=ann,ou=staff,dc=x"));
        assert!(o.former_dns.is_empty());
        o.apply(&m, imported("CN=Ann B,OU=Staff,DC=x"));
        assert_eq!(o.former_dns, want);
        o.apply(&m, imported("CN=Ann C,OU=Staff,DC=x"));
        assert_eq!(o.formerly("CN=Ann B,OU=Staff,DC=x"), Some("g1"));
        // Deleted, it names nothing; two live objects once of one name: no guess.
        let mut two = o.clone();
        two.merge_former_dns(BTreeMap::from([(
            "cn=ann b,ou=staff,dc=x".to_string(),
            BTreeSet::from(["g2".to_string()]),
        )]));
        two.apply(
            &m,
            Event::ObjectImported(ObjectImported {
                object: SourceObject {
                    anchor: "g2".into(),
                    kind: ObjectKind::User,
                    dn: "CN=Ann D,OU=Staff,DC=x".into(),
                    attrs: Attrs::default(),
                    members: BTreeSet::new(),
                },
                returned: false,
            }),
        );
        assert_eq!(two.formerly("CN=Ann B,OU=Staff,DC=x"), None);
        o.apply(
            &m,
            Event::ObjectDeleted(crate::log::event::ObjectDeleted {
                anchor: "g1".into(),
                evidence: crate::log::event::DeletionEvidence::SyncDelete {
                    phase: "delete".into(),
                },
            }),
        );
        assert_eq!(o.formerly("CN=Ann B,OU=Staff,DC=x"), None);
    }
}

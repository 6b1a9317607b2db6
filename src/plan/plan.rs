//! The plan and the deletion guard (pure): what the target must receive for it to equal
//! the source projection, mapped, given the ownership ledger; and whether this cycle's
//! deletions may go out.
//!
//! Inputs are projections only (no I/O), so `--dry-run`, `--staging`, the export runner and
//! the tests all compute exactly the same plan from the same log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::config::{OnDelete, Threshold};
use crate::log::event::{DeletionsHeld, DeletionsHoldEnded, Event, ObjectKind};
use crate::plan::focus::{Focus, Whole};
use crate::plan::mapping::{resolve_group, Desired, Mapping, Unmappable};
use crate::project::{LedgerEntry, ObjectRecord, State};
use crate::target::{Mapped, Op};

/// The deletion guard's rolling window: deletions exported within it count together.
pub const GUARD_WINDOW_US: i64 = 24 * 3600 * 1_000_000;

/// Deletions are held when the source holds fewer than this share of what we own: a source
/// that suddenly returns little (an emptied OU, a wrong base DN) is not "delete everything".
pub const SHRUNK_SOURCE_RATIO: f64 = 0.5;

/// What the target needs, as operations; new objects still need matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Anchors the ledger does not own: matched against the target first, created if
    /// nothing matches. Sorted by anchor.
    pub new: Vec<(String, Mapped)>,
    /// Owned objects whose mapped state differs from what we last exported.
    pub updates: Vec<Op>,
    /// Owned objects no longer live in scope in the source, to delete now: what the
    /// deletion guard counts. Under `on_delete = "disable"` a user's deletion is planned
    /// only once `disabled_for` has passed since its disable was recorded.
    pub deletes: Vec<Op>,
    /// Users gone from the source, to set inactive first (`on_delete = "disable"`): updates
    /// to `active = false`, recorded as `ExportOp::Disable`. Not deletions.
    pub disables: Vec<Op>,
    /// Users disabled and not yet due for deletion: anchor and when they are due (µs).
    pub awaiting: Vec<(String, i64)>,
    /// Source objects that cannot be exported, and why (e.g. no userName).
    pub unmappable: Vec<(String, String)>,
    /// Group members (and references) not (yet) in the target, left out for now.
    pub unresolved_members: usize,
    /// Reference attributes (`manager`) whose value names no live object in scope: the
    /// object is exported without that attribute, and this says why. Sorted by anchor,
    /// then key.
    pub dangling: Vec<Dangling>,
    /// Live, in-scope source objects of the kinds planned.
    pub live: u64,
    /// Objects the ledger owns (all kinds).
    pub owned: u64,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.new.is_empty()
            && self.updates.is_empty()
            && self.deletes.is_empty()
            && self.disables.is_empty()
    }

    /// The anchors of the planned deletions, sorted: what the guard and approvals hash.
    pub fn delete_anchors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .deletes
            .iter()
            .map(|d| d.anchor().to_string())
            .collect();
        v.sort();
        v
    }
}

/// A reference attribute (`manager`) of a live object whose value (a DN or an anchor) names
/// no live object in scope: a manager deleted, out of scope, or misspelt. The object is
/// exported without it; the sync reports it (problem `unresolved_reference`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dangling {
    /// The object whose attribute it is.
    pub anchor: String,
    /// The target attribute (`urn:...:manager`, `manager`).
    pub key: String,
    /// Its expression.
    pub expr: String,
    /// What the expression gave.
    pub value: String,
}

impl Dangling {
    /// The problem's detail, as `sync` reports it.
    pub fn detail(&self) -> String {
        format!(
            "{} `{}` gave \"{}\", which names no object in scope (no live object has that DN or anchor): exported without {}",
            self.key, self.expr, self.value, self.key
        )
    }
}

/// What one live object needs, as the worker that mapped it found.
enum Need<'a> {
    New(&'a String, Mapped),
    Update(&'a String, &'a LedgerEntry, Mapped),
    Unmappable(&'a String, String),
}

/// How owned objects gone from the source leave the target (`[sync] on_delete`), and the
/// clock a disabled user's due time is compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    pub on_delete: OnDelete,
    pub now_us: i64,
}

impl Removal {
    /// Deleted at once (`on_delete = "delete"`): no clock needed.
    pub fn delete() -> Removal {
        Removal::default()
    }

    /// When a user disabled at `disabled` is due for deletion (µs), under `on_delete =
    /// "disable"`; None under "delete" (due now).
    pub fn due_us(&self, disabled: &crate::project::At) -> Option<i64> {
        match self.on_delete {
            OnDelete::Delete => None,
            OnDelete::Disable { after } => Some(
                disabled
                    .at_us
                    .saturating_add(i64::try_from(after.as_micros()).unwrap_or(i64::MAX)),
            ),
        }
    }
}

/// What becomes of one owned object gone from the source (pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Delete it now: counted by the deletion guard.
    Delete,
    /// Set it inactive first (a user not disabled yet, under `on_delete = "disable"`).
    Disable,
    /// Disabled, deleted from `due_us` on.
    Awaiting { due_us: i64 },
}

/// [`Gone`] for an owned object of `kind` whose ledger entry says it was disabled at
/// `disabled` (if it was). Groups are deleted at once, as Entra Cloud Sync does: a group
/// has no inactive state to park it in.
pub fn gone(removal: &Removal, kind: ObjectKind, disabled: Option<&crate::project::At>) -> Gone {
    if kind != ObjectKind::User || removal.on_delete == OnDelete::Delete {
        return Gone::Delete;
    }
    match disabled.and_then(|d| removal.due_us(d)) {
        None => Gone::Disable,
        Some(due_us) if removal.now_us >= due_us => Gone::Delete,
        Some(due_us) => Gone::Awaiting { due_us },
    }
}

/// The plan for objects of `only` (all kinds when None), mapped by `mapping`. Deletions
/// are always planned for every kind, since the guard must see them all. Owned objects
/// gone from the source are deleted at once (see [`plan_at`]).
pub fn plan(state: &State, mapping: &Mapping, only: Option<ObjectKind>) -> Plan {
    plan_at(state, mapping, only, &Removal::delete())
}

/// [`plan`] under a `[sync] on_delete` policy and a clock.
pub fn plan_at(
    state: &State,
    mapping: &Mapping,
    only: Option<ObjectKind>,
    removal: &Removal,
) -> Plan {
    plan_focused(state, mapping, only, removal, &Focus::Whole(Whole::Asked))
}

/// [`plan_at`] of the objects `focus` covers (see [`super::focus`]): the operations of
/// those objects in the whole plan. The counts of live and owned objects stay whole.
pub fn plan_focused(
    state: &State,
    mapping: &Mapping,
    only: Option<ObjectKind>,
    removal: &Removal,
    focus: &Focus,
) -> Plan {
    let refs = References::new(state, mapping);
    plan_with(
        state,
        only,
        &refs,
        removal,
        &|anchor: &str, rec: &ObjectRecord| mapping.map(anchor, rec),
        focus,
    )
}

/// How the reference attributes of a mapping (`manager`) find the objects they name: by
/// anchor, else by DN.
pub struct References<'a> {
    /// The reference rules' keys and expressions.
    keys: Vec<(&'a str, &'a str)>,
    /// Normalised DN -> anchor of the live objects; built only when there are references.
    by_dn: std::collections::HashMap<String, &'a str>,
}

impl<'a> References<'a> {
    /// None: the mapping has no reference attribute.
    pub fn none() -> References<'static> {
        References {
            keys: Vec::new(),
            by_dn: Default::default(),
        }
    }

    pub fn new(state: &'a State, mapping: &'a Mapping) -> References<'a> {
        let keys: Vec<(&str, &str)> = mapping.references().collect();
        let by_dn = if keys.is_empty() {
            Default::default()
        } else {
            state
                .objects
                .live()
                .map(|(a, r)| (crate::source::dn::normalise_dn(&r.dn), a.as_str()))
                .collect()
        };
        References { keys, by_dn }
    }

    /// The anchor of the live object that `value` (an anchor or a DN) names: by its DN, or
    /// by a DN it had before it was renamed (AD's links follow a rename; the report's
    /// value read earlier still has the old name).
    fn anchor<'s>(&'s self, state: &'s State, value: &'s str) -> Option<&'s str> {
        let live = |a: &str| state.objects.objects.get(a).is_some_and(|r| r.live());
        if live(value) {
            return Some(value);
        }
        self.by_dn
            .get(&crate::source::dn::normalise_dn(value))
            .copied()
            .or_else(|| state.objects.formerly(value))
    }
}

/// How a source object is mapped: [`Mapping::map`]; `plan_with` takes another only so that
/// the plan benchmark can compare mappings in one run.
pub type MapFn<'m> = dyn Fn(&str, &ObjectRecord) -> Result<Desired, Unmappable> + Sync + 'm;

/// [`plan`], with the mapping as a function.
pub fn plan_with(
    state: &State,
    only: Option<ObjectKind>,
    refs: &References<'_>,
    removal: &Removal,
    map: &MapFn<'_>,
    focus: &Focus,
) -> Plan {
    let ledger = &state.ledger;
    let mut out = Plan {
        owned: ledger.owned().count() as u64,
        ..Default::default()
    };
    let objects = &state.objects.objects;
    let is_live = |anchor: &str| objects.get(anchor).is_some_and(|r| r.live());
    let of_kind = |rec: &ObjectRecord| only.is_none_or(|k| k == rec.kind);
    // Sorted, so the plan (and what dry-run prints) is the same every time.
    let mut live: Vec<(&String, &ObjectRecord)> = match focus {
        Focus::Whole(_) => state.objects.live().collect(),
        Focus::Changed(set) => {
            out.live = state.objects.live().filter(|(_, r)| of_kind(r)).count() as u64;
            set.iter()
                .filter_map(|a| objects.get_key_value(a))
                .filter(|(_, r)| r.live())
                .map(|(a, r)| (a, &**r))
                .collect()
        }
    };
    sort_by_anchor(&mut live);
    live.retain(|(_, rec)| of_kind(rec));
    if focus.whole().is_some() {
        out.live = live.len() as u64;
    }
    // Mapping and comparing are most of the work, and each object's are its own: on every
    // core. Objects that need nothing are dropped there.
    let unresolved = AtomicUsize::new(0);
    // Rare (a reference naming nothing): a lock taken only then.
    let dangling = Mutex::new(Vec::new());
    let needs = crate::par::filter_map(&live, 4096, |&(anchor, rec)| {
        let mapped = match desired_with(state, refs, anchor, rec, map) {
            Ok((m, missing, gone)) => {
                unresolved.fetch_add(missing, Ordering::Relaxed);
                if !gone.is_empty() {
                    dangling
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(gone);
                }
                m
            }
            Err(why) => return Some(Need::Unmappable(anchor, why)),
        };
        match ledger
            .entries
            .get(anchor.as_str())
            .filter(|l| l.deleted.is_none())
        {
            None => Some(Need::New(anchor, mapped)),
            // A user disabled while it was gone is back: re-enabled (the update's record
            // ends its wait for deletion) even when nothing else differs.
            Some(l) if l.state.as_ref() != Some(&mapped) || l.disabled.is_some() => {
                Some(Need::Update(anchor, l, mapped))
            }
            Some(_) => None,
        }
    });
    out.unresolved_members = unresolved.into_inner();
    out.dangling = dangling
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    out.dangling.sort();
    // Sized once: for a first sync that is every object, a list of tens of megabytes.
    out.new
        .reserve_exact(needs.iter().filter(|n| matches!(n, Need::New(..))).count());
    for need in needs {
        match need {
            Need::New(anchor, mapped) => out.new.push((anchor.clone(), mapped)),
            Need::Update(anchor, l, to) => out.updates.push(Op::Update {
                anchor: anchor.clone(),
                target_id: l.target_id.clone(),
                from: l.state.clone(),
                to,
                etag: l.etag.clone(),
            }),
            Need::Unmappable(anchor, why) => out.unmappable.push((anchor.clone(), why)),
        }
    }
    let mut deletes: Vec<Op> = Vec::new();
    let owned_gone: Vec<(&String, &LedgerEntry)> = match focus {
        Focus::Whole(_) => ledger.owned().filter(|(a, _)| !is_live(a)).collect(),
        Focus::Changed(set) => set
            .iter()
            .filter_map(|a| ledger.entries.get_key_value(a))
            .filter(|(a, l)| l.deleted.is_none() && !is_live(a))
            .map(|(a, l)| (a, &**l))
            .collect(),
    };
    for (a, l) in owned_gone {
        let delete = Op::Delete {
            anchor: a.clone(),
            kind: l.kind,
            target_id: l.target_id.clone(),
        };
        match gone(removal, l.kind, l.disabled.as_ref()) {
            Gone::Delete => deletes.push(delete),
            Gone::Awaiting { due_us } => out.awaiting.push((a.clone(), due_us)),
            Gone::Disable => match disable_op(state, refs, a, l, map) {
                Some(op) => out.disables.push(op),
                // Nothing to write it inactive with (no state, no record to map).
                None => deletes.push(delete),
            },
        }
    }
    out.disables.sort_by(|a, b| a.anchor().cmp(b.anchor()));
    out.awaiting.sort();
    // Groups first: members are removed with the group, not one by one.
    deletes.sort_by(|a, b| (b.kind(), a.anchor()).cmp(&(a.kind(), b.anchor())));
    out.deletes = deletes;
    out
}

/// The update that sets the owned user `anchor` inactive: its last exported state with
/// `active = false` (or, without one, its last source record mapped so).
fn disable_op(
    state: &State,
    refs: &References<'_>,
    anchor: &str,
    l: &LedgerEntry,
    map: &MapFn<'_>,
) -> Option<Op> {
    let from = l.state.clone();
    let base = match &from {
        Some(m) => m.clone(),
        None => {
            let rec = state.objects.objects.get(anchor)?;
            desired_with(state, refs, anchor, rec, map).ok()?.0
        }
    };
    let Mapped::User(mut to) = base else {
        return None;
    };
    to.active = false;
    Some(Op::Update {
        anchor: anchor.to_string(),
        target_id: l.target_id.clone(),
        from,
        to: Mapped::User(to),
        etag: l.etag.clone(),
    })
}

/// What the target should hold for the live source object `rec`: its mapped form, with a
/// group's members resolved to the target ids of members that are live and owned (and how
/// many members were left out for now); or why it cannot be mapped.
pub fn desired(
    state: &State,
    mapping: &Mapping,
    anchor: &str,
    rec: &ObjectRecord,
) -> Result<(Mapped, usize), String> {
    desired_in(
        state,
        mapping,
        &References::new(state, mapping),
        anchor,
        rec,
    )
}

/// [`desired`], with the references' index built once by the caller.
pub fn desired_in(
    state: &State,
    mapping: &Mapping,
    refs: &References<'_>,
    anchor: &str,
    rec: &ObjectRecord,
) -> Result<(Mapped, usize), String> {
    desired_with(state, refs, anchor, rec, &|a: &str, r: &ObjectRecord| {
        mapping.map(a, r)
    })
    .map(|(m, missing, _)| (m, missing))
}

fn desired_with(
    state: &State,
    refs: &References<'_>,
    anchor: &str,
    rec: &ObjectRecord,
    map: &MapFn<'_>,
) -> Result<(Mapped, usize, Vec<Dangling>), String> {
    // A member is in its group in the target when it is live in the source and owned.
    let resolve = |anchor: &str| {
        if !state.objects.objects.get(anchor).is_some_and(|r| r.live()) {
            return None;
        }
        state
            .ledger
            .entries
            .get(anchor)
            .filter(|l| l.deleted.is_none())
            .map(|l| l.target_id.clone())
    };
    match map(anchor, rec) {
        Ok(Desired::User(mut u)) => {
            // A reference is the referenced object's target id, once it has one (like a
            // group's members); until then it is left out and counted. One that names no
            // live object is left out and reported: it will not resolve by waiting.
            let mut missing = 0;
            let mut dangling = Vec::new();
            for &(key, expr) in &refs.keys {
                let Some(v) = u.extra.get_mut(key) else {
                    continue;
                };
                match refs.anchor(state, v).map(&resolve) {
                    Some(Some(id)) => *v = id.into(),
                    Some(None) => {
                        u.extra.remove(key);
                        missing += 1;
                    }
                    None => {
                        if let Some(value) = u.extra.remove(key) {
                            dangling.push(Dangling {
                                anchor: anchor.to_string(),
                                key: key.to_string(),
                                expr: expr.to_string(),
                                value: value.to_string(),
                            });
                        }
                    }
                }
            }
            Ok((Mapped::User(u), missing, dangling))
        }
        Ok(Desired::Group {
            display_name,
            members,
        }) => {
            let (g, missing) = resolve_group(&display_name, &members, resolve);
            Ok((Mapped::Group(g), missing, Vec::new()))
        }
        Err(why) => Err(why.0),
    }
}

/// Sorts by anchor: by the anchors' first eight bytes, kept beside them so that most
/// comparisons read no string, then in full among equal prefixes.
fn sort_by_anchor<T: Copy>(items: &mut Vec<(&String, T)>) {
    let prefix = |a: &str| {
        let mut b = [0u8; 8];
        let n = a.len().min(8);
        b[..n].copy_from_slice(&a.as_bytes()[..n]);
        u64::from_be_bytes(b)
    };
    let mut keyed: Vec<(u64, (&String, T))> = items.iter().map(|&x| (prefix(x.0), x)).collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1 .0.cmp(b.1 .0)));
    items.clear();
    items.extend(keyed.into_iter().map(|(_, x)| x));
}

/// SHA-256 (hex) of the exact, sorted list of anchors: what `deletions approve` names.
pub fn plan_hash(sorted_anchors: &[String]) -> String {
    let mut h = Sha256::new();
    for a in sorted_anchors {
        h.update(a.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// The digits of a plan hash that name it to people: `deletions approve --plan` takes any
/// unique prefix of [`MIN_PLAN_PREFIX`] digits or more.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The fewest hex digits of a plan hash `deletions approve --plan` takes.
pub const MIN_PLAN_PREFIX: usize = 8;

/// What a `--plan` prefix names among the held lists' hashes.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanPrefix<'a> {
    /// Not hex, or fewer than [`MIN_PLAN_PREFIX`] digits.
    Malformed,
    Unknown,
    One(&'a str),
    Ambiguous(Vec<&'a str>),
}

/// The plan hash among `hashes` that `prefix` names (pure; case-insensitive).
pub fn find_plan<'a>(hashes: impl Iterator<Item = &'a String>, prefix: &str) -> PlanPrefix<'a> {
    if prefix.len() < MIN_PLAN_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return PlanPrefix::Malformed;
    }
    let prefix = prefix.to_ascii_lowercase();
    let found: Vec<&str> = hashes
        .filter(|h| h.starts_with(&prefix))
        .map(String::as_str)
        .collect();
    match found.as_slice() {
        [] => PlanPrefix::Unknown,
        [one] => PlanPrefix::One(one),
        _ => PlanPrefix::Ambiguous(found),
    }
}

/// What the guard decided about a cycle's deletions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to delete, or within every limit.
    Allow,
    /// This exact list was approved.
    Approved { plan_hash: String },
    /// Hold every deletion of the cycle.
    Hold { plan_hash: String, reason: String },
}

/// The guard's inputs, all from projections and the clock.
#[derive(Clone, Debug)]
pub struct GuardInput<'a> {
    /// This cycle's deletions, sorted.
    pub deletes: &'a [String],
    /// Objects the ledger owns now.
    pub owned: u64,
    /// Live in-scope source objects (all kinds).
    pub live: u64,
    /// Deletions exported within the rolling window before now.
    pub recent: u64,
    pub threshold: Threshold,
}

/// Decide (pure). `approved(hash)` tells whether that exact list was approved.
pub fn guard(i: &GuardInput<'_>, approved: impl Fn(&str) -> bool) -> Verdict {
    let n = i.deletes.len() as u64;
    if n == 0 {
        return Verdict::Allow;
    }
    let plan_hash = plan_hash(i.deletes);
    if approved(&plan_hash) {
        return Verdict::Approved { plan_hash };
    }
    let limit = i.threshold.limit(i.owned);
    let hold = |reason: String| Verdict::Hold {
        plan_hash: plan_hash.clone(),
        reason,
    };
    if i.live == 0 {
        return hold(format!(
            "the source returned no objects while {} are owned in the target: an empty source is never \"delete everything\"",
            i.owned
        ));
    }
    if (i.live as f64) < (i.owned as f64) * SHRUNK_SOURCE_RATIO {
        return hold(format!(
            "the source holds {} objects, far fewer than the {} owned in the target",
            i.live, i.owned
        ));
    }
    if n > limit {
        return hold(format!(
            "{n} deletions exceed the deletion threshold of {limit} per cycle"
        ));
    }
    if i.recent + n > limit {
        return hold(format!(
            "{n} deletions after {} in the last 24 hours exceed the deletion threshold of {limit}",
            i.recent
        ));
    }
    Verdict::Allow
}

/// What the guard's stream records for a cycle's `verdict` on its sorted `deletes`, given the
/// held list that stands (`current`), pure: a hold of a list that does not stand already
/// (`DeletionsHeld`; the same list again records nothing), or the end of the list that stood
/// when this cycle holds nothing (`DeletionsHoldEnded`, with why).
pub fn guard_event(current: Option<&str>, verdict: &Verdict, deletes: &[String]) -> Option<Event> {
    match verdict {
        Verdict::Hold { plan_hash, reason } => (current != Some(plan_hash.as_str())).then(|| {
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: plan_hash.clone(),
                anchors: deletes.to_vec(),
                reason: reason.clone(),
            })
        }),
        _ => {
            let current = current?;
            let reason = match verdict {
                Verdict::Approved { plan_hash } if plan_hash == current => {
                    "approved: this cycle exports it".to_string()
                }
                Verdict::Approved { plan_hash } => {
                    format!("this cycle's deletions are another list, approved as plan {plan_hash}")
                }
                _ if deletes.is_empty() => "this cycle has no deletions".to_string(),
                _ => format!(
                    "this cycle's {} deletion(s) are within the guard's limits",
                    deletes.len()
                ),
            };
            Some(Event::DeletionsHoldEnded(DeletionsHoldEnded {
                plan_hash: current.to_string(),
                reason,
            }))
        }
    }
}

/// Deletions exported in the rolling window before `now_us` (from the ledger). Deletions an
/// operator approved do not count against later cycles: they were looked at.
pub fn recent_deletions(state: &State, now_us: i64) -> u64 {
    let approved: std::collections::HashSet<&str> = state
        .control
        .guard
        .plans
        .values()
        .filter(|p| p.approved.is_some())
        .flat_map(|p| p.anchors.iter().map(String::as_str))
        .collect();
    let owned = state
        .ledger
        .entries
        .iter()
        .filter(|(a, l)| {
            l.deleted
                .is_some_and(|d| d.at_us > now_us - GUARD_WINDOW_US)
                && !approved.contains(a.as_str())
        })
        .count();
    // Duplicates removed from the target (sync::reconcile) are deletions too.
    let duplicates = state
        .control
        .guard
        .duplicates_removed
        .iter()
        .filter(|(key, at)| at.at_us > now_us - GUARD_WINDOW_US && !approved.contains(key.as_str()))
        .count();
    (owned + duplicates) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SourceKind, TargetKind};

    fn ad() -> Mapping {
        Mapping::default_for(SourceKind::Ad, TargetKind::Scim)
    }
    use crate::log::event::{
        AttrValue, DeletionEvidence, Event, ExportApplied, ExportOp, ObjectDeleted, ObjectImported,
        SourceObject,
    };
    use crate::project::Meta;
    use std::collections::BTreeSet;

    struct Given {
        state: State,
        seq: u64,
    }

    impl Given {
        fn new() -> Given {
            Given {
                state: State::default(),
                seq: 0,
            }
        }
        fn event(mut self, e: Event) -> Given {
            self.seq += 1;
            let m = Meta {
                seq: self.seq,
                instance: "a",
                recorded_at_us: self.seq as i64,
            };
            self.state.apply(&m, e);
            self
        }
        fn user(self, anchor: &str, upn: &str) -> Given {
            self.user_with(anchor, upn, &[])
        }
        /// A user with more attributes (name, value).
        fn user_with(self, anchor: &str, upn: &str, more: &[(&str, &str)]) -> Given {
            let mut attrs = vec![(
                "userprincipalname".to_string(),
                vec![AttrValue::Text(upn.into())],
            )];
            attrs.extend(
                more.iter()
                    .map(|(k, v)| (k.to_string(), vec![AttrValue::Text((*v).into())])),
            );
            self.event(Event::ObjectImported(ObjectImported {
                object: SourceObject {
                    anchor: anchor.into(),
                    kind: ObjectKind::User,
                    dn: format!("CN={anchor},DC=t"),
                    attrs: attrs.into_iter().collect(),
                    members: BTreeSet::new(),
                },
                returned: false,
            }))
        }
        fn group(self, anchor: &str, cn: &str, members: &[&str]) -> Given {
            self.event(Event::ObjectImported(ObjectImported {
                object: SourceObject {
                    anchor: anchor.into(),
                    kind: ObjectKind::Group,
                    dn: format!("CN={cn},DC=t"),
                    attrs: [("cn".to_string(), vec![AttrValue::Text(cn.into())])]
                        .into_iter()
                        .collect(),
                    members: members.iter().map(|s| s.to_string()).collect(),
                },
                returned: false,
            }))
        }
        fn exported(self, anchor: &str, id: &str, state: &Mapped) -> Given {
            let kind = state.kind();
            self.event(Event::ExportApplied(ExportApplied {
                epoch: 1,
                anchor: anchor.into(),
                kind,
                op: ExportOp::Create,
                target_id: id.into(),
                state: Some(serde_json::to_value(state).unwrap()),
                etag: None,
            }))
        }
        fn exported_op(self, anchor: &str, id: &str, state: &Mapped, op: ExportOp) -> Given {
            let kind = state.kind();
            self.event(Event::ExportApplied(ExportApplied {
                epoch: 1,
                anchor: anchor.into(),
                kind,
                op,
                target_id: id.into(),
                state: Some(serde_json::to_value(state).unwrap()),
                etag: None,
            }))
        }
        fn deleted(self, anchor: &str) -> Given {
            self.event(Event::ObjectDeleted(ObjectDeleted {
                anchor: anchor.into(),
                evidence: DeletionEvidence::SyncDelete {
                    phase: "delete".into(),
                },
            }))
        }
    }

    fn u(upn: &str) -> Mapped {
        Mapped::User(crate::target::MappedUser {
            user_name: upn.into(),
            active: true,
            ..Default::default()
        })
    }

    #[test]
    fn anchors_sort_as_strings_do() {
        let names = [
            "",
            "a",
            "a\0",
            "a\0\0",
            "abcdefgh",
            "abcdefgh",
            "abcdefgh0",
            "abcdefgi",
            "abcdefg",
            "zz",
            "é",
            "e\u{301}",
            "0123456789abcdef",
            "0123456789abcdee",
            "\u{ff}",
        ];
        let strings: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut items: Vec<(&String, usize)> = strings.iter().rev().map(|s| (s, s.len())).collect();
        sort_by_anchor(&mut items);
        let mut want = strings.clone();
        want.sort();
        assert_eq!(
            items.iter().map(|(s, _)| (*s).clone()).collect::<Vec<_>>(),
            want
        );
    }

    #[test]
    fn new_objects_then_nothing_once_exported() {
        let g = Given::new().user("a1", "ann@t").user("a2", "bob@t");
        let p = plan(&g.state, &ad(), None);
        assert_eq!(p.new.len(), 2);
        assert_eq!(p.new[0].0, "a1");
        let g = g
            .exported("a1", "T1", &u("ann@t"))
            .exported("a2", "T2", &u("bob@t"));
        let p = plan(&g.state, &ad(), None);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn changes_become_updates_from_the_ledger_state() {
        let g = Given::new()
            .user("a1", "ann@t")
            .exported("a1", "T1", &u("old@t"));
        let p = plan(&g.state, &ad(), None);
        assert_eq!(
            p.updates,
            vec![Op::Update {
                anchor: "a1".into(),
                target_id: "T1".into(),
                from: Some(u("old@t")),
                to: u("ann@t"),
                etag: None
            }]
        );
    }

    #[test]
    fn deletions_and_group_members_resolve_through_the_ledger() {
        let g = Given::new()
            .user("a1", "ann@t")
            .user("a2", "bob@t")
            .group("g1", "Staff", &["a1", "a2"])
            .exported("a1", "T1", &u("ann@t"));
        let p = plan(&g.state, &ad(), Some(ObjectKind::Group));
        assert_eq!(p.unresolved_members, 1);
        let Mapped::Group(gr) = &p.new[0].1 else {
            panic!()
        };
        assert_eq!(gr.members, BTreeSet::from(["T1".to_string()]));
        let g = g.deleted("a1");
        let p = plan(&g.state, &ad(), None);
        assert_eq!(p.delete_anchors(), vec!["a1".to_string()]);
        let Mapped::Group(gr) = &p.new.iter().find(|(a, _)| a == "g1").unwrap().1 else {
            panic!()
        };
        assert!(gr.members.is_empty(), "a deleted member is not resolved");
    }

    #[test]
    fn a_gone_user_is_disabled_then_deleted_when_due_and_groups_go_at_once() {
        use std::time::Duration;
        let disable = |now_us| Removal {
            on_delete: OnDelete::Disable {
                after: Duration::from_micros(100),
            },
            now_us,
        };
        let at = |us| crate::project::At { seq: 1, at_us: us };
        // The pure decision.
        assert_eq!(
            gone(&Removal::delete(), ObjectKind::User, None),
            Gone::Delete
        );
        assert_eq!(gone(&disable(0), ObjectKind::Group, None), Gone::Delete);
        assert_eq!(gone(&disable(0), ObjectKind::User, None), Gone::Disable);
        assert_eq!(
            gone(&disable(149), ObjectKind::User, Some(&at(50))),
            Gone::Awaiting { due_us: 150 }
        );
        assert_eq!(
            gone(&disable(150), ObjectKind::User, Some(&at(50))),
            Gone::Delete
        );
        // A disabled user under "delete" (the policy changed): deleted now.
        assert_eq!(
            gone(&Removal::delete(), ObjectKind::User, Some(&at(50))),
            Gone::Delete
        );

        // Through the plan: a1 (user) and g1 (group) deleted in the source.
        let g = Given::new()
            .user("a1", "ann@t")
            .exported("a1", "T1", &u("ann@t"))
            .group("g1", "Staff", &[])
            .exported(
                "g1",
                "G1",
                &Mapped::Group(crate::target::MappedGroup {
                    display_name: "Staff".into(),
                    ..Default::default()
                }),
            )
            .deleted("a1")
            .deleted("g1");
        let p = plan_at(&g.state, &ad(), None, &disable(1_000));
        let mut off = match u("ann@t") {
            Mapped::User(u) => u,
            Mapped::Group(_) => unreachable!(),
        };
        off.active = false;
        assert_eq!(
            p.disables,
            vec![Op::Update {
                anchor: "a1".into(),
                target_id: "T1".into(),
                from: Some(u("ann@t")),
                to: Mapped::User(off.clone()),
                etag: None,
            }]
        );
        assert_eq!(p.delete_anchors(), vec!["g1".to_string()], "groups at once");
        assert!(p.awaiting.is_empty());
        // The disable is recorded (seq 7, at 7 µs): it waits, then it is due.
        let g = g.event(Event::ExportApplied(ExportApplied {
            epoch: 1,
            anchor: "a1".into(),
            kind: ObjectKind::User,
            op: ExportOp::Disable,
            target_id: "T1".into(),
            state: Some(serde_json::to_value(Mapped::User(off.clone())).unwrap()),
            etag: None,
        }));
        let disabled_at = g.state.ledger.entries["a1"].disabled.unwrap();
        assert_eq!(disabled_at, crate::project::At { seq: 7, at_us: 7 });
        let p = plan_at(&g.state, &ad(), None, &disable(106));
        assert!(p.disables.is_empty());
        assert_eq!(p.awaiting, vec![("a1".to_string(), 107)]);
        assert_eq!(p.delete_anchors(), vec!["g1".to_string()]);
        let p = plan_at(&g.state, &ad(), None, &disable(107));
        assert!(p.awaiting.is_empty());
        assert_eq!(p.delete_anchors(), vec!["a1".to_string(), "g1".to_string()]);
        // Back before its time: re-enabled by an update, and no longer awaiting deletion.
        let g = g.user("a1", "ann@t");
        let p = plan_at(&g.state, &ad(), None, &disable(106));
        assert_eq!(
            p.updates,
            vec![Op::Update {
                anchor: "a1".into(),
                target_id: "T1".into(),
                from: Some(Mapped::User(off)),
                to: u("ann@t"),
                etag: None,
            }]
        );
        assert!(p.awaiting.is_empty() && p.disables.is_empty());
        let g = g.exported_op("a1", "T1", &u("ann@t"), ExportOp::Update);
        assert_eq!(g.state.ledger.entries["a1"].disabled, None, "re-enabled");
        assert!(plan_at(&g.state, &ad(), None, &disable(106))
            .updates
            .is_empty());
    }

    #[test]
    fn a_reference_naming_no_object_is_left_out_and_reported_one_not_yet_exported_waits() {
        use crate::plan::mapping::testkit::{with_manager, EXPR, MANAGER};
        let mapping = with_manager(SourceKind::Ad);
        let g = Given::new()
            .user("a1", "ann@t")
            // By DN (spelt otherwise), by anchor, a live user not exported yet, nobody, a
            // deleted user.
            .user_with("a2", "bob@t", &[("manager", "cn=A1,dc=t")])
            .user_with("a3", "cat@t", &[("manager", "a1")])
            .user_with("a4", "dan@t", &[("manager", "CN=a2,DC=t")])
            .user_with("a5", "eve@t", &[("manager", "CN=nobody,DC=t")])
            .user("a6", "fay@t")
            .user_with("a7", "gus@t", &[("manager", "CN=a6,DC=t")])
            .deleted("a6")
            .exported("a1", "T1", &u("ann@t"));
        let p = plan(&g.state, &mapping, None);
        let with_manager = |upn: &str, id: Option<&str>| {
            let Mapped::User(mut m) = u(upn) else {
                unreachable!()
            };
            m.extra.extend(id.map(|id| (MANAGER.into(), id.into())));
            Mapped::User(m)
        };
        assert_eq!(
            p.new,
            vec![
                ("a2".to_string(), with_manager("bob@t", Some("T1"))),
                ("a3".to_string(), with_manager("cat@t", Some("T1"))),
                ("a4".to_string(), with_manager("dan@t", None)),
                ("a5".to_string(), with_manager("eve@t", None)),
                ("a7".to_string(), with_manager("gus@t", None)),
            ]
        );
        // a4's manager (a2) is live: it resolves once a2 is exported, so it only waits.
        assert_eq!(p.unresolved_members, 1);
        let dangling = |anchor: &str, value: &str| Dangling {
            anchor: anchor.into(),
            key: MANAGER.into(),
            expr: EXPR.into(),
            value: value.into(),
        };
        assert_eq!(
            p.dangling,
            vec![
                dangling("a5", "CN=nobody,DC=t"),
                dangling("a7", "CN=a6,DC=t")
            ]
        );
        assert_eq!(
            p.dangling[0].detail(),
            format!("{MANAGER} `{EXPR}` gave \"CN=nobody,DC=t\", which names no object in scope (no live object has that DN or anchor): exported without {MANAGER}")
        );
        // Reported again by a plan with nothing to export for the object.
        let g = g.exported("a5", "T5", &with_manager("eve@t", None));
        let p = plan(&g.state, &mapping, None);
        assert!(p.new.iter().all(|(a, _)| a != "a5"), "{p:?}");
        assert_eq!(
            p.dangling,
            vec![
                dangling("a5", "CN=nobody,DC=t"),
                dangling("a7", "CN=a6,DC=t")
            ]
        );
    }

    #[test]
    fn unmappable_users_are_reported() {
        let g = Given::new().user("a1", "  ");
        let p = plan(&g.state, &ad(), None);
        assert!(p.new.is_empty());
        assert_eq!(p.unmappable.len(), 1);
    }

    #[test]
    fn approved_deletions_do_not_count_in_the_window() {
        use crate::log::event::{DeletionsApproved, DeletionsHeld};
        let g = Given::new()
            .user("a1", "ann@t")
            .exported("a1", "T1", &u("ann@t"))
            .user("a2", "bob@t")
            .exported("a2", "T2", &u("bob@t"))
            .event(Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "h".into(),
                anchors: vec!["a1".into()],
                reason: "test".into(),
            }))
            .event(Event::DeletionsApproved(DeletionsApproved {
                plan_hash: "h".into(),
                approved_by: None,
            }));
        let del = |g: Given, a: &str| {
            g.event(Event::ExportApplied(ExportApplied {
                epoch: 1,
                anchor: a.into(),
                kind: ObjectKind::User,
                op: ExportOp::Delete,
                target_id: "x".into(),
                state: None,
                etag: None,
            }))
        };
        let g = del(del(g, "a1"), "a2");
        assert_eq!(recent_deletions(&g.state, 100), 1, "a1 was approved");
        assert_eq!(
            recent_deletions(&g.state, GUARD_WINDOW_US + 100),
            0,
            "out of the window"
        );
        // Duplicates removed count too, unless their list was approved.
        let dup = |g: Given, id: &str| {
            g.event(Event::DuplicateRemoved(
                crate::log::event::DuplicateRemoved {
                    epoch: 1,
                    anchor: "a2".into(),
                    kind: ObjectKind::User,
                    target_id: id.into(),
                },
            ))
        };
        let g = dup(dup(g, "D1"), "D2")
            .event(Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "h2".into(),
                anchors: vec!["a2@D2".into()],
                reason: "test".into(),
            }))
            .event(Event::DeletionsApproved(DeletionsApproved {
                plan_hash: "h2".into(),
                approved_by: None,
            }));
        assert_eq!(recent_deletions(&g.state, 100), 2, "a2 and a2@D1");
    }

    #[test]
    fn a_plan_is_named_by_a_unique_prefix_of_eight_hex_digits_or_more() {
        let hashes: Vec<String> = ["0123456789abcdef", "0123456789abffff", "fedcba9876543210"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let find = |p: &str| find_plan(hashes.iter(), p);
        assert_eq!(find("fedcba98"), PlanPrefix::One("fedcba9876543210"));
        assert_eq!(find("FEDCBA9876"), PlanPrefix::One("fedcba9876543210"));
        assert_eq!(find("0123456789abc"), PlanPrefix::One("0123456789abcdef"));
        assert_eq!(
            find("0123456789ab"),
            PlanPrefix::Ambiguous(vec!["0123456789abcdef", "0123456789abffff"])
        );
        assert_eq!(find("fedcba9"), PlanPrefix::Malformed, "seven digits");
        assert_eq!(find("fedcba9g"), PlanPrefix::Malformed, "not hex");
        assert_eq!(find("aaaaaaaa"), PlanPrefix::Unknown);
        assert_eq!(short_hash("0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn a_cycle_records_a_list_once_while_it_stands_and_its_end() {
        let d = vec!["a1".to_string(), "a2".to_string()];
        let hold = Verdict::Hold {
            plan_hash: "h2".into(),
            reason: "why".into(),
        };
        assert_eq!(
            guard_event(Some("h1"), &hold, &d),
            Some(Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "h2".into(),
                anchors: d.clone(),
                reason: "why".into(),
            }))
        );
        assert_eq!(guard_event(Some("h2"), &hold, &d), None, "stands already");
        let ended =
            |current, verdict: &Verdict, d: &[String]| match guard_event(current, verdict, d) {
                Some(Event::DeletionsHoldEnded(e)) => Some((e.plan_hash, e.reason)),
                other => panic!("{other:?}"),
            };
        let approved = |h: &str| Verdict::Approved {
            plan_hash: h.into(),
        };
        assert_eq!(
            ended(Some("h2"), &approved("h2"), &d),
            Some(("h2".into(), "approved: this cycle exports it".into()))
        );
        assert_eq!(
            ended(Some("h2"), &approved("h3"), &d).unwrap().1,
            "this cycle's deletions are another list, approved as plan h3"
        );
        assert_eq!(
            ended(Some("h2"), &Verdict::Allow, &d).unwrap().1,
            "this cycle's 2 deletion(s) are within the guard's limits"
        );
        assert_eq!(
            ended(Some("h2"), &Verdict::Allow, &[]).unwrap().1,
            "this cycle has no deletions"
        );
        assert_eq!(
            guard_event(None, &Verdict::Allow, &d),
            None,
            "nothing stood"
        );
    }

    #[test]
    fn the_held_list_stands_until_another_or_none_is_held() {
        use crate::log::event::{DeletionsApproved, DeletionsHeld, DeletionsHoldEnded};
        let held = |h: &str| {
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: h.into(),
                anchors: vec![h.into()],
                reason: "test".into(),
            })
        };
        let g = Given::new().event(held("h1"));
        assert_eq!(
            g.state.control.guard.waiting().map(|(h, _)| h.as_str()),
            Some("h1")
        );
        let g = g.event(held("h2"));
        assert_eq!(
            g.state.control.guard.current.as_deref(),
            Some("h2"),
            "h1 superseded"
        );
        let g = g.event(Event::DeletionsHoldEnded(DeletionsHoldEnded {
            plan_hash: "h1".into(),
            reason: "stale".into(),
        }));
        assert_eq!(
            g.state.control.guard.current.as_deref(),
            Some("h2"),
            "h1 ended nothing"
        );
        // h1 held anew: it stands again, held at its new seq.
        let g = g.event(held("h1"));
        assert_eq!(g.state.control.guard.current.as_deref(), Some("h1"));
        assert_eq!(g.state.control.guard.plans["h1"].held.seq, g.seq);
        let g = g.event(Event::DeletionsApproved(DeletionsApproved {
            plan_hash: "h1".into(),
            approved_by: None,
        }));
        assert_eq!(g.state.control.guard.current.as_deref(), Some("h1"));
        assert_eq!(
            g.state.control.guard.waiting(),
            None,
            "approved: nothing waits"
        );
        let g = g.event(Event::DeletionsHoldEnded(DeletionsHoldEnded {
            plan_hash: "h1".into(),
            reason: "exported".into(),
        }));
        assert_eq!(g.state.control.guard.current, None);
        assert_eq!(g.state.control.guard.plans.len(), 2, "kept for the record");
    }

    fn anchors(n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n).map(|i| format!("a{i:05}")).collect();
        v.sort();
        v
    }

    #[test]
    fn guard_holds_over_threshold_until_exactly_that_list_is_approved() {
        let d = anchors(600);
        let input = GuardInput {
            deletes: &d,
            owned: 2000,
            live: 1400,
            recent: 0,
            threshold: Threshold::Count(500),
        };
        let Verdict::Hold { plan_hash, .. } = guard(&input, |_| false) else {
            panic!("600 > 500 must hold")
        };
        assert_eq!(plan_hash, super::plan_hash(&d));
        assert_eq!(
            guard(&input, |h| h == plan_hash),
            Verdict::Approved {
                plan_hash: plan_hash.clone()
            }
        );
        let d2 = anchors(601);
        let input2 = GuardInput {
            deletes: &d2,
            ..input.clone()
        };
        assert!(matches!(
            guard(&input2, |h| h == plan_hash),
            Verdict::Hold { .. }
        ));
    }

    #[test]
    fn guard_counts_percent_window_and_empty_or_shrunk_sources() {
        let d = anchors(10);
        let base = GuardInput {
            deletes: &d,
            owned: 200,
            live: 190,
            recent: 0,
            threshold: Threshold::Percent(10.0),
        };
        assert_eq!(guard(&base, |_| false), Verdict::Allow);
        let windowed = GuardInput {
            recent: 15,
            ..base.clone()
        };
        assert!(matches!(guard(&windowed, |_| false), Verdict::Hold { .. }));
        let empty = GuardInput {
            live: 0,
            threshold: Threshold::Count(1000),
            ..base.clone()
        };
        assert!(
            matches!(guard(&empty, |_| false), Verdict::Hold { reason, .. } if reason.contains("no objects"))
        );
        let shrunk = GuardInput {
            live: 60,
            threshold: Threshold::Count(1000),
            ..base.clone()
        };
        assert!(matches!(guard(&shrunk, |_| false), Verdict::Hold { .. }));
        assert_eq!(
            guard(
                &GuardInput {
                    deletes: &[],
                    ..base
                },
                |_| false
            ),
            Verdict::Allow
        );
    }
}

//! Which objects a cycle plans (pure): all of them, or only those the log names since the
//! instance's last cycle that tried its whole plan, with the objects whose plans read them.
//!
//! Why that is enough. After an exporting cycle that tried every operation of the plan it
//! made at seq P (`SyncRunCompleted::planned_seq`), an object needs an operation only if
//! 1. an event after P names it (imported, changed, deleted, exported, failed, held): the
//!    event types of [`CONFINED`] change the projections of the objects they name and of no
//!    other;
//! 2. its plan reads an object of 1: a group reads its members' liveness and target ids, a
//!    user the objects its reference attributes (`manager`) name;
//! 3. the projections still hold it as pending: a failed export (retried when due), an owned
//!    object gone from the source (a deletion the guard holds, a disabled user awaiting its
//!    deletion, a deletion that failed).
//!
//! Everything else was planned at P or before and its operation succeeded (or it needs none:
//! unmappable, quarantined until it changes). Any other event after P (a relationship, a
//! target reset, an anchor migration, a new scope or mapping) may change objects it does not
//! name: the cycle then plans every object, as does a cycle asked to (`--full`), a reconcile
//! (it reads the whole target anyway) and a take-over's watchful cycles. [`Focus`] says
//! which.
//!
//! A staging cycle exports nothing, so its plans are never tried: it lists instead what
//! changed in the plan since its instance's last staging cycle listed one
//! (`SyncRunCompleted::listed_seq`). By the same argument, every object outside 1-3 has the
//! operation it had in that listing; `--full` lists everything that waits.

use std::collections::HashSet;

use serde::Serialize;

use super::mapping::Mapping;
use crate::log::event::{AttrValue, Event, ObjectKind};
use crate::log::index::Rows;
use crate::log::StoredEvent;
use crate::project::State;
use crate::source::dn::normalise_dn;

pub type AnchorSet = HashSet<String, foldhash::fast::RandomState>;

/// The event types whose effect on the plan is confined to the objects they name (or that
/// have none): a cycle may plan only those objects when every event since its instance's
/// last whole plan is one of these.
pub const CONFINED: &[&str] = &[
    "ObjectImported",
    "ObjectChanged",
    "ObjectDeleted",
    "ImportCompleted",
    "CursorAdvanced",
    "CursorInvalidated",
    "SourceInfoRecorded",
    "ExportApplied",
    "ExportBatchStarted",
    "ExportBatchCompleted",
    "ExportFailed",
    "TargetDuplicateRemoved",
    "DuplicateRemoved",
    "TargetReconciled",
    "SyncRunStarted",
    "SyncRunCompleted",
    "SyncRunFailed",
    "InstanceStarted",
    "InstanceStopped",
    "DeletionsHeld",
    "DeletionsApproved",
    "DeletionsHoldEnded",
    "NotificationDelivered",
    "NotificationFailed",
];

/// Events since the last whole plan beyond which a cycle plans every object: reading and
/// closing over that many changes costs about what planning everything does.
pub const MAX_EVENTS: u64 = 100_000;

/// What a cycle plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Focus {
    /// Every object, and why.
    Whole(Whole),
    /// These objects only (see the module's documentation).
    Changed(AnchorSet),
}

impl Focus {
    /// Whether the plan considers `anchor`.
    pub fn covers(&self, anchor: &str) -> bool {
        match self {
            Focus::Whole(_) => true,
            Focus::Changed(set) => set.contains(anchor),
        }
    }

    /// The number of objects planned, of `total` (every live object and owned entry).
    pub fn objects(&self, total: usize) -> usize {
        match self {
            Focus::Whole(_) => total,
            Focus::Changed(set) => set.len(),
        }
    }

    /// Why every object is planned, if it is.
    pub fn whole(&self) -> Option<&Whole> {
        match self {
            Focus::Whole(w) => Some(w),
            Focus::Changed(_) => None,
        }
    }
}

/// Why a cycle plans every object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "why", content = "detail")]
pub enum Whole {
    /// `--full`, or an operator's export.
    Asked,
    /// The cycle reads the whole target (`[sync] reconcile_target`).
    Reconcile,
    /// After a take-over, while late creates of the old holder are watched for.
    TakeOver,
    /// No cycle of this instance has tried a whole plan yet.
    NoPlanYet,
    /// The mapping is not the one the objects were last imported under.
    Mapping,
    /// An event since the last whole plan that may change objects it does not name.
    Event(String),
    /// More events since the last whole plan than [`MAX_EVENTS`].
    Many(u64),
    /// A reference rule whose value is not one of the values it reads.
    Reference(String),
}

impl Whole {
    /// One line for the report and the log.
    pub fn describe(&self) -> String {
        match self {
            Whole::Asked => "asked for (--full)".into(),
            Whole::Reconcile => "the cycle reads the whole target".into(),
            Whole::TakeOver => "after a take-over".into(),
            Whole::NoPlanYet => "no whole plan tried yet".into(),
            Whole::Mapping => "the mapping changed".into(),
            Whole::Event(t) => format!("a {t} event since the last whole plan"),
            Whole::Many(n) => format!("{n} events since the last whole plan"),
            Whole::Reference(k) => format!("the reference {k} is computed, not read"),
        }
    }
}

/// What decides, before the log is read, whether a cycle may plan only what changed.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// `--full`, or an export asked for by hand.
    pub full: bool,
    pub reconcile: bool,
    pub take_over: bool,
    /// The instance's last whole plan (`InstanceRecord::planned_seq`), or in staging its
    /// last listing (`InstanceRecord::listed_seq`).
    pub planned_seq: Option<u64>,
    /// The state's seq: the events after `planned_seq` up to it are what changed.
    pub seq: u64,
    /// The mapping is the one the objects were last imported under.
    pub mapping_matches: bool,
}

/// Whether the cycle must plan every object (before reading what changed); otherwise the
/// seq after which the log names what changed.
pub fn start(f: &Facts) -> Result<u64, Whole> {
    if f.full {
        return Err(Whole::Asked);
    }
    if f.reconcile {
        return Err(Whole::Reconcile);
    }
    if f.take_over {
        return Err(Whole::TakeOver);
    }
    if !f.mapping_matches {
        return Err(Whole::Mapping);
    }
    let Some(p) = f.planned_seq else {
        return Err(Whole::NoPlanYet);
    };
    let since = f.seq.saturating_sub(p);
    if since > MAX_EVENTS {
        return Err(Whole::Many(since));
    }
    Ok(p)
}

/// Whether events of this type change the projections of the objects they name only.
pub fn confined(event_type: &str) -> bool {
    CONFINED.contains(&event_type)
}

/// The anchors the events after the last whole plan name, gathered one event at a time
/// (they are read from the log page by page).
#[derive(Debug, Default)]
pub struct Named(Rows);

impl Named {
    /// Add a stored event, or say why it does not tell all it changed.
    pub fn add(&mut self, e: &StoredEvent) -> Result<(), Whole> {
        if !confined(&e.event_type) {
            return Err(Whole::Event(e.event_type.clone()));
        }
        self.0.add(e.seq, &e.event_type, &e.payload);
        Ok(())
    }

    /// [`Named::add`] of an event not in the log (a dry run's import).
    pub fn add_new(&mut self, e: &Event) -> Result<(), Whole> {
        if !confined(e.event_type()) {
            return Err(Whole::Event(e.event_type().to_string()));
        }
        self.0.add_event(0, e);
        Ok(())
    }

    pub fn anchors(self) -> Vec<String> {
        self.0.anchors.into_iter().map(|(a, _)| a).collect()
    }
}

/// The objects to plan: those `named`, those the projections hold as pending, and those
/// whose plans read any of them (see the module's documentation).
pub fn focus(state: &State, mapping: &Mapping, named: Vec<String>) -> Focus {
    match changed(state, mapping, named) {
        Ok(set) => Focus::Changed(set),
        Err(w) => Focus::Whole(w),
    }
}

fn changed(state: &State, mapping: &Mapping, named: Vec<String>) -> Result<AnchorSet, Whole> {
    let objects = &state.objects.objects;
    let live = |a: &str| objects.get(a).is_some_and(|r| r.live());
    let mut set: AnchorSet = named.into_iter().collect();
    set.extend(state.ledger.failures.keys().cloned());
    set.extend(
        state
            .ledger
            .owned()
            .filter(|(a, _)| !live(a))
            .map(|(a, _)| a.clone()),
    );
    if set.is_empty() {
        return Ok(set);
    }
    // What reference rules read, and the literals they may give.
    let mut reads: Vec<&str> = Vec::new();
    let mut literals: Vec<String> = Vec::new();
    for rule in mapping
        .rules(ObjectKind::User)
        .iter()
        .filter(|r| r.slot == super::mapping::Slot::Reference)
    {
        let Some(lits) = selected_literals(&rule.expr) else {
            return Err(Whole::Reference(rule.key.clone()));
        };
        literals.extend(lits.into_iter().map(|l| normalise_dn(&l)));
        reads.extend(rule.reads.iter().map(String::as_str));
    }
    // The names a reference may give an object of the set by: its anchor, its DN and the
    // DNs it had (normalised).
    let names: HashSet<String> = if reads.is_empty() {
        HashSet::new()
    } else {
        let mut names: HashSet<String> = set
            .iter()
            .filter_map(|a| objects.get(a))
            .map(|r| normalise_dn(&r.dn))
            .collect();
        names.extend(set.iter().cloned());
        for (dn, anchors) in &state.objects.former_dns {
            if anchors.iter().any(|a| set.contains(a)) {
                names.insert(dn.clone());
            }
        }
        names
    };
    let literal_names = literals.iter().any(|l| names.contains(l));
    let mut readers = Vec::new();
    for (a, rec) in state.objects.live() {
        if set.contains(a) {
            continue;
        }
        let reads_one = match rec.kind {
            ObjectKind::Group => rec.members.iter().any(|m| set.contains(m)),
            ObjectKind::User if reads.is_empty() => false,
            ObjectKind::User => {
                literal_names
                    || rec.attrs.iter().any(|(k, vs)| {
                        reads.iter().any(|r| k.as_str().eq_ignore_ascii_case(r))
                            && vs.iter().any(|v| match v {
                                AttrValue::Text(t) => {
                                    names.contains(t.as_str()) || names.contains(&normalise_dn(t))
                                }
                                AttrValue::Binary { .. } => false,
                            })
                    })
            }
        };
        if reads_one {
            readers.push(a.clone());
        }
    }
    set.extend(readers);
    Ok(set)
}

/// The string literals of a reference rule's expression when its value can only be one of
/// the values it reads or one of those literals: no concatenation, no call but `has()`.
/// None when it may compute a value.
fn selected_literals(expr: &str) -> Option<Vec<String>> {
    let mut literals = Vec::new();
    let mut rest = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            let mut lit = String::new();
            loop {
                match chars.next() {
                    None => return None,
                    Some('\\') => return None,
                    Some(x) if x == c => break,
                    Some(x) => lit.push(x),
                }
            }
            literals.push(lit);
            rest.push(' ');
        } else {
            rest.push(c);
        }
    }
    if rest.contains('+') {
        return None;
    }
    let bytes = rest.as_bytes();
    for (i, _) in rest.match_indices('(') {
        let name_start = bytes[..i]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .map_or(0, |p| p + 1);
        let name = &rest[name_start..i];
        // A bare parenthesis groups; `has(...)` tests presence.
        if !(name.is_empty() || name == "has") || rest[..name_start].ends_with('.') {
            return None;
        }
    }
    Some(literals)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::config::SourceKind;
    use crate::log::event::{
        AttrValue, DeletionEvidence, ExportApplied, ExportFailed, ExportOp, ObjectChanged,
        ObjectDeleted, ObjectImported, SourceObject,
    };
    use crate::plan::mapping::testkit::with_manager;
    use crate::plan::plan::{plan_focused, Plan, Removal};
    use crate::project::Meta;
    use crate::target::Op;

    /// A log folded as it is written, and what each cycle of one instance plans.
    struct Sim {
        state: State,
        log: Vec<Event>,
        rng: StdRng,
        mapping: Mapping,
        /// `[sync] on_delete`: odd seeds disable users first and delete them 40 events
        /// later (the clock is the log's length).
        on_delete: crate::config::OnDelete,
        /// The kinds of operation planned, as "create u".
        seen: BTreeSet<String>,
    }

    impl Sim {
        fn append(&mut self, e: Event) {
            self.log.push(e.clone());
            let m = Meta {
                seq: self.log.len() as u64,
                instance: "a",
                recorded_at_us: self.log.len() as i64,
            };
            self.state.apply(&m, e);
        }

        fn dn(anchor: &str, n: u32) -> String {
            format!("CN={anchor}-{n},DC=t")
        }

        fn user_attrs(&mut self, anchor: &str) -> crate::log::event::Attrs {
            let mut attrs = vec![(
                "userprincipalname".to_string(),
                vec![AttrValue::Text(format!("{anchor}@t").into())],
            )];
            if self.rng.gen_bool(0.6) {
                attrs.push(("manager".to_string(), vec![self.manager_value()]));
            }
            attrs.into_iter().collect()
        }

        /// A DN of some user (maybe a former one, maybe of nobody).
        fn manager_value(&mut self) -> AttrValue {
            let i = self.rng.gen_range(0..12);
            let n = self.rng.gen_range(0..2);
            AttrValue::Text(Self::dn(&format!("u{i}"), n).into())
        }

        /// One random change in the source.
        fn source_change(&mut self) {
            let user = format!("u{}", self.rng.gen_range(0..12));
            let group = format!("g{}", self.rng.gen_range(0..3));
            let live = |s: &State, a: &str| s.objects.objects.get(a).is_some_and(|r| r.live());
            let e = match self.rng.gen_range(0..7) {
                0 | 1 if !live(&self.state, &user) => {
                    let n = self.rng.gen_range(0..2);
                    let attrs = self.user_attrs(&user);
                    Event::ObjectImported(ObjectImported {
                        object: SourceObject {
                            anchor: user.clone(),
                            kind: ObjectKind::User,
                            dn: Self::dn(&user, n),
                            attrs,
                            members: BTreeSet::new(),
                        },
                        returned: false,
                    })
                }
                0 => Event::ObjectChanged(ObjectChanged {
                    anchor: user.clone(),
                    set: [("manager".to_string(), vec![self.manager_value()])]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                1 => Event::ObjectChanged(ObjectChanged {
                    anchor: user.clone(),
                    dn: Some(Self::dn(&user, self.rng.gen_range(0..2))),
                    ..Default::default()
                }),
                2 if live(&self.state, &user) => Event::ObjectDeleted(ObjectDeleted {
                    anchor: user.clone(),
                    evidence: DeletionEvidence::SyncDelete {
                        phase: "delete".into(),
                    },
                }),
                3 if !live(&self.state, &group) => Event::ObjectImported(ObjectImported {
                    object: SourceObject {
                        anchor: group.clone(),
                        kind: ObjectKind::Group,
                        dn: Self::dn(&group, 0),
                        attrs: [(
                            "cn".to_string(),
                            vec![AttrValue::Text(group.clone().into())],
                        )]
                        .into_iter()
                        .collect(),
                        members: [user.clone()].into_iter().collect(),
                    },
                    returned: false,
                }),
                3 if self.rng.gen_bool(0.2) => Event::ObjectDeleted(ObjectDeleted {
                    anchor: group.clone(),
                    evidence: DeletionEvidence::SyncDelete {
                        phase: "delete".into(),
                    },
                }),
                3 | 4 => {
                    let (added, removed) = if self.rng.gen_bool(0.6) {
                        (vec![user.clone()], vec![])
                    } else {
                        (vec![], vec![user.clone()])
                    };
                    Event::ObjectChanged(ObjectChanged {
                        anchor: group.clone(),
                        members_added: added,
                        members_removed: removed,
                        ..Default::default()
                    })
                }
                _ => return,
            };
            if let Event::ObjectChanged(c) = &e {
                if !live(&self.state, &c.anchor) {
                    return;
                }
            }
            self.append(e);
        }

        fn plan(&self, only: Option<ObjectKind>, focus: &Focus) -> Plan {
            let removal = Removal {
                on_delete: self.on_delete,
                now_us: self.log.len() as i64,
            };
            plan_focused(&self.state, &self.mapping, only, &removal, focus)
        }

        /// The plan of `focus`, checked against the whole plan: the same operations.
        fn checked(&mut self, only: Option<ObjectKind>, focus: &Focus, when: &str) -> Plan {
            let ops = |p: &Plan| {
                format!(
                    "new {:?}\nupdates {:?}\ndeletes {:?}\ndisables {:?}\nawaiting {:?}",
                    p.new, p.updates, p.deletes, p.disables, p.awaiting
                )
            };
            let p = self.plan(only, focus);
            let whole = self.plan(only, &Focus::Whole(Whole::Asked));
            assert_eq!(ops(&p), ops(&whole), "{when}, focus {focus:?}");
            assert_eq!((p.live, p.owned), (whole.live, whole.owned), "{when}");
            // Anchors start with u (users) or g (groups).
            let ops = p.new.iter().map(|(a, _)| ("create", a.as_str()));
            let ops = ops.chain(p.updates.iter().map(|o| ("update", o.anchor())));
            let ops = ops.chain(p.deletes.iter().map(|o| ("delete", o.anchor())));
            let ops = ops.chain(p.disables.iter().map(|o| ("disable", o.anchor())));
            let ops = ops.chain(p.awaiting.iter().map(|(a, _)| ("awaiting", a.as_str())));
            for (op, anchor) in ops {
                self.seen.insert(format!("{op} {}", &anchor[..1]));
            }
            p
        }

        /// Export `ops`; some fail, and some are left for later as the export leaves them:
        /// a deletion the guard holds, an object whose last export failed (quarantined, or
        /// waiting out its backoff).
        fn export(&mut self, ops: Vec<Op>) {
            self.export_as(ops, ExportOp::Update);
        }

        /// [`Sim::export`], updates recorded as `update_op` (a disable's).
        fn export_as(&mut self, ops: Vec<Op>, update_op: ExportOp) {
            for op in ops {
                let anchor = op.anchor().to_string();
                let may_wait = matches!(op, Op::Delete { .. })
                    || self.state.ledger.failures.contains_key(&anchor);
                if may_wait && self.rng.gen_bool(0.4) {
                    continue;
                }
                let (kind, xop, target_id, state) = match op {
                    Op::Create { anchor, object } => (
                        object.kind(),
                        ExportOp::Create,
                        format!("t-{anchor}"),
                        Some(object),
                    ),
                    Op::Update { target_id, to, .. } => (to.kind(), update_op, target_id, Some(to)),
                    Op::Delete {
                        kind, target_id, ..
                    } => (kind, ExportOp::Delete, target_id, None),
                };
                let e = if self.rng.gen_bool(0.15) {
                    Event::ExportFailed(ExportFailed {
                        epoch: 1,
                        anchor,
                        op: xop,
                        status: Some(500),
                        error: "down".into(),
                    })
                } else {
                    Event::ExportApplied(ExportApplied {
                        epoch: 1,
                        anchor,
                        kind,
                        op: xop,
                        target_id,
                        state: state.map(|s| serde_json::to_value(&s).unwrap()),
                        etag: None,
                    })
                };
                self.append(e);
            }
        }

        /// One exporting cycle as `sync::export` runs it: its passes, each checked.
        fn cycle(&mut self, focus: &Focus) {
            for (pass, kind) in crate::sync::export::PASSES.into_iter().enumerate() {
                let p = self.checked(Some(kind), focus, &format!("pass {pass}"));
                let creates = p
                    .new
                    .into_iter()
                    .map(|(anchor, object)| Op::Create { anchor, object });
                let ops: Vec<Op> = creates.chain(p.updates).collect();
                self.export(ops);
            }
            let p = self.checked(None, focus, "disables");
            self.export_as(p.disables, ExportOp::Disable);
            let p = self.checked(None, focus, "deletes");
            self.export(p.deletes);
        }
    }

    /// Random changes and exporting cycles (some exports failing): each cycle's plan of
    /// what the log named since the last whole plan is the whole plan's operations, pass
    /// by pass; and a cycle after nothing changed but failures plans little.
    #[test]
    fn a_plan_of_what_changed_is_the_whole_plan() {
        let mut seen = BTreeSet::new();
        for seed in 0..40 {
            let mut sim = Sim {
                state: State::default(),
                log: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                mapping: with_manager(SourceKind::Ad),
                on_delete: if seed % 2 == 1 {
                    crate::config::OnDelete::Disable {
                        after: std::time::Duration::from_micros(40),
                    }
                } else {
                    crate::config::OnDelete::Delete
                },
                seen: Default::default(),
            };
            let mut planned_seq: Option<u64> = None;
            let mut focused = 0;
            for _ in 0..30 {
                for _ in 0..sim.rng.gen_range(0..6) {
                    sim.source_change();
                }
                let seq = sim.log.len() as u64;
                let focus = match planned_seq {
                    None => Focus::Whole(Whole::NoPlanYet),
                    Some(p) => {
                        let mut named = Named::default();
                        match sim.log[p as usize..]
                            .iter()
                            .try_for_each(|e| named.add_new(e))
                        {
                            Ok(()) => focus(&sim.state, &sim.mapping, named.anchors()),
                            Err(w) => Focus::Whole(w),
                        }
                    }
                };
                if let Focus::Changed(_) = &focus {
                    focused += 1;
                }
                sim.cycle(&focus);
                planned_seq = Some(seq);
            }
            assert!(
                focused > 20,
                "seed {seed}: {focused} cycles planned what changed"
            );
            seen.append(&mut sim.seen);
        }
        let mut every: BTreeSet<String> = ["create", "update", "delete"]
            .iter()
            .flat_map(|op| ["u", "g"].map(|k| format!("{op} {k}")))
            .collect();
        every.extend(["disable u".to_string(), "awaiting u".to_string()]);
        assert_eq!(seen, every, "the simulation plans every kind of operation");
    }

    #[test]
    fn references_that_select_a_value_are_followed_and_computed_ones_are_not() {
        assert_eq!(
            selected_literals("has(src.manager) ? src.manager[0] : null"),
            Some(vec![])
        );
        assert_eq!(
            selected_literals(r#"src.dept == "x" ? "cn=boss,o=x" : (src.manager[0])"#),
            Some(vec!["x".to_string(), "cn=boss,o=x".to_string()])
        );
        assert_eq!(selected_literals(r#""cn=" + src.boss[0]"#), None);
        assert_eq!(selected_literals("src.manager[0].lowerAscii()"), None);
        assert_eq!(selected_literals("string(src.manager[0])"), None);
        assert_eq!(selected_literals(r#""unterminated"#), None);
    }

    #[test]
    fn a_cycle_plans_everything_unless_a_whole_plan_was_tried_and_little_changed() {
        let base = Facts {
            planned_seq: Some(10),
            seq: 20,
            mapping_matches: true,
            ..Default::default()
        };
        assert_eq!(start(&base), Ok(10));
        let with = |f: fn(&mut Facts)| {
            let mut x = base.clone();
            f(&mut x);
            start(&x)
        };
        assert_eq!(with(|f| f.full = true), Err(Whole::Asked));
        assert_eq!(with(|f| f.reconcile = true), Err(Whole::Reconcile));
        assert_eq!(with(|f| f.take_over = true), Err(Whole::TakeOver));
        assert_eq!(with(|f| f.mapping_matches = false), Err(Whole::Mapping));
        assert_eq!(with(|f| f.planned_seq = None), Err(Whole::NoPlanYet));
        assert_eq!(
            with(|f| f.seq = 11 + MAX_EVENTS),
            Err(Whole::Many(MAX_EVENTS + 1))
        );
    }
}

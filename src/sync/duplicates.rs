//! Duplicates by anchor after a take-over or an uncertain write (issue 18.3): pure
//! decisions.
//!
//! The lease bounds when an old holder's requests *leave* it and when its client gives up
//! on them, not when they reach the target: a create held up in the network (a proxy, a
//! load balancer, a retransmitting TCP stack) can be applied after its sender recorded it
//! as failed, or never recorded it (a crash), and after the holder (the new one after a
//! take-over, or the same one in its next cycle) created the same object. Then two target
//! objects carry one anchor. For [`WATCH`] after such an uncertain moment
//! (`Relationship::uncertain`: a take-over, a lease left open, a create that failed
//! ambiguously), and in the cycle that takes over, every cycle looks for such duplicates
//! and removes them before it creates anything: the object the ledger knows is kept (for
//! an anchor not owned yet, the oldest, which matching then takes), the others are deleted
//! and each deletion is recorded (`TargetDuplicateRemoved`).
//!
//! Only a create can make a duplicate, and every claim records the anchors it creates: a
//! cycle that watches looks up the anchors whose creates may still be in flight
//! (`Relationship::creates_in_doubt`), a request each, instead of listing a target of a
//! million objects every cycle for twenty minutes. It lists the whole target in the cycle
//! that takes over, and while the creates in doubt are not all known (claims recorded by
//! an older version, or too many in doubt at once).

use std::collections::{HashMap, HashSet};

use crate::log::event::ObjectKind;
use crate::project::State;
use crate::target::{Mapped, RemoteObject};

pub use crate::project::WATCH;

/// How a cycle looks for duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// It does not.
    Off,
    /// It looks up the objects carrying these anchors (sorted), whose creates may still
    /// be in flight.
    Anchors(Vec<String>),
    /// It lists the whole target.
    Whole,
}

/// Whether and how this cycle looks for duplicates (pure): the cycle that takes the
/// relationship over lists the whole target; every cycle less than [`WATCH`] after the
/// target may have been sent a write that was not recorded (`Relationship::uncertain`)
/// looks up the creates in doubt, or lists the whole target while they are not all known.
pub fn watching(state: &State, took_over: bool, now_us: i64) -> Watch {
    let r = &state.control.relationship;
    let within = |at_us: i64| now_us.saturating_sub(at_us) < WATCH.as_micros() as i64;
    let recent = |at: &crate::project::At| within(at.at_us);
    if took_over
        || r.doubt_unknown.as_ref().is_some_and(recent) && r.uncertain.as_ref().is_some_and(recent)
    {
        return Watch::Whole;
    }
    if !r.uncertain.as_ref().is_some_and(recent) {
        return Watch::Off;
    }
    let anchors: Vec<String> = r
        .creates_in_doubt
        .iter()
        .filter(|(_, d)| within(d.at_us))
        .map(|(a, _)| a.clone())
        .collect();
    if anchors.is_empty() {
        Watch::Off
    } else {
        Watch::Anchors(anchors)
    }
}

/// Target objects carrying one of our anchors besides the one kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub anchor: String,
    pub kind: ObjectKind,
    /// The object kept: the ledger's, or the oldest for an anchor not owned yet.
    pub kept: String,
    /// The others, to remove.
    pub remove: Vec<String>,
}

/// The duplicates in a listing of the target (pure). For every anchor the ledger owns
/// that more than one listed object carries, the ledger's object is kept and the others
/// are removed; for the anchor of a `new` object (not owned yet, about to be matched or
/// created) that several objects carry, none of them owned, the oldest is kept when the
/// target tells every one's creation time (ties: the smallest id), and the others are
/// removed. An object the ledger gives to any anchor is never removed, nor anything when
/// the ledger's own object is not among them (that is drift, for the target's repair),
/// nor objects carrying an anchor that is neither owned nor new.
pub fn duplicates(
    remote: &[RemoteObject],
    state: &State,
    new: &[(String, Mapped)],
) -> Vec<Duplicate> {
    let mut by_anchor: HashMap<String, Vec<&RemoteObject>> = HashMap::new();
    for r in remote {
        if let Some(a) = &r.anchor {
            by_anchor.entry(a.to_lowercase()).or_default().push(r);
        }
    }
    let owned_ids: HashSet<&str> = state
        .ledger
        .owned()
        .map(|(_, l)| l.target_id.as_str())
        .collect();
    let unowned = |carrying: &[&RemoteObject], kind: ObjectKind| -> Vec<String> {
        carrying
            .iter()
            .filter(|r| r.kind == kind && !owned_ids.contains(r.id.as_str()))
            .map(|r| r.id.clone())
            .collect()
    };
    let mut out = Vec::new();
    for (anchor, l) in state.ledger.owned() {
        let Some(carrying) = by_anchor.get(&anchor.to_lowercase()) else {
            continue;
        };
        if carrying.len() < 2 || !carrying.iter().any(|r| r.id == l.target_id) {
            continue;
        }
        let mut remove = unowned(carrying, l.kind);
        remove.sort();
        if !remove.is_empty() {
            out.push(Duplicate {
                anchor: anchor.clone(),
                kind: l.kind,
                kept: l.target_id.clone(),
                remove,
            });
        }
    }
    for (anchor, m) in new {
        if state
            .ledger
            .entries
            .get(anchor)
            .is_some_and(|l| l.deleted.is_none())
        {
            continue;
        }
        let Some(carrying) = by_anchor.get(&anchor.to_lowercase()) else {
            continue;
        };
        let kind = m.kind();
        let mut candidates = unowned(carrying, kind);
        if candidates.len() < 2 || candidates.len() != carrying.len() {
            continue;
        }
        let created: HashMap<&str, _> = carrying
            .iter()
            .map(|r| (r.id.as_str(), r.created))
            .collect();
        if created.values().any(Option::is_none) {
            continue;
        }
        candidates.sort_by(|a, b| {
            created[a.as_str()]
                .cmp(&created[b.as_str()])
                .then_with(|| a.cmp(b))
        });
        let kept = candidates.remove(0);
        candidates.sort();
        out.push(Duplicate {
            anchor: anchor.clone(),
            kind,
            kept,
            remove: candidates,
        });
    }
    out.sort_by(|a, b| a.anchor.cmp(&b.anchor));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::{At, LedgerEntry, Origin};

    fn remote(id: &str, anchor: Option<&str>, kind: ObjectKind) -> RemoteObject {
        RemoteObject {
            kind,
            id: id.into(),
            anchor: anchor.map(str::to_string),
            name: id.into(),
            emails: vec![],
            etag: None,
            created: None,
            state: None,
        }
    }

    fn own(state: &mut State, anchor: &str, id: &str, kind: ObjectKind) {
        state.ledger.entries.insert(
            anchor.into(),
            Box::new(LedgerEntry {
                kind,
                target_id: id.into(),
                origin: Origin::Created,
                state: None,
                owned_since: At::default(),
                last_export: At::default(),
                epoch: 2,
                etag: None,
                deleted: None,
                disabled: None,
            }),
        );
    }

    #[test]
    fn the_ledgers_object_is_kept_and_only_unowned_copies_go() {
        let g = ObjectKind::Group;
        let mut state = State::default();
        own(&mut state, "a", "ga", g);
        own(&mut state, "b", "gb", g);
        own(&mut state, "c", "gc", g);
        own(&mut state, "d", "gd", g);
        let listing = vec![
            remote("ga", Some("a"), g),
            // A late create of the old holder: same anchor (spelt in capitals), removed.
            remote("ga2", Some("A"), g),
            remote("ga3", Some("a"), g),
            // One object only: nothing to do.
            remote("gb", Some("b"), g),
            // Another copy, but the ledger gives it to d: kept.
            remote("gc", Some("c"), g),
            remote("gd", Some("c"), g),
            // The ledger's own object is missing: drift, not ours to decide here.
            remote("gx", Some("d"), g),
            remote("gy", Some("d"), g),
            // Anchors we do not own, and objects without an anchor: left alone.
            remote("gz1", Some("z"), g),
            remote("gz2", Some("z"), g),
            remote("gn", None, g),
        ];
        assert_eq!(
            duplicates(&listing, &state, &[]),
            vec![Duplicate {
                anchor: "a".into(),
                kind: g,
                kept: "ga".into(),
                remove: vec!["ga2".into(), "ga3".into()],
            }]
        );
        assert!(duplicates(&listing, &State::default(), &[]).is_empty());
    }

    #[test]
    fn for_an_anchor_not_owned_yet_the_oldest_is_kept_when_the_target_tells() {
        let g = ObjectKind::Group;
        let at = |s: i64| chrono::DateTime::from_timestamp(s, 0);
        let dated = |id: &str, anchor: &str, s: Option<i64>| RemoteObject {
            created: s.and_then(at),
            ..remote(id, Some(anchor), g)
        };
        let group = |name: &str| {
            Mapped::Group(crate::target::MappedGroup {
                display_name: name.into(),
                members: Default::default(),
            })
        };
        let mut state = State::default();
        own(&mut state, "owned", "go", g);
        let listing = vec![
            dated("n2", "n", Some(20)),
            dated("n1", "n", Some(10)),
            dated("n3", "n", Some(10)),
            // A creation time missing: not guessed (matching reports the conflict).
            dated("m1", "m", Some(10)),
            dated("m2", "m", None),
            // One of them owned by another anchor: not ours to pick.
            dated("p1", "p", Some(10)),
            dated("go", "p", Some(5)),
            // Not new in this cycle: left alone.
            dated("q1", "q", Some(1)),
            dated("q2", "q", Some(2)),
        ];
        let new: Vec<(String, Mapped)> = ["n", "m", "p"]
            .iter()
            .map(|a| (a.to_string(), group(a)))
            .collect();
        assert_eq!(
            duplicates(&listing, &state, &new),
            vec![Duplicate {
                anchor: "n".into(),
                kind: g,
                kept: "n1".into(),
                remove: vec!["n2".into(), "n3".into()],
            }]
        );
    }

    #[test]
    fn watching_in_the_take_over_and_for_a_while_after_an_uncertain_write() {
        use crate::log::event::{
            Event, ExportApplied, ExportBatchCompleted, ExportBatchStarted, ExportFailed, ExportOp,
            SyncRelationshipEstablished,
        };
        use crate::project::Meta;
        let min = 60_000_000;
        let watch = WATCH.as_micros() as i64;
        let mut state = State::default();
        let mut seq = 0;
        let mut apply = |state: &mut State, at_us: i64, e: Event| {
            seq += 1;
            let m = Meta {
                seq,
                instance: "i",
                recorded_at_us: at_us,
            };
            state.apply(&m, e);
        };
        let established = |epoch| {
            Event::SyncRelationshipEstablished(SyncRelationshipEstablished {
                holder: "i".into(),
                epoch,
            })
        };
        let claim = |id: &str, creates: Option<&[&str]>| {
            Event::ExportBatchStarted(ExportBatchStarted {
                batch_id: id.into(),
                epoch: 1,
                ops: 1,
                lease_until: chrono::DateTime::UNIX_EPOCH,
                creates: creates.map(|c| c.iter().map(|a| a.to_string()).collect()),
            })
        };
        let done = |id: &str| {
            Event::ExportBatchCompleted(ExportBatchCompleted {
                batch_id: id.into(),
                applied: 1,
                failed: 0,
            })
        };
        let failed = |anchor: &str, op, status| {
            Event::ExportFailed(ExportFailed {
                epoch: 1,
                anchor: anchor.into(),
                op,
                status,
                error: "x".into(),
            })
        };
        let created = |anchor: &str| {
            Event::ExportApplied(ExportApplied {
                epoch: 1,
                anchor: anchor.into(),
                kind: ObjectKind::User,
                op: ExportOp::Create,
                target_id: format!("id-{anchor}"),
                state: None,
                etag: None,
            })
        };
        let anchors = |a: &[&str]| Watch::Anchors(a.iter().map(|a| a.to_string()).collect());
        assert_eq!(watching(&state, false, 0), Watch::Off);
        assert_eq!(
            watching(&state, true, 0),
            Watch::Whole,
            "the cycle that takes over"
        );
        // The first relationship; creates answered (applied, refused): nothing in doubt, nor
        // uncertain.
        apply(&mut state, min, established(1));
        apply(&mut state, min, claim("b1", Some(&["a", "b", "c"])));
        apply(&mut state, min, created("a"));
        apply(&mut state, min, failed("b", ExportOp::Create, Some(409)));
        apply(&mut state, min, created("c"));
        apply(&mut state, min, failed("d", ExportOp::Update, None));
        apply(&mut state, min, done("b1"));
        let r = &state.control.relationship;
        assert_eq!((&r.uncertain, r.creates_in_doubt.len()), (&None, 0));
        // A create without an answer: it alone is looked up, for WATCH.
        apply(&mut state, 2 * min, claim("b2", Some(&["e", "f"])));
        apply(&mut state, 2 * min, failed("e", ExportOp::Create, None));
        apply(&mut state, 2 * min, created("f"));
        apply(&mut state, 2 * min, done("b2"));
        assert_eq!(watching(&state, false, 3 * min), anchors(&["e"]));
        assert_eq!(watching(&state, false, 2 * min + watch), Watch::Off);
        // Sent again and created: the first request may still land, so it stays in doubt.
        apply(&mut state, 3 * min, claim("b3", Some(&["e"])));
        apply(&mut state, 3 * min, created("e"));
        apply(&mut state, 3 * min, done("b3"));
        assert_eq!(watching(&state, false, 4 * min), anchors(&["e"]));
        // A 5xx; a claim after one never completed (a crash): its creates are in doubt,
        // with the 5xx's.
        apply(&mut state, 100 * min, claim("b4", Some(&["g"])));
        apply(
            &mut state,
            100 * min,
            failed("g", ExportOp::Create, Some(502)),
        );
        apply(&mut state, 100 * min, done("b4"));
        apply(&mut state, 200 * min, claim("b5", Some(&["h"])));
        apply(&mut state, 201 * min, claim("b6", Some(&[])));
        assert_eq!(
            state.control.relationship.uncertain.as_ref().unwrap().at_us,
            201 * min
        );
        // Those claimed more than WATCH before the last claim are let go.
        assert_eq!(watching(&state, false, 202 * min), anchors(&["h"]));
        // A claim completed with a create whose outcome was never recorded (a cycle that
        // stopped as the target went down): in doubt, and uncertain.
        apply(&mut state, 201 * min, done("b6"));
        apply(&mut state, 250 * min, claim("b6b", Some(&["p", "q"])));
        apply(&mut state, 250 * min, created("p"));
        assert_eq!(watching(&state, false, 250 * min), Watch::Off);
        apply(&mut state, 250 * min, done("b6b"));
        assert_eq!(
            state.control.relationship.uncertain.as_ref().unwrap().at_us,
            250 * min
        );
        assert_eq!(watching(&state, false, 251 * min), anchors(&["q"]));
        // A take-over: the old holder's creates in doubt are looked up.
        apply(&mut state, 300 * min, claim("b7", Some(&["j"])));
        apply(&mut state, 300 * min, established(2));
        assert_eq!(
            state.control.relationship.uncertain.as_ref().unwrap().at_us,
            300 * min
        );
        assert_eq!(watching(&state, false, 301 * min), anchors(&["j"]));
        apply(&mut state, 302 * min, done("b7"));
        // A claim recorded without its creates (an older version): the whole target, while
        // something is uncertain.
        apply(&mut state, 400 * min, claim("b8", None));
        assert_eq!(watching(&state, false, 401 * min), Watch::Off);
        apply(&mut state, 401 * min, failed("k", ExportOp::Create, None));
        assert_eq!(watching(&state, false, 402 * min), Watch::Whole);
        assert_eq!(watching(&state, false, 400 * min + watch), Watch::Off);
        // More in doubt at once than the cap: the whole target too.
        let many: Vec<String> = (0..=crate::project::IN_DOUBT_CAP)
            .map(|i| format!("m{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        apply(&mut state, 500 * min, claim("b9", Some(&many)));
        apply(&mut state, 500 * min, failed("m0", ExportOp::Create, None));
        assert!(state.control.relationship.creates_in_doubt.is_empty());
        assert_eq!(watching(&state, false, 501 * min), Watch::Whole);
    }
}

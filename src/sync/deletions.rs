//! Deletions the guard holds (`dirsync deletions`): what `show` lists about each held list
//! and deletion (pure), and the approval of exactly one held list, decided on the
//! projections (pure) and recorded on the guard's stream.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::log::event::{stream, DeletionsApproved};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, Event, NewEvent, Store};
use crate::plan::plan::{find_plan, short_hash, PlanPrefix, MIN_PLAN_PREFIX};
use crate::project::replay;
use crate::project::{At, Control, HeldDeletions, State};

/// Where a held list stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanStatus {
    Held,
    Approved,
    /// No longer the held list: a later cycle held another, or none.
    Superseded,
}

/// Where the held list `hash` stands (pure).
pub fn plan_status(state: &State, hash: &str, p: &HeldDeletions) -> PlanStatus {
    match (
        p.approved,
        state.control.guard.current.as_deref() == Some(hash),
    ) {
        (Some(_), _) => PlanStatus::Approved,
        (None, true) => PlanStatus::Held,
        (None, false) => PlanStatus::Superseded,
    }
}

/// When the log recorded a deletion, and which instance saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub seq: u64,
    pub at_us: i64,
    pub by: String,
}

/// One held deletion as `deletions show` gives it: what the target object is, and how and
/// when the source's deletion was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldDeletion {
    pub anchor: String,
    pub kind: Option<&'static str>,
    pub dn: Option<String>,
    pub name: Option<String>,
    pub display_name: Option<String>,
    pub target_id: Option<String>,
    /// How we know: the deletion's evidence label, `duplicate`, or `not-in-source`.
    pub evidence: String,
    pub evidence_detail: Option<String>,
    /// When the source deleted it, when the source said (a tombstone's time).
    pub deleted_at_us: Option<i64>,
    pub seen: Option<Seen>,
}

/// One held deletion, by the key the guard lists it under: an owned anchor, or a duplicate
/// `ANCHOR@TARGET_ID` (reconcile) (pure).
pub fn held_deletion(state: &State, key: &str) -> HeldDeletion {
    let (anchor, duplicate) = match state.ledger.entries.get(key) {
        Some(_) => (key, None),
        None => match key.split_once('@') {
            Some((anchor, id)) => (anchor, Some(id)),
            None => (key, None),
        },
    };
    let l = state.ledger.entries.get(anchor);
    let rec = state.objects.objects.get(anchor);
    let mapped = l.and_then(|l| l.state.as_ref());
    let display_name = mapped.and_then(|m| match m {
        crate::target::Mapped::User(u) => u.display_name.as_ref().map(|d| d.to_string()),
        crate::target::Mapped::Group(g) => Some(g.display_name.to_string()),
    });
    let deletion = rec.and_then(|r| r.deletion.as_ref());
    let (evidence, evidence_detail) = match (duplicate, deletion) {
        (Some(id), _) => (
            "duplicate".to_string(),
            Some(format!(
                "target object {id} carries this anchor; the ledger owns {}",
                l.map(|l| l.target_id.as_str()).unwrap_or("another")
            )),
        ),
        (None, Some(d)) => (d.evidence.label().to_string(), d.evidence.detail()),
        (None, None) => ("not-in-source".to_string(), None),
    };
    HeldDeletion {
        anchor: anchor.to_string(),
        kind: l.map(|l| l.kind.as_str()),
        dn: rec.map(|r| r.dn.clone()),
        name: match duplicate {
            Some(_) => Some(format!("duplicate of {}", mapped.map_or("", |m| m.name()))),
            None => mapped.map(|m| m.name().to_string()),
        },
        display_name,
        target_id: duplicate
            .or(l.map(|l| l.target_id.as_str()))
            .map(str::to_string),
        evidence,
        evidence_detail,
        deleted_at_us: deletion.and_then(|d| d.evidence.deleted_at_us()),
        seen: deletion.map(|d| Seen {
            seq: d.at.seq,
            at_us: d.at.at_us,
            by: d.instance.clone(),
        }),
    }
}

/// One held list as `deletions show` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldPlan {
    pub plan_hash: String,
    pub status: PlanStatus,
    /// The held list that stands now.
    pub current: bool,
    pub reason: String,
    pub held_at_us: i64,
    pub approved_us: Option<i64>,
    pub count: usize,
    pub deletions: Vec<HeldDeletion>,
}

/// The anchors [`plans`] reads the source objects and ledger entries of: every held list's
/// keys, and the anchor of each duplicate key (`ANCHOR@TARGET_ID`).
pub fn anchors(control: &Control) -> Vec<String> {
    let mut out: Vec<String> = control
        .guard
        .plans
        .values()
        .flat_map(|p| &p.anchors)
        .flat_map(|k| {
            let anchor = k.split_once('@').map(|(a, _)| a.to_string());
            std::iter::once(k.clone()).chain(anchor)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every held list: the one that stands first, then the others, latest first (pure). Needs
/// the source objects and ledger entries of [`anchors`] only.
pub fn plans(state: &State) -> Vec<HeldPlan> {
    let mut plans: Vec<(&String, &HeldDeletions)> = state.control.guard.plans.iter().collect();
    plans.sort_by_key(|(h, p)| {
        (
            state.control.guard.current.as_ref() != Some(*h),
            std::cmp::Reverse(p.held.seq),
        )
    });
    plans
        .into_iter()
        .map(|(h, p)| HeldPlan {
            plan_hash: h.clone(),
            status: plan_status(state, h, p),
            current: state.control.guard.current.as_ref() == Some(h),
            reason: p.reason.clone(),
            held_at_us: p.held.at_us,
            approved_us: p.approved.map(|a| a.at_us),
            count: p.anchors.len(),
            deletions: p.anchors.iter().map(|a| held_deletion(state, a)).collect(),
        })
        .collect()
}

/// What approving a held list comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// Recorded now (or to record, from [`decide`]).
    Approved { hash: String, count: usize },
    /// Approved before, at `at`: nothing recorded.
    Already { hash: String, count: usize, at: At },
}

/// What approving the held list named by `prefix` (a unique prefix of its hash) does,
/// decided on `state` (pure). A list that no longer stands (a later cycle held another, or
/// none) is refused, naming the one that does: approving it would release nothing.
pub fn decide(control: &Control, prefix: &str) -> Result<Approval> {
    let hash = match find_plan(control.guard.plans.keys(), prefix) {
        PlanPrefix::Malformed => {
            return Err(Error::BadInput(format!(
                "--plan `{prefix}`: give at least {MIN_PLAN_PREFIX} hex digits of the plan hash (`dirsync deletions show`)"
            )))
        }
        PlanPrefix::Unknown => {
            return Err(Error::BadInput(format!(
                "no held deletions with a plan hash starting `{prefix}`: see `dirsync deletions show`"
            )))
        }
        PlanPrefix::Ambiguous(v) => {
            return Err(Error::BadInput(format!(
                "--plan `{prefix}` names {} plans ({}): give more digits",
                v.len(),
                v.iter().map(|h| short_hash(h)).collect::<Vec<_>>().join(", ")
            )))
        }
        PlanPrefix::One(h) => h.to_string(),
    };
    let Some(p) = control.guard.plans.get(&hash) else {
        return Err(Error::BadInput(format!(
            "no held deletions with a plan hash starting `{prefix}`: see `dirsync deletions show`"
        )));
    };
    let count = p.anchors.len();
    if let Some(at) = p.approved {
        return Ok(Approval::Already { hash, count, at });
    }
    if control.guard.current.as_deref() != Some(hash.as_str()) {
        let now = match control.guard.waiting() {
            Some((c, cp)) => format!(
                "the held list is plan {} ({} deletion(s), held {})",
                short_hash(c),
                cp.anchors.len(),
                crate::output::shown(cp.held.at_us)
            ),
            None => "no deletions are held now".into(),
        };
        return Err(Error::BadInput(format!(
            "plan {} is no longer the held list: {now}; nothing approved (see `dirsync deletions show`)",
            short_hash(&hash)
        )));
    }
    Ok(Approval::Approved { hash, count })
}

/// Approve the held list named by `prefix`, as `instance` for `approved_by`: decided on the
/// state as of the guard stream's version, so that a hold recorded in between fails the
/// append and the approval is decided again.
pub async fn approve(
    store: &AnyStore,
    prefix: &str,
    instance: &str,
    approved_by: Option<String>,
) -> Result<Approval> {
    for _ in 0..3 {
        let version = store.stream_version(stream::GUARD).await?;
        let (_, control) = replay::control(store).await?;
        let (hash, count) = match decide(&control, prefix)? {
            Approval::Approved { hash, count } => (hash, count),
            already => return Ok(already),
        };
        let batch = Batch::new(vec![NewEvent::new(
            stream::GUARD,
            instance.to_string(),
            Event::DeletionsApproved(DeletionsApproved {
                plan_hash: hash.clone(),
                approved_by: approved_by.clone(),
            }),
        )])
        .expect(stream::GUARD, Expected::Exactly(version));
        match store.append(batch).await {
            Ok(_) => return Ok(Approval::Approved { hash, count }),
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::BadInput(
        "the held deletions kept changing while approving; nothing approved: run it again".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{DeletionsHeld, DeletionsHoldEnded};
    use crate::project::Meta;

    fn apply(s: &mut State, seq: u64, e: Event) {
        let m = Meta {
            seq,
            instance: "a",
            recorded_at_us: seq as i64 * 1_000_000,
        };
        s.apply(&m, e);
    }

    fn held(hash: &str, anchors: &[&str]) -> Event {
        Event::DeletionsHeld(DeletionsHeld {
            plan_hash: hash.into(),
            anchors: anchors.iter().map(|a| a.to_string()).collect(),
            reason: "over the threshold".into(),
        })
    }

    const H1: &str = "aaaaaaaa11111111";
    const H2: &str = "bbbbbbbb22222222";

    #[test]
    fn only_the_list_that_stands_is_approved_and_once() {
        let mut s = State::default();
        apply(&mut s, 1, held(H1, &["x"]));
        apply(&mut s, 2, held(H2, &["x", "y"]));
        let err = |r: Result<Approval>| match r {
            Err(Error::BadInput(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(decide(&s.control, "aaaaaaaa")),
            "plan aaaaaaaa1111 is no longer the held list: the held list is plan bbbbbbbb2222 \
             (2 deletion(s), held 1970-01-01T00:00:02Z); nothing approved (see `dirsync deletions show`)"
        );
        assert_eq!(
            err(decide(&s.control, "aaaa")),
            "--plan `aaaa`: give at least 8 hex digits of the plan hash (`dirsync deletions show`)"
        );
        assert_eq!(
            err(decide(&s.control, "cccccccc")),
            "no held deletions with a plan hash starting `cccccccc`: see `dirsync deletions show`"
        );
        assert_eq!(
            decide(&s.control, "BBBBBBBB").unwrap(),
            Approval::Approved {
                hash: H2.into(),
                count: 2
            }
        );
        apply(
            &mut s,
            3,
            Event::DeletionsApproved(DeletionsApproved {
                plan_hash: H2.into(),
                approved_by: None,
            }),
        );
        assert_eq!(
            decide(&s.control, H2).unwrap(),
            Approval::Already {
                hash: H2.into(),
                count: 2,
                at: At {
                    seq: 3,
                    at_us: 3_000_000
                }
            }
        );
        // A list no cycle holds any more: nothing stands to approve.
        apply(&mut s, 4, held(H1, &["x"]));
        apply(
            &mut s,
            5,
            Event::DeletionsHoldEnded(DeletionsHoldEnded {
                plan_hash: H1.into(),
                reason: "within the threshold".into(),
            }),
        );
        assert_eq!(
            err(decide(&s.control, H1)),
            "plan aaaaaaaa1111 is no longer the held list: no deletions are held now; nothing approved (see `dirsync deletions show`)"
        );
    }

    #[test]
    fn show_lists_the_standing_list_first_with_times_in_json() {
        let mut s = State::default();
        apply(&mut s, 1, held(H1, &["x"]));
        apply(&mut s, 2, held(H2, &["x@t9"]));
        let p = plans(&s);
        assert_eq!(
            p.iter()
                .map(|p| (p.plan_hash.as_str(), p.status))
                .collect::<Vec<_>>(),
            [(H2, PlanStatus::Held), (H1, PlanStatus::Superseded)]
        );
        assert_eq!(
            crate::output::json_value(&p[0]).unwrap(),
            serde_json::json!({
                "plan_hash": H2, "status": "held", "current": true,
                "reason": "over the threshold", "held_at": "1970-01-01T00:00:02Z",
                "approved": null, "count": 1,
                "deletions": [{
                    "anchor": "x", "kind": null, "dn": null, "name": "duplicate of ",
                    "display_name": null, "target_id": "t9", "evidence": "duplicate",
                    "evidence_detail": "target object t9 carries this anchor; the ledger owns another",
                    "deleted_at": null, "seen": null,
                }],
            })
        );
    }
}

//! Reconciling with the whole target (issue 18.2), pure: the target is checked, not
//! believed.
//!
//! A plain cycle sends only what the ledger says differs, so it never notices what changed
//! in the target behind its back. `sync --full`, and a plain `sync` once `[sync]
//! reconcile_target` has passed since the last reconcile recorded in the log
//! ([`due`]), read every user and group of the target (a [`Listing`]) and compare it with
//! the ledger and the mapped source:
//! - an owned object the target no longer holds is created again with its mapped source
//!   state ([`Repairs::recreate`]), unless another object carrying its anchor is there,
//!   which is taken instead ([`Repairs::adopt`]);
//! - an owned object whose attributes differ from the mapped source (changed out of band)
//!   is updated from what the target holds to the mapped values ([`Repairs::restore`]);
//! - a target object carrying one of our anchors that the ledger does not know is a
//!   duplicate ([`duplicates`]): deleted, its deletion counted by the deletion guard with
//!   the cycle's others.
//!
//! Nothing here reads or writes: `sync::export` lists the target and sends the repairs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::log::event::ObjectKind;
use crate::plan::mapping::Mapping;
use crate::plan::plan::{desired_in, References};
use crate::project::{At, LedgerEntry, State};
use crate::target::{Mapped, Op, RemoteObject};

/// Whether this cycle reconciles: always with `--full`, else when `every` has passed since
/// the last reconcile (`last`, from the log), or none was ever recorded.
pub fn due(full: bool, last: Option<At>, now_us: i64, every: Duration) -> bool {
    let every_us = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
    full || last.is_none_or(|a| now_us.saturating_sub(a.at_us) >= every_us)
}

/// Every user and group of the target, read at log position `seq`.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub objects: Vec<RemoteObject>,
    pub seq: u64,
}

/// What a listing says about each target object, by id and by anchor.
struct Index<'a> {
    by_id: HashMap<&'a str, &'a RemoteObject>,
    by_anchor: HashMap<&'a str, Vec<&'a RemoteObject>>,
    /// Target ids the ledger owns (any kind).
    owned: HashSet<&'a str>,
}

impl<'a> Index<'a> {
    fn new(listing: &'a Listing, state: &'a State) -> Index<'a> {
        let mut by_anchor: HashMap<&str, Vec<&RemoteObject>> = HashMap::new();
        for r in &listing.objects {
            if let Some(a) = &r.anchor {
                by_anchor.entry(a.as_str()).or_default().push(r);
            }
        }
        for v in by_anchor.values_mut() {
            v.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Index {
            by_id: listing.objects.iter().map(|r| (r.id.as_str(), r)).collect(),
            by_anchor,
            owned: state
                .ledger
                .owned()
                .map(|(_, l)| l.target_id.as_str())
                .collect(),
        }
    }

    /// The object to take for an owned entry whose own object is gone: the first (by id)
    /// object of its kind carrying its anchor that no ledger entry owns.
    fn adoptable(&self, anchor: &str, l: &LedgerEntry) -> Option<&'a RemoteObject> {
        if self.by_id.contains_key(l.target_id.as_str()) {
            return None;
        }
        self.by_anchor
            .get(anchor)?
            .iter()
            .copied()
            .find(|r| r.kind == l.kind && !self.owned.contains(r.id.as_str()))
    }
}

/// The repairs of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Owned objects missing from the target, taken back as the object carrying their
    /// anchor (recorded as a match with its state).
    pub adopt: Vec<(String, RemoteObject)>,
    /// Owned objects missing from the target: created again (`Op::Create`).
    pub recreate: Vec<Op>,
    /// Owned objects changed out of band: from what the target holds to the mapped source
    /// (`Op::Update`).
    pub restore: Vec<Op>,
    /// Missing objects (recreated or adopted), and changed ones, found.
    pub missing: u64,
    pub changed: u64,
}

impl Repairs {
    /// The anchors repaired: the plan's own updates of them are left out.
    pub fn anchors(&self) -> HashSet<&str> {
        self.adopt
            .iter()
            .map(|(a, _)| a.as_str())
            .chain(self.recreate.iter().map(Op::anchor))
            .chain(self.restore.iter().map(Op::anchor))
            .collect()
    }
}

/// The repairs of owned objects of `kind` against `listing`. Entries exported since the
/// listing was read are left out (the listing cannot tell about them), and so are objects
/// no longer live in the source (the plan deletes them; a deletion answered 404 is done).
pub fn repairs(state: &State, mapping: &Mapping, kind: ObjectKind, listing: &Listing) -> Repairs {
    let ix = Index::new(listing, state);
    let mut owned: Vec<(&String, &LedgerEntry)> = state
        .ledger
        .owned()
        .filter(|(_, l)| l.kind == kind && l.last_export.seq <= listing.seq)
        .collect();
    owned.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Repairs::default();
    let refs = References::new(state, mapping);
    for (anchor, l) in owned {
        let want = state
            .objects
            .objects
            .get(anchor.as_str())
            .filter(|r| r.live())
            .and_then(|r| desired_in(state, mapping, &refs, anchor, r).ok())
            .map(|(m, _)| m);
        let (remote, adopted) = match ix.by_id.get(l.target_id.as_str()) {
            Some(r) => (Some(*r), false),
            None => (ix.adoptable(anchor, l), true),
        };
        match (remote, want) {
            (Some(r), want) => {
                // Of the target's attributes, those the mapping sets (or set when we last
                // exported): the others are not ours to compare or remove.
                let keep: Vec<&Mapped> = l.state.iter().chain(want.as_ref()).collect();
                let r_state = r.state.as_ref().map(|s| s.with_extras_of(&keep));
                if adopted {
                    out.missing += 1;
                    out.adopt.push((anchor.clone(), r.clone()));
                }
                // An object that lost our anchor gets every attribute and the anchor
                // written again. Otherwise only what differs from what we last exported
                // changed out of band: a difference from the source alone is the plan's
                // update, and a ledger without state writes everything anyway.
                let lost_anchor = r.anchor.as_deref() != Some(anchor.as_str());
                let out_of_band =
                    adopted || (l.state.is_some() && r_state.as_ref() != l.state.as_ref());
                let drifted =
                    |w: &Mapped| lost_anchor || (out_of_band && r_state.as_ref() != Some(w));
                if let Some(to) = want.filter(drifted) {
                    out.changed += u64::from(!adopted);
                    let from = r_state.clone().filter(|_| !lost_anchor);
                    out.restore.push(Op::Update {
                        anchor: anchor.clone(),
                        target_id: r.id.clone(),
                        from,
                        to,
                        etag: r.etag.clone(),
                    });
                }
            }
            (None, Some(object)) => {
                out.missing += 1;
                out.recreate.push(Op::Create {
                    anchor: anchor.clone(),
                    object,
                });
            }
            (None, None) => {}
        }
    }
    out
}

/// A target object carrying one of our anchors that the ledger does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub anchor: String,
    pub kind: ObjectKind,
    pub target_id: String,
    pub name: String,
}

impl Duplicate {
    /// How the deletion guard lists it (the held list's entry): its anchor and its id.
    pub fn key(&self) -> String {
        format!("{}@{}", self.anchor, self.target_id)
    }

    pub fn op(&self) -> Op {
        Op::Delete {
            anchor: self.anchor.clone(),
            kind: self.kind,
            target_id: self.target_id.clone(),
        }
    }
}

/// The duplicates in `listing`, sorted by key: objects carrying an anchor the ledger owns
/// as another object (not the one [`repairs`] takes back when its own is gone), or owned
/// once and deleted while its source object is not live. An anchor the ledger never
/// owned, or deleted but live again, is the plan's new object: matching takes it.
pub fn duplicates(state: &State, listing: &Listing) -> Vec<Duplicate> {
    let ix = Index::new(listing, state);
    let mut out: Vec<Duplicate> = listing
        .objects
        .iter()
        .filter_map(|r| {
            let anchor = r.anchor.as_deref()?;
            let l = state.ledger.entries.get(anchor)?;
            let dup = if l.deleted.is_none() {
                l.target_id != r.id && ix.adoptable(anchor, l).is_none_or(|a| a.id != r.id)
            } else {
                !state.objects.objects.get(anchor).is_some_and(|o| o.live())
            };
            dup.then(|| Duplicate {
                anchor: anchor.to_string(),
                kind: r.kind,
                target_id: r.id.clone(),
                name: r.name.clone(),
            })
        })
        .collect();
    out.sort_by_key(Duplicate::key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{
        AttrValue, DeletionEvidence, Event, ExportApplied, ExportOp, ObjectDeleted, ObjectImported,
        SourceObject,
    };
    use crate::project::Meta;
    use crate::target::{MappedGroup, MappedUser};
    use std::collections::BTreeSet;

    use crate::plan::plan::desired;

    fn ldap() -> Mapping {
        Mapping::default_for(
            crate::config::SourceKind::Openldap,
            crate::config::TargetKind::Scim,
        )
    }

    /// A log of source users and groups and their exports, folded.
    struct Given {
        state: State,
    }

    impl Given {
        fn new() -> Given {
            Given {
                state: State::default(),
            }
        }
        fn event(mut self, e: Event) -> Given {
            let m = Meta {
                seq: self.state.seq + 1,
                instance: "a",
                recorded_at_us: 0,
            };
            self.state.apply(&m, e);
            self
        }
        fn user(self, anchor: &str, mail: &str, title: &str) -> Given {
            let text = |s: &str| vec![AttrValue::Text(s.into())];
            self.event(Event::ObjectImported(ObjectImported {
                object: SourceObject {
                    anchor: anchor.into(),
                    kind: ObjectKind::User,
                    dn: format!("uid={anchor},dc=t"),
                    attrs: [
                        ("mail".to_string(), text(mail)),
                        ("title".to_string(), text(title)),
                    ]
                    .into_iter()
                    .collect(),
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
                    dn: format!("cn={cn},dc=t"),
                    attrs: [("cn".to_string(), vec![AttrValue::Text(cn.into())])]
                        .into_iter()
                        .collect(),
                    members: members.iter().map(|s| s.to_string()).collect(),
                },
                returned: false,
            }))
        }
        fn deleted(self, anchor: &str) -> Given {
            self.event(Event::ObjectDeleted(ObjectDeleted {
                anchor: anchor.into(),
                evidence: DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
            }))
        }
        /// Exported as the source maps it now, with target id `id`.
        fn exported(self, anchor: &str, id: &str) -> Given {
            let rec = &self.state.objects.objects[anchor];
            let (m, _) = desired(&self.state, &ldap(), anchor, rec).unwrap();
            self.export(anchor, id, ExportOp::Create, Some(&m))
        }
        fn export(self, anchor: &str, id: &str, op: ExportOp, m: Option<&Mapped>) -> Given {
            let kind = self.state.objects.objects[anchor].kind;
            self.event(Event::ExportApplied(ExportApplied {
                epoch: 1,
                anchor: anchor.into(),
                kind,
                op,
                target_id: id.into(),
                state: m.map(|m| serde_json::to_value(m).unwrap()),
                etag: None,
            }))
        }
    }

    /// The target object the ledger's state for `anchor` describes, with id `id`.
    fn remote(state: &State, anchor: &str, id: &str) -> RemoteObject {
        let m = state.ledger.entries[anchor].state.clone().unwrap();
        RemoteObject {
            kind: m.kind(),
            id: id.into(),
            anchor: Some(anchor.into()),
            name: m.name().into(),
            emails: Vec::new(),
            etag: None,
            state: Some(m),
            created: None,
        }
    }

    /// The target exactly as the ledger says, users first.
    fn exact(state: &State) -> Listing {
        let mut objects: Vec<RemoteObject> = state
            .ledger
            .owned()
            .map(|(a, l)| remote(state, a, &l.target_id))
            .collect();
        objects.sort_by(|a, b| (a.kind, &a.anchor).cmp(&(b.kind, &b.anchor)));
        Listing {
            objects,
            seq: state.seq,
        }
    }

    fn lab() -> State {
        Given::new()
            .user("u1", "u1@x", "Clerk")
            .user("u2", "u2@x", "Clerk")
            .group("g1", "team", &["u1", "u2"])
            .exported("u1", "i1")
            .exported("u2", "i2")
            .exported("g1", "ig")
            .state
    }

    fn mapped_user(state: &State, anchor: &str) -> MappedUser {
        match desired(state, &ldap(), anchor, &state.objects.objects[anchor]) {
            Ok((Mapped::User(u), _)) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_exact_target_needs_nothing() {
        let s = lab();
        let l = exact(&s);
        for kind in [ObjectKind::User, ObjectKind::Group] {
            assert_eq!(repairs(&s, &ldap(), kind, &l), Repairs::default());
        }
        assert_eq!(duplicates(&s, &l), Vec::new());
    }

    #[test]
    fn missing_objects_are_created_again_with_the_mapped_source() {
        let s = lab();
        // Wiped: nothing listed.
        let wiped = Listing {
            objects: Vec::new(),
            seq: s.seq,
        };
        let r = repairs(&s, &ldap(), ObjectKind::User, &wiped);
        assert_eq!(
            r.recreate,
            vec![
                Op::Create {
                    anchor: "u1".into(),
                    object: Mapped::User(mapped_user(&s, "u1"))
                },
                Op::Create {
                    anchor: "u2".into(),
                    object: Mapped::User(mapped_user(&s, "u2"))
                },
            ]
        );
        assert_eq!((r.missing, r.changed), (2, 0));
        assert!(r.restore.is_empty() && r.adopt.is_empty());
        let g = repairs(&s, &ldap(), ObjectKind::Group, &wiped);
        assert_eq!(g.recreate.len(), 1);
        // An object exported after the listing was read is not judged by it.
        let s2 = Given { state: s.clone() }
            .export("u1", "i1b", ExportOp::Create, None)
            .state;
        let r = repairs(&s2, &ldap(), ObjectKind::User, &wiped);
        assert_eq!(r.recreate.len(), 1);
        assert_eq!(r.recreate[0].anchor(), "u2");
        // Not live in the source any more: the plan deletes it, nothing to repair.
        let s3 = Given { state: s }.deleted("u2").state;
        let r = repairs(&s3, &ldap(), ObjectKind::User, &wiped);
        assert_eq!(r.recreate.len(), 1);
        assert_eq!(r.recreate[0].anchor(), "u1");
    }

    #[test]
    fn attributes_changed_out_of_band_are_restored_from_what_the_target_holds() {
        let s = lab();
        let mut l = exact(&s);
        let Some(Mapped::User(u)) = &mut l.objects[0].state else {
            panic!()
        };
        u.title = Some("Boss".into());
        let changed = l.objects[0].clone();
        let anchor = changed.anchor.clone().unwrap();
        let r = repairs(&s, &ldap(), ObjectKind::User, &l);
        assert_eq!(
            r.restore,
            vec![Op::Update {
                anchor: anchor.clone(),
                target_id: changed.id.clone(),
                from: changed.state.clone(),
                to: Mapped::User(mapped_user(&s, &anchor)),
                etag: None,
            }]
        );
        assert_eq!((r.missing, r.changed), (0, 1));
        // A group's members changed out of band: restored to the owned members.
        let mut l = exact(&s);
        for o in &mut l.objects {
            if let Some(Mapped::Group(g)) = &mut o.state {
                g.members = ["i1".to_string(), "stranger".to_string()].into();
            }
        }
        let r = repairs(&s, &ldap(), ObjectKind::Group, &l);
        let Op::Update { to, from, .. } = &r.restore[0] else {
            panic!()
        };
        assert_eq!(
            to,
            &Mapped::Group(MappedGroup {
                display_name: "team".into(),
                members: ["i1".to_string(), "i2".to_string()].into()
            })
        );
        assert!(from.is_some());
        // The source changed and its update is pending: the target holds what we last
        // exported, no drift (the plan's update sends the change).
        let s2 = Given { state: s.clone() }
            .user("u1", "u1@x", "Manager")
            .state;
        assert_eq!(
            repairs(&s2, &ldap(), ObjectKind::User, &exact(&s)),
            Repairs::default()
        );
        // The anchor removed out of band: everything is written again, anchor too.
        let mut l = exact(&s);
        l.objects[0].anchor = None;
        let r = repairs(&s, &ldap(), ObjectKind::User, &l);
        assert!(matches!(&r.restore[0], Op::Update { from: None, .. }));
    }

    #[test]
    fn duplicates_carry_our_anchor_under_another_id() {
        let s = lab();
        let mut l = exact(&s);
        let mut dup = remote(&s, "g1", "ig-2");
        dup.name = "team".into();
        l.objects.push(dup);
        assert_eq!(
            duplicates(&s, &l),
            vec![Duplicate {
                anchor: "g1".into(),
                kind: ObjectKind::Group,
                target_id: "ig-2".into(),
                name: "team".into()
            }]
        );
        // Its own object gone: the copy is taken back, not deleted; a second copy is.
        l.objects.retain(|o| o.id != "ig");
        let r = repairs(&s, &ldap(), ObjectKind::Group, &l);
        assert_eq!(r.adopt.len(), 1);
        assert_eq!(r.adopt[0].1.id, "ig-2");
        assert!(r.recreate.is_empty() && r.restore.is_empty());
        assert_eq!(duplicates(&s, &l), Vec::new());
        l.objects.push(remote(&s, "g1", "ig-3"));
        assert_eq!(
            duplicates(&s, &l)
                .iter()
                .map(Duplicate::key)
                .collect::<Vec<_>>(),
            ["g1@ig-3"]
        );
        // An object carrying an anchor the ledger never owned is matching's business.
        let mut l = exact(&s);
        let mut stranger = remote(&s, "u1", "x");
        stranger.anchor = Some("nobody".into());
        l.objects.push(stranger);
        assert_eq!(duplicates(&s, &l), Vec::new());
        // Owned once and deleted, the source gone: a leftover copy is a duplicate; with
        // the source live again it is the plan's to match.
        let s2 = Given { state: s.clone() }
            .deleted("u2")
            .export("u2", "i2", ExportOp::Delete, None)
            .state;
        let mut l = exact(&s2);
        l.objects.push(remote(&s, "u2", "i2-old"));
        assert_eq!(duplicates(&s2, &l).len(), 1);
        let s3 = Given { state: s2 }.user("u2", "u2@x", "Clerk").state;
        assert_eq!(duplicates(&s3, &l), Vec::new());
    }

    #[test]
    fn due_after_the_interval_from_the_last_recorded_reconcile() {
        let day = Duration::from_secs(24 * 3600);
        let at = |s: i64| {
            Some(At {
                seq: 1,
                at_us: s * 1_000_000,
            })
        };
        assert!(due(false, None, 0, day));
        assert!(due(true, at(100), 100_000_000, day));
        assert!(!due(false, at(100), 100_000_000 + 1, day));
        assert!(!due(false, at(0), 86_399 * 1_000_000, day));
        assert!(due(false, at(0), 86_400 * 1_000_000, day));
    }
}

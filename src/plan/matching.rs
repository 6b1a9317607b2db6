//! Matching (pure): which existing target object, if any, an anchor should own before
//! anything is created for it.
//!
//! 1. Hard match: the one object of the same kind carrying the anchor (SCIM `externalId`,
//!    Graph `onPremisesImmutableId`).
//! 2. Soft match, only when there is no hard match: users by `userName` or primary mail
//!    (either way round, case-insensitively), groups by `displayName`; only objects that
//!    carry no anchor and that the ledger does not already own can be taken.
//! 3. Anything else is a conflict, reported and held, never guessed: two objects carrying
//!    the anchor, two soft candidates, or a candidate that carries another anchor or is
//!    owned by another anchor.

use std::collections::{HashMap, HashSet};

use crate::target::{Mapped, RemoteObject};

/// `s` with the case of each ASCII letter swapped (`Grp03` -> `gRP03`): a spelling that a
/// case-insensitive comparison takes as `s` and a case-exact one does not.
pub fn swap_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// What matching decided for one anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match<'a> {
    /// The object carrying our anchor.
    Hard(&'a RemoteObject),
    /// An unanchored object with our user name, mail or group name.
    Soft(&'a RemoteObject),
    /// Nothing in the target is ours: create it.
    None,
    /// Reported and held: never create, never take.
    Conflict(String),
}

/// The remote objects indexed for matching many anchors against one listing.
pub struct Index<'a> {
    by_anchor: HashMap<String, Vec<&'a RemoteObject>>,
    by_key: HashMap<String, Vec<&'a RemoteObject>>,
}

fn key(kind: crate::log::event::ObjectKind, s: &str) -> String {
    format!("{}\u{0}{}", kind.as_str(), s.to_lowercase())
}

impl<'a> Index<'a> {
    pub fn new(remote: &'a [RemoteObject]) -> Index<'a> {
        let mut by_anchor: HashMap<String, Vec<&RemoteObject>> = HashMap::new();
        let mut by_key: HashMap<String, Vec<&RemoteObject>> = HashMap::new();
        for r in remote {
            if let Some(a) = &r.anchor {
                by_anchor.entry(key(r.kind, a)).or_default().push(r);
            }
            let mut keys: Vec<String> = vec![key(r.kind, &r.name)];
            keys.extend(r.emails.iter().map(|e| key(r.kind, e)));
            keys.sort();
            keys.dedup();
            for k in keys {
                by_key.entry(k).or_default().push(r);
            }
        }
        Index { by_anchor, by_key }
    }

    /// Match `anchor` (wanting `desired`). `owned` tells whether a target id is already in
    /// the ledger, and under which anchor.
    pub fn find(
        &self,
        anchor: &str,
        desired: &Mapped,
        owned: &dyn Fn(&str) -> Option<String>,
    ) -> Match<'a> {
        let kind = desired.kind();
        let own_anchor = anchor.to_lowercase();
        if let Some(hard) = self.by_anchor.get(&key(kind, anchor)) {
            if hard.len() > 1 {
                let ids: Vec<&str> = hard.iter().map(|r| r.id.as_str()).collect();
                return Match::Conflict(format!(
                    "{} target objects carry this anchor ({})",
                    hard.len(),
                    ids.join(", ")
                ));
            }
            let r = hard[0];
            return match owned(&r.id) {
                Some(other) if other.to_lowercase() != own_anchor => Match::Conflict(format!(
                    "target object {} carries this anchor but the ledger gives it to {other}",
                    r.id
                )),
                _ => Match::Hard(r),
            };
        }
        let mut names: Vec<String> = vec![key(kind, desired.name())];
        if let Mapped::User(u) = desired {
            if let Some(mail) = &u.email {
                names.push(key(kind, mail));
            }
        }
        let mut seen = HashSet::new();
        let mut free = Vec::new();
        let mut taken = Vec::new();
        for n in &names {
            for r in self.by_key.get(n).into_iter().flatten() {
                if !seen.insert(r.id.as_str()) {
                    continue;
                }
                match (&r.anchor, owned(&r.id)) {
                    (None, None) => free.push(*r),
                    (Some(a), _) => taken.push(format!("{} (anchored to {a})", r.id)),
                    (None, Some(a)) => taken.push(format!("{} (owned by {a})", r.id)),
                }
            }
        }
        if !taken.is_empty() {
            return Match::Conflict(format!(
                "`{}` is already used by {}",
                desired.name(),
                taken.join(", ")
            ));
        }
        match free.len() {
            0 => Match::None,
            1 => Match::Soft(free[0]),
            n => Match::Conflict(format!(
                "{n} unanchored target objects could be `{}`: {}",
                desired.name(),
                free.iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::ObjectKind;
    use crate::target::{MappedGroup, MappedUser};

    fn user(id: &str, anchor: Option<&str>, name: &str, mail: Option<&str>) -> RemoteObject {
        RemoteObject {
            kind: ObjectKind::User,
            id: id.into(),
            anchor: anchor.map(Into::into),
            name: name.into(),
            emails: mail.into_iter().map(Into::into).collect(),
            etag: None,
            created: None,
            state: None,
        }
    }

    fn want(name: &str, mail: Option<&str>) -> Mapped {
        Mapped::User(MappedUser {
            user_name: name.into(),
            email: mail.map(Into::into),
            active: true,
            ..Default::default()
        })
    }

    fn nobody(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn hard_match_wins_over_soft() {
        let remote = vec![
            user("1", None, "ann@x", None),
            user("2", Some("a1"), "other@x", None),
        ];
        let ix = Index::new(&remote);
        assert_eq!(
            ix.find("A1", &want("ann@x", None), &nobody),
            Match::Hard(&remote[1])
        );
    }

    #[test]
    fn soft_match_by_name_or_mail_case_insensitive() {
        let remote = vec![
            user("1", None, "ANN@x", None),
            user("2", None, "b", Some("Bob@X")),
        ];
        let ix = Index::new(&remote);
        assert_eq!(
            ix.find("a1", &want("ann@x", None), &nobody),
            Match::Soft(&remote[0])
        );
        assert_eq!(
            ix.find("a2", &want("bob@x", None), &nobody),
            Match::Soft(&remote[1])
        );
        assert_eq!(
            ix.find("a3", &want("bobby", Some("bob@x")), &nobody),
            Match::Soft(&remote[1])
        );
        assert_eq!(ix.find("a4", &want("carol@x", None), &nobody), Match::None);
    }

    #[test]
    fn ambiguity_and_foreign_anchors_are_conflicts() {
        let remote = vec![
            user("1", None, "ann@x", None),
            user("2", None, "ann2", Some("ann@x")),
            user("3", Some("zz"), "dan@x", None),
            user("4", Some("q1"), "q@x", None),
            user("5", Some("q1"), "q2@x", None),
        ];
        let ix = Index::new(&remote);
        assert!(matches!(
            ix.find("a1", &want("ann@x", None), &nobody),
            Match::Conflict(_)
        ));
        assert!(matches!(
            ix.find("a2", &want("dan@x", None), &nobody),
            Match::Conflict(_)
        ));
        assert!(matches!(
            ix.find("q1", &want("q@x", None), &nobody),
            Match::Conflict(_)
        ));
        let owned = |id: &str| (id == "1").then(|| "someone".to_string());
        let remote = vec![user("1", None, "eve@x", None)];
        let ix = Index::new(&remote);
        assert!(matches!(
            ix.find("a9", &want("eve@x", None), &owned),
            Match::Conflict(_)
        ));
    }

    #[test]
    fn groups_match_by_display_name_not_users() {
        let remote = vec![
            user("1", None, "Staff", None),
            RemoteObject {
                kind: ObjectKind::Group,
                id: "g".into(),
                anchor: None,
                name: "staff".into(),
                emails: vec![],
                etag: None,
                created: None,
                state: None,
            },
        ];
        let ix = Index::new(&remote);
        let g = Mapped::Group(MappedGroup {
            display_name: "Staff".into(),
            members: Default::default(),
        });
        assert_eq!(ix.find("g1", &g, &nobody), Match::Soft(&remote[1]));
    }
}

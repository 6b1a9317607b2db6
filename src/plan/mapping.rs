//! Mapping (pure): a source object as the target should hold it (INTERFACE.md).
//!
//! Users: `userName` = AD `userPrincipalName` (OpenLDAP / generic LDAP: `mail`, else
//! `uid`); `displayName`; given and family name from `givenName` / `sn`; the work e-mail
//! from `mail`; `title`; `department` (AD `department`, LDAP `departmentNumber`, else
//! `ou`); `active` = the AD account is not disabled (userAccountControl bit 0x2); an LDAP
//! account is active unless 389 DS's `nsAccountLock` is TRUE (case-insensitive, as 389
//! compares it). Groups: `displayName` = `cn`; members are anchors here and
//! become target ids in the plan.

use std::collections::BTreeSet;

use compact_str::CompactString;

use crate::config::SourceKind;
use crate::log::event::{AttrValue, Attrs, ObjectKind};
use crate::project::ObjectRecord;
use crate::target::{MappedGroup, MappedUser};

/// userAccountControl: ACCOUNTDISABLE.
const UAC_DISABLED: u64 = 0x2;

/// A source object mapped for the target, before member anchors are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    User(MappedUser),
    Group {
        display_name: CompactString,
        /// Member anchors.
        members: BTreeSet<String>,
    },
}

impl Desired {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Desired::User(_) => ObjectKind::User,
            Desired::Group { .. } => ObjectKind::Group,
        }
    }
}

/// Why an object cannot be exported: reported, never guessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmappable(pub String);

fn first(attrs: &Attrs, name: &str) -> Option<CompactString> {
    attrs.get(name)?.iter().find_map(|v| match v {
        AttrValue::Text(s) if !s.trim().is_empty() => Some(CompactString::new(s.trim())),
        _ => None,
    })
}

/// Where [`map_object`] takes each attribute of a user from, for a source of `kind`: the
/// target attribute and its source attributes (lower-case, in order of preference). The
/// first, userName, is required: a user without it is unmappable. Preflight uses this to
/// check that the bind account can read what the mapping needs.
pub fn user_attribute_sources(
    kind: SourceKind,
) -> &'static [(&'static str, &'static [&'static str])] {
    match kind {
        SourceKind::Ad => &[
            ("userName", &["userprincipalname"]),
            ("displayName", &["displayname", "cn"]),
            ("name.givenName", &["givenname"]),
            ("name.familyName", &["sn"]),
            ("emails", &["mail"]),
            ("title", &["title"]),
            ("department", &["department"]),
            ("active", &["useraccountcontrol"]),
        ],
        SourceKind::Openldap | SourceKind::Ldap => &[
            ("userName", &["mail", "uid"]),
            ("displayName", &["displayname", "cn"]),
            ("name.givenName", &["givenname"]),
            ("name.familyName", &["sn"]),
            ("emails", &["mail"]),
            ("title", &["title"]),
            ("department", &["departmentnumber", "ou"]),
        ],
    }
}

/// Map one source object for the target.
pub fn map_object(kind: SourceKind, o: &ObjectRecord) -> Result<Desired, Unmappable> {
    let a = &o.attrs;
    match o.kind {
        ObjectKind::User => {
            let user_name = match kind {
                SourceKind::Ad => first(a, "userprincipalname"),
                SourceKind::Openldap | SourceKind::Ldap => {
                    first(a, "mail").or_else(|| first(a, "uid"))
                }
            }
            .ok_or_else(|| {
                Unmappable(match kind {
                    SourceKind::Ad => "no userPrincipalName: no userName to export".into(),
                    _ => "neither mail nor uid: no userName to export".into(),
                })
            })?;
            let department = match kind {
                SourceKind::Ad => first(a, "department"),
                _ => first(a, "departmentnumber").or_else(|| first(a, "ou")),
            };
            let active = match kind {
                SourceKind::Ad => first(a, "useraccountcontrol")
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_none_or(|uac| (uac as u64) & UAC_DISABLED == 0),
                _ => !first(a, "nsaccountlock").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            };
            Ok(Desired::User(MappedUser {
                user_name,
                display_name: first(a, "displayname").or_else(|| first(a, "cn")),
                given_name: first(a, "givenname"),
                family_name: first(a, "sn"),
                email: first(a, "mail"),
                title: first(a, "title"),
                department,
                active,
            }))
        }
        ObjectKind::Group => {
            let display_name = first(a, "cn")
                .or_else(|| first(a, "name"))
                .ok_or_else(|| Unmappable("group without cn: no displayName".into()))?;
            Ok(Desired::Group {
                display_name,
                members: o.members.clone(),
            })
        }
    }
}

/// The group as the target should hold it, with member anchors resolved to target ids by
/// `resolve`; members not (yet) in the target are left out and counted.
pub fn resolve_group(
    display_name: &str,
    members: &BTreeSet<String>,
    resolve: impl Fn(&str) -> Option<String>,
) -> (MappedGroup, usize) {
    let mut unresolved = 0;
    let mut ids = BTreeSet::new();
    for m in members {
        match resolve(m) {
            Some(id) => {
                ids.insert(id);
            }
            None => unresolved += 1,
        }
    }
    (
        MappedGroup {
            display_name: CompactString::new(display_name),
            members: ids,
        },
        unresolved,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::At;

    fn rec(kind: ObjectKind, attrs: &[(&str, &str)]) -> ObjectRecord {
        let attrs: Attrs = attrs
            .iter()
            .map(|(k, v)| (*k, vec![AttrValue::Text((*v).into())]))
            .collect();
        ObjectRecord {
            kind,
            dn: "CN=x,DC=test,DC=lan".into(),
            attrs,
            members: BTreeSet::from(["m1".to_string(), "m2".to_string()]),
            first_seen: At::default(),
            last_changed: At::default(),
            deletion: None,
        }
    }

    #[test]
    fn ad_user_maps_every_attribute_and_disabled_state() {
        let r = rec(
            ObjectKind::User,
            &[
                ("userprincipalname", "ann@test.lan"),
                ("displayname", "Ann Smith"),
                ("givenname", "Ann"),
                ("sn", "Smith"),
                ("mail", "ann.smith@test.lan"),
                ("title", "Engineer"),
                ("department", "R&D"),
                ("useraccountcontrol", "514"),
            ],
        );
        let Desired::User(u) = map_object(SourceKind::Ad, &r).unwrap() else {
            panic!("not a user")
        };
        assert_eq!(u.user_name, "ann@test.lan");
        assert_eq!(u.display_name.as_deref(), Some("Ann Smith"));
        assert_eq!(u.given_name.as_deref(), Some("Ann"));
        assert_eq!(u.family_name.as_deref(), Some("Smith"));
        assert_eq!(u.email.as_deref(), Some("ann.smith@test.lan"));
        assert_eq!(u.department.as_deref(), Some("R&D"));
        assert!(!u.active, "514 has ACCOUNTDISABLE");
        let r = rec(
            ObjectKind::User,
            &[("userprincipalname", "b@x"), ("useraccountcontrol", "512")],
        );
        let Desired::User(u) = map_object(SourceKind::Ad, &r).unwrap() else {
            panic!("not a user")
        };
        assert!(u.active);
    }

    #[test]
    fn attribute_sources_are_what_the_mapping_reads() {
        for kind in [SourceKind::Ad, SourceKind::Openldap, SourceKind::Ldap] {
            let sources = user_attribute_sources(kind);
            let name = sources[0].1[0];
            for (target, attrs) in sources {
                for attr in *attrs {
                    let value = if *attr == "useraccountcontrol" {
                        "514"
                    } else {
                        "Z9"
                    };
                    // Each source alone (after the userName, which it needs).
                    let r = if *target == sources[0].0 {
                        rec(ObjectKind::User, &[(attr, value)])
                    } else {
                        rec(ObjectKind::User, &[(name, "n@x"), (attr, value)])
                    };
                    let Desired::User(u) = map_object(kind, &r).unwrap() else {
                        panic!("not a user")
                    };
                    let json = serde_json::to_string(&u).unwrap();
                    let seen = json.contains("Z9") || (value == "514" && !u.active);
                    assert!(seen, "{kind:?} {target} from {attr}: {json}");
                }
            }
            let r = rec(ObjectKind::User, &[("cn", "x")]);
            assert!(map_object(kind, &r).is_err() || sources[0].1.contains(&"cn"));
        }
    }

    #[test]
    fn ldap_user_name_is_mail_else_uid_and_missing_is_unmappable() {
        let r = rec(ObjectKind::User, &[("uid", "bob"), ("mail", "bob@x.org")]);
        let Desired::User(u) = map_object(SourceKind::Openldap, &r).unwrap() else {
            panic!()
        };
        assert_eq!(u.user_name, "bob@x.org");
        let r = rec(ObjectKind::User, &[("uid", "bob"), ("cn", "Bob")]);
        let Desired::User(u) = map_object(SourceKind::Ldap, &r).unwrap() else {
            panic!()
        };
        assert_eq!(u.user_name, "bob");
        assert_eq!(u.display_name.as_deref(), Some("Bob"));
        let r = rec(ObjectKind::User, &[("cn", "Nobody")]);
        assert!(map_object(SourceKind::Openldap, &r).is_err());
        let r = rec(ObjectKind::User, &[("samaccountname", "nobody")]);
        assert!(map_object(SourceKind::Ad, &r).is_err());
    }

    #[test]
    fn ldap_user_locked_by_ns_account_lock_is_inactive() {
        for (lock, active) in [
            (Some("TRUE"), false),
            (Some("true"), false),
            (Some("FALSE"), true),
            (Some(""), true),
            (None, true),
        ] {
            let mut attrs = vec![("uid", "bob")];
            if let Some(l) = lock {
                attrs.push(("nsaccountlock", l));
            }
            for kind in [SourceKind::Openldap, SourceKind::Ldap] {
                let Desired::User(u) = map_object(kind, &rec(ObjectKind::User, &attrs)).unwrap()
                else {
                    panic!("not a user")
                };
                assert_eq!(u.active, active, "{kind:?} nsAccountLock {lock:?}");
            }
        }
    }

    #[test]
    fn groups_resolve_members_they_can() {
        let r = rec(ObjectKind::Group, &[("cn", "Staff")]);
        let Desired::Group {
            display_name,
            members,
        } = map_object(SourceKind::Ad, &r).unwrap()
        else {
            panic!()
        };
        let (g, unresolved) = resolve_group(&display_name, &members, |a| {
            (a == "m1").then(|| "T1".to_string())
        });
        assert_eq!(g.display_name, "Staff");
        assert_eq!(g.members, BTreeSet::from(["T1".to_string()]));
        assert_eq!(unresolved, 1);
    }
}

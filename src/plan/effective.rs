//! A change of scope or mapping (pure): what differs from the configuration the log's
//! objects were imported under (`EffectiveConfigRecorded`), and whether applying it needs a
//! full import (data the log does not hold) or can be evaluated over the projection.
//!
//! Needs a full import: another base DN; a users or groups filter that is not provably
//! narrower than the recorded one, or that tests an attribute the log does not hold; an
//! include widened or an exclude removed; a `member_of` group the log does not hold; source
//! attributes the mapping now reads and the log does not hold. Evaluated over the
//! projection this cycle: a narrower filter, an added exclude or a narrower include, any
//! other `member_of` change. A mapping change alone needs neither: the plan maps every
//! object anew and updates those whose mapped state differs.

use sha2::{Digest, Sha256};

use crate::log::event::{ConfigPart, EffectiveConfigRecorded, EffectiveScope};
use crate::plan::filter::{self, Filter};
use crate::source::dn::normalise_dn;

/// SHA-256 (hex) of the scope as recorded.
pub fn scope_fingerprint(scope: &EffectiveScope) -> String {
    let json = serde_json::to_string(scope).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// What an import does about the configuration it runs under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The event to record with the import; None when the configuration is the recorded one.
    pub record: Option<EffectiveConfigRecorded>,
    /// Why the import must be full, if it must.
    pub full_import: Option<String>,
    /// Evaluate the new scope over the projection this cycle (objects that leave it are
    /// set aside as out of scope; users `member_of` no longer excludes come back).
    pub rescope: bool,
}

fn dn_set(v: &[String]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|d| normalise_dn(d)).collect();
    v.sort();
    v.dedup();
    v
}

/// `dn` is `base` or under it (both normalised).
fn under(dn: &str, base: &str) -> bool {
    dn == base
        || (dn.len() > base.len()
            && dn.ends_with(base)
            && dn.as_bytes()[dn.len() - base.len() - 1] == b',')
}

/// The parts of `now` that differ from `old`.
pub fn changed_parts(
    old: &EffectiveScope,
    old_mapping: &str,
    now: &EffectiveScope,
    now_mapping: &str,
) -> Vec<ConfigPart> {
    let mut out = Vec::new();
    if normalise_dn(&old.base_dn) != normalise_dn(&now.base_dn) {
        out.push(ConfigPart::Base);
    }
    if old.users.trim() != now.users.trim() {
        out.push(ConfigPart::Users);
    }
    if old.groups.trim() != now.groups.trim() {
        out.push(ConfigPart::Groups);
    }
    if dn_set(&old.include) != dn_set(&now.include) {
        out.push(ConfigPart::Include);
    }
    if dn_set(&old.exclude) != dn_set(&now.exclude) {
        out.push(ConfigPart::Exclude);
    }
    if dn_set(&old.member_of) != dn_set(&now.member_of) {
        out.push(ConfigPart::MemberOf);
    }
    if old.attributes != now.attributes {
        out.push(ConfigPart::Attributes);
    }
    if old_mapping != now_mapping {
        out.push(ConfigPart::Mapping);
    }
    out
}

/// Whether the filter `new` can be evaluated over objects imported under `old`: Ok with
/// both parsed, or why not (one line).
pub fn filter_change(
    which: &str,
    old: &str,
    new: &str,
    held: &[String],
) -> Result<(Filter, Filter), String> {
    let parsed = |f: &str| {
        filter::parse(f).map_err(|e| format!("the {which} filter `{f}` cannot be read here ({e})"))
    };
    let (o, n) = (parsed(old)?, parsed(new)?);
    if !n.narrows(&o) {
        return Err(format!(
            "the {which} filter `{new}` is wider than or different from `{old}`, which the log's \
             objects were imported under: objects it admits may not be in the log"
        ));
    }
    // Only the parts not known from the old filter are looked at.
    let mut missing = Vec::new();
    needed(&n, &o, &mut missing);
    missing.retain(|a| !held.iter().any(|h| h == a));
    missing.sort();
    missing.dedup();
    if let Some(x) = extensible(&n, &o) {
        return Err(format!(
            "the {which} filter has an extensible match ({x}), which only the server can evaluate"
        ));
    }
    if !missing.is_empty() {
        return Err(format!(
            "the {which} filter tests {}, which the log does not hold",
            missing.join(", ")
        ));
    }
    Ok((o, n))
}

/// Attributes of the parts of `f` not known from `known`.
fn needed(f: &Filter, known: &Filter, out: &mut Vec<String>) {
    let probe = crate::log::event::Attrs::new();
    // A part known from `known` evaluates without attributes.
    if f.eval(&probe, &|_| false, Some(known)).is_ok() {
        return;
    }
    match f {
        Filter::And(v) | Filter::Or(v) => v.iter().for_each(|g| needed(g, known, out)),
        Filter::Not(g) => needed(g, known, out),
        other => out.extend(other.attributes().into_iter().map(str::to_string)),
    }
}

/// An extensible match among the parts of `f` not known from `known`.
fn extensible(f: &Filter, known: &Filter) -> Option<String> {
    let probe = crate::log::event::Attrs::new();
    if f.eval(&probe, &|_| false, Some(known)).is_ok() {
        return None;
    }
    match f {
        Filter::And(v) | Filter::Or(v) => v.iter().find_map(|g| extensible(g, known)),
        Filter::Not(g) => extensible(g, known),
        Filter::Extensible(x) => Some(x.clone()),
        _ => None,
    }
}

/// Why the DN rules of `now` admit objects that those of `old` did not, if they do (one
/// line each). The base DNs are the same.
/// The source attributes of `wanted` that the log does not hold (`held`: those the objects
/// were imported with), in `wanted`'s order: what a new configuration reads that the log
/// cannot give it.
pub fn not_held<'a>(wanted: &'a [String], held: &[String]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|a| !held.contains(a))
        .map(String::as_str)
        .collect()
}

pub fn dn_widening(old: &EffectiveScope, now: &EffectiveScope) -> Vec<String> {
    let mut why = Vec::new();
    let (oi, ni) = (dn_set(&old.include), dn_set(&now.include));
    if !oi.is_empty() {
        if ni.is_empty() {
            why.push("include was removed: objects outside the old include subtrees may not be in the log".to_string());
        } else if let Some(i) = ni.iter().find(|i| !oi.iter().any(|o| under(i, o))) {
            why.push(format!(
                "include {i} is not under the old include subtrees: objects there may not be in the log"
            ));
        }
    }
    let (ox, nx) = (dn_set(&old.exclude), dn_set(&now.exclude));
    for x in ox.iter().filter(|x| !nx.iter().any(|y| under(x, y))) {
        why.push(format!(
            "exclude {x} was removed: objects under it may not be in the log"
        ));
    }
    why
}

/// The decision for an import under `now` (with mapping fingerprint `now_mapping`), given
/// the last record (`recorded`), whether the log holds any source object, and whether a
/// DN names a live group in the projection.
pub fn decide(
    recorded: Option<&EffectiveConfigRecorded>,
    now: &EffectiveScope,
    now_mapping: &str,
    has_objects: bool,
    group_held: &dyn Fn(&str) -> bool,
) -> Decision {
    let event = |changed: Vec<ConfigPart>, full_import: Option<String>| EffectiveConfigRecorded {
        scope_fingerprint: scope_fingerprint(now),
        mapping_fingerprint: now_mapping.to_string(),
        scope: now.clone(),
        changed,
        full_import,
    };
    let Some(old) = recorded else {
        // A log from before these records: what its objects were imported under is unknown.
        let full = has_objects.then(|| {
            "no scope was recorded in the log yet: a full import applies the configuration to every object".to_string()
        });
        return Decision {
            record: Some(event(Vec::new(), full.clone())),
            full_import: full,
            rescope: false,
        };
    };
    let changed = changed_parts(&old.scope, &old.mapping_fingerprint, now, now_mapping);
    if changed.is_empty() {
        return Decision::default();
    }
    let mut full: Vec<String> = Vec::new();
    let mut rescope = false;
    let held = &old.scope.attributes;
    for part in &changed {
        match part {
            ConfigPart::Base => full.push(format!(
                "the base DN changed from {} to {}: objects under it may not be in the log",
                old.scope.base_dn, now.base_dn
            )),
            ConfigPart::Users | ConfigPart::Groups => {
                let (which, o, n) = if *part == ConfigPart::Users {
                    ("users", &old.scope.users, &now.users)
                } else {
                    ("groups", &old.scope.groups, &now.groups)
                };
                match filter_change(which, o, n, held) {
                    Ok(_) => rescope = true,
                    Err(why) => full.push(why),
                }
            }
            ConfigPart::Include | ConfigPart::Exclude => {
                // Both parts are judged together, once.
                if *part == ConfigPart::Exclude && changed.contains(&ConfigPart::Include) {
                    continue;
                }
                let why = dn_widening(&old.scope, now);
                if why.is_empty() {
                    rescope = true;
                }
                full.extend(why);
            }
            ConfigPart::MemberOf => {
                let missing: Vec<&String> =
                    now.member_of.iter().filter(|g| !group_held(g)).collect();
                if missing.is_empty() {
                    rescope = true;
                } else {
                    full.push(format!(
                        "member_of names {}, which the log does not hold as a group",
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            ConfigPart::Attributes => {
                let new = not_held(&now.attributes, held);
                if !new.is_empty() {
                    full.push(format!(
                        "the mapping reads {}, which the log does not hold",
                        new.join(", ")
                    ));
                }
            }
            ConfigPart::Mapping => {}
        }
    }
    let full = (!full.is_empty()).then(|| full.join("; "));
    Decision {
        record: Some(event(changed, full.clone())),
        rescope: rescope && full.is_none(),
        full_import: full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> EffectiveScope {
        EffectiveScope {
            base_dn: "dc=example,dc=com".into(),
            users: "(objectClass=inetOrgPerson)".into(),
            groups: "(objectClass=groupOfNames)".into(),
            include: vec![],
            exclude: vec!["ou=old,dc=example,dc=com".into()],
            member_of: vec![],
            attributes: vec!["cn".into(), "mail".into(), "title".into(), "uid".into()],
        }
    }

    fn recorded(s: &EffectiveScope) -> EffectiveConfigRecorded {
        EffectiveConfigRecorded {
            scope_fingerprint: scope_fingerprint(s),
            mapping_fingerprint: "m1".into(),
            scope: s.clone(),
            changed: vec![],
            full_import: None,
        }
    }

    fn no_groups(_: &str) -> bool {
        false
    }

    #[test]
    fn the_first_record_and_an_unchanged_configuration() {
        let s = scope();
        let d = decide(None, &s, "m1", false, &no_groups);
        assert_eq!(
            d,
            Decision {
                record: Some(recorded(&s)),
                full_import: None,
                rescope: false,
            }
        );
        // A log from before these records holds objects imported under an unknown scope.
        let d = decide(None, &s, "m1", true, &no_groups);
        assert!(d.full_import.is_some());
        assert_eq!(d.record.and_then(|r| r.full_import), d.full_import);
        assert_eq!(
            decide(Some(&recorded(&s)), &s, "m1", true, &no_groups),
            Decision::default()
        );
    }

    #[test]
    fn what_needs_a_full_import_and_what_is_evaluated() {
        let old = recorded(&scope());
        let d = |f: &dyn Fn(&mut EffectiveScope), mapping: &str| {
            let mut s = scope();
            f(&mut s);
            let d = decide(Some(&old), &s, mapping, true, &|g: &str| {
                g.starts_with("cn=held")
            });
            let r = d.record.clone().unwrap_or_default();
            assert_eq!(r.full_import, d.full_import);
            (r.changed, d.full_import, d.rescope)
        };
        // The mapping alone: recorded, nothing more.
        assert_eq!(d(&|_| {}, "m2"), (vec![ConfigPart::Mapping], None, false));
        // A narrower filter over held attributes: evaluated.
        assert_eq!(
            d(
                &|s| s.users = "(&(objectClass=inetOrgPerson)(title=Eng*))".into(),
                "m1"
            ),
            (vec![ConfigPart::Users], None, true)
        );
        // Wider, or testing what the log does not hold: full.
        let (_, full, rescope) = d(&|s| s.users = "(objectClass=person)".into(), "m1");
        assert_eq!(
            full.as_deref(),
            Some("the users filter `(objectClass=person)` is wider than or different from `(objectClass=inetOrgPerson)`, which the log's objects were imported under: objects it admits may not be in the log")
        );
        assert!(!rescope);
        let (_, full, _) = d(
            &|s| s.users = "(&(objectClass=inetOrgPerson)(employeeType=x))".into(),
            "m1",
        );
        assert_eq!(
            full.as_deref(),
            Some("the users filter tests employeetype, which the log does not hold")
        );
        let (_, full, _) = d(
            &|s| s.groups = "(&(objectClass=groupOfNames)(x:1.2:=y))".into(),
            "m1",
        );
        assert!(full.is_some_and(|f| f.contains("extensible match (x:1.2:=y)")));
        let (_, full, _) = d(&|s| s.users = "(&(cn=a)".into(), "m1");
        assert!(full.is_some_and(|f| f.contains("cannot be read here")));
        // Base: always full.
        let (changed, full, _) = d(&|s| s.base_dn = "ou=p,dc=example,dc=com".into(), "m1");
        assert_eq!(changed, [ConfigPart::Base]);
        assert!(full.is_some());
        // An added exclude, a narrower include: evaluated; a removed exclude: full.
        assert_eq!(
            d(&|s| s.exclude.push("ou=x,dc=example,dc=com".into()), "m1"),
            (vec![ConfigPart::Exclude], None, true)
        );
        assert_eq!(
            d(&|s| s.include.push("OU=P, dc=example,dc=com".into()), "m1"),
            (vec![ConfigPart::Include], None, true)
        );
        let (_, full, _) = d(&|s| s.exclude.clear(), "m1");
        assert_eq!(
            full.as_deref(),
            Some("exclude ou=old,dc=example,dc=com was removed: objects under it may not be in the log")
        );
        // A narrower exclude inside the old one is a removal of part of it: full.
        let (_, full, _) = d(
            &|s| s.exclude = vec!["ou=a,ou=old,dc=example,dc=com".into()],
            "m1",
        );
        assert!(full.is_some());
        // member_of: evaluated when its groups are in the log.
        assert_eq!(
            d(
                &|s| s.member_of = vec!["cn=held,dc=example,dc=com".into()],
                "m1"
            ),
            (vec![ConfigPart::MemberOf], None, true)
        );
        let (_, full, _) = d(
            &|s| s.member_of = vec!["cn=gone,dc=example,dc=com".into()],
            "m1",
        );
        assert_eq!(
            full.as_deref(),
            Some(
                "member_of names cn=gone,dc=example,dc=com, which the log does not hold as a group"
            )
        );
        // New attributes read by the mapping: full; fewer: nothing to fetch.
        let (changed, full, _) = d(&|s| s.attributes.push("employeetype".into()), "m2");
        assert_eq!(changed, [ConfigPart::Attributes, ConfigPart::Mapping]);
        assert_eq!(
            full.as_deref(),
            Some("the mapping reads employeetype, which the log does not hold")
        );
        assert_eq!(
            d(&|s| s.attributes.retain(|a| a != "title"), "m2"),
            (
                vec![ConfigPart::Attributes, ConfigPart::Mapping],
                None,
                false
            )
        );
        // Two reasons: both said.
        let (_, full, _) = d(
            &|s| {
                s.exclude.clear();
                s.users = "(uid=*)".into();
            },
            "m1",
        );
        assert_eq!(full.map(|f| f.matches("; ").count()), Some(1));
    }
}

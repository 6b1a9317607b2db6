//! Which source objects are in scope: under the base DN, under an include subtree (when any
//! are given), and under no exclude subtree. DNs compare case-insensitively, normalised by
//! [`crate::source::dn`].

use crate::source::dn::{normalise_dn, normalise_slowly, only_case};

/// True when `dn` is `base` or lies under it (both normalised).
fn under(dn: &str, base: &str) -> bool {
    dn == base
        || (dn.len() > base.len()
            && dn.ends_with(base)
            && dn.as_bytes()[dn.len() - base.len() - 1] == b',')
}

/// [`under`] for a `dn` normalised but for its case ([`only_case`]).
fn under_any_case(dn: &str, base: &str) -> bool {
    let (d, b) = (dn.as_bytes(), base.as_bytes());
    d.len() >= b.len()
        && d[d.len() - b.len()..].eq_ignore_ascii_case(b)
        && (d.len() == b.len() || d[d.len() - b.len() - 1] == b',')
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    base: String,
    include: Vec<String>,
    exclude: Vec<String>,
    /// `[source] member_of`: the groups (as configured, and normalised) whose members,
    /// direct or nested, are the only users in scope; empty: every user the DN rules admit.
    member_of: Vec<String>,
    member_of_normal: Vec<String>,
}

impl Scope {
    pub fn new(base_dn: &str, include: &[String], exclude: &[String]) -> Scope {
        Scope {
            base: normalise_dn(base_dn),
            include: include.iter().map(|d| normalise_dn(d)).collect(),
            exclude: exclude.iter().map(|d| normalise_dn(d)).collect(),
            member_of: Vec::new(),
            member_of_normal: Vec::new(),
        }
    }

    /// Only users that are members (direct or nested) of `groups` are in scope.
    pub fn with_member_of(mut self, groups: &[String]) -> Scope {
        self.member_of = groups.to_vec();
        self.member_of_normal = groups.iter().map(|d| normalise_dn(d)).collect();
        self
    }

    /// The `member_of` groups as configured (empty: no such rule).
    pub fn member_of(&self) -> &[String] {
        &self.member_of
    }

    /// Whether `dn` is one of the `member_of` groups.
    pub fn is_member_of_group(&self, dn: &str) -> bool {
        let n = normalise_dn(dn);
        self.member_of_normal.contains(&n)
    }

    pub fn contains(&self, dn: &str) -> bool {
        if only_case(dn) {
            return self.holds(dn, under_any_case);
        }
        self.holds(&normalise_slowly(dn), under)
    }

    fn holds(&self, dn: &str, under: fn(&str, &str) -> bool) -> bool {
        under(dn, &self.base)
            && (self.include.is_empty() || self.include.iter().any(|i| under(dn, i)))
            && !self.exclude.iter().any(|x| under(dn, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules() {
        let s = Scope::new(
            "DC=test,DC=lan",
            &["OU=Staff, DC=test, DC=lan".into()],
            &["OU=Gone,OU=Staff,DC=test,DC=lan".into()],
        );
        assert!(s.contains("CN=Ann,OU=Staff,DC=test,DC=lan"));
        assert!(s.contains("cn=ann, ou=staff, dc=TEST, dc=lan"));
        assert!(!s.contains("CN=Bob,OU=Gone,OU=Staff,DC=test,DC=lan"));
        assert!(!s.contains("CN=Eve,OU=Other,DC=test,DC=lan"));
        assert!(!s.contains("CN=x,OU=NotStaff,DC=test,DC=lan"));
        assert!(!s.contains("CN=Ann,OU=Staff,DC=other,DC=lan"));
        // An escaped comma is part of a value, not a separator.
        assert!(s.contains("CN=Smith\\, Ann,OU=Staff,DC=test,DC=lan"));
        assert!(!Scope::new("DC=test,DC=lan", &[], &[]).contains("CN=x,DC=xtest,DC=lan"));
    }

    proptest::proptest! {
        /// The shortcut for DNs that differ from their normal form only in case gives what
        /// normalising character by character gives, and so does the scope test.
        #[test]
        fn the_case_only_shortcut_agrees(
            head in "[A-Za-z0-9 ,=+\\\\Äé]{0,16}",
            tail in proptest::sample::select(vec![
                "", "dc=lan", ",DC=LAN", ",ou=X,dc=Lan", ",DC=test,DC=lan", "xdc=lan",
                ", OU=A B , dc=lan", ",ou=a  b,dc=lan", ",dc=É", ",dc=e",
            ]),
            base in proptest::sample::select(vec!["dc=lan", "DC=test,DC=lan", "ou=a b,dc=lan", "dc=é"]),
        ) {
            let dn = format!("{head}{tail}");
            proptest::prop_assert_eq!(normalise_dn(&dn), normalise_slowly(&dn));
            let scope = Scope::new(base, &[], &["OU=X,DC=lan".into()]);
            let slow = scope.holds(&normalise_slowly(&dn), under);
            proptest::prop_assert_eq!(scope.contains(&dn), slow);
            let under_base = format!("cn=Q,{}", base.to_uppercase());
            proptest::prop_assert!(scope.contains(&under_base));
        }
    }
}

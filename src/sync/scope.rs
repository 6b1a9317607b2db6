//! Which source objects are in scope: under the base DN, under an include subtree (when any
//! are given), and under no exclude subtree. DNs compare case-insensitively.

/// A DN in a comparable form: lower case, no spaces around separators.
pub fn normalise_dn(dn: &str) -> String {
    if only_case(dn) {
        return dn.to_ascii_lowercase();
    }
    normalise_slowly(dn)
}

/// True when normalising `dn` changes nothing but its (ASCII) case: it is ASCII, has no
/// escapes, and each space is inside a value (not at either end, not beside a separator or
/// another space). Most DNs are; they are compared without being copied.
fn only_case(dn: &str) -> bool {
    let b = dn.as_bytes();
    let plain = |c: u8| !matches!(c, b',' | b'=' | b'+' | b' ');
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\\' => false,
        b' ' => i > 0 && i + 1 < b.len() && plain(b[i - 1]) && plain(b[i + 1]),
        c => c.is_ascii(),
    })
}

/// [`normalise_dn`] character by character.
fn normalise_slowly(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut escaped = false;
    let mut pending_space = false;
    for c in dn.chars() {
        if escaped {
            push_lower(&mut out, c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(c);
                escaped = true;
            }
            ' ' => pending_space = true,
            ',' | '=' | '+' => {
                pending_space = false;
                out.push(c);
                // Spaces after a separator are not part of the value.
            }
            _ => {
                if pending_space
                    && !matches!(out.as_bytes().last(), Some(b',' | b'=' | b'+') | None)
                {
                    out.push(' ');
                }
                pending_space = false;
                push_lower(&mut out, c);
            }
        }
    }
    out
}

/// `c` in lower case (ASCII without a look-up in the Unicode tables).
fn push_lower(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
    } else {
        out.extend(c.to_lowercase());
    }
}

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
}

impl Scope {
    pub fn new(base_dn: &str, include: &[String], exclude: &[String]) -> Scope {
        Scope {
            base: normalise_dn(base_dn),
            include: include.iter().map(|d| normalise_dn(d)).collect(),
            exclude: exclude.iter().map(|d| normalise_dn(d)).collect(),
        }
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

    #[test]
    fn normalised_dns_are_lower_case_without_separator_spaces() {
        assert_eq!(
            normalise_dn("CN=Ann  Lee , OU=Staff,DC=Test"),
            "cn=ann lee,ou=staff,dc=test"
        );
        assert_eq!(normalise_dn("CN=ÄRGER,OU=Größe"), "cn=ärger,ou=größe");
        assert_eq!(normalise_dn("CN=İ"), "cn=i\u{307}");
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

//! Which source objects are in scope: under the base DN, under an include subtree (when any
//! are given), and under no exclude subtree. DNs compare case-insensitively.

/// A DN in a comparable form: lower case, no spaces around separators.
pub fn normalise_dn(dn: &str) -> String {
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
        let dn = normalise_dn(dn);
        under(&dn, &self.base)
            && (self.include.is_empty() || self.include.iter().any(|i| under(&dn, i)))
            && !self.exclude.iter().any(|x| under(&dn, x))
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
}

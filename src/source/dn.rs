//! Distinguished names in a comparable form: what the sources use to resolve member DNs
//! and the scope rules use to compare DNs.

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
pub(crate) fn only_case(dn: &str) -> bool {
    let b = dn.as_bytes();
    let plain = |c: u8| !matches!(c, b',' | b'=' | b'+' | b' ');
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\\' => false,
        b' ' => i > 0 && i + 1 < b.len() && plain(b[i - 1]) && plain(b[i + 1]),
        c => c.is_ascii(),
    })
}

/// [`normalise_dn`] character by character.
pub(crate) fn normalise_slowly(dn: &str) -> String {
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

/// Whether `dn` has the shape of a DN (RFC 4514): one or more RDNs separated by unescaped
/// commas, each `type=value` (or several joined by `+`), the type a name or an OID, the
/// value not empty. What configuration checks DNs with; the server decides the rest.
pub fn looks_like_dn(dn: &str) -> bool {
    let mut parts: Vec<String> = vec![String::new()];
    let mut escaped = false;
    for c in dn.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                if let Some(p) = parts.last_mut() {
                    p.push('x');
                }
            }
            '\\' => escaped = true,
            ',' | '+' => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c);
                }
            }
        }
    }
    !escaped
        && parts.iter().all(|ava| {
            let Some((t, v)) = ava.split_once('=') else {
                return false;
            };
            let t = t.trim();
            let name = t.starts_with(|c: char| c.is_ascii_alphabetic())
                && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            let oid = !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.');
            (name || oid) && !v.trim().is_empty()
        })
}

/// `c` in lower case (ASCII without a look-up in the Unicode tables).
fn push_lower(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
    } else {
        out.extend(c.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_looks_like_a_dn() {
        for good in [
            "cn=sync-users,ou=groups,dc=example,dc=com",
            "CN=Smith\\, Ann,OU=Staff,DC=test,DC=lan",
            "cn=a+uid=b,dc=x",
            "2.5.4.3=x,dc=y",
            "dc=com",
        ] {
            assert!(looks_like_dn(good), "{good}");
        }
        for bad in [
            "",
            "sync-users",
            "cn=,dc=x",
            "=x,dc=y",
            "cn=x,,dc=y",
            "cn=x\\",
            "c n=x",
        ] {
            assert!(!looks_like_dn(bad), "{bad}");
        }
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

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
    fn normalised_dns_are_lower_case_without_separator_spaces() {
        assert_eq!(
            normalise_dn("CN=Ann  Lee , OU=Staff,DC=Test"),
            "cn=ann lee,ou=staff,dc=test"
        );
        assert_eq!(normalise_dn("CN=ÄRGER,OU=Größe"), "cn=ärger,ou=größe");
        assert_eq!(normalise_dn("CN=İ"), "cn=i\u{307}");
    }
}

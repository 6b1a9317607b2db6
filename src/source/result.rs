//! One place for what an LDAP result code means to an operator: its name, a hint saying
//! what to do, and whether trying again can help; and for the errors of connecting and
//! binding to a source. The LDAP reader (`wire.rs`), the connection (`ldap.rs`) and the
//! source kinds build their errors here.

use std::fmt::Display;

use crate::Error;

/// A readable name for common LDAP result codes.
pub fn result_name(rc: u32) -> String {
    let name = match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        _ => "error",
    };
    format!("{name} ({rc})")
}

/// A connection to `url` that could not be made (the address, TCP, TLS): worth another
/// attempt, as the server may come back.
pub fn cannot_connect(url: &str, why: impl Display) -> Error {
    Error::Source(format!("cannot connect to {url}: {why}"))
}

/// The server at `url` refused StartTLS with `rc` and diagnostic `text`.
pub fn starttls_refused(url: &str, rc: u32, text: &str) -> Error {
    let text = text.trim_end_matches('\0').trim();
    cannot_connect(
        url,
        format!(
            "StartTLS refused: {} ({text}); check the server's TLS setup, or use ldaps://",
            result_name(rc)
        ),
    )
}

/// The server at `url` refused the bind as `bind_dn` with `rc` and diagnostic `text`.
pub fn bind_refused(url: &str, bind_dn: &str, rc: u32, text: &str) -> Error {
    failure(&format!("bind to {url} as {bind_dn} refused"), rc, text)
}

/// Result codes no retry can fix: the request or the account is wrong, not the moment.
/// busy (51), unavailable (52), unwillingToPerform (53) and other codes may pass.
pub fn is_permanent(rc: u32) -> bool {
    matches!(rc, 2 | 8 | 12 | 32 | 34 | 48 | 49 | 50)
}

/// Active Directory's reason for an invalidCredentials (49): the `data` field of the
/// diagnostic message, e.g. "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext
/// error, data 52e, v4563".
pub fn ad_data_code(text: &str) -> Option<&str> {
    let i = text.find("data ")?;
    let rest = &text[i + 5..];
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// What an AD bind sub-code means.
fn ad_reason(code: &str) -> Option<&'static str> {
    Some(match code.to_ascii_lowercase().as_str() {
        "525" => "the user does not exist",
        "52e" => "wrong password (or unknown user)",
        "530" => "logon not permitted at this time",
        "531" => "logon not permitted from this computer",
        "532" => "the password has expired",
        "533" => "the account is disabled",
        "701" => "the account has expired",
        "773" => "the user must change the password first",
        "775" => "the account is locked out",
        _ => return None,
    })
}

/// What to do about `rc`, if there is something to say.
pub fn hint(rc: u32, text: &str) -> Option<String> {
    Some(match rc {
        8 => "the server requires TLS or signing: use ldaps:// or tls = \"starttls\"".into(),
        12 => "the server does not support a control this source kind needs: enable change \
               tracking (OpenLDAP: the syncprov overlay; 389 DS: the Content Synchronization \
               plugin) or use kind = \"ldap\" (full imports only)"
            .into(),
        32 => "the base DN does not exist on this server: check base_dn against the server's \
               naming contexts (`dirsync preflight` lists them)"
            .into(),
        34 => "a DN is malformed: check base_dn and bind_dn".into(),
        48 | 49 => match ad_data_code(text).and_then(|c| ad_reason(c).map(|r| (c, r))) {
            Some((c, r)) => {
                format!("invalid credentials, {r} (AD {c}): check bind_dn and the password")
            }
            None => "invalid credentials: check bind_dn and the password".into(),
        },
        50 => "the bind account may not do this: grant it read access to base_dn".into(),
        51 | 52 => "the server is busy or unavailable: it is tried again".into(),
        _ => return None,
    })
}

/// The error for an LDAP result `rc` with diagnostic `text` from the operation `context`
/// (e.g. "bind to ldap://h as cn=x"): one line with the code's name, the server's message
/// and a hint. Permanent codes become [`Error::SourceRefused`] so nothing retries them.
pub fn failure(context: &str, rc: u32, text: &str) -> Error {
    let text = text.trim_end_matches('\0').trim();
    let mut msg = format!("{context}: {}", result_name(rc));
    if !text.is_empty() {
        msg.push_str(&format!(" \"{text}\""));
    }
    if let Some(h) = hint(rc, text) {
        msg.push_str(&format!("; {h}"));
    }
    if is_permanent(rc) {
        Error::SourceRefused(msg)
    } else {
        Error::Source(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ad_sub_codes_in_words() {
        for (code, words) in [
            ("52e", "wrong password"),
            ("775", "locked out"),
            ("532", "expired"),
            ("533", "disabled"),
            ("701", "account has expired"),
            ("773", "must change"),
        ] {
            let text = format!(
                "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {code}, v4563"
            );
            assert_eq!(ad_data_code(&text), Some(code));
            let e = failure("bind to ldap://dc as x", 49, &text);
            assert!(matches!(e, Error::SourceRefused(_)), "{e}");
            let line = e.to_string();
            assert!(line.contains(words), "{line}");
            assert!(line.contains("invalidCredentials (49)"), "{line}");
        }
        assert_eq!(ad_data_code("invalid credentials"), None);
        assert!(failure("bind", 49, "")
            .to_string()
            .ends_with("check bind_dn and the password"));
    }

    #[test]
    fn connect_and_bind_lines() {
        let e = bind_refused("ldap://h", "cn=reader,dc=x", 49, "");
        assert_eq!(
            e.to_string(),
            "source: bind to ldap://h as cn=reader,dc=x refused: invalidCredentials (49); \
             invalid credentials: check bind_dn and the password"
        );
        assert!(matches!(e, Error::SourceRefused(_)));
        let e = starttls_refused("ldap://h", 52, "Could not start TLS\0");
        assert!(matches!(e, Error::Source(_)), "{e}");
        assert!(
            e.to_string().contains(
                "cannot connect to ldap://h: StartTLS refused: unavailable (52) (Could not start TLS); check the server's TLS setup"
            ),
            "{e}"
        );
    }

    #[test]
    fn permanent_and_transient_codes() {
        for rc in [12, 32, 34, 49, 50] {
            assert!(
                matches!(failure("x", rc, ""), Error::SourceRefused(_)),
                "{rc}"
            );
        }
        for rc in [51, 52, 53, 80] {
            assert!(matches!(failure("x", rc, ""), Error::Source(_)), "{rc}");
        }
        let line = failure("search", 12, "critical extension is unavailable").to_string();
        assert!(
            line.contains("syncprov") && line.contains("kind = \"ldap\""),
            "{line}"
        );
        assert!(failure("search", 32, "")
            .to_string()
            .contains("naming contexts"));
    }
}

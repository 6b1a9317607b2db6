//! `dirsync preflight` against real servers (issue 17.4): an account that reads nothing
//! while the ledger owns objects, a server without the sync control, attributes the account
//! cannot read. Each failing check is one row; exit 1 when one fails, 0 with warnings.

use serde_json::Value;

use crate::common::Run;
use crate::lab::{Slapd, SlapdOptions};
use crate::sync_export::{ldap_user, E2e, Source};

const BASE: &str = "dc=example,dc=org";
const BLIND: &str = "cn=blind,dc=example,dc=org";
const PARTIAL: &str = "cn=partial,dc=example,dc=org";

/// `blind` reads nothing under people and groups; `partial` reads people without their
/// mail, uid and title; everyone else reads everything.
const ACL: &str = "\
access to attrs=userPassword by anonymous auth by * none
access to dn.subtree=\"ou=people,dc=example,dc=org\" attrs=mail,uid,title by dn.exact=\"cn=blind,dc=example,dc=org\" none by dn.exact=\"cn=partial,dc=example,dc=org\" none by * read
access to dn.subtree=\"ou=people,dc=example,dc=org\" by dn.exact=\"cn=blind,dc=example,dc=org\" none by * read
access to dn.subtree=\"ou=groups,dc=example,dc=org\" by dn.exact=\"cn=blind,dc=example,dc=org\" none by * read
access to * by * read";

/// slapd (`opts`) with u1..u3, group team (u1, u2) and the accounts blind and partial
/// (password `pw`); dirsync binds as the rootdn.
async fn lab(opts: SlapdOptions) -> E2e {
    let slapd = Slapd::start(opts).await;
    let mut ldif = String::new();
    for i in 1..=3 {
        ldif.push_str(&ldap_user(i));
    }
    ldif.push_str(&format!(
        "dn: cn=team,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: team\n\
         member: uid=u1,ou=people,{BASE}\nmember: uid=u2,ou=people,{BASE}\n\n"
    ));
    for a in ["blind", "partial"] {
        ldif.push_str(&format!(
            "dn: cn={a},{BASE}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: {a}\nuserPassword: pw\n\n"
        ));
    }
    slapd.ldapadd(&ldif).await;
    let source = format!(
        "kind = \"openldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"pw\"\n\
         base_dn = \"{BASE}\"\ninclude = [\"ou=people,{BASE}\", \"ou=groups,{BASE}\"]\n",
        slapd.url(),
        slapd.bind_dn(),
    );
    let pw = slapd.password().to_string();
    E2e::new(Source::Ldap(slapd), &source, &pw, "500").await
}

/// Change a `[source]` key of the lab's dirsync.toml.
fn set_source_key(lab: &E2e, key: &str, value: &str) {
    let path = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let prefix = format!("{key} = ");
    let mut section = "";
    let out: Vec<String> = toml
        .lines()
        .map(|l| {
            if l.starts_with('[') {
                section = l;
            }
            match section == "[source]" && l.starts_with(&prefix) {
                true => format!("{key} = \"{value}\""),
                false => l.to_string(),
            }
        })
        .collect();
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

/// dirsync binds as `dn` with password `pw`.
fn bind_as(lab: &E2e, dn: &str) {
    set_source_key(lab, "bind_dn", dn);
    std::fs::write(lab.dir.path().join("pw"), "pw\n").unwrap();
}

/// `preflight --format json`: the run and (check, result, detail) per check.
fn preflight(lab: &E2e) -> (Run, Vec<(String, String, String)>) {
    let run = lab.cli(&["preflight", "--instance", "a", "--format", "json"]);
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    let checks = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let result = match (c["ok"].as_bool(), c["warning"].as_bool()) {
                        (Some(false), _) => "FAIL",
                        (_, Some(true)) => "warn",
                        _ => "ok",
                    };
                    (
                        c["check"].as_str().unwrap().to_string(),
                        result.to_string(),
                        c["detail"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (run, checks)
}

/// The checks that did not pass cleanly: (check, result, detail).
fn not_ok(checks: &[(String, String, String)]) -> Vec<(&str, &str, &str)> {
    checks
        .iter()
        .filter(|(_, r, _)| r != "ok")
        .map(|(c, r, d)| (c.as_str(), r.as_str(), d.as_str()))
        .collect()
}

const NO_DEPARTMENT: (&str, &str, &str) = (
    "attributes",
    "warn",
    "none of the 3 users in scope has urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department (departmentnumber or ou): if the directory sets them, the bind account cannot read them and they would be exported empty",
);

/// Finding 4: preflight passed with "0 objects in scope" when the bind account could read
/// nothing. Now it fails while the ledger owns objects (a sync would take them all for
/// deleted), one row naming the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_fails_when_the_account_reads_nothing_the_ledger_owns() {
    let lab = lab(SlapdOptions {
        acl: Some(ACL.into()),
        ..Default::default()
    })
    .await;
    let (run, checks) = preflight(&lab);
    assert_eq!(run.code, 0, "{run:?}");
    let names: Vec<&str> = checks.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "store",
            "source bind",
            "sync control",
            "source read",
            "duplicates",
            "userName",
            "attributes",
            "target",
            "target content"
        ]
    );
    assert_eq!(not_ok(&checks), [NO_DEPARTMENT]);
    lab.sync("a", &[]);
    bind_as(&lab, BLIND);
    let (run, checks) = preflight(&lab);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        not_ok(&checks),
        [(
            "source read",
            "FAIL",
            "cn=blind,dc=example,dc=org reads no object in scope under dc=example,dc=org while the ledger owns 4: the account lacks read access (or base_dn, include or the filters are wrong)"
        )],
        "{run:?}"
    );
    // The table: one row per check, the failing one marked.
    let table = lab.cli(&["preflight", "--instance", "a"]);
    assert_eq!(table.code, 1, "{table:?}");
    let row: Vec<&str> = table
        .stdout
        .lines()
        .filter(|l| l.contains("FAIL"))
        .collect();
    assert_eq!(row.len(), 1, "{table:?}");
    assert!(row[0].starts_with("source read"), "{table:?}");
}

/// Finding 4: without the sync control (slapd without syncprov) every delta failed with
/// `unavailableCriticalExtension (12)`; preflight said nothing. Now it checks the rootDSE's
/// supportedControl and names what to enable; `kind = "ldap"` needs no control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_fails_without_the_sync_control() {
    let lab = lab(SlapdOptions {
        no_syncprov: true,
        ..Default::default()
    })
    .await;
    let url = lab.slapd().url();
    let (run, checks) = preflight(&lab);
    assert_eq!(run.code, 1, "{run:?}");
    let detail = format!(
        "{url} does not offer RFC 4533 content synchronisation: 1.3.6.1.4.1.4203.1.9.1.1 is not in the rootDSE's supportedControl, so no delta can be read; enable the syncprov overlay (OpenLDAP) or the Content Sync plugin (389 DS: `dsconf NAME plugin contentsync enable`), or set kind = \"ldap\" (full imports only)"
    );
    let failed = not_ok(&checks);
    assert_eq!(failed[0], ("sync control", "FAIL", detail.as_str()));
    // The dry-run import needs the control for its baseline cookie: it fails too.
    let rest: Vec<_> = failed[1..].iter().map(|(c, r, _)| (*c, *r)).collect();
    assert_eq!(rest, [("source read", "FAIL")], "{checks:?}");
    set_source_key(&lab, "kind", "ldap");
    let (run, checks) = preflight(&lab);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(checks.iter().all(|c| c.0 != "sync control"), "{checks:?}");
}

/// Samba AD offers DirSync: the check passes for `kind = "ad"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_finds_dir_sync_on_samba() {
    let lab = E2e::ad().await;
    let (_, checks) = preflight(&lab);
    let control: Vec<_> = checks.iter().filter(|c| c.0 == "sync control").collect();
    assert_eq!(
        control,
        [&(
            "sync control".to_string(),
            "ok".to_string(),
            "DirSync (1.2.840.113556.1.4.841) is offered".to_string()
        )]
    );
}

/// Finding 4: read access to the attributes the mapping needs. An account that cannot read
/// mail, uid and title gets users without a userName (fail: they would not be exported)
/// and no titles or e-mails (a warning: the directory may not use them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_checks_the_attributes_the_mapping_reads() {
    let lab = lab(SlapdOptions {
        acl: Some(ACL.into()),
        ..Default::default()
    })
    .await;
    bind_as(&lab, PARTIAL);
    let (run, checks) = preflight(&lab);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        not_ok(&checks),
        [
            (
                "userName",
                "FAIL",
                "3 user(s) have no mail or uid: they would not be exported (if the directory sets it, the bind account cannot read it)"
            ),
            (
                "attributes",
                "warn",
                "none of the 3 users in scope has emails[type eq \"work\"].value (mail), title (title), urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department (departmentnumber or ou): if the directory sets them, the bind account cannot read them and they would be exported empty"
            )
        ],
        "{run:?}"
    );
}

/// 389 DS with Content Sync offers RFC 4533: the check passes for `kind = "openldap"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_finds_content_sync_on_389() {
    use crate::lab::ds389::{Ds389, Ds389Options, BASE_DN, BIND_DN, PASSWORD};
    let ds = Ds389::start(Ds389Options {
        allow_openldap: true,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"openldap\"\nurl = \"{}\"\n\
             bind_dn = \"{BIND_DN}\"\npassword_file = \"pw\"\nbase_dn = \"{BASE_DN}\"\n",
            ds.url()
        ),
    )
    .unwrap();
    assert_eq!(crate::common::dirsync(dir.path(), &["init"]).code, 0);
    let run = crate::common::dirsync(dir.path(), &["preflight", "--format", "json"]);
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    let control = v
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == "sync control"))
        .cloned();
    assert_eq!(
        control,
        Some(serde_json::json!({
            "check": "sync control",
            "ok": true,
            "detail": "RFC 4533 content synchronisation (1.3.6.1.4.1.4203.1.9.1.1) is offered"
        })),
        "{run:?}"
    );
}

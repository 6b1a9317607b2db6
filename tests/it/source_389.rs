//! 389 Directory Server as a `kind = "openldap"` source (issue 17, finding 1), against a real
//! 389 DS: the second sync is a delta, deletions arrive by delta with the anchors of the full
//! import, a locked account is kept for the mapping, and a server whose Content Sync only
//! speaks its native mode is one exit-2 line naming the dsconf command.

use serde_json::Value;

use crate::common::dirsync;
use crate::lab::ds389::{Ds389, Ds389Options, BASE_DN, BIND_DN, PASSWORD};

const PEOPLE: &str = "ou=people,dc=example,dc=com";

async fn lab(allow_openldap: bool) -> (Ds389, tempfile::TempDir) {
    let ds = Ds389::start(Ds389Options { allow_openldap }).await;
    ds.ldapadd(&format!(
        "dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: uid=ann,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: ann\ncn: Ann\nsn: A\n\n\
         dn: uid=bob,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\nsn: B\n\
         nsAccountLock: TRUE\n"
    ))
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
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    (ds, dir)
}

fn sync(dir: &tempfile::TempDir) -> crate::common::Run {
    dirsync(
        dir.path(),
        &["sync", "--instance", "old", "--staging", "--format", "json"],
    )
}

fn anchors(dir: &tempfile::TempDir) -> Vec<String> {
    let run = dirsync(dir.path(), &["log", "show", "--format", "json"]);
    let mut out: Vec<String> = run
        .stdout
        .split("\"anchor\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next().map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_and_deletions_from_389_in_openldap_mode() {
    let (ds, dir) = lab(true).await;
    let run = sync(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["import"]["mode"], "full", "{v}");
    let full_anchors = anchors(&dir);
    let log = dirsync(dir.path(), &["log", "show", "--format", "json"]).stdout;
    assert!(log.contains("\"nsaccountlock\":[\"TRUE\"]"), "{log}");

    ds.ldapdelete(&format!("uid=ann,{PEOPLE}")).await;
    let run = sync(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["import"]["mode"], "delta", "{v}");
    assert_eq!(v["import"]["deleted"], 1, "{v}");
    // The deletion named an anchor of the full import: no new anchor appeared.
    assert_eq!(anchors(&dir), full_anchors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_content_sync_mode_is_one_line_exit_2() {
    let (_ds, dir) = lab(false).await;
    let run = sync(&dir);
    assert_eq!(run.code, 2, "{run:?}");
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--allow-openldap on"), "{err}");
}

/// A locked 389 account (nsAccountLock: TRUE) reaches a real SCIM server inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_389_account_is_inactive_in_the_target() {
    let (_ds, dir) = lab(true).await;
    let scim = crate::lab::Scim::start().await;
    std::fs::write(dir.path().join("token"), scim.token()).unwrap();
    let toml = std::fs::read_to_string(dir.path().join("dirsync.toml")).unwrap();
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!(
            "{toml}[target]\nkind = \"scim\"\nurl = \"{}\"\ntoken_file = \"token\"\n",
            scim.base_url()
        ),
    )
    .unwrap();
    let run = dirsync(
        dir.path(),
        &["sync", "--instance", "old", "--format", "json"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let users: Value = reqwest::Client::new()
        .get(format!("{}/Users", scim.base_url()))
        .bearer_auth(scim.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let active = |name: &str| {
        users["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["userName"] == name)
            .map(|u| u["active"].clone())
    };
    assert_eq!(active("bob"), Some(Value::Bool(false)), "{users}");
    assert_eq!(active("ann"), Some(Value::Bool(true)), "{users}");
}

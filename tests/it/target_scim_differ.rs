//! SCIM service providers that differ within the RFC (issue 17), each behaviour put in
//! front of a real scim2-server by the proxy of `lab::scim_proxy`.

use serde_json::Value;

use crate::lab::{ProxyRules, ScimProxy};
use crate::sync_export::{ldap_user, E2e};

const PEOPLE: &str = "ou=people,dc=example,dc=org";

/// Point the lab's dirsync at a proxy in front of its SCIM tenant.
pub async fn behind_proxy(lab: &E2e, rules: ProxyRules) -> ScimProxy {
    let path = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let upstream = toml
        .lines()
        .skip_while(|l| *l != "[target]")
        .find_map(|l| l.strip_prefix("url = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    let proxy = ScimProxy::start(&upstream, rules).await;
    std::fs::write(&path, toml.replace(&upstream, proxy.base_url())).unwrap();
    proxy
}

fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// Finding 1: a server that answers 400 to the candidate filter of one new object made the
/// whole export fail, every cycle; an unrelated change never arrived. Now the lookup falls
/// back to a listing matched by dirsync itself, and the cycle goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_candidate_filter_does_not_stop_the_export() {
    let lab = E2e::ldap(2, "500").await;
    let _proxy = behind_proxy(
        &lab,
        ProxyRules {
            refuse_filters_containing: vec!["u3@example.org".into()],
            ..Default::default()
        },
    )
    .await;
    let v = lab.sync("a", &[]);
    assert_eq!(count(&v, "created"), 4, "{v}");

    // A new user whose lookup the server refuses, and an unrelated title change.
    let s = lab.slapd();
    s.ldapadd(&ldap_user(3)).await;
    s.ldapmodify(&format!(
        "dn: uid=u1,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
    ))
    .await;
    let (run, v) = lab.run("a", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        [
            count(&v, "created"),
            count(&v, "updated"),
            count(&v, "failures")
        ],
        [1, 1, 0],
        "{v}"
    );
    let users = lab.view.users_by_anchor().await;
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let a3 = lab.anchor(&format!("uid=u3,{PEOPLE}")).await;
    assert_eq!(users[&a1]["title"], "Boss");
    assert_eq!(users[&a3]["userName"], "u3@example.org");
    assert_eq!(users.len(), 3);
    // And the next cycle has nothing left to do.
    let v = lab.sync("a", &[]);
    assert_eq!([count(&v, "created"), count(&v, "updated")], [0, 0], "{v}");
}

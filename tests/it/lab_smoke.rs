//! Smoke tests of the lab fixtures: each starts a real server and talks to it
//! with the client the project uses (sqlx, ldap3, reqwest). Run with
//! `cargo test --test it lab_smoke -- --nocapture` to see the start times.

use std::collections::HashSet;
use std::time::Instant;

use ldap3::controls::{
    parse_syncinfo, EntryState, RawControl, RefreshMode, SyncDone, SyncInfo, SyncRequest, SyncState,
};
use ldap3::{Ldap, LdapConnAsync, Scope, SearchEntry};

use crate::lab::{pg_database, pg_server_pid, Samba, Scim, Slapd, SlapdOptions};

const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";

async fn connect(url: &str, bind_dn: &str, password: &str) -> Ldap {
    let (conn, mut ldap) = LdapConnAsync::new(url).await.expect("ldap connect");
    ldap3::drive!(conn);
    ldap.simple_bind(bind_dn, password)
        .await
        .expect("bind")
        .success()
        .expect("bind result");
    ldap
}

/// Entries (not referrals) of a search.
async fn search(ldap: &mut Ldap, base: &str, filter: &str, attrs: &[&str]) -> Vec<SearchEntry> {
    let (entries, _res) = ldap
        .search(base, Scope::Subtree, filter, attrs.to_vec())
        .await
        .expect("search")
        .success()
        .expect("search result");
    entries
        .into_iter()
        .filter(|e| !e.is_ref() && !e.is_intermediate())
        .map(SearchEntry::construct)
        .collect()
}

fn user_ldif(dn: &str, uid: &str) -> String {
    format!("dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n")
}

#[tokio::test]
async fn postgres_gives_fresh_databases() {
    let t0 = Instant::now();
    let a = pg_database().await;
    let first = t0.elapsed();
    let t1 = Instant::now();
    let b = pg_database().await;
    let second = t1.elapsed();
    eprintln!("lab-timing: pg_database first {first:?}, next {second:?}");
    assert_ne!(a, b);
    assert!(a.starts_with("postgres://postgres@127.0.0.1:"), "{a}");
    let pool = sqlx::PgPool::connect(&a).await.expect("connect");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("select 1");
    assert_eq!(one, 1);
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&pool)
        .await
        .expect("create table");
    pool.close().await;
    // The other database does not see it.
    let pool = sqlx::PgPool::connect(&b).await.expect("connect");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 't'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 0);
    pool.close().await;
}

#[tokio::test]
async fn slapd_add_and_search_with_entry_uuid() {
    let t0 = Instant::now();
    let slapd = Slapd::start(SlapdOptions::default()).await;
    eprintln!("lab-timing: Slapd::start {:?}", t0.elapsed());
    let dn = format!("uid=alice,{}", slapd.people_dn());
    slapd.ldapadd(&user_ldif(&dn, "alice")).await;
    slapd
        .ldapmodify(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: sn\nsn: Liddell\n"
        ))
        .await;

    let mut ldap = connect(&slapd.url(), slapd.bind_dn(), slapd.password()).await;
    let found = search(
        &mut ldap,
        slapd.base_dn(),
        "(uid=alice)",
        &["sn", "entryUUID"],
    )
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].dn, dn);
    assert_eq!(found[0].attrs["sn"], vec!["Liddell".to_owned()]);
    let uuid = &found[0].attrs["entryUUID"][0];
    uuid::Uuid::parse_str(uuid).expect("entryUUID is a UUID");
    let _ = ldap.unbind().await;
}

#[tokio::test]
async fn slapd_restart_and_slapadd_keep_data() {
    let mut slapd = Slapd::start(SlapdOptions::default()).await;
    let alice = format!("uid=alice,{}", slapd.people_dn());
    slapd.ldapadd(&user_ldif(&alice, "alice")).await;
    let url = slapd.url();

    let t0 = Instant::now();
    slapd.stop().await;
    let stop = t0.elapsed();
    let bob = format!("uid=bob,{}", slapd.people_dn());
    slapd.slapadd(&user_ldif(&bob, "bob")).await;
    let t1 = Instant::now();
    slapd.restart().await;
    eprintln!(
        "lab-timing: Slapd stop {stop:?}, restart {:?}",
        t1.elapsed()
    );
    assert_eq!(slapd.url(), url);

    let mut ldap = connect(&slapd.url(), slapd.bind_dn(), slapd.password()).await;
    let found = search(&mut ldap, slapd.people_dn(), "(uid=*)", &["entryUUID"]).await;
    let dns: HashSet<_> = found.iter().map(|e| e.dn.clone()).collect();
    assert_eq!(dns, HashSet::from([alice, bob]));
    assert!(found.iter().all(|e| e.attrs.contains_key("entryUUID")));
    let _ = ldap.unbind().await;
}

/// What a refreshOnly sync search returned.
#[derive(Debug, Default)]
struct SyncOutcome {
    /// (state, entryUUID) of the entries sent.
    entries: Vec<(String, Vec<u8>)>,
    /// UUIDs of syncIdSet messages with refreshDeletes=TRUE.
    deleted: HashSet<Vec<u8>>,
    cookie: Option<Vec<u8>>,
}

async fn sync_refresh_only(ldap: &mut Ldap, base: &str, cookie: Option<Vec<u8>>) -> SyncOutcome {
    let mut out = SyncOutcome::default();
    let request = SyncRequest {
        mode: RefreshMode::RefreshOnly,
        cookie,
        reload_hint: false,
    };
    let mut stream = ldap
        .with_controls(RawControl::from(request))
        .streaming_search(base, Scope::Subtree, "(objectClass=*)", vec!["entryUUID"])
        .await
        .expect("sync search");
    while let Some(entry) = stream.next().await.expect("sync search entry") {
        if entry.is_intermediate() {
            match parse_syncinfo(entry) {
                SyncInfo::SyncIdSet {
                    cookie,
                    refresh_deletes,
                    sync_uuids,
                } => {
                    if refresh_deletes {
                        out.deleted.extend(sync_uuids);
                    }
                    out.cookie = cookie.or(out.cookie.take());
                }
                SyncInfo::NewCookie(c) => out.cookie = Some(c),
                SyncInfo::RefreshDelete { cookie, .. }
                | SyncInfo::RefreshPresent { cookie, .. } => {
                    out.cookie = cookie.or(out.cookie.take());
                }
            }
        } else if !entry.is_ref() {
            let ctrl = entry
                .1
                .iter()
                .find(|c| c.1.ctype == SYNC_STATE_OID)
                .expect("sync state control");
            let state: SyncState = ctrl.1.parse();
            let name = match state.state {
                EntryState::Present => "present",
                EntryState::Add => "add",
                EntryState::Modify => "modify",
                EntryState::Delete => "delete",
            };
            out.entries.push((name.to_owned(), state.entry_uuid));
        }
    }
    let res = stream.finish().await;
    assert_eq!(res.rc, 0, "sync search: {res:?}");
    if let Some(done) = res.ctrls.iter().find(|c| c.1.ctype == SYNC_DONE_OID) {
        let done: SyncDone = done.1.parse();
        if done.cookie.is_some() {
            out.cookie = done.cookie;
        }
    }
    out
}

#[tokio::test]
async fn slapd_session_log_reports_deletions() {
    let t0 = Instant::now();
    let mut slapd = Slapd::start(SlapdOptions {
        session_log: true,
        ..Default::default()
    })
    .await;
    eprintln!("lab-timing: Slapd::start(session_log) {:?}", t0.elapsed());
    let dn = format!("uid=carol,{}", slapd.people_dn());
    slapd.ldapadd(&user_ldif(&dn, "carol")).await;

    let mut ldap = connect(&slapd.url(), slapd.bind_dn(), slapd.password()).await;
    let first = sync_refresh_only(&mut ldap, slapd.base_dn(), None).await;
    let cookie = first.cookie.clone().expect("a cookie");
    assert_eq!(first.entries.len(), 4, "base, 2 OUs, carol: {first:?}");
    let found = search(&mut ldap, slapd.base_dn(), "(uid=carol)", &["entryUUID"]).await;
    let carol = *uuid::Uuid::parse_str(&found[0].attrs["entryUUID"][0])
        .expect("uuid")
        .as_bytes();
    let _ = ldap.unbind().await;

    slapd.ldapdelete(&dn).await;
    // The session log survives a restart.
    slapd.restart().await;

    let mut ldap = connect(&slapd.url(), slapd.bind_dn(), slapd.password()).await;
    let second = sync_refresh_only(&mut ldap, slapd.base_dn(), Some(cookie)).await;
    let deleted_by_state = second
        .entries
        .iter()
        .any(|(s, u)| s == "delete" && u.as_slice() == carol);
    assert!(
        second.deleted.contains(carol.as_slice()) || deleted_by_state,
        "deletion not reported: {second:?}"
    );
    assert!(
        second.entries.iter().all(|(s, _)| s != "present"),
        "a session log sends deletions, not the present set: {second:?}"
    );
    let _ = ldap.unbind().await;
}

/// objectGUID bytes of an entry (ldap3 puts them in `attrs` when they happen to
/// be valid UTF-8).
fn object_guid(entry: &SearchEntry) -> Vec<u8> {
    if let Some(v) = entry.bin_attrs.get("objectGUID") {
        return v[0].clone();
    }
    entry.attrs["objectGUID"][0].as_bytes().to_vec()
}

#[tokio::test]
async fn samba_bind_add_and_search_object_guid() {
    let t0 = Instant::now();
    let samba = Samba::start().await;
    eprintln!("lab-timing: Samba::start {:?}", t0.elapsed());
    let ou = format!("OU=Lab,{}", samba.base_dn());
    let user = format!("CN=alice,{ou}");
    samba
        .ldapadd(&format!(
            "dn: {ou}\nobjectClass: organizationalUnit\n\n\
             dn: {user}\nobjectClass: user\nsAMAccountName: alice\ngivenName: Alice\n"
        ))
        .await;
    samba
        .ldapmodify(&format!(
            "dn: {user}\nchangetype: modify\nreplace: sn\nsn: Liddell\n"
        ))
        .await;

    let mut ldap = connect(&samba.url(), samba.bind_dn(), samba.password()).await;
    let found = search(
        &mut ldap,
        samba.base_dn(),
        "(sAMAccountName=alice)",
        &["objectGUID", "sn"],
    )
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].dn.to_lowercase(), user.to_lowercase());
    assert_eq!(found[0].attrs["sn"], vec!["Liddell".to_owned()]);
    assert_eq!(object_guid(&found[0]).len(), 16);

    // Rename within the OU.
    samba.ldapmodrdn(&user, "CN=alice2", None).await;
    let found = search(&mut ldap, &ou, "(sAMAccountName=alice)", &["cn"]).await;
    assert_eq!(found[0].attrs["cn"], vec!["alice2".to_owned()]);
    let _ = ldap.unbind().await;
}

#[tokio::test]
async fn samba_restart_keeps_data() {
    let mut samba = Samba::start().await;
    let ou = format!("OU=Kept,{}", samba.base_dn());
    samba
        .ldapadd(&format!("dn: {ou}\nobjectClass: organizationalUnit\n"))
        .await;
    let url = samba.url();
    let t0 = Instant::now();
    samba.stop().await;
    let stop = t0.elapsed();
    let t1 = Instant::now();
    samba.start_again().await;
    eprintln!(
        "lab-timing: Samba stop {stop:?}, start_again {:?}",
        t1.elapsed()
    );
    assert_eq!(samba.url(), url);
    let mut ldap = connect(&samba.url(), samba.bind_dn(), samba.password()).await;
    let found = search(&mut ldap, samba.base_dn(), "(ou=Kept)", &["objectGUID"]).await;
    assert_eq!(found.len(), 1);
    let _ = ldap.unbind().await;
}

async fn tombstones(samba: &Samba, filter: &str) -> Vec<SearchEntry> {
    let mut ldap = connect(&samba.url(), samba.bind_dn(), samba.password()).await;
    let show_deleted = RawControl {
        ctype: SHOW_DELETED_OID.to_owned(),
        crit: true,
        val: None,
    };
    let (entries, _res) = ldap
        .with_controls(show_deleted)
        .search(
            samba.base_dn(),
            Scope::Subtree,
            filter,
            vec!["isDeleted", "objectGUID", "sAMAccountName"],
        )
        .await
        .expect("search")
        .success()
        .expect("search result");
    let _ = ldap.unbind().await;
    entries
        .into_iter()
        .filter(|e| !e.is_ref())
        .map(SearchEntry::construct)
        .collect()
}

#[tokio::test]
async fn samba_expunge_removes_tombstones() {
    let mut samba = Samba::start().await;
    let user = format!("CN=bob,{}", samba.users_dn());
    samba
        .ldapadd(&format!(
            "dn: {user}\nobjectClass: user\nsAMAccountName: bob\n"
        ))
        .await;
    samba.ldapdelete(&user).await;
    let dead = tombstones(&samba, "(sAMAccountName=bob)").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attrs["isDeleted"], vec!["TRUE".to_owned()]);

    let t0 = Instant::now();
    samba.expunge_tombstones().await;
    eprintln!("lab-timing: Samba expunge_tombstones {:?}", t0.elapsed());
    assert!(samba.is_running());
    let dead = tombstones(&samba, "(sAMAccountName=bob)").await;
    assert!(dead.is_empty(), "tombstone still there: {dead:?}");
}

#[tokio::test]
async fn scim_user_roundtrip() {
    let t0 = Instant::now();
    let scim = Scim::start().await;
    eprintln!("lab-timing: Scim::start {:?}", t0.elapsed());
    assert!(scim.base_url().ends_with("/v2"), "{}", scim.base_url());
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{}/Users", scim.base_url()))
        .bearer_auth(scim.token())
        .json(&serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "alice",
            "externalId": "ext-1",
            "name": {"givenName": "Alice", "familyName": "Liddell"},
        }))
        .send()
        .await
        .expect("POST")
        .error_for_status()
        .expect("201")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("id");
    let got: serde_json::Value = client
        .get(format!("{}/Users/{id}", scim.base_url()))
        .bearer_auth(scim.token())
        .send()
        .await
        .expect("GET")
        .error_for_status()
        .expect("200")
        .json()
        .await
        .expect("json");
    assert_eq!(got["userName"], "alice");
    assert_eq!(got["externalId"], "ext-1");
    // No token: refused.
    let status = client
        .get(format!("{}/Users/{id}", scim.base_url()))
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn scim_tenants_are_separate() {
    let t0 = Instant::now();
    let a = Scim::tenant().await;
    let first = t0.elapsed();
    let t1 = Instant::now();
    let b = Scim::tenant().await;
    eprintln!(
        "lab-timing: Scim::tenant first {first:?}, next {:?}",
        t1.elapsed()
    );
    assert_ne!(a.base_url(), b.base_url());
    let client = reqwest::Client::new();
    client
        .post(format!("{}/Users", a.base_url()))
        .bearer_auth(a.token())
        .json(&serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "alice",
        }))
        .send()
        .await
        .expect("POST")
        .error_for_status()
        .expect("201");
    for (tenant, want) in [(&a, 1), (&b, 0)] {
        let list: serde_json::Value = client
            .get(format!("{}/Users", tenant.base_url()))
            .bearer_auth(tenant.token())
            .send()
            .await
            .expect("GET")
            .error_for_status()
            .expect("200")
            .json()
            .await
            .expect("json");
        assert_eq!(list["totalResults"], want, "{}: {list}", tenant.base_url());
    }
}

/// Set by `servers_die_with_a_killed_test_process` for its child.
const HOLD_ENV: &str = "DIRSYNC_LAB_HOLD_SERVERS";

/// Not a test of its own: the child half of
/// `servers_die_with_a_killed_test_process`. Starts every kind of server, the
/// shared ones from a thread that then ends, prints their pids and waits to be
/// killed.
#[tokio::test]
#[ignore = "run by servers_die_with_a_killed_test_process"]
async fn hold_servers_until_killed() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    let (pg_url, tenant) = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { (pg_database().await, Scim::tenant().await) })
    })
    .join()
    .expect("thread");
    // The shared servers outlive the thread that started them.
    let pool = sqlx::PgPool::connect(&pg_url).await.expect("connect");
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .expect("select");
    pool.close().await;
    let status = reqwest::Client::new()
        .get(format!("{}/Users", tenant.base_url()))
        .bearer_auth(tenant.token())
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status, reqwest::StatusCode::OK);

    let slapd = Slapd::start(SlapdOptions {
        session_log: true,
        ..Default::default()
    })
    .await;
    let samba = Samba::start().await;
    let scim = Scim::start().await;
    let pids = [
        pg_server_pid().await,
        tenant.server_pid(),
        slapd.pid().expect("slapd pid"),
        samba.pid().expect("samba pid"),
        scim.pid(),
    ];
    let dirs = [slapd.dir(), samba.dir()].map(|d| d.display().to_string());
    println!("LAB-HOLD {pids:?} {}", dirs.join(" "));
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat[stat.rfind(')').expect("stat") + 1..].trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

#[test]
fn servers_die_with_a_killed_test_process() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "lab_smoke::hold_servers_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the test binary");
    let stdout = child.stdout.take().expect("stdout");
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map(|l| l.expect("read"))
        .find(|l| l.starts_with("LAB-HOLD "))
        .expect("the child printed no pids");
    let pids: Vec<u32> = line["LAB-HOLD [".len()..line.find(']').expect("]")]
        .split(", ")
        .map(|p| p.parse().expect("pid"))
        .collect();
    let dirs: Vec<&str> = line[line.find(']').expect("]") + 1..]
        .split_whitespace()
        .collect();
    assert_eq!(pids.len(), 5, "{line}");
    assert!(pids.iter().all(|&p| !process_gone(p)), "{line}");

    child.kill().expect("SIGKILL the child");
    child.wait().expect("wait");
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    while !pids.iter().all(|&p| process_gone(p)) {
        assert!(Instant::now() < deadline, "servers still alive: {pids:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The wrapped servers' dirs are removed by their wrappers; samba's would be
    // left for the next test process's sweep: remove it now.
    let slapd_dir = std::path::Path::new(dirs[0]);
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while slapd_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} not removed",
            slapd_dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_dir_all(dirs[1]).expect("remove the samba dir");
}

/// A large LDIF goes through `ldapadd` without the pipes deadlocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_ldif_does_not_deadlock_the_ldap_tools() {
    let slapd = crate::lab::Slapd::start(crate::lab::SlapdOptions::default()).await;
    let mut ldif = String::new();
    for i in 0..3000 {
        ldif.push_str(&format!(
            "dn: uid=bulk{i},{}\nobjectClass: inetOrgPerson\nuid: bulk{i}\ncn: Bulk {i}\nsn: {i}\n\n",
            slapd.people_dn()
        ));
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), slapd.ldapadd(&ldif))
        .await
        .expect("ldapadd of 3000 entries must not hang");
    let found = slapd
        .ldapsearch(&["-b", slapd.people_dn(), "-LLL", "(uid=bulk2999)", "uid"])
        .await;
    assert!(found.contains("uid: bulk2999"), "{found}");
}

//! `dirsync run`: the service syncs every interval, idles while stopped, exits when retired,
//! and SIGTERM ends it cleanly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin, until};
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";

fn spawn(lab: &E2e) -> Child {
    Command::new(bin())
        .args(["run", "--instance", "a"])
        .current_dir(lab.dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn title(lab: &E2e, anchor: &str) -> String {
    lab.view.users_by_anchor().await[anchor]["title"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn set_title(uid: &str, t: &str) -> String {
    format!("dn: uid={uid},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: {t}\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_obeys_the_log_and_sigterm() {
    let lab = E2e::ldap(3, "500\ninterval = \"300ms\"").await;
    let mut child = spawn(&lab);
    until(30, "the first cycle", || async {
        lab.view.count("Users").await == 3
    })
    .await;
    let a1 = lab.anchor(&format!("uid=u1,{PEOPLE}")).await;
    let a2 = lab.anchor(&format!("uid=u2,{PEOPLE}")).await;
    lab.slapd().ldapmodify(&set_title("u1", "Boss")).await;
    until(30, "a change to arrive", || async {
        title(&lab, &a1).await == "Boss"
    })
    .await;

    // Stopped: it idles.
    let r = lab.cli(&["instance", "stop", "a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.slapd().ldapmodify(&set_title("u2", "Chief")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        title(&lab, &a2).await,
        "Clerk",
        "a stopped instance exports nothing"
    );
    assert!(child.try_wait().unwrap().is_none(), "still running, idle");
    // Started again: it catches up.
    let r = lab.cli(&["instance", "start", "a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    until(30, "catching up", || async {
        title(&lab, &a2).await == "Chief"
    })
    .await;

    // SIGTERM: it ends cleanly, exit 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "SIGTERM did not end the service");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    let r = lab.cli(&["log", "verify"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Retired: it exits by itself.
    let mut child = spawn(&lab);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = lab.cli(&["instance", "retire", "a", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "a retired instance's service kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

/// An idle service on Active Directory appends nothing: Samba's DirSync cookie moves on
/// every read even when nothing in the search changed, and an idle cycle does not record a
/// cookie that moved over nothing sent. A change made afterwards still arrives (read from
/// the cookie recorded before the idle cycles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_on_active_directory_appends_nothing() {
    const STAFF: &str = "OU=Staff,DC=test,DC=lan";
    let lab = E2e::ad().await;
    let path = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{toml}interval = \"1s\"\n")).unwrap();
    let mut child = spawn(&lab);
    until(60, "the first cycle", || async {
        lab.view.count("Users").await == 4
    })
    .await;
    // The first cycle recorded, the second (the first that may stay quiet) begun and ended.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let head = lab.head().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let grown = lab.events_after(head).await;
    assert_eq!(
        grown,
        Vec::<String>::new(),
        "events appended in 10 s of idling"
    );

    lab.samba()
        .ldapmodify(&format!(
            "dn: CN=u3,{STAFF}\nchangetype: modify\nreplace: title\ntitle: Boss\n\n"
        ))
        .await;
    let a3 = lab.anchor(&format!("CN=u3,{STAFF}")).await;
    until(30, "the change to arrive", || async {
        title(&lab, &a3).await == "Boss"
    })
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "SIGTERM did not end the service");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = lab.cli(&["log", "verify"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

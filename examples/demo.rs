//! `scripts/demo`: a real handover on a local lab. Starts a Samba AD DC and scim2-server
//! (the test lab's fixtures), fills the directory, syncs it from an "old" instance, stops
//! that instance, changes the directory (deletions, changes, additions, moves out of scope,
//! memberships), runs the `new-computer` handover to a "new" instance, and shows that the
//! target now equals the directory: nothing missed, nothing duplicated. It stops what it
//! started (the fixtures die with it).
//!
//! Run through `scripts/demo` (it installs what is needed and builds the release binary,
//! passed here as `DIRSYNC_BIN`).

#[path = "../tests/it/lab/mod.rs"]
mod lab;

use std::path::Path;
use std::process::Command;

const STAFF: &str = "OU=Staff,DC=test,DC=lan";
const OTHER: &str = "OU=Other,DC=test,DC=lan";
const USERS: u32 = 300;
const GROUPS: u32 = 10;

fn step(s: &str) {
    // Bold only for a person at a terminal: no escape codes in a file or a pipe.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m== {s}\x1b[0m");
    } else {
        println!("\n== {s}");
    }
}

/// Run dirsync in `dir`, echoing the command and its output; returns the exit code.
fn dirsync(dir: &Path, args: &[&str]) -> i32 {
    let bin = std::env::var("DIRSYNC_BIN").unwrap_or_else(|_| "target/release/dirsync".into());
    println!("$ dirsync {}", args.join(" "));
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .output()
        .expect("run dirsync (build it first: scripts/demo does)");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out.status.code().unwrap_or(1)
}

fn must(dir: &Path, args: &[&str]) {
    let code = dirsync(dir, args);
    assert!(code == 0, "dirsync {args:?} exited {code}");
}

fn user(i: u32) -> String {
    format!(
        "dn: CN=user{i},{STAFF}\nobjectClass: user\nsAMAccountName: user{i}\n\
         userPrincipalName: user{i}@test.lan\ngivenName: User\nsn: Number{i}\n\
         displayName: User {i}\ntitle: Clerk\nmail: user{i}@test.lan\nuserAccountControl: 512\n\n"
    )
}

async fn count_scim(base: &str, token: &str, res: &str) -> u64 {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/{res}?count=1"))
        .bearer_auth(token)
        .send()
        .await
        .expect("scim")
        .json()
        .await
        .expect("scim json");
    v["totalResults"].as_u64().unwrap_or(0)
}

#[tokio::main]
async fn main() {
    step("lab: a Samba AD domain controller and a scim2-server (started here, stopped at the end)");
    let samba = lab::Samba::start().await;
    let scim = lab::Scim::start().await;
    println!(
        "AD at {} (DC=test,DC=lan), SCIM at {}",
        samba.url(),
        scim.base_url()
    );

    step(&format!(
        "the directory: {USERS} users in {GROUPS} groups under {STAFF}"
    ));
    let mut ldif = format!(
        "dn: {STAFF}\nobjectClass: organizationalUnit\n\ndn: {OTHER}\nobjectClass: organizationalUnit\n\n"
    );
    for i in 1..=USERS {
        ldif.push_str(&user(i));
    }
    for g in 1..=GROUPS {
        ldif.push_str(&format!(
            "dn: CN=team{g},{STAFF}\nobjectClass: group\nsAMAccountName: team{g}\n"
        ));
        for i in (1..=USERS).filter(|i| i % GROUPS == g % GROUPS) {
            ldif.push_str(&format!("member: CN=user{i},{STAFF}\n"));
        }
        ldif.push('\n');
    }
    samba.ldapadd(&ldif).await;

    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    std::fs::write(dir.join("ad-password"), format!("{}\n", samba.password())).expect("write");
    std::fs::write(dir.join("scim-token"), format!("{}\n", scim.token())).expect("write");
    std::fs::write(
        dir.join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://dirsync.db\"\n\n[source]\nkind = \"ad\"\nurl = \"{}\"\n\
             bind_dn = \"{}\"\npassword_file = \"ad-password\"\nbase_dn = \"DC=test,DC=lan\"\n\
             include = [\"{STAFF}\"]\n\n[target]\nkind = \"scim\"\nurl = \"{}\"\n\
             token_file = \"scim-token\"\n\n[sync]\ndeletion_threshold = 50\n",
            samba.url(),
            samba.bind_dn(),
            scim.base_url()
        ),
    )
    .expect("write config");
    println!(
        "config:\n{}",
        std::fs::read_to_string(dir.join("dirsync.toml")).unwrap_or_default()
    );

    step("the old computer syncs (it is the first instance: it establishes the relationship)");
    must(dir, &["init"]);
    must(dir, &["sync", "--instance", "old"]);

    step("the old computer's service is stopped; meanwhile the directory changes");
    must(dir, &["instance", "stop", "old"]);
    let mut l = String::new();
    for i in 1..=15 {
        l.push_str(&format!("dn: CN=user{i},{STAFF}\nchangetype: delete\n\n"));
    }
    for i in 16..=25 {
        l.push_str(&format!(
            "dn: CN=user{i},{STAFF}\nchangetype: modify\nreplace: title\ntitle: Manager\n\n"
        ));
    }
    for i in USERS + 1..=USERS + 10 {
        let u = user(i);
        let body = u.split_once('\n').map(|(_, b)| b).unwrap_or_default();
        l.push_str(&format!("dn: CN=user{i},{STAFF}\nchangetype: add\n{body}"));
    }
    for i in 26..=28 {
        l.push_str(&format!(
            "dn: CN=user{i},{STAFF}\nchangetype: modrdn\nnewrdn: CN=user{i}\ndeleteoldrdn: 1\nnewsuperior: {OTHER}\n\n"
        ));
    }
    l.push_str(&format!(
        "dn: CN=team1,{STAFF}\nchangetype: modify\nadd: member\n"
    ));
    for i in USERS + 1..=USERS + 10 {
        l.push_str(&format!("member: CN=user{i},{STAFF}\n"));
    }
    l.push('\n');
    samba.ldapmodify(&l).await;
    println!("deleted 15 users, changed 10, added 10 (into team1), moved 3 out of scope");
    println!(
        "the cloud still has {} users: the deletions have not reached it",
        count_scim(scim.base_url(), scim.token(), "Users").await
    );

    step("the handover to the new computer (the built-in new-computer playbook), every step recorded");
    must(
        dir,
        &["handover", "--from", "old", "--to", "new", "--dry-run"],
    );
    must(dir, &["handover", "--from", "old", "--to", "new"]);
    must(dir, &["handover", "status"]);

    step("the result: the cloud equals the directory's in-scope objects");
    let ad_users = samba
        .ldapsearch(&[
            "-LLL",
            "-b",
            STAFF,
            "(&(objectClass=user)(objectCategory=person))",
            "dn",
        ])
        .await
        .lines()
        .filter(|l| l.starts_with("dn:"))
        .count();
    let cloud = count_scim(scim.base_url(), scim.token(), "Users").await;
    println!("users in scope in AD: {ad_users}; users in the cloud: {cloud}");
    assert_eq!(ad_users as u64, cloud, "the target must equal the source");
    step("the audit: a fresh full read of AD against what we own in the cloud; nothing missed");
    must(
        dir,
        &[
            "audit",
            "missed-deletes",
            "--refresh",
            "--instance",
            "new",
            "--fail-if-any",
        ],
    );
    must(dir, &["audit", "gaps"]);
    must(dir, &["instance", "list"]);
    must(dir, &["log", "verify"]);
    step("done: the lab is stopped and its files removed");
}

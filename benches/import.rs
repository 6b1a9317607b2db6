//! `scripts/bench import`: load users into a real directory, then time dirsync's full
//! `sync --staging --full` import into the SQLite log against `ldapsearch -E pr=1000/noprompt`
//! dumping the same entries and attributes in the same run, and a delta of `--changes`
//! modifications. Usage: `cargo bench --bench import -- [--ad-users N] [--ldap-users N]
//! [--changes N] [--only ad|openldap]`.

mod common;
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use common::arg;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const OU: &str = "OU=Bench,DC=test,DC=lan";
const FILTER: &str = "(|(&(objectClass=user)(objectCategory=person))(objectClass=group))";
const LDAP_FILTER: &str =
    "(|(objectClass=inetOrgPerson)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))";

fn dirsync(dir: &Path, args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dirsync"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run dirsync");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "dirsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "  {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
    secs
}

fn ldapsearch(url: &str, bind: &str, pw: &str, base: &str) -> (f64, usize) {
    ldapsearch_filter(url, bind, pw, base, FILTER)
}

fn ldapsearch_filter(url: &str, bind: &str, pw: &str, base: &str, filter: &str) -> (f64, usize) {
    let t = Instant::now();
    let out = Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-H",
            url,
            "-D",
            bind,
            "-w",
            pw,
            "-E",
            "pr=1000/noprompt",
            "-b",
            base,
            filter,
            "*",
            "entryUUID",
        ])
        .env("LDAPNOINIT", "1")
        .stderr(Stdio::inherit())
        .output()
        .expect("run ldapsearch");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success());
    let entries = String::from_utf8_lossy(&out.stdout)
        .matches("\ndn: ")
        .count()
        + 1;
    (secs, entries)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--ad-users", 20_000);
    let ldap_users = arg(&args, "--ldap-users", 100_000);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let changes = arg(&args, "--changes", 1_000);
    println!("source      entries  ldapsearch s  dirsync full s  ratio  delta({changes}) s");
    if only.as_deref() != Some("openldap") {
        ad(users, changes.min(users)).await;
    }
    if only.as_deref() != Some("ad") {
        openldap(ldap_users, changes.min(ldap_users)).await;
    }
}

/// A store folder with this source configuration and an initialised log.
fn store_dir(source_toml: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), password).expect("pw");
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\n{source_toml}password_file = \"pw\"\n"
        ),
    )
    .expect("config");
    dirsync(dir.path(), &["init"]);
    dir
}

/// Our full import, timed between two baseline dumps of the same server (the best of the two
/// counts, so a cold cache never favours us): (ldapsearch s, entries, full import s).
fn full_vs_ldapsearch(dir: &Path, search: impl Fn() -> (f64, usize)) -> (f64, usize, f64) {
    let (t_ls, n) = search();
    let sync = [
        "sync",
        "--instance",
        "bench",
        "--staging",
        "--full",
        "--format",
        "json",
    ];
    let t_full = dirsync(dir, &sync);
    let (t_ls2, _) = search();
    (t_ls.min(t_ls2), n, t_full)
}

fn delta(dir: &Path) -> f64 {
    dirsync(
        dir,
        &[
            "sync",
            "--instance",
            "bench",
            "--staging",
            "--format",
            "json",
        ],
    )
}

fn report(source: &str, n: usize, t_ls: f64, t_full: f64, changes: u64, t_delta: f64) {
    println!(
        "{source:<11} {n:<8} {t_ls:<13.3} {t_full:<15.3} {:<6.2} {t_delta:.3}",
        t_full / t_ls
    );
    println!(
        "{}",
        serde_json::json!({"bench": "import", "source": source, "entries": n, "ldapsearch_s": t_ls,
            "full_s": t_full, "ratio": t_full / t_ls, "changes": changes, "delta_s": t_delta})
    );
}

async fn openldap(users: u64, changes: u64) {
    eprintln!("OpenLDAP (slapd, session log): loading {users} users ...");
    let mut slapd = lab::Slapd::start(lab::SlapdOptions {
        session_log: true,
        ..Default::default()
    })
    .await;
    slapd.stop().await;
    let mut ldif = String::with_capacity(users as usize * 300);
    for j in 0..users {
        ldif.push_str(&format!(
            "dn: uid=user{j},{people}\nobjectClass: inetOrgPerson\nuid: user{j}\ncn: User {j}\n\
             givenName: User\nsn: N{j}\nmail: user{j}@example.org\ntitle: Clerk\n\n",
            people = slapd.people_dn()
        ));
    }
    slapd.slapadd(&ldif).await;
    slapd.restart().await;
    let dir = store_dir(
        &format!(
            "kind = \"openldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\nbase_dn = \"{}\"\n",
            slapd.url(),
            slapd.bind_dn(),
            slapd.base_dn()
        ),
        slapd.password(),
    );
    let (t_ls, n, t_full) = full_vs_ldapsearch(dir.path(), || {
        ldapsearch_filter(
            &slapd.url(),
            slapd.bind_dn(),
            slapd.password(),
            slapd.base_dn(),
            LDAP_FILTER,
        )
    });
    let mut ldif = String::new();
    for j in 0..changes {
        ldif.push_str(&format!(
            "dn: uid=user{j},{}\nchangetype: modify\nreplace: title\ntitle: Boss {j}\n\n",
            slapd.people_dn()
        ));
    }
    slapd.ldapmodify(&ldif).await;
    report("openldap", n, t_ls, t_full, changes, delta(dir.path()));
}

async fn ad(users: u64, changes: u64) {
    eprintln!("AD (Samba): loading {users} users ...");
    let samba = lab::Samba::start().await;
    common::load_ad_users(&samba, OU, users).await;
    let dir = store_dir(
        &format!(
            "kind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\nbase_dn = \"DC=test,DC=lan\"\ninclude = [\"{OU}\"]\n",
            samba.url(),
            samba.bind_dn()
        ),
        samba.password(),
    );
    let (t_ls, n, t_full) = full_vs_ldapsearch(dir.path(), || {
        ldapsearch(
            &samba.url(),
            samba.bind_dn(),
            samba.password(),
            "DC=test,DC=lan",
        )
    });
    let mut ldif = String::new();
    for j in 0..changes {
        ldif.push_str(&format!(
            "dn: CN=user{j},{OU}\nchangetype: modify\nreplace: title\ntitle: Boss {j}\n\n"
        ));
    }
    samba.ldapmodify(&ldif).await;
    report("ad(samba)", n, t_ls, t_full, changes, delta(dir.path()));
}

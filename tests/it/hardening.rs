//! Issue 18 point 6 and issue 17 point 4 (colour): instance names, file modes, secrets in
//! error lines and terminal escapes, through the CLI binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::{bin, dirsync, Run};

fn sqlite_dir(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!("[store]\nurl = \"sqlite://log.db\"\n{extra}"),
    )
    .unwrap();
    dir
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn bad_instance_names_exit_2_and_write_nothing() {
    let dir = sqlite_dir("");
    let long = "a".repeat(65);
    for name in ["", "a/b", "a b", "é", "x\u{1b}[31m", long.as_str()] {
        for args in [
            vec!["sync", "--instance", name],
            vec!["run", "--instance", name],
            vec!["preflight", "--instance", name],
            vec!["instance", "stop", name],
        ] {
            let run = dirsync(dir.path(), &args);
            assert_eq!(run.code, 2, "{args:?}: {run:?}");
            assert!(
                run.stderr.lines().next().unwrap_or("").contains("instance"),
                "{run:?}"
            );
        }
    }
    assert!(!dir.path().join("log.db").exists());
    // A name that fits: letters, digits, `.-_`, 64 characters.
    let ok = format!("web-01.example_{}", "x".repeat(64 - 15));
    assert_eq!(ok.len(), 64);
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    let run = dirsync(dir.path(), &["instance", "stop", &ok]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn host_name_rule() {
    assert!(dirsync::cli::check_instance("web-01.example.org").is_ok());
    assert!(dirsync::cli::check_instance("").is_err());
    assert!(dirsync::cli::check_instance(&"h".repeat(64)).is_ok());
    assert!(dirsync::cli::check_instance(&"h".repeat(65)).is_err());
}

#[test]
fn store_files_and_exports_are_created_0600() {
    let dir = sqlite_dir("");
    let run = dirsync(dir.path(), &["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = dirsync(dir.path(), &["instance", "stop", "a"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = dirsync(dir.path(), &["log", "export", "--output", "out.jsonl"]);
    assert_eq!(run.code, 0, "{run:?}");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() == "dirsync.toml" {
            continue;
        }
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert!(dir.path().join("out.jsonl").exists());
}

#[test]
fn a_secret_typed_into_an_env_key_is_not_echoed() {
    let dir = sqlite_dir(
        "[source]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=a\"\n\
         base_dn = \"dc=x\"\npassword_env = \"Hunter2!secret\"\n",
    );
    for args in [&["init"][..], &["sync", "--instance", "a"]] {
        let run = dirsync(dir.path(), args);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(!run.stderr.contains("Hunter2"), "{run:?}");
        assert!(run.stderr.contains("password_env"), "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    }
    assert!(!dir.path().join("log.db").exists());
}

#[test]
fn no_colour_codes_when_stderr_is_not_a_terminal() {
    // A source nobody answers on: the failed read is logged (a warning) before the retry.
    let dir = sqlite_dir(
        "[source]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=a\"\n\
         base_dn = \"dc=x\"\npassword_file = \"pw\"\n",
    );
    std::fs::write(dir.path().join("pw"), "x\n").unwrap();
    assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
    let out = Command::new(bin())
        .args(["sync", "--instance", "a", "--staging"])
        .current_dir(dir.path())
        .env_remove("DIRSYNC_CONFIG")
        .env("DIRSYNC_LOG", "debug")
        .output()
        .unwrap();
    let run: Run = out.into();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.is_empty(), "expected log lines: {run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "{run:?}");
}

/// Issue 17.4: a wrong password and a wrong base DN against a real slapd are one line with
/// a hint, and are not retried: a retry logs "retrying" at the default level (warn) first,
/// so one line on stderr is the proof (not the time taken, which load decides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_refusals_say_what_to_do_and_are_not_retried() {
    let slapd = crate::lab::Slapd::start(crate::lab::SlapdOptions::default()).await;
    for (password, base, words) in [
        (
            "wrong",
            slapd.base_dn().to_string(),
            "check bind_dn and the password",
        ),
        (
            slapd.password(),
            format!("ou=nowhere,{}", slapd.base_dn()),
            "naming contexts",
        ),
    ] {
        let dir = sqlite_dir(&format!(
            "[source]\nkind = \"openldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\n\
             password_file = \"pw\"\nbase_dn = \"{base}\"\n",
            slapd.url(),
            slapd.bind_dn()
        ));
        std::fs::write(dir.path().join("pw"), format!("{password}\n")).unwrap();
        assert_eq!(dirsync(dir.path(), &["init"]).code, 0);
        let run = dirsync(dir.path(), &["sync", "--instance", "a", "--staging"]);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(!run.stderr.contains("retrying"), "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert!(run.stderr.contains(words), "{run:?}");
    }
}

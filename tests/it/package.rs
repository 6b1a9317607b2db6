//! `scripts/package`: the Debian package, built once from the binary these tests use (no
//! second build: a release build takes minutes), inspected with `dpkg-deb -c` / `-I` for
//! every file it must hold, unpacked, and its unit checked with `systemd-analyze verify`
//! (and `security --offline`) where that works. Skipped, saying why, where dpkg-deb or
//! dpkg-shlibdeps (dpkg-dev, from scripts/install-deps) are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

use crate::common::{bin, Run};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> Run {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
        .into()
}

fn ok(cmd: &mut Command) -> String {
    let r = run(cmd);
    assert_eq!(r.code, 0, "{cmd:?}: {r:?}");
    r.stdout
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A skip is said on the test's real stderr (not captured), never passed over in silence.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// The man pages `dirsync man` must write: one per command and visible subcommand.
fn man_pages() -> BTreeSet<String> {
    fn walk(c: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
        let name = if prefix.is_empty() {
            c.get_name().to_string()
        } else {
            format!("{prefix}-{}", c.get_name())
        };
        out.insert(format!("usr/share/man/man1/{name}.1.gz"));
        for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            if s.get_name() != "help" {
                walk(s, &name, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&dirsync::cli::Cli::command(), "", &mut out);
    out
}

/// `dpkg-deb -c`: path -> (mode string, owner) of every regular file.
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[5].trim_start_matches("./").to_string(),
                (f[0].to_string(), f[1].to_string()),
            )
        })
        .collect()
}

/// `key=value` lines of a unit, in order (a key may repeat).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_debian_package_holds_the_binary_unit_man_pages_completions_and_example() {
    for tool in ["dpkg-deb", "dpkg-shlibdeps"] {
        if !have(tool) {
            skip(&format!(
                "package: {tool} is not installed (dpkg-dev; scripts/install-deps installs it)"
            ));
            return;
        }
    }
    let out = tempfile::tempdir().unwrap();
    let built = ok(Command::new(Path::new(ROOT).join("scripts/package"))
        .args(["--binary", bin(), "--compress", "gzip", "--out"])
        .arg(out.path()));
    let arch = ok(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_string();
    let version = env!("CARGO_PKG_VERSION");
    let deb = out.path().join(format!("dirsync_{version}_{arch}.deb"));
    assert_eq!(built, format!("{}\n", deb.display()));

    // Every file, its mode and owner.
    let mut want: BTreeMap<String, (String, String)> = [
        ("usr/bin/dirsync", "-rwxr-xr-x"),
        ("lib/systemd/system/dirsync@.service", "-rw-r--r--"),
        ("etc/dirsync/dirsync.toml.example", "-rw-r--r--"),
        (
            "usr/share/bash-completion/completions/dirsync",
            "-rw-r--r--",
        ),
        ("usr/share/zsh/vendor-completions/_dirsync", "-rw-r--r--"),
        (
            "usr/share/fish/vendor_completions.d/dirsync.fish",
            "-rw-r--r--",
        ),
        ("usr/share/doc/dirsync/copyright", "-rw-r--r--"),
        ("usr/share/doc/dirsync/README.md", "-rw-r--r--"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), (m.to_string(), "root/root".to_string())))
    .collect();
    let man = man_pages();
    assert!(
        man.contains("usr/share/man/man1/dirsync-playbook-show.1.gz")
            && man.contains("usr/share/man/man1/dirsync-run.1.gz")
            && !man.iter().any(|m| m.contains("completions")),
        "{man:?}"
    );
    for m in &man {
        want.insert(m.clone(), ("-rw-r--r--".into(), "root/root".into()));
    }
    assert_eq!(contents(&deb), want);

    // The control file and the maintainer scripts.
    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{k}: ")))
            .unwrap_or_else(|| panic!("no {k}: {info}"))
            .to_string()
    };
    assert_eq!(
        (field("Package"), field("Version"), field("Architecture")),
        ("dirsync".to_string(), version.to_string(), arch.clone())
    );
    let depends: Vec<String> = field("Depends")
        .split(", ")
        .map(|d| d.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(depends[0], "adduser", "{info}");
    assert!(depends.contains(&"libc6".to_string()), "{info}");
    for member in [
        "control",
        "conffiles",
        "md5sums",
        "postinst",
        "prerm",
        "postrm",
    ] {
        assert!(
            info.lines()
                .any(|l| l.contains(" bytes, ") && l.split_whitespace().any(|w| w == member)),
            "no {member}: {info}"
        );
    }
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles, "/etc/dirsync/dirsync.toml.example\n");
    for script in ["postinst", "prerm", "postrm"] {
        let text = ok(Command::new("dpkg-deb").arg("-I").arg(&deb).arg(script));
        assert_eq!(
            text,
            std::fs::read_to_string(Path::new(ROOT).join("packaging").join(script)).unwrap()
        );
        // Parsed by the shell dpkg runs them with.
        let r = run(Command::new("sh").args(["-n", "-c", &text]));
        assert_eq!(r.code, 0, "{script}: {r:?}");
    }
    let postinst = ok(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"));
    assert!(
        postinst.contains("adduser --system --group --home /var/lib/dirsync"),
        "{postinst}"
    );

    // Unpacked: the files are the ones in the tree, and they work.
    let root = out.path().join("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let unit = read("lib/systemd/system/dirsync@.service");
    assert_eq!(
        unit,
        std::fs::read_to_string(Path::new(ROOT).join("packaging/dirsync@.service")).unwrap()
    );
    let d = directives(&unit);
    for (k, v) in [
        (
            "ExecStart",
            "/usr/bin/dirsync --config /etc/dirsync/%i.toml run --instance %i",
        ),
        ("EnvironmentFile", "-/etc/dirsync/%i.env"),
        ("User", "dirsync"),
        ("StateDirectory", "dirsync"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("UMask", "0077"),
    ] {
        assert!(
            d.contains(&(k.to_string(), v.to_string())),
            "{k}={v} missing from the unit"
        );
    }
    let example = root.join("etc/dirsync/dirsync.toml.example");
    assert_eq!(
        std::fs::read_to_string(&example).unwrap(),
        std::fs::read_to_string(Path::new(ROOT).join("packaging/dirsync.toml.example")).unwrap()
    );
    let cfg = dirsync::config::Config::load(&example).unwrap();
    assert_eq!(cfg.store.url, "sqlite:///var/lib/dirsync/dirsync.db");
    assert!(cfg.source.is_some() && cfg.target.is_some());

    let packaged = root.join("usr/bin/dirsync");
    assert_eq!(
        ok(Command::new(&packaged).arg("--version")),
        format!("dirsync {version}\n")
    );
    let list = ok(Command::new(&packaged).args(["playbook", "list", "--format", "json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["playbooks"].as_array().unwrap().len(), 4, "{list}");

    let page = ok(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/dirsync.1.gz")));
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
    assert!(page.contains(".TH dirsync 1"), "{page}");
    assert!(page.contains("dirsync\\-playbook(1)"), "{page}");
    let page = ok(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/dirsync-handover.1.gz")));
    assert!(page.contains("NAME|FILE"), "{page}");
    let bash = read("usr/share/bash-completion/completions/dirsync");
    assert!(
        bash.contains("_dirsync()") && bash.contains("playbook"),
        "bash"
    );
    let r = run(Command::new("bash").args(["-n", "-c", &bash]));
    assert_eq!(r.code, 0, "the bash completion does not parse: {r:?}");
    assert!(read("usr/share/zsh/vendor-completions/_dirsync").starts_with("#compdef dirsync"));
    assert!(
        read("usr/share/fish/vendor_completions.d/dirsync.fish").contains("complete -c dirsync")
    );

    verify_unit(&unit, &packaged, out.path());
}

/// `systemd-analyze verify` of the unit (as instance `test`, its ExecStart pointed at the
/// unpacked binary: nothing is installed), then `security --offline`. Where the tool does
/// not work here (a container without systemd's units, an old systemd), it says so first on
/// a unit known to be good, and the check is skipped with that reason.
fn verify_unit(unit: &str, packaged: &Path, dir: &Path) {
    if !have("systemd-analyze") {
        skip("package: systemd-analyze is not installed: the unit is not verified");
        return;
    }
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let verify = |p: &Path| {
        run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(p))
    };
    let good = write(
        "probe@test.service",
        "[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n",
    );
    let probe = verify(&good);
    if probe.code != 0 || !probe.stderr.is_empty() || !probe.stdout.is_empty() {
        skip(&format!(
            "package: systemd-analyze verify does not work here (on a known-good unit: {probe:?})"
        ));
        return;
    }
    let text = unit.replace("/usr/bin/dirsync", &packaged.display().to_string());
    let ours = write("dirsync@test.service", &text);
    let r = verify(&ours);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "systemd-analyze verify: {r:?}"
    );
    // A broken unit is caught: the check can fail.
    let broken = write(
        "broken@test.service",
        &text.replace("ProtectSystem=strict", "ProtectSystem=stric"),
    );
    let r = verify(&broken);
    assert!(
        r.stderr.contains("protect system value, ignoring: stric"),
        "{r:?}"
    );

    let security = |p: &Path| {
        run(Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--man=no", "--threshold=20"])
            .arg(p))
    };
    let probe = security(&good);
    if probe.stderr.contains("offline") || probe.stderr.contains("unrecognized") {
        skip(&format!(
            "package: systemd-analyze security --offline is not supported here: {probe:?}"
        ));
        return;
    }
    // Exposure at most 2.0 of 10 ("OK"); the probe unit, unhardened, is far above it.
    assert_ne!(probe.code, 0, "{probe:?}");
    let r = security(&ours);
    assert_eq!(r.code, 0, "systemd-analyze security: {r:?}");
}

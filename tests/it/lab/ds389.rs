//! A per-test 389 Directory Server (RFC 4533 through its Content Sync plugin).
//!
//! First cut: each fixture runs `dscreate from-file` (~15 s measured) with a copy of
//! defaults.inf saying `with_systemd = 0` under its own PREFIX, starts `ns-slapd` (it
//! daemonises: the pid file is ours), enables the retro changelog (nsuniqueid:targetUniqueId,
//! entryuuid:targetEntryUUID) and Content Sync, optionally `--allow-openldap on`, and restarts.
//! Drop kills the server and runs `dsctl NAME remove --do-it`. Not yet done: a template copied
//! per test, and killing the server when the test process itself is killed.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::proc;

pub const BASE_DN: &str = "dc=example,dc=com";
pub const BIND_DN: &str = "cn=Directory Manager";
pub const PASSWORD: &str = "Passw0rd123";

/// Options of [`Ds389::start`].
#[derive(Clone, Debug, Default)]
pub struct Ds389Options {
    /// `dsconf NAME plugin contentsync set --allow-openldap on`.
    pub allow_openldap: bool,
}

pub struct Ds389 {
    name: String,
    port: u16,
    _dir: TempDir,
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("lab: 389: {what}: {e} ({})", proc::INSTALL_HINT));
    assert!(
        out.status.success(),
        "lab: 389: {what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ds389 {
    pub async fn start(opts: Ds389Options) -> Ds389 {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lab{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = proc::instance_dir("ds389");
        let port = proc::free_port();
        let inf_dir = dir.path().join("share/dirsrv/inf");
        fs::create_dir_all(&inf_dir).expect("lab: 389: mkdir");
        let defaults = fs::read_to_string("/usr/share/dirsrv/inf/defaults.inf")
            .unwrap_or_else(|e| panic!("lab: 389: defaults.inf: {e} ({})", proc::INSTALL_HINT));
        fs::write(
            inf_dir.join("defaults.inf"),
            defaults.replace("with_systemd = 1", "with_systemd = 0"),
        )
        .expect("lab: 389: write defaults.inf");
        let inf = dir.path().join("instance.inf");
        fs::write(
            &inf,
            format!(
                "[general]\nfull_machine_name = localhost\nstart = False\nstrict_host_checking = False\n\
                 [slapd]\ninstance_name = {name}\nport = {port}\nsecure_port = {}\n\
                 root_dn = {BIND_DN}\nroot_password = {PASSWORD}\nself_sign_cert = False\n\
                 [backend-userroot]\nsample_entries = no\nsuffix = {BASE_DN}\ncreate_suffix_entry = True\n",
                proc::free_port()
            ),
        )
        .expect("lab: 389: write inf");
        run(
            Command::new("dscreate")
                .arg("from-file")
                .arg(&inf)
                .env("PREFIX", dir.path()),
            "dscreate",
        );
        let server = Ds389 {
            name,
            port,
            _dir: dir,
        };
        server.launch().await;
        let n = server.name.clone();
        let dsconf = |args: &[&str], what: &str| {
            run(Command::new("dsconf").arg(&n).args(args), what);
        };
        dsconf(
            &["config", "replace", "nsslapd-listenhost=127.0.0.1"],
            "listenhost",
        );
        dsconf(&["plugin", "retro-changelog", "enable"], "retro-changelog");
        dsconf(
            &[
                "plugin",
                "retro-changelog",
                "set",
                "--attribute",
                "nsuniqueid:targetUniqueId",
            ],
            "retro-changelog attribute",
        );
        dsconf(
            &[
                "plugin",
                "retro-changelog",
                "add",
                "--attribute",
                "entryuuid:targetEntryUUID",
            ],
            "retro-changelog attribute",
        );
        dsconf(&["plugin", "contentsync", "enable"], "contentsync");
        if opts.allow_openldap {
            dsconf(
                &["plugin", "contentsync", "set", "--allow-openldap", "on"],
                "allow-openldap",
            );
        }
        server.kill();
        server.launch().await;
        server
    }

    fn pid_file(&self) -> String {
        format!("/run/dirsrv/slapd-{}.pid", self.name)
    }

    async fn launch(&self) {
        for d in ["/run/dirsrv", "/run/lock/dirsrv"] {
            fs::create_dir_all(d).expect("lab: 389: mkdir /run/dirsrv");
            run(Command::new("chown").args(["dirsrv:", d]), "chown");
        }
        run(
            Command::new("/usr/sbin/ns-slapd")
                .arg("-D")
                .arg(format!("/etc/dirsrv/slapd-{}", self.name))
                .arg("-i")
                .arg(self.pid_file()),
            "ns-slapd",
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !proc::ldap_answers(&self.url()).await {
            assert!(Instant::now() < deadline, "lab: 389 not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&self) {
        let Some(pid) = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        // SAFETY: kill(2) on the server this fixture started (its pid file).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub async fn ldapadd(&self, ldif: &str) {
        proc::ldap_tool("ldapadd", &self.url(), BIND_DN, PASSWORD, &[], Some(ldif)).await;
    }

    pub async fn ldapdelete(&self, dn: &str) {
        proc::ldap_tool("ldapdelete", &self.url(), BIND_DN, PASSWORD, &[dn], None).await;
    }

    pub async fn ldapsearch(&self, args: &[&str]) -> String {
        proc::ldap_tool("ldapsearch", &self.url(), BIND_DN, PASSWORD, args, None).await
    }

    /// `dsconf NAME ARGS...` (LDAPI, as root).
    pub fn dsconf(&self, args: &[&str]) {
        run(
            Command::new("dsconf").arg(&self.name).args(args),
            &format!("dsconf {args:?}"),
        );
    }

    /// Stop and start again (plugin changes take effect).
    pub async fn restart(&self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for Ds389 {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new("dsctl")
            .args([self.name.as_str(), "remove", "--do-it"])
            .output();
    }
}

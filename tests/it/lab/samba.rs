//! A per-test Samba Active Directory domain controller (the real AD source).
//!
//! Measured on the 2-core lab machine: the template (provision ~6 s + one start
//! that makes the TLS keys) is built once per machine in ~13 s and reused by
//! later test processes (`lab_root()/samba-template`); `Samba::start` from the
//! template (copy 33 MB, start, rootDSE answers) 0.4-1.5 s, typically ~0.8 s;
//! `stop` ~0.02 s; `start_again` 0.3-1.2 s; `expunge_tombstones` (stop,
//! samba-tool, start) ~1.2 s.
//!
//! Realm `TEST.LAN`, base `DC=test,DC=lan`, bind `Administrator@test.lan` /
//! `Passw0rd!`. Each running instance listens on its own loopback address
//! 127.0.0.2..=127.0.0.254 (the AD ports are fixed); an address is taken with an
//! flock on `lab_root()/samba-addr-127.0.0.X.lock`, held while the instance lives,
//! so concurrent test processes never share one. samba runs as
//! `samba -i -M single -s DIR/etc/smb.conf` with stdin a pipe this process holds:
//! it exits at EOF, so it dies with the test process.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::proc::{self, FileLock};

const REALM: &str = "TEST.LAN";
const DOMAIN: &str = "TEST";
const BASE_DN: &str = "DC=test,DC=lan";
const USERS_DN: &str = "CN=Users,DC=test,DC=lan";
const BIND_DN: &str = "Administrator@test.lan";
const PASSWORD: &str = "Passw0rd!";
/// Bump when the template's recipe changes.
const TEMPLATE_RECIPE: &str = "dirsync-lab samba template v1";
/// Dirs of an instance that are not in the template (runtime state).
const RUNTIME_DIRS: &[&str] = &["lock", "pid", "cache", "ncalrpc", "log"];

/// A running (or stopped) Samba AD DC. Dropping it stops samba and removes its data.
pub struct Samba {
    // Field order is drop order: samba, then the address, then the data.
    process: Option<SambaProcess>,
    addr: Ipv4Addr,
    _addr_lock: FileLock,
    dir: TempDir,
}

impl Samba {
    /// Copies the machine's template into a fresh dir and starts samba on a free
    /// loopback address.
    pub async fn start() -> Samba {
        let dir = proc::instance_dir("samba");
        copy_template(dir.path()).await;
        for _attempt in 0..5 {
            let (addr, lock) = allocate_address();
            write_smb_conf(dir.path(), addr);
            if let Some(process) = launch(dir.path(), addr).await {
                return Samba {
                    process: Some(process),
                    addr,
                    _addr_lock: lock,
                    dir,
                };
            }
        }
        panic!(
            "lab: samba failed to start 5 times:\n{}",
            proc::log_tail(&dir.path().join("samba.log"), 30)
        );
    }

    /// `ldap://127.0.0.X`
    pub fn url(&self) -> String {
        format!("ldap://{}", self.addr)
    }

    /// `ldaps://127.0.0.X` (self-signed certificate: skip verification).
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}", self.addr)
    }

    /// The loopback address this instance listens on.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `DC=test,DC=lan`
    pub fn base_dn(&self) -> &'static str {
        BASE_DN
    }

    /// `CN=Users,DC=test,DC=lan`
    pub fn users_dn(&self) -> &'static str {
        USERS_DN
    }

    /// `Administrator@test.lan`
    pub fn bind_dn(&self) -> &'static str {
        BIND_DN
    }

    /// `Passw0rd!`
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// The instance dir (etc/smb.conf, private/sam.ldb, samba.log, ...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Pid of samba while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// `ldapadd` as Administrator; panics on failure.
    pub async fn ldapadd(&self, ldif: &str) {
        self.tool("ldapadd", &[], Some(ldif)).await;
    }

    /// `ldapmodify` as Administrator; panics on failure.
    pub async fn ldapmodify(&self, ldif: &str) {
        self.tool("ldapmodify", &[], Some(ldif)).await;
    }

    /// `ldapdelete DN` as Administrator; panics on failure.
    pub async fn ldapdelete(&self, dn: &str) {
        self.tool("ldapdelete", &[dn], None).await;
    }

    /// `ldapmodrdn -r DN NEWRDN` (old RDN removed, as AD requires), optionally
    /// moving the entry under `new_superior`.
    pub async fn ldapmodrdn(&self, dn: &str, new_rdn: &str, new_superior: Option<&str>) {
        let mut args = vec!["-r"];
        if let Some(sup) = new_superior {
            args.extend(["-s", sup]);
        }
        args.extend([dn, new_rdn]);
        self.tool("ldapmodrdn", &args, None).await;
    }

    /// `ldapsearch` as Administrator with the given extra arguments.
    pub async fn ldapsearch(&self, args: &[&str]) -> String {
        self.tool("ldapsearch", args, None).await
    }

    async fn tool(&self, tool: &str, args: &[&str], input: Option<&str>) -> String {
        assert!(
            self.is_running(),
            "lab: samba: {tool} while samba is stopped"
        );
        proc::ldap_tool(tool, &self.url(), BIND_DN, PASSWORD, args, input).await
    }

    /// Stops samba, keeping its data and its address. No-op if stopped.
    pub async fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop().await;
        }
    }

    /// Starts samba again (same address, same data) after [`Samba::stop`];
    /// restarts it if it is running.
    pub async fn start_again(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(p) = launch(self.dir.path(), self.addr).await {
                self.process = Some(p);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lab: samba could not start again on {}:\n{}",
                self.addr,
                proc::log_tail(&self.dir.path().join("samba.log"), 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes every tombstone, as if the tombstone lifetime had passed:
    /// `samba-tool domain tombstones expunge --tombstone-lifetime=0
    /// --current-time=<today + 2 days>` on the local sam.ldb (over ldap:// it
    /// segfaults). Stops samba for it, and starts it again if it was running.
    /// "+2 days" rather than "tomorrow" so no time zone can make a fresh
    /// tombstone look younger than the lifetime.
    pub async fn expunge_tombstones(&mut self) {
        let was_running = self.is_running();
        self.stop().await;
        let when = (chrono::Utc::now() + chrono::Duration::days(2))
            .format("%Y-%m-%d")
            .to_string();
        let dir = self.dir.path();
        let out = samba_tool()
            .args(["domain", "tombstones", "expunge", "-s"])
            .arg(dir.join("etc/smb.conf"))
            .arg("-H")
            .arg(dir.join("private/sam.ldb"))
            .arg("--tombstone-lifetime=0")
            .arg(format!("--current-time={when}"))
            .output()
            .await
            .unwrap_or_else(|e| panic!("lab: cannot run samba-tool: {e}"));
        assert!(
            out.status.success(),
            "lab: samba-tool domain tombstones expunge failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if was_running {
            self.start_again().await;
        }
    }
}

/// The samba process: stdin is a pipe we hold, samba exits at its EOF.
struct SambaProcess {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl SambaProcess {
    fn close_and_signal(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    async fn stop(mut self) {
        self.close_and_signal();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                eprintln!("lab: samba did not stop in 20 s, killing it");
                let _ = self.child.kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // `self` drops here: its Drop reaps the child.
    }
}

impl Drop for SambaProcess {
    fn drop(&mut self) {
        self.close_and_signal();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts samba on an instance dir; `None` if it exited before answering.
async fn launch(dir: &Path, addr: Ipv4Addr) -> Option<SambaProcess> {
    let samba = proc::find_bin("samba", &["/usr/sbin"]);
    let log_path = dir.join("samba.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("lab: samba: open samba.log");
    let mut child = Command::new(&samba)
        .args(["-i", "-M", "single", "-s"])
        .arg(dir.join("etc/smb.conf"))
        .envs(system_python_env())
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("lab: samba: dup log fd"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("lab: cannot spawn {}: {e}", samba.display()));
    let stdin = child.stdin.take();
    let mut process = SambaProcess { child, stdin };
    let url = format!("ldap://{addr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if proc::ldap_answers(&url).await {
            return Some(process);
        }
        if !matches!(process.child.try_wait(), Ok(None)) {
            eprintln!(
                "lab: samba exited before answering on {addr}:\n{}",
                proc::log_tail(&log_path, 20)
            );
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "lab: samba not ready on {addr} in 60 s:\n{}",
            proc::log_tail(&log_path, 30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback address 127.0.0.2..=127.0.0.254, locked for this instance.
fn allocate_address() -> (Ipv4Addr, FileLock) {
    for last in 2..=254u8 {
        let addr = Ipv4Addr::new(127, 0, 0, last);
        let lock_path = proc::lab_root().join(format!("samba-addr-{addr}.lock"));
        let Some(lock) = FileLock::try_acquire(&lock_path) else {
            continue;
        };
        // Something not ours (a leaked samba?) may still listen there.
        if [389u16, 636, 3268, 3269]
            .iter()
            .all(|&port| TcpListener::bind((addr, port)).is_ok())
        {
            return (addr, lock);
        }
    }
    panic!("lab: no free loopback address 127.0.0.2..=254 for samba");
}

/// PATH with the system dirs first, so samba's python helpers get
/// /usr/bin/python3 (its modules load with no other python).
fn system_python_env() -> Vec<(&'static str, String)> {
    let path = std::env::var("PATH").unwrap_or_default();
    vec![("PATH", format!("/usr/sbin:/usr/bin:/sbin:/bin:{path}"))]
}

/// `samba-tool` run by /usr/bin/python3 with a clean python environment.
fn samba_tool() -> tokio::process::Command {
    let tool = proc::find_bin("samba-tool", &["/usr/bin"]);
    let python = Path::new("/usr/bin/python3");
    let mut cmd = if python.exists() {
        let mut c = tokio::process::Command::new(python);
        c.arg(&tool);
        c
    } else {
        tokio::process::Command::new(&tool)
    };
    cmd.envs(system_python_env())
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null());
    cmd
}

fn write_smb_conf(dir: &Path, addr: Ipv4Addr) {
    for d in RUNTIME_DIRS {
        fs::create_dir_all(dir.join(d)).expect("lab: samba: mkdir");
    }
    let d = dir.display();
    let conf = format!(
        "[global]
\tnetbios name = DC1
\trealm = {REALM}
\tworkgroup = {DOMAIN}
\tserver role = active directory domain controller
\tserver services = ldap
\tinterfaces = {addr}/8
\tbind interfaces only = yes
\tldap server require strong auth = no
\tldb:nosync = true
\tprivate dir = {d}/private
\tlock directory = {d}/lock
\tstate directory = {d}/state
\tcache directory = {d}/cache
\tpid directory = {d}/pid
\tncalrpc dir = {d}/ncalrpc
\tbinddns dir = {d}/bind-dns
\tlog file = {d}/log/log.%m
"
    );
    fs::create_dir_all(dir.join("etc")).expect("lab: samba: mkdir etc");
    fs::write(dir.join("etc/smb.conf"), conf).expect("lab: samba: write smb.conf");
}

/// `cp -a SRC/. DST` (keeps the ACLs and modes samba set).
fn copy_tree(src: &Path, dst: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(src.join("."))
        .arg(dst)
        .output()
        .expect("lab: cannot run cp");
    assert!(
        out.status.success(),
        "lab: cp -a {} {} failed: {}",
        src.display(),
        dst.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn samba_version() -> String {
    let samba = proc::find_bin("samba", &["/usr/sbin"]);
    let out = Command::new(&samba)
        .arg("-V")
        .output()
        .unwrap_or_else(|e| panic!("lab: cannot run {}: {e}", samba.display()));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Copies the provisioned template into `dst`, building the template first if
/// this machine has none yet (or one of another samba version or recipe).
/// Readers hold a shared flock, the builder an exclusive one.
async fn copy_template(dst: &Path) {
    let root = proc::lab_root();
    let template = root.join("samba-template");
    let lock_path = root.join("samba-template.lock");
    let marker = template.join(".dirsync-lab-template");
    let want = format!("{TEMPLATE_RECIPE}\n{}\n", samba_version());
    {
        let _shared = FileLock::acquire_shared(&lock_path);
        if fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
            copy_tree(&template, dst);
            return;
        }
    }
    let _exclusive = FileLock::acquire(&lock_path);
    if fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        build_template(&template, &want).await;
    }
    copy_tree(&template, dst);
}

async fn build_template(template: &Path, marker_text: &str) {
    let building = proc::lab_root().join("samba-template.building");
    let _ = fs::remove_dir_all(&building);
    let t0 = Instant::now();
    let out = samba_tool()
        .args(["domain", "provision"])
        .arg(format!("--targetdir={}", building.display()))
        .arg(format!("--realm={REALM}"))
        .arg(format!("--domain={DOMAIN}"))
        .arg(format!("--adminpass={PASSWORD}"))
        .args(["--server-role=dc", "--dns-backend=NONE", "--host-name=dc1"])
        // Not fsyncing makes provisioning ~40% faster.
        .arg("--option=ldb:nosync = true")
        .output()
        .await
        .unwrap_or_else(|e| panic!("lab: cannot run samba-tool: {e}"));
    assert!(
        out.status.success(),
        "lab: samba-tool domain provision failed ({}): {}\n{}{}",
        out.status,
        proc::INSTALL_HINT,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Start it once so that samba makes its TLS keys (~2 s) here, not in every test.
    {
        let (addr, _addr_lock) = allocate_address();
        write_smb_conf(&building, addr);
        let process = launch(&building, addr)
            .await
            .unwrap_or_else(|| panic!("lab: the samba template did not start"));
        process.stop().await;
    }
    for d in RUNTIME_DIRS {
        let _ = fs::remove_dir_all(building.join(d));
    }
    let _ = fs::remove_file(building.join("samba.log"));
    fs::write(building.join(".dirsync-lab-template"), marker_text)
        .expect("lab: samba: write marker");
    let _ = fs::remove_dir_all(template);
    fs::rename(&building, template).expect("lab: samba: rename template");
    eprintln!(
        "lab: built the samba template in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

//! A per-test OpenLDAP slapd (the RFC 4533 source), with its own slapd.conf,
//! mdb database and port.
//!
//! Measured on the 2-core lab machine: `Slapd::start` (config, start, base
//! entries via ldapadd) ~0.1 s, with or without the session log; `stop`
//! ~0.02 s; `restart` ~0.05 s.
//!
//! Suffix `dc=example,dc=org` with `ou=people` and `ou=groups`; rootdn
//! `cn=admin,dc=example,dc=org` / `secret`; schemas core, cosine, inetorgperson,
//! nis; `syncprov` on the main db. With [`SlapdOptions::session_log`], the
//! `accesslog` overlay logs writes to a second mdb db `cn=accesslog` and syncprov
//! uses it as its session log (`syncprov-sessionlog-source cn=accesslog`), so a
//! refreshOnly search with a cookie reports deletions as a syncIdSet with
//! refreshDeletes=TRUE; without it the server sends the present UUIDs instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::proc::{self, ServerProcess, SpawnOpts};

/// Options of [`Slapd::start`].
#[derive(Clone, Debug, Default)]
pub struct SlapdOptions {
    /// Add the accesslog db and use it as syncprov's session log.
    pub session_log: bool,
    /// Serve StartTLS with a certificate for 127.0.0.1 from a throwaway CA
    /// ([`Slapd::ca_file`]).
    pub tls: bool,
    /// Limit the paged-results page size of authenticated users other than the rootdn
    /// (`size.pr`), as a server's administrator may.
    pub page_limit: Option<u32>,
    /// Leave the syncprov module and overlay out: no RFC 4533 control in the rootDSE.
    pub no_syncprov: bool,
    /// `access` directives for the main database (without them everyone reads all).
    pub acl: Option<String>,
    /// mdb `maxsize` of the main database in bytes (default 1 GiB; large bulk loads need more).
    pub map_size: Option<u64>,
}

const BASE_DN: &str = "dc=example,dc=org";
const BIND_DN: &str = "cn=admin,dc=example,dc=org";
const PASSWORD: &str = "secret";
const PEOPLE_DN: &str = "ou=people,dc=example,dc=org";
const GROUPS_DN: &str = "ou=groups,dc=example,dc=org";

const BASE_LDIF: &str = "\
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups
";

/// A running (or stopped) slapd. Dropping it kills the server and removes its data.
pub struct Slapd {
    // Declared before `dir`: the server must be gone before its dir is removed.
    process: Option<ServerProcess>,
    port: u16,
    opts: SlapdOptions,
    slapd: PathBuf,
    dir: TempDir,
}

impl Slapd {
    /// Starts a fresh server on a free port, with the base entries added.
    pub async fn start(opts: SlapdOptions) -> Slapd {
        let slapd = proc::find_bin("slapd", &["/usr/sbin"]);
        proc::find_bin("ldapadd", &["/usr/bin"]);
        let dir = proc::instance_dir("slapd");
        fs::create_dir(dir.path().join("db")).expect("lab: slapd: mkdir db");
        fs::create_dir(dir.path().join("accesslog")).expect("lab: slapd: mkdir accesslog");
        if opts.tls {
            make_certificates(dir.path());
        }
        fs::write(dir.path().join("slapd.conf"), config(dir.path(), &opts))
            .expect("lab: slapd: write slapd.conf");
        let mut server = Slapd {
            process: None,
            port: 0,
            opts,
            slapd,
            dir,
        };
        for _attempt in 0..5 {
            server.port = proc::free_port();
            if server.launch().await {
                server.ldapadd(BASE_LDIF).await;
                return server;
            }
        }
        panic!(
            "lab: slapd failed to start 5 times:\n{}",
            proc::log_tail(&server.log(), 30)
        );
    }

    /// `ldap://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate (with `tls`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `dc=example,dc=org`
    pub fn base_dn(&self) -> &'static str {
        BASE_DN
    }

    /// `ou=people,dc=example,dc=org`
    pub fn people_dn(&self) -> &'static str {
        PEOPLE_DN
    }

    /// `ou=groups,dc=example,dc=org`
    pub fn groups_dn(&self) -> &'static str {
        GROUPS_DN
    }

    /// `cn=admin,dc=example,dc=org` (the rootdn).
    pub fn bind_dn(&self) -> &'static str {
        BIND_DN
    }

    /// `secret`
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    pub fn options(&self) -> &SlapdOptions {
        &self.opts
    }

    /// The instance dir (slapd.conf, db/, accesslog/, slapd.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Pid of slapd while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// `ldapadd` as the rootdn; panics on failure.
    pub async fn ldapadd(&self, ldif: &str) {
        self.tool("ldapadd", &[], Some(ldif)).await;
    }

    /// `ldapmodify` as the rootdn; panics on failure.
    pub async fn ldapmodify(&self, ldif: &str) {
        self.tool("ldapmodify", &[], Some(ldif)).await;
    }

    /// `ldapdelete DN` as the rootdn; panics on failure.
    pub async fn ldapdelete(&self, dn: &str) {
        self.tool("ldapdelete", &[dn], None).await;
    }

    /// `ldapmodrdn -r DN NEWRDN` (old RDN value removed), optionally `-s NEWSUPERIOR`.
    pub async fn ldapmodrdn(&self, dn: &str, new_rdn: &str, new_superior: Option<&str>) {
        let mut args = vec!["-r"];
        if let Some(sup) = new_superior {
            args.extend(["-s", sup]);
        }
        args.extend([dn, new_rdn]);
        self.tool("ldapmodrdn", &args, None).await;
    }

    /// `ldapsearch` as the rootdn with the given extra arguments; returns its output.
    pub async fn ldapsearch(&self, args: &[&str]) -> String {
        self.tool("ldapsearch", args, None).await
    }

    async fn tool(&self, tool: &str, args: &[&str], input: Option<&str>) -> String {
        assert!(
            self.is_running(),
            "lab: slapd: {tool} while the server is stopped"
        );
        proc::ldap_tool(tool, &self.url(), BIND_DN, PASSWORD, args, input).await
    }

    /// Stops the server, keeping its data. No-op if stopped.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Stops the server if running, then starts it again on the same port with the
    /// same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The port may be briefly taken by someone else: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.launch().await {
            assert!(
                Instant::now() < deadline,
                "lab: slapd could not restart on port {}:\n{}",
                self.port,
                proc::log_tail(&self.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Bulk-loads LDIF with `slapadd -q -w` (fast: no overlays, no accesslog
    /// entries). The server must be stopped; call `restart` afterwards.
    pub async fn slapadd(&self, ldif: &str) {
        assert!(
            !self.is_running(),
            "lab: slapd: slapadd needs the server stopped"
        );
        let file = self.dir.path().join("slapadd.ldif");
        fs::write(&file, ldif).expect("lab: slapd: write slapadd.ldif");
        let slapadd = proc::find_bin("slapadd", &["/usr/sbin"]);
        let out = tokio::process::Command::new(&slapadd)
            .args(["-q", "-w", "-f"])
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-b", BASE_DN, "-l"])
            .arg(&file)
            .output()
            .await
            .unwrap_or_else(|e| panic!("lab: cannot run {}: {e}", slapadd.display()));
        let _ = fs::remove_file(&file);
        assert!(
            out.status.success(),
            "lab: slapadd failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Bulk-loads `users` users `uid=user{j},ou=people` (inetOrgPerson with uid, cn
    /// `User j`, givenName `User`, sn `Nj`, mail `user{j}@example.org`, title `Clerk`) by
    /// [`Slapd::slapadd`]: stops the server, loads, starts it again. The mdb map must hold
    /// them, about 2.5 KB each ([`SlapdOptions::map_size`]). Measured on the 2-core lab
    /// machine: 100,000 users in ~3.5 s.
    pub async fn load_users(&mut self, users: u64) {
        self.stop().await;
        let mut ldif = String::with_capacity(users as usize * 200);
        for j in 0..users {
            ldif.push_str(&format!(
                "dn: uid=user{j},{PEOPLE_DN}\nobjectClass: inetOrgPerson\nuid: user{j}\n\
                 cn: User {j}\ngivenName: User\nsn: N{j}\nmail: user{j}@example.org\n\
                 title: Clerk\n\n"
            ));
        }
        self.slapadd(&ldif).await;
        self.restart().await;
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// Starts slapd on `self.port`; false if it exited before answering
    /// (port taken), panics if it neither answers nor exits in 30 s.
    async fn launch(&mut self) -> bool {
        let mut cmd = Command::new(&self.slapd);
        cmd.args(["-d", "0", "-f"])
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(self.url());
        let log = self.log();
        let mut process = proc::spawn_server(
            "slapd",
            &cmd,
            SpawnOpts {
                log: &log,
                stop_signal: "TERM",
                cleanup_dir: Some(self.dir.path()),
                user: None,
            },
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if proc::ldap_answers(&self.url()).await {
                self.process = Some(process);
                return true;
            }
            if !process.is_alive() {
                process.stop();
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "lab: slapd not ready in 30 s:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A CA and a server certificate for IP 127.0.0.1 signed by it, made with openssl.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("lab: slapd: run openssl");
        assert!(
            out.status.success(),
            "lab: slapd: openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .expect("lab: slapd: write ext.cnf");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dirsync lab CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

fn config(dir: &Path, opts: &SlapdOptions) -> String {
    let dir = dir.display();
    let mut conf = String::new();
    for schema in ["core", "cosine", "inetorgperson", "nis"] {
        conf.push_str(&format!("include /etc/ldap/schema/{schema}.schema\n"));
    }
    conf.push_str("modulepath /usr/lib/ldap\n");
    if Path::new("/usr/lib/ldap/back_mdb.so").exists() {
        conf.push_str("moduleload back_mdb\n");
    }
    if !opts.no_syncprov {
        conf.push_str("moduleload syncprov\n");
    }
    conf.push_str(&format!(
        "moduleload accesslog
pidfile \"{dir}/slapd.pid\"
argsfile \"{dir}/slapd.args\"
sizelimit unlimited
"
    ));
    if opts.tls {
        conf.push_str(&format!(
            "TLSCACertificateFile \"{dir}/ca.pem\"
TLSCertificateFile \"{dir}/server.pem\"
TLSCertificateKeyFile \"{dir}/server.key\"
"
        ));
    }
    if opts.session_log {
        conf.push_str(&format!(
            "
database mdb
suffix \"cn=accesslog\"
rootdn \"{BIND_DN}\"
directory \"{dir}/accesslog\"
maxsize 1073741824
index default eq
index entryCSN,objectClass,reqEnd,reqResult,reqStart,reqDN eq
"
        ));
    }
    conf.push_str(&format!(
        "
database mdb
suffix \"{BASE_DN}\"
rootdn \"{BIND_DN}\"
rootpw {PASSWORD}
directory \"{dir}/db\"
maxsize {map_size}
index objectClass eq
index entryUUID,entryCSN eq
index uid,cn,member,memberUid eq
",
        map_size = opts.map_size.unwrap_or(1 << 30)
    ));
    if !opts.no_syncprov {
        conf.push_str("overlay syncprov\n");
    }

    if let Some(n) = opts.page_limit {
        conf.push_str(&format!(
            "limits users size.soft=unlimited size.hard=unlimited size.pr={n} size.prtotal=unlimited\n"
        ));
    }
    if opts.session_log {
        conf.push_str(
            "syncprov-sessionlog-source cn=accesslog
overlay accesslog
logdb cn=accesslog
logops writes
logsuccess TRUE
logpurge 07+00:00 01+00:00
",
        );
    }
    if let Some(acl) = &opts.acl {
        conf.push_str(acl);
        conf.push('\n');
    }
    conf
}

//! Process plumbing shared by the lab fixtures.
//!
//! * [`find_bin`] locates a server binary or panics with "run scripts/install-deps".
//! * [`lab_root`] is `$TMPDIR/dirsync-lab` (mode 1777). Instance dirs are named
//!   `KIND-PID-STARTTIME-RANDOM`; the first use in a process removes the dirs of
//!   processes that no longer run (a test process killed with SIGKILL leaks its dirs).
//! * [`spawn_server`] runs a server under a tiny `sh` wrapper that starts it in the
//!   background and blocks on `read` from its stdin, a pipe whose write end this
//!   process holds. A line on the pipe ("stop") kills the server and keeps its data;
//!   EOF (the [`ServerProcess`] dropped, or this process gone for any reason, even
//!   SIGKILL) kills the server and removes its instance dir. Nothing depends on the
//!   libtest thread that started the server, unlike PR_SET_PDEATHSIG.

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What every "binary missing" panic tells the reader.
pub const INSTALL_HINT: &str = "run scripts/install-deps";

/// The wrapper: `sh -c SCRIPT sh LOG SIGNAL CLEANUP_DIR PROGRAM ARGS...`.
/// Prints the server's pid, then waits for a line ("stop": keep data) or EOF
/// (remove CLEANUP_DIR once the server is gone). A server that ignores the signal
/// for 20 s gets SIGKILL.
const WRAPPER: &str = r#"log=$1 sig=$2 clean=$3
shift 3
"$@" >>"$log" 2>&1 </dev/null &
pid=$!
echo "$pid"
if read -r _; then clean=; fi
kill -s "$sig" "$pid" 2>/dev/null
( trap 'kill "$s" 2>/dev/null; wait "$s"; exit 0' TERM
  sleep 20 & s=$!
  wait "$s" && kill -s KILL "$pid" 2>/dev/null ) &
killer=$!
wait "$pid"
kill "$killer" 2>/dev/null
wait "$killer"
if [ -n "$clean" ]; then rm -rf -- "$clean"; fi
"#;

/// Finds `name` in `dirs`, then on PATH; panics with [`INSTALL_HINT`] if absent.
pub fn find_bin(name: &str, dirs: &[&str]) -> PathBuf {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = dirs.iter().map(PathBuf::from).chain(path_dirs);
    for dir in candidates {
        let p = dir.join(name);
        if let Ok(meta) = fs::metadata(&p) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!("lab: `{name}` not found (looked in {dirs:?} and PATH): {INSTALL_HINT}");
}

/// `$TMPDIR/dirsync-lab`, created on first use (mode 1777, like /tmp, so that a
/// server running as another user can own and remove its own dir there).
pub fn lab_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("dirsync-lab");
        fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("lab: cannot create {}: {e}", root.display()));
        // Only the owner may chmod; another user's 1777 dir is fine as it is.
        let _ = fs::set_permissions(&root, Permissions::from_mode(0o1777));
        sweep_dead_instances(&root);
        root
    })
}

/// A fresh instance dir `lab_root()/KIND-PID-STARTTIME-XXXXXX`, removed on drop.
pub fn instance_dir(kind: &str) -> tempfile::TempDir {
    assert!(
        !kind.contains('-'),
        "lab: instance kind must not contain '-'"
    );
    tempfile::Builder::new()
        .prefix(&format!("{kind}-{}-", self_tag()))
        .tempdir_in(lab_root())
        .unwrap_or_else(|e| panic!("lab: cannot create an instance dir: {e}"))
}

/// `PID-STARTTIME` of this process: unique across pid reuse.
fn self_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_time(pid).unwrap_or(0))
    })
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); field 22 is the 20th from there.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Removes instance dirs left by processes that are gone.
fn sweep_dead_instances(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let mut parts = name.splitn(4, '-');
        let (Some(_kind), Some(pid), Some(start), Some(_rand)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            continue;
        };
        if start_time(pid) != Some(start) && entry.path().is_dir() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (callers retry if a
/// server then fails to bind it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("lab: cannot bind 127.0.0.1:0")
}

/// uid and gid of a local user, from /etc/passwd.
pub fn user_ids(name: &str) -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("lab: cannot read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == name {
            let uid = f[2].parse().expect("lab: bad uid in /etc/passwd");
            let gid = f[3].parse().expect("lab: bad gid in /etc/passwd");
            return (uid, gid);
        }
    }
    panic!("lab: no user `{name}` in /etc/passwd: {INSTALL_HINT}");
}

/// The last `n` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How [`spawn_server`] runs a server.
pub struct SpawnOpts<'a> {
    /// stdout and stderr of the server are appended here.
    pub log: &'a Path,
    /// Signal name for `kill -s`: TERM, INT, ...
    pub stop_signal: &'a str,
    /// Removed by the wrapper when the pipe reaches EOF (not on `stop`).
    pub cleanup_dir: Option<&'a Path>,
    /// Run wrapper and server as this uid/gid (supplementary groups dropped).
    pub user: Option<(u32, u32)>,
}

/// A server running under the wrapper. Dropping it kills the server, waits for
/// it, and lets the wrapper remove `cleanup_dir`.
pub struct ServerProcess {
    name: String,
    wrapper: Child,
    stdin: Option<ChildStdin>,
    pid: i32,
    log: PathBuf,
}

/// Starts `server` (program, args, env, current dir are taken from it) under
/// the wrapper. Returns at once; the caller checks readiness.
pub fn spawn_server(name: &str, server: &Command, opts: SpawnOpts<'_>) -> ServerProcess {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("sh")
        .arg(opts.log)
        .arg(opts.stop_signal)
        .arg(opts.cleanup_dir.map(OsString::from).unwrap_or_default())
        .arg(server.get_program())
        .args(server.get_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in server.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    if let Some(dir) = server.get_current_dir() {
        cmd.current_dir(dir);
    }
    if let Some((uid, gid)) = opts.user {
        cmd.uid(uid).gid(gid);
    }
    let mut wrapper = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("lab: cannot spawn /bin/sh for {name}: {e}"));
    let stdout = wrapper.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("lab: {name} wrapper: {e}"));
    let pid: i32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("lab: {name} wrapper printed {line:?}, not a pid"));
    ServerProcess {
        name: name.to_owned(),
        stdin: wrapper.stdin.take(),
        wrapper,
        pid,
        log: opts.log.to_owned(),
    }
}

impl ServerProcess {
    /// Pid of the server itself (not of the wrapper).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// False once the server has exited (or was never started properly).
    pub fn is_alive(&mut self) -> bool {
        if !matches!(self.wrapper.try_wait(), Ok(None)) {
            return false;
        }
        // The wrapper reaps the server only after `read` returns, so a server
        // that died on its own is a zombie meanwhile.
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => match stat.rfind(')') {
                Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
                None => false,
            },
            Err(_) => false,
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 30)
    }

    /// Stops the server and keeps its data. Blocks until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        self.wait_exit();
    }

    fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.wrapper.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("lab: {} did not stop in 30 s, killing it", self.name);
                    // SAFETY: plain kill(2) on pids we spawned.
                    unsafe {
                        libc::kill(self.pid, libc::SIGKILL);
                    }
                    let _ = self.wrapper.kill();
                    let _ = self.wrapper.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // EOF: the wrapper kills the server and removes the cleanup dir.
        self.stdin.take();
        self.wait_exit();
    }
}

/// An exclusive `flock` on a file, released on drop (or when the process dies).
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the lock is ours.
    pub fn acquire(path: &Path) -> FileLock {
        let file = open_lock_file(path);
        flock(&file, libc::LOCK_EX)
            .unwrap_or_else(|e| panic!("lab: flock {}: {e}", path.display()));
        FileLock { _file: file }
    }

    /// Blocks until a shared lock is ours (excludes exclusive holders only).
    pub fn acquire_shared(path: &Path) -> FileLock {
        let file = open_lock_file(path);
        flock(&file, libc::LOCK_SH)
            .unwrap_or_else(|e| panic!("lab: flock {}: {e}", path.display()));
        FileLock { _file: file }
    }

    /// Returns `None` if another holder has it.
    pub fn try_acquire(path: &Path) -> Option<FileLock> {
        let file = open_lock_file(path);
        flock(&file, libc::LOCK_EX | libc::LOCK_NB)
            .ok()
            .map(|()| FileLock { _file: file })
    }
}

fn open_lock_file(path: &Path) -> File {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("lab: cannot open lock file {}: {e}", path.display()))
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock(2) on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Runs one of the ldap-utils tools (`ldapadd`, `ldapmodify`, `ldapdelete`,
/// `ldapmodrdn`, `ldapsearch`) with a simple bind; panics with its stderr if it
/// fails. Returns stdout.
pub async fn ldap_tool(
    tool: &str,
    url: &str,
    bind_dn: &str,
    password: &str,
    args: &[&str],
    input: Option<&str>,
) -> String {
    use tokio::io::AsyncWriteExt;
    let bin = find_bin(tool, &["/usr/bin"]);
    let mut child = tokio::process::Command::new(&bin)
        .args(["-x", "-H", url, "-D", bind_dn, "-w", password])
        .args(args)
        // Ignore /etc/ldap/ldap.conf and ~/.ldaprc.
        .env("LDAPNOINIT", "1")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("lab: cannot run {tool}: {e}"));
    // Feed stdin from its own task while the output is drained: writing a large LDIF first
    // would block once the tool's stdout pipe is full.
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_string();
        let tool = tool.to_string();
        tokio::spawn(async move {
            stdin
                .write_all(input.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("lab: {tool}: writing stdin: {e}"));
        })
    });
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("lab: {tool}: {e}"));
    if let Some(w) = writer {
        w.await.expect("stdin writer");
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "lab: {tool} {args:?} against {url} failed ({}):\n{}\n{stdout}\ninput:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            input.unwrap_or("")
        );
    }
    stdout
}

/// True if an anonymous rootDSE search at `url` succeeds (1 s timeouts).
pub async fn ldap_answers(url: &str) -> bool {
    use ldap3::{LdapConnAsync, LdapConnSettings, Scope};
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(1));
    let Ok((conn, mut ldap)) = LdapConnAsync::with_settings(settings, url).await else {
        return false;
    };
    ldap3::drive!(conn);
    let ok = ldap
        .with_timeout(Duration::from_secs(1))
        .search("", Scope::Base, "(objectClass=*)", vec!["namingContexts"])
        .await
        .map(|r| r.success().is_ok())
        .unwrap_or(false);
    let _ = ldap.unbind().await;
    ok
}

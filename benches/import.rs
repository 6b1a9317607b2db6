//! `scripts/bench import`: load users into a real directory (slapd: `slapadd`, offline; Samba
//! AD: ldapadd), then measure, each `--runs` times (median, every run printed):
//! - the baseline: `ldapsearch -E pr=1000/noprompt` with dirsync's filter and attributes,
//!   stdout to /dev/null (entries counted in a separate, untimed run);
//! - a full `sync --staging --full` into a fresh store, its time against the baseline and
//!   dirsync's peak RSS;
//! - a delta of `--changes` modifications; a delta with no change;
//! - `instance list`; `log verify`;
//!
//! with the goals of issue 19. Peak RSS is measured under GNU time (`/usr/bin/time -f %M`):
//! a child forked directly from this process would inherit its high-water mark.
//! Usage: `cargo bench --bench import -- [--ad-users N] [--ldap-users N] [--changes N]
//! [--runs R] [--only ad|openldap] [--store sqlite|postgres|both] [--pg-url postgres://...]
//! [--compare BIN]`. `--compare` alternates another build's full import (SQLite) with this one's.

mod common;
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use common::{arg, load_average, median};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const OU: &str = "OU=Bench,DC=test,DC=lan";
const FILTER: &str = "(|(&(objectClass=user)(objectCategory=person))(objectClass=group))";
const LDAP_FILTER: &str =
    "(|(objectClass=inetOrgPerson)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))";

/// One run of a dirsync command: wall time and its own peak RSS.
struct Run {
    secs: f64,
    rss_mb: f64,
    /// A sync's import counts.
    import: Option<serde_json::Value>,
}

/// `dirsync ARGS` in `dir` under GNU time; panics if it fails.
fn dirsync(dir: &Path, args: &[&str]) -> Run {
    dirsync_bin(Path::new(env!("CARGO_BIN_EXE_dirsync")), dir, args)
}

/// `BIN ARGS` in `dir` under GNU time (this build's dirsync, or `--compare`'s).
fn dirsync_bin(bin: &Path, dir: &Path, args: &[&str]) -> Run {
    let rss_file = dir.join("maxrss");
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(bin)
        .args(args)
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .output()
        .expect("run dirsync under /usr/bin/time");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "dirsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The last line of time's output is the peak in kilobytes.
    let kb: f64 = std::fs::read_to_string(&rss_file)
        .expect("read time's output")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .expect("time printed the peak RSS");
    // What a sync imported ({"mode", "changed", ...} of its report), so that a delta which
    // fell back to a full import, or saw other than the changes made, shows.
    let import = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.get("import").cloned())
        .map(|i| {
            serde_json::json!({"mode": i["mode"], "fallback": i.get("fallback"),
                "received": i["received"], "added": i["added"], "changed": i["changed"],
                "deleted": i["deleted"]})
        });
    eprintln!(
        "  dirsync {} {secs:.3} s {:.0} MB{}",
        args[0],
        kb / 1024.0,
        import
            .as_ref()
            .map(|i| format!(": {i}"))
            .unwrap_or_default()
    );
    Run {
        secs,
        rss_mb: kb / 1024.0,
        import,
    }
}

/// How ldapsearch reads the entries dirsync imports: the same server, base, filter and
/// attributes, paged by 1,000.
struct Search {
    url: String,
    bind: String,
    password: String,
    base: String,
    filter: &'static str,
}

impl Search {
    fn command(&self) -> Command {
        let mut cmd = Command::new("ldapsearch");
        cmd.args(["-x", "-LLL", "-H", &self.url, "-D", &self.bind, "-w"])
            .arg(&self.password)
            .args(["-E", "pr=1000/noprompt", "-b", &self.base, self.filter])
            .args(["*", "entryUUID"])
            .env("LDAPNOINIT", "1")
            .stderr(Stdio::inherit());
        cmd
    }

    /// The baseline: a timed dump to /dev/null.
    fn timed(&self) -> f64 {
        let t = Instant::now();
        let status = self
            .command()
            .stdout(Stdio::null())
            .status()
            .expect("run ldapsearch");
        let secs = t.elapsed().as_secs_f64();
        assert!(status.success(), "ldapsearch: {status}");
        eprintln!("  ldapsearch > /dev/null {secs:.3} s");
        secs
    }

    /// The entries it returns, counted in an untimed run.
    fn count(&self) -> usize {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .spawn()
            .expect("run ldapsearch");
        let out = child.stdout.take().expect("piped stdout");
        let n = BufReader::new(out)
            .split(b'\n')
            .map(|l| l.expect("read ldapsearch output"))
            .filter(|l| l.starts_with(b"dn: ") || l.starts_with(b"dn:: "))
            .count();
        let status = child.wait().expect("wait for ldapsearch");
        assert!(status.success(), "ldapsearch: {status}");
        n
    }
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(0.0, f64::max)
}

/// Where the bench's logs go.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Sqlite,
    Postgres,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        }
    }
}

struct Opts {
    changes: u64,
    runs: usize,
    stores: Vec<Store>,
    /// `postgres://user@host:port` of a server the bench may create databases in.
    pg_url: Option<String>,
    /// `--compare BIN`: another dirsync build (an earlier commit's release binary) whose full
    /// import alternates with this build's, so that a before/after is measured in one run.
    compare: Option<std::path::PathBuf>,
}

/// A directory the bench changes between deltas.
enum Directory<'a> {
    Ldap(&'a lab::Slapd),
    Ad(&'a lab::Samba),
}

impl Directory<'_> {
    /// Modifies `changes` users' title, to a value that `tag` makes new.
    async fn change(&self, changes: u64, tag: &str) {
        let mut ldif = String::new();
        for j in 0..changes {
            let dn = match self {
                Directory::Ldap(s) => format!("uid=user{j},{}", s.people_dn()),
                Directory::Ad(_) => format!("CN=user{j},{OU}"),
            };
            ldif.push_str(&format!(
                "dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Boss {tag} {j}\n\n"
            ));
        }
        match self {
            Directory::Ldap(s) => s.ldapmodify(&ldif).await,
            Directory::Ad(s) => s.ldapmodify(&ldif).await,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let users = arg(&args, "--ad-users", 20_000);
    let ldap_users = arg(&args, "--ldap-users", 100_000);
    let only = value("--only");
    let default_runs = if ldap_users >= 1_000_000 { 3 } else { 5 };
    let stores = match value("--store").as_deref() {
        None | Some("sqlite") => vec![Store::Sqlite],
        Some("postgres") => vec![Store::Postgres],
        Some("both") => vec![Store::Sqlite, Store::Postgres],
        Some(other) => panic!("--store {other}: sqlite, postgres or both"),
    };
    let opts = Opts {
        changes: arg(&args, "--changes", 1_000),
        runs: arg(&args, "--runs", default_runs).max(1) as usize,
        pg_url: value("--pg-url"),
        compare: value("--compare").map(Into::into),
        stores,
    };
    assert!(
        !opts.stores.contains(&Store::Postgres) || opts.pg_url.is_some(),
        "--store postgres needs --pg-url (scripts/bench import starts a server)"
    );
    if only.as_deref() != Some("openldap") {
        ad(users, &opts).await;
    }
    if only.as_deref() != Some("ad") {
        openldap(ldap_users, &opts).await;
    }
}

/// A store folder with this source configuration and an initialised log.
fn store_dir(source_toml: &str, password: &str, store_url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), password).expect("pw");
    std::fs::write(
        dir.path().join("dirsync.toml"),
        format!("[store]\nurl = \"{store_url}\"\n[source]\n{source_toml}password_file = \"pw\"\n"),
    )
    .expect("config");
    dirsync(dir.path(), &["init"]);
    dir
}

/// A fresh, empty store's URL for run `run` of `source`.
fn fresh_store(store: Store, opts: &Opts, source: &str, run: usize) -> String {
    match store {
        Store::Sqlite => "sqlite://log.db".into(),
        Store::Postgres => {
            let server = opts.pg_url.as_deref().expect("--pg-url");
            let db = format!(
                "import_{}_{run}",
                source.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            let status = Command::new("psql")
                .args(["-q", &format!("{server}/postgres")])
                // Two -c: DROP DATABASE cannot run in the transaction of a multi-statement -c.
                .args(["-c", &format!("DROP DATABASE IF EXISTS {db}")])
                .args(["-c", &format!("CREATE DATABASE {db}")])
                .status()
                .expect("run psql");
            assert!(status.success(), "psql create database {db}: {status}");
            format!("{server}/{db}")
        }
    }
}

const SYNC_FULL: &[&str] = &[
    "sync",
    "--instance",
    "bench",
    "--staging",
    "--full",
    "--format",
    "json",
];
const SYNC: &[&str] = &[
    "sync",
    "--instance",
    "bench",
    "--staging",
    "--format",
    "json",
];

/// One row of the table.
struct Row {
    name: &'static str,
    runs: Vec<f64>,
    /// Peak RSS of each run, when measured for this row.
    rss_mb: Option<Vec<f64>>,
    /// Time against the baseline's median.
    vs_baseline: bool,
    goal: &'static str,
    /// What each sync run imported.
    imports: Vec<serde_json::Value>,
}

/// Every row of issue 19's table for one source and store.
async fn measure(
    source: &str,
    directory: Directory<'_>,
    search: &Search,
    source_toml: &str,
    store: Store,
    opts: &Opts,
) {
    let load_before = load_average();
    let n = search.count();
    eprintln!(
        "{source} on {}: {n} entries, {} runs",
        store.name(),
        opts.runs
    );
    let mut baseline = Vec::new();
    let mut full = Vec::new();
    let mut full_rss = Vec::new();
    let mut full_imports = Vec::new();
    let (mut compare, mut compare_rss) = (Vec::new(), Vec::new());
    // The last run's store of `--compare`, whose deltas alternate with ours.
    let mut compare_dir: Option<tempfile::TempDir> = None;
    let (mut compare_delta, mut compare_idle) = (Vec::new(), Vec::new());
    let mut dir = None;
    // Baseline and full import alternate, so that load from elsewhere hits both alike; each
    // full import goes into a fresh store.
    for run in 0..opts.runs {
        baseline.push(search.timed());
        drop(dir.take()); // the previous run's store goes first
        let d = store_dir(
            source_toml,
            search.password.as_str(),
            &fresh_store(store, opts, source, run),
        );
        let r = dirsync(d.path(), SYNC_FULL);
        full.push(r.secs);
        full_rss.push(r.rss_mb);
        full_imports.extend(r.import);
        if let Some(bin) = &opts.compare {
            // Its own fresh store, initialised by itself: its schema may differ from ours.
            let c = tempfile::tempdir().expect("tempdir");
            std::fs::copy(d.path().join("pw"), c.path().join("pw")).expect("pw");
            std::fs::copy(d.path().join("dirsync.toml"), c.path().join("dirsync.toml"))
                .expect("config");
            if store == Store::Postgres {
                // The same database name as ours, recreated: it is dropped below anyway.
                eprintln!(
                    "--compare runs on SQLite stores only; skipped for {}",
                    store.name()
                );
            } else {
                dirsync_bin(bin, c.path(), &["init"]);
                let r = dirsync_bin(bin, c.path(), SYNC_FULL);
                compare.push(r.secs);
                compare_rss.push(r.rss_mb);
                compare_dir = Some(c);
            }
        }
        dir = Some(d);
    }
    let dir = dir.expect("at least one run");
    let dir = dir.path();
    let mut delta = Vec::new();
    let mut imports = Vec::new();
    for run in 0..opts.runs {
        directory
            .change(opts.changes, &format!("{}-{run}", store.name()))
            .await;
        let r = dirsync(dir, SYNC);
        delta.push(r.secs);
        imports.extend(r.import);
        if let (Some(bin), Some(c)) = (&opts.compare, &compare_dir) {
            compare_delta.push(dirsync_bin(bin, c.path(), SYNC).secs);
        }
    }
    let (mut idle, mut idle_rss, mut idle_imports) = (Vec::new(), Vec::new(), Vec::new());
    let (mut list, mut list_rss) = (Vec::new(), Vec::new());
    let (mut verify, mut verify_rss) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let r = dirsync(dir, SYNC);
        idle.push(r.secs);
        idle_rss.push(r.rss_mb);
        idle_imports.extend(r.import);
        if let (Some(bin), Some(c)) = (&opts.compare, &compare_dir) {
            compare_idle.push(dirsync_bin(bin, c.path(), SYNC).secs);
        }
        let r = dirsync(dir, &["instance", "list", "--format", "json"]);
        list.push(r.secs);
        list_rss.push(r.rss_mb);
        let r = dirsync(dir, &["log", "verify", "--format", "json"]);
        verify.push(r.secs);
        verify_rss.push(r.rss_mb);
    }
    if std::env::var_os("DIRSYNC_BENCH_HOLD").is_some() {
        // For profiling by hand: the lab and both stores stay until the bench is killed.
        eprintln!(
            "holding: ours in {}, --compare's in {:?}",
            dir.display(),
            compare_dir.as_ref().map(|c| c.path().to_path_buf())
        );
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let load_after = load_average();
    let t_ls = median(&baseline);
    let mut rows = vec![
        Row {
            name: "ldapsearch baseline",
            runs: baseline.clone(),
            rss_mb: None,
            vs_baseline: false,
            goal: "",
            imports: Vec::new(),
        },
        Row {
            name: "full import",
            runs: full.clone(),
            rss_mb: Some(full_rss.clone()),
            vs_baseline: true,
            goal: "<= 1.5x, peak RSS <= 1 GB",
            imports: full_imports,
        },
        Row {
            name: "delta of changes",
            runs: delta.clone(),
            rss_mb: None,
            vs_baseline: false,
            goal: "< 1 s",
            imports,
        },
        Row {
            name: "delta with no change",
            runs: idle,
            rss_mb: Some(idle_rss),
            vs_baseline: false,
            goal: "< 0.5 s",
            imports: idle_imports,
        },
        Row {
            name: "instance list",
            runs: list,
            rss_mb: Some(list_rss),
            vs_baseline: false,
            goal: "< 0.1 s, < 50 MB",
            imports: Vec::new(),
        },
        Row {
            name: "log verify",
            runs: verify,
            rss_mb: Some(verify_rss),
            vs_baseline: false,
            goal: "keep",
            imports: Vec::new(),
        },
    ];
    if !compare.is_empty() {
        rows.insert(
            2,
            Row {
                name: "full import, --compare",
                runs: compare,
                rss_mb: Some(compare_rss),
                vs_baseline: true,
                goal: "before/after: this build's row above",
                imports: Vec::new(),
            },
        );
        for (at, name, runs) in [
            (4, "delta of changes, --compare", compare_delta),
            (6, "delta, no change, --compare", compare_idle),
        ] {
            let row = Row {
                name,
                runs,
                rss_mb: None,
                vs_baseline: false,
                goal: "before/after: the row above",
                imports: Vec::new(),
            };
            if !row.runs.is_empty() {
                rows.insert(at, row);
            }
        }
    }
    println!(
        "\n{source}, {n} entries, store {}, {} runs (median; peak RSS: the largest run), \
         load average {load_before} -> {load_after}",
        store.name(),
        opts.runs
    );
    println!(
        "{:<22} {:>9} {:>9} {:>13}  {:<26} runs s",
        "row", "median s", "ratio", "peak RSS MB", "goal"
    );
    for row in &rows {
        let secs = median(&row.runs);
        let name = if row.name == "delta of changes" {
            format!("delta of {} changes", opts.changes)
        } else {
            row.name.to_string()
        };
        let ratio = row.vs_baseline.then(|| secs / t_ls);
        let rss = row.rss_mb.as_deref().map(max);
        println!(
            "{name:<22} {secs:>9.3} {:>9} {:>13}  {:<26} {}",
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_default(),
            rss.map(|r| format!("{r:.0}")).unwrap_or_default(),
            row.goal,
            row.runs
                .iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "{}",
            serde_json::json!({"bench": "import", "row": row.name, "source": source,
                "store": store.name(), "entries": n, "changes": opts.changes,
                "median_s": secs, "runs_s": row.runs, "ratio": ratio, "peak_rss_mb": rss,
                "goal": row.goal, "load_avg": load_after, "imports": row.imports})
        );
    }
    // The summary line other notes compare (fields kept; the baseline is now the median of
    // dumps to /dev/null, the times medians of `--runs`).
    println!(
        "{}",
        serde_json::json!({"bench": "import", "source": source, "entries": n,
            "ldapsearch_s": t_ls, "full_s": median(&full), "ratio": median(&full) / t_ls,
            "changes": opts.changes, "delta_s": median(&delta), "store": store.name(),
            "runs": opts.runs, "full_peak_rss_mb": max(&full_rss), "load_avg": load_after})
    );
}

async fn openldap(users: u64, opts: &Opts) {
    let opts = &Opts {
        changes: opts.changes.min(users),
        runs: opts.runs,
        stores: opts.stores.clone(),
        pg_url: opts.pg_url.clone(),
        compare: opts.compare.clone(),
    };
    eprintln!("OpenLDAP (slapd, session log): loading {users} users with slapadd ...");
    let mut slapd = lab::Slapd::start(lab::SlapdOptions {
        session_log: true,
        // About 2.5 KB of mdb map per bench user, with room to spare.
        map_size: Some((users * 4096).max(1 << 30)),
        ..Default::default()
    })
    .await;
    slapd.stop().await;
    let t = Instant::now();
    let mut ldif = String::with_capacity(users as usize * 300);
    for j in 0..users {
        ldif.push_str(&format!(
            "dn: uid=user{j},{people}\nobjectClass: inetOrgPerson\nuid: user{j}\ncn: User {j}\n\
             givenName: User\nsn: N{j}\nmail: user{j}@example.org\ntitle: Clerk\n\n",
            people = slapd.people_dn()
        ));
    }
    slapd.slapadd(&ldif).await;
    drop(ldif);
    slapd.restart().await;
    eprintln!("  loaded in {:.1} s", t.elapsed().as_secs_f64());
    let source_toml = format!(
        "kind = \"openldap\"\nurl = \"{}\"\nbind_dn = \"{}\"\nbase_dn = \"{}\"\n",
        slapd.url(),
        slapd.bind_dn(),
        slapd.base_dn()
    );
    let search = Search {
        url: slapd.url(),
        bind: slapd.bind_dn().into(),
        password: slapd.password().into(),
        base: slapd.base_dn().into(),
        filter: LDAP_FILTER,
    };
    for &store in &opts.stores {
        measure(
            "openldap",
            Directory::Ldap(&slapd),
            &search,
            &source_toml,
            store,
            opts,
        )
        .await;
    }
}

async fn ad(users: u64, opts: &Opts) {
    eprintln!("AD (Samba): loading {users} users ...");
    let samba = lab::Samba::start().await;
    common::load_ad_users(&samba, OU, users).await;
    let source_toml = format!(
        "kind = \"ad\"\nurl = \"{}\"\nbind_dn = \"{}\"\nbase_dn = \"DC=test,DC=lan\"\ninclude = [\"{OU}\"]\n",
        samba.url(),
        samba.bind_dn()
    );
    let search = Search {
        url: samba.url(),
        bind: samba.bind_dn().into(),
        password: samba.password().into(),
        base: "DC=test,DC=lan".into(),
        filter: FILTER,
    };
    let opts = Opts {
        changes: opts.changes.min(users),
        runs: opts.runs,
        stores: opts.stores.clone(),
        pg_url: opts.pg_url.clone(),
        compare: opts.compare.clone(),
    };
    for &store in &opts.stores {
        measure(
            "ad(samba)",
            Directory::Ad(&samba),
            &search,
            &source_toml,
            store,
            &opts,
        )
        .await;
    }
}

//! `scripts/bench cycle`: what an exporting delta cycle costs against the directory's size
//! (issue 19: a cycle costs what changed, not the size of the directory).
//!
//! slapd (session log) loaded with N users by slapadd, and a group of ten of them;
//! scim2-server as the target; one SQLite store; a first `sync` exports everything. Then R
//! rounds, each:
//!
//! * the baseline, the least a delta of K changes costs here: `ldapsearch` of the K entries
//!   changed last (by their title) to /dev/null, plus K PATCHes of those users (their
//!   `nickName`, which dirsync does not map) by one raw HTTP client, 4 in flight as dirsync
//!   sends them;
//! * K users' title changed in the source, then `dirsync sync` timed as a process (reading
//!   the projections, the delta import, the plan, K updates exported, all recorded);
//! * with `--compare BIN`, the same with another build's binary on the same store and
//!   target (the order of the two alternating by round).
//!
//! Each timed sync must have updated exactly K users. Reports medians, ratios to the
//! baseline, and what the cycle planned (`planned_objects`).
//!
//! With `--in-doubt`, every round is a cycle that looks for duplicates (`sync::duplicates`):
//! before the rounds, the log is given a claim of one create that got no answer (appended
//! through the library, as an export that timed out records it), so for the next 20 minutes
//! each cycle looks up that anchor (or, a build that cannot, lists the whole target). A build
//! from before claims recorded their creates, run with `--compare`, makes every later cycle
//! of both list the whole target (its claims leave the doubt unknown, as designed for a
//! fleet of mixed versions): only the rounds before its first are ours alone.
//!
//! Usage: `cargo bench --bench cycle -- [--users N] [--changes K] [--runs R] [--compare BIN]
//! [--in-doubt]` (defaults 100,000, 100, 5). With `DIRSYNC_BENCH_HOLD` set, the lab stays up after the
//! runs, for profiling by hand.

mod common;
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use common::{arg, load_average, median};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use futures_util::stream::StreamExt;
use serde_json::{json, Value};

const INSTANCE: &str = "bench";
/// The group of the first ten users: groups stay in play without a huge member list.
const GROUP_MEMBERS: u64 = 10;

struct Lab {
    slapd: lab::Slapd,
    scim: lab::Scim,
    dir: tempfile::TempDir,
    users: u64,
    changes: u64,
    round: u64,
}

impl Lab {
    async fn setup(users: u64, changes: u64) -> Lab {
        let t = Instant::now();
        let people = "ou=people,dc=example,dc=org";
        let mut team =
            "dn: cn=team,ou=groups,dc=example,dc=org\nobjectClass: groupOfNames\ncn: team\n"
                .to_string();
        for j in 0..GROUP_MEMBERS.min(users) {
            team.push_str(&format!("member: uid=user{j},{people}\n"));
        }
        team.push('\n');
        let slapd = common::slapd_with_users(users, &team).await;
        assert_eq!(slapd.people_dn(), people);
        let scim = lab::Scim::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("pw"), slapd.password()).expect("pw");
        std::fs::write(d.join("token"), scim.token()).expect("token");
        std::fs::write(
            d.join("dirsync.toml"),
            format!(
                "[store]\nurl = \"sqlite://log.db\"\n\
                 [source]\nkind = \"openldap\"\nurl = \"{url}\"\nbind_dn = \"{bind}\"\n\
                 base_dn = \"{base}\"\npassword_file = \"pw\"\n\
                 [target]\nkind = \"scim\"\nurl = \"{scim}\"\ntoken_file = \"token\"\n",
                url = slapd.url(),
                bind = slapd.bind_dn(),
                base = slapd.base_dn(),
                scim = scim.base_url(),
            ),
        )
        .expect("config");
        let lab = Lab {
            slapd,
            scim,
            dir,
            users,
            changes,
            round: 0,
        };
        lab.dirsync(&own(), &["init"]);
        eprintln!(
            "slapd with {users} users by slapadd: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let v = lab.dirsync(
            &own(),
            &["sync", "--instance", INSTANCE, "--format", "json"],
        );
        assert_eq!(
            v["created"].as_u64(),
            Some(users + 1),
            "the first sync: {v}"
        );
        eprintln!(
            "first sync, {} objects created: {:.1} s",
            users + 1,
            t.elapsed().as_secs_f64()
        );
        lab
    }

    /// `BIN ARGS` in the lab's directory (must exit 0): its JSON output, if any.
    fn dirsync(&self, bin: &Path, args: &[&str]) -> Value {
        let out = Command::new(bin)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("DIRSYNC_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run dirsync");
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// A create of one user recorded as sent and never answered, by this instance under
    /// its epoch: the target is uncertain for the next 20 minutes.
    async fn create_in_doubt(&self) {
        use dirsync::log::event::{
            stream, Event, ExportBatchCompleted, ExportBatchStarted, ExportFailed, ExportOp,
        };
        use dirsync::log::store::Batch;
        use dirsync::log::{AnyStore, NewEvent, OpenMode, Store};
        let url = format!("sqlite://{}", self.dir.path().join("log.db").display());
        let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
        let (_, control) = dirsync::project::replay::control(&store).await.unwrap();
        let epoch = control.relationship.epoch;
        let anchor = "00000000-0000-4000-8000-00000000d0b7".to_string();
        let event = |e| NewEvent::new(stream::TARGET, INSTANCE, e);
        let batch_id = "in-doubt".to_string();
        store
            .append(Batch::new(vec![
                event(Event::ExportBatchStarted(ExportBatchStarted {
                    batch_id: batch_id.clone(),
                    epoch,
                    ops: 1,
                    lease_until: chrono::Utc::now(),
                    creates: Some(vec![anchor.clone()]),
                })),
                event(Event::ExportFailed(ExportFailed {
                    epoch,
                    anchor,
                    op: ExportOp::Create,
                    status: None,
                    error: "timed out (injected by the bench)".into(),
                })),
                event(Event::ExportBatchCompleted(ExportBatchCompleted {
                    batch_id,
                    applied: 0,
                    failed: 1,
                })),
            ]))
            .await
            .unwrap();
    }

    /// The title of this round's changes.
    fn title(&self) -> String {
        format!("Round {}", self.round)
    }

    /// The K users changed next (a window moving through the directory).
    fn next_users(&self) -> Vec<u64> {
        let start = (self.round * self.changes) % self.users.max(1);
        (0..self.changes)
            .map(|i| (start + i) % self.users)
            .collect()
    }

    /// K users' title changed in the source (a new round).
    async fn change(&mut self) -> Vec<u64> {
        self.round += 1;
        let users = self.next_users();
        let title = self.title();
        let people = self.slapd.people_dn();
        let ldif: String = users
            .iter()
            .map(|j| {
                format!(
                    "dn: uid=user{j},{people}\nchangetype: modify\nreplace: title\ntitle: {title}\n\n"
                )
            })
            .collect();
        self.slapd.ldapmodify(&ldif).await;
        users
    }

    /// A timed delta sync by `bin`, which must update exactly the K users changed.
    fn timed_sync(&self, bin: &Path) -> (f64, u64) {
        let t = Instant::now();
        let v = self.dirsync(bin, &["sync", "--instance", INSTANCE, "--format", "json"]);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(v["updated"].as_u64(), Some(self.changes), "{v}");
        assert_eq!(v["created"].as_u64(), Some(0), "{v}");
        (secs, v["planned_objects"].as_u64().unwrap_or(u64::MAX))
    }

    /// The baseline: the K entries changed last read to /dev/null, and K PATCHes of the
    /// users `ids` by a raw client.
    async fn baseline(&self, ids: &[String]) -> f64 {
        let t = Instant::now();
        let status = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-H",
                &self.slapd.url(),
                "-D",
                self.slapd.bind_dn(),
            ])
            .args(["-w", self.slapd.password(), "-b", self.slapd.people_dn()])
            .arg(format!("(title={})", self.title()))
            .args(["*", "entryUUID"])
            .env("LDAPNOINIT", "1")
            .stdout(Stdio::null())
            .status()
            .expect("run ldapsearch");
        assert!(status.success(), "ldapsearch: {status}");
        let http = reqwest::Client::new();
        let base = self.scim.base_url().to_string();
        let token = self.scim.token().to_string();
        let round = self.round;
        let patches = futures_util::stream::iter(ids.iter().cloned())
            .map(|id| {
                let req = http
                    .patch(format!("{base}/Users/{id}"))
                    .bearer_auth(&token)
                    .json(&json!({
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "replace", "path": "nickName", "value": format!("r{round}")}],
                    }));
                async move { req.send().await.map(|r| r.status().as_u16()) }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        let secs = t.elapsed().as_secs_f64();
        for p in patches {
            let status = p.expect("PATCH");
            assert!((200..300).contains(&status), "PATCH answered {status}");
        }
        secs
    }

    /// The SCIM ids of `users` (untimed).
    async fn scim_ids(&self, users: &[u64]) -> Vec<String> {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        for j in users {
            let v: Value = http
                .get(format!(
                    "{}/Users?filter=userName%20eq%20%22user{j}%40example.org%22",
                    self.scim.base_url()
                ))
                .bearer_auth(self.scim.token())
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("JSON");
            let id = v["Resources"][0]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("user{j}: {v}"));
            ids.push(id.to_string());
        }
        ids
    }
}

fn own() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dirsync"))
}

fn secs(xs: &[f64]) -> String {
    xs.iter()
        .map(|s| format!("{s:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users", 100_000);
    let changes = arg(&args, "--changes", 100).min(users);
    let runs = arg(&args, "--runs", 5);
    let compare = args
        .iter()
        .position(|a| a == "--compare")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let in_doubt = args.iter().any(|a| a == "--in-doubt");
    let mut lab = Lab::setup(users, changes).await;
    if in_doubt {
        lab.create_in_doubt().await;
    }
    let (mut base, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let mut planned = Vec::new();
    for run in 0..runs {
        let mut bins = vec![("ours", own())];
        if let Some(c) = &compare {
            bins.push(("compare", c.clone()));
            if run % 2 == 1 {
                bins.reverse();
            }
        }
        for (name, bin) in bins {
            let changed = lab.change().await;
            let ids = lab.scim_ids(&changed).await;
            let b = lab.baseline(&ids).await;
            let (s, p) = lab.timed_sync(&bin);
            eprintln!("run {run}: {name} {s:.2} s (planned {p}), baseline {b:.3} s");
            base.push(b);
            if name == "ours" {
                ours.push(s);
                planned.push(p);
            } else {
                theirs.push(s);
            }
        }
    }
    if std::env::var_os("DIRSYNC_BENCH_HOLD").is_some() {
        // For profiling by hand: the lab stays until the bench is killed.
        eprintln!("holding: the lab in {}", lab.dir.path().display());
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let b = median(&base);
    println!(
        "exporting delta cycle{}, {users} users, {changes} changes, {runs} runs, load {}",
        if in_doubt {
            " looking for duplicates (a create in doubt)"
        } else {
            ""
        },
        load_average()
    );
    println!(
        "baseline (ldapsearch of the changes + raw PATCHes): median {b:.3} s [{}]",
        secs(&base)
    );
    println!(
        "dirsync sync: median {:.2} s = {:.1}x baseline [{}]; planned objects {:?}",
        median(&ours),
        median(&ours) / b,
        secs(&ours),
        planned
    );
    if !theirs.is_empty() {
        println!(
            "--compare sync: median {:.2} s = {:.1}x baseline [{}]; ours/compare {:.2}",
            median(&theirs),
            median(&theirs) / b,
            secs(&theirs),
            median(&ours) / median(&theirs)
        );
    }
}

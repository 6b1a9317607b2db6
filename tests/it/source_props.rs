//! Property test against real servers, through the CLI binary: a few hundred random
//! directory operations (add, modify, clear, rename, move in and out of scope, delete,
//! member add/remove, disable) from a seeded RNG, with `sync --staging` deltas interleaved.
//! At the end the projection built from the deltas must equal what a fresh full import into
//! a second store produces, and a `--full` on the first store must find nothing to do.
//!
//! Seed: `DIRSYNC_TEST_SEED` (u64), else a fixed default; it is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dirsync::log::event::{Attrs, ObjectKind};
use dirsync::log::{AnyStore, OpenMode};
use dirsync::project::{replay, State};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::dirsync;
use crate::lab::{Samba, Slapd, SlapdOptions};

const DEFAULT_SEED: u64 = 0x5eed_d125;

fn seed() -> u64 {
    let seed = std::env::var("DIRSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("source_props: seed {seed} (set DIRSYNC_TEST_SEED to repeat or vary)");
    seed
}

/// The directory flavour: DN layout and LDIF of each operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Ad,
    OpenLdap,
}

const AD_IN: &str = "OU=Staff,DC=test,DC=lan";
const AD_OUT: &str = "OU=Other,DC=test,DC=lan";
const OL_PEOPLE: &str = "ou=people,dc=example,dc=org";
const OL_GROUPS: &str = "ou=groups,dc=example,dc=org";
const OL_OUT: &str = "ou=other,dc=example,dc=org";

impl Flavour {
    fn user_ou(self, in_scope: bool) -> &'static str {
        match (self, in_scope) {
            (Flavour::Ad, true) => AD_IN,
            (Flavour::Ad, false) => AD_OUT,
            (Flavour::OpenLdap, true) => OL_PEOPLE,
            (Flavour::OpenLdap, false) => OL_OUT,
        }
    }

    fn user_dn(self, u: &User) -> String {
        let ou = self.user_ou(u.in_scope);
        match self {
            Flavour::Ad => format!("CN={},{ou}", u.rdn),
            Flavour::OpenLdap => format!("uid={},{ou}", u.rdn),
        }
    }

    fn rdn_attr(self) -> &'static str {
        match self {
            Flavour::Ad => "CN",
            Flavour::OpenLdap => "uid",
        }
    }

    fn group_dn(self, g: usize) -> String {
        match self {
            Flavour::Ad => format!("CN=g{g},{AD_IN}"),
            Flavour::OpenLdap => format!("cn=g{g},{OL_GROUPS}"),
        }
    }

    /// groupOfNames must have a member: every OpenLDAP group keeps this one for good.
    fn keeper_dn(self) -> Option<String> {
        (self == Flavour::OpenLdap).then(|| format!("uid=keeper,{OL_PEOPLE}"))
    }

    fn add_user(self, u: &User, rng: &mut StdRng) -> String {
        let dn = self.user_dn(u);
        let title = pick(rng, TITLES);
        match self {
            Flavour::Ad => format!(
                "dn: {dn}\nchangetype: add\nobjectClass: user\nsAMAccountName: {r}\n\
                 givenName: G{id}\nsn: S{id}\ntitle: {title}\nuserAccountControl: 512\n\n",
                r = u.sam,
                id = u.id
            ),
            Flavour::OpenLdap => format!(
                "dn: {dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {r}\ncn: P {id}\n\
                 sn: S{id}\ngivenName: G{id}\ntitle: {title}\nmail: {r}@example.org\n\n",
                r = u.rdn,
                id = u.id
            ),
        }
    }

    fn add_group(self, g: usize, members: &[String]) -> String {
        let mut s = match self {
            Flavour::Ad => format!(
                "dn: {}\nchangetype: add\nobjectClass: group\nsAMAccountName: g{g}\n",
                self.group_dn(g)
            ),
            Flavour::OpenLdap => format!(
                "dn: {}\nchangetype: add\nobjectClass: groupOfNames\ncn: g{g}\n",
                self.group_dn(g)
            ),
        };
        for m in self.keeper_dn().iter().chain(members) {
            s.push_str(&format!("member: {m}\n"));
        }
        s.push('\n');
        s
    }
}

const TITLES: &[&str] = &["Clerk", "Boss", "Chief", "Engineer", "Übersetzer", "Ops"];
const ATTRS: &[&str] = &[
    "title",
    "mail",
    "givenName",
    "description",
    "telephoneNumber",
];

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.gen_range(0..xs.len())]
}

#[derive(Clone, Debug)]
struct User {
    id: u32,
    /// The RDN value now (changes with renames).
    rdn: String,
    /// sAMAccountName (AD), fixed.
    sam: String,
    in_scope: bool,
    disabled: bool,
}

/// What the test knows of the directory: enough to generate only valid operations.
struct Model {
    flavour: Flavour,
    users: BTreeMap<u32, User>,
    /// Group number -> member user ids.
    groups: Vec<BTreeSet<u32>>,
    next_id: u32,
    renames: u32,
}

impl Model {
    fn new_user(&mut self, in_scope: bool) -> User {
        self.next_id += 1;
        let id = self.next_id;
        User {
            id,
            rdn: format!("p{id}"),
            sam: format!("p{id}"),
            in_scope,
            disabled: false,
        }
    }

    fn random_user(&self, rng: &mut StdRng) -> Option<u32> {
        if self.users.is_empty() {
            return None;
        }
        let i = rng.gen_range(0..self.users.len());
        self.users.keys().nth(i).copied()
    }

    /// For OpenLDAP (no refint overlay in the lab), what the refint overlay would do when
    /// a member's DN changes or it is deleted: the groups' member values follow.
    fn refint(&self, id: u32, old_dn: &str, new_dn: Option<&str>) -> String {
        if self.flavour != Flavour::OpenLdap {
            return String::new();
        }
        let mut s = String::new();
        for (g, members) in self.groups.iter().enumerate() {
            if members.contains(&id) {
                s.push_str(&format!(
                    "dn: {}\nchangetype: modify\ndelete: member\nmember: {old_dn}\n-\n",
                    self.flavour.group_dn(g)
                ));
                if let Some(n) = new_dn {
                    s.push_str(&format!("add: member\nmember: {n}\n-\n"));
                }
                s.push('\n');
            }
        }
        s
    }

    /// One random operation as LDIF (applied to the model).
    fn op(&mut self, rng: &mut StdRng, tally: &mut BTreeMap<&'static str, u32>) -> String {
        let f = self.flavour;
        let roll = rng.gen_range(0..100);
        let target = self.random_user(rng);
        let (name, ldif) = match (roll, target) {
            (0..=14, _) | (_, None) => {
                let u = self.new_user(rng.gen_bool(0.8));
                let l = f.add_user(&u, rng);
                self.users.insert(u.id, u);
                ("add", l)
            }
            (15..=44, Some(id)) => {
                let dn = f.user_dn(&self.users[&id]);
                let attr = pick(rng, ATTRS);
                if rng.gen_bool(0.25) {
                    (
                        "clear",
                        format!("dn: {dn}\nchangetype: modify\nreplace: {attr}\n-\n\n"),
                    )
                } else {
                    let v: u32 = rng.gen_range(0..1000);
                    let value = match attr {
                        "mail" => format!("m{v}@example.org"),
                        "telephoneNumber" => format!("+1 555 {v:04}"),
                        "title" => format!("{} {v}", pick(rng, TITLES)),
                        _ => format!("{attr} {v}"),
                    };
                    (
                        "modify",
                        format!(
                            "dn: {dn}\nchangetype: modify\nreplace: {attr}\n{attr}: {value}\n-\n\n"
                        ),
                    )
                }
            }
            (45..=54, Some(id)) => {
                let old = f.user_dn(&self.users[&id]);
                self.renames += 1;
                let rdn = format!("p{id}r{}", self.renames);
                let u = self.users.get_mut(&id).expect("user");
                u.rdn = rdn.clone();
                let new = f.user_dn(u);
                let mut l = format!(
                    "dn: {old}\nchangetype: modrdn\nnewrdn: {}={rdn}\ndeleteoldrdn: 1\n\n",
                    f.rdn_attr()
                );
                l.push_str(&self.refint(id, &old, Some(&new)));
                ("rename", l)
            }
            (55..=64, Some(id)) => {
                let old = f.user_dn(&self.users[&id]);
                let u = self.users.get_mut(&id).expect("user");
                u.in_scope = !u.in_scope;
                let new = f.user_dn(u);
                let (rdn, sup) = (u.rdn.clone(), f.user_ou(u.in_scope));
                let mut l = format!(
                    "dn: {old}\nchangetype: modrdn\nnewrdn: {}={rdn}\ndeleteoldrdn: 1\n\
                     newsuperior: {sup}\n\n",
                    f.rdn_attr()
                );
                l.push_str(&self.refint(id, &old, Some(&new)));
                ("move", l)
            }
            (65..=72, Some(id)) => {
                let dn = f.user_dn(&self.users[&id]);
                let mut l = format!("dn: {dn}\nchangetype: delete\n\n");
                l.push_str(&self.refint(id, &dn, None));
                self.users.remove(&id);
                for g in &mut self.groups {
                    g.remove(&id);
                }
                ("delete", l)
            }
            (73..=94, Some(id)) => {
                let g = rng.gen_range(0..self.groups.len());
                let dn = f.user_dn(&self.users[&id]);
                let gdn = f.group_dn(g);
                if self.groups[g].insert(id) {
                    (
                        "member+",
                        format!("dn: {gdn}\nchangetype: modify\nadd: member\nmember: {dn}\n-\n\n"),
                    )
                } else {
                    self.groups[g].remove(&id);
                    (
                        "member-",
                        format!(
                            "dn: {gdn}\nchangetype: modify\ndelete: member\nmember: {dn}\n-\n\n"
                        ),
                    )
                }
            }
            (_, Some(id)) => {
                let dn = f.user_dn(&self.users[&id]);
                match f {
                    Flavour::Ad => {
                        let u = self.users.get_mut(&id).expect("user");
                        u.disabled = !u.disabled;
                        let uac = if u.disabled { 514 } else { 512 };
                        (
                            "disable",
                            format!(
                                "dn: {dn}\nchangetype: modify\nreplace: userAccountControl\n\
                                 userAccountControl: {uac}\n-\n\n"
                            ),
                        )
                    }
                    Flavour::OpenLdap => {
                        let t = if rng.gen_bool(0.5) {
                            "disabled"
                        } else {
                            "active"
                        };
                        (
                            "disable",
                            format!(
                                "dn: {dn}\nchangetype: modify\nreplace: employeeType\n\
                                 employeeType: {t}\n-\n\n"
                            ),
                        )
                    }
                }
            }
        };
        *tally.entry(name).or_default() += 1;
        ldif
    }
}

/// The server under test.
enum Server {
    Samba(Samba),
    Slapd(Slapd),
}

impl Server {
    async fn ldapmodify(&self, ldif: &str) {
        match self {
            Server::Samba(s) => s.ldapmodify(ldif).await,
            Server::Slapd(s) => s.ldapmodify(ldif).await,
        }
    }

    fn config(&self, pw_file: &str) -> String {
        let (kind, url, bind, base, include) = match self {
            Server::Samba(s) => (
                "ad",
                s.url(),
                s.bind_dn(),
                s.base_dn(),
                format!("\"{AD_IN}\""),
            ),
            Server::Slapd(s) => (
                "openldap",
                s.url(),
                s.bind_dn(),
                s.base_dn(),
                format!("\"{OL_PEOPLE}\", \"{OL_GROUPS}\""),
            ),
        };
        format!(
            "[store]\nurl = \"sqlite://log.db\"\n[source]\nkind = \"{kind}\"\nurl = \"{url}\"\n\
             bind_dn = \"{bind}\"\npassword_file = \"{pw_file}\"\nbase_dn = \"{base}\"\n\
             include = [{include}]\n"
        )
    }

    fn password(&self) -> &'static str {
        match self {
            Server::Samba(s) => s.password(),
            Server::Slapd(s) => s.password(),
        }
    }
}

/// A store directory with its config, initialised.
fn store_dir(server: &Server) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), format!("{}\n", server.password())).unwrap();
    std::fs::write(dir.path().join("dirsync.toml"), server.config("pw")).unwrap();
    let run = dirsync(dir.path(), &["init"]);
    assert_eq!(run.code, 0, "{run:?}");
    dir
}

fn sync(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["sync", "--instance", "x", "--staging", "--format", "json"];
    args.extend_from_slice(extra);
    let run = dirsync(dir, &args);
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    v["import"].clone()
}

async fn state(dir: &Path) -> State {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    std::sync::Arc::unwrap_or_clone(replay::current(&store).await.unwrap())
}

type Live = BTreeMap<String, (ObjectKind, String, Attrs, BTreeSet<String>)>;

fn live(s: &State) -> Live {
    s.objects
        .live()
        .map(|(a, r)| {
            (
                a.clone(),
                (r.kind, r.dn.clone(), r.attrs.clone(), r.members.clone()),
            )
        })
        .collect()
}

/// A readable account of how two projections differ (at most a few objects).
fn differences(a: &Live, b: &Live) -> String {
    let mut out = Vec::new();
    for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => out.push(format!("{k}:\n  from deltas: {x:?}\n  fresh full:  {y:?}")),
        }
    }
    let n = out.len();
    out.truncate(8);
    format!("{n} object(s) differ:\n{}", out.join("\n"))
}

/// On failure: the events of the first store about the objects that differ.
async fn dump_events(dir: &Path, a: &Live, b: &Live) {
    use dirsync::log::Store;
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let store = AnyStore::open(&url, OpenMode::Existing).await.unwrap();
    let bad: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .take(3)
        .collect();
    let mut after = 0;
    loop {
        let evs = store.read(after, 1000).await.unwrap();
        if evs.is_empty() {
            break;
        }
        for e in &evs {
            after = e.seq;
            if bad.iter().any(|k| e.payload.contains(k.as_str()))
                || e.event_type == "ImportCompleted"
            {
                eprintln!("{} {} {}", e.seq, e.event_type, e.payload);
            }
        }
    }
}

async fn property(server: Server, flavour: Flavour, total_ops: u32) {
    let t0 = std::time::Instant::now();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model {
        flavour,
        users: BTreeMap::new(),
        groups: vec![BTreeSet::new(); 3],
        next_id: 0,
        renames: 0,
    };
    // Initial content: the OUs, some users on both sides of the scope, groups.
    let mut ldif = String::new();
    match flavour {
        Flavour::Ad => {
            for ou in [AD_IN, AD_OUT] {
                ldif.push_str(&format!(
                    "dn: {ou}\nchangetype: add\nobjectClass: organizationalUnit\n\n"
                ));
            }
        }
        Flavour::OpenLdap => {
            ldif.push_str(&format!(
                "dn: {OL_OUT}\nchangetype: add\nobjectClass: organizationalUnit\nou: other\n\n\
                 dn: uid=keeper,{OL_PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\n\
                 uid: keeper\ncn: Keeper\nsn: Keeper\n\n"
            ));
        }
    }
    for i in 0..12 {
        let u = model.new_user(i < 9);
        ldif.push_str(&flavour.add_user(&u, &mut rng));
        model.users.insert(u.id, u);
    }
    for g in 0..model.groups.len() {
        let mut dns = Vec::new();
        for (id, u) in &model.users {
            if rng.gen_bool(0.4) {
                model.groups[g].insert(*id);
                dns.push(flavour.user_dn(u));
            }
        }
        ldif.push_str(&flavour.add_group(g, &dns));
    }
    server.ldapmodify(&ldif).await;

    let a = store_dir(&server);
    let v = sync(a.path(), &[]);
    assert_eq!(v["mode"], "full", "{v}");

    let mut tally = BTreeMap::new();
    let mut modes: BTreeMap<String, u32> = BTreeMap::new();
    let mut done = 0;
    while done < total_ops {
        let n = rng.gen_range(10..=30).min(total_ops - done);
        let mut batch = String::new();
        for _ in 0..n {
            batch.push_str(&model.op(&mut rng, &mut tally));
        }
        server.ldapmodify(&batch).await;
        done += n;
        let v = sync(a.path(), &[]);
        let mode = match v["fallback"].as_str() {
            Some(_) => format!("{} (fallback)", v["mode"].as_str().unwrap()),
            None => v["mode"].as_str().unwrap().to_string(),
        };
        *modes.entry(mode).or_default() += 1;
    }
    eprintln!(
        "source_props: {done} ops {tally:?}; syncs {modes:?}; {} users live in the model",
        model.users.len()
    );

    // A fresh full import into a second store sees the same directory.
    let b = store_dir(&server);
    let v = sync(b.path(), &["--full"]);
    assert_eq!(v["mode"], "full", "{v}");
    let (sa, sb) = (state(a.path()).await, state(b.path()).await);
    let (la, lb) = (live(&sa), live(&sb));
    if la != lb {
        dump_events(a.path(), &la, &lb).await;
    }
    assert!(
        la == lb,
        "seed {seed}: the deltas and a fresh full import disagree; {}",
        differences(&la, &lb)
    );
    // The model agrees on what is in scope: its in-scope users, the groups, the keeper.
    let users_in_scope = model.users.values().filter(|u| u.in_scope).count();
    let keeper = usize::from(flavour == Flavour::OpenLdap);
    assert_eq!(
        la.len(),
        users_in_scope + model.groups.len() + keeper,
        "seed {seed}"
    );
    // And a full import on the first store finds nothing to record.
    let v = sync(a.path(), &["--full"]);
    for k in ["added", "changed", "deleted", "left_scope"] {
        assert_eq!(v[k], 0, "seed {seed}: {k} after deltas: {v}");
    }
    // The stored projections (kept in memory by the imports, not read back) are the log's.
    for d in [a.path(), b.path()] {
        let run = dirsync(d, &["replay", "--verify"]);
        assert_eq!(run.code, 0, "seed {seed}: {run:?}");
    }
    eprintln!("source_props: done in {:.1} s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samba_deltas_agree_with_a_full_import() {
    let samba = Samba::start().await;
    property(Server::Samba(samba), Flavour::Ad, 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slapd_with_session_log_deltas_agree_with_a_full_import() {
    let slapd = Slapd::start(SlapdOptions {
        session_log: true,
        ..Default::default()
    })
    .await;
    property(Server::Slapd(slapd), Flavour::OpenLdap, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slapd_without_session_log_deltas_agree_with_a_full_import() {
    let slapd = Slapd::start(SlapdOptions::default()).await;
    property(Server::Slapd(slapd), Flavour::OpenLdap, 300).await;
}

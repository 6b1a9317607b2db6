//! What the benchmarks share: arguments and loading a Samba AD DC with users.
// Each bench uses the part it needs.
#![allow(dead_code)]

/// The binary's allocator, for the benches that time the library itself.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Run the dirsync binary in `dir`; it must succeed. Returns the seconds it took.
pub fn dirsync(dir: &std::path::Path, args: &[&str]) -> f64 {
    let t = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirsync"))
        .args(args)
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .output()
        .expect("run dirsync");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "dirsync {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

/// `--name N` from the arguments, else `default`.
pub fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `user{0..users}` under the OU `ou` (created here), with the attributes dirsync maps,
/// added 2,000 at a time.
pub async fn load_ad_users(samba: &super::lab::Samba, ou: &str, users: u64) {
    samba
        .ldapadd(&format!("dn: {ou}\nobjectClass: organizationalUnit\n\n"))
        .await;
    let mut i = 0;
    while i < users {
        let mut ldif = String::new();
        for j in i..(i + 2000).min(users) {
            ldif.push_str(&format!(
                "dn: CN=user{j},{ou}\nobjectClass: user\nsAMAccountName: user{j}\nuserPrincipalName: user{j}@test.lan\n\
                 givenName: User\nsn: N{j}\nmail: user{j}@test.lan\ntitle: Clerk\ndepartment: Sales\nuserAccountControl: 512\n\n"
            ));
        }
        samba.ldapadd(&ldif).await;
        i += 2000;
    }
}

/// A dirsync directory syncing the OU `ou` of `samba` into `scim`: the password and token
/// files, `dirsync.toml` with the store at `store_url` (`deletion_threshold = "5%"`, then
/// `extra`, which goes on in `[sync]`), and `dirsync init`.
pub fn ad_into_scim(
    dir: &std::path::Path,
    samba: &super::lab::Samba,
    scim: &super::lab::Scim,
    ou: &str,
    store_url: &str,
    extra: &str,
) {
    std::fs::write(dir.join("pw"), samba.password()).expect("pw");
    std::fs::write(dir.join("token"), scim.token()).expect("token");
    std::fs::write(
        dir.join("dirsync.toml"),
        format!(
            "[store]\nurl = \"{store_url}\"\n[source]\nkind = \"ad\"\nurl = \"{}\"\n\
             bind_dn = \"{}\"\npassword_file = \"pw\"\nbase_dn = \"DC=test,DC=lan\"\n\
             include = [\"{ou}\"]\n[target]\nkind = \"scim\"\nurl = \"{}\"\n\
             token_file = \"token\"\n[sync]\ndeletion_threshold = \"5%\"\n{extra}",
            samba.url(),
            samba.bind_dn(),
            scim.base_url()
        ),
    )
    .expect("config");
    dirsync(dir, &["init"]);
}

/// Delete `user0..user{n}` (as [`load_ad_users`] made them) from the OU `ou`.
pub async fn delete_ad_users(samba: &super::lab::Samba, ou: &str, n: u64) {
    let mut ldif = String::new();
    for j in 0..n {
        ldif.push_str(&format!("dn: CN=user{j},{ou}\nchangetype: delete\n\n"));
    }
    samba.ldapmodify(&ldif).await;
}

/// A slapd with its session log, loaded by slapadd with `user0..user{users}` under its
/// people branch (the attributes dirsync maps, title `Clerk`) and the entries of `extra`
/// (LDIF), then restarted to serve them.
pub async fn slapd_with_users(users: u64, extra: &str) -> super::lab::Slapd {
    let mut slapd = super::lab::Slapd::start(super::lab::SlapdOptions {
        session_log: true,
        ..Default::default()
    })
    .await;
    slapd.stop().await;
    let people = slapd.people_dn();
    let mut ldif = String::with_capacity(users as usize * 200 + extra.len());
    for j in 0..users {
        ldif.push_str(&format!(
            "dn: uid=user{j},{people}\nobjectClass: inetOrgPerson\nuid: user{j}\ncn: User {j}\n\
             givenName: User\nsn: N{j}\nmail: user{j}@example.org\ntitle: Clerk\n\n"
        ));
    }
    ldif.push_str(extra);
    slapd.slapadd(&ldif).await;
    slapd.restart().await;
    slapd
}

/// The median of `xs` (NaN when there are none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

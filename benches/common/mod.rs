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

//! `scripts/bench handover`: a Samba AD DC with `--users` (20,000) users synced into
//! scim2-server by an "old" instance; the old instance is stopped and `--deleted-pct` (1 %)
//! of the users are deleted; then the whole `new-computer` handover is timed against one
//! plain full sync of the same directory (`sync --full` afterwards, nothing left to export),
//! in the same run. Release build. Goal: the handover under 2x the full sync.

mod common;
#[path = "../tests/it/lab/mod.rs"]
mod lab;

use common::{arg, dirsync};

const OU: &str = "OU=Bench,DC=test,DC=lan";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users = arg(&args, "--users", 20_000);
    let pct = arg(&args, "--deleted-pct", 1);
    eprintln!("loading {users} users into Samba ...");
    let samba = lab::Samba::start().await;
    let scim = lab::Scim::start().await;
    common::load_ad_users(&samba, OU, users).await;
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    common::ad_into_scim(dir, &samba, &scim, OU, "sqlite://log.db", "");
    eprintln!("the old instance's first sync (creates {users} users) ...");
    let t_first = dirsync(dir, &["sync", "--instance", "old"]);
    dirsync(dir, &["instance", "stop", "old"]);
    let deleted = users * pct / 100;
    common::delete_ad_users(&samba, OU, deleted).await;
    eprintln!("handover (new-computer) ...");
    let t_handover = dirsync(
        dir,
        &[
            "handover",
            "--from",
            "old",
            "--to",
            "new",
            "--playbook",
            "new-computer",
        ],
    );
    eprintln!("one plain full sync of the same directory ...");
    let t_full = dirsync(dir, &["sync", "--instance", "new", "--full"]);
    println!("users  deleted  first sync s  handover s  full sync s  ratio (goal < 2)");
    println!(
        "{users:<6} {deleted:<8} {t_first:<13.2} {t_handover:<11.2} {t_full:<12.2} {:.2}",
        t_handover / t_full
    );
    println!(
        "{}",
        serde_json::json!({"bench": "handover", "users": users, "deleted": deleted,
            "first_sync_s": t_first, "handover_s": t_handover, "full_sync_s": t_full,
            "ratio": t_handover / t_full})
    );
}

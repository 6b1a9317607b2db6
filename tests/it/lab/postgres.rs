//! One PostgreSQL 15 server per test process, started on first use; each test
//! gets its own database from [`pg_database`].
//!
//! Measured on the 2-core lab machine (idle; expect 2x under a parallel build):
//! first `pg_database()` of a process (initdb + start + CREATE DATABASE)
//! ~1.5 s; each later `pg_database()` ~0.08 s.
//!
//! initdb refuses root, so initdb and the server run as the `postgres` OS user,
//! with `--auth=trust`, `fsync=off`, listening on 127.0.0.1 only. The server is
//! never stopped explicitly: the wrapper's stdin pipe (see `proc.rs`) is held by
//! a static, so it dies with the test process and its dir is removed then.
//!
//! Do not keep an `sqlx::PgPool` in a static across tests: each `#[tokio::test]`
//! has its own runtime, and a pool's connections belong to the runtime that made them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;
use tokio::sync::OnceCell;

use super::proc::{self, ServerProcess, SpawnOpts};

const PG_BIN_DIRS: &[&str] = &["/usr/lib/postgresql/15/bin"];

struct PgServer {
    port: u16,
    process: ServerProcess,
    _dir: PathBuf,
}

static PG: OnceCell<PgServer> = OnceCell::const_new();

/// `postgres://postgres@127.0.0.1:PORT` of the shared server (no database part).
pub async fn pg_server_url() -> String {
    let srv = PG.get_or_init(start).await;
    format!("postgres://postgres@127.0.0.1:{}", srv.port)
}

/// Pid of the shared server's postmaster (starting it if needed).
pub async fn pg_server_pid() -> u32 {
    PG.get_or_init(start).await.process.pid()
}

/// Creates a fresh, uniquely named database on the shared server and returns
/// `postgres://postgres@127.0.0.1:PORT/NAME`.
pub async fn pg_database() -> String {
    let server = pg_server_url().await;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("lab: postgres: connect {server}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} STRATEGY = FILE_COPY"
    )))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("lab: postgres: CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    format!("{server}/{name}")
}

async fn start() -> PgServer {
    let initdb = proc::find_bin("initdb", PG_BIN_DIRS);
    let postgres = proc::find_bin("postgres", PG_BIN_DIRS);
    let (uid, gid) = proc::user_ids("postgres");
    // Kept until the process ends; the wrapper removes it at EOF.
    let dir = proc::instance_dir("pg").keep();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lab: postgres: chown {}: {e}", dir.display()));
    let data = dir.join("data");

    let out = tokio::process::Command::new(&initdb)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .args(["--no-sync", "--no-instructions"])
        .current_dir(&dir)
        .uid(uid)
        .gid(gid)
        .output()
        .await
        .unwrap_or_else(|e| panic!("lab: cannot run {}: {e}", initdb.display()));
    assert!(
        out.status.success(),
        "lab: initdb failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let log = dir.join("postgres.log");
    for _attempt in 0..5 {
        let port = proc::free_port();
        let mut cmd = Command::new(&postgres);
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off", "-c", "max_connections=300"])
            .current_dir(&dir);
        let mut process = proc::spawn_server(
            "postgres",
            &cmd,
            SpawnOpts {
                log: &log,
                stop_signal: "INT",
                cleanup_dir: Some(&dir),
                user: Some((uid, gid)),
            },
        );
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(conn) = sqlx::PgConnection::connect(&url).await {
                let _ = conn.close().await;
                return PgServer {
                    port,
                    process,
                    _dir: dir,
                };
            }
            if !process.is_alive() {
                eprintln!(
                    "lab: postgres exited on port {port}, retrying:\n{}",
                    process.log_tail()
                );
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("lab: postgres not ready in 30 s:\n{}", process.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Keep the dir for the next attempt: stop, not drop.
        process.stop();
    }
    panic!(
        "lab: postgres failed to start 5 times:\n{}",
        proc::log_tail(&log, 30)
    );
}

//! Shared helpers: a fresh store on either backend, raw SQL for tampering, the CLI binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dirsync::log::{AnyStore, OpenMode};

use crate::lab;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, initialised store, its URL, and a directory that lives as long as it.
pub struct Fresh {
    pub store: AnyStore,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub backend: Backend,
}

impl Fresh {
    pub async fn new(backend: Backend) -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("log.db").display()),
            Backend::Postgres => lab::pg_database().await,
        };
        let store = AnyStore::open(&url, OpenMode::Init).await.unwrap();
        Fresh {
            store,
            url,
            dir,
            backend,
        }
    }

    /// Another handle on the same store (its own connections).
    pub async fn reopen(&self) -> AnyStore {
        AnyStore::open(&self.url, OpenMode::Existing).await.unwrap()
    }

    /// A config file pointing at this store.
    pub fn config(&self) -> PathBuf {
        let p = self.dir.path().join("dirsync.toml");
        std::fs::write(&p, format!("[store]\nurl = \"{}\"\n", self.url)).unwrap();
        p
    }

    /// Run raw SQL against the store, bypassing dirsync (an attacker, or a test).
    pub async fn raw_sql(&self, sql: &str) {
        raw_sql(&self.url, sql).await
    }

    /// Run the dirsync binary against this store.
    pub fn cli(&self, args: &[&str]) -> Run {
        let cfg = self.config();
        let mut full = vec!["--config", cfg.to_str().unwrap()];
        full.extend_from_slice(args);
        dirsync(self.dir.path(), &full)
    }
}

pub async fn raw_sql(url: &str, sql: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
                path,
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "raw sql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
}

/// Disable the append-only guard so a test can play the attacker.
pub fn drop_guard_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;",
        Backend::Postgres => "ALTER TABLE events DISABLE TRIGGER events_append_only;",
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dirsync")
}

/// Run the binary in `dir` with `args`, no inherited DIRSYNC_CONFIG.
pub fn dirsync(dir: &Path, args: &[&str]) -> Run {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("DIRSYNC_CONFIG")
        .output()
        .unwrap()
        .into()
}

/// Generate a `#[tokio::test]` per backend from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Sqlite).await }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Postgres).await }
            )+
        }
    };
}

/// The log holds one event: a `SyncRunFailed` of a run that never started, for `reason`.
pub async fn assert_only_failed_cycle(
    store: &AnyStore,
    reason: dirsync::log::event::FailureReason,
) {
    use dirsync::log::event::{Event, SyncRunFailed};
    use dirsync::log::Store;
    let evs = store.read(0, 10).await.unwrap();
    let decoded: Vec<Event> = evs.iter().map(|e| e.decode().unwrap()).collect();
    match decoded.as_slice() {
        [Event::SyncRunFailed(SyncRunFailed { reason: r, .. })] if *r == Some(reason) => {}
        other => panic!("expected only a failed cycle ({reason:?}): {other:?}"),
    }
}

/// Wait until `f` holds (polling), at most `secs`.
pub async fn until<F, Fut>(secs: u64, what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f().await {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

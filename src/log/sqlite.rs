//! SQLite backend: one file, WAL, appends serialised by `BEGIN IMMEDIATE`.
//!
//! SQLite is called directly (rusqlite) on tokio's blocking threads: one writer connection
//! behind a mutex for appends, and a small pool of reader connections, so reads run beside
//! an append (WAL) and a page of rows costs no more than SQLite's own work. `BEGIN
//! IMMEDIATE` plus a 60 s busy timeout serialise appends across processes too, so the chain
//! stays one line whoever writes; `synchronous = FULL` makes every commit durable.
//!
//! An append is one transaction. A large one is prepared (payloads serialised, hashes
//! chained) on a second thread, chunk by chunk, while the writer inserts the chunks already
//! prepared, 50 rows per statement. The WAL is checkpointed in the background after the
//! append returns rather than inside its commit (see [`SqliteStore::with_writer`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rusqlite::ffi::ErrorCode;
use rusqlite::hooks::Wal;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use super::control::{self, StoredControl};
use super::hash::{EventRef, FoldRef};
use super::index;
use super::migrate;
use super::store::{self, AppendOutcome, Batch, Keep, OpenMode, Snapshot, Store};
use super::{hash_from_slice, Hash, StoredEvent};
use crate::error::{Error, Result};

/// How long an append waits for another writer (this or another process) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// The page size of a new store. A large import commits a WAL frame per page, each two
/// writes, and the checkpoint copies them one by one: 16 KiB pages make a quarter as many
/// as SQLite's default 4 KiB, while an event row still fits many to a page. (A store keeps
/// the size it was created with.)
const PAGE_SIZE: i64 = 16_384;
/// Page cache per connection, in KiB (SQLite's negative `cache_size`).
const CACHE_KIB: i64 = 65_536;
/// Idle reader connections kept open for the next read.
const IDLE_READERS: usize = 4;
/// Batches at least this large are prepared on a second thread while rows go in.
const PIPELINE_MIN: usize = 2_048;

const SELECT_EVENTS: &str = "SELECT seq, stream, stream_version, event_type, schema_version, \
     instance, recorded_at_us, idempotency_key, payload, prev_hash, hash \
     FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2";
/// [`SELECT_EVENTS`] with only the columns of a [`FoldRef`].
const SELECT_FOLD: &str = "SELECT seq, event_type, schema_version, instance, recorded_at_us, \
     payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2";
const COLUMNS: &str = "seq, stream, stream_version, event_type, schema_version, instance, \
     recorded_at_us, idempotency_key, payload, prev_hash, hash";
const INSERT_EVENT: &str = "INSERT INTO events (seq, stream, stream_version, event_type, \
     schema_version, instance, recorded_at_us, idempotency_key, payload, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
/// Rows per multi-row INSERT (11 parameters each).
const INSERT_ROWS: usize = 50;
const SELECT_VERSION: &str = "SELECT version FROM streams WHERE stream = ?1";
const UPSERT_VERSION: &str = "INSERT INTO streams (stream, version) VALUES (?1, ?2) \
     ON CONFLICT (stream) DO UPDATE SET version = excluded.version";
const SELECT_HEAD: &str = "SELECT seq, hash FROM log_head WHERE id = 1";
const UPDATE_HEAD: &str = "UPDATE log_head SET seq = ?1, hash = ?2 WHERE id = 1";
const SELECT_KEY: &str = "SELECT seq FROM events WHERE idempotency_key = ?1";

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    pub(crate) memo: super::store::Memo,
}

struct Inner {
    path: PathBuf,
    /// The one connection that writes (in this process).
    writer: Mutex<Connection>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// The background checkpoint's connection, opened when first needed.
    checkpointer: Mutex<Option<Connection>>,
    /// A checkpoint is scheduled and has not started yet.
    checkpoint_due: AtomicBool,
}

/// Checkpoint the WAL once a commit leaves it with at least this many frames (pages):
/// SQLite's own auto-checkpoint threshold.
const CHECKPOINT_FRAMES: i32 = 1_000;
/// A WAL this large is checkpointed by the writer itself, before the append returns.
const CHECKPOINT_CAP: i32 = 16_000;

thread_local! {
    /// The WAL's size in frames after the last commit on this thread's writer connection.
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// The writer's WAL hook, in place of SQLite's auto-checkpoint (which runs inside the
/// commit): it notes the WAL's size for [`SqliteStore::with_writer`].
fn note_wal_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|c| c.set(frames));
    Ok(())
}

/// An SQL error with no better name: `Error::Store` with SQLite's message. A disk full or
/// an I/O error is [`Error::StoreFiles`], whose path and system error [`files_error`]
/// fills in where the connection is at hand.
fn sql(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => Error::StoreFiles {
            path: String::new(),
            problem: e.to_string(),
        },
        _ => Error::Store(e.to_string()),
    }
}

/// [`Error::StoreFiles`] made plain: the store's path, and what the system said. SQLite
/// reports a file system out of room as "database or disk is full" (ENOSPC); other
/// failed writes, EFBIG past a file size limit or EDQUOT among them, as a "disk I/O
/// error", whose errno it keeps on the connection.
fn files_error(e: Error, path: &Path, conn: &Connection) -> Error {
    let Error::StoreFiles { problem, .. } = e else {
        return e;
    };
    let problem = if problem.contains("disk is full") {
        format!("no space left on the device (SQLite: {problem})")
    } else {
        // SAFETY: the handle is the open connection `conn` borrows, and
        // sqlite3_system_errno only reads the errno it recorded at its last I/O error.
        let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
        match errno {
            0 => problem,
            n => format!(
                "{} (SQLite: {problem})",
                std::io::Error::from_raw_os_error(n)
            ),
        }
    };
    Error::StoreFiles {
        path: path.display().to_string(),
        problem,
    }
}

/// Errors SQLite gives for a file that is not a usable database, as one clear message.
fn classify(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => Error::BadInput(format!(
            "{} is not a dirsync store (not an SQLite database)",
            path.display()
        )),
        Some(ErrorCode::DatabaseCorrupt) => Error::BadInput(format!(
            "{} is corrupt (SQLite: database disk image is malformed)",
            path.display()
        )),
        Some(ErrorCode::CannotOpen) => Error::BadInput(format!(
            "store {} cannot be opened (missing? run `dirsync init`)",
            path.display()
        )),
        _ => Error::Store(format!("{}: {e}", path.display())),
    }
}

/// A mutex whose holder panicked still guards a usable connection (an open transaction
/// was rolled back when it was dropped), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a connection is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Appends: sets the journal mode and durability, and checkpoints as described at
    /// [`SqliteStore::with_writer`].
    Writer,
    /// Reads only.
    Reader,
    /// Checkpoints the WAL in the background.
    Checkpointer,
}

/// Open one connection with the store's settings. Only `create` may create the file; other
/// connections than the writer leave the journal settings to it (it applied them at open).
fn connect(path: &Path, create: bool, role: Role) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The first statement reads the file's header: a file that is not a database fails
        // here, before anything is written to it.
        match role {
            Role::Writer => {
                if create {
                    // Takes effect only on a new, empty file (before its first write).
                    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
                }
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.wal_hook(Some(note_wal_frames));
                conn.pragma_update(None, "cache_size", -CACHE_KIB)
            }
            Role::Reader => {
                conn.pragma_update(None, "query_only", true)?;
                conn.pragma_update(None, "cache_size", -CACHE_KIB)
            }
            Role::Checkpointer => conn.pragma_update(None, "synchronous", "FULL"),
        }
    };
    setup(&conn).map_err(|e| classify(path, e))?;
    Ok(conn)
}

/// Checkpoint the WAL (PASSIVE, as SQLite's auto-checkpoint does). Failing is harmless:
/// the WAL keeps the frames for the next checkpoint.
fn checkpoint(conn: &Connection) {
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}

/// Run blocking SQLite work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(Error::store)?
}

impl SqliteStore {
    pub async fn open(path: &str, mode: OpenMode) -> Result<SqliteStore> {
        let path = PathBuf::from(path);
        if mode == OpenMode::Existing && !path.exists() {
            return Err(Error::BadInput(format!(
                "store {} does not exist: run `dirsync init`",
                path.display()
            )));
        }
        blocking(move || Self::open_blocking(path, mode)).await
    }

    fn open_blocking(path: PathBuf, mode: OpenMode) -> Result<SqliteStore> {
        let mut writer = connect(&path, mode == OpenMode::Init, Role::Writer)?;
        let found = schema_version(&path, &writer).map_err(|e| match e {
            Error::Store(_) => {
                Error::BadInput(format!("{} is not a dirsync store", path.display()))
            }
            other => other,
        })?;
        match mode {
            OpenMode::Init => migrate_to_latest(&mut writer, found)?,
            OpenMode::Existing => migrate::check(found, migrate::SQLITE)?,
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                checkpointer: Mutex::new(None),
                checkpoint_due: AtomicBool::new(false),
            }),
            memo: Default::default(),
        })
    }

    /// An append; with `keep`, the batch's events are handed over as they are prepared.
    async fn append_with(&self, batch: Batch, keep: Option<Keep>) -> Result<AppendOutcome> {
        self.with_writer(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            if let Some(key) = &batch.idempotency_key {
                let seen: Option<i64> = tx
                    .prepare_cached(SELECT_KEY)
                    .map_err(sql)?
                    .query_row([key.as_str()], |r| r.get(0))
                    .optional()
                    .map_err(sql)?;
                if let Some(seq) = seen {
                    tx.rollback().map_err(sql)?;
                    return Ok(AppendOutcome::Duplicate {
                        first_seq: seq as u64,
                    });
                }
            }
            let head = head_on(&tx)?;
            if batch.events.is_empty() {
                return Ok(AppendOutcome::nothing_after(head.0));
            }
            let mut versions = versions(&tx, &batch.streams())?;
            let mut control = control_at(&tx, head.0)?;
            let now = store::now_us();
            let (first_seq, last_seq, last_hash) = if batch.events.len() < PIPELINE_MIN {
                let written = insert_batch(&tx, head, &mut versions, &batch, now)?;
                control.apply_new(written.0, now, &batch.events);
                batch.hand_over(written.0, now, keep);
                written
            } else {
                insert_pipelined(&tx, head, &mut versions, &mut control, batch, now, keep)?
            };
            finish(&tx, &versions, last_seq, &last_hash)?;
            write_control(&tx, &control)?;
            tx.commit().map_err(sql)?;
            Ok(AppendOutcome::Appended {
                first_seq,
                last_seq,
                recorded_at_us: now,
            })
        })
        .await
    }

    /// Run `f` on the writer connection, on a blocking thread.
    ///
    /// SQLite's auto-checkpoint would copy the WAL into the database inside every commit
    /// that leaves the WAL past 1000 frames. Instead the writer notes the WAL's size, and a
    /// background connection checkpoints once `f`'s result is returned, beside the next
    /// append; only a WAL that grew past `CHECKPOINT_CAP` frames (the background checkpoints
    /// did not get it reset, as appends never paused) is checkpointed here, before returning.
    async fn with_writer<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let (out, frames) = blocking(move || {
            let mut conn = lock(&inner.writer);
            WAL_FRAMES.with(|c| c.set(0));
            let out = f(&mut conn).map_err(|e| files_error(e, &inner.path, &conn));
            let frames = WAL_FRAMES.with(|c| c.replace(0));
            if frames >= CHECKPOINT_CAP {
                checkpoint(&conn);
            }
            Ok((out, frames))
        })
        .await?;
        if frames >= CHECKPOINT_FRAMES && !self.inner.checkpoint_due.swap(true, Ordering::AcqRel) {
            let inner = Arc::clone(&self.inner);
            // Fire and forget.
            drop(tokio::task::spawn_blocking(move || {
                let mut slot = lock(&inner.checkpointer);
                inner.checkpoint_due.store(false, Ordering::Release);
                if slot.is_none() {
                    *slot = connect(&inner.path, false, Role::Checkpointer).ok();
                }
                if let Some(conn) = slot.as_ref() {
                    checkpoint(conn);
                }
            }));
        }
        out
    }

    /// Run `f` on an idle reader connection (opened if none is idle), on a blocking thread.
    async fn with_reader<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let idle = lock(&inner.readers).pop();
            let conn = match idle {
                Some(c) => c,
                None => connect(&inner.path, false, Role::Reader)?,
            };
            let out = f(&conn).map_err(|e| files_error(e, &inner.path, &conn));
            let mut idle = lock(&inner.readers);
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            out
        })
        .await
    }

    /// Visit up to `limit` events with seq > `after`, in order, borrowed from SQLite's
    /// buffers, on a reader thread: `f` adds each to `page`. Returns the page, the number of
    /// events visited and the last one's seq. A row that cannot be read fails the whole page.
    pub async fn read_each<P, F>(
        &self,
        after: u64,
        limit: u32,
        page: P,
        mut f: F,
    ) -> Result<(P, usize, Option<u64>)>
    where
        P: Send + 'static,
        F: FnMut(&mut P, &EventRef<'_>) -> Result<()> + Send + 'static,
    {
        self.with_reader(move |conn| {
            read_rows(conn, SELECT_EVENTS, after, limit, page, |p, r| {
                let e = row_ref(r)?;
                f(p, &e)?;
                Ok(e.seq)
            })
        })
        .await
    }

    /// [`read_each`](Self::read_each) reading only what a fold uses.
    pub async fn read_fold_each<P, F>(
        &self,
        after: u64,
        limit: u32,
        page: P,
        mut f: F,
    ) -> Result<(P, usize, Option<u64>)>
    where
        P: Send + 'static,
        F: FnMut(&mut P, &FoldRef<'_>) -> Result<()> + Send + 'static,
    {
        self.with_reader(move |conn| {
            read_rows(conn, SELECT_FOLD, after, limit, page, |p, r| {
                let e = FoldRef {
                    seq: int(r, 0)? as u64,
                    event_type: text(r, 1)?,
                    schema_version: int(r, 2)? as u32,
                    instance: text(r, 3)?,
                    recorded_at_us: int(r, 4)?,
                    payload: text(r, 5)?,
                };
                f(p, &e)?;
                Ok(e.seq)
            })
        })
        .await
    }
}

/// Run `query` (seq > ?1, LIMIT ?2) and hand each row to `each`, which adds it to `page` and
/// returns its seq: the page, the number of rows and the last seq.
fn read_rows<P>(
    conn: &Connection,
    query: &str,
    after: u64,
    limit: u32,
    mut page: P,
    mut each: impl FnMut(&mut P, &Row<'_>) -> Result<u64>,
) -> Result<(P, usize, Option<u64>)> {
    let mut stmt = conn.prepare_cached(query).map_err(sql)?;
    let mut rows = stmt
        .query(params![after as i64, i64::from(limit)])
        .map_err(sql)?;
    let (mut n, mut last) = (0, None);
    while let Some(r) = rows.next().map_err(sql)? {
        last = Some(each(&mut page, r)?);
        n += 1;
    }
    Ok((page, n, last))
}

/// The schema version recorded in the file (0 for an empty database).
fn schema_version(path: &Path, conn: &Connection) -> Result<i64> {
    let has_table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'dirsync_schema'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| classify(path, e))?;
    if has_table.is_none() {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if tables > 0 {
            return Err(Error::BadInput(format!(
                "{} is an SQLite database but not a dirsync store",
                path.display()
            )));
        }
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row("SELECT max(version) FROM dirsync_schema", [], |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    Ok(v.unwrap_or(0))
}

fn migrate_to_latest(conn: &mut Connection, found: i64) -> Result<()> {
    let latest = migrate::latest(migrate::SQLITE);
    if found > latest {
        return Err(Error::SchemaTooNew {
            found,
            supported: latest,
        });
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    tx.execute_batch(migrate::SCHEMA_TABLE).map_err(sql)?;
    let current: Option<i64> = tx
        .query_row("SELECT max(version) FROM dirsync_schema", [], |r| r.get(0))
        .map_err(sql)?;
    for (v, script) in migrate::SQLITE {
        if *v > current.unwrap_or(0) {
            tx.execute_batch(script).map_err(sql)?;
            tx.execute(
                "INSERT INTO dirsync_schema (version, applied_at_us) VALUES (?1, ?2)",
                params![v, store::now_us()],
            )
            .map_err(sql)?;
        }
    }
    let fill = migrate::index_to_fill(current.unwrap_or(0), migrate::SQLITE);
    if fill.any() {
        fill_index(&tx, fill)?;
    }
    if migrate::control_to_fill(current.unwrap_or(0), migrate::SQLITE) {
        let (head, _) = head_on(&tx)?;
        write_control(&tx, &refold_control(&tx, head)?)?;
    }
    tx.commit().map_err(sql)
}

/// Fill the history index tables `fill` names from the events already stored (a migration
/// that adds or empties them).
fn fill_index(conn: &Connection, fill: migrate::Fill) -> Result<()> {
    let mut after = 0i64;
    loop {
        let mut rows = index::Rows::default();
        let mut last = None;
        {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, event_type, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(sql)?;
            let mut q = stmt
                .query(params![after, migrate::FILL_PAGE])
                .map_err(sql)?;
            while let Some(r) = q.next().map_err(sql)? {
                let seq = int(r, 0)?;
                rows.add(seq as u64, text(r, 1)?, text(r, 2)?);
                last = Some(seq);
            }
        }
        let Some(last) = last else {
            return Ok(());
        };
        let mut ready = rows.ready();
        if !fill.anchors {
            ready.anchors.clear();
        }
        if !fill.keys {
            ready.keys.clear();
        }
        insert_index(conn, &ready)?;
        after = last;
    }
}

/// Index rows per multi-row INSERT (2 parameters each).
const INDEX_ROWS: usize = 100;

/// Insert history index rows (`src/log/index.rs`), [`INDEX_ROWS`] per statement (cached,
/// as are the one-row statements for the rest); a row already there (a key known before) is
/// kept.
fn insert_index(conn: &Connection, rows: &index::Ready) -> Result<()> {
    static ANCHORS: OnceLock<String> = OnceLock::new();
    static KEYS: OnceLock<String> = OnceLock::new();
    const ANCHOR: &str = "INSERT OR IGNORE INTO event_anchors (anchor_hash, seq) VALUES ";
    const KEY: &str = "INSERT OR IGNORE INTO object_keys (key, anchor) VALUES ";
    fn many<A: rusqlite::ToSql, B: rusqlite::ToSql>(
        conn: &Connection,
        head: &str,
        all: &'static OnceLock<String>,
        rows: &[(A, B)],
    ) -> Result<()> {
        let statement = |n: usize| format!("{head}{}", vec!["(?,?)"; n].join(","));
        let mut chunks = rows.chunks_exact(INDEX_ROWS);
        if rows.len() >= INDEX_ROWS {
            let mut stmt = conn
                .prepare_cached(all.get_or_init(|| statement(INDEX_ROWS)))
                .map_err(sql)?;
            for chunk in &mut chunks {
                for (i, (a, b)) in chunk.iter().enumerate() {
                    stmt.raw_bind_parameter(2 * i + 1, a).map_err(sql)?;
                    stmt.raw_bind_parameter(2 * i + 2, b).map_err(sql)?;
                }
                stmt.raw_execute().map_err(sql)?;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut stmt = conn.prepare_cached(&statement(1)).map_err(sql)?;
            for (a, b) in rest {
                stmt.raw_bind_parameter(1, a).map_err(sql)?;
                stmt.raw_bind_parameter(2, b).map_err(sql)?;
                stmt.raw_execute().map_err(sql)?;
            }
        }
        Ok(())
    }
    static TYPES: OnceLock<String> = OnceLock::new();
    const TYPE: &str = "INSERT OR IGNORE INTO event_type_blocks (event_type, block) VALUES ";
    many(conn, ANCHOR, &ANCHORS, &rows.anchors)?;
    many(conn, KEY, &KEYS, &rows.keys)?;
    many(conn, TYPE, &TYPES, &rows.types)
}

/// The stored control projections row.
fn read_control(conn: &Connection) -> Result<control::Row> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, body FROM control WHERE id = 1")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    match rows.next().map_err(sql)? {
        Some(r) => StoredControl::read(int(r, 0)? as u64, text(r, 1)?),
        None => Ok(control::Row::Missing),
    }
}

/// The control projections at `head`, the seq the append locked: the stored row, or, when
/// it is not at `head` (or missing, or of another format), folded again from the log.
fn control_at(conn: &Connection, head: u64) -> Result<StoredControl> {
    match read_control(conn)? {
        control::Row::Current(c) if c.seq == head => Ok(*c),
        _ => refold_control(conn, head),
    }
}

/// The control projections folded from the log up to `head` (`src/log/control.rs`).
fn refold_control(conn: &Connection, head: u64) -> Result<StoredControl> {
    let mut c = StoredControl::default();
    let mut stmt = conn
        .prepare_cached(&control::refold_sql(false))
        .map_err(sql)?;
    loop {
        let mut rows = stmt
            .query(params![c.seq as i64, control::REFOLD_PAGE])
            .map_err(sql)?;
        let before = c.seq;
        while let Some(r) = rows.next().map_err(sql)? {
            c.apply_stored(
                int(r, 0)? as u64,
                text(r, 1)?,
                int(r, 2)? as u32,
                text(r, 3)?,
                int(r, 4)?,
                text(r, 5)?,
            )?;
        }
        if c.seq == before {
            break;
        }
    }
    c.seq = head;
    c.touched = true;
    Ok(c)
}

/// Write the control projections back: the whole row when an event changed them, else
/// only its seq.
fn write_control(conn: &Connection, c: &StoredControl) -> Result<()> {
    if c.touched {
        conn.prepare_cached(
            "INSERT INTO control (id, seq, body) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, body = excluded.body",
        )
        .map_err(sql)?
        .execute(params![c.seq as i64, c.body()?])
        .map_err(sql)?;
    } else {
        conn.prepare_cached("UPDATE control SET seq = ?1 WHERE id = 1")
            .map_err(sql)?
            .execute(params![c.seq as i64])
            .map_err(sql)?;
    }
    Ok(())
}

fn head_on(conn: &Connection) -> Result<(u64, Hash)> {
    let mut stmt = conn.prepare_cached(SELECT_HEAD).map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let Some(r) = rows.next().map_err(sql)? else {
        return Err(Error::Store("the log head row is missing".into()));
    };
    let seq = r.get::<_, i64>(0).map_err(sql)? as u64;
    let hash = hash_from_slice(seq, blob(r, 1)?)?;
    Ok((seq, hash))
}

fn versions(conn: &Connection, streams: &[&str]) -> Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare_cached(SELECT_VERSION).map_err(sql)?;
    let mut out = HashMap::with_capacity(streams.len());
    for s in streams {
        let v: Option<i64> = stmt.query_row([*s], |r| r.get(0)).optional().map_err(sql)?;
        out.insert((*s).to_string(), v.unwrap_or(0) as u64);
    }
    Ok(out)
}

/// `INSERT INTO events` with `rows` rows of parameters.
fn insert_sql(rows: usize) -> String {
    let one = "(?,?,?,?,?,?,?,?,?,?,?)";
    let mut s = format!("INSERT INTO events ({COLUMNS}) VALUES ");
    s.reserve(rows * (one.len() + 1));
    for i in 0..rows {
        if i > 0 {
            s.push(',');
        }
        s.push_str(one);
    }
    s
}

/// Bind `r` as the `n`th row (from 0) of a multi-row INSERT.
fn bind_row(stmt: &mut rusqlite::Statement<'_>, n: usize, r: &StoredEvent) -> Result<()> {
    let b = n * 11;
    let mut bind = |i: usize, v: &dyn rusqlite::ToSql| stmt.raw_bind_parameter(b + i, v);
    bind(1, &(r.seq as i64))
        .and_then(|()| bind(2, &r.stream))
        .and_then(|()| bind(3, &(r.stream_version as i64)))
        .and_then(|()| bind(4, &r.event_type))
        .and_then(|()| bind(5, &i64::from(r.schema_version)))
        .and_then(|()| bind(6, &r.instance))
        .and_then(|()| bind(7, &r.recorded_at_us))
        .and_then(|()| bind(8, &r.idempotency_key))
        .and_then(|()| bind(9, &r.payload))
        .and_then(|()| bind(10, &&r.prev_hash[..]))
        .and_then(|()| bind(11, &&r.hash[..]))
        .map_err(sql)
}

/// Insert rows, `INSERT_ROWS` per statement: per-statement work is a good part of
/// SQLite's cost for one row; then their history index rows.
fn insert_rows(conn: &Connection, rows: &[StoredEvent], index: &index::Ready) -> Result<()> {
    static MANY: OnceLock<String> = OnceLock::new();
    let mut chunks = rows.chunks_exact(INSERT_ROWS);
    if rows.len() >= INSERT_ROWS {
        let mut stmt = conn
            .prepare_cached(MANY.get_or_init(|| insert_sql(INSERT_ROWS)))
            .map_err(sql)?;
        for chunk in &mut chunks {
            for (n, r) in chunk.iter().enumerate() {
                bind_row(&mut stmt, n, r)?;
            }
            stmt.raw_execute().map_err(sql)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = conn.prepare_cached(INSERT_EVENT).map_err(sql)?;
        for r in rest {
            bind_row(&mut stmt, 0, r)?;
            stmt.raw_execute().map_err(sql)?;
        }
    }
    insert_index(conn, index)
}

/// Record the streams' new versions and the new head.
fn finish(conn: &Connection, versions: &HashMap<String, u64>, seq: u64, hash: &Hash) -> Result<()> {
    let mut stmt = conn.prepare_cached(UPSERT_VERSION).map_err(sql)?;
    for (s, v) in versions {
        stmt.execute(params![s, *v as i64]).map_err(sql)?;
    }
    conn.prepare_cached(UPDATE_HEAD)
        .map_err(sql)?
        .execute(params![seq as i64, &hash[..]])
        .map_err(sql)?;
    Ok(())
}

/// The first and last seq written, and the last hash.
type Written = (u64, u64, Hash);

/// Prepare and insert a batch's rows in one go (small batches).
fn insert_batch(
    conn: &Connection,
    head: (u64, Hash),
    versions: &mut HashMap<String, u64>,
    batch: &Batch,
    now_us: i64,
) -> Result<Written> {
    let rows = store::prepare(head, versions, batch, now_us)?;
    let index = rows.first().map_or_else(index::Rows::default, |first| {
        store::index_rows(first.seq, &batch.events)
    });
    let mut index = index.ready();
    index.add_types(&rows);
    insert_rows(conn, &rows, &index)?;
    match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => Ok((first.seq, last.seq, last.hash)),
        _ => Err(Error::Store("an append prepared no rows".into())),
    }
}

/// Prepare a large batch on a second thread, part by part ([`store::Parts`]), while this one
/// inserts the parts already prepared: serialising payloads and hashing overlap SQLite's
/// work, and the rows are exactly those one `prepare` of the whole batch gives.
fn insert_pipelined(
    conn: &Connection,
    head: (u64, Hash),
    versions: &mut HashMap<String, u64>,
    control: &mut StoredControl,
    batch: Batch,
    now_us: i64,
    keep: Option<Keep>,
) -> Result<Written> {
    let owned_versions = std::mem::take(versions);
    let owned_control = std::mem::take(control);
    std::thread::scope(|s| {
        // Each part comes with its history index rows, made on the preparing thread.
        let (rows_tx, rows_rx) =
            std::sync::mpsc::sync_channel::<Result<(Vec<StoredEvent>, index::Ready)>>(2);
        // Inserted rows go back to the preparing thread to be freed there.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<StoredEvent>>();
        let preparer = s.spawn(move || {
            // A short first part lets the inserting thread start sooner.
            let mut parts =
                store::Parts::new(head, owned_versions, batch, now_us, keep, owned_control);
            for rows in parts.by_ref() {
                let failed = rows.is_err();
                let rows = rows.map(|(r, i)| {
                    let mut i = i.ready();
                    i.add_types(&r);
                    (r, i)
                });
                if rows_tx.send(rows).is_err() || failed {
                    break;
                }
                while let Ok(done) = done_rx.try_recv() {
                    drop(done);
                }
            }
            drop(rows_tx);
            // Free the rest of the inserted rows as they come back.
            for done in done_rx {
                drop(done);
            }
            parts.finish()
        });
        let mut written: Option<Written> = None;
        let mut result = Ok(());
        for rows in rows_rx.iter() {
            let step = rows.and_then(|(rows, index)| {
                insert_rows(conn, &rows, &index)?;
                if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
                    let first_seq = written.map_or(first.seq, |w| w.0);
                    written = Some((first_seq, last.seq, last.hash));
                }
                // The preparer is gone only if it failed, and then this result is moot.
                let _ = done_tx.send(rows);
                Ok(())
            });
            if step.is_err() {
                result = step;
                break;
            }
        }
        drop(rows_rx);
        drop(done_tx);
        let (final_versions, final_control) = preparer
            .join()
            .map_err(|_| Error::Store("preparing the append panicked".into()))?;
        result?;
        *versions = final_versions;
        *control = final_control;
        written.ok_or_else(|| Error::Store("an append prepared no rows".into()))
    })
}

fn blob<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r [u8]> {
    match r.get_ref(i).map_err(sql)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b),
        other => Err(Error::Store(format!(
            "column {i}: expected a blob, found {:?}",
            other.data_type()
        ))),
    }
}

fn int(r: &Row<'_>, i: usize) -> Result<i64> {
    r.get_ref(i)
        .map_err(sql)?
        .as_i64()
        .map_err(|e| Error::Store(format!("column {i}: {e}")))
}

fn text<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r str> {
    r.get_ref(i)
        .map_err(sql)?
        .as_str()
        .map_err(|e| Error::Store(format!("column {i}: {e}")))
}

/// One row of `SELECT_EVENTS`, borrowed from SQLite's buffers.
fn row_ref<'r>(r: &'r Row<'_>) -> Result<EventRef<'r>> {
    let seq = int(r, 0)? as u64;
    Ok(EventRef {
        seq,
        stream: text(r, 1)?,
        stream_version: int(r, 2)? as u64,
        event_type: text(r, 3)?,
        schema_version: int(r, 4)? as u32,
        instance: text(r, 5)?,
        recorded_at_us: int(r, 6)?,
        idempotency_key: r
            .get_ref(7)
            .map_err(sql)?
            .as_str_or_null()
            .map_err(|e| Error::Store(format!("column 7: {e}")))?,
        payload: text(r, 8)?,
        prev_hash: hash_from_slice(seq, blob(r, 9)?)?,
        hash: hash_from_slice(seq, blob(r, 10)?)?,
    })
}

impl Store for SqliteStore {
    async fn append(&self, batch: Batch) -> Result<AppendOutcome> {
        self.append_with(batch, None).await
    }

    async fn append_keeping(&self, batch: Batch, keep: Keep) -> Result<AppendOutcome> {
        self.append_with(batch, Some(keep)).await
    }

    async fn read(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let page = Vec::with_capacity(limit.min(65_536) as usize);
        let (page, _, _) = self
            .read_each(after, limit, page, |p: &mut Vec<StoredEvent>, e| {
                p.push(e.to_owned());
                Ok(())
            })
            .await?;
        Ok(page)
    }

    async fn head(&self) -> Result<(u64, Hash)> {
        self.with_reader(head_on).await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let stream = stream.to_string();
        self.with_reader(move |conn| {
            Ok(versions(conn, &[stream.as_str()])?
                .get(stream.as_str())
                .copied()
                .unwrap_or(0))
        })
        .await
    }

    async fn append_raw(&self, events: &[StoredEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let events = events.to_vec();
        self.with_writer(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let head = head_on(&tx)?;
            let mut streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
            streams.sort_unstable();
            streams.dedup();
            let versions = versions(&tx, &streams)?;
            let next = store::check_raw_continuation(head, &versions, &events)?;
            let mut control = control_at(&tx, head.0)?;
            control.apply_rows(&events)?;
            insert_rows(&tx, &events, &index::Ready::of(&events))?;
            if let Some(last) = events.last() {
                finish(&tx, &next, last.seq, &last.hash)?;
            }
            write_control(&tx, &control)?;
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>> {
        let name = name.to_string();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, hash, body FROM snapshots WHERE name = ?1")
                .map_err(sql)?;
            let mut rows = stmt.query([name.as_str()]).map_err(sql)?;
            let Some(r) = rows.next().map_err(sql)? else {
                return Ok(None);
            };
            let seq = r.get::<_, i64>(0).map_err(sql)? as u64;
            Ok(Some(Snapshot {
                name: name.clone(),
                seq,
                hash: hash_from_slice(seq, blob(r, 1)?)?,
                body: blob(r, 2)?.to_vec(),
            }))
        })
        .await
    }

    async fn save_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let snap = snap.clone();
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "INSERT INTO snapshots (name, seq, hash, body) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
                 body = excluded.body",
            )
            .map_err(sql)?
            .execute(params![
                snap.name,
                snap.seq as i64,
                &snap.hash[..],
                &snap.body[..]
            ])
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn control(&self) -> Result<StoredControl> {
        self.with_reader(|conn| match read_control(conn)? {
            control::Row::Current(c) => Ok(*c),
            control::Row::Stale { seq } => refold_control(conn, seq),
            control::Row::Missing => Err(Error::Store(
                "the control projections row is missing".into(),
            )),
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.inner.path.display())
    }
}

impl SqliteStore {
    pub(crate) async fn history(
        &self,
        q: &store::HistoryQuery,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let q = q.clone();
        self.with_reader(move |conn| {
            let mut stmt = conn.prepare_cached(&q.sql(COLUMNS, false)).map_err(sql)?;
            let mut params: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(a) = &q.anchor {
                params.push(index::anchor_hash(a).into());
            }
            if let Some(t) = &q.event_type {
                params.push(t.clone().into());
            }
            params.push((after.min(i64::MAX as u64) as i64).into());
            params.push(q.until_or_max().into());
            params.push(i64::from(limit).into());
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .map_err(sql)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql)? {
                out.push(row_ref(r)?.to_owned());
            }
            Ok(out)
        })
        .await
    }

    /// Up to `limit` blocks from `from` to `to` (`src/log/index.rs`, type_block) that hold
    /// an event of this type, in order.
    pub(crate) async fn type_blocks(
        &self,
        event_type: &str,
        from: i64,
        to: i64,
        limit: u32,
    ) -> Result<Vec<i64>> {
        let event_type = event_type.to_string();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT block FROM event_type_blocks WHERE event_type = ?1 \
                     AND block >= ?2 AND block <= ?3 ORDER BY block LIMIT ?4",
                )
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![event_type, from, to, i64::from(limit)])
                .map_err(sql)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql)? {
                out.push(int(r, 0)?);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn anchors_keyed(&self, lower: &str) -> Result<Vec<String>> {
        let lower = lower.to_string();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT anchor FROM object_keys WHERE key = ?1")
                .map_err(sql)?;
            let mut rows = stmt.query([lower.as_str()]).map_err(sql)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql)? {
                out.push(text(r, 0)?.to_string());
            }
            Ok(out)
        })
        .await
    }

    /// Record `beat` as its instance's heartbeat (one row per instance, outside the chain).
    pub(crate) async fn beat(&self, beat: &crate::ha::Heartbeat) -> Result<()> {
        let b = beat.clone();
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "INSERT INTO heartbeats (instance, role, epoch, at_us, host, pid) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (instance) DO UPDATE SET \
                 role = excluded.role, epoch = excluded.epoch, at_us = excluded.at_us, \
                 host = excluded.host, pid = excluded.pid",
            )
            .and_then(|mut st| {
                st.execute(params![
                    b.instance,
                    b.role,
                    b.epoch as i64,
                    b.at_us,
                    b.host,
                    i64::from(b.pid)
                ])
            })
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    /// Every instance's last heartbeat, by instance name.
    pub(crate) async fn heartbeats(&self) -> Result<Vec<crate::ha::Heartbeat>> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT instance, role, epoch, at_us, host, pid FROM heartbeats ORDER BY instance",
                )
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql)? {
                out.push(crate::ha::Heartbeat {
                    instance: text(r, 0)?.to_string(),
                    role: text(r, 1)?.to_string(),
                    epoch: int(r, 2)? as u64,
                    at_us: int(r, 3)?,
                    host: text(r, 4)?.to_string(),
                    pid: int(r, 5)? as u32,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Record `c` as its instance's last idle cycle (one row per instance, outside the chain).
    pub(crate) async fn idle_cycle(&self, c: &crate::sync::idle::IdleCycle) -> Result<()> {
        let c = c.clone();
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "INSERT INTO idle_cycles (instance, run_id, mode, at_us, seq, cursor_seq) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (instance) DO UPDATE SET \
                 run_id = excluded.run_id, mode = excluded.mode, at_us = excluded.at_us, \
                 seq = excluded.seq, cursor_seq = excluded.cursor_seq",
            )
            .and_then(|mut st| {
                st.execute(params![
                    c.instance,
                    c.run_id,
                    c.mode,
                    c.at_us,
                    c.seq as i64,
                    c.cursor_seq as i64
                ])
            })
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    /// Every instance's last idle cycle, by instance name.
    pub(crate) async fn idle_cycles(&self) -> Result<Vec<crate::sync::idle::IdleCycle>> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT instance, run_id, mode, at_us, seq, cursor_seq FROM idle_cycles ORDER BY instance",
                )
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql)? {
                out.push(crate::sync::idle::IdleCycle {
                    instance: text(r, 0)?.to_string(),
                    run_id: text(r, 1)?.to_string(),
                    mode: text(r, 2)?.to_string(),
                    at_us: int(r, 3)?,
                    seq: int(r, 4)? as u64,
                    cursor_seq: int(r, 5)? as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Take the advisory lock `name` (a `flock` on `DB.NAME.lock` beside the database), or
    /// None when another process holds it. The operating system releases it when the
    /// holder dies, so a crashed holder never leaves it taken.
    pub fn try_lock(&self, name: &str) -> Result<Option<std::fs::File>> {
        let f = self.lock_file(name)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// [`Self::try_lock`], waiting up to `wait` for the holder to let go. The wait blocks in
    /// the kernel (woken the moment the lock is free, so a holder that takes it again at
    /// once cannot starve us as polling could); a thread still waiting when `wait` ends
    /// lets go of the lock as soon as it gets it.
    pub async fn lock_within(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<Option<std::fs::File>> {
        if let Some(f) = self.try_lock(name)? {
            return Ok(Some(f));
        }
        if wait.is_zero() {
            return Ok(None);
        }
        let f = self.lock_file(name)?;
        let waiting = tokio::task::spawn_blocking(move || f.lock().map(|()| f));
        match tokio::time::timeout(wait, waiting).await {
            Ok(Ok(Ok(f))) => Ok(Some(f)),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(e)) => Err(Error::Store(format!("waiting for the lock {name}: {e}"))),
            Err(_) => Ok(None),
        }
    }

    fn lock_file(&self, name: &str) -> Result<std::fs::File> {
        let mut p = self.inner.path.clone().into_os_string();
        p.push(format!(".{name}.lock"));
        let mut open = std::fs::OpenOptions::new();
        open.create(true).truncate(false).write(true);
        // Owner only, whatever the process umask: it sits beside the store's data.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        Ok(open.open(&p)?)
    }
}

//! SQLite backend: one file, WAL, appends serialised by `BEGIN IMMEDIATE`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::migrate;
use super::store::{self, AppendOutcome, Batch, OpenMode, Snapshot, Store};
use super::{hash_from_slice, Hash, StoredEvent};
use crate::error::{Error, Result};

/// Rows per multi-row INSERT (11 parameters each, well under SQLite's 32766 limit).
const INSERT_CHUNK: usize = 1000;

const COLUMNS: &str = "seq, stream, stream_version, event_type, schema_version, instance, \
                       recorded_at_us, idempotency_key, payload, prev_hash, hash";

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    insert_full_chunk: String,
}

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

/// Errors SQLite gives for a file that is not a usable database, as one clear message.
fn classify(path: &Path, e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("26") => {
                return Error::BadInput(format!(
                    "{} is not a dirsync store (not an SQLite database)",
                    path.display()
                ))
            }
            Some("11") => {
                return Error::BadInput(format!(
                    "{} is corrupt (SQLite: database disk image is malformed)",
                    path.display()
                ))
            }
            Some("14") => {
                return Error::BadInput(format!(
                    "store {} cannot be opened (missing? run `dirsync init`)",
                    path.display()
                ))
            }
            _ => {}
        }
    }
    Error::Store(format!("{}: {e}", path.display()))
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
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(Error::store)?
            .filename(&path)
            .create_if_missing(mode == OpenMode::Init)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(60))
            .pragma("cache_size", "-65536");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| classify(&path, e))?;
        let store = SqliteStore {
            pool,
            path: path.clone(),
            insert_full_chunk: insert_sql(INSERT_CHUNK),
        };
        let found = store.schema_version().await.map_err(|e| match e {
            Error::Store(_) => {
                Error::BadInput(format!("{} is not a dirsync store", path.display()))
            }
            other => other,
        })?;
        match mode {
            OpenMode::Init => store.migrate(found).await?,
            OpenMode::Existing => migrate::check(found, migrate::SQLITE)?,
        }
        Ok(store)
    }

    async fn schema_version(&self) -> Result<i64> {
        let has_table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'dirsync_schema'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify(&self.path, e))?;
        if has_table.is_none() {
            let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| classify(&self.path, e))?;
            if tables > 0 {
                return Err(Error::BadInput(format!(
                    "{} is an SQLite database but not a dirsync store",
                    self.path.display()
                )));
            }
            return Ok(0);
        }
        let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM dirsync_schema")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify(&self.path, e))?;
        Ok(v.unwrap_or(0))
    }

    async fn migrate(&self, found: i64) -> Result<()> {
        let latest = migrate::latest(migrate::SQLITE);
        if found > latest {
            return Err(Error::SchemaTooNew {
                found,
                supported: latest,
            });
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(migrate::SCHEMA_TABLE).execute(&mut *tx).await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM dirsync_schema")
            .fetch_one(&mut *tx)
            .await?;
        for (v, sql) in migrate::SQLITE {
            if *v > current.unwrap_or(0) {
                sqlx::raw_sql(AssertSqlSafe(*sql)).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO dirsync_schema (version, applied_at_us) VALUES (?, ?)")
                    .bind(v)
                    .bind(store::now_us())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_rows(
        conn: &mut sqlx::SqliteConnection,
        full_chunk_sql: &str,
        rows: &[StoredEvent],
    ) -> Result<()> {
        for chunk in rows.chunks(INSERT_CHUNK) {
            let sql = if chunk.len() == INSERT_CHUNK {
                full_chunk_sql.to_string()
            } else {
                insert_sql(chunk.len())
            };
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.seq as i64)
                    .bind(r.stream.as_str())
                    .bind(r.stream_version as i64)
                    .bind(r.event_type.as_str())
                    .bind(r.schema_version as i64)
                    .bind(r.instance.as_str())
                    .bind(r.recorded_at_us)
                    .bind(r.idempotency_key.as_deref())
                    .bind(r.payload.as_str())
                    .bind(&r.prev_hash[..])
                    .bind(&r.hash[..]);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn versions(
        conn: &mut sqlx::SqliteConnection,
        streams: &[&str],
    ) -> Result<HashMap<String, u64>> {
        let mut out = HashMap::with_capacity(streams.len());
        for s in streams {
            let v: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream = ?")
                .bind(*s)
                .fetch_optional(&mut *conn)
                .await?;
            out.insert((*s).to_string(), v.unwrap_or(0) as u64);
        }
        Ok(out)
    }

    async fn finish(
        conn: &mut sqlx::SqliteConnection,
        versions: &HashMap<String, u64>,
        last: &StoredEvent,
    ) -> Result<()> {
        for (s, v) in versions {
            sqlx::query(
                "INSERT INTO streams (stream, version) VALUES (?, ?) \
                 ON CONFLICT (stream) DO UPDATE SET version = excluded.version",
            )
            .bind(s.as_str())
            .bind(*v as i64)
            .execute(&mut *conn)
            .await?;
        }
        sqlx::query("UPDATE log_head SET seq = ?, hash = ? WHERE id = 1")
            .bind(last.seq as i64)
            .bind(&last.hash[..])
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn head_on(conn: &mut sqlx::SqliteConnection) -> Result<(u64, Hash)> {
        let row = sqlx::query("SELECT seq, hash FROM log_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
        let seq: i64 = row.try_get(0)?;
        let hash: Vec<u8> = row.try_get(1)?;
        Ok((seq as u64, hash_from_slice(seq as u64, &hash)?))
    }
}

pub(crate) fn row_to_event(r: &SqliteRow) -> Result<StoredEvent> {
    let seq: i64 = r.try_get(0)?;
    let prev: &[u8] = r.try_get(9)?;
    let hash: &[u8] = r.try_get(10)?;
    Ok(StoredEvent {
        seq: seq as u64,
        stream: r.try_get(1)?,
        stream_version: r.try_get::<i64, _>(2)? as u64,
        event_type: r.try_get(3)?,
        schema_version: r.try_get::<i64, _>(4)? as u32,
        instance: r.try_get(5)?,
        recorded_at_us: r.try_get(6)?,
        idempotency_key: r.try_get(7)?,
        payload: r.try_get(8)?,
        prev_hash: hash_from_slice(seq as u64, prev)?,
        hash: hash_from_slice(seq as u64, hash)?,
    })
}

impl Store for SqliteStore {
    async fn append(&self, batch: Batch) -> Result<AppendOutcome> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(key) = &batch.idempotency_key {
            let seen: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM events WHERE idempotency_key = ?")
                    .bind(key.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(seq) = seen {
                tx.rollback().await?;
                return Ok(AppendOutcome::Duplicate {
                    first_seq: seq as u64,
                });
            }
        }
        let head = Self::head_on(&mut tx).await?;
        if batch.events.is_empty() {
            return Ok(AppendOutcome::Appended {
                first_seq: head.0 + 1,
                last_seq: head.0,
            });
        }
        let mut versions = Self::versions(&mut tx, &batch.streams()).await?;
        let rows = store::prepare(head, &mut versions, &batch, store::now_us())?;
        Self::insert_rows(&mut tx, &self.insert_full_chunk, &rows).await?;
        let last = &rows[rows.len() - 1];
        Self::finish(&mut tx, &versions, last).await?;
        tx.commit().await?;
        Ok(AppendOutcome::Appended {
            first_seq: rows[0].seq,
            last_seq: last.seq,
        })
    }

    async fn read(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT seq, stream, stream_version, event_type, schema_version, instance, \
             recorded_at_us, idempotency_key, payload, prev_hash, hash \
             FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn head(&self) -> Result<(u64, Hash)> {
        let mut conn = self.pool.acquire().await?;
        Self::head_on(&mut conn).await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        Ok(Self::versions(&mut conn, &[stream])
            .await?
            .get(stream)
            .copied()
            .unwrap_or(0))
    }

    async fn append_raw(&self, events: &[StoredEvent]) -> Result<()> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let head = Self::head_on(&mut tx).await?;
        let mut streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let versions = Self::versions(&mut tx, &streams).await?;
        let next = store::check_raw_continuation(head, &versions, events)?;
        Self::insert_rows(&mut tx, &self.insert_full_chunk, events).await?;
        Self::finish(&mut tx, &next, last).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>> {
        let row = sqlx::query("SELECT seq, hash, body FROM snapshots WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let seq: i64 = r.try_get(0)?;
            let hash: Vec<u8> = r.try_get(1)?;
            Ok(Snapshot {
                name: name.to_string(),
                seq: seq as u64,
                hash: hash_from_slice(seq as u64, &hash)?,
                body: r.try_get(2)?,
            })
        })
        .transpose()
    }

    async fn save_snapshot(&self, snap: &Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (name, seq, hash, body) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, body = excluded.body",
        )
        .bind(snap.name.as_str())
        .bind(snap.seq as i64)
        .bind(&snap.hash[..])
        .bind(&snap.body[..])
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

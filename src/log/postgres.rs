//! PostgreSQL backend: appends serialise on the `log_head` row (`SELECT ... FOR UPDATE`),
//! a small batch's rows go in with `INSERT ... SELECT FROM UNNEST(...)`, a large one's with
//! binary `COPY`, a group of events at a time, each followed by their history index rows.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::control::{self, StoredControl};
use super::hash::EventRef;
use super::index;
use super::migrate;
use super::store::{self, redact_url, AppendOutcome, Batch, Keep, OpenMode, Snapshot, Store};
use super::{hash_from_slice, Hash, StoredEvent};
use crate::error::{Error, Result};

const INSERT_CHUNK: usize = 10_000;

/// Batches at least this large go in with binary `COPY` rather than `INSERT`: two round
/// trips instead of one, but the server's fastest way in.
const COPY_MIN: usize = 256;
const COPY_EVENTS: &str = "COPY events (seq, stream, stream_version, event_type, schema_version, \
     instance, recorded_at_us, idempotency_key, payload, prev_hash, hash) FROM STDIN (FORMAT binary)";

/// The first and last seq written, and the last hash.
type Written = (u64, u64, Hash);

/// The binary `COPY` header: signature, flags, no extension.
fn copy_header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
}

/// One row of `COPY_EVENTS` in the binary `COPY` format: a field count, then each field as
/// a length and its binary representation (big-endian integers, text as UTF-8, bytea as is).
fn copy_row(buf: &mut Vec<u8>, r: &StoredEvent) {
    fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
        buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
        buf.extend_from_slice(b);
    }
    fn int8(buf: &mut Vec<u8>, v: i64) {
        bytes(buf, &v.to_be_bytes());
    }
    buf.extend_from_slice(&11i16.to_be_bytes());
    int8(buf, r.seq as i64);
    bytes(buf, r.stream.as_bytes());
    int8(buf, r.stream_version as i64);
    bytes(buf, r.event_type.as_bytes());
    bytes(buf, &(r.schema_version as i32).to_be_bytes());
    bytes(buf, r.instance.as_bytes());
    int8(buf, r.recorded_at_us);
    match &r.idempotency_key {
        Some(k) => bytes(buf, k.as_bytes()),
        None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    bytes(buf, r.payload.as_bytes());
    bytes(buf, &r.prev_hash);
    bytes(buf, &r.hash);
}

/// End the binary `COPY` data and the `COPY`.
async fn copy_finish(mut copy: sqlx::postgres::PgCopyIn<&mut sqlx::PgConnection>) -> Result<()> {
    match copy.send(&(-1i16).to_be_bytes()[..]).await {
        Ok(_) => {
            copy.finish().await?;
            Ok(())
        }
        Err(e) => {
            let _ = copy.abort("dirsync: the append failed").await;
            Err(e.into())
        }
    }
}

/// Events per `COPY` of a large batch. Each `COPY` is followed by the history index rows
/// of its events: the rows of a million-event import are held a group at a time, not all
/// at once (they were 400 MB of the import's peak).
const COPY_GROUP: u64 = 50_000;

/// A prepared part of a batch: its `COPY` rows, what it wrote, its history index rows and
/// its `event_type_blocks` rows.
type PreparedPart = (Vec<u8>, Written, index::Rows, Vec<(String, i64)>);

/// Parts gathered for one `COPY`: the rows (after the header), how many events, and their
/// index rows.
struct CopyGroup {
    data: Vec<u8>,
    events: u64,
    index: index::Rows,
    types: Vec<(String, i64)>,
}

impl CopyGroup {
    /// `COPY` the events, then insert their index rows.
    async fn write(self, conn: &mut sqlx::PgConnection) -> Result<()> {
        let mut copy = conn.copy_in_raw(COPY_EVENTS).await?;
        if let Err(e) = copy.send(self.data).await {
            let _ = copy.abort("dirsync: the append failed").await;
            return Err(e.into());
        }
        copy_finish(copy).await?;
        let mut ready = self.index.ready();
        let mut types = self.types;
        types.sort_unstable();
        types.dedup();
        ready.types = types;
        PgStore::insert_index(conn, &ready).await
    }
}

/// Prepare a large batch chunk by chunk on a blocking thread while the chunks already
/// prepared go to the server, [`COPY_GROUP`] events per binary `COPY`, each followed by
/// its index rows. The rows are exactly those one `prepare` of the whole batch gives (see
/// the SQLite backend's `insert_pipelined`). Returns what was written and the streams' new
/// versions.
async fn copy_batch(
    conn: &mut sqlx::PgConnection,
    head: (u64, Hash),
    versions: HashMap<String, u64>,
    control: StoredControl,
    batch: Batch,
    now_us: i64,
    keep: Option<Keep>,
) -> Result<(Written, (HashMap<String, u64>, StoredControl))> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<PreparedPart>>(2);
    let preparer = tokio::task::spawn_blocking(move || {
        // A short first part lets the COPY start sooner.
        let mut parts = store::Parts::new(head, versions, batch, now_us, keep, control);
        for rows in parts.by_ref() {
            let msg = rows.and_then(|(rows, part_index)| {
                let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                    return Err(Error::Store("an append prepared no rows".into()));
                };
                let mut types = index::Ready::default();
                types.add_types(&rows);
                let mut buf = Vec::with_capacity(rows.len() * 512);
                for r in &rows {
                    copy_row(&mut buf, r);
                }
                Ok((
                    buf,
                    (first.seq, last.seq, last.hash),
                    part_index,
                    types.types,
                ))
            });
            let failed = msg.is_err();
            if tx.blocking_send(msg).is_err() || failed {
                break;
            }
        }
        parts.finish()
    });
    // A conflict comes with the first part: it is returned before anything is sent.
    let mut written: Option<Written> = None;
    let mut group: Option<CopyGroup> = None;
    loop {
        let msg = rx.recv().await.transpose()?;
        let ended = msg.is_none();
        if let Some((buf, w, rows, types)) = msg {
            written = Some(written.map_or(w, |first| (first.0, w.1, w.2)));
            let g = group.get_or_insert_with(|| {
                let mut data = Vec::with_capacity(buf.len() + 19);
                copy_header(&mut data);
                CopyGroup {
                    data,
                    events: 0,
                    index: index::Rows::default(),
                    types: Vec::new(),
                }
            });
            g.data.extend_from_slice(&buf);
            g.events += w.1 + 1 - w.0;
            g.index.extend(rows);
            g.types.extend(types);
        }
        let full = group.as_ref().is_some_and(|g| g.events >= COPY_GROUP);
        if let Some(g) = group.take_if(|_| full || ended) {
            g.write(conn).await?;
        }
        if ended {
            break;
        }
    }
    let versions = preparer.await.map_err(Error::store)?;
    let written = written.ok_or_else(|| Error::Store("preparing the append failed".into()))?;
    Ok((written, versions))
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
    pub(crate) memo: super::store::Memo,
}

/// How long a session may sit idle inside a transaction before the server ends it. No
/// transaction of dirsync's pauses between statements for more than a moment (the longest
/// gap is preparing the next part of a batch); a holder cut off mid-transaction delays a
/// standby's take-over by at most this much.
const IDLE_IN_TRANSACTION: &str = "10s";

impl PgStore {
    pub async fn open(url: &str, mode: OpenMode) -> Result<PgStore> {
        let shown = redact_url(url);
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::Config(format!("store.url `{shown}`: {e}")))?;
        // A client cut off in the middle of a transaction (a network partition that drops
        // packets without a reset) would keep its row locks, the log's head among them, for
        // as long as the server's TCP keepalive takes: every other instance's append,
        // a standby's take-over included, would wait. The server ends such a session instead.
        let opts = opts.options([("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION)]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| Error::Store(format!("cannot connect to {shown}: {e}")))?;
        let store = PgStore {
            pool,
            url: shown,
            memo: Default::default(),
        };
        let found = store.schema_version().await?;
        match mode {
            OpenMode::Init => store.migrate(found).await?,
            OpenMode::Existing => migrate::check(found, migrate::POSTGRES)?,
        }
        Ok(store)
    }

    async fn schema_version(&self) -> Result<i64> {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('dirsync_schema')::text")
                .fetch_one(&self.pool)
                .await?;
        if exists.is_none() {
            return Ok(0);
        }
        let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM dirsync_schema")
            .fetch_one(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn migrate(&self, found: i64) -> Result<()> {
        let latest = migrate::latest(migrate::POSTGRES);
        if found > latest {
            return Err(Error::SchemaTooNew {
                found,
                supported: latest,
            });
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // Two `dirsync init` at once: the second waits here, then sees the work done.
        sqlx::query("SELECT pg_advisory_xact_lock(7208110)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(migrate::SCHEMA_TABLE).execute(&mut *tx).await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM dirsync_schema")
            .fetch_one(&mut *tx)
            .await?;
        for (v, sql) in migrate::POSTGRES {
            if *v > current.unwrap_or(0) {
                sqlx::raw_sql(AssertSqlSafe(*sql)).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO dirsync_schema (version, applied_at_us) VALUES ($1, $2)")
                    .bind(v)
                    .bind(store::now_us())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let fill = migrate::index_to_fill(current.unwrap_or(0), migrate::POSTGRES);
        if fill.any() {
            Self::fill_index(&mut tx, fill).await?;
        }
        if migrate::control_to_fill(current.unwrap_or(0), migrate::POSTGRES) {
            let (head, _) = Self::lock_head(&mut tx).await?;
            let c = Self::refold_control(&mut tx, head).await?;
            Self::write_control(&mut tx, &c).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored control projections row.
    async fn read_control(conn: &mut sqlx::PgConnection) -> Result<control::Row> {
        let row = sqlx::query("SELECT seq, body FROM control WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(r) => {
                let seq: i64 = r.try_get(0)?;
                StoredControl::read(seq as u64, r.try_get(1)?)
            }
            None => Ok(control::Row::Missing),
        }
    }

    /// The control projections at `head`, the seq the append locked: the stored row, or,
    /// when it is not at `head` (or missing, or of another format), folded again from the
    /// log.
    async fn control_at(conn: &mut sqlx::PgConnection, head: u64) -> Result<StoredControl> {
        match Self::read_control(conn).await? {
            control::Row::Current(c) if c.seq == head => Ok(*c),
            _ => Self::refold_control(conn, head).await,
        }
    }

    /// The control projections folded from the log up to `head` (`src/log/control.rs`).
    async fn refold_control(conn: &mut sqlx::PgConnection, head: u64) -> Result<StoredControl> {
        let mut c = StoredControl::default();
        let sql = control::refold_sql(true);
        loop {
            let page = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(c.seq as i64)
                .bind(control::REFOLD_PAGE)
                .fetch_all(&mut *conn)
                .await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                let seq: i64 = r.try_get(0)?;
                let schema: i32 = r.try_get(2)?;
                c.apply_stored(
                    seq as u64,
                    r.try_get(1)?,
                    schema as u32,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                )?;
            }
        }
        c.seq = head;
        c.touched = true;
        Ok(c)
    }

    /// Write the control projections back: the whole row when an event changed them,
    /// else only its seq.
    async fn write_control(conn: &mut sqlx::PgConnection, c: &StoredControl) -> Result<()> {
        if c.touched {
            sqlx::query(
                "INSERT INTO control (id, seq, body) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, body = excluded.body",
            )
            .bind(c.seq as i64)
            .bind(c.body()?)
            .execute(&mut *conn)
            .await?;
        } else {
            sqlx::query("UPDATE control SET seq = $1 WHERE id = 1")
                .bind(c.seq as i64)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn lock_head(conn: &mut sqlx::PgConnection) -> Result<(u64, Hash)> {
        let row = sqlx::query("SELECT seq, hash FROM log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *conn)
            .await?;
        let seq: i64 = row.try_get(0)?;
        let hash: Vec<u8> = row.try_get(1)?;
        Ok((seq as u64, hash_from_slice(seq as u64, &hash)?))
    }

    async fn versions(
        conn: &mut sqlx::PgConnection,
        streams: &[&str],
    ) -> Result<HashMap<String, u64>> {
        let names: Vec<String> = streams.iter().map(|s| s.to_string()).collect();
        let rows = sqlx::query("SELECT stream, version FROM streams WHERE stream = ANY($1)")
            .bind(&names)
            .fetch_all(&mut *conn)
            .await?;
        let mut out: HashMap<String, u64> = names.into_iter().map(|n| (n, 0)).collect();
        for r in rows {
            let s: String = r.try_get(0)?;
            let v: i64 = r.try_get(1)?;
            out.insert(s, v as u64);
        }
        Ok(out)
    }

    /// Insert history index rows (`src/log/index.rs`); a key already known is kept.
    /// `event_anchors` rows go in without `ON CONFLICT` (a speculative insertion per row):
    /// they are new whenever they are written, the seqs being those just appended (or, in
    /// the migration, the table being empty) and each row once in [`index::Ready`].
    async fn insert_index(conn: &mut sqlx::PgConnection, rows: &index::Ready) -> Result<()> {
        for chunk in rows.anchors.chunks(INSERT_CHUNK) {
            let (anchors, seqs): (Vec<i64>, Vec<i64>) = chunk.iter().copied().unzip();
            sqlx::query(
                "INSERT INTO event_anchors (anchor_hash, seq) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
            )
            .bind(&anchors)
            .bind(&seqs)
            .execute(&mut *conn)
            .await?;
        }
        for chunk in rows.keys.chunks(INSERT_CHUNK) {
            let (keys, anchors): (Vec<&str>, Vec<&str>) =
                chunk.iter().map(|(k, a)| (k.as_str(), a.as_str())).unzip();
            sqlx::query(
                "INSERT INTO object_keys (key, anchor) SELECT * FROM UNNEST($1::text[], $2::text[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&keys)
            .bind(&anchors)
            .execute(&mut *conn)
            .await?;
        }
        Self::insert_types(conn, rows).await
    }

    /// Insert `event_type_blocks` rows.
    async fn insert_types(conn: &mut sqlx::PgConnection, rows: &index::Ready) -> Result<()> {
        for chunk in rows.types.chunks(INSERT_CHUNK) {
            let (types, blocks): (Vec<&str>, Vec<i64>) =
                chunk.iter().map(|(t, b)| (t.as_str(), *b)).unzip();
            sqlx::query(
                "INSERT INTO event_type_blocks (event_type, block) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
            )
            .bind(&types)
            .bind(&blocks)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Fill the history index tables `fill` names from the events already stored (a
    /// migration that adds or empties them).
    async fn fill_index(conn: &mut sqlx::PgConnection, fill: migrate::Fill) -> Result<()> {
        let mut after = 0i64;
        loop {
            let page = sqlx::query(
                "SELECT seq, event_type, payload FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(migrate::FILL_PAGE)
            .fetch_all(&mut *conn)
            .await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.try_get(0)?;
            let mut rows = index::Rows::default();
            for r in &page {
                let seq: i64 = r.try_get(0)?;
                rows.add(seq as u64, r.try_get(1)?, r.try_get(2)?);
            }
            let mut ready = rows.ready();
            if !fill.anchors {
                ready.anchors.clear();
            }
            if !fill.keys {
                ready.keys.clear();
            }
            Self::insert_index(conn, &ready).await?;
        }
    }

    async fn insert_rows(conn: &mut sqlx::PgConnection, rows: &[StoredEvent]) -> Result<()> {
        Self::insert_index(conn, &index::Ready::of(rows)).await?;
        if rows.len() >= COPY_MIN {
            let mut buf = Vec::new();
            copy_header(&mut buf);
            for r in rows {
                copy_row(&mut buf, r);
            }
            let mut copy = conn.copy_in_raw(COPY_EVENTS).await?;
            return match copy.send(buf).await {
                Ok(_) => copy_finish(copy).await,
                Err(e) => {
                    let _ = copy.abort("dirsync: the append failed").await;
                    Err(e.into())
                }
            };
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let n = chunk.len();
            let mut seq = Vec::with_capacity(n);
            let mut stream = Vec::with_capacity(n);
            let mut sv = Vec::with_capacity(n);
            let mut et = Vec::with_capacity(n);
            let mut schema = Vec::with_capacity(n);
            let mut inst = Vec::with_capacity(n);
            let mut at = Vec::with_capacity(n);
            let mut key = Vec::with_capacity(n);
            let mut payload = Vec::with_capacity(n);
            let mut prev = Vec::with_capacity(n);
            let mut hash = Vec::with_capacity(n);
            for r in chunk {
                seq.push(r.seq as i64);
                stream.push(r.stream.as_str());
                sv.push(r.stream_version as i64);
                et.push(r.event_type.as_str());
                schema.push(r.schema_version as i32);
                inst.push(r.instance.as_str());
                at.push(r.recorded_at_us);
                key.push(r.idempotency_key.as_deref());
                payload.push(r.payload.as_str());
                prev.push(&r.prev_hash[..]);
                hash.push(&r.hash[..]);
            }
            sqlx::query(
                "INSERT INTO events (seq, stream, stream_version, event_type, schema_version, \
                 instance, recorded_at_us, idempotency_key, payload, prev_hash, hash) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], \
                 $5::int[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::bytea[], $11::bytea[])",
            )
            .bind(&seq)
            .bind(&stream)
            .bind(&sv)
            .bind(&et)
            .bind(&schema)
            .bind(&inst)
            .bind(&at)
            .bind(&key)
            .bind(&payload)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn finish(
        conn: &mut sqlx::PgConnection,
        versions: &HashMap<String, u64>,
        last_seq: u64,
        last_hash: &Hash,
    ) -> Result<()> {
        let (names, vs): (Vec<&str>, Vec<i64>) = versions
            .iter()
            .map(|(s, v)| (s.as_str(), *v as i64))
            .unzip();
        sqlx::query(
            "INSERT INTO streams (stream, version) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (stream) DO UPDATE SET version = excluded.version",
        )
        .bind(&names)
        .bind(&vs)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(last_seq as i64)
            .bind(&last_hash[..])
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

const SELECT_EVENTS: &str = "SELECT seq, stream, stream_version, event_type, schema_version, \
     instance, recorded_at_us, idempotency_key, payload, prev_hash, hash \
     FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";

/// One row of `SELECT_EVENTS`, borrowed from the row's buffer.
fn row_ref(r: &PgRow) -> Result<EventRef<'_>> {
    let seq = r.try_get::<i64, _>(0)? as u64;
    Ok(EventRef {
        seq,
        stream: r.try_get(1)?,
        stream_version: r.try_get::<i64, _>(2)? as u64,
        event_type: r.try_get(3)?,
        schema_version: r.try_get::<i32, _>(4)? as u32,
        instance: r.try_get(5)?,
        recorded_at_us: r.try_get(6)?,
        idempotency_key: r.try_get(7)?,
        payload: r.try_get(8)?,
        prev_hash: hash_from_slice(seq, r.try_get(9)?)?,
        hash: hash_from_slice(seq, r.try_get(10)?)?,
    })
}

impl PgStore {
    /// Visit up to `limit` events with seq > `after`, in order: the page is fetched here and
    /// `f` adds each event, borrowed from the rows, to `page` on a blocking thread. Returns
    /// the page, the number of events visited and the last one's seq. A row that cannot be
    /// read fails the whole page.
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
        let rows = sqlx::query(SELECT_EVENTS)
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        tokio::task::spawn_blocking(move || {
            let mut page = page;
            let mut last = None;
            for r in &rows {
                let e = row_ref(r)?;
                f(&mut page, &e)?;
                last = Some(e.seq);
            }
            Ok((page, rows.len(), last))
        })
        .await
        .map_err(Error::store)?
    }
}

impl PgStore {
    /// An append; with `keep`, the batch's events are handed over as they are prepared.
    async fn append_with(&self, batch: Batch, keep: Option<Keep>) -> Result<AppendOutcome> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let head = Self::lock_head(&mut tx).await?;
        if let Some(key) = &batch.idempotency_key {
            let seen: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM events WHERE idempotency_key = $1")
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
        if batch.events.is_empty() {
            return Ok(AppendOutcome::nothing_after(head.0));
        }
        let mut versions = Self::versions(&mut tx, &batch.streams()).await?;
        let mut control = Self::control_at(&mut tx, head.0).await?;
        let now = store::now_us();
        let (first_seq, last_seq, last_hash) = if batch.events.len() < COPY_MIN {
            let rows = store::prepare(head, &mut versions, &batch, now)?;
            Self::insert_rows(&mut tx, &rows).await?;
            match (rows.first(), rows.last()) {
                (Some(first), Some(last)) => {
                    let written = (first.seq, last.seq, last.hash);
                    control.apply_new(first.seq, now, &batch.events);
                    batch.hand_over(first.seq, now, keep);
                    written
                }
                _ => return Err(Error::Store("an append prepared no rows".into())),
            }
        } else {
            let (written, (next, folded)) =
                copy_batch(&mut tx, head, versions, control, batch, now, keep).await?;
            versions = next;
            control = folded;
            written
        };
        Self::finish(&mut tx, &versions, last_seq, &last_hash).await?;
        Self::write_control(&mut tx, &control).await?;
        tx.commit().await?;
        Ok(AppendOutcome::Appended {
            first_seq,
            last_seq,
            recorded_at_us: now,
        })
    }
}

impl Store for PgStore {
    async fn append(&self, batch: Batch) -> Result<AppendOutcome> {
        self.append_with(batch, None).await
    }

    async fn append_keeping(&self, batch: Batch, keep: Keep) -> Result<AppendOutcome> {
        self.append_with(batch, Some(keep)).await
    }

    async fn read(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(SELECT_EVENTS)
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(row_ref(r)?.to_owned())).collect()
    }

    async fn head(&self) -> Result<(u64, Hash)> {
        let row = sqlx::query("SELECT seq, hash FROM log_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let seq: i64 = row.try_get(0)?;
        let hash: Vec<u8> = row.try_get(1)?;
        Ok((seq as u64, hash_from_slice(seq as u64, &hash)?))
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
        let mut tx = conn.begin().await?;
        let head = Self::lock_head(&mut tx).await?;
        let mut streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let versions = Self::versions(&mut tx, &streams).await?;
        let next = store::check_raw_continuation(head, &versions, events)?;
        let mut control = Self::control_at(&mut tx, head.0).await?;
        control.apply_rows(events)?;
        Self::insert_rows(&mut tx, events).await?;
        Self::finish(&mut tx, &next, last.seq, &last.hash).await?;
        Self::write_control(&mut tx, &control).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>> {
        let row = sqlx::query("SELECT seq, hash, body FROM snapshots WHERE name = $1")
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
            "INSERT INTO snapshots (name, seq, hash, body) VALUES ($1, $2, $3, $4) \
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

    async fn control(&self) -> Result<StoredControl> {
        let mut conn = self.pool.acquire().await?;
        match Self::read_control(&mut conn).await? {
            control::Row::Current(c) => Ok(*c),
            control::Row::Stale { seq } => Self::refold_control(&mut conn, seq).await,
            control::Row::Missing => Err(Error::Store(
                "the control projections row is missing".into(),
            )),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

impl PgStore {
    pub(crate) async fn history(
        &self,
        q: &store::HistoryQuery,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        const COLUMNS: &str = "seq, stream, stream_version, event_type, schema_version, \
             instance, recorded_at_us, idempotency_key, payload, prev_hash, hash";
        let sql = q.sql(COLUMNS, true);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(a) = &q.anchor {
            query = query.bind(index::anchor_hash(a));
        }
        if let Some(t) = &q.event_type {
            query = query.bind(t.as_str());
        }
        let rows = query
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(q.until_or_max())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(row_ref(r)?.to_owned())).collect()
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
        Ok(sqlx::query_scalar(
            "SELECT block FROM event_type_blocks WHERE event_type = $1 \
             AND block >= $2 AND block <= $3 ORDER BY block LIMIT $4",
        )
        .bind(event_type)
        .bind(from)
        .bind(to)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    pub(crate) async fn anchors_keyed(&self, lower: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT anchor FROM object_keys WHERE key = $1")
                .bind(lower)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Record `beat` as its instance's heartbeat (one row per instance, outside the chain).
    pub(crate) async fn beat(&self, b: &crate::ha::Heartbeat) -> Result<()> {
        sqlx::query(
            "INSERT INTO heartbeats (instance, role, epoch, at_us, host, pid) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance) DO UPDATE SET \
             role = excluded.role, epoch = excluded.epoch, at_us = excluded.at_us, \
             host = excluded.host, pid = excluded.pid",
        )
        .bind(&b.instance)
        .bind(&b.role)
        .bind(b.epoch as i64)
        .bind(b.at_us)
        .bind(&b.host)
        .bind(i64::from(b.pid))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every instance's last heartbeat, by instance name.
    pub(crate) async fn heartbeats(&self) -> Result<Vec<crate::ha::Heartbeat>> {
        let rows: Vec<(String, String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT instance, role, epoch, at_us, host, pid FROM heartbeats ORDER BY instance",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(instance, role, epoch, at_us, host, pid)| crate::ha::Heartbeat {
                    instance,
                    role,
                    epoch: epoch as u64,
                    at_us,
                    host,
                    pid: pid as u32,
                },
            )
            .collect())
    }

    /// Record `c` as its instance's last idle cycle (one row per instance, outside the chain).
    pub(crate) async fn idle_cycle(&self, c: &crate::sync::idle::IdleCycle) -> Result<()> {
        sqlx::query(
            "INSERT INTO idle_cycles (instance, run_id, mode, at_us, seq, cursor_seq) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance) DO UPDATE SET \
             run_id = excluded.run_id, mode = excluded.mode, at_us = excluded.at_us, \
             seq = excluded.seq, cursor_seq = excluded.cursor_seq",
        )
        .bind(&c.instance)
        .bind(&c.run_id)
        .bind(&c.mode)
        .bind(c.at_us)
        .bind(c.seq as i64)
        .bind(c.cursor_seq as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every instance's last idle cycle, by instance name.
    pub(crate) async fn idle_cycles(&self) -> Result<Vec<crate::sync::idle::IdleCycle>> {
        let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT instance, run_id, mode, at_us, seq, cursor_seq FROM idle_cycles ORDER BY instance",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(instance, run_id, mode, at_us, seq, cursor_seq)| crate::sync::idle::IdleCycle {
                    instance,
                    run_id,
                    mode,
                    at_us,
                    seq: seq as u64,
                    cursor_seq: cursor_seq as u64,
                },
            )
            .collect())
    }

    /// Take the session-level advisory lock `name` on a connection of its own, or None when
    /// another session holds it. The server releases it when that connection ends, so a
    /// crashed holder never leaves it taken.
    pub async fn try_lock(&self, name: &str) -> Result<Option<sqlx::PgConnection>> {
        let mut conn = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(format!("dirsync/{name}"))
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then_some(conn))
    }
}

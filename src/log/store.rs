//! The store trait, its two backends behind one enum, and the pure part of appending
//! (expectations, versions, hashes) that both backends share.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use super::control::StoredControl;
use super::hash::{self, Hash, HashInput};
use super::index;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Event, StoredEvent, SCHEMA_VERSION};
use crate::error::{Error, Result};

/// An event to append, with the stream it belongs to and the instance that observed it.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub stream: String,
    pub instance: String,
    pub event: Event,
}

impl NewEvent {
    pub fn new(stream: impl Into<String>, instance: impl Into<String>, event: Event) -> Self {
        NewEvent {
            stream: stream.into(),
            instance: instance.into(),
            event,
        }
    }
}

/// What the caller believes a stream's version is (its number of events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Any,
    NoStream,
    Exactly(u64),
}

impl Expected {
    fn holds(self, actual: u64) -> bool {
        match self {
            Expected::Any => true,
            Expected::NoStream => actual == 0,
            Expected::Exactly(v) => actual == v,
        }
    }
    fn describe(self) -> String {
        match self {
            Expected::Any => "any".into(),
            Expected::NoStream => "0 (no stream)".into(),
            Expected::Exactly(v) => v.to_string(),
        }
    }
}

/// One atomic append: all events are written, in order, or none.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub events: Vec<NewEvent>,
    /// Conditions on stream versions, checked atomically with the write. A stream may be
    /// checked without being written (fencing checks the relationship stream this way).
    pub expect: Vec<(String, Expected)>,
    /// A retried append with the same key writes nothing and reports the first write.
    pub idempotency_key: Option<String>,
}

impl Batch {
    pub fn new(events: Vec<NewEvent>) -> Self {
        Batch {
            events,
            ..Batch::default()
        }
    }
    pub fn expect(mut self, stream: impl Into<String>, v: Expected) -> Self {
        self.expect.push((stream.into(), v));
        self
    }
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Hand the batch's events, stored as seqs `first_seq..` at `recorded_at_us`, to `keep`
    /// (see [`Store::append_keeping`]).
    pub(crate) fn hand_over(self, first_seq: u64, recorded_at_us: i64, keep: Option<Keep>) {
        if let Some(keep) = keep {
            // A folder that is gone does not want them.
            let _ = keep.send(KeptPart {
                first_seq,
                recorded_at_us,
                events: self.events.into_iter().map(|e| e.event).collect(),
            });
        }
    }

    /// Every stream whose version the append must read.
    pub(crate) fn streams(&self) -> Vec<&str> {
        let mut s: Vec<&str> = self
            .events
            .iter()
            .map(|e| e.stream.as_str())
            .chain(self.expect.iter().map(|(s, _)| s.as_str()))
            .collect();
        s.sort_unstable();
        s.dedup();
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        first_seq: u64,
        last_seq: u64,
        /// When the batch was recorded (one time for all its events).
        recorded_at_us: i64,
    },
    /// The idempotency key was seen before; nothing was written.
    Duplicate { first_seq: u64 },
}

impl AppendOutcome {
    /// An empty batch after the event `head_seq`: nothing written.
    pub(crate) fn nothing_after(head_seq: u64) -> AppendOutcome {
        AppendOutcome::Appended {
            first_seq: head_seq + 1,
            last_seq: head_seq,
            recorded_at_us: now_us(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        match *self {
            AppendOutcome::Appended { last_seq, .. } => last_seq,
            AppendOutcome::Duplicate { first_seq } => first_seq,
        }
    }
}

/// A part of a batch handed over by [`Store::append_keeping`]: its events, stored as seqs
/// `first_seq..` at `recorded_at_us`.
#[derive(Debug)]
pub struct KeptPart {
    pub first_seq: u64,
    pub recorded_at_us: i64,
    pub events: Vec<Event>,
}

/// Where [`Store::append_keeping`] hands a batch's events.
pub type Keep = std::sync::mpsc::Sender<KeptPart>;

/// A stored projection: the state as of `seq`, whose event had hash `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub seq: u64,
    pub hash: Hash,
    pub body: Vec<u8>,
}

/// Which events `log show` and `object show` read, through the history index
/// (`src/log/index.rs`) rather than a scan of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Events that touched this anchor (exactly as stored).
    pub anchor: Option<String>,
    /// Events of this type.
    pub event_type: Option<String>,
    /// Events with seq at most this.
    pub until: Option<u64>,
}

impl HistoryQuery {
    /// The SQL of one page of it, `$n`-numbered from `first` for PostgreSQL, `?` for SQLite:
    /// parameters (anchor?, event_type?, after, until, limit), in that order.
    pub(crate) fn sql(&self, columns: &str, numbered: bool) -> String {
        let mut n = 0;
        let mut p = || {
            n += 1;
            if numbered {
                format!("${n}")
            } else {
                format!("?{n}")
            }
        };
        let cols: Vec<String> = columns
            .split(',')
            .map(|c| format!("e.{}", c.trim()))
            .collect();
        let mut sql = format!("SELECT {} FROM ", cols.join(", "));
        let mut cond = Vec::new();
        let seq = if self.anchor.is_some() {
            sql.push_str("event_anchors a JOIN events e ON e.seq = a.seq");
            cond.push(format!("a.anchor_hash = {}", p()));
            "a.seq"
        } else {
            sql.push_str("events e");
            "e.seq"
        };
        if self.event_type.is_some() {
            cond.push(format!("e.event_type = {}", p()));
        }
        cond.push(format!("{seq} > {}", p()));
        cond.push(format!("{seq} <= {}", p()));
        sql.push_str(&format!(
            " WHERE {} ORDER BY {seq} LIMIT {}",
            cond.join(" AND "),
            p()
        ));
        sql
    }

    pub(crate) fn until_or_max(&self) -> i64 {
        self.until
            .map_or(i64::MAX, |u| u.min(i64::MAX as u64) as i64)
    }
}

/// Whether opening may create the store (only `dirsync init` may).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the store if needed and apply migrations.
    Init,
    /// The store must exist and be at this dirsync's schema.
    Existing,
}

/// Storage for the log. Implementations must make `append` atomic and serialised across
/// processes, so the chain stays one unbroken line whoever writes.
pub trait Store: Send + Sync {
    fn append(&self, batch: Batch) -> impl Future<Output = Result<AppendOutcome>> + Send;
    /// [`Store::append`] that hands the batch's events to `keep`, part by part and in
    /// order, as soon as each part's rows are prepared: a caller that folds them into its
    /// projections does so while the rows are written, and needs no copy of them. They go
    /// over before the append commits, so if it fails, whatever was made of them must be
    /// thrown away. A duplicate (a known idempotency key) hands over nothing.
    fn append_keeping(
        &self,
        batch: Batch,
        keep: Keep,
    ) -> impl Future<Output = Result<AppendOutcome>> + Send;
    /// Up to `limit` events with seq > `after`, in order.
    fn read(&self, after: u64, limit: u32)
        -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;
    /// The last seq and its hash (0 and GENESIS when empty).
    fn head(&self) -> impl Future<Output = Result<(u64, Hash)>> + Send;
    fn stream_version(&self, stream: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Append events exactly as stored elsewhere (log import). They must continue the chain.
    fn append_raw(&self, events: &[StoredEvent]) -> impl Future<Output = Result<()>> + Send;
    fn load_snapshot(&self, name: &str) -> impl Future<Output = Result<Option<Snapshot>>> + Send;
    fn save_snapshot(&self, snap: &Snapshot) -> impl Future<Output = Result<()>> + Send;
    /// The control projections as stored (`src/log/control.rs`): folded up to the head of
    /// the log as it was when read.
    fn control(&self) -> impl Future<Output = Result<StoredControl>> + Send;
    /// A short description for messages (never contains secrets).
    fn describe(&self) -> String;
}

/// A slot a store handle carries for what the projections remembered of the store (see
/// `project::replay::current`): it lives and dies with the handle and its clones, so a
/// process that opens a store once (a command, the service) reads its state once, and two
/// handles never share one. Type-erased: the log does not know the projections.
#[derive(Clone, Default)]
pub struct Memo(Arc<Slot>);

type Held = Box<dyn std::any::Any + Send>;

#[derive(Default)]
struct Slot(std::sync::Mutex<Option<Held>>);

impl Memo {
    /// Take what was remembered, if it is a `T`.
    pub fn take<T: 'static>(&self) -> Option<T> {
        let mut slot = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take()?.downcast::<T>() {
            Ok(t) => Some(*t),
            Err(_) => None,
        }
    }

    /// Remember `t`, in place of what was.
    pub fn put<T: Send + 'static>(&self, t: T) {
        let mut slot = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Box::new(t));
    }
}

impl Drop for Slot {
    /// What a handle remembers can be a million objects, and freeing them one by one took
    /// longer (0.5 s) than the rest of a command that changed nothing: they are freed on a
    /// thread of their own, which a process that exits meanwhile leaves to the system.
    fn drop(&mut self) {
        let held = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(held) = held {
            let _ = std::thread::Builder::new()
                .name("memo-free".into())
                .spawn(move || drop(held));
        }
    }
}

/// The store selected by `[store] url`.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AnyStore {
    /// This handle's [`Memo`].
    pub fn memo(&self) -> &Memo {
        match self {
            AnyStore::Sqlite(s) => &s.memo,
            AnyStore::Postgres(s) => &s.memo,
        }
    }

    /// Open `sqlite://PATH` or `postgres://...`.
    pub async fn open(url: &str, mode: OpenMode) -> Result<AnyStore> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(AnyStore::Sqlite(SqliteStore::open(path, mode).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(PgStore::open(url, mode).await?))
        } else {
            Err(Error::Config(format!(
                "store.url: `{}` is neither sqlite://PATH nor postgres://...",
                redact_url(url)
            )))
        }
    }
}

/// An advisory lock held across processes (and hosts, on PostgreSQL); released on drop
/// or when the holder dies.
pub enum StoreLock {
    Sqlite(#[allow(dead_code)] std::fs::File),
    Postgres(#[allow(dead_code)] sqlx::PgConnection),
}

impl StoreLock {
    /// Let go of it now. Dropping it also does, but on PostgreSQL only once the server has
    /// noticed the closed connection, a moment later: a caller that takes the same lock
    /// again right away (one cycle after another) releases it this way.
    pub async fn release(self) {
        match self {
            StoreLock::Sqlite(f) => drop(f),
            StoreLock::Postgres(mut c) => {
                let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                    .execute(&mut c)
                    .await;
                let _ = sqlx::Connection::close(c).await;
            }
        }
    }
}

impl AnyStore {
    /// Take the advisory lock `name`, or None when another process holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<StoreLock>> {
        Ok(match self {
            AnyStore::Sqlite(s) => s.try_lock(name)?.map(StoreLock::Sqlite),
            AnyStore::Postgres(s) => s.try_lock(name).await?.map(StoreLock::Postgres),
        })
    }

    /// Take the advisory lock `name`, waiting up to `wait` for its holder; None when it is
    /// still held then.
    pub async fn lock_within(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<Option<StoreLock>> {
        match self {
            AnyStore::Sqlite(s) => Ok(s.lock_within(name, wait).await?.map(StoreLock::Sqlite)),
            AnyStore::Postgres(_) => {
                let until = std::time::Instant::now() + wait;
                loop {
                    if let Some(l) = self.try_lock(name).await? {
                        return Ok(Some(l));
                    }
                    if std::time::Instant::now() >= until {
                        return Ok(None);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl AnyStore {
    /// Record a service's heartbeat (`[ha] heartbeat`): overwritten in place, outside the
    /// hash chain, so an idle deployment does not grow the log.
    pub async fn beat(&self, beat: &crate::ha::Heartbeat) -> Result<()> {
        match self {
            AnyStore::Sqlite(s) => s.beat(beat).await,
            AnyStore::Postgres(s) => s.beat(beat).await,
        }
    }

    /// Every instance's last heartbeat.
    pub async fn heartbeats(&self) -> Result<Vec<crate::ha::Heartbeat>> {
        match self {
            AnyStore::Sqlite(s) => s.heartbeats().await,
            AnyStore::Postgres(s) => s.heartbeats().await,
        }
    }

    /// Record an idle cycle (`sync::idle`): overwritten in place per instance, outside the
    /// hash chain.
    pub async fn idle_cycle(&self, c: &crate::sync::idle::IdleCycle) -> Result<()> {
        match self {
            AnyStore::Sqlite(s) => s.idle_cycle(c).await,
            AnyStore::Postgres(s) => s.idle_cycle(c).await,
        }
    }

    /// Every instance's last idle cycle, by instance name.
    pub async fn idle_cycles(&self) -> Result<Vec<crate::sync::idle::IdleCycle>> {
        match self {
            AnyStore::Sqlite(s) => s.idle_cycles().await,
            AnyStore::Postgres(s) => s.idle_cycles().await,
        }
    }

    /// The last idle cycle of `instance`, if it had one.
    pub async fn idle_cycle_of(
        &self,
        instance: &str,
    ) -> Result<Option<crate::sync::idle::IdleCycle>> {
        Ok(self
            .idle_cycles()
            .await?
            .into_iter()
            .find(|c| c.instance == instance))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl AnyStore {
    /// Up to `limit` events of `q` with seq > `after`, in order, read through the history
    /// index. With an anchor, the index finds the events by the anchor's hash and only those
    /// whose payload names the anchor are kept (pages are read until `limit` such events or
    /// the end, so a short answer still means the end).
    pub async fn history(
        &self,
        q: &HistoryQuery,
        mut after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let Some(anchor) = q.anchor.as_deref() else {
            return match q.event_type.as_deref() {
                Some(t) => self.history_of_type(q, t, after, limit).await,
                None => delegate!(self, s => s.history(q, after, limit).await),
            };
        };
        let mut out: Vec<StoredEvent> = Vec::new();
        while out.len() < limit as usize {
            let want = limit - out.len() as u32;
            let page = delegate!(self, s => s.history(q, after, want).await)?;
            let full = page.len() == want as usize;
            let Some(last) = page.last() else { break };
            after = last.seq;
            out.extend(
                page.into_iter()
                    .filter(|e| index::names(e.seq, &e.event_type, &e.payload, anchor)),
            );
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// [`Self::history`] of a type alone: the blocks of the log that hold the type
    /// (`event_type_blocks`), then their events of the type, a run of consecutive blocks
    /// at a time.
    async fn history_of_type(
        &self,
        q: &HistoryQuery,
        event_type: &str,
        mut after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        /// Blocks looked up at a time.
        const BLOCKS: u32 = 64;
        let until = q.until_or_max() as u64;
        let mut out: Vec<StoredEvent> = Vec::new();
        while out.len() < limit as usize && after < until {
            let (from, to) = (index::type_block(after + 1), index::type_block(until));
            let blocks = delegate!(self, s => s.type_blocks(event_type, from, to, BLOCKS).await)?;
            let Some(&last_block) = blocks.last() else {
                break;
            };
            let mut runs: Vec<(i64, i64)> = Vec::new();
            for b in blocks {
                match runs.last_mut() {
                    Some((_, end)) if *end + 1 == b => *end = b,
                    _ => runs.push((b, b)),
                }
            }
            for (first, last) in runs {
                // Seqs after `lo`, up to `hi`: the run's, within what is asked.
                let lo = after.max(index::block_start(first).saturating_sub(1));
                let hi = until.min(index::block_start(last + 1) - 1);
                let run = HistoryQuery {
                    until: Some(hi),
                    ..q.clone()
                };
                let want = limit - out.len() as u32;
                let page = delegate!(self, s => s.history(&run, lo, want).await)?;
                out.extend(page);
                if out.len() >= limit as usize {
                    return Ok(out);
                }
                after = hi;
            }
            after = after.max(until.min(index::block_start(last_block + 1) - 1));
        }
        Ok(out)
    }

    /// The anchors of the objects known by `key` (compared lower-cased: an anchor, a DN, a
    /// mail, a userPrincipalName or uid, an exported userName or group name), and `key`
    /// itself when events name it as an anchor. Sorted, each once.
    pub async fn anchors_named(&self, key: &str) -> Result<Vec<String>> {
        let lower = key.to_lowercase();
        let mut out = delegate!(self, s => s.anchors_keyed(&lower).await)?;
        let names: &[&str] = if lower == key { &[key] } else { &[key, &lower] };
        for a in names {
            let q = HistoryQuery {
                anchor: Some(a.to_string()),
                ..Default::default()
            };
            if !self.history(&q, 0, 1).await?.is_empty() {
                out.push(a.to_string());
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The last seq recorded at or before `t_us` (0 when none), found by bisecting the log
    /// by seq: reads about 20 events at a million. Times are assumed to grow with seq,
    /// as appends take theirs in turn; a clock stepped back makes this one of the seqs
    /// recorded around `t_us`.
    pub async fn seq_at_or_before(&self, t_us: i64) -> Result<u64> {
        let (head, _) = self.head().await?;
        let (mut lo, mut hi) = (0u64, head);
        // Invariant: seq lo is at or before t (0 is), and every seq above hi is after it.
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            let at = self.read(mid - 1, 1).await?;
            match at.first() {
                Some(e) if e.seq == mid && e.recorded_at_us <= t_us => lo = mid,
                Some(e) if e.seq == mid => hi = mid - 1,
                _ => {
                    return Err(Error::ChainBroken {
                        seq: mid,
                        reason: "the log has no event with this seq".into(),
                    })
                }
            }
        }
        Ok(lo)
    }
}

impl Store for AnyStore {
    async fn append(&self, batch: Batch) -> Result<AppendOutcome> {
        delegate!(self, s => s.append(batch).await)
    }
    async fn append_keeping(&self, batch: Batch, keep: Keep) -> Result<AppendOutcome> {
        delegate!(self, s => s.append_keeping(batch, keep).await)
    }
    async fn read(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        delegate!(self, s => s.read(after, limit).await)
    }
    async fn head(&self) -> Result<(u64, Hash)> {
        delegate!(self, s => s.head().await)
    }
    async fn stream_version(&self, stream: &str) -> Result<u64> {
        delegate!(self, s => s.stream_version(stream).await)
    }
    async fn append_raw(&self, events: &[StoredEvent]) -> Result<()> {
        delegate!(self, s => s.append_raw(events).await)
    }
    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>> {
        delegate!(self, s => s.load_snapshot(name).await)
    }
    async fn save_snapshot(&self, snap: &Snapshot) -> Result<()> {
        delegate!(self, s => s.save_snapshot(snap).await)
    }
    async fn control(&self) -> Result<StoredControl> {
        delegate!(self, s => s.control().await)
    }
    fn describe(&self) -> String {
        delegate!(self, s => s.describe())
    }
}

/// A URL with any password replaced, safe for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Events per part when a large batch is prepared part by part (see [`Parts`]).
const PREPARE_CHUNK: usize = 1_000;

/// A large batch prepared part by part, so that writing can start with the first part: a
/// short one, then [`PREPARE_CHUNK`] events each. The rows are exactly those one [`prepare`]
/// of the whole batch gives: the first part checks the expectations and carries the
/// idempotency key, and each continues the chain and the stream versions where the previous
/// one ended. A part that fails ends the parts.
pub(crate) struct Parts {
    events: std::vec::IntoIter<NewEvent>,
    expect: Vec<(String, Expected)>,
    idempotency_key: Option<String>,
    head: (u64, Hash),
    versions: HashMap<String, u64>,
    now_us: i64,
    size: usize,
    failed: bool,
    /// Where each part's events go once it is prepared (otherwise they are freed).
    keep: Option<Keep>,
    /// The stored control projections, folded part by part.
    control: StoredControl,
}

impl Parts {
    pub(crate) fn new(
        head: (u64, Hash),
        versions: HashMap<String, u64>,
        batch: Batch,
        now_us: i64,
        keep: Option<Keep>,
        control: StoredControl,
    ) -> Parts {
        let Batch {
            events,
            expect,
            idempotency_key,
        } = batch;
        Parts {
            events: events.into_iter(),
            expect,
            idempotency_key,
            head,
            versions,
            now_us,
            size: PREPARE_CHUNK / 4,
            failed: false,
            keep,
            control,
        }
    }

    /// The streams' versions and the control projections after the parts prepared so far.
    pub(crate) fn finish(self) -> (HashMap<String, u64>, StoredControl) {
        (self.versions, self.control)
    }
}

impl Iterator for Parts {
    /// A part's rows and their history index rows (made from the typed events).
    type Item = Result<(Vec<StoredEvent>, index::Rows)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let chunk: Vec<NewEvent> = self.events.by_ref().take(self.size).collect();
        self.size = PREPARE_CHUNK;
        if chunk.is_empty() {
            return None;
        }
        let part = Batch {
            events: chunk,
            expect: std::mem::take(&mut self.expect),
            idempotency_key: self.idempotency_key.take(),
        };
        let rows = prepare(self.head, &mut self.versions, &part, self.now_us);
        match rows {
            Ok(r) => {
                let mut index = index::Rows::default();
                if let (Some(first), Some(last)) = (r.first(), r.last()) {
                    self.head = (last.seq, last.hash);
                    index = index_rows(first.seq, &part.events);
                    self.control.apply_new(first.seq, self.now_us, &part.events);
                    // What is not kept is freed here, on the preparing thread.
                    part.hand_over(first.seq, self.now_us, self.keep.clone());
                }
                Some(Ok((r, index)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The history index rows of `events`, the first of them at seq `first_seq`.
pub(crate) fn index_rows(first_seq: u64, events: &[NewEvent]) -> index::Rows {
    let mut rows = index::Rows::default();
    for (seq, e) in (first_seq..).zip(events) {
        rows.add_event(seq, &e.event);
    }
    rows
}

/// Turn a batch into stored rows after checking its expectations: the pure half of append.
/// `versions` holds the current version of every stream in `batch.streams()` and is updated.
pub(crate) fn prepare(
    head: (u64, Hash),
    versions: &mut HashMap<String, u64>,
    batch: &Batch,
    now_us: i64,
) -> Result<Vec<StoredEvent>> {
    for (stream, exp) in &batch.expect {
        let actual = versions.get(stream).copied().unwrap_or(0);
        if !exp.holds(actual) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected: exp.describe(),
                found: actual,
            });
        }
    }
    let (mut seq, mut prev) = head;
    let mut rows = Vec::with_capacity(batch.events.len());
    for (i, e) in batch.events.iter().enumerate() {
        seq += 1;
        let v = versions.entry(e.stream.clone()).or_insert(0);
        *v += 1;
        let payload = e.event.payload();
        let key = if i == 0 {
            batch.idempotency_key.clone()
        } else {
            None
        };
        let event_type = e.event.event_type();
        let h = hash::compute(
            &prev,
            &HashInput {
                seq,
                stream: &e.stream,
                stream_version: *v,
                event_type,
                schema_version: SCHEMA_VERSION,
                instance: &e.instance,
                recorded_at_us: now_us,
                idempotency_key: key.as_deref(),
                payload: &payload,
            },
        );
        rows.push(StoredEvent {
            seq,
            stream: e.stream.clone(),
            stream_version: *v,
            event_type: event_type.to_string(),
            schema_version: SCHEMA_VERSION,
            instance: e.instance.clone(),
            recorded_at_us: now_us,
            idempotency_key: key,
            payload,
            prev_hash: prev,
            hash: h,
        });
        prev = h;
    }
    Ok(rows)
}

/// Check that raw rows (already chain-verified among themselves) continue this store's log
/// and its streams; returns the streams' new versions.
pub(crate) fn check_raw_continuation(
    head: (u64, Hash),
    versions: &HashMap<String, u64>,
    events: &[StoredEvent],
) -> Result<HashMap<String, u64>> {
    let Some(first) = events.first() else {
        return Ok(HashMap::new());
    };
    if first.seq != head.0 + 1 || first.prev_hash != head.1 {
        return Err(Error::BadInput(format!(
            "the events do not continue this store's log (store head is seq {}, first event is seq {})",
            head.0, first.seq
        )));
    }
    let mut next = versions.clone();
    for e in events {
        let v = next.entry(e.stream.clone()).or_insert(0);
        if e.stream_version != *v + 1 {
            return Err(Error::BadInput(format!(
                "seq {}: stream `{}` version {} does not follow {}",
                e.seq, e.stream, e.stream_version, v
            )));
        }
        *v += 1;
    }
    Ok(next)
}

/// The current time in microseconds, the resolution the log keeps.
pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{CursorInvalidated, Event};
    use crate::log::GENESIS;

    fn ev(stream: &str) -> NewEvent {
        NewEvent::new(
            stream,
            "a",
            Event::CursorInvalidated(CursorInvalidated { reason: "r".into() }),
        )
    }

    #[test]
    fn prepare_assigns_versions_and_chains() {
        let mut v = HashMap::new();
        let b = Batch::new(vec![ev("s"), ev("t"), ev("s")]);
        let rows = prepare((0, GENESIS), &mut v, &b, 1).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.stream_version).collect::<Vec<_>>(),
            [1, 1, 2]
        );
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        let mut c = crate::log::ChainVerifier::default();
        for r in &rows {
            c.check(r).unwrap();
        }
    }

    #[test]
    fn prepare_refuses_a_stale_expectation() {
        let mut v = HashMap::from([("s".to_string(), 3)]);
        let b = Batch::new(vec![ev("s")]).expect("s", Expected::Exactly(2));
        assert!(matches!(
            prepare((9, GENESIS), &mut v, &b, 1),
            Err(Error::Conflict { found: 3, .. })
        ));
        let b = Batch::new(vec![ev("x")]).expect("s", Expected::NoStream);
        assert!(prepare((9, GENESIS), &mut v, &b, 1).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}

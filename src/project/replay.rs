//! Replay: folding the log into [`State`], checking the chain, and stored snapshots.
//!
//! Reading the state, four ways, each for one need:
//! - [`current`]: the state now (from what the store handle read last, or the stored
//!   snapshot, folded on to the head);
//! - [`at`]: the state as of a point of the log (from the nearest checkpoint);
//! - [`control`]: the control projections alone, one stored row (status, instance list);
//! - [`state_of`]: what the projections hold of a few objects (their events only).
//!
//! [`fold`] is replay itself (`apply` folded over the log); [`fold_appended`] folds what an
//! append writes as it writes it, for the next [`current`].
//!
//! Everything reads the log through one pipeline: a reader task fetches pages from the
//! store while the consumer works through the previous one. Readers turn each event into
//! what the consumer needs while it is still in the backend's buffers: for a chain check
//! they also recompute its hash (two pages are read at once, as hashing is most of that
//! work); for a fold they copy the few fields it uses (the only columns SQLite reads) into
//! a reused buffer, and the consumer decodes and applies. A long fold splits the events
//! of source objects by anchor as it reads them, and a second thread folds one half of
//! the objects (see [`fold_split`]).

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use tokio::task::JoinHandle;

use super::{Control, FastMap, Meta, ObjectRecord, SourceObjects, State};
use crate::error::{Error, Result};
use crate::log::hash::{EventRef, FoldRef, Link};
use crate::log::store::Snapshot;
use crate::log::{
    AnyStore, AppendOutcome, ChainVerifier, Event, Keep, KeptPart, Store, StoredEvent,
};

/// Events per page read from the store.
const PAGE: u32 = 20_000;
/// The stored snapshot's name.
pub const SNAPSHOT: &str = "state";

/// How far to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    Head,
    Seq(u64),
    Time(DateTime<Utc>),
}

impl Until {
    fn includes(&self, seq: u64, recorded_at_us: i64) -> bool {
        match self {
            Until::Head => true,
            Until::Seq(n) => seq <= *n,
            Until::Time(t) => recorded_at_us <= t.timestamp_micros(),
        }
    }
}

/// What a reader makes of one page: the consumer's input, the number of events in it and
/// the last one's seq.
type Page<P> = (P, usize, Option<u64>);

/// How the readers of a pipeline read a page: `read` fills `page` with up to [`PAGE`]
/// events after `after`.
trait Reader<P>: Clone + Send + 'static {
    fn read(
        self,
        store: AnyStore,
        after: u64,
        page: P,
    ) -> impl std::future::Future<Output = Result<Page<P>>> + Send;
}

/// Adds every event, as stored, to the page on the backend's reader side.
#[derive(Clone)]
struct Each<F>(F);

impl<P, F> Reader<P> for Each<F>
where
    P: Send + 'static,
    F: FnMut(&mut P, &EventRef<'_>) -> Result<()> + Clone + Send + 'static,
{
    async fn read(self, store: AnyStore, after: u64, page: P) -> Result<Page<P>> {
        match &store {
            AnyStore::Sqlite(s) => s.read_each(after, PAGE, page, self.0).await,
            AnyStore::Postgres(s) => s.read_each(after, PAGE, page, self.0).await,
        }
    }
}

/// Adds what a fold uses of every event to the page: SQLite reads only those columns.
#[derive(Clone)]
struct FoldEach<F>(F);

impl<P, F> Reader<P> for FoldEach<F>
where
    P: Send + 'static,
    F: FnMut(&mut P, &FoldRef<'_>) -> Result<()> + Clone + Send + 'static,
{
    async fn read(self, store: AnyStore, after: u64, page: P) -> Result<Page<P>> {
        let mut f = self.0;
        match &store {
            AnyStore::Sqlite(s) => s.read_fold_each(after, PAGE, page, f).await,
            AnyStore::Postgres(s) => {
                s.read_each(after, PAGE, page, move |p: &mut P, e: &EventRef<'_>| {
                    f(p, &FoldRef::from(e))
                })
                .await
            }
        }
    }
}

/// How a pipeline builds its pages on the reader side and hands them to its consumer.
struct Pages<P, F> {
    /// Reads in flight at once: more than one reads ahead speculatively (see [`pipeline`]).
    depth: usize,
    new_page: fn() -> P,
    /// Empty a consumed page so that a reader can fill it again.
    clear: fn(&mut P),
    /// Add the events to a page, on the reader side.
    add: F,
}

/// Visit every page of events with seq > `after`, in order, until `consume` breaks or the
/// log ends. Readers build the pages (see [`Pages`]); `consume` gets them here, in order,
/// and the pages go back to the readers to be filled again.
///
/// With `depth` 2, the page after `a` is read while the one at `a` is: it starts at
/// `a + PAGE`, which is right when seqs are dense (always, unless the log was tampered
/// with). If the page at `a` does not end exactly there, the speculative read is dropped and
/// the next page is read after the real last seq, so the pages are always those one reader
/// would have read.
async fn pipeline<P, F, C>(
    store: &AnyStore,
    after: u64,
    progress: Option<&ProgressBar>,
    pages: Pages<P, F>,
    mut consume: C,
) -> Result<()>
where
    P: Send + 'static,
    F: Reader<P>,
    C: FnMut(&mut P) -> Result<ControlFlow<()>>,
{
    let Pages {
        depth,
        new_page,
        clear,
        add,
    } = pages;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(P, usize)>>(2);
    let (recycle_tx, mut recycle_rx) = tokio::sync::mpsc::unbounded_channel::<P>();
    let reader_store = store.clone();
    let reader = tokio::spawn(async move {
        let mut spawn = move |after: u64| -> (u64, JoinHandle<Result<Page<P>>>) {
            let store = reader_store.clone();
            let add = add.clone();
            let page = recycle_rx.try_recv().unwrap_or_else(|_| new_page());
            (after, tokio::spawn(add.read(store, after, page)))
        };
        let mut inflight: VecDeque<(u64, JoinHandle<Result<Page<P>>>)> = VecDeque::new();
        inflight.push_back(spawn(after));
        while inflight.len() < depth {
            let next = after + (inflight.len() as u64) * u64::from(PAGE);
            inflight.push_back(spawn(next));
        }
        while let Some((_, read)) = inflight.pop_front() {
            let page = match read.await {
                Ok(page) => page,
                Err(e) => Err(Error::store(e)),
            };
            let (msg, last, full) = match page {
                Ok((p, n, last)) => (Ok((p, n)), last, n == PAGE as usize),
                Err(e) => (Err(e), None, false),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            // An empty page (or an error) ends the log.
            let Some(last) = last else { break };
            if inflight.front().map(|(a, _)| *a) != Some(last) {
                for (_, r) in inflight.drain(..) {
                    r.abort();
                }
                inflight.push_back(spawn(last));
            }
            while full && inflight.len() < depth {
                let Some(&(a, _)) = inflight.back() else {
                    break;
                };
                inflight.push_back(spawn(a + u64::from(PAGE)));
            }
        }
        for (_, r) in inflight {
            r.abort();
        }
    });
    let mut result = Ok(());
    while let Some(page) = rx.recv().await {
        let (mut page, n) = match page {
            Ok(p) => p,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if let Some(p) = progress {
            p.inc(n as u64);
        }
        match consume(&mut page) {
            Ok(ControlFlow::Continue(())) => {}
            Ok(ControlFlow::Break(())) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        clear(&mut page);
        // The reader may be done already; then the page is simply dropped.
        let _ = recycle_tx.send(page);
    }
    drop(rx);
    reader.await.map_err(Error::store)?;
    result
}

/// Visit every event with seq > `after`, in order, until `f` breaks or the log ends.
pub async fn scan<F>(
    store: &AnyStore,
    after: u64,
    progress: Option<&ProgressBar>,
    mut f: F,
) -> Result<()>
where
    F: FnMut(&StoredEvent) -> Result<ControlFlow<()>>,
{
    let pages = Pages {
        depth: 1,
        new_page: || Vec::with_capacity(PAGE as usize),
        clear: Vec::clear,
        add: Each(|p: &mut Vec<StoredEvent>, e: &EventRef<'_>| {
            p.push(e.to_owned());
            Ok(())
        }),
    };
    pipeline(store, after, progress, pages, |page| {
        for e in page.iter() {
            if f(e)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    })
    .await
}

/// A page of events as a fold needs them, their strings copied into one buffer that is
/// reused from page to page: the reader side allocates nothing, and decoding (which does)
/// happens on the consumer's thread with the fold, so memory is allocated and freed by one
/// thread.
struct RawPage {
    text: String,
    events: Vec<RawEvent>,
}

struct RawEvent {
    seq: u64,
    recorded_at_us: i64,
    schema_version: u32,
    /// Ends of `event_type`, `instance` and `payload` in `text`, which follow each other.
    ends: [usize; 3],
    start: usize,
}

impl RawEvent {
    fn meta<'a>(&self, instance: &'a str) -> Meta<'a> {
        Meta {
            seq: self.seq,
            instance,
            recorded_at_us: self.recorded_at_us,
        }
    }
}

impl RawPage {
    fn new() -> RawPage {
        RawPage {
            text: String::new(),
            events: Vec::with_capacity(PAGE as usize),
        }
    }

    fn clear(&mut self) {
        self.text.clear();
        self.events.clear();
    }

    fn push(&mut self, e: &FoldRef<'_>) -> Result<()> {
        let start = self.text.len();
        let mut ends = [0; 3];
        for (end, s) in ends.iter_mut().zip([e.event_type, e.instance, e.payload]) {
            self.text.push_str(s);
            *end = self.text.len();
        }
        self.events.push(RawEvent {
            seq: e.seq,
            recorded_at_us: e.recorded_at_us,
            schema_version: e.schema_version,
            ends,
            start,
        });
        Ok(())
    }

    /// Event `e`'s type, instance and payload.
    fn strs(&self, e: &RawEvent) -> (&str, &str, &str) {
        let [a, b, c] = e.ends;
        let s = |from: usize, to: usize| self.text.get(from..to).unwrap_or_default();
        (s(e.start, a), s(a, b), s(b, c))
    }
}

/// The event types of one source object: the split fold routes all three by anchor.
const CHANGED: &str = "ObjectChanged";
const IMPORTED: &str = "ObjectImported";
const DELETED: &str = "ObjectDeleted";

/// **Replay**: apply the events after `state.seq` up to `until` (from `State::default()`,
/// the whole log: what `replay --verify` compares the stored projections with), reporting
/// progress.
pub async fn fold(
    store: &AnyStore,
    state: State,
    until: Until,
    progress: Option<&ProgressBar>,
) -> Result<State> {
    fold_split_from(store, state, until, progress, SPLIT_FROM).await
}

/// [`fold`], on two threads when at least `split_from` events, and more than the
/// objects the state holds, are to be folded (see [`fold_split`]). Tests choose
/// `split_from`; everything else folds through [`fold`].
#[doc(hidden)]
pub async fn fold_split_from(
    store: &AnyStore,
    state: State,
    until: Until,
    progress: Option<&ProgressBar>,
    split_from: u64,
) -> Result<State> {
    let last = match until {
        Until::Seq(n) if n <= state.seq => return Ok(state),
        Until::Seq(n) => n,
        Until::Head => u64::MAX,
        // Times need not rise with seqs: where to stop is found by one thread in order.
        Until::Time(_) => return fold_whole(store, state, until, progress).await,
    };
    // The split moves what the state holds of half the objects to the second thread and
    // back: it pays for a fold longer than that as well as than `split_from`.
    let held = state.objects.objects.len() as u64;
    let enough = state.seq.saturating_add(split_from.max(held));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || last < enough || store.head().await?.0 < enough {
        return fold_whole(store, state, until, progress).await;
    }
    fold_split(store, state, last, progress).await
}

/// Read depth for a fold: SQLite reads a page faster than it is folded; PostgreSQL's
/// client decodes every row once more, so two readers keep the fold busy.
fn fold_depth(store: &AnyStore) -> usize {
    match store {
        AnyStore::Sqlite(_) => 1,
        AnyStore::Postgres(_) => 2,
    }
}

/// Fold every event of `page` up to `until` into `state`.
fn fold_page(state: &mut State, page: &RawPage, until: Until) -> Result<ControlFlow<()>> {
    for e in &page.events {
        if !until.includes(e.seq, e.recorded_at_us) {
            return Ok(ControlFlow::Break(()));
        }
        let (event_type, instance, payload) = page.strs(e);
        let event = Event::decode(event_type, e.schema_version, payload)?;
        state.apply(&e.meta(instance), event);
    }
    Ok(ControlFlow::Continue(()))
}

/// The fold on one thread.
async fn fold_whole(
    store: &AnyStore,
    mut state: State,
    until: Until,
    progress: Option<&ProgressBar>,
) -> Result<State> {
    let pages = Pages {
        depth: fold_depth(store),
        new_page: RawPage::new,
        clear: RawPage::clear,
        add: FoldEach(|p: &mut RawPage, e: &FoldRef<'_>| p.push(e)),
    };
    pipeline(store, state.seq, progress, pages, |page| {
        fold_page(&mut state, page, until)
    })
    .await?;
    Ok(state)
}

/// Folds at least this long go on two threads (see [`fold_split`]).
const SPLIT_FROM: u64 = 2 * PAGE as u64;

/// A fold page split by source object: the events of the objects whose anchors fall in
/// the second half (see [`second_half`]) go to a thread of their own.
struct SplitPage {
    first: RawPage,
    second: RawPage,
}

impl SplitPage {
    fn new() -> SplitPage {
        SplitPage {
            first: RawPage::new(),
            second: RawPage::new(),
        }
    }

    fn clear(&mut self) {
        self.first.clear();
        self.second.clear();
    }

    fn push(&mut self, e: &FoldRef<'_>) -> Result<()> {
        if second_half(e)? {
            self.second.push(e)
        } else {
            self.first.push(e)
        }
    }
}

/// Whether `e` is an event of one source object (imported, changed, deleted) whose anchor
/// falls in the second half. Payloads as dirsync writes them begin with the anchor; any
/// other spelling is decoded to find it.
fn second_half(e: &FoldRef<'_>) -> Result<bool> {
    let prefix = match e.event_type {
        IMPORTED => r#"{"object":{"anchor":""#,
        CHANGED | DELETED => r#"{"anchor":""#,
        _ => return Ok(false),
    };
    let plain = e.payload.strip_prefix(prefix).and_then(|rest| {
        let end = rest.find(['"', '\\'])?;
        rest[end..].starts_with('"').then(|| &rest[..end])
    });
    if let Some(anchor) = plain {
        return Ok(in_second_half(anchor));
    }
    Ok(
        match Event::decode(e.event_type, e.schema_version, e.payload)? {
            Event::ObjectImported(i) => in_second_half(&i.object.anchor),
            Event::ObjectChanged(c) => in_second_half(&c.anchor),
            Event::ObjectDeleted(d) => in_second_half(&d.anchor),
            _ => false,
        },
    )
}

/// Whether the object with `anchor` is folded by the second thread: by a fixed hash, so
/// that the page's reader and the fold agree.
fn in_second_half(anchor: &str) -> bool {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(anchor) & 1 == 1
}

/// The fold on two threads. Events of one source object concern that object alone, so the
/// objects split by anchor fold apart: this thread folds every other event and the first
/// half's objects into `state`; a second thread folds the second half's into a map of its
/// own (what `state` holds of them moves there first), which joins `state` at the end.
/// The page's reader does the split, so this thread reads no payload twice.
async fn fold_split(
    store: &AnyStore,
    mut state: State,
    last: u64,
    progress: Option<&ProgressBar>,
) -> Result<State> {
    let until = Until::Seq(last);
    let theirs: FastMap<String, Box<ObjectRecord>> = state
        .objects
        .objects
        .extract_if(|anchor, _| in_second_half(anchor))
        .collect();
    let (to_half, pages) = std::sync::mpsc::sync_channel::<RawPage>(2);
    let (recycle, back) = std::sync::mpsc::channel::<RawPage>();
    let half = std::thread::spawn(move || fold_second_half(pages, recycle, theirs, until));
    let pages = Pages {
        depth: fold_depth(store),
        new_page: SplitPage::new,
        clear: SplitPage::clear,
        add: FoldEach(|p: &mut SplitPage, e: &FoldRef<'_>| p.push(e)),
    };
    let (mine, to_half_ref) = (&mut state, &to_half);
    let from = mine.seq;
    // The closure owns the receiver (which is not `Sync`), so the fold's future is `Send`.
    let folded = pipeline(store, from, progress, pages, move |page| {
        let second = std::mem::replace(
            &mut page.second,
            back.try_recv().unwrap_or_else(|_| RawPage::new()),
        );
        // The second thread stops early only when it failed; joining it tells why.
        if to_half_ref.send(second).is_err() {
            return Ok(ControlFlow::Break(()));
        }
        fold_page(mine, &page.first, until)
    })
    .await;
    drop(to_half);
    let (objects, seq) = half
        .join()
        .map_err(|_| Error::Store("the second fold thread panicked".into()))??;
    folded?;
    state.objects.objects.extend(objects.objects);
    state.objects.merge_former_dns(objects.former_dns);
    state.seq = state.seq.max(seq);
    Ok(state)
}

/// The second thread of [`fold_split`]: folds the pages it is sent into `objects` and sends
/// them back emptied. Returns the objects and the last seq it folded.
fn fold_second_half(
    pages: std::sync::mpsc::Receiver<RawPage>,
    recycle: std::sync::mpsc::Sender<RawPage>,
    objects: FastMap<String, Box<ObjectRecord>>,
    until: Until,
) -> Result<(SourceObjects, u64)> {
    let mut objects = SourceObjects {
        objects,
        ..SourceObjects::default()
    };
    let mut seq = 0;
    for mut page in pages {
        for e in page
            .events
            .iter()
            .take_while(|e| until.includes(e.seq, e.recorded_at_us))
        {
            let (event_type, instance, payload) = page.strs(e);
            // Only events of one source object come here: they concern no other projection.
            let event = Event::decode(event_type, e.schema_version, payload)?;
            objects.apply(&e.meta(instance), event);
            seq = e.seq;
        }
        page.clear();
        // The fold has stopped reading pages back only if it failed.
        let _ = recycle.send(page);
    }
    Ok((objects, seq))
}

/// Verify the whole chain; returns the number of events checked.
pub async fn verify_chain(store: &AnyStore, progress: Option<&ProgressBar>) -> Result<u64> {
    let mut v = ChainVerifier::default();
    // Hashing is most of the work and is done by the readers, two at once.
    let pages = Pages {
        depth: 2,
        new_page: || Vec::with_capacity(PAGE as usize),
        clear: Vec::clear,
        add: Each(|p: &mut Vec<Link>, e: &EventRef<'_>| {
            p.push(Link::of(e));
            Ok(())
        }),
    };
    // The head first, and the chain up to it: events appended while it is verified (a
    // service running) are not rows removed.
    let (head_seq, head_hash) = store.head().await?;
    pipeline(store, 0, progress, pages, |page| {
        for l in page.iter() {
            if l.seq > head_seq {
                return Ok(ControlFlow::Break(()));
            }
            v.check_link(l)
                .map_err(|(seq, reason)| Error::ChainBroken { seq, reason })?;
        }
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    if head_seq != v.last_seq() {
        return Err(Error::ChainBroken {
            seq: v.last_seq() + 1,
            reason: format!(
                "the log ends at seq {} but its head says {} (rows removed)",
                v.last_seq(),
                head_seq
            ),
        });
    }
    if head_hash != v.last_hash() {
        return Err(Error::ChainBroken {
            seq: head_seq,
            reason: "the head's hash does not match the last event".into(),
        });
    }
    Ok(v.last_seq())
}

/// The stored snapshot, if it still matches the log (its seq's hash is the one it recorded).
/// For tests: everything else reads [`current`].
#[doc(hidden)]
pub async fn stored(store: &AnyStore) -> Result<Option<State>> {
    stored_named(store, SNAPSHOT).await
}

/// The snapshot stored under `name`, if it still matches the log.
async fn stored_named(store: &AnyStore, name: &str) -> Result<Option<State>> {
    stored_below(store, name, u64::MAX).await
}

/// The snapshot stored under `name`, if it is at or below seq `n` and still matches the log
/// (one above `n` is not decoded).
async fn stored_below(store: &AnyStore, name: &str, n: u64) -> Result<Option<State>> {
    let Some(snap) = store.load_snapshot(name).await? else {
        return Ok(None);
    };
    if snap.seq > n {
        return Ok(None);
    }
    let at = store.read(snap.seq.saturating_sub(1), 1).await?;
    let matches = match at.first() {
        Some(e) => e.seq == snap.seq && e.hash == snap.hash,
        None => snap.seq == 0,
    };
    if !matches {
        return Ok(None);
    }
    match super::snapshot::decode(&snap.body) {
        Ok(s) if s.seq == snap.seq => Ok(Some(s)),
        // Written by another version of the projections: rebuild instead.
        _ => Ok(None),
    }
}

/// Store `state` as the snapshot. For tests: [`current`] stores it when one is due.
#[doc(hidden)]
pub async fn save(store: &AnyStore, state: &State) -> Result<()> {
    save_named(store, SNAPSHOT, state).await
}

async fn save_named(store: &AnyStore, name: &str, state: &State) -> Result<()> {
    let body = super::snapshot::encode(state).map_err(Error::store)?;
    save_body(store, name, state.seq, body).await
}

/// Store `body`, the snapshot of the state at `seq`, as `name`.
async fn save_body(store: &AnyStore, name: &str, seq: u64, body: Vec<u8>) -> Result<()> {
    let hash = if seq == 0 {
        crate::log::GENESIS
    } else {
        let e = store.read(seq - 1, 1).await?;
        match e.first() {
            Some(e) if e.seq == seq => e.hash,
            _ => {
                return Err(Error::Store(format!(
                    "cannot snapshot at seq {seq}: no such event"
                )))
            }
        }
    };
    store
        .save_snapshot(&Snapshot {
            name: name.into(),
            seq,
            hash,
            body,
        })
        .await
}

/// When [`current`] stores what it read: a snapshot once more than `threshold` events were
/// folded on top of the stored one, checkpoints on a grid of `every` events. Tests choose
/// other values through [`current_tuned`] and [`at_every`].
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub threshold: u64,
    pub every: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            threshold: REFRESH_THRESHOLD,
            every: CHECKPOINT_EVERY,
        }
    }
}

/// **The current state.** The one way to read it: every command that needs source objects
/// or ledger entries calls this (those that need less read [`control`] or [`state_of`]).
///
/// It starts from what this store handle read last (see [`Memo`](crate::log::store::Memo)) when the
/// log still holds the event that ended, else from the stored snapshot, and folds on to the
/// head; it stores a new snapshot when more than [`REFRESH_THRESHOLD`] events were folded
/// on top of the stored one, and checkpoints on the way (see [`CHECKPOINT_EVERY`]).
///
/// The state is shared with the handle's next read, which folds on from it: in place when
/// the caller has dropped its share by then, by copying it when it has not. So a caller
/// that reads again after appending drops what it read first (`drop(state); let state =
/// current(store).await?`).
pub async fn current(store: &AnyStore) -> Result<Arc<State>> {
    current_tuned(store, Tuning::default()).await
}

/// [`current`] with other [`Tuning`]. For tests, and for `log import`, which stores the
/// snapshot at once (threshold 0).
#[doc(hidden)]
pub async fn current_tuned(store: &AnyStore, tuning: Tuning) -> Result<Arc<State>> {
    let (state, saving) = read_current(store, tuning, false).await?;
    if let Some(saving) = saving {
        saving.finish().await?;
    }
    Ok(state)
}

/// [`current`], storing the snapshot (when one is due) on another thread while the caller
/// goes on with the state: the caller ends it with [`Saving::finish`] before it gives up the
/// state or exits. (The sync engine plans beside it.)
pub async fn current_saving_beside(store: &AnyStore) -> Result<(Arc<State>, Option<Saving>)> {
    read_current(store, Tuning::default(), true).await
}

/// A snapshot due after a read of the current state: being stored on another thread
/// ([`current_saving_beside`]), or still to store.
#[must_use = "a snapshot being stored must be waited for"]
pub struct Saving(Job);

enum Job {
    Beside(tokio::task::JoinHandle<Result<()>>),
    /// The state, and its snapshot body when it was encoded ahead.
    Due(AnyStore, Arc<State>, Option<Vec<u8>>),
}

impl Saving {
    /// Wait until the snapshot is stored (or store it now, when it was not sent off).
    pub async fn finish(self) -> Result<()> {
        match self.0 {
            Job::Beside(handle) => handle
                .await
                .map_err(|e| Error::Store(format!("storing the snapshot: {e}")))?,
            Job::Due(store, state, encoded) => save_state(&store, &state, encoded).await,
        }
    }
}

async fn read_current(
    store: &AnyStore,
    tuning: Tuning,
    beside: bool,
) -> Result<(Arc<State>, Option<Saving>)> {
    let Tuning { threshold, every } = tuning;
    let (base, had, from, mut encoded) = match remembered(store).await? {
        Some(r) => (r.state, true, r.snap_seq, r.encoded),
        None => {
            let base = stored(store).await?;
            let had = base.is_some();
            let base = base.unwrap_or_default();
            let from = base.seq;
            (Arc::new(base), had, from, None)
        }
    };
    let state = if store.head().await?.0 == base.seq {
        base
    } else {
        // Folded on: a snapshot encoded ahead is of an older state.
        encoded = None;
        Arc::new(fold_checkpointed(store, Arc::unwrap_or_clone(base), every).await?)
    };
    let tail = state.seq - from;
    let mut snap_seq = from;
    let mut saving = None;
    if tail > 0 && (!had || tail > threshold || threshold == 0) {
        let (store, shared) = (store.clone(), Arc::clone(&state));
        let encoded = encoded.take();
        saving = Some(Saving(if beside {
            Job::Beside(tokio::spawn(async move {
                save_state(&store, &shared, encoded).await
            }))
        } else {
            Job::Due(store, shared, encoded)
        }));
        snap_seq = state.seq;
    }
    remember(store, &state, snap_seq, encoded).await?;
    Ok((state, saving))
}

/// Store `state` as the snapshot, from `encoded` when it was encoded ahead.
async fn save_state(store: &AnyStore, state: &State, encoded: Option<Vec<u8>>) -> Result<()> {
    match encoded {
        Some(body) => save_body(store, SNAPSHOT, state.seq, body).await,
        None => save(store, state).await,
    }
}

/// Events folded on top of the stored snapshot before [`current`] stores a new one.
pub const REFRESH_THRESHOLD: u64 = 10_000;

/// Write-through of an append: its events, as the store hands them over
/// ([`Store::append_keeping`]), folded into `base` on a thread of their own while the rows
/// are written. `base` is the state [`current`] returned, and the events are appended by
/// `instance`. The fold is the fold of those events without reading them back and decoding
/// them; [`Folding::finish`] makes it what the next [`current`] starts from. When anything
/// else was appended in between, or `base` is no longer what the handle remembers, nothing
/// is folded and the next read folds from the log.
pub fn fold_appended(store: &AnyStore, base: Arc<State>, instance: &str) -> (Keep, Folding) {
    let (keep, parts) = std::sync::mpsc::channel::<KeptPart>();
    let (memo, instance) = (store.memo().clone(), instance.to_string());
    let task = tokio::task::spawn_blocking(move || {
        let mut parts = parts.into_iter().peekable();
        // Nothing handed over (the append failed before its first part): what the handle
        // remembers stays as it is.
        let first = parts.peek()?;
        if base.seq + 1 != first.first_seq {
            return None;
        }
        let snap_seq = match memo.take::<Remembered>() {
            Some(r) if Arc::ptr_eq(&r.state, &base) => r.snap_seq,
            _ => return None,
        };
        let mut state = Arc::unwrap_or_clone(base);
        for part in parts {
            if part.first_seq != state.seq + 1 {
                return None;
            }
            for (seq, e) in (part.first_seq..).zip(part.events) {
                let meta = Meta {
                    seq,
                    instance: &instance,
                    recorded_at_us: part.recorded_at_us,
                };
                state.apply(&meta, e);
            }
        }
        // The read after a large import stores a snapshot: it is encoded here, while the
        // append still commits. (A failed append throws it away with the fold.)
        let encoded = (state.seq - snap_seq > REFRESH_THRESHOLD)
            .then(|| super::snapshot::encode(&state).ok())
            .flatten();
        Some(Folded {
            state,
            snap_seq,
            encoded,
        })
    });
    (keep, Folding(task))
}

/// What [`fold_appended`] made: the state, the seq of the snapshot stored when its base
/// was remembered, and the state's snapshot when one will be due.
struct Folded {
    state: State,
    snap_seq: u64,
    encoded: Option<Vec<u8>>,
}

/// A fold begun by [`fold_appended`].
pub struct Folding(JoinHandle<Option<Folded>>);

impl Folding {
    /// After the append succeeded with `outcome`: the folded state, remembered for the
    /// next [`current`]; None when there was nothing to fold onto (see [`fold_appended`]).
    pub async fn finish(
        self,
        store: &AnyStore,
        outcome: &AppendOutcome,
    ) -> Result<Option<Arc<State>>> {
        let folded = self.0.await.map_err(Error::store)?;
        let AppendOutcome::Appended { last_seq, .. } = *outcome else {
            return Ok(None);
        };
        match folded {
            Some(f) if f.state.seq == last_seq => {
                let state = Arc::new(f.state);
                remember(store, &state, f.snap_seq, f.encoded).await?;
                Ok(Some(state))
            }
            _ => Ok(None),
        }
    }

    /// After the append failed: what was folded is thrown away.
    pub async fn abandon(self) {
        let _ = self.0.await;
    }
}

/// What the last read of [`current`] through a store handle returned (kept in the handle's
/// [`Memo`](crate::log::store::Memo)).
struct Remembered {
    /// The seq of the stored snapshot then.
    snap_seq: u64,
    /// The hash of the state's last event.
    hash: crate::log::Hash,
    state: Arc<State>,
    /// The state's snapshot, when it was encoded ahead of the read that stores it (see
    /// [`fold_appended`]).
    encoded: Option<Vec<u8>>,
}

/// What the handle remembers, if the log still holds the event it was built up to (same
/// seq, same hash: the store was not replaced or rewritten meanwhile). It is taken out, so
/// that if the caller let go of its share the state can be folded in place.
async fn remembered(store: &AnyStore) -> Result<Option<Remembered>> {
    let Some(r) = store.memo().take::<Remembered>() else {
        return Ok(None);
    };
    if r.state.seq == 0 {
        return Ok(None);
    }
    let at = store.read(r.state.seq - 1, 1).await?;
    Ok(match at.first() {
        Some(e) if e.seq == r.state.seq && e.hash == r.hash => Some(r),
        _ => None,
    })
}

async fn remember(
    store: &AnyStore,
    state: &Arc<State>,
    snap_seq: u64,
    encoded: Option<Vec<u8>>,
) -> Result<()> {
    if state.seq == 0 {
        return Ok(());
    }
    let at = store.read(state.seq - 1, 1).await?;
    if let Some(e) = at.first().filter(|e| e.seq == state.seq) {
        store.memo().put(Remembered {
            snap_seq,
            hash: e.hash,
            state: Arc::clone(state),
            encoded,
        });
    }
    Ok(())
}

/// Events between the grid points where checkpoints may be kept: `replay --until` starts
/// from the nearest checkpoint at or below its point instead of seq 0.
pub const CHECKPOINT_EVERY: u64 = 100_000;

/// The name of the checkpoint at `seq`.
pub fn checkpoint_name(seq: u64) -> String {
    format!("{SNAPSHOT}@{seq}")
}

/// Checkpoints are kept at grid points that are multiples of a stride of at least the
/// state's size (source objects and ledger entries), so that writing them costs about one
/// stored object per event replayed, however large the directory: the stride is `every`
/// doubled until it is that large.
pub fn checkpoint_stride(state: &State, every: u64) -> u64 {
    let size = (state.objects.objects.len() + state.ledger.entries.len()) as u64;
    let mut stride = every.max(1);
    while stride < size {
        stride = stride.saturating_mul(2);
    }
    stride
}

/// Fold to the head, stopping at each grid point to store a checkpoint where
/// [`checkpoint_stride`] says one belongs.
async fn fold_checkpointed(store: &AnyStore, mut state: State, every: u64) -> Result<State> {
    let every = every.max(1);
    loop {
        let next = (state.seq / every + 1) * every;
        state = fold(store, state, Until::Seq(next), None).await?;
        if state.seq < next {
            return Ok(state);
        }
        if next.is_multiple_of(checkpoint_stride(&state, every)) {
            save_named(store, &checkpoint_name(next), &state).await?;
        }
    }
}

/// The last seq recorded at or before `t`: the point a fold `Until::Time(t)` from seq 0 stops
/// at (the first event recorded after `t` ends it, even if later ones were recorded earlier,
/// as can happen between computers whose clocks differ). Reads only seq and time.
pub async fn seq_at_time(store: &AnyStore, t: DateTime<Utc>) -> Result<u64> {
    let t = t.timestamp_micros();
    let mut last = 0u64;
    let pages = Pages {
        depth: 1,
        new_page: || Vec::with_capacity(PAGE as usize),
        clear: Vec::clear,
        add: FoldEach(|p: &mut Vec<(u64, i64)>, e: &FoldRef<'_>| {
            p.push((e.seq, e.recorded_at_us));
            Ok(())
        }),
    };
    pipeline(store, 0, None, pages, |page| {
        for &(seq, at) in page.iter() {
            if at > t {
                return Ok(ControlFlow::Break(()));
            }
            last = seq;
        }
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    Ok(last)
}

/// **The state as of `until`**: the one way to read it at a point of the log. It starts
/// from the nearest stored state at or below that point (the stored snapshot or a
/// checkpoint) instead of seq 0, and equals the fold from seq 0 (`fold(store,
/// State::default(), until)`, what `replay --verify` compares with).
pub async fn at(store: &AnyStore, until: Until, progress: Option<&ProgressBar>) -> Result<State> {
    at_every(store, until, CHECKPOINT_EVERY, progress).await
}

/// [`at`] with checkpoints on a grid of `every` events (tests use a small one).
#[doc(hidden)]
pub async fn at_every(
    store: &AnyStore,
    until: Until,
    every: u64,
    progress: Option<&ProgressBar>,
) -> Result<State> {
    let every = every.max(1);
    let n = match until {
        Until::Head => return fold(store, current_base(store).await?, until, progress).await,
        Until::Seq(n) => n,
        Until::Time(t) => seq_at_time(store, t).await?,
    };
    let mut base = stored_below(store, SNAPSHOT, n).await?.unwrap_or_default();
    // Grid points from the highest at or below n down to the base: the first stored wins.
    let mut g = n / every * every;
    while g > base.seq {
        if let Some(s) = stored_named(store, &checkpoint_name(g)).await? {
            base = s;
            break;
        }
        g -= every;
    }
    fold(store, base, Until::Seq(n), progress).await
}

async fn current_base(store: &AnyStore) -> Result<State> {
    Ok(stored(store).await?.unwrap_or_default())
}

/// `replay --verify`: rebuild from seq 0 and compare with the stored projections (the
/// snapshot, and the control projections the store keeps beside the log) at their seqs,
/// then carry on to the head so every event is decoded once. Returns (events replayed,
/// whether a stored snapshot was compared).
pub async fn verify_projections(
    store: &AnyStore,
    progress: Option<&ProgressBar>,
) -> Result<(u64, bool)> {
    // Read first: appends made while the log is folded are folded too, past its seq.
    let control = store.control().await?;
    let snapshot = match store.load_snapshot(SNAPSHOT).await? {
        None => None,
        Some(snap) => {
            let stored_state = super::snapshot::decode(&snap.body).map_err(|e| {
                Error::ProjectionMismatch(format!("stored projections cannot be read: {e}"))
            })?;
            if stored_state.seq != snap.seq {
                return Err(Error::ProjectionMismatch(format!(
                    "stored projections claim seq {} but are filed at seq {}",
                    stored_state.seq, snap.seq
                )));
            }
            Some(stored_state)
        }
    };
    let compared = snapshot.is_some();
    // The points to compare at, in order of seq.
    let mut points: Vec<(u64, Option<State>)> = vec![(control.seq, None)];
    if let Some(s) = snapshot {
        points.push((s.seq, Some(s)));
    }
    points.sort_by_key(|(seq, _)| *seq);
    let mut at = State::default();
    for (seq, stored_state) in points {
        at = fold(store, at, Until::Seq(seq), progress).await?;
        if at.seq != seq {
            return Err(Error::ProjectionMismatch(format!(
                "stored projections are at seq {seq} but the log ends at {}",
                at.seq
            )));
        }
        let (what, diffs) = match &stored_state {
            Some(s) => ("stored projections", at.differences(s)),
            None => (
                "the stored control projections",
                at.control.differences(&control.control),
            ),
        };
        if !diffs.is_empty() {
            return Err(Error::ProjectionMismatch(format!(
                "{what} at seq {seq} differ from the log: {}",
                diffs.join("; ")
            )));
        }
    }
    let rebuilt = fold(store, at, Until::Head, progress).await?;
    Ok((rebuilt.seq, compared))
}

/// The projections of a few source objects as the whole fold has them: a [`State`] whose
/// source objects and ledger entries under `anchors` are those of the state now (it may
/// hold others, partly). Folds only the events that touch them, found through the history
/// index (`src/log/index.rs`), with those that concern every ledger entry (`TargetReset`)
/// and, for an anchor a re-key gave an object, the events of its old anchor.
pub async fn state_of(store: &AnyStore, anchors: &[String]) -> Result<State> {
    use crate::log::store::HistoryQuery;
    const LIMIT: u32 = 1_000;
    if anchors.is_empty() {
        return Ok(State::default());
    }
    let mut events: BTreeMap<u64, StoredEvent> = BTreeMap::new();
    let mut queries: Vec<HistoryQuery> = vec![HistoryQuery {
        event_type: Some("TargetReset".into()),
        ..Default::default()
    }];
    let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    queries.extend(anchors.iter().map(|a| HistoryQuery {
        anchor: Some(a.clone()),
        ..Default::default()
    }));
    while let Some(q) = queries.pop() {
        if let Some(a) = &q.anchor {
            if !seen.insert(a.clone()) {
                continue;
            }
        }
        let mut after = 0;
        loop {
            let page = store.history(&q, after, LIMIT).await?;
            let full = page.len() == LIMIT as usize;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                if let (Some(a), "AnchorsMigrated") = (&q.anchor, e.event_type.as_str()) {
                    if let Event::AnchorsMigrated(m) =
                        Event::decode(&e.event_type, e.schema_version, &e.payload)?
                    {
                        queries.extend(m.rekeyed.iter().filter(|r| &r.new == a).map(|r| {
                            HistoryQuery {
                                anchor: Some(r.old.clone()),
                                ..Default::default()
                            }
                        }));
                    }
                }
                events.insert(e.seq, e);
            }
            if !full {
                break;
            }
        }
    }
    let mut state = State::default();
    for e in events.values() {
        let event = Event::decode(&e.event_type, e.schema_version, &e.payload)?;
        let m = Meta {
            seq: e.seq,
            instance: &e.instance,
            recorded_at_us: e.recorded_at_us,
        };
        state.apply(&m, event);
    }
    Ok(state)
}

/// The control projections now (see [`crate::project::Control`]), and the seq they are
/// folded up to: the row the store keeps at the head of the log, read without folding
/// anything. Every command that needs no source object nor ledger entry reads this.
pub async fn control(store: &AnyStore) -> Result<(u64, Control)> {
    let c = store.control().await?;
    Ok((c.seq, c.control))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The page reader finds an object event's anchor without decoding when the payload
    /// is spelled as dirsync writes it, and by decoding otherwise: both split alike.
    #[test]
    fn events_split_by_their_anchor_however_spelled() {
        let split = |event_type: &str, payload: &str| {
            second_half(&FoldRef {
                seq: 1,
                event_type,
                schema_version: 1,
                instance: "i",
                recorded_at_us: 0,
                payload,
            })
        };
        let anchors: Vec<String> = (0..64).map(|i| format!("a-{i}")).collect();
        let halves: BTreeSet<bool> = anchors.iter().map(|a| in_second_half(a)).collect();
        assert_eq!(halves.len(), 2, "both halves get anchors");
        for a in &anchors {
            let want = in_second_half(a);
            let changed = format!(r#"{{"anchor":"{a}","set":{{}}}}"#);
            let spaced = format!(r#"{{ "set": {{}}, "anchor" : "{a}" }}"#);
            let imported = format!(
                r#"{{"object":{{"anchor":"{a}","kind":"user","dn":"CN=x","attrs":{{}}}}}}"#
            );
            let deleted = format!(r#"{{"anchor":"{a}","evidence":{{"how":"tombstone"}}}}"#);
            assert_eq!(split(CHANGED, &changed).unwrap(), want, "{changed}");
            assert_eq!(split(CHANGED, &spaced).unwrap(), want, "{spaced}");
            assert_eq!(split(IMPORTED, &imported).unwrap(), want, "{imported}");
            assert_eq!(split(DELETED, &deleted).unwrap(), want, "{deleted}");
        }
        // An escaped quote in the anchor: decoded, and hashed as the anchor it spells.
        let odd = "q\"uote";
        let escaped = r#"{"anchor":"q\"uote","evidence":{"how":"tombstone"}}"#;
        assert_eq!(split(DELETED, escaped).unwrap(), in_second_half(odd));
        // Events of no one object stay with the first thread; a bad payload is an error.
        let cursor = r#"{"kind":"dirsync","cookie":"x"}"#;
        assert!(!split("CursorAdvanced", cursor).unwrap());
        assert!(split(CHANGED, r#"{"anchor":"unterminated"#).is_err());
    }
}

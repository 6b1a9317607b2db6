//! Replay: folding the log into [`State`], checking the chain, and stored snapshots.
//!
//! Everything reads the log through [`scan`], which keeps one page in flight ahead of the
//! consumer so reading the store and decoding/applying overlap.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;

use super::{Meta, State};
use crate::error::{Error, Result};
use crate::log::store::Snapshot;
use crate::log::{AnyStore, ChainVerifier, Store, StoredEvent};

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
    fn includes(&self, e: &StoredEvent) -> bool {
        match self {
            Until::Head => true,
            Until::Seq(n) => e.seq <= *n,
            Until::Time(t) => e.recorded_at_us <= t.timestamp_micros(),
        }
    }
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
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<StoredEvent>>>(2);
    let reader_store = store.clone();
    let reader = tokio::spawn(async move {
        let mut after = after;
        loop {
            let page = reader_store.read(after, PAGE).await;
            let last = match &page {
                Ok(p) => p.last().map(|e| e.seq),
                Err(_) => None,
            };
            let more = last.is_some();
            if tx.send(page).await.is_err() || !more {
                break;
            }
            after = last.unwrap_or(after);
        }
    });
    let mut result = Ok(());
    'pages: while let Some(page) = rx.recv().await {
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if let Some(p) = progress {
            p.inc(page.len() as u64);
        }
        for e in &page {
            match f(e) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break 'pages,
                Err(err) => {
                    result = Err(err);
                    break 'pages;
                }
            }
        }
    }
    drop(rx);
    reader.await.map_err(Error::store)?;
    result
}

/// Apply the events after `state.seq` up to `until`.
pub async fn fold(store: &AnyStore, state: State, until: Until) -> Result<State> {
    fold_with(store, state, until, None).await
}

/// [`fold`], reporting progress.
pub async fn fold_with(
    store: &AnyStore,
    mut state: State,
    until: Until,
    progress: Option<&ProgressBar>,
) -> Result<State> {
    if let Until::Seq(n) = until {
        if n <= state.seq {
            return Ok(state);
        }
    }
    scan(store, state.seq, progress, |e| {
        if !until.includes(e) {
            return Ok(ControlFlow::Break(()));
        }
        let ev = e.decode()?;
        state.apply(
            &Meta {
                seq: e.seq,
                instance: &e.instance,
                recorded_at_us: e.recorded_at_us,
            },
            &ev,
        );
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    Ok(state)
}

/// Rebuild every projection from seq 0.
pub async fn rebuild(store: &AnyStore, until: Until) -> Result<State> {
    fold(store, State::default(), until).await
}

/// Verify the whole chain; returns the number of events checked.
pub async fn verify_chain(store: &AnyStore, progress: Option<&ProgressBar>) -> Result<u64> {
    let mut v = ChainVerifier::default();
    scan(store, 0, progress, |e| {
        v.check(e)
            .map_err(|(seq, reason)| Error::ChainBroken { seq, reason })?;
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    let (head_seq, head_hash) = store.head().await?;
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
pub async fn stored(store: &AnyStore) -> Result<Option<State>> {
    let Some(snap) = store.load_snapshot(SNAPSHOT).await? else {
        return Ok(None);
    };
    let at = store.read(snap.seq.saturating_sub(1), 1).await?;
    let matches = match at.first() {
        Some(e) => e.seq == snap.seq && e.hash == snap.hash,
        None => snap.seq == 0,
    };
    if !matches {
        return Ok(None);
    }
    match serde_json::from_slice::<State>(&snap.body) {
        Ok(s) if s.seq == snap.seq => Ok(Some(s)),
        // Written by another version of the projections: rebuild instead.
        _ => Ok(None),
    }
}

/// The current state: the stored snapshot (or nothing) brought up to the head.
pub async fn current(store: &AnyStore) -> Result<State> {
    let base = stored(store).await?.unwrap_or_default();
    fold(store, base, Until::Head).await
}

/// Store `state` as the snapshot.
pub async fn save(store: &AnyStore, state: &State) -> Result<()> {
    let hash = if state.seq == 0 {
        crate::log::GENESIS
    } else {
        let e = store.read(state.seq - 1, 1).await?;
        match e.first() {
            Some(e) if e.seq == state.seq => e.hash,
            _ => {
                return Err(Error::Store(format!(
                    "cannot snapshot at seq {}: no such event",
                    state.seq
                )))
            }
        }
    };
    let body = serde_json::to_vec(state).map_err(Error::store)?;
    store
        .save_snapshot(&Snapshot {
            name: SNAPSHOT.into(),
            seq: state.seq,
            hash,
            body,
        })
        .await
}

/// The current state, saving it as the snapshot when more than `threshold` events were
/// replayed on top of the stored one.
pub async fn refresh(store: &AnyStore, threshold: u64) -> Result<State> {
    let base = stored(store).await?;
    let had = base.is_some();
    let base = base.unwrap_or_default();
    let from = base.seq;
    let state = fold(store, base, Until::Head).await?;
    let tail = state.seq - from;
    if tail > 0 && (!had || tail > threshold || threshold == 0) {
        save(store, &state).await?;
    }
    Ok(state)
}

/// `replay --verify`: rebuild from seq 0 and compare with the stored projections at the
/// snapshot's seq, then carry on to the head so every event is decoded once.
/// Returns (events replayed, whether a stored snapshot was compared).
pub async fn verify_projections(
    store: &AnyStore,
    progress: Option<&ProgressBar>,
) -> Result<(u64, bool)> {
    let Some(snap) = store.load_snapshot(SNAPSHOT).await? else {
        let rebuilt = fold_with(store, State::default(), Until::Head, progress).await?;
        return Ok((rebuilt.seq, false));
    };
    let stored_state: State = serde_json::from_slice(&snap.body).map_err(|e| {
        Error::ProjectionMismatch(format!("stored projections cannot be read: {e}"))
    })?;
    if stored_state.seq != snap.seq {
        return Err(Error::ProjectionMismatch(format!(
            "stored projections claim seq {} but are filed at seq {}",
            stored_state.seq, snap.seq
        )));
    }
    let at = fold_with(store, State::default(), Until::Seq(snap.seq), progress).await?;
    if at.seq != snap.seq {
        return Err(Error::ProjectionMismatch(format!(
            "stored projections are at seq {} but the log ends at {}",
            snap.seq, at.seq
        )));
    }
    let diffs = at.differences(&stored_state);
    if !diffs.is_empty() {
        return Err(Error::ProjectionMismatch(format!(
            "stored projections at seq {} differ from the log: {}",
            snap.seq,
            diffs.join("; ")
        )));
    }
    let rebuilt = fold_with(store, at, Until::Head, progress).await?;
    Ok((rebuilt.seq, true))
}

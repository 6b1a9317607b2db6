//! The log carried as JSON Lines (`log export`, `log import`): written checked against the
//! chain and the head as it goes, a file read and verified whole before anything is
//! written, and only the part of it the store does not hold yet appended.

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::Path;

use indicatif::ProgressBar;

use super::replay;
use crate::error::{Error, Result};
use crate::log::{AnyStore, ChainVerifier, Store, StoredEvent};

/// Write the whole log to `w`, one event a line, checking the chain as it goes and the head
/// at the end: a broken log (altered, reordered, rows removed) is an error, and what was
/// written must then be thrown away.
pub async fn export(store: &AnyStore, w: impl Write, progress: Option<&ProgressBar>) -> Result<()> {
    let (head, _) = store.head().await?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, w);
    let mut v = ChainVerifier::default();
    replay::scan(store, 0, progress, |e| {
        v.check(e)
            .map_err(|(seq, reason)| Error::ChainBroken { seq, reason })?;
        serde_json::to_writer(&mut w, e).map_err(Error::store)?;
        w.write_all(b"\n")?;
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    w.flush()?;
    drop(w);
    let (head_seq, head_hash) = store.head().await?;
    if head_seq < v.last_seq() || (head_seq == v.last_seq() && head_hash != v.last_hash()) {
        return Err(Error::ChainBroken {
            seq: head_seq.min(v.last_seq()),
            reason: "the head does not match the last event".into(),
        });
    }
    if head_seq > v.last_seq() && head == head_seq {
        return Err(Error::ChainBroken {
            seq: v.last_seq() + 1,
            reason: format!(
                "the log ends at seq {} but its head says {head_seq} (rows removed)",
                v.last_seq()
            ),
        });
    }
    Ok(())
}

/// Read and verify an export file completely; nothing is written here.
pub fn read_file(file: &Path) -> Result<Vec<StoredEvent>> {
    let f = std::fs::File::open(file)
        .map_err(|e| Error::BadInput(format!("{}: {e}", file.display())))?;
    let mut events = Vec::new();
    let mut chain = ChainVerifier::default();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line =
            line.map_err(|e| Error::BadInput(format!("{}:{}: {e}", file.display(), i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: StoredEvent = serde_json::from_str(&line).map_err(|e| {
            Error::BadInput(format!(
                "{}:{}: not a dirsync log line: {e}",
                file.display(),
                i + 1
            ))
        })?;
        chain.check(&e).map_err(|(seq, reason)| {
            Error::BadInput(format!(
                "{}:{}: chain broken at seq {seq}: {reason}; nothing imported",
                file.display(),
                i + 1
            ))
        })?;
        e.decode().map_err(|err| {
            Error::BadInput(format!(
                "{}:{}: {err}; nothing imported",
                file.display(),
                i + 1
            ))
        })?;
        events.push(e);
    }
    Ok(events)
}

/// What an import did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Imported {
    pub imported: usize,
    /// Events of the file the store held already.
    pub already_present: u64,
    /// The log's last seq after it.
    pub head: u64,
}

/// The events of `events` (read from `file` by [`read_file`]) the store does not hold yet:
/// the store must hold a prefix of them (pure). Another log is refused.
pub fn rest<'a>(
    events: &'a [StoredEvent],
    head: u64,
    head_hash: [u8; 32],
    file: &Path,
) -> Result<&'a [StoredEvent]> {
    if head > 0 {
        let ours = events.get(head as usize - 1);
        if ours.map(|e| e.hash) != Some(head_hash) {
            return Err(Error::BadInput(format!(
                "{}: the store already holds a different log (its seq {head} is not in the file); nothing imported",
                file.display()
            )));
        }
    }
    Ok(&events[(head as usize).min(events.len())..])
}

/// Append the part of `events` the store does not hold yet, as they are (same seqs, times
/// and hashes), and bring the stored projections up to date.
pub async fn import(store: &AnyStore, events: &[StoredEvent], file: &Path) -> Result<Imported> {
    let (head, head_hash) = store.head().await?;
    let new = rest(events, head, head_hash, file)?;
    store.append_raw(new).await?;
    let state = replay::current_tuned(
        store,
        replay::Tuning {
            threshold: 0,
            ..Default::default()
        },
    )
    .await?;
    Ok(Imported {
        imported: new.len(),
        already_present: head,
        head: state.seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            stream: "s".into(),
            stream_version: seq,
            event_type: "InstanceStopped".into(),
            schema_version: 1,
            instance: "a".into(),
            recorded_at_us: 0,
            idempotency_key: None,
            payload: "{}".into(),
            prev_hash: [seq as u8 - 1; 32],
            hash: [seq as u8; 32],
        }
    }

    #[test]
    fn only_what_the_store_lacks_of_the_same_log_is_imported() {
        let file = Path::new("log.jsonl");
        let events: Vec<StoredEvent> = (1..=3).map(ev).collect();
        let seqs = |r: Result<&[StoredEvent]>| r.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(rest(&events, 0, [0; 32], file)), [1, 2, 3]);
        assert_eq!(seqs(rest(&events, 2, [2; 32], file)), [3]);
        assert_eq!(seqs(rest(&events, 3, [3; 32], file)), Vec::<u64>::new());
        for (head, hash) in [(2, [9; 32]), (4, [4; 32])] {
            match rest(&events, head, hash, file) {
                Err(Error::BadInput(m)) => assert_eq!(
                    m,
                    format!("log.jsonl: the store already holds a different log (its seq {head} is not in the file); nothing imported")
                ),
                other => panic!("{other:?}"),
            }
        }
    }
}

//! The control projections kept in the store (schema 4): [`Control`] folded up to the head,
//! in the transaction of every append, so that `status`, `instance list` and the service
//! loop read one row instead of folding the log.
//!
//! One row, `control (id = 1, seq, body)`, the body [`Control`] as JSON. Why one row rather
//! than rows per instance: the control projections are small (the instances, their
//! cursors, the relationship, held lists, handovers, the quarantine suspects: kilobytes),
//! the commands that read them want all of them at once (status rows cross-reference the
//! holder, the held list, the handover), and an append holds the head lock anyway, so
//! reading, folding and rewriting one row is one lookup and one UPDATE. Rows per part would
//! save rewriting what an append does not touch; they are worth it once a part grows with
//! time. None does: the one that would (each instance's completed syncs, one entry per
//! cycle, for the audit's sync gaps) is kept outside [`Control`]
//! ([`crate::project::SyncHistory`]). The body carries a format number: a row written by
//! a build of another format is folded again from the log rather than trusted.
//!
//! The row is derived, never covered by the hash chain: the migration that adds it folds
//! the log already stored, an append whose row is not at the head it locked folds it again
//! from the log (a store written in between by something that did not keep it), and
//! `replay --verify` compares it with a fresh fold.

use super::{Event, NewEvent, StoredEvent};
use crate::error::{Error, Result};
use crate::project::{Control, Meta};

/// The events of one source object: they concern no control projection (nor any other
/// than the source objects: the split fold relies on it too), so folding skips them
/// without decoding.
pub(crate) const OBJECT_EVENTS: [&str; 3] = ["ObjectImported", "ObjectChanged", "ObjectDeleted"];

/// The layout and meaning of the body this build writes. A build whose fold or fields
/// differ writes another; a row of another is folded again from the log, never trusted.
const FORMAT: u32 = 2;

/// The stored row: the control projections as of `seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredControl {
    pub seq: u64,
    pub control: Control,
    /// Whether an event folded since the row was read changed the body (else only its
    /// seq is written back).
    pub(crate) touched: bool,
}

/// The row as a reader finds it.
pub(crate) enum Row {
    /// None yet (a store before schema 4 that was not migrated).
    Missing,
    /// Written by a build of another [`FORMAT`]: the control projections as of `seq` must be
    /// folded again from the log.
    Stale {
        seq: u64,
    },
    Current(Box<StoredControl>),
}

#[derive(serde::Serialize)]
struct BodyOut<'a> {
    format: u32,
    #[serde(flatten)]
    control: &'a Control,
}

#[derive(serde::Deserialize)]
struct Format {
    #[serde(default)]
    format: u32,
}

impl StoredControl {
    /// The row as read: `seq` and the JSON body.
    pub(crate) fn read(seq: u64, body: &str) -> Result<Row> {
        let bad = |e: serde_json::Error| {
            Error::Store(format!(
                "the stored control projections cannot be read: {e}"
            ))
        };
        if serde_json::from_str::<Format>(body).map_err(bad)?.format != FORMAT {
            return Ok(Row::Stale { seq });
        }
        let control = serde_json::from_str(body).map_err(bad)?;
        Ok(Row::Current(Box::new(StoredControl {
            seq,
            control,
            touched: false,
        })))
    }

    /// The body to write.
    pub(crate) fn body(&self) -> Result<String> {
        serde_json::to_string(&BodyOut {
            format: FORMAT,
            control: &self.control,
        })
        .map_err(Error::store)
    }

    /// Fold events being appended, the first at `first_seq`, all recorded at `now_us`.
    pub(crate) fn apply_new(&mut self, first_seq: u64, now_us: i64, events: &[NewEvent]) {
        for (seq, e) in (first_seq..).zip(events) {
            if !matches!(
                e.event,
                Event::ObjectImported(_) | Event::ObjectChanged(_) | Event::ObjectDeleted(_)
            ) {
                let m = Meta {
                    seq,
                    instance: &e.instance,
                    recorded_at_us: now_us,
                };
                self.control.apply(&m, &e.event);
                self.touched = true;
            }
            self.seq = seq;
        }
    }

    /// Fold one stored event (a migration, a `log import`, a refold).
    pub(crate) fn apply_stored(
        &mut self,
        seq: u64,
        event_type: &str,
        schema_version: u32,
        instance: &str,
        recorded_at_us: i64,
        payload: &str,
    ) -> Result<()> {
        if !OBJECT_EVENTS.contains(&event_type) {
            let e = Event::decode(event_type, schema_version, payload)?;
            let m = Meta {
                seq,
                instance,
                recorded_at_us,
            };
            self.control.apply(&m, &e);
            self.touched = true;
        }
        self.seq = seq;
        Ok(())
    }

    /// [`apply_stored`](Self::apply_stored) of rows.
    pub(crate) fn apply_rows(&mut self, rows: &[StoredEvent]) -> Result<()> {
        for e in rows {
            self.apply_stored(
                e.seq,
                &e.event_type,
                e.schema_version,
                &e.instance,
                e.recorded_at_us,
                &e.payload,
            )?;
        }
        Ok(())
    }
}

/// Rows read at a time when the row is folded from the log.
pub(crate) const REFOLD_PAGE: i64 = 10_000;

/// The query a refold pages through: the events after `?1`, object events left out (their
/// seqs are covered by the head's), `?2` at a time.
pub(crate) fn refold_sql(numbered: bool) -> String {
    let (a, b) = if numbered { ("$1", "$2") } else { ("?1", "?2") };
    format!(
        "SELECT seq, event_type, schema_version, instance, recorded_at_us, payload FROM events \
         WHERE seq > {a} AND event_type NOT IN ('{}', '{}', '{}') ORDER BY seq LIMIT {b}",
        OBJECT_EVENTS[0], OBJECT_EVENTS[1], OBJECT_EVENTS[2]
    )
}

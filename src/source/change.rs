//! What a source hands the importer, whatever its kind: objects (a full import) or
//! [`Change`]s (a delta), in the log's own types.

use crate::log::event::{DeletionEvidence, SourceObject};

/// One change a delta import reported, whatever the source (DirSync, RFC 4533).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An object created, changed, renamed or moved. `whole` says `object.attrs` (and
    /// `members`) are the complete object; otherwise they are only the changed attributes.
    Upsert { object: SourceObject, whole: bool },
    Deleted {
        anchor: String,
        evidence: DeletionEvidence,
    },
    /// RFC 4533 present phase: every object still in the source that was not sent as an
    /// add or modify. Live objects neither here nor upserted in this delta are deleted.
    Present { anchors: Vec<String> },
    /// Incremental member values of a group (anchors).
    Members {
        anchor: String,
        added: Vec<String>,
        removed: Vec<String>,
    },
}

/// What one read of a source produced, before planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// Every object the source holds (in scope or not: the importer's scope decides), and
    /// the cursor to continue from, taken before the read so nothing changed during it is
    /// missed by the next delta (empty for a source without change tracking).
    Full {
        objects: Vec<SourceObject>,
        cookie: Vec<u8>,
        /// Search continuation references skipped.
        referrals: u64,
    },
    /// What changed since a cursor, in server order, and the cursor to continue from.
    Delta {
        changes: Vec<Change>,
        cookie: Vec<u8>,
        /// Search continuation references skipped.
        referrals: u64,
    },
}

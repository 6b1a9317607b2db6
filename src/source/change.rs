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

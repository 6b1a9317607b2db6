//! The library's error type and its mapping to the exit codes of INTERFACE.md.

use std::fmt;

/// Everything that can go wrong inside dirsync. The binary maps each to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration: unknown key, bad value, missing secret. Nothing was written.
    #[error("configuration: {0}")]
    Config(String),
    /// Bad command-line usage or a bad input file. Nothing was written.
    #[error("{0}")]
    BadInput(String),
    /// The store could not be opened or used (unreachable, I/O, SQL error).
    #[error("store: {0}")]
    Store(String),
    /// SQLite could not use the store's files: no room left on their file system (disk
    /// full, a quota, a file size limit) or an I/O error, with the system's own error when
    /// it gave one. A transaction that failed so was rolled back.
    #[error("store {path}: {problem}")]
    StoreFiles { path: String, problem: String },
    /// The store was written by a newer dirsync (a migration we do not know).
    #[error("store schema version {found} is newer than this dirsync supports ({supported}); upgrade dirsync")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The store exists but has not been initialised or migrated.
    #[error("store is not initialised (schema {found}, need {needed}): run `dirsync init`")]
    NotInitialised { found: i64, needed: i64 },
    /// Optimistic concurrency: a stream moved on since the caller read it. Nothing was written.
    #[error(
        "concurrency conflict on stream `{stream}`: expected version {expected}, found {found}"
    )]
    Conflict {
        stream: String,
        expected: String,
        found: u64,
    },
    /// The hash chain does not verify.
    #[error("log chain broken at seq {seq}: {reason}")]
    ChainBroken { seq: u64, reason: String },
    /// A stored projection differs from the one rebuilt from the log.
    #[error("projection mismatch: {0}")]
    ProjectionMismatch(String),
    /// The operation was refused by the current state (e.g. retire during a sync).
    #[error("refused: {0}")]
    Refused(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The source directory failed: unreachable, bind refused, a search error, a malformed
    /// response.
    #[error("source: {0}")]
    Source(String),
    /// The source refused our change-tracking cookie (DirSync): the cursor is unusable and
    /// the caller must fall back to a full import. Nothing was imported.
    #[error("source rejected the sync cookie (a full import is needed): {0}")]
    SourceCookieRejected(String),
    /// The target failed: unreachable, credentials refused (401), errors after retries.
    #[error("target: {0}")]
    Target(String),
    /// The cycle ran past `[sync] cycle_timeout`: what was exported is recorded, the rest
    /// waits for the next cycle.
    #[error("cycle timeout: {0}")]
    CycleTimeout(String),
    /// The deletion guard held this cycle's deletions; nothing was deleted.
    #[error("deletions held: {0}")]
    Held(String),
    /// Another instance holds the sync relationship; nothing was exported.
    #[error("fenced: {0}")]
    Fenced(String),
    /// dirsync itself refused the cursor's sync cookie before sending it (it is not of the
    /// form the source speaks): the source never saw it. A full import is needed.
    #[error("the cursor's sync cookie is unusable (a full import is needed): {0}")]
    CookieUnusable(String),
    /// The source refused in a way no retry can fix (bad credentials, no such base DN, an
    /// unsupported control): see `source::result`.
    #[error("source: {0}")]
    SourceRefused(String),
    /// The source broke the protocol or one of `[source]`'s limits (a malformed or oversized
    /// response, endless paging, a repeated cookie, the import's deadline): nothing it sent
    /// was recorded, and trying again would only cost the same again.
    #[error("source: {0}")]
    SourceMisbehaved(String),
}

/// Process exit codes (INTERFACE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    BadInput = 2,
    Held = 3,
    Fenced = 4,
    Found = 5,
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::Config(_)
            | Error::BadInput(_)
            | Error::SchemaTooNew { .. }
            | Error::NotInitialised { .. } => Exit::BadInput,
            Error::ChainBroken { .. } | Error::ProjectionMismatch(_) => Exit::Found,
            Error::Store(_)
            | Error::StoreFiles { .. }
            | Error::Conflict { .. }
            | Error::Refused(_)
            | Error::Io(_)
            | Error::Source(_)
            | Error::SourceCookieRejected(_)
            | Error::CookieUnusable(_)
            | Error::SourceRefused(_)
            | Error::Target(_)
            | Error::SourceMisbehaved(_)
            | Error::CycleTimeout(_) => Exit::Failure,
            Error::Held(_) => Exit::Held,
            Error::Fenced(_) => Exit::Fenced,
        }
    }

    pub(crate) fn store(e: impl fmt::Display) -> Self {
        Error::Store(e.to_string())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

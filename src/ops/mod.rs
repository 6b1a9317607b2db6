//! Operating dirsync day to day: what the service tells a monitoring system (metrics, health,
//! readiness) and who it alerts (webhook, command).

pub mod metrics;
pub mod notify;

use crate::config::Hold;
use crate::error::{Error, Result};
use crate::sync::export::SyncReport;

/// How one cycle ended, as metrics label it and notifications judge it (a bounded set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Completed: everything planned was exported.
    Success,
    /// Completed, but some objects failed or conflicted (exit 1 after the summary).
    Partial,
    /// Completed with its deletions held by the guard (exit 3).
    Held,
    /// The cycle failed (`SyncRunFailed`, or refused before it began: source or target
    /// unreachable, cycle timeout, ...).
    Failed,
    /// Another instance holds the sync relationship (exit 4).
    Fenced,
    /// Refused before it began (another cycle of the instance was running): it did nothing.
    Skipped,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Partial,
        Outcome::Held,
        Outcome::Failed,
        Outcome::Fenced,
        Outcome::Skipped,
    ];

    /// How `result` ended (pure).
    pub fn of(result: &Result<SyncReport>) -> Outcome {
        match result {
            Ok(r) if r.held > 0 => Outcome::Held,
            Ok(r) if r.failures > 0 || r.conflicts > 0 => Outcome::Partial,
            Ok(_) => Outcome::Success,
            Err(Error::Held(_)) => Outcome::Held,
            Err(Error::Fenced(_)) => Outcome::Fenced,
            // Another cycle of the instance holds its lock (or it was retired meanwhile).
            Err(Error::Refused(_)) => Outcome::Skipped,
            Err(_) => Outcome::Failed,
        }
    }

    /// Whether the cycle completed (recorded as `SyncRunCompleted`): a success for
    /// readiness and `dirsync_last_success_timestamp_seconds`. A held cycle completed when
    /// it exported its creates and updates (`[sync] hold = "deletions"`); with
    /// `hold = "all"` it exported nothing and is recorded as failed (reason `held`).
    pub fn completed(self, hold: Hold) -> bool {
        match self {
            Outcome::Success | Outcome::Partial => true,
            Outcome::Held => hold == Hold::Deletions,
            Outcome::Failed | Outcome::Fenced | Outcome::Skipped => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Partial => "partial",
            Outcome::Held => "held",
            Outcome::Failed => "failed",
            Outcome::Fenced => "fenced",
            Outcome::Skipped => "skipped",
        }
    }
}

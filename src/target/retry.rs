//! The target-wide half of the retry policy: telling a blip from a target that is down.
//!
//! Each request retries on its own (429, 5xx, timeouts, refused connections: see the
//! targets). That is right for a blip and wrong for a target that is down: every operation
//! of the cycle spent its own retries on it (issue 18: 1,794 operations and 23 minutes
//! before exit 1, about 22 hours per cycle at 100,000 objects). A [`Breaker`] watches every
//! request of one target for one cycle. Once [`DOWN_AFTER_FAILURES`] requests in a row got
//! no answer (refused, reset or timed out), the first of them sent at least [`DOWN_AFTER`]
//! before the last failed, the target is down: no request is sent any more, and the error
//! that ends the cycle names the first cause, not the last retry's. Any answer (an HTTP
//! status, even 5xx) ends a run of failures.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TargetError;

/// Requests in a row without an answer before the target counts as down.
pub const DOWN_AFTER_FAILURES: u32 = 3;
/// ... and for at least this long: a restart of a second or two is a blip.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);

/// Whether a run of `failures` unanswered requests, the first sent `span` before the last
/// failed, means the target is down (pure).
pub fn is_down(failures: u32, span: Duration) -> bool {
    failures >= DOWN_AFTER_FAILURES && span >= DOWN_AFTER
}

#[derive(Debug, Default)]
struct Run {
    failures: u32,
    /// When the first request of the run was sent, and why it failed.
    first: Option<(Instant, String)>,
    /// Set once: the target stays down for the rest of the cycle.
    down: Option<TargetError>,
}

/// The down-detector of one target for one cycle (see the module).
#[derive(Debug, Default)]
pub struct Breaker {
    run: Mutex<Run>,
}

impl Breaker {
    fn run(&self) -> std::sync::MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The target answered (any status): a run of failures ends.
    pub fn answered(&self) {
        let mut r = self.run();
        if r.down.is_none() {
            r.failures = 0;
            r.first = None;
        }
    }

    /// A request sent at `sent` got no answer, because of `cause`. Returns the error that
    /// ends the cycle when this makes the target down.
    pub fn unanswered(&self, sent: Instant, cause: &str) -> Option<TargetError> {
        let mut r = self.run();
        if r.down.is_some() {
            return r.down.clone();
        }
        r.failures += 1;
        let (since, first) = r
            .first
            .get_or_insert_with(|| (sent, cause.to_string()))
            .clone();
        let span = since.elapsed();
        if !is_down(r.failures, span) {
            return None;
        }
        let e = TargetError {
            status: None,
            message: format!(
                "{first} (the target is down: {} requests in a row over {} s got no answer)",
                r.failures,
                span.as_secs()
            ),
            fatal: true,
            gone: false,
        };
        r.down = Some(e.clone());
        Some(e)
    }

    /// The error that ended the cycle, once the target is down.
    pub fn down(&self) -> Option<TargetError> {
        self.run().down.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_takes_several_failures_over_some_seconds() {
        assert!(!is_down(1, Duration::from_secs(60)));
        assert!(!is_down(50, Duration::from_secs(1)));
        assert!(is_down(3, DOWN_AFTER));
    }

    #[test]
    fn an_answer_ends_a_run_and_down_keeps_the_first_cause() {
        let b = Breaker::default();
        let long_ago = Instant::now() - Duration::from_secs(10);
        assert_eq!(b.unanswered(long_ago, "refused 1"), None);
        assert_eq!(b.unanswered(long_ago, "refused 2"), None);
        b.answered();
        assert_eq!(b.unanswered(Instant::now(), "refused 3"), None);
        assert_eq!(b.unanswered(long_ago, "refused 4"), None);
        assert_eq!(b.down(), None, "the run began with `refused 3`, just now");
        let b = Breaker::default();
        b.unanswered(long_ago, "refused 1");
        b.unanswered(long_ago, "refused 2");
        let e = b.unanswered(long_ago, "refused 3").unwrap();
        assert!(e.fatal);
        assert!(
            e.message
                .starts_with("refused 1 (the target is down: 3 requests in a row over 10 s"),
            "{}",
            e.message
        );
        b.answered();
        assert_eq!(b.down(), Some(e.clone()), "down stays down");
        assert_eq!(b.unanswered(Instant::now(), "later"), Some(e));
    }
}

//! Where the node's time comes from: the system's monotonic clock, or a manual clock that
//! only moves when told to (a simulation drives every node of a cluster from one).
//!
//! The node only ever compares and adds `Instant`s from one clock, so a manual clock hands
//! out instants at a fixed base plus the time advanced so far: the same advances give the
//! same instants relative to each other, run after run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A clock. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<ManualTime>>);

#[derive(Debug)]
struct ManualTime {
    base: Instant,
    elapsed_nanos: AtomicU64,
}

impl Clock {
    /// The system's monotonic clock.
    #[must_use]
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock standing still until [`Clock::advance`] moves it.
    #[must_use]
    pub fn manual() -> Self {
        Clock(Some(Arc::new(ManualTime {
            base: Instant::now(),
            elapsed_nanos: AtomicU64::new(0),
        })))
    }

    /// Whether this is a manual clock.
    #[must_use]
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }

    /// The current time.
    #[must_use]
    pub fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(manual) => {
                manual.base + Duration::from_nanos(manual.elapsed_nanos.load(Ordering::Acquire))
            }
        }
    }

    /// Time advanced so far on a manual clock (zero for the system clock).
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.0.as_ref().map_or(Duration::ZERO, |manual| {
            Duration::from_nanos(manual.elapsed_nanos.load(Ordering::Acquire))
        })
    }

    /// Moves a manual clock forward.
    ///
    /// # Panics
    /// On the system clock, which no one may move.
    pub fn advance(&self, by: Duration) {
        let manual = self
            .0
            .as_ref()
            .expect("only a manual clock can be advanced");
        manual
            .elapsed_nanos
            .fetch_add(by.as_nanos() as u64, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a manual clock moves only when advanced, by exactly as much, for every clone.
    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual();
        let shared = clock.clone();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        shared.advance(Duration::from_millis(150));
        assert_eq!(clock.now() - start, Duration::from_millis(150));
        assert_eq!(clock.elapsed(), Duration::from_millis(150));
        assert!(!Clock::system().is_manual() && clock.is_manual());
    }
}

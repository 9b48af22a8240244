//! How the suite waits out leases and pins, for stores with either kind of clock.

use std::time::Duration;

/// The time source of a conformance run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestTime {
    /// tokio's clock is paused (`#[tokio::test(start_paused = true)]`) and the store's
    /// lease, pin and commit clocks follow it (the memory store with
    /// [`crate::store::Clock::tokio`]): TTLs of a second, sleeps that take no real time.
    Paused,
    /// The store keeps its own clock (PostgreSQL's `clock_timestamp()`, shared by every
    /// server on the store): TTLs of `unit`, really slept. Short, so the suite stays fast;
    /// long enough that a loaded machine does not lose a lease between two steps (a step
    /// leaves 40% of a TTL spare).
    Real { unit: Duration },
}

impl TestTime {
    /// The TTL of the leases and pins that time-dependent tests wait out.
    pub fn unit(&self) -> Duration {
        match self {
            TestTime::Paused => Duration::from_secs(1),
            TestTime::Real { unit } => *unit,
        }
    }

    /// Waits `duration`: at once under a paused clock (tokio moves it), really otherwise.
    pub async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

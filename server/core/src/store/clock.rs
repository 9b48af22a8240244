//! Wall-clock time for commit timestamps (Unix ms), injectable so tests under a paused
//! tokio clock can move it.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where a store takes commit times from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system's wall clock (production).
    #[default]
    System,
    /// Unix ms that advance with tokio's clock from a starting point: under
    /// `#[tokio::test(start_paused = true)]`, `tokio::time::sleep` moves it.
    Tokio { start_unix_ms: i64, start: Instant },
}

impl Clock {
    /// A [`Clock::Tokio`] starting at the current wall-clock time.
    pub fn tokio() -> Self {
        Clock::Tokio {
            start_unix_ms: system_unix_ms(),
            start: Instant::now(),
        }
    }

    /// The time now, in Unix ms.
    pub fn unix_ms(&self) -> i64 {
        match self {
            Clock::System => system_unix_ms(),
            Clock::Tokio {
                start_unix_ms,
                start,
            } => {
                let elapsed = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
                start_unix_ms.saturating_add(elapsed)
            }
        }
    }
}

/// The system's wall-clock time in Unix ms (0 if the clock is before 1970).
pub fn system_unix_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A Unix-ms time for messages: RFC 3339 (UTC) when representable, else the number.
pub fn describe_unix_ms(unix_ms: i64) -> String {
    let Ok(ms) = u64::try_from(unix_ms) else {
        return format!("{unix_ms} ms (Unix)");
    };
    let time = UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms));
    match time {
        Some(t) if ms < 253_402_300_800_000 => {
            format!("{} ({ms} ms)", humantime::format_rfc3339_millis(t))
        }
        _ => format!("{ms} ms (Unix)"),
    }
}

/// The error for an as-of time that no version can answer because it precedes the
/// database's first commit (or the database has none): the same words from every store.
pub fn check_after_first_commit(
    first_commit_unix_ms: Option<i64>,
    unix_ms: i64,
) -> crate::store::StoreResult<()> {
    use crate::store::StoreError;
    let Some(first) = first_commit_unix_ms else {
        return Err(StoreError::OutOfRange(
            "the database has no committed version yet".into(),
        ));
    };
    if unix_ms < first {
        return Err(StoreError::OutOfRange(format!(
            "no version was committed at or before {}: the first commit (version 1) was at {}",
            describe_unix_ms(unix_ms),
            describe_unix_ms(first)
        )));
    }
    Ok(())
}

//! Reader pins: per database, version -> when its pin expires. A pinned version is safe
//! from GC. Small: one entry per version some reader used within the pin TTL.

use std::collections::BTreeMap;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub(super) struct Pins {
    expires: BTreeMap<u64, Instant>,
}

impl Pins {
    /// Pins `version` until at least `until` (a later pin is never shortened).
    pub(super) fn pin(&mut self, version: u64, until: Instant) {
        let expiry = self.expires.entry(version).or_insert(until);
        *expiry = (*expiry).max(until);
    }

    /// Extends the pin on `version` to at least `until`, if a reader pinned it.
    pub(super) fn refresh(&mut self, version: u64, until: Instant) {
        if let Some(expiry) = self.expires.get_mut(&version) {
            *expiry = (*expiry).max(until);
        }
    }

    /// Forgets pins that expired by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        self.expires.retain(|_, until| *until > now);
    }

    /// Whether `version` is pinned at `now`.
    pub(super) fn holds(&self, version: u64, now: Instant) -> bool {
        self.expires.get(&version).is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pins_expire_and_extend() {
        let now = Instant::now();
        let mut pins = Pins::default();
        pins.pin(3, now + Duration::from_secs(5));
        pins.pin(3, now + Duration::from_secs(1)); // never shortened
        assert!(pins.holds(3, now + Duration::from_secs(4)));
        assert!(!pins.holds(4, now));
        pins.refresh(4, now + Duration::from_secs(5)); // refresh never creates a pin
        assert!(!pins.holds(4, now));
        pins.refresh(3, now + Duration::from_secs(6));
        assert!(pins.holds(3, now + Duration::from_millis(5500)));
        pins.expire(now + Duration::from_secs(6));
        assert!(!pins.holds(3, now));
    }
}

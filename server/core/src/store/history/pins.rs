//! Reader pins: per database, version -> when its pin expires. A pinned version is safe
//! from GC ([`super::History::kept`] asks [`Pins::holds`]). Small: one entry per version some reader used within the pin TTL. A pin
//! never outlives its maximum age (counted from when it was made), however often it is
//! extended, so no reader keeps history forever.

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::store::{PinTtl, Version};

#[derive(Debug, Clone, Copy)]
struct Pin {
    until: Instant,
    /// The latest `until` may ever be: made + max age.
    cap: Instant,
}

/// The reader pins of one database (in memory: a pin lost in a restart only lets GC
/// collect early, and the reader then gets `OutOfRange`, never wrong data).
#[derive(Debug, Default)]
pub struct Pins {
    expires: BTreeMap<Version, Pin>,
}

impl Pins {
    /// Pins `version` for `ttl.ttl` from `now` (a later pin is never shortened; an
    /// existing pin keeps its age limit).
    pub fn pin(&mut self, version: Version, ttl: PinTtl, now: Instant) {
        let cap = now + ttl.max_age;
        let pin = self
            .expires
            .entry(version)
            .or_insert(Pin { until: now, cap });
        pin.until = pin.until.max((now + ttl.ttl).min(pin.cap));
    }

    /// Extends the pin on `version` to `ttl.ttl` from `now` (within its age limit), if
    /// a reader pinned it.
    pub fn refresh(&mut self, version: Version, ttl: PinTtl, now: Instant) {
        if let Some(pin) = self.expires.get_mut(&version) {
            pin.until = pin.until.max((now + ttl.ttl).min(pin.cap));
        }
    }

    /// Forgets pins that expired by `now`.
    pub fn expire(&mut self, now: Instant) {
        self.expires.retain(|_, pin| pin.until > now);
    }

    /// Whether no pin is live at `now` (a store may then drop the database from memory).
    pub fn none_live(&self, now: Instant) -> bool {
        self.expires.values().all(|pin| pin.until <= now)
    }

    /// Whether `version` is pinned at `now`.
    pub fn holds(&self, version: Version, now: Instant) -> bool {
        self.expires
            .get(&version)
            .is_some_and(|pin| pin.until > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ttl(secs: u64) -> PinTtl {
        PinTtl {
            ttl: Duration::from_secs(secs),
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn pins_expire_and_extend() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut pins = Pins::default();
        pins.pin(Version(3), ttl(5), now);
        pins.pin(Version(3), ttl(1), now); // never shortened
        assert!(pins.holds(Version(3), now + s(4)));
        assert!(!pins.holds(Version(4), now));
        pins.refresh(Version(4), ttl(5), now); // refresh never creates a pin
        assert!(!pins.holds(Version(4), now));
        pins.refresh(Version(3), ttl(5), now + s(1));
        assert!(pins.holds(Version(3), now + Duration::from_millis(5500)));
        pins.expire(now + s(6));
        assert!(!pins.holds(Version(3), now));
    }

    #[test]
    fn pins_never_outlive_their_max_age() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let short = PinTtl {
            ttl: s(2),
            max_age: s(5),
        };
        let mut pins = Pins::default();
        pins.pin(Version(7), short, now);
        for t in 1..10 {
            pins.refresh(Version(7), short, now + s(t));
            pins.pin(Version(7), short, now + s(t));
        }
        assert!(pins.holds(Version(7), now + Duration::from_millis(4900)));
        assert!(
            !pins.holds(Version(7), now + s(5)),
            "capped at made + max age"
        );
    }
}

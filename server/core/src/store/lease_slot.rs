//! The write lease of one database, as a small state machine any store can keep and
//! persist: grant (a new epoch, never reused), check (fencing, with the `LeaseLost` words
//! every store answers), renew, renew on commit, release. Times are Unix ms from the
//! store's [`Clock`](crate::store::Clock), so a durable store can write a record down and
//! load it back after a restart.
//!
//! Deciding and installing are apart: [`LeaseSlot::grant`] and [`LeaseSlot::renewal`]
//! only decide the new [`LeaseRecord`] (a refusal changes nothing); [`LeaseSlot::set`]
//! installs it; [`LeaseSlot::acquire`] and [`LeaseSlot::renew`] do both. Both types are
//! serde data: a store that logs its changes can log the slot after each one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{DbState, Lease, LeaseId, StoreError, StoreResult};

/// A lease granted: its holder is kept after expiry until replaced, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    #[serde(with = "id_bytes")]
    pub lease_id: LeaseId,
    pub epoch: u64,
    pub client_id: String,
    pub ttl: Duration,
    pub expires_unix_ms: i64,
}

impl LeaseRecord {
    pub fn live(&self, now_unix_ms: i64) -> bool {
        now_unix_ms < self.expires_unix_ms
    }

    /// The [`Lease`] a grant or renewal answers, on a database at `state`.
    pub fn lease(&self, state: DbState) -> Lease {
        Lease {
            lease_id: self.lease_id,
            epoch: self.epoch,
            ttl: self.ttl,
            state,
        }
    }
}

/// A [`LeaseId`] as its 16 bytes.
mod id_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::store::LeaseId;

    pub fn serialize<S: Serializer>(id: &LeaseId, s: S) -> Result<S::Ok, S::Error> {
        id.0.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LeaseId, D::Error> {
        <[u8; 16]>::deserialize(d).map(LeaseId)
    }
}

/// Why a lease check failed: [`lease_lost`] words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLost {
    /// No lease is held (released, or none was ever granted).
    NotHeld,
    /// A newer lease (this epoch) replaced it.
    SupersededBy(u64),
    /// It is the current lease, but it expired this many ms ago.
    ExpiredAgo(i64),
}

/// The `LeaseLost` error for the lease of `epoch`: the same words from every store.
pub fn lease_lost(epoch: u64, why: LeaseLost) -> StoreError {
    StoreError::LeaseLost(match why {
        LeaseLost::NotHeld => format!(
            "the write lease (epoch {epoch}) is no longer held (released or expired); acquire a new one"
        ),
        LeaseLost::SupersededBy(current) => {
            format!("the write lease (epoch {epoch}) was superseded by epoch {current}")
        }
        LeaseLost::ExpiredAgo(ago_ms) => {
            format!("the write lease (epoch {epoch}) expired {ago_ms} ms ago; acquire a new one")
        }
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One database's lease: the last one granted and the highest epoch ever granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSlot {
    lease: Option<LeaseRecord>,
    /// Highest epoch ever granted: epochs are never reused.
    max_epoch: u64,
}

impl LeaseSlot {
    /// The last lease granted, live or not (`None` after a release).
    pub fn current(&self) -> Option<&LeaseRecord> {
        self.lease.as_ref()
    }

    pub fn max_epoch(&self) -> u64 {
        self.max_epoch
    }

    /// The current lease if it has not expired.
    pub fn live(&self, now_unix_ms: i64) -> Option<&LeaseRecord> {
        self.lease.as_ref().filter(|l| l.live(now_unix_ms))
    }

    /// Decides lease `lease_id` with the next epoch, unless a live one is held
    /// (`LeaseHeld`). When the live lease is `lease_id` already (an acquire retried after
    /// its answer was lost), decides it renewed by `ttl`: the same lease, epoch and holder.
    pub fn grant(
        &self,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
        now: i64,
    ) -> StoreResult<LeaseRecord> {
        if let Some(held) = self.live(now) {
            if held.lease_id == lease_id {
                return self.renewal(lease_id, held.epoch, ttl, now);
            }
            let remaining = Duration::from_millis((held.expires_unix_ms - now) as u64);
            return Err(StoreError::LeaseHeld {
                holder: held.client_id.clone(),
                remaining,
            });
        }
        Ok(LeaseRecord {
            lease_id,
            epoch: self.max_epoch + 1,
            client_id: client_id.to_owned(),
            ttl,
            expires_unix_ms: now.saturating_add(ms(ttl)),
        })
    }

    /// Fencing: the current lease if `lease_id`/`epoch` name it and it has not expired.
    pub fn check(&self, lease_id: LeaseId, epoch: u64, now: i64) -> StoreResult<&LeaseRecord> {
        let Some(lease) = self.lease.as_ref() else {
            return Err(lease_lost(epoch, LeaseLost::NotHeld));
        };
        if lease.lease_id != lease_id || lease.epoch != epoch {
            return Err(lease_lost(epoch, LeaseLost::SupersededBy(lease.epoch)));
        }
        if !lease.live(now) {
            let ago = now.saturating_sub(lease.expires_unix_ms);
            return Err(lease_lost(epoch, LeaseLost::ExpiredAgo(ago)));
        }
        Ok(lease)
    }

    /// Decides the current lease extended by `ttl` from now (checked as [`Self::check`]).
    pub fn renewal(
        &self,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
        now: i64,
    ) -> StoreResult<LeaseRecord> {
        let mut lease = self.check(lease_id, epoch, now)?.clone();
        lease.ttl = ttl;
        lease.expires_unix_ms = now.saturating_add(ms(ttl));
        Ok(lease)
    }

    /// Installs a lease decided by [`Self::grant`] or [`Self::renewal`].
    pub fn set(&mut self, record: LeaseRecord) {
        self.max_epoch = self.max_epoch.max(record.epoch);
        self.lease = Some(record);
    }

    /// [`Self::grant`], then [`Self::set`].
    pub fn acquire(
        &mut self,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
        now: i64,
    ) -> StoreResult<LeaseRecord> {
        let record = self.grant(client_id, lease_id, ttl, now)?;
        self.set(record.clone());
        Ok(record)
    }

    /// [`Self::renewal`], then [`Self::set`].
    pub fn renew(
        &mut self,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
        now: i64,
    ) -> StoreResult<LeaseRecord> {
        let record = self.renewal(lease_id, epoch, ttl, now)?;
        self.set(record.clone());
        Ok(record)
    }

    /// A commit renews the lease: extends it by its own TTL from `now`.
    pub fn touch(&mut self, now: i64) {
        if let Some(lease) = self.lease.as_mut() {
            lease.expires_unix_ms = now.saturating_add(ms(lease.ttl));
        }
    }

    /// Whether `lease_id`/`epoch` name the current lease (live or not).
    pub fn is_current(&self, lease_id: LeaseId, epoch: u64) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.lease_id == lease_id && l.epoch == epoch)
    }

    /// Releases the lease if `lease_id`/`epoch` name the current one; returns whether it
    /// did (releasing another lease is a no-op).
    pub fn release(&mut self, lease_id: LeaseId, epoch: u64) -> bool {
        let ours = self.is_current(lease_id, epoch);
        if ours {
            self.lease = None;
        }
        ours
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_grow_and_fencing_words() -> StoreResult<()> {
        let ttl = Duration::from_secs(1);
        let mut slot = LeaseSlot::default();
        let a = slot.acquire("a", id(1), ttl, 0)?;
        assert!(matches!(
            slot.grant("b", id(2), ttl, 10),
            Err(StoreError::LeaseHeld { .. })
        ));
        let expired = slot.check(a.lease_id, 1, 1500).map(drop);
        assert!(
            format!("{expired:?}").contains("expired 500 ms ago"),
            "{expired:?}"
        );
        let b = slot.acquire("b", id(2), ttl, 1500)?;
        assert_eq!(b.epoch, 2);
        let old = slot.check(a.lease_id, 1, 1600).map(drop);
        assert!(
            format!("{old:?}").contains("superseded by epoch 2"),
            "{old:?}"
        );
        assert!(slot.release(b.lease_id, 2));
        assert_eq!(slot.acquire("c", id(3), ttl, 1600)?.epoch, 3);
        Ok(())
    }

    fn id(n: u8) -> LeaseId {
        LeaseId([n; 16])
    }

    #[test]
    fn an_acquire_retried_with_the_live_leases_id_gets_it_renewed() -> StoreResult<()> {
        let ttl = Duration::from_secs(1);
        let mut slot = LeaseSlot::default();
        let first = slot.acquire("a", id(1), ttl, 0)?;
        let again = slot.acquire("a", id(1), ttl, 600)?;
        assert_eq!((again.lease_id, again.epoch), (first.lease_id, 1));
        assert_eq!(again.expires_unix_ms, 1600, "renewed from the retry");
        assert!(matches!(
            slot.grant("b", id(2), ttl, 700),
            Err(StoreError::LeaseHeld { .. })
        ));
        // Once it ran out, the same id is a new grant: a new epoch fences the old one.
        assert_eq!(slot.acquire("a", id(1), ttl, 1700)?.epoch, 2);
        Ok(())
    }
}

//! The write lease of one database: grant, check (fencing), renew, release.

use std::time::Duration;

use tokio::time::Instant;

use crate::store::{LeaseId, StoreError, StoreResult, random_id};

/// The holder of a write lease (kept after expiry until replaced, for error messages).
#[derive(Debug, Clone)]
pub(super) struct LeaseRecord {
    pub lease_id: LeaseId,
    pub epoch: u64,
    pub client_id: String,
    pub ttl: Duration,
    pub expires: Instant,
}

impl LeaseRecord {
    fn live(&self, now: Instant) -> bool {
        now < self.expires
    }
}

#[derive(Debug, Default)]
pub(super) struct LeaseSlot {
    lease: Option<LeaseRecord>,
    /// Highest epoch ever granted: epochs are never reused.
    max_epoch: u64,
}

impl LeaseSlot {
    pub(super) fn live(&self, now: Instant) -> Option<&LeaseRecord> {
        self.lease.as_ref().filter(|l| l.live(now))
    }

    /// Grants a new lease with the next epoch unless a live one is held.
    pub(super) fn acquire(
        &mut self,
        client_id: &str,
        ttl: Duration,
        now: Instant,
    ) -> StoreResult<LeaseRecord> {
        if let Some(held) = self.live(now) {
            let remaining = held.expires.saturating_duration_since(now);
            return Err(StoreError::LeaseHeld {
                holder: held.client_id.clone(),
                remaining,
            });
        }
        self.max_epoch += 1;
        let record = LeaseRecord {
            lease_id: random_id(),
            epoch: self.max_epoch,
            client_id: client_id.to_owned(),
            ttl,
            expires: now + ttl,
        };
        self.lease = Some(record.clone());
        Ok(record)
    }

    /// The current lease if `lease_id`/`epoch` name it and it has not expired.
    pub(super) fn check(
        &mut self,
        lease_id: LeaseId,
        epoch: u64,
        now: Instant,
    ) -> StoreResult<&mut LeaseRecord> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(StoreError::LeaseLost(format!(
                "the write lease (epoch {epoch}) is no longer held (released or expired); acquire a new one"
            )));
        };
        if lease.lease_id != lease_id || lease.epoch != epoch {
            return Err(StoreError::LeaseLost(format!(
                "the write lease (epoch {epoch}) was superseded by epoch {}",
                lease.epoch
            )));
        }
        if !lease.live(now) {
            let ago = now.saturating_duration_since(lease.expires).as_millis();
            return Err(StoreError::LeaseLost(format!(
                "the write lease (epoch {epoch}) expired {ago} ms ago; acquire a new one"
            )));
        }
        Ok(lease)
    }

    /// Extends the current lease by `ttl` from now.
    pub(super) fn renew(
        &mut self,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
        now: Instant,
    ) -> StoreResult<LeaseRecord> {
        let lease = self.check(lease_id, epoch, now)?;
        lease.ttl = ttl;
        lease.expires = now + ttl;
        Ok(lease.clone())
    }

    /// Extends the current lease by its own TTL (a commit renews it).
    pub(super) fn touch(&mut self, now: Instant) {
        if let Some(lease) = self.lease.as_mut() {
            lease.expires = now + lease.ttl;
        }
    }

    /// Releases the lease if `lease_id`/`epoch` name the current one.
    pub(super) fn release(&mut self, lease_id: LeaseId, epoch: u64) {
        let ours = self
            .lease
            .as_ref()
            .is_some_and(|l| l.lease_id == lease_id && l.epoch == epoch);
        if ours {
            self.lease = None;
        }
    }
}

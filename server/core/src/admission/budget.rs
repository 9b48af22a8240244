//! In-flight commit bytes: a server-wide budget and one per tenant. A commit stream's
//! [`CommitCharge`] takes from both as its bytes arrive and gives everything back when
//! it is dropped (the commit applied, failed, or the stream broke). Taking never waits:
//! a stream that would go over is refused at once, so partial streams can never hold
//! the budget hostage from each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tonic::Status;

use crate::limits::{Limits, exhausted};

/// Bytes in use out of a limit.
struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    fn try_take(&self, n: u64) -> bool {
        let take = |used: u64| used.checked_add(n).filter(|&total| total <= self.limit);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, take)
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The server-wide budget and the per-tenant ones.
pub struct Budgets {
    max_commit_bytes: u64,
    server: Budget,
    tenant_limit: u64,
    /// One per tenant that ever committed: tenants come from the tokens file (or are the
    /// one development tenant), so this is bounded by configuration, not by requests.
    tenants: Mutex<HashMap<String, Arc<Budget>>>,
}

impl Budgets {
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_commit_bytes: limits.max_commit_bytes,
            server: Budget::new(limits.max_inflight_commit_bytes),
            tenant_limit: limits.max_tenant_inflight_commit_bytes,
            tenants: Mutex::default(),
        }
    }

    fn tenant(&self, tenant: &str) -> Arc<Budget> {
        let mut tenants = self.tenants.lock();
        if let Some(b) = tenants.get(tenant) {
            return b.clone();
        }
        let budget = Arc::new(Budget::new(self.tenant_limit));
        tenants.insert(tenant.to_owned(), budget.clone());
        budget
    }

    /// Server-wide commit bytes in flight.
    pub fn in_flight(&self) -> u64 {
        self.server.used.load(Ordering::Acquire)
    }
}

/// One Commit stream's bytes.
pub struct CommitCharge {
    budgets: Arc<Budgets>,
    state: Mutex<ChargeState>,
}

#[derive(Default)]
struct ChargeState {
    /// Bytes taken for the stream, from the server budget (and from the tenant's once
    /// it is known).
    total: u64,
    /// Of those, bytes received (the commit's size as `--max-commit-bytes` counts it).
    received: u64,
    tenant: Option<Arc<Budget>>,
}

impl CommitCharge {
    pub fn new(budgets: Arc<Budgets>) -> Self {
        Self {
            budgets,
            state: Mutex::default(),
        }
    }

    /// Names the stream's tenant (once authenticated): what it received so far is taken
    /// from that tenant's budget too.
    pub fn set_tenant(&self, tenant: &str) -> Result<(), Status> {
        let budget = self.budgets.tenant(tenant);
        let mut s = self.state.lock();
        if s.tenant.is_some() {
            return Ok(());
        }
        if !budget.try_take(s.total) {
            return Err(tenant_full(&budget));
        }
        s.tenant = Some(budget);
        Ok(())
    }

    /// Takes `n` more received bytes, or refuses the stream naming the limit.
    pub fn take(&self, n: u64) -> Result<(), Status> {
        self.take_as(n, true)
    }

    /// Takes `n` bytes of memory the server spends on the commit beyond what it
    /// received (budgeted, but not part of the commit's size).
    pub fn take_overhead(&self, n: u64) -> Result<(), Status> {
        self.take_as(n, false)
    }

    fn take_as(&self, n: u64, received: bool) -> Result<(), Status> {
        let mut s = self.state.lock();
        let total = s.total.saturating_add(n);
        let size = s.received.saturating_add(if received { n } else { 0 });
        let b = &self.budgets;
        if size > b.max_commit_bytes {
            let what = format!(
                "the commit stream carried more than {} bytes",
                b.max_commit_bytes
            );
            return Err(exhausted(what, "--max-commit-bytes"));
        }
        if !b.server.try_take(n) {
            let what = format!(
                "the server already holds {} bytes of commits in flight",
                b.server.limit
            );
            return Err(exhausted(what, "--max-inflight-commit-bytes"));
        }
        if let Some(tenant) = &s.tenant
            && !tenant.try_take(n)
        {
            b.server.give(n);
            return Err(tenant_full(tenant));
        }
        (s.total, s.received) = (total, size);
        Ok(())
    }
}

fn tenant_full(budget: &Budget) -> Status {
    let what = format!(
        "this tenant already has {} bytes of commits in flight",
        budget.limit
    );
    exhausted(what, "--max-tenant-inflight-commit-bytes")
}

impl Drop for CommitCharge {
    fn drop(&mut self) {
        let s = self.state.get_mut();
        self.budgets.server.give(s.total);
        if let Some(tenant) = &s.tenant {
            tenant.give(s.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(commit: u64, server: u64, tenant: u64) -> Arc<Budgets> {
        let limits = Limits {
            max_commit_bytes: commit,
            max_inflight_commit_bytes: server,
            max_tenant_inflight_commit_bytes: tenant,
            ..Limits::default()
        };
        Arc::new(Budgets::new(&limits))
    }

    fn refused_by(r: Result<(), Status>) -> String {
        r.err().map(|s| s.message().to_owned()).unwrap_or_default()
    }

    #[test]
    fn charges_are_bounded_and_given_back() {
        let b = budgets(100, 150, 120);
        let one = CommitCharge::new(b.clone());
        assert!(one.set_tenant("a").is_ok());
        assert!(one.take(100).is_ok());
        assert!(refused_by(one.take(1)).contains("--max-commit-bytes"));
        let two = CommitCharge::new(b.clone());
        assert!(two.take(30).is_ok(), "server budget has room");
        assert!(refused_by(two.set_tenant("a")).contains("--max-tenant-inflight-commit-bytes"));
        let three = CommitCharge::new(b.clone());
        assert!(three.set_tenant("b").is_ok());
        assert!(refused_by(three.take(21)).contains("--max-inflight-commit-bytes"));
        assert_eq!(b.in_flight(), 130);
        drop((one, two, three));
        assert_eq!(b.in_flight(), 0);
        let again = CommitCharge::new(b.clone());
        assert!(again.set_tenant("a").is_ok());
        assert!(again.take(100).is_ok(), "the tenant's budget came back");
    }
}

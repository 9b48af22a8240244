//! Counters of the watch hub, per tenant, served by `Admin.GetMetrics` to that tenant
//! only (one tenant must not see another's activity).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pagewire_proto::v1 as pb;
use parking_lot::Mutex;

/// Bucket upper bounds (µs) of the invalidation-wait histogram; one more bucket holds
/// everything above the last.
const BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A fixed-bucket histogram that many tasks record into without a lock.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_proto(&self) -> pb::Histogram {
        pb::Histogram {
            bounds_us: BOUNDS_US.to_vec(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// One tenant's counters.
#[derive(Debug, Default)]
pub struct TenantMetrics {
    /// Open Watch streams.
    pub watchers: AtomicU64,
    /// Commits that went through a round.
    pub commits: AtomicU64,
    pub invalidation_wait: Histogram,
}

/// Every tenant's counters. An entry is made when a tenant first watches or commits
/// and kept: tenants are only those of the tokens file (or `default` without one), so
/// the map never holds more than that.
#[derive(Debug, Default)]
pub struct Metrics {
    tenants: Mutex<HashMap<String, Arc<TenantMetrics>>>,
}

impl Metrics {
    /// `tenant`'s counters, made on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantMetrics> {
        let mut tenants = self.tenants.lock();
        if let Some(m) = tenants.get(tenant) {
            return m.clone();
        }
        tenants.entry(tenant.to_owned()).or_default().clone()
    }

    /// Every tenant that ever watched or committed.
    pub fn tenant_names(&self) -> Vec<String> {
        self.tenants.lock().keys().cloned().collect()
    }

    /// `tenant`'s counters, if it ever watched or committed.
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantMetrics>> {
        self.tenants.lock().get(tenant).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(51));
        h.record(Duration::from_secs(5));
        let p = h.to_proto();
        assert_eq!(p.counts.len(), p.bounds_us.len() + 1);
        assert_eq!(p.counts[0], 1, "50 µs is within the first bound");
        assert_eq!(p.counts[1], 1);
        assert_eq!(p.counts[p.bounds_us.len()], 1, "5 s overflows");
        assert_eq!((p.count, p.sum_us), (3, 5_000_101));
    }

    #[test]
    fn tenants_count_apart() {
        let m = Metrics::default();
        m.tenant("a").commits.fetch_add(2, Ordering::Relaxed);
        m.tenant("b").commits.fetch_add(1, Ordering::Relaxed);
        m.tenant("a").commits.fetch_add(1, Ordering::Relaxed);
        let commits = |t: &str| m.get(t).map(|t| t.commits.load(Ordering::Relaxed));
        assert_eq!(
            (commits("a"), commits("b"), commits("c")),
            (Some(3), Some(1), None)
        );
    }
}

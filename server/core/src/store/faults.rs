//! Fault injection for retry tests (the hidden `--inject-fault` flag): [`FaultyStore`]
//! wraps any store and misbehaves on purpose, as a flaky network or store would.
//!
//! `commit-reply-lost=N`: every Nth successful commit is applied, then answered
//! `Unavailable` as if the reply had been lost. A retry with the same commit id learns
//! the outcome (`already_applied`), because the store checks commit ids first.

use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    BeginRead, Commit, CommitHeader, CommitOutcome, DbInfo, DbKey, DbState, GcStats, Lease,
    LeaseId, PageRead, PageStore, PinTtl, ReadAt, ReadView, RestorePoint, Retention, StoreError,
    StoreResult, Version,
};

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every Nth successful (newly applied) commit answers `Unavailable`.
    CommitReplyLost { every: NonZeroU64 },
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let usage = "expected commit-reply-lost=N (N >= 1)";
        let (kind, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("bad fault {spec:?}: {usage}"))?;
        match kind {
            "commit-reply-lost" => {
                let every = value
                    .parse::<NonZeroU64>()
                    .map_err(|e| format!("bad fault {spec:?}: {e}; {usage}"))?;
                Ok(Fault::CommitReplyLost { every })
            }
            other => Err(format!("unknown fault {other:?}: {usage}")),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::CommitReplyLost { every } => write!(f, "commit-reply-lost={every}"),
        }
    }
}

/// A store that injects a [`Fault`]; everything else goes to the inner store unchanged.
pub struct FaultyStore {
    inner: Arc<dyn PageStore>,
    fault: Fault,
    /// Commits newly applied so far.
    applied: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn PageStore>, fault: Fault) -> Self {
        tracing::warn!(%fault, "fault injection is on: for tests only");
        Self {
            inner,
            fault,
            applied: AtomicU64::new(0),
        }
    }

    /// `store`, wrapped when a fault is asked for.
    pub fn wrap(store: Arc<dyn PageStore>, fault: Option<Fault>) -> Arc<dyn PageStore> {
        match fault {
            Some(fault) => Arc::new(FaultyStore::new(store, fault)),
            None => store,
        }
    }
}

#[async_trait]
impl PageStore for FaultyStore {
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)> {
        self.inner.open(key, create).await
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        self.inner.create(key).await
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>> {
        self.inner.list(tenant).await
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        self.inner.info(key).await
    }

    async fn acquire_lease_as(
        &self,
        key: &DbKey,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.inner
            .acquire_lease_as(key, client_id, lease_id, ttl)
            .await
    }

    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.inner.renew_lease(key, lease_id, epoch, ttl).await
    }

    async fn release_lease(&self, key: &DbKey, lease_id: LeaseId, epoch: u64) -> StoreResult<()> {
        self.inner.release_lease(key, lease_id, epoch).await
    }

    async fn begin_read(&self, key: &DbKey, read: BeginRead) -> StoreResult<ReadView> {
        self.inner.begin_read(key, read).await
    }

    async fn read_pages(
        &self,
        key: &DbKey,
        version: Version,
        page_nos: &[u32],
        pin: PinTtl,
    ) -> StoreResult<PageRead> {
        self.inner.read_pages(key, version, page_nos, pin).await
    }

    async fn precheck(
        &self,
        key: &DbKey,
        header: CommitHeader,
    ) -> StoreResult<Option<CommitOutcome>> {
        self.inner.precheck(key, header).await
    }

    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome> {
        let outcome = self.inner.commit(key, commit).await?;
        let Fault::CommitReplyLost { every } = self.fault;
        if outcome.already_applied {
            return Ok(outcome);
        }
        let n = self.applied.fetch_add(1, Ordering::Relaxed) + 1;
        // `%` rather than `is_multiple_of` (Rust 1.87): the workspace supports 1.85.
        #[allow(clippy::manual_is_multiple_of)]
        if n % every.get() != 0 {
            return Ok(outcome);
        }
        tracing::warn!(db = %key, version = %outcome.version, "injected fault: commit applied, reply lost");
        Err(StoreError::Unavailable("injected fault: reply lost".into()))
    }

    async fn gc(&self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        self.inner.gc(now_unix_ms, retention).await
    }

    async fn gc_with(&self, now_unix_ms: i64, retention: &Retention) -> StoreResult<GcStats> {
        self.inner.gc_with(now_unix_ms, retention).await
    }

    async fn fork(&self, source: &DbKey, at: ReadAt, new: &DbKey) -> StoreResult<DbInfo> {
        self.inner.fork(source, at, new).await
    }

    async fn add_restore_point(
        &self,
        key: &DbKey,
        label: &str,
        at: ReadAt,
    ) -> StoreResult<RestorePoint> {
        self.inner.add_restore_point(key, label, at).await
    }

    async fn restore_points(&self, key: &DbKey) -> StoreResult<Vec<RestorePoint>> {
        self.inner.restore_points(key).await
    }

    async fn remove_restore_point(&self, key: &DbKey, label: &str) -> StoreResult<()> {
        self.inner.remove_restore_point(key, label).await
    }

    async fn detached_bytes(&self, tenant: &str) -> StoreResult<u64> {
        self.inner.detached_bytes(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::store::conformance::commit;

    #[test]
    fn parses_faults() {
        let three = NonZeroU64::new(3).map(|every| Fault::CommitReplyLost { every });
        assert_eq!("commit-reply-lost=3".parse::<Fault>().ok(), three);
        assert_eq!(
            three.map(|f| f.to_string()).as_deref(),
            Some("commit-reply-lost=3")
        );
        for bad in [
            "commit-reply-lost=0",
            "commit-reply-lost=x",
            "commit-reply-lost",
            "drop=1",
            "",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn every_nth_commit_is_applied_but_answers_unavailable() -> anyhow::Result<()> {
        let fault = "commit-reply-lost=2"
            .parse::<Fault>()
            .map_err(anyhow::Error::msg)?;
        let store = FaultyStore::wrap(Arc::new(MemoryStore::new()), Some(fault));
        let key = DbKey::new("t", "a.db");
        store.open(&key, true).await?;
        let lease = store
            .acquire_lease(&key, "w", Duration::from_secs(10))
            .await?;
        let first = commit(&lease, 0, 4096, 1, &[(1, 1)]);
        assert_eq!(store.commit(&key, first.clone()).await?.version, Version(1));
        // A retry answered from the commit-id log is not counted.
        assert!(store.commit(&key, first).await?.already_applied);
        let second = commit(&lease, 1, 4096, 1, &[(1, 2)]);
        let lost = store.commit(&key, second.clone()).await;
        assert!(
            matches!(&lost, Err(StoreError::Unavailable(m)) if m.contains("reply lost")),
            "{lost:?}"
        );
        assert_eq!(
            store.info(&key).await?.state.version,
            Version(2),
            "applied anyway"
        );
        let retry = store.commit(&key, second).await?;
        assert_eq!((retry.version, retry.already_applied), (Version(2), true));
        let third = commit(&lease, 2, 4096, 1, &[(1, 3)]);
        assert_eq!(store.commit(&key, third).await?.version, Version(3));
        let fourth = commit(&lease, 3, 4096, 1, &[(1, 4)]);
        assert!(
            store.commit(&key, fourth).await.is_err(),
            "the 4th is lost too"
        );
        Ok(())
    }

    #[tokio::test]
    async fn failed_commits_are_not_counted_or_masked() -> anyhow::Result<()> {
        let every = NonZeroU64::MIN; // every successful commit loses its reply
        let store = FaultyStore::new(
            Arc::new(MemoryStore::new()),
            Fault::CommitReplyLost { every },
        );
        let key = DbKey::new("t", "a.db");
        store.open(&key, true).await?;
        let lease = store
            .acquire_lease(&key, "w", Duration::from_secs(10))
            .await?;
        let stale = commit(&lease, 5, 4096, 1, &[(1, 1)]);
        let err = store.commit(&key, stale).await;
        assert!(
            matches!(err, Err(StoreError::VersionConflict { .. })),
            "{err:?}"
        );
        assert_eq!(store.info(&key).await?.state.version, Version(0));
        Ok(())
    }
}

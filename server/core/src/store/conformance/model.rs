//! The randomized run: random commits (random page sizes and counts, truncates, grows,
//! failed ones, retries), reads and change lists at random versions, and GC, applied to
//! the store under test and to a fresh [`MemoryStore`] as the reference model. Every
//! answer must match: the same data, or the same kind of error.

use std::mem::discriminant;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Outcome, PIN, key, page_one};
use crate::store::clock::system_unix_ms;
use crate::store::{
    BeginRead, Commit, DbInfo, DbKey, Identity, Lease, MemoryStore, PageStore, ReadAt, StoreResult,
    Version,
};

/// Operations per run.
const STEPS: usize = 150;
const PAGE_SIZES: [u32; 4] = [512, 1024, 4096, 8192];
/// The writer's lease: outlives any run, so only the spoiled commits lose it.
const TTL: Duration = Duration::from_secs(600);

/// One store and its writer's lease.
struct Side<'a> {
    store: &'a dyn PageStore,
    lease: Lease,
}

/// The state both sides should agree on, as the test sees it.
struct Run<'a> {
    rng: StdRng,
    seed: u64,
    key: DbKey,
    sides: [Side<'a>; 2],
    /// Commits applied so far (for retries by commit id).
    applied: Vec<Commit>,
    version: u64,
    page_size: u32,
    page_count: u32,
}

/// Answers compared as "same value, or same kind of error".
fn same<T: PartialEq + std::fmt::Debug>(a: &StoreResult<T>, b: &StoreResult<T>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => discriminant(a) == discriminant(b),
        _ => false,
    }
}

/// What must match between two infos (not the times).
fn info_shape(info: StoreResult<DbInfo>) -> StoreResult<(u64, u32, u32, u64, u64, bool)> {
    info.map(|i| {
        let s = i.state;
        (
            s.version.0,
            s.page_size,
            s.page_count,
            i.stored_bytes,
            i.oldest_version.0,
            i.lease_held,
        )
    })
}

impl Run<'_> {
    /// A random commit over the current version (page 1 always, some random pages).
    fn random_commit(&mut self) -> Commit {
        let resize = self.version == 0 || self.rng.random_ratio(1, 12);
        let page_size = if resize {
            PAGE_SIZES[self.rng.random_range(0..PAGE_SIZES.len())]
        } else {
            self.page_size
        };
        let old = self.page_count.max(1);
        let page_count = match self.rng.random_range(0..10) {
            0 | 1 if old > 1 => self.rng.random_range(1..old),
            2..=4 => old + self.rng.random_range(1..20),
            _ => old,
        };
        let whole = page_size != self.page_size && self.page_count > 0;
        let fill: u8 = self.rng.random();
        let mut pages = vec![(1, page_one(page_size, page_count, fill))];
        let grows = page_count > self.page_count.max(1);
        for no in 2..=page_count {
            // A grown file's last page is always written (SQLite's rule too).
            if whole || (grows && no == page_count) || self.rng.random_ratio(1, 4) {
                let byte: u8 = self.rng.random();
                pages.push((no, Bytes::from(vec![byte; page_size as usize])));
            }
        }
        Commit {
            lease_id: crate::store::LeaseId([0; 16]),
            epoch: 0,
            base_version: Version(self.version),
            commit_id: crate::store::random_id(),
            identity: Identity::default(),
            page_size,
            page_count,
            pages,
        }
    }

    /// Spoils a commit so it must fail: stale base, wrong epoch or partial resize.
    fn spoil(&mut self, mut c: Commit) -> (Commit, i64) {
        let can_resize = self.page_count > 0 && c.page_count > 1;
        match self.rng.random_range(0..3) {
            1 => (c, 1),
            2 if can_resize => {
                let other = PAGE_SIZES.iter().find(|&&s| s != self.page_size);
                c.page_size = other.copied().unwrap_or(PAGE_SIZES[0]);
                c.pages = vec![(1, page_one(c.page_size, c.page_count, 1))];
                (c, 0)
            }
            _ => {
                let mut base = self.rng.random_range(0..=self.version + 2);
                if base == self.version {
                    base += 1;
                }
                c.base_version = Version(base);
                (c, 0)
            }
        }
    }

    /// Sends `c` to both sides (each with its own lease; `epoch_shift` added to the
    /// epoch) and checks they answer alike.
    async fn commit_both(&mut self, c: &Commit, epoch_shift: i64) -> anyhow::Result<bool> {
        let mut results = Vec::new();
        for side in &self.sides {
            let mut c = c.clone();
            c.lease_id = side.lease.lease_id;
            c.epoch = side.lease.epoch.saturating_add_signed(epoch_shift);
            // Incarnations and tags are random: compare what they are attached to.
            let outcome = side.store.commit(&self.key, c).await;
            results.push(outcome.map(|o| (o.version, o.already_applied, o.tag.is_some())));
        }
        ensure!(
            same(&results[0], &results[1]),
            "seed {}: commit on {} answers {:?}, the model {:?}",
            self.seed,
            c.base_version,
            results[0],
            results[1]
        );
        Ok(matches!(&results[0], Ok((_, already_applied, _)) if !already_applied))
    }

    async fn step_commit(&mut self) -> Outcome {
        let c = self.random_commit();
        let spoiled = self.rng.random_ratio(1, 5);
        let (sent, shift) = if spoiled {
            self.spoil(c.clone())
        } else {
            (c.clone(), 0)
        };
        let applied = self.commit_both(&sent, shift).await?;
        ensure!(
            applied != spoiled,
            "seed {}: spoiled {spoiled}, applied {applied}",
            self.seed
        );
        if applied {
            self.version += 1;
            self.page_size = c.page_size;
            self.page_count = c.page_count;
            self.applied.push(c);
        }
        Ok(())
    }

    async fn step_retry(&mut self) -> Outcome {
        if self.applied.is_empty() {
            return Ok(());
        }
        let old = self.applied[self.rng.random_range(0..self.applied.len())].clone();
        let applied = self.commit_both(&old, 0).await?;
        ensure!(!applied, "seed {}: a retry applied again", self.seed);
        Ok(())
    }

    async fn step_read(&mut self) -> Outcome {
        let version = self.rng.random_range(0..=self.version + 1);
        let top = self.page_count + 2;
        let count = self.rng.random_range(0..8);
        let nos: Vec<u32> = (0..count).map(|_| self.rng.random_range(0..=top)).collect();
        let mut results = Vec::new();
        for side in &self.sides {
            let read = side
                .store
                .read_pages(&self.key, Version(version), &nos, PIN)
                .await;
            results.push(read.map(|r| (r.state.geometry(), r.page_size, r.pages)));
        }
        ensure!(
            same(&results[0], &results[1]),
            "seed {}: read {nos:?} at {version}: {:?} vs the model {:?}",
            self.seed,
            results[0].as_ref().map(|r| r.2.len()),
            results[1].as_ref().map(|r| r.2.len())
        );
        Ok(())
    }

    async fn step_begin_read(&mut self) -> Outcome {
        let at = match self.rng.random_range(0..3) {
            0 => ReadAt::Newest,
            _ => ReadAt::Version(Version(self.rng.random_range(1..=self.version + 1))),
        };
        let cached_version = self.rng.random_range(0..=self.version + 1);
        let read = BeginRead {
            cached_version: Version(cached_version),
            at,
            pin: PIN,
            max_changes: 64,
            seen_version: Version::ZERO,
        };
        let mut results = Vec::new();
        for side in &self.sides {
            let view = side.store.begin_read(&self.key, read).await;
            results.push(view.map(|v| (v.state.geometry(), v.changes)));
        }
        ensure!(
            same(&results[0], &results[1]),
            "seed {}: begin read {read:?}: {:?} vs the model {:?}",
            self.seed,
            results[0],
            results[1]
        );
        Ok(())
    }

    /// GC with no window: only the newest and pinned versions stay.
    async fn step_gc(&mut self) -> Outcome {
        let later = system_unix_ms() + 3_600_000;
        for side in &self.sides {
            side.store.gc(later, Duration::ZERO).await?;
        }
        self.compare_info().await
    }

    async fn compare_info(&self) -> Outcome {
        let a = info_shape(self.sides[0].store.info(&self.key).await);
        let b = info_shape(self.sides[1].store.info(&self.key).await);
        ensure!(
            same(&a, &b),
            "seed {}: info {a:?} vs the model {b:?}",
            self.seed
        );
        Ok(())
    }

    async fn step(&mut self) -> Outcome {
        match self.rng.random_range(0..20) {
            0..=8 => self.step_commit().await,
            9 => self.step_retry().await,
            10..=14 => self.step_read().await,
            15..=17 => self.step_begin_read().await,
            18 => self.step_gc().await,
            _ => self.compare_info().await,
        }
    }
}

/// Random operations on `store` and on the memory store give the same answers.
pub async fn matches_reference_model(store: &dyn PageStore) -> Outcome {
    let seed: u64 = rand::random();
    let model = MemoryStore::new();
    let k = key("model", "a.db");
    let mut sides = Vec::new();
    for s in [store, &model as &dyn PageStore] {
        s.open(&k, true).await?;
        let lease = s.acquire_lease(&k, "writer", TTL).await?;
        sides.push(Side { store: s, lease });
    }
    let [a, b]: [Side; 2] = sides.try_into().ok().context("two sides")?;
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed),
        seed,
        key: k,
        sides: [a, b],
        applied: Vec::new(),
        version: 0,
        page_size: 0,
        page_count: 0,
    };
    for _ in 0..STEPS {
        run.step().await?;
    }
    run.step_gc().await?;
    run.compare_info().await
}

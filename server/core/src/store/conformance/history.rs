//! Conformance of history: reads as of a version or a time, reader pins, retention and
//! GC. Each test keeps a model of every version's image and checks the store against it.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Outcome, PS, TestTime, commit, expect_err, key, writable};
use crate::store::{BeginRead, DbKey, Lease, PageStore, PinTtl, ReadAt, StoreError, Version};

/// Time between commits, so commit times differ.
const STEP: Duration = Duration::from_millis(10);
/// A pin that outlives every test.
const LONG: PinTtl = super::pin(Duration::from_secs(600));
/// The pin TTL of checking reads: extends no pin that matters.
const BRIEF: PinTtl = super::pin(Duration::from_millis(1));

/// Every version's image: `images[v][p - 1]` is page p's fill (past the header for
/// page 1) at version v; `times[v]` its commit time as the store reports it.
struct Model {
    images: Vec<Vec<u8>>,
    times: Vec<i64>,
}

impl Model {
    fn new() -> Self {
        Self {
            images: vec![Vec::new()],
            times: vec![0],
        }
    }

    fn current(&self) -> u64 {
        self.images.len() as u64 - 1
    }

    fn image(&self, version: u64) -> &[u8] {
        self.images
            .get(version as usize)
            .map_or(&[], |image| image.as_slice())
    }

    /// The newest version committed at or before `unix_ms` (0: none).
    fn version_at(&self, unix_ms: i64) -> u64 {
        (1..=self.current())
            .rev()
            .find(|&v| self.times[v as usize] <= unix_ms)
            .unwrap_or(0)
    }

    /// Commits `fills` (page 1 always among them) at a `page_count`, after a short sleep.
    async fn commit(
        &mut self,
        store: &dyn PageStore,
        k: &DbKey,
        lease: &Lease,
        page_count: u32,
        fills: &[(u32, u8)],
    ) -> anyhow::Result<()> {
        tokio::time::sleep(STEP).await;
        let base = self.current();
        let outcome = store
            .commit(k, commit(lease, base, PS, page_count, fills))
            .await?;
        ensure!(
            outcome.version == Version(base + 1),
            "commit on {base}: {outcome:?}"
        );
        let mut image = self.image(base).to_vec();
        image.resize(page_count as usize, 0);
        for &(no, fill) in fills {
            image[no as usize - 1] = fill;
        }
        self.images.push(image);
        // The store's own commit time, without pinning the version.
        self.times.push(store.info(k).await?.updated_unix_ms);
        Ok(())
    }

    /// Whether `version` reads exactly as the model says (false: it differs).
    async fn reads_right(
        &self,
        store: &dyn PageStore,
        k: &DbKey,
        version: u64,
    ) -> anyhow::Result<bool> {
        let image = self.image(version);
        let nos: Vec<u32> = (1..=image.len() as u32).collect();
        let read = store.read_pages(k, Version(version), &nos, BRIEF).await?;
        let same = read.pages.iter().zip(image).all(|(data, &fill)| {
            let body = if data.starts_with(b"SQLite format 3\0") {
                data.get(100..).unwrap_or_default()
            } else {
                &data[..]
            };
            data.len() == PS as usize && body.iter().all(|&b| b == fill)
        });
        Ok(read.page_size == PS && read.pages.len() == image.len() && same)
    }

    /// Pages that differ between `from`'s image and `to`'s, among those both have.
    fn differing(&self, from: u64, to: u64) -> Vec<u32> {
        let (a, b) = (self.image(from), self.image(to));
        (1..=a.len().min(b.len()) as u32)
            .filter(|&p| a[p as usize - 1] != b[p as usize - 1])
            .collect()
    }
}

fn at(at: ReadAt, cached_version: u64, pin: PinTtl) -> BeginRead {
    BeginRead {
        cached_version: Version(cached_version),
        at,
        pin,
        max_changes: super::MAX_CHANGES,
        seen_version: Version::ZERO,
    }
}

fn out_of_range(e: &StoreError) -> bool {
    matches!(e, StoreError::OutOfRange(_))
}

/// `count` more commits with random page counts (growing and shrinking) and random
/// pages; version v fills what it writes with v (mod 256).
async fn random_commits(
    store: &dyn PageStore,
    k: &DbKey,
    lease: &Lease,
    rng: &mut StdRng,
    model: &mut Model,
    count: u8,
) -> anyhow::Result<()> {
    for _ in 0..count {
        let fill = (model.current() + 1) as u8;
        let old = model.image(model.current()).len() as u32;
        let page_count = match rng.random_range(0..10) {
            0 if old > 1 => rng.random_range(1..old),
            1..=3 => old + rng.random_range(1..4),
            _ => old.max(1),
        };
        let mut fills = vec![(1, fill)];
        if page_count > old && page_count > 2 {
            // A grown file's last page is always written (SQLite's rule too).
            fills.push((page_count, fill));
        }
        for _ in 0..rng.random_range(0..4) {
            let no = rng.random_range(1..=page_count);
            if fills.iter().all(|(p, _)| *p != no) {
                fills.push((no, fill));
            }
        }
        model.commit(store, k, lease, page_count, &fills).await?;
    }
    Ok(())
}

pub async fn as_of_version_reads_that_version(store: &dyn PageStore) -> anyhow::Result<()> {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let k = key("asof-version", "a.db");
    let lease = writable(store, &k).await?;
    let mut model = Model::new();
    random_commits(store, &k, &lease, &mut rng, &mut model, 24).await?;
    for v in 1..=model.current() {
        let view = store
            .begin_read(&k, at(ReadAt::Version(Version(v)), 0, LONG))
            .await?;
        let count = model.image(v).len() as u32;
        ensure!(
            (
                view.state.version.0,
                view.state.page_size,
                view.state.page_count
            ) == (v, PS, count)
                && view.changes.is_none()
                && view.committed_unix_ms == model.times[v as usize],
            "seed {seed}: version {v}: {view:?}"
        );
        ensure!(
            model.reads_right(store, &k, v).await?,
            "seed {seed}: pages at {v}"
        );
    }
    for _ in 0..20 {
        let v = rng.random_range(2..=model.current());
        let cached = rng.random_range(1..v);
        let view = store
            .begin_read(&k, at(ReadAt::Version(Version(v)), cached, LONG))
            .await?;
        let listed = super::listed(&view).unwrap_or_default();
        ensure!(
            view.changes.is_some() && listed.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: {cached} -> {v}: {view:?}"
        );
        let missing: Vec<_> = model
            .differing(cached, v)
            .into_iter()
            .filter(|p| !listed.contains(p))
            .collect();
        ensure!(
            missing.is_empty(),
            "seed {seed}: {cached} -> {v} misses {missing:?}"
        );
        let ahead = store
            .begin_read(&k, at(ReadAt::Version(Version(cached)), v, LONG))
            .await?;
        ensure!(
            ahead.changes.is_none(),
            "seed {seed}: cache newer than the version read"
        );
    }
    let future = ReadAt::Version(Version(model.current() + 1));
    let e = expect_err(
        store.begin_read(&k, at(future, 0, LONG)).await,
        out_of_range,
        "future",
    )?;
    ensure!(e.to_string().contains("does not exist"), "message: {e}");
    Ok(())
}

pub async fn as_of_time_picks_the_version_then(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("asof-time", "a.db");
    let lease = writable(store, &k).await?;
    let empty = store.begin_read(&k, at(ReadAt::Newest, 0, LONG)).await?;
    ensure!(
        empty.state.version == Version(0) && empty.committed_unix_ms == 0,
        "{empty:?}"
    );
    expect_err(
        store
            .begin_read(&k, at(ReadAt::UnixMs(i64::MAX), 0, LONG))
            .await,
        out_of_range,
        "as of a time, no commits yet",
    )?;
    let mut model = Model::new();
    for v in 1..=8u8 {
        model
            .commit(store, &k, &lease, 2, &[(1, v), (2, v)])
            .await?;
    }
    let times = &model.times;
    ensure!(
        times[1] > 0 && times.windows(2).skip(1).all(|w| w[0] <= w[1]),
        "commit times go forward: {times:?}"
    );
    let newest = store.begin_read(&k, at(ReadAt::Newest, 0, LONG)).await?;
    ensure!(
        newest.committed_unix_ms == times[8],
        "newest: {newest:?} vs {times:?}"
    );
    let mut probes: Vec<i64> = times[1..].iter().flat_map(|&t| [t - 1, t, t + 1]).collect();
    probes.extend([i64::MAX, 0, -1, i64::MIN]);
    for t in probes {
        let got = store.begin_read(&k, at(ReadAt::UnixMs(t), 0, LONG)).await;
        match model.version_at(t) {
            0 => {
                let e = expect_err(got, out_of_range, &format!("as of {t}, before v1"))?;
                ensure!(e.to_string().contains("first commit"), "message: {e}");
            }
            want => {
                let view = got?;
                ensure!(
                    view.state.version == Version(want)
                        && view.committed_unix_ms == times[want as usize],
                    "as of {t}: want {want}, got {view:?} ({times:?})"
                );
            }
        }
    }
    Ok(())
}

/// Commits 10 versions (a week of history compressed), then collects with a window
/// reaching back to version 7 and a reader pinned at version 3.
pub async fn gc_keeps_newest_window_and_pins(store: &dyn PageStore, time: &TestTime) -> Outcome {
    let k = key("gc-keep", "a.db");
    let lease = writable(store, &k).await?;
    let mut model = Model::new();
    for v in 1..=10u8 {
        let page = u32::from(v % 4) + 2;
        // Version 1 also writes page 5: a grown file's last page is written.
        let fills = [(1, v), (page, v), (5, v)];
        let fills = if v == 1 { &fills[..] } else { &fills[..2] };
        model.commit(store, &k, &lease, 5, fills).await?;
    }
    let pin = time.unit();
    store
        .begin_read(&k, at(ReadAt::Version(Version(3)), 0, super::pin(pin)))
        .await?;
    let (now, t7) = (model.times[10], model.times[7]);
    let retention = Duration::from_millis(u64::try_from(now - t7)?);
    let stats = store.gc(now, retention).await?;
    ensure!(
        stats.versions_collected > 0,
        "something collected: {stats:?}"
    );
    let kept = |v: u64| v == 3 || model.times[v as usize] >= t7;
    for v in 1..=10 {
        if kept(v) {
            ensure!(model.reads_right(store, &k, v).await?, "kept version {v}");
            continue;
        }
        let e = expect_err(
            store.read_pages(&k, Version(v), &[1], LONG).await,
            out_of_range,
            &format!("read at collected version {v}"),
        )?;
        ensure!(e.to_string().contains("no longer retained"), "message: {e}");
        expect_err(
            store
                .begin_read(&k, at(ReadAt::Version(Version(v)), 0, LONG))
                .await,
            out_of_range,
            &format!("begin read at collected version {v}"),
        )?;
    }
    ensure!(
        store.info(&k).await?.oldest_version == Version(3),
        "oldest is the pinned one"
    );
    // Change lists from any cached version still at or above the oldest kept one.
    for cached in 3..10 {
        let view = store.begin_read(&k, super::newest(cached)).await?;
        let differing = model.differing(cached, 10);
        let listed = super::listed(&view).unwrap_or_default();
        ensure!(
            view.changes.is_some() && differing.iter().all(|p| listed.contains(p)),
            "changes since {cached}: {view:?}, want {differing:?}"
        );
    }
    ensure!(
        store
            .begin_read(&k, super::newest(2))
            .await?
            .changes
            .is_none(),
        "below oldest"
    );
    pins_expire_unless_read(store, time, &k, &model, retention).await
}

/// The pin on version 3 (taken just before) survives while reads refresh it, then goes.
async fn pins_expire_unless_read(
    store: &dyn PageStore,
    time: &TestTime,
    k: &DbKey,
    model: &Model,
    retention: Duration,
) -> Outcome {
    let (now, pin) = (model.times[10], super::pin(time.unit()));
    let step = pin.ttl * 7 / 10;
    time.sleep(step).await;
    store.read_pages(k, Version(3), &[1], pin).await?; // refreshes the pin
    time.sleep(step).await; // past the first pin's end
    store.gc(now, retention).await?;
    ensure!(
        model.reads_right(store, k, 3).await?,
        "refreshed pin kept version 3"
    );
    time.sleep(pin.ttl).await;
    store.gc(now, retention).await?;
    expect_err(
        store.read_pages(k, Version(3), &[1], pin).await,
        out_of_range,
        "version 3 after its pin expired",
    )?;
    let oldest = (1..=10).find(|&v| model.times[v as usize] >= model.times[7]);
    ensure!(
        Some(store.info(k).await?.oldest_version.0) == oldest,
        "oldest moves up to the window"
    );
    Ok(())
}

/// A reader of the newest version keeps it after newer commits, even with no window.
pub async fn gc_keeps_what_a_reader_began(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("gc-reader", "a.db");
    let lease = writable(store, &k).await?;
    let mut model = Model::new();
    model
        .commit(store, &k, &lease, 2, &[(1, 1), (2, 1)])
        .await?;
    let view = store.begin_read(&k, at(ReadAt::Newest, 0, LONG)).await?;
    ensure!(view.state.version == Version(1), "{view:?}");
    model
        .commit(store, &k, &lease, 2, &[(1, 2), (2, 2)])
        .await?;
    model.commit(store, &k, &lease, 2, &[(1, 3)]).await?;
    store.gc(model.times[3] + 1, Duration::ZERO).await?;
    ensure!(
        model.reads_right(store, &k, 1).await?,
        "the reader's version"
    );
    ensure!(model.reads_right(store, &k, 3).await?, "the newest");
    expect_err(
        store.read_pages(&k, Version(2), &[1], LONG).await,
        out_of_range,
        "unpinned, outside the window",
    )?;
    Ok(())
}

/// Rewrites, a truncate, GC with no window: only the newest image's bytes remain, and it
/// reads whole, including pages last written in version 1.
pub async fn gc_frees_space_and_keeps_newest_whole(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("gc-space", "a.db");
    let lease = writable(store, &k).await?;
    let mut model = Model::new();
    let first = commit(
        &lease,
        0,
        PS,
        8,
        &(1..=8).map(|p| (p, 1)).collect::<Vec<_>>(),
    );
    store.commit(&k, first.clone()).await?;
    model.images.push(vec![1; 8]);
    model.times.push(store.info(&k).await?.updated_unix_ms);
    for v in 2..=11u8 {
        model
            .commit(store, &k, &lease, 8, &[(1, v), (2, v)])
            .await?;
    }
    model.commit(store, &k, &lease, 6, &[(1, 12)]).await?; // truncates pages 7 and 8
    let before = store.info(&k).await?.stored_bytes;
    store.gc(model.times[12] + 1, Duration::ZERO).await?;
    let info = store.info(&k).await?;
    ensure!(
        info.stored_bytes < before && info.stored_bytes == 6 * u64::from(PS),
        "stored bytes {before} -> {} (want the newest image only)",
        info.stored_bytes
    );
    ensure!(
        info.oldest_version == Version(12),
        "only the newest left: {info:?}"
    );
    ensure!(
        model.reads_right(store, &k, 12).await?,
        "newest reads whole after GC"
    );
    for v in 1..12 {
        expect_err(
            store.read_pages(&k, Version(v), &[1], LONG).await,
            out_of_range,
            "collected",
        )?;
    }
    let retry = store.commit(&k, first).await?;
    ensure!(
        retry.already_applied && retry.version == Version(1),
        "commit ids survive GC: {retry:?}"
    );
    model
        .commit(store, &k, &lease, 8, &[(1, 13), (8, 13)])
        .await?; // grows back: 7 is zeros
    ensure!(
        model.reads_right(store, &k, 13).await?,
        "regrown pages read zeros"
    );
    let view = store.begin_read(&k, super::newest(12)).await?;
    ensure!(
        super::listed(&view) == Some(vec![1, 7, 8]),
        "growth lists the regrown pages: {view:?}"
    );
    store.gc(model.times[13] + 1, Duration::ZERO).await?;
    ensure!(
        model.reads_right(store, &k, 13).await?,
        "newest after a second GC"
    );
    Ok(())
}

/// `gc_with` a shorter window for one tenant: that tenant's old versions are collected,
/// another tenant's (same names, same times) stay readable. Stores that keep
/// [`PageStore::gc_with`]'s default (one window for all) fail this.
pub async fn gc_caps_one_tenants_window(store: &dyn PageStore) -> anyhow::Result<()> {
    let (capped, kept) = (key("gc-capped", "h.db"), key("gc-kept", "h.db"));
    let mut newest = 0;
    for k in [&capped, &kept] {
        let lease = writable(store, k).await?;
        let mut model = Model::new();
        let first = commit(&lease, 0, PS, 2, &[(1, 1), (2, 1)]);
        store.commit(k, first).await?;
        model.images.push(vec![1; 2]);
        model.times.push(store.info(k).await?.updated_unix_ms);
        for v in 2..=3u8 {
            model.commit(store, k, &lease, 2, &[(1, v), (2, v)]).await?;
        }
        newest = newest.max(model.times[3]);
    }
    let retention = crate::store::Retention {
        default: Duration::from_secs(3600),
        capped: [(capped.tenant.clone(), Duration::ZERO)].into(),
    };
    store.gc_with(newest + 1, &retention).await?;
    expect_err(
        store.read_pages(&capped, Version(1), &[1], LONG).await,
        out_of_range,
        "the capped tenant's old version is collected",
    )?;
    store
        .read_pages(&kept, Version(1), &[1], LONG)
        .await
        .context("the other tenant keeps its window")?;
    store
        .read_pages(&capped, Version(3), &[1], LONG)
        .await
        .context("the newest stays")?;
    Ok(())
}

/// Random histories, random pins, random windows: every version reads exactly as it was
/// or answers OutOfRange, and the newest, the window and the pinned always read.
pub async fn gc_never_reads_wrong_data(store: &dyn PageStore) -> anyhow::Result<()> {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let k = key("gc-random", "a.db");
    let lease = writable(store, &k).await?;
    let mut model = Model::new();
    random_commits(store, &k, &lease, &mut rng, &mut model, 12).await?;
    let (mut pinned, mut gone) = (Vec::new(), Vec::new());
    for round in 0..6u8 {
        random_commits(store, &k, &lease, &mut rng, &mut model, 3).await?;
        let oldest = store.info(&k).await?.oldest_version.0.max(1);
        let pin = rng.random_range(oldest..=model.current());
        if store
            .begin_read(&k, at(ReadAt::Version(Version(pin)), 0, LONG))
            .await
            .is_ok()
        {
            pinned.push(pin);
        }
        let now = model.times[model.current() as usize];
        let back = rng.random_range(1..=model.current());
        let retention = Duration::from_millis(u64::try_from(now - model.times[back as usize])?);
        store.gc(now, retention).await?;
        let cutoff = model.times[back as usize];
        for v in 1..=model.current() {
            // Kept: pinned, in the window, unless an earlier round collected it.
            let must =
                (pinned.contains(&v) || model.times[v as usize] >= cutoff) && !gone.contains(&v);
            match model.reads_right(store, &k, v).await {
                Ok(true) => {}
                Ok(false) => bail!("seed {seed} round {round}: version {v} reads wrong data"),
                Err(e) if !must && e.downcast_ref::<StoreError>().is_some_and(out_of_range) => {
                    gone.push(v);
                }
                Err(e) => return Err(e).context(format!("seed {seed} round {round}: version {v}")),
            }
        }
    }
    Ok(())
}

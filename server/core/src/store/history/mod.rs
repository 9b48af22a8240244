//! The history rules, once, for every store that keeps its version metadata in memory
//! (the memory store; a file-backed store such as `examples/custom_store.rs`, which
//! logs each commit and GC pass and rebuilds the history by replaying them): what changed between
//! versions, which version a read asks for, which versions are readable, and what GC
//! keeps and drops. Plain data and functions; a store keeps the pages and the locking.
//! (PostgreSQL keeps the same rules in SQL.)
//!
//! - [`VersionMeta`]: per version its page size and count, commit time, tag, the pages it
//!   changed (growth as a range) and whether it is still readable;
//! - [`History`]: one database's versions `oldest..=current`: as-of resolution
//!   ([`History::resolve`]), readable-version checks with the `OutOfRange` messages
//!   ([`History::readable`]), change lists within `max_changes` ([`History::changes`]),
//!   what a BeginRead sees ([`History::view`]),
//!   the versions GC keeps ([`History::kept`]) and collecting the rest
//!   ([`History::collect`]);
//! - [`trim_writes`]: which page writes GC drops, given the kept versions;
//! - [`Pins`]: reader pins (TTL, maximum age), which keep versions from GC;
//! - [`RestorePoints`]: named pins, kept until deleted.

mod pins;
mod points;

use std::time::Duration;

pub use pins::Pins;
pub use points::RestorePoints;

use crate::store::clock::{check_after_first_commit, describe_unix_ms};
use crate::store::{
    BeginRead, ChangeWalk, Changes, DbInfo, DbState, Incarnation, NO_TAG, ReadAt, ReadView,
    StoreError, StoreResult, Version, VersionTag,
};

/// What one version is and changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    pub page_size: u32,
    pub page_count: u32,
    pub committed_unix_ms: i64,
    /// Chosen at commit (see [`VersionTag`]).
    pub tag: VersionTag,
    /// Pages written by this version, and its growth past the old end.
    pub changed: Changes,
    /// Still readable (false once GC collected it; its metadata stays for change lists
    /// while an older version is kept).
    pub retained: bool,
}

/// A version GC keeps, with its page count (pages past it are unreadable there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptVersion {
    pub version: Version,
    pub page_count: u32,
}

/// The version metadata of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    incarnation: Incarnation,
    /// Metadata of versions `oldest..=current`, indexed by `version - oldest`; never
    /// empty, and the oldest entry is always readable.
    versions: Vec<VersionMeta>,
    oldest: Version,
    /// When version 1 was committed (kept through GC, to tell "before the first commit"
    /// from "no longer retained").
    first_commit_unix_ms: Option<i64>,
    /// The retention of the GC pass that last collected something (for messages).
    gc_retention: Option<Duration>,
}

impl History {
    /// A new, empty database: version 0 only.
    pub fn new(created_unix_ms: i64, incarnation: Incarnation) -> Self {
        let empty = VersionMeta {
            page_size: 0,
            page_count: 0,
            committed_unix_ms: created_unix_ms,
            tag: NO_TAG,
            changed: Changes::default(),
            retained: true,
        };
        Self {
            incarnation,
            versions: vec![empty],
            oldest: Version::ZERO,
            first_commit_unix_ms: None,
            gc_retention: None,
        }
    }

    /// A history as a durable store wrote it down: `versions` are the metadata of
    /// `oldest..`, the oldest readable. `None` when that does not hold.
    pub fn from_parts(
        incarnation: Incarnation,
        oldest: Version,
        versions: Vec<VersionMeta>,
        first_commit_unix_ms: Option<i64>,
        gc_retention: Option<Duration>,
    ) -> Option<Self> {
        if !versions.first()?.retained {
            return None;
        }
        oldest.0.checked_add(versions.len() as u64)?;
        Some(Self {
            incarnation,
            versions,
            oldest,
            first_commit_unix_ms,
            gc_retention,
        })
    }

    /// The [`DbInfo`] of the database `name` with this history, given what the store
    /// keeps apart from it.
    pub fn info(
        &self,
        name: &str,
        created_unix_ms: i64,
        stored_bytes: u64,
        lease_held: bool,
    ) -> DbInfo {
        DbInfo {
            name: name.to_owned(),
            state: self.state(),
            stored_bytes,
            oldest_version: self.oldest(),
            created_unix_ms,
            updated_unix_ms: self.updated_unix_ms().unwrap_or(created_unix_ms),
            lease_held,
        }
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The oldest version with metadata (always readable).
    pub fn oldest(&self) -> Version {
        self.oldest
    }

    /// The newest version.
    pub fn current(&self) -> Version {
        Version(self.oldest.0 + self.versions.len() as u64 - 1)
    }

    /// Metadata of versions `oldest..=current`, in order.
    pub fn versions(&self) -> &[VersionMeta] {
        &self.versions
    }

    /// When version 1 was committed (`None` before it was).
    pub fn first_commit_unix_ms(&self) -> Option<i64> {
        self.first_commit_unix_ms
    }

    /// The retention of the GC pass that last collected something.
    pub fn gc_retention(&self) -> Option<Duration> {
        self.gc_retention
    }

    /// The metadata of `version` while it is kept.
    pub fn meta(&self, version: Version) -> Option<&VersionMeta> {
        let index = version.0.checked_sub(self.oldest.0)?;
        self.versions.get(usize::try_from(index).ok()?)
    }

    fn newest_meta(&self) -> Option<&VersionMeta> {
        self.versions.last()
    }

    /// The newest state.
    pub fn state(&self) -> DbState {
        let meta = self.newest_meta();
        DbState {
            version: self.current(),
            page_size: meta.map_or(0, |m| m.page_size),
            page_count: meta.map_or(0, |m| m.page_count),
            incarnation: self.incarnation,
            tag: meta.map_or(NO_TAG, |m| m.tag),
        }
    }

    /// The tag of `version` while its record is kept (collected versions keep theirs).
    pub fn tag_of(&self, version: Version) -> Option<VersionTag> {
        self.meta(version).map(|m| m.tag)
    }

    /// When the newest version was committed (or the database created).
    pub fn updated_unix_ms(&self) -> Option<i64> {
        self.newest_meta().map(|m| m.committed_unix_ms)
    }

    /// Records the next version; commit times never go backwards. Returns its number.
    pub fn push(&mut self, mut meta: VersionMeta) -> Version {
        let previous = self.updated_unix_ms().unwrap_or(i64::MIN);
        meta.committed_unix_ms = meta.committed_unix_ms.max(previous);
        self.versions.push(meta);
        let version = self.current();
        if version == Version(1) {
            self.first_commit_unix_ms = Some(self.updated_unix_ms().unwrap_or_default());
        }
        version
    }

    /// The state at a readable `version`, or `OutOfRange` saying why not.
    pub fn readable(&self, version: Version) -> StoreResult<(DbState, &VersionMeta)> {
        if version > self.current() {
            return Err(StoreError::OutOfRange(format!(
                "version {version} does not exist yet (newest: {})",
                self.current()
            )));
        }
        match self.meta(version) {
            Some(meta) if meta.retained => {
                let state = DbState {
                    version,
                    page_size: meta.page_size,
                    page_count: meta.page_count,
                    incarnation: self.incarnation,
                    tag: meta.tag,
                };
                Ok((state, meta))
            }
            _ => Err(self.not_retained(&format!("version {version}"))),
        }
    }

    fn not_retained(&self, what: &str) -> StoreError {
        let retention = self
            .gc_retention
            .map(|r| format!(", retention {}", humantime::format_duration(r)))
            .unwrap_or_default();
        StoreError::OutOfRange(format!(
            "{what} is no longer retained (oldest retained: {}{retention})",
            self.oldest
        ))
    }

    /// The version a read at `at` starts at (readable, or `OutOfRange`).
    pub fn resolve(&self, at: ReadAt) -> StoreResult<Version> {
        let version = match at {
            ReadAt::Newest => self.current(),
            ReadAt::Version(v) => v,
            ReadAt::UnixMs(t) => self.version_at_time(t)?,
        };
        self.readable(version).map(|_| version)
    }

    /// What a BeginRead sees (before the store pins `view.state.version`): the version it
    /// resolves to, when that was committed, the changes since `cached_version` and the
    /// tag of `seen_version`.
    pub fn view(&self, read: &BeginRead) -> StoreResult<ReadView> {
        let version = self.resolve(read.at)?;
        let (state, meta) = self.readable(version)?;
        Ok(ReadView {
            state,
            changes: self.changes(read.cached_version, version, read.max_changes),
            committed_unix_ms: if version == Version::ZERO {
                0
            } else {
                meta.committed_unix_ms
            },
            seen_tag: self.tag_of(read.seen_version),
        })
    }

    /// The newest version committed at or before `unix_ms`.
    fn version_at_time(&self, unix_ms: i64) -> StoreResult<Version> {
        check_after_first_commit(self.first_commit_unix_ms, unix_ms)?;
        let after = self
            .versions
            .partition_point(|m| m.committed_unix_ms <= unix_ms);
        match after.checked_sub(1) {
            Some(index) => Ok(Version(self.oldest.0 + index as u64)),
            None => Err(self.not_retained(&format!(
                "the version committed at or before {}",
                describe_unix_ms(unix_ms)
            ))),
        }
    }

    /// Pages written in `(cached, target]`, or `None` when the client must drop its
    /// cache (no cache, unknown or too old, newer than `target`, a page-size change in
    /// between, or more than `limit` versions or listed pages).
    pub fn changes(&self, cached: Version, target: Version, limit: usize) -> Option<Changes> {
        if cached == Version::ZERO {
            return None;
        }
        let page_size = self.meta(cached)?.page_size;
        let mut walk = ChangeWalk::new(cached, target, limit)?;
        for version in cached.0 + 1..=target.0 {
            let meta = self.meta(Version(version))?;
            if meta.page_size != page_size {
                return None;
            }
            walk = walk.step(&meta.changed.pages, meta.changed.from)?;
        }
        Some(walk.finish())
    }

    /// The versions a GC pass at `now_unix_ms` keeps, ascending: the newest, those
    /// committed within `retention` of it, and the `pinned` ones, among the readable ones.
    pub fn kept(
        &self,
        now_unix_ms: i64,
        retention: Duration,
        pinned: impl Fn(Version) -> bool,
    ) -> Vec<KeptVersion> {
        let window = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff_unix_ms = now_unix_ms.saturating_sub(window);
        let current = self.current();
        (self.oldest.0..=current.0)
            .map(Version)
            .zip(&self.versions)
            .filter(|(v, m)| {
                m.retained && (*v == current || m.committed_unix_ms >= cutoff_unix_ms || pinned(*v))
            })
            .map(|(version, m)| KeptVersion {
                version,
                page_count: m.page_count,
            })
            .collect()
    }

    /// How many readable versions there are.
    pub fn readable_count(&self) -> usize {
        self.versions.iter().filter(|m| m.retained).count()
    }

    /// Makes every version not in `kept` (ascending, non-empty) unreadable and drops the
    /// metadata below the oldest kept one. Returns how many versions became unreadable.
    pub fn collect(&mut self, kept: &[KeptVersion], retention: Duration) -> u64 {
        let Some(first) = kept.first() else {
            return 0;
        };
        let mut collected = 0;
        let mut next = kept.iter().peekable();
        for (version, meta) in (self.oldest.0..).map(Version).zip(self.versions.iter_mut()) {
            let is_kept = next.next_if(|k| k.version == version).is_some();
            if meta.retained && !is_kept {
                meta.retained = false;
                collected += 1;
            }
        }
        let below = usize::try_from(first.version.0 - self.oldest.0).unwrap_or(0);
        self.versions
            .drain(..below.min(self.versions.len().saturating_sub(1)));
        self.oldest = first.version;
        self.gc_retention = Some(retention);
        collected
    }
}

/// What GC drops of one page's writes (ascending by version; `key` gives a write's
/// version and whether it is a zero marker, a hole where the file grew over older
/// writes): a write goes when no kept version reads it (it is not the newest write at or
/// before a kept version whose page count covers the page), and a zero marker with no
/// older write left below it (it reads as zeros without it), unless the page is
/// `inherited` (a branch's page that would otherwise read through to its source, so the
/// marker is what hides it). Removes those from `writes` and returns them, in order.
pub fn trim_writes<W>(
    page_no: u32,
    writes: &mut Vec<W>,
    kept: &[KeptVersion],
    inherited: bool,
    key: impl Fn(&W) -> (Version, bool),
) -> Vec<W> {
    let old = std::mem::take(writes);
    let nexts: Vec<Version> = old
        .iter()
        .skip(1)
        .map(|w| key(w).0)
        .chain([Version(u64::MAX)])
        .collect();
    let mut removed = Vec::new();
    for (write, next) in old.into_iter().zip(nexts) {
        let (version, zeros) = key(&write);
        let needed = !zeros || !writes.is_empty() || inherited;
        if read_by_some(kept, page_no, version, next) && needed {
            writes.push(write);
        } else {
            removed.push(write);
        }
    }
    removed
}

/// Whether a kept version in `[from, until)` (where this write is the newest of its
/// page) covers `page_no`.
fn read_by_some(kept: &[KeptVersion], page_no: u32, from: Version, until: Version) -> bool {
    let start = kept.partition_point(|k| k.version < from);
    kept.get(start..)
        .unwrap_or_default()
        .iter()
        .take_while(|k| k.version < until)
        .any(|k| page_no <= k.page_count)
}

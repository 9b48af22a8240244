//! Version metadata of one database: per version its page size and count, commit time,
//! the pages it changed, and whether it is still readable. Answers which version a read
//! asks for (as-of version or time), change lists, and which versions GC keeps.

use std::time::Duration;

use super::pages::KeptVersion;
use super::pins::Pins;
use crate::store::clock::{check_after_first_commit, describe_unix_ms};
use crate::store::{
    ChangeWalk, Changes, DbState, Incarnation, NO_TAG, ReadAt, StoreError, StoreResult, VersionTag,
};

use tokio::time::Instant;

/// What one version changed.
#[derive(Debug, Clone)]
pub(super) struct VersionMeta {
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

#[derive(Debug)]
pub(super) struct History {
    incarnation: Incarnation,
    /// Metadata of versions `oldest..=current`, indexed by `version - oldest`; never
    /// empty, and the oldest entry is always readable.
    versions: Vec<VersionMeta>,
    oldest: u64,
    /// When version 1 was committed (kept through GC, to tell "before the first commit"
    /// from "no longer retained").
    first_commit_unix_ms: Option<i64>,
    /// The retention of the GC pass that last collected something (for messages).
    gc_retention: Option<Duration>,
}

impl History {
    pub(super) fn new(created_unix_ms: i64, incarnation: Incarnation) -> Self {
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
            oldest: 0,
            first_commit_unix_ms: None,
            gc_retention: None,
        }
    }

    pub(super) fn oldest(&self) -> u64 {
        self.oldest
    }

    pub(super) fn current(&self) -> u64 {
        self.oldest + self.versions.len() as u64 - 1
    }

    pub(super) fn meta(&self, version: u64) -> Option<&VersionMeta> {
        let index = version.checked_sub(self.oldest)?;
        self.versions.get(usize::try_from(index).ok()?)
    }

    fn newest_meta(&self) -> Option<&VersionMeta> {
        self.versions.last()
    }

    pub(super) fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The newest state.
    pub(super) fn state(&self) -> DbState {
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
    pub(super) fn tag_of(&self, version: u64) -> Option<VersionTag> {
        self.meta(version).map(|m| m.tag)
    }

    /// When the newest version was committed (or the database created).
    pub(super) fn updated_unix_ms(&self) -> Option<i64> {
        self.newest_meta().map(|m| m.committed_unix_ms)
    }

    /// Records the next version; commit times never go backwards. Returns its number.
    pub(super) fn push(&mut self, mut meta: VersionMeta) -> u64 {
        let previous = self.updated_unix_ms().unwrap_or(i64::MIN);
        meta.committed_unix_ms = meta.committed_unix_ms.max(previous);
        self.versions.push(meta);
        let version = self.current();
        if version == 1 {
            self.first_commit_unix_ms = Some(self.updated_unix_ms().unwrap_or_default());
        }
        version
    }

    /// The state at a readable `version`, or `OutOfRange` saying why not.
    pub(super) fn readable(&self, version: u64) -> StoreResult<(DbState, &VersionMeta)> {
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
    pub(super) fn resolve(&self, at: ReadAt) -> StoreResult<u64> {
        let version = match at {
            ReadAt::Newest => self.current(),
            ReadAt::Version(v) => v,
            ReadAt::UnixMs(t) => self.version_at_time(t)?,
        };
        self.readable(version).map(|_| version)
    }

    /// The newest version committed at or before `unix_ms`.
    fn version_at_time(&self, unix_ms: i64) -> StoreResult<u64> {
        check_after_first_commit(self.first_commit_unix_ms, unix_ms)?;
        let after = self
            .versions
            .partition_point(|m| m.committed_unix_ms <= unix_ms);
        match after.checked_sub(1) {
            Some(index) => Ok(self.oldest + index as u64),
            None => Err(self.not_retained(&format!(
                "the version committed at or before {}",
                describe_unix_ms(unix_ms)
            ))),
        }
    }

    /// Pages written in `(cached, target]`, or `None` when the client must drop its
    /// cache (no cache, unknown or too old, newer than `target`, a page-size change in
    /// between, or more than `limit` versions or listed pages).
    pub(super) fn changes(&self, cached: u64, target: u64, limit: usize) -> Option<Changes> {
        if cached == 0 {
            return None;
        }
        let page_size = self.meta(cached)?.page_size;
        let mut walk = ChangeWalk::new(cached, target, limit)?;
        for version in cached + 1..=target {
            let meta = self.meta(version)?;
            if meta.page_size != page_size {
                return None;
            }
            walk = walk.step(&meta.changed.pages, meta.changed.from)?;
        }
        Some(walk.finish())
    }

    /// The versions GC keeps, ascending: the newest, those committed at or after
    /// `cutoff_unix_ms`, and those pinned at `now`, among the readable ones.
    pub(super) fn kept(&self, cutoff_unix_ms: i64, pins: &Pins, now: Instant) -> Vec<KeptVersion> {
        let current = self.current();
        (self.oldest..=current)
            .zip(&self.versions)
            .filter(|(v, m)| {
                m.retained
                    && (*v == current
                        || m.committed_unix_ms >= cutoff_unix_ms
                        || pins.holds(*v, now))
            })
            .map(|(version, m)| KeptVersion {
                version,
                page_count: m.page_count,
            })
            .collect()
    }

    /// How many readable versions there are.
    pub(super) fn readable_count(&self) -> usize {
        self.versions.iter().filter(|m| m.retained).count()
    }

    /// Makes every version not in `kept` (ascending, non-empty) unreadable and drops the
    /// metadata below the oldest kept one. Returns how many versions became unreadable.
    pub(super) fn collect(&mut self, kept: &[KeptVersion], retention: Duration) -> u64 {
        let Some(first) = kept.first() else {
            return 0;
        };
        let mut collected = 0;
        let mut next = kept.iter().peekable();
        for (version, meta) in (self.oldest..).zip(self.versions.iter_mut()) {
            let is_kept = next.next_if(|k| k.version == version).is_some();
            if meta.retained && !is_kept {
                meta.retained = false;
                collected += 1;
            }
        }
        let below = usize::try_from(first.version - self.oldest).unwrap_or(0);
        self.versions
            .drain(..below.min(self.versions.len().saturating_sub(1)));
        self.oldest = first.version;
        self.gc_retention = Some(retention);
        collected
    }
}

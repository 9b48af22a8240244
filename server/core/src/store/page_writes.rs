//! The page writes of one database, copy-on-write per page, for any store that indexes
//! them in memory (the memory store, with the pages' bytes; a file-backed store may keep
//! offsets into its files): per page, its writes in ascending version order. Reading at a
//! version takes the newest write at or before it; a zero marker hides what an older
//! version wrote past a truncate when the file grows again; GC deletes writes no kept
//! version can read (see [`trim_writes`]).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;

use crate::store::history::{History, KeptVersion, trim_writes};
use crate::store::{Changes, GcStats, PageRead, StoreError, StoreResult, Version};
use crate::validate;

/// What a store keeps of one page write: its bytes, or where they are.
pub trait PageHandle {
    /// The bytes of page data it stands for (counted in `stored_bytes`).
    fn stored_len(&self) -> u64;
}

impl PageHandle for Bytes {
    fn stored_len(&self) -> u64 {
        self.len() as u64
    }
}

/// One write of a page: its version and data; `None` is a zero page (a hole left when
/// the file grew over pages an older version had written).
pub type Write<H> = (Version, Option<H>);

#[derive(Debug, Clone)]
pub struct PageWrites<H> {
    writes: BTreeMap<u32, Vec<Write<H>>>,
    /// Bytes of page data over all writes.
    bytes: u64,
    /// A branch's pages `1..=inherited` read through to its source while the branch has
    /// not written them ([`Lookup::Unwritten`]); 0 for a database that is no branch.
    inherited: u32,
}

impl<H> Default for PageWrites<H> {
    fn default() -> Self {
        Self {
            writes: BTreeMap::new(),
            bytes: 0,
            inherited: 0,
        }
    }
}

/// What a database holds of one page at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<T> {
    /// This write's data.
    Data(T),
    /// A zero marker: the page reads as zeros.
    Zeros,
    /// Nothing written at or before the version: zeros, or a branch's source's page.
    Unwritten,
}

impl<H: PageHandle> PageWrites<H> {
    /// The page writes of a new branch whose first `inherited` pages read through to its
    /// source until written.
    pub fn inheriting(inherited: u32) -> Self {
        Self {
            inherited,
            ..Self::default()
        }
    }

    /// See [`Self::inheriting`].
    pub fn inherited(&self) -> u32 {
        self.inherited
    }

    /// Sets what [`Self::inheriting`] set (a durable store loading a branch).
    pub fn set_inherited(&mut self, inherited: u32) {
        self.inherited = inherited;
    }

    /// Page `page_no` as of `version`, telling a zero marker from no write at all.
    pub fn lookup(&self, page_no: u32, version: Version) -> Lookup<&H> {
        let Some(writes) = self.writes.get(&page_no) else {
            return Lookup::Unwritten;
        };
        let visible = writes.partition_point(|(v, _)| *v <= version);
        match visible.checked_sub(1).and_then(|i| writes.get(i)) {
            None => Lookup::Unwritten,
            Some((_, None)) => Lookup::Zeros,
            Some((_, Some(data))) => Lookup::Data(data),
        }
    }

    pub fn stored_bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether any write (page or zero marker) made by `version` is kept.
    pub fn any_written_by(&self, version: Version) -> bool {
        self.writes
            .values()
            .any(|writes| writes.iter().any(|(v, _)| *v == version))
    }

    /// Page `page_no` as of `version`: the newest write at or before it; `None` when that
    /// is a zero marker or there is none (the page reads as zeros).
    pub fn at(&self, page_no: u32, version: Version) -> Option<&H> {
        let writes = self.writes.get(&page_no)?;
        let visible = writes.partition_point(|(v, _)| *v <= version);
        writes.get(visible.checked_sub(1)?)?.1.as_ref()
    }

    /// Stores a checked commit's pages (`page_count` pages after it, `base_count` before)
    /// as `version`; returns what it changed: its pages and, when the file grew, the range
    /// past the old end (whether or not a hole marker was needed: GC may have deleted the
    /// stale write a client still caches).
    pub fn write(
        &mut self,
        pages: impl IntoIterator<Item = (u32, H)>,
        base_count: u32,
        page_count: u32,
        version: Version,
    ) -> Changes {
        let pages: Vec<(u32, H)> = pages.into_iter().collect();
        self.mark_holes(&pages, base_count, page_count, version);
        let changes = Changes::of_commit(pages.iter().map(|(no, _)| *no), base_count, page_count);
        for (no, data) in pages {
            self.bytes += data.stored_len();
            self.writes
                .entry(no)
                .or_default()
                .push((version, Some(data)));
        }
        changes
    }

    /// When the file grows, pages past the old end that an older version had written (before
    /// a truncate) and this commit does not carry must read as zeros: writes a zero marker
    /// for each. Never-written pages read as zeros already. (Looked for among the written
    /// pages, never by walking the grown range, which may be billions of pages.)
    fn mark_holes(
        &mut self,
        pages: &[(u32, H)],
        base_count: u32,
        page_count: u32,
        version: Version,
    ) {
        if page_count <= base_count {
            return;
        }
        let carried: HashSet<u32> = pages.iter().map(|(no, _)| *no).collect();
        for (&no, writes) in self.writes.range_mut(base_count + 1..=page_count) {
            let stale = writes.last().is_some_and(|(_, data)| data.is_some());
            if stale && !carried.contains(&no) {
                writes.push((version, None));
            }
        }
        // A branch's never-written pages past the old end would read through to its
        // source's: they get markers too (a walk bounded by the source's page count).
        for no in base_count + 1..=page_count.min(self.inherited) {
            if !carried.contains(&no) && !self.writes.contains_key(&no) {
                self.writes.insert(no, vec![(version, None)]);
            }
        }
    }

    /// Adds a write read back from durable storage; writes of a page come in ascending
    /// version order. (Holes are `None`.)
    pub fn load(&mut self, page_no: u32, version: Version, data: Option<H>) {
        self.bytes += data.as_ref().map_or(0, PageHandle::stored_len);
        self.writes
            .entry(page_no)
            .or_default()
            .push((version, data));
    }

    /// The pages for which [`Self::write`] of `version` wrote a zero marker (read
    /// right after it: the pages past `base_count` whose newest write is a marker at
    /// `version`).
    pub fn holes_written(&self, base_count: u32, page_count: u32, version: Version) -> Vec<u32> {
        if page_count <= base_count {
            return Vec::new();
        }
        self.writes
            .range(base_count + 1..=page_count)
            .filter(|(_, w)| w.last().is_some_and(|(v, d)| *v == version && d.is_none()))
            .map(|(&no, _)| no)
            .collect()
    }

    /// Whether some write is surely unreadable at every kept version: a page past the
    /// largest kept page count. (GC also runs whenever a version is collected.)
    pub fn has_pages_past(&self, kept: &[KeptVersion]) -> bool {
        let largest = kept.iter().map(|k| k.page_count).max().unwrap_or(0);
        self.writes
            .keys()
            .next_back()
            .is_some_and(|&no| no > largest)
    }

    /// Whether a GC pass keeping `kept` (from [`History::kept`]) would change anything:
    /// a version to collect, or a write past every kept end.
    pub fn gc_due(&self, history: &History, kept: &[KeptVersion]) -> bool {
        history.readable_count() > kept.len() || self.has_pages_past(kept)
    }

    /// One GC pass keeping `kept`: trims the writes no kept version reads and collects
    /// the other versions from `history`. (`databases` is left to the caller.)
    pub fn gc(
        &mut self,
        history: &mut History,
        kept: &[KeptVersion],
        retention: Duration,
    ) -> GcStats {
        self.gc_with(history, kept, retention, |_, _| {})
    }

    /// [`Self::gc`], telling `removed` of each write it deletes (a durable store
    /// deletes it there too).
    pub fn gc_with(
        &mut self,
        history: &mut History,
        kept: &[KeptVersion],
        retention: Duration,
        removed: impl FnMut(u32, &Write<H>),
    ) -> GcStats {
        let mut stats = GcStats::default();
        let collecting = history.readable_count() > kept.len();
        if !collecting && !self.has_pages_past(kept) {
            return stats;
        }
        (stats.writes_removed, stats.bytes_freed) = self.trim(kept, removed);
        if collecting {
            stats.versions_collected = history.collect(kept, retention);
        }
        stats
    }

    /// Deletes every write no kept version (ascending) reads; returns (writes, bytes)
    /// removed.
    pub fn trim(
        &mut self,
        kept: &[KeptVersion],
        mut removed: impl FnMut(u32, &Write<H>),
    ) -> (u64, u64) {
        let (mut writes, mut bytes) = (0, 0);
        let inherited = self.inherited;
        for (&no, page) in &mut self.writes {
            let (w, b) = trim_page(no, page, kept, no <= inherited, &mut removed);
            writes += w;
            bytes += b;
        }
        self.writes.retain(|_, page| !page.is_empty());
        self.bytes = self.bytes.saturating_sub(bytes);
        (writes, bytes)
    }
}

/// Zero bytes that zero-filled pages are sliced from (without copying).
static ZEROS: [u8; validate::MAX_PAGE_SIZE as usize] = [0; validate::MAX_PAGE_SIZE as usize];

/// A page of zeros (never-written pages read so).
pub fn zero_page(page_size: u32) -> Bytes {
    Bytes::from_static(&ZEROS[..page_size as usize])
}

impl PageWrites<Bytes> {
    /// Page `page_no` as of `version` as bytes: zeros if none was written; `Internal`
    /// if the stored write is not `page_size` bytes.
    pub fn page(&self, page_no: u32, version: Version, page_size: u32) -> StoreResult<Bytes> {
        let Some(data) = self.at(page_no, version) else {
            return Ok(zero_page(page_size));
        };
        if data.len() != page_size as usize {
            return Err(StoreError::Internal(format!(
                "page {page_no} at version {version} is {} bytes, expected {page_size}",
                data.len()
            )));
        }
        Ok(data.clone())
    }

    /// A read of `page_nos` at `version`: `OutOfRange` unless `history` has it readable
    /// and the pages are within its page count.
    pub fn read(
        &self,
        history: &History,
        version: Version,
        page_nos: &[u32],
    ) -> StoreResult<PageRead> {
        let (state, _) = history.readable(version)?;
        validate::page_nos_in_range(page_nos, state.page_count)?;
        let pages = page_nos
            .iter()
            .map(|&no| self.page(no, version, state.page_size))
            .collect::<StoreResult<_>>()?;
        Ok(PageRead {
            state,
            page_size: state.page_size,
            pages,
        })
    }
}

/// Trims one page's writes (see [`PageWrites::trim`] and [`trim_writes`]).
fn trim_page<H: PageHandle>(
    page_no: u32,
    page: &mut Vec<Write<H>>,
    kept: &[KeptVersion],
    inherited: bool,
    mut on_removed: impl FnMut(u32, &Write<H>),
) -> (u64, u64) {
    let removed = trim_writes(page_no, page, kept, inherited, |(v, data)| {
        (*v, data.is_none())
    });
    for write in &removed {
        on_removed(page_no, write);
    }
    let bytes = removed
        .iter()
        .map(|(_, data)| data.as_ref().map_or(0, PageHandle::stored_len))
        .sum();
    (removed.len() as u64, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(list: &[(u64, u32)]) -> Vec<KeptVersion> {
        list.iter()
            .map(|&(version, page_count)| KeptVersion {
                version: Version(version),
                page_count,
            })
            .collect()
    }

    fn data(fill: u8) -> Option<Bytes> {
        Some(Bytes::from(vec![fill; 512]))
    }

    #[test]
    fn trim_keeps_writes_visible_at_kept_versions() {
        // Page 2 written at 1, 3, 5, 8; kept versions 4 and 9.
        let mut page = vec![
            (Version(1), data(1)),
            (Version(3), data(3)),
            (Version(5), data(5)),
            (Version(8), data(8)),
        ];
        let removed = trim_page(2, &mut page, &kept(&[(4, 2), (9, 2)]), false, |_, _| {});
        assert_eq!(removed, (2, 1024));
        assert_eq!(page.iter().map(|w| w.0.0).collect::<Vec<_>>(), [3, 8]);
    }

    #[test]
    fn trim_drops_pages_past_every_kept_end_and_leading_holes() {
        let mut page = vec![
            (Version(1), data(1)),
            (Version(4), None),
            (Version(6), data(6)),
        ];
        // Kept: 5 (3 pages: page 3 readable, a hole) and 7 (2 pages: page 3 not readable).
        let removed = trim_page(3, &mut page, &kept(&[(5, 3), (7, 2)]), false, |_, _| {});
        assert_eq!(removed, (3, 1024));
        assert!(page.is_empty());
    }
}

//! Page writes of one database, copy-on-write per page: per page, its writes in
//! ascending version order. Reading at a version takes the newest write at or before it;
//! GC deletes writes no kept version can read.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use crate::store::history::{KeptVersion, trim_writes};
use crate::store::{Changes, Commit, StoreError, StoreResult, Version};
use crate::validate;

/// Zero bytes that zero-filled pages are sliced from (without copying).
static ZEROS: [u8; validate::MAX_PAGE_SIZE as usize] = [0; validate::MAX_PAGE_SIZE as usize];

fn zero_page(page_size: u32) -> Bytes {
    Bytes::from_static(&ZEROS[..page_size as usize])
}

/// One write of a page: its version and data; `None` is a zero page (a hole left when
/// the file grew over pages an older version had written).
type Write = (Version, Option<Bytes>);

#[derive(Debug, Default)]
pub(super) struct Pages {
    writes: BTreeMap<u32, Vec<Write>>,
    /// Bytes of page data over all writes.
    bytes: u64,
}

impl Pages {
    pub(super) fn stored_bytes(&self) -> u64 {
        self.bytes
    }

    /// Page `page_no` as of `version`: the newest write at or before it, zeros if none.
    pub(super) fn at(&self, page_no: u32, version: Version, page_size: u32) -> StoreResult<Bytes> {
        let Some(writes) = self.writes.get(&page_no) else {
            return Ok(zero_page(page_size));
        };
        let visible = writes.partition_point(|(v, _)| *v <= version);
        let Some((_, Some(data))) = visible.checked_sub(1).and_then(|i| writes.get(i)) else {
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

    /// Stores a checked commit's pages as `version`; returns what it changed: its pages
    /// and, when the file grew, the range past the old end (whether or not a hole marker
    /// was needed: GC may have deleted the stale write a client still caches).
    pub(super) fn write(&mut self, commit: Commit, base_count: u32, version: Version) -> Changes {
        self.mark_holes(&commit, base_count, version);
        let changes = Changes::of_commit(
            commit.pages.iter().map(|(no, _)| *no),
            base_count,
            commit.page_count,
        );
        for (no, data) in commit.pages {
            self.bytes += data.len() as u64;
            // Kept as it is: the service copied it out of the received message.
            self.writes
                .entry(no)
                .or_default()
                .push((version, Some(data)));
        }
        changes
    }

    /// When the file grows, pages past the old end that an older version had written (before
    /// a truncate) and this commit does not carry must read as zeros: writes a zero marker
    /// for each. Never-written pages read as zeros already.
    fn mark_holes(&mut self, commit: &Commit, base_count: u32, version: Version) {
        if commit.page_count <= base_count {
            return;
        }
        let carried: HashSet<u32> = commit.pages.iter().map(|(no, _)| *no).collect();
        for (&no, writes) in self.writes.range_mut(base_count + 1..=commit.page_count) {
            let stale = writes.last().is_some_and(|(_, data)| data.is_some());
            if stale && !carried.contains(&no) {
                writes.push((version, None));
            }
        }
    }

    /// Whether some write is surely unreadable at every kept version: a page past the
    /// largest kept page count. (GC also runs whenever a version is collected.)
    pub(super) fn has_pages_past(&self, kept: &[KeptVersion]) -> bool {
        let largest = kept.iter().map(|k| k.page_count).max().unwrap_or(0);
        self.writes
            .keys()
            .next_back()
            .is_some_and(|&no| no > largest)
    }

    /// Deletes every write no kept version (ascending) reads; returns (writes, bytes)
    /// removed.
    pub(super) fn trim(&mut self, kept: &[KeptVersion]) -> (u64, u64) {
        let (mut writes, mut bytes) = (0, 0);
        for (&no, page) in &mut self.writes {
            let (w, b) = trim_page(no, page, kept);
            writes += w;
            bytes += b;
        }
        self.writes.retain(|_, page| !page.is_empty());
        self.bytes = self.bytes.saturating_sub(bytes);
        (writes, bytes)
    }
}

/// Trims one page's writes (see [`Pages::trim`] and [`trim_writes`]).
fn trim_page(page_no: u32, page: &mut Vec<Write>, kept: &[KeptVersion]) -> (u64, u64) {
    let removed = trim_writes(page_no, page, kept, |(v, data)| (*v, data.is_none()));
    let bytes = removed
        .iter()
        .map(|(_, data)| data.as_ref().map_or(0, |d| d.len() as u64))
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
        let removed = trim_page(2, &mut page, &kept(&[(4, 2), (9, 2)]));
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
        let removed = trim_page(3, &mut page, &kept(&[(5, 3), (7, 2)]));
        assert_eq!(removed, (3, 1024));
        assert!(page.is_empty());
    }
}

//! The page cache of one database in this process: pages of one version,
//! bounded in bytes, least recently used out first.
//!
//! It moves forward with the database: a commit of this process inserts the
//! pages it wrote, a `BeginRead` change list drops the pages that changed. It
//! remembers the change lists of its last few steps, so a reader still pinned
//! at a recent older version is served every page that has not changed since
//! (and pages it fetches that have not changed since are kept): readers keep
//! their cache while a writer commits.

use std::collections::VecDeque;

use bytes::Bytes;
use lru::LruCache;

use crate::database::DbState;

pub struct PageCache {
    version: u64,
    page_size: u32,
    /// Page count of `version`: pages past it are dropped when it shrinks.
    page_count: u32,
    pages: LruCache<u32, Bytes>,
    bytes: usize,
    max_bytes: usize,
    /// The last steps: (version reached, pages changed to reach it), oldest
    /// first; contiguous, ending at `version`.
    steps: VecDeque<(u64, Step)>,
}

/// Pages that changed between two versions, as the server says: the listed ones
/// and, when the file grew, every page from `from` on (a range, never a list).
#[derive(Debug, Clone, Copy, Default)]
pub struct Changed<'a> {
    pub pages: &'a [u32],
    pub from: Option<u32>,
}

impl<'a> Changed<'a> {
    /// From a reply's `changed_pages` and `changed_from` (0: none).
    pub fn new(pages: &'a [u32], from: u32) -> Self {
        Self { pages, from: (from > 0).then_some(from) }
    }

    /// What a commit from `base_count` pages changed: its pages and any growth.
    pub fn of_commit(pages: &'a [u32], base_count: u32, page_count: u32) -> Self {
        Self { pages, from: (page_count > base_count).then(|| base_count + 1) }
    }

    fn contains(&self, no: u32) -> bool {
        self.from.is_some_and(|f| no >= f) || self.pages.contains(&no)
    }
}

/// One remembered step: its listed pages (sorted) and growth range.
#[derive(Debug)]
struct Step {
    pages: Vec<u32>,
    from: Option<u32>,
}

impl Step {
    fn changed(&self, no: u32) -> bool {
        self.from.is_some_and(|f| no >= f) || self.pages.binary_search(&no).is_ok()
    }
}

/// Steps remembered (a reader pinned further back reads from the server).
const STEPS: usize = 64;

impl PageCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            version: 0,
            page_size: 0,
            page_count: 0,
            pages: LruCache::unbounded(),
            bytes: 0,
            max_bytes,
            steps: VecDeque::new(),
        }
    }

    /// The version whose pages this cache holds.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Is page `no` the same at version `at` as at the cache's version?
    fn serves(&self, at: DbState, no: u32) -> bool {
        if at.page_size != self.page_size || no > at.page_count || no > self.page_count {
            return false;
        }
        if at.version == self.version {
            return true;
        }
        // Known only when every step from `at` to now is remembered.
        let mut later = self.steps.iter().filter(|(v, _)| *v > at.version);
        let covered = self.steps.iter().any(|(v, _)| *v == at.version + 1) && at.version < self.version;
        covered && later.all(|(_, step)| !step.changed(no))
    }

    pub fn get(&mut self, at: DbState, no: u32) -> Option<Bytes> {
        if !self.serves(at, no) {
            return None;
        }
        self.pages.get(&no).cloned()
    }

    pub fn contains(&self, at: DbState, no: u32) -> bool {
        self.serves(at, no) && self.pages.contains(&no)
    }

    /// Keeps `data`, page `no` at version `at`, if it is still that page now.
    pub fn insert(&mut self, at: DbState, no: u32, data: Bytes) {
        if !self.serves(at, no) || data.len() > self.max_bytes {
            return;
        }
        self.bytes += data.len();
        if let Some(old) = self.pages.put(no, data) {
            self.bytes -= old.len();
        }
        while self.bytes > self.max_bytes {
            match self.pages.pop_lru() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    fn remove(&mut self, no: u32) {
        if let Some(old) = self.pages.pop(&no) {
            self.bytes -= old.len();
        }
    }

    pub fn clear(&mut self) {
        self.pages.clear();
        self.bytes = 0;
        self.steps.clear();
    }

    /// Forgets everything, including which version it held.
    pub fn reset(&mut self) {
        self.clear();
        self.version = 0;
        self.page_size = 0;
        self.page_count = 0;
    }

    /// Moves to `to` when the cache is at `from` and the pages changed in between are
    /// known (a Watch round); otherwise leaves it, still right for its own version, for
    /// a BeginRead to move on. Returns the changed pages it held (worth fetching again).
    pub fn follow(&mut self, from: Option<u64>, to: DbState, changed: Option<Changed<'_>>) -> Vec<u32> {
        let (Some(from), Some(changed)) = (from, changed) else { return Vec::new() };
        if from != self.version || to.version <= from {
            return Vec::new();
        }
        let held = self.pages.iter().map(|(p, _)| *p).filter(|p| changed.contains(*p) && *p <= to.page_count).collect();
        self.advance(from, to, Some(changed));
        held
    }

    /// Moves the cache from version `from` to `to`, dropping the pages that
    /// changed in between (`changed`, or everything when it is not known).
    pub fn advance(&mut self, from: u64, to: DbState, changed: Option<Changed<'_>>) {
        let usable = self.version == from && self.page_size == to.page_size;
        match changed.filter(|_| usable) {
            Some(changed) => {
                // Pages listed, past the growth mark, or past the new end go.
                let gone: Vec<u32> = self
                    .pages
                    .iter()
                    .map(|(p, _)| *p)
                    .filter(|p| changed.contains(*p) || *p > to.page_count)
                    .collect();
                for p in gone {
                    self.remove(p);
                }
                let mut sorted = changed.pages.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                // One step per version: a change list spanning several versions is
                // recorded as its last, with the steps before it unknown.
                if to.version > from + 1 {
                    self.steps.clear();
                }
                if to.version > from {
                    self.steps.push_back((to.version, Step { pages: sorted, from: changed.from }));
                }
                while self.steps.len() > STEPS {
                    self.steps.pop_front();
                }
            }
            None => self.clear(),
        }
        self.version = to.version;
        self.page_size = to.page_size;
        self.page_count = to.page_count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pages: &[u32]) -> Changed<'_> {
        Changed { pages, from: None }
    }

    fn at(version: u64) -> DbState {
        DbState { version, page_size: 4, page_count: 10, ..Default::default() }
    }

    #[test]
    fn serves_only_its_version_and_evicts_lru() {
        let mut c = PageCache::new(12);
        c.advance(0, at(1), None);
        for p in 1..=3 {
            c.insert(at(1), p, Bytes::from_static(b"abcd"));
        }
        assert!(c.get(at(1), 1).is_some(), "touch 1: 2 is now the oldest");
        c.insert(at(1), 4, Bytes::from_static(b"efgh"));
        assert!(c.get(at(1), 2).is_none());
        assert!(c.get(at(1), 1).is_some() && c.get(at(1), 4).is_some());
        assert!(c.get(at(2), 1).is_none(), "another version");
        c.advance(1, at(2), Some(list(&[4])));
        assert!(c.get(at(2), 4).is_none(), "changed");
        assert!(c.get(at(2), 1).is_some(), "unchanged pages survive");
        c.advance(1, at(3), Some(list(&[])));
        assert!(c.get(at(3), 1).is_none(), "a change list from another version is not usable");
    }

    #[test]
    fn readers_at_recent_versions_share_unchanged_pages() {
        let mut c = PageCache::new(1 << 20);
        c.advance(0, at(5), None);
        c.insert(at(5), 1, Bytes::from_static(b"p1v5"));
        c.insert(at(5), 2, Bytes::from_static(b"p2v5"));
        c.advance(5, at(6), Some(list(&[1])));
        c.advance(6, at(7), Some(list(&[3])));
        assert!(c.get(at(5), 2).is_some(), "page 2 unchanged since 5");
        assert!(c.get(at(5), 1).is_none(), "page 1 changed at 6");
        assert!(c.get(at(6), 1).is_none(), "not cached");
        // Fetched at 6, unchanged since: kept and served to 7.
        c.insert(at(6), 1, Bytes::from_static(b"p1v6"));
        assert_eq!(c.get(at(7), 1).as_deref(), Some(&b"p1v6"[..]));
        // Fetched at 6 but changed at 7: not kept.
        c.insert(at(6), 3, Bytes::from_static(b"p3v6"));
        assert!(c.get(at(7), 3).is_none());
        // A change list spanning versions forgets the steps before it.
        c.advance(7, at(9), Some(list(&[4])));
        assert!(c.get(at(8), 2).is_some(), "the spanning list covers 8..9");
        assert!(c.get(at(7), 2).is_none(), "7 -> 8 is not known on its own");
        assert!(c.get(at(4), 2).is_none(), "never further back than remembered");
    }

    #[test]
    fn growth_ranges_drop_every_page_past_the_mark() {
        let mut c = PageCache::new(1 << 20);
        let sized = |version, page_count| DbState { version, page_size: 4, page_count, ..Default::default() };
        c.advance(0, sized(1, 6), None);
        for p in 1..=6 {
            c.insert(sized(1, 6), p, Bytes::from_static(b"abcd"));
        }
        // 1 -> 2 shrinks to 3 and grows back to 4_000_000_000 (a range from 4).
        let grown = sized(2, 4_000_000_000);
        let mut held = c.follow(Some(1), grown, Some(Changed::new(&[1], 4)));
        held.sort_unstable();
        assert_eq!(held, [1, 4, 5, 6], "the changed pages it held");
        assert!(c.get(grown, 2).is_some() && c.get(grown, 3).is_some());
        assert!(c.get(grown, 4).is_none() && c.get(grown, 6).is_none());
        // A reader still at 1 is not served pages the range covers, even ones fetched since.
        c.insert(grown, 5, Bytes::from_static(b"new5"));
        assert!(c.get(sized(1, 6), 5).is_none());
        assert!(c.get(sized(1, 6), 2).is_some());
    }

    #[test]
    fn follow_moves_only_from_its_own_version() {
        let mut c = PageCache::new(1 << 20);
        c.advance(0, at(5), None);
        c.insert(at(5), 1, Bytes::from_static(b"p1v5"));
        c.insert(at(5), 2, Bytes::from_static(b"p2v5"));
        c.follow(Some(4), at(6), Some(list(&[1])));
        assert_eq!(c.version(), 5, "from another version: left alone");
        c.follow(Some(5), at(6), None);
        assert_eq!(c.version(), 5, "changes unknown: left alone");
        assert_eq!(c.follow(Some(5), at(6), Some(list(&[1, 3]))), [1], "the changed pages it held");
        assert_eq!(c.version(), 6);
        assert!(c.get(at(6), 1).is_none() && c.get(at(6), 2).is_some());
        c.follow(Some(5), at(6), Some(list(&[2])));
        assert!(c.get(at(6), 2).is_some(), "never backwards or twice");
    }
}

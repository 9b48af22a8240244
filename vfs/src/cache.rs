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
    steps: VecDeque<(u64, Vec<u32>)>,
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
        covered && later.all(|(_, changed)| changed.binary_search(&no).is_err())
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
    pub fn follow(&mut self, from: Option<u64>, to: DbState, changed: Option<&[u32]>) -> Vec<u32> {
        let (Some(from), Some(changed)) = (from, changed) else { return Vec::new() };
        if from != self.version || to.version <= from {
            return Vec::new();
        }
        let held = changed.iter().copied().filter(|p| self.pages.contains(p) && *p <= to.page_count).collect();
        self.advance(from, to, Some(changed));
        held
    }

    /// Moves the cache from version `from` to `to`, dropping the pages that
    /// changed in between (`changed`, or everything when it is not known).
    pub fn advance(&mut self, from: u64, to: DbState, changed: Option<&[u32]>) {
        let usable = self.version == from && self.page_size == to.page_size;
        match changed.filter(|_| usable) {
            Some(changed) => {
                for p in changed {
                    self.remove(*p);
                }
                let mut sorted = changed.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                // One step per version: a change list spanning several versions is
                // recorded as its last, with the steps before it unknown.
                if to.version > from + 1 {
                    self.steps.clear();
                }
                if to.version > from {
                    self.steps.push_back((to.version, sorted));
                }
                while self.steps.len() > STEPS {
                    self.steps.pop_front();
                }
                if to.page_count < self.page_count {
                    let beyond: Vec<u32> = self.pages.iter().map(|(p, _)| *p).filter(|p| *p > to.page_count).collect();
                    for p in beyond {
                        self.remove(p);
                    }
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

    fn at(version: u64) -> DbState {
        DbState { version, page_size: 4, page_count: 10 }
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
        c.advance(1, at(2), Some(&[4]));
        assert!(c.get(at(2), 4).is_none(), "changed");
        assert!(c.get(at(2), 1).is_some(), "unchanged pages survive");
        c.advance(1, at(3), Some(&[]));
        assert!(c.get(at(3), 1).is_none(), "a change list from another version is not usable");
    }

    #[test]
    fn readers_at_recent_versions_share_unchanged_pages() {
        let mut c = PageCache::new(1 << 20);
        c.advance(0, at(5), None);
        c.insert(at(5), 1, Bytes::from_static(b"p1v5"));
        c.insert(at(5), 2, Bytes::from_static(b"p2v5"));
        c.advance(5, at(6), Some(&[1]));
        c.advance(6, at(7), Some(&[3]));
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
        c.advance(7, at(9), Some(&[4]));
        assert!(c.get(at(8), 2).is_some(), "the spanning list covers 8..9");
        assert!(c.get(at(7), 2).is_none(), "7 -> 8 is not known on its own");
        assert!(c.get(at(4), 2).is_none(), "never further back than remembered");
    }

    #[test]
    fn follow_moves_only_from_its_own_version() {
        let mut c = PageCache::new(1 << 20);
        c.advance(0, at(5), None);
        c.insert(at(5), 1, Bytes::from_static(b"p1v5"));
        c.insert(at(5), 2, Bytes::from_static(b"p2v5"));
        c.follow(Some(4), at(6), Some(&[1]));
        assert_eq!(c.version(), 5, "from another version: left alone");
        c.follow(Some(5), at(6), None);
        assert_eq!(c.version(), 5, "changes unknown: left alone");
        assert_eq!(c.follow(Some(5), at(6), Some(&[1, 3])), [1], "the changed pages it held");
        assert_eq!(c.version(), 6);
        assert!(c.get(at(6), 1).is_none() && c.get(at(6), 2).is_some());
        c.follow(Some(5), at(6), Some(&[2]));
        assert!(c.get(at(6), 2).is_some(), "never backwards or twice");
    }
}

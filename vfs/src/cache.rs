//! The page cache of one database in this process: pages of one version,
//! bounded in bytes, least recently used out first.
//!
//! It moves forward with the database: a commit of this process inserts the
//! pages it wrote, a `BeginRead` change list drops the pages that changed. A page
//! is served only to a reader pinned at the cache's version and page size.

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
}

impl PageCache {
    pub fn new(max_bytes: usize) -> Self {
        Self { version: 0, page_size: 0, page_count: 0, pages: LruCache::unbounded(), bytes: 0, max_bytes }
    }

    /// The version whose pages this cache holds.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn serves(&self, at: DbState) -> bool {
        self.version == at.version && self.page_size == at.page_size
    }

    pub fn get(&mut self, at: DbState, no: u32) -> Option<Bytes> {
        if !self.serves(at) {
            return None;
        }
        self.pages.get(&no).cloned()
    }

    pub fn contains(&self, at: DbState, no: u32) -> bool {
        self.serves(at) && self.pages.contains(&no)
    }

    /// Keeps `data` as page `no` of version `at` (ignored for another version).
    pub fn insert(&mut self, at: DbState, no: u32, data: Bytes) {
        if !self.serves(at) || data.len() > self.max_bytes {
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
    }

    /// Forgets everything, including which version it held.
    pub fn reset(&mut self) {
        self.clear();
        self.version = 0;
        self.page_size = 0;
        self.page_count = 0;
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
}

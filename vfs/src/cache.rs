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

use pagewire_proto::ids::Version;

use crate::state::DbState;

pub struct PageCache {
    version: Version,
    page_size: u32,
    /// Page count of `version`: pages past it are dropped when it shrinks.
    page_count: u32,
    pages: LruCache<u32, Bytes>,
    bytes: usize,
    max_bytes: usize,
    /// The last steps: (version reached, pages changed to reach it), oldest
    /// first; contiguous, ending at `version`.
    steps: VecDeque<(Version, Step)>,
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
        Self {
            pages,
            from: (from > 0).then_some(from),
        }
    }

    /// What a commit from `base_count` pages changed: its pages and any growth.
    pub fn of_commit(pages: &'a [u32], base_count: u32, page_count: u32) -> Self {
        Self {
            pages,
            from: (page_count > base_count).then(|| base_count + 1),
        }
    }
}

/// One step: its listed pages (sorted, deduplicated) and growth range.
#[derive(Debug)]
struct Step {
    pages: Vec<u32>,
    from: Option<u32>,
}

impl Step {
    /// The pages `changed` names that exist at `page_count` (pages past the end are gone
    /// anyway, and the server's list is trusted for no more): sorted once, so each
    /// cached page is a binary search, never a scan of a list that may be millions long.
    /// Holds no more than the list the server sent.
    fn new(changed: Changed<'_>, page_count: u32) -> Self {
        let mut pages: Vec<u32> = changed
            .pages
            .iter()
            .copied()
            .filter(|p| (1..=page_count).contains(p))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        Self {
            pages,
            from: changed.from,
        }
    }

    fn changed(&self, no: u32) -> bool {
        self.from.is_some_and(|f| no >= f) || self.pages.binary_search(&no).is_ok()
    }
}

/// Steps remembered (a reader pinned further back reads from the server).
const STEPS: usize = 64;

/// Most listed pages a remembered step keeps (256 KiB): a longer step is applied but not
/// remembered (readers pinned before it read from the server), so the steps hold at
/// most 16 MiB whatever the server lists.
const STEP_PAGES: usize = 1 << 16;

impl PageCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            version: Version::ZERO,
            page_size: 0,
            page_count: 0,
            pages: LruCache::unbounded(),
            bytes: 0,
            max_bytes,
            steps: VecDeque::new(),
        }
    }

    /// The version whose pages this cache holds.
    pub fn version(&self) -> Version {
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
        let covered = self
            .steps
            .iter()
            .any(|(v, _)| Some(*v) == at.version.next())
            && at.version < self.version;
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
        self.version = Version::ZERO;
        self.page_size = 0;
        self.page_count = 0;
    }

    /// Moves to `to` when the cache is at `from` and the pages changed in between are
    /// known (a Watch round); otherwise leaves it, still right for its own version, for
    /// a BeginRead to move on. Returns the changed pages it held (worth fetching again).
    pub fn follow(
        &mut self,
        from: Option<Version>,
        to: DbState,
        changed: Option<Changed<'_>>,
    ) -> Vec<u32> {
        let (Some(from), Some(changed)) = (from, changed) else {
            return Vec::new();
        };
        if from != self.version || to.version <= from {
            return Vec::new();
        }
        let step = Step::new(changed, to.page_count);
        let held = self
            .pages
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| step.changed(*p) && *p <= to.page_count)
            .collect();
        self.step(from, to, step);
        held
    }

    /// Moves the cache from version `from` to `to`, dropping the pages that
    /// changed in between (`changed`, or everything when it is not known).
    pub fn advance(&mut self, from: Version, to: DbState, changed: Option<Changed<'_>>) {
        match changed {
            Some(changed) => self.step(from, to, Step::new(changed, to.page_count)),
            None => self.step_unknown(to),
        }
    }

    /// [`PageCache::advance`] with the changes known.
    fn step(&mut self, from: Version, to: DbState, step: Step) {
        if self.version != from || self.page_size != to.page_size {
            return self.step_unknown(to);
        }
        // Pages listed, past the growth mark, or past the new end go.
        let gone: Vec<u32> = self
            .pages
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| step.changed(*p) || *p > to.page_count)
            .collect();
        for p in gone {
            self.remove(p);
        }
        // One step per version: a change list spanning several versions is recorded as
        // its last, with the steps before it unknown; so is one too long to keep.
        let one_version = from.next().is_none_or(|next| to.version <= next);
        if !one_version || step.pages.len() > STEP_PAGES {
            self.steps.clear();
        }
        if to.version > from && step.pages.len() <= STEP_PAGES {
            self.steps.push_back((to.version, step));
        }
        while self.steps.len() > STEPS {
            self.steps.pop_front();
        }
        self.moved_to(to);
    }

    /// Moves to `to` with the changes unknown: nothing cached is kept.
    fn step_unknown(&mut self, to: DbState) {
        self.clear();
        self.moved_to(to);
    }

    fn moved_to(&mut self, to: DbState) {
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
        DbState {
            version: Version(version),
            page_size: 4,
            page_count: 10,
            ..Default::default()
        }
    }

    #[test]
    fn serves_only_its_version_and_evicts_lru() {
        let mut c = PageCache::new(12);
        c.advance(Version(0), at(1), None);
        for p in 1..=3 {
            c.insert(at(1), p, Bytes::from_static(b"abcd"));
        }
        assert!(c.get(at(1), 1).is_some(), "touch 1: 2 is now the oldest");
        c.insert(at(1), 4, Bytes::from_static(b"efgh"));
        assert!(c.get(at(1), 2).is_none());
        assert!(c.get(at(1), 1).is_some() && c.get(at(1), 4).is_some());
        assert!(c.get(at(2), 1).is_none(), "another version");
        c.advance(Version(1), at(2), Some(list(&[4])));
        assert!(c.get(at(2), 4).is_none(), "changed");
        assert!(c.get(at(2), 1).is_some(), "unchanged pages survive");
        c.advance(Version(1), at(3), Some(list(&[])));
        assert!(
            c.get(at(3), 1).is_none(),
            "a change list from another version is not usable"
        );
    }

    #[test]
    fn readers_at_recent_versions_share_unchanged_pages() {
        let mut c = PageCache::new(1 << 20);
        c.advance(Version(0), at(5), None);
        c.insert(at(5), 1, Bytes::from_static(b"p1v5"));
        c.insert(at(5), 2, Bytes::from_static(b"p2v5"));
        c.advance(Version(5), at(6), Some(list(&[1])));
        c.advance(Version(6), at(7), Some(list(&[3])));
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
        c.advance(Version(7), at(9), Some(list(&[4])));
        assert!(c.get(at(8), 2).is_some(), "the spanning list covers 8..9");
        assert!(c.get(at(7), 2).is_none(), "7 -> 8 is not known on its own");
        assert!(
            c.get(at(4), 2).is_none(),
            "never further back than remembered"
        );
    }

    #[test]
    fn growth_ranges_drop_every_page_past_the_mark() {
        let mut c = PageCache::new(1 << 20);
        let sized = |version, page_count| DbState {
            version: Version(version),
            page_size: 4,
            page_count,
            ..Default::default()
        };
        c.advance(Version(0), sized(1, 6), None);
        for p in 1..=6 {
            c.insert(sized(1, 6), p, Bytes::from_static(b"abcd"));
        }
        // 1 -> 2 shrinks to 3 and grows back to 4_000_000_000 (a range from 4).
        let grown = sized(2, 4_000_000_000);
        let mut held = c.follow(Some(Version(1)), grown, Some(Changed::new(&[1], 4)));
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
    fn server_change_lists_cost_what_they_hold_and_no_more() {
        // 20_000 cached pages, a list of 2 million (unsorted, repeated, 0, past the end):
        // a binary search per cached page, not a scan of the list per cached page (twice,
        // under the database's state lock: 17 s on a 2-vCPU machine), and nothing kept
        // of pages past the end.
        let mut c = PageCache::new(1 << 30);
        let sized = |version| DbState {
            version: Version(version),
            page_size: 4,
            page_count: 5_000_000,
            ..Default::default()
        };
        c.advance(Version(0), sized(1), None);
        for p in 1..=20_000 {
            c.insert(sized(1), p, Bytes::from_static(b"abcd"));
        }
        let mut list: Vec<u32> = (1..=4_000_000).rev().filter(|p| p % 2 == 0).collect();
        list.extend([0, 0, u32::MAX, 3_000_000_000, 4, 4]);
        let started = std::time::Instant::now();
        let held = c.follow(Some(Version(1)), sized(2), Some(Changed::new(&list, 0)));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(held.len(), 10_000, "the even pages it held");
        assert!(c.get(sized(2), 3).is_some() && c.get(sized(2), 4).is_none());
        // Too long a list to remember: a reader still at 1 reads from the server.
        assert!(c.get(sized(1), 3).is_none());
        // A short one is remembered.
        c.advance(Version(2), sized(3), Some(Changed::new(&[5, 7], 0)));
        assert!(c.get(sized(2), 3).is_some() && c.get(sized(2), 5).is_none());
        // Versions at the end of u64 do not overflow.
        let mut c = PageCache::new(1 << 20);
        c.advance(Version(0), sized(u64::MAX - 1), None);
        c.advance(
            Version(u64::MAX - 1),
            sized(u64::MAX),
            Some(Changed::new(&[1], 0)),
        );
        assert!(c.get(sized(u64::MAX), 2).is_none() && c.get(sized(u64::MAX - 1), 2).is_none());
        c.advance(
            Version(u64::MAX),
            sized(u64::MAX),
            Some(Changed::new(&[1], 0)),
        );
    }

    #[test]
    fn the_byte_bound_holds_through_replacements_and_oversized_pages() {
        let mut c = PageCache::new(10);
        c.advance(Version(0), at(1), None);
        c.insert(at(1), 1, Bytes::from_static(b"abcd"));
        c.insert(at(1), 2, Bytes::from_static(b"efgh"));
        // The same page again replaces it: 8 bytes held, not 12 (nothing evicted).
        c.insert(at(1), 1, Bytes::from_static(b"ABCD"));
        assert_eq!(c.bytes, 8);
        assert_eq!(c.get(at(1), 2).as_deref(), Some(&b"efgh"[..]));
        // A page bigger than the whole cache is not kept, and evicts nothing.
        c.insert(at(1), 3, Bytes::from_static(b"eleven byte"));
        assert!(c.get(at(1), 3).is_none());
        assert_eq!(c.bytes, 8);
        // One more evicts the least recently used (1: 2 was just read).
        c.insert(at(1), 4, Bytes::from_static(b"ijkl"));
        assert_eq!(c.bytes, 8);
        assert!(c.get(at(1), 1).is_none() && c.get(at(1), 2).is_some());
        // A page past the version's end, or of another page size, is not kept either.
        c.insert(at(1), 11, Bytes::from_static(b"mnop"));
        assert!(!c.contains(at(1), 11));
        let bigger = DbState {
            page_size: 8,
            ..at(1)
        };
        c.insert(bigger, 5, Bytes::from_static(b"qrst"));
        assert!(!c.contains(at(1), 5));
    }

    #[test]
    fn shrinking_drops_pages_past_the_end_and_a_new_page_size_drops_all() {
        let mut c = PageCache::new(1 << 20);
        let sized = |version, page_size, page_count| DbState {
            version: Version(version),
            page_size,
            page_count,
            ..Default::default()
        };
        c.advance(Version(0), sized(1, 4, 6), None);
        for p in 1..=6 {
            c.insert(sized(1, 4, 6), p, Bytes::from_static(b"abcd"));
        }
        // 1 -> 2 shrinks to 4 pages and changes page 2.
        c.advance(Version(1), sized(2, 4, 4), Some(list(&[2])));
        let now = sized(2, 4, 4);
        assert!(c.get(now, 1).is_some() && c.get(now, 3).is_some() && c.get(now, 4).is_some());
        assert!(c.get(now, 2).is_none(), "changed");
        assert_eq!(c.bytes, 12, "pages 5 and 6 went with the shrink");
        // A reader still at 1 is served unchanged pages within both ends only.
        assert!(c.get(sized(1, 4, 6), 3).is_some() && c.get(sized(1, 4, 6), 5).is_none());
        // 2 -> 3 with another page size (VACUUM): nothing cached survives.
        c.advance(Version(2), sized(3, 8, 2), Some(list(&[1, 2])));
        assert_eq!((c.version(), c.bytes), (Version(3), 0));
        assert!(
            c.get(sized(2, 4, 4), 3).is_none(),
            "no step remembered across it"
        );
        // Reset forgets the version too: only a fresh advance moves it on.
        c.reset();
        assert_eq!(c.version(), Version::ZERO);
    }

    #[test]
    fn follow_moves_only_from_its_own_version() {
        let mut c = PageCache::new(1 << 20);
        c.advance(Version(0), at(5), None);
        c.insert(at(5), 1, Bytes::from_static(b"p1v5"));
        c.insert(at(5), 2, Bytes::from_static(b"p2v5"));
        c.follow(Some(Version(4)), at(6), Some(list(&[1])));
        assert_eq!(c.version(), Version(5), "from another version: left alone");
        c.follow(Some(Version(5)), at(6), None);
        assert_eq!(c.version(), Version(5), "changes unknown: left alone");
        assert_eq!(
            c.follow(Some(Version(5)), at(6), Some(list(&[1, 3]))),
            [1],
            "the changed pages it held"
        );
        assert_eq!(c.version(), Version(6));
        assert!(c.get(at(6), 1).is_none() && c.get(at(6), 2).is_some());
        c.follow(Some(Version(5)), at(6), Some(list(&[2])));
        assert!(c.get(at(6), 2).is_some(), "never backwards or twice");
    }
}

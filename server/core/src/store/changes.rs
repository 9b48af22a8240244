//! Change lists: which pages changed between two versions. A commit lists the pages it
//! carried; growth past the old end is a range (`from`), never enumerated, so a commit
//! that claims four billion pages costs no more than one that claims two. Every list a
//! request makes the server build is bounded by the change-list limit
//! (`--max-change-list`); past it the client drops its cache instead.

use super::Version;

/// Pages changed between two versions: the listed ones (ascending, unique) and, when the
/// file grew, every page numbered `from` or higher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub pages: Vec<u32>,
    pub from: Option<u32>,
}

impl Changes {
    /// What one commit changed: the pages it carried (any order), and growth from
    /// `old_count` to `new_count`.
    pub fn of_commit(
        carried: impl IntoIterator<Item = u32>,
        old_count: u32,
        new_count: u32,
    ) -> Self {
        let mut pages: Vec<u32> = carried.into_iter().collect();
        pages.sort_unstable();
        pages.dedup();
        let from = (new_count > old_count).then(|| old_count + 1);
        let mut changes = Self { pages, from };
        changes.trim();
        changes
    }

    /// Adds a later step's changes (listed pages, growth range).
    pub fn add(&mut self, pages: &[u32], from: Option<u32>) {
        self.pages.extend_from_slice(pages);
        self.from = match (self.from, from) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Sorts, removes duplicates and pages the range covers.
    pub fn trim(&mut self) {
        self.pages.sort_unstable();
        self.pages.dedup();
        if let Some(from) = self.from {
            let keep = self.pages.partition_point(|&p| p < from);
            self.pages.truncate(keep);
        }
    }

    /// The changes as a plain list up to `page_count` (for clients that do not take
    /// ranges), or `None` when that list would be longer than `limit`.
    pub fn enumerated(&self, page_count: u32, limit: usize) -> Option<Vec<u32>> {
        let range = match self.from {
            Some(from) if from <= page_count => (page_count - from) as usize + 1,
            _ => 0,
        };
        if self.pages.len().saturating_add(range) > limit {
            return None;
        }
        let mut pages = self.pages.clone();
        if let Some(from) = self.from.filter(|&f| f <= page_count) {
            pages.extend(from..=page_count);
        }
        Some(pages)
    }
}

/// Changes as sent to a client: `changed_pages`, `changed_from` (0: none) and
/// `cache_invalid` of BeginReadResponse and RoundEnd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireChanges {
    pub pages: Vec<u32>,
    pub from: u32,
    pub invalid: bool,
}

impl WireChanges {
    /// `changes` (`None`: unknown) for a client at a version of `page_count` pages,
    /// which takes ranges or (an older client) needs growth listed, up to `limit` pages.
    pub fn new(changes: Option<&Changes>, ranges: bool, page_count: u32, limit: usize) -> Self {
        let invalid = Self {
            invalid: true,
            ..Self::default()
        };
        match changes {
            None => invalid,
            Some(c) if ranges => Self {
                pages: c.pages.clone(),
                from: c.from.unwrap_or(0),
                invalid: false,
            },
            Some(c) => match c.enumerated(page_count, limit) {
                Some(pages) => Self {
                    pages,
                    from: 0,
                    invalid: false,
                },
                None => invalid,
            },
        }
    }
}

/// Accumulates the steps from a cached version to a target one, within the limit: at
/// most `limit` steps and `limit` listed pages (checked as it goes, so an over-long
/// history costs the store no more than the limit's worth of work).
#[derive(Debug)]
pub struct ChangeWalk {
    changes: Changes,
    limit: usize,
    steps: usize,
}

impl ChangeWalk {
    /// `None` when the span of versions alone is over the limit.
    pub fn new(cached: Version, target: Version, limit: usize) -> Option<Self> {
        let span = target.0.checked_sub(cached.0)?;
        (span <= limit as u64).then(|| Self {
            changes: Changes::default(),
            limit,
            steps: 0,
        })
    }

    /// Adds one version's changes; `None` once the list is over the limit.
    pub fn step(mut self, pages: &[u32], from: Option<u32>) -> Option<Self> {
        self.steps += 1;
        self.changes.add(pages, from);
        if self.changes.pages.len() > self.limit {
            // Pages the range covers do not count: trim before judging.
            self.changes.trim();
            if self.changes.pages.len() > self.limit {
                return None;
            }
        }
        Some(self)
    }

    pub fn finish(mut self) -> Changes {
        self.changes.trim();
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_a_range_and_covers_listed_pages() {
        let c = Changes::of_commit([9, 1, 4_294_967_294], 8, 4_294_967_294);
        assert_eq!(
            c,
            Changes {
                pages: vec![1],
                from: Some(9)
            }
        );
        assert_eq!(
            Changes::of_commit([3, 1], 5, 5),
            Changes {
                pages: vec![1, 3],
                from: None
            }
        );
    }

    #[test]
    fn enumeration_is_bounded() {
        let c = Changes {
            pages: vec![1, 2],
            from: Some(10),
        };
        assert_eq!(c.enumerated(12, 5), Some(vec![1, 2, 10, 11, 12]));
        assert_eq!(c.enumerated(13, 5), None);
        assert_eq!(c.enumerated(9, 2), Some(vec![1, 2]));
        let huge = Changes {
            pages: vec![1],
            from: Some(2),
        };
        assert_eq!(huge.enumerated(u32::MAX - 1, 65536), None);
    }

    #[test]
    fn older_clients_get_growth_listed_or_drop_their_cache() {
        let c = Changes {
            pages: vec![1],
            from: Some(3),
        };
        let newer = WireChanges::new(Some(&c), true, 1 << 30, 10);
        assert_eq!(
            newer,
            WireChanges {
                pages: vec![1],
                from: 3,
                invalid: false
            }
        );
        let older = WireChanges::new(Some(&c), false, 4, 10);
        assert_eq!(
            older,
            WireChanges {
                pages: vec![1, 3, 4],
                from: 0,
                invalid: false
            }
        );
        assert!(WireChanges::new(Some(&c), false, 1 << 30, 10).invalid);
        assert!(WireChanges::new(None, true, 4, 10).invalid);
    }

    #[test]
    fn walks_merge_ranges_and_stop_at_the_limit() {
        let walk = ChangeWalk::new(Version(1), Version(3), 4)
            .and_then(|w| w.step(&[5, 1], Some(7)))
            .and_then(|w| w.step(&[2, 9], None));
        assert_eq!(
            walk.map(ChangeWalk::finish),
            Some(Changes {
                pages: vec![1, 2, 5],
                from: Some(7)
            })
        );
        assert!(
            ChangeWalk::new(Version(1), Version(10), 4).is_none(),
            "span over the limit"
        );
        let over =
            ChangeWalk::new(Version(1), Version(2), 2).and_then(|w| w.step(&[1, 2, 3], None));
        assert!(over.is_none(), "list over the limit");
        assert!(
            ChangeWalk::new(Version(5), Version(4), 10).is_none(),
            "backwards"
        );
    }
}

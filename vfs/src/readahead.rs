//! Read-ahead for one connection: when SQLite reads pages in (near) ascending
//! order, as a table scan does, fetch the next ones in the same round trip.
//! The window grows while reads stay sequential and resets on a jump.

/// Pages after the last one read that still count as "sequential" (B-tree
/// scans skip over interior and overflow pages).
const NEAR: u32 = 8;
const FIRST_WINDOW: u32 = 8;
const MAX_WINDOW: u32 = 256;

#[derive(Default, Debug)]
pub struct ReadAhead {
    last: u32,
    window: u32,
}

impl ReadAhead {
    /// Records a read of pages `first..=last`; returns the pages to fetch with
    /// it (after `last`, at most up to `page_count`).
    pub fn on_read(
        &mut self,
        first: u32,
        last: u32,
        page_count: u32,
    ) -> std::ops::RangeInclusive<u32> {
        let sequential =
            self.last > 0 && first > self.last && first <= self.last.saturating_add(NEAR);
        self.window = match (sequential, self.window) {
            (false, _) => 0,
            (true, 0) => FIRST_WINDOW,
            (true, w) => (w * 2).min(MAX_WINDOW),
        };
        self.last = last;
        let end = last.saturating_add(self.window).min(page_count);
        (last + 1)..=end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_sequential_reads_and_resets_on_jumps() {
        let mut r = ReadAhead::default();
        assert!(
            r.on_read(5, 5, 1000).is_empty(),
            "one read is not a pattern"
        );
        assert_eq!(r.on_read(6, 6, 1000), 7..=14);
        assert_eq!(r.on_read(9, 9, 1000), 10..=25, "near-sequential counts");
        assert!(r.on_read(500, 500, 1000).is_empty(), "a jump resets");
        assert_eq!(r.on_read(501, 501, 505), 502..=505, "never past the end");
        for p in 506..520 {
            r.on_read(p, p, 100_000);
        }
        assert_eq!(r.on_read(520, 520, 100_000).count() as u32, MAX_WINDOW);
    }
}

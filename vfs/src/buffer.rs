//! The write buffer of one transaction: the bytes SQLite wrote to the main file
//! since the transaction began, over a base version it reads through.
//!
//! Writes are kept as bytes (disjoint extents keyed by offset), not pages: SQLite
//! may write ranges that are not pages of the committed page size (VACUUM to a
//! new size, the backup API). Reads inside the transaction see these bytes (cache
//! spill writes pages early and reads them back).

use std::collections::{BTreeMap, BTreeSet};

/// Reads committed bytes of the base version; returns how many were available.
pub type BaseRead<'a, E> = dyn FnMut(u64, &mut [u8]) -> Result<usize, E> + 'a;

#[derive(Debug)]
pub struct WriteBuffer {
    /// File size of the base version.
    base_size: u64,
    /// Base bytes below this offset are still visible (a truncate hides the rest,
    /// even if the file grows again).
    visible_base: u64,
    /// File size as the transaction sees it.
    size: u64,
    extents: BTreeMap<u64, Vec<u8>>,
}

impl WriteBuffer {
    pub fn new(base_size: u64) -> Self {
        Self {
            base_size,
            visible_base: base_size,
            size: base_size,
            extents: BTreeMap::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        // Exact rewrite of an extent (the common case: the same page again).
        if let Some(e) = self.extents.get_mut(&offset)
            && e.len() == data.len()
        {
            e.copy_from_slice(data);
            self.size = self.size.max(end);
            return;
        }
        // Merge every extent overlapping [offset, end) into one. Extents are disjoint,
        // so their ends ascend with their starts: walking down from `end`, the first
        // that ends at or before `offset` has only such extents below it (stopping
        // there keeps a write O(log n + overlaps), not O(extents)).
        let overlapping: Vec<u64> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(start, e)| **start + e.len() as u64 > offset)
            .map(|(start, _)| *start)
            .collect();
        let mut start = offset;
        let mut stop = end;
        for s in &overlapping {
            start = start.min(*s);
            stop = stop.max(*s + self.extents[s].len() as u64);
        }
        let mut merged = vec![0u8; (stop - start) as usize];
        for s in overlapping {
            if let Some(old) = self.extents.remove(&s) {
                let at = (s - start) as usize;
                merged[at..at + old.len()].copy_from_slice(&old);
            }
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.extents.insert(start, merged);
        self.size = self.size.max(end);
    }

    pub fn truncate(&mut self, size: u64) {
        self.size = size;
        self.visible_base = self.visible_base.min(size);
        let cut: Vec<u64> = self
            .extents
            .range(..)
            .map(|(s, _)| *s)
            .filter(|s| {
                let len = self.extents[s].len() as u64;
                *s + len > size
            })
            .collect();
        for s in cut {
            if s >= size {
                self.extents.remove(&s);
            } else if let Some(e) = self.extents.get_mut(&s) {
                e.truncate((size - s) as usize);
            }
        }
    }

    /// Reads the transaction's view of the file; returns the bytes available
    /// (less than `buf.len()` at the end of the file; the rest is zeroed).
    pub fn read<E>(
        &self,
        offset: u64,
        buf: &mut [u8],
        base: &mut BaseRead<'_, E>,
    ) -> Result<usize, E> {
        let n = (self.size.saturating_sub(offset)).min(buf.len() as u64) as usize;
        buf.fill(0);
        let from_base = (self.visible_base.saturating_sub(offset)).min(n as u64) as usize;
        if from_base > 0 {
            base(offset, &mut buf[..from_base])?;
        }
        let end = offset + n as u64;
        for (s, e) in self.extents.range(..end) {
            let e_end = s + e.len() as u64;
            if e_end <= offset {
                continue;
            }
            let lo = (*s).max(offset);
            let hi = e_end.min(end);
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&e[(lo - s) as usize..(hi - s) as usize]);
        }
        Ok(n)
    }

    /// True when the transaction's image equals its base (e.g. a ROLLBACK after a
    /// cache spill wrote the original pages back): committing it would create an
    /// identical version, so nothing is sent.
    pub fn equals_base<E>(&self, base: &mut BaseRead<'_, E>) -> Result<bool, E> {
        if self.size != self.base_size || self.visible_base != self.base_size {
            return Ok(false);
        }
        let mut scratch = Vec::new();
        for (s, e) in &self.extents {
            scratch.clear();
            scratch.resize(e.len(), 0);
            let got = base(*s, &mut scratch)?;
            if got != e.len() || scratch != *e {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Pages (numbered from 1, of `page_size` bytes) this transaction changed:
    /// those overlapping a write, and those whose base content a truncate hid.
    pub fn dirty_pages(&self, page_size: u32) -> BTreeSet<u32> {
        let ps = page_size as u64;
        let mut pages = BTreeSet::new();
        let mut add_range = |start: u64, end: u64| {
            if end > start {
                for p in start / ps..end.div_ceil(ps) {
                    pages.insert(p as u32 + 1);
                }
            }
        };
        for (s, e) in &self.extents {
            add_range(*s, s + e.len() as u64);
        }
        add_range(self.visible_base, self.base_size.min(self.size));
        pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_of(data: &[u8]) -> impl FnMut(u64, &mut [u8]) -> Result<usize, ()> + '_ {
        move |off, buf| {
            let off = off as usize;
            let n = data.len().saturating_sub(off).min(buf.len());
            buf[..n].copy_from_slice(&data[off..off + n]);
            Ok(n)
        }
    }

    fn read_all(b: &WriteBuffer, base: &[u8]) -> Vec<u8> {
        let mut out = vec![0; b.size() as usize];
        let n = b.read(0, &mut out, &mut base_of(base)).expect("read");
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn overlay_and_merge() {
        let base = vec![1u8; 16];
        let mut b = WriteBuffer::new(16);
        b.write(4, &[2; 4]);
        b.write(6, &[3; 4]);
        b.write(20, &[4; 2]);
        let mut want = vec![1u8; 16];
        want[4..6].fill(2);
        want[6..10].fill(3);
        want.extend([0, 0, 0, 0, 4, 4]);
        assert_eq!(read_all(&b, &base), want);
        assert_eq!(b.dirty_pages(8), BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn truncate_hides_base_even_after_growth() {
        let base = vec![9u8; 16];
        let mut b = WriteBuffer::new(16);
        b.truncate(4);
        b.write(12, &[5; 4]);
        let mut want = vec![9u8; 4];
        want.extend([0; 8]);
        want.extend([5; 4]);
        assert_eq!(read_all(&b, &base), want);
        assert_eq!(b.dirty_pages(4), BTreeSet::from([2, 3, 4]));
    }

    #[test]
    fn rollback_writes_make_it_equal_base() {
        let base: Vec<u8> = (0..32).collect();
        let mut b = WriteBuffer::new(32);
        b.write(8, &[0; 8]);
        assert!(!b.equals_base(&mut base_of(&base)).expect("cmp"));
        b.write(8, &base[8..16]);
        assert!(b.equals_base(&mut base_of(&base)).expect("cmp"));
        b.write(32, &[1]);
        assert!(!b.equals_base(&mut base_of(&base)).expect("cmp"));
    }

    #[test]
    fn short_read_at_end() {
        let b = WriteBuffer::new(10);
        let mut buf = [7u8; 8];
        let n = b.read(6, &mut buf, &mut base_of(&[1u8; 10])).expect("read");
        assert_eq!(n, 4);
        assert_eq!(buf, [1, 1, 1, 1, 0, 0, 0, 0]);
    }
}

//! The fields of SQLite's database header (the first 100 bytes of page 1) that the VFS
//! stamps at commit and the server checks. See https://sqlite.org/fileformat.html.
//!
//! Every reader takes a slice of at least [`HEADER_LEN`] bytes (callers check).

use crate::limits;

pub const HEADER_LEN: usize = 100;
/// What every SQLite database file starts with.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const PAGE_SIZE: usize = 16;
const WRITE_VERSION: usize = 18;
const READ_VERSION: usize = 19;
const CHANGE_COUNTER: usize = 24;
const PAGE_COUNT: usize = 28;
const VERSION_VALID_FOR: usize = 92;

fn be32(h: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// The page size field as stored (1 means 65536), valid or not.
pub fn raw_page_size(h: &[u8]) -> u32 {
    match u16::from_be_bytes([h[PAGE_SIZE], h[PAGE_SIZE + 1]]) {
        1 => 65536,
        n => u32::from(n),
    }
}

/// Page size stored in the header, if it is one SQLite can have.
pub fn page_size(h: &[u8]) -> Option<u32> {
    let size = raw_page_size(h);
    limits::is_page_size(size).then_some(size)
}

/// The file format bytes (write version, read version): 1/1 rollback journal, 2/2 WAL.
pub fn file_format(h: &[u8]) -> (u8, u8) {
    (h[WRITE_VERSION], h[READ_VERSION])
}

/// The in-header page count, trusted only when the change counter matches
/// "version valid for" and the count is not 0 (SQLite's own rule: otherwise a legacy
/// writer may have left it stale).
pub fn page_count(h: &[u8]) -> Option<u32> {
    let count = be32(h, PAGE_COUNT);
    (be32(h, CHANGE_COUNTER) == be32(h, VERSION_VALID_FOR) && count > 0).then_some(count)
}

/// Marks the file rollback-journal format (bytes 18/19 = 1/1): what SQLite itself
/// writes when it leaves WAL mode.
pub fn set_rollback_format(h: &mut [u8]) {
    h[WRITE_VERSION] = 1;
    h[READ_VERSION] = 1;
}

pub fn change_counter(h: &[u8]) -> u32 {
    be32(h, CHANGE_COUNTER)
}

/// Makes page 1 announce a change to every other reader: the change counter
/// becomes max(written, base + 1), and the page count is stamped valid for it.
/// (Under locking_mode=EXCLUSIVE SQLite bumps the counter only once per lock.)
pub fn stamp(page1: &mut [u8], base_counter: u32, page_count: u32) {
    let counter = change_counter(page1).max(base_counter.wrapping_add(1));
    page1[CHANGE_COUNTER..CHANGE_COUNTER + 4].copy_from_slice(&counter.to_be_bytes());
    page1[VERSION_VALID_FOR..VERSION_VALID_FOR + 4].copy_from_slice(&counter.to_be_bytes());
    page1[PAGE_COUNT..PAGE_COUNT + 4].copy_from_slice(&page_count.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u16, counter: u32, count: u32, valid_for: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[16..18].copy_from_slice(&size.to_be_bytes());
        h[18] = 1;
        h[19] = 1;
        h[24..28].copy_from_slice(&counter.to_be_bytes());
        h[28..32].copy_from_slice(&count.to_be_bytes());
        h[92..96].copy_from_slice(&valid_for.to_be_bytes());
        h
    }

    #[test]
    fn reads_fields() {
        assert_eq!(page_size(&header(4096, 1, 1, 1)), Some(4096));
        assert_eq!(page_size(&header(1, 1, 1, 1)), Some(65536));
        assert_eq!(page_size(&header(1000, 1, 1, 1)), None);
        assert_eq!(raw_page_size(&header(1000, 1, 1, 1)), 1000);
        assert_eq!(file_format(&header(4096, 1, 1, 1)), (1, 1));
        assert_eq!(page_count(&header(4096, 7, 9, 7)), Some(9));
        assert_eq!(page_count(&header(4096, 7, 9, 6)), None);
        assert_eq!(page_count(&header(4096, 7, 0, 7)), None);
    }

    #[test]
    fn stamp_bumps_counter_past_base() {
        let mut h = header(4096, 5, 3, 5);
        stamp(&mut h, 5, 4);
        assert_eq!((change_counter(&h), page_count(&h)), (6, Some(4)));
        let mut h = header(4096, 9, 3, 9);
        stamp(&mut h, 5, 3);
        assert_eq!((change_counter(&h), page_count(&h)), (9, Some(3)));
    }
}

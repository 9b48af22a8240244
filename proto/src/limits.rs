//! Limits written into the protocol: both sides check them.

/// Longest database name, in bytes (UTF-8).
pub const MAX_NAME_BYTES: usize = 511;

/// Smallest page size SQLite has.
pub const MIN_PAGE_SIZE: u32 = 512;

/// Largest page size SQLite has.
pub const MAX_PAGE_SIZE: u32 = 65536;

/// Whether `size` is a page size SQLite can have: a power of two in 512..=65536.
pub fn is_page_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size)
}

//! Every check on client input, each failing with a message that says what is wrong.
//!
//! The service runs these before calling a store, so every store gets the same checks;
//! stores call [`against_base`] (which needs the base version's state) inside their
//! commit step, and [`page_nos_in_range`] when reading.

use std::collections::HashSet;

use pagewire_proto::{limits, sqlite_header};

use crate::store::{
    BadId, Commit, CommitId, DbState, LeaseId, PageNo, ReadAt, StoreError, Version,
};

type Result<T> = std::result::Result<T, StoreError>;

pub use pagewire_proto::limits::{MAX_NAME_BYTES, MAX_PAGE_SIZE, MIN_PAGE_SIZE};
/// SQLite's largest page count.
pub const MAX_PAGE_COUNT: u32 = 4_294_967_294;
/// Longest free-form client id on AcquireLease.
pub const MAX_CLIENT_ID_BYTES: usize = 1024;

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(msg.into())
}

/// A database name: 1..=511 bytes of UTF-8 without NUL.
pub fn db_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid("database name is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "database name is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(invalid("database name contains a NUL byte"));
    }
    Ok(())
}

/// The name of a database about to be created: a [`db_name`] without control
/// characters (`char::is_control`: U+0000..=U+001F, U+007F..=U+009F), which would let a
/// name forge log lines or garble a terminal. Only creating checks this: a database
/// created before this rule keeps its name, and stays listable, readable and deletable.
pub fn new_db_name(name: &str) -> Result<()> {
    db_name(name)?;
    if let Some((at, c)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(invalid(format!(
            "database name contains the control character U+{:04X} at byte {at}: \
             new names may not contain control characters",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Longest restore point label.
pub const MAX_LABEL_BYTES: usize = 255;

/// A restore point label: 1..=255 bytes of UTF-8 without control characters, and not
/// all digits (a restore names its target by version number or by label, so a label
/// may not look like a number).
pub fn restore_point_label(label: &str) -> Result<()> {
    if label.is_empty() {
        return Err(invalid("restore point label is empty"));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(invalid(format!(
            "restore point label is {} bytes long; the limit is {MAX_LABEL_BYTES}",
            label.len()
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(invalid("restore point label contains a control character"));
    }
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!(
            "restore point label {label:?} is all digits, which reads as a version number"
        )));
    }
    Ok(())
}

/// A page size: a power of two in 512..=65536.
pub fn page_size(page_size: u32) -> Result<()> {
    if !limits::is_page_size(page_size) {
        return Err(invalid(format!(
            "page size {page_size} is not a power of two in {MIN_PAGE_SIZE}..={MAX_PAGE_SIZE}"
        )));
    }
    Ok(())
}

/// A page count after a commit: 1..=4294967294.
pub fn page_count(page_count: u32) -> Result<()> {
    if !(1..=MAX_PAGE_COUNT).contains(&page_count) {
        return Err(invalid(format!(
            "page count {page_count} is not in 1..={MAX_PAGE_COUNT}"
        )));
    }
    Ok(())
}

/// A page number from a request: 1..=page_count.
pub fn page_no(page_no: u32, page_count: u32) -> Result<PageNo> {
    let Some(no) = PageNo::from_wire(page_no) else {
        return Err(invalid(
            "page number 0 does not exist (pages are numbered from 1)",
        ));
    };
    if page_no > page_count {
        return Err(invalid(format!(
            "page {page_no} is beyond the page count {page_count}"
        )));
    }
    Ok(no)
}

/// Every page number in `1..=page_count`.
pub fn page_nos_in_range(page_nos: &[u32], page_count: u32) -> Result<()> {
    page_nos
        .iter()
        .try_for_each(|&no| page_no(no, page_count).map(drop))
}

/// A page's payload is exactly one page.
pub fn page_len(page_no: PageNo, len: usize, page_size: u32) -> Result<()> {
    if len != page_size as usize {
        return Err(invalid(format!(
            "page {page_no} is {len} bytes; the page size is {page_size}"
        )));
    }
    Ok(())
}

/// A required 16-byte id, read by `parse` (its type's `from_wire`).
fn id16<T>(
    what: &str,
    bytes: &[u8],
    parse: fn(&[u8]) -> std::result::Result<T, BadId>,
) -> Result<T> {
    parse(bytes).map_err(|e| invalid(format!("{what} must be 16 bytes, got {}", e.len)))
}

pub fn lease_id(bytes: &[u8]) -> Result<LeaseId> {
    id16("lease_id", bytes, LeaseId::from_wire)
}

pub fn commit_id(bytes: &[u8]) -> Result<CommitId> {
    id16("commit_id", bytes, CommitId::from_wire)
}

/// The free-form client id of AcquireLease (shown to operators and in errors).
pub fn client_id(client_id: &str) -> Result<()> {
    if client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(invalid(format!(
            "client_id is {} bytes long; the limit is {MAX_CLIENT_ID_BYTES}",
            client_id.len()
        )));
    }
    Ok(())
}

/// No page number appears twice in one commit.
pub fn no_duplicates(page_nos: impl IntoIterator<Item = u32>) -> Result<()> {
    let mut seen = HashSet::new();
    for no in page_nos {
        if !seen.insert(no) {
            return Err(invalid(format!("page {no} appears twice in one commit")));
        }
    }
    Ok(())
}

/// Page 1's database header agrees with the commit: its page size, rollback-journal
/// format (bytes 18 and 19 are 1; a WAL-format image is refused), and, when the header's
/// page count is valid (bytes 24..28 equal 92..96 and the count is not 0, SQLite's own
/// rule), that page count.
pub fn page_one(data: &[u8], page_size: u32, page_count: u32) -> Result<()> {
    page_len(PageNo::FIRST, data.len(), page_size)?;
    let header_size = sqlite_header::raw_page_size(data);
    if header_size != page_size {
        return Err(invalid(format!(
            "page 1 header says page size {header_size} but the commit says {page_size}"
        )));
    }
    let (write, read) = sqlite_header::file_format(data);
    if (write, read) != (1, 1) {
        return Err(invalid(format!(
            "page 1 header has file format bytes {write}/{read} (offsets 18/19): only the \
             rollback-journal format (1/1) is accepted; WAL mode is not supported"
        )));
    }
    if let Some(header_count) = sqlite_header::page_count(data)
        && header_count != page_count
    {
        return Err(invalid(format!(
            "page 1 header says {header_count} pages but the commit says {page_count}"
        )));
    }
    Ok(())
}

/// Every rule on a commit that needs no stored state.
pub fn commit(c: &Commit) -> Result<()> {
    page_size(c.page_size)?;
    page_count(c.page_count)?;
    for (no, data) in &c.pages {
        let no = page_no(*no, c.page_count)?;
        page_len(no, data.len(), c.page_size)?;
    }
    no_duplicates(c.pages.iter().map(|(no, _)| *no))?;
    let page1 = c.pages.iter().find(|(no, _)| *no == 1);
    let Some((_, data)) = page1 else {
        return Err(invalid("every commit must carry page 1"));
    };
    page_one(data, c.page_size, c.page_count)
}

/// How far past its highest carried page a commit may grow the file. SQLite writes the
/// last page of a grown file (zeros if need be: `pager_truncate`), unless it is the
/// lock-byte page at 1 GiB, which it never writes: one page of slack.
pub const GROWTH_SLACK_PAGES: u32 = 1;

/// Rules that need the base version's state: a commit grows the file at most
/// [`GROWTH_SLACK_PAGES`] past the highest page it carries (so a tiny commit cannot claim
/// four billion pages); a commit that changes the page size of a non-empty database
/// (VACUUM to a new size) must rewrite every page.
pub fn against_base(c: &Commit, base: &DbState) -> Result<()> {
    let highest = c.pages.iter().map(|(no, _)| *no).max().unwrap_or(0);
    let reach = highest.saturating_add(GROWTH_SLACK_PAGES);
    if c.page_count > base.page_count && c.page_count > reach {
        return Err(invalid(format!(
            "the commit grows the file from {} to {} pages but its highest page is {highest}: \
             a commit must carry its new last page (or the one before it)",
            base.page_count, c.page_count
        )));
    }
    let resized = base.page_count > 0 && c.page_size != base.page_size;
    if resized && c.pages.len() != c.page_count as usize {
        return Err(invalid(format!(
            "the commit changes the page size from {} to {} but carries {} of {} pages; \
             a page-size change must rewrite every page",
            base.page_size,
            c.page_size,
            c.pages.len(),
            c.page_count
        )));
    }
    Ok(())
}

/// BeginRead's time-travel fields: both 0 is the newest version, else exactly one of an
/// as-of version or an as-of time (Unix ms).
pub fn read_at(at_version: u64, at_unix_ms: i64) -> Result<ReadAt> {
    match (at_version, at_unix_ms) {
        (0, 0) => Ok(ReadAt::Newest),
        (v, 0) => Ok(ReadAt::Version(Version(v))),
        (0, t) => Ok(ReadAt::UnixMs(t)),
        (v, t) => Err(invalid(format!(
            "at_version ({v}) and at_unix_ms ({t}) are both set; ask for a version or a time, not both"
        ))),
    }
}

/// Most pages one ReadPages may return at `page_size`, so the reply fits in one message:
/// `min(configured, max_message_bytes / page_size - 1)`, at least 1.
pub fn max_pages_per_read(configured: u32, max_message_bytes: usize, page_size: u32) -> u32 {
    let fit = (max_message_bytes / page_size.max(1) as usize).saturating_sub(1);
    configured
        .min(u32::try_from(fit).unwrap_or(u32::MAX))
        .max(1)
}

/// A ReadPages asks for at most `limit` pages.
pub fn read_count(asked: usize, limit: u32) -> Result<()> {
    if asked > limit as usize {
        return Err(StoreError::TooLarge(format!(
            "ReadPages asked for {asked} pages; the limit is {limit} (server limit --max-pages-per-read, told to clients as Limits.max_pages_per_read)"
        )));
    }
    Ok(())
}

/// Where a commit's byte limit comes from, for the refusal.
pub const SERVER_COMMIT_LIMIT: &str = "server limit --max-commit-bytes";

/// A commit's page bytes so far stay within the limit (`named`: the server's flag, or
/// the tenant's quota).
pub fn commit_bytes(total: u64, limit: u64, named: &str) -> Result<()> {
    if total > limit {
        return Err(StoreError::TooLarge(format!(
            "the commit carries more than {limit} bytes of pages ({named}, told to clients as Limits.max_commit_bytes); nothing was changed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

use bytes::Bytes;

use super::*;
use crate::store::conformance::{page, page_one as valid_page_one};

fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(StoreError::InvalidArgument(m) | StoreError::TooLarge(m)) => m,
        other => panic!("expected a client error, got {other:?}"),
    }
}

fn commit_of(page_size: u32, page_count: u32, pages: Vec<(u32, Bytes)>) -> Commit {
    Commit {
        lease_id: LeaseId([1; 16]),
        epoch: 1,
        base_version: Version(0),
        commit_id: CommitId([2; 16]),
        identity: Default::default(),
        page_size,
        page_count,
        pages,
    }
}

#[test]
fn database_names() {
    assert!(db_name("a").is_ok());
    assert!(db_name("acme/orders.db").is_ok());
    assert!(db_name(&"x".repeat(511)).is_ok());
    assert!(db_name("é".repeat(255).as_str()).is_ok()); // 510 bytes
    assert!(msg(db_name("")).contains("empty"));
    assert!(msg(db_name(&"x".repeat(512))).contains("512 bytes"));
    assert!(msg(db_name("a\0b")).contains("NUL"));
}

#[test]
fn new_names_have_no_control_characters() {
    for ok in [
        "a",
        "acme/orders.db",
        "é ü 日本",
        "tab-free name",
        "x\u{a0}y",
    ] {
        assert!(new_db_name(ok).is_ok(), "{ok:?}");
    }
    for (bad, code) in [
        ("a\nb", "U+000A"),
        ("line\r\n2026-01-01T00:00:00Z INFO forged", "U+000D"),
        ("\tx", "U+0009"),
        ("x\u{1b}[31m", "U+001B"),
        ("del\u{7f}", "U+007F"),
        ("c1\u{85}", "U+0085"),
        ("c1\u{9f}", "U+009F"),
    ] {
        let m = msg(new_db_name(bad));
        assert!(
            m.contains(code) && m.contains("control character"),
            "{bad:?}: {m}"
        );
        // Existing databases keep such names: every other call accepts them.
        assert!(db_name(bad).is_ok(), "{bad:?}");
    }
    // The plain name checks come first.
    assert!(msg(new_db_name("")).contains("empty"));
    assert!(msg(new_db_name("a\0b")).contains("NUL"));
}

#[test]
fn page_sizes() {
    for ok in [512, 1024, 4096, 32768, 65536] {
        assert!(page_size(ok).is_ok(), "{ok}");
    }
    for bad in [0, 1, 256, 1000, 4095, 131072, u32::MAX] {
        assert!(msg(page_size(bad)).contains("power of two"), "{bad}");
    }
}

#[test]
fn page_counts_and_numbers() {
    assert!(page_count(1).is_ok() && page_count(MAX_PAGE_COUNT).is_ok());
    assert!(msg(page_count(0)).contains("page count 0"));
    assert!(msg(page_count(u32::MAX)).contains("4294967295"));
    assert!(page_no(1, 1).is_ok() && page_no(7, 7).is_ok());
    assert!(msg(page_no(0, 5)).contains("page number 0"));
    assert!(msg(page_no(6, 5)).contains("beyond the page count 5"));
    assert!(page_nos_in_range(&[1, 5, 2], 5).is_ok());
    assert!(page_nos_in_range(&[1, 6], 5).is_err());
}

#[test]
fn page_lengths() {
    assert!(page_len(PageNo(3), 4096, 4096).is_ok());
    assert!(msg(page_len(PageNo(3), 4095, 4096)).contains("page 3 is 4095 bytes"));
}

#[test]
fn ids() {
    assert_eq!(lease_id(&[7; 16]).ok(), Some(LeaseId([7; 16])));
    assert!(msg(lease_id(&[7; 15])).contains("lease_id must be 16 bytes, got 15"));
    assert!(msg(commit_id(&[])).contains("commit_id must be 16 bytes, got 0"));
    assert!(commit_id(&[0; 17]).is_err());
    assert!(client_id("host:42").is_ok());
    assert!(client_id(&"x".repeat(MAX_CLIENT_ID_BYTES + 1)).is_err());
}

#[test]
fn duplicates() {
    assert!(no_duplicates([1, 2, 3]).is_ok());
    assert!(msg(no_duplicates([1, 2, 1])).contains("page 1 appears twice"));
}

#[test]
fn page_one_header() {
    assert!(page_one(&page_one_bytes(4096, 3), 4096, 3).is_ok());
    assert!(page_one(&page_one_bytes(65536, 3), 65536, 3).is_ok()); // stored as 1
    assert!(msg(page_one(&page_one_bytes(4096, 3), 8192, 3)).contains("page 1 is 4096 bytes"));
    let mut wrong_size = page_one_bytes(4096, 3).to_vec();
    wrong_size[16..18].copy_from_slice(&1024u16.to_be_bytes());
    assert!(msg(page_one(&wrong_size, 4096, 3)).contains("says page size 1024"));
    let mut wal = page_one_bytes(4096, 3).to_vec();
    wal[18] = 2;
    wal[19] = 2;
    let m = msg(page_one(&wal, 4096, 3));
    assert!(m.contains("WAL") && m.contains("2/2"), "{m}");
    wal[18] = 1;
    assert!(page_one(&wal, 4096, 3).is_err(), "byte 19 alone");
    assert!(msg(page_one(&page_one_bytes(4096, 3), 4096, 4)).contains("says 3 pages"));
    // A stale in-header count (change counter != version-valid-for) is not checked.
    let mut stale = page_one_bytes(4096, 3).to_vec();
    stale[95] = 9;
    assert!(page_one(&stale, 4096, 4).is_ok());
    // Nor is a zero count (SQLite then uses the file size).
    let mut zero = page_one_bytes(4096, 3).to_vec();
    zero[28..32].copy_from_slice(&[0; 4]);
    assert!(page_one(&zero, 4096, 4).is_ok());
}

fn page_one_bytes(page_size: u32, page_count: u32) -> Bytes {
    valid_page_one(page_size, page_count, 0)
}

#[test]
fn whole_commits() {
    let good = commit_of(
        4096,
        3,
        vec![(2, page(4096, 1)), (1, page_one_bytes(4096, 3))],
    );
    assert!(commit(&good).is_ok());
    let no_page1 = commit_of(4096, 3, vec![(2, page(4096, 1))]);
    assert!(msg(commit(&no_page1)).contains("must carry page 1"));
    let dup = commit_of(
        4096,
        3,
        vec![
            (1, page_one_bytes(4096, 3)),
            (2, page(4096, 1)),
            (2, page(4096, 1)),
        ],
    );
    assert!(msg(commit(&dup)).contains("twice"));
    let beyond = commit_of(
        4096,
        3,
        vec![(1, page_one_bytes(4096, 3)), (4, page(4096, 1))],
    );
    assert!(msg(commit(&beyond)).contains("beyond"));
    let short = commit_of(
        4096,
        3,
        vec![(1, page_one_bytes(4096, 3)), (2, page(4096, 1).slice(1..))],
    );
    assert!(msg(commit(&short)).contains("4095 bytes"));
    let bad_size = commit_of(1000, 3, vec![]);
    assert!(msg(commit(&bad_size)).contains("power of two"));
    let zero_count = commit_of(4096, 0, vec![]);
    assert!(msg(commit(&zero_count)).contains("page count 0"));
}

#[test]
fn page_size_change_rewrites_everything() {
    let base = DbState {
        version: Version(4),
        page_size: 4096,
        page_count: 10,
        ..Default::default()
    };
    let partial = commit_of(8192, 2, vec![(1, page_one_bytes(8192, 2))]);
    assert!(msg(against_base(&partial, &base)).contains("must rewrite every page"));
    let whole = commit_of(
        8192,
        2,
        vec![(1, page_one_bytes(8192, 2)), (2, page(8192, 0))],
    );
    assert!(against_base(&whole, &base).is_ok());
    let same_size = commit_of(4096, 2, vec![(1, page_one_bytes(4096, 2))]);
    assert!(against_base(&same_size, &base).is_ok());
    let empty = DbState::default();
    assert!(
        against_base(&partial, &empty).is_ok(),
        "first commit may pick any size"
    );
}

#[test]
fn read_limits() {
    let mib16 = 16 << 20;
    assert_eq!(max_pages_per_read(1024, mib16, 4096), 1024);
    assert_eq!(max_pages_per_read(1024, mib16, 65536), 255);
    assert_eq!(max_pages_per_read(1024, 1 << 20, 65536), 15);
    assert_eq!(max_pages_per_read(1024, 1000, 65536), 1, "never below one");
    assert!(read_count(1024, 1024).is_ok());
    assert!(matches!(
        read_count(1025, 1024),
        Err(StoreError::TooLarge(_))
    ));
    assert!(commit_bytes(10, 10, SERVER_COMMIT_LIMIT).is_ok());
    assert!(matches!(
        commit_bytes(11, 10, SERVER_COMMIT_LIMIT),
        Err(StoreError::TooLarge(_))
    ));
}

#[test]
fn time_travel_fields() {
    assert_eq!(read_at(0, 0).ok(), Some(ReadAt::Newest));
    assert_eq!(read_at(7, 0).ok(), Some(ReadAt::Version(Version(7))));
    assert_eq!(read_at(0, -5).ok(), Some(ReadAt::UnixMs(-5)));
    assert!(msg(read_at(7, 1_700_000_000_000)).contains("both set"));
}

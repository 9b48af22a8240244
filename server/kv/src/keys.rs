//! The key layout, in one place. Every key starts with a one-byte tag; integers are
//! big-endian, so byte order is numeric order and a database's records of one kind are
//! one contiguous range.
//!
//! | key | value |
//! |---|---|
//! | `M` `format` | the layout's format version (u32) |
//! | `c` tenant-length(u16) tenant name | the database's id (u64): the catalog, ordered by name within a tenant |
//! | `h` id | the database's [`Head`](crate::records::Head): identity, lease and epochs, newest state, GC hints |
//! | `v` id version | that version's [`MetaRecord`](crate::records::MetaRecord) (geometry, commit time, tag, pages changed) |
//! | `w` id page version | a page write's length (0: a zero marker), the index loaded with the database |
//! | `d` id page version | the page's bytes |
//! | `i` id version | the commit id that made that version (the last [`COMMIT_IDS_KEPT`] versions) |
//! | `x` id | a deleted database whose records are still being removed (empty value) |
//!
//! A database's id is random, chosen at create and never reused, so a database created
//! again under a deleted name shares no key with the old one. Version metadata doubles
//! as the time-to-version index: commit times never go backwards with the version
//! number, so the newest version at or before a time is a search over `v` keys.
//! Reader pins live in memory only (see the crate docs).
//!
//! [`COMMIT_IDS_KEPT`]: pagewire_server_core::store::commit_check::COMMIT_IDS_KEPT

/// The format this build writes. Start-up refuses a newer one and migrates older ones.
pub const FORMAT: u32 = 1;

pub const FORMAT_KEY: &[u8] = b"Mformat";

const CATALOG: u8 = b'c';
const HEAD: u8 = b'h';
const META: u8 = b'v';
const WRITE: u8 = b'w';
const DATA: u8 = b'd';
const COMMIT_ID: u8 = b'i';
const DELETED: u8 = b'x';

/// The per-database kinds, for deleting a database whole.
pub const PER_DATABASE: [u8; 5] = [HEAD, META, WRITE, DATA, COMMIT_ID];

/// A database's id (random, see the module docs).
pub type DbId = u64;

fn key(tag: u8, id: DbId, rest: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + rest.iter().map(|r| r.len()).sum::<usize>());
    k.push(tag);
    k.extend_from_slice(&id.to_be_bytes());
    for r in rest {
        k.extend_from_slice(r);
    }
    k
}

/// The catalog prefix of a tenant's databases.
pub fn catalog_prefix(tenant: &str) -> Vec<u8> {
    let len = u16::try_from(tenant.len()).unwrap_or(u16::MAX);
    let mut k = vec![CATALOG];
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(tenant.as_bytes());
    k
}

pub fn catalog(tenant: &str, name: &str) -> Vec<u8> {
    let mut k = catalog_prefix(tenant);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The database name of a catalog key under `prefix`.
pub fn catalog_name(prefix: &[u8], key: &[u8]) -> Option<String> {
    let name = key.strip_prefix(prefix)?;
    String::from_utf8(name.to_vec()).ok()
}

/// The tenant and name of any catalog key.
pub fn catalog_entry(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(&[CATALOG])?;
    let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let tenant = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    let name = std::str::from_utf8(rest.get(2 + len..)?).ok()?;
    Some((tenant.to_owned(), name.to_owned()))
}

pub fn all_catalog() -> (Vec<u8>, Vec<u8>) {
    (vec![CATALOG], vec![CATALOG + 1])
}

pub fn head(id: DbId) -> Vec<u8> {
    key(HEAD, id, &[])
}

pub fn meta(id: DbId, version: u64) -> Vec<u8> {
    key(META, id, &[&version.to_be_bytes()])
}

/// The version of a `v` key.
pub fn meta_version(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

pub fn write(id: DbId, page: u32, version: u64) -> Vec<u8> {
    key(WRITE, id, &[&page.to_be_bytes(), &version.to_be_bytes()])
}

pub fn data(id: DbId, page: u32, version: u64) -> Vec<u8> {
    key(DATA, id, &[&page.to_be_bytes(), &version.to_be_bytes()])
}

/// The page and version of a `w` (or `d`) key.
pub fn write_page_version(key: &[u8]) -> Option<(u32, u64)> {
    let page = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?);
    let version = u64::from_be_bytes(key.get(13..21)?.try_into().ok()?);
    Some((page, version))
}

pub fn commit_id(id: DbId, version: u64) -> Vec<u8> {
    key(COMMIT_ID, id, &[&version.to_be_bytes()])
}

/// The marker of a deleted database whose records are still being removed: written
/// with the delete, removed after the last of them (see `KvStore::sweep`).
pub fn deleted(id: DbId) -> Vec<u8> {
    key(DELETED, id, &[])
}

pub fn all_deleted() -> (Vec<u8>, Vec<u8>) {
    (vec![DELETED], vec![DELETED + 1])
}

/// The database id of an `x` key.
pub fn deleted_id(key: &[u8]) -> Option<DbId> {
    match key {
        [DELETED, id @ ..] => Some(DbId::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// `[start, end)` of one kind of a database's records.
pub fn range(tag: u8, id: DbId) -> (Vec<u8>, Vec<u8>) {
    let start = key(tag, id, &[]);
    (start.clone(), prefix_end(&start))
}

pub fn metas(id: DbId) -> (Vec<u8>, Vec<u8>) {
    range(META, id)
}

pub fn writes(id: DbId) -> (Vec<u8>, Vec<u8>) {
    range(WRITE, id)
}

pub fn commit_ids(id: DbId) -> (Vec<u8>, Vec<u8>) {
    range(COMMIT_ID, id)
}

/// The first key after every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_keys_sort_by_name_within_a_tenant_and_round_trip() {
        let (a, b) = (catalog("t", "a"), catalog("t", "b"));
        assert!(a < b);
        // A tenant whose name extends another's is another range.
        assert!(!catalog("tt", "x").starts_with(&catalog_prefix("t")));
        assert_eq!(catalog_entry(&a), Some(("t".into(), "a".into())));
        assert_eq!(catalog_name(&catalog_prefix("t"), &b).as_deref(), Some("b"));
    }

    #[test]
    fn page_keys_order_by_page_then_version() {
        assert!(write(7, 1, u64::MAX) < write(7, 2, 0));
        assert!(write(7, u32::MAX, u64::MAX) < writes(7).1);
        assert_eq!(write_page_version(&write(7, 3, 9)), Some((3, 9)));
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
        assert!(writes(u64::MAX).1 > write(u64::MAX, u32::MAX, u64::MAX));
    }
}

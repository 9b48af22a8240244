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
//! | `s` id stage | a commit being staged (its [`StageRecord`](crate::records::StageRecord)); removed when it is published |
//! | `S` id stage page | a staged commit's page bytes |
//! | `T` id stage page | a staged commit's page index entry (as `w`) |
//! | `g` id version | the stage id whose `S`/`T` records hold that version's pages |
//! | `a` id | a branch's [`AncestorRecord`](crate::records::AncestorRecord): the database and version its unwritten pages read through to (format 3) |
//! | `B` id version child | a branch point: branch `child` reads database `id` at `version`, which GC keeps (empty value; format 3) |
//! | `r` id label | a restore point's [`PointRecord`](crate::records::PointRecord) (format 3) |
//! | `X` id | a deleted database kept for its branches, not in the catalog (value: its tenant; format 3) |
//!
//! A page over the engine's value limit is stored in pieces: its `d` (or `S`) key
//! followed by the piece's number (one byte), in order.
//!
//! A commit too big for one engine transaction (FoundationDB's 10 MB) is *staged*: its
//! pages go under a random stage id in as many transactions as it needs, then one small
//! transaction checks the head (lease, epoch, base version) and the stage marker,
//! writes the version and the `g` key, and removes the marker. Until then nothing reads
//! the stage; a stage whose marker outlives its chance to publish is collected by GC.
//!
//! A database's id is random, chosen at create and never reused, so a database created
//! again under a deleted name shares no key with the old one. Version metadata doubles
//! as the time-to-version index: commit times never go backwards with the version
//! number, so the newest version at or before a time is a search over `v` keys.
//! Reader pins live in memory only (see the crate docs).
//!
//! [`COMMIT_IDS_KEPT`]: pagewire_server_core::store::commit_check::COMMIT_IDS_KEPT

/// The newest format this build reads. Start-up refuses a newer one.
pub const FORMAT: u32 = 3;

/// The format of a store that may hold branches and restore points (`a`, `B`, `r`, `X`
/// keys), which a server of format 2 would not see (it would read a branch's
/// inherited pages as zeros and collect held versions): written by the first fork or
/// restore point, so a store that never had one stays readable by older servers.
pub const FORMAT_BRANCHES: u32 = 3;

/// The format of a store whose engine takes every commit in one batch: no staged
/// commits, no pieces (what servers before staging read).
pub const FORMAT_WHOLE: u32 = 1;

/// The format of a store under engine limits: it may hold staged commits (`s`, `S`,
/// `T`, `g` keys) and pages in pieces, which a server of format 1 would not see
/// (it would read such pages as zeros), so it refuses the store instead.
pub const FORMAT_STAGED: u32 = 2;

pub const FORMAT_KEY: &[u8] = b"Mformat";

const CATALOG: u8 = b'c';
const HEAD: u8 = b'h';
const META: u8 = b'v';
const WRITE: u8 = b'w';
const DATA: u8 = b'd';
const COMMIT_ID: u8 = b'i';
const DELETED: u8 = b'x';
const STAGE: u8 = b's';
const STAGE_DATA: u8 = b'S';
const STAGE_WRITE: u8 = b'T';
const STAGED_VERSION: u8 = b'g';
const ANCESTOR: u8 = b'a';
const BRANCH_POINT: u8 = b'B';
const RESTORE_POINT: u8 = b'r';
const DETACHED: u8 = b'X';

/// The per-database kinds, for deleting a database whole.
pub const PER_DATABASE: [u8; 13] = [
    ANCESTOR,
    BRANCH_POINT,
    RESTORE_POINT,
    DETACHED,
    HEAD,
    META,
    WRITE,
    DATA,
    COMMIT_ID,
    STAGE,
    STAGE_DATA,
    STAGE_WRITE,
    STAGED_VERSION,
];

/// A staged commit's id (random).
pub type StageId = [u8; 16];

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

pub fn stage(id: DbId, stage: &StageId) -> Vec<u8> {
    key(STAGE, id, &[stage])
}

pub fn all_stages() -> (Vec<u8>, Vec<u8>) {
    (vec![STAGE], vec![STAGE + 1])
}

/// The database and stage of an `s` key.
pub fn stage_of(key: &[u8]) -> Option<(DbId, StageId)> {
    match key {
        [STAGE, rest @ ..] if rest.len() == 24 => Some((
            DbId::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            rest.get(8..)?.try_into().ok()?,
        )),
        _ => None,
    }
}

pub fn stage_data(id: DbId, stage: &StageId, page: u32) -> Vec<u8> {
    key(STAGE_DATA, id, &[stage, &page.to_be_bytes()])
}

pub fn stage_write(id: DbId, stage: &StageId, page: u32) -> Vec<u8> {
    key(STAGE_WRITE, id, &[stage, &page.to_be_bytes()])
}

/// The page of a `T` key.
pub fn stage_write_page(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(25..29)?.try_into().ok()?))
}

/// `[start, end)` of a stage's `S` and of its `T` records.
pub fn stage_records(id: DbId, stage: &StageId) -> [(Vec<u8>, Vec<u8>); 2] {
    [STAGE_DATA, STAGE_WRITE].map(|tag| {
        let start = key(tag, id, &[stage]);
        let end = prefix_end(&start);
        (start, end)
    })
}

pub fn staged_version(id: DbId, version: u64) -> Vec<u8> {
    key(STAGED_VERSION, id, &[&version.to_be_bytes()])
}

pub fn staged_versions(id: DbId) -> (Vec<u8>, Vec<u8>) {
    range(STAGED_VERSION, id)
}

pub fn ancestor(id: DbId) -> Vec<u8> {
    key(ANCESTOR, id, &[])
}

pub fn branch_point(id: DbId, version: u64, child: DbId) -> Vec<u8> {
    key(
        BRANCH_POINT,
        id,
        &[&version.to_be_bytes(), &child.to_be_bytes()],
    )
}

/// `[start, end)` of database `id`'s branch points.
pub fn branch_points(id: DbId) -> (Vec<u8>, Vec<u8>) {
    range(BRANCH_POINT, id)
}

/// The version of a `B` key.
pub fn branch_point_version(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

pub fn restore_point(id: DbId, label: &str) -> Vec<u8> {
    key(RESTORE_POINT, id, &[label.as_bytes()])
}

pub fn restore_points(id: DbId) -> (Vec<u8>, Vec<u8>) {
    range(RESTORE_POINT, id)
}

/// The label of an `r` key.
pub fn restore_point_label(key: &[u8]) -> Option<String> {
    String::from_utf8(key.get(9..)?.to_vec()).ok()
}

pub fn detached(id: DbId) -> Vec<u8> {
    key(DETACHED, id, &[])
}

pub fn all_detached() -> (Vec<u8>, Vec<u8>) {
    (vec![DETACHED], vec![DETACHED + 1])
}

/// The database id of an `X` key.
pub fn detached_id(key: &[u8]) -> Option<DbId> {
    match key {
        [DETACHED, id @ ..] => Some(DbId::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// Piece `n` of a value stored in pieces under `key`.
pub fn piece(key: &[u8], n: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(n);
    k
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

    #[test]
    fn stage_keys_round_trip_and_stay_in_their_database() {
        let sid = [7u8; 16];
        assert_eq!(stage_of(&stage(9, &sid)), Some((9, sid)));
        assert_eq!(stage_write_page(&stage_write(9, &sid, 42)), Some(42));
        let [(s0, s1), (t0, t1)] = stage_records(9, &sid);
        let staged = stage_data(9, &sid, u32::MAX);
        assert!(s0 <= staged && piece(&staged, 255) < s1);
        assert!(t0 <= stage_write(9, &sid, 0) && stage_write(9, &sid, u32::MAX) < t1);
        let (g0, g1) = range(b'g', 9);
        assert!(g0 < staged_version(9, 0) && staged_version(9, u64::MAX) < g1);
        // A piece sorts after its whole key and before the next page's.
        let whole = data(1, 2, 3);
        assert!(whole < piece(&whole, 0) && piece(&whole, 255) < data(1, 2, 4));
    }
}

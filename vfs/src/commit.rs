//! The commit: the new image built from a transaction's write buffer, the one
//! Commit call that sends it, and what its answer moves.
//!
//! The commit point is xSync (see `main_file`). What is sent ([`image`]):
//! - page size and count from the new page 1 header when it is valid (the count only
//!   when bytes 24..27 equal 92..95, else the byte extent), else the base page size;
//! - every page overlapping a write (or whose base content a truncate hid), page 1
//!   always, every page when the page size changed, none past the new end;
//! - page 1 stamped with change counter `max(written, base + 1)` and a page count
//!   valid for it: under `locking_mode=EXCLUSIVE` SQLite bumps the counter only once
//!   per lock, yet other clients learn of changes from it;
//! - nothing at all when the image equals its base (a ROLLBACK after a cache spill
//!   writes the originals back, then syncs).
//!
//! How it is sent ([`plan`]): one streaming Commit with the lease id and epoch, the
//! base version and its tag, the incarnation and a random commit id; the client
//! (`client.rs`) retries it with that id until the answer is definite. The answer is
//! checked ([`new_state`]): only the next version with a 16-byte tag is believed,
//! anything else leaves the outcome unknown. Once applied, the process's page cache
//! moves to the new version with the pages it sent ([`cache_applied`]).

use std::collections::BTreeSet;

use bytes::Bytes;
use pagewire_proto::{
    ids::{CommitId, Incarnation, PageNo, Version, VersionTag},
    v1 as pb,
};

use crate::{
    buffer::{BaseRead, WriteBuffer},
    cache::{Changed, PageCache},
    client::{CommitError, CommitPlan},
    error::VfsError,
    header,
    lease::Lease,
    state::{DbState, bad_reply},
};

/// The pages a transaction commits, with the new image's geometry.
#[derive(Debug)]
pub struct Image {
    pub page_size: u32,
    pub page_count: u32,
    pub pages: Vec<(PageNo, Bytes)>,
}

/// The image a transaction over `view` commits, read through `base` (the committed
/// bytes at `view`); `None` when it equals its base and nothing is to be sent.
pub fn image(
    txn: &WriteBuffer,
    view: DbState,
    base: &mut BaseRead<'_, VfsError>,
) -> Result<Option<Image>, VfsError> {
    if txn.equals_base(base)? {
        return Ok(None);
    }
    let (page_size, page_count) = geometry(txn, view, base)?;
    let base_counter = base_change_counter(view, base)?;
    let sent = pages_to_send(txn, view, page_size, page_count);
    let mut pages = Vec::with_capacity(sent.len());
    for p in sent {
        let mut data = vec![0u8; page_size as usize];
        txn.read((p as u64 - 1) * page_size as u64, &mut data, base)?;
        if p == 1 {
            header::stamp(&mut data, base_counter, page_count);
        }
        pages.push((PageNo(p), Bytes::from(data)));
    }
    Ok(Some(Image {
        page_size,
        page_count,
        pages,
    }))
}

/// Page size and page count of the transaction's image: from its page 1 header
/// when valid (the truncate may come after the sync), else the base page size
/// and the byte extent.
fn geometry(
    txn: &WriteBuffer,
    view: DbState,
    base: &mut BaseRead<'_, VfsError>,
) -> Result<(u32, u32), VfsError> {
    let mut h = [0u8; header::HEADER_LEN];
    let complete = txn.read(0, &mut h, base)? == h.len();
    let page_size = complete
        .then(|| header::page_size(&h))
        .flatten()
        .or((view.page_size > 0).then_some(view.page_size))
        .ok_or_else(|| VfsError::Internal("cannot tell the page size of the new image".into()))?;
    let from_extent = txn.size().div_ceil(page_size as u64);
    let page_count = match complete.then(|| header::page_count(&h)).flatten() {
        Some(n) => n,
        None => {
            u32::try_from(from_extent).map_err(|_| VfsError::Internal("file too large".into()))?
        }
    };
    if page_count == 0 {
        return Err(VfsError::Internal(
            "a commit must leave at least one page".into(),
        ));
    }
    Ok((page_size, page_count))
}

/// Which pages of the new image are sent: those the transaction changed, all of them
/// when the page size changed (every page moved), page 1 always (it is stamped, and
/// the server checks its header on every commit), none past the new end.
fn pages_to_send(
    txn: &WriteBuffer,
    view: DbState,
    page_size: u32,
    page_count: u32,
) -> BTreeSet<u32> {
    let mut pages = if view.page_count > 0 && page_size != view.page_size {
        (1..=page_count).collect()
    } else {
        txn.dirty_pages(page_size)
    };
    pages.insert(1);
    pages.retain(|p| *p <= page_count);
    pages
}

/// The change counter of the base's page 1 (0 for an empty database).
fn base_change_counter(view: DbState, base: &mut BaseRead<'_, VfsError>) -> Result<u32, VfsError> {
    if view.page_count == 0 {
        return Ok(0);
    }
    let mut h = [0u8; header::HEADER_LEN];
    base(0, &mut h)?;
    Ok(header::change_counter(&h))
}

/// The Commit of `image` on `base` under `lease`, with a fresh commit id (a retry
/// sends this same plan, so the server can tell it applied already).
pub fn plan(
    name: &str,
    incarnation: Incarnation,
    lease: &Lease,
    base: DbState,
    image: Image,
    max_message_bytes: usize,
) -> CommitPlan {
    let header = pb::CommitHeader {
        name: name.to_owned(),
        lease_id: lease.id.to_wire(),
        epoch: lease.epoch,
        base_version: base.version.0,
        commit_id: CommitId(rand::random()).to_wire(),
        page_size: image.page_size,
        page_count: image.page_count,
        incarnation: incarnation.to_wire(),
        base_tag: base.tag.to_wire(),
    };
    // Half the server's message limit leaves room for framing; a page always fits.
    let chunk_bytes = (max_message_bytes / 2).max(image.page_size as usize);
    CommitPlan {
        header,
        pages: image.pages,
        chunk_bytes,
    }
}

/// A commit asked for by a connection whose process holds no write lease: refused
/// here, as the server would (`FAILED_PRECONDITION`).
pub fn without_lease() -> CommitError {
    CommitError::Definite(VfsError::Status(tonic::Status::failed_precondition(
        "this connection does not hold the write lease",
    )))
}

/// The state `plan`, on `base`, created, from the server's answer. Only the lease
/// holder commits, on the current version, so the answer must be the next version
/// with a 16-byte tag; anything else leaves the outcome unknown.
pub fn new_state(
    resp: &pb::CommitResponse,
    base: DbState,
    plan: &CommitPlan,
) -> Result<DbState, CommitError> {
    let tag = VersionTag::from_wire(&resp.tag).ok();
    let next = base.version.next() == Some(Version(resp.version));
    let (Some(tag), true) = (tag, next) else {
        return Err(CommitError::Unknown(bad_reply(&format!(
            "version {} (tag of {} bytes) for a commit on version {}",
            resp.version,
            resp.tag.len(),
            base.version
        ))));
    };
    Ok(DbState {
        version: Version(resp.version),
        page_size: plan.header.page_size,
        page_count: plan.header.page_count,
        tag,
    })
}

/// A commit of this process from `base` to `state` applied: the cache moves there
/// (unless the Watch stream's RoundEnd moved it already) and keeps the pages sent.
pub fn cache_applied(
    cache: &mut PageCache,
    base: DbState,
    state: DbState,
    pages: &[(PageNo, Bytes)],
) {
    if cache.version() < state.version {
        let changed: Vec<u32> = pages.iter().map(|(p, _)| p.0).collect();
        let changed = Changed::of_commit(&changed, base.page_count, state.page_count);
        cache.advance(base.version, state, Some(changed));
    }
    for (p, d) in pages {
        cache.insert(state, p.0, d.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file of `count` pages of `size` bytes whose page 1 header says so,
    /// with change counter `counter`; page `p` is filled with the byte `p`.
    fn file(size: u32, count: u32, counter: u32) -> Vec<u8> {
        let mut f = Vec::new();
        for p in 1..=count {
            f.extend(std::iter::repeat_n(p as u8, size as usize));
        }
        set_header(&mut f, size, count, counter, counter);
        f
    }

    fn set_header(f: &mut [u8], size: u32, count: u32, counter: u32, valid_for: u32) {
        let raw = if size == 65536 { 1 } else { size as u16 };
        f[16..18].copy_from_slice(&raw.to_be_bytes());
        f[24..28].copy_from_slice(&counter.to_be_bytes());
        f[28..32].copy_from_slice(&count.to_be_bytes());
        f[92..96].copy_from_slice(&valid_for.to_be_bytes());
    }

    fn state(version: u64, size: u32, count: u32) -> DbState {
        DbState {
            version: Version(version),
            page_size: size,
            page_count: count,
            tag: VersionTag([version as u8; 16]),
        }
    }

    /// The image of `txn` over `base` (the committed file at `view`).
    fn image_of(txn: &WriteBuffer, view: DbState, base: &[u8]) -> Result<Option<Image>, VfsError> {
        let mut read = |off: u64, buf: &mut [u8]| {
            let off = off as usize;
            let n = base.len().saturating_sub(off).min(buf.len());
            buf[..n].copy_from_slice(&base[off..off + n]);
            Ok(n)
        };
        image(txn, view, &mut read)
    }

    fn sent(image: &Image) -> Vec<u32> {
        image.pages.iter().map(|(p, _)| p.0).collect()
    }

    fn counter_and_count(page1: &[u8]) -> (u32, Option<u32>) {
        (header::change_counter(page1), header::page_count(page1))
    }

    #[test]
    fn a_first_commit_takes_its_geometry_from_the_new_header() {
        let new = file(1024, 3, 1);
        let mut txn = WriteBuffer::new(0);
        txn.write(0, &new);
        let image = image_of(&txn, DbState::default(), &[])
            .expect("built")
            .expect("changed");
        assert_eq!((image.page_size, image.page_count), (1024, 3));
        assert_eq!(sent(&image), [1, 2, 3]);
        assert!(image.pages.iter().all(|(_, d)| d.len() == 1024));
        assert_eq!(counter_and_count(&image.pages[0].1), (1, Some(3)));
        assert_eq!(image.pages[2].1[500], 3, "page 3's bytes");
    }

    #[test]
    fn page_one_is_always_sent_and_stamped_past_the_base_counter() {
        let base = file(1024, 4, 5);
        let view = state(9, 1024, 4);
        // A write of page 3 alone (SQLite wrote page 1 too, but say a spill did not):
        // page 1 comes from the base, its counter bumped past the base's.
        let mut txn = WriteBuffer::new(base.len() as u64);
        txn.write(2048, &[7; 1024]);
        let image = image_of(&txn, view, &base)
            .expect("built")
            .expect("changed");
        assert_eq!((image.page_size, image.page_count), (1024, 4));
        assert_eq!(sent(&image), [1, 3]);
        assert_eq!(counter_and_count(&image.pages[0].1), (6, Some(4)));
        assert_eq!(image.pages[1].1[..], [7; 1024]);
        // A counter SQLite already moved further is kept.
        let mut page1 = base[..1024].to_vec();
        set_header(&mut page1, 1024, 4, 40, 40);
        txn.write(0, &page1);
        let image = image_of(&txn, view, &base)
            .expect("built")
            .expect("changed");
        assert_eq!(counter_and_count(&image.pages[0].1), (40, Some(4)));
    }

    #[test]
    fn a_stale_header_count_gives_way_to_the_byte_extent() {
        let base = file(1024, 2, 3);
        let mut txn = WriteBuffer::new(base.len() as u64);
        // A legacy writer's header: counter 4, "valid for" 3, count 2, yet 3 pages.
        let mut page1 = base[..1024].to_vec();
        set_header(&mut page1, 1024, 2, 4, 3);
        txn.write(0, &page1);
        txn.write(2048, &[9; 1024]);
        let image = image_of(&txn, state(1, 1024, 2), &base)
            .expect("built")
            .expect("changed");
        assert_eq!(image.page_count, 3);
        assert_eq!(sent(&image), [1, 3]);
        assert_eq!(counter_and_count(&image.pages[0].1), (4, Some(3)));
    }

    #[test]
    fn a_shrinking_commit_sends_nothing_past_the_new_end() {
        let base = file(1024, 5, 2);
        let view = state(4, 1024, 5);
        // The header says 2 pages before SQLite truncates (that comes after the sync);
        // pages past 2 it wrote are not sent.
        let mut page1 = base[..1024].to_vec();
        set_header(&mut page1, 1024, 2, 3, 3);
        let mut txn = WriteBuffer::new(base.len() as u64);
        txn.write(0, &page1);
        txn.write(3072, &[1; 1024]);
        let image = image_of(&txn, view, &base)
            .expect("built")
            .expect("changed");
        assert_eq!((image.page_count, sent(&image)), (2, vec![1]));
        // Truncated first, with a header that does not count: the extent decides.
        let mut txn = WriteBuffer::new(base.len() as u64);
        txn.truncate(3 * 1024);
        txn.write(1024, &[8; 1024]);
        let image = image_of(&txn, view, &base)
            .expect("built")
            .expect("changed");
        assert_eq!(
            (image.page_count, sent(&image)),
            (5, vec![1, 2]),
            "the header still counts 5"
        );
        let mut stale = base[..1024].to_vec();
        set_header(&mut stale, 1024, 5, 3, 2);
        txn.write(0, &stale);
        let image = image_of(&txn, view, &base)
            .expect("built")
            .expect("changed");
        assert_eq!((image.page_count, sent(&image)), (3, vec![1, 2]));
    }

    #[test]
    fn a_new_page_size_sends_every_page() {
        // VACUUM to 2048-byte pages: 4 pages of 1024 become 2 of 2048.
        let base = file(1024, 4, 6);
        let new = file(2048, 2, 7);
        let mut txn = WriteBuffer::new(base.len() as u64);
        txn.write(0, &new[..2048]);
        let image = image_of(&txn, state(2, 1024, 4), &base)
            .expect("built")
            .expect("changed");
        assert_eq!((image.page_size, image.page_count), (2048, 2));
        assert_eq!(sent(&image), [1, 2], "page 2 too, though not written");
        assert!(image.pages.iter().all(|(_, d)| d.len() == 2048));
        assert_eq!(
            image.pages[1].1[..],
            base[2048..4096],
            "base bytes, regrouped"
        );
    }

    #[test]
    fn an_image_equal_to_its_base_sends_nothing_and_one_without_a_size_fails() {
        let base = file(1024, 2, 1);
        let mut txn = WriteBuffer::new(base.len() as u64);
        txn.write(1024, &base[1024..]);
        assert!(
            image_of(&txn, state(1, 1024, 2), &base)
                .expect("built")
                .is_none()
        );
        // A first commit without a valid header: no page size to go by.
        let mut txn = WriteBuffer::new(0);
        txn.write(0, &[1; 700]);
        let err = image_of(&txn, DbState::default(), &[]).expect_err("no page size");
        assert!(
            err.to_string().contains("cannot tell the page size"),
            "{err}"
        );
    }

    fn planned(base: DbState, pages: u32) -> CommitPlan {
        let lease = Lease::from_response(
            &pb::LeaseResponse {
                lease_id: bytes::Bytes::from_static(&[4; 16]),
                epoch: 8,
                ttl_ms: 1000,
                state: None,
            },
            std::time::Instant::now(),
        )
        .expect("lease");
        let image = Image {
            page_size: 1024,
            page_count: pages,
            pages: (1..=pages)
                .map(|p| (PageNo(p), Bytes::from(vec![p as u8; 1024])))
                .collect(),
        };
        plan("t.db", Incarnation([3; 16]), &lease, base, image, 16 << 20)
    }

    #[test]
    fn the_plan_names_the_lease_the_base_and_a_fresh_commit_id() {
        let base = state(5, 1024, 2);
        let p = planned(base, 3);
        let h = &p.header;
        assert_eq!(
            (h.base_version, h.epoch, h.page_size, h.page_count),
            (5, 8, 1024, 3)
        );
        assert_eq!(h.lease_id.as_ref(), &[4; 16]);
        assert_eq!(h.incarnation.as_ref(), &[3; 16]);
        assert_eq!(h.base_tag.as_ref(), &[5; 16]);
        assert_eq!(h.commit_id.len(), 16);
        assert_ne!(h.commit_id, planned(base, 3).header.commit_id);
        assert_eq!(p.chunk_bytes, 8 << 20);
    }

    #[test]
    fn only_the_next_version_with_a_tag_is_believed() {
        let base = state(5, 1024, 2);
        let p = planned(base, 3);
        let answer = |version, tag: &[u8]| pb::CommitResponse {
            version,
            tag: Bytes::copy_from_slice(tag),
            ..Default::default()
        };
        let s = new_state(&answer(6, &[9; 16]), base, &p).expect("the next version");
        assert_eq!(
            s,
            DbState {
                version: Version(6),
                page_size: 1024,
                page_count: 3,
                tag: VersionTag([9; 16])
            }
        );
        for (version, tag) in [(7, &[9u8; 16][..]), (5, &[9; 16]), (6, &[9; 4]), (6, &[])] {
            match new_state(&answer(version, tag), base, &p) {
                Err(CommitError::Unknown(e)) => {
                    assert!(e.to_string().contains("for a commit on version 5"), "{e}")
                }
                _ => panic!("believed version {version} with a tag of {}", tag.len()),
            }
        }
        let last = state(u64::MAX, 1024, 2);
        assert!(
            new_state(&answer(0, &[9; 16]), last, &p).is_err(),
            "no wrap"
        );
    }

    #[test]
    fn an_applied_commit_moves_the_cache_with_the_pages_it_sent() {
        let base = state(5, 4, 3);
        let mut cache = PageCache::new(1 << 20);
        cache.advance(Version(0), base, None);
        for p in 1..=3 {
            cache.insert(base, p, Bytes::from_static(b"old!"));
        }
        // Page 2 rewritten, page 5 added (4 grew in between, unwritten).
        let to = state(6, 4, 5);
        let pages = [2, 5].map(|p| (PageNo(p), Bytes::from_static(b"new!")));
        cache_applied(&mut cache, base, to, &pages);
        assert_eq!(cache.version(), Version(6));
        assert_eq!(cache.get(to, 1).as_deref(), Some(&b"old!"[..]), "unchanged");
        assert_eq!(cache.get(to, 2).as_deref(), Some(&b"new!"[..]), "sent");
        assert_eq!(cache.get(to, 5).as_deref(), Some(&b"new!"[..]));
        assert!(cache.get(to, 4).is_none(), "grown, never cached");
        // The Watch stream got there first: the sent pages are still kept, no step.
        let later = state(7, 4, 5);
        cache.advance(Version(6), later, Some(Changed::new(&[3], 0)));
        cache_applied(
            &mut cache,
            to,
            later,
            &[(PageNo(3), Bytes::from_static(b"3rd!"))],
        );
        assert_eq!(cache.get(later, 3).as_deref(), Some(&b"3rd!"[..]));
        assert_eq!(cache.get(later, 1).as_deref(), Some(&b"old!"[..]));
    }
}

//! The state types every part of the VFS shares: a database at one version
//! ([`DbState`]), what names a database to this process ([`DbKey`]), what the server
//! announced at Open ([`ServerSettings`]), and the local end of a lease
//! ([`lease_deadline`]). They depend on nothing else in the crate, so the cache, the
//! Watch stream, the lease and the database can all use them without using each other.
//!
//! Everything here that comes from the server is checked where it is decoded: a reply
//! that cannot be right is an error naming what the server sent, never a panic.

use std::time::{Duration, Instant};

use pagewire_proto::{
    ids::{Incarnation, Version, VersionTag},
    v1 as pb,
};

use crate::error::VfsError;

/// A database at one version, with the tag that names that version (a version
/// number alone never names pages: see "Identity" in `pagewire.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DbState {
    pub version: Version,
    pub page_size: u32,
    pub page_count: u32,
    pub tag: VersionTag,
}

impl DbState {
    pub fn file_size(&self) -> u64 {
        self.page_size as u64 * self.page_count as u64
    }

    /// A state the server sent, checked (it is trusted no further than that) and with
    /// its incarnation: a page size SQLite can have (0 only while empty), a page count
    /// within SQLite's, empty only at version 0 (a commit leaves at least one page),
    /// 16-byte ids (version 0's tag may be empty: it is all zeros in every incarnation).
    pub fn from_wire(s: Option<&pb::DbState>) -> Result<(Self, Incarnation), VfsError> {
        let s = s.ok_or_else(|| bad_reply("a reply without the database's state"))?;
        check_geometry(s)?;
        let tag = if s.version == 0 && s.tag.is_empty() {
            VersionTag::ZERO
        } else {
            VersionTag::from_wire(&s.tag).map_err(bad_id)?
        };
        let state = Self {
            version: Version(s.version),
            page_size: s.page_size,
            page_count: s.page_count,
            tag,
        };
        let incarnation = Incarnation::from_wire(&s.incarnation).map_err(bad_id)?;
        Ok((state, incarnation))
    }
}

/// Page size and count as SQLite can have them, and empty exactly at version 0.
fn check_geometry(s: &pb::DbState) -> Result<(), VfsError> {
    let sized =
        s.page_size == 0 || (s.page_size.is_power_of_two() && (512..=65536).contains(&s.page_size));
    if !sized || (s.page_size == 0) != (s.page_count == 0) || s.page_count == u32::MAX {
        return Err(bad_reply(&format!(
            "page size {} and count {}",
            s.page_size, s.page_count
        )));
    }
    if (s.version == 0) != (s.page_count == 0) {
        return Err(bad_reply(&format!(
            "version {} with page count {}",
            s.version, s.page_count
        )));
    }
    Ok(())
}

/// The server sent something this client cannot use.
pub fn bad_reply(what: &str) -> VfsError {
    VfsError::Internal(format!(
        "the server sent {what}; is it a pagewire server of a compatible version?"
    ))
}

/// An id of the wrong length, as [`bad_reply`] says it ("an incarnation of 5 bytes").
pub fn bad_id(e: pagewire_proto::ids::BadId) -> VfsError {
    bad_reply(&format!("{} of {} bytes", e.what, e.len))
}

/// What identifies a database to this process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DbKey {
    pub url: String,
    pub token: Option<String>,
    pub name: String,
}

/// Settings the server announced at Open.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub max_pages_per_read: usize,
    pub max_message_bytes: usize,
    pub heartbeat: Duration,
}

impl ServerSettings {
    /// The server's word, within reason (any value, 0 or missing included, gives
    /// settings that work): at least one page per read; messages of at least 1 MiB and
    /// at most what this client accepts; a heartbeat between 100 ms and a day.
    pub fn from_open(r: &pb::OpenResponse, client_max_message: usize) -> Self {
        let limits = r.limits.unwrap_or_default();
        let max_message_bytes = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
        Self {
            max_pages_per_read: (limits.max_pages_per_read as usize).max(1),
            max_message_bytes: max_message_bytes.clamp(1 << 20, client_max_message.max(1 << 20)),
            heartbeat: Duration::from_millis(r.heartbeat_ms.clamp(100, MAX_TTL_MS)),
        }
    }

    /// Most pages one ReadPages asks for at `page_size`: the server's limit, and no
    /// more than fit in one message (with room for its framing), at least one.
    pub fn pages_per_read(&self, page_size: u32) -> usize {
        let fit = (self.max_message_bytes / page_size.max(1) as usize).saturating_sub(1);
        self.max_pages_per_read.min(fit).max(1)
    }
}

/// Longest lease (or heartbeat) a server's word is taken for: a day. Longer would be a
/// bug, and clock arithmetic with it could overflow.
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;

/// Where a lease (write or read) asked for at `asked_at` with `ttl` ends here: the
/// server's expiry minus a fifth, so it always ends here first, whatever the clock
/// rates and the time the ask took to arrive.
pub fn lease_deadline(asked_at: Instant, ttl: Duration) -> Instant {
    asked_at + ttl - ttl / 5
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn wire(version: u64, page_size: u32, page_count: u32, tag: &[u8]) -> pb::DbState {
        pb::DbState {
            version,
            page_size,
            page_count,
            incarnation: Bytes::from_static(&[1; 16]),
            tag: Bytes::copy_from_slice(tag),
        }
    }

    fn refused(s: Option<&pb::DbState>) -> String {
        DbState::from_wire(s).expect_err("refused").to_string()
    }

    #[test]
    fn states_from_the_server_are_checked() {
        let (s, incarnation) =
            DbState::from_wire(Some(&wire(3, 4096, 10, &[2; 16]))).expect("valid");
        assert_eq!(
            (s.version, s.page_size, s.page_count, s.tag, incarnation),
            (
                Version(3),
                4096,
                10,
                VersionTag([2; 16]),
                Incarnation([1; 16])
            )
        );
        // Version 0: empty, its tag all zeros or left out.
        assert_eq!(
            DbState::from_wire(Some(&wire(0, 0, 0, &[])))
                .expect("empty tag at 0")
                .0,
            DbState::default()
        );
        assert!(DbState::from_wire(Some(&wire(0, 0, 0, &[0; 16]))).is_ok());
        assert!(refused(Some(&wire(1, 4096, 1, &[]))).contains("a version tag of 0 bytes"));
        assert!(refused(Some(&wire(0, 4096, 1, &[0; 16]))).contains("version 0 with page count 1"));
        assert!(refused(Some(&wire(5, 4096, 0, &[2; 16]))).contains("page size 4096 and count 0"));
        assert!(refused(Some(&wire(5, 0, 3, &[2; 16]))).contains("page size 0 and count 3"));
        for size in [3000, 256, 1 << 17, 1 << 30, u32::MAX] {
            assert!(
                refused(Some(&wire(1, size, 1, &[2; 16]))).contains(&format!("page size {size}"))
            );
        }
        assert!(refused(Some(&wire(1, 4096, u32::MAX, &[2; 16]))).contains("count 4294967295"));
        let mut short = wire(1, 4096, 1, &[2; 16]);
        short.incarnation = Bytes::from_static(&[1; 5]);
        assert!(refused(Some(&short)).contains("an incarnation of 5 bytes"));
        assert!(refused(None).contains("without the database's state"));
    }

    #[test]
    fn server_limits_of_any_value_give_settings_that_work() {
        let open = |limits, heartbeat_ms| pb::OpenResponse {
            limits,
            heartbeat_ms,
            ..Default::default()
        };
        let zero = ServerSettings::from_open(&open(Some(pb::Limits::default()), 0), 256 << 20);
        assert_eq!(
            (
                zero.max_pages_per_read,
                zero.max_message_bytes,
                zero.heartbeat
            ),
            (1, 1 << 20, Duration::from_millis(100))
        );
        assert_eq!(zero.pages_per_read(65536), 1);
        let none = ServerSettings::from_open(&open(None, 1000), 256 << 20);
        assert_eq!(
            (none.max_pages_per_read, none.max_message_bytes),
            (1, 1 << 20)
        );
        let max = pb::Limits {
            max_pages_per_read: u32::MAX,
            max_message_bytes: u64::MAX,
            max_commit_bytes: u64::MAX,
        };
        let max = ServerSettings::from_open(&open(Some(max), u64::MAX), 256 << 20);
        assert_eq!(
            (max.max_message_bytes, max.heartbeat),
            (256 << 20, Duration::from_millis(MAX_TTL_MS))
        );
        // As many pages as fit in a message this client accepts, with room for framing.
        assert_eq!(max.pages_per_read(4096), (256 << 20) / 4096 - 1);
        assert_eq!(max.pages_per_read(65536), 4095);
        assert_eq!(
            max.pages_per_read(0),
            (256 << 20) - 1,
            "an empty state asks for no pages anyway"
        );
        let server = pb::Limits {
            max_pages_per_read: 1024,
            max_message_bytes: 16 << 20,
            max_commit_bytes: 0,
        };
        let server = ServerSettings::from_open(&open(Some(server), 3000), 256 << 20);
        assert_eq!(
            (server.pages_per_read(4096), server.pages_per_read(65536)),
            (1024, 255)
        );
    }

    #[test]
    fn a_lease_ends_here_a_fifth_of_its_ttl_before_the_server() {
        let asked = Instant::now();
        let at = |ms| lease_deadline(asked, Duration::from_millis(ms)) - asked;
        assert_eq!(at(10_000), Duration::from_millis(8_000));
        assert_eq!(at(5), Duration::from_millis(4));
        assert_eq!(at(0), Duration::ZERO, "a zero lease is over when granted");
        // The longest TTL taken from a server does not overflow the clock.
        assert_eq!(at(MAX_TTL_MS), Duration::from_millis(MAX_TTL_MS / 5 * 4));
    }
}

//! Typed values at the protocol boundary. The wire carries ids as `bytes` and versions and
//! page numbers as integers; past the boundary (the server's request checks, the VFS's
//! response checks) each kind has its own type, so passing a lease id where a commit id
//! goes, or a page number where a version goes, does not compile:
//!
//! ```compile_fail
//! use pagewire_proto::ids::{CommitId, LeaseId};
//! fn renew(_lease: LeaseId) {}
//! renew(CommitId([0; 16]));
//! ```
//!
//! ```compile_fail
//! use pagewire_proto::ids::{PageNo, Version};
//! fn read_at(_version: Version) {}
//! read_at(PageNo(1));
//! ```

use std::fmt;

use bytes::Bytes;

/// A wire id of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadId {
    /// Which id, for the message ("a lease id").
    pub what: &'static str,
    /// The length received.
    pub len: usize,
}

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} must be 16 bytes (got {})", self.what, self.len)
    }
}

impl std::error::Error for BadId {}

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// What this id is called in messages.
            pub const WHAT: &'static str = $what;

            /// The id in a wire field: exactly 16 bytes.
            pub fn from_wire(bytes: &[u8]) -> Result<Self, BadId> {
                let id: [u8; 16] = bytes.try_into().map_err(|_| BadId {
                    what: $what,
                    len: bytes.len(),
                })?;
                Ok(Self(id))
            }

            /// The id as a wire field.
            pub fn to_wire(self) -> Bytes {
                Bytes::copy_from_slice(&self.0)
            }

            /// The 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl From<[u8; 16]> for $name {
            fn from(id: [u8; 16]) -> Self {
                Self(id)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ")")
            }
        }
    };
}

id16!(
    /// A write lease: 16 random bytes the server chose when it granted the lease.
    LeaseId,
    "a lease id"
);
id16!(
    /// A commit, for retries: 16 random bytes the client chose.
    CommitId,
    "a commit id"
);
id16!(
    /// Which database, among every one ever created under a name: 16 random bytes chosen
    /// at create, never reused.
    Incarnation,
    "an incarnation"
);
id16!(
    /// Which version, among every one ever committed under a number: 16 random bytes
    /// chosen at commit ([`VersionTag::ZERO`] for version 0).
    VersionTag,
    "a version tag"
);

impl VersionTag {
    /// The tag of version 0 (empty in every incarnation).
    pub const ZERO: VersionTag = VersionTag([0; 16]);
}

/// A committed version of a database (0: empty, before the first commit).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct Version(pub u64);

impl Version {
    /// The empty database, before any commit.
    pub const ZERO: Version = Version(0);

    /// The version a commit on this one creates (`None` past `u64::MAX`).
    pub fn next(self) -> Option<Version> {
        self.0.checked_add(1).map(Version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A page of a database file, numbered from 1 as SQLite does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PageNo(pub u32);

impl PageNo {
    /// Page 1, which holds the database header.
    pub const FIRST: PageNo = PageNo(1);

    /// A page number from the wire (0 is no page).
    pub fn from_wire(pgno: u32) -> Option<PageNo> {
        (pgno != 0).then_some(PageNo(pgno))
    }
}

impl fmt::Display for PageNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_exactly_sixteen_bytes() {
        let id = LeaseId::from_wire(&[7; 16]).expect("16 bytes");
        assert_eq!(id.to_wire().as_ref(), &[7; 16]);
        let err = CommitId::from_wire(&[1; 15]).expect_err("15 bytes");
        assert_eq!(err.to_string(), "a commit id must be 16 bytes (got 15)");
        assert!(Incarnation::from_wire(&[]).is_err());
        assert_eq!(
            format!("{:?}", VersionTag::ZERO),
            format!("VersionTag({})", "00".repeat(16))
        );
    }

    #[test]
    fn versions_and_pages() {
        assert_eq!(Version::ZERO.next(), Some(Version(1)));
        assert_eq!(Version(u64::MAX).next(), None);
        assert_eq!(PageNo::from_wire(0), None);
        assert_eq!(PageNo::from_wire(3), Some(PageNo(3)));
    }
}

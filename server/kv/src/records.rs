//! The values of the key layout (see [`crate::keys`]), as serde records in postcard's
//! compact encoding. Each decodes or is [`EngineError::Corrupt`]: a record this build
//! cannot read is never taken for an empty one.

use std::time::Duration;

use pagewire_server_core::store::history::VersionMeta;
use pagewire_server_core::store::lease_slot::LeaseSlot;
use pagewire_server_core::store::{Changes, DbInfo, DbState, Incarnation, Version, VersionTag};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::engine::{EngineError, EngineResult};

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail (postcard fails only on a full
    // fixed buffer or an unsupported type, neither of which these are).
    postcard::to_allocvec(record).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> EngineResult<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| EngineError::Corrupt(format!("cannot decode the {what} record: {e}")))
}

/// One database's head: everything but its versions, pages and commit ids. Rewritten by
/// every change to the database, and what a batch expects (so a concurrent change
/// through another writer is a conflict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub incarnation: [u8; 16],
    pub created_unix_ms: i64,
    /// The oldest version with metadata (`v` keys from here on).
    pub oldest: u64,
    pub first_commit_unix_ms: Option<i64>,
    pub gc_retention: Option<Duration>,
    pub lease: LeaseSlot,
    pub stored_bytes: u64,
    /// The newest state, for listing databases without loading them.
    pub version: u64,
    pub page_size: u32,
    pub page_count: u32,
    pub tag: [u8; 16],
    pub updated_unix_ms: i64,
    /// Readable versions, and when the oldest was committed: a GC pass loads a cold
    /// database only when it may collect something.
    pub readable: u64,
    pub oldest_readable_unix_ms: i64,
    /// Bumped by every change, so two heads with the same content are still told apart.
    pub change: u64,
}

impl Head {
    pub fn state(&self) -> DbState {
        DbState {
            version: Version(self.version),
            page_size: self.page_size,
            page_count: self.page_count,
            incarnation: Incarnation(self.incarnation),
            tag: VersionTag(self.tag),
        }
    }

    pub fn info(&self, name: &str, now_unix_ms: i64) -> DbInfo {
        DbInfo {
            name: name.to_owned(),
            state: self.state(),
            stored_bytes: self.stored_bytes,
            oldest_version: Version(self.oldest),
            created_unix_ms: self.created_unix_ms,
            updated_unix_ms: self.updated_unix_ms,
            lease_held: self.lease.live(now_unix_ms).is_some(),
        }
    }

    /// Whether a GC pass at `now_unix_ms` with `retention` may collect a version of
    /// this database, pins aside (a cold database has none).
    pub fn gc_may_collect(&self, now_unix_ms: i64, retention: Duration) -> bool {
        let window = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self.readable > 1 && self.oldest_readable_unix_ms < now_unix_ms.saturating_sub(window)
    }
}

/// One version's metadata ([`VersionMeta`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRecord {
    pub page_size: u32,
    pub page_count: u32,
    pub committed_unix_ms: i64,
    pub tag: [u8; 16],
    pub changed_pages: Vec<u32>,
    pub changed_from: Option<u32>,
    pub retained: bool,
}

impl From<&VersionMeta> for MetaRecord {
    fn from(m: &VersionMeta) -> Self {
        Self {
            page_size: m.page_size,
            page_count: m.page_count,
            committed_unix_ms: m.committed_unix_ms,
            tag: m.tag.0,
            changed_pages: m.changed.pages.clone(),
            changed_from: m.changed.from,
            retained: m.retained,
        }
    }
}

impl From<MetaRecord> for VersionMeta {
    fn from(r: MetaRecord) -> Self {
        Self {
            page_size: r.page_size,
            page_count: r.page_count,
            committed_unix_ms: r.committed_unix_ms,
            tag: VersionTag(r.tag),
            changed: Changes {
                pages: r.changed_pages,
                from: r.changed_from,
            },
            retained: r.retained,
        }
    }
}

/// A branch's source (the `a` record): pages `1..=inherited` it never wrote read
/// through to database `id` at `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AncestorRecord {
    pub id: u64,
    pub version: u64,
    pub inherited: u32,
    /// Branches between this database and its root, itself included.
    pub depth: u32,
}

/// A restore point (the `r` record; its label is in the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRecord {
    pub version: u64,
    pub tag: [u8; 16],
    pub created_unix_ms: i64,
}

/// A commit being staged (the `s` record): what decides whether it can still publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The version it commits on: once the database is past it, it never publishes.
    pub base: u64,
    /// Its lease's epoch: once a newer lease is granted, it never publishes.
    pub epoch: u64,
    pub created_unix_ms: i64,
}

/// A page write's index entry: its length, 0 for a zero marker.
pub fn write_len(len: Option<u32>) -> Vec<u8> {
    len.unwrap_or(0).to_be_bytes().to_vec()
}

pub fn read_write_len(bytes: &[u8]) -> EngineResult<Option<u32>> {
    let len: [u8; 4] = bytes.try_into().map_err(|_| {
        EngineError::Corrupt(format!("a page index entry of {} bytes", bytes.len()))
    })?;
    Ok(Some(u32::from_be_bytes(len)).filter(|&l| l > 0))
}

pub fn u64_value(what: &str, bytes: &[u8]) -> EngineResult<u64> {
    let v: [u8; 8] = bytes
        .try_into()
        .map_err(|_| EngineError::Corrupt(format!("the {what} is {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(v))
}

//! Store types to protocol messages.

use pagewire_proto::v1 as pb;

use crate::store::{DbInfo, DbState, Lease};

impl From<DbState> for pb::DbState {
    fn from(s: DbState) -> Self {
        pb::DbState {
            version: s.version.0,
            page_size: s.page_size,
            page_count: s.page_count,
            incarnation: s.incarnation.to_wire(),
            tag: s.tag.to_wire(),
        }
    }
}

impl From<DbInfo> for pb::DatabaseInfo {
    fn from(i: DbInfo) -> Self {
        pb::DatabaseInfo {
            name: i.name,
            state: Some(i.state.into()),
            stored_bytes: i.stored_bytes,
            oldest_version: i.oldest_version.0,
            created_unix_ms: i.created_unix_ms,
            updated_unix_ms: i.updated_unix_ms,
            lease_held: i.lease_held,
        }
    }
}

impl From<Lease> for pb::LeaseResponse {
    fn from(l: Lease) -> Self {
        pb::LeaseResponse {
            lease_id: l.lease_id.to_wire(),
            epoch: l.epoch,
            ttl_ms: millis(l.ttl),
            state: Some(l.state.into()),
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

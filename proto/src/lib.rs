//! The pagewire.v1 protocol: generated messages and gRPC stubs, plus the
//! encoded file descriptor set for gRPC reflection.
//!
//! `bytes` fields are `bytes::Bytes`, so page payloads move without copies.
//!
//! Besides the generated code, the few rules both sides of the wire share:
//! - [`ids`]: typed ids, versions and page numbers past the boundary;
//! - [`limits`]: the limits written into the protocol (name length, page sizes);
//! - [`sqlite_header`]: the page-1 header fields the VFS stamps and the server checks;
//! - [`redact()`]: secrets out of anything logged or reported.

pub mod ids;
pub mod limits;
mod redact;
pub mod sqlite_header;

pub use redact::redact;

#[allow(clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("pagewire.v1");

    /// Encoded descriptors of pagewire.v1, for tonic-reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("pagewire_descriptor");
}

/// Protocol revisions within pagewire.v1, so each side can tell an older peer: 1 the
/// first; 2 growth ranges (`changed_from`); 3 database incarnations and version tags;
/// 4 lease ids drawn by the client (`AcquireLeaseRequest.lease_id`), so a retried acquire
/// is answered the lease it was granted.
pub const PROTOCOL_REVISION: u32 = 4;

/// The oldest client revision a server of this build serves (0: clients that send no
/// revision, which keep working without the checks that need one).
pub const MIN_CLIENT_PROTOCOL: u32 = 0;

/// Capabilities a server announces in `OpenResponse.capabilities`.
pub mod capability {
    /// Incarnations and version tags (calls that carry them are checked).
    pub const INCARNATIONS: &str = "incarnations";
    /// Growth sent as `changed_from` ranges to clients that ask.
    pub const RANGES: &str = "ranges";
}

//! The pagewire.v1 protocol: generated messages and gRPC stubs, plus the
//! encoded file descriptor set for gRPC reflection.
//!
//! `bytes` fields are `bytes::Bytes`, so page payloads move without copies.

#[allow(clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("pagewire.v1");

    /// Encoded descriptors of pagewire.v1, for tonic-reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pagewire_descriptor");
}

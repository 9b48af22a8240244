//! pagewire-server: the page-store server of pagewire.
//!
//! SQLite clients (through the pagewire VFS) keep their databases' pages here, over gRPC
//! (`pagewire.v1`, crate `pagewire-proto`). The crate's map:
//!
//! - [`server`]: [`ServerConfig`] and [`serve`], which runs the services on a listener
//!   until shutdown (health and reflection included).
//! - [`service`]: the gRPC handlers, one file per RPC family (open, lease, read, commit,
//!   admin); they validate input and call the store.
//! - [`validate`]: every check on client input, so every store gets the same checks.
//! - [`auth`]: bearer tokens to tenants (tokens file), the authenticating interceptor.
//! - [`store`]: the [`PageStore`] trait with its types and [`StoreError`], its conformance
//!   suite ([`store::conformance`]) and the memory store ([`MemoryStore`]).
//! - [`error`]: the one mapping from [`StoreError`] to a gRPC status.
//!
//! The binary (`main.rs`) only parses flags, sets up logging, binds and calls [`serve`].

pub mod auth;
pub mod error;
pub mod server;
pub mod service;
pub mod store;
pub mod validate;

pub use auth::{Tenant, TokenMap};
pub use server::{ServerConfig, serve};
pub use store::{MemoryStore, PageStore, StoreError};

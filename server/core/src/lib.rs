//! pagewire-server-core: the page-store server of pagewire, as a library.
//!
//! SQLite clients (through the pagewire VFS) keep their databases' pages here, over gRPC
//! (`pagewire.v1`, crate `pagewire-proto`). The crate's map:
//!
//! - [`server`]: [`ServerConfig`] and [`serve`], which runs the services on a listener
//!   until shutdown (health and reflection included), with the history GC task.
//! - [`limits`]: every bound on what a client can make the server do ([`Limits`]), one
//!   flag each; [`admission`]: the connection cap, the call cap and the in-flight
//!   commit budgets, enforced before any handler runs.
//! - [`gc`]: that task: [`PageStore::gc`] every `gc_interval`, with the retention window.
//! - [`service`]: the gRPC handlers, one file per RPC family (open, lease, read, commit,
//!   admin); they validate input and call the store.
//! - [`validate`]: every check on client input, so every store gets the same checks.
//! - [`auth`]: bearer tokens to tenants and roles (tokens file, reloadable), the operator
//!   credential, the authenticating interceptors.
//! - [`store`]: the [`PageStore`] trait with its types and [`StoreError`], its conformance
//!   suite ([`store::conformance`]), the memory store ([`MemoryStore`]; commit times from a
//!   [`store::Clock`]) and the fault-injecting wrapper ([`store::FaultyStore`], the
//!   hidden `--inject-fault` flag, for retry tests).
//!
//! History: every version keeps its commit time; BeginRead reads the newest version or
//! one as of a version or a time, and pins it (`pin_ttl`, extended by ReadPages at it);
//! GC keeps the newest version, every version within `history_retention` and every
//! pinned one, and deletes page writes none of those can read.
//! - [`watch`]: Watch streams, read leases and the invalidation round every commit runs
//!   (readers holding a read lease serve reads with no round trip).
//! - [`error`]: the one mapping from [`StoreError`] to a gRPC status.
//!
//! The binary (crate `pagewire-server`, `server/bin`) only parses flags, sets up logging,
//! picks the store, binds and calls [`serve`].

pub mod admission;
pub mod auth;
pub mod error;
pub mod gc;
pub mod limits;
pub mod metrics;
pub mod quota;
pub mod server;
pub mod service;
pub mod store;
pub mod validate;
pub mod watch;

pub use auth::{Credentials, Role, Tenant, TokenMap};
pub use limits::Limits;
pub use server::{ServerConfig, serve};
pub use store::{MemoryStore, PageStore, StoreError};

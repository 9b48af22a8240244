//! TLS for pagewire, in one place: PEM files read with errors that name them, and the
//! rustls configurations the server ([`server`]), the VFS and the PostgreSQL store
//! ([`client`]) use. Always the `ring` provider (`aws-lc-rs` needs cmake to build).

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
use rustls::crypto::CryptoProvider;

pub mod client;
pub mod pem;
pub mod server;

/// A TLS setting that cannot be used: a file missing or unreadable, not PEM, a key
/// that does not match its certificate, ...
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("{0}")]
    Config(String),
}

impl TlsError {
    fn file(path: &Path, problem: impl Into<String>) -> Self {
        TlsError::File {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// The crypto provider of every configuration built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN protocol gRPC speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// The rustls error somewhere in `error`'s source chain, if a TLS failure caused it.
/// `std::io::Error` hides the error it wraps from `source()` (it returns the inner
/// error's own source), so an I/O error's payload is looked into as well.
pub fn tls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

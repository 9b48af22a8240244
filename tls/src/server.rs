//! The server's TLS configuration, from certificate and key files (and, for mutual TLS,
//! the CA that signs client certificates), reloadable while it serves: [`Reloadable`]
//! hands each new connection the configuration current then, and a reload that fails
//! keeps the one that works.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::{TlsError, pem, provider};

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Mutual TLS: only clients with a certificate this CA signed may connect (PEM).
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    /// Reads the files and builds the configuration (HTTP/2 only: gRPC).
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let identity = pem::identity(&self.cert, &self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("TLS versions: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in pem::certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::file(ca, format!("not a usable CA: {e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::file(ca, format!("not a usable CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(identity.certs, identity.key)
            .map_err(|e| TlsError::file(&self.cert, format!("unusable certificate: {e}")))?;
        config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
        Ok(config)
    }
}

/// The configuration in use, replaced by [`Reloadable::reload`].
pub struct Reloadable {
    files: ServerFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("files", &self.files)
            .finish()
    }
}

impl Reloadable {
    /// Loads `files`; an error here stops the server from starting.
    pub fn load(files: ServerFiles) -> Result<Self, TlsError> {
        let config = files.load()?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Reads the files again. On an error the configuration in use stays (connections
    /// keep being served) and the error says what is wrong.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.load()?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

//! Certificates and private keys from PEM files.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Reads `path` whole (a PEM file is small; a huge one is not PEM).
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    const MAX_PEM_BYTES: u64 = 16 << 20;
    let len = std::fs::metadata(path)
        .map_err(|e| TlsError::file(path, format!("cannot read it: {e}")))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::file(
            path,
            format!("{len} bytes: not a PEM file (at most {MAX_PEM_BYTES})"),
        ));
    }
    std::fs::read(path).map_err(|e| TlsError::file(path, format!("cannot read it: {e}")))
}

/// Every certificate in the PEM file `path` (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from(path, &read(path)?)
}

/// Every certificate in `pem`, the text of the file `path`.
pub fn certs_from(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(
            path,
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The private key in the PEM file `path` (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from(path, &read(path)?)
}

/// The private key in `pem`, the text of the file `path`.
pub fn key_from(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        TlsError::file(
            path,
            format!("no private key in it (expected -----BEGIN PRIVATE KEY-----): {e}"),
        )
    })
}

/// A certificate chain and its key, checked to belong together; also the PEM text of
/// both, for APIs that take PEM (tonic's `Identity`).
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// The certificate chain in `cert` and its key in `key`.
pub fn identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = certs_from(cert, &cert_pem)?;
    let private = key_from(key, &key_pem)?;
    let signing = crate::provider()
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|e| TlsError::file(key, format!("unusable private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    certified.keys_match().map_err(|e| {
        TlsError::Config(format!(
            "{} is not the key of {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Identity {
        certs,
        key: private,
        cert_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn bad_files_are_named_and_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let good_cert = write(dir.path(), "c.pem", &cert.cert.pem());
        let good_key = write(dir.path(), "k.pem", &cert.signing_key.serialize_pem());
        let other_key = write(dir.path(), "o.pem", &other.signing_key.serialize_pem());
        let garbage = write(dir.path(), "g.pem", "hello");
        assert!(identity(&good_cert, &good_key).is_ok());
        let cases = [
            (identity(&good_cert, &other_key).err(), "is not the key of"),
            (identity(&garbage, &good_key).err(), "no certificate in it"),
            (identity(&good_cert, &garbage).err(), "no private key in it"),
            (
                identity(&dir.path().join("missing.pem"), &good_key).err(),
                "missing.pem: cannot read it",
            ),
            (certs(&good_key).err(), "no certificate in it"),
        ];
        for (err, want) in cases {
            let err = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }
}

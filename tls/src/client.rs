//! What a client trusts: the system's roots plus a CA file of the user's, and the
//! verification modes of PostgreSQL's `sslmode`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{TlsError, pem, provider};

/// The system's trusted roots (none where the system has none: then only `extra_ca`
/// is trusted), plus every certificate in the PEM file `extra_ca`.
pub fn roots(extra_ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system CA certificates were unreadable");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = extra_ca {
        for cert in pem::certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::file(ca, format!("not a usable CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no trusted CA certificates: the system has none; give a CA file".into(),
        ));
    }
    Ok(roots)
}

/// How much of the server's certificate a client checks (PostgreSQL's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypted, but any certificate is accepted (`require`, `prefer`): protects
    /// against eavesdroppers, not against an active man in the middle.
    Nothing,
    /// Signed by a trusted CA, whatever host name it is for (`verify-ca`).
    Ca,
    /// Signed by a trusted CA and for the host connected to (`verify-full`).
    Full,
}

/// A client configuration verifying as `verify` says against `roots` (unused for
/// [`Verify::Nothing`]), presenting `identity` when given.
pub fn config(
    verify: Verify,
    roots: Option<RootCertStore>,
    identity: Option<pem::Identity>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(format!("TLS versions: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AnyCertificate),
        Verify::Ca | Verify::Full => {
            let roots = roots.ok_or_else(|| TlsError::Config("no trusted CA given".into()))?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config(format!("trusted CAs: {e}")))?;
            if verify == Verify::Ca {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => builder
            .with_client_auth_cert(id.certs, id.key)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}"))),
    }
}

/// The handshake's signatures, checked with the provider's algorithms (the part of
/// verification every mode keeps: it proves the peer holds the certificate's key).
fn signatures() -> rustls::crypto::WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// `sslmode=require`: any certificate.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signatures())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signatures())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures().supported_schemes()
    }
}

/// `sslmode=verify-ca`: the full check, but a certificate for another name passes.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

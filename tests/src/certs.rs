//! Certificates for the TLS tests, made per run (never checked in): a CA, a server
//! certificate it signed for `localhost` and `127.0.0.1`, a client CA and a client
//! certificate it signed, and a second CA that signed nothing here (the wrong CA).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files, in a temporary directory removed on drop.
pub struct TestCerts {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub wrong_ca: PathBuf,
    /// A server certificate the wrong CA signed (to reload into a server).
    pub wrong_server_cert: PathBuf,
    pub wrong_server_key: PathBuf,
    pub dir: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A leaf certificate signed by `issuer` for `names`; (cert PEM, key PEM).
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl TestCerts {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let server_ca = ca("pagewire test CA")?;
        let client_ca = ca("pagewire test client CA")?;
        let wrong = ca("some other CA")?;
        let names = ["localhost", "127.0.0.1"];
        let (scert, skey) = leaf(&server_ca, &names, ExtendedKeyUsagePurpose::ServerAuth)?;
        let (wcert, wkey) = leaf(&wrong, &names, ExtendedKeyUsagePurpose::ServerAuth)?;
        let (ccert, ckey) = leaf(&client_ca, &["client"], ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(Self {
            ca: write(d, "ca.pem", &server_ca.pem())?,
            server_cert: write(d, "server.pem", &scert)?,
            server_key: write(d, "server.key", &skey)?,
            wrong_server_cert: write(d, "wrong-server.pem", &wcert)?,
            wrong_server_key: write(d, "wrong-server.key", &wkey)?,
            client_ca: write(d, "client-ca.pem", &client_ca.pem())?,
            client_cert: write(d, "client.pem", &ccert)?,
            client_key: write(d, "client.key", &ckey)?,
            wrong_ca: write(d, "wrong-ca.pem", &wrong.pem())?,
            dir: d.to_owned(),
            _dir: dir,
        })
    }

    /// The server flags for TLS with these files (`mutual`: client certificates too).
    pub fn server_flags(&self, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            self.server_cert.display().to_string(),
            "--tls-key".to_owned(),
            self.server_key.display().to_string(),
        ];
        if mutual {
            flags.push("--tls-client-ca".to_owned());
            flags.push(self.client_ca.display().to_string());
        }
        flags
    }

    /// A path as the string a flag or an environment variable takes.
    pub fn s(path: &Path) -> String {
        path.display().to_string()
    }
}

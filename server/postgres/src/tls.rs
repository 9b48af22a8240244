//! TLS to PostgreSQL: libpq's `sslmode` (and `sslrootcert`, `sslcert`, `sslkey`) in the
//! store URL, with rustls. tokio-postgres itself knows only `disable`, `prefer` and
//! `require`, and none of the file parameters, so those are taken out of the URL here
//! and become the rustls configuration:
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (the default) | if the server offers it; plaintext otherwise, **logged** | no |
//! | `require` | yes, or no connection | no (libpq's meaning; with `sslrootcert=`, as `verify-ca`) |
//! | `verify-ca` | yes | signed by `sslrootcert`'s CA |
//! | `verify-full` | yes | signed by that CA and for the host connected to |
//!
//! `sslrootcert=` is a PEM file or `system` (the system's roots); without it the
//! verifying modes use `~/.postgresql/root.crt`, as libpq does.

use std::path::PathBuf;

use pagewire_server_core::store::StoreError;
use pagewire_tls::client::Verify;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS parameters of a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssl {
    pub mode: Mode,
    rootcert: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn bad(why: String) -> StoreError {
    StoreError::InvalidArgument(format!("bad PostgreSQL URL: {why}"))
}

/// `%XX` escapes decoded (a path in a URL query may carry them).
fn percent_decode(v: &str) -> Result<String, StoreError> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("a bad %-escape in a parameter".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("a parameter is not UTF-8".into()))
}

/// Splits the TLS parameters out of `url`: the URL tokio-postgres can parse, and them.
pub fn split(url: &str) -> Result<(String, Ssl), StoreError> {
    let mut ssl = Ssl {
        mode: Mode::Prefer,
        rootcert: None,
        cert: None,
        key: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), ssl));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                ssl.mode = match percent_decode(v)?.as_str() {
                    "disable" => Mode::Disable,
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(bad(format!(
                            "sslmode={other:?}: use disable, prefer, require, verify-ca or verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => ssl.rootcert = Some(percent_decode(v)?),
            "sslcert" => ssl.cert = Some(PathBuf::from(percent_decode(v)?)),
            "sslkey" => ssl.key = Some(PathBuf::from(percent_decode(v)?)),
            _ => kept.push(pair),
        }
    }
    if ssl.cert.is_some() != ssl.key.is_some() {
        return Err(bad("sslcert= and sslkey= go together".into()));
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, ssl))
}

impl Ssl {
    /// tokio-postgres's mode for this one.
    pub fn tokio_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    fn verify(&self) -> Verify {
        match self.mode {
            Mode::Disable | Mode::Prefer => Verify::Nothing,
            Mode::Require if self.rootcert.is_some() => Verify::Ca,
            Mode::Require => Verify::Nothing,
            Mode::VerifyCa => Verify::Ca,
            Mode::VerifyFull => Verify::Full,
        }
    }

    /// The CA file the verifying modes use: `sslrootcert`, else libpq's default.
    fn roots(&self) -> Result<rustls::RootCertStore, StoreError> {
        let tls = |e: pagewire_tls::TlsError| bad(format!("TLS: {e}"));
        match self.rootcert.as_deref() {
            Some("system") => pagewire_tls::client::roots(None).map_err(tls),
            Some(path) => only_these(&PathBuf::from(path)).map_err(tls),
            None => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let default = home.map(|h| h.join(".postgresql/root.crt"));
                match default.filter(|p| p.exists()) {
                    Some(path) => only_these(&path).map_err(tls),
                    None => Err(bad(
                        "this sslmode checks the server's certificate: give the CA with \
                         sslrootcert=/path/to/ca.pem (or sslrootcert=system)"
                            .into(),
                    )),
                }
            }
        }
    }

    /// The connector for tokio-postgres.
    pub fn connector(&self) -> Result<MakeRustlsConnect, StoreError> {
        let verify = self.verify();
        let roots = match verify {
            Verify::Nothing => None,
            Verify::Ca | Verify::Full => Some(self.roots()?),
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(
                pagewire_tls::pem::identity(cert, key)
                    .map_err(|e| bad(format!("TLS client certificate: {e}")))?,
            ),
            _ => None,
        };
        let config = pagewire_tls::client::config(verify, roots, identity)
            .map_err(|e| bad(format!("TLS: {e}")))?;
        Ok(MakeRustlsConnect::new(config))
    }
}

/// Exactly the certificates of the PEM file `path` (not the system's as well: libpq's
/// `sslrootcert` replaces them).
fn only_these(path: &std::path::Path) -> Result<rustls::RootCertStore, pagewire_tls::TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pagewire_tls::pem::certs(path)? {
        roots.add(cert).map_err(|e| pagewire_tls::TlsError::File {
            path: path.to_owned(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_what_tokio_postgres_cannot_parse() {
        let (rest, ssl) = split(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .expect("valid");
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(ssl.mode, Mode::VerifyFull);
        assert_eq!(ssl.rootcert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(ssl.tokio_mode(), SslMode::Require);
        let (rest, ssl) = split("postgres://u@h/db").expect("valid");
        assert_eq!(
            (rest.as_str(), ssl.mode),
            ("postgres://u@h/db", Mode::Prefer)
        );
        for bad in [
            "postgres://h/db?sslmode=maybe",
            "postgres://h/db?sslcert=/c",
            "postgres://h/db?sslrootcert=%zz",
        ] {
            assert!(split(bad).is_err(), "{bad}");
        }
        let (_, ssl) =
            split("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent").expect("valid");
        let err = ssl
            .connector()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent"), "{err}");
    }
}

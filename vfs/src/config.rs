//! Client settings: environment variables parsed once at registration, then
//! per-database overrides from URI parameters (`file:x.db?url=...&token=...`).
//! A bad value is an error naming the variable or parameter, never a silent default.

use std::time::Duration;

use crate::error::VfsError;

/// Where a setting came from, for error messages.
#[derive(Clone, Copy)]
enum Source {
    Env,
    Uri,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Server address, `http://host:port`.
    pub url: String,
    /// Bearer token sent with every call (selects the tenant).
    pub token: Option<String>,
    /// How long to wait for a TCP connection to the server.
    pub connect_timeout: Duration,
    /// How long to keep retrying a call whose outcome is unknown (lost reply,
    /// server restarting) before giving up with an I/O error.
    pub retry_timeout: Duration,
    /// Filter for the VFS's own log lines on stderr (tracing syntax).
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7878".into(),
            token: None,
            connect_timeout: Duration::from_secs(3),
            retry_timeout: Duration::from_secs(30),
            log: "warn".into(),
        }
    }
}

impl Config {
    /// Reads `PAGEWIRE_*` environment variables.
    pub fn from_env() -> Result<Self, VfsError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, VfsError> {
        let mut c = Self::default();
        for key in ["url", "token", "connect_timeout", "retry_timeout", "log"] {
            let var = format!("PAGEWIRE_{}", key.to_ascii_uppercase());
            if let Some(v) = get(&var) {
                c.set(key, &v, Source::Env)?;
            }
        }
        Ok(c)
    }

    /// Applies URI parameters (pairs as SQLite stores them after the file name).
    /// Parameters this VFS does not own (`vfs`, `mode`, `cache`, ...) are left to SQLite.
    pub fn with_uri_params<'a>(
        &self,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, VfsError> {
        let mut c = self.clone();
        for (k, v) in params {
            if ["url", "token", "connect_timeout", "retry_timeout"].contains(&k) {
                c.set(k, v, Source::Uri)?;
            }
        }
        Ok(c)
    }

    fn set(&mut self, key: &str, value: &str, src: Source) -> Result<(), VfsError> {
        let name = match src {
            Source::Env => format!("PAGEWIRE_{}", key.to_ascii_uppercase()),
            Source::Uri => format!("URI parameter {key}="),
        };
        let bad = |why: String| VfsError::Config(format!("{name}: {why} (got {value:?})"));
        match key {
            "url" => self.url = parse_url(value).map_err(bad)?,
            "token" if value.is_empty() => return Err(bad("must not be empty".into())),
            "token" if !value.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(bad("must be printable ASCII without spaces".into()));
            }
            "token" => self.token = Some(value.to_owned()),
            "connect_timeout" => self.connect_timeout = parse_duration(value).map_err(bad)?,
            "retry_timeout" => self.retry_timeout = parse_duration(value).map_err(bad)?,
            "log" => self.log = value.to_owned(),
            _ => {}
        }
        Ok(())
    }
}

fn parse_url(v: &str) -> Result<String, String> {
    let uri: tonic::transport::Uri =
        v.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported yet; use http://".into()),
        _ => return Err("expected http://host:port".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host".into());
    }
    Ok(v.trim_end_matches('/').to_owned())
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v).map_err(|e| format!("not a duration like 5s or 500ms: {e}"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config, VfsError> {
        Config::from_lookup(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn defaults_without_env() {
        assert_eq!(env(&[]).ok(), Some(Config::default()));
    }

    #[test]
    fn env_values_parse() {
        let c = env(&[("PAGEWIRE_URL", "http://db:9000/"), ("PAGEWIRE_TOKEN", "t0k"), ("PAGEWIRE_RETRY_TIMEOUT", "2s")])
            .expect("valid");
        assert_eq!(c.url, "http://db:9000");
        assert_eq!(c.token.as_deref(), Some("t0k"));
        assert_eq!(c.retry_timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("PAGEWIRE_URL", "ftp://x"),
            ("PAGEWIRE_URL", "not a url"),
            ("PAGEWIRE_URL", "https://x:1"),
            ("PAGEWIRE_TOKEN", ""),
            ("PAGEWIRE_CONNECT_TIMEOUT", "soon"),
            ("PAGEWIRE_RETRY_TIMEOUT", "0s"),
        ] {
            let err = env(&[(var, val)]).expect_err(var).to_string();
            assert!(err.contains(var), "{err} should name {var}");
        }
    }

    #[test]
    fn uri_overrides_env_and_ignores_sqlite_params() {
        let base = env(&[("PAGEWIRE_URL", "http://a:1")]).expect("valid");
        let c = base
            .with_uri_params([("url", "http://b:2"), ("mode", "ro"), ("vfs", "pagewire")])
            .expect("valid");
        assert_eq!(c.url, "http://b:2");
        let err = base.with_uri_params([("token", "a b")]).expect_err("space").to_string();
        assert!(err.contains("token="), "{err}");
    }
}

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
    /// Give the write lease back after this long without writing.
    pub lease_idle: Duration,
    /// Read transactions wait for at least this version (read-your-writes).
    pub min_version: u64,
    /// How long a read transaction waits for `min_version` before SQLITE_BUSY.
    pub min_version_timeout: Duration,
    /// Time travel: read this version (or time) instead of the newest; read-only.
    pub as_of: Option<AsOf>,
    /// Page cache per database, in bytes.
    pub cache_size: u64,
    /// Databases up to this size are read whole when first opened (0: never).
    pub preload: u64,
    /// What a read transaction may see: see [`Consistency`].
    pub consistency: Consistency,
}

/// How current a read transaction must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Every commit acknowledged before the transaction began is visible (with a read
    /// lease, at no round trip; without one, by asking the server).
    #[default]
    Strong,
    /// The newest version this process heard of on its Watch stream: at no round trip,
    /// possibly a commit behind; commits never wait for this reader.
    Snapshot,
}

/// A point in a database's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    Version(u64),
    /// Unix milliseconds.
    Time(i64),
}

/// Settings read from `PAGEWIRE_<KEY>` environment variables.
const ENV_KEYS: [&str; 10] = [
    "consistency",
    "url",
    "token",
    "connect_timeout",
    "retry_timeout",
    "lease_idle",
    "min_version_timeout",
    "cache_size",
    "preload",
    "log",
];
/// Settings a URI parameter may set for one database.
const URI_KEYS: [&str; 12] = [
    "consistency",
    "cache_size",
    "preload",
    "url",
    "token",
    "connect_timeout",
    "retry_timeout",
    "lease_idle",
    "min_version_timeout",
    "min_version",
    "as_of_version",
    "as_of_time",
];

impl Default for Config {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7878".into(),
            token: None,
            connect_timeout: Duration::from_secs(3),
            retry_timeout: Duration::from_secs(30),
            log: "warn".into(),
            lease_idle: Duration::from_secs(5),
            min_version: 0,
            min_version_timeout: Duration::from_secs(5),
            as_of: None,
            cache_size: 64 << 20,
            preload: 1 << 20,
            consistency: Consistency::Strong,
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
        for key in ENV_KEYS {
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
            if URI_KEYS.contains(&k) {
                c.set(k, v, Source::Uri)?;
            }
        }
        if c.as_of.is_some() && c.min_version > 0 {
            return Err(VfsError::Config("as_of_* and min_version= cannot be combined".into()));
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
            "cache_size" => self.cache_size = parse_size(value).map_err(bad)?,
            "preload" => self.preload = parse_size(value).map_err(bad)?,
            "lease_idle" => self.lease_idle = parse_duration(value).map_err(bad)?,
            "min_version_timeout" => self.min_version_timeout = parse_duration(value).map_err(bad)?,
            "min_version" => self.min_version = parse_version(value).map_err(bad)?,
            "as_of_version" | "as_of_time" if self.as_of.is_some() => {
                return Err(bad("give only one of as_of_version= and as_of_time=".into()));
            }
            "consistency" => self.consistency = parse_consistency(value).map_err(bad)?,
            "as_of_version" => self.as_of = Some(AsOf::Version(parse_version(value).map_err(bad)?)),
            "as_of_time" => self.as_of = Some(AsOf::Time(parse_time(value).map_err(bad)?)),
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

/// Bytes: `65536`, `64KiB`, `64MiB`, `1GiB` (also KB/MB/GB, same powers of 1024).
fn parse_size(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| "expected a size like 65536 or 64MiB".to_string())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| "size too large".into())
}

fn parse_version(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(0) | Err(_) => Err("expected a version number >= 1".into()),
        Ok(n) => Ok(n),
    }
}

/// RFC 3339 (`2026-11-21T10:00:00Z`, `2026-11-21T11:00:00.5+01:00`) to Unix ms.
fn parse_time(v: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time like 2026-11-21T10:00:00Z: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| "time out of range".into())
}

fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "strong" => Ok(Consistency::Strong),
        "snapshot" => Ok(Consistency::Snapshot),
        _ => Err("expected strong or snapshot".into()),
    }
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
            ("PAGEWIRE_CONSISTENCY", "eventual"),
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
        assert_eq!(c.consistency, Consistency::Strong);
        let c = base.with_uri_params([("consistency", "snapshot")]).expect("valid");
        assert_eq!(c.consistency, Consistency::Snapshot);
        let err = base.with_uri_params([("token", "a b")]).expect_err("space").to_string();
        assert!(err.contains("token="), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2 kb"), Ok(2048));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        let err = env(&[("PAGEWIRE_CACHE_SIZE", "big")]).expect_err("bad").to_string();
        assert!(err.contains("PAGEWIRE_CACHE_SIZE"), "{err}");
    }

    #[test]
    fn time_travel_and_min_version() {
        let base = Config::default();
        let c = base.with_uri_params([("as_of_version", "7")]).expect("valid");
        assert_eq!(c.as_of, Some(AsOf::Version(7)));
        let c = base.with_uri_params([("as_of_time", "2026-11-21T10:00:00+01:00")]).expect("valid");
        assert_eq!(c.as_of, Some(AsOf::Time(1_795_251_600_000)));
        let c = base.with_uri_params([("min_version", "12")]).expect("valid");
        assert_eq!(c.min_version, 12);
        for (k, v) in [("as_of_version", "0"), ("as_of_version", "x"), ("as_of_time", "yesterday"), ("min_version", "-1")] {
            let err = base.with_uri_params([(k, v)]).expect_err(k).to_string();
            assert!(err.contains(k), "{err}");
        }
        assert!(base.with_uri_params([("as_of_version", "1"), ("as_of_time", "2026-01-01T00:00:00Z")]).is_err());
        assert!(base.with_uri_params([("as_of_version", "1"), ("min_version", "2")]).is_err());
    }
}

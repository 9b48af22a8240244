//! Client settings: environment variables parsed once at registration, then
//! per-database overrides from URI parameters (`file:x.db?url=...&token=...`).
//! A bad value is an error naming the variable or parameter, never a silent default.
//!
//! The token from the environment belongs to the environment's server: a URI whose
//! `url=` names another server gets no token unless it gives its own `token=`
//! ([`Config::with_uri_params`]). No token is ever printed: errors leave the value out,
//! `Debug` shows `***`, and [`redact`] scrubs `token=` values and URL passwords from any
//! text the VFS logs.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::VfsError;

/// Where a setting came from, for error messages.
#[derive(Clone, Copy)]
enum Source {
    Env,
    Uri,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Server address, `http://host:port` or `https://host:port`.
    pub url: String,
    /// TLS: a CA certificate file (PEM) trusted besides the system's roots.
    pub ca: Option<PathBuf>,
    /// Mutual TLS: this client's certificate and key files (PEM).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Bearer token sent with every call (selects the tenant).
    pub token: Option<String>,
    /// How long to wait for a TCP connection to the server.
    pub connect_timeout: Duration,
    /// How long to keep retrying a call whose outcome is unknown (lost reply,
    /// server restarting) before giving up with an I/O error: a retry starts only
    /// within this time from the call's start.
    pub retry_timeout: Duration,
    /// Deadline of one attempt of a call (see `client.rs`): a unary call must be
    /// answered within it (ReadPages plus time for its answer's bytes), a Commit stream
    /// must take a message at least this often and be answered within it (plus time
    /// for its bytes) once sent whole. A call whose second attempt also times out
    /// fails, whatever is left of `retry_timeout`.
    pub call_timeout: Duration,
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
const ENV_KEYS: [&str; 14] = [
    "consistency",
    "url",
    "ca",
    "client_cert",
    "client_key",
    "token",
    "connect_timeout",
    "retry_timeout",
    "call_timeout",
    "lease_idle",
    "min_version_timeout",
    "cache_size",
    "preload",
    "log",
];
/// Settings a URI parameter may set for one database.
const URI_KEYS: [&str; 16] = [
    "consistency",
    "cache_size",
    "preload",
    "url",
    "ca",
    "client_cert",
    "client_key",
    "token",
    "connect_timeout",
    "retry_timeout",
    "call_timeout",
    "lease_idle",
    "min_version_timeout",
    "min_version",
    "as_of_version",
    "as_of_time",
];

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field named (no `..`), so a new one cannot be forgotten here.
        let Config {
            url,
            ca,
            client_cert,
            client_key,
            token,
            connect_timeout,
            retry_timeout,
            call_timeout,
            log,
            lease_idle,
            min_version,
            min_version_timeout,
            as_of,
            cache_size,
            preload,
            consistency,
        } = self;
        f.debug_struct("Config")
            .field("url", url)
            .field("ca", ca)
            .field("client_cert", client_cert)
            .field("client_key", client_key)
            .field("token", &token.as_ref().map(|_| "***"))
            .field("connect_timeout", connect_timeout)
            .field("retry_timeout", retry_timeout)
            .field("call_timeout", call_timeout)
            .field("log", log)
            .field("lease_idle", lease_idle)
            .field("min_version", min_version)
            .field("min_version_timeout", min_version_timeout)
            .field("as_of", as_of)
            .field("cache_size", cache_size)
            .field("preload", preload)
            .field("consistency", consistency)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7878".into(),
            ca: None,
            client_cert: None,
            client_key: None,
            token: None,
            connect_timeout: Duration::from_secs(3),
            retry_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
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
        // TLS settings are checked against the URL each database is opened with
        // (`with_uri_params`): `PAGEWIRE_CA` with URIs that give an `https://` url=
        // is fine.
        Ok(c)
    }

    /// Applies URI parameters (pairs as SQLite stores them after the file name) to the
    /// settings from the environment (`self`). Parameters this VFS does not own (`vfs`,
    /// `mode`, `cache`, ...) are left to SQLite.
    ///
    /// The environment's token (`PAGEWIRE_TOKEN`) goes only to the environment's server
    /// (`PAGEWIRE_URL`): when `url=` names another server ([`same_server`]), the database
    /// is opened with the URI's own `token=`, or with none. So a filename (an `ATTACH`
    /// in a query, say) cannot send the process's token to a host it chose.
    pub fn with_uri_params<'a>(
        &self,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, VfsError> {
        let mut c = self.clone();
        let (mut own_token, mut own_cert) = (false, false);
        for (k, v) in params {
            if URI_KEYS.contains(&k) {
                c.set(k, v, Source::Uri)?;
                own_token |= k == "token";
                own_cert |= k == "client_cert" || k == "client_key";
            }
        }
        let elsewhere = !same_server(&c.url, &self.url);
        if !own_token && c.token.is_some() && elsewhere {
            tracing::debug!(
                url = %c.url,
                "not sending PAGEWIRE_TOKEN: it is for {}; give this server's own token= in the URI",
                self.url
            );
            c.token = None;
        }
        // The same for the environment's client certificate: it identifies this
        // process to the environment's server only.
        if !own_cert && c.client_cert.is_some() && elsewhere {
            c.client_cert = None;
            c.client_key = None;
        }
        c.check_tls()?;
        if c.as_of.is_some() && c.min_version > 0 {
            return Err(VfsError::Config(
                "as_of_* and min_version= cannot be combined".into(),
            ));
        }
        Ok(c)
    }

    /// TLS settings only with an `https://` URL (never a silent plaintext connection
    /// for someone who asked for a CA or a client certificate), and a client
    /// certificate only with its key.
    fn check_tls(&self) -> Result<(), VfsError> {
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(VfsError::Config(
                "a client certificate needs its key: give both PAGEWIRE_CLIENT_CERT and \
                 PAGEWIRE_CLIENT_KEY (or client_cert= and client_key=)"
                    .into(),
            ));
        }
        let tls_given = self.ca.is_some() || self.client_cert.is_some();
        if tls_given && !self.is_tls() {
            return Err(VfsError::Config(format!(
                "a CA or client certificate is given but the server URL {} is not https://",
                self.url
            )));
        }
        Ok(())
    }

    /// The TLS files of this configuration.
    pub fn tls_files(&self) -> crate::runtime::TlsFiles {
        crate::runtime::TlsFiles {
            ca: self.ca.clone(),
            client: self.client_cert.clone().zip(self.client_key.clone()),
        }
    }

    /// Whether the server is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    fn set(&mut self, key: &str, value: &str, src: Source) -> Result<(), VfsError> {
        let name = match src {
            Source::Env => format!("PAGEWIRE_{}", key.to_ascii_uppercase()),
            Source::Uri => format!("URI parameter {key}="),
        };
        // Never echo a token; other values may hold one too (a URL with a query).
        let shown = if key == "token" {
            String::new()
        } else {
            format!(" (got {:?})", redact(value))
        };
        let bad = |why: String| VfsError::Config(format!("{name}: {why}{shown}"));
        match key {
            "url" => self.url = parse_url(value).map_err(bad)?,
            "ca" => self.ca = Some(parse_path(value).map_err(bad)?),
            "client_cert" => self.client_cert = Some(parse_path(value).map_err(bad)?),
            "client_key" => self.client_key = Some(parse_path(value).map_err(bad)?),
            "token" if value.is_empty() => return Err(bad("must not be empty".into())),
            "token" if !value.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(bad("must be printable ASCII without spaces".into()));
            }
            "token" => self.token = Some(value.to_owned()),
            "connect_timeout" => self.connect_timeout = parse_duration(value).map_err(bad)?,
            "retry_timeout" => self.retry_timeout = parse_duration(value).map_err(bad)?,
            "call_timeout" => self.call_timeout = parse_duration(value).map_err(bad)?,
            "log" => self.log = parse_log(value).map_err(bad)?,
            "cache_size" => self.cache_size = parse_size(value).map_err(bad)?,
            "preload" => self.preload = parse_size(value).map_err(bad)?,
            "lease_idle" => self.lease_idle = parse_duration(value).map_err(bad)?,
            "min_version_timeout" => {
                self.min_version_timeout = parse_duration(value).map_err(bad)?
            }
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

/// A file's path (a CA or a client certificate or key).
fn parse_path(v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() {
        return Err("must name a file".into());
    }
    Ok(PathBuf::from(v))
}

fn parse_url(v: &str) -> Result<String, String> {
    let uri: tonic::transport::Uri = v.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("expected http://host:port or https://host:port".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host".into());
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("a user or password in the URL is not supported; give the token as token= or PAGEWIRE_TOKEN".into());
    }
    if uri.query().is_some() {
        return Err(
            "the server URL takes no query (?...); give the token as token= or PAGEWIRE_TOKEN"
                .into(),
        );
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// Whether two server URLs (as [`parse_url`] accepted them) name the same server:
/// same scheme, host (ASCII case-insensitive) and port (the scheme's default when
/// none is given). Textually different names of one host (`localhost`, `127.0.0.1`)
/// count as different servers: the token then stays home, the safe side.
pub fn same_server(a: &str, b: &str) -> bool {
    fn origin(url: &str) -> Option<(String, String, u16)> {
        let uri: tonic::transport::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = match (uri.port_u16(), scheme.as_str()) {
            (Some(p), _) => p,
            (None, "http") => 80,
            (None, "https") => 443,
            (None, _) => return None,
        };
        let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
        Some((scheme, host, port))
    }
    match (origin(a), origin(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

pub use pagewire_proto::redact;

/// Bytes: `65536`, `64KiB`, `64MiB`, `1GiB` (also KB/MB/GB, same powers of 1024).
/// A log filter: comma-separated levels (`warn`) or `target=level` directives
/// (`pagewire_vfs=debug`). Checked here because the filter syntax takes any bare word
/// as a target name, so a misspelt level would silently log nothing.
fn parse_log(v: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let ok = v.split(',').all(|part| match part.split_once('=') {
        Some((target, l)) => !target.trim().is_empty() && level(l),
        None => level(part),
    });
    if !ok {
        return Err(
            "expected a level (off, error, warn, info, debug, trace) or target=level, comma-separated"
                .into(),
        );
    }
    tracing_subscriber::EnvFilter::try_new(v).map_err(|e| e.to_string())?;
    Ok(v.to_owned())
}

fn parse_size(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size like 65536 or 64MiB".to_string())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| "size too large".into())
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
    let d = humantime::parse_duration(v)
        .map_err(|e| format!("not a duration like 5s or 500ms: {e}"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config, VfsError> {
        Config::from_lookup(|k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_without_env() {
        assert_eq!(env(&[]).ok(), Some(Config::default()));
    }

    #[test]
    fn env_values_parse() {
        let c = env(&[
            ("PAGEWIRE_URL", "http://db:9000/"),
            ("PAGEWIRE_TOKEN", "t0k"),
            ("PAGEWIRE_RETRY_TIMEOUT", "2s"),
        ])
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
            ("PAGEWIRE_TOKEN", ""),
            ("PAGEWIRE_CA", ""),
            ("PAGEWIRE_CONNECT_TIMEOUT", "soon"),
            ("PAGEWIRE_RETRY_TIMEOUT", "0s"),
            ("PAGEWIRE_CALL_TIMEOUT", "0s"),
            ("PAGEWIRE_CONSISTENCY", "eventual"),
        ] {
            let err = env(&[(var, val)]).expect_err(var).to_string();
            assert!(err.contains(var), "{err} should name {var}");
        }
    }

    #[test]
    fn call_timeout_from_env_and_uri() {
        assert_eq!(Config::default().call_timeout, Duration::from_secs(5));
        let c = env(&[("PAGEWIRE_CALL_TIMEOUT", "2s")]).expect("valid");
        assert_eq!(c.call_timeout, Duration::from_secs(2));
        assert_eq!(
            c.retry_timeout,
            Duration::from_secs(30),
            "the retry budget is its own setting"
        );
        let c = env(&[("PAGEWIRE_CALL_TIMEOUT", "1500ms")]).expect("valid");
        assert_eq!(c.call_timeout, Duration::from_millis(1500));
        let c = env(&[("PAGEWIRE_CALL_TIMEOUT", "1m 30s")]).expect("valid");
        assert_eq!(c.call_timeout, Duration::from_secs(90));
        // The URI parameter overrides the environment, for that database only.
        let base = env(&[("PAGEWIRE_CALL_TIMEOUT", "2s")]).expect("valid");
        let c = base
            .with_uri_params([("call_timeout", "250ms")])
            .expect("valid");
        assert_eq!(c.call_timeout, Duration::from_millis(250));
        assert_eq!(
            base.with_uri_params([]).expect("valid").call_timeout,
            Duration::from_secs(2)
        );
        for bad in ["0s", "0", "0ms", "soon", "-1s", "", "5 parsecs"] {
            let err = env(&[("PAGEWIRE_CALL_TIMEOUT", bad)])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("PAGEWIRE_CALL_TIMEOUT"), "{bad:?}: {err}");
            let err = Config::default()
                .with_uri_params([("call_timeout", bad)])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("call_timeout="), "{bad:?}: {err}");
        }
        let err = env(&[("PAGEWIRE_CALL_TIMEOUT", "0s")])
            .expect_err("zero")
            .to_string();
        assert!(err.contains("greater than zero"), "{err}");
        let debug = format!("{:?}", Config::default());
        assert!(debug.contains("call_timeout: 5s"), "{debug}");
    }

    #[test]
    fn uri_overrides_env_and_ignores_sqlite_params() {
        let base = env(&[("PAGEWIRE_URL", "http://a:1")]).expect("valid");
        let c = base
            .with_uri_params([("url", "http://b:2"), ("mode", "ro"), ("vfs", "pagewire")])
            .expect("valid");
        assert_eq!(c.url, "http://b:2");
        assert_eq!(c.consistency, Consistency::Strong);
        let c = base
            .with_uri_params([("consistency", "snapshot")])
            .expect("valid");
        assert_eq!(c.consistency, Consistency::Snapshot);
        let err = base
            .with_uri_params([("token", "a b")])
            .expect_err("space")
            .to_string();
        assert!(err.contains("token="), "{err}");
    }

    #[test]
    fn tls_settings_need_https_and_stay_with_the_env_server() {
        let c = env(&[
            ("PAGEWIRE_URL", "https://db1:7878"),
            ("PAGEWIRE_CA", "/etc/ca.pem"),
            ("PAGEWIRE_CLIENT_CERT", "/etc/c.pem"),
            ("PAGEWIRE_CLIENT_KEY", "/etc/k.pem"),
        ])
        .expect("valid");
        assert!(c.is_tls() && c.ca.is_some() && c.client_cert.is_some());
        let elsewhere = c
            .with_uri_params([("url", "https://other:7878")])
            .expect("valid");
        assert!(elsewhere.client_cert.is_none() && elsewhere.client_key.is_none());
        assert!(elsewhere.ca.is_some(), "a CA is no secret");
        let plain = env(&[("PAGEWIRE_URL", "http://db1:7878"), ("PAGEWIRE_CA", "/ca")]);
        let plain = plain.expect("checked at open");
        let err = plain
            .with_uri_params([])
            .expect_err("ca over http")
            .to_string();
        assert!(err.contains("not https://"), "{err}");
        let half = env(&[
            ("PAGEWIRE_URL", "https://db1:7878"),
            ("PAGEWIRE_CLIENT_CERT", "/c"),
        ]);
        let half = half.expect("checked at open");
        let err = half
            .with_uri_params([])
            .expect_err("cert without key")
            .to_string();
        assert!(err.contains("needs its key"), "{err}");
        let err = c
            .with_uri_params([("url", "http://db1:7878")])
            .expect_err("downgrade with a CA")
            .to_string();
        assert!(err.contains("not https://"), "{err}");
    }

    #[test]
    fn the_env_token_stays_with_the_env_server() {
        let base = env(&[
            ("PAGEWIRE_URL", "http://db1:7878"),
            ("PAGEWIRE_TOKEN", "env-secret"),
        ])
        .expect("valid");
        let token = |params: &[(&str, &str)]| {
            base.with_uri_params(params.iter().copied())
                .expect("valid")
                .token
        };
        assert_eq!(token(&[]).as_deref(), Some("env-secret"));
        for same in [
            "http://db1:7878",
            "http://DB1:7878/",
            "HTTP://db1:7878",
            "http://db1.:7878",
        ] {
            assert_eq!(
                token(&[("url", same)]).as_deref(),
                Some("env-secret"),
                "{same}"
            );
        }
        for other in [
            "http://elsewhere:7878",
            "http://db1:7879",
            "http://db1",
            "http://10.0.0.1:7878",
            "http://db1.evil:7878",
        ] {
            assert_eq!(token(&[("url", other)]), None, "{other}");
            assert_eq!(
                token(&[("url", other), ("token", "own")]).as_deref(),
                Some("own"),
                "{other}"
            );
            assert_eq!(
                token(&[("token", "own"), ("url", other)]).as_deref(),
                Some("own"),
                "{other}"
            );
        }
        // The default server is the environment's server when PAGEWIRE_URL is unset.
        let default = env(&[("PAGEWIRE_TOKEN", "t")]).expect("valid");
        let keep = default
            .with_uri_params([("url", "http://127.0.0.1:7878")])
            .expect("valid");
        assert_eq!(keep.token.as_deref(), Some("t"));
        let drop = default
            .with_uri_params([("url", "http://localhost:7878")])
            .expect("valid");
        assert_eq!(drop.token, None, "another name is another server");
        assert!(same_server("http://[::1]:80", "http://[::1]"));
        assert!(!same_server("http://a:1", "not a url"));
    }

    #[test]
    fn tokens_never_appear_in_errors_or_debug() {
        let err = Config::default()
            .with_uri_params([("token", "s3cret value")])
            .expect_err("space")
            .to_string();
        assert!(err.contains("token=") && !err.contains("s3cret"), "{err}");
        let err = env(&[("PAGEWIRE_TOKEN", "s3cret\tx")])
            .expect_err("tab")
            .to_string();
        assert!(
            err.contains("PAGEWIRE_TOKEN") && !err.contains("s3cret"),
            "{err}"
        );
        for url in ["http://h:1/?token=s3cret", "http://u:s3cret@h:1"] {
            let err = Config::default()
                .with_uri_params([("url", url)])
                .expect_err(url)
                .to_string();
            assert!(err.contains("url=") && !err.contains("s3cret"), "{err}");
        }
        let c = Config::default()
            .with_uri_params([("token", "s3cret")])
            .expect("valid");
        let debug = format!("{c:?}");
        assert!(
            debug.contains("token: Some(\"***\")") && !debug.contains("s3cret"),
            "{debug}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2 kb"), Ok(2048));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        for bad in ["wran", "debug,", "=debug", "pagewire=loud"] {
            let err = env(&[("PAGEWIRE_LOG", bad)]).expect_err(bad).to_string();
            assert!(err.contains("PAGEWIRE_LOG"), "{err}");
        }
        for good in ["warn", "OFF", "info,pagewire_vfs=debug", "h2=trace"] {
            assert_eq!(env(&[("PAGEWIRE_LOG", good)]).expect(good).log, good);
        }
        let err = env(&[("PAGEWIRE_CACHE_SIZE", "big")])
            .expect_err("bad")
            .to_string();
        assert!(err.contains("PAGEWIRE_CACHE_SIZE"), "{err}");
    }

    #[test]
    fn time_travel_and_min_version() {
        let base = Config::default();
        let c = base
            .with_uri_params([("as_of_version", "7")])
            .expect("valid");
        assert_eq!(c.as_of, Some(AsOf::Version(7)));
        let c = base
            .with_uri_params([("as_of_time", "2026-11-21T10:00:00+01:00")])
            .expect("valid");
        assert_eq!(c.as_of, Some(AsOf::Time(1_795_251_600_000)));
        let c = base
            .with_uri_params([("min_version", "12")])
            .expect("valid");
        assert_eq!(c.min_version, 12);
        for (k, v) in [
            ("as_of_version", "0"),
            ("as_of_version", "x"),
            ("as_of_time", "yesterday"),
            ("min_version", "-1"),
        ] {
            let err = base.with_uri_params([(k, v)]).expect_err(k).to_string();
            assert!(err.contains(k), "{err}");
        }
        assert!(
            base.with_uri_params([
                ("as_of_version", "1"),
                ("as_of_time", "2026-01-01T00:00:00Z")
            ])
            .is_err()
        );
        assert!(
            base.with_uri_params([("as_of_version", "1"), ("min_version", "2")])
                .is_err()
        );
    }
}

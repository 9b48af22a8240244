//! Per-tenant quotas: each tenant's share of what the server holds and does. Set per
//! tenant in the tokens file's `[[tenant]]` sections, with server-wide defaults from
//! flags (`--tenant-max-*`); quotas that a server limit already bounds per tenant
//! (`--max-commit-bytes`, `--max-watchers-per-tenant`) are that limit, lowered for a
//! tenant by its section: one mechanism, not a second one.
//!
//! Over a quota: `RESOURCE_EXHAUSTED` naming the quota, the tenant's usage and the
//! quota; nothing changed (the VFS answers a commit refused so with `SQLITE_FULL`).
//! The commit rate is not refused at commit time (that would roll back work): a
//! commit over the rate is applied and its reply waits until the tenant is back
//! within it, and a write lease is refused (`ABORTED`, which SQLite's `busy_timeout`
//! retries) while the tenant is over. Rates are per server: with N servers a tenant
//! may commit up to N times its rate.
//!
//! Usage comes from the store (databases, stored bytes: durable, so right after a
//! restart), cached per tenant for [`USAGE_TTL`] and advanced by this server's
//! commits in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use tonic::Status;

use crate::store::{DbInfo, PageStore, StoreError, StoreResult};

/// How long a tenant's stored-bytes figure from the store is used before it is read
/// again (GC frees space in between).
pub const USAGE_TTL: Duration = Duration::from_secs(10);

/// A tenant's quotas; `None`: no quota (beyond the server's limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Databases the tenant may have.
    pub max_databases: Option<u64>,
    /// Page bytes the tenant's databases keep, history included.
    pub max_stored_bytes: Option<u64>,
    /// Logical size of one database (page size x page count).
    pub max_database_bytes: Option<u64>,
    /// Largest transaction (at most the server's `--max-commit-bytes`).
    pub max_commit_bytes: Option<u64>,
    /// Watch streams (at most the server's `--max-watchers-per-tenant`).
    pub max_watchers: Option<u64>,
    /// Commits per second over all the tenant's databases, on this server.
    pub max_commits_per_second: Option<u32>,
    /// Past versions (time travel: BeginRead at a version or a time) the tenant's
    /// readers may hold pinned at once, on this server.
    pub max_pinned_versions: Option<u64>,
    /// How long a pin may keep a version (at most the server's `--max-pin-age`).
    pub max_pin_age: Option<Duration>,
    /// How long history GC keeps the tenant's versions (at most the server's
    /// `--history-retention`).
    pub max_history_retention: Option<Duration>,
}

impl Quotas {
    /// These quotas, with `defaults` where these set none.
    pub fn or(self, defaults: Quotas) -> Quotas {
        Quotas {
            max_databases: self.max_databases.or(defaults.max_databases),
            max_stored_bytes: self.max_stored_bytes.or(defaults.max_stored_bytes),
            max_database_bytes: self.max_database_bytes.or(defaults.max_database_bytes),
            max_commit_bytes: self.max_commit_bytes.or(defaults.max_commit_bytes),
            max_watchers: self.max_watchers.or(defaults.max_watchers),
            max_commits_per_second: self
                .max_commits_per_second
                .or(defaults.max_commits_per_second),
            max_pinned_versions: self.max_pinned_versions.or(defaults.max_pinned_versions),
            max_pin_age: self.max_pin_age.or(defaults.max_pin_age),
            max_history_retention: self
                .max_history_retention
                .or(defaults.max_history_retention),
        }
    }

    /// The `Quotas` message (0: none).
    pub fn to_proto(self) -> pagewire_proto::v1::Quotas {
        pagewire_proto::v1::Quotas {
            max_databases: self.max_databases.unwrap_or(0),
            max_stored_bytes: self.max_stored_bytes.unwrap_or(0),
            max_database_bytes: self.max_database_bytes.unwrap_or(0),
            max_commit_bytes: self.max_commit_bytes.unwrap_or(0),
            max_watchers: self.max_watchers.unwrap_or(0),
            max_commits_per_second: self.max_commits_per_second.unwrap_or(0),
            max_pinned_versions: self.max_pinned_versions.unwrap_or(0),
            max_pin_age_ms: self.max_pin_age.map_or(0, millis),
            max_history_retention_ms: self.max_history_retention.map_or(0, millis),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A size in the tokens file: a number of bytes, or text like `"10GiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => t
            .parse::<bytesize::ByteSize>()
            .map(|b| Some(b.as_u64()))
            .map_err(|_| serde::de::Error::custom(format!("bad size {t:?} (e.g. 1048576, 64MiB)"))),
    }
}

/// One `[[tenant]]` section of the tokens file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub name: String,
    #[serde(default)]
    max_databases: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    max_stored_bytes: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    max_database_bytes: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    max_commit_bytes: Option<u64>,
    #[serde(default)]
    max_watchers: Option<u64>,
    #[serde(default)]
    max_commits_per_second: Option<u32>,
    #[serde(default)]
    max_pinned_versions: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    max_pin_age: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_history_retention: Option<Duration>,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(t) => humantime::parse_duration(&t)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("bad duration {t:?} (e.g. 30m, 1h)"))),
    }
}

impl TenantSection {
    /// Refuses values no tenant could work with.
    pub fn check(&self) -> Result<(), String> {
        if self.max_commits_per_second == Some(0) {
            return Err(
                "max_commits_per_second must be at least 1 (leave it out for no limit)".into(),
            );
        }
        Ok(())
    }

    pub fn quotas(&self) -> Quotas {
        Quotas {
            max_databases: self.max_databases,
            max_stored_bytes: self.max_stored_bytes,
            max_database_bytes: self.max_database_bytes,
            max_commit_bytes: self.max_commit_bytes,
            max_watchers: self.max_watchers,
            max_commits_per_second: self.max_commits_per_second,
            max_pinned_versions: self.max_pinned_versions,
            max_pin_age: self.max_pin_age,
            max_history_retention: self.max_history_retention,
        }
    }
}

/// What the refusal of `tenant` over `quota` says.
pub(crate) fn over(tenant: &str, quota: &str, usage: String, limit: String) -> String {
    format!("over tenant {tenant}'s quota {quota}: {usage}, quota {limit}; nothing was changed")
}

/// The status for `tenant` over `quota`.
pub fn exceeded(tenant: &str, quota: &str, usage: String, limit: String) -> Status {
    let m = crate::metrics::global();
    m.quota_refusals
        .get_or_create(&m.labels(tenant, &[("quota", quota)]))
        .inc();
    Status::resource_exhausted(over(tenant, quota, usage, limit))
}

/// What a byte count looks like in a message.
pub fn show_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// A token bucket: `rate` tokens a second, holding at most `rate` (one second's burst).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: u32, now: Instant) {
        let rate = f64::from(rate);
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(rate);
        self.at = now;
    }
}

/// One tenant's usage as this server knows it.
#[derive(Debug)]
struct TenantUsage {
    /// Stored bytes from the store, when read, plus this server's commits since.
    stored: Option<(u64, Instant)>,
    bucket: Bucket,
    /// Past versions pinned by time-travel reads through this server: (database,
    /// version) -> when the pin runs out.
    pins: HashMap<(String, u64), Instant>,
}

/// Every tenant's usage (an entry per tenant that committed or created, bounded by
/// the tenants of the tokens file), and the lock that keeps creates of one server in
/// line with the databases quota.
#[derive(Debug, Default)]
pub struct Usage {
    tenants: Mutex<HashMap<String, TenantUsage>>,
    creating: tokio::sync::Mutex<()>,
}

impl Usage {
    fn with<T>(&self, tenant: &str, f: impl FnOnce(&mut TenantUsage) -> T) -> T {
        let mut tenants = self.tenants.lock();
        let usage = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantUsage {
                stored: None,
                bucket: Bucket {
                    tokens: f64::MAX,
                    at: Instant::now(),
                },
                pins: HashMap::new(),
            });
        f(usage)
    }

    /// Refuses a new database when `tenant` has its quota's worth already. Under a
    /// databases quota the guard it returns is held until the create is done, so two
    /// creates on this server cannot both see room for one (without a quota creates
    /// are not serialized).
    pub async fn check_new_database(
        &self,
        store: &dyn PageStore,
        tenant: &str,
        quotas: &Quotas,
    ) -> StoreResult<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let Some(max) = quotas.max_databases else {
            return Ok(None);
        };
        let creating = self.creating.lock().await;
        let have = store.list(tenant).await?.len() as u64;
        if have >= max {
            return Err(StoreError::TooLarge(over(
                tenant,
                "max_databases",
                format!("{have} databases"),
                max.to_string(),
            )));
        }
        Ok(Some(creating))
    }

    /// The tenant's stored bytes (from the store at most [`USAGE_TTL`] ago): each page
    /// write once, in the database that wrote it (a branch's shared pages are its
    /// source's), plus what deleted sources still hold for their branches.
    pub async fn stored_bytes(&self, store: &dyn PageStore, tenant: &str) -> StoreResult<u64> {
        let cached = self.with(tenant, |u| u.stored);
        if let Some((bytes, at)) = cached
            && at.elapsed() < USAGE_TTL
        {
            return Ok(bytes);
        }
        let bytes = total(&store.list(tenant).await?, |d| d.stored_bytes)
            .saturating_add(store.detached_bytes(tenant).await?);
        self.with(tenant, |u| u.stored = Some((bytes, Instant::now())));
        Ok(bytes)
    }

    /// Refuses a commit of `bytes` page bytes that would take `tenant` past its
    /// stored-bytes quota.
    pub async fn check_stored(
        &self,
        store: &dyn PageStore,
        tenant: &str,
        quotas: &Quotas,
        bytes: u64,
    ) -> Result<(), Status> {
        let Some(max) = quotas.max_stored_bytes else {
            return Ok(());
        };
        let have = self.stored_bytes(store, tenant).await?;
        if have.saturating_add(bytes) > max {
            return Err(exceeded(
                tenant,
                "max_stored_bytes",
                format!(
                    "{} stored (history included) and this commit's {}",
                    show_bytes(have),
                    show_bytes(bytes)
                ),
                show_bytes(max),
            ));
        }
        Ok(())
    }

    /// Counts a time-travel read's pin of `version` of `db` for `ttl`; refuses it when
    /// it would be one more pinned version than the tenant's quota. (The store made
    /// the pin already; a refused one runs out after `ttl`, unused.)
    pub fn pin_past(
        &self,
        tenant: &str,
        db: &str,
        version: u64,
        quotas: &Quotas,
        ttl: Duration,
    ) -> Result<(), Status> {
        let Some(max) = quotas.max_pinned_versions else {
            return Ok(());
        };
        let now = Instant::now();
        self.with(tenant, |u| {
            u.pins.retain(|_, until| *until > now);
            let key = (db.to_owned(), version);
            if let Some(until) = u.pins.get_mut(&key) {
                *until = now + ttl;
                return Ok(());
            }
            let held = u.pins.len() as u64;
            if held >= max {
                return Err(exceeded(
                    tenant,
                    "max_pinned_versions",
                    format!("{held} past versions pinned by its readers"),
                    max.to_string(),
                ));
            }
            u.pins.insert(key, now + ttl);
            Ok(())
        })
    }

    /// Refuses a write lease while `tenant` is over its commit rate.
    pub fn check_rate(&self, tenant: &str, quotas: &Quotas) -> Result<(), Status> {
        let Some(rate) = quotas.max_commits_per_second else {
            return Ok(());
        };
        let tokens = self.with(tenant, |u| {
            u.bucket.refill(rate, Instant::now());
            u.bucket.tokens
        });
        if tokens < 1.0 {
            return Err(Status::aborted(format!(
                "over tenant {tenant}'s quota max_commits_per_second ({rate}/s): try again \
                 shortly (SQLite's busy_timeout does)"
            )));
        }
        Ok(())
    }

    /// Counts a commit of `bytes` by `tenant`; how long its reply should wait for the
    /// tenant to be back within its commit rate.
    pub fn committed(&self, tenant: &str, quotas: &Quotas, bytes: u64) -> Duration {
        // Every commit passes here: without a quota that counts commits, no lock.
        if quotas.max_stored_bytes.is_none() && quotas.max_commits_per_second.is_none() {
            return Duration::ZERO;
        }
        self.with(tenant, |u| {
            if let Some((stored, _)) = &mut u.stored {
                *stored = stored.saturating_add(bytes);
            }
            let Some(rate) = quotas.max_commits_per_second.filter(|&r| r > 0) else {
                return Duration::ZERO;
            };
            u.bucket.refill(rate, Instant::now());
            // Debt is bounded (one second's worth): waits stay short.
            u.bucket.tokens = (u.bucket.tokens - 1.0).max(-f64::from(rate));
            if u.bucket.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-u.bucket.tokens / f64::from(rate))
            }
        })
    }
}

/// The sum of `field` over `infos`.
pub fn total(infos: &[DbInfo], field: impl Fn(&DbInfo) -> u64) -> u64 {
    infos.iter().map(field).fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_paces_commits_to_the_rate() {
        let usage = Usage::default();
        let q = Quotas {
            max_commits_per_second: Some(10),
            ..Quotas::default()
        };
        assert!(usage.check_rate("t", &q).is_ok());
        // A burst of one second's worth passes without waiting, then replies wait.
        let waits: Vec<Duration> = (0..15).map(|_| usage.committed("t", &q, 0)).collect();
        assert!(waits[..9].iter().all(|w| w.is_zero()), "{waits:?}");
        assert!(waits[14] > Duration::from_millis(300), "{waits:?}");
        let code = usage.check_rate("t", &q).err().map(|s| s.code());
        assert_eq!(code, Some(tonic::Code::Aborted));
        assert!(usage.check_rate("other", &q).is_ok(), "per tenant");
    }
}

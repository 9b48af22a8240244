//! Every bound the server puts on what a client can make it do, in one place. Each is a
//! `pagewire-server` flag (the README's "Limits" table lists them) and each refusal
//! names its flag, so an operator knows which one to raise. Per-tenant quotas
//! extend these (a tenant's share of a server-wide bound), they do not add a second
//! mechanism.

use std::time::Duration;

use anyhow::ensure;

use crate::validate;

/// The server's limits. Over one: `RESOURCE_EXHAUSTED` (or `INVALID_ARGUMENT` for a
/// request that could never fit) naming the flag; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `--max-message-bytes`: largest gRPC message accepted or sent; bounds how many
    /// pages one ReadPages returns, and what tonic buffers per stream.
    pub max_message_bytes: usize,
    /// `--max-request-message-bytes`: largest message of any call but Commit (they are
    /// a few KiB; tonic reserves a message's declared size as its prefix arrives).
    pub max_request_message_bytes: u64,
    /// `--max-commit-bytes`: largest transaction, counted in bytes received on its stream
    /// (padding included), so a 1 GiB VACUUM fits with the default.
    pub max_commit_bytes: u64,
    /// `--max-inflight-commit-bytes`: commit bytes received and not yet applied, over
    /// all streams: the server's memory for commits.
    pub max_inflight_commit_bytes: u64,
    /// `--max-tenant-inflight-commit-bytes`: the same, per tenant, so one tenant cannot
    /// take the whole budget.
    pub max_tenant_inflight_commit_bytes: u64,
    /// `--max-pages-per-read`: most pages one ReadPages may ask for (further bounded by
    /// the message size).
    pub max_pages_per_read: u32,
    /// `--max-change-list`: most pages a change list names and most versions it spans
    /// (BeginRead, RoundEnd); past it the client drops its cache instead.
    pub max_change_list: usize,
    /// `--max-calls`: calls (streams included) in progress at once, server-wide, health
    /// and reflection included.
    pub max_calls: usize,
    /// `--max-connections`: open client connections; more are closed at once.
    pub max_connections: usize,
    /// `--max-concurrent-streams`: HTTP/2 streams per connection (clients queue beyond).
    pub max_concurrent_streams: u32,
    /// `--stream-idle-timeout`: longest a request message (and a call's first one, from
    /// its start) may take to arrive whole, and longest wait for a Commit stream's next
    /// message.
    pub stream_idle_timeout: Duration,
    /// `--keepalive-interval`: HTTP/2 pings (and TCP keepalive) on idle connections; a
    /// peer that does not answer within `keepalive_timeout` is disconnected.
    pub keepalive_interval: Duration,
    /// `--keepalive-timeout`.
    pub keepalive_timeout: Duration,
    /// `--max-watchers-per-db`: Watch streams (and ghosts) per database.
    pub max_watchers_per_db: usize,
    /// `--max-watchers-per-tenant`: Watch streams (and ghosts) per tenant.
    pub max_watchers_per_tenant: usize,
    /// `--max-pin-age`: the longest a reader's pin keeps a version, however often it
    /// reads: a version older than retention + this is collected.
    pub max_pin_age: Duration,
    /// Every tenant's quotas where its `[[tenant]]` section sets none
    /// (`--tenant-max-*`; none by default).
    pub tenant_quotas: crate::quota::Quotas,
}

const GIB: u64 = 1 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 << 20,
            max_request_message_bytes: 64 << 10,
            max_commit_bytes: 2 * GIB,
            max_inflight_commit_bytes: 4 * GIB,
            max_tenant_inflight_commit_bytes: 2 * GIB,
            max_pages_per_read: 1024,
            max_change_list: 65_536,
            max_calls: 16_384,
            max_connections: 16_384,
            max_concurrent_streams: 1024,
            stream_idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_watchers_per_db: 1024,
            max_watchers_per_tenant: 4096,
            max_pin_age: Duration::from_secs(3600),
            tenant_quotas: crate::quota::Quotas::default(),
        }
    }
}

impl Limits {
    /// Refuses limits the server cannot work with.
    pub fn check(&self) -> anyhow::Result<()> {
        let smallest = 4 * validate::MAX_PAGE_SIZE as usize;
        ensure!(
            self.max_message_bytes >= smallest,
            "--max-message-bytes must be at least {smallest} (a few of the largest pages)"
        );
        ensure!(
            self.max_pages_per_read >= 1,
            "--max-pages-per-read must be at least 1"
        );
        ensure!(
            self.max_commit_bytes >= u64::from(validate::MAX_PAGE_SIZE),
            "--max-commit-bytes is below one page"
        );
        ensure!(
            self.max_tenant_inflight_commit_bytes <= self.max_inflight_commit_bytes,
            "--max-tenant-inflight-commit-bytes is above --max-inflight-commit-bytes"
        );
        ensure!(
            self.max_commit_bytes <= self.max_tenant_inflight_commit_bytes,
            "--max-commit-bytes is above --max-tenant-inflight-commit-bytes: the largest \
             commit could never be received"
        );
        ensure!(
            self.max_request_message_bytes >= 4096,
            "--max-request-message-bytes must be at least 4KiB"
        );
        ensure!(
            self.max_change_list >= 1,
            "--max-change-list must be at least 1"
        );
        ensure!(self.max_calls >= 1, "--max-calls must be at least 1");
        ensure!(
            self.max_connections >= 1,
            "--max-connections must be at least 1"
        );
        ensure!(
            self.max_concurrent_streams >= 1,
            "--max-concurrent-streams must be at least 1"
        );
        ensure!(
            !self.stream_idle_timeout.is_zero(),
            "--stream-idle-timeout must be more than zero"
        );
        ensure!(
            !self.keepalive_interval.is_zero(),
            "--keepalive-interval must be more than zero"
        );
        ensure!(
            !self.keepalive_timeout.is_zero(),
            "--keepalive-timeout must be more than zero"
        );
        ensure!(
            self.max_watchers_per_db >= 1,
            "--max-watchers-per-db must be at least 1"
        );
        ensure!(
            self.max_watchers_per_tenant >= 1,
            "--max-watchers-per-tenant must be at least 1"
        );
        ensure!(
            !self.max_pin_age.is_zero(),
            "--max-pin-age must be more than zero"
        );
        Ok(())
    }
}

/// The status for a request over a limit: `RESOURCE_EXHAUSTED`, naming the flag.
pub fn exhausted(what: impl std::fmt::Display, flag: &str) -> tonic::Status {
    let labels = vec![("limit", flag.to_owned())];
    crate::metrics::global()
        .limit_refusals
        .get_or_create(&labels)
        .inc();
    tonic::Status::resource_exhausted(format!("{what} (server limit {flag}); nothing was changed"))
}

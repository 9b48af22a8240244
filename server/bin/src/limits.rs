//! The `--max-*` flags: every limit of [`Limits`], one flag each, with its default.

use std::time::Duration;

use clap::Args;
use pagewire_server_core::Limits;

/// Limits on what clients can make the server do. Each refusal names its flag.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitFlags {
    /// Largest gRPC message accepted or sent.
    #[arg(long, default_value = "16MiB", value_parser = bytes)]
    max_message_bytes: u64,
    /// Largest message of any call but Commit (those are a few KiB).
    #[arg(long, default_value = "64KiB", value_parser = bytes)]
    max_request_message_bytes: u64,
    /// Largest transaction, counted in bytes received on its Commit stream.
    #[arg(long, default_value = "2GiB", value_parser = bytes)]
    max_commit_bytes: u64,
    /// Commit bytes received and not yet applied, over all clients.
    #[arg(long, default_value = "4GiB", value_parser = bytes)]
    max_inflight_commit_bytes: u64,
    /// Commit bytes received and not yet applied, per tenant.
    #[arg(long, default_value = "2GiB", value_parser = bytes)]
    max_tenant_inflight_commit_bytes: u64,
    /// Most pages one ReadPages may ask for.
    #[arg(long, default_value_t = Limits::default().max_pages_per_read)]
    max_pages_per_read: u32,
    /// Most pages (and versions) one change list spans; past it clients drop their cache.
    #[arg(long, default_value_t = Limits::default().max_change_list)]
    max_change_list: usize,
    /// Calls in progress at once (streams included), health and reflection included.
    #[arg(long, default_value_t = Limits::default().max_calls)]
    max_calls: usize,
    /// Open client connections; more are closed at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// HTTP/2 streams per connection (clients queue beyond it).
    #[arg(long, default_value_t = Limits::default().max_concurrent_streams)]
    max_concurrent_streams: u32,
    /// Longest a request message may take to arrive whole (a call's first one counted
    /// from the call's start), and longest wait for a Commit stream's next message.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stream_idle_timeout: Duration,
    /// How often idle connections are pinged (HTTP/2 and TCP keepalive).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    keepalive_timeout: Duration,
    /// Watch streams per database (ghosts of broken ones included).
    #[arg(long, default_value_t = Limits::default().max_watchers_per_db)]
    max_watchers_per_db: usize,
    /// Watch streams per tenant (ghosts of broken ones included).
    #[arg(long, default_value_t = Limits::default().max_watchers_per_tenant)]
    max_watchers_per_tenant: usize,
    /// Longest a reader's pin keeps a version, however often it reads: a version older
    /// than --history-retention plus this is collected.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    max_pin_age: Duration,
    /// Every tenant's quota of databases, where its [[tenant]] section sets none.
    #[arg(long, help_heading = "Tenant quotas")]
    tenant_max_databases: Option<u64>,
    /// Every tenant's quota of stored page bytes (history included), e.g. 10GiB.
    #[arg(long, value_parser = bytes, help_heading = "Tenant quotas")]
    tenant_max_stored_bytes: Option<u64>,
    /// Every tenant's quota on one database's logical size (page size x page count).
    #[arg(long, value_parser = bytes, help_heading = "Tenant quotas")]
    tenant_max_database_bytes: Option<u64>,
    /// Every tenant's commits per second (per server), where its section sets none.
    #[arg(long, help_heading = "Tenant quotas", value_parser = clap::value_parser!(u32).range(1..))]
    tenant_max_commits_per_second: Option<u32>,
    /// Every tenant's past versions pinned at once by time-travel reads (per server).
    #[arg(long, help_heading = "Tenant quotas")]
    tenant_max_pinned_versions: Option<u64>,
    /// Every tenant's history window, where its section sets none (at most
    /// --history-retention), e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration, help_heading = "Tenant quotas")]
    tenant_max_history_retention: Option<Duration>,
}

/// A byte size such as `4096`, `256MiB` or `2GiB`.
/// A byte size flag: `1048576`, `256MiB`.
pub fn bytes(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a byte size like 256MiB: {e}"))
}

impl LimitFlags {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        Ok(Limits {
            max_message_bytes: usize::try_from(self.max_message_bytes)?,
            max_request_message_bytes: self.max_request_message_bytes,
            max_commit_bytes: self.max_commit_bytes,
            max_inflight_commit_bytes: self.max_inflight_commit_bytes,
            max_tenant_inflight_commit_bytes: self.max_tenant_inflight_commit_bytes,
            max_pages_per_read: self.max_pages_per_read,
            max_change_list: self.max_change_list,
            max_calls: self.max_calls,
            max_connections: self.max_connections,
            max_concurrent_streams: self.max_concurrent_streams,
            stream_idle_timeout: self.stream_idle_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_watchers_per_db: self.max_watchers_per_db,
            max_watchers_per_tenant: self.max_watchers_per_tenant,
            max_pin_age: self.max_pin_age,
            tenant_quotas: pagewire_server_core::quota::Quotas {
                max_databases: self.tenant_max_databases,
                max_stored_bytes: self.tenant_max_stored_bytes,
                max_database_bytes: self.tenant_max_database_bytes,
                max_commits_per_second: self.tenant_max_commits_per_second,
                max_pinned_versions: self.tenant_max_pinned_versions,
                max_history_retention: self.tenant_max_history_retention,
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitFlags,
    }

    #[test]
    fn defaults_are_the_library_defaults() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["x"])?;
        assert_eq!(cli.limits.limits()?, Limits::default());
        Ok(())
    }

    #[test]
    fn sizes_take_units_and_bad_ones_say_so() {
        let cli = Cli::try_parse_from(["x", "--max-commit-bytes", "256MiB"])
            .map(|c| c.limits.max_commit_bytes);
        assert_eq!(cli.ok(), Some(256 << 20));
        let bad = Cli::try_parse_from(["x", "--max-commit-bytes", "lots"])
            .err()
            .map(|e| e.to_string());
        assert!(bad.is_some_and(|e| e.contains("byte size")));
    }
}

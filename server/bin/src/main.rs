//! The `pagewire-server` binary: flags, logging, bind, serve until SIGINT or SIGTERM.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod limits;

use anyhow::{Context as _, bail};
use clap::Parser;
use pagewire_proto::redact;
use pagewire_server_core::store::{Fault, FaultyStore};
use pagewire_server_core::{Credentials, MemoryStore, PageStore, ServerConfig, serve};
use pagewire_store_kv::Engine as _;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Serves remote SQLite databases' pages over gRPC.
#[derive(Debug, Parser)]
#[command(name = "pagewire-server", version)]
struct Flags {
    /// Address to listen on (port 0: any free port; the line on stdout tells which).
    /// An address other than loopback (127.0.0.0/8, ::1) needs --tokens, or
    /// --insecure-no-auth.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Serve Prometheus metrics over HTTP at `/metrics`: a port (on loopback) or an
    /// address:port (e.g. 0.0.0.0:9464 for every interface: the metrics need no
    /// token). Off by default.
    #[arg(long, value_name = "PORT|ADDR:PORT")]
    metrics_listen: Option<String>,
    /// Label the per-tenant metrics (commit bytes and pages, pages read, quota
    /// refusals) with the tenant's name. Off by default: tenant names may be customer
    /// names, and each tenant adds series.
    #[arg(long)]
    metrics_tenant_labels: bool,
    /// Where pages are kept: `embedded` (the default: durable, in --data-dir, one
    /// server per directory), `memory` (lost when the server stops: for tests and
    /// throwaway use), `postgres://user[:password]@host[:port]/database` (durable;
    /// several servers may share one database), `fdb:` or `fdb:/path/to/fdb.cluster`
    /// (FoundationDB, the default or the given cluster file; builds with the
    /// `foundationdb` feature only), or `embedded-fdb-limits` (the embedded store held
    /// to FoundationDB's limits and trusting no cache, as on FoundationDB: for tests).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// The memory store only: page bytes it may hold (history included); a commit that
    /// would go past it is refused (clients get SQLITE_FULL) before the process could be
    /// killed for its memory (e.g. 4GiB). Default: no bound.
    #[arg(long, value_parser = limits::bytes)]
    max_memory: Option<u64>,
    /// The embedded store's data directory (created when missing; locked while this
    /// server runs).
    #[arg(long, default_value = "pagewire-data")]
    data_dir: PathBuf,
    /// How long a silent writer keeps its write lease (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// TOML file mapping bearer tokens to tenants; without it every call is tenant
    /// `default` with admin rights (development mode).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// File holding the operator's token (one line: the token or `sha256:<hex>` of it),
    /// for what spans tenants: the Operator service (reload, server-wide metrics). No
    /// tenant token can stand in for it. Read again on SIGHUP.
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// TLS: the server's certificate chain (PEM, leaf first). With --tls-key, the
    /// server speaks only TLS. Read again on SIGHUP (and Operator.Reload): new
    /// connections get the new certificate, open ones keep theirs.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients presenting a certificate this CA (PEM) signed;
    /// others fail at the handshake.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve a non-loopback --listen address without --tokens: anyone who can reach
    /// the port is an admin of every database. For a trusted network only.
    #[arg(long, conflicts_with = "tokens")]
    insecure_no_auth: bool,
    /// History retention: every version committed within this window stays readable
    /// (time travel, lagging replicas); older versions are collected unless a reader
    /// pins them (e.g. 1h, 7days; 0s keeps only the newest and pinned versions).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    history_retention: Duration,
    /// How often history GC runs (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    gc_interval: Duration,
    /// How long a reader's pin keeps a version from GC after the reader's last BeginRead
    /// or ReadPages at it (e.g. 5m).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pin_ttl: Duration,
    /// How long a reader's read lease lasts (renewed while it reads; e.g. 1s, 500ms).
    /// Readers holding one answer queries without a round trip and still see every
    /// acknowledged commit; each commit waits until they acknowledged it (a vanished
    /// reader stalls commits at most this long), and a freshly started server waits this
    /// long before its first commit (at most 60s). 0s grants none: required when several servers
    /// share one store, as they do not tell each other of commits. Default 1s; on
    /// FoundationDB (`fdb:`, `embedded-fdb-limits`) none are granted and a non-zero
    /// value is refused: several servers share that store by design.
    #[arg(long, value_parser = humantime::parse_duration)]
    read_lease_ttl: Option<Duration>,
    /// Testing only: inject a fault, e.g. `commit-reply-lost=N` (every Nth commit is
    /// applied but answered UNAVAILABLE, as if the reply were lost).
    #[arg(long, hide = true)]
    inject_fault: Option<Fault>,
    #[command(flatten)]
    limits: limits::LimitFlags,
    /// Log filter (tracing-subscriber EnvFilter syntax), to stderr. The embedded
    /// engine's own modules (fjall, lsm_tree) log only warnings by default: their info
    /// lines are each flush and recovery step.
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = "info,fjall=warn,lsm_tree=warn"
    )]
    log: String,
}

/// The stores this build supports, for messages.
fn supported() -> String {
    let postgres = if cfg!(feature = "postgres") {
        ", postgres://user@host/database"
    } else {
        " (no PostgreSQL store in this build: build with the `postgres` feature)"
    };
    let fdb = if cfg!(feature = "foundationdb") {
        ", fdb:[cluster file]"
    } else {
        " (no FoundationDB store in this build: build with the `foundationdb` feature)"
    };
    format!("embedded, memory, embedded-fdb-limits{postgres}{fdb}")
}

/// The read-lease TTL when none is given.
const DEFAULT_READ_LEASE_TTL: Duration = Duration::from_secs(1);

/// Whether the store `spec` names is FoundationDB (or the mode that stands in for
/// it): several servers share it, and a server grants no read leases there, as it
/// would not hear of commits made through the others.
fn is_fdb(spec: &str) -> bool {
    spec == "fdb" || spec.starts_with("fdb:") || spec == "embedded-fdb-limits"
}

/// The read-lease TTL for `spec`: none on FoundationDB (refusing a non-zero one).
fn read_lease_ttl(spec: &str, given: Option<Duration>) -> anyhow::Result<Duration> {
    match given {
        Some(ttl) if is_fdb(spec) && !ttl.is_zero() => bail!(
            "--read-lease-ttl {} with a FoundationDB store: several servers share it and \
             do not yet tell each other of commits, so no read leases are granted there \
             (readers ask the server at every transaction); leave the flag out or give 0s",
            humantime::format_duration(ttl)
        ),
        _ if is_fdb(spec) => Ok(Duration::ZERO),
        Some(ttl) => Ok(ttl),
        None => Ok(DEFAULT_READ_LEASE_TTL),
    }
}

/// Opens the store `spec` names (`data_dir` for the embedded one); a store that cannot
/// be reached is an error.
async fn open_store(
    spec: &str,
    data_dir: &Path,
    max_memory: Option<u64>,
) -> anyhow::Result<Arc<dyn PageStore>> {
    if spec == "memory" {
        return Ok(Arc::new(match max_memory {
            Some(max) => MemoryStore::with_max_memory(max),
            None => MemoryStore::new(),
        }));
    }
    if max_memory.is_some() {
        bail!("--max-memory bounds the memory store only (--store memory)");
    }
    if spec == "embedded" {
        let (store, engine) = pagewire_store_kv::open_data_dir(data_dir).await?;
        tracing::info!(engine = %engine.describe(), "embedded store open");
        return Ok(Arc::new(store));
    }
    if spec == "embedded-fdb-limits" {
        let fjall = Arc::new(pagewire_store_kv::FjallEngine::open(data_dir)?);
        let engine = Arc::new(pagewire_store_kv::LimitedEngine::fdb(fjall));
        tracing::info!(engine = %engine.describe(), "embedded store open in FDB-limits mode");
        let store = pagewire_store_kv::KvStore::open(engine)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", data_dir.display()))?;
        return Ok(Arc::new(store));
    }
    if spec == "fdb" || spec.starts_with("fdb:") {
        return open_fdb(spec.strip_prefix("fdb:").unwrap_or_default()).await;
    }
    #[cfg(feature = "postgres")]
    if pagewire_store_postgres::is_postgres_url(spec) {
        let store = pagewire_store_postgres::PostgresStore::connect(spec)
            .await
            .with_context(|| format!("cannot use the PostgreSQL store {}", redact(spec)))?;
        return Ok(Arc::new(store));
    }
    bail!(
        "unknown store {:?} (supported: {})",
        redact(spec),
        supported()
    )
}

/// FoundationDB with the cluster file `cluster` (empty: the default one).
#[cfg(feature = "foundationdb")]
async fn open_fdb(cluster: &str) -> anyhow::Result<Arc<dyn PageStore>> {
    let path = (!cluster.is_empty()).then(|| Path::new(cluster));
    let engine = Arc::new(pagewire_store_kv::fdb_engine::FdbEngine::open(
        path,
        b"pagewire/".to_vec(),
    )?);
    tracing::info!(engine = %engine.describe(), "FoundationDB store open");
    let store = pagewire_store_kv::KvStore::open(engine)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the FoundationDB store: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "foundationdb"))]
async fn open_fdb(_cluster: &str) -> anyhow::Result<Arc<dyn PageStore>> {
    bail!(
        "this pagewire-server was built without FoundationDB: build it with \
         `cargo build --release -p pagewire-server --features foundationdb` on a machine \
         with the FoundationDB client library (libfdb_c 7.3)"
    )
}

/// Loopback only: 127.0.0.0/8, ::1 (and ::ffff:127.x.y.z, the same over IPv6).
fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses to serve a non-loopback address without tokens (every caller would be an
/// admin of tenant `default`), unless `--insecure-no-auth` says so.
fn check_exposure(flags: &Flags) -> anyhow::Result<()> {
    if flags.tokens.is_some() || is_loopback(&flags.listen) {
        return Ok(());
    }
    if flags.insecure_no_auth {
        tracing::warn!(
            listen = %flags.listen,
            "--insecure-no-auth: serving without authentication; anyone who reaches this port \
             can read, change and delete every database"
        );
        return Ok(());
    }
    bail!(
        "refusing to listen on {} without --tokens: that address is not loopback \
         (127.0.0.0/8 or ::1), and without a tokens file every caller is an admin of every \
         database. Give --tokens FILE (a TOML file of [[token]] entries: token, tenant, \
         admin; see README, \"Running the server\"), listen on 127.0.0.1, or pass \
         --insecure-no-auth to serve it unauthenticated anyway",
        flags.listen
    )
}

fn config(flags: &Flags) -> anyhow::Result<ServerConfig> {
    check_exposure(flags)?;
    let credentials = Credentials::from_files(
        flags.tokens.as_deref(),
        flags.operator_token_file.as_deref(),
    )?;
    let config = ServerConfig {
        lease_ttl: flags.lease_ttl,
        heartbeat: flags.lease_ttl / 3,
        credentials,
        tls: tls(flags)?,
        history_retention: flags.history_retention,
        gc_interval: flags.gc_interval,
        pin_ttl: flags.pin_ttl,
        read_lease_ttl: read_lease_ttl(&flags.store, flags.read_lease_ttl)?,
        limits: flags.limits.limits()?,
    };
    config.check().context("bad settings")?;
    Ok(config)
}

/// The TLS configuration the flags give, loaded (a file that cannot be used stops the
/// server from starting).
fn tls(flags: &Flags) -> anyhow::Result<Option<Arc<pagewire_tls::server::Reloadable>>> {
    let (Some(cert), Some(key)) = (&flags.tls_cert, &flags.tls_key) else {
        return Ok(None);
    };
    let files = pagewire_tls::server::ServerFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: flags.tls_client_ca.clone(),
    };
    let tls = pagewire_tls::server::Reloadable::load(files).context("TLS")?;
    Ok(Some(Arc::new(tls)))
}

/// Reloads the credentials and TLS files at every SIGHUP, for as long as the server
/// runs. A reload that fails is logged and changes nothing; SIGHUP never stops the
/// server.
fn reload_on_sighup(config: &ServerConfig) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup()).context("watching SIGHUP")?;
        let config = config.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match config.reload() {
                    Ok(summary) => tracing::info!("SIGHUP: reloaded; {summary}"),
                    Err(problem) => tracing::error!("SIGHUP: {problem}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = config;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// The Prometheus endpoint's listener: `PORT` alone is on loopback (127.0.0.1), an
/// address is taken as given.
async fn metrics_listener(listen: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = match listen.parse::<u16>() {
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => listen.parse().with_context(|| {
            format!("--metrics-listen {listen:?}: give a port (loopback) or an address:port")
        })?,
    };
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let config = config(&flags)?;
    // Before anything slow: a SIGHUP from here on reloads instead of killing.
    reload_on_sighup(&config)?;
    let store = FaultyStore::wrap(
        open_store(&flags.store, &flags.data_dir, flags.max_memory).await?,
        flags.inject_fault,
    );
    let listener = TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("cannot listen on {}", flags.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if let Some(listen) = &flags.metrics_listen {
        let metrics = metrics_listener(listen).await?;
        let at = metrics
            .local_addr()
            .context("reading the metrics address")?;
        // A log line, not stdout: whoever reads the listening line may close stdout.
        tracing::info!("Prometheus metrics on http://{at}/metrics");
        pagewire_server_core::metrics::set_tenant_labels(flags.metrics_tenant_labels);
        tokio::spawn(pagewire_server_core::metrics::serve(metrics));
    }
    let mut stdout = std::io::stdout().lock();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    writeln!(stdout, "pagewire-server listening on {scheme}://{addr}")
        .context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    drop(stdout);
    let tenants = config.credentials.describe();
    let tls = match &config.tls {
        None => "plaintext (no TLS)",
        Some(tls) if tls.mutual() => "TLS, client certificates required",
        Some(_) => "TLS",
    };
    tracing::info!(
        %addr,
        store = %redact(&flags.store),
        data_dir = %flags.data_dir.display(),
        lease_ttl = ?config.lease_ttl,
        history_retention = ?config.history_retention,
        read_lease_ttl = ?config.read_lease_ttl,
        "serving; {tenants}; {tls}"
    );
    serve(listener, store, config, shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = match EnvFilter::try_new(&flags.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pagewire-server: bad --log filter {:?}: {e}", flags.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(flags).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagewire-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_loopback() {
        for ok in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(&ok.parse().expect(ok)), "{ok}");
        }
        for public in [
            "0.0.0.0:1",
            "10.0.0.1:1",
            "[::]:1",
            "[::ffff:10.0.0.1]:1",
            "[fe80::1]:1",
        ] {
            assert!(!is_loopback(&public.parse().expect(public)), "{public}");
        }
    }

    #[test]
    fn public_listen_needs_tokens_or_the_insecure_flag() {
        let parse = |args: &[&str]| Flags::try_parse_from([&["pagewire-server"], args].concat());
        let check =
            |args: &[&str]| check_exposure(&parse(args).expect("flags")).map_err(|e| e.to_string());
        let e = check(&["--listen", "0.0.0.0:7878"]).expect_err("refused");
        assert!(
            e.contains("--tokens")
                && e.contains("--insecure-no-auth")
                && e.contains("0.0.0.0:7878"),
            "{e}"
        );
        assert!(check(&["--listen", "0.0.0.0:7878", "--tokens", "t.toml"]).is_ok());
        assert!(check(&["--listen", "0.0.0.0:7878", "--insecure-no-auth"]).is_ok());
        assert!(check(&["--listen", "127.0.0.1:7878"]).is_ok());
        assert!(check(&[]).is_ok(), "the default is loopback");
        assert!(
            parse(&["--tokens", "t.toml", "--insecure-no-auth"]).is_err(),
            "contradictory"
        );
    }

    #[tokio::test]
    async fn unknown_stores_list_the_supported_ones() {
        let e = open_store("redis://x", Path::new("unused"), None)
            .await
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("unknown store") && e.contains("memory"), "{e}");
    }

    #[test]
    fn foundationdb_grants_no_read_leases() {
        let ttl = |spec: &str, given: Option<Duration>| read_lease_ttl(spec, given).ok();
        assert_eq!(ttl("embedded", None), Some(DEFAULT_READ_LEASE_TTL));
        assert_eq!(ttl("memory", Some(Duration::ZERO)), Some(Duration::ZERO));
        for fdb in [
            "fdb",
            "fdb:/etc/foundationdb/fdb.cluster",
            "embedded-fdb-limits",
        ] {
            assert_eq!(ttl(fdb, None), Some(Duration::ZERO), "{fdb}");
            assert_eq!(
                ttl(fdb, Some(Duration::ZERO)),
                Some(Duration::ZERO),
                "{fdb}"
            );
            let e = read_lease_ttl(fdb, Some(Duration::from_secs(1))).err();
            let e = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("no read leases"), "{fdb}: {e}");
        }
    }

    #[cfg(not(feature = "foundationdb"))]
    #[tokio::test]
    async fn fdb_without_the_feature_says_how_to_build_it() {
        let e = open_store("fdb:", Path::new("unused"), None).await.err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--features foundationdb"), "{e}");
    }
}

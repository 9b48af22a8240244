//! pagewire-store-postgres: the PostgreSQL [`PageStore`]. Durable (a commit returns once
//! PostgreSQL has it on disk), and shared: several pagewire servers may use one database,
//! because leases, epochs and pins live in it and its clock decides their expiry.
//!
//! `pagewire-server --store postgres://user@host/db` uses it. The crate's map:
//!
//! - `schema`: migrations (`migrations/*.sql`), applied at start-up under an advisory lock;
//! - `db`: database rows (find and lock, create, delete, info, list);
//! - `lease`: write leases (grant, fencing check, renew, release);
//! - `commit`: a commit as one PostgreSQL transaction, and its precheck (one statement);
//! - `read`: BeginRead (as-of resolution, change lists, pins) and ReadPages;
//! - `gc`: history GC;
//! - `history`: branches (fork) and restore points;
//! - `error`: PostgreSQL and pool errors as [`StoreError`]s; `sql`: small helpers.

mod commit;
mod db;
mod error;
mod gc;
mod history;
mod lease;
mod read;
mod schema;
mod sql;
mod tls;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pagewire_server_core::store::{
    BeginRead, Commit, CommitHeader, CommitOutcome, DbInfo, DbKey, DbState, GcStats, Lease,
    LeaseId, PageRead, PageStore, PinTtl, ReadAt, ReadView, RestorePoint, Retention, StoreError,
    StoreResult, Version,
};

use crate::error::{Pg as _, from_pool};
use crate::sql::Client;

/// Connections kept open to PostgreSQL.
const POOL_SIZE: usize = 16;
/// How long a call waits for a free connection, and for a new one to open.
const POOL_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL page store: a connection pool. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    pool: Pool,
}

/// Whether `spec` (a `--store` value) names this store.
pub fn is_postgres_url(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

impl PostgresStore {
    /// Connects to the PostgreSQL database at `url` (`postgres://user[:password]@host[:port]/db`,
    /// libpq-style parameters allowed), checks that it answers, and applies the schema's
    /// migrations. `InvalidArgument` for a bad URL, `Unavailable` when it cannot connect.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let (url, ssl) = tls::split(url)?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            StoreError::InvalidArgument(format!("bad PostgreSQL URL: {}", error::describe(&e)))
        })?;
        config.ssl_mode(ssl.tokio_mode());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            ssl.connector()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("building the connection pool: {e}")))?;
        let store = Self { pool };
        let mut client = store.client().await?;
        say_tls(&client, ssl.mode).await?;
        let applied = schema::migrate(&mut client).await?;
        tracing::info!(applied, "PostgreSQL store ready");
        Ok(store)
    }

    /// Whether connections are encrypted, from PostgreSQL itself.
    pub async fn tls_in_use(&self) -> StoreResult<bool> {
        tls_in_use(&self.client().await?).await
    }

    async fn client(&self) -> StoreResult<Client> {
        self.pool.get().await.map_err(from_pool)
    }
}

/// Whether `client`'s connection is encrypted (`pg_stat_ssl`).
async fn tls_in_use(client: &Client) -> StoreResult<bool> {
    let row = sql::query_one(
        client,
        "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
        &[],
    )
    .await?;
    Ok(row.get(0))
}

/// Logs whether the store's connections are encrypted; `sslmode=prefer` falling back to
/// plaintext is a warning, never silent.
async fn say_tls(client: &Client, mode: tls::Mode) -> StoreResult<()> {
    let encrypted = tls_in_use(client).await?;
    match (encrypted, mode) {
        (true, _) => tracing::info!(sslmode = ?mode, "PostgreSQL connections use TLS"),
        (false, tls::Mode::Disable) => {
            tracing::info!("PostgreSQL connections are plaintext (sslmode=disable)")
        }
        (false, _) => tracing::warn!(
            "PostgreSQL connections are plaintext: the server does not offer TLS and \
             sslmode=prefer (the default) falls back to plaintext; give sslmode=require \
             (or verify-full) to refuse that, sslmode=disable to silence this"
        ),
    }
    Ok(())
}

#[async_trait]
impl PageStore for PostgresStore {
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)> {
        let mut client = self.client().await?;
        if let Some(row) = db::find(&client, key, db::Lock::None).await? {
            return Ok((row.state, false));
        }
        if !create {
            return Err(StoreError::NotFound(key.name.clone()));
        }
        let tx = client.transaction().await.pg()?;
        let created = db::create(&tx, key).await?;
        let row = db::get(&tx, key, db::Lock::None).await?;
        tx.commit().await.pg()?;
        Ok((row.state, created))
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.pg()?;
        if !db::create(&tx, key).await? {
            return Err(StoreError::AlreadyExists(key.name.clone()));
        }
        let info = db::info(&tx, key).await?;
        tx.commit().await.pg()?;
        Ok(info)
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.pg()?;
        db::delete(&tx, key).await?;
        tx.commit().await.pg()
    }

    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>> {
        db::list(&self.client().await?, tenant).await
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        db::info(&self.client().await?, key).await
    }

    async fn acquire_lease_as(
        &self,
        key: &DbKey,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        lease::acquire(&mut self.client().await?, key, client_id, lease_id, ttl).await
    }

    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        lease::renew(&mut self.client().await?, key, lease_id, epoch, ttl).await
    }

    async fn release_lease(&self, key: &DbKey, lease_id: LeaseId, epoch: u64) -> StoreResult<()> {
        lease::release(&self.client().await?, key, lease_id, epoch).await
    }

    async fn begin_read(&self, key: &DbKey, read: BeginRead) -> StoreResult<ReadView> {
        read::begin_read(&mut self.client().await?, key, read).await
    }

    async fn read_pages(
        &self,
        key: &DbKey,
        version: Version,
        page_nos: &[u32],
        pin: PinTtl,
    ) -> StoreResult<PageRead> {
        let mut client = self.client().await?;
        read::read_pages(&mut client, key, version, page_nos, pin).await
    }

    async fn precheck(
        &self,
        key: &DbKey,
        header: CommitHeader,
    ) -> StoreResult<Option<CommitOutcome>> {
        commit::precheck(&self.client().await?, key, header).await
    }

    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome> {
        commit::commit(&mut self.client().await?, key, commit).await
    }

    async fn gc_with(&self, now_unix_ms: i64, retention: &Retention) -> StoreResult<GcStats> {
        gc::gc(&mut self.client().await?, now_unix_ms, retention).await
    }

    async fn gc(&self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        self.gc_with(now_unix_ms, &Retention::uniform(retention))
            .await
    }

    async fn fork(&self, source: &DbKey, at: ReadAt, new: &DbKey) -> StoreResult<DbInfo> {
        history::fork(&mut self.client().await?, source, at, new).await
    }

    async fn add_restore_point(
        &self,
        key: &DbKey,
        label: &str,
        at: ReadAt,
    ) -> StoreResult<RestorePoint> {
        history::add_point(&mut self.client().await?, key, label, at).await
    }

    async fn restore_points(&self, key: &DbKey) -> StoreResult<Vec<RestorePoint>> {
        history::points(&self.client().await?, key).await
    }

    async fn remove_restore_point(&self, key: &DbKey, label: &str) -> StoreResult<()> {
        history::remove_point(&self.client().await?, key, label).await
    }

    async fn detached_bytes(&self, tenant: &str) -> StoreResult<u64> {
        db::detached_bytes(&self.client().await?, tenant).await
    }
}

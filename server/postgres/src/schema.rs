//! The schema and its migrations, applied at start-up: in one transaction that first
//! takes a transaction-level advisory lock (so servers starting together apply them
//! once), creates schema `pagewire` and its `migrations` table when missing, and applies
//! each migration not recorded there. Re-running is harmless.

use deadpool_postgres::GenericClient;

use crate::error::{Pg as _, describe};
use crate::sql;
use pagewire_server_core::store::{StoreError, StoreResult};

/// Advisory lock key of the migrations ("pagewire" in ASCII).
const MIGRATION_LOCK: i64 = 0x7061_6765_7769_7265;

/// (number, description, SQL), in order. Never edit one that has shipped: add another.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial schema",
        include_str!("migrations/0001_initial.sql"),
    ),
    (
        2,
        "growth as a range in change lists, pin age limit",
        include_str!("migrations/0002_growth_ranges_pin_age.sql"),
    ),
    (
        3,
        "database incarnations and version tags",
        include_str!("migrations/0003_incarnations_and_tags.sql"),
    ),
    (
        4,
        "branches and restore points",
        include_str!("migrations/0004_branches_restore_points.sql"),
    ),
];

const BOOTSTRAP: &str = "
    CREATE SCHEMA IF NOT EXISTS pagewire;
    CREATE TABLE IF NOT EXISTS pagewire.migrations (
        version     integer PRIMARY KEY,
        description text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
    );";

/// Applies every migration not yet applied; returns how many it applied.
pub(crate) async fn migrate(client: &mut sql::Client) -> StoreResult<usize> {
    let tx = client.transaction().await.pg()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .pg()?;
    tx.batch_execute(BOOTSTRAP).await.pg()?;
    let rows = tx
        .query("SELECT version FROM pagewire.migrations", &[])
        .await
        .pg()?;
    let done = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<i32>, _>>();
    let done = done.pg()?;
    let mut applied = 0;
    for &(number, description, migration) in MIGRATIONS {
        if done.contains(&number) {
            continue;
        }
        tx.batch_execute(migration).await.map_err(|e| {
            StoreError::Internal(format!(
                "migration {number} ({description}) failed: {}",
                describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO pagewire.migrations (version, description) VALUES ($1, $2)",
            &[&number, &description],
        )
        .await
        .pg()?;
        tracing::info!(number, description, "applied schema migration");
        applied += 1;
    }
    tx.commit().await.pg()?;
    Ok(applied)
}

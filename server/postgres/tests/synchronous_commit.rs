//! A commit is durable whatever `synchronous_commit` the role, the database or the
//! connection configure: `off` is raised to `on` for the commit transaction, and every
//! other value (an operator's `remote_apply` above all) is kept.
//!
//! The setting is observed inside the store's own commit transaction: a trigger on
//! `pagewire.commit_ids` (written by every commit, in its transaction) records
//! `current_setting('synchronous_commit')` as the row is inserted.

use std::time::Duration;

use pagewire_server_core::store::conformance::commit;
use pagewire_server_core::store::{DbKey, PageStore, Version};
use pagewire_store_postgres::PostgresStore;
use pagewire_tests::postgres::TempPostgres;
use tokio_postgres::{Client, NoTls};

/// Where the configured value is set.
#[derive(Clone, Copy, Debug)]
enum Scope {
    /// `ALTER ROLE CURRENT_USER IN DATABASE ...` (only this test's database is touched).
    Role,
    /// `ALTER DATABASE ...`.
    Database,
    /// The connection's startup options in the store's URL (`options=-c ...`).
    Url,
}

/// (scope, configured value, the value the commit transaction must run with).
const CASES: [(Scope, &str, &str); 8] = [
    (Scope::Role, "off", "on"),
    (Scope::Database, "off", "on"),
    (Scope::Url, "off", "on"),
    (Scope::Database, "local", "local"),
    (Scope::Database, "remote_write", "remote_write"),
    (Scope::Database, "on", "on"),
    (Scope::Database, "remote_apply", "remote_apply"),
    (Scope::Role, "remote_apply", "remote_apply"),
];

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn setting(client: &Client) -> anyhow::Result<String> {
    let row = client
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_run_with_synchronous_commit_at_least_on() -> anyhow::Result<()> {
    let Some(pg) = TempPostgres::start_or_skip("commits_run_with_synchronous_commit_at_least_on")
    else {
        return Ok(());
    };
    // The schema first (migrations), then the trigger that watches commits.
    drop(PostgresStore::connect(pg.url()).await?);
    let admin = connect(pg.url()).await?;
    let db: String = admin
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    admin
        .batch_execute(
            "CREATE TABLE public.commit_settings (name text NOT NULL, setting text NOT NULL); \
             CREATE FUNCTION public.record_setting() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               INSERT INTO public.commit_settings \
               SELECT d.name, current_setting('synchronous_commit') \
               FROM pagewire.databases d WHERE d.id = NEW.db_id; \
               RETURN NEW; \
             END $$; \
             CREATE TRIGGER record_setting AFTER INSERT ON pagewire.commit_ids \
             FOR EACH ROW EXECUTE FUNCTION public.record_setting();",
        )
        .await?;

    for (i, (scope, configured, expected)) in CASES.into_iter().enumerate() {
        let case = format!("{scope:?} {configured}");
        admin
            .batch_execute(&format!(
                "ALTER ROLE CURRENT_USER IN DATABASE \"{db}\" RESET synchronous_commit; \
                 ALTER DATABASE \"{db}\" RESET synchronous_commit;"
            ))
            .await?;
        let mut url = pg.url().to_owned();
        match scope {
            Scope::Role => {
                admin
                    .batch_execute(&format!(
                        "ALTER ROLE CURRENT_USER IN DATABASE \"{db}\" \
                         SET synchronous_commit = {configured}"
                    ))
                    .await?
            }
            Scope::Database => {
                admin
                    .batch_execute(&format!(
                        "ALTER DATABASE \"{db}\" SET synchronous_commit = {configured}"
                    ))
                    .await?
            }
            Scope::Url => {
                let sep = if url.contains('?') { '&' } else { '?' };
                url.push_str(&format!(
                    "{sep}options=-c%20synchronous_commit%3D{configured}"
                ));
            }
        }
        // The configuration took: a new session of the store's URL starts with it.
        assert_eq!(setting(&connect(&url).await?).await?, configured, "{case}");

        // A new store, so its sessions start with the configuration.
        let store = PostgresStore::connect(&url).await?;
        let name = format!("case{i}.db");
        let k = DbKey::new("t", &name);
        store.open(&k, true).await?;
        let lease = store
            .acquire_lease(&k, "w", Duration::from_secs(60))
            .await?;
        store
            .commit(&k, commit(&lease, 0, 4096, 1, &[(1, 1)]))
            .await?;
        store
            .commit(&k, commit(&lease, 1, 4096, 2, &[(2, 2)]))
            .await?;
        let seen: Vec<String> = admin
            .query(
                "SELECT setting FROM public.commit_settings WHERE name = $1",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(seen, [expected, expected], "{case}");
        assert_eq!(store.info(&k).await?.state.version, Version(2), "{case}");
    }
    Ok(())
}

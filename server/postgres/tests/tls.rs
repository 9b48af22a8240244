//! TLS to PostgreSQL: a throwaway cluster started with `ssl = on` and a certificate made
//! for this run. `sslmode=verify-full` with the right CA connects encrypted (PostgreSQL's
//! `pg_stat_ssl` says so); with another CA, or a host name the certificate is not for,
//! it does not connect; `require` connects encrypted without checking; `disable` is
//! plaintext.

use pagewire_store_postgres::PostgresStore;
use pagewire_tests::certs::TestCerts;
use pagewire_tests::postgres::LocalCluster;

fn url(cluster: &LocalCluster, host: &str, params: &str) -> String {
    let admin = cluster.admin_url();
    format!("{}?{params}", admin.replacen("127.0.0.1", host, 1))
}

#[tokio::test]
async fn sslmodes_against_a_tls_cluster() -> anyhow::Result<()> {
    let certs = TestCerts::new()?;
    let cluster = match LocalCluster::start_with_tls(&certs.server_cert, &certs.server_key) {
        Ok(c) => c,
        Err(e) if !pagewire_tests::in_ci() => {
            eprintln!("SKIPPED: no PostgreSQL: {e:#}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let ca = certs.ca.display().to_string();
    let wrong = certs.wrong_ca.display().to_string();

    for (host, params) in [
        ("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
        ("127.0.0.1", "sslmode=require".to_owned()),
        ("127.0.0.1", "sslmode=prefer".to_owned()),
    ] {
        let store = PostgresStore::connect(&url(&cluster, host, &params)).await?;
        assert!(store.tls_in_use().await?, "{host} {params}: not encrypted");
    }
    let plain = PostgresStore::connect(&url(&cluster, "127.0.0.1", "sslmode=disable")).await?;
    assert!(!plain.tls_in_use().await?, "sslmode=disable is plaintext");

    for (host, params, want) in [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={wrong}"),
            "UnknownIssuer",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={wrong}"),
            "UnknownIssuer",
        ),
        (
            "127.0.0.1",
            "sslmode=verify-full&sslrootcert=/nonexistent.pem".to_owned(),
            "/nonexistent.pem",
        ),
    ] {
        let err = PostgresStore::connect(&url(&cluster, host, &params))
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains(want), "{params}: {err}");
    }
    Ok(())
}

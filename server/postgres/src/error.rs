//! PostgreSQL and pool errors as [`StoreError`]s, in one place: a lost or refused
//! connection, a server shutting down or out of resources, a serialization failure or a
//! deadlock is `Unavailable` (nothing was applied, or for a commit whose COMMIT got no
//! answer, the outcome is unknown: the caller retries with the same commit id); anything
//! else is `Internal`. Client mistakes never reach here: they are checked before any SQL.

use deadpool_postgres::PoolError;
use pagewire_server_core::store::{StoreError, StoreResult};

/// SQLSTATE classes and codes that mean "try again".
fn retryable(code: &str) -> bool {
    const CLASSES: [&str; 3] = ["08", "53", "57"]; // connection, resources, operator
    const CODES: [&str; 3] = ["40001", "40P01", "55P03"]; // serialization, deadlock, lock
    CLASSES.iter().any(|c| code.starts_with(c)) || CODES.contains(&code)
}

/// A PostgreSQL error in words: SQLSTATE and message, or the transport failure.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("PostgreSQL {}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The store error for a PostgreSQL error.
pub(crate) fn from_pg(e: &tokio_postgres::Error) -> StoreError {
    let text = describe(e);
    match e.code() {
        Some(code) if !retryable(code.code()) => StoreError::Internal(text),
        _ => StoreError::Unavailable(format!("PostgreSQL unavailable: {text}")),
    }
}

/// The store error for a failure to get a pooled connection.
pub(crate) fn from_pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => from_pg(&e),
        other => StoreError::Unavailable(format!("no PostgreSQL connection: {other}")),
    }
}

/// `.pg()?` on a PostgreSQL result.
pub(crate) trait Pg<T> {
    fn pg(self) -> StoreResult<T>;
}

impl<T> Pg<T> for Result<T, tokio_postgres::Error> {
    fn pg(self) -> StoreResult<T> {
        self.map_err(|e| from_pg(&e))
    }
}

/// A stored value outside what the store ever writes.
pub(crate) fn corrupt(what: &str, value: i64) -> StoreError {
    StoreError::Internal(format!("corrupt store: {what} is {value}"))
}

#[cfg(test)]
mod tests {
    use super::retryable;

    #[test]
    fn retryable_codes() {
        for code in [
            "08006", "08001", "57P01", "53300", "40001", "40P01", "55P03",
        ] {
            assert!(retryable(code), "{code}");
        }
        for code in ["23505", "42P01", "22003", "XX000"] {
            assert!(!retryable(code), "{code}");
        }
    }
}

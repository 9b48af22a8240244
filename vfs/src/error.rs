//! VFS errors, and the one place they become SQLite result codes.

use sqlite_plugin::vars;

use crate::status::Class;

#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// A bad setting (environment variable or URI parameter).
    #[error("configuration: {0}")]
    Config(String),
    /// Opening the database failed (server unreachable, refused, ...).
    #[error("cannot open {0}")]
    Open(String),
    /// A database name the server cannot store.
    #[error("bad database name: {0}")]
    BadName(String),
    /// The server answered with an error status.
    #[error("server said {:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The write lease is held by another client.
    #[error("database is locked by another writer: {0}")]
    Busy(String),
    /// The connection can no longer vouch for its state (a commit whose outcome
    /// stayed unknown); it answers I/O errors until reopened.
    #[error("connection poisoned: {0}")]
    Poisoned(String),
    /// The database this connection opened was deleted, created again or restored
    /// (see "Identity" in `pagewire.proto`): it answers I/O errors until reopened.
    #[error("{0}")]
    Replaced(String),
    /// TLS with the server failed (certificate not trusted, not for this host,
    /// client certificate missing or refused, not a TLS server, ...).
    #[error("TLS with the server failed: {0}")]
    Tls(String),
    /// Read-only connection asked to write.
    #[error("read-only database")]
    ReadOnly,
    #[error("internal: {0}")]
    Internal(String),
}

/// What the failing operation was, so I/O errors carry SQLite's extended code.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Open,
    Read,
    Write,
    Sync,
    Lock,
    Unlock,
    Size,
}

impl VfsError {
    /// The SQLite result code for this error during `op`.
    pub fn sqlite_code(&self, op: Op) -> i32 {
        match self {
            VfsError::Busy(_) => vars::SQLITE_BUSY,
            VfsError::ReadOnly => vars::SQLITE_READONLY,
            VfsError::Config(_) | VfsError::BadName(_) | VfsError::Open(_) => vars::SQLITE_CANTOPEN,
            VfsError::Status(s) => match (op, Class::of(s)) {
                (Op::Open, Class::Forbidden) => vars::SQLITE_PERM,
                (Op::Open, _) => vars::SQLITE_CANTOPEN,
                (_, Class::Busy) => vars::SQLITE_BUSY,
                (Op::Sync | Op::Write, Class::Full) => vars::SQLITE_FULL,
                _ => io_code(op),
            },
            _ => io_code(op),
        }
    }

    /// How the server (or the transport) failed the call, when it did (see
    /// [`Class`]); `None` for errors of this side.
    pub fn class(&self) -> Option<Class> {
        match self {
            VfsError::Status(s) => Some(Class::of(s)),
            _ => None,
        }
    }

    /// True when the server never saw the call or its reply was lost: the same
    /// call may be sent again (commits are idempotent by commit id).
    pub fn is_retryable(&self) -> bool {
        self.class().is_some_and(Class::is_retryable)
    }
}

fn io_code(op: Op) -> i32 {
    match op {
        Op::Open => vars::SQLITE_CANTOPEN,
        Op::Read => vars::SQLITE_IOERR_READ,
        Op::Write => vars::SQLITE_IOERR_WRITE,
        Op::Sync => vars::SQLITE_IOERR_FSYNC,
        Op::Lock => vars::SQLITE_IOERR_LOCK,
        Op::Unlock => vars::SQLITE_IOERR_UNLOCK,
        Op::Size => vars::SQLITE_IOERR_FSTAT,
    }
}

/// A rustls failure, said so a user knows what to change.
pub fn explain_tls(e: &pagewire_tls::rustls::Error) -> String {
    use pagewire_tls::rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    let hint = match e {
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the server's certificate is not signed by a CA this client trusts: give that CA's \
             certificate with PAGEWIRE_CA or ca="
        }
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the server's certificate is not for the host name in the URL"
        }
        Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the server's certificate has expired"
        }
        Error::AlertReceived(
            Alert::CertificateRequired | Alert::HandshakeFailure | Alert::BadCertificate,
        )
        | Error::AlertReceived(Alert::UnknownCA | Alert::CertificateUnknown) => {
            "the server wants a client certificate it trusts: give PAGEWIRE_CLIENT_CERT and \
             PAGEWIRE_CLIENT_KEY (or client_cert= and client_key=)"
        }
        Error::InvalidMessage(_) => "the server does not seem to speak TLS: try http://",
        _ => "",
    };
    if hint.is_empty() {
        e.to_string()
    } else {
        format!("{e} ({hint})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let held = VfsError::Status(tonic::Status::aborted("held"));
        assert_eq!(held.sqlite_code(Op::Lock), vars::SQLITE_BUSY);
        let down = VfsError::Status(tonic::Status::unavailable("down"));
        assert_eq!(down.sqlite_code(Op::Open), vars::SQLITE_CANTOPEN);
        assert_eq!(down.sqlite_code(Op::Sync), vars::SQLITE_IOERR_FSYNC);
        assert!(down.is_retryable());
        let full = VfsError::Status(tonic::Status::resource_exhausted("out of space"));
        assert_eq!(full.sqlite_code(Op::Sync), vars::SQLITE_FULL);
        assert!(!full.is_retryable());
        let lost = VfsError::Status(tonic::Status::failed_precondition("lease lost"));
        assert_eq!(lost.sqlite_code(Op::Sync), vars::SQLITE_IOERR_FSYNC);
        assert!(!lost.is_retryable());
        assert_eq!(
            VfsError::BadName("x".into()).sqlite_code(Op::Open),
            vars::SQLITE_CANTOPEN
        );
        let denied = VfsError::Status(tonic::Status::permission_denied("token"));
        assert_eq!(denied.sqlite_code(Op::Open), vars::SQLITE_PERM);
        assert_eq!(denied.sqlite_code(Op::Read), vars::SQLITE_IOERR_READ);
        let missing = VfsError::Status(tonic::Status::not_found("no such database"));
        assert_eq!(missing.sqlite_code(Op::Open), vars::SQLITE_CANTOPEN);
        assert_eq!(held.sqlite_code(Op::Open), vars::SQLITE_CANTOPEN);
        assert_eq!(
            VfsError::Busy("held".into()).sqlite_code(Op::Open),
            vars::SQLITE_BUSY
        );
        assert!(!VfsError::Internal("x".into()).is_retryable());
    }
}

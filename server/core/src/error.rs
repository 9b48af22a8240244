//! The one mapping from [`StoreError`] to a gRPC status. The codes are the protocol's
//! contract (see the comment at the top of `pagewire.proto`). Client errors are logged
//! at debug, an unavailable store at warn, other server errors at error.

use tonic::{Code, Status};

use crate::store::StoreError;

/// The gRPC code a client acts on for each store error.
pub fn code(e: &StoreError) -> Code {
    match e {
        StoreError::InvalidArgument(_) => Code::InvalidArgument,
        StoreError::NotFound(_) | StoreError::Replaced(_) | StoreError::NoSuchPoint { .. } => {
            Code::NotFound
        }
        StoreError::AlreadyExists(_) | StoreError::PointExists { .. } => Code::AlreadyExists,
        StoreError::LeaseHeld { .. } => Code::Aborted,
        StoreError::LeaseLost(_) | StoreError::VersionConflict { .. } => Code::FailedPrecondition,
        StoreError::OutOfRange(_) => Code::OutOfRange,
        StoreError::TooLarge(_) | StoreError::Full(_) => Code::ResourceExhausted,
        StoreError::Unsupported(_) => Code::Unimplemented,
        StoreError::Internal(_) => Code::Internal,
        StoreError::Unavailable(_) => Code::Unavailable,
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let code = code(&e);
        let kind = vec![("kind", e.kind().to_owned())];
        crate::metrics::global()
            .store_errors
            .get_or_create(&kind)
            .inc();
        if e.is_client_error() {
            tracing::debug!(?code, "{e}");
        } else if code == Code::Unavailable {
            tracing::warn!(?code, "{e}");
        } else {
            tracing::error!(?code, "{e}");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn lease_held_names_holder_and_remaining_ms() {
        let e = StoreError::LeaseHeld {
            holder: "host:42".into(),
            remaining: Duration::from_millis(1500),
        };
        let s = Status::from(e);
        assert_eq!(s.code(), Code::Aborted);
        assert!(
            s.message().contains("host:42") && s.message().contains("1500 ms"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn every_variant_has_its_code() {
        let cases = [
            (
                StoreError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (StoreError::NotFound("x".into()), Code::NotFound),
            (StoreError::AlreadyExists("x".into()), Code::AlreadyExists),
            (StoreError::LeaseLost("x".into()), Code::FailedPrecondition),
            (
                StoreError::VersionConflict {
                    base: crate::store::Version(1),
                    current: crate::store::Version(2),
                },
                Code::FailedPrecondition,
            ),
            (StoreError::OutOfRange("x".into()), Code::OutOfRange),
            (StoreError::TooLarge("x".into()), Code::ResourceExhausted),
            (StoreError::Full("x".into()), Code::ResourceExhausted),
            (StoreError::Unsupported("x".into()), Code::Unimplemented),
            (StoreError::Internal("x".into()), Code::Internal),
            (StoreError::Unavailable("x".into()), Code::Unavailable),
        ];
        for (e, want) in cases {
            assert_eq!(Status::from(e).code(), want);
        }
    }
}

//! What a gRPC status means to the VFS: the one place a `tonic::Status` is read.
//!
//! The server chooses its codes so the client can act on the code alone (the table at
//! the top of `pagewire.proto`); the VFS never reads a message's text to decide.
//!
//! One thing the code alone does not tell: `INTERNAL` is both what the server answers
//! when it fails and what tonic makes of an HTTP/2 failure on this side (a reset
//! stream, a broken connection). The difference is where the status came from. A
//! status decoded from the server's `grpc-status` trailers (`Status::from_header_map`)
//! has no source error; one tonic built from a transport error (`Status::from_error`:
//! a hyper, h2 or connect error, our own deadline) keeps that error as its
//! [`std::error::Error::source`]. So `INTERNAL` with a source is transport trouble.
//!
//! The deadline the VFS sends as `grpc-timeout` is enforced on both sides. When
//! tonic's channel fires first, the status is `CANCELLED` with a
//! [`tonic::TimeoutExpired`] in its source chain; when the server's does, its answer is
//! `CANCELLED` with no source (tonic's server enforcement, the only `CANCELLED` a
//! pagewire server sends: a broken commit stream is `UNAVAILABLE`). Either is
//! [`Class::TimedOut`]. A `CANCELLED` whose source is something else (hyper's
//! "connection closed" on this side) is transport trouble.

use std::error::Error;

use tonic::{Code, Status};

/// What a failed call means for what the VFS does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Our own deadline for the attempt passed: retryable, over a new connection, and
    /// counted (a call ends at its second).
    TimedOut,
    /// Connection or transport trouble (`UNAVAILABLE`, `UNKNOWN`, `CANCELLED`,
    /// `DEADLINE_EXCEEDED`, a `CANCELLED` or an `INTERNAL` of the transport): the server may never have
    /// seen the call, or its answer was lost. The same call may be sent again (commits
    /// are idempotent by commit id).
    Transport,
    /// `ABORTED`: the write lease is held by another client (`SQLITE_BUSY`).
    Busy,
    /// `NOT_FOUND`: on a call that names an incarnation, the database was replaced;
    /// at Open, it does not exist.
    NotFound,
    /// `FAILED_PRECONDITION`: the lease was lost or the base version is not current;
    /// this commit can never apply.
    Fenced,
    /// `PERMISSION_DENIED`: the token may not do this (`SQLITE_PERM` at Open).
    Forbidden,
    /// `RESOURCE_EXHAUSTED`: over one of the server's limits, or the store is out of
    /// space: definite, nothing changed (`SQLITE_FULL` at a commit, as SQLite answers
    /// for a full disk or `max_page_count`).
    Full,
    /// Any other answer (`INVALID_ARGUMENT`, `UNAUTHENTICATED`, `OUT_OF_RANGE`,
    /// an `INTERNAL` the server sent, a reply this client could
    /// not decode, ...): definite, nothing changed, asking again gets the same.
    Refused,
}

/// What a commit's last failed attempt says of its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It did not apply and never will.
    Definite,
    /// No answer after its trailer went out: it may have applied.
    Unknown,
}

impl Class {
    /// Sorts a status by its code (and, for `INTERNAL` and `CANCELLED`, by whether
    /// the transport made it; see the module comment).
    pub fn of(status: &Status) -> Class {
        match status.code() {
            Code::Cancelled if our_deadline_passed(status) => Class::TimedOut,
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                Class::Transport
            }
            Code::Internal if status.source().is_some() => Class::Transport,
            Code::Aborted => Class::Busy,
            Code::NotFound => Class::NotFound,
            Code::FailedPrecondition => Class::Fenced,
            Code::PermissionDenied => Class::Forbidden,
            Code::ResourceExhausted => Class::Full,
            _ => Class::Refused,
        }
    }

    /// The server never saw the call or its answer was lost: send it again.
    pub fn is_retryable(self) -> bool {
        matches!(self, Class::TimedOut | Class::Transport)
    }

    /// A commit whose last attempt failed this way: unknown only when it may have
    /// reached the server whole (the server applies only whole streams) and no
    /// definite answer came.
    pub fn commit_outcome(self, sent_whole: bool) -> Outcome {
        if self.is_retryable() && sent_whole {
            Outcome::Unknown
        } else {
            Outcome::Definite
        }
    }
}

/// The `grpc-timeout` we sent ran out: the server said so (a `CANCELLED` decoded from
/// its answer has no source), or tonic's channel enforced it (a
/// [`tonic::TimeoutExpired`] in the source chain).
fn our_deadline_passed(status: &Status) -> bool {
    let Some(first) = status.source() else {
        return true;
    };
    let mut source = Some(first);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::{io, sync::Arc};

    use super::*;

    /// A status as tonic builds it from an error on this side of the wire.
    fn from_transport(e: impl Error + Send + Sync + 'static) -> Status {
        Status::from_error(Box::new(e))
    }

    /// An error wrapping another, as tower's buffer wraps its service's errors.
    #[derive(Debug)]
    struct Wrapped(Box<dyn Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "buffered service failed")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn server_answers_are_sorted_by_code() {
        let cases = [
            (Status::aborted("lease held by host:1"), Class::Busy),
            (Status::not_found("no database 'a'"), Class::NotFound),
            (Status::failed_precondition("lease lost"), Class::Fenced),
            (Status::permission_denied("token"), Class::Forbidden),
            (Status::invalid_argument("bad page"), Class::Refused),
            (Status::unauthenticated("no token"), Class::Refused),
            (
                Status::out_of_range("version 3 was collected"),
                Class::Refused,
            ),
            (Status::resource_exhausted("--max-calls"), Class::Full),
            (Status::unavailable("shutting down"), Class::Transport),
            (Status::unknown("missing grpc-status"), Class::Transport),
            (
                Status::deadline_exceeded("--stream-idle-timeout"),
                Class::Transport,
            ),
            // tonic's server enforcing the grpc-timeout we sent.
            (Status::cancelled("Timeout expired"), Class::TimedOut),
        ];
        for (status, class) in cases {
            assert_eq!(Class::of(&status), class, "{status:?}");
        }
        for busy_or_definite in [
            Class::Busy,
            Class::NotFound,
            Class::Fenced,
            Class::Refused,
            Class::Full,
        ] {
            assert!(!busy_or_definite.is_retryable());
        }
    }

    #[test]
    fn an_internal_is_transport_trouble_only_when_the_transport_made_it() {
        // The server's INTERNAL, decoded from trailers, has no source, whatever it says.
        let server = Status::internal("h2 protocol error: the store failed");
        assert_eq!(Class::of(&server), Class::Refused);
        // tonic's mapping of an HTTP/2 failure keeps the failure as its source.
        let mut reset = Status::internal("stream reset");
        reset.set_source(Arc::new(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert_eq!(Class::of(&reset), Class::Transport);
        assert!(Class::of(&reset).is_retryable());
        // An error tonic cannot place is UNKNOWN, with its source: retryable too.
        let odd = from_transport(io::Error::other("connection closed"));
        assert_eq!(
            (odd.code(), Class::of(&odd)),
            (Code::Unknown, Class::Transport)
        );
    }

    #[test]
    fn our_own_deadline_is_told_from_a_cancellation_without_reading_the_message() {
        // As tonic's channel reports the grpc-timeout it enforces (directly, or through
        // a wrapping service error).
        let expired = from_transport(tonic::TimeoutExpired(()));
        assert_eq!(expired.code(), Code::Cancelled);
        assert_eq!(Class::of(&expired), Class::TimedOut);
        let wrapped = from_transport(Wrapped(Box::new(tonic::TimeoutExpired(()))));
        assert_eq!(Class::of(&wrapped), Class::TimedOut);
        // The server's enforcement of it: CANCELLED, decoded from the answer (no
        // source), whatever the words.
        assert_eq!(Class::of(&Status::cancelled("deadline")), Class::TimedOut);
        // A cancellation made on this side for another reason is transport trouble.
        let closed = from_transport(Wrapped(Box::new(io::Error::other("connection closed"))));
        let mut cancelled = Status::cancelled("operation was canceled");
        cancelled.set_source(Arc::new(closed));
        assert_eq!(Class::of(&cancelled), Class::Transport);
        assert!(Class::TimedOut.is_retryable());
    }

    #[test]
    fn a_commit_is_unknown_only_when_it_went_out_whole_without_a_definite_answer() {
        assert_eq!(Class::Transport.commit_outcome(true), Outcome::Unknown);
        assert_eq!(Class::TimedOut.commit_outcome(true), Outcome::Unknown);
        assert_eq!(Class::Transport.commit_outcome(false), Outcome::Definite);
        assert_eq!(Class::Fenced.commit_outcome(true), Outcome::Definite);
        assert_eq!(Class::Refused.commit_outcome(true), Outcome::Definite);
    }
}

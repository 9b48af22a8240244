//! Body wrappers: one that meters a request's gRPC messages as they arrive, one that
//! holds a call permit until the response (a stream, perhaps) ends.
//!
//! Metering reads the gRPC framing (a flag byte and a 4-byte length before every
//! message) in the request bytes, because tonic reserves a message's declared length
//! as soon as its prefix arrives: a message is judged by what it declares, before
//! anything is buffered for it.
//! - A Commit message's whole declared size is charged to the commit budgets at once
//!   ([`CommitCharge`]); any other call's message may declare at most
//!   `--max-request-message-bytes`.
//! - A message, once begun (and the first message from the call's start), must arrive
//!   whole within `--stream-idle-timeout`: a trickling client is cut, not waited for.
//!   Between messages a stream may rest (a Watch stream's asks come when they come;
//!   the Commit handler has its own timeout there).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;

use super::CommitCharge;
use crate::limits::exhausted;

/// What a metered body does with each message it sees begin.
pub enum Meter {
    /// A Commit stream: charge every message's declared size.
    Commit(Arc<CommitCharge>),
    /// Any other call: refuse messages declaring more than this.
    Small(u64),
}

impl Meter {
    fn begin(&self, declared: u64) -> Result<(), Status> {
        match self {
            Meter::Commit(charge) => charge.take(declared),
            Meter::Small(max) if declared > *max => Err(exhausted(
                format!(
                    "a request message of {declared} bytes (only Commit messages may be larger than {max})"
                ),
                "--max-request-message-bytes",
            )),
            Meter::Small(_) => Ok(()),
        }
    }
}

/// Where the request bytes are in the gRPC framing.
#[derive(Debug, Default)]
struct Framing {
    /// Prefix bytes seen of the next message (0..5).
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    /// Whole messages received.
    messages: u64,
}

/// The length of the gRPC message prefix.
const PREFIX: usize = 5;

impl Framing {
    /// Takes `data`; calls `begin` with the declared size (prefix included) of every
    /// message whose prefix completes in it.
    fn feed(
        &mut self,
        mut data: &[u8],
        mut begin: impl FnMut(u64) -> Result<(), Status>,
    ) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let n = (PREFIX - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == PREFIX {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                begin(PREFIX as u64 + u64::from(len))?;
                self.remaining = u64::from(len);
                if len == 0 {
                    self.messages += 1;
                }
            }
        }
        Ok(())
    }

    /// Between messages, with at least one received: the stream may rest.
    fn resting(&self) -> bool {
        self.messages > 0 && self.remaining == 0 && self.have == 0
    }
}

/// A request body, metered (see the module).
pub struct Metered {
    inner: Body,
    meter: Meter,
    framing: Framing,
    idle: Duration,
    /// While a message is under way (and before the first one): when it is due.
    due: Option<Instant>,
    /// The timer for `due`, made only when the body has to wait (most requests
    /// arrive whole at once and never need one).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Metered {
    pub fn new(inner: Body, meter: Meter, idle: Duration) -> Self {
        let due = Some(Instant::now() + idle);
        Self {
            inner,
            meter,
            framing: Framing::default(),
            idle,
            due,
            timer: None,
        }
    }

    fn take(&mut self, data: &[u8]) -> Result<(), Status> {
        let was_resting = self.framing.resting();
        let meter = &self.meter;
        self.framing.feed(data, |declared| meter.begin(declared))?;
        if self.framing.resting() {
            (self.due, self.timer) = (None, None);
        } else if was_resting || self.due.is_none() {
            // A new message began: it has the idle timeout to arrive whole.
            (self.due, self.timer) = (Some(Instant::now() + self.idle), None);
        }
        Ok(())
    }

    /// Ready once the message under way is overdue.
    fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(due) = self.due else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        timer.as_mut().poll(cx)
    }

    fn timed_out(&self) -> Status {
        Status::deadline_exceeded(format!(
            "a request message did not arrive whole within {} (server limit --stream-idle-timeout); nothing was changed",
            humantime::format_duration(self.idle)
        ))
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.take(data)
                {
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.poll_overdue(cx) {
                Poll::Ready(()) => {
                    (this.due, this.timer) = (None, None);
                    Poll::Ready(Some(Err(this.timed_out())))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its call's permit until it is dropped.
pub struct Holding {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl Holding {
    pub fn new(inner: Body, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }
}

impl HttpBody for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7, len as usize));
        m
    }

    #[test]
    fn framing_sees_every_declared_size_across_any_split() {
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(70_000));
        for split in [1, 2, 4, 5, 6, 1000, stream.len()] {
            let mut f = Framing::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(split) {
                f.feed(chunk, |n| {
                    seen.push(n);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(seen, [8, 5, 70_005], "split {split}");
            assert!(f.resting() && f.messages == 3);
        }
    }

    #[test]
    fn a_declared_size_is_judged_before_its_bytes() {
        let mut f = Framing::default();
        let small = Meter::Small(64);
        let prefix_only = &message(1 << 24)[..PREFIX];
        let e = f
            .feed(prefix_only, |n| small.begin(n))
            .err()
            .map(|s| s.message().to_owned());
        assert!(e.is_some_and(|m| m.contains("--max-request-message-bytes")));
    }
}

//! TLS on accepted connections: each handshake runs in its own task (a slow or silent
//! client delays only itself) under [`HANDSHAKE_TIMEOUT`], with the configuration
//! current when the connection arrived (a reload applies to the next connection). A
//! failed handshake closes that connection and is logged at debug level (any scanner
//! can cause one). Handshakes in progress count against `--max-connections` like any
//! open connection, which bounds them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use pagewire_tls::server::Reloadable;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::connections::Counted;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection the server speaks gRPC on: plaintext or TLS.
pub enum Conn {
    Plain(Counted),
    Tls(Box<TlsStream<Counted>>),
}

type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// `incoming` as gRPC connections: plaintext without `tls`, else each after its TLS
/// handshake (connections whose handshake fails never come out).
pub fn accept<S>(incoming: S, tls: Option<Arc<Reloadable>>) -> Incoming
where
    S: Stream<Item = io::Result<Counted>> + Send + 'static,
{
    let Some(tls) = tls else {
        return Box::pin(incoming.map(|c| c.map(Conn::Plain)));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let accepted = tokio::select! {
                accepted = incoming.next() => accepted,
                // The server stopped taking connections: stop accepting them.
                () = tx.closed() => return,
            };
            let Some(accepted) = accepted else {
                return;
            };
            let tcp = match accepted {
                Ok(tcp) => tcp,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    continue;
                }
            };
            let (tx, acceptor) = (tx.clone(), TlsAcceptor::from(tls.current()));
            tokio::spawn(async move {
                let peer = tcp.peer_addr();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream)))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Conn::Plain(c) => c.connect_info(),
            Conn::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

/// Forwards one `AsyncRead`/`AsyncWrite` method to whichever connection this is.
macro_rules! either {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(c) => c.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

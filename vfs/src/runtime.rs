//! The tokio runtime the VFS runs its RPCs on, and the channel pool.
//!
//! SQLite calls the VFS synchronously, from any thread; `block_on` runs a future
//! on our runtime and waits for it. One runtime per process, rebuilt when the
//! process id changes (a fork: the parent's worker threads do not exist in the
//! child, so waiting on them would hang forever).
//!
//! One HTTP/2 connection per server URL ([`Conn`]), replaced when a call on it got no
//! answer within its deadline, so the retry does not wait on a connection that may be
//! dead (a peer gone without a FIN, a NAT or load balancer that dropped its state).

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::VfsError;

/// The runtime of this process and the gRPC channels opened on it.
pub struct Rt {
    pid: u32,
    runtime: Runtime,
    /// One multiplexed HTTP/2 connection per server URL (and TLS files), shared by
    /// all databases.
    channels: Mutex<HashMap<(String, TlsFiles), Arc<Conn>>>,
}

/// The connection to one server, shared by every database on it: a channel and its
/// generation. [`Conn::reconnect`] replaces it; calls in flight on the old one go on
/// there (a Watch stream stays until the connection's keepalive gives up on it), and it
/// closes when the last of them ends.
pub struct Conn {
    endpoint: Endpoint,
    handle: Handle,
    current: Mutex<(u64, Channel)>,
}

impl Conn {
    /// The channel to use now and its generation (for [`Conn::reconnect`]).
    pub fn get(&self) -> (u64, Channel) {
        let current = self.current.lock();
        (current.0, current.1.clone())
    }

    /// Replaces the channel of generation `seen` with a new connection (made lazily, on
    /// the next call), unless another caller already did.
    pub fn reconnect(&self, seen: u64) {
        let mut current = self.current.lock();
        if current.0 != seen {
            return;
        }
        // connect_lazy needs a runtime context to spawn its connection task.
        let _guard = self.handle.enter();
        *current = (seen + 1, self.endpoint.connect_lazy());
        tracing::debug!(
            generation = seen + 1,
            "new connection to the server after a call timed out"
        );
    }
}

/// What a TLS connection trusts and presents (see `Config`): the system's roots plus
/// `ca`, and the client certificate for mutual TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// tonic's TLS settings from these files, read now (an unusable file is a
    /// configuration error naming it).
    fn client_config(&self, handshake_timeout: Duration) -> Result<ClientTlsConfig, VfsError> {
        let bad = |e: pagewire_tls::TlsError| VfsError::Config(format!("TLS: {e}"));
        let roots = pagewire_tls::client::roots(self.ca.as_deref()).map_err(bad)?;
        let mut config = ClientTlsConfig::new()
            .trust_anchors(roots.roots)
            .timeout(handshake_timeout);
        if let Some((cert, key)) = &self.client {
            let id = pagewire_tls::pem::identity(cert, key).map_err(bad)?;
            config = config.identity(Identity::from_pem(id.cert_pem, id.key_pem));
        }
        Ok(config)
    }
}

/// The endpoint of the server at `url` (`http://` or `https://`, then trusting and
/// presenting `tls`), with the VFS's connection settings; the `pagewire` command
/// connects through it too, so both reach a server the same way.
pub fn endpoint(
    url: &str,
    connect_timeout: Duration,
    tls: &TlsFiles,
) -> Result<Endpoint, VfsError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| VfsError::Config(format!("bad server URL {url:?}: {e}")))?;
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls.client_config(connect_timeout)?)
            .map_err(|e| VfsError::Config(format!("TLS for {url}: {e}")))?;
    }
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

static CURRENT: OnceLock<Mutex<Option<Arc<Rt>>>> = OnceLock::new();

/// The runtime for this process, built on first use and after a fork.
pub fn get() -> Result<Arc<Rt>, VfsError> {
    let slot = CURRENT.get_or_init(|| Mutex::new(None));
    let mut slot = slot.lock();
    let pid = std::process::id();
    if let Some(rt) = slot.as_ref() {
        if rt.pid == pid {
            return Ok(rt.clone());
        }
        // Forked: the old runtime's threads are gone. Dropping it would try to join
        // them, so leak it; its memory is the only cost.
        if let Some(old) = slot.take() {
            std::mem::forget(old);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pagewire")
        .enable_all()
        .build()
        .map_err(|e| VfsError::Internal(format!("cannot start the VFS runtime: {e}")))?;
    let rt = Arc::new(Rt {
        pid,
        runtime,
        channels: Mutex::new(HashMap::new()),
    });
    *slot = Some(rt.clone());
    Ok(rt)
}

/// The error for a database opened before this process forked, used in the child.
pub fn forked() -> VfsError {
    VfsError::Internal(
        "this database was opened before the process forked; open it again in the child".into(),
    )
}

impl Rt {
    /// Runs `fut` to completion on this runtime, from a thread SQLite called us on.
    pub fn block_on<F>(&self, fut: F) -> Result<F::Output, VfsError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if !self.is_current() {
            return Err(forked());
        }
        if Handle::try_current().is_err() {
            return Ok(self.runtime.block_on(fut));
        }
        // Called from inside some tokio runtime (an async host application using
        // SQLite synchronously): `block_on` would panic there, so hand the future
        // to our workers and wait on a plain channel.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| VfsError::Internal("the VFS runtime stopped".into()))
    }

    /// False in a forked child, whose copy of this runtime has no threads.
    pub fn is_current(&self) -> bool {
        self.pid == std::process::id()
    }

    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(fut);
    }

    /// The shared connection to `url` (connected lazily, on first call), over TLS for
    /// an `https://` URL. The first database opened on a server sets its connect
    /// timeout.
    pub fn channel(
        &self,
        url: &str,
        connect_timeout: Duration,
        tls: &TlsFiles,
    ) -> Result<Arc<Conn>, VfsError> {
        let mut channels = self.channels.lock();
        let key = (url.to_owned(), tls.clone());
        if let Some(conn) = channels.get(&key) {
            return Ok(conn.clone());
        }
        let endpoint = endpoint(url, connect_timeout, tls)?;
        // connect_lazy needs a runtime context to spawn its connection task.
        let _guard = self.runtime.enter();
        let channel = endpoint.connect_lazy();
        let conn = Arc::new(Conn {
            endpoint,
            handle: self.runtime.handle().clone(),
            current: Mutex::new((0, channel)),
        });
        channels.insert(key, conn.clone());
        Ok(conn)
    }
}

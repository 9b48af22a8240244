//! The tokio runtime the VFS runs its RPCs on, and the channel pool.
//!
//! SQLite calls the VFS synchronously, from any thread; `block_on` runs a future
//! on our runtime and waits for it. One runtime per process, rebuilt when the
//! process id changes (a fork: the parent's worker threads do not exist in the
//! child, so waiting on them would hang forever).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};
use tonic::transport::{Channel, Endpoint};

use crate::error::VfsError;

/// The runtime of this process and the gRPC channels opened on it.
pub struct Rt {
    pid: u32,
    runtime: Runtime,
    /// One multiplexed HTTP/2 channel per server URL, shared by all databases.
    channels: Mutex<HashMap<String, Channel>>,
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
    let rt = Arc::new(Rt { pid, runtime, channels: Mutex::new(HashMap::new()) });
    *slot = Some(rt.clone());
    Ok(rt)
}

/// The error for a database opened before this process forked, used in the child.
pub fn forked() -> VfsError {
    VfsError::Internal("this database was opened before the process forked; open it again in the child".into())
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
        rx.recv().map_err(|_| VfsError::Internal("the VFS runtime stopped".into()))
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

    /// The shared channel to `url` (connected lazily, on first call).
    pub fn channel(&self, url: &str, connect_timeout: Duration) -> Result<Channel, VfsError> {
        let mut channels = self.channels.lock();
        if let Some(ch) = channels.get(url) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| VfsError::Config(format!("bad server URL {url:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        // connect_lazy needs a runtime context to spawn its connection task.
        let _guard = self.runtime.enter();
        let ch = endpoint.connect_lazy();
        channels.insert(url.to_owned(), ch.clone());
        Ok(ch)
    }
}

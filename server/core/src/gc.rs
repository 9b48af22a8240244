//! The history GC task: runs [`PageStore::gc`] every `gc_interval` with the configured
//! retention, until stopped (when the server shuts down).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::server::ServerConfig;
use crate::store::clock::system_unix_ms;
use crate::store::{GcStats, PageStore, Retention, StoreResult};

/// What each pass's windows are (asked at every pass: a reload may change them).
pub type Windows = Box<dyn Fn() -> Retention + Send + Sync>;

/// A running GC task.
pub struct GcTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl GcTask {
    /// Starts GC of `store` every `interval` (the first pass one interval from now).
    pub fn spawn(store: Arc<dyn PageStore>, interval: Duration, retention: Windows) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(store, interval, retention, stopped));
        Self { stop, task }
    }

    /// Stops the task, letting a pass in progress finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!("history GC task failed: {e}");
        }
    }
}

async fn run(
    store: Arc<dyn PageStore>,
    interval: Duration,
    retention: Windows,
    mut stopped: oneshot::Receiver<()>,
) {
    let start = tokio::time::Instant::now() + interval;
    let mut ticks = tokio::time::interval_at(start, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {
                let _ = pass(store.as_ref(), &retention()).await;
            }
        }
    }
}

/// The retention windows of each pass: the server's, within each tenant's cap (asked
/// at every pass: a reload may change them).
pub fn windows(config: &ServerConfig) -> Windows {
    let (credentials, server) = (config.credentials.clone(), config.history_retention);
    let default_cap = config.limits.tenant_quotas.max_history_retention;
    Box::new(move || credentials.retention(server, default_cap))
}

/// One pass at a time: the background task and `Operator.RunGc` take turns.
static ONE_PASS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One GC pass, logged (and counted in the metrics).
pub async fn pass(store: &dyn PageStore, retention: &Retention) -> StoreResult<GcStats> {
    let _turn = ONE_PASS.lock().await;
    let started = std::time::Instant::now();
    let result = store.gc_with(system_unix_ms(), retention).await;
    let m = crate::metrics::global();
    m.gc_passes.inc();
    m.gc_seconds.observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(stats) => {
            m.gc_versions.inc_by(stats.versions_collected);
            m.gc_bytes_freed.inc_by(stats.bytes_freed);
            log(stats)
        }
        Err(e) => tracing::warn!("history GC failed: {e}"),
    }
    result
}

fn log(stats: &GcStats) {
    if stats.versions_collected > 0 || stats.bytes_freed > 0 {
        tracing::info!(
            databases = stats.databases,
            versions = stats.versions_collected,
            writes = stats.writes_removed,
            bytes = stats.bytes_freed,
            "history GC collected old versions"
        );
    } else {
        tracing::debug!(
            databases = stats.databases,
            "history GC: nothing to collect"
        );
    }
}

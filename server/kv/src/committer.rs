//! Group commit, shared by the embedded engines: one thread takes every batch waiting
//! (up to [`GROUP_BATCHES`] or about [`GROUP_BYTES`]), hands the group to the engine's
//! commit (one transaction, one sync) and answers each batch. After a group failed
//! with an I/O error or a full disk, the engine's `recover` runs (a reopen) before the
//! next group.

use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::engine::{Batch, EngineError, EngineResult};

/// At most this many batches, or about this many bytes, share one commit.
const GROUP_BATCHES: usize = 1024;
const GROUP_BYTES: usize = 64 << 20;

/// One batch waiting for its commit, and where its outcome goes.
pub(crate) struct Job {
    pub batch: Batch,
    reply: oneshot::Sender<EngineResult<()>>,
}

/// The committer thread. Dropping it waits for the thread to finish what it was
/// given (so the engine's file is closed once the last snapshot is dropped too).
pub(crate) struct Committer {
    /// `None` once dropping: the thread then finishes and ends.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread: `commit` gives one outcome per job of a group.
    pub fn spawn(
        mut commit: impl FnMut(&[Job]) -> Vec<EngineResult<()>> + Send + 'static,
        recover: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("pagewire-commit".into())
            .spawn(move || {
                while let Some(group) = next_group(&queue) {
                    let outcomes = commit(&group);
                    if outcomes
                        .iter()
                        .any(|o| matches!(o, Err(EngineError::Io(_) | EngineError::Full(_))))
                    {
                        recover();
                    }
                    for (job, outcome) in group.into_iter().zip(outcomes) {
                        let _ = job.reply.send(outcome);
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Commits `batch` with the next group; returns once that group is durable.
    pub async fn write(&self, batch: Batch) -> EngineResult<()> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| EngineError::Io("the engine is closing".into()))?
            .send(Job { batch, reply })
            .map_err(|_| EngineError::Io("the committer thread stopped".into()))?;
        answer
            .await
            .map_err(|_| EngineError::Io("the committer thread stopped".into()))?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The next group: the first batch waited for, then every one already waiting, up to
/// the bounds. `None` once every sender is gone.
fn next_group(queue: &mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let first = queue.recv().ok()?;
    let mut bytes = first.batch.bytes();
    let mut group = vec![first];
    while group.len() < GROUP_BATCHES && bytes < GROUP_BYTES {
        match queue.try_recv() {
            Ok(job) => {
                bytes += job.batch.bytes();
                group.push(job);
            }
            Err(_) => break,
        }
    }
    Some(group)
}

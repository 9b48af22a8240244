//! `pagewire-test-postgres`: starts one throwaway PostgreSQL cluster (see
//! `pagewire_tests::postgres::LocalCluster`), prints its URL on stdout, and keeps it until
//! SIGTERM or SIGINT, or until its parent process exits; then stops and deletes it.
//! `scripts/test.sh` runs it so the whole test run shares one cluster (`DATABASE_URL`).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use pagewire_tests::postgres::LocalCluster;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cluster = match LocalCluster::start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pagewire-test-postgres: cannot start PostgreSQL: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", cluster.admin_url())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(out);
    if let Err(e) = wait_for_the_end() {
        eprintln!("pagewire-test-postgres: {e:#}");
    }
    drop(cluster);
    ExitCode::SUCCESS
}

/// Returns on SIGTERM, SIGINT, or when the parent process goes away.
fn wait_for_the_end() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // SAFETY: getppid has no preconditions and cannot fail.
        let parent = unsafe { libc::getppid() };
        let orphaned = async {
            // SAFETY: as above.
            while unsafe { libc::getppid() } == parent {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = orphaned => {}
        }
        Ok(())
    })
}

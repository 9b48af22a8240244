//! Server-side load: many databases, one writer each, many concurrent clients;
//! commit latency percentiles and the server's memory per idle database.

use std::{sync::Mutex, thread, time::Instant};

use pagewire_proto::v1::{ListDatabasesRequest, admin_client::AdminClient};

use crate::target::Target;

pub struct LoadReport {
    pub databases: usize,
    pub clients: usize,
    pub commits: usize,
    pub commits_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rss_per_db_bytes: Option<f64>,
    pub pages_per_db_bytes: Option<f64>,
}

pub fn run(
    t: &Target,
    server_pid: Option<u32>,
    databases: usize,
    clients: usize,
    rounds: usize,
) -> anyhow::Result<LoadReport> {
    let Target::Pagewire { url, .. } = t else {
        anyhow::bail!("load test needs a pagewire server")
    };
    let rss_before = server_pid.and_then(rss_bytes);
    let latencies = Mutex::new(Vec::with_capacity(databases * rounds));
    let started = Instant::now();
    thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let latencies = &latencies;
                s.spawn(move || -> anyhow::Result<()> {
                    let mine: Vec<usize> = (c..databases).step_by(clients).collect();
                    let conns = mine
                        .iter()
                        .map(|d| {
                            let db = t.open(&format!("load/{d}.db"))?;
                            db.execute_batch("create table if not exists e(v blob)")?;
                            Ok(db)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let mut local = Vec::with_capacity(conns.len() * rounds);
                    for _ in 0..rounds {
                        for db in &conns {
                            let t0 = Instant::now();
                            db.execute("insert into e values (randomblob(100))", [])?;
                            local.push(t0.elapsed().as_secs_f64());
                        }
                    }
                    latencies
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .extend(local);
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
            * 1000.0
    };
    // Connections are closed (leases released): the databases are idle now.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rss_after = server_pid.and_then(rss_bytes);
    let pages = stored_bytes(url).ok();
    Ok(LoadReport {
        databases,
        clients,
        commits: lat.len(),
        commits_per_s: lat.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        rss_per_db_bytes: rss_before
            .zip(rss_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / databases as f64),
        pages_per_db_bytes: pages.map(|p| p as f64 / databases as f64),
    })
}

/// Resident memory of a process (Linux).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Page bytes the server holds for the bench's load databases.
fn stored_bytes(url: &str) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut admin = AdminClient::connect(url.to_owned()).await?;
        let list = admin
            .list_databases(ListDatabasesRequest {})
            .await?
            .into_inner();
        Ok(list
            .databases
            .iter()
            .filter(|d| d.name.starts_with("bench/load/"))
            .map(|d| d.stored_bytes)
            .sum())
    })
}

//! pagewire-bench: pagewire against local SQLite files, in one run, over loopback.
//!
//! Targets: a local file (WAL + synchronous=NORMAL; DELETE + synchronous=FULL),
//! pagewire on the memory store (`--store memory`), on the embedded store (the
//! server's default, in a temporary data directory), on PostgreSQL (a throwaway
//! cluster, or `DATABASE_URL`). One table of numbers with ratios to the local file,
//! then issue 14's durable-store section (durable.rs: commit latency and writers
//! against local files, many databases: start time and memory; `--only-durable` runs
//! just that), then a server load test. Run: `scripts/bench.sh` (builds first), or
//! `target/release/pagewire-bench [--quick]`.
//!
//! The read-lease rows (leases.rs) also run each pagewire store on a second server
//! started with `--read-lease-ttl 0s`, and print the issue-7 targets and what ran
//! (RPC counters, lease states, server metrics, CPU per commit) below the table.
//! `--lease-scan [0,1,2,4,8,16]` measures commit latency against the number of
//! read-lease holders instead of the table.

mod child;
mod durable;
mod history;
mod leases;
mod load;
mod pgdirect;
mod report;
mod rtt;
mod target;
mod tls;
mod workloads;

use clap::Parser;
use pagewire_tests::{Server, vfs_library};
use rusqlite::Connection;

use crate::{target::Target, workloads::Sizes};

#[derive(Parser)]
#[command(about = "Benchmark pagewire against local SQLite files")]
struct Args {
    /// Smaller runs (for a smoke test).
    #[arg(long)]
    quick: bool,
    /// Skip the server load test.
    #[arg(long)]
    no_load: bool,
    /// Databases and concurrent clients for the load test.
    #[arg(long, default_value_t = 1000)]
    load_databases: usize,
    #[arg(long, default_value_t = 64)]
    load_clients: usize,
    /// Instead of the table: what TLS costs a new process (connect + first query,
    /// plaintext against TLS).
    #[arg(long)]
    tls_handshake: bool,
    /// Instead of the table: what ForkDatabase and RestoreDatabase cost on a big
    /// database (`--history-mib`, default 1024) on each store.
    #[arg(long)]
    history: bool,
    #[arg(long, default_value_t = 1024)]
    history_mib: usize,
    /// Run only the server load test (against `--load-url` if given, else a fresh server).
    #[arg(long)]
    load_only: bool,
    #[arg(long)]
    load_url: Option<String>,
    /// Internal: run the cold-read child.
    #[arg(long, hide = true, num_args = 2)]
    child_cold: Option<Vec<String>>,
    /// Run only the table rows whose name contains this (no commit-size table, no
    /// load test).
    #[arg(long)]
    only: Option<String>,
    /// Seconds each timed-for-a-while workload runs (default 2, --quick 0.5; each
    /// timed run of the durable section: default 3, --quick 0.5).
    #[arg(long)]
    seconds: Option<f64>,
    /// Leave PostgreSQL out even where it is installed.
    #[arg(long)]
    no_postgres: bool,
    /// Instead of the table: commit latency against the number of read-lease
    /// holder processes (default 0,1,2,4,8,16), on the memory store.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    lease_scan: Option<Vec<usize>>,
    /// With --lease-scan: on the PostgreSQL store instead of the memory store.
    #[arg(long)]
    scan_postgres: bool,
    /// With --lease-scan: holders are threads of the bench process (each a client
    /// of its own) instead of processes.
    #[arg(long)]
    holders_in_process: bool,
    /// With --lease-scan: holders read with consistency=snapshot (Watch stream, no
    /// read lease), to separate the cost of the events from waiting for acks.
    #[arg(long)]
    holders_snapshot: bool,
    /// Run only issue 14's durable-store section (commit latency and writers on the
    /// embedded store, PostgreSQL and local files; many databases).
    #[arg(long)]
    only_durable: bool,
    /// Skip the durable-store section.
    #[arg(long, conflicts_with = "only_durable")]
    no_durable: bool,
    /// Databases of the durable section's many-databases test (default 100000,
    /// --quick 5000).
    #[arg(long)]
    databases: Option<usize>,
    /// Concurrent writers of the durable section (each its own database).
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Internal: run a read-lease holder child (target spec, database, token, strong|snapshot).
    #[arg(long, hide = true, num_args = 4)]
    child_holder: Option<Vec<String>>,
}

/// Registers the VFS by loading the built extension, as `.load` does.
pub fn load_vfs() -> anyhow::Result<()> {
    let lib = vfs_library()?;
    let conn = Connection::open_in_memory()?;
    // SAFETY: loading our own extension library, built from this workspace.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&conn)?;
        conn.load_extension(&lib, None::<&str>)?;
    }
    Ok(())
}

/// Server flags that turn read leases off.
const NO_LEASES: [&str; 2] = ["--read-lease-ttl", "0s"];

/// A server on the memory store (named: the test harness's default is the embedded one).
fn memory_server(extra: &[&str]) -> anyhow::Result<Server> {
    Server::start_with(&[&["--store", "memory"][..], extra].concat())
}

/// A server on the embedded store in a new temporary data directory (removed after
/// the server, which the tuple drops first).
fn embedded_server(extra: &[&str]) -> anyhow::Result<(Server, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("pagewire-bench-data")
        .tempdir()?;
    let path = dir.path().display().to_string();
    let args = [&["--store", "embedded", "--data-dir", &path][..], extra].concat();
    Ok((Server::start_with(&args)?, dir))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(child) = &args.child_cold {
        return child::cold(&child[0], child[1].parse()?);
    }
    if let Some(child) = &args.child_holder {
        return leases::holder(&child[0], &child[1], &child[2], &child[3]);
    }
    if args.tls_handshake {
        return tls::run(if args.quick { 5 } else { 21 });
    }
    if args.history {
        let mib = if args.quick { 64 } else { args.history_mib };
        return history::run(mib, !args.no_postgres);
    }
    load_vfs()?;
    if args.load_only {
        let url = args.load_url.clone().unwrap_or_default();
        let t = Target::Pagewire {
            url,
            label: "memory".into(),
            no_lease_url: None,
        };
        report::print_load(
            &load::run(&t, None, args.load_databases, args.load_clients, 10)?,
            "memory",
        );
        return Ok(());
    }
    let sizes = if args.quick {
        Sizes {
            rows: 5_000,
            point_selects: 2_000,
            seconds: 0.5,
        }
    } else {
        Sizes {
            rows: 50_000,
            point_selects: 20_000,
            seconds: 2.0,
        }
    };
    let sizes = Sizes {
        seconds: args.seconds.unwrap_or(sizes.seconds),
        ..sizes
    };
    let durable_opts = durable::Opts {
        seconds: args.seconds.unwrap_or(if args.quick { 0.5 } else { 3.0 }),
        writers: args.writers,
        databases: args
            .databases
            .unwrap_or(if args.quick { 5_000 } else { 100_000 }),
        touch: 1_000,
    };
    let dir = tempfile::tempdir()?;
    let (wal, full) = (dir.path().join("wal"), dir.path().join("full"));
    std::fs::create_dir_all(&wal)?;
    std::fs::create_dir_all(&full)?;
    if args.only_durable {
        let (embedded, _embedded_dir) = embedded_server(&[])?;
        let mut targets = vec![
            Target::LocalWal(wal),
            Target::LocalFull(full),
            Target::Pagewire {
                url: embedded.url.clone(),
                label: "embedded".into(),
                no_lease_url: None,
            },
        ];
        let postgres = if args.no_postgres {
            None
        } else {
            report::postgres_server()?
        };
        if let Some((_, server)) = &postgres {
            targets.push(Target::Pagewire {
                url: server.url.clone(),
                label: "postgres".into(),
                no_lease_url: None,
            });
        }
        // Not durable: the floor of the RPC path, to show what the stores add to it.
        let memory = memory_server(&[])?;
        targets.push(Target::Pagewire {
            url: memory.url.clone(),
            label: "memory".into(),
            no_lease_url: None,
        });
        return durable::run(&targets, &durable_opts);
    }
    let memory = memory_server(&[])?;
    // The same store without read leases, for the rows that compare.
    let memory_no_lease = memory_server(&NO_LEASES)?;
    target::register_server(&memory.url, memory.pid() as u32);
    target::register_server(&memory_no_lease.url, memory_no_lease.pid() as u32);
    let mut targets = vec![
        Target::LocalWal(wal),
        Target::LocalFull(full),
        Target::Pagewire {
            url: memory.url.clone(),
            label: "memory".into(),
            no_lease_url: Some(memory_no_lease.url.clone()),
        },
    ];
    // The embedded store (the server's default), and again without read leases.
    let embedded = if args.lease_scan.is_some() {
        None
    } else {
        let (server, server_dir) = embedded_server(&[])?;
        let (no_lease, no_lease_dir) = embedded_server(&NO_LEASES)?;
        target::register_server(&server.url, server.pid() as u32);
        target::register_server(&no_lease.url, no_lease.pid() as u32);
        targets.push(Target::Pagewire {
            url: server.url.clone(),
            label: "embedded".into(),
            no_lease_url: Some(no_lease.url.clone()),
        });
        Some((server, server_dir, no_lease, no_lease_dir))
    };
    let scan_memory = args.lease_scan.is_some() && !args.scan_postgres;
    let postgres = if args.no_postgres || scan_memory {
        None
    } else {
        report::postgres_server()?
    };
    // A second PostgreSQL database for the server without read leases (two servers
    // must not share databases of one store when either grants read leases).
    let postgres_no_lease = match &postgres {
        Some(_) => {
            let pg = pagewire_tests::postgres::TempPostgres::start()?;
            let server = Server::start_with(&["--store", pg.url(), NO_LEASES[0], NO_LEASES[1]])?;
            target::register_server(&server.url, server.pid() as u32);
            Some((pg, server))
        }
        None => None,
    };
    if let (Some((_, server)), Some((_, no_lease))) = (&postgres, &postgres_no_lease) {
        target::register_server(&server.url, server.pid() as u32);
        targets.push(Target::Pagewire {
            url: server.url.clone(),
            label: "postgres".into(),
            no_lease_url: Some(no_lease.url.clone()),
        });
    }
    if let Some(counts) = &args.lease_scan {
        let label = if args.scan_postgres {
            "pagewire postgres"
        } else {
            "pagewire memory"
        };
        let t = targets
            .iter()
            .find(|t| t.label() == label)
            .ok_or_else(|| anyhow::anyhow!("no {label} target"))?;
        let counts = if counts.is_empty() {
            &[0, 1, 2, 4, 8, 16][..]
        } else {
            counts
        };
        let kind = leases::HolderKind {
            threads: args.holders_in_process,
            snapshot: args.holders_snapshot,
        };
        return leases::scan(t, &sizes, counts, kind);
    }
    for t in &targets {
        workloads::prepare_data(t, &sizes)?;
        if !t.is_local() {
            workloads::prepare_data(&t.without_read_leases()?, &sizes)?;
        }
    }
    let (current, multi) = rtt::floor(&memory.url, "bench/data.db")?;
    println!(
        "round-trip floor (BeginRead, plain tonic): {current:.0} us current-thread runtime, {multi:.0} us multi-thread runtime\n"
    );
    let mut table = report::Table::new(&targets);
    for w in workloads::WORKLOADS.iter().filter(|w| {
        args.only
            .as_ref()
            .is_none_or(|o| w.name.contains(o.as_str()))
    }) {
        let values = targets
            .iter()
            .map(|t| (w.run)(t, &sizes))
            .collect::<anyhow::Result<Vec<_>>>()?;
        table.row(w, values);
    }
    table.print();
    table.print_lease_targets();
    report::print_notes();
    if args.only.is_some() {
        return Ok(());
    }
    if !args.no_durable {
        // The memory store last: not durable, the floor of the RPC path.
        let (memory, durable): (Vec<Target>, Vec<Target>) = targets
            .iter()
            .cloned()
            .partition(|t| t.label() == "pagewire memory");
        let durable_targets: Vec<Target> = durable.into_iter().chain(memory).collect();
        durable::run(&durable_targets, &durable_opts)?;
    }
    if let (Some((pg, _)), Some(t)) = (
        &postgres,
        targets.iter().find(|t| t.label() == "pagewire postgres"),
    ) {
        let runs: &[(usize, usize)] = if args.quick {
            &[(1, 20), (10, 10), (1000, 2)]
        } else {
            &[(1, 300), (10, 200), (1000, 10)]
        };
        let rows = pgdirect::compare(t, pg.url(), runs).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        report::print_commit_sizes(&rows);
    }
    if !args.no_load {
        let (dbs, clients) = if args.quick {
            (100, 16)
        } else {
            (args.load_databases, args.load_clients)
        };
        let load_server = memory_server(&[])?;
        // A fresh server holds its first commits for one read-lease TTL (1 s by
        // default); the load test measures the steady state after it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let t = Target::Pagewire {
            url: load_server.url.clone(),
            label: "memory".into(),
            no_lease_url: None,
        };
        report::print_load(
            &load::run(&t, Some(load_server.pid() as u32), dbs, clients, 10)?,
            "memory",
        );
        drop(load_server);
        let (load_server, _load_dir) = embedded_server(&[])?;
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let t = Target::Pagewire {
            url: load_server.url.clone(),
            label: "embedded".into(),
            no_lease_url: None,
        };
        report::print_load(
            &load::run(&t, Some(load_server.pid() as u32), dbs, clients, 10)?,
            "embedded",
        );
        if let Some((_, server)) = &postgres {
            let t = Target::Pagewire {
                url: server.url.clone(),
                label: "postgres".into(),
                no_lease_url: None,
            };
            report::print_load(&load::run(&t, None, dbs, clients, 10)?, "postgres");
        }
    }
    drop(embedded);
    Ok(())
}

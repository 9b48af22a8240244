//! pagewire-bench: pagewire against local SQLite files, in one run, over loopback.
//!
//! Targets: a local file (WAL + synchronous=NORMAL; DELETE + synchronous=FULL),
//! pagewire on the memory store, pagewire on PostgreSQL (a throwaway cluster, or
//! `--postgres URL`). One table of numbers with ratios to the local file, then a
//! server load test. Run: `scripts/bench.sh` (builds first), or
//! `target/release/pagewire-bench [--quick]`.

mod child;
mod load;
mod pgdirect;
mod report;
mod rtt;
mod target;
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
    /// Internal: run the cold-read child.
    #[arg(long, hide = true, num_args = 2)]
    child_cold: Option<Vec<String>>,
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(child) = &args.child_cold {
        return child::cold(&child[0], child[1].parse()?);
    }
    load_vfs()?;
    let sizes = if args.quick {
        Sizes { rows: 5_000, point_selects: 2_000, seconds: 0.5 }
    } else {
        Sizes { rows: 50_000, point_selects: 20_000, seconds: 2.0 }
    };
    let dir = tempfile::tempdir()?;
    let (wal, full) = (dir.path().join("wal"), dir.path().join("full"));
    std::fs::create_dir_all(&wal)?;
    std::fs::create_dir_all(&full)?;
    let memory = Server::start()?;
    let mut targets = vec![
        Target::LocalWal(wal),
        Target::LocalFull(full),
        Target::Pagewire { url: memory.url.clone(), label: "memory".into() },
    ];
    let postgres = report::postgres_server()?;
    if let Some((_, server)) = &postgres {
        targets.push(Target::Pagewire { url: server.url.clone(), label: "postgres".into() });
    }
    for t in &targets {
        workloads::prepare_data(t, &sizes)?;
    }
    let (current, multi) = rtt::floor(&memory.url, "bench/data.db")?;
    println!("round-trip floor (BeginRead, plain tonic): {current:.0} us current-thread runtime, {multi:.0} us multi-thread runtime\n");
    let mut table = report::Table::new(&targets);
    for w in workloads::WORKLOADS {
        let values = targets.iter().map(|t| (w.run)(t, &sizes)).collect::<anyhow::Result<Vec<_>>>()?;
        table.row(w, values);
    }
    table.print();
    if let (Some((pg, _)), Some(t)) = (&postgres, targets.iter().find(|t| t.label() == "pagewire postgres")) {
        let runs: &[(usize, usize)] = if args.quick { &[(1, 20), (10, 10), (1000, 2)] } else { &[(1, 300), (10, 200), (1000, 10)] };
        let rows = pgdirect::compare(t, pg.url(), runs).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        report::print_commit_sizes(&rows);
    }
    if !args.no_load {
        let (dbs, clients) = if args.quick { (100, 16) } else { (args.load_databases, args.load_clients) };
        let load_server = Server::start()?;
        let t = Target::Pagewire { url: load_server.url.clone(), label: "memory".into() };
        report::print_load(&load::run(&t, Some(load_server.pid() as u32), dbs, clients, 10)?, "memory");
        if let Some((_, server)) = &postgres {
            let t = Target::Pagewire { url: server.url.clone(), label: "postgres".into() };
            report::print_load(&load::run(&t, None, dbs, clients, 10)?, "postgres");
        }
    }
    Ok(())
}

//! `pagewire`: operate a pagewire server from a shell. Databases (list, info, create,
//! delete), branches, restores and restore points, export to and import from local
//! files, as human tables or `--json`.
//!
//! Exit codes: 0 done, 1 the server refused or could not be reached (the message
//! says why), 2 bad arguments (clap's usage message).

mod commands;
mod connect;
mod export;
mod import;
mod output;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "pagewire", version, about = "Operate a pagewire server")]
struct Cli {
    #[command(flatten)]
    server: connect::Server,
    /// Print JSON (one document per command) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Databases: list, info, create, delete.
    #[command(subcommand)]
    Db(DbCommand),
    /// A new database that starts as SOURCE at --at (default: newest), sharing its
    /// pages (nothing is copied).
    Fork {
        source: String,
        name: String,
        /// A version number, an RFC 3339 time or a restore point's label.
        #[arg(long)]
        at: Option<String>,
    },
    /// Commit the state NAME had at --to as its newest version (undoable: restore
    /// to the version before).
    Restore {
        name: String,
        /// A version number, an RFC 3339 time or a restore point's label.
        #[arg(long)]
        to: String,
        /// How long to wait for a writer's lease, at most 60s.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Write NAME as it was at --at (default: newest) to a local SQLite file, while
    /// writers go on: the file is byte for byte that committed version.
    Export {
        name: String,
        file: std::path::PathBuf,
        /// A version number, an RFC 3339 time or a restore point's label.
        #[arg(long)]
        at: Option<String>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Create NAME from a local SQLite file, in one commit (validated first: a file that
    /// is not a sound SQLite database creates nothing; a WAL-mode file only with its
    /// -wal empty, and it becomes a rollback-journal database).
    Import {
        name: String,
        file: std::path::PathBuf,
    },
    /// A line per commit of NAME as it is published (NDJSON with --json), until
    /// --count commits were seen.
    Watch {
        name: String,
        #[arg(long)]
        count: Option<u64>,
    },
    /// One history GC pass on the server now, every tenant (the operator's token).
    Gc,
    /// Named points in a database's history, kept past the retention window.
    #[command(subcommand, name = "restore-point")]
    RestorePoint(PointCommand),
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// The tenant's databases.
    List,
    /// One database: version, size, history, lease.
    Info { name: String },
    /// An empty database.
    Create { name: String },
    /// Delete a database and its history (branches of it stay whole).
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum PointCommand {
    /// A restore point at --at (default: newest).
    Add {
        name: String,
        label: String,
        /// A version number or an RFC 3339 time.
        #[arg(long)]
        at: Option<String>,
    },
    /// The database's restore points, oldest first.
    List { name: String },
    /// Remove a restore point (its history goes with the next GC).
    Rm { name: String, label: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start: {e}")),
    };
    match runtime.block_on(commands::run(&cli)) {
        Ok(out) => {
            out.print(cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Says why on stderr; exit code 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("pagewire: {}", output::explain(e));
    ExitCode::FAILURE
}

//! The printed tables.

use std::sync::Mutex;

use pagewire_tests::{Server, postgres::TempPostgres};

use crate::{load::LoadReport, target::Target, workloads::Workload};

pub struct Table {
    labels: Vec<String>,
    local: Vec<bool>,
    rows: Vec<(String, &'static str, bool, Vec<f64>)>,
}

impl Table {
    pub fn new(targets: &[Target]) -> Self {
        Self {
            labels: targets.iter().map(Target::label).collect(),
            local: targets.iter().map(Target::is_local).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, w: &Workload, values: Vec<f64>) {
        self.rows
            .push((w.name.to_owned(), w.unit, w.higher_is_better, values));
    }

    /// The value of row `name` in column `label`.
    pub fn value(&self, name: &str, label: &str) -> Option<f64> {
        let col = self.labels.iter().position(|l| l == label)?;
        self.rows.iter().find(|r| r.0 == name).map(|r| r.3[col])
    }

    /// Issue 7's read-lease targets, from this run's rows.
    pub fn print_lease_targets(&self) {
        println!("\nread-lease targets (same run):");
        let v = |name: &str, label: &str| self.value(name, label);
        for label in self
            .labels
            .iter()
            .zip(&self.local)
            .filter(|(_, local)| !**local)
            .map(|(l, _)| l)
        {
            let (leased, unleased) = (
                v("replica point select, read lease (own tx)", label),
                v("replica point select, no read lease (own tx)", label),
            );
            let (wal, full) = (
                v("replica point select, read lease (own tx)", "local WAL"),
                v("replica point select, read lease (own tx)", "local FULL"),
            );
            if let (Some(a), Some(b), Some(w), Some(f)) = (leased, unleased, wal, full) {
                println!(
                    "- {label}: replica point selects {a:.0} ops/s with a read lease = {:.2}x local WAL ({w:.0}) / {:.2}x local FULL ({f:.0}) (target >= 0.5x); {b:.0} ops/s without = {:.2}x WAL; lease / no lease {:.1}x",
                    a / w,
                    a / f,
                    b / w,
                    a / b
                );
            }
            for stat in ["p50", "mean"] {
                let none = v(&format!("commit {stat}, no read-lease holders"), label);
                let eight = v(
                    &format!("commit {stat}, 8 read-lease holders (processes)"),
                    label,
                );
                if let (Some(n), Some(e)) = (none, eight) {
                    println!(
                        "- {label}: commit {stat} {e:.3} ms with 8 read-lease holders vs {n:.3} ms with none = {:.2}x (target <= 2x)",
                        e / n
                    );
                }
            }
        }
    }

    /// Markdown: each value, and for pagewire columns the ratio to local WAL
    /// and to local FULL (>1 means pagewire is better).
    pub fn print(&self) {
        let mut head = "| workload | unit |".to_string();
        for (l, local) in self.labels.iter().zip(&self.local) {
            head += &if *local {
                format!(" {l} |")
            } else {
                format!(" {l} | vs WAL / FULL |")
            };
        }
        println!("{head}");
        println!("|{}", "---|".repeat(head.matches('|').count() - 1));
        for (name, unit, higher, values) in &self.rows {
            let mut line = format!("| {name} | {unit} |");
            for (i, v) in values.iter().enumerate() {
                line += &format!(" {} |", fmt(*v));
                if !self.local[i] {
                    let ratio = |base: f64| if *higher { v / base } else { base / v };
                    line += &format!(" {:.2}x / {:.2}x |", ratio(values[0]), ratio(values[1]));
                }
            }
            println!("{line}");
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn print_load(r: &LoadReport, store: &str) {
    println!(
        "\nload ({store}): {} databases, {} concurrent clients, {} commits: {:.0} commits/s, p50 {:.2} ms, p99 {:.2} ms",
        r.databases, r.clients, r.commits, r.commits_per_s, r.p50_ms, r.p99_ms
    );
    if let (Some(rss), Some(pages)) = (r.rss_per_db_bytes, r.pages_per_db_bytes) {
        println!(
            "server memory per idle database: {:.1} KiB resident, of which {:.1} KiB page data (all versions), {:.1} KiB other",
            rss / 1024.0,
            pages / 1024.0,
            (rss - pages).max(0.0) / 1024.0
        );
    }
}

/// Lines of evidence the workloads leave (counters, lease states), printed after
/// the table.
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn note(line: String) {
    NOTES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

pub fn print_notes() {
    let notes = std::mem::take(&mut *NOTES.lock().unwrap_or_else(|e| e.into_inner()));
    if !notes.is_empty() {
        println!(
            "\nread-lease rows, what ran (PRAGMA pagewire_stats deltas of the measured connection, PRAGMA pagewire_read_lease, server GetMetrics):"
        );
        for n in notes {
            println!("- {n}");
        }
    }
}

/// A pagewire server on a throwaway PostgreSQL (None where PostgreSQL is not
/// available: the table then has no postgres column).
pub fn postgres_server() -> anyhow::Result<Option<(TempPostgres, Server)>> {
    let pg = match TempPostgres::start() {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("no PostgreSQL ({e:#}); the postgres column is left out");
            return Ok(None);
        }
    };
    let server = Server::start_with(&["--store", pg.url()])?;
    Ok(Some((pg, server)))
}

pub fn print_commit_sizes(rows: &[crate::pgdirect::CostRow]) {
    println!(
        "\n| pages per commit | pagewire on PostgreSQL ms/commit (commits/s) | direct tokio-postgres ms/commit (commits/s) | stack / direct | SQLite's own ms (local, no sync) | (stack - SQLite) / direct |"
    );
    println!("|---|---|---|---|---|---|");
    for (pages, stack_ms, stack_rate, direct_ms, direct_rate, sqlite_ms) in rows {
        println!(
            "| {pages} | {stack_ms:.2} ({stack_rate:.0}) | {direct_ms:.2} ({direct_rate:.0}) | {:.2}x | {sqlite_ms:.2} | {:.2}x |",
            stack_ms / direct_ms,
            (stack_ms - sqlite_ms) / direct_ms
        );
    }
}

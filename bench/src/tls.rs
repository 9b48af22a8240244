//! What TLS costs a fresh process: connect + first query (open a database on a new
//! process, read one row) against a plaintext server and a TLS server, both on the
//! memory store, certificates made for the run. Each figure is the median of `runs`
//! child processes; "process" is the child's whole wall time (start, load the VFS,
//! open, query, exit). Run: `target/release/pagewire-bench --tls-handshake`.

use std::time::Instant;

use pagewire_tests::Server;
use pagewire_tests::certs::TestCerts;

use crate::target::Target;
use crate::workloads::{Sizes, prepare_data_with};

/// (open + first query seconds, process wall seconds) of one child.
fn child(t: &Target, ca: Option<&str>, rows: i64) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.args(["--child-cold", &crate::child::spec(t), &rows.to_string()]);
    if let Some(ca) = ca {
        command.env("PAGEWIRE_CA", ca);
    }
    let out = command.output()?;
    let wall = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("child said {text:?}"))?;
    Ok((first, wall))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    let certs = TestCerts::new()?;
    crate::load_vfs()?;
    let plain = Server::start_with(&["--store", "memory"])?;
    let mut flags = vec!["--store".to_owned(), "memory".to_owned()];
    flags.extend(certs.server_flags(false));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tls = Server::start_with(&flags)?;
    let ca = certs.ca.display().to_string();
    let sizes = Sizes {
        rows: 5_000,
        point_selects: 0,
        seconds: 0.0,
    };
    println!("| server | connect + first query (median of {runs}) | whole process |");
    println!("|---|---|---|");
    for (label, server, ca) in [
        ("plaintext", &plain, None),
        ("TLS", &tls, Some(ca.as_str())),
    ] {
        let t = Target::Pagewire {
            url: server.url.clone(),
            label: label.into(),
            no_lease_url: None,
        };
        let params = ca.map_or(String::new(), |ca| format!("&ca={ca}"));
        prepare_data_with(&t, &sizes, &params)?;
        let (mut first, mut wall) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (f, w) = child(&t, ca, sizes.rows)?;
            first.push(f * 1000.0);
            wall.push(w * 1000.0);
        }
        println!(
            "| {label} | {:.2} ms | {:.2} ms |",
            median(first),
            median(wall)
        );
    }
    Ok(())
}

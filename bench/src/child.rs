//! The cold-read child: a fresh process that opens a database and queries it,
//! so nothing is cached anywhere on the client.

use std::time::Instant;

use rand::Rng;

use crate::target::Target;

/// How a target travels on the child's command line.
pub fn spec(t: &Target) -> String {
    match t {
        Target::LocalWal(dir) => format!("wal:{}", dir.display()),
        Target::LocalFull(dir) => format!("full:{}", dir.display()),
        Target::Pagewire { url, label, .. } => format!("pw:{label}:{url}"),
    }
}

pub fn parse(spec: &str) -> anyhow::Result<Target> {
    let (kind, rest) = spec
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("bad target {spec}"))?;
    Ok(match kind {
        "wal" => Target::LocalWal(rest.into()),
        "full" => Target::LocalFull(rest.into()),
        "pw" => {
            let (label, url) = rest
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("bad target {spec}"))?;
            Target::Pagewire {
                url: url.into(),
                label: label.into(),
                no_lease_url: None,
            }
        }
        _ => anyhow::bail!("bad target {spec}"),
    })
}

/// Prints "<open + first query seconds> <cold point selects per second>".
pub fn cold(spec: &str, rows: i64) -> anyhow::Result<()> {
    let t = parse(spec)?;
    if !t.is_local() {
        crate::load_vfs()?;
    }
    let mut rng = rand::rng();
    let started = Instant::now();
    let db = t.open_ro("data.db")?;
    let first: i64 = db.query_row(
        "select length(v) from kv where id = ?1",
        [rng.random_range(1..=rows)],
        |r| r.get(0),
    )?;
    anyhow::ensure!(first == 100);
    let reopen = started.elapsed().as_secs_f64();
    let n = 200;
    let started = Instant::now();
    for _ in 0..n {
        db.query_row(
            "select length(v) from kv where id = ?1",
            [rng.random_range(1..=rows)],
            |r| r.get::<_, i64>(0),
        )?;
    }
    println!("{reopen} {}", n as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

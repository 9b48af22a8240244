//! `pagewire export`: one committed version of a database, read page by page at that
//! version (writers go on meanwhile: every read names the version, which the server
//! keeps pinned while the reads go on), written to `FILE.partial`, synced, then
//! renamed to FILE. Memory: one batch of pages (about 1 MiB) at a time.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pagewire_proto::v1 as pb;
use pb::history_point::At;
use serde_json::json;

use crate::{
    connect::{Admin, Pages},
    output::Output,
};

/// Most bytes of pages asked for in one ReadPages (the server's limits may say less).
const BATCH_BYTES: u64 = 1 << 20;

pub async fn run(
    pages: &mut Pages,
    admin: &mut Admin,
    name: &str,
    file: &Path,
    at: Option<pb::HistoryPoint>,
    force: bool,
) -> anyhow::Result<Output> {
    if file.exists() && !force {
        bail!("{} exists; give --force to replace it", file.display());
    }
    let opened = pages
        .open(pb::OpenRequest {
            name: name.to_owned(),
            create: false,
            read_only: true,
            protocol: pagewire_proto::PROTOCOL_REVISION,
        })
        .await?
        .into_inner();
    let (at_version, at_unix_ms) = read_at(admin, name, at).await?;
    let begin = pb::BeginReadRequest {
        name: name.to_owned(),
        at_version,
        at_unix_ms,
        ..Default::default()
    };
    let state = pages
        .begin_read(begin)
        .await?
        .into_inner()
        .state
        .unwrap_or_default();
    let per_call = batch(opened.limits.unwrap_or_default(), state.page_size);
    let started = Instant::now();
    let partial = partial_path(file);
    let written = write(pages, name, &state, per_call, &partial).await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, file)
        .with_context(|| format!("renaming {} to {}", partial.display(), file.display()))?;
    sync_dir(file);
    let bytes = u64::from(state.page_size) * u64::from(state.page_count);
    let secs = started.elapsed().as_secs_f64();
    Ok(Output::one(vec![
        ("name", json!(name)),
        ("version", json!(state.version)),
        ("file", json!(file.display().to_string())),
        ("pages", json!(state.page_count)),
        ("bytes", json!(bytes)),
        ("seconds", json!((secs * 1000.0).round() / 1000.0)),
        ("mib_per_second", json!(rate(bytes, secs))),
    ]))
}

/// BeginRead's `at_version`/`at_unix_ms` for `at` (a restore point: its version).
async fn read_at(
    admin: &mut Admin,
    name: &str,
    at: Option<pb::HistoryPoint>,
) -> anyhow::Result<(u64, i64)> {
    Ok(match at.and_then(|p| p.at) {
        None => (0, 0),
        Some(At::Version(0)) => bail!("version 0 is the empty database; nothing to export"),
        Some(At::Version(v)) => (v, 0),
        Some(At::UnixMs(ms)) => (0, ms),
        Some(At::RestorePoint(label)) => {
            let request = pb::ListRestorePointsRequest {
                name: name.to_owned(),
            };
            let points = admin
                .list_restore_points(request)
                .await?
                .into_inner()
                .points;
            let point = points.iter().find(|p| p.label == label);
            let point = point.with_context(|| format!("{name} has no restore point {label:?}"))?;
            (point.version, 0)
        }
    })
}

/// Pages per ReadPages: about [`BATCH_BYTES`], within the server's limits.
fn batch(limits: pb::Limits, page_size: u32) -> u32 {
    let page = u64::from(page_size.max(512));
    let by_message = limits.max_message_bytes.saturating_sub(64 << 10) / page;
    let mut n = (BATCH_BYTES / page).min(by_message);
    if limits.max_pages_per_read > 0 {
        n = n.min(u64::from(limits.max_pages_per_read));
    }
    u32::try_from(n.max(1)).unwrap_or(1)
}

/// Reads every page of `state` into `path`, checking each answer, and syncs it.
async fn write(
    pages: &mut Pages,
    name: &str,
    state: &pb::DbState,
    per_call: u32,
    path: &Path,
) -> anyhow::Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, f);
    let bar = progress(u64::from(state.page_size) * u64::from(state.page_count));
    let mut next = 1u32;
    while next <= state.page_count {
        let last = next.saturating_add(per_call - 1).min(state.page_count);
        let request = pb::ReadPagesRequest {
            name: name.to_owned(),
            version: state.version,
            page_nos: (next..=last).collect(),
            incarnation: state.incarnation.clone(),
            tag: state.tag.clone(),
        };
        let answer = pages.read_pages(request).await?.into_inner();
        check(&answer, state, last - next + 1)?;
        for page in &answer.pages {
            out.write_all(page)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        bar.inc(u64::from(state.page_size) * u64::from(last - next + 1));
        next = last + 1;
    }
    bar.finish_and_clear();
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// The server's answer must be `count` pages of the version's page size.
fn check(answer: &pb::ReadPagesResponse, state: &pb::DbState, count: u32) -> anyhow::Result<()> {
    let size = state.page_size as usize;
    let whole = answer.pages.iter().all(|p| p.len() == size);
    if answer.page_size != state.page_size || answer.pages.len() != count as usize || !whole {
        bail!(
            "the server answered {} pages of {} bytes for {count} of {size}: not exporting it",
            answer.pages.len(),
            answer.page_size
        );
    }
    Ok(())
}

/// A bar with rate and ETA on a terminal; nothing otherwise.
pub fn progress(bytes: u64) -> ProgressBar {
    let bar = ProgressBar::new(bytes);
    let style = ProgressStyle::with_template(
        "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Makes the rename durable (best effort: not every file system can sync a directory).
fn sync_dir(file: &Path) {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub fn rate(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    (bytes as f64 / (1 << 20) as f64 / secs * 10.0).round() / 10.0
}

//! `pagewire import`: a local SQLite file becomes a new database, in one commit that
//! streams the file's pages as they are read (memory: a few batches of about 1 MiB).
//!
//! Nothing is created for a file that is not a whole, sound SQLite database
//! ([`check_file`]: the header, the size against the header's page count, no hot
//! journal, a WAL only when empty, then SQLite's own `quick_check`). A rollback-journal
//! file is read under SQLite's SHARED lock (a read transaction held for the whole
//! import), so no SQLite writer can change it meanwhile; for a WAL-mode file, whose
//! writers do not wait for readers, the file's size, change counter and `-wal` are
//! checked again before the trailer. A file that changed, a commit the server refuses
//! or any other failure after the database was created deletes it again.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, bail};
use pagewire_proto::{sqlite_header, v1 as pb};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    connect::{Admin, Pages},
    export::{progress, rate},
    output::Output,
};

/// Bytes of pages per PageBatch message (the server's limits may say less).
const BATCH_BYTES: u64 = 1 << 20;
/// Batches read ahead of the network.
const QUEUE: usize = 4;

/// What [`check_file`] found.
#[derive(Debug)]
pub struct SourceFile {
    path: PathBuf,
    page_size: u32,
    page_count: u32,
    /// The file is in WAL mode (its `-wal` empty): page 1 goes out in the
    /// rollback-journal format.
    wal: bool,
    /// Size and change counter, to tell a file that changed under the import.
    stamp: (u64, u32),
}

impl SourceFile {
    pub fn bytes(&self) -> u64 {
        u64::from(self.page_size) * u64::from(self.page_count)
    }
}

pub async fn run(
    pages: &mut Pages,
    admin: &mut Admin,
    name: &str,
    file: &Path,
) -> anyhow::Result<Output> {
    let (source, lock) = check_file(file)?;
    let started = Instant::now();
    let created = pb::CreateDatabaseRequest {
        name: name.to_owned(),
    };
    admin.create_database(created).await?;
    let committed = import(pages, name, &source).await;
    drop(lock);
    let version = match committed {
        Ok(v) => v,
        Err(e) => {
            let request = pb::DeleteDatabaseRequest {
                name: name.to_owned(),
            };
            if let Err(d) = admin.delete_database(request).await {
                return Err(e.context(format!("and deleting the new {name} failed: {d}")));
            }
            return Err(e.context(format!("nothing imported ({name} deleted again)")));
        }
    };
    let secs = started.elapsed().as_secs_f64();
    Ok(Output::one(vec![
        ("name", json!(name)),
        ("version", json!(version)),
        ("file", json!(file.display().to_string())),
        ("pages", json!(source.page_count)),
        ("bytes", json!(source.bytes())),
        ("from_wal", json!(source.wal)),
        ("seconds", json!((secs * 1000.0).round() / 1000.0)),
        ("mib_per_second", json!(rate(source.bytes(), secs))),
    ]))
}

/// Opens the new database, takes its write lease and sends the file as its first
/// version; returns that version.
async fn import(pages: &mut Pages, name: &str, source: &SourceFile) -> anyhow::Result<u64> {
    let opened = pages
        .open(pb::OpenRequest {
            name: name.to_owned(),
            create: false,
            read_only: false,
            protocol: pagewire_proto::PROTOCOL_REVISION,
        })
        .await?
        .into_inner();
    let lim = opened.limits.unwrap_or_default();
    if lim.max_commit_bytes > 0 && source.bytes() > lim.max_commit_bytes {
        bail!(
            "{} is {} bytes; this server takes commits of at most {} bytes (its --max-commit-bytes)",
            source.path.display(),
            source.bytes(),
            lim.max_commit_bytes
        );
    }
    let state = opened.state.unwrap_or_default();
    let lease = pages
        .acquire_lease(pb::AcquireLeaseRequest {
            name: name.to_owned(),
            client_id: format!("pagewire import:{}", std::process::id()),
            incarnation: state.incarnation.clone(),
            lease_id: rand::random::<[u8; 16]>().to_vec().into(),
        })
        .await?
        .into_inner();
    let header = pb::CommitHeader {
        name: name.to_owned(),
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
        base_version: state.version,
        commit_id: rand::random::<[u8; 16]>().to_vec().into(),
        page_size: source.page_size,
        page_count: source.page_count,
        incarnation: state.incarnation.clone(),
        base_tag: state.tag.clone(),
    };
    let per_batch = batch_pages(&lim, source.page_size);
    let (tx, rx) = mpsc::channel(QUEUE);
    let reader = {
        let path = source.path.clone();
        let (size, count, wal, stamp) = (
            source.page_size,
            source.page_count,
            source.wal,
            source.stamp,
        );
        std::thread::spawn(move || {
            send_pages(&path, size, count, wal, stamp, per_batch, header, tx)
        })
    };
    let sent = pages.commit(ReceiverStream::new(rx)).await;
    // The reader's verdict first: a file that changed ends the stream without its
    // trailer, so the server's answer to that is not the news.
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the file reader stopped"))?;
    read?;
    let answer = sent?.into_inner();
    let release = pb::ReleaseLeaseRequest {
        name: name.to_owned(),
        lease_id: lease.lease_id,
        epoch: lease.epoch,
    };
    let _ = pages.release_lease(release).await;
    Ok(answer.version)
}

/// Pages per batch: about [`BATCH_BYTES`], and well within one gRPC message.
fn batch_pages(limits: &pb::Limits, page_size: u32) -> u32 {
    let page = u64::from(page_size.max(512));
    let by_message = limits.max_message_bytes.saturating_sub(64 << 10) / page;
    let n = (BATCH_BYTES / page).min(by_message).max(1);
    u32::try_from(n).unwrap_or(1)
}

/// The commit stream, read from the file as the network takes it: the header, every
/// page in order, and the trailer only if the file is still as it was checked.
#[allow(clippy::too_many_arguments)]
fn send_pages(
    path: &Path,
    page_size: u32,
    page_count: u32,
    wal: bool,
    stamp: (u64, u32),
    per_batch: u32,
    header: pb::CommitHeader,
    tx: mpsc::Sender<pb::CommitRequest>,
) -> anyhow::Result<()> {
    use pb::commit_request::Part;
    let send = |part: Part| {
        tx.blocking_send(pb::CommitRequest { part: Some(part) })
            .map_err(|_| anyhow::anyhow!("the server stopped taking the commit"))
    };
    // Closing `f` drops SQLite's lock on the file (POSIX locks are per process), so it
    // stays open until every page is read and checked: the thread's end.
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    send(Part::Header(header))?;
    let bar = progress(u64::from(page_size) * u64::from(page_count));
    let mut next = 1u32;
    while next <= page_count {
        let last = next.saturating_add(per_batch - 1).min(page_count);
        let mut batch = Vec::with_capacity((last - next + 1) as usize);
        for page_no in next..=last {
            let mut data = vec![0u8; page_size as usize];
            f.read_exact(&mut data)
                .with_context(|| format!("reading page {page_no} of {}", path.display()))?;
            if page_no == 1 && wal {
                sqlite_header::set_rollback_format(&mut data);
            }
            batch.push(pb::Page {
                page_no,
                data: data.into(),
            });
        }
        send(Part::Pages(pb::PageBatch { pages: batch }))?;
        bar.inc(u64::from(page_size) * u64::from(last - next + 1));
        next = last + 1;
    }
    bar.finish_and_clear();
    if file_stamp(&mut f)? != stamp || (wal && wal_in_use(path)) {
        bail!(
            "{} changed while it was imported: nothing imported; import a copy, or stop its writers",
            path.display()
        );
    }
    send(Part::Trailer(pb::CommitTrailer {
        pages_sent: page_count,
    }))
}

/// Size and change counter, read again from the file.
fn file_stamp(f: &mut File) -> anyhow::Result<(u64, u32)> {
    let size = f.metadata()?.len();
    let mut header = [0u8; sqlite_header::HEADER_LEN];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut header)?;
    Ok((size, sqlite_header::change_counter(&header)))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A `-wal` with frames in it (not missing, not empty).
fn wal_in_use(path: &Path) -> bool {
    std::fs::metadata(sibling(path, "-wal")).is_ok_and(|m| m.len() > 0)
}

/// A `-journal` SQLite would roll back (there, not empty, its header not zeroed).
fn hot_journal(path: &Path) -> bool {
    let mut start = [0u8; 8];
    File::open(sibling(path, "-journal"))
        .and_then(|mut j| j.read_exact(&mut start))
        .is_ok_and(|()| start != [0; 8])
}

/// Checks that `path` is a whole SQLite database this server can take, and holds
/// what keeps it unchanged while it is read (for a rollback-journal file, an open
/// read transaction: SQLite's SHARED lock).
pub fn check_file(path: &Path) -> anyhow::Result<(SourceFile, Connection)> {
    let shown = path.display();
    let mut f = File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let len = f.metadata()?.len();
    let mut header = [0u8; sqlite_header::HEADER_LEN];
    if len < sqlite_header::HEADER_LEN as u64 || f.read_exact(&mut header).is_err() {
        bail!("{shown} is not an SQLite database ({len} bytes, shorter than its header)");
    }
    if !header.starts_with(sqlite_header::MAGIC) {
        bail!("{shown} is not an SQLite database (it does not start with \"SQLite format 3\")");
    }
    let Some(page_size) = sqlite_header::page_size(&header) else {
        bail!(
            "{shown} is damaged: its header gives page size {}",
            sqlite_header::raw_page_size(&header)
        );
    };
    let page_count = whole_pages(&shown.to_string(), len, page_size, &header)?;
    let wal = match sqlite_header::file_format(&header) {
        (1, 1) => false,
        (2, 2) if wal_in_use(path) => bail!(
            "{shown} is in WAL mode and its -wal holds commits not yet in the file: \
             checkpoint it first (sqlite3 {shown} 'PRAGMA wal_checkpoint(TRUNCATE)')"
        ),
        (2, 2) => true,
        (w, r) => bail!("{shown} has file format bytes {w}/{r}, which this SQLite cannot read"),
    };
    if hot_journal(path) {
        bail!(
            "{shown} has a hot journal (an interrupted transaction): open it once with sqlite3 \
             to roll it back, then import it"
        );
    }
    // Closing a descriptor of the file drops every POSIX lock this process holds on
    // it, SQLite's too: ours is closed before SQLite takes its lock.
    drop(f);
    let conn = sound(path, wal)?;
    let stamp = (len, sqlite_header::change_counter(&header));
    let source = SourceFile {
        path: path.to_owned(),
        page_size,
        page_count,
        wal,
        stamp,
    };
    Ok((source, conn))
}

/// The page count of a file of `len` bytes: whole pages, as many as a valid header
/// page count says, and no more than a database can have.
fn whole_pages(shown: &str, len: u64, page_size: u32, header: &[u8]) -> anyhow::Result<u32> {
    // (Not `is_multiple_of`: the MSRV is 1.85.)
    if len / u64::from(page_size) * u64::from(page_size) != len {
        bail!(
            "{shown} is damaged or truncated: {len} bytes is not a whole number of {page_size}-byte pages"
        );
    }
    let pages = u32::try_from(len / u64::from(page_size))
        .ok()
        .filter(|n| *n < u32::MAX);
    let Some(pages) = pages else {
        bail!("{shown} has more pages than a database can have");
    };
    if let Some(said) = sqlite_header::page_count(header)
        && said != pages
    {
        bail!(
            "{shown} is damaged or truncated: its header says {said} pages, the file holds {pages}"
        );
    }
    Ok(pages)
}

/// SQLite's `quick_check` says ok. For a rollback-journal file the connection stays in
/// a read transaction (SHARED lock) until dropped; a WAL-mode file is opened immutable
/// (reading it needs no `-shm` and creates nothing beside it).
fn sound(path: &Path, wal: bool) -> anyhow::Result<Connection> {
    let shown = path.display();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = if wal {
        let uri = format!("file:{}?immutable=1", uri_path(path));
        Connection::open_with_flags_and_vfs(uri, flags, "unix")
    } else {
        Connection::open_with_flags_and_vfs(path, flags, "unix")
    }
    .with_context(|| format!("SQLite cannot open {shown}"))?;
    if !wal {
        conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .with_context(|| format!("SQLite cannot read {shown}"))?;
    }
    let verdict: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .with_context(|| format!("{shown} is damaged: SQLite cannot check it"))?;
    if verdict != "ok" {
        bail!("{shown} is damaged: SQLite's quick_check says {verdict:?}");
    }
    Ok(conn)
}

/// `path` for a `file:` URI: `?` and `#` (and `%`) escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

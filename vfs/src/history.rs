//! The history pragmas: branch, roll back and mark points of the open database with
//! the SQLite connection alone (an agent framework needs nothing else). Each is one
//! Admin call with this connection's server, token and TLS settings; the server wants
//! the `write` role. Every answer is one text row.
//!
//! - `pagewire_fork='name'` (or `'name@V'`: at version V): a branch of this database,
//!   sharing its pages; answers `name=... version=1`.
//! - `pagewire_restore='V'` (a version) or `'label'` (a restore point): makes that
//!   state the newest again as a new version; answers `version=N restored_from=V
//!   pages=K`. Refused inside a write transaction of this process (the restore takes
//!   the write lease: this process gives its own back first). Later reads of this
//!   connection see at least the restored version.
//! - `pagewire_restore_point='label'`: a restore point at the newest version;
//!   `pagewire_restore_points`: every point as `label=version` words, oldest first;
//!   `pagewire_drop_restore_point='label'`.
//!
//! An older server answers UNIMPLEMENTED: the message says to upgrade the server.

use std::time::Duration;

use pagewire_proto::v1::{self as pb, history_point::At};
use sqlite_plugin::vars;
use sqlite_plugin::vfs::PragmaErr;
use tonic::Code;

use crate::client::Admin;
use crate::error::VfsError;
use crate::main_file::MainFile;

/// Longest a restore may take here: waiting for another writer's lease (the server's
/// default, 5 s) and writing what changed since the restored version.
const RESTORE_TIME: Duration = Duration::from_secs(120);

/// Handles `name` if it is a history pragma (`None` otherwise).
pub fn handle(
    file: &mut MainFile,
    name: &str,
    arg: Option<&str>,
) -> Option<Result<Option<String>, PragmaErr>> {
    let answer = match (name, arg) {
        ("pagewire_fork", Some(arg)) => fork(file, arg),
        ("pagewire_restore", Some(arg)) => restore(file, arg),
        ("pagewire_restore_point", Some(arg)) => create_point(file, arg),
        ("pagewire_restore_points", None) => list_points(file),
        ("pagewire_drop_restore_point", Some(arg)) => drop_point(file, arg),
        (
            "pagewire_fork"
            | "pagewire_restore"
            | "pagewire_restore_point"
            | "pagewire_drop_restore_point",
            None,
        ) => Err(usage(&format!("{name} needs a value: PRAGMA {name}='...'"))),
        _ => return None,
    };
    Some(answer.map(Some))
}

fn usage(msg: &str) -> PragmaErr {
    PragmaErr::Fail(vars::SQLITE_ERROR, Some(format!("pagewire: {msg}")))
}

/// A failed call as SQLite's error, saying which side to upgrade when it is the server.
fn failed(what: &str, e: VfsError) -> PragmaErr {
    let msg = match &e {
        // The store cannot (its message says so): nothing to upgrade.
        VfsError::Status(s) if s.code() == Code::Unimplemented && s.message().contains("store") => {
            format!("{what}: {}", s.message())
        }
        // An older server, without the call.
        VfsError::Status(s) if s.code() == Code::Unimplemented => format!(
            "{what}: the pagewire server does not have this call ({}): upgrade the server",
            s.message()
        ),
        VfsError::Status(s) => format!("{what}: {}", s.message()),
        other => format!("{what}: {other}"),
    };
    let code = match &e {
        VfsError::Status(s) if s.code() == Code::Aborted => vars::SQLITE_BUSY,
        _ => vars::SQLITE_ERROR,
    };
    PragmaErr::Fail(code, Some(format!("pagewire: {msg}")))
}

/// Runs one Admin call `what` for `file`'s database, within `extra` past the call
/// timeout; its failure as SQLite's error (`doing` names it).
fn call<M, T, Fut>(
    file: &MainFile,
    what: &'static str,
    doing: &str,
    extra: Duration,
    msg: M,
    rpc: impl FnOnce(Admin, tonic::Request<M>) -> Fut + Send + 'static,
) -> Result<T, PragmaErr>
where
    M: Send + 'static,
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
{
    let client = file.db.client.clone();
    let limit = client.call_timeout() + extra;
    let done = file.db.rt().block_on(client.admin(what, limit, msg, rpc));
    done.map_err(rt_failed)?.map_err(|e| failed(doing, e))
}

/// A version number, or a restore point's label.
fn point(arg: &str) -> pb::HistoryPoint {
    let arg = arg.trim();
    let at = match arg.parse::<u64>() {
        Ok(v) => At::Version(v),
        Err(_) => At::RestorePoint(arg.to_owned()),
    };
    pb::HistoryPoint { at: Some(at) }
}

fn fork(file: &mut MainFile, arg: &str) -> Result<String, PragmaErr> {
    let (name, at) = match arg.rsplit_once('@') {
        Some((name, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            (name, Some(point(v)))
        }
        _ => (arg, None),
    };
    let req = pb::ForkDatabaseRequest {
        source: file.db.name().to_owned(),
        name: name.to_owned(),
        at,
    };
    let info = call(
        file,
        "ForkDatabase",
        "fork",
        Duration::ZERO,
        req,
        |mut c, r| async move { c.fork_database(r).await },
    )?;
    let version = info.state.map_or(0, |s| s.version);
    tracing::info!(db = %file.db.name(), branch = %info.name, version, "forked");
    Ok(format!("name={} version={version}", info.name))
}

fn restore(file: &mut MainFile, arg: &str) -> Result<String, PragmaErr> {
    if file.writing() || file.db.locks.lock().reserved() {
        return Err(usage(
            "pagewire_restore inside a write transaction: COMMIT or ROLLBACK first",
        ));
    }
    // The restore takes the write lease: give back this process's, if it has it.
    file.db.release_lease();
    let req = pb::RestoreDatabaseRequest {
        name: file.db.name().to_owned(),
        to: Some(point(arg)),
        wait_ms: 0,
    };
    let done = call(
        file,
        "RestoreDatabase",
        "restore",
        RESTORE_TIME,
        req,
        |mut c, r| async move { c.restore_database(r).await },
    )?;
    file.min_version = file.min_version.max(done.version);
    tracing::info!(db = %file.db.name(), from = done.restored_from, version = done.version, "restored");
    Ok(format!(
        "version={} restored_from={} pages={}",
        done.version, done.restored_from, done.pages_written
    ))
}

fn create_point(file: &mut MainFile, label: &str) -> Result<String, PragmaErr> {
    let req = pb::CreateRestorePointRequest {
        name: file.db.name().to_owned(),
        label: label.to_owned(),
        at: None,
    };
    let p = call(
        file,
        "CreateRestorePoint",
        "restore point",
        Duration::ZERO,
        req,
        |mut c, r| async move { c.create_restore_point(r).await },
    )?;
    Ok(format!("label={} version={}", p.label, p.version))
}

fn list_points(file: &mut MainFile) -> Result<String, PragmaErr> {
    let req = pb::ListRestorePointsRequest {
        name: file.db.name().to_owned(),
    };
    let list = call(
        file,
        "ListRestorePoints",
        "restore points",
        Duration::ZERO,
        req,
        |mut c, r| async move { c.list_restore_points(r).await },
    )?;
    let words: Vec<String> = list
        .points
        .iter()
        .map(|p| format!("{}={}", p.label, p.version))
        .collect();
    Ok(words.join(" "))
}

fn drop_point(file: &mut MainFile, label: &str) -> Result<String, PragmaErr> {
    let req = pb::DeleteRestorePointRequest {
        name: file.db.name().to_owned(),
        label: label.to_owned(),
    };
    call(
        file,
        "DeleteRestorePoint",
        "drop restore point",
        Duration::ZERO,
        req,
        |mut c, r| async move { c.delete_restore_point(r).await },
    )?;
    Ok(format!("dropped={label}"))
}

/// The runtime could not run the call (shut down, or this is a forked child).
fn rt_failed(e: VfsError) -> PragmaErr {
    PragmaErr::Fail(vars::SQLITE_IOERR, Some(format!("pagewire: {e}")))
}

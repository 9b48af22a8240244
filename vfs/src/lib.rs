//! pagewire's SQLite VFS: the main database file lives in a pagewire server.
//!
//! Map of the crate:
//! - `vfs`        the sqlite-plugin `Vfs` impl: a guard and a call per method
//! - `main_file`  one connection's main file: locks, pinned version, commit point
//! - `buffer`     a transaction's write buffer (bytes over the base version)
//! - `commit`     the commit: the new image from the buffer, the Commit call's plan,
//!   its answer checked, the cache moved
//! - `database`   per-process state of one database: lock table, committed state,
//!   replaced or not, the read path; holds the write lease, cache and Watch view
//! - `lease`      the write lease rules: obtain, heartbeat, idle release, deadlines
//! - `state`      shared state types: `DbState`, `DbKey`, `ServerSettings`,
//!   `lease_deadline` (every server reply checked where it is decoded)
//! - `cache`      the page cache of one database (LRU, bounded in bytes)
//! - `watch`      the Watch stream and read lease: read transactions at no RPC
//!   (`watch/view.rs` the state and its rules, `watch/task.rs` the stream task)
//! - `readahead`  sequential-read detection, for batched page fetches
//! - `locks`      SQLite lock levels between connections of this process
//! - `client`     gRPC calls, deadlines, retries, RPC counters
//! - `status`     what a gRPC status means to the VFS (retryable, busy, definite)
//! - `runtime`    the tokio runtime and channel pool (rebuilt after fork)
//! - `config`     settings from `PAGEWIRE_*` and URI parameters
//! - `pragma`     pragmas the VFS answers (WAL and synchronous=OFF refused)
//! - `local_file` journals and temp files, kept in client memory
//!
//! Registration: [`register_with`] (any SQLite), [`register`] (linked SQLite, feature
//! `static`). The C entry points (`sqlite3_pagewirevfs_init` for `.load`,
//! `pagewire_vfs_register` for the static shell) and the extension's log set-up are the
//! thin crate `vfs/ext` (`pagewire-vfs-ext`), which builds `libpagewire_vfs.so` / `.a`:
//! this crate has no `extern "C"` entry point and installs no global log subscriber.

mod buffer;
mod cache;
mod client;
mod commit;
pub mod config;
mod database;
mod error;
mod history;
mod lease;
mod local_file;
mod locks;
mod main_file;
mod pragma;
mod readahead;
mod runtime;
mod state;
mod status;
mod vfs;
mod watch;

/// The page-1 header fields the commit path reads and stamps (shared with the server).
use pagewire_proto::sqlite_header as header;

use std::ffi::CString;
use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

use sqlite_plugin::logger::{SqliteLogLevel, SqliteLogger};

pub use config::Config;
pub use error::VfsError;
pub use runtime::{TlsFiles, endpoint};
pub use vfs::PagewireVfs;

/// The name the VFS registers under.
pub const VFS_NAME: &str = "pagewire";

static REGISTERED: AtomicBool = AtomicBool::new(false);
static SQLITE_LOG: OnceLock<SqliteLogger> = OnceLock::new();

/// Reports an error on stderr (through tracing, filtered by `PAGEWIRE_LOG`) and
/// to SQLite's error log (`sqlite3_log`).
pub(crate) fn log_error(msg: &str) {
    // A filename or URL in a message may carry a token.
    let msg = &config::redact(msg);
    tracing::warn!("pagewire: {msg}");
    if let Some(log) = SQLITE_LOG.get() {
        for line in sqlite_log_lines(msg) {
            log.log(SqliteLogLevel::Error, &line);
        }
    }
}

/// Most bytes of a message in one `sqlite3_log` line: SQLite cuts what it renders at 209
/// bytes (3.40, Debian 12's; 699 in newer ones), so longer messages go in pieces.
const SQLITE_LOG_PIECE: usize = 180;

/// `msg` as `sqlite3_log` lines: `pagewire: <start>`, then `pagewire: ... <more>`. Each is
/// a printf format for SQLite (`%` doubled: text from the server must never be read as
/// directives, which would read and write through arguments that are not there), with
/// no NUL (CString would refuse it).
fn sqlite_log_lines(msg: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = msg;
    while lines.is_empty() || !rest.is_empty() {
        let mut end = rest.len().min(SQLITE_LOG_PIECE);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, more) = rest.split_at(end);
        let prefix = if lines.is_empty() {
            "pagewire: "
        } else {
            "pagewire: ... "
        };
        lines.push(format!(
            "{prefix}{}",
            piece.replace('%', "%%").replace('\0', " ")
        ));
        rest = more;
    }
    lines
}

/// Registers the `pagewire` VFS, once per process (later calls return `Ok`): reads the
/// configuration from `PAGEWIRE_*`, shows it to `on_config` (the extension sets up its
/// log output there; a Rust program that links this crate keeps its own), builds the VFS
/// and hands it to `registrar`: sqlite-plugin's `register_static` (linked SQLite) or
/// `register_dynamic` (a `.load`ed extension). Returns a message on a bad configuration or a refused
/// registration, and then a later call may try again.
pub fn register_with(
    on_config: impl FnOnce(&Config),
    registrar: impl FnOnce(CString, PagewireVfs) -> Result<SqliteLogger, i32>,
) -> Result<(), String> {
    // Held for the whole registration: a second caller (another thread) returns only
    // once the VFS is registered, never while the first is still registering it.
    static REGISTERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _registering = REGISTERING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if REGISTERED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let registered = Config::from_env()
        .map_err(|e| format!("pagewire: {e}"))
        .and_then(|config| {
            on_config(&config);
            let name = CString::new(VFS_NAME).map_err(|e| e.to_string())?;
            registrar(name, PagewireVfs::new(config)).map_err(|code| {
                format!("pagewire: registering the VFS failed (SQLite code {code})")
            })
        });
    match registered {
        Ok(logger) => {
            let _ = SQLITE_LOG.set(logger);
            Ok(())
        }
        Err(msg) => {
            REGISTERED.store(false, Ordering::SeqCst);
            Err(msg)
        }
    }
}

/// Registers the `pagewire` VFS with the SQLite linked into this binary (rusqlite with
/// `bundled`, a C program linking libsqlite3): `register_with` through sqlite-plugin's
/// `register_static`. Installs no log subscriber: the VFS logs through `tracing`, so the
/// program's own subscriber (if any) sees its messages.
#[cfg(feature = "static")]
pub fn register(make_default: bool) -> Result<(), String> {
    register_with(
        |_| {},
        |name, vfs| {
            let opts = sqlite_plugin::vfs::RegisterOpts { make_default };
            sqlite_plugin::vfs::register_static(name, vfs, opts)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_log_lines_are_short_text_formats() {
        assert_eq!(sqlite_log_lines(""), ["pagewire: "]);
        assert_eq!(
            sqlite_log_lines("50% off: %s%n\0"),
            ["pagewire: 50%% off: %%s%%n "]
        );
        let long = format!("{}é{}", "a".repeat(179), "b".repeat(400));
        let lines = sqlite_log_lines(&long);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].ends_with(&"a".repeat(179)),
            "a piece ends on a char boundary"
        );
        assert!(lines[1].starts_with("pagewire: ... é"));
        let joined: String = lines
            .iter()
            .map(|l| {
                l.strip_prefix("pagewire: ... ")
                    .or(l.strip_prefix("pagewire: "))
                    .unwrap_or(l)
            })
            .collect();
        assert_eq!(joined, long);
        assert!(
            lines
                .iter()
                .all(|l| l.len() <= SQLITE_LOG_PIECE + "pagewire: ... ".len())
        );
    }
}

//! pagewire's SQLite VFS: the main database file lives in a pagewire server.
//!
//! Map of the crate:
//! - `vfs`        the sqlite-plugin `Vfs` impl: a guard and a call per method
//! - `main_file`  one connection's main file: locks, pinned version, commit point
//! - `buffer`     a transaction's write buffer (bytes over the base version)
//! - `database`   per-process state of one database: lock table, write lease,
//!   committed state, page cache
//! - `cache`      the page cache of one database (LRU, bounded in bytes)
//! - `watch`      the Watch stream and read lease: read transactions at no RPC
//! - `readahead`  sequential-read detection, for batched page fetches
//! - `locks`      SQLite lock levels between connections of this process
//! - `client`     gRPC calls, retries, RPC counters
//! - `runtime`    the tokio runtime and channel pool (rebuilt after fork)
//! - `config`     settings from `PAGEWIRE_*` and URI parameters
//! - `pragma`     pragmas the VFS answers (WAL and synchronous=OFF refused)
//! - `header`     the page-1 header fields the commit path reads and stamps
//! - `local_file` journals and temp files, kept in client memory
//!
//! Entry points: `sqlite3_pagewirevfs_init` (`.load`, feature `dynamic`) and
//! `register` / `pagewire_vfs_register` (linked SQLite, feature `static`).

mod buffer;
mod cache;
mod client;
pub mod config;
mod database;
mod error;
mod header;
mod local_file;
mod locks;
mod main_file;
mod pragma;
mod readahead;
mod runtime;
mod vfs;
mod watch;

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

use sqlite_plugin::logger::{SqliteLogLevel, SqliteLogger};

pub use config::Config;
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

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Reads the configuration and builds the VFS, once per process.
fn prepare() -> Result<Option<PagewireVfs>, String> {
    if REGISTERED.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let config = Config::from_env().map_err(|e| {
        REGISTERED.store(false, Ordering::SeqCst);
        format!("pagewire: {e}")
    })?;
    init_logging(&config);
    Ok(Some(PagewireVfs::new(config)))
}

fn finish(result: Result<SqliteLogger, i32>) -> Result<(), String> {
    match result {
        Ok(logger) => {
            let _ = SQLITE_LOG.set(logger);
            Ok(())
        }
        Err(code) => {
            REGISTERED.store(false, Ordering::SeqCst);
            Err(format!(
                "pagewire: registering the VFS failed (SQLite code {code})"
            ))
        }
    }
}

/// Registers the `pagewire` VFS with the SQLite linked into this binary.
/// Idempotent within a process. Returns a message on a bad configuration.
#[cfg(feature = "static")]
pub fn register(make_default: bool) -> Result<(), String> {
    let Some(vfs) = prepare()? else { return Ok(()) };
    let name = std::ffi::CString::new(VFS_NAME).map_err(|e| e.to_string())?;
    finish(sqlite_plugin::vfs::register_static(
        name,
        vfs,
        sqlite_plugin::vfs::RegisterOpts { make_default },
    ))
}

/// C entry point for binaries linking SQLite statically (the static shell):
/// registers `pagewire` as the default VFS. Returns SQLITE_OK or SQLITE_ERROR
/// (the reason is printed on stderr).
#[cfg(feature = "static")]
#[unsafe(no_mangle)]
pub extern "C" fn pagewire_vfs_register() -> std::ffi::c_int {
    match std::panic::catch_unwind(|| register(true)) {
        Ok(Ok(())) => sqlite_plugin::vars::SQLITE_OK,
        Ok(Err(msg)) => {
            eprintln!("{msg}");
            sqlite_plugin::vars::SQLITE_ERROR
        }
        Err(_) => sqlite_plugin::vars::SQLITE_ERROR,
    }
}

/// Extension entry point: `.load libpagewire_vfs` (SQLite derives this name from
/// the file name). Registers `pagewire` as the default VFS and stays loaded.
///
/// # Safety
/// Called by SQLite with a valid `sqlite3_api_routines` pointer.
#[cfg(feature = "dynamic")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_pagewirevfs_init(
    _db: *mut std::ffi::c_void,
    pz_err_msg: *mut *const std::ffi::c_char,
    p_api: *mut sqlite_plugin::sqlite3_api_routines,
) -> std::ffi::c_int {
    use sqlite_plugin::vars;
    let result = std::panic::catch_unwind(|| -> Result<(), String> {
        let Some(vfs) = prepare()? else { return Ok(()) };
        let name = std::ffi::CString::new(VFS_NAME).map_err(|e| e.to_string())?;
        let opts = sqlite_plugin::vfs::RegisterOpts { make_default: true };
        // SAFETY: SQLite passes its api routines to extension entry points.
        finish(unsafe { sqlite_plugin::vfs::register_dynamic(p_api, name, vfs, opts) })
    });
    match result {
        Ok(Ok(())) => vars::SQLITE_OK_LOAD_PERMANENTLY,
        Ok(Err(msg)) => {
            // SAFETY: p_api is valid (above); pz_err_msg is SQLite's out pointer.
            unsafe {
                if let (Some(api), false) = (p_api.as_ref(), pz_err_msg.is_null())
                    && let Ok(api) = sqlite_plugin::vfs::SqliteApi::new_dynamic(api)
                {
                    let _ = api.mprintf(&msg, pz_err_msg);
                }
            }
            vars::SQLITE_ERROR
        }
        Err(_) => vars::SQLITE_ERROR,
    }
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

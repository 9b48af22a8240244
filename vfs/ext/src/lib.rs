//! The pagewire VFS as a SQLite extension: the C entry points and the extension's log
//! output, nothing else (the VFS itself is the `pagewire-vfs` crate).
//!
//! - `sqlite3_pagewirevfs_init` (feature `dynamic`, the default): `.load libpagewire_vfs`
//!   from the sqlite3 shell, Python's `sqlite3`, any binding.
//! - `pagewire_vfs_register` (feature `static`): for a binary that links SQLite itself
//!   (`scripts/build-static-sqlite.sh` builds the static shell with it).
//!
//! Both register `pagewire` as the default VFS and send the VFS's `tracing` output to
//! stderr, filtered by `PAGEWIRE_LOG` (the extension is the program's only Rust, so it
//! owns the log subscriber; a Rust program linking `pagewire-vfs` keeps its own).

use std::ffi::c_int;

use sqlite_plugin::vars;
use sqlite_plugin::vfs::RegisterOpts;

/// Log lines on stderr, as `PAGEWIRE_LOG` says (checked when the configuration was read).
fn init_logging(config: &vfs::Config) {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_new(&config.log) else {
        return;
    };
    // try_init: a host that already has a subscriber keeps it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

const AS_DEFAULT: RegisterOpts = RegisterOpts { make_default: true };

/// C entry point for binaries linking SQLite statically (the static shell): registers
/// `pagewire` as the default VFS. Returns SQLITE_OK or SQLITE_ERROR (the reason is printed
/// on stderr).
#[cfg(feature = "static")]
#[unsafe(no_mangle)]
pub extern "C" fn pagewire_vfs_register() -> c_int {
    let registered = std::panic::catch_unwind(|| {
        vfs::register_with(init_logging, |name, pagewire| {
            sqlite_plugin::vfs::register_static(name, pagewire, AS_DEFAULT)
        })
    });
    match registered {
        Ok(Ok(())) => vars::SQLITE_OK,
        Ok(Err(msg)) => {
            eprintln!("{msg}");
            vars::SQLITE_ERROR
        }
        Err(_) => vars::SQLITE_ERROR,
    }
}

/// Extension entry point: `.load libpagewire_vfs` (SQLite derives this name from the file
/// name). Registers `pagewire` as the default VFS and stays loaded.
///
/// # Safety
/// Called by SQLite with a valid `sqlite3_api_routines` pointer.
#[cfg(feature = "dynamic")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_pagewirevfs_init(
    _db: *mut std::ffi::c_void,
    pz_err_msg: *mut *const std::ffi::c_char,
    p_api: *mut sqlite_plugin::sqlite3_api_routines,
) -> c_int {
    let registered = std::panic::catch_unwind(|| {
        vfs::register_with(init_logging, |name, pagewire| {
            // SAFETY: SQLite passes its api routines to extension entry points.
            unsafe { sqlite_plugin::vfs::register_dynamic(p_api, name, pagewire, AS_DEFAULT) }
        })
    });
    match registered {
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

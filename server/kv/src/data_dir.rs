//! The data directory: what every embedded engine needs of it. One server per
//! directory (`LOCK`, holding the pid, locked for the life of the process) and plain
//! errors for a directory that cannot be used.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "LOCK";

/// Why a data directory cannot be used, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the data directory {0} is a file, not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot use the data directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the data directory {path} is in use by another pagewire server ({holder}); \
         one server per data directory"
    )]
    InUse { path: PathBuf, holder: String },
    #[error("cannot open the data file {path}: {message}; the file was not changed")]
    DataFile { path: PathBuf, message: String },
    #[error("cannot move the data in {path} to the current engine: {message}")]
    Migration { path: PathBuf, message: String },
}

pub(crate) fn dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Directory {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` when missing and locks `dir/LOCK` for this process, writing its pid
/// there: the lock is held as long as the returned file is.
pub(crate) fn lock(dir: &Path) -> Result<File, OpenError> {
    if dir.exists() && !dir.is_dir() {
        return Err(OpenError::NotADirectory(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(dir_error(dir))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(dir_error(dir))?;
    if let Err(e) = file.try_lock() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let holder = match pid.trim() {
            "" => format!("{e}"),
            pid => format!("pid {pid}"),
        };
        return Err(OpenError::InUse {
            path: dir.to_owned(),
            holder,
        });
    }
    file.set_len(0).map_err(dir_error(dir))?;
    file.rewind().map_err(dir_error(dir))?;
    write!(file, "{}", std::process::id()).map_err(dir_error(dir))?;
    file.sync_all().map_err(dir_error(dir))?;
    Ok(file)
}

/// Whether an I/O error means out of space (a full disk or a quota).
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || e.raw_os_error() == Some(libc::ENOSPC)
        || e.raw_os_error() == Some(libc::EDQUOT)
}

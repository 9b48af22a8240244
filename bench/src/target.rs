//! What a workload runs against: a local SQLite file in one of two journal
//! configurations, or a database on a pagewire server.

use std::{path::PathBuf, time::Duration};

use rusqlite::{Connection, OpenFlags};

#[derive(Clone, Debug)]
pub enum Target {
    /// journal_mode=WAL, synchronous=NORMAL
    LocalWal(PathBuf),
    /// journal_mode=DELETE, synchronous=FULL
    LocalFull(PathBuf),
    /// A pagewire server (label names its store).
    Pagewire { url: String, label: String },
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::LocalWal(_) => "local WAL".into(),
            Target::LocalFull(_) => "local FULL".into(),
            Target::Pagewire { label, .. } => format!("pagewire {label}"),
        }
    }

    pub fn is_local(&self) -> bool {
        !matches!(self, Target::Pagewire { .. })
    }

    /// A read-write connection to database `name`.
    pub fn open(&self, name: &str) -> anyhow::Result<Connection> {
        self.open_with(name, false, "")
    }

    /// A read-only connection (a replica on pagewire).
    pub fn open_ro(&self, name: &str) -> anyhow::Result<Connection> {
        self.open_with(name, true, "")
    }

    pub fn open_with(&self, name: &str, read_only: bool, params: &str) -> anyhow::Result<Connection> {
        let mut flags = OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        flags |= if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        };
        let conn = match self {
            Target::LocalWal(dir) | Target::LocalFull(dir) => {
                let path = dir.join(name);
                Connection::open_with_flags_and_vfs(path, flags, "unix")?
            }
            Target::Pagewire { url, .. } => {
                let mode = if read_only { "&mode=ro" } else { "" };
                Connection::open_with_flags(format!("file:bench/{name}?vfs=pagewire&url={url}{mode}{params}"), flags)?
            }
        };
        conn.busy_timeout(Duration::from_secs(30))?;
        match self {
            Target::LocalWal(_) if !read_only => conn.execute_batch("pragma journal_mode=wal; pragma synchronous=normal")?,
            Target::LocalWal(_) => {}
            Target::LocalFull(_) if !read_only => conn.execute_batch("pragma journal_mode=delete; pragma synchronous=full")?,
            _ => {}
        }
        Ok(conn)
    }
}

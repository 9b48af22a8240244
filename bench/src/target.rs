//! What a workload runs against: a local SQLite file in one of two journal
//! configurations, or a database on a pagewire server.

use std::{collections::HashMap, path::PathBuf, sync::Mutex, time::Duration};

use rusqlite::{Connection, OpenFlags};

#[derive(Clone, Debug)]
pub enum Target {
    /// journal_mode=WAL, synchronous=NORMAL
    LocalWal(PathBuf),
    /// journal_mode=DELETE, synchronous=FULL
    LocalFull(PathBuf),
    /// A pagewire server (label names its store). `no_lease_url`: a second
    /// server on the same kind of store started with `--read-lease-ttl 0s`, for
    /// the rows that compare reads with and without read leases.
    Pagewire {
        url: String,
        label: String,
        no_lease_url: Option<String>,
    },
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

    /// The server's URL (None for a local file).
    pub fn server_url(&self) -> Option<&str> {
        match self {
            Target::Pagewire { url, .. } => Some(url),
            _ => None,
        }
    }

    /// The same target on a server that grants no read leases (a local file is
    /// its own baseline, unchanged).
    pub fn without_read_leases(&self) -> anyhow::Result<Target> {
        match self {
            Target::Pagewire {
                no_lease_url: Some(url),
                label,
                ..
            } => Ok(Target::Pagewire {
                url: url.clone(),
                label: format!("{label}, no read leases"),
                no_lease_url: None,
            }),
            Target::Pagewire { label, .. } => {
                anyhow::bail!("pagewire {label} has no server without read leases")
            }
            local => Ok(local.clone()),
        }
    }

    /// A read-write connection to database `name`.
    pub fn open(&self, name: &str) -> anyhow::Result<Connection> {
        self.open_with(name, false, "")
    }

    /// A read-only connection (a replica on pagewire).
    pub fn open_ro(&self, name: &str) -> anyhow::Result<Connection> {
        self.open_with(name, true, "")
    }

    pub fn open_with(
        &self,
        name: &str,
        read_only: bool,
        params: &str,
    ) -> anyhow::Result<Connection> {
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
                Connection::open_with_flags(
                    format!("file:bench/{name}?vfs=pagewire&url={url}{mode}{params}"),
                    flags,
                )?
            }
        };
        conn.busy_timeout(Duration::from_secs(30))?;
        match self {
            Target::LocalWal(_) if !read_only => {
                conn.execute_batch("pragma journal_mode=wal; pragma synchronous=normal")?
            }
            Target::LocalWal(_) => {}
            Target::LocalFull(_) if !read_only => {
                conn.execute_batch("pragma journal_mode=delete; pragma synchronous=full")?
            }
            _ => {}
        }
        Ok(conn)
    }
}

/// Process ids of the bench's servers by URL, for CPU accounting.
static SERVER_PIDS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

pub fn register_server(url: &str, pid: u32) {
    SERVER_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .insert(url.to_owned(), pid);
}

pub fn server_pid(url: &str) -> Option<u32> {
    SERVER_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()?
        .get(url)
        .copied()
}

//! The `sqlite_plugin::vfs::Vfs` implementation: each method is a guard and a
//! call into the module that does the work. Only the main database goes to the
//! server; every other file SQLite opens is a `LocalFile`.

use std::{
    borrow::Cow,
    collections::HashMap,
    ffi::CStr,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use pagewire_proto::v1 as pb;
use parking_lot::Mutex;
use sqlite_plugin::{
    flags::{AccessFlags, CreateMode, LockLevel, OpenKind, OpenMode, OpenOpts},
    vars,
    vfs::{Pragma, PragmaErr, Vfs, VfsHandle, VfsResult},
};

use crate::{
    client::Client,
    config::Config,
    database::Database,
    error::{Op, VfsError},
    local_file::LocalFile,
    main_file::MainFile,
    pragma, runtime,
    state::{DbKey, DbState, ServerSettings},
    status::Class,
};

mod compat {
    //! What this VFS needs of a server, checked at Open so an older or newer peer fails
    //! there, saying which side to upgrade, instead of misbehaving later.

    use pagewire_proto::{PROTOCOL_REVISION, capability, v1 as pb};

    use crate::error::VfsError;

    pub fn check_open(resp: &pb::OpenResponse) -> Result<(), VfsError> {
        if resp.min_client_protocol > PROTOCOL_REVISION {
            return Err(VfsError::Internal(format!(
                "the server needs pagewire protocol revision {} or newer, and this VFS speaks {PROTOCOL_REVISION}: upgrade the VFS",
                resp.min_client_protocol
            )));
        }
        if !resp
            .capabilities
            .iter()
            .any(|c| c == capability::INCARNATIONS)
        {
            return Err(VfsError::Internal(format!(
                "the server is older than this VFS (protocol revision {}, this VFS speaks {PROTOCOL_REVISION}): it cannot tell a \
                 replaced database from the one opened; upgrade the server",
                resp.protocol
            )));
        }
        Ok(())
    }
}

/// Longest database name: sqlite-plugin's mxPathname is 512 and it cuts longer
/// names silently, so longer ones are refused before that happens.
pub use pagewire_proto::limits::MAX_NAME_BYTES;

/// Largest gRPC message the client accepts before Open (after it, the server's
/// announced limit plus `DECODE_SLACK`).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Room over the server's announced message size for a reply's framing.
const DECODE_SLACK: usize = 64 << 10;

pub enum Handle {
    Main(Box<MainFile>),
    Local(LocalFile),
}

impl VfsHandle for Handle {
    fn readonly(&self) -> bool {
        matches!(self, Handle::Main(m) if m.read_only())
    }

    fn in_memory(&self) -> bool {
        false
    }
}

pub struct PagewireVfs {
    config: Config,
    /// Databases open in this process, so connections to the same one share
    /// locks, lease and cache.
    databases: Mutex<HashMap<DbKey, Weak<Database>>>,
    next_connection: AtomicU64,
}

impl PagewireVfs {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            databases: Mutex::default(),
            next_connection: AtomicU64::new(1),
        }
    }

    fn open_main(&self, path: &str, opts: &OpenOpts) -> Result<Handle, VfsError> {
        let name = normalize_name(path)?;
        // SAFETY: `path` is the main database name SQLite passed to xOpen (see uri_params).
        let params = unsafe { uri_params(path) };
        let config = self
            .config
            .with_uri_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let read_only = opts.mode().is_readonly() || config.as_of.is_some();
        let create = !read_only
            && matches!(
                opts.mode(),
                OpenMode::ReadWrite {
                    create: CreateMode::Create | CreateMode::MustCreate
                }
            );
        let rt = runtime::get()?;
        let key = DbKey {
            url: config.url.clone(),
            token: config.token.clone(),
            name: name.clone(),
        };
        let client = match self.live_database(&key) {
            Some(db) => db.client.clone(),
            None => Client::new(
                rt.channel(&config.url, config.connect_timeout, &config.tls_files())?,
                config.token.as_deref(),
                config.retry_timeout,
                config.call_timeout,
                MAX_MESSAGE_BYTES,
            )?,
        };
        let req = pb::OpenRequest {
            name,
            create,
            read_only,
            protocol: pagewire_proto::PROTOCOL_REVISION,
        };
        let cannot_open = |e: VfsError| {
            // Under TLS 1.3 a server refusing the client's certificate (or its absence)
            // does so after the client's side of the handshake, so the client sees only
            // a broken connection: say what may be missing.
            let hint = if config.is_tls()
                && config.client_cert.is_none()
                && e.class().is_some_and(Class::is_retryable)
            {
                " (the connection broke after the TLS handshake: if the server requires \
                 client certificates, give PAGEWIRE_CLIENT_CERT and PAGEWIRE_CLIENT_KEY)"
            } else {
                ""
            };
            VfsError::Open(format!("{:?} at {}: {e}{hint}", key.name, config.url))
        };
        let resp = rt
            .block_on(client.clone().open(req))?
            .map_err(cannot_open)?;
        let opened = compat::check_open(&resp)
            .and_then(|()| DbState::from_wire(resp.state.as_ref()))
            .map_err(cannot_open)?;
        let db = {
            let mut dbs = self.databases.lock();
            let live = dbs
                .get(&key)
                .and_then(Weak::upgrade)
                .filter(|db| db.rt().is_current());
            let db = match live.filter(|db| db.is_incarnation(opened.1)) {
                Some(db) => db,
                None => {
                    let settings = ServerSettings::from_open(&resp, MAX_MESSAGE_BYTES);
                    // Replies are decoded only up to what this server says it sends: prost
                    // builds a reply's structs before any check, several times its size.
                    let client = client.with_max_message(settings.max_message_bytes + DECODE_SLACK);
                    Arc::new(Database::new(
                        key.clone(),
                        rt,
                        client,
                        settings,
                        opened,
                        config.cache_size as usize,
                        config.lease_idle,
                    ))
                }
            };
            dbs.insert(key, Arc::downgrade(&db));
            db.connection_opened();
            db
        };
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let state = opened.0;
        if config.as_of.is_none() {
            // One round trip now instead of one per page of the first queries.
            if let Err(e) = db.preload(state, config.preload) {
                tracing::debug!(db = %db.name(), error = %e, "preload failed; pages will be read on demand");
            }
        }
        let mut file = MainFile::new(db, id, read_only, state, &config);
        if config.as_of.is_some() {
            // Resolve the point in history now, so a bad one fails the open.
            if let Err(e) = file.pin() {
                let name = file.db.name().to_owned();
                self.close_main(file);
                return Err(VfsError::Open(format!(
                    "{name:?} as of {:?}: {e}",
                    config.as_of
                )));
            }
        }
        Ok(Handle::Main(Box::new(file)))
    }

    /// The open database for `key`, unless it belongs to the parent of a fork.
    fn live_database(&self, key: &DbKey) -> Option<Arc<Database>> {
        self.databases
            .lock()
            .get(key)
            .and_then(Weak::upgrade)
            .filter(|db| db.rt().is_current())
    }

    fn close_main(&self, mut file: MainFile) {
        file.close();
        let last = {
            let mut dbs = self.databases.lock();
            let last = file.db.connection_closed();
            // A replaced database's entry may already be its successor's.
            let ours = dbs
                .get(&file.db.key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&file.db)));
            if last && ours {
                dbs.remove(&file.db.key);
            }
            last
        };
        if last {
            file.db.stop_watch();
            file.db.release_lease();
        }
    }
}

/// Runs one VFS operation: never lets a panic cross into SQLite, and turns
/// errors into SQLite codes with a log line saying what went wrong.
fn guard<T>(op: Op, what: impl FnOnce() -> Result<T, VfsError>) -> VfsResult<T> {
    match catch_unwind(AssertUnwindSafe(what)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let code = e.sqlite_code(op);
            if code == vars::SQLITE_BUSY {
                tracing::debug!(?op, "busy: {e}");
            } else {
                crate::log_error(&format!("{op:?} failed: {e}"));
            }
            Err(code)
        }
        Err(_) => {
            crate::log_error(&format!("internal error (panic) during {op:?}"));
            Err(VfsError::Internal(String::new()).sqlite_code(op))
        }
    }
}

/// [`guard`] for an operation on an open file. A main file opened before this process
/// forked is refused on every path before anything else: its runtime's threads are in
/// the parent, a lock one of them held may never be released here, and its cached
/// state (write lease, read lease) would let reads go on with no RPC at all.
fn on_file<T>(
    op: Op,
    h: &mut Handle,
    what: impl FnOnce(&mut Handle) -> Result<T, VfsError>,
) -> VfsResult<T> {
    guard(op, || match h {
        Handle::Main(m) if !m.db.rt().is_current() => Err(runtime::forked()),
        _ => what(h),
    })
}

/// The stored name: the path without leading `./` or `/`.
fn normalize_name(path: &str) -> Result<String, VfsError> {
    let mut name = path;
    loop {
        let trimmed = name.trim_start_matches('/');
        let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
        if trimmed == name {
            break;
        }
        name = trimmed;
    }
    if name.is_empty() {
        return Err(VfsError::BadName(format!("{path:?} names no database")));
    }
    // A URI filename SQLite did not parse (URI processing off): its parameters, a
    // token among them, would become part of the name, and reach the server's logs.
    if name.starts_with("file:") && name.contains('?') {
        return Err(VfsError::BadName(
            "the name is a URI filename (file:...?...) that SQLite did not parse as one: \
             open it with SQLITE_OPEN_URI (Python: uri=True)"
                .into(),
        ));
    }
    if name.len() > MAX_NAME_BYTES || name.contains('\u{FFFD}') {
        return Err(VfsError::BadName(format!(
            "names are valid UTF-8 of at most {MAX_NAME_BYTES} bytes (got {} bytes)",
            name.len()
        )));
    }
    Ok(name.to_owned())
}

/// The URI parameters SQLite stores after a main database name: pairs of
/// NUL-terminated strings, ended by an empty key.
///
/// # Safety
/// `path` must be the name SQLite passed to xOpen for a main database, borrowed
/// in place (sqlite-plugin borrows it when it is valid UTF-8: a name holding
/// U+FFFD may be a lossy copy, and then nothing is read past it).
unsafe fn uri_params(path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if path.contains('\u{FFFD}') {
        return out;
    }
    // SAFETY: per the contract, path.as_ptr()+len is SQLite's NUL terminator,
    // followed by the parameter block, which ends with an empty key.
    unsafe {
        let mut p = path.as_ptr().add(path.len()).cast::<std::ffi::c_char>();
        if *p != 0 {
            return out;
        }
        p = p.add(1);
        while *p != 0 {
            let key = CStr::from_ptr(p);
            p = p.add(key.to_bytes().len() + 1);
            let value = CStr::from_ptr(p);
            p = p.add(value.to_bytes().len() + 1);
            out.push((
                key.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            ));
        }
    }
    out
}

impl Vfs for PagewireVfs {
    type Handle = Handle;

    fn canonical_path<'a>(&self, path: Cow<'a, str>) -> VfsResult<Cow<'a, str>> {
        if path.len() > MAX_NAME_BYTES {
            crate::log_error(&format!("database name longer than {MAX_NAME_BYTES} bytes"));
            return Err(vars::SQLITE_CANTOPEN);
        }
        Ok(path)
    }

    fn open(&self, path: Option<&str>, opts: OpenOpts) -> VfsResult<Handle> {
        guard(Op::Open, || match (opts.kind(), path) {
            (OpenKind::MainDb, Some(path)) => self.open_main(path, &opts),
            _ => Ok(Handle::Local(LocalFile::default())),
        })
    }

    /// Journals and temp files live in memory and vanish on close; the main
    /// database is deleted through the admin service, not by SQLite.
    fn delete(&self, _path: &str) -> VfsResult<()> {
        Ok(())
    }

    /// No journal, WAL or super-journal ever exists where another connection
    /// could find it: each transaction reaches its own journal through its handle.
    fn access(&self, _path: &str, _flags: AccessFlags) -> VfsResult<bool> {
        Ok(false)
    }

    fn file_size(&self, h: &mut Handle) -> VfsResult<usize> {
        on_file(Op::Size, h, |h| match h {
            Handle::Main(m) => Ok(m.file_size()? as usize),
            Handle::Local(l) => Ok(l.size() as usize),
        })
    }

    fn truncate(&self, h: &mut Handle, size: usize) -> VfsResult<()> {
        on_file(Op::Write, h, |h| match h {
            Handle::Main(m) => m.truncate(size as u64),
            Handle::Local(l) => {
                l.truncate(size as u64);
                Ok(())
            }
        })
    }

    fn write(&self, h: &mut Handle, offset: usize, data: &[u8]) -> VfsResult<usize> {
        on_file(Op::Write, h, |h| {
            match h {
                Handle::Main(m) => m.write(offset as u64, data)?,
                Handle::Local(l) => l.write(offset as u64, data),
            }
            Ok(data.len())
        })
    }

    fn read(&self, h: &mut Handle, offset: usize, buf: &mut [u8]) -> VfsResult<usize> {
        on_file(Op::Read, h, |h| match h {
            Handle::Main(m) => m.read(offset as u64, buf),
            Handle::Local(l) => Ok(l.read(offset as u64, buf)),
        })
    }

    fn lock(&self, h: &mut Handle, level: LockLevel) -> VfsResult<()> {
        on_file(Op::Lock, h, |h| match h {
            Handle::Main(m) => m.lock(level),
            Handle::Local(_) => Ok(()),
        })
    }

    fn unlock(&self, h: &mut Handle, level: LockLevel) -> VfsResult<()> {
        on_file(Op::Unlock, h, |h| match h {
            Handle::Main(m) => m.unlock(level),
            Handle::Local(_) => Ok(()),
        })
    }

    fn check_reserved_lock(&self, h: &mut Handle) -> VfsResult<bool> {
        on_file(Op::Lock, h, |h| match h {
            Handle::Main(m) => Ok(m.check_reserved_lock()),
            Handle::Local(_) => Ok(false),
        })
    }

    fn sync(&self, h: &mut Handle) -> VfsResult<()> {
        on_file(Op::Sync, h, |h| match h {
            Handle::Main(m) => m.sync(),
            Handle::Local(_) => Ok(()),
        })
    }

    fn close(&self, h: Handle) -> VfsResult<()> {
        guard(Op::Unlock, || {
            match h {
                // In a forked child: touch nothing the parent's threads may have held
                // (locks, the runtime); the parent still owns lease and streams.
                Handle::Main(m) if !m.db.rt().is_current() => std::mem::forget(m),
                Handle::Main(m) => self.close_main(*m),
                Handle::Local(_) => {}
            }
            Ok(())
        })
    }

    /// The texts answered go to SQLite as `sqlite3_mprintf` formats (sqlite-plugin
    /// passes them so): `%` is doubled, or an argument such as `'%n'` would be read as a
    /// directive (and write through a pointer that is not there).
    fn pragma(&self, h: &mut Handle, p: Pragma<'_>) -> Result<Option<String>, PragmaErr> {
        let answer = match h {
            Handle::Main(m) if !m.db.rt().is_current() => Err(PragmaErr::Fail(
                vars::SQLITE_IOERR,
                Some(runtime::forked().to_string()),
            )),
            Handle::Main(m) => catch_unwind(AssertUnwindSafe(|| pragma::handle(m, p.name, p.arg)))
                .unwrap_or(Err(PragmaErr::Fail(
                    vars::SQLITE_INTERNAL,
                    Some("pagewire: internal error".into()),
                ))),
            Handle::Local(_) => Err(PragmaErr::NotFound),
        };
        let text = |t: Option<String>| t.map(|t| t.replace('%', "%%"));
        match answer {
            Ok(t) => Ok(text(t)),
            Err(PragmaErr::Fail(code, t)) => Err(PragmaErr::Fail(code, text(t))),
            Err(e) => Err(e),
        }
    }

    /// Decline shared memory: WAL is refused (see pragma.rs).
    fn shm_map(
        &self,
        _h: &mut Handle,
        _region: usize,
        _size: usize,
        _extend: bool,
    ) -> VfsResult<Option<std::ptr::NonNull<u8>>> {
        Err(vars::SQLITE_IOERR_SHMMAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_bounded() {
        assert_eq!(
            normalize_name("./acme/orders.db").ok().as_deref(),
            Some("acme/orders.db")
        );
        assert_eq!(normalize_name("//x.db").ok().as_deref(), Some("x.db"));
        assert_eq!(normalize_name("/./x.db").ok().as_deref(), Some("x.db"));
        assert!(normalize_name("/").is_err());
        assert!(normalize_name(&"a".repeat(512)).is_err());
        assert!(normalize_name(&"a".repeat(511)).is_ok());
    }
}

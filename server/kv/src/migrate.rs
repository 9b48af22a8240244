//! Start-up migration of a data directory written by the redb engine (`pagewire.redb`,
//! the default store before fjall) into the fjall engine. The key layout is the same,
//! so every pair is copied as it is.
//!
//! Crash-safe by order: every pair but the format key is copied in durable chunks, then
//! the format key, then `pagewire.redb` is renamed to `pagewire.redb.migrated` (kept:
//! delete it once the server runs well). A start that finds `pagewire.redb` and no
//! format key in fjall copies again from the start (the copy overwrites itself); one
//! that finds the format key only renames. Nothing writes to fjall before this is done.
//!
//! Then `pagewire.redb` is written again as a [`placeholder`]: not a redb file, so an
//! older server (redb) started on the directory refuses it ("cannot open the data
//! file") instead of creating an empty store beside the data.

use std::path::Path;

use fjall::PersistMode;
use redb::{ReadableDatabase as _, ReadableTable as _};

use crate::data_dir::OpenError;
use crate::keys::FORMAT_KEY;
use crate::redb_engine::{DATA_FILE, TABLE};

/// The name `pagewire.redb` gets once its data is in fjall.
pub const MIGRATED_FILE: &str = "pagewire.redb.migrated";

/// Bytes of keys and values per durable chunk of the copy.
const CHUNK_BYTES: usize = 16 << 20;

/// What `pagewire.redb` holds in a directory kept by fjall: text (padded past redb's
/// header) that redb refuses as a data file.
pub fn placeholder() -> Vec<u8> {
    let mut text = PLACEHOLDER_TEXT.to_vec();
    text.resize(PLACEHOLDER_BYTES, b'\n');
    text
}

const PLACEHOLDER_TEXT: &[u8] =
    b"pagewire: this data directory is kept by the fjall engine (fjall/). \
This file is not a redb data file: it keeps older pagewire servers from starting here. \
Upgrade pagewire-server.\n";
const PLACEHOLDER_BYTES: usize = 8192;

fn is_placeholder(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(PLACEHOLDER_TEXT))
}

/// Writes the placeholder where `pagewire.redb` is missing.
fn write_placeholder(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut file = std::fs::File::create_new(path)?;
    std::io::Write::write_all(&mut file, &placeholder())?;
    file.sync_all()
}

/// Moves `dir/pagewire.redb` (if it is a redb file) into `keyspace`, then leaves the
/// placeholder there; see the module docs.
pub(crate) fn from_redb(
    dir: &Path,
    db: &fjall::Database,
    keyspace: &fjall::Keyspace,
) -> Result<(), OpenError> {
    let source = dir.join(DATA_FILE);
    let fail = |message: String| OpenError::Migration {
        path: source.clone(),
        message,
    };
    if !source.exists() || is_placeholder(&source) {
        return write_placeholder(&source).map_err(|e| fail(e.to_string()));
    }
    let done = keyspace
        .get(FORMAT_KEY)
        .map_err(|e| fail(format!("{e:?}")))?
        .is_some();
    if !done {
        let pairs = copy(&source, db, keyspace)?;
        tracing::warn!(from = %source.display(), pairs, "moved the redb data file to fjall");
    }
    std::fs::rename(&source, dir.join(MIGRATED_FILE)).map_err(|e| fail(e.to_string()))?;
    write_placeholder(&source).map_err(|e| fail(e.to_string()))
}

/// Copies every pair of the redb file, the format key last; returns how many.
fn copy(source: &Path, db: &fjall::Database, keyspace: &fjall::Keyspace) -> Result<u64, OpenError> {
    let data_file = |message: String| OpenError::DataFile {
        path: source.to_owned(),
        message,
    };
    let fail = |message: String| OpenError::Migration {
        path: source.to_owned(),
        message,
    };
    let redb = redb::Database::open(source).map_err(|e| data_file(e.to_string()))?;
    let txn = redb.begin_read().map_err(|e| data_file(e.to_string()))?;
    let table = txn
        .open_table(TABLE)
        .map_err(|e| data_file(e.to_string()))?;
    let mut format = None;
    let mut chunk = db.batch().durability(Some(PersistMode::SyncData));
    let (mut bytes, mut pairs) = (0, 0u64);
    for item in table.iter().map_err(|e| data_file(e.to_string()))? {
        let (key, value) = item.map_err(|e| data_file(e.to_string()))?;
        let (key, value) = (key.value(), value.value());
        pairs += 1;
        if key == FORMAT_KEY {
            format = Some(value.to_vec());
            continue;
        }
        chunk.insert(keyspace, key, value);
        bytes += key.len() + value.len();
        if bytes >= CHUNK_BYTES {
            let full = std::mem::replace(
                &mut chunk,
                db.batch().durability(Some(PersistMode::SyncData)),
            );
            full.commit().map_err(|e| fail(format!("{e:?}")))?;
            bytes = 0;
        }
    }
    chunk.commit().map_err(|e| fail(format!("{e:?}")))?;
    if let Some(format) = format {
        let mut last = db.batch().durability(Some(PersistMode::SyncData));
        last.insert(keyspace, FORMAT_KEY, format.as_slice());
        last.commit().map_err(|e| fail(format!("{e:?}")))?;
    }
    Ok(pairs)
}

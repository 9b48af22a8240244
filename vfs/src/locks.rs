//! SQLite's file locks between the connections of this process to one database.
//!
//! Only writers need each other: one RESERVED holder at a time (they share one
//! write lease), and `xCheckReservedLock` must say so (else a second connection
//! could take the first one's live journal for a hot one). Readers never block a
//! writer and a writer never blocks readers: unlike a local file, the writer's
//! pages stay in its own buffer until commit, and every reader reads the version
//! it pinned (cache entries are per version). So SHARED always succeeds and
//! EXCLUSIVE does not wait for readers, which gives in-process readers WAL-like
//! concurrency. Across processes the server's write lease does the same job.

use sqlite_plugin::flags::LockLevel;

use crate::error::VfsError;

/// Which connection (by id) may write the database.
#[derive(Default, Debug)]
pub struct LockTable {
    reserved: Option<u64>,
}

impl LockTable {
    /// Moves connection `id` from `from` up to `to`.
    pub fn lock(&mut self, id: u64, from: LockLevel, to: LockLevel) -> Result<(), VfsError> {
        if to >= LockLevel::Reserved && from < LockLevel::Reserved {
            if self.reserved.is_some_and(|h| h != id) {
                return Err(VfsError::Busy(
                    "another connection in this process is writing".into(),
                ));
            }
            self.reserved = Some(id);
        }
        Ok(())
    }

    /// Moves connection `id` down to `to` (SHARED or UNLOCKED).
    pub fn unlock(&mut self, id: u64, _from: LockLevel, to: LockLevel) {
        if to < LockLevel::Reserved && self.reserved == Some(id) {
            self.reserved = None;
        }
    }

    /// xCheckReservedLock: does any connection of this process hold RESERVED or more?
    pub fn reserved(&self) -> bool {
        self.reserved.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockLevel::*;

    #[test]
    fn one_writer_and_readers_never_wait() {
        let mut t = LockTable::default();
        t.lock(1, Unlocked, Shared).expect("a reads");
        t.lock(2, Unlocked, Shared).expect("b reads");
        t.lock(1, Shared, Reserved).expect("a writes");
        assert!(t.reserved());
        assert!(t.lock(2, Shared, Reserved).is_err(), "one writer at a time");
        t.lock(1, Reserved, Exclusive)
            .expect("a commits while b reads its own version");
        t.lock(3, Unlocked, Shared)
            .expect("new readers are welcome");
        t.unlock(1, Exclusive, Shared);
        assert!(!t.reserved());
        t.lock(2, Shared, Reserved).expect("b's turn");
    }
}

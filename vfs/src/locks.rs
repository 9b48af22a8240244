//! SQLite's file locks between the connections of this process to one database.
//!
//! Locks must be real within a process: a second connection must see the first
//! one's RESERVED lock (else it takes the first one's live journal for a hot one),
//! and EXCLUSIVE must wait for other readers, as with the unix VFS. Across
//! processes the server's write lease and pinned versions do the same job.

use sqlite_plugin::flags::LockLevel;

use crate::error::VfsError;

/// Which connections (by id) hold which lock on one database.
#[derive(Default, Debug)]
pub struct LockTable {
    /// Connections holding SHARED or more.
    shared: usize,
    reserved: Option<u64>,
    pending: Option<u64>,
    exclusive: Option<u64>,
}

fn busy(what: &str) -> VfsError {
    VfsError::Busy(format!("{what} held by another connection in this process"))
}

impl LockTable {
    /// Moves connection `id` from `from` up to `to`.
    pub fn lock(&mut self, id: u64, from: LockLevel, to: LockLevel) -> Result<(), VfsError> {
        let other = |holder: Option<u64>| holder.is_some_and(|h| h != id);
        if from == LockLevel::Unlocked {
            if other(self.pending) || other(self.exclusive) {
                return Err(busy("a pending or exclusive lock"));
            }
            self.shared += 1;
        }
        if to >= LockLevel::Reserved && from < LockLevel::Reserved {
            if other(self.reserved) || other(self.pending) || other(self.exclusive) {
                return Err(busy("a reserved lock"));
            }
            self.reserved = Some(id);
        }
        if to >= LockLevel::Pending {
            // PENDING keeps new readers out while we wait for current ones to leave.
            self.pending = Some(id);
            if to == LockLevel::Exclusive {
                if self.shared > 1 {
                    return Err(busy("a shared lock"));
                }
                self.exclusive = Some(id);
            }
        }
        Ok(())
    }

    /// Moves connection `id` down to `to` (SHARED or UNLOCKED).
    pub fn unlock(&mut self, id: u64, from: LockLevel, to: LockLevel) {
        for holder in [&mut self.reserved, &mut self.pending, &mut self.exclusive] {
            if *holder == Some(id) {
                *holder = None;
            }
        }
        if to == LockLevel::Unlocked && from >= LockLevel::Shared {
            self.shared = self.shared.saturating_sub(1);
        }
    }

    /// xCheckReservedLock: does any connection of this process hold RESERVED or more?
    pub fn reserved(&self) -> bool {
        self.reserved.is_some() || self.pending.is_some() || self.exclusive.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockLevel::*;

    #[test]
    fn one_reserved_and_exclusive_waits_for_readers() {
        let mut t = LockTable::default();
        t.lock(1, Unlocked, Shared).expect("a shared");
        t.lock(2, Unlocked, Shared).expect("b shared");
        t.lock(1, Shared, Reserved).expect("a reserved");
        assert!(t.reserved());
        assert!(t.lock(2, Shared, Reserved).is_err());
        assert!(t.lock(1, Reserved, Exclusive).is_err(), "b still reads");
        assert!(t.lock(3, Unlocked, Shared).is_err(), "pending keeps new readers out");
        t.unlock(2, Shared, Unlocked);
        t.lock(1, Reserved, Exclusive).expect("alone now");
        t.unlock(1, Exclusive, Shared);
        assert!(!t.reserved());
        t.lock(2, Unlocked, Shared).expect("b again");
    }
}

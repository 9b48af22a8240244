//! The commit journal in front of the redb file (`pagewire.journal`).
//!
//! A redb commit that syncs rewrites every B-tree page it touched, scattered over the
//! file, and syncs it twice (data, then the commit slot): about 1.5 ms for a 10-page
//! commit on the CI machines. So a group of batches is made durable by appending one
//! record (the group's changes) to this file and syncing it, a short sequential write;
//! the redb transaction then commits without a sync (`Durability::None`: visible to
//! readers, lost on a crash). Every [`CHECKPOINT_GROUPS`] groups, or when the journal
//! is full, a group commits to redb with a sync instead (a checkpoint), stating the
//! sequence number of the last record it covers, and the journal starts over at its
//! beginning. Opening the file (at start-up, or after an I/O error) replays the
//! records newer than the last checkpoint into redb.
//!
//! - **Records**: aligned to [`ALIGN`] bytes; a header (magic, CRC-32 of the rest,
//!   salt, sequence number, payload length) and the payload (the ops). Sequence
//!   numbers grow by one per record for the life of the data directory. Each
//!   checkpoint draws a new random salt, kept in redb with the checkpoint's sequence
//!   number ([`Checkpoint`]) and never sent anywhere: a record counts only with the
//!   current salt, so records left over from before the checkpoint, or bytes of a
//!   tenant's page that look like a record, are never replayed.
//! - **Reading**: from the start, records are taken while each is whole, its CRC holds,
//!   it has the salt and the next sequence number. The first that fails ends the
//!   journal: it is the torn tail of a write that was never acknowledged. Unless a
//!   whole record with the salt and a later number lies beyond it: then an
//!   acknowledged record was damaged, and opening fails (corrupt) rather than lose it
//!   silently.
//! - **Space**: the file is [`CAPACITY`] bytes, written with zeros when created and
//!   synced, so an append never allocates (it cannot fail for a full disk) and its sync
//!   writes no file-system metadata. A group too big for the space left is a checkpoint.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::engine::Op;

pub const JOURNAL_FILE: &str = "pagewire.journal";

/// The journal's size: groups up to about this big are journaled.
pub const CAPACITY: u64 = 8 << 20;
/// Records start at multiples of this.
pub const ALIGN: u64 = 512;
/// At most this many journaled groups between checkpoints (it bounds the replay and
/// the pages redb holds back from reuse until a synced commit).
pub const CHECKPOINT_GROUPS: u64 = 1024;

const MAGIC: [u8; 4] = *b"PWJ1";
/// magic 4 | crc 4 | salt 8 | seq 8 | payload length 8
const HEADER: usize = 32;

/// What the last checkpoint (a synced redb commit) covers: records up to `seq`; later
/// records carry `salt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub salt: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.salt.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            seq: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            salt: u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}

/// Why the journal cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
}

/// The journal file, appended to by the committer only.
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    offset: u64,
    /// The next record's sequence number.
    next_seq: u64,
    /// Records since the last checkpoint.
    groups: u64,
    salt: u64,
    syncs: Arc<AtomicU64>,
}

/// A record read back: its sequence number and ops.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub ops: Vec<Op>,
}

impl Journal {
    /// Opens (creating and zero-filling when missing or short) the journal in `dir`,
    /// and returns it with the records after `checkpoint`, in order. The journal then
    /// appends after them (until [`Journal::checkpointed`]).
    pub fn open(
        dir: &Path,
        checkpoint: Checkpoint,
        syncs: Arc<AtomicU64>,
    ) -> Result<(Self, Vec<Record>), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < CAPACITY {
            zero_fill(&file, len, CAPACITY).map_err(io)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let mut bytes = vec![0; CAPACITY as usize];
        file.read_exact_at(&mut bytes, 0).map_err(io)?;
        let (records, end) = read_records(&bytes, checkpoint, &path)?;
        let next_seq = records.last().map_or(checkpoint.seq, |r| r.seq) + 1;
        let journal = Self {
            file,
            path,
            offset: end,
            next_seq,
            groups: records.len() as u64,
            salt: checkpoint.salt,
            syncs,
        };
        Ok((journal, records))
    }

    /// The sequence number the next checkpoint covers up to.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether a group of `ops` should be a checkpoint instead of a record: the journal
    /// is due one, or the record would not fit.
    pub fn wants_checkpoint(&self, record_bytes: usize) -> bool {
        self.groups >= CHECKPOINT_GROUPS || self.offset + aligned(record_bytes as u64) > CAPACITY
    }

    /// The checkpoint a synced redb commit covering every record so far writes: a new
    /// salt. Once that commit is durable, [`Journal::checkpointed`].
    pub fn next_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.last_seq(),
            salt: rand::random(),
        }
    }

    /// After the synced redb commit of `checkpoint`: the journal starts over at its
    /// beginning, with the checkpoint's salt.
    pub fn checkpointed(&mut self, checkpoint: Checkpoint) {
        self.offset = 0;
        self.groups = 0;
        self.salt = checkpoint.salt;
    }

    /// Writes and syncs `record` (from [`encode`]) as the next record. Nothing is
    /// acknowledged before this returns.
    pub fn append(&mut self, mut record: Vec<u8>) -> std::io::Result<()> {
        let seq = self.next_seq;
        seal(&mut record, self.salt, seq);
        let written = self
            .file
            .write_all_at(&record, self.offset)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // The record may be whole on disk all the same (a failed sync): erase it,
            // as its batches are answered with this error.
            return match self.erase(self.offset) {
                Ok(()) => Err(e),
                Err(r) => Err(std::io::Error::other(format!(
                    "{e}; and the record could not be erased ({r}): the commit may appear after a restart"
                ))),
            };
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.offset += aligned(record.len() as u64);
        self.next_seq += 1;
        self.groups += 1;
        Ok(())
    }

    /// Takes back the last record appended (its redb commit failed, so its batches are
    /// answered with that error and must not come back at the next open): its header
    /// is zeroed and synced, which ends the journal there.
    pub fn retract(&mut self, record_bytes: usize) -> std::io::Result<()> {
        let at = self.offset - aligned(record_bytes as u64);
        self.erase(at)?;
        self.offset = at;
        self.next_seq -= 1;
        self.groups -= 1;
        Ok(())
    }

    /// Zeroes and syncs the header of the record at `at`, which ends the journal there.
    fn erase(&self, at: u64) -> std::io::Result<()> {
        self.file.write_all_at(&[0; HEADER], at)?;
        self.file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn aligned(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = chunk.len().min((to - at) as usize);
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// The length of [`encode`]'s record of `ops`, without making it.
pub fn encoded_len<'a>(ops: impl Iterator<Item = &'a Op>) -> usize {
    HEADER
        + ops
            .map(|op| match op {
                Op::Put(a, b) => 9 + a.len() + b.len(),
                Op::DeleteRange(a, b) => 9 + a.len() + b.len(),
                Op::Delete(k) => 5 + k.len(),
            })
            .sum::<usize>()
}

/// A record of `ops` without its sequence number and CRC (see [`Journal::append`]).
pub fn encode<'a>(ops: impl Iterator<Item = &'a Op>) -> Vec<u8> {
    let mut out = vec![0; HEADER];
    out[..4].copy_from_slice(&MAGIC);
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for op in ops {
        match op {
            Op::Put(k, v) => {
                out.push(b'P');
                put(&mut out, k);
                put(&mut out, v);
            }
            Op::Delete(k) => {
                out.push(b'D');
                put(&mut out, k);
            }
            Op::DeleteRange(a, b) => {
                out.push(b'R');
                put(&mut out, a);
                put(&mut out, b);
            }
        }
    }
    out
}

/// Fills in the salt, sequence number, payload length and CRC of an encoded record.
fn seal(record: &mut [u8], salt: u64, seq: u64) {
    let len = (record.len() - HEADER) as u64;
    record[8..16].copy_from_slice(&salt.to_be_bytes());
    record[16..24].copy_from_slice(&seq.to_be_bytes());
    record[24..32].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_be_bytes());
}

/// The whole record with `salt` at `at`, if one is there: (seq, payload, bytes taken).
fn record_at(bytes: &[u8], at: usize, salt: u64) -> Option<(u64, &[u8], usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let word = |i: usize| header[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    if header[..4] != MAGIC || word(8)? != salt {
        return None;
    }
    let crc = u32::from_be_bytes(header[4..8].try_into().ok()?);
    let seq = word(16)?;
    let len = usize::try_from(word(24)?).ok()?;
    let end = (at + HEADER).checked_add(len)?;
    let body = bytes.get(at + 8..end)?;
    (crc32fast::hash(body) == crc).then(|| (seq, &bytes[at + HEADER..end], HEADER + len))
}

/// The records after `checkpoint` and the offset after the last one (see the module
/// docs for the rules).
fn read_records(
    bytes: &[u8],
    checkpoint: Checkpoint,
    path: &Path,
) -> Result<(Vec<Record>, u64), JournalError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut expect = checkpoint.seq + 1;
    while let Some((seq, payload, len)) = record_at(bytes, at, checkpoint.salt) {
        if seq != expect {
            break;
        }
        let ops = decode(payload).ok_or_else(|| {
            JournalError::Corrupt(format!(
                "{}: record {seq} at byte {at} does not decode",
                path.display()
            ))
        })?;
        records.push(Record { seq, ops });
        expect += 1;
        at += aligned(len as u64) as usize;
    }
    // A whole record numbered `expect` or later further on means one acknowledged
    // before it was damaged.
    let mut probe = at + ALIGN as usize;
    while probe + HEADER <= bytes.len() {
        if let Some((seq, _, _)) = record_at(bytes, probe, checkpoint.salt)
            && seq >= expect
        {
            return Err(JournalError::Corrupt(format!(
                "{}: the record at byte {at} is damaged, and record {seq} at byte {probe} follows it: \
                 acknowledged commits would be lost; the file was not changed",
                path.display()
            )));
        }
        probe += ALIGN as usize;
    }
    Ok((records, at as u64))
}

fn decode(mut payload: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(p: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(p.get(..4)?.try_into().ok()?) as usize;
        let bytes = p.get(4..4 + len)?;
        *p = &p[4 + len..];
        Some(bytes)
    }
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = payload.split_first() {
        payload = rest;
        let op = match tag {
            b'P' => {
                let k = take(&mut payload)?.to_vec();
                Op::Put(k, Bytes::copy_from_slice(take(&mut payload)?))
            }
            b'D' => Op::Delete(take(&mut payload)?.to_vec()),
            b'R' => {
                let a = take(&mut payload)?.to_vec();
                Op::DeleteRange(a, take(&mut payload)?.to_vec())
            }
            _ => return None,
        };
        ops.push(op);
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Checkpoint = Checkpoint { seq: 0, salt: 7 };

    fn ops(n: u8) -> Vec<Op> {
        vec![
            Op::Put(vec![b'k', n], Bytes::from(vec![n; 5000])),
            Op::Delete(vec![b'x', n]),
            Op::DeleteRange(vec![b'a'], vec![b'b', n]),
        ]
    }

    fn open(dir: &Path, checkpoint: Checkpoint) -> Result<(Journal, Vec<Record>), JournalError> {
        Journal::open(dir, checkpoint, Arc::default())
    }

    fn write(j: &mut Journal, n: u8) {
        let record = encode(ops(n).iter());
        assert_eq!(record.len(), encoded_len(ops(n).iter()));
        j.append(record).expect("append");
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    fn record_len() -> u64 {
        aligned(encode(ops(1).iter()).len() as u64)
    }

    #[test]
    fn records_come_back_in_order_after_the_checkpoint() {
        let dir = tempfile::tempdir().expect("journal test");
        let (mut j, none) = open(dir.path(), FIRST).expect("journal test");
        assert!(none.is_empty());
        for n in 1..=3 {
            write(&mut j, n);
        }
        drop(j);
        let (j, records) = open(dir.path(), FIRST).expect("journal test");
        assert_eq!(seqs(&records), [1, 2, 3]);
        assert_eq!(records[1].ops, ops(2));
        assert_eq!(j.last_seq(), 3);
        // Another salt: none of them.
        let (_, records) = open(dir.path(), Checkpoint { seq: 0, salt: 8 }).expect("journal test");
        assert!(records.is_empty());
    }

    #[test]
    fn after_a_checkpoint_old_records_are_not_replayed() {
        let dir = tempfile::tempdir().expect("journal test");
        let (mut j, _) = open(dir.path(), FIRST).expect("journal test");
        for n in 1..=4 {
            write(&mut j, n);
        }
        let cp = j.next_checkpoint(); // redb now holds 1..=4
        assert_eq!(cp.seq, 4);
        j.checkpointed(cp);
        drop(j);
        let (mut j, records) = open(dir.path(), cp).expect("journal test");
        assert!(records.is_empty(), "{:?}", seqs(&records));
        write(&mut j, 5); // overwrites record 1; 2..=4 stay in the file
        drop(j);
        let (j, records) = open(dir.path(), cp).expect("journal test");
        assert_eq!(seqs(&records), [5]);
        assert_eq!(records[0].ops, ops(5));
        assert_eq!(j.last_seq(), 5);
    }

    #[test]
    fn a_torn_tail_ends_the_journal() {
        let dir = tempfile::tempdir().expect("journal test");
        let (mut j, _) = open(dir.path(), FIRST).expect("journal test");
        for n in 1..=3 {
            write(&mut j, n);
        }
        // The last record half written: a byte of its payload never arrived.
        j.file
            .write_all_at(&[0xff], record_len() * 2 + 100)
            .expect("journal test");
        drop(j);
        let (mut j, records) = open(dir.path(), FIRST).expect("journal test");
        assert_eq!(seqs(&records), [1, 2]);
        write(&mut j, 9); // replaces the torn one, as number 3
        drop(j);
        let (_, records) = open(dir.path(), FIRST).expect("journal test");
        assert_eq!(seqs(&records), [1, 2, 3]);
        assert_eq!(records[2].ops, ops(9));
    }

    #[test]
    fn a_damaged_record_before_acknowledged_ones_is_corrupt() {
        let dir = tempfile::tempdir().expect("journal test");
        let (mut j, _) = open(dir.path(), FIRST).expect("journal test");
        for n in 1..=3 {
            write(&mut j, n);
        }
        j.file
            .write_all_at(&[0xff], record_len() + 100)
            .expect("journal test");
        drop(j);
        match open(dir.path(), FIRST) {
            Err(JournalError::Corrupt(m)) => assert!(m.contains("record 3"), "{m}"),
            other => panic!(
                "a damaged record in the middle opened: {:?}",
                other.map(|r| seqs(&r.1))
            ),
        }
    }

    #[test]
    fn a_record_inside_a_page_is_not_a_record() {
        // A tenant's page holding what looks like a record (right magic, CRC and next
        // number; a guessed salt) where the next record would start, left there from
        // before a checkpoint, is never replayed.
        let dir = tempfile::tempdir().expect("journal test");
        let (mut j, _) = open(dir.path(), FIRST).expect("journal test");
        let mut fake = encode([Op::Delete(b"someone else's key".to_vec())].iter());
        seal(&mut fake, 1234, 3);
        // header, tag, key length, key, value length: then the page's bytes
        let page_starts = HEADER + 1 + 4 + 1 + 4;
        let mut page = vec![0u8; 2 * ALIGN as usize];
        let at = ALIGN as usize - page_starts;
        page[at..at + fake.len()].copy_from_slice(&fake);
        j.append(encode([Op::Put(b"p".to_vec(), Bytes::from(page))].iter()))
            .expect("journal test");
        let cp = j.next_checkpoint();
        j.checkpointed(cp);
        j.append(encode([Op::Delete(b"k".to_vec())].iter()))
            .expect("journal test"); // record 2, in [0, 512)
        drop(j);
        let (_, records) = open(dir.path(), cp).expect("journal test");
        assert_eq!(seqs(&records), [2]);
        assert_eq!(records[0].ops, [Op::Delete(b"k".to_vec())]);
    }

    #[test]
    fn a_retracted_record_is_gone() {
        let dir = tempfile::tempdir().expect("journal test");
        let (mut j, _) = open(dir.path(), FIRST).expect("journal test");
        write(&mut j, 1);
        let record = encode(ops(2).iter());
        let len = record.len();
        j.append(record).expect("journal test");
        j.retract(len).expect("journal test");
        assert_eq!(j.last_seq(), 1);
        drop(j);
        let (_, records) = open(dir.path(), FIRST).expect("journal test");
        assert_eq!(seqs(&records), [1]);
    }

    #[test]
    fn a_group_that_does_not_fit_is_a_checkpoint() {
        let dir = tempfile::tempdir().expect("journal test");
        let (j, _) = open(dir.path(), FIRST).expect("journal test");
        assert!(!j.wants_checkpoint(4096));
        assert!(j.wants_checkpoint(CAPACITY as usize + 1));
    }
}

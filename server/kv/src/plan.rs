//! How one store operation's changes become engine batches within the engine's
//! [`EngineLimits`]: [`Budget`] (what one batch may hold) and [`Writes`] (an
//! operation's batches, in order).
//!
//! An engine without limits (the embedded one) gets every operation as one atomic
//! batch. Under limits (FoundationDB: 10 MB per transaction) an operation is *steps*,
//! ordered so that a crash after any of them leaves nothing wrong to read: a staged
//! commit writes its pages, then publishes them; a GC pass marks versions unreadable,
//! then writes the head, then deletes what no version reads any more.

use crate::engine::{Batch, EngineLimits, Op};
use crate::keys::{DbId, StageId};

/// The smallest piece a page is cut into (keeps a 64 KiB page under 256 pieces).
const MIN_PIECE: usize = 512;

/// What one batch may hold, from the engine's limits (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Bytes written per batch: half the engine's limit, for what the engine counts
    /// besides keys and values (FoundationDB: per-mutation overhead, read conflicts).
    pub batch: Option<usize>,
    /// Bytes per value: a page over it is stored in pieces.
    pub value: Option<usize>,
    /// Pages listed in one version's change list; past it the list becomes "every page
    /// from the lowest changed on" (a superset: readers drop more cache, never keep a
    /// stale page), so a version record stays under the value limit.
    pub listed: Option<usize>,
}

impl Budget {
    pub fn of(limits: EngineLimits) -> Self {
        Self {
            batch: limits.max_batch_bytes.map(|b| (b / 2).max(1)),
            value: limits.max_value_bytes.map(|v| v.max(MIN_PIECE)),
            // A listed page costs at most 5 bytes (a varint); 1 KiB for the rest.
            listed: limits
                .max_value_bytes
                .map(|v| (v.saturating_sub(1024) / 5).max(1)),
        }
    }

    /// Whether changes of about `bytes` need more than one batch.
    pub fn exceeded_by(&self, bytes: usize) -> bool {
        self.batch.is_some_and(|b| bytes > b)
    }

    /// `ops` (no expectations) as batches within the budget, in order.
    pub fn split(&self, ops: Vec<Op>) -> Vec<Batch> {
        let Some(budget) = self.batch else {
            return vec![Batch {
                expect: Vec::new(),
                ops,
            }];
        };
        let mut batches = Vec::new();
        let mut current = Batch::default();
        let mut bytes = 0;
        for op in ops {
            let size = op_bytes(&op);
            if bytes + size > budget && !current.ops.is_empty() {
                batches.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += size;
            current.ops.push(op);
        }
        if !current.ops.is_empty() {
            batches.push(current);
        }
        batches
    }
}

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Put(k, v) => k.len() + v.len(),
        Op::Delete(k) => k.len(),
        Op::DeleteRange(a, b) => a.len() + b.len(),
    }
}

/// An operation's batches, applied in order, each durable before the next.
#[derive(Debug, Default)]
pub struct Writes {
    pub batches: Vec<Batch>,
    /// The stage a staged commit writes: removed again if the commit fails.
    pub stage: Option<(DbId, StageId)>,
    /// The database is gone once these apply (a delete): drop it from memory.
    pub gone: bool,
}

impl Writes {
    pub fn one(batch: Batch) -> Self {
        Self {
            batches: vec![batch],
            ..Self::default()
        }
    }

    /// Steps in the order they must apply; merged into one atomic batch when the
    /// budget has no batch limit (atomic is always at least as safe).
    pub fn steps(steps: Vec<Batch>, budget: &Budget) -> Self {
        let batches = if budget.batch.is_some() {
            steps.into_iter().filter(|b| !b.is_empty()).collect()
        } else {
            let mut all = Batch::default();
            for step in steps {
                all.expect.extend(step.expect);
                all.ops.extend(step.ops);
            }
            vec![all]
        };
        Self {
            batches,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDB: EngineLimits = EngineLimits {
        max_key_bytes: Some(10_000),
        max_value_bytes: Some(100_000),
        max_batch_bytes: Some(10_000_000),
    };

    #[test]
    fn splits_within_the_budget_and_keeps_the_order() {
        let budget = Budget::of(FDB);
        let ops: Vec<Op> = (0..100u8)
            .map(|i| Op::Put(vec![i], vec![i; 99_999].into()))
            .collect();
        let batches = budget.split(ops.clone());
        assert!(batches.iter().all(|b| b.bytes() <= 5_000_000));
        assert_eq!(batches.len(), 2);
        let flat: Vec<Op> = batches.into_iter().flat_map(|b| b.ops).collect();
        assert_eq!(flat, ops);
    }

    #[test]
    fn without_limits_everything_is_one_batch() {
        let budget = Budget::default();
        assert!(!budget.exceeded_by(usize::MAX));
        let mut a = Batch::default();
        a.expect(vec![1], None);
        a.put(vec![1], vec![1]);
        let mut b = Batch::default();
        b.delete(vec![2]);
        let writes = Writes::steps(vec![a, b], &budget);
        assert_eq!(writes.batches.len(), 1);
        assert_eq!(writes.batches[0].ops.len(), 2);
        assert_eq!(writes.batches[0].expect.len(), 1);
    }

    #[test]
    fn listed_changes_fit_a_version_record() {
        let listed = Budget::of(FDB).listed.unwrap_or(0);
        assert!(listed * 5 + 1024 <= 100_000 && listed > 10_000);
    }
}

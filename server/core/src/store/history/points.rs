//! Restore points of one database, for every store that keeps them in memory (the
//! memory store; the key-value store, which also writes each one down): named pins that
//! keep a version readable past the retention window until deleted.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::{
    DbState, MAX_RESTORE_POINTS, RestorePoint, StoreError, StoreResult, Version, too_many_points,
};

#[derive(Debug, Clone, Default)]
pub struct RestorePoints {
    by_label: BTreeMap<String, RestorePoint>,
}

impl RestorePoints {
    /// A new point `label` on `state` (readable, already resolved) of database `db`:
    /// `PointExists` for a label it has, refused past [`MAX_RESTORE_POINTS`].
    pub fn add(
        &mut self,
        db: &str,
        label: &str,
        state: DbState,
        now_unix_ms: i64,
    ) -> StoreResult<RestorePoint> {
        self.check_room(db, label)?;
        let point = RestorePoint {
            label: label.to_owned(),
            version: state.version,
            tag: state.tag,
            created_unix_ms: now_unix_ms,
        };
        self.by_label.insert(label.to_owned(), point.clone());
        Ok(point)
    }

    /// Whether `label` could be added (checked before resolving its version).
    pub fn check_room(&self, db: &str, label: &str) -> StoreResult<()> {
        if self.by_label.contains_key(label) {
            return Err(StoreError::PointExists {
                db: db.to_owned(),
                label: label.to_owned(),
            });
        }
        if self.by_label.len() >= MAX_RESTORE_POINTS {
            return Err(too_many_points(db));
        }
        Ok(())
    }

    /// A point read back from durable storage.
    pub fn insert(&mut self, point: RestorePoint) {
        self.by_label.insert(point.label.clone(), point);
    }

    /// Deletes `label`; `NoSuchPoint` when database `db` has no such point.
    pub fn remove(&mut self, db: &str, label: &str) -> StoreResult<RestorePoint> {
        self.by_label
            .remove(label)
            .ok_or_else(|| StoreError::NoSuchPoint {
                db: db.to_owned(),
                label: label.to_owned(),
            })
    }

    /// Every point, by version then label.
    pub fn list(&self) -> Vec<RestorePoint> {
        let mut points: Vec<_> = self.by_label.values().cloned().collect();
        points.sort_by(|a, b| (a.version, &a.label).cmp(&(b.version, &b.label)));
        points
    }

    /// The versions the points hold.
    pub fn versions(&self) -> BTreeSet<Version> {
        self.by_label.values().map(|p| p.version).collect()
    }

    pub fn clear(&mut self) {
        self.by_label.clear();
    }
}

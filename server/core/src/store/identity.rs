//! What a client says it holds of a database (its incarnation, a version and that
//! version's tag), and the checks that refuse a call for a database it does not hold:
//! one deleted and created again, or restored to an earlier point. See "Identity" in
//! `pagewire.proto`.

use super::{BadId, DbState, Incarnation, StoreError, StoreResult, Version, VersionTag};

/// The incarnation and a version (with its tag) a client names. `None` fields (older
/// clients, which send neither) are not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    pub incarnation: Option<Incarnation>,
    /// A version the client knows and its tag: its newest, its base, or the one it
    /// reads at.
    pub version: Option<(Version, VersionTag)>,
}

/// A 16-byte id from a request, read by `parse` (e.g. [`Incarnation::from_wire`]): empty
/// is "not given"; any other length is refused.
pub fn id_from_wire<T>(
    what: &str,
    bytes: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, BadId>,
) -> StoreResult<Option<T>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let id = parse(bytes).map_err(|e| {
        StoreError::InvalidArgument(format!("{what} must be 16 bytes, not {}", e.len))
    })?;
    Ok(Some(id))
}

impl Identity {
    /// From a request's fields; a tag without a version number is version `version`'s.
    pub fn from_wire(incarnation: &[u8], version: u64, tag: &[u8]) -> StoreResult<Self> {
        let incarnation = id_from_wire("incarnation", incarnation, Incarnation::from_wire)?;
        let tag = id_from_wire("tag", tag, VersionTag::from_wire)?;
        Ok(Self {
            incarnation,
            version: tag.map(|t| (Version(version), t)),
        })
    }

    /// `Replaced` unless the database's incarnation is the client's.
    pub fn check_incarnation(&self, name: &str, have: &Incarnation) -> StoreResult<()> {
        match self.incarnation {
            Some(want) if want != *have => Err(replaced(
                name,
                "it was deleted and created again (or restored from a backup) since this client opened it",
            )),
            _ => Ok(()),
        }
    }

    /// `Replaced` unless the client's version is in this database's history: not past
    /// its `newest` version, and with the tag the database has for it (`have_tag`;
    /// `None` when the record is no longer kept, which is not checked).
    pub fn check_version(
        &self,
        name: &str,
        newest: Version,
        have_tag: Option<VersionTag>,
    ) -> StoreResult<()> {
        let Some((version, tag)) = self.version else {
            return Ok(());
        };
        if version > newest {
            return Err(replaced(
                name,
                &format!(
                    "this client saw version {version} but its newest is {newest} (restored from an earlier backup?)"
                ),
            ));
        }
        match have_tag {
            Some(have) if have != tag => Err(replaced(
                name,
                &format!(
                    "its version {version} is not the one this client saw (restored from a backup and written since?)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Both checks against a state the database holds now (`state.tag` is the tag of
    /// `state.version`, which the client's version must then be).
    pub fn check_state(&self, name: &str, state: &DbState) -> StoreResult<()> {
        self.check_incarnation(name, &state.incarnation)?;
        let have = self
            .version
            .filter(|(v, _)| *v == state.version)
            .map(|_| state.tag);
        self.check_version(name, Version(u64::MAX), have)
    }
}

fn replaced(name: &str, why: &str) -> StoreError {
    StoreError::Replaced(format!("database '{name}' was replaced: {why}; reopen it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: u64, incarnation: u8, tag: u8) -> DbState {
        DbState {
            version: Version(version),
            page_size: 4096,
            page_count: 1,
            incarnation: Incarnation([incarnation; 16]),
            tag: VersionTag([tag; 16]),
        }
    }

    #[test]
    fn empty_fields_are_not_checked() {
        let id = Identity::from_wire(&[], 7, &[]).expect("valid");
        assert_eq!(id, Identity::default());
        assert!(id.check_state("d", &state(3, 1, 1)).is_ok());
        assert!(
            id.check_version("d", Version(0), Some(VersionTag([9; 16])))
                .is_ok()
        );
    }

    #[test]
    fn bad_lengths_are_invalid() {
        assert!(matches!(
            Identity::from_wire(&[1; 15], 0, &[]),
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            Identity::from_wire(&[], 0, &[1; 17]),
            Err(StoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn another_incarnation_is_replaced() {
        let id = Identity::from_wire(&[1; 16], 0, &[]).expect("valid");
        assert!(id.check_state("d", &state(3, 1, 0)).is_ok());
        let e = id.check_state("d", &state(3, 2, 0)).expect_err("replaced");
        assert!(
            matches!(&e, StoreError::Replaced(m) if m.contains("'d' was replaced")),
            "{e}"
        );
    }

    #[test]
    fn a_version_gone_back_or_retagged_is_replaced() {
        let id = Identity::from_wire(&[1; 16], 7, &[5; 16]).expect("valid");
        assert!(
            id.check_version("d", Version(9), Some(VersionTag([5; 16])))
                .is_ok()
        );
        assert!(
            id.check_version("d", Version(9), None).is_ok(),
            "a record no longer kept is not checked"
        );
        assert!(matches!(
            id.check_version("d", Version(6), None),
            Err(StoreError::Replaced(_))
        ));
        assert!(matches!(
            id.check_version("d", Version(9), Some(VersionTag([6; 16]))),
            Err(StoreError::Replaced(_))
        ));
        assert!(id.check_state("d", &state(7, 1, 5)).is_ok());
        assert!(matches!(
            id.check_state("d", &state(7, 1, 6)),
            Err(StoreError::Replaced(_))
        ));
        // A state at another version says nothing about version 7's tag.
        assert!(id.check_state("d", &state(8, 1, 6)).is_ok());
    }
}

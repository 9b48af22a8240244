//! Pragmas the VFS answers itself (SQLITE_FCNTL_PRAGMA).
//!
//! Every pragma answered here returns a text (SQLite makes it the one row of the
//! result, and its column name): answered without one, the column name is NULL,
//! which some bindings refuse (Python's `sqlite3` raises `MemoryError`). Pragmas
//! not answered here pass through to SQLite (`NotFound`).
//!
//! - `journal_mode=wal|off` is refused, answering the mode in force: WAL needs
//!   shared memory between clients, and OFF would make ROLLBACK impossible.
//! - `synchronous=off` is refused (the level stays as it was), answering
//!   SQLite's default level as `PRAGMA synchronous` prints it: the sync of the
//!   main file is the commit point, so it must always come. Durability is the
//!   server's job, so a sync costs the client nothing. Other levels pass through.
//! - `pagewire_version`: the version this connection reads (after a commit: the
//!   version it committed); `pagewire_min_version=N`: later read transactions
//!   wait for at least version N (read-your-writes on a replica), answering N;
//!   `pagewire_stats`: RPC counters.
//!   `pagewire_read_lease`: the read lease and the newest version heard on Watch.
//! - History (`history.rs`): `pagewire_fork`, `pagewire_restore`,
//!   `pagewire_restore_point`, `pagewire_restore_points`, `pagewire_drop_restore_point`.
//!
//! Values are parsed as SQLite parses them, or the refusal could be bypassed.

use sqlite_plugin::vfs::PragmaErr;

use crate::main_file::MainFile;

/// SQLite's journal mode names, in the order it matches prefixes against them.
const JOURNAL_MODES: [&str; 6] = ["delete", "persist", "off", "truncate", "memory", "wal"];

pub fn handle(
    file: &mut MainFile,
    name: &str,
    arg: Option<&str>,
) -> Result<Option<String>, PragmaErr> {
    let lower = name.to_ascii_lowercase();
    if let Some(answer) = crate::history::handle(file, &lower, arg) {
        return answer;
    }
    match (lower.as_str(), arg) {
        ("journal_mode", Some(arg)) => match journal_mode(arg) {
            Some(mode @ ("wal" | "off")) => {
                tracing::info!(db = %file.db.name(), "journal_mode={mode} refused: pagewire keeps a rollback journal");
                Ok(Some(file.journal_mode.to_owned()))
            }
            Some(mode) => {
                file.journal_mode = mode;
                Err(PragmaErr::NotFound)
            }
            None => Err(PragmaErr::NotFound),
        },
        ("synchronous", Some(arg)) => match synchronous_level(arg) {
            0 => {
                tracing::info!(db = %file.db.name(), "synchronous=OFF refused: the sync is pagewire's commit point");
                // The level in force, as `PRAGMA synchronous` prints it.
                Ok(Some(file.synchronous.to_string()))
            }
            level => {
                file.synchronous = level;
                Err(PragmaErr::NotFound)
            }
        },
        ("pagewire_version", None) => Ok(Some(file.view().version.to_string())),
        ("pagewire_min_version", None) => Ok(Some(file.min_version.to_string())),
        ("pagewire_min_version", Some(arg)) => match arg.trim().parse::<u64>() {
            Ok(v) => {
                file.min_version = v;
                Ok(Some(v.to_string()))
            }
            Err(_) => Err(PragmaErr::Fail(
                sqlite_plugin::vars::SQLITE_ERROR,
                Some(format!(
                    "pagewire_min_version: expected a version number, got {arg:?}"
                )),
            )),
        },
        ("pagewire_read_lease", None) => Ok(Some(file.db.with_watch(|w, _| w.describe()))),
        ("pagewire_stats", None) => {
            let stats = file.db.client.counters.snapshot();
            let text: Vec<String> = stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Ok(Some(text.join(" ")))
        }
        _ => Err(PragmaErr::NotFound),
    }
}

/// The mode SQLite would pick for `arg`: the first name `arg` is a
/// case-insensitive prefix of (so `w` means WAL); None when it is a query.
fn journal_mode(arg: &str) -> Option<&'static str> {
    let arg = arg.to_ascii_lowercase();
    JOURNAL_MODES.into_iter().find(|m| m.starts_with(&arg))
}

/// The level `PRAGMA synchronous=arg` sets, as `PRAGMA synchronous` prints it (0 OFF,
/// 1 NORMAL, 2 FULL, 3 EXTRA), parsed as SQLite does (pragma.c, getSafetyLevel): a
/// number n, or a keyword's value (unknown words are NORMAL's 1), then level (n+1) & 7,
/// where 0 becomes 1, printed minus one.
fn synchronous_level(arg: &str) -> u8 {
    let a = arg.to_ascii_lowercase();
    let value: i64 = if a.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        let digits: String = a.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<i32>().map_or(0, i64::from)
    } else {
        match a.as_str() {
            "off" | "no" | "false" => 0,
            "extra" => 3,
            "full" => 2,
            _ => 1,
        }
    };
    let level = ((value + 1) & 7).max(1);
    (level - 1) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_mode_matches_like_sqlite() {
        assert_eq!(journal_mode("WAL"), Some("wal"));
        assert_eq!(journal_mode("w"), Some("wal"));
        assert_eq!(journal_mode("Off"), Some("off"));
        assert_eq!(journal_mode("o"), Some("off"));
        assert_eq!(journal_mode("t"), Some("truncate"));
        assert_eq!(journal_mode("memory"), Some("memory"));
        assert_eq!(journal_mode(""), Some("delete"));
        assert_eq!(journal_mode("bogus"), None);
    }

    #[test]
    fn synchronous_levels_as_sqlite_parses_them() {
        for off in ["off", "OFF", "0", "no", "False", "8", "7", "00"] {
            assert_eq!(synchronous_level(off), 0, "{off}");
        }
        for (arg, level) in [
            ("normal", 1),
            ("on", 1),
            ("yes", 1),
            ("true", 1),
            ("1", 1),
            ("full", 2),
            ("2", 2),
            ("extra", 3),
            ("3", 3),
        ] {
            assert_eq!(synchronous_level(arg), level, "{arg}");
        }
    }
}

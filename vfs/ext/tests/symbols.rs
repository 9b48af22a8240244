//! The `.so` that SQLite loads must need no `sqlite3_*` symbol: a loadable extension
//! reaches SQLite only through the `sqlite3_api_routines` it is handed, and a `.so` with
//! an undefined `sqlite3_*` symbol fails to load into a host whose SQLite is not exported
//! globally (Python's `sqlite3` module), or binds to another copy of SQLite. The
//! workspace test build is the risky one: the tests enable the VFS crate's `static`
//! feature, which cargo unifies into the `.so` it rebuilds in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every `libpagewire_vfs*.so` in this profile's directory and its `deps/` (this test runs
/// from `target/<profile>/deps/`).
fn built_extensions() -> Vec<PathBuf> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let profile = deps.parent().expect("target/<profile>");
    let mut found = Vec::new();
    for dir in [profile, deps] {
        let entries = std::fs::read_dir(dir).expect("read the target directory");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("libpagewire_vfs") && name.ends_with(".so") {
                found.push(entry.path());
            }
        }
    }
    found
}

/// The dynamic symbols of `lib` that `nm` lists with `flag`.
fn symbols(lib: &Path, flag: &str) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-D", flag])
        .arg(lib)
        .output()
        .expect("run nm (binutils)");
    assert!(
        out.status.success(),
        "nm {lib:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect()
}

#[test]
fn the_extension_needs_no_sqlite_symbol() {
    let libs = built_extensions();
    assert!(!libs.is_empty(), "no libpagewire_vfs*.so was built");
    for lib in &libs {
        let needed: Vec<_> = symbols(lib, "--undefined-only")
            .into_iter()
            .filter(|s| s.starts_with("sqlite3_"))
            .collect();
        assert!(needed.is_empty(), "{lib:?} needs {needed:?} from the host");
        let exported = symbols(lib, "--defined-only");
        assert!(
            exported.iter().any(|s| s == "sqlite3_pagewirevfs_init"),
            "{lib:?} lacks the entry point sqlite3_pagewirevfs_init"
        );
        assert!(
            !exported.iter().any(|s| s == "pagewire_vfs_register"),
            "{lib:?} exports the static-shell entry point, which needs the sqlite3_* symbols"
        );
    }
}

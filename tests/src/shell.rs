//! The stock `sqlite3` shell (Debian's `/usr/bin/sqlite3`) running a script, the VFS
//! loaded with `.load` (see [`load_vfs`]) or built in (the static shell).

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use crate::vfs_library;

/// Debian's shell.
pub const SQLITE3: &str = "/usr/bin/sqlite3";

/// [`SQLITE3`], or None (skip) where it is missing outside CI (where it must be there).
pub fn sqlite3() -> Option<&'static str> {
    crate::required(SQLITE3, "Debian's sqlite3: apt-get install sqlite3")
}

/// The static shell (scripts/build-static-sqlite.sh; `PAGEWIRE_STATIC_SHELL` names
/// another), or None (skip, saying so) where it was not built outside CI (where it
/// must be there).
pub fn static_shell() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("PAGEWIRE_STATIC_SHELL") {
        Some(p) => std::path::PathBuf::from(p),
        None => crate::target_dir()
            .expect("target")
            .join("../static/sqlite3-pagewire"),
    };
    if path.exists() {
        return Some(path);
    }
    assert!(
        !crate::in_ci(),
        "{} is missing: scripts/test.sh builds it with scripts/build-static-sqlite.sh",
        path.display()
    );
    eprintln!(
        "SKIPPED: no static shell at {} (scripts/build-static-sqlite.sh builds it)",
        path.display()
    );
    None
}

/// The shell command that loads the VFS: `.load <library>` and a newline.
pub fn load_vfs() -> String {
    format!(".load {}\n", vfs_library().expect("VFS library").display())
}

/// Runs `shell -batch` with `env` added to its environment, `script` on its stdin; its
/// output once it exited.
pub fn run(shell: &str, env: &[(&str, &str)], script: &str) -> Output {
    let mut child = Command::new(shell)
        .arg("-batch")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sqlite3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    child.wait_with_output().expect("sqlite3 output")
}

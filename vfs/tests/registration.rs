//! A Rust program that links the VFS keeps its own logging: registering the VFS must not
//! install a process-global `tracing` subscriber (the program's own `init()` would then
//! panic). The extension crate (`vfs/ext`) is the one that installs one, for hosts
//! without Rust.

use rusqlite::ffi;

/// Whether the SQLite linked here (rusqlite's bundled copy) knows a VFS by this name.
fn registered(name: &std::ffi::CStr) -> bool {
    // SAFETY: sqlite3_vfs_find takes a NUL-terminated name and only reads the VFS list.
    !unsafe { ffi::sqlite3_vfs_find(name.as_ptr()) }.is_null()
}

#[test]
fn registering_leaves_logging_to_the_program() {
    assert!(!registered(c"pagewire"));
    pagewire_vfs::register(false).expect("register the VFS");
    pagewire_vfs::register(false).expect("a second registration is a no-op");
    assert!(registered(c"pagewire"));
    tracing_subscriber::fmt()
        .try_init()
        .expect("the program can still install its own subscriber");
}

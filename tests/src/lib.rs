//! Harness for the end-to-end tests: a real `pagewire-server` process on a free
//! loopback port, the built VFS library, and (in the modules) what drives or surrounds
//! them: the stock `sqlite3` shell ([`shell`]), Debian's Python ([`python`]), TCP proxies
//! that cut, delay or stall connections ([`proxy`]), hand-written gRPC servers
//! ([`fake_server`]), the Admin service from blocking code ([`admin`]), PostgreSQL
//! ([`postgres`]) and the hostile-tenant test's process helpers ([`hostile`]).
//!
//! The binaries come from the same target directory as the test executable
//! (`scripts/test.sh` builds them first); set `PAGEWIRE_SERVER_BIN` /
//! `PAGEWIRE_VFS_LIB` to use others.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};

pub mod admin;
pub mod certs;
pub mod fake_server;
pub mod hostile;
pub mod postgres;
pub mod proxy;
pub mod python;
pub mod shell;

/// The directory holding the test executable's sibling binaries (target/<profile>).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>, or target/<profile>/<binary>
    let mut dir = exe.parent().context("executable has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    Ok(dir.to_path_buf())
}

fn built(env: &str, file: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => target_dir()?.join(file),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it first (`cargo build --release`, as scripts/test.sh does) or set {env}",
            path.display()
        );
    }
    Ok(path)
}

pub fn server_binary() -> anyhow::Result<PathBuf> {
    built("PAGEWIRE_SERVER_BIN", "pagewire-server")
}

/// The `pagewire` command (the cli crate).
pub fn cli_binary() -> anyhow::Result<PathBuf> {
    built("PAGEWIRE_CLI_BIN", "pagewire")
}

/// The `.load`able VFS (libpagewire_vfs.so), as the shell loads it (no suffix).
pub fn vfs_library() -> anyhow::Result<PathBuf> {
    let so = built("PAGEWIRE_VFS_LIB", "libpagewire_vfs.so")?;
    Ok(so.with_extension(""))
}

/// A running `pagewire-server`, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub addr: String,
    /// The data directory of an embedded store the harness chose (removed on drop).
    _data_dir: Option<tempfile::TempDir>,
}

/// A new, empty data directory for a test's embedded store, removed on drop:
/// under `PAGEWIRE_TEST_DATA_ROOT` if set, else on `/dev/shm` where it exists, else
/// in the temporary directory. The end-to-end tests check what the store does, not
/// that the disk syncs: on tmpfs an fsync is free, which keeps the suite's time near
/// the memory store's. The syncs themselves are asserted against a real disk by
/// `server/kv/tests/engine.rs`.
pub fn data_dir() -> anyhow::Result<tempfile::TempDir> {
    let root = match std::env::var_os("PAGEWIRE_TEST_DATA_ROOT") {
        Some(root) => PathBuf::from(root),
        None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix("pagewire-test-data")
        .tempdir_in(&root)
        .with_context(|| format!("a data directory in {}", root.display()))
}

/// The store a test server gets when its flags name none: `PAGEWIRE_TEST_STORE`
/// (`embedded`, the default and the server's: the durable store, in a new
/// [`data_dir`] per server, so no two tests share one; or `memory`).
pub fn test_store_flags() -> anyhow::Result<(Vec<String>, Option<tempfile::TempDir>)> {
    match std::env::var("PAGEWIRE_TEST_STORE").as_deref() {
        Ok("embedded") | Err(_) => {
            let dir = data_dir()?;
            let flags = vec![
                "--store".to_owned(),
                "embedded".to_owned(),
                "--data-dir".to_owned(),
                dir.path().display().to_string(),
            ];
            Ok((flags, Some(dir)))
        }
        Ok("memory") => Ok((vec!["--store".to_owned(), "memory".to_owned()], None)),
        Ok(other) => bail!("PAGEWIRE_TEST_STORE={other:?}: memory or embedded"),
    }
}

impl Server {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts the server with extra flags on 127.0.0.1:0 and waits for its
    /// "listening on" line.
    pub fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_wrapped(&[], args)
    }

    /// [`Server::start_with`] under a wrapper command that execs the server in its own
    /// process (same pid), e.g. `&["prlimit", "--as=1073741824"]`: runs
    /// `wrapper... <server binary> --listen 127.0.0.1:0 args...`. An empty wrapper runs
    /// the server directly.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(wrapper, "127.0.0.1:0", args)
    }

    /// [`Server::start_with`] listening on `listen` (to start a server again on the port
    /// an earlier one had).
    pub fn start_at(listen: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(&[], listen, args)
    }

    fn spawn(wrapper: &[&str], listen: &str, args: &[&str]) -> anyhow::Result<Self> {
        let server = server_binary()?;
        let mut command = match wrapper.split_first() {
            None => Command::new(&server),
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(&server);
                c
            }
        };
        let names_store = args.iter().any(|a| *a == "--store" || *a == "--data-dir");
        let (store_flags, data_dir) = if names_store {
            (Vec::new(), None)
        } else {
            test_store_flags()?
        };
        let mut child = command
            .args(["--listen", listen])
            .args(&store_flags)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning pagewire-server")?;
        let url = match listening_url(&mut child) {
            Ok(url) => url,
            Err(line) => {
                let _ = child.kill();
                bail!("server did not start: {line:?}");
            }
        };
        let addr = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned();
        Ok(Self {
            url,
            addr,
            child,
            _data_dir: data_dir,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The exit status, once the process has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` is true or the timeout passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// The URL a server process (`pagewire-server`, or an example embedding the server)
/// announces on the first line of its stdout (which must be piped):
/// `pagewire-server listening on <url>`. `Err` holds the line it printed instead
/// (empty if it printed nothing).
pub fn listening_url(child: &mut Child) -> Result<String, String> {
    let Some(stdout) = child.stdout.take() else {
        return Err("(stdout not piped)".into());
    };
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    match line.trim().strip_prefix("pagewire-server listening on ") {
        Some(url) => Ok(url.to_owned()),
        None => Err(line),
    }
}

/// True on a CI machine, where tests that need something must fail, not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `path` (a program a test needs, `what` says which), or None (skip, saying so) where
/// it is missing outside CI; under CI a missing one fails the test.
pub fn required(path: &'static str, what: &str) -> Option<&'static str> {
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    assert!(!in_ci(), "{path} ({what}) is missing; CI must have it");
    eprintln!("SKIPPED: {path} ({what}) not found");
    None
}

/// The value of the first `key=value` word of `line` (a child's report line, a pragma's
/// answer).
pub fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// This test binary again, to run only the (ignored) test `name` as a child process:
/// add its environment and stdio.
pub fn child_test(name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

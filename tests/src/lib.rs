//! Harness for the end-to-end tests: a real `pagewire-server` process on a free
//! loopback port, the built VFS library for the stock `sqlite3` shell, and a TCP
//! proxy that can cut connections mid-stream.
//!
//! The binaries come from the same target directory as the test executable
//! (`scripts/test.sh` builds them first); set `PAGEWIRE_SERVER_BIN` /
//! `PAGEWIRE_VFS_LIB` to use others.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, bail};

pub mod postgres;

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
        bail!("{} not found: build it first (`cargo build --release`, as scripts/test.sh does) or set {env}", path.display());
    }
    Ok(path)
}

pub fn server_binary() -> anyhow::Result<PathBuf> {
    built("PAGEWIRE_SERVER_BIN", "pagewire-server")
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
}

impl Server {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts the server with extra flags on 127.0.0.1:0 and waits for its
    /// "listening on" line.
    pub fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(server_binary()?)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning pagewire-server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("pagewire-server listening on ") else {
            let _ = child.kill();
            bail!("server did not start: {line:?}");
        };
        let addr = url.trim_start_matches("http://").to_owned();
        Ok(Self { url: url.to_owned(), addr, child })
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

/// A TCP proxy in front of a server. `cut_after(n)` makes it drop every
/// connection once `n` more client-to-server bytes have passed, to cut a
/// commit stream in the middle.
pub struct Proxy {
    pub url: String,
    budget: Arc<AtomicU64>,
    armed: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let budget = Arc::new(AtomicU64::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        let (b, a, up) = (budget.clone(), armed.clone(), upstream.to_owned());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&up) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pipe(&client, &server, Some((b.clone(), a.clone())));
                pipe(&server, &client, None);
            }
        });
        Ok(Self { url, budget, armed })
    }

    /// Cut all connections after `bytes` more bytes from clients.
    pub fn cut_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// True once a cut happened (the proxy disarms itself after cutting).
    pub fn has_cut(&self) -> bool {
        !self.armed.load(Ordering::SeqCst) && self.budget.load(Ordering::SeqCst) == u64::MAX
    }
}

fn pipe(from: &TcpStream, to: &TcpStream, cut: Option<(Arc<AtomicU64>, Arc<AtomicBool>)>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some((budget, armed)) = &cut
                && armed.load(Ordering::SeqCst) {
                    let left = budget.load(Ordering::SeqCst);
                    if (n as u64) >= left {
                        let _ = to.write_all(&buf[..left as usize]);
                        budget.store(u64::MAX, Ordering::SeqCst);
                        armed.store(false, Ordering::SeqCst);
                        break;
                    }
                    budget.store(left - n as u64, Ordering::SeqCst);
                }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
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

/// True on a CI machine, where tests that need something must fail, not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

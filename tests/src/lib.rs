//! Harness for the end-to-end tests: a real `pagewire-server` process on a free
//! loopback port, the built VFS library for the stock `sqlite3` shell, a TCP
//! proxy that can cut connections mid-stream, and one that delays bytes.
//!
//! The binaries come from the same target directory as the test executable
//! (`scripts/test.sh` builds them first); set `PAGEWIRE_SERVER_BIN` /
//! `PAGEWIRE_VFS_LIB` to use others.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    ops::Range,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

pub mod hostile;
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
        let mut child = command
            .args(["--listen", listen])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
        Ok(Self {
            url: url.to_owned(),
            addr,
            child,
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
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
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
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some((budget, armed)) = &cut
                && armed.load(Ordering::SeqCst)
            {
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

/// A TCP proxy in front of a server that delays every chunk of bytes by a random
/// time drawn from the range of its direction (a slow, jittery network). Bytes stay
/// in order: a chunk never overtakes an earlier one, so a chunk may wait longer than
/// its own draw. Connections live until either side closes. `freeze` holds every
/// byte (a network partition that leaves connections open) until `thaw`.
pub struct DelayProxy {
    pub url: String,
    /// Chunks delayed so far (both directions), to show the proxy was in the path.
    chunks: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Delays server-to-client chunks by `to_client` and client-to-server chunks by
    /// `to_server` (an empty range, e.g. `ZERO..ZERO`, forwards at once).
    pub fn start(
        upstream: &str,
        to_client: Range<Duration>,
        to_server: Range<Duration>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let chunks = Arc::new(AtomicU64::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let (up, counter, ice) = (upstream.to_owned(), chunks.clone(), frozen.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                delayed_pipe(
                    &client,
                    &server,
                    to_server.clone(),
                    counter.clone(),
                    ice.clone(),
                );
                delayed_pipe(
                    &server,
                    &client,
                    to_client.clone(),
                    counter.clone(),
                    ice.clone(),
                );
            }
        });
        Ok(Self {
            url,
            chunks,
            frozen,
        })
    }

    /// Holds every byte in both directions (connections stay open) until `thaw`.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Delivers what was held, in order, and forwards as before.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Chunks that went through (delayed) so far.
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }
}

/// Forwards `from` to `to`, each chunk after its delay: one thread reads and stamps
/// chunks with their due time, another writes them when due, in order.
fn delayed_pipe(
    from: &TcpStream,
    to: &TcpStream,
    delay: Range<Duration>,
    chunks: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_end = from.try_clone();
    thread::spawn(move || {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let wait = if delay.is_empty() {
                Duration::ZERO
            } else {
                rng.random_range(delay.clone())
            };
            last_due = last_due.max(Instant::now() + wait);
            chunks.fetch_add(1, Ordering::Relaxed);
            if tx.send((last_due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        // Dropping `tx` lets the writer deliver what is queued, then close.
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            while frozen.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        if let Ok(from) = reader_end {
            let _ = from.shutdown(Shutdown::Both);
        }
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

/// Debian's Python, whose `sqlite3` module can load extensions.
pub const PYTHON: &str = "/usr/bin/python3";

/// [`PYTHON`], or None (skip) where it is missing outside CI (where it must be there).
pub fn python() -> Option<&'static str> {
    if std::path::Path::new(PYTHON).exists() {
        return Some(PYTHON);
    }
    assert!(!in_ci(), "{PYTHON} is missing; CI must have it");
    eprintln!("SKIPPED: {PYTHON} not found");
    None
}

/// True on a CI machine, where tests that need something must fail, not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A TCP proxy in front of a server that is a slow link which keeps moving: it
/// forwards at most `bytes_per_sec` in each direction (reading only as fast as it
/// forwards, so TCP backpressure reaches the sender), and optionally goes silent for
/// `pause` at the start of every `period` (both directions), like a flaky link whose
/// stalls stay short. `freeze` holds every byte until `thaw`.
pub struct ThrottleProxy {
    pub url: String,
    /// Client-to-server bytes forwarded so far.
    upstream_bytes: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
}

/// How a [`ThrottleProxy`] shapes its traffic.
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    pub bytes_per_sec: u64,
    /// `(period, pause)`: silent for `pause` at the start of every `period`.
    pub pauses: Option<(Duration, Duration)>,
}

impl ThrottleProxy {
    pub fn start(upstream: &str, throttle: Throttle) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let (up, counter, ice) = (upstream.to_owned(), upstream_bytes.clone(), frozen.clone());
        let epoch = Instant::now();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                throttled_pipe(
                    &client,
                    &server,
                    throttle,
                    epoch,
                    Some(counter.clone()),
                    ice.clone(),
                );
                throttled_pipe(&server, &client, throttle, epoch, None, ice.clone());
            }
        });
        Ok(Self {
            url,
            upstream_bytes,
            frozen,
        })
    }

    /// Holds every byte in both directions (connections stay open) until `thaw`.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Client-to-server bytes forwarded so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream_bytes.load(Ordering::Relaxed)
    }
}

/// Forwards `from` to `to` at the throttle's rate, in chunks of at most 16 KiB, each
/// sent when the rate allows (no catching up after a pause: a burst is one chunk).
fn throttled_pipe(
    from: &TcpStream,
    to: &TcpStream,
    throttle: Throttle,
    epoch: Instant,
    counter: Option<Arc<AtomicU64>>,
    frozen: Arc<AtomicBool>,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let mut next_send = Instant::now();
        let rate = throttle.bytes_per_sec.max(1) as f64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            loop {
                let now = Instant::now();
                if frozen.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                if let Some((period, pause)) = throttle.pauses {
                    let into = Duration::from_nanos(
                        (now - epoch).as_nanos() as u64 % period.as_nanos().max(1) as u64,
                    );
                    if into < pause {
                        thread::sleep(pause - into);
                        continue;
                    }
                }
                if next_send > now {
                    thread::sleep(next_send - now);
                    continue;
                }
                break;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(c) = &counter {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            next_send = next_send.max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate);
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

//! TCP proxies in front of a server, for the network's failures: [`Proxy`] cuts every
//! connection after a byte budget (a commit stream cut in the middle), [`DelayProxy`]
//! delays bytes (a slow, jittery network) and can hold them all (a server that stops
//! answering, connections left open), [`ThrottleProxy`] is a slow link that keeps
//! moving. Each listens on a free loopback port and forwards to `upstream`
//! (`host:port`); `url` is what a client connects to.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

/// Listens on a free loopback port; for every client, connects to `upstream` and hands
/// both streams (no Nagle delay) to `forward`, which starts the pipes. Returns the URL.
fn listen(
    upstream: &str,
    forward: impl Fn(&TcpStream, &TcpStream) + Send + 'static,
) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let upstream = upstream.to_owned();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            forward(&client, &server);
        }
    });
    Ok(url)
}

/// Reads `from` in chunks of up to `buf_len` bytes until it ends (or fails), handing
/// each to `chunk`, which says whether to go on.
fn read_chunks(from: &mut TcpStream, buf_len: usize, mut chunk: impl FnMut(&[u8]) -> bool) {
    let mut buf = vec![0u8; buf_len];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !chunk(&buf[..n]) {
            break;
        }
    }
}

/// Holds every byte of a proxy while frozen (a network partition that leaves
/// connections open).
#[derive(Clone, Default)]
struct Ice(Arc<AtomicBool>);

impl Ice {
    fn set(&self, frozen: bool) {
        self.0.store(frozen, Ordering::SeqCst);
    }

    fn frozen(&self) -> bool {
        self.0.load(Ordering::SeqCst)
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
        let budget = Arc::new(AtomicU64::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        let (b, a) = (budget.clone(), armed.clone());
        let url = listen(upstream, move |client, server| {
            pipe(client, server, Some((b.clone(), a.clone())));
            pipe(server, client, None);
        })?;
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
        read_chunks(&mut from, 16 * 1024, |chunk| {
            let n = chunk.len() as u64;
            if let Some((budget, armed)) = &cut
                && armed.load(Ordering::SeqCst)
            {
                let left = budget.load(Ordering::SeqCst);
                if n >= left {
                    let _ = to.write_all(&chunk[..left as usize]);
                    budget.store(u64::MAX, Ordering::SeqCst);
                    armed.store(false, Ordering::SeqCst);
                    return false;
                }
                budget.store(left - n, Ordering::SeqCst);
            }
            to.write_all(chunk).is_ok()
        });
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A TCP proxy in front of a server that delays every chunk of bytes by a random
/// time drawn from the range of its direction (a slow, jittery network). Bytes stay
/// in order: a chunk never overtakes an earlier one, so a chunk may wait longer than
/// its own draw. Connections live until either side closes. `freeze` holds every
/// byte (a network partition that leaves connections open) until `thaw`;
/// `freeze_answers` only the server's (requests arrive, their answers are lost).
pub struct DelayProxy {
    pub url: String,
    /// Chunks delayed so far (both directions), to show the proxy was in the path.
    chunks: Arc<AtomicU64>,
    /// Holds client-to-server bytes.
    ice: Ice,
    /// Holds server-to-client bytes.
    answers: Ice,
}

impl DelayProxy {
    /// Delays server-to-client chunks by `to_client` and client-to-server chunks by
    /// `to_server` (an empty range, e.g. `ZERO..ZERO`, forwards at once).
    pub fn start(
        upstream: &str,
        to_client: Range<Duration>,
        to_server: Range<Duration>,
    ) -> anyhow::Result<Self> {
        let chunks = Arc::new(AtomicU64::new(0));
        let (ice, answers) = (Ice::default(), Ice::default());
        let (counter, held, held_answers) = (chunks.clone(), ice.clone(), answers.clone());
        let url = listen(upstream, move |client, server| {
            delayed_pipe(
                client,
                server,
                to_server.clone(),
                counter.clone(),
                held.clone(),
            );
            delayed_pipe(
                server,
                client,
                to_client.clone(),
                counter.clone(),
                held_answers.clone(),
            );
        })?;
        Ok(Self {
            url,
            chunks,
            ice,
            answers,
        })
    }

    /// A proxy that forwards at once in both directions until [`DelayProxy::freeze`]:
    /// then it is a server that accepts connections and stops answering.
    pub fn undelayed(upstream: &str) -> anyhow::Result<Self> {
        Self::start(
            upstream,
            Duration::ZERO..Duration::ZERO,
            Duration::ZERO..Duration::ZERO,
        )
    }

    /// Holds every byte in both directions (connections stay open) until `thaw`.
    pub fn freeze(&self) {
        self.ice.set(true);
        self.answers.set(true);
    }

    /// Holds the server's bytes only: requests reach it, its answers do not.
    pub fn freeze_answers(&self) {
        self.answers.set(true);
    }

    /// Delivers what was held, in order, and forwards as before.
    pub fn thaw(&self) {
        self.ice.set(false);
        self.answers.set(false);
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
    ice: Ice,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_end = from.try_clone();
    thread::spawn(move || {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut last_due = Instant::now();
        read_chunks(&mut from, 64 * 1024, |chunk| {
            let wait = if delay.is_empty() {
                Duration::ZERO
            } else {
                rng.random_range(delay.clone())
            };
            last_due = last_due.max(Instant::now() + wait);
            chunks.fetch_add(1, Ordering::Relaxed);
            tx.send((last_due, chunk.to_vec())).is_ok()
        });
        // Dropping `tx` lets the writer deliver what is queued, then close.
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            while ice.frozen() {
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

/// A TCP proxy in front of a server that is a slow link which keeps moving: it
/// forwards at most `bytes_per_sec` in each direction (reading only as fast as it
/// forwards, so TCP backpressure reaches the sender), and optionally goes silent for
/// `pause` at the start of every `period` (both directions), like a flaky link whose
/// stalls stay short. `freeze` holds every byte until `thaw`.
pub struct ThrottleProxy {
    pub url: String,
    /// Client-to-server bytes forwarded so far.
    upstream_bytes: Arc<AtomicU64>,
    ice: Ice,
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
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let ice = Ice::default();
        let (counter, held) = (upstream_bytes.clone(), ice.clone());
        let epoch = Instant::now();
        let url = listen(upstream, move |client, server| {
            throttled_pipe(
                client,
                server,
                throttle,
                epoch,
                Some(counter.clone()),
                held.clone(),
            );
            throttled_pipe(server, client, throttle, epoch, None, held.clone());
        })?;
        Ok(Self {
            url,
            upstream_bytes,
            ice,
        })
    }

    /// Holds every byte in both directions (connections stay open) until `thaw`.
    pub fn freeze(&self) {
        self.ice.set(true);
    }

    pub fn thaw(&self) {
        self.ice.set(false);
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
    ice: Ice,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut next_send = Instant::now();
        let rate = throttle.bytes_per_sec.max(1) as f64;
        read_chunks(&mut from, 16 * 1024, |chunk| {
            loop {
                let now = Instant::now();
                if ice.frozen() {
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
            if to.write_all(chunk).is_err() {
                return false;
            }
            let n = chunk.len();
            if let Some(c) = &counter {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            next_send = next_send.max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate);
            true
        });
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

//! Process-level helpers of the hostile-tenant test (`tests/tests/hostile.rs`): the
//! server's memory as the kernel sees it, a tokens file, a tally of outcomes printed as
//! a table, and a well-behaved tenant running in Debian's Python through the VFS.
//! Nothing here speaks gRPC; the attacks live in the test.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::python::{self, PYTHON};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// `bytes` as MiB with one decimal, for tables.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// A `kB` line of /proc/<pid>/status (VmRSS, VmHWM, VmPeak, VmSize), in bytes.
pub fn proc_status_bytes(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// The process name (/proc/<pid>/comm), to check a wrapper exec'd the server.
pub fn proc_name(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// What the sampler saw of the server's memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryReport {
    /// Largest VmRSS sampled.
    pub max_sampled_rss: u64,
    /// VmHWM (the kernel's RSS high-water mark) when sampling stopped.
    pub hwm: u64,
    /// VmPeak (largest virtual size) when sampling stopped.
    pub vm_peak: u64,
    /// VmSize when sampling started (the idle server's address space).
    pub vm_at_start: u64,
    pub samples: u64,
}

impl MemoryReport {
    /// The peak resident size: the larger of the samples and the high-water mark.
    pub fn peak_rss(&self) -> u64 {
        self.max_sampled_rss.max(self.hwm)
    }
}

/// Samples a process's VmRSS on a thread until [`RssSampler::finish`].
pub struct RssSampler {
    pid: i32,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<(u64, u64)>>,
    vm_at_start: u64,
}

impl RssSampler {
    pub fn start(pid: i32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let vm_at_start = proc_status_bytes(pid, "VmSize").unwrap_or(0);
        let thread = thread::spawn(move || {
            let (mut max, mut samples) = (0u64, 0u64);
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    max = max.max(rss);
                    samples += 1;
                }
                thread::sleep(every);
            }
            (max, samples)
        });
        Self {
            pid,
            stop,
            thread: Some(thread),
            vm_at_start,
        }
    }

    /// The peak resident size so far (sampled), without stopping.
    pub fn current_hwm(&self) -> u64 {
        proc_status_bytes(self.pid, "VmHWM").unwrap_or(0)
    }

    /// Stops sampling; reads VmHWM and VmPeak last (0 if the process is gone).
    pub fn finish(mut self) -> MemoryReport {
        self.stop.store(true, Ordering::Relaxed);
        let (max_sampled_rss, samples) = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        MemoryReport {
            max_sampled_rss,
            hwm: proc_status_bytes(self.pid, "VmHWM").unwrap_or(0),
            vm_peak: proc_status_bytes(self.pid, "VmPeak").unwrap_or(0),
            vm_at_start: self.vm_at_start,
            samples,
        }
    }
}

/// Writes a `--tokens` file (server/core/src/auth.rs) giving each `(token, tenant)`.
pub fn write_tokens(dir: &Path, tokens: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let path = dir.join("tokens.toml");
    let mut text = String::new();
    for (token, tenant) in tokens {
        text.push_str(&format!(
            "[[token]]\ntoken = \"{token}\"\ntenant = \"{tenant}\"\n\n"
        ));
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Outcomes per attack, counted, with the first message seen for each, and the
/// violations of the pass criteria.
#[derive(Default)]
pub struct Tally {
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    /// (attack, outcome) -> (count, first example message).
    counts: BTreeMap<(String, String), (u64, String)>,
    violations: Vec<String>,
}

impl Tally {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts one `outcome` of `attack`; `example` is kept for the first of its kind.
    pub fn record(&self, attack: &str, outcome: &str, example: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner
            .counts
            .entry((attack.to_owned(), outcome.to_owned()))
            .or_insert_with(|| (0, shorten(example, 150)));
        entry.0 += 1;
    }

    /// A broken pass criterion (kept up to 50 distinct lines, then only counted).
    pub fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.violations.len() < 50 && !inner.violations.contains(&what) {
            inner.violations.push(what);
        } else if inner.violations.len() == 50 {
            inner
                .violations
                .push("... (more violations not kept)".into());
        }
    }

    /// How often `attack` ended with an outcome starting with `prefix`.
    pub fn count(&self, attack: &str, prefix: &str) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .counts
            .iter()
            .filter(|((a, o), _)| a == attack && o.starts_with(prefix))
            .map(|(_, (n, _))| n)
            .sum()
    }

    pub fn violations(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .violations
            .clone()
    }

    /// The table: attack, outcome, count, first message.
    pub fn table(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // The widest name in a column, or its heading's width.
        let width = |len: fn(&(String, String)) -> usize, heading: usize| {
            inner.counts.keys().map(len).max().unwrap_or(0).max(heading)
        };
        let (aw, ow) = (width(|(a, _)| a.len(), 6), width(|(_, o)| o.len(), 7));
        let mut out = format!(
            "{:aw$}  {:ow$}  {:>7}  first message\n",
            "attack", "outcome", "count"
        );
        out.push_str(&format!("{}\n", "-".repeat(aw + ow + 30)));
        for ((attack, outcome), (n, example)) in &inner.counts {
            out.push_str(&format!("{attack:aw$}  {outcome:ow$}  {n:>7}  {example}\n"));
        }
        out
    }
}

fn shorten(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max).collect();
    format!("{cut}...")
}

/// The well-behaved tenant: a Python script (Debian's `/usr/bin/python3`, whose
/// `sqlite3` module may load extensions) using SQLite through the VFS (loaded by
/// [`python::LOAD_VFS`]), started with the server URL and token in its environment. It
/// stops when [`PythonTenant::stop`] creates its stop file (the script checks for it).
pub struct PythonTenant {
    stop_file: PathBuf,
    pid: i32,
    output: mpsc::Receiver<std::io::Result<Output>>,
    started: Instant,
}

impl PythonTenant {
    /// Runs `script` (after [`python::LOAD_VFS`]) with `env` plus `HOSTILE_STOP` (the
    /// stop file's path in `dir`). Its stdout and stderr are captured.
    pub fn spawn(dir: &Path, script: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let stop_file = dir.join("python-tenant.stop");
        let _ = std::fs::remove_file(&stop_file);
        let child: Child = python::command(PYTHON, script)?
            .env("HOSTILE_STOP", &stop_file)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {PYTHON}"))?;
        let pid = child.id() as i32;
        let (tx, output) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Ok(Self {
            stop_file,
            pid,
            output,
            started: Instant::now(),
        })
    }

    /// Tells the script to finish (after its minimum number of transactions).
    pub fn stop(&self) {
        let _ = std::fs::File::create(&self.stop_file).and_then(|mut f| f.write_all(b"stop\n"));
    }

    /// Waits up to `timeout` for the script to exit; kills it after that.
    pub fn finish(self, timeout: Duration) -> anyhow::Result<(Output, Duration)> {
        let output = match self.output.recv_timeout(timeout) {
            Ok(out) => out,
            Err(_) => {
                // SAFETY: kill(2) on the pid of our own child process.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let out = self
                    .output
                    .recv()
                    .context("the Python tenant's waiter vanished")?;
                anyhow::bail!(
                    "the Python tenant did not finish within {timeout:?}; killed it. stdout:\n{}\nstderr:\n{}",
                    out.as_ref()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default(),
                    out.as_ref()
                        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                        .unwrap_or_default(),
                );
            }
        };
        Ok((
            output.context("waiting for the Python tenant")?,
            self.started.elapsed(),
        ))
    }
}

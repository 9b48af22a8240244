//! A hostile tenant against a real `pagewire-server` process under a memory cap
//! (`prlimit --as`), while a well-behaved tenant keeps committing through the VFS from
//! Debian's Python.
//!
//! Tenant A (raw tonic clients, and raw HTTP/2 gRPC bodies where a well-formed client
//! could not do the damage) runs, all at once:
//!
//! 1. tiny commits claiming huge page counts (4294967294, 2^31, 10^8) with only page 1,
//!    and with page 1 plus page N; then what a reader of such a file would ask;
//! 2. big commit streams (4 KiB pages up to the commit limit) and "padded" streams whose
//!    messages carry one page and megabytes of an unknown protobuf field;
//! 3. trickling commit streams: a header, then a few bytes of a huge message each second;
//! 4. more Watch streams than `--max-watchers-per-db` / `--max-watchers-per-tenant`;
//! 5. unauthenticated health checks (`Check` and `Watch`), many at once;
//! 6. a reader pin kept alive past `--history-retention` + `--max-pin-age`.
//!
//! Pass: the server is the same live process at the end; B's every commit succeeded;
//! the server's peak RSS stayed within the in-flight commit budget + 256 MiB; every
//! refusal A got has a code from [`REFUSAL_CODES`], and names the flag (`--max-...`,
//! `--stream-idle-timeout`) when it is RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED; and each
//! attack's own expectation (see the functions) held. A table of outcomes goes to
//! stderr either way.
//!
//! Reduced scale by default (well under 2 minutes per store on 2 cores);
//! `PAGEWIRE_HOSTILE_FULL=1` for the full one. `PAGEWIRE_HOSTILE_AS=<bytes>` overrides
//! the address-space cap.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use http_body_util::{BodyExt as _, StreamBody};
use pagewire_proto::v1 as pb;
use pagewire_tests::hostile::{
    GIB, MIB, MemoryReport, PythonTenant, RssSampler, Tally, mib, proc_name, write_tokens,
};
use pagewire_tests::{Server, postgres::TempPostgres, python::PYTHON, required, value_of};
use pb::{commit_request::Part, pages_client::PagesClient, watch_event::Event, watch_request};
use prost::Message as _;
use tokio::sync::watch;
use tonic::codegen::{Service as _, http};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const A_TOKEN: &str = "hostile-tenant-a";
const B_TOKEN: &str = "tenant-b";
const PAGE: usize = 4096;
const COMMIT_PATH: &str = "/pagewire.v1.Pages/Commit";
/// SQLite's largest page count.
const MAX_PAGE_COUNT: u32 = 4_294_967_294;

const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const HISTORY_RETENTION: Duration = Duration::from_secs(2);
const MAX_PIN_AGE: Duration = Duration::from_secs(3);
const GC_INTERVAL: Duration = Duration::from_secs(1);
/// Long, so A's leases (taken before the attack) outlive it.
const LEASE_TTL: Duration = Duration::from_secs(120);

/// Streams a hostile client puts on one HTTP/2 connection (watchers, trickles).
const STREAMS_PER_CONNECTION: usize = 100;
/// Connections the health checks share ("a few").
const HEALTH_CONNECTIONS: usize = 4;

/// What a refusal may be (the pass criteria).
const REFUSAL_CODES: [Code; 5] = [
    Code::ResourceExhausted,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::FailedPrecondition,
    Code::OutOfRange,
];

#[test]
fn hostile_tenant_memory_store() {
    run("memory", "memory");
}

#[test]
fn hostile_tenant_embedded_store() {
    run("embedded", "embedded");
}

#[test]
fn hostile_tenant_postgres_store() {
    let Some(pg) = TempPostgres::start_or_skip("hostile_tenant_postgres_store") else {
        return;
    };
    run("postgres", pg.url());
}

// ---------------------------------------------------------------------------------------
// Scale and server flags

#[derive(Debug, Clone)]
struct Scale {
    name: &'static str,
    big_streams: usize,
    /// The size of one big stream (15/16 of it in pages: just under the commit limit
    /// with framing) and the wire bytes of one padded stream.
    big_bytes: u64,
    padded_streams: usize,
    /// Unknown-field bytes in each padded message.
    padding_bytes: usize,
    trickles: usize,
    watchers: usize,
    health_calls: usize,
    inflight_budget: u64,
    tenant_budget: u64,
    max_commit: u64,
    watchers_per_db: usize,
    watchers_per_tenant: usize,
    /// Fewest transactions tenant B runs (it goes on until the attack is over).
    b_min_commits: u64,
}

impl Scale {
    fn reduced() -> Self {
        Self {
            name: "reduced",
            big_streams: 8,
            big_bytes: 64 * MIB,
            padded_streams: 8,
            padding_bytes: 8 << 20,
            trickles: 100,
            watchers: 1000,
            health_calls: 10_000,
            inflight_budget: 256 * MIB,
            tenant_budget: 128 * MIB,
            max_commit: 64 * MIB,
            watchers_per_db: 300,
            watchers_per_tenant: 500,
            b_min_commits: 50,
        }
    }

    fn full() -> Self {
        Self {
            name: "full",
            big_streams: 64,
            big_bytes: 256 * MIB,
            padded_streams: 64,
            padding_bytes: 8 << 20,
            trickles: 1000,
            watchers: 10_000,
            health_calls: 100_000,
            inflight_budget: GIB,
            tenant_budget: 512 * MIB,
            max_commit: 256 * MIB,
            watchers_per_db: 300,
            watchers_per_tenant: 500,
            b_min_commits: 200,
        }
    }

    fn from_env() -> Self {
        if std::env::var("PAGEWIRE_HOSTILE_FULL").is_ok_and(|v| v == "1") {
            Self::full()
        } else {
            Self::reduced()
        }
    }

    /// The pass criterion on the server's peak RSS.
    fn rss_limit(&self) -> u64 {
        self.inflight_budget + 256 * MIB
    }

    /// `prlimit --as`: the RSS limit plus room for address space that is reserved but
    /// never touched (thread stacks, malloc arenas, receive buffers reserved for a
    /// message's declared length), so a runaway allocation fails in the server instead
    /// of taking the machine; the RSS criterion is the real memory check.
    fn address_space_cap(&self) -> u64 {
        std::env::var("PAGEWIRE_HOSTILE_AS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.rss_limit() + 4 * GIB)
    }

    fn server_flags(&self, tokens: &Path, store: &str) -> Vec<String> {
        let size = |bytes: u64| format!("{}MiB", bytes / MIB);
        let secs = |d: Duration| format!("{}s", d.as_secs());
        [
            ("--store", store.to_owned()),
            ("--tokens", tokens.display().to_string()),
            ("--lease-ttl", secs(LEASE_TTL)),
            ("--max-commit-bytes", size(self.max_commit)),
            ("--max-inflight-commit-bytes", size(self.inflight_budget)),
            (
                "--max-tenant-inflight-commit-bytes",
                size(self.tenant_budget),
            ),
            ("--stream-idle-timeout", secs(STREAM_IDLE_TIMEOUT)),
            ("--max-watchers-per-db", self.watchers_per_db.to_string()),
            (
                "--max-watchers-per-tenant",
                self.watchers_per_tenant.to_string(),
            ),
            ("--history-retention", secs(HISTORY_RETENTION)),
            ("--max-pin-age", secs(MAX_PIN_AGE)),
            ("--gc-interval", secs(GC_INTERVAL)),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The run: server under prlimit, RSS sampler, the scenario, the verdict

fn prerequisites() -> bool {
    [
        (PYTHON, "Debian's python3"),
        ("/usr/bin/prlimit", "prlimit (util-linux)"),
    ]
    .into_iter()
    .all(|(path, what)| required(path, what).is_some())
}

fn run(store_label: &str, store: &str) {
    if !prerequisites() {
        return;
    }
    let scale = Scale::from_env();
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens = write_tokens(dir.path(), &[(A_TOKEN, "a"), (B_TOKEN, "b")]).expect("tokens file");
    let mut flags = scale.server_flags(&tokens, store);
    if store == "embedded" {
        flags.push("--data-dir".into());
        flags.push(dir.path().join("data").display().to_string());
    }
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cap = format!("--as={}", scale.address_space_cap());
    let mut server = Server::start_wrapped(&["prlimit", &cap], &flag_refs)
        .expect("start pagewire-server under prlimit");
    let pid = server.pid();
    assert_eq!(
        proc_name(pid).as_deref(),
        Some("pagewire-server"),
        "prlimit execs the server in its own pid"
    );
    let sampler = RssSampler::start(pid, Duration::from_millis(50));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let report = runtime.block_on(scenario(&scale, &server.url, dir.path()));
    let wall = started.elapsed();

    let exited = server.try_wait();
    let name_at_end = proc_name(pid);
    let memory = sampler.finish();
    runtime.shutdown_timeout(Duration::from_secs(5));

    let verdict = Verdict {
        scale: &scale,
        store: store_label,
        flags: &flags,
        cap: &cap,
        wall,
        memory,
        report: &report,
    };
    verdict.print();
    assert!(exited.is_none(), "the server process ended: {exited:?}");
    assert_eq!(
        name_at_end.as_deref(),
        Some("pagewire-server"),
        "pid {pid} is still the server"
    );
    verdict.assert_tenant_b();
    let peak = memory.peak_rss();
    assert!(peak > 0, "no RSS was read from /proc/{pid}/status");
    assert!(
        peak <= scale.rss_limit(),
        "peak server RSS {} is over the limit {} (in-flight budget {} + 256 MiB)",
        mib(peak),
        mib(scale.rss_limit()),
        mib(scale.inflight_budget)
    );
    let violations = report.tally.violations();
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// What the scenario saw.
struct Report {
    tally: Arc<Tally>,
    attack_time: Duration,
    b: Result<(std::process::Output, Duration), String>,
    trickle_cuts: Vec<Duration>,
    watchers_held: BTreeMap<String, usize>,
}

struct Verdict<'a> {
    scale: &'a Scale,
    store: &'a str,
    flags: &'a [String],
    cap: &'a str,
    wall: Duration,
    memory: MemoryReport,
    report: &'a Report,
}

impl Verdict<'_> {
    fn print(&self) {
        let (s, r, m) = (self.scale, self.report, &self.memory);
        let mut out = format!(
            "\n=== hostile tenant: {} store, {} scale ===\n",
            self.store, s.name
        );
        out += &format!(
            "server: prlimit {} pagewire-server {}\n",
            self.cap,
            self.flags.join(" ")
        );
        out += &format!(
            "attack: {} big streams x {}, {} padded streams ({} padding/message), {} trickles, {} watchers, {} health calls\n",
            s.big_streams,
            mib(s.big_bytes),
            s.padded_streams,
            mib(s.padding_bytes as u64),
            s.trickles,
            s.watchers,
            s.health_calls
        );
        out += &format!(
            "attack phase {:.1}s, whole test {:.1}s\n",
            r.attack_time.as_secs_f64(),
            self.wall.as_secs_f64()
        );
        out += &format!(
            "memory: peak RSS {} (max sampled VmRSS {} over {} samples, VmHWM {}); limit {} = budget {} + 256 MiB\n",
            mib(m.peak_rss()),
            mib(m.max_sampled_rss),
            m.samples,
            mib(m.hwm),
            mib(s.rss_limit()),
            mib(s.inflight_budget)
        );
        out += &format!(
            "address space: VmSize at start {}, VmPeak {} (cap {})\n",
            mib(m.vm_at_start),
            mib(m.vm_peak),
            self.cap
        );
        match &r.b {
            Ok((output, took)) => {
                let stdout = String::from_utf8_lossy(&output.stdout);
                let last = stdout.lines().last().unwrap_or("(no output)");
                out += &format!(
                    "tenant B: exit {:?} after {:.1}s: {last}\n",
                    output.status.code(),
                    took.as_secs_f64()
                );
            }
            Err(e) => out += &format!("tenant B: {e}\n"),
        }
        if !r.trickle_cuts.is_empty() {
            let mut cuts = r.trickle_cuts.clone();
            cuts.sort();
            out += &format!(
                "trickles cut after: min {:.1}s, median {:.1}s, max {:.1}s ({} of {})\n",
                cuts[0].as_secs_f64(),
                cuts[cuts.len() / 2].as_secs_f64(),
                cuts[cuts.len() - 1].as_secs_f64(),
                cuts.len(),
                s.trickles
            );
        }
        out += &format!("watchers held per database: {:?}\n\n", r.watchers_held);
        out += &r.tally.table();
        let violations = r.tally.violations();
        out += &format!("\nviolations: {}\n", violations.len());
        for v in &violations {
            out += &format!("  - {v}\n");
        }
        eprintln!("{out}");
    }

    fn assert_tenant_b(&self) {
        let (output, _) = match &self.report.b {
            Ok(b) => b,
            Err(e) => panic!("tenant B: {e}"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "tenant B failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        let done = stdout.lines().last().unwrap_or_default();
        let field = |key: &str| value_of(done, key).map(str::to_owned);
        let commits: u64 = field("commits").and_then(|v| v.parse().ok()).unwrap_or(0);
        let count: u64 = field("count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(
            done.starts_with("done "),
            "tenant B's last line: {done:?}\nstderr:\n{stderr}"
        );
        assert!(
            commits >= self.scale.b_min_commits,
            "tenant B committed {commits} < {}",
            self.scale.b_min_commits
        );
        assert_eq!(count, commits, "tenant B's final count");
        assert_eq!(
            field("integrity").as_deref(),
            Some("ok"),
            "tenant B's integrity_check"
        );
    }
}

/// Sets up A's databases, starts B, runs every attack at once, then lets B finish.
async fn scenario(scale: &Scale, url: &str, dir: &Path) -> Report {
    let tally = Tally::new();
    let (attack, tiny_watcher) = Attack::setup(scale, url, tally.clone()).await;
    let attack = Arc::new(attack);
    let b = tenant_b(url, dir, scale.b_min_commits);
    let (release, held) = watch::channel(false);
    let watchers = tokio::spawn(watchers(attack.clone(), held));
    let started = Instant::now();
    tokio::join!(
        tiny_commits(attack.clone(), tiny_watcher),
        big_streams(attack.clone()),
        padded_streams(attack.clone()),
        trickles(attack.clone()),
        health_checks(attack.clone()),
        old_pin(attack.clone()),
    );
    let attack_time = started.elapsed();
    let _ = release.send(true);
    if let Err(e) = watchers.await {
        tally.violation(format!("the watcher task failed: {e}"));
    }
    attack.post_checks();
    let b = match b {
        Ok(python) => {
            python.stop();
            tokio::task::spawn_blocking(move || python.finish(Duration::from_secs(120)))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("{e:#}")))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    let trickle_cuts = attack.trickle_cuts.lock().expect("cuts").clone();
    let watchers_held = attack.watchers_held.lock().expect("held").clone();
    Report {
        tally,
        attack_time,
        b,
        trickle_cuts,
        watchers_held,
    }
}

// ---------------------------------------------------------------------------------------
// Tenant B: Python's sqlite3 through the VFS

/// Small transactions until the stop file appears (and at least HOSTILE_MIN), each one
/// checked; any error ends the script non-zero. The last line is
/// `done commits=N count=N integrity=ok max_tx_ms=M`.
const TENANT_B: &str = r#"
import os, time
stop, least = os.environ["HOSTILE_STOP"], int(os.environ["HOSTILE_MIN"])
db = sqlite3.connect("b/ledger.db", timeout=30, isolation_level=None)
db.execute("create table if not exists ledger(id integer primary key, note text)")
done, max_tx, began = 0, 0.0, time.monotonic()
while done < 100000 and (done < least or not os.path.exists(stop)):
    t0 = time.monotonic()
    db.execute("begin immediate")
    if done % 10 == 0:
        db.execute(f"create table if not exists side{done // 10}(x)")
    db.execute("insert into ledger(note) values (?)", (f"tx {done}",))
    db.execute("commit")
    max_tx = max(max_tx, time.monotonic() - t0)
    done += 1
    n = db.execute("select count(*) from ledger").fetchone()[0]
    if n != done:
        sys.exit(f"count is {n} after {done} commits")
    if done % 25 == 0:
        print(f"progress commits={done} t={time.monotonic() - began:.1f}s", flush=True)
    time.sleep(0.03)
db.close()
check = sqlite3.connect("b/ledger.db")
n = check.execute("select count(*) from ledger").fetchone()[0]
ok = check.execute("pragma integrity_check").fetchone()[0]
print(f"done commits={done} count={n} integrity={ok} max_tx_ms={max_tx * 1000:.0f}", flush=True)
sys.exit(0 if n == done and ok == "ok" else 4)
"#;

fn tenant_b(url: &str, dir: &Path, least: u64) -> anyhow::Result<PythonTenant> {
    let least = least.to_string();
    PythonTenant::spawn(
        dir,
        TENANT_B,
        &[
            ("PAGEWIRE_URL", url),
            ("PAGEWIRE_TOKEN", B_TOKEN),
            ("HOSTILE_MIN", &least),
        ],
    )
}

// ---------------------------------------------------------------------------------------
// Tenant A's state and bookkeeping

/// A database of A with A's write lease on it.
#[derive(Clone)]
struct Db {
    name: String,
    lease_id: Bytes,
    epoch: u64,
    version: u64,
}

struct Attack {
    url: String,
    scale: Scale,
    tally: Arc<Tally>,
    /// The server's largest message (Open's Limits): a trickle declares one this big.
    max_message: u64,
    /// Where the big and padded streams go: one database, so at most one of them applies.
    flood: Db,
    trickle: Db,
    tiny: Db,
    pin: Db,
    trickle_cuts: Mutex<Vec<Duration>>,
    watchers_held: Mutex<BTreeMap<String, usize>>,
    pin_expired: Mutex<Option<Duration>>,
}

impl Attack {
    /// Opens A's databases (taking leases), commits a 1-page first version of pin.db and
    /// tiny.db, and starts a watcher on tiny.db before the watcher flood can take the
    /// tenant's quota.
    async fn setup(
        scale: &Scale,
        url: &str,
        tally: Arc<Tally>,
    ) -> (Self, Streaming<pb::WatchEvent>) {
        let channel = connect(url).await.expect("connect for the setup");
        let mut pages = pages_client(channel.clone());
        let (flood, limits) = open_for_writing(&mut pages, "flood.db").await;
        let (trickle, _) = open_for_writing(&mut pages, "trickle.db").await;
        let (mut tiny, _) = open_for_writing(&mut pages, "tiny.db").await;
        let (mut pin, _) = open_for_writing(&mut pages, "pin.db").await;
        for i in 0..4 {
            open(&mut pages, &format!("watch-{i}.db")).await;
        }
        open(&mut pages, "watch-hot.db").await;
        for db in [&mut pin, &mut tiny] {
            let first = vec![
                header(db, db.version, 1),
                batch(vec![(1, page_one(Some(1), 1))]),
                trailer(1),
            ];
            db.version = pages
                .commit(authed(stream::iter(first), A_TOKEN))
                .await
                .unwrap_or_else(|s| panic!("{}'s first commit: {s}", db.name))
                .into_inner()
                .version;
        }
        let tiny_watcher = start_watch(&mut pages, "tiny.db")
            .await
            .expect("a watcher on tiny.db");
        let attack = Self {
            url: url.to_owned(),
            scale: scale.clone(),
            tally,
            max_message: limits.max_message_bytes,
            flood,
            trickle,
            tiny,
            pin,
            trickle_cuts: Mutex::default(),
            watchers_held: Mutex::default(),
            pin_expired: Mutex::default(),
        };
        (attack, tiny_watcher)
    }

    /// A new connection (one HTTP/2 connection per Channel); a failure is a violation.
    async fn connect(&self, attack: &str) -> Option<Channel> {
        match connect(&self.url).await {
            Ok(channel) => Some(channel),
            Err(e) => {
                self.tally
                    .record(attack, "connect failed", &format!("{e:?}"));
                self.tally
                    .violation(format!("{attack}: could not connect: {e:?}"));
                None
            }
        }
    }

    /// Counts a refusal and checks it against the pass criteria.
    fn refused(&self, attack: &str, status: &Status) {
        self.tally.record(attack, &label(status), status.message());
        let (code, message) = (status.code(), status.message());
        if !REFUSAL_CODES.contains(&code) {
            self.tally.violation(format!(
                "{attack}: refused with {code:?}, not one of {REFUSAL_CODES:?}: {message}"
            ));
        } else if matches!(code, Code::ResourceExhausted | Code::DeadlineExceeded)
            && flag_in(message).is_none()
        {
            self.tally.violation(format!(
                "{attack}: {code:?} names no --max-* or --stream-idle-timeout flag: {message}"
            ));
        }
    }

    /// `fut`, or None (a violation) when it takes longer than `limit`.
    async fn bounded<T>(
        &self,
        attack: &str,
        limit: Duration,
        fut: impl Future<Output = T>,
    ) -> Option<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(v) => Some(v),
            Err(_) => {
                self.tally.record(
                    attack,
                    "no answer (timed out)",
                    &format!("nothing within {limit:?}"),
                );
                self.tally
                    .violation(format!("{attack}: no answer within {limit:?}"));
                None
            }
        }
    }

    /// Expectations over many outcomes, checked once everything ended.
    fn post_checks(&self) {
        let (s, t) = (&self.scale, &self.tally);
        let big_refused = t.count(BIG, "ResourceExhausted");
        if s.big_streams as u64 * s.big_bytes > s.tenant_budget && big_refused == 0 {
            t.violation(format!(
                "{BIG}: none of {} concurrent streams of {} was refused RESOURCE_EXHAUSTED (tenant budget {})",
                s.big_streams, mib(s.big_bytes), mib(s.tenant_budget)
            ));
        }
        let held = self.watchers_held.lock().expect("held");
        let total: usize = held.values().sum::<usize>() + 1; // + the watcher on tiny.db
        if total > s.watchers_per_tenant {
            t.violation(format!(
                "{WATCH}: {total} watchers held at once, over --max-watchers-per-tenant {}",
                s.watchers_per_tenant
            ));
        }
        for (db, n) in held.iter().filter(|(_, n)| **n > s.watchers_per_db) {
            t.violation(format!(
                "{WATCH}: {n} watchers held on {db}, over --max-watchers-per-db {}",
                s.watchers_per_db
            ));
        }
        for (limit, flag) in [
            (s.watchers_per_db, "--max-watchers-per-db"),
            (s.watchers_per_tenant, "--max-watchers-per-tenant"),
        ] {
            if s.watchers > limit && t.count(WATCH, &format!("ResourceExhausted {flag}")) == 0 {
                t.violation(format!(
                    "{WATCH}: {} watchers and none refused naming {flag} ({limit})",
                    s.watchers
                ));
            }
        }
        if self.pin_expired.lock().expect("pin").is_none() {
            t.violation(format!(
                "{PIN}: the pinned version never answered OUT_OF_RANGE"
            ));
        }
    }
}

const TINY_ONE: &str = "1 tiny: page 1 only";
const TINY_TWO: &str = "1 tiny: page 1 + page N";
const TINY_BEGIN: &str = "1 tiny: BeginRead after growth";
const TINY_READ: &str = "1 tiny: ReadPages N, N-1";
const TINY_WATCH: &str = "1 tiny: watcher of tiny.db";
const BIG: &str = "2 big commit stream";
const PADDED: &str = "2 padded commit stream";
const TRICKLE: &str = "3 trickling commit";
const WATCH: &str = "4 watch";
const WATCH_HELD: &str = "4 watch (held, then)";
const HEALTH_CHECK: &str = "5 health Check";
const HEALTH_WATCH: &str = "5 health Watch";
const PIN: &str = "6 pin: ReadPages at pin";
const PIN_ADVANCE: &str = "6 pin: advancing commit";

/// The flag a message names (`--max-...` or `--stream-idle-timeout`), if any.
fn flag_in(message: &str) -> Option<&str> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| w.starts_with("--max-") || w.starts_with("--stream-idle-timeout"))
}

/// An outcome's row in the table: the code and the flag named.
fn label(status: &Status) -> String {
    match flag_in(status.message()) {
        Some(flag) => format!("{:?} {flag}", status.code()),
        None => format!("{:?}", status.code()),
    }
}

// ---------------------------------------------------------------------------------------
// gRPC plumbing

async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
}

fn pages_client(channel: Channel) -> PagesClient<Channel> {
    PagesClient::new(channel).max_decoding_message_size(64 << 20)
}

/// `message` with `authorization: Bearer <token>`.
fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("an ASCII token");
    request.metadata_mut().insert("authorization", value);
    request
}

async fn open(pages: &mut PagesClient<Channel>, name: &str) -> pb::OpenResponse {
    let request = pb::OpenRequest {
        name: name.into(),
        create: true,
        read_only: false,
        ..Default::default()
    };
    pages
        .open(authed(request, A_TOKEN))
        .await
        .unwrap_or_else(|s| panic!("open {name}: {s}"))
        .into_inner()
}

/// Open (create) and AcquireLease; the database and the server's limits.
async fn open_for_writing(pages: &mut PagesClient<Channel>, name: &str) -> (Db, pb::Limits) {
    let opened = open(pages, name).await;
    let request = pb::AcquireLeaseRequest {
        name: name.into(),
        client_id: "hostile tenant A".into(),
        ..Default::default()
    };
    let lease = pages
        .acquire_lease(authed(request, A_TOKEN))
        .await
        .unwrap_or_else(|s| panic!("lease {name}: {s}"));
    let lease = lease.into_inner();
    let version = lease.state.map_or(0, |s| s.version);
    let db = Db {
        name: name.into(),
        lease_id: lease.lease_id,
        epoch: lease.epoch,
        version,
    };
    (db, opened.limits.unwrap_or_default())
}

fn header(db: &Db, base_version: u64, page_count: u32) -> pb::CommitRequest {
    pb::CommitRequest {
        part: Some(Part::Header(pb::CommitHeader {
            name: db.name.clone(),
            lease_id: db.lease_id.clone(),
            epoch: db.epoch,
            base_version,
            commit_id: Bytes::from(rand::random::<[u8; 16]>().to_vec()),
            page_size: PAGE as u32,
            page_count,
            ..Default::default()
        })),
    }
}

fn batch(pages: Vec<(u32, Bytes)>) -> pb::CommitRequest {
    let pages = pages
        .into_iter()
        .map(|(page_no, data)| pb::Page { page_no, data })
        .collect();
    pb::CommitRequest {
        part: Some(Part::Pages(pb::PageBatch { pages })),
    }
}

fn trailer(pages_sent: u32) -> pb::CommitRequest {
    pb::CommitRequest {
        part: Some(Part::Trailer(pb::CommitTrailer { pages_sent })),
    }
}

/// A valid page 1 (rollback-journal format, an empty schema) of a 4 KiB-page database.
/// With `Some(count)` its header page count is valid (bytes 24..28 equal 92..96) and
/// says `count`; with None it is "not valid", so the commit's page count rules.
fn page_one(count: Option<u32>, change_counter: u32) -> Bytes {
    let mut p = vec![0u8; PAGE];
    p[..16].copy_from_slice(b"SQLite format 3\0");
    p[16..18].copy_from_slice(&(PAGE as u16).to_be_bytes());
    p[18] = 1;
    p[19] = 1;
    p[21] = 64;
    p[22] = 32;
    p[23] = 32;
    p[24..28].copy_from_slice(&change_counter.to_be_bytes());
    p[28..32].copy_from_slice(&count.unwrap_or(1).to_be_bytes());
    let valid_for = if count.is_some() {
        change_counter
    } else {
        change_counter.wrapping_add(1)
    };
    p[92..96].copy_from_slice(&valid_for.to_be_bytes());
    p[44..48].copy_from_slice(&4u32.to_be_bytes()); // schema format
    p[56..60].copy_from_slice(&1u32.to_be_bytes()); // UTF-8
    p[96..100].copy_from_slice(&3_040_001u32.to_be_bytes());
    p[100] = 0x0d; // the schema table: an empty leaf page
    p[105..107].copy_from_slice(&(PAGE as u16).to_be_bytes());
    Bytes::from(p)
}

async fn start_watch(
    pages: &mut PagesClient<Channel>,
    name: &str,
) -> Result<Streaming<pb::WatchEvent>, Status> {
    // Without `ranges`: an old client, to whom growth must be listed or cache_invalid.
    let start = pb::WatchStart {
        name: name.into(),
        ..Default::default()
    };
    let start = pb::WatchRequest {
        part: Some(watch_request::Part::Start(start)),
    };
    // The request side stays open (never sends more) for as long as the call lives.
    let requests = stream::iter([start]).chain(stream::pending());
    let mut events = pages.watch(authed(requests, A_TOKEN)).await?.into_inner();
    match events.message().await? {
        Some(pb::WatchEvent {
            event: Some(Event::Started(_)),
        }) => Ok(events),
        other => Err(Status::unknown(format!(
            "Watch began with {other:?}, not WatchStarted"
        ))),
    }
}

/// The 5-byte gRPC frame prefix of an uncompressed message of `len` bytes.
fn frame_prefix(len: usize) -> [u8; 5] {
    let mut p = [0u8; 5];
    p[1..].copy_from_slice(&(len as u32).to_be_bytes());
    p
}

fn framed(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = frame_prefix(body.len()).to_vec();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One gRPC frame holding `CommitRequest{pages: PageBatch{pages: [page], <field 15:
/// padding>}}`, as two chunks: everything but the padding, then the (shared) padding.
fn padded_batch_frame(page: pb::Page, padding: &Bytes) -> [Bytes; 2] {
    let mut batch = pb::PageBatch { pages: vec![page] }.encode_to_vec();
    batch.push((15 << 3) | 2); // field 15, length-delimited: unknown to PageBatch
    varint(padding.len() as u64, &mut batch);
    let batch_len = batch.len() + padding.len();
    let mut request = vec![(2 << 3) | 2]; // CommitRequest.pages
    varint(batch_len as u64, &mut request);
    let message_len = request.len() + batch_len;
    let mut head = frame_prefix(message_len).to_vec();
    head.extend_from_slice(&request);
    head.extend_from_slice(&batch);
    [Bytes::from(head), padding.clone()]
}

/// A gRPC call whose request body is exactly `body` (frames written by hand, possibly
/// unfinished); the response's message bytes, or its status.
async fn raw_call(
    mut channel: Channel,
    path: &'static str,
    token: &str,
    body: impl Stream<Item = Bytes> + Send + 'static,
) -> Result<Bytes, Status> {
    let body =
        StreamBody::new(body.map(|chunk| Ok::<_, Infallible>(http_body::Frame::data(chunk))));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(tonic::body::Body::new(body))
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    let transport =
        |e: tonic::transport::Error| Status::unavailable(format!("transport error: {e:?}"));
    futures::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(transport)?;
    let response = channel.call(request).await.map_err(transport)?;
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        return Err(status); // a trailers-only answer
    }
    let collected = body.collect().await?;
    let status = collected.trailers().and_then(Status::from_header_map);
    match status {
        Some(s) if s.code() == Code::Ok => Ok(collected.to_bytes()),
        Some(s) => Err(s),
        None => Err(Status::unknown("the response ended without a grpc-status")),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Tiny commits claiming huge page counts

/// The page counts tiny commits claim, ascending, so each page 1 + page N commit grows
/// the file past the previous one.
const CLAIMS: [u32; 3] = [100_000_000, 1 << 31, MAX_PAGE_COUNT];

/// A commit may not grow the file beyond its highest carried page + 1, so page 1 alone
/// claiming N pages of the 1-page tiny.db is INVALID_ARGUMENT; page 1 + page N may apply
/// (growth is a range). After a growth, a reader asks for the change list and the
/// highest pages, and a watcher of the database hears the round: all must stay cheap.
async fn tiny_commits(a: Arc<Attack>, mut watcher: Streaming<pb::WatchEvent>) {
    let Some(channel) = a.connect(TINY_ONE).await else {
        return;
    };
    let mut pages = pages_client(channel);
    let mut base = a.tiny.version;
    for count in CLAIMS {
        base = claim_with_page_one(&a, &mut pages, base, count).await;
    }
    for count in CLAIMS {
        base = claim_with_last_page(&a, &mut pages, base, count).await;
    }
    drain_tiny_watcher(&a, &mut watcher).await;
}

/// Commits `messages` to tiny.db, claiming `count` pages, within a minute; the new
/// version, recorded, or the refusal, counted and checked (None: no answer in time).
async fn tiny_commit(
    a: &Attack,
    pages: &mut PagesClient<Channel>,
    attack: &str,
    count: u32,
    messages: Vec<pb::CommitRequest>,
) -> Option<Result<u64, Status>> {
    let call = pages.commit(authed(stream::iter(messages), A_TOKEN));
    match a.bounded(attack, Duration::from_secs(60), call).await? {
        Ok(r) => {
            let v = r.into_inner().version;
            a.tally.record(
                attack,
                "OK (applied)",
                &format!("page count {count}: version {v}"),
            );
            Some(Ok(v))
        }
        Err(s) => {
            a.refused(attack, &s);
            Some(Err(s))
        }
    }
}

/// Page 1 alone, claiming `count` pages; the version after it (`base` unless applied).
async fn claim_with_page_one(
    a: &Attack,
    pages: &mut PagesClient<Channel>,
    base: u64,
    count: u32,
) -> u64 {
    let one = vec![
        header(&a.tiny, base, count),
        batch(vec![(1, page_one(None, base as u32 + 1))]),
        trailer(1),
    ];
    let attack = &format!("{TINY_ONE} N={count}");
    match tiny_commit(a, pages, attack, count, one).await {
        None => base,
        Some(Ok(v)) => {
            a.tally.violation(format!(
                "{attack}: page 1 alone claiming {count} pages was applied (version {v})"
            ));
            v
        }
        Some(Err(s)) => {
            if s.code() != Code::InvalidArgument {
                let (code, message) = (s.code(), s.message());
                a.tally.violation(format!(
                    "{attack}: claiming {count} pages got {code:?}, not INVALID_ARGUMENT: {message}"
                ));
            }
            base
        }
    }
}

/// Page 1 and page `count`; the version after it.
async fn claim_with_last_page(
    a: &Attack,
    pages: &mut PagesClient<Channel>,
    base: u64,
    count: u32,
) -> u64 {
    let last = Bytes::from(vec![0x42; PAGE]);
    let two = vec![
        header(&a.tiny, base, count),
        batch(vec![(1, page_one(None, base as u32 + 1)), (count, last)]),
        trailer(2),
    ];
    let attack = &format!("{TINY_TWO} N={count}");
    match tiny_commit(a, pages, attack, count, two).await {
        Some(Ok(v)) => {
            after_growth(a, pages, base, v, count).await;
            v
        }
        None | Some(Err(_)) => base,
    }
}

/// What a reader of the grown file asks: the change list since the old version, and
/// the last page and its (never written) neighbour.
async fn after_growth(
    a: &Attack,
    pages: &mut PagesClient<Channel>,
    old: u64,
    new: u64,
    count: u32,
) {
    let limit = Duration::from_secs(60);
    let (begin, read) = (
        &format!("{TINY_BEGIN} N={count}"),
        &format!("{TINY_READ} N={count}"),
    );
    // An old client (no `ranges`: the server must list or give up) and a new one.
    for ranges in [false, true] {
        let request = pb::BeginReadRequest {
            name: a.tiny.name.clone(),
            cached_version: old,
            ranges,
            ..Default::default()
        };
        match a
            .bounded(begin, limit, pages.begin_read(authed(request, A_TOKEN)))
            .await
        {
            None => {}
            Some(Ok(r)) => {
                let r = r.into_inner();
                let detail = format!(
                    "ranges={ranges}: {} changed pages listed, changed_from {}, cache_invalid {}",
                    r.changed_pages.len(),
                    r.changed_from,
                    r.cache_invalid
                );
                a.tally
                    .record(begin, &format!("OK (ranges={ranges})"), &detail);
            }
            Some(Err(s)) => a.refused(begin, &s),
        }
    }
    let request = pb::ReadPagesRequest {
        name: a.tiny.name.clone(),
        version: new,
        page_nos: vec![count, count - 1],
        ..Default::default()
    };
    match a
        .bounded(read, limit, pages.read_pages(authed(request, A_TOKEN)))
        .await
    {
        None => {}
        Some(Ok(r)) => {
            let r = r.into_inner();
            let right = r.pages.len() == 2
                && r.pages[0].iter().all(|&b| b == 0x42)
                && r.pages[1].iter().all(|&b| b == 0);
            a.tally.record(
                read,
                if right { "OK" } else { "OK but wrong data" },
                &format!("{count} pages"),
            );
            if !right {
                a.tally.violation(format!(
                    "{read}: pages {count} and {} read back wrong",
                    count - 1
                ));
            }
        }
        Some(Err(s)) => a.refused(read, &s),
    }
}

/// The rounds the watcher of tiny.db heard (it must still be there, and each RoundEnd
/// must be small).
async fn drain_tiny_watcher(a: &Attack, watcher: &mut Streaming<pb::WatchEvent>) {
    let (mut rounds, mut most_changed, mut invalid) = (0usize, 0usize, false);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), watcher.message()).await {
            Err(_) => break, // nothing more for now
            Ok(Ok(Some(pb::WatchEvent {
                event: Some(Event::RoundEnd(end)),
            }))) => {
                rounds += 1;
                most_changed = most_changed.max(end.changed_pages.len());
                invalid |= end.cache_invalid;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => {
                a.tally.record(TINY_WATCH, "ended by the server", "");
                return;
            }
            Ok(Err(s)) => {
                a.refused(TINY_WATCH, &s);
                return;
            }
        }
    }
    a.tally.record(
        TINY_WATCH,
        "still watching",
        &format!("{rounds} RoundEnds, at most {most_changed} changed pages in one, cache_invalid seen: {invalid}"),
    );
}

// ---------------------------------------------------------------------------------------
// 2. Big and padded commit streams

/// N concurrent streams of 4 KiB pages, each just under the commit limit, on one
/// connection each, all on flood.db. Beyond the in-flight budgets the server must refuse
/// (RESOURCE_EXHAUSTED naming the flag); at most one applies (same base version).
async fn big_streams(a: Arc<Attack>) {
    let tasks: Vec<_> = (0..a.scale.big_streams)
        .map(|_| tokio::spawn(big_stream(a.clone())))
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            a.tally.violation(format!("{BIG}: task failed: {e}"));
        }
    }
}

async fn big_stream(a: Arc<Attack>) {
    let Some(channel) = a.connect(BIG).await else {
        return;
    };
    let mut pages = pages_client(channel);
    // 15/16 of `big_bytes` in pages: with framing and the server's per-page overhead
    // charge, just under the commit limit.
    let page_count = (a.scale.big_bytes / PAGE as u64 * 15 / 16) as u32;
    let per_batch = (MIB as usize / PAGE) as u32; // 1 MiB messages
    let filler = Bytes::from(vec![0xa5; PAGE]);
    let first = page_one(Some(page_count), a.flood.version as u32 + 1);
    let batches = (0..page_count.div_ceil(per_batch)).map(move |b| {
        let from = b * per_batch + 1;
        let to = (from + per_batch - 1).min(page_count);
        batch(
            (from..=to)
                .map(|no| {
                    (
                        no,
                        if no == 1 {
                            first.clone()
                        } else {
                            filler.clone()
                        },
                    )
                })
                .collect(),
        )
    });
    let messages = std::iter::once(header(&a.flood, a.flood.version, page_count))
        .chain(batches)
        .chain(std::iter::once(trailer(page_count)));
    let call = pages.commit(authed(stream::iter(messages), A_TOKEN));
    match a.bounded(BIG, Duration::from_secs(300), call).await {
        None => {}
        Some(Ok(r)) => a.tally.record(
            BIG,
            "OK (applied)",
            &format!("version {}", r.into_inner().version),
        ),
        Some(Err(s)) => a.refused(BIG, &s),
    }
}

/// N concurrent streams of messages carrying one page and `padding_bytes` of an
/// unknown field each (the page bytes are tiny; the message bytes are not, and a
/// decoded page may keep its whole receive buffer alive), `big_bytes` of wire per
/// stream, on flood.db.
async fn padded_streams(a: Arc<Attack>) {
    let padding = Bytes::from(vec![0x5a; a.scale.padding_bytes]);
    let tasks: Vec<_> = (0..a.scale.padded_streams)
        .map(|_| tokio::spawn(padded_stream(a.clone(), padding.clone())))
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            a.tally.violation(format!("{PADDED}: task failed: {e}"));
        }
    }
}

async fn padded_stream(a: Arc<Attack>, padding: Bytes) {
    let Some(channel) = a.connect(PADDED).await else {
        return;
    };
    let count = (a.scale.big_bytes / padding.len() as u64).max(1) as u32;
    let filler = Bytes::from(vec![0x3c; PAGE]);
    let mut chunks = vec![framed(&header(&a.flood, a.flood.version, count))];
    for no in 1..=count {
        let data = if no == 1 {
            page_one(Some(count), a.flood.version as u32 + 1)
        } else {
            filler.clone()
        };
        chunks.extend(padded_batch_frame(pb::Page { page_no: no, data }, &padding));
    }
    chunks.push(framed(&trailer(count)));
    let call = raw_call(channel, COMMIT_PATH, A_TOKEN, stream::iter(chunks));
    match a.bounded(PADDED, Duration::from_secs(300), call).await {
        None => {}
        Some(Ok(reply)) => {
            let version =
                pb::CommitResponse::decode(reply.get(5..).unwrap_or_default()).map(|r| r.version);
            a.tally
                .record(PADDED, "OK (applied)", &format!("{version:?}"));
        }
        Some(Err(s)) => a.refused(PADDED, &s),
    }
}

// ---------------------------------------------------------------------------------------
// 3. Trickling commit streams

/// T streams that send a header, then the prefix of a message as large as the server
/// allows, then 8 bytes of it a second, forever. The server must cut each after
/// `--stream-idle-timeout` with a status naming that flag, or refuse it at once for
/// the size its message declares (charged to the in-flight budgets as the prefix
/// arrives, since tonic reserves that much).
async fn trickles(a: Arc<Attack>) {
    let connections = a.scale.trickles.div_ceil(STREAMS_PER_CONNECTION);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.extend(a.connect(TRICKLE).await);
    }
    if channels.is_empty() {
        return;
    }
    let tasks: Vec<_> = (0..a.scale.trickles)
        .map(|i| tokio::spawn(trickle(a.clone(), channels[i % channels.len()].clone())))
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            a.tally.violation(format!("{TRICKLE}: task failed: {e}"));
        }
    }
}

async fn trickle(a: Arc<Attack>, channel: Channel) {
    let head = framed(&header(&a.trickle, a.trickle.version, 1));
    let declared = Bytes::copy_from_slice(&frame_prefix(a.max_message as usize));
    let drip = stream::unfold(false, |waited| async move {
        if waited {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Some((Bytes::from_static(&[0u8; 8]), true))
    });
    let body = stream::iter([head, declared]).chain(drip);
    let started = Instant::now();
    let limit = STREAM_IDLE_TIMEOUT * 10 + Duration::from_secs(10);
    match a
        .bounded(
            TRICKLE,
            limit,
            raw_call(channel, COMMIT_PATH, A_TOKEN, body),
        )
        .await
    {
        None => {}
        Some(Ok(_)) => {
            a.tally.record(TRICKLE, "OK (applied!)", "");
            a.tally
                .violation(format!("{TRICKLE}: an unfinished commit stream succeeded"));
        }
        Some(Err(s)) => {
            a.refused(TRICKLE, &s);
            a.trickle_cuts.lock().expect("cuts").push(started.elapsed());
            let named = [
                "--stream-idle-timeout",
                "--max-tenant-inflight-commit-bytes",
                "--max-inflight-commit-bytes",
            ];
            if !named.iter().any(|flag| s.message().contains(flag)) {
                a.tally.violation(format!(
                    "{TRICKLE}: cut with {:?} naming neither the idle timeout nor an in-flight budget: {}",
                    s.code(),
                    s.message()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Watch streams over the limits

/// W Watch streams, 100 per connection, held until the other attacks are over: first
/// `--max-watchers-per-db` + 50 on watch-hot.db (the excess must be refused naming that
/// flag), then the rest over four other databases (past `--max-watchers-per-tenant`,
/// refused naming that one). Checked in [`Attack::post_checks`] too.
async fn watchers(a: Arc<Attack>, release: watch::Receiver<bool>) {
    let connections = a.scale.watchers.div_ceil(STREAMS_PER_CONNECTION);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.extend(a.connect(WATCH).await);
    }
    if channels.is_empty() {
        return;
    }
    let hot = a.scale.watchers.min(a.scale.watchers_per_db + 50);
    let names = (0..a.scale.watchers).map(|i| {
        if i < hot {
            "watch-hot.db".to_owned()
        } else {
            format!("watch-{}.db", i % 4)
        }
    });
    let mut held = Vec::new();
    let mut phase = Vec::new();
    for (i, name) in names.enumerate() {
        let channel = channels[i % channels.len()].clone();
        phase.push(tokio::spawn(start_watcher(a.clone(), channel, name)));
        // All of watch-hot.db's answers first, so its own limit is the one that bites.
        if i + 1 == hot || i + 1 == a.scale.watchers {
            for started in std::mem::take(&mut phase) {
                match started.await {
                    Ok(events) => held.extend(events),
                    Err(e) => a.tally.violation(format!("{WATCH}: task failed: {e}")),
                }
            }
        }
    }
    let holds: Vec<_> = held
        .into_iter()
        .map(|events| tokio::spawn(hold_watcher(a.clone(), events, release.clone())))
        .collect();
    for hold in holds {
        if let Err(e) = hold.await {
            a.tally.violation(format!("{WATCH}: task failed: {e}"));
        }
    }
}

/// A Watch stream on `name`, if the server took it.
async fn start_watcher(
    a: Arc<Attack>,
    channel: Channel,
    name: String,
) -> Option<Streaming<pb::WatchEvent>> {
    let mut pages = pages_client(channel);
    let started = a
        .bounded(
            WATCH,
            Duration::from_secs(30),
            start_watch(&mut pages, &name),
        )
        .await?;
    match started {
        Ok(events) => {
            a.tally.record(WATCH, "started (held)", &name);
            *a.watchers_held
                .lock()
                .expect("held")
                .entry(name)
                .or_default() += 1;
            Some(events)
        }
        Err(s) => {
            a.refused(WATCH, &s);
            None
        }
    }
}

/// Keeps a watcher until `release` (noting it if the server ends it first).
async fn hold_watcher(
    a: Arc<Attack>,
    mut events: Streaming<pb::WatchEvent>,
    mut release: watch::Receiver<bool>,
) {
    let drain = async {
        loop {
            match events.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break a.tally.record(WATCH_HELD, "ended by the server", ""),
                Err(s) => break a.refused(WATCH_HELD, &s),
            }
        }
    };
    tokio::select! {
        _ = release.wait_for(|r| *r) => {}
        () = drain => {}
    }
}

// ---------------------------------------------------------------------------------------
// 5. Unauthenticated health checks

/// H health calls without a token (every tenth a Watch, dropped after its first
/// answer), all at once over a few connections: each SERVING, or RESOURCE_EXHAUSTED
/// naming `--max-calls` (or another `--max-` flag).
async fn health_checks(a: Arc<Attack>) {
    let mut channels = Vec::new();
    for _ in 0..HEALTH_CONNECTIONS {
        channels.extend(a.connect(HEALTH_CHECK).await);
    }
    if channels.is_empty() {
        return;
    }
    let calls = (0..a.scale.health_calls)
        .map(|i| health_call(&a, channels[i % channels.len()].clone(), i % 10 == 9));
    stream::iter(calls)
        .buffer_unordered(a.scale.health_calls)
        .collect::<Vec<()>>()
        .await;
}

async fn health_call(a: &Attack, channel: Channel, watch: bool) {
    let attack = if watch { HEALTH_WATCH } else { HEALTH_CHECK };
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: "pagewire.v1.Pages".into(),
    };
    let call = async {
        if watch {
            let mut answers = client.watch(request).await?.into_inner();
            answers
                .message()
                .await?
                .map(|r| r.status)
                .ok_or_else(|| Status::unknown("Watch ended without an answer"))
        } else {
            Ok(client.check(request).await?.into_inner().status)
        }
    };
    match a.bounded(attack, Duration::from_secs(60), call).await {
        None => {}
        Some(Ok(status)) if status == ServingStatus::Serving as i32 => {
            a.tally.record(attack, "SERVING", "")
        }
        Some(Ok(status)) => {
            a.tally.record(attack, &format!("status {status}"), "");
            a.tally
                .violation(format!("{attack}: answered {status}, not SERVING"));
        }
        Some(Err(s)) => {
            a.refused(attack, &s);
            if s.code() != Code::ResourceExhausted {
                a.tally.violation(format!(
                    "{attack}: {:?} (only SERVING or RESOURCE_EXHAUSTED): {}",
                    s.code(),
                    s.message()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 6. A pin kept alive past its maximum age

/// BeginRead pins pin.db's version; ReadPages at it every second keeps the pin fresh
/// while commits move the database on. The pin may not outlive `--max-pin-age`, so once
/// retention is over too, ReadPages answers OUT_OF_RANGE.
async fn old_pin(a: Arc<Attack>) {
    let Some(channel) = a.connect(PIN).await else {
        return;
    };
    let mut pages = pages_client(channel);
    let request = pb::BeginReadRequest {
        name: a.pin.name.clone(),
        ..Default::default()
    };
    let pinned = match pages.begin_read(authed(request, A_TOKEN)).await {
        Ok(r) => r.into_inner().state.map_or(0, |s| s.version),
        Err(s) => {
            a.refused(PIN, &s);
            return a.tally.violation(format!("{PIN}: BeginRead failed: {s}"));
        }
    };
    let (stop, stopped) = watch::channel(false);
    let advancer = tokio::spawn(advance(a.clone(), pages.clone(), pinned, stopped));
    let started = Instant::now();
    let deadline = HISTORY_RETENTION + MAX_PIN_AGE + 2 * GC_INTERVAL + Duration::from_secs(20);
    let mut reads = 0u32;
    loop {
        let request = pb::ReadPagesRequest {
            name: a.pin.name.clone(),
            version: pinned,
            page_nos: vec![1],
            ..Default::default()
        };
        match pages.read_pages(authed(request, A_TOKEN)).await {
            Ok(_) if started.elapsed() > deadline => {
                a.tally.record(
                    PIN,
                    "still readable at the deadline",
                    &format!("{reads} reads over {deadline:?}"),
                );
                break a.tally.violation(format!(
                    "{PIN}: version {pinned} still readable after {deadline:?}"
                ));
            }
            Ok(_) => reads += 1,
            Err(s) if s.code() == Code::OutOfRange => {
                let after = started.elapsed();
                *a.pin_expired.lock().expect("pin") = Some(after);
                let example = format!(
                    "after {:.1}s and {reads} good reads: {}",
                    after.as_secs_f64(),
                    s.message()
                );
                break a.tally.record(PIN, "OutOfRange (collected)", &example);
            }
            Err(s) => {
                a.refused(PIN, &s);
                break a.tally.violation(format!(
                    "{PIN}: {:?} before OUT_OF_RANGE: {}",
                    s.code(),
                    s.message()
                ));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = stop.send(true);
    let _ = advancer.await;
}

/// Commits a new version of pin.db every 200 ms until told to stop.
async fn advance(
    a: Arc<Attack>,
    mut pages: PagesClient<Channel>,
    mut base: u64,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let messages = vec![
            header(&a.pin, base, 1),
            batch(vec![(1, page_one(Some(1), base as u32 + 1))]),
            trailer(1),
        ];
        match pages.commit(authed(stream::iter(messages), A_TOKEN)).await {
            Ok(r) => {
                base = r.into_inner().version;
                a.tally.record(PIN_ADVANCE, "OK (applied)", "");
            }
            Err(s) => {
                a.refused(PIN_ADVANCE, &s);
                a.tally
                    .violation(format!("{PIN_ADVANCE}: a plain commit failed: {s}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
}

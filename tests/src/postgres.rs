//! Throwaway PostgreSQL for tests. [`TempPostgres::start`] gives each test a fresh
//! database (`CREATE DATABASE t_<random>`):
//!
//! - in the server `DATABASE_URL` names, when set (`scripts/test.sh` starts one shared
//!   cluster for the whole run and sets it; the test's database is dropped afterwards);
//! - otherwise in a throwaway cluster of this process ([`LocalCluster`]): the PostgreSQL
//!   server binaries (`PAGEWIRE_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else
//!   `initdb` on `PATH`) `initdb` a cluster in a temporary directory, which listens on
//!   127.0.0.1 on a free port (its unix socket inside that directory, trust
//!   authentication) and is stopped (`pg_ctl stop -m immediate`) and deleted when the last
//!   test using it finishes. As root (initdb refuses root), the directory is given to
//!   the `postgres` user and the binaries run as it (`runuser -u postgres --`).
//!
//! Where neither works, [`TempPostgres::start_or_skip`] prints `SKIPPED: ...` and the test
//! passes without running, except under `CI=true`, where it panics with the reason.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// A PostgreSQL cluster: somebody else's (`DATABASE_URL`) or our own.
enum Cluster {
    External { admin_url: String },
    Local(LocalCluster),
}

impl Cluster {
    fn admin_url(&self) -> String {
        match self {
            Cluster::External { admin_url } => admin_url.clone(),
            Cluster::Local(local) => local.admin_url(),
        }
    }
}

/// The throwaway cluster shared by the tests of this process running at the same time.
static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

/// A fresh database for one test; dropped (external server) or deleted with its cluster.
pub struct TempPostgres {
    cluster: Arc<Cluster>,
    name: String,
    url: String,
}

impl TempPostgres {
    /// A fresh database in `DATABASE_URL`'s server or in this process's throwaway cluster.
    pub fn start() -> anyhow::Result<Self> {
        let cluster = cluster()?;
        let name = format!("t_{:016x}", rand::random::<u64>());
        let admin_url = cluster.admin_url();
        run_sql(&admin_url, &format!("CREATE DATABASE {name}"))
            .with_context(|| format!("creating a test database at {}", redact(&admin_url)))?;
        let url = with_database(&admin_url, &name);
        Ok(Self { cluster, name, url })
    }

    /// [`TempPostgres::start`]; when that fails, `None` after a loud `SKIPPED` line, or a
    /// panic under `CI=true` (where PostgreSQL must be there).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        match Self::start() {
            Ok(pg) => Some(pg),
            Err(e) if crate::in_ci() => {
                panic!("{test}: PostgreSQL is required under CI=true but cannot be used: {e:#}")
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED: {test}: no PostgreSQL ({e:#}); set DATABASE_URL or install the \
                     PostgreSQL server binaries"
                );
                None
            }
        }
    }

    /// `postgres://...` of this test's database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Cluster::External { admin_url } = self.cluster.as_ref() {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            if let Err(e) = run_sql(admin_url, &sql) {
                eprintln!("warning: could not drop test database {}: {e:#}", self.name);
            }
        }
    }
}

/// The cluster to use now: `DATABASE_URL`'s, or the shared throwaway one (started when
/// no test of this process holds it).
fn cluster() -> anyhow::Result<Arc<Cluster>> {
    if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        return Ok(Arc::new(Cluster::External { admin_url: url }));
    }
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return Ok(cluster);
    }
    let cluster = Arc::new(Cluster::Local(LocalCluster::start()?));
    *shared = Arc::downgrade(&cluster);
    Ok(cluster)
}

/// Runs `sql` (no results) on a connection of its own, from a thread of its own, so it
/// works inside and outside a tokio runtime.
fn run_sql(url: &str, sql: &str) -> anyhow::Result<()> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    let worker = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            client.batch_execute(&sql).await?;
            drop(client);
            let _ = driver.await;
            Ok(())
        })
    });
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
}

/// `url` with its database (the path) replaced by `name`; query parameters kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..path_start])
}

pub use pagewire_proto::redact;

/// A PostgreSQL cluster in a temporary directory, stopped and deleted when dropped.
pub struct LocalCluster {
    dir: TempDir,
    bin: PathBuf,
    /// Run the binaries as the `postgres` user (we are root).
    as_postgres: bool,
    port: u16,
    /// More server options (TLS).
    options: String,
}

impl LocalCluster {
    /// initdb, start on a free 127.0.0.1 port, wait until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(None)
    }

    fn start_inner(tls: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let bin = find_bin_dir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("pagewire-pg-")
            .tempdir()
            .context("creating a temporary directory")?;
        let mut cluster = Self {
            dir,
            bin,
            as_postgres,
            port: 0,
            options: String::new(),
        };
        if as_postgres {
            let owner = Command::new("chown")
                .arg("postgres:")
                .arg(cluster.dir.path())
                .output()
                .context("running chown")?;
            check(
                &owner,
                "chown postgres: of the temporary directory (is there a `postgres` user?)",
            )?;
        }
        cluster.initdb()?;
        if let Some((cert, key)) = tls {
            cluster.use_tls(cert, key)?;
        }
        cluster.start_server()?;
        Ok(cluster)
    }

    /// [`LocalCluster::start`] with `ssl = on`, serving the certificate `cert` with its
    /// key `key` (PEM files, copied into the cluster's directory).
    pub fn start_with_tls(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Self::start_inner(Some((cert, key)))
    }

    fn use_tls(&mut self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let (to_cert, to_key) = (
            self.dir.path().join("server.crt"),
            self.dir.path().join("server.key"),
        );
        std::fs::copy(cert, &to_cert).context("copying the certificate")?;
        std::fs::copy(key, &to_key).context("copying the key")?;
        // PostgreSQL refuses a key others can read, or one it does not own.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&to_key, std::fs::Permissions::from_mode(0o600))?;
        if self.as_postgres {
            let owner = Command::new("chown")
                .arg("postgres:")
                .arg(&to_cert)
                .arg(&to_key)
                .output()
                .context("running chown")?;
            check(&owner, "chown postgres: of the TLS files")?;
        }
        self.options = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            to_cert.display(),
            to_key.display()
        );
        Ok(())
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running `program` from the PostgreSQL binaries, as `postgres` if root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .context("running initdb")?;
        check(&out, "initdb")
    }

    /// Starts the server on a free port (a few tries: another process may take the port
    /// between our probe and the server's bind).
    fn start_server(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("pg_ctl start failed")))
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let dir = self.dir.path().display();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={dir} \
             -c max_connections=300 -c fsync=on{}",
            self.port, self.options
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .context("running pg_ctl start")?;
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        check(&out, "pg_ctl start").with_context(|| format!("server log:\n{log}"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        if let Err(e) = stopped
            .map_err(anyhow::Error::from)
            .and_then(|o| check(&o, "pg_ctl stop"))
        {
            eprintln!(
                "warning: stopping the test PostgreSQL in {}: {e:#}",
                self.dir.path().display()
            );
        }
    }
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `PAGEWIRE_PG_BIN`, the newest `/usr/lib/postgresql/<n>/bin`, or the directory of
/// `initdb` on `PATH`: PostgreSQL's server binaries (`initdb`, `pg_dump`, ...).
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PAGEWIRE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((n, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).find(|p| Path::new(p).join("initdb").exists())
    });
    on_path
        .context("no PostgreSQL server binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_in_url() {
        assert_eq!(
            with_database("postgres://u@h:5/db?sslmode=disable", "t_1"),
            "postgres://u@h:5/t_1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t_1"), "postgres://u@h/t_1");
        assert_eq!(with_database("postgresql://h/", "x"), "postgresql://h/x");
    }
}

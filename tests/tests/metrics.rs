//! Prometheus metrics (`--metrics-listen`), scraped with a real HTTP client (Debian's
//! Python `urllib`) during a workload of Python `sqlite3` through the VFS: the output
//! parses as the text exposition format, and the counters move as the workload says.

use std::collections::HashMap;

use pagewire_tests::Server;
use pagewire_tests::python::{self, Driver};

/// A free loopback port (taken and let go; the server binds it right after).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// GET `url` with Python's urllib: (status, body).
fn http_get(py: &str, url: &str) -> (u16, String) {
    let script = "import sys, urllib.request, urllib.error\n\
                  try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10)\n    \
                  print(r.status); sys.stdout.write(r.read().decode())\n\
                  except urllib.error.HTTPError as e:\n    print(e.code)\n";
    let out = std::process::Command::new(py)
        .args(["-c", script, url])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// The samples of a scrape (`name{labels}` to value), checked line by line against
/// the text format: `# HELP`/`# TYPE` comments, `name[{k="v",...}] value`, `# EOF`.
fn parse(body: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut types = 0;
    for line in body.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE ") || c.starts_with("UNIT "),
                "{line}"
            );
            types += usize::from(c.starts_with("TYPE "));
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "labels not closed: {line}");
            // `name{}` is valid (an empty label set): it is stored as `name`.
            let inner = &series[name_end + 1..series.len() - 1];
            if inner.is_empty() {
                let v: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value: {line}"));
                samples.insert(name.to_owned(), v);
                continue;
            }
            for pair in inner.split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(
                    !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(series.to_owned(), v);
    }
    samples.insert("# TYPE lines".to_owned(), types as f64);
    samples
}

fn get(s: &HashMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

#[test]
fn a_scrape_parses_and_its_counters_follow_the_workload() {
    let Some(py) = python::python() else { return };
    let port = free_port().to_string();
    let server =
        Server::start_with(&["--store", "memory", "--metrics-listen", &port]).expect("server");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let before = parse(&http_get(py, &url).1);
    let env = [("PAGEWIRE_URL", server.url.as_str())];
    let mut d = Driver::start(py, &env);
    d.open(1, "file:m.db?vfs=pagewire").expect("open");
    d.ok(1, "create table t(x, pad)");
    for i in 0..20 {
        d.ok(1, &format!("insert into t values ({i}, randomblob(3000))"));
    }
    // A reader in another process reads the pages through ReadPages.
    let mut r = Driver::start(py, &env);
    r.open(2, "file:m.db?vfs=pagewire&preload=0")
        .expect("reader open");
    assert_eq!(r.ok(2, "select count(*) from t"), "[(20,)]");
    // One refused call: a database that does not exist, opened without create.
    let _ = r.open(3, "file:nosuch.db?vfs=pagewire&mode=ro");
    let (status, body) = http_get(py, &url);
    assert_eq!(status, 200);
    let after = parse(&body);
    let families = get(&after, "# TYPE lines");
    assert!(families >= 10.0, "{families} metric families:\n{body}");
    let delta = |s: &str| get(&after, s) - get(&before, s);
    let commits = delta(r#"pagewire_calls_total{method="Commit",code="Ok"}"#);
    assert!(
        commits >= 21.0,
        "21 commits made, {commits} counted:\n{body}"
    );
    assert!(delta(r#"pagewire_call_seconds_count{method="Commit"}"#) >= 21.0);
    assert!(
        delta("pagewire_commit_bytes_total") >= 20.0 * 3000.0,
        "{body}"
    );
    assert!(delta("pagewire_commit_pages_total") >= 21.0, "{body}");
    assert!(delta("pagewire_read_pages_total") >= 1.0, "{body}");
    assert!(delta(r#"pagewire_calls_total{method="ReadPages",code="Ok"}"#) >= 1.0);
    assert!(get(&after, "pagewire_watchers") >= 0.0);
    // Nothing but GET /metrics.
    assert_eq!(
        http_get(py, &format!("http://127.0.0.1:{port}/other")).0,
        404
    );
}

#[test]
fn a_bad_metrics_address_is_refused_at_start() {
    let bad = Server::start_with(&["--store", "memory", "--metrics-listen", "nowhere"]);
    assert!(bad.is_err(), "a bad --metrics-listen started a server");
}

//! The round-trip floor: plain tonic `BeginRead` calls, for comparison with what
//! the VFS pays per read transaction.

use std::time::Instant;

use pagewire_proto::v1::{BeginReadRequest, pages_client::PagesClient};

/// Mean microseconds per BeginRead from a current-thread runtime and from a
/// multi-thread runtime driven with block_on by an outside thread (as the VFS is).
pub fn floor(url: &str, name: &str) -> anyhow::Result<(f64, f64)> {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let a = current.block_on(calls(url, name))?;
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let b = multi.block_on(calls(url, name))?;
    Ok((a, b))
}

async fn calls(url: &str, name: &str) -> anyhow::Result<f64> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = PagesClient::new(channel);
    let req = BeginReadRequest {
        name: name.to_owned(),
        ..Default::default()
    };
    for _ in 0..200 {
        client.begin_read(req.clone()).await?;
    }
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        client.begin_read(req.clone()).await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}
